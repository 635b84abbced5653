//! Crash safety at each commit point: the daemon is killed where it
//! matters (snpguardd::crash, SIGKILL as a power cut would), restarted on
//! the same state, and the invariant of that point is checked: a consumed
//! nonce is refused forever, and a release is counted and audited with it
//! or not at all; a registration is all or nothing; an approved
//! launch has its ID block or is still pending; the store opens after a
//! crash in a migration.

use snpguardd::crash::{points, ENV};

use super::*;

/// Field `key` of launch `id` in `records show --json`.
fn launch_field(bus: &TestBus, name: &str, id: &str, key: &str) -> String {
    let out = ok(&ctl(bus, &["records", "show", name, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["launches"]
        .as_array()
        .expect("launches")
        .iter()
        .find(|l| l["id"] == id)
        .unwrap_or_else(|| panic!("no launch {id} in {v}"))[key]
        .as_str()
        .expect(key)
        .to_owned()
}

fn launch_state(bus: &TestBus, name: &str, id: &str) -> String {
    launch_field(bus, name, id, "state")
}

/// The audit trail as `snpguardctl audit --json` prints it.
fn audit_trail(bus: &TestBus) -> Vec<serde_json::Value> {
    let out = ok(&ctl(bus, &["audit", "--json"]));
    serde_json::from_str(&out).expect("audit json")
}

/// A crash in an attestation, before or after its decision committed: the
/// nonce is spent either way; the release's count and audit entry are
/// all there (committed) or none of them (before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_consumed_before_a_crash_is_refused_after_it() {
    for point in [
        points::ATTEST_NONCE_CONSUMED,
        points::ATTEST_RELEASE_COMMITTED,
    ] {
        let s = setup().await;
        let sim = sim_platform();
        let Some((daemon, _, vmk, launch)) = registered_guest(&s, &sim, 41, "crash") else {
            return;
        };
        daemon.stop();
        let (daemon, target) = attest_daemon_env(&s, &sim, "", &[(ENV, point)]);
        let conn = target.connect().await.expect("connect");
        let (ch, nonce) = challenge(&conn).await;
        let (secret, public) = seal::generate_keypair();
        let report = sim_report(&sim, &launch, &report_data(&nonce, &public));
        let req = attest_request(&sim, ch.nonce.clone(), &report, &public);
        // The daemon dies with the nonce marked used and no key sent.
        let reply = conn
            .post_json("/v1/attest", serde_json::to_vec(&req).expect("json"))
            .await;
        assert!(
            reply.is_err(),
            "{point}: a reply from a daemon that died: {reply:?}"
        );
        daemon.crashed_at(point);

        // Restarted on the same state: the same request is refused forever.
        let (daemon, target) = attest_daemon_with(&s, &sim, "");
        let record = &records(&s.bus)[0];
        let trail = audit_trail(&s.bus);
        if point == points::ATTEST_RELEASE_COMMITTED {
            // The release, its count and its audit entry: all on disk.
            assert_eq!(record["attestations_ok"], 1, "{point}: {record}");
            assert_eq!(trail.len(), 1, "{point}: {trail:?}");
            assert_eq!(trail[0]["result"], "ok", "{point}");
            assert_eq!(trail[0]["record"], record["id"], "{point}");
        } else {
            assert_eq!(record["attestations_ok"], 0, "{point}: {record}");
            assert!(trail.is_empty(), "{point}: {trail:?}");
        }
        let conn = target.connect().await.expect("connect");
        let (status, e) = send_attest(&conn, &req, report, secret)
            .await
            .expect_err("a replayed nonce");
        assert_eq!(status, 401, "{point}: {e:?}");
        assert!(daemon_log(&s.state).contains("nonce-reused"), "{point}");
        // A fresh challenge still gets the key.
        let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
            .await
            .expect("a fresh attestation");
        assert_eq!(released(&resp, &report, &secret), vmk, "{point}");
        daemon.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_all_or_nothing_at_a_crash() {
    for point in [points::REGISTER_BEFORE_COMMIT, points::REGISTER_COMMITTED] {
        let s = setup().await;
        let daemon = Daemon::start_env(&s.bus, &s.state, "", &[(ENV, point)]);
        let Some(stage) = staging(s.dir.path(), &s.state, 5) else {
            return;
        };
        let bundle = s.dir.path().join("web.tar.gz");
        let out = register_with(&s.bus, &stage, "web", &bundle, &[]);
        assert!(!out.status.success(), "{point}: registered through a crash");
        daemon.crashed_at(point);

        let daemon = Daemon::start(&s.bus, &s.state);
        let names: Vec<String> = records(&s.bus)
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_owned())
            .collect();
        let again = register_with(&s.bus, &stage, "web", &bundle, &[]);
        if point == points::REGISTER_BEFORE_COMMIT {
            // Nothing of it: the name is free.
            assert!(names.is_empty(), "{point}: {names:?}");
            ok(&again);
        } else {
            // All of it: the record, its keys and artifacts.
            assert_eq!(names, ["web"], "{point}");
            assert!(err(&again).contains("already exists"));
            let out = s.dir.path().join("check.tar.gz");
            ok(&ctl(
                &s.bus,
                &[
                    "records",
                    "export",
                    "web",
                    "--out",
                    out.to_str().expect("utf-8"),
                ],
            ));
            let m = bundle_measurement(&out, &s.dir.path().join("check"));
            assert_eq!(m, expected_digest(&stage), "{point}");
        }
        daemon.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_signed_and_committed_or_still_pending_at_a_crash() {
    for (seed, point) in [
        (51, points::APPROVE_SIGNED),
        (53, points::APPROVE_COMMITTED),
    ] {
        let s = setup().await;
        let sim = sim_platform();
        let Some((daemon, _, _, _)) = registered_guest(&s, &sim, seed, "ops") else {
            return;
        };
        // A second launch from other artifacts, pending.
        let Some(next) = staging(s.dir.path(), &s.state, seed + 1) else {
            return;
        };
        let dir = next.to_str().expect("utf-8");
        ok(&ctl(
            &s.bus,
            &["records", "add-launch", "ops", "--staging", dir],
        ));
        assert_eq!(launch_state(&s.bus, "ops", "2"), "pending");
        let measurement = launch_field(&s.bus, "ops", "2", "measurement");
        daemon.stop();

        let (daemon, _) = attest_daemon_env(&s, &sim, "", &[(ENV, point)]);
        let out = ctl(&s.bus, &["records", "approve", "ops", "--launch", "2"]);
        assert!(!out.status.success(), "{point}: approved through a crash");
        daemon.crashed_at(point);

        let (daemon, _) = attest_daemon_with(&s, &sim, "");
        let bundle = s.dir.path().join("ops-2.tar.gz");
        let export = |bundle: &Path| {
            let b = bundle.to_str().expect("utf-8").to_owned();
            ctl(
                &s.bus,
                &["records", "export", "ops", "--launch", "2", "--out", &b],
            )
        };
        if point == points::APPROVE_SIGNED {
            // The signature died with the process: still pending, no
            // bundle, and approving again works.
            assert_eq!(launch_state(&s.bus, "ops", "2"), "pending");
            assert!(!export(&bundle).status.success());
            ok(&ctl(
                &s.bus,
                &["records", "approve", "ops", "--launch", "2"],
            ));
        }
        // Approved: its bundle carries a signed ID block for its
        // measurement.
        assert_eq!(launch_state(&s.bus, "ops", "2"), "approved", "{point}");
        ok(&export(&bundle));
        let m = bundle_measurement(&bundle, &s.dir.path().join("ops-2"));
        assert_eq!(m, measurement, "{point}");
        daemon.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_opens_after_a_crash_in_a_migration() {
    let s = setup().await;
    // A new store is migrated from version 0 at the first start.
    let point = points::MIGRATE_BEFORE_COMMIT;
    Daemon::launch(&s.bus, &s.state, "", &[(ENV, point)], false).crashed_at(point);
    let daemon = Daemon::start(&s.bus, &s.state);
    assert!(records(&s.bus).is_empty());
    let Some(stage) = staging(s.dir.path(), &s.state, 7) else {
        return;
    };
    let bundle = s.dir.path().join("after.tar.gz");
    ok(&register_with(&s.bus, &stage, "after", &bundle, &[]));
    daemon.stop();
}
