#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snpguard_fuzz::nonce_base64(data));
