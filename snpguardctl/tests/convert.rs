//! `snpguardctl convert` on generated Debian 13 images (tests/guest/
//! build-image.sh), checked from the outside with libguestfs.
//!
//! Slow (an appliance under TCG, the guest's update-initramfs): ignored by
//! default; `make test-convert` runs them. SNPGUARD_TEST_ROOTFS names the
//! initramfs-tools root filesystem the images are built from,
//! SNPGUARD_TEST_ROOTFS_DRACUT the dracut flavour's (the ESP layout is
//! built from it). SNPGUARD_TEST_AGENT and SNPGUARD_TEST_MODULES_DIR
//! replace the fixture agent and modules directory (the fixture's
//! initramfs-tools hook is a stand-in; its dracut module and kernel hook
//! link to the real ones). The split layout's conversion is bootable
//! instead: SNPGUARD_AGENT (the agent's simulator build) and the
//! repository's modules; once checked it is published as the end-to-end
//! tests' guest (snpguard_systest::e2e_guest).

mod guestfs_util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guestfs_util::{ctl, diff, image, image_of, manifest, marker_image, repo, sha256, Appliance};
use snpguard::seal;

/// Everything a conversion test needs, in build/convert-test/NAME: emptied
/// when created and removed when dropped (the shared conversion lives in
/// a static, so its directory stays until the next run empties it).
struct Fixture {
    dir: PathBuf,
    secret: seal::SecretKey,
    /// The agent convert installs (--agent).
    agent: PathBuf,
    /// The initrd modules and kernel hook (--modules-dir).
    modules: PathBuf,
    /// The attestation server in the guest's configuration (--server).
    server: String,
    /// A guest that boots with the simulated platform
    /// (--simulated-platform, the agent's simulator build).
    simulated: bool,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = repo().join("build/convert-test").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (secret, public) = seal::generate_keypair();
        std::fs::write(dir.join("ingestion.pub"), public.to_bytes()).unwrap();
        // Any bytes: convert copies the firmware, register measures it.
        std::fs::write(dir.join("OVMF.fd"), vec![0x5au8; 8192]).unwrap();
        std::fs::write(
            dir.join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert");
        Fixture {
            dir,
            secret,
            agent: std::env::var("SNPGUARD_TEST_AGENT")
                .map_or_else(|_| fixtures.join("agent"), PathBuf::from),
            modules: modules_dir(),
            server: "https://snpguard.test:8443".into(),
            simulated: false,
        }
    }

    /// A fixture whose conversion boots: the agent's simulator build
    /// ($SNPGUARD_AGENT), the repository's initrd modules, TLS for
    /// 10.0.2.2 (the host under QEMU's user network) and a free port,
    /// firmware with the AmdSev suffix register measures. Returns the
    /// fixture and the port.
    fn bootable(name: &str) -> (Fixture, u16) {
        let mut fx = Fixture::new(name);
        fx.agent = std::env::var_os("SNPGUARD_AGENT")
            .map(PathBuf::from)
            .expect("SNPGUARD_AGENT: the agent's simulator build (make test-convert sets it)");
        fx.modules = repo();
        fx.simulated = true;
        let tls = fx.path("tls");
        let out = Command::new(repo().join("scripts/generate-tls-certs.sh"))
            .arg("--output")
            .arg(&tls)
            .args(["--ip", "10.0.2.2", "--ip", "127.0.0.1", "--days", "2"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "generate-tls-certs.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::copy(tls.join("ca.pem"), fx.path("ca.pem")).unwrap();
        let port = snpguard_systest::host::free_port().unwrap();
        fx.server = format!("https://10.0.2.2:{port}");
        let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
            .expect("the AMD test data (SNPGUARD_TESTDATA; the Makefile sets it)");
        let mut fw: Vec<u8> = (0..8192).map(|_| rand::random::<u8>()).collect();
        fw.extend_from_slice(&suffix);
        std::fs::write(fx.path("OVMF.fd"), fw).unwrap();
        (fx, port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The convert arguments for `input` → `out`/`staging`, the recovery
    /// passphrase written to `recovery.key`.
    fn args(&self, input: &Path, out: &str, staging: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "convert",
            "--in-image",
            input.to_str().unwrap(),
            "--out-image",
            self.path(out).to_str().unwrap(),
            "--out-staging",
            self.path(staging).to_str().unwrap(),
            "--firmware",
            self.path("OVMF.fd").to_str().unwrap(),
            "--server",
            &self.server,
            "--ca",
            self.path("ca.pem").to_str().unwrap(),
            "--ingestion-key",
            self.path("ingestion.pub").to_str().unwrap(),
            "--agent",
            self.agent.to_str().unwrap(),
            "--modules-dir",
            self.modules.to_str().unwrap(),
            "--recovery-key-file",
            self.path("recovery.key").to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if self.simulated {
            args.push("--simulated-platform".into());
        }
        args
    }

    /// Nothing but the fixture's own files is left in its directory.
    fn assert_no_outputs(&self) {
        let mut left: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !["ingestion.pub", "OVMF.fd", "ca.pem"].contains(&n.as_str()))
            .collect();
        left.sort();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// The modules directory convert gets (--modules-dir).
fn modules_dir() -> PathBuf {
    std::env::var("SNPGUARD_TEST_MODULES_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert/modules"),
        PathBuf::from,
    )
}

/// The files under `dir` (README* aside, as convert skips them): path
/// relative to `dir`, the mode convert gives it and SHA-256.
fn module_files(dir: &Path) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("README") || name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
                let exec = std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0;
                out.push((rel, if exec { "755" } else { "644" }, sha256(&p)));
            }
        }
    }
    out
}

/// One conversion and what it printed.
struct Converted {
    fx: Fixture,
    input: PathBuf,
    input_hash: String,
    summary: serde_json::Value,
    stdout: String,
    stderr: String,
}

/// Converts `input` in the fixture directory `layout`.
fn convert_image(layout: &str, input: PathBuf, extra: &[&str]) -> Converted {
    convert_with(Fixture::new(layout), layout, input, extra)
}

/// Converts `input` with the fixture `fx`.
fn convert_with(fx: Fixture, layout: &str, input: PathBuf, extra: &[&str]) -> Converted {
    let input_hash = sha256(&input);
    let mut args = fx.args(&input, "out.qcow2", "staging");
    if extra.contains(&"--no-recovery-keyslot") {
        let at = args
            .iter()
            .position(|a| a == "--recovery-key-file")
            .unwrap();
        args.drain(at..at + 2);
    }
    args.push("--json".into());
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = ctl(&args);
    eprintln!("convert {layout}: {:.1?}", started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "convert {layout} failed: {stderr}");
    let summary = serde_json::from_str(&stdout).expect("JSON summary");
    Converted {
        fx,
        input,
        input_hash,
        summary,
        stdout,
        stderr,
    }
}

fn simple() -> &'static Converted {
    static C: OnceLock<Converted> = OnceLock::new();
    C.get_or_init(|| convert_image("simple", image("simple"), &["--yes"]))
}

/// Checks one conversion from every side the issue names.
fn check(c: &Converted) {
    let s = &c.summary;
    let staging = c.fx.path("staging");

    // IN is untouched.
    assert_eq!(sha256(&c.input), c.input_hash, "the input image changed");

    // Staging: exactly the five files, 0600, the VMK only sealed.
    let mut names: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["cmdline", "firmware.fd", "initrd", "kernel", "vmk.sealed"]
    );
    for n in &names {
        let mode = std::fs::metadata(staging.join(n))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{n} has mode {mode:o}");
    }
    let sealed = std::fs::read(staging.join("vmk.sealed")).unwrap();
    let sealed = seal::SealedBox::from_bytes(&sealed).expect("sealed box");
    let vmk = seal::open(&c.fx.secret, seal::INFO_INGEST, b"", &sealed).expect("unseal VMK");
    assert_eq!(vmk.len(), 64);
    let needles = [
        vmk.to_vec(),
        hex::encode(&vmk[..]).into_bytes(),
        snpguard_protocol::attest::b64(&vmk).into_bytes(),
    ];
    for n in &names {
        let bytes = std::fs::read(staging.join(n)).unwrap();
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == &needle[..]),
                "the plaintext VMK is in staging/{n}"
            );
        }
    }
    for (what, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
        for needle in &needles[1..] {
            let needle = std::str::from_utf8(needle).unwrap();
            assert!(!text.contains(needle), "the plaintext VMK is in {what}");
        }
    }
    assert_eq!(
        std::fs::read(staging.join("firmware.fd")).unwrap(),
        std::fs::read(c.fx.path("OVMF.fd")).unwrap()
    );
    let cmdline = std::fs::read_to_string(staging.join("cmdline")).unwrap();
    let uuid = s["root"]["uuid"].as_str().unwrap();
    assert!(!cmdline.ends_with('\n'));
    // docs/initrd.md: the mapped device, a console, no shell on panic.
    assert!(
        cmdline.starts_with("root=/dev/mapper/snpguard_root ro "),
        "{cmdline}"
    );
    assert!(
        cmdline.contains(" console=ttyS0") && cmdline.ends_with(" panic=-1"),
        "{cmdline}"
    );
    assert_eq!(s["cmdline"].as_str(), Some(cmdline.as_str()));
    // docs/initrd.md: dracut fails closed and brings up the network.
    if s["initrd_tool"] == "dracut" {
        let args: Vec<&str> = cmdline.split(' ').collect();
        for want in [
            "rd.neednet=1",
            "ip=dhcp",
            "rd.shell=0",
            "rd.emergency=poweroff",
            "rd.luks=0",
        ] {
            assert!(args.contains(&want), "{want} not in {cmdline}");
        }
    }

    let out = c.fx.path("out.qcow2");
    let in_size = std::fs::metadata(&c.input).unwrap().len();
    assert!(in_size > 0);
    let app = Appliance::launch(&[(&c.input, true), (&out, true)]);
    let g = &app.0;
    let parts = g.list_partitions().unwrap();
    let root_num = s["root"]["partnum"].as_i64().unwrap();
    assert!(parts.contains(&format!("/dev/sdb{root_num}")), "{parts:?}");
    let (kin, kout) = (app.kdisk(0), app.kdisk(1));
    let root_out = format!("{kout}{root_num}");
    let size_in = g.blockdev_getsize64("/dev/sda").unwrap();
    let size_out = g.blockdev_getsize64("/dev/sdb").unwrap();
    let luks_volumes = 1 + s["volumes"].as_array().unwrap().len() as i64;
    assert_eq!(
        size_out,
        size_in + luks_volumes * (16 << 20),
        "OUT = IN + a LUKS2 header per encrypted volume"
    );

    // LUKS2 with the pinned parameters; opens with the VMK and with the
    // recovery passphrase from --recovery-key-file (never printed), or
    // has no keyslot at all with --no-recovery-keyslot.
    let dump = app.ok(&format!("cryptsetup luksDump {root_out}"));
    assert!(dump.contains("Version:       \t2"), "{dump}");
    let luks_uuid = s["luks"]["uuid"].as_str().unwrap();
    assert!(dump.contains(luks_uuid));
    assert!(dump.contains("offset: 16777216 [bytes]") && dump.contains("cipher: aes-xts-plain64"));
    assert!(
        s.get("recovery_passphrase").is_none(),
        "passphrase in the summary"
    );
    app.ok("mkdir -p /run/t && mount -t tmpfs tmpfs /run/t");
    app.ok(&format!(
        "printf '%s' {} | base64 -d > /run/t/vmk",
        snpguard_protocol::attest::b64(&vmk)
    ));
    let key_file = c.fx.path("recovery.key");
    if s["recovery"]["keyslot"] == true {
        assert_eq!(s["recovery"]["file"].as_str(), key_file.to_str());
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "recovery.key has mode {mode:o}");
        let pass = std::fs::read_to_string(&key_file).unwrap();
        let pass = pass.strip_suffix('\n').expect("one line");
        assert_eq!(pass.len(), 47, "{pass}");
        for (what, text) in [("stdout", &c.stdout), ("stderr", &c.stderr)] {
            assert!(!text.contains(pass), "the recovery passphrase is in {what}");
        }
        app.ok(&format!("printf '%s' '{pass}' > /run/t/pass"));
        let (rc, o) = app.sh(&format!(
            "cryptsetup open --readonly --test-passphrase --key-file /run/t/pass {root_out}"
        ));
        assert_eq!(rc, 0, "recovery passphrase does not open the volume: {o}");
        let (rc, _) = app.sh(&format!(
            "printf wrong > /run/t/bad && cryptsetup open --readonly --test-passphrase --key-file /run/t/bad {root_out}"
        ));
        assert_ne!(rc, 0, "a wrong passphrase opened the volume");
    } else {
        assert_eq!(s["recovery"]["keyslot"], false, "{s}");
        assert!(!key_file.exists());
        let keyslots = dump
            .split("Keyslots:")
            .nth(1)
            .and_then(|r| r.split("Tokens:").next())
            .expect("a Keyslots section");
        assert!(keyslots.trim().is_empty(), "keyslots left: {dump}");
    }
    // --key-size: without a keyslot cryptsetup cannot tell it otherwise.
    app.ok(&format!(
        "cryptsetup open --readonly --key-size 512 --volume-key-file /run/t/vmk {root_out} t_root"
    ));

    // Filesystem identity and every file of IN in OUT.
    assert_eq!(g.vfs_uuid("/dev/mapper/t_root").unwrap(), uuid);
    assert_eq!(
        g.vfs_label("/dev/mapper/t_root").unwrap(),
        s["root"]["label"].as_str().unwrap()
    );
    app.ok(&format!(
        "mkdir -p /run/in /run/out && mount -o ro {kin}{root_num} /run/in && mount -o ro,noload /dev/mapper/t_root /run/out"
    ));
    let mi = manifest(&app, "/run/in");
    let mut mo = manifest(&app, "/run/out");
    let mounts = s["mounts"].as_array().unwrap().clone();
    let volumes = s["volumes"].as_array().unwrap().clone();
    let moved_boot = mounts.iter().any(|m| m["role"] == "moved-to-root");
    // A separate /boot is a directory of the root now: its files are
    // compared with IN's /boot partition below.
    if moved_boot {
        mo.retain(|k, _| !k.starts_with("./boot/"));
    }
    // What convert adds or changes on purpose: the agent, its
    // configuration and CA, the kernel hook, and the initrd module of the
    // guest's tool (with dracut's configuration enabling it).
    let tool = s["initrd_tool"].as_str().unwrap();
    let mut added = vec![
        "./usr/lib/snpguard",
        "./usr/lib/snpguard/snpguard-agent",
        "./etc/snpguard",
        "./etc/snpguard/agent.toml",
        "./etc/snpguard/ca.pem",
        "./etc/kernel/postinst.d/zz-snpguard-renew",
    ];
    // Directories that receive new files, the regenerated initrd, the
    // tool's own state and the temporary directory it works in change by
    // design.
    let mut changed = vec![
        "./usr/lib",
        "./etc",
        "./etc/kernel/postinst.d",
        "./boot",
        "./var/tmp",
    ];
    // The module: every file of the modules directory's tree for the
    // guest's tool, at its place in the guest.
    let (module_src, module_dst) = match tool {
        "initramfs-tools" => {
            changed.extend([
                "./usr/share/initramfs-tools/hooks",
                "./usr/share/initramfs-tools/scripts/local-top",
                "./usr/share/initramfs-tools/scripts",
                "./usr/share/initramfs-tools",
                "./var/lib/initramfs-tools",
            ]);
            ("initramfs-tools", "./usr/share/initramfs-tools")
        }
        "dracut" => {
            added.extend([
                "./etc/dracut.conf.d/snpguard.conf",
                "./usr/lib/dracut/modules.d/90snpguard",
            ]);
            changed.extend(["./etc/dracut.conf.d", "./usr/lib/dracut/modules.d"]);
            ("dracut/90snpguard", "./usr/lib/dracut/modules.d/90snpguard")
        }
        other => panic!("unexpected initrd tool {other}"),
    };
    if !volumes.is_empty() {
        // systemd in the guest needs the mapping rule for the data
        // volumes; the directory may be new.
        added.push("./etc/udev/rules.d/55-snpguard-dm.rules");
        for d in ["./etc/udev/rules.d", "./etc/udev"] {
            if !mi.contains_key(d) {
                added.push(d);
            } else {
                changed.push(d);
            }
        }
    }
    if !mounts.is_empty() {
        // /boot's line commented out, the ESP noauto, swap dropped,
        // data volumes through /dev/mapper (checked below).
        changed.push("./etc/fstab");
    }
    for a in &added {
        assert!(mo.remove(*a).is_some(), "{a} not installed");
    }
    let module = module_files(&c.fx.modules.join(module_src));
    assert!(!module.is_empty(), "no {tool} module in the modules dir");
    for (rel, mode, sha) in &module {
        let path = format!("{module_dst}/{rel}");
        let got = mo.remove(&path);
        let got = got.unwrap_or_else(|| panic!("the {tool} module's {path} is not installed"));
        assert!(
            got.starts_with(&format!("f {mode} 0:0 ")) && got.contains(&format!("sha={sha} ")),
            "{path} as installed: {got}"
        );
        // Directories of the module the guest did not have (the real
        // initramfs-tools module's scripts/local-top) are new.
        let mut dir = Path::new(&path).parent();
        while let Some(d) = dir.filter(|d| d.starts_with(module_dst)) {
            let d_str = d.to_str().unwrap();
            if !mi.contains_key(d_str) {
                mo.remove(d_str);
            }
            dir = d.parent();
        }
    }
    let mut differences = diff(&mi, &mo);
    differences.retain(|d| {
        let path = d.split([':', '\n']).next().unwrap_or("");
        !changed.contains(&path)
            && !path.starts_with("./boot/initrd.img-")
            && !path.starts_with("./var/lib/initramfs-tools/")
    });
    assert!(
        differences.is_empty(),
        "IN and OUT differ:\n{}",
        differences.join("\n")
    );
    let test_files = mi
        .keys()
        .filter(|k| k.starts_with("./srv/snpguard-test/"))
        .count();
    assert!(
        test_files >= 10,
        "the image lacks the test files ({test_files})"
    );
    assert!(
        mi["./srv/snpguard-test/acl-file"].contains("system.posix_acl_access"),
        "{}",
        mi["./srv/snpguard-test/acl-file"]
    );
    assert!(mi["./srv/snpguard-test/hardlink-a"].contains("hardlink-b"));

    // The agent as installed, and the config the agent reads.
    let agent = app.ok("stat -c '%a %u %g' /run/out/usr/lib/snpguard/snpguard-agent");
    assert_eq!(agent.trim(), "755 0 0");
    // The renewal hook, as shipped in the modules directory.
    let hook = app.ok(
        "cd /run/out/etc/kernel/postinst.d && stat -c '%a %u %g' zz-snpguard-renew && \
         sha256sum < zz-snpguard-renew",
    );
    let hook_src = c.fx.modules.join("kernel/postinst.d/zz-snpguard-renew");
    assert_eq!(
        hook.split_whitespace().collect::<Vec<_>>(),
        ["755", "0", "0", &sha256(&hook_src), "-"],
        "the kernel hook as installed"
    );
    if tool == "dracut" {
        let conf = app.ok("cat /run/out/etc/dracut.conf.d/snpguard.conf");
        assert_eq!(conf, "add_dracutmodules+=\" snpguard \"\n");
    }
    let config = app.ok("cat /run/out/etc/snpguard/agent.toml");
    let config: toml::Table = toml::from_str(&config).expect("agent.toml");
    assert_eq!(config["luks"]["uuid"].as_str(), Some(luks_uuid));
    assert_eq!(
        config["luks"]["device"].as_str().unwrap(),
        format!("UUID={luks_uuid}")
    );
    assert_eq!(config["servers"][0].as_str(), Some(c.fx.server.as_str()));
    assert_eq!(
        config["report_source"].as_str(),
        Some(if c.fx.simulated { "simulated" } else { "auto" })
    );
    assert_eq!(
        config.contains_key("simulator"),
        c.fx.simulated,
        "{config:?}"
    );
    let fstab = app.ok("cat /run/out/etc/fstab");
    assert!(fstab.contains(&format!("UUID={uuid} / ")), "{fstab}");
    // No file system the guest mounts comes from a partition the host can
    // read: the root by its UUID (on the mapping), data volumes through
    // their mappings, the ESP only on demand, no swap partition.
    for line in fstab.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if line.trim_start().starts_with('#') || f.len() < 3 {
            continue;
        }
        let (spec, mp, fstype) = (f[0], f[1], f[2]);
        let opts = f.get(3).copied().unwrap_or("");
        let ok = (mp == "/" && spec == format!("UUID={uuid}"))
            || spec.starts_with("/dev/mapper/snpguard_")
            || opts.split(',').any(|o| o == "noauto")
            || ["tmpfs", "proc", "sysfs", "devpts"].contains(&fstype)
            || (fstype == "swap" && spec.starts_with('/') && !spec.starts_with("/dev/"));
        assert!(
            ok,
            "fstab mounts {mp} from {spec}, readable by the host: {fstab}"
        );
    }
    for v in &volumes {
        let line = format!(
            "/dev/mapper/{} {} ",
            v["name"].as_str().unwrap(),
            v["mountpoint"].as_str().unwrap()
        );
        assert!(fstab.contains(&line), "{line} not in {fstab}");
    }
    let agent_volumes = config
        .get("volumes")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(agent_volumes.len(), volumes.len(), "{config:?}");
    for (a, v) in agent_volumes.iter().zip(&volumes) {
        for k in ["mountpoint", "uuid", "name"] {
            assert_eq!(a[k].as_str(), v[k].as_str(), "agent.toml volumes {k}");
        }
    }

    // The staged kernel and initrd are what the guest's /boot holds, and
    // the initrd carries the agent and its configuration.
    let kernel = s["kernel"]["kernel"].as_str().unwrap();
    let initrd = s["kernel"]["initrd"].as_str().unwrap();
    // The kernel and initrd are on the encrypted root (a separate /boot
    // moved onto it).
    let boot_root = "/run/out/boot".to_string();
    let rel = |p: &str| p.trim_start_matches("/boot").to_string();
    let sums = app.ok(&format!(
        "sha256sum {boot_root}{} {boot_root}{}",
        rel(kernel),
        rel(initrd)
    ));
    let sums: Vec<&str> = sums
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(sums[0], sha256(&staging.join("kernel")), "staged kernel");
    assert_eq!(sums[1], sha256(&staging.join("initrd")), "staged initrd");
    // The approval review reads the agent's files from this initrd as the
    // kernel unpacks it (docs/security.md): all of them, the
    // configuration as written, nothing ambiguous.
    let initrd_file = std::fs::File::open(staging.join("initrd")).expect("staged initrd");
    let agent = snpguard_protocol::initrd::agent_files(initrd_file, &Default::default())
        .expect("the review reads the staged initrd");
    assert!(agent.problems.is_empty(), "{:?}", agent.problems);
    let paths: Vec<&str> = agent.files.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "etc/snpguard/agent.toml",
        "etc/snpguard/ca.pem",
        "usr/lib/snpguard/snpguard-agent",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    let in_initrd: toml::Table =
        toml::from_str(agent.files[0].text.as_deref().expect("config text")).expect("toml");
    assert_eq!(
        in_initrd, config,
        "the initrd's agent.toml is the one written"
    );
    // The initrd is several concatenated cpio archives (initramfs-tools
    // stores the already compressed modules uncompressed, then the rest
    // in zstd): search the raw bytes and the stream from the first zstd
    // frame on for the member names and the config's LUKS UUID.
    let found = app.ok(&format!(
        "cd /run/t && cat {boot_root}{} > initrd && \
         off=$(grep -obUaP '\\x28\\xb5\\x2f\\xfd' initrd | head -n 1 | cut -d: -f1) && \
         {{ cat initrd; if [ -n \"$off\" ]; then tail -c +$((off + 1)) initrd | zstd -dcq 2>/dev/null || true; fi; }} \
         | grep -a -o -e 'usr/lib/snpguard/snpguard-agent' -e 'etc/snpguard/agent.toml' -e '{luks_uuid}' \
           -e 'initqueue/settled/50-snpguard-unlock.sh' -e 'rules.d/55-snpguard-dm.rules' \
         | sort -u",
        rel(initrd)
    ));
    let mut wants = vec![
        "usr/lib/snpguard/snpguard-agent",
        "etc/snpguard/agent.toml",
        luks_uuid,
    ];
    // The real dracut module: its initqueue hook and udev rules.
    if tool == "dracut" {
        wants.extend([
            "initqueue/settled/50-snpguard-unlock.sh",
            "rules.d/55-snpguard-dm.rules",
        ]);
    }
    for want in wants {
        assert!(
            found.lines().any(|l| l == want),
            "{want} not in the initrd: {found}"
        );
    }

    // Every other file system, by what convert did with it.
    let regenerated = format!(".{}", rel(initrd));
    for m in &mounts {
        let mountpoint = m["mountpoint"].as_str().unwrap();
        let num = m["partnum"].as_i64().unwrap();
        let opts = if m["fstype"].as_str().unwrap().starts_with("ext") {
            "ro,noload"
        } else {
            "ro"
        };
        let dir = format!("/run/part{num}");
        app.ok(&format!(
            "mkdir -p {dir}/in {dir}/out && mount -o {opts} {kin}{num} {dir}/in"
        ));
        let mi = manifest(&app, &format!("{dir}/in"));
        assert!(mi.len() > 1, "{mountpoint} of IN is empty");
        let (mo, allowed): (_, Vec<String>) = match m["role"].as_str().unwrap() {
            // Copied block for block.
            "esp" => {
                app.ok(&format!("mount -o {opts} {kout}{num} {dir}/out"));
                (manifest(&app, &format!("{dir}/out")), vec![])
            }
            // On the root now; the partition holds nothing readable.
            "moved-to-root" => {
                let (_, found) = app.sh(&format!("blkid -p -o value -s TYPE {kout}{num}"));
                assert!(
                    found.trim().is_empty(),
                    "{mountpoint}'s old partition still holds a {found:?}"
                );
                (
                    manifest(&app, &format!("/run/out{mountpoint}")),
                    vec![".".into(), regenerated.clone()],
                )
            }
            // Its own LUKS2 volume, opened with the key derived from the VMK.
            "encrypted" => {
                let v = volumes
                    .iter()
                    .find(|v| v["partnum"].as_i64() == Some(num))
                    .expect("a volume for every encrypted mount");
                let vuuid = v["uuid"].as_str().unwrap();
                let dump = app.ok(&format!("cryptsetup luksDump {kout}{num}"));
                assert!(dump.contains(vuuid), "{dump}");
                let key = snpguard::volume::data_volume_key(&vmk, vuuid, 64).unwrap();
                app.ok(&format!(
                    "printf '%s' {} | base64 -d > /run/t/vk{num}",
                    snpguard_protocol::attest::b64(&key)
                ));
                // The VMK itself does not open it.
                let (rc, _) = app.sh(&format!(
                    "cryptsetup open --readonly --test-passphrase --key-size 512 \
                     --volume-key-file /run/t/vmk {kout}{num}"
                ));
                assert_ne!(rc, 0, "the VMK opens {mountpoint}");
                app.ok(&format!(
                    "cryptsetup open --readonly --key-size 512 --volume-key-file /run/t/vk{num} \
                     {kout}{num} t_p{num} && mount -o ro,noload /dev/mapper/t_p{num} {dir}/out"
                ));
                // What the guest's initrd tool wrote to a separate /var.
                let allowed = if mountpoint == "/var" {
                    vec!["./tmp".into(), "./lib/initramfs-tools".into()]
                } else {
                    vec![]
                };
                (manifest(&app, &format!("{dir}/out")), allowed)
            }
            other => panic!("unexpected role {other} of {mountpoint}"),
        };
        let mut differences = diff(&mi, &mo);
        differences.retain(|d| {
            let path = d.split([':', '\n']).next().unwrap_or("");
            let only = d
                .strip_prefix("only in output: ")
                .or_else(|| d.strip_prefix("only in input: "))
                .unwrap_or(path);
            !allowed
                .iter()
                .any(|a| path == a || only.starts_with(&format!("{a}/")) || only == a)
        });
        assert!(
            differences.is_empty(),
            "{mountpoint} differs between IN and OUT:\n{}",
            differences.join("\n")
        );
    }
    // Every partition of OUT is a LUKS2 volume, the ESP (noauto), or holds
    // no file system at all.
    let esp: Vec<i64> = mounts
        .iter()
        .filter(|m| m["role"] == "esp")
        .map(|m| m["partnum"].as_i64().unwrap())
        .collect();
    for p in g.part_list("/dev/sdb").unwrap() {
        let n = i64::from(p.part_num);
        let (_, t) = app.sh(&format!("blkid -p -o value -s TYPE {kout}{n}"));
        let t = t.trim();
        if esp.contains(&n) {
            assert_eq!(t, "vfat");
        } else {
            assert!(
                t == "crypto_LUKS" || t.is_empty(),
                "partition {n} of OUT holds a readable {t:?}"
            );
        }
    }
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn converts_the_simple_layout() {
    check(simple());
}

/// The kernel release of the initramfs-tools guest (SNPGUARD_TEST_ROOTFS:
/// build-rootfs.sh's rootfs.tar with `kernel-release` beside it, or the
/// tree itself).
fn rootfs_kernel_release() -> String {
    let rootfs = PathBuf::from(std::env::var_os("SNPGUARD_TEST_ROOTFS").expect(
        "set SNPGUARD_TEST_ROOTFS to the initramfs-tools guest's rootfs \
         (tests/guest/build-rootfs.sh; `make test-convert` does)",
    ));
    if rootfs.is_dir() {
        let mut kernels: Vec<String> = std::fs::read_dir(rootfs.join("boot"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_prefix("vmlinuz-").map(str::to_owned)
            })
            .collect();
        kernels.sort();
        kernels.pop().expect("a kernel in the rootfs's /boot")
    } else {
        snpguard_systest::rootfs::read_kernel_release(&rootfs.with_file_name("kernel-release"))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Ubuntu's separate /boot with a separate /var, /home and swap: /boot
/// moves onto the encrypted root, /var and /home become LUKS2 volumes of
/// their own, the swap partition is dropped.
///
/// This conversion is also the end-to-end tests' guest: the `--marker`
/// image, the agent's simulator build, the repository's initrd modules
/// and a server on 10.0.2.2, published to build/e2e-guest once checked
/// (snpguard_systest::e2e_guest), so `make test` converts the layout once.
#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn converts_separate_boot_var_home_and_swap_with_an_explicit_kernel() {
    let rootfs_kernel = rootfs_kernel_release();
    let (fx, port) = Fixture::bootable("split");
    let input = marker_image("split");
    let token = std::fs::read_to_string(input.with_extension("token"))
        .expect("the image's token")
        .trim()
        .to_owned();
    assert!(!token.is_empty());
    let c = convert_with(
        fx,
        "split",
        input,
        &["--kernel", &rootfs_kernel, "--no-recovery-keyslot"],
    );
    let s = &c.summary;
    assert_eq!(
        s["kernel"]["version"].as_str(),
        Some(rootfs_kernel.as_str())
    );
    assert!(
        c.stderr.contains("WARNING: --simulated-platform"),
        "convert warns about the simulated platform: {}",
        c.stderr
    );
    let roles: Vec<(&str, &str)> = s["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["mountpoint"].as_str().unwrap(),
                m["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("/boot", "moved-to-root"),
            ("/home", "encrypted"),
            ("/var", "encrypted")
        ]
    );
    let names: Vec<&str> = s["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["snpguard_home", "snpguard_var"]);
    let dropped = s["dropped_swaps"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{s}");
    assert!(dropped[0].as_str().unwrap().contains(" swap "), "{s}");
    check(&c);

    // Checked: publish it for tests/system/tests/e2e.rs.
    let area = snpguard_systest::e2e_guest::staging_area().unwrap();
    let fx = &c.fx;
    std::fs::rename(fx.path("out.qcow2"), area.join("guest.qcow2")).unwrap();
    std::fs::rename(fx.path("staging"), area.join("staging")).unwrap();
    std::fs::rename(fx.path("tls"), area.join("tls")).unwrap();
    std::fs::copy(&fx.agent, area.join("agent")).unwrap();
    let key = area.join("ingestion.key");
    std::fs::write(&key, &fx.secret.to_bytes()[..]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let guest = snpguard_systest::e2e_guest::publish(&area, port, &token).unwrap();
    eprintln!("published the end-to-end guest in {}", guest.dir.display());
}

/// The dracut flavour's root filesystem (tests/guest/build-rootfs.sh
/// --flavour dracut).
fn dracut_rootfs() -> PathBuf {
    let p = std::env::var_os("SNPGUARD_TEST_ROOTFS_DRACUT").map(PathBuf::from);
    p.filter(|p| p.exists()).expect(
        "set SNPGUARD_TEST_ROOTFS_DRACUT to the dracut flavour's rootfs \
         (tests/guest/build-rootfs.sh --flavour dracut; `make test-convert` does)",
    )
}

/// The ESP layout on the dracut flavour: both in one conversion, as each
/// costs minutes under TCG.
#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn converts_the_esp_layout_with_dracut() {
    let input = image_of("esp", Some(&dracut_rootfs()));
    let c = convert_image("esp-dracut", input, &["--yes"]);
    assert_eq!(c.summary["mounts"][0]["mountpoint"], "/boot/efi");
    assert_eq!(c.summary["initrd_tool"], "dracut");
    check(&c);
}

/// A copy-on-write overlay of the simple image with `script` run on its
/// root filesystem (mounted at /run/r in an appliance).
fn overlay(fx: &Fixture, name: &str, script: &str) -> PathBuf {
    let base = image("simple");
    let ov = fx.path(name);
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&ov)
        .status()
        .unwrap();
    assert!(st.success());
    let app = Appliance::launch(&[(&ov, false)]);
    // Waits for udev to create the partition nodes.
    let parts = app.0.list_partitions().unwrap();
    assert!(parts.contains(&"/dev/sda2".to_string()), "{parts:?}");
    let k = app.kdisk(0);
    app.ok(&format!(
        "mkdir -p /run/r && mount {k}2 /run/r && cd /run/r && {script} && cd / && umount /run/r"
    ));
    app.0.shutdown().unwrap();
    ov
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn kernels_without_sev_snp_are_refused_with_the_reason() {
    let fx = Fixture::new("refusal");
    // A second kernel whose config lacks CONFIG_SEV_GUEST, and a copy of
    // the real one that is the only kernel in the second image.
    let two = overlay(
        &fx,
        "two-kernels.qcow2",
        "v=$(ls boot | sed -n 's/^vmlinuz-//p' | head -1) && \
         cp boot/vmlinuz-$v boot/vmlinuz-6.1.0-nosev && \
         grep -v '^CONFIG_SEV_GUEST=' boot/config-$v > boot/config-6.1.0-nosev",
    );
    let args = fx.args(&two, "out.qcow2", "staging");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--kernel", "6.1.0-nosev"]);
    let out = ctl(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("kernel 6.1.0-nosev has CONFIG_SEV_GUEST unset"),
        "{err}"
    );
    std::fs::remove_file(&two).unwrap();
    fx.assert_no_outputs();

    let none = overlay(
        &fx,
        "no-sev.qcow2",
        "for c in boot/config-*; do sed -i 's/^CONFIG_SEV_GUEST=.*/# CONFIG_SEV_GUEST is not set/' $c; done",
    );
    let args = fx.args(&none, "out.qcow2", "staging");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.push("--yes");
    let out = ctl(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no kernel in the image can boot as an SEV-SNP guest")
            && err.contains("CONFIG_SEV_GUEST unset"),
        "{err}"
    );
    std::fs::remove_file(&none).unwrap();
    fx.assert_no_outputs();
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn interrupt_leaves_no_output() {
    let fx = Fixture::new("interrupt");
    let input = image("simple");
    let args = fx.args(&input, "out.qcow2", "staging");
    let mut child = Command::new(env!("CARGO_BIN_EXE_snpguardctl"))
        .args(&args)
        .arg("--yes")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = fx.path(&format!(".out.qcow2.partial-{}", child.id()));
    // Wait until the appliance writes OUT (the copy has begun).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if len > 64 << 20 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "convert ended early");
        assert!(Instant::now() < deadline, "convert never started writing");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    fx.assert_no_outputs();
}

/// `convert --no-encryption` stages the unchanged image (its kernel,
/// initrd and bootloader command line with `root=UUID=`), writes no image;
/// what it staged boots the image (TCG, an overlay) to multi-user from
/// its own unencrypted root; and `launch-config` turns the staging
/// directory into a local launch whose bundle `bundle check` accepts and
/// labels.
#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn no_encryption_stages_the_unchanged_image_for_a_local_launch() {
    let fx = Fixture::new("no-encryption");
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
        .expect("the AMD test data (SNPGUARD_TESTDATA; the Makefile sets it)");
    let mut fw: Vec<u8> = (0..8192).map(|_| rand::random::<u8>()).collect();
    fw.extend_from_slice(&suffix);
    std::fs::write(fx.path("OVMF.fd"), &fw).unwrap();
    let input = marker_image("simple");
    let token = std::fs::read_to_string(input.with_extension("token"))
        .expect("the image's token")
        .trim()
        .to_owned();
    let before = sha256(&input);
    let staging = fx.path("plain");
    let started = Instant::now();
    let out = ctl(&[
        "convert",
        "--in-image",
        input.to_str().unwrap(),
        "--out-staging",
        staging.to_str().unwrap(),
        "--firmware",
        fx.path("OVMF.fd").to_str().unwrap(),
        "--no-encryption",
        "--yes",
        "--json",
    ]);
    eprintln!("convert --no-encryption: {:.1?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "convert --no-encryption failed: {stderr}"
    );
    assert!(stderr.contains("NO CONFIDENTIALITY"), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["no_encryption"], true);
    assert_eq!(sha256(&input), before, "the input image changed");

    // The staging directory and nothing else: no image, no key.
    let mut names: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cmdline",
            "firmware.fd",
            "initrd",
            "kernel",
            "no-encryption"
        ]
    );
    let left: Vec<String> = std::fs::read_dir(&fx.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !["ingestion.pub", "OVMF.fd", "ca.pem", "plain"].contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(std::fs::read(staging.join("firmware.fd")).unwrap(), fw);

    // The kernel and initrd are the image's own, byte for byte.
    let kernel = s["kernel"]["kernel"].as_str().unwrap();
    let initrd = s["kernel"]["initrd"].as_str().unwrap();
    let app = Appliance::launch(&[(&input, true)]);
    let k = app.kdisk(0);
    let sums = app.ok(&format!(
        "mkdir -p /run/in && mount -o ro,noload {k}{part} /run/in && \
         sha256sum /run/in{kernel} /run/in{initrd} | cut -d' ' -f1",
        part = s["root"]["partnum"]
    ));
    let sums: Vec<&str> = sums.lines().collect();
    assert_eq!(sums[0], sha256(&staging.join("kernel")), "staged kernel");
    assert_eq!(sums[1], sha256(&staging.join("initrd")), "staged initrd");
    drop(app);

    // The bootloader's command line, the root by UUID, nothing of ours.
    let cmdline = std::fs::read_to_string(staging.join("cmdline")).unwrap();
    let uuid = s["root"]["uuid"].as_str().unwrap();
    assert!(
        cmdline.starts_with(&format!("root=UUID={uuid} ")),
        "{cmdline}"
    );
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    for ours in ["snpguard", "rd.luks", "/dev/mapper", "panic=-1"] {
        assert!(!cmdline.contains(ours), "{ours} in {cmdline}");
    }

    // What was staged boots the image: an overlay (the input stays as
    // it is), the staged kernel, initrd and command line, the image's own
    // unencrypted root, up to the marker unit's token.
    let overlay = fx.path("boot-overlay.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&input)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(st.success());
    let outcome = snpguard_systest::qemu::Boot {
        kernel: &staging.join("kernel"),
        initrd: &staging.join("initrd"),
        append: &cmdline,
        disk: Some(&overlay),
        fw_cfg: Vec::new(),
        deadline: Duration::from_secs(900),
    }
    .run(&fx.path("plain-serial.log"))
    .expect("QEMU");
    eprintln!(
        "boot of the --no-encryption staging: {:.0?}",
        outcome.elapsed
    );
    let want = format!("SNPGUARD-DEMO-BOOTED {token}");
    assert!(
        outcome.log.lines().any(|l| l.trim_end().ends_with(&want)),
        "no {want:?} on the console:\n{}",
        outcome.log
    );
    assert!(
        outcome
            .log
            .lines()
            .any(|l| l.contains("SNPGUARD-DEMO-MOUNTS /=/dev/vda")),
        "the root is not the image's plain partition:\n{}",
        outcome.log
    );
    assert!(outcome.powered_off(), "{}", outcome.log);
    assert!(outcome.shell_signs().is_empty(), "{}", outcome.log);
    std::fs::remove_file(&overlay).unwrap();
    assert_eq!(
        sha256(&input),
        before,
        "booting an overlay changed the image"
    );

    // launch-config makes the local launch; bundle check labels it.
    let bundle = fx.path("local.tar.gz");
    let out = ctl(&[
        "launch-config",
        "--staging-dir",
        staging.to_str().unwrap(),
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
        "--out-bundle",
        bundle.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "launch-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let measured = ctl(&[
        "measure",
        "--ovmf",
        fx.path("OVMF.fd").to_str().unwrap(),
        "--kernel",
        staging.join("kernel").to_str().unwrap(),
        "--initrd",
        staging.join("initrd").to_str().unwrap(),
        "--append",
        &cmdline,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert!(measured.status.success());
    assert_eq!(
        cfg["measurement"].as_str().unwrap(),
        String::from_utf8_lossy(&measured.stdout).trim()
    );
    let out = ctl(&["bundle", "check", bundle.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NO CONFIDENTIALITY"));
}
