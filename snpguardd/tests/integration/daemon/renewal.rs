//! Renewal end to end with the real daemon and the real snpguardctl: a
//! guest submits a new kernel over HTTPS (or an operator adds it from a
//! staging directory); the new measurement gets no key until
//! `snpguardctl records approve`, then does; a retired launch gets no key
//! any more; polkit can deny the approval.

use snpguard_protocol::attest::{renewal_report_data, RenewRequest, RenewResponse};

use super::*;

const NEW_CMDLINE: &str = "console=ttyS0 root=/dev/mapper/root quiet";

/// A staging directory with a new kernel, initrd and cmdline (newline
/// terminated, as an editor writes it).
pub(super) fn new_staging(dir: &Path, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = dir.join(format!("renew-{seed}"));
    std::fs::create_dir_all(&s).expect("staging");
    let mut kernel = vec![0u8; 70 * 1024];
    rng.fill_bytes(&mut kernel);
    std::fs::write(s.join("kernel"), kernel).expect("kernel");
    let initrd = agent_initrd(&mut rng, "https://b.example:8443", "CA-B");
    std::fs::write(s.join("initrd"), initrd).expect("initrd");
    std::fs::write(s.join("cmdline"), format!("{NEW_CMDLINE}\n")).expect("cmdline");
    s
}

/// What the daemon must compute for `new` on the firmware of `old`.
fn new_digest(old: &Path, new: &Path) -> String {
    launch_digest(&MeasureInput {
        ovmf: old.join("firmware.fd"),
        ovmf_hash: None,
        kernel: Some(new.join("kernel")),
        initrd: Some(new.join("initrd")),
        cmdline: Some(NEW_CMDLINE.into()),
        vcpus: 2,
        vcpu_type: "EPYC-v4".parse::<VcpuType>().expect("vcpu type"),
        guest_features: 0x1,
        vmm_type: VmmType::Qemu,
    })
    .expect("measure")
    .to_string()
}

pub(super) fn show(bus: &TestBus, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&ctl(bus, &["records", "show", name, "--json"]))).expect("json")
}

/// (id, state, origin) of every launch, as `records show --json` has them.
fn launch_states(bus: &TestBus, name: &str) -> Vec<(String, String, String)> {
    show(bus, name)["launches"]
        .as_array()
        .expect("launches")
        .iter()
        .map(|l| {
            let f = |k: &str| l[k].as_str().expect(k).to_owned();
            (f("id"), f("state"), f("origin"))
        })
        .collect()
}

fn with_measurement(l: &Launch, hex_digest: &str) -> Launch {
    Launch {
        measurement: hex::decode(hex_digest).expect("hex"),
        ..clone_launch(l)
    }
}

/// Attests as `launch`; the VMK on success, the HTTP status and code
/// otherwise.
async fn attest_as(
    conn: &Conn,
    sim: &SimPlatform,
    launch: &Launch,
) -> Result<Vec<u8>, (u16, String)> {
    match attest_once(conn, sim, launch, |_| {}).await {
        Ok((resp, report, secret)) => Ok(released(&resp, &report, &secret)),
        Err((status, e)) => Err((status, e.error)),
    }
}

/// The guest's renewal: a fresh nonce, a report of the running launch
/// bound to the new artifacts, and the artifacts.
async fn renew(conn: &Conn, sim: &SimPlatform, running: &Launch, staging: &Path) -> (u16, Vec<u8>) {
    let (ch, nonce) = challenge(conn).await;
    let kernel = std::fs::read(staging.join("kernel")).expect("kernel");
    let initrd = std::fs::read(staging.join("initrd")).expect("initrd");
    let data = renewal_report_data(&nonce, &kernel, &initrd, NEW_CMDLINE);
    let report = sim_report(sim, running, &data);
    let req = RenewRequest {
        nonce: ch.nonce,
        report: snpguard_protocol::attest::b64(&report),
        cert_table: Some(snpguard_protocol::attest::b64(&encode_cert_table(&[
            (GUID_VCEK, &sim.vcek_der),
            (GUID_ASK, &sim.ask_der),
        ]))),
        kernel: snpguard_protocol::attest::b64(&kernel),
        initrd: snpguard_protocol::attest::b64(&initrd),
        cmdline: NEW_CMDLINE.into(),
        signed: true,
    };
    let (status, body) = conn
        .post_json("/v1/renew", serde_json::to_vec(&req).expect("json"))
        .await
        .expect("renew");
    (status.as_u16(), body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_renewal_boots_only_after_approval() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, old)) = registered_guest(&s, &sim, 21, "guest") else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    let new_stage = new_staging(s.dir.path(), 22);
    let want = new_digest(&s.dir.path().join("staging-21"), &new_stage);

    // The guest submits its new kernel: stored as pending launch 2.
    let (status, body) = renew(&conn, &sim, &old, &new_stage).await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let resp: RenewResponse = serde_json::from_slice(&body).expect("renew json");
    assert_eq!(resp.launch, "2");
    assert_eq!(resp.measurement, want);
    assert_eq!(
        launch_states(&s.bus, "guest"),
        [
            ("1".into(), "approved".into(), "registration".into()),
            ("2".into(), "pending".into(), "guest 127.0.0.1".into()),
        ]
    );
    assert_eq!(show(&s.bus, "guest")["pending_launches"], 1);
    let text = ok(&ctl(&s.bus, &["records", "show", "guest"]));
    assert!(
        text.contains("pending") && text.contains(NEW_CMDLINE),
        "{text}"
    );

    // The new measurement boots, but gets no key.
    let new = with_measurement(&old, &want);
    assert_eq!(
        attest_as(&conn, &sim, &new).await,
        Err((403, "attestation-rejected".into()))
    );
    assert!(daemon_log(&s.state).contains("launch-pending"));
    assert_eq!(attest_as(&conn, &sim, &old).await, Ok(vmk.clone()));

    // The operator approves: the new bundle is written and the new
    // measurement gets the key.
    let bundle = s.dir.path().join("guest-2.tar.gz");
    let out = ok(&ctl(
        &s.bus,
        &[
            "records",
            "approve",
            "guest",
            "--launch",
            "2",
            "--output",
            bundle.to_str().expect("utf-8"),
        ],
    ));
    assert!(out.contains("approved launch 2"), "{out}");
    // The review came first: origin, measurement, digests, cmdline diff.
    assert!(out.contains("Origin:       guest 127.0.0.1"), "{out}");
    assert!(out.contains(&format!("Measurement:  {want}")), "{out}");
    assert!(out.contains("Kernel:       sha256 "), "{out}");
    assert!(out.contains("(changed)"), "{out}");
    assert!(out.contains("Cmdline diff against launch 1:"), "{out}");
    // And what changed in the agent's files inside the initrd.
    for want in [
        "Agent files in the initrd, against launch 1:",
        "    etc/snpguard/agent.toml: changed, sha256 ",
        "      - servers = [\"https://a.example:8443\"]\n      + servers = [\"https://b.example:8443\"]\n",
        "      - CA-A\n      + CA-B\n",
        "WARNING: the CA the agent trusts (/etc/snpguard/ca.pem) changed",
    ] {
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    let x = s.dir.path().join("x-guest-2");
    assert_eq!(bundle_measurement(&bundle, &x), want);
    assert_eq!(
        std::fs::read(x.join("kernel")).expect("bundle kernel"),
        std::fs::read(new_stage.join("kernel")).expect("kernel")
    );
    assert_eq!(
        std::fs::read_to_string(x.join("cmdline")).expect("cmdline"),
        NEW_CMDLINE
    );
    assert_eq!(show(&s.bus, "guest")["measurement"], want.as_str());
    assert_eq!(attest_as(&conn, &sim, &new).await, Ok(vmk.clone()));
    // Nothing left to approve.
    // Without a terminal the launch must be named.
    let e = err(&ctl(&s.bus, &["records", "approve", "guest"]));
    assert!(e.contains("pass --launch N"), "{e}");
    let e = err(&ctl(
        &s.bus,
        &["records", "approve", "guest", "--launch", "7"],
    ));
    assert!(e.contains("has no launch 7"), "{e}");

    // Retire the old launch: its measurement gets nothing any more.
    ok(&ctl(
        &s.bus,
        &["records", "retire", "guest", "--launch", "1"],
    ));
    assert_eq!(
        attest_as(&conn, &sim, &old).await,
        Err((403, "attestation-rejected".into()))
    );
    assert!(daemon_log(&s.state).contains("launch-retired"));
    let e = err(&ctl(
        &s.bus,
        &["records", "retire", "guest", "--launch", "2"],
    ));
    assert!(e.contains("LastApprovedLaunch"), "{e}");
    assert_eq!(attest_as(&conn, &sim, &new).await, Ok(vmk.clone()));

    // Everything survives a restart.
    daemon.stop();
    let (daemon, target) = attest_daemon_with(&s, &sim, "");
    let conn = target.connect().await.expect("connect");
    assert_eq!(attest_as(&conn, &sim, &new).await, Ok(vmk));
    assert_eq!(
        attest_as(&conn, &sim, &old).await,
        Err((403, "attestation-rejected".into()))
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adds_a_launch_and_polkit_guards_its_approval() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, old)) = registered_guest(&s, &sim, 31, "ops") else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    let stage = new_staging(s.dir.path(), 32);
    let want = new_digest(&s.dir.path().join("staging-31"), &stage);
    let staging = stage.to_str().expect("utf-8");

    let out = ok(&ctl(
        &s.bus,
        &[
            "records",
            "add-launch",
            "ops",
            "--staging",
            staging,
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["launch"]["id"], "2");
    assert_eq!(v["launch"]["state"], "pending");
    assert_eq!(v["launch"]["origin"], "operator");
    assert_eq!(v["launch"]["measurement"], want.as_str());
    assert_eq!(
        v["launch"]["cmdline"], NEW_CMDLINE,
        "one trailing newline is stripped"
    );
    // The same directory again is the same launch.
    let out = ok(&ctl(
        &s.bus,
        &["records", "add-launch", "ops", "--staging", staging],
    ));
    assert!(out.contains("launch 2"), "{out}");
    assert_eq!(launch_states(&s.bus, "ops").len(), 2);

    let new = with_measurement(&old, &want);
    assert_eq!(
        attest_as(&conn, &sim, &new).await,
        Err((403, "attestation-rejected".into()))
    );

    // polkit says no: nothing approved, still no key.
    s.polkit.set_allow(false);
    let e = err(&ctl(
        &s.bus,
        &["records", "approve", "ops", "--launch", "2"],
    ));
    assert!(e.contains("AccessDenied"), "{e}");
    assert!(s
        .polkit
        .calls()
        .iter()
        .any(|c| c.action == "org.snpguard.SnpGuard1.manage"));
    s.polkit.set_allow(true);
    assert_eq!(launch_states(&s.bus, "ops")[1].1, "pending");
    assert_eq!(
        attest_as(&conn, &sim, &new).await,
        Err((403, "attestation-rejected".into()))
    );

    // A second pending launch: approve must be told which.
    let other = new_staging(s.dir.path(), 33);
    ok(&ctl(
        &s.bus,
        &[
            "records",
            "add-launch",
            "ops",
            "--staging",
            other.to_str().expect("utf-8"),
        ],
    ));
    let e = err(&ctl(&s.bus, &["records", "approve", "ops"]));
    assert!(e.contains("pass --launch N"), "{e}");
    ok(&ctl(
        &s.bus,
        &["records", "discard", "ops", "--launch", "3"],
    ));

    ok(&ctl(
        &s.bus,
        &["records", "approve", "ops", "--launch", "2"],
    ));
    assert_eq!(attest_as(&conn, &sim, &new).await, Ok(vmk.clone()));
    // The bundle of either launch on request.
    let b1 = s.dir.path().join("ops-1.tar.gz");
    ok(&ctl(
        &s.bus,
        &[
            "records",
            "export",
            "ops",
            "--launch",
            "1",
            "--out",
            b1.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(
        bundle_measurement(&b1, &s.dir.path().join("x-ops-1")),
        hex::encode(&old.measurement)
    );
    let b = s.dir.path().join("ops.tar.gz");
    ok(&ctl(
        &s.bus,
        &[
            "records",
            "export",
            "ops",
            "--out",
            b.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(bundle_measurement(&b, &s.dir.path().join("x-ops")), want);
    daemon.stop();
}
