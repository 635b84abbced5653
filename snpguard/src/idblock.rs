//! ID blocks and ID authentication information (SNP ABI, SNP_LAUNCH_FINISH),
//! byte-compatible with `snp-create-id-block` from sev-snp-measure.
//!
//! The ID block (96 bytes) names the expected launch digest, family and
//! image IDs, guest SVN and policy. The ID authentication information
//! (4096 bytes) carries the ID block's signature by the ID key, the ID
//! public key, the ID key's signature by the author key, and the author
//! public key. Signatures are ECDSA P-384 with SHA-384, r and s as 72-byte
//! little-endian numbers; public keys are `u32 curve (2 = P-384) ‖ qx ‖ qy`
//! with 72-byte little-endian coordinates, 1028 bytes in all. The firmware
//! reports SHA-384 of those 1028 bytes as ID_KEY_DIGEST / AUTHOR_KEY_DIGEST.

use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint};
use p384::pkcs8::DecodePrivateKey;
use p384::{AffinePoint, FieldBytes, NistP384, SecretKey};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use crate::measure::LaunchDigest;

/// Size of an ID block.
pub const ID_BLOCK_SIZE: usize = 96;
/// Size of the ID authentication information structure.
pub const ID_AUTH_SIZE: usize = 4096;
/// Size of an SNP public key structure.
pub const PUBLIC_KEY_SIZE: usize = 1028;
/// Guest policy `sev-snp-measure` uses: SMT allowed, bit 17 (must be one).
pub const DEFAULT_POLICY: u64 = 0x30000;
/// The only ID block version.
pub const ID_BLOCK_VERSION: u32 = 1;

const ALGO_ECDSA_P384_SHA384: u32 = 1;
const CURVE_P384: u32 = 2;
/// Size of an SNP signature structure (r and s, 72-byte little-endian
/// each, then reserved zeros).
pub const SIGNATURE_SIZE: usize = 512;
const COORD: usize = 72;

// Offsets in the ID authentication information structure.
const ID_KEY_ALGO: usize = 0x000;
const AUTHOR_KEY_ALGO: usize = 0x004;
const ID_BLOCK_SIG: usize = 0x040;
const ID_KEY: usize = 0x240;
const ID_KEY_SIG: usize = 0x680;
const AUTHOR_KEY: usize = 0x880;

/// Why an ID block or its authentication could not be made or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdBlockError {
    /// Not a P-384 private key in PEM (SEC1 or unencrypted PKCS#8).
    #[error(
        "not a P-384 private key in PEM (SEC1 \"EC PRIVATE KEY\" or unencrypted PKCS#8); \
         create one with: openssl ecparam -genkey -name secp384r1 -noout"
    )]
    BadPrivateKey,
    /// An encrypted PKCS#8 key.
    #[error("encrypted private keys are not supported; decrypt it with `openssl pkey`")]
    EncryptedPrivateKey,
    /// A policy with reserved bits wrong.
    #[error("guest policy {0:#x} is invalid: bit 17 must be set and bits 63:26 clear")]
    InvalidPolicy(u64),
    /// A buffer of the wrong size.
    #[error("{what} is {got} bytes, expected {expected}")]
    WrongSize {
        /// Which structure.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The required size.
        expected: usize,
    },
    /// An ID block version other than 1.
    #[error("ID block version {0} is not supported (expected 1)")]
    UnsupportedVersion(u32),
    /// A key or signature algorithm other than ECDSA P-384 with SHA-384.
    #[error("{which} algorithm {algo} is not ECDSA P-384/SHA-384 (1)")]
    UnsupportedAlgorithm {
        /// Which field.
        which: &'static str,
        /// Its value.
        algo: u32,
    },
    /// A public key structure that is not a valid P-384 point.
    #[error("the {0} public key is not a valid P-384 key")]
    BadPublicKey(&'static str),
    /// A signature structure that does not decode.
    #[error("the {0} signature is malformed")]
    MalformedSignature(&'static str),
    /// The ID key's signature over the ID block does not verify.
    #[error("the ID block signature does not verify with the ID key")]
    IdBlockSignature,
    /// The author key's signature over the ID key does not verify.
    #[error("the ID key signature does not verify with the author key")]
    IdKeySignature,
    /// A signature (other than the ID block's own two) that does not
    /// verify with its key.
    #[error("the {0} signature does not verify")]
    SignatureMismatch(&'static str),
    /// Non-zero bytes where the ABI reserves zeros.
    #[error("reserved bytes at offset {0:#x} of the ID authentication information are not zero")]
    ReservedNotZero(usize),
}

/// An ID block (SNP ABI table "ID_BLOCK Structure").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdBlock {
    /// The expected launch digest.
    pub launch_digest: LaunchDigest,
    /// Family ID, chosen by the guest owner.
    pub family_id: [u8; 16],
    /// Image ID, chosen by the guest owner.
    pub image_id: [u8; 16],
    /// Guest security version number.
    pub guest_svn: u32,
    /// Guest policy; must equal the policy the guest is launched with.
    pub policy: u64,
}

impl IdBlock {
    /// An ID block with `sev-snp-measure`'s defaults: zero IDs and SVN,
    /// policy [`DEFAULT_POLICY`].
    pub fn new(launch_digest: LaunchDigest) -> Self {
        IdBlock {
            launch_digest,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            policy: DEFAULT_POLICY,
        }
    }

    /// Checks the policy's fixed bits (bit 17 set, bits 63:26 clear).
    pub fn validate(&self) -> Result<(), IdBlockError> {
        if self.policy & (1 << 17) == 0 || self.policy >> 26 != 0 {
            return Err(IdBlockError::InvalidPolicy(self.policy));
        }
        Ok(())
    }

    /// The 96-byte structure.
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_SIZE] {
        let mut b = [0u8; ID_BLOCK_SIZE];
        b[..48].copy_from_slice(self.launch_digest.as_bytes());
        b[48..64].copy_from_slice(&self.family_id);
        b[64..80].copy_from_slice(&self.image_id);
        b[80..84].copy_from_slice(&ID_BLOCK_VERSION.to_le_bytes());
        b[84..88].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[88..96].copy_from_slice(&self.policy.to_le_bytes());
        b
    }

    /// Decodes a 96-byte structure.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdBlockError> {
        let b: &[u8; ID_BLOCK_SIZE] = b.try_into().map_err(|_| IdBlockError::WrongSize {
            what: "ID block",
            got: b.len(),
            expected: ID_BLOCK_SIZE,
        })?;
        let version = u32::from_le_bytes(arr(&b[80..84]));
        if version != ID_BLOCK_VERSION {
            return Err(IdBlockError::UnsupportedVersion(version));
        }
        Ok(IdBlock {
            launch_digest: LaunchDigest::new(arr(&b[..48])),
            family_id: arr(&b[48..64]),
            image_id: arr(&b[64..80]),
            guest_svn: u32::from_le_bytes(arr(&b[84..88])),
            policy: u64::from_le_bytes(arr(&b[88..96])),
        })
    }
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// Loads a P-384 private key from PEM: SEC1 (`EC PRIVATE KEY`, as
/// `openssl ecparam -genkey` writes it, with or without the leading
/// `EC PARAMETERS` block) or unencrypted PKCS#8 (`PRIVATE KEY`). The
/// returned key zeroizes itself on drop.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, IdBlockError> {
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(IdBlockError::EncryptedPrivateKey);
    }
    let secret = if let Some(block) = pem_block(pem, "EC PRIVATE KEY") {
        if block.contains("Proc-Type:") {
            return Err(IdBlockError::EncryptedPrivateKey);
        }
        SecretKey::from_sec1_pem(&block).map_err(|_| ())
    } else if let Some(block) = pem_block(pem, "PRIVATE KEY") {
        SecretKey::from_pkcs8_pem(&block).map_err(|_| ())
    } else {
        return Err(IdBlockError::BadPrivateKey);
    };
    secret
        .map(SigningKey::from)
        .map_err(|_| IdBlockError::BadPrivateKey)
}

/// The first `label` block of a PEM file (other blocks, such as
/// `EC PARAMETERS`, are skipped), in a buffer zeroized on drop.
fn pem_block(pem: &str, label: &str) -> Option<Zeroizing<String>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(Zeroizing::new(pem[start..stop].to_owned()))
}

/// The SNP public key structure of a P-384 key (1028 bytes).
pub fn public_key_bytes(key: &VerifyingKey) -> [u8; PUBLIC_KEY_SIZE] {
    let mut b = [0u8; PUBLIC_KEY_SIZE];
    b[..4].copy_from_slice(&CURVE_P384.to_le_bytes());
    let point = key.to_encoded_point(false);
    // An uncompressed point of a valid key always has both coordinates.
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        put_le(&mut b[4..4 + COORD], x);
        put_le(&mut b[4 + COORD..4 + 2 * COORD], y);
    }
    b
}

/// The key digest the firmware reports for a key (ID_KEY_DIGEST,
/// AUTHOR_KEY_DIGEST): SHA-384 of its public key structure.
pub fn key_digest(key: &VerifyingKey) -> [u8; 48] {
    Sha384::digest(public_key_bytes(key)).into()
}

/// Writes a big-endian number as little-endian into a wider field.
fn put_le(dst: &mut [u8], be: &[u8]) {
    for (d, s) in dst.iter_mut().zip(be.iter().rev()) {
        *d = *s;
    }
}

/// A little-endian field to a big-endian 48-byte number; `None` when the
/// high bytes beyond 48 are not zero.
fn get_le(src: &[u8]) -> Option<FieldBytes> {
    if src[48..].iter().any(|&b| b != 0) {
        return None;
    }
    let mut out = FieldBytes::default();
    for (d, s) in out.iter_mut().zip(src[..48].iter().rev()) {
        *d = *s;
    }
    Some(out)
}

fn signature_bytes(sig: &Signature) -> [u8; SIGNATURE_SIZE] {
    let mut b = [0u8; SIGNATURE_SIZE];
    let (r, s) = sig.split_bytes();
    put_le(&mut b[..COORD], &r);
    put_le(&mut b[COORD..2 * COORD], &s);
    b
}

fn parse_signature(b: &[u8], which: &'static str) -> Result<Signature, IdBlockError> {
    let bad = || IdBlockError::MalformedSignature(which);
    let r = get_le(&b[..COORD]).ok_or_else(bad)?;
    let s = get_le(&b[COORD..2 * COORD]).ok_or_else(bad)?;
    Signature::from_scalars(r, s).map_err(|_| bad())
}

fn parse_public_key(b: &[u8], which: &'static str) -> Result<VerifyingKey, IdBlockError> {
    let bad = || IdBlockError::BadPublicKey(which);
    if u32::from_le_bytes(arr(&b[..4])) != CURVE_P384 {
        return Err(bad());
    }
    let x = get_le(&b[4..4 + COORD]).ok_or_else(bad)?;
    let y = get_le(&b[4 + COORD..4 + 2 * COORD]).ok_or_else(bad)?;
    let point = EncodedPoint::<NistP384>::from_affine_coordinates(&x, &y, false);
    let affine =
        Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&point)).ok_or_else(bad)?;
    VerifyingKey::from_affine(affine).map_err(|_| bad())
}

/// Signs `msg` with `key` (ECDSA P-384 over SHA-384) into an SNP
/// signature structure, the layout the firmware uses for ID blocks.
pub fn sign_snp(key: &SigningKey, msg: &[u8]) -> [u8; SIGNATURE_SIZE] {
    let sig: Signature = key.sign(msg);
    signature_bytes(&sig)
}

/// Decodes an SNP public key structure (exactly [`PUBLIC_KEY_SIZE`] bytes,
/// a valid P-384 point, reserved bytes zero).
pub fn public_key_from_bytes(b: &[u8], which: &'static str) -> Result<VerifyingKey, IdBlockError> {
    if b.len() != PUBLIC_KEY_SIZE {
        return Err(IdBlockError::WrongSize {
            what: which,
            got: b.len(),
            expected: PUBLIC_KEY_SIZE,
        });
    }
    if b[4 + 2 * COORD..].iter().any(|&x| x != 0) {
        return Err(IdBlockError::BadPublicKey(which));
    }
    parse_public_key(b, which)
}

/// Checks an SNP signature structure (exactly [`SIGNATURE_SIZE`] bytes,
/// reserved bytes zero) over `msg` with `key`.
pub fn verify_snp(
    key: &VerifyingKey,
    msg: &[u8],
    sig: &[u8],
    which: &'static str,
) -> Result<(), IdBlockError> {
    if sig.len() != SIGNATURE_SIZE {
        return Err(IdBlockError::WrongSize {
            what: which,
            got: sig.len(),
            expected: SIGNATURE_SIZE,
        });
    }
    if sig[2 * COORD..].iter().any(|&x| x != 0) {
        return Err(IdBlockError::MalformedSignature(which));
    }
    let sig = parse_signature(sig, which)?;
    key.verify(msg, &sig)
        .map_err(|_| IdBlockError::SignatureMismatch(which))
}

/// ID authentication information: the signed proof that the holder of an
/// ID key (endorsed by an author key) vouches for an ID block.
#[derive(Clone, PartialEq, Eq)]
pub struct IdAuth {
    bytes: Box<[u8; ID_AUTH_SIZE]>,
}

impl std::fmt::Debug for IdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdAuth").finish_non_exhaustive()
    }
}

impl IdAuth {
    /// Signs an ID block with the ID key and, when given, endorses the ID
    /// key with the author key (`author-key-enabled=on` in QEMU).
    pub fn sign(
        block: &IdBlock,
        id_key: &SigningKey,
        author_key: Option<&SigningKey>,
    ) -> Result<Self, IdBlockError> {
        block.validate()?;
        let mut b = Box::new([0u8; ID_AUTH_SIZE]);
        b[ID_KEY_ALGO..ID_KEY_ALGO + 4].copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        let id_block_sig: Signature = id_key.sign(&block.to_bytes());
        b[ID_BLOCK_SIG..ID_BLOCK_SIG + SIGNATURE_SIZE]
            .copy_from_slice(&signature_bytes(&id_block_sig));
        let id_pub = public_key_bytes(id_key.verifying_key());
        b[ID_KEY..ID_KEY + PUBLIC_KEY_SIZE].copy_from_slice(&id_pub);
        if let Some(author) = author_key {
            b[AUTHOR_KEY_ALGO..AUTHOR_KEY_ALGO + 4]
                .copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
            let id_key_sig: Signature = author.sign(&id_pub);
            b[ID_KEY_SIG..ID_KEY_SIG + SIGNATURE_SIZE]
                .copy_from_slice(&signature_bytes(&id_key_sig));
            b[AUTHOR_KEY..AUTHOR_KEY + PUBLIC_KEY_SIZE]
                .copy_from_slice(&public_key_bytes(author.verifying_key()));
        }
        Ok(IdAuth { bytes: b })
    }

    /// Wraps a 4096-byte structure (checked by [`verify_id_auth`]).
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdBlockError> {
        let bytes: [u8; ID_AUTH_SIZE] = b.try_into().map_err(|_| IdBlockError::WrongSize {
            what: "ID authentication information",
            got: b.len(),
            expected: ID_AUTH_SIZE,
        })?;
        Ok(IdAuth {
            bytes: Box::new(bytes),
        })
    }

    /// The 4096-byte structure.
    pub fn as_bytes(&self) -> &[u8; ID_AUTH_SIZE] {
        &self.bytes
    }
}

/// Key digests a report of a guest launched with a verified ID block
/// carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdKeyDigests {
    /// ID_KEY_DIGEST.
    pub id_key: [u8; 48],
    /// AUTHOR_KEY_DIGEST; `None` when no author key is present.
    pub author_key: Option<[u8; 48]>,
}

/// Checks an ID block and its authentication information as the firmware
/// does at SNP_LAUNCH_FINISH: algorithms, reserved fields, the ID key's
/// signature over the ID block and, when an author key is present
/// (author algorithm non-zero), its signature over the ID key. Returns
/// the key digests the guest's reports will carry.
pub fn verify_id_auth(id_block: &[u8], auth: &[u8]) -> Result<IdKeyDigests, IdBlockError> {
    IdBlock::from_bytes(id_block)?;
    let auth = IdAuth::from_bytes(auth)?;
    let b = auth.as_bytes();
    let algo = |at: usize| u32::from_le_bytes(arr(&b[at..at + 4]));
    let id_algo = algo(ID_KEY_ALGO);
    if id_algo != ALGO_ECDSA_P384_SHA384 {
        return Err(IdBlockError::UnsupportedAlgorithm {
            which: "ID key",
            algo: id_algo,
        });
    }
    let author_algo = algo(AUTHOR_KEY_ALGO);
    let with_author = match author_algo {
        0 => false,
        ALGO_ECDSA_P384_SHA384 => true,
        other => {
            return Err(IdBlockError::UnsupportedAlgorithm {
                which: "author key",
                algo: other,
            })
        }
    };
    // Reserved: 0x008..0x040, 0x644..0x680, 0xC84.., and the tails of signatures
    // and keys; checked field by field so tampering anywhere is caught.
    let reserved = [
        (0x008, 0x040),
        (ID_BLOCK_SIG + 2 * COORD, ID_KEY),
        (ID_KEY + 4 + 2 * COORD, ID_KEY + PUBLIC_KEY_SIZE),
        (ID_KEY + PUBLIC_KEY_SIZE, ID_KEY_SIG),
        (ID_KEY_SIG + 2 * COORD, AUTHOR_KEY),
        (AUTHOR_KEY + 4 + 2 * COORD, AUTHOR_KEY + PUBLIC_KEY_SIZE),
        (AUTHOR_KEY + PUBLIC_KEY_SIZE, ID_AUTH_SIZE),
    ];
    for (start, end) in reserved {
        if let Some(pos) = b[start..end].iter().position(|&x| x != 0) {
            return Err(IdBlockError::ReservedNotZero(start + pos));
        }
    }

    let id_pub = &b[ID_KEY..ID_KEY + PUBLIC_KEY_SIZE];
    let id_key = parse_public_key(id_pub, "ID")?;
    let sig = parse_signature(&b[ID_BLOCK_SIG..ID_BLOCK_SIG + SIGNATURE_SIZE], "ID block")?;
    id_key
        .verify(id_block, &sig)
        .map_err(|_| IdBlockError::IdBlockSignature)?;
    let id_digest: [u8; 48] = Sha384::digest(id_pub).into();

    let author_digest = if with_author {
        let author_pub = &b[AUTHOR_KEY..AUTHOR_KEY + PUBLIC_KEY_SIZE];
        let author_key = parse_public_key(author_pub, "author")?;
        let sig = parse_signature(&b[ID_KEY_SIG..ID_KEY_SIG + SIGNATURE_SIZE], "ID key")?;
        author_key
            .verify(id_pub, &sig)
            .map_err(|_| IdBlockError::IdKeySignature)?;
        Some(Sha384::digest(author_pub).into())
    } else {
        if let Some(pos) = b[ID_KEY_SIG..ID_AUTH_SIZE].iter().position(|&x| x != 0) {
            return Err(IdBlockError::ReservedNotZero(ID_KEY_SIG + pos));
        }
        None
    };
    Ok(IdKeyDigests {
        id_key: id_digest,
        author_key: author_digest,
    })
}

#[cfg(test)]
mod tests;
