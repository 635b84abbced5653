//! Differential test: `snpguardctl measure` against the reference,
//! `sev-snp-measure --mode snp` (PyPI 0.0.13), on randomized inputs.
//!
//! Reproduce a run with SNPGUARD_DIFF_SEED=<seed printed on failure>.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snpguard::measure::VcpuType;

use crate::common::{exists, run, snpguardctl, tool, Scratch};

const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Debug, Default)]
struct Case {
    ovmf: PathBuf,
    ovmf_hash: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    vcpus: u32,
    vcpu_type: String,
    guest_features: u64,
    ec2: bool,
}

impl Case {
    fn ours(&self) -> Command {
        let mut c = snpguardctl();
        c.arg("measure").arg("--ovmf").arg(&self.ovmf);
        if let Some(h) = &self.ovmf_hash {
            c.arg(format!("--ovmf-hash={h}"));
        }
        self.common(&mut c);
        c.arg(format!("--guest-features={:#x}", self.guest_features));
        c.arg(format!(
            "--vmm-type={}",
            if self.ec2 { "ec2" } else { "qemu" }
        ));
        c
    }

    fn reference(&self) -> Command {
        let mut c = Command::new("sev-snp-measure");
        c.args(["--mode", "snp", "--output-format", "hex", "--ovmf"]);
        c.arg(&self.ovmf);
        if let Some(h) = &self.ovmf_hash {
            c.arg(format!("--snp-ovmf-hash={h}"));
        }
        self.common(&mut c);
        c.arg(format!("--guest-features={:#x}", self.guest_features));
        c.arg(format!(
            "--vmm-type={}",
            if self.ec2 { "ec2" } else { "QEMU" }
        ));
        c
    }

    fn common(&self, c: &mut Command) {
        if let Some(k) = &self.kernel {
            c.arg("--kernel").arg(k);
        }
        if let Some(i) = &self.initrd {
            c.arg("--initrd").arg(i);
        }
        if let Some(a) = &self.append {
            c.arg(format!("--append={a}"));
        }
        c.arg(format!("--vcpus={}", self.vcpus));
        c.arg(format!("--vcpu-type={}", self.vcpu_type));
    }
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn random_cmdline(rng: &mut StdRng) -> String {
    const WORDS: &[&str] = &[
        "console=ttyS0",
        "root=/dev/mapper/root",
        "ro",
        "quiet",
        "loglevel=7",
        " ",
        "  ",
        "-",
        "--",
        "init=/sbin/init",
        "é",
        "\u{1F512}",
        "a=\"b c\"",
        "\t",
    ];
    let line = (0..rng.gen_range(0..12))
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(if rng.gen_bool(0.8) { " " } else { "" });
    // Python's argparse drops an argument value that is exactly "--"
    // (--append=-- measures as empty there); QEMU would get "--".
    if line == "--" {
        return "-- ".to_owned();
    }
    line
}

/// Fills in the parts every case randomizes.
fn randomize(rng: &mut StdRng, ovmf: &Path) -> Case {
    Case {
        ovmf: ovmf.to_owned(),
        vcpus: rng.gen_range(1..=64),
        vcpu_type: VcpuType::ALL[rng.gen_range(0..VcpuType::ALL.len())].to_string(),
        guest_features: if rng.gen_bool(0.5) { 0x1 } else { 0x21 },
        ec2: rng.gen_bool(0.25),
        ..Case::default()
    }
}

fn with_kernel(rng: &mut StdRng, s: &Scratch, n: usize, mut c: Case) -> Case {
    c.kernel = Some(s.file(&format!("kernel{n}"), &random_bytes(rng, 300_000)));
    if rng.gen_bool(0.8) {
        c.initrd = Some(s.file(&format!("initrd{n}"), &random_bytes(rng, 700_000)));
    }
    if rng.gen_bool(0.85) {
        c.append = Some(random_cmdline(rng));
    }
    c
}

#[test]
fn agrees_with_sev_snp_measure() {
    let Some(data) = snpguard_testkit::testdata::dir() else {
        return;
    };
    let Some(()) = tool("sev-snp-measure") else {
        return;
    };
    let debian = exists(Path::new(DEBIAN_OVMF)).is_some();
    let seed = std::env::var("SNPGUARD_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("measure_diff: SNPGUARD_DIFF_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let s = Scratch::new("measure-diff");
    let amdsev = data.join("measurement/ovmf_AmdSev_suffix.bin");
    let ovmfx64 = data.join("measurement/ovmf_OvmfX64_suffix.bin");
    let suffix = std::fs::read(&amdsev).unwrap();

    let mut cases = Vec::new();
    // The AmdSev footer page itself, with kernel, initrd and cmdline.
    for n in 0..14 {
        let c = randomize(&mut rng, &amdsev);
        cases.push(with_kernel(&mut rng, &s, n, c));
    }
    // Same, with a random precomputed firmware hash.
    for n in 14..20 {
        let mut c = randomize(&mut rng, &amdsev);
        c.ovmf_hash =
            Some(hex::encode(rng.gen::<[u8; 32]>()) + &hex::encode(rng.gen::<[u8; 16]>()));
        cases.push(with_kernel(&mut rng, &s, n, c));
    }
    // Synthetic firmware: random pages followed by the AmdSev footer page.
    for n in 20..28 {
        let mut fw = vec![0u8; 4096 * rng.gen_range(1..=256)];
        rng.fill(&mut fw[..]);
        fw.extend_from_slice(&suffix);
        let path = s.file(&format!("fw{n}.fd"), &fw);
        let c = randomize(&mut rng, &path);
        let c = if rng.gen_bool(0.8) {
            with_kernel(&mut rng, &s, n, c)
        } else {
            c
        };
        cases.push(c);
    }
    // Firmware without kernel hashes: OvmfX64 footer page, Debian's OVMF.
    for _ in 28..31 {
        cases.push(randomize(&mut rng, &ovmfx64));
    }
    if debian {
        for _ in 31..40 {
            cases.push(randomize(&mut rng, Path::new(DEBIAN_OVMF)));
        }
    }

    let mut seen_ec2 = false;
    for (n, case) in cases.iter().enumerate() {
        let want = run(case.reference());
        let got = run(case.ours());
        assert_eq!(
            got, want,
            "case {n} differs (SNPGUARD_DIFF_SEED={seed}): {case:#?}"
        );
        assert_eq!(got.trim().len(), 96, "case {n}: {got:?}");
        seen_ec2 |= case.ec2;
    }
    eprintln!("measure_diff: {} cases agree", cases.len());
    assert!(seen_ec2 || cases.len() < 10, "no ec2 case drawn");
}

/// Inputs the reference also rejects are errors for us too (exit 2, one
/// `error:` line, nothing on stdout).
#[test]
fn rejects_what_cannot_be_measured() {
    let Some(data) = snpguard_testkit::testdata::dir() else {
        return;
    };
    let s = Scratch::new("measure-reject");
    let kernel = s.file("k", b"k");
    let garbage = s.file("garbage", &[0x5a; 8192]);
    let ovmfx64 = data.join("measurement/ovmf_OvmfX64_suffix.bin");
    let cases: [(&Path, &[&str], &str); 3] = [
        (&garbage, &[], "not an OVMF build"),
        (
            &ovmfx64,
            &["--kernel", kernel.to_str().unwrap()],
            "use an OVMF AmdSev build",
        ),
        (&ovmfx64, &["--vcpus=0"], "out of range"),
    ];
    for (fw, extra, want) in cases {
        let out = snpguardctl()
            .args(["measure", "--vcpu-type", "EPYC-v4", "--ovmf"])
            .arg(fw)
            .args(if extra.iter().any(|a| a.starts_with("--vcpus")) {
                &[][..]
            } else {
                &["--vcpus", "1"][..]
            })
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(out.stdout.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: ") && err.contains(want), "{err}");
    }
}
