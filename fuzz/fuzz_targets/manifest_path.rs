//! Fuzz target: see `autocrane_fuzz::manifest_path` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autocrane_fuzz::manifest_path::check(data));
