//! The daemon's ingestion public key, which the VMK is sealed to: from a
//! file, or from the first server's `GET /v1/ingestion-key` over TLS with
//! the pinned CA.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use snpguard::seal::PublicKey;
use snpguard_protocol::attest::{unb64, IngestionKeyResponse, MAX_BODY};

/// Largest ingestion key file read (raw or base64 key, or the endpoint's
/// JSON).
const MAX_KEY_FILE: u64 = 4096;

/// Parses an ingestion key: 32 raw bytes (the daemon's `ingestion.pub`),
/// standard base64 of them, or the JSON body of `/v1/ingestion-key`.
pub fn parse_key(bytes: &[u8]) -> Result<PublicKey> {
    if bytes.len() == 32 {
        return PublicKey::from_bytes(bytes).context("the ingestion key is not a valid X25519 key");
    }
    let text = std::str::from_utf8(bytes)
        .context("the ingestion key is neither 32 raw bytes nor text")?
        .trim();
    let b64 = if text.starts_with('{') {
        serde_json::from_str::<IngestionKeyResponse>(text)
            .context("the ingestion key JSON is not a /v1/ingestion-key response")?
            .public_key
    } else {
        text.to_string()
    };
    let raw = unb64(&b64, 32)
        .filter(|r| r.len() == 32)
        .context("the ingestion key is not base64 of 32 bytes")?;
    PublicKey::from_bytes(&raw).context("the ingestion key is not a valid X25519 key")
}

/// Reads the ingestion key from `path`.
pub fn from_file(path: &Path) -> Result<PublicKey> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {}", path.display()))?;
    if v.len() as u64 > MAX_KEY_FILE {
        bail!("{} is too large for an ingestion key", path.display());
    }
    parse_key(&v).with_context(|| format!("reading {}", path.display()))
}

/// Fetches the ingestion key from `server` (an https:// base URL),
/// trusting only the CA certificates in `ca_pem`.
pub fn fetch(server: &str, ca_pem: &[u8]) -> Result<PublicKey> {
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .context("parsing the CA file")?;
    if certs.is_empty() {
        bail!("the CA file holds no certificate");
    }
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .https_only(true)
        .timeout_global(Some(Duration::from_secs(30)))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("snpguardctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let url = format!("{}/v1/ingestion-key", server.trim_end_matches('/'));
    let mut resp = agent
        .get(&url)
        .call()
        .with_context(|| format!("fetching {url}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY as u64)
        .read_to_vec()
        .with_context(|| format!("reading the response of {url}"))?;
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    let text = std::str::from_utf8(&body).context("the ingestion key response is not UTF-8")?;
    if !text.trim_start().starts_with('{') {
        bail!("{url} did not answer with JSON");
    }
    parse_key(text.as_bytes()).with_context(|| format!("the key from {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use snpguard::seal::generate_keypair;
    use snpguard_protocol::attest::b64;

    #[test]
    fn key_forms() {
        let (_, pk) = generate_keypair();
        let raw = pk.to_bytes();
        assert_eq!(parse_key(&raw).unwrap(), pk);
        assert_eq!(
            parse_key(format!("{}\n", b64(&raw)).as_bytes()).unwrap(),
            pk
        );
        let json = serde_json::to_string(&IngestionKeyResponse {
            public_key: b64(&raw),
        })
        .unwrap();
        assert_eq!(parse_key(json.as_bytes()).unwrap(), pk);
        assert!(parse_key(&raw[..31]).is_err());
        assert!(parse_key(b64(&raw[..31]).as_bytes()).is_err());
        assert!(parse_key(&[0u8; 32]).is_err(), "low-order point");
        assert!(parse_key(b"{\"public_key\":\"x\",\"extra\":1}").is_err());
    }
}
