//! The guest agent's parsers (agent/src/config.rs, over
//! snpguard_protocol::agent_config, and luks.rs, included as they are): the LUKS2
//! header of the root volume, read from a disk the host controls, and the
//! agent's configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};

use crate::config::{self, Luks, ReportSource};
use crate::fixtures::{self, Input};
use crate::luks::{keyslot, read_header};
use snpguard_protocol::agent_config::{MAX_ATTEMPTS, MAX_SERVERS, MAX_VOLUMES};

const HDR_SIZES: [usize; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const UUID: &str = "9a4b7c2e-1f3d-4e5a-8b6c-0d1e2f3a4b5c";
/// The volume key the seeds' digests are made from.
const KEY: [u8; 64] = [0x5c; 64];

/// What the agent's configuration pins for the root volume.
fn pin() -> Luks {
    Luks {
        device: format!("UUID={UUID}"),
        uuid: UUID.to_owned(),
        name: "snpguard_root".to_owned(),
        cipher: "aes-xts-plain64".to_owned(),
        key_bytes: 64,
        sector_size: 4096,
        offset: 16 << 20,
    }
}

fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fixtures::scratch().join("luks2.img"))
}

/// Writes the SHA-256 checksum of the header at `off` (its `hdr_size`
/// bytes with the checksum field zeroed) into its checksum field, when
/// the header fits.
fn fix_checksum(image: &mut [u8], off: usize) {
    let Some(size) = image.get(off + 8..off + 16) else {
        return;
    };
    let size = u64::from_be_bytes(size.try_into().expect("8 bytes"));
    let Some(end) = usize::try_from(size).ok().and_then(|s| off.checked_add(s)) else {
        return;
    };
    if size < 4096 || end > image.len() {
        return;
    }
    image[off + 448..off + 512].fill(0);
    let sum = Sha256::digest(&image[off..end]);
    image[off + 448..off + 480].copy_from_slice(&sum);
}

/// The header at `off` as the agent must see it, checked here from the
/// LUKS2 specification: magic, version 2, a header size LUKS2 allows,
/// `hdr_offset` = `off`, checksum algorithm sha256 and a matching
/// checksum. Returns the header's bytes.
fn valid_header<'a>(image: &'a [u8], off: usize, magic: &[u8; 6]) -> Option<&'a [u8]> {
    let bin = image.get(off..off + 4096)?;
    let be64 = |at: usize| u64::from_be_bytes(bin[at..at + 8].try_into().expect("8 bytes"));
    let size = usize::try_from(be64(8)).ok()?;
    let ok = &bin[..6] == magic
        && bin[6..8] == [0, 2]
        && HDR_SIZES.contains(&size)
        && be64(256) == off as u64
        && bin[72..79] == *b"sha256\0";
    if !ok {
        return None;
    }
    let hdr = image.get(off..off + size)?;
    let mut zeroed = hdr.to_vec();
    zeroed[448..512].fill(0);
    (Sha256::digest(&zeroed)[..] == hdr[448..480]).then_some(hdr)
}

/// PBKDF2 by the `pbkdf2` crate, the oracle for the agent's own.
fn oracle_pbkdf2(hash: &str, key: &[u8], salt: &[u8], iterations: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    match hash {
        "sha256" => pbkdf2::pbkdf2_hmac::<Sha256>(key, salt, iterations, &mut out),
        _ => pbkdf2::pbkdf2_hmac::<Sha512>(key, salt, iterations, &mut out),
    }
    out
}

/// `luks2_header`: the first byte's low bits ask the harness to fix the
/// checksum of the primary (1) and of the secondary headers (2) after
/// the fuzzer's changes, so that it gets past the checksum to the JSON;
/// the rest is the start of the disk. An accepted header is one the
/// specification calls valid (the secondary only when the primary's
/// checksum fails), carries the pinned UUID and exactly the pinned data
/// segment, and its key check agrees with an independent PBKDF2. The
/// offline keyslot's reader ([`keyslot`]) reads the same disk without
/// panicking, and where it enrols [`KEY`] the keyslot opens again with
/// its passphrase, to that key, and the pinned check still accepts the
/// header ([`offline_keyslot_round_trip`]).
pub fn luks2_header(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let mut image = input.rest().to_vec();
    if flags & 1 != 0 {
        fix_checksum(&mut image, 0);
    }
    if flags & 2 != 0 {
        for off in HDR_SIZES {
            if image.get(off..off + 6) == Some(b"SKUL\xba\xbe") {
                fix_checksum(&mut image, off);
            }
        }
    }
    let path = image_path();
    std::fs::write(path, &image).expect("writing the disk image");
    let pin = pin();
    let header = read_header(path, &pin);
    if cheap_kdfs(&image) {
        offline_keyslot_round_trip(path, header.is_ok());
    }
    std::fs::write(path, &image).expect("writing the disk image");
    let Ok(header) = header else {
        return;
    };
    let primary = valid_header(&image, 0, b"LUKS\xba\xbe");
    let used = if header.used_secondary {
        assert!(primary.is_none(), "the secondary used with a valid primary");
        HDR_SIZES
            .iter()
            .find_map(|&off| valid_header(&image, off, b"SKUL\xba\xbe"))
            .expect("a valid secondary header")
    } else {
        primary.expect("an accepted primary header is valid")
    };
    let uuid = &used[168..208];
    let uuid = &uuid[..uuid.iter().position(|&b| b == 0).unwrap_or(40)];
    assert!(
        uuid.eq_ignore_ascii_case(UUID.as_bytes()),
        "another volume's UUID"
    );
    let json = &used[4096..];
    let json = &json[..json.iter().position(|&b| b == 0).unwrap_or(json.len())];
    // serde_json skips the strings of the fields the agent ignores
    // without validating them, so bytes that are not UTF-8 there pass the
    // agent's parse but not a full one: nothing to compare then (found by
    // this target; regressions/luks2_header/non-utf8-in-ignored-field).
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let segments = doc["segments"].as_object().expect("segments");
    assert_eq!(segments.len(), 1, "one segment");
    let seg = &segments["0"];
    assert_eq!(seg["type"], "crypt");
    assert_eq!(seg["offset"], pin.offset.to_string());
    assert_eq!(seg["encryption"], pin.cipher.as_str());
    assert_eq!(seg["sector_size"], pin.sector_size);
    assert_eq!(seg["size"], "dynamic");
    let digests: BTreeMap<&String, &serde_json::Value> = doc["digests"]
        .as_object()
        .expect("digests")
        .iter()
        .collect();
    let (_, d) = digests
        .iter()
        .find(|(_, d)| {
            d["segments"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == "0"))
        })
        .expect("a digest covers segment 0");
    let iterations = d["iterations"].as_u64().expect("iterations");
    if iterations > 20_000 {
        return;
    }
    let field = |k: &str| {
        STANDARD
            .decode(d[k].as_str().expect("base64"))
            .expect("base64")
    };
    let (salt, digest) = (field("salt"), field("digest"));
    let hash = d["hash"].as_str().expect("hash");
    for key in [&KEY[..], &[0u8; 64][..], &KEY[..32]] {
        let iterations = u32::try_from(iterations).expect("checked above");
        let expected = oracle_pbkdf2(hash, key, &salt, iterations, digest.len()) == digest;
        if expected {
            fixtures::reached("luks2_header");
        }
        assert_eq!(
            header.check_key(key).is_ok(),
            expected,
            "the agent's PBKDF2 disagrees with the pbkdf2 crate ({hash}, {} bytes)",
            digest.len()
        );
    }
}

/// Whether every PBKDF2 the primary header's JSON names is cheap (at
/// most 20 000 iterations), so that opening and enrolling stay within a
/// fuzz input's time; false when it does not parse.
fn cheap_kdfs(image: &[u8]) -> bool {
    fn cheap(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().all(|(k, v)| {
                (k != "iterations" || v.as_u64().is_some_and(|i| i <= 20_000)) && cheap(v)
            }),
            serde_json::Value::Array(a) => a.iter().all(cheap),
            _ => true,
        }
    }
    let Some(json) = image.get(4096..image.len().min(4 << 20)) else {
        return false;
    };
    let json = &json[..json.iter().position(|&b| b == 0).unwrap_or(json.len())];
    serde_json::from_slice(json).is_ok_and(|v| cheap(&v))
}

/// The offline keyslot on the disk at `path`: its reader never panics;
/// a header it reads names keyslots of its own that open (or not)
/// without panicking; where enrolling [`KEY`] succeeds (the header's
/// digest is [`KEY`]'s), the new keyslot is the agent's, opens with its
/// passphrase to [`KEY`], a wrong passphrase does not open it, the pinned
/// check still accepts the header if it did (`pinned_ok`), and removing
/// it leaves no keyslot of the agent's.
fn offline_keyslot_round_trip(path: &std::path::Path, pinned_ok: bool) {
    const PASSPHRASE: [u8; 32] = [0x3c; 32];
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .expect("the disk image")
    };
    let Ok(h) = keyslot::Headers::read(&open(false)) else {
        return;
    };
    for id in h.own_keyslots() {
        let _ = keyslot::open(&open(false), &h, &id, &PASSPHRASE);
    }
    let Ok(id) = keyslot::enrol(&open(true), &KEY, &PASSPHRASE, 1) else {
        return;
    };
    fixtures::reached("luks2_header");
    let h = keyslot::Headers::read(&open(false)).expect("an enrolled header reads back");
    assert_eq!(
        h.own_keyslots(),
        vec![id.clone()],
        "the enrolled keyslot is the agent's"
    );
    let vk = keyslot::open(&open(false), &h, &id, &PASSPHRASE).expect("the keyslot opens");
    assert_eq!(&vk[..], &KEY[..], "the keyslot holds the volume key");
    assert!(keyslot::open(&open(false), &h, &id, &[0u8; 32]).is_err());
    if pinned_ok {
        read_header(path, &pin()).expect("the pinned check accepts the enrolled header");
    }
    keyslot::remove(&open(true)).expect("the keyslot is removed");
    let h = keyslot::Headers::read(&open(false)).expect("the header reads back");
    assert!(
        h.own_keyslots().is_empty(),
        "no keyslot of the agent's left"
    );
}

/// A LUKS2 header as cryptsetup writes it, primary and secondary, with
/// the volume-key digest of [`KEY`].
fn luks_image(hash: &str, digest_len: usize, uuid: &str) -> Vec<u8> {
    let salt = [0xa5u8; 32];
    let digest = oracle_pbkdf2(hash, &KEY, &salt, 1000, digest_len);
    let json = serde_json::json!({
        "keyslots": {"0": {"type": "luks2", "key_size": 64, "area": {"type": "raw",
            "offset": "32768", "size": "258048", "encryption": "aes-xts-plain64",
            "key_size": 64}, "kdf": {"type": "argon2id", "time": 4, "memory": 1048576,
            "cpus": 2, "salt": STANDARD.encode([1u8; 32])}, "af": {"type": "luks1",
            "stripes": 4000, "hash": "sha256"}}},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": "16777216", "size": "dynamic",
            "iv_tweak": "0", "encryption": "aes-xts-plain64", "sector_size": 4096}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": ["0"], "segments": ["0"],
            "hash": hash, "iterations": 1000, "salt": STANDARD.encode(salt),
            "digest": STANDARD.encode(&digest)}},
        "config": {"json_size": "12288", "keyslots_size": "16744448"}
    });
    let json = serde_json::to_vec(&json).expect("json");
    let mut image = vec![0u8; 0x8000];
    for (off, magic) in [(0usize, b"LUKS\xba\xbe"), (0x4000, b"SKUL\xba\xbe")] {
        let h = &mut image[off..off + 0x4000];
        h[..6].copy_from_slice(magic);
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&0x4000u64.to_be_bytes());
        h[16..24].copy_from_slice(&1u64.to_be_bytes());
        h[72..78].copy_from_slice(b"sha256");
        h[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
        h[256..264].copy_from_slice(&(off as u64).to_be_bytes());
        h[4096..4096 + json.len()].copy_from_slice(&json);
        fix_checksum(&mut image, off);
    }
    image
}

/// Headers with SHA-256 (one and two PBKDF2 blocks) and SHA-512 digests,
/// one with a broken primary, one of another volume.
pub fn luks_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (hash, len) in [("sha256", 32), ("sha256", 48), ("sha512", 64)] {
        out.push([&[3u8][..], &luks_image(hash, len, UUID)].concat());
    }
    let mut broken = luks_image("sha256", 32, UUID);
    broken[4200] ^= 1;
    out.push([&[0u8][..], &broken].concat());
    out.push([&[3u8][..], &luks_image("sha256", 32, &UUID.to_uppercase())].concat());
    out.push(
        [
            &[3u8][..],
            &luks_image("sha256", 32, "00000000-0000-0000-0000-000000000000"),
        ]
        .concat(),
    );
    out
}

/// `agent_config`: an accepted configuration keeps every bound, never
/// selects the simulator in a production build, and written back as
/// TOML (by the writer convert uses) parses to the same configuration.
pub fn agent_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = config::parse(text) else {
        return;
    };
    fixtures::reached("agent_config");
    assert!((1..=MAX_SERVERS).contains(&c.servers.len()));
    for s in &c.servers {
        let host = s.url.strip_prefix("https://").expect("https");
        assert!(!host.is_empty() && host.is_ascii());
        assert!(!host.contains(['/', '?', '#', '@', ' ']), "{:?}", s.url);
    }
    assert!(c.ca.is_absolute());
    assert_ne!(
        c.report_source,
        ReportSource::Simulated,
        "the simulator in a production agent"
    );
    assert!(c.simulator.is_none());
    assert!(c.volumes.len() <= MAX_VOLUMES);
    assert!((1..=MAX_ATTEMPTS).contains(&c.retry.attempts));
    assert!(c.retry.initial_delay_ms <= c.retry.max_delay_ms);
    for (i, v) in c.volumes.iter().enumerate() {
        assert!(v.luks.key_bytes >= 32);
        for w in &c.volumes[..i] {
            assert_ne!(w.luks.name, v.luks.name);
            assert_ne!(w.mountpoint, v.mountpoint);
        }
    }
    let text = c
        .to_toml("# re-encoded")
        .unwrap_or_else(|e| panic!("an accepted configuration is not written: {e}"));
    let again = config::parse(&text).unwrap_or_else(|e| panic!("re-encoded config: {e}\n{text}"));
    assert_eq!(again, c, "config -> TOML -> config");
}

const CONFIG: &str = r#"servers = ["https://10.0.2.2:8443", "https://backup.example:443/"]
ca = "/etc/snpguard/ca.pem"
report_source = "auto"

[luks]
device = "UUID=0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
uuid = "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
name = "snpguard_root"
cipher = "aes-xts-plain64"
key_bytes = 64
sector_size = 512
offset = 16777216

[[volumes]]
mountpoint = "/var"
device = "/dev/vda3"
uuid = "1b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c01"
name = "snpguard_var"
cipher = "aes-xts-plain64"
key_bytes = 64
sector_size = 4096
offset = 16777216

[retry]
attempts = 5
initial_delay_ms = 1000
max_delay_ms = 30000
device_timeout_secs = 60
"#;

/// A configuration as `convert` writes it, one without retry or volumes,
/// one asking for the simulator, and broken ones.
pub fn config_seeds() -> Vec<Vec<u8>> {
    let minimal = CONFIG.split("[[volumes]]").next().expect("prefix");
    vec![
        CONFIG.as_bytes().to_vec(),
        minimal.as_bytes().to_vec(),
        CONFIG
            .replace("\"auto\"", "\"simulated\"\n[simulator]\nlaunch = \"/x\"")
            .into_bytes(),
        CONFIG.replace("/var", "/var/../etc").into_bytes(),
        CONFIG
            .replace("attempts = 5", "attempts = 5\nforever = true")
            .into_bytes(),
        b"servers = [\"https://a\"]\n".to_vec(),
    ]
}
