//! The ARK's certificate revocation list (AMD KDS `/vcek/v1/{product}/crl`,
//! or the CRL entry of a certificate table): it revokes ASKs and ASVKs.
//!
//! Two uses:
//! - [`check`]: a CRL that came with the certificates of one verification
//!   (`CertSet::crl`), checked against the chain's root;
//! - [`Crl`] and [`Revocation`]: the relying party's *own* CRLs, one per
//!   trusted root, verified once when they are taken in and applied to
//!   every chain whatever the certificates at hand carry, with a
//!   [`RevocationPolicy`] saying what a missing or stale CRL means.

use std::fmt;
use std::sync::Arc;

use der::Decode;
use time::OffsetDateTime;
use x509_cert::crl::CertificateList;

use super::amd::TrustAnchors;
use super::cert::{names_equal, tbs_range, Cert};
use super::chain::{CertRole, ChainError, Endorsement};
use super::set::CRL_MAX_SIZE;
use super::sig::{verify_pss, SigProblem};
use super::Product;

fn malformed(reason: impl std::fmt::Display) -> ChainError {
    ChainError::CrlMalformed {
        reason: reason.to_string(),
    }
}

fn dt(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(s).unwrap_or(OffsetDateTime::UNIX_EPOCH)
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
    pub(crate) fn check(&self, at: OffsetDateTime) -> Result<(), ChainError> {
        let now = at.unix_timestamp();
        let stale = now < self.this_update || self.next_update.is_some_and(|n| now > n);
        if stale {
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

/// DER of a CRL given as DER or PEM (`X509 CRL`), bounded.
fn der_of(crl: &[u8]) -> Result<Vec<u8>, ChainError> {
    if crl.len() > CRL_MAX_SIZE {
        return Err(malformed(format!(
            "{} bytes exceeds {CRL_MAX_SIZE}",
            crl.len()
        )));
    }
    if crl.trim_ascii_start().starts_with(b"-----BEGIN ") {
        let (label, der) = der::pem::decode_vec(crl).map_err(malformed)?;
        if label != "X509 CRL" {
            return Err(malformed(format!("PEM label {label:?}, expected X509 CRL")));
        }
        Ok(der)
    } else {
        Ok(crl.to_vec())
    }
}

/// Checks the signature of the CRL `list` (DER `der`) with `ark`.
fn verify_with(der: &[u8], list: &CertificateList, ark: &Cert) -> Result<(), ChainError> {
    let tbs = tbs_range(der).map_err(malformed)?;
    verify_pss(
        ark,
        &der[tbs],
        &list.signature_algorithm,
        &list.tbs_cert_list.signature,
        &list.signature,
    )
    .map_err(|p| ChainError::CrlSignature {
        reason: match p {
            SigProblem::Algorithm(r) | SigProblem::IssuerKey(r) => r,
            SigProblem::Invalid => "signature does not verify with the ARK".to_owned(),
        },
    })
}

fn issuer_error(list: &CertificateList) -> ChainError {
    ChainError::CrlIssuer {
        issuer: super::cert::common_name(&list.tbs_cert_list.issuer).unwrap_or_default(),
    }
}

fn revokes(list: &CertificateList, serial: &[u8]) -> bool {
    list.tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .any(|r| r.serial_number.as_bytes() == serial)
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
    let der = der_of(crl)?;
    let list = CertificateList::from_der(&der).map_err(malformed)?;
    if !names_equal(
        &list.tbs_cert_list.issuer,
        &ark.x509().tbs_certificate.subject,
    ) {
        return Err(issuer_error(&list));
    }
    verify_with(&der, &list, ark)?;
    let serial = intermediate.serial();
    if revokes(&list, serial) {
        return Err(ChainError::Revoked {
            role,
            serial: hex::encode(serial),
        });
    }
    let tbs_list = &list.tbs_cert_list;
    Ok(CrlWindow {
        this_update: unix(tbs_list.this_update),
        next_update: tbs_list.next_update.map(unix),
    })
}

/// A CRL verified to be signed by one of the trusted roots: what it
/// revokes and when it is current. Built only by [`Crl::verify`].
#[derive(Clone, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    product: Product,
    root: [u8; 32],
    test_root: bool,
    this_update: i64,
    next_update: Option<i64>,
    revoked: Vec<Vec<u8>>,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("product", &self.product)
            .field("test_root", &self.test_root)
            .field("this_update", &self.this_update())
            .field("next_update", &self.next_update())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl Crl {
    /// Whether `bytes` looks like a CRL (PEM `X509 CRL`, or DER that
    /// parses as one) rather than a certificate; nothing is verified.
    pub fn looks_like_crl(bytes: &[u8]) -> bool {
        let t = bytes.trim_ascii_start();
        if t.starts_with(b"-----BEGIN X509 CRL-----") {
            return true;
        }
        !t.starts_with(b"-----BEGIN ")
            && bytes.len() <= CRL_MAX_SIZE
            && CertificateList::from_der(bytes).is_ok()
    }

    /// Parses a CRL (DER or PEM) and verifies it is issued and signed by
    /// a trusted root of `anchors` (AMD's pinned ARK of a product, or a
    /// configured test root); the product is that root's. The time is not
    /// checked here: a stale CRL still proves what it revokes.
    pub fn verify(anchors: &TrustAnchors, bytes: &[u8]) -> Result<Crl, ChainError> {
        let der = der_of(bytes)?;
        let list = CertificateList::from_der(&der).map_err(malformed)?;
        let mut first_err = None;
        for product in Product::ALL {
            for root in anchors.roots(product) {
                let subject = &root.cert.x509().tbs_certificate.subject;
                if !names_equal(&list.tbs_cert_list.issuer, subject) {
                    continue;
                }
                match verify_with(&der, &list, &root.cert) {
                    Ok(()) => {
                        let tbs = &list.tbs_cert_list;
                        return Ok(Crl {
                            product,
                            root: root.cert.fingerprint(),
                            test_root: root.test,
                            this_update: unix(tbs.this_update),
                            next_update: tbs.next_update.map(unix),
                            revoked: tbs
                                .revoked_certificates
                                .iter()
                                .flatten()
                                .map(|r| r.serial_number.as_bytes().to_vec())
                                .collect(),
                            der,
                        });
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| issuer_error(&list)))
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The product of the root that signed it.
    pub fn product(&self) -> Product {
        self.product
    }

    /// SHA-256 of the signing root's certificate.
    pub fn root_fingerprint(&self) -> [u8; 32] {
        self.root
    }

    /// Signed by a test root rather than AMD's ARK.
    pub fn test_root(&self) -> bool {
        self.test_root
    }

    /// thisUpdate.
    pub fn this_update(&self) -> OffsetDateTime {
        dt(self.this_update)
    }

    /// nextUpdate, when present.
    pub fn next_update(&self) -> Option<OffsetDateTime> {
        self.next_update.map(dt)
    }

    /// Number of revoked serial numbers.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Whether it lists `serial` (the DER content octets of a serial
    /// number, as [`Cert::serial`] gives them).
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.revoked.iter().any(|s| s == serial)
    }

    /// Whether it is current at `at` (thisUpdate <= at <= nextUpdate).
    pub fn is_current(&self, at: OffsetDateTime) -> bool {
        self.window().check(at).is_ok()
    }

    /// Whether it replaces `held`: the same root, and a strictly later
    /// thisUpdate. An older (or equally old) CRL never replaces a newer.
    pub fn supersedes(&self, held: &Crl) -> bool {
        self.root == held.root && self.this_update > held.this_update
    }

    fn window(&self) -> CrlWindow {
        CrlWindow {
            this_update: self.this_update,
            next_update: self.next_update,
        }
    }
}

/// What a missing or stale CRL means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlPolicy {
    /// Refuse the chain (`crl-missing`, `crl-not-current`).
    Fail,
    /// Accept it with a [`RevocationWarning`].
    Warn,
}

/// What [`Revocation::check`] does when no CRL is held for a chain's
/// root (`missing`) or the one held is not current (`stale`). The
/// default warns on a missing CRL (an air-gapped host that never
/// imported one keeps booting its guests, loudly) and fails on a stale
/// one (a CRL once held that was not renewed may hide a revocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationPolicy {
    /// No CRL held for the chain's root.
    pub missing: CrlPolicy,
    /// The CRL held is past its nextUpdate (or before its thisUpdate).
    pub stale: CrlPolicy,
}

impl Default for RevocationPolicy {
    fn default() -> Self {
        RevocationPolicy {
            missing: CrlPolicy::Warn,
            stale: CrlPolicy::Fail,
        }
    }
}

/// A chain accepted although revocation could not be fully checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationWarning {
    /// No CRL is held for the chain's root.
    Missing {
        /// The chain's product.
        product: Product,
        /// The chain ends at a test root.
        test_root: bool,
    },
    /// The CRL held is not current.
    Stale {
        /// The chain's product.
        product: Product,
        /// The chain ends at a test root.
        test_root: bool,
        /// Its thisUpdate.
        this_update: OffsetDateTime,
        /// Its nextUpdate.
        next_update: Option<OffsetDateTime>,
    },
}

impl RevocationWarning {
    /// The product the warning is about.
    pub fn product(&self) -> Product {
        match self {
            RevocationWarning::Missing { product, .. }
            | RevocationWarning::Stale { product, .. } => *product,
        }
    }

    /// The rule code the warning stands for (`crl-missing` or
    /// `crl-not-current`), as it would be under a `fail` policy.
    pub fn code(&self) -> &'static str {
        match self {
            RevocationWarning::Missing { .. } => "crl-missing",
            RevocationWarning::Stale { .. } => "crl-not-current",
        }
    }
}

fn root_name(product: Product, test_root: bool) -> String {
    if test_root {
        format!("TEST root for {}", product.kds_name())
    } else {
        format!("ARK-{}", product.kds_name())
    }
}

impl fmt::Display for RevocationWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevocationWarning::Missing { product, test_root } => write!(
                f,
                "REVOCATION NOT CHECKED: no CRL of the {} is held; import AMD's \
                 (snpguardctl certs import crl.der, from KDS /vcek/v1/{}/crl) or enable KDS",
                root_name(*product, *test_root),
                product.kds_name()
            ),
            RevocationWarning::Stale {
                product,
                test_root,
                this_update,
                next_update,
            } => write!(
                f,
                "REVOCATION CHECKED AGAINST A STALE CRL: the {} CRL held is current from {} to {}; \
                 import a fresh one (snpguardctl certs import crl.der, from KDS /vcek/v1/{}/crl)",
                root_name(*product, *test_root),
                this_update,
                next_update.map_or_else(|| "(no nextUpdate)".to_owned(), |t| t.to_string()),
                product.kds_name()
            ),
        }
    }
}

/// The relying party's own CRLs (at most one per trusted root) and its
/// policy, applied to every verified chain by [`Revocation::check`].
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    policy: RevocationPolicy,
    crls: Vec<Arc<Crl>>,
}

impl Revocation {
    /// `crls` under `policy`; of several CRLs of one root the newest
    /// (thisUpdate) is used.
    pub fn new(policy: RevocationPolicy, crls: impl IntoIterator<Item = Arc<Crl>>) -> Self {
        let mut held: Vec<Arc<Crl>> = Vec::new();
        for crl in crls {
            match held.iter_mut().find(|h| h.root == crl.root) {
                Some(h) if crl.supersedes(h) => *h = crl,
                Some(_) => {}
                None => held.push(crl),
            }
        }
        Revocation { policy, crls: held }
    }

    /// The policy.
    pub fn policy(&self) -> RevocationPolicy {
        self.policy
    }

    /// Applies the CRL of the chain's root to `endorsement` at `at`:
    /// its intermediate (ASK or ASVK) listed is `revoked`, whether the
    /// CRL is current or not (a revocation is final); otherwise a missing
    /// CRL or one not current at `at` is a refusal (`crl-missing`,
    /// `crl-not-current`) or a warning, as the policy says.
    pub fn check(
        &self,
        endorsement: &Endorsement,
        at: OffsetDateTime,
    ) -> Result<Option<RevocationWarning>, ChainError> {
        let product = endorsement.product;
        let test_root = endorsement.test_root;
        let Some(crl) = self
            .crls
            .iter()
            .find(|c| c.root == endorsement.root_fingerprint)
        else {
            return match self.policy.missing {
                CrlPolicy::Fail => Err(ChainError::CrlMissing { product }),
                CrlPolicy::Warn => Ok(Some(RevocationWarning::Missing { product, test_root })),
            };
        };
        if crl.revokes(&endorsement.intermediate_serial) {
            return Err(ChainError::Revoked {
                role: endorsement.intermediate,
                serial: hex::encode(&endorsement.intermediate_serial),
            });
        }
        match (crl.window().check(at), self.policy.stale) {
            (Ok(()), _) => Ok(None),
            (Err(e), CrlPolicy::Fail) => Err(e),
            (Err(_), CrlPolicy::Warn) => Ok(Some(RevocationWarning::Stale {
                product,
                test_root,
                this_update: crl.this_update(),
                next_update: crl.next_update(),
            })),
        }
    }
}
