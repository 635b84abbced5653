//! dm-crypt through the device-mapper ioctls on /dev/mapper/control, as
//! cryptsetup does it: DM_DEV_CREATE (with a cryptsetup-style UUID),
//! DM_TABLE_LOAD of one `crypt` target, DM_DEV_SUSPEND without the
//! suspend flag to resume (activate); DM_DEV_REMOVE when any step fails.
//! The table carries the key in hex: it is written once into a buffer
//! of its exact final size (never grown, so no reallocation leaves a copy
//! behind) and every buffer holding it is zeroized.

#![allow(
    unsafe_code,
    reason = "the device-mapper ioctls on /dev/mapper/control"
)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The control device.
pub const CONTROL: &str = "/dev/mapper/control";

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
/// sizeof(struct dm_ioctl).
const HEADER: usize = 312;
/// sizeof(struct dm_target_spec).
const SPEC: usize = 40;
/// The interface version this code speaks (major must match the kernel's).
const VERSION: [u32; 3] = [4, 0, 0];

const DM_VERSION: u8 = 0;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// Wipe kernel buffers that held the table (it carries the key).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn request(nr: u8) -> u64 {
    (3u64 << 30) | ((HEADER as u64) << 16) | (0xfd << 8) | nr as u64
}

/// A failed device-mapper step.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("opening {CONTROL}: {0} (is the dm-crypt / device-mapper module loaded?)")]
    Control(std::io::Error),
    #[error("device-mapper {step}: {source}")]
    Ioctl {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What to map.
pub struct CryptTarget<'a> {
    /// dm name (`/dev/mapper/<name>`).
    pub name: &'a str,
    /// LUKS UUID (with dashes).
    pub luks_uuid: &'a str,
    /// dm-crypt cipher spec.
    pub cipher: &'a str,
    /// The volume key.
    pub key: &'a [u8],
    /// Backing device major:minor.
    pub major: u32,
    pub minor: u32,
    /// Data offset in bytes.
    pub offset: u64,
    /// Backing device size in bytes.
    pub device_size: u64,
    /// Encryption sector size.
    pub sector_size: u32,
}

/// cryptsetup's dm UUID for a LUKS2 mapping.
pub fn dm_uuid(luks_uuid: &str, name: &str) -> String {
    format!(
        "CRYPT-LUKS2-{}-{name}",
        luks_uuid.replace('-', "").to_lowercase()
    )
}

/// The table line `CIPHER KEYHEX 0 MAJ:MIN OFFSET [1 sector_size:N]`,
/// NUL-terminated as DM_TABLE_LOAD takes it. The parts without the key
/// are formatted first; the line is then assembled in one zeroizing
/// buffer allocated at its final length, the key hex-encoded straight into
/// it.
pub fn table_params(t: &CryptTarget<'_>) -> Zeroizing<Vec<u8>> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let head = format!("{} ", t.cipher);
    let mut tail = format!(" 0 {}:{} {}", t.major, t.minor, t.offset / 512);
    if t.sector_size != 512 {
        tail.push_str(&format!(" 1 sector_size:{}", t.sector_size));
    }
    let len = head.len() + 2 * t.key.len() + tail.len() + 1;
    let mut p = Zeroizing::new(Vec::with_capacity(len));
    let start = p.as_ptr();
    p.extend_from_slice(head.as_bytes());
    for b in t.key {
        p.push(HEX[usize::from(b >> 4)]);
        p.push(HEX[usize::from(b & 15)]);
    }
    p.extend_from_slice(tail.as_bytes());
    p.push(0);
    debug_assert!(p.len() == len && std::ptr::eq(start, p.as_ptr()));
    p
}

/// Length of the mapping in 512-byte sectors: what follows the data
/// offset, rounded down to whole encryption sectors.
pub fn length_sectors(t: &CryptTarget<'_>) -> Result<u64, DmError> {
    let data = t
        .device_size
        .checked_sub(t.offset)
        .filter(|d| *d >= u64::from(t.sector_size))
        .ok_or_else(|| {
            DmError::Invalid(format!(
                "the device ({} bytes) is not larger than the data offset ({})",
                t.device_size, t.offset
            ))
        })?;
    let per = u64::from(t.sector_size / 512);
    Ok(data / 512 / per * per)
}

/// A struct dm_ioctl followed by `data`, in one zeroizing buffer.
fn message(name: &str, uuid: &str, flags: u32, data: &[u8]) -> Zeroizing<Vec<u8>> {
    let size = (HEADER + data.len()).div_ceil(8) * 8;
    let mut b = Zeroizing::new(vec![0u8; size.max(HEADER + 16 * 1024)]);
    let total = b.len() as u32;
    for (i, v) in VERSION.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    b[12..16].copy_from_slice(&total.to_ne_bytes()); // data_size
    b[16..20].copy_from_slice(&(HEADER as u32).to_ne_bytes()); // data_start
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    b[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes());
    b[HEADER..HEADER + data.len()].copy_from_slice(data);
    b
}

/// The control device, open.
struct Control(std::fs::File);

impl Control {
    fn open() -> Result<Control, DmError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map(Control)
            .map_err(DmError::Control)
    }

    /// Issues one device-mapper ioctl with `buf` (a struct dm_ioctl with
    /// its payload; the kernel writes the answer back into it).
    fn ioctl(&self, step: &'static str, nr: u8, buf: &mut [u8]) -> Result<(), DmError> {
        assert!(buf.len() >= HEADER);
        // SAFETY: the request number encodes the size of struct dm_ioctl;
        // `buf` is at least that long, its data_size field equals its
        // length (set by `message`), so the kernel reads and writes only
        // inside it; the fd is an open /dev/mapper/control.
        let rc = unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                request(nr) as libc::Ioctl,
                buf.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(DmError::Ioctl {
                step,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn remove(&self, name: &str) {
        let mut m = message(name, "", 0, &[]);
        let _ = self.ioctl("remove", DM_DEV_REMOVE, &mut m);
    }
}

/// The kernel's encoded dev_t (huge_encode_dev) as major, minor.
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Creates and activates the mapping; returns /dev/mapper/<name>,
/// creating the node if udev has not.
pub fn create_crypt(t: &CryptTarget<'_>) -> Result<PathBuf, DmError> {
    if t.name.len() >= DM_NAME_LEN {
        return Err(DmError::Invalid(format!(
            "dm name {:?} is too long",
            t.name
        )));
    }
    let uuid = dm_uuid(t.luks_uuid, t.name);
    if uuid.len() >= DM_UUID_LEN {
        return Err(DmError::Invalid(format!("dm uuid {uuid:?} is too long")));
    }
    let length = length_sectors(t)?;
    let ctl = Control::open()?;
    let mut m = message("", "", 0, &[]);
    ctl.ioctl("version", DM_VERSION, &mut m)?;

    let mut m = message(t.name, &uuid, 0, &[]);
    ctl.ioctl("create", DM_DEV_CREATE, &mut m)?;
    let dev = u64::from_ne_bytes(m[40..48].try_into().unwrap_or([0; 8]));

    let result = load_and_resume(&ctl, t, length);
    if let Err(e) = result {
        ctl.remove(t.name);
        return Err(e);
    }
    let node = Path::new("/dev/mapper").join(t.name);
    if !node.exists() {
        if let Err(e) = mknod(&node, decode_dev(dev)) {
            ctl.remove(t.name);
            return Err(DmError::Invalid(format!(
                "creating {}: {e}",
                node.display()
            )));
        }
    }
    Ok(node)
}

/// The DM_TABLE_LOAD message: one `crypt` target spec (struct
/// dm_target_spec: sector_start, length, status, next, target_type[16])
/// followed by its NUL-terminated parameters.
fn table_message(t: &CryptTarget<'_>, length: u64) -> Zeroizing<Vec<u8>> {
    let params = table_params(t);
    let spec_len = (SPEC + params.len()).div_ceil(8) * 8;
    let mut data = Zeroizing::new(vec![0u8; spec_len]);
    data[0..8].copy_from_slice(&0u64.to_ne_bytes()); // sector_start
    data[8..16].copy_from_slice(&length.to_ne_bytes());
    data[16..20].copy_from_slice(&0i32.to_ne_bytes()); // status
    data[20..24].copy_from_slice(&(spec_len as u32).to_ne_bytes()); // next
    data[24..29].copy_from_slice(b"crypt");
    data[SPEC..SPEC + params.len()].copy_from_slice(&params);
    let mut m = message(t.name, "", DM_SECURE_DATA_FLAG, &data);
    m[20..24].copy_from_slice(&1u32.to_ne_bytes()); // target_count
    m
}

/// udev flags cryptsetup (libdevmapper) passes with a resume, in the upper
/// half of event_nr (the uevent's DM_COOKIE): PRIMARY_SOURCE (0x40) makes
/// the dm udev rules treat the device as fully set up (the /dev/mapper
/// link, SYSTEMD_READY), DISABLE_LIBRARY_FALLBACK (0x20) leaves nodes to
/// udev. The lower half (a semaphore id) is zero: nothing waits on it.
const UDEV_COOKIE: u32 = (0x40 | 0x20) << 16;

fn load_and_resume(ctl: &Control, t: &CryptTarget<'_>, length: u64) -> Result<(), DmError> {
    let mut m = table_message(t, length);
    ctl.ioctl("table load", DM_TABLE_LOAD, &mut m)?;
    let mut m = message(t.name, "", 0, &[]);
    m[32..36].copy_from_slice(&UDEV_COOKIE.to_ne_bytes()); // event_nr
    ctl.ioctl("resume", DM_DEV_SUSPEND, &mut m)
}

fn mknod(node: &Path, (major, minor): (u32, u32)) -> std::io::Result<()> {
    use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
    std::fs::create_dir_all("/dev/mapper")?;
    match mknodat(
        CWD,
        node,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        makedev(major, minor),
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: &[u8]) -> CryptTarget<'_> {
        CryptTarget {
            name: "snpguard_root",
            luks_uuid: "0B6A3C3E-6c1c-4b5e-9d8a-3d7e2f1a9c00",
            cipher: "aes-xts-plain64",
            key,
            major: 7,
            minor: 3,
            offset: 16 << 20,
            device_size: (16 << 20) + 4096 * 10 + 1000,
            sector_size: 4096,
        }
    }

    #[test]
    fn uuid_and_table_like_cryptsetup() {
        let key = [0xabu8; 4];
        let t = target(&key);
        assert_eq!(
            dm_uuid(t.luks_uuid, t.name),
            "CRYPT-LUKS2-0b6a3c3e6c1c4b5e9d8a3d7e2f1a9c00-snpguard_root"
        );
        assert_eq!(
            &table_params(&t)[..],
            b"aes-xts-plain64 abababab 0 7:3 32768 1 sector_size:4096\0"
        );
        assert_eq!(length_sectors(&t).unwrap(), 80);
        let t512 = CryptTarget {
            sector_size: 512,
            ..target(&key)
        };
        assert_eq!(
            &table_params(&t512)[..],
            b"aes-xts-plain64 abababab 0 7:3 32768\0"
        );
        assert_eq!(length_sectors(&t512).unwrap(), 81);
        let tiny = CryptTarget {
            device_size: 1 << 20,
            ..target(&key)
        };
        assert!(length_sectors(&tiny).is_err());
    }

    #[test]
    fn the_table_is_built_in_one_buffer_of_its_final_size() {
        // Every byte value, both sector sizes, a cipher name longer than
        // any real one: the buffer is never grown (its capacity is exactly
        // what was asked for, so no reallocation left a copy of the key).
        let key: Vec<u8> = (0..=255u8).collect();
        for sector_size in [512, 4096] {
            let t = CryptTarget {
                key: &key,
                cipher: "capi:xts(aes)-plain64-and-a-long-tail",
                sector_size,
                ..target(&key)
            };
            let p = table_params(&t);
            assert_eq!(p.len(), p.capacity(), "sector size {sector_size}");
            let text = std::str::from_utf8(&p[..p.len() - 1]).unwrap();
            assert_eq!(text.split(' ').nth(1), Some(hex::encode(&key).as_str()));
            assert_eq!(p.last(), Some(&0));
        }
    }

    #[test]
    fn ioctl_numbers_and_dev_decoding() {
        // DM_VERSION as in <linux/dm-ioctl.h>: _IOWR(0xfd, 0, struct dm_ioctl).
        assert_eq!(request(DM_VERSION), 0xc138_fd00);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
        assert_eq!(decode_dev((253 << 8) | 5), (253, 5));
        assert_eq!(decode_dev((253 << 8) | 0x34 | (0x12 << 20)), (253, 0x1234));
    }

    #[test]
    fn table_load_layout() {
        let key = [0x11u8; 64];
        let t = target(&key);
        let m = table_message(&t, 80);
        let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
        assert_eq!(u32_at(20), 1, "target_count");
        assert_eq!(u32_at(28), DM_SECURE_DATA_FLAG, "flags");
        assert_eq!(&m[48..48 + t.name.len()], t.name.as_bytes());
        let spec = &m[HEADER..];
        assert_eq!(u64::from_ne_bytes(spec[0..8].try_into().unwrap()), 0);
        assert_eq!(u64::from_ne_bytes(spec[8..16].try_into().unwrap()), 80);
        assert_eq!(&spec[24..40], b"crypt\0\0\0\0\0\0\0\0\0\0\0");
        let want = format!(
            "aes-xts-plain64 {} 0 7:3 32768 1 sector_size:4096\0",
            "11".repeat(64)
        );
        assert_eq!(&spec[SPEC..SPEC + want.len()], want.as_bytes());
        let next = u32::from_ne_bytes(spec[20..24].try_into().unwrap()) as usize;
        assert!(next % 8 == 0 && next >= SPEC + want.len());
    }

    #[test]
    fn message_layout() {
        let m = message("n", "u", DM_SECURE_DATA_FLAG, b"xyz");
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 4);
        assert_eq!(
            u32::from_ne_bytes(m[12..16].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(
            u32::from_ne_bytes(m[16..20].try_into().unwrap()) as usize,
            HEADER
        );
        assert_eq!(m[48], b'n');
        assert_eq!(m[176], b'u');
        assert_eq!(&m[HEADER..HEADER + 3], b"xyz");
    }
}
