//! The sled implementation of [`Store`].

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::schema::{migrate, MIGRATIONS};
use super::{Entries, Entry, Op, Store, StoreError, Tree};

/// A sled database with one sled tree per [`Tree`].
pub struct SledStore {
    db: sled::Db,
    /// Indexed by [`Tree::index`].
    trees: Vec<sled::Tree>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SledStore {
    /// Opens (creating when absent) the database in directory `path` and
    /// brings its schema to [`super::SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let store = Self::open_unmigrated(path)?;
        migrate(&store, &MIGRATIONS)?;
        Ok(store)
    }

    /// Opens the database without looking at its schema version.
    pub(crate) fn open_unmigrated(path: &Path) -> Result<SledStore, StoreError> {
        let open_err = |e: sled::Error| StoreError::Open {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let db = open_locked(path).map_err(open_err)?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(open_err)?;
        Ok(SledStore { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn entries(&self, tree: Tree) -> Result<Entries, StoreError> {
        self.tree(tree)
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn transaction_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        let result: Result<(), TransactionError<StoreError>> =
            self.trees[..].transaction(|views| {
                for op in ops {
                    if let Op::Expect { tree, key, value } = op {
                        let found = views[tree.index()].get(key.as_slice())?;
                        if found.as_deref() != value.as_deref() {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::Conflict {
                                    tree: tree.name(),
                                    key: String::from_utf8_lossy(key).into_owned(),
                                },
                            ));
                        }
                    }
                }
                for op in ops {
                    match op {
                        Op::Put { tree, key, value } => {
                            views[tree.index()].insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::Delete { tree, key } => {
                            views[tree.index()].remove(key.as_slice())?;
                        }
                        Op::Expect { .. } => {}
                    }
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(backend(e)),
            Err(TransactionError::Abort(e)) => return Err(e),
        }
        Ok(())
    }

    fn transaction(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.transaction_deferred(ops)?;
        self.flush()
    }

    fn flush_is_grouped(&self) -> bool {
        true
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Concurrent callers share the work: sled writes its log once up
        // to the newest reserved position and a caller whose writes are
        // already stable returns without another sync (group commit).
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn insert_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let swapped = self
            .tree(tree)
            .compare_and_swap(key, None::<&[u8]>, Some(value))
            .map_err(backend)?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.db.flush().map_err(backend)?;
        Ok(true)
    }

    fn keys_below(&self, tree: Tree, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree(tree)
            .range::<&[u8], _>(..end)
            .keys()
            .take(limit)
            .map(|k| k.map(|k| k.to_vec()).map_err(backend))
            .collect()
    }

    fn last(&self, tree: Tree) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .tree(tree)
            .last()
            .map_err(backend)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}

/// How long to wait for the database lock. sled releases it when its
/// last handle is gone, which can trail a drop by a background job; a
/// second daemon on the same state directory waits this long, then fails.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database, retrying while another handle (in this
/// process, finishing its drop, or another process) holds its lock.
fn open_locked(path: &Path) -> Result<sled::Db, sled::Error> {
    // sled reports a held lock as an I/O error whose text says so (the
    // OS error inside is EWOULDBLOCK).
    fn is_lock_held(e: &sled::Error) -> bool {
        matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
    }
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new()
            .path(path)
            .flush_every_ms(Some(super::DEFERRED_FLUSH_MS))
            .open()
        {
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                // Bounded back-off while the holder goes away.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) if is_lock_held(&e) => {
                return Err(sled::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{e}; another snpguardd is using this state directory \
                         (stop it, or give this one its own --state-dir)"
                    ),
                )))
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SCHEMA_VERSION, SCHEMA_VERSION_KEY};

    #[test]
    fn put_get_delete_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        s.put(Tree::Records, b"b", b"2").unwrap();
        s.put(Tree::Records, b"a", b"1").unwrap();
        s.put(Tree::Names, b"a", b"other tree").unwrap();
        assert_eq!(
            s.get(Tree::Records, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            s.entries(Tree::Records).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        s.delete(Tree::Records, b"a").unwrap();
        s.delete(Tree::Records, b"absent").unwrap();
        assert_eq!(s.get(Tree::Records, b"a").unwrap(), None);
        assert_eq!(
            s.get(Tree::Names, b"a").unwrap().as_deref(),
            Some(&b"other tree"[..])
        );
    }

    #[test]
    fn a_held_database_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _held = SledStore::open(&path).unwrap();
        // sled's lock is per process only through its own handle, so the
        // contender runs in a child process.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::sled_store::tests::child_opens_held_db"])
            .args(["--nocapture", "--test-threads=1"])
            .env("SNPGUARD_HELD_DB", &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("REFUSED"), "{text}");
        assert!(text.contains("another snpguardd"), "{text}");
    }

    #[test]
    fn child_opens_held_db() {
        let Some(path) = std::env::var_os("SNPGUARD_HELD_DB") else {
            return;
        };
        match SledStore::open(std::path::Path::new(&path)) {
            Ok(_) => panic!("opened a database another process holds"),
            Err(e) => println!("REFUSED: {e}"),
        }
    }

    #[test]
    fn transaction_spans_trees_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = SledStore::open(&path).unwrap();
            s.put(Tree::Secrets, b"old", b"x").unwrap();
            s.transaction(&[
                Op::put(Tree::Records, "r1", "rec"),
                Op::put(Tree::Names, "n1", "r1"),
                Op::put(Tree::Secrets, "vmk/r1", "sealed"),
                Op::delete(Tree::Secrets, "old"),
            ])
            .unwrap();
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.get(Tree::Records, b"r1").unwrap().unwrap(), b"rec");
        assert_eq!(s.get(Tree::Names, b"n1").unwrap().unwrap(), b"r1");
        assert_eq!(s.get(Tree::Secrets, b"vmk/r1").unwrap().unwrap(), b"sealed");
        assert_eq!(s.get(Tree::Secrets, b"old").unwrap(), None);
        assert_eq!(
            s.get(Tree::Meta, SCHEMA_VERSION_KEY).unwrap().unwrap(),
            SCHEMA_VERSION.to_be_bytes()
        );
    }

    #[test]
    fn insert_new_inserts_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        assert!(s.insert_new(Tree::Nonces, b"n1", b"a").unwrap());
        assert!(!s.insert_new(Tree::Nonces, b"n1", b"b").unwrap());
        assert_eq!(s.get(Tree::Nonces, b"n1").unwrap().unwrap(), b"a");
        assert!(!s.insert_new(Tree::Nonces, b"n1", b"c").unwrap());
    }

    #[test]
    fn insert_new_is_race_free() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let wins: usize = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || s.insert_new(Tree::Nonces, b"k", b"v").unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn keys_below_and_last() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(s.last(Tree::Audit).unwrap(), None);
        for k in [b"a", b"b", b"c", b"d"] {
            s.put(Tree::Audit, k, b"x").unwrap();
        }
        assert_eq!(
            s.keys_below(Tree::Audit, b"c", 10).unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            s.keys_below(Tree::Audit, b"d", 1).unwrap(),
            vec![b"a".to_vec()]
        );
        assert_eq!(
            s.last(Tree::Audit).unwrap(),
            Some((b"d".to_vec(), b"x".to_vec()))
        );
    }

    #[test]
    fn op_debug_hides_values() {
        let op = Op::put(Tree::Secrets, "vmk/r1", "PLAINTEXT-SECRET");
        let dbg = format!("{op:?}");
        assert!(!dbg.contains("PLAINTEXT"), "{dbg}");
        assert!(dbg.contains("value_len: 16"), "{dbg}");
    }
}
