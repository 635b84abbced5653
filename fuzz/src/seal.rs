//! Sealed boxes (HPKE): the daemon's ingestion of VMKs sealed by
//! `convert`, and the agent's opening of the key the daemon releases.

use std::sync::OnceLock;

use snpguard::seal::{open, seal, SealedBox, SecretKey, HEADER_LEN};

use crate::fixtures::{apply_xors, xor_at, Input};

/// The recipient's key: fixed, so that a box sealed by one process (the
/// seed writer) opens in another (the fuzzer).
const SECRET: [u8; 32] = [0x42; 32];
const INFO: &[u8] = b"snpguard/v1/vmk-ingest";
const AAD: &[u8] = b"fuzz";
const PLAINTEXT: &[u8] = b"a volume master key of 32 bytes!";

fn secret() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::from_bytes(&SECRET))
}

/// One genuine box per process.
fn genuine() -> &'static [u8] {
    static BOX: OnceLock<Vec<u8>> = OnceLock::new();
    BOX.get_or_init(|| {
        seal(&secret().public_key(), INFO, AAD, PLAINTEXT)
            .expect("sealing")
            .to_bytes()
    })
}

fn opens(bytes: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let sealed = SealedBox::from_bytes(bytes).ok()?;
    open(secret(), INFO, aad, &sealed).ok().map(|p| p.to_vec())
}

/// `sealed_box`: the first byte picks the input: 0 the rest as it is, 1
/// the rest as XOR mutations of a box sealed in this process. What parses
/// encodes to exactly the input; a mutated box opens only unchanged (then
/// to its plaintext); whatever opens does so only with its own context,
/// and no single changed byte of it opens.
pub fn sealed_box(data: &[u8]) {
    let mut input = Input::new(data);
    let bytes = match input.byte() % 2 {
        0 => input.rest().to_vec(),
        _ => {
            let mut b = genuine().to_vec();
            apply_xors(&mut input, &mut b);
            let unchanged = b == genuine();
            assert_eq!(
                opens(&b, AAD).as_deref() == Some(PLAINTEXT),
                unchanged,
                "a mutated box opens, or the genuine one does not"
            );
            b
        }
    };
    if let Ok(sealed) = SealedBox::from_bytes(&bytes) {
        assert_eq!(sealed.to_bytes(), bytes, "from_bytes -> to_bytes");
    }
    if opens(&bytes, AAD).is_none() {
        return;
    }
    crate::fixtures::reached("sealed_box");
    assert!(
        opens(&bytes, b"another context").is_none(),
        "opens without its aad"
    );
    let mut b = bytes.clone();
    for i in 0..b.len() {
        b[i] ^= 0x01;
        assert!(opens(&b, AAD).is_none(), "opens with byte {i} changed");
        b[i] ^= 0x01;
    }
}

/// Boxes sealed to the fixed key (they open in every process), the
/// genuine box with each region changed, and short inputs.
pub fn seeds() -> Vec<Vec<u8>> {
    let pk = secret().public_key();
    let mut out = vec![vec![1], vec![0], [&[0u8][..], b"SNPGSEAL\x01\x01"].concat()];
    for plain in [&b""[..], PLAINTEXT, &[7u8; 200][..]] {
        let sealed = seal(&pk, INFO, AAD, plain).expect("sealing").to_bytes();
        out.push([&[0u8][..], &sealed].concat());
    }
    let len = genuine().len();
    for pos in [0, 8, 9, 10, HEADER_LEN, len - 1] {
        out.push([vec![1], xor_at(pos, 0x80)].concat());
    }
    out
}
