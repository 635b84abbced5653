//! The attestation report: parsing (`report`) and the verifier's refusal
//! of every change to a real, AMD-signed report (`report_mutation`).

use p384::elliptic_curve::PrimeField;
use snpguard::report::{Report, TcbLayout, REPORT_SIZE, SIGNED_LEN};

use crate::fixtures::{self, apply_xors, xor_at, Input};

/// Writes every typed field of `r` back at its ABI offset; everything
/// else (reserved fields, the unused signature tail) stays zero. The
/// inverse of [`Report::parse`] for every report it accepts.
fn encode(r: &Report) -> Vec<u8> {
    let mut b = vec![0u8; REPORT_SIZE];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(0x00, &r.version.to_le_bytes());
    put(0x04, &r.guest_svn.to_le_bytes());
    put(0x08, &r.policy.0.to_le_bytes());
    put(0x10, &r.family_id);
    put(0x20, &r.image_id);
    put(0x30, &r.vmpl.to_le_bytes());
    put(0x34, &r.sig_algo.to_le_bytes());
    put(0x38, &r.current_tcb.0.to_le_bytes());
    put(0x40, &r.platform_info.0.to_le_bytes());
    put(0x48, &r.key_info.0.to_le_bytes());
    put(0x50, &r.report_data);
    put(0x90, &r.measurement);
    put(0xC0, &r.host_data);
    put(0xE0, &r.id_key_digest);
    put(0x110, &r.author_key_digest);
    put(0x140, &r.report_id);
    put(0x160, &r.report_id_ma);
    put(0x180, &r.reported_tcb.0.to_le_bytes());
    if let Some(c) = r.cpuid {
        put(0x188, &[c.family, c.model, c.stepping]);
    }
    put(0x1A0, &r.chip_id);
    put(0x1E0, &r.committed_tcb.0.to_le_bytes());
    let version = |v: snpguard::report::FirmwareVersion| [v.build, v.minor, v.major];
    put(0x1E8, &version(r.current_version));
    put(0x1EC, &version(r.committed_version));
    put(0x1F0, &r.launch_tcb.0.to_le_bytes());
    if let Some(v) = r.launch_mit_vector {
        put(0x1F8, &v.to_le_bytes());
    }
    if let Some(v) = r.current_mit_vector {
        put(0x200, &v.to_le_bytes());
    }
    put(0x2A0, &r.signature.r);
    put(0x2E8, &r.signature.s);
    b
}

/// `Report::parse`: an accepted report is exactly its typed fields (the
/// encoder above gives the input back, and parses to the same report);
/// the raw and signed bytes are the input's; every derived view works.
pub fn report(data: &[u8]) {
    let Ok(r) = Report::parse(data) else {
        return;
    };
    fixtures::reached("report");
    assert_eq!(&r.as_bytes()[..], data, "raw bytes kept");
    assert_eq!(r.signed_bytes(), &data[..SIGNED_LEN], "signed bytes");
    let encoded = encode(&r);
    assert_eq!(
        hex::encode(&encoded),
        hex::encode(data),
        "a field is read from the wrong offset, or a byte outside every field is not checked"
    );
    assert_eq!(
        Report::parse(&encoded).as_ref(),
        Ok(&r),
        "parse(encode(r)) == r"
    );
    assert!([2, 3, 5].contains(&r.version));
    assert_eq!(r.cpuid.is_some(), r.version >= 3);
    assert_eq!(r.launch_mit_vector.is_some(), r.version >= 5);
    // The P-384 form of the signature is r and s reversed, nothing lost.
    let p = r.signature.to_p384_bytes();
    for i in 0..48 {
        assert_eq!(p[47 - i], r.signature.r[i]);
        assert_eq!(p[95 - i], r.signature.s[i]);
    }
    serde_json::to_vec(&r).expect("a parsed report serializes");
    for layout in [TcbLayout::MilanGenoa, TcbLayout::Turin] {
        for tcb in [r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb] {
            let _ = tcb.parts(layout).to_string();
        }
    }
    let _ = snpguard::verify::product_from_report(&r);
}

/// The real reports, and each with its first byte of every field region
/// flipped (a start for the mutator).
pub fn report_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for real in fixtures::reports() {
        out.push(real.bytes.clone());
        for off in [0x00, 0x08, 0x30, 0x48, 0x188, 0x1EB, 0x1F8, 0x2D0, 0x330] {
            let mut b = real.bytes.clone();
            b[off] ^= 1;
            out.push(b);
        }
    }
    out.push(vec![0u8; REPORT_SIZE]);
    out
}

/// Whether `mutated` is `original` with its ECDSA signature's s replaced
/// by n - s (same r, same signed bytes): the other signature ECDSA itself
/// accepts for the same message. AMD's firmware signs with either half of
/// the range, so a verifier cannot refuse one of them.
fn negated_s(original: &[u8], mutated: &[u8]) -> bool {
    if original[..0x2E8] != mutated[..0x2E8] || original[0x318..] != mutated[0x318..] {
        return false;
    }
    let Some(s) = scalar(&original[0x2E8..0x318]) else {
        return false;
    };
    let mut neg = (-s).to_repr();
    neg.reverse();
    neg[..] == mutated[0x2E8..0x318]
}

/// A P-384 scalar from the report's 48-byte little-endian encoding.
fn scalar(le: &[u8]) -> Option<p384::Scalar> {
    let mut be = p384::FieldBytes::default();
    be.copy_from_slice(le);
    be.reverse();
    Option::from(p384::Scalar::from_repr(be))
}

/// `report_mutation`: the first byte picks one of the real AMD reports,
/// the rest are XOR mutations (position u16 LE, value). The verifier,
/// with the real VCEK/VLEK and AMD's chain, accepts the report unchanged
/// and refuses it after any change to its signed bytes or its signature,
/// the single exception being ECDSA's own (r, n - s) twin of the
/// signature, which must be accepted exactly like the original.
pub fn report_mutation(data: &[u8]) {
    let reports = fixtures::reports();
    if reports.is_empty() {
        return;
    }
    let mut input = Input::new(data);
    let real = &reports[usize::from(input.byte()) % reports.len()];
    let mut bytes = real.bytes.clone();
    apply_xors(&mut input, &mut bytes);
    let verdict =
        fixtures::verifier().verify(&bytes, &real.certs, &real.expect, fixtures::VERIFY_AT);
    if bytes == real.bytes || negated_s(&real.bytes, &bytes) {
        if let Err(e) = verdict {
            panic!("{}: the genuine report is refused: {e}", real.name);
        }
        fixtures::reached("report_mutation");
    } else if verdict.is_ok() {
        let changed: Vec<String> = (0..REPORT_SIZE)
            .filter(|&i| bytes[i] != real.bytes[i])
            .map(|i| format!("{i:#x}"))
            .collect();
        panic!(
            "{}: a report changed at {} is accepted",
            real.name,
            changed.join(",")
        );
    }
}

/// Per real report: unchanged, a measurement bit, a signature bit, a
/// reserved byte, and the (r, n - s) twin.
pub fn mutation_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, real) in fixtures::reports().iter().enumerate() {
        let index = u8::try_from(i).expect("few reports");
        out.push(vec![index]);
        for (pos, value) in [
            (0x90, 1),
            (0x2A0, 0x80),
            (0x2E8, 1),
            (0x1F9, 4),
            (0x50, 0xff),
        ] {
            let mut seed = vec![index];
            seed.extend(xor_at(pos, value));
            out.push(seed);
        }
        if let Some(s) = scalar(&real.bytes[0x2E8..0x318]) {
            let mut neg = (-s).to_repr();
            neg.reverse();
            let mut seed = vec![index];
            for (k, (a, b)) in real.bytes[0x2E8..0x318].iter().zip(neg.iter()).enumerate() {
                if a != b {
                    seed.extend(xor_at(0x2E8 + k, a ^ b));
                }
            }
            out.push(seed);
        }
    }
    out
}
