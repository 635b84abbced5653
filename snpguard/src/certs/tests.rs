//! Tests on AMD's real certificates and reports (testdata/snp, see its
//! README); each negative test breaks exactly one rule.

use time::macros::datetime;
use time::OffsetDateTime;

use super::*;
use snpguard_testkit::testdata;

const JAN_2025: OffsetDateTime = datetime!(2025-01-01 0:00 UTC);
/// When every VCEK in testdata is valid (genoa/turin ones are from mid-2025).
const JAN_2026: OffsetDateTime = datetime!(2026-01-01 0:00 UTC);

fn anchors() -> TrustAnchors {
    TrustAnchors::amd().expect("built-in AMD roots")
}

fn cert(rel: &str) -> Option<Cert> {
    Some(Cert::from_pem_or_der(&testdata::read(rel)?).expect(rel))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The VCEK of a report directory as a set.
fn vcek_set(name: &str) -> Option<CertSet> {
    Some(CertSet {
        vcek: Some(cert(&format!("reports/{name}/vcek.der"))?),
        ..CertSet::default()
    })
}

fn milan_vlek_set() -> Option<CertSet> {
    Some(CertSet {
        vlek: Some(cert("reports/milan-trustee-vlek/vlek.der")?),
        asvk: Some(cert("amd/milan/asvk.pem")?),
        ..CertSet::default()
    })
}

/// The TCB the report's reported_tcb (offset 0x180) encodes.
fn reported_tcb(report: &[u8], product: Product) -> CertTcb {
    let b = &report[0x180..0x188];
    match product {
        Product::Turin => CertTcb {
            fmc: Some(b[0]),
            bootloader: b[1],
            tee: b[2],
            snp: b[3],
            microcode: b[7],
        },
        _ => CertTcb {
            bootloader: b[0],
            tee: b[1],
            snp: b[6],
            microcode: b[7],
            fmc: None,
        },
    }
}

/// Flips one byte of a DER certificate at `pos` from the end.
fn flip_from_end(cert: &Cert, pos: usize) -> Cert {
    let mut der = cert.der().to_vec();
    let i = der.len() - pos;
    der[i] ^= 0x01;
    Cert::from_pem_or_der(&der).expect("still DER")
}

#[test]
fn pinned_arks_match_testdata_and_amd_fingerprints() {
    let a = anchors();
    assert!(!a.is_test());
    for p in Product::ALL {
        let Some(ark) = cert(&format!("amd/{p}/ark.pem")) else {
            return;
        };
        assert_eq!(a.amd_ark(p), Some(&ark), "{p}");
        let ask = cert(&format!("amd/{p}/ask.pem")).expect("ask");
        assert_eq!(a.builtin_ask(p), Some(&ask), "{p}");
    }
    assert_eq!(
        hex::encode(a.amd_ark(Product::Milan).expect("milan").fingerprint()),
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
    );
}

#[test]
fn every_report_vcek_verifies_with_its_tcb_and_hwid() {
    let cases = [
        ("milan-virtee", Product::Milan, "0300000000000873"),
        ("milan-gosevguest", Product::Milan, "0200000000000544"),
        ("milan-trustee", Product::Milan, "0300000000000873"),
        ("genoa-oak", Product::Genoa, "0a00000000001954"),
        ("turin-oak", Product::Turin, "0001000200000047"),
    ];
    let a = anchors();
    for (name, product, tcb_hex) in cases {
        let Some(set) = vcek_set(name) else { return };
        let report = testdata::read(&format!("reports/{name}/report.bin")).expect("report");
        assert_eq!(hex::encode(&report[0x180..0x188]), tcb_hex, "{name}");
        for hint in [None, Some(product)] {
            let e = verify_endorsement(&a, &set, KeyKind::Vcek, hint, JAN_2026)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(e.product, product, "{name}");
            assert_eq!(e.kind, KeyKind::Vcek);
            assert!(!e.test_root);
            assert_eq!(e.tcb, reported_tcb(&report, product), "{name}");
            let hwid = e.hwid.expect("VCEK has a hwid");
            assert_eq!(hwid.len(), product.hwid_len(), "{name}");
            assert_eq!(
                &hwid[..],
                &report[0x1A0..0x1A0 + hwid.len()],
                "{name}: hwid is CHIP_ID"
            );
            assert!(e.product_name.is_some());
        }
    }
}

#[test]
fn vlek_verifies_with_asvk_at_pinned_time() {
    let Some(set) = milan_vlek_set() else { return };
    let report = testdata::read("reports/milan-trustee-vlek/report.bin").expect("report");
    let e = verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, JAN_2025).expect("vlek");
    assert_eq!(e.kind, KeyKind::Vlek);
    assert_eq!(e.product, Product::Milan);
    assert_eq!(e.tcb, reported_tcb(&report, Product::Milan));
    assert_eq!(e.hwid, None);
    assert_eq!(e.product_name.as_deref(), Some("Milan"));
}

#[test]
fn vlek_today_is_expired() {
    let Some(set) = milan_vlek_set() else { return };
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, now()).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Expired {
                role: CertRole::Vlek,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "cert-expired");
}

#[test]
fn vlek_without_asvk_says_where_to_get_it() {
    let Some(mut set) = milan_vlek_set() else {
        return;
    };
    set.asvk = None;
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, JAN_2025).unwrap_err();
    assert_eq!(
        err,
        ChainError::MissingAsvk {
            product: Product::Milan
        }
    );
    assert!(
        err.to_string().contains("/vlek/v1/Milan/cert_chain"),
        "{err}"
    );
}

#[test]
fn missing_endorsement_certs() {
    let Some(set) = vcek_set("milan-virtee") else {
        return;
    };
    let a = anchors();
    let err = verify_endorsement(&a, &set, KeyKind::Vlek, None, JAN_2025).unwrap_err();
    assert_eq!(err, ChainError::MissingVlek);
    let err =
        verify_endorsement(&a, &CertSet::default(), KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert_eq!(err, ChainError::MissingVcek);
    assert_eq!(err.code(), "missing-vcek");
}

#[test]
fn any_cert_in_2000_is_not_yet_valid() {
    let Some(set) = vcek_set("milan-virtee") else {
        return;
    };
    let err = verify_endorsement(
        &anchors(),
        &set,
        KeyKind::Vcek,
        None,
        datetime!(2000-01-01 0:00 UTC),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::NotYetValid {
                role: CertRole::Ark,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn vcek_not_yet_valid_names_the_vcek() {
    // genoa-oak's VCEK is from 2025-08-07; the ARK and ASK are older.
    let Some(set) = vcek_set("genoa-oak") else {
        return;
    };
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::NotYetValid {
                role: CertRole::Vcek,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn vcek_expired_after_not_after() {
    let Some(set) = vcek_set("milan-gosevguest") else {
        return;
    };
    let err = verify_endorsement(
        &anchors(),
        &set,
        KeyKind::Vcek,
        None,
        datetime!(2030-01-01 0:00 UTC),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Expired {
                role: CertRole::Vcek,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_product_hint_is_a_mismatch() {
    let Some(set) = vcek_set("milan-virtee") else {
        return;
    };
    let err = verify_endorsement(
        &anchors(),
        &set,
        KeyKind::Vcek,
        Some(Product::Genoa),
        JAN_2025,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ChainError::ProductMismatch {
            role: CertRole::Vcek,
            given: Product::Genoa,
            cert: Product::Milan
        }
    );
    assert_eq!(err.code(), "product-mismatch");
}

#[test]
fn genoa_ask_for_milan_vcek_is_wrong_product_chain() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    set.ask = cert("amd/genoa/ask.pem");
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::WrongProductChain {
                role: CertRole::Ask,
                product: Product::Milan,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn asvk_in_place_of_ask_is_wrong_product_chain() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    set.ask = cert("amd/milan/asvk.pem");
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::WrongProductChain {
                role: CertRole::Ask,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn genoa_ark_for_milan_chain_is_not_pinned() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    set.ark = cert("amd/genoa/ark.pem");
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::ArkNotPinned {
                product: Product::Milan,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "ark-not-pinned");
}

#[test]
fn supplied_pinned_ark_and_ask_are_accepted() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    set.ark = cert("amd/milan/ark.pem");
    set.ask = cert("amd/milan/ask.pem");
    verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).expect("verifies");
}

#[test]
fn genoa_vcek_claimed_as_milan_with_milan_chain_fails() {
    // A Genoa VCEK forced onto the Milan chain by a hint: the hint
    // contradicts the certificate.
    let Some(set) = vcek_set("genoa-oak") else {
        return;
    };
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, Some(Product::Milan), now())
        .unwrap_err();
    assert!(matches!(err, ChainError::ProductMismatch { .. }), "{err:?}");
}

#[test]
fn flipped_vcek_signature_byte() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    let vcek = set.vcek.take().expect("vcek");
    set.vcek = Some(flip_from_end(&vcek, 10));
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert_eq!(
        err,
        ChainError::Signature {
            role: CertRole::Vcek,
            issuer: CertRole::Ask
        }
    );
    assert_eq!(err.code(), "signature-invalid");
}

#[test]
fn flipped_ask_signature_byte() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    let ask = cert("amd/milan/ask.pem").expect("ask");
    set.ask = Some(flip_from_end(&ask, 10));
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert_eq!(
        err,
        ChainError::Signature {
            role: CertRole::Ask,
            issuer: CertRole::Ark
        }
    );
}

#[test]
fn flipped_asvk_signature_byte() {
    let Some(mut set) = milan_vlek_set() else {
        return;
    };
    let asvk = set.asvk.take().expect("asvk");
    set.asvk = Some(flip_from_end(&asvk, 10));
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, JAN_2025).unwrap_err();
    assert_eq!(
        err,
        ChainError::Signature {
            role: CertRole::Asvk,
            issuer: CertRole::Ark
        }
    );
}

#[test]
fn vcek_from_another_chip_under_right_ask_still_verifies_but_tbs_change_does_not() {
    // Flip a byte inside the TBS (the hwID extension): signature fails.
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    let vcek = set.vcek.take().expect("vcek");
    let der = vcek.der();
    let oid = [
        0x06, 0x09, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x9C, 0x78, 0x01, 0x04,
    ];
    let at = der
        .windows(oid.len())
        .position(|w| w == oid)
        .expect("hwid oid");
    let mut der = der.to_vec();
    der[at + oid.len() + 4] ^= 0x80;
    set.vcek = Some(Cert::from_pem_or_der(&der).expect("der"));
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Signature {
                role: CertRole::Vcek,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn vlek_in_vcek_slot_fails_issuer_chaining() {
    let Some(vlek) = cert("reports/milan-trustee-vlek/vlek.der") else {
        return;
    };
    let set = CertSet {
        vcek: Some(vlek),
        ..CertSet::default()
    };
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::IssuerMismatch {
                role: CertRole::Vcek,
                parent: CertRole::Ask,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn test_root_is_rejected_unless_added() {
    // A real but foreign root (the Genoa ARK) stands in for a test root
    // of Milan: refused as supplied ARK, accepted only via with_test_root
    // and flagged there.
    let Some(genoa_ark) = cert("amd/genoa/ark.pem") else {
        return;
    };
    let a = anchors()
        .with_test_root(Product::Milan, genoa_ark.der())
        .expect("test root");
    assert!(a.is_test());
    let set = CertSet {
        ark: Some(genoa_ark),
        ..CertSet::default()
    };
    // The Genoa chain does not issue the Milan VCEK; but the supplied ARK
    // passes the pin check now and the failure moves to the ASK name.
    let mut set2 = vcek_set("milan-virtee").expect("vcek");
    set2.ark = set.ark.clone();
    let err = verify_endorsement(&a, &set2, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::IssuerMismatch {
                role: CertRole::Ask,
                parent: CertRole::Ark,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn product_from_cpuid() {
    assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
    assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
    assert_eq!(Product::from_cpuid(0x19, 0xA0), Some(Product::Genoa));
    assert_eq!(Product::from_cpuid(0x1A, 0x02), Some(Product::Turin));
    assert_eq!(Product::from_cpuid(0x19, 0x21), None);
    assert_eq!(Product::from_cpuid(0x17, 0x01), None);
    assert_eq!(Product::from_cpuid(0, 0), None);
    for p in Product::ALL {
        assert_eq!(p.to_string().parse::<Product>(), Ok(p));
    }
    assert!("Venice".parse::<Product>().is_err());
}

// ---- certificate sources -------------------------------------------------

#[test]
fn tsm_json_parses_and_verifies_for_genoa() {
    let Some(json) = testdata::read("tsm/genoa-veraison.json") else {
        return;
    };
    let (report, set) = parse_tsm_json(&json).expect("tsm json");
    assert_eq!(report.len(), 1184);
    assert_eq!(report[0], 3, "v3 report");
    assert!(set.ark.is_some() && set.ask.is_some() && set.vcek.is_some());
    assert!(set.vlek.is_none() && set.asvk.is_none() && set.crl.is_none());
    let e = verify_endorsement(&anchors(), &set, KeyKind::Vcek, Some(Product::Genoa), now())
        .expect("genoa chain");
    assert_eq!(e.product, Product::Genoa);
    assert_eq!(e.tcb, reported_tcb(&report, Product::Genoa));
}

#[test]
fn tsm_json_variants_of_base64() {
    let Some(json) = testdata::read("tsm/genoa-veraison.json") else {
        return;
    };
    let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
    let (report, set) = parse_tsm_json(&json).expect("tsm json");
    use base64::Engine;
    let aux = {
        let s = v["auxblob"].as_str().expect("auxblob");
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .expect("aux")
    };
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        let doc = serde_json::json!({
            "outblob": engine.encode(&report),
            "auxblob": engine.encode(&aux),
        });
        let (r, s) = parse_tsm_json(doc.to_string().as_bytes()).expect("variant");
        assert_eq!(r, report);
        assert_eq!(s, set);
    }
    // Without auxblob: a report and no certificates.
    let doc =
        serde_json::json!({ "outblob": base64::engine::general_purpose::STANDARD.encode(&report) });
    let (_, s) = parse_tsm_json(doc.to_string().as_bytes()).expect("no aux");
    assert!(s.is_empty());
}

#[test]
fn tsm_json_rejects_bad_input() {
    for bad in [
        &b""[..],
        b"{}",
        b"[]",
        b"{\"outblob\": 5}",
        b"{\"outblob\": \"\"}",
        b"{\"outblob\": \"AAAA*\"}",
        b"{\"outblob\": \"ab+c-d__\"}",
        b"{\"outblob\": \"AAAA\", \"auxblob\": \"AAAA\"}",
    ] {
        assert!(
            parse_tsm_json(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let huge = format!("{{\"outblob\": \"{}\"}}", "A".repeat(40_000));
    assert!(matches!(
        parse_tsm_json(huge.as_bytes()),
        Err(CertError::TooLarge { .. })
    ));
    let too_big = vec![b' '; TSM_JSON_MAX_SIZE + 1];
    assert!(matches!(
        parse_tsm_json(&too_big),
        Err(CertError::TooLarge { .. })
    ));
}

/// A table with the given entries (guid, data) laid out after the
/// terminator.
fn build_table(entries: &[([u8; 16], Vec<u8>)]) -> Vec<u8> {
    let header = (entries.len() + 1) * 24;
    let mut table = vec![0u8; header];
    for (i, (guid, data)) in entries.iter().enumerate() {
        let offset = table.len() as u32;
        table[i * 24..i * 24 + 16].copy_from_slice(guid);
        table[i * 24 + 16..i * 24 + 20].copy_from_slice(&offset.to_le_bytes());
        table[i * 24 + 20..i * 24 + 24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        table.extend_from_slice(data);
    }
    table
}

fn set_entry(table: &mut [u8], i: usize, offset: u32, length: u32) {
    table[i * 24 + 16..i * 24 + 20].copy_from_slice(&offset.to_le_bytes());
    table[i * 24 + 20..i * 24 + 24].copy_from_slice(&length.to_le_bytes());
}

fn milan_table() -> Option<Vec<u8>> {
    Some(build_table(&[
        (GUID_ARK, testdata::read("amd/milan/ark.pem")?),
        (GUID_ASK, cert("amd/milan/ask.pem")?.der().to_vec()),
        ([0x11; 16], b"provider data".to_vec()),
        (GUID_VCEK, testdata::read("reports/milan-virtee/vcek.der")?),
    ]))
}

#[test]
fn cert_table_round_trip_and_unknown_guid_ignored() {
    let Some(table) = milan_table() else { return };
    let set = CertSet::from_cert_table(&table).expect("table");
    assert_eq!(set.ark, cert("amd/milan/ark.pem"));
    assert_eq!(set.ask, cert("amd/milan/ask.pem"));
    assert_eq!(set.vcek, cert("reports/milan-virtee/vcek.der"));
    verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).expect("verifies");
    // Only the terminator: an empty set.
    assert!(CertSet::from_cert_table(&[0u8; 24])
        .expect("empty")
        .is_empty());
}

#[test]
fn cert_table_guids_are_rfc4122_byte_order() {
    assert_eq!(hex::encode(GUID_ARK), "c0b406a4a803495297433fb6014cd0ae");
    assert_eq!(hex::encode(GUID_ASK), "4ab7b379bbac4fe4a02f05aef327c782");
    assert_eq!(hex::encode(GUID_VCEK), "63da758de6644564adc5f4b93be8accd");
    assert_eq!(hex::encode(GUID_VLEK), "a8074bc2a25a483eaae639c045a0b8a1");
    assert_eq!(hex::encode(GUID_CRL), "92f81bc358114d3d97ffd19f88dc67ea");
}

#[test]
fn cert_table_out_of_range_offset() {
    let Some(mut table) = milan_table() else {
        return;
    };
    let len = table.len() as u32;
    set_entry(&mut table, 0, len, 10);
    assert!(matches!(
        CertSet::from_cert_table(&table),
        Err(CertError::Table(_))
    ));
}

#[test]
fn cert_table_length_past_end() {
    let Some(mut table) = milan_table() else {
        return;
    };
    let len = table.len() as u32;
    set_entry(&mut table, 3, len - 100, 200);
    assert!(matches!(
        CertSet::from_cert_table(&table),
        Err(CertError::Table(_))
    ));
}

#[test]
fn cert_table_offset_overflow() {
    let Some(mut table) = milan_table() else {
        return;
    };
    set_entry(&mut table, 1, u32::MAX, 60_000);
    assert!(matches!(
        CertSet::from_cert_table(&table),
        Err(CertError::Table(_))
    ));
}

#[test]
fn cert_table_huge_length() {
    let Some(mut table) = milan_table() else {
        return;
    };
    set_entry(&mut table, 0, 120, u32::MAX);
    assert!(matches!(
        CertSet::from_cert_table(&table),
        Err(CertError::TooLarge { .. })
    ));
}

#[test]
fn cert_table_overlapping_entries() {
    let Some(mut table) = milan_table() else {
        return;
    };
    // The VCEK entry pointed at the ASK's bytes.
    let ask_off = u32::from_le_bytes(table[24 + 16..24 + 20].try_into().expect("4"));
    let ask_len = u32::from_le_bytes(table[24 + 20..24 + 24].try_into().expect("4"));
    set_entry(&mut table, 3, ask_off, ask_len);
    assert!(matches!(
        CertSet::from_cert_table(&table),
        Err(CertError::Table(_))
    ));
}

#[test]
fn cert_table_missing_terminator_and_truncated() {
    let Some(table) = milan_table() else { return };
    // Entries with no all-zero entry after them (cut inside the header).
    let entries_only = &table[..4 * 24];
    assert!(matches!(
        CertSet::from_cert_table(entries_only),
        Err(CertError::Table(_))
    ));
    // Truncated entry.
    assert!(matches!(
        CertSet::from_cert_table(&table[..30]),
        Err(CertError::Table(_))
    ));
    assert!(matches!(
        CertSet::from_cert_table(&[]),
        Err(CertError::Table(_))
    ));
    assert!(matches!(
        CertSet::from_cert_table(&[0u8; 23]),
        Err(CertError::Table(_))
    ));
}

#[test]
fn cert_table_duplicate_and_garbage_entries() {
    let Some(vcek) = testdata::read("reports/milan-virtee/vcek.der") else {
        return;
    };
    let dup = build_table(&[(GUID_VCEK, vcek.clone()), (GUID_VCEK, vcek)]);
    assert!(matches!(
        CertSet::from_cert_table(&dup),
        Err(CertError::Duplicate { .. })
    ));
    let garbage = build_table(&[(GUID_ASK, b"not a certificate".to_vec())]);
    assert!(matches!(
        CertSet::from_cert_table(&garbage),
        Err(CertError::Malformed { .. })
    ));
    let empty = build_table(&[(GUID_ARK, Vec::new())]);
    assert!(matches!(
        CertSet::from_cert_table(&empty),
        Err(CertError::Table(_))
    ));
    let too_big = vec![0u8; CERT_TABLE_MAX_SIZE + 1];
    assert!(matches!(
        CertSet::from_cert_table(&too_big),
        Err(CertError::TooLarge { .. })
    ));
}

#[test]
fn cert_table_random_mutations_never_panic() {
    let Some(table) = milan_table() else { return };
    // xorshift: deterministic, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut t = table.clone();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            // Mostly hit the header, sometimes the data.
            let i = if next() % 4 == 0 {
                (next() as usize) % t.len()
            } else {
                (next() as usize) % (5 * 24)
            };
            t[i] = next() as u8;
        }
        if next() % 8 == 0 {
            let cut = (next() as usize) % t.len();
            t.truncate(cut);
        }
        let _ = CertSet::from_cert_table(&t);
    }
    for len in 0..200 {
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = CertSet::from_cert_table(&junk);
    }
}

#[test]
fn from_dir_pem_der_and_kds_chain() {
    let Some(root) = testdata::dir() else { return };
    let tmp = std::env::temp_dir().join(format!("snpguard-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let pem_dir = tmp.join("pem");
    let der_dir = tmp.join("der");
    let kds_dir = tmp.join("kds");
    for d in [&pem_dir, &der_dir, &kds_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let ark = std::fs::read(root.join("amd/milan/ark.pem")).expect("ark");
    let ask = std::fs::read(root.join("amd/milan/ask.pem")).expect("ask");
    let asvk = std::fs::read(root.join("amd/milan/asvk.pem")).expect("asvk");
    let vcek = std::fs::read(root.join("reports/milan-virtee/vcek.der")).expect("vcek");
    let vlek = std::fs::read(root.join("reports/milan-trustee-vlek/vlek.der")).expect("vlek");
    std::fs::write(pem_dir.join("ark.pem"), &ark).expect("w");
    std::fs::write(pem_dir.join("ask.pem"), &ask).expect("w");
    std::fs::write(pem_dir.join("vcek.der"), &vcek).expect("w");
    std::fs::write(pem_dir.join("README"), b"ignored").expect("w");
    let set = CertSet::from_dir(&pem_dir).expect("pem dir");
    assert!(set.ark.is_some() && set.ask.is_some() && set.vcek.is_some());
    verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).expect("verifies");

    let der = |pem: &[u8]| Cert::from_pem_or_der(pem).expect("pem").der().to_vec();
    std::fs::write(der_dir.join("ark.der"), der(&ark)).expect("w");
    std::fs::write(der_dir.join("asvk.der"), der(&asvk)).expect("w");
    std::fs::write(der_dir.join("vlek.der"), &vlek).expect("w");
    let set = CertSet::from_dir(&der_dir).expect("der dir");
    verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, JAN_2025).expect("vlek");

    // KDS cert_chain.pem is ASVK then ARK; the roles come from the names.
    let mut chain = asvk.clone();
    chain.extend_from_slice(&ark);
    std::fs::write(kds_dir.join("cert_chain.pem"), &chain).expect("w");
    std::fs::write(kds_dir.join("vlek.der"), &vlek).expect("w");
    let set = CertSet::from_dir(&kds_dir).expect("kds dir");
    assert!(set.asvk.is_some() && set.ark.is_some() && set.ask.is_none());
    verify_endorsement(&anchors(), &set, KeyKind::Vlek, None, JAN_2025).expect("vlek");

    // The same ARK twice is fine; a different one is a conflict.
    std::fs::write(kds_dir.join("ark.pem"), &ark).expect("w");
    CertSet::from_dir(&kds_dir).expect("same ark twice");
    let genoa_ark = std::fs::read(root.join("amd/genoa/ark.pem")).expect("ark");
    std::fs::write(kds_dir.join("ark.pem"), &genoa_ark).expect("w");
    assert!(matches!(
        CertSet::from_dir(&kds_dir),
        Err(CertError::Duplicate { .. })
    ));

    // Garbage where a certificate belongs.
    std::fs::write(
        kds_dir.join("ark.pem"),
        b"-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .expect("w");
    assert!(matches!(
        CertSet::from_dir(&kds_dir),
        Err(CertError::Malformed { .. })
    ));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn merge_fills_only_missing() {
    let Some(vcek) = cert("reports/milan-virtee/vcek.der") else {
        return;
    };
    let other_vcek = cert("reports/milan-trustee/vcek.der").expect("vcek");
    let mut a = CertSet {
        vcek: Some(vcek.clone()),
        ..CertSet::default()
    };
    a.merge(CertSet {
        vcek: Some(other_vcek),
        ask: cert("amd/milan/ask.pem"),
        crl: Some(vec![1, 2, 3]),
        ..CertSet::default()
    });
    assert_eq!(a.vcek, Some(vcek));
    assert_eq!(a.ask, cert("amd/milan/ask.pem"));
    assert_eq!(a.crl, Some(vec![1, 2, 3]));
}

#[test]
fn garbage_crl_fails_closed() {
    let Some(mut set) = vcek_set("milan-virtee") else {
        return;
    };
    set.crl = Some(b"not a crl".to_vec());
    let err = verify_endorsement(&anchors(), &set, KeyKind::Vcek, None, JAN_2025).unwrap_err();
    assert!(matches!(err, ChainError::CrlMalformed { .. }), "{err:?}");
}

#[test]
fn cache_skips_rsa_but_rechecks_time() {
    let Some(set) = milan_vlek_set() else { return };
    let a = anchors();
    let cache = EndorsementCache::new(2);
    let first = cache
        .verify(&a, &set, KeyKind::Vlek, None, JAN_2025)
        .expect("first");
    assert_eq!(cache.len(), 1);
    let again = cache
        .verify(&a, &set, KeyKind::Vlek, None, JAN_2025)
        .expect("hit");
    assert_eq!(first, again);
    assert_eq!(cache.len(), 1);
    let err = cache
        .verify(&a, &set, KeyKind::Vlek, None, now())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ChainError::Expired {
                role: CertRole::Vlek,
                ..
            }
        ),
        "{err:?}"
    );
    // A different hint is a different key, and still checked.
    let err = cache
        .verify(&a, &set, KeyKind::Vlek, Some(Product::Turin), JAN_2025)
        .unwrap_err();
    assert!(matches!(err, ChainError::ProductMismatch { .. }), "{err:?}");
    // Failures are not cached; capacity bounds the rest.
    for name in ["milan-virtee", "milan-trustee", "milan-gosevguest"] {
        let s = vcek_set(name).expect("vcek");
        cache
            .verify(&a, &s, KeyKind::Vcek, None, JAN_2025)
            .expect("vcek");
    }
    assert_eq!(cache.len(), 2);
    // A tampered VCEK never hits the entry of the good one.
    let mut bad = vcek_set("milan-gosevguest").expect("vcek");
    let v = bad.vcek.take().expect("vcek");
    bad.vcek = Some(flip_from_end(&v, 10));
    let err = cache
        .verify(&a, &bad, KeyKind::Vcek, None, JAN_2025)
        .unwrap_err();
    assert!(matches!(err, ChainError::Signature { .. }), "{err:?}");
}

// ---- generated test chain ------------------------------------------------

mod generated {
    use super::super::testchain::{self, CertSpec, Sign};
    use super::*;

    fn test_anchors(ark: &Cert) -> TrustAnchors {
        anchors()
            .with_test_root(Product::Milan, ark.der())
            .expect("test root")
    }

    fn set(chain: &testchain::Chain) -> CertSet {
        CertSet {
            ask: Some(chain.ask.clone()),
            vcek: Some(chain.vcek.clone()),
            ..CertSet::default()
        }
    }

    #[test]
    fn test_chain_verifies_only_with_test_root_and_is_flagged() {
        let c = testchain::chain();
        let s = set(&c);
        let e = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .expect("test chain");
        assert!(e.test_root);
        assert_eq!(e.product, Product::Milan);
        assert_eq!(
            e.tcb,
            CertTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: None
            }
        );
        // The same chain against AMD's anchors only.
        let err = verify_endorsement(&anchors(), &s, KeyKind::Vcek, None, JAN_2025).unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::IssuerMismatch {
                    role: CertRole::Ask,
                    parent: CertRole::Ark,
                    ..
                }
            ),
            "{err:?}"
        );
        // Handing the test ARK in the set does not make it trusted.
        let mut with_ark = s.clone();
        with_ark.ark = Some(c.ark.clone());
        let err =
            verify_endorsement(&anchors(), &with_ark, KeyKind::Vcek, None, JAN_2025).unwrap_err();
        assert!(matches!(err, ChainError::ArkNotPinned { .. }), "{err:?}");
        // Real AMD chains still verify with a test root added.
        let real = vcek_set("milan-virtee").expect("vcek");
        let e = verify_endorsement(&test_anchors(&c.ark), &real, KeyKind::Vcek, None, JAN_2025)
            .expect("real chain");
        assert!(!e.test_root);
    }

    #[test]
    fn cache_does_not_carry_a_test_root_over_to_amd_anchors() {
        let c = testchain::chain();
        let s = set(&c);
        let cache = EndorsementCache::new(8);
        let e = cache
            .verify(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .expect("test chain");
        assert!(e.test_root);
        let err = cache
            .verify(&anchors(), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(matches!(err, ChainError::IssuerMismatch { .. }), "{err:?}");
    }

    #[test]
    fn broken_root_self_signature() {
        let c = testchain::chain();
        let bad_ark = flip_from_end(&c.ark, 10);
        let err = verify_endorsement(
            &test_anchors(&bad_ark),
            &set(&c),
            KeyKind::Vcek,
            None,
            JAN_2025,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ChainError::Signature {
                role: CertRole::Ark,
                issuer: CertRole::Ark
            }
        );
    }

    #[test]
    fn crl_not_listing_the_ask_passes() {
        let c = testchain::chain();
        let mut s = set(&c);
        s.crl = Some(testchain::crl(
            testchain::ark_name(),
            &testchain::keys().ark,
            &[9],
        ));
        verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .expect("not revoked");
        // PEM form too.
        let der = s.crl.take().expect("crl");
        s.crl = Some(
            der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, &der)
                .expect("pem")
                .into_bytes(),
        );
        verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .expect("pem crl");
    }

    #[test]
    fn crl_outside_its_window_is_not_evidence() {
        let c = testchain::chain();
        let mut s = set(&c);
        // Current 2020-01-01 .. 2021-01-01 only: an old CRL replayed later
        // could hide a revocation made since.
        s.crl = Some(testchain::crl_between(
            testchain::ark_name(),
            &testchain::keys().ark,
            &[9],
            1_577_836_800,
            1_609_459_200,
        ));
        let e = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .expect_err("stale crl");
        assert_eq!(e.code(), "crl-not-current", "{e}");
        // Through the cache too: the window is checked on every call.
        let cache = EndorsementCache::new(4);
        for _ in 0..2 {
            let e = cache
                .verify(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
                .expect_err("stale crl");
            assert_eq!(e.code(), "crl-not-current", "{e}");
        }
    }

    #[test]
    fn crl_revoking_the_ask() {
        let c = testchain::chain();
        let mut s = set(&c);
        s.crl = Some(testchain::crl(
            testchain::ark_name(),
            &testchain::keys().ark,
            &[9, 2],
        ));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert_eq!(
            err,
            ChainError::Revoked {
                role: CertRole::Ask,
                serial: "02".to_owned()
            }
        );
        assert_eq!(err.code(), "revoked");
    }

    #[test]
    fn crl_signed_by_another_key() {
        let c = testchain::chain();
        let mut s = set(&c);
        s.crl = Some(testchain::crl(
            testchain::ark_name(),
            &testchain::keys().other,
            &[],
        ));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(matches!(err, ChainError::CrlSignature { .. }), "{err:?}");
    }

    #[test]
    fn crl_from_another_issuer() {
        let c = testchain::chain();
        let mut s = set(&c);
        let other = testchain::name("CN=ARK-Genoa,O=SnpGuard Test");
        s.crl = Some(testchain::crl(other, &testchain::keys().ark, &[]));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(matches!(err, ChainError::CrlIssuer { .. }), "{err:?}");
    }

    #[test]
    fn pkcs1v15_signature_is_the_wrong_algorithm() {
        let c = testchain::chain();
        let mut s = set(&c);
        let mut spec = testchain::vcek_spec();
        spec.sign = Sign::Pkcs1v15;
        s.vcek = Some(testchain::make(spec, &testchain::keys().ask));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::SignatureAlgorithm {
                    role: CertRole::Vcek,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn pss_salt_32_is_the_wrong_algorithm() {
        let c = testchain::chain();
        let mut s = set(&c);
        let mut spec = testchain::vcek_spec();
        spec.sign = Sign::Pss(32);
        s.vcek = Some(testchain::make(spec, &testchain::keys().ask));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::SignatureAlgorithm {
                    role: CertRole::Vcek,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rsa_endorsement_key_is_not_p384() {
        let c = testchain::chain();
        let mut s = set(&c);
        let mut spec = testchain::vcek_spec();
        spec.spki = testchain::rsa_spki(&testchain::keys().other);
        s.vcek = Some(testchain::make(spec, &testchain::keys().ask));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::EndorsementKey {
                    role: CertRole::Vcek,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), "endorsement-key-not-p384");
    }

    #[test]
    fn missing_tcb_extension() {
        let c = testchain::chain();
        let mut s = set(&c);
        let mut spec = testchain::vcek_spec();
        spec.exts
            .retain(|e| e.extn_id != super::super::ext::OID_SNP_SPL);
        s.vcek = Some(testchain::make(spec, &testchain::keys().ask));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(
            matches!(err, ChainError::Extension { role: CertRole::Vcek, oid, .. } if oid == super::super::ext::OID_SNP_SPL),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_hwid_length() {
        let c = testchain::chain();
        let mut s = set(&c);
        let mut spec = testchain::vcek_spec();
        for e in &mut spec.exts {
            if e.extn_id == super::super::ext::OID_HWID {
                e.extn_value = der::asn1::OctetString::new(vec![0xAB; 8]).expect("octets");
            }
        }
        s.vcek = Some(testchain::make(spec, &testchain::keys().ask));
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(matches!(err, ChainError::Extension { .. }), "{err:?}");
    }

    #[test]
    fn no_product_information_and_no_hint() {
        let c = testchain::chain();
        let k = testchain::keys();
        let ask = testchain::make(
            CertSpec {
                serial: 2,
                issuer: testchain::ark_name(),
                subject: testchain::name("CN=SEV-Unknown,O=SnpGuard Test"),
                spki: testchain::rsa_spki(&k.ask),
                exts: Vec::new(),
                sign: Sign::Pss(48),
            },
            &k.ark,
        );
        let mut spec = testchain::vcek_spec();
        spec.issuer = testchain::name("CN=SEV-Unknown,O=SnpGuard Test");
        spec.exts
            .retain(|e| e.extn_id != super::super::ext::OID_PRODUCT_NAME);
        let s = CertSet {
            ask: Some(ask),
            vcek: Some(testchain::make(spec, &k.ask)),
            ..CertSet::default()
        };
        let err = verify_endorsement(&test_anchors(&c.ark), &s, KeyKind::Vcek, None, JAN_2025)
            .unwrap_err();
        assert!(matches!(err, ChainError::ProductUnknown { .. }), "{err:?}");
    }
}

/// AMD's own certificates: the role their names claim, and the product
/// an endorsement key claims (productName, else its issuer's name).
#[test]
fn named_roles_and_claimed_products_of_amd_certificates() {
    let cases = [
        ("amd/milan/ark.pem", CertRole::Ark),
        ("amd/milan/ask.pem", CertRole::Ask),
        ("amd/milan/asvk.pem", CertRole::Asvk),
        ("amd/genoa/ask.pem", CertRole::Ask),
        ("reports/milan-virtee/vcek.der", CertRole::Vcek),
        ("reports/genoa-oak/vcek.der", CertRole::Vcek),
        ("reports/turin-oak/vcek.der", CertRole::Vcek),
        ("reports/milan-trustee-vlek/vlek.der", CertRole::Vlek),
    ];
    for (rel, role) in cases {
        let Some(c) = cert(rel) else { return };
        assert_eq!(c.named_role(), Some(role), "{rel}");
    }
    for (rel, product) in [
        ("reports/milan-virtee/vcek.der", Product::Milan),
        ("reports/genoa-oak/vcek.der", Product::Genoa),
        ("reports/turin-oak/vcek.der", Product::Turin),
        ("reports/milan-trustee-vlek/vlek.der", Product::Milan),
    ] {
        let Some(c) = cert(rel) else { return };
        assert_eq!(c.claimed_product(), Some(product), "{rel}");
    }
}
