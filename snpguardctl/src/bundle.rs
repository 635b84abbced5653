//! `snpguardctl bundle check`: the Rust validation of a launch bundle for
//! the tools that boot it (scripts/launch-qemu-snp.sh): a
//! launch-artifacts.tar.gz, or a directory holding its extracted members.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use snpguard_protocol::bundle::{
    check_extracted, extract_bundle, ExtractLimits, LaunchConfig, MEMBERS,
};

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Check a launch bundle as a launch needs it (every member, its size,
    /// launch-config.json, a command line QEMU can carry) and print its
    /// launch config
    Check(CheckArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").args(["bundle", "dir"]).required(true)))]
pub struct CheckArgs {
    /// launch-artifacts.tar.gz (from register, records export or approve)
    #[arg(value_name = "BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// A directory holding the seven members, already extracted (e.g.
    /// read from an image's LAUNCH_ARTIFACTS partition)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print the launch config as JSON (launch-config.json's fields)
    #[arg(long)]
    pub json: bool,
}

/// How every tool labels a local launch (`LaunchConfig::no_encryption`).
pub const NO_CONFIDENTIALITY: &str = "WARNING: NO CONFIDENTIALITY: a local launch from \
    `convert --no-encryption` and `launch-config`: the disk is not encrypted and no \
    attestation server knows this launch; it tests the measured launch only";

pub fn run(cmd: BundleCommand) -> Result<()> {
    let BundleCommand::Check(a) = cmd;
    let limits = ExtractLimits::default();
    let config = match (&a.bundle, &a.dir) {
        (Some(bundle), _) => {
            let dir = tempfile::Builder::new()
                .prefix("snpguard-bundle-check-")
                .tempdir()
                .context("creating a temporary directory")?;
            let f = File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
            extract_bundle(f, dir.path(), &limits)
                .with_context(|| format!("{} is not a launch bundle", bundle.display()))?;
            check_extracted(dir.path(), &limits)
                .with_context(|| format!("{} cannot be launched", bundle.display()))?
        }
        (None, Some(dir)) => check_extracted(dir, &limits)
            .with_context(|| format!("the bundle in {} cannot be launched", dir.display()))?,
        (None, None) => unreachable!("clap requires BUNDLE or --dir"),
    };
    print(&config, a.json)
}

fn print(c: &LaunchConfig, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
        if c.no_encryption {
            eprintln!("{NO_CONFIDENTIALITY}");
        }
        return Ok(());
    }
    println!(
        "bundle of record {}: measurement {}, policy {}, {} x {}, SEV features {}",
        c.name, c.measurement, c.guest_policy, c.vcpus, c.vcpu_type, c.guest_features
    );
    if c.no_encryption {
        println!("{NO_CONFIDENTIALITY}");
    }
    Ok(())
}

/// The forms `records export` writes a bundle in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// launch-artifacts.tar.gz, as the daemon writes it
    #[default]
    #[value(name = "tar.gz")]
    TarGz,
    /// A squashfs image holding the seven members at its root, for hosts
    /// that attach the artifacts as a read-only disk
    Squashfs,
}

/// Refuses early when mksquashfs is not installed (before a bundle is
/// exported for nothing).
pub fn require_mksquashfs() -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("mksquashfs").is_file()));
    if !found {
        bail!(
            "mksquashfs is not installed; install squashfs-tools (apt-get install squashfs-tools)"
        );
    }
    Ok(())
}

/// Rewrites the bundle `tar_gz` as a squashfs image at `out` (replaced
/// atomically). The bundle is extracted and checked first as every reader
/// does; the image holds exactly its seven members, 0644 and owned by
/// root, with every time stamp zero, so the same bundle gives the same
/// bytes. Runs Debian's mksquashfs (squashfs-tools).
pub fn to_squashfs(tar_gz: &Path, out: &Path) -> Result<()> {
    require_mksquashfs()?;
    let limits = ExtractLimits::default();
    let dir = tempfile::Builder::new()
        .prefix("snpguard-squashfs-")
        .tempdir()
        .context("creating a temporary directory")?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    let f = File::open(tar_gz).with_context(|| format!("opening {}", tar_gz.display()))?;
    extract_bundle(f, &root, &limits)
        .and_then(|_| check_extracted(&root, &limits))
        .with_context(|| format!("{} is not a launch bundle", tar_gz.display()))?;
    for m in MEMBERS {
        std::fs::set_permissions(root.join(m), std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{} has no file name", out.display()))?
        .to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(parent)
        .with_context(|| format!("writing {}", out.display()))?
        .into_temp_path();
    let run = std::process::Command::new("mksquashfs")
        .arg(&root)
        .arg(&tmp)
        .args([
            "-noappend",
            "-no-xattrs",
            "-all-root",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
            "-comp",
            "gzip",
            "-no-progress",
            "-quiet",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    let run = match run {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mksquashfs is not installed; install squashfs-tools (apt-get install squashfs-tools)")
        }
        Err(e) => return Err(e).context("running mksquashfs"),
    };
    if !run.status.success() {
        bail!(
            "mksquashfs failed writing {}: {}",
            out.display(),
            String::from_utf8_lossy(&run.stderr).trim()
        );
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    File::open(&tmp)?.sync_all()?;
    tmp.persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
