//! Test tooling, not used by the daemon: a small HTTPS client for the
//! `/v1` endpoint and a load generator over many keep-alive connections
//! that reports latency percentiles. The integration tests and the
//! `attest_load` bench drive the endpoint with it.
//!
//! ```no_run
//! # async fn example(ca_pem: &[u8]) -> Result<(), snpguardd::https::load::LoadError> {
//! use snpguardd::https::load::{load, Target};
//! let target = Target::new("127.0.0.1:8443".parse().expect("addr"), ca_pem, "localhost")?;
//! let stats = load(&target, 10_000, 200, |conn, _i| async move {
//!     let (status, _) = conn.get("/v1/health").await.map_err(|e| e.to_string())?;
//!     if status.is_success() { Ok(()) } else { Err(status.to_string()) }
//! })
//! .await?;
//! println!("{stats}");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

/// Largest response body a [`Conn`] reads.
const MAX_RESPONSE: usize = 1024 * 1024;
/// Error messages kept in [`LoadStats::sample_errors`].
const SAMPLE_ERRORS: usize = 5;

/// Why the client or the load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The CA PEM holds no usable certificate.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// The server name is not a DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// TCP, TLS or HTTP failed.
    #[error("{0}")]
    Connection(String),
    /// concurrency was zero.
    #[error("concurrency must be at least 1")]
    Concurrency,
}

/// Where to connect and whom to trust: only the given CA.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    source: Option<IpAddr>,
}

impl Target {
    /// `addr`, expecting a certificate for `server_name` that chains to
    /// a certificate in `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &[u8], server_name: &str) -> Result<Self, LoadError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| LoadError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| LoadError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(LoadError::Ca("no certificate in the PEM".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LoadError::Connection(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| LoadError::ServerName(server_name.to_owned()))?;
        Ok(Target {
            addr,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            source: None,
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connects from `source` (e.g. 127.0.0.2, a second client address on
    /// loopback) instead of the address the system picks.
    pub fn from_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Opens a TCP connection (from the source address, if one is set).
    pub async fn tcp(&self) -> std::io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(self.addr).await;
        };
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.addr).await
    }

    /// Opens one keep-alive connection.
    pub async fn connect(&self) -> Result<Conn, LoadError> {
        let err = |e: &dyn fmt::Display| LoadError::Connection(e.to_string());
        let tcp = self.tcp().await.map_err(|e| err(&e))?;
        tcp.set_nodelay(true).map_err(|e| err(&e))?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| err(&e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(&e))?;
        tokio::spawn(async move {
            // The connection ends when the Conn is dropped or the server
            // closes it; either is the end of the story here.
            let _ = connection.await;
        });
        Ok(Conn {
            sender: Arc::new(Mutex::new(sender)),
            host: self.addr.to_string(),
        })
    }
}

/// One HTTP/1.1 connection; clones share it and take turns.
#[derive(Clone)]
pub struct Conn {
    sender: Arc<Mutex<SendRequest<Full<Bytes>>>>,
    host: String,
}

impl Conn {
    /// Sends `req` and reads the whole response body (at most 1 MiB).
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let err = |e: &dyn fmt::Display| LoadError::Connection(e.to_string());
        if !req.headers().contains_key(HOST) {
            let host = self.host.parse().map_err(|e| err(&e))?;
            req.headers_mut().insert(HOST, host);
        }
        let response = {
            let mut sender = self.sender.lock().await;
            sender.ready().await.map_err(|e| err(&e))?;
            sender.send_request(req).await.map_err(|e| err(&e))?
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| err(&e))?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), LoadError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .map_err(|e| LoadError::Connection(e.to_string()))?;
        self.send(req).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<(StatusCode, Bytes), LoadError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| LoadError::Connection(e.to_string()))?;
        self.send(req).await
    }
}

/// The outcome of a [`load`] run. Latencies are per operation.
#[derive(Debug, Clone)]
pub struct LoadStats {
    /// Operations run.
    pub ops: usize,
    /// Operations that returned an error.
    pub errors: usize,
    /// The first few error messages.
    pub sample_errors: Vec<String>,
    /// Median latency.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest operation.
    pub max: Duration,
    /// Wall time of the run, connection set-up included.
    pub elapsed: Duration,
    /// Operations per second over `elapsed`.
    pub ops_per_sec: f64,
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} ops, {} errors, {:.0} ops/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.ops,
            self.errors,
            self.ops_per_sec,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Runs `op` `n_ops` times over `concurrency` keep-alive connections
/// (each connection runs its operations one after another), and measures
/// each operation. `op` gets the connection and the operation's index; an
/// operation may send several requests (a challenge, then an attestation).
/// Fails only if a connection cannot be opened.
pub async fn load<F, Fut>(
    target: &Target,
    n_ops: usize,
    concurrency: usize,
    op: F,
) -> Result<LoadStats, LoadError>
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    if concurrency == 0 {
        return Err(LoadError::Concurrency);
    }
    let started = Instant::now();
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.min(n_ops.max(1)) {
        conns.push(target.connect().await?);
    }
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for conn in conns {
        let op = op.clone();
        let next = next.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n_ops {
                    break;
                }
                let t = Instant::now();
                let outcome = op(conn.clone(), i).await;
                latencies.push(t.elapsed());
                if let Err(e) = outcome {
                    errors.push(e);
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(n_ops);
    let mut errors = 0;
    let mut sample_errors = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (l, e) = done.map_err(|e| LoadError::Connection(e.to_string()))?;
        latencies.extend(l);
        errors += e.len();
        let room = SAMPLE_ERRORS.saturating_sub(sample_errors.len());
        sample_errors.extend(e.into_iter().take(room));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: usize| {
        if latencies.is_empty() {
            Duration::ZERO
        } else {
            latencies[(latencies.len() - 1) * p / 100]
        }
    };
    Ok(LoadStats {
        ops: latencies.len(),
        errors,
        sample_errors,
        p50: pct(50),
        p90: pct(90),
        p99: pct(99),
        max: latencies.last().copied().unwrap_or_default(),
        elapsed,
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
    })
}
