//! Fuzz target: tar.gz archives staged by the DataRepository (a plain tar input is gzipped first,
//! so the mutations reach the tar inside); see `autocrane_fuzz::stage`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    autocrane_fuzz::stage::check(data, autocrane_fuzz::stage::Format::Gzip)
});
