//! `verify_ca`: an AMD CA certificate checked on its own (what an operator
//! import of AMD's cert_chain needs), and a second simulated chip under
//! the same root.

use snpguard::certs::Cert;
use snpguard::certs::{
    verify_ca, verify_endorsement, CertRole, CertSet, ChainError, KeyKind, Product, TrustAnchors,
};
use snpguard::sim::{SimPlatform, SimTcb};
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
