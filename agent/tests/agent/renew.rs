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
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kernel-hooks/zz-snpguard-renew"
    ))
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
