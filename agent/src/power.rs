//! Failing closed: sync and power off (never a shell).

#![allow(
    unsafe_code,
    reason = "sync(2) and reboot(2) have no safe wrapper here"
)]

/// Syncs file systems and powers the machine off; returns only if the
/// power-off call failed (e.g. not PID 1's namespace, no CAP_SYS_BOOT).
pub fn power_off() -> std::io::Error {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with RB_POWER_OFF takes no pointers; on success it
    // does not return.
    let rc = unsafe { libc::reboot(libc::RB_POWER_OFF) };
    debug_assert!(rc < 0);
    std::io::Error::last_os_error()
}
