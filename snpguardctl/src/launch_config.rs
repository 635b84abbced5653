//! `snpguardctl launch-config`: the launch of a `convert --no-encryption`
//! staging directory, made on this host without an attestation server.
//!
//! It measures the staging directory's firmware, kernel, initrd and
//! command line for the vCPUs given, signs an ID block for that
//! measurement with an ID key and an author key made for this call and
//! thrown away after signing, and writes `launch-config.json`,
//! `id-block.bin` and `id-auth.bin` next to the other files: the staging
//! directory then holds the seven members of a launch bundle, which
//! `embed --in-staging` embeds and `--out-bundle` packs. The SEV-SNP
//! firmware refuses to start the guest unless its launch digest is the one
//! signed, so booting it proves the measurement; nothing else. The
//! config says `"no_encryption": true` and every tool that reads it says
//! the launch gives no confidentiality.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use p384::ecdsa::SigningKey;
use serde_json::json;
use snpguard::idblock::{key_digest, verify_id_auth, IdAuth, IdBlock};
use snpguard::measure::{launch_digest, LaunchDigest, MeasureInput, VcpuType, VmmType};
use snpguard::report::GuestPolicy;
use snpguard_protocol::bundle::{
    self, write_bundle, BundleSources, LaunchConfig, SignedLaunchError, ID_AUTH, ID_BLOCK,
    LAUNCH_CONFIG,
};

use crate::bundle::NO_CONFIDENTIALITY;
use crate::output::{write_atomic, AtomicFile};
use crate::register::{LaunchShape, CMDLINE, FIRMWARE, INITRD, KERNEL, NO_ENCRYPTION, SEALED_VMK};

/// SEV features of a QEMU launch (SNP active), as `register` measures it.
const GUEST_FEATURES: u64 = 0x1;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Staging directory written by `convert --no-encryption`
    #[arg(long, value_name = "DIR")]
    pub staging_dir: PathBuf,
    #[command(flatten)]
    pub launch: LaunchShape,
    /// Name in launch-config.json (A-Z a-z 0-9 . _ -); default: the
    /// staging directory's name
    #[arg(long)]
    pub name: Option<String>,
    /// Precomputed hash of the firmware, 96 hex (sev-snp-measure's
    /// --snp-ovmf-hash), instead of hashing firmware.fd
    #[arg(long, value_name = "HEX")]
    pub ovmf_hash: Option<LaunchDigest>,
    /// Also write the seven members as launch-artifacts.tar.gz here
    /// (replaced atomically), for scripts/launch-qemu-snp.sh --artifacts
    #[arg(long, value_name = "FILE")]
    pub out_bundle: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Checks that `dir` is a `convert --no-encryption` staging directory.
fn check_staging(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "staging directory {} is not a directory; make one with `snpguardctl convert \
             --no-encryption`",
            dir.display()
        );
    }
    if std::fs::symlink_metadata(dir.join(SEALED_VMK)).is_ok() {
        bail!(
            "{} holds a sealed disk key ({SEALED_VMK}): it is an encrypted guest's staging \
             directory; register it with snpguardd (`snpguardctl register`), which signs its \
             launch. launch-config is for `convert --no-encryption` staging directories",
            dir.display()
        );
    }
    if !dir.join(NO_ENCRYPTION).is_file() {
        bail!(
            "{} was not written by `snpguardctl convert --no-encryption` (no {NO_ENCRYPTION} \
             file); launch-config makes local launches of those only",
            dir.display()
        );
    }
    for m in [FIRMWARE, KERNEL, INITRD, CMDLINE] {
        let p = dir.join(m);
        let meta = std::fs::symlink_metadata(&p).with_context(|| {
            format!(
                "{} is missing; run convert --no-encryption again",
                p.display()
            )
        })?;
        if !meta.file_type().is_file() {
            bail!("{} is not a regular file", p.display());
        }
    }
    Ok(())
}

/// The name: `--name`, else the staging directory's.
fn name(a: &Args) -> Result<String> {
    if let Some(n) = &a.name {
        return Ok(n.clone());
    }
    let abs = std::path::absolute(&a.staging_dir)?;
    abs.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{} has no usable name; pass --name NAME",
                a.staging_dir.display()
            )
        })
}

/// What launch-config made.
#[derive(Debug)]
pub struct Made {
    pub config: LaunchConfig,
}

/// Measures and signs the launch of `a.staging_dir` and writes its three
/// files there (and the bundle if asked).
pub fn make(a: &Args) -> Result<Made> {
    check_staging(&a.staging_dir)?;
    let dir = &a.staging_dir;
    if let Some(out) = &a.out_bundle {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if std::fs::canonicalize(parent).ok() == std::fs::canonicalize(dir).ok() {
            bail!(
                "--out-bundle {} is inside the staging directory; write the bundle elsewhere",
                out.display()
            );
        }
    }
    let vcpu_type: VcpuType = a
        .launch
        .vcpu_type
        .parse()
        .map_err(|e| anyhow::anyhow!("--vcpu-type {}: {e}", a.launch.vcpu_type))?;
    let cmdline = crate::register::read_cmdline(dir)?;
    let digest = launch_digest(&MeasureInput {
        ovmf: dir.join(FIRMWARE),
        ovmf_hash: a.ovmf_hash.map(|d| *d.as_bytes()),
        kernel: Some(dir.join(KERNEL)),
        initrd: Some(dir.join(INITRD)),
        cmdline: Some(cmdline.clone()),
        vcpus: a.launch.vcpus,
        vcpu_type,
        guest_features: GUEST_FEATURES,
        vmm_type: VmmType::Qemu,
    })
    .with_context(|| format!("measuring the launch of {}", dir.display()))?;
    let policy = GuestPolicy::for_launch(
        a.launch.allow_smt,
        a.launch.allow_debug,
        a.launch.allow_migrate_ma,
    );
    let mut image_id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut image_id);
    let block = IdBlock {
        launch_digest: digest,
        family_id: [0; 16],
        image_id,
        guest_svn: 0,
        policy: policy.0,
    };
    // Keys of this launch alone: nothing else is ever signed with them,
    // so they are not kept (SigningKey zeroizes itself when dropped).
    let id_key = SigningKey::random(&mut rand::rngs::OsRng);
    let author_key = SigningKey::random(&mut rand::rngs::OsRng);
    let auth = IdAuth::sign(&block, &id_key, Some(&author_key)).context("signing the ID block")?;
    let block_bytes = block.to_bytes();
    let digests =
        verify_id_auth(&block_bytes, auth.as_bytes()).context("verifying the signed ID block")?;
    let config = LaunchConfig {
        version: bundle::CONFIG_VERSION,
        name: name(a)?,
        vcpus: a.launch.vcpus,
        vcpu_type: a.launch.vcpu_type.clone(),
        guest_policy: format!("{:#x}", policy.0),
        guest_features: format!("{GUEST_FEATURES:#x}"),
        measurement: digest.to_string(),
        id_key_digest: hex::encode(key_digest(id_key.verifying_key())),
        author_key_digest: hex::encode(
            digests
                .author_key
                .context("the signed ID auth lacks the author key")?,
        ),
        family_id: hex::encode(block.family_id),
        image_id: hex::encode(image_id),
        kernel_hashes: true,
        no_encryption: true,
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}; pass --name NAME with A-Z a-z 0-9 . _ - only"))?;
    let json = serde_json::to_vec_pretty(&config)?;
    // The bundle first: if it cannot be written, the staging directory
    // is as it was.
    if let Some(out) = &a.out_bundle {
        write_local_bundle(dir, &config, &cmdline, &block_bytes, auth.as_bytes(), out)?;
    }
    // Without a config the directory is no launch: a run that fails
    // half-way leaves one that embed --in-staging refuses.
    match std::fs::remove_file(dir.join(LAUNCH_CONFIG)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {LAUNCH_CONFIG}"))
        }
        _ => {}
    }
    write_atomic(&dir.join(ID_BLOCK), &block_bytes, 0o644)?;
    write_atomic(&dir.join(ID_AUTH), auth.as_bytes(), 0o644)?;
    // The command line as measured: one trailing newline that
    // read_cmdline dropped would otherwise reach QEMU from the directory.
    if std::fs::read(dir.join(CMDLINE))? != cmdline.as_bytes() {
        write_atomic(&dir.join(CMDLINE), cmdline.as_bytes(), 0o600)?;
    }
    // The config last: its presence says the others are this launch's.
    write_atomic(&dir.join(LAUNCH_CONFIG), &json, 0o644)?;
    Ok(Made { config })
}

/// Checks that the members in `dir` are the launch `config` describes
/// ([`snpguard_protocol::bundle::check_signed`]), with what to do when
/// they are not.
pub fn check_signed(dir: &Path, config: &LaunchConfig) -> Result<()> {
    snpguard_protocol::bundle::check_signed(dir, config).map_err(|e| {
        let hint = match e {
            SignedLaunchError::Measurement { .. } => {
                " (a file changed after launch-config); run `snpguardctl launch-config` again"
            }
            SignedLaunchError::Disagree(_) | SignedLaunchError::Signature(_) => {
                "; run `snpguardctl launch-config` again"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })
}

/// Packs the staging directory's members into `out` (replaced atomically).
fn write_local_bundle(
    dir: &Path,
    config: &LaunchConfig,
    cmdline: &str,
    id_block: &[u8],
    id_auth: &[u8],
    out: &Path,
) -> Result<()> {
    let open = |m: &str| -> Result<(File, u64)> {
        let p = dir.join(m);
        let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let len = f.metadata()?.len();
        Ok((f, len))
    };
    let (mut firmware, firmware_len) = open(FIRMWARE)?;
    let (mut kernel, kernel_len) = open(KERNEL)?;
    let (mut initrd, initrd_len) = open(INITRD)?;
    let file = AtomicFile::create(out, 0o644)?;
    let mut w = std::io::BufWriter::new(file.file());
    write_bundle(
        &mut w,
        config,
        BundleSources {
            firmware: &mut firmware,
            firmware_len,
            kernel: &mut kernel,
            kernel_len,
            initrd: &mut initrd,
            initrd_len,
            cmdline,
            id_block,
            id_auth,
        },
    )
    .with_context(|| format!("writing {}", out.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    drop(w);
    file.commit()
}

pub fn run(a: Args) -> Result<()> {
    let Made { config } = make(&a)?;
    if a.json {
        let mut v = serde_json::to_value(&config)?;
        v["staging_dir"] = json!(a.staging_dir.display().to_string());
        v["out_bundle"] = json!(a.out_bundle.as_ref().map(|p| p.display().to_string()));
        println!("{v}");
    } else {
        println!(
            "launch {} in {}: measurement {}, policy {}, {} x {}",
            config.name,
            a.staging_dir.display(),
            config.measurement,
            config.guest_policy,
            config.vcpus,
            config.vcpu_type
        );
        if let Some(out) = &a.out_bundle {
            println!("bundle {}", out.display());
        }
    }
    eprintln!("{NO_CONFIDENTIALITY}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snpguard_protocol::bundle::{check_extracted, extract_bundle, ExtractLimits};

    /// A `convert --no-encryption` staging directory: firmware with the
    /// AmdSev footer, random kernel and initrd, a command line, the label.
    fn staging() -> Option<tempfile::TempDir> {
        let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
        let d = tempfile::Builder::new()
            .prefix("plain-guest")
            .tempdir()
            .unwrap();
        let random = |n: usize| (0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>();
        let mut fw = random(8192);
        fw.extend_from_slice(&suffix);
        std::fs::write(d.path().join(FIRMWARE), fw).unwrap();
        std::fs::write(d.path().join(KERNEL), random(50_000)).unwrap();
        std::fs::write(d.path().join(INITRD), random(80_000)).unwrap();
        std::fs::write(d.path().join(CMDLINE), "root=UUID=0f6c ro console=ttyS0").unwrap();
        std::fs::write(d.path().join(NO_ENCRYPTION), "label\n").unwrap();
        Some(d)
    }

    fn args(dir: &Path) -> Args {
        Args {
            staging_dir: dir.to_path_buf(),
            launch: LaunchShape {
                vcpus: 2,
                vcpu_type: "EPYC-v4".into(),
                allow_smt: false,
                allow_debug: false,
                allow_migrate_ma: false,
            },
            name: None,
            ovmf_hash: None,
            out_bundle: None,
            json: false,
        }
    }

    #[test]
    fn a_local_launch_is_measured_signed_and_labelled() {
        let Some(d) = staging() else { return };
        let mut a = args(d.path());
        a.launch.allow_smt = true;
        let elsewhere = tempfile::tempdir().unwrap();
        a.out_bundle = Some(elsewhere.path().join("b.tar.gz"));
        let Made { config } = make(&a).unwrap();
        // The measurement is the launch digest of exactly these files.
        let expected = launch_digest(&MeasureInput {
            ovmf: d.path().join(FIRMWARE),
            ovmf_hash: None,
            kernel: Some(d.path().join(KERNEL)),
            initrd: Some(d.path().join(INITRD)),
            cmdline: Some("root=UUID=0f6c ro console=ttyS0".into()),
            vcpus: 2,
            vcpu_type: VcpuType::EpycV4,
            guest_features: 1,
            vmm_type: VmmType::Qemu,
        })
        .unwrap();
        assert_eq!(config.measurement, expected.to_string());
        assert_eq!(config.guest_policy, "0x30000");
        assert!(config.no_encryption && config.kernel_hashes);
        // The name defaults to the directory's.
        let dir_name = d.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(config.name, dir_name);
        // The ID block vouches for that measurement and policy, signed by
        // the keys the config names.
        let block = std::fs::read(d.path().join(ID_BLOCK)).unwrap();
        let auth = std::fs::read(d.path().join(ID_AUTH)).unwrap();
        let digests = verify_id_auth(&block, &auth).unwrap();
        assert_eq!(hex::encode(digests.id_key), config.id_key_digest);
        assert_eq!(
            hex::encode(digests.author_key.unwrap()),
            config.author_key_digest
        );
        assert_eq!(&block[..48], expected.as_bytes());
        // The staging directory is now a bundle a launch accepts, and so
        // is the bundle written beside it.
        let limits = ExtractLimits::default();
        assert_eq!(check_extracted(d.path(), &limits).unwrap(), config);
        let out = tempfile::tempdir().unwrap();
        let f = File::open(elsewhere.path().join("b.tar.gz")).unwrap();
        assert_eq!(extract_bundle(f, out.path(), &limits).unwrap(), config);
        check_signed(d.path(), &config).unwrap();
        // Run again, other keys: a new ID block, the same measurement.
        let first_block = block;
        let again = make(&a).unwrap().config;
        assert_eq!(again.measurement, config.measurement);
        assert_ne!(again.id_key_digest, config.id_key_digest);
        check_signed(d.path(), &again).unwrap();
        // The first run's ID block with the second run's config: refused.
        std::fs::write(d.path().join(ID_BLOCK), &first_block).unwrap();
        let e = format!("{:#}", check_signed(d.path(), &again).unwrap_err());
        assert!(e.contains("signature") || e.contains("disagree"), "{e}");
        // A command line changed after launch-config: refused by name.
        make(&a).unwrap();
        std::fs::write(d.path().join(CMDLINE), "root=UUID=0f6c rw").unwrap();
        let cfg = check_extracted(d.path(), &limits).unwrap();
        let e = format!("{:#}", check_signed(d.path(), &cfg).unwrap_err());
        assert!(e.contains("measure to"), "{e}");
    }

    #[test]
    fn the_staged_command_line_is_exactly_what_was_measured() {
        let Some(d) = staging() else { return };
        // An editor's trailing newline is not measured, and not left
        // behind for a launch from the directory to pass to QEMU.
        std::fs::write(d.path().join(CMDLINE), "root=UUID=0f6c ro console=ttyS0\n").unwrap();
        let config = make(&args(d.path())).unwrap().config;
        assert_eq!(
            std::fs::read(d.path().join(CMDLINE)).unwrap(),
            b"root=UUID=0f6c ro console=ttyS0"
        );
        check_signed(d.path(), &config).unwrap();
    }

    #[test]
    fn launch_config_refuses_what_it_cannot_make_a_local_launch_of() {
        let Some(d) = staging() else { return };
        let err = |a: &Args| format!("{:#}", make(a).unwrap_err());
        let a = args(d.path());
        // An encrypted guest's staging directory belongs to the server.
        std::fs::write(d.path().join(SEALED_VMK), b"sealed").unwrap();
        let e = err(&a);
        assert!(e.contains("snpguardctl register"), "{e}");
        std::fs::remove_file(d.path().join(SEALED_VMK)).unwrap();
        // Only convert --no-encryption's directories.
        std::fs::remove_file(d.path().join(NO_ENCRYPTION)).unwrap();
        assert!(err(&a).contains("was not written by `snpguardctl convert --no-encryption`"));
        std::fs::write(d.path().join(NO_ENCRYPTION), "label\n").unwrap();
        // Bad inputs, each named.
        let mut bad = args(d.path());
        bad.launch.vcpu_type = "Pentium".into();
        assert!(err(&bad).contains("--vcpu-type Pentium"));
        let mut bad = args(d.path());
        bad.launch.vcpus = 0;
        assert!(err(&bad).contains("vCPU"), "{}", err(&bad));
        let mut bad = args(d.path());
        bad.name = Some("a b".into());
        assert!(err(&bad).contains("--name"), "{}", err(&bad));
        let mut bad = args(d.path());
        bad.out_bundle = Some(d.path().join(KERNEL));
        assert!(
            err(&bad).contains("inside the staging directory"),
            "{}",
            err(&bad)
        );
        std::fs::remove_file(d.path().join(INITRD)).unwrap();
        assert!(err(&a).contains("initrd is missing"), "{}", err(&a));
        // Nothing was written by the refusals.
        for m in [LAUNCH_CONFIG, ID_BLOCK, ID_AUTH] {
            assert!(!d.path().join(m).exists(), "{m}");
        }
    }
}
