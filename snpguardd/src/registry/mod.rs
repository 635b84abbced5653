//! The registry: records of registered launches, their sealed secrets and
//! blobs; implements [`RecordService`].
//!
//! On-disk layout below the state directory:
//!
//! | path            | content                                              |
//! |-----------------|------------------------------------------------------|
//! | `db/`           | sled database (see [`crate::store`])                 |
//! | `blobs/<sha256>`| firmware, kernel and initrd, content-addressed       |
//! | `master.key`    | master key when no systemd credential (0600)         |
//! | `ingestion.pub` | HPKE ingestion public key, raw 32 bytes (0644)       |
//! | `tls/cert.pem`  | generated TLS certificate (0644)                     |
//!
//! Database trees: `records/<id>` (JSON [`record::StoredRecord`], with
//! its launches: [`launch::StoredLaunch`]),
//! `names/<name>` → id, `secrets/vmk/<id>` and `secrets/id-key/<id>`
//! (sealed with the master key, associated data `snpguard/v1/<purpose>/
//! <id>`), `keys/*` (see [`crate::keys`]); the attestor's `nonces` and
//! `certs` trees are described in [`crate::attest`], the `audit` tree in
//! [`crate::audit`].
//!
//! Crash safety: a registration writes its blobs first (each complete
//! before it gets its name), then the record, the name index and both
//! sealed secrets in one transaction. A crash leaves either no record
//! (and perhaps orphan blobs, removed at the next open) or a complete one.
//! Adding a launch likewise writes its blobs first and then the record.
//!
//! Launches (kernel updates): a record has one or more launches, each
//! approved, pending or retired ([`launch`]); only an approved launch's
//! measurement releases the key. A pending launch is signed (ID block and
//! auth with the record's ID key) when an operator approves it.

mod blobs;
mod launch;
mod launches;
pub(crate) use launches::SignedLaunch;
mod record;
mod release;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use p384::ecdsa::SigningKey;
use snpguard::idblock::{self, IdAuth, IdBlock};
use snpguard::measure::{self, MeasureError, MeasureInput, VmmType};
use snpguard::seal::{self, SealedBox};
use snpguard_protocol::bundle;
use snpguard_protocol::initrd::AgentFiles;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::audit::{AuditEntry, UnverifiedLog};
use crate::fsutil;
use crate::keys::{self, DaemonKeys, KeySummary, KeysError, TlsConfig};
use crate::secrets::{random_bytes, MasterKey, Purpose, SecretsError};
use crate::service::{
    agent_files_of, LaunchAdded, LaunchRequest, LaunchState, RecordInfo, RecordService,
    RegisterRequest, ServiceError,
};
use crate::store::{Op, PgStore, SledStore, Store, StoreError, Tree, CONFLICT_RETRIES};

use blobs::{BlobRef, Blobs};
pub use launch::MAX_LAUNCHES;
pub use record::{
    guest_policy, MAX_NAME_LEN, MAX_VCPUS, POLICY_DEBUG, POLICY_MIGRATE_MA, POLICY_RESERVED_ONE,
    POLICY_SMT,
};
pub use release::{Companion, Release, ReleaseRefusal};

/// The origins of a launch, as stored and shown.
pub mod launch_origin {
    /// A launch an operator added over D-Bus.
    pub const OPERATOR: &str = super::launch::ORIGIN_OPERATOR;
    /// The launch a registration created.
    pub const REGISTRATION: &str = super::launch::ORIGIN_REGISTRATION;

    /// A launch an attested guest submitted from `peer`.
    pub fn guest(peer: std::net::IpAddr) -> String {
        format!("guest {peer}")
    }
}
use launch::StoredLaunch;
use record::{StoredRecord, RECORD_VERSION};

/// Family ID of every record's ID block: the ASCII bytes `snpguard`
/// followed by eight zero bytes, so a report's FAMILY_ID says which tool
/// launched the guest (`736e706775617264` then zeros).
pub const FAMILY_ID: [u8; 16] = *b"snpguard\0\0\0\0\0\0\0\0";
/// SEV features every record is measured with (SNP active).
pub const GUEST_FEATURES: u64 = 0x1;
/// Largest firmware accepted.
pub const MAX_FIRMWARE: u64 = 64 << 20;
/// Largest kernel accepted.
pub const MAX_KERNEL: u64 = 512 << 20;
/// Largest initrd accepted: 2 GiB, or less when the bundle format's
/// member limit is lower (the record must stay exportable).
pub const MAX_INITRD: u64 = 2 << 30;
/// Largest sealed VMK accepted.
pub const MAX_SEALED_VMK: usize = seal::MAX_SEALED_LEN;
/// Shortest VMK accepted (LUKS2 volume keys are 32 or 64 bytes).
pub const MIN_VMK_LEN: usize = 32;
/// Longest VMK accepted.
pub const MAX_VMK_LEN: usize = 128;

/// Database directory below the state directory.
pub const DB_DIR: &str = "db";
/// Blob directory below the state directory.
pub const BLOB_DIR: &str = "blobs";

/// Options of [`Registry::open_with`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Where the HTTPS listener's TLS material comes from.
    pub tls: TlsConfig,
    /// Whether the configuration trusts any `[[test_roots]]`: only then
    /// may a record be registered with `allow_test_root`.
    pub test_roots: bool,
    /// The database: sled in the state directory (the default) or a
    /// PostgreSQL database shared by replicas.
    pub store: StoreChoice,
}

/// Which database the registry keeps its records in.
#[derive(Debug, Clone, Default)]
pub enum StoreChoice {
    /// sled, in the state directory's `db` (one daemon per directory).
    #[default]
    Sled,
    /// PostgreSQL, shared by every replica configured with it.
    Postgres(crate::store::PgOptions),
}

/// Why the registry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state directory could not be prepared.
    #[error("preparing {}: {error}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key material failed.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// The records or blobs could not be read.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The registry of records. Thread-safe; every mutation is durable before
/// it returns.
pub struct Registry {
    store: Arc<dyn Store>,
    master: MasterKey,
    keys: DaemonKeys,
    summary: KeySummary,
    blobs: Blobs,
    /// Serializes read-modify-write of records (name uniqueness, counters).
    commit: Mutex<()>,
    /// Held shared from a registration's first blob to its commit, and
    /// exclusively by blob garbage collection.
    blob_gc: RwLock<()>,
    /// See [`RegistryOptions::test_roots`].
    test_roots: bool,
    /// Refusals decided before a report's signature was verified.
    unverified: UnverifiedLog,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("keys", &self.summary)
            .finish_non_exhaustive()
    }
}

pub(crate) fn store_err(e: StoreError) -> ServiceError {
    crate::metrics::global().store_error();
    match e {
        StoreError::Unavailable(m) => ServiceError::Unavailable(m),
        e => ServiceError::Storage(e.to_string()),
    }
}

fn secrets_err(e: SecretsError) -> ServiceError {
    ServiceError::Storage(e.to_string())
}

fn now() -> Result<String, ServiceError> {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| ServiceError::Storage(format!("formatting the time: {e}")))
}

fn secret_key(purpose: Purpose, id: &str) -> Vec<u8> {
    format!("{}/{id}", purpose.name()).into_bytes()
}

/// What `snpguardd migrate-store` copied.
#[derive(Debug)]
pub struct MigrateSummary {
    /// Entries per tree.
    pub trees: Vec<(&'static str, usize)>,
    /// Blobs copied into the database.
    pub blobs: usize,
}

/// Copies the embedded store of `state_dir` and its blob files into the
/// empty PostgreSQL database `target` and checks the copy: every tree
/// equal, every blob a record references present. The daemon must be
/// stopped (the embedded store's lock says so otherwise).
pub fn migrate_store(
    state_dir: &Path,
    target: &crate::store::PgOptions,
) -> Result<MigrateSummary, ServiceError> {
    let from = SledStore::open(&state_dir.join(DB_DIR)).map_err(store_err)?;
    let to: Arc<dyn Store> = Arc::new(PgStore::open(target).map_err(store_err)?);
    let copied = crate::store::copy_store(&from, &*to).map_err(|e| match e {
        crate::store::CopyError::Store(e) => store_err(e),
        e => ServiceError::InvalidInput(e.to_string()),
    })?;
    let blobs = Blobs::open(state_dir.join(BLOB_DIR))?.with_shared(to.clone());
    let shared = blobs.share_all()?;
    for (_, value) in from.entries(Tree::Records).map_err(store_err)? {
        let rec = StoredRecord::from_json(&value)?;
        for digest in rec.blob_digests() {
            if !blobs.is_shared(digest)? {
                return Err(ServiceError::Storage(format!(
                    "record {} references blob {digest}, which is missing from {}; restore \
                     the state directory from a backup",
                    rec.name,
                    state_dir.join(BLOB_DIR).display()
                )));
            }
        }
    }
    Ok(MigrateSummary {
        trees: copied.trees,
        blobs: shared,
    })
}

impl Registry {
    /// Opens the registry in `state_dir` with default options.
    pub fn open(state_dir: &Path, master: MasterKey) -> Result<Registry, RegistryError> {
        Self::open_with(state_dir, master, &RegistryOptions::default())
    }

    /// Opens the registry: database (migrated), key material (created on
    /// first start), blobs (interrupted writes and orphans removed).
    pub fn open_with(
        state_dir: &Path,
        master: MasterKey,
        options: &RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        fsutil::ensure_dir(state_dir, 0o755).map_err(|error| RegistryError::StateDir {
            path: state_dir.to_owned(),
            error,
        })?;
        let store: Arc<dyn Store> = match &options.store {
            StoreChoice::Sled => Arc::new(SledStore::open(&state_dir.join(DB_DIR))?),
            StoreChoice::Postgres(pg) => {
                let store = PgStore::open(pg)?;
                tracing::info!("store: {}", store.target());
                for w in store.durability_warnings()? {
                    tracing::warn!("store: {w}");
                }
                Arc::new(store)
            }
        };
        let (keys, summary) = keys::load_or_create(&*store, &master, state_dir, &options.tls)?;
        let mut blobs = Blobs::open(state_dir.join(BLOB_DIR))?;
        if store.shared() {
            blobs = blobs.with_shared(store.clone());
        }
        let registry = Registry {
            store,
            master,
            keys,
            summary,
            blobs,
            commit: Mutex::new(()),
            blob_gc: RwLock::new(()),
            test_roots: options.test_roots,
            unverified: UnverifiedLog::default(),
        };
        registry.collect_garbage()?;
        Ok(registry)
    }

    /// Where the key material is (for the daemon to print).
    pub fn key_summary(&self) -> &KeySummary {
        &self.summary
    }

    /// The daemon's key material (attestation, TLS).
    pub fn keys(&self) -> &DaemonKeys {
        &self.keys
    }

    /// The database the registry keeps its records in, for the daemon's
    /// other trees (nonces, certificates, audit trail).
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The VMK of an enabled record, unsealed. A disabled record's key is
    /// not released (checked under the same lock as enabling, so a
    /// concurrent disable wins).
    pub fn record_vmk(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        record::check_id(id)?;
        let _guard = self.lock_commit();
        let rec = self.load(id)?;
        if !rec.enabled {
            return Err(ServiceError::InvalidInput(format!(
                "record {id} is disabled; enable it to release its key"
            )));
        }
        let sealed = self
            .store
            .get(Tree::Secrets, &secret_key(Purpose::Vmk, id))
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::Storage(format!("record {id} has no sealed VMK")))?;
        self.master
            .unseal(Purpose::Vmk, id, &sealed)
            .map_err(secrets_err)
    }

    /// Keeps a refusal decided before the report's signature was verified
    /// in the bounded in-memory ring (not the audit trail, no counter).
    pub fn note_unverified(&self, entry: AuditEntry) {
        self.unverified.push(entry);
    }

    fn lock_commit(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data; a panic elsewhere leaves nothing to repair.
        self.commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self, id: &str) -> Result<StoredRecord, ServiceError> {
        self.load_raw(id).map(|(_, rec)| rec)
    }

    /// A record and the stored bytes it was read from: a change commits
    /// expecting those bytes ([`Op::Expect`]), so a change made meanwhile
    /// by another daemon on the same database is never overwritten.
    fn load_raw(&self, id: &str) -> Result<(Vec<u8>, StoredRecord), ServiceError> {
        let bytes = self
            .store
            .get(Tree::Records, id.as_bytes())
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::NotFound(id.to_owned()))?;
        let rec = StoredRecord::from_json(&bytes)?;
        Ok((bytes, rec))
    }

    fn all(&self) -> Result<Vec<StoredRecord>, ServiceError> {
        self.store
            .entries(Tree::Records)
            .map_err(store_err)?
            .iter()
            .map(|(_, v)| StoredRecord::from_json(v))
            .collect()
    }

    fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut StoredRecord),
    ) -> Result<RecordInfo, ServiceError> {
        self.try_update(id, |r| {
            change(r);
            Ok(())
        })
    }

    /// Changes a record under the commit lock, durably; nothing is written
    /// when `change` fails.
    fn try_update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut StoredRecord) -> Result<(), ServiceError>,
    ) -> Result<RecordInfo, ServiceError> {
        let _guard = self.lock_commit();
        let mut attempt = 0;
        loop {
            let (raw, mut rec) = self.load_raw(id)?;
            change(&mut rec)?;
            let ops = [
                Op::expect(Tree::Records, id, Some(raw)),
                Op::put(Tree::Records, id, rec.to_json()?),
            ];
            match self.store.transaction(&ops) {
                Ok(()) => return Ok(rec.info()),
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => attempt += 1,
                Err(e) => return Err(store_err(e)),
            }
        }
    }

    /// Removes the blobs no record references.
    fn collect_garbage(&self) -> Result<usize, ServiceError> {
        let _gc = self.blob_gc.write().unwrap_or_else(|e| e.into_inner());
        let referenced: BTreeSet<String> = self
            .all()?
            .iter()
            .flat_map(|r| r.blob_digests().into_iter().map(str::to_owned))
            .collect();
        self.blobs.collect_garbage(&referenced)
    }

    fn name_taken(&self, name: &str) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .get(Tree::Names, name.as_bytes())
            .map_err(store_err)?
            .is_some())
    }

    /// Opens the sealed VMK with the ingestion key and checks its length.
    fn open_vmk(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        if sealed.len() > MAX_SEALED_VMK {
            return Err(ServiceError::InvalidInput(format!(
                "sealed_vmk: {} bytes is larger than a sealed VMK can be ({MAX_SEALED_VMK}); \
                 pass the sealed-vmk file `convert` wrote",
                sealed.len()
            )));
        }
        let sealed =
            SealedBox::from_bytes(sealed).map_err(|e| ServiceError::SealedKey(e.to_string()))?;
        let vmk = seal::open(self.keys.ingestion(), seal::INFO_INGEST, b"", &sealed)
            .map_err(|e| ServiceError::SealedKey(e.to_string()))?;
        if !(MIN_VMK_LEN..=MAX_VMK_LEN).contains(&vmk.len()) {
            return Err(ServiceError::InvalidInput(format!(
                "sealed_vmk: the VMK is {} bytes; expected {MIN_VMK_LEN} to {MAX_VMK_LEN} \
                 (a LUKS2 volume key)",
                vmk.len()
            )));
        }
        Ok(vmk)
    }

    /// Measures the stored copies.
    fn measure(
        &self,
        firmware: &BlobRef,
        kernel: &BlobRef,
        initrd: &BlobRef,
        cmdline: &str,
        vcpus: u32,
        vcpu_type: measure::VcpuType,
    ) -> Result<measure::LaunchDigest, ServiceError> {
        let fw_path = self.blobs.local(firmware)?;
        let input = MeasureInput {
            ovmf: fw_path.clone(),
            ovmf_hash: None,
            kernel: Some(self.blobs.local(kernel)?),
            initrd: Some(self.blobs.local(initrd)?),
            cmdline: Some(cmdline.to_owned()),
            vcpus,
            vcpu_type,
            guest_features: GUEST_FEATURES,
            vmm_type: VmmType::Qemu,
        };
        measure::launch_digest(&input).map_err(|e| match e {
            MeasureError::Io { .. } | MeasureError::Vmsa(_) | MeasureError::Internal(_) => {
                ServiceError::Storage(format!("measuring: {e}"))
            }
            // The message names our blob file; the client knows it as "firmware".
            other => ServiceError::InvalidInput(
                other
                    .to_string()
                    .replace(&fw_path.display().to_string(), "firmware"),
            ),
        })
    }

    /// Everything of a registration after the inputs are checked and the
    /// blobs written: measure, sign, commit.
    fn register_stored(
        &self,
        req: &RegisterRequest,
        vmk: &[u8],
        vcpu_type: measure::VcpuType,
        blobs: [BlobRef; 3],
    ) -> Result<StoredRecord, ServiceError> {
        let [firmware, kernel, initrd] = blobs;
        let digest = self.measure(
            &firmware,
            &kernel,
            &initrd,
            &req.cmdline,
            req.vcpus,
            vcpu_type,
        )?;
        let policy = guest_policy(req.allow_smt, req.allow_debug, req.allow_migrate_ma);

        let mut image_id = [0u8; 16];
        random_bytes(&mut image_id).map_err(secrets_err)?;
        let id = hex::encode(image_id);
        let block = IdBlock {
            launch_digest: digest,
            family_id: FAMILY_ID,
            image_id,
            guest_svn: 0,
            policy,
        };
        let id_key = SigningKey::random(&mut rand_core::OsRng);
        let author = self.keys.author();
        let auth = IdAuth::sign(&block, &id_key, Some(author))
            .map_err(|e| ServiceError::InvalidInput(format!("signing the ID block: {e}")))?;
        let id_key_scalar = Zeroizing::new(id_key.to_bytes());

        let created = now()?;
        let first = StoredLaunch {
            id: 1,
            state: LaunchState::Approved,
            measurement: digest.to_string(),
            kernel,
            initrd,
            cmdline: req.cmdline.clone(),
            id_block: Some(hex::encode(block.to_bytes())),
            id_auth: Some(hex::encode(auth.as_bytes())),
            created: created.clone(),
            approved: Some(created.clone()),
            retired: None,
            origin: launch::ORIGIN_REGISTRATION.to_owned(),
            approval: Some(1),
        };
        let rec = StoredRecord {
            v: RECORD_VERSION,
            id: id.clone(),
            name: req.name.clone(),
            enabled: true,
            created,
            policy,
            guest_features: GUEST_FEATURES,
            vcpus: req.vcpus,
            vcpu_type: vcpu_type.name().to_owned(),
            allow_smt: req.allow_smt,
            allow_debug: req.allow_debug,
            allow_migrate_ma: req.allow_migrate_ma,
            min_tcb: req.min_tcb.map(Into::into),
            allow_test_root: req.allow_test_root,
            offline_unlock: req.allow_offline_unlock,
            family_id: hex::encode(FAMILY_ID),
            image_id: id.clone(),
            id_key_digest: hex::encode(idblock::key_digest(id_key.verifying_key())),
            author_key_digest: hex::encode(idblock::key_digest(author.verifying_key())),
            firmware,
            launches: vec![first],
            next_launch: 2,
            next_approval: 2,
            attestations_ok: 0,
            attestations_failed: 0,
            last_attestation: None,
        };
        let sealed_vmk = self
            .master
            .seal(Purpose::Vmk, &id, vmk)
            .map_err(secrets_err)?;
        let sealed_id_key = self
            .master
            .seal(Purpose::IdKey, &id, &id_key_scalar[..])
            .map_err(secrets_err)?;
        let ops = [
            // Another daemon on the same database may register the name
            // at the same moment: exactly one of them commits.
            Op::expect(Tree::Names, req.name.as_bytes(), None),
            Op::expect(Tree::Records, id.as_bytes(), None),
            Op::put(Tree::Records, id.as_bytes(), rec.to_json()?),
            Op::put(Tree::Names, req.name.as_bytes(), id.as_bytes()),
            Op::put(Tree::Secrets, secret_key(Purpose::Vmk, &id), sealed_vmk),
            Op::put(
                Tree::Secrets,
                secret_key(Purpose::IdKey, &id),
                sealed_id_key,
            ),
        ];
        let _guard = self.lock_commit();
        if self.name_taken(&req.name)? {
            return Err(ServiceError::AlreadyExists(req.name.clone()));
        }
        // A random 128-bit id colliding means a broken random generator.
        if self
            .store
            .get(Tree::Records, id.as_bytes())
            .map_err(store_err)?
            .is_some()
        {
            return Err(ServiceError::Storage(
                "the random image ID is already in use; check the system's random source".into(),
            ));
        }
        crate::crash::point(crate::crash::points::REGISTER_BEFORE_COMMIT);
        match self.store.transaction(&ops) {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) if self.name_taken(&req.name)? => {
                return Err(ServiceError::AlreadyExists(req.name.clone()))
            }
            Err(e) => return Err(store_err(e)),
        }
        crate::crash::point(crate::crash::points::REGISTER_COMMITTED);
        Ok(rec)
    }
}

impl RecordService for Registry {
    fn register(&self, mut req: RegisterRequest) -> Result<RecordInfo, ServiceError> {
        record::check_name(&req.name)?;
        if self.name_taken(&req.name)? {
            return Err(ServiceError::AlreadyExists(req.name));
        }
        record::check_vcpus(req.vcpus)?;
        let vcpu_type = record::parse_vcpu_type(&req.vcpu_type)?;
        record::check_cmdline(&req.cmdline)?;
        if req.allow_test_root && !self.test_roots {
            return Err(ServiceError::InvalidInput(
                "allow_test_root: this daemon trusts no [[test_roots]], so no report could \
                 ever need it; register without --allow-test-root (test roots are for \
                 simulated platforms only)"
                    .into(),
            ));
        }
        if self.test_roots && !req.allow_test_root {
            tracing::warn!(
                NAME = %req.name,
                "registering {} WITHOUT --allow-test-root on a daemon with [[test_roots]]: \
                 the daemon will refuse to start next time until the record is deleted or \
                 the test roots are removed",
                req.name
            );
        }
        let vmk = self.open_vmk(&req.sealed_vmk)?;

        let max_initrd = MAX_INITRD.min(bundle::ExtractLimits::default().max_member);
        let result = {
            let _gc = self.blob_gc.read().unwrap_or_else(|e| e.into_inner());
            let stored = (|| {
                let fw = self
                    .blobs
                    .store("firmware", &mut req.firmware, MAX_FIRMWARE)?;
                if fw.len == 0 {
                    return Err(ServiceError::InvalidInput(
                        "firmware: the file is empty; pass the OVMF AmdSev build".into(),
                    ));
                }
                let kernel = self.blobs.store("kernel", &mut req.kernel, MAX_KERNEL)?;
                if kernel.len == 0 {
                    return Err(ServiceError::InvalidInput(
                        "kernel: the file is empty; pass the guest's kernel image".into(),
                    ));
                }
                let initrd = self.blobs.store("initrd", &mut req.initrd, max_initrd)?;
                Ok([fw, kernel, initrd])
            })();
            stored.and_then(|blobs| self.register_stored(&req, &vmk, vcpu_type, blobs))
        };
        match result {
            Ok(rec) => {
                if rec.min_tcb.is_none() {
                    tracing::warn!(
                        RECORD = %rec.id,
                        NAME = %rec.name,
                        "record {} was registered WITHOUT A MINIMUM TCB: a report from \
                         firmware with known vulnerabilities is accepted unless a \
                         daemon-wide [tcb_floor] refuses it; set one with snpguardctl \
                         records set-min-tcb {}",
                        rec.name,
                        rec.name
                    );
                }
                if rec.allow_test_root {
                    tracing::warn!(
                        RECORD = %rec.id,
                        NAME = %rec.name,
                        "record {} ACCEPTS REPORTS FROM A TEST ROOT (simulated platform): \
                         never use it for a production guest",
                        rec.name
                    );
                }
                if rec.offline_unlock {
                    tracing::info!(
                        RECORD = %rec.id,
                        NAME = %rec.name,
                        OFFLINE_UNLOCK = %"on",
                        "record {} allows offline unlock: its guests enrol a chip-derived key \
                         at their next online unlock and may open their root without a server \
                         from then on",
                        rec.name
                    );
                }
                Ok(rec.info())
            }
            Err(e) => {
                // Blobs this attempt wrote and no record uses; best effort,
                // the next open collects them otherwise.
                let _ = self.collect_garbage();
                Err(e)
            }
        }
    }

    fn list(&self) -> Result<Vec<RecordInfo>, ServiceError> {
        let mut all: Vec<RecordInfo> = self.all()?.iter().map(StoredRecord::info).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn get(&self, id: &str) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        Ok(self.load(id)?.info())
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        self.update(id, |r| r.enabled = enabled)
    }

    fn set_min_tcb(
        &self,
        id: &str,
        min_tcb: snpguard::verify::MinTcb,
    ) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        let mut old = None;
        let info = self.update(id, |r| {
            old = r.min_tcb.map(snpguard::verify::MinTcb::from);
            r.min_tcb = Some(min_tcb.into());
        })?;
        let text = |t: Option<snpguard::verify::MinTcb>| {
            t.map_or_else(|| "none".to_owned(), |t| crate::config::floor_text(&t))
        };
        tracing::info!(
            RECORD = %info.id,
            NAME = %info.name,
            OLD_MIN_TCB = %text(old),
            MIN_TCB = %text(Some(min_tcb)),
            "minimum TCB of record {} set to {} (was {})",
            info.name,
            text(Some(min_tcb)),
            text(old)
        );
        Ok(info)
    }

    fn set_offline_unlock(&self, id: &str, allowed: bool) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        self.update(id, |r| r.offline_unlock = allowed)
    }

    fn delete(&self, id: &str) -> Result<(), ServiceError> {
        record::check_id(id)?;
        {
            let _guard = self.lock_commit();
            let (raw, rec) = self.load_raw(id)?;
            self.store
                .transaction(&[
                    Op::expect(Tree::Records, id.as_bytes(), Some(raw)),
                    Op::delete(Tree::Records, id.as_bytes()),
                    Op::delete(Tree::Names, rec.name.as_bytes()),
                    Op::delete(Tree::Secrets, secret_key(Purpose::Vmk, id)),
                    Op::delete(Tree::Secrets, secret_key(Purpose::IdKey, id)),
                ])
                .map_err(store_err)?;
        }
        self.collect_garbage()?;
        Ok(())
    }

    fn export_bundle(
        &self,
        id: &str,
        launch: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<(), ServiceError> {
        record::check_id(id)?;
        let rec = self.load(id)?;
        self.write_bundle(&rec, launch, out)
    }

    fn add_launch(&self, id: &str, req: LaunchRequest) -> Result<LaunchAdded, ServiceError> {
        self.add_launch_from(id, req)
    }

    fn launch_agent_files(&self, id: &str, launch: &str) -> Result<AgentFiles, ServiceError> {
        record::check_id(id)?;
        let rec = self.load(id)?;
        let initrd = self.blobs.open_blob(&rec.launch(launch)?.initrd)?;
        Ok(agent_files_of(initrd))
    }

    fn approve_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        self.approve(id, launch)
    }

    fn retire_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        let now = now()?;
        self.try_update(id, |r| launch::retire(r, launch, &now))
    }

    fn discard_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        record::check_id(id)?;
        let info = self.try_update(id, |r| launch::discard(r, launch))?;
        self.collect_garbage()?;
        Ok(info)
    }

    fn ingestion_public_key(&self) -> Vec<u8> {
        self.keys.ingestion_public().to_bytes().to_vec()
    }

    fn audit_trail(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        crate::audit::recent(self.store(), n).map_err(store_err)
    }

    fn unverified_refusals(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        Ok(self.unverified.recent(n))
    }
}

#[cfg(test)]
mod launch_tests;
#[cfg(test)]
mod tests;
