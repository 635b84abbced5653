//! Load on the HTTPS endpoint: `N` attestations (challenge, then attest)
//! over `C` keep-alive connections, latency percentiles printed.
//!
//! Today the handler behind the endpoint is a stand-in that answers at
//! once, so this measures the transport (TLS, HTTP, JSON, the blocking
//! pool); swap in the real attestor and a simulated platform to measure
//! attestations. `SNPGUARD_LOAD_OPS` (default 10000) and
//! `SNPGUARD_LOAD_CONCURRENCY` (default 200) set the size.
//!
//! Run: `cargo bench -p snpguardd --bench attest_load`

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use snpguard::attest::{
    AttestRequest, AttestResponse, ChallengeResponse, RenewRequest, RenewResponse,
};
use snpguardd::attest::{AttestError, AttestHandler};
use snpguardd::https::load::{load, Target};
use snpguardd::https::{serve, server_config, Limits, TlsMaterial};
use zeroize::Zeroizing;

/// Answers every attestation at once.
struct Immediate;

impl AttestHandler for Immediate {
    fn challenge(&self) -> Result<ChallengeResponse, AttestError> {
        Ok(ChallengeResponse {
            nonce: snpguard::attest::encode_nonce(&[7; 32]),
            expires_in: 60,
        })
    }
    fn attest(&self, req: AttestRequest, _: IpAddr) -> Result<AttestResponse, AttestError> {
        Ok(AttestResponse {
            record: req.nonce,
            sealed_key: snpguard::attest::b64(&[0u8; 80]),
        })
    }
    fn renew(&self, req: RenewRequest, _: IpAddr) -> Result<RenewResponse, AttestError> {
        Ok(RenewResponse {
            record: req.nonce,
            launch: "2".into(),
            measurement: "00".repeat(48),
        })
    }
    fn ingestion_key(&self) -> [u8; 32] {
        [0; 32]
    }
}

fn env_or(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse()?),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let ops = env_or("SNPGUARD_LOAD_OPS", 10_000)?;
    let concurrency = env_or("SNPGUARD_LOAD_CONCURRENCY", 200)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(ops, concurrency))
}

async fn run(ops: usize, concurrency: usize) -> anyhow::Result<()> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let ca = generated.cert.pem().into_bytes();
    let material = TlsMaterial::new(
        ca.clone(),
        Zeroizing::new(generated.signing_key.serialize_pem().into_bytes()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let limits = Limits {
        per_ip_rate: 1e9,
        per_ip_burst: u32::MAX,
        max_connections: concurrency.max(1) + 16,
        ..Limits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        server_config(&material)?,
        Arc::new(Immediate),
        limits,
        async {
            let _ = stopped.await;
        },
    ));

    let target = Target::new(addr, &ca, "localhost")?;
    let stats = load(&target, ops, concurrency, |conn, _| async move {
        let (status, body) = conn
            .post_json("/v1/attest/challenge", Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("challenge: {status}"));
        }
        let challenge: ChallengeResponse =
            serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let request = AttestRequest {
            nonce: challenge.nonce,
            report: snpguard::attest::b64(&[0u8; 1184]),
            cert_table: None,
            ephemeral_key: snpguard::attest::b64(&[1u8; 32]),
        };
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let (status, _) = conn
            .post_json("/v1/attest", body)
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("attest: {status}"))
        }
    })
    .await?;
    println!(
        "attest_load: {concurrency} connections, stand-in handler (challenge + attest per op)"
    );
    println!("attest_load: {stats}");
    for e in &stats.sample_errors {
        println!("attest_load: error: {e}");
    }
    let _ = stop.send(());
    server.await??;
    anyhow::ensure!(stats.errors == 0, "{} operations failed", stats.errors);
    Ok(())
}
