//! A forged attestation server: it holds a TLS certificate the agent pins
//! (as after a TLS compromise) and even the volume's real key, and answers
//! like snpguardd, but it cannot sign with the author key the PSP put in
//! the guest's report.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use snpguard::seal::PublicKey;
use snpguard_protocol::attest::{
    self, AttestRequest, AttestResponse, ChallengeResponse, ReleaseSignature, NONCE_LEN,
};

/// How the forged server signs its releases.
#[derive(Clone, Copy, Debug)]
pub enum Forgery {
    /// No signature at all (a downgrade to the unsigned protocol).
    Unsigned,
    /// Signed by the server's own P-384 key.
    OwnKey,
}

/// A running forged server: its port and the PEM of its certificate.
pub struct Forged {
    pub port: u16,
    pub ca: PathBuf,
}

/// Starts the server in a thread; it serves until the test ends.
pub fn start(dir: &Path, vmk: Vec<u8>, forgery: Forgery) -> Forged {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.join(format!("forged-{forgery:?}.pem"));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let signer = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            // One request per connection; a failed one is the client's.
            let _ = serve(&mut tls, &vmk, forgery, &signer);
        }
    });
    Forged { port, ca }
}

fn serve(
    tls: &mut (impl std::io::Read + std::io::Write),
    vmk: &[u8],
    forgery: Forgery,
    signer: &p384::ecdsa::SigningKey,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *tls);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    drop(reader);
    let answer = if request_line.contains("/v1/attest/challenge") {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        serde_json::to_vec(&ChallengeResponse {
            nonce: attest::encode_nonce(&nonce),
            expires_in: 60,
        })
        .unwrap()
    } else {
        let req: AttestRequest = serde_json::from_slice(&body).unwrap();
        let report = attest::unb64(&req.report, 1184).unwrap();
        let nonce = attest::decode_nonce(&req.nonce).unwrap();
        let public =
            PublicKey::from_bytes(&attest::unb64(&req.ephemeral_key, 32).unwrap()).unwrap();
        // The real key, correctly sealed to this very report: without the
        // signature check the agent would map the volume with it.
        let sealed = attest::seal_key(&public, &report, vmk).unwrap().to_bytes();
        let record = "forged".to_string();
        let signature: Option<ReleaseSignature> = match forgery {
            Forgery::Unsigned => None,
            Forgery::OwnKey => Some(attest::sign_message(
                signer,
                &attest::release_message(&nonce, &report, &record, &sealed, None),
            )),
        };
        serde_json::to_vec(&AttestResponse {
            record,
            sealed_key: attest::b64(&sealed),
            signature,
            offline_unlock: None,
        })
        .unwrap()
    };
    write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        answer.len()
    )?;
    tls.write_all(&answer)?;
    tls.flush()
}
