//! Offline unlock: the root volume opened without the network, by a LUKS2
//! keyslot of the agent's own ([`crate::luks::keyslot`]) whose passphrase
//! is a key the secure processor derives for this launch: rooted in the
//! VCEK and mixing the guest policy, image and family IDs, measurement and
//! reported TCB ([`FIELDS`]). Another kernel, initrd, command line,
//! policy, chip or TCB derives another key, the keyslot does not open, and
//! the agent attests online instead.
//!
//! The server decides: the agent enrols only when a signed release says
//! [`OfflineUnlock::Enrol`], and removes its keyslot when one says
//! [`OfflineUnlock::Remove`] (see `unlock`).

use std::fs::File;
use std::path::Path;

use snpguard::report::Report;
use snpguard_protocol::attest::OfflineUnlock;
use zeroize::Zeroizing;

use crate::console::say;
use crate::evidence::Source;
use crate::luks::keyslot;

/// GUEST_FIELD_SELECT of the derived key: guest policy (bit 0), image ID
/// (1), family ID (2), measurement (3) and TCB version (5).
pub const FIELDS: u64 = 0b10_1111;
/// PBKDF2 iterations of the keyslot: the passphrase is a full-entropy
/// 32-byte key, so stretching it adds nothing.
pub const ITERATIONS: u32 = 1000;

/// This launch's derived key.
pub struct DerivedKey(Zeroizing<[u8; 32]>);

impl DerivedKey {
    /// This launch's derived key, for the TCB its own report states.
    pub fn get(source: &Source) -> Result<DerivedKey, String> {
        let ev = source.get(&[0u8; 64]).map_err(|e| e.to_string())?;
        let report = Report::parse(&ev.report).map_err(|e| format!("the report: {e}"))?;
        source
            .derived_key(FIELDS, report.reported_tcb.0)
            .map(|k| DerivedKey(Zeroizing::new(k)))
            .map_err(|e| e.to_string())
    }
}

/// The volume key from the agent's keyslot on `device`, or `None` when
/// there is none or it does not open with this launch's key (a keyslot
/// that opens yields a key checked against the volume-key digest).
pub fn try_unlock(key: &DerivedKey, device: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let f = File::open(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let h = keyslot::Headers::read(&f).map_err(|e| e.to_string())?;
    for id in h.own_keyslots() {
        match keyslot::open(&f, &h, &id, &key.0[..]) {
            Ok(vk) => return Ok(Some(vk)),
            Err(e) => say!("the offline keyslot does not open for this launch ({e})"),
        }
    }
    Ok(None)
}

/// Enrols `key` for `volume_key` on `device` (a previous keyslot of the
/// agent's is replaced); the keyslot id.
pub fn enrol(key: &DerivedKey, device: &Path, volume_key: &[u8]) -> Result<String, String> {
    let f = open_rw(device)?;
    keyslot::enrol(&f, volume_key, &key.0[..], ITERATIONS).map_err(|e| e.to_string())
}

/// Removes the agent's offline keyslots from `device`; their ids.
pub fn remove(device: &Path) -> Result<Vec<String>, String> {
    let f = open_rw(device)?;
    keyslot::remove(&f).map_err(|e| e.to_string())
}

fn open_rw(device: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format!("{}: {e}", device.display()))
}

/// Carries out a signed release's `directive` on the root `device` after
/// an online unlock with `volume_key`. `opened`: this launch's keyslot
/// already opened this boot. `key`: this launch's derived key, when the
/// source gives one. Failures are reported and do not fail the boot (the
/// key released online is good); the next online boot tries again.
pub fn follow(
    directive: Option<OfflineUnlock>,
    key: Option<&DerivedKey>,
    opened: bool,
    device: &Path,
    volume_key: &[u8],
) {
    match (directive, key) {
        (None, _) => {}
        (Some(OfflineUnlock::Enrol), _) if opened => {
            say!("offline unlock: this launch's keyslot is enrolled");
        }
        (Some(OfflineUnlock::Enrol), Some(key)) => match enrol(key, device, volume_key) {
            Ok(id) => say!(
                "offline unlock: enrolled keyslot {id} for this launch's chip-derived key"
            ),
            Err(e) => say!("offline unlock: enrolling failed ({e}); the next online boot tries again"),
        },
        (Some(OfflineUnlock::Enrol), None) => {
            say!("offline unlock: allowed, but this platform derives no key");
        }
        (Some(OfflineUnlock::Remove), _) => match remove(device) {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => say!(
                "offline unlock: the record does not allow it; removed keyslot(s) {}",
                ids.join(", ")
            ),
            Err(e) => say!("offline unlock: removing the keyslot failed ({e}); the next online boot tries again"),
        },
    }
}

#[cfg(all(test, feature = "simulator"))]
mod tests {
    use super::*;
    use snpguard::certs::Product;
    use snpguard_testkit::sim::{LaunchValues, SimLaunch, SimPlatform, SimTcb};

    fn blob(dir: &Path, name: &str, p: &SimPlatform, measurement: u8) -> Source {
        let values = LaunchValues {
            policy: 0x30000,
            vmpl: 0,
            measurement: [measurement; 48],
            image_id: [1; 16],
            family_id: [2; 16],
            guest_svn: 0,
            id_key_digest: [3; 48],
            author_key_digest: [4; 48],
        };
        let launch = SimLaunch::new(p, &[9u8; 64], &values).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, launch.to_json().unwrap()).unwrap();
        Source::Simulated(path)
    }

    #[test]
    fn the_same_launch_unlocks_offline_and_another_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let tcb = SimTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0,
        };
        let p = SimPlatform::generate(Product::Genoa, tcb, &[9u8; 64]).unwrap();
        let v = keyslot::tests::volume();
        let (img, vk) = (&v.img, &v.vk[..]);
        let opens = |key_file: &Path| {
            keyslot::tests::cryptsetup(
                &[
                    "open",
                    "--test-passphrase",
                    "--key-file",
                    key_file.to_str().unwrap(),
                ],
                img,
            )
            .status
            .success()
        };
        let this = DerivedKey::get(&blob(dir.path(), "this.json", &p, 0xaa)).unwrap();
        assert!(
            try_unlock(&this, img).unwrap().is_none(),
            "nothing enrolled yet"
        );
        // No directive, or one that forbids it: nothing is enrolled.
        follow(None, Some(&this), false, img, vk);
        follow(Some(OfflineUnlock::Remove), Some(&this), false, img, vk);
        assert!(try_unlock(&this, img).unwrap().is_none());
        follow(Some(OfflineUnlock::Enrol), Some(&this), false, img, vk);
        assert_eq!(&try_unlock(&this, img).unwrap().unwrap()[..], vk);
        // The host's cryptsetup opens the keyslot with the derived key.
        std::fs::write(dir.path().join("derived"), &this.0[..]).unwrap();
        assert!(
            opens(&dir.path().join("derived")),
            "cryptsetup opens the offline keyslot"
        );
        // Another measurement (another initrd, say): no offline unlock;
        // enrolling it replaces this launch's keyslot.
        let other = DerivedKey::get(&blob(dir.path(), "other.json", &p, 0xbb)).unwrap();
        assert!(try_unlock(&other, img).unwrap().is_none());
        follow(Some(OfflineUnlock::Enrol), Some(&other), false, img, vk);
        assert!(try_unlock(&this, img).unwrap().is_none());
        assert_eq!(&try_unlock(&other, img).unwrap().unwrap()[..], vk);
        // Turned off: the next online release removes it, and the
        // passphrase keyslot stays.
        follow(Some(OfflineUnlock::Remove), Some(&other), false, img, vk);
        assert!(try_unlock(&other, img).unwrap().is_none());
        assert!(keyslot::Headers::read(&File::open(img).unwrap())
            .unwrap()
            .own_keyslots()
            .is_empty());
        assert!(opens(&v.pw), "the passphrase keyslot still opens");
    }
}
