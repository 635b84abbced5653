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

/// Checks the CRL is the ARK's, correctly signed, and does not list the
/// intermediate's serial number.
pub(crate) fn check(
    crl: &[u8],
    ark: &Cert,
    intermediate: &Cert,
    role: CertRole,
) -> Result<(), ChainError> {
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
    Ok(())
}
