//! Headers made by `cryptsetup luksFormat` on a file (cryptsetup-bin),
//! then tampered with one field at a time.

use std::path::PathBuf;
use std::process::Command;

use super::*;

const UUID: &str = "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00";

struct Volume {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key: Vec<u8>,
}

/// A 17 MiB LUKS2 file with a known volume key, or `None` (with a note)
/// when cryptsetup is not installed.
fn volume(sector_size: u32) -> Volume {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    std::fs::write(dir.path().join("vk"), &key).unwrap();
    std::fs::write(dir.path().join("pw"), b"passphrase").unwrap();
    let out = match Command::new("cryptsetup")
        .args(["luksFormat", "--type", "luks2", "--batch-mode"])
        .arg("--volume-key-file")
        .arg(dir.path().join("vk"))
        .arg("--key-file")
        .arg(dir.path().join("pw"))
        .args(["--key-size", "512", "--pbkdf", "pbkdf2"])
        .args(["--pbkdf-force-iterations", "1000", "--uuid", UUID])
        .args(["--cipher", "aes-xts-plain64", "--sector-size"])
        .arg(sector_size.to_string())
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        // A missing tool is a failure, never a silent pass.
        Err(e) => panic!("running cryptsetup (make deps installs it): {e}"),
    };
    assert!(
        out.status.success(),
        "luksFormat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Volume {
        _dir: dir,
        path,
        key,
    }
}

fn pin() -> Luks {
    Luks {
        device: "/dev/vda2".into(),
        uuid: UUID.into(),
        name: "root".into(),
        cipher: "aes-xts-plain64".into(),
        key_bytes: 64,
        sector_size: 4096,
        offset: 16 << 20,
    }
}

fn field(e: LuksError) -> &'static str {
    match e {
        LuksError::Refused { field, .. } => field,
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Rewrites the JSON area of both headers with `edit` and recomputes
/// their checksums, as someone with write access to the disk could.
fn rewrite_json(path: &Path, edit: impl Fn(&str) -> String) {
    let mut disk = std::fs::read(path).unwrap();
    for off in [0usize, 0x4000] {
        let size = 0x4000;
        let json_area = &disk[off + BIN_SIZE..off + size];
        let json = std::str::from_utf8(cstr(json_area)).unwrap().to_string();
        let new = edit(&json);
        assert_ne!(new, json, "the edit changed nothing");
        let area = &mut disk[off + BIN_SIZE..off + size];
        area.fill(0);
        area[..new.len()].copy_from_slice(new.as_bytes());
        disk[off + 448..off + 512].fill(0);
        let sum = Sha256::digest(&disk[off..off + size]);
        disk[off + 448..off + 480].copy_from_slice(&sum);
    }
    std::fs::write(path, disk).unwrap();
}

#[test]
fn a_fresh_header_matches_and_the_key_opens_it() {
    let v = volume(4096);
    let h = read_header(&v.path, &pin()).expect("header");
    assert!(!h.used_secondary);
    h.check_key(&v.key).expect("right key");
    let mut wrong = v.key.clone();
    wrong[0] ^= 1;
    assert!(matches!(h.check_key(&wrong), Err(LuksError::WrongKey)));
    assert!(matches!(
        h.check_key(&v.key[..32]),
        Err(LuksError::WrongKey)
    ));
}

#[test]
fn each_pinned_parameter_is_checked() {
    let v = volume(4096);
    let cases: Vec<(Luks, &str)> = vec![
        (
            Luks {
                uuid: "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c01".into(),
                ..pin()
            },
            "uuid",
        ),
        (
            Luks {
                cipher: "aes-cbc-essiv:sha256".into(),
                ..pin()
            },
            "segments.0.encryption",
        ),
        (
            Luks {
                offset: 8 << 20,
                ..pin()
            },
            "segments.0.offset",
        ),
        (
            Luks {
                sector_size: 512,
                ..pin()
            },
            "segments.0.sector_size",
        ),
    ];
    for (p, want) in cases {
        let e = read_header(&v.path, &p).expect_err(want);
        assert_eq!(field(e), want);
    }
}

#[test]
fn a_rewritten_header_with_a_valid_checksum_is_still_held_to_the_pins() {
    // (section of the JSON, from, to, the field that must be named)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "segments",
            "\"sector_size\":4096",
            "\"sector_size\":512",
            "segments.0.sector_size",
        ),
        (
            "segments",
            "\"encryption\":\"aes-xts-plain64\"",
            "\"encryption\":\"cipher_null-ecb\"",
            "segments.0.encryption",
        ),
        (
            "segments",
            "\"offset\":\"16777216\"",
            "\"offset\":\"4194304\"",
            "segments.0.offset",
        ),
        (
            "segments",
            "\"size\":\"dynamic\"",
            "\"size\":\"4096\"",
            "segments.0.size",
        ),
        (
            "segments",
            "\"type\":\"crypt\"",
            "\"type\":\"linear\"",
            "segments.0.type",
        ),
        (
            "digests",
            "\"type\":\"pbkdf2\"",
            "\"type\":\"argon2\"",
            "digests.type",
        ),
        (
            "digests",
            "\"hash\":\"sha256\"",
            "\"hash\":\"whirlpool\"",
            "digests.hash",
        ),
        (
            "digests",
            "\"iterations\":1000",
            "\"iterations\":4000000000",
            "digests.iterations",
        ),
    ];
    for (section, from, to, want) in cases {
        let v = volume(4096);
        rewrite_json(&v.path, |j| in_section(j, section, from, to));
        let e = read_header(&v.path, &pin()).expect_err(want);
        assert_eq!(field(e), *want, "{to}");
    }
}

/// Replaces the first `from` after `"section"` in `json`.
fn in_section(json: &str, section: &str, from: &str, to: &str) -> String {
    let at = json.find(&format!("\"{section}\"")).expect("section");
    let (head, tail) = json.split_at(at);
    format!("{head}{}", tail.replacen(from, to, 1))
}

#[test]
fn a_bad_primary_checksum_falls_back_to_the_secondary() {
    let v = volume(4096);
    let mut disk = std::fs::read(&v.path).unwrap();
    disk[BIN_SIZE + 10] ^= 0x20; // inside the primary JSON area
    std::fs::write(&v.path, &disk).unwrap();
    let h = read_header(&v.path, &pin()).expect("secondary header");
    assert!(h.used_secondary);
    h.check_key(&v.key).expect("right key");

    // Both damaged: refused, naming the checksum.
    disk[0x4000 + BIN_SIZE + 10] ^= 0x20;
    std::fs::write(&v.path, &disk).unwrap();
    assert_eq!(
        field(read_header(&v.path, &pin()).expect_err("both bad")),
        "checksum"
    );
}

#[test]
fn not_luks2_is_refused() {
    let v = volume(4096);
    let mut disk = std::fs::read(&v.path).unwrap();
    disk[7] = 1; // version 1
    std::fs::write(&v.path, &disk).unwrap();
    assert_eq!(
        field(read_header(&v.path, &pin()).expect_err("v1")),
        "version"
    );
    disk[0] = b'X';
    std::fs::write(&v.path, &disk).unwrap();
    assert_eq!(
        field(read_header(&v.path, &pin()).expect_err("magic")),
        "magic"
    );
}

#[test]
fn sector_size_512_volume() {
    let v = volume(512);
    let h = read_header(
        &v.path,
        &Luks {
            sector_size: 512,
            ..pin()
        },
    )
    .expect("512");
    h.check_key(&v.key).expect("key");
}

/// Replaces the volume-key digest in the `digests` section by its first
/// `n` bytes.
fn truncate_digest(json: &str, n: usize) -> String {
    let at = json.find("\"digests\"").expect("digests");
    let key = "\"digest\":\"";
    let start = at + json[at..].find(key).expect("digest") + key.len();
    let end = start + json[start..].find('"').expect("end of digest");
    let digest = snpguard_protocol::attest::unb64(&json[start..end], 256).expect("base64");
    assert_eq!(digest.len(), 32, "cryptsetup's digest");
    let short = snpguard_protocol::attest::b64(&digest[..n]);
    format!("{}{short}{}", &json[..start], &json[end..])
}

#[test]
fn a_digest_shorter_than_32_bytes_is_refused_by_name() {
    for n in [1, 4, 16, 31] {
        let v = volume(4096);
        rewrite_json(&v.path, |j| truncate_digest(j, n));
        // Its first bytes still match the right key: only the length
        // check stands between a forged header and a weak comparison.
        match read_header(&v.path, &pin()) {
            Err(LuksError::DigestTooShort { id, bytes }) => {
                assert_eq!((id.as_str(), bytes), ("0", n));
            }
            Err(other) => panic!("{n} bytes: expected DigestTooShort, got {other}"),
            Ok(_) => panic!("{n} bytes: a short digest was accepted"),
        }
        let e = read_header(&v.path, &pin()).err().unwrap().to_string();
        assert!(
            e.contains(&format!("digest 0 has {n} bytes, fewer than 32")),
            "{e}"
        );
    }
    // Exactly 32 (what cryptsetup writes) is accepted.
    let v = volume(4096);
    read_header(&v.path, &pin())
        .expect("32-byte digest")
        .check_key(&v.key)
        .expect("right key");
}

#[test]
fn a_volume_without_keyslots_still_checks_the_key() {
    // `snpguardctl convert --no-recovery-keyslot` destroys the only
    // keyslot; the volume-key digest stays and is all the agent reads.
    let v = volume(4096);
    let out = Command::new("cryptsetup")
        .args(["luksKillSlot", "--batch-mode"])
        .arg(&v.path)
        .arg("0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "luksKillSlot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = read_header(&v.path, &pin()).expect("header without keyslots");
    h.check_key(&v.key).expect("right key");
    let mut wrong = v.key.clone();
    wrong[63] ^= 1;
    assert!(matches!(h.check_key(&wrong), Err(LuksError::WrongKey)));
}
