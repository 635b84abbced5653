//! The sandbox, applied for real in a child process (this same binary,
//! re-executed), exactly as the daemon applies it: single-threaded, on the
//! main thread. The child proves that it can read and write inside the
//! allowed directory, gets EACCES outside it, and holds no capabilities.
//!
//! A harness-less test: the libtest harness would run the body on a
//! worker thread, and Landlock and capabilities are per thread.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use snpguardd::sandbox::{self, LandlockEnforcement, SandboxSpec};

const CHILD_ALLOWED: &str = "SNPGUARDD_SANDBOX_ALLOWED";
const CHILD_FORBIDDEN: &str = "SNPGUARDD_SANDBOX_FORBIDDEN";

fn main() -> ExitCode {
    let result = match (
        std::env::var_os(CHILD_ALLOWED),
        std::env::var_os(CHILD_FORBIDDEN),
    ) {
        (Some(allowed), Some(forbidden)) => child(allowed.into(), forbidden.into()),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox test failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parent() -> Result<(), String> {
    let allowed = tempfile::tempdir().map_err(|e| e.to_string())?;
    let outside = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(allowed.path().join("inside.txt"), b"inside").map_err(|e| e.to_string())?;
    let forbidden = outside.path().join("outside.txt");
    std::fs::write(&forbidden, b"outside").map_err(|e| e.to_string())?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .env(CHILD_ALLOWED, allowed.path())
        .env(CHILD_FORBIDDEN, &forbidden)
        .output()
        .map_err(|e| format!("running the child: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("child exited with {}", out.status));
    }
    // The child wrote inside its allowed directory.
    let written = std::fs::read(allowed.path().join("written.txt"))
        .map_err(|e| format!("child's file: {e}"))?;
    if written != b"written" {
        return Err("child's file has the wrong content".into());
    }
    println!("test sandbox ... ok");
    Ok(())
}

fn child(allowed: PathBuf, forbidden: PathBuf) -> Result<(), String> {
    // Opened before the sandbox, read after: the kernel renders the file
    // at read time, so it shows this thread's state after `apply`.
    let mut status_file =
        File::open("/proc/thread-self/status").map_err(|e| format!("opening status: {e}"))?;

    // Control: before the sandbox, the forbidden file is readable.
    std::fs::read(&forbidden).map_err(|e| format!("control read failed: {e}"))?;

    let spec = SandboxSpec {
        read_write: vec![allowed.clone()],
        read_only: vec![],
        read_only_if_present: vec![PathBuf::from("/nonexistent/snpguard-test")],
    };
    let status = sandbox::apply(&spec).map_err(|e| format!("apply: {e}"))?;
    // Partial enforcement (an older kernel) still confines reads.
    if status.landlock == LandlockEnforcement::None {
        return Err("this kernel enforces no Landlock; the test needs it".into());
    }
    if !status.no_new_privs {
        return Err("no_new_privs not set".into());
    }

    let inside = std::fs::read(allowed.join("inside.txt"))
        .map_err(|e| format!("reading inside the sandbox: {e}"))?;
    if inside != b"inside" {
        return Err("wrong content inside".into());
    }
    std::fs::write(allowed.join("written.txt"), b"written")
        .map_err(|e| format!("writing inside the sandbox: {e}"))?;

    expect_eacces("reading a file outside", std::fs::read(&forbidden))?;
    expect_eacces(
        "writing next to it",
        std::fs::write(forbidden.with_file_name("new.txt"), b"x"),
    )?;
    expect_eacces("listing /etc", std::fs::read_dir("/etc"))?;
    expect_eacces("opening /proc/self/status", File::open("/proc/self/status"))?;

    let mut text = String::new();
    status_file
        .rewind()
        .and_then(|_| status_file.read_to_string(&mut text))
        .map_err(|e| format!("reading status: {e}"))?;
    for key in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let value = field(&text, key)?;
        if value != "0000000000000000" {
            return Err(format!("{key} is {value}, expected no capabilities"));
        }
    }
    if field(&text, "NoNewPrivs")? != "1" {
        return Err("NoNewPrivs is not 1".into());
    }
    // As root (CAP_SETPCAP) the bounding set is cleared too.
    if field(&text, "CapBnd")? != "0000000000000000" && status.bounding_set_empty {
        return Err("bounding set reported empty but is not".into());
    }
    println!("child: {status:?}; EACCES outside; CapEff=0");
    Ok(())
}

fn expect_eacces<T>(what: &str, r: io::Result<T>) -> Result<(), String> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(format!("{what}: expected EACCES, got {e}")),
        Ok(_) => Err(format!("{what}: succeeded inside the sandbox")),
    }
}

fn field<'a>(status: &'a str, key: &str) -> Result<&'a str, String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .ok_or_else(|| format!("{key} missing from /proc/thread-self/status"))
}
