//! The guest's kernels: which exist, which initrd and command line the
//! bootloader pairs them with, and whether each can run as an SEV-SNP
//! guest. Pure parsing; `inspect` reads the files.

use std::cmp::Ordering;

use serde::Serialize;

/// Module path suffixes accepted for sev-guest (uncompressed or as the
/// distribution compresses modules).
pub const SEV_GUEST_MODULE_SUFFIXES: [&str; 4] = [
    "/sev-guest.ko",
    "/sev-guest.ko.xz",
    "/sev-guest.ko.zst",
    "/sev-guest.ko.gz",
];

/// Whether a kernel can run as an SEV-SNP guest and report attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum SevSupport {
    /// CONFIG_SEV_GUEST=y.
    BuiltIn,
    /// CONFIG_SEV_GUEST=m and the module is in the kernel's module tree.
    Module {
        /// Path of sev-guest.ko* in the guest.
        path: String,
    },
    /// Not usable; why, in words an operator can act on.
    Missing {
        /// What is missing.
        reason: String,
    },
}

impl SevSupport {
    /// Usable for an SEV-SNP launch.
    pub fn ok(&self) -> bool {
        !matches!(self, SevSupport::Missing { .. })
    }
}

/// The value of `CONFIG_<name>` in a kernel config (`y`, `m`, a string),
/// `None` when unset or absent.
pub fn config_value<'a>(config: &'a str, name: &str) -> Option<&'a str> {
    config.lines().find_map(|l| {
        let rest = l.strip_prefix("CONFIG_")?.strip_prefix(name)?;
        rest.strip_prefix('=')
    })
}

/// Decides SEV-SNP guest support of kernel `version` from its config file
/// (`None`: no config found) and the sev-guest module found in its module
/// tree (`None`: none).
pub fn sev_support(version: &str, config: Option<&str>, module: Option<&str>) -> SevSupport {
    let missing = |reason: String| SevSupport::Missing { reason };
    let Some(config) = config else {
        return missing(format!(
            "kernel {version} has no config file (/boot/config-{version}), \
             so its SEV-SNP support cannot be checked"
        ));
    };
    if config_value(config, "AMD_MEM_ENCRYPT") != Some("y") {
        return missing(format!(
            "kernel {version} has CONFIG_AMD_MEM_ENCRYPT unset; \
             it cannot run as an SEV guest"
        ));
    }
    match config_value(config, "SEV_GUEST") {
        Some("y") => SevSupport::BuiltIn,
        Some("m") => match module {
            Some(path) => SevSupport::Module { path: path.into() },
            None => missing(format!(
                "kernel {version} has CONFIG_SEV_GUEST=m but no sev-guest module \
                 in /lib/modules/{version}; install its modules package"
            )),
        },
        _ => missing(format!(
            "kernel {version} has CONFIG_SEV_GUEST unset; \
             pick another with --kernel or use a Debian 13 or Ubuntu 24.04 image"
        )),
    }
}

/// The sev-guest module's path among the lines of a `modules.dep` file
/// (`kernel/…/sev-guest.ko.xz: deps…`), relative to the module tree.
pub fn sev_guest_in_modules_dep(modules_dep: &str) -> Option<&str> {
    modules_dep.lines().find_map(|l| {
        let path = l.split(':').next()?.trim();
        SEV_GUEST_MODULE_SUFFIXES
            .iter()
            .any(|s| path.ends_with(s) || path == &s[1..])
            .then_some(path)
    })
}

/// One `linux` line of a boot menu: the kernel path as the bootloader
/// sees it and the arguments after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuEntry {
    /// Kernel path, e.g. `/boot/vmlinuz-6.12.0-1-amd64` or `/vmlinuz-…`
    /// when /boot is its own filesystem.
    pub kernel: String,
    /// Command line arguments.
    pub args: String,
}

/// The boot menu of a GRUB configuration: its entries in order and the
/// index of the default one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubMenu {
    /// Every `linux`/`linuxefi` line, in file order (submenus flattened).
    pub entries: Vec<MenuEntry>,
    /// Index into `entries` of `set default=N` (0 when not a number).
    pub default: usize,
}

/// Parses the parts of `grub.cfg` that matter: `linux` lines and a
/// numeric `set default`.
pub fn parse_grub_cfg(cfg: &str) -> GrubMenu {
    let mut menu = GrubMenu::default();
    for line in cfg.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("set default=") {
            let v = v.trim_matches(|c| c == '"' || c == '\'');
            menu.default = v.parse().unwrap_or(0);
            continue;
        }
        let mut words = line.splitn(2, char::is_whitespace);
        let cmd = words.next().unwrap_or("");
        if cmd != "linux" && cmd != "linuxefi" && cmd != "linux16" {
            continue;
        }
        let rest = words.next().unwrap_or("").trim();
        let mut parts = rest.splitn(2, char::is_whitespace);
        let kernel = parts.next().unwrap_or("").to_string();
        if kernel.is_empty() {
            continue;
        }
        let args = parts.next().unwrap_or("").trim().to_string();
        menu.entries.push(MenuEntry { kernel, args });
    }
    if menu.default >= menu.entries.len() {
        menu.default = 0;
    }
    menu
}

/// The kernel version a bootloader path names: `…/vmlinuz-VERSION`.
pub fn version_of_kernel_path(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("vmlinuz-")
        .or_else(|| name.strip_prefix("vmlinux-"))
        .filter(|v| !v.is_empty())
}

/// Compares kernel versions the way `sort -V` roughly does: digit runs as
/// numbers, everything else byte by byte.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (strip_zeros(&a[..na]), strip_zeros(&b[..nb]));
                let o = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn strip_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "CONFIG_AMD_MEM_ENCRYPT=y\n# CONFIG_FOO is not set\nCONFIG_SEV_GUEST=m\n";

    #[test]
    fn sev_support_rules() {
        let m = "kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz";
        assert_eq!(
            sev_support("6.12", Some(CFG), Some(m)),
            SevSupport::Module { path: m.into() }
        );
        let y = CFG.replace("SEV_GUEST=m", "SEV_GUEST=y");
        assert_eq!(sev_support("6.12", Some(&y), None), SevSupport::BuiltIn);

        let SevSupport::Missing { reason } = sev_support("6.12", Some(CFG), None) else {
            panic!("module missing must be refused")
        };
        assert!(reason.contains("no sev-guest module"), "{reason}");

        let unset = CFG.replace("CONFIG_SEV_GUEST=m", "# CONFIG_SEV_GUEST is not set");
        let SevSupport::Missing { reason } = sev_support("6.1.0-13", Some(&unset), Some(m)) else {
            panic!("unset must be refused")
        };
        assert!(
            reason.contains("6.1.0-13 has CONFIG_SEV_GUEST unset"),
            "{reason}"
        );

        let no_mem = CFG.replace("AMD_MEM_ENCRYPT=y", "AMD_MEM_ENCRYPT_X=y");
        let SevSupport::Missing { reason } = sev_support("6.12", Some(&no_mem), Some(m)) else {
            panic!("no memory encryption must be refused")
        };
        assert!(reason.contains("CONFIG_AMD_MEM_ENCRYPT"), "{reason}");

        assert!(!sev_support("6.12", None, Some(m)).ok());
    }

    #[test]
    fn config_value_matches_the_whole_name() {
        let c = "CONFIG_SEV_GUEST_X=y\nCONFIG_SEV_GUEST=m\n";
        assert_eq!(config_value(c, "SEV_GUEST"), Some("m"));
        assert_eq!(config_value(c, "SEV"), None);
    }

    #[test]
    fn sev_guest_found_in_modules_dep() {
        let dep = "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz\n\
                   kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz: kernel/x/tsm.ko.xz\n";
        assert_eq!(
            sev_guest_in_modules_dep(dep),
            Some("kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz")
        );
        assert_eq!(
            sev_guest_in_modules_dep("kernel/a/not-sev-guest.ko:\n"),
            None
        );
        assert_eq!(
            sev_guest_in_modules_dep("kernel/x/my-sev-guest.ko.zst:\n"),
            None,
            "a module whose name only ends in sev-guest is another module"
        );
    }

    #[test]
    fn grub_menu() {
        let cfg = r#"
set default="1"
menuentry 'Debian' {
	linux	/boot/vmlinuz-6.12.0-1-amd64 root=UUID=abc ro quiet
	initrd	/boot/initrd.img-6.12.0-1-amd64
}
submenu 'Advanced' {
  menuentry 'old' {
	linux /vmlinuz-6.1.0-13-amd64 root=/dev/sda1 ro console=ttyS0
  }
}
"#;
        let m = parse_grub_cfg(cfg);
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.default, 1);
        assert_eq!(m.entries[1].kernel, "/vmlinuz-6.1.0-13-amd64");
        assert_eq!(m.entries[1].args, "root=/dev/sda1 ro console=ttyS0");
        assert_eq!(
            version_of_kernel_path(&m.entries[0].kernel),
            Some("6.12.0-1-amd64")
        );
        assert_eq!(parse_grub_cfg("set default=7\n").default, 0);
        assert_eq!(
            parse_grub_cfg("set default=\"${saved_entry}\"\nlinux /v-1 a\n").default,
            0
        );
    }

    #[test]
    fn versions_sort_numerically() {
        use Ordering::*;
        assert_eq!(compare_versions("6.12.1", "6.9.3"), Greater);
        assert_eq!(compare_versions("6.1.0-13-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(compare_versions("6.1.0", "6.1.0"), Equal);
        assert_eq!(compare_versions("6.1", "6.1.0"), Less);
        assert_eq!(compare_versions("6.01", "6.1"), Equal);
    }
}
