//! Guest vCPU models and VMM flavours: the two inputs that shape the
//! initial register state (VMSA) of every vCPU.

use std::fmt;
use std::str::FromStr;

use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::VMMType;

/// A QEMU vCPU model, exactly as `sev-snp-measure --vcpu-type` spells it.
///
/// The model only matters through its CPUID signature (family, model,
/// stepping), which QEMU puts in RDX of every vCPU at reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VcpuType {
    /// `EPYC` (Naples).
    Epyc,
    /// `EPYC-v1`.
    EpycV1,
    /// `EPYC-v2`.
    EpycV2,
    /// `EPYC-IBPB`.
    EpycIbpb,
    /// `EPYC-v3`.
    EpycV3,
    /// `EPYC-v4`.
    EpycV4,
    /// `EPYC-Rome`.
    EpycRome,
    /// `EPYC-Rome-v1`.
    EpycRomeV1,
    /// `EPYC-Rome-v2`.
    EpycRomeV2,
    /// `EPYC-Rome-v3`.
    EpycRomeV3,
    /// `EPYC-Milan`.
    EpycMilan,
    /// `EPYC-Milan-v1`.
    EpycMilanV1,
    /// `EPYC-Milan-v2`.
    EpycMilanV2,
    /// `EPYC-Genoa`.
    EpycGenoa,
    /// `EPYC-Genoa-v1`.
    EpycGenoaV1,
    /// `EPYC-Turin`.
    EpycTurin,
}

impl VcpuType {
    /// Every accepted model, in the order `sev-snp-measure` lists them.
    pub const ALL: [VcpuType; 16] = [
        VcpuType::Epyc,
        VcpuType::EpycV1,
        VcpuType::EpycV2,
        VcpuType::EpycIbpb,
        VcpuType::EpycV3,
        VcpuType::EpycV4,
        VcpuType::EpycRome,
        VcpuType::EpycRomeV1,
        VcpuType::EpycRomeV2,
        VcpuType::EpycRomeV3,
        VcpuType::EpycMilan,
        VcpuType::EpycMilanV1,
        VcpuType::EpycMilanV2,
        VcpuType::EpycGenoa,
        VcpuType::EpycGenoaV1,
        VcpuType::EpycTurin,
    ];

    /// The canonical (QEMU) name.
    pub fn name(self) -> &'static str {
        match self {
            VcpuType::Epyc => "EPYC",
            VcpuType::EpycV1 => "EPYC-v1",
            VcpuType::EpycV2 => "EPYC-v2",
            VcpuType::EpycIbpb => "EPYC-IBPB",
            VcpuType::EpycV3 => "EPYC-v3",
            VcpuType::EpycV4 => "EPYC-v4",
            VcpuType::EpycRome => "EPYC-Rome",
            VcpuType::EpycRomeV1 => "EPYC-Rome-v1",
            VcpuType::EpycRomeV2 => "EPYC-Rome-v2",
            VcpuType::EpycRomeV3 => "EPYC-Rome-v3",
            VcpuType::EpycMilan => "EPYC-Milan",
            VcpuType::EpycMilanV1 => "EPYC-Milan-v1",
            VcpuType::EpycMilanV2 => "EPYC-Milan-v2",
            VcpuType::EpycGenoa => "EPYC-Genoa",
            VcpuType::EpycGenoaV1 => "EPYC-Genoa-v1",
            VcpuType::EpycTurin => "EPYC-Turin",
        }
    }

    pub(crate) fn to_sev(self) -> CpuType {
        match self {
            VcpuType::Epyc => CpuType::Epyc,
            VcpuType::EpycV1 => CpuType::EpycV1,
            VcpuType::EpycV2 => CpuType::EpycV2,
            VcpuType::EpycIbpb => CpuType::EpycIBPB,
            VcpuType::EpycV3 => CpuType::EpycV3,
            VcpuType::EpycV4 => CpuType::EpycV4,
            VcpuType::EpycRome => CpuType::EpycRome,
            VcpuType::EpycRomeV1 => CpuType::EpycRomeV1,
            VcpuType::EpycRomeV2 => CpuType::EpycRomeV2,
            VcpuType::EpycRomeV3 => CpuType::EpycRomeV3,
            VcpuType::EpycMilan => CpuType::EpycMilan,
            VcpuType::EpycMilanV1 => CpuType::EpycMilanV1,
            VcpuType::EpycMilanV2 => CpuType::EpycMilanV2,
            VcpuType::EpycGenoa => CpuType::EpycGenoa,
            VcpuType::EpycGenoaV1 => CpuType::EpycGenoaV1,
            VcpuType::EpycTurin => CpuType::EpycTurin,
        }
    }
}

impl fmt::Display for VcpuType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A vCPU type name that `sev-snp-measure` would not accept either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vCPU type {given:?}; valid types: {}", valid_vcpu_names())]
pub struct UnknownVcpuType {
    /// What was given.
    pub given: String,
}

fn valid_vcpu_names() -> String {
    VcpuType::ALL
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for VcpuType {
    type Err = UnknownVcpuType;

    /// Exact, case-sensitive match, as the reference tool does: the name
    /// ends up in the operator's QEMU command line, where case matters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VcpuType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownVcpuType {
                given: s.to_owned(),
            })
    }
}

/// The hypervisor flavour, which decides a few reset register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VmmType {
    /// QEMU/KVM (the default).
    #[default]
    Qemu,
    /// AWS EC2.
    Ec2,
}

impl VmmType {
    /// The canonical name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            VmmType::Qemu => "qemu",
            VmmType::Ec2 => "ec2",
        }
    }

    pub(crate) fn to_sev(self) -> VMMType {
        match self {
            VmmType::Qemu => VMMType::QEMU,
            VmmType::Ec2 => VMMType::EC2,
        }
    }
}

impl fmt::Display for VmmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A VMM type other than `qemu` or `ec2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VMM type {given:?}; valid types: qemu, ec2")]
pub struct UnknownVmmType {
    /// What was given.
    pub given: String,
}

impl FromStr for VmmType {
    type Err = UnknownVmmType;

    /// Case-insensitive (`sev-snp-measure` spells them `QEMU` and `ec2`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("qemu") {
            Ok(VmmType::Qemu)
        } else if s.eq_ignore_ascii_case("ec2") {
            Ok(VmmType::Ec2)
        } else {
            Err(UnknownVmmType {
                given: s.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for t in VcpuType::ALL {
            assert_eq!(t.to_string().parse::<VcpuType>(), Ok(t));
            assert_eq!(t.name(), t.to_sev().to_string(), "sev crate disagrees");
        }
    }

    #[test]
    fn names_are_case_sensitive_and_exact() {
        for bad in [
            "epyc-v4",
            "EPYC-V4",
            "EPYC-Turin-v1",
            "EPYC-Milan-v3",
            "",
            " EPYC",
        ] {
            let err = bad.parse::<VcpuType>().unwrap_err();
            assert_eq!(err.given, bad);
            let msg = err.to_string();
            assert!(
                msg.contains("EPYC-Genoa-v1") && msg.contains("EPYC-IBPB"),
                "{msg}"
            );
        }
    }

    #[test]
    fn vmm_types() {
        assert_eq!("qemu".parse(), Ok(VmmType::Qemu));
        assert_eq!("QEMU".parse(), Ok(VmmType::Qemu));
        assert_eq!("ec2".parse(), Ok(VmmType::Ec2));
        assert!("gce".parse::<VmmType>().is_err());
        assert!("krun".parse::<VmmType>().is_err());
        assert_eq!(VmmType::default(), VmmType::Qemu);
    }
}
