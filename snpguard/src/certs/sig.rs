//! RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt: the only
//! signature AMD's ARK, ASK and ASVK make, and the only one accepted.

use const_oid::db::rfc5912::{ID_MGF_1, ID_RSASSA_PSS, ID_SHA_384, RSA_ENCRYPTION};
use der::asn1::BitString;
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPssParams, TrailerField};
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use sha2::Sha384;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::cert::Cert;

/// Salt length AMD uses (the SHA-384 output size).
pub(crate) const PSS_SALT_LEN: u8 = 48;
/// Smallest RSA modulus accepted for an issuer (AMD's are 4096 bits).
const MIN_RSA_BITS: usize = 2048;

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SigProblem {
    /// Not RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48, or the inner and outer
    /// algorithm identifiers differ.
    Algorithm(String),
    /// The issuer's public key is not a usable RSA key.
    IssuerKey(String),
    /// The signature does not verify.
    Invalid,
}

fn null_or_absent(params: Option<&der::asn1::AnyRef<'_>>) -> bool {
    params.is_none_or(|p| p.is_null())
}

/// Checks an AlgorithmIdentifier is exactly AMD's RSASSA-PSS profile.
pub(crate) fn check_pss_algorithm(alg: &AlgorithmIdentifierOwned) -> Result<(), String> {
    if alg.oid != ID_RSASSA_PSS {
        return Err(format!("algorithm {} is not RSASSA-PSS", alg.oid));
    }
    let params = alg
        .parameters
        .as_ref()
        .ok_or("RSASSA-PSS without parameters (would mean SHA-1)")?;
    let params: RsaPssParams<'_> = params
        .decode_as()
        .map_err(|e| format!("malformed RSASSA-PSS parameters: {e}"))?;
    if params.hash.oid != ID_SHA_384 || !null_or_absent(params.hash.parameters.as_ref()) {
        return Err(format!("hash {} is not SHA-384", params.hash.oid));
    }
    let mgf_hash_ok = params
        .mask_gen
        .parameters
        .as_ref()
        .is_some_and(|h| h.oid == ID_SHA_384 && null_or_absent(h.parameters.as_ref()));
    if params.mask_gen.oid != ID_MGF_1 || !mgf_hash_ok {
        return Err("mask generation is not MGF1 with SHA-384".to_owned());
    }
    if params.salt_len != PSS_SALT_LEN {
        return Err(format!(
            "salt length {} is not {PSS_SALT_LEN}",
            params.salt_len
        ));
    }
    if params.trailer_field != TrailerField::BC {
        return Err("trailer field is not 1".to_owned());
    }
    Ok(())
}

/// The RSA public key of an issuer certificate.
pub(crate) fn rsa_key(issuer: &Cert) -> Result<RsaPublicKey, String> {
    let spki = &issuer.x509().tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != RSA_ENCRYPTION && spki.algorithm.oid != ID_RSASSA_PSS {
        return Err(format!(
            "public key algorithm {} is not RSA",
            spki.algorithm.oid
        ));
    }
    let bits = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    let key = RsaPublicKey::from_pkcs1_der(bits).map_err(|e| format!("bad RSA key: {e}"))?;
    if key.size() * 8 < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {} bits is below {MIN_RSA_BITS}",
            key.size() * 8
        ));
    }
    Ok(key)
}

/// Verifies `signature` over `signed` by `issuer`, after checking the
/// outer algorithm (and the signed copy of it, when there is one) is
/// AMD's PSS profile.
pub(crate) fn verify_pss(
    issuer: &Cert,
    signed: &[u8],
    outer_alg: &AlgorithmIdentifierOwned,
    inner_alg: &AlgorithmIdentifierOwned,
    signature: &BitString,
) -> Result<(), SigProblem> {
    check_pss_algorithm(outer_alg).map_err(SigProblem::Algorithm)?;
    if outer_alg != inner_alg {
        return Err(SigProblem::Algorithm(
            "signed and unsigned signature algorithms differ".to_owned(),
        ));
    }
    let key = rsa_key(issuer).map_err(SigProblem::IssuerKey)?;
    let sig = signature.as_bytes().ok_or(SigProblem::Invalid)?;
    if sig.len() != key.size() {
        return Err(SigProblem::Invalid);
    }
    let sig = rsa::pss::Signature::try_from(sig).map_err(|_| SigProblem::Invalid)?;
    rsa::pss::VerifyingKey::<Sha384>::new_with_salt_len(key, usize::from(PSS_SALT_LEN))
        .verify(signed, &sig)
        .map_err(|_| SigProblem::Invalid)
}

/// Verifies a certificate's signature by `issuer`.
pub(crate) fn verify_cert(issuer: &Cert, cert: &Cert) -> Result<(), SigProblem> {
    let x = cert.x509();
    verify_pss(
        issuer,
        cert.tbs_der(),
        &x.signature_algorithm,
        &x.tbs_certificate.signature,
        &x.signature,
    )
}
