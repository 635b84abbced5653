//! `POST /v1/renew`: a guest submits new boot artifacts with a report
//! that passes the whole verification of `/v1/attest` and whose
//! REPORT_DATA binds the nonce and the artifacts
//! ([`snpguard_protocol::attest::renewal_report_data`]). The daemon measures them
//! with the record's firmware, vCPUs and policy and stores them as a
//! *pending* launch. Nothing is released, and nothing the guest sends can
//! approve itself: an operator approves over D-Bus.

use std::io::Cursor;
use std::net::IpAddr;

use snpguard_protocol::attest::{self, unb64, RenewRequest, RenewResponse, MAX_RENEW_BODY};
use time::OffsetDateTime;

use super::{internal, protocol, Admitted, Attestor, Outcome, Refusal};
use crate::attest::AttestError;
use crate::registry::launch_origin;
use crate::service::{LaunchRequest, RecordService, ServiceError};

/// A refusal after verification whose client error names the reason
/// (the guest proved what it runs, so it may learn what to fix).
pub(super) fn told(code: &'static str, status: u16, detail: String) -> Refusal {
    Refusal {
        codes: vec![code.to_owned()],
        client: AttestError {
            code,
            status,
            message: detail.clone(),
        },
        detail,
    }
}

impl Attestor {
    pub(super) fn renew_inner(
        &self,
        req: RenewRequest,
        peer: IpAddr,
        now: OffsetDateTime,
    ) -> Result<RenewResponse, AttestError> {
        let RenewRequest {
            nonce,
            report,
            cert_table,
            kernel,
            initrd,
            cmdline,
            signed,
        } = req;
        let ev = self.decode_evidence(&nonce, &report, cert_table.as_deref(), peer)?;
        let kernel = unb64(&kernel, MAX_RENEW_BODY)
            .ok_or_else(|| protocol(peer, "bad-request", "kernel: expected standard base64"))?;
        let initrd = unb64(&initrd, MAX_RENEW_BODY)
            .ok_or_else(|| protocol(peer, "bad-request", "initrd: expected standard base64"))?;
        if let Err(e) = snpguard_protocol::text::check_cmdline(&cmdline) {
            // The detail names the offset and the escaped character only,
            // never the raw text.
            let detail = match e {
                snpguard_protocol::text::CmdlineError::TooLong { .. } => {
                    "cmdline: longer than a measured command line can be"
                }
                snpguard_protocol::text::CmdlineError::Control { .. } => {
                    "cmdline: contains a control character; a command line is printable text"
                }
            };
            return Err(protocol(peer, "bad-request", detail));
        }
        let data = attest::renewal_report_data(&ev.nonce, &kernel, &initrd, &cmdline);
        let nonce = ev.nonce;
        let Admitted {
            rec,
            mut entry,
            report_bytes,
            consumed,
            ..
        } = self.verify_enabled(ev, data, peer, now, "renewal")?;

        let launch_req = LaunchRequest {
            kernel: Box::new(Cursor::new(kernel)),
            initrd: Box::new(Cursor::new(initrd)),
            cmdline,
            origin: launch_origin::guest(peer),
        };
        let added = match self.registry.add_launch(&rec.id, launch_req) {
            Ok(added) => added,
            Err(ServiceError::TooManyPending(m)) => {
                return Err(self.refuse(entry, &consumed, told("too-many-pending", 409, m), now))
            }
            Err(ServiceError::LaunchState(m)) => {
                return Err(self.refuse(entry, &consumed, told("too-many-launches", 409, m), now))
            }
            Err(ServiceError::InvalidInput(m)) => {
                return Err(self.refuse(entry, &consumed, told("bad-artifacts", 400, m), now))
            }
            Err(ServiceError::NotFound(_)) => {
                let r = Refusal::rejected(
                    "unknown-image",
                    format!("record {} was deleted during the renewal", rec.id),
                );
                return Err(self.refuse(entry, &consumed, r, now));
            }
            Err(e) => return Err(internal("storing the renewal", e)),
        };
        let state = added
            .record
            .launches
            .iter()
            .find(|l| l.id == added.launch)
            .map_or("pending", |l| l.state.as_str());
        entry.result = "renewal-stored".into();
        entry.detail = if added.created {
            format!(
                "stored launch {} of record {} as pending, measurement {}",
                added.launch, rec.id, added.measurement
            )
        } else {
            format!(
                "the artifacts are launch {} of record {} already ({state})",
                added.launch, rec.id
            )
        };
        // The count, the nonce's outcome and the audit entry: one durable
        // transaction (the launch itself was committed by add_launch).
        self.settle(&entry, &consumed, Outcome::Renewed, now)
            .map_err(|e| internal("recording the renewal in the audit trail", e))?;
        tracing::info!(
            RECORD = %rec.id,
            NAME = %rec.name,
            LAUNCH = %added.launch,
            LAUNCH_STATE = state,
            NEW_MEASUREMENT = %added.measurement,
            PEER = %entry.peer,
            MEASUREMENT = entry.measurement.as_deref().unwrap_or("-"),
            "renewal: {}; approve with snpguardctl records approve {} --launch {}",
            entry.detail,
            rec.id,
            added.launch
        );
        let mut resp = RenewResponse {
            record: rec.id,
            launch: added.launch,
            measurement: added.measurement,
            signature: None,
        };
        if signed {
            let message = attest::renewal_message(&nonce, &report_bytes, &resp);
            resp.signature = Some(attest::sign_message(
                self.registry.keys().author(),
                &message,
            ));
        }
        Ok(resp)
    }
}
