//! HPKE (RFC 9180) sealing of small secrets to an X25519 public key.
//!
//! Two uses, one construction:
//! - `snpguardctl convert` seals the fresh volume master key to the
//!   daemon's ingestion key ([`INFO_INGEST`]), so the VMK never reaches the
//!   staging directory in plaintext;
//! - the daemon releases that key to the guest agent's ephemeral key, with
//!   the attestation report bound into `info`/`aad` by the caller.
//!
//! The suite is fixed: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, base mode. A sealed box on the wire or on disk is
//!
//! ```text
//! "SNPGSEAL" (8) ‖ version = 1 (1) ‖ suite = 1 (1) ‖ enc (32) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! at most [`MAX_SEALED_LEN`] bytes in all.

use std::fmt;

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use rand_core::OsRng;
use zeroize::Zeroizing;

/// HPKE `info` for a VMK sealed by `convert` to the daemon's ingestion key.
pub const INFO_INGEST: &[u8] = b"snpguard/v1/vmk-ingest";

/// Magic at the start of every sealed box.
pub const MAGIC: &[u8; 8] = b"SNPGSEAL";
/// The only sealed-box format version.
pub const VERSION: u8 = 1;
/// Suite 1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
pub const SUITE_X25519_SHA256_CHACHA20POLY1305: u8 = 1;
/// Largest sealed box accepted or produced, header included.
pub const MAX_SEALED_LEN: usize = 64 * 1024;
/// Length of the header before the ciphertext: magic, version, suite, enc.
pub const HEADER_LEN: usize = MAGIC.len() + 2 + ENC_LEN;
/// Length of the AEAD tag at the end of the ciphertext.
pub const TAG_LEN: usize = 16;
/// Largest plaintext that fits in a sealed box.
pub const MAX_PLAINTEXT_LEN: usize = MAX_SEALED_LEN - HEADER_LEN - TAG_LEN;

const ENC_LEN: usize = 32;
const KEY_LEN: usize = 32;

type SuiteKem = X25519HkdfSha256;
type SuiteKdf = HkdfSha256;
type SuiteAead = ChaCha20Poly1305;
type KemPrivateKey = <SuiteKem as Kem>::PrivateKey;
type KemPublicKey = <SuiteKem as Kem>::PublicKey;
type KemEncappedKey = <SuiteKem as Kem>::EncappedKey;

/// Why a sealed box could not be made, parsed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The bytes are not a sealed box this version understands.
    #[error("not a valid sealed box: {0}")]
    Format(#[from] SealFormatError),
    /// Authentication failed: wrong key, wrong info/aad, or altered bytes.
    /// Deliberately one variant; the cases are not distinguishable.
    #[error("sealed box could not be opened: wrong key, wrong context, or tampered")]
    WrongKeyOrTampered,
    /// A public key of the wrong length, or one that yields no shared
    /// secret (a low-order X25519 point).
    #[error("invalid X25519 public key (must be 32 bytes and not a low-order point)")]
    InvalidKey,
    /// The plaintext does not fit in a sealed box.
    #[error("plaintext of {len} bytes is larger than the {max} a sealed box holds")]
    PlaintextTooLarge {
        /// Plaintext length given.
        len: usize,
        /// Largest plaintext accepted.
        max: usize,
    },
}

/// What is wrong with the bytes of a sealed box.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealFormatError {
    /// Shorter than a header and a tag.
    #[error("truncated: {len} bytes, at least {min} needed")]
    Truncated {
        /// Length given.
        len: usize,
        /// Smallest valid length.
        min: usize,
    },
    /// Longer than [`MAX_SEALED_LEN`].
    #[error("{len} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Largest valid length.
        max: usize,
    },
    /// Does not start with `SNPGSEAL`.
    #[error("bad magic (expected \"SNPGSEAL\")")]
    BadMagic,
    /// A format version other than 1.
    #[error("unsupported version {0} (expected 1)")]
    UnsupportedVersion(u8),
    /// A suite other than 1.
    #[error("unsupported HPKE suite {0} (expected 1)")]
    UnsupportedSuite(u8),
}

/// An X25519 private key. Zeroized on drop; its `Debug` shows no bytes.
#[derive(Clone)]
pub struct SecretKey(KemPrivateKey);

impl SecretKey {
    /// The key from its 32-byte little-endian scalar (clamped when used).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        // Cannot fail: hpke only rejects a length other than 32, and every
        // 32-byte string is a valid (clamped-on-use) X25519 private key.
        match KemPrivateKey::from_bytes(bytes) {
            Ok(sk) => SecretKey(sk),
            Err(_) => unreachable!("an X25519 private key from [u8; 32] cannot fail"),
        }
    }

    /// The 32 bytes of the key, zeroized when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        self.0.write_exact(out.as_mut());
        out
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(SuiteKem::sk_to_pk(&self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// An X25519 public key that is known to yield a shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(KemPublicKey);

impl PublicKey {
    /// Parses a 32-byte X25519 public key; rejects other lengths and
    /// low-order points (which would make every shared secret zero).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let pk = KemPublicKey::from_bytes(bytes).map_err(|_| SealError::InvalidKey)?;
        // An encapsulation to a low-order point fails the all-zero check
        // RFC 9180 §7.1.4 requires; probe once so a bad key is named here
        // rather than at first use.
        hpke::setup_sender::<SuiteAead, SuiteKdf, SuiteKem, _>(
            &OpModeS::Base,
            &pk,
            b"",
            &mut OsRng,
        )
        .map_err(|_| SealError::InvalidKey)?;
        Ok(PublicKey(pk))
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        let mut out = [0u8; KEY_LEN];
        self.0.write_exact(&mut out);
        out
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.to_bytes()))
    }
}

/// A fresh random key pair from the operating system's CSPRNG.
pub fn generate_keypair() -> (SecretKey, PublicKey) {
    let (sk, pk) = SuiteKem::gen_keypair(&mut OsRng);
    (SecretKey(sk), PublicKey(pk))
}

/// A sealed secret: the HPKE encapsulated key and the AEAD ciphertext
/// (tag included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBox {
    /// The sender's ephemeral X25519 public key.
    pub enc: [u8; ENC_LEN],
    /// ChaCha20-Poly1305 ciphertext followed by its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl SealedBox {
    /// The documented wire format (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(SUITE_X25519_SHA256_CHACHA20POLY1305);
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the wire format; checks magic, version, suite and length
    /// bounds, not authenticity (that is [`open`]'s job).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let len = bytes.len();
        if len > MAX_SEALED_LEN {
            return Err(SealFormatError::TooLarge {
                len,
                max: MAX_SEALED_LEN,
            }
            .into());
        }
        let min = HEADER_LEN + TAG_LEN;
        if len < min {
            return Err(SealFormatError::Truncated { len, min }.into());
        }
        let (magic, rest) = bytes.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(SealFormatError::BadMagic.into());
        }
        let (version, suite, rest) = match rest {
            [version, suite, rest @ ..] => (*version, *suite, rest),
            _ => return Err(SealFormatError::Truncated { len, min }.into()),
        };
        if version != VERSION {
            return Err(SealFormatError::UnsupportedVersion(version).into());
        }
        if suite != SUITE_X25519_SHA256_CHACHA20POLY1305 {
            return Err(SealFormatError::UnsupportedSuite(suite).into());
        }
        let (enc, ciphertext) = rest.split_at(ENC_LEN);
        let mut enc_arr = [0u8; ENC_LEN];
        enc_arr.copy_from_slice(enc);
        Ok(SealedBox {
            enc: enc_arr,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// Seals `plaintext` to `to`, bound to `info` (the purpose) and `aad`
/// (context both sides know, e.g. a report hash).
pub fn seal(
    to: &PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<SealedBox, SealError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(SealError::PlaintextTooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    // Encrypted in place: the buffer holds plaintext until sealed, so it
    // is zeroized if sealing fails part-way.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    let (encapped, tag) =
        hpke::single_shot_seal_in_place_detached::<SuiteAead, SuiteKdf, SuiteKem, _>(
            &OpModeS::Base,
            &to.0,
            info,
            buf.as_mut_slice(),
            aad,
            &mut OsRng,
        )
        .map_err(|_| SealError::InvalidKey)?;
    let mut enc = [0u8; ENC_LEN];
    encapped.write_exact(&mut enc);
    let mut ciphertext = Vec::with_capacity(buf.len() + TAG_LEN);
    ciphertext.extend_from_slice(&buf);
    ciphertext.extend_from_slice(&tag.to_bytes());
    Ok(SealedBox { enc, ciphertext })
}

/// Opens a sealed box with `key`; `info` and `aad` must be exactly those
/// given to [`seal`].
pub fn open(
    key: &SecretKey,
    info: &[u8],
    aad: &[u8],
    sealed: &SealedBox,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let body_len =
        sealed
            .ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(SealFormatError::Truncated {
                len: HEADER_LEN + sealed.ciphertext.len(),
                min: HEADER_LEN + TAG_LEN,
            })?;
    if body_len > MAX_PLAINTEXT_LEN {
        return Err(SealFormatError::TooLarge {
            len: HEADER_LEN + sealed.ciphertext.len(),
            max: MAX_SEALED_LEN,
        }
        .into());
    }
    let (body, tag) = sealed.ciphertext.split_at(body_len);
    let tag = AeadTag::<SuiteAead>::from_bytes(tag).map_err(|_| SealError::WrongKeyOrTampered)?;
    let encapped =
        KemEncappedKey::from_bytes(&sealed.enc).map_err(|_| SealError::WrongKeyOrTampered)?;
    let mut buf = Zeroizing::new(body.to_vec());
    // Every failure past this point (a low-order `enc`, a bad tag) is the
    // same answer to the caller: the box does not open with this key and
    // context.
    hpke::single_shot_open_in_place_detached::<SuiteAead, SuiteKdf, SuiteKem>(
        &OpModeR::Base,
        &key.0,
        &encapped,
        info,
        buf.as_mut_slice(),
        aad,
        &tag,
    )
    .map_err(|_| SealError::WrongKeyOrTampered)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"report-hash";

    fn sealed_vmk() -> (SecretKey, PublicKey, SealedBox) {
        let (sk, pk) = generate_keypair();
        let sealed = seal(&pk, INFO_INGEST, AAD, b"volume master key").expect("seal");
        (sk, pk, sealed)
    }

    #[test]
    fn round_trip() {
        let (sk, _pk, sealed) = sealed_vmk();
        let parsed = SealedBox::from_bytes(&sealed.to_bytes()).expect("parse");
        assert_eq!(parsed, sealed);
        let opened = open(&sk, INFO_INGEST, AAD, &parsed).expect("open");
        assert_eq!(opened.as_slice(), b"volume master key");
    }

    #[test]
    fn round_trip_empty_and_max_plaintext() {
        let (sk, pk) = generate_keypair();
        for len in [0, MAX_PLAINTEXT_LEN] {
            let pt = vec![0x5a; len];
            let bytes = seal(&pk, b"i", b"a", &pt).expect("seal").to_bytes();
            assert!(bytes.len() <= MAX_SEALED_LEN);
            let sealed = SealedBox::from_bytes(&bytes).expect("parse");
            assert_eq!(open(&sk, b"i", b"a", &sealed).expect("open").as_slice(), pt);
        }
    }

    #[test]
    fn plaintext_too_large() {
        let (_sk, pk) = generate_keypair();
        let pt = vec![0; MAX_PLAINTEXT_LEN + 1];
        assert_eq!(
            seal(&pk, b"", b"", &pt),
            Err(SealError::PlaintextTooLarge {
                len: MAX_PLAINTEXT_LEN + 1,
                max: MAX_PLAINTEXT_LEN
            })
        );
    }

    #[test]
    fn key_bytes_round_trip() {
        let (sk, pk) = generate_keypair();
        let sk2 = SecretKey::from_bytes(&sk.to_bytes());
        assert_eq!(sk2.public_key(), pk);
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()).expect("pk"), pk);
    }

    #[test]
    fn wrong_key() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let (other, _) = generate_keypair();
        assert_eq!(
            open(&other, INFO_INGEST, AAD, &sealed),
            Err(SealError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn wrong_info() {
        let (sk, _pk, sealed) = sealed_vmk();
        assert_eq!(
            open(&sk, b"snpguard/v1/key-release", AAD, &sealed),
            Err(SealError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn wrong_aad() {
        let (sk, _pk, sealed) = sealed_vmk();
        assert_eq!(
            open(&sk, INFO_INGEST, b"other-report", &sealed),
            Err(SealError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn flipped_ciphertext_byte() {
        let (sk, _pk, sealed) = sealed_vmk();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x01;
            assert_eq!(
                open(&sk, INFO_INGEST, AAD, &bad),
                Err(SealError::WrongKeyOrTampered),
                "byte {i}"
            );
        }
    }

    #[test]
    fn flipped_enc_byte() {
        let (sk, _pk, sealed) = sealed_vmk();
        for i in 0..ENC_LEN {
            let mut bad = sealed.clone();
            bad.enc[i] ^= 0x01;
            assert_eq!(
                open(&sk, INFO_INGEST, AAD, &bad),
                Err(SealError::WrongKeyOrTampered),
                "byte {i}"
            );
        }
    }

    #[test]
    fn low_order_enc_is_tampered() {
        let (sk, _pk, mut sealed) = sealed_vmk();
        sealed.enc = [0; ENC_LEN];
        assert_eq!(
            open(&sk, INFO_INGEST, AAD, &sealed),
            Err(SealError::WrongKeyOrTampered)
        );
    }

    #[test]
    fn ciphertext_shorter_than_tag() {
        let (sk, _pk, mut sealed) = sealed_vmk();
        sealed.ciphertext.truncate(TAG_LEN - 1);
        assert!(matches!(
            open(&sk, INFO_INGEST, AAD, &sealed),
            Err(SealError::Format(SealFormatError::Truncated { .. }))
        ));
    }

    #[test]
    fn truncated() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let bytes = sealed.to_bytes();
        for len in 0..HEADER_LEN + TAG_LEN {
            assert_eq!(
                SealedBox::from_bytes(&bytes[..len]),
                Err(SealError::Format(SealFormatError::Truncated {
                    len,
                    min: HEADER_LEN + TAG_LEN
                })),
                "length {len}"
            );
        }
    }

    #[test]
    fn bad_magic() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let mut bytes = sealed.to_bytes();
        bytes[0] = b's';
        assert_eq!(
            SealedBox::from_bytes(&bytes),
            Err(SealError::Format(SealFormatError::BadMagic))
        );
    }

    #[test]
    fn bad_version() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let mut bytes = sealed.to_bytes();
        bytes[8] = 2;
        assert_eq!(
            SealedBox::from_bytes(&bytes),
            Err(SealError::Format(SealFormatError::UnsupportedVersion(2)))
        );
    }

    #[test]
    fn bad_suite() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let mut bytes = sealed.to_bytes();
        bytes[9] = 0;
        assert_eq!(
            SealedBox::from_bytes(&bytes),
            Err(SealError::Format(SealFormatError::UnsupportedSuite(0)))
        );
    }

    #[test]
    fn oversize() {
        let mut bytes = Vec::from(&MAGIC[..]);
        bytes.extend_from_slice(&[VERSION, SUITE_X25519_SHA256_CHACHA20POLY1305]);
        bytes.resize(MAX_SEALED_LEN + 1, 0);
        assert_eq!(
            SealedBox::from_bytes(&bytes),
            Err(SealError::Format(SealFormatError::TooLarge {
                len: MAX_SEALED_LEN + 1,
                max: MAX_SEALED_LEN
            }))
        );
    }

    #[test]
    fn oversize_box_built_in_memory_is_refused_by_open() {
        let (sk, _pk, mut sealed) = sealed_vmk();
        sealed.ciphertext = vec![0; MAX_SEALED_LEN];
        assert!(matches!(
            open(&sk, INFO_INGEST, AAD, &sealed),
            Err(SealError::Format(SealFormatError::TooLarge { .. }))
        ));
    }

    #[test]
    fn layout_is_as_documented() {
        let (_sk, _pk, sealed) = sealed_vmk();
        let bytes = sealed.to_bytes();
        assert_eq!(&bytes[0..8], b"SNPGSEAL");
        assert_eq!(bytes[8], 1, "version");
        assert_eq!(bytes[9], 1, "suite");
        assert_eq!(&bytes[10..42], &sealed.enc);
        assert_eq!(&bytes[42..], sealed.ciphertext.as_slice());
        assert_eq!(HEADER_LEN, 42);
        // ChaCha20-Poly1305 adds exactly a 16-byte tag.
        assert_eq!(sealed.ciphertext.len(), b"volume master key".len() + 16);

        // A fixed box parses back into exactly its fields.
        let mut fixed = b"SNPGSEAL\x01\x01".to_vec();
        fixed.extend_from_slice(&[0xaa; 32]);
        fixed.extend_from_slice(&[0xbb; 20]);
        let parsed = SealedBox::from_bytes(&fixed).expect("parse");
        assert_eq!(parsed.enc, [0xaa; 32]);
        assert_eq!(parsed.ciphertext, vec![0xbb; 20]);
        assert_eq!(parsed.to_bytes(), fixed);
    }

    #[test]
    fn public_key_wrong_length() {
        assert_eq!(PublicKey::from_bytes(&[9; 31]), Err(SealError::InvalidKey));
        assert_eq!(PublicKey::from_bytes(&[9; 33]), Err(SealError::InvalidKey));
        assert_eq!(PublicKey::from_bytes(&[]), Err(SealError::InvalidKey));
    }

    #[test]
    fn public_key_low_order_point() {
        // u = 0 and u = 1 are low-order points on Curve25519.
        assert_eq!(PublicKey::from_bytes(&[0; 32]), Err(SealError::InvalidKey));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(PublicKey::from_bytes(&one), Err(SealError::InvalidKey));
    }

    #[test]
    fn secret_key_debug_shows_no_bytes() {
        let sk = SecretKey::from_bytes(&[0x42; 32]);
        let shown = format!("{sk:?}");
        assert!(!shown.contains("42"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn rfc9180_known_answer_open() {
        // RFC 9180 Appendix A.2.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
        // ChaCha20-Poly1305, base mode), encryption sequence number 0.
        let sk_r: [u8; 32] =
            hex_arr("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let enc: [u8; 32] =
            hex_arr("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let info = hex::decode("4f6465206f6e2061204772656369616e2055726e").expect("hex");
        let aad = hex::decode("436f756e742d30").expect("hex");
        let ct = hex::decode(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db\
             21993c62ce81883d2dd1b51a28",
        )
        .expect("hex");
        let pt =
            hex::decode("4265617574792069732074727574682c20747275746820626561757479").expect("hex");
        let sk = SecretKey::from_bytes(&sk_r);
        let opened = open(
            &sk,
            &info,
            &aad,
            &SealedBox {
                enc,
                ciphertext: ct,
            },
        )
        .expect("RFC 9180 A.2.1 vector opens");
        assert_eq!(opened.as_slice(), pt.as_slice());
    }

    fn hex_arr(s: &str) -> [u8; 32] {
        let v = hex::decode(s).expect("hex");
        let mut out = [0u8; 32];
        out.copy_from_slice(&v);
        out
    }
}
