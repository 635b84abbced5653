//! An initrd built inside a guest chroot by the guest's own tool, after
//! installing SnpGuard's module, the agent, its configuration and the
//! pinned CA where `snpguardctl convert` puts them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::chroot::Chroot;
use crate::cmd::{io, HarnessError};
use crate::rootfs::Flavour;

/// The agent inside the guest (and its initrd).
pub const AGENT_PATH: &str = "/usr/lib/snpguard/snpguard-agent";
/// The agent's configuration.
pub const CONFIG_PATH: &str = "/etc/snpguard/agent.toml";
/// The pinned CA (the configuration's `ca`).
pub const CA_PATH: &str = "/etc/snpguard/ca.pem";
/// Where the harness writes the initrd inside the guest.
pub const INITRD_PATH: &str = "/boot/snpguard-initrd.img";

/// What goes into the guest besides the module.
pub struct GuestFiles<'a> {
    /// The static agent binary on the host; `None` leaves it out (to test
    /// that the build refuses).
    pub agent: Option<&'a Path>,
    /// The agent configuration's text.
    pub config: &'a str,
    /// The pinned CA's PEM.
    pub ca: &'a [u8],
}

/// Installs the module of `flavour` from the repository and `files` into
/// the guest tree.
pub fn install(chroot: &Chroot, flavour: Flavour, files: &GuestFiles) -> Result<(), HarnessError> {
    let repo = crate::repo_root();
    let copy = |from: &str, to: &str, mode: u32| -> Result<(), HarnessError> {
        let src = repo.join(from);
        let bytes = io("reading", &src, std::fs::read(&src))?;
        chroot.write(to, &bytes, mode)
    };
    match flavour {
        Flavour::InitramfsTools => {
            copy(
                "initramfs-tools/hooks/snpguard",
                "/usr/share/initramfs-tools/hooks/snpguard",
                0o755,
            )?;
            copy(
                "initramfs-tools/scripts/local-top/snpguard",
                "/usr/share/initramfs-tools/scripts/local-top/snpguard",
                0o755,
            )?;
        }
        Flavour::Dracut => {
            for (f, mode) in [
                ("module-setup.sh", 0o755),
                ("snpguard-unlock.sh", 0o755),
                ("55-snpguard-dm.rules", 0o644),
            ] {
                copy(
                    &format!("dracut/90snpguard/{f}"),
                    &format!("/usr/lib/dracut/modules.d/90snpguard/{f}"),
                    mode,
                )?;
            }
            chroot.write(
                "/etc/dracut.conf.d/snpguard.conf",
                b"add_dracutmodules+=\" snpguard \"\n",
                0o644,
            )?;
        }
    }
    if let Some(agent) = files.agent {
        let bytes = io("reading", agent, std::fs::read(agent))?;
        if !is_static_elf(&bytes) {
            return Err(HarnessError::Fixture(format!(
                "{} is not a static executable; the initrd copies it without libraries",
                agent.display()
            )));
        }
        chroot.write(AGENT_PATH, &bytes, 0o755)?;
    }
    chroot.write(CONFIG_PATH, files.config.as_bytes(), 0o644)?;
    chroot.write(CA_PATH, files.ca, 0o644)
}

/// Builds the initrd for `kernel_release` with the guest's tool and
/// returns its path on the host. dracut runs with --no-hostonly: in a
/// chroot, host-only mode would describe the build machine.
pub fn build(
    chroot: &Chroot,
    flavour: Flavour,
    kernel_release: &str,
) -> Result<PathBuf, HarnessError> {
    match flavour {
        Flavour::InitramfsTools => {
            chroot.run(&["mkinitramfs", "-o", INITRD_PATH, kernel_release])?;
        }
        Flavour::Dracut => {
            chroot.run(&[
                "dracut",
                "--force",
                "--no-hostonly",
                INITRD_PATH,
                kernel_release,
            ])?;
        }
    }
    let p = chroot.path(INITRD_PATH);
    io("checking", &p, std::fs::metadata(&p))?;
    Ok(p)
}

/// The paths inside the initrd (no leading slash), listed by the guest's
/// own tool.
pub fn list(chroot: &Chroot, flavour: Flavour) -> Result<BTreeSet<String>, HarnessError> {
    let out = match flavour {
        Flavour::InitramfsTools => chroot.run(&["lsinitramfs", INITRD_PATH])?,
        Flavour::Dracut => chroot.run(&["lsinitrd", INITRD_PATH])?,
    };
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(match flavour {
        Flavour::InitramfsTools => text.lines().map(|l| l.trim().to_owned()).collect(),
        // `ls -l` style: mode links owner group size month day time path.
        Flavour::Dracut => text
            .lines()
            .filter(|l| l.starts_with(['-', 'd', 'l', 'c', 'b', 'p', 's']))
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.len() > 8).then(|| {
                    let name = fields[8..].join(" ");
                    name.split(" -> ").next().unwrap_or_default().to_owned()
                })
            })
            .collect(),
    })
}

/// Whether `elf` is an x86-64 ELF executable without a program
/// interpreter (statically linked).
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELF64, little endian, x86-64.
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) || u16_at(18) != Some(62) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        usize::try_from(phoff)
            .ok()
            .and_then(|off| u32_at(off + i * usize::from(phentsize)))
            .is_some_and(|t| t != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::is_static_elf;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        assert!(!is_static_elf(&sh), "/bin/sh has an interpreter");
    }

    #[test]
    fn garbage_is_not_an_executable() {
        assert!(!is_static_elf(b"#!/bin/sh\nexit 0\n"));
        assert!(!is_static_elf(&[0x7f, b'E', b'L', b'F', 2, 1]));
    }
}
