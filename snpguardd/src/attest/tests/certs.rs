//! Where the certificates of a report come from (review items M3, L7):
//! nothing is looked up for a report whose structure refuses it, KDS
//! lookups are remembered per (chip, TCB) and rate-limited, a VCEK from
//! KDS is cached only once it verified a signature, the cache is bounded
//! and can be purged, and a source whose certificates do not endorse the
//! report gives way to the next (a bad cached VCEK is evicted).

use std::sync::Mutex;

use snpguard::report::TcbParts;

use super::*;
use crate::attest::certs::{self as held, CertFilter, HeldSource};
use crate::attest::kds::{KDS_FETCH_BURST, KDS_NEGATIVE_TTL_SECS};
use crate::store::{Store, Tree};

/// What a [`FakeKds`] was asked: hwID and TCB per lookup.
type Asked = Arc<Mutex<Vec<(Vec<u8>, TcbParts)>>>;

/// A KDS stand-in: serves `answer` for every lookup and records what was
/// asked.
struct FakeKds {
    asked: Asked,
    answer: Result<Vec<u8>, KdsError>,
}

impl KdsClient for FakeKds {
    fn fetch_vcek(&self, _: Product, hwid: &[u8], tcb: &TcbParts) -> Result<Vec<u8>, KdsError> {
        self.asked.lock().unwrap().push((hwid.to_vec(), *tcb));
        self.answer.clone()
    }

    fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError> {
        Err(KdsError::Status {
            url: crate::attest::kds::crl_path(product),
            status: 404,
        })
    }
}

/// A trusting fixture with KDS enabled behind a [`FakeKds`] answering
/// `answer`, and the simulated ASK imported (KDS serves only VCEKs).
fn kds_fixture(answer: Result<Vec<u8>, KdsError>) -> Option<(Fixture, Asked)> {
    let asked: Asked = Arc::default();
    let kds = FakeKds {
        asked: asked.clone(),
        answer,
    };
    let f = fixture_with(Box::new(kds), true, true)?;
    f.attestor
        .import_certificates(&named(&[("ask.der", &platform().ask_der)]))
        .unwrap();
    Some((f, asked))
}

fn asked(a: &Asked) -> usize {
    a.lock().unwrap().len()
}

fn not_found() -> KdsError {
    KdsError::Status {
        url: "/vcek".into(),
        status: 404,
    }
}

fn sim_tcb() -> TcbParts {
    TcbParts {
        bootloader: TCB.bootloader,
        tee: TCB.tee,
        snp: TCB.snp,
        microcode: TCB.microcode,
        fmc: None,
    }
}

fn kds_cached(f: &Fixture) -> Vec<CertSummary> {
    f.attestor
        .held_certificates()
        .unwrap()
        .into_iter()
        .filter(|c| c.source == "kds-cache")
        .collect()
}

/// Attests with the report of `g` changed by `patch` (then signed again
/// by `g.signer`); returns the attestor's answer.
fn attest_patched(
    f: &Fixture,
    g: &Guest<'_>,
    patch: impl Fn(&mut [u8; REPORT_SIZE]),
) -> Result<snpguard_protocol::attest::AttestResponse, AttestError> {
    let nonce = f.nonce();
    let (mut req, _, report) = f.request(g, &nonce);
    let mut r: [u8; REPORT_SIZE] = report.try_into().unwrap();
    patch(&mut r);
    g.signer.sign_report(&mut r, SimKey::Vcek).unwrap();
    req.report = b64(&r);
    f.attestor.attest(req, PEER)
}

fn expect_refused_patched(
    f: &Fixture,
    g: &Guest<'_>,
    code: &str,
    patch: impl Fn(&mut [u8; REPORT_SIZE]),
) -> AuditEntry {
    let ring = f.registry.unverified_refusals(usize::MAX).unwrap().len();
    let err = attest_patched(f, g, patch).expect_err("must be refused");
    assert_eq!(err.code, "attestation-rejected", "{err:?}");
    // Refused before the signature verified: in the unverified ring;
    // after it: in the audit trail.
    let audit = if f.registry.unverified_refusals(usize::MAX).unwrap().len() > ring {
        f.last_unverified()
    } else {
        f.last_audit()
    };
    assert_eq!(audit.result, code, "{audit:?}");
    audit
}

fn key_info(v: u32) -> impl Fn(&mut [u8; REPORT_SIZE]) {
    move |r| r[0x48..0x4C].copy_from_slice(&v.to_le_bytes())
}

#[test]
fn a_report_whose_key_info_refuses_it_causes_no_lookup() {
    let Some((f, kds)) = kds_fixture(Ok(platform().vcek_der.clone())) else {
        return;
    };
    let mut g = f.guest();
    g.table = None;
    // MASK_CHIP_KEY (author key bit kept), a VLEK, no key, a reserved one.
    for (info, code) in [
        (1 | 2, "chip-key-masked"),
        (1 | (1 << 2), "missing-vlek"),
        (1 | (7 << 2), "unsigned-report"),
        (1 | (3 << 2), "reserved-signing-key"),
    ] {
        expect_refused_patched(&f, &g, code, key_info(info));
        assert_eq!(asked(&kds), 0, "KDS asked for KEY_INFO {info:#x}");
    }
    assert!(kds_cached(&f).is_empty());
    // A report that is worth it is looked up.
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(asked(&kds), 1);
}

#[test]
fn a_masked_chip_id_is_never_looked_up() {
    let Some((f, kds)) = kds_fixture(Ok(platform().vcek_der.clone())) else {
        return;
    };
    let mut g = f.guest();
    g.table = None;
    g.chip_id = vec![0; 64];
    f.expect_unverified(&g, "missing-vcek");
    assert_eq!(asked(&kds), 0);
    assert!(
        f.last_unverified()
            .notes
            .iter()
            .any(|n| n.contains("masked")),
        "{:?}",
        f.last_unverified()
    );
}

#[test]
fn a_kds_vcek_is_cached_only_after_it_verified_the_signature() {
    let Some((f, kds)) = kds_fixture(Ok(platform().vcek_der.clone())) else {
        return;
    };
    // A report for chip 0x11 signed by another chip's key: KDS serves
    // the genuine VCEK of 0x11, which does not verify it.
    let mut forged = f.guest();
    forged.table = None;
    forged.signer = other_platform();
    f.expect_unverified(&forged, "signature-invalid");
    assert_eq!(f.last_unverified().cert_source.as_deref(), Some("kds"));
    assert!(
        kds_cached(&f).is_empty(),
        "cached without a verified signature"
    );
    // The genuine guest: the answer is remembered, not fetched again,
    // and cached now that it verified.
    let mut g = f.guest();
    g.table = None;
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(asked(&kds), 1);
    let cached = kds_cached(&f);
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(cached[0].tcb.as_deref(), Some("3.0.8.115"));
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds-cache"));
}

#[test]
fn a_failed_kds_lookup_is_remembered_per_chip_and_tcb() {
    let Some((f, kds)) = kds_fixture(Err(not_found())) else {
        return;
    };
    let mut g = f.guest();
    g.table = None;
    f.expect_unverified(&g, "missing-vcek");
    assert!(f
        .last_unverified()
        .notes
        .iter()
        .any(|n| n.contains("HTTP 404")));
    f.expect_unverified(&g, "missing-vcek");
    let notes = f.last_unverified().notes;
    assert!(
        notes.iter().any(|n| n.contains("asking again in")),
        "{notes:?}"
    );
    assert_eq!(asked(&kds), 1, "KDS asked again at once");
    // Another chip is its own lookup.
    let mut other = f.guest();
    other.table = None;
    other.chip_id = hwid(0x33);
    f.expect_unverified(&other, "missing-vcek");
    assert_eq!(asked(&kds), 2);
    // After the negative entry expired, KDS is asked again.
    f.clock.advance(KDS_NEGATIVE_TTL_SECS as i64);
    f.expect_unverified(&g, "missing-vcek");
    assert_eq!(asked(&kds), 3);
}

#[test]
fn kds_lookups_are_rate_limited() {
    let Some((f, kds)) = kds_fixture(Err(not_found())) else {
        return;
    };
    let burst = KDS_FETCH_BURST as u8;
    for i in 0..=burst {
        let mut g = f.guest();
        g.table = None;
        g.chip_id = hwid(0x80 + i);
        f.expect_unverified(&g, "missing-vcek");
    }
    // One fetch of the budget went to AMD's Milan CRL (the daemon holds
    // none), which shares the gate; its failure is remembered, so only
    // one.
    assert_eq!(asked(&kds), usize::from(burst) - 1);
    let notes = f.last_unverified().notes;
    assert!(
        notes.iter().any(|n| n.contains("too many KDS lookups")),
        "{notes:?}"
    );
}

#[test]
fn the_kds_cache_is_bounded() {
    let Some(f) = fixture() else { return };
    let store = f.registry.store();
    for i in 0..5u8 {
        held::cache_vcek_bounded(store, Product::Milan, &hwid(i), &sim_tcb(), b"der", 3).unwrap();
        let n = store
            .entries(Tree::Certs)
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(b"kds/"))
            .count();
        assert_eq!(n, usize::from(i + 1).min(3));
    }
    // The first in key order made room (a hwID's first byte is its seed).
    let kept = |store: &dyn Store| -> Vec<String> {
        store
            .entries(Tree::Certs)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    let expected: Vec<String> = (2..5u8)
        .map(|i| format!("kds/vcek/Milan/{}/3.0.8.115", hex::encode(hwid(i))))
        .collect();
    assert_eq!(kept(store), expected);
    // Caching a held key again evicts nothing.
    held::cache_vcek_bounded(store, Product::Milan, &hwid(2), &sim_tcb(), b"der", 3).unwrap();
    assert_eq!(kept(store), expected);
}

#[test]
fn held_certificates_are_removed_by_filter() {
    let Some(f) = fixture() else { return };
    f.attestor
        .import_certificates(&named(&[
            ("ask.der", &platform().ask_der),
            ("vcek.der", &platform().vcek_der),
        ]))
        .unwrap();
    let store = f.registry.store();
    held::cache_vcek(
        store,
        Product::Milan,
        &hwid(0x22),
        &sim_tcb(),
        &other_platform().vcek_der,
    )
    .unwrap();
    store
        .put(
            Tree::Certs,
            b"kds/vcek/Milan/00ff/1.2.3.4",
            b"not a certificate",
        )
        .unwrap();
    assert_eq!(f.attestor.held_certificates().unwrap().len(), 3);

    let parse = |s, k, p, c, t| CertFilter::parse(s, k, p, c, t).unwrap();
    // Nothing matches: nothing removed.
    let none = f
        .attestor
        .remove_certificates(&parse("", "", "genoa", "", ""))
        .unwrap();
    assert!(none.is_empty());
    // The KDS cache, the unparsable entry included.
    let removed = f
        .attestor
        .remove_certificates(&parse("kds-cache", "", "", "", ""))
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].chip_id, Some(hex::encode(&hwid(0x22)[..8])));
    assert_eq!(
        store
            .get(Tree::Certs, b"kds/vcek/Milan/00ff/1.2.3.4")
            .unwrap(),
        None
    );
    // A VCEK by chip id prefix and TCB.
    let chip = hex::encode(&hwid(0x11)[..3]).to_uppercase();
    let removed = f
        .attestor
        .remove_certificates(&parse("", "vcek", "milan", &chip, "3.0.8.115"))
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].role, CertRole::Vcek);
    let left = f.attestor.held_certificates().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].role, CertRole::Ask);
    // Everything.
    let removed = f
        .attestor
        .remove_certificates(&CertFilter::default())
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert!(f.attestor.held_certificates().unwrap().is_empty());
}

#[test]
fn remove_filters_are_checked() {
    assert_eq!(
        CertFilter::parse("imported", "ask", "turin", "", "1.2.3.4.5"),
        Ok(CertFilter {
            source: Some(HeldSource::Imported),
            role: Some(CertRole::Ask),
            product: Some(Product::Turin),
            chip_id: None,
            tcb: Some("1.2.3.4.5".into()),
            crl: false,
        })
    );
    for (s, k, p, c, t, needle) in [
        ("kds", "", "", "", "", "source"),
        ("", "ARK", "", "", "", "kind"),
        ("", "", "naples", "", "", "product"),
        ("", "", "", "0x12", "", "chip_id"),
        ("", "", "", &"a".repeat(129)[..], "", "chip_id"),
        ("", "", "", "", "1.2.3", "tcb"),
        ("", "", "", "", "1.2.3.256", "tcb"),
    ] {
        let e = CertFilter::parse(s, k, p, c, t).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn a_table_that_does_not_chain_gives_way_to_held_certificates() {
    let Some(f) = fixture() else { return };
    f.attestor
        .import_certificates(&named(&[
            ("ask.der", &platform().ask_der),
            ("vcek.der", &platform().vcek_der),
        ]))
        .unwrap();
    // The host hands out another platform's chain.
    let mut g = f.guest();
    g.table = Some(table_of(other_platform()));
    assert_eq!(f.attest(&g).unwrap(), VMK);
    let audit = f.last_audit();
    assert_eq!(audit.cert_source.as_deref(), Some("imported"));
    assert!(
        audit
            .notes
            .iter()
            .any(|n| n.starts_with("the request's certificates did not endorse")),
        "{audit:?}"
    );
}

#[test]
fn a_table_whose_vcek_does_not_verify_gives_way_to_kds() {
    let Some((f, kds)) = kds_fixture(Ok(platform().vcek_der.clone())) else {
        return;
    };
    // A VCEK of another chip of the same platform: its chain holds, the
    // report's signature does not verify with it.
    let neighbour = platform().another_chip(&hwid(0x33)).unwrap();
    let mut g = f.guest();
    g.table = Some(cert_table(&[(GUID_VCEK, &neighbour.vcek_der)]));
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds"));
    assert_eq!(asked(&kds), 1);
}

#[test]
fn a_table_whose_tcb_does_not_match_the_report_gives_way_to_kds() {
    let Some((f, kds)) = kds_fixture(Err(not_found())) else {
        return;
    };
    // The report claims SNP SPL 9 everywhere; the table's VCEK is for 8.
    let mut g = f.guest();
    g.table = Some(table_of(platform()));
    let spl9 = |r: &mut [u8; REPORT_SIZE]| {
        let tcb = tcb_bytes(Product::Milan, SimTcb { snp: 9, ..TCB }).to_le_bytes();
        for at in [0x38, 0x180, 0x1E0, 0x1F0] {
            r[at..at + 8].copy_from_slice(&tcb);
        }
    };
    let audit = expect_refused_patched(&f, &g, "tcb-binding-mismatch", spl9);
    assert_eq!(audit.cert_source.as_deref(), Some("table"));
    let asked_for = kds.lock().unwrap().clone();
    assert_eq!(
        asked_for.len(),
        1,
        "KDS was not asked after the table failed"
    );
    assert_eq!(asked_for[0].0, hwid(0x11));
    assert_eq!(asked_for[0].1.snp, 9);
}

#[test]
fn a_cached_vcek_that_does_not_chain_is_evicted() {
    let Some((f, kds)) = kds_fixture(Ok(platform().vcek_der.clone())) else {
        return;
    };
    // The cache holds a VCEK that does not chain to the trusted root
    // under chip 0x11's key.
    held::cache_vcek(
        f.registry.store(),
        Product::Milan,
        &hwid(0x11),
        &sim_tcb(),
        &other_platform().vcek_der,
    )
    .unwrap();
    let mut g = f.guest();
    g.table = None;
    assert_eq!(f.attest(&g).unwrap(), VMK);
    let audit = f.last_audit();
    assert_eq!(audit.cert_source.as_deref(), Some("kds"));
    assert!(
        audit.notes.iter().any(|n| n == "evicted the cached VCEK"),
        "{audit:?}"
    );
    assert_eq!(asked(&kds), 1);
    // The good VCEK took its place.
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds-cache"));
}

#[test]
fn a_forged_signature_does_not_evict_a_good_cached_vcek() {
    let Some(f) = fixture() else { return };
    f.attestor
        .import_certificates(&named(&[("ask.der", &platform().ask_der)]))
        .unwrap();
    held::cache_vcek(
        f.registry.store(),
        Product::Milan,
        &hwid(0x11),
        &sim_tcb(),
        &platform().vcek_der,
    )
    .unwrap();
    let mut forged = f.guest();
    forged.table = None;
    forged.signer = other_platform();
    f.expect_unverified(&forged, "signature-invalid");
    assert_eq!(kds_cached(&f).len(), 1);
    let mut g = f.guest();
    g.table = None;
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds-cache"));
}

#[test]
fn held_intermediates_fill_a_table_without_them() {
    let Some(f) = fixture() else { return };
    f.attestor
        .import_certificates(&named(&[("ask.der", &platform().ask_der)]))
        .unwrap();
    let mut g = f.guest();
    g.table = Some(cert_table(&[(GUID_VCEK, &platform().vcek_der)]));
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("table"));
}
