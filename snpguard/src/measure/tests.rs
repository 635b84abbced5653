//! Validation and error paths. Known answers are in tests/core/measure_kat.rs,
//! agreement with the reference tool in snpguardctl/tests/cli/measure_diff.rs.

use std::path::{Path, PathBuf};

use super::*;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "snpguard-measure-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn input(ovmf: &Path) -> MeasureInput {
    MeasureInput {
        ovmf: ovmf.to_owned(),
        ovmf_hash: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 1,
        vcpu_type: VcpuType::EpycV4,
        guest_features: 1,
        vmm_type: VmmType::Qemu,
    }
}

fn amdsev(s: &Scratch) -> Option<PathBuf> {
    let data = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    Some(s.file("amdsev.fd", &data))
}

#[test]
fn digest_hex_round_trip_and_errors() {
    let s = "ab".repeat(48);
    let d: LaunchDigest = s.parse().unwrap();
    assert_eq!(d.to_string(), s);
    assert_eq!(d.as_bytes(), &[0xab; 48]);
    assert_eq!("AB".repeat(48).parse::<LaunchDigest>().unwrap(), d);
    for bad in [
        "",
        "ab",
        &"ab".repeat(47),
        &"ab".repeat(49),
        &"zz".repeat(48),
    ] {
        let e = bad.parse::<LaunchDigest>().unwrap_err().to_string();
        assert!(e.contains("96 hexadecimal digits"), "{e}");
    }
    assert!("zz"
        .repeat(48)
        .parse::<LaunchDigest>()
        .unwrap_err()
        .to_string()
        .contains("non-hex"));
}

#[test]
fn garbage_firmware_is_rejected() {
    let s = Scratch::new("garbage");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let cases: [(&str, &[u8]); 4] = [
        ("random", &random),
        ("zeros", &[0u8; 8192]),
        ("short", &random[..100]),
        ("empty", &[]),
    ];
    for (name, data) in cases {
        let p = s.file(name, data);
        match launch_digest(&input(&p)) {
            Err(MeasureError::Firmware { path, error }) => {
                assert_eq!(path, p);
                assert!(
                    matches!(
                        error,
                        FirmwareError::NoFooterTable | FirmwareError::BadSize { .. }
                    ),
                    "{name}: {error}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn truncated_and_corrupted_ovmf_never_panic() {
    let Some(data) = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin") else {
        return;
    };
    let s = Scratch::new("trunc");
    let kernel = s.file("k", b"kernel");
    // Dropping the head keeps the footer: still parses (and measures).
    // Dropping the tail loses the footer: must be an error.
    for cut in [1usize, 16, 32, 50, 100, 2048, 4095] {
        let p = s.file("t", &data[..data.len() - cut]);
        assert!(launch_digest(&input(&p)).is_err(), "cut {cut}");
    }
    for at in (data.len() - 600..data.len()).step_by(3) {
        let mut d = data.clone();
        d[at] = d[at].wrapping_add(0x41);
        let p = s.file("c", &d);
        let mut i = input(&p);
        i.vcpus = 3;
        let _ = launch_digest(&i);
        i.kernel = Some(kernel.clone());
        let _ = launch_digest(&i);
    }
}

#[test]
fn kernel_needs_kernel_hashes_section() {
    let Some(data) = snpguard_testkit::testdata::read("measurement/ovmf_OvmfX64_suffix.bin") else {
        return;
    };
    let s = Scratch::new("nohashes");
    let fw = s.file("ovmfx64.fd", &data);
    let mut i = input(&fw);
    launch_digest(&i).expect("OvmfX64 without a kernel measures");
    i.kernel = Some(s.file("k", b"kernel"));
    let e = launch_digest(&i).unwrap_err();
    assert!(matches!(e, MeasureError::NoKernelHashes { .. }), "{e:?}");
    assert!(e.to_string().contains("use an OVMF AmdSev build"), "{e}");
}

#[test]
fn initrd_and_cmdline_need_a_kernel() {
    let s = Scratch::new("needkernel");
    let fw = s.file("fw", b"");
    let mut i = input(&fw);
    i.initrd = Some(s.file("i", b""));
    assert!(matches!(
        launch_digest(&i),
        Err(MeasureError::InitrdWithoutKernel)
    ));
    i.initrd = None;
    i.cmdline = Some("console=ttyS0".into());
    assert!(matches!(
        launch_digest(&i),
        Err(MeasureError::CmdlineWithoutKernel)
    ));
}

#[test]
fn cmdline_checks() {
    let s = Scratch::new("cmdline");
    let Some(fw) = amdsev(&s) else { return };
    let mut i = input(&fw);
    i.kernel = Some(s.file("k", b""));
    i.cmdline = Some("console=ttyS0\0evil=1".into());
    assert!(matches!(
        launch_digest(&i),
        Err(MeasureError::CmdlineNul { offset: 13 })
    ));
    i.cmdline = Some("x".repeat(MAX_CMDLINE_LEN + 1));
    assert!(matches!(
        launch_digest(&i),
        Err(MeasureError::CmdlineTooLong { .. })
    ));
    i.cmdline = Some("x".repeat(MAX_CMDLINE_LEN));
    launch_digest(&i).unwrap();
    // Absent and empty command lines are the same measurement.
    i.cmdline = Some(String::new());
    let empty = launch_digest(&i).unwrap();
    i.cmdline = None;
    assert_eq!(launch_digest(&i).unwrap(), empty);
    // Whitespace is measured as given (no trimming).
    i.cmdline = Some(" ".into());
    assert_ne!(launch_digest(&i).unwrap(), empty);
}

#[test]
fn vcpu_bounds() {
    let s = Scratch::new("vcpus");
    let Some(fw) = amdsev(&s) else { return };
    let mut i = input(&fw);
    for bad in [0, MAX_VCPUS + 1, u32::MAX] {
        i.vcpus = bad;
        let e = launch_digest(&i).unwrap_err();
        assert!(matches!(e, MeasureError::VcpuCount(n) if n == bad), "{e:?}");
        assert!(e.to_string().contains("use 1 to 4096"));
    }
    i.vcpus = MAX_VCPUS;
    let max = launch_digest(&i).unwrap();
    i.vcpus = MAX_VCPUS - 1;
    assert_ne!(launch_digest(&i).unwrap(), max);
}

#[test]
fn unreadable_files_are_named() {
    let s = Scratch::new("unreadable");
    let missing = s.0.join("no-such-firmware.fd");
    let e = launch_digest(&input(&missing)).unwrap_err();
    assert!(matches!(&e, MeasureError::Io { path, .. } if *path == missing));
    assert!(e.to_string().contains("no-such-firmware.fd"), "{e}");

    let e = launch_digest(&input(&s.0)).unwrap_err();
    assert!(matches!(e, MeasureError::NotAFile { .. }), "{e:?}");

    let Some(fw) = amdsev(&s) else { return };
    let mut i = input(&fw);
    i.kernel = Some(s.0.join("no-such-kernel"));
    let e = launch_digest(&i).unwrap_err();
    assert!(e.to_string().contains("no-such-kernel"), "{e}");
    i.kernel = Some(s.file("k", b""));
    i.initrd = Some(s.0.join("no-such-initrd"));
    let e = launch_digest(&i).unwrap_err();
    assert!(e.to_string().contains("no-such-initrd"), "{e}");
}

#[test]
fn oversized_files_are_refused() {
    let s = Scratch::new("oversize");
    let big = s.0.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FIRMWARE_SIZE + 4096).unwrap(); // sparse
    let e = launch_digest(&input(&big)).unwrap_err();
    assert!(matches!(e, MeasureError::TooLarge { max, .. } if max == MAX_FIRMWARE_SIZE));

    let Some(fw) = amdsev(&s) else { return };
    f.set_len(MAX_KERNEL_SIZE + 1).unwrap();
    let mut i = input(&fw);
    i.kernel = Some(big.clone());
    let e = launch_digest(&i).unwrap_err();
    assert!(matches!(e, MeasureError::TooLarge { max, .. } if max == MAX_KERNEL_SIZE));
}

#[test]
fn inputs_all_change_the_digest() {
    let s = Scratch::new("sensitivity");
    let Some(fw) = amdsev(&s) else { return };
    let mut base = input(&fw);
    base.kernel = Some(s.file("k", b"kernel"));
    base.initrd = Some(s.file("i", b"initrd"));
    base.cmdline = Some("a".into());
    let d0 = launch_digest(&base).unwrap();
    type Change<'a> = Box<dyn Fn(&mut MeasureInput) + 'a>;
    let variants: Vec<Change> = vec![
        Box::new(|i| i.kernel = Some(s.file("k2", b"kernel2"))),
        Box::new(|i| i.initrd = None),
        Box::new(|i| i.cmdline = Some("b".into())),
        Box::new(|i| i.vcpus = 2),
        Box::new(|i| i.vcpu_type = VcpuType::EpycMilan),
        Box::new(|i| i.guest_features = 0x21),
        Box::new(|i| i.vmm_type = VmmType::Ec2),
        Box::new(|i| i.ovmf_hash = Some([7; 48])),
    ];
    for (n, change) in variants.iter().enumerate() {
        let mut i = base.clone();
        change(&mut i);
        assert_ne!(launch_digest(&i).unwrap(), d0, "variant {n}");
    }
    // Same-signature vCPU models measure the same.
    let mut i = base.clone();
    i.vcpu_type = VcpuType::Epyc;
    assert_eq!(launch_digest(&i).unwrap(), d0);
}
