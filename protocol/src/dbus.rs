//! The daemon's D-Bus management API as both sides see it: names, limits,
//! option keys, typed errors and client proxies. The reference is
//! `docs/dbus.md` and the interface XML under `dbus/interfaces/`.

use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue};

/// Well-known bus name of the daemon.
pub const BUS_NAME: &str = "org.snpguard.SnpGuard1";
/// Object path of the Manager (also the ObjectManager root).
pub const MANAGER_PATH: &str = "/org/snpguard/SnpGuard1";
/// Parent path of the record objects; a record lives at `<this>/<id>`.
pub const RECORDS_PATH: &str = "/org/snpguard/SnpGuard1/records";
/// Manager interface name.
pub const MANAGER_INTERFACE: &str = "org.snpguard.SnpGuard1.Manager";
/// Record interface name.
pub const RECORD_INTERFACE: &str = "org.snpguard.SnpGuard1.Record";
/// Certificates interface name (on the Manager object).
pub const CERTIFICATES_INTERFACE: &str = "org.snpguard.SnpGuard1.Certificates";

/// polkit action for `Register`, `RegisterFromPaths`, `AddLaunch` and
/// `AddLaunchFromPaths`.
pub const ACTION_REGISTER: &str = "org.snpguard.SnpGuard1.register";
/// polkit action for `Enable`, `Disable`, `Delete`, `SetMinimumTcb`,
/// `SetOfflineUnlock`, `ApproveLaunch`, `RetireLaunch` and
/// `DiscardLaunch`.
pub const ACTION_MANAGE: &str = "org.snpguard.SnpGuard1.manage";
/// polkit action for `ExportBundle`, `ExportBundleToPath`,
/// `ExportLaunchBundle` and `ExportLaunchBundleToPath`.
pub const ACTION_EXPORT: &str = "org.snpguard.SnpGuard1.export";
/// polkit action for `Certificates.Import` and `ImportFromPaths`.
pub const ACTION_IMPORT_CERTIFICATES: &str = "org.snpguard.SnpGuard1.import-certificates";
/// polkit action for `Certificates.Remove`.
pub const ACTION_REMOVE_CERTIFICATES: &str = "org.snpguard.SnpGuard1.remove-certificates";

/// Keys of the `files` argument of `Register`/`RegisterFromPaths`.
pub mod file_key {
    /// OVMF firmware.
    pub const FIRMWARE: &str = "firmware";
    /// Guest kernel.
    pub const KERNEL: &str = "kernel";
    /// Guest initrd.
    pub const INITRD: &str = "initrd";
    /// Every key, each required exactly once.
    pub const ALL: [&str; 3] = [FIRMWARE, KERNEL, INITRD];
}

/// Keys of the `files` argument of `AddLaunch`/`AddLaunchFromPaths`.
pub mod launch_file_key {
    /// Guest kernel.
    pub const KERNEL: &str = "kernel";
    /// Guest initrd.
    pub const INITRD: &str = "initrd";
    /// Every key, each required exactly once.
    pub const ALL: [&str; 2] = [KERNEL, INITRD];
}

/// States of a launch, as the `Launches` property spells them.
pub mod launch_state {
    /// Attestation with this measurement may release the key.
    pub const APPROVED: &str = "approved";
    /// Waiting for an operator's approval; releases nothing.
    pub const PENDING: &str = "pending";
    /// Superseded; releases nothing.
    pub const RETIRED: &str = "retired";
}

/// One entry of the `Launches` property (D-Bus `(ssssss)`, in this
/// field order).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    zbus::zvariant::Type,
    zbus::zvariant::Value,
    zbus::zvariant::OwnedValue,
)]
pub struct LaunchEntry {
    /// The launch's id within its record (`1`, `2`, …).
    pub id: String,
    /// See [`launch_state`].
    pub state: String,
    /// The launch digest, 96 lowercase hex digits.
    pub measurement: String,
    /// The kernel command line as measured.
    pub cmdline: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// `registration`, `operator` or `guest <address>`.
    pub origin: String,
}

/// Keys of the `options` argument of `Register`/`RegisterFromPaths`, with
/// their D-Bus type in the comment.
pub mod option_key {
    /// `s`, required: record name, `[A-Za-z0-9._-]{1,64}`.
    pub const NAME: &str = "name";
    /// `s`, required: kernel command line, at most 4096 bytes.
    pub const CMDLINE: &str = "cmdline";
    /// `u`, required: vCPU count.
    pub const VCPUS: &str = "vcpus";
    /// `s`, required: vCPU model (e.g. `EPYC-v4`).
    pub const VCPU_TYPE: &str = "vcpu_type";
    /// `b`, default false.
    pub const ALLOW_SMT: &str = "allow_smt";
    /// `b`, default false.
    pub const ALLOW_DEBUG: &str = "allow_debug";
    /// `b`, default false.
    pub const ALLOW_MIGRATE_MA: &str = "allow_migrate_ma";
    /// `y`: with the other three `min_tcb_*` keys or none of them.
    pub const MIN_TCB_BOOTLOADER: &str = "min_tcb_bootloader";
    /// `y`.
    pub const MIN_TCB_TEE: &str = "min_tcb_tee";
    /// `y`.
    pub const MIN_TCB_SNP: &str = "min_tcb_snp";
    /// `y`.
    pub const MIN_TCB_MICROCODE: &str = "min_tcb_microcode";
    /// `y`, optional (Turin); only together with the four above.
    pub const MIN_TCB_FMC: &str = "min_tcb_fmc";
    /// `b`, default false: accept reports endorsed by a configured test
    /// root (simulated platforms); refused when the daemon has none.
    pub const ALLOW_TEST_ROOT: &str = "allow_test_root";
    /// `b`, default false: the record allows offline unlock (a guest that
    /// attested online may enrol a chip-derived key and open its root
    /// without a server later); `SetOfflineUnlock` changes it.
    pub const ALLOW_OFFLINE_UNLOCK: &str = "allow_offline_unlock";
}

/// Keys of the `tcb` argument of `SetMinimumTcb` (and of the `MinTcb`
/// property): each a `y`; `fmc` optional (Turin), the others required.
pub mod tcb_key {
    /// Boot loader SPL.
    pub const BOOTLOADER: &str = "bootloader";
    /// TEE SPL.
    pub const TEE: &str = "tee";
    /// SNP firmware SPL.
    pub const SNP: &str = "snp";
    /// Microcode SPL.
    pub const MICROCODE: &str = "microcode";
    /// FMC SPL (Turin).
    pub const FMC: &str = "fmc";
    /// Every key.
    pub const ALL: [&str; 5] = [BOOTLOADER, TEE, SNP, MICROCODE, FMC];
}

/// Bounds the daemon enforces on its inputs.
pub mod limit {
    /// Sealed VMK, bytes.
    pub const SEALED_VMK: usize = 4096;
    /// Kernel command line, bytes.
    pub const CMDLINE: usize = 4096;
    /// Record name, bytes.
    pub const NAME: usize = 64;
    /// vCPU model name, bytes.
    pub const VCPU_TYPE: usize = 64;
    /// Entries of an options dictionary.
    pub const OPTIONS: usize = 32;
    /// A path argument, bytes.
    pub const PATH: usize = 4096;
    /// Record lookup key (`FindRecord`), bytes.
    pub const FIND_KEY: usize = 256;
    /// A launch id argument, bytes.
    pub const LAUNCH_ID: usize = 16;
    /// Files of one certificate import.
    pub const IMPORT_FILES: usize = 64;
    /// One file of a certificate import, bytes.
    pub const IMPORT_FILE: usize = 64 * 1024;
    /// A file's name in a certificate import, bytes.
    pub const FILE_LABEL: usize = 256;
    /// Entries one `AuditTrail` or `UnverifiedRefusals` call returns at
    /// most.
    pub const AUDIT_ENTRIES: u32 = 1000;
}

/// One attestation of the audit trail as `AuditTrail` returns it
/// (`(ssssass)`): accepted or refused, never key material. A summary of
/// the daemon's stored `snpguardd::audit::AuditEntry` (which also keeps
/// the launch, measurement and TCB).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, zbus::zvariant::Type,
)]
pub struct AuditSummary {
    /// When, RFC 3339 (UTC).
    pub time: String,
    /// Id of the record the report named, "" when none matched.
    pub record: String,
    /// The client's address.
    pub peer: String,
    /// `ok`, or the headline reason code of the refusal.
    pub result: String,
    /// Every reason code (empty on success).
    pub codes: Vec<String>,
    /// The precise reason (empty on success).
    pub detail: String,
}

/// One certificate as `Certificates.Import` and `List` return it
/// (D-Bus `(sssssss)`); empty strings where a field does not apply.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, zbus::zvariant::Type,
)]
pub struct CertificateInfo {
    /// `VCEK`, `VLEK`, `ASK`, `ASVK`, `ARK`, or `CRL` (an ARK CRL that
    /// `Import` took or `Remove` removed; `not_after` is its nextUpdate).
    pub kind: String,
    /// `milan`, `genoa` or `turin`.
    pub product: String,
    /// First 8 bytes of the VCEK's hwID (the report's CHIP_ID), hex.
    pub chip_id: String,
    /// VCEK/VLEK TCB as `bootloader.tee.snp.microcode` (`.fmc` on Turin).
    pub tcb: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// `imported`, `kds-cache`, or `trusted-root` (an ARK that is a trust
    /// anchor already; checked, not stored).
    pub source: String,
    /// The name the client gave the input (imports only).
    pub file: String,
}

/// One ARK CRL the daemon holds, as `Certificates.ListCrls` returns it
/// (D-Bus `(ssssus)`).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, zbus::zvariant::Type,
)]
pub struct CrlInfo {
    /// `milan`, `genoa` or `turin`.
    pub product: String,
    /// `amd` (AMD's pinned ARK) or `test` (a configured test root).
    pub issuer: String,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339 ("" when the CRL has none).
    pub next_update: String,
    /// Number of revoked serial numbers.
    pub revoked: u32,
    /// `imported` or `kds-cache`.
    pub source: String,
}

/// The typed errors of the API, `org.snpguard.SnpGuard1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.snpguard.SnpGuard1.Error")]
pub enum Error {
    /// A transport-level failure (not sent by the daemon as such).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// An argument or option is invalid; the message names it.
    InvalidInput(String),
    /// No such record.
    NotFound(String),
    /// A record with that name exists.
    AlreadyExists(String),
    /// The sealed VMK cannot be opened with the daemon's ingestion key.
    SealedKey(String),
    /// Storage failed; the operation had no effect.
    Storage(String),
    /// The shared database cannot be reached; nothing changed, and the
    /// same call may succeed once it is back.
    Unavailable(String),
    /// polkit did not authorize the caller, or could not be asked.
    AccessDenied(String),
    /// The launch is not in a state the operation applies to (approving
    /// a retired launch, discarding an approved one, …).
    LaunchState(String),
    /// Retiring the launch would leave the record without an approved one.
    LastApprovedLaunch(String),
    /// The record already has the most pending launches it may have.
    TooManyPending(String),
    /// A certificate does not chain to a trusted root (or is expired,
    /// or its AMD extensions are wrong); the message names the file.
    Untrusted(String),
}

/// One file of `LaunchAgentFiles`: (path, kind `file`|`symlink`,
/// sha256 hex, text; empty when not kept).
pub type AgentFileEntry = (String, String, String, String);

/// Options of `Register` as built by clients.
pub type Options = HashMap<String, OwnedValue>;

/// Client side of `org.snpguard.SnpGuard1.Manager`.
#[proxy(
    interface = "org.snpguard.SnpGuard1.Manager",
    default_service = "org.snpguard.SnpGuard1",
    default_path = "/org/snpguard/SnpGuard1",
    gen_blocking = false
)]
pub trait Manager {
    /// Registers a launch from open files (keys of [`file_key`]).
    fn register(
        &self,
        files: HashMap<&str, OwnedFd>,
        options: &Options,
        sealed_vmk: &[u8],
    ) -> zbus::Result<OwnedObjectPath>;

    /// Registers a launch from files inside the daemon's import directory.
    fn register_from_paths(
        &self,
        files: HashMap<&str, &str>,
        options: &Options,
        sealed_vmk: &[u8],
    ) -> zbus::Result<OwnedObjectPath>;

    /// Object paths of every record.
    fn list_records(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// Object path of the record with that name or id.
    fn find_record(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    /// The last `count` (1..=[`limit::AUDIT_ENTRIES`]) attestations,
    /// oldest first.
    fn audit_trail(&self, count: u32) -> zbus::Result<Vec<AuditSummary>>;

    /// The last `count` (1..=[`limit::AUDIT_ENTRIES`]) refusals decided
    /// before a report's signature was verified, oldest first.
    fn unverified_refusals(&self, count: u32) -> zbus::Result<Vec<AuditSummary>>;

    /// The HPKE ingestion public key (raw X25519).
    #[zbus(property)]
    fn ingestion_public_key(&self) -> zbus::Result<Vec<u8>>;

    /// Daemon version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// The directory path arguments must lie in (import and export).
    #[zbus(property)]
    fn import_directory(&self) -> zbus::Result<String>;

    /// The vCPU models `vcpu_type` accepts, in the reference tool's order.
    #[zbus(property)]
    fn supported_vcpu_types(&self) -> zbus::Result<Vec<String>>;
}

/// Client side of `org.snpguard.SnpGuard1.Record`.
#[proxy(
    interface = "org.snpguard.SnpGuard1.Record",
    default_service = "org.snpguard.SnpGuard1",
    gen_blocking = false
)]
pub trait Record {
    /// Allows attestation to release the record's key.
    fn enable(&self) -> zbus::Result<()>;
    /// Refuses attestation for the record.
    fn disable(&self) -> zbus::Result<()>;
    /// Deletes the record and its secrets.
    fn delete(&self) -> zbus::Result<()>;
    /// Replaces the record's minimum TCB (keys of [`tcb_key`]).
    fn set_minimum_tcb(&self, tcb: HashMap<&str, u8>) -> zbus::Result<()>;
    /// Allows or forbids offline unlock: the directive the next signed
    /// releases carry.
    fn set_offline_unlock(&self, enabled: bool) -> zbus::Result<()>;
    /// Writes launch-artifacts.tar.gz to a writable fd.
    fn export_bundle(&self, fd: OwnedFd) -> zbus::Result<()>;
    /// Writes launch-artifacts.tar.gz to a new file in the import directory.
    fn export_bundle_to_path(&self, path: &str) -> zbus::Result<()>;
    /// Writes the bundle of one approved launch to a writable fd.
    fn export_launch_bundle(&self, launch: &str, fd: OwnedFd) -> zbus::Result<()>;
    /// Writes the bundle of one approved launch to a new file in the import
    /// directory.
    fn export_launch_bundle_to_path(&self, launch: &str, path: &str) -> zbus::Result<()>;
    /// Adds a pending launch from open files (keys of [`launch_file_key`]);
    /// returns its launch id.
    fn add_launch(&self, files: HashMap<&str, OwnedFd>, cmdline: &str) -> zbus::Result<String>;
    /// Adds a pending launch from files inside the import directory.
    fn add_launch_from_paths(
        &self,
        files: HashMap<&str, &str>,
        cmdline: &str,
    ) -> zbus::Result<String>;
    /// Approves a pending launch: signs its ID block; attestation with its
    /// measurement releases the key from now on.
    fn approve_launch(&self, launch: &str) -> zbus::Result<()>;
    /// Retires an approved launch (never the last one).
    fn retire_launch(&self, launch: &str) -> zbus::Result<()>;
    /// Discards a pending launch.
    fn discard_launch(&self, launch: &str) -> zbus::Result<()>;
    /// The SHA-256 digests of a launch's kernel and initrd (hex).
    fn launch_digests(&self, launch: &str) -> zbus::Result<(String, String)>;
    /// The agent's files in a launch's initrd and the problems reading
    /// them (`LaunchAgentFiles`).
    fn launch_agent_files(&self, launch: &str) -> zbus::Result<(Vec<AgentFileEntry>, Vec<String>)>;

    /// Record id (image ID, hex).
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    /// Record name.
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    /// Whether attestation may release the key.
    #[zbus(property)]
    fn enabled(&self) -> zbus::Result<bool>;
    /// Creation time, RFC 3339.
    #[zbus(property)]
    fn created(&self) -> zbus::Result<String>;
    /// Launch digest of the newest approved launch, hex.
    #[zbus(property)]
    fn measurement(&self) -> zbus::Result<String>;
    /// Every launch, oldest first.
    #[zbus(property)]
    fn launches(&self) -> zbus::Result<Vec<LaunchEntry>>;
    /// Number of pending launches.
    #[zbus(property)]
    fn pending_launches(&self) -> zbus::Result<u32>;
    /// Guest policy.
    #[zbus(property)]
    fn policy(&self) -> zbus::Result<u64>;
    /// vCPU count.
    #[zbus(property)]
    fn vcpus(&self) -> zbus::Result<u32>;
    /// vCPU model.
    #[zbus(property)]
    fn vcpu_type(&self) -> zbus::Result<String>;
    /// Kernel command line of the newest approved launch.
    #[zbus(property)]
    fn cmdline(&self) -> zbus::Result<String>;
    /// Family ID, hex.
    #[zbus(property)]
    fn family_id(&self) -> zbus::Result<String>;
    /// Image ID, hex.
    #[zbus(property)]
    fn image_id(&self) -> zbus::Result<String>;
    /// ID key digest, hex.
    #[zbus(property)]
    fn id_key_digest(&self) -> zbus::Result<String>;
    /// Author key digest, hex.
    #[zbus(property)]
    fn author_key_digest(&self) -> zbus::Result<String>;
    /// Minimum TCB (`bootloader`, `tee`, `snp`, `microcode`, `fmc`); empty
    /// when none.
    #[zbus(property)]
    fn min_tcb(&self) -> zbus::Result<HashMap<String, u8>>;
    /// Whether reports endorsed by a configured test root are accepted.
    #[zbus(property)]
    fn allow_test_root(&self) -> zbus::Result<bool>;
    /// Whether the record allows offline unlock (signed releases tell the
    /// agent to enrol its chip-derived key; otherwise to remove it).
    #[zbus(property)]
    fn offline_unlock(&self) -> zbus::Result<bool>;
    /// Successful attestations.
    #[zbus(property)]
    fn attestations_ok(&self) -> zbus::Result<u64>;
    /// Refused attestations.
    #[zbus(property)]
    fn attestations_failed(&self) -> zbus::Result<u64>;
    /// Last attestation, RFC 3339, or "" if never.
    #[zbus(property)]
    fn last_attestation(&self) -> zbus::Result<String>;
}

/// Client side of `org.snpguard.SnpGuard1.Certificates`.
#[proxy(
    interface = "org.snpguard.SnpGuard1.Certificates",
    default_service = "org.snpguard.SnpGuard1",
    default_path = "/org/snpguard/SnpGuard1",
    gen_blocking = false
)]
pub trait Certificates {
    /// Checks and stores certificates from open files, keyed by the name
    /// errors and results use; all or nothing.
    fn import(&self, files: HashMap<&str, OwnedFd>) -> zbus::Result<Vec<CertificateInfo>>;

    /// As `Import`, from files inside the daemon's import directory.
    fn import_from_paths(&self, paths: &[&str]) -> zbus::Result<Vec<CertificateInfo>>;

    /// Every certificate the daemon holds.
    fn list(&self) -> zbus::Result<Vec<CertificateInfo>>;

    /// Every ARK CRL the daemon holds.
    fn list_crls(&self) -> zbus::Result<Vec<CrlInfo>>;

    /// Removes the held certificates matching every non-empty argument
    /// (source, kind, product, chip_id prefix, tcb); returns them.
    fn remove(
        &self,
        source: &str,
        kind: &str,
        product: &str,
        chip_id: &str,
        tcb: &str,
    ) -> zbus::Result<Vec<CertificateInfo>>;

    /// The held certificates or CRLs changed (through this daemon or
    /// another replica sharing its store): list them again.
    #[zbus(signal)]
    fn changed(&self) -> zbus::Result<()>;
}
