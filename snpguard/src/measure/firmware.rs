//! The OVMF firmware image, as far as SEV-SNP measurement needs it: the
//! GUIDed footer table at the end of the image and the SEV metadata
//! section list it points to.
//!
//! Layout (edk2 `OvmfPkg/ResetVector`): the table ends 32 bytes before the
//! end of the image with a footer entry `{ u16 size, guid }`; entries are
//! laid out backwards from there, each `data ‖ u16 size ‖ guid`, `size`
//! counting data and header. Every offset read from the image is checked
//! before use; a malformed image yields [`FirmwareError`], never a panic.

use std::collections::HashMap;

use super::PAGE_SIZE;

/// What is wrong with a firmware image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    /// Empty or not a whole number of 4 KiB pages.
    #[error("firmware size {size} is not a non-zero multiple of 4096 bytes; is it an OVMF image?")]
    BadSize {
        /// Size of the image in bytes.
        size: usize,
    },
    /// No OVMF footer table GUID where edk2 puts it.
    #[error("firmware has no OVMF footer table; it is not an OVMF build")]
    NoFooterTable,
    /// The footer table or one of its entries does not fit the image.
    #[error("firmware footer table is malformed: {0}")]
    MalformedTable(&'static str),
    /// The footer table has no SEV metadata entry.
    #[error(
        "firmware has no SEV metadata; it cannot launch an SEV-SNP guest \
         (use an OVMF AmdSev build, or OvmfX64 from edk2-stable202205 or later)"
    )]
    NoSevMetadata,
    /// The SEV metadata header or its section list is malformed.
    #[error("firmware SEV metadata is malformed: {0}")]
    MalformedMetadata(&'static str),
    /// A metadata section of a type this tool does not know.
    #[error("firmware SEV metadata has unknown section type {0:#x}")]
    UnknownSectionType(u32),
    /// A metadata section that is not whole pages.
    #[error(
        "firmware SEV metadata section at {gpa:#x} has size {size:#x}, not a multiple of 4096"
    )]
    UnalignedSection {
        /// Guest physical address of the section.
        gpa: u32,
        /// Its size in bytes.
        size: u32,
    },
    /// No SEV-ES reset block (the AP entry point).
    #[error("firmware has no SEV-ES reset block; it is not an SEV-capable OVMF build")]
    NoResetBlock,
    /// The sections measured page by page cover more than
    /// [`MAX_MEASURED_SECTION_BYTES`]: each page is a hash to compute, so
    /// an image claiming gigabytes would keep the measurement busy for
    /// minutes. Real OVMF builds describe well under a megabyte.
    #[error(
        "firmware SEV metadata sections cover {bytes:#x} bytes of pages to measure, more than \
         the {limit:#x} an OVMF build describes; is it an OVMF image?"
    )]
    SectionsTooLarge {
        /// The paged sections' total size.
        bytes: u64,
        /// [`MAX_MEASURED_SECTION_BYTES`].
        limit: u64,
    },
}

/// At most this many bytes of zero, CAA and hash-table pages in the SEV
/// metadata sections (64 MiB: 16384 pages; edk2's AmdSev build describes
/// about 0.1 MiB).
pub const MAX_MEASURED_SECTION_BYTES: u64 = 64 << 20;

const FOOTER_GUID: [u8; 16] = guid_le("96b582de-1fb2-45f7-baea-a366c55a082d");
const SEV_HASH_TABLE_RV_GUID: [u8; 16] = guid_le("7255371f-3a3b-4b04-927b-1da6efa8d454");
const SEV_ES_RESET_BLOCK_GUID: [u8; 16] = guid_le("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
const SEV_METADATA_GUID: [u8; 16] = guid_le("dc886566-984a-4798-a75e-5585a7bf67cc");

const ENTRY_HEADER: usize = 18;
const METADATA_HEADER: usize = 16;
const METADATA_ITEM: usize = 12;

/// Kinds of SEV metadata section (edk2 `OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionKind {
    SecMem,
    Secrets,
    Cpuid,
    SvsmCaa,
    KernelHashes,
}

/// One SEV metadata section: a guest-physical range the VMM prepares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Section {
    pub gpa: u32,
    pub size: u32,
    pub kind: SectionKind,
}

impl Section {
    /// Measured page by page (its size a multiple of 4 KiB): the others
    /// are one page each whatever their size says.
    pub fn is_paged(&self) -> bool {
        matches!(
            self.kind,
            SectionKind::SecMem | SectionKind::SvsmCaa | SectionKind::KernelHashes
        )
    }
}

/// The parsed firmware: the image itself plus what its tables say.
#[derive(Debug)]
pub(crate) struct Firmware {
    pub data: Vec<u8>,
    pub sections: Vec<Section>,
    /// The SEV-ES reset EIP for application processors.
    pub reset_eip: u32,
    /// Guest-physical address of the kernel hashes table, when present.
    pub hashes_table_gpa: Option<u32>,
}

impl Firmware {
    pub fn parse(data: Vec<u8>) -> Result<Self, FirmwareError> {
        if data.is_empty() || data.len() % PAGE_SIZE != 0 {
            return Err(FirmwareError::BadSize { size: data.len() });
        }
        let table = footer_table(&data)?;
        let reset_eip = table
            .get(&SEV_ES_RESET_BLOCK_GUID)
            .map(|d| le_u32(d, 0).ok_or(FirmwareError::MalformedTable("short reset block")))
            .transpose()?
            .ok_or(FirmwareError::NoResetBlock)?;
        let hashes_table_gpa = table
            .get(&SEV_HASH_TABLE_RV_GUID)
            .map(|d| le_u32(d, 0).ok_or(FirmwareError::MalformedTable("short hash table entry")))
            .transpose()?;
        let meta = table
            .get(&SEV_METADATA_GUID)
            .ok_or(FirmwareError::NoSevMetadata)?;
        let sections = sev_metadata(&data, meta)?;
        Ok(Firmware {
            data,
            sections,
            reset_eip,
            hashes_table_gpa,
        })
    }

    /// Guest-physical address of the image: it ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        (1u64 << 32) - self.data.len() as u64
    }

    pub fn has(&self, kind: SectionKind) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }
}

/// Walks the GUIDed table backwards from the footer. Later (lower) entries
/// with the same GUID replace earlier ones, as in the reference tool.
fn footer_table(data: &[u8]) -> Result<HashMap<[u8; 16], &[u8]>, FirmwareError> {
    let footer_at = data
        .len()
        .checked_sub(32 + ENTRY_HEADER)
        .ok_or(FirmwareError::NoFooterTable)?;
    let (size, guid) = entry_header(&data[footer_at..footer_at + ENTRY_HEADER]);
    if guid != FOOTER_GUID {
        return Err(FirmwareError::NoFooterTable);
    }
    let table_size =
        usize::from(size)
            .checked_sub(ENTRY_HEADER)
            .ok_or(FirmwareError::MalformedTable(
                "footer size below header size",
            ))?;
    let start = footer_at
        .checked_sub(table_size)
        .ok_or(FirmwareError::MalformedTable("table larger than the image"))?;
    let mut rest = &data[start..footer_at];
    let mut table = HashMap::new();
    while rest.len() >= ENTRY_HEADER {
        let (size, guid) = entry_header(&rest[rest.len() - ENTRY_HEADER..]);
        let size = usize::from(size);
        if size < ENTRY_HEADER {
            return Err(FirmwareError::MalformedTable(
                "entry size below header size",
            ));
        }
        // An entry claiming more than what is left is cut at the table
        // start, exactly as the reference implementation slices it.
        let begin = rest.len().saturating_sub(size);
        table.insert(guid, &rest[begin..rest.len() - ENTRY_HEADER]);
        rest = &rest[..begin];
    }
    Ok(table)
}

fn entry_header(b: &[u8]) -> (u16, [u8; 16]) {
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&b[2..ENTRY_HEADER]);
    (u16::from_le_bytes([b[0], b[1]]), guid)
}

fn sev_metadata(data: &[u8], entry: &[u8]) -> Result<Vec<Section>, FirmwareError> {
    let bad = FirmwareError::MalformedMetadata;
    let offset_from_end = le_u32(entry, 0).ok_or(bad("short metadata entry"))? as usize;
    let start = data
        .len()
        .checked_sub(offset_from_end)
        .ok_or(bad("header offset beyond the image start"))?;
    let header = data
        .get(start..start + METADATA_HEADER)
        .ok_or(bad("header beyond the image end"))?;
    if &header[..4] != b"ASEV" {
        return Err(bad("wrong signature (expected ASEV)"));
    }
    let size = le_u32(header, 4).unwrap_or(0) as usize;
    if le_u32(header, 8) != Some(1) {
        return Err(bad("unsupported version (expected 1)"));
    }
    let count = le_u32(header, 12).unwrap_or(0) as usize;
    let items_end = start.saturating_add(size).min(data.len());
    let items = data
        .get(start + METADATA_HEADER..items_end)
        .ok_or(bad("size smaller than its header"))?;
    if count > items.len() / METADATA_ITEM {
        return Err(bad("more sections than fit its size"));
    }
    let sections = items
        .chunks_exact(METADATA_ITEM)
        .take(count)
        .map(|item| {
            let gpa = le_u32(item, 0).unwrap_or(0);
            let size = le_u32(item, 4).unwrap_or(0);
            let kind = match le_u32(item, 8).unwrap_or(0) {
                1 => SectionKind::SecMem,
                2 => SectionKind::Secrets,
                3 => SectionKind::Cpuid,
                4 => SectionKind::SvsmCaa,
                0x10 => SectionKind::KernelHashes,
                other => return Err(FirmwareError::UnknownSectionType(other)),
            };
            let section = Section { gpa, size, kind };
            if section.is_paged() && size as usize % PAGE_SIZE != 0 {
                return Err(FirmwareError::UnalignedSection { gpa, size });
            }
            Ok(section)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes: u64 = sections
        .iter()
        .filter(|s| s.is_paged())
        .map(|s| u64::from(s.size))
        .sum();
    if bytes > MAX_MEASURED_SECTION_BYTES {
        return Err(FirmwareError::SectionsTooLarge {
            bytes,
            limit: MAX_MEASURED_SECTION_BYTES,
        });
    }
    Ok(sections)
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A GUID in its textual form to the mixed-endian byte order EFI uses.
/// Only for constants: a malformed literal fails the build.
pub(crate) const fn guid_le(s: &str) -> [u8; 16] {
    let s = s.as_bytes();
    let mut be = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < s.len() {
        if s[i] != b'-' {
            let hi = hex_val(s[i]);
            let lo = hex_val(s[i + 1]);
            be[n] = (hi << 4) | lo;
            n += 1;
            i += 1;
        }
        i += 1;
    }
    [
        be[3], be[2], be[1], be[0], be[5], be[4], be[7], be[6], be[8], be[9], be[10], be[11],
        be[12], be[13], be[14], be[15],
    ]
}

const fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("GUID literals are lowercase hex"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_byte_order() {
        assert_eq!(hex::encode(FOOTER_GUID), "de82b596b21ff745baeaa366c55a082d");
    }

    fn fixture() -> Option<Vec<u8>> {
        snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
    }

    #[test]
    fn parses_amdsev_suffix() {
        let Some(data) = fixture() else { return };
        let fw = Firmware::parse(data).unwrap();
        assert!(fw.has(SectionKind::KernelHashes));
        assert!(fw.has(SectionKind::Secrets));
        assert!(fw.has(SectionKind::Cpuid));
        assert!(fw.hashes_table_gpa.is_some());
        assert_ne!(fw.reset_eip, 0);
    }

    #[test]
    fn ovmfx64_suffix_has_no_kernel_hashes() {
        let Some(data) = snpguard_testkit::testdata::read("measurement/ovmf_OvmfX64_suffix.bin")
        else {
            return;
        };
        let fw = Firmware::parse(data).unwrap();
        assert!(!fw.has(SectionKind::KernelHashes));
    }

    #[test]
    fn rejects_bad_sizes_and_garbage() {
        assert_eq!(
            Firmware::parse(Vec::new()).unwrap_err(),
            FirmwareError::BadSize { size: 0 }
        );
        assert_eq!(
            Firmware::parse(vec![0; 4095]).unwrap_err(),
            FirmwareError::BadSize { size: 4095 }
        );
        assert_eq!(
            Firmware::parse(vec![0xa5; 8192]).unwrap_err(),
            FirmwareError::NoFooterTable
        );
    }

    /// Every single-byte corruption of the table region and every
    /// truncation of the fixture must be an error or a parse, never a panic.
    #[test]
    fn corruptions_never_panic() {
        let Some(data) = fixture() else { return };
        for at in (data.len() - 1024)..data.len() {
            for v in [0x00, 0xff, 0x7f, 0x80] {
                let mut d = data.clone();
                d[at] = v;
                let _ = Firmware::parse(d);
            }
        }
        for keep in (0..data.len()).step_by(97) {
            let _ = Firmware::parse(data[data.len() - keep..].to_vec());
        }
    }

    /// A one-page image with a reset block and SEV metadata listing
    /// `sections` (gpa, size, type), built from the layout above.
    fn synthetic(sections: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut data = vec![0u8; PAGE_SIZE];
        let mut header = b"ASEV".to_vec();
        let size = METADATA_HEADER + METADATA_ITEM * sections.len();
        for v in [size as u32, 1, sections.len() as u32] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        for (gpa, size, kind) in sections {
            for v in [gpa, size, kind] {
                header.extend_from_slice(&v.to_le_bytes());
            }
        }
        data[..header.len()].copy_from_slice(&header);
        let entry = |payload: u32, guid: [u8; 16]| {
            let mut e = payload.to_le_bytes().to_vec();
            e.extend_from_slice(&((4 + ENTRY_HEADER) as u16).to_le_bytes());
            e.extend_from_slice(&guid);
            e
        };
        let mut table = entry(PAGE_SIZE as u32, SEV_METADATA_GUID);
        table.extend(entry(0xffff_f000, SEV_ES_RESET_BLOCK_GUID));
        table.extend_from_slice(&((table.len() + ENTRY_HEADER) as u16).to_le_bytes());
        table.extend_from_slice(&FOOTER_GUID);
        let end = PAGE_SIZE - 32;
        data[end - table.len()..end].copy_from_slice(&table);
        data
    }

    #[test]
    fn sections_covering_more_than_the_limit_are_refused() {
        let ok =
            Firmware::parse(synthetic(&[(0x80_0000, 0x9000, 1), (0x80_9000, 0x1000, 2)])).unwrap();
        assert_eq!(ok.sections.len(), 2);
        assert_eq!(ok.reset_eip, 0xffff_f000);
        let limit = MAX_MEASURED_SECTION_BYTES as u32;
        assert!(Firmware::parse(synthetic(&[(0, limit, 1)])).is_ok());
        // Secrets and CPUID pages are one page whatever their size says.
        assert!(Firmware::parse(synthetic(&[(0, limit, 1), (0, u32::MAX, 2)])).is_ok());
        // A fuzzer's firmware (fuzz/regressions/ovmf_metadata) kept the
        // measurement busy for seconds per input with one such section.
        for sections in [
            vec![(0, 0xffff_f000, 1)],
            vec![(0, limit, 1), (0, 0x1000, 4)],
            vec![(0, limit / 2, 1), (0x1000, limit / 2, 0x10), (0, 0x1000, 1)],
        ] {
            let bytes = sections.iter().map(|s| u64::from(s.1)).sum();
            assert_eq!(
                Firmware::parse(synthetic(&sections)).unwrap_err(),
                FirmwareError::SectionsTooLarge {
                    bytes,
                    limit: MAX_MEASURED_SECTION_BYTES
                },
                "{sections:x?}"
            );
        }
    }

    #[test]
    fn missing_metadata_and_reset_block_are_named() {
        let Some(data) = fixture() else { return };
        let table = footer_table(&data).unwrap();
        // Rename the metadata GUID, then the reset block GUID, in place.
        for (guid, want) in [
            (SEV_METADATA_GUID, FirmwareError::NoSevMetadata),
            (SEV_ES_RESET_BLOCK_GUID, FirmwareError::NoResetBlock),
        ] {
            assert!(table.contains_key(&guid));
            let mut d = data.clone();
            let pos = d.windows(16).position(|w| w == guid).unwrap();
            d[pos] ^= 0xff;
            assert_eq!(Firmware::parse(d).unwrap_err(), want);
        }
    }
}
