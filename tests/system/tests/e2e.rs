//! End to end, the ways a converted guest must NOT get its key, and a
//! guest that writes its own next launch and boots it: a Debian
//! 13 image with a separate /boot, /var, /home and swap
//! (tests/guest/build-image.sh --marker split) converted by
//! `snpguardctl convert --simulated-platform` with the agent's simulator
//! build, registered with the real daemon (private bus, HTTPS on
//! 127.0.0.1, the simulated platform's root trusted) and booted under
//! QEMU/TCG from its bundle, each case on a qcow2 overlay of the one
//! conversion and a copy of the daemon state the VMK was re-sealed to.
//!
//! The conversion is snpguardctl's split-layout conversion test, which
//! checks it and publishes it (snpguard_systest::e2e_guest): `make
//! test-e2e` runs that test first, `make test` runs it with test-convert.
//! Its VMK is sealed to the conversion's throw-away ingestion key; this
//! test re-seals it to its daemon's ingestion key, as if convert had been
//! given that daemon's key.
//!
//! - an initrd changed after registration (one byte appended) boots to the
//!   agent, which is refused: `measurement-mismatch`;
//! - a disabled record: `record-disabled`;
//! - offline unlock, five boots of one guest: a record that does not
//!   allow it (the default) boots online and enrols nothing; allowed, the
//!   next online boot enrols the chip-derived key; with snpguardd stopped
//!   the guest unlocks offline and reaches multi-user; with a changed
//!   initrd the keyslot does not open and the server refuses it; turned
//!   off, the next online boot removes the keyslot;
//! - the guest writes its own next launch: its bundle embedded in the
//!   image's LAUNCH_ARTIFACTS partition, the guest reaches multi-user
//!   with / , /var and /home on the agent's mappings and no swap, prints
//!   the image's marker and, asked by a host flag, plays a kernel update:
//!   the kernel hook submits the new initrd (a pending launch 2) and
//!   starts `snpguard-agent install-launch`, which waits while this test
//!   approves launch 2 as soon as it is pending, then writes it into slot
//!   B. A power cycle from the partition (the launch script's
//!   `--from-partition`) boots launch 2, and it unlocks. (A pending
//!   launch refused at boot is the agent's unlock test and the
//!   attestor's; `records add-launch` is the daemon's tests'.)
//!
//! A refused guest prints `snpguard: FAILED: … attestation-rejected`,
//! powers off by itself, shows no shell and never reaches its root.
//!
//! Slow and root-only: `make test-e2e` (the conversion, about 7 minutes,
//! then a TCG boot per case).

use snpguard_testkit::bus;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use snpguard::seal;
use snpguard_systest::cmd::run_ok;
use snpguard_systest::e2e_guest::{self, E2eGuest};
use snpguard_systest::host::{self, Daemon, Polkit, FW_CFG_NAME};
use snpguard_systest::qemu::{Boot, Outcome};

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
    /// The daemon's state after its first start: the VMK is re-sealed to
    /// its ingestion key, so every case's daemon starts on a copy of it.
    state: PathBuf,
    /// The port baked into the guest's agent configuration.
    port: u16,
    image: PathBuf,
    /// The conversion's staging directory, the VMK re-sealed.
    staging: PathBuf,
    /// The token the image's marker line carries.
    token: String,
}

fn converted() -> &'static Converted {
    static C: OnceLock<Converted> = OnceLock::new();
    C.get_or_init(prepare)
}

fn prepare() -> Converted {
    let repo = snpguard_systest::repo_root();
    let dir = repo.join("build/systest/e2e");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("build/systest/e2e");
    let agent = std::env::var_os("SNPGUARD_AGENT")
        .map(PathBuf::from)
        .expect("SNPGUARD_AGENT: the agent's simulator build (make test-e2e sets it)");
    let guest: E2eGuest = e2e_guest::load(&agent).unwrap_or_else(|e| panic!("{e}"));

    let platform = dir.join("platform");
    host::sim_platform(&platform).expect("simulated platform");
    let first = dir.join("first");
    {
        let bus = bus::TestBus::start();
        let _daemon = Daemon::start(
            &bus.address,
            &first,
            &platform.join("ark.pem"),
            &guest.tls(),
            guest.port,
        )
        .expect("snpguardd");
    }
    let state = first.join("state");

    // The staging directory with the VMK re-sealed to this daemon.
    let staging = dir.join("staging");
    std::fs::create_dir(&staging).expect("staging");
    for f in ["kernel", "initrd", "cmdline", "firmware.fd"] {
        std::fs::copy(guest.staging().join(f), staging.join(f)).expect("staging file");
    }
    let secret: [u8; 32] = std::fs::read(guest.ingestion_key())
        .expect("the conversion's ingestion key")
        .try_into()
        .expect("a 32-byte ingestion key");
    let secret = seal::SecretKey::from_bytes(&secret);
    let sealed = std::fs::read(guest.staging().join("vmk.sealed")).expect("vmk.sealed");
    let sealed = seal::SealedBox::from_bytes(&sealed).expect("a sealed box");
    let vmk = seal::open(&secret, seal::INFO_INGEST, b"", &sealed).expect("the VMK opens");
    let daemon_key = std::fs::read(state.join("ingestion.pub")).expect("ingestion.pub");
    let daemon_key = seal::PublicKey::from_bytes(&daemon_key).expect("the daemon's key");
    let resealed = seal::seal(&daemon_key, seal::INFO_INGEST, b"", &vmk).expect("seal");
    std::fs::write(staging.join("vmk.sealed"), resealed.to_bytes()).expect("vmk.sealed");

    Converted {
        dir,
        tls: guest.tls(),
        platform,
        state,
        port: guest.port,
        image: guest.image(),
        staging,
        token: guest.token.clone(),
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

/// What the booted guest runs instead of the bundle's files, and what
/// else the host gives it.
#[derive(Default)]
struct Changed {
    initrd: Option<PathBuf>,
    cmdline: Option<PathBuf>,
    /// More `-fw_cfg` items (name, file).
    fw_cfg: Vec<(String, PathBuf)>,
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

    /// Starts the case's daemon again on its state (after
    /// `daemon.stop()`).
    fn restart_daemon(&mut self) {
        let c = converted();
        self.daemon = Daemon::start(
            &self.bus.address,
            self.dir.path(),
            &c.platform.join("ark.pem"),
            &c.tls,
            c.port,
        )
        .expect("snpguardd");
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

    /// The bundle's initrd with one byte appended: a NUL, which the
    /// kernel's initramfs reader skips as padding, so the changed initrd
    /// still boots to the agent (and measures differently).
    fn changed_initrd(&self, bundle: &Path) -> Changed {
        let files = self.path("original");
        if !files.exists() {
            std::fs::create_dir(&files).unwrap();
            run_ok(
                Command::new("tar")
                    .arg("-xzf")
                    .arg(bundle)
                    .arg("-C")
                    .arg(&files),
            );
        }
        let mut initrd = std::fs::read(files.join("initrd")).unwrap();
        initrd.push(0);
        let changed = self.path("initrd-changed");
        std::fs::write(&changed, initrd).unwrap();
        Changed {
            initrd: Some(changed),
            ..Changed::default()
        }
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
            fw_cfg: std::iter::once((FW_CFG_NAME.to_owned(), blob))
                .chain(changed.fw_cfg.iter().cloned())
                .collect(),
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
    let o = case.boot(&bundle, &case.changed_initrd(&bundle));
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

/// The fw_cfg item that has the marker image play a kernel update
/// (tests/guest/build-image.sh).
const TEST_NEXT_LAUNCH: &str = "opt/org.snpguard/test-next-launch";
/// The members of a bundle, in the order a bundle lists them.
const MEMBERS: [&str; 7] = snpguard_protocol::bundle::MEMBERS;

#[test]
#[ignore = "slow, root, libguestfs and QEMU: make test-e2e"]
fn a_renewed_guest_writes_its_approved_next_launch_and_boots_it_from_the_partition() {
    let mut case = Case::new("next-launch");
    let bundle = case.register();
    // Deployed as an operator deploys it: the bundle in the image's
    // LAUNCH_ARTIFACTS partition.
    case.ctl(&[
        "embed",
        "--image",
        case.disk.to_str().unwrap(),
        "--in-bundle",
        bundle.to_str().unwrap(),
    ]);

    // Boot 1, from the approved launch: the guest plays a kernel update
    // (a rewritten initrd and the kernel package's hook), which submits
    // launch 2 and starts install-launch; the operator approves launch 2
    // when it shows up as pending.
    let flag = case.path("test-next-launch");
    std::fs::write(&flag, "1").unwrap();
    let approver = {
        let bus = case.bus.address.clone();
        std::thread::spawn(move || approve_when_pending(&bus, "2"))
    };
    let o = case.boot(
        &bundle,
        &Changed {
            fw_cfg: vec![(TEST_NEXT_LAUNCH.to_owned(), flag)],
            ..Changed::default()
        },
    );
    let approved = approver.join().expect("the approver");
    assert!(approved, "launch 2 never showed up as pending:\n{}", o.log);
    case.assert_booted(&o);
    for want in [
        "SNPGUARD-TEST-HOOK snpguard-renew: kernel ",
        "snpguard-install-launch-2.service writes launch 2",
        // (Asked once or more: the approval may come before the first
        // question or after it.)
        "SNPGUARD-TEST-INSTALL snpguard: asking for launch 2 from ",
        "written and made active in slot B",
        "SNPGUARD-TEST-NEXT-LAUNCH snpguard-install-launch-2 done",
    ] {
        assert!(
            o.log.contains(want),
            "no {want:?} on the console:\n{}",
            o.log
        );
    }
    let launches = case.record()["launches"].clone();
    assert!(
        launches
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == "2" && l["state"] == "approved"),
        "{launches}"
    );

    // Boot 2, a power cycle from the partition: the launch script reads
    // the active slot, which is now launch 2, and the guest unlocks.
    let files = case.path("from-partition");
    let script = snpguard_systest::repo_root().join("scripts/launch-qemu-snp.sh");
    let out = run_ok(
        Command::new(script)
            .env(
                "SNPGUARD_CTL",
                snpguard_systest::workspace_binary("snpguardctl"),
            )
            // Its guestfish under TCG (KVM may be present but unusable).
            .env("LIBGUESTFS_BACKEND", "direct")
            .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
            .arg("--hda")
            .arg(&case.disk)
            .args(["--from-partition", "--dry-run", "--workdir"])
            .arg(&files)
            .args(["--cbitpos", "51", "--reduced-phys-bits", "1"]),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("read slot B of the LAUNCH_ARTIFACTS partition"),
        "{said}"
    );
    let next = case.path("from-partition.tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&next)
            .arg("-C")
            .arg(&files)
            .args(MEMBERS),
    );
    let o = case.boot(&next, &Changed::default());
    case.assert_booted(&o);
    // It was launch 2 that got the key: its measurement is the slot's.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files.join("launch-config.json")).unwrap()).unwrap();
    let two = launches
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "2")
        .unwrap();
    assert_eq!(config["measurement"], two["measurement"], "{config}");
    assert!(
        case.daemon.log().contains("attestation accepted"),
        "{}",
        case.daemon.log()
    );
}

#[test]
#[ignore = "slow, root, libguestfs and QEMU: make test-e2e"]
fn offline_unlock_is_enrolled_when_allowed_used_without_the_server_and_removed_when_turned_off() {
    let mut case = Case::new("offline");
    // Off by default.
    let bundle = case.register();
    assert_eq!(case.record()["offline_unlock"], false);
    let has = |o: &Outcome, s: &str| o.log.contains(s);

    // Boot 1, the record does not allow it: online, nothing enrolled.
    let o = case.boot(&bundle, &Changed::default());
    case.assert_booted(&o);
    assert!(has(&o, "snpguard: attested as record "), "{}", o.log);
    assert!(!has(&o, "enrolled keyslot"), "{}", o.log);

    // Boot 2, allowed: online, and the agent enrols this launch's
    // chip-derived key.
    case.ctl(&["records", "set-offline-unlock", RECORD, "on"]);
    assert_eq!(case.record()["offline_unlock"], true);
    let o = case.boot(&bundle, &Changed::default());
    case.assert_booted(&o);
    assert!(
        has(&o, "snpguard: offline unlock: enrolled keyslot "),
        "{}",
        o.log
    );

    // Boot 3, snpguardd stopped: no server answers, the keyslot opens
    // the root, the guest reaches multi-user.
    case.daemon.stop();
    let o = case.boot(&bundle, &Changed::default());
    case.assert_booted(&o);
    assert!(has(&o, "snpguard: no server answered"), "{}", o.log);
    assert!(
        has(&o, "the offline keyslot's key opens the root volume"),
        "{}",
        o.log
    );

    // Boot 4, the server back and a changed initrd: another measurement
    // derives another key, the keyslot does not open, and the server
    // refuses the launch.
    case.restart_daemon();
    let o = case.boot(&bundle, &case.changed_initrd(&bundle));
    assert!(has(&o, "does not open for this launch"), "{}", o.log);
    assert!(
        has(&o, "snpguard: FAILED: attestation failed: "),
        "{}",
        o.log
    );
    assert!(o.powered_off() && !has(&o, MARKER), "{}", o.log);
    assert!(o.shell_signs().is_empty(), "{}", o.log);
    // The guest sees a coarse refusal; the daemon names the rule.
    let daemon_log = case.daemon.log();
    assert!(daemon_log.contains("measurement-mismatch"), "{daemon_log}");

    // Boot 5, the record turned it off: the next online boot removes
    // the keyslot.
    case.ctl(&["records", "set-offline-unlock", RECORD, "off"]);
    let o = case.boot(&bundle, &Changed::default());
    case.assert_booted(&o);
    assert!(has(&o, "snpguard: attested as record "), "{}", o.log);
    assert!(
        has(
            &o,
            "snpguard: offline unlock: the record does not allow it; removed keyslot(s) "
        ),
        "{}",
        o.log
    );
}

/// Approves launch `launch` of the record as soon as it is pending (the
/// guest is running meanwhile); false if it never was within the boot's
/// deadline.
fn approve_when_pending(bus: &str, launch: &str) -> bool {
    let ctl = |args: &[&str]| {
        Command::new(snpguard_systest::workspace_binary("snpguardctl"))
            .arg("--bus-address")
            .arg(bus)
            .args(args)
            .output()
            .expect("snpguardctl")
    };
    let until = std::time::Instant::now() + BOOT_DEADLINE;
    while std::time::Instant::now() < until {
        let out = ctl(&["records", "show", RECORD, "--json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let pending = v["launches"].as_array().is_some_and(|ls| {
                ls.iter()
                    .any(|l| l["id"] == launch && l["state"] == "pending")
            });
            if pending {
                let out = ctl(&["records", "approve", RECORD, "--launch", launch]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return true;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    false
}
