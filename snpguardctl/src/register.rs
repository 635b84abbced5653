//! `snpguardctl register`: registers a launch with the daemon from a
//! `convert` staging directory and writes the launch bundle.
//!
//! The staging directory holds `firmware.fd`, `kernel`, `initrd`,
//! `cmdline` (one line; a single trailing newline is not part of it) and
//! `vmk.sealed`. The files go to the daemon as open descriptors.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use snpguard_protocol::dbus::{limit, option_key as key, ManagerProxy, Options};
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value};

use crate::bus::{self, call_mut, describe, Target};
use crate::records::{export_to, record_at, RecordView};

/// Staging directory file names, as `convert` writes them.
pub const FIRMWARE: &str = "firmware.fd";
pub const KERNEL: &str = "kernel";
pub const INITRD: &str = "initrd";
pub const CMDLINE: &str = "cmdline";
pub const SEALED_VMK: &str = "vmk.sealed";
/// Written by `convert --no-encryption` in place of [`SEALED_VMK`]: a
/// staging directory for `launch-config`, never for `register`.
pub const NO_ENCRYPTION: &str = "no-encryption";

/// What a launch is measured and signed for besides its files: the vCPUs
/// and the guest policy's choices (`register` and `launch-config` take
/// the same options).
#[derive(Debug, Clone, ClapArgs)]
pub struct LaunchShape {
    /// Number of vCPUs the guest is launched with
    #[arg(long)]
    pub vcpus: u32,
    /// QEMU vCPU model (e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa)
    #[arg(long, value_name = "TYPE")]
    pub vcpu_type: String,
    /// Allow SMT in the guest policy
    #[arg(long)]
    pub allow_smt: bool,
    /// Allow debugging in the guest policy (test guests only)
    #[arg(long)]
    pub allow_debug: bool,
    /// Allow a migration agent in the guest policy
    #[arg(long)]
    pub allow_migrate_ma: bool,
}

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Record name (A-Z a-z 0-9 . _ -, at most 64)
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub launch: LaunchShape,
    /// Minimum boot loader SPL accepted at attestation
    #[arg(long, value_name = "N", requires_all = ["min_tcb_tee", "min_tcb_snp", "min_tcb_microcode"])]
    pub min_tcb_bootloader: Option<u8>,
    /// Minimum TEE SPL
    #[arg(long, value_name = "N", requires = "min_tcb_bootloader")]
    pub min_tcb_tee: Option<u8>,
    /// Minimum SNP firmware SPL
    #[arg(long, value_name = "N", requires = "min_tcb_bootloader")]
    pub min_tcb_snp: Option<u8>,
    /// Minimum microcode SPL
    #[arg(long, value_name = "N", requires = "min_tcb_bootloader")]
    pub min_tcb_microcode: Option<u8>,
    /// Minimum FMC SPL (Turin)
    #[arg(long, value_name = "N", requires = "min_tcb_bootloader")]
    pub min_tcb_fmc: Option<u8>,
    /// Accept reports from the daemon's configured test root (a simulated
    /// platform; tests only, refused when the daemon trusts none)
    #[arg(long)]
    pub allow_test_root: bool,
    /// Allow offline unlock: guests enrol a chip-derived key at their next
    /// online unlock and may then open their root without a server
    /// (change later with records set-offline-unlock)
    #[arg(long)]
    pub allow_offline_unlock: bool,
    /// Staging directory written by convert (firmware.fd, kernel, initrd,
    /// cmdline, vmk.sealed)
    #[arg(long, value_name = "DIR")]
    pub staging_dir: PathBuf,
    /// Where to write launch-artifacts.tar.gz (replaced atomically)
    #[arg(long, value_name = "FILE")]
    pub out_bundle: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

fn open(dir: &Path, name: &str) -> Result<File> {
    let p = dir.join(name);
    File::open(&p).with_context(|| {
        format!(
            "opening {}; the staging dir from convert has {FIRMWARE}, {KERNEL}, \
             {INITRD}, {CMDLINE} and {SEALED_VMK}",
            p.display()
        )
    })
}

fn value(v: Value<'_>) -> Result<OwnedValue> {
    OwnedValue::try_from(v).context("building the options")
}

/// The options dictionary for `a`, with the command line read from the
/// staging directory.
pub fn options(a: &Args, cmdline: &str) -> Result<Options> {
    let mut o = HashMap::new();
    o.insert(key::NAME.to_string(), value(Value::from(a.name.as_str()))?);
    o.insert(key::CMDLINE.to_string(), value(Value::from(cmdline))?);
    o.insert(key::VCPUS.to_string(), OwnedValue::from(a.launch.vcpus));
    o.insert(
        key::VCPU_TYPE.to_string(),
        value(Value::from(a.launch.vcpu_type.as_str()))?,
    );
    o.insert(
        key::ALLOW_SMT.to_string(),
        OwnedValue::from(a.launch.allow_smt),
    );
    o.insert(
        key::ALLOW_DEBUG.to_string(),
        OwnedValue::from(a.launch.allow_debug),
    );
    o.insert(
        key::ALLOW_MIGRATE_MA.to_string(),
        OwnedValue::from(a.launch.allow_migrate_ma),
    );
    if a.allow_test_root {
        o.insert(key::ALLOW_TEST_ROOT.to_string(), OwnedValue::from(true));
    }
    if a.allow_offline_unlock {
        o.insert(
            key::ALLOW_OFFLINE_UNLOCK.to_string(),
            OwnedValue::from(true),
        );
    }
    for (k, v) in [
        (key::MIN_TCB_BOOTLOADER, a.min_tcb_bootloader),
        (key::MIN_TCB_TEE, a.min_tcb_tee),
        (key::MIN_TCB_SNP, a.min_tcb_snp),
        (key::MIN_TCB_MICROCODE, a.min_tcb_microcode),
        (key::MIN_TCB_FMC, a.min_tcb_fmc),
    ] {
        if let Some(v) = v {
            o.insert(k.to_string(), OwnedValue::from(v));
        }
    }
    Ok(o)
}

/// The `cmdline` file of a staging directory, without one trailing
/// newline.
pub fn read_cmdline(dir: &Path) -> Result<String> {
    use std::io::Read;
    let p = dir.join(CMDLINE);
    let max = snpguard::measure::MAX_CMDLINE_LEN;
    let mut raw = Vec::new();
    std::fs::File::open(&p)
        .and_then(|f| f.take(max as u64 + 2).read_to_end(&mut raw))
        .with_context(|| format!("reading {}", p.display()))?;
    let mut s = String::from_utf8(raw).with_context(|| format!("{} is not UTF-8", p.display()))?;
    if s.ends_with('\n') {
        s.pop();
    }
    snpguard_protocol::text::check_cmdline(&s)
        .with_context(|| format!("{} is refused", p.display()))?;
    Ok(s)
}

fn read_sealed_vmk(dir: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    open(dir, SEALED_VMK)?
        .take(limit::SEALED_VMK as u64 + 1)
        .read_to_end(&mut v)
        .with_context(|| format!("reading {SEALED_VMK}"))?;
    if v.len() > limit::SEALED_VMK {
        anyhow::bail!(
            "{SEALED_VMK} is larger than {} bytes; it is not a sealed VMK from convert",
            limit::SEALED_VMK
        );
    }
    Ok(v)
}

/// What an operator must not miss about a new record (on stderr, so
/// `--json` output stays parseable).
pub fn warnings(view: &RecordView) -> Vec<String> {
    let mut out = Vec::new();
    if view.min_tcb.is_empty() {
        out.push(format!(
            "WARNING: {} has NO minimum TCB: reports from firmware with known \
             vulnerabilities are accepted unless the daemon's [tcb_floor] refuses them; \
             set one with snpguardctl records set-min-tcb {} --bootloader N --tee N \
             --snp N --microcode N",
            view.name, view.name
        ));
    }
    if view.allow_test_root {
        out.push(format!(
            "WARNING: {} accepts reports endorsed by the daemon's TEST root (a simulated \
             platform); never use it for a production guest",
            view.name
        ));
    }
    if view.offline_unlock {
        out.extend(crate::records::offline_notes(&view.name, true));
    }
    out
}

pub fn run(target: &Target, a: Args) -> Result<()> {
    bus::runtime()?.block_on(run_async(target, a))
}

async fn run_async(target: &Target, a: Args) -> Result<()> {
    let dir = &a.staging_dir;
    if dir.join(NO_ENCRYPTION).exists() {
        anyhow::bail!(
            "{} was written by `convert --no-encryption`: it has no disk key to register. \
             Make its local launch with `snpguardctl launch-config --staging-dir {}`, or \
             convert the image without --no-encryption to register it",
            dir.display(),
            dir.display()
        );
    }
    let fd = |name: &str| -> Result<OwnedFd> {
        Ok(OwnedFd::from(std::os::fd::OwnedFd::from(open(dir, name)?)))
    };
    let files: HashMap<&str, OwnedFd> = HashMap::from([
        ("firmware", fd(FIRMWARE)?),
        ("kernel", fd(KERNEL)?),
        ("initrd", fd(INITRD)?),
    ]);
    let cmdline = read_cmdline(dir)?;
    let sealed = read_sealed_vmk(dir)?;
    let opts = options(&a, &cmdline)?;

    let bus = bus::connect(target).await?;
    bus.require_fd_passing("register")?;
    let m = ManagerProxy::new(&bus.conn).await.map_err(describe)?;
    let path: OwnedObjectPath = call_mut(m.inner(), "Register", &(files, opts, sealed))
        .await
        .with_context(|| format!("registering {}", a.name))?;
    let r = record_at(&bus, path).await?;
    export_to(&bus, &r, &a.out_bundle).await.with_context(|| {
        format!(
            "{} is registered, but its bundle was not written; \
             retry with snpguardctl records export {}",
            a.name, a.name
        )
    })?;
    let view = RecordView::fetch(&r).await?;
    for w in warnings(&view) {
        eprintln!("{w}");
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "record": view, "bundle": a.out_bundle.display().to_string() })
        );
    } else {
        println!("registered {} ({})", view.name, view.id);
        println!("measurement {}", view.measurement);
        println!("wrote {}", a.out_bundle.display());
    }
    Ok(())
}
