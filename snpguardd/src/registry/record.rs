//! A record as stored (JSON with a format version), and the checks of
//! registration inputs.

use serde::{Deserialize, Serialize};
use snpguard::report::GuestPolicy;
use snpguard::verify::MinTcb;

use super::blobs::BlobRef;
use super::launch::StoredLaunch;
use crate::service::{LaunchState, RecordInfo, ServiceError};

/// Format version of [`StoredRecord`]. Version 1 had one launch in the
/// record itself; version 2 has a list of launches (the migration is
/// [`crate::store`]'s schema step 1 → 2).
pub const RECORD_VERSION: u32 = 2;
/// Longest record name.
pub const MAX_NAME_LEN: usize = 64;
/// Most vCPUs a record may have: as many as a launch digest can be
/// computed for (one limit everywhere).
pub use snpguard::measure::MAX_VCPUS;
/// Longest vCPU type name looked at (the longest valid one is 13).
const MAX_VCPU_TYPE_LEN: usize = 64;

/// Guest policy bit 16: SMT allowed.
pub const POLICY_SMT: u64 = GuestPolicy::SMT;
/// Guest policy bit 17: reserved, must be one.
pub const POLICY_RESERVED_ONE: u64 = GuestPolicy::RESERVED_ONE;
/// Guest policy bit 18: migration agent allowed.
pub const POLICY_MIGRATE_MA: u64 = GuestPolicy::MIGRATE_MA;
/// Guest policy bit 19: debugging allowed.
pub const POLICY_DEBUG: u64 = GuestPolicy::DEBUG;

/// The guest policy for the policy switches ([`GuestPolicy::for_launch`]).
pub fn guest_policy(allow_smt: bool, allow_debug: bool, allow_migrate_ma: bool) -> u64 {
    GuestPolicy::for_launch(allow_smt, allow_debug, allow_migrate_ma).0
}

/// TCB minimums as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    pub fmc: Option<u8>,
}

impl From<MinTcb> for StoredTcb {
    fn from(t: MinTcb) -> Self {
        StoredTcb {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        }
    }
}

impl From<StoredTcb> for MinTcb {
    fn from(t: StoredTcb) -> Self {
        MinTcb {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        }
    }
}

/// A record in the `records` tree. Secrets (the VMK, the ID key) are in
/// the `secrets` tree, sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Always [`RECORD_VERSION`].
    pub v: u32,
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub created: String,
    pub policy: u64,
    pub guest_features: u64,
    pub vcpus: u32,
    pub vcpu_type: String,
    pub allow_smt: bool,
    pub allow_debug: bool,
    pub allow_migrate_ma: bool,
    pub min_tcb: Option<StoredTcb>,
    /// Reports endorsed by a configured test root are accepted (absent in
    /// records stored before the option existed: false).
    #[serde(default)]
    pub allow_test_root: bool,
    /// Offline unlock allowed: signed releases carry the `enrol`
    /// directive, else `remove` (absent in records stored before the
    /// option existed: false).
    #[serde(default)]
    pub offline_unlock: bool,
    pub family_id: String,
    pub image_id: String,
    pub id_key_digest: String,
    pub author_key_digest: String,
    pub firmware: BlobRef,
    /// Every launch, oldest first.
    pub launches: Vec<StoredLaunch>,
    /// The id the next launch gets (ids are never reused).
    pub next_launch: u32,
    /// The approval number the next approved launch gets; the newest
    /// approved launch has the highest.
    pub next_approval: u64,
    pub attestations_ok: u64,
    pub attestations_failed: u64,
    pub last_attestation: Option<String>,
}

impl StoredRecord {
    /// Serializes the record.
    pub fn to_json(&self) -> Result<Vec<u8>, ServiceError> {
        serde_json::to_vec(self).map_err(|e| ServiceError::Storage(format!("encoding record: {e}")))
    }

    /// Decodes a stored record, refusing other format versions.
    pub fn from_json(bytes: &[u8]) -> Result<StoredRecord, ServiceError> {
        let r: StoredRecord = serde_json::from_slice(bytes)
            .map_err(|e| ServiceError::Storage(format!("a stored record is corrupt: {e}")))?;
        if r.v != RECORD_VERSION {
            return Err(ServiceError::Storage(format!(
                "record {} has format version {}, expected {RECORD_VERSION}",
                r.id, r.v
            )));
        }
        Ok(r)
    }

    /// The digests of the record's blobs, every launch's included.
    pub fn blob_digests(&self) -> Vec<&str> {
        let mut v = vec![self.firmware.sha256.as_str()];
        for l in &self.launches {
            v.push(&l.kernel.sha256);
            v.push(&l.initrd.sha256);
        }
        v
    }

    /// The newest approved launch (highest approval number).
    pub fn newest_approved(&self) -> Option<&StoredLaunch> {
        self.launches
            .iter()
            .filter(|l| l.state == LaunchState::Approved)
            .max_by_key(|l| l.approval)
    }

    /// The launch with id `launch`.
    pub fn launch(&self, launch: &str) -> Result<&StoredLaunch, ServiceError> {
        let i = self.launch_index(launch)?;
        Ok(&self.launches[i])
    }

    /// The position of launch `launch` in [`StoredRecord::launches`].
    pub fn launch_index(&self, launch: &str) -> Result<usize, ServiceError> {
        let missing = || {
            ServiceError::NotFound(format!(
                "record {} has no launch {launch:?}; see `records show`",
                self.id
            ))
        };
        let n: u32 = launch.parse().map_err(|_| missing())?;
        self.launches
            .iter()
            .position(|l| l.id == n)
            .ok_or_else(missing)
    }

    /// What a client sees. Measurement and command line are the newest
    /// approved launch's.
    pub fn info(&self) -> RecordInfo {
        let current = self.newest_approved();
        RecordInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            enabled: self.enabled,
            created: self.created.clone(),
            measurement: current.map(|l| l.measurement.clone()).unwrap_or_default(),
            policy: self.policy,
            vcpus: self.vcpus,
            vcpu_type: self.vcpu_type.clone(),
            cmdline: current.map(|l| l.cmdline.clone()).unwrap_or_default(),
            launches: self.launches.iter().map(StoredLaunch::info).collect(),
            family_id: self.family_id.clone(),
            image_id: self.image_id.clone(),
            id_key_digest: self.id_key_digest.clone(),
            author_key_digest: self.author_key_digest.clone(),
            min_tcb: self.min_tcb.map(MinTcb::from),
            allow_test_root: self.allow_test_root,
            offline_unlock: self.offline_unlock,
            attestations_ok: self.attestations_ok,
            attestations_failed: self.attestations_failed,
            last_attestation: self.last_attestation.clone(),
        }
    }
}

fn invalid(msg: String) -> ServiceError {
    ServiceError::InvalidInput(msg)
}

/// Checks a record name: `[A-Za-z0-9._-]`, 1 to [`MAX_NAME_LEN`].
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "name: must be 1 to {MAX_NAME_LEN} characters, got {}; pick a shorter --name",
            name.len()
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(format!(
            "name: {name:?} has characters other than A-Z, a-z, 0-9, '.', '_' and '-'; \
             pick another --name"
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!(
            "name: {name:?} is reserved; pick another --name"
        )));
    }
    Ok(())
}

/// Checks a vCPU count.
pub fn check_vcpus(vcpus: u32) -> Result<(), ServiceError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(invalid(format!(
            "vcpus: {vcpus} is out of range; use 1 to {MAX_VCPUS}"
        )));
    }
    Ok(())
}

/// Parses a vCPU type.
pub fn parse_vcpu_type(s: &str) -> Result<snpguard::measure::VcpuType, ServiceError> {
    if s.len() > MAX_VCPU_TYPE_LEN {
        return Err(invalid(format!(
            "vcpu_type: longer than {MAX_VCPU_TYPE_LEN} characters; use a QEMU model such as EPYC-v4"
        )));
    }
    s.parse()
        .map_err(|e: snpguard::measure::UnknownVcpuType| invalid(format!("vcpu_type: {e}")))
}

/// Checks a kernel command line: bounded, and printable text only (no
/// NUL, which would end it early in the guest, and no control character,
/// which could hide part of it from the operator who approves it).
pub fn check_cmdline(cmdline: &str) -> Result<(), ServiceError> {
    snpguard_protocol::text::check_cmdline(cmdline).map_err(|e| invalid(format!("cmdline: {e}")))
}

/// Checks a record id: the image ID in 32 lowercase hex digits.
pub fn check_id(id: &str) -> Result<(), ServiceError> {
    let ok = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "id: a record id is 32 lowercase hexadecimal digits (see `records list`)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_bits() {
        assert_eq!(guest_policy(false, false, false), 0x20000);
        assert_eq!(guest_policy(true, false, false), 0x30000);
        assert_eq!(guest_policy(false, false, true), 0x60000);
        assert_eq!(guest_policy(false, true, false), 0xa0000);
        assert_eq!(guest_policy(true, true, true), 0xf0000);
    }

    #[test]
    fn names() {
        for ok in ["a", "web-01", "A.b_c", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", "é", "..", ".", &"x".repeat(65), "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(ServiceError::InvalidInput(m)) if m.starts_with("name:")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ids() {
        check_id("0123456789abcdef0123456789abcdef").unwrap();
        for bad in [
            "",
            "0123456789ABCDEF0123456789ABCDEF",
            "xyz",
            &"a".repeat(33),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn record_version_is_checked() {
        let json = br#"{"v":1}"#;
        assert!(matches!(
            StoredRecord::from_json(json),
            Err(ServiceError::Storage(_))
        ));
    }
}
