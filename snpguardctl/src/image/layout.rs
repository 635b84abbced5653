//! What convert does with each file system the guest mounts, decided
//! before anything is written (docs/convert.md, "Partitions"):
//!
//! - `/` becomes the LUKS2 root volume (its key is the VMK);
//! - every other ext2/3/4 file system (a separate `/var`, `/home`, `/usr`,
//!   `/srv`…) becomes a LUKS2 data volume of its own, its key derived from
//!   the VMK (`snpguard::volume`), opened by the agent before the root is
//!   mounted and mounted through `/dev/mapper/<name>`;
//! - a separate `/boot` moves onto the encrypted root (the guest boots
//!   directly from the launch bundle, so nothing reads the partition any
//!   more) and its fstab line goes;
//! - the ESP (`/boot/efi`, `/efi`) stays as it is but is mounted only on
//!   demand (`noauto`): it holds no file the guest runs;
//! - swap partitions are dropped (a swap in clear on the host's disk would
//!   leak guest memory to the host and let the host feed pages back);
//!   swap files live on the encrypted root and stay;
//! - any other file system is refused, by name, before anything is done.
//!
//! The fstab rewrite here is pure text; every line convert does not touch
//! is kept byte for byte.

use anyhow::{bail, Result};
use serde::Serialize;

/// What convert does with a mounted file system other than `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A LUKS2 data volume of its own.
    Encrypted,
    /// Moved onto the encrypted root (`/boot`); the partition is no longer
    /// mounted.
    MovedToRoot,
    /// The EFI system partition: kept, mounted `noauto`.
    Esp,
}

/// Mount points of an EFI system partition.
const ESP_MOUNTPOINTS: [&str; 2] = ["/boot/efi", "/efi"];

/// Decides what happens to the file system of type `fstype` mounted at
/// `mountpoint` (partition `partnum`); an error names the partition and
/// what the operator can do.
pub fn classify(mountpoint: &str, partnum: i32, fstype: &str) -> Result<Role> {
    let ext = matches!(fstype, "ext2" | "ext3" | "ext4");
    if mountpoint == "/boot" {
        return Ok(Role::MovedToRoot);
    }
    if ESP_MOUNTPOINTS.contains(&mountpoint) {
        if fstype != "vfat" {
            bail!(
                "{mountpoint} (partition {partnum}) is {fstype}, not the vfat of an EFI \
                 system partition; convert cannot tell what it holds: move its files onto \
                 the root or remove its line from /etc/fstab first"
            );
        }
        return Ok(Role::Esp);
    }
    if ext {
        return Ok(Role::Encrypted);
    }
    bail!(
        "{mountpoint} (partition {partnum}) is a {fstype} file system; convert encrypts \
         ext2, ext3 and ext4 data file systems only (a file system left in clear would let \
         the host plant files the attested guest runs): convert it to ext4, or move its \
         files onto the root and remove its line from /etc/fstab first"
    )
}

/// The device-mapper name of the data volume mounted at `mountpoint` on
/// partition `partnum`: `snpguard_<mount point>` (`/var/lib` ->
/// `snpguard_var-lib`), with the partition number when that name is taken
/// or too long. Never `snpguard_root`.
pub fn mapper_name(mountpoint: &str, partnum: i32, taken: &[String]) -> String {
    let body: String = mountpoint
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    let name = format!("snpguard_{body}");
    let free = |n: &str| n != super::luks::MAPPER_NAME && !taken.iter().any(|t| t == n);
    if name.len() <= 48 && free(&name) && !body.is_empty() {
        return name;
    }
    let mut n = format!("snpguard_p{partnum}");
    let mut i = 0;
    while !free(&n) {
        i += 1;
        n = format!("snpguard_p{partnum}_{i}");
    }
    n
}

/// Whether a swap line's device field names a device (swapped off by
/// convert) rather than a swap file on a mounted file system.
pub fn swap_is_device(spec: &str) -> bool {
    ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// What the fstab rewrite does.
#[derive(Debug, Clone, Default)]
pub struct FstabPlan {
    /// The root file system's UUID and label (kept through the copy).
    pub root_uuid: String,
    pub root_label: String,
    /// Data volumes: mount point and `/dev/mapper/<name>`.
    pub encrypted: Vec<(String, String)>,
    /// Mount points whose file system moved onto the root (`/boot`).
    pub moved: Vec<String>,
    /// Mount points of the ESP (`noauto`).
    pub esp: Vec<String>,
}

/// The outcome of the rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fstab {
    pub text: String,
    /// The swap lines commented out, as they were.
    pub dropped_swaps: Vec<String>,
}

/// The root line must name the file system by UUID (a partition path or
/// PARTUUID would now point at the LUKS2 container).
fn root_spec_keeps(spec: &str, p: &FstabPlan) -> bool {
    spec == format!("UUID={}", p.root_uuid)
        || spec == format!("/dev/disk/by-uuid/{}", p.root_uuid)
        || (!p.root_label.is_empty() && spec == format!("LABEL={}", p.root_label))
}

/// Rewrites `fstab` by `plan`. Every mount point of the plan must have its
/// line; a line convert changes keeps its other fields.
pub fn rewrite_fstab(fstab: &str, plan: &FstabPlan) -> Result<Fstab> {
    let mut out = String::with_capacity(fstab.len() + 256);
    let mut dropped_swaps = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for line in fstab.split_inclusive('\n') {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.trim_start().starts_with('#') || fields.len() < 2 {
            out.push_str(line);
            continue;
        }
        let (spec, mp) = (fields[0], fields[1]);
        let fstype = fields.get(2).copied().unwrap_or("");
        let with = |f: &[String]| format!("{}\n", f.join(" "));
        let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        if mp == "/" {
            seen.push(mp);
            if root_spec_keeps(spec, plan) {
                out.push_str(line);
            } else {
                f[0] = format!("UUID={}", plan.root_uuid);
                out.push_str(&with(&f));
            }
        } else if let Some((_, mapper)) = plan.encrypted.iter().find(|(m, _)| m == mp) {
            seen.push(mp);
            f[0] = mapper.clone();
            out.push_str(&with(&f));
        } else if plan.moved.iter().any(|m| m == mp) {
            seen.push(mp);
            out.push_str(&format!(
                "# snpguardctl convert: {mp} is on the encrypted root now (the guest boots \
                 from its launch bundle):\n# {}",
                line.trim_end_matches('\n')
            ));
            out.push('\n');
        } else if plan.esp.iter().any(|m| m == mp) {
            seen.push(mp);
            match f.get_mut(3) {
                Some(opts) if opts.split(',').any(|o| o == "noauto") => {}
                Some(opts) => opts.push_str(",noauto"),
                None => f.push("noauto".into()),
            }
            out.push_str(&with(&f));
        } else if fstype == "swap" && swap_is_device(spec) {
            dropped_swaps.push(line.trim_end_matches('\n').to_string());
            out.push_str(&format!(
                "# snpguardctl convert: no swap in clear on the host's disk:\n# {}",
                line.trim_end_matches('\n')
            ));
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    let planned = std::iter::once("/")
        .chain(plan.encrypted.iter().map(|(m, _)| m.as_str()))
        .chain(plan.moved.iter().map(String::as_str))
        .chain(plan.esp.iter().map(String::as_str));
    for mp in planned {
        match seen.iter().filter(|s| **s == mp).count() {
            1 => {}
            0 => bail!("/etc/fstab of the image has no line for {mp}; convert cannot place it"),
            n => bail!("/etc/fstab of the image mounts {mp} {n} times; leave one line for it"),
        }
    }
    Ok(Fstab {
        text: out,
        dropped_swaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_system_gets_its_role() {
        assert_eq!(classify("/boot", 2, "ext4").unwrap(), Role::MovedToRoot);
        assert_eq!(classify("/boot", 2, "xfs").unwrap(), Role::MovedToRoot);
        assert_eq!(classify("/boot/efi", 1, "vfat").unwrap(), Role::Esp);
        assert_eq!(classify("/efi", 1, "vfat").unwrap(), Role::Esp);
        for mp in ["/var", "/home", "/usr", "/srv", "/var/lib/docker"] {
            assert_eq!(classify(mp, 4, "ext4").unwrap(), Role::Encrypted, "{mp}");
        }
        assert_eq!(classify("/var", 4, "ext3").unwrap(), Role::Encrypted);
        // Refused by name with what to do.
        let e = classify("/srv", 5, "xfs").unwrap_err().to_string();
        assert!(
            e.starts_with("/srv (partition 5) is a xfs file system"),
            "{e}"
        );
        assert!(e.contains("convert it to ext4"), "{e}");
        let e = classify("/data", 6, "vfat").unwrap_err().to_string();
        assert!(e.starts_with("/data (partition 6)"), "{e}");
        let e = classify("/boot/efi", 1, "ext4").unwrap_err().to_string();
        assert!(e.contains("not the vfat"), "{e}");
    }

    #[test]
    fn mapper_names_follow_the_mount_point_and_stay_unique() {
        assert_eq!(mapper_name("/var", 4, &[]), "snpguard_var");
        assert_eq!(mapper_name("/var/lib/x y", 4, &[]), "snpguard_var-lib-x-y");
        assert_eq!(mapper_name("/root", 4, &[]), "snpguard_p4");
        let taken = vec!["snpguard_var".to_string()];
        assert_eq!(mapper_name("/var", 7, &taken), "snpguard_p7");
        let taken = vec!["snpguard_var".to_string(), "snpguard_p7".to_string()];
        assert_eq!(mapper_name("/var", 7, &taken), "snpguard_p7_1");
        let long = format!("/{}", "a".repeat(60));
        assert_eq!(mapper_name(&long, 3, &[]), "snpguard_p3");
    }

    fn plan() -> FstabPlan {
        FstabPlan {
            root_uuid: "R".into(),
            root_label: "rootfs".into(),
            encrypted: vec![
                ("/var".into(), "/dev/mapper/snpguard_var".into()),
                ("/home".into(), "/dev/mapper/snpguard_home".into()),
            ],
            moved: vec!["/boot".into()],
            esp: vec!["/boot/efi".into()],
        }
    }

    const SPLIT: &str = "# /etc/fstab: static file system information.
UUID=R / ext4 errors=remount-ro 0 1
UUID=B /boot ext4 defaults 0 2
UUID=E /boot/efi vfat umask=0077 0 1
UUID=V /var ext4 defaults,nodev 0 2
UUID=H\t/home\text4\tdefaults,nodev,nosuid\t0\t2
UUID=S none swap sw 0 0
/swapfile none swap sw 0 0
tmpfs /tmp tmpfs defaults 0 0
";

    #[test]
    fn the_split_layout_is_rewritten_line_by_line() {
        let f = rewrite_fstab(SPLIT, &plan()).unwrap();
        let want = "# /etc/fstab: static file system information.
UUID=R / ext4 errors=remount-ro 0 1
# snpguardctl convert: /boot is on the encrypted root now (the guest boots from its launch bundle):
# UUID=B /boot ext4 defaults 0 2
UUID=E /boot/efi vfat umask=0077,noauto 0 1
/dev/mapper/snpguard_var /var ext4 defaults,nodev 0 2
/dev/mapper/snpguard_home /home ext4 defaults,nodev,nosuid 0 2
# snpguardctl convert: no swap in clear on the host's disk:
# UUID=S none swap sw 0 0
/swapfile none swap sw 0 0
tmpfs /tmp tmpfs defaults 0 0
";
        assert_eq!(f.text, want);
        assert_eq!(f.dropped_swaps, ["UUID=S none swap sw 0 0"]);
    }

    #[test]
    fn the_root_line_names_the_file_system_by_uuid() {
        let p = FstabPlan {
            root_uuid: "U".into(),
            ..FstabPlan::default()
        };
        let f = "# comment with / in it\n/dev/sda1 / ext4 errors=remount-ro 0 1\n";
        assert_eq!(
            rewrite_fstab(f, &p).unwrap().text,
            "# comment with / in it\nUUID=U / ext4 errors=remount-ro 0 1\n"
        );
        for kept in [
            "UUID=U / ext4 defaults 0 1\n",
            "/dev/disk/by-uuid/U / ext4 defaults 0 1\n",
        ] {
            assert_eq!(rewrite_fstab(kept, &p).unwrap().text, kept);
        }
        let labelled = FstabPlan {
            root_label: "r".into(),
            ..p.clone()
        };
        let f = "LABEL=r / ext4 defaults 0 1\n";
        assert_eq!(rewrite_fstab(f, &labelled).unwrap().text, f);
        let f = "PARTUUID=x / ext4 defaults 0 1\n";
        assert_eq!(
            rewrite_fstab(f, &labelled).unwrap().text,
            "UUID=U / ext4 defaults 0 1\n"
        );
    }

    #[test]
    fn an_esp_without_options_and_an_existing_noauto() {
        let p = FstabPlan {
            root_uuid: "R".into(),
            esp: vec!["/efi".into()],
            ..FstabPlan::default()
        };
        let f = "UUID=R / ext4 defaults 0 1\nUUID=E /efi vfat\n";
        assert_eq!(
            rewrite_fstab(f, &p).unwrap().text,
            "UUID=R / ext4 defaults 0 1\nUUID=E /efi vfat noauto\n"
        );
        let f = "UUID=R / ext4 defaults 0 1\nUUID=E /efi vfat noauto,umask=0077 0 1\n";
        assert_eq!(rewrite_fstab(f, &p).unwrap().text, f);
    }

    #[test]
    fn a_planned_mount_point_must_have_exactly_one_line() {
        let e = rewrite_fstab("UUID=R / ext4 defaults 0 1\n", &plan())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no line for /var"), "{e}");
        let twice = SPLIT.replace("UUID=S", "UUID=V2 /var ext4 defaults 0 2\nUUID=S");
        let e = rewrite_fstab(&twice, &plan()).unwrap_err().to_string();
        assert!(e.contains("mounts /var 2 times"), "{e}");
        let commented = SPLIT.replace("UUID=V /var", "#UUID=V /var");
        assert!(rewrite_fstab(&commented, &plan()).is_err());
    }
}
