use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use snpguard::measure::{launch_digest, MeasureInput, VcpuType, VmmType};
use snpguard::verify::MinTcb;

use super::*;
use crate::secrets::MasterKeySource;

pub(super) const VMK: [u8; 64] =
    *b"VMK-PLAINTEXT-0123456789abcdef-VMK-PLAINTEXT-0123456789abcdef!!!";

/// Inputs on disk, reusable for several registrations.
pub(super) struct Inputs {
    _dir: tempfile::TempDir,
    pub(super) firmware: PathBuf,
    pub(super) kernel: PathBuf,
    pub(super) initrd: PathBuf,
}

pub(super) fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    random_bytes(&mut v).unwrap();
    v
}

pub(super) fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().write_all(data).unwrap();
    p
}

/// A synthetic AmdSev firmware (random pages before the real fixture's
/// SEV metadata suffix), a random kernel and initrd. `None` when the test
/// data set is absent outside CI.
pub(super) fn inputs_with(fixture: &str) -> Option<Inputs> {
    let suffix = snpguard_testkit::testdata::read(fixture)?;
    let dir = tempfile::tempdir().unwrap();
    let mut fw = random(3 * 4096);
    fw.extend_from_slice(&suffix);
    Some(Inputs {
        firmware: write(dir.path(), "firmware.fd", &fw),
        kernel: write(dir.path(), "vmlinuz", &random(100_000)),
        initrd: write(dir.path(), "initrd.img", &random(300_000)),
        _dir: dir,
    })
}

pub(super) fn inputs() -> Option<Inputs> {
    inputs_with("measurement/ovmf_AmdSev_suffix.bin")
}

pub(super) fn master() -> MasterKey {
    MasterKey::from_bytes(&[9; 32], MasterKeySource::Credential("/test".into()))
}

pub(super) fn open(state: &Path) -> Registry {
    Registry::open(state, master()).unwrap()
}

pub(super) fn request(reg: &Registry, inp: &Inputs, name: &str) -> RegisterRequest {
    let pk = seal::PublicKey::from_bytes(&reg.ingestion_public_key()).unwrap();
    let sealed = seal::seal(&pk, seal::INFO_INGEST, b"", &VMK).unwrap();
    RegisterRequest {
        name: name.into(),
        firmware: File::open(&inp.firmware).unwrap(),
        kernel: File::open(&inp.kernel).unwrap(),
        initrd: File::open(&inp.initrd).unwrap(),
        cmdline: "console=ttyS0 root=/dev/mapper/root".into(),
        vcpus: 4,
        vcpu_type: "EPYC-v4".into(),
        allow_smt: true,
        allow_debug: false,
        allow_migrate_ma: false,
        min_tcb: Some(MinTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        }),
        allow_test_root: false,
        allow_offline_unlock: false,
        sealed_vmk: sealed.to_bytes(),
    }
}

pub(super) fn blob_count(state: &Path) -> usize {
    fs::read_dir(state.join(BLOB_DIR)).unwrap().count()
}

fn invalid(r: Result<RecordInfo, ServiceError>, field: &str) -> String {
    match r {
        Err(ServiceError::InvalidInput(m)) => {
            assert!(m.starts_with(field), "{field}: {m}");
            m
        }
        other => panic!("{field}: expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn first_open_creates_keys_and_reopen_reuses_them() {
    let state = tempfile::tempdir().unwrap();
    let m = MasterKey::load_from(None, state.path()).unwrap();
    let reg = Registry::open(state.path(), m).unwrap();
    let key_file = state.path().join("master.key");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pub_file = fs::read(state.path().join(keys::INGESTION_PUB_FILE)).unwrap();
    assert_eq!(pub_file, reg.ingestion_public_key());
    assert_eq!(pub_file.len(), 32);
    assert!(state.path().join(keys::TLS_CERT_FILE).is_file());
    let summary = reg.key_summary().to_string();
    assert!(summary.contains("master.key (created)"), "{summary}");
    let first = reg.ingestion_public_key();
    drop(reg);

    let m = MasterKey::load_from(None, state.path()).unwrap();
    let reg = Registry::open(state.path(), m).unwrap();
    assert_eq!(reg.ingestion_public_key(), first);
    assert!(reg.key_summary().created.is_empty());
}

#[test]
fn group_readable_master_key_is_refused() {
    let state = tempfile::tempdir().unwrap();
    MasterKey::load_from(None, state.path()).unwrap();
    fs::set_permissions(
        state.path().join("master.key"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    assert!(matches!(
        MasterKey::load_from(None, state.path()),
        Err(SecretsError::Permissions { .. })
    ));
}

#[test]
fn register_measures_like_the_reference_and_signs_the_id_block() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let info = reg.register(request(&reg, &inp, "web")).unwrap();

    let expected = launch_digest(&MeasureInput {
        ovmf: inp.firmware.clone(),
        ovmf_hash: None,
        kernel: Some(inp.kernel.clone()),
        initrd: Some(inp.initrd.clone()),
        cmdline: Some("console=ttyS0 root=/dev/mapper/root".into()),
        vcpus: 4,
        vcpu_type: VcpuType::EpycV4,
        guest_features: 0x1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap();
    assert_eq!(info.measurement, expected.to_string());
    assert_eq!(info.policy, 0x30000);
    assert_eq!(info.id, info.image_id);
    assert_eq!(info.family_id, "736e7067756172640000000000000000");
    assert!(info.enabled);
    assert_eq!(info.min_tcb.unwrap().microcode, 115);
    assert_eq!(blob_count(state.path()), 3);

    // The stored ID block names this launch and verifies with the keys
    // the record reports.
    let rec = reg.load(&info.id).unwrap();
    let first = rec.newest_approved().unwrap();
    let block = hex::decode(first.id_block.as_ref().unwrap()).unwrap();
    let auth = hex::decode(first.id_auth.as_ref().unwrap()).unwrap();
    let digests = idblock::verify_id_auth(&block, &auth).unwrap();
    assert_eq!(hex::encode(digests.id_key), info.id_key_digest);
    assert_eq!(
        hex::encode(digests.author_key.unwrap()),
        info.author_key_digest
    );
    assert_eq!(info.author_key_digest, reg.key_summary().author_key_digest);
    let parsed = IdBlock::from_bytes(&block).unwrap();
    assert_eq!(parsed.launch_digest, expected);
    assert_eq!(parsed.policy, 0x30000);

    assert_eq!(&reg.record_vmk(&info.id).unwrap()[..], &VMK[..]);
}

#[test]
fn identical_inputs_give_the_same_measurement_and_share_blobs() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let a = reg.register(request(&reg, &inp, "a")).unwrap();
    let b = reg.register(request(&reg, &inp, "b")).unwrap();
    assert_eq!(a.measurement, b.measurement);
    assert_ne!(a.id, b.id);
    assert_ne!(a.id_key_digest, b.id_key_digest);
    assert_eq!(blob_count(state.path()), 3);
}

#[test]
fn policy_switches_change_policy_and_measurement_stays() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let mut req = request(&reg, &inp, "p");
    req.allow_smt = false;
    req.allow_debug = true;
    req.allow_migrate_ma = true;
    let info = reg.register(req).unwrap();
    assert_eq!(info.policy, 0x20000 | POLICY_DEBUG | POLICY_MIGRATE_MA);
}

#[test]
fn every_bad_input_gets_its_error() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let mk = |f: &dyn Fn(&mut RegisterRequest)| {
        let mut r = request(&reg, &inp, "ok-name");
        f(&mut r);
        reg.register(r)
    };
    invalid(mk(&|r| r.name = String::new()), "name:");
    invalid(mk(&|r| r.name = "has space".into()), "name:");
    invalid(mk(&|r| r.name = "x".repeat(65)), "name:");
    invalid(mk(&|r| r.vcpus = 0), "vcpus:");
    invalid(mk(&|r| r.vcpus = MAX_VCPUS + 1), "vcpus:");
    let m = invalid(mk(&|r| r.vcpu_type = "EPYC-v9".into()), "vcpu_type:");
    assert!(m.contains("EPYC-Milan") && m.contains("EPYC-v4"), "{m}");
    invalid(mk(&|r| r.vcpu_type = "E".repeat(10_000)), "vcpu_type:");
    invalid(mk(&|r| r.cmdline = "a\0b".into()), "cmdline:");
    invalid(mk(&|r| r.cmdline = "a".repeat(4097)), "cmdline:");
    invalid(
        mk(&|r| r.sealed_vmk = vec![0; MAX_SEALED_VMK + 1]),
        "sealed_vmk:",
    );
    assert!(matches!(
        mk(&|r| r.sealed_vmk = b"not a sealed box".to_vec()),
        Err(ServiceError::SealedKey(_))
    ));
    // Sealed to another daemon's key.
    let (_, other) = seal::generate_keypair();
    let foreign = seal::seal(&other, seal::INFO_INGEST, b"", &VMK).unwrap();
    assert!(matches!(
        mk(&|r| r.sealed_vmk = foreign.to_bytes()),
        Err(ServiceError::SealedKey(_))
    ));
    // Right key, wrong purpose.
    let pk = seal::PublicKey::from_bytes(&reg.ingestion_public_key()).unwrap();
    let wrong_info = seal::seal(&pk, b"other purpose", b"", &VMK).unwrap();
    assert!(matches!(
        mk(&|r| r.sealed_vmk = wrong_info.to_bytes()),
        Err(ServiceError::SealedKey(_))
    ));
    for len in [16, 31, 129] {
        let s = seal::seal(&pk, seal::INFO_INGEST, b"", &vec![1; len]).unwrap();
        invalid(mk(&|r| r.sealed_vmk = s.to_bytes()), "sealed_vmk:");
    }
    let empty = write(state.path(), "empty", b"");
    invalid(mk(&|r| r.kernel = File::open(&empty).unwrap()), "kernel:");
    invalid(
        mk(&|r| r.firmware = File::open(&empty).unwrap()),
        "firmware:",
    );
    let garbage = write(state.path(), "garbage", &random(8192));
    let m = invalid(
        mk(&|r| r.firmware = File::open(&garbage).unwrap()),
        "firmware",
    );
    assert!(!m.contains(BLOB_DIR), "{m}");
    let dir = mk(&|r| r.initrd = File::open(state.path()).unwrap());
    invalid(dir, "initrd:");

    // Nothing was registered and no blob was left behind.
    assert!(reg.list().unwrap().is_empty());
    assert_eq!(blob_count(state.path()), 0);
    reg.register(request(&reg, &inp, "ok-name")).unwrap();
}

#[test]
fn firmware_without_kernel_hashes_is_refused() {
    let Some(inp) = inputs_with("measurement/ovmf_OvmfX64_suffix.bin") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let m = invalid(reg.register(request(&reg, &inp, "x")), "firmware");
    assert!(m.contains("SNP_KERNEL_HASHES"), "{m}");
    assert!(m.contains("AmdSev"), "{m}");
}

#[test]
fn duplicate_name_already_exists() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    reg.register(request(&reg, &inp, "dup")).unwrap();
    assert!(matches!(
        reg.register(request(&reg, &inp, "dup")),
        Err(ServiceError::AlreadyExists(n)) if n == "dup"
    ));
    assert_eq!(reg.list().unwrap().len(), 1);
}

#[test]
fn reopen_finds_records_counters_and_flags() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let (a, b) = {
        let reg = open(state.path());
        let a = reg.register(request(&reg, &inp, "a")).unwrap();
        let b = reg.register(request(&reg, &inp, "b")).unwrap();
        reg.set_enabled(&b.id, false).unwrap();
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let none = &mut |_| Ok(Vec::new());
        reg.settle_attestation(&a.id, true, at, none).unwrap();
        reg.settle_attestation(&a.id, true, at, none).unwrap();
        let a = reg
            .settle_attestation(&a.id, false, at, none)
            .unwrap()
            .unwrap();
        assert_eq!((a.attestations_ok, a.attestations_failed), (2, 1));
        assert_eq!(a.last_attestation.as_deref(), Some("2023-11-14T22:13:20Z"));
        (a, reg.get(&b.id).unwrap())
    };
    let reg = open(state.path());
    assert_eq!(reg.list().unwrap(), vec![a.clone(), b.clone()]);
    assert!(!reg.get(&b.id).unwrap().enabled);
    assert_eq!(&reg.record_vmk(&a.id).unwrap()[..], &VMK[..]);
    // A disabled record's key is not released.
    assert!(matches!(
        reg.record_vmk(&b.id),
        Err(ServiceError::InvalidInput(_))
    ));
    reg.set_enabled(&b.id, true).unwrap();
    assert_eq!(&reg.record_vmk(&b.id).unwrap()[..], &VMK[..]);
}

#[test]
fn delete_removes_record_secrets_and_unreferenced_blobs() {
    let Some(inp) = inputs() else { return };
    let Some(other) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let a = reg.register(request(&reg, &inp, "a")).unwrap();
    let b = reg.register(request(&reg, &inp, "b")).unwrap();
    let c = reg.register(request(&reg, &other, "c")).unwrap();
    assert_eq!(blob_count(state.path()), 6);

    reg.delete(&a.id).unwrap();
    assert!(matches!(reg.get(&a.id), Err(ServiceError::NotFound(_))));
    assert!(matches!(reg.delete(&a.id), Err(ServiceError::NotFound(_))));
    assert_eq!(
        reg.store
            .get(Tree::Secrets, &secret_key(Purpose::Vmk, &a.id))
            .unwrap(),
        None
    );
    assert_eq!(
        reg.store
            .get(Tree::Secrets, &secret_key(Purpose::IdKey, &a.id))
            .unwrap(),
        None
    );
    // b still uses the blobs a had.
    assert_eq!(blob_count(state.path()), 6);
    reg.delete(&c.id).unwrap();
    assert_eq!(blob_count(state.path()), 3);
    reg.delete(&b.id).unwrap();
    assert_eq!(blob_count(state.path()), 0);
    // The name is free again.
    reg.register(request(&reg, &inp, "a")).unwrap();
}

#[test]
fn open_cleans_orphan_blobs_and_temp_files() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    {
        let reg = open(state.path());
        reg.register(request(&reg, &inp, "a")).unwrap();
    }
    // What a crash between writing blobs and committing leaves.
    let blobs = state.path().join(BLOB_DIR);
    fs::write(blobs.join("ab".repeat(32)), b"orphan").unwrap();
    fs::write(blobs.join(".tmp-deadbeef"), b"half").unwrap();
    let reg = open(state.path());
    assert_eq!(blob_count(state.path()), 3);
    assert_eq!(reg.list().unwrap().len(), 1);
}

#[test]
fn vmk_is_not_stored_in_plaintext() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    {
        let reg = open(state.path());
        reg.register(request(&reg, &inp, "a")).unwrap();
    }
    let mut files = vec![state.path().to_owned()];
    let mut seen = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = fs::read(&p).unwrap();
            seen += bytes.len();
            assert!(
                !bytes.windows(VMK.len()).any(|w| w == VMK),
                "plaintext VMK in {}",
                p.display()
            );
            assert!(!bytes.windows(16).any(|w| w == &VMK[..16]));
        }
    }
    assert!(seen > 0);
}

#[test]
fn swapped_sealed_vmks_do_not_open() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let a = reg.register(request(&reg, &inp, "a")).unwrap();
    let b = reg.register(request(&reg, &inp, "b")).unwrap();
    let ka = secret_key(Purpose::Vmk, &a.id);
    let kb = secret_key(Purpose::Vmk, &b.id);
    let sa = reg.store.get(Tree::Secrets, &ka).unwrap().unwrap();
    let sb = reg.store.get(Tree::Secrets, &kb).unwrap().unwrap();
    reg.store
        .transaction(&[
            Op::put(Tree::Secrets, ka.clone(), sb),
            Op::put(Tree::Secrets, kb, sa),
        ])
        .unwrap();
    assert!(matches!(
        reg.record_vmk(&a.id),
        Err(ServiceError::Storage(m)) if m.contains("does not open")
    ));
    assert!(reg.record_vmk(&b.id).is_err());
    // An ID key sealed value in the VMK slot does not open either.
    let id_key = reg
        .store
        .get(Tree::Secrets, &secret_key(Purpose::IdKey, &a.id))
        .unwrap()
        .unwrap();
    reg.store.put(Tree::Secrets, &ka, &id_key).unwrap();
    assert!(reg.record_vmk(&a.id).is_err());
}

#[test]
fn newer_schema_is_refused() {
    let state = tempfile::tempdir().unwrap();
    {
        let reg = open(state.path());
        reg.store
            .put(
                Tree::Meta,
                crate::store::SCHEMA_VERSION_KEY,
                &(crate::store::SCHEMA_VERSION + 1).to_be_bytes(),
            )
            .unwrap();
    }
    let err = Registry::open(state.path(), master()).unwrap_err();
    assert!(
        matches!(err, RegistryError::Store(StoreError::NewerSchema { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn wrong_master_key_is_refused_at_open() {
    let state = tempfile::tempdir().unwrap();
    drop(open(state.path()));
    let other = MasterKey::from_bytes(&[1; 32], MasterKeySource::Credential("/x".into()));
    assert!(matches!(
        Registry::open(state.path(), other),
        Err(RegistryError::Keys(KeysError::WrongMasterKey(_)))
    ));
}

#[test]
fn bad_ids_and_unknown_records() {
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    assert!(matches!(
        reg.get("../../etc"),
        Err(ServiceError::InvalidInput(_))
    ));
    let unknown = "0".repeat(32);
    assert!(matches!(reg.get(&unknown), Err(ServiceError::NotFound(_))));
    assert!(matches!(
        reg.set_enabled(&unknown, true),
        Err(ServiceError::NotFound(_))
    ));
    // Nothing to count: only the caller's writes are committed.
    assert!(matches!(
        reg.settle_attestation(&unknown, true, OffsetDateTime::now_utc(), &mut |_| Ok(
            Vec::new()
        )),
        Ok(None)
    ));
    assert!(matches!(reg.get(&unknown), Err(ServiceError::NotFound(_))));
    assert!(matches!(
        reg.export_bundle(&unknown, None, &mut Vec::new()),
        Err(ServiceError::NotFound(_))
    ));
}

#[test]
fn exported_bundle_holds_the_registered_launch() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let info = reg.register(request(&reg, &inp, "web")).unwrap();
    let mut tgz = Vec::new();
    reg.export_bundle(&info.id, None, &mut tgz).unwrap();
    let mut again = Vec::new();
    reg.export_bundle(&info.id, None, &mut again).unwrap();
    assert_eq!(tgz, again, "export is deterministic");

    let out = tempfile::tempdir().unwrap();
    let config =
        bundle::extract_bundle(&tgz[..], out.path(), &bundle::ExtractLimits::default()).unwrap();
    assert_eq!(config.name, "web");
    assert_eq!(config.measurement, info.measurement);
    assert_eq!(config.guest_policy, "0x30000");
    assert_eq!(config.guest_features, "0x1");
    assert_eq!(config.vcpus, 4);
    assert_eq!(config.vcpu_type, "EPYC-v4");
    assert_eq!(config.image_id, info.image_id);
    assert_eq!(config.id_key_digest, info.id_key_digest);
    assert_eq!(
        fs::read(out.path().join(bundle::KERNEL)).unwrap(),
        fs::read(&inp.kernel).unwrap()
    );
    assert_eq!(
        fs::read(out.path().join(bundle::FIRMWARE)).unwrap(),
        fs::read(&inp.firmware).unwrap()
    );
    assert_eq!(
        fs::read_to_string(out.path().join(bundle::CMDLINE)).unwrap(),
        info.cmdline
    );
    // The bundle's files measure to the record's digest.
    let digest = launch_digest(&MeasureInput {
        ovmf: out.path().join(bundle::FIRMWARE),
        ovmf_hash: None,
        kernel: Some(out.path().join(bundle::KERNEL)),
        initrd: Some(out.path().join(bundle::INITRD)),
        cmdline: Some(info.cmdline.clone()),
        vcpus: 4,
        vcpu_type: VcpuType::EpycV4,
        guest_features: 0x1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap();
    assert_eq!(digest.to_string(), info.measurement);
    idblock::verify_id_auth(
        &fs::read(out.path().join(bundle::ID_BLOCK)).unwrap(),
        &fs::read(out.path().join(bundle::ID_AUTH)).unwrap(),
    )
    .unwrap();
}

#[test]
fn concurrent_registrations_of_one_name_yield_one_record() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let req = request(&reg, &inp, "same");
                let reg = &reg;
                s.spawn(move || reg.register(req))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, ServiceError::AlreadyExists(_))));
    assert_eq!(reg.list().unwrap().len(), 1);
    assert_eq!(blob_count(state.path()), 3);
}

#[test]
fn audit_trail_reads_what_the_attestor_appended_and_survives_reopen() {
    use crate::audit::AuditLog;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let entry = |i: u32| AuditEntry {
        time: format!("t{i}"),
        peer: "127.0.0.1:1".into(),
        record: (i % 2 == 0).then(|| format!("rec{i}")),
        launch: None,
        result: if i % 2 == 0 {
            "ok".into()
        } else {
            "measurement".into()
        },
        codes: vec![],
        detail: String::new(),
        measurement: None,
        reported_tcb: None,
        chip_id_prefix: None,
        cert_source: None,
        notes: vec![],
    };
    {
        let reg = open(&state);
        assert!(reg.audit_trail(10).unwrap().is_empty());
        let log = AuditLog::open(reg.store()).unwrap();
        for i in 0..4 {
            let ops = log.stage(reg.store(), &entry(i), true).unwrap();
            reg.store().transaction(&ops).unwrap();
        }
        let last2 = reg.audit_trail(2).unwrap();
        assert_eq!(last2, [entry(2), entry(3)]);
    }
    let reg = open(&state);
    let all = reg.audit_trail(100).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], entry(0));
}

#[test]
fn allow_test_root_needs_a_configured_test_root() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let reg = open(&state);
        let mut req = request(&reg, &inp, "sim");
        req.allow_test_root = true;
        let e = reg.register(req).unwrap_err();
        assert!(
            matches!(&e, ServiceError::InvalidInput(m) if m.starts_with("allow_test_root:")
                && m.contains("[[test_roots]]")),
            "{e}"
        );
        assert!(reg.list().unwrap().is_empty(), "nothing registered");
        let plain = reg.register(request(&reg, &inp, "prod")).unwrap();
        assert!(!plain.allow_test_root);
    }
    let options = RegistryOptions {
        test_roots: true,
        ..RegistryOptions::default()
    };
    let reg = Registry::open_with(&state, master(), &options).unwrap();
    let mut req = request(&reg, &inp, "sim");
    req.allow_test_root = true;
    let sim = reg.register(req).unwrap();
    assert!(sim.allow_test_root);
    drop(reg);
    // Stored with the record.
    let reg = open(&state);
    assert!(reg.get(&sim.id).unwrap().allow_test_root);
}

#[test]
fn a_record_stored_before_allow_test_root_existed_refuses_test_roots() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reg = open(&state);
    let rec = reg.register(request(&reg, &inp, "old")).unwrap();
    let raw = reg
        .store()
        .get(Tree::Records, rec.id.as_bytes())
        .unwrap()
        .unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert!(json
        .as_object_mut()
        .unwrap()
        .remove("allow_test_root")
        .is_some());
    reg.store()
        .put(
            Tree::Records,
            rec.id.as_bytes(),
            &serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
    assert!(!reg.get(&rec.id).unwrap().allow_test_root);
}

#[test]
fn offline_unlock_is_registered_and_changed_durably() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (plain, allowed) = {
        let reg = open(&state);
        let plain = reg.register(request(&reg, &inp, "plain")).unwrap();
        assert!(!plain.offline_unlock, "off unless asked for");
        let mut req = request(&reg, &inp, "allowed");
        req.allow_offline_unlock = true;
        let allowed = reg.register(req).unwrap();
        assert!(allowed.offline_unlock);

        let on = reg.set_offline_unlock(&plain.id, true).unwrap();
        assert!(on.offline_unlock);
        assert!(on.enabled, "nothing else changes");
        assert_eq!(on.min_tcb, plain.min_tcb);
        // Setting the value it has is no error and changes nothing.
        assert!(
            reg.set_offline_unlock(&plain.id, true)
                .unwrap()
                .offline_unlock
        );
        assert!(
            !reg.set_offline_unlock(&allowed.id, false)
                .unwrap()
                .offline_unlock
        );
        assert!(matches!(
            reg.set_offline_unlock(&"0".repeat(32), true),
            Err(ServiceError::NotFound(_))
        ));
        invalid(reg.set_offline_unlock("web", true), "id:");
        (plain.id, allowed.id)
    };
    // Stored with the record.
    let reg = open(&state);
    assert!(reg.get(&plain).unwrap().offline_unlock);
    assert!(!reg.get(&allowed).unwrap().offline_unlock);
    // Enabling and disabling leave it as it is.
    assert!(reg.set_enabled(&plain, false).unwrap().offline_unlock);
}

#[test]
fn a_record_stored_before_offline_unlock_existed_has_it_off() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reg = open(&state);
    let mut req = request(&reg, &inp, "old");
    req.allow_offline_unlock = true;
    let rec = reg.register(req).unwrap();
    let raw = reg
        .store()
        .get(Tree::Records, rec.id.as_bytes())
        .unwrap()
        .unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(json["offline_unlock"], true, "stored under this name");
    assert!(json
        .as_object_mut()
        .unwrap()
        .remove("offline_unlock")
        .is_some());
    reg.store()
        .put(
            Tree::Records,
            rec.id.as_bytes(),
            &serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
    assert!(!reg.get(&rec.id).unwrap().offline_unlock);
    // And it can be turned on like on any other record.
    assert!(
        reg.set_offline_unlock(&rec.id, true)
            .unwrap()
            .offline_unlock
    );
}

#[test]
fn set_min_tcb_replaces_the_record_minimum_durably() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let id = {
        let reg = open(&state);
        let mut req = request(&reg, &inp, "web");
        req.min_tcb = None;
        let rec = reg.register(req).unwrap();
        assert_eq!(rec.min_tcb, None);
        let min = MinTcb {
            bootloader: 4,
            tee: 1,
            snp: 24,
            microcode: 213,
            fmc: None,
        };
        let info = reg.set_min_tcb(&rec.id, min).unwrap();
        assert_eq!(info.min_tcb, Some(min));
        assert!(matches!(
            reg.set_min_tcb(&"0".repeat(32), min),
            Err(ServiceError::NotFound(_))
        ));
        rec.id
    };
    let reg = open(&state);
    assert_eq!(reg.get(&id).unwrap().min_tcb.map(|t| t.snp), Some(24));
}
