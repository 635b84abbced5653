//! One libguestfs appliance: a `guestfs::Handle` launched with the
//! backend convert and embed need, errors as `anyhow`, and a shell
//! inside the appliance for the tools libguestfs 1.48's API lacks
//! (cryptsetup with a volume key file, sfdisk dumps, a copy that reports
//! progress).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Marker the shell wrapper prints after the command's output.
const RC_MARKER: &str = "__snpguard_rc=";

/// `guestfs::Error` has no `Display`; its `Debug` names the call and the
/// message.
pub fn gerr(op: &'static str) -> impl Fn(guestfs::Error) -> anyhow::Error {
    move |e| anyhow!("libguestfs {op}: {e:?}")
}

/// Environment variable that sets the appliance's vCPUs.
pub const VCPUS_ENV: &str = "SNPGUARD_APPLIANCE_VCPUS";

/// The appliance's vCPUs: `SNPGUARD_APPLIANCE_VCPUS` (1 to 16) when set,
/// else the host's CPUs up to 4. Setting it matters where several
/// appliances or VMs share a few cores under TCG (`make test`): a guest
/// with more vCPUs than it gets cores spends the difference waiting on
/// its own descheduled vCPUs.
fn appliance_vcpus(setting: Option<&std::ffi::OsStr>) -> Result<u32> {
    let Some(v) = setting else {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32);
    };
    v.to_str()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=16).contains(n))
        .ok_or_else(|| {
            anyhow!(
                "{VCPUS_ENV}={}: not a number of vCPUs from 1 to 16; unset it to use up to 4 of this host's CPUs",
                v.to_string_lossy()
            )
        })
}

/// A drive to attach, in order: the first is `/dev/sda`, the next
/// `/dev/sdb`.
pub struct Drive<'a> {
    /// Image file.
    pub path: &'a Path,
    /// Attached read-only (the appliance writes to a throwaway overlay).
    pub readonly: bool,
}

/// A launched appliance. Dropping it shuts QEMU down.
pub struct Appliance {
    g: guestfs::Handle,
}

impl Appliance {
    /// Creates a handle, attaches `drives` and launches the appliance.
    pub fn launch(drives: &[Drive<'_>]) -> Result<Self> {
        let g = guestfs::Handle::create().map_err(gerr("create"))?;
        // libguestfs read LIBGUESTFS_BACKEND(_SETTINGS) when the handle was
        // created; where the user set neither, this handle (only) gets the
        // direct backend (no libvirt) and TCG. Export
        // LIBGUESTFS_BACKEND_SETTINGS empty to let QEMU use KVM.
        if std::env::var_os("LIBGUESTFS_BACKEND").is_none() {
            g.set_backend("direct").map_err(gerr("set_backend"))?;
        }
        if std::env::var_os("LIBGUESTFS_BACKEND_SETTINGS").is_none() {
            g.set_backend_settings(&["force_tcg"])
                .map_err(gerr("set_backend_settings"))?;
        }
        for d in drives {
            let name = d
                .path
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", d.path.display()))?;
            let format = image_format(d.path)?;
            g.add_drive(
                name,
                guestfs::AddDriveOptArgs {
                    readonly: Some(d.readonly),
                    format: Some(format),
                    iface: None,
                    name: None,
                    label: None,
                    protocol: None,
                    server: None,
                    username: None,
                    secret: None,
                    cachemode: None,
                    discard: None,
                    copyonread: None,
                },
            )
            .map_err(gerr("add_drive"))
            .with_context(|| format!("attaching {}", d.path.display()))?;
        }
        let cpus = appliance_vcpus(std::env::var_os(VCPUS_ENV).as_deref())?;
        g.set_smp(cpus as i32).map_err(gerr("set_smp"))?;
        g.set_memsize(2048).map_err(gerr("set_memsize"))?;
        g.set_network(false).map_err(gerr("set_network"))?;
        g.launch()
            .map_err(gerr("launch"))
            .context("starting the libguestfs appliance (is libguestfs-tools installed?)")?;
        crate::interrupt::set_appliance(g.get_pid().unwrap_or(0));
        Ok(Appliance { g })
    }

    /// The raw handle, for the calls this wrapper does not cover.
    pub fn g(&self) -> &guestfs::Handle {
        &self.g
    }

    /// Runs `script` with `/bin/sh` inside the appliance (not in the
    /// guest), with `set -e`, stdout and stderr merged; fails with the
    /// output when it exits non-zero.
    pub fn sh(&self, script: &str) -> Result<String> {
        let wrapped = format!("( set -e\n{script}\n) 2>&1; echo \"{RC_MARKER}$?\"");
        let out = self.g.debug("sh", &[&wrapped]).map_err(gerr("debug sh"))?;
        let (body, rc) = split_rc(&out)?;
        if rc != 0 {
            bail!(
                "command in the appliance failed (exit {rc}): {}\n{}",
                first_line(script),
                body.trim_end()
            );
        }
        Ok(body.to_string())
    }

    /// The kernel's name of attached drive `index` (0 for the first), for
    /// shell commands. libguestfs API names (`/dev/sda` = first drive) are
    /// translated by its daemon; the kernel may name the disks in another
    /// order when SCSI scanning races, so the shell must not assume them.
    pub fn kernel_disk(&self, index: usize) -> Result<String> {
        let out = self.sh(&format!(
            "readlink -f /dev/disk/by-path/*-scsi-0:0:{index}:0"
        ))?;
        let dev = out.trim();
        if !dev.starts_with("/dev/sd")
            || dev.len() > 12
            || !dev[7..].chars().all(|c| c.is_ascii_lowercase())
        {
            bail!("cannot find the kernel device of drive {index}: {dev:?}");
        }
        Ok(dev.to_string())
    }

    /// Writes `content` to `path` inside the appliance's own tree (not the
    /// guest): through the `/sysroot` view, so `path` must start with
    /// `/sysroot/` and lie on a tmpfs mounted there (libguestfs refuses
    /// `write` while nothing is mounted under /sysroot).
    pub fn write_appliance_file(&self, path: &str, content: &[u8]) -> Result<()> {
        let rel = path
            .strip_prefix("/sysroot")
            .filter(|r| r.starts_with('/'))
            .with_context(|| format!("{path} is not under /sysroot"))?;
        self.g.write(rel, content).map_err(gerr("write"))
    }

    /// Shuts the appliance down cleanly (flushing writes to the drives).
    pub fn shutdown(self) -> Result<()> {
        crate::interrupt::set_appliance(0);
        self.g.shutdown().map_err(gerr("shutdown"))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        crate::interrupt::set_appliance(0);
    }
}

/// `qcow2` or `raw`, from the file's first bytes, so that a raw file is
/// never probed as something else.
fn image_format(path: &Path) -> Result<&'static str> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(if n == 4 && &magic == b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    })
}

fn first_line(s: &str) -> &str {
    s.trim_start().lines().next().unwrap_or("")
}

/// Splits the wrapper's output into the command's output and its exit
/// status.
fn split_rc(out: &str) -> Result<(&str, i32)> {
    let trimmed = out.trim_end_matches('\n');
    let at = trimmed
        .rfind(RC_MARKER)
        .context("the appliance shell printed no exit status")?;
    let rc = trimmed[at + RC_MARKER.len()..]
        .trim()
        .parse()
        .context("the appliance shell printed a malformed exit status")?;
    Ok((&out[..at], rc))
}

/// `s` as one single-quoted shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_is_split_from_output() {
        assert_eq!(split_rc("a\nb\n__snpguard_rc=0\n").unwrap(), ("a\nb\n", 0));
        assert_eq!(split_rc("__snpguard_rc=3").unwrap(), ("", 3));
        assert!(split_rc("no marker").is_err());
        assert!(split_rc("__snpguard_rc=x").is_err());
    }

    #[test]
    fn appliance_vcpus_come_from_the_setting_or_the_host() {
        use std::ffi::OsStr;
        let host = appliance_vcpus(None).unwrap();
        assert!((1..=4).contains(&host), "{host}");
        assert_eq!(appliance_vcpus(Some(OsStr::new("1"))).unwrap(), 1);
        assert_eq!(appliance_vcpus(Some(OsStr::new("16"))).unwrap(), 16);
        for bad in ["0", "17", "-1", "two", ""] {
            let e = appliance_vcpus(Some(OsStr::new(bad)))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("SNPGUARD_APPLIANCE_VCPUS") && e.contains("1 to 16"),
                "{e}"
            );
        }
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
