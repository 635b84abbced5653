//! The daemon's own ARK CRL, end to end: imported offline with
//! `snpguardctl certs import`, listed, and applied to every chain
//! whatever the request carries; and the start-up refusal of a daemon
//! with test roots that holds a record trusting only AMD.

use snpguard_testkit::sim::SimCa;
use time::{Duration as Days, OffsetDateTime};

use super::refusals::{expect_refused, log_since, request};
use super::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_crl_revoking_the_ask_stops_releases() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 21, "crl") else {
        return;
    };
    let conn = target.connect().await.expect("connect");

    // No CRL held: accepted (default [revocation] missing = "warn"),
    // warned once, not per attestation.
    for _ in 0..2 {
        let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
            .await
            .expect("accepted without a CRL");
        assert_eq!(released(&resp, &report, &secret), vmk);
    }
    let log = log_since(&s.state, 0);
    let warned = log
        .lines()
        .filter(|l| l.contains("REVOCATION NOT CHECKED") && l.contains("logged once"))
        .count();
    assert_eq!(warned, 1, "one loud warning per product:\n{log}");
    let text = ok(&ctl(&s.bus, &["certs", "list"]));
    assert!(text.contains("no CRL held"), "{text}");

    let now = OffsetDateTime::now_utc();
    let dir = s.dir.path();
    // Refused at import: a CRL of another root with the same names, and
    // nothing is stored.
    let rogue = sim_platform();
    let forged = rogue
        .issue_crl(&[], now - Days::days(1), now + Days::days(30))
        .expect("crl");
    let e = err(&ctl(
        &s.bus,
        &["certs", "import", &write(dir, "forged.crl", &forged)],
    ));
    assert!(
        e.contains("Untrusted") && e.contains("crl-signature"),
        "{e}"
    );
    let conn = target.connect().await.expect("reconnect");

    // The sim ARK's CRL revoking the ASK.
    let crl = sim
        .issue_crl(&[SimCa::Ask], now - Days::days(1), now + Days::days(30))
        .expect("crl");
    let out = ok(&ctl(
        &s.bus,
        &["certs", "import", &write(dir, "crl.der", &crl)],
    ));
    assert!(out.contains("CRL") && out.contains("milan"), "{out}");
    let text = ok(&ctl(&s.bus, &["certs", "list"]));
    let line = text
        .lines()
        .find(|l| l.starts_with("milan") && l.contains("test"))
        .unwrap_or_else(|| panic!("the CRL is listed:\n{text}"));
    assert!(line.contains(" 1 ") && line.contains("imported"), "{line}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&s.bus, &["certs", "list", "--json"]))).expect("json");
    let crls: Vec<_> = json
        .as_array()
        .expect("array")
        .iter()
        .filter(|v| v["kind"] == "CRL")
        .collect();
    assert_eq!(crls.len(), 1, "{json}");
    assert_eq!(crls[0]["revoked"], 1);

    // An older CRL (clean) never replaces the newer one held.
    let older = sim
        .issue_crl(&[], now - Days::days(10), now + Days::days(30))
        .expect("crl");
    let e = err(&ctl(
        &s.bus,
        &["certs", "import", &write(dir, "older.crl", &older)],
    ));
    assert!(e.contains("never replaces a newer"), "{e}");

    // The very attestation that succeeded is now refused as revoked,
    // although the request carries no CRL; nothing is released.
    let (ch, nonce) = challenge(&conn).await;
    let (_, public) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&nonce, &public));
    let req = request(ch.nonce, &report, &public, Some(&sim));
    let log = expect_refused(&s, &conn, &req, (403, "attestation-rejected"), "revoked").await;
    assert!(log.contains("revoked by the ARK's CRL"), "{log}");

    // It stays refused across a restart (the CRL is in the store).
    daemon.stop();
    let (daemon, target) = attest_daemon_with(&s, &sim, "");
    let conn = target.connect().await.expect("connect");
    let r = attest_once(&conn, &sim, &launch, |_| {}).await;
    assert!(
        matches!(&r, Err((403, e)) if e.error == "attestation-rejected"),
        "no key after restart"
    );

    // Removing the CRL (kind CRL only) makes the chain unchecked again.
    let out = ok(&ctl(&s.bus, &["certs", "remove", "--kind", "CRL"]));
    assert!(out.contains("CRL"), "{out}");
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("accepted again without the CRL");
    assert_eq!(released(&resp, &report, &secret), vmk);
    daemon.stop();
}

/// Runs the daemon with `config` and expects it to exit with a failure
/// before READY; returns its log.
fn start_fails(s: &Setup, config: &str) -> String {
    let status = Command::new(env!("CARGO_BIN_EXE_snpguardd"))
        .args(free_listen(config))
        .arg("--state-dir")
        .arg(&s.state)
        .arg("--bus")
        .arg(&s.bus.address)
        .arg("--config")
        .arg(config_file(&s.state, config))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.state.with_extension("fail.log")).expect("log"))
        .status()
        .expect("run snpguardd");
    let log = std::fs::read_to_string(s.state.with_extension("fail.log")).unwrap_or_default();
    assert!(!status.success(), "snpguardd started:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_roots_and_a_production_record_refuse_to_start() {
    let s = setup().await;
    let sim = sim_platform();
    // A daemon with test roots: one simulated record, one without the
    // flag (registration does not refuse it; the next start does).
    let Some((daemon, _target, _vmk, _launch)) = registered_guest(&s, &sim, 22, "simvm") else {
        return;
    };
    let stage = staging(s.dir.path(), &s.state, 23).expect("staging");
    ok(&register(
        &s.bus,
        &stage,
        "prod",
        &s.dir.path().join("prod.tar.gz"),
    ));
    daemon.stop();

    std::fs::write(config_dir(&s.state).join("sim-ark.der"), &sim.ark_der).expect("ark");
    let with_roots = "[[test_roots]]\nproduct = \"milan\"\nark_path = \"sim-ark.der\"\n\
                      [kds]\nenabled = false\n";
    let log = start_fails(&s, with_roots);
    assert!(
        log.contains("registered without --allow-test-root: prod (")
            && log.contains("remove test_roots")
            && log.contains("re-register it with --allow-test-root")
            && !log.contains("simvm ("),
        "the refusal names the record and what to do:\n{log}"
    );

    // Without test roots it starts; delete the production record.
    let daemon = Daemon::start_with(&s.bus, &s.state, "[kds]\nenabled = false\n");
    ok(&ctl(&s.bus, &["records", "delete", "prod"]));
    daemon.stop();
    // Now every record carries the flag: it starts with test roots.
    let daemon = Daemon::start_with(&s.bus, &s.state, with_roots);
    assert_eq!(records(&s.bus).len(), 1);
    daemon.stop();
}
