//! snpguardd: the SnpGuard daemon. Records, keys and secrets live here;
//! operators manage them over D-Bus and guests attest over HTTPS.
//!
//! - [`service`]: the operations the daemon offers, independent of the
//!   transport (D-Bus today, HTTPS for attestation).
//! - [`dbus`]: the D-Bus management API over a [`service::RecordService`].

pub mod dbus;
pub mod service;
