//! The launches of a record as stored, and their state transitions:
//! added pending (by an operator or an attested guest), approved by an
//! operator (who signs its ID block), retired when superseded, discarded
//! when unwanted. The transitions are pure functions of a
//! [`StoredRecord`]; the registry does the I/O around them.

use serde::{Deserialize, Serialize};
use snpguard_protocol::attest::MAX_PENDING_LAUNCHES;

use super::blobs::BlobRef;
use super::record::StoredRecord;
use crate::service::{LaunchInfo, LaunchState, ServiceError};

/// Most launches (of any state) a record keeps; retired ones can be
/// discarded to make room.
pub const MAX_LAUNCHES: usize = 16;

/// Origin of the launch a registration creates.
pub const ORIGIN_REGISTRATION: &str = "registration";
/// Origin of a launch an operator adds over D-Bus.
pub const ORIGIN_OPERATOR: &str = "operator";

/// One launch of a record: the artifacts that change with a kernel
/// update, their measurement and, once approved, the signed ID block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLaunch {
    /// Unique within the record, never reused.
    pub id: u32,
    pub state: LaunchState,
    /// Launch digest, 96 lowercase hex digits.
    pub measurement: String,
    pub kernel: BlobRef,
    pub initrd: BlobRef,
    pub cmdline: String,
    /// ID block, hex; present once the launch was approved.
    pub id_block: Option<String>,
    /// ID authentication information, hex; with `id_block`.
    pub id_auth: Option<String>,
    pub created: String,
    pub approved: Option<String>,
    pub retired: Option<String>,
    /// `registration`, `operator` or `guest <peer address>`.
    pub origin: String,
    /// Approval number (see [`StoredRecord::next_approval`]).
    pub approval: Option<u64>,
}

impl StoredLaunch {
    /// What a client sees.
    pub fn info(&self) -> LaunchInfo {
        LaunchInfo {
            id: self.id.to_string(),
            state: self.state,
            measurement: self.measurement.clone(),
            cmdline: self.cmdline.clone(),
            created: self.created.clone(),
            approved: self.approved.clone(),
            retired: self.retired.clone(),
            origin: self.origin.clone(),
            kernel_sha256: self.kernel.sha256.clone(),
            initrd_sha256: self.initrd.sha256.clone(),
        }
    }
}

/// A measured launch about to be added.
#[derive(Debug, Clone)]
pub struct NewLaunch {
    pub measurement: String,
    pub kernel: BlobRef,
    pub initrd: BlobRef,
    pub cmdline: String,
    pub origin: String,
}

/// Adds `new` as a pending launch at time `now`; returns its id and
/// whether it was added. A launch with the same measurement (in any
/// state) is returned instead: the same boot artifacts are one launch.
pub fn add_pending(
    rec: &mut StoredRecord,
    new: NewLaunch,
    now: &str,
) -> Result<(u32, bool), ServiceError> {
    if let Some(l) = rec
        .launches
        .iter()
        .find(|l| l.measurement == new.measurement)
    {
        return Ok((l.id, false));
    }
    let pending: Vec<String> = rec
        .launches
        .iter()
        .filter(|l| l.state == LaunchState::Pending)
        .map(|l| l.id.to_string())
        .collect();
    if pending.len() >= MAX_PENDING_LAUNCHES {
        return Err(ServiceError::TooManyPending(format!(
            "record {} already has {} pending launches ({}); approve or discard one first",
            rec.id,
            pending.len(),
            pending.join(", ")
        )));
    }
    if rec.launches.len() >= MAX_LAUNCHES {
        return Err(ServiceError::LaunchState(format!(
            "record {} has {MAX_LAUNCHES} launches; discard retired ones first",
            rec.id
        )));
    }
    let id = rec.next_launch;
    rec.next_launch = id.checked_add(1).ok_or_else(|| {
        ServiceError::Storage(format!("record {}: launch ids are exhausted", rec.id))
    })?;
    rec.launches.push(StoredLaunch {
        id,
        state: LaunchState::Pending,
        measurement: new.measurement,
        kernel: new.kernel,
        initrd: new.initrd,
        cmdline: new.cmdline,
        id_block: None,
        id_auth: None,
        created: now.to_owned(),
        approved: None,
        retired: None,
        origin: new.origin,
        approval: None,
    });
    Ok((id, true))
}

/// Checks that launch `launch` may be approved: pending, or retired (a
/// rollback). Returns its index.
pub fn check_approvable(rec: &StoredRecord, launch: &str) -> Result<usize, ServiceError> {
    let i = rec.launch_index(launch)?;
    if rec.launches[i].state == LaunchState::Approved {
        return Err(ServiceError::LaunchState(format!(
            "launch {launch} of record {} is already approved",
            rec.id
        )));
    }
    Ok(i)
}

/// Approves the launch at index `i` with its signed ID block and auth
/// (hex), making it the newest approved launch.
pub fn approve(rec: &mut StoredRecord, i: usize, id_block: String, id_auth: String, now: &str) {
    let approval = rec.next_approval;
    rec.next_approval = approval.saturating_add(1);
    let l = &mut rec.launches[i];
    l.state = LaunchState::Approved;
    l.id_block = Some(id_block);
    l.id_auth = Some(id_auth);
    l.approved = Some(now.to_owned());
    l.retired = None;
    l.approval = Some(approval);
}

/// Retires an approved launch; the record keeps at least one approved.
pub fn retire(rec: &mut StoredRecord, launch: &str, now: &str) -> Result<(), ServiceError> {
    let i = rec.launch_index(launch)?;
    if rec.launches[i].state != LaunchState::Approved {
        return Err(ServiceError::LaunchState(format!(
            "launch {launch} of record {} is {}; only an approved launch can be retired \
             (discard a pending one)",
            rec.id, rec.launches[i].state
        )));
    }
    let approved = rec
        .launches
        .iter()
        .filter(|l| l.state == LaunchState::Approved)
        .count();
    if approved <= 1 {
        return Err(ServiceError::LastApprovedLaunch(format!(
            "launch {launch} is the only approved launch of record {}; approve its successor \
             first (or disable the record)",
            rec.id
        )));
    }
    let l = &mut rec.launches[i];
    l.state = LaunchState::Retired;
    l.retired = Some(now.to_owned());
    Ok(())
}

/// Removes a pending or retired launch.
pub fn discard(rec: &mut StoredRecord, launch: &str) -> Result<(), ServiceError> {
    let i = rec.launch_index(launch)?;
    if rec.launches[i].state == LaunchState::Approved {
        return Err(ServiceError::LaunchState(format!(
            "launch {launch} of record {} is approved; retire it before discarding it",
            rec.id
        )));
    }
    rec.launches.remove(i);
    Ok(())
}
