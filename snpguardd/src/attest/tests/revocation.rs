//! The daemon's own ARK CRL (review item M5): imported only when a
//! trusted root signed it and it is newer than the one held, applied to
//! every chain whatever the request carries, and a missing or stale CRL
//! treated as `[revocation]` says.

use snpguard::certs::{CrlPolicy, RevocationPolicy};
use snpguard_testkit::sim::SimCa;
use time::Duration;

use super::*;
use crate::attest::certs::CertImportError;

fn crl(
    p: &SimPlatform,
    revoked: &[SimCa],
    from_days: i64,
    to_days: i64,
    now: OffsetDateTime,
) -> Vec<u8> {
    p.issue_crl(
        revoked,
        now + Duration::days(from_days),
        now + Duration::days(to_days),
    )
    .unwrap()
}

fn with_policy(missing: CrlPolicy, stale: CrlPolicy) -> Option<Fixture> {
    fixture_config(Box::new(NoKds), false, true, |c| {
        c.revocation = RevocationPolicy { missing, stale }
    })
}

#[test]
fn a_crl_not_signed_by_the_root_is_refused_at_import() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now();
    let rogue = SimPlatform::generate(Product::Milan, TCB, &hwid(0x11)).unwrap();
    let e = f
        .attestor
        .import_certificates(&named(&[(
            "rogue.crl",
            &crl(&rogue, &[SimCa::Ask], -1, 30, now),
        )]))
        .unwrap_err();
    assert!(
        matches!(&e, CertImportError::Crl { file, code: "crl-signature", .. } if file == "rogue.crl"),
        "{e}"
    );
    assert!(f.attestor.held_crls().unwrap().is_empty(), "nothing stored");
    // The guest still attests: nothing was revoked.
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
}

#[test]
fn an_older_crl_never_replaces_a_newer_one() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now();
    let newer = crl(platform(), &[SimCa::Ask], -1, 30, now);
    let older = crl(platform(), &[], -10, 30, now);
    let got = f
        .attestor
        .import_certificates(&named(&[("new.crl", &newer)]))
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].crl.as_ref().map(|c| c.revoked), Some(1));
    let e = f
        .attestor
        .import_certificates(&named(&[("old.crl", &older)]))
        .unwrap_err();
    assert!(matches!(e, CertImportError::CrlNotNewer { .. }), "{e}");
    assert!(e.to_string().contains("never replaces a newer"), "{e}");
    let held = f.attestor.held_crls().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].revoked, 1, "the newer CRL is kept");
    // The same CRL again is accepted and changes nothing.
    f.attestor
        .import_certificates(&named(&[("new.crl", &newer)]))
        .unwrap();
    // A newer, clean one replaces it: the ASK is no longer listed.
    assert_eq!(
        f.attest(&f.guest()).unwrap_err().code,
        "attestation-rejected"
    );
    let newest = crl(platform(), &[], 0, 30, now);
    f.attestor
        .import_certificates(&named(&[("newest.crl", &newest)]))
        .unwrap();
    assert_eq!(f.attestor.held_crls().unwrap()[0].revoked, 0);
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
}

#[test]
fn the_held_crl_is_applied_whatever_the_request_carries() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now();
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
    f.attestor
        .import_certificates(&named(&[(
            "crl.der",
            &crl(platform(), &[SimCa::Ask], -1, 30, now),
        )]))
        .unwrap();
    let before = f.registry.get(&f.rec.id).unwrap();
    let e = f.attest(&f.guest()).unwrap_err();
    assert_eq!(e.code, "attestation-rejected");
    let u = f.last_unverified();
    assert_eq!(u.codes, ["revoked"], "{u:?}");
    assert!(u.detail.contains("ASK"), "{u:?}");
    let after = f.registry.get(&f.rec.id).unwrap();
    assert_eq!(
        after.attestations_ok, before.attestations_ok,
        "nothing released"
    );
}

#[test]
fn a_stale_crl_refuses_under_the_default_fail_policy() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now();
    f.attestor
        .import_certificates(&named(&[("crl.der", &crl(platform(), &[], -1, 1, now))]))
        .unwrap();
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
    f.clock.advance(2 * 86_400);
    let e = f.attest(&f.guest()).unwrap_err();
    assert_eq!(e.code, "attestation-rejected");
    assert_eq!(f.last_unverified().codes, ["crl-not-current"]);

    // Under stale = "warn" the same state passes, with the warning noted.
    let Some(w) = with_policy(CrlPolicy::Warn, CrlPolicy::Warn) else {
        return;
    };
    let now = w.clock.now();
    w.attestor
        .import_certificates(&named(&[("crl.der", &crl(platform(), &[], -1, 1, now))]))
        .unwrap();
    w.clock.advance(2 * 86_400);
    assert_eq!(w.attest(&w.guest()).unwrap(), VMK);
    assert!(
        w.last_audit().notes.iter().any(|n| n.contains("STALE CRL")),
        "{:?}",
        w.last_audit().notes
    );
}

#[test]
fn a_missing_crl_warns_by_default_and_fails_when_configured() {
    let Some(f) = fixture() else { return };
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
    assert!(
        f.last_audit()
            .notes
            .iter()
            .any(|n| n.contains("REVOCATION NOT CHECKED")),
        "{:?}",
        f.last_audit().notes
    );
    let Some(strict) = with_policy(CrlPolicy::Fail, CrlPolicy::Fail) else {
        return;
    };
    let e = strict.attest(&strict.guest()).unwrap_err();
    assert_eq!(e.code, "attestation-rejected");
    let u = strict.last_unverified();
    assert_eq!(u.codes, ["crl-missing"]);
    assert!(u.detail.contains("certs import"), "{u:?}");
    let now = strict.clock.now();
    strict
        .attestor
        .import_certificates(&named(&[("crl.der", &crl(platform(), &[], -1, 30, now))]))
        .unwrap();
    assert_eq!(strict.attest(&strict.guest()).unwrap(), VMK);
}

/// A daemon with test roots refuses to start while a record registered
/// without --allow-test-root exists, naming it; it starts when every
/// record carries the flag.
#[test]
fn test_roots_with_a_production_record_refuse_to_start() {
    let Some(f) = fixture() else { return };
    let prod = register_with(&f.registry, f.dir.path(), "prod", Some(min_tcb()), false).unwrap();
    let ark = write(f.dir.path(), "ark2.der", &platform().ark_der);
    let roots = vec![TestRoot {
        product: Product::Milan,
        ark_path: ark,
    }];
    let state = f.dir.path().join("state");
    let e = Attestor::new(
        f.registry.clone(),
        &config(&state, roots.clone(), false),
        Box::new(NoKds),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("prod ({})", prod.id))
            && msg.contains("--allow-test-root")
            && msg.contains("remove test_roots")
            && !msg.contains("web ("),
        "{msg}"
    );
    // Without test roots the same records are fine.
    Attestor::new(
        f.registry.clone(),
        &config(&state, Vec::new(), false),
        Box::new(NoKds),
    )
    .unwrap();
    f.registry.delete(&prod.id).unwrap();
    Attestor::new(
        f.registry.clone(),
        &config(&state, roots, false),
        Box::new(NoKds),
    )
    .unwrap();
}
