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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use time::{Duration, OffsetDateTime};

    use super::*;
    use crate::certs::{verify_endorsement, CertSet, KeyKind};
    use crate::sim::{SimCa, SimLaunch, SimPlatform, SimTcb};
    use crate::verify::{verify, Expectations};

    const TCB: SimTcb = SimTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 0x73,
        fmc: 0,
    };

    fn chip() -> [u8; 64] {
        std::array::from_fn(|i| i as u8 ^ 0x5a)
    }

    /// Two independent simulated platforms (RSA generation dominates).
    fn sims() -> &'static (SimPlatform, SimPlatform) {
        static S: OnceLock<(SimPlatform, SimPlatform)> = OnceLock::new();
        S.get_or_init(|| {
            let g = || SimPlatform::generate(Product::Milan, TCB, &chip()).expect("sim");
            (g(), g())
        })
    }

    fn anchors(sim: &SimPlatform) -> TrustAnchors {
        TrustAnchors::amd()
            .unwrap()
            .with_test_root(Product::Milan, &sim.ark_der)
            .unwrap()
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn endorsement(sim: &SimPlatform) -> Endorsement {
        let certs = CertSet {
            vcek: Some(Cert::from_pem_or_der(&sim.vcek_der).unwrap()),
            ask: Some(Cert::from_pem_or_der(&sim.ask_der).unwrap()),
            ..CertSet::default()
        };
        verify_endorsement(&anchors(sim), &certs, KeyKind::Vcek, None, now()).unwrap()
    }

    fn crl(sim: &SimPlatform, revoked: &[SimCa], from: i64, to: i64) -> Arc<Crl> {
        let t = now();
        let der = sim
            .issue_crl(revoked, t + Duration::days(from), t + Duration::days(to))
            .unwrap();
        Arc::new(Crl::verify(&anchors(sim), &der).expect("signed by the sim ARK"))
    }

    const FAIL_BOTH: RevocationPolicy = RevocationPolicy {
        missing: CrlPolicy::Fail,
        stale: CrlPolicy::Fail,
    };
    const WARN_BOTH: RevocationPolicy = RevocationPolicy {
        missing: CrlPolicy::Warn,
        stale: CrlPolicy::Warn,
    };

    #[test]
    fn a_crl_is_taken_only_when_a_trusted_root_signed_it() {
        let (sim, rogue) = sims();
        let c = crl(sim, &[SimCa::Ask], -1, 30);
        assert_eq!(c.product(), Product::Milan);
        assert!(c.test_root());
        assert_eq!(c.revoked_count(), 1);
        assert_eq!(
            c.root_fingerprint(),
            Cert::from_pem_or_der(&sim.ark_der).unwrap().fingerprint()
        );
        // Same names (ARK-Milan), another key: the signature fails.
        let t = now();
        let forged = rogue
            .issue_crl(&[SimCa::Ask], t, t + Duration::days(30))
            .unwrap();
        let e = Crl::verify(&anchors(sim), &forged).unwrap_err();
        assert_eq!(e.code(), "crl-signature", "{e}");
        // A root that is not trusted at all: no trusted root has its
        // issuer name (the simulator's O and OU differ from AMD's).
        let amd_only = TrustAnchors::amd().unwrap();
        let e = Crl::verify(&amd_only, &forged).unwrap_err();
        assert_eq!(e.code(), "crl-issuer", "{e}");
        let e = Crl::verify(&amd_only, b"not a crl").unwrap_err();
        assert_eq!(e.code(), "crl-malformed");
        assert!(Crl::looks_like_crl(c.der()));
        assert!(!Crl::looks_like_crl(&sim.ark_der));
    }

    #[test]
    fn an_older_crl_never_supersedes_a_newer_one() {
        let (sim, _) = sims();
        let old = crl(sim, &[SimCa::Ask], -10, 30);
        let new = crl(sim, &[], -1, 30);
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        assert!(!new.supersedes(&new));
        // Whatever the order they are given in, the newest is used.
        let r = Revocation::new(FAIL_BOTH, [new.clone(), old.clone()]);
        assert_eq!(r.check(&endorsement(sim), now()), Ok(None));
        let r = Revocation::new(FAIL_BOTH, [old, new]);
        assert_eq!(r.check(&endorsement(sim), now()), Ok(None));
    }

    #[test]
    fn a_revoked_intermediate_is_refused_even_by_a_stale_crl() {
        let (sim, _) = sims();
        let e = endorsement(sim);
        for c in [
            crl(sim, &[SimCa::Ask], -1, 30),
            crl(sim, &[SimCa::Ask], -60, -30),
        ] {
            let err = Revocation::new(WARN_BOTH, [c])
                .check(&e, now())
                .unwrap_err();
            assert_eq!(err.code(), "revoked", "{err}");
            assert!(err.to_string().contains("ASK"), "{err}");
        }
        // The ASVK revoked does not touch a VCEK chain.
        let c = crl(sim, &[SimCa::Asvk], -1, 30);
        assert_eq!(Revocation::new(FAIL_BOTH, [c]).check(&e, now()), Ok(None));
    }

    #[test]
    fn a_stale_crl_fails_or_warns_as_the_policy_says() {
        let (sim, _) = sims();
        let e = endorsement(sim);
        let stale = crl(sim, &[], -60, -30);
        let err = Revocation::new(RevocationPolicy::default(), [stale.clone()])
            .check(&e, now())
            .unwrap_err();
        assert_eq!(err.code(), "crl-not-current", "{err}");
        let w = Revocation::new(WARN_BOTH, [stale])
            .check(&e, now())
            .unwrap()
            .expect("a warning");
        assert_eq!(w.code(), "crl-not-current");
        assert!(w.to_string().contains("STALE"), "{w}");
        // Not yet current counts as stale too.
        let future = crl(sim, &[], 1, 30);
        let err = Revocation::new(FAIL_BOTH, [future])
            .check(&e, now())
            .unwrap_err();
        assert_eq!(err.code(), "crl-not-current");
    }

    #[test]
    fn a_missing_crl_warns_by_default_and_fails_when_told() {
        let (sim, other) = sims();
        let e = endorsement(sim);
        let w = Revocation::default()
            .check(&e, now())
            .unwrap()
            .expect("a warning");
        assert_eq!(
            w,
            RevocationWarning::Missing {
                product: Product::Milan,
                test_root: true
            }
        );
        assert!(w.to_string().contains("REVOCATION NOT CHECKED"), "{w}");
        let err = Revocation::new(FAIL_BOTH, []).check(&e, now()).unwrap_err();
        assert_eq!(err.code(), "crl-missing");
        assert!(err.to_string().contains("certs import"), "{err}");
        // Another root's CRL is not this chain's.
        let foreign = Arc::new(
            Crl::verify(
                &anchors(other),
                &other
                    .issue_crl(&[SimCa::Ask], now(), now() + Duration::days(1))
                    .unwrap(),
            )
            .unwrap(),
        );
        let err = Revocation::new(FAIL_BOTH, [foreign])
            .check(&e, now())
            .unwrap_err();
        assert_eq!(err.code(), "crl-missing");
    }

    /// The verifier applies the relying party's CRL although the
    /// certificates carry none, and a CRL in the certificates does not
    /// replace it.
    #[test]
    fn the_verifier_applies_the_held_crl_to_every_chain() {
        let (sim, _) = sims();
        let blob = SimLaunch::new(
            sim,
            &chip(),
            &crate::sim::LaunchValues {
                policy: 0x30000,
                vmpl: 0,
                measurement: [0x4d; 48],
                image_id: [0x49; 16],
                family_id: [0x46; 16],
                guest_svn: 1,
                id_key_digest: [0x1d; 48],
                author_key_digest: [0; 48],
            },
        )
        .unwrap();
        let data = [7u8; 64];
        let raw = blob.report(&data).unwrap();
        let mut certs = CertSet::from_cert_table(&blob.cert_table().unwrap()).unwrap();
        let anchors = anchors(sim);
        let mut expect = Expectations {
            allow_smt: true,
            report_data: Some(data),
            ..Expectations::default()
        };
        let ok = verify(&anchors, &raw, &certs, &expect, now()).expect("accepted");
        assert_eq!(ok.revocation_warning, None);

        expect.revocation = Some(Revocation::default());
        let ok = verify(&anchors, &raw, &certs, &expect, now()).expect("accepted, warned");
        assert_eq!(
            ok.revocation_warning.as_ref().map(|w| w.code()),
            Some("crl-missing")
        );
        assert!(ok
            .notes
            .iter()
            .any(|n| n.contains("REVOCATION NOT CHECKED")));

        expect.revocation = Some(Revocation::new(
            RevocationPolicy::default(),
            [crl(sim, &[SimCa::Ask], -1, 30)],
        ));
        let rej = verify(&anchors, &raw, &certs, &expect, now()).unwrap_err();
        assert_eq!(rej.codes(), ["revoked"]);
        // A clean CRL sent with the certificates changes nothing.
        let t = now();
        certs.crl = Some(sim.issue_crl(&[], t, t + Duration::days(1)).unwrap());
        let rej = verify(&anchors, &raw, &certs, &expect, now()).unwrap_err();
        assert_eq!(rej.codes(), ["revoked"]);
    }
}
