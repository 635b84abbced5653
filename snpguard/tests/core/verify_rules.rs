//! Every content rule of the verifier, broken exactly once on a copy of a
//! REAL AMD report that is then re-signed by a simulated platform (a test
//! ARK/ASK/VCEK generated here, trusted only through
//! `TrustAnchors::with_test_root`). Each test asserts the exact list of
//! failed rules, so a mutation that broke a second rule by accident fails.

use std::sync::OnceLock;

use snpguard::certs::{Cert, CertSet, KeyKind, Product, TrustAnchors};
use snpguard::report::{Report, TcbLayout, REPORT_SIZE};
use snpguard::verify::{self, Expectations, TcbFloors, Verified};
use snpguard_testkit::sim::{SimKey, SimPlatform, SimTcb};
use snpguard_testkit::testdata;

type Bytes = [u8; REPORT_SIZE];

struct Case {
    name: &'static str,
    product: Product,
}

const MILAN: Case = Case {
    name: "milan-virtee",
    product: Product::Milan,
};
const TURIN: Case = Case {
    name: "turin-oak",
    product: Product::Turin,
};
const GENOA: Case = Case {
    name: "genoa-oak",
    product: Product::Genoa,
};

const POLICY: usize = 0x08;
const VMPL: usize = 0x30;
const CURRENT_TCB: usize = 0x38;
const KEY_INFO: usize = 0x48;
const REPORT_DATA: usize = 0x50;
const MEASUREMENT: usize = 0x90;
const HOST_DATA: usize = 0xC0;
const ID_KEY_DIGEST: usize = 0xE0;
const AUTHOR_KEY_DIGEST: usize = 0x110;
const REPORTED_TCB: usize = 0x180;
const CPUID_FAMILY: usize = 0x188;
const CHIP_ID: usize = 0x1A0;
const COMMITTED_TCB: usize = 0x1E0;

/// A simulated platform with the real report's chip ID and reported TCB,
/// generated once per product.
fn platform(case: &Case, report: &Report) -> &'static SimPlatform {
    static P: [OnceLock<SimPlatform>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let idx = match case.product {
        Product::Milan => 0,
        Product::Genoa => 1,
        Product::Turin => 2,
    };
    P[idx].get_or_init(|| {
        let t = report.reported_tcb.parts(verify::tcb_layout(case.product));
        let tcb = SimTcb {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc.unwrap_or(0),
        };
        let hwid = &report.chip_id[..case.product.hwid_len()];
        SimPlatform::generate(case.product, tcb, hwid).expect("generate simulated platform")
    })
}

struct Bench {
    platform: &'static SimPlatform,
    bytes: Bytes,
    product: Product,
}

fn bench(case: &Case) -> Option<Bench> {
    let bytes = testdata::read(&format!("reports/{}/report.bin", case.name))?;
    let report = Report::parse(&bytes).expect("real report parses");
    let platform = platform(case, &report);
    let bytes: Bytes = bytes.try_into().expect("size");
    Some(Bench {
        platform,
        bytes,
        product: case.product,
    })
}

impl Bench {
    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::amd()
            .expect("amd anchors")
            .with_test_root(self.product, &self.platform.ark_der)
            .expect("test root")
    }

    fn certs(&self, key: SimKey) -> CertSet {
        let c = |d: &[u8]| Some(Cert::from_pem_or_der(d).expect("sim cert"));
        let mut set = CertSet {
            ark: c(&self.platform.ark_der),
            ..CertSet::default()
        };
        match key {
            SimKey::Vcek => {
                set.ask = c(&self.platform.ask_der);
                set.vcek = c(&self.platform.vcek_der);
            }
            SimKey::Vlek => {
                set.asvk = c(&self.platform.asvk_der);
                set.vlek = c(&self.platform.vlek_der);
            }
        }
        set
    }

    /// Mutates a copy of the real report, re-signs it with `key` and
    /// verifies it against the chain of `chain`.
    fn run_with(
        &self,
        key: SimKey,
        chain: SimKey,
        expect: &Expectations,
        mutate: impl FnOnce(&mut Bytes),
    ) -> Result<Verified, verify::Rejection> {
        let mut b = self.bytes;
        mutate(&mut b);
        self.platform.sign_report(&mut b, key).expect("sign");
        verify::verify(
            &self.anchors(),
            &b,
            &self.certs(chain),
            expect,
            time::OffsetDateTime::now_utc(),
        )
    }

    fn run(
        &self,
        key: SimKey,
        expect: &Expectations,
        mutate: impl FnOnce(&mut Bytes),
    ) -> Result<Verified, verify::Rejection> {
        self.run_with(key, key, expect, mutate)
    }

    /// Codes of the failed rules (empty when accepted).
    fn codes(&self, expect: &Expectations, mutate: impl FnOnce(&mut Bytes)) -> Vec<&'static str> {
        match self.run(SimKey::Vcek, expect, mutate) {
            Ok(_) => vec![],
            Err(r) => r.codes(),
        }
    }
}

const NONE: [&str; 0] = [];

fn smt() -> Expectations {
    Expectations {
        allow_smt: true,
        ..Expectations::default()
    }
}

fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn set_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Byte of the SNP SPL in a TCB_VERSION.
fn snp_byte(p: Product) -> usize {
    match verify::tcb_layout(p) {
        TcbLayout::MilanGenoa => 6,
        TcbLayout::Turin => 3,
    }
}

#[test]
fn resigned_real_reports_are_accepted_through_the_test_root_only() {
    for case in [MILAN, TURIN, GENOA] {
        let Some(b) = bench(&case) else { return };
        let v = b.run(SimKey::Vcek, &smt(), |_| {}).expect("accepted");
        assert!(v.endorsement.test_root);
        assert!(v.notes.iter().any(|n| n.contains("TEST")), "{:?}", v.notes);
        assert_eq!(v.endorsement.product, case.product);
        // The same bytes against AMD's roots alone: refused.
        let mut bytes = b.bytes;
        b.platform
            .sign_report(&mut bytes, SimKey::Vcek)
            .expect("sign");
        let rej = verify::verify(
            &TrustAnchors::amd().expect("amd"),
            &bytes,
            &b.certs(SimKey::Vcek),
            &smt(),
            time::OffsetDateTime::now_utc(),
        )
        .expect_err("a test root is not trusted by default");
        assert_eq!(rej.codes(), ["ark-not-pinned"], "{rej}");
    }
}

fn with_policy_bit(bit: u32) -> impl FnOnce(&mut Bytes) {
    move |r: &mut Bytes| {
        let p = get_u64(r, POLICY) | (1 << bit);
        set_u64(r, POLICY, p);
    }
}

#[test]
fn policy_rules() {
    let Some(b) = bench(&MILAN) else { return };
    assert_eq!(b.codes(&smt(), with_policy_bit(19)), ["policy-debug"]);
    assert_eq!(b.codes(&smt(), with_policy_bit(18)), ["policy-migrate-ma"]);
    assert_eq!(b.codes(&Expectations::default(), |_| {}), ["policy-smt"]);
    let allow_all = Expectations {
        allow_debug: true,
        allow_migrate_ma: true,
        ..smt()
    };
    assert_eq!(b.codes(&allow_all, with_policy_bit(19)), NONE);
    assert_eq!(b.codes(&allow_all, with_policy_bit(18)), NONE);
    let single = Expectations {
        require_single_socket: true,
        ..smt()
    };
    assert_eq!(b.codes(&single, |_| {}), ["policy-single-socket"]);
    assert_eq!(b.codes(&single, with_policy_bit(20)), NONE);
    let abi = Expectations {
        min_abi: Some((1, 55)),
        ..smt()
    };
    assert_eq!(b.codes(&abi, |_| {}), ["policy-abi"]);
    assert_eq!(
        b.codes(&abi, |r| {
            r[POLICY] = 55;
            r[POLICY + 1] = 1;
        }),
        NONE
    );
}

#[test]
fn vmpl_rule() {
    let Some(b) = bench(&MILAN) else { return };
    assert_eq!(b.codes(&smt(), |r| set_u32(r, VMPL, 1)), ["vmpl-mismatch"]);
    let vmpl1 = Expectations { vmpl: 1, ..smt() };
    assert_eq!(b.codes(&vmpl1, |r| set_u32(r, VMPL, 1)), NONE);
    assert_eq!(b.codes(&vmpl1, |_| {}), ["vmpl-mismatch"]);
}

#[test]
fn tcb_binding_and_consistency() {
    for case in [MILAN, TURIN] {
        let Some(b) = bench(&case) else { return };
        let s = snp_byte(case.product);
        // Reported TCB lowered: no longer the TCB the VCEK was issued for.
        assert_eq!(
            b.codes(&smt(), |r| r[REPORTED_TCB + s] -= 1),
            ["tcb-binding-mismatch"],
            "{}",
            case.name
        );
        // Committed above current: firmware never reports that.
        assert_eq!(
            b.codes(&smt(), |r| r[COMMITTED_TCB + s] = r[CURRENT_TCB + s] + 1),
            ["tcb-committed-above-current"],
            "{}",
            case.name
        );
        // Provisional firmware: current above committed; accepted with a
        // note unless strict.
        let provisional = |r: &mut Bytes| {
            let current = get_u64(r, CURRENT_TCB);
            set_u64(r, COMMITTED_TCB, current);
            r[CURRENT_TCB + 7] += 1;
        };
        let v = b
            .run(SimKey::Vcek, &smt(), provisional)
            .expect("provisional accepted");
        assert!(
            v.notes.iter().any(|n| n.contains("provisional")),
            "{:?}",
            v.notes
        );
        let strict = Expectations {
            strict_tcb: true,
            ..smt()
        };
        assert_eq!(
            b.codes(&strict, provisional),
            ["tcb-provisional"],
            "{}",
            case.name
        );
    }
}

#[test]
fn reported_tcb_above_current_is_malformed() {
    let Some(b) = bench(&MILAN) else { return };
    // Current and committed lowered below the reported (and VCEK) TCB.
    assert_eq!(
        b.codes(&smt(), |r| {
            let lower = get_u64(r, REPORTED_TCB) - (1 << 56); // microcode - 1
            set_u64(r, CURRENT_TCB, lower);
            set_u64(r, COMMITTED_TCB, lower);
        }),
        ["tcb-reported-above-current"]
    );
}

#[test]
fn tcb_minimums_per_component() {
    let Some(b) = bench(&TURIN) else { return };
    // turin-oak reports fmc=0 bl=1 tee=0 snp=2 ucode=71.
    let min = |s: &str| Expectations {
        min_tcb: Some(s.parse().expect("min tcb")),
        ..smt()
    };
    assert_eq!(
        b.codes(&min("fmc=0,bl=1,tee=0,snp=2,ucode=71"), |_| {}),
        NONE
    );
    // On Turin the FMC is part of the TCB: a minimum must say what it is.
    assert_eq!(
        b.codes(&min("bl=1,tee=0,snp=2,ucode=71"), |_| {}),
        ["tcb-minimum-incomplete"]
    );
    for spec in [
        "fmc=1,bl=1,tee=0,snp=2,ucode=71",
        "fmc=0,bl=2,tee=0,snp=2,ucode=71",
        "fmc=0,bl=1,tee=1,snp=2,ucode=71",
        "fmc=0,bl=1,tee=0,snp=3,ucode=71",
        "fmc=0,bl=1,tee=0,snp=2,ucode=72",
    ] {
        assert_eq!(b.codes(&min(spec), |_| {}), ["tcb-below-minimum"], "{spec}");
    }
}

#[test]
fn daemon_floor_applies_on_top_of_the_minimum_and_is_named() {
    let Some(b) = bench(&TURIN) else { return };
    // turin-oak reports fmc=0 bl=1 tee=0 snp=2 ucode=71.
    let x = |min: Option<&str>, turin: Option<&str>, milan: Option<&str>| Expectations {
        min_tcb: min.map(|s| s.parse().expect("min tcb")),
        tcb_floors: TcbFloors {
            turin: turin.map(|s| s.parse().expect("floor")),
            milan: milan.map(|s| s.parse().expect("floor")),
            genoa: None,
        },
        ..smt()
    };
    let at = "fmc=0,bl=1,tee=0,snp=2,ucode=71";
    let above = "fmc=0,bl=1,tee=0,snp=3,ucode=71";
    assert_eq!(b.codes(&x(None, Some(at), None), |_| {}), NONE);
    assert_eq!(b.codes(&x(Some(at), Some(at), None), |_| {}), NONE);
    // No record minimum at all: the floor alone refuses.
    assert_eq!(
        b.codes(&x(None, Some(above), None), |_| {}),
        ["tcb-below-floor"]
    );
    // The record's minimum is met, the floor is not.
    assert_eq!(
        b.codes(&x(Some(at), Some(above), None), |_| {}),
        ["tcb-below-floor"]
    );
    // The floor is met, the record's minimum is not.
    assert_eq!(
        b.codes(&x(Some(above), Some(at), None), |_| {}),
        ["tcb-below-minimum"]
    );
    // Both: each named.
    assert_eq!(
        b.codes(&x(Some(above), Some(above), None), |_| {}),
        ["tcb-below-minimum", "tcb-below-floor"]
    );
    let e = b
        .run(SimKey::Vcek, &x(None, Some(above), None), |_| {})
        .expect_err("below the floor");
    assert_eq!(
        e.primary().to_string(),
        "tcb below the daemon-wide turin floor: snp is 2, at least 3 required"
    );
    // Another product's floor does not apply.
    assert_eq!(
        b.codes(&x(None, None, Some("bl=9,tee=9,snp=9,ucode=255")), |_| {}),
        NONE
    );
    // The FMC of a Turin floor counts.
    assert_eq!(
        b.codes(
            &x(None, Some("fmc=1,bl=1,tee=0,snp=2,ucode=71"), None),
            |_| {}
        ),
        ["tcb-below-floor"]
    );
}

#[test]
fn a_test_root_is_refused_when_forbidden_before_anything_else() {
    let Some(b) = bench(&MILAN) else { return };
    let forbid = Expectations {
        forbid_test_root: true,
        ..smt()
    };
    assert_eq!(b.codes(&forbid, |_| {}), ["test-root-not-allowed"]);
    // Even a report that breaks content rules is refused for its root
    // alone: nothing it claims is looked at.
    assert_eq!(
        b.codes(&forbid, |r| r[MEASUREMENT] ^= 1),
        ["test-root-not-allowed"]
    );
    assert_eq!(b.codes(&smt(), |_| {}), NONE);
}

#[test]
fn hwid_binding() {
    let Some(b) = bench(&MILAN) else { return };
    assert_eq!(b.codes(&smt(), |r| r[CHIP_ID + 63] ^= 1), ["hwid-mismatch"]);
    // MASK_CHIP_ID: the host reports zeros; accepted, and said so.
    let v = b
        .run(SimKey::Vcek, &smt(), |r| r[CHIP_ID..CHIP_ID + 64].fill(0))
        .expect("masked chip id accepted");
    assert!(
        v.notes.iter().any(|n| n.contains("CHIP_ID is masked")),
        "{:?}",
        v.notes
    );
    // MASK_CHIP_KEY: the firmware did not sign; never accepted.
    assert_eq!(b.codes(&smt(), |r| r[KEY_INFO] |= 0x2), ["chip-key-masked"]);
    // Turin: 8-byte hwID; the rest of CHIP_ID must be zero.
    let Some(b) = bench(&TURIN) else { return };
    assert_eq!(b.codes(&smt(), |r| r[CHIP_ID] ^= 1), ["hwid-mismatch"]);
    assert_eq!(b.codes(&smt(), |r| r[CHIP_ID + 8] = 1), ["hwid-mismatch"]);
}

#[test]
fn expected_values() {
    let Some(b) = bench(&GENOA) else { return };
    let real = Report::parse(&b.bytes).expect("parses");
    let expect = Expectations {
        measurement: Some(real.measurement),
        report_data: Some(real.report_data),
        host_data: Some(real.host_data),
        id_key_digest: Some(real.id_key_digest),
        ..smt()
    };
    assert_eq!(b.codes(&expect, |_| {}), NONE);
    assert_eq!(
        b.codes(&expect, |r| r[MEASUREMENT] ^= 1),
        ["measurement-mismatch"]
    );
    assert_eq!(
        b.codes(&expect, |r| r[REPORT_DATA + 63] ^= 1),
        ["report-data-mismatch"]
    );
    assert_eq!(
        b.codes(&expect, |r| r[HOST_DATA] ^= 1),
        ["host-data-mismatch"]
    );
    assert_eq!(
        b.codes(&expect, |r| r[ID_KEY_DIGEST + 10] ^= 1),
        ["id-key-digest-mismatch"]
    );
    // Author key: the digest only counts when AUTHOR_KEY_EN is set.
    let digest = [0x5au8; 48];
    let author = Expectations {
        author_key_digest: Some(digest),
        ..smt()
    };
    let with_author = |r: &mut Bytes| {
        r[AUTHOR_KEY_DIGEST..AUTHOR_KEY_DIGEST + 48].copy_from_slice(&digest);
        r[KEY_INFO] |= 1;
    };
    assert_eq!(b.codes(&author, with_author), NONE);
    assert_eq!(
        b.codes(&author, |r| {
            r[AUTHOR_KEY_DIGEST..AUTHOR_KEY_DIGEST + 48].copy_from_slice(&digest)
        }),
        ["author-key-digest-mismatch"]
    );
    assert_eq!(
        b.codes(&author, |r| {
            with_author(r);
            r[AUTHOR_KEY_DIGEST] ^= 1;
        }),
        ["author-key-digest-mismatch"]
    );
}

#[test]
fn every_content_failure_is_reported() {
    let Some(b) = bench(&MILAN) else { return };
    let expect = Expectations {
        measurement: Some([0; 48]),
        ..Expectations::default()
    };
    assert_eq!(
        b.codes(&expect, |r| {
            set_u32(r, VMPL, 2);
            r[POLICY + 2] |= 0x08; // debug
        }),
        [
            "policy-debug",
            "policy-smt",
            "vmpl-mismatch",
            "measurement-mismatch"
        ]
    );
}

#[test]
fn signing_key_rules() {
    let Some(b) = bench(&MILAN) else { return };
    assert_eq!(
        b.codes(&smt(), |r| r[KEY_INFO] |= 7 << 2),
        ["unsigned-report"]
    );
    assert_eq!(
        b.codes(&smt(), |r| r[KEY_INFO] |= 3 << 2),
        ["reserved-signing-key"]
    );
    // KEY_INFO says VLEK, only a VCEK chain is given.
    assert_eq!(b.codes(&smt(), |r| r[KEY_INFO] |= 1 << 2), ["missing-vlek"]);
    // A VLEK-signed report through the ASVK: accepted (a VLEK has no hwID).
    let v = b
        .run(SimKey::Vlek, &smt(), |r| r[KEY_INFO] |= 1 << 2)
        .expect("vlek accepted");
    assert_eq!(v.endorsement.kind, KeyKind::Vlek);
    // Signed by the VCEK but claiming VLEK: the VLEK does not verify it.
    let rej = b
        .run_with(SimKey::Vcek, SimKey::Vlek, &smt(), |r| {
            r[KEY_INFO] |= 1 << 2
        })
        .expect_err("wrong key");
    assert_eq!(rej.codes(), ["signature-invalid"]);
}

#[test]
fn cpuid_product_must_match_the_certificate() {
    let Some(b) = bench(&TURIN) else { return };
    // CPUID rewritten to Genoa (family 19h model 11h) on a Turin chain.
    assert_eq!(
        b.codes(&smt(), |r| {
            r[CPUID_FAMILY] = 0x19;
            r[CPUID_FAMILY + 1] = 0x11;
        }),
        ["product-mismatch"]
    );
    let stated = Expectations {
        product: Some(Product::Milan),
        ..smt()
    };
    assert_eq!(b.codes(&stated, |_| {}), ["product-mismatch"]);
}
