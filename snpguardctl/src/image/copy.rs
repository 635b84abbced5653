//! Building the output disk inside the appliance: the input's partition
//! table with the root and each data partition grown by the LUKS2 header,
//! the partitions convert leaves alone copied block for block, and each
//! encrypted filesystem recreated (same type, UUID, label, features) and
//! filled with a file-level copy.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::appliance::{gerr, quote, Appliance};
use super::sfdisk::rewrite_sfdisk_dump;

/// Input and output disks as libguestfs API names (its daemon maps them to
/// the kernel's; shell commands get the kernel names from
/// `Appliance::kernel_disk`).
pub const IN_DISK: &str = "/dev/sda";
/// See [`IN_DISK`].
pub const OUT_DISK: &str = "/dev/sdb";

/// A tmpfs in the appliance's own tree (libguestfs `write` needs something
/// mounted under /sysroot) for the new partition table: a file, not a
/// here-document, so names from the input image never reach a shell.
const WORK_DIR: &str = "/sysroot/.snpguard-work";
const SFDISK_SCRIPT: &str = "/sysroot/.snpguard-work/sfdisk";

/// Writes the output disk's partition table (with the partitions of
/// `grown` larger by `grow` bytes) and boot code, and copies every
/// partition block for block except those of `grown` and `skip`.
pub fn partitions(app: &Appliance, grown: &[i32], skip: &[i32], grow: u64) -> Result<Vec<i32>> {
    let (kin, kout) = (app.kernel_disk(0)?, app.kernel_disk(1)?);
    let dump = app.sh(&format!("sfdisk --dump {kin}"))?;
    let new = rewrite_sfdisk_dump(&dump, grown, grow, &kin, &kout)?;
    app.sh(&format!(
        "mkdir -p {WORK_DIR}\nmount -t tmpfs -o size=1m,mode=0700 snpguard-work {WORK_DIR}"
    ))?;
    app.write_appliance_file(SFDISK_SCRIPT, new.as_bytes())?;
    app.sh(&format!(
        "sfdisk -q --no-reread --no-tell-kernel {kout} < {SFDISK_SCRIPT}\n\
         umount {WORK_DIR}\n\
         rmdir {WORK_DIR}\n\
         blockdev --rereadpt {kout}\n\
         udevadm settle\n\
         dd if={kin} of={kout} bs=440 count=1 conv=notrunc status=none"
    ))
    .context("writing the output partition table")?;
    if dump.lines().any(|l| l.trim() == "label: dos") {
        // Boot code between the MBR and the first partition (GRUB's
        // core image on dos disks).
        let first = app.sh(&format!(
            "sfdisk --dump {kin} | sed -n 's/.*start= *\\([0-9]*\\).*/\\1/p' | sort -n | head -1"
        ))?;
        let first: u64 = first.trim().parse().context("first partition start")?;
        if first > 1 {
            app.sh(&format!(
                "dd if={kin} of={kout} bs=512 skip=1 seek=1 count={} conv=notrunc status=none",
                first - 1
            ))?;
        }
    }
    let g = app.g();
    let mut copied = Vec::new();
    for p in g.part_list(IN_DISK).map_err(gerr("part_list"))? {
        if grown.contains(&p.part_num) || skip.contains(&p.part_num) {
            continue;
        }
        let (src, dst) = (
            format!("{IN_DISK}{}", p.part_num),
            format!("{OUT_DISK}{}", p.part_num),
        );
        g.copy_device_to_device(
            &src,
            &dst,
            guestfs::CopyDeviceToDeviceOptArgs {
                srcoffset: None,
                destoffset: None,
                size: None,
                sparse: Some(true),
                append: None,
            },
        )
        .map_err(gerr("copy_device_to_device"))
        .with_context(|| format!("copying partition {}", p.part_num))?;
        copied.push(p.part_num);
    }
    Ok(copied)
}

/// `mke2fs` arguments that recreate the filesystem `tune2fs -l` describes:
/// same type, block and inode sizes, inode count, UUID, label and feature
/// set.
pub fn mke2fs_args(fstype: &str, t: &HashMap<String, String>) -> Result<Vec<String>> {
    let get = |k: &str| {
        t.get(k)
            .map(|v| v.trim().to_string())
            .with_context(|| format!("tune2fs -l of the root filesystem has no {k:?}"))
    };
    // Runtime state, not creation options.
    const NOT_SETTABLE: [&str; 3] = ["needs_recovery", "mmp", "snapshot_bitmap"];
    let features: Vec<String> = get("Filesystem features")?
        .split_whitespace()
        .filter(|f| !NOT_SETTABLE.contains(f))
        .map(String::from)
        .collect();
    let mut args = vec![
        "-F".to_string(),
        "-q".into(),
        "-t".into(),
        fstype.into(),
        "-b".into(),
        get("Block size")?,
        "-I".into(),
        get("Inode size").unwrap_or_else(|_| "256".into()),
        "-N".into(),
        get("Inode count")?,
        "-U".into(),
        get("Filesystem UUID")?,
        "-O".into(),
        format!("none,{}", features.join(",")),
        "-E".into(),
        "nodiscard".into(),
    ];
    let label = t
        .get("Filesystem volume name")
        .map(|s| s.trim())
        .unwrap_or("");
    if !label.is_empty() && label != "<none>" {
        args.push("-L".into());
        args.push(label.into());
    }
    Ok(args)
}

/// Recreates the filesystem of `/dev/sdaN` on `target`.
pub fn mkfs_like(app: &Appliance, fstype: &str, source: &str, target: &str) -> Result<()> {
    let t: HashMap<String, String> = app
        .g()
        .tune2fs_l(source)
        .map_err(gerr("tune2fs_l"))?
        .into_iter()
        .collect();
    let args = mke2fs_args(fstype, &t)?;
    let quoted: Vec<String> = args.iter().map(|a| quote(a)).collect();
    app.sh(&format!("mke2fs {} {}", quoted.join(" "), quote(target)))
        .with_context(|| format!("creating the filesystem of {source} on the LUKS2 volume"))?;
    Ok(())
}

/// Where the copy mounts its source and destination in the appliance.
const IN_MNT: &str = "/run/snpguard/in";
const OUT_MNT: &str = "/run/snpguard/out";

/// Copies every file of `source` (a kernel device name) into directory
/// `subdir` (`""` for its top) of the filesystem on `target` with `cp -a`
/// (owners, modes, timestamps, xattrs, ACLs, hard links, sparse files,
/// device nodes), calling `progress(bytes_done)` about once a second.
pub fn copy_files(
    app: &Appliance,
    source: &str,
    target: &str,
    subdir: &str,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    // Only convert's own names (`boot`): the path goes into a quoted
    // `sh -c` script.
    if subdir.split('/').any(|c| c == ".." || c == ".")
        || subdir.starts_with('/')
        || !subdir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-/".contains(&b))
    {
        bail!("copy_files: {subdir:?} is not a plain relative directory");
    }
    let into = if subdir.is_empty() {
        OUT_MNT.to_string()
    } else {
        format!("{OUT_MNT}/{subdir}")
    };
    app.sh(&format!(
        "mkdir -p {IN_MNT} {OUT_MNT}
mount -o ro {src} {IN_MNT}
mount {dst} {OUT_MNT}
base=$(df -B1 --output=used {OUT_MNT} | tail -n 1)
echo \"$base\" > /run/snpguard/base
rm -f /run/snpguard/cp.rc
test -d {into}
setsid sh -c 'cp -a {IN_MNT}/. {into}/ > /run/snpguard/cp.log 2>&1; echo $? > /run/snpguard/cp.rc.tmp; mv /run/snpguard/cp.rc.tmp /run/snpguard/cp.rc' </dev/null >/dev/null 2>&1 &",
        src = quote(source),
        dst = quote(target),
    ))
    .context("starting the file copy")?;
    loop {
        let state = app.sh(&format!(
            "used=$(df -B1 --output=used {OUT_MNT} | tail -n 1)
echo $((used - $(cat /run/snpguard/base)))
cat /run/snpguard/cp.rc 2>/dev/null || true"
        ))?;
        let mut lines = state.lines();
        let done: i64 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        progress(done.max(0) as u64);
        if let Some(rc) = lines.next() {
            if rc.trim() != "0" {
                let log = app
                    .sh("tail -n 20 /run/snpguard/cp.log")
                    .unwrap_or_default();
                bail!(
                    "copying the files of {source} failed (cp exit {}): {log}",
                    rc.trim()
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    app.sh(&format!("sync\numount {IN_MNT}\numount {OUT_MNT}"))
        .context("unmounting after the copy")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn root_grows_and_later_partitions_move() {
        let out = rewrite_sfdisk_dump(GPT, &[2], 16 << 20, IN_DISK, OUT_DISK).unwrap();
        assert!(out.contains("label-id: 8D3F0E4B-4C9A-4E64-9A3B-1C2D3E4F5A6B"));
        assert!(!out.contains("last-lba") && !out.contains("device:"));
        assert!(out.contains("/dev/sdb1 : start=2048, size=2048, type=21686148"));
        assert!(out.contains(
            "/dev/sdb2 : start=4096, size=2654208, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=A2, name=\"root\", attrs=\"LegacyBIOSBootable\""
        ), "{out}");
        assert!(
            out.contains("/dev/sdb3 : start=2658304, size=20480"),
            "{out}"
        );
        assert!(!out.contains("/dev/sda"));
    }

    #[test]
    fn each_grown_partition_moves_the_ones_after_it() {
        // Root (2) and the partition after it (3) both grow: 3 moves by
        // one header, whatever comes after both by two.
        let four = format!(
            "{GPT}/dev/sda4 : start=     2646016, size=        2048, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, uuid=A4\n"
        );
        let out = rewrite_sfdisk_dump(&four, &[3, 2], 16 << 20, IN_DISK, OUT_DISK).unwrap();
        assert!(out.contains("/dev/sdb1 : start=2048, size=2048,"), "{out}");
        assert!(
            out.contains("/dev/sdb2 : start=4096, size=2654208,"),
            "{out}"
        );
        assert!(
            out.contains("/dev/sdb3 : start=2658304, size=53248,"),
            "{out}"
        );
        assert!(
            out.contains("/dev/sdb4 : start=2711552, size=2048,"),
            "{out}"
        );
        // A logical partition of a dos table cannot grow.
        let dos = four.replace("label: gpt", "label: dos");
        let e = rewrite_sfdisk_dump(&dos, &[2, 5], 16 << 20, IN_DISK, OUT_DISK).unwrap_err();
        assert!(e.to_string().contains("partition 5"), "{e}");
    }

    #[test]
    fn quoted_names_keep_their_commas() {
        let dump = GPT.replace("name=\"root\"", "name=\"root, start=0\"");
        let out = rewrite_sfdisk_dump(&dump, &[2], 16 << 20, IN_DISK, OUT_DISK).unwrap();
        assert!(out.contains("start=4096, size=2654208,"), "{out}");
        assert!(out.contains("name=\"root, start=0\""), "{out}");
        let open = GPT.replace("name=\"root\"", "name=\"root");
        assert!(rewrite_sfdisk_dump(&open, &[2], 16 << 20, IN_DISK, OUT_DISK).is_err());
    }

    #[test]
    fn unsupported_tables_are_named() {
        let e = rewrite_sfdisk_dump(
            &GPT.replace("label: gpt", "label: sun"),
            &[2],
            16 << 20,
            IN_DISK,
            OUT_DISK,
        )
        .unwrap_err();
        assert!(e.to_string().contains("sun"), "{e}");
        let dos = GPT.replace("label: gpt", "label: dos");
        assert!(rewrite_sfdisk_dump(&dos, &[5], 16 << 20, IN_DISK, OUT_DISK).is_err());
        assert!(rewrite_sfdisk_dump(GPT, &[9], 16 << 20, IN_DISK, OUT_DISK).is_err());
        assert!(rewrite_sfdisk_dump(GPT, &[2], 1000, IN_DISK, OUT_DISK).is_err());
        // Found by the sfdisk_rewrite fuzz target (its reproducer is in
        // fuzz/regressions/sfdisk_rewrite): a division by zero.
        let zero = GPT.replace("sector-size: 512", "sector-size: 0");
        let e = rewrite_sfdisk_dump(&zero, &[2], 16 << 20, IN_DISK, OUT_DISK).unwrap_err();
        assert!(e.to_string().contains("sector-size 0"), "{e}");
        // Found by the same target: sectors past 2^64 (an overflow, which
        // a release build wrapped into a wrong partition table).
        let bytes = GPT.replace("sector-size: 512", "sector-size: 1");
        let e = rewrite_sfdisk_dump(&bytes, &[2], u64::MAX - 100, IN_DISK, OUT_DISK).unwrap_err();
        assert!(e.to_string().contains("partition 2"), "{e}");
        let far = GPT.replace("2625536", &(u64::MAX - 1000).to_string());
        let e = rewrite_sfdisk_dump(&far, &[2], 16 << 20, IN_DISK, OUT_DISK).unwrap_err();
        assert!(e.to_string().contains("partition 3"), "{e}");
    }

    #[test]
    fn mke2fs_keeps_identity_and_features() {
        let t: HashMap<String, String> = [
            (
                "Filesystem features",
                "has_journal ext_attr needs_recovery extent 64bit metadata_csum",
            ),
            ("Block size", "4096"),
            ("Inode size", "256"),
            ("Inode count", "81920"),
            ("Filesystem UUID", "d6c1c5a4-0000-4000-8000-000000000001"),
            ("Filesystem volume name", "rootfs"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let a = mke2fs_args("ext4", &t).unwrap().join(" ");
        assert!(
            a.contains("-O none,has_journal,ext_attr,extent,64bit,metadata_csum"),
            "{a}"
        );
        assert!(a.contains("-U d6c1c5a4-0000-4000-8000-000000000001"));
        assert!(a.contains("-L rootfs") && a.contains("-N 81920") && a.contains("-b 4096"));
        let mut unlabeled = t.clone();
        unlabeled.insert("Filesystem volume name".into(), "<none>".into());
        assert!(!mke2fs_args("ext4", &unlabeled)
            .unwrap()
            .contains(&"-L".to_string()));
        unlabeled.remove("Filesystem UUID");
        assert!(mke2fs_args("ext4", &unlabeled).is_err());
    }
}
