//! The release decision: whether a verified report gets the record's key
//! now. One decision under the commit lock (the lock every enable,
//! disable, approve, retire, discard and delete takes): the record is
//! enabled, the launch with the report's measurement is approved, and the
//! VMK is unsealed and the success counted, all against the same state. A
//! launch retired or a record disabled while the attestation waited (on
//! KDS, say) releases nothing.

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

/// A release granted: the VMK and the record with the success counted.
pub struct Release {
    /// The record's VMK.
    pub vmk: Zeroizing<Vec<u8>>,
    /// The record afterwards.
    pub record: RecordInfo,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("record", &self.record.id)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Decides the release of record `id`'s VMK to a verified report with
    /// launch digest `measurement` (hex) at `at`, under the commit lock:
    /// the record exists and is enabled, and its launch with that
    /// measurement is approved. On success the VMK is unsealed and the
    /// success counted (deferred, like every counter) before the lock is
    /// released.
    pub fn release(
        &self,
        id: &str,
        measurement: &str,
        at: OffsetDateTime,
    ) -> Result<Release, ReleaseRefusal> {
        record::check_id(id).map_err(ReleaseRefusal::Failed)?;
        let at = at
            .format(&Rfc3339)
            .map_err(|e| ReleaseRefusal::Failed(ServiceError::InvalidInput(format!("at: {e}"))))?;
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
            let sealed = self
                .store
                .get(Tree::Secrets, &secret_key(Purpose::Vmk, id))
                .map_err(|e| ReleaseRefusal::Failed(store_err(e)))?
                .ok_or_else(|| {
                    ReleaseRefusal::Failed(ServiceError::Storage(format!(
                        "record {id} has no sealed VMK"
                    )))
                })?;
            let vmk = self
                .master
                .unseal(Purpose::Vmk, id, &sealed)
                .map_err(|e| ReleaseRefusal::Failed(secrets_err(e)))?;
            rec.attestations_ok = rec.attestations_ok.saturating_add(1);
            rec.last_attestation = Some(at.clone());
            let ops = [
                Op::expect(Tree::Records, id, Some(bytes.clone())),
                Op::put(
                    Tree::Records,
                    id,
                    rec.to_json().map_err(ReleaseRefusal::Failed)?,
                ),
            ];
            match self.store.transaction_deferred(&ops) {
                Ok(()) => {}
                // Another daemon on the same database counted an attestation
                // (or changed the record) meanwhile: decide again on what is
                // stored now.
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(ReleaseRefusal::Failed(store_err(e))),
            }
            return Ok(Release {
                vmk,
                record: rec.info(),
            });
        }
    }
}
