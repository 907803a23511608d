//! Fuzz target: see `autocrane_fuzz::kube_sim_label_selector` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autocrane_fuzz::kube_sim_label_selector::check(data));
