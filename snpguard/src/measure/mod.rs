//! SEV-SNP launch digests, byte-identical to `sev-snp-measure --mode snp`
//! (PyPI 0.0.13), the reference every test compares to.
//!
//! The digest chains SHA-384 over one PAGE_INFO record per page the VMM
//! hands to SNP_LAUNCH_UPDATE: the firmware image (or a precomputed hash
//! of it), the firmware's SEV metadata sections (zero pages, secrets,
//! CPUID, the kernel hashes page), then one VMSA per vCPU. The VMSA
//! contents come from the `sev` crate; firmware parsing and file hashing
//! are ours, so that malformed input is an error rather than a panic and
//! multi-gigabyte initrds are streamed.

mod firmware;
mod gctx;
mod hashes;
mod vcpu;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sev::measurement::vmsa::{GuestFeatures, VMSA};
use sev::parser::ByteParser;

pub use firmware::FirmwareError;
pub use vcpu::{UnknownVcpuType, UnknownVmmType, VcpuType, VmmType};

use firmware::{Firmware, SectionKind};
use gctx::{Gctx, PageType};
use hashes::KernelHashes;

pub(crate) const PAGE_SIZE: usize = 4096;

/// Largest firmware image accepted. It is mapped below 4 GiB next to
/// other flash; real OVMF builds are 2–4 MiB.
pub const MAX_FIRMWARE_SIZE: u64 = 64 << 20;
/// Largest kernel image accepted.
pub const MAX_KERNEL_SIZE: u64 = 512 << 20;
/// Largest initrd accepted.
pub const MAX_INITRD_SIZE: u64 = 4 << 30;
/// Longest kernel command line accepted, in bytes (the x86 kernel keeps
/// at most 2048; QEMU passes it whole).
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Most vCPUs accepted (KVM's `KVM_MAX_VCPUS` on x86).
pub const MAX_VCPUS: u32 = 4096;

/// Offset of RDX in the VMSA (AMD APM vol. 2, table B-4).
const VMSA_RDX: usize = 0x310;
/// RDX at reset on EC2: family 6 signature, as `sev-snp-measure` has it.
const EC2_RESET_RDX: u64 = 0x600;

/// A 48-byte SEV-SNP launch digest (the report's MEASUREMENT).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaunchDigest([u8; 48]);

impl LaunchDigest {
    /// Wraps raw digest bytes.
    pub const fn new(bytes: [u8; 48]) -> Self {
        LaunchDigest(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 48] {
        &self.0
    }
}

impl fmt::Display for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for LaunchDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LaunchDigest({self})")
    }
}

/// A string that is not 96 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a launch digest is 96 hexadecimal digits (48 bytes), got {len} characters{detail}")]
pub struct ParseDigestError {
    len: usize,
    detail: &'static str,
}

impl FromStr for LaunchDigest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 48];
        hex::decode_to_slice(s, &mut out).map_err(|e| ParseDigestError {
            len: s.chars().count(),
            detail: match e {
                hex::FromHexError::InvalidHexCharacter { .. } => " with a non-hex character",
                _ => "",
            },
        })?;
        Ok(LaunchDigest(out))
    }
}

impl From<[u8; 48]> for LaunchDigest {
    fn from(bytes: [u8; 48]) -> Self {
        LaunchDigest(bytes)
    }
}

/// Everything that determines an SEV-SNP guest's launch digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasureInput {
    /// The OVMF firmware image. Always read: its SEV metadata says which
    /// pages the VMM measures, even with a precomputed hash.
    pub ovmf: PathBuf,
    /// A precomputed hash of the firmware pages (`sev-snp-measure --mode
    /// snp:ovmf-hash`), used instead of hashing `ovmf`'s contents.
    pub ovmf_hash: Option<[u8; 48]>,
    /// Kernel passed to QEMU with `-kernel` (needs `kernel-hashes=on` and
    /// firmware with an SNP_KERNEL_HASHES section).
    pub kernel: Option<PathBuf>,
    /// Initrd (`-initrd`); only with a kernel. Absent hashes as empty.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (`-append`); only with a kernel. Absent and
    /// empty are the same.
    pub cmdline: Option<String>,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// The QEMU vCPU model.
    pub vcpu_type: VcpuType,
    /// SEV features in each VMSA (`sev-snp-measure --guest-features`,
    /// usually 0x1).
    pub guest_features: u64,
    /// The hypervisor flavour.
    pub vmm_type: VmmType,
}

/// Why a launch digest could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (in the message, so not a `source`).
        error: std::io::Error,
    },
    /// A path that is a directory or other non-regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A file larger than its bound.
    #[error("{} is larger than {max} bytes; is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound in bytes.
        max: u64,
    },
    /// The firmware is not a usable OVMF image.
    #[error("{}: {error}", path.display())]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// What is wrong with it.
        error: FirmwareError,
    },
    /// A kernel was given but the firmware cannot measure it.
    #[error(
        "{} has no SNP_KERNEL_HASHES section, so QEMU cannot measure the kernel, \
         initrd and command line; use an OVMF AmdSev build (OvmfPkg/AmdSev/AmdSevX64.dsc)",
        path.display()
    )]
    NoKernelHashes {
        /// The firmware file.
        path: PathBuf,
    },
    /// The kernel hashes table does not fit its page.
    #[error("{}: kernel hashes table at {gpa:#x} crosses a page boundary", path.display())]
    BadHashesTable {
        /// The firmware file.
        path: PathBuf,
        /// Where the firmware says the table is.
        gpa: u32,
    },
    /// Firmware without an AP reset address asked to start several vCPUs.
    #[error("{}: firmware has no AP reset address, so it can only start 1 vCPU", path.display())]
    NoApResetAddress {
        /// The firmware file.
        path: PathBuf,
    },
    /// An initrd without a kernel.
    #[error("an initrd needs a kernel; pass the kernel too")]
    InitrdWithoutKernel,
    /// A command line without a kernel.
    #[error("a kernel command line needs a kernel; pass the kernel too")]
    CmdlineWithoutKernel,
    /// A NUL byte would end the command line early in the guest.
    #[error("the kernel command line contains a NUL byte at offset {offset}")]
    CmdlineNul {
        /// Byte offset of the first NUL.
        offset: usize,
    },
    /// A command line longer than [`MAX_CMDLINE_LEN`].
    #[error("the kernel command line is {len} bytes; at most {MAX_CMDLINE_LEN} are accepted")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A vCPU count of 0 or above [`MAX_VCPUS`].
    #[error("vCPU count {0} is out of range; use 1 to {MAX_VCPUS}")]
    VcpuCount(u32),
    /// The `sev` crate failed to encode a VMSA.
    #[error("encoding the VMSA: {0}")]
    Vmsa(std::io::Error),
    /// A bug, not an input problem.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Computes the SEV-SNP launch digest of a guest, as `sev-snp-measure
/// --mode snp` does.
///
/// Differences, all refusals of inputs the reference would measure
/// anyway: firmware without SEV metadata (an SNP guest cannot boot it),
/// a command line with NUL, and out-of-bounds sizes and vCPU counts.
pub fn launch_digest(input: &MeasureInput) -> Result<LaunchDigest, MeasureError> {
    validate(input)?;
    let fw_path = &input.ovmf;
    let firmware = read_bounded(fw_path, MAX_FIRMWARE_SIZE)?;
    let fw = Firmware::parse(firmware).map_err(|error| MeasureError::Firmware {
        path: fw_path.clone(),
        error,
    })?;
    if input.vcpus > 1 && fw.reset_eip == 0 {
        return Err(MeasureError::NoApResetAddress {
            path: fw_path.clone(),
        });
    }

    // Kernel-related checks come before the (slow) hashing.
    let hashes_page_offset = match &input.kernel {
        None => None,
        Some(_) => {
            if !fw.has(SectionKind::KernelHashes) {
                return Err(MeasureError::NoKernelHashes {
                    path: fw_path.clone(),
                });
            }
            let gpa = fw
                .hashes_table_gpa
                .ok_or_else(|| MeasureError::NoKernelHashes {
                    path: fw_path.clone(),
                })?;
            let offset = gpa as usize & (PAGE_SIZE - 1);
            if offset + hashes::PADDED_TABLE_LEN > PAGE_SIZE {
                return Err(MeasureError::BadHashesTable {
                    path: fw_path.clone(),
                    gpa,
                });
            }
            for s in &fw.sections {
                if s.kind == SectionKind::KernelHashes && s.size as usize != PAGE_SIZE {
                    return Err(MeasureError::Firmware {
                        path: fw_path.clone(),
                        error: FirmwareError::MalformedMetadata(
                            "SNP_KERNEL_HASHES section is not exactly one page",
                        ),
                    });
                }
            }
            Some(offset)
        }
    };
    let kernel_page = match (&input.kernel, hashes_page_offset) {
        (Some(kernel), Some(offset)) => {
            let hashes = KernelHashes::compute(
                kernel,
                input.initrd.as_deref(),
                input.cmdline.as_deref().unwrap_or(""),
                MAX_KERNEL_SIZE,
                MAX_INITRD_SIZE,
            )?;
            Some(
                hashes
                    .page(offset)
                    .ok_or(MeasureError::Internal("hash table offset checked above"))?,
            )
        }
        _ => None,
    };

    let mut gctx = match input.ovmf_hash {
        Some(seed) => Gctx::with_seed(seed),
        None => {
            let mut g = Gctx::new();
            g.update_data(fw.gpa(), &fw.data);
            g
        }
    };

    for s in &fw.sections {
        let gpa = u64::from(s.gpa);
        match s.kind {
            SectionKind::SecMem | SectionKind::SvsmCaa => gctx.update_zero(gpa, s.size),
            SectionKind::Secrets => gctx.update_empty(PageType::Secrets, gpa),
            SectionKind::Cpuid if input.vmm_type != VmmType::Ec2 => {
                gctx.update_empty(PageType::Cpuid, gpa)
            }
            SectionKind::Cpuid => {}
            SectionKind::KernelHashes => match &kernel_page {
                Some(page) => gctx.update_data(gpa, page),
                None => gctx.update_zero(gpa, s.size),
            },
        }
    }
    // EC2 measures the CPUID pages last.
    if input.vmm_type == VmmType::Ec2 {
        for s in fw.sections.iter().filter(|s| s.kind == SectionKind::Cpuid) {
            gctx.update_empty(PageType::Cpuid, u64::from(s.gpa));
        }
    }

    let (bsp, ap) = vmsa_pages(input, fw.reset_eip)?;
    gctx.update_vmsa(&bsp);
    if input.vcpus > 1 {
        let ap_hash = gctx::sha384(&ap);
        for _ in 1..input.vcpus {
            gctx.update_vmsa_hash(&ap_hash);
        }
    }
    Ok(LaunchDigest(gctx.finish()))
}

fn validate(input: &MeasureInput) -> Result<(), MeasureError> {
    if input.vcpus == 0 || input.vcpus > MAX_VCPUS {
        return Err(MeasureError::VcpuCount(input.vcpus));
    }
    if input.kernel.is_none() {
        if input.initrd.is_some() {
            return Err(MeasureError::InitrdWithoutKernel);
        }
        if input.cmdline.is_some() {
            return Err(MeasureError::CmdlineWithoutKernel);
        }
    }
    if let Some(cmdline) = &input.cmdline {
        if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
            return Err(MeasureError::CmdlineNul { offset });
        }
        if cmdline.len() > MAX_CMDLINE_LEN {
            return Err(MeasureError::CmdlineTooLong { len: cmdline.len() });
        }
    }
    Ok(())
}

/// The bootstrap processor's and the application processors' VMSA pages.
fn vmsa_pages(
    input: &MeasureInput,
    reset_eip: u32,
) -> Result<([u8; PAGE_SIZE], [u8; PAGE_SIZE]), MeasureError> {
    let features = GuestFeatures::from_bytes(&input.guest_features.to_le_bytes())
        .map_err(MeasureError::Vmsa)?;
    let vmsa = VMSA::new(
        u64::from(reset_eip),
        input.vcpu_type.to_sev(),
        input.vmm_type.to_sev(),
        Some(u64::from(input.vcpus)),
        features,
    );
    let pages = vmsa
        .pages(if reset_eip == 0 { 1 } else { 2 })
        .map_err(|e| MeasureError::Vmsa(std::io::Error::other(e.to_string())))?;
    let mut out = [[0u8; PAGE_SIZE]; 2];
    for (dst, src) in out.iter_mut().zip(&pages) {
        if src.len() != PAGE_SIZE {
            return Err(MeasureError::Internal("VMSA page is not 4096 bytes"));
        }
        dst.copy_from_slice(src);
        // The sev crate leaves RDX at 0 on EC2; sev-snp-measure (and EC2)
        // start with the family-6 signature there.
        if input.vmm_type == VmmType::Ec2 {
            dst[VMSA_RDX..VMSA_RDX + 8].copy_from_slice(&EC2_RESET_RDX.to_le_bytes());
        }
    }
    let [bsp, ap] = out;
    Ok((bsp, ap))
}

/// Opens a regular file of at most `max` bytes; returns it with its size.
/// Readers must still stop at `max`: the file can grow after the check.
pub(crate) fn open_bounded(path: &Path, max: u64) -> Result<(File, u64), MeasureError> {
    let io = |error| MeasureError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(MeasureError::NotAFile {
            path: path.to_owned(),
        });
    }
    if meta.len() > max {
        return Err(too_large(path, max));
    }
    Ok((file, meta.len()))
}

pub(crate) fn too_large(path: &Path, max: u64) -> MeasureError {
    MeasureError::TooLarge {
        path: path.to_owned(),
        max,
    }
}

/// Reads a whole file, refusing more than `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, MeasureError> {
    let (file, len) = open_bounded(path, max)?;
    let mut data = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|error| MeasureError::Io {
            path: path.to_owned(),
            error,
        })?;
    if data.len() as u64 > max {
        return Err(too_large(path, max));
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
