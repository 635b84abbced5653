//! The exchanges with snpguardd over HTTPS (attestation, renewal): TLS
//! only to the pinned CA (no system roots), servers tried in order,
//! bounded retries with exponential backoff. A 4xx refusal is final for
//! that server.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use snpguard::seal::{self, SealedBox};
use snpguard_protocol::attest::{
    b64, check_signed_launch, decode_nonce, open_key, release_message, renewal_message,
    renewal_report_data, report_data, signed_launch_report_data, unb64, verify_signature,
    AttestRequest, AttestResponse, ChallengeResponse, ErrorBody, OfflineUnlock, RenewRequest,
    RenewResponse, SignatureError, SignedLaunchParts, SignedLaunchRequest, SignedLaunchResponse,
    NONCE_LEN,
};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

use crate::config::{Retry, Server};
use crate::console::say;
use crate::evidence::Source;
use crate::renew::Artifacts;

/// Largest response body read.
const MAX_RESPONSE: u64 = 64 * 1024;
/// Largest CA file read.
const MAX_CA: u64 = 256 * 1024;
/// Per-request timeout of the attestation exchange.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of a renewal: the daemon allows a renewal 600 s
/// (a large body to receive, measure and store); a little more here so
/// that its own answer, not ours, ends a slow one.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(630);

/// Why an attestation attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The server answered with a refusal (4xx): retrying is pointless.
    #[error("{server} refused: {code}: {message}")]
    Refused {
        server: String,
        code: String,
        message: String,
    },
    /// Something that may pass: network, 5xx, rate limiting, no report.
    #[error("{0}")]
    Transient(String),
}

/// A key release the agent accepted: signed by a key the guest's own
/// report names, over the nonce, report, record, sealed key and the
/// offline-unlock directive.
pub struct Released {
    /// The record the report matched.
    pub record: String,
    /// The released key.
    pub key: Zeroizing<Vec<u8>>,
    /// The record's offline-unlock directive, when it was asked for.
    pub offline: Option<OfflineUnlock>,
}

/// An HTTPS client pinned to one CA.
/// A signed-launch answer the agent accepted, with the report it was
/// checked against.
pub struct SignedLaunch {
    pub resp: SignedLaunchResponse,
    pub parts: SignedLaunchParts,
    /// This guest's report, sent with the request.
    pub report: Vec<u8>,
}

pub struct Client {
    agent: ureq::Agent,
}

/// Loads the pinned CA certificates (PEM) from `path`.
pub fn load_ca(path: &Path) -> anyhow::Result<Vec<Certificate<'static>>> {
    use anyhow::Context as _;
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA).read_to_end(&mut pem))
        .with_context(|| format!("reading the pinned CA {}", path.display()))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        path.display()
    );
    Ok(certs)
}

impl Client {
    /// A client whose every request must finish within `timeout`.
    pub fn new(ca: Vec<Certificate<'static>>, timeout: Duration) -> Client {
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(std::sync::Arc::new(ca)))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .user_agent(concat!("snpguard-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
        }
    }

    /// POSTs `body` as JSON; returns the status and the body (bounded).
    fn post(&self, url: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), AttemptError> {
        let resp = self
            .agent
            .post(url)
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| AttemptError::Transient(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let mut out = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut out)
            .map_err(|e| AttemptError::Transient(format!("{url}: reading the response: {e}")))?;
        Ok((status, out))
    }

    /// A fresh nonce from `server`: as received and decoded.
    fn challenge(&self, server: &Server) -> Result<(String, [u8; NONCE_LEN]), AttemptError> {
        let url = format!("{}/v1/attest/challenge", server.url);
        let (status, body) = self.post(&url, b"{}".to_vec())?;
        check_status(&server.url, 200, status, &body)?;
        let ch: ChallengeResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad challenge: {e}")))?;
        let nonce = decode_nonce(&ch.nonce)
            .ok_or_else(|| AttemptError::Transient(format!("{url}: bad nonce")))?;
        Ok((ch.nonce, nonce))
    }

    /// One full attempt against `server`: challenge, report, attest, open.
    pub fn attest_once(
        &self,
        server: &Server,
        source: &Source,
        offline: bool,
    ) -> Result<Released, AttemptError> {
        let (wire_nonce, nonce) = self.challenge(server)?;
        let (secret, public) = seal::generate_keypair();
        let data = report_data(&nonce, &public);
        let evidence = source
            .get(&data)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        let req = AttestRequest {
            nonce: wire_nonce,
            report: b64(&evidence.report),
            cert_table: evidence.cert_table.as_deref().map(b64),
            ephemeral_key: b64(&public.to_bytes()),
            signed: true,
            offline,
        };
        let url = format!("{}/v1/attest", server.url);
        let body = serde_json::to_vec(&req)
            .map_err(|e| AttemptError::Transient(format!("encoding the request: {e}")))?;
        let (status, body) = self.post(&url, body)?;
        check_status(&server.url, 200, status, &body)?;
        let resp: AttestResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad response: {e}")))?;
        // Before anything released is used: signed by a key the PSP put in
        // this guest's own report, over this nonce, report, sealed key and
        // directive.
        let sealed = unb64(&resp.sealed_key, seal::MAX_SEALED_LEN).ok_or_else(|| {
            AttemptError::Transient(format!("{url}: the sealed key is not base64"))
        })?;
        let message = release_message(
            &nonce,
            &evidence.report,
            &resp.record,
            &sealed,
            resp.offline_unlock,
        );
        verify_signature(&evidence.report, &message, resp.signature.as_ref())
            .map_err(|e| untrusted(&server.url, e))?;
        let key = open_released(&secret, &evidence.report, &resp.sealed_key)
            .map_err(|e| AttemptError::Transient(format!("{url}: {e}")))?;
        if resp.offline_unlock.is_some() && !offline {
            return Err(AttemptError::Transient(format!(
                "{url}: the release carries an offline-unlock directive that was not asked for"
            )));
        }
        Ok(Released {
            record: resp.record,
            key,
            offline: resp.offline_unlock,
        })
    }

    /// One renewal attempt against `server`: challenge, a report whose
    /// REPORT_DATA binds the nonce and the artifacts, `POST /v1/renew`.
    /// Asks `server` for the signed parts of launch `launch` of this
    /// guest's record. `Ok(None)`: the launch is still pending approval.
    /// The answer's signature is checked against this guest's own report,
    /// which is returned with it.
    pub fn signed_launch_once(
        &self,
        server: &Server,
        source: &Source,
        launch: &str,
    ) -> Result<Option<SignedLaunch>, AttemptError> {
        let (wire_nonce, nonce) = self.challenge(server)?;
        let data = signed_launch_report_data(&nonce, launch);
        let evidence = source
            .get(&data)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        let req = SignedLaunchRequest {
            nonce: wire_nonce,
            report: b64(&evidence.report),
            cert_table: evidence.cert_table.as_deref().map(b64),
            launch: launch.to_owned(),
            signed: true,
        };
        let body = serde_json::to_vec(&req)
            .map_err(|e| AttemptError::Transient(format!("encoding the request: {e}")))?;
        let url = format!("{}/v1/signed-launch", server.url);
        let (status, body) = self.post(&url, body)?;
        match check_status(&server.url, 200, status, &body) {
            Err(AttemptError::Refused { code, .. }) if code == "launch-pending" => return Ok(None),
            other => other?,
        }
        let resp: SignedLaunchResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad response: {e}")))?;
        let parts = check_signed_launch(&nonce, &evidence.report, launch, &resp).map_err(|e| {
            AttemptError::Refused {
                server: server.url.clone(),
                code: "untrusted-response".into(),
                message: e.to_string(),
            }
        })?;
        Ok(Some(SignedLaunch {
            resp,
            parts,
            report: evidence.report,
        }))
    }

    pub fn renew_once(
        &self,
        server: &Server,
        source: &Source,
        artifacts: &Artifacts,
    ) -> Result<RenewResponse, AttemptError> {
        let (wire_nonce, nonce) = self.challenge(server)?;
        let data = renewal_report_data(
            &nonce,
            &artifacts.kernel,
            &artifacts.initrd,
            &artifacts.cmdline,
        );
        let evidence = source
            .get(&data)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        let req = RenewRequest {
            nonce: wire_nonce,
            report: b64(&evidence.report),
            cert_table: evidence.cert_table.as_deref().map(b64),
            kernel: b64(&artifacts.kernel),
            initrd: b64(&artifacts.initrd),
            cmdline: artifacts.cmdline.clone(),
            signed: true,
        };
        let body = serde_json::to_vec(&req)
            .map_err(|e| AttemptError::Transient(format!("encoding the request: {e}")))?;
        drop(req);
        // The daemon reads at most MAX_RENEW_BODY; a larger body is refused
        // by every server alike, so say so here instead of sending it.
        if body.len() > snpguard_protocol::attest::MAX_RENEW_BODY {
            return Err(AttemptError::Refused {
                server: server.url.clone(),
                code: "too-large".into(),
                message: format!(
                    "the request is {} bytes; the daemon reads at most {}",
                    body.len(),
                    snpguard_protocol::attest::MAX_RENEW_BODY
                ),
            });
        }
        let url = format!("{}/v1/renew", server.url);
        let (status, body) = self.post(&url, body)?;
        check_status(&server.url, 202, status, &body)?;
        let resp: RenewResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad response: {e}")))?;
        let message = renewal_message(&nonce, &evidence.report, &resp);
        verify_signature(&evidence.report, &message, resp.signature.as_ref())
            .map_err(|e| untrusted(&server.url, e))?;
        Ok(resp)
    }
}

/// A response whose signature does not hold: final for that server (it
/// is not the attestation service this guest was launched for, or it has
/// been tampered with); the next server, if any, is tried.
fn untrusted(server: &str, e: SignatureError) -> AttemptError {
    AttemptError::Refused {
        server: server.to_string(),
        code: "untrusted-response".into(),
        message: e.to_string(),
    }
}

/// Opens the sealed key of an attest response with the ephemeral secret;
/// it must be bound to exactly the report that was sent.
pub fn open_released(
    secret: &seal::SecretKey,
    report: &[u8],
    sealed_b64: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let sealed = unb64(sealed_b64, seal::MAX_SEALED_LEN)
        .and_then(|b| SealedBox::from_bytes(&b).ok())
        .ok_or("the sealed key is not a sealed box")?;
    open_key(secret, report, &sealed).map_err(|e| format!("opening the released key: {e}"))
}

/// `Ok` when the server answered `expected`; otherwise its refusal (4xx
/// other than 408/429: final) or a transient failure.
fn check_status(server: &str, expected: u16, status: u16, body: &[u8]) -> Result<(), AttemptError> {
    if status == expected {
        return Ok(());
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.error, e.message),
        Err(_) => (format!("http-{status}"), "no error body".to_string()),
    };
    if (400..500).contains(&status) && status != 429 && status != 408 {
        Err(AttemptError::Refused {
            server: server.to_string(),
            code,
            message,
        })
    } else {
        Err(AttemptError::Transient(format!(
            "{server}: HTTP {status}: {code}: {message}"
        )))
    }
}

/// Delay before retry number `n` (0-based): initial * 2^n, capped.
pub fn backoff(retry: &Retry, n: u32) -> Duration {
    let ms = retry
        .initial_delay_ms
        .saturating_mul(1u64.checked_shl(n.min(32)).unwrap_or(u64::MAX))
        .min(retry.max_delay_ms);
    Duration::from_millis(ms)
}

/// Every server failed: their last errors, whether each of them was a
/// refusal (final) rather than a transport or server error, and whether
/// any was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError {
    pub message: String,
    pub refused: bool,
    pub any_refused: bool,
}

impl std::fmt::Display for RetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `once` against every server in order, each up to
/// `retry.attempts` times with backoff, until one succeeds; a refusal
/// ends that server's attempts. `what` names the exchange in the progress
/// lines ("attesting to", "renewing with"). Returns every server's last
/// error otherwise.
pub fn with_retries<T>(
    servers: &[Server],
    retry: &Retry,
    what: &str,
    mut once: impl FnMut(&Server) -> Result<T, AttemptError>,
) -> Result<T, RetryError> {
    let mut errors = Vec::new();
    let mut refused = true;
    let mut any_refused = false;
    for server in servers {
        let mut last = None;
        for attempt in 0..retry.attempts {
            if attempt > 0 {
                std::thread::sleep(backoff(retry, attempt - 1));
            }
            say!(
                "{what} {} (attempt {}/{})",
                server.url,
                attempt + 1,
                retry.attempts
            );
            match once(server) {
                Ok(ok) => return Ok(ok),
                Err(e @ AttemptError::Refused { .. }) => {
                    say!("{e}");
                    last = Some((e.to_string(), true));
                    break;
                }
                Err(e) => {
                    say!("{e}");
                    last = Some((e.to_string(), false));
                }
            }
        }
        if let Some((e, final_)) = last {
            errors.push(e);
            refused &= final_;
            any_refused |= final_;
        }
    }
    Err(RetryError {
        message: errors.join("; "),
        refused: refused && !errors.is_empty(),
        any_refused,
    })
}

/// Attests to the servers in turn (see [`with_retries`]), asking for the
/// offline-unlock directive when `offline`; the accepted release.
pub fn attest(
    client: &Client,
    servers: &[Server],
    retry: &Retry,
    source: &Source,
    offline: bool,
) -> Result<Released, RetryError> {
    with_retries(servers, retry, "attesting to", |s| {
        client.attest_once(s, source, offline)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = Retry {
            attempts: 10,
            initial_delay_ms: 100,
            max_delay_ms: 1000,
            device_timeout_secs: 1,
        };
        let ms: Vec<u128> = (0..6).map(|n| backoff(&r, n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&r, 99).as_millis(), 1000);
    }

    #[test]
    fn retries_say_whether_every_server_refused() {
        let retry = Retry {
            attempts: 2,
            initial_delay_ms: 1,
            max_delay_ms: 1,
            device_timeout_secs: 1,
        };
        let servers = [
            Server {
                url: "https://a".into(),
            },
            Server {
                url: "https://b".into(),
            },
        ];
        let refuse = |s: &Server| AttemptError::Refused {
            server: s.url.clone(),
            code: "unknown-launch".into(),
            message: "no".into(),
        };
        let mut calls = 0;
        let e = with_retries(&servers, &retry, "asking", |s| -> Result<(), _> {
            calls += 1;
            Err(refuse(s))
        })
        .unwrap_err();
        // One attempt per server: a refusal is final.
        assert_eq!(calls, 2);
        assert!(e.refused && e.any_refused, "{e}");
        assert!(e.message.contains("https://a") && e.message.contains("https://b"));
        // One server down: not every answer was a refusal.
        let e = with_retries(&servers, &retry, "asking", |s| -> Result<(), _> {
            if s.url == "https://a" {
                Err(AttemptError::Transient("connection refused".into()))
            } else {
                Err(refuse(s))
            }
        })
        .unwrap_err();
        assert!(!e.refused && e.any_refused, "{e}");
        // No server answered at all.
        let e = with_retries(&servers, &retry, "asking", |_| -> Result<(), _> {
            Err(AttemptError::Transient("connection refused".into()))
        })
        .unwrap_err();
        assert!(!e.refused && !e.any_refused, "{e}");
        assert_eq!(
            with_retries(&servers, &retry, "asking", |_| Ok::<_, AttemptError>(7)),
            Ok(7)
        );
    }

    #[test]
    fn refusals_are_final_and_server_errors_are_not() {
        let body = br#"{"error":"attestation-rejected","message":"measurement mismatch"}"#;
        match check_status("https://s", 200, 403, body) {
            Err(AttemptError::Refused { code, message, .. }) => {
                assert_eq!(code, "attestation-rejected");
                assert_eq!(message, "measurement mismatch");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_status("https://s", 200, 503, body),
            Err(AttemptError::Transient(_))
        ));
        assert!(matches!(
            check_status("https://s", 200, 429, b"x"),
            Err(AttemptError::Transient(_))
        ));
        assert!(check_status("https://s", 200, 200, b"").is_ok());
        // A renewal answers 202; a 200 there is not what was asked for.
        assert!(check_status("https://s", 202, 202, b"").is_ok());
        assert!(check_status("https://s", 202, 200, b"").is_err());
        // A refusal of a renewal carries its code.
        let busy = br#"{"error":"busy","message":"another renewal"}"#;
        assert!(matches!(
            check_status("https://s", 202, 503, busy),
            Err(AttemptError::Transient(m)) if m.contains("busy")
        ));
        let pending = br#"{"error":"too-many-pending","message":"approve or discard one"}"#;
        assert!(matches!(
            check_status("https://s", 202, 409, pending),
            Err(AttemptError::Refused { code, .. }) if code == "too-many-pending"
        ));
    }

    #[test]
    fn released_key_opens_only_for_its_report_and_secret() {
        let (secret, public) = seal::generate_keypair();
        let report = vec![0x42u8; snpguard::report::REPORT_SIZE];
        let vmk = [0x17u8; 64];
        let sealed = b64(&snpguard_protocol::attest::seal_key(&public, &report, &vmk)
            .unwrap()
            .to_bytes());
        let key = open_released(&secret, &report, &sealed).expect("opens");
        assert_eq!(&key[..], &vmk[..]);

        let mut other = report.clone();
        other[0x90] ^= 1;
        assert!(open_released(&secret, &other, &sealed).is_err());
        let (stranger, _) = seal::generate_keypair();
        assert!(open_released(&stranger, &report, &sealed).is_err());
        assert!(open_released(&secret, &report, "not base64!").is_err());
    }

    #[test]
    fn the_pinned_ca_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        assert!(load_ca(&p).is_err());
        assert!(load_ca(&dir.path().join("absent.pem")).is_err());
    }
}
