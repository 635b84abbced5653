use super::*;
use snpguard_testkit::testdata;

/// (name, version, policy, vmpl, key_info, platform_info, reported_tcb LE
/// hex, cpuid hex, measurement prefix) from testdata/snp/README.md.
type Row = (
    &'static str,
    u32,
    u64,
    u32,
    u32,
    u64,
    &'static str,
    &'static str,
    &'static str,
);

const TABLE: &[Row] = &[
    (
        "genoa-oak",
        5,
        0x30000,
        0,
        0x0,
        0x25,
        "0a00000000001954",
        "191101",
        "c57729018b0a6fb90dc17bb1",
    ),
    (
        "milan-gosevguest",
        2,
        0xb0000,
        0,
        0x0,
        0x1,
        "0200000000000544",
        "000000",
        "b07af9620f3b839b47996422",
    ),
    (
        "milan-trustee-vlek",
        3,
        0x30000,
        1,
        0x4,
        0x27,
        "04000000000018d9",
        "190101",
        "8922ebbdd00ec2c541f36a6e",
    ),
    (
        "milan-trustee",
        2,
        0x3001f,
        0,
        0x0,
        0x1,
        "0300000000000873",
        "000000",
        "a1f3930413247bb38cfc1715",
    ),
    (
        "milan-virtee",
        2,
        0x30000,
        0,
        0x0,
        0x1,
        "0300000000000873",
        "000000",
        "7a1e5c266c0108dbc9bb94fa",
    ),
    (
        "turin-oak",
        5,
        0x30000,
        0,
        0x0,
        0x67,
        "0001000200000047",
        "1a0201",
        "f924dd18f168df60fbea937f",
    ),
];

fn real(name: &str) -> Option<Vec<u8>> {
    testdata::read(&format!("reports/{name}/report.bin"))
}

#[test]
fn parses_every_real_report_as_documented() {
    for &(name, version, policy, vmpl, key_info, pinfo, tcb, cpuid, meas) in TABLE {
        let Some(bytes) = real(name) else { return };
        let r = Report::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.version, version, "{name}");
        assert_eq!(r.policy.0, policy, "{name}");
        assert_eq!(r.vmpl, vmpl, "{name}");
        assert_eq!(r.key_info.0, key_info, "{name}");
        assert_eq!(r.platform_info.0, pinfo, "{name}");
        assert_eq!(hex::encode(r.reported_tcb.0.to_le_bytes()), tcb, "{name}");
        let c = r
            .cpuid
            .map(|c| format!("{:02x}{:02x}{:02x}", c.family, c.model, c.stepping));
        assert_eq!(c.as_deref().unwrap_or("000000"), cpuid, "{name}");
        assert_eq!(r.cpuid.is_some(), version >= 3, "{name}");
        assert!(hex::encode(r.measurement).starts_with(meas), "{name}");
        assert_eq!(r.signed_bytes().len(), SIGNED_LEN);
        assert_eq!(&r.as_bytes()[..], &bytes[..]);
    }
}

#[test]
fn decodes_tcb_layouts() {
    // Turin: KDS URL of its VCEK says ucodeSPL=71 snpSPL=2 teeSPL=0 blSPL=1 fmcSPL=0.
    let Some(bytes) = real("turin-oak") else {
        return;
    };
    let r = Report::parse(&bytes).expect("turin parses");
    let p = r.reported_tcb.parts(TcbLayout::Turin);
    assert_eq!(
        (p.fmc, p.bootloader, p.tee, p.snp, p.microcode),
        (Some(0), 1, 0, 2, 71)
    );
    assert_eq!(p.to_string(), "fmc=0,bl=1,tee=0,snp=2,ucode=71");
    let Some(bytes) = real("genoa-oak") else {
        return;
    };
    let r = Report::parse(&bytes).expect("genoa parses");
    let p = r.reported_tcb.parts(TcbLayout::MilanGenoa);
    assert_eq!(
        (p.fmc, p.bootloader, p.tee, p.snp, p.microcode),
        (None, 10, 0, 0x19, 0x54)
    );
}

#[test]
fn key_info_and_policy_bits() {
    let Some(bytes) = real("milan-trustee-vlek") else {
        return;
    };
    let r = Report::parse(&bytes).expect("vlek parses");
    assert_eq!(r.key_info.signing_key(), SigningKey::Vlek);
    assert!(!r.key_info.author_key_en());
    let Some(bytes) = real("milan-gosevguest") else {
        return;
    };
    let r = Report::parse(&bytes).expect("parses");
    assert_eq!(r.key_info.signing_key(), SigningKey::Vcek);
    assert!(r.policy.debug() && r.policy.smt() && !r.policy.migrate_ma());
    assert!(!r.policy.single_socket());
    assert_eq!(KeyInfo(7 << 2).signing_key(), SigningKey::None);
    assert_eq!(KeyInfo(3 << 2).signing_key(), SigningKey::Reserved(3));
}

#[test]
fn signature_converts_to_big_endian() {
    let Some(bytes) = real("milan-virtee") else {
        return;
    };
    let r = Report::parse(&bytes).expect("parses");
    let be = r.signature.to_p384_bytes();
    assert_eq!(be[47], bytes[0x2A0]);
    assert_eq!(be[0], bytes[0x2A0 + 47]);
    assert_eq!(be[95], bytes[0x2E8]);
}

fn mutated(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Option<Result<Report, ReportError>> {
    let mut b = real(name)?;
    f(&mut b);
    Some(Report::parse(&b))
}

#[test]
fn rejects_wrong_size() {
    assert_eq!(Report::parse(&[0u8; 100]), Err(ReportError::Size(100)));
    let Some(r) = mutated("milan-virtee", |b| b.push(0)) else {
        return;
    };
    assert_eq!(r, Err(ReportError::Size(REPORT_SIZE + 1)));
}

#[test]
fn rejects_unknown_version() {
    for v in [0u32, 1, 4, 6, 0xffff_ffff] {
        let Some(r) = mutated("milan-virtee", |b| {
            b[0..4].copy_from_slice(&v.to_le_bytes())
        }) else {
            return;
        };
        assert_eq!(r, Err(ReportError::UnsupportedVersion(v)));
    }
}

#[test]
fn rejects_other_signature_algorithms() {
    let Some(r) = mutated("genoa-oak", |b| b[0x34] = 2) else {
        return;
    };
    assert_eq!(r, Err(ReportError::UnsupportedSignatureAlgorithm(2)));
}

#[test]
fn rejects_policy_reserved_bits() {
    let Some(r) = mutated("milan-virtee", |b| b[0x0A] &= !0x02) else {
        return;
    };
    assert_eq!(r, Err(ReportError::PolicyReservedBit17(0x10000)));
    let Some(r) = mutated("milan-virtee", |b| b[0x0F] = 0x80) else {
        return;
    };
    assert!(matches!(
        r,
        Err(ReportError::ReservedNonZero {
            field: "POLICY[63:26]",
            ..
        })
    ));
}

#[test]
fn rejects_nonzero_reserved_areas() {
    // (report, offset) pairs inside must-be-zero areas of that version.
    let cases = [
        ("milan-virtee", 0x4A),  // KEY_INFO reserved bits
        ("milan-virtee", 0x4C),  // reserved word
        ("milan-virtee", 0x188), // v2: CPUID area reserved
        ("genoa-oak", 0x18B),    // v5: after CPUID
        ("genoa-oak", 0x19F),
        ("milan-virtee", 0x1EB),
        ("milan-virtee", 0x1EF),
        ("milan-virtee", 0x1F8), // v2: no mitigation vectors
        ("genoa-oak", 0x208),
        ("genoa-oak", 0x29F),
        ("turin-oak", 0x2A0 + 50), // r upper bytes
        ("turin-oak", 0x2E8 + 71), // s upper bytes
        ("turin-oak", 0x330),
        ("turin-oak", REPORT_SIZE - 1),
    ];
    for (name, off) in cases {
        let Some(r) = mutated(name, |b| b[off] ^= 0x01) else {
            return;
        };
        match r {
            Err(ReportError::ReservedNonZero { offset, .. }) => {
                assert!(offset <= off, "{name} {off:#x} reported at {offset:#x}")
            }
            other => panic!("{name} offset {off:#x}: expected reserved-field error, got {other:?}"),
        }
    }
}

#[test]
fn version_5_fields() {
    let Some(bytes) = real("genoa-oak") else {
        return;
    };
    let r = Report::parse(&bytes).expect("parses");
    assert_eq!(r.launch_mit_vector, Some(1));
    assert_eq!(r.current_mit_vector, Some(1));
    assert_eq!(
        r.current_version,
        FirmwareVersion {
            major: 1,
            minor: 0x37,
            build: 0x2b
        }
    );
}

#[test]
fn a_launch_policy_has_its_switches_and_nothing_else() {
    let none = GuestPolicy::for_launch(false, false, false);
    assert_eq!(none.0, 0x20000);
    assert!(none.reserved_bit17() && !none.smt() && !none.debug() && !none.migrate_ma());
    assert_eq!((none.abi_major(), none.abi_minor()), (0, 0));
    for (smt, debug, ma) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
    ] {
        let p = GuestPolicy::for_launch(smt, debug, ma);
        assert_eq!((p.smt(), p.debug(), p.migrate_ma()), (smt, debug, ma));
        assert!(p.reserved_bit17());
        assert_eq!(p.reserved_bits(), 0);
    }
    assert_eq!(GuestPolicy::for_launch(true, true, true).0, 0xf0000);
}
