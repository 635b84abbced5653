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

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use tar::{EntryType, Header};

use crate::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};

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

const MODE: u32 = 0o644;
const MTIME: u64 = 0;
const COPY_BUF: usize = 64 * 1024;
/// Bytes after the end-of-archive marker tolerated (tar record padding).
const MAX_TRAILER: u64 = 64 * 1024;
const MAX_NAME_LEN: usize = 128;

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
}

/// `launch-config.json`: the launch parameters the QEMU script and
/// `embed` need, and the values the daemon expects the guest to report.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    /// Format version; always [`CONFIG_VERSION`].
    pub version: u32,
    /// Record name; `[A-Za-z0-9._-]`, 1 to 128 characters.
    pub name: String,
    /// Number of vCPUs (at least 1).
    pub vcpus: u32,
    /// QEMU CPU model, e.g. `EPYC-v4`; `[A-Za-z0-9._-]`.
    pub vcpu_type: String,
    /// Guest policy, `0x`-prefixed lowercase hex, e.g. `0x30000`.
    pub guest_policy: String,
    /// SEV features, `0x`-prefixed lowercase hex, e.g. `0x1`.
    pub guest_features: String,
    /// Launch digest, 96 lowercase hex digits.
    pub measurement: String,
    /// SHA-384 of the ID public key, 96 lowercase hex digits.
    pub id_key_digest: String,
    /// SHA-384 of the author public key, 96 lowercase hex digits.
    pub author_key_digest: String,
    /// Family ID, 32 lowercase hex digits.
    pub family_id: String,
    /// Image ID, 32 lowercase hex digits.
    pub image_id: String,
    /// Kernel, initrd and cmdline hashes in the firmware (must be true:
    /// the measurement assumes `kernel-hashes=on`).
    pub kernel_hashes: bool,
}

impl LaunchConfig {
    /// Checks every field; [`write_bundle`] and [`extract_bundle`] call it.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        check_token("name", &self.name)?;
        if self.vcpus == 0 {
            return Err(invalid("vcpus", "must be at least 1".into()));
        }
        check_token("vcpu_type", &self.vcpu_type)?;
        check_hex_u64("guest_policy", &self.guest_policy)?;
        check_hex_u64("guest_features", &self.guest_features)?;
        check_hex_bytes("measurement", &self.measurement, 48)?;
        check_hex_bytes("id_key_digest", &self.id_key_digest, 48)?;
        check_hex_bytes("author_key_digest", &self.author_key_digest, 48)?;
        check_hex_bytes("family_id", &self.family_id, 16)?;
        check_hex_bytes("image_id", &self.image_id, 16)?;
        if !self.kernel_hashes {
            return Err(invalid(
                "kernel_hashes",
                "must be true: the launch digest covers kernel, initrd and cmdline".into(),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> BundleError {
    BundleError::InvalidConfig { field, reason }
}

/// A name safe to pass on a QEMU command line (no `,` or `=` or spaces).
fn check_token(field: &'static str, value: &str) -> Result<(), BundleError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            field,
            format!("character {c:?} not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_hex_u64(field: &'static str, value: &str) -> Result<(), BundleError> {
    let digits = value.strip_prefix("0x").unwrap_or("");
    if digits.is_empty() || digits.len() > 16 || !is_lower_hex(digits) {
        return Err(invalid(
            field,
            format!("{value:?} is not 0x followed by 1 to 16 lowercase hex digits"),
        ));
    }
    Ok(())
}

fn check_hex_bytes(field: &'static str, value: &str, bytes: usize) -> Result<(), BundleError> {
    if value.len() != bytes * 2 || !is_lower_hex(value) {
        return Err(invalid(
            field,
            format!("must be {} lowercase hex digits ({bytes} bytes)", bytes * 2),
        ));
    }
    Ok(())
}

/// The large inputs of a bundle, streamed: the kernel and initrd can be
/// hundreds of megabytes and are never held in memory.
pub struct BundleSources<'a> {
    /// Firmware image, exactly `firmware_len` bytes.
    pub firmware: &'a mut dyn Read,
    /// Length of the firmware.
    pub firmware_len: u64,
    /// Kernel, exactly `kernel_len` bytes.
    pub kernel: &'a mut dyn Read,
    /// Length of the kernel.
    pub kernel_len: u64,
    /// Initrd, exactly `initrd_len` bytes.
    pub initrd: &'a mut dyn Read,
    /// Length of the initrd.
    pub initrd_len: u64,
    /// Kernel command line, written as is (no newline added).
    pub cmdline: &'a str,
    /// ID block, [`ID_BLOCK_SIZE`] bytes.
    pub id_block: &'a [u8],
    /// ID authentication information, [`ID_AUTH_SIZE`] bytes.
    pub id_auth: &'a [u8],
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

/// Writes a bundle to `out`. The config is validated first and every
/// member is checked against [`ExtractLimits::default`], so what this
/// writes always extracts. On error the output is incomplete and must be
/// discarded.
pub fn write_bundle(
    out: impl Write,
    config: &LaunchConfig,
    src: BundleSources,
) -> Result<(), BundleError> {
    config.validate()?;
    check_fixed_size(ID_BLOCK, src.id_block.len() as u64, ID_BLOCK_SIZE)?;
    check_fixed_size(ID_AUTH, src.id_auth.len() as u64, ID_AUTH_SIZE)?;
    let limits = ExtractLimits::default();
    let mut config_json = serde_json::to_vec_pretty(config).map_err(BundleError::ConfigJson)?;
    config_json.push(b'\n');

    let sizes = [
        (LAUNCH_CONFIG, config_json.len() as u64, limits.max_config),
        (FIRMWARE, src.firmware_len, limits.max_member),
        (KERNEL, src.kernel_len, limits.max_member),
        (INITRD, src.initrd_len, limits.max_member),
        (CMDLINE, src.cmdline.len() as u64, limits.max_member),
    ];
    let mut total = (ID_BLOCK_SIZE + ID_AUTH_SIZE) as u64;
    for (member, len, limit) in sizes {
        if len > limit {
            return Err(BundleError::MemberTooLarge {
                member: member.into(),
                limit,
            });
        }
        total = total.saturating_add(len);
    }
    if total > limits.max_total {
        return Err(BundleError::TotalTooLarge {
            limit: limits.max_total,
        });
    }

    let gz = GzEncoder::new(out, Compression::default());
    let mut tar = tar::Builder::new(gz);
    append_exact(
        &mut tar,
        LAUNCH_CONFIG,
        &mut config_json.as_slice(),
        config_json.len() as u64,
    )?;
    append_exact(&mut tar, FIRMWARE, src.firmware, src.firmware_len)?;
    append_exact(&mut tar, KERNEL, src.kernel, src.kernel_len)?;
    append_exact(&mut tar, INITRD, src.initrd, src.initrd_len)?;
    let cmdline = src.cmdline.as_bytes();
    append_exact(&mut tar, CMDLINE, &mut &cmdline[..], cmdline.len() as u64)?;
    append_exact(
        &mut tar,
        ID_BLOCK,
        &mut &src.id_block[..],
        src.id_block.len() as u64,
    )?;
    append_exact(
        &mut tar,
        ID_AUTH,
        &mut &src.id_auth[..],
        src.id_auth.len() as u64,
    )?;
    let gz = tar
        .into_inner()
        .map_err(|e| io_err("finishing the tar stream", e))?;
    let mut out = gz
        .finish()
        .map_err(|e| io_err("finishing the gzip stream", e))?;
    out.flush().map_err(|e| io_err("flushing the bundle", e))?;
    Ok(())
}

fn io_err(context: &str, source: io::Error) -> BundleError {
    BundleError::Io {
        context: context.into(),
        source,
    }
}

fn check_fixed_size(member: &'static str, actual: u64, expected: usize) -> Result<(), BundleError> {
    if actual != expected as u64 {
        return Err(BundleError::WrongFixedSize {
            member,
            expected: expected as u64,
            actual,
        });
    }
    Ok(())
}

/// Appends exactly `len` bytes of `data` as `name`; a source that is
/// shorter or longer than `len` is an error.
fn append_exact<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &mut dyn Read,
    len: u64,
) -> Result<(), BundleError> {
    let mut header = Header::new_ustar();
    header
        .set_path(name)
        .map_err(|e| io_err("setting a member name", e))?;
    header.set_entry_type(EntryType::Regular);
    header.set_size(len);
    header.set_mode(MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_cksum();
    let mut counted = Counted {
        inner: data.take(len),
        count: 0,
    };
    tar.append(&header, &mut counted)
        .map_err(|e| io_err(&format!("writing {name}"), e))?;
    if counted.count != len {
        return Err(BundleError::SizeMismatch {
            member: name.into(),
            declared: len,
            actual: counted.count,
        });
    }
    let mut extra = [0u8; 1];
    let n = read_retrying(counted.inner.into_inner(), &mut extra)
        .map_err(|e| io_err(&format!("reading {name}"), e))?;
    if n != 0 {
        return Err(BundleError::SizeMismatch {
            member: name.into(),
            declared: len,
            actual: len + 1,
        });
    }
    Ok(())
}

struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn read_retrying(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Extracts a bundle into `dest_dir`, which must exist and be empty, and
/// returns its validated launch config. On any error every file this call
/// created is removed again.
pub fn extract_bundle(
    input: impl Read,
    dest_dir: &Path,
    limits: &ExtractLimits,
) -> Result<LaunchConfig, BundleError> {
    let mut entries = fs::read_dir(dest_dir).map_err(|source| BundleError::DestUnusable {
        path: dest_dir.into(),
        source,
    })?;
    if entries.next().is_some() {
        return Err(BundleError::DestNotEmpty(dest_dir.into()));
    }
    let mut created = Vec::new();
    let result = extract_into(input, dest_dir, limits, &mut created);
    if result.is_err() {
        for path in created.iter().rev() {
            // Best effort: the error being returned matters more than a
            // failure to clean up after it.
            let _ = fs::remove_file(path);
        }
    }
    result
}

fn extract_into(
    input: impl Read,
    dest_dir: &Path,
    limits: &ExtractLimits,
    created: &mut Vec<PathBuf>,
) -> Result<LaunchConfig, BundleError> {
    let mut archive = tar::Archive::new(GzDecoder::new(input));
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    let mut config_bytes = Vec::new();
    {
        // Raw mode: GNU long names and PAX headers are not interpreted but
        // returned as entries, which are then rejected as not regular
        // files. Every legitimate member fits a plain ustar header.
        let entries = archive.entries().map_err(BundleError::Corrupt)?.raw(true);
        for entry in entries {
            let mut entry = entry.map_err(BundleError::Corrupt)?;
            let member = check_member(&entry, &seen)?;
            seen.insert(member);
            let declared = entry.header().size().map_err(BundleError::Corrupt)?;
            let limit = if member == LAUNCH_CONFIG {
                limits.max_config
            } else {
                limits.max_member
            };
            if declared > limit {
                return Err(BundleError::MemberTooLarge {
                    member: member.into(),
                    limit,
                });
            }
            let path = dest_dir.join(member);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(MODE)
                .open(&path)
                .map_err(|e| io_err(&format!("creating {}", path.display()), e))?;
            created.push(path.clone());
            file.set_permissions(fs::Permissions::from_mode(MODE))
                .map_err(|e| io_err(&format!("setting mode of {}", path.display()), e))?;
            let keep = if member == LAUNCH_CONFIG {
                Some(&mut config_bytes)
            } else {
                None
            };
            let written = copy_bounded(&mut entry, &mut file, member, limit, keep)?;
            total = total.saturating_add(written);
            if total > limits.max_total {
                return Err(BundleError::TotalTooLarge {
                    limit: limits.max_total,
                });
            }
            if written != declared {
                return Err(BundleError::SizeMismatch {
                    member: member.into(),
                    declared,
                    actual: written,
                });
            }
            match member {
                ID_BLOCK => check_fixed_size(ID_BLOCK, written, ID_BLOCK_SIZE)?,
                ID_AUTH => check_fixed_size(ID_AUTH, written, ID_AUTH_SIZE)?,
                _ => {}
            }
            file.sync_all()
                .map_err(|e| io_err(&format!("syncing {}", path.display()), e))?;
        }
    }
    if let Some(missing) = MEMBERS.iter().find(|m| !seen.contains(*m)) {
        return Err(BundleError::MissingMember { member: missing });
    }
    // Read the rest of the gzip stream so its CRC and length are checked;
    // only tar padding may follow the end-of-archive marker.
    let mut rest = archive.into_inner().take(MAX_TRAILER + 1);
    let mut trailer = Vec::new();
    rest.read_to_end(&mut trailer)
        .map_err(BundleError::Corrupt)?;
    if trailer.len() as u64 > MAX_TRAILER || trailer.iter().any(|&b| b != 0) {
        return Err(BundleError::TrailingData);
    }
    let config: LaunchConfig =
        serde_json::from_slice(&config_bytes).map_err(BundleError::ConfigJson)?;
    config.validate()?;
    Ok(config)
}

/// Classifies an entry's name and type; returns the known member name.
fn check_member<R: Read>(
    entry: &tar::Entry<'_, R>,
    seen: &BTreeSet<&'static str>,
) -> Result<&'static str, BundleError> {
    let raw = entry.path_bytes();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    if raw.first() == Some(&b'/') {
        return Err(BundleError::AbsolutePath { member: shown });
    }
    if raw.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(BundleError::ParentDirectory { member: shown });
    }
    let kind = entry.header().entry_type();
    if kind != EntryType::Regular {
        return Err(BundleError::NotRegularFile {
            member: shown,
            kind: describe(kind),
        });
    }
    let Some(member) = MEMBERS.iter().copied().find(|m| m.as_bytes() == &raw[..]) else {
        return Err(BundleError::UnknownMember { member: shown });
    };
    if seen.contains(member) {
        return Err(BundleError::DuplicateMember { member: shown });
    }
    Ok(member)
}

fn describe(kind: EntryType) -> String {
    match kind {
        EntryType::Symlink => "symbolic link".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::GNULongName | EntryType::GNULongLink => "GNU long-name header".into(),
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX header".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("entry of type {:?}", other.as_byte() as char),
    }
}

/// Copies at most `limit` bytes (counting what is actually read, not what
/// the header claims); keeps a copy in `keep` when given.
fn copy_bounded(
    src: &mut dyn Read,
    dst: &mut File,
    member: &str,
    limit: u64,
    mut keep: Option<&mut Vec<u8>>,
) -> Result<u64, BundleError> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut written: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(written),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Corrupt(e)),
        };
        written = written.saturating_add(n as u64);
        if written > limit {
            return Err(BundleError::MemberTooLarge {
                member: member.into(),
                limit,
            });
        }
        let chunk = &buf[..n];
        dst.write_all(chunk)
            .map_err(|e| io_err(&format!("writing {member}"), e))?;
        if let Some(keep) = keep.as_deref_mut() {
            keep.extend_from_slice(chunk);
        }
    }
}
