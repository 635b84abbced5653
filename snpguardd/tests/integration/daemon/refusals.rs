//! Every trust rule refused end to end with its own reason, and operator
//! certificate imports for an air-gapped daemon.

use super::*;

/// `text` without ANSI colour sequences (the log may be coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The daemon log written after the first `from` bytes, uncoloured.
pub(super) fn log_since(state: &Path, from: usize) -> String {
    strip_ansi(daemon_log(state).get(from..).unwrap_or_default())
}

/// The agent's request for `report`, with `table`'s certificates or none.
pub(super) fn request(
    nonce: String,
    report: &[u8],
    public: &seal::PublicKey,
    table: Option<&SimPlatform>,
) -> AttestRequest {
    AttestRequest {
        nonce,
        report: snpguard_protocol::attest::b64(report),
        cert_table: table.map(|t| {
            snpguard_protocol::attest::b64(&encode_cert_table(&[
                (GUID_VCEK, &t.vcek_der),
                (GUID_ASK, &t.ask_der),
            ]))
        }),
        ephemeral_key: snpguard_protocol::attest::b64(&public.to_bytes()),
        signed: true,
        offline: false,
    }
}

/// Sends `req` and asserts it was refused with `status` and the JSON
/// error `code`, no key in the answer, and that the daemon journaled the
/// precise `reason` for it. Returns the journal lines of the refusal.
pub(super) async fn expect_refused(
    s: &Setup,
    conn: &Conn,
    req: &AttestRequest,
    (status, code): (u16, &str),
    reason: &str,
) -> String {
    let from = daemon_log(&s.state).len();
    let (got, body) = conn
        .post_json("/v1/attest", serde_json::to_vec(req).expect("json"))
        .await
        .expect("attest");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(got.as_u16(), status, "{reason}: {text}");
    let e: ErrorBody = serde_json::from_slice(&body).expect("error json");
    assert_eq!(e.error, code, "{reason}: {text}");
    assert!(
        !text.contains("sealed_key"),
        "{reason}: a key came back: {text}"
    );
    let log = log_since(&s.state, from);
    assert!(
        log.contains(&format!("REASON={reason}")),
        "the journal lacks REASON={reason}:\n{log}"
    );
    log
}

/// A fresh challenge, a report built from `launch` (edited by `edit`)
/// bound to a fresh key, signed by `signer`, with `table`'s certificates.
async fn tampered(
    conn: &Conn,
    signer: &SimPlatform,
    launch: &Launch,
    table: Option<&SimPlatform>,
    edit: impl FnOnce(&mut [u8; 1184]),
) -> AttestRequest {
    let (ch, nonce) = challenge(conn).await;
    let (_, public) = seal::generate_keypair();
    let report = sim_report_edited(signer, launch, &report_data(&nonce, &public), edit);
    request(ch.nonce, &report, &public, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcb_vmpl_binding_chips_and_roots_are_refused_end_to_end() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 13, "rules") else {
        return;
    };
    // A second record demanding an SNP SPL above the platform's (20).
    let stage = staging(s.dir.path(), &s.state, 14).expect("staging");
    let min = ["--min-tcb-bootloader", "3", "--min-tcb-tee", "0"];
    let min = [
        &min[..],
        &["--min-tcb-snp", "21", "--min-tcb-microcode", "209"],
        &["--allow-test-root"],
    ]
    .concat();
    let out = s.dir.path().join("strict.tar.gz");
    ok(&register_with(&s.bus, &stage, "strict", &out, &min));
    let strict = launch_of(&s.bus, "strict");
    let conn = target.connect().await.expect("connect");
    let rejected = (403, "attestation-rejected");

    let req = tampered(&conn, &sim, &strict, Some(&sim), |_| {}).await;
    expect_refused(&s, &conn, &req, rejected, "tcb-below-minimum").await;

    let req = tampered(&conn, &sim, &launch, Some(&sim), |r| r[0x30] = 1).await;
    expect_refused(&s, &conn, &req, rejected, "vmpl-mismatch").await;

    // report_data binds another key than the one sent.
    let (ch, nonce) = challenge(&conn).await;
    let (_, sent) = seal::generate_keypair();
    let (_, other) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&nonce, &other));
    let req = request(ch.nonce, &report, &sent, Some(&sim));
    expect_refused(&s, &conn, &req, rejected, "report-data-mismatch").await;

    // Another chip of the same platform signs, claiming to be ours.
    let mut hwid = sim_hwid();
    hwid[0] ^= 0xFF;
    let chip2 = sim.another_chip(&hwid).expect("second chip");
    let req = tampered(&conn, &chip2, &launch, Some(&sim), |_| {}).await;
    let log = expect_refused(&s, &conn, &req, rejected, "signature-invalid").await;
    assert!(log.contains("not signed by this VCEK"), "{log}");
    // ... or sends its own (valid) VCEK with our CHIP_ID.
    let req = tampered(&conn, &chip2, &launch, Some(&chip2), |_| {}).await;
    expect_refused(&s, &conn, &req, rejected, "hwid-mismatch").await;

    // A platform whose root is not trusted, complete with its chain
    // (generating it takes a while: reconnect after).
    let rogue = sim_platform();
    let conn = target.connect().await.expect("connect");
    let req = tampered(&conn, &rogue, &launch, Some(&rogue), |_| {}).await;
    let log = expect_refused(&s, &conn, &req, rejected, "signature-invalid").await;
    assert!(log.contains("ASK's signature does not verify"), "{log}");

    // The daemon still releases to the genuine launch.
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("accepted");
    assert_eq!(released(&resp, &report, &secret), vmk);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&s.bus, &["records", "show", "rules", "--json"])))
            .expect("json");
    // vmpl, report_data and hwid count; the two signature failures were
    // decided before anything was authenticated and count nowhere.
    assert_eq!(v["attestations_failed"], 3, "{v}");
    assert_eq!(v["attestations_ok"], 1, "{v}");
    assert_eq!(v["allow_test_root"], true, "{v}");
    daemon.stop();

    // Every start names each record that accepts a test root.
    let (daemon, _) = attest_daemon_with(&s, &sim, "");
    let log = log_since(&s.state, 0);
    for name in ["rules", "strict"] {
        assert!(
            log.lines()
                .any(|l| l.contains("ACCEPTS REPORTS ENDORSED BY A TEST ROOT")
                    && l.contains(&format!("record {name} "))),
            "no start-up warning for {name}:\n{log}"
        );
    }
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nonce_is_refused_end_to_end() {
    let s = setup().await;
    let sim = sim_platform();
    let config = "[attest]\nnonce_lifetime_secs = 1\n";
    let Some((daemon, target, vmk, launch)) =
        registered_guest_with(&s, &sim, 15, "expiry", config, &[])
    else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    let (ch, nonce) = challenge(&conn).await;
    assert_eq!(ch.expires_in, 1, "the challenge says how long it lives");
    let (secret, public) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&nonce, &public));
    let req = request(ch.nonce, &report, &public, Some(&sim));
    // The condition: the clock is past the nonce's issue second plus its
    // lifetime (the nonce carries its issue time, big-endian seconds).
    let issued = u64::from_be_bytes(nonce[..8].try_into().expect("8 bytes"));
    let deadline = Instant::now() + DEADLINE;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        <= issued + 1
    {
        assert!(Instant::now() < deadline, "the clock does not advance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expect_refused(&s, &conn, &req, (401, "nonce-expired"), "nonce-expired").await;
    drop(secret);
    // A nonce used within its lifetime still works.
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("accepted");
    assert_eq!(released(&resp, &report, &secret), vmk);
    daemon.stop();
}

/// The output of a `--json` snpguardctl command as a list.
fn json_list(out: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(out)
        .expect("json")
        .as_array()
        .cloned()
        .expect("a list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_import_lets_an_air_gapped_daemon_attest() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 16, "airgap") else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    let rejected = (403, "attestation-rejected");

    // KDS is disabled and the request carries no certificate table.
    let req = tampered(&conn, &sim, &launch, None, |_| {}).await;
    let log = expect_refused(&s, &conn, &req, rejected, "missing-vcek").await;
    assert!(log.contains("KDS access is disabled"), "{log}");

    // Garbage and another root's certificates: refused, naming the file.
    let files = s.dir.path().join("certs");
    std::fs::create_dir_all(&files).expect("dir");
    let junk = files.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("junk");
    let e = err(&ctl(
        &s.bus,
        &["certs", "import", junk.to_str().expect("utf-8")],
    ));
    assert!(e.contains("junk.pem") && e.contains("InvalidInput"), "{e}");
    let rogue = sim_platform();
    let rogue_dir = s.dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).expect("dir");
    std::fs::write(rogue_dir.join("ask.der"), &rogue.ask_der).expect("ask");
    std::fs::write(rogue_dir.join("vcek.der"), &rogue.vcek_der).expect("vcek");
    let e = err(&ctl(
        &s.bus,
        &["certs", "import", rogue_dir.to_str().expect("utf-8")],
    ));
    assert!(e.contains("Untrusted") && e.contains("ask.der"), "{e}");
    assert!(e.contains("signature"), "the rule is named: {e}");
    assert!(
        json_list(&ok(&ctl(&s.bus, &["certs", "list", "--json"]))).is_empty(),
        "nothing stored by refused imports"
    );

    // The operator imports the VCEK (PEM) and the ASK (DER).
    let vcek = files.join("vcek.pem");
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &sim.vcek_der)
        .expect("pem");
    std::fs::write(&vcek, pem).expect("vcek");
    let ask = files.join("ask.der");
    std::fs::write(&ask, &sim.ask_der).expect("ask");
    // Clients hear of it (Certificates.Changed) and list again.
    let bus = zbus::connection::Builder::address(s.bus.address.as_str())
        .expect("address")
        .build()
        .await
        .expect("connect");
    let proxy = snpguard_protocol::dbus::CertificatesProxy::new(&bus)
        .await
        .expect("proxy");
    let mut changed = proxy.receive_changed().await.expect("subscribe");
    let out = ok(&ctl(
        &s.bus,
        &[
            "certs",
            "import",
            vcek.to_str().expect("utf-8"),
            ask.to_str().expect("utf-8"),
            "--json",
        ],
    ));
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(30), changed.next())
        .await
        .expect("Certificates.Changed after an import")
        .expect("signal stream");
    let imported = json_list(&out);
    assert_eq!(imported.len(), 2, "{out}");
    let v = imported
        .iter()
        .find(|c| c["kind"] == "VCEK")
        .expect("the VCEK");
    assert_eq!(v["product"], "milan");
    assert_eq!(v["chip_id"], hex::encode(&sim_hwid()[..8]));
    assert_eq!(v["tcb"], "3.0.20.209");
    assert_eq!(v["file"], vcek.to_str().expect("utf-8"));

    // Now the same request shape is accepted, from the imported VCEK (on
    // a new connection: the first one may have idled out meanwhile).
    let conn = target.connect().await.expect("connect");
    let (ch, nonce) = challenge(&conn).await;
    let (secret, public) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&nonce, &public));
    let req = request(ch.nonce, &report, &public, None);
    let (resp, report, secret) = send_attest(&conn, &req, report, secret)
        .await
        .expect("accepted with the imported VCEK");
    assert_eq!(released(&resp, &report, &secret), vmk);
    let held = json_list(&ok(&ctl(&s.bus, &["certs", "list", "--json"])));
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|c| c["source"] == "imported"), "{held:?}");
    let text = ok(&ctl(&s.bus, &["certs", "list"]));
    assert!(text.contains("VCEK") && text.contains("ASK"), "{text}");

    // The operator removes the VCEK by chip id: the chip cannot attest
    // until it is imported again; the ASK stays.
    let chip = hex::encode(&sim_hwid()[..4]);
    let out = ok(&ctl(
        &s.bus,
        &[
            "certs",
            "remove",
            "--kind",
            "vcek",
            "--chip-id",
            &chip,
            "--json",
        ],
    ));
    let removed = json_list(&out);
    assert_eq!(removed.len(), 1, "{out}");
    assert_eq!(removed[0]["kind"], "VCEK");
    let held = json_list(&ok(&ctl(&s.bus, &["certs", "list", "--json"])));
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["kind"], "ASK");
    let e = err(&ctl(&s.bus, &["certs", "remove", "--tcb", "1.2"]));
    assert!(e.contains("InvalidInput") && e.contains("tcb"), "{e}");
    let conn = target.connect().await.expect("connect");
    let req = tampered(&conn, &sim, &launch, None, |_| {}).await;
    expect_refused(&s, &conn, &req, rejected, "missing-vcek").await;
    daemon.stop();
}
