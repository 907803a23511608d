//! Fuzz target: see `autocrane_fuzz::registry_notification` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autocrane_fuzz::registry_notification::check(data));
