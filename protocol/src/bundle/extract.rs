//! Extracting a bundle without trusting it.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::{
    check_fixed_size, io_err, BundleError, ExtractLimits, LaunchConfig, COPY_BUF, ID_AUTH,
    ID_BLOCK, LAUNCH_CONFIG, MAX_TRAILER, MEMBERS, MODE,
};
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};

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
