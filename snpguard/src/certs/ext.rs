//! AMD's X.509 extensions on VCEK and VLEK certificates (AMD SEV-SNP
//! "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
//! Specification", table "VCEK/VLEK certificate extensions").

use const_oid::ObjectIdentifier;
use der::asn1::Ia5StringRef;
use der::Decode;

use super::cert::Cert;
use super::Product;

pub(crate) use super::oid::{
    BL_SPL as OID_BL_SPL, FMC_SPL as OID_FMC_SPL, HW_ID as OID_HWID,
    PRODUCT_NAME as OID_PRODUCT_NAME, SNP_SPL as OID_SNP_SPL, TEE_SPL as OID_TEE_SPL,
    UCODE_SPL as OID_UCODE_SPL,
};

/// The TCB a VCEK/VLEK was issued for (its SPL extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertTcb {
    /// Boot loader SPL (1.3.6.1.4.1.3704.1.3.1).
    pub bootloader: u8,
    /// PSP OS (TEE) SPL (1.3.6.1.4.1.3704.1.3.2).
    pub tee: u8,
    /// SNP firmware SPL (1.3.6.1.4.1.3704.1.3.3).
    pub snp: u8,
    /// Microcode SPL (1.3.6.1.4.1.3704.1.3.8).
    pub microcode: u8,
    /// FMC SPL (1.3.6.1.4.1.3704.1.3.9), Turin and later only.
    pub fmc: Option<u8>,
}

/// Why an AMD extension was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExtProblem {
    pub oid: ObjectIdentifier,
    pub problem: String,
}

fn problem(oid: ObjectIdentifier, problem: impl Into<String>) -> ExtProblem {
    ExtProblem {
        oid,
        problem: problem.into(),
    }
}

/// The raw value of the extension `oid`; duplicates are an error (RFC 5280
/// forbids them, and two differing TCB values must never be chosen from).
pub(crate) fn extension(cert: &Cert, oid: ObjectIdentifier) -> Result<Option<&[u8]>, ExtProblem> {
    let mut found = None;
    for ext in cert
        .x509()
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|e| e.extn_id == oid)
    {
        if found.is_some() {
            return Err(problem(oid, "appears twice"));
        }
        found = Some(ext.extn_value.as_bytes());
    }
    Ok(found)
}

/// The productName extension ("Milan-B0", "Genoa", ...), if present.
pub(crate) fn product_name(cert: &Cert) -> Result<Option<String>, ExtProblem> {
    let Some(raw) = extension(cert, OID_PRODUCT_NAME)? else {
        return Ok(None);
    };
    let s = Ia5StringRef::from_der(raw)
        .map_err(|e| problem(OID_PRODUCT_NAME, format!("not an IA5String: {e}")))?;
    Ok(Some(s.as_str().to_owned()))
}

/// The product named by a productName value: the part before the first
/// '-' ("Milan-B0" -> Milan).
pub(crate) fn product_from_name(name: &str) -> Option<Product> {
    let base = name.split('-').next().unwrap_or(name);
    Product::from_amd_name(base)
}

fn spl(cert: &Cert, oid: ObjectIdentifier) -> Result<Option<u8>, ExtProblem> {
    let Some(raw) = extension(cert, oid)? else {
        return Ok(None);
    };
    u8::from_der(raw)
        .map(Some)
        .map_err(|e| problem(oid, format!("not an INTEGER in 0..=255: {e}")))
}

fn required_spl(cert: &Cert, oid: ObjectIdentifier) -> Result<u8, ExtProblem> {
    spl(cert, oid)?.ok_or_else(|| problem(oid, "missing"))
}

/// The TCB extensions; FMC is required on products that have it and
/// must be absent on those that do not.
pub(crate) fn tcb(cert: &Cert, product: Product) -> Result<CertTcb, ExtProblem> {
    let fmc = spl(cert, OID_FMC_SPL)?;
    match (product.has_fmc(), fmc) {
        (true, None) => return Err(problem(OID_FMC_SPL, format!("missing on {product}"))),
        (false, Some(_)) => {
            return Err(problem(
                OID_FMC_SPL,
                format!("present, but {product} has no FMC"),
            ))
        }
        _ => {}
    }
    Ok(CertTcb {
        bootloader: required_spl(cert, OID_BL_SPL)?,
        tee: required_spl(cert, OID_TEE_SPL)?,
        snp: required_spl(cert, OID_SNP_SPL)?,
        microcode: required_spl(cert, OID_UCODE_SPL)?,
        fmc,
    })
}

/// The hwID extension: required on a VCEK with the product's length.
pub(crate) fn hwid(cert: &Cert, product: Product) -> Result<Vec<u8>, ExtProblem> {
    let raw = extension(cert, OID_HWID)?.ok_or_else(|| problem(OID_HWID, "missing"))?;
    if raw.len() != product.hwid_len() {
        return Err(problem(
            OID_HWID,
            format!(
                "{} bytes, {product} VCEKs carry {}",
                raw.len(),
                product.hwid_len()
            ),
        ));
    }
    Ok(raw.to_vec())
}
