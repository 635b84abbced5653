//! The initrd reader of the approval review (`snpguard_protocol::initrd`): the
//! daemon reads it from every initrd a guest submits with a renewal.

use std::collections::BTreeMap;
use std::io::Write;

use sha2::{Digest, Sha256};
use snpguard_protocol::initrd::{agent_files, newc, Limits, MAX_FILES, MAX_TEXT};

/// Small limits, so that the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_entries: 4096,
    max_unpacked: 16 << 20,
    max_names: 1 << 20,
};

/// Properties: whatever the bytes, the answer is bounded, sorted, with
/// normalised paths and digests; and the input's bytes as files written
/// by `newc` read back as written, a later entry replacing an earlier.
pub fn initrd(data: &[u8]) {
    if let Ok(found) = agent_files(data, &LIMITS) {
        crate::fixtures::reached("initrd");
        assert!(found.files.len() <= MAX_FILES);
        assert!(found.problems.len() <= 17, "{:?}", found.problems);
        for w in found.files.windows(2) {
            assert!(w[0].path < w[1].path, "sorted, one entry per path");
        }
        for f in &found.files {
            assert_eq!(f.sha256.len(), 64);
            assert!(f.text.as_ref().is_none_or(|t| t.len() <= MAX_TEXT));
            let odd = |c: &str| c.is_empty() || c == "." || c == "..";
            assert!(!f.path.split('/').any(odd), "not normalised: {}", f.path);
        }
    }
    round_trip(data);
}

fn round_trip(data: &[u8]) {
    let entries: Vec<(String, &[u8])> = data
        .chunks(24)
        .take(32)
        .enumerate()
        .map(|(i, c)| (format!("etc/snpguard/f{}", (i * 7 + c.len()) % 5), c))
        .collect();
    let mut want: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (name, content) in &entries {
        want.insert(name, content);
    }
    let list: Vec<(&str, u32, &[u8])> = entries
        .iter()
        .map(|(n, c)| (n.as_str(), 0o100644, *c))
        .collect();
    let got = agent_files(newc(&list).as_slice(), &LIMITS).expect("newc's own archive");
    assert!(got.problems.is_empty(), "{:?}", got.problems);
    let got: Vec<(&str, String, Option<&str>)> = got
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.clone(), f.text.as_deref()))
        .collect();
    let want: Vec<(&str, String, Option<&str>)> = want
        .iter()
        .map(|(n, c)| {
            (
                *n,
                hex::encode(Sha256::digest(c)),
                std::str::from_utf8(c).ok(),
            )
        })
        .collect();
    assert_eq!(got, want);
}

/// An initramfs-tools style initrd (plain early archive, then the main
/// one), plain, gzip and zstd, and a few hand-made oddities.
pub fn seeds() -> Vec<Vec<u8>> {
    let main = newc(&[
        ("etc", 0o040755, b""),
        ("etc/snpguard", 0o040755, b""),
        (
            "etc/snpguard/agent.toml",
            0o100644,
            b"ca = \"/etc/snpguard/ca.pem\"\nservers = [\"https://a:8443\"]\n",
        ),
        (
            "etc/snpguard/ca.pem",
            0o100644,
            b"-----BEGIN CERTIFICATE-----\n",
        ),
        ("usr/lib/snpguard/snpguard-agent", 0o100755, b"\x7fELF"),
        ("lib", 0o120777, b"usr/lib"),
    ]);
    let early = newc(&[("kernel/x86/microcode/AuthenticAMD.bin", 0o100644, b"u")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&main).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zstd = ruzstd::encoding::compress_to_vec(
        main.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let mut seeds = vec![main.clone(), gz.clone(), zstd.clone()];
    for part in [&main, &gz, &zstd] {
        let mut s = early.clone();
        s.resize(512, 0);
        s.extend_from_slice(part);
        seeds.push(s);
    }
    seeds.push(newc(&[("etc/snpguard", 0o120777, b"/tmp/x")]));
    seeds.push(newc(&[("a/../etc/snpguard/agent.toml", 0o100644, b"x")]));
    seeds
}
