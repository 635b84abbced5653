//! Attestations per second through HTTPS keep-alive against the real
//! attestor, next to the raw P-384 verify rate measured in the same run.
//!
//! Set-up: a registry on a temporary state directory (sled store, master
//! key, ID/author keys), one record registered from synthetic inputs, a
//! simulated Milan platform whose root the attestor trusts (as the
//! daemon's `[[test_roots]]` does), KDS disabled, the HTTPS server of the
//! daemon on 127.0.0.1. Each operation is what an agent does: challenge,
//! a report bound to the nonce and a fresh X25519 key, signed by the
//! simulated VCEK (one P-384 signature, client side, on the same cores),
//! attest with the certificate table, open the released key and compare
//! it with the VMK. Signing cannot be done ahead: the report binds the
//! nonce, which the server picks per attestation.
//!
//! Measured in the same process: the raw P-384 ECDSA verify rate (one
//! core, the report's signed bytes and the VCEK) — the unavoidable cost
//! of one attestation — the raw P-384 sign rate (the client's cost), then
//! the load run with process CPU time and the CPU time spent inside the
//! attestor (thread CPU clocks), so the server's share can be told from
//! the client's. `SNPGUARD_LOAD_OPS` (default 10000) and
//! `SNPGUARD_LOAD_CONCURRENCY` (default 200) set the size.
//!
//! The run is made twice in the same process: with the embedded sled
//! store, then with PostgreSQL (a throw-away cluster started like the
//! tests' one, on a Unix socket, `fsync` off as for sled's test
//! directories being on the same disk), and prints the ratio and the
//! database round trips per attestation.
//!
//! Run: `cargo bench -p snpguardd --bench attest_load`

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::time::{clock_gettime, ClockId};
use snpguard::certs::{encode_cert_table, Product, GUID_ASK, GUID_VCEK};
use snpguard::report::Report;
use snpguard::seal;
use snpguard_protocol::attest::{
    b64, decode_nonce, open_key, report_data, unb64, AttestRequest, AttestResponse,
    ChallengeResponse, RenewRequest, RenewResponse,
};
use snpguard_testkit::sim::{tcb_bytes, SimKey, SimPlatform, SimTcb};
use snpguardd::attest::{AttestError, AttestHandler, Attestor, HttpKds};
use snpguardd::config::{Bus, Config, Kds, RateLimit, TestRoot};
use snpguardd::https::load::{load, Conn, Target};
use snpguardd::https::{serve, server_config, Limits, TlsMaterial};
use snpguardd::registry::{Registry, StoreChoice};
use snpguardd::secrets::{MasterKey, MasterKeySource};
use snpguardd::service::{RecordInfo, RecordService, RegisterRequest};
use snpguardd::store::PgOptions;
use zeroize::Zeroizing;

const TCB: SimTcb = SimTcb {
    bootloader: 3,
    tee: 0,
    snp: 20,
    microcode: 209,
    fmc: 0,
};
const VMK: [u8; 64] = [0x5A; 64];

fn env_or(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse()?),
        Err(_) => Ok(default),
    }
}

fn cpu(clock: ClockId) -> Duration {
    let t = clock_gettime(clock);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn hwid() -> [u8; 64] {
    std::array::from_fn(|i| 0xA0 ^ i as u8)
}

/// Calls of `f` per second over `budget`, on this thread.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The attestor, with the CPU time its calls take summed up.
struct Timed {
    inner: Attestor,
    cpu_ns: AtomicU64,
}

impl Timed {
    fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = cpu(ClockId::ThreadCPUTime);
        let out = f();
        let spent = cpu(ClockId::ThreadCPUTime).saturating_sub(start);
        self.cpu_ns.fetch_add(
            u64::try_from(spent.as_nanos()).unwrap_or(0),
            Ordering::Relaxed,
        );
        out
    }
}

impl AttestHandler for Timed {
    fn challenge(&self) -> Result<ChallengeResponse, AttestError> {
        self.time(|| self.inner.challenge())
    }
    fn attest(&self, req: AttestRequest, peer: IpAddr) -> Result<AttestResponse, AttestError> {
        self.time(|| self.inner.attest(req, peer))
    }
    fn renew(&self, req: RenewRequest, peer: IpAddr) -> Result<RenewResponse, AttestError> {
        self.time(|| self.inner.renew(req, peer))
    }
    fn signed_launch(
        &self,
        req: snpguard_protocol::attest::SignedLaunchRequest,
        peer: IpAddr,
    ) -> Result<snpguard_protocol::attest::SignedLaunchResponse, AttestError> {
        self.time(|| self.inner.signed_launch(req, peer))
    }
    fn check_nonce(&self, nonce: &str) -> Result<std::time::Duration, AttestError> {
        self.time(|| self.inner.check_nonce(nonce))
    }
    fn ingestion_key(&self) -> [u8; 32] {
        self.inner.ingestion_key()
    }
}

fn write(dir: &Path, name: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    File::create(&p)?.write_all(data)?;
    Ok(p)
}

use snpguard_testkit::postgres;

/// A registry on `dir` (and `store`) with one record from synthetic
/// inputs.
fn registry(dir: &Path, store: StoreChoice) -> anyhow::Result<(Arc<Registry>, RecordInfo)> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
        .context("the SNP test data (SNPGUARD_TESTDATA) is needed for the firmware footer")?;
    let mut fw = vec![0x11u8; 3 * 4096];
    fw.extend_from_slice(&suffix);
    let master = MasterKey::from_bytes(&[7; 32], MasterKeySource::Credential("/bench".into()));
    let options = snpguardd::registry::RegistryOptions {
        test_roots: true,
        store,
        ..Default::default()
    };
    let reg = Registry::open_with(&dir.join("state"), master, &options)?;
    let pk = seal::PublicKey::from_bytes(&reg.ingestion_public_key())?;
    let sealed_vmk = seal::seal(&pk, seal::INFO_INGEST, b"", &VMK)?.to_bytes();
    let rec = reg.register(RegisterRequest {
        name: "bench".into(),
        firmware: File::open(write(dir, "fw.fd", &fw)?)?,
        kernel: File::open(write(dir, "kernel", &[0x22; 50_000])?)?,
        initrd: File::open(write(dir, "initrd", &[0x33; 80_000])?)?,
        cmdline: "console=ttyS0".into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        allow_smt: true,
        allow_debug: false,
        allow_migrate_ma: false,
        min_tcb: None,
        // The simulated platform's root, as the daemon's [[test_roots]].
        allow_test_root: true,
        allow_offline_unlock: false,
        sealed_vmk,
    })?;
    Ok((Arc::new(reg), rec))
}

/// What the guest's firmware reports for `rec`, bound to `data`, signed
/// by the simulated VCEK.
struct Guest {
    template: [u8; 1184],
    sim: SimPlatform,
    table: String,
}

impl Guest {
    fn new(sim: SimPlatform, rec: &RecordInfo) -> anyhow::Result<Guest> {
        let mut r: [u8; 1184] = snpguard_testkit::testdata::read("reports/milan-virtee/report.bin")
            .context("template report")?
            .try_into()
            .map_err(|_| anyhow::anyhow!("template report size"))?;
        let h = |s: &str| hex::decode(s).context("record hex");
        r[0x08..0x10].copy_from_slice(&rec.policy.to_le_bytes());
        r[0x10..0x20].copy_from_slice(&h(&rec.family_id)?);
        r[0x20..0x30].copy_from_slice(&h(&rec.image_id)?);
        r[0x30..0x34].copy_from_slice(&0u32.to_le_bytes());
        let tcb = tcb_bytes(Product::Milan, TCB).to_le_bytes();
        for off in [0x38, 0x180, 0x1E0, 0x1F0] {
            r[off..off + 8].copy_from_slice(&tcb);
        }
        r[0x48..0x4C].copy_from_slice(&1u32.to_le_bytes());
        r[0x90..0xC0].copy_from_slice(&h(&rec.measurement)?);
        r[0xE0..0x110].copy_from_slice(&h(&rec.id_key_digest)?);
        r[0x110..0x140].copy_from_slice(&h(&rec.author_key_digest)?);
        r[0x1A0..0x1E0].copy_from_slice(&hwid());
        let table = b64(&encode_cert_table(&[
            (GUID_VCEK, &sim.vcek_der),
            (GUID_ASK, &sim.ask_der),
        ]));
        Ok(Guest {
            template: r,
            sim,
            table,
        })
    }

    fn report(&self, data: &[u8; 64]) -> [u8; 1184] {
        let mut r = self.template;
        r[0x50..0x90].copy_from_slice(data);
        self.sim.sign_report(&mut r, SimKey::Vcek).expect("sign");
        r
    }
}

/// One agent exchange; the client's signing CPU time is added to `sign_ns`.
async fn attest_once(conn: &Conn, guest: &Guest, sign_ns: &AtomicU64) -> Result<(), String> {
    let (status, body) = conn
        .post_json("/v1/attest/challenge", "{}")
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("challenge: {status}"));
    }
    let ch: ChallengeResponse = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let nonce = decode_nonce(&ch.nonce).ok_or("bad nonce")?;
    let (secret, public) = seal::generate_keypair();
    let start = cpu(ClockId::ThreadCPUTime);
    let report = guest.report(&report_data(&nonce, &public));
    let spent = cpu(ClockId::ThreadCPUTime).saturating_sub(start);
    sign_ns.fetch_add(
        u64::try_from(spent.as_nanos()).unwrap_or(0),
        Ordering::Relaxed,
    );
    let req = AttestRequest {
        nonce: ch.nonce,
        report: b64(&report),
        cert_table: Some(guest.table.clone()),
        ephemeral_key: b64(&public.to_bytes()),
        signed: true,
        offline: false,
    };
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let (status, body) = conn
        .post_json("/v1/attest", body)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "attest: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let resp: AttestResponse = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let sealed = seal::SealedBox::from_bytes(&unb64(&resp.sealed_key, 4096).ok_or("b64")?)
        .map_err(|e| e.to_string())?;
    let key = open_key(&secret, &report, &sealed).map_err(|e| e.to_string())?;
    if key.as_slice() != VMK {
        return Err("wrong key released".into());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let ops = env_or("SNPGUARD_LOAD_OPS", 10_000)?;
    let concurrency = env_or("SNPGUARD_LOAD_CONCURRENCY", 200)?;
    println!("## sled (embedded, one host)\n");
    let sled = bench(StoreChoice::Sled, ops, concurrency)?;
    let pg = postgres::Postgres::start();
    println!("\n## PostgreSQL (shared by replicas; same host)\n");
    let shared = bench(
        StoreChoice::Postgres(PgOptions {
            url: pg.url(),
            password: None,
            ca_file: None,
        }),
        ops,
        concurrency,
    )?;
    println!();
    println!("| store | attestations/s | vs sled |");
    println!("|---|---|---|");
    println!("| sled | {sled:.0} | 1.00 |");
    println!("| PostgreSQL | {shared:.0} | {:.2} |", shared / sled);
    Ok(())
}

/// One load run against a registry on `store`; prints its table and
/// returns attestations per second.
fn bench(store: StoreChoice, ops: usize, concurrency: usize) -> anyhow::Result<f64> {
    let is_pg = matches!(store, StoreChoice::Postgres(_));
    let dir = tempfile::tempdir()?;
    let (registry, rec) = registry(dir.path(), store)?;
    let sim = SimPlatform::generate(Product::Milan, TCB, &hwid())?;
    let ark = write(dir.path(), "ark.der", &sim.ark_der)?;
    let state = dir.path().join("state");
    let config = Config {
        source: None,
        dropins: Vec::new(),
        state_dir: state.clone(),
        bus: Bus::System,
        listen: "127.0.0.1:0".parse()?,
        import_dir: state.join("import"),
        tls_cert: None,
        tls_key: None,
        test_roots: vec![TestRoot {
            product: Product::Milan,
            ark_path: ark,
        }],
        kds: Kds { enabled: false },
        attest: Default::default(),
        rate_limit: RateLimit::default(),
        https: Default::default(),
        tcb_floors: Default::default(),
        revocation: Default::default(),
        store: Default::default(),
        metrics_listen: None,
    };
    let attestor = Attestor::new(registry, &config, Box::new(HttpKds::amd()))?;
    let guest = Arc::new(Guest::new(sim, &rec)?);

    // The bound: one P-384 verify of the report per attestation, here on
    // one core, same bytes and key the server verifies; best of three.
    let sample = guest.report(&[1; 64]);
    let parsed = Report::parse(&sample)?;
    let sig = p384::ecdsa::Signature::from_slice(&parsed.signature.to_p384_bytes())?;
    let signed = parsed.signed_bytes().to_vec();
    let key = guest.sim.verifying_key(SimKey::Vcek);
    use p384::ecdsa::signature::Verifier as _;
    key.verify(&signed, &sig)
        .context("the sample report verifies")?;
    let mut verify = 0f64;
    let mut sign = 0f64;
    for _ in 0..3 {
        verify = verify.max(rate(Duration::from_secs(2), || {
            black_box(key.verify(black_box(&signed), &sig)).expect("verify");
        }));
        sign = sign.max(rate(Duration::from_secs(1), || {
            black_box(guest.report(black_box(&[2; 64])));
        }));
    }

    let handler = Arc::new(Timed {
        inner: attestor,
        cpu_ns: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (stats, process_cpu, sign_ns, trips) = runtime.block_on(async {
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
            max_connections_per_source: concurrency.max(1) + 16,
            ..Limits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            server_config(&material)?,
            handler.clone(),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        let target = Target::new(addr, &ca, "localhost")?;
        let sign_ns = Arc::new(AtomicU64::new(0));
        let cpu_start = cpu(ClockId::ProcessCPUTime);
        let trips_start = snpguardd::store::round_trips();
        let counter = sign_ns.clone();
        let stats = load(&target, ops, concurrency, move |conn, _| {
            let (guest, counter) = (guest.clone(), counter.clone());
            async move { attest_once(&conn, &guest, &counter).await }
        })
        .await?;
        let process_cpu = cpu(ClockId::ProcessCPUTime).saturating_sub(cpu_start);
        let trips = snpguardd::store::round_trips() - trips_start;
        let _ = stop.send(());
        server.await??;
        anyhow::Ok((stats, process_cpu, sign_ns.load(Ordering::Relaxed), trips))
    })?;
    for e in &stats.sample_errors {
        println!("attest_load: error: {e}");
    }
    anyhow::ensure!(stats.errors == 0, "{} attestations failed", stats.errors);

    let per = |ns: f64| ns / ops as f64 / 1e6;
    let total_ms = per(process_cpu.as_nanos() as f64);
    let handler_ms = per(handler.cpu_ns.load(Ordering::Relaxed) as f64);
    let sign_ms = per(sign_ns as f64);
    let rate = stats.ops_per_sec;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "attest_load: {ops} attestations, {concurrency} keep-alive connections, {cores} cores"
    );
    println!("attest_load: {stats}");
    println!();
    println!("| measurement | value | vs raw P-384 verify |");
    println!("|---|---|---|");
    println!("| raw P-384 ECDSA verify, 1 core | {verify:.0} /s | 1.00 |");
    println!(
        "| raw P-384 ECDSA sign (client, per report), 1 core | {sign:.0} /s | {:.2} |",
        sign / verify
    );
    println!(
        "| attestations through HTTPS keep-alive (client and server on the same {cores} cores) | {rate:.0} /s | {:.2} |",
        rate / verify
    );
    println!("| process CPU per attestation (client + server) | {total_ms:.3} ms | |");
    println!("| of which the attestor (verify, store, seal) | {handler_ms:.3} ms | |");
    println!("| of which client report signing | {sign_ms:.3} ms | |");
    let server_ms = total_ms - sign_ms;
    println!(
        "| server-side bound on {cores} cores (all CPU but the client's signing counted as server) | {:.0} /s | {:.2} |",
        cores as f64 * 1000.0 / server_ms,
        cores as f64 * 1000.0 / server_ms / verify
    );
    if is_pg {
        println!(
            "| database round trips per attestation (challenge to release) | {:.1} | |",
            trips as f64 / ops as f64
        );
    }
    Ok(rate)
}
