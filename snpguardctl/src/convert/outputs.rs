//! Outputs that appear only when convert succeeds: the output image and
//! the staging directory are written under temporary names next to their
//! final ones and renamed at the end; the recovery key file is created
//! under its own name (never replacing a file) and written before the
//! conversion starts. A guard removes them on any error, and the interrupt
//! handler (crate::interrupt) removes them on Ctrl-C or SIGTERM.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::interrupt::{registry, remove, Registry};

/// One output written under a temporary name.
pub struct Partial {
    tmp: PathBuf,
    target: PathBuf,
    registry: Registry,
    committed: bool,
}

impl Partial {
    /// A temporary path next to `target` (same directory, so the final
    /// rename is atomic), registered for removal. Refuses an existing
    /// `target` unless `allow_empty_dir` and it is an empty directory.
    pub fn new(target: &Path, allow_empty_dir: bool) -> Result<Self> {
        if let Ok(meta) = fs::symlink_metadata(target) {
            let empty_dir = meta.is_dir()
                && fs::read_dir(target)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
            if !(allow_empty_dir && empty_dir) {
                bail!(
                    "{} exists; remove it or choose another path",
                    target.display()
                );
            }
        }
        let name = target
            .file_name()
            .with_context(|| format!("{} has no file name", target.display()))?
            .to_string_lossy()
            .into_owned();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
        let registry = registry()?;
        registry
            .lock()
            .map_err(|_| anyhow::anyhow!("output registry poisoned"))?
            .push(tmp.clone());
        remove(&tmp);
        Ok(Partial {
            tmp,
            target: target.to_path_buf(),
            registry,
            committed: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary output to its final name.
    pub fn commit(mut self) -> Result<()> {
        if crate::interrupt::interrupted() {
            bail!("interrupted");
        }
        fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "renaming {} to {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        self.unregister();
        Ok(())
    }

    fn unregister(&self) {
        if let Ok(mut g) = self.registry.lock() {
            g.retain(|p| p != &self.tmp);
        }
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            remove(&self.tmp);
            self.unregister();
        }
    }
}

/// A new file with secret content: created with O_EXCL and mode 0600
/// under its final name (an existing file or symlink is refused, never
/// replaced), removed again unless committed.
pub struct Exclusive {
    path: PathBuf,
    registry: Registry,
    committed: bool,
}

impl Exclusive {
    /// Creates `path` and writes `content` to it, synced.
    pub fn create(path: &Path, content: &[u8]) -> Result<Self> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| {
                format!(
                    "creating {} (it must not exist; remove it or choose another path)",
                    path.display()
                )
            })?;
        let registry = registry()?;
        registry
            .lock()
            .map_err(|_| anyhow::anyhow!("output registry poisoned"))?
            .push(path.to_path_buf());
        let guard = Exclusive {
            path: path.to_path_buf(),
            registry,
            committed: false,
        };
        f.write_all(content)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(guard)
    }

    /// Keeps the file.
    pub fn commit(mut self) {
        self.committed = true;
        if let Ok(mut g) = self.registry.lock() {
            g.retain(|p| p != &self.path);
        }
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if !self.committed {
            remove(&self.path);
            if let Ok(mut g) = self.registry.lock() {
                g.retain(|p| p != &self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn an_exclusive_file_is_new_private_and_removed_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("recovery.key");
        {
            let _e = Exclusive::create(&p, b"secret\n").unwrap();
            let meta = fs::metadata(&p).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::read(&p).unwrap(), b"secret\n");
        }
        assert!(!p.exists(), "an uncommitted file is removed");

        Exclusive::create(&p, b"kept").unwrap().commit();
        assert_eq!(fs::read(&p).unwrap(), b"kept");
        let e = Exclusive::create(&p, b"other").err().unwrap();
        assert!(format!("{e:#}").contains("must not exist"), "{e:#}");
        assert_eq!(fs::read(&p).unwrap(), b"kept", "never replaced");

        // A symlink (even a dangling one) is not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("target"), &link).unwrap();
        assert!(Exclusive::create(&link, b"x").is_err());
        assert!(!d.path().join("target").exists());
    }

    #[test]
    fn partial_outputs_vanish_unless_committed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out.qcow2");
        {
            let p = Partial::new(&target, false).unwrap();
            fs::write(p.path(), b"half").unwrap();
            assert!(p.path().starts_with(d.path()));
        }
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            0,
            "dropped output removed"
        );

        let p = Partial::new(&target, false).unwrap();
        fs::write(p.path(), b"whole").unwrap();
        p.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        assert!(
            Partial::new(&target, false).is_err(),
            "existing output refused"
        );

        let dir = d.path().join("staging");
        fs::create_dir(&dir).unwrap();
        let s = Partial::new(&dir, true).unwrap();
        fs::create_dir(s.path()).unwrap();
        fs::write(s.path().join("f"), b"x").unwrap();
        s.commit().unwrap();
        assert!(dir.join("f").is_file());
        assert!(Partial::new(&dir, true).is_err(), "non-empty dir refused");
    }
}
