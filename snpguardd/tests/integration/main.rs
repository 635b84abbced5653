//! snpguardd's integration tests, in one test binary: one link of the
//! daemon's dependencies instead of one per file, and the files' tests
//! scheduled together. sandbox.rs stays a binary of its own: it confines
//! its whole process with Landlock.
//!
//! - `bus_policy`, `interface_xml`: the checked-in bus policy and
//!   interface XML against the live object server;
//! - `dbus_api`, `dbus_certificates`, `dbus_launches`: the D-Bus API on a
//!   private bus with the service doubles;
//! - `https`: the HTTPS endpoint with a handler double;
//! - `daemon`: the real snpguardd and snpguardctl, attestation against a
//!   simulated platform, crash points, the fleet, SIGKILL under load.

mod bus_policy;
mod daemon;
mod dbus_api;
mod dbus_certificates;
mod dbus_launches;
mod https;
mod interface_xml;
