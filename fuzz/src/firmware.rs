//! The OVMF image a registration measures: its GUIDed footer table and
//! SEV metadata, read by `snpguard::measure` (the daemon measures what
//! an operator or a remote host hands it).

use std::path::PathBuf;
use std::sync::OnceLock;

use sha2::{Digest, Sha384};
use snpguard::measure::{launch_digest, MeasureError, MeasureInput, VcpuType, VmmType};

use crate::fixtures::{self, Input};

const PAGE: usize = 4096;

/// The files a measurement reads, under the process's scratch directory.
struct Files {
    firmware: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = fixtures::scratch().join("measure");
        std::fs::create_dir_all(&dir).expect("scratch");
        let f = Files {
            firmware: dir.join("ovmf.fd"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd"),
        };
        std::fs::write(&f.kernel, b"MZ a kernel").expect("kernel");
        std::fs::write(&f.initrd, b"070701 an initrd").expect("initrd");
        f
    })
}

/// The hash of the firmware pages as the PSP chains them (SNP ABI,
/// PAGE_INFO: ld, SHA-384 of the page, length 0x70, page type 1, GPA),
/// written here from the specification as an oracle for the library's.
fn firmware_hash(image: &[u8]) -> [u8; 48] {
    let mut ld = [0u8; 48];
    let base = (1u64 << 32) - image.len() as u64;
    for (i, page) in image.chunks_exact(PAGE).enumerate() {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&ld);
        info[48..96].copy_from_slice(&Sha384::digest(page));
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = 1;
        info[104..112].copy_from_slice(&(base + (i * PAGE) as u64).to_le_bytes());
        ld = Sha384::digest(info).into();
    }
    ld
}

/// `ovmf_metadata`: the first byte holds the settings (vCPUs 1-4, EC2 or
/// QEMU, with a kernel or not), the next the guest features; the rest is
/// the end of a firmware image, front-padded with zeros to whole pages.
/// A measurement never fails as an internal error, and one that succeeds
/// is the same whether the firmware pages are hashed by the library or
/// given as the precomputed hash of the specification's chaining.
pub fn ovmf_metadata(data: &[u8]) {
    let mut input = Input::new(data);
    let settings = input.byte();
    let features = u64::from(input.byte());
    let tail = input.rest();
    let pages = tail.len().div_ceil(PAGE).max(1);
    let mut image = vec![0u8; pages * PAGE - tail.len()];
    image.extend_from_slice(tail);
    let f = files();
    std::fs::write(&f.firmware, &image).expect("writing the firmware");
    let with_kernel = settings & 0x08 != 0;
    let mut measure = MeasureInput {
        ovmf: f.firmware.clone(),
        ovmf_hash: None,
        kernel: with_kernel.then(|| f.kernel.clone()),
        initrd: with_kernel.then(|| f.initrd.clone()),
        cmdline: with_kernel.then(|| "console=ttyS0".to_owned()),
        vcpus: u32::from(settings & 0x03) + 1,
        vcpu_type: "EPYC-v4".parse::<VcpuType>().expect("a known vCPU type"),
        guest_features: features,
        vmm_type: if settings & 0x04 != 0 {
            VmmType::Ec2
        } else {
            VmmType::Qemu
        },
    };
    let digest = match launch_digest(&measure) {
        Ok(d) => d,
        Err(MeasureError::Internal(what)) => panic!("internal error: {what}"),
        Err(_) => return,
    };
    fixtures::reached("ovmf_metadata");
    measure.ovmf_hash = Some(firmware_hash(&image));
    let precomputed = launch_digest(&measure).expect("the same firmware with its hash");
    assert_eq!(
        precomputed, digest,
        "the firmware pages are not measured as the specification chains them"
    );
}

/// The last 4 KiB of real edk2 AmdSev and OvmfX64 builds (the measurement
/// known answers' fixtures) under several settings, and broken tails.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = vec![vec![0, 1], vec![0xff, 0xff, 0xde, 0x82, 0xb5, 0x96]];
    for name in ["ovmf_AmdSev_suffix.bin", "ovmf_OvmfX64_suffix.bin"] {
        let Some(tail) = fixtures::read(&format!("measurement/{name}")) else {
            continue;
        };
        for (settings, features) in [(0x00, 0x01), (0x08, 0x21), (0x0f, 0x01), (0x05, 0x00)] {
            out.push([&[settings, features][..], &tail].concat());
        }
        // The table cut in half, and one byte of the footer changed.
        out.push([&[0, 1][..], &tail[tail.len() / 2..]].concat());
        let mut bad = tail.clone();
        let at = bad.len() - 32 - 18;
        bad[at] ^= 0xff;
        out.push([&[0, 1][..], &bad].concat());
    }
    out
}
