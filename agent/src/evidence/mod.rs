//! Where the attestation report comes from: configfs-tsm, /dev/sev-guest,
//! or (test builds only) the simulator. Each source returns the raw
//! 1184-byte report for the given REPORT_DATA and, when the platform has
//! one, the GUID certificate table.

use std::path::{Path, PathBuf};

use crate::config::{AgentConfig, ReportSource};

pub mod sev_guest;
#[cfg(feature = "simulator")]
pub mod simulated;
pub mod tsm;

/// The firmware's answer for one REPORT_DATA.
pub struct Evidence {
    /// The raw report.
    pub report: Vec<u8>,
    /// The certificate table (extended report / auxblob), if any.
    pub cert_table: Option<Vec<u8>>,
}

/// A report source that could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("configfs-tsm: {0}")]
    Tsm(String),
    #[error("/dev/sev-guest: {0}")]
    SevGuest(String),
    #[cfg(feature = "simulator")]
    #[error("simulated source: {0}")]
    Simulated(String),
    #[error("no report source is available: {0}")]
    NoneAvailable(String),
}

/// Where configfs-tsm reports live.
pub const TSM_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The SEV guest device.
pub const SEV_GUEST: &str = "/dev/sev-guest";

/// A configured source.
pub enum Source {
    Tsm(tsm::Tsm<tsm::RealFs>),
    SevGuest,
    Auto {
        tsm: tsm::Tsm<tsm::RealFs>,
        sev_guest: PathBuf,
    },
    #[cfg(feature = "simulator")]
    Simulated(PathBuf),
}

impl Source {
    /// The source `config` selects. `tsm_root` overrides [`TSM_ROOT`]
    /// (tests).
    pub fn from_config(config: &AgentConfig, tsm_root: Option<&Path>) -> Source {
        let tsm = || tsm::Tsm::new(tsm_root.unwrap_or(Path::new(TSM_ROOT)), tsm::RealFs);
        match config.report_source {
            ReportSource::Tsm => Source::Tsm(tsm()),
            ReportSource::SevGuest => Source::SevGuest,
            ReportSource::Auto => Source::Auto {
                tsm: tsm(),
                sev_guest: PathBuf::from(SEV_GUEST),
            },
            #[cfg(feature = "simulator")]
            ReportSource::Simulated => Source::Simulated(
                config
                    .simulator
                    .as_ref()
                    .map(|s| s.launch.clone())
                    .unwrap_or_default(),
            ),
            // config::load refuses "simulated" in builds without it.
            #[cfg(not(feature = "simulator"))]
            ReportSource::Simulated => Source::Auto {
                tsm: tsm(),
                sev_guest: PathBuf::from(SEV_GUEST),
            },
        }
    }

    /// A short description for the progress lines.
    pub fn describe(&self) -> String {
        match self {
            Source::Tsm(t) => format!("configfs-tsm ({})", t.root().display()),
            Source::SevGuest => SEV_GUEST.to_string(),
            Source::Auto { tsm, .. } => {
                format!(
                    "auto (configfs-tsm at {}, then {SEV_GUEST})",
                    tsm.root().display()
                )
            }
            #[cfg(feature = "simulator")]
            Source::Simulated(p) => format!("SIMULATED ({})", p.display()),
        }
    }

    /// Whether this source can give a derived key ([`Source::derived_key`]):
    /// /dev/sev-guest (present) and the simulator can, configfs-tsm cannot.
    pub fn can_derive(&self) -> bool {
        match self {
            Source::Tsm(_) => false,
            Source::SevGuest => true,
            Source::Auto { sev_guest, .. } => sev_guest.exists(),
            #[cfg(feature = "simulator")]
            Source::Simulated(_) => true,
        }
    }

    /// A key the secure processor derives for this launch (offline
    /// unlock): `select` and `tcb` as SNP_GET_DERIVED_KEY takes them.
    /// configfs-tsm has no derived keys: only /dev/sev-guest (and the
    /// simulator) give one.
    pub fn derived_key(&self, select: u64, tcb: u64) -> Result<[u8; 32], EvidenceError> {
        match self {
            Source::Tsm(_) => Err(EvidenceError::Tsm(
                "configfs-tsm has no derived keys; offline unlock needs /dev/sev-guest".into(),
            )),
            Source::SevGuest | Source::Auto { .. } => sev_guest::derived_key(select, tcb),
            #[cfg(feature = "simulator")]
            Source::Simulated(p) => simulated::derived_key(p, select, tcb),
        }
    }

    /// A report for `report_data`.
    pub fn get(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        match self {
            Source::Tsm(t) => t.get(report_data),
            Source::SevGuest => sev_guest::get(report_data),
            Source::Auto { tsm, sev_guest } => {
                if tsm.available() {
                    return tsm.get(report_data);
                }
                if sev_guest.exists() {
                    return sev_guest::get(report_data);
                }
                Err(EvidenceError::NoneAvailable(format!(
                    "neither {} nor {} exists (is this an SEV-SNP guest with the sev-guest module loaded?)",
                    tsm.root().display(),
                    sev_guest.display()
                )))
            }
            #[cfg(feature = "simulator")]
            Source::Simulated(p) => simulated::get(p, report_data),
        }
    }
}
