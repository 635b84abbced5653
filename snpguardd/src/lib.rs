//! snpguardd: the SnpGuard daemon. Records, keys and secrets live here;
//! operators manage them over D-Bus and guests attest over HTTPS.
//!
//! - [`service`]: the operations the daemon offers, independent of the
//!   transport (D-Bus today, HTTPS for attestation).
//! - [`config`]: the command line and the configuration file.
//! - [`logging`]: journal or stderr.
//! - [`notify`]: readiness, watchdog and the socket-activated listener.

pub mod config;
pub mod logging;
pub mod notify;
pub mod service;
