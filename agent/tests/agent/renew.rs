//! `snpguard-agent renew` (feature `simulator`) against a real snpguardd
//! (the harness in `common`) and the real snpguardctl: a VM booted from
//! the approved launch submits a new kernel, initrd and command line; the
//! daemon keeps them as a pending launch; a VM booted from it gets no key
//! (`launch-pending`) until `snpguardctl records approve`, then it does. A
//! VM whose measurement is not approved cannot submit anything.
//!
//! Unlocking runs against the LUKS2 volume as a plain file: the run then
//! stops right after the released key is checked against the header (a
//! file is not a block device), which is what these tests are about.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{agent, daemon_log, failed_line, registered_guest, sibling, Guest};
use rand::{RngCore, SeedableRng};

const NEW_CMDLINE: &str = "console=ttyS0 root=/dev/mapper/root quiet";
/// The simulator build's variable that lets `renew` read the kernel and
/// initrd from any device.
const ANYWHERE: &str = "SNPGUARD_AGENT_TEST_BOOT_FILES_ANYWHERE";

/// The output of `snpguardctl --bus-address … args`.
fn ctl(g: &Guest, args: &[&str]) -> Output {
    Command::new(sibling("snpguardctl"))
        .arg("--bus-address")
        .arg(&g.bus.address)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run snpguardctl")
}

/// (id, state, measurement) of every launch of the record `guest`.
fn launches(g: &Guest) -> Vec<(String, String, String)> {
    let out = ctl(g, &["records", "show", "guest", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show --json");
    v["launches"]
        .as_array()
        .expect("launches")
        .iter()
        .map(|l| {
            let f = |k: &str| l[k].as_str().expect(k).to_owned();
            (f("id"), f("state"), f("measurement"))
        })
        .collect()
}

/// A new kernel and initrd (random bytes) and a command line file ending
/// in a newline, as an editor writes it.
fn new_artifacts(g: &Guest, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = g.dir.path().join(format!("boot-{seed}"));
    std::fs::create_dir(&dir).unwrap();
    let mut blob = vec![0u8; 50_000];
    rng.fill_bytes(&mut blob);
    std::fs::write(dir.join("vmlinuz"), &blob).unwrap();
    rng.fill_bytes(&mut blob);
    std::fs::write(dir.join("initrd.img"), &blob).unwrap();
    std::fs::write(dir.join("cmdline"), format!("{NEW_CMDLINE}\n")).unwrap();
    (
        dir.join("vmlinuz"),
        dir.join("initrd.img"),
        dir.join("cmdline"),
    )
}

/// `snpguard-agent renew`: exit code, stdout, stderr lines.
fn renew(
    config: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline_file: &Path,
) -> (Option<i32>, String, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"))
        // The artifacts are in a temporary directory, not on a dm-crypt
        // root: the simulator build's test mode (src/renew.rs).
        .env(ANYWHERE, "1")
        .args(["renew", "--config"])
        .arg(config)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline-file")
        .arg(cmdline_file)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!("{stdout}{}", lines.join("\n"));
    (out.status.code(), stdout, lines)
}

/// The value of `key: value` in the agent's stdout.
fn field<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
}

/// Whether an unlock as `blob` got the key released (and checked).
fn key_released(lines: &[String]) -> bool {
    lines
        .iter()
        .any(|l| l == "snpguard: the released key opens the root volume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_pending_until_an_operator_approves_it() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let img = g.volume();
    let running = g.launch_blob("launch.json", &[]);
    let config = g.config(&img, &running, "sgrenew");
    let (kernel, initrd, cmdline_file) = new_artifacts(&g, 7);
    let [(_, _, old_measurement)] = &launches(&g)[..] else {
        panic!("one launch after registration")
    };

    // The VM booted from the approved launch submits the new artifacts.
    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(0), "{lines:#?}");
    let record = field(&stdout, "record");
    assert_eq!(field(&stdout, "launch"), "2");
    let measurement = field(&stdout, "measurement");
    assert_eq!(measurement.len(), 96, "{stdout}");
    assert_ne!(measurement, old_measurement);
    assert_eq!(
        field(&stdout, "approve"),
        format!("snpguardctl records approve {record} --launch 2")
    );
    assert_eq!(
        launches(&g),
        [
            ("1".into(), "approved".into(), old_measurement.clone()),
            ("2".into(), "pending".into(), measurement.to_owned()),
        ]
    );

    // The new launch, booted: the simulated firmware measures what the
    // guest submitted (the command line without the file's newline).
    let exact = g.dir.path().join("new-cmdline");
    std::fs::write(&exact, NEW_CMDLINE).unwrap();
    let new_blob = g.launch_blob(
        "new.json",
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline-file",
            exact.to_str().unwrap(),
        ],
    );
    let new_config = g.config(&img, &new_blob, "sgrenewnew");

    // Pending: no key, the daemon names the reason.
    let (code, lines) = agent(&new_config);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        failed_line(&lines).contains("attestation-rejected"),
        "{lines:#?}"
    );
    assert!(!key_released(&lines), "{lines:#?}");
    assert!(daemon_log(&g.daemon.state).contains("launch-pending"));

    // A pending launch cannot submit a renewal either.
    let (k3, i3, c3) = new_artifacts(&g, 8);
    let (code, _, lines) = renew(&new_config, &k3, &i3, &c3);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("attestation-rejected")),
        "{lines:#?}"
    );
    assert_eq!(launches(&g).len(), 2);

    // The operator approves with the printed command: the new launch
    // gets the key, and the old one still does.
    let out = ctl(&g, &["records", "approve", record, "--launch", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(launches(&g)[1].1, "approved");
    let (_, lines) = agent(&new_config);
    assert!(key_released(&lines), "{lines:#?}");
    assert!(failed_line(&lines).contains("not a block device"));
    let (_, lines) = agent(&config);
    assert!(key_released(&lines), "{lines:#?}");

    // Submitting the same artifacts again returns the same launch.
    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(field(&stdout, "launch"), "2");
    assert_eq!(launches(&g).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_is_not_approved_cannot_renew() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    // A VM booted from an initrd nobody registered.
    let evil = g.dir.path().join("initrd.evil");
    std::fs::write(&evil, b"a different initrd").unwrap();
    let blob = g.launch_blob("evil.json", &["--initrd", evil.to_str().unwrap()]);
    let config = g.config(Path::new("/dev/null"), &blob, "sgevil");
    let (kernel, initrd, cmdline_file) = new_artifacts(&g, 9);

    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(stdout.is_empty(), "{stdout}");
    let last = lines.last().expect("a reason");
    assert!(
        last.starts_with("snpguard: renewal failed: ") && last.contains("refused"),
        "{last}"
    );
    assert!(last.contains("attestation-rejected"), "{last}");
    // A refusal is final: one attempt, no retries; never a boot-path
    // FAILED line.
    let attempts = lines
        .iter()
        .filter(|l| l.starts_with("snpguard: renewing with "))
        .count();
    assert_eq!(attempts, 1, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("FAILED")), "{lines:#?}");
    assert!(daemon_log(&g.daemon.state).contains("measurement-mismatch"));
    let states: Vec<String> = launches(&g).into_iter().map(|(id, ..)| id).collect();
    assert_eq!(states, ["1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_artifacts_are_refused_before_anything_is_sent() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let config = g.config(Path::new("/dev/null"), &blob, "sgbad");
    let (kernel, _, cmdline_file) = new_artifacts(&g, 10);
    let empty = g.dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let (code, _, lines) = renew(&config, &kernel, &empty, &cmdline_file);
    assert_eq!(code, Some(1), "{lines:#?}");
    let last = lines.last().expect("a reason");
    assert!(last.contains("initrd") && last.contains("empty"), "{last}");
    assert!(!lines.iter().any(|l| l.contains("renewing with")));
    assert_eq!(launches(&g).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_test_mode_a_kernel_off_the_encrypted_root_is_refused() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let config = g.config(Path::new("/dev/null"), &blob, "sgroot");
    let (_, initrd, cmdline_file) = new_artifacts(&g, 11);
    // /proc is never the root file system, dm-crypt or not.
    let out = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"))
        .env_remove(ANYWHERE)
        .args(["renew", "--config"])
        .arg(&config)
        .args(["--kernel", "/proc/version", "--initrd"])
        .arg(&initrd)
        .arg("--cmdline-file")
        .arg(&cmdline_file)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the kernel /proc/version is on device 0:")
            && stderr.contains("not on the encrypted root"),
        "{stderr}"
    );
    assert!(!stderr.contains("renewing with"), "{stderr}");
    assert_eq!(launches(&g).len(), 1);
}

/// Runs the kernel hook as the kernel package would (`hook VERSION
/// IMAGE`), with the built agent and `boot` as /boot; exit code and
/// stderr.
fn hook(config: &Path, boot: &Path, disabled: &Path, version: &str) -> (Option<i32>, String) {
    hook_with(config, boot, disabled, version, "configure 6.12.0-9-amd64")
}

/// [`hook`] with the maintainer script's parameters `params`.
fn hook_with(
    config: &Path,
    boot: &Path,
    disabled: &Path,
    version: &str,
    params: &str,
) -> (Option<i32>, String) {
    // No LAUNCH_ARTIFACTS partition: nothing is started after a renewal.
    hook_cmd(config, boot, disabled, version, params, |c| {
        c.env("SNPGUARD_ARTIFACTS_DEVICE", boot.join("no-such-partition"));
    })
}

/// The hook with `env` adding to its environment.
fn hook_cmd(
    config: &Path,
    boot: &Path,
    disabled: &Path,
    version: &str,
    params: &str,
    env: impl FnOnce(&mut Command),
) -> (Option<i32>, String) {
    let mut cmd = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kernel-hooks/zz-snpguard-renew"
    ));
    env(&mut cmd);
    let out = cmd
        .arg(version)
        .arg(boot.join(format!("vmlinuz-{version}")))
        .env("SNPGUARD_AGENT", env!("CARGO_BIN_EXE_snpguard-agent"))
        .env(ANYWHERE, "1")
        .env("SNPGUARD_AGENT_CONFIG", config)
        .env("SNPGUARD_RENEW_DISABLED", disabled)
        .env("SNPGUARD_BOOT", boot)
        .env("DEB_MAINT_PARAMS", params)
        .stdin(Stdio::null())
        .output()
        .expect("run the hook");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    (out.status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_hook_submits_and_never_fails_the_installation() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let config = g.config(Path::new("/dev/null"), &blob, "sghook");
    let boot = g.dir.path().join("boot");
    std::fs::create_dir(&boot).unwrap();
    let (kernel, initrd, _) = new_artifacts(&g, 11);
    std::fs::copy(&kernel, boot.join("vmlinuz-6.12.0-9-amd64")).unwrap();
    std::fs::copy(&initrd, boot.join("initrd.img-6.12.0-9-amd64")).unwrap();
    let disabled = g.dir.path().join("renew.disabled");

    // Opted out: nothing is submitted.
    std::fs::write(&disabled, b"").unwrap();
    let (code, err) = hook(&config, &boot, &disabled, "6.12.0-9-amd64");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("renew.disabled exists"), "{err}");
    assert_eq!(launches(&g).len(), 1);
    std::fs::remove_file(&disabled).unwrap();

    // Not an SnpGuard guest (no configuration): silently nothing.
    let (code, err) = hook(
        &g.dir.path().join("absent.toml"),
        &boot,
        &disabled,
        "6.12.0-9-amd64",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("absent"), "{err}");
    assert_eq!(launches(&g).len(), 1);

    // Another maintainer-script action than configure: nothing.
    let (code, err) = hook_with(&config, &boot, &disabled, "6.12.0-9-amd64", "abort-remove");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    assert_eq!(launches(&g).len(), 1);

    // No initrd for that version: a warning, exit 0.
    std::fs::copy(&kernel, boot.join("vmlinuz-6.12.0-10-amd64")).unwrap();
    let (code, err) = hook(&config, &boot, &disabled, "6.12.0-10-amd64");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("WARNING") && err.contains("initrd.img-6.12.0-10-amd64 is missing"),
        "{err}"
    );

    // The real submission: a pending launch with the running cmdline.
    let (code, err) = hook(&config, &boot, &disabled, "6.12.0-9-amd64");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("kernel 6.12.0-9-amd64 submitted"), "{err}");
    assert!(
        err.contains("snpguard-renew: approve: snpguardctl records approve "),
        "{err}"
    );
    let l = launches(&g);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[1].1, "pending");
    assert!(
        err.contains("no-such-partition: this guest boots from a bundle"),
        "{err}"
    );

    // With a LAUNCH_ARTIFACTS partition, a transient service waits for
    // the approval and writes the launch (here a stand-in systemd-run
    // records what it was asked to run).
    let partition = g.dir.path().join("partition-device");
    std::fs::write(&partition, b"").unwrap();
    let recorded = g.dir.path().join("systemd-run.args");
    let stand_in = g.dir.path().join("systemd-run");
    std::fs::write(
        &stand_in,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >{}\n", recorded.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &stand_in,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let install_disabled = g.dir.path().join("install-launch.disabled");
    let with_partition = |c: &mut Command| {
        c.env("SNPGUARD_ARTIFACTS_DEVICE", &partition)
            .env("SNPGUARD_SYSTEMD_RUN", &stand_in)
            .env("SNPGUARD_INSTALL_DISABLED", &install_disabled)
            .env("SNPGUARD_INSTALL_POLL", "5");
    };
    let (code, err) = hook_cmd(
        &config,
        &boot,
        &disabled,
        "6.12.0-9-amd64",
        "configure 6.12.0-9-amd64",
        with_partition,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("snpguard-install-launch-2.service writes launch 2"),
        "{err}"
    );
    let args = std::fs::read_to_string(&recorded).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let kernel = boot.join("vmlinuz-6.12.0-9-amd64");
    let initrd = boot.join("initrd.img-6.12.0-9-amd64");
    let expected = [
        "--no-block",
        "--quiet",
        "--collect",
        "--unit",
        "snpguard-install-launch-2",
        "--description",
        "SnpGuard: write launch 2 into LAUNCH_ARTIFACTS once approved",
        "--",
        env!("CARGO_BIN_EXE_snpguard-agent"),
        "install-launch",
        "--config",
        config.to_str().unwrap(),
        "--launch",
        "2",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--device",
        partition.to_str().unwrap(),
        "--wait",
        "604800",
        "--poll",
        "5",
    ];
    assert_eq!(args, expected);
    // Opted out of the write: submitted, nothing started.
    std::fs::remove_file(&recorded).unwrap();
    std::fs::write(&install_disabled, b"").unwrap();
    let (code, err) = hook_cmd(
        &config,
        &boot,
        &disabled,
        "6.12.0-9-amd64",
        "configure 6.12.0-9-amd64",
        with_partition,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("install-launch.disabled exists"), "{err}");
    assert!(!recorded.exists());
    // systemd-run failing (no systemd): the command to run by hand.
    std::fs::remove_file(&install_disabled).unwrap();
    std::fs::write(&stand_in, "#!/bin/sh\nexit 1\n").unwrap();
    let (code, err) = hook_cmd(
        &config,
        &boot,
        &disabled,
        "6.12.0-9-amd64",
        "configure 6.12.0-9-amd64",
        with_partition,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("WARNING: could not start snpguard-install-launch-2.service")
            && err.contains("install-launch --config"),
        "{err}"
    );

    // Refused (a VM that is not approved): a warning, still exit 0.
    let evil = g.dir.path().join("initrd.evil");
    std::fs::write(&evil, b"a different initrd").unwrap();
    let evil_blob = g.launch_blob("evil.json", &["--initrd", evil.to_str().unwrap()]);
    let evil_config = g.config(Path::new("/dev/null"), &evil_blob, "sghookevil");
    let (code, err) = hook(&evil_config, &boot, &disabled, "6.12.0-9-amd64");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("WARNING: submitting kernel 6.12.0-9-amd64 failed"),
        "{err}"
    );
    assert!(err.contains("attestation-rejected"), "{err}");
    assert_eq!(launches(&g).len(), 2);
}

/// A LAUNCH_ARTIFACTS partition as `snpguardctl embed` leaves it, as a
/// directory: the bundle extracted into A, B empty, `artifacts` -> A.
fn partition(g: &Guest) -> PathBuf {
    let root = g.dir.path().join("partition");
    lay_out(g, &root);
    root
}

/// The layout of [`partition`] in `root`.
fn lay_out(g: &Guest, root: &Path) {
    std::fs::create_dir_all(root.join("A")).unwrap();
    std::fs::create_dir(root.join("B")).unwrap();
    crate::common::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&g.bundle)
            .arg("-C")
            .arg(root.join("A")),
    );
    std::os::unix::fs::symlink("A", root.join("artifacts")).unwrap();
}

/// `snpguard-agent install-launch` of launch `launch` with these
/// artifacts into the mounted partition `root`.
fn install_launch(
    config: &Path,
    launch: &str,
    kernel: &Path,
    initrd: &Path,
    cmdline_file: &Path,
    root: &Path,
    wait: &[&str],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"));
    c.env(ANYWHERE, "1")
        .args(["install-launch", "--config"])
        .arg(config)
        .args(["--launch", launch, "--kernel"])
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--cmdline-file")
        .arg(cmdline_file)
        .arg("--mounted")
        .arg(root)
        .args(wait)
        .stdin(Stdio::null());
    c
}

fn outcome(out: Output) -> (Option<i32>, String, Vec<String>) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!("{stdout}{}", lines.join("\n"));
    (out.status.code(), stdout, lines)
}

/// Runs `cmd` (an install-launch), which must exit 1 with `want` in its
/// last line; its stderr lines.
fn install_fails(mut cmd: Command, want: &str) -> Vec<String> {
    let (code, _, lines) = outcome(cmd.output().unwrap());
    assert_eq!(code, Some(1), "{lines:#?}");
    let last = lines.last().expect("a reason");
    assert!(last.contains(want), "{want}: {last}");
    lines
}

fn active(root: &Path) -> String {
    std::fs::read_link(root.join("artifacts"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn slot_entries(root: &Path, slot: &str) -> usize {
    std::fs::read_dir(root.join(slot)).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_writes_its_approved_next_launch_into_the_inactive_slot() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let img = g.volume();
    let running = g.launch_blob("launch.json", &[]);
    let config = g.config(&img, &running, "sginstall");
    let root = partition(&g);
    let (kernel, initrd, cmdline_file) = new_artifacts(&g, 11);
    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(0), "{lines:#?}");
    let record = field(&stdout, "record").to_owned();
    let measurement = field(&stdout, "measurement").to_owned();

    // Pending, not waiting: nothing written, the approval named.
    let (code, _, lines) = outcome(
        install_launch(&config, "2", &kernel, &initrd, &cmdline_file, &root, &[])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    let last = lines.last().unwrap();
    assert!(last.contains("still pending approval"), "{last}");
    assert!(last.contains("snpguardctl records approve"), "{last}");
    assert_eq!((active(&root), slot_entries(&root, "B")), ("A".into(), 0));

    // A launch the record does not have.
    install_fails(
        install_launch(&config, "7", &kernel, &initrd, &cmdline_file, &root, &[]),
        "unknown-launch",
    );

    // Waiting: the operator approves meanwhile; the guest writes slot B.
    let pending_before = daemon_log(&g.daemon.state)
        .matches("is pending approval; ask again")
        .count();
    let waiting = install_launch(
        &config,
        "2",
        &kernel,
        &initrd,
        &cmdline_file,
        &root,
        &["--wait", "120", "--poll", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Approved once the daemon has told it "pending" at least once.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while daemon_log(&g.daemon.state)
        .matches("is pending approval; ask again")
        .count()
        <= pending_before
    {
        assert!(
            std::time::Instant::now() < until,
            "install-launch never asked"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = ctl(&g, &["records", "approve", &record, "--launch", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, stdout, lines) = outcome(waiting.wait_with_output().unwrap());
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("pending approval; asking again")),
        "{lines:#?}"
    );
    assert_eq!(field(&stdout, "slot"), "B");
    assert_eq!(field(&stdout, "measurement"), measurement);
    assert_eq!(active(&root), "B");

    // Slot B is exactly the bundle the daemon exports for launch 2.
    let exported = g.dir.path().join("launch-2.tar.gz");
    let out = ctl(
        &g,
        &[
            "records",
            "export",
            &record,
            "--launch",
            "2",
            "--out",
            exported.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = g.dir.path().join("launch-2");
    std::fs::create_dir(&want).unwrap();
    crate::common::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&exported)
            .arg("-C")
            .arg(&want),
    );
    for m in snpguard_protocol::bundle::MEMBERS {
        assert_eq!(
            std::fs::read(root.join("B").join(m)).unwrap(),
            std::fs::read(want.join(m)).unwrap(),
            "{m}"
        );
    }
    // And the launch it describes gets the key.
    let b = |m: &str| root.join("B").join(m).to_str().unwrap().to_owned();
    let booted = g.launch_blob(
        "next.json",
        &[
            "--kernel",
            &b("kernel"),
            "--initrd",
            &b("initrd"),
            "--cmdline-file",
            &b("cmdline"),
        ],
    );
    let (_, lines) = agent(&g.config(&img, &booted, "sginstallnext"));
    assert!(key_released(&lines), "{lines:#?}");

    // Asked again: already active, nothing rewritten.
    let (code, stdout, lines) = outcome(
        install_launch(&config, "2", &kernel, &initrd, &cmdline_file, &root, &[])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(field(&stdout, "slot"), "B");
    assert!(
        lines.iter().any(|l| l.contains("already active")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_launch_that_is_not_what_was_signed_is_never_made_active() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let running = g.launch_blob("launch.json", &[]);
    let config = g.config(Path::new("/dev/null"), &running, "sgnotsigned");
    let root = partition(&g);
    let (kernel, initrd, cmdline_file) = new_artifacts(&g, 12);
    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(0), "{lines:#?}");
    let record = field(&stdout, "record").to_owned();
    let out = ctl(&g, &["records", "approve", &record, "--launch", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The kernel changed since the renewal: the written slot measures to
    // something else than launch 2, and is emptied again.
    let (other_kernel, ..) = new_artifacts(&g, 13);
    let (code, _, lines) = outcome(
        install_launch(
            &config,
            "2",
            &other_kernel,
            &initrd,
            &cmdline_file,
            &root,
            &[],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("snpguard: install-launch failed: "),
        "{last}"
    );
    assert!(last.contains("measure to"), "{last}");
    assert!(!lines.iter().any(|l| l.contains("FAILED")), "{lines:#?}");
    assert_eq!((active(&root), slot_entries(&root, "B")), ("A".into(), 0));

    // The host swapped the active slot's firmware: the same refusal.
    let fw = root.join("A/firmware.fd");
    let mut bytes = std::fs::read(&fw).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&fw, bytes).unwrap();
    let (code, _, lines) = outcome(
        install_launch(&config, "2", &kernel, &initrd, &cmdline_file, &root, &[])
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(lines.last().unwrap().contains("measure to"), "{lines:#?}");
    assert_eq!((active(&root), slot_entries(&root, "B")), ("A".into(), 0));

    // No server answering (a daemon restarting): asked again until the
    // wait is over, then a failure naming it.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap();
    let dead = g.dir.path().join("dead.toml");
    std::fs::write(
        &dead,
        text.replace(
            &format!("localhost:{}", g.daemon.port),
            &format!("localhost:{dead_port}"),
        ),
    )
    .unwrap();
    let (code, _, lines) = outcome(
        install_launch(
            &dead,
            "2",
            &kernel,
            &initrd,
            &cmdline_file,
            &root,
            &["--wait", "2", "--poll", "1"],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    let rounds = lines
        .iter()
        .filter(|l| l.contains("no server answered about launch 2") && l.contains("asking again"))
        .count();
    assert!(rounds >= 1, "{lines:#?}");
    assert!(
        lines.last().unwrap().contains("fetching launch 2 failed"),
        "{lines:#?}"
    );
    assert_eq!((active(&root), slot_entries(&root, "B")), ("A".into(), 0));

    // A malformed launch id is refused before anything is asked.
    install_fails(
        install_launch(&config, "02", &kernel, &initrd, &cmdline_file, &root, &[]),
        "not a launch id",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_launch_mounts_the_partition_by_its_device() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    // An ext4 file system labelled as embed labels it, on a loop device.
    let img = g.dir.path().join("artifacts.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    crate::common::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "LAUNCH_ARTIFACTS"])
            .arg(&img),
    );
    let Some(dev) = crate::common::loop_device(&img) else {
        eprintln!("needs root and loop devices; skipped");
        return;
    };
    let mnt = g.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        crate::common::run(
            Command::new("mount")
                .args(["-t", "ext4", "-o", opts, &dev.0])
                .arg(&mnt),
        );
    };
    let umount = || crate::common::run(Command::new("umount").arg(&mnt));
    mount("rw");
    lay_out(&g, &mnt);
    umount();

    let running = g.launch_blob("launch.json", &[]);
    let config = g.config(Path::new("/dev/null"), &running, "sgdevice");
    let (kernel, initrd, cmdline_file) = new_artifacts(&g, 14);
    let (code, stdout, lines) = renew(&config, &kernel, &initrd, &cmdline_file);
    assert_eq!(code, Some(0), "{lines:#?}");
    let record = field(&stdout, "record").to_owned();
    let out = ctl(&g, &["records", "approve", &record, "--launch", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cmd = install_launch(&config, "2", &kernel, &initrd, &cmdline_file, &mnt, &[]);
    // --device instead of --mounted.
    let args: Vec<std::ffi::OsString> = cmd
        .get_args()
        .map(|a| {
            if a == "--mounted" {
                "--device".into()
            } else {
                a.to_owned()
            }
        })
        .map(|a| {
            if a == mnt.as_os_str() {
                dev.0.clone().into()
            } else {
                a
            }
        })
        .collect();
    let mut by_device = Command::new(cmd.get_program());
    by_device.env(ANYWHERE, "1").args(args).stdin(Stdio::null());
    let (code, stdout, lines) = outcome(by_device.output().unwrap());
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(field(&stdout, "slot"), "B");
    // Unmounted again, its private mount point gone.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&dev.0), "{mounts}");
    let pid_dirs = std::fs::read_dir("/run")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("snpguard-agent-")
        })
        .count();
    assert_eq!(pid_dirs, 0, "a mount point was left in /run");

    mount("ro");
    let active = active(&mnt);
    let b_cmdline = std::fs::read(mnt.join("B/cmdline")).unwrap();
    umount();
    assert_eq!(active, "B");
    assert_eq!(b_cmdline, NEW_CMDLINE.as_bytes());

    // A device that is not an ext4 file system: refused by name.
    let junk = g.dir.path().join("junk.img");
    std::fs::File::create(&junk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let Some(junk_dev) = crate::common::loop_device(&junk) else {
        return;
    };
    let args: Vec<std::ffi::OsString> = by_device
        .get_args()
        .map(|a| {
            if a == dev.0.as_str() {
                junk_dev.0.clone().into()
            } else {
                a.to_owned()
            }
        })
        .collect();
    let (code, _, lines) = outcome(
        Command::new(by_device.get_program())
            .env(ANYWHERE, "1")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    assert_eq!(code, Some(1), "{lines:#?}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("mounting") && last.contains("snpguardctl embed"),
        "{last}"
    );
}
