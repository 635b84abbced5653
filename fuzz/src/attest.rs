//! The `/v1` wire: nonces and base64 fields, and the JSON bodies of
//! `POST /v1/attest` and `POST /v1/renew` with the decoding the daemon
//! applies to each field before any verification.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use snpguard::certs::CertSet;
use snpguard::report::{Report, REPORT_SIZE};
use snpguard::seal::PublicKey;
use snpguard_protocol::attest::{
    b64, decode_nonce, encode_nonce, renewal_report_data, report_data, unb64, AttestRequest,
    RenewRequest, MAX_BODY, NONCE_LEN,
};

use sha2::Digest as _;

use crate::fixtures;

/// The bounds the daemon decodes fields with.
const BOUNDS: [usize; 6] = [0, 1, 32, REPORT_SIZE, MAX_BODY, 256];

/// `nonce_base64`: a nonce or a base64 field decodes only from its one
/// canonical encoding (so a report or key has one spelling on the wire),
/// and the length bound checked before decoding never refuses a field
/// whose decoded length is within the bound.
pub fn nonce_base64(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(n) = decode_nonce(s) {
        assert_eq!(encode_nonce(&n), s, "a nonce with two spellings");
        fixtures::reached("nonce_base64");
    }
    let full = STANDARD.decode(s).ok();
    for max in BOUNDS {
        let got = unb64(s, max);
        assert_eq!(
            got,
            full.clone().filter(|v| v.len() <= max),
            "unb64(max {max}) disagrees with decoding in full"
        );
        if let Some(v) = got {
            assert_eq!(b64(&v), s, "a base64 field with two spellings");
        }
    }
}

/// Nonces and fields in both alphabets, with and without padding.
pub fn nonce_seeds() -> Vec<Vec<u8>> {
    let nonce = encode_nonce(&[0xfb; NONCE_LEN]);
    let mut out: Vec<Vec<u8>> = vec![
        nonce.clone().into_bytes(),
        format!("{nonce}=").into_bytes(),
        b64(&[0xfb; NONCE_LEN]).into_bytes(),
        b64(&[1, 2]).into_bytes(),
        b64(&[1, 2, 3]).into_bytes(),
        b"QUJD\nREVG".to_vec(),
        b"QQ".to_vec(),
        b"QR==".to_vec(),
        Vec::new(),
    ];
    if let Some(r) = fixtures::read("reports/milan-virtee/report.bin") {
        out.push(b64(&r).into_bytes());
    }
    out
}

/// The field decoding the daemon does for a request's evidence
/// (`decode_evidence`): nonce, report, certificate table. Whether all of
/// them decode.
fn decode_evidence(nonce: &str, report: &str, cert_table: Option<&str>) -> bool {
    let nonce_ok = decode_nonce(nonce).is_some_and(|n| {
        assert_eq!(encode_nonce(&n), nonce, "a nonce with two spellings");
        true
    });
    let report_ok = unb64(report, REPORT_SIZE).is_some_and(|bytes| {
        Report::parse(&bytes).is_ok_and(|r| {
            assert_eq!(&r.as_bytes()[..], &bytes[..]);
            true
        })
    });
    let table_ok = match cert_table {
        None => true,
        Some(t) => unb64(t, MAX_BODY).is_some_and(|t| CertSet::from_cert_table(&t).is_ok()),
    };
    nonce_ok && report_ok && table_ok
}

/// The keys of a JSON object, when `data` is one.
fn keys(data: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `attest_request`: a body the daemon reads (at most `MAX_BODY` bytes)
/// that deserializes has only the protocol's keys, serializes back to
/// the same request, and every field goes through the daemon's decoding.
pub fn attest_request(data: &[u8]) {
    if data.len() > MAX_BODY {
        return;
    }
    let Ok(req) = serde_json::from_slice::<AttestRequest>(data) else {
        return;
    };
    for k in keys(data) {
        assert!(
            ["nonce", "report", "cert_table", "ephemeral_key", "signed"].contains(&k.as_str()),
            "unknown key {k:?} accepted"
        );
    }
    let again: AttestRequest =
        serde_json::from_slice(&serde_json::to_vec(&req).expect("serializes")).expect("re-reads");
    assert_eq!(again, req);
    let evidence = decode_evidence(&req.nonce, &req.report, req.cert_table.as_deref());
    let key = unb64(&req.ephemeral_key, 32).and_then(|k| PublicKey::from_bytes(&k).ok());
    if let (true, Some(nonce), Some(key)) = (evidence, decode_nonce(&req.nonce), key) {
        fixtures::reached("attest_request");
        let mut other = nonce;
        other[0] ^= 1;
        assert_ne!(
            report_data(&nonce, &key),
            report_data(&other, &key),
            "REPORT_DATA does not bind the nonce"
        );
    }
}

fn real_report() -> Vec<u8> {
    fixtures::read("reports/milan-virtee/report.bin").unwrap_or_else(|| vec![0; REPORT_SIZE])
}

/// A well-formed request with the real report and its certificate table,
/// and requests with each kind of fault.
pub fn attest_seeds() -> Vec<Vec<u8>> {
    let nonce = encode_nonce(&[7; NONCE_LEN]);
    let report = b64(&real_report());
    let key = b64(&snpguard::seal::SecretKey::from_bytes(&[9; 32])
        .public_key()
        .to_bytes());
    let table = b64(&snpguard::certs::encode_cert_table(&[]));
    let ok = serde_json::json!({
        "nonce": nonce, "report": report, "cert_table": table,
        "ephemeral_key": key, "signed": true,
    });
    vec![
        serde_json::to_vec(&ok).expect("json"),
        serde_json::to_vec(&serde_json::json!({
            "nonce": nonce, "report": report, "ephemeral_key": b64(&[0; 32]),
        }))
        .expect("json"),
        br#"{"nonce":"","report":"","ephemeral_key":"","extra":1}"#.to_vec(),
        br#"{"nonce":"a","nonce":"b","report":"","ephemeral_key":""}"#.to_vec(),
    ]
}

/// `renew_request`: as `attest_request`, plus the kernel and initrd
/// decoding and the command-line check the daemon applies.
pub fn renew_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<RenewRequest>(data) else {
        return;
    };
    for k in keys(data) {
        assert!(
            [
                "nonce",
                "report",
                "cert_table",
                "kernel",
                "initrd",
                "cmdline",
                "signed"
            ]
            .contains(&k.as_str()),
            "unknown key {k:?} accepted"
        );
    }
    let again: RenewRequest =
        serde_json::from_slice(&serde_json::to_vec(&req).expect("serializes")).expect("re-reads");
    assert_eq!(again, req);
    let evidence = decode_evidence(&req.nonce, &req.report, req.cert_table.as_deref());
    let kernel = unb64(&req.kernel, snpguard_protocol::attest::MAX_RENEW_BODY);
    let initrd = unb64(&req.initrd, snpguard_protocol::attest::MAX_RENEW_BODY);
    let cmdline_ok = snpguard_protocol::text::check_cmdline(&req.cmdline).is_ok();
    if cmdline_ok {
        assert!(req.cmdline.len() <= snpguard::measure::MAX_CMDLINE_LEN);
        assert!(
            !req.cmdline.chars().any(char::is_control),
            "a control character passes"
        );
    }
    if let (true, Some(nonce), Some(k), Some(i), true) = (
        evidence,
        decode_nonce(&req.nonce),
        kernel,
        initrd,
        cmdline_ok,
    ) {
        fixtures::reached("renew_request");
        let d = renewal_report_data(&nonce, &k, &i, &req.cmdline);
        assert_ne!(
            d,
            renewal_report_data(&nonce, &k, &i, &format!("{} ", req.cmdline))
        );
    }
}

/// A well-formed renewal and faulty ones.
pub fn renew_seeds() -> Vec<Vec<u8>> {
    let nonce = encode_nonce(&[7; NONCE_LEN]);
    let ok = serde_json::json!({
        "nonce": nonce, "report": b64(&real_report()),
        "kernel": b64(b"MZ kernel"), "initrd": b64(b"070701"),
        "cmdline": "root=/dev/mapper/snpguard_root ro console=ttyS0", "signed": true,
    });
    vec![
        serde_json::to_vec(&ok).expect("json"),
        br#"{"nonce":"","report":"","kernel":"","initrd":"","cmdline":"a\u0007b"}"#.to_vec(),
        br#"{"nonce":"","report":"","kernel":"","initrd":"","cmdline":"\u202e"}"#.to_vec(),
    ]
}

/// `renew_leading_nonce`: the start of a `/v1/renew` body, which the
/// server reads as it arrives (snpguardd::https::leading). A verdict given
/// for a prefix is the verdict for every longer one (the server decides on
/// what has arrived so far); a body as long as the bound gets a verdict; a
/// nonce read there is base64url of bounded length, and is the nonce the
/// whole body carries whenever it parses as a renewal (so a nonce checked
/// early is the one the handler consumes).
pub fn renew_leading_nonce(data: &[u8]) {
    use snpguardd::https::leading::{leading_nonce, Leading, LEADING_MAX, MAX_NONCE_TEXT};
    let data = &data[..data.len().min(LEADING_MAX + 64)];
    let whole = leading_nonce(data);
    for k in 0..data.len() {
        let early = leading_nonce(&data[..k]);
        if early != Leading::NeedMore {
            assert_eq!(early, whole, "the verdict at {k} bytes changed with more");
        }
    }
    if data.len() >= LEADING_MAX {
        assert_ne!(whole, Leading::NeedMore, "no verdict within the bound");
    }
    if let Leading::Nonce(n) = &whole {
        assert!(n.len() <= MAX_NONCE_TEXT, "a nonce text over the bound");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a nonce text that is not base64url: {n:?}"
        );
        fixtures::reached("renew_leading_nonce");
        if let Ok(req) = serde_json::from_slice::<RenewRequest>(data) {
            assert_eq!(&req.nonce, n, "the body's nonce is not the one read first");
        }
    }
}

/// Seeds of `renew_leading_nonce`: whole renewals and their openings.
pub fn renew_leading_seeds() -> Vec<Vec<u8>> {
    let nonce = encode_nonce(&[9; NONCE_LEN]);
    let mut seeds = renew_seeds();
    for opening in [
        format!("{{\"nonce\":\"{nonce}\",\"report\":\"\",\"kernel\":\"\",\"initrd\":\"\",\"cmdline\":\"\"}}"),
        format!(" \n{{ \"nonce\"\t:\r\n \"{nonce}\" ,\"report\":\"\"}}"),
        format!("{{\"nonce\":\"{nonce}\",\"nonce\":\"other\"}}"),
        format!("{{\"nonce\":\"{nonce}"),
        "{\"report\":\"\",\"nonce\":\"x\"}".to_owned(),
        "{\"\\u006eonce\":\"x\"}".to_owned(),
        " ".repeat(1100),
    ] {
        seeds.push(opening.into_bytes());
    }
    seeds
}

/// The agent's side of a key release: what it sent and what a genuine
/// daemon answers.
struct Release {
    report: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    secret: snpguard::seal::SecretKey,
    genuine: snpguard_protocol::attest::AttestResponse,
    json: Vec<u8>,
}

/// The released key of the genuine response.
const VMK: &[u8] = b"the volume master key, 32 bytes!";

/// A report (unsigned: only its digests matter here) naming the fixed
/// author key, and the response a daemon holding that key gives, signed
/// and sealed in this process.
fn release() -> &'static Release {
    static RELEASE: std::sync::OnceLock<Release> = std::sync::OnceLock::new();
    RELEASE.get_or_init(|| {
        let author = p384::ecdsa::SigningKey::from_slice(&[0x11; 48]).expect("a valid scalar");
        let mut report = vec![0u8; REPORT_SIZE];
        report[0] = 2;
        report[0x08..0x10].copy_from_slice(&0x30000u64.to_le_bytes());
        report[0x34] = 1;
        report[0x110..0x140]
            .copy_from_slice(&snpguard::idblock::key_digest(author.verifying_key()));
        Report::parse(&report).expect("the release report parses");
        let nonce = [3u8; NONCE_LEN];
        let secret = snpguard::seal::SecretKey::from_bytes(&[0x42; 32]);
        let sealed = snpguard_protocol::attest::seal_key(&secret.public_key(), &report, VMK)
            .expect("sealing")
            .to_bytes();
        let record = "web-1".to_owned();
        let offline = Some(snpguard_protocol::attest::OfflineUnlock::Enrol);
        let message =
            snpguard_protocol::attest::release_message(&nonce, &report, &record, &sealed, offline);
        let genuine = snpguard_protocol::attest::AttestResponse {
            record,
            sealed_key: b64(&sealed),
            signature: Some(snpguard_protocol::attest::sign_message(&author, &message)),
            offline_unlock: offline,
        };
        let json = serde_json::to_vec(&genuine).expect("json");
        Release {
            report,
            nonce,
            secret,
            genuine,
            json,
        }
    })
}

/// What the agent does with a response body (agent/src/client.rs,
/// `attest_once`): parse, check the signature over nonce, report, record
/// and sealed box, open the box. The response and the key, if released.
fn agent_receives(
    r: &Release,
    body: &[u8],
) -> Option<(snpguard_protocol::attest::AttestResponse, Vec<u8>)> {
    let resp: snpguard_protocol::attest::AttestResponse = serde_json::from_slice(body).ok()?;
    let sealed = unb64(&resp.sealed_key, snpguard::seal::MAX_SEALED_LEN)?;
    let message = snpguard_protocol::attest::release_message(
        &r.nonce,
        &r.report,
        &resp.record,
        &sealed,
        resp.offline_unlock,
    );
    snpguard_protocol::attest::verify_signature(&r.report, &message, resp.signature.as_ref())
        .ok()?;
    let boxed = snpguard::seal::SealedBox::from_bytes(&sealed).ok()?;
    let key = snpguard_protocol::attest::open_key(&r.secret, &r.report, &boxed).ok()?;
    Some((resp, key.to_vec()))
}

/// A response body from the input: the first byte picks raw (the rest of
/// the input) or XOR mutations of `genuine`. Whether it was mutated, and
/// the body.
fn response_body(data: &[u8], genuine: &[u8]) -> (bool, Vec<u8>) {
    let mut input = fixtures::Input::new(data);
    if input.byte() % 2 == 1 {
        let mut b = genuine.to_vec();
        fixtures::apply_xors(&mut input, &mut b);
        (true, b)
    } else {
        (false, input.rest().to_vec())
    }
}

/// An accepted signature's key is the one the report names (its
/// AUTHOR_KEY_DIGEST, the key the harness signs with).
fn assert_signed_by_report_key(report: &[u8], sig: &snpguard_protocol::attest::ReleaseSignature) {
    let signer = unb64(&sig.key, snpguard::idblock::PUBLIC_KEY_SIZE).expect("decoded before");
    let digest: [u8; 48] = sha2::Sha384::digest(&signer).into();
    assert_eq!(
        digest[..],
        report[0x110..0x140],
        "signed by a key the report does not name"
    );
}

/// `attest_response` (the agent, from a network peer): the first byte
/// picks the input: 0 the rest is the response body, 1 the rest are XOR
/// mutations of a genuine response made in this process. A key is
/// released only for a response signed by the key the report names; a
/// mutated response releases the key only when it still says exactly
/// what the genuine one says, and then the genuine key.
pub fn attest_response(data: &[u8]) {
    let r = release();
    let (mutated, body) = response_body(data, &r.json);
    let Some((resp, key)) = agent_receives(r, &body) else {
        assert!(
            !(mutated && body == r.json),
            "the genuine response is refused"
        );
        return;
    };
    fixtures::reached("attest_response");
    let sig = resp.signature.as_ref().expect("a released key was signed");
    assert_signed_by_report_key(&r.report, sig);
    if mutated {
        assert_eq!(resp, r.genuine, "a changed response released the key");
        assert_eq!(key, VMK);
    }
}

/// The genuine answer to a renewal of the guest of [`release`] (same
/// report, nonce and author key), signed in this process.
struct Renewal {
    genuine: snpguard_protocol::attest::RenewResponse,
    json: Vec<u8>,
}

fn renewal() -> &'static Renewal {
    static RENEWAL: std::sync::OnceLock<Renewal> = std::sync::OnceLock::new();
    RENEWAL.get_or_init(|| {
        let r = release();
        let author = p384::ecdsa::SigningKey::from_slice(&[0x11; 48]).expect("a valid scalar");
        let mut genuine = snpguard_protocol::attest::RenewResponse {
            record: "web-1".to_owned(),
            launch: "2".to_owned(),
            measurement: "ab".repeat(48),
            signature: None,
        };
        let message = snpguard_protocol::attest::renewal_message(&r.nonce, &r.report, &genuine);
        genuine.signature = Some(snpguard_protocol::attest::sign_message(&author, &message));
        let json = serde_json::to_vec(&genuine).expect("json");
        Renewal { genuine, json }
    })
}

/// What the agent does with a renewal's answer (agent/src/client.rs,
/// `renew_once`): parse, then check the signature over nonce, report,
/// record, launch and measurement. The response, if accepted.
fn agent_accepts_renewal(
    r: &Release,
    body: &[u8],
) -> Option<snpguard_protocol::attest::RenewResponse> {
    let resp: snpguard_protocol::attest::RenewResponse = serde_json::from_slice(body).ok()?;
    let message = snpguard_protocol::attest::renewal_message(&r.nonce, &r.report, &resp);
    snpguard_protocol::attest::verify_signature(&r.report, &message, resp.signature.as_ref())
        .ok()?;
    Some(resp)
}

/// `renew_response` (the agent, from a network peer): as
/// [`attest_response`] for the answer to `POST /v1/renew`. A response is
/// accepted only when signed by the key the report names; a mutated one
/// only when it still says exactly what the genuine one says; a release
/// signature is never a renewal signature.
pub fn renew_response(data: &[u8]) {
    let r = release();
    let g = renewal();
    let (mutated, body) = response_body(data, &g.json);
    let Some(resp) = agent_accepts_renewal(r, &body) else {
        assert!(
            !(mutated && body == g.json),
            "the genuine renewal response is refused"
        );
        return;
    };
    fixtures::reached("renew_response");
    let sig = resp
        .signature
        .as_ref()
        .expect("an accepted response was signed");
    assert_signed_by_report_key(&r.report, sig);
    let release_sig = r.genuine.signature.as_ref().expect("the release is signed");
    assert_ne!(
        sig.signature, release_sig.signature,
        "a key release's signature accepted as a renewal's"
    );
    if mutated {
        assert_eq!(resp, g.genuine, "a changed renewal response was accepted");
    }
}

/// The genuine renewal response, mutations in each field, a key
/// release's signature on it, an unsigned and a malformed one.
pub fn renew_response_seeds() -> Vec<Vec<u8>> {
    let r = release();
    let g = renewal();
    let unsigned = snpguard_protocol::attest::RenewResponse {
        signature: None,
        ..g.genuine.clone()
    };
    let replayed = snpguard_protocol::attest::RenewResponse {
        signature: r.genuine.signature.clone(),
        ..g.genuine.clone()
    };
    let mut out = vec![
        [&[0u8][..], &g.json].concat(),
        [&[0u8][..], &serde_json::to_vec(&unsigned).expect("json")].concat(),
        [&[0u8][..], &serde_json::to_vec(&replayed).expect("json")].concat(),
        vec![1],
        b"\x00{\"record\":\"\",\"launch\":\"\",\"measurement\":\"\"}".to_vec(),
    ];
    let json = String::from_utf8(g.json.clone()).expect("json is text");
    for field in [
        "\"record\"",
        "\"launch\"",
        "\"measurement\"",
        "\"key\"",
        "\"signature\":\"",
    ] {
        if let Some(at) = json.find(field) {
            out.push([vec![1], fixtures::xor_at(at + field.len() + 3, 1)].concat());
        }
    }
    out
}

/// The genuine response (raw, from this process: it releases in every
/// process, the keys are fixed), its mutations in each field, and
/// unsigned and malformed ones.
pub fn response_seeds() -> Vec<Vec<u8>> {
    let r = release();
    let unsigned = snpguard_protocol::attest::AttestResponse {
        signature: None,
        ..r.genuine.clone()
    };
    let mut out = vec![
        [&[0u8][..], &r.json].concat(),
        [&[0u8][..], &serde_json::to_vec(&unsigned).expect("json")].concat(),
        vec![1],
        b"\x00{\"record\":\"\",\"sealed_key\":\"\"}".to_vec(),
    ];
    let json = String::from_utf8(r.json.clone()).expect("json is text");
    for field in [
        "\"record\"",
        "\"sealed_key\"",
        "\"key\"",
        "\"signature\":\"",
    ] {
        if let Some(at) = json.find(field) {
            out.push([vec![1], fixtures::xor_at(at + field.len() + 3, 1)].concat());
        }
    }
    out
}

/// A genuine `/v1/signed-launch` answer for the release's report and
/// nonce, asking for launch 2.
struct NextLaunch {
    genuine: snpguard_protocol::attest::SignedLaunchResponse,
    json: Vec<u8>,
}

fn next_launch() -> &'static NextLaunch {
    static NEXT: std::sync::OnceLock<NextLaunch> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| {
        let r = release();
        let author = p384::ecdsa::SigningKey::from_slice(&[0x11; 48]).expect("a valid scalar");
        let block = vec![0x5au8; snpguard::idblock::ID_BLOCK_SIZE];
        let auth = vec![0xa5u8; snpguard::idblock::ID_AUTH_SIZE];
        let mut genuine = snpguard_protocol::attest::SignedLaunchResponse {
            record: "web-1".to_owned(),
            launch: "2".to_owned(),
            launch_config: "{\"version\": 1}\n".to_owned(),
            id_block: b64(&block),
            id_auth: b64(&auth),
            signature: None,
        };
        let message = snpguard_protocol::attest::signed_launch_message(
            &r.nonce,
            &r.report,
            &genuine.record,
            &genuine.launch,
            &genuine.launch_config,
            &block,
            &auth,
        );
        genuine.signature = Some(snpguard_protocol::attest::sign_message(&author, &message));
        let json = serde_json::to_vec(&genuine).expect("json");
        NextLaunch { genuine, json }
    })
}

/// `signed_launch_response` (the agent, from a network peer): the answer
/// to `POST /v1/signed-launch` as `snpguard-agent install-launch` reads it
/// (serde, then `check_signed_launch` for launch 2). Accepted only when
/// signed by the key the report names and for launch 2; a mutated answer
/// only when it says exactly what the genuine one says (the ID block and
/// auth as they decode); a renewal's or a release's signature is never
/// accepted for it.
pub fn signed_launch_response(data: &[u8]) {
    let r = release();
    let g = next_launch();
    let (mutated, body) = response_body(data, &g.json);
    let accepted = serde_json::from_slice::<snpguard_protocol::attest::SignedLaunchResponse>(&body)
        .ok()
        .and_then(|resp| {
            let parts =
                snpguard_protocol::attest::check_signed_launch(&r.nonce, &r.report, "2", &resp)
                    .ok()?;
            Some((resp, parts))
        });
    let Some((resp, parts)) = accepted else {
        assert!(
            !(mutated && body == g.json),
            "the genuine signed-launch answer is refused"
        );
        return;
    };
    fixtures::reached("signed_launch_response");
    assert_eq!(resp.launch, "2", "an answer for another launch accepted");
    let sig = resp
        .signature
        .as_ref()
        .expect("an accepted answer was signed");
    assert_signed_by_report_key(&r.report, sig);
    for other in [
        r.genuine.signature.as_ref(),
        renewal().genuine.signature.as_ref(),
    ] {
        assert_ne!(
            Some(&sig.signature),
            other.map(|s| &s.signature),
            "another answer's signature accepted for a signed launch"
        );
    }
    if mutated {
        assert_eq!(
            (&resp.record, &resp.launch, &resp.launch_config),
            (
                &g.genuine.record,
                &g.genuine.launch,
                &g.genuine.launch_config
            ),
            "a changed signed-launch answer was accepted"
        );
        let genuine =
            snpguard_protocol::attest::check_signed_launch(&r.nonce, &r.report, "2", &g.genuine)
                .expect("the genuine answer");
        assert_eq!(parts, genuine, "changed ID blocks were accepted");
    }
}

/// The genuine answer, mutations in each field, the other answers'
/// signatures on it, an unsigned one and an answer for launch 3.
pub fn signed_launch_response_seeds() -> Vec<Vec<u8>> {
    let r = release();
    let g = next_launch();
    let with = |f: &dyn Fn(&mut snpguard_protocol::attest::SignedLaunchResponse)| {
        let mut v = g.genuine.clone();
        f(&mut v);
        [&[0u8][..], &serde_json::to_vec(&v).expect("json")].concat()
    };
    let mut out = vec![
        [&[0u8][..], &g.json].concat(),
        with(&|v| v.signature = None),
        with(&|v| v.signature = r.genuine.signature.clone()),
        with(&|v| v.signature = renewal().genuine.signature.clone()),
        with(&|v| v.launch = "3".into()),
        vec![1],
    ];
    let json = String::from_utf8(g.json.clone()).expect("json is text");
    for field in [
        "\"record\"",
        "\"launch\"",
        "\"launch_config\"",
        "\"id_block\"",
        "\"id_auth\"",
        "\"key\"",
        "\"signature\":\"",
    ] {
        if let Some(at) = json.find(field) {
            out.push([vec![1], fixtures::xor_at(at + field.len() + 3, 1)].concat());
        }
    }
    out
}
