//! Shared by the integration tests: scratch directories and locating the
//! reference tools (skip when absent, fail under CI=true).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("snpguardctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Some(())` when a prerequisite is there; otherwise prints why the test
/// is skipped, or panics under CI=true (CI must not pass by testing
/// nothing).
pub fn require(ok: bool, what: &str) -> Option<()> {
    if ok {
        return Some(());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing; CI=true, so this is a failure, not a skip");
    }
    eprintln!("skipping: {what} is missing");
    None
}

/// Whether a reference command runs at all.
pub fn tool(name: &str) -> Option<()> {
    let ok = Command::new(name)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        ok,
        &format!("`{name}` (pip install sev-snp-measure==0.0.13)"),
    )
}

pub fn exists(path: &Path) -> Option<()> {
    require(path.is_file(), &path.display().to_string())
}

/// Our binary.
pub fn snpguardctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_snpguardctl"))
}

/// Runs a command; returns stdout, panicking with stderr on failure.
pub fn run(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
