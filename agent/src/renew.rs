//! `snpguard-agent renew`: runs in the booted guest after a kernel update
//! (the kernel hook calls it once the new initrd is written). It submits
//! the new kernel, initrd and command line to snpguardd (`POST
//! /v1/renew`) with a report of the running VM whose REPORT_DATA binds
//! them; the daemon stores them as a *pending* launch of the record, which
//! an operator approves. Nothing is powered off here: this is not the boot
//! path, the launch that runs now keeps booting whatever happens.
//!
//! The kernel and the initrd are read only from the encrypted root: a file
//! on any other device (an unencrypted /boot, a second disk) is one the
//! host can have rewritten, and the daemon would measure the host's choice
//! into the pending launch.

use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use snpguard::measure::MAX_CMDLINE_LEN;
use snpguard_protocol::attest::{RenewResponse, MAX_RENEW_BODY};

use crate::client::{self, Client};
use crate::config::AgentConfig;
use crate::console::say;
use crate::evidence::Source;

/// The running kernel's command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// What a renewal request holds besides the kernel and the initrd: the
/// report and certificate table (base64), the nonce, the command line
/// (JSON-escaped, at worst 6 bytes per byte) and the JSON around them.
const ENVELOPE: usize = 64 * 1024;

/// Most bytes the kernel and the initrd may have together: their base64
/// plus [`ENVELOPE`] must fit in the daemon's [`MAX_RENEW_BODY`].
pub const MAX_ARTIFACTS: usize = (MAX_RENEW_BODY - ENVELOPE) / 4 * 3;

/// What OVMF appends to the command line it hands a kernel booted from
/// QEMU's fw_cfg with an initrd (so that the EFI stub finds the initrd on
/// its in-memory file system): edk2's `OvmfPkg/Library/X86QemuLoadImageLib`
/// (`QemuLoadKernelImage`) formats the load options as the fw_cfg command
/// line followed by this suffix whenever the initrd is not empty, also
/// after an empty command line. It is not part of the measured command
/// line, which is the one QEMU was given.
const OVMF_INITRD_SUFFIX: &str = " initrd=initrd";

/// Where the new command line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineArg {
    /// `--cmdline STR`: exactly as given.
    Given(String),
    /// `--cmdline-file FILE`: its content, one trailing newline removed.
    File(PathBuf),
    /// Neither: the running one, from [`PROC_CMDLINE`].
    Running,
}

impl CmdlineArg {
    /// From the two mutually exclusive options.
    pub fn from_options(given: Option<String>, file: Option<PathBuf>) -> CmdlineArg {
        match (given, file) {
            (Some(s), _) => CmdlineArg::Given(s),
            (None, Some(p)) => CmdlineArg::File(p),
            (None, None) => CmdlineArg::Running,
        }
    }
}

/// The new boot artifacts, checked against the daemon's limits.
pub struct Artifacts {
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// Exactly as it will be measured.
    pub cmdline: String,
}

/// What `renew` was asked to submit.
pub struct Request<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: CmdlineArg,
    /// Where the kernel and the initrd may be read from.
    pub boot_files: &'a BootFiles,
}

/// TEST ONLY: in the agent's simulator build (feature `simulator`),
/// `SNPGUARD_AGENT_TEST_BOOT_FILES_ANYWHERE=1` lets `renew` read the
/// kernel and the initrd from any device (the integration tests keep them
/// in temporary directories). A production agent has no such mode and
/// ignores the variable.
pub const TEST_ANYWHERE_ENV: &str = "SNPGUARD_AGENT_TEST_BOOT_FILES_ANYWHERE";

/// Where `renew` may read the kernel and the initrd from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFiles {
    /// The file system mounted at `root`, which must be a dm-crypt device
    /// (its `dm/uuid` under `sys_dev_block`, the kernel's /sys/dev/block,
    /// starts with `CRYPT-`).
    EncryptedRoot {
        root: PathBuf,
        sys_dev_block: PathBuf,
    },
    /// TEST ONLY (simulator builds): anywhere.
    #[cfg(feature = "simulator")]
    Anywhere,
}

impl BootFiles {
    /// The running system's root: `/`, checked through /sys/dev/block.
    pub fn system() -> BootFiles {
        BootFiles::EncryptedRoot {
            root: PathBuf::from("/"),
            sys_dev_block: PathBuf::from("/sys/dev/block"),
        }
    }

    /// [`BootFiles::system`], unless this is a simulator build and
    /// [`TEST_ANYWHERE_ENV`] is `1`.
    pub fn from_environment() -> BootFiles {
        BootFiles::from_test_variable(std::env::var_os(TEST_ANYWHERE_ENV))
    }

    fn from_test_variable(value: Option<OsString>) -> BootFiles {
        #[cfg(feature = "simulator")]
        if value.as_deref() == Some(std::ffi::OsStr::new("1")) {
            say!(
                "WARNING: {TEST_ANYWHERE_ENV}=1 (simulator build, TEST ONLY): the kernel and \
                 initrd are read from any device, also ones the host can rewrite"
            );
            return BootFiles::Anywhere;
        }
        let _ = value;
        BootFiles::system()
    }

    /// Refuses the `what` at `path` (`meta`: of the opened file) unless it
    /// lives on the encrypted root.
    pub fn check(&self, path: &Path, what: &str, meta: &Metadata) -> anyhow::Result<()> {
        let (root, sys_dev_block) = match self {
            BootFiles::EncryptedRoot {
                root,
                sys_dev_block,
            } => (root, sys_dev_block),
            #[cfg(feature = "simulator")]
            BootFiles::Anywhere => return Ok(()),
        };
        let root_meta = std::fs::metadata(root)
            .with_context(|| format!("reading the root file system {}", root.display()))?;
        let (major, minor) = split_dev(root_meta.dev());
        let next = "the host can rewrite any other device; add this kernel on the host \
                    with snpguardctl records add-launch instead";
        if meta.dev() != root_meta.dev() {
            let (fmaj, fmin) = split_dev(meta.dev());
            bail!(
                "the {what} {} is on device {fmaj}:{fmin}, not on the encrypted root \
                 ({} is on {major}:{minor}); a renewal reads kernel and initrd only from \
                 the encrypted root: {next}",
                path.display(),
                root.display()
            );
        }
        let uuid_path = sys_dev_block.join(format!("{major}:{minor}/dm/uuid"));
        let uuid = std::fs::read_to_string(&uuid_path).unwrap_or_default();
        if !uuid.starts_with("CRYPT-") {
            let found = match uuid.trim() {
                "" => "no dm-crypt mapping".to_owned(),
                u => format!("device-mapper UUID {u:?}"),
            };
            bail!(
                "the {what} {} is on device {major}:{minor} ({}), which is not a dm-crypt \
                 device ({}: {found}); a renewal reads kernel and initrd only from the \
                 encrypted root: {next}",
                path.display(),
                root.display(),
                uuid_path.display()
            );
        }
        Ok(())
    }
}

/// glibc's `major`/`minor` of a dev_t.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Reads `path` whole if it is a regular file of at most `max` bytes,
/// after `check` accepted the opened file's metadata.
fn read_bounded(
    path: &Path,
    max: usize,
    what: &str,
    check: impl FnOnce(&Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("opening the {what} {}", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("the {what} {} is not a regular file", path.display());
    }
    check(&meta)?;
    let mut out = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    if out.len() > max {
        bail!(
            "the {what} {} is larger than {max} bytes, more than a renewal can carry",
            path.display()
        );
    }
    Ok(out)
}

/// [`read_bounded`] from where `boot_files` allows, and not empty.
fn read_artifact(path: &Path, what: &str, boot_files: &BootFiles) -> anyhow::Result<Vec<u8>> {
    let out = read_bounded(path, MAX_ARTIFACTS, what, |meta| {
        boot_files.check(path, what, meta)
    })?;
    if out.is_empty() {
        bail!("the {what} {} is empty", path.display());
    }
    Ok(out)
}

/// Checks a command line the daemon will measure: no NUL or other
/// control character (the daemon refuses them), at most
/// [`MAX_CMDLINE_LEN`] bytes.
pub fn check_cmdline(cmdline: &str) -> anyhow::Result<()> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        bail!("the command line has a NUL byte at offset {at}");
    }
    if cmdline.len() > MAX_CMDLINE_LEN {
        bail!(
            "the command line is {} bytes; at most {MAX_CMDLINE_LEN} can be measured",
            cmdline.len()
        );
    }
    snpguard_protocol::text::check_cmdline(cmdline)?;
    Ok(())
}

/// The command line of a `--cmdline-file`: UTF-8, one trailing newline
/// (as an editor writes it) removed, nothing else changed.
pub fn cmdline_from_file(bytes: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(bytes).context("the command line is not UTF-8")?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    check_cmdline(text)?;
    Ok(text.to_owned())
}

/// The measured command line of the running kernel, from the text of
/// /proc/cmdline: its trailing newline removed and, when present, the
/// suffix OVMF appended at boot (which would otherwise be measured into
/// the new launch and appended once more at every renewal). The flag says
/// whether that suffix was removed.
pub fn cmdline_from_running(text: &str) -> anyhow::Result<(String, bool)> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let (cmdline, stripped) = match text.strip_suffix(OVMF_INITRD_SUFFIX) {
        Some(rest) => (rest, true),
        None if text == OVMF_INITRD_SUFFIX.trim_start() => ("", true),
        None => (text, false),
    };
    check_cmdline(cmdline)?;
    Ok((cmdline.to_owned(), stripped))
}

/// Fails unless the kernel and initrd, in base64, fit in one request.
pub fn check_total(kernel: usize, initrd: usize) -> anyhow::Result<()> {
    let total = kernel.saturating_add(initrd);
    if total > MAX_ARTIFACTS {
        bail!(
            "the kernel and initrd are {total} bytes together; a renewal carries at most \
             {MAX_ARTIFACTS} (the daemon reads {MAX_RENEW_BODY} bytes of base64); \
             use a smaller initrd (e.g. MODULES=dep) or add the launch on the host with \
             snpguardctl records add-launch"
        );
    }
    Ok(())
}

/// Reads and checks the artifacts of `req`.
pub fn load(req: &Request<'_>) -> anyhow::Result<Artifacts> {
    let cmdline = match &req.cmdline {
        CmdlineArg::Given(s) => {
            check_cmdline(s)?;
            s.clone()
        }
        CmdlineArg::File(p) => {
            // The command line and its newline.
            let bytes = read_bounded(p, MAX_CMDLINE_LEN + 1, "command line file", |_| Ok(()))?;
            cmdline_from_file(&bytes).with_context(|| p.display().to_string())?
        }
        CmdlineArg::Running => {
            let text = std::fs::read_to_string(PROC_CMDLINE)
                .with_context(|| format!("reading {PROC_CMDLINE}"))?;
            let (cmdline, stripped) = cmdline_from_running(&text)
                .with_context(|| format!("{PROC_CMDLINE}; give --cmdline or --cmdline-file"))?;
            if stripped {
                say!("the running command line without OVMF's appended \"initrd=initrd\"");
            }
            cmdline
        }
    };
    let kernel = read_artifact(req.kernel, "kernel", req.boot_files)?;
    let initrd = read_artifact(req.initrd, "initrd", req.boot_files)?;
    check_total(kernel.len(), initrd.len())?;
    Ok(Artifacts {
        kernel,
        initrd,
        cmdline,
    })
}

/// Submits the renewal to the configured servers (retried per the
/// configuration for transport errors and 5xx; a 4xx is final).
pub fn run(config: &AgentConfig, req: &Request<'_>) -> anyhow::Result<RenewResponse> {
    let artifacts = load(req)?;
    let source = Source::from_config(config, None);
    say!(
        "submitting kernel {} ({} bytes), initrd {} ({} bytes), cmdline \"{}\" for renewal (report source {}, {} server(s))",
        req.kernel.display(),
        artifacts.kernel.len(),
        req.initrd.display(),
        artifacts.initrd.len(),
        artifacts.cmdline,
        source.describe(),
        config.servers.len()
    );
    let ca = client::load_ca(&config.ca)?;
    let client = Client::new(ca, client::RENEW_TIMEOUT);
    client::with_retries(&config.servers, &config.retry, "renewing with", |s| {
        client.renew_once(s, &source, &artifacts)
    })
    .map_err(|e| anyhow::anyhow!("renewal failed: {e}"))
}

/// The operator's next step, printed on success.
pub fn approve_command(resp: &RenewResponse) -> String {
    format!(
        "snpguardctl records approve {} --launch {}",
        resp.record, resp.launch
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_cmdline_loses_its_newline_and_ovmfs_suffix_only() {
        let (c, s) = cmdline_from_running("console=ttyS0 root=/dev/mapper/root\n").unwrap();
        assert_eq!(c, "console=ttyS0 root=/dev/mapper/root");
        assert!(!s);
        let (c, s) =
            cmdline_from_running("console=ttyS0 root=/dev/mapper/root initrd=initrd\n").unwrap();
        assert_eq!(c, "console=ttyS0 root=/dev/mapper/root");
        assert!(s);
        // Only one suffix, only at the end, only as a whole word.
        let (c, _) = cmdline_from_running("a initrd=initrd initrd=initrd\n").unwrap();
        assert_eq!(c, "a initrd=initrd");
        let (c, s) = cmdline_from_running("initrd=initrd quiet\n").unwrap();
        assert_eq!(c, "initrd=initrd quiet");
        assert!(!s);
        let (c, s) = cmdline_from_running("a xinitrd=initrd\n").unwrap();
        assert_eq!(c, "a xinitrd=initrd");
        assert!(!s);
        // QEMU given an empty command line: OVMF's suffix alone.
        assert_eq!(
            cmdline_from_running("initrd=initrd\n").unwrap(),
            (String::new(), true)
        );
        // Inner spacing and a missing newline stay as they are.
        let (c, _) = cmdline_from_running("a  b ").unwrap();
        assert_eq!(c, "a  b ");
        assert!(cmdline_from_running(&"x".repeat(MAX_CMDLINE_LEN + 1)).is_err());
        assert!(cmdline_from_running("a\0b\n").is_err());
        // Text hidden behind a carriage return or an escape sequence is
        // refused before it is sent.
        for hidden in [
            "quiet\rinit=/bin/sh\n",
            "quiet \x1b[8minit=/bin/sh\n",
            "a\tb\n",
        ] {
            let e = cmdline_from_running(hidden).unwrap_err().to_string();
            assert!(e.contains("control character"), "{e}");
        }
    }

    #[test]
    fn a_cmdline_file_loses_one_newline() {
        assert_eq!(cmdline_from_file(b"quiet\n").unwrap(), "quiet");
        // Only one: a second newline is a control character the daemon
        // refuses.
        let e = cmdline_from_file(b"quiet\n\n").unwrap_err().to_string();
        assert!(e.contains("control character \\n at byte offset 5"), "{e}");
        assert_eq!(cmdline_from_file(b"quiet").unwrap(), "quiet");
        assert_eq!(cmdline_from_file(b"").unwrap(), "");
        assert!(cmdline_from_file(b"\xff").is_err());
        assert!(cmdline_from_file(b"a\0").is_err());
        let long = vec![b'x'; MAX_CMDLINE_LEN];
        assert!(cmdline_from_file(&long).is_ok());
        let long = vec![b'x'; MAX_CMDLINE_LEN + 1];
        assert!(cmdline_from_file(&long).is_err());
    }

    #[test]
    fn options_pick_the_cmdline_source() {
        assert_eq!(CmdlineArg::from_options(None, None), CmdlineArg::Running);
        assert_eq!(
            CmdlineArg::from_options(Some("q".into()), None),
            CmdlineArg::Given("q".into())
        );
        assert_eq!(
            CmdlineArg::from_options(None, Some("/f".into())),
            CmdlineArg::File("/f".into())
        );
    }

    #[test]
    fn the_artifacts_must_fit_in_one_request() {
        // Their base64 and the envelope fit in the daemon's body limit.
        assert!(MAX_ARTIFACTS.div_ceil(3) * 4 + ENVELOPE <= MAX_RENEW_BODY + 4);
        assert!(check_total(MAX_ARTIFACTS - 1, 1).is_ok());
        let e = check_total(MAX_ARTIFACTS, 1).unwrap_err().to_string();
        assert!(e.contains("add-launch"), "{e}");
        assert!(check_total(usize::MAX, usize::MAX).is_err());
    }

    /// A root at `dir` whose device the fake /sys/dev/block under `dir`
    /// maps with the device-mapper UUID `uuid` (none: not a dm device).
    fn fake_root(dir: &Path, uuid: Option<&str>) -> BootFiles {
        let (major, minor) = split_dev(std::fs::metadata(dir).unwrap().dev());
        let sys = dir.join("sys-dev-block");
        let dev = sys.join(format!("{major}:{minor}"));
        std::fs::create_dir_all(&dev).unwrap();
        if let Some(u) = uuid {
            std::fs::create_dir(dev.join("dm")).unwrap();
            std::fs::write(dev.join("dm/uuid"), format!("{u}\n")).unwrap();
        }
        BootFiles::EncryptedRoot {
            root: dir.to_path_buf(),
            sys_dev_block: sys,
        }
    }

    const CRYPT_UUID: &str = "CRYPT-LUKS2-0b6a3c3e6c1c4b5e9d8a3d7e2f1a9c00-snpguard_root";

    #[test]
    fn files_are_read_bounded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let boot = fake_root(dir.path(), Some(CRYPT_UUID));
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"kernel").unwrap();
        let i = dir.path().join("initrd.img");
        std::fs::write(&i, b"initrd").unwrap();
        let c = dir.path().join("cmdline");
        std::fs::write(&c, "console=ttyS0\n").unwrap();
        let a = load(&Request {
            kernel: &k,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::File(c.clone()),
        })
        .unwrap();
        assert_eq!(
            (&a.kernel[..], &a.initrd[..], &a.cmdline[..]),
            (&b"kernel"[..], &b"initrd"[..], "console=ttyS0")
        );
        let a = load(&Request {
            kernel: &k,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::Given(" exact ".into()),
        })
        .unwrap();
        assert_eq!(a.cmdline, " exact ");
        // A given command line is taken as is, so a newline in it is a
        // control character the daemon would refuse.
        let e = load(&Request {
            kernel: &k,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::Given(" exact \n".into()),
        })
        .err()
        .expect("newline refused")
        .to_string();
        assert!(e.contains("control character \\n at byte offset 7"), "{e}");
        std::fs::write(&c, "").unwrap();
        let a = load(&Request {
            kernel: &k,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::File(c.clone()),
        })
        .unwrap();
        assert_eq!(a.cmdline, "");

        let missing = dir.path().join("absent");
        let e = load(&Request {
            kernel: &missing,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::Given(String::new()),
        })
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("kernel"), "{e:#}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = load(&Request {
            kernel: &k,
            initrd: &empty,
            boot_files: &boot,
            cmdline: CmdlineArg::Given(String::new()),
        })
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("initrd") && format!("{e:#}").contains("empty"));
        let e = load(&Request {
            kernel: dir.path(),
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::Given(String::new()),
        })
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("regular file"), "{e:#}");
        let e = read_bounded(&k, 5, "kernel", |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 5 bytes"), "{e}");
        assert_eq!(
            read_bounded(&k, 6, "kernel", |_| Ok(())).unwrap(),
            b"kernel"
        );
        let e = load(&Request {
            kernel: &k,
            initrd: &i,
            boot_files: &boot,
            cmdline: CmdlineArg::Given("a\0".into()),
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("NUL"), "{e}");
    }

    /// `load` of `kernel` (and an initrd next to the root) under `boot`.
    fn load_kernel(kernel: &Path, initrd: &Path, boot: &BootFiles) -> anyhow::Result<Artifacts> {
        load(&Request {
            kernel,
            initrd,
            cmdline: CmdlineArg::Given(String::new()),
            boot_files: boot,
        })
    }

    #[test]
    fn kernel_and_initrd_on_the_dm_crypt_root_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let boot = fake_root(dir.path(), Some(CRYPT_UUID));
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"kernel").unwrap();
        let i = dir.path().join("initrd.img");
        std::fs::write(&i, b"initrd").unwrap();
        let a = load_kernel(&k, &i, &boot).unwrap();
        assert_eq!(
            (&a.kernel[..], &a.initrd[..]),
            (&b"kernel"[..], &b"initrd"[..])
        );
    }

    #[test]
    fn a_root_that_is_not_dm_crypt_is_refused_naming_file_and_device() {
        for (uuid, found) in [
            (Some("LVM-abcdef"), "device-mapper UUID \"LVM-abcdef\""),
            (
                Some("CRYPTX-LUKS2-abc"),
                "device-mapper UUID \"CRYPTX-LUKS2-abc\"",
            ),
            (Some(""), "no dm-crypt mapping"),
            (None, "no dm-crypt mapping"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let boot = fake_root(dir.path(), uuid);
            let (major, minor) = split_dev(std::fs::metadata(dir.path()).unwrap().dev());
            let k = dir.path().join("vmlinuz");
            std::fs::write(&k, b"kernel").unwrap();
            let i = dir.path().join("initrd.img");
            std::fs::write(&i, b"initrd").unwrap();
            let e = load_kernel(&k, &i, &boot).err().unwrap().to_string();
            assert!(
                e.starts_with(&format!(
                    "the kernel {} is on device {major}:{minor} ({}), which is not a dm-crypt device",
                    k.display(),
                    dir.path().display()
                )),
                "{e}"
            );
            assert!(e.contains(found) && e.contains("add-launch"), "{e}");
        }
    }

    #[test]
    fn a_file_on_another_device_than_the_root_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let boot = fake_root(dir.path(), Some(CRYPT_UUID));
        let i = dir.path().join("initrd.img");
        std::fs::write(&i, b"initrd").unwrap();
        // /proc is always another file system than a temporary directory;
        // a symlink on the root does not make its target part of it.
        let other = Path::new("/proc/version");
        let link = dir.path().join("vmlinuz");
        std::os::unix::fs::symlink(other, &link).unwrap();
        let (fmaj, fmin) = split_dev(std::fs::metadata(other).unwrap().dev());
        let (rmaj, rmin) = split_dev(std::fs::metadata(dir.path()).unwrap().dev());
        assert_ne!((fmaj, fmin), (rmaj, rmin));
        for kernel in [other, link.as_path()] {
            let e = load_kernel(kernel, &i, &boot).err().unwrap().to_string();
            assert!(
                e.starts_with(&format!(
                    "the kernel {} is on device {fmaj}:{fmin}, not on the encrypted root ({} is on {rmaj}:{rmin})",
                    kernel.display(),
                    dir.path().display()
                )),
                "{e}"
            );
        }
        // The initrd is checked as well.
        let k = dir.path().join("k");
        std::fs::write(&k, b"kernel").unwrap();
        let e = load_kernel(&k, other, &boot).err().unwrap().to_string();
        assert!(
            e.starts_with("the initrd /proc/version is on device"),
            "{e}"
        );
    }

    #[test]
    fn production_reads_boot_files_only_from_the_dm_crypt_root_at_slash() {
        assert_eq!(
            BootFiles::system(),
            BootFiles::EncryptedRoot {
                root: "/".into(),
                sys_dev_block: "/sys/dev/block".into()
            }
        );
        assert_eq!(BootFiles::from_test_variable(None), BootFiles::system());
        assert_eq!(
            BootFiles::from_test_variable(Some("yes".into())),
            BootFiles::system()
        );
        // Only the simulator build has a test mode at all.
        #[cfg(not(feature = "simulator"))]
        assert_eq!(
            BootFiles::from_test_variable(Some("1".into())),
            BootFiles::system()
        );
        #[cfg(feature = "simulator")]
        assert_eq!(
            BootFiles::from_test_variable(Some("1".into())),
            BootFiles::Anywhere
        );
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        assert_eq!(split_dev((253 << 8) | 3), (253, 3));
        // makedev(259, 0x12345): the high parts above bit 32 and bit 12.
        let dev = (259u64 & 0xfff) << 8 | (0x12345u64 & 0xff) | ((0x12345u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 0x12345));
    }

    #[test]
    fn the_approval_command_names_record_and_launch() {
        let r = RenewResponse {
            record: "4f2a".into(),
            launch: "3".into(),
            measurement: "ab".repeat(48),
            signature: None,
        };
        assert_eq!(
            approve_command(&r),
            "snpguardctl records approve 4f2a --launch 3"
        );
    }
}
