//! Running the external tools the harness drives, with errors that say
//! what ran and what it printed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A failure of the harness (not of the system under test).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A tool exited unsuccessfully.
    #[error("{command} failed ({status}):\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stdout and stderr.
        output: String,
    },
    /// A tool could not be started.
    #[error("starting {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something the harness checks about its own fixtures.
    #[error("{0}")]
    Fixture(String),
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to completion and returns its output, or an error with the
/// end of what it printed.
pub fn run(cmd: &mut Command) -> Result<Output, HarnessError> {
    let command = describe(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HarnessError::Command {
            command,
            status: out.status,
            output: combined(&out),
        })
    }
}

/// [`run`] for tests: the output of a command that must succeed, else a
/// panic naming the command, its status and the tail of its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// stdout then stderr of `out`, the last 60 lines.
pub fn combined(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tail(&text, 60)
}

/// `std::fs` errors with the path and the step.
pub fn io<T>(
    what: &'static str,
    path: &std::path::Path,
    r: std::io::Result<T>,
) -> Result<T, HarnessError> {
    r.map_err(|source| HarnessError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}
