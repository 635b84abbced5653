//! Small durable-file helpers: atomic replacement and directory fsync.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand_core::{OsRng, RngCore};

/// Prefix of temporary files; whatever carries it in a state directory
/// is left over from a crash and may be removed at start.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// Creates `path` (and parents) with `mode` when absent.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)
}

/// Makes a directory's entries (creations, renames) durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A fresh temporary file next to where its content will be renamed to.
pub(crate) fn create_temp(dir: &Path, mode: u32) -> io::Result<(File, std::path::PathBuf)> {
    let mut rnd = [0u8; 12];
    OsRng
        .try_fill_bytes(&mut rnd)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let path = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(rnd)));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)?;
    Ok((file, path))
}

/// Replaces `path` with `data` atomically (temporary file, fsync, rename,
/// directory fsync); does nothing when the file already holds `data` with
/// `mode`. Only for non-secret files.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.is_file()
            && meta.permissions().mode() & 0o7777 == mode
            && fs::read(path).is_ok_and(|old| old == data)
        {
            return Ok(());
        }
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("a file path without a directory"))?;
    let (mut file, tmp) = create_temp(dir, mode)?;
    let written = (|| {
        file.write_all(data)?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// Removes the temporary files a crash left in `dir`.
pub(crate) fn remove_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_files_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let (_f, p) = create_temp(dir.path(), 0o600).unwrap();
        fs::write(dir.path().join("keep"), b"x").unwrap();
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert!(!p.exists());
        assert!(dir.path().join("keep").exists());
    }
}
