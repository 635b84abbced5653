//! Operational metrics in the Prometheus text format, served on a
//! listener of their own that is off by default (`[metrics] listen`).
//!
//! The counters are process-wide (one daemon per process): attestations
//! by outcome and refusal code, their latency, AMD KDS requests and
//! failures, store errors, and nonces in flight (issued, not yet used,
//! not yet expired). Nothing secret is ever a label: codes are the fixed
//! refusal codes of the API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `(outcome, code)` -> count.
    attestations: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Count per bucket (not cumulative), then one for +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    kds_requests: AtomicU64,
    kds_failures: AtomicU64,
    store_errors: AtomicU64,
    /// Issue second -> (issued, used) of nonces still within a lifetime.
    nonces: Mutex<BTreeMap<u64, (u64, u64)>>,
    nonce_lifetime: AtomicU64,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Counts one `POST /v1/attest` that took `elapsed`: `status` 200 is
    /// a release, 4xx a refusal, anything else an error; `code` is the
    /// refusal code (`ok` for a release).
    pub fn attestation(&self, status: u16, code: Option<&'static str>, elapsed: Duration) {
        let outcome = match status {
            200 => "released",
            400..=499 => "refused",
            _ => "error",
        };
        *lock(&self.attestations)
            .entry((outcome, code.unwrap_or("ok")))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a request to AMD KDS and whether it failed.
    pub fn kds_request(&self, failed: bool) {
        self.kds_requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.kds_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed store call.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a nonce issued at `issued` (seconds) with `lifetime`.
    pub fn nonce_issued(&self, issued: u64, lifetime: u64) {
        self.nonce_lifetime.store(lifetime, Ordering::Relaxed);
        lock(&self.nonces).entry(issued).or_default().0 += 1;
    }

    /// Counts a nonce issued at `issued` as used.
    pub fn nonce_used(&self, issued: u64) {
        if let Some(e) = lock(&self.nonces).get_mut(&issued) {
            e.1 += 1;
        }
    }

    /// Nonces issued by this daemon, unused and not expired at `now`.
    pub fn nonces_in_flight(&self, now: u64) -> u64 {
        let lifetime = self.nonce_lifetime.load(Ordering::Relaxed);
        let mut nonces = lock(&self.nonces);
        let oldest = now.saturating_sub(lifetime);
        // Bounded: one entry per second of a lifetime at most.
        *nonces = nonces.split_off(&oldest);
        nonces
            .values()
            .map(|(issued, used)| issued.saturating_sub(*used))
            .sum()
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self, now: u64) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP snpguard_attestations_total Attestation requests by outcome and refusal code.\n\
             # TYPE snpguard_attestations_total counter\n",
        );
        for ((outcome, code), n) in lock(&self.attestations).iter() {
            let _ = writeln!(
                out,
                "snpguard_attestations_total{{outcome=\"{outcome}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP snpguard_attestation_duration_seconds Time to answer an attestation request.\n\
             # TYPE snpguard_attestation_duration_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "snpguard_attestation_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.latency[BUCKETS.len()].load(Ordering::Relaxed);
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "snpguard_attestation_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             snpguard_attestation_duration_seconds_sum {sum}\n\
             snpguard_attestation_duration_seconds_count {cumulative}"
        );
        let counters = [
            (
                "snpguard_kds_requests_total",
                "Requests to AMD KDS.",
                &self.kds_requests,
            ),
            (
                "snpguard_kds_failures_total",
                "Requests to AMD KDS that failed.",
                &self.kds_failures,
            ),
            (
                "snpguard_store_errors_total",
                "Store calls that failed (the database unavailable included).",
                &self.store_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP snpguard_nonces_in_flight Nonces issued by this daemon, not yet used nor \
             expired.\n# TYPE snpguard_nonces_in_flight gauge\nsnpguard_nonces_in_flight {}",
            self.nonces_in_flight(now)
        );
        out
    }
}

/// Serves `GET /metrics` (plain HTTP) on `listener` until the process
/// ends. Anything else is 404; bodies are not read.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let resp = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(global().render(now))))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                };
                resp
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(Some(Duration::from_secs(10)))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_nonces() {
        let m = Metrics::default();
        m.attestation(200, None, Duration::from_millis(3));
        m.attestation(403, Some("attestation-rejected"), Duration::from_millis(30));
        m.attestation(503, Some("store-unavailable"), Duration::from_secs(20));
        m.kds_request(false);
        m.kds_request(true);
        m.store_error();
        m.nonce_issued(1000, 120);
        m.nonce_issued(1000, 120);
        m.nonce_issued(1100, 120);
        m.nonce_used(1000);
        let text = m.render(1110);
        for line in [
            "snpguard_attestations_total{outcome=\"released\",code=\"ok\"} 1",
            "snpguard_attestations_total{outcome=\"refused\",code=\"attestation-rejected\"} 1",
            "snpguard_attestations_total{outcome=\"error\",code=\"store-unavailable\"} 1",
            "snpguard_attestation_duration_seconds_bucket{le=\"0.005\"} 1",
            "snpguard_attestation_duration_seconds_bucket{le=\"0.05\"} 2",
            "snpguard_attestation_duration_seconds_bucket{le=\"10\"} 2",
            "snpguard_attestation_duration_seconds_bucket{le=\"+Inf\"} 3",
            "snpguard_attestation_duration_seconds_count 3",
            "snpguard_kds_requests_total 2",
            "snpguard_kds_failures_total 1",
            "snpguard_store_errors_total 1",
            "snpguard_nonces_in_flight 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // After the lifetime, the second's nonces have expired.
        assert_eq!(m.nonces_in_flight(1200), 1);
        assert_eq!(m.nonces_in_flight(1300), 0);
    }
}
