//! `snpguardctl id-block` against the reference, sev-snp-measure's
//! `snp-create-id-block` (0.0.13: zero IDs and SVN, policy 0x30000). ECDSA
//! signatures are randomized, so the deterministic parts are compared
//! byte for byte and the reference's signatures are checked with our
//! verifier.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use p384::pkcs8::LineEnding;
use p384::SecretKey;
use rand::RngCore;
use snpguard::idblock::{key_digest, verify_id_auth, IdBlockError};

use crate::common::{run, snpguardctl, tool, Scratch};

/// Byte ranges of the ID auth info that do not depend on the random
/// signature nonces: algorithms, reserved, both public keys.
const DETERMINISTIC: [(usize, usize); 3] = [(0x000, 0x040), (0x240, 0x680), (0x880, 0x1000)];

#[test]
fn matches_snp_create_id_block() {
    let Some(()) = tool("snp-create-id-block") else {
        return;
    };
    let Some(()) = tool("openssl") else {
        return;
    };
    let s = Scratch::new("idblock-ref");
    // Keys as operators make them: SEC1 with an EC PARAMETERS block from
    // `ecparam`, PKCS#8 from `genpkey`; both tools must read both.
    let id_pem = s.file(
        "id.pem",
        run_bytes(&["ecparam", "-genkey", "-name", "secp384r1"]).as_slice(),
    );
    let author_pem = s.file(
        "author.pem",
        run_bytes(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .as_slice(),
    );
    let id = snpguard::idblock::signing_key_from_pem(&std::fs::read_to_string(&id_pem).unwrap())
        .unwrap();
    let mut ld = [0u8; 48];
    rand::thread_rng().fill_bytes(&mut ld);

    let reference = run({
        let mut c = std::process::Command::new("snp-create-id-block");
        c.arg(format!("--measurement={}", B64.encode(ld)))
            .arg("--idkey")
            .arg(&id_pem)
            .arg("--authorkey")
            .arg(&author_pem);
        c
    });
    let mut lines = reference.lines();
    let first = lines.next().unwrap();
    let (blk, auth) = first.split_once(',').unwrap();
    let ref_block = B64.decode(blk.strip_prefix("id-block=").unwrap()).unwrap();
    let ref_auth = B64.decode(auth.strip_prefix("id-auth=").unwrap()).unwrap();
    let field =
        |l: Option<&str>, name: &str| B64.decode(l.unwrap().strip_prefix(name).unwrap()).unwrap();
    let ref_id_digest = field(lines.next(), "id_key_hash: ");
    let ref_author_digest = field(lines.next(), "author_key: ");

    let out_block = s.0.join("id-block.bin");
    let out_auth = s.0.join("id-auth.bin");
    let ours = run({
        let mut c = snpguardctl();
        c.arg("id-block")
            .arg(format!("--measurement={}", hex::encode(ld)))
            .arg("--id-key")
            .arg(&id_pem)
            .arg("--author-key")
            .arg(&author_pem)
            .arg("--out-id-block")
            .arg(&out_block)
            .arg("--out-id-auth")
            .arg(&out_auth);
        c
    });
    let block = std::fs::read(&out_block).unwrap();
    let auth = std::fs::read(&out_auth).unwrap();

    assert_eq!(block, ref_block, "ID blocks differ");
    assert_eq!(auth.len(), ref_auth.len());
    for (a, b) in DETERMINISTIC {
        assert_eq!(
            auth[a..b],
            ref_auth[a..b],
            "ID auth bytes {a:#x}..{b:#x} differ"
        );
    }
    let ours_digests = verify_id_auth(&block, &auth).unwrap();
    let ref_digests = verify_id_auth(&ref_block, &ref_auth).expect("reference verifies");
    assert_eq!(ours_digests, ref_digests);
    assert_eq!(ours_digests.id_key.to_vec(), ref_id_digest);
    assert_eq!(ours_digests.author_key.unwrap().to_vec(), ref_author_digest);
    assert_eq!(ours_digests.id_key, key_digest(id.verifying_key()));
    assert_eq!(
        ours,
        format!(
            "id-key-digest: {}\nauthor-key-digest: {}\n",
            hex::encode(ref_id_digest),
            hex::encode(ref_author_digest)
        )
    );
    // Our verifier really checks the reference's signatures.
    let mut bad = ref_auth.clone();
    bad[0x40] ^= 1;
    assert_eq!(
        verify_id_auth(&ref_block, &bad),
        Err(IdBlockError::IdBlockSignature)
    );
    let mut bad = ref_auth;
    bad[0x680] ^= 1;
    assert_eq!(
        verify_id_auth(&ref_block, &bad),
        Err(IdBlockError::IdKeySignature)
    );
}

fn run_bytes(args: &[&str]) -> Vec<u8> {
    let mut c = std::process::Command::new("openssl");
    c.args(args);
    run(c).into_bytes()
}

#[test]
fn ids_svn_and_policy_land_in_the_block() {
    let s = Scratch::new("idblock-fields");
    let key = SecretKey::random(&mut rand::rngs::OsRng);
    let pem = s.file("k.pem", key.to_sec1_pem(LineEnding::LF).unwrap().as_bytes());
    let out = s.0.join("b");
    let auth = s.0.join("a");
    let args = |policy: &str| {
        let mut c = snpguardctl();
        c.arg("id-block")
            .arg(format!("--measurement={}", "11".repeat(48)))
            .args(["--id-key", pem.to_str().unwrap()])
            .args(["--author-key", pem.to_str().unwrap()])
            .arg(format!("--family-id={}", "22".repeat(16)))
            .arg(format!("--image-id={}", "33".repeat(16)))
            .args(["--guest-svn", "5", "--policy", policy])
            .args(["--out-id-block", out.to_str().unwrap()])
            .args(["--out-id-auth", auth.to_str().unwrap()]);
        c
    };
    run(args("0xb0000"));
    let b = std::fs::read(&out).unwrap();
    assert_eq!(&b[48..64], &[0x22; 16]);
    assert_eq!(&b[64..80], &[0x33; 16]);
    assert_eq!(&b[84..88], &[5, 0, 0, 0]);
    assert_eq!(&b[88..96], &[0, 0, 0x0b, 0, 0, 0, 0, 0]);
    verify_id_auth(&b, &std::fs::read(&auth).unwrap()).unwrap();

    let o = args("0x10000").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("bit 17"),
        "{err}"
    );
}
