//! Finding the LUKS device: `UUID=<uuid>` through /dev/disk/by-uuid (when
//! udev made it) or by scanning /sys/class/block for a LUKS header with
//! that UUID; a /dev path as given. Waits, bounded, for it to appear.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the device is looked for while waiting.
const POLL: Duration = Duration::from_millis(250);

/// The backing device, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// major:minor when it is a block device (a regular file in tests).
    pub dev: Option<(u32, u32)>,
}

/// Where to look (overridable for tests).
pub struct Roots {
    pub dev: PathBuf,
    pub sys_block: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            dev: PathBuf::from("/dev"),
            sys_block: PathBuf::from("/sys/class/block"),
        }
    }
}

/// Whether the file at `p` starts with a LUKS header of `uuid`.
fn has_luks_uuid(p: &Path, uuid: &str) -> bool {
    let mut b = [0u8; 208];
    let Ok(mut f) = File::open(p) else {
        return false;
    };
    if f.read_exact(&mut b).is_err() || &b[..6] != b"LUKS\xba\xbe" {
        return false;
    }
    let found = &b[168..208];
    let end = found.iter().position(|&c| c == 0).unwrap_or(found.len());
    std::str::from_utf8(&found[..end]).is_ok_and(|s| s.eq_ignore_ascii_case(uuid))
}

/// One look for the device named by `spec`.
pub fn find(spec: &str, roots: &Roots) -> Option<PathBuf> {
    match spec.strip_prefix("UUID=") {
        None => {
            let p = PathBuf::from(spec);
            p.exists().then_some(p)
        }
        Some(uuid) => {
            for u in [uuid.to_lowercase(), uuid.to_string()] {
                let p = roots.dev.join("disk/by-uuid").join(&u);
                if p.exists() {
                    return Some(p);
                }
            }
            let mut names: Vec<String> = std::fs::read_dir(&roots.sys_block)
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("dm-") && !n.starts_with("ram"))
                .collect();
            names.sort();
            names
                .into_iter()
                .map(|n| roots.dev.join(n))
                .find(|p| has_luks_uuid(p, uuid))
        }
    }
}

/// Waits up to `timeout` for the device, then opens it.
pub fn wait(spec: &str, roots: &Roots, timeout: Duration) -> Result<Device, String> {
    let start = Instant::now();
    loop {
        if let Some(p) = find(spec, roots) {
            return open(&p);
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "the LUKS device {spec} did not appear within {} s (check the disk is attached and its driver is in the initrd)",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Size and device number of `p`.
pub fn open(p: &Path) -> Result<Device, String> {
    let f = File::open(p).map_err(|e| format!("opening {}: {e}", p.display()))?;
    let meta = f.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
    if meta.file_type().is_block_device() {
        // A block device's end is its size.
        let size = (&f)
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("{}: finding its size: {e}", p.display()))?;
        let rdev = meta.rdev();
        Ok(Device {
            path: p.to_owned(),
            size,
            dev: Some((rustix::fs::major(rdev), rustix::fs::minor(rdev))),
        })
    } else if meta.is_file() {
        Ok(Device {
            path: p.to_owned(),
            size: meta.len(),
            dev: None,
        })
    } else {
        Err(format!("{} is not a block device", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_uuid_link_by_scanning_and_by_path() {
        let root = tempfile::tempdir().unwrap();
        let roots = Roots {
            dev: root.path().join("dev"),
            sys_block: root.path().join("sys"),
        };
        std::fs::create_dir_all(roots.dev.join("disk/by-uuid")).unwrap();
        std::fs::create_dir_all(&roots.sys_block).unwrap();
        let uuid = "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00";
        let spec = format!("UUID={uuid}");
        assert_eq!(find(&spec, &roots), None);

        // A block device seen in /sys whose header carries the UUID.
        let mut hdr = vec![0u8; 4096];
        hdr[..6].copy_from_slice(b"LUKS\xba\xbe");
        hdr[168..168 + uuid.len()].copy_from_slice(uuid.to_uppercase().as_bytes());
        std::fs::create_dir(roots.sys_block.join("vdb")).unwrap();
        std::fs::create_dir(roots.sys_block.join("vda")).unwrap();
        std::fs::write(roots.dev.join("vda"), vec![0u8; 4096]).unwrap();
        std::fs::write(roots.dev.join("vdb"), &hdr).unwrap();
        assert_eq!(find(&spec, &roots), Some(roots.dev.join("vdb")));

        // The udev link wins.
        std::fs::write(roots.dev.join("disk/by-uuid").join(uuid), &hdr).unwrap();
        assert_eq!(
            find(&spec, &roots),
            Some(roots.dev.join("disk/by-uuid").join(uuid))
        );

        let d = open(&roots.dev.join("vdb")).unwrap();
        assert_eq!((d.size, d.dev), (4096, None));
        let path = roots.dev.join("vda");
        assert_eq!(find(path.to_str().unwrap(), &roots), Some(path));
    }

    #[test]
    fn waiting_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        let roots = Roots {
            dev: root.path().to_owned(),
            sys_block: root.path().to_owned(),
        };
        let e = wait("/dev/absent-disk", &roots, Duration::from_millis(1)).unwrap_err();
        assert!(e.contains("did not appear"), "{e}");
    }
}
