//! Fuzz target: see `autocrane_fuzz::watchdog_annotation` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autocrane_fuzz::watchdog_annotation::check(data));
