//! /dev/sev-guest through the `sev` crate: SNP_GET_EXT_REPORT (report and
//! the host-provided certificate table), falling back to SNP_GET_REPORT
//! when the host supplies no certificates or the extended request fails.

use sev::firmware::guest::Firmware;
use sev::firmware::host::{CertTableEntry, CertType};
use snpguard::certs::{encode_cert_table, GUID_ARK, GUID_ASK, GUID_CRL, GUID_VCEK, GUID_VLEK};
use snpguard::report::REPORT_SIZE;

use super::{Evidence, EvidenceError};

/// VMPL the report is requested at (the agent runs at VMPL 0).
const VMPL: u32 = 0;

/// A report for `report_data` from /dev/sev-guest.
pub fn get(report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
    let mut fw = Firmware::open().map_err(|e| EvidenceError::SevGuest(format!("open: {e}")))?;
    let (report, certs) = match fw.get_ext_report(None, Some(*report_data), Some(VMPL)) {
        Ok(r) => r,
        Err(ext) => {
            let r = fw
                .get_report(None, Some(*report_data), Some(VMPL))
                .map_err(|e| {
                    EvidenceError::SevGuest(format!(
                        "SNP_GET_EXT_REPORT failed ({ext}), SNP_GET_REPORT failed ({e})"
                    ))
                })?;
            (r, None)
        }
    };
    evidence(report, certs, report_data)
}

/// SNP_GET_DERIVED_KEY (message version 1): a key derived from the VCEK
/// and the launch fields `select` names (GUEST_FIELD_SELECT bits 0-5),
/// with `tcb` (at most the committed TCB), at the agent's VMPL and guest
/// SVN 0.
pub fn derived_key(select: u64, tcb: u64) -> Result<[u8; 32], EvidenceError> {
    use sev::firmware::guest::{DerivedKey, GuestFieldSelect};
    let mut fields = GuestFieldSelect::default();
    fields.set_guest_policy(select & 1 != 0);
    fields.set_image_id(select & 2 != 0);
    fields.set_family_id(select & 4 != 0);
    fields.set_measurement(select & 8 != 0);
    fields.set_svn(select & 16 != 0);
    fields.set_tcb_version(select & 32 != 0);
    let mut fw = Firmware::open().map_err(|e| EvidenceError::SevGuest(format!("open: {e}")))?;
    fw.get_derived_key(Some(1), DerivedKey::new(false, fields, VMPL, 0, tcb, None))
        .map_err(|e| EvidenceError::SevGuest(format!("SNP_GET_DERIVED_KEY: {e}")))
}

/// Checks the firmware's answer and re-encodes its certificate entries as
/// the GUID table the daemon reads.
pub fn evidence(
    report: Vec<u8>,
    certs: Option<Vec<CertTableEntry>>,
    report_data: &[u8; 64],
) -> Result<Evidence, EvidenceError> {
    if report.len() != REPORT_SIZE {
        return Err(EvidenceError::SevGuest(format!(
            "the report is {} bytes, expected {REPORT_SIZE}",
            report.len()
        )));
    }
    if report[0x50..0x90] != report_data[..] {
        return Err(EvidenceError::SevGuest(
            "the report does not carry the requested REPORT_DATA".into(),
        ));
    }
    let cert_table = certs.and_then(|entries| {
        let known: Vec<([u8; 16], &[u8])> = entries
            .iter()
            .filter_map(|e| {
                let guid = match &e.cert_type {
                    CertType::ARK => GUID_ARK,
                    CertType::ASK => GUID_ASK,
                    CertType::VCEK => GUID_VCEK,
                    CertType::VLEK => GUID_VLEK,
                    CertType::CRL => GUID_CRL,
                    CertType::Empty | CertType::OTHER(_) => return None,
                };
                (!e.data.is_empty()).then_some((guid, e.data.as_slice()))
            })
            .collect();
        (!known.is_empty()).then(|| encode_cert_table(&known))
    });
    Ok(Evidence { report, cert_table })
}

#[cfg(test)]
mod tests {
    use super::*;
    use snpguard::certs::CertSet;

    /// A report as the firmware returns it: a real Milan report from the
    /// shared test data with our REPORT_DATA, and the certificate entries
    /// the `sev` crate parses out of the extended report's buffer.
    #[test]
    fn extended_report_entries_become_a_cert_table() {
        let Some(report) = snpguard_testkit::testdata::read("reports/milan-virtee/report.bin")
        else {
            eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
            return;
        };
        let Some(vcek) = snpguard_testkit::testdata::read("reports/milan-virtee/vcek.der") else {
            eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
            return;
        };
        let data: [u8; 64] = report[0x50..0x90].try_into().unwrap();
        let entries = vec![
            CertTableEntry::new(CertType::VCEK, vcek.clone()),
            CertTableEntry::new(CertType::Empty, Vec::new()),
        ];
        let ev = evidence(report.clone(), Some(entries), &data).expect("evidence");
        assert_eq!(ev.report, report);
        let set =
            CertSet::from_cert_table(ev.cert_table.as_deref().expect("table")).expect("parses");
        assert_eq!(set.vcek.expect("vcek").der(), &vcek[..]);
        assert!(set.ask.is_none());

        // No certificates from the host: no table.
        let ev = evidence(report.clone(), None, &data).expect("plain report");
        assert!(ev.cert_table.is_none());

        // A report for other REPORT_DATA or of the wrong size is refused.
        let mut other = data;
        other[0] ^= 1;
        assert!(evidence(report.clone(), None, &other).is_err());
        assert!(evidence(report[..1000].to_vec(), None, &data).is_err());
    }
}
