//! Keys of the data volumes: every guest-mounted file system other than
//! the root (a separate `/var`, `/home`, `/usr`, `/srv`…) is its own LUKS2
//! volume whose volume key is derived from the VMK (the root volume's key,
//! the one secret the daemon releases) with HKDF-SHA256, the volume's
//! LUKS2 UUID as the info. `snpguardctl convert` formats the volumes with
//! these keys and the agent derives the same keys after the release, so
//! one attestation opens every volume and no second secret is stored.
//!
//! Distinct UUIDs give independent keys; a key never leaves the guest and
//! the host learns nothing about the VMK from a data volume's header.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The HKDF salt: binds the keys to this use (a VMK is never used as a
/// data volume key directly).
pub const DATA_VOLUME_SALT: &[u8] = b"snpguard/luks2-data-volume/v1";

/// Smallest and largest volume keys derived (AES-128-XTS to AES-256-XTS
/// and beyond; HKDF-SHA256 gives at most 255 * 32 bytes).
const MIN_KEY: usize = 32;
const MAX_KEY: usize = 128;

/// Why a data volume key cannot be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeKeyError {
    /// The VMK is too short to be a volume key.
    #[error("the VMK has {0} bytes; a data volume key needs a VMK of at least 32 bytes")]
    ShortVmk(usize),
    /// The requested key length is outside what a LUKS2 volume uses.
    #[error("a data volume key of {0} bytes is not supported (32 to 128 bytes)")]
    KeyLength(usize),
    /// The UUID is not a canonical lower-case LUKS2 UUID.
    #[error("{0:?} is not a LUKS2 UUID (8-4-4-4-12 lower-case hex digits)")]
    Uuid(String),
}

/// Whether `s` is a UUID in the canonical lower-case form cryptsetup
/// writes into a LUKS2 header.
pub fn is_canonical_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// The volume key of the data volume whose LUKS2 header carries
/// `luks_uuid`: HKDF-SHA256(salt [`DATA_VOLUME_SALT`], ikm `vmk`, info the
/// UUID's 36 ASCII bytes), `len` bytes.
pub fn data_volume_key(
    vmk: &[u8],
    luks_uuid: &str,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, VolumeKeyError> {
    if vmk.len() < MIN_KEY {
        return Err(VolumeKeyError::ShortVmk(vmk.len()));
    }
    if !(MIN_KEY..=MAX_KEY).contains(&len) {
        return Err(VolumeKeyError::KeyLength(len));
    }
    if !is_canonical_uuid(luks_uuid) {
        return Err(VolumeKeyError::Uuid(luks_uuid.to_string()));
    }
    let hk = Hkdf::<Sha256>::new(Some(DATA_VOLUME_SALT), vmk);
    let mut key = Zeroizing::new(vec![0u8; len]);
    hk.expand(luks_uuid.as_bytes(), &mut key)
        .map_err(|_| VolumeKeyError::KeyLength(len))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    const U1: &str = "0b5c7d1e-aaaa-4bbb-8ccc-123456789abc";
    const U2: &str = "0b5c7d1e-aaaa-4bbb-8ccc-123456789abd";

    /// RFC 5869 written out with HMAC-SHA256, independently of the hkdf
    /// crate: PRK = HMAC(salt, ikm), T(i) = HMAC(PRK, T(i-1) | info | i).
    fn rfc5869(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        let mac = |k: &[u8], parts: &[&[u8]]| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).unwrap();
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        };
        let prk = mac(salt, &[ikm]);
        let (mut out, mut t) = (Vec::new(), Vec::new());
        let mut i = 1u8;
        while out.len() < len {
            t = mac(&prk, &[&t, info, &[i]]);
            out.extend_from_slice(&t);
            i += 1;
        }
        out.truncate(len);
        out
    }

    #[test]
    fn the_key_is_hkdf_sha256_of_the_vmk_with_the_uuid_as_info() {
        let vmk: Vec<u8> = (0u8..64).collect();
        let k = data_volume_key(&vmk, U1, 64).unwrap();
        assert_eq!(
            k.as_slice(),
            rfc5869(DATA_VOLUME_SALT, &vmk, U1.as_bytes(), 64)
        );
        // RFC 5869 test case 1 through the same construction: the
        // reference above is HKDF itself.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        assert_eq!(
            hex::encode(rfc5869(&salt, &ikm, &info, 42)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn each_volume_and_each_vmk_gets_its_own_key() {
        let vmk = [7u8; 64];
        let a = data_volume_key(&vmk, U1, 64).unwrap();
        assert_eq!(a, data_volume_key(&vmk, U1, 64).unwrap());
        assert_ne!(a, data_volume_key(&vmk, U2, 64).unwrap());
        assert_ne!(a, data_volume_key(&[8u8; 64], U1, 64).unwrap());
        assert_ne!(&a[..], &vmk[..]);
        // A shorter key is a prefix (HKDF), never the VMK's bytes.
        assert_eq!(&data_volume_key(&vmk, U1, 32).unwrap()[..], &a[..32]);
    }

    #[test]
    fn bad_inputs_are_refused_by_name() {
        let vmk = [7u8; 64];
        assert_eq!(
            data_volume_key(&vmk[..16], U1, 64).unwrap_err(),
            VolumeKeyError::ShortVmk(16)
        );
        for len in [0, 16, 129, 8160] {
            assert_eq!(
                data_volume_key(&vmk, U1, len).unwrap_err(),
                VolumeKeyError::KeyLength(len)
            );
        }
        for u in [
            "",
            "0B5C7D1E-AAAA-4BBB-8CCC-123456789ABC",
            "0b5c7d1e-aaaa-4bbb-8ccc-123456789ab",
            "0b5c7d1eaaaaa4bbb-8ccc-123456789abc",
            "0b5c7d1e-aaaa-4bbb-8ccc-123456789abg",
        ] {
            assert!(
                matches!(data_volume_key(&vmk, u, 64), Err(VolumeKeyError::Uuid(_))),
                "{u:?}"
            );
        }
    }
}
