//! Content-addressed blob files: `<state>/blobs/<sha256 hex>`.
//!
//! When the store is shared by replicas, every blob is also copied into
//! it ([`Tree::Blobs`]: 1 MiB chunks, then a manifest) before the record
//! that references it is committed, and a replica that lacks a blob's
//! file fetches it chunk by chunk (never the whole blob in memory),
//! checks its SHA-256 and keeps it as a file. Unreferenced blobs in the
//! shared store are removed once older than [`SHARED_GC_GRACE_SECS`], so
//! a registration in flight on another replica keeps its blobs.
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
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil;
use crate::service::ServiceError;
use crate::store::{Op, Store, Tree};

/// Chunk size of a blob in the shared store.
pub const CHUNK: usize = 1 << 20;
/// Age below which an unreferenced blob in the shared store is kept: it
/// may belong to a registration another replica has not committed yet.
pub const SHARED_GC_GRACE_SECS: u64 = 3600;

/// What the shared store says about a blob (`m/<sha256>`), written after
/// its chunks.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    len: u64,
    chunks: u32,
    /// Seconds since the epoch when it was uploaded.
    created: u64,
}

fn manifest_key(sha256: &str) -> Vec<u8> {
    format!("m/{sha256}").into_bytes()
}

fn chunk_key(sha256: &str, index: u32) -> Vec<u8> {
    let mut k = format!("c/{sha256}/").into_bytes();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a blob's chunks from the shared store in order.
struct ChunkReader<'a> {
    store: &'a dyn Store,
    sha256: &'a str,
    chunks: u32,
    next: u32,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.next == self.chunks {
                return Ok(0);
            }
            self.buf = self
                .store
                .get(Tree::Blobs, &chunk_key(self.sha256, self.next))
                .map_err(io::Error::other)?
                .ok_or_else(|| {
                    io::Error::other(format!("chunk {} of the shared blob is missing", self.next))
                })?;
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A stored blob: its SHA-256 (hex) and length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the content, 64 lowercase hex digits (the file name).
    pub sha256: String,
    /// Length in bytes.
    pub len: u64,
}

/// The blob directory, and the shared store when replicas share one.
pub struct Blobs {
    dir: PathBuf,
    shared: Option<Arc<dyn Store>>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("dir", &self.dir)
            .field("shared", &self.shared.is_some())
            .finish()
    }
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
        Ok(Blobs { dir, shared: None })
    }

    /// Also keeps every blob in `store`, shared by replicas.
    pub fn with_shared(mut self, store: Arc<dyn Store>) -> Blobs {
        self.shared = Some(store);
        self
    }

    /// The file of a blob, fetched from the shared store first when this
    /// replica does not have it.
    pub fn local(&self, blob: &BlobRef) -> Result<PathBuf, ServiceError> {
        let path = self.path(blob);
        match (&self.shared, path.exists()) {
            (Some(store), false) => {
                self.fetch(&**store, blob)?;
                Ok(path)
            }
            _ => Ok(path),
        }
    }

    fn fetch(&self, store: &dyn Store, blob: &BlobRef) -> Result<(), ServiceError> {
        let manifest = store
            .get(Tree::Blobs, &manifest_key(&blob.sha256))
            .map_err(super::store_err)?
            .ok_or_else(|| {
                ServiceError::Storage(format!(
                    "blob {} is neither in {} nor in the shared store; restore it from a backup",
                    blob.sha256,
                    self.dir.display()
                ))
            })?;
        let manifest: Manifest = serde_json::from_slice(&manifest).map_err(|e| {
            ServiceError::Storage(format!("the shared manifest of blob {}: {e}", blob.sha256))
        })?;
        if manifest.len != blob.len {
            return Err(ServiceError::Storage(format!(
                "the shared blob {} is {} bytes, the record says {}",
                blob.sha256, manifest.len, blob.len
            )));
        }
        let mut reader = ChunkReader {
            store,
            sha256: &blob.sha256,
            chunks: manifest.chunks,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        };
        let got = self
            .store_local("shared blob", &mut reader, blob.len)
            .map_err(|e| match e {
                ServiceError::InvalidInput(m) => ServiceError::Storage(m),
                e => e,
            })?;
        if got != *blob {
            let _ = fs::remove_file(self.path(&got));
            return Err(ServiceError::Storage(format!(
                "the shared blob {} has other content (SHA-256 {}); the shared store is damaged",
                blob.sha256, got.sha256
            )));
        }
        Ok(())
    }

    /// Whether the shared store holds a whole blob (its manifest, written
    /// after its chunks); `false` without a shared store.
    pub fn is_shared(&self, sha256: &str) -> Result<bool, ServiceError> {
        let Some(store) = &self.shared else {
            return Ok(false);
        };
        Ok(store
            .get(Tree::Blobs, &manifest_key(sha256))
            .map_err(super::store_err)?
            .is_some())
    }

    /// Copies every local blob into the shared store (`migrate-store`);
    /// returns how many blobs it holds.
    pub fn share_all(&self) -> Result<usize, ServiceError> {
        let Some(store) = &self.shared else {
            return Ok(0);
        };
        let mut n = 0;
        let entries = fs::read_dir(&self.dir).map_err(|e| storage("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| storage("listing", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_blob_name(name) {
                continue;
            }
            let len = entry
                .metadata()
                .map_err(|e| storage("reading", &entry.path(), e))?
                .len();
            self.upload(
                &**store,
                &BlobRef {
                    sha256: name.to_owned(),
                    len,
                },
            )?;
            n += 1;
        }
        Ok(n)
    }

    /// Copies a local blob into the shared store (chunks, then the
    /// manifest), unless it is there already.
    fn upload(&self, store: &dyn Store, blob: &BlobRef) -> Result<(), ServiceError> {
        let key = manifest_key(&blob.sha256);
        if store
            .get(Tree::Blobs, &key)
            .map_err(super::store_err)?
            .is_some()
        {
            return Ok(());
        }
        let path = self.path(blob);
        let mut file = File::open(&path).map_err(|e| storage("opening", &path, e))?;
        let mut buf = vec![0u8; CHUNK];
        let mut index: u32 = 0;
        loop {
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(storage("reading", &path, e)),
                }
            }
            if filled == 0 {
                break;
            }
            store
                .put(Tree::Blobs, &chunk_key(&blob.sha256, index), &buf[..filled])
                .map_err(super::store_err)?;
            index += 1;
            if filled < CHUNK {
                break;
            }
        }
        let manifest = serde_json::to_vec(&Manifest {
            len: blob.len,
            chunks: index,
            created: now_secs(),
        })
        .map_err(|e| ServiceError::Storage(format!("encoding a blob manifest: {e}")))?;
        store
            .put(Tree::Blobs, &key, &manifest)
            .map_err(super::store_err)
    }

    /// The file of a blob.
    pub fn path(&self, blob: &BlobRef) -> PathBuf {
        self.dir.join(&blob.sha256)
    }

    /// Copies `src` into a blob (and into the shared store, if any);
    /// refuses more than `max` bytes. `field` names the input in errors.
    pub fn store(
        &self,
        field: &str,
        src: &mut dyn Read,
        max: u64,
    ) -> Result<BlobRef, ServiceError> {
        let blob = self.store_local(field, src, max)?;
        if let Some(store) = &self.shared {
            self.upload(&**store, &blob)?;
        }
        Ok(blob)
    }

    fn store_local(
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
        let path = self.local(blob)?;
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
        if let Some(store) = &self.shared {
            removed += collect_shared(&**store, referenced, now_secs())?;
        }
        Ok(removed)
    }
}

/// Removes the shared blobs no record references and older than the
/// grace period (manifest first, so a half-removed blob is never
/// fetched); returns how many.
fn collect_shared(
    store: &dyn Store,
    referenced: &BTreeSet<String>,
    now: u64,
) -> Result<usize, ServiceError> {
    let keys = store
        .keys_below(Tree::Blobs, b"n", usize::MAX)
        .map_err(super::store_err)?;
    let mut removed = 0;
    for key in keys.iter().filter(|k| k.starts_with(b"m/")) {
        let Ok(sha) = std::str::from_utf8(&key[2..]) else {
            continue;
        };
        if referenced.contains(sha) {
            continue;
        }
        let Some(value) = store.get(Tree::Blobs, key).map_err(super::store_err)? else {
            continue;
        };
        let created = serde_json::from_slice::<Manifest>(&value)
            .map(|m| m.created)
            .unwrap_or(0);
        if now.saturating_sub(created) < SHARED_GC_GRACE_SECS {
            continue;
        }
        let prefix = format!("c/{sha}/").into_bytes();
        let mut ops = vec![Op::delete(Tree::Blobs, key.clone())];
        ops.extend(
            keys.iter()
                .filter(|k| k.starts_with(&prefix))
                .map(|k| Op::delete(Tree::Blobs, k.clone())),
        );
        store.transaction(&ops).map_err(super::store_err)?;
        removed += 1;
    }
    Ok(removed)
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
    fn shared_blobs_travel_in_chunks_and_are_checked() {
        use crate::store::SledStore;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let a = Blobs::open(dir.path().join("a"))
            .unwrap()
            .with_shared(store.clone());
        let content: Vec<u8> = (0..(2 * CHUNK + 12345)).map(|i| (i % 253) as u8).collect();
        let blob = a.store("initrd", &mut &content[..], 1 << 30).unwrap();
        // Three chunks and a manifest.
        assert_eq!(store.entries(Tree::Blobs).unwrap().len(), 4);

        // Another replica fetches it into a file of its own.
        let b = Blobs::open(dir.path().join("b"))
            .unwrap()
            .with_shared(store.clone());
        assert!(!b.path(&blob).exists());
        let path = b.local(&blob).unwrap();
        assert_eq!(fs::read(&path).unwrap(), content);

        // A damaged chunk is never accepted as the blob.
        let c = Blobs::open(dir.path().join("c"))
            .unwrap()
            .with_shared(store.clone());
        store
            .put(Tree::Blobs, &chunk_key(&blob.sha256, 1), b"damaged")
            .unwrap();
        let err = c.local(&blob).unwrap_err();
        assert!(matches!(err, ServiceError::Storage(_)), "{err:?}");
        assert!(!c.path(&blob).exists());
        assert_eq!(fs::read_dir(dir.path().join("c")).unwrap().count(), 0);

        // Unreferenced: kept during the grace period, removed after it.
        let none = BTreeSet::new();
        assert_eq!(collect_shared(&*store, &none, now_secs()).unwrap(), 0);
        let later = now_secs() + SHARED_GC_GRACE_SECS + 1;
        let referenced = BTreeSet::from([blob.sha256.clone()]);
        assert_eq!(collect_shared(&*store, &referenced, later).unwrap(), 0);
        assert_eq!(collect_shared(&*store, &none, later).unwrap(), 1);
        assert!(store.entries(Tree::Blobs).unwrap().is_empty());
        let err = Blobs::open(dir.path().join("d"))
            .unwrap()
            .with_shared(store)
            .local(&blob)
            .unwrap_err();
        assert!(err.to_string().contains("neither in"), "{err}");
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
