//! The simulated source (feature `simulator`, test builds only): the host
//! hands the guest a launch blob (`snpguard-sim launch`, passed through
//! QEMU fw_cfg) holding a simulated VCEK and the launch's values; the
//! report is signed with it exactly as the firmware would sign one.

use std::io::Read as _;
use std::path::Path;

use snpguard_testkit::sim::{SimLaunch, SIM_LAUNCH_MAX_SIZE};

use super::{Evidence, EvidenceError};

/// Reads the launch blob at `path` (bounded).
fn load(path: &Path) -> Result<SimLaunch, EvidenceError> {
    let mut blob = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(SIM_LAUNCH_MAX_SIZE as u64 + 1)
                .read_to_end(&mut blob)
        })
        .map_err(|e| err(path, &e))?;
    SimLaunch::from_json(&blob).map_err(|e| err(path, &e))
}

fn err(path: &Path, e: &dyn std::fmt::Display) -> EvidenceError {
    EvidenceError::Simulated(format!("{}: {e}", path.display()))
}

/// A report for `report_data` from the launch blob at `path`.
pub fn get(path: &Path, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
    let launch = load(path)?;
    let report = launch.report(report_data).map_err(|e| err(path, &e))?;
    let table = launch.cert_table().map_err(|e| err(path, &e))?;
    Ok(Evidence {
        report: report.to_vec(),
        cert_table: Some(table),
    })
}

/// The simulated platform's derived key for the launch blob at `path`
/// (`SimLaunch::derived_key`).
pub fn derived_key(path: &Path, select: u64, tcb: u64) -> Result<[u8; 32], EvidenceError> {
    load(path)?
        .derived_key(select, tcb)
        .map_err(|e| err(path, &e))
}
