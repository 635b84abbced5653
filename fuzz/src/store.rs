//! An in-memory [`Store`] for the certificate import target: the same
//! contract as the daemon's sled store (atomic transactions, key order),
//! without a disk, so that every execution starts empty and what an
//! import wrote can be looked at.

use std::collections::BTreeMap;
use std::sync::Mutex;

use snpguardd::store::{Entries, Entry, Op, Store, StoreError, Tree};

/// Values by (tree name, key).
type Trees = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

/// Trees of byte keys and values behind one lock.
#[derive(Default)]
pub struct MemStore(Mutex<Trees>);

impl MemStore {
    fn map(&self) -> std::sync::MutexGuard<'_, Trees> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every entry of every tree.
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

impl Store for MemStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(&(tree.name(), key.to_vec())).cloned())
    }

    fn entries(&self, tree: Tree) -> Result<Entries, StoreError> {
        Ok(self
            .map()
            .iter()
            .filter(|((t, _), _)| *t == tree.name())
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn transaction(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut map = self.map();
        for op in ops {
            if let Op::Expect { tree, key, value } = op {
                if map.get(&(tree.name(), key.clone())) != value.as_ref() {
                    return Err(StoreError::Conflict {
                        tree: tree.name(),
                        key: String::from_utf8_lossy(key).into_owned(),
                    });
                }
            }
        }
        for op in ops {
            match op {
                Op::Put { tree, key, value } => {
                    map.insert((tree.name(), key.clone()), value.clone());
                }
                Op::Delete { tree, key } => {
                    map.remove(&(tree.name(), key.clone()));
                }
                Op::Expect { .. } => {}
            }
        }
        Ok(())
    }

    fn transaction_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.transaction(ops)
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn insert_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let mut map = self.map();
        let k = (tree.name(), key.to_vec());
        if map.contains_key(&k) {
            return Ok(false);
        }
        map.insert(k, value.to_vec());
        Ok(true)
    }

    fn keys_below(&self, tree: Tree, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self
            .map()
            .keys()
            .filter(|(t, k)| *t == tree.name() && k.as_slice() < end)
            .take(limit)
            .map(|(_, k)| k.clone())
            .collect())
    }

    fn last(&self, tree: Tree) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .map()
            .iter()
            .rev()
            .find(|((t, _), _)| *t == tree.name())
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }
}
