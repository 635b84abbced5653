//! `snpguardctl convert`'s rewrite of the input disk's partition table
//! (snpguardctl/src/image/sfdisk.rs, included as it is): an `sfdisk
//! --dump` of a disk image the user brought.

use crate::fixtures::Input;
use crate::sfdisk::rewrite_sfdisk_dump;

const IN: &str = "/dev/sda";
const OUT: &str = "/dev/sdb";

/// A partition line of a dump: number, start, size.
fn partitions(dump: &str, dev: &str) -> Option<Vec<(i32, u64, u64)>> {
    let mut out = Vec::new();
    for line in dump.lines() {
        let Some((d, rest)) = line.split_once(" : ") else {
            continue;
        };
        let num = d.trim().strip_prefix(dev)?.parse().ok()?;
        let field = |k: &str| {
            rest.split(',')
                .filter_map(|f| f.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        };
        out.push((num, field("start")?, field("size")?));
    }
    Some(out)
}

/// `sfdisk_rewrite`: the first byte is a mask of partitions 1-8 to grow,
/// the next eight the growth in bytes (LE), the rest the dump. A rewrite
/// names only the output disk, keeps every partition, grows exactly the
/// grown ones, never makes partitions that did not overlap overlap, and
/// is a fixed point when rewritten again with nothing to grow.
pub fn sfdisk_rewrite(data: &[u8]) {
    let mut input = Input::new(data);
    let mask = input.byte();
    let grow = input.u64();
    let Ok(dump) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let grown: Vec<i32> = (1..=8).filter(|n| mask & (1 << (n - 1)) != 0).collect();
    let Ok(out) = rewrite_sfdisk_dump(dump, &grown, grow, IN, OUT) else {
        return;
    };
    let again = rewrite_sfdisk_dump(&out, &[], 0, OUT, OUT).expect("a rewritten dump reads again");
    // `str::lines` drops the \r of a \r\n line end, so a header line
    // ending in \r\r\n loses one \r per pass; sfdisk never writes \r.
    if !dump.contains('\r') {
        assert_eq!(again, out, "not a fixed point");
    }
    for line in out.lines() {
        if let Some((dev, _)) = line.split_once(" : ") {
            assert!(dev.starts_with(OUT), "{dev:?} is not on the output disk");
        }
    }
    // The simple fields below are read naively: compare only when every
    // partition line is plain (no quotes, so no comma inside a value).
    if dump.contains('"') {
        return;
    }
    let (Some(before), Some(after)) = (partitions(dump, IN), partitions(&out, OUT)) else {
        return;
    };
    assert_eq!(before.len(), after.len(), "partitions lost or added");
    let sector = dump
        .lines()
        .find_map(|l| l.strip_prefix("sector-size:"))
        .map_or(512, |v| v.trim().parse().unwrap_or(512));
    let grow = grow / sector;
    for ((n, start, size), (m, start2, size2)) in before.iter().zip(&after) {
        assert_eq!(n, m, "partition order");
        let want = if grown.contains(n) {
            size.saturating_add(grow)
        } else {
            *size
        };
        assert_eq!(*size2, want, "partition {n} size");
        assert!(start2 >= start, "partition {n} moved backwards");
    }
    let disjoint = |parts: &[(i32, u64, u64)]| {
        let mut spans: Vec<(u64, u64)> = parts
            .iter()
            .map(|p| (p.1, p.1.saturating_add(p.2)))
            .collect();
        spans.sort_unstable();
        spans.windows(2).all(|w| w[0].1 <= w[1].0)
    };
    let distinct = before
        .iter()
        .enumerate()
        .all(|(i, p)| before[..i].iter().all(|q| q.0 != p.0 && q.1 != p.1));
    if distinct && disjoint(&before) {
        crate::fixtures::reached("sfdisk_rewrite");
        assert!(
            disjoint(&after),
            "the rewrite made partitions overlap:\n{dump}\n{out}"
        );
    }
}

const GPT: &str = "label: gpt
label-id: 8D3F0E4B-4C9A-4E64-9A3B-1C2D3E4F5A6B
device: /dev/sda
unit: sectors
first-lba: 34
last-lba: 2658270
sector-size: 512

/dev/sda1 : start=        2048, size=        2048, type=21686148-6449-6E6F-744E-656564454649, uuid=A1, name=\"bios\"
/dev/sda2 : start=        4096, size=     2621440, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=A2, name=\"root\", attrs=\"LegacyBIOSBootable\"
/dev/sda3 : start=     2625536, size=       20480, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=A3
";

const DOS: &str = "label: dos
label-id: 0x5a1e1d1b
device: /dev/sda
unit: sectors
sector-size: 4096

/dev/sda1 : start=256, size=65536, type=83, bootable
/dev/sda2 : start=65792, size=1024, type=82
/dev/sda3 : start=66816, size=262144, type=83
";

fn seed(mask: u8, grow: u64, dump: &str) -> Vec<u8> {
    [&[mask][..], &grow.to_le_bytes(), dump.as_bytes()].concat()
}

/// GPT and DOS dumps as sfdisk writes them, with the root or several
/// partitions grown by a LUKS2 header, and faulty ones.
pub fn seeds() -> Vec<Vec<u8>> {
    let plain = GPT
        .replace(", name=\"bios\"", "")
        .replace(", name=\"root\", attrs=\"LegacyBIOSBootable\"", "");
    vec![
        seed(0b010, 16 << 20, GPT),
        seed(0b110, 16 << 20, GPT),
        seed(0b010, 16 << 20, &plain),
        seed(0b101, 16 << 20, DOS),
        seed(0b010, 1000, GPT),
        seed(
            0b010,
            16 << 20,
            &GPT.replace("sector-size: 512", "sector-size: 0"),
        ),
        seed(0b010, u64::MAX - 511, &plain),
        seed(
            0b010,
            16 << 20,
            &GPT.replace("name=\"root\"", "name=\"root, start=0\""),
        ),
    ]
}
