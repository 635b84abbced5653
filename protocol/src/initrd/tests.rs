use std::io::Write;

use super::*;

const REG: u32 = 0o100644;
const DIR: u32 = 0o040755;
const LNK: u32 = 0o120777;
const CONFIG: &[u8] = b"ca = \"/etc/snpguard/ca.pem\"\nservers = [\"https://a.example:8443\"]\n";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn read(initrd: &[u8]) -> Result<AgentFiles, InitrdError> {
    agent_files(initrd, &Limits::default())
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An initramfs-tools style main archive.
fn main_archive(config: &[u8], ca: &[u8]) -> Vec<u8> {
    newc(&[
        (".", DIR, b""),
        ("etc", DIR, b""),
        ("etc/snpguard", DIR, b""),
        ("etc/snpguard/agent.toml", REG, config),
        ("etc/snpguard/ca.pem", REG, ca),
        ("usr/lib/snpguard/snpguard-agent", 0o100755, &[0x7f; 70_000]),
        ("usr/bin/busybox", 0o100755, b"\x7fELF"),
        ("lib", LNK, b"usr/lib"),
    ])
}

#[test]
fn reads_the_agent_files_of_a_plain_gzip_or_zstd_initrd() {
    let main = main_archive(CONFIG, b"CA1");
    // Early microcode (plain), padding, then the compressed main archive.
    let early = newc(&[("kernel/x86/microcode/AuthenticAMD.bin", REG, b"ucode")]);
    for compressed in [main.clone(), gzip(&main), zstd(&main)] {
        let mut initrd = early.clone();
        initrd.resize(initrd.len().next_multiple_of(512), 0);
        initrd.extend_from_slice(&compressed);
        initrd.extend_from_slice(&[0; 100]);
        let got = read(&initrd).unwrap();
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        let paths: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/snpguard/agent.toml",
                "etc/snpguard/ca.pem",
                "usr/lib/snpguard/snpguard-agent"
            ]
        );
        assert_eq!(
            got.files[0].text.as_deref().map(str::as_bytes),
            Some(CONFIG)
        );
        assert_eq!(got.files[0].sha256, sha(CONFIG));
        assert_eq!(got.files[1].text.as_deref(), Some("CA1"));
        // The binary is too large to keep: its digest only.
        assert_eq!(got.files[2].text, None);
        assert_eq!(got.files[2].sha256, sha(&[0x7f; 70_000]));
        assert_eq!(got.files[2].kind, Kind::File);
    }
}

#[test]
fn a_later_entry_replaces_an_earlier_one_across_parts() {
    let mut initrd = main_archive(CONFIG, b"CA1");
    initrd.extend_from_slice(&gzip(&newc(&[
        ("./etc/snpguard/ca.pem", REG, b"CA2"),
        ("/usr/lib/snpguard/snpguard-agent", DIR, b""),
    ])));
    let got = read(&initrd).unwrap();
    let ca = got
        .files
        .iter()
        .find(|f| f.path == "etc/snpguard/ca.pem")
        .unwrap();
    assert_eq!(ca.text.as_deref(), Some("CA2"));
    // A directory replaced the binary.
    assert!(!got.files.iter().any(|f| f.path.starts_with("usr/")));
}

#[test]
fn a_ca_outside_the_agent_dirs_is_found_through_the_config() {
    let config = b"ca = \"/usr/share/ca/corp.pem\"\n";
    let initrd = newc(&[
        ("usr/share/ca/corp.pem", REG, b"CORP"),
        ("usr/share/ca/other.pem", REG, b"OTHER"),
        ("etc/snpguard/agent.toml", REG, config),
    ]);
    let got = read(&initrd).unwrap();
    let ca = got
        .files
        .iter()
        .find(|f| f.path == "usr/share/ca/corp.pem")
        .unwrap();
    // Outside the agent dirs only its digest is known.
    assert_eq!((ca.sha256.clone(), ca.text.clone()), (sha(b"CORP"), None));
    assert_eq!(got.files.len(), 2);
    let missing = newc(&[("etc/snpguard/agent.toml", REG, config)]);
    let got = read(&missing).unwrap();
    assert!(
        got.problems[0].contains("/usr/share/ca/corp.pem"),
        "{:?}",
        got.problems
    );
}

#[test]
fn symlinks_hard_links_and_dotdot_around_the_agent_are_problems() {
    // etc/snpguard is a symlink: the agent reads from elsewhere.
    let got = read(&newc(&[
        ("etc/snpguard", LNK, b"/tmp/x"),
        ("tmp/x/agent.toml", REG, CONFIG),
    ]))
    .unwrap();
    assert!(
        got.problems[0].contains("etc/snpguard is a symlink"),
        "{:?}",
        got.problems
    );
    // A symlinked config is shown as one, and flagged.
    let got = read(&newc(&[("etc/snpguard/agent.toml", LNK, b"/tmp/c")])).unwrap();
    assert_eq!(got.files[0].kind, Kind::Symlink);
    assert_eq!(got.files[0].text.as_deref(), Some("/tmp/c"));
    assert_eq!(got.problems.len(), 1);
    // '..' may land anywhere.
    let got = read(&newc(&[("tmp/../etc/snpguard/agent.toml", REG, CONFIG)])).unwrap();
    assert_eq!(got.files[0].path, "etc/snpguard/agent.toml");
    assert!(got.problems[0].contains("climbs"), "{:?}", got.problems);
    // A hard link shared with an agent file.
    let mut a = newc(&[
        ("etc/snpguard/ca.pem", REG, b""),
        ("tmp/evil", REG, b"EVIL"),
    ]);
    set_field(&mut a, 0, "nlink", 2);
    set_field(&mut a, 1, "nlink", 2);
    let ino = field(&a, 0, "ino");
    set_field(&mut a, 1, "ino", ino);
    let got = read(&a).unwrap();
    assert!(got.problems[0].contains("hard link"), "{:?}", got.problems);
    // An ordinary tree has none.
    assert!(read(&main_archive(CONFIG, b"x"))
        .unwrap()
        .problems
        .is_empty());
}

#[test]
fn malformed_or_unsupported_initrds_are_refused_by_name() {
    let e = |b: &[u8]| read(b).unwrap_err().to_string();
    assert!(e(b"").contains("empty"), "{}", e(b""));
    assert!(e(&[0; 4096]).contains("empty"));
    assert!(e(b"hello world").contains("neither a cpio archive"));
    assert!(e(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]).contains("xz-compressed"));
    let good = main_archive(CONFIG, b"CA");
    // Truncated inside data, a name, a header.
    for cut in [good.len() - 200, 150, 50] {
        assert!(
            e(&good[..cut]).contains("truncated"),
            "{cut}: {}",
            e(&good[..cut])
        );
    }
    let mut bad = good.clone();
    bad[6 + 8 * 6] = b'g';
    assert!(
        e(&bad).contains("filesize is not 8 hex digits"),
        "{}",
        e(&bad)
    );
    let mut bad = good.clone();
    set_field(&mut bad, 0, "namesize", 0);
    assert!(e(&bad).contains("entry name of 0 bytes"), "{}", e(&bad));
    // Garbage after a compressed part's archive.
    let mut bad = gzip(&[good.as_slice(), b"junk"].concat());
    assert!(e(&bad).contains("expected a cpio archive"), "{}", e(&bad));
    bad.truncate(bad.len() - 12);
    assert!(read(&bad).is_err());
}

#[test]
fn the_limits_bound_entries_and_unpacked_bytes() {
    let initrd = main_archive(CONFIG, b"CA");
    let small = |l: Limits| agent_files(initrd.as_slice(), &l).unwrap_err().to_string();
    let d = Limits::default();
    assert!(small(Limits {
        max_entries: 3,
        ..d
    })
    .contains("more than 3 entries"));
    assert!(small(Limits {
        max_unpacked: 1000,
        ..d
    })
    .contains("more than 1000 bytes"));
    assert!(small(Limits { max_names: 10, ..d }).contains("entry names"));
    // A bomb of zeros inside gzip stops at the unpacked limit too.
    let mut bomb = newc(&[("big", REG, &vec![0; 1 << 20])]);
    bomb.truncate(bomb.len() - 200);
    let l = Limits {
        max_unpacked: 4096,
        ..d
    };
    assert!(agent_files(gzip(&bomb).as_slice(), &l)
        .unwrap_err()
        .to_string()
        .contains("more than 4096"));
}

/// Offset of header field `name` of entry `index` in a newc archive.
fn field_offset(a: &[u8], index: usize, name: &str) -> usize {
    let mut at = 0;
    for _ in 0..index {
        let hex = |i: usize| {
            let o = at + 6 + 8 * i;
            usize::from_str_radix(std::str::from_utf8(&a[o..o + 8]).unwrap(), 16).unwrap()
        };
        let (size, namesize) = (hex(6), hex(11));
        at += 110 + namesize + pad4(110 + namesize);
        at += size + pad4(size);
    }
    at + 6 + 8 * FIELDS.iter().position(|f| *f == name).unwrap()
}

fn field(a: &[u8], index: usize, name: &str) -> u32 {
    let o = field_offset(a, index, name);
    u32::from_str_radix(std::str::from_utf8(&a[o..o + 8]).unwrap(), 16).unwrap()
}

fn set_field(a: &mut [u8], index: usize, name: &str, v: u32) {
    let o = field_offset(a, index, name);
    a[o..o + 8].copy_from_slice(format!("{v:08x}").as_bytes());
}
