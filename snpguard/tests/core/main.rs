//! The trust core's integration tests, in one test binary (one link
//! instead of one per file).
//!
//! - `measure_kat`: launch digests against known answers;
//! - `verify_ca`: certificate chains and CRLs;
//! - `verify_rules`: every verification rule broken once, on real AMD
//!   reports and on reports of the simulated platform.

mod measure_kat;
mod verify_ca;
mod verify_rules;
