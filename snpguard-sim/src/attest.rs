//! `snpguard-sim attest`: attest like a guest booted from a bundle, from
//! the host, against one or more servers with failover, many times and
//! concurrently; for fleet tests (a replica killed under load, replays
//! sent to another replica). Test support like the rest of the tool.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use sha2::{Digest, Sha256};
use snpguard::seal;
use snpguard_protocol::attest::{
    b64, decode_nonce, open_key, release_message, report_data, unb64, verify_signature,
    AttestRequest, AttestResponse, ChallengeResponse, ErrorBody,
};
use snpguard_testkit::sim::SimLaunch;
use snpguardd::https::load::{Conn, Target};

/// How long one HTTPS request may take before the server counts as down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most rounds over the server list for one attestation.
const ROUNDS: u32 = 5;
/// Pause before the second round over the servers, doubled each round.
const ROUND_BACKOFF: Duration = Duration::from_millis(200);

/// What `attest` is asked to do.
#[derive(Debug, clap::Args)]
pub struct AttestArgs {
    /// Platform directory made by `init`.
    #[arg(long)]
    pub dir: PathBuf,
    /// launch-artifacts.tar.gz the guest booted from.
    #[arg(long)]
    pub bundle: PathBuf,
    /// PEM CA of the servers' TLS certificates.
    #[arg(long)]
    pub ca: PathBuf,
    /// Attestation server https://HOST:PORT; repeat for failover, in order.
    #[arg(long = "server", required = true)]
    pub servers: Vec<String>,
    /// Server to get every challenge from (default: the one attested to).
    #[arg(long)]
    pub challenge_from: Option<String>,
    /// Server to resend each successful request to, verbatim; it must refuse.
    #[arg(long)]
    pub replay_to: Option<String>,
    /// Attestations to make.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Attestations in flight at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One server: its URL and how to reach it.
struct Server {
    url: String,
    targets: Vec<Target>,
}

impl Server {
    fn parse(url: &str, ca: &[u8]) -> anyhow::Result<Server> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("server {url:?}: must start with https://"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        // host:port, [v6]:port, or either without a port (443).
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .with_context(|| format!("server {url:?}: unclosed ["))?;
                (h, after.strip_prefix(':').unwrap_or("443"))
            }
            None => hostport.rsplit_once(':').unwrap_or((hostport, "443")),
        };
        let port: u16 = port
            .parse()
            .with_context(|| format!("server {url:?}: port {port:?}"))?;
        let with_port = (host, port);
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .with_context(|| format!("server {url:?}: cannot resolve {host}"))?
            .collect();
        ensure!(!addrs.is_empty(), "server {url:?}: no address");
        let targets = addrs
            .into_iter()
            .map(|a| Target::new(a, ca, host).with_context(|| format!("server {url:?}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Server {
            url: url.to_owned(),
            targets,
        })
    }

    async fn connect(&self) -> Result<Conn, String> {
        let mut last = String::new();
        for t in &self.targets {
            match tokio::time::timeout(REQUEST_TIMEOUT, t.connect()).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "connect timed out".into(),
            }
        }
        Err(last)
    }
}

/// A worker's open connections, by server URL.
#[derive(Default)]
struct Conns(BTreeMap<String, Conn>);

impl Conns {
    /// POSTs `body` to `path` on `server`, reconnecting once when a kept
    /// connection was closed meanwhile. `Err` is a transport failure.
    async fn post(
        &mut self,
        server: &Server,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        for attempt in 0..2 {
            let conn = match self.0.get(&server.url) {
                Some(c) => c.clone(),
                None => {
                    let c = server.connect().await?;
                    self.0.insert(server.url.clone(), c.clone());
                    c
                }
            };
            let sent = tokio::time::timeout(REQUEST_TIMEOUT, conn.post_json(path, body.clone()));
            match sent.await {
                Ok(Ok((status, bytes))) => return Ok((status.as_u16(), bytes.to_vec())),
                Ok(Err(e)) if attempt == 0 => {
                    self.0.remove(&server.url);
                    let _ = e;
                }
                Ok(Err(e)) => {
                    self.0.remove(&server.url);
                    return Err(e.to_string());
                }
                Err(_) => {
                    self.0.remove(&server.url);
                    return Err("no answer in time".into());
                }
            }
        }
        Err("unreachable".into())
    }
}

/// The tally of a run.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    attempted: usize,
    succeeded: usize,
    failed: usize,
    /// Attestations that needed more than their first server.
    failovers: usize,
    /// Refusals and transport failures seen (also those a failover
    /// recovered from), by code.
    refusals: BTreeMap<String, usize>,
    /// SHA-256 of each distinct released key.
    key_sha256: Vec<String>,
    replays_refused: usize,
    replays_accepted: usize,
    /// Replay outcomes other than a refusal or a release (transport).
    replays_unsent: usize,
}

/// Runs `attest` and prints the summary; fails when any attestation
/// failed or any replay released a key.
pub fn run(args: AttestArgs) -> anyhow::Result<()> {
    ensure!(!args.servers.is_empty(), "give at least one --server");
    ensure!(args.count > 0, "--count must be at least 1");
    ensure!(
        (1..=1024).contains(&args.concurrency),
        "--concurrency must be 1 to 1024"
    );
    let ca = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let launch = Arc::new(
        crate::launch(&args.dir, &args.bundle, &crate::Overrides::default())
            .context("building the simulated launch")?,
    );
    let servers = Arc::new(
        args.servers
            .iter()
            .map(|u| Server::parse(u, &ca))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let challenge = args
        .challenge_from
        .as_deref()
        .map(|u| Server::parse(u, &ca))
        .transpose()?
        .map(Arc::new);
    let replay = args
        .replay_to
        .as_deref()
        .map(|u| Server::parse(u, &ca))
        .transpose()?
        .map(Arc::new);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let summary = Arc::new(Mutex::new(Summary::default()));
    let next = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let workers: Vec<_> = (0..args.concurrency.min(args.count))
            .map(|_| {
                let ctx = Worker {
                    launch: launch.clone(),
                    servers: servers.clone(),
                    challenge: challenge.clone(),
                    replay: replay.clone(),
                    summary: summary.clone(),
                };
                let next = next.clone();
                let count = args.count;
                tokio::spawn(async move {
                    let mut conns = Conns::default();
                    while next.fetch_add(1, Ordering::Relaxed) < count {
                        ctx.one(&mut conns).await;
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
    });
    let summary = std::mem::take(&mut *summary.lock().unwrap_or_else(|e| e.into_inner()));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "attested {} times: {} released, {} failed, {} after a failover",
            summary.attempted, summary.succeeded, summary.failed, summary.failovers
        );
        for (code, n) in &summary.refusals {
            println!("  refused or failed on the way: {code} x{n}");
        }
        for k in &summary.key_sha256 {
            println!("  released key SHA-256 {k}");
        }
        if replay.is_some() {
            println!(
                "replays: {} refused, {} ACCEPTED, {} not sent",
                summary.replays_refused, summary.replays_accepted, summary.replays_unsent
            );
        }
    }
    if summary.failed > 0 {
        bail!("{} attestations failed", summary.failed);
    }
    if summary.replays_accepted > 0 {
        bail!(
            "{} replayed requests released a key",
            summary.replays_accepted
        );
    }
    Ok(())
}

struct Worker {
    launch: Arc<SimLaunch>,
    servers: Arc<Vec<Server>>,
    challenge: Option<Arc<Server>>,
    replay: Option<Arc<Server>>,
    summary: Arc<Mutex<Summary>>,
}

/// How one try at one server ended.
enum Try {
    Released {
        key: Vec<u8>,
        request: Vec<u8>,
    },
    /// Worth trying the next server (transport, 5xx, a nonce another
    /// server may have consumed before it died).
    Retry(String),
    /// A refusal no other server will answer differently.
    Refused(String),
}

impl Worker {
    fn note(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.summary.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn one(&self, conns: &mut Conns) {
        self.note(|s| s.attempted += 1);
        let mut tries = 0;
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(ROUND_BACKOFF * (1 << (round - 1))).await;
            }
            for server in self.servers.iter() {
                let outcome = self.try_at(conns, server).await;
                tries += 1;
                match outcome {
                    Try::Released { key, request } => {
                        let digest = hex::encode(Sha256::digest(&key));
                        self.note(|s| {
                            s.succeeded += 1;
                            if tries > 1 {
                                s.failovers += 1;
                            }
                            if !s.key_sha256.contains(&digest) {
                                s.key_sha256.push(digest);
                            }
                        });
                        self.replay(conns, request).await;
                        return;
                    }
                    Try::Retry(code) => self.note(|s| *s.refusals.entry(code).or_default() += 1),
                    Try::Refused(code) => {
                        self.note(|s| {
                            *s.refusals.entry(code).or_default() += 1;
                            s.failed += 1;
                        });
                        return;
                    }
                }
            }
        }
        self.note(|s| s.failed += 1);
    }

    async fn try_at(&self, conns: &mut Conns, server: &Server) -> Try {
        let from = self.challenge.as_deref().unwrap_or(server);
        let nonce = match conns
            .post(from, "/v1/attest/challenge", b"{}".to_vec())
            .await
        {
            Ok((200, body)) => match serde_json::from_slice::<ChallengeResponse>(&body) {
                Ok(c) => c.nonce,
                Err(_) => return Try::Retry("challenge-malformed".into()),
            },
            Ok((status, body)) => return Try::Retry(code_of(status, &body)),
            Err(_) => return Try::Retry("unreachable".into()),
        };
        let Some(raw_nonce) = decode_nonce(&nonce) else {
            return Try::Retry("challenge-malformed".into());
        };
        let (secret, public) = seal::generate_keypair();
        let report = match self.launch.report(&report_data(&raw_nonce, &public)) {
            Ok(r) => r,
            Err(e) => return Try::Refused(format!("simulator: {e}")),
        };
        let cert_table = match self.launch.cert_table() {
            Ok(t) => t,
            Err(e) => return Try::Refused(format!("simulator: {e}")),
        };
        let request = AttestRequest {
            nonce,
            report: b64(&report),
            cert_table: Some(b64(&cert_table)),
            ephemeral_key: b64(&public.to_bytes()),
            signed: true,
            offline: false,
        };
        let Ok(request) = serde_json::to_vec(&request) else {
            return Try::Refused("encoding".into());
        };
        match conns.post(server, "/v1/attest", request.clone()).await {
            Ok((200, body)) => match check(&body, &raw_nonce, &report, &secret) {
                Ok(key) => Try::Released { key, request },
                Err(e) => Try::Refused(e),
            },
            // Consumed by a server that died before answering, or by
            // this one for a request that got lost: a fresh nonce next.
            Ok((401, body)) if code_of(401, &body) == "nonce-reused" => {
                Try::Retry("nonce-reused".into())
            }
            Ok((status, body)) if status >= 500 => Try::Retry(code_of(status, &body)),
            Ok((status, body)) => Try::Refused(code_of(status, &body)),
            Err(_) => Try::Retry("unreachable".into()),
        }
    }

    async fn replay(&self, conns: &mut Conns, request: Vec<u8>) {
        let Some(server) = &self.replay else { return };
        match conns.post(server, "/v1/attest", request).await {
            Ok((200, _)) => self.note(|s| s.replays_accepted += 1),
            Ok((status, _)) if (400..500).contains(&status) => {
                self.note(|s| s.replays_refused += 1)
            }
            _ => self.note(|s| s.replays_unsent += 1),
        }
    }
}

/// The error code of a refusal, or the status when the body has none.
fn code_of(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| format!("http-{status}"))
}

/// Opens the released key after checking the release's signature, as the
/// agent does.
fn check(
    body: &[u8],
    nonce: &[u8; snpguard_protocol::attest::NONCE_LEN],
    report: &[u8],
    secret: &seal::SecretKey,
) -> Result<Vec<u8>, String> {
    let resp: AttestResponse =
        serde_json::from_slice(body).map_err(|_| "response-malformed".to_owned())?;
    let sealed_bytes =
        unb64(&resp.sealed_key, 4096).ok_or_else(|| "response-malformed".to_owned())?;
    let message = release_message(
        nonce,
        report,
        &resp.record,
        &sealed_bytes,
        resp.offline_unlock,
    );
    verify_signature(report, &message, resp.signature.as_ref()).map_err(|e| e.to_string())?;
    let sealed = seal::SealedBox::from_bytes(&sealed_bytes)
        .map_err(|_| "sealed-key-malformed".to_owned())?;
    open_key(secret, report, &sealed)
        .map(|k| k.to_vec())
        .map_err(|_| "sealed-key-unopenable".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_https_urls_with_a_resolvable_host() {
        let ca = b"not used before a connection";
        let err = Server::parse("http://127.0.0.1:1", ca).err().expect("http");
        assert!(err.to_string().contains("https://"), "{err}");
        let err = Server::parse("https://no-such-host.invalid:8443", ca)
            .err()
            .expect("resolve");
        assert!(err.to_string().contains("cannot resolve"), "{err:#}");
        let err = Server::parse("https://127.0.0.1:port", ca)
            .err()
            .expect("port");
        assert!(err.to_string().contains("port"), "{err:#}");
    }
}
