#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| snpguard_fuzz::signed_launch_response(data));
