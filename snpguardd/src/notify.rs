//! The systemd service protocol: readiness and status (`sd_notify`), the
//! watchdog, and the socket-activated HTTPS listener.
//!
//! Everything here is a no-op when the daemon is not started by systemd:
//! without `$NOTIFY_SOCKET` notifications are skipped, without
//! `$WATCHDOG_USEC` there is no watchdog, and without `$LISTEN_FDS` the
//! configured fallback address is bound.

#![allow(
    unsafe_code,
    reason = "owning the socket systemd hands over (LISTEN_FDS); fd set-up before exec in tests"
)]

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use libsystemd::activation::IsType;
use libsystemd::daemon::{self, NotifyState};
use rustix::net::sockopt;

/// Why a notification or the listener failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Sending to `$NOTIFY_SOCKET` failed.
    #[error("notifying systemd: {0}")]
    Notify(String),
    /// `$LISTEN_FDS` / `$LISTEN_PID` could not be read.
    #[error("receiving sockets from systemd: {0}")]
    Activation(String),
    /// systemd passed a number of sockets other than one.
    #[error(
        "systemd passed {0} sockets; snpguardd.socket must have exactly one ListenStream= \
         (the HTTPS port)"
    )]
    SocketCount(usize),
    /// The passed socket is not a listening TCP socket.
    #[error(
        "the socket systemd passed is not a listening TCP socket; use ListenStream=PORT \
         or ListenStream=ADDR:PORT in snpguardd.socket"
    )]
    NotTcpListener,
    /// Binding the fallback address failed.
    #[error("binding {addr}: {source}; pick another with --listen or stop what holds the port")]
    Bind {
        /// The fallback address.
        addr: SocketAddr,
        /// The I/O error.
        source: io::Error,
    },
    /// Making the listener non-blocking failed.
    #[error("configuring the listening socket: {0}")]
    Configure(#[source] io::Error),
}

/// Where the HTTPS listener came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenSource {
    /// Passed by systemd (snpguardd.socket).
    Activated,
    /// Bound by the daemon on the configured fallback address.
    Bound,
}

/// Tells systemd the daemon is ready to serve (`READY=1`) with a status
/// line. Returns whether systemd was notified (false when not under
/// systemd).
pub fn ready(status: &str) -> Result<bool, NotifyError> {
    send(&[NotifyState::Ready, NotifyState::Status(one_line(status))])
}

/// Updates the status line `systemctl status` shows.
pub fn status(status: &str) -> Result<bool, NotifyError> {
    send(&[NotifyState::Status(one_line(status))])
}

/// Tells systemd the daemon is shutting down.
pub fn stopping() -> Result<bool, NotifyError> {
    send(&[NotifyState::Stopping])
}

/// Pets the watchdog once (`WATCHDOG=1`).
pub fn watchdog_ping() -> Result<bool, NotifyError> {
    send(&[NotifyState::Watchdog])
}

/// How often to pet the watchdog: half of `$WATCHDOG_USEC`, as sd_notify(3)
/// recommends; `None` when systemd runs no watchdog for this process.
pub fn watchdog_interval() -> Option<Duration> {
    daemon::watchdog_enabled(false)
        .map(|timeout| timeout / 2)
        .filter(|i| !i.is_zero())
}

/// Starts a task on the current tokio runtime that pets the watchdog every
/// [`watchdog_interval`]. Because it runs on the same runtime as the
/// request handlers, a stalled runtime stops the pings and systemd restarts
/// the daemon. Returns `None` when no watchdog is configured.
///
/// Must be called from within a tokio runtime.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = watchdog_ping() {
                tracing::error!(error = %e, "watchdog ping failed");
            }
        }
    }))
}

/// The HTTPS listening socket: the one systemd passed (socket activation)
/// if any, else `fallback` bound by the daemon. The returned listener is
/// non-blocking, ready for `tokio::net::TcpListener::from_std`.
///
/// Call before any other thread exists: it clears `$LISTEN_PID`,
/// `$LISTEN_FDS` and `$LISTEN_FDNAMES` so no child inherits them.
pub fn listener(fallback: SocketAddr) -> Result<(TcpListener, ListenSource), NotifyError> {
    let listener = match activated()? {
        Some(l) => (l, ListenSource::Activated),
        None => {
            let l = TcpListener::bind(fallback).map_err(|source| NotifyError::Bind {
                addr: fallback,
                source,
            })?;
            (l, ListenSource::Bound)
        }
    };
    listener
        .0
        .set_nonblocking(true)
        .map_err(NotifyError::Configure)?;
    Ok(listener)
}

fn activated() -> Result<Option<TcpListener>, NotifyError> {
    // Look before calling into libsystemd, which edits the environment
    // unconditionally; most runs have nothing to receive.
    if std::env::var_os("LISTEN_PID").is_none() {
        return Ok(None);
    }
    let mut fds = libsystemd::activation::receive_descriptors(true)
        .map_err(|e| NotifyError::Activation(e.to_string()))?;
    if fds.is_empty() {
        return Ok(None);
    }
    if fds.len() != 1 {
        return Err(NotifyError::SocketCount(fds.len()));
    }
    let fd = fds.remove(0);
    let inet = fd.is_inet();
    // SAFETY: systemd hands the process ownership of its LISTEN_FDS
    // descriptors; libsystemd verified the number is in range and set
    // FD_CLOEXEC, and `into_raw_fd` gives up its copy, so this OwnedFd is
    // the only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd.into_raw_fd()) };
    let stream = sockopt::socket_type(&owned).is_ok_and(|t| t == rustix::net::SocketType::STREAM);
    let listening = sockopt::socket_acceptconn(&owned).unwrap_or(false);
    if !(inet && stream && listening) {
        return Err(NotifyError::NotTcpListener);
    }
    Ok(Some(TcpListener::from(owned)))
}

fn send(state: &[NotifyState]) -> Result<bool, NotifyError> {
    daemon::notify(false, state).map_err(|e| NotifyError::Notify(e.to_string()))
}

/// A status is one line; newlines would start new notify assignments.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Output};
    use std::time::Instant;

    /// Child-only tests run in a fresh copy of this test binary, because
    /// they edit the environment and own fd 3; in the normal run they see
    /// no marker and return at once.
    const CHILD: &str = "SNPGUARDD_NOTIFY_TEST_CHILD";

    fn run_child(test: &str, envs: &[(&str, String)], fd3: Option<&TcpListener>) -> Output {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(l) = fd3 {
            let fd = l.as_raw_fd();
            // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches only
            // the inherited descriptor number. The duplicate on fd 3 has no
            // FD_CLOEXEC, so it survives exec, as with systemd.
            unsafe {
                cmd.pre_exec(move || {
                    // dup2 onto itself would keep FD_CLOEXEC; clear it.
                    let rc = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if rc < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().expect("running child test");
        assert!(
            out.status.success(),
            "child {test} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("1 passed"),
            "child {test} did not run:\n{stdout}"
        );
        out
    }

    fn is_child() -> bool {
        std::env::var_os(CHILD).is_some()
    }

    #[test]
    fn fallback_binds_configured_address() {
        let (l, source) = listener("127.0.0.1:0".parse().expect("addr")).expect("listener");
        assert_eq!(source, ListenSource::Bound);
        let addr = l.local_addr().expect("local addr");
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
    }

    #[test]
    fn fallback_bind_failure_names_the_address() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("local addr");
        let err = listener(addr).expect_err("port in use");
        assert!(matches!(err, NotifyError::Bind { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn activation_passes_socket_on_fd3() {
        let passed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = passed.local_addr().expect("local addr");
        run_child(
            "notify::tests::child_takes_fd3",
            &[
                ("LISTEN_FDS", "1".into()),
                ("EXPECT_ADDR", addr.to_string()),
            ],
            Some(&passed),
        );
    }

    #[test]
    fn child_takes_fd3() {
        if !is_child() {
            return;
        }
        // systemd sets LISTEN_PID to the service's pid, which the parent
        // cannot know before exec.
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        let expected: SocketAddr = std::env::var("EXPECT_ADDR")
            .expect("EXPECT_ADDR")
            .parse()
            .expect("addr");
        // A fallback that cannot be bound proves the socket came from fd 3.
        let (l, source) = listener("192.0.2.1:1".parse().expect("addr")).expect("listener");
        assert_eq!(source, ListenSource::Activated);
        assert_eq!(l.as_raw_fd(), 3);
        assert_eq!(l.local_addr().expect("local addr"), expected);
        assert!(std::env::var_os("LISTEN_FDS").is_none(), "env not cleared");
        assert!(std::env::var_os("LISTEN_PID").is_none(), "env not cleared");
    }

    #[test]
    fn activation_for_another_pid_falls_back() {
        let passed = TcpListener::bind("127.0.0.1:0").expect("bind");
        run_child(
            "notify::tests::child_ignores_foreign_pid",
            &[("LISTEN_FDS", "1".into()), ("LISTEN_PID", "1".into())],
            Some(&passed),
        );
    }

    #[test]
    fn child_ignores_foreign_pid() {
        if !is_child() {
            return;
        }
        let (l, source) = listener("127.0.0.1:0".parse().expect("addr")).expect("listener");
        assert_eq!(source, ListenSource::Bound);
        assert_ne!(l.as_raw_fd(), 3);
    }

    #[test]
    fn activation_rejects_a_non_listening_socket() {
        // A bound UDP socket is an inet socket but not a TCP listener.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let fd: OwnedFd = udp.into();
        let as_listener = TcpListener::from(fd);
        run_child(
            "notify::tests::child_rejects_fd3",
            &[("LISTEN_FDS", "1".into())],
            Some(&as_listener),
        );
    }

    #[test]
    fn child_rejects_fd3() {
        if !is_child() {
            return;
        }
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
        let err = listener("127.0.0.1:0".parse().expect("addr")).expect_err("must reject");
        assert!(matches!(err, NotifyError::NotTcpListener), "{err}");
    }

    #[test]
    fn without_notify_socket_nothing_is_sent() {
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            return;
        }
        assert!(!ready("ready").expect("no-op"));
        assert!(!watchdog_ping().expect("no-op"));
    }

    #[test]
    fn notifications_and_watchdog_reach_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        run_child(
            "notify::tests::child_notifies",
            &[
                ("NOTIFY_SOCKET", path.display().to_string()),
                ("WATCHDOG_USEC", "100000".into()),
            ],
            None,
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 4 && Instant::now() < deadline {
            let n = sock.recv(&mut buf).expect("datagram");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got[0], "READY=1\nSTATUS=serving 0 records\n");
        assert_eq!(got[1], "STATUS=a b\n");
        assert_eq!(got[2], "WATCHDOG=1\n");
        assert_eq!(got[3], "WATCHDOG=1\n");
    }

    #[test]
    fn child_notifies() {
        if !is_child() {
            return;
        }
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(50)));
        assert!(ready("serving 0 records").expect("ready"));
        assert!(status("a\nb").expect("status"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let task = spawn_watchdog().expect("watchdog configured");
            // At least two pings are needed (the first is immediate, the
            // next after 50 ms); run for several intervals so a loaded
            // machine still sends both. Extra pings are not read.
            tokio::time::sleep(Duration::from_millis(300)).await;
            task.abort();
        });
    }

    #[test]
    fn no_watchdog_without_usec() {
        if std::env::var_os("WATCHDOG_USEC").is_some() {
            return;
        }
        assert_eq!(watchdog_interval(), None);
    }
}
