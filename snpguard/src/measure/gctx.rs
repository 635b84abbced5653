//! The guest context's running launch digest (SNP ABI, SNP_LAUNCH_UPDATE:
//! PAGE_INFO structure): `ld' = SHA-384(ld ‖ contents ‖ len ‖ type ‖
//! imi ‖ vmpl perms ‖ reserved ‖ gpa)`.

use sha2::{Digest, Sha384};

use super::PAGE_SIZE;

/// The VMSA is recorded at GPA (u64)-1, page-aligned, bits above 51 clear.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Page types of SNP_LAUNCH_UPDATE that the measurement uses.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub(crate) enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Secrets = 5,
    Cpuid = 6,
}

pub(crate) fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

pub(crate) struct Gctx {
    ld: [u8; 48],
}

impl Gctx {
    pub fn new() -> Self {
        Gctx { ld: [0; 48] }
    }

    pub fn with_seed(seed: [u8; 48]) -> Self {
        Gctx { ld: seed }
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // is_imi, vmpl3/2/1 permissions and reserved stay zero.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = sha384(&info);
    }

    /// Measures whole pages of data starting at `gpa`; callers pass page
    /// multiples (a partial tail page would be ignored).
    pub fn update_data(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            self.update(
                PageType::Normal,
                gpa + (i * PAGE_SIZE) as u64,
                &sha384(page),
            );
        }
    }

    /// Measures `size` bytes of zero pages (size is a page multiple).
    pub fn update_zero(&mut self, gpa: u64, size: u32) {
        for i in 0..u64::from(size) / PAGE_SIZE as u64 {
            self.update(PageType::Zero, gpa + i * PAGE_SIZE as u64, &[0; 48]);
        }
    }

    /// Measures a page whose contents the firmware fills (secrets, CPUID).
    pub fn update_empty(&mut self, page_type: PageType, gpa: u64) {
        self.update(page_type, gpa, &[0; 48]);
    }

    pub fn update_vmsa(&mut self, page: &[u8; PAGE_SIZE]) {
        self.update_vmsa_hash(&sha384(page));
    }

    pub fn update_vmsa_hash(&mut self, hash: &[u8; 48]) {
        self.update(PageType::Vmsa, VMSA_GPA, hash);
    }

    pub fn finish(self) -> [u8; 48] {
        self.ld
    }
}
