//! `POST /v1/renew` at the HTTP layer: 202 with the handler's answer, its
//! own body limit (while `/v1/attest` keeps 64 KiB), one renewal at a
//! time (`busy`), JSON errors.

use super::*;

fn renew_request(kernel_len: usize) -> RenewRequest {
    RenewRequest {
        nonce: snpguard_protocol::attest::encode_nonce(&[5; 32]),
        report: snpguard_protocol::attest::b64(&[0u8; 1184]),
        cert_table: None,
        kernel: snpguard_protocol::attest::b64(&vec![7u8; kernel_len]),
        initrd: snpguard_protocol::attest::b64(b"initrd"),
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

fn nonce_refusal(code: &'static str, status: u16) -> AttestError {
    AttestError {
        code,
        status,
        message: "request a new challenge".into(),
    }
}

/// A handler that holds the first renewal until released; `bad` nonces
/// are refused by `check_nonce`.
fn gated(
    bad: Vec<(String, AttestError)>,
) -> (Double, amp::UnboundedReceiver<()>, mpsc::Sender<()>) {
    let (entered_tx, entered) = amp::unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    let handler = Double {
        gate: Some(Gate {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        }),
        bad_nonces: bad,
        ..Double::default()
    };
    (handler, entered, release)
}

#[tokio::test]
async fn a_dead_nonce_is_refused_before_the_renewal_slot() {
    let dead = snpguard_protocol::attest::encode_nonce(&[6; 32]);
    let (handler, mut entered, release) =
        gated(vec![(dead.clone(), nonce_refusal("nonce-expired", 401))]);
    let handler = Arc::new(handler);
    let server = start_shared(handler.clone(), Limits::default()).await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&renew_request(1000)).expect("json");
    let first = tokio::spawn(async move { conn.post_json("/v1/renew", body).await });
    tokio::time::timeout(DEADLINE, entered.recv())
        .await
        .expect("the handler was entered in time")
        .expect("entered");

    // The slot is taken, but a request with a dead nonce learns that
    // first: it never competes for the slot.
    let mut req = renew_request(1000);
    req.nonce = dead.clone();
    let e = expect_error(
        &server.conn().await,
        post(
            "/v1/renew",
            Some("application/json"),
            serde_json::to_vec(&req).expect("json"),
        ),
        401,
        "nonce-expired",
    )
    .await;
    assert_eq!(e.message, "request a new challenge");
    release.send(()).expect("release");
    let (status, _) = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("in time")
        .expect("task")
        .expect("the first renewal completed");
    assert_eq!(status.as_u16(), 202);
    // The dead nonce was checked and never reached the handler.
    assert!(handler.checked.lock().expect("checked").contains(&dead));
    assert!(!handler.renewed.lock().expect("renewed").contains(&dead));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_stalled_upload_with_a_forged_nonce_does_not_hold_the_slot() {
    let forged = snpguard_protocol::attest::encode_nonce(&[8; 32]);
    let handler = Double {
        bad_nonces: vec![(forged.clone(), nonce_refusal("nonce-invalid", 400))],
        ..Double::default()
    };
    let server = start(handler, Limits::default()).await;
    let tls = raw_tls(&server).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    // A large declared body that never comes: only its nonce arrives.
    let head = format!(
        "POST /v1/renew HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: 100000\r\n\r\n{{ \"nonce\" : \"{forged}\","
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    wr.flush().await.expect("flush");
    // Answered at once, not after the upload floor's grace.
    let raw = read_until_close(&mut rd).await;
    let (status, e) = status_and_body(&raw);
    assert_eq!((status, e.error.as_str()), (400, "nonce-invalid"), "{e:?}");

    // Meanwhile a renewal with a live nonce gets the slot.
    let body = serde_json::to_vec(&renew_request(1000)).expect("json");
    let (status, answer) = server
        .conn()
        .await
        .post_json("/v1/renew", body)
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    drop(wr);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_nonce_must_open_the_renewal_body() {
    let handler = Arc::new(Double::default());
    let server = start_shared(handler.clone(), Limits::default()).await;
    let req = renew_request(10);
    // The same request with the nonce last: serde_json::Value sorts keys.
    let reordered = serde_json::to_value(&req).expect("value");
    let body = serde_json::to_vec(&reordered).expect("json");
    assert!(body.starts_with(b"{\"cmdline\""), "{body:?}");
    let e = expect_error(
        &server.conn().await,
        post("/v1/renew", Some("application/json"), body),
        400,
        "malformed-json",
    )
    .await;
    assert!(e.message.contains("first member is \"nonce\""), "{e:?}");
    // An escaped key is not the literal key either.
    let body = format!("{{\"\\u006eonce\":\"{}\"}}", req.nonce);
    expect_error(
        &server.conn().await,
        post("/v1/renew", Some("application/json"), body),
        400,
        "malformed-json",
    )
    .await;
    assert!(handler.checked.lock().expect("checked").is_empty());
    assert!(handler.renewed.lock().expect("renewed").is_empty());
    // Whitespace around the parts is JSON and accepted.
    let json = serde_json::to_string_pretty(&req).expect("json");
    let (status, answer) = server
        .conn()
        .await
        .post_json("/v1/renew", format!("\n {json}").into_bytes())
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn an_upload_is_cut_when_its_nonce_expires() {
    let handler = Double {
        nonce_left: Some(Duration::from_millis(400)),
        ..Double::default()
    };
    let server = start(handler, Limits::default()).await;
    let tls = raw_tls(&server).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let nonce = snpguard_protocol::attest::encode_nonce(&[5; 32]);
    let head = format!(
        "POST /v1/renew HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: 100000\r\n\r\n{{\"nonce\":\"{nonce}\",\"report\":\""
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    wr.flush().await.expect("flush");
    // Well within the upload floor's grace, but past the nonce.
    let raw = read_until_close(&mut rd).await;
    let (status, e) = status_and_body(&raw);
    assert_eq!((status, e.error.as_str()), (401, "nonce-expired"), "{e:?}");
    // The slot is free again.
    let body = serde_json::to_vec(&renew_request(1000)).expect("json");
    let (status, answer) = server
        .conn()
        .await
        .post_json("/v1/renew", body)
        .await
        .expect("renew");
    assert_eq!(status.as_u16(), 202, "{answer:?}");
    drop(wr);
    server.shutdown().await.expect("clean shutdown");
}
