//! Endorsement-chain verification: VCEK -> ASK -> ARK, or VLEK -> ASVK ->
//! ARK, with the ARK one of the pinned [`TrustAnchors`]. Every rule is
//! checked on every call, and each failure is its own [`ChainError`].

use std::fmt;

use const_oid::db::rfc5912::{ID_EC_PUBLIC_KEY, SECP_384_R_1};
use const_oid::ObjectIdentifier;
use time::OffsetDateTime;

use super::amd::{Root, TrustAnchors};
use super::cert::Cert;
use super::ext::{self, CertTcb, ExtProblem};
use super::sig::{verify_cert, SigProblem};
use super::{crl, CertSet, KeyKind, Product};

/// The position of a certificate in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (issues VCEKs).
    Ask,
    /// AMD SEV VLEK Key (issues VLEKs).
    Asvk,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertRole::Ark => "ARK",
            CertRole::Ask => "ASK",
            CertRole::Asvk => "ASVK",
            CertRole::Vcek => "VCEK",
            CertRole::Vlek => "VLEK",
        })
    }
}

impl From<KeyKind> for CertRole {
    fn from(kind: KeyKind) -> Self {
        match kind {
            KeyKind::Vcek => CertRole::Vcek,
            KeyKind::Vlek => CertRole::Vlek,
        }
    }
}

fn date(t: &OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(f)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Why an endorsement chain was rejected; one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No VCEK certificate to verify a VCEK-signed report.
    #[error("no VCEK certificate: supply vcek.der (--vcek), a certificate table that carries it, or fetch it from AMD KDS /vcek/v1/{{product}}/{{hwid}}")]
    MissingVcek,
    /// No VLEK certificate to verify a VLEK-signed report.
    #[error("no VLEK certificate: the report is VLEK-signed; supply the cloud provider's vlek.der (--vlek) or a certificate table that carries it")]
    MissingVlek,
    /// A VLEK but no ASVK to check it with.
    #[error("no ASVK certificate to verify the VLEK: supply asvk.pem or cert_chain.pem from AMD KDS /vlek/v1/{}/cert_chain", product.kds_name())]
    MissingAsvk {
        /// The VLEK's product.
        product: Product,
    },
    /// No product given and none derivable from the certificate.
    #[error("cannot tell the product of the {role}: {reason}; pass the product (--product milan|genoa|turin)")]
    ProductUnknown {
        /// The endorsement certificate.
        role: CertRole,
        /// What was (not) found.
        reason: String,
    },
    /// The product given contradicts the endorsement certificate.
    #[error("product {given} was given, but the {role} is a {cert} certificate; fix --product or the certificate")]
    ProductMismatch {
        /// The endorsement certificate.
        role: CertRole,
        /// The product the caller gave.
        given: Product,
        /// The product the certificate names.
        cert: Product,
    },
    /// An intermediate that is not the one for this product (another
    /// product's chain, or an ASVK where an ASK belongs).
    #[error("the {role} supplied is {subject:?}, not AMD's {product} {role}; use the {} chain from AMD KDS", product.kds_name())]
    WrongProductChain {
        /// The intermediate.
        role: CertRole,
        /// The product the chain must be for.
        product: Product,
        /// The supplied certificate's subject CN.
        subject: String,
    },
    /// A supplied ARK that is not the pinned one.
    #[error("the ARK supplied (sha256 {fingerprint}) is not the pinned {product} ARK; remove it from the certificates or fetch AMD's from KDS")]
    ArkNotPinned {
        /// The chain's product.
        product: Product,
        /// SHA-256 of the supplied ARK (hex).
        fingerprint: String,
    },
    /// A certificate's issuer name is not its parent's subject name.
    #[error("the {role}'s issuer {issuer:?} is not the {parent}'s subject {parent_subject:?}; the certificates do not form a chain")]
    IssuerMismatch {
        /// The child certificate.
        role: CertRole,
        /// Its issuer CN.
        issuer: String,
        /// The expected parent.
        parent: CertRole,
        /// The parent's subject CN.
        parent_subject: String,
    },
    /// A signature not made with RSASSA-PSS/SHA-384/MGF1-SHA-384/salt 48.
    #[error("the {role}'s signature algorithm is not AMD's RSASSA-PSS SHA-384 (MGF1-SHA-384, salt 48): {reason}")]
    SignatureAlgorithm {
        /// The signed certificate.
        role: CertRole,
        /// What differs.
        reason: String,
    },
    /// An issuer public key unusable for RSA-PSS.
    #[error("the {role}'s public key cannot verify signatures: {reason}")]
    IssuerKey {
        /// The issuing certificate.
        role: CertRole,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature that does not verify with the issuer's key.
    #[error("the {role}'s signature does not verify with the {issuer}'s key; the certificate was altered or belongs to another chain")]
    Signature {
        /// The signed certificate (ARK: its self-signature).
        role: CertRole,
        /// Its issuer.
        issuer: CertRole,
    },
    /// A certificate past its notAfter.
    #[error(
        "the {role} certificate expired at {} (checked at {}); obtain a current one",
        date(not_after),
        date(at)
    )]
    Expired {
        /// The certificate.
        role: CertRole,
        /// Its notAfter.
        not_after: OffsetDateTime,
        /// The verification time.
        at: OffsetDateTime,
    },
    /// A certificate before its notBefore.
    #[error(
        "the {role} certificate is not valid before {} (checked at {}); check the clock",
        date(not_before),
        date(at)
    )]
    NotYetValid {
        /// The certificate.
        role: CertRole,
        /// Its notBefore.
        not_before: OffsetDateTime,
        /// The verification time.
        at: OffsetDateTime,
    },
    /// An endorsement key that is not an EC P-384 public key.
    #[error("the {role}'s public key is not an EC P-384 key: {reason}")]
    EndorsementKey {
        /// The endorsement certificate.
        role: CertRole,
        /// What it is instead.
        reason: String,
    },
    /// A missing or malformed AMD extension (TCB, hwID, productName).
    #[error("the {role}'s AMD extension {oid} is unusable: {problem}")]
    Extension {
        /// The endorsement certificate.
        role: CertRole,
        /// The extension.
        oid: ObjectIdentifier,
        /// What is wrong.
        problem: String,
    },
    /// A CRL that cannot be parsed.
    #[error("the CRL is malformed: {reason}; supply AMD's CRL from KDS /vcek/v1/{{product}}/crl or none")]
    CrlMalformed {
        /// The parser's complaint.
        reason: String,
    },
    /// A CRL outside its thisUpdate..nextUpdate window.
    #[error(
        "the CRL is not current at {} (thisUpdate {}, nextUpdate {}); fetch a fresh one from KDS /vcek/v1/{{product}}/crl",
        date(at),
        date(this_update),
        next_update.as_ref().map(date).unwrap_or_else(|| "none".to_owned())
    )]
    CrlNotCurrent {
        /// thisUpdate.
        this_update: OffsetDateTime,
        /// nextUpdate, when present.
        next_update: Option<OffsetDateTime>,
        /// The verification time.
        at: OffsetDateTime,
    },
    /// A CRL not issued by the ARK.
    #[error("the CRL is issued by {issuer:?}, not the ARK; supply the CRL of this product's ARK")]
    CrlIssuer {
        /// The CRL's issuer CN.
        issuer: String,
    },
    /// A CRL whose signature does not verify with the ARK.
    #[error("the CRL's signature is not a valid ARK signature: {reason}")]
    CrlSignature {
        /// What failed.
        reason: String,
    },
    /// No CRL of the chain's root is held, and the relying party's policy
    /// requires one.
    #[error("no CRL of the {} ARK is held and the revocation policy requires one ([revocation] missing = \"fail\"); import AMD's CRL (snpguardctl certs import crl.der, from KDS /vcek/v1/{}/crl) or enable KDS", product.kds_name(), product.kds_name())]
    CrlMissing {
        /// The chain's product.
        product: Product,
    },
    /// An intermediate listed in the ARK's CRL.
    #[error(
        "the {role} (serial {serial}) is revoked by the ARK's CRL; this chain must not be trusted"
    )]
    Revoked {
        /// The revoked certificate.
        role: CertRole,
        /// Its serial number (hex).
        serial: String,
    },
}

impl ChainError {
    /// A stable kebab-case code for logs, audit records and API clients.
    pub fn code(&self) -> &'static str {
        match self {
            ChainError::MissingVcek => "missing-vcek",
            ChainError::MissingVlek => "missing-vlek",
            ChainError::MissingAsvk { .. } => "missing-asvk",
            ChainError::ProductUnknown { .. } => "product-unknown",
            ChainError::ProductMismatch { .. } => "product-mismatch",
            ChainError::WrongProductChain { .. } => "wrong-product-chain",
            ChainError::ArkNotPinned { .. } => "ark-not-pinned",
            ChainError::IssuerMismatch { .. } => "issuer-mismatch",
            ChainError::SignatureAlgorithm { .. } => "signature-algorithm",
            ChainError::IssuerKey { .. } => "issuer-key",
            ChainError::Signature { .. } => "signature-invalid",
            ChainError::Expired { .. } => "cert-expired",
            ChainError::NotYetValid { .. } => "cert-not-yet-valid",
            ChainError::EndorsementKey { .. } => "endorsement-key-not-p384",
            ChainError::Extension { .. } => "amd-extension",
            ChainError::CrlMalformed { .. } => "crl-malformed",
            ChainError::CrlIssuer { .. } => "crl-issuer",
            ChainError::CrlNotCurrent { .. } => "crl-not-current",
            ChainError::CrlSignature { .. } => "crl-signature",
            ChainError::CrlMissing { .. } => "crl-missing",
            ChainError::Revoked { .. } => "revoked",
        }
    }
}

/// A verified endorsement key and what its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// VCEK or VLEK.
    pub kind: KeyKind,
    /// The product whose pinned ARK the chain ends in.
    pub product: Product,
    /// The key that signs reports.
    pub key: p384::ecdsa::VerifyingKey,
    /// The TCB the key was issued for.
    pub tcb: CertTcb,
    /// The chip's hardware ID (VCEK only; 64 bytes Milan/Genoa, 8 Turin).
    pub hwid: Option<Vec<u8>>,
    /// The productName extension ("Milan-B0"), when present.
    pub product_name: Option<String>,
    /// The chain ends in a test root, not AMD's: say so loudly.
    pub test_root: bool,
    /// SHA-256 of the root certificate the chain ends in.
    pub root_fingerprint: [u8; 32],
    /// The intermediate: ASK (VCEK) or ASVK (VLEK).
    pub intermediate: CertRole,
    /// The intermediate's serial number (DER content octets), what the
    /// ARK's CRL lists when it is revoked.
    pub intermediate_serial: Vec<u8>,
}

/// A validity window, unix seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    role: CertRole,
    not_before: i64,
    not_after: i64,
}

impl Window {
    fn of(role: CertRole, cert: &Cert) -> Window {
        let v = &cert.x509().tbs_certificate.validity;
        let secs = |t: x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
        };
        Window {
            role,
            not_before: secs(v.not_before),
            not_after: secs(v.not_after),
        }
    }

    fn check(&self, at: OffsetDateTime) -> Result<(), ChainError> {
        let now = at.unix_timestamp();
        let dt =
            |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if now < self.not_before {
            return Err(ChainError::NotYetValid {
                role: self.role,
                not_before: dt(self.not_before),
                at,
            });
        }
        if now > self.not_after {
            return Err(ChainError::Expired {
                role: self.role,
                not_after: dt(self.not_after),
                at,
            });
        }
        Ok(())
    }
}

/// The outcome of every rule that does not depend on the time.
#[derive(Debug, Clone)]
pub(crate) struct CheckedChain {
    pub endorsement: Endorsement,
    /// ARK, intermediate, endorsement certificate, in that order.
    pub windows: [Window; 3],
    /// When the CRL that was checked is current, if one was.
    pub crl: Option<crl::CrlWindow>,
}

impl CheckedChain {
    pub(crate) fn at(&self, at: OffsetDateTime) -> Result<Endorsement, ChainError> {
        for w in &self.windows {
            w.check(at)?;
        }
        if let Some(crl) = &self.crl {
            crl.check(at)?;
        }
        Ok(self.endorsement.clone())
    }
}

/// Verifies the endorsement key certificate of `kind` in `certs` up to a
/// pinned root of `anchors`, at time `at`.
///
/// The product is `product_hint` when given (and must then agree with the
/// certificate), else the certificate's productName extension, else its
/// issuer name; never guessed.
pub fn verify_endorsement(
    anchors: &TrustAnchors,
    certs: &CertSet,
    kind: KeyKind,
    product_hint: Option<Product>,
    at: OffsetDateTime,
) -> Result<Endorsement, ChainError> {
    verify_static(anchors, certs, kind, product_hint)?.at(at)
}

fn ext_err(role: CertRole) -> impl Fn(ExtProblem) -> ChainError {
    move |p| ChainError::Extension {
        role,
        oid: p.oid,
        problem: p.problem,
    }
}

fn sig_err(role: CertRole, issuer: CertRole) -> impl Fn(SigProblem) -> ChainError {
    move |p| match p {
        SigProblem::Algorithm(reason) => ChainError::SignatureAlgorithm { role, reason },
        SigProblem::IssuerKey(reason) => ChainError::IssuerKey {
            role: issuer,
            reason,
        },
        SigProblem::Invalid => ChainError::Signature { role, issuer },
    }
}

fn cn(cert: &Cert, subject: bool) -> String {
    let name = if subject {
        cert.subject_cn()
    } else {
        cert.issuer_cn()
    };
    name.unwrap_or_else(|| "(no common name)".to_owned())
}

fn check_issued(
    child: &Cert,
    role: CertRole,
    parent: &Cert,
    prole: CertRole,
) -> Result<(), ChainError> {
    if child.issued_by_name(parent) {
        return Ok(());
    }
    Err(ChainError::IssuerMismatch {
        role,
        issuer: cn(child, false),
        parent: prole,
        parent_subject: cn(parent, true),
    })
}

/// The product an endorsement certificate names: productName, else the
/// issuer CN (`SEV-<Product>` / `SEV-VLEK-<Product>`).
fn cert_product(leaf: &Cert, role: CertRole) -> Result<Result<Product, String>, ChainError> {
    if let Some(name) = ext::product_name(leaf).map_err(ext_err(role))? {
        return Ok(ext::product_from_name(&name)
            .ok_or_else(|| format!("productName {name:?} is not a known product")));
    }
    let issuer = leaf.issuer_cn().unwrap_or_default();
    let base = issuer
        .strip_prefix("SEV-VLEK-")
        .or_else(|| issuer.strip_prefix("SEV-"));
    Ok(base
        .and_then(Product::from_amd_name)
        .ok_or_else(|| format!("no productName extension and issuer {issuer:?} names no product")))
}

/// Whether `cert` is named as AMD names the intermediate `role` of
/// `product`.
fn intermediate_named(cert: &Cert, role: CertRole, product: Product) -> bool {
    let expected = match role {
        CertRole::Asvk => format!("SEV-VLEK-{}", product.kds_name()),
        _ => format!("SEV-{}", product.kds_name()),
    };
    cert.subject_cn().as_deref() == Some(expected.as_str())
}

/// Checks a root's self-signature and its signature on the intermediate.
fn check_root(root: &Root, inter: &Cert, irole: CertRole) -> Result<(), ChainError> {
    check_issued(&root.cert, CertRole::Ark, &root.cert, CertRole::Ark)?;
    verify_cert(&root.cert, &root.cert).map_err(sig_err(CertRole::Ark, CertRole::Ark))?;
    check_issued(inter, irole, &root.cert, CertRole::Ark)?;
    verify_cert(&root.cert, inter).map_err(sig_err(irole, CertRole::Ark))
}

/// Every rule except validity at a time.
pub(crate) fn verify_static(
    anchors: &TrustAnchors,
    certs: &CertSet,
    kind: KeyKind,
    product_hint: Option<Product>,
) -> Result<CheckedChain, ChainError> {
    let role = CertRole::from(kind);
    let leaf = match kind {
        KeyKind::Vcek => certs.vcek.as_ref().ok_or(ChainError::MissingVcek)?,
        KeyKind::Vlek => certs.vlek.as_ref().ok_or(ChainError::MissingVlek)?,
    };

    let product = match (product_hint, cert_product(leaf, role)?) {
        (Some(given), Ok(cert)) if given != cert => {
            return Err(ChainError::ProductMismatch { role, given, cert })
        }
        (Some(given), _) => given,
        (None, Ok(cert)) => cert,
        (None, Err(reason)) => return Err(ChainError::ProductUnknown { role, reason }),
    };

    let (irole, inter) = match kind {
        KeyKind::Vcek => (
            CertRole::Ask,
            certs
                .ask
                .as_ref()
                .or_else(|| anchors.builtin_ask(product))
                .ok_or(ChainError::MissingVcek)?,
        ),
        KeyKind::Vlek => (
            CertRole::Asvk,
            certs
                .asvk
                .as_ref()
                .ok_or(ChainError::MissingAsvk { product })?,
        ),
    };
    if !intermediate_named(inter, irole, product) {
        return Err(ChainError::WrongProductChain {
            role: irole,
            product,
            subject: cn(inter, true),
        });
    }

    // The root: the supplied ARK only when it is a trusted one; else each
    // trusted root of the product (AMD's first) that names itself the
    // intermediate's issuer.
    let candidates: Vec<&Root> = match &certs.ark {
        Some(ark) => {
            let root = anchors
                .roots(product)
                .find(|r| &r.cert == ark)
                .ok_or_else(|| ChainError::ArkNotPinned {
                    product,
                    fingerprint: hex::encode(ark.fingerprint()),
                })?;
            vec![root]
        }
        None => anchors.roots(product).collect(),
    };
    // Roots whose name the intermediate names come first, so the error
    // reported is the one of the root the chain claims.
    let mut candidates = candidates;
    candidates.sort_by_key(|r| !inter.issued_by_name(&r.cert));
    let mut root = None;
    let mut first_err = None;
    for candidate in candidates {
        match check_root(candidate, inter, irole) {
            Ok(()) => {
                root = Some(candidate);
                break;
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let root = match (root, first_err) {
        (Some(root), _) => root,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(ChainError::ArkNotPinned {
                product,
                fingerprint: "(no trusted root for this product)".to_owned(),
            })
        }
    };

    check_issued(leaf, role, inter, irole)?;
    verify_cert(inter, leaf).map_err(sig_err(role, irole))?;

    let key =
        endorsement_key(leaf).map_err(|reason| ChainError::EndorsementKey { role, reason })?;
    let tcb = ext::tcb(leaf, product).map_err(ext_err(role))?;
    let hwid = match kind {
        KeyKind::Vcek => Some(ext::hwid(leaf, product).map_err(ext_err(role))?),
        KeyKind::Vlek => None,
    };
    let product_name = ext::product_name(leaf).map_err(ext_err(role))?;

    let crl = match &certs.crl {
        Some(list) => Some(crl::check(list, &root.cert, inter, irole)?),
        None => None,
    };

    Ok(CheckedChain {
        endorsement: Endorsement {
            kind,
            product,
            key,
            tcb,
            hwid,
            product_name,
            test_root: root.test,
            root_fingerprint: root.cert.fingerprint(),
            intermediate: irole,
            intermediate_serial: inter.serial().to_vec(),
        },
        windows: [
            Window::of(CertRole::Ark, &root.cert),
            Window::of(irole, inter),
            Window::of(role, leaf),
        ],
        crl,
    })
}

/// An AMD CA certificate verified on its own by [`verify_ca`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaCert {
    /// ARK, ASK or ASVK.
    pub role: CertRole,
    /// The product it is for.
    pub product: Product,
    /// It is, or chains to, a test root rather than AMD's.
    pub test_root: bool,
}

/// Verifies an AMD CA certificate without an endorsement key below it (an
/// operator importing AMD's `cert_chain`): an ARK (`ARK-<Product>`) must
/// be one of the trusted roots of its product; an ASK (`SEV-<Product>`)
/// or ASVK (`SEV-VLEK-<Product>`) must be signed by a trusted root of its
/// product. Every certificate involved must be valid at `at`.
pub fn verify_ca(
    anchors: &TrustAnchors,
    cert: &Cert,
    at: OffsetDateTime,
) -> Result<CaCert, ChainError> {
    let subject = cn(cert, true);
    let (role, name) = if let Some(n) = subject.strip_prefix("ARK-") {
        (CertRole::Ark, n)
    } else if let Some(n) = subject.strip_prefix("SEV-VLEK-") {
        (CertRole::Asvk, n)
    } else if let Some(n) = subject.strip_prefix("SEV-") {
        (CertRole::Ask, n)
    } else {
        return Err(ChainError::ProductUnknown {
            role: CertRole::Ask,
            reason: format!("subject {subject:?} is not ARK-, SEV- or SEV-VLEK-<product>"),
        });
    };
    let product = Product::from_amd_name(name).ok_or_else(|| ChainError::ProductUnknown {
        role,
        reason: format!("subject {subject:?} names no known product"),
    })?;
    if role == CertRole::Ark {
        let root = anchors
            .roots(product)
            .find(|r| &r.cert == cert)
            .ok_or_else(|| ChainError::ArkNotPinned {
                product,
                fingerprint: hex::encode(cert.fingerprint()),
            })?;
        Window::of(CertRole::Ark, &root.cert).check(at)?;
        return Ok(CaCert {
            role,
            product,
            test_root: root.test,
        });
    }
    let mut candidates: Vec<&Root> = anchors.roots(product).collect();
    candidates.sort_by_key(|r| !cert.issued_by_name(&r.cert));
    let mut first_err = None;
    for root in candidates {
        match check_root(root, cert, role) {
            Ok(()) => {
                Window::of(CertRole::Ark, &root.cert).check(at)?;
                Window::of(role, cert).check(at)?;
                return Ok(CaCert {
                    role,
                    product,
                    test_root: root.test,
                });
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| ChainError::ArkNotPinned {
        product,
        fingerprint: "(no trusted root for this product)".to_owned(),
    }))
}

/// The endorsement certificate's EC P-384 public key.
fn endorsement_key(leaf: &Cert) -> Result<p384::ecdsa::VerifyingKey, String> {
    let spki = &leaf.x509().tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY {
        return Err(format!(
            "key algorithm {} is not id-ecPublicKey",
            spki.algorithm.oid
        ));
    }
    let curve: ObjectIdentifier = spki
        .algorithm
        .parameters
        .as_ref()
        .ok_or("no curve parameter")?
        .decode_as()
        .map_err(|e| format!("curve parameter is not a named curve: {e}"))?;
    if curve != SECP_384_R_1 {
        return Err(format!("curve {curve} is not secp384r1"));
    }
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or("public key bit string has unused bits")?;
    p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| format!("bad P-384 point: {e}"))
}
