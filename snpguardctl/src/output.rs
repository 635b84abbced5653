//! Writing output files: atomically (temporary file in the same
//! directory, then rename), so a reader never sees half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = tmp_path(path)?;
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given at creation.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// A file written in place of `path` and renamed over it on
/// [`AtomicFile::commit`]; removed if dropped uncommitted. For output that
/// arrives through a file descriptor (a bundle the daemon writes).
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: fs::File,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file next to `path` with `mode`.
    pub fn create(path: &Path, mode: u32) -> Result<Self> {
        let tmp = tmp_path(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|f| {
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
                Ok(f)
            })
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file,
            committed: false,
        })
    }

    /// The temporary file.
    pub fn file(&self) -> &fs::File {
        &self.file
    }

    /// Flushes the file to disk and renames it over the target.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .sync_all()
            .and_then(|()| fs::rename(&self.tmp, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_whole_file_with_mode() {
        let dir = std::env::temp_dir().join(format!("snpguardctl-out-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.bin");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left");
        assert!(write_atomic(&dir.join("missing/x"), b"", 0o644).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = std::env::temp_dir().join(format!("snpguardctl-af-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.tar.gz");
        let f = AtomicFile::create(&p, 0o644).unwrap();
        f.file().write_all(b"one").unwrap();
        drop(f);
        assert!(!p.exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "temp file removed");
        let f = AtomicFile::create(&p, 0o644).unwrap();
        f.file().write_all(b"two").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        fs::remove_dir_all(&dir).unwrap();
    }
}
