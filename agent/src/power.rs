//! Failing closed: sync and power off (never a shell).

/// Syncs file systems and powers the machine off; returns only if the
/// power-off call failed (e.g. not PID 1's namespace, no CAP_SYS_BOOT).
pub fn power_off() -> std::io::Error {
    rustix::fs::sync();
    match rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        // On success reboot(2) does not return.
        Ok(()) => std::io::Error::other("reboot(2) returned without powering off"),
        Err(e) => e.into(),
    }
}
