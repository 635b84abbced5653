//! End to end, the ways a converted guest must NOT get its key: a Debian
//! 13 image with a separate /boot, /var, /home and swap
//! (tests/guest/build-image.sh --marker split) converted once by
//! `snpguardctl convert --simulated-platform` with the agent's simulator
//! build, registered with the real daemon (private bus, HTTPS on
//! 127.0.0.1, the simulated platform's root trusted) and booted under
//! QEMU/TCG from its bundle, each case on a qcow2 overlay of the one
//! conversion and a copy of the daemon state the VMK was sealed to.
//!
//! - an initrd changed after registration (one byte appended) boots to the
//!   agent, which is refused: `measurement-mismatch`;
//! - a disabled record: `record-disabled`;
//! - a second launch (another command line) added as pending with
//!   `snpguardctl records add-launch` boots but is refused
//!   (`launch-pending`) until `snpguardctl records approve`; then the guest
//!   reaches multi-user with / , /var and /home on the agent's mappings
//!   and no swap, and prints the image's marker.
//!
//! A refused guest prints `snpguard: FAILED: … attestation-rejected`,
//! powers off by itself, shows no shell and never reaches its root.
//!
//! Slow and root-only: `make test-e2e` (a conversion, about 7 minutes,
//! then a TCG boot per case).

#[path = "../../../snpguardd/tests/common/mod.rs"]
#[allow(unused_imports)] // dead_code: the module allows it itself
mod bus;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use snpguard_systest::cmd::run_ok;
use snpguard_systest::host::{self, Daemon, Polkit, FW_CFG_NAME};
use snpguard_systest::qemu::{Boot, Outcome};
use snpguard_systest::rootfs::{Flavour, Rootfs};

/// A refused boot takes about a minute under TCG, one reaching
/// multi-user a few; room for a loaded machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(900);
/// What the image's systemd unit prints once multi-user is reached.
const MARKER: &str = "SNPGUARD-DEMO-BOOTED";
/// The record every case registers.
const RECORD: &str = "guest";

/// The one conversion every case copies, and what it was sealed to.
struct Converted {
    dir: PathBuf,
    tls: PathBuf,
    platform: PathBuf,
    /// The daemon's state after its first start: its ingestion key sealed
    /// the VMK, so every case's daemon starts on a copy of it.
    state: PathBuf,
    /// The port baked into the guest's agent configuration.
    port: u16,
    image: PathBuf,
    staging: PathBuf,
    /// The token the image's marker line carries.
    token: String,
}

fn converted() -> &'static Converted {
    static C: OnceLock<Converted> = OnceLock::new();
    C.get_or_init(convert)
}

fn convert() -> Converted {
    let repo = snpguard_systest::repo_root();
    let dir = repo.join("build/systest/e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("build/systest/e2e");
    let agent = std::env::var_os("SNPGUARD_AGENT")
        .map(PathBuf::from)
        .expect("SNPGUARD_AGENT: the agent's simulator build (make test-e2e sets it)");

    let rootfs =
        Rootfs::get(Flavour::InitramfsTools, &dir.join("rootfs")).expect("guest root file system");
    let out = run_ok(
        Command::new(repo.join("tests/guest/build-image.sh"))
            .args(["--marker", "split"])
            .arg(&rootfs.tar)
            .env("SNPGUARD_TEST_IMAGES", repo.join("build/guest")),
    );
    let image = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("build-image.sh prints the image"),
    );
    let token = std::fs::read_to_string(image.with_extension("token"))
        .expect("the image's token")
        .trim()
        .to_owned();
    assert!(!token.is_empty());

    let tls = dir.join("tls");
    host::generate_tls(&tls).expect("TLS certificates");
    let platform = dir.join("platform");
    host::sim_platform(&platform).expect("simulated platform");
    let port = host::free_port().expect("free port");
    let first = dir.join("first");
    {
        let bus = bus::TestBus::start();
        let _daemon = Daemon::start(&bus.address, &first, &platform.join("ark.pem"), &tls, port)
            .expect("snpguardd");
    }
    let state = first.join("state");

    let suffix = snpguard::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
        .expect("the AMD test data (SNPGUARD_TESTDATA; the Makefile sets it)");
    let mut fw: Vec<u8> = (0..8192).map(|_| rand::random::<u8>()).collect();
    fw.extend_from_slice(&suffix);
    let firmware = dir.join("OVMF.amdsev.fd");
    std::fs::write(&firmware, fw).expect("firmware");
    let out_image = dir.join("guest.qcow2");
    let staging = dir.join("staging");
    let started = Instant::now();
    let out = Command::new(snpguard_systest::workspace_binary("snpguardctl"))
        .arg("convert")
        .arg("--in-image")
        .arg(&image)
        .arg("--out-image")
        .arg(&out_image)
        .arg("--out-staging")
        .arg(&staging)
        .arg("--firmware")
        .arg(&firmware)
        .arg("--server")
        .arg(format!("https://10.0.2.2:{port}"))
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--ingestion-key")
        .arg(state.join("ingestion.pub"))
        .arg("--agent")
        .arg(&agent)
        .arg("--modules-dir")
        .arg(&repo)
        .arg("--recovery-key-file")
        .arg(dir.join("recovery.key"))
        .args(["--simulated-platform", "--yes", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("snpguardctl convert");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "convert failed: {stderr}");
    assert!(
        stderr.contains("WARNING: --simulated-platform"),
        "convert warns about the simulated platform: {stderr}"
    );
    eprintln!("e2e: convert took {:.0?}", started.elapsed());
    Converted {
        dir,
        tls,
        platform,
        state,
        port,
        image: out_image,
        staging,
        token,
    }
}

/// One case: a daemon on a copy of the state, a bus with the test
/// polkit, and an overlay of the converted image.
/// Fields drop in order: the daemon, polkit and bus stop before the
/// directory goes.
struct Case {
    daemon: Daemon,
    _polkit: Polkit,
    bus: bus::TestBus,
    disk: PathBuf,
    boots: usize,
    dir: tempfile::TempDir,
}

/// What the booted guest runs instead of the bundle's files.
#[derive(Default)]
struct Changed {
    initrd: Option<PathBuf>,
    cmdline: Option<PathBuf>,
}

impl Case {
    fn new(name: &str) -> Case {
        let c = converted();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&c.dir)
            .expect("case dir");
        let d = dir.path();
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(&c.state)
                .arg(d.join("state")),
        );
        let bus = bus::TestBus::start();
        let polkit = Polkit::start(&bus.address, &d.join("polkit.log")).expect("test polkit");
        let daemon = Daemon::start(&bus.address, d, &c.platform.join("ark.pem"), &c.tls, c.port)
            .expect("snpguardd");
        let disk = d.join("disk.qcow2");
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&c.image)
                .arg(&disk),
        );
        Case {
            dir,
            daemon,
            _polkit: polkit,
            bus,
            disk,
            boots: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `snpguardctl --bus-address … ARGS`, which must succeed.
    fn ctl(&self, args: &[&str]) -> Output {
        run_ok(
            Command::new(snpguard_systest::workspace_binary("snpguardctl"))
                .arg("--bus-address")
                .arg(&self.bus.address)
                .args(args),
        )
    }

    /// Registers the conversion's staging directory; returns the bundle.
    fn register(&self) -> PathBuf {
        let bundle = self.path("launch-artifacts.tar.gz");
        let staging = converted().staging.to_str().expect("UTF-8 path").to_owned();
        self.ctl(&[
            "register",
            "--name",
            RECORD,
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--allow-smt",
            // The simulated platform's root ([[test_roots]] of the host).
            "--allow-test-root",
            "--staging-dir",
            &staging,
            "--out-bundle",
            bundle.to_str().expect("UTF-8 path"),
        ]);
        bundle
    }

    /// The record as `records show --json` prints it.
    fn record(&self) -> serde_json::Value {
        let out = self.ctl(&["records", "show", RECORD, "--json"]);
        serde_json::from_slice(&out.stdout).expect("records show --json")
    }

    /// Boots the overlay from `bundle`, with `changed` files booted
    /// instead of the bundle's (the simulated firmware measures what is
    /// booted).
    fn boot(&mut self, bundle: &Path, changed: &Changed) -> Outcome {
        self.boots += 1;
        let files = self.path(&format!("boot-{}", self.boots));
        std::fs::create_dir(&files).expect("boot dir");
        run_ok(
            Command::new("tar")
                .arg("-xzf")
                .arg(bundle)
                .arg("-C")
                .arg(&files),
        );
        let blob = files.join("sim-launch.json");
        let mut launch = Command::new(snpguard_systest::workspace_binary("snpguard-sim"));
        launch
            .args(["launch", "--dir"])
            .arg(&converted().platform)
            .arg("--bundle")
            .arg(bundle)
            .arg("--out")
            .arg(&blob);
        if let Some(i) = &changed.initrd {
            launch.arg("--initrd").arg(i);
        }
        if let Some(c) = &changed.cmdline {
            launch.arg("--cmdline-file").arg(c);
        }
        run_ok(&mut launch);
        let initrd = changed
            .initrd
            .clone()
            .unwrap_or_else(|| files.join("initrd"));
        let cmdline_file = changed
            .cmdline
            .clone()
            .unwrap_or_else(|| files.join("cmdline"));
        let append = std::fs::read_to_string(&cmdline_file).expect("cmdline");
        let outcome = Boot {
            kernel: &files.join("kernel"),
            initrd: &initrd,
            append: &append,
            disk: Some(&self.disk),
            fw_cfg: vec![(FW_CFG_NAME.to_owned(), blob)],
            deadline: BOOT_DEADLINE,
        }
        .run(&files.join("serial.log"))
        .expect("QEMU");
        eprintln!(
            "e2e: boot {} ended {:?} after {:.0?}",
            self.boots, outcome.exited, outcome.elapsed
        );
        outcome
    }

    /// The guest was refused with the daemon's `code`: the agent names the
    /// refusal, powers off by itself, shows no shell, never reaches the
    /// root; the daemon logs the code and counts the failure.
    fn assert_refused(&self, o: &Outcome, code: &str) {
        let log = &o.log;
        let daemon_log = self.daemon.log();
        let failed: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("snpguard: FAILED:"))
            .collect();
        assert!(
            failed.iter().any(|l| l.contains("attestation-rejected")),
            "{code}: no FAILED line naming the refusal; serial log:\n{log}\ndaemon log:\n{daemon_log}"
        );
        assert!(
            o.powered_off(),
            "{code}: the guest did not power off by itself; serial log:\n{log}"
        );
        assert!(
            !log.contains(MARKER),
            "{code}: the root was reached without a key:\n{log}"
        );
        let signs = o.shell_signs();
        assert!(
            signs.is_empty(),
            "{code}: a shell showed up ({signs:?}):\n{log}"
        );
        assert!(
            daemon_log.contains(code),
            "{code}: the daemon's log does not name the refusal:\n{daemon_log}"
        );
        let record = self.record();
        assert_eq!(record["attestations_ok"], 0, "{record}");
        assert!(
            record["attestations_failed"].as_u64() >= Some(1),
            "the refusal is counted: {record}"
        );
    }

    /// The guest got its key, reached multi-user and printed the image's
    /// token.
    fn assert_booted(&self, o: &Outcome) {
        let want = format!("{MARKER} {}", converted().token);
        assert!(
            o.log.lines().any(|l| l.trim_end().ends_with(&want)),
            "no {want:?} on the console; serial log:\n{}\ndaemon log:\n{}",
            o.log,
            self.daemon.log()
        );
        assert!(!o.log.contains("snpguard: FAILED:"), "{}", o.log);
        // The data volumes the agent opened are what systemd mounted; the
        // swap partition is gone.
        let mounts = "SNPGUARD-DEMO-MOUNTS /=/dev/mapper/snpguard_root \
                      /var=/dev/mapper/snpguard_var /home=/dev/mapper/snpguard_home swaps=0";
        assert!(
            o.log.lines().any(|l| l.trim_end().ends_with(mounts)),
            "no {mounts:?} on the console; serial log:\n{}",
            o.log
        );
        assert!(o.powered_off(), "the marker unit powers off:\n{}", o.log);
    }
}

#[test]
#[ignore = "slow, root, libguestfs and QEMU: make test-e2e"]
fn an_initrd_changed_after_registration_is_refused() {
    let mut case = Case::new("changed-initrd");
    let bundle = case.register();
    // One byte appended: a NUL, which the kernel's initramfs reader skips
    // as padding, so the changed initrd still boots to the agent.
    let files = case.path("original");
    std::fs::create_dir(&files).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&bundle)
            .arg("-C")
            .arg(&files),
    );
    let mut initrd = std::fs::read(files.join("initrd")).unwrap();
    initrd.push(0);
    let changed = case.path("initrd-changed");
    std::fs::write(&changed, initrd).unwrap();
    let o = case.boot(
        &bundle,
        &Changed {
            initrd: Some(changed),
            cmdline: None,
        },
    );
    case.assert_refused(&o, "measurement-mismatch");
}

#[test]
#[ignore = "slow, root, libguestfs and QEMU: make test-e2e"]
fn a_disabled_record_is_refused() {
    let mut case = Case::new("disabled");
    let bundle = case.register();
    case.ctl(&["records", "disable", RECORD]);
    assert_eq!(case.record()["enabled"], false);
    let o = case.boot(&bundle, &Changed::default());
    case.assert_refused(&o, "record-disabled");
}

#[test]
#[ignore = "slow, root, libguestfs and QEMU: make test-e2e"]
fn a_pending_launch_boots_only_after_approval() {
    let mut case = Case::new("renewal");
    case.register();
    // The renewal: the same kernel and initrd with a new command line,
    // added as a pending launch.
    let staging = case.path("staging-2");
    std::fs::create_dir(&staging).unwrap();
    let c = converted();
    for f in ["kernel", "initrd"] {
        std::fs::copy(c.staging.join(f), staging.join(f)).unwrap();
    }
    let cmdline = std::fs::read_to_string(c.staging.join("cmdline")).unwrap();
    let renewed = format!("{} snpguard.renewal=2", cmdline.trim_end());
    std::fs::write(staging.join("cmdline"), &renewed).unwrap();
    case.ctl(&[
        "records",
        "add-launch",
        RECORD,
        "--staging",
        staging.to_str().unwrap(),
    ]);
    let launches = case.record()["launches"].clone();
    assert!(
        launches
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["state"] == "pending" && l["cmdline"] == renewed.as_str()),
        "{launches}"
    );

    // Booted before approval (with the bundle of the approved launch, the
    // renewed command line measured): no key.
    let old_bundle = case.path("launch-artifacts.tar.gz");
    let o = case.boot(
        &old_bundle,
        &Changed {
            initrd: None,
            cmdline: Some(staging.join("cmdline")),
        },
    );
    case.assert_refused(&o, "launch-pending");

    // Approved: the new bundle boots to multi-user.
    let bundle = case.path("launch-artifacts-2.tar.gz");
    case.ctl(&[
        "records",
        "approve",
        RECORD,
        "--launch",
        "2",
        "--output",
        bundle.to_str().unwrap(),
    ]);
    let o = case.boot(&bundle, &Changed::default());
    case.assert_booted(&o);
    assert_eq!(
        std::fs::read_to_string(case.path("boot-2/cmdline")).unwrap(),
        renewed,
        "the approved bundle carries the renewed command line"
    );
}
