//! snpguard-sim: the "hardware" side of end-to-end tests without SEV-SNP.
//!
//! `init` creates a simulated platform (ARK/ASK/VCEK chain and keys) in a
//! directory; `launch` computes what the PSP would for a guest booted from
//! a launch bundle (optionally with another kernel, initrd or command
//! line) and writes the launch blob the agent's simulated report source
//! reads; `stage` writes a synthetic staging directory (what `convert`
//! leaves for `register`) for clients that test registration without
//! libguestfs; `polkit` serves an allow-everything polkit authority on a
//! private bus (`make demo`, tests); `attest` attests like a guest booted
//! from a bundle, from the host, with failover across servers (fleet
//! tests, docs/fleet.md). **Test use only**: nothing here is trusted by a production
//! daemon; a test daemon trusts `DIR/ark.pem` through `[[test_roots]]`.

mod attest;
mod polkit;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use clap::{Parser, Subcommand};
use rand_core::RngCore as _;
use snpguard::certs::Product;
use snpguard::idblock::{verify_id_auth, IdBlock};
use snpguard::measure::{launch_digest, MeasureInput, VcpuType, VmmType};
use snpguard::seal;
use snpguard_protocol::bundle::{self, extract_bundle, ExtractLimits};
use snpguard_testkit::sim::{LaunchValues, SimLaunch, SimPlatform, SimTcb};

/// The TCB a new simulated platform runs at.
const TCB: SimTcb = SimTcb {
    bootloader: 3,
    tee: 0,
    snp: 20,
    microcode: 209,
    fmc: 1,
};

/// Simulated SEV-SNP platform for SnpGuard tests (never production).
#[derive(Parser, Debug)]
#[command(name = "snpguard-sim", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a simulated platform in a new directory.
    Init {
        /// Directory to create (ark.pem in it is the root to trust).
        #[arg(long)]
        dir: PathBuf,
        /// Product the chain is issued for: milan, genoa or turin.
        #[arg(long, default_value = "genoa")]
        product: Product,
    },
    /// Write the launch blob for a guest booted from a bundle.
    Launch {
        /// Platform directory made by `init`.
        #[arg(long)]
        dir: PathBuf,
        /// launch-artifacts.tar.gz from `snpguardctl register`.
        #[arg(long)]
        bundle: PathBuf,
        /// Kernel actually booted (default: the bundle's).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Initrd actually booted (default: the bundle's).
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// File holding the command line actually booted, used exactly.
        #[arg(long)]
        cmdline_file: Option<PathBuf>,
        /// Where to write the blob (given to QEMU with -fw_cfg).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a synthetic staging directory as `convert` leaves it.
    Stage {
        /// Directory to create (must not exist).
        #[arg(long)]
        dir: PathBuf,
        /// The daemon's ingestion public key (ingestion.pub, 32 raw bytes).
        #[arg(long)]
        ingestion_key: PathBuf,
        /// The OVMF AmdSev footer appended to random firmware pages
        /// (testdata measurement/ovmf_AmdSev_suffix.bin).
        #[arg(long)]
        ovmf_suffix: PathBuf,
        /// Kernel command line written to `cmdline`.
        #[arg(long, default_value = "console=ttyS0 root=/dev/mapper/root")]
        cmdline: String,
    },
    /// Attest like a guest booted from a bundle on this platform, from the
    /// host: challenge, simulated report, release checked as the agent
    /// checks it; with failover across servers, repeated and concurrent.
    Attest(attest::AttestArgs),
    /// Serve a polkit authority allowing EVERY action on a private bus.
    Polkit {
        /// D-Bus address of the private bus (unix:path=…), never the
        /// system bus.
        #[arg(long)]
        bus: String,
    },
}

fn main() -> anyhow::Result<()> {
    eprintln!("snpguard-sim: SIMULATED SEV-SNP platform: for tests only");
    match Cli::parse().command {
        Command::Init { dir, product } => init(&dir, product),
        Command::Launch {
            dir,
            bundle,
            kernel,
            initrd,
            cmdline_file,
            out,
        } => {
            let blob = launch(
                &dir,
                &bundle,
                &Overrides {
                    kernel,
                    initrd,
                    cmdline_file,
                },
            )?;
            std::fs::write(&out, blob.to_json()?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}: measurement {}", out.display(), blob.measurement);
            Ok(())
        }
        Command::Stage {
            dir,
            ingestion_key,
            ovmf_suffix,
            cmdline,
        } => stage(&dir, &ingestion_key, &ovmf_suffix, &cmdline),
        Command::Polkit { bus } => polkit::serve(&bus),
        Command::Attest(args) => attest::run(args),
    }
}

/// Writes firmware.fd (random pages + the AmdSev footer), a random
/// kernel, an initrd holding the agent's files ([`agent_initrd`]),
/// `cmdline` and a random VMK sealed to the ingestion key.
/// The plaintext VMK is not kept: nothing may read it back.
fn stage(
    dir: &Path,
    ingestion_key: &Path,
    ovmf_suffix: &Path,
    cmdline: &str,
) -> anyhow::Result<()> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let public = seal::PublicKey::from_bytes(&read(ingestion_key)?)
        .with_context(|| format!("{} is not an ingestion key", ingestion_key.display()))?;
    let suffix = read(ovmf_suffix)?;
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let random = |len: usize| {
        let mut v = vec![0u8; len];
        rand_core::OsRng.fill_bytes(&mut v);
        v
    };
    let mut firmware = random(3 * 4096);
    firmware.extend_from_slice(&suffix);
    let vmk = zeroize::Zeroizing::new(random(64));
    let sealed = seal::seal(&public, seal::INFO_INGEST, b"", &vmk).context("sealing the VMK")?;
    let files: [(&str, Vec<u8>); 5] = [
        ("firmware.fd", firmware),
        ("kernel", random(64 * 1024)),
        ("initrd", agent_initrd(&random(16), &random(128 * 1024))),
        ("cmdline", cmdline.as_bytes().to_vec()),
        ("vmk.sealed", sealed.to_bytes()),
    ];
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}: synthetic staging directory", dir.display());
    Ok(())
}

/// An initrd (one newc archive) with the agent's configuration, a CA
/// file unique to this staging directory (`ca_id`) and random `filler`,
/// so that an approval review has agent files to compare.
fn agent_initrd(ca_id: &[u8], filler: &[u8]) -> Vec<u8> {
    let config = "ca = \"/etc/snpguard/ca.pem\"\nservers = [\"https://snpguard.test:8443\"]\n";
    let ca = format!("SIMULATED CA {}\n", hex::encode(ca_id));
    snpguard_protocol::initrd::newc(&[
        ("etc/snpguard/agent.toml", 0o100644, config.as_bytes()),
        ("etc/snpguard/ca.pem", 0o100644, ca.as_bytes()),
        ("usr/lib/modules/filler", 0o100644, filler),
    ])
}

/// Creates the platform directory.
fn init(dir: &Path, product: Product) -> anyhow::Result<()> {
    ensure!(
        !dir.join("platform.json").exists(),
        "{} already holds a platform; remove it or pick another --dir",
        dir.display()
    );
    let mut hwid = vec![0u8; product.hwid_len()];
    rand_core::OsRng.fill_bytes(&mut hwid);
    let mut chip_id = [0u8; 64];
    chip_id[..hwid.len()].copy_from_slice(&hwid);
    let platform = SimPlatform::generate(product, TCB, &hwid).context("generating the chain")?;
    platform
        .save(dir, &chip_id)
        .with_context(|| format!("saving the platform to {}", dir.display()))?;
    println!(
        "{}: simulated {product} platform; trust ark.pem",
        dir.display()
    );
    Ok(())
}

/// What the guest actually boots instead of the bundle's files.
#[derive(Debug, Default)]
struct Overrides {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline_file: Option<PathBuf>,
}

/// The launch blob for the bundle at `bundle_path` booted with `over`.
fn launch(dir: &Path, bundle_path: &Path, over: &Overrides) -> anyhow::Result<SimLaunch> {
    let (platform, chip_id) = SimPlatform::load(dir)
        .with_context(|| format!("loading the platform in {}", dir.display()))?;
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let file = std::fs::File::open(bundle_path)
        .with_context(|| format!("opening {}", bundle_path.display()))?;
    let config = extract_bundle(file, tmp.path(), &ExtractLimits::default())
        .with_context(|| format!("extracting {}", bundle_path.display()))?;
    let member = |name: &str| tmp.path().join(name);
    let read_cmdline =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let cmdline = match &over.cmdline_file {
        Some(p) => read_cmdline(p)?,
        None => read_cmdline(&member(bundle::CMDLINE))?,
    };
    let hex_u64 = |field: &str, v: &str| {
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .with_context(|| format!("launch-config.json {field} {v:?}"))
    };
    let policy = hex_u64("guest_policy", &config.guest_policy)?;
    let measurement = launch_digest(&MeasureInput {
        ovmf: member(bundle::FIRMWARE),
        ovmf_hash: None,
        kernel: Some(
            over.kernel
                .clone()
                .unwrap_or_else(|| member(bundle::KERNEL)),
        ),
        initrd: Some(
            over.initrd
                .clone()
                .unwrap_or_else(|| member(bundle::INITRD)),
        ),
        cmdline: Some(cmdline),
        vcpus: config.vcpus,
        vcpu_type: config
            .vcpu_type
            .parse::<VcpuType>()
            .with_context(|| format!("vCPU type {:?}", config.vcpu_type))?,
        guest_features: hex_u64("guest_features", &config.guest_features)?,
        vmm_type: VmmType::Qemu,
    })
    .context("computing the launch digest")?;

    let id_block_bytes = std::fs::read(member(bundle::ID_BLOCK)).context("reading the ID block")?;
    let id_auth = std::fs::read(member(bundle::ID_AUTH)).context("reading the ID auth block")?;
    let id_block = IdBlock::from_bytes(&id_block_bytes).context("the bundle's ID block")?;
    let digests = verify_id_auth(&id_block_bytes, &id_auth)
        .context("the bundle's ID block is not signed by its ID key")?;
    if id_block.policy != policy {
        bail!(
            "the ID block's policy {:#x} differs from launch-config.json's {policy:#x}; the PSP would refuse this launch",
            id_block.policy
        );
    }
    if id_block.launch_digest != measurement {
        // The real PSP refuses such a launch at LAUNCH_FINISH; the
        // simulator lets it boot so that the daemon's refusal of the
        // measurement can be tested end to end.
        eprintln!(
            "snpguard-sim: note: the booted files do not match the ID block (measured {measurement}); the daemon must refuse this guest"
        );
    }
    let values = LaunchValues {
        policy,
        vmpl: 0,
        measurement: *measurement.as_bytes(),
        image_id: id_block.image_id,
        family_id: id_block.family_id,
        guest_svn: id_block.guest_svn,
        id_key_digest: digests.id_key,
        author_key_digest: digests.author_key.unwrap_or([0; 48]),
    };
    Ok(SimLaunch::new(&platform, &chip_id, &values)?)
}

#[cfg(test)]
mod tests;
