//! The schema version of the database and the migrations between
//! versions.
//!
//! Version history:
//! - 0: a database written before the version entry existed (or a new,
//!   empty one). Its trees already have the version 1 layout.
//! - 1: `meta/schema_version` present; records are JSON with `"v": 1`.
//!   The trees `nonces`, `certs` and `audit` were added later without a
//!   version bump: they are new trees (sled creates them empty on open),
//!   no existing entry changes shape, and an older snpguardd opening the
//!   database simply never looks at them. A change to the layout of an
//!   existing tree still needs a new version and a migration step.
//!
//! A step from version `n` to `n + 1` is `MIGRATIONS[n]`: it reads the
//! store and returns the mutations to make. [`migrate`] applies them
//! together with the new version number in one transaction, so a crash
//! mid-migration leaves the database at `n` and the step runs again.

use super::{Op, Store, StoreError, Tree};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Key of the schema version in [`Tree::Meta`] (a big-endian u32).
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// One migration step: the mutations that turn the store's contents into
/// the next version's layout (a message on failure).
pub type Migration = fn(&dyn Store) -> Result<Vec<Op>, String>;

/// The steps from version 0 up to [`SCHEMA_VERSION`].
pub(crate) const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [v0_to_v1];

/// Version 0 had the version 1 layout without the version entry; the
/// step has nothing to rewrite (the version entry is added by
/// [`migrate`]).
fn v0_to_v1(_store: &dyn Store) -> Result<Vec<Op>, String> {
    Ok(Vec::new())
}

/// The store's schema version; 0 when the entry is absent.
pub fn schema_version(store: &dyn Store) -> Result<u32, StoreError> {
    match store.get(Tree::Meta, SCHEMA_VERSION_KEY)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::CorruptSchemaVersion { len: v.len() })?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// Brings the store to version `steps.len()` by running the missing
/// `steps`, each in its own transaction with its version bump. Refuses a
/// store newer than that. Returns the version the store had.
pub fn migrate(store: &dyn Store, steps: &[Migration]) -> Result<u32, StoreError> {
    let target = u32::try_from(steps.len()).map_err(|_| StoreError::Migration {
        from: 0,
        error: "too many migration steps".into(),
    })?;
    let found = schema_version(store)?;
    if found > target {
        return Err(StoreError::NewerSchema {
            found,
            supported: target,
        });
    }
    let mut version = found;
    while version < target {
        let step = steps[version as usize];
        let mut ops = step(store).map_err(|error| StoreError::Migration {
            from: version,
            error,
        })?;
        ops.push(Op::put(
            Tree::Meta,
            SCHEMA_VERSION_KEY,
            (version + 1).to_be_bytes(),
        ));
        store.transaction(&ops)?;
        version += 1;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn version(s: &SledStore) -> u32 {
        schema_version(s).unwrap()
    }

    #[test]
    fn new_database_is_at_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        assert_eq!(version(&s), SCHEMA_VERSION);
    }

    #[test]
    fn v0_database_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // A pre-versioning database: data, no version entry.
            let s = SledStore::open_unmigrated(&path).unwrap();
            s.put(Tree::Records, b"r", b"data").unwrap();
            assert_eq!(version(&s), 0);
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(version(&s), 1);
        assert_eq!(s.get(Tree::Records, b"r").unwrap().unwrap(), b"data");
    }

    #[test]
    fn newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = SledStore::open(&path).unwrap();
            s.put(Tree::Meta, SCHEMA_VERSION_KEY, &7u32.to_be_bytes())
                .unwrap();
        }
        let err = SledStore::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found: 7,
                    supported: SCHEMA_VERSION
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn corrupt_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = SledStore::open(&path).unwrap();
            s.put(Tree::Meta, SCHEMA_VERSION_KEY, b"x").unwrap();
        }
        let err = SledStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::CorruptSchemaVersion { len: 1 }));
    }

    fn rename_a_to_b(s: &dyn Store) -> Result<Vec<Op>, String> {
        let v = s.get(Tree::Records, b"a").map_err(|e| e.to_string())?;
        let v = v.ok_or("no a")?;
        Ok(vec![
            Op::delete(Tree::Records, "a"),
            Op::put(Tree::Records, "b", v),
        ])
    }

    fn fail(_: &dyn Store) -> Result<Vec<Op>, String> {
        Err("boom".into())
    }

    #[test]
    fn steps_run_in_order_from_the_stored_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        s.put(Tree::Records, b"a", b"1").unwrap();
        // At version 1: step 0 must not run again, step 1 must.
        let found = migrate(&s, &[fail, rename_a_to_b]).unwrap();
        assert_eq!(found, 1);
        assert_eq!(version(&s), 2);
        assert_eq!(s.get(Tree::Records, b"b").unwrap().unwrap(), b"1");
        assert_eq!(s.get(Tree::Records, b"a").unwrap(), None);
        // Already current: nothing runs.
        assert_eq!(migrate(&s, &[fail, fail]).unwrap(), 2);
    }

    #[test]
    fn failed_step_leaves_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(&dir.path().join("db")).unwrap();
        let err = migrate(&s, &[v0_to_v1, fail]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Migration { from: 1, error } if error == "boom"),
            "{err:?}"
        );
        assert_eq!(version(&s), 1);
    }
}
