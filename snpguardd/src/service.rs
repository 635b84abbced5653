//! The management operations of the daemon, independent of transport.
//! The D-Bus layer exposes a [`RecordService`]; the registry implements it.

use std::fs::File;

use serde::Serialize;
use snpguard::verify::MinTcb;
use snpguard_protocol::initrd::AgentFiles;

use crate::audit::AuditEntry;

/// Registration input, as the D-Bus layer hands it over. Files are open
/// handles (a file descriptor the client passed, or a file the daemon
/// opened under its import directory for clients that cannot pass fds);
/// the registry copies them (bounded) before measuring, so what is
/// measured is exactly what is bundled.
#[derive(Debug)]
pub struct RegisterRequest {
    /// Human name of the record (unique; `[A-Za-z0-9._-]`, 1..=64).
    pub name: String,
    /// OVMF firmware (an AmdSev build with SNP_KERNEL_HASHES).
    pub firmware: File,
    /// Guest kernel.
    pub kernel: File,
    /// Guest initrd.
    pub initrd: File,
    /// Kernel command line, exactly as it will be measured.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// QEMU vCPU model, one sev-snp-measure knows (e.g. "EPYC-v4").
    pub vcpu_type: String,
    /// Allow SMT in the guest policy.
    pub allow_smt: bool,
    /// Allow debugging in the guest policy (test guests only).
    pub allow_debug: bool,
    /// Allow a migration agent in the guest policy.
    pub allow_migrate_ma: bool,
    /// Minimum reported TCB for attestation.
    pub min_tcb: Option<MinTcb>,
    /// Accept reports whose endorsement chain ends at a configured test
    /// root (`[[test_roots]]`; simulated platforms, tests only). Refused
    /// when no test root is configured.
    pub allow_test_root: bool,
    /// Allow offline unlock: signed releases tell the agent to enrol a
    /// chip-derived key for the launch ([`RecordService::set_offline_unlock`]
    /// changes it later).
    pub allow_offline_unlock: bool,
    /// The VMK sealed (HPKE) to the daemon's ingestion key, as `convert`
    /// writes it into the staging directory.
    pub sealed_vmk: Vec<u8>,
}

/// A new launch of an existing record: the boot artifacts that change
/// with a kernel update. Firmware, vCPUs, policy and TCB minimums stay
/// the record's. The artifacts are read once (bounded) into blobs.
pub struct LaunchRequest {
    /// Guest kernel (an open file, or the bytes a guest sent).
    pub kernel: Box<dyn std::io::Read + Send>,
    /// Guest initrd.
    pub initrd: Box<dyn std::io::Read + Send>,
    /// Kernel command line, exactly as it will be measured.
    pub cmdline: String,
    /// Who asked: `operator`, or `guest <peer address>`.
    pub origin: String,
}

impl std::fmt::Debug for LaunchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchRequest")
            .field("cmdline", &self.cmdline)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The life of a launch: added pending, approved by an operator, retired
/// when superseded. Only an approved launch releases the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchState {
    /// Attestation with this measurement may release the key.
    Approved,
    /// Waiting for an operator; releases nothing.
    Pending,
    /// Superseded; releases nothing.
    Retired,
}

impl LaunchState {
    /// The state's name (`approved`, `pending`, `retired`).
    pub fn as_str(self) -> &'static str {
        match self {
            LaunchState::Approved => "approved",
            LaunchState::Pending => "pending",
            LaunchState::Retired => "retired",
        }
    }
}

impl std::fmt::Display for LaunchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One launch of a record as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchInfo {
    /// Launch id, unique within the record (`1`, `2`, …; never reused).
    pub id: String,
    /// Its state.
    pub state: LaunchState,
    /// Launch digest, 96 hex digits.
    pub measurement: String,
    /// Kernel command line.
    pub cmdline: String,
    /// When it was added, RFC 3339.
    pub created: String,
    /// When it was approved, if it was.
    pub approved: Option<String>,
    /// When it was retired, if it was.
    pub retired: Option<String>,
    /// `registration`, `operator` or `guest <peer address>`.
    pub origin: String,
    /// SHA-256 of the kernel, 64 lowercase hex digits.
    pub kernel_sha256: String,
    /// SHA-256 of the initrd, 64 lowercase hex digits.
    pub initrd_sha256: String,
}

/// What adding a launch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchAdded {
    /// The record afterwards.
    pub record: RecordInfo,
    /// The launch id: the new pending launch, or the existing launch with
    /// the same measurement.
    pub launch: String,
    /// Its measurement.
    pub measurement: String,
    /// False when a launch with that measurement already existed.
    pub created: bool,
}

/// What a record looks like to a client. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordInfo {
    /// Stable identifier: the 16-byte image ID in lowercase hex; also the
    /// last element of the record's D-Bus object path.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Whether attestation may release the record's key.
    pub enabled: bool,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Launch digest of the newest approved launch, 96 hex digits.
    pub measurement: String,
    /// Guest policy.
    pub policy: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// vCPU model.
    pub vcpu_type: String,
    /// Kernel command line of the newest approved launch.
    pub cmdline: String,
    /// Every launch, oldest first.
    pub launches: Vec<LaunchInfo>,
    /// Family ID of the ID block (hex).
    pub family_id: String,
    /// Image ID of the ID block (hex).
    pub image_id: String,
    /// SHA-384 digest of the record's ID key (hex).
    pub id_key_digest: String,
    /// SHA-384 digest of the daemon's author key (hex).
    pub author_key_digest: String,
    /// Minimum TCB, if any (the daemon-wide floors apply on top).
    pub min_tcb: Option<MinTcb>,
    /// Whether reports endorsed by a configured test root are accepted.
    pub allow_test_root: bool,
    /// Whether the record allows offline unlock: a signed release asked
    /// for the directive says `enrol` when it does, `remove` when not.
    pub offline_unlock: bool,
    /// Successful attestations.
    pub attestations_ok: u64,
    /// Refused attestations.
    pub attestations_failed: u64,
    /// Time of the last attestation (RFC 3339), if any.
    pub last_attestation: Option<String>,
}

/// Why an operation failed. Each variant becomes a typed D-Bus error
/// `org.snpguard.SnpGuard1.Error.<Variant>`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An input is invalid; the message names it and what to do.
    #[error("{0}")]
    InvalidInput(String),
    /// No record with that id or name.
    #[error("no record {0:?}")]
    NotFound(String),
    /// A record with that name exists.
    #[error("a record named {0:?} already exists; pick another --name or delete it first")]
    AlreadyExists(String),
    /// The sealed VMK cannot be opened with this daemon's ingestion key.
    #[error("the sealed VMK cannot be opened: {0}; convert with this daemon's ingestion key")]
    SealedKey(String),
    /// Storage failed; the operation had no effect.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The shared database cannot be reached; nothing changed.
    #[error("the database is unavailable ({0}); nothing was changed, try again once it is back")]
    Unavailable(String),
    /// The launch is not in a state the operation applies to.
    #[error("{0}")]
    LaunchState(String),
    /// Retiring that launch would leave the record without an approved one.
    #[error("{0}")]
    LastApprovedLaunch(String),
    /// The record has the most pending launches it may have.
    #[error("{0}")]
    TooManyPending(String),
}

/// The agent's files in the initrd read from `initrd`. An initrd that
/// cannot be read (an unsupported compression, damage, a limit) is one
/// problem in the answer: the review then says to compare by hand.
pub fn agent_files_of(initrd: impl std::io::Read) -> AgentFiles {
    use snpguard_protocol::initrd::{agent_files, Limits};
    match agent_files(initrd, &Limits::default()) {
        Ok(files) => files,
        Err(e) => AgentFiles {
            files: Vec::new(),
            problems: vec![format!("the initrd cannot be read: {e}")],
        },
    }
}

/// The management operations. Implementations are thread-safe and every
/// mutation is durable before it returns.
pub trait RecordService: Send + Sync + 'static {
    /// Registers a launch; returns the new record.
    fn register(&self, req: RegisterRequest) -> Result<RecordInfo, ServiceError>;
    /// Every record.
    fn list(&self) -> Result<Vec<RecordInfo>, ServiceError>;
    /// One record by id.
    fn get(&self, id: &str) -> Result<RecordInfo, ServiceError>;
    /// Enables or disables a record.
    fn set_enabled(&self, id: &str, enabled: bool) -> Result<RecordInfo, ServiceError>;
    /// Replaces the record's own minimum TCB (e.g. after an AMD security
    /// bulletin); the daemon-wide floors still apply on top.
    fn set_min_tcb(&self, id: &str, min_tcb: MinTcb) -> Result<RecordInfo, ServiceError>;
    /// Allows or forbids offline unlock for the record: every later signed
    /// release carries the directive (`enrol` or `remove`). It cannot reach
    /// a guest that never attests online again.
    fn set_offline_unlock(&self, id: &str, allowed: bool) -> Result<RecordInfo, ServiceError>;
    /// Deletes a record and its secrets.
    fn delete(&self, id: &str) -> Result<(), ServiceError>;
    /// Writes launch-artifacts.tar.gz of the record's newest approved
    /// launch (`launch` None) or of the approved launch `launch` to `out`.
    fn export_bundle(
        &self,
        id: &str,
        launch: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> Result<(), ServiceError>;
    /// Adds a pending launch to record `id` (measured with the record's
    /// firmware, vCPUs and policy); a launch with the same measurement is
    /// returned instead of a duplicate.
    fn add_launch(&self, id: &str, req: LaunchRequest) -> Result<LaunchAdded, ServiceError>;
    /// The agent's files (configuration, CA, binary) in the initrd of
    /// launch `launch`, read from the stored initrd as the kernel unpacks
    /// it, so that an operator sees what an approval changes. An initrd
    /// that cannot be read gives a problem in the answer, not an error.
    fn launch_agent_files(&self, id: &str, launch: &str) -> Result<AgentFiles, ServiceError>;
    /// Approves a pending launch: signs its ID block with the record's ID
    /// key; attestation with its measurement releases the key from now on.
    fn approve_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError>;
    /// Retires an approved launch; refuses the record's last approved one.
    fn retire_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError>;
    /// Discards a pending launch.
    fn discard_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError>;
    /// The HPKE ingestion public key (raw X25519, 32 bytes).
    fn ingestion_public_key(&self) -> Vec<u8>;
    /// The last `n` attestations of the audit trail, oldest first.
    fn audit_trail(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError>;
    /// The last `n` refusals decided before the report's signature was
    /// verified (bad nonce, unknown image, chain or signature failure),
    /// oldest first: kept apart from the audit trail and the records'
    /// counters, which an unauthenticated client must not be able to
    /// move.
    fn unverified_refusals(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError>;
}
