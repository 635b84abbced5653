//! snpguardd: the SnpGuard daemon. Records, keys and secrets live here;
//! operators manage them over D-Bus and guests attest over HTTPS.
//!
//! - [`service`]: the operations the daemon offers, independent of the
//!   transport (D-Bus today, HTTPS for attestation).
//! - [`attest`]: remote attestation and key release behind `/v1`.
//! - [`https`]: the `/v1` HTTPS endpoint (hyper + rustls) in front of an
//!   [`attest::AttestHandler`].
//! - [`dbus`]: the D-Bus management API over a [`service::RecordService`].
//! - [`config`]: the command line and the configuration file.
//! - [`logging`]: journal or stderr.
//! - [`notify`]: readiness, watchdog and the socket-activated listener.
//! - [`sandbox`]: Landlock, no_new_privs and capabilities, applied in
//!   process before serving.
//! - [`store`]: the database (sled) behind a small trait, with schema
//!   versions and migrations.
//! - [`secrets`]: the master key and sealing of secrets at rest.
//! - [`keys`]: the daemon's key material, created on first start.
//! - [`registry`]: records, blobs and sealed VMKs; implements
//!   [`service::RecordService`].
//!
//! Start-up order for `main`: parse [`config::Args`], [`logging::init`],
//! [`config::resolve`] then [`config::Config::log_summary`], create the
//! state and import directories, [`notify::listener`], open everything
//! else the daemon needs outside its directories, [`sandbox::apply`] (still
//! single-threaded), start the runtime, [`notify::spawn_watchdog`],
//! connect to the bus and serve, [`notify::ready`].

pub mod attest;
pub mod audit;
pub mod config;
pub mod crash;
pub mod dbus;
mod fsutil;
pub mod https;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod registry;
pub mod sandbox;
pub mod secrets;
pub mod service;
pub mod store;
