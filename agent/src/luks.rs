//! The LUKS2 header of the root volume, read and checked against the
//! parameters pinned in the (measured) agent configuration. The header is
//! untrusted: it is only used to confirm that the pinned parameters
//! describe this volume, and to check the released key against its
//! PBKDF2 digest. The agent never writes it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::config::Luks;

/// Size of the binary part of a header.
const BIN_SIZE: usize = 4096;
/// The header sizes (binary + JSON) LUKS2 allows; also the offsets at
/// which a secondary header may sit.
const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
/// Most PBKDF2 iterations of the volume-key digest accepted (cryptsetup
/// picks a few thousand to a few hundred thousand).
pub const MAX_DIGEST_ITERATIONS: u32 = 10_000_000;
/// Fewest bytes of the volume-key digest accepted: a shorter one lets
/// a wrong key pass the check by chance (cryptsetup writes 32).
pub const MIN_DIGEST_BYTES: usize = 32;

/// A header or key that does not match the pinned configuration.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("reading the LUKS2 header of {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("LUKS2 header refused: {field}: {reason}")]
    Refused { field: &'static str, reason: String },
    #[error("the released key does not open this volume (it does not match the header's digest)")]
    WrongKey,
    #[error(
        "LUKS2 header refused: digests.digest: digest {id} has {bytes} bytes, fewer than \
         {MIN_DIGEST_BYTES}: it cannot tell the right volume key from a wrong one; \
         the header was tampered with or not written by cryptsetup"
    )]
    DigestTooShort { id: String, bytes: usize },
}

fn refused(field: &'static str, reason: impl Into<String>) -> LuksError {
    LuksError::Refused {
        field,
        reason: reason.into(),
    }
}

/// The checked header: what the pinned configuration said, confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Whether the primary header's checksum failed and the secondary
    /// header was used.
    pub used_secondary: bool,
    digest: KeyDigest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyDigest {
    hash: DigestHash,
    iterations: u32,
    salt: Vec<u8>,
    digest: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestHash {
    Sha256,
    Sha512,
}

#[derive(Deserialize)]
struct Json {
    segments: std::collections::BTreeMap<String, Segment>,
    digests: std::collections::BTreeMap<String, JsonDigest>,
    #[serde(default)]
    config: JsonConfig,
}

#[derive(Deserialize, Default)]
struct JsonConfig {
    #[serde(default)]
    requirements: Option<Requirements>,
}

#[derive(Deserialize, Default)]
struct Requirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

#[derive(Deserialize)]
struct Segment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default)]
    sector_size: Option<u32>,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
struct JsonDigest {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    segments: Vec<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    iterations: Option<u32>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated string field of the binary header.
fn cstr(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// One binary header + JSON area whose checksum verified.
struct RawHeader {
    bytes: Vec<u8>,
}

/// Reads the header at `offset` (`magic` expected) and verifies its
/// checksum. `Ok(None)`: no header of that kind there, or checksum bad.
fn read_one(
    f: &mut File,
    path: &str,
    offset: u64,
    magic: &[u8; 6],
) -> Result<Result<RawHeader, LuksError>, LuksError> {
    let io = |source| LuksError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bin = vec![0u8; BIN_SIZE];
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    if let Err(e) = f.read_exact(&mut bin) {
        return Ok(Err(refused("magic", format!("no header at {offset}: {e}"))));
    }
    if &bin[..6] != magic {
        return Ok(Err(refused(
            "magic",
            format!("not a LUKS header at offset {offset}"),
        )));
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Ok(Err(refused(
            "version",
            format!("{version}, only LUKS2 is supported"),
        )));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return Ok(Err(refused(
            "hdr_size",
            format!("{hdr_size} is not a LUKS2 header size"),
        )));
    }
    if be64(&bin, 256) != offset {
        return Ok(Err(refused(
            "hdr_offset",
            format!("{} but the header is at {offset}", be64(&bin, 256)),
        )));
    }
    if cstr(&bin[72..104]) != b"sha256" {
        return Ok(Err(refused(
            "checksum_alg",
            format!(
                "{:?}, only sha256 is supported",
                String::from_utf8_lossy(cstr(&bin[72..104]))
            ),
        )));
    }
    let mut bytes = bin;
    bytes.resize(hdr_size as usize, 0);
    f.read_exact(&mut bytes[BIN_SIZE..]).map_err(io)?;
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&bytes[448..480]);
    let mut zeroed = bytes.clone();
    zeroed[448..512].fill(0);
    if Sha256::digest(&zeroed)[..] != stored[..] {
        return Ok(Err(refused(
            "checksum",
            format!("the header at offset {offset} does not match its checksum"),
        )));
    }
    Ok(Ok(RawHeader { bytes }))
}

/// Reads the LUKS2 header of `path` and checks it against `pin`: magic,
/// version, checksum (falling back to the secondary header only when the
/// primary's checksum fails), UUID, and the data segment (type crypt,
/// offset, cipher, sector size, size dynamic).
pub fn read_header(path: &Path, pin: &Luks) -> Result<Header, LuksError> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|source| LuksError::Io {
        path: name.clone(),
        source,
    })?;
    let (raw, used_secondary) = match read_one(&mut f, &name, 0, MAGIC_PRIMARY)? {
        Ok(h) => (h, false),
        Err(LuksError::Refused {
            field: "checksum",
            reason,
        }) => {
            let mut found = None;
            for off in HDR_SIZES {
                if let Ok(h) = read_one(&mut f, &name, off, MAGIC_SECONDARY)? {
                    found = Some(h);
                    break;
                }
            }
            match found {
                Some(h) => (h, true),
                None => {
                    return Err(refused(
                        "checksum",
                        format!("{reason}, and no valid secondary header was found"),
                    ))
                }
            }
        }
        Err(e) => return Err(e),
    };
    check(&raw.bytes, pin).map(|digest| Header {
        used_secondary,
        digest,
    })
}

fn check(bytes: &[u8], pin: &Luks) -> Result<KeyDigest, LuksError> {
    let uuid = String::from_utf8_lossy(cstr(&bytes[168..208])).into_owned();
    if !uuid.eq_ignore_ascii_case(&pin.uuid) {
        return Err(refused(
            "uuid",
            format!("{uuid:?}, the configuration pins {:?}", pin.uuid),
        ));
    }
    let json = cstr(&bytes[BIN_SIZE..]);
    let json: Json = serde_json::from_slice(json).map_err(|e| refused("json", e.to_string()))?;
    if let Some(req) = &json.config.requirements {
        if !req.mandatory.is_empty() {
            return Err(refused(
                "config.requirements",
                format!(
                    "mandatory requirements {:?} are not supported",
                    req.mandatory
                ),
            ));
        }
    }
    if json.segments.len() != 1 {
        return Err(refused(
            "segments",
            format!("{} segments, expected exactly one", json.segments.len()),
        ));
    }
    let seg = json
        .segments
        .get("0")
        .ok_or_else(|| refused("segments", "no segment 0"))?;
    if seg.kind != "crypt" {
        return Err(refused(
            "segments.0.type",
            format!("{:?}, expected crypt", seg.kind),
        ));
    }
    if seg.offset != pin.offset.to_string() {
        return Err(refused(
            "segments.0.offset",
            format!("{}, the configuration pins {}", seg.offset, pin.offset),
        ));
    }
    if seg.encryption.as_deref() != Some(pin.cipher.as_str()) {
        return Err(refused(
            "segments.0.encryption",
            format!(
                "{:?}, the configuration pins {:?}",
                seg.encryption.as_deref().unwrap_or(""),
                pin.cipher
            ),
        ));
    }
    if seg.sector_size != Some(pin.sector_size) {
        return Err(refused(
            "segments.0.sector_size",
            format!(
                "{:?}, the configuration pins {}",
                seg.sector_size, pin.sector_size
            ),
        ));
    }
    if seg.size != "dynamic" {
        return Err(refused(
            "segments.0.size",
            format!("{:?}, expected dynamic", seg.size),
        ));
    }
    if !seg.flags.is_empty() {
        return Err(refused(
            "segments.0.flags",
            format!(
                "{:?} (e.g. a reencryption in progress) are not supported",
                seg.flags
            ),
        ));
    }
    let (id, d) = json
        .digests
        .iter()
        .find(|(_, d)| d.segments.iter().any(|s| s == "0"))
        .ok_or_else(|| refused("digests", "no digest covers segment 0"))?;
    if d.kind != "pbkdf2" {
        return Err(refused(
            "digests.type",
            format!("digest {id}: {:?}, expected pbkdf2", d.kind),
        ));
    }
    let hash = match d.hash.as_deref() {
        Some("sha256") => DigestHash::Sha256,
        Some("sha512") => DigestHash::Sha512,
        other => {
            return Err(refused(
                "digests.hash",
                format!("digest {id}: {other:?}, expected sha256 or sha512"),
            ))
        }
    };
    let iterations = d.iterations.unwrap_or(0);
    if !(1..=MAX_DIGEST_ITERATIONS).contains(&iterations) {
        return Err(refused(
            "digests.iterations",
            format!("digest {id}: {iterations}, must be 1 to {MAX_DIGEST_ITERATIONS}"),
        ));
    }
    let b64 = |field: &'static str, v: &Option<String>| {
        v.as_deref()
            .and_then(|s| snpguard_protocol::attest::unb64(s, 256))
            .filter(|v| !v.is_empty())
            .ok_or_else(|| refused(field, format!("digest {id}: missing or not base64")))
    };
    let salt = b64("digests.salt", &d.salt)?;
    let digest = b64("digests.digest", &d.digest)?;
    if digest.len() > 64 {
        return Err(refused("digests.digest", format!("digest {id}: too long")));
    }
    if digest.len() < MIN_DIGEST_BYTES {
        return Err(LuksError::DigestTooShort {
            id: id.clone(),
            bytes: digest.len(),
        });
    }
    Ok(KeyDigest {
        hash,
        iterations,
        salt,
        digest,
    })
}

impl Header {
    /// Checks `key` against the volume-key digest of segment 0.
    pub fn check_key(&self, key: &[u8]) -> Result<(), LuksError> {
        let d = &self.digest;
        let mut out = Zeroizing::new(vec![0u8; d.digest.len()]);
        match d.hash {
            DigestHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(key, &d.salt, d.iterations, &mut out)
            }
            DigestHash::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(key, &d.salt, d.iterations, &mut out)
            }
        }
        // Constant time: how much of a wrong key matched is never timed.
        if bool::from(out[..].ct_eq(&d.digest[..])) {
            Ok(())
        } else {
            Err(LuksError::WrongKey)
        }
    }
}

pub mod keyslot;

#[cfg(test)]
mod tests;
