//! SnpGuard's contracts: what one program writes and another reads, each
//! with one Rust home. The decisions themselves (reports, certificates,
//! verification, measurement, ID blocks, sealing) are the trust core,
//! `snpguard`, which this crate builds on.
//!
//! - [`attest`]: the `/v1` HTTPS wire types (attest, renew) and their
//!   bindings: nonces, sealed key releases, release signatures.
//! - [`bundle`]: launch-artifacts.tar.gz, written and safely extracted;
//!   `launch-config.json`.
//! - [`agent_config`]: the guest agent's `/etc/snpguard/agent.toml`, one
//!   type that convert writes and the agent reads.
//! - [`initrd`]: the agent's files in an initrd, for the approval review.
//! - [`text`]: printable command lines; escaping untrusted text for display.
//! - `dbus` (feature `dbus`): names, typed errors and client proxies of
//!   the daemon's D-Bus management API.

#![forbid(unsafe_code)]

pub mod agent_config;
pub mod attest;
pub mod bundle;
#[cfg(feature = "dbus")]
pub mod dbus;
pub mod initrd;
pub mod text;
