//! `verify_ca`: an AMD CA certificate checked on its own (what an operator
//! import of AMD's cert_chain needs), and a second simulated chip under
//! the same root; the relying party's CRLs against simulated chains
//! (`mod crl`).

use snpguard::certs::Cert;
use snpguard::certs::{
    verify_ca, verify_endorsement, CertRole, CertSet, ChainError, KeyKind, Product, TrustAnchors,
};
use snpguard_testkit::sim::{SimPlatform, SimTcb};
use time::OffsetDateTime;

const TCB: SimTcb = SimTcb {
    bootloader: 3,
    tee: 0,
    snp: 20,
    microcode: 209,
    fmc: 0,
};

fn sim(fill: u8) -> SimPlatform {
    SimPlatform::generate(Product::Milan, TCB, &[fill; 64]).expect("sim")
}

fn trusting(p: &SimPlatform) -> TrustAnchors {
    TrustAnchors::amd()
        .expect("amd")
        .with_test_root(Product::Milan, &p.ark_der)
        .expect("test root")
}

fn cert(der: &[u8]) -> Cert {
    Cert::from_pem_or_der(der).expect("cert")
}

#[test]
fn intermediates_and_roots_of_a_trusted_platform_verify() {
    let p = sim(1);
    let anchors = trusting(&p);
    let now = OffsetDateTime::now_utc();
    for (der, role) in [
        (&p.ask_der, CertRole::Ask),
        (&p.asvk_der, CertRole::Asvk),
        (&p.ark_der, CertRole::Ark),
    ] {
        let ca = verify_ca(&anchors, &cert(der), now).expect("verifies");
        assert_eq!(
            (ca.role, ca.product, ca.test_root),
            (role, Product::Milan, true)
        );
    }
    // AMD's own built-in ASKs and ARKs verify against the pinned root.
    let amd = TrustAnchors::amd().expect("amd");
    let ask = amd.builtin_ask(Product::Genoa).expect("ask").clone();
    let ca = verify_ca(&amd, &ask, now).expect("AMD ASK");
    assert_eq!(
        (ca.role, ca.product, ca.test_root),
        (CertRole::Ask, Product::Genoa, false)
    );
    let ark = amd.amd_ark(Product::Turin).expect("ark").clone();
    assert_eq!(verify_ca(&amd, &ark, now).expect("ARK").role, CertRole::Ark);
}

#[test]
fn intermediates_of_an_untrusted_platform_are_refused() {
    let trusted = sim(1);
    let other = sim(2);
    let anchors = trusting(&trusted);
    let now = OffsetDateTime::now_utc();
    let e = verify_ca(&anchors, &cert(&other.ask_der), now).expect_err("foreign ASK");
    assert_eq!(e.code(), "signature-invalid", "{e}");
    let e = verify_ca(&anchors, &cert(&other.ark_der), now).expect_err("foreign ARK");
    assert!(matches!(e, ChainError::ArkNotPinned { .. }), "{e}");
    // Without the test root, even the simulated platform's own ASK fails.
    let amd = TrustAnchors::amd().expect("amd");
    assert!(verify_ca(&amd, &cert(&trusted.ask_der), now).is_err());
    // An endorsement key is not a CA.
    let e = verify_ca(&anchors, &cert(&trusted.vcek_der), now).expect_err("VCEK");
    assert_eq!(e.code(), "product-unknown", "{e}");
}

#[test]
fn certificates_outside_their_validity_are_refused() {
    let p = sim(1);
    let anchors = trusting(&p);
    let far = OffsetDateTime::from_unix_timestamp(4_102_444_800).expect("2100");
    let e = verify_ca(&anchors, &cert(&p.ask_der), far).expect_err("expired");
    assert_eq!(e.code(), "cert-expired", "{e}");
}

#[test]
fn another_chip_shares_the_chain_but_not_the_vcek() {
    let p = sim(1);
    let q = p.another_chip(&[9; 64]).expect("second chip");
    assert_eq!((&q.ark_der, &q.ask_der), (&p.ark_der, &p.ask_der));
    assert_ne!(q.vcek_der, p.vcek_der);
    let anchors = trusting(&p);
    let set = CertSet {
        vcek: Some(cert(&q.vcek_der)),
        ask: Some(cert(&q.ask_der)),
        ..CertSet::default()
    };
    let e = verify_endorsement(
        &anchors,
        &set,
        KeyKind::Vcek,
        None,
        OffsetDateTime::now_utc(),
    )
    .expect("the second chip's VCEK chains to the same root");
    assert_eq!(e.hwid.as_deref(), Some(&[9u8; 64][..]));
    assert!(p.another_chip(&[9; 8]).is_err(), "Milan hwID is 64 bytes");
}

/// The relying party's CRLs (snpguard::certs::crl) against simulated
/// chains: who may sign one, which one wins, what a stale, missing or
/// revoking one does, and that the verifier applies the held one.
mod crl {
    use std::sync::OnceLock;

    use time::{Duration, OffsetDateTime};

    use std::sync::Arc;

    use snpguard::certs::{
        verify_endorsement, Cert, CertSet, Crl, CrlPolicy, Endorsement, KeyKind, Product,
        Revocation, RevocationPolicy, RevocationWarning, TrustAnchors,
    };
    use snpguard::verify::{verify, Expectations};
    use snpguard_testkit::sim::{LaunchValues, SimCa, SimLaunch, SimPlatform, SimTcb};

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
            &LaunchValues {
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
