//! snpguardd: the SnpGuard daemon. Records, keys and secrets live here;
//! operators manage them over D-Bus and guests attest over HTTPS.
//!
//! - [`service`]: the operations the daemon offers, independent of the
//!   transport (D-Bus today, HTTPS for attestation).
//! - [`store`]: the database (sled) behind a small trait, with schema
//!   versions and migrations.
//! - [`secrets`]: the master key and sealing of secrets at rest.
//! - [`keys`]: the daemon's key material, created on first start.
//! - [`registry`]: records, blobs and sealed VMKs; implements
//!   [`service::RecordService`].

mod fsutil;
pub mod keys;
pub mod registry;
pub mod secrets;
pub mod service;
pub mod store;
