//! `init` + `launch` round trip: the blob's report verifies against the
//! platform's root with snpguard's verifier and carries the measurement
//! of what is actually booted.

use rand::{RngCore, SeedableRng};
use snpguard::certs::{CertSet, TrustAnchors};
use snpguard::idblock::{key_digest, IdAuth};
use snpguard::verify::{verify, Expectations};
use snpguard_protocol::bundle::{write_bundle, BundleSources, LaunchConfig};

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    bundle: PathBuf,
    measurement: [u8; 48],
    id_block: IdBlock,
    id_key_digest: [u8; 48],
    author_key_digest: [u8; 48],
}

const CMDLINE: &str = "console=ttyS0 root=/dev/mapper/snpguard_root";

/// A bundle as `register` writes it, for a synthetic AmdSev firmware.
/// `None` when the shared test data is absent.
fn fixture() -> Option<Fixture> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut fw = vec![0u8; 2 * 4096];
    rng.fill_bytes(&mut fw);
    fw.extend_from_slice(&suffix);
    let mut kernel = vec![0u8; 50_000];
    rng.fill_bytes(&mut kernel);
    let mut initrd = vec![0u8; 70_000];
    rng.fill_bytes(&mut initrd);
    let paths = |n: &str| dir.path().join(n);
    std::fs::write(paths("fw"), &fw).unwrap();
    std::fs::write(paths("kernel"), &kernel).unwrap();
    std::fs::write(paths("initrd"), &initrd).unwrap();
    let digest = launch_digest(&MeasureInput {
        ovmf: paths("fw"),
        ovmf_hash: None,
        kernel: Some(paths("kernel")),
        initrd: Some(paths("initrd")),
        cmdline: Some(CMDLINE.into()),
        vcpus: 2,
        vcpu_type: "EPYC-v4".parse().unwrap(),
        guest_features: 1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap();
    let id_key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let author_key = p384::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let id_block = IdBlock {
        launch_digest: digest,
        family_id: [0x11; 16],
        image_id: [0x22; 16],
        guest_svn: 3,
        policy: 0x30000,
    };
    let auth = IdAuth::sign(&id_block, &id_key, Some(&author_key)).unwrap();
    let config = LaunchConfig {
        version: snpguard_protocol::bundle::CONFIG_VERSION,
        name: "guest".into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        guest_policy: "0x30000".into(),
        guest_features: "0x1".into(),
        measurement: digest.to_string(),
        id_key_digest: hex::encode(key_digest(id_key.verifying_key())),
        author_key_digest: hex::encode(key_digest(author_key.verifying_key())),
        family_id: hex::encode([0x11; 16]),
        image_id: hex::encode([0x22; 16]),
        kernel_hashes: true,
        no_encryption: false,
    };
    let bundle = paths("bundle.tar.gz");
    write_bundle(
        std::fs::File::create(&bundle).unwrap(),
        &config,
        BundleSources {
            firmware: &mut &fw[..],
            firmware_len: fw.len() as u64,
            kernel: &mut &kernel[..],
            kernel_len: kernel.len() as u64,
            initrd: &mut &initrd[..],
            initrd_len: initrd.len() as u64,
            cmdline: CMDLINE,
            id_block: &id_block.to_bytes(),
            id_auth: auth.as_bytes(),
        },
    )
    .unwrap();
    Some(Fixture {
        measurement: *digest.as_bytes(),
        id_block,
        id_key_digest: key_digest(id_key.verifying_key()),
        author_key_digest: key_digest(author_key.verifying_key()),
        dir,
        bundle,
    })
}

fn verify_blob(blob: &SimLaunch, platform_dir: &Path, expect: Expectations) {
    let data = [0x5a; 64];
    let report = blob.report(&data).unwrap();
    let ark = std::fs::read(platform_dir.join("ark.pem")).unwrap();
    let (platform, _) = SimPlatform::load(platform_dir).unwrap();
    let anchors = TrustAnchors::amd()
        .unwrap()
        .with_test_root(platform.product, &ark)
        .unwrap();
    let certs = CertSet::from_cert_table(&blob.cert_table().unwrap()).unwrap();
    verify(
        &anchors,
        &report,
        &certs,
        &Expectations {
            report_data: Some(data),
            // Policy 0x30000 permits SMT, as the daemon tests register.
            allow_smt: true,
            ..expect
        },
        time::OffsetDateTime::now_utc(),
    )
    .unwrap_or_else(|e| panic!("report rejected: {:?}", e.codes()));
}

#[test]
fn init_then_launch_verifies_and_carries_the_booted_measurement() {
    let Some(f) = fixture() else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let plat = f.dir.path().join("platform");
    init(&plat, Product::Genoa).unwrap();
    assert!(
        init(&plat, Product::Genoa).is_err(),
        "init refuses to overwrite"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(plat.join("vcek-key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // As registered: the report carries the bundle's values and verifies.
    let blob = launch(&plat, &f.bundle, &Overrides::default()).unwrap();
    let blob = SimLaunch::from_json(&blob.to_json().unwrap()).unwrap();
    let v = blob.values().unwrap();
    assert_eq!(v.measurement, f.measurement);
    assert_eq!(v.image_id, f.id_block.image_id);
    assert_eq!(v.family_id, f.id_block.family_id);
    assert_eq!(v.guest_svn, 3);
    assert_eq!(v.policy, 0x30000);
    verify_blob(
        &blob,
        &plat,
        Expectations {
            measurement: Some(f.measurement),
            id_key_digest: Some(f.id_key_digest),
            author_key_digest: Some(f.author_key_digest),
            ..Expectations::default()
        },
    );

    // Booted with another initrd: still a valid report, with the
    // measurement of what was booted.
    let other = f.dir.path().join("initrd.tampered");
    let mut bytes = vec![0u8; 70_000];
    bytes[0] = 1;
    std::fs::write(&other, &bytes).unwrap();
    let tampered = launch(
        &plat,
        &f.bundle,
        &Overrides {
            initrd: Some(other.clone()),
            ..Overrides::default()
        },
    )
    .unwrap();
    let mv = tampered.values().unwrap().measurement;
    assert_ne!(mv, f.measurement);
    let tmp = tempfile::tempdir().unwrap();
    extract_bundle(
        std::fs::File::open(&f.bundle).unwrap(),
        tmp.path(),
        &ExtractLimits::default(),
    )
    .unwrap();
    let want = launch_digest(&MeasureInput {
        ovmf: tmp.path().join("firmware.fd"),
        ovmf_hash: None,
        kernel: Some(tmp.path().join("kernel")),
        initrd: Some(other),
        cmdline: Some(CMDLINE.into()),
        vcpus: 2,
        vcpu_type: "EPYC-v4".parse().unwrap(),
        guest_features: 1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap();
    assert_eq!(mv, *want.as_bytes());
    verify_blob(&tampered, &plat, Expectations::default());
}

#[test]
fn a_platform_with_a_foreign_key_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    init(&a, Product::Milan).unwrap();
    init(&b, Product::Milan).unwrap();
    std::fs::copy(b.join("vcek-key.pem"), a.join("vcek-key.pem")).unwrap();
    let e = SimPlatform::load(&a).unwrap_err().to_string();
    assert!(e.contains("does not belong"), "{e}");
}

#[test]
fn cli_parses() {
    use clap::CommandFactory as _;
    Cli::command().debug_assert();
    let c = Cli::try_parse_from(["snpguard-sim", "init", "--dir", "/d"]).unwrap();
    assert!(matches!(
        c.command,
        Command::Init {
            product: Product::Genoa,
            ..
        }
    ));
    assert!(
        Cli::try_parse_from(["snpguard-sim", "init", "--dir", "/d", "--product", "x"]).is_err()
    );
}

#[test]
fn stage_writes_what_register_reads_with_a_vmk_only_the_daemon_opens() {
    let Some(suffix) = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = seal::generate_keypair();
    std::fs::write(tmp.path().join("ingestion.pub"), public.to_bytes()).unwrap();
    std::fs::write(tmp.path().join("suffix.bin"), &suffix).unwrap();
    let dir = tmp.path().join("staging");
    stage(
        &dir,
        &tmp.path().join("ingestion.pub"),
        &tmp.path().join("suffix.bin"),
        "console=ttyS0",
    )
    .unwrap();
    let firmware = std::fs::read(dir.join("firmware.fd")).unwrap();
    assert!(firmware.ends_with(&suffix));
    assert_eq!(
        std::fs::read(dir.join("cmdline")).unwrap(),
        b"console=ttyS0"
    );
    let sealed =
        seal::SealedBox::from_bytes(&std::fs::read(dir.join("vmk.sealed")).unwrap()).unwrap();
    let vmk = seal::open(&secret, seal::INFO_INGEST, b"", &sealed).unwrap();
    assert_eq!(vmk.len(), 64);
    let (other, _) = seal::generate_keypair();
    assert!(seal::open(&other, seal::INFO_INGEST, b"", &sealed).is_err());
    // An existing directory is never overwritten.
    assert!(stage(
        &dir,
        &tmp.path().join("ingestion.pub"),
        &tmp.path().join("suffix.bin"),
        ""
    )
    .is_err());
}
