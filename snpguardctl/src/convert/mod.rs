//! `snpguardctl convert`: a stock cloud image in, an image with a LUKS2
//! root and the agent in its initrd out, plus the staging directory that
//! `register` reads (firmware.fd, kernel, initrd, cmdline, vmk.sealed).
//!
//! The input is attached read-only; the output and the staging directory
//! are written under temporary names and renamed only when everything
//! succeeded. docs/convert.md describes the steps.

mod ingest;
mod outputs;
mod plain;
mod progress;
mod select;

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use snpguard::seal::{self, PublicKey};

use crate::image::appliance::{gerr, Appliance, Drive};
use crate::image::copy::{self, IN_DISK, OUT_DISK};
use crate::image::guest::{self, Install, ReportSource};
use crate::image::inspect;
use crate::image::layout::{self, FstabPlan, Role};
use crate::image::luks::{self, Luks, RecoveryPassphrase, Vmk};
use crate::register::{CMDLINE, FIRMWARE, INITRD, KERNEL, SEALED_VMK};

use outputs::Partial;
use progress::Progress;

/// Default agent binary (as installed).
pub const DEFAULT_AGENT: &str = "/usr/lib/snpguard/snpguard-agent";
/// Default directory of the initrd modules (as installed).
pub const DEFAULT_MODULES_DIR: &str = "/usr/share/snpguard";
/// Largest firmware file accepted.
const MAX_FIRMWARE: u64 = 64 << 20;
/// Largest server URL.
const MAX_URL: usize = 2048;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Input image (qcow2 or raw); never modified
    #[arg(long, value_name = "IN")]
    pub in_image: PathBuf,
    /// Output image (qcow2); must not exist
    #[arg(long, value_name = "OUT", required_unless_present = "no_encryption")]
    pub out_image: Option<PathBuf>,
    /// Staging directory for register; must not exist or be empty
    #[arg(long, value_name = "DIR")]
    pub out_staging: PathBuf,
    /// OVMF firmware (AmdSev build) to copy into the staging directory
    #[arg(long, value_name = "FILE")]
    pub firmware: PathBuf,
    /// Attestation server URL for the agent (https://HOST[:PORT]);
    /// repeatable, tried in order
    #[arg(
        long = "server",
        value_name = "URL",
        required_unless_present = "no_encryption"
    )]
    pub servers: Vec<String>,
    /// CA certificate (PEM) the agent and this command pin for the servers
    #[arg(long, value_name = "FILE", required_unless_present = "no_encryption")]
    pub ca: Option<PathBuf>,
    /// The daemon's ingestion public key (raw 32 bytes, base64 or the
    /// /v1/ingestion-key JSON); default: fetched from the first --server
    #[arg(long, value_name = "FILE")]
    pub ingestion_key: Option<PathBuf>,
    /// Kernel version to boot (default: the bootloader's default among
    /// the kernels with SEV-SNP support)
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Extra kernel command line arguments (refused if one opens a shell,
    /// changes init or resumes from disk: docs/convert.md)
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline_append: String,
    /// Write the LUKS recovery passphrase to this new file (mode 0600; an
    /// existing file is refused)
    #[arg(long, value_name = "PATH")]
    pub recovery_key_file: Option<PathBuf>,
    /// Print the LUKS recovery passphrase (stdout; with --json the
    /// recovery_passphrase field)
    #[arg(long)]
    pub show_recovery_key: bool,
    /// Enrol no recovery passphrase: only the attested key opens the root
    #[arg(long, conflicts_with_all = ["recovery_key_file", "show_recovery_key"])]
    pub no_recovery_keyslot: bool,
    /// Take the default kernel without asking
    #[arg(long)]
    pub yes: bool,
    /// Agent binary to install into the guest
    #[arg(long, value_name = "PATH", default_value = DEFAULT_AGENT)]
    pub agent: PathBuf,
    /// Directory holding initramfs-tools/ and dracut/90snpguard/
    #[arg(long, value_name = "DIR", default_value = DEFAULT_MODULES_DIR)]
    pub modules_dir: PathBuf,
    /// Print a JSON summary instead of text
    #[arg(long)]
    pub json: bool,
    /// NO CONFIDENTIALITY: encrypt nothing and install nothing; only
    /// extract the kernel, initrd and command line (and copy the
    /// firmware) into --out-staging, for trying a measured launch of the
    /// unchanged image with `launch-config` before an attestation server
    /// exists
    #[arg(long, conflicts_with_all = [
        "out_image", "servers", "ca", "ingestion_key", "recovery_key_file",
        "show_recovery_key", "no_recovery_keyslot", "agent", "modules_dir",
        "simulated_platform",
    ])]
    pub no_encryption: bool,
    /// TEST ONLY: the agent attests with snpguard-sim's simulated platform
    /// (QEMU fw_cfg), for the tests and `make demo`; needs the agent's
    /// simulator build (a production agent refuses it)
    #[arg(long)]
    pub simulated_platform: bool,
}

impl Args {
    /// The output image (clap requires it unless --no-encryption).
    fn out_image(&self) -> &Path {
        self.out_image
            .as_deref()
            .expect("clap requires --out-image without --no-encryption")
    }

    /// The servers' CA (clap requires it unless --no-encryption).
    fn ca(&self) -> &Path {
        self.ca
            .as_deref()
            .expect("clap requires --ca without --no-encryption")
    }
}

/// What happens to the LUKS recovery passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recovery {
    /// No recovery keyslot (`--no-recovery-keyslot`).
    None,
    /// A passphrase in keyslot 0, written to `file` and/or shown.
    Keyslot { file: Option<PathBuf>, show: bool },
}

/// The operator's choice for the recovery passphrase; none is an error
/// (a passphrase printed by default ends up in terminal scrollback, CI
/// logs and shell history).
fn recovery(a: &Args) -> Result<Recovery> {
    match (
        &a.recovery_key_file,
        a.show_recovery_key,
        a.no_recovery_keyslot,
    ) {
        (None, false, false) => bail!(
            "choose what happens to the LUKS recovery passphrase: \
             --recovery-key-file PATH (written to a new 0600 file), \
             --show-recovery-key (printed once) or --no-recovery-keyslot \
             (none: only the attested key opens the root)"
        ),
        (_, _, true) => Ok(Recovery::None),
        (file, show, false) => {
            if let Some(f) = file {
                if std::fs::symlink_metadata(f).is_ok() {
                    bail!(
                        "--recovery-key-file {} exists; remove it or choose another path",
                        f.display()
                    );
                }
                // The outputs are renamed into place at the end, over
                // whatever has their name by then.
                let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
                if [a.out_image(), a.out_staging.as_path()]
                    .iter()
                    .any(|o| abs(o) == abs(f))
                {
                    bail!(
                        "--recovery-key-file {} is also an output path; choose another path",
                        f.display()
                    );
                }
            }
            Ok(Recovery::Keyslot {
                file: file.clone(),
                show,
            })
        }
    }
}

/// The report source the agent is configured with.
fn report_source(a: &Args) -> ReportSource {
    if a.simulated_platform {
        ReportSource::Simulated
    } else {
        ReportSource::Auto
    }
}

/// Runs the agent's own `check-config` on `config` before anything is
/// converted: the guest's initrd hook runs the same check and would fail
/// the build minutes later. A production agent refuses
/// `--simulated-platform` here.
fn check_agent_config(agent: &Path, config: &str) -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let out = std::process::Command::new(agent)
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} check-config", agent.display()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said
            .lines()
            .filter(|l| !l.contains("WARNING"))
            .collect::<Vec<_>>()
            .join("; ");
        bail!(
            "the agent {} rejects the configuration convert would install ({}){}",
            agent.display(),
            said.trim(),
            if selects_simulator(config) {
                "; --simulated-platform needs the agent's simulator build (make agent-sim), \
                 never a production agent"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Whether `config` selects the simulated report source.
fn selects_simulator(config: &str) -> bool {
    matches!(
        snpguard_protocol::agent_config::AgentConfig::parse(config),
        Ok(c) if c.report_source == ReportSource::Simulated
    )
}

/// A server URL the agent can use: https, no whitespace, bounded.
fn check_server(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("server {url:?} is not an https:// URL"))?;
    if url.len() > MAX_URL
        || rest.is_empty()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("server {url:?} is not a valid URL");
    }
    Ok(())
}

/// Creates `path` for writing with mode 0600 (never following an existing
/// file).
fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not a UTF-8 path", p.display()))
}

fn check_inputs(a: &Args) -> Result<Recovery> {
    let recovery = recovery(a)?;
    for s in &a.servers {
        check_server(s)?;
    }
    for (what, p) in [
        ("input image", a.in_image.as_path()),
        ("firmware", a.firmware.as_path()),
        ("CA file", a.ca()),
        ("agent", a.agent.as_path()),
    ] {
        if !p.is_file() {
            bail!("{what} {} is not a file", p.display());
        }
    }
    if !a.modules_dir.is_dir() {
        bail!(
            "modules directory {} is missing; pass --modules-dir DIR",
            a.modules_dir.display()
        );
    }
    guest::kernel_hook(&a.modules_dir)?;
    check_firmware(&a.firmware)?;
    guest::check_append(&a.cmdline_append)?;
    Ok(recovery)
}

/// The firmware file is not empty and within [`MAX_FIRMWARE`].
fn check_firmware(path: &Path) -> Result<()> {
    let fw = std::fs::metadata(path)?.len();
    if fw == 0 || fw > MAX_FIRMWARE {
        bail!(
            "firmware {} has {fw} bytes; expected an OVMF image",
            path.display()
        );
    }
    Ok(())
}

fn ingestion_key(a: &Args) -> Result<PublicKey> {
    match &a.ingestion_key {
        Some(p) => ingest::from_file(p),
        None => {
            let ca =
                std::fs::read(a.ca()).with_context(|| format!("reading {}", a.ca().display()))?;
            ingest::fetch(&a.servers[0], &ca)
        }
    }
}

/// Copies the firmware into the staging directory.
fn stage_firmware(src: &Path, dst: &Path) -> Result<()> {
    use std::io::Read;
    let mut out = create_private(dst)?;
    let mut inp = File::open(src)
        .with_context(|| format!("opening {}", src.display()))?
        .take(MAX_FIRMWARE);
    std::io::copy(&mut inp, &mut out).context("copying the firmware")?;
    out.sync_all()?;
    Ok(())
}

/// Downloads `remote` from the mounted guest into a new 0600 file; a file
/// larger than a launch bundle may hold is refused before it is copied
/// (the image is untrusted input).
fn stage_download(app: &Appliance, remote: &str, dst: &Path) -> Result<()> {
    let max = snpguard_protocol::bundle::ExtractLimits::default().max_member;
    let size = app
        .g()
        .filesize(remote)
        .map_err(gerr("filesize"))
        .with_context(|| format!("reading the size of {remote}"))?;
    if u64::try_from(size).map_or(true, |s| s > max) {
        bail!(
            "{remote} in the image has {size} bytes, more than a launch bundle may hold \
             ({max}); the image's kernel or initrd is not what a launch can boot"
        );
    }
    drop(create_private(dst)?);
    app.g()
        .download(remote, utf8(dst)?)
        .map_err(gerr("download"))
        .with_context(|| format!("extracting {remote}"))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A data volume: the file system mounted at `mountpoint` on partition
/// `partnum`, encrypted with a key derived from the VMK.
#[derive(Debug, Clone, serde::Serialize)]
struct DataVolume {
    mountpoint: String,
    partnum: i32,
    #[serde(flatten)]
    luks: Luks,
}

/// What the summary reports.
struct Outcome {
    guest: inspect::Guest,
    kernel: inspect::Kernel,
    cmdline: String,
    luks: Luks,
    volumes: Vec<DataVolume>,
    dropped_swaps: Vec<String>,
    recovery: Recovery,
}

pub fn run(a: Args) -> Result<()> {
    if a.no_encryption {
        return plain::run(&a);
    }
    let recovery = check_inputs(&a)?;
    let in_abs = std::fs::canonicalize(&a.in_image)?;
    if std::fs::canonicalize(a.out_image()).ok().as_ref() == Some(&in_abs) {
        bail!("--out-image must not be the input image");
    }
    if a.simulated_platform {
        eprintln!(
            "WARNING: --simulated-platform: the guest's agent will attest with the SIMULATED \
             SEV-SNP platform of snpguard-sim. TEST ONLY: this image gets its key from a \
             daemon that trusts a test root, and proves nothing about real hardware."
        );
    }
    let params = luks::new_root();
    // The agent must accept what convert will write (the data volumes are
    // added once the image is inspected, and checked again then).
    let config = guest::agent_config(&a.servers, &params, &[], report_source(&a))?;
    check_agent_config(&a.agent, &config)?;
    let key = ingestion_key(&a)?;
    let out = Partial::new(a.out_image(), false)?;
    let staging = Partial::new(&a.out_staging, true)?;
    std::fs::create_dir(staging.path())
        .with_context(|| format!("creating {}", staging.path().display()))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))?;

    let vmk = Vmk::generate();
    let passphrase = match recovery {
        Recovery::None => None,
        Recovery::Keyslot { .. } => Some(RecoveryPassphrase::generate()),
    };
    // Written before anything is converted: an image whose passphrase
    // could not be stored is never produced.
    let key_file = match (&recovery, &passphrase) {
        (Recovery::Keyslot { file: Some(f), .. }, Some(p)) => {
            let line = zeroize::Zeroizing::new(format!("{}\n", p.expose()));
            Some(outputs::Exclusive::create(f, line.as_bytes())?)
        }
        _ => None,
    };
    let sealed = seal::seal(&key, seal::INFO_INGEST, b"", vmk.bytes())
        .context("sealing the VMK to the ingestion key")?;
    let mut f = create_private(&staging.path().join(SEALED_VMK))?;
    f.write_all(&sealed.to_bytes())?;
    f.sync_all()?;
    drop(f);
    stage_firmware(&a.firmware, &staging.path().join(FIRMWARE))?;

    let mut progress = Progress::new(a.json);
    let outcome = convert(
        &a,
        &mut progress,
        out.path(),
        staging.path(),
        &vmk,
        passphrase.as_ref(),
        params,
    )?;
    drop(vmk);

    out.commit()?;
    staging.commit()?;
    if let Some(k) = key_file {
        k.commit();
    }
    summary(
        &a,
        &progress,
        &Outcome {
            recovery,
            ..outcome
        },
        passphrase.as_ref(),
    )
}

/// Creates the output image: the input's size plus one LUKS2 header per
/// encrypted volume (root and `data` data volumes).
fn create_output(a: &Args, out_path: &Path, data: usize) -> Result<()> {
    let g = guestfs::Handle::create().map_err(gerr("create"))?;
    let size = g
        .disk_virtual_size(utf8(&a.in_image)?)
        .map_err(gerr("disk_virtual_size"))?;
    if out_path.exists() {
        std::fs::remove_file(out_path)
            .with_context(|| format!("removing {}", out_path.display()))?;
    }
    g.disk_create(
        utf8(out_path)?,
        "qcow2",
        size + luks::DATA_OFFSET as i64 * (1 + data as i64),
        guestfs::DiskCreateOptArgs {
            backingfile: None,
            backingformat: None,
            preallocation: None,
            compat: None,
            clustersize: None,
        },
    )
    .map_err(gerr("disk_create"))
    .context("creating the output image")
}

/// Launches the appliance on the input (read-only) and output images.
fn launch(a: &Args, out_path: &Path) -> Result<Appliance> {
    Appliance::launch(&[
        Drive {
            path: &a.in_image,
            readonly: true,
        },
        Drive {
            path: out_path,
            readonly: false,
        },
    ])
}

#[allow(clippy::too_many_arguments)]
fn convert(
    a: &Args,
    progress: &mut Progress,
    out_path: &Path,
    staging: &Path,
    vmk: &Vmk,
    passphrase: Option<&RecoveryPassphrase>,
    params: Luks,
) -> Result<Outcome> {
    let phase = progress.start("inspect", "starting the appliance and inspecting the image");
    create_output(a, out_path, 0)?;
    let mut app = launch(a, out_path)?;
    let mut guest = inspect::inspect(&app)?;
    let encrypted = guest
        .mounts
        .iter()
        .filter(|m| m.role == Role::Encrypted)
        .count();
    if encrypted > 0 {
        // Each data volume needs room for its LUKS2 header too: the output
        // image is made again at its size (the appliance cannot take a new
        // drive once launched).
        app.shutdown()?;
        create_output(a, out_path, encrypted)?;
        app = launch(a, out_path)?;
        guest = inspect::inspect(&app)?;
    }
    progress.finish(phase);

    let interactive = std::io::stdin().is_terminal();
    let kernel = select::choose(&guest, a.kernel.as_deref(), a.yes, interactive)?.clone();
    // API name for libguestfs calls; kernel names for shell commands.
    let root_in = format!("{IN_DISK}{}", guest.root.partnum);
    let (kin, kout) = (app.kernel_disk(0)?, app.kernel_disk(1)?);
    let root_in_k = format!("{kin}{}", guest.root.partnum);
    let root_out_k = format!("{kout}{}", guest.root.partnum);

    let mut names: Vec<String> = Vec::new();
    let mut volumes: Vec<DataVolume> = Vec::new();
    for m in guest.mounts.iter().filter(|m| m.role == Role::Encrypted) {
        let name = layout::mapper_name(&m.mountpoint, m.partnum, &names);
        names.push(name.clone());
        volumes.push(DataVolume {
            mountpoint: m.mountpoint.clone(),
            partnum: m.partnum,
            luks: luks::new_data(&name),
        });
    }
    let pairs: Vec<(String, Luks)> = volumes
        .iter()
        .map(|v| (v.mountpoint.clone(), v.luks.clone()))
        .collect();
    let config = guest::agent_config(&a.servers, &params, &pairs, report_source(a))?;
    check_agent_config(&a.agent, &config)?;

    let phase = progress.start("encrypt", "partitioning and formatting the LUKS2 volumes");
    let grown: Vec<i32> = std::iter::once(guest.root.partnum)
        .chain(volumes.iter().map(|v| v.partnum))
        .collect();
    // /boot moves onto the root and swap is dropped: neither partition is
    // copied (nothing on the output disk is left for the host to read).
    let skip: Vec<i32> = guest
        .mounts
        .iter()
        .filter(|m| m.role == Role::MovedToRoot)
        .map(|m| m.partnum)
        .chain(guest.swap_partitions.iter().copied())
        .collect();
    copy::partitions(&app, &grown, &skip, luks::DATA_OFFSET)?;
    luks::format_and_open(&app, &root_out_k, &params, vmk, passphrase)?;
    for v in &volumes {
        let key = vmk.data_volume_key(&v.luks.uuid)?;
        luks::format_and_open(
            &app,
            &format!("{kout}{}", v.partnum),
            &v.luks,
            &key,
            passphrase,
        )
        .with_context(|| format!("encrypting {}", v.mountpoint))?;
    }
    copy::mkfs_like(&app, &guest.root.fstype, &root_in, &params.mapper())?;
    for v in &volumes {
        let m = guest
            .mounts
            .iter()
            .find(|m| m.partnum == v.partnum)
            .context("data volume without its mount")?;
        copy::mkfs_like(
            &app,
            &m.fstype,
            &format!("{IN_DISK}{}", v.partnum),
            &v.luks.mapper(),
        )?;
    }
    progress.finish(phase);

    let phase = progress.start_bytes("copy", "copying the root filesystem", guest.root.used_bytes);
    copy::copy_files(&app, &root_in_k, &params.mapper(), "", |done| {
        phase.set_position(done)
    })?;
    progress.finish(phase);
    for m in guest.mounts.iter().filter(|m| m.role == Role::MovedToRoot) {
        let phase = progress.start(
            "move-boot",
            &format!("moving {} onto the encrypted root", m.mountpoint),
        );
        let sub = m.mountpoint.trim_start_matches('/');
        copy::copy_files(
            &app,
            &format!("{kin}{}", m.partnum),
            &params.mapper(),
            sub,
            |_| {},
        )?;
        progress.finish(phase);
    }
    if !volumes.is_empty() {
        let list: Vec<&str> = volumes.iter().map(|v| v.mountpoint.as_str()).collect();
        let phase = progress.start("copy-volumes", &format!("copying {}", list.join(", ")));
        for v in &volumes {
            copy::copy_files(
                &app,
                &format!("{kin}{}", v.partnum),
                &v.luks.mapper(),
                "",
                |_| {},
            )?;
        }
        progress.finish(phase);
    }

    let phase = progress.start("install", "installing the agent and its initrd module");
    let g = app.g();
    g.mount(&params.mapper(), "/").map_err(gerr("mount"))?;
    // Parents before children (inspect sorted them): the data volumes and
    // the ESP; /boot is a directory of the root now.
    for m in &guest.mounts {
        let dev = match m.role {
            Role::MovedToRoot => continue,
            Role::Encrypted => volumes
                .iter()
                .find(|v| v.partnum == m.partnum)
                .map(|v| v.luks.mapper())
                .context("data volume without its mapping")?,
            Role::Esp => format!("{OUT_DISK}{}", m.partnum),
        };
        g.mkdir_p(&m.mountpoint)
            .map_err(gerr("mkdir_p"))
            .with_context(|| format!("making the mount point {}", m.mountpoint))?;
        g.mount(&dev, &m.mountpoint)
            .map_err(gerr("mount"))
            .with_context(|| format!("mounting {} of the output image", m.mountpoint))?;
    }
    let plan = FstabPlan {
        root_uuid: guest.root.uuid.clone(),
        root_label: guest.root.label.clone(),
        encrypted: volumes
            .iter()
            .map(|v| (v.mountpoint.clone(), v.luks.mapper()))
            .collect(),
        moved: guest
            .mounts
            .iter()
            .filter(|m| m.role == Role::MovedToRoot)
            .map(|m| m.mountpoint.clone())
            .collect(),
        esp: guest
            .mounts
            .iter()
            .filter(|m| m.role == Role::Esp)
            .map(|m| m.mountpoint.clone())
            .collect(),
    };
    let dropped_swaps = guest::install(
        &app,
        &Install {
            agent: &a.agent,
            modules_dir: &a.modules_dir,
            ca: a.ca(),
            config: &config,
            tool: guest.initrd_tool,
        },
        &plan,
    )?;
    progress.finish(phase);

    let phase = progress.start(
        "initrd",
        &format!("regenerating the initrd of {} in the guest", kernel.version),
    );
    guest::regenerate_initrd(
        &app,
        guest.initrd_tool,
        &guest.initrd_tool_path,
        &kernel.version,
        &kernel.initrd,
    )?;
    progress.finish(phase);

    let phase = progress.start("extract", "extracting kernel, initrd and command line");
    stage_download(&app, &kernel.kernel, &staging.join(KERNEL))?;
    stage_download(&app, &kernel.initrd, &staging.join(INITRD))?;
    let guest::Cmdline {
        line: cmdline,
        dropped,
    } = guest::cmdline(
        &kernel.cmdline,
        &params.mapper(),
        guest.initrd_tool,
        &a.cmdline_append,
    )?;
    if !dropped.is_empty() {
        eprintln!(
            "WARNING: not carried over from the bootloader's command line (each opens a \
             shell, changes init or resumes from disk): {}",
            dropped.join(" ")
        );
    }
    let mut f = create_private(&staging.join(CMDLINE))?;
    f.write_all(cmdline.as_bytes())?;
    f.sync_all()?;
    g.umount_all().map_err(gerr("umount_all"))?;
    for v in &volumes {
        app.sh(&format!("cryptsetup close {}", v.luks.name))?;
    }
    app.sh(&format!("cryptsetup close {}", luks::MAPPER_NAME))?;
    app.shutdown()?;
    progress.finish(phase);
    Ok(Outcome {
        guest,
        kernel,
        cmdline,
        luks: params,
        volumes,
        dropped_swaps,
        recovery: Recovery::None,
    })
}

fn summary(
    a: &Args,
    progress: &Progress,
    o: &Outcome,
    passphrase: Option<&RecoveryPassphrase>,
) -> Result<()> {
    let (file, show) = match &o.recovery {
        Recovery::None => (None, false),
        Recovery::Keyslot { file, show } => (file.as_deref(), *show),
    };
    let shown = passphrase.filter(|_| show);
    let timings: serde_json::Map<String, serde_json::Value> = progress
        .timings()
        .iter()
        .map(|(n, d)| (n.to_string(), json!(d.as_millis() as u64)))
        .collect();
    if a.json {
        let mut v = json!({
            "out_image": a.out_image().display().to_string(),
            "out_staging": a.out_staging.display().to_string(),
            "product": o.guest.product,
            "root": o.guest.root,
            "mounts": o.guest.mounts,
            "initrd_tool": o.guest.initrd_tool,
            "kernel": o.kernel,
            "cmdline": o.cmdline,
            "luks": o.luks,
            "volumes": o.volumes,
            "dropped_swaps": o.dropped_swaps,
            "recovery": {
                "keyslot": o.recovery != Recovery::None,
                "file": file.map(|f| f.display().to_string()),
            },
            "timings_ms": timings,
        });
        if let Some(p) = shown {
            v["recovery_passphrase"] = json!(p.expose());
        }
        println!("{v}");
    } else {
        println!(
            "converted {} -> {}",
            a.in_image.display(),
            a.out_image().display()
        );
        println!("staging   {}", a.out_staging.display());
        println!("kernel    {}", o.kernel.version);
        println!("cmdline   {}", o.cmdline);
        println!("luks      {} ({})", o.luks.uuid, o.luks.cipher);
        for v in &o.volumes {
            println!(
                "volume    {} -> /dev/mapper/{} (LUKS2 {}, key derived from the VMK)",
                v.mountpoint, v.luks.name, v.luks.uuid
            );
        }
        for m in o
            .guest
            .mounts
            .iter()
            .filter(|m| m.role == Role::MovedToRoot)
        {
            println!("moved     {} onto the encrypted root", m.mountpoint);
        }
        for m in o.guest.mounts.iter().filter(|m| m.role == Role::Esp) {
            println!("esp       {} kept in clear, mounted noauto", m.mountpoint);
        }
        for s in &o.dropped_swaps {
            println!("swap      dropped: {s}");
        }
        match (&o.recovery, file) {
            (Recovery::None, _) => {
                println!(
                    "recovery  none (--no-recovery-keyslot): only the attested key opens the root"
                )
            }
            (_, Some(f)) => println!(
                "recovery  passphrase in {} (store it offline; it opens the root with cryptsetup)",
                f.display()
            ),
            (_, None) => {}
        }
        if let Some(p) = shown {
            println!(
                "recovery passphrase (shown once; store it offline, it opens the root with cryptsetup):"
            );
            println!("          {}", p.expose());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `convert` as the CLI parses it.
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser as _;
        let base = [
            "convert",
            "--in-image",
            "in.qcow2",
            "--out-image",
            "out.qcow2",
            "--out-staging",
            "s",
            "--firmware",
            "fw.fd",
            "--server",
            "https://a",
            "--ca",
            "ca.pem",
        ];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.a)
    }

    #[test]
    fn the_recovery_options_parse() {
        let a = parse(&["--recovery-key-file", "/k"]).unwrap();
        assert_eq!(a.recovery_key_file.as_deref(), Some(Path::new("/k")));
        assert!(!a.show_recovery_key && !a.no_recovery_keyslot);
        let a = parse(&["--show-recovery-key"]).unwrap();
        assert!(a.show_recovery_key && a.recovery_key_file.is_none());
        let a = parse(&["--show-recovery-key", "--recovery-key-file", "/k"]).unwrap();
        assert!(a.show_recovery_key && a.recovery_key_file.is_some());
        let a = parse(&["--no-recovery-keyslot"]).unwrap();
        assert!(a.no_recovery_keyslot);
        // No keyslot and a passphrase to store or show contradict.
        for extra in [
            &["--no-recovery-keyslot", "--show-recovery-key"][..],
            &["--no-recovery-keyslot", "--recovery-key-file", "/k"][..],
        ] {
            let e = parse(extra).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
        }
        assert!(parse(&["--recovery-key-file"]).is_err());
    }

    #[test]
    fn no_encryption_needs_no_server_or_key_and_refuses_what_it_would_ignore() {
        use clap::Parser as _;
        let base = [
            "convert",
            "--in-image",
            "in.qcow2",
            "--out-staging",
            "s",
            "--firmware",
            "fw.fd",
        ];
        let a = Cli::try_parse_from(base.iter().chain(&["--no-encryption"]))
            .unwrap()
            .a;
        assert!(a.no_encryption && a.out_image.is_none() && a.ca.is_none());
        assert!(a.servers.is_empty());
        // Without it, the encrypted conversion's inputs are required.
        let e = Cli::try_parse_from(base).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        for extra in [
            &["--out-image", "o"][..],
            &["--server", "https://a"][..],
            &["--ca", "ca.pem"][..],
            &["--ingestion-key", "k"][..],
            &["--show-recovery-key"][..],
            &["--no-recovery-keyslot"][..],
            &["--recovery-key-file", "/k"][..],
            &["--agent", "a"][..],
            &["--simulated-platform"][..],
        ] {
            let e = Cli::try_parse_from(base.iter().chain(&["--no-encryption"]).chain(extra))
                .unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{extra:?}: {e}"
            );
        }
    }

    #[test]
    fn convert_refuses_without_a_recovery_choice_naming_the_options() {
        let a = parse(&[]).unwrap();
        let e = recovery(&a).unwrap_err().to_string();
        for o in [
            "--recovery-key-file PATH",
            "--show-recovery-key",
            "--no-recovery-keyslot",
        ] {
            assert!(e.contains(o), "{e}");
        }
        // check_inputs refuses it first, before looking at any file.
        let e = check_inputs(&a).unwrap_err().to_string();
        assert!(
            e.starts_with("choose what happens to the LUKS recovery passphrase"),
            "{e}"
        );
    }

    #[test]
    fn the_recovery_choice_is_what_the_options_say() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("recovery.key");
        let k_str = k.to_str().unwrap();
        assert_eq!(
            recovery(&parse(&["--recovery-key-file", k_str]).unwrap()).unwrap(),
            Recovery::Keyslot {
                file: Some(k.clone()),
                show: false
            }
        );
        assert_eq!(
            recovery(&parse(&["--show-recovery-key"]).unwrap()).unwrap(),
            Recovery::Keyslot {
                file: None,
                show: true
            }
        );
        assert_eq!(
            recovery(&parse(&["--no-recovery-keyslot"]).unwrap()).unwrap(),
            Recovery::None
        );
        // An existing file (or a dangling symlink) is refused up front.
        std::fs::write(&k, b"old").unwrap();
        let e = recovery(&parse(&["--recovery-key-file", k_str]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("exists; remove it"), "{e}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &link).unwrap();
        let a = parse(&["--recovery-key-file", link.to_str().unwrap()]).unwrap();
        assert!(recovery(&a).is_err());
        // Nor may it be where an output will be renamed to.
        for clash in ["out.qcow2", "./s"] {
            let a = parse(&["--recovery-key-file", clash]).unwrap();
            let e = recovery(&a).unwrap_err().to_string();
            assert!(e.contains("is also an output path"), "{e}");
        }
    }

    #[test]
    fn a_forbidden_cmdline_append_is_refused_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        let f = |n: &str| {
            let p = d.path().join(n);
            std::fs::write(&p, b"x").unwrap();
            p.to_str().unwrap().to_owned()
        };
        let (img, fw, ca, agent) = (f("in"), f("fw"), f("ca"), f("agent"));
        let modules = d.path().join("modules");
        std::fs::create_dir_all(modules.join("kernel/postinst.d")).unwrap();
        std::fs::write(
            modules.join("kernel/postinst.d/zz-snpguard-renew"),
            b"#!/bin/sh\n",
        )
        .unwrap();
        let args = |append: &str| {
            use clap::Parser as _;
            Cli::try_parse_from([
                "convert",
                "--in-image",
                &img,
                "--out-image",
                "out",
                "--out-staging",
                "s",
                "--firmware",
                &fw,
                "--server",
                "https://a",
                "--ca",
                &ca,
                "--agent",
                &agent,
                "--modules-dir",
                modules.to_str().unwrap(),
                "--no-recovery-keyslot",
                "--cmdline-append",
                append,
            ])
            .unwrap()
            .a
        };
        check_inputs(&args("quiet loglevel=7")).unwrap();
        let e = check_inputs(&args("quiet systemd.debug-shell"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--cmdline-append: \"systemd.debug-shell\" is not allowed"),
            "{e}"
        );
    }

    #[test]
    fn servers_must_be_https() {
        check_server("https://snpguard.example:8443").unwrap();
        assert!(check_server("http://x").is_err());
        assert!(check_server("https://").is_err());
        assert!(check_server("https://a b").is_err());
        assert!(check_server(&format!("https://{}", "a".repeat(3000))).is_err());
    }

    /// An executable script standing in for the agent.
    fn fake_agent(dir: &Path, script: &str) -> PathBuf {
        let p = dir.join("agent");
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_production_agent_refusing_the_simulator_fails_convert_early() {
        let d = tempfile::tempdir().unwrap();
        // What a production agent's check-config prints for it.
        let agent = fake_agent(
            d.path(),
            "#!/bin/sh\n[ \"$1\" = check-config ] || exit 2\n\
             grep -q 'report_source = \"simulated\"' \"$3\" || exit 0\n\
             echo \"$3: report_source: \\\"simulated\\\" is not compiled into this agent\" >&2\n\
             exit 1\n",
        );
        let params = luks::new_root();
        let servers = ["https://10.0.2.2:8443".to_owned()];
        let sim = guest::agent_config(&servers, &params, &[], ReportSource::Simulated).unwrap();
        let e = format!("{:#}", check_agent_config(&agent, &sim).unwrap_err());
        assert!(e.contains("rejects the configuration"), "{e}");
        assert!(e.contains("is not compiled into this agent"), "{e}");
        assert!(e.contains("simulator build (make agent-sim)"), "{e}");
        let prod = guest::agent_config(&servers, &params, &[], ReportSource::Auto).unwrap();
        check_agent_config(&agent, &prod).unwrap();
    }

    #[test]
    fn an_agent_that_cannot_run_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = check_agent_config(&d.path().join("missing"), "x").unwrap_err();
        assert!(format!("{e:#}").contains("check-config"), "{e:#}");
    }
}
