//! SnpGuard trust core: everything that decides whether an AMD SEV-SNP
//! guest is what was registered.
//!
//! - [`report`]: the attestation report, parsed once into typed values.
//! - [`certs`]: AMD's pinned roots, certificate tables, endorsement chains.
//! - [`verify`]: every verification rule, each rejection named.
//! - [`measure`]: launch digests, byte-identical to `sev-snp-measure`.
//! - [`idblock`]: ID blocks and ID authentication blocks.
//! - [`seal`]: HPKE sealing of secrets (VMK ingestion, key release).
//! - [`bundle`]: launch-artifacts.tar.gz, written and safely extracted.
//! - [`initrd`]: the agent's files in an initrd, for the approval review.
//! - [`volume`]: keys of the encrypted data volumes, derived from the VMK.
//! - [`text`]: printable command lines; escaping untrusted text for display.
//! - `dbus` (feature `dbus`): names, typed errors and client proxies of
//!   the daemon's D-Bus management API.
//!
//! The simulated platform and the test data lookup the tests use live in
//! the test kit (`snpguard-testkit`), not here.

#![forbid(unsafe_code)]

pub mod agent_config;
pub mod attest;
pub mod bundle;
pub mod certs;
pub mod crash;
#[cfg(feature = "dbus")]
pub mod dbus;
pub mod idblock;
pub mod initrd;
pub mod measure;
pub mod report;
pub mod seal;
pub mod text;
pub mod verify;
pub mod volume;
