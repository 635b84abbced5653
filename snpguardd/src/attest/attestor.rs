//! The attestor: checks the nonce, finds the record from the report,
//! gathers certificates, runs the full verification and releases the key.
//!
//! Order of an attestation (each refusal audited and journaled once):
//! 1. decode the request (protocol errors: 400 with a specific code);
//! 2. parse the report (structure errors: 400 `bad-request`);
//! 3. find the record by IMAGE_ID (the record id) and FAMILY_ID;
//! 4. consume the nonce (MAC, age, single use; `nonce-*` codes);
//! 5. no record: `unknown-image`;
//! 6. certificates: the request's table, then the daemon's (imported,
//!    KDS-cached), then KDS when enabled (VCEK only), each tried when the
//!    one before did not endorse the report (see `endorse`);
//! 7. verification against the record's expectations (every rule), the
//!    measurement being the launch of the record the report names; a
//!    pending launch is refused as `launch-pending`, a retired one as
//!    `launch-retired`, any other measurement as `measurement-mismatch`
//!    (checked against the newest approved launch);
//! 8. release: one decision under the registry's commit lock
//!    ([`Registry::release`]): the record is enabled and the launch with
//!    the report's measurement is still approved, re-checked now (a
//!    record disabled or a launch retired while step 6 waited on KDS
//!    releases nothing: `record-disabled`, `launch-retired`); the VMK is
//!    sealed to the ephemeral key and bound to the report; then the
//!    release, its count, the nonce's outcome and the audit entry are one
//!    transaction, durable before the answer leaves. A signed request
//!    that asks for it (`offline`) gets the record's offline-unlock
//!    directive as of that transaction (`enrol` or `remove`), covered by
//!    the signature.
//!
//! Refusals before the report's signature is verified (steps 4 and 5, and
//! in step 7 a malformed or unsigned report, a chain that does not verify
//! or ends at a test root the record does not allow, a bad signature) are
//! decided on what any client can send: they go to the journal and a
//! bounded in-memory ring ([`crate::audit::UnverifiedLog`]), never
//! to the audit trail or the record's counters. Every later refusal is
//! counted on the record and audited.
//!
//! Durability: the nonce's used mark is flushed to disk in step 4, before
//! anything is verified or released (concurrent attestations share one
//! flush: group commit), so two uses of one nonce race there and one
//! loses, on any replica. Every decision reached after the signature
//! verified (a release, a refusal, a stored renewal) is then one durable
//! transaction: the record's counters, the nonce's outcome
//! ([`nonce::Outcome`]) and the audit entry, all or none across a crash;
//! concurrent decisions share the disk sync, taken after the registry's
//! lock is released. A key leaves only after its decision is on disk; a
//! crash after step 4 leaves the nonce spent whatever else happened.
//!
//! The client sees `attestation-rejected` (403) for every trust decision;
//! the precise reasons go to the journal and the audit trail.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use snpguard::certs::{
    CertSet, Crl, Product, Revocation, RevocationPolicy, RevocationWarning, TrustAnchors,
};
use snpguard::report::{Report, REPORT_SIZE};
use snpguard::seal::PublicKey;
use snpguard::verify::{
    product_from_report, Expectations, Failure, Rejection, TcbFloors, Verifier,
};
use snpguard_protocol::attest::{
    self, decode_nonce, encode_nonce, unb64, AttestRequest, AttestResponse, ChallengeResponse,
    OfflineUnlock, RenewRequest, RenewResponse, SignedLaunchRequest, SignedLaunchResponse,
    MAX_BODY, NONCE_LEN,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

mod endorse;
mod next_launch;
mod renew;

use super::certs::{self as held, CertFilter, CertImportError, CertSummary, CertificateService};
use super::crls::{self, CrlMemo, CrlSource, CrlSummary, Stored};
use super::kds::{KdsClient, KdsGate};
use super::nonce::{self, Consumed, NonceError, Nonces, Outcome};
use super::{AttestError, AttestHandler};
use crate::audit::{AuditEntry, AuditLog};
use crate::config::Config;
use crate::registry::{Registry, ReleaseRefusal, POLICY_DEBUG, POLICY_MIGRATE_MA, POLICY_SMT};
use crate::service::{LaunchState, RecordInfo, RecordService, ServiceError};
use crate::store::{Op, Store, StoreError, Tree};

/// Largest test root file read.
const MAX_TEST_ROOT: u64 = 64 * 1024;
/// Seconds between garbage collections of used nonces.
const NONCE_GC_INTERVAL_SECS: u64 = 60;

/// The time source (tests move it).
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Why the attestor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AttestorError {
    /// A configured test root could not be read.
    #[error("reading the test root {}: {error}", path.display())]
    TestRootRead {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: String,
    },
    /// The trust anchors (built-in or a test root) are unusable.
    #[error("trust anchors: {0}")]
    Anchors(#[from] snpguard::certs::CertError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Test roots are configured and a record would trust only AMD.
    #[error(
        "[[test_roots]] are configured, but {} registered without --allow-test-root: {}. \
         A daemon that trusts a simulated platform must hold no production record. \
         Either remove test_roots from the configuration (production host), or \
         re-register {} with --allow-test-root (test host: snpguardctl records delete, \
         then snpguardctl register ... --allow-test-root)",
        if records.len() == 1 { "this record was" } else { "these records were" },
        records.join(", "),
        if records.len() == 1 { "it" } else { "them" }
    )]
    TestRootsWithProductionRecords {
        /// `name (id)` of each such record.
        records: Vec<String>,
    },
}

/// Implements [`AttestHandler`] over the registry and its store.
pub struct Attestor {
    registry: Arc<Registry>,
    verifier: Verifier,
    nonces: Nonces,
    audit: AuditLog,
    /// `None` when KDS access is disabled by the configuration.
    kds: Option<KdsGate>,
    clock: Box<dyn Clock>,
    observer: Option<Box<dyn Fn(RecordInfo) + Send + Sync>>,
    last_gc: AtomicU64,
    /// Daemon-wide TCB floors (`[tcb_floor.<product>]`).
    tcb_floors: TcbFloors,
    /// What a missing or stale CRL means (`[revocation]`).
    revocation: RevocationPolicy,
    /// The held CRLs, parsed and verified once per stored value.
    crl_memo: CrlMemo,
    /// Revocation warnings already logged (product, test root, code):
    /// logged once, not per attestation; forgotten when a CRL of that
    /// product is taken in.
    crl_warned: std::sync::Mutex<std::collections::HashSet<(Product, bool, &'static str)>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("kds", &self.kds.is_some())
            .finish_non_exhaustive()
    }
}

fn read_test_root(path: &Path) -> Result<Vec<u8>, AttestorError> {
    use std::io::Read;
    let err = |error: String| AttestorError::TestRootRead {
        path: path.to_owned(),
        error,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TEST_ROOT + 1).read_to_end(&mut bytes))
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_TEST_ROOT {
        return Err(err(format!("larger than {MAX_TEST_ROOT} bytes")));
    }
    Ok(bytes)
}

/// Seconds since the epoch (0 before it).
fn secs(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

fn internal(what: &str, e: impl std::fmt::Display) -> AttestError {
    tracing::error!(REASON = "internal", "attestation: {what}: {e}");
    AttestError {
        code: "internal",
        status: 500,
        message: "internal error; the server's journal has the details".into(),
    }
}

/// A failed store call: the database being unreachable is a 503
/// `store-unavailable` (fail closed, retry elsewhere or later); anything
/// else is an internal error.
fn store_failed(what: &str, e: StoreError) -> AttestError {
    crate::metrics::global().store_error();
    match e {
        StoreError::Unavailable(m) => unavailable(what, &m),
        e => internal(what, e),
    }
}

/// As [`store_failed`], for a registry call.
fn service_failed(what: &str, e: ServiceError) -> AttestError {
    match e {
        ServiceError::Unavailable(m) => unavailable(what, &m),
        e => internal(what, e),
    }
}

fn unavailable(what: &str, detail: &str) -> AttestError {
    tracing::error!(
        REASON = "store-unavailable",
        "attestation: {what}: {detail}"
    );
    AttestError {
        code: "store-unavailable",
        status: 503,
        message: "the attestation store is unavailable; nothing was released, retry later or \
                  another server"
            .into(),
    }
}

fn rejected() -> AttestError {
    AttestError {
        code: "attestation-rejected",
        status: 403,
        message: "the attestation evidence was not accepted".into(),
    }
}

fn nonce_error(e: &NonceError) -> AttestError {
    let (status, message) = match e {
        NonceError::Invalid => (400, "the nonce was not issued by this service"),
        NonceError::Expired { .. } => (401, "the nonce expired; request a new challenge"),
        NonceError::Reused => (401, "the nonce was already used; request a new challenge"),
    };
    AttestError {
        code: e.code(),
        status,
        message: message.into(),
    }
}

/// A protocol error (400) with its journal line.
fn protocol(peer: IpAddr, code: &'static str, msg: &str) -> AttestError {
    tracing::info!(OUTCOME = "refused", REASON = code, PEER = %peer, "attestation request refused: {msg}");
    AttestError::bad_request(code, msg)
}

/// The evidence of a request, decoded.
struct Evidence {
    nonce: [u8; NONCE_LEN],
    report_bytes: Vec<u8>,
    report: Report,
    table: Option<CertSet>,
}

/// Evidence that passed every rule, with an approved launch.
struct Admitted {
    rec: RecordInfo,
    report_bytes: Vec<u8>,
    /// MEASUREMENT of the report (hex).
    measurement: String,
    entry: AuditEntry,
    /// The nonce, consumed; settled with the decision.
    consumed: Consumed,
}

/// Why a refusal happened, for the audit trail and the journal.
struct Refusal {
    codes: Vec<String>,
    detail: String,
    client: AttestError,
}

impl Refusal {
    fn rejected(code: &str, detail: String) -> Self {
        Refusal {
            codes: vec![code.to_owned()],
            detail,
            client: rejected(),
        }
    }
}

fn hex48(s: &str, what: &str) -> Result<[u8; 48], AttestError> {
    hex::decode(s)
        .ok()
        .and_then(|v| <[u8; 48]>::try_from(v).ok())
        .ok_or_else(|| internal("corrupt record", format!("{what} is not 48 bytes of hex")))
}

/// What the record (and the daemon-wide `floors`) demand of a report of
/// the launch with `measurement` whose REPORT_DATA must be `report_data`.
fn expectations(
    rec: &RecordInfo,
    floors: TcbFloors,
    measurement: &str,
    report_data: [u8; 64],
) -> Result<Expectations, AttestError> {
    Ok(Expectations {
        product: None,
        vmpl: 0,
        allow_debug: rec.policy & POLICY_DEBUG != 0,
        allow_smt: rec.policy & POLICY_SMT != 0,
        allow_migrate_ma: rec.policy & POLICY_MIGRATE_MA != 0,
        require_single_socket: false,
        min_abi: None,
        min_tcb: rec.min_tcb,
        tcb_floors: floors,
        forbid_test_root: !rec.allow_test_root,
        strict_tcb: false,
        measurement: Some(hex48(measurement, "measurement")?),
        report_data: Some(report_data),
        host_data: None,
        id_key_digest: Some(hex48(&rec.id_key_digest, "id_key_digest")?),
        author_key_digest: Some(hex48(&rec.author_key_digest, "author_key_digest")?),
        revocation: None,
    })
}

/// Whether a rejection was decided before the report's signature was
/// verified: nothing the report claims is authenticated then.
fn before_signature(rej: &Rejection) -> bool {
    matches!(
        rej.primary(),
        Failure::Malformed(_)
            | Failure::Unsigned
            | Failure::ChipKeyMasked
            | Failure::ReservedSigningKey(_)
            | Failure::ProductMismatch { .. }
            | Failure::Chain(_)
            | Failure::TestRootNotAllowed
            | Failure::Signature(_)
    )
}

/// The products a report may come from: the one its CPUID names (v3+);
/// for a v2 report (no CPUID), Milan then Genoa — v2 predates Turin, and
/// the chain verification decides which one the certificate really is.
fn candidate_products(report: &Report) -> Vec<Product> {
    match (report.cpuid, product_from_report(report)) {
        (None, _) => vec![Product::Milan, Product::Genoa],
        (Some(_), Some(p)) => vec![p],
        (Some(_), None) => Vec::new(),
    }
}

impl Attestor {
    /// The attestor for `registry` (and its store) as `config` says:
    /// AMD's roots plus each configured test root (logged as a warning),
    /// and `kds` unless `config.kds.enabled` is false.
    pub fn new(
        registry: Arc<Registry>,
        config: &Config,
        kds: Box<dyn KdsClient>,
    ) -> Result<Attestor, AttestorError> {
        let mut anchors = TrustAnchors::amd()?;
        for root in &config.test_roots {
            let ark = read_test_root(&root.ark_path)?;
            anchors = anchors.with_test_root(root.product, &ark)?;
            tracing::warn!(
                PRODUCT = %root.product,
                ARK_PATH = %root.ark_path.display(),
                "attestation TRUSTS A TEST ROOT for {} from {}: reports signed by a simulated \
                 platform will be accepted; remove test_roots from the configuration on any \
                 production host",
                root.product,
                root.ark_path.display()
            );
        }
        let audit = AuditLog::open(registry.store())?;
        let records = registry
            .list()
            .map_err(|e| StoreError::Backend(format!("listing the records: {e}")))?;
        if !config.test_roots.is_empty() {
            let production: Vec<String> = records
                .iter()
                .filter(|r| !r.allow_test_root)
                .map(|r| format!("{} ({})", r.name, r.id))
                .collect();
            if !production.is_empty() {
                return Err(AttestorError::TestRootsWithProductionRecords {
                    records: production,
                });
            }
        }
        for r in records.iter().filter(|r| r.allow_test_root) {
            tracing::warn!(
                RECORD = %r.id,
                NAME = %r.name,
                TEST_ROOTS = config.test_roots.len(),
                "record {} ({}) ACCEPTS REPORTS ENDORSED BY A TEST ROOT (registered with \
                 --allow-test-root): a simulated platform can get its key while test_roots \
                 are configured; delete it on any production host",
                r.name,
                r.id
            );
        }
        Ok(Attestor {
            tcb_floors: config.tcb_floors,
            revocation: config.revocation,
            crl_memo: CrlMemo::default(),
            crl_warned: Default::default(),
            nonces: Nonces::new(registry.keys().nonce_hmac())
                .with_lifetime(config.attest.nonce_lifetime_secs),
            registry,
            verifier: Verifier::new(anchors),
            audit,
            kds: config.kds.enabled.then(|| KdsGate::new(kds)),
            clock: Box::new(SystemClock),
            observer: None,
            last_gc: AtomicU64::new(0),
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Box<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Calls `observer` with the record after every counted attestation,
    /// so the management API can publish the new counters
    /// (PropertiesChanged). It must not block.
    pub fn with_observer(mut self, observer: Box<dyn Fn(RecordInfo) + Send + Sync>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, info: RecordInfo) {
        if let Some(f) = &self.observer {
            f(info);
        }
    }

    /// Imports certificates for verification without KDS (VCEKs, VLEKs,
    /// ASKs, ASVKs, ARKs; DER, PEM with several blocks, or a certificate
    /// table), each checked against the trust anchors now. All or
    /// nothing; returns what was imported. See [`held::import`].
    pub fn import_certificates(
        &self,
        files: &[(String, Vec<u8>)],
    ) -> Result<Vec<CertSummary>, CertImportError> {
        let imported = self
            .import_inner(files)
            .inspect_err(|e| tracing::warn!("certificate import refused: {e}"))?;
        for c in &imported {
            tracing::info!(
                ROLE = %c.role,
                PRODUCT = %c.product,
                CHIP_ID = c.chip_id.as_deref().unwrap_or("-"),
                TCB = c.tcb.as_deref().unwrap_or("-"),
                FILE = c.file.as_deref().unwrap_or("-"),
                SOURCE = c.source,
                "imported a certificate for attestation"
            );
        }
        Ok(imported)
    }

    /// Certificates through [`held::import`], ARK CRLs (files that are
    /// CRLs) each checked to be signed by a trusted root and newer than
    /// the one held for it. Every file is checked before anything is
    /// stored.
    fn import_inner(
        &self,
        files: &[(String, Vec<u8>)],
    ) -> Result<Vec<CertSummary>, CertImportError> {
        let anchors = self.verifier.anchors();
        let (crl_files, cert_files): (Vec<_>, Vec<_>) =
            files.iter().partition(|(_, b)| Crl::looks_like_crl(b));
        let mut crl_ops = Vec::new();
        let mut crl_out = Vec::new();
        let mut seen = Vec::new();
        for (file, bytes) in crl_files {
            let crl = Crl::verify(anchors, bytes).map_err(|e| CertImportError::Crl {
                file: file.clone(),
                code: e.code(),
                reason: e.to_string(),
            })?;
            if seen.contains(&crl.root_fingerprint()) {
                return Err(CertImportError::Malformed {
                    file: file.clone(),
                    reason: format!(
                        "a second CRL of the {} root in one import; import only the newest",
                        crl.product()
                    ),
                });
            }
            seen.push(crl.root_fingerprint());
            let (stored, op) = crls::store_op(
                self.store(),
                anchors,
                &self.crl_memo,
                &crl,
                CrlSource::Imported,
            )?;
            if let Stored::KeptNewer(held_this) = stored {
                return Err(CertImportError::CrlNotNewer {
                    file: file.clone(),
                    product: crl.product(),
                    held: held_this.format(&Rfc3339).unwrap_or_default(),
                    given: crl.this_update().format(&Rfc3339).unwrap_or_default(),
                });
            }
            crl_ops.extend(op);
            let summary = CrlSummary::of(&crl, CrlSource::Imported);
            crl_out.push(CertSummary {
                role: snpguard::certs::CertRole::Ark,
                product: crl.product(),
                chip_id: None,
                tcb: None,
                not_after: summary.next_update.clone(),
                source: "imported",
                file: Some(file.clone()),
                crl: Some(summary),
            });
        }
        let mut out = if cert_files.is_empty() {
            Vec::new()
        } else {
            let cert_files: Vec<(String, Vec<u8>)> = cert_files.into_iter().cloned().collect();
            held::import(self.store(), anchors, &cert_files, self.clock.now())?
        };
        if !crl_ops.is_empty() {
            self.store().transaction(&crl_ops)?;
        }
        for c in &crl_out {
            self.forget_warnings(c.product);
        }
        out.extend(crl_out);
        Ok(out)
    }

    /// Every ARK CRL the daemon holds.
    pub fn held_crls(&self) -> Result<Vec<CrlSummary>, StoreError> {
        crls::list(self.store(), self.verifier.anchors(), &self.crl_memo)
    }

    fn forget_warnings(&self, product: Product) {
        self.crl_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(p, _, _)| *p != product);
    }

    /// Logs a revocation warning loudly, once per product, root kind and
    /// rule (every attestation carries it in its audit notes).
    fn warn_revocation(&self, w: &RevocationWarning) {
        let test_root = matches!(
            w,
            RevocationWarning::Missing {
                test_root: true,
                ..
            } | RevocationWarning::Stale {
                test_root: true,
                ..
            }
        );
        let first = self
            .crl_warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((w.product(), test_root, w.code()));
        if first {
            tracing::warn!(
                PRODUCT = %w.product(),
                CODE = w.code(),
                "{w}; accepted because [revocation] says warn (logged once per product until \
                 a CRL is taken in)"
            );
        }
    }

    /// The daemon's CRLs for the products `report` may come from, under
    /// its policy; with KDS enabled, a missing or stale AMD CRL is
    /// fetched first (through the gate's rate limit and memory).
    fn revocation(&self, report: &Report, now: OffsetDateTime) -> Result<Revocation, AttestError> {
        let anchors = self.verifier.anchors();
        let products = candidate_products(report);
        let store_err = |e: StoreError| store_failed("reading the held CRLs", e);
        if let Some(gate) = &self.kds {
            for &p in &products {
                let Some(ark) = anchors.amd_ark(p) else {
                    continue;
                };
                let key = crls::crl_key(p, &ark.fingerprint());
                let held = self
                    .crl_memo
                    .get(self.store(), anchors, &key)
                    .map_err(store_err)?;
                if held.as_ref().is_some_and(|(c, _)| c.is_current(now)) {
                    continue;
                }
                self.fetch_crl(gate, p, now);
            }
        }
        let held = self
            .crl_memo
            .held(self.store(), anchors, &products)
            .map_err(store_err)?;
        Ok(Revocation::new(
            self.revocation,
            held.into_iter().map(|(c, _)| c),
        ))
    }

    /// Fetches AMD's CRL of `product` from KDS and keeps it when AMD's
    /// ARK signed it and it is newer than the one held. Failures are
    /// logged; the policy then decides.
    fn fetch_crl(&self, gate: &KdsGate, product: Product, now: OffsetDateTime) {
        let der = match gate.fetch_crl(product, secs(now)) {
            Ok(der) => der,
            Err(e) => {
                tracing::debug!(PRODUCT = %product, "no CRL from KDS: {e}");
                return;
            }
        };
        let anchors = self.verifier.anchors();
        let crl = match Crl::verify(anchors, &der) {
            Ok(c) if c.product() == product && !c.test_root() => c,
            Ok(c) => {
                tracing::warn!(
                    PRODUCT = %product,
                    "KDS served a CRL of {} (test root: {}) for {product}; ignored",
                    c.product(),
                    c.test_root()
                );
                return;
            }
            Err(e) => {
                tracing::warn!(PRODUCT = %product, CODE = e.code(), "KDS served an unusable CRL: {e}");
                return;
            }
        };
        let stored = crls::store_op(self.store(), anchors, &self.crl_memo, &crl, CrlSource::Kds)
            .and_then(|(stored, op)| {
                if let Some(op) = op {
                    self.store().transaction(&[op])?;
                }
                Ok(stored)
            });
        match stored {
            Ok(Stored::Stored) => {
                self.forget_warnings(product);
                tracing::info!(
                    PRODUCT = %product,
                    THIS_UPDATE = %crl.this_update(),
                    REVOKED = crl.revoked_count(),
                    "cached AMD's CRL fetched from KDS"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!("storing the CRL fetched from KDS: {e}"),
        }
    }

    /// Every certificate the daemon holds (imports and the KDS cache).
    pub fn held_certificates(&self) -> Result<Vec<CertSummary>, StoreError> {
        held::list(self.store())
    }

    /// The last `n` audit entries, oldest first.
    pub fn audit_trail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit.recent(self.store(), n)
    }

    fn store(&self) -> &dyn Store {
        self.registry.store()
    }

    fn collect_nonces(&self, now: u64) {
        let last = self.last_gc.load(Ordering::Relaxed);
        if now.saturating_sub(last) < NONCE_GC_INTERVAL_SECS
            || self
                .last_gc
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match nonce::collect_garbage(self.store(), now) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(COUNT = n, "forgot expired used nonces"),
            Err(e) => tracing::error!("collecting used nonces: {e}"),
        }
    }

    fn find_record(&self, report: &Report) -> Result<Option<RecordInfo>, AttestError> {
        match self.registry.get(&hex::encode(report.image_id)) {
            Ok(rec) if rec.family_id == hex::encode(report.family_id) => Ok(Some(rec)),
            Ok(_) | Err(ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(service_failed("looking up the record", e)),
        }
    }

    /// Journals a refusal decided before the report's signature was
    /// verified and keeps it in the registry's bounded ring; no counter,
    /// no audit entry. Returns the client's error.
    fn refuse_unverified(&self, mut entry: AuditEntry, r: Refusal) -> AttestError {
        entry.result = r.codes.first().cloned().unwrap_or_default();
        entry.codes = r.codes;
        entry.detail = r.detail;
        tracing::warn!(
            RECORD = entry.record.as_deref().unwrap_or("-"),
            OUTCOME = "refused",
            REASON = %entry.result,
            CODES = %entry.codes.join(","),
            PEER = %entry.peer,
            MEASUREMENT = entry.measurement.as_deref().unwrap_or("-"),
            CHIP_ID = entry.chip_id_prefix.as_deref().unwrap_or("-"),
            CERT_SOURCE = entry.cert_source.as_deref().unwrap_or("-"),
            NOTES = %entry.notes.join("; "),
            "attestation refused before signature verification: {}",
            entry.detail
        );
        self.registry.note_unverified(entry);
        r.client
    }

    /// Counts, audits and journals a refusal after verification, and
    /// settles the nonce, in one durable transaction; returns the
    /// client's error.
    fn refuse(
        &self,
        mut entry: AuditEntry,
        consumed: &Consumed,
        r: Refusal,
        now: OffsetDateTime,
    ) -> AttestError {
        entry.result = r.codes.first().cloned().unwrap_or_default();
        entry.codes = r.codes;
        entry.detail = r.detail;
        tracing::warn!(
            RECORD = entry.record.as_deref().unwrap_or("-"),
            OUTCOME = "refused",
            REASON = %entry.result,
            CODES = %entry.codes.join(","),
            PEER = %entry.peer,
            MEASUREMENT = entry.measurement.as_deref().unwrap_or("-"),
            REPORTED_TCB = entry.reported_tcb.as_deref().unwrap_or("-"),
            CHIP_ID = entry.chip_id_prefix.as_deref().unwrap_or("-"),
            CERT_SOURCE = entry.cert_source.as_deref().unwrap_or("-"),
            NOTES = %entry.notes.join("; "),
            "attestation refused: {}",
            entry.detail
        );
        if let Err(e) = self.settle(&entry, consumed, Outcome::Refused, now) {
            tracing::error!(
                RECORD = entry.record.as_deref().unwrap_or("-"),
                "recording a refused attestation in the audit trail: {e}"
            );
        }
        r.client
    }

    /// The companion writes of a decision ([`crate::registry::Companion`]):
    /// the nonce's `outcome` and the audit `entry`.
    fn companion<'a>(
        &'a self,
        entry: &'a AuditEntry,
        consumed: &'a Consumed,
        outcome: Outcome,
    ) -> impl FnMut(bool) -> Result<Vec<Op>, ServiceError> + 'a {
        move |first| {
            let mut ops = consumed.settle(outcome).to_vec();
            ops.extend(
                self.audit
                    .stage(self.store(), entry, first)
                    .map_err(crate::registry::store_err)?,
            );
            Ok(ops)
        }
    }

    /// Commits a decision that released nothing: the record's counter
    /// (`ok` for a stored renewal, else a refusal), the nonce's `outcome`
    /// and the audit `entry`, in one durable transaction.
    fn settle(
        &self,
        entry: &AuditEntry,
        consumed: &Consumed,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        let mut companion = self.companion(entry, consumed, outcome);
        let ok = outcome != Outcome::Refused;
        let info = match &entry.record {
            Some(id) => self
                .registry
                .settle_attestation(id, ok, now, &mut companion)?,
            None => {
                let ops = companion(true)?;
                self.store()
                    .transaction(&ops)
                    .map_err(crate::registry::store_err)?;
                None
            }
        };
        if let Some(info) = info {
            self.observe(info);
        }
        Ok(())
    }

    /// Decodes the evidence fields of a request (protocol errors: 400).
    fn decode_evidence(
        &self,
        nonce: &str,
        report: &str,
        cert_table: Option<&str>,
        peer: IpAddr,
    ) -> Result<Evidence, AttestError> {
        let nonce = decode_nonce(nonce).ok_or_else(|| {
            protocol(
                peer,
                "nonce-invalid",
                "nonce: not a nonce this service issued",
            )
        })?;
        let report_bytes = unb64(report, REPORT_SIZE).ok_or_else(|| {
            protocol(
                peer,
                "bad-request",
                "report: expected standard base64 of the 1184-byte report",
            )
        })?;
        let table = match cert_table {
            None => None,
            Some(t) => {
                let bytes = unb64(t, MAX_BODY).ok_or_else(|| {
                    protocol(peer, "bad-request", "cert_table: expected standard base64")
                })?;
                Some(
                    CertSet::from_cert_table(&bytes)
                        .map_err(|e| protocol(peer, "bad-request", &format!("cert_table: {e}")))?,
                )
            }
        };
        let report = Report::parse(&report_bytes)
            .map_err(|e| protocol(peer, "bad-request", &format!("report: {e}")))?;
        Ok(Evidence {
            nonce,
            report_bytes,
            report,
            table,
        })
    }

    /// The whole verification of `ev`, exactly as `/v1/attest` does it:
    /// record, nonce, certificates, every rule of the record with
    /// REPORT_DATA `report_data`, and an approved launch with the report's
    /// measurement. Every refusal is counted, audited and journaled here.
    /// Returns the record, the launch and the audit entry so far.
    fn verify_evidence(
        &self,
        ev: Evidence,
        report_data: [u8; 64],
        peer: IpAddr,
        now: OffsetDateTime,
    ) -> Result<Admitted, AttestError> {
        let Evidence {
            nonce,
            report_bytes,
            report,
            table,
        } = ev;
        let mut entry = AuditEntry {
            time: now.format(&Rfc3339).unwrap_or_default(),
            peer: peer.to_string(),
            record: None,
            launch: None,
            result: String::new(),
            codes: Vec::new(),
            detail: String::new(),
            measurement: Some(hex::encode(report.measurement)),
            reported_tcb: Some(format!("{:016x}", report.reported_tcb.0)),
            chip_id_prefix: Some(hex::encode(&report.chip_id[..8])),
            cert_source: None,
            notes: Vec::new(),
        };
        let record = self.find_record(&report)?;
        entry.record = record.as_ref().map(|r| r.id.clone());

        let now_secs = secs(now);
        let consumed = match self.nonces.consume(self.store(), &nonce, now_secs) {
            Err(e) => return Err(store_failed("marking the nonce used", e)),
            Ok(Err(e)) => {
                let r = Refusal {
                    codes: vec![e.code().to_owned()],
                    detail: e.to_string(),
                    client: nonce_error(&e),
                };
                return Err(self.refuse_unverified(entry, r));
            }
            Ok(Ok(consumed)) => {
                let mut issued = [0u8; 8];
                issued.copy_from_slice(&nonce[..8]);
                crate::metrics::global().nonce_used(u64::from_be_bytes(issued));
                consumed
            }
        };
        crate::crash::point(crate::crash::points::ATTEST_NONCE_CONSUMED);
        self.collect_nonces(now_secs);

        let Some(rec) = record else {
            let detail = format!(
                "no record has image_id {} with family_id {}",
                hex::encode(report.image_id),
                hex::encode(report.family_id)
            );
            let r = Refusal::rejected("unknown-image", detail);
            return Err(self.refuse_unverified(entry, r));
        };
        // The launch the report's measurement names, if any: the rules
        // are checked against it, and only an approved one passes.
        let reported = hex::encode(report.measurement);
        let launch = rec
            .launches
            .iter()
            .find(|l| l.measurement == reported)
            .cloned();
        entry.launch = launch.as_ref().map(|l| l.id.clone());
        let measurement = launch
            .as_ref()
            .map_or(rec.measurement.as_str(), |l| &l.measurement);
        let mut expect = expectations(&rec, self.tcb_floors, measurement, report_data)?;
        expect.revocation = Some(self.revocation(&report, now)?);
        let endorsed = self.endorse_and_verify(&report, &report_bytes, table, &expect, now)?;
        entry.cert_source = endorsed.source.map(str::to_owned);
        entry.notes = endorsed.notes;
        let verified = endorsed.result;
        let unapproved = launch.as_ref().and_then(|l| match l.state {
            LaunchState::Approved => None,
            LaunchState::Pending => Some((
                "launch-pending",
                format!(
                    "the measurement is launch {} of record {}, which is pending approval \
                     (snpguardctl records approve {} --launch {})",
                    l.id, rec.id, rec.id, l.id
                ),
            )),
            LaunchState::Retired => Some((
                "launch-retired",
                format!(
                    "the measurement is launch {} of record {}, which was retired",
                    l.id, rec.id
                ),
            )),
        });
        match (verified, unapproved) {
            (Ok(v), None) => {
                if let Some(w) = &v.revocation_warning {
                    self.warn_revocation(w);
                }
                entry.notes.extend(v.notes);
                Ok(Admitted {
                    rec,
                    report_bytes,
                    measurement: reported,
                    entry,
                    consumed,
                })
            }
            (Ok(_), Some((code, detail))) => {
                let r = Refusal::rejected(code, format!("{detail}; the report verified"));
                Err(self.refuse(entry, &consumed, r, now))
            }
            (Err(rej), _) if before_signature(&rej) => {
                let r = Refusal {
                    codes: rej.codes().into_iter().map(str::to_owned).collect(),
                    detail: rej.to_string(),
                    client: rejected(),
                };
                Err(self.refuse_unverified(entry, r))
            }
            (Err(rej), unapproved) => {
                let mut codes: Vec<String> = Vec::new();
                let mut detail = rej.to_string();
                if let Some((code, why)) = unapproved {
                    codes.push(code.to_owned());
                    detail = format!("{why}; {detail}");
                }
                codes.extend(rej.codes().into_iter().map(str::to_owned));
                let r = Refusal {
                    codes,
                    detail,
                    client: rejected(),
                };
                Err(self.refuse(entry, &consumed, r, now))
            }
        }
    }

    /// [`Attestor::verify_evidence`] for a request that acts on the
    /// record (a renewal, a signed launch): a disabled record is refused
    /// too (`record-disabled`), `what` naming the request in the detail.
    fn verify_enabled(
        &self,
        ev: Evidence,
        report_data: [u8; 64],
        peer: IpAddr,
        now: OffsetDateTime,
        what: &str,
    ) -> Result<Admitted, AttestError> {
        let admitted = self.verify_evidence(ev, report_data, peer, now)?;
        if !admitted.rec.enabled {
            let r = Refusal::rejected(
                "record-disabled",
                format!(
                    "record {} is disabled; the {what} report verified",
                    admitted.rec.id
                ),
            );
            return Err(self.refuse(admitted.entry, &admitted.consumed, r, now));
        }
        Ok(admitted)
    }

    fn attest_inner(
        &self,
        req: &AttestRequest,
        peer: IpAddr,
        now: OffsetDateTime,
    ) -> Result<AttestResponse, AttestError> {
        let ev = self.decode_evidence(&req.nonce, &req.report, req.cert_table.as_deref(), peer)?;
        let key = unb64(&req.ephemeral_key, 32)
            .and_then(|k| PublicKey::from_bytes(&k).ok())
            .ok_or_else(|| {
                protocol(
                    peer,
                    "bad-request",
                    "ephemeral_key: expected standard base64 of a valid X25519 public key",
                )
            })?;
        let data = attest::report_data(&ev.nonce, &key);
        let nonce = ev.nonce;
        let Admitted {
            rec,
            report_bytes,
            measurement,
            mut entry,
            consumed,
        } = self.verify_evidence(ev, data, peer, now)?;

        // Enabled, approved, same measurement: re-checked now, under the
        // lock every change of those takes. The VMK is sealed to the
        // client's key there, and the release, its count, the nonce's
        // outcome and the audit entry are one transaction, on disk before
        // the sealed key leaves.
        entry.result = "ok".into();
        let seal = |vmk: &[u8]| {
            attest::seal_key(&key, &report_bytes, vmk)
                .map_err(|e| ServiceError::Storage(format!("sealing the VMK to the client: {e}")))
        };
        let mut companion = self.companion(&entry, &consumed, Outcome::Released);
        let released = self
            .registry
            .release(&rec.id, &measurement, now, seal, &mut companion);
        drop(companion);
        let release = match released {
            Ok(release) => release,
            Err(ReleaseRefusal::Failed(e)) => return Err(service_failed("releasing the VMK", e)),
            Err(refusal) => {
                let code = refusal.code().unwrap_or("internal");
                let r = Refusal::rejected(code, format!("{refusal}; the report verified"));
                return Err(self.refuse(entry, &consumed, r, now));
            }
        };
        crate::crash::point(crate::crash::points::ATTEST_RELEASE_COMMITTED);
        let crate::registry::Release { sealed, record } = release;
        // The record's word on offline unlock as of this release (read in
        // its transaction), only in a signed response that asked for it:
        // an agent that does not check signatures must not act on it.
        let offline_unlock =
            (req.signed && req.offline).then(|| OfflineUnlock::for_record(record.offline_unlock));
        self.observe(record);
        tracing::info!(
            RECORD = %rec.id,
            NAME = %rec.name,
            OUTCOME = "released",
            LAUNCH = entry.launch.as_deref().unwrap_or("-"),
            PEER = %entry.peer,
            MEASUREMENT = entry.measurement.as_deref().unwrap_or("-"),
            REPORTED_TCB = entry.reported_tcb.as_deref().unwrap_or("-"),
            CHIP_ID = entry.chip_id_prefix.as_deref().unwrap_or("-"),
            CERT_SOURCE = entry.cert_source.as_deref().unwrap_or("-"),
            OFFLINE_UNLOCK = %offline_unlock.map_or("-", OfflineUnlock::as_str),
            NOTES = %entry.notes.join("; "),
            "attestation accepted; key released"
        );
        let sealed = sealed.to_bytes();
        // Signed by the author key, whose digest the PSP put in this very
        // report: the agent uses nothing released by a server that merely
        // holds a valid TLS certificate. With a directive, the signature
        // covers it (another domain label).
        let signature = req.signed.then(|| {
            let message =
                attest::release_message(&nonce, &report_bytes, &rec.id, &sealed, offline_unlock);
            attest::sign_message(self.registry.keys().author(), &message)
        });
        Ok(AttestResponse {
            record: rec.id,
            sealed_key: attest::b64(&sealed),
            signature,
            offline_unlock,
        })
    }
}

impl CertificateService for Attestor {
    fn import_certificates(
        &self,
        files: &[(String, Vec<u8>)],
    ) -> Result<Vec<CertSummary>, CertImportError> {
        Attestor::import_certificates(self, files)
    }

    fn list_certificates(&self) -> Result<Vec<CertSummary>, StoreError> {
        self.held_certificates()
    }

    fn list_crls(&self) -> Result<Vec<CrlSummary>, StoreError> {
        self.held_crls()
    }

    fn shared(&self) -> bool {
        self.store().shared()
    }

    fn remove_certificates(&self, filter: &CertFilter) -> Result<Vec<CertSummary>, StoreError> {
        if filter.crl {
            let source = filter.source.map(|s| match s {
                held::HeldSource::Imported => CrlSource::Imported,
                held::HeldSource::KdsCache => CrlSource::Kds,
            });
            let removed = crls::remove(
                self.store(),
                self.verifier.anchors(),
                &self.crl_memo,
                filter.product,
                source,
            )?;
            for c in &removed {
                tracing::warn!(
                    PRODUCT = %c.product,
                    THIS_UPDATE = %c.this_update,
                    SOURCE = c.source.name(),
                    "removed a held CRL: chains of {} are now checked as having no CRL",
                    c.product
                );
            }
            return Ok(removed
                .into_iter()
                .map(|c| CertSummary {
                    role: snpguard::certs::CertRole::Ark,
                    product: c.product,
                    chip_id: None,
                    tcb: None,
                    not_after: c.next_update.clone(),
                    source: c.source.name(),
                    file: None,
                    crl: Some(c),
                })
                .collect());
        }
        let removed = held::remove(self.store(), filter)?;
        for c in &removed {
            tracing::info!(
                ROLE = %c.role,
                PRODUCT = %c.product,
                CHIP_ID = c.chip_id.as_deref().unwrap_or("-"),
                TCB = c.tcb.as_deref().unwrap_or("-"),
                SOURCE = c.source,
                "removed a held certificate"
            );
        }
        Ok(removed)
    }
}

impl AttestHandler for Attestor {
    fn challenge(&self) -> Result<ChallengeResponse, AttestError> {
        let now = secs(self.clock.now());
        let mut random = [0u8; 8];
        crate::secrets::random_bytes(&mut random).map_err(|e| internal("making a nonce", e))?;
        let nonce = self.nonces.issue(now, random);
        crate::metrics::global().nonce_issued(now, self.nonces.lifetime());
        self.collect_nonces(now);
        Ok(ChallengeResponse {
            nonce: encode_nonce(&nonce),
            expires_in: self.nonces.lifetime(),
        })
    }

    fn attest(&self, req: AttestRequest, peer: IpAddr) -> Result<AttestResponse, AttestError> {
        let now = self.clock.now();
        self.attest_inner(&req, peer, now)
    }

    fn renew(&self, req: RenewRequest, peer: IpAddr) -> Result<RenewResponse, AttestError> {
        let now = self.clock.now();
        self.renew_inner(req, peer, now)
    }

    fn signed_launch(
        &self,
        req: SignedLaunchRequest,
        peer: IpAddr,
    ) -> Result<SignedLaunchResponse, AttestError> {
        let now = self.clock.now();
        self.signed_launch_inner(req, peer, now)
    }

    fn check_nonce(&self, nonce: &str) -> Result<std::time::Duration, AttestError> {
        let now = secs(self.clock.now());
        let nonce = decode_nonce(nonce).ok_or_else(|| {
            AttestError::bad_request("nonce-invalid", "nonce: not a nonce this service issued")
        })?;
        let issued = self
            .nonces
            .check(&nonce, now)
            .map_err(|e| nonce_error(&e))?;
        match self.store().get(Tree::Nonces, &nonce) {
            Ok(None) => {}
            Ok(Some(_)) => return Err(nonce_error(&NonceError::Reused)),
            Err(e) => return Err(store_failed("reading the used nonces", e)),
        }
        // `check` accepts an age up to the lifetime, inclusive.
        let until = issued
            .saturating_add(self.nonces.lifetime())
            .saturating_add(1);
        Ok(std::time::Duration::from_secs(until.saturating_sub(now)))
    }

    fn ingestion_key(&self) -> [u8; 32] {
        self.registry.keys().ingestion_public().to_bytes()
    }
}
