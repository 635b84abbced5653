//! Content-addressed blob files: `<state>/blobs/<sha256 hex>`.
//!
//! A blob is streamed (bounded) into a temporary file in the same
//! directory, fsynced and renamed to its digest, so a blob file is always
//! complete. Blobs are written before the record that references them is
//! committed; blobs no record references (a crash or failure between the
//! two, or a deleted record) are removed by [`Blobs::collect_garbage`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::service::ServiceError;

/// A stored blob: its SHA-256 (hex) and length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the content, 64 lowercase hex digits (the file name).
    pub sha256: String,
    /// Length in bytes.
    pub len: u64,
}

/// The blob directory.
#[derive(Debug)]
pub struct Blobs {
    dir: PathBuf,
}

fn storage(what: &str, path: &Path, e: io::Error) -> ServiceError {
    ServiceError::Storage(format!("{what} {}: {e}", path.display()))
}

fn is_blob_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Blobs {
    /// Opens the blob directory, creating it when absent, and removes the
    /// temporary files an interrupted write left (call before any write
    /// can be in flight).
    pub fn open(dir: PathBuf) -> Result<Blobs, ServiceError> {
        fsutil::ensure_dir(&dir, 0o700).map_err(|e| storage("creating", &dir, e))?;
        fsutil::remove_temp_files(&dir).map_err(|e| storage("cleaning", &dir, e))?;
        Ok(Blobs { dir })
    }

    /// The file of a blob.
    pub fn path(&self, blob: &BlobRef) -> PathBuf {
        self.dir.join(&blob.sha256)
    }

    /// Copies `src` into a blob; refuses more than `max` bytes. `field`
    /// names the input in errors.
    pub fn store(
        &self,
        field: &str,
        src: &mut dyn Read,
        max: u64,
    ) -> Result<BlobRef, ServiceError> {
        let (mut file, tmp) =
            fsutil::create_temp(&self.dir, 0o600).map_err(|e| storage("creating", &self.dir, e))?;
        let result = self.fill(field, src, max, &mut file, &tmp);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn fill(
        &self,
        field: &str,
        src: &mut dyn Read,
        max: u64,
        file: &mut File,
        tmp: &Path,
    ) -> Result<BlobRef, ServiceError> {
        let mut hasher = Sha256::new();
        let mut len: u64 = 0;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ServiceError::InvalidInput(format!(
                        "{field}: cannot read it: {e}; pass a readable regular file"
                    )))
                }
            };
            len += n as u64;
            if len > max {
                return Err(ServiceError::InvalidInput(format!(
                    "{field} is larger than {} MiB; is it the right file?",
                    max >> 20
                )));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| storage("writing", tmp, e))?;
        }
        file.sync_all().map_err(|e| storage("syncing", tmp, e))?;
        let blob = BlobRef {
            sha256: hex::encode(hasher.finalize()),
            len,
        };
        // Same name, same content: an existing blob is as good as ours.
        fs::rename(tmp, self.path(&blob)).map_err(|e| storage("renaming", tmp, e))?;
        fsutil::fsync_dir(&self.dir).map_err(|e| storage("syncing", &self.dir, e))?;
        Ok(blob)
    }

    /// Opens a blob for reading, checking its length.
    pub fn open_blob(&self, blob: &BlobRef) -> Result<File, ServiceError> {
        let path = self.path(blob);
        let file = File::open(&path).map_err(|e| storage("opening", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| storage("reading", &path, e))?
            .len();
        if len != blob.len {
            return Err(ServiceError::Storage(format!(
                "{} is {len} bytes, the record says {}; restore the state directory",
                path.display(),
                blob.len
            )));
        }
        Ok(file)
    }

    /// Removes every blob whose digest is not in `referenced`; returns how
    /// many. The caller must make sure no registration is between writing
    /// its blobs and committing its record.
    pub fn collect_garbage(&self, referenced: &BTreeSet<String>) -> Result<usize, ServiceError> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.dir).map_err(|e| storage("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| storage("listing", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_blob_name(name) && !referenced.contains(name) {
                fs::remove_file(entry.path()).map_err(|e| storage("removing", &entry.path(), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsutil::fsync_dir(&self.dir).map_err(|e| storage("syncing", &self.dir, e))?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_content_addressed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path().join("blobs")).unwrap();
        let a = blobs.store("kernel", &mut &b"hello"[..], 5).unwrap();
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(a.len, 5);
        let again = blobs.store("kernel", &mut &b"hello"[..], 5).unwrap();
        assert_eq!(a, again);
        assert_eq!(fs::read(blobs.path(&a)).unwrap(), b"hello");

        let err = blobs.store("initrd", &mut &b"toolong"[..], 5).unwrap_err();
        assert!(
            matches!(&err, ServiceError::InvalidInput(m) if m.starts_with("initrd is larger")),
            "{err:?}"
        );
        // Only the one blob; the refused copy left no temporary file.
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 1);
    }

    #[test]
    fn garbage_collection_keeps_referenced_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path().join("blobs")).unwrap();
        let keep = blobs.store("a", &mut &b"keep"[..], 100).unwrap();
        let drop = blobs.store("b", &mut &b"drop"[..], 100).unwrap();
        fs::write(dir.path().join("blobs/README"), b"not a blob").unwrap();
        let referenced = BTreeSet::from([keep.sha256.clone()]);
        assert_eq!(blobs.collect_garbage(&referenced).unwrap(), 1);
        assert!(blobs.path(&keep).exists());
        assert!(!blobs.path(&drop).exists());
        assert!(dir.path().join("blobs/README").exists());
    }

    #[test]
    fn open_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blobs");
        fs::create_dir(&path).unwrap();
        fs::write(path.join(".tmp-0123"), b"half").unwrap();
        Blobs::open(path.clone()).unwrap();
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    }

    #[test]
    fn length_mismatch_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path().join("blobs")).unwrap();
        let mut b = blobs.store("a", &mut &b"abc"[..], 100).unwrap();
        b.len = 4;
        assert!(matches!(blobs.open_blob(&b), Err(ServiceError::Storage(_))));
    }
}
