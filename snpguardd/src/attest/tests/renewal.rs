//! Launches and renewal through the attestor: a pending launch releases
//! nothing until approved, a retired one nothing any more; a renewal is
//! stored only when its report passes every rule and binds the artifacts.

use snpguard_protocol::attest::{
    renewal_report_data, signed_launch_report_data, RenewRequest, SignedLaunchRequest,
    MAX_PENDING_LAUNCHES,
};

use super::*;
use crate::service::{LaunchRequest, LaunchState};

const NEW_CMDLINE: &str = "console=ttyS0 quiet";

/// New boot artifacts.
struct Artifacts {
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: String,
}

fn artifacts() -> Artifacts {
    Artifacts {
        kernel: random(40_000),
        initrd: random(60_000),
        cmdline: NEW_CMDLINE.into(),
    }
}

impl Fixture {
    /// Adds `a` as a pending launch, as an operator would; returns its id
    /// and measurement.
    fn add_pending(&self, a: &Artifacts) -> (String, String) {
        let added = self
            .registry
            .add_launch(
                &self.rec.id,
                LaunchRequest {
                    kernel: Box::new(std::io::Cursor::new(a.kernel.clone())),
                    initrd: Box::new(std::io::Cursor::new(a.initrd.clone())),
                    cmdline: a.cmdline.clone(),
                    origin: "operator".into(),
                },
            )
            .unwrap();
        assert!(added.created);
        (added.launch, added.measurement)
    }

    /// A renewal of `a` by guest `g`; `bound` are the artifacts the
    /// report's REPORT_DATA binds (normally `a`).
    fn renewal(&self, g: &Guest<'_>, a: &Artifacts, bound: &Artifacts) -> RenewRequest {
        let nonce = self.nonce();
        let data = renewal_report_data(&nonce, &bound.kernel, &bound.initrd, &bound.cmdline);
        let r = Fixture::report(g, &data);
        RenewRequest {
            nonce: encode_nonce(&nonce),
            report: b64(&r),
            cert_table: g.table.as_ref().map(|t| b64(t)),
            kernel: b64(&a.kernel),
            initrd: b64(&a.initrd),
            cmdline: a.cmdline.clone(),
            signed: true,
        }
    }

    fn launch_states(&self) -> Vec<(String, LaunchState)> {
        self.registry
            .get(&self.rec.id)
            .unwrap()
            .launches
            .into_iter()
            .map(|l| (l.id, l.state))
            .collect()
    }

    /// Expects a renewal refused with audit code `code`, storing nothing.
    fn expect_renewal_refused(&self, req: RenewRequest, code: &str) -> AttestError {
        let before = self.launch_states();
        let blobs = std::fs::read_dir(self.dir.path().join("state/blobs"))
            .unwrap()
            .count();
        let err = self.attestor.renew(req, PEER).expect_err("must be refused");
        assert_eq!(self.launch_states(), before, "nothing stored");
        assert_eq!(
            std::fs::read_dir(self.dir.path().join("state/blobs"))
                .unwrap()
                .count(),
            blobs,
            "no blob left behind"
        );
        let audit = self.last_audit();
        assert_eq!(
            audit.codes.first().map(String::as_str),
            Some(code),
            "{audit:?}"
        );
        err
    }
}

#[test]
fn a_pending_launch_releases_nothing_until_approved() {
    let Some(f) = fixture() else { return };
    let (launch, measurement) = f.add_pending(&artifacts());
    let mut g = f.guest();
    g.measurement = arr(&measurement);
    f.expect_refused(&g, "launch-pending");
    let audit = f.last_audit();
    assert_eq!(audit.launch.as_deref(), Some(launch.as_str()));
    assert!(audit.detail.contains("pending approval"), "{audit:?}");
    assert!(audit.detail.contains("the report verified"), "{audit:?}");
    // The old launch still gets its key.
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);

    f.registry.approve_launch(&f.rec.id, &launch).unwrap();
    assert_eq!(f.attest(&g).unwrap(), VMK);
    let audit = f.last_audit();
    assert_eq!(audit.result, "ok");
    assert_eq!(audit.launch.as_deref(), Some(launch.as_str()));
}

#[test]
fn a_pending_launch_that_also_breaks_a_rule_names_both() {
    let Some(f) = fixture() else { return };
    let (_, measurement) = f.add_pending(&artifacts());
    let mut g = f.guest();
    g.measurement = arr(&measurement);
    g.vmpl = 1;
    f.expect_refused(&g, "launch-pending");
    assert!(
        f.last_audit().codes.iter().any(|c| c == "vmpl-mismatch"),
        "{:?}",
        f.last_audit()
    );
}

#[test]
fn a_retired_launch_releases_nothing() {
    let Some(f) = fixture() else { return };
    let (launch, measurement) = f.add_pending(&artifacts());
    f.registry.approve_launch(&f.rec.id, &launch).unwrap();
    f.registry.retire_launch(&f.rec.id, "1").unwrap();
    f.expect_refused(&f.guest(), "launch-retired");
    assert_eq!(f.last_audit().launch.as_deref(), Some("1"));
    let mut g = f.guest();
    g.measurement = arr(&measurement);
    assert_eq!(f.attest(&g).unwrap(), VMK);
}

#[test]
fn a_renewal_is_stored_as_a_pending_launch() {
    let Some(f) = fixture() else { return };
    let a = artifacts();
    let req = f.renewal(&f.guest(), &a, &a);
    let (nonce, report) = (
        snpguard_protocol::attest::decode_nonce(&req.nonce).unwrap(),
        snpguard_protocol::attest::unb64(&req.report, 1184).unwrap(),
    );
    let resp = f.attestor.renew(req, PEER).unwrap();
    // Signed by the author key in the guest's report.
    let message = snpguard_protocol::attest::renewal_message(&nonce, &report, &resp);
    snpguard_protocol::attest::verify_signature(&report, &message, resp.signature.as_ref())
        .expect("the renewal response is signed by the report's author key");
    assert_eq!(resp.record, f.rec.id);
    assert_eq!(resp.launch, "2");
    let rec = f.registry.get(&f.rec.id).unwrap();
    let l = rec.launches.iter().find(|l| l.id == "2").unwrap();
    assert_eq!(l.state, LaunchState::Pending);
    assert_eq!(l.measurement, resp.measurement);
    assert_eq!(l.cmdline, NEW_CMDLINE);
    assert_eq!(l.origin, "guest 127.0.0.1");
    // Nothing changed for attestation: the record's launch is the old one.
    assert_eq!(rec.measurement, f.rec.measurement);
    let audit = f.last_audit();
    assert_eq!(audit.result, "renewal-stored");
    assert!(audit.detail.contains("launch 2"), "{audit:?}");

    // The new measurement gets nothing until approved.
    let mut g = f.guest();
    g.measurement = arr(&resp.measurement);
    f.expect_refused(&g, "launch-pending");

    // The same artifacts again: the same launch, no duplicate.
    let again = f
        .attestor
        .renew(f.renewal(&f.guest(), &a, &a), PEER)
        .unwrap();
    assert_eq!(
        (&again.record, &again.launch, &again.measurement),
        (&resp.record, &resp.launch, &resp.measurement)
    );
    assert_eq!(f.registry.get(&f.rec.id).unwrap().launches.len(), 2);

    // A guest cannot approve itself: a renewal from the pending launch is
    // refused like its attestation.
    let b = Artifacts {
        cmdline: "console=ttyS0 other".into(),
        ..artifacts()
    };
    f.expect_renewal_refused(f.renewal(&g, &b, &b), "launch-pending");

    f.registry.approve_launch(&f.rec.id, &resp.launch).unwrap();
    assert_eq!(f.attest(&g).unwrap(), VMK);
}

#[test]
fn a_renewal_not_bound_to_its_artifacts_is_refused() {
    let Some(f) = fixture() else { return };
    let a = artifacts();
    let other = artifacts();
    let err = f.expect_renewal_refused(f.renewal(&f.guest(), &a, &other), "report-data-mismatch");
    assert_eq!((err.status, err.code), (403, "attestation-rejected"));
    // Only the command line differs.
    let cmd = Artifacts {
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: "console=ttyS0 init=/bin/sh".into(),
    };
    f.expect_renewal_refused(f.renewal(&f.guest(), &cmd, &a), "report-data-mismatch");
    // A key-release binding is no renewal binding.
    let nonce = f.nonce();
    let (_, pk) = seal::generate_keypair();
    let g = f.guest();
    let r = Fixture::report(&g, &report_data(&nonce, &pk));
    let req = RenewRequest {
        nonce: encode_nonce(&nonce),
        report: b64(&r),
        cert_table: g.table.as_ref().map(|t| b64(t)),
        kernel: b64(&a.kernel),
        initrd: b64(&a.initrd),
        cmdline: a.cmdline.clone(),
        signed: true,
    };
    f.expect_renewal_refused(req, "report-data-mismatch");
}

#[test]
fn a_renewal_whose_report_fails_verification_is_refused() {
    let Some(f) = fixture() else { return };
    let a = artifacts();
    // Signed by another chip's VCEK.
    let mut g = f.guest();
    g.signer = other_platform();
    let before = (f.launch_states(), f.counters(), f.audit_len());
    let err = f
        .attestor
        .renew(f.renewal(&g, &a, &a), PEER)
        .expect_err("refused");
    assert_eq!(err.code, "attestation-rejected");
    // Decided before anything was authenticated: the unverified ring only.
    assert_eq!(f.last_unverified().codes, ["signature-invalid"]);
    assert_eq!((f.launch_states(), f.counters(), f.audit_len()), before);
    // A measurement the record does not have.
    let mut g = f.guest();
    g.measurement[5] ^= 1;
    f.expect_renewal_refused(f.renewal(&g, &a, &a), "measurement-mismatch");
    // Debug policy.
    let mut g = f.guest();
    g.policy |= POLICY_DEBUG;
    f.expect_renewal_refused(f.renewal(&g, &a, &a), "policy-debug");
    // A disabled record takes no renewal.
    f.registry.set_enabled(&f.rec.id, false).unwrap();
    f.expect_renewal_refused(f.renewal(&f.guest(), &a, &a), "record-disabled");
    f.registry.set_enabled(&f.rec.id, true).unwrap();
    // A nonce is single-use for renewals too.
    let req = f.renewal(&f.guest(), &a, &a);
    f.attestor.renew(req.clone(), PEER).unwrap();
    let err = f.attestor.renew(req, PEER).expect_err("reused nonce");
    assert_eq!(err.code, "nonce-reused");
    assert_eq!(f.last_unverified().codes, ["nonce-reused"]);
}

#[test]
fn renewals_stop_at_the_pending_limit_and_bad_input_is_a_protocol_error() {
    let Some(f) = fixture() else { return };
    for n in 0..MAX_PENDING_LAUNCHES {
        let a = Artifacts {
            cmdline: format!("{NEW_CMDLINE} n={n}"),
            ..artifacts()
        };
        f.attestor
            .renew(f.renewal(&f.guest(), &a, &a), PEER)
            .unwrap();
    }
    let a = artifacts();
    let err = f.expect_renewal_refused(f.renewal(&f.guest(), &a, &a), "too-many-pending");
    assert_eq!((err.status, err.code), (409, "too-many-pending"));
    assert!(err.message.contains("approve or discard"), "{err:?}");

    let mut req = f.renewal(&f.guest(), &a, &a);
    req.kernel = "%%% not base64".into();
    let err = f.attestor.renew(req, PEER).expect_err("bad base64");
    assert_eq!((err.status, err.code), (400, "bad-request"));
    assert!(err.message.starts_with("kernel"), "{err:?}");
    // An empty kernel is refused after verification, naming the field.
    let empty = Artifacts {
        kernel: Vec::new(),
        ..artifacts()
    };
    f.registry
        .discard_launch(&f.rec.id, "2")
        .expect("room for one more");
    let err = f.expect_renewal_refused(f.renewal(&f.guest(), &empty, &empty), "bad-artifacts");
    assert_eq!(err.status, 400);
    assert!(err.message.starts_with("kernel"), "{err:?}");
}

#[test]
fn a_renewal_whose_cmdline_hides_text_is_refused_before_verification() {
    let Some(f) = fixture() else { return };
    for hidden in [
        "console=ttyS0 quiet\r init=/bin/sh",
        "console=ttyS0 \x1b[8minit=/bin/sh",
        "console=ttyS0\tquiet",
        "console=ttyS0 \u{9b}8m",
    ] {
        let a = Artifacts {
            cmdline: hidden.into(),
            ..artifacts()
        };
        let before = f.launch_states();
        let err = f
            .attestor
            .renew(f.renewal(&f.guest(), &a, &a), PEER)
            .expect_err("control character");
        assert_eq!((err.status, err.code), (400, "bad-request"), "{hidden:?}");
        assert!(err.message.contains("control character"), "{err:?}");
        assert!(!err.message.contains(hidden), "{err:?}");
        assert_eq!(f.launch_states(), before, "nothing stored");
    }
}

#[test]
fn check_nonce_says_how_long_a_live_nonce_lasts_and_uses_nothing() {
    let Some(f) = fixture() else { return };
    let nonce = encode_nonce(&f.nonce());
    let left = f.attestor.check_nonce(&nonce).expect("live");
    assert_eq!(left.as_secs(), nonce::NONCE_LIFETIME_SECS + 1);
    f.clock.advance(100);
    let left = f.attestor.check_nonce(&nonce).expect("still live");
    assert_eq!(left.as_secs(), nonce::NONCE_LIFETIME_SECS + 1 - 100);
    // Checking does not use it: the renewal with it still goes through.
    let a = artifacts();
    let nonce_bytes = snpguard_protocol::attest::decode_nonce(&nonce).unwrap();
    let data = renewal_report_data(&nonce_bytes, &a.kernel, &a.initrd, &a.cmdline);
    let g = f.guest();
    let req = RenewRequest {
        nonce: nonce.clone(),
        report: b64(&Fixture::report(&g, &data)),
        cert_table: g.table.as_ref().map(|t| b64(t)),
        kernel: b64(&a.kernel),
        initrd: b64(&a.initrd),
        cmdline: a.cmdline.clone(),
        signed: true,
    };
    f.attestor.renew(req, PEER).expect("renewal");
    // Used now.
    let e = f.attestor.check_nonce(&nonce).expect_err("used");
    assert_eq!((e.status, e.code), (401, "nonce-reused"));
    // Expired, forged, not a nonce.
    let old = encode_nonce(&f.nonce());
    f.clock.advance(nonce::NONCE_LIFETIME_SECS as i64 + 1);
    let e = f.attestor.check_nonce(&old).expect_err("expired");
    assert_eq!((e.status, e.code), (401, "nonce-expired"));
    let e = f
        .attestor
        .check_nonce(&encode_nonce(&[7; 32]))
        .expect_err("forged");
    assert_eq!((e.status, e.code), (400, "nonce-invalid"));
    let e = f.attestor.check_nonce("not a nonce").expect_err("garbage");
    assert_eq!((e.status, e.code), (400, "nonce-invalid"));
}

impl Fixture {
    /// A signed-launch request for `launch` by guest `g`, its report bound
    /// to `bound` (normally `launch`).
    fn signed_launch_req(&self, g: &Guest<'_>, launch: &str, bound: &str) -> SignedLaunchRequest {
        let nonce = self.nonce();
        let r = Fixture::report(g, &signed_launch_report_data(&nonce, bound));
        SignedLaunchRequest {
            nonce: encode_nonce(&nonce),
            report: b64(&r),
            cert_table: g.table.as_ref().map(|t| b64(t)),
            launch: launch.into(),
            signed: true,
        }
    }

    /// Expects a signed-launch request refused with audit code `code`.
    fn expect_signed_launch_refused(&self, req: SignedLaunchRequest, code: &str) -> AttestError {
        let err = self
            .attestor
            .signed_launch(req, PEER)
            .expect_err("must be refused");
        let audit = self.last_audit();
        assert_eq!(
            audit.codes.first().map(String::as_str),
            Some(code),
            "{audit:?}"
        );
        err
    }
}

#[test]
fn a_guest_gets_the_signed_parts_of_its_approved_next_launch() {
    let Some(f) = fixture() else { return };
    let a = artifacts();
    let renewed = f
        .attestor
        .renew(f.renewal(&f.guest(), &a, &a), PEER)
        .unwrap();

    // Pending: refused with a code the guest can wait on.
    let err = f.expect_signed_launch_refused(
        f.signed_launch_req(&f.guest(), &renewed.launch, &renewed.launch),
        "launch-pending",
    );
    assert_eq!((err.status, err.code), (409, "launch-pending"));

    f.registry
        .approve_launch(&f.rec.id, &renewed.launch)
        .unwrap();
    let req = f.signed_launch_req(&f.guest(), &renewed.launch, &renewed.launch);
    let (nonce, report) = (
        snpguard_protocol::attest::decode_nonce(&req.nonce).unwrap(),
        snpguard_protocol::attest::unb64(&req.report, 1184).unwrap(),
    );
    let resp = f.attestor.signed_launch(req, PEER).unwrap();
    assert_eq!(
        (resp.record.as_str(), resp.launch.as_str()),
        (f.rec.id.as_str(), "2")
    );
    let id_block = snpguard_protocol::attest::unb64(&resp.id_block, 4096).unwrap();
    let id_auth = snpguard_protocol::attest::unb64(&resp.id_auth, 8192).unwrap();
    // Signed by the author key in the guest's report, over every field.
    let message = snpguard_protocol::attest::signed_launch_message(
        &nonce,
        &report,
        &resp.record,
        &resp.launch,
        &resp.launch_config,
        &id_block,
        &id_auth,
    );
    snpguard_protocol::attest::verify_signature(&report, &message, resp.signature.as_ref())
        .expect("signed by the report's author key");
    // Exactly what the launch's bundle holds.
    let mut tar = Vec::new();
    f.registry
        .export_bundle(&f.rec.id, Some("2"), &mut tar)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = snpguard_protocol::bundle::extract_bundle(
        &tar[..],
        dir.path(),
        &snpguard_protocol::bundle::ExtractLimits::default(),
    )
    .unwrap();
    assert_eq!(config.measurement, renewed.measurement);
    let read = |m: &str| std::fs::read(dir.path().join(m)).unwrap();
    assert_eq!(
        resp.launch_config.as_bytes(),
        &read("launch-config.json")[..]
    );
    assert_eq!(id_block, read("id-block.bin"));
    assert_eq!(id_auth, read("id-auth.bin"));
    let audit = f.last_audit();
    assert_eq!(audit.result, "signed-launch-sent");
    assert!(audit.detail.contains("launch 2"), "{audit:?}");
}

#[test]
fn a_signed_launch_is_refused_unless_the_guest_and_the_launch_qualify() {
    let Some(f) = fixture() else { return };
    let a = artifacts();
    let renewed = f
        .attestor
        .renew(f.renewal(&f.guest(), &a, &a), PEER)
        .unwrap();
    let l = renewed.launch.as_str();

    // Unknown launch; a report bound to another launch; a malformed id.
    let err =
        f.expect_signed_launch_refused(f.signed_launch_req(&f.guest(), "9", "9"), "unknown-launch");
    assert_eq!((err.status, err.code), (404, "unknown-launch"));
    f.expect_signed_launch_refused(
        f.signed_launch_req(&f.guest(), l, "1"),
        "report-data-mismatch",
    );
    let err = f
        .attestor
        .signed_launch(f.signed_launch_req(&f.guest(), "02", "02"), PEER)
        .unwrap_err();
    assert_eq!((err.status, err.code), (400, "bad-request"));

    // The pending launch itself cannot ask (it is not approved).
    let mut pending = f.guest();
    pending.measurement = arr(&renewed.measurement);
    f.expect_signed_launch_refused(f.signed_launch_req(&pending, "1", "1"), "launch-pending");

    // A disabled record gets nothing.
    f.registry.approve_launch(&f.rec.id, l).unwrap();
    f.registry.set_enabled(&f.rec.id, false).unwrap();
    f.expect_signed_launch_refused(f.signed_launch_req(&f.guest(), l, l), "record-disabled");
    f.registry.set_enabled(&f.rec.id, true).unwrap();

    // A retired launch is not a next launch.
    f.registry.retire_launch(&f.rec.id, "1").unwrap();
    let mut now = f.guest();
    now.measurement = arr(&renewed.measurement);
    let err = f.expect_signed_launch_refused(f.signed_launch_req(&now, "1", "1"), "launch-retired");
    assert_eq!((err.status, err.code), (409, "launch-retired"));
    assert!(f
        .attestor
        .signed_launch(f.signed_launch_req(&now, l, l), PEER)
        .is_ok());
}
