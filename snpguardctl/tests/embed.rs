//! `snpguardctl embed` on a small generated image, checked with
//! libguestfs. Slow (appliance launches under TCG): ignored by default;
//! `make test-convert` runs it.

mod guestfs_util;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use guestfs_util::{ctl, manifest, repo, sha256, Appliance};
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};
use snpguard_protocol::bundle::{write_bundle, BundleSources, LaunchConfig, CONFIG_VERSION};

fn config(name: &str) -> LaunchConfig {
    LaunchConfig {
        version: CONFIG_VERSION,
        name: name.into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        guest_policy: "0x30000".into(),
        guest_features: "0x1".into(),
        measurement: "ab".repeat(48),
        id_key_digest: "cd".repeat(48),
        author_key_digest: "ef".repeat(48),
        family_id: "01".repeat(16),
        image_id: "02".repeat(16),
        kernel_hashes: true,
        no_encryption: false,
    }
}

/// A valid bundle whose kernel is `kernel`.
fn bundle(path: &Path, name: &str, kernel: &[u8]) {
    let firmware = vec![7u8; 4096];
    let initrd = vec![9u8; 8192];
    let f = std::fs::File::create(path).unwrap();
    write_bundle(
        f,
        &config(name),
        BundleSources {
            firmware: &mut &firmware[..],
            firmware_len: firmware.len() as u64,
            kernel: &mut &kernel[..],
            kernel_len: kernel.len() as u64,
            initrd: &mut &initrd[..],
            initrd_len: initrd.len() as u64,
            cmdline: "root=UUID=x ro",
            id_block: &[0u8; ID_BLOCK_SIZE],
            id_auth: &[0u8; ID_AUTH_SIZE],
        },
    )
    .unwrap();
}

/// A gzip'd tar with one regular file whose header name is `name`,
/// written byte by byte (the tar crate refuses such names).
fn hostile(path: &Path, name: &str) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(b"00000000004\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut data = h.to_vec();
    let mut body = [0u8; 512];
    body[..4].copy_from_slice(b"evil");
    data.extend_from_slice(&body);
    data.extend_from_slice(&[0u8; 1024]);
    let gz = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    gz.stdin.as_ref().unwrap().write_all(&data).unwrap();
    let out = gz.wait_with_output().unwrap();
    std::fs::write(path, out.stdout).unwrap();
}

fn virtual_size(img: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(img)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// A 64 MiB qcow2 with a GPT and one partition.
fn small_image(dir: &Path) -> PathBuf {
    let raw = dir.join("disk.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+32M", "-c", "1:data"])
        .arg(&raw));
    to_qcow2(&raw)
}

/// `raw` converted to a qcow2 next to it (`raw` is removed).
fn to_qcow2(raw: &Path) -> PathBuf {
    let img = raw.with_extension("qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(raw).unwrap();
    img
}

/// A 64 MiB qcow2 whose one GPT partition holds an ext4 filesystem
/// labelled LAUNCH_ARTIFACTS without the slot layout: stale files, a
/// directory A and `/artifacts` naming a slot that does not exist.
fn labelled_image(dir: &Path) -> PathBuf {
    let raw = dir.join("labelled.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("sgdisk")
        .args(["-o", "-n", "1:2048:+32M", "-c", "1:old"])
        .arg(&raw));
    let tree = dir.join("stale");
    std::fs::create_dir_all(tree.join("A")).unwrap();
    std::fs::write(tree.join("A/kernel"), b"stale kernel").unwrap();
    std::fs::write(tree.join("notes.txt"), b"stale").unwrap();
    std::os::unix::fs::symlink("C", tree.join("artifacts")).unwrap();
    // The filesystem written straight into partition 1 (1 MiB in).
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "LAUNCH_ARTIFACTS"])
        .args(["-E", "offset=1048576", "-d"])
        .arg(&tree)
        .arg(&raw)
        .arg("32M"));
    to_qcow2(&raw)
}

/// A 64 MiB qcow2 with an MBR whose four primary partitions are taken.
fn full_mbr_image(dir: &Path) -> PathBuf {
    let raw = dir.join("mbr.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,16M\n,8M\n,8M\n,8M\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    to_qcow2(&raw)
}

/// `embed` that must fail: its stderr.
fn embed_refused(img: &Path, bundle: &Path) -> String {
    let out = ctl(&[
        "embed",
        "--image",
        img.to_str().unwrap(),
        "--in-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "embed accepted {}", bundle.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn test_dir() -> tempfile::TempDir {
    std::fs::create_dir_all(repo().join("build")).unwrap();
    tempfile::Builder::new()
        .prefix("snpguard-embed-test")
        .tempdir_in(repo().join("build"))
        .unwrap()
}

fn embed(img: &Path, bundle: &Path) -> serde_json::Value {
    let out = ctl(&[
        "embed",
        "--image",
        img.to_str().unwrap(),
        "--in-bundle",
        bundle.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The LAUNCH_ARTIFACTS filesystem's manifest and /artifacts target.
fn artifacts(img: &Path) -> (BTreeMap<String, String>, String) {
    let app = Appliance::launch(&[(img, true)]);
    let dev = app.ok("blkid -L LAUNCH_ARTIFACTS").trim().to_string();
    app.ok(&format!(
        "mkdir -p /run/a && mount -o ro,noload {dev} /run/a"
    ));
    let m = manifest(&app, "/run/a");
    let link = app.ok("readlink /run/a/artifacts").trim().to_string();
    (m, link)
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn embed_creates_is_idempotent_switches_slots_and_refuses_hostile_bundles() {
    let dir = test_dir();
    let img = small_image(dir.path());

    // Hostile or broken bundles are refused, with the reason, before the
    // image is opened.
    let before = sha256(&img);
    let cases = [
        ("dotdot.tar.gz", Some("../x"), "has a `..` path component"),
        ("abs.tar.gz", Some("/etc/x"), "has an absolute path"),
        ("garbage.tar.gz", None, "not a valid tar.gz"),
    ];
    for (file, member, reason) in cases {
        let p = dir.path().join(file);
        match member {
            Some(name) => hostile(&p, name),
            None => std::fs::write(&p, b"\x1f\x8b not really gzip").unwrap(),
        }
        let err = embed_refused(&img, &p);
        assert!(
            err.contains("the image was not touched") && err.contains(reason),
            "{file}: {err}"
        );
        assert_eq!(sha256(&img), before, "{file}: the image changed");
    }

    let b1 = dir.path().join("one.tar.gz");
    let b2 = dir.path().join("two.tar.gz");
    bundle(&b1, "web", &[1u8; 10000]);
    bundle(&b2, "web", &[2u8; 12000]);

    let size0 = virtual_size(&img);
    let r = embed(&img, &b1);
    assert_eq!(r["action"], "created");
    assert_eq!(r["active_slot"], "A");
    let size1 = virtual_size(&img);
    assert!(size1 >= size0 + (512 << 20), "{size0} -> {size1}");
    let (m1, link1) = artifacts(&img);
    assert_eq!(link1, "A");
    assert!(m1.contains_key("./A/kernel") && m1.contains_key("./B"));
    assert_eq!(m1.keys().filter(|k| k.starts_with("./B/")).count(), 0);

    // Twice: the same result, nothing grown.
    let r = embed(&img, &b1);
    assert_eq!(r["action"], "unchanged");
    assert_eq!(virtual_size(&img), size1);
    let (m2, _) = artifacts(&img);
    assert_eq!(m1, m2);

    // An update goes to the inactive slot and the link switches.
    let r = embed(&img, &b2);
    assert_eq!(r["action"], "switched");
    assert_eq!(r["active_slot"], "B");
    let (m3, link3) = artifacts(&img);
    assert_eq!(link3, "B");
    assert_eq!(m3["./A/kernel"], m1["./A/kernel"], "the old slot is kept");
    assert!(
        m3["./B/kernel"].contains("size=12000"),
        "{}",
        m3["./B/kernel"]
    );
    assert_eq!(virtual_size(&img), size1);

    // --in-staging: the seven members from a directory, as launch-config
    // leaves them in a --no-encryption staging directory.
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
        .expect("the AMD test data (SNPGUARD_TESTDATA; the Makefile sets it)");
    let mut fw = vec![0x5au8; 8192];
    fw.extend_from_slice(&suffix);
    std::fs::write(staging.join("firmware.fd"), fw).unwrap();
    std::fs::write(staging.join("kernel"), [3u8; 14000]).unwrap();
    std::fs::write(staging.join("initrd"), [4u8; 9000]).unwrap();
    std::fs::write(staging.join("cmdline"), "root=UUID=0f6c ro console=ttyS0").unwrap();
    std::fs::write(staging.join("no-encryption"), "label\n").unwrap();
    let made = ctl(&[
        "launch-config",
        "--staging-dir",
        staging.to_str().unwrap(),
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    ]);
    assert!(made.status.success(), "launch-config: {made:?}");
    let from_staging = |extra: &str| {
        ctl(&[
            "embed",
            "--image",
            img.to_str().unwrap(),
            "--in-staging",
            staging.to_str().unwrap(),
            extra,
        ])
    };
    // A member missing, or a link in place of one: refused, untouched.
    let before = sha256(&img);
    let auth = staging.join("id-auth.bin");
    let kept = dir.path().join("id-auth.kept");
    std::fs::rename(&auth, &kept).unwrap();
    let out = from_staging("--json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the image was not touched") && err.contains("launch-config"),
        "{err}"
    );
    std::os::unix::fs::symlink(&kept, &auth).unwrap();
    let out = from_staging("--json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the image was not touched"),
        "{err}"
    );
    assert_eq!(
        sha256(&img),
        before,
        "a refused staging directory changed the image"
    );
    std::fs::remove_file(&auth).unwrap();
    std::fs::rename(&kept, &auth).unwrap();
    // A member changed after launch-config: it no longer measures to
    // what was signed.
    let cmdline = staging.join("cmdline");
    std::fs::write(&cmdline, "root=UUID=0f6c rw console=ttyS0").unwrap();
    let out = from_staging("--json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("measure to"), "{err}");
    assert_eq!(
        sha256(&img),
        before,
        "the refused directory changed the image"
    );
    std::fs::write(&cmdline, "root=UUID=0f6c ro console=ttyS0").unwrap();
    let out = from_staging("--json");
    assert!(
        out.status.success(),
        "embed --in-staging: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["action"], "switched");
    assert_eq!(r["active_slot"], "A");
    let (m4, link4) = artifacts(&img);
    assert_eq!(link4, "A");
    assert!(
        m4["./A/kernel"].contains("size=14000"),
        "{}",
        m4["./A/kernel"]
    );
    assert_eq!(m4["./B/kernel"], m3["./B/kernel"], "the other slot is kept");
    assert!(!m4.keys().any(|k| k.contains("no-encryption")), "{m4:?}");
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn embed_initializes_a_labelled_partition_without_the_layout() {
    let dir = test_dir();
    let img = labelled_image(dir.path());
    let (stale, link) = artifacts(&img);
    assert_eq!(link, "C");
    assert!(stale.contains_key("./notes.txt"), "{stale:?}");
    let size = virtual_size(&img);
    let b = dir.path().join("one.tar.gz");
    bundle(&b, "web", &[3u8; 5000]);

    let r = embed(&img, &b);
    assert_eq!(r["action"], "initialized");
    assert_eq!(r["active_slot"], "A");
    assert_eq!(virtual_size(&img), size, "the image grew");
    let (m, link) = artifacts(&img);
    assert_eq!(link, "A");
    let mut names: Vec<&str> = m.keys().map(String::as_str).collect();
    names.retain(|n| !n.starts_with("./lost+found"));
    let mut want = vec![".", "./A", "./B", "./artifacts"];
    let members: Vec<String> = snpguard_protocol::bundle::MEMBERS
        .iter()
        .map(|n| format!("./A/{n}"))
        .collect();
    want.extend(members.iter().map(String::as_str));
    want.sort();
    assert_eq!(names, want, "the stale files are gone, slot A is full");
    assert!(m["./A/kernel"].contains("size=5000"), "{}", m["./A/kernel"]);
}

#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn embed_refuses_images_without_room_and_leaves_them_alone() {
    let dir = test_dir();
    let b = dir.path().join("one.tar.gz");
    bundle(&b, "web", &[4u8; 5000]);

    // Four primary partitions: no room for a fifth; refused before the
    // image is grown.
    let img = full_mbr_image(dir.path());
    let (before, size) = (sha256(&img), virtual_size(&img));
    let err = embed_refused(&img, &b);
    assert!(
        err.contains("no free primary partition") && err.contains("the image was not touched"),
        "{err}"
    );
    assert_eq!(virtual_size(&img), size, "the image grew");
    assert_eq!(sha256(&img), before, "the image changed");

    // An image that does not exist is not created.
    let missing = dir.path().join("missing.qcow2");
    embed_refused(&missing, &b);
    assert!(!missing.exists(), "embed created {}", missing.display());
}

/// `embed` killed at `point` (a crash point: the appliance's QEMU is
/// killed first, as in a power cut, then snpguardctl).
fn embed_killed_at(img: &Path, bundle: &Path, point: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_snpguardctl"))
        .args(["embed", "--image"])
        .arg(img)
        .arg("--in-bundle")
        .arg(bundle)
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .env(snpguard::crash::ENV, point)
        .output()
        .expect("running snpguardctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "embed did not die at {point}: {:?} {stderr}",
        out.status
    );
    assert!(stderr.contains(&format!("crash point {point}")), "{stderr}");
}

/// The active slot's files (name, size and digest lines of the manifest).
fn active_slot(img: &Path) -> (String, BTreeMap<String, String>) {
    let (m, link) = artifacts(img);
    let prefix = format!("./{link}/");
    let files = m
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n.to_owned(), v)))
        .collect();
    (link, files)
}

/// A power cut at each step of a slot switch leaves `/artifacts` naming a
/// whole slot, the old bundle's or the new one's, never a mix; the next
/// embed finishes the job.
#[test]
#[ignore = "slow: libguestfs under TCG; run by `make test-convert`"]
fn a_crash_during_a_slot_switch_leaves_one_whole_slot_active() {
    use snpguard::crash::points::{EMBED_SLOT_PARTIAL, EMBED_SWITCHED};
    let dir = test_dir();
    let img = labelled_image(dir.path());
    let b1 = dir.path().join("one.tar.gz");
    let b2 = dir.path().join("two.tar.gz");
    bundle(&b1, "web", &[4u8; 6000]);
    bundle(&b2, "web", &[5u8; 7000]);
    assert_eq!(embed(&img, &b1)["active_slot"], "A");

    // Half of slot B written: A is still active and whole (embed of the
    // same bundle finds nothing to do, which compares every member).
    embed_killed_at(&img, &b2, EMBED_SLOT_PARTIAL);
    let r = embed(&img, &b1);
    assert_eq!(r["action"], "unchanged", "{r}");
    assert_eq!(r["active_slot"], "A", "{r}");

    // The link renamed, not synced: whichever slot it names is whole.
    // The next embed of the second bundle then leaves B active, holding
    // exactly the second bundle's members.
    embed_killed_at(&img, &b2, EMBED_SWITCHED);
    let r = embed(&img, &b2);
    assert!(
        r["action"] == "unchanged" || r["action"] == "switched",
        "{r}"
    );
    let (link, files) = active_slot(&img);
    assert_eq!(link, "B", "{r}");
    assert_eq!(
        files.len(),
        snpguard_protocol::bundle::MEMBERS.len(),
        "{files:?}"
    );
    for (name, digest) in bundle_digests(dir.path(), &b2) {
        let line = &files[&name];
        assert!(line.contains(&format!("sha={digest}")), "{name}: {line}");
    }
}

/// SHA-256 of each member of `bundle`, extracted under `dir`.
fn bundle_digests(dir: &Path, bundle: &Path) -> BTreeMap<String, String> {
    let out = tempfile::tempdir_in(dir).unwrap();
    snpguard_protocol::bundle::extract_bundle(
        std::fs::File::open(bundle).unwrap(),
        out.path(),
        &snpguard_protocol::bundle::ExtractLimits::default(),
    )
    .unwrap();
    snpguard_protocol::bundle::MEMBERS
        .iter()
        .map(|m| (m.to_string(), sha256(&out.path().join(m))))
        .collect()
}
