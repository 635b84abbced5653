//! `launch-artifacts.tar.gz` extraction (`snpguardctl embed`, the launch
//! script): an archive from the daemon's host, trusted for nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use snpguard::idblock::{ID_AUTH_SIZE, ID_BLOCK_SIZE};
use snpguard_protocol::bundle::{
    extract_bundle, write_bundle, BundleSources, ExtractLimits, LaunchConfig, CMDLINE, FIRMWARE,
    ID_AUTH, ID_BLOCK, INITRD, KERNEL, LAUNCH_CONFIG, MEMBERS,
};
use tar::{EntryType, Header};

use crate::fixtures::{self, Input};

/// Small caps, so that the fuzzer reaches them.
const LIMITS: ExtractLimits = ExtractLimits {
    max_member: 8 * 1024,
    max_total: 16 * 1024,
    max_config: 2 * 1024,
};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).expect("in memory");
    gz.finish().expect("in memory")
}

/// A fresh directory `dest` inside a fresh parent, both under the
/// process's scratch directory.
fn fresh() -> tempfile::TempDir {
    let parent = tempfile::tempdir_in(fixtures::scratch()).expect("scratch");
    std::fs::create_dir(parent.path().join("dest")).expect("dest");
    parent
}

/// Checks the tree an extraction left: the parent holds only `dest`;
/// `dest` only regular files named as members, each within its cap, all
/// within the total. Returns the files.
fn check_tree(parent: &Path) -> BTreeMap<String, Vec<u8>> {
    let names: Vec<String> = std::fs::read_dir(parent)
        .expect("parent")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["dest"], "extraction wrote outside its directory");
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for e in std::fs::read_dir(parent.join("dest")).expect("dest") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(e.path()).expect("metadata");
        assert!(meta.file_type().is_file(), "{name:?} is not a regular file");
        assert!(MEMBERS.contains(&name.as_str()), "{name:?} is not a member");
        let cap = if name == LAUNCH_CONFIG {
            LIMITS.max_config
        } else {
            LIMITS.max_member
        };
        assert!(
            meta.len() <= cap,
            "{name} is {} bytes, over its cap",
            meta.len()
        );
        total += meta.len();
        files.insert(name, std::fs::read(e.path()).expect("read"));
    }
    assert!(
        total <= LIMITS.max_total,
        "{total} bytes extracted, over the total cap"
    );
    files
}

/// Writes a bundle of `config` and the members in `files`.
fn write(config: &LaunchConfig, files: &BTreeMap<String, Vec<u8>>, cmdline: &str) -> Vec<u8> {
    let m = |n: &str| files.get(n).map(Vec::as_slice).unwrap_or_default();
    let (fw, kernel, initrd) = (m(FIRMWARE), m(KERNEL), m(INITRD));
    let mut out = Vec::new();
    write_bundle(
        &mut out,
        config,
        BundleSources {
            firmware: &mut &fw[..],
            firmware_len: fw.len() as u64,
            kernel: &mut &kernel[..],
            kernel_len: kernel.len() as u64,
            initrd: &mut &initrd[..],
            initrd_len: initrd.len() as u64,
            cmdline,
            id_block: m(ID_BLOCK),
            id_auth: m(ID_AUTH),
        },
    )
    .expect("an extracted bundle can be written again");
    out
}

/// `bundle_extract`: the first byte picks the input: 0 the rest is the
/// .tar.gz, 1 the rest is a tar stream the harness compresses (so that
/// the fuzzer reaches the tar level). Whatever happens, nothing is
/// written outside the directory, only members as regular files within
/// the caps; a refusal leaves the directory empty; an accepted bundle has
/// every member, the fixed sizes and a valid config, and written again
/// extracts to the same config and members.
pub fn bundle_extract(data: &[u8]) {
    let mut input = Input::new(data);
    let archive = match input.byte() % 2 {
        0 => input.rest().to_vec(),
        _ => gzip(input.rest()),
    };
    let parent = fresh();
    let result = extract_bundle(&archive[..], &parent.path().join("dest"), &LIMITS);
    let files = check_tree(parent.path());
    let config = match result {
        Err(_) => {
            assert!(files.is_empty(), "a refused bundle left {:?}", files.keys());
            return;
        }
        Ok(config) => config,
    };
    fixtures::reached("bundle_extract");
    assert_eq!(
        files.len(),
        MEMBERS.len(),
        "an accepted bundle lacks a member"
    );
    assert_eq!(files[ID_BLOCK].len(), ID_BLOCK_SIZE);
    assert_eq!(files[ID_AUTH].len(), ID_AUTH_SIZE);
    config.validate().expect("an accepted config is valid");
    let parsed: LaunchConfig =
        serde_json::from_slice(&files[LAUNCH_CONFIG]).expect("the extracted config parses");
    assert_eq!(parsed, config);
    let Ok(cmdline) = std::str::from_utf8(&files[CMDLINE]) else {
        return;
    };
    let again = write(&config, &files, cmdline);
    let second = fresh();
    let config2 = extract_bundle(&again[..], &second.path().join("dest"), &LIMITS)
        .expect("a re-written bundle extracts");
    assert_eq!(config2, config);
    let files2 = check_tree(second.path());
    for (name, bytes) in &files {
        if name != LAUNCH_CONFIG {
            assert_eq!(&files2[name], bytes, "{name} changed in the round trip");
        }
    }
}

fn config() -> LaunchConfig {
    LaunchConfig {
        version: 1,
        name: "fuzz".into(),
        vcpus: 1,
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

fn good_members() -> BTreeMap<String, Vec<u8>> {
    [
        (FIRMWARE, vec![0xf0; 1024]),
        (KERNEL, b"MZ a kernel".to_vec()),
        (INITRD, b"070701".to_vec()),
        (ID_BLOCK, vec![0x11; ID_BLOCK_SIZE]),
        (ID_AUTH, vec![0x22; ID_AUTH_SIZE]),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_owned(), b))
    .collect()
}

/// One member of a hand-made tar stream: name, type, link, data.
type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

/// A ustar stream of entries, names written raw.
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A bundle as the daemon writes it (as .tar.gz and as tar), and tar
/// streams with each way a member can be wrong.
pub fn seeds() -> Vec<Vec<u8>> {
    let good = write(&config(), &good_members(), "console=ttyS0");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&good[..])
        .read_to_end(&mut tar)
        .expect("own bundle decompresses");
    let json = serde_json::to_vec(&config()).expect("json");
    let id_auth = vec![0u8; ID_AUTH_SIZE];
    let f = EntryType::Regular;
    let bad: Vec<Vec<u8>> = vec![
        raw_tar(&[(b"../kernel", f, b"", b"x")]),
        raw_tar(&[(b"/kernel", f, b"", b"x")]),
        raw_tar(&[(b"kernel", EntryType::Symlink, b"/etc/passwd", b"")]),
        raw_tar(&[(b"kernel", EntryType::Link, b"../../x", b"")]),
        raw_tar(&[(b"kernel", EntryType::Directory, b"", b"")]),
        raw_tar(&[(b"kernel", f, b"", b"a"), (b"kernel", f, b"", b"b")]),
        raw_tar(&[
            (b"id-auth.bin", f, b"", &id_auth),
            (b"firmware.fd", f, b"", &[1; 9000]),
        ]),
        raw_tar(&[
            (b"launch-config.json", f, b"", &json),
            (b"x/../../y", f, b"", b""),
        ]),
        raw_tar(&[(b"././@LongLink", EntryType::GNULongName, b"", b"../../z\0")]),
    ];
    let mut out = vec![[&[0u8][..], &good].concat(), [&[1u8][..], &tar].concat()];
    out.extend(bad.into_iter().map(|t| [&[1u8][..], &t].concat()));
    out
}
