//! `snpguardctl bundle check`: the Rust validation of a launch bundle for
//! the tools that boot it (scripts/launch-qemu-snp.sh): a
//! launch-artifacts.tar.gz, or a directory holding its extracted members.

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Subcommand};
use snpguard_protocol::bundle::{check_extracted, extract_bundle, ExtractLimits, LaunchConfig};

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
