//! The initrd boot test: Debian 13's kernel boots, under QEMU/TCG, an
//! initrd built by initramfs-tools and, separately, by dracut with the
//! agent (simulator build), against a virtio disk holding a LUKS2 volume.
//! snpguardd runs on the host with the simulated platform's root trusted,
//! HTTPS on 127.0.0.1 (the guest reaches it at 10.0.2.2 through QEMU user
//! networking), and the launch registered with `snpguardctl register`.
//!
//! - the registered launch prints the marker from the unlocked root;
//! - a launch whose measurement differs (the simulated firmware measures
//!   another command line) is refused: the guest prints the agent's
//!   `snpguard: FAILED:` line naming the refusal and powers off by itself,
//!   without a shell, and the daemon names the measurement.
//!
//! Slow and root-only: `make system-test` (about 1 to 3 minutes a boot).

use snpguard_testkit::bus;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rand::RngCore;
use snpguard::seal;
use snpguard_protocol::agent_config::{AgentConfig, Luks, ReportSource, Retry, Server, Simulator};
use snpguard_systest::chroot::Chroot;
use snpguard_systest::cmd::run_ok;
use snpguard_systest::disk::{LuksDisk, MARKER_PREFIX};
use snpguard_systest::host::{self, Daemon, Polkit, FW_CFG_NAME, SIM_LAUNCH};
use snpguard_systest::initrd::{self, GuestFiles, CA_PATH};
use snpguard_systest::qemu::Boot;
use snpguard_systest::rootfs::{Flavour, Rootfs};

/// A TCG boot on a loaded 2-core machine, with room.
const BOOT_DEADLINE: Duration = Duration::from_secs(600);
const MAPPING: &str = "snpguard_root";

/// The command line `convert` writes for `flavour` (docs/initrd.md).
fn cmdline(flavour: Flavour) -> String {
    let common = format!("console=ttyS0 root=/dev/mapper/{MAPPING} panic=-1");
    match flavour {
        Flavour::InitramfsTools => common,
        Flavour::Dracut => {
            format!("{common} rd.neednet=1 ip=dhcp rd.shell=0 rd.emergency=poweroff")
        }
    }
}

fn scratch() -> tempfile::TempDir {
    let base = snpguard_systest::repo_root().join("build/systest");
    std::fs::create_dir_all(&base).expect("build/systest");
    tempfile::Builder::new()
        .prefix("boot-")
        .tempdir_in(base)
        .expect("scratch dir")
}

/// How the guest is launched relative to what was registered.
#[derive(Clone, Copy, PartialEq)]
enum Launch {
    /// Exactly the registered kernel, initrd and command line.
    Registered,
    /// The simulated firmware measures another command line.
    WrongMeasurement,
}

/// What a boot printed, and what the daemon logged.
struct Run {
    outcome: snpguard_systest::qemu::Outcome,
    daemon_log: String,
    marker: String,
}

fn boot(flavour: Flavour, launch: Launch) -> Run {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
        .expect("the AMD test data (SNPGUARD_TESTDATA; the Makefile sets it)");
    let dir = scratch();
    let d = dir.path();
    let sim = snpguard_systest::workspace_binary("snpguard-sim");
    let ctl = snpguard_systest::workspace_binary("snpguardctl");
    let agent = std::env::var_os("SNPGUARD_AGENT")
        .map(PathBuf::from)
        .expect("SNPGUARD_AGENT: the agent's simulator build (make system-test sets it)");

    // The host side: bus + polkit, TLS for 10.0.2.2, platform, daemon.
    let bus = bus::TestBus::start();
    let _polkit = Polkit::start(&bus.address, &d.join("polkit.log")).expect("test polkit");
    let tls = d.join("tls");
    host::generate_tls(&tls).expect("TLS certificates");
    let platform = d.join("platform");
    host::sim_platform(&platform).expect("simulated platform");
    let port = host::free_port().expect("free port");
    let daemon =
        Daemon::start(&bus.address, d, &platform.join("ark.pem"), &tls, port).expect("snpguardd");

    // The VMK, the disk it encrypts, and the agent configuration pinning it.
    let mut vmk = [0u8; 64];
    rand::thread_rng().fill_bytes(&mut vmk);
    let marker = hex::encode(rand::random::<[u8; 8]>());
    let disk = LuksDisk::create(d, &vmk, &marker).expect("LUKS2 disk");
    let config = AgentConfig {
        servers: vec![Server {
            url: format!("https://10.0.2.2:{}", daemon.port),
        }],
        ca: CA_PATH.into(),
        report_source: ReportSource::Simulated,
        luks: Luks {
            device: format!("UUID={}", disk.uuid),
            uuid: disk.uuid.clone(),
            name: MAPPING.into(),
            cipher: disk.cipher.clone(),
            key_bytes: disk.key_bytes,
            sector_size: disk.sector_size,
            offset: disk.offset,
        },
        volumes: Vec::new(),
        retry: Retry {
            attempts: 3,
            initial_delay_ms: 1000,
            max_delay_ms: 4000,
            device_timeout_secs: 120,
        },
        simulator: Some(Simulator {
            launch: SIM_LAUNCH.into(),
        }),
    }
    .to_toml("# system test\n")
    .expect("agent configuration");

    // The initrd, built by the guest's own tool.
    let rootfs = Rootfs::get(flavour, &d.join("rootfs")).expect("guest root file system");
    let chroot = Chroot::extract(&rootfs.tar, d).expect("chroot");
    let ca = std::fs::read(tls.join("ca.pem")).expect("ca.pem");
    initrd::install(
        &chroot,
        flavour,
        &GuestFiles {
            agent: Some(&agent),
            config: &config,
            ca: &ca,
        },
    )
    .expect("install into the guest");
    let built = initrd::build(&chroot, flavour, &rootfs.kernel_release).expect("initrd");
    let initrd_file = d.join("initrd.img");
    std::fs::copy(&built, &initrd_file).expect("initrd copy");
    drop(chroot);

    // Registration: what `convert` would stage, the VMK sealed to the
    // daemon's ingestion key.
    let stage = d.join("staging");
    std::fs::create_dir(&stage).expect("staging");
    let mut fw = vec![0u8; 2 * 4096];
    rand::thread_rng().fill_bytes(&mut fw);
    fw.extend_from_slice(&suffix);
    std::fs::write(stage.join("firmware.fd"), fw).expect("firmware");
    std::fs::copy(&rootfs.vmlinuz, stage.join("kernel")).expect("kernel");
    std::fs::copy(&initrd_file, stage.join("initrd")).expect("initrd");
    let append = cmdline(flavour);
    std::fs::write(stage.join("cmdline"), &append).expect("cmdline");
    let public = std::fs::read(daemon.state.join("ingestion.pub")).expect("ingestion.pub");
    let public = seal::PublicKey::from_bytes(&public).expect("ingestion key");
    let sealed = seal::seal(&public, seal::INFO_INGEST, b"", &vmk).expect("seal");
    std::fs::write(stage.join("vmk.sealed"), sealed.to_bytes()).expect("vmk.sealed");
    let bundle = d.join("launch-artifacts.tar.gz");
    run_ok(
        Command::new(&ctl)
            .arg("--bus-address")
            .arg(&bus.address)
            .args([
                "register",
                "--name",
                "guest",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-v4",
            ])
            .arg("--allow-smt")
            // The simulated platform's root ([[test_roots]] of the host).
            .arg("--allow-test-root")
            .arg("--staging-dir")
            .arg(&stage)
            .arg("--out-bundle")
            .arg(&bundle),
    );

    // The simulated firmware's view of this launch.
    let blob = d.join("sim-launch.json");
    let mut launch_cmd = Command::new(&sim);
    launch_cmd
        .args(["launch", "--dir"])
        .arg(&platform)
        .arg("--bundle")
        .arg(&bundle)
        .arg("--out")
        .arg(&blob);
    if launch == Launch::WrongMeasurement {
        let other = d.join("other-cmdline");
        std::fs::write(&other, format!("{append} init=/bin/sh")).expect("other cmdline");
        launch_cmd.arg("--cmdline-file").arg(&other);
    }
    run_ok(&mut launch_cmd);

    let outcome = Boot {
        kernel: &rootfs.vmlinuz,
        initrd: &initrd_file,
        append: &append,
        disk: Some(&disk.image),
        fw_cfg: vec![(FW_CFG_NAME.to_owned(), blob)],
        deadline: BOOT_DEADLINE,
    }
    .run(&d.join("serial.log"))
    .expect("QEMU");
    eprintln!(
        "{} {} boot: {:?}, {:?}",
        flavour.name(),
        if launch == Launch::Registered {
            "registered"
        } else {
            "wrong-measurement"
        },
        outcome.exited,
        outcome.elapsed
    );
    let daemon_log = daemon.log();
    drop(daemon);
    Run {
        outcome,
        daemon_log,
        marker,
    }
}

fn unlocks(flavour: Flavour) -> Run {
    let r = boot(flavour, Launch::Registered);
    let log = &r.outcome.log;
    assert!(
        log.contains(&format!("{MARKER_PREFIX}{}", r.marker)),
        "{}: no marker from the unlocked root; serial log:\n{log}\ndaemon log:\n{}",
        flavour.name(),
        r.daemon_log
    );
    assert!(!log.contains("snpguard: FAILED:"), "{log}");
    assert!(
        r.outcome.powered_off(),
        "the root's init powers off:\n{log}"
    );
    r
}

fn refuses_wrong_measurement(flavour: Flavour) {
    let r = boot(flavour, Launch::WrongMeasurement);
    let log = &r.outcome.log;
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snpguard: FAILED:"))
        .collect();
    assert!(
        failed.iter().any(|l| l.contains("attestation-rejected")),
        "{}: no FAILED line naming the refusal; serial log:\n{log}",
        flavour.name()
    );
    assert!(
        r.outcome.powered_off(),
        "{}: the guest did not power off by itself; serial log:\n{log}",
        flavour.name()
    );
    assert!(
        !log.contains(MARKER_PREFIX),
        "the root was reached without a key:\n{log}"
    );
    let signs = r.outcome.shell_signs();
    assert!(signs.is_empty(), "a shell showed up ({signs:?}):\n{log}");
    assert!(
        r.daemon_log.to_lowercase().contains("measurement"),
        "the daemon's log names the measurement:\n{}",
        r.daemon_log
    );
}

#[test]
#[ignore = "slow, root, QEMU: make system-test"]
fn initramfs_tools_guest_unlocks_its_root() {
    unlocks(Flavour::InitramfsTools);
}

#[test]
#[ignore = "slow, root, QEMU: make system-test"]
fn initramfs_tools_guest_with_a_wrong_measurement_powers_off() {
    refuses_wrong_measurement(Flavour::InitramfsTools);
}

#[test]
#[ignore = "slow, root, QEMU: make system-test"]
fn dracut_guest_unlocks_its_root() {
    unlocks(Flavour::Dracut);
}

#[test]
#[ignore = "slow, root, QEMU: make system-test"]
fn dracut_guest_with_a_wrong_measurement_powers_off() {
    refuses_wrong_measurement(Flavour::Dracut);
}
