//! The built agent (feature `simulator`, `--no-poweroff`) against a real
//! snpguardd on 127.0.0.1 (the harness in `common`): a guest registered
//! with `snpguardctl register`, launch blobs from `snpguard-sim launch`,
//! and a LUKS2 volume made by cryptsetup with the registered VMK.
//!
//! Where device-mapper and loop devices are usable (root), the volume is
//! mapped and read back; elsewhere the run must get exactly as far as the
//! dm step.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::Command;

use crate::common::{agent, dm_usable, failed_line, loop_device, registered_guest, run};

const PLAINTEXT: &[u8] = b"SNPGUARD-AGENT-TEST-PLAINTEXT\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registered_launch_unlocks_the_volume() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let img = g.volume();
    let name = format!("sgtest{}", std::process::id());

    if !dm_usable() {
        // Everything up to the dm step: attested, key released and
        // checked against the header, then the file cannot be mapped.
        let (code, lines) = agent(&g.config(&img, &blob, &name));
        assert_eq!(code, Some(1), "{lines:#?}");
        assert!(
            lines[0].contains("SIMULATED"),
            "the simulator build warns first: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("snpguard: attested as record ")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "snpguard: the released key opens the root volume"),
            "{lines:#?}"
        );
        let f = failed_line(&lines);
        assert!(f.contains("not a block device"), "{f}");

        // On a loop device (block size, major:minor) the run reaches
        // device-mapper itself and fails there, naming the control node.
        if let Some(dev) = loop_device(&img) {
            let (code, lines) = agent(&g.config(Path::new(&dev.0), &blob, &name));
            assert_eq!(code, Some(1), "{lines:#?}");
            assert!(
                lines
                    .iter()
                    .any(|l| l == &format!("snpguard: root: found {} (20971520 bytes)", dev.0)),
                "{lines:#?}"
            );
            let f = failed_line(&lines);
            assert!(f.contains("/dev/mapper/control"), "{f}");
        }
        eprintln!("device-mapper unusable here: the mapping itself is not exercised");
        return;
    }

    // Full path: write plaintext through cryptsetup, map with the agent,
    // read it back.
    let dev = loop_device(&img).expect("a loop device");
    let pre = format!("{name}pre");
    run(Command::new("cryptsetup")
        .args(["open", "--type", "luks2", "--volume-key-file"])
        .arg(g.dir.path().join("vk"))
        .arg(&dev.0)
        .arg(&pre));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new("/dev/mapper").join(&pre))
            .unwrap();
        f.write_all(PLAINTEXT).unwrap();
        f.sync_all().unwrap();
    }
    run(Command::new("cryptsetup").args(["close", &pre]));

    let (code, lines) = agent(&g.config(Path::new(&dev.0), &blob, &name));
    let mapped = Path::new("/dev/mapper").join(&name);
    let result = std::fs::File::open(&mapped).and_then(|mut f| {
        let mut buf = vec![0u8; PLAINTEXT.len()];
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut buf)?;
        Ok(buf)
    });
    let _ = Command::new("cryptsetup").args(["close", &name]).status();
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_eq!(result.expect("read the mapping"), PLAINTEXT);
}

/// Appends a `[[volumes]]` entry to the agent config at `config`.
fn add_volume(config: &Path, mountpoint: &str, device: &Path, uuid: &str, name: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(config)
        .unwrap();
    write!(
        f,
        "\n[[volumes]]\nmountpoint = \"{mountpoint}\"\ndevice = \"{}\"\nuuid = \"{uuid}\"\n\
         name = \"{name}\"\ncipher = \"aes-xts-plain64\"\nkey_bytes = 64\n\
         sector_size = 4096\noffset = 16777216\n",
        device.display()
    )
    .unwrap();
}

const VAR_UUID: &str = "5d1b0c3e-8f0a-4c2e-9b7d-0a1b2c3d4e5f";
const HOME_UUID: &str = "6e2c1d4f-9a1b-4d3f-8c8e-1b2c3d4e5f60";

/// Writes `text` at the start of the plaintext of the LUKS2 volume on
/// `dev`, opened with the volume key in `vk`.
fn write_plaintext(dev: &str, vk: &Path, name: &str, text: &[u8]) {
    run(Command::new("cryptsetup")
        .args(["open", "--type", "luks2", "--volume-key-file"])
        .arg(vk)
        .arg(dev)
        .arg(name));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new("/dev/mapper").join(name))
        .unwrap();
    f.write_all(text).unwrap();
    f.sync_all().unwrap();
    drop(f);
    run(Command::new("cryptsetup").args(["close", name]));
}

fn read_mapping(name: &str, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(Path::new("/dev/mapper").join(name))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// The data volumes (a separate /var and /home) open with keys derived
/// from the released one; a volume whose key is not the derived one stops
/// the whole unlock before anything, the root included, is mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_volumes_open_with_keys_derived_from_the_released_key() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let root_img = g.volume();
    let derived = |u: &str| snpguard::volume::data_volume_key(&g.vmk, u, 64).unwrap();
    let var_img = g.data_volume("var.img", VAR_UUID, &derived(VAR_UUID));
    // /home formatted with the VMK itself: not the key derived for it.
    let home_img = g.data_volume("home.img", HOME_UUID, &g.vmk);
    let tag = std::process::id();
    let (root_name, var_name, home_name) = (
        format!("sgroot{tag}"),
        format!("sgvar{tag}"),
        format!("sghome{tag}"),
    );

    if !dm_usable() {
        // As far as the checks go: the derived key opens /var, and /home's
        // wrong key is refused by name before the dm step.
        let config = g.config(&root_img, &blob, &root_name);
        add_volume(&config, "/var", &var_img, VAR_UUID, &var_name);
        let (code, lines) = agent(&config);
        assert_eq!(code, Some(1), "{lines:#?}");
        let f = failed_line(&lines);
        assert!(f.contains("not a block device"), "{f}");
        assert!(
            lines
                .iter()
                .any(|l| l == "snpguard: the derived keys open every data volume"),
            "{lines:#?}"
        );
        let config = g.config(&root_img, &blob, &root_name);
        add_volume(&config, "/home", &home_img, HOME_UUID, &home_name);
        let (code, lines) = agent(&config);
        assert_eq!(code, Some(1), "{lines:#?}");
        let f = failed_line(&lines);
        assert!(
            f.contains("/home: the key derived from the released key"),
            "{f}"
        );
        eprintln!("device-mapper unusable here: the mappings themselves are not exercised");
        return;
    }

    let root = loop_device(&root_img).expect("a loop device");
    let var = loop_device(&var_img).expect("a loop device");
    let home = loop_device(&home_img).expect("a loop device");
    write_plaintext(
        &var.0,
        &g.dir.path().join("var.img.vk"),
        &format!("{var_name}pre"),
        b"VAR\n",
    );

    // /home's key is wrong: nothing at all is mapped.
    let config = g.config(Path::new(&root.0), &blob, &root_name);
    add_volume(&config, "/var", Path::new(&var.0), VAR_UUID, &var_name);
    add_volume(&config, "/home", Path::new(&home.0), HOME_UUID, &home_name);
    let (code, lines) = agent(&config);
    assert_eq!(code, Some(1), "{lines:#?}");
    let f = failed_line(&lines);
    assert!(
        f.contains("/home: the key derived from the released key"),
        "{f}"
    );
    for n in [&root_name, &var_name, &home_name] {
        assert!(!Path::new("/dev/mapper").join(n).exists(), "{n} was mapped");
    }

    // Root and /var: both mapped, /var's plaintext readable.
    let config = g.config(Path::new(&root.0), &blob, &root_name);
    add_volume(&config, "/var", Path::new(&var.0), VAR_UUID, &var_name);
    let (code, lines) = agent(&config);
    let var_text = read_mapping(&var_name, 4);
    let root_mapped = Path::new("/dev/mapper").join(&root_name).exists();
    for n in [&root_name, &var_name] {
        let _ = Command::new("cryptsetup").args(["close", n]).status();
    }
    assert_eq!(code, Some(0), "{lines:#?}");
    assert!(root_mapped, "{lines:#?}");
    assert_eq!(var_text.expect("read /var's mapping"), b"VAR\n");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("snpguard: /var: mapped {} at ", var.0))),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_initrd_is_refused_and_nothing_is_mapped() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let other = g.dir.path().join("initrd.evil");
    std::fs::write(&other, b"a different initrd").unwrap();
    let blob = g.launch_blob("tampered.json", &["--initrd", other.to_str().unwrap()]);
    let img = g.volume();
    let name = format!("sgrefused{}", std::process::id());
    let (code, lines) = agent(&g.config(&img, &blob, &name));
    assert_eq!(code, Some(1), "{lines:#?}");
    let f = failed_line(&lines);
    assert!(f.contains("refused"), "{f}");
    assert!(
        f.contains("attestation-rejected") || f.contains("rejected"),
        "{f}"
    );
    // A refusal is final for the server: one attempt, no retries.
    let attempts = lines
        .iter()
        .filter(|l| l.starts_with("snpguard: attesting to "))
        .count();
    assert_eq!(attempts, 1, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("key released")));
    assert!(!Path::new("/dev/mapper").join(&name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_outside_the_pinned_ca_gets_nothing() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let img = g.volume();
    let config = g.config(&img, &blob, "sgpin");
    // Pin the simulated ARK (a valid certificate, but not the daemon's).
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &g.daemon.state.join("tls/cert.pem").display().to_string(),
        &g.platform.join("ark.pem").display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let (code, lines) = agent(&config);
    assert_eq!(code, Some(1), "{lines:#?}");
    let f = failed_line(&lines);
    assert!(f.contains("attestation failed"), "{f}");
    // Transport failures are retried up to the budget.
    let attempts = lines
        .iter()
        .filter(|l| l.starts_with("snpguard: attesting to "))
        .count();
    assert_eq!(attempts, 3, "{lines:#?}");
}

/// A server with a certificate the agent pins, and even the volume's real
/// key sealed to the right report, still gets nothing opened: the release
/// is not signed by the author key the PSP put in the guest's own report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_server_with_a_pinned_certificate_gets_nothing_opened() {
    let Some(g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let img = g.volume();
    for forgery in [
        crate::common::forged::Forgery::Unsigned,
        crate::common::forged::Forgery::OwnKey,
    ] {
        let name = format!("sgforged{}", std::process::id());
        let server = crate::common::forged::start(g.dir.path(), g.vmk.clone(), forgery);
        let config = g.config(&img, &blob, &name);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                &format!("https://localhost:{}", g.daemon.port),
                &format!("https://localhost:{}", server.port),
            )
            .replace(
                &g.daemon.state.join("tls/cert.pem").display().to_string(),
                &server.ca.display().to_string(),
            );
        std::fs::write(&config, text).unwrap();
        let (code, lines) = agent(&config);
        assert_eq!(code, Some(1), "{forgery:?}: {lines:#?}");
        let f = failed_line(&lines);
        assert!(f.contains("untrusted-response"), "{forgery:?}: {f}");
        let rule = match forgery {
            crate::common::forged::Forgery::Unsigned => "release-unsigned",
            crate::common::forged::Forgery::OwnKey => "release-signer-unknown",
        };
        assert!(f.contains(rule), "{forgery:?}: {f}");
        // Refused at once (no retries against a forger), nothing used.
        let attempts = lines
            .iter()
            .filter(|l| l.starts_with("snpguard: attesting to "))
            .count();
        assert_eq!(attempts, 1, "{lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("key released")),
            "{lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("opens this volume")),
            "{lines:#?}"
        );
        assert!(!Path::new("/dev/mapper").join(&name).exists());
    }
}
