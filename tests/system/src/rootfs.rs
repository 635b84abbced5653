//! The cached Debian 13 guest root file systems of
//! `tests/guest/build-rootfs.sh`, one per initrd flavour.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{io, run, HarnessError};

/// Which initrd generator the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Debian's initramfs-tools (`mkinitramfs`).
    InitramfsTools,
    /// dracut (dracut-ng, with systemd in the initrd).
    Dracut,
}

impl Flavour {
    /// The name the build script and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::InitramfsTools => "initramfs-tools",
            Flavour::Dracut => "dracut",
        }
    }
}

/// A built guest root file system (the script's outputs).
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// The flavour.
    pub flavour: Flavour,
    /// The whole tree as a tar (numeric owners, xattrs).
    pub tar: PathBuf,
    /// The guest's kernel.
    pub vmlinuz: PathBuf,
    /// Its `uname -r`.
    pub kernel_release: String,
}

impl Rootfs {
    /// Builds the guest of `flavour` (or takes it from the cache under
    /// build/guest-rootfs) and links its outputs into `out`.
    pub fn get(flavour: Flavour, out: &Path) -> Result<Rootfs, HarnessError> {
        let script = crate::repo_root().join("tests/guest/build-rootfs.sh");
        run(Command::new(&script)
            .arg("--flavour")
            .arg(flavour.name())
            .arg("--out")
            .arg(out))?;
        Ok(Rootfs {
            flavour,
            tar: out.join("rootfs.tar"),
            vmlinuz: out.join("vmlinuz"),
            kernel_release: read_kernel_release(&out.join("kernel-release"))?,
        })
    }
}

/// The guest kernel's `uname -r` from the build script's `kernel-release`
/// file (beside `rootfs.tar`), checked to be one plain name.
pub fn read_kernel_release(file: &Path) -> Result<String, HarnessError> {
    let release = io("reading", file, std::fs::read_to_string(file))?
        .trim()
        .to_owned();
    if release.is_empty() || release.contains('/') || release.contains(char::is_whitespace) {
        return Err(HarnessError::Fixture(format!(
            "{} holds no kernel release",
            file.display()
        )));
    }
    Ok(release)
}
