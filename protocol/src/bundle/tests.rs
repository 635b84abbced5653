//! Round trips, determinism and hostile archives.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::*;
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};

fn config() -> LaunchConfig {
    LaunchConfig {
        version: 1,
        name: "debian-13".into(),
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

struct Inputs {
    firmware: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: String,
    id_block: Vec<u8>,
    id_auth: Vec<u8>,
}

fn inputs() -> Inputs {
    Inputs {
        firmware: (0..5000u32).map(|i| (i % 251) as u8).collect(),
        kernel: (0..70_000u32).map(|i| (i % 241) as u8).collect(),
        initrd: (0..1234u32).map(|i| (i % 7) as u8).collect(),
        cmdline: "console=ttyS0 root=/dev/mapper/root".into(),
        id_block: vec![0x11; ID_BLOCK_SIZE],
        id_auth: vec![0x22; ID_AUTH_SIZE],
    }
}

fn write(cfg: &LaunchConfig, i: &Inputs) -> Result<Vec<u8>, BundleError> {
    let mut out = Vec::new();
    write_bundle(
        &mut out,
        cfg,
        BundleSources {
            firmware: &mut i.firmware.as_slice(),
            firmware_len: i.firmware.len() as u64,
            kernel: &mut i.kernel.as_slice(),
            kernel_len: i.kernel.len() as u64,
            initrd: &mut i.initrd.as_slice(),
            initrd_len: i.initrd.len() as u64,
            cmdline: &i.cmdline,
            id_block: &i.id_block,
            id_auth: &i.id_auth,
        },
    )?;
    Ok(out)
}

fn empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).expect("read_dir").next().is_none()
}

fn extract(
    bytes: &[u8],
    limits: &ExtractLimits,
) -> (tempfile::TempDir, Result<LaunchConfig, BundleError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = extract_bundle(bytes, dir.path(), limits);
    (dir, result)
}

/// Extracts and asserts failure left the directory empty.
fn extract_err(bytes: &[u8], limits: &ExtractLimits) -> BundleError {
    let (dir, result) = extract(bytes, limits);
    let err = match result {
        Ok(cfg) => panic!("extraction succeeded: {cfg:?}"),
        Err(e) => e,
    };
    assert!(empty_dir(dir.path()), "files left after {err}");
    err
}

// Hand-built archives ------------------------------------------------

struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    declared: u64,
    data: &'a [u8],
    link: Option<&'a [u8]>,
}

fn reg<'a>(name: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        name: name.as_bytes(),
        kind: EntryType::Regular,
        declared: data.len() as u64,
        data,
        link: None,
    }
}

fn raw_tar(entries: &[Raw<'_>], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        if let Some(link) = e.link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(e.kind);
        h.set_size(e.declared);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if end {
        out.resize(out.len() + 1024, 0);
    }
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

fn good_json() -> Vec<u8> {
    serde_json::to_vec(&config()).expect("json")
}

/// The seven valid members, as (name, data).
fn good_members() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (LAUNCH_CONFIG, good_json()),
        (FIRMWARE, vec![1; 100]),
        (KERNEL, vec![2; 600]),
        (INITRD, vec![3; 50]),
        (CMDLINE, b"console=ttyS0".to_vec()),
        (ID_BLOCK, vec![4; ID_BLOCK_SIZE]),
        (ID_AUTH, vec![5; ID_AUTH_SIZE]),
    ]
}

fn archive_with(extra: Vec<Raw<'_>>, skip: &[&str]) -> Vec<u8> {
    let members = good_members();
    let mut entries: Vec<Raw<'_>> = members
        .iter()
        .filter(|(n, _)| !skip.contains(n))
        .map(|(n, d)| reg(n, d))
        .collect();
    entries.extend(extra);
    gz(&raw_tar(&entries, true))
}

fn small_limits() -> ExtractLimits {
    ExtractLimits {
        max_member: 8192,
        max_total: 64 * 1024,
        max_config: 4096,
    }
}

// Round trip and determinism -------------------------------------------

#[test]
fn round_trip() {
    let i = inputs();
    let bytes = write(&config(), &i).expect("write");
    let (dir, result) = extract(&bytes, &ExtractLimits::default());
    assert_eq!(result.expect("extract"), config());
    let read = |n: &str| fs::read(dir.path().join(n)).expect("read");
    assert_eq!(read(FIRMWARE), i.firmware);
    assert_eq!(read(KERNEL), i.kernel);
    assert_eq!(read(INITRD), i.initrd);
    assert_eq!(read(CMDLINE), i.cmdline.as_bytes());
    assert_eq!(read(ID_BLOCK), i.id_block);
    assert_eq!(read(ID_AUTH), i.id_auth);
    let cfg: LaunchConfig = serde_json::from_slice(&read(LAUNCH_CONFIG)).expect("json");
    assert_eq!(cfg, config());
    for m in MEMBERS {
        let meta = fs::symlink_metadata(dir.path().join(m)).expect("meta");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{m}");
    }
    assert_eq!(
        fs::read_dir(dir.path()).expect("dir").count(),
        MEMBERS.len()
    );
}

#[test]
fn the_no_encryption_label_is_written_only_when_set_and_survives_a_round_trip() {
    // The daemon's bundles carry no such field: their bytes are as before.
    let daemon = serde_json::to_string(&config()).unwrap();
    assert!(!daemon.contains("no_encryption"), "{daemon}");
    let local = LaunchConfig {
        no_encryption: true,
        ..config()
    };
    let json = serde_json::to_string(&local).unwrap();
    assert!(json.contains("\"no_encryption\":true"), "{json}");
    let bytes = write(&local, &inputs()).expect("write");
    let (_dir, result) = extract(&bytes, &ExtractLimits::default());
    assert!(result.expect("extract").no_encryption);
    // An explicit false reads as absent; anything but a boolean is refused.
    let mut v: serde_json::Value = serde_json::from_str(&daemon).unwrap();
    v["no_encryption"] = serde_json::json!(false);
    assert_eq!(
        serde_json::from_value::<LaunchConfig>(v.clone()).unwrap(),
        config()
    );
    v["no_encryption"] = serde_json::json!("yes");
    assert!(serde_json::from_value::<LaunchConfig>(v).is_err());
}

#[test]
fn deterministic() {
    let i = inputs();
    assert_eq!(
        write(&config(), &i).expect("a"),
        write(&config(), &i).expect("b")
    );
}

#[test]
fn written_headers_are_fixed() {
    let bytes = write(&config(), &inputs()).expect("write");
    let mut archive = tar::Archive::new(GzDecoder::new(bytes.as_slice()));
    let mut names = Vec::new();
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let h = entry.header();
        assert_eq!(h.entry_type(), EntryType::Regular);
        assert_eq!(h.mode().expect("mode"), 0o644);
        assert_eq!(h.uid().expect("uid"), 0);
        assert_eq!(h.gid().expect("gid"), 0);
        assert_eq!(h.mtime().expect("mtime"), 0);
        assert!(h.as_ustar().is_some(), "ustar header");
        names.push(String::from_utf8(entry.path_bytes().to_vec()).expect("utf8"));
    }
    assert_eq!(names, MEMBERS);
}

#[test]
fn members_in_any_order_extract() {
    let members = good_members();
    let entries: Vec<Raw<'_>> = members.iter().rev().map(|(n, d)| reg(n, d)).collect();
    let (_dir, result) = extract(&gz(&raw_tar(&entries, true)), &small_limits());
    assert_eq!(result.expect("extract"), config());
}

// Writer rejections ----------------------------------------------------

#[test]
fn write_source_shorter_than_declared() {
    let i = inputs();
    let mut out = Vec::new();
    let err = write_bundle(
        &mut out,
        &config(),
        BundleSources {
            firmware: &mut i.firmware.as_slice(),
            firmware_len: i.firmware.len() as u64,
            kernel: &mut i.kernel.as_slice(),
            kernel_len: i.kernel.len() as u64 + 1,
            initrd: &mut i.initrd.as_slice(),
            initrd_len: i.initrd.len() as u64,
            cmdline: &i.cmdline,
            id_block: &i.id_block,
            id_auth: &i.id_auth,
        },
    )
    .expect_err("short kernel");
    assert!(
        matches!(err, BundleError::SizeMismatch { ref member, .. } if member == KERNEL),
        "{err}"
    );
}

#[test]
fn write_source_longer_than_declared() {
    let i = inputs();
    let mut out = Vec::new();
    let err = write_bundle(
        &mut out,
        &config(),
        BundleSources {
            firmware: &mut i.firmware.as_slice(),
            firmware_len: i.firmware.len() as u64,
            kernel: &mut i.kernel.as_slice(),
            kernel_len: i.kernel.len() as u64,
            initrd: &mut i.initrd.as_slice(),
            initrd_len: i.initrd.len() as u64 - 1,
            cmdline: &i.cmdline,
            id_block: &i.id_block,
            id_auth: &i.id_auth,
        },
    )
    .expect_err("long initrd");
    assert!(
        matches!(err, BundleError::SizeMismatch { ref member, .. } if member == INITRD),
        "{err}"
    );
}

#[test]
fn write_rejects_invalid_config() {
    let mut cfg = config();
    cfg.vcpu_type = "EPYC,+sev".into();
    let err = write(&cfg, &inputs()).expect_err("comma");
    assert!(
        matches!(
            err,
            BundleError::InvalidConfig {
                field: "vcpu_type",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn write_rejects_wrong_id_block_size() {
    let mut i = inputs();
    i.id_block.pop();
    let err = write(&config(), &i).expect_err("id block");
    assert!(
        matches!(
            err,
            BundleError::WrongFixedSize {
                member: ID_BLOCK,
                expected: 96,
                actual: 95
            }
        ),
        "{err}"
    );
}

// Hostile archives -----------------------------------------------------

#[test]
fn parent_directory_member() {
    let err = extract_err(
        &archive_with(vec![reg("../evil", b"x")], &[]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::ParentDirectory { ref member } if member == "../evil"),
        "{err}"
    );
}

#[test]
fn parent_directory_inside_path() {
    let err = extract_err(
        &archive_with(vec![reg("a/../../evil", b"x")], &[]),
        &small_limits(),
    );
    assert!(matches!(err, BundleError::ParentDirectory { .. }), "{err}");
}

#[test]
fn absolute_member() {
    let err = extract_err(
        &archive_with(vec![reg("/etc/passwd", b"x")], &[]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::AbsolutePath { ref member } if member == "/etc/passwd"),
        "{err}"
    );
}

#[test]
fn symlink_member() {
    let link = Raw {
        name: b"kernel",
        kind: EntryType::Symlink,
        declared: 0,
        data: b"",
        link: Some(b"/etc/passwd"),
    };
    let err = extract_err(&archive_with(vec![link], &[KERNEL]), &small_limits());
    assert!(
        matches!(err, BundleError::NotRegularFile { ref member, ref kind } if member == "kernel" && kind == "symbolic link"),
        "{err}"
    );
}

#[test]
fn hardlink_member() {
    let link = Raw {
        name: b"initrd",
        kind: EntryType::Link,
        declared: 0,
        data: b"",
        link: Some(b"../../etc/shadow"),
    };
    let err = extract_err(&archive_with(vec![link], &[INITRD]), &small_limits());
    assert!(
        matches!(err, BundleError::NotRegularFile { ref member, ref kind } if member == "initrd" && kind == "hard link"),
        "{err}"
    );
}

#[test]
fn directory_member() {
    let d = Raw {
        name: b"kernel",
        kind: EntryType::Directory,
        declared: 0,
        data: b"",
        link: None,
    };
    let err = extract_err(&archive_with(vec![d], &[KERNEL]), &small_limits());
    assert!(
        matches!(err, BundleError::NotRegularFile { ref kind, .. } if kind == "directory"),
        "{err}"
    );
}

#[test]
fn device_member() {
    let d = Raw {
        name: b"firmware.fd",
        kind: EntryType::Char,
        declared: 0,
        data: b"",
        link: None,
    };
    let err = extract_err(&archive_with(vec![d], &[FIRMWARE]), &small_limits());
    assert!(
        matches!(err, BundleError::NotRegularFile { ref kind, .. } if kind == "character device"),
        "{err}"
    );
}

#[test]
fn pax_header_member() {
    let pax = b"30 path=../../../../etc/cron\n";
    let x = Raw {
        name: b"PaxHeaders/kernel",
        kind: EntryType::XHeader,
        declared: pax.len() as u64,
        data: pax,
        link: None,
    };
    let err = extract_err(&archive_with(vec![x], &[]), &small_limits());
    assert!(
        matches!(err, BundleError::NotRegularFile { ref kind, .. } if kind == "PAX header"),
        "{err}"
    );
}

#[test]
fn unknown_member() {
    let err = extract_err(
        &archive_with(vec![reg("extra.sh", b"x")], &[]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::UnknownMember { ref member } if member == "extra.sh"),
        "{err}"
    );
}

#[test]
fn member_in_subdirectory() {
    let err = extract_err(
        &archive_with(vec![reg("sub/kernel", b"x")], &[]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::UnknownMember { ref member } if member == "sub/kernel"),
        "{err}"
    );
}

#[test]
fn duplicate_member() {
    let err = extract_err(
        &archive_with(vec![reg(CMDLINE, b"init=/bin/sh")], &[]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::DuplicateMember { ref member } if member == CMDLINE),
        "{err}"
    );
}

#[test]
fn missing_member() {
    let err = extract_err(&archive_with(vec![], &[ID_AUTH]), &small_limits());
    assert!(
        matches!(err, BundleError::MissingMember { member: ID_AUTH }),
        "{err}"
    );
}

#[test]
fn oversize_member() {
    let big = vec![7u8; 8193];
    let err = extract_err(
        &archive_with(vec![reg(KERNEL, &big)], &[KERNEL]),
        &small_limits(),
    );
    assert!(
        matches!(err, BundleError::MemberTooLarge { ref member, limit: 8192 } if member == KERNEL),
        "{err}"
    );
}

#[test]
fn oversize_config() {
    let mut limits = small_limits();
    limits.max_config = 16;
    let err = extract_err(&archive_with(vec![], &[]), &limits);
    assert!(
        matches!(err, BundleError::MemberTooLarge { ref member, limit: 16 } if member == LAUNCH_CONFIG),
        "{err}"
    );
}

#[test]
fn oversize_total() {
    let mut limits = small_limits();
    limits.max_total = 4096;
    let err = extract_err(&archive_with(vec![], &[]), &limits);
    assert!(
        matches!(err, BundleError::TotalTooLarge { limit: 4096 }),
        "{err}"
    );
}

#[test]
fn header_claims_less_than_data() {
    // The header says 10 bytes; 1000 follow. The surplus is read as the
    // next header and fails its checksum.
    let data = vec![0xab; 1000];
    let lying = Raw {
        declared: 10,
        ..reg(KERNEL, &data)
    };
    let err = extract_err(&archive_with(vec![lying], &[KERNEL]), &small_limits());
    assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
}

#[test]
fn header_claims_more_than_stream_has() {
    // A valid gzip of a tar cut short inside the kernel's data.
    let members = good_members();
    let mut entries: Vec<Raw<'_>> = members
        .iter()
        .filter(|(n, _)| *n != KERNEL)
        .map(|(n, d)| reg(n, d))
        .collect();
    entries.push(Raw {
        declared: 5000,
        ..reg(KERNEL, &[9u8; 100])
    });
    let mut tar_bytes = raw_tar(&entries, false);
    tar_bytes.truncate(tar_bytes.len() - 412);
    let err = extract_err(&gz(&tar_bytes), &small_limits());
    assert!(
        matches!(err, BundleError::SizeMismatch { ref member, declared: 5000, actual: 100 } if member == KERNEL),
        "{err}"
    );
}

#[test]
fn truncated_gzip() {
    let bytes = write(&config(), &inputs()).expect("write");
    let err = extract_err(&bytes[..bytes.len() / 2], &ExtractLimits::default());
    assert!(
        matches!(
            err,
            BundleError::Corrupt(_) | BundleError::SizeMismatch { .. }
        ),
        "{err}"
    );
}

#[test]
fn gzip_crc_mismatch() {
    let mut bytes = write(&config(), &inputs()).expect("write");
    let n = bytes.len();
    bytes[n - 8] ^= 0xff; // CRC32 in the gzip trailer
    let err = extract_err(&bytes, &ExtractLimits::default());
    assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
}

#[test]
fn garbage_gzip() {
    let err = extract_err(b"this is not a gzip stream at all", &small_limits());
    assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
}

#[test]
fn trailing_data() {
    let members = good_members();
    let entries: Vec<Raw<'_>> = members.iter().map(|(n, d)| reg(n, d)).collect();
    let mut tar_bytes = raw_tar(&entries, true);
    tar_bytes.extend_from_slice(b"hidden payload");
    let err = extract_err(&gz(&tar_bytes), &small_limits());
    assert!(matches!(err, BundleError::TrailingData), "{err}");
}

#[test]
fn wrong_id_auth_size() {
    let short = vec![5u8; 100];
    let err = extract_err(
        &archive_with(vec![reg(ID_AUTH, &short)], &[ID_AUTH]),
        &small_limits(),
    );
    assert!(
        matches!(
            err,
            BundleError::WrongFixedSize {
                member: ID_AUTH,
                expected: 4096,
                actual: 100
            }
        ),
        "{err}"
    );
}

#[test]
fn config_unknown_field() {
    let mut v = serde_json::to_value(config()).expect("value");
    v["debug"] = serde_json::Value::Bool(true);
    let json = serde_json::to_vec(&v).expect("json");
    let err = extract_err(
        &archive_with(vec![reg(LAUNCH_CONFIG, &json)], &[LAUNCH_CONFIG]),
        &small_limits(),
    );
    assert!(matches!(err, BundleError::ConfigJson(_)), "{err}");
}

#[test]
fn config_invalid_fields() {
    type Mutation = fn(&mut LaunchConfig);
    let cases: [(&str, Mutation); 16] = [
        ("version", |c| c.version = 2),
        ("vcpus", |c| c.vcpus = 0),
        ("vcpus", |c| c.vcpus = snpguard::measure::MAX_VCPUS + 1),
        ("name", |c| c.name = String::new()),
        ("name", |c| c.name = "a b".into()),
        ("vcpu_type", |c| c.vcpu_type = "EPYC,x=1".into()),
        ("guest_policy", |c| c.guest_policy = "30000".into()),
        ("guest_policy", |c| c.guest_policy = "0x".into()),
        ("guest_features", |c| c.guest_features = "0x1g".into()),
        ("measurement", |c| c.measurement = "ab".repeat(47)),
        ("measurement", |c| c.measurement = "AB".repeat(48)),
        ("id_key_digest", |c| c.id_key_digest = "zz".repeat(48)),
        ("author_key_digest", |c| c.author_key_digest.push('0')),
        ("family_id", |c| c.family_id = "01".repeat(17)),
        ("image_id", |c| c.image_id = String::new()),
        ("kernel_hashes", |c| c.kernel_hashes = false),
    ];
    for (field, mutate) in cases {
        let mut cfg = config();
        mutate(&mut cfg);
        let json = serde_json::to_vec(&cfg).expect("json");
        let err = extract_err(
            &archive_with(vec![reg(LAUNCH_CONFIG, &json)], &[LAUNCH_CONFIG]),
            &small_limits(),
        );
        assert!(
            matches!(err, BundleError::InvalidConfig { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

#[test]
fn dest_not_empty() {
    let bytes = write(&config(), &inputs()).expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("kernel"), b"mine").expect("write");
    let err = extract_bundle(bytes.as_slice(), dir.path(), &ExtractLimits::default())
        .expect_err("not empty");
    assert!(matches!(err, BundleError::DestNotEmpty(_)), "{err}");
    // The operator's file is untouched.
    assert_eq!(fs::read(dir.path().join("kernel")).expect("read"), b"mine");
    assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
}

#[test]
fn dest_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = write(&config(), &inputs()).expect("write");
    let err = extract_bundle(
        bytes.as_slice(),
        &dir.path().join("nope"),
        &ExtractLimits::default(),
    )
    .expect_err("missing");
    assert!(matches!(err, BundleError::DestUnusable { .. }), "{err}");
}

#[test]
fn config_json_layout() {
    let v = serde_json::to_value(config()).expect("value");
    let keys: BTreeSet<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "version",
        "name",
        "vcpus",
        "vcpu_type",
        "guest_policy",
        "guest_features",
        "measurement",
        "id_key_digest",
        "author_key_digest",
        "family_id",
        "image_id",
        "kernel_hashes",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected);
    assert_eq!(v["version"], 1);
    assert_eq!(v["guest_policy"], "0x30000");
}

/// An extracted bundle checks out as it was written; each way a member
/// can be wrong after extraction (by hand, or read from a partition) is
/// refused, naming the member.
#[test]
fn check_extracted_refuses_each_broken_member() {
    let bytes = write(&config(), &inputs()).unwrap();
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        extract_bundle(bytes.as_slice(), dir.path(), &ExtractLimits::default()).unwrap();
        dir
    };
    let dir = fresh();
    assert_eq!(
        check_extracted(dir.path(), &ExtractLimits::default()).unwrap(),
        config()
    );
    let check = |d: &tempfile::TempDir| check_extracted(d.path(), &ExtractLimits::default());

    let d = fresh();
    fs::remove_file(d.path().join(ID_AUTH)).unwrap();
    assert!(matches!(
        check(&d),
        Err(BundleError::MissingMember { member: ID_AUTH })
    ));

    let d = fresh();
    fs::remove_file(d.path().join(KERNEL)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join(KERNEL)).unwrap();
    let e = check(&d).unwrap_err();
    assert!(
        e.to_string().contains("\"kernel\" is a symbolic link"),
        "{e}"
    );

    let d = fresh();
    fs::hard_link(d.path().join(INITRD), d.path().join("other")).unwrap();
    let e = check(&d).unwrap_err();
    assert!(e.to_string().contains("\"initrd\" is a hard link"), "{e}");

    let d = fresh();
    fs::write(d.path().join(ID_BLOCK), [0u8; 95]).unwrap();
    assert!(matches!(
        check(&d),
        Err(BundleError::WrongFixedSize {
            member: ID_BLOCK,
            actual: 95,
            ..
        })
    ));

    let d = fresh();
    fs::write(d.path().join(FIRMWARE), b"").unwrap();
    assert!(matches!(
        check(&d),
        Err(BundleError::EmptyMember { member: FIRMWARE })
    ));

    let d = fresh();
    fs::write(d.path().join(CMDLINE), b"console=ttyS0\0 init=/bin/sh").unwrap();
    let e = check(&d).unwrap_err();
    assert!(e.to_string().contains("NUL byte"), "{e}");

    let d = fresh();
    fs::write(d.path().join(CMDLINE), "a".repeat(4097)).unwrap();
    assert!(matches!(check(&d), Err(BundleError::Cmdline(_))));

    for (field, value) in [
        ("vcpu_type", serde_json::json!("Foo-v1")),
        ("kernel_hashes", serde_json::json!(false)),
        ("guest_policy", serde_json::json!("0x30000,kvm=on")),
    ] {
        let d = fresh();
        let mut v = serde_json::to_value(config()).unwrap();
        v[field] = value;
        fs::write(d.path().join(LAUNCH_CONFIG), v.to_string()).unwrap();
        assert!(
            matches!(check(&d), Err(BundleError::InvalidConfig { field: f, .. }) if f == field),
            "{field}"
        );
    }
    let d = fresh();
    let mut v = serde_json::to_value(config()).unwrap();
    v["extra"] = serde_json::json!(1);
    fs::write(d.path().join(LAUNCH_CONFIG), v.to_string()).unwrap();
    assert!(matches!(check(&d), Err(BundleError::ConfigJson(_))));

    let d = fresh();
    let limits = ExtractLimits {
        max_member: 60_000,
        ..ExtractLimits::default()
    };
    assert!(matches!(
        check_extracted(d.path(), &limits),
        Err(BundleError::MemberTooLarge { .. })
    ));
}
