//! `snpguardctl id-block`: sign an ID block and ID authentication
//! information for a launch digest, as QEMU's `sev-snp-guest` object takes
//! them (id-block, id-auth, author-key-enabled=on). Files are raw binary
//! (96 and 4096 bytes); QEMU wants them base64-encoded on its command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use p384::ecdsa::SigningKey;
use snpguard::idblock::{key_digest, signing_key_from_pem, verify_id_auth, IdAuth, IdBlock};
use snpguard::measure::LaunchDigest;
use zeroize::Zeroizing;

use crate::measure::parse_u64;
use crate::output::write_atomic;

/// Largest PEM key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Arguments of `snpguardctl id-block`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Launch digest the ID block vouches for (96 hex digits)
    #[arg(long, value_name = "HEX")]
    measurement: LaunchDigest,
    /// ID key: P-384 private key, PEM (SEC1 or PKCS#8)
    #[arg(long, value_name = "PEM")]
    id_key: PathBuf,
    /// Author key: P-384 private key, PEM; endorses the ID key
    #[arg(long, value_name = "PEM")]
    author_key: PathBuf,
    /// Family ID (32 hex digits)
    #[arg(long, value_name = "HEX", value_parser = parse_id, default_value = "00000000000000000000000000000000")]
    family_id: [u8; 16],
    /// Image ID (32 hex digits)
    #[arg(long, value_name = "HEX", value_parser = parse_id, default_value = "00000000000000000000000000000000")]
    image_id: [u8; 16],
    /// Guest security version number
    #[arg(long, value_name = "N", default_value_t = 0)]
    guest_svn: u32,
    /// Guest policy the guest will be launched with
    #[arg(long, value_name = "0xHEX", value_parser = parse_u64, default_value = "0x30000")]
    policy: u64,
    /// Where to write the ID block (96 bytes)
    #[arg(long, value_name = "FILE")]
    out_id_block: PathBuf,
    /// Where to write the ID authentication information (4096 bytes)
    #[arg(long, value_name = "FILE")]
    out_id_auth: PathBuf,
}

fn parse_id(s: &str) -> Result<[u8; 16], String> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| format!("{s:?} is not 32 hexadecimal digits (16 bytes)"))?;
    Ok(out)
}

fn load_key(path: &Path) -> Result<SigningKey> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        meta.is_file() && meta.len() <= MAX_KEY_FILE,
        "{} is not a PEM key file (not a regular file or larger than {MAX_KEY_FILE} bytes)",
        path.display()
    );
    let pem = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    signing_key_from_pem(&pem).with_context(|| format!("loading {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let block = IdBlock {
        launch_digest: args.measurement,
        family_id: args.family_id,
        image_id: args.image_id,
        guest_svn: args.guest_svn,
        policy: args.policy,
    };
    let id_key = load_key(&args.id_key)?;
    let author_key = load_key(&args.author_key)?;
    let auth = IdAuth::sign(&block, &id_key, Some(&author_key)).context("signing the ID block")?;
    let block_bytes = block.to_bytes();
    // Check what is about to be handed to the firmware.
    let digests =
        verify_id_auth(&block_bytes, auth.as_bytes()).context("verifying the signed ID block")?;
    anyhow::ensure!(
        digests.id_key == key_digest(id_key.verifying_key()),
        "signed ID key does not match the ID key"
    );
    write_atomic(&args.out_id_block, &block_bytes, 0o644)?;
    write_atomic(&args.out_id_auth, auth.as_bytes(), 0o644)?;
    println!("id-key-digest: {}", hex::encode(digests.id_key));
    let author_digest = digests
        .author_key
        .context("signed ID auth info lacks the author key")?;
    println!("author-key-digest: {}", hex::encode(author_digest));
    Ok(())
}
