//! snpguardctl's quick integration tests, in one test binary (one link
//! instead of one per file). The libguestfs tests, convert.rs and
//! embed.rs, stay binaries of their own: `make test` runs them in the slow
//! lanes, selected by binary.
//!
//! - `management`: register and records against the D-Bus API;
//! - `report_verify`: `report verify` on the real AMD reports;
//! - `idblock_ref`, `measure_diff`: `id-block` and `measure` against the
//!   reference, sev-snp-measure.

mod common;
mod idblock_ref;
mod management;
mod measure_diff;
mod report_verify;
