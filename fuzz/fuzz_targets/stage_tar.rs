//! Fuzz target: tar archives staged by the DataRepository; see `autocrane_fuzz::stage`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    autocrane_fuzz::stage::check(data, autocrane_fuzz::stage::Format::Raw)
});
