use p384::ecdsa::SigningKey;
use p384::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::OsRng;

use super::*;

fn block() -> IdBlock {
    IdBlock {
        launch_digest: LaunchDigest::new([0x5a; 48]),
        family_id: [1; 16],
        image_id: [2; 16],
        guest_svn: 7,
        policy: 0x30000,
    }
}

fn keys() -> (SigningKey, SigningKey) {
    (
        SigningKey::random(&mut OsRng),
        SigningKey::random(&mut OsRng),
    )
}

#[test]
fn id_block_layout() {
    let b = block().to_bytes();
    assert_eq!(&b[..48], &[0x5a; 48]);
    assert_eq!(&b[48..64], &[1; 16]);
    assert_eq!(&b[64..80], &[2; 16]);
    assert_eq!(&b[80..84], &[1, 0, 0, 0]);
    assert_eq!(&b[84..88], &[7, 0, 0, 0]);
    assert_eq!(&b[88..96], &[0, 0, 3, 0, 0, 0, 0, 0]);
    assert_eq!(IdBlock::from_bytes(&b), Ok(block()));
    let mut v2 = b;
    v2[80] = 2;
    assert_eq!(
        IdBlock::from_bytes(&v2),
        Err(IdBlockError::UnsupportedVersion(2))
    );
    assert!(matches!(
        IdBlock::from_bytes(&b[..95]),
        Err(IdBlockError::WrongSize { got: 95, .. })
    ));
}

#[test]
fn sign_then_verify_returns_the_key_digests() {
    let (id, author) = keys();
    let auth = IdAuth::sign(&block(), &id, Some(&author)).unwrap();
    let b = auth.as_bytes();
    assert_eq!(&b[..8], &[1, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(&b[ID_KEY..ID_KEY + 4], &[2, 0, 0, 0]);
    assert_eq!(&b[AUTHOR_KEY..AUTHOR_KEY + 4], &[2, 0, 0, 0]);
    let d = verify_id_auth(&block().to_bytes(), b).unwrap();
    assert_eq!(d.id_key, key_digest(id.verifying_key()));
    assert_eq!(d.author_key, Some(key_digest(author.verifying_key())));
    assert_ne!(d.id_key, d.author_key.unwrap());
}

#[test]
fn without_author_key() {
    let (id, _) = keys();
    let auth = IdAuth::sign(&block(), &id, None).unwrap();
    assert!(auth.as_bytes()[ID_KEY_SIG..].iter().all(|&b| b == 0));
    let d = verify_id_auth(&block().to_bytes(), auth.as_bytes()).unwrap();
    assert_eq!(d.author_key, None);
}

#[test]
fn every_byte_of_the_id_block_is_covered() {
    let (id, author) = keys();
    let bytes = block().to_bytes();
    let auth = IdAuth::sign(&block(), &id, Some(&author)).unwrap();
    for i in 0..ID_BLOCK_SIZE {
        let mut t = bytes;
        t[i] ^= 0x01;
        let e = verify_id_auth(&t, auth.as_bytes()).unwrap_err();
        if (80..84).contains(&i) {
            assert!(matches!(e, IdBlockError::UnsupportedVersion(_)), "{i}: {e}");
        } else {
            assert_eq!(e, IdBlockError::IdBlockSignature, "byte {i}");
        }
    }
}

#[test]
fn every_byte_of_the_auth_block_is_covered() {
    let (id, author) = keys();
    let bytes = block().to_bytes();
    let auth = IdAuth::sign(&block(), &id, Some(&author)).unwrap();
    for i in 0..ID_AUTH_SIZE {
        let mut t = *auth.as_bytes();
        t[i] ^= 0x80;
        let e = verify_id_auth(&bytes, &t);
        assert!(e.is_err(), "flipping byte {i:#x} went unnoticed");
        let e = e.unwrap_err();
        let want_specific = match i {
            0x48..0x90 if i < ID_BLOCK_SIG + 2 * COORD => Some(IdBlockError::IdBlockSignature),
            0x680..0x710 => Some(IdBlockError::IdKeySignature),
            _ => None,
        };
        // Some flips make r or s out of range rather than wrong.
        if let Some(want) = want_specific {
            assert!(
                e == want || matches!(e, IdBlockError::MalformedSignature(_)),
                "{i:#x}: {e}"
            );
        }
    }
}

#[test]
fn swapped_keys_do_not_verify() {
    let (id, author) = keys();
    let (other, _) = keys();
    let good = IdAuth::sign(&block(), &id, Some(&author)).unwrap();
    // ID block signature by another key, with the original ID key.
    let bad = IdAuth::sign(&block(), &other, Some(&author)).unwrap();
    let mut t = *good.as_bytes();
    t[ID_BLOCK_SIG..ID_BLOCK_SIG + SIGNATURE_SIZE]
        .copy_from_slice(&bad.as_bytes()[ID_BLOCK_SIG..ID_BLOCK_SIG + SIGNATURE_SIZE]);
    assert_eq!(
        verify_id_auth(&block().to_bytes(), &t),
        Err(IdBlockError::IdBlockSignature)
    );
    // Author key replaced: its signature over the ID key no longer holds.
    let mut t = *good.as_bytes();
    t[AUTHOR_KEY..AUTHOR_KEY + PUBLIC_KEY_SIZE]
        .copy_from_slice(&public_key_bytes(other.verifying_key()));
    assert_eq!(
        verify_id_auth(&block().to_bytes(), &t),
        Err(IdBlockError::IdKeySignature)
    );
    // Unknown algorithms.
    let mut t = *good.as_bytes();
    t[AUTHOR_KEY_ALGO] = 2;
    assert!(matches!(
        verify_id_auth(&block().to_bytes(), &t),
        Err(IdBlockError::UnsupportedAlgorithm { .. })
    ));
}

#[test]
fn policy_fixed_bits() {
    let (id, _) = keys();
    for bad in [0u64, 0x10000, 1 << 26, 0x30000 | (1 << 63)] {
        let mut b = block();
        b.policy = bad;
        assert_eq!(
            IdAuth::sign(&b, &id, None).unwrap_err(),
            IdBlockError::InvalidPolicy(bad)
        );
    }
    let mut b = block();
    b.policy = 0x3_0000 | (1 << 25) | (1 << 19);
    IdAuth::sign(&b, &id, None).unwrap();
}

#[test]
fn pem_formats() {
    let key = SecretKey::random(&mut OsRng);
    let want = key_digest(SigningKey::from(&key).verifying_key());
    let sec1 = key.to_sec1_pem(LineEnding::LF).unwrap();
    let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    // What `openssl ecparam -genkey -name secp384r1` writes.
    let with_params = format!(
        "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n{}",
        &*sec1
    );
    for pem in [&*sec1, &*pkcs8, &with_params] {
        let k = signing_key_from_pem(pem).unwrap();
        assert_eq!(key_digest(k.verifying_key()), want);
    }
    assert_eq!(
        signing_key_from_pem(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
        ),
        Err(IdBlockError::EncryptedPrivateKey)
    );
    let p256 = p256_pkcs8_pem();
    for bad in ["", "garbage", &sec1.replace('A', "B"), &p256] {
        assert_eq!(signing_key_from_pem(bad), Err(IdBlockError::BadPrivateKey));
    }
}

/// A throwaway P-256 key in PKCS#8 (wrong curve for SNP), made by
/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
fn p256_pkcs8_pem() -> String {
    "-----BEGIN PRIVATE KEY-----\n\
     MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgwIBC/VJdhFaRIr1U\n\
     VB/OxzDp0Kb0rJV10HfheqJJWzehRANCAAQ3CAQlgspyMoyllfchkqrx2bAJ24IF\n\
     IJ3oG/yEDa8o7E5DBOxJkSKRTVO0kCykGDHYA/lGmYItE6rBPOBtdft0\n\
     -----END PRIVATE KEY-----\n"
        .to_owned()
}

#[test]
fn public_key_structure_is_little_endian() {
    let (id, _) = keys();
    let b = public_key_bytes(id.verifying_key());
    let point = id.verifying_key().to_encoded_point(false);
    let x = point.x().unwrap();
    for i in 0..48 {
        assert_eq!(b[4 + i], x[47 - i]);
    }
    assert!(b[4 + 48..4 + 72].iter().all(|&v| v == 0));
    assert!(b[4 + 144..].iter().all(|&v| v == 0));
    assert_eq!(parse_public_key(&b, "t").unwrap(), *id.verifying_key());
}
