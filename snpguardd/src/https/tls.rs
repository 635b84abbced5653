//! The server side of TLS: the daemon's certificate chain and key, and a
//! rustls configuration that speaks TLS 1.3 only.
//!
//! ALPN offers `http/1.1` alone: the agent sends one challenge and one
//! attestation per boot, so HTTP/2 would buy nothing but a second protocol
//! stack to bound and test. Clients that offer only `h2` fail the
//! handshake rather than being silently downgraded.
//!
//! No client authentication: the guest proves itself with its attestation
//! report, not with a certificate.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use zeroize::Zeroizing;

/// Largest PEM file [`TlsMaterial::read`] accepts (a chain of a few
/// certificates is a few KiB).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The daemon's TLS certificate chain (leaf first) and private key, both
/// PEM. The key is zeroized on drop and never printed.
pub struct TlsMaterial {
    cert_chain_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

impl TlsMaterial {
    /// Material from PEM bytes already in memory.
    pub fn new(cert_chain_pem: Vec<u8>, key_pem: Zeroizing<Vec<u8>>) -> Self {
        TlsMaterial {
            cert_chain_pem,
            key_pem,
        }
    }

    /// Reads the certificate chain and key from PEM files, each at most
    /// 1 MiB.
    pub fn read(cert_chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_chain_pem = read_bounded(cert_chain)?;
        let key_pem = Zeroizing::new(read_bounded(key)?);
        Ok(TlsMaterial {
            cert_chain_pem,
            key_pem,
        })
    }

    /// The certificate chain, PEM (public).
    pub fn cert_chain_pem(&self) -> &[u8] {
        &self.cert_chain_pem
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let io = |error| TlsError::Read {
        path: path.display().to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(bytes)
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// A PEM file is larger than any certificate chain or key.
    #[error("{path} is larger than 1 MiB; give the certificate chain and key PEM files")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The certificate PEM holds no certificate, or one that is not PEM.
    #[error("no certificate in the certificate PEM: {0}")]
    Certificate(String),
    /// The key PEM holds no usable private key.
    #[error("no private key in the key PEM (PKCS#8, SEC1 or PKCS#1): {0}")]
    Key(String),
    /// rustls refused the chain, the key or the pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server configuration for `material`: TLS 1.3 only, the ring
/// provider, no client authentication, ALPN `http/1.1`.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&material.cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            "no CERTIFICATE block found".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> TlsMaterial {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        TlsMaterial::new(
            generated.cert.pem().into_bytes(),
            Zeroizing::new(generated.signing_key.serialize_pem().into_bytes()),
        )
    }

    #[test]
    fn builds_a_config_with_http11_alpn() {
        let config = server_config(&self_signed()).expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn rejects_missing_or_mismatched_material() {
        let good = self_signed();
        let no_cert = TlsMaterial::new(Vec::new(), Zeroizing::new(good.key_pem.to_vec()));
        assert!(matches!(
            server_config(&no_cert),
            Err(TlsError::Certificate(_))
        ));
        let no_key = TlsMaterial::new(good.cert_chain_pem.clone(), Zeroizing::new(Vec::new()));
        assert!(matches!(server_config(&no_key), Err(TlsError::Key(_))));
        let other = self_signed();
        let mismatched = TlsMaterial::new(
            good.cert_chain_pem.clone(),
            Zeroizing::new(other.key_pem.to_vec()),
        );
        assert!(server_config(&mismatched).is_err());
    }

    #[test]
    fn debug_never_prints_the_key() {
        let m = self_signed();
        let shown = format!("{m:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("PRIVATE KEY"));
    }

    #[test]
    fn read_refuses_oversize_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_PEM_FILE + 1) as usize]).expect("write");
        assert!(matches!(
            TlsMaterial::read(&big, &big),
            Err(TlsError::TooLarge { .. })
        ));
    }
}
