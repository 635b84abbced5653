//! The launches of a record: add (measured with the record's firmware,
//! vCPUs and policy), approve (signed), retire, discard, dedupe, limits,
//! bundles of a given launch, persistence and the v1 → v2 migration.

use std::fs::{self, File};
use std::io::Cursor;
use std::path::Path;

use snpguard::measure::{launch_digest, MeasureInput, VcpuType, VmmType};

use super::tests::{blob_count, inputs, open, random, request, write, Inputs};
use super::*;
use crate::store::SCHEMA_VERSION_KEY;

const NEW_CMDLINE: &str = "console=ttyS0 root=/dev/mapper/root quiet";

/// A new kernel and initrd in `dir`.
fn new_artifacts(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        write(dir, "vmlinuz-new", &random(90_000)),
        write(dir, "initrd-new", &random(200_000)),
    )
}

fn launch_req(kernel: &Path, initrd: &Path, cmdline: &str) -> LaunchRequest {
    LaunchRequest {
        kernel: Box::new(File::open(kernel).unwrap()),
        initrd: Box::new(File::open(initrd).unwrap()),
        cmdline: cmdline.into(),
        origin: launch_origin::OPERATOR.into(),
    }
}

/// What sev-snp-measure's algorithm gives for the record's firmware and
/// these artifacts (the record has 4 EPYC-v4 vCPUs).
fn expected(inp: &Inputs, kernel: &Path, initrd: &Path, cmdline: &str) -> String {
    launch_digest(&MeasureInput {
        ovmf: inp.firmware.clone(),
        ovmf_hash: None,
        kernel: Some(kernel.to_owned()),
        initrd: Some(initrd.to_owned()),
        cmdline: Some(cmdline.into()),
        vcpus: 4,
        vcpu_type: VcpuType::EpycV4,
        guest_features: 0x1,
        vmm_type: VmmType::Qemu,
    })
    .unwrap()
    .to_string()
}

fn state_of(info: &RecordInfo, launch: &str) -> LaunchState {
    info.launches
        .iter()
        .find(|l| l.id == launch)
        .unwrap_or_else(|| panic!("no launch {launch} in {:?}", info.launches))
        .state
}

/// Exports a bundle and returns its launch config and extracted dir.
fn bundle_of(
    reg: &Registry,
    id: &str,
    launch: Option<&str>,
) -> Result<(bundle::LaunchConfig, tempfile::TempDir), ServiceError> {
    let mut tgz = Vec::new();
    reg.export_bundle(id, launch, &mut tgz)?;
    let out = tempfile::tempdir().unwrap();
    let cfg =
        bundle::extract_bundle(&tgz[..], out.path(), &bundle::ExtractLimits::default()).unwrap();
    Ok((cfg, out))
}

#[test]
fn add_approve_retire_discard() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    let old = rec.measurement.clone();
    assert_eq!(rec.launches.len(), 1);
    assert_eq!(rec.launches[0].state, LaunchState::Approved);
    assert_eq!(rec.launches[0].origin, "registration");

    let dir = tempfile::tempdir().unwrap();
    let (k, i) = new_artifacts(dir.path());
    let added = reg
        .add_launch(&rec.id, launch_req(&k, &i, NEW_CMDLINE))
        .unwrap();
    assert!(added.created);
    assert_eq!(added.launch, "2");
    assert_eq!(added.measurement, expected(&inp, &k, &i, NEW_CMDLINE));
    assert_ne!(added.measurement, old);
    let info = added.record;
    assert_eq!(state_of(&info, "2"), LaunchState::Pending);
    assert_eq!(info.launches[1].origin, "operator");
    assert_eq!(info.launches[1].cmdline, NEW_CMDLINE);
    // Pending: the record's current launch and bundle are unchanged, and
    // the pending launch has no bundle.
    assert_eq!(info.measurement, old);
    assert_eq!(bundle_of(&reg, &rec.id, None).unwrap().0.measurement, old);
    assert!(matches!(
        bundle_of(&reg, &rec.id, Some("2")),
        Err(ServiceError::LaunchState(_))
    ));
    assert_eq!(blob_count(state.path()), 5);

    // Approve: signed for the new measurement with the record's keys.
    let info = reg.approve_launch(&rec.id, "2").unwrap();
    assert_eq!(state_of(&info, "2"), LaunchState::Approved);
    assert_eq!(info.measurement, added.measurement);
    assert_eq!(info.cmdline, NEW_CMDLINE);
    assert_eq!(
        (info.id_key_digest.clone(), info.image_id.clone()),
        (rec.id_key_digest.clone(), rec.image_id.clone())
    );
    let (cfg, out) = bundle_of(&reg, &rec.id, None).unwrap();
    assert_eq!(cfg.measurement, added.measurement);
    assert_eq!(
        fs::read(out.path().join(bundle::KERNEL)).unwrap(),
        fs::read(&k).unwrap()
    );
    let block = fs::read(out.path().join(bundle::ID_BLOCK)).unwrap();
    let digests =
        idblock::verify_id_auth(&block, &fs::read(out.path().join(bundle::ID_AUTH)).unwrap())
            .unwrap();
    assert_eq!(hex::encode(digests.id_key), rec.id_key_digest);
    assert_eq!(
        hex::encode(digests.author_key.unwrap()),
        rec.author_key_digest
    );
    let parsed = IdBlock::from_bytes(&block).unwrap();
    assert_eq!(parsed.launch_digest.to_string(), added.measurement);
    assert_eq!(hex::encode(parsed.image_id), rec.image_id);
    assert_eq!(parsed.policy, rec.policy);
    // The old launch's bundle is still there on request.
    assert_eq!(
        bundle_of(&reg, &rec.id, Some("1")).unwrap().0.measurement,
        old
    );
    assert!(matches!(
        reg.approve_launch(&rec.id, "2"),
        Err(ServiceError::LaunchState(_))
    ));

    // Retire the old launch; the new one cannot be retired after it.
    let info = reg.retire_launch(&rec.id, "1").unwrap();
    assert_eq!(state_of(&info, "1"), LaunchState::Retired);
    assert!(info.launches[0].retired.is_some());
    match reg.retire_launch(&rec.id, "2") {
        Err(ServiceError::LastApprovedLaunch(m)) => assert!(m.contains("only approved"), "{m}"),
        other => panic!("retired the last approved launch: {other:?}"),
    }
    assert!(matches!(
        reg.retire_launch(&rec.id, "1"),
        Err(ServiceError::LaunchState(_))
    ));
    assert!(matches!(
        reg.discard_launch(&rec.id, "2"),
        Err(ServiceError::LaunchState(_))
    ));
    for bad in ["9", "x", ""] {
        assert!(
            matches!(
                reg.approve_launch(&rec.id, bad),
                Err(ServiceError::NotFound(_))
            ),
            "{bad:?}"
        );
    }

    // A retired launch can be approved again (a rollback) and is then
    // the newest approved one.
    let info = reg.approve_launch(&rec.id, "1").unwrap();
    assert_eq!(info.measurement, old);
    let info = reg.retire_launch(&rec.id, "1").unwrap();
    assert_eq!(info.measurement, added.measurement);

    // Discarding a retired launch removes it and its blobs.
    let info = reg.discard_launch(&rec.id, "1").unwrap();
    assert_eq!(info.launches.len(), 1);
    assert_eq!(blob_count(state.path()), 3);
    assert!(matches!(
        reg.export_bundle(&rec.id, Some("1"), &mut Vec::new()),
        Err(ServiceError::NotFound(_))
    ));

    // Everything survives a reopen (which collects unreferenced blobs).
    drop(reg);
    let reg = open(state.path());
    let info = reg.get(&rec.id).unwrap();
    assert_eq!(info.measurement, added.measurement);
    assert_eq!(
        bundle_of(&reg, &rec.id, None).unwrap().0.measurement,
        added.measurement
    );
}

#[test]
fn the_same_artifacts_are_one_launch() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    // The registered artifacts again: launch 1.
    let again = reg
        .add_launch(
            &rec.id,
            launch_req(
                &inp.kernel,
                &inp.initrd,
                "console=ttyS0 root=/dev/mapper/root",
            ),
        )
        .unwrap();
    assert_eq!((again.launch.as_str(), again.created), ("1", false));
    assert_eq!(again.record.launches.len(), 1);

    let dir = tempfile::tempdir().unwrap();
    let (k, i) = new_artifacts(dir.path());
    let first = reg
        .add_launch(&rec.id, launch_req(&k, &i, NEW_CMDLINE))
        .unwrap();
    let second = reg
        .add_launch(&rec.id, launch_req(&k, &i, NEW_CMDLINE))
        .unwrap();
    assert!(first.created && !second.created);
    assert_eq!(first.launch, second.launch);
    assert_eq!(second.record.launches.len(), 2);
    assert_eq!(blob_count(state.path()), 5);
    // From bytes (as a guest sends them): the same launch too.
    let bytes = reg
        .add_launch(
            &rec.id,
            LaunchRequest {
                kernel: Box::new(Cursor::new(fs::read(&k).unwrap())),
                initrd: Box::new(Cursor::new(fs::read(&i).unwrap())),
                cmdline: NEW_CMDLINE.into(),
                origin: launch_origin::guest("192.0.2.7".parse().unwrap()),
            },
        )
        .unwrap();
    assert_eq!((bytes.launch, bytes.created), (first.launch, false));
}

#[test]
fn pending_launches_are_limited_and_ids_never_reused() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = new_artifacts(dir.path());
    let max = snpguard_protocol::attest::MAX_PENDING_LAUNCHES;
    for n in 0..max {
        let a = reg
            .add_launch(&rec.id, launch_req(&k, &i, &format!("{NEW_CMDLINE} n={n}")))
            .unwrap();
        assert_eq!(a.launch, (n + 2).to_string());
    }
    let blobs = blob_count(state.path());
    match reg.add_launch(&rec.id, launch_req(&k, &i, "one too many")) {
        Err(ServiceError::TooManyPending(m)) => {
            assert!(m.contains("approve or discard"), "{m}");
            assert!(m.contains("2, 3, 4, 5"), "{m}");
        }
        other => panic!("a fifth pending launch: {other:?}"),
    }
    assert_eq!(blob_count(state.path()), blobs);
    reg.discard_launch(&rec.id, "5").unwrap();
    let a = reg.add_launch(&rec.id, launch_req(&k, &i, "next")).unwrap();
    assert_eq!(a.launch, "6", "a discarded launch's id is not reused");
}

#[test]
fn bad_launch_inputs_are_refused_and_store_nothing() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let reg = open(state.path());
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = new_artifacts(dir.path());
    let empty = write(dir.path(), "empty", b"");
    let cases = [
        (launch_req(&empty, &i, ""), "kernel"),
        (launch_req(&k, &i, &"x".repeat(5000)), "cmdline"),
        (launch_req(&k, &i, "a\0b"), "cmdline"),
    ];
    for (req, field) in cases {
        match reg.add_launch(&rec.id, req) {
            Err(ServiceError::InvalidInput(m)) => assert!(m.starts_with(field), "{m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(matches!(
        reg.add_launch(&"0".repeat(32), launch_req(&k, &i, "")),
        Err(ServiceError::NotFound(_))
    ));
    assert_eq!(reg.get(&rec.id).unwrap().launches.len(), 1);
    assert_eq!(blob_count(state.path()), 3);
}

/// A database written by the previous version (schema 1, record v1) is
/// migrated on open: the record keeps its launch, which attests and
/// exports as before, and new launches can be added.
#[test]
fn a_v1_record_is_migrated_to_launches() {
    let Some(inp) = inputs() else { return };
    let state = tempfile::tempdir().unwrap();
    let (id, info, bundle_before) = {
        let reg = open(state.path());
        let info = reg.register(request(&reg, &inp, "web")).unwrap();
        let mut tgz = Vec::new();
        reg.export_bundle(&info.id, None, &mut tgz).unwrap();
        // Rewrite the record as version 1 wrote it.
        let v2: serde_json::Value = serde_json::from_slice(
            &reg.store
                .get(Tree::Records, info.id.as_bytes())
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let mut v1 = v2.as_object().unwrap().clone();
        let launch = v1.remove("launches").unwrap()[0].clone();
        for k in ["next_launch", "next_approval"] {
            v1.remove(k);
        }
        v1.insert("v".into(), 1.into());
        for k in [
            "measurement",
            "kernel",
            "initrd",
            "cmdline",
            "id_block",
            "id_auth",
        ] {
            v1.insert(k.into(), launch[k].clone());
        }
        reg.store
            .put(
                Tree::Records,
                info.id.as_bytes(),
                &serde_json::to_vec(&v1).unwrap(),
            )
            .unwrap();
        reg.store
            .put(Tree::Meta, SCHEMA_VERSION_KEY, &1u32.to_be_bytes())
            .unwrap();
        assert!(matches!(reg.get(&info.id), Err(ServiceError::Storage(_))));
        (info.id.clone(), info, tgz)
    };
    let reg = open(state.path());
    let migrated = reg.get(&id).unwrap();
    assert_eq!(migrated, info);
    let mut tgz = Vec::new();
    reg.export_bundle(&id, None, &mut tgz).unwrap();
    assert_eq!(tgz, bundle_before);
    assert_eq!(
        reg.record_vmk(&id).unwrap().as_slice(),
        &super::tests::VMK[..]
    );
    let dir = tempfile::tempdir().unwrap();
    let (k, i) = new_artifacts(dir.path());
    let a = reg
        .add_launch(&id, launch_req(&k, &i, NEW_CMDLINE))
        .unwrap();
    assert_eq!(a.launch, "2");
    reg.approve_launch(&id, "2").unwrap();
}

/// The release decision, re-checked at release time under the commit
/// lock: enabled, approved, same measurement; each refusal typed.
#[test]
fn release_is_one_decision_with_typed_refusals() {
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let reg = open(&state);
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    let first = rec.measurement.clone();
    let at = time::OffsetDateTime::now_utc();

    let release = |m: &str| {
        reg.release(&rec.id, m, at, |vmk| Ok(vmk.to_vec()), &mut |_| {
            Ok(Vec::new())
        })
    };
    let r = release(&first).unwrap();
    assert_eq!(&r.sealed[..], &super::tests::VMK[..]);
    assert_eq!(r.record.attestations_ok, 1, "counted in the same step");
    assert!(r.record.last_attestation.is_some());

    // A pending launch: not released.
    let (k, i) = new_artifacts(dir.path());
    let added = reg
        .add_launch(&rec.id, launch_req(&k, &i, NEW_CMDLINE))
        .unwrap();
    let code = |e: ReleaseRefusal| e.code();
    assert_eq!(
        release(&added.measurement).map(|_| ()).map_err(code),
        Err(Some("launch-pending"))
    );
    // Approved, then the first one retired: only the new one releases.
    reg.approve_launch(&rec.id, &added.launch).unwrap();
    reg.retire_launch(&rec.id, "1").unwrap();
    let e = release(&first).unwrap_err();
    assert!(
        matches!(&e, ReleaseRefusal::LaunchNotApproved { launch, state: LaunchState::Retired, .. } if launch == "1"),
        "{e:?}"
    );
    assert_eq!(e.code(), Some("launch-retired"));
    assert!(release(&added.measurement).is_ok());
    // A measurement of no launch.
    let e = release(&"ab".repeat(48)).unwrap_err();
    assert_eq!(e.code(), Some("measurement-mismatch"), "{e:?}");
    // Disabled, then deleted.
    reg.set_enabled(&rec.id, false).unwrap();
    let e = release(&added.measurement).unwrap_err();
    assert!(matches!(e, ReleaseRefusal::Disabled(_)), "{e:?}");
    assert_eq!(e.code(), Some("record-disabled"));
    reg.delete(&rec.id).unwrap();
    let e = release(&added.measurement).unwrap_err();
    assert!(matches!(e, ReleaseRefusal::Deleted(_)), "{e:?}");
    assert_eq!(e.code(), Some("unknown-image"));
    // Not a decision: an internal failure, typed apart.
    assert!(matches!(
        reg.release("not-an-id", &first, at, |_| Ok(()), &mut |_| Ok(Vec::new())),
        Err(ReleaseRefusal::Failed(_))
    ));
}

/// A release is one transaction with the caller's writes (the nonce's
/// outcome, the audit entry): both land, or neither does, and the key is
/// sealed only for a decision that committed.
#[test]
fn release_commits_with_its_companion_writes_or_not_at_all() {
    use crate::store::{Op, Tree};
    let Some(inp) = inputs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir.path().join("state"));
    let rec = reg.register(request(&reg, &inp, "web")).unwrap();
    let at = time::OffsetDateTime::now_utc();

    let mut attempts = Vec::new();
    let r = reg
        .release(&rec.id, &rec.measurement, at, |_| Ok(()), &mut |first| {
            attempts.push(first);
            Ok(vec![Op::put(
                Tree::Meta,
                b"companion".to_vec(),
                b"1".to_vec(),
            )])
        })
        .unwrap();
    assert_eq!(attempts, [true]);
    assert_eq!(r.record.attestations_ok, 1);
    assert_eq!(
        reg.store()
            .get(Tree::Meta, b"companion")
            .unwrap()
            .as_deref(),
        Some(&b"1"[..])
    );

    // A companion whose precondition never holds: every attempt conflicts,
    // nothing is counted, nothing is written, nothing is released.
    let mut attempts = 0;
    let e = reg
        .release(&rec.id, &rec.measurement, at, |_| Ok(()), &mut |_| {
            attempts += 1;
            Ok(vec![
                Op::expect(Tree::Meta, b"companion".to_vec(), Some(b"other".to_vec())),
                Op::put(Tree::Meta, b"companion".to_vec(), b"2".to_vec()),
            ])
        })
        .unwrap_err();
    assert!(matches!(e, ReleaseRefusal::Failed(_)), "{e:?}");
    assert_eq!(attempts, crate::store::CONFLICT_RETRIES + 1, "retried");
    assert_eq!(reg.get(&rec.id).unwrap().attestations_ok, 1);
    assert_eq!(
        reg.store()
            .get(Tree::Meta, b"companion")
            .unwrap()
            .as_deref(),
        Some(&b"1"[..])
    );

    // The same for a refusal's count.
    let e = reg
        .settle_attestation(&rec.id, false, at, &mut |_| {
            Ok(vec![Op::expect(
                Tree::Meta,
                b"absent".to_vec(),
                Some(Vec::new()),
            )])
        })
        .unwrap_err();
    assert!(matches!(e, ServiceError::Storage(_)), "{e:?}");
    assert_eq!(reg.get(&rec.id).unwrap().attestations_failed, 0);
}
