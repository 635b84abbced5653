//! Certificates from outside: the GUID certificate table, configfs-tsm
//! JSON, PEM/DER certificates and bundles, the daemon's certificate
//! import, and ARK CRLs.

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use der::pem::LineEnding;
use snpguard::certs::{
    encode_cert_table, parse_tsm_json, verify_ca, verify_endorsement, Cert, CertRole, CertSet, Crl,
    KeyKind, Product, TrustAnchors, GUID_ARK, GUID_ASK, GUID_CRL, GUID_VCEK, GUID_VLEK,
};
use snpguard_testkit::sim::{SimCa, SimPlatform, SimTcb};
use snpguardd::attest::certs::import;
use snpguardd::store::{Store, Tree};
use time::macros::datetime;

use crate::fixtures::{self, apply_xors, chunk, xor_at, Input, VERIFY_AT};
use crate::store::MemStore;

/// The (GUID, bytes) entries a table of `set` holds, in table order.
fn table_entries(set: &CertSet) -> Vec<([u8; 16], Vec<u8>)> {
    let mut out = Vec::new();
    for (guid, cert) in [
        (GUID_ARK, &set.ark),
        (GUID_ASK, &set.ask),
        (GUID_VCEK, &set.vcek),
        (GUID_VLEK, &set.vlek),
    ] {
        if let Some(c) = cert {
            out.push((guid, c.der().to_vec()));
        }
    }
    if let Some(crl) = &set.crl {
        out.push((GUID_CRL, crl.clone()));
    }
    out
}

fn encode_set(set: &CertSet) -> Vec<u8> {
    let entries = table_entries(set);
    let refs: Vec<([u8; 16], &[u8])> = entries.iter().map(|(g, b)| (*g, &b[..])).collect();
    encode_cert_table(&refs)
}

/// `cert_table`: a table that parses holds no ASVK (it has no GUID), and
/// encoding what was read gives a table that parses to the same set.
pub fn cert_table(data: &[u8]) {
    let Ok(set) = CertSet::from_cert_table(data) else {
        return;
    };
    fixtures::reached("cert_table");
    assert!(set.asvk.is_none(), "a certificate table has no ASVK entry");
    let again = CertSet::from_cert_table(&encode_set(&set)).expect("an encoded table parses");
    assert_eq!(again, set, "table -> set -> table -> set");
}

fn real_table() -> Option<Vec<u8>> {
    let ark = fixtures::read("amd/milan/ark.pem")?;
    let ask = fixtures::read("amd/milan/ask.pem")?;
    let vcek = fixtures::read("reports/milan-virtee/vcek.der")?;
    let der = |pem: &[u8]| {
        Cert::from_pem_or_der(pem)
            .expect("test data")
            .der()
            .to_vec()
    };
    let (ark, ask) = (der(&ark), der(&ask));
    Some(encode_cert_table(&[
        (GUID_ARK, &ark),
        (GUID_ASK, &ask),
        (GUID_VCEK, &vcek),
    ]))
}

/// The auxblob of the real configfs-tsm evidence, a table of the Milan
/// ARK, ASK and a real VCEK, one with a CRL and an unknown GUID, and the
/// empty table.
pub fn table_seeds() -> Vec<Vec<u8>> {
    let mut out = vec![vec![0u8; 24]];
    if let Some(json) = fixtures::read("tsm/genoa-veraison.json") {
        let (_, certs) = parse_tsm_json(&json).expect("the real tsm json parses");
        out.push(encode_set(&certs));
    }
    if let Some(t) = real_table() {
        out.push(t);
    }
    let crl = b"not a CRL; the table keeps it as bytes".to_vec();
    out.push(encode_cert_table(&[
        ([0x11; 16], b"provider data"),
        (GUID_CRL, &crl),
    ]));
    out
}

/// `tsm_json`: what parses re-encodes (standard and URL-safe base64) to
/// JSON that parses to the same report and certificates.
pub fn tsm_json(data: &[u8]) {
    let Ok((report, certs)) = parse_tsm_json(data) else {
        return;
    };
    fixtures::reached("tsm_json");
    assert!(!report.is_empty() && report.len() <= 16 * 1024);
    let table = encode_set(&certs);
    for (out, aux) in [
        (STANDARD.encode(&report), STANDARD.encode(&table)),
        (
            URL_SAFE_NO_PAD.encode(&report),
            URL_SAFE_NO_PAD.encode(&table),
        ),
    ] {
        let json = if certs.is_empty() {
            serde_json::json!({ "outblob": out })
        } else {
            serde_json::json!({ "outblob": out, "auxblob": aux })
        };
        let bytes = serde_json::to_vec(&json).expect("json");
        let (r, c) = parse_tsm_json(&bytes).expect("re-encoded configfs-tsm json parses");
        assert_eq!(r, report, "outblob round trip");
        assert_eq!(c, certs, "auxblob round trip");
    }
}

/// The real configfs-tsm evidence, and small hand-made documents.
pub fn tsm_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        br#"{"outblob":"AAAA"}"#.to_vec(),
        br#"{"outblob":"AA==","auxblob":""}"#.to_vec(),
        br#"{"outblob":"-_-_","auxblob":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","provider":"sev_guest"}"#
            .to_vec(),
    ];
    if let Some(json) = fixtures::read("tsm/genoa-veraison.json") {
        out.push(json);
    }
    if let (Some(table), Some(report)) = (
        real_table(),
        fixtures::read("reports/milan-virtee/report.bin"),
    ) {
        let json = serde_json::json!({
            "outblob": STANDARD.encode(&report),
            "auxblob": STANDARD.encode(&table),
        });
        out.push(serde_json::to_vec(&json).expect("json"));
    }
    out
}

/// A scratch directory holding only `cert_chain.pem`, rewritten per input.
fn chain_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = fixtures::scratch().join("cert-dir");
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    })
}

/// The DER of every `CERTIFICATE` block of a PEM text, split naively (an
/// oracle independent of the parser under test).
fn pem_blocks(data: &[u8]) -> Vec<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("-----BEGIN ") {
        let block = &text[i..];
        if let Some(end) = block.find("-----END ") {
            let tail = &block[end + 9..];
            if let Some(close) = tail.find("-----") {
                let pem = &block[..end + 9 + close + 5];
                if let Ok((label, der)) = der::pem::decode_vec(pem.as_bytes()) {
                    if label == "CERTIFICATE" {
                        out.push(der);
                    }
                }
            }
        }
    }
    out
}

/// `cert_parse`: one certificate (DER or PEM) re-parses from its DER and
/// from the PEM of its DER to the same certificate; a PEM bundle read as
/// `cert_chain.pem` yields only certificates that are in the input, each
/// in the role its subject names.
pub fn cert_parse(data: &[u8]) {
    if let Ok(cert) = Cert::from_pem_or_der(data) {
        let again =
            Cert::from_pem_or_der(cert.der()).expect("the DER of a parsed certificate parses");
        assert_eq!(again, cert);
        let pem = der::pem::encode_string("CERTIFICATE", LineEnding::LF, cert.der()).expect("pem");
        let again = Cert::from_pem_or_der(pem.as_bytes()).expect("its PEM parses");
        assert_eq!(again, cert);
        let _ = (
            cert.subject_cn(),
            cert.issuer_cn(),
            cert.serial(),
            cert.fingerprint(),
        );
    }
    let dir = chain_dir();
    std::fs::write(dir.join("cert_chain.pem"), data).expect("writing cert_chain.pem");
    let Ok(set) = CertSet::from_dir(dir) else {
        return;
    };
    if !set.is_empty() {
        fixtures::reached("cert_parse");
    }
    assert!(set.vcek.is_none() && set.vlek.is_none() && set.crl.is_none());
    let blocks = pem_blocks(data);
    for (cert, prefix) in [
        (&set.ark, "ARK-"),
        (&set.ask, "SEV-"),
        (&set.asvk, "SEV-VLEK-"),
    ] {
        let Some(cert) = cert else { continue };
        let cn = cert.subject_cn().unwrap_or_default();
        assert!(cn.starts_with(prefix), "{cn:?} taken as {prefix}");
        if prefix == "SEV-" {
            assert!(!cn.starts_with("SEV-VLEK-"), "an ASVK taken as the ASK");
        }
        assert!(
            cert.der() == data || blocks.iter().any(|b| b == cert.der()),
            "a certificate that is not in the input"
        );
    }
}

/// AMD's PEM certificates, a real VCEK in DER, KDS-style cert_chain
/// bundles and broken PEM.
pub fn parse_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_vec(),
        b"-----BEGIN X509 CRL-----\n-----END X509 CRL-----".to_vec(),
        b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        vec![0x30, 0x82, 0x00, 0x00],
    ];
    let (Some(ask), Some(ark), Some(asvk), Some(vcek)) = (
        fixtures::read("amd/genoa/ask.pem"),
        fixtures::read("amd/genoa/ark.pem"),
        fixtures::read("amd/genoa/asvk.pem"),
        fixtures::read("reports/genoa-oak/vcek.der"),
    ) else {
        return out;
    };
    out.push([&ask[..], &ark[..]].concat());
    out.push([&asvk[..], b"\n", &ark[..]].concat());
    out.push([&ark[..], &ask[..], &asvk[..]].concat());
    out.push(ask);
    out.push(vcek);
    out
}

/// The files of an import, each a [`chunk`]; a final partial one is cut.
fn files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut input = Input::new(data);
    let mut out = Vec::new();
    while !input.is_empty() && out.len() < 8 {
        out.push((format!("/import/{}", out.len()), input.chunk().to_vec()));
    }
    out
}

/// `cert_import` (the daemon's `ImportCertificates`): input is up to 8
/// files, each a 16-bit length and its bytes. All or nothing: a refused
/// import stores nothing; an accepted one stores only certificates whose
/// chain to AMD's roots verifies, under the key of the product, chip and
/// TCB that chain establishes; importing the same files again gives the
/// same answer.
pub fn cert_import(data: &[u8]) {
    let files = files(data);
    let store = MemStore::default();
    let anchors = fixtures::anchors();
    let Ok(summaries) = import(&store, anchors, &files, VERIFY_AT) else {
        assert_eq!(store.len(), 0, "a refused import stored something");
        return;
    };
    let entries = store.entries(Tree::Certs).expect("entries");
    assert!(
        entries.len() <= summaries.len(),
        "more stored than reported"
    );
    if !entries.is_empty() {
        fixtures::reached("cert_import");
    }
    assert_eq!(
        store.len(),
        entries.len(),
        "only the certificate tree is written"
    );
    let held = |key: String| {
        store
            .get(Tree::Certs, key.as_bytes())
            .expect("get")
            .map(|der| Cert::from_pem_or_der(&der).expect("a held intermediate parses"))
    };
    for (key, der) in &entries {
        let key = String::from_utf8(key.clone()).expect("keys are text");
        let cert = Cert::from_pem_or_der(der).expect("a stored certificate parses");
        let parts: Vec<&str> = key.split('/').collect();
        let product = parts.get(2).copied().unwrap_or_default();
        match parts.get(1).copied() {
            Some(role @ ("ask" | "asvk")) => {
                let ca = verify_ca(anchors, &cert, VERIFY_AT).expect("a stored CA verifies");
                let want = if role == "ask" {
                    CertRole::Ask
                } else {
                    CertRole::Asvk
                };
                assert_eq!(ca.role, want, "{key}");
                assert_eq!(ca.product.kds_name(), product, "{key}");
            }
            Some(role @ ("vcek" | "vlek")) => {
                let mut set = CertSet::default();
                let kind = if role == "vcek" {
                    set.vcek = Some(cert);
                    set.ask = held(format!("import/ask/{product}"));
                    KeyKind::Vcek
                } else {
                    set.vlek = Some(cert);
                    set.asvk = held(format!("import/asvk/{product}"));
                    KeyKind::Vlek
                };
                let e = verify_endorsement(anchors, &set, kind, None, VERIFY_AT)
                    .unwrap_or_else(|e| panic!("{key}: a stored endorsement key is refused: {e}"));
                assert_eq!(e.product.kds_name(), product, "{key}");
                if kind == KeyKind::Vcek {
                    let hwid = e.hwid.expect("a VCEK has a hwID");
                    assert_eq!(parts.get(3).copied(), Some(&hex::encode(hwid)[..]), "{key}");
                }
            }
            _ => panic!("unexpected key {key}"),
        }
    }
    let again = import(&store, anchors, &files, VERIFY_AT).expect("the same import again");
    assert_eq!(again, summaries, "importing twice");
}

/// Real AMD intermediates and endorsement keys, alone, together, as
/// PEM bundles and as a certificate table; and refusals.
pub fn import_seeds() -> Vec<Vec<u8>> {
    let mut out = vec![chunk(b"-----BEGIN CERTIFICATE-----\n"), chunk(b"")];
    let (Some(ask), Some(ark), Some(asvk), Some(vcek), Some(vlek), Some(turin)) = (
        fixtures::read("amd/milan/ask.pem"),
        fixtures::read("amd/milan/ark.pem"),
        fixtures::read("amd/milan/asvk.pem"),
        fixtures::read("reports/milan-virtee/vcek.der"),
        fixtures::read("reports/milan-trustee-vlek/vlek.der"),
        fixtures::read("reports/turin-oak/vcek.der"),
    ) else {
        return out;
    };
    out.push(chunk(&vcek));
    out.push([chunk(&ask), chunk(&vcek)].concat());
    out.push(chunk(&[&ask[..], &ark[..]].concat()));
    out.push([chunk(&asvk), chunk(&vlek)].concat());
    out.push([chunk(&vlek)].concat());
    out.push([chunk(&turin), chunk(&ark)].concat());
    if let Some(t) = real_table() {
        out.push(chunk(&t));
    }
    out
}

/// A simulated Milan platform trusted as a test root, with the CRLs its
/// ARK issued: one revoking the ASVK, one revoking the ASK.
struct CrlBench {
    platform: SimPlatform,
    anchors: TrustAnchors,
    revokes_asvk: Vec<u8>,
    revokes_ask: Vec<u8>,
}

fn crl_bench() -> &'static CrlBench {
    static BENCH: OnceLock<CrlBench> = OnceLock::new();
    BENCH.get_or_init(|| {
        let tcb = SimTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: 0,
        };
        let platform =
            SimPlatform::generate(Product::Milan, tcb, &[0x5a; 64]).expect("simulated platform");
        let anchors = TrustAnchors::amd()
            .and_then(|a| a.with_test_root(Product::Milan, &platform.ark_der))
            .expect("anchors");
        let (from, to) = (
            datetime!(2025-06-01 0:00 UTC),
            datetime!(2025-12-01 0:00 UTC),
        );
        let revokes_asvk = platform.issue_crl(&[SimCa::Asvk], from, to).expect("crl");
        let revokes_ask = platform.issue_crl(&[SimCa::Ask], from, to).expect("crl");
        CrlBench {
            platform,
            anchors,
            revokes_asvk,
            revokes_ask,
        }
    })
}

/// `crl`: the first byte picks the input: 0 the rest as it is, 1 and 2 a
/// genuine CRL of a (simulated) trusted ARK with the rest as XOR
/// mutations, 3 and 4 the same as PEM. A CRL is accepted only unchanged;
/// what verifies looks like a CRL and verifies again from its DER; a
/// chain carrying the CRL verifies only when that CRL verifies, is
/// current and does not revoke the chain's ASK.
pub fn crl(data: &[u8]) {
    let bench = crl_bench();
    let mut input = Input::new(data);
    let mode = input.byte() % 5;
    let genuine = match mode {
        1 | 3 => Some(&bench.revokes_asvk),
        2 | 4 => Some(&bench.revokes_ask),
        _ => None,
    };
    let bytes = match genuine {
        None => input.rest().to_vec(),
        Some(g) => {
            let mut der = g.clone();
            apply_xors(&mut input, &mut der);
            if mode >= 3 {
                der::pem::encode_string("X509 CRL", LineEnding::LF, &der)
                    .expect("pem")
                    .into_bytes()
            } else {
                der
            }
        }
    };
    let changed = genuine.map(|g| match der::pem::decode_vec(&bytes) {
        Ok((_, der)) => &der != g,
        Err(_) => &bytes != g,
    });
    let verdict = Crl::verify(&bench.anchors, &bytes);
    match (&verdict, changed) {
        (Ok(_), Some(true)) => panic!("a changed CRL is accepted"),
        (Err(e), Some(false)) => panic!("the genuine CRL is refused: {e}"),
        _ => {}
    }
    let ask = Cert::from_pem_or_der(&bench.platform.ask_der).expect("ask");
    if let Ok(crl) = &verdict {
        fixtures::reached("crl");
        assert!(
            Crl::looks_like_crl(&bytes),
            "a verified CRL does not look like one"
        );
        let again = Crl::verify(&bench.anchors, crl.der()).expect("its DER verifies again");
        assert_eq!(&again, crl);
        assert!(crl.test_root() && crl.product() == Product::Milan);
    }
    let certs = CertSet {
        ark: Some(Cert::from_pem_or_der(&bench.platform.ark_der).expect("ark")),
        ask: Some(ask.clone()),
        vcek: Some(Cert::from_pem_or_der(&bench.platform.vcek_der).expect("vcek")),
        crl: Some(bytes.clone()),
        ..CertSet::default()
    };
    let chain = verify_endorsement(&bench.anchors, &certs, KeyKind::Vcek, None, VERIFY_AT);
    if chain.is_ok() {
        let crl = verdict.expect("a chain passed with a CRL that does not verify");
        assert!(
            !crl.revokes(ask.serial()),
            "a chain passed with its ASK revoked"
        );
        assert!(crl.is_current(VERIFY_AT), "a chain passed with a stale CRL");
    }
}

/// The two genuine CRLs (DER and PEM), each with one byte changed at the
/// start, in the middle and at the end, and raw bytes.
pub fn crl_seeds() -> Vec<Vec<u8>> {
    let bench = crl_bench();
    let mut out = vec![vec![0], vec![0, 0x30, 0x00]];
    for mode in 1..=4u8 {
        let len = if mode % 2 == 1 {
            bench.revokes_asvk.len()
        } else {
            bench.revokes_ask.len()
        };
        out.push(vec![mode]);
        for pos in [1, len / 2, len - 1] {
            out.push([vec![mode], xor_at(pos, 1)].concat());
        }
    }
    out.push([&[0u8][..], &bench.revokes_asvk].concat());
    out
}
