//! HTTPS attestation against the simulated platform: only the registered
//! launch gets its key, and 10,000 attestations over 200 connections.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_over_https_releases_only_to_the_registered_launch() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 11, "guest") else {
        return;
    };
    let conn = target.connect().await.expect("connect");

    let (status, _) = conn.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);

    // The registered launch gets exactly its VMK.
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("accepted");
    assert_eq!(released(&resp, &report, &secret), vmk);

    // Each broken rule: refused, nothing released, coarse reason only.
    let refused = |r: Result<_, (u16, ErrorBody)>, what: &str| match r {
        Ok(_) => panic!("{what}: a key was released"),
        Err((status, body)) => (status, body.error),
    };
    let r = attest_once(&conn, &sim, &launch, |l| l.measurement[0] ^= 1).await;
    assert_eq!(
        refused(r, "measurement"),
        (403, "attestation-rejected".into())
    );
    let r = attest_once(&conn, &sim, &launch, |l| l.policy |= 1 << 19).await;
    assert_eq!(refused(r, "debug"), (403, "attestation-rejected".into()));
    let r = attest_once(&conn, &sim, &launch, |l| l.image_id[0] ^= 1).await;
    assert_eq!(
        refused(r, "unknown image"),
        (403, "attestation-rejected".into())
    );

    // A nonce is single-use.
    let (ch, nonce) = challenge(&conn).await;
    let (secret, public) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&nonce, &public));
    let req = attest_request(&sim, ch.nonce, &report, &public);
    send_attest(&conn, &req, report.clone(), secret.clone())
        .await
        .expect("first use");
    let r = send_attest(&conn, &req, report, secret).await;
    assert_eq!(refused(r, "reuse"), (401, "nonce-reused".into()));

    // A disabled record releases nothing.
    ok(&ctl(&s.bus, &["records", "disable", "guest"]));
    let r = attest_once(&conn, &sim, &launch, |_| {}).await;
    assert_eq!(refused(r, "disabled"), (403, "attestation-rejected".into()));
    ok(&ctl(&s.bus, &["records", "enable", "guest"]));

    // Malformed JSON and oversized bodies: JSON errors, daemon stays up.
    let (status, body) = conn
        .post_json("/v1/attest", "{not json")
        .await
        .expect("send");
    assert_eq!(status.as_u16(), 400);
    let e: ErrorBody = serde_json::from_slice(&body).expect("error json");
    assert_eq!(e.error, "malformed-json");
    let big = format!("{{\"nonce\":\"{}\"}}", "A".repeat(200_000));
    let fresh = target.connect().await.expect("connect");
    let (status, _) = fresh.post_json("/v1/attest", big).await.expect("send");
    assert_eq!(status.as_u16(), 413);
    let conn = target.connect().await.expect("reconnect");
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("still serving");
    assert_eq!(released(&resp, &report, &secret), vmk);

    // Counters reflect what happened.
    let out = ok(&ctl(&s.bus, &["records", "show", "guest", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(v["attestations_ok"].as_u64().expect("ok") >= 3, "{v}");
    assert!(
        v["attestations_failed"].as_u64().expect("failed") >= 3,
        "{v}"
    );
    daemon.stop();
}

/// 10,000 attestations over 200 concurrent keep-alive connections: zero
/// errors, every one releasing the right key; latency percentiles printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_10000_attestations_over_200_connections() {
    let s = setup().await;
    let sim = std::sync::Arc::new(sim_platform());
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 12, "load") else {
        return;
    };
    let (vmk, launch) = (std::sync::Arc::new(vmk), std::sync::Arc::new(launch));
    let ops: usize = std::env::var("SNPGUARD_LOAD_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let stats = load(&target, ops, 200, move |conn, _| {
        let (sim, launch, vmk) = (sim.clone(), launch.clone(), vmk.clone());
        async move {
            let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
                .await
                .map_err(|(st, e)| format!("{st} {}: {}", e.error, e.message))?;
            if released(&resp, &report, &secret) != *vmk {
                return Err("wrong key released".to_string());
            }
            Ok(())
        }
    })
    .await
    .expect("load run");
    println!("attestation load: {stats}");
    assert_eq!(stats.errors, 0, "{:?}", stats.sample_errors);
    assert_eq!(stats.ops, ops);
    daemon.stop();
}
