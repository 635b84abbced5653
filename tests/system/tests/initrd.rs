//! The initrd modules in the guest's own initrd tools: each flavour
//! (initramfs-tools, dracut) builds an initrd with the agent, its
//! configuration, the pinned CA and the kernel modules, and refuses to
//! build one that could not unlock the root. Plus the LUKS2 disk fixture
//! the boot tests use. Slow and root-only: `make system-test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use snpguard_protocol::agent_config::{AgentConfig, Luks, ReportSource, Retry, Server};
use snpguard_systest::chroot::Chroot;
use snpguard_systest::disk::LuksDisk;
use snpguard_systest::initrd::{self, GuestFiles, AGENT_PATH, CA_PATH, CONFIG_PATH};
use snpguard_systest::rootfs::{Flavour, Rootfs};
use snpguard_systest::HarnessError;

/// Scratch space for one test (large: guest trees), under build/.
fn scratch() -> tempfile::TempDir {
    let base = snpguard_systest::repo_root().join("build/systest");
    std::fs::create_dir_all(&base).expect("build/systest");
    tempfile::Builder::new()
        .prefix("initrd-")
        .tempdir_in(base)
        .expect("scratch dir")
}

/// The guest of `flavour` and a fresh chroot of it.
fn guest(flavour: Flavour, dir: &Path) -> (Rootfs, Chroot) {
    let rootfs = Rootfs::get(flavour, &dir.join("rootfs")).expect("guest root file system");
    let chroot = Chroot::extract(&rootfs.tar, dir).expect("chroot");
    (rootfs, chroot)
}

/// An agent configuration as `convert` writes it (values need only be
/// well formed for these tests).
fn config() -> String {
    AgentConfig {
        servers: vec![Server {
            url: "https://10.0.2.2:8443".into(),
        }],
        ca: CA_PATH.into(),
        report_source: ReportSource::Auto,
        luks: Luks {
            device: "/dev/vda".into(),
            uuid: "0b4b2a53-3c1e-4d7f-9a6e-2f8d1c5b7e90".into(),
            name: "snpguard_root".into(),
            cipher: "aes-xts-plain64".into(),
            key_bytes: 64,
            sector_size: 512,
            offset: 16 << 20,
        },
        volumes: Vec::new(),
        retry: Retry::default(),
        simulator: None,
    }
    .to_toml("# system test\n")
    .expect("agent configuration")
}

/// A throw-away self-signed CA certificate (PEM), made with openssl.
fn test_ca() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=snpguard systest CA",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(dir.path().join("ca.key"))
        .arg("-out")
        .arg(dir.path().join("ca.pem"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.path().join("ca.pem")).expect("ca.pem")
}

/// The static agent: `$SNPGUARD_AGENT`, else the workspace's build.
fn agent() -> PathBuf {
    std::env::var_os("SNPGUARD_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| snpguard_systest::workspace_binary("snpguard-agent"))
}

/// Builds the initrd in `chroot` after installing `files`, which must
/// fail; returns what the build printed.
fn build_fails(chroot: &Chroot, rootfs: &Rootfs, flavour: Flavour, files: &GuestFiles) -> String {
    initrd::install(chroot, flavour, files).expect("install");
    match initrd::build(chroot, flavour, &rootfs.kernel_release) {
        Ok(p) => panic!(
            "{} built {} though it cannot unlock",
            flavour.name(),
            p.display()
        ),
        Err(HarnessError::Command { output, .. }) => output,
        Err(e) => panic!("harness failure: {e}"),
    }
}

/// The three initrd checks of one flavour on one extracted guest (each
/// extraction costs tens of seconds): the build refuses a guest without
/// the agent, then one whose configuration the agent rejects, and then
/// builds an initrd that holds everything the unlock needs. The order
/// matters: a fresh guest has no agent, and the last build succeeding on
/// the same tree shows the refusals left nothing behind that breaks it.
fn initrd_refuses_then_holds_everything(flavour: Flavour) {
    let dir = scratch();
    let (rootfs, chroot) = guest(flavour, dir.path());
    let ca = test_ca();
    let agent = agent();
    let config = config();

    // 1. No agent: the hook / dracut module fail and name it.
    let output = build_fails(
        &chroot,
        &rootfs,
        flavour,
        &GuestFiles {
            agent: None,
            config: &config,
            ca: &ca,
        },
    );
    assert!(
        output.contains(&format!("snpguard: {AGENT_PATH} is missing")),
        "the failure names the missing agent:\n{output}"
    );

    // 2. No servers: the agent's check-config refuses the configuration.
    let bad = config.replace("servers = [\"https://10.0.2.2:8443\"]", "servers = []");
    assert_ne!(bad, config, "the configuration lost its servers");
    let output = build_fails(
        &chroot,
        &rootfs,
        flavour,
        &GuestFiles {
            agent: Some(&agent),
            config: &bad,
            ca: &ca,
        },
    );
    assert!(
        output.contains(&format!("check-config rejected {CONFIG_PATH}")),
        "the failure names the rejected configuration:\n{output}"
    );
    assert!(
        output.contains("servers"),
        "the agent's reason is shown:\n{output}"
    );

    // 3. Everything in place: the initrd holds it.
    initrd::install(
        &chroot,
        flavour,
        &GuestFiles {
            agent: Some(&agent),
            config: &config,
            ca: &ca,
        },
    )
    .expect("install");
    initrd::build(&chroot, flavour, &rootfs.kernel_release).expect("initrd build");
    let files = initrd::list(&chroot, flavour).expect("list initrd");
    for p in [AGENT_PATH, CONFIG_PATH, CA_PATH] {
        assert!(
            files.contains(p.trim_start_matches('/')),
            "{} initrd lacks {p}",
            flavour.name()
        );
    }
    // The modules the unlock needs, as the Debian 13 kernel ships them.
    for m in [
        "dm-mod",
        "dm-crypt",
        "xts",
        "sev-guest",
        "tsm",
        "virtio_net",
        "qemu_fw_cfg",
    ] {
        assert!(
            files.iter().any(|f| {
                let name = f.rsplit('/').next().unwrap_or_default();
                name.starts_with(&format!("{m}.ko"))
            }),
            "{} initrd lacks the module {m}",
            flavour.name()
        );
    }
    let hook = match flavour {
        Flavour::InitramfsTools => "scripts/local-top/snpguard",
        Flavour::Dracut => "var/lib/dracut/hooks/initqueue/settled/50-snpguard-unlock.sh",
    };
    assert!(
        files.contains(hook),
        "{} initrd lacks {hook}",
        flavour.name()
    );
    // dracut's systemd waits for the mapping's device unit, which only the
    // module's udev rule makes ready (the guest has no dmsetup rules).
    if flavour == Flavour::Dracut {
        let rule = "etc/udev/rules.d/55-snpguard-dm.rules";
        assert!(files.contains(rule), "dracut initrd lacks {rule}");
    }
    // The bytes in the initrd are the agent's and the config's.
    assert_eq!(
        std::fs::read(chroot.path(AGENT_PATH)).expect("agent in guest"),
        std::fs::read(&agent).expect("agent"),
    );
    assert_eq!(
        std::fs::read_to_string(chroot.path(CONFIG_PATH)).expect("config in guest"),
        config,
    );
}

#[test]
#[ignore = "slow, root: make system-test"]
fn initramfs_tools_initrd_refuses_what_cannot_unlock_and_holds_everything() {
    initrd_refuses_then_holds_everything(Flavour::InitramfsTools);
}

#[test]
#[ignore = "slow, root: make system-test"]
fn dracut_initrd_refuses_what_cannot_unlock_and_holds_everything() {
    initrd_refuses_then_holds_everything(Flavour::Dracut);
}

/// The disk fixture: its header takes the volume key (and no other), and
/// pins the parameters the agent's configuration will name.
#[test]
#[ignore = "root: make system-test"]
fn luks_disk_header_takes_its_volume_key_only() {
    let dir = scratch();
    let mut key = [0u8; 64];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
    let marker = hex::encode(rand::random::<[u8; 8]>());
    let disk = LuksDisk::create(dir.path(), &key, &marker).expect("disk");
    assert_eq!(disk.cipher, "aes-xts-plain64");
    assert_eq!(disk.key_bytes, 64);
    assert_eq!(disk.sector_size, 4096);
    assert_eq!(disk.offset, 16 << 20, "LUKS2's default 16 MiB header");
    assert_eq!(disk.uuid.len(), 36, "uuid {}", disk.uuid);

    let test_key = |k: &[u8]| {
        let kf = dir.path().join("test.key");
        std::fs::write(&kf, k).expect("key file");
        Command::new("cryptsetup")
            .args([
                "open",
                "--test-passphrase",
                "--type",
                "luks2",
                "--volume-key-file",
            ])
            .arg(&kf)
            .arg(&disk.image)
            .output()
            .expect("cryptsetup")
    };
    let ok = test_key(&key);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut wrong = key;
    wrong[0] ^= 1;
    let refused = test_key(&wrong);
    assert!(!refused.status.success(), "a wrong volume key was accepted");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
