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
    if let Ok(mut k) = KMSG.lock() {
        if let Some(f) = k.as_mut() {
            // <3> = err, <5> = notice; one write per record.
            let level = if flat.starts_with("FAILED:") { 3 } else { 5 };
            let _ = f.write_all(format!("<{level}>{text}").as_bytes());
        }
    }
}

/// Progress line.
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::line(&format!($($arg)*)) };
}
pub(crate) use say;
