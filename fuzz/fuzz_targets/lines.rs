#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stalld_fuzz::checks::lines(data));
