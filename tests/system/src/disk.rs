//! A LUKS2 disk image for the guest: an ext4 root holding a static
//! busybox and an init that prints a marker read from that root to the
//! console and powers off, under a volume key the test chooses.
//!
//! cryptsetup writes the LUKS2 header; the data segment is encrypted here
//! in userspace (AES-XTS-plain64, as dm-crypt does for LUKS2), so no
//! device-mapper is needed on the host (build machines and CI often lack
//! it). The guest's dm-crypt reading the root back is the check.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{io, run, HarnessError};

/// What the init on the decrypted root prints before the marker.
pub const MARKER_PREFIX: &str = "SNPGUARD-ROOT-MARKER:";

/// The static busybox (Debian's busybox-static) put into the root.
const BUSYBOX: &str = "/bin/busybox";
/// Size of the ext4 root.
const FS_BYTES: u64 = 16 << 20;
/// Room for the LUKS2 header (its default is 16 MiB) and the root.
const DISK_BYTES: u64 = 40 << 20;

/// The LUKS2 parameters the agent's configuration pins, read back from the
/// header cryptsetup wrote.
#[derive(Debug, Clone)]
pub struct LuksDisk {
    /// The image file (a virtio disk for QEMU).
    pub image: PathBuf,
    /// The header's UUID.
    pub uuid: String,
    /// dm-crypt cipher spec of segment 0.
    pub cipher: String,
    /// Volume key bytes.
    pub key_bytes: usize,
    /// Encryption sector size.
    pub sector_size: u32,
    /// Data offset in bytes.
    pub offset: u64,
    /// The marker the init prints.
    pub marker: String,
}

/// The encryption sector size.
pub const SECTOR_SIZE: usize = 4096;

impl LuksDisk {
    /// Makes `dir/disk.img` encrypted under `volume_key` (64 bytes,
    /// aes-xts-plain64) whose root prints `marker`.
    pub fn create(
        dir: &Path,
        volume_key: &[u8; 64],
        marker: &str,
    ) -> Result<LuksDisk, HarnessError> {
        let tree = dir.join("root-tree");
        for d in ["sbin", "bin", "etc", "proc", "sys", "dev", "run", "tmp"] {
            io(
                "creating",
                &tree.join(d),
                std::fs::create_dir_all(tree.join(d)),
            )?;
        }
        let busybox = io("reading", Path::new(BUSYBOX), std::fs::read(BUSYBOX))?;
        if !crate::initrd::is_static_elf(&busybox) {
            return Err(HarnessError::Fixture(format!(
                "{BUSYBOX} is not static: install busybox-static (scripts/setup-deps.sh)"
            )));
        }
        write_mode(&tree.join("bin/busybox"), &busybox, 0o755)?;
        write_mode(&tree.join("snpguard-marker"), marker.as_bytes(), 0o644)?;
        // The marker comes from a file on this root, so it is printed only
        // when the root was really decrypted and mounted.
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             read -r m < /snpguard-marker\n\
             echo \"{MARKER_PREFIX}$m\" > /dev/console\n\
             /bin/busybox sync\n\
             /bin/busybox poweroff -f\n"
        );
        write_mode(&tree.join("sbin/init"), init.as_bytes(), 0o755)?;
        // systemd in a dracut initrd refuses to switch to a root without
        // os-release ("does not seem to be an OS tree"), as a real root has.
        write_mode(
            &tree.join("etc/os-release"),
            b"ID=snpguard-test-root\nNAME=\"SnpGuard test root\"\n",
            0o644,
        )?;

        let fs = dir.join("root.ext4");
        run(Command::new("truncate")
            .arg("-s")
            .arg(FS_BYTES.to_string())
            .arg(&fs))?;
        // Blocks no smaller than the encryption sector: ext4 cannot mount
        // 1 KiB blocks (mkfs's choice for a small file system) on a device
        // with 4 KiB logical sectors.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "snpguard-root", "-d"])
            .arg(&tree)
            .arg(&fs))?;

        let image = dir.join("disk.img");
        run(Command::new("truncate")
            .arg("-s")
            .arg(DISK_BYTES.to_string())
            .arg(&image))?;
        let key_file = dir.join("volume.key");
        write_mode(&key_file, volume_key, 0o600)?;
        // cryptsetup needs one keyslot; the agent uses the volume key
        // itself. PBKDF2 at its minimum: a test image.
        let pass_file = dir.join("pass");
        let pass: [u8; 32] = rand::random();
        write_mode(&pass_file, hex::encode(pass).as_bytes(), 0o600)?;
        run(Command::new("cryptsetup")
            .args(["luksFormat", "--type", "luks2", "--batch-mode"])
            .args(["--cipher", "aes-xts-plain64"])
            .arg("--sector-size")
            .arg(SECTOR_SIZE.to_string())
            .arg("--key-size")
            .arg((volume_key.len() * 8).to_string())
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .arg("--volume-key-file")
            .arg(&key_file)
            .arg("--key-file")
            .arg(&pass_file)
            .arg(&image))?;

        let header = header_params(&image)?;
        if header.cipher != "aes-xts-plain64"
            || header.sector_size as usize != SECTOR_SIZE
            || header.key_bytes != volume_key.len()
        {
            return Err(HarnessError::Fixture(format!(
                "cryptsetup wrote {header:?}, not aes-xts-plain64 with {SECTOR_SIZE}-byte sectors"
            )));
        }
        let mut data = io("reading", &fs, std::fs::read(&fs))?;
        encrypt_xts_plain64(volume_key, &mut data);
        write_at(&image, header.offset, &data)?;
        Ok(LuksDisk {
            image,
            marker: marker.to_owned(),
            ..header
        })
    }
}

/// The parameters of segment 0 and the UUID, from cryptsetup's JSON dump.
fn header_params(image: &Path) -> Result<LuksDisk, HarnessError> {
    let out = run(Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(image))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| HarnessError::Fixture(format!("luksDump JSON: {e}")))?;
    let seg = &json["segments"]["0"];
    let bad =
        |what: &str| HarnessError::Fixture(format!("luksDump of {}: no {what}", image.display()));
    let offset = seg["offset"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("segment offset"))?;
    let cipher = seg["encryption"]
        .as_str()
        .ok_or_else(|| bad("encryption"))?
        .to_owned();
    let sector_size = seg["sector_size"]
        .as_u64()
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| bad("sector_size"))?;
    let key_bytes = json["keyslots"]
        .as_object()
        .and_then(|k| k.values().next())
        .and_then(|k| k["key_size"].as_u64())
        .and_then(|k| usize::try_from(k).ok())
        .ok_or_else(|| bad("keyslot key_size"))?;
    let uuid_out = run(Command::new("cryptsetup").arg("luksUUID").arg(image))?;
    let uuid = String::from_utf8_lossy(&uuid_out.stdout).trim().to_owned();
    Ok(LuksDisk {
        image: image.to_owned(),
        uuid,
        cipher,
        key_bytes,
        sector_size,
        offset,
        marker: String::new(),
    })
}

/// Encrypts `data` in place as dm-crypt's aes-xts-plain64 does for LUKS2
/// with [`SECTOR_SIZE`]-byte sectors. cryptsetup maps LUKS2 without
/// `iv_large_sectors` (its table is `… 1 sector_size:4096`), so the IV
/// still counts 512-byte sectors: encryption sector `n` of the data
/// segment has the tweak AES(K2, n * 8 as a little-endian 128-bit number),
/// the 64-byte key being K1 || K2 (IEEE 1619 XTS-AES-256; whole sectors,
/// no stealing).
pub fn encrypt_xts_plain64(key: &[u8; 64], data: &mut [u8]) {
    use aes::cipher::{BlockEncrypt, KeyInit};
    assert_eq!(data.len() % SECTOR_SIZE, 0, "whole sectors only");
    let k1 = aes::Aes256::new_from_slice(&key[..32]).expect("32-byte key");
    let k2 = aes::Aes256::new_from_slice(&key[32..]).expect("32-byte key");
    for (n, sector) in data.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        let mut t = [0u8; 16];
        let iv = (n * (SECTOR_SIZE / 512)) as u64;
        t[..8].copy_from_slice(&iv.to_le_bytes());
        k2.encrypt_block((&mut t).into());
        for block in sector.chunks_exact_mut(16) {
            for (b, x) in block.iter_mut().zip(t) {
                *b ^= x;
            }
            k1.encrypt_block(block.into());
            for (b, x) in block.iter_mut().zip(t) {
                *b ^= x;
            }
            // t *= alpha in GF(2^128), little-endian, x^128 + x^7 + x^2 + x + 1.
            let carry = t[15] >> 7;
            for i in (1..16).rev() {
                t[i] = (t[i] << 1) | (t[i - 1] >> 7);
            }
            t[0] = (t[0] << 1) ^ (carry * 0x87);
        }
    }
}

/// Writes `data` at byte `offset` of `path` (which must be that large).
fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), HarnessError> {
    use std::os::unix::fs::FileExt;
    let f = io(
        "opening",
        path,
        std::fs::OpenOptions::new().write(true).open(path),
    )?;
    io("writing", path, f.write_all_at(data, offset))?;
    io("syncing", path, f.sync_all())
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HarnessError> {
    use std::os::unix::fs::PermissionsExt;
    io("writing", path, std::fs::write(path, bytes))?;
    io(
        "chmod",
        path,
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
    )
}

#[cfg(test)]
mod tests {
    use super::{encrypt_xts_plain64, SECTOR_SIZE};
    use std::process::Command;

    /// Sector 5 of a random segment, encrypted here and by the
    /// `cryptography` package's AES-256-XTS (OpenSSL's) with the plain64
    /// IV of that sector in 512-byte units (40).
    #[test]
    fn xts_plain64_matches_openssl() {
        let mut key = [0u8; 64];
        let mut data = vec![0u8; 8 * SECTOR_SIZE];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut data);
        let dir = tempfile::tempdir().expect("temp dir");
        let plain = dir.path().join("sector");
        std::fs::write(&plain, &data[5 * SECTOR_SIZE..6 * SECTOR_SIZE]).expect("write");
        let script = "import sys\n\
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
            key = bytes.fromhex(sys.argv[1])\n\
            iv = (5 * 8).to_bytes(16, 'little')\n\
            e = Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor()\n\
            sys.stdout.buffer.write(e.update(open(sys.argv[2], 'rb').read()) + e.finalize())\n";
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(hex::encode(key))
            .arg(&plain)
            .output()
            .expect("python3 (python3-cryptography, scripts/setup-deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        encrypt_xts_plain64(&key, &mut data);
        assert_eq!(out.stdout, &data[5 * SECTOR_SIZE..6 * SECTOR_SIZE]);
    }
}
