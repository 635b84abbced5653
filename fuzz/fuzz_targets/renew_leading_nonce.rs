#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snpguard_fuzz::renew_leading_nonce(data));
