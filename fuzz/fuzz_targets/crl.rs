#![no_main]
// The first call generates the simulated platform and its CRLs (RSA keys,
// seconds under ASan): at start-up, not inside the first input's timeout.
libfuzzer_sys::fuzz_target!(init: snpguard_fuzz::crl(&[]), |data: &[u8]| snpguard_fuzz::crl(data));
