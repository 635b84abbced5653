//! Known answers from virtee/sev-snp-measure's own test suite
//! (`tests/test_guest.py`), listed in ../shared/testdata/snp/README.md:
//! the edk2-stable202405 AmdSev footer page, vCPU type EPYC-v4, empty
//! kernel and initrd files, QEMU.

use std::path::PathBuf;

use snpguard::measure::{launch_digest, LaunchDigest, MeasureInput, VcpuType, VmmType};

const AMDSEV_OVMF_HASH: &str = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74";

const KATS: [(&str, u64, &str); 4] = [
    ("", 0x21, "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"),
    ("", 0x1, "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"),
    ("console=ttyS0 loglevel=7", 0x21, "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    ("console=ttyS0 loglevel=7", 0x1, "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
];

/// Empty kernel/initrd files in a per-test scratch directory.
struct Empties {
    dir: PathBuf,
}

impl Empties {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("snpguard-kat-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel"), b"").unwrap();
        std::fs::write(dir.join("initrd"), b"").unwrap();
        Empties { dir }
    }
}

impl Drop for Empties {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn input(ovmf: PathBuf, e: &Empties, cmdline: &str, features: u64) -> MeasureInput {
    MeasureInput {
        ovmf,
        ovmf_hash: None,
        kernel: Some(e.dir.join("kernel")),
        initrd: Some(e.dir.join("initrd")),
        cmdline: Some(cmdline.to_owned()),
        vcpus: 1,
        vcpu_type: VcpuType::EpycV4,
        guest_features: features,
        vmm_type: VmmType::Qemu,
    }
}

#[test]
fn amdsev_suffix_known_answers() {
    let Some(dir) = snpguard_testkit::testdata::dir() else {
        return;
    };
    let e = Empties::new("plain");
    let ovmf = dir.join("measurement/ovmf_AmdSev_suffix.bin");
    for (cmdline, features, want) in KATS {
        let got = launch_digest(&input(ovmf.clone(), &e, cmdline, features)).unwrap();
        assert_eq!(
            got.to_string(),
            want,
            "cmdline {cmdline:?} features {features:#x}"
        );
    }
}

#[test]
fn precomputed_ovmf_hash_gives_the_same_answers() {
    let Some(dir) = snpguard_testkit::testdata::dir() else {
        return;
    };
    let e = Empties::new("hash");
    let ovmf = dir.join("measurement/ovmf_AmdSev_suffix.bin");
    let hash: LaunchDigest = AMDSEV_OVMF_HASH.parse().unwrap();
    for (cmdline, features, want) in KATS {
        let mut i = input(ovmf.clone(), &e, cmdline, features);
        i.ovmf_hash = Some(*hash.as_bytes());
        assert_eq!(launch_digest(&i).unwrap().to_string(), want);
        // A wrong hash must change the answer: the seed is really used.
        let mut wrong = *hash.as_bytes();
        wrong[47] ^= 1;
        i.ovmf_hash = Some(wrong);
        assert_ne!(launch_digest(&i).unwrap().to_string(), want);
    }
}
