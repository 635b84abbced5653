//! The release decision: whether a verified report gets the record's key
//! now. One decision under the commit lock (the lock every enable,
//! disable, approve, retire, discard and delete takes): the record is
//! enabled, the launch with the report's measurement is approved, and the
//! VMK is unsealed, sealed to the client and the success counted, all
//! against the same state. A launch retired or a record disabled while the
//! attestation waited (on KDS, say) releases nothing.
//!
//! Every decision an attestation reaches on a record (a release, a refusal
//! after verification, a stored renewal) is one durable transaction with
//! the caller's companion writes: the nonce's final state and the audit
//! entry. So a crash leaves either all of them or none, and a key leaves
//! only after its release, its count and its audit entry are on disk.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::record::{self, StoredRecord};
use super::{secret_key, secrets_err, store_err, Registry};
use crate::secrets::Purpose;
use crate::service::{LaunchState, RecordInfo, ServiceError};
use crate::store::{Op, StoreError, Tree, CONFLICT_RETRIES};

/// Why a verified report gets no key at release time.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseRefusal {
    /// The record is disabled.
    #[error("record {0} is disabled; enable it to release its key")]
    Disabled(String),
    /// The record was deleted.
    #[error("record {0} was deleted during the attestation")]
    Deleted(String),
    /// The launch with the report's measurement is not approved (any
    /// more).
    #[error("the measurement is launch {launch} of record {id}, which is {state} now")]
    LaunchNotApproved {
        /// Record id.
        id: String,
        /// Launch id.
        launch: String,
        /// Its state at release time.
        state: LaunchState,
    },
    /// No launch of the record has the report's measurement (any more).
    #[error("no launch of record {id} has measurement {measurement} now")]
    NoSuchLaunch {
        /// Record id.
        id: String,
        /// The report's measurement (hex).
        measurement: String,
    },
    /// Storage or unsealing failed: not a decision, an internal error.
    #[error(transparent)]
    Failed(ServiceError),
}

impl ReleaseRefusal {
    /// The reason code of a decision (`None` for [`ReleaseRefusal::Failed`]).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ReleaseRefusal::Disabled(_) => Some("record-disabled"),
            ReleaseRefusal::Deleted(_) => Some("unknown-image"),
            ReleaseRefusal::LaunchNotApproved { state, .. } => Some(match state {
                LaunchState::Pending => "launch-pending",
                // Approved never gets here; retired is the only other.
                LaunchState::Retired | LaunchState::Approved => "launch-retired",
            }),
            ReleaseRefusal::NoSuchLaunch { .. } => Some("measurement-mismatch"),
            ReleaseRefusal::Failed(_) => None,
        }
    }
}

/// A release granted: the VMK sealed by the caller and the record with
/// the success counted. The VMK itself never leaves the registry.
pub struct Release<T> {
    /// What the caller's `seal` made of the VMK.
    pub sealed: T,
    /// The record afterwards.
    pub record: RecordInfo,
}

impl<T> std::fmt::Debug for Release<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("record", &self.record.id)
            .finish_non_exhaustive()
    }
}

/// The writes a caller commits in the same transaction as an attestation's
/// decision on a record: the nonce's final state and the audit entry. Built
/// afresh for every attempt, since a conflict with another writer starts
/// the decision again on what is stored then; `true` on the first attempt.
pub type Companion<'a> = dyn FnMut(bool) -> Result<Vec<Op>, ServiceError> + 'a;

impl Registry {
    /// Decides the release of record `id`'s VMK to a verified report with
    /// launch digest `measurement` (hex) at `at`, under the commit lock:
    /// the record exists and is enabled, and its launch with that
    /// measurement is approved. On success the VMK is unsealed and handed
    /// to `seal` (which binds it to the client's key), and the success is
    /// counted in one transaction with the `companion`'s writes. That
    /// transaction is durable before this returns: the caller may let the
    /// sealed key leave as soon as it has it, never before.
    pub fn release<T>(
        &self,
        id: &str,
        measurement: &str,
        at: OffsetDateTime,
        mut seal: impl FnMut(&[u8]) -> Result<T, ServiceError>,
        companion: &mut Companion<'_>,
    ) -> Result<Release<T>, ReleaseRefusal> {
        record::check_id(id).map_err(ReleaseRefusal::Failed)?;
        let at = at
            .format(&Rfc3339)
            .map_err(|e| ReleaseRefusal::Failed(ServiceError::InvalidInput(format!("at: {e}"))))?;
        let released = {
            let _guard = self.lock_commit();
            let mut attempt = 0;
            loop {
                let bytes = self
                    .store
                    .get(Tree::Records, id.as_bytes())
                    .map_err(|e| ReleaseRefusal::Failed(store_err(e)))?
                    .ok_or_else(|| ReleaseRefusal::Deleted(id.to_owned()))?;
                let mut rec = StoredRecord::from_json(&bytes).map_err(ReleaseRefusal::Failed)?;
                if !rec.enabled {
                    return Err(ReleaseRefusal::Disabled(id.to_owned()));
                }
                let launch = rec
                    .launches
                    .iter()
                    .find(|l| l.measurement == measurement)
                    .ok_or_else(|| ReleaseRefusal::NoSuchLaunch {
                        id: id.to_owned(),
                        measurement: measurement.to_owned(),
                    })?;
                if launch.state != LaunchState::Approved {
                    return Err(ReleaseRefusal::LaunchNotApproved {
                        id: id.to_owned(),
                        launch: launch.id.to_string(),
                        state: launch.state,
                    });
                }
                let stored = self
                    .store
                    .get(Tree::Secrets, &secret_key(Purpose::Vmk, id))
                    .map_err(|e| ReleaseRefusal::Failed(store_err(e)))?
                    .ok_or_else(|| {
                        ReleaseRefusal::Failed(ServiceError::Storage(format!(
                            "record {id} has no sealed VMK"
                        )))
                    })?;
                let sealed = {
                    let vmk: Zeroizing<Vec<u8>> = self
                        .master
                        .unseal(Purpose::Vmk, id, &stored)
                        .map_err(|e| ReleaseRefusal::Failed(secrets_err(e)))?;
                    seal(&vmk).map_err(ReleaseRefusal::Failed)?
                };
                rec.attestations_ok = rec.attestations_ok.saturating_add(1);
                rec.last_attestation = Some(at.clone());
                let mut ops = vec![
                    // The VMK released is the one read: a record deleted
                    // and its secret replaced meanwhile conflicts.
                    Op::expect(Tree::Secrets, secret_key(Purpose::Vmk, id), Some(stored)),
                    Op::expect(Tree::Records, id, Some(bytes.clone())),
                    Op::put(
                        Tree::Records,
                        id,
                        rec.to_json().map_err(ReleaseRefusal::Failed)?,
                    ),
                ];
                ops.extend(companion(attempt == 0).map_err(ReleaseRefusal::Failed)?);
                match self.apply_decision(&ops) {
                    Ok(()) => {}
                    // Another daemon on the same database counted an
                    // attestation (or changed the record) meanwhile:
                    // decide again on what is stored now.
                    Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(ReleaseRefusal::Failed(store_err(e))),
                }
                break Release {
                    sealed,
                    record: rec.info(),
                };
            }
        };
        self.finish_decision()
            .map_err(|e| ReleaseRefusal::Failed(store_err(e)))?;
        Ok(released)
    }

    /// Counts an attestation of record `id` at `at` that released nothing
    /// (a refusal after verification, `ok == false`) or stored a renewal
    /// (`ok == true`), in one transaction with the `companion`'s writes,
    /// durable before this returns. A record deleted meanwhile has nothing
    /// to count: the companion's writes are committed alone and `None` is
    /// returned.
    pub fn settle_attestation(
        &self,
        id: &str,
        ok: bool,
        at: OffsetDateTime,
        companion: &mut Companion<'_>,
    ) -> Result<Option<RecordInfo>, ServiceError> {
        record::check_id(id)?;
        let at = at
            .format(&Rfc3339)
            .map_err(|e| ServiceError::InvalidInput(format!("at: {e}")))?;
        let info = {
            let _guard = self.lock_commit();
            let mut attempt = 0;
            loop {
                let raw = self
                    .store
                    .get(Tree::Records, id.as_bytes())
                    .map_err(store_err)?;
                let mut ops = vec![Op::expect(Tree::Records, id, raw.clone())];
                let info = match &raw {
                    Some(bytes) => {
                        let mut rec = StoredRecord::from_json(bytes)?;
                        if ok {
                            rec.attestations_ok = rec.attestations_ok.saturating_add(1);
                        } else {
                            rec.attestations_failed = rec.attestations_failed.saturating_add(1);
                        }
                        rec.last_attestation = Some(at.clone());
                        ops.push(Op::put(Tree::Records, id, rec.to_json()?));
                        Some(rec.info())
                    }
                    None => None,
                };
                ops.extend(companion(attempt == 0)?);
                match self.apply_decision(&ops) {
                    Ok(()) => break info,
                    Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => attempt += 1,
                    Err(e) => return Err(store_err(e)),
                }
            }
        };
        self.finish_decision().map_err(store_err)?;
        Ok(info)
    }

    /// Applies a decision's writes under the commit lock: visible at once,
    /// durable once [`Self::finish_decision`] returns. Where concurrent
    /// flushes share one disk sync (sled), the sync happens after the lock
    /// is released, so concurrent attestations share it; elsewhere the
    /// transaction is durable by itself (one round trip).
    fn apply_decision(&self, ops: &[Op]) -> Result<(), StoreError> {
        if self.store.flush_is_grouped() {
            self.store.transaction_deferred(ops)
        } else {
            self.store.transaction(ops)
        }
    }

    /// Makes the decisions applied by [`Self::apply_decision`] durable;
    /// call it after releasing the commit lock.
    fn finish_decision(&self) -> Result<(), StoreError> {
        if self.store.flush_is_grouped() {
            self.store.flush()
        } else {
            Ok(())
        }
    }
}
