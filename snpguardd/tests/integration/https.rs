//! The HTTPS endpoint on 127.0.0.1 with a self-signed certificate (rcgen)
//! and a test double behind `AttestHandler`; clients pin that certificate.
//! Renewal uploads are in https/renew.rs, connection floods in
//! https/flood.rs.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use snpguard_protocol::attest::{
    AttestRequest, AttestResponse, ChallengeResponse, ErrorBody, IngestionKeyResponse,
    RenewRequest, RenewResponse, SignedLaunchRequest, SignedLaunchResponse, MAX_BODY,
};
use snpguardd::attest::{AttestError, AttestHandler};
use snpguardd::https::load::{load, Conn, Target};
use snpguardd::https::{serve, server_config, Limits, RateFloor, ServeError, TlsMaterial};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc as amp, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Upper bound for anything a test waits for.
const DEADLINE: Duration = Duration::from_secs(10);
const INGESTION_KEY: [u8; 32] = [0x42; 32];

/// Holds the handler in `attest` until released (graceful shutdown test).
struct Gate {
    entered: amp::UnboundedSender<()>,
    release: Mutex<mpsc::Receiver<()>>,
}

#[derive(Default)]
struct Double {
    seen: Mutex<Vec<(AttestRequest, IpAddr)>>,
    refuse: Option<AttestError>,
    panic: bool,
    gate: Option<Gate>,
    /// Nonces `check_nonce` refuses, with the refusal.
    bad_nonces: Vec<(String, AttestError)>,
    /// How long `check_nonce` says a nonce stays valid (default 60 s).
    nonce_left: Option<Duration>,
    /// Nonces `check_nonce` was asked about.
    checked: Mutex<Vec<String>>,
    /// Renewals that reached the handler, by nonce.
    renewed: Mutex<Vec<String>>,
}

impl AttestHandler for Double {
    fn challenge(&self) -> Result<ChallengeResponse, AttestError> {
        Ok(ChallengeResponse {
            nonce: snpguard_protocol::attest::encode_nonce(&[9; 32]),
            expires_in: 60,
        })
    }

    fn attest(&self, req: AttestRequest, peer: IpAddr) -> Result<AttestResponse, AttestError> {
        if self.panic {
            panic!("the test double was told to panic");
        }
        if let Some(gate) = &self.gate {
            let _ = gate.entered.send(());
            let release = gate.release.lock().expect("gate");
            release.recv_timeout(DEADLINE).expect("released in time");
        }
        let record = format!("record-for-{}", req.nonce);
        self.seen.lock().expect("seen").push((req, peer));
        match &self.refuse {
            Some(e) => Err(e.clone()),
            None => Ok(AttestResponse {
                record,
                sealed_key: snpguard_protocol::attest::b64(b"sealed"),
                signature: None,
                offline_unlock: None,
            }),
        }
    }

    fn renew(&self, req: RenewRequest, _peer: IpAddr) -> Result<RenewResponse, AttestError> {
        self.renewed
            .lock()
            .expect("renewed")
            .push(req.nonce.clone());
        if let Some(gate) = &self.gate {
            let _ = gate.entered.send(());
            let release = gate.release.lock().expect("gate");
            release.recv_timeout(DEADLINE).expect("released in time");
        }
        match &self.refuse {
            Some(e) => Err(e.clone()),
            None => Ok(RenewResponse {
                record: format!("record-for-{}", req.nonce),
                launch: "2".into(),
                measurement: format!("{:0>96}", req.kernel.len()),
                signature: None,
            }),
        }
    }

    fn signed_launch(
        &self,
        req: SignedLaunchRequest,
        _peer: IpAddr,
    ) -> Result<SignedLaunchResponse, AttestError> {
        match &self.refuse {
            Some(e) => Err(e.clone()),
            None => Ok(SignedLaunchResponse {
                record: format!("record-for-{}", req.nonce),
                launch: req.launch,
                launch_config: "{}".into(),
                id_block: String::new(),
                id_auth: String::new(),
                signature: None,
            }),
        }
    }

    fn check_nonce(&self, nonce: &str) -> Result<Duration, AttestError> {
        self.checked.lock().expect("checked").push(nonce.to_owned());
        match self.bad_nonces.iter().find(|(n, _)| n == nonce) {
            Some((_, e)) => Err(e.clone()),
            None => Ok(self.nonce_left.unwrap_or(Duration::from_secs(60))),
        }
    }

    fn ingestion_key(&self) -> [u8; 32] {
        INGESTION_KEY
    }
}

struct Server {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    target: Target,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    async fn conn(&self) -> Conn {
        self.target.connect().await.expect("connect")
    }

    /// Stops the server and waits for `serve` to return.
    async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("serve returned in time")
            .expect("serve task")
    }
}

fn self_signed() -> (TlsMaterial, Vec<u8>) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let cert = generated.cert.pem().into_bytes();
    let key = Zeroizing::new(generated.signing_key.serialize_pem().into_bytes());
    (TlsMaterial::new(cert.clone(), key), cert)
}

async fn start(handler: impl AttestHandler, limits: Limits) -> Server {
    start_shared(Arc::new(handler), limits).await
}

async fn start_shared(handler: Arc<dyn AttestHandler>, limits: Limits) -> Server {
    let (material, ca_pem) = self_signed();
    start_with(handler, limits, &material, ca_pem, "localhost").await
}

async fn start_with(
    handler: Arc<dyn AttestHandler>,
    limits: Limits,
    material: &TlsMaterial,
    ca_pem: Vec<u8>,
    name: &str,
) -> Server {
    let tls = server_config(material).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, tls, handler, limits, async {
        let _ = stopped.await;
    }));
    let target = Target::new(addr, &ca_pem, name).expect("target");
    Server {
        addr,
        ca_pem,
        target,
        stop: Some(stop),
        task,
    }
}

fn request() -> AttestRequest {
    AttestRequest {
        nonce: snpguard_protocol::attest::encode_nonce(&[9; 32]),
        report: snpguard_protocol::attest::b64(&[1u8; 1184]),
        cert_table: None,
        ephemeral_key: snpguard_protocol::attest::b64(&[2u8; 32]),
        signed: false,
        offline: false,
    }
}

fn error_body(body: &Bytes) -> ErrorBody {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body:?}"))
}

async fn expect_error(
    conn: &Conn,
    req: hyper::Request<http_body_util::Full<Bytes>>,
    status: u16,
    code: &str,
) -> ErrorBody {
    let (got, body) = conn.send(req).await.expect("response");
    assert_eq!(got.as_u16(), status, "body: {body:?}");
    let e = error_body(&body);
    assert_eq!(e.error, code);
    e
}

fn post(
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> hyper::Request<http_body_util::Full<Bytes>> {
    let mut b = hyper::Request::builder().method("POST").uri(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(http_body_util::Full::new(body.into()))
        .expect("request")
}

fn client_config(
    ca_pem: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn raw_tls(server: &Server) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = client_config(&server.ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let tcp = TcpStream::connect(server.addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls")
}

/// Reads until the server closes (or `DEADLINE`); a missing close_notify
/// counts as the end.
async fn read_until_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close the connection in time"),
        }
    }
}

fn status_and_body(raw: &[u8]) -> (u16, ErrorBody) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let e: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, e)
}

#[tokio::test]
async fn health_and_ingestion_key() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    let (status, body) = conn.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
    let (status, body) = conn.get("/v1/ingestion-key").await.expect("key");
    assert_eq!(status.as_u16(), 200);
    let key: IngestionKeyResponse = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        key.public_key,
        snpguard_protocol::attest::b64(&INGESTION_KEY)
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn challenge_takes_an_empty_body_or_an_empty_object() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    for (ct, body) in [
        (None, ""),
        (Some("application/json"), "{}"),
        (Some("application/json; charset=utf-8"), " { } \n"),
    ] {
        let (status, body) = conn
            .send(post("/v1/attest/challenge", ct, body))
            .await
            .expect("challenge");
        assert_eq!(status.as_u16(), 200, "{body:?}");
        let c: ChallengeResponse = serde_json::from_slice(&body).expect("json");
        assert_eq!(c.expires_in, 60);
        assert!(snpguard_protocol::attest::decode_nonce(&c.nonce).is_some());
    }
    expect_error(
        &conn,
        post(
            "/v1/attest/challenge",
            Some("application/json"),
            r#"{"x":1}"#,
        ),
        400,
        "malformed-json",
    )
    .await;
    expect_error(
        &conn,
        post("/v1/attest/challenge", Some("text/plain"), "{}"),
        415,
        "unsupported-media-type",
    )
    .await;
}

#[tokio::test]
async fn attest_passes_the_decoded_request_and_returns_the_answer() {
    let handler = Arc::new(Double::default());
    let server = start_shared(handler.clone(), Limits::default()).await;
    let conn = server.conn().await;
    let mut req = request();
    req.cert_table = Some(snpguard_protocol::attest::b64(&[3u8; 100]));
    let (status, body) = conn
        .post_json("/v1/attest", serde_json::to_vec(&req).expect("json"))
        .await
        .expect("attest");
    assert_eq!(status.as_u16(), 200, "{body:?}");
    let resp: AttestResponse = serde_json::from_slice(&body).expect("response");
    assert_eq!(resp.record, format!("record-for-{}", req.nonce));
    let seen = handler.seen.lock().expect("seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, req);
    assert_eq!(seen[0].1, IpAddr::from([127, 0, 0, 1]));
}

#[tokio::test]
async fn handler_refusal_keeps_its_status_and_code() {
    let handler = Double {
        refuse: Some(AttestError {
            code: "attestation-rejected",
            status: 403,
            message: "the evidence does not match any record".to_owned(),
        }),
        ..Double::default()
    };
    let server = start(handler, Limits::default()).await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&request()).expect("json");
    let e = expect_error(
        &conn,
        post("/v1/attest", Some("application/json"), body),
        403,
        "attestation-rejected",
    )
    .await;
    assert_eq!(e.message, "the evidence does not match any record");
}

#[tokio::test]
async fn handler_panic_is_a_500_and_the_server_stays_up() {
    let server = start(
        Double {
            panic: true,
            ..Double::default()
        },
        Limits::default(),
    )
    .await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&request()).expect("json");
    expect_error(
        &conn,
        post("/v1/attest", Some("application/json"), body),
        500,
        "internal",
    )
    .await;
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test]
async fn malformed_and_unknown_fields_are_400() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    for body in ["{", "[]", "null", r#"{"nonce": 1}"#, "\u{0}"] {
        expect_error(
            &conn,
            post("/v1/attest", Some("application/json"), body),
            400,
            "malformed-json",
        )
        .await;
    }
    let mut value = serde_json::to_value(request()).expect("json");
    value["extra"] = serde_json::Value::Bool(true);
    let e = expect_error(
        &conn,
        post("/v1/attest", Some("application/json"), value.to_string()),
        400,
        "malformed-json",
    )
    .await;
    assert!(e.message.contains("extra"), "{}", e.message);
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    let body = serde_json::to_vec(&request()).expect("json");
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        expect_error(
            &conn,
            post("/v1/attest", ct, body.clone()),
            415,
            "unsupported-media-type",
        )
        .await;
    }
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_405() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    for path in ["/", "/v1", "/v2/health", "/v1/health/", "/v1/attest/other"] {
        let (status, body) = conn.get(path).await.expect("response");
        assert_eq!(status.as_u16(), 404, "{path}");
        assert_eq!(error_body(&body).error, "not-found");
    }
    let (status, body) = conn.get("/v1/attest").await.expect("response");
    assert_eq!(status.as_u16(), 405);
    assert_eq!(error_body(&body).error, "method-not-allowed");
    let req = post("/v1/health", Some("application/json"), "{}");
    let (status, body) = conn.send(req).await.expect("response");
    assert_eq!(status.as_u16(), 405);
    assert_eq!(error_body(&body).error, "method-not-allowed");
    let req = hyper::Request::builder()
        .method("DELETE")
        .uri("/v1/attest/challenge")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    expect_error(&conn, req, 405, "method-not-allowed").await;
}

#[tokio::test]
async fn oversize_bodies_are_413_and_the_server_stays_up() {
    let server = start(Double::default(), Limits::default()).await;
    let big = vec![b' '; MAX_BODY + 1];

    // With an honest Content-Length (through the regular client).
    let conn = server.conn().await;
    expect_error(
        &conn,
        post("/v1/attest", Some("application/json"), big.clone()),
        413,
        "body-too-large",
    )
    .await;

    // Chunked, no Content-Length: counted while reading.
    let mut tls = raw_tls(&server).await;
    let head = "POST /v1/attest HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    tls.write_all(head.as_bytes()).await.expect("head");
    for chunk in big.chunks(8192) {
        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("size");
        tls.write_all(chunk).await.expect("chunk");
        tls.write_all(b"\r\n").await.expect("crlf");
    }
    tls.write_all(b"0\r\n\r\n").await.expect("end");
    tls.flush().await.expect("flush");
    let (status, e) = status_and_body(&read_until_close(&mut tls).await);
    assert_eq!(status, 413);
    assert_eq!(e.error, "body-too-large");

    // A lying Content-Length larger than the limit fails before reading.
    let mut tls = raw_tls(&server).await;
    let head = format!(
        "POST /v1/attest HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{}}",
        u64::MAX / 2
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    let (status, e) = status_and_body(&read_until_close(&mut tls).await);
    assert_eq!(status, 413);
    assert_eq!(e.error, "body-too-large");

    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn tls12_and_h2_only_clients_are_refused() {
    let server = start(Double::default(), Limits::default()).await;
    for (versions, alpn) in [
        (&[&rustls::version::TLS12][..], &[&b"http/1.1"[..]][..]),
        (&[&rustls::version::TLS13][..], &[&b"h2"[..]][..]),
    ] {
        let config = client_config(&server.ca_pem, versions, alpn);
        let tcp = TcpStream::connect(server.addr).await.expect("tcp");
        let name = ServerName::try_from("localhost").expect("name");
        let done = tokio::time::timeout(
            DEADLINE,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("handshake ended in time");
        assert!(done.is_err(), "the handshake succeeded");
    }
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_timeouts() {
    // No TLS handshake at all. Separate servers, so that a slow machine
    // cannot make the other timeout cut the handshake of the second case.
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("tcp");
    assert!(read_until_close(&mut tcp).await.is_empty());

    // A handshake, then no request: closed (read_until_close panics if
    // the server keeps the connection past DEADLINE).
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let mut tls = raw_tls(&server).await;
    read_until_close(&mut tls).await;
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429() {
    let limits = Limits {
        per_ip_burst: 5,
        per_ip_rate: 0.001,
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let conn = server.conn().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (status, body) = conn.get("/v1/health").await.expect("response");
        if status.as_u16() == 429 {
            assert_eq!(error_body(&body).error, "rate-limited");
        }
        statuses.push(status.as_u16());
    }
    // The connection took the first token.
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429, 429, 429]);
    // A fresh connection from the same address is closed at accept.
    assert!(server.target.connect().await.is_err());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let (entered_tx, mut entered) = amp::unbounded_channel();
    let (release, release_rx) = mpsc::channel();
    let handler = Double {
        gate: Some(Gate {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        }),
        ..Double::default()
    };
    let mut server = start(handler, Limits::default()).await;
    let conn = server.conn().await;
    let in_flight = tokio::spawn(async move {
        conn.post_json("/v1/attest", serde_json::to_vec(&request()).expect("json"))
            .await
    });
    tokio::time::timeout(DEADLINE, entered.recv())
        .await
        .expect("the handler was entered in time")
        .expect("entered");

    let _ = server.stop.take().expect("stop").send(());
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(server.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the listener was not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !server.task.is_finished(),
        "serve returned with a request in flight"
    );

    release.send(()).expect("release");
    let (status, body) = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("in time")
        .expect("task")
        .expect("the in-flight request completed");
    assert_eq!(status.as_u16(), 200, "{body:?}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn keep_alive_serves_100_requests_on_one_connection() {
    let server = start(Double::default(), Limits::default()).await;
    let conn = server.conn().await;
    for i in 0..100 {
        let (status, _) = if i % 2 == 0 {
            conn.get("/v1/health").await.expect("health")
        } else {
            conn.post_json("/v1/attest", serde_json::to_vec(&request()).expect("json"))
                .await
                .expect("attest")
        };
        assert_eq!(status.as_u16(), 200, "request {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_200_keep_alive_connections() {
    let limits = Limits {
        per_ip_burst: 10_000,
        per_ip_rate: 10_000.0,
        max_connections_per_source: 1000,
        ..Limits::default()
    };
    let server = start(Double::default(), limits).await;
    let body = Bytes::from(serde_json::to_vec(&request()).expect("json"));
    let stats = load(&server.target, 1000, 200, move |conn, _| {
        let body = body.clone();
        async move {
            let (status, _) = conn
                .post_json("/v1/attest", body)
                .await
                .map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
    })
    .await
    .expect("load");
    println!("{stats}");
    assert_eq!(stats.ops, 1000);
    assert_eq!(stats.errors, 0, "{:?}", stats.sample_errors);
    assert!(stats.p50 <= stats.p90 && stats.p90 <= stats.p99 && stats.p99 <= stats.max);
}

fn generate(dir: &Path, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/generate-tls-certs.sh");
    Command::new(script)
        .arg("--output")
        .arg(dir)
        .args(args)
        .output()
        .expect("run generate-tls-certs.sh")
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn generated_certificates_serve_and_verify() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = generate(
        dir.path(),
        &[
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--dns",
            "localhost",
            "--dns",
            "attest.example",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let sans = openssl(
        &[
            "x509",
            "-in",
            "server.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        dir.path(),
    );
    for want in [
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:localhost",
        "DNS:attest.example",
    ] {
        assert!(sans.contains(want), "{want} missing from {sans}");
    }
    let verified = openssl(&["verify", "-CAfile", "ca.pem", "server.pem"], dir.path());
    assert!(verified.contains("server.pem: OK"), "{verified}");
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    // Refuses to overwrite without --force, and to run without a name.
    let before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
    let again = generate(dir.path(), &["--ip", "127.0.0.1"]);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before
    );
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(!generate(empty.path(), &[]).status.success());
    assert!(std::fs::read_dir(empty.path())
        .expect("dir")
        .next()
        .is_none());

    // The daemon serves with them; a client pinning ca.pem connects by IP.
    let material = TlsMaterial::read(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
    )
    .expect("read");
    let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca");
    let server = start_with(
        Arc::new(Double::default()),
        Limits::default(),
        &material,
        ca,
        "127.0.0.1",
    )
    .await;
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);

    let forced = generate(dir.path(), &["--dns", "other.example", "--force"]);
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before
    );
}

#[tokio::test]
async fn an_oversize_request_head_is_refused_by_the_http_layer() {
    let server = start(Double::default(), Limits::default()).await;
    let mut tls = raw_tls(&server).await;
    let mut head = String::from("GET /v1/health HTTP/1.1\r\nhost: localhost\r\n");
    // More headers than allowed, in a head small enough to be read whole
    // (so that closing does not reset the connection under the reply).
    for i in 0..60 {
        head.push_str(&format!("x-{i}: a\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.expect("head");
    let raw = read_until_close(&mut tls).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 431"), "{text:?}");
    let (status, _) = server.conn().await.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200);
}

#[path = "https/renew.rs"]
mod renew;

#[path = "https/flood.rs"]
mod flood;
