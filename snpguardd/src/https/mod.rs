//! The HTTPS endpoint of remote attestation: `/v1` over HTTP/1.1 and
//! TLS 1.3 (hyper + rustls), in front of an [`AttestHandler`].
//!
//! Routes (docs/api.md describes them for clients):
//!
//! | method | path                   | answer                              |
//! |--------|------------------------|-------------------------------------|
//! | POST   | `/v1/attest/challenge` | `ChallengeResponse`                 |
//! | POST   | `/v1/attest`           | `AttestResponse` (JSON request)     |
//! | POST   | `/v1/renew`            | 202 `RenewResponse` (JSON request)  |
//! | POST   | `/v1/signed-launch`    | `SignedLaunchResponse` (JSON request) |
//! | GET    | `/v1/health`           | `{"status":"ok"}`                   |
//! | GET    | `/v1/ingestion-key`    | `IngestionKeyResponse`              |
//!
//! Every refusal is a JSON `ErrorBody` with a stable code. Everything at
//! the edge is bounded ([`Limits`]): body size (counted while reading),
//! the time to the TLS ClientHello and to the end of the handshake,
//! header and whole-request time, a token bucket per source address
//! (charged once per accepted connection and once per request),
//! concurrent connections in all and per source, and the wait for
//! in-flight requests at shutdown. A connection over its source's limits
//! is closed at accept, before any TLS work. Handler calls run on tokio's
//! blocking pool.
//!
//! Bodies are never logged: each request is one debug line (peer, method,
//! path, status, time), refusals one info line with their code, server
//! failures a warning.

mod ratelimit;
mod routes;
mod tls;

pub mod leading;
pub mod load;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;

pub use rustls::ServerConfig;
pub use tls::{server_config, TlsError, TlsMaterial};

use crate::attest::AttestHandler;
use ratelimit::{ConnectionCounts, ConnectionPermit, RateLimiter};
use routes::Reply;

/// Longest request path written to the log.
const MAX_LOGGED_PATH: usize = 96;
/// Largest request head (request line and headers) hyper buffers.
const MAX_HEAD: usize = 16 * 1024;
/// Most request headers accepted.
const MAX_HEADERS: usize = 48;
/// Pause after a failed accept (e.g. out of file descriptors), so that
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds of the endpoint.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body in bytes (default
    /// [`snpguard_protocol::attest::MAX_BODY`]).
    pub max_body: usize,
    /// Largest `/v1/renew` body in bytes (default
    /// [`snpguard_protocol::attest::MAX_RENEW_BODY`]); one renewal is processed at
    /// a time, others are answered `busy`.
    pub max_renew_body: usize,
    /// Time for a whole `/v1/renew` request: body and handler.
    pub renew_timeout: Duration,
    /// The slowest average upload a `/v1/renew` body may arrive at: one
    /// renewal holds the only slot while its body arrives.
    pub renew_floor: RateFloor,
    /// Requests per second a source regains (token bucket refill).
    pub per_ip_rate: f64,
    /// Requests a source may make at once (token bucket size).
    pub per_ip_burst: u32,
    /// Concurrent connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent connections of one source (IPv4 address or IPv6 /64);
    /// more are closed at accept.
    pub max_connections_per_source: usize,
    /// Sources whose buckets are remembered at once.
    pub max_tracked_sources: usize,
    /// Time for the TLS ClientHello to arrive after the connection was
    /// accepted.
    pub client_hello_timeout: Duration,
    /// Time for the whole TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a request head to arrive, counted from when the server
    /// waits for one (so it is also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Time for a whole request: body and handler.
    pub request_timeout: Duration,
    /// Time in-flight connections get to finish after shutdown.
    pub shutdown_grace: Duration,
}

/// A minimum average upload rate, enforced once `grace` has passed (a
/// TLS connection and the first frames may be slow to start).
#[derive(Debug, Clone, Copy)]
pub struct RateFloor {
    /// Bytes per second, averaged over the whole upload so far.
    pub bytes_per_sec: u64,
    /// Time before the floor applies.
    pub grace: Duration,
}

impl RateFloor {
    /// Whether `received` bytes after `elapsed` are below the floor.
    pub fn too_slow(&self, received: usize, elapsed: Duration) -> bool {
        elapsed > self.grace
            && (received as u128) * 1000 < u128::from(self.bytes_per_sec) * elapsed.as_millis()
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: snpguard_protocol::attest::MAX_BODY,
            max_renew_body: snpguard_protocol::attest::MAX_RENEW_BODY,
            renew_timeout: Duration::from_secs(600),
            renew_floor: RateFloor {
                bytes_per_sec: 256 * 1024,
                grace: Duration::from_secs(15),
            },
            per_ip_rate: 20.0,
            per_ip_burst: 200,
            max_connections: 512,
            max_connections_per_source: 32,
            max_tracked_sources: 10_000,
            client_hello_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), ServeError> {
        let bad = |what: &'static str| Err(ServeError::Limits(what));
        if self.max_body == 0 || self.max_renew_body == 0 {
            return bad("max_body and max_renew_body must be positive");
        }
        if !(self.per_ip_rate.is_finite() && self.per_ip_rate > 0.0) {
            return bad("per_ip_rate must be a positive number");
        }
        if self.per_ip_burst == 0 {
            return bad("per_ip_burst must be at least 1");
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return bad("max_connections must be positive");
        }
        if self.max_connections_per_source == 0 {
            return bad("max_connections_per_source must be positive");
        }
        if self.renew_floor.bytes_per_sec == 0 {
            return bad("renew_floor.bytes_per_sec must be positive");
        }
        if self.max_tracked_sources == 0 {
            return bad("max_tracked_sources must be positive");
        }
        let times = [
            self.client_hello_timeout,
            self.handshake_timeout,
            self.header_timeout,
            self.request_timeout,
            self.renew_timeout,
        ];
        if times.iter().any(Duration::is_zero) {
            return bad("timeouts must be positive");
        }
        Ok(())
    }
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The limits make no sense.
    #[error("invalid HTTPS limits: {0}")]
    Limits(&'static str),
    /// The listener has no address.
    #[error("HTTPS listener: {0}")]
    Listener(#[source] std::io::Error),
    /// Connections were still open when the shutdown grace ran out; they
    /// were cut.
    #[error("{0} HTTPS connections were still open after the shutdown grace and were cut")]
    ShutdownCut(usize),
}

/// What every connection shares.
struct Shared {
    handler: Arc<dyn AttestHandler>,
    limits: Limits,
    rate: RateLimiter,
    /// Open connections per source.
    per_source: Arc<ConnectionCounts>,
    /// One permit: the renewal being processed.
    renewing: Arc<Semaphore>,
}

/// Serves `/v1` on `listener` until `shutdown` completes; then stops
/// accepting (the listener is closed), lets in-flight requests finish for
/// at most [`Limits::shutdown_grace`], and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<dyn AttestHandler>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    limits.check()?;
    let local = listener.local_addr().map_err(ServeError::Listener)?;
    let shared = Arc::new(Shared {
        handler,
        rate: RateLimiter::new(
            limits.per_ip_rate,
            limits.per_ip_burst,
            limits.max_tracked_sources,
        ),
        per_source: ConnectionCounts::new(limits.max_connections_per_source),
        limits,
        renewing: Arc::new(Semaphore::new(1)),
    });
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tracing::info!(address = %local, "serving attestation over HTTPS");

    tokio::pin!(shutdown);
    loop {
        while let Some(done) = connections.try_join_next() {
            log_task_end(done);
        }
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an HTTPS connection failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        // Refused before any TLS work: closing costs the server nothing,
        // and one source can hold neither every slot nor a flood of
        // handshakes. Debug lines only, so a flood does not flood the
        // journal too.
        if !shared.rate.allow(peer.ip(), Instant::now()) {
            tracing::debug!(peer = %peer.ip(), "HTTPS connection closed at accept: rate-limited");
            continue;
        }
        let Some(permit) = shared.per_source.open(peer.ip()) else {
            tracing::debug!(
                peer = %peer.ip(),
                limit = shared.limits.max_connections_per_source,
                "HTTPS connection closed at accept: the source holds its limit of connections"
            );
            continue;
        };
        connections.spawn(connection(
            shared.clone(),
            tls.clone(),
            stream,
            peer,
            stop_rx.clone(),
            (slot, permit),
        ));
    }

    drop(listener);
    // Receivers may all be gone already; nothing to tell then.
    let _ = stop_tx.send(());
    tracing::info!(
        connections = connections.len(),
        "HTTPS shutting down; finishing in-flight requests"
    );
    let finish = async {
        while let Some(done) = connections.join_next().await {
            log_task_end(done);
        }
    };
    if tokio::time::timeout(shared.limits.shutdown_grace, finish)
        .await
        .is_err()
    {
        let left = connections.len();
        connections.abort_all();
        tracing::warn!(connections = left, "HTTPS shutdown grace ran out");
        return Err(ServeError::ShutdownCut(left));
    }
    tracing::info!("HTTPS stopped");
    Ok(())
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(error) = done {
        if error.is_panic() {
            tracing::error!(%error, "an HTTPS connection task panicked");
        }
    }
}

/// One connection: the ClientHello (within
/// [`Limits::client_hello_timeout`]), the rest of the TLS handshake
/// (within [`Limits::handshake_timeout`] from accept), then HTTP/1.1 with
/// keep-alive until the client closes, a timeout fires or the server
/// shuts down. `_slots` (the listener's and the source's) are held for
/// the connection's lifetime.
async fn connection(
    shared: Arc<Shared>,
    tls_config: Arc<ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
    _slots: (OwnedSemaphorePermit, ConnectionPermit),
) {
    let ip = peer.ip();
    // Small JSON replies: send them now rather than waiting for more.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(peer = %ip, %error, "TCP_NODELAY");
    }
    let limits = &shared.limits;
    let handshake = async {
        let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = tokio::time::timeout(limits.client_hello_timeout, lazy)
            .await
            .map_err(|_| "no TLS ClientHello in time".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        start
            .into_stream(tls_config)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    let handshake = tokio::time::timeout(limits.handshake_timeout, handshake);
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::info!(peer = %ip, "{error}");
                return;
            }
            Err(_) => {
                tracing::info!(peer = %ip, "TLS handshake timed out");
                return;
            }
        },
        // Any outcome means serve is stopping.
        _ = stop.changed() => return,
    };

    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, req, ip).await.into_response()) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(peer = %ip, %error, "HTTPS connection ended with an error");
    }
}

/// Rate limit, route, time bound and log one request.
async fn respond(shared: &Shared, req: Request<hyper::body::Incoming>, peer: IpAddr) -> Reply {
    let started = Instant::now();
    let method = req.method().clone();
    let path = logged_path(req.uri().path()).to_owned();
    let reply = if !shared.rate.allow(peer, started) {
        Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests from this address; retry later",
        )
    } else {
        let timeout = if req.uri().path() == "/v1/renew" {
            shared.limits.renew_timeout
        } else {
            shared.limits.request_timeout
        };
        let deadline = started + timeout;
        routes::route(shared, req, peer, deadline).await
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = reply.status.as_u16();
    if path == "/v1/attest" {
        crate::metrics::global().attestation(status, reply.code, started.elapsed());
    }
    tracing::debug!(peer = %peer, %method, path = %path, status, elapsed_ms, "HTTPS request");
    if let Some(code) = reply.code {
        if reply.status.is_server_error() {
            tracing::warn!(peer = %peer, %method, path = %path, status, code, "HTTPS request failed");
        } else {
            tracing::info!(peer = %peer, %method, path = %path, status, code, "HTTPS request refused");
        }
    }
    reply
}

/// The path as logged: bounded, and printable ASCII only (hyper has
/// already refused anything else in a request line).
fn logged_path(path: &str) -> &str {
    let mut end = path.len().min(MAX_LOGGED_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_floor_applies_after_its_grace_on_the_average() {
        let f = RateFloor {
            bytes_per_sec: 1000,
            grace: Duration::from_secs(2),
        };
        // Nothing yet, but within the grace.
        assert!(!f.too_slow(0, Duration::from_millis(1999)));
        assert!(f.too_slow(0, Duration::from_millis(2001)));
        // 3 s at exactly the floor passes; one byte fewer does not.
        assert!(!f.too_slow(3000, Duration::from_secs(3)));
        assert!(f.too_slow(2999, Duration::from_secs(3)));
        // A fast start covers a later stall while the average holds.
        assert!(!f.too_slow(10_000, Duration::from_secs(9)));
        assert!(f.too_slow(10_000, Duration::from_secs(11)));
    }
}
