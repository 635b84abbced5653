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
//! - 2: records are JSON with `"v": 2`: the launch fields of a version 1
//!   record (measurement, kernel, initrd, cmdline, ID block and auth)
//!   moved into a list of launches. The version 1 launch becomes launch
//!   1, approved at the record's creation, origin `registration`.
//!
//! A step from version `n` to `n + 1` is `MIGRATIONS[n]`: it reads the
//! store and returns the mutations to make. [`migrate`] applies them
//! together with the new version number in one transaction, so a crash
//! mid-migration leaves the database at `n` and the step runs again.

use super::{Op, Store, StoreError, Tree};

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 2;
/// Key of the schema version in [`Tree::Meta`] (a big-endian u32).
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// One migration step: the mutations that turn the store's contents into
/// the next version's layout (a message on failure).
pub type Migration = fn(&dyn Store) -> Result<Vec<Op>, String>;

/// The steps from version 0 up to [`SCHEMA_VERSION`].
pub(crate) const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [v0_to_v1, v1_to_v2];

/// Version 0 had the version 1 layout without the version entry; the
/// step has nothing to rewrite (the version entry is added by
/// [`migrate`]).
fn v0_to_v1(_store: &dyn Store) -> Result<Vec<Op>, String> {
    Ok(Vec::new())
}

/// Version 1 records (one launch each) become version 2 records (a list
/// of launches). Works on the JSON itself, so that it stays correct when
/// the record type changes later; unknown fields are kept.
fn v1_to_v2(store: &dyn Store) -> Result<Vec<Op>, String> {
    use serde_json::{json, Map, Value};
    let mut ops = Vec::new();
    for (key, bytes) in store.entries(Tree::Records).map_err(|e| e.to_string())? {
        let name = String::from_utf8_lossy(&key).into_owned();
        let mut rec: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| format!("record {name}: not a JSON object: {e}"))?;
        match rec.get("v").and_then(Value::as_u64) {
            Some(1) => {}
            Some(2) => continue,
            other => {
                return Err(format!(
                    "record {name}: unexpected format version {other:?}"
                ))
            }
        }
        let mut take = |field: &str| {
            rec.remove(field)
                .ok_or_else(|| format!("record {name}: version 1 record without {field:?}"))
        };
        let measurement = take("measurement")?;
        let kernel = take("kernel")?;
        let initrd = take("initrd")?;
        let cmdline = take("cmdline")?;
        let id_block = take("id_block")?;
        let id_auth = take("id_auth")?;
        let created = rec
            .get("created")
            .cloned()
            .ok_or_else(|| format!("record {name}: version 1 record without \"created\""))?;
        let launch = json!({
            "id": 1,
            "state": "approved",
            "measurement": measurement,
            "kernel": kernel,
            "initrd": initrd,
            "cmdline": cmdline,
            "id_block": id_block,
            "id_auth": id_auth,
            "created": created,
            "approved": created,
            "retired": null,
            "origin": "registration",
            "approval": 1,
        });
        rec.insert("v".into(), json!(2));
        rec.insert("launches".into(), json!([launch]));
        rec.insert("next_launch".into(), json!(2));
        rec.insert("next_approval".into(), json!(2));
        let bytes = serde_json::to_vec(&rec).map_err(|e| format!("record {name}: {e}"))?;
        ops.push(Op::put(Tree::Records, key, bytes));
    }
    Ok(ops)
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
    let mut conflicts = 0;
    while version < target {
        let step = steps[version as usize];
        let mut ops = step(store).map_err(|error| StoreError::Migration {
            from: version,
            error,
        })?;
        // Replicas starting at once on one database: each step commits
        // only on the version it was computed from; the loser reads the
        // version again and carries on from there.
        let current = (version > 0).then(|| version.to_be_bytes().to_vec());
        ops.push(Op::expect(Tree::Meta, SCHEMA_VERSION_KEY, current));
        ops.push(Op::put(
            Tree::Meta,
            SCHEMA_VERSION_KEY,
            (version + 1).to_be_bytes(),
        ));
        crate::crash::point(crate::crash::points::MIGRATE_BEFORE_COMMIT);
        match store.transaction(&ops) {
            Ok(()) => version += 1,
            Err(StoreError::Conflict { .. }) if conflicts < super::CONFLICT_RETRIES => {
                conflicts += 1;
                version = schema_version(store)?;
                if version > target {
                    return Err(StoreError::NewerSchema {
                        found: version,
                        supported: target,
                    });
                }
            }
            Err(e) => return Err(e),
        }
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
        // Only the step to version 1: the data is no version 1 record.
        let s = at_v1(&path);
        assert_eq!(s.get(Tree::Records, b"r").unwrap().unwrap(), b"data");
    }

    /// The database at `path` brought to version 1 (not further).
    fn at_v1(path: &std::path::Path) -> SledStore {
        let s = SledStore::open_unmigrated(path).unwrap();
        migrate(&s, &MIGRATIONS[..1]).unwrap();
        assert_eq!(version(&s), 1);
        s
    }

    /// A crash between a migration step's mutations and their commit
    /// leaves the database at the old version with its data, and the next
    /// open migrates it. The test runs itself as a child process that dies
    /// at the crash point (debug builds have it).
    #[cfg(debug_assertions)]
    #[test]
    fn a_crash_mid_migration_keeps_the_old_version_and_the_next_open_migrates() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "SNPGUARD_TEST_MIGRATION_DB";
        if let Some(path) = std::env::var_os(CHILD) {
            let opened = SledStore::open(std::path::Path::new(&path));
            panic!("the crash point did not fire: {:?}", opened.err());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        at_v1(&path)
            .put(
                Tree::Records,
                b"ab",
                &serde_json::to_vec(&v1_record()).unwrap(),
            )
            .unwrap();
        let name = "store::schema::tests::\
                    a_crash_mid_migration_keeps_the_old_version_and_the_next_open_migrates";
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(CHILD, &path)
            .env(
                crate::crash::ENV,
                crate::crash::points::MIGRATE_BEFORE_COMMIT,
            )
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "the child died at the crash point"
        );
        let v = |s: &SledStore| -> serde_json::Value {
            serde_json::from_slice(&s.get(Tree::Records, b"ab").unwrap().unwrap()).unwrap()
        };
        {
            let s = SledStore::open_unmigrated(&path).unwrap();
            assert_eq!(version(&s), 1, "nothing of the step committed");
            assert_eq!(v(&s), v1_record());
        }
        let s = SledStore::open(&path).unwrap();
        assert_eq!(version(&s), SCHEMA_VERSION);
        assert_eq!(v(&s)["launches"][0]["measurement"], "m".repeat(96));
    }

    fn v1_record() -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": "ab", "name": "web", "enabled": true,
            "created": "2026-01-01T00:00:00Z", "measurement": "m".repeat(96),
            "policy": 196608, "guest_features": 1, "vcpus": 2, "vcpu_type": "EPYC-v4",
            "cmdline": "console=ttyS0", "allow_smt": true, "allow_debug": false,
            "allow_migrate_ma": false, "min_tcb": null, "family_id": "f", "image_id": "ab",
            "id_key_digest": "k", "author_key_digest": "a",
            "firmware": {"sha256": "1", "len": 1}, "kernel": {"sha256": "2", "len": 2},
            "initrd": {"sha256": "3", "len": 3}, "id_block": "b", "id_auth": "c",
            "attestations_ok": 5, "attestations_failed": 1, "last_attestation": null
        })
    }

    #[test]
    fn v1_record_becomes_a_v2_record_with_one_approved_launch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let v1 = v1_record();
        at_v1(&path)
            .put(Tree::Records, b"ab", &serde_json::to_vec(&v1).unwrap())
            .unwrap();
        let s = SledStore::open(&path).unwrap();
        assert_eq!(version(&s), 2);
        let got: serde_json::Value =
            serde_json::from_slice(&s.get(Tree::Records, b"ab").unwrap().unwrap()).unwrap();
        assert_eq!(got["v"], 2);
        assert_eq!(got["attestations_ok"], 5);
        assert_eq!(got["firmware"]["sha256"], "1");
        for gone in [
            "measurement",
            "kernel",
            "initrd",
            "cmdline",
            "id_block",
            "id_auth",
        ] {
            assert!(got.get(gone).is_none(), "{gone} still at the top: {got}");
        }
        let launches = got["launches"].as_array().unwrap();
        assert_eq!(launches.len(), 1);
        let l = &launches[0];
        assert_eq!(l["id"], 1);
        assert_eq!(l["state"], "approved");
        assert_eq!(l["measurement"], "m".repeat(96));
        assert_eq!(l["kernel"]["sha256"], "2");
        assert_eq!(l["initrd"]["len"], 3);
        assert_eq!(l["cmdline"], "console=ttyS0");
        assert_eq!(
            (l["id_block"].clone(), l["id_auth"].clone()),
            ("b".into(), "c".into())
        );
        assert_eq!(l["approved"], "2026-01-01T00:00:00Z");
        assert_eq!(l["origin"], "registration");
        assert_eq!(got["next_launch"], 2);
    }

    #[test]
    fn v1_to_v2_refuses_a_record_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = at_v1(&dir.path().join("db"));
        s.put(Tree::Records, b"x", br#"{"v":1,"id":"x"}"#).unwrap();
        let err = migrate(&s, &MIGRATIONS).unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { from: 1, .. }),
            "{err:?}"
        );
        assert_eq!(version(&s), 1);
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
        let s = at_v1(&dir.path().join("db"));
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
        let s = at_v1(&dir.path().join("db"));
        let err = migrate(&s, &[v0_to_v1, fail]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Migration { from: 1, error } if error == "boom"),
            "{err:?}"
        );
        assert_eq!(version(&s), 1);
    }
}
