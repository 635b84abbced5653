//! The `/v1` routes: one request in, one JSON reply out. Every refusal is
//! an [`ErrorBody`] with a stable code.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH};
use hyper::header::{CONTENT_TYPE, EXPECT};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use snpguard_protocol::attest::{
    b64, AttestRequest, ErrorBody, IngestionKeyResponse, RenewRequest, SignedLaunchRequest,
};

use tokio::sync::OwnedSemaphorePermit;

use super::leading::{leading_nonce, Leading};
use super::{RateFloor, Shared};
use crate::attest::AttestError;

/// After a body over the limit, up to this many more bytes are read and
/// discarded so that the client sees the 413 instead of a reset.
const DRAIN_MAX: usize = 256 * 1024;
/// How long that draining may take at most.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// How often a rate-floored body is checked while no data arrives.
const FLOOR_CHECK: Duration = Duration::from_secs(1);
/// Longest serde message passed back to the client.
const MAX_DETAIL: usize = 160;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request produced, before it becomes a response; kept apart so
/// that the caller can log the status and code.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// The error code, for refusals.
    pub(super) code: Option<&'static str>,
    body: Bytes,
    allow: Option<&'static str>,
    close: bool,
}

impl Reply {
    fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                code: None,
                body: Bytes::from(body),
                allow: None,
                close: false,
            },
            Err(_) => Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the response could not be encoded",
            ),
        }
    }

    pub(super) fn error(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Reply {
        let body = ErrorBody {
            error: code.to_owned(),
            message: message.into(),
        };
        // An ErrorBody of two strings always serializes.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Reply {
            status,
            code: Some(code),
            body: Bytes::from(body),
            allow: None,
            close: false,
        }
    }

    fn from_attest_error(e: AttestError) -> Reply {
        let status = StatusCode::from_u16(e.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Reply::error(status, e.code, e.message)
    }

    /// Closes the connection after this reply.
    pub(super) fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    Health,
    Challenge,
    Attest,
    Renew,
    SignedLaunch,
    IngestionKey,
}

/// `POST /v1/attest/challenge` accepts an empty body or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyObject {}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// Answers one request that has passed the rate limit. `deadline` bounds
/// reading the body and waiting for the handler.
pub(super) async fn route<B>(
    shared: &Shared,
    req: Request<B>,
    peer: IpAddr,
    deadline: Instant,
) -> Reply
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (endpoint, allowed) = match req.uri().path() {
        "/v1/health" => (Endpoint::Health, Method::GET),
        "/v1/ingestion-key" => (Endpoint::IngestionKey, Method::GET),
        "/v1/attest/challenge" => (Endpoint::Challenge, Method::POST),
        "/v1/attest" => (Endpoint::Attest, Method::POST),
        "/v1/renew" => (Endpoint::Renew, Method::POST),
        "/v1/signed-launch" => (Endpoint::SignedLaunch, Method::POST),
        _ => {
            return Reply::error(
                StatusCode::NOT_FOUND,
                "not-found",
                "no such endpoint; the API is described in docs/api.md",
            )
        }
    };
    if req.method() != allowed {
        let mut reply = Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("this endpoint takes {allowed} only"),
        );
        reply.allow = Some(if allowed == Method::GET {
            "GET"
        } else {
            "POST"
        });
        return reply;
    }
    match endpoint {
        Endpoint::Health => Reply::json(StatusCode::OK, &Health { status: "ok" }),
        Endpoint::IngestionKey => {
            let handler = shared.handler.clone();
            call(
                deadline,
                StatusCode::OK,
                move || Ok(handler.ingestion_key()),
                |key| IngestionKeyResponse {
                    public_key: b64(&key),
                },
            )
            .await
        }
        Endpoint::Challenge => {
            let json = is_json(req.headers());
            let body = match read_body(req, shared.limits.max_body, deadline).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            if !body.iter().all(u8::is_ascii_whitespace) {
                if !json {
                    return unsupported_media_type();
                }
                if let Err(e) = serde_json::from_slice::<EmptyObject>(&body) {
                    return malformed(&e);
                }
            }
            let handler = shared.handler.clone();
            call(deadline, StatusCode::OK, move || handler.challenge(), |c| c).await
        }
        Endpoint::Attest => {
            json_call(shared, req, deadline, move |h, r: AttestRequest| {
                h.attest(r, peer)
            })
            .await
        }
        Endpoint::SignedLaunch => {
            json_call(shared, req, deadline, move |h, r: SignedLaunchRequest| {
                h.signed_launch(r, peer)
            })
            .await
        }
        Endpoint::Renew => {
            if !is_json(req.headers()) {
                return unsupported_media_type();
            }
            let (body, _permit) = match read_renewal(shared, req, deadline).await {
                Ok(read) => read,
                Err(reply) => return reply,
            };
            let request: RenewRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return malformed(&e),
            };
            drop(body);
            let handler = shared.handler.clone();
            call(
                deadline,
                StatusCode::ACCEPTED,
                move || handler.renew(request, peer),
                |r| r,
            )
            .await
        }
    }
}

fn nonce_not_first() -> Reply {
    Reply::error(
        StatusCode::BAD_REQUEST,
        "malformed-json",
        "a renewal body is a JSON object whose first member is \"nonce\" (docs/api.md)",
    )
}

/// `reply` after draining a refused body; the connection is closed
/// unless the whole body was read.
async fn refuse_early<B>(body: &mut B, reply: Reply) -> Reply
where
    B: Body<Data = Bytes> + Unpin,
{
    drain(body).await;
    if body.is_end_stream() {
        reply
    } else {
        reply.closing()
    }
}

/// Reads a `/v1/renew` body and takes the one renewal slot, in this
/// order: the start of the body up to its nonce, without the slot; the
/// handler's check that the nonce is live; the slot (or `busy`); the rest
/// of the body, cut when the nonce expires. A client without a live nonce
/// never holds the slot, and one with a nonce holds it at most for the
/// nonce's remaining lifetime.
async fn read_renewal<B>(
    shared: &Shared,
    req: Request<B>,
    deadline: Instant,
) -> Result<(Bytes, OwnedSemaphorePermit), Reply>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let max = shared.limits.max_renew_body;
    let floor = shared.limits.renew_floor;
    let mut body = match declared_fits(req, max).await {
        Ok(body) => body,
        Err(reply) => return Err(reply),
    };
    let started = tokio::time::Instant::now();
    let mut data = bytes::BytesMut::new();

    // The nonce, before the slot.
    let mut nonce = None;
    let head = read_at_rate(
        &mut body,
        &mut data,
        max,
        floor,
        started,
        |d| match leading_nonce(d) {
            Leading::NeedMore => false,
            Leading::NotFirst => true,
            Leading::Nonce(n) => {
                nonce = Some(n);
                true
            }
        },
    );
    let head = bounded(deadline, head).await;
    let ended = settle(&mut body, head).await?;
    let Some(nonce) = nonce else {
        if ended && leading_nonce(&data) == Leading::NeedMore {
            // A short body that is not a renewal: serde names the fault.
            return Err(match serde_json::from_slice::<RenewRequest>(&data) {
                Err(e) => malformed(&e),
                Ok(_) => nonce_not_first(),
            });
        }
        return Err(refuse_early(&mut body, nonce_not_first()).await);
    };
    let handler = shared.handler.clone();
    let checked = nonce.clone();
    let check = tokio::task::spawn_blocking(move || handler.check_nonce(&checked));
    let valid_for = match tokio::time::timeout_at(deadline.into(), check).await {
        Ok(Ok(Ok(left))) => left,
        Ok(Ok(Err(e))) => {
            return Err(refuse_early(&mut body, Reply::from_attest_error(e)).await);
        }
        Ok(Err(join)) => {
            tracing::error!(error = %join, "checking a renewal nonce failed");
            return Err(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed to handle the request",
            )
            .closing());
        }
        Err(_) => return Err(timeout_reply()),
    };

    // One renewal at a time: each holds a large body in memory and
    // measures it.
    let Ok(permit) = shared.renewing.clone().try_acquire_owned() else {
        return Err(Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "another renewal is being processed; retry later",
        )
        .closing());
    };
    if ended {
        return Ok((data.freeze(), permit));
    }
    let nonce_deadline = Instant::now() + valid_for;
    let rest = bounded(
        deadline,
        read_at_rate(&mut body, &mut data, max, floor, started, |_| false),
    );
    let rest = match tokio::time::timeout_at(nonce_deadline.into(), rest).await {
        Ok(rest) => rest,
        Err(_) => {
            return Err(Reply::error(
                StatusCode::UNAUTHORIZED,
                "nonce-expired",
                "the nonce expired while the body arrived; request a new challenge and \
                 send the renewal within its lifetime",
            )
            .closing())
        }
    };
    settle(&mut body, rest).await?;
    Ok((data.freeze(), permit))
}

/// Refuses a declared Content-Length over `max` (draining what a client
/// already sends, so that it reads the 413); returns the body otherwise.
async fn declared_fits<B>(req: Request<B>, max: usize) -> Result<B, Reply>
where
    B: Body<Data = Bytes> + Unpin,
{
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A client waiting for "100 Continue" has sent nothing yet; reading
    // would invite the body it is about to be refused for.
    let waits_to_send = req.headers().contains_key(EXPECT);
    let mut body = req.into_body();
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        if !waits_to_send && n <= (max + DRAIN_MAX) as u64 {
            drain(&mut body).await;
        }
        return Err(too_large(max));
    }
    Ok(body)
}

fn timeout_reply() -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        "the server did not answer in time; retry later",
    )
    .closing()
}

/// Runs a handler call on the blocking pool, bounded by `deadline`;
/// success is answered with `ok`.
async fn call<T, R, F, M>(deadline: Instant, ok: StatusCode, f: F, map: M) -> Reply
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, AttestError> + Send + 'static,
    M: FnOnce(T) -> R,
    R: Serialize,
{
    let task = tokio::task::spawn_blocking(f);
    match tokio::time::timeout_at(deadline.into(), task).await {
        Ok(Ok(Ok(value))) => Reply::json(ok, &map(value)),
        Ok(Ok(Err(e))) => Reply::from_attest_error(e),
        Ok(Err(join)) => {
            tracing::error!(error = %join, "attestation handler failed");
            Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed to handle the request",
            )
        }
        Err(_) => timeout_reply(),
    }
}

/// A JSON request of at most the ordinary body limit, decoded as `R`
/// and answered 200 by `handle` on the blocking pool (`/v1/attest`,
/// `/v1/signed-launch`).
async fn json_call<B, R, T, F>(
    shared: &Shared,
    req: Request<B>,
    deadline: Instant,
    handle: F,
) -> Reply
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    R: serde::de::DeserializeOwned,
    T: Serialize + Send + 'static,
    F: FnOnce(&dyn crate::attest::AttestHandler, R) -> Result<T, AttestError> + Send + 'static,
    R: Send + 'static,
{
    if !is_json(req.headers()) {
        return unsupported_media_type();
    }
    let body = match read_body(req, shared.limits.max_body, deadline).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let request: R = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return malformed(&e),
    };
    let handler = shared.handler.clone();
    call(
        deadline,
        StatusCode::OK,
        move || handle(handler.as_ref(), request),
        |r| r,
    )
    .await
}

fn unsupported_media_type() -> Reply {
    Reply::error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "send the body as Content-Type: application/json",
    )
}

fn malformed(e: &serde_json::Error) -> Reply {
    let mut detail = e.to_string();
    if detail.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    Reply::error(StatusCode::BAD_REQUEST, "malformed-json", detail)
}

/// Content-Type is `application/json`, parameters (charset) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn too_large(max: usize) -> Reply {
    Reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("request bodies are limited to {max} bytes"),
    )
    .closing()
}

/// Reads the whole body, at most `max` bytes, counting what arrives (a
/// declared Content-Length over the limit only fails earlier).
async fn read_body<B>(req: Request<B>, max: usize, deadline: Instant) -> Result<Bytes, Reply>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = declared_fits(req, max).await?;
    let read = Limited::new(&mut body, max).collect();
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            drain(&mut body).await;
            Err(too_large(max))
        }
        Ok(Err(_)) => Err(unreadable()),
        Err(_) => Err(body_timeout()),
    }
}

fn unreadable() -> Reply {
    Reply::error(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "the request body could not be read",
    )
    .closing()
}

fn body_timeout() -> Reply {
    Reply::error(
        StatusCode::REQUEST_TIMEOUT,
        "request-timeout",
        "the request body did not arrive in time",
    )
    .closing()
}

/// Reads frames of a body into `data` (at most `max` bytes in all) until
/// `enough(&data)` holds or the body ends; returns whether it ended. The
/// upload must keep arriving at `floor.bytes_per_sec` on average since
/// `started` once `floor.grace` has passed, so that a client trickling
/// its upload cannot hold the one renewal slot until the deadline.
/// Checked at every frame and every [`FLOOR_CHECK`].
async fn read_at_rate<B>(
    body: &mut B,
    data: &mut bytes::BytesMut,
    max: usize,
    floor: RateFloor,
    started: tokio::time::Instant,
    mut enough: impl FnMut(&[u8]) -> bool,
) -> Result<bool, Reply>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut tick = tokio::time::interval(FLOOR_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if enough(&data[..]) {
            return Ok(false);
        }
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tick.tick() => {
                if floor.too_slow(data.len(), started.elapsed()) {
                    return Err(too_slow(floor));
                }
                continue;
            }
        };
        match frame {
            None => return Ok(true),
            Some(Err(_)) => return Err(unreadable()),
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    if data.len() + chunk.len() > max {
                        return Err(too_large(max));
                    }
                    data.extend_from_slice(chunk);
                }
                if floor.too_slow(data.len(), started.elapsed()) {
                    return Err(too_slow(floor));
                }
            }
        }
    }
}

/// Bounds a [`read_at_rate`] by `deadline`.
async fn bounded(
    deadline: Instant,
    read: impl Future<Output = Result<bool, Reply>>,
) -> Result<bool, Reply> {
    tokio::time::timeout_at(deadline.into(), read)
        .await
        .unwrap_or_else(|_| Err(body_timeout()))
}

/// Passes a read's outcome on, after draining the rest of a body that
/// was too large (so that the client reads the 413).
async fn settle<B>(body: &mut B, read: Result<bool, Reply>) -> Result<bool, Reply>
where
    B: Body<Data = Bytes> + Unpin,
{
    if let Err(reply) = &read {
        if reply.code == Some("body-too-large") {
            drain(body).await;
        }
    }
    read
}

fn too_slow(floor: RateFloor) -> Reply {
    Reply::error(
        StatusCode::REQUEST_TIMEOUT,
        "upload-too-slow",
        format!(
            "the request body arrived slower than {} bytes/s; retry over a faster link",
            floor.bytes_per_sec
        ),
    )
    .closing()
}

/// Reads and discards up to [`DRAIN_MAX`] bytes of a refused body for at
/// most [`DRAIN_TIME`], so that a client still sending gets to read the
/// answer; the connection is closed after it either way.
async fn drain<B>(body: &mut B)
where
    B: Body<Data = Bytes> + Unpin,
{
    let discard = async {
        let mut seen = 0usize;
        while seen <= DRAIN_MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, Bytes::len);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_type_with_parameters() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(is_json(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/jsonx"));
        assert!(!is_json(&h));
    }

    #[test]
    fn malformed_detail_is_bounded() {
        let long = format!("{{\"nonce\": {}}}", "1".repeat(10_000));
        let err = serde_json::from_str::<AttestRequest>(&long).expect_err("not a request");
        let reply = malformed(&err);
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let body: ErrorBody = serde_json::from_slice(&reply.body).expect("error body");
        assert_eq!(body.error, "malformed-json");
        assert!(body.message.len() <= MAX_DETAIL + '…'.len_utf8());
    }

    #[test]
    fn handler_status_outside_errors_becomes_500() {
        for status in [200u16, 302, 99, 1000] {
            let reply = Reply::from_attest_error(AttestError {
                code: "odd",
                status,
                message: String::new(),
            });
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(reply.code, Some("odd"));
        }
        let reply = Reply::from_attest_error(AttestError::bad_request("nonce-invalid", "x"));
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }
}
