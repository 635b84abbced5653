//! One X.509 certificate: its DER bytes and the parsed structure, decoded
//! once at the edge.

use der::{Decode, Encode, Reader, SliceReader, Tagged};
use sha2::{Digest, Sha256};
use x509_cert::name::Name;
use x509_cert::Certificate;

use super::CertError;

/// Largest certificate accepted (AMD's are ~1.4-2.3 KiB).
pub const CERT_MAX_SIZE: usize = 64 * 1024;

/// A parsed X.509 certificate with its exact DER encoding.
#[derive(Clone)]
pub struct Cert {
    der: Vec<u8>,
    x509: Certificate,
    /// Byte range of the TBSCertificate inside `der` (what was signed).
    tbs: std::ops::Range<usize>,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject_cn())
            .field("issuer", &self.issuer_cn())
            .field("sha256", &hex::encode(self.fingerprint()))
            .finish()
    }
}

impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Cert {}

impl Cert {
    /// Parses one certificate, DER or a single PEM `CERTIFICATE` block.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Cert, CertError> {
        Self::parse(bytes, "certificate")
    }

    /// As [`Cert::from_pem_or_der`], naming the input in errors.
    pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Cert, CertError> {
        if bytes.len() > CERT_MAX_SIZE {
            return Err(CertError::TooLarge {
                what: what.to_owned(),
                size: bytes.len(),
                limit: CERT_MAX_SIZE,
            });
        }
        if looks_like_pem(bytes) {
            let (label, der) = der::pem::decode_vec(bytes).map_err(|e| malformed(what, e))?;
            if label != "CERTIFICATE" {
                return Err(CertError::Malformed {
                    what: what.to_owned(),
                    reason: format!("PEM label {label:?}, expected CERTIFICATE"),
                });
            }
            Self::from_der_vec(der, what)
        } else {
            Self::from_der_vec(bytes.to_vec(), what)
        }
    }

    /// Parses every `CERTIFICATE` block of a PEM bundle (or one DER
    /// certificate).
    pub(crate) fn parse_many(bytes: &[u8], what: &str) -> Result<Vec<Cert>, CertError> {
        if !looks_like_pem(bytes) {
            return Ok(vec![Self::parse(bytes, what)?]);
        }
        let text = std::str::from_utf8(bytes).map_err(|e| malformed(what, e))?;
        let mut certs = Vec::new();
        let mut rest = text;
        const BEGIN: &str = "-----BEGIN ";
        while let Some(start) = rest.find(BEGIN) {
            let block = &rest[start..];
            let end_marker = "-----END ";
            let Some(end) = block.find(end_marker) else {
                return Err(CertError::Malformed {
                    what: what.to_owned(),
                    reason: "PEM block without END line".to_owned(),
                });
            };
            let after_end = &block[end + end_marker.len()..];
            let Some(close) = after_end.find("-----") else {
                return Err(CertError::Malformed {
                    what: what.to_owned(),
                    reason: "PEM END line not terminated".to_owned(),
                });
            };
            let len = end + end_marker.len() + close + 5;
            certs.push(Self::parse(&block.as_bytes()[..len], what)?);
            if certs.len() > 8 {
                return Err(CertError::Malformed {
                    what: what.to_owned(),
                    reason: "more than 8 certificates".to_owned(),
                });
            }
            rest = &block[len..];
        }
        if certs.is_empty() {
            return Err(CertError::Malformed {
                what: what.to_owned(),
                reason: "no PEM block".to_owned(),
            });
        }
        Ok(certs)
    }

    fn from_der_vec(der: Vec<u8>, what: &str) -> Result<Cert, CertError> {
        let x509 = Certificate::from_der(&der).map_err(|e| malformed(what, e))?;
        let tbs = tbs_range(&der).map_err(|e| malformed(what, e))?;
        Ok(Cert { der, x509, tbs })
    }

    /// The DER encoding, exactly as received.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The parsed certificate.
    pub fn x509(&self) -> &Certificate {
        &self.x509
    }

    /// The signed part (TBSCertificate), exactly as received.
    pub(crate) fn tbs_der(&self) -> &[u8] {
        &self.der[self.tbs.clone()]
    }

    /// SHA-256 of the DER encoding.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// The subject's common name, if any.
    pub fn subject_cn(&self) -> Option<String> {
        common_name(&self.x509.tbs_certificate.subject)
    }

    /// The issuer's common name, if any.
    pub fn issuer_cn(&self) -> Option<String> {
        common_name(&self.x509.tbs_certificate.issuer)
    }

    /// The role AMD's names give this certificate, from its subject CN:
    /// `ARK-<product>`, `SEV-<product>` (ASK), `SEV-VLEK-<product>`
    /// (ASVK), `SEV-VCEK`, `SEV-VLEK`. A claim only: the chain check
    /// decides whether it holds.
    pub fn named_role(&self) -> Option<super::CertRole> {
        use super::CertRole;
        let cn = self.subject_cn()?;
        Some(match cn.as_str() {
            "SEV-VCEK" => CertRole::Vcek,
            "SEV-VLEK" => CertRole::Vlek,
            s if s.starts_with("ARK-") => CertRole::Ark,
            s if s.starts_with("SEV-VLEK-") => CertRole::Asvk,
            s if s.starts_with("SEV-") => CertRole::Ask,
            _ => return None,
        })
    }

    /// The product an endorsement certificate (VCEK, VLEK) claims: its
    /// productName extension ("Milan-B0" -> Milan), else its issuer's
    /// name (`SEV-Milan`, `SEV-VLEK-Milan`). Used to pick the
    /// intermediate; the chain check decides whether the claim holds.
    pub fn claimed_product(&self) -> Option<super::Product> {
        if let Ok(Some(name)) = super::ext::product_name(self) {
            return super::ext::product_from_name(&name);
        }
        let issuer = self.issuer_cn()?;
        let base = issuer
            .strip_prefix("SEV-VLEK-")
            .or_else(|| issuer.strip_prefix("SEV-"))?;
        super::ext::product_from_name(base)
    }

    /// The serial number's bytes.
    pub fn serial(&self) -> &[u8] {
        self.x509.tbs_certificate.serial_number.as_bytes()
    }

    /// Whether this certificate's issuer name is exactly `parent`'s subject
    /// name (compared by DER encoding).
    pub(crate) fn issued_by_name(&self, parent: &Cert) -> bool {
        names_equal(
            &self.x509.tbs_certificate.issuer,
            &parent.x509.tbs_certificate.subject,
        )
    }
}

pub(crate) fn names_equal(a: &Name, b: &Name) -> bool {
    match (a.to_der(), b.to_der()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_start();
    trimmed.starts_with(b"-----BEGIN ")
}

fn malformed(what: &str, e: impl std::fmt::Display) -> CertError {
    CertError::Malformed {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// The byte range of the first element (the TBS part) inside the outer
/// SEQUENCE of a certificate or CRL.
pub(crate) fn tbs_range(der: &[u8]) -> der::Result<std::ops::Range<usize>> {
    let mut reader = SliceReader::new(der)?;
    let _outer = der::Header::decode(&mut reader)?;
    let start = usize::try_from(reader.position())?;
    let tbs = reader.tlv_bytes()?;
    Ok(start..start + tbs.len())
}

/// The first common name of a distinguished name, as text.
pub(crate) fn common_name(name: &Name) -> Option<String> {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let text_tag = matches!(
                atv.value.tag(),
                der::Tag::Utf8String | der::Tag::PrintableString | der::Tag::Ia5String
            );
            if atv.oid == const_oid::db::rfc4519::CN && text_tag {
                return std::str::from_utf8(atv.value.value())
                    .ok()
                    .map(str::to_owned);
            }
        }
    }
    None
}
