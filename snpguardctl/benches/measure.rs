//! Launch measurement wall time: our `launch_digest` against
//! `sev-snp-measure` and `sha256sum` of the same kernel and initrd.
//!
//! Inputs: a synthetic AmdSev firmware (4 MiB of random bytes followed by
//! the AmdSev footer page from the shared test data), a 10 MiB kernel and
//! a 60 MiB initrd of random bytes. Prints a markdown table of medians.
//!
//! Run: cargo bench -p snpguardctl --bench measure

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use snpguard::measure::{launch_digest, MeasureInput, VcpuType, VmmType};

const RUNS: usize = 7;

fn median(mut f: impl FnMut() -> bool) -> Option<Duration> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        if !f() {
            return None;
        }
        times.push(t.elapsed());
    }
    times.sort();
    Some(times[RUNS / 2])
}

fn command_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn random_file(path: &Path, len: usize, rng: &mut rand::rngs::StdRng) {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    std::fs::write(path, data).expect("writing bench input");
}

fn main() {
    let Some(suffix) = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("snpguard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating bench directory");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut fw = vec![0u8; 4 << 20];
    rng.fill_bytes(&mut fw);
    fw.extend_from_slice(&suffix);
    let ovmf = dir.join("ovmf.fd");
    std::fs::write(&ovmf, fw).expect("writing firmware");
    let kernel = dir.join("vmlinuz");
    let initrd = dir.join("initrd.img");
    random_file(&kernel, 10 << 20, &mut rng);
    random_file(&initrd, 60 << 20, &mut rng);
    let cmdline = "console=ttyS0 root=/dev/mapper/root ro quiet";

    let input = MeasureInput {
        ovmf: ovmf.clone(),
        ovmf_hash: None,
        kernel: Some(kernel.clone()),
        initrd: Some(initrd.clone()),
        cmdline: Some(cmdline.to_owned()),
        vcpus: 4,
        vcpu_type: VcpuType::EpycMilan,
        guest_features: 1,
        vmm_type: VmmType::Qemu,
    };
    let ours = median(|| launch_digest(&input).is_ok()).expect("launch_digest failed");
    let reference = median(|| {
        command_ok(
            Command::new("sev-snp-measure")
                .args(["--mode", "snp", "--vcpus", "4", "--vcpu-type", "EPYC-Milan"])
                .arg("--ovmf")
                .arg(&ovmf)
                .arg("--kernel")
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .arg(format!("--append={cmdline}")),
        )
    });
    let sha = median(|| command_ok(Command::new("sha256sum").arg(&kernel).arg(&initrd)));
    let _ = std::fs::remove_dir_all(&dir);

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let ratio = |d: Option<Duration>| {
        d.map_or("n/a".to_owned(), |d| {
            format!("{:.2}", ours.as_secs_f64() / d.as_secs_f64())
        })
    };
    println!("| what (median of {RUNS}) | wall time | snpguard / this |");
    println!("|---|---|---|");
    println!("| snpguard `launch_digest` | {} | 1.00 |", ms(ours));
    match reference {
        Some(d) => println!(
            "| `sev-snp-measure --mode snp` | {} | {} |",
            ms(d),
            ratio(reference)
        ),
        None => println!("| `sev-snp-measure --mode snp` | not installed | n/a |"),
    }
    match sha {
        Some(d) => println!("| `sha256sum kernel initrd` | {} | {} |", ms(d), ratio(sha)),
        None => println!("| `sha256sum kernel initrd` | not available | n/a |"),
    }
}
