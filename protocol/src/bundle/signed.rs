//! Checking that an extracted bundle is the launch its
//! `launch-config.json` describes: the members measure to its
//! measurement, and the ID block and ID auth block verify and carry that
//! measurement, its policy, its family and image IDs and its key digests.
//! `snpguardctl embed --in-staging` checks a local launch this way, and
//! the guest agent checks the next launch it writes into its own
//! LAUNCH_ARTIFACTS partition: a directory edited or half-rewritten after
//! it was signed is refused before anything boots a launch the firmware
//! would reject.

use std::path::{Path, PathBuf};

use snpguard::idblock::{verify_id_auth, IdBlock, IdBlockError};
use snpguard::measure::{launch_digest, MeasureError, MeasureInput, VmmType};

use super::{LaunchConfig, CMDLINE, FIRMWARE, ID_AUTH, ID_BLOCK, INITRD, KERNEL, LAUNCH_CONFIG};

/// Why a directory is not the launch its configuration describes; each
/// names its rule.
#[derive(Debug, thiserror::Error)]
pub enum SignedLaunchError {
    /// A member could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The member's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The command line is not UTF-8.
    #[error("the command line is not UTF-8")]
    CmdlineNotUtf8,
    /// A configuration field the measurement needs does not parse.
    #[error("{LAUNCH_CONFIG}: {0}")]
    Config(String),
    /// The members could not be measured.
    #[error("measuring the members: {0}")]
    Measure(#[from] MeasureError),
    /// The members measure to something else than the configuration says.
    #[error(
        "the members measure to {measured}, not to the measurement {expected} in {LAUNCH_CONFIG}"
    )]
    Measurement {
        /// What the members measure to.
        measured: String,
        /// The configuration's measurement.
        expected: String,
    },
    /// The ID block or its authentication block does not verify.
    #[error("the ID block's signature: {0}")]
    Signature(IdBlockError),
    /// The ID block does not parse.
    #[error("the ID block: {0}")]
    IdBlock(IdBlockError),
    /// The ID block and the configuration name different things.
    #[error("{ID_BLOCK} and {LAUNCH_CONFIG} disagree on the {0}")]
    Disagree(&'static str),
}

/// Checks that the members in `dir` are the launch `config` describes
/// (see the module documentation). Reads the members by name; the caller
/// has checked them as an extracted bundle first
/// ([`super::check_extracted`]: regular files, bounded sizes).
pub fn check_signed(dir: &Path, config: &LaunchConfig) -> Result<(), SignedLaunchError> {
    let read = |m: &str| {
        let path = dir.join(m);
        std::fs::read(&path).map_err(|source| SignedLaunchError::Read { path, source })
    };
    let cmdline =
        String::from_utf8(read(CMDLINE)?).map_err(|_| SignedLaunchError::CmdlineNotUtf8)?;
    let features = u64::from_str_radix(config.guest_features.trim_start_matches("0x"), 16)
        .map_err(|e| SignedLaunchError::Config(format!("guest_features: {e}")))?;
    let vcpu_type = config
        .vcpu_type
        .parse()
        .map_err(|e| SignedLaunchError::Config(format!("vcpu_type {}: {e}", config.vcpu_type)))?;
    let measured = launch_digest(&MeasureInput {
        ovmf: dir.join(FIRMWARE),
        ovmf_hash: None,
        kernel: Some(dir.join(KERNEL)),
        initrd: Some(dir.join(INITRD)),
        cmdline: Some(cmdline),
        vcpus: config.vcpus,
        vcpu_type,
        guest_features: features,
        vmm_type: VmmType::Qemu,
    })?;
    if measured.to_string() != config.measurement {
        return Err(SignedLaunchError::Measurement {
            measured: measured.to_string(),
            expected: config.measurement.clone(),
        });
    }
    let (block, auth) = (read(ID_BLOCK)?, read(ID_AUTH)?);
    let digests = verify_id_auth(&block, &auth).map_err(SignedLaunchError::Signature)?;
    let parsed = IdBlock::from_bytes(&block).map_err(SignedLaunchError::IdBlock)?;
    if parsed.launch_digest.to_string() != config.measurement {
        return Err(SignedLaunchError::Disagree("measurement"));
    }
    if format!("{:#x}", parsed.policy) != config.guest_policy {
        return Err(SignedLaunchError::Disagree("guest policy"));
    }
    if hex::encode(parsed.family_id) != config.family_id
        || hex::encode(parsed.image_id) != config.image_id
    {
        return Err(SignedLaunchError::Disagree("family or image ID"));
    }
    if hex::encode(digests.id_key) != config.id_key_digest
        || digests.author_key.map(hex::encode).as_deref() != Some(config.author_key_digest.as_str())
    {
        return Err(SignedLaunchError::Disagree("signing keys"));
    }
    Ok(())
}
