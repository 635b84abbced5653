//! Waiting for a daemon's readiness the way systemd does: a notify socket
//! of the test's own (`NOTIFY_SOCKET`), read until `READY=1` arrives, the
//! daemon exits, or the deadline passes. A condition with a deadline, no
//! sleeps.

use std::fmt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A notify socket in a fresh temporary directory; give its
/// [`Notify::path`] to the daemon as `NOTIFY_SOCKET`.
pub struct Notify {
    dir: tempfile::TempDir,
    sock: UnixDatagram,
}

/// Why a daemon did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first.
    Exited(ExitStatus),
    /// Nothing came within the deadline.
    Timeout(Duration),
    /// Reading its state failed.
    Io(std::io::Error),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "exited with {status} before READY=1"),
            NotReady::Timeout(d) => write!(f, "sent no READY=1 within {d:?}"),
            NotReady::Io(e) => write!(f, "could not be watched: {e}"),
        }
    }
}

impl std::error::Error for NotReady {}

impl Notify {
    /// Binds the socket.
    pub fn new() -> std::io::Result<Notify> {
        let dir = tempfile::Builder::new()
            .prefix("snpguard-notify-")
            .tempdir()?;
        let sock = UnixDatagram::bind(dir.path().join("notify"))?;
        // Each read is bounded, so an exit or the deadline is seen.
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Notify { dir, sock })
    }

    /// The socket's path (`NOTIFY_SOCKET`).
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("notify")
    }

    /// Waits until `child` sends `READY=1`, exits, or `deadline` passes.
    pub fn wait_ready(&self, child: &mut Child, deadline: Duration) -> Result<(), NotReady> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return Ok(());
                }
            }
            if let Some(status) = child.try_wait().map_err(NotReady::Io)? {
                return Err(NotReady::Exited(status));
            }
            if start.elapsed() >= deadline {
                return Err(NotReady::Timeout(deadline));
            }
        }
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("path", &self.path())
            .finish()
    }
}
