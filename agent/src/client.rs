//! The attestation exchange with snpguardd over HTTPS: TLS only to the
//! pinned CA (no system roots), servers tried in order, bounded retries
//! with exponential backoff. A 4xx refusal is final for that server.

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use snpguard::attest::{
    b64, decode_nonce, open_key, report_data, unb64, AttestRequest, AttestResponse,
    ChallengeResponse, ErrorBody,
};
use snpguard::seal::{self, SealedBox};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

use crate::config::{Retry, Server};
use crate::console::say;
use crate::evidence::Source;

/// Largest response body read.
const MAX_RESPONSE: u64 = 64 * 1024;
/// Largest CA file read.
const MAX_CA: u64 = 256 * 1024;
/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(30);

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

/// An HTTPS client pinned to one CA.
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
    pub fn new(ca: Vec<Certificate<'static>>) -> Client {
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(std::sync::Arc::new(ca)))
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .timeout_global(Some(TIMEOUT))
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

    /// One full attempt against `server`: challenge, report, attest, open.
    pub fn attest_once(
        &self,
        server: &Server,
        source: &Source,
    ) -> Result<(String, Zeroizing<Vec<u8>>), AttemptError> {
        let url = format!("{}/v1/attest/challenge", server.url);
        let (status, body) = self.post(&url, b"{}".to_vec())?;
        check_status(&server.url, status, &body)?;
        let ch: ChallengeResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad challenge: {e}")))?;
        let nonce = decode_nonce(&ch.nonce)
            .ok_or_else(|| AttemptError::Transient(format!("{url}: bad nonce")))?;
        let (secret, public) = seal::generate_keypair();
        let data = report_data(&nonce, &public);
        let evidence = source
            .get(&data)
            .map_err(|e| AttemptError::Transient(e.to_string()))?;
        let req = AttestRequest {
            nonce: ch.nonce,
            report: b64(&evidence.report),
            cert_table: evidence.cert_table.as_deref().map(b64),
            ephemeral_key: b64(&public.to_bytes()),
        };
        let url = format!("{}/v1/attest", server.url);
        let body = serde_json::to_vec(&req)
            .map_err(|e| AttemptError::Transient(format!("encoding the request: {e}")))?;
        let (status, body) = self.post(&url, body)?;
        check_status(&server.url, status, &body)?;
        let resp: AttestResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Transient(format!("{url}: bad response: {e}")))?;
        let key = open_released(&secret, &evidence.report, &resp.sealed_key)
            .map_err(|e| AttemptError::Transient(format!("{url}: {e}")))?;
        Ok((resp.record, key))
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

fn check_status(server: &str, status: u16, body: &[u8]) -> Result<(), AttemptError> {
    if status == 200 {
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

/// Tries every server in order, each up to `retry.attempts` times; returns
/// the record id and the released key, or every server's last error.
pub fn attest(
    client: &Client,
    servers: &[Server],
    retry: &Retry,
    source: &Source,
) -> Result<(String, Zeroizing<Vec<u8>>), String> {
    let mut errors = Vec::new();
    for server in servers {
        let mut last = None;
        for attempt in 0..retry.attempts {
            if attempt > 0 {
                std::thread::sleep(backoff(retry, attempt - 1));
            }
            say!(
                "attesting to {} (attempt {}/{})",
                server.url,
                attempt + 1,
                retry.attempts
            );
            match client.attest_once(server, source) {
                Ok(ok) => return Ok(ok),
                Err(e @ AttemptError::Refused { .. }) => {
                    say!("{e}");
                    last = Some(e.to_string());
                    break;
                }
                Err(e) => {
                    say!("{e}");
                    last = Some(e.to_string());
                }
            }
        }
        if let Some(e) = last {
            errors.push(e);
        }
    }
    Err(errors.join("; "))
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
    fn refusals_are_final_and_server_errors_are_not() {
        let body = br#"{"error":"attestation-rejected","message":"measurement mismatch"}"#;
        match check_status("https://s", 403, body) {
            Err(AttemptError::Refused { code, message, .. }) => {
                assert_eq!(code, "attestation-rejected");
                assert_eq!(message, "measurement mismatch");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_status("https://s", 503, body),
            Err(AttemptError::Transient(_))
        ));
        assert!(matches!(
            check_status("https://s", 429, b"x"),
            Err(AttemptError::Transient(_))
        ));
        assert!(check_status("https://s", 200, b"").is_ok());
    }

    #[test]
    fn released_key_opens_only_for_its_report_and_secret() {
        let (secret, public) = seal::generate_keypair();
        let report = vec![0x42u8; snpguard::report::REPORT_SIZE];
        let vmk = [0x17u8; 64];
        let sealed = b64(&snpguard::attest::seal_key(&public, &report, &vmk)
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
