//! The agent's integration tests, in one test binary (one link instead of
//! one per file).
//!
//! - `check_config`: `snpguard-agent check-config` as the initrd modules
//!   and convert call it;
//! - `unlock`, `offline`, `renew` (feature `simulator`: the simulated
//!   report source):
//!   the agent against a real snpguardd, the harness in `common`.

mod check_config;
#[cfg(feature = "simulator")]
mod common;
#[cfg(feature = "simulator")]
mod offline;
#[cfg(feature = "simulator")]
mod renew;
#[cfg(feature = "simulator")]
mod unlock;
