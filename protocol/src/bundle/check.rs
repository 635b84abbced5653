//! Checking a bundle that is already extracted (by `extract_bundle`, or
//! read member by member from an image's LAUNCH_ARTIFACTS partition), as
//! the QEMU launch script needs before it boots it: every member a
//! regular file with one link and a bounded size, the fixed sizes, no
//! empty firmware, kernel or initrd, a valid `launch-config.json` and a
//! command line QEMU can carry byte for byte.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{
    check_fixed_size, io_err, BundleError, ExtractLimits, LaunchConfig, CMDLINE, FIRMWARE, ID_AUTH,
    ID_BLOCK, INITRD, KERNEL, LAUNCH_CONFIG, MEMBERS,
};
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};
use snpguard::measure::MAX_CMDLINE_LEN;

/// Checks the bundle extracted in `dir` within `limits`; returns its
/// validated launch config. Reads only the members, never follows a link.
pub fn check_extracted(dir: &Path, limits: &ExtractLimits) -> Result<LaunchConfig, BundleError> {
    let mut total: u64 = 0;
    for member in MEMBERS {
        let path = dir.join(member);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::MissingMember { member })
            }
            Err(e) => return Err(io_err(&format!("reading {}", path.display()), e)),
        };
        let kind = meta.file_type();
        if !kind.is_file() || meta.nlink() != 1 {
            let kind = if kind.is_symlink() {
                "symbolic link"
            } else if kind.is_dir() {
                "directory"
            } else if kind.is_file() {
                "hard link"
            } else {
                "special file"
            };
            return Err(BundleError::NotRegularFile {
                member: member.into(),
                kind: kind.into(),
            });
        }
        let size = meta.len();
        let limit = if member == LAUNCH_CONFIG {
            limits.max_config
        } else {
            limits.max_member
        };
        if size > limit {
            return Err(BundleError::MemberTooLarge {
                member: member.into(),
                limit,
            });
        }
        total = total.saturating_add(size);
        match member {
            ID_BLOCK => check_fixed_size(ID_BLOCK, size, ID_BLOCK_SIZE)?,
            ID_AUTH => check_fixed_size(ID_AUTH, size, ID_AUTH_SIZE)?,
            FIRMWARE | KERNEL | INITRD if size == 0 => {
                return Err(BundleError::EmptyMember { member })
            }
            _ => {}
        }
    }
    if total > limits.max_total {
        return Err(BundleError::TotalTooLarge {
            limit: limits.max_total,
        });
    }
    let read = |member: &str| {
        let path = dir.join(member);
        fs::read(&path).map_err(|e| io_err(&format!("reading {}", path.display()), e))
    };
    let config: LaunchConfig =
        serde_json::from_slice(&read(LAUNCH_CONFIG)?).map_err(BundleError::ConfigJson)?;
    config.validate()?;
    let cmdline = read(CMDLINE)?;
    // QEMU takes the command line from argv and hashes strlen() + 1
    // bytes: a NUL would cut it short of what was measured.
    if cmdline.contains(&0) {
        return Err(BundleError::Cmdline(
            "it contains a NUL byte, which QEMU's -append cannot carry; re-register with a clean \
             command line"
                .into(),
        ));
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(BundleError::Cmdline(format!(
            "it is {} bytes; no launch with more than {MAX_CMDLINE_LEN} was measured",
            cmdline.len()
        )));
    }
    if std::str::from_utf8(&cmdline).is_err() {
        return Err(BundleError::Cmdline("it is not UTF-8 text".into()));
    }
    Ok(config)
}
