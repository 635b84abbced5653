//! SnpGuard's test kit (`publish = false`, never in a production build):
//! what the integration tests of several crates share instead of
//! including each other's files by path, and what the trust core must not
//! carry into production builds.
//!
//! - [`sim`]: a simulated SEV-SNP platform (a throw-away chain shaped like
//!   AMD's, reports, launch blobs); also linked by the agent's
//!   `simulator` build, so it is built without the `harness` feature.
//! - [`testdata`]: locating the real AMD test vectors in
//!   `../shared/testdata/snp`; a missing data set fails the test.
//! - [`bus`]: a private system-type dbus-daemon with the project's policy,
//!   a mock polkit authority, in-memory doubles of the daemon's services
//!   and a harness serving the real D-Bus API over them.
//! - [`postgres`]: a throw-away PostgreSQL cluster (the fleet tests and
//!   the attestation benchmark).
//! - [`ready`]: starting a daemon with a notify socket of its own and
//!   waiting for its `READY=1`, with a deadline.

#[cfg(feature = "harness")]
pub mod bus;
#[cfg(feature = "harness")]
pub mod postgres;
#[cfg(feature = "harness")]
pub mod ready;
pub mod sim;
pub mod testdata;
