//! The real daemon (`snpguardd`) on a private system-type bus with the
//! project's policy and a mock polkit, driven by the real `snpguardctl`:
//! registration and bundles, persistence across restarts, polkit denial,
//! typed errors for bad input with the daemon staying up, crash safety
//! under SIGKILL, and the Landlock sandbox of the running process; HTTPS
//! attestation against a simulated platform with every trust rule refused
//! end to end with its own journaled reason, and certificate imports for
//! an air-gapped daemon. The HTTPS cases are in daemon/attestation.rs,
//! daemon/refusals.rs and daemon/renewal.rs; offline unlock (the record's
//! option and the signed directive) in daemon/offline.rs; the daemon's own CRL and the
//! test-root start-up check in daemon/revocation.rs; the daemon killed at
//! each commit point in daemon/crash.rs.

use snpguard_testkit::bus as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{MockPolkit, TestBus};
use rand::{Rng, RngCore, SeedableRng};
use snpguard::measure::{launch_digest, MeasureInput, VcpuType, VmmType};
use snpguard::seal;
use snpguard_protocol::bundle::{extract_bundle, ExtractLimits};
use snpguard_testkit::ready::Notify;

const DEADLINE: Duration = Duration::from_secs(60);

/// A running snpguardd; killed on drop.
struct Daemon {
    child: Child,
    state: PathBuf,
}

impl Daemon {
    /// Starts the daemon on `bus` with `state` and waits for READY=1 on a
    /// notify socket of our own (a condition with a deadline, no sleeps).
    fn start(bus: &TestBus, state: &Path) -> Daemon {
        Self::start_with(bus, state, "")
    }

    /// As [`Daemon::start`], with a configuration file of `config`.
    fn start_with(bus: &TestBus, state: &Path, config: &str) -> Daemon {
        Self::start_env(bus, state, config, &[])
    }

    /// As [`Daemon::start_with`], with `env` added to its environment.
    fn start_env(bus: &TestBus, state: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::launch(bus, state, config, env, true)
    }

    /// Starts the daemon; waits for READY=1 only when `ready` (a daemon
    /// meant to die while starting never sends it).
    fn launch(
        bus: &TestBus,
        state: &Path,
        config: &str,
        env: &[(&str, &str)],
        ready: bool,
    ) -> Daemon {
        let notify = Notify::new().expect("notify socket");
        let log = std::fs::File::create(state.with_extension("log")).expect("daemon log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_snpguardd"));
        child.args(free_listen(config));
        let mut child = child
            .arg("--state-dir")
            .arg(state)
            .arg("--bus")
            .arg(&bus.address)
            .arg("--config")
            .arg(config_file(state, config))
            .env("NOTIFY_SOCKET", notify.path())
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("SNPGUARD_CRASH_AT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn snpguardd");
        if ready {
            if let Err(e) = notify.wait_ready(&mut child, DEADLINE) {
                panic!("snpguardd {e}; log:\n{}", daemon_log(state));
            }
        }
        Daemon {
            child,
            state: state.to_owned(),
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let status = wait_exit(&mut self.child);
        assert!(
            status.success(),
            "snpguardd exit {status}; log:\n{}",
            daemon_log(&self.state)
        );
    }

    /// Waits for the daemon to die at its crash point (SIGKILL, as a
    /// power cut would), which the log names.
    fn crashed_at(mut self, point: &str) {
        use std::os::unix::process::ExitStatusExt;
        let status = wait_exit(&mut self.child);
        assert_eq!(
            status.signal(),
            Some(9),
            "snpguardd did not die at {point}: {status}; log:\n{}",
            daemon_log(&self.state)
        );
        let log = daemon_log(&self.state);
        assert!(log.contains(&format!("crash point {point}")), "{log}");
    }

    /// SIGKILL, no chance to clean up.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = wait_exit(&mut self.child);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "daemon did not exit");
        std::thread::yield_now();
    }
}

fn daemon_log(state: &Path) -> String {
    std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
}

/// The configuration directory of a test daemon (never the host's
/// /etc/snpguard). The daemon may read this directory, so nothing else of
/// the test's is in it.
fn config_dir(state: &Path) -> PathBuf {
    let dir = state.with_extension("conf.d");
    std::fs::create_dir_all(&dir).expect("config dir");
    dir
}

/// `--listen 127.0.0.1:0` unless `config` names its own address: daemons
/// of tests running at once must not race for the default port 3000.
fn free_listen(config: &str) -> Vec<&'static str> {
    let own = config
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .any(|l| l.trim_start().starts_with("listen"));
    if own {
        Vec::new()
    } else {
        vec!["--listen", "127.0.0.1:0"]
    }
}

fn config_file(state: &Path, text: &str) -> PathBuf {
    let p = config_dir(state).join("snpguardd.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// The `snpguardctl` built next to `snpguardd` in the same target
/// directory (`cargo test --workspace` builds both).
fn snpguardctl() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_snpguardd")).with_file_name("snpguardctl");
    assert!(
        p.is_file(),
        "{} is missing: run the workspace tests (make test) or `cargo build -p snpguardctl` first",
        p.display()
    );
    p
}

/// `snpguardctl ARGS` on the test bus, stdin empty.
fn ctl_command(bus: &TestBus, args: &[&str]) -> Command {
    let mut c = Command::new(snpguardctl());
    c.arg("--bus-address")
        .arg(&bus.address)
        .args(args)
        .stdin(Stdio::null());
    c
}

fn ctl(bus: &TestBus, args: &[&str]) -> Output {
    ctl_command(bus, args).output().expect("run snpguardctl")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "snpguardctl failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "expected failure, got {o:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An initrd holding the agent's configuration (naming `server`), its CA
/// file (`ca`) and 128 KiB of random filler, as one plain newc archive.
fn agent_initrd(rng: &mut impl RngCore, server: &str, ca: &str) -> Vec<u8> {
    let config = format!("ca = \"/etc/snpguard/ca.pem\"\nservers = [\"{server}\"]\n");
    let mut filler = vec![0u8; 128 * 1024];
    rng.fill_bytes(&mut filler);
    snpguard_protocol::initrd::newc(&[
        ("etc/snpguard/agent.toml", 0o100644, config.as_bytes()),
        ("etc/snpguard/ca.pem", 0o100644, ca.as_bytes()),
        ("usr/lib/modules/filler", 0o100644, &filler),
    ])
}

/// A staging directory as `convert` writes it: a synthetic AmdSev firmware
/// (random pages + the real AmdSev footer), a random kernel, an initrd
/// with the agent's files ([`agent_initrd`]), a
/// command line, and a VMK sealed to the daemon's ingestion key.
fn staging(dir: &Path, state: &Path, seed: u64) -> Option<PathBuf> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = dir.join(format!("staging-{seed}"));
    std::fs::create_dir_all(&s).expect("staging");
    let mut fw = vec![0u8; 3 * 4096];
    rng.fill_bytes(&mut fw);
    fw.extend_from_slice(&suffix);
    std::fs::write(s.join("firmware.fd"), fw).expect("firmware");
    let mut kernel = vec![0u8; 64 * 1024 + rng.gen_range(0..4096)];
    rng.fill_bytes(&mut kernel);
    std::fs::write(s.join("kernel"), kernel).expect("kernel");
    let initrd = agent_initrd(&mut rng, "https://a.example:8443", "CA-A");
    std::fs::write(s.join("initrd"), initrd).expect("initrd");
    std::fs::write(s.join("cmdline"), "console=ttyS0 root=/dev/mapper/root").expect("cmdline");
    let public = std::fs::read(state.join("ingestion.pub")).expect("ingestion.pub");
    let public = seal::PublicKey::from_bytes(&public).expect("ingestion key");
    let mut vmk = [0u8; 64];
    rng.fill_bytes(&mut vmk);
    let sealed = seal::seal(&public, seal::INFO_INGEST, b"", &vmk).expect("seal");
    // The test keeps the plaintext, outside the staging dir, to compare
    // with what attestation releases.
    std::fs::write(dir.join(format!("vmk-{seed}.plain")), vmk).expect("vmk copy");
    std::fs::write(s.join("vmk.sealed"), sealed.to_bytes()).expect("vmk.sealed");
    Some(s)
}

fn register(bus: &TestBus, staging: &Path, name: &str, out: &Path) -> Output {
    register_with(bus, staging, name, out, &[])
}

/// `register` with `extra` arguments (e.g. TCB minimums).
fn register_with(bus: &TestBus, staging: &Path, name: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "register",
        "--name",
        name,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
        "--allow-smt",
        "--staging-dir",
        staging.to_str().expect("utf-8"),
        "--out-bundle",
        out.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    ctl(bus, &args)
}

/// What `snpguard::measure` computes for the staging files.
fn expected_digest(staging: &Path) -> String {
    launch_digest(&MeasureInput {
        ovmf: staging.join("firmware.fd"),
        ovmf_hash: None,
        kernel: Some(staging.join("kernel")),
        initrd: Some(staging.join("initrd")),
        cmdline: Some("console=ttyS0 root=/dev/mapper/root".into()),
        vcpus: 2,
        vcpu_type: "EPYC-v4".parse::<VcpuType>().expect("vcpu type"),
        guest_features: 0x1,
        vmm_type: VmmType::Qemu,
    })
    .expect("measure")
    .to_string()
}

/// Extracts a bundle and returns its launch config's measurement.
fn bundle_measurement(bundle: &Path, into: &Path) -> String {
    std::fs::create_dir_all(into).expect("extract dir");
    let f = std::fs::File::open(bundle).expect("bundle");
    let cfg = extract_bundle(f, into, &ExtractLimits::default()).expect("bundle extracts");
    cfg.measurement
}

fn records(bus: &TestBus) -> Vec<serde_json::Value> {
    let out = ok(&ctl(bus, &["records", "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v.as_array()
        .cloned()
        .unwrap_or_else(|| v["records"].as_array().cloned().expect("a list of records"))
}

struct Setup {
    _bus_conn: zbus::Connection,
    polkit: MockPolkit,
    bus: TestBus,
    dir: tempfile::TempDir,
    state: PathBuf,
}

async fn setup() -> Setup {
    let bus = TestBus::start();
    let polkit = MockPolkit::default();
    polkit.set_allow(true);
    let conn = polkit.serve(&bus).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    Setup {
        _bus_conn: conn,
        polkit,
        bus,
        dir,
        state,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_export_restart_and_errors() {
    let s = setup().await;
    let daemon = Daemon::start(&s.bus, &s.state);
    let Some(stage) = staging(s.dir.path(), &s.state, 1) else {
        return;
    };
    let first_start = daemon_log(&s.state);
    assert!(!first_start.contains("BEGIN PRIVATE KEY"), "{first_start}");

    // Register: the bundle carries exactly what snpguard::measure computes.
    // No TCB minimum: a loud warning on the CLI's stderr and the journal.
    let bundle = s.dir.path().join("web.tar.gz");
    let out = register(&s.bus, &stage, "web", &bundle);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING: web has NO minimum TCB") && stderr.contains("set-min-tcb web"),
        "{stderr}"
    );
    assert!(
        daemon_log(&s.state).contains("WITHOUT A MINIMUM TCB"),
        "the journal warns too"
    );
    // No test root configured: --allow-test-root is refused by name.
    let e = err(&register_with(
        &s.bus,
        &stage,
        "sim",
        &s.dir.path().join("sim.tar.gz"),
        &["--allow-test-root"],
    ));
    assert!(
        e.contains("InvalidInput") && e.contains("allow_test_root") && e.contains("test_roots"),
        "{e}"
    );
    // A minimum set later, without re-registering.
    let set = ok(&ctl(
        &s.bus,
        &[
            "records",
            "set-min-tcb",
            "web",
            "--bootloader",
            "3",
            "--tee",
            "0",
            "--snp",
            "8",
            "--microcode",
            "115",
        ],
    ));
    assert!(
        set.contains("bootloader=3,tee=0,snp=8,microcode=115"),
        "{set}"
    );
    let shown = ok(&ctl(&s.bus, &["records", "show", "web"]));
    assert!(
        shown.contains("Min TCB:      bootloader=3,tee=0,snp=8,microcode=115"),
        "{shown}"
    );
    assert!(shown.contains("Test root:    refused"), "{shown}");
    let want = expected_digest(&stage);
    assert_eq!(bundle_measurement(&bundle, &s.dir.path().join("x1")), want);
    // Identical inputs under another name: the same launch digest.
    let bundle2 = s.dir.path().join("web2.tar.gz");
    ok(&register(&s.bus, &stage, "web2", &bundle2));
    assert_eq!(bundle_measurement(&bundle2, &s.dir.path().join("x2")), want);
    assert_eq!(records(&s.bus).len(), 2);
    ok(&ctl(&s.bus, &["records", "disable", "web2"]));
    let shown = ok(&ctl(&s.bus, &["records", "show", "web2", "--json"]));
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["enabled"], false, "{shown}");
    assert_eq!(shown["measurement"], want.as_str());

    // Bad inputs: typed errors, nothing stored, daemon still answering.
    let bad = |name: &str, edit: &dyn Fn(&Path)| {
        let b = s.dir.path().join(format!("bad-{name}"));
        std::fs::create_dir_all(&b).expect("dir");
        for f in ["firmware.fd", "kernel", "initrd", "cmdline", "vmk.sealed"] {
            std::fs::copy(stage.join(f), b.join(f)).expect("copy");
        }
        edit(&b);
        b
    };
    let out = s.dir.path().join("bad.tar.gz");
    let e = err(&register(&s.bus, &stage, "web", &out));
    assert!(
        e.contains("AlreadyExists") || e.contains("already exists"),
        "{e}"
    );
    let fixture = |name: &str| snpguard_testkit::testdata::read(name).expect("fixture");
    let no_hashes = bad("fw", &|b: &Path| {
        std::fs::write(
            b.join("firmware.fd"),
            fixture("measurement/ovmf_OvmfX64_suffix.bin"),
        )
        .expect("write")
    });
    let e = err(&register(&s.bus, &no_hashes, "nohashes", &out));
    assert!(e.contains("SNP_KERNEL_HASHES"), "{e}");
    let garbage_vmk = bad("vmk", &|b: &Path| {
        std::fs::write(b.join("vmk.sealed"), b"not a sealed box").expect("write")
    });
    let e = err(&register(&s.bus, &garbage_vmk, "vmk", &out));
    assert!(e.contains("SealedKey") || e.contains("sealed"), "{e}");
    let nul = bad("nul", &|b: &Path| {
        std::fs::write(b.join("cmdline"), b"console=ttyS0\0evil").expect("write")
    });
    let e = err(&register(&s.bus, &nul, "nul", &out));
    assert!(e.to_lowercase().contains("nul"), "{e}");
    let e = err(&ctl(
        &s.bus,
        &[
            "register",
            "--name",
            "cpu",
            "--vcpus",
            "2",
            "--vcpu-type",
            "Pentium",
            "--staging-dir",
            stage.to_str().expect("utf-8"),
            "--out-bundle",
            out.to_str().expect("utf-8"),
        ],
    ));
    assert!(
        e.contains("EPYC-v4"),
        "the error lists valid vCPU types: {e}"
    );
    assert!(!out.exists(), "no bundle written for a failed registration");
    assert_eq!(records(&s.bus).len(), 2, "nothing stored by bad inputs");

    // Polkit says no: AccessDenied, nothing changes, reads still work.
    s.polkit.set_allow(false);
    let e = err(&register(&s.bus, &stage, "denied", &out));
    assert!(
        e.contains("AccessDenied") || e.contains("not authorized"),
        "{e}"
    );
    let e = err(&ctl(&s.bus, &["records", "delete", "web"]));
    assert!(
        e.contains("AccessDenied") || e.contains("not authorized"),
        "{e}"
    );
    assert_eq!(records(&s.bus).len(), 2);
    s.polkit.set_allow(true);
    let calls = s.polkit.calls();
    assert!(calls.iter().all(|c| c.subject_kind == "system-bus-name"));

    // Restart: everything is found again, the bundle is byte-identical.
    daemon.stop();
    let daemon = Daemon::start(&s.bus, &s.state);
    let after = records(&s.bus);
    assert_eq!(after.len(), 2);
    let web2 = after
        .iter()
        .find(|r| r["name"] == "web2")
        .expect("web2 still there");
    assert_eq!(web2["enabled"], false);
    let again = s.dir.path().join("web-again.tar.gz");
    ok(&ctl(
        &s.bus,
        &[
            "records",
            "export",
            "web",
            "--out",
            again.to_str().expect("utf-8"),
        ],
    ));
    assert_eq!(
        std::fs::read(&again).expect("again"),
        std::fs::read(&bundle).expect("bundle"),
        "export after restart is byte-identical"
    );
    // --format squashfs: the same seven members at the image's root, the
    // same bytes every time.
    let sq = |name: &str| {
        let p = s.dir.path().join(name);
        ok(&ctl(
            &s.bus,
            &[
                "records",
                "export",
                "web",
                "--format",
                "squashfs",
                "--out",
                p.to_str().expect("utf-8"),
            ],
        ));
        p
    };
    let sq1 = sq("web.sqfs");
    // Another second: time stamps would differ if any were written.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sq2 = sq("web-again.sqfs");
    assert_eq!(
        std::fs::read(&sq1).expect("sq1"),
        std::fs::read(&sq2).expect("sq2")
    );
    let unpacked = s.dir.path().join("unsquashed");
    let out = std::process::Command::new("unsquashfs")
        .arg("-d")
        .arg(&unpacked)
        .arg(&sq1)
        .output()
        .expect("unsquashfs");
    assert!(out.status.success(), "{out:?}");
    let tar_dir = s.dir.path().join("untarred");
    std::fs::create_dir(&tar_dir).expect("mkdir");
    snpguard_protocol::bundle::extract_bundle(
        std::fs::File::open(&bundle).expect("bundle"),
        &tar_dir,
        &Default::default(),
    )
    .expect("extract");
    let mut names: Vec<String> = std::fs::read_dir(&unpacked)
        .expect("unsquashed")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = snpguard_protocol::bundle::MEMBERS
        .iter()
        .map(|m| m.to_string())
        .collect();
    want.sort();
    assert_eq!(names, want);
    for m in snpguard_protocol::bundle::MEMBERS {
        assert_eq!(
            std::fs::read(unpacked.join(m)).expect("member"),
            std::fs::read(tar_dir.join(m)).expect("member"),
            "{m}"
        );
    }
    ok(&ctl(&s.bus, &["records", "delete", "web2"]));
    assert_eq!(records(&s.bus).len(), 1);
    daemon.stop();
}

/// The running daemon cannot read outside its directories: a blob
/// replaced by a symlink to an identical copy elsewhere can no longer be
/// exported (Landlock refuses the open), while the original can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landlock_confines_the_running_daemon() {
    let s = setup().await;
    let daemon = Daemon::start(&s.bus, &s.state);
    let Some(stage) = staging(s.dir.path(), &s.state, 2) else {
        return;
    };
    let bundle = s.dir.path().join("b.tar.gz");
    ok(&register(&s.bus, &stage, "confined", &bundle));
    let log = daemon_log(&s.state);
    assert!(
        log.to_lowercase().contains("landlock"),
        "the sandbox status is logged:\n{log}"
    );
    // The kernel blob is the one with the kernel's bytes.
    let kernel = std::fs::read(stage.join("kernel")).expect("kernel");
    let blobs = s.state.join("blobs");
    let blob = std::fs::read_dir(&blobs)
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::read(p).map(|b| b == kernel).unwrap_or(false))
        .expect("the kernel blob");
    let outside = s.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    let copy = outside.join("kernel-copy");
    std::fs::copy(&blob, &copy).expect("copy");
    std::fs::remove_file(&blob).expect("rm");
    std::os::unix::fs::symlink(&copy, &blob).expect("symlink");
    let out = s.dir.path().join("export.tar.gz");
    let e = err(&ctl(
        &s.bus,
        &[
            "records",
            "export",
            "confined",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    ));
    assert!(
        e.to_lowercase().contains("permission denied"),
        "Landlock must refuse reading {}: {e}",
        copy.display()
    );
    // Put the real file back: the export works again.
    std::fs::remove_file(&blob).expect("rm link");
    std::fs::copy(&copy, &blob).expect("restore");
    ok(&ctl(
        &s.bus,
        &[
            "records",
            "export",
            "confined",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    ));
    daemon.stop();
}

// ---------------------------------------------------------------------
// Remote attestation over HTTPS against the real daemon, with the
// simulated platform's root trusted through the configuration.

use snpguard::certs::{encode_cert_table, Product, GUID_ASK, GUID_VCEK};
use snpguard_protocol::attest::{
    decode_nonce, open_key, report_data, unb64, AttestRequest, AttestResponse, ChallengeResponse,
    ErrorBody,
};
use snpguard_testkit::sim::{tcb_bytes, SimKey, SimPlatform, SimTcb};
use snpguardd::https::load::{load, Conn, Target};

const SIM_TCB: SimTcb = SimTcb {
    bootloader: 3,
    tee: 0,
    snp: 20,
    microcode: 209,
    fmc: 0,
};

/// A daemon with HTTPS on a free loopback port, trusting `sim`'s root,
/// with `extra` appended to its configuration.
fn attest_daemon_with(s: &Setup, sim: &SimPlatform, extra: &str) -> (Daemon, Target) {
    attest_daemon_env(s, sim, extra, &[])
}

/// As [`attest_daemon_with`], with `env` added to the daemon's
/// environment.
fn attest_daemon_env(
    s: &Setup,
    sim: &SimPlatform,
    extra: &str,
    env: &[(&str, &str)],
) -> (Daemon, Target) {
    std::fs::create_dir_all(&s.state).expect("state");
    std::fs::write(config_dir(&s.state).join("sim-ark.der"), &sim.ark_der).expect("ark");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         [[test_roots]]\nproduct = \"milan\"\nark_path = \"sim-ark.der\"\n\
         [kds]\nenabled = false\n\
         [rate_limit]\nper_source_per_second = 100000.0\nper_source_burst = 100000\n\
         per_source_connections = 1000\n\
         {extra}"
    );
    let daemon = Daemon::start_env(&s.bus, &s.state, &config, env);
    assert!(
        daemon_log(&s.state).contains("TEST"),
        "a trusted test root is logged loudly"
    );
    let ca = std::fs::read(s.state.join("tls/cert.pem")).expect("daemon cert");
    let target = Target::new(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &ca,
        "localhost",
    )
    .expect("target");
    (daemon, target)
}

/// A daemon trusting `sim` with one record `name` registered from a fresh
/// staging dir: the daemon, its HTTPS target, the plaintext VMK and the
/// launch. `None` when the test data is absent (outside CI).
fn registered_guest(
    s: &Setup,
    sim: &SimPlatform,
    seed: u64,
    name: &str,
) -> Option<(Daemon, Target, Vec<u8>, Launch)> {
    registered_guest_with(s, sim, seed, name, "", &[])
}

/// As [`registered_guest`], with `config` appended to the daemon's
/// configuration and `register` arguments added to the registration.
fn registered_guest_with(
    s: &Setup,
    sim: &SimPlatform,
    seed: u64,
    name: &str,
    config: &str,
    register: &[&str],
) -> Option<(Daemon, Target, Vec<u8>, Launch)> {
    let (daemon, target) = attest_daemon_with(s, sim, config);
    let stage = staging(s.dir.path(), &s.state, seed)?;
    let bundle = s.dir.path().join(format!("{name}.tar.gz"));
    // The simulated platform's root is the daemon's [[test_roots]].
    let register = [register, &["--allow-test-root"]].concat();
    ok(&register_with(&s.bus, &stage, name, &bundle, &register));
    let vmk = std::fs::read(s.dir.path().join(format!("vmk-{seed}.plain"))).expect("vmk");
    let launch = launch_of(&s.bus, name);
    Some((daemon, target, vmk, launch))
}

/// What the record says, as `records show --json` prints it.
struct Launch {
    measurement: Vec<u8>,
    policy: u64,
    image_id: Vec<u8>,
    family_id: Vec<u8>,
    id_key_digest: Vec<u8>,
    author_key_digest: Vec<u8>,
}

fn launch_of(bus: &TestBus, name: &str) -> Launch {
    let out = ok(&ctl(bus, &["records", "show", name, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let h = |k: &str| hex::decode(v[k].as_str().expect(k)).expect("hex");
    Launch {
        measurement: h("measurement"),
        policy: v["policy"].as_u64().expect("policy"),
        image_id: h("image_id"),
        family_id: h("family_id"),
        id_key_digest: h("id_key_digest"),
        author_key_digest: h("author_key_digest"),
    }
}

/// The report the simulated firmware gives a guest launched as `launch`
/// (a real Milan report as the template for every other field).
fn sim_report(sim: &SimPlatform, launch: &Launch, data: &[u8; 64]) -> Vec<u8> {
    sim_report_edited(sim, launch, data, |_| {})
}

/// As [`sim_report`], with `edit` applied to the fields before signing.
fn sim_report_edited(
    sim: &SimPlatform,
    launch: &Launch,
    data: &[u8; 64],
    edit: impl FnOnce(&mut [u8; 1184]),
) -> Vec<u8> {
    let mut r: [u8; 1184] = snpguard_testkit::testdata::read("reports/milan-virtee/report.bin")
        .expect("template")
        .try_into()
        .expect("size");
    r[0x08..0x10].copy_from_slice(&launch.policy.to_le_bytes());
    r[0x10..0x20].copy_from_slice(&launch.family_id);
    r[0x20..0x30].copy_from_slice(&launch.image_id);
    r[0x30..0x34].copy_from_slice(&0u32.to_le_bytes());
    let tcb = tcb_bytes(Product::Milan, SIM_TCB).to_le_bytes();
    for off in [0x38, 0x180, 0x1E0, 0x1F0] {
        r[off..off + 8].copy_from_slice(&tcb);
    }
    r[0x48..0x4C].copy_from_slice(&1u32.to_le_bytes()); // AUTHOR_KEY_EN, VCEK
    r[0x50..0x90].copy_from_slice(data);
    r[0x90..0xC0].copy_from_slice(&launch.measurement);
    r[0xE0..0x110].copy_from_slice(&launch.id_key_digest);
    r[0x110..0x140].copy_from_slice(&launch.author_key_digest);
    r[0x1A0..0x1E0].copy_from_slice(&sim_hwid());
    edit(&mut r);
    sim.sign_report(&mut r, SimKey::Vcek).expect("sign");
    r.to_vec()
}

fn sim_hwid() -> [u8; 64] {
    let mut h = [0u8; 64];
    for (i, b) in h.iter_mut().enumerate() {
        *b = 0xA0 ^ i as u8;
    }
    h
}

fn sim_platform() -> SimPlatform {
    SimPlatform::generate(Product::Milan, SIM_TCB, &sim_hwid()).expect("sim platform")
}

/// A fresh challenge: the nonce as sent and as bytes.
async fn challenge(conn: &Conn) -> (ChallengeResponse, [u8; 32]) {
    let (status, body) = conn
        .post_json("/v1/attest/challenge", "{}")
        .await
        .expect("challenge");
    assert_eq!(status.as_u16(), 200, "{body:?}");
    let ch: ChallengeResponse = serde_json::from_slice(&body).expect("challenge json");
    let nonce = decode_nonce(&ch.nonce).expect("nonce");
    (ch, nonce)
}

/// One attestation as the agent does it; `tamper` may change the report
/// after it was built (and re-signed) to break one rule.
async fn attest_once(
    conn: &Conn,
    sim: &SimPlatform,
    launch: &Launch,
    tamper: impl FnOnce(&mut Launch),
) -> Result<(AttestResponse, Vec<u8>, seal::SecretKey), (u16, ErrorBody)> {
    let (ch, nonce) = challenge(conn).await;
    let (secret, public) = seal::generate_keypair();
    let mut l = Launch {
        ..clone_launch(launch)
    };
    tamper(&mut l);
    let report = sim_report(sim, &l, &report_data(&nonce, &public));
    let req = attest_request(sim, ch.nonce, &report, &public);
    send_attest(conn, &req, report, secret).await
}

/// The request the agent sends: the report with the platform's
/// certificate table and the ephemeral key.
fn attest_request(
    sim: &SimPlatform,
    nonce: String,
    report: &[u8],
    public: &seal::PublicKey,
) -> AttestRequest {
    AttestRequest {
        nonce,
        report: snpguard_protocol::attest::b64(report),
        cert_table: Some(snpguard_protocol::attest::b64(&encode_cert_table(&[
            (GUID_VCEK, &sim.vcek_der),
            (GUID_ASK, &sim.ask_der),
        ]))),
        ephemeral_key: snpguard_protocol::attest::b64(&public.to_bytes()),
        signed: true,
        offline: false,
    }
}

async fn send_attest(
    conn: &Conn,
    req: &AttestRequest,
    report: Vec<u8>,
    secret: seal::SecretKey,
) -> Result<(AttestResponse, Vec<u8>, seal::SecretKey), (u16, ErrorBody)> {
    let (status, body) = conn
        .post_json("/v1/attest", serde_json::to_vec(req).expect("json"))
        .await
        .expect("attest");
    if status.as_u16() == 200 {
        Ok((
            serde_json::from_slice(&body).expect("response json"),
            report,
            secret,
        ))
    } else {
        Err((
            status.as_u16(),
            serde_json::from_slice(&body).expect("error json"),
        ))
    }
}

fn clone_launch(l: &Launch) -> Launch {
    Launch {
        measurement: l.measurement.clone(),
        policy: l.policy,
        image_id: l.image_id.clone(),
        family_id: l.family_id.clone(),
        id_key_digest: l.id_key_digest.clone(),
        author_key_digest: l.author_key_digest.clone(),
    }
}

fn released(resp: &AttestResponse, report: &[u8], secret: &seal::SecretKey) -> Vec<u8> {
    let sealed = seal::SealedBox::from_bytes(&unb64(&resp.sealed_key, 4096).expect("b64"))
        .expect("sealed box");
    open_key(secret, report, &sealed).expect("open").to_vec()
}

#[path = "daemon/attestation.rs"]
mod attestation;
#[path = "daemon/crash.rs"]
mod crash;
#[path = "daemon/fleet.rs"]
mod fleet;
#[path = "daemon/offline.rs"]
mod offline;
#[path = "daemon/refusals.rs"]
mod refusals;
#[path = "daemon/renewal.rs"]
mod renewal;
#[path = "daemon/revocation.rs"]
mod revocation;
#[path = "daemon/sigkill.rs"]
mod sigkill;
