//! Crash points: where the crash-safety tests kill a process, as a power
//! cut would, to prove that every commit point leaves consistent state:
//! the daemon's store (snpguardd/tests/integration/daemon/crash.rs) and an image's
//! artifact partition during `snpguardctl embed` (snpguardctl/tests/
//! embed.rs).
//!
//! In a debug build, `SNPGUARD_CRASH_AT=<point>` in the environment makes
//! the process SIGKILL itself when it reaches that point (no unwinding,
//! no destructors, no flush). Release builds compile the points out: the
//! environment variable does nothing there.

/// The environment variable naming the point to die at.
pub const ENV: &str = "SNPGUARD_CRASH_AT";

/// Every crash point, for the tests and the documentation.
pub mod points {
    /// The nonce's used mark is flushed; the key is not sealed yet.
    pub const ATTEST_NONCE_CONSUMED: &str = "attest-nonce-consumed";
    /// A release is committed with its count, the nonce's outcome and its
    /// audit entry; the sealed key has not left.
    pub const ATTEST_RELEASE_COMMITTED: &str = "attest-release-committed";
    /// A registration's records and secrets are built; not committed.
    pub const REGISTER_BEFORE_COMMIT: &str = "register-before-commit";
    /// A registration is committed; the client has no reply yet.
    pub const REGISTER_COMMITTED: &str = "register-committed";
    /// An approval's ID block is signed; not committed.
    pub const APPROVE_SIGNED: &str = "approve-signed";
    /// An approval is committed; the client has no reply yet.
    pub const APPROVE_COMMITTED: &str = "approve-committed";
    /// A schema migration step's mutations are computed; not committed.
    pub const MIGRATE_BEFORE_COMMIT: &str = "migrate-before-commit";
    /// `embed`: the inactive slot is half written (some members uploaded,
    /// nothing synced); `/artifacts` still names the active one.
    pub const EMBED_SLOT_PARTIAL: &str = "embed-slot-partial";
    /// `embed`: `/artifacts` was renamed to the new slot; not synced.
    pub const EMBED_SWITCHED: &str = "embed-switched";
}

/// Dies here if `SNPGUARD_CRASH_AT` names `point` (debug builds only).
#[inline]
pub fn point(point: &'static str) {
    #[cfg(debug_assertions)]
    {
        use std::sync::OnceLock;
        static AT: OnceLock<Option<String>> = OnceLock::new();
        if AT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(point) {
            // Not through tracing: nothing may be flushed on the way out.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("crash point {point}: killing the process\n").as_bytes(),
            );
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            // SIGKILL cannot be caught; should it be refused, still die.
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
