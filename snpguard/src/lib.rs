//! SnpGuard trust core: everything that decides whether an AMD SEV-SNP
//! guest is what was registered.
//!
//! - [`report`]: the attestation report, parsed once into typed values.
//! - [`certs`]: AMD's pinned roots, certificate tables, endorsement chains.
//! - [`verify`]: every verification rule, each rejection named.
//! - [`measure`]: launch digests, byte-identical to `sev-snp-measure`.
//! - [`idblock`]: ID blocks and ID authentication blocks.
//! - [`seal`]: HPKE sealing of secrets (VMK ingestion, key release).
//! - [`volume`]: keys of the encrypted data volumes, derived from the VMK.
//! - [`crash`]: crash points of the daemon's and the CLI's commit
//!   points (debug builds only).
//!
//! The contracts between the programs (wire types, D-Bus names and
//! proxies, the bundle, the agent's configuration, the initrd review)
//! are `snpguard-protocol`; the simulated platform and the test data
//! lookup the tests use are the test kit (`snpguard-testkit`).

#![forbid(unsafe_code)]

pub mod certs;
pub mod crash;
pub mod idblock;
pub mod measure;
pub mod report;
pub mod seal;
pub mod verify;
pub mod volume;
