//! Progress and failure lines: each prefixed `snpguard: `, written to
//! stderr and, when it can be opened for writing, to /dev/kmsg (so that
//! they reach the console and the journal even from an early initrd).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::sync::Mutex;

/// The line prefix the initrd modules and tests look for.
pub const PREFIX: &str = "snpguard: ";

static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Opens /dev/kmsg once, if writable; lines go to stderr only otherwise.
pub fn init() {
    if let Ok(f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        if let Ok(mut k) = KMSG.lock() {
            *k = Some(f);
        }
    }
}

/// Writes one line (newlines inside `msg` are flattened).
pub fn line(msg: &str) {
    let flat = msg.replace(['\n', '\r'], " ");
    let text = format!("{PREFIX}{flat}\n");
    let _ = std::io::stderr().write_all(text.as_bytes());
    let failed = flat.starts_with("FAILED:");
    if let Ok(mut k) = KMSG.lock() {
        if let Some(f) = k.as_mut() {
            // <3> = err, <5> = notice; one write per record.
            let level = if failed { 3 } else { 5 };
            let record = format!("<{level}>{text}");
            // The kernel rate-limits each open /dev/kmsg (10 records per
            // 5 s by default); the failure gets a fresh descriptor so that
            // retries before it cannot swallow it.
            let fresh = failed
                .then(|| OpenOptions::new().write(true).open("/dev/kmsg").ok())
                .flatten();
            let _ = match fresh {
                Some(mut g) => g.write_all(record.as_bytes()),
                None => f.write_all(record.as_bytes()),
            };
        }
    }
}

/// Progress line.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(&format!($($arg)*)) };
}
pub(crate) use say;
