//! Inspection of the input image: where the root filesystem is, what else
//! is mounted, which kernels exist and whether they can boot as SEV-SNP
//! guests, and which initrd tool the guest uses.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::appliance::{gerr, Appliance};
use super::kernel::{self, SevSupport};
use super::layout::{self, Role};

/// The guest's initrd generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitrdTool {
    /// Debian/Ubuntu initramfs-tools (`update-initramfs`).
    InitramfsTools,
    /// dracut.
    Dracut,
}

impl InitrdTool {
    /// The name used for module directories (`initramfs-tools`, `dracut`).
    pub fn name(self) -> &'static str {
        match self {
            InitrdTool::InitramfsTools => "initramfs-tools",
            InitrdTool::Dracut => "dracut",
        }
    }
}

/// A partition of the first disk, by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Mount point in the guest (`/boot`, `/boot/efi`).
    pub mountpoint: String,
    /// Partition number on the disk.
    pub partnum: i32,
    /// Filesystem type.
    pub fstype: String,
    /// What convert does with it.
    pub role: Role,
}

/// The root filesystem's identity, kept through the conversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootFs {
    /// Partition number of the root filesystem.
    pub partnum: i32,
    /// `ext2`, `ext3` or `ext4`.
    pub fstype: String,
    /// Filesystem UUID.
    pub uuid: String,
    /// Filesystem label (may be empty).
    pub label: String,
    /// Bytes in use (what the copy moves).
    pub used_bytes: u64,
}

/// One kernel of the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// `uname -r` of the kernel.
    pub version: String,
    /// Path of the kernel image in the guest.
    pub kernel: String,
    /// Path of its initrd in the guest (regenerated if absent).
    pub initrd: String,
    /// The bootloader's command line for it (without `root=`'s rewrite).
    pub cmdline: String,
    /// Whether it can boot as an SEV-SNP guest.
    pub sev: SevSupport,
}

/// Everything convert needs to know about the input image.
#[derive(Debug, Clone, Serialize)]
pub struct Guest {
    /// `inspect_get_product_name`.
    pub product: String,
    /// Root filesystem.
    pub root: RootFs,
    /// Other filesystems on the first disk, parents before children.
    pub mounts: Vec<Mount>,
    /// Swap partitions of the first disk (never copied: see
    /// [`layout`]).
    pub swap_partitions: Vec<i32>,
    /// Kernels, newest first.
    pub kernels: Vec<Kernel>,
    /// Version of the kernel the bootloader boots by default, if known.
    pub bootloader_default: Option<String>,
    /// The initrd generator and its path in the guest.
    pub initrd_tool: InitrdTool,
    /// Absolute path of that tool in the guest.
    pub initrd_tool_path: String,
}

impl Guest {
    /// The kernel to offer by default: the bootloader's default when it is
    /// supported, else the newest supported one.
    pub fn default_kernel(&self) -> Option<&Kernel> {
        let supported = |k: &&Kernel| k.sev.ok();
        self.bootloader_default
            .as_deref()
            .and_then(|v| self.kernels.iter().find(|k| k.version == v))
            .filter(supported)
            .or_else(|| self.kernels.iter().find(supported))
    }
}

/// The number of partition `dev` on `/dev/sda` (the input disk).
fn partnum_on_first_disk(app: &Appliance, dev: &str, what: &str) -> Result<i32> {
    let g = app.g();
    if !dev.starts_with("/dev/sd") {
        bail!(
            "{what} is on {dev}, which is not a plain partition \
             (LVM, RAID and btrfs subvolumes are not supported by convert)"
        );
    }
    let disk = g.part_to_dev(dev).map_err(gerr("part_to_dev"))?;
    if disk != "/dev/sda" {
        bail!("{what} is on {dev}, not on the first disk of the image");
    }
    g.part_to_partnum(dev).map_err(gerr("part_to_partnum"))
}

/// Inspects the image attached as `/dev/sda`. Leaves its filesystems
/// unmounted.
pub fn inspect(app: &Appliance) -> Result<Guest> {
    let g = app.g();
    let roots = g.inspect_os().map_err(gerr("inspect_os"))?;
    let root = match roots.as_slice() {
        [r] => r.clone(),
        [] => bail!("no operating system found in the input image"),
        _ => bail!(
            "the input image has {} operating systems; convert handles one",
            roots.len()
        ),
    };
    let os = g
        .inspect_get_type(&root)
        .map_err(gerr("inspect_get_type"))?;
    if os != "linux" {
        bail!("the input image holds a {os} system; convert handles Linux guests");
    }
    let product = g
        .inspect_get_product_name(&root)
        .map_err(gerr("inspect_get_product_name"))?;
    let mountpoints: BTreeMap<String, String> = g
        .inspect_get_mountpoints(&root)
        .map_err(gerr("inspect_get_mountpoints"))?
        .into_iter()
        .collect();

    let root_partnum = partnum_on_first_disk(app, &root, "the root filesystem")?;
    let fstype = g.vfs_type(&root).map_err(gerr("vfs_type"))?;
    if !matches!(fstype.as_str(), "ext2" | "ext3" | "ext4") {
        bail!("the root filesystem is {fstype}; convert supports ext2, ext3 and ext4 roots");
    }
    let mut mounts = Vec::new();
    for (mp, dev) in &mountpoints {
        if mp == "/" {
            continue;
        }
        let partnum = partnum_on_first_disk(app, dev, mp)?;
        let fstype = g.vfs_type(dev).map_err(gerr("vfs_type"))?;
        let role = layout::classify(mp, partnum, &fstype)?;
        mounts.push(Mount {
            mountpoint: mp.clone(),
            partnum,
            fstype,
            role,
        });
    }
    let mut swap_partitions = Vec::new();
    for (dev, fstype) in g.list_filesystems().map_err(gerr("list_filesystems"))? {
        if fstype == "swap" && dev.starts_with("/dev/sda") {
            if let Ok(n) = g.part_to_partnum(&dev) {
                swap_partitions.push(n);
            }
        }
    }
    swap_partitions.sort_unstable();
    // Parents before children: /boot before /boot/efi.
    mounts.sort_by_key(|m| m.mountpoint.matches('/').count());

    // Mount read-only and read what matters.
    mount_ro(app, root_partnum, &mounts)?;
    let result = read_mounted(app, product, root_partnum, fstype, &root, mounts).map(|g| Guest {
        swap_partitions,
        ..g
    });
    g.umount_all().map_err(gerr("umount_all"))?;
    result
}

/// Mounts the input image's root (partition `root_partnum` of /dev/sda)
/// and its other file systems read-only at their mount points.
pub fn mount_ro(app: &Appliance, root_partnum: i32, mounts: &[Mount]) -> Result<()> {
    let g = app.g();
    g.mount_ro(&format!("/dev/sda{root_partnum}"), "/")
        .map_err(gerr("mount_ro"))
        .context("mounting the root of the input image")?;
    for m in mounts {
        let dev = format!("/dev/sda{}", m.partnum);
        g.mount_ro(&dev, &m.mountpoint)
            .map_err(gerr("mount_ro"))
            .with_context(|| format!("mounting {} of the input image", m.mountpoint))?;
    }
    Ok(())
}

fn read_mounted(
    app: &Appliance,
    product: String,
    partnum: i32,
    fstype: String,
    root_dev: &str,
    mounts: Vec<Mount>,
) -> Result<Guest> {
    let g = app.g();
    let st = g.statvfs("/").map_err(gerr("statvfs"))?;
    let used_bytes = ((st.blocks - st.bfree).max(0) as u64) * st.frsize.max(0) as u64;
    let root = RootFs {
        partnum,
        fstype,
        uuid: g.vfs_uuid(root_dev).map_err(gerr("vfs_uuid"))?,
        label: g.vfs_label(root_dev).map_err(gerr("vfs_label"))?,
        used_bytes,
    };
    let (initrd_tool, initrd_tool_path) = initrd_tool(app)?;
    let (kernels, bootloader_default) = kernels(app)?;
    Ok(Guest {
        product,
        root,
        mounts,
        swap_partitions: Vec::new(),
        kernels,
        bootloader_default,
        initrd_tool,
        initrd_tool_path,
    })
}

fn is_file(app: &Appliance, path: &str) -> Result<bool> {
    app.g()
        .is_file(
            path,
            guestfs::IsFileOptArgs {
                followsymlinks: Some(true),
            },
        )
        .map_err(gerr("is_file"))
}

fn read_text(app: &Appliance, path: &str) -> Result<Option<String>> {
    if !is_file(app, path)? {
        return Ok(None);
    }
    let bytes = app.g().read_file(path).map_err(gerr("read_file"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn initrd_tool(app: &Appliance) -> Result<(InitrdTool, String)> {
    for p in ["/usr/sbin/update-initramfs", "/sbin/update-initramfs"] {
        if is_file(app, p)? {
            return Ok((InitrdTool::InitramfsTools, p.into()));
        }
    }
    for p in ["/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut"] {
        if is_file(app, p)? {
            return Ok((InitrdTool::Dracut, p.into()));
        }
    }
    bail!("the guest has neither initramfs-tools (update-initramfs) nor dracut; install one in the image first")
}

/// The value of `KEY="…"` in /etc/default/grub.
fn default_grub_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// The guest's kernels (newest first) and the bootloader's default.
fn kernels(app: &Appliance) -> Result<(Vec<Kernel>, Option<String>)> {
    let g = app.g();
    let mut menu = kernel::GrubMenu::default();
    for cfg in ["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"] {
        if let Some(text) = read_text(app, cfg)? {
            menu = kernel::parse_grub_cfg(&text);
            break;
        }
    }
    let fallback_args = match read_text(app, "/etc/default/grub")? {
        Some(t) => {
            let mut a = String::from("ro");
            for k in ["GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"] {
                if let Some(v) = default_grub_value(&t, k).filter(|v| !v.is_empty()) {
                    a.push(' ');
                    a.push_str(&v);
                }
            }
            a
        }
        None => "ro".to_string(),
    };

    let mut versions: Vec<String> = g
        .ls("/boot")
        .map_err(gerr("ls /boot"))?
        .into_iter()
        .filter_map(|n| kernel::version_of_kernel_path(&n).map(String::from))
        .collect();
    versions.sort_by(|a, b| kernel::compare_versions(b, a));
    versions.dedup();

    let mut out = Vec::new();
    for v in versions {
        let kernel_path = format!("/boot/vmlinuz-{v}");
        if !is_file(app, &kernel_path)? {
            continue;
        }
        let initrd = [
            format!("/boot/initrd.img-{v}"),
            format!("/boot/initramfs-{v}.img"),
        ]
        .into_iter()
        .find(|p| is_file(app, p).unwrap_or(false))
        .unwrap_or_else(|| format!("/boot/initrd.img-{v}"));
        let mut config = read_text(app, &format!("/boot/config-{v}"))?;
        if config.is_none() {
            config = read_text(app, &format!("/lib/modules/{v}/config"))?;
        }
        let module = match read_text(app, &format!("/lib/modules/{v}/modules.dep"))? {
            Some(dep) => match kernel::sev_guest_in_modules_dep(&dep) {
                Some(rel) => {
                    let p = format!("/lib/modules/{v}/{rel}");
                    is_file(app, &p)?.then_some(p)
                }
                None => None,
            },
            None => None,
        };
        let sev = kernel::sev_support(&v, config.as_deref(), module.as_deref());
        let cmdline = menu
            .entries
            .iter()
            .find(|e| kernel::version_of_kernel_path(&e.kernel) == Some(v.as_str()))
            .map_or_else(|| fallback_args.clone(), |e| e.args.clone());
        out.push(Kernel {
            version: v,
            kernel: kernel_path,
            initrd,
            cmdline,
            sev,
        });
    }
    if out.is_empty() {
        bail!("no kernel found in /boot of the input image (looked for /boot/vmlinuz-*)");
    }

    let mut default = menu
        .entries
        .get(menu.default)
        .and_then(|e| kernel::version_of_kernel_path(&e.kernel))
        .map(String::from);
    if default.is_none() {
        for link in ["/vmlinuz", "/boot/vmlinuz"] {
            if g.is_symlink(link).unwrap_or(false) {
                let target = g.readlink(link).map_err(gerr("readlink"))?;
                if let Some(v) = kernel::version_of_kernel_path(&target) {
                    default = Some(v.to_string());
                    break;
                }
            }
        }
    }
    Ok((out, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_default_grub_values() {
        let t = "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\nGRUB_CMDLINE_LINUX='console=ttyS0'\n";
        assert_eq!(
            default_grub_value(t, "GRUB_CMDLINE_LINUX").as_deref(),
            Some("console=ttyS0")
        );
        assert_eq!(
            default_grub_value(t, "GRUB_CMDLINE_LINUX_DEFAULT").as_deref(),
            Some("quiet")
        );
        assert_eq!(default_grub_value(t, "GRUB_TIMEOUT"), None);
    }
}
