//! Ctrl-C and SIGTERM for the image commands. Partial outputs are
//! registered here and removed by the handler. The handler never exits the
//! process while a libguestfs call may be running on the main thread (a
//! concurrent exit would close the handle under it): it kills the
//! appliance's QEMU instead, the call fails, and `main` turns that error
//! into exit status 130. With no appliance running it exits at once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;

/// Paths removed on interruption.
pub type Registry = Arc<Mutex<Vec<PathBuf>>>;

static REGISTRY: OnceLock<Result<Registry, String>> = OnceLock::new();
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// PID of the running appliance's QEMU, 0 when none.
static APPLIANCE: AtomicI32 = AtomicI32::new(0);

/// Status of an interrupted command.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Removes a file or a directory tree, ignoring errors (used while
/// failing).
pub fn remove(p: &Path) {
    if p.is_dir() {
        let _ = fs::remove_dir_all(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// Whether the user interrupted the command.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Records the appliance's QEMU (0: none is running).
pub fn set_appliance(pid: i32) {
    APPLIANCE.store(pid, Ordering::SeqCst);
}

fn on_signal(registry: &Registry) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let paths = match registry.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for p in &paths {
        remove(p);
    }
    let pid = APPLIANCE.load(Ordering::SeqCst);
    let killed = rustix::process::Pid::from_raw(pid)
        .map(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok())
        .unwrap_or(false);
    if !killed {
        // Not eprintln!: a closed stderr must not stop the exit.
        let _ = writeln!(std::io::stderr(), "interrupted; partial output removed");
        std::process::exit(EXIT_INTERRUPTED.into());
    }
}

/// The registry, with the handler installed on first use. Concurrent
/// first uses install it once (a second `set_handler` would fail).
pub fn registry() -> Result<Registry> {
    REGISTRY
        .get_or_init(|| {
            let r: Registry = Arc::default();
            let handler = r.clone();
            ctrlc::set_handler(move || on_signal(&handler))
                .map_err(|e| format!("installing the interrupt handler: {e}"))?;
            Ok(r)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
