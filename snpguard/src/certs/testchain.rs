//! A generated ARK -> ASK -> VCEK chain (and CRL) in AMD's format, signed
//! with freshly generated keys at test time, for the rules real AMD data
//! cannot break (revocation, a broken root self-signature, other
//! algorithms, other key types, missing extensions).

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use const_oid::db::rfc5912::{ID_RSASSA_PSS, SHA_384_WITH_RSA_ENCRYPTION};
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, Ia5StringRef, OctetString, UtcTime};
use der::{Any, Decode, Encode};
use p384::pkcs8::EncodePublicKey;
use rand_core::OsRng;
use rsa::pkcs1::RsaPssParams;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use rsa::RsaPrivateKey;
use sha2::Sha384;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::Certificate;

use super::ext;
use super::{Cert, Product};

/// 2020-01-01 and 2040-01-01.
const NOT_BEFORE: u64 = 1_577_836_800;
const NOT_AFTER: u64 = 2_208_988_800;

pub(crate) struct Keys {
    pub ark: RsaPrivateKey,
    pub ask: RsaPrivateKey,
    pub other: RsaPrivateKey,
}

/// RSA keys, generated once per test run (2048 bits to keep tests fast;
/// AMD's are 4096).
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let gen = || RsaPrivateKey::new(&mut OsRng, 2048).expect("rsa keygen");
        Keys {
            ark: gen(),
            ask: gen(),
            other: gen(),
        }
    })
}

pub(crate) fn name(s: &str) -> Name {
    Name::from_str(s).expect("name")
}

pub(crate) fn ark_name() -> Name {
    name("CN=ARK-Milan,O=SnpGuard Test")
}

pub(crate) fn ask_name() -> Name {
    name("CN=SEV-Milan,O=SnpGuard Test")
}

/// AMD's algorithm identifier: RSASSA-PSS, SHA-384, MGF1-SHA-384, `salt`.
pub(crate) fn pss_alg(salt: u8) -> AlgorithmIdentifierOwned {
    let params = RsaPssParams::new::<Sha384>(salt).to_der().expect("params");
    AlgorithmIdentifierOwned {
        oid: ID_RSASSA_PSS,
        parameters: Some(Any::from_der(&params).expect("any")),
    }
}

/// How to sign.
#[derive(Clone, Copy)]
pub(crate) enum Sign {
    Pss(u8),
    Pkcs1v15,
}

fn sign(key: &RsaPrivateKey, how: Sign, data: &[u8]) -> Vec<u8> {
    match how {
        Sign::Pss(salt) => {
            rsa::pss::SigningKey::<Sha384>::new_with_salt_len(key.clone(), usize::from(salt))
                .sign_with_rng(&mut OsRng, data)
                .to_vec()
        }
        Sign::Pkcs1v15 => rsa::pkcs1v15::SigningKey::<Sha384>::new(key.clone())
            .sign_with_rng(&mut OsRng, data)
            .to_vec(),
    }
}

fn alg(how: Sign) -> AlgorithmIdentifierOwned {
    match how {
        Sign::Pss(salt) => pss_alg(salt),
        Sign::Pkcs1v15 => AlgorithmIdentifierOwned {
            oid: SHA_384_WITH_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
    }
}

fn time(secs: u64) -> Time {
    Time::UtcTime(UtcTime::from_unix_duration(Duration::from_secs(secs)).expect("time"))
}

pub(crate) fn rsa_spki(key: &RsaPrivateKey) -> SubjectPublicKeyInfoOwned {
    let der = key.to_public_key().to_public_key_der().expect("spki");
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).expect("spki")
}

pub(crate) fn p384_spki() -> SubjectPublicKeyInfoOwned {
    let key = p384::SecretKey::random(&mut OsRng);
    let der = key.public_key().to_public_key_der().expect("spki");
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).expect("spki")
}

fn ext(oid: ObjectIdentifier, value: Vec<u8>) -> Extension {
    Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(value).expect("octets"),
    }
}

/// AMD's VCEK extensions for a Milan chip at TCB bl 3, tee 0, snp 8,
/// ucode 115, with a 64-byte hwID of 0xAB.
pub(crate) fn vcek_exts() -> Vec<Extension> {
    let int = |v: u8| v.to_der().expect("int");
    vec![
        ext(
            ext::OID_PRODUCT_NAME,
            Ia5StringRef::new("Milan-B0")
                .expect("ia5")
                .to_der()
                .expect("der"),
        ),
        ext(ext::OID_BL_SPL, int(3)),
        ext(ext::OID_TEE_SPL, int(0)),
        ext(ext::OID_SNP_SPL, int(8)),
        ext(ext::OID_UCODE_SPL, int(115)),
        ext(ext::OID_HWID, vec![0xAB; Product::Milan.hwid_len()]),
    ]
}

/// One certificate, as its parts say.
pub(crate) struct CertSpec {
    pub serial: u8,
    pub issuer: Name,
    pub subject: Name,
    pub spki: SubjectPublicKeyInfoOwned,
    pub exts: Vec<Extension>,
    pub sign: Sign,
}

pub(crate) fn make(spec: CertSpec, key: &RsaPrivateKey) -> Cert {
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&[spec.serial]).expect("serial"),
        signature: alg(spec.sign),
        issuer: spec.issuer,
        validity: Validity {
            not_before: time(NOT_BEFORE),
            not_after: time(NOT_AFTER),
        },
        subject: spec.subject,
        subject_public_key_info: spec.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!spec.exts.is_empty()).then_some(spec.exts),
    };
    let sig = sign(key, spec.sign, &tbs.to_der().expect("tbs"));
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg(spec.sign),
        signature: BitString::from_bytes(&sig).expect("bits"),
    };
    Cert::from_pem_or_der(&cert.to_der().expect("cert")).expect("parse")
}

/// A test ARK (self-signed), ASK (serial 2) and VCEK (P-384, AMD's
/// extensions).
pub(crate) struct Chain {
    pub ark: Cert,
    pub ask: Cert,
    pub vcek: Cert,
}

pub(crate) fn ark() -> Cert {
    let k = keys();
    make(
        CertSpec {
            serial: 1,
            issuer: ark_name(),
            subject: ark_name(),
            spki: rsa_spki(&k.ark),
            exts: Vec::new(),
            sign: Sign::Pss(48),
        },
        &k.ark,
    )
}

pub(crate) fn ask() -> Cert {
    let k = keys();
    make(
        CertSpec {
            serial: 2,
            issuer: ark_name(),
            subject: ask_name(),
            spki: rsa_spki(&k.ask),
            exts: Vec::new(),
            sign: Sign::Pss(48),
        },
        &k.ark,
    )
}

pub(crate) fn vcek_spec() -> CertSpec {
    CertSpec {
        serial: 3,
        issuer: ask_name(),
        subject: name("CN=SEV-VCEK,O=SnpGuard Test"),
        spki: p384_spki(),
        exts: vcek_exts(),
        sign: Sign::Pss(48),
    }
}

pub(crate) fn chain() -> Chain {
    Chain {
        ark: ark(),
        ask: ask(),
        vcek: make(vcek_spec(), &keys().ask),
    }
}

/// A CRL by `issuer`, signed with `key`, revoking `serials`, current for
/// the whole test chain's life.
pub(crate) fn crl(issuer: Name, key: &RsaPrivateKey, serials: &[u8]) -> Vec<u8> {
    crl_between(issuer, key, serials, NOT_BEFORE, NOT_AFTER)
}

/// As [`crl`], current from `this_update` to `next_update` (unix seconds).
pub(crate) fn crl_between(
    issuer: Name,
    key: &RsaPrivateKey,
    serials: &[u8],
    this_update: u64,
    next_update: u64,
) -> Vec<u8> {
    let revoked = serials
        .iter()
        .map(|s| RevokedCert {
            serial_number: SerialNumber::new(&[*s]).expect("serial"),
            revocation_date: time(NOT_BEFORE),
            crl_entry_extensions: None,
        })
        .collect::<Vec<_>>();
    let tbs = TbsCertList {
        version: Version::V2,
        signature: pss_alg(48),
        issuer,
        this_update: time(this_update),
        next_update: Some(time(next_update)),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: None,
    };
    let sig = sign(key, Sign::Pss(48), &tbs.to_der().expect("tbs"));
    CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: pss_alg(48),
        signature: BitString::from_bytes(&sig).expect("bits"),
    }
    .to_der()
    .expect("crl")
}
