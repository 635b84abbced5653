//! Against cryptsetup: what this enrols, cryptsetup opens; what
//! cryptsetup enrols (pbkdf2), this opens; removal leaves the other
//! keyslots working.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A 20 MiB LUKS2 file made by cryptsetup with a passphrase keyslot.
pub(crate) struct Volume {
    _dir: tempfile::TempDir,
    pub(crate) img: PathBuf,
    pub(crate) pw: PathBuf,
    pub(crate) vk: Vec<u8>,
}

pub(crate) fn cryptsetup(args: &[&str], img: &Path) -> std::process::Output {
    Command::new("cryptsetup")
        .args(args)
        .arg(img)
        .output()
        .expect("cryptsetup")
}

pub(crate) fn volume() -> Volume {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("v.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let vk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    std::fs::write(dir.path().join("vk"), &vk).unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "passphrase").unwrap();
    let out = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--key-size",
            "512",
        ])
        .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
        .args(["--cipher", "aes-xts-plain64", "--sector-size", "4096"])
        .arg("--volume-key-file")
        .arg(dir.path().join("vk"))
        .arg("--key-file")
        .arg(&pw)
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Volume {
        _dir: dir,
        img,
        pw,
        vk,
    }
}

fn rw(img: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap()
}

fn opens(img: &Path, key: &Path) -> bool {
    Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(key)
        .arg(img)
        .status()
        .unwrap()
        .success()
}

#[test]
fn cryptsetup_opens_what_is_enrolled_and_the_old_keyslot_stays() {
    let v = volume();
    let derived = [0x42u8; 64];
    let dk = v.img.with_file_name("dk");
    std::fs::write(&dk, derived).unwrap();
    assert!(!opens(&v.img, &dk));
    let id = enrol(&rw(&v.img), &v.vk, &derived, 1000).unwrap();
    assert_eq!(id, "1");
    assert!(opens(&v.img, &dk), "cryptsetup opens the enrolled keyslot");
    assert!(opens(&v.img, &v.pw), "the passphrase keyslot still opens");
    // cryptsetup's own view: the keyslot and the token.
    let dump = cryptsetup(&["luksDump"], &v.img);
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(TOKEN_TYPE), "{dump}");
    // This module opens it too, and cryptsetup's keyslot.
    let f = rw(&v.img);
    let h = Headers::read(&f).unwrap();
    assert_eq!(h.own_keyslots(), ["1"]);
    assert_eq!(&open(&f, &h, "1", &derived).unwrap()[..], &v.vk[..]);
    assert_eq!(&open(&f, &h, "0", b"passphrase").unwrap()[..], &v.vk[..]);
    assert!(open(&f, &h, "1", &[0x43u8; 64]).is_err());
    assert!(open(&f, &h, "0", b"wrong").is_err());

    // Enrolled again (another key): one keyslot of ours, the old one gone.
    let again = [0x17u8; 64];
    let id = enrol(&rw(&v.img), &v.vk, &again, 1000).unwrap();
    let h = Headers::read(&f).unwrap();
    assert_eq!(h.own_keyslots(), std::slice::from_ref(&id));
    let dk2 = v.img.with_file_name("dk2");
    std::fs::write(&dk2, again).unwrap();
    assert!(opens(&v.img, &dk2));
    assert!(!opens(&v.img, &dk));

    // Removed: cryptsetup no longer opens it; the passphrase still does;
    // a repair finds nothing to repair.
    assert_eq!(remove(&rw(&v.img)).unwrap(), [id]);
    assert!(!opens(&v.img, &dk2));
    assert!(opens(&v.img, &v.pw));
    assert!(Headers::read(&f).unwrap().own_keyslots().is_empty());
    let dump = cryptsetup(&["luksDump"], &v.img);
    assert!(!String::from_utf8_lossy(&dump.stdout).contains(TOKEN_TYPE));
    assert!(remove(&rw(&v.img)).unwrap().is_empty());
}

#[test]
fn a_wrong_volume_key_or_a_damaged_header_enrols_nothing() {
    let v = volume();
    let before = std::fs::read(&v.img).unwrap();
    let e = enrol(&rw(&v.img), &[0u8; 64], &[1u8; 64], 1000).unwrap_err();
    assert!(e.to_string().contains("volume-key digest"), "{e}");
    assert!(matches!(
        enrol(&rw(&v.img), &v.vk[..32], &[1u8; 64], 1000),
        Err(KeyslotError::KeySize(32))
    ));
    assert!(std::fs::read(&v.img).unwrap() == before, "nothing written");
    // The secondary header damaged: refused until repaired.
    let f = rw(&v.img);
    f.write_all_at(b"x", 0x4000 + 5000).unwrap();
    let e = enrol(&f, &v.vk, &[1u8; 64], 1000).unwrap_err();
    assert!(e.to_string().contains("cryptsetup repair"), "{e}");
}
