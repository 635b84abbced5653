//! `POST /v1/renew` at the HTTP layer: 202 with the handler's answer, its
//! own body limit (while `/v1/attest` keeps 64 KiB), one renewal at a
//! time (`busy`), JSON errors.

use super::*;

fn renew_request(kernel_len: usize) -> RenewRequest {
    RenewRequest {
        nonce: snpguard::attest::encode_nonce(&[5; 32]),
        report: snpguard::attest::b64(&[0u8; 1184]),
        cert_table: None,
        kernel: snpguard::attest::b64(&vec![7u8; kernel_len]),
        initrd: snpguard::attest::b64(b"initrd"),
        cmdline: "console=ttyS0".into(),
        signed: false,
    }
}

#[tokio::test]
async fn renew_is_202_with_a_body_larger_than_an_attestation() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    // Larger than /v1/attest accepts.
    let req = renew_request(MAX_BODY * 2);
    let body = serde_json::to_vec(&req).expect("json");
    assert!(body.len() > MAX_BODY);
    let (status, answer) = conn
        .post_json("/v1/renew", body.clone())
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    let resp: RenewResponse = serde_json::from_slice(&answer).expect("response");
    assert_eq!(resp.launch, "2");
    assert_eq!(resp.measurement, format!("{:0>96}", req.kernel.len()));
    // The same size is too large for /v1/attest.
    let fresh = server.conn().await;
    expect_error(
        &fresh,
        post("/v1/attest", Some("application/json"), body),
        413,
        "body-too-large",
    )
    .await;
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn renew_has_its_own_limit_and_json_errors() {
    let limits = Limits {
        max_renew_body: 100_000,
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&renew_request(100_000)).expect("json");
    expect_error(
        &conn,
        post("/v1/renew", Some("application/json"), body),
        413,
        "body-too-large",
    )
    .await;
    let conn = server.conn().await;
    expect_error(
        &conn,
        post(
            "/v1/renew",
            Some("application/json"),
            b"{\"nonce\":1}".to_vec(),
        ),
        400,
        "malformed-json",
    )
    .await;
    expect_error(
        &conn,
        post("/v1/renew", Some("text/plain"), b"{}".to_vec()),
        415,
        "unsupported-media-type",
    )
    .await;
    let (status, _) = conn.get("/v1/renew").await.expect("get");
    assert_eq!(status.as_u16(), 405);
    // A handler refusal keeps its status and code.
    let refusing = start(
        Double {
            refuse: Some(AttestError {
                code: "too-many-pending",
                status: 409,
                message: "approve or discard one first".into(),
            }),
            ..Double::default()
        },
        Limits::default(),
    )
    .await;
    let body = serde_json::to_vec(&renew_request(10)).expect("json");
    expect_error(
        &refusing.conn().await,
        post("/v1/renew", Some("application/json"), body),
        409,
        "too-many-pending",
    )
    .await;
    server.shutdown().await.expect("clean shutdown");
    refusing.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn one_renewal_at_a_time_others_are_busy() {
    let (entered_tx, mut entered) = amp::unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    let handler = Double {
        gate: Some(Gate {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        }),
        ..Double::default()
    };
    let server = start(handler, Limits::default()).await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&renew_request(1000)).expect("json");
    let first_body = body.clone();
    let first = tokio::spawn(async move { conn.post_json("/v1/renew", first_body).await });
    tokio::time::timeout(DEADLINE, entered.recv())
        .await
        .expect("the handler was entered in time")
        .expect("entered");

    // While the first is in the handler: a second renewal is refused,
    // attestation is not affected.
    let other = server.conn().await;
    expect_error(
        &other,
        post("/v1/renew", Some("application/json"), body.clone()),
        503,
        "busy",
    )
    .await;
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);

    release.send(()).expect("release");
    let (status, answer) = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("in time")
        .expect("task")
        .expect("the first renewal completed");
    assert_eq!(status.as_u16(), 202, "{answer:?}");

    // Free again (the gate lets the next one through at once).
    release.send(()).expect("release");
    let (status, _) = server
        .conn()
        .await
        .post_json("/v1/renew", body)
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_trickled_renewal_is_refused_and_frees_the_slot() {
    let limits = Limits {
        renew_floor: RateFloor {
            bytes_per_sec: 2000,
            grace: Duration::from_millis(300),
        },
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let tls = raw_tls(&server).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(
        b"POST /v1/renew HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
    )
    .await
    .expect("head");
    // Ten bytes a second, far below the floor, until the server answers.
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b" ").await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    let raw = read_until_close(&mut rd).await;
    trickle.abort();
    let (status, e) = status_and_body(&raw);
    assert_eq!(
        (status, e.error.as_str()),
        (408, "upload-too-slow"),
        "{e:?}"
    );
    assert!(e.message.contains("2000 bytes/s"), "{e:?}");

    // The slot is free again: a whole body at once is taken.
    let body = serde_json::to_vec(&renew_request(1000)).expect("json");
    let (status, answer) = server
        .conn()
        .await
        .post_json("/v1/renew", body)
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    server.shutdown().await.expect("clean shutdown");
}
