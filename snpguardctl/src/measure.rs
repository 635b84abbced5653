//! `snpguardctl measure`: the launch digest, as `sev-snp-measure --mode
//! snp --output-format hex` prints it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use snpguard::measure::{launch_digest, LaunchDigest, MeasureInput, VcpuType, VmmType};

/// Arguments of `snpguardctl measure`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// OVMF firmware image (an AmdSev build to measure a kernel)
    #[arg(long, value_name = "FILE")]
    ovmf: PathBuf,
    /// Precomputed firmware hash, 96 hex (sev-snp-measure --mode snp:ovmf-hash)
    #[arg(long, value_name = "HEX")]
    ovmf_hash: Option<LaunchDigest>,
    /// Kernel passed to QEMU with -kernel
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initrd passed to QEMU with -initrd (needs --kernel)
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line passed to QEMU with -append (needs --kernel)
    #[arg(long, value_name = "STR", requires = "kernel")]
    append: Option<String>,
    /// Number of vCPUs
    #[arg(long, value_name = "N")]
    vcpus: u32,
    /// QEMU vCPU model, e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa
    #[arg(long, value_name = "NAME")]
    vcpu_type: VcpuType,
    /// SEV features of each VMSA (0x1: SNP active)
    #[arg(long, value_name = "0xHEX", default_value = "0x1", value_parser = parse_u64)]
    guest_features: u64,
    /// Hypervisor: qemu or ec2
    #[arg(long, value_name = "TYPE", default_value = "qemu")]
    vmm_type: VmmType,
}

/// Parses a number given in hex (`0x…`) or decimal.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number (0x-prefixed hex or decimal): {e}"))
}

pub fn run(args: Args) -> Result<()> {
    let input = MeasureInput {
        ovmf: args.ovmf,
        ovmf_hash: args.ovmf_hash.map(|d| *d.as_bytes()),
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.append,
        vcpus: args.vcpus,
        vcpu_type: args.vcpu_type,
        guest_features: args.guest_features,
        vmm_type: args.vmm_type,
    };
    let digest = launch_digest(&input).context("measuring")?;
    println!("{digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: Args,
    }

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = ["t", "--ovmf", "f", "--vcpus", "2", "--vcpu-type", "EPYC-v4"];
        T::try_parse_from(base.iter().chain(extra)).map(|t| t.args)
    }

    #[test]
    fn defaults_match_sev_snp_measure() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.guest_features, 1);
        assert_eq!(a.vmm_type, VmmType::Qemu);
        assert_eq!(a.vcpus, 2);
    }

    #[test]
    fn surface() {
        let a = parse(&["--guest-features", "0x21", "--vmm-type", "ec2"]).unwrap();
        assert_eq!((a.guest_features, a.vmm_type), (0x21, VmmType::Ec2));
        assert!(parse(&["--initrd", "i"]).is_err(), "initrd needs kernel");
        assert!(parse(&["--append", "x"]).is_err(), "append needs kernel");
        assert!(parse(&["--kernel", "k", "--initrd", "i", "--append", ""]).is_ok());
        assert!(parse(&["--ovmf-hash", "00"]).is_err());
        assert!(parse(&["--ovmf-hash", &"00".repeat(48)]).is_ok());
        assert!(parse(&["--guest-features", "zz"]).is_err());
        assert!(parse(&["--vmm-type", "gce"]).is_err());
        let e = T::try_parse_from(["t", "--ovmf", "f", "--vcpus", "1", "--vcpu-type", "epyc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("EPYC-Milan-v2"), "{e}");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x21"), Ok(0x21));
        assert_eq!(parse_u64("33"), Ok(33));
        assert!(parse_u64("0x").is_err());
        assert!(parse_u64("-1").is_err());
    }
}
