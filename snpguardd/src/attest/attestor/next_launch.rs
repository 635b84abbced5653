//! `POST /v1/signed-launch`: a running guest asks for the signed parts of
//! another launch of its record (the launch its renewal created, once an
//! operator approved it) to write its own next launch into its
//! LAUNCH_ARTIFACTS partition. The report passes the whole verification
//! of `/v1/attest` (an approved launch of an enabled record) and its
//! REPORT_DATA binds the nonce and the launch id
//! ([`snpguard_protocol::attest::signed_launch_report_data`]). The answer
//! is public material (what the launch's bundle holds besides the
//! firmware, kernel, initrd and command line, which the guest has), signed
//! by the author key the guest's own report names. Nothing is released.

use std::net::IpAddr;

use snpguard_protocol::attest::{
    self, b64, is_launch_id, SignedLaunchRequest, SignedLaunchResponse,
};
use time::OffsetDateTime;

use super::renew::told;
use super::{internal, protocol, Admitted, Attestor, Outcome};
use crate::attest::AttestError;
use crate::registry::SignedLaunch;
use crate::service::{LaunchState, ServiceError};

impl Attestor {
    pub(super) fn signed_launch_inner(
        &self,
        req: SignedLaunchRequest,
        peer: IpAddr,
        now: OffsetDateTime,
    ) -> Result<SignedLaunchResponse, AttestError> {
        let SignedLaunchRequest {
            nonce,
            report,
            cert_table,
            launch,
            signed,
        } = req;
        let ev = self.decode_evidence(&nonce, &report, cert_table.as_deref(), peer)?;
        if !is_launch_id(&launch) {
            return Err(protocol(
                peer,
                "bad-request",
                "launch: expected a launch id (a decimal number, as /v1/renew returns it)",
            ));
        }
        let data = attest::signed_launch_report_data(&ev.nonce, &launch);
        let nonce = ev.nonce;
        let Admitted {
            rec,
            mut entry,
            report_bytes,
            consumed,
            ..
        } = self.verify_enabled(ev, data, peer, now, "signed-launch")?;
        // The launch's state as verified; the registry checks it again
        // where it reads the signed parts.
        let refusal = match rec.launches.iter().find(|l| l.id == launch) {
            None => Some(told(
                "unknown-launch",
                404,
                format!("record {} has no launch {launch}", rec.id),
            )),
            Some(l) => match l.state {
                LaunchState::Approved => None,
                LaunchState::Pending => Some(told(
                    "launch-pending",
                    409,
                    format!(
                        "launch {launch} of record {} is pending approval; ask again once \
                         an operator has approved it",
                        rec.id
                    ),
                )),
                LaunchState::Retired => Some(told(
                    "launch-retired",
                    409,
                    format!("launch {launch} of record {} is retired", rec.id),
                )),
            },
        };
        if let Some(r) = refusal {
            return Err(self.refuse(entry, &consumed, r, now));
        }
        let SignedLaunch {
            config,
            id_block,
            id_auth,
        } = match self.registry.signed_launch(&rec.id, &launch) {
            Ok(parts) => parts,
            // Changed since the verification (retired, or the record
            // deleted): refused as the guest would be now.
            Err(e @ (ServiceError::NotFound(_) | ServiceError::LaunchState(_))) => {
                let r = told("launch-changed", 409, e.to_string());
                return Err(self.refuse(entry, &consumed, r, now));
            }
            Err(e) => return Err(internal("reading the signed launch", e)),
        };
        let config_json = snpguard_protocol::bundle::config_json(&config)
            .map_err(|e| internal("encoding the launch configuration", e))?;
        let config_json = String::from_utf8(config_json)
            .map_err(|e| internal("encoding the launch configuration", e))?;
        entry.result = "signed-launch-sent".into();
        entry.detail = format!(
            "sent the signed launch {launch} of record {} (measurement {})",
            rec.id, config.measurement
        );
        // Counted as a verified attestation, with the nonce's outcome and
        // the audit entry in one durable transaction.
        self.settle(&entry, &consumed, Outcome::LaunchSent, now)
            .map_err(|e| internal("recording the signed launch in the audit trail", e))?;
        tracing::info!(
            RECORD = %rec.id,
            NAME = %rec.name,
            LAUNCH = %launch,
            NEXT_MEASUREMENT = %config.measurement,
            PEER = %entry.peer,
            MEASUREMENT = entry.measurement.as_deref().unwrap_or("-"),
            "signed launch: {}",
            entry.detail
        );
        let mut resp = SignedLaunchResponse {
            record: rec.id,
            launch,
            launch_config: config_json,
            id_block: b64(&id_block),
            id_auth: b64(&id_auth),
            signature: None,
        };
        if signed {
            let message = attest::signed_launch_message(
                &nonce,
                &report_bytes,
                &resp.record,
                &resp.launch,
                &resp.launch_config,
                &id_block,
                &id_auth,
            );
            resp.signature = Some(attest::sign_message(
                self.registry.keys().author(),
                &message,
            ));
        }
        Ok(resp)
    }
}
