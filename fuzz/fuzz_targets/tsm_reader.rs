#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snpguard_fuzz::tsm_reader(data));
