//! Fuzz target: see `autocrane_fuzz::annotations_file` for the input format and the properties checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| autocrane_fuzz::annotations_file::check(data));
