//! The kernel hashes table QEMU writes into the firmware's
//! SNP_KERNEL_HASHES page (`-kernel`/`-initrd`/`-append` with
//! `kernel-hashes=on`): SHA-256 of each, in a GUIDed table.
//!
//! Files are hashed streaming, so memory stays flat whatever the initrd
//! size, and kernel and initrd are hashed on two threads.

use std::io::{ErrorKind, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::firmware::guid_le;
use super::{MeasureError, PAGE_SIZE};

const TABLE_GUID: [u8; 16] = guid_le("9438d606-4f22-4cc9-b479-a793d411fd21");
const KERNEL_GUID: [u8; 16] = guid_le("4de79437-abd2-427f-b835-d5b172d2045b");
const INITRD_GUID: [u8; 16] = guid_le("44baf731-3a2f-4bd7-9af1-41e29169781d");
const CMDLINE_GUID: [u8; 16] = guid_le("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");

const ENTRY_LEN: usize = 16 + 2 + 32;
const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// The table padded to a 16-byte multiple, as QEMU lays it out.
pub(crate) const PADDED_TABLE_LEN: usize = (TABLE_LEN + 15) & !15;

/// SHA-256 digests of what QEMU loads next to the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelHashes {
    pub kernel: [u8; 32],
    pub initrd: [u8; 32],
    pub cmdline: [u8; 32],
}

impl KernelHashes {
    /// Hashes the files (an absent initrd hashes as empty) and the command
    /// line, which QEMU hashes with its terminating NUL.
    pub fn compute(
        kernel: &Path,
        initrd: Option<&Path>,
        cmdline: &str,
        max_kernel: u64,
        max_initrd: u64,
    ) -> Result<Self, MeasureError> {
        let (kernel, initrd) = std::thread::scope(|s| {
            let initrd = s.spawn(move || match initrd {
                Some(p) => sha256_file(p, max_initrd),
                None => Ok(Sha256::digest([]).into()),
            });
            let kernel = sha256_file(kernel, max_kernel);
            let initrd = initrd.join().unwrap_or(Err(MeasureError::Internal(
                "initrd hashing thread panicked",
            )));
            (kernel, initrd)
        });
        let mut h = Sha256::new();
        h.update(cmdline.as_bytes());
        h.update([0u8]);
        Ok(KernelHashes {
            kernel: kernel?,
            initrd: initrd?,
            cmdline: h.finalize().into(),
        })
    }

    /// The padded table: header, then the cmdline, initrd and kernel
    /// entries, each `guid ‖ u16 length ‖ sha256`.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(&TABLE_GUID);
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.into_iter().enumerate() {
            let e = &mut t[18 + i * ENTRY_LEN..18 + (i + 1) * ENTRY_LEN];
            e[..16].copy_from_slice(&guid);
            e[16..18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            e[18..].copy_from_slice(hash);
        }
        t
    }

    /// The page QEMU measures: zeros with the table at `offset`. `None`
    /// when the table would cross the page end.
    pub fn page(&self, offset: usize) -> Option<[u8; PAGE_SIZE]> {
        let end = offset.checked_add(PADDED_TABLE_LEN)?;
        let mut page = [0u8; PAGE_SIZE];
        page.get_mut(offset..end)?.copy_from_slice(&self.table());
        Some(page)
    }
}

/// Streams a file through SHA-256, refusing to read more than `max` bytes.
fn sha256_file(path: &Path, max: u64) -> Result<[u8; 32], MeasureError> {
    let io = |error| MeasureError::Io {
        path: path.to_owned(),
        error,
    };
    let (mut file, _) = super::open_bounded(path, max)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        total += n as u64;
        if total > max {
            return Err(super::too_large(path, max));
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        let h = KernelHashes {
            kernel: [1; 32],
            initrd: [2; 32],
            cmdline: [3; 32],
        };
        let t = h.table();
        assert_eq!((TABLE_LEN, PADDED_TABLE_LEN), (168, 176));
        assert_eq!(&t[16..18], &[168, 0]);
        assert_eq!(&t[18..34], &CMDLINE_GUID);
        assert_eq!(&t[34..36], &[50, 0]);
        assert_eq!(&t[36..68], &[3; 32]);
        assert_eq!(&t[68 + 18..68 + 50], &[2; 32]);
        assert_eq!(&t[118 + 18..168], &[1; 32]);
        assert_eq!(&t[168..], &[0; 8]);
        let page = h.page(0xc00).unwrap();
        assert_eq!(&page[0xc00..0xc00 + 176], &t[..]);
        assert!(h.page(PAGE_SIZE - 175).is_none());
        assert!(h.page(usize::MAX).is_none());
    }
}
