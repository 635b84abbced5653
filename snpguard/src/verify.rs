//! Verification of an attestation report: every rule, every time, each
//! rejection named.
//!
//! The order matters only for what can be trusted: the structure is
//! checked at parse time, then the endorsement chain and the signature;
//! if either fails nothing the report claims is looked at. After that every
//! content rule (VCEK binding, policy, VMPL, TCB, measurement and the other
//! expected values) is evaluated and *all* failures are returned, the first
//! one being the headline.

use std::fmt;
use std::str::FromStr;

use p384::ecdsa::signature::Verifier as _;
use serde::Serialize;
use time::OffsetDateTime;

use crate::certs::{
    CertSet, ChainError, Endorsement, EndorsementCache, KeyKind, Product, Revocation,
    RevocationWarning, TrustAnchors,
};
use crate::report::{Report, ReportError, SigningKey, TcbLayout, TcbParts};

/// What the verifier expects of a report beyond the rules that always
/// hold. The default is the strictest: VMPL 0, no debug, no SMT, no
/// migration agent, and no value pinned.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// The product, when it cannot be derived (it is then checked against
    /// the report and the certificate, never taken on faith).
    pub product: Option<Product>,
    /// Required VMPL.
    pub vmpl: u32,
    /// Accept a guest policy that allows debugging.
    pub allow_debug: bool,
    /// Accept a guest policy that allows SMT.
    pub allow_smt: bool,
    /// Accept a guest policy that allows a migration agent.
    pub allow_migrate_ma: bool,
    /// Require the guest policy to demand a single socket.
    pub require_single_socket: bool,
    /// Minimum ABI version (major, minor) the guest policy must request.
    pub min_abi: Option<(u8, u8)>,
    /// Minimum reported TCB, per component.
    pub min_tcb: Option<MinTcb>,
    /// Per-product TCB floors applied on top of `min_tcb` (a daemon-wide
    /// policy): the effective minimum is the component-wise maximum of
    /// both, and a refusal names which of the two was not met.
    pub tcb_floors: TcbFloors,
    /// Refuse a chain that ends at a test root (one the caller added with
    /// `TrustAnchors::with_test_root`), as `test-root-not-allowed`, before
    /// the signature is looked at.
    pub forbid_test_root: bool,
    /// Require the committed TCB to equal the current one (no provisional
    /// firmware).
    pub strict_tcb: bool,
    /// Expected launch digest.
    pub measurement: Option<[u8; 48]>,
    /// Expected report data.
    pub report_data: Option<[u8; 64]>,
    /// Expected host data.
    pub host_data: Option<[u8; 32]>,
    /// Expected digest of the ID key.
    pub id_key_digest: Option<[u8; 48]>,
    /// Expected digest of the author key.
    pub author_key_digest: Option<[u8; 48]>,
    /// The relying party's own CRLs and revocation policy, applied to the
    /// chain whatever CRL the certificates carry (which is checked too,
    /// never instead). `None`: only a CRL in the certificates is checked.
    pub revocation: Option<Revocation>,
}

/// Minimum TCB components. `fmc` applies to Turin only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MinTcb {
    /// Boot loader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin).
    pub fmc: Option<u8>,
}

/// TCB floors per product (`fmc` only for Turin, where it is required).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcbFloors {
    /// Floor for Milan.
    pub milan: Option<MinTcb>,
    /// Floor for Genoa.
    pub genoa: Option<MinTcb>,
    /// Floor for Turin.
    pub turin: Option<MinTcb>,
}

impl TcbFloors {
    /// The floor of `product`, if one is set.
    pub fn get(&self, product: Product) -> Option<&MinTcb> {
        match product {
            Product::Milan => self.milan.as_ref(),
            Product::Genoa => self.genoa.as_ref(),
            Product::Turin => self.turin.as_ref(),
        }
    }
}

/// A `--min-tcb` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid TCB minimum {0:?}: expected bl=N,tee=N,snp=N,ucode=N[,fmc=N] with N in 0..=255")]
pub struct MinTcbParseError(String);

impl FromStr for MinTcb {
    type Err = MinTcbParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MinTcbParseError(s.to_string());
        let mut m = MinTcb::default();
        let mut seen = [false; 5];
        for item in s.split(',') {
            let (k, v) = item.split_once('=').ok_or_else(err)?;
            let v: u8 = v.trim().parse().map_err(|_| err())?;
            let i = match k.trim() {
                "bl" => {
                    m.bootloader = v;
                    0
                }
                "tee" => {
                    m.tee = v;
                    1
                }
                "snp" => {
                    m.snp = v;
                    2
                }
                "ucode" => {
                    m.microcode = v;
                    3
                }
                "fmc" => {
                    m.fmc = Some(v);
                    4
                }
                _ => return Err(err()),
            };
            if seen[i] {
                return Err(err());
            }
            seen[i] = true;
        }
        if !seen[..4].iter().all(|&x| x) {
            return Err(err());
        }
        Ok(m)
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The report bytes are malformed.
    #[error("malformed report: {0}")]
    Malformed(#[from] ReportError),
    /// KEY_INFO says the report is not signed.
    #[error("report is not signed (KEY_INFO signing key is 'none')")]
    Unsigned,
    /// KEY_INFO.MASK_CHIP_KEY: the firmware did not sign the report.
    #[error("report is not signed: the platform masks the chip key (KEY_INFO.MASK_CHIP_KEY)")]
    ChipKeyMasked,
    /// KEY_INFO names a signing key the ABI reserves.
    #[error("report names reserved signing key {0} in KEY_INFO")]
    ReservedSigningKey(u8),
    /// The product given by the operator contradicts the report's CPUID.
    #[error("product mismatch: {stated} was given but the report's CPUID says {reported}")]
    ProductMismatch {
        /// The product the caller stated.
        stated: Product,
        /// The product the report's CPUID fields identify.
        reported: Product,
    },
    /// The endorsement chain failed.
    #[error("certificate chain: {0}")]
    Chain(#[from] ChainError),
    /// The ECDSA signature does not verify with the endorsement key.
    #[error("signature invalid: the report is not signed by this {0}")]
    Signature(KeyKind),
    /// The endorsement key was issued for another TCB than the reported one.
    #[error("{kind} tcb mismatch: certificate is for {cert}, report says {report}")]
    TcbBinding {
        /// VCEK or VLEK.
        kind: KeyKind,
        /// TCB in the certificate.
        cert: TcbParts,
        /// REPORTED_TCB of the report.
        report: TcbParts,
    },
    /// The VCEK belongs to another chip.
    #[error(
        "hwid mismatch: the VCEK was issued for chip {cert}, the report comes from chip {report}"
    )]
    HwidMismatch {
        /// hwID of the certificate (hex).
        cert: String,
        /// CHIP_ID of the report (hex, trimmed to the certificate's length).
        report: String,
    },
    /// The guest policy allows debugging.
    #[error("policy allows debug (policy {0:#x}); pass --allow-debug only for test guests")]
    PolicyDebug(u64),
    /// The guest policy allows SMT.
    #[error("policy allows SMT (policy {0:#x}); accept it with --allow-smt")]
    PolicySmt(u64),
    /// The guest policy allows a migration agent.
    #[error("policy allows a migration agent (policy {0:#x}); accept it with --allow-migrate-ma")]
    PolicyMigrationAgent(u64),
    /// Single-socket operation was required but not requested by the guest.
    #[error("policy does not require a single socket (policy {0:#x})")]
    PolicySingleSocket(u64),
    /// The guest policy's ABI minimum is lower than required.
    #[error("policy ABI {got_major}.{got_minor} is below the required {min_major}.{min_minor}")]
    PolicyAbi {
        /// Required major.
        min_major: u8,
        /// Required minor.
        min_minor: u8,
        /// Major in the policy.
        got_major: u8,
        /// Minor in the policy.
        got_minor: u8,
    },
    /// The report comes from another VMPL.
    #[error("vmpl mismatch: expected {expected}, report has {got}")]
    Vmpl {
        /// Required VMPL.
        expected: u32,
        /// VMPL in the report.
        got: u32,
    },
    /// COMMITTED_TCB is above CURRENT_TCB, which firmware never produces.
    #[error("malformed tcb: committed {committed} is above current {current}")]
    TcbCommittedAboveCurrent {
        /// Committed TCB.
        committed: TcbParts,
        /// Current TCB.
        current: TcbParts,
    },
    /// REPORTED_TCB is above CURRENT_TCB, which firmware never produces.
    #[error("malformed tcb: reported {reported} is above current {current}")]
    TcbReportedAboveCurrent {
        /// Reported TCB.
        reported: TcbParts,
        /// Current TCB.
        current: TcbParts,
    },
    /// Strict mode: the platform runs provisional (uncommitted) firmware.
    #[error("provisional firmware: current tcb {current} is not committed ({committed}); strict mode requires equality")]
    TcbProvisional {
        /// Committed TCB.
        committed: TcbParts,
        /// Current TCB.
        current: TcbParts,
    },
    /// A Turin report checked against a minimum without an FMC component.
    #[error("tcb minimum has no fmc component, which Turin requires; add fmc=N to the minimum")]
    TcbMinimumIncomplete,
    /// A reported TCB component is below the required minimum.
    #[error("tcb below minimum: {component} is {got}, at least {min} required")]
    TcbBelowMinimum {
        /// Component name (bl, tee, snp, ucode, fmc).
        component: &'static str,
        /// Required minimum.
        min: u8,
        /// Reported value.
        got: u8,
    },
    /// A reported TCB component is below the daemon-wide floor of the
    /// product (as opposed to the record's own minimum).
    #[error(
        "tcb below the daemon-wide {product} floor: {component} is {got}, at least {min} required"
    )]
    TcbBelowFloor {
        /// The product whose floor applies.
        product: Product,
        /// Component name (bl, tee, snp, ucode, fmc).
        component: &'static str,
        /// Required minimum.
        min: u8,
        /// Reported value.
        got: u8,
    },
    /// The endorsement chain ends at a test root, which the expectations
    /// forbid.
    #[error(
        "the endorsement chain ends at a TEST root (a simulated platform), which is not \
         trusted for this report; only a record registered with --allow-test-root accepts it"
    )]
    TestRootNotAllowed,
    /// The launch digest differs.
    #[error("measurement mismatch: expected {expected}, report has {got}")]
    Measurement {
        /// Expected (hex).
        expected: String,
        /// Reported (hex).
        got: String,
    },
    /// REPORT_DATA differs.
    #[error("report_data mismatch: expected {expected}, report has {got}")]
    ReportData {
        /// Expected (hex).
        expected: String,
        /// Reported (hex).
        got: String,
    },
    /// HOST_DATA differs.
    #[error("host_data mismatch: expected {expected}, report has {got}")]
    HostData {
        /// Expected (hex).
        expected: String,
        /// Reported (hex).
        got: String,
    },
    /// ID_KEY_DIGEST differs.
    #[error("id key digest mismatch: expected {expected}, report has {got}")]
    IdKeyDigest {
        /// Expected (hex).
        expected: String,
        /// Reported (hex).
        got: String,
    },
    /// AUTHOR_KEY_DIGEST differs, or no author key signed the ID key.
    #[error("author key digest mismatch: expected {expected}, report has {got}")]
    AuthorKeyDigest {
        /// Expected (hex).
        expected: String,
        /// Reported (hex, or "none" when AUTHOR_KEY_EN is clear).
        got: String,
    },
}

impl Failure {
    /// A stable, machine-readable code for the rule.
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "malformed-report",
            Failure::Unsigned => "unsigned-report",
            Failure::ReservedSigningKey(_) => "reserved-signing-key",
            Failure::ChipKeyMasked => "chip-key-masked",
            Failure::TcbMinimumIncomplete => "tcb-minimum-incomplete",
            Failure::ProductMismatch { .. } => "product-mismatch",
            Failure::Chain(e) => e.code(),
            Failure::Signature(_) => "signature-invalid",
            Failure::TcbBinding { .. } => "tcb-binding-mismatch",
            Failure::HwidMismatch { .. } => "hwid-mismatch",
            Failure::PolicyDebug(_) => "policy-debug",
            Failure::PolicySmt(_) => "policy-smt",
            Failure::PolicyMigrationAgent(_) => "policy-migrate-ma",
            Failure::PolicySingleSocket(_) => "policy-single-socket",
            Failure::PolicyAbi { .. } => "policy-abi",
            Failure::Vmpl { .. } => "vmpl-mismatch",
            Failure::TcbCommittedAboveCurrent { .. } => "tcb-committed-above-current",
            Failure::TcbReportedAboveCurrent { .. } => "tcb-reported-above-current",
            Failure::TcbProvisional { .. } => "tcb-provisional",
            Failure::TcbBelowMinimum { .. } => "tcb-below-minimum",
            Failure::TcbBelowFloor { .. } => "tcb-below-floor",
            Failure::TestRootNotAllowed => "test-root-not-allowed",
            Failure::Measurement { .. } => "measurement-mismatch",
            Failure::ReportData { .. } => "report-data-mismatch",
            Failure::HostData { .. } => "host-data-mismatch",
            Failure::IdKeyDigest { .. } => "id-key-digest-mismatch",
            Failure::AuthorKeyDigest { .. } => "author-key-digest-mismatch",
        }
    }
}

/// A rejected report: one or more broken rules, the first one the headline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    failures: Vec<Failure>,
}

impl Rejection {
    fn one(f: impl Into<Failure>) -> Self {
        Rejection {
            failures: vec![f.into()],
        }
    }

    /// Every broken rule, in the order they were checked (never empty).
    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    /// The headline failure.
    pub fn primary(&self) -> &Failure {
        // A Rejection is only ever built with at least one failure.
        &self.failures[0]
    }

    /// Stable codes of every broken rule.
    pub fn codes(&self) -> Vec<&'static str> {
        self.failures.iter().map(Failure::code).collect()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.primary())?;
        if self.failures.len() > 1 {
            let rest: Vec<&str> = self.failures[1..].iter().map(Failure::code).collect();
            write!(f, " (also: {})", rest.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// An accepted report with what was learned verifying it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The report.
    pub report: Report,
    /// The endorsement key and what its certificate says.
    pub endorsement: Endorsement,
    /// The TCB layout of the product.
    pub layout: TcbLayout,
    /// Accepted-but-notable facts (a test root, provisional firmware).
    pub notes: Vec<String>,
    /// Revocation was not fully checked (no CRL, or a stale one) and the
    /// policy accepted that; also in `notes`.
    pub revocation_warning: Option<RevocationWarning>,
}

/// The TCB layout a product uses.
pub fn tcb_layout(product: Product) -> TcbLayout {
    match product {
        Product::Milan | Product::Genoa => TcbLayout::MilanGenoa,
        Product::Turin => TcbLayout::Turin,
    }
}

/// The product a report's CPUID fields identify (version 3 and later).
pub fn product_from_report(report: &Report) -> Option<Product> {
    report
        .cpuid
        .and_then(|c| Product::from_cpuid(c.family, c.model))
}

fn components_ge(a: &TcbParts, b: &TcbParts) -> bool {
    a.bootloader >= b.bootloader
        && a.tee >= b.tee
        && a.snp >= b.snp
        && a.microcode >= b.microcode
        && a.fmc.unwrap_or(0) >= b.fmc.unwrap_or(0)
}

/// Verifies a raw report against the certificates and the expectations at
/// time `at`, checking the whole endorsement chain.
pub fn verify(
    anchors: &TrustAnchors,
    report: &[u8],
    certs: &CertSet,
    expect: &Expectations,
    at: OffsetDateTime,
) -> Result<Verified, Rejection> {
    let report = Report::parse(report).map_err(Rejection::one)?;
    verify_report(report, expect, at, |kind, hint| {
        crate::certs::verify_endorsement(anchors, certs, kind, hint, at)
    })
}

/// A verifier for a long-running service: the trust anchors plus a cache
/// of endorsement chains already verified (the RSA signatures of a chain
/// are checked once; validity times are checked on every call).
pub struct Verifier {
    anchors: TrustAnchors,
    cache: EndorsementCache,
}

impl Verifier {
    /// Chains remembered by a verifier.
    pub const CACHE_CAPACITY: usize = 1024;

    /// A verifier trusting `anchors`.
    pub fn new(anchors: TrustAnchors) -> Self {
        Verifier {
            anchors,
            cache: EndorsementCache::new(Self::CACHE_CAPACITY),
        }
    }

    /// The trust anchors in use.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// As [`verify`], with cached chains.
    pub fn verify(
        &self,
        report: &[u8],
        certs: &CertSet,
        expect: &Expectations,
        at: OffsetDateTime,
    ) -> Result<Verified, Rejection> {
        let report = Report::parse(report).map_err(Rejection::one)?;
        verify_report(report, expect, at, |kind, hint| {
            self.cache.verify(&self.anchors, certs, kind, hint, at)
        })
    }
}

/// The rules after parsing; `endorse` verifies the chain for a key kind
/// and product hint.
fn verify_report(
    report: Report,
    expect: &Expectations,
    at: OffsetDateTime,
    endorse: impl FnOnce(KeyKind, Option<Product>) -> Result<Endorsement, ChainError>,
) -> Result<Verified, Rejection> {
    if report.key_info.mask_chip_key() {
        return Err(Rejection::one(Failure::ChipKeyMasked));
    }
    let kind = match report.key_info.signing_key() {
        SigningKey::Vcek => KeyKind::Vcek,
        SigningKey::Vlek => KeyKind::Vlek,
        SigningKey::None => return Err(Rejection::one(Failure::Unsigned)),
        SigningKey::Reserved(n) => return Err(Rejection::one(Failure::ReservedSigningKey(n))),
    };

    // The CPUID fields are only a hint until the signature is checked, but
    // a stated product that contradicts them is already a rejection.
    let reported_product = product_from_report(&report);
    if let (Some(stated), Some(reported)) = (expect.product, reported_product) {
        if stated != reported {
            return Err(Rejection::one(Failure::ProductMismatch {
                stated,
                reported,
            }));
        }
    }
    let hint = expect.product.or(reported_product);
    let endorsement = endorse(kind, hint).map_err(Rejection::one)?;
    if endorsement.test_root && expect.forbid_test_root {
        return Err(Rejection::one(Failure::TestRootNotAllowed));
    }
    let revocation_warning = match &expect.revocation {
        Some(r) => r.check(&endorsement, at).map_err(Rejection::one)?,
        None => None,
    };

    let sig = p384::ecdsa::Signature::from_slice(&report.signature.to_p384_bytes())
        .map_err(|_| Rejection::one(Failure::Signature(kind)))?;
    endorsement
        .key
        .verify(report.signed_bytes(), &sig)
        .map_err(|_| Rejection::one(Failure::Signature(kind)))?;

    let layout = tcb_layout(endorsement.product);
    let mut failures = Vec::new();
    check_binding(&report, &endorsement, layout, &mut failures);
    check_policy(&report, expect, &mut failures);
    if report.vmpl != expect.vmpl {
        failures.push(Failure::Vmpl {
            expected: expect.vmpl,
            got: report.vmpl,
        });
    }
    let mut notes = Vec::new();
    check_tcb(&report, expect, layout, &mut failures, &mut notes);
    check_floor(&report, expect, endorsement.product, layout, &mut failures);
    check_values(&report, expect, &mut failures);

    if !failures.is_empty() {
        return Err(Rejection { failures });
    }
    if endorsement.test_root {
        notes.push("endorsed by a TEST root, not by AMD".to_string());
    }
    if endorsement.kind == KeyKind::Vcek && report.chip_id_masked() {
        notes.push("CHIP_ID is masked by the host; the VCEK's hwID was not compared".to_string());
    }
    if let Some(w) = &revocation_warning {
        notes.push(w.to_string());
    }
    Ok(Verified {
        report,
        endorsement,
        layout,
        notes,
        revocation_warning,
    })
}

fn check_binding(r: &Report, e: &Endorsement, layout: TcbLayout, out: &mut Vec<Failure>) {
    let reported = r.reported_tcb.parts(layout);
    let cert = TcbParts {
        bootloader: e.tcb.bootloader,
        tee: e.tcb.tee,
        snp: e.tcb.snp,
        microcode: e.tcb.microcode,
        fmc: match layout {
            TcbLayout::Turin => Some(e.tcb.fmc.unwrap_or(0)),
            TcbLayout::MilanGenoa => None,
        },
    };
    if cert != reported {
        out.push(Failure::TcbBinding {
            kind: e.kind,
            cert,
            report: reported,
        });
    }
    // A VLEK is not chip-specific; a VCEK must name the reporting chip
    // unless the host masks CHIP_ID (all zeros; noted on acceptance).
    if e.kind == KeyKind::Vcek && !r.chip_id_masked() {
        let hwid = e.hwid.as_deref().unwrap_or(&[]);
        let n = hwid.len().min(r.chip_id.len());
        let same = !hwid.is_empty()
            && hwid[..n] == r.chip_id[..n]
            && r.chip_id[n..].iter().all(|&b| b == 0);
        if !same {
            out.push(Failure::HwidMismatch {
                cert: hex::encode(hwid),
                report: hex::encode(&r.chip_id[..n.max(8)]),
            });
        }
    }
}

fn check_policy(r: &Report, x: &Expectations, out: &mut Vec<Failure>) {
    let p = r.policy;
    if p.debug() && !x.allow_debug {
        out.push(Failure::PolicyDebug(p.0));
    }
    if p.smt() && !x.allow_smt {
        out.push(Failure::PolicySmt(p.0));
    }
    if p.migrate_ma() && !x.allow_migrate_ma {
        out.push(Failure::PolicyMigrationAgent(p.0));
    }
    if x.require_single_socket && !p.single_socket() {
        out.push(Failure::PolicySingleSocket(p.0));
    }
    if let Some((min_major, min_minor)) = x.min_abi {
        if (p.abi_major(), p.abi_minor()) < (min_major, min_minor) {
            out.push(Failure::PolicyAbi {
                min_major,
                min_minor,
                got_major: p.abi_major(),
                got_minor: p.abi_minor(),
            });
        }
    }
}

fn check_tcb(
    r: &Report,
    x: &Expectations,
    layout: TcbLayout,
    out: &mut Vec<Failure>,
    notes: &mut Vec<String>,
) {
    let current = r.current_tcb.parts(layout);
    let committed = r.committed_tcb.parts(layout);
    let reported = r.reported_tcb.parts(layout);
    if !components_ge(&current, &committed) {
        out.push(Failure::TcbCommittedAboveCurrent { committed, current });
    } else if current != committed {
        if x.strict_tcb {
            out.push(Failure::TcbProvisional { committed, current });
        } else {
            notes.push(format!(
                "provisional firmware: current tcb {current} above committed {committed}"
            ));
        }
    }
    if !components_ge(&current, &reported) {
        out.push(Failure::TcbReportedAboveCurrent { reported, current });
    }
    if let Some(min) = &x.min_tcb {
        let mut checks = vec![
            ("bl", min.bootloader, reported.bootloader),
            ("tee", min.tee, reported.tee),
            ("snp", min.snp, reported.snp),
            ("ucode", min.microcode, reported.microcode),
        ];
        match (min.fmc, layout) {
            (Some(fmc), _) => checks.insert(0, ("fmc", fmc, reported.fmc.unwrap_or(0))),
            (None, TcbLayout::Turin) => out.push(Failure::TcbMinimumIncomplete),
            (None, TcbLayout::MilanGenoa) => {}
        }
        for (component, min, got) in checks {
            if got < min {
                out.push(Failure::TcbBelowMinimum {
                    component,
                    min,
                    got,
                });
            }
        }
    }
}

/// The daemon-wide floor of `product`, checked apart from the record's
/// minimum so a refusal says which one was not met.
fn check_floor(
    r: &Report,
    x: &Expectations,
    product: Product,
    layout: TcbLayout,
    out: &mut Vec<Failure>,
) {
    let Some(floor) = x.tcb_floors.get(product) else {
        return;
    };
    let reported = r.reported_tcb.parts(layout);
    let mut checks = vec![
        ("bl", floor.bootloader, reported.bootloader),
        ("tee", floor.tee, reported.tee),
        ("snp", floor.snp, reported.snp),
        ("ucode", floor.microcode, reported.microcode),
    ];
    if let Some(fmc) = floor.fmc {
        checks.insert(0, ("fmc", fmc, reported.fmc.unwrap_or(0)));
    }
    for (component, min, got) in checks {
        if got < min {
            out.push(Failure::TcbBelowFloor {
                product,
                component,
                min,
                got,
            });
        }
    }
}

fn check_values(r: &Report, x: &Expectations, out: &mut Vec<Failure>) {
    /// An expected value (if pinned), the reported one, and the failure.
    type Pinned<'a> = (Option<&'a [u8]>, &'a [u8], fn(String, String) -> Failure);
    let pinned: [Pinned; 4] = [
        (
            x.measurement.as_ref().map(|v| &v[..]),
            &r.measurement,
            |expected, got| Failure::Measurement { expected, got },
        ),
        (
            x.report_data.as_ref().map(|v| &v[..]),
            &r.report_data,
            |expected, got| Failure::ReportData { expected, got },
        ),
        (
            x.host_data.as_ref().map(|v| &v[..]),
            &r.host_data,
            |expected, got| Failure::HostData { expected, got },
        ),
        (
            x.id_key_digest.as_ref().map(|v| &v[..]),
            &r.id_key_digest,
            |expected, got| Failure::IdKeyDigest { expected, got },
        ),
    ];
    for (want, got, make) in pinned {
        if let Some(want) = want {
            if want != got {
                out.push(make(hex::encode(want), hex::encode(got)));
            }
        }
    }
    if let Some(want) = &x.author_key_digest {
        if !r.key_info.author_key_en() {
            out.push(Failure::AuthorKeyDigest {
                expected: hex::encode(want),
                got: "none (AUTHOR_KEY_EN is clear)".to_string(),
            });
        } else if want != &r.author_key_digest {
            out.push(Failure::AuthorKeyDigest {
                expected: hex::encode(want),
                got: hex::encode(r.author_key_digest),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_tcb_parses() {
        let m: MinTcb = "bl=3,tee=0,snp=8,ucode=115".parse().expect("parses");
        assert_eq!(
            m,
            MinTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: None
            }
        );
        let m: MinTcb = "fmc=1,bl=1,tee=0,snp=2,ucode=71".parse().expect("parses");
        assert_eq!(m.fmc, Some(1));
        for bad in [
            "",
            "bl=1",
            "bl=1,tee=0,snp=2",
            "bl=1,tee=0,snp=2,ucode=256",
            "bl=1,tee=0,snp=2,ucode=1,bl=2",
            "bl=1,tee=0,snp=2,ucode=x",
            "bl=1,tee=0,snp=2,ucode=1,foo=3",
        ] {
            assert!(bad.parse::<MinTcb>().is_err(), "{bad:?} must not parse");
        }
    }
}
