//! SnpGuard's test kit (`publish = false`, never in a production build):
//! what the integration tests of several crates share instead of
//! including each other's files by path.
//!
//! - [`bus`]: a private system-type dbus-daemon with the project's policy,
//!   a mock polkit authority, in-memory doubles of the daemon's services
//!   and a harness serving the real D-Bus API over them.
//! - [`postgres`]: a throw-away PostgreSQL cluster (the fleet tests and
//!   the attestation benchmark).
//! - [`ready`]: starting a daemon with a notify socket of its own and
//!   waiting for its `READY=1`, with a deadline.

pub mod bus;
pub mod postgres;
pub mod ready;
