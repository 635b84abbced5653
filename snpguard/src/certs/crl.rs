//! The ARK's certificate revocation list (AMD KDS `/vcek/v1/{product}/crl`,
//! or the CRL entry of a certificate table): it revokes ASKs and ASVKs.

use der::Decode;
use x509_cert::crl::CertificateList;

use super::cert::{names_equal, tbs_range, Cert};
use super::chain::{CertRole, ChainError};
use super::set::CRL_MAX_SIZE;
use super::sig::{verify_pss, SigProblem};

fn malformed(reason: impl std::fmt::Display) -> ChainError {
    ChainError::CrlMalformed {
        reason: reason.to_string(),
    }
}

/// When a CRL is current: unix seconds of thisUpdate and nextUpdate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CrlWindow {
    this_update: i64,
    next_update: Option<i64>,
}

impl CrlWindow {
    /// A CRL is only evidence of non-revocation while it is current: an
    /// old CRL signed before a revocation must not pass.
    pub(crate) fn check(&self, at: time::OffsetDateTime) -> Result<(), ChainError> {
        let now = at.unix_timestamp();
        let stale = now < self.this_update || self.next_update.is_some_and(|n| now > n);
        if stale {
            let dt = |s: i64| {
                time::OffsetDateTime::from_unix_timestamp(s)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
            };
            return Err(ChainError::CrlNotCurrent {
                this_update: dt(self.this_update),
                next_update: self.next_update.map(dt),
                at,
            });
        }
        Ok(())
    }
}

fn unix(t: x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// Checks the CRL is the ARK's, correctly signed, and does not list the
/// intermediate's serial number; returns when it is current, which the
/// caller checks at the verification time.
pub(crate) fn check(
    crl: &[u8],
    ark: &Cert,
    intermediate: &Cert,
    role: CertRole,
) -> Result<CrlWindow, ChainError> {
    if crl.len() > CRL_MAX_SIZE {
        return Err(malformed(format!(
            "{} bytes exceeds {CRL_MAX_SIZE}",
            crl.len()
        )));
    }
    let der = if crl.trim_ascii_start().starts_with(b"-----BEGIN ") {
        let (label, der) = der::pem::decode_vec(crl).map_err(malformed)?;
        if label != "X509 CRL" {
            return Err(malformed(format!("PEM label {label:?}, expected X509 CRL")));
        }
        der
    } else {
        crl.to_vec()
    };
    let list = CertificateList::from_der(&der).map_err(malformed)?;
    let tbs = tbs_range(&der).map_err(malformed)?;
    let tbs_list = &list.tbs_cert_list;
    if !names_equal(&tbs_list.issuer, &ark.x509().tbs_certificate.subject) {
        return Err(ChainError::CrlIssuer {
            issuer: super::cert::common_name(&tbs_list.issuer).unwrap_or_default(),
        });
    }
    verify_pss(
        ark,
        &der[tbs],
        &list.signature_algorithm,
        &tbs_list.signature,
        &list.signature,
    )
    .map_err(|p| ChainError::CrlSignature {
        reason: match p {
            SigProblem::Algorithm(r) | SigProblem::IssuerKey(r) => r,
            SigProblem::Invalid => "signature does not verify with the ARK".to_owned(),
        },
    })?;
    let serial = intermediate.serial();
    let revoked = tbs_list
        .revoked_certificates
        .iter()
        .flatten()
        .any(|r| r.serial_number.as_bytes() == serial);
    if revoked {
        return Err(ChainError::Revoked {
            role,
            serial: hex::encode(serial),
        });
    }
    Ok(CrlWindow {
        this_update: unix(tbs_list.this_update),
        next_update: tbs_list.next_update.map(unix),
    })
}
