//! Logging: structured journal entries when systemd connected stderr to
//! the journal, plain lines on stderr otherwise.
//!
//! Fields of a `tracing` event become journal fields (upper-cased, e.g.
//! `record = %id` is `RECORD=…`), so `journalctl -u snpguardd RECORD=…`
//! finds every entry about one record. The level defaults to `info`;
//! `SNPGUARDD_LOG=debug` (or `trace`, `warn`, `error`, `off`) changes it.

use std::io;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable that overrides the log level.
pub const LEVEL_ENV: &str = "SNPGUARDD_LOG";
/// `SYSLOG_IDENTIFIER=` of every journal entry.
pub const SYSLOG_IDENTIFIER: &str = "snpguardd";

/// Where log output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journal protocol, with structured fields.
    Journal,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `SNPGUARDD_LOG` holds something that is not a level.
    #[error("{LEVEL_ENV}={0:?} is not a log level; use error, warn, info, debug, trace or off")]
    BadLevel(String),
    /// The journal socket could not be opened although stderr is the journal.
    #[error("connecting to the journal: {0}")]
    Journal(#[source] io::Error),
    /// A global subscriber was already installed.
    #[error("installing the log subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

/// Where logs go in this environment: the journal when stderr is the
/// journal stream systemd announced in `$JOURNAL_STREAM` (checked by device
/// and inode, so a redirected stderr is honoured), stderr otherwise.
pub fn detect() -> LogTarget {
    if libsystemd::logging::connected_to_journal() {
        LogTarget::Journal
    } else {
        LogTarget::Stderr
    }
}

/// The level from `SNPGUARDD_LOG`, `info` when unset.
pub fn level_from_env() -> Result<LevelFilter, LoggingError> {
    parse_level(std::env::var(LEVEL_ENV).ok().as_deref())
}

/// Parses a level name (any case); `None` or blank is `info`.
pub fn parse_level(value: Option<&str>) -> Result<LevelFilter, LoggingError> {
    match value.map(str::trim) {
        None | Some("") => Ok(LevelFilter::INFO),
        Some(v) => v
            .parse()
            .map_err(|_| LoggingError::BadLevel(v.chars().take(32).collect())),
    }
}

/// Installs the global subscriber for [`detect`]ed target and the level
/// from [`level_from_env`]. Call once, first thing in `main`.
pub fn init() -> Result<LogTarget, LoggingError> {
    let target = detect();
    init_with(target, level_from_env()?)?;
    Ok(target)
}

/// Installs the global subscriber for an explicit target and level.
pub fn init_with(target: LogTarget, level: LevelFilter) -> Result<(), LoggingError> {
    match target {
        LogTarget::Journal => {
            let journal = tracing_journald::layer()
                .map_err(LoggingError::Journal)?
                // Fields keep their own names (RECORD=, REASON=) rather
                // than the crate's default F_ prefix.
                .with_field_prefix(None)
                .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned());
            tracing_subscriber::registry()
                .with(level)
                .with(journal)
                .try_init()?;
        }
        LogTarget::Stderr => {
            let fmt = tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_target(false);
            tracing_subscriber::registry()
                .with(level)
                .with(fmt)
                .try_init()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_parsing() {
        assert_eq!(parse_level(None).ok(), Some(LevelFilter::INFO));
        assert_eq!(parse_level(Some(" ")).ok(), Some(LevelFilter::INFO));
        assert_eq!(parse_level(Some("debug")).ok(), Some(LevelFilter::DEBUG));
        assert_eq!(parse_level(Some("OFF")).ok(), Some(LevelFilter::OFF));
        assert_eq!(parse_level(Some("warn")).ok(), Some(LevelFilter::WARN));
        let err = parse_level(Some("loud")).expect_err("not a level");
        assert!(err.to_string().contains("SNPGUARDD_LOG=\"loud\""), "{err}");
    }

    #[test]
    fn stderr_logging_installs_once() {
        // The only test in this binary that installs a global subscriber.
        assert!(init_with(LogTarget::Stderr, LevelFilter::INFO).is_ok());
        tracing::info!(field = 1, "logging test line");
        assert!(matches!(
            init_with(LogTarget::Stderr, LevelFilter::INFO),
            Err(LoggingError::Install(_))
        ));
    }
}
