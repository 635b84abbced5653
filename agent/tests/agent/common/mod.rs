//! The harness of the agent's integration tests: a real snpguardd on
//! 127.0.0.1 with a private bus, a guest registered with `snpguardctl
//! register`, a simulated platform from `snpguard-sim init`, launch blobs
//! from `snpguard-sim launch`, the agent's configuration, and a LUKS2
//! volume made by cryptsetup with the registered VMK.

#![allow(dead_code)]

pub mod forged;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use snpguard_testkit::bus;
use snpguard_testkit::ready::Notify;

use rand::{RngCore, SeedableRng};
use snpguard::seal;
use snpguard_protocol::agent_config::{AgentConfig, Luks, ReportSource, Retry, Server, Simulator};

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const UUID: &str = "5f1d7c2a-0e3b-4a8e-9c61-7b2d4e6f8a10";

pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_snpguard-agent")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: `cargo build --workspace` (make test does) first",
        p.display()
    );
    p
}

/// snpguardd with HTTPS on a free loopback port, trusting `ark`.
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub state: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Stops the daemon (a server that does not answer).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn daemon_log(state: &Path) -> String {
    std::fs::read_to_string(state.with_extension("log")).unwrap_or_default()
}

pub fn start_daemon(bus: &bus::TestBus, dir: &Path, ark: &Path) -> Daemon {
    let state = dir.join("state");
    let conf_dir = dir.join("conf.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::copy(ark, conf_dir.join("sim-ark.pem")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    std::fs::write(
        conf_dir.join("snpguardd.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             [[test_roots]]\nproduct = \"genoa\"\nark_path = \"sim-ark.pem\"\n\
             [kds]\nenabled = false\n"
        ),
    )
    .unwrap();
    let notify = Notify::new().expect("notify socket");
    let mut child = Command::new(sibling("snpguardd"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--bus")
        .arg(&bus.address)
        .arg("--config")
        .arg(conf_dir.join("snpguardd.toml"))
        .env("NOTIFY_SOCKET", notify.path())
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.with_extension("log")).unwrap())
        .spawn()
        .expect("spawn snpguardd");
    if let Err(e) = notify.wait_ready(&mut child, DEADLINE) {
        panic!("snpguardd {e}; log:\n{}", daemon_log(&state));
    }
    Daemon { child, port, state }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A registered guest: the daemon, its bundle, the VMK and the platform.
pub struct Guest {
    _bus_conn: zbus::Connection,
    pub bus: bus::TestBus,
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub bundle: PathBuf,
    pub vmk: Vec<u8>,
    pub platform: PathBuf,
}

pub async fn registered_guest() -> Option<Guest> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    let bus = bus::TestBus::start();
    let polkit = bus::MockPolkit::default();
    polkit.set_allow(true);
    let conn = polkit.serve(&bus).await;
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform");
    run(Command::new(sibling("snpguard-sim"))
        .args(["init", "--product", "genoa", "--dir"])
        .arg(&platform));
    let daemon = start_daemon(&bus, dir.path(), &platform.join("ark.pem"));

    // A staging directory as `convert` writes it.
    let s = dir.path().join("staging");
    std::fs::create_dir(&s).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut fw = vec![0u8; 2 * 4096];
    rng.fill_bytes(&mut fw);
    fw.extend_from_slice(&suffix);
    std::fs::write(s.join("firmware.fd"), fw).unwrap();
    let mut blob = vec![0u8; 40_000];
    rng.fill_bytes(&mut blob);
    std::fs::write(s.join("kernel"), &blob).unwrap();
    rng.fill_bytes(&mut blob);
    std::fs::write(s.join("initrd"), &blob).unwrap();
    std::fs::write(s.join("cmdline"), "console=ttyS0 root=/dev/mapper/root").unwrap();
    let public = std::fs::read(daemon.state.join("ingestion.pub")).unwrap();
    let public = seal::PublicKey::from_bytes(&public).unwrap();
    let mut vmk = vec![0u8; 64];
    rng.fill_bytes(&mut vmk);
    let sealed = seal::seal(&public, seal::INFO_INGEST, b"", &vmk).unwrap();
    std::fs::write(s.join("vmk.sealed"), sealed.to_bytes()).unwrap();
    let bundle = dir.path().join("guest.tar.gz");
    run(Command::new(sibling("snpguardctl"))
        .arg("--bus-address")
        .arg(&bus.address)
        .args([
            "register",
            "--name",
            "guest",
            "--vcpus",
            "2",
            "--vcpu-type",
            "EPYC-v4",
            "--allow-smt",
            // The simulated platform's root ([[test_roots]] above).
            "--allow-test-root",
            "--staging-dir",
        ])
        .arg(&s)
        .arg("--out-bundle")
        .arg(&bundle));
    Some(Guest {
        _bus_conn: conn,
        bus,
        dir,
        daemon,
        bundle,
        vmk,
        platform,
    })
}

impl Guest {
    /// `snpguard-sim launch` of the bundle, with `extra` overrides.
    pub fn launch_blob(&self, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.dir.path().join(name);
        run(Command::new(sibling("snpguard-sim"))
            .args(["launch", "--dir"])
            .arg(&self.platform)
            .arg("--bundle")
            .arg(&self.bundle)
            .args(extra)
            .arg("--out")
            .arg(&out));
        out
    }

    /// A 20 MiB LUKS2 file whose volume key is the registered VMK.
    pub fn volume(&self) -> PathBuf {
        std::fs::write(self.dir.path().join("vk"), &self.vmk).unwrap();
        self.data_volume("disk.img", UUID, &self.vmk)
    }

    /// A 20 MiB LUKS2 image `file` (header UUID `uuid`) whose volume key
    /// is `key`: a data volume when `key` is derived from the VMK.
    pub fn data_volume(&self, file: &str, uuid: &str, key: &[u8]) -> PathBuf {
        let img = self.dir.path().join(file);
        std::fs::File::create(&img)
            .unwrap()
            .set_len(20 << 20)
            .unwrap();
        let vk = self.dir.path().join(format!("{file}.vk"));
        std::fs::write(&vk, key).unwrap();
        std::fs::write(self.dir.path().join("pw"), "passphrase").unwrap();
        run(Command::new("cryptsetup")
            .args(["luksFormat", "--type", "luks2", "--batch-mode"])
            .arg("--volume-key-file")
            .arg(&vk)
            .arg("--key-file")
            .arg(self.dir.path().join("pw"))
            .args(["--key-size", "512", "--pbkdf", "pbkdf2"])
            .args(["--pbkdf-force-iterations", "1000", "--uuid", uuid])
            .args(["--cipher", "aes-xts-plain64", "--sector-size", "4096"])
            .arg(&img));
        img
    }

    /// `snpguardctl --bus-address … ARGS`, which must succeed.
    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new(sibling("snpguardctl"))
            .arg("--bus-address")
            .arg(&self.bus.address)
            .args(args))
    }

    pub fn config(&self, device: &Path, blob: &Path, name: &str) -> PathBuf {
        let config = AgentConfig {
            servers: vec![Server {
                url: format!("https://localhost:{}", self.daemon.port),
            }],
            ca: self.daemon.state.join("tls/cert.pem"),
            report_source: ReportSource::Simulated,
            luks: Luks {
                device: device.display().to_string(),
                uuid: UUID.into(),
                name: name.into(),
                cipher: "aes-xts-plain64".into(),
                key_bytes: 64,
                sector_size: 4096,
                offset: 16 << 20,
            },
            volumes: Vec::new(),
            retry: Retry {
                attempts: 3,
                initial_delay_ms: 10,
                max_delay_ms: 40,
                device_timeout_secs: 5,
            },
            simulator: Some(Simulator {
                launch: blob.to_owned(),
            }),
        };
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, config.to_toml("# agent test\n").unwrap()).unwrap();
        p
    }
}

pub fn agent(config: &Path) -> (Option<i32>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"))
        .args(["unlock", "--no-poweroff", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    // Shown with --nocapture; the console transcript a guest would print.
    eprintln!("{}", lines.join("\n"));
    (out.status.code(), lines)
}

pub fn failed_line(lines: &[String]) -> &str {
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("snpguard: FAILED: "))
        .collect();
    assert_eq!(failed.len(), 1, "exactly one FAILED line: {lines:#?}");
    failed[0]
}

/// Whether this host can create dm-crypt mappings on loop devices.
pub fn dm_usable() -> bool {
    rustix::process::getuid().is_root()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .is_ok()
        && Path::new("/dev/loop-control").exists()
}

/// A loop device, detached when dropped.
pub struct Loop(pub String);

/// Attaches `img` to a free loop device (root only), or `None`.
pub fn loop_device(img: &Path) -> Option<Loop> {
    if !rustix::process::getuid().is_root() || !Path::new("/dev/loop-control").exists() {
        return None;
    }
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(img)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
