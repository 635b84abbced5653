//! The slot writer on a partition laid out as `snpguardctl embed` lays it
//! out, with a launch signed here the way the daemon signs one.

use super::*;
use p384::ecdsa::SigningKey;
use snpguard::idblock::{key_digest, IdAuth, IdBlock};
use snpguard::measure::{launch_digest, MeasureInput, VmmType};
use snpguard::report::GuestPolicy;

/// A signed launch of `cmdline` and the bytes it is made of.
struct Signed {
    firmware: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: String,
    config: String,
    id_block: Vec<u8>,
    id_auth: Vec<u8>,
}

impl Signed {
    fn launch(&self) -> NewLaunch<'_> {
        NewLaunch {
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: &self.cmdline,
            launch_config: &self.config,
            id_block: &self.id_block,
            id_auth: &self.id_auth,
        }
    }
}

/// Firmware with the AmdSev metadata (the test data's footer), or None
/// when the test data is absent.
fn firmware() -> Option<Vec<u8>> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    let mut fw = vec![0x11u8; 3 * 4096];
    fw.extend_from_slice(&suffix);
    Some(fw)
}

fn sign(firmware: &[u8], cmdline: &str, id_key: &SigningKey, author: &SigningKey) -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let kernel = vec![0x22u8; 30_000];
    let initrd = vec![0x33u8; 40_000];
    for (name, bytes) in [("fw", firmware), ("k", &kernel[..]), ("i", &initrd[..])] {
        fs::write(dir.path().join(name), bytes).unwrap();
    }
    let digest = launch_digest(&MeasureInput {
        ovmf: dir.path().join("fw"),
        ovmf_hash: None,
        kernel: Some(dir.path().join("k")),
        initrd: Some(dir.path().join("i")),
        cmdline: Some(cmdline.into()),
        vcpus: 2,
        vcpu_type: "EPYC-v4".parse().unwrap(),
        guest_features: 1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap();
    let policy = GuestPolicy::for_launch(true, false, false).0;
    let block = IdBlock {
        launch_digest: digest,
        family_id: [0xfa; 16],
        image_id: [0x1d; 16],
        guest_svn: 0,
        policy,
    };
    let auth = IdAuth::sign(&block, id_key, Some(author)).unwrap();
    let config = LaunchConfig {
        version: snpguard_protocol::bundle::CONFIG_VERSION,
        name: "guest".into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        guest_policy: format!("{policy:#x}"),
        guest_features: "0x1".into(),
        measurement: digest.to_string(),
        id_key_digest: hex::encode(key_digest(id_key.verifying_key())),
        author_key_digest: hex::encode(key_digest(author.verifying_key())),
        family_id: hex::encode([0xfa; 16]),
        image_id: hex::encode([0x1d; 16]),
        kernel_hashes: true,
        no_encryption: false,
    };
    let config =
        String::from_utf8(snpguard_protocol::bundle::config_json(&config).unwrap()).unwrap();
    Signed {
        firmware: firmware.to_vec(),
        kernel,
        initrd,
        cmdline: cmdline.into(),
        config,
        id_block: block.to_bytes().to_vec(),
        id_auth: auth.as_bytes().to_vec(),
    }
}

fn keys() -> (SigningKey, SigningKey) {
    (
        SigningKey::random(&mut rand::rngs::OsRng),
        SigningKey::random(&mut rand::rngs::OsRng),
    )
}

/// A partition as embed leaves it: `s` in slot A, B empty, A active.
fn partition(s: &Signed) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("A");
    fs::create_dir(&a).unwrap();
    fs::create_dir(root.path().join("B")).unwrap();
    for (name, bytes) in [
        (LAUNCH_CONFIG, s.config.as_bytes()),
        (FIRMWARE, &s.firmware[..]),
        (KERNEL, &s.kernel[..]),
        (INITRD, &s.initrd[..]),
        (CMDLINE, s.cmdline.as_bytes()),
        (ID_BLOCK, &s.id_block[..]),
        (ID_AUTH, &s.id_auth[..]),
    ] {
        fs::write(a.join(name), bytes).unwrap();
    }
    std::os::unix::fs::symlink("A", root.path().join(ACTIVE_LINK)).unwrap();
    root
}

fn link(root: &Path) -> String {
    fs::read_link(root.join(ACTIVE_LINK))
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn a_signed_launch_goes_to_the_inactive_slot_and_becomes_active() {
    let Some(fw) = firmware() else { return };
    let (id, author) = keys();
    let old = sign(&fw, "console=ttyS0", &id, &author);
    let new = sign(&fw, "console=ttyS0 quiet", &id, &author);
    let root = partition(&old);
    // Leftovers in the inactive slot go.
    fs::write(root.path().join("B/stale"), b"x").unwrap();

    let mut seen = None;
    let done = install(root.path(), &new.launch(), |c| {
        seen = Some(c.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(done, Installed::Switched { slot: "B" });
    assert_eq!(link(root.path()), "B");
    assert_eq!(seen.unwrap().measurement, new.config_measurement());
    let b = root.path().join("B");
    let config = check_extracted(&b, &SLOT_LIMITS).unwrap();
    check_signed(&b, &config).unwrap();
    assert_eq!(fs::read(b.join(FIRMWARE)).unwrap(), fw);
    assert_eq!(fs::read(b.join(CMDLINE)).unwrap(), b"console=ttyS0 quiet");
    assert_eq!(
        fs::read_to_string(b.join(LAUNCH_CONFIG)).unwrap(),
        new.config
    );
    let mode = fs::metadata(b.join(KERNEL)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert!(!root.path().join(NEW_LINK).exists());
    // Slot A still holds the old launch, for the record.
    assert_eq!(
        fs::read(root.path().join("A").join(CMDLINE)).unwrap(),
        b"console=ttyS0"
    );

    // Again: nothing to do. Then the old launch again: back to A.
    assert_eq!(
        install(root.path(), &new.launch(), |_| Ok(())).unwrap(),
        Installed::Unchanged { slot: "B" }
    );
    assert_eq!(
        install(root.path(), &old.launch(), |_| Ok(())).unwrap(),
        Installed::Switched { slot: "A" }
    );
    assert_eq!(link(root.path()), "A");
}

impl Signed {
    fn config_measurement(&self) -> String {
        serde_json::from_str::<LaunchConfig>(&self.config)
            .unwrap()
            .measurement
    }
}

#[test]
fn a_launch_that_does_not_check_out_is_never_made_active() {
    let Some(fw) = firmware() else { return };
    let (id, author) = keys();
    let old = sign(&fw, "console=ttyS0", &id, &author);
    let new = sign(&fw, "console=ttyS0 quiet", &id, &author);
    let refused = |root: &Path, launch: NewLaunch<'_>, want: &str| {
        let e = format!("{:#}", install(root, &launch, |_| Ok(())).unwrap_err());
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(link(root), "A", "{want}: the active slot stays");
        assert_eq!(entries(&root.join("B")), 0, "{want}: nothing left in B");
    };
    let root = partition(&old);

    // Another command line than the one signed.
    let mut l = new.launch();
    l.cmdline = "console=ttyS0 init=/bin/sh";
    refused(root.path(), l, "measure to");
    // Another kernel.
    let kernel = vec![0x44u8; 30_000];
    let mut l = new.launch();
    l.kernel = &kernel;
    refused(root.path(), l, "measure to");
    // An ID block signed for another launch.
    let mut l = new.launch();
    l.id_block = &old.id_block;
    refused(root.path(), l, "ID block");
    // Signed by other keys than the config names.
    let (id2, author2) = keys();
    let stranger = sign(&fw, "console=ttyS0 quiet", &id2, &author2);
    let mut l = new.launch();
    l.id_auth = &stranger.id_auth;
    l.id_block = &stranger.id_block;
    refused(root.path(), l, "signing keys");
    // A config the caller's check refuses (another record's).
    let e = install(root.path(), &new.launch(), |_| {
        bail!("another record's launch")
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("another record"), "{e:#}");
    assert_eq!(link(root.path()), "A");
    // The active slot's firmware swapped by the host: the signed
    // measurement does not match, nothing switches.
    fs::write(root.path().join("A").join(FIRMWARE), {
        let mut f = fw.clone();
        f[0] ^= 1;
        f
    })
    .unwrap();
    refused(root.path(), new.launch(), "measure to");
}

#[test]
fn a_partition_without_the_layout_is_refused_by_name() {
    let Some(fw) = firmware() else { return };
    let (id, author) = keys();
    let new = sign(&fw, "console=ttyS0", &id, &author);
    let root = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        install(root.path(), &new.launch(), |_| Ok(())).unwrap_err()
    );
    assert!(e.contains("snpguardctl embed"), "{e}");
    // A link pointing elsewhere.
    fs::create_dir(root.path().join("A")).unwrap();
    fs::create_dir(root.path().join("B")).unwrap();
    std::os::unix::fs::symlink("/etc", root.path().join(ACTIVE_LINK)).unwrap();
    let e = format!(
        "{:#}",
        install(root.path(), &new.launch(), |_| Ok(())).unwrap_err()
    );
    assert!(e.contains("not at a slot"), "{e}");
    // A firmware that is a link is not followed.
    fs::remove_file(root.path().join(ACTIVE_LINK)).unwrap();
    std::os::unix::fs::symlink("A", root.path().join(ACTIVE_LINK)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("A").join(FIRMWARE)).unwrap();
    let e = format!(
        "{:#}",
        install(root.path(), &new.launch(), |_| Ok(())).unwrap_err()
    );
    assert!(e.contains("firmware"), "{e}");
    assert_eq!(entries(&root.path().join("B")), 0);
}
