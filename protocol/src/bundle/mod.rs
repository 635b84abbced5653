//! `launch-artifacts.tar.gz`: everything needed to launch one registered
//! guest, written by the daemon and read by `snpguardctl embed` and the
//! QEMU launch script.
//!
//! The archive holds exactly seven regular files at its top level, in this
//! order when written:
//!
//! | member               | content                                        |
//! |----------------------|------------------------------------------------|
//! | `launch-config.json` | [`LaunchConfig`]                               |
//! | `firmware.fd`        | OVMF AmdSev build                              |
//! | `kernel`             | the measured kernel                            |
//! | `initrd`             | the measured initrd                            |
//! | `cmdline`            | the measured kernel command line (no newline)  |
//! | `id-block.bin`       | ID block (96 bytes)                            |
//! | `id-auth.bin`        | ID authentication information (4096 bytes)     |
//!
//! Members are ustar entries with mode 0644, uid/gid 0, empty owner names
//! and mtime 0, so the same inputs give a byte-identical archive.
//!
//! Extraction trusts nothing in the archive: only the known names as
//! regular files, each at most once, all of them present, sizes enforced
//! while streaming, files created fresh in an empty directory, and
//! everything removed again if anything is wrong.

mod check;
mod config;
mod extract;
pub mod partition;
mod signed;
mod write;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use check::check_extracted;
pub use config::LaunchConfig;
pub use extract::extract_bundle;
pub use signed::{check_signed, SignedLaunchError};
pub use write::{config_json, write_bundle, BundleSources};

/// Member holding [`LaunchConfig`] as JSON.
pub const LAUNCH_CONFIG: &str = "launch-config.json";
/// Member holding the firmware.
pub const FIRMWARE: &str = "firmware.fd";
/// Member holding the kernel.
pub const KERNEL: &str = "kernel";
/// Member holding the initrd.
pub const INITRD: &str = "initrd";
/// Member holding the kernel command line.
pub const CMDLINE: &str = "cmdline";
/// Member holding the ID block.
pub const ID_BLOCK: &str = "id-block.bin";
/// Member holding the ID authentication information.
pub const ID_AUTH: &str = "id-auth.bin";

/// Every member, in the order they are written.
pub const MEMBERS: [&str; 7] = [
    LAUNCH_CONFIG,
    FIRMWARE,
    KERNEL,
    INITRD,
    CMDLINE,
    ID_BLOCK,
    ID_AUTH,
];

/// The only `launch-config.json` version.
pub const CONFIG_VERSION: u32 = 1;

pub(super) const MODE: u32 = 0o644;
pub(super) const MTIME: u64 = 0;
pub(super) const COPY_BUF: usize = 64 * 1024;
/// Bytes after the end-of-archive marker tolerated (tar record padding).
pub(super) const MAX_TRAILER: u64 = 64 * 1024;
pub(super) const MAX_NAME_LEN: usize = 128;

/// Why a bundle could not be written or extracted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The gzip or tar stream is malformed (bad checksum, truncated header,
    /// corrupt deflate data, CRC mismatch).
    #[error("launch artifacts are not a valid tar.gz: {0}")]
    Corrupt(#[source] io::Error),
    /// Reading a source or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The extraction directory is missing or not a directory.
    #[error("extraction directory {path} is unusable: {source}")]
    DestUnusable {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The extraction directory has entries in it already.
    #[error("extraction directory {0} is not empty; extract into a fresh directory")]
    DestNotEmpty(PathBuf),
    /// A member whose path is absolute.
    #[error("member {member:?} has an absolute path")]
    AbsolutePath {
        /// The member name as found.
        member: String,
    },
    /// A member whose path has a `..` component.
    #[error("member {member:?} has a `..` path component")]
    ParentDirectory {
        /// The member name as found.
        member: String,
    },
    /// A member that is not a regular file.
    #[error("member {member:?} is a {kind}, only regular files are allowed")]
    NotRegularFile {
        /// The member name as found.
        member: String,
        /// What it is instead (symlink, hard link, directory, …).
        kind: String,
    },
    /// A member name that is not one of [`MEMBERS`].
    #[error("member {member:?} is not part of a launch bundle")]
    UnknownMember {
        /// The member name as found.
        member: String,
    },
    /// A member that appears more than once.
    #[error("member {member:?} appears more than once")]
    DuplicateMember {
        /// The member name.
        member: String,
    },
    /// A member missing from the archive.
    #[error("member {member:?} is missing")]
    MissingMember {
        /// The member name.
        member: &'static str,
    },
    /// A member larger than allowed.
    #[error("member {member:?} is larger than the {limit}-byte limit")]
    MemberTooLarge {
        /// The member name.
        member: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// All members together larger than allowed.
    #[error("bundle content is larger than the {limit}-byte total limit")]
    TotalTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A member whose data does not match the size its header declares
    /// (the stream ended early), or a source shorter or longer than its
    /// declared length.
    #[error("member {member:?} declares {declared} bytes but has {actual}")]
    SizeMismatch {
        /// The member name.
        member: String,
        /// Size declared (header or source length).
        declared: u64,
        /// Size found (at least this many, for a source that is too long).
        actual: u64,
    },
    /// A fixed-size member (ID block, ID auth) of the wrong size.
    #[error("member {member:?} is {actual} bytes, must be exactly {expected}")]
    WrongFixedSize {
        /// The member name.
        member: &'static str,
        /// Required size.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// More than padding after the end of the archive.
    #[error("unexpected data after the end of the archive")]
    TrailingData,
    /// `launch-config.json` is not valid JSON for this version.
    #[error("launch-config.json is malformed: {0}")]
    ConfigJson(#[source] serde_json::Error),
    /// `launch-config.json` has a field with an invalid value.
    #[error("launch-config.json field `{field}` is invalid: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A member that must have content is empty.
    #[error("member {member:?} is empty")]
    EmptyMember {
        /// The member.
        member: &'static str,
    },
    /// The command line cannot be booted as measured.
    #[error("the cmdline cannot be launched: {0}")]
    Cmdline(String),
}

/// Limits applied while extracting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Largest single member.
    pub max_member: u64,
    /// Largest sum of all members.
    pub max_total: u64,
    /// Largest `launch-config.json`.
    pub max_config: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_member: 1 << 30,
            max_total: 4 << 30,
            max_config: 64 << 10,
        }
    }
}

pub(super) fn io_err(context: &str, source: io::Error) -> BundleError {
    BundleError::Io {
        context: context.into(),
        source,
    }
}

pub(super) fn check_fixed_size(
    member: &'static str,
    actual: u64,
    expected: usize,
) -> Result<(), BundleError> {
    if actual != expected as u64 {
        return Err(BundleError::WrongFixedSize {
            member,
            expected: expected as u64,
            actual,
        });
    }
    Ok(())
}
