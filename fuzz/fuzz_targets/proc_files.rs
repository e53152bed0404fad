#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stalld_fuzz::checks::proc_files(data));
