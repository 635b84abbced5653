//! The attestor end to end on a real registry and the simulated platform:
//! every trust rule broken once, each refused with its own code and
//! nothing released.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use snpguard::certs::{CertRole, Product, GUID_ASK, GUID_VCEK};
use snpguard::report::REPORT_SIZE;
use snpguard::seal::{self, SealedBox};
use snpguard::verify::{MinTcb, TcbFloors};
use snpguard_protocol::attest::{b64, encode_nonce, open_key, report_data, AttestRequest};
use snpguard_testkit::sim::{tcb_bytes, SimKey, SimPlatform, SimTcb};
use time::OffsetDateTime;

use super::*;
use crate::audit::AuditEntry;
use crate::config::{Bus, Config, Kds, TestRoot};
use crate::registry::{Registry, RegistryOptions, POLICY_DEBUG};
use crate::secrets::{MasterKey, MasterKeySource};
use crate::service::{RecordInfo, RecordService, RegisterRequest};

mod certs;
mod offline;
mod renewal;
mod revocation;

const VMK: [u8; 64] = *b"attested-VMK-0123456789abcdef-attested-VMK-0123456789abcdef-!!!!";
const TCB: SimTcb = SimTcb {
    bootloader: 3,
    tee: 0,
    snp: 8,
    microcode: 115,
    fmc: 0,
};
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn hwid(seed: u8) -> Vec<u8> {
    (0..64u8).map(|i| i.wrapping_mul(7) ^ seed).collect()
}

/// The trusted simulated Milan platform, and another chip with its own
/// (untrusted) root: RSA key generation dominates, so once per binary.
fn platform() -> &'static SimPlatform {
    static P: OnceLock<SimPlatform> = OnceLock::new();
    P.get_or_init(|| SimPlatform::generate(Product::Milan, TCB, &hwid(0x11)).unwrap())
}

fn other_platform() -> &'static SimPlatform {
    static P: OnceLock<SimPlatform> = OnceLock::new();
    P.get_or_init(|| SimPlatform::generate(Product::Milan, TCB, &hwid(0x22)).unwrap())
}

/// A clock tests move.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.0.load(Ordering::SeqCst))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl TestClock {
    fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    registry: Arc<Registry>,
    attestor: Attestor,
    clock: TestClock,
    rec: RecordInfo,
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().write_all(data).unwrap();
    p
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    crate::secrets::random_bytes(&mut v).unwrap();
    v
}

/// Registers a record from synthetic inputs, accepting the simulated
/// platform's test root; `None` without test data.
fn register(reg: &Registry, dir: &Path, name: &str, min_tcb: MinTcb) -> Option<RecordInfo> {
    register_with(reg, dir, name, Some(min_tcb), true)
}

/// As [`register`], with an optional minimum and the test root accepted
/// or not.
fn register_with(
    reg: &Registry,
    dir: &Path,
    name: &str,
    min_tcb: Option<MinTcb>,
    allow_test_root: bool,
) -> Option<RecordInfo> {
    let req = register_request(reg, dir, name, min_tcb, allow_test_root)?;
    Some(reg.register(req).unwrap())
}

/// The registration [`register_with`] makes, for a test to change first.
fn register_request(
    reg: &Registry,
    dir: &Path,
    name: &str,
    min_tcb: Option<MinTcb>,
    allow_test_root: bool,
) -> Option<RegisterRequest> {
    let suffix = snpguard_testkit::testdata::read("measurement/ovmf_AmdSev_suffix.bin")?;
    let mut fw = random(3 * 4096);
    fw.extend_from_slice(&suffix);
    let fw = write(dir, &format!("{name}.fd"), &fw);
    let kernel = write(dir, &format!("{name}.vmlinuz"), &random(50_000));
    let initrd = write(dir, &format!("{name}.initrd"), &random(80_000));
    let pk = seal::PublicKey::from_bytes(&reg.ingestion_public_key()).unwrap();
    let sealed_vmk = seal::seal(&pk, seal::INFO_INGEST, b"", &VMK)
        .unwrap()
        .to_bytes();
    Some(RegisterRequest {
        name: name.into(),
        firmware: File::open(fw).unwrap(),
        kernel: File::open(kernel).unwrap(),
        initrd: File::open(initrd).unwrap(),
        cmdline: "console=ttyS0".into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        allow_smt: false,
        allow_debug: false,
        allow_migrate_ma: false,
        min_tcb,
        allow_test_root,
        allow_offline_unlock: false,
        sealed_vmk,
    })
}

fn min_tcb() -> MinTcb {
    MinTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: None,
    }
}

fn config(state: &Path, roots: Vec<TestRoot>, kds: bool) -> Config {
    Config {
        source: None,
        dropins: Vec::new(),
        state_dir: state.to_owned(),
        bus: Bus::System,
        listen: "127.0.0.1:0".parse().unwrap(),
        import_dir: state.join("import"),
        tls_cert: None,
        tls_key: None,
        test_roots: roots,
        kds: Kds { enabled: kds },
        attest: Default::default(),
        rate_limit: Default::default(),
        https: Default::default(),
        tcb_floors: Default::default(),
        revocation: Default::default(),
        store: Default::default(),
        metrics_listen: None,
    }
}

/// A KDS client that must not be called.
struct NoKds;

impl KdsClient for NoKds {
    fn fetch_vcek(
        &self,
        _: Product,
        _: &[u8],
        _: &snpguard::report::TcbParts,
    ) -> Result<Vec<u8>, KdsError> {
        panic!("KDS must not be asked")
    }

    fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError> {
        // A fixture with KDS enabled asks for AMD's CRL; none here.
        Err(KdsError::Status {
            url: crate::attest::kds::crl_path(product),
            status: 404,
        })
    }
}

fn fixture_with(kds: Box<dyn KdsClient>, kds_enabled: bool, trust: bool) -> Option<Fixture> {
    fixture_floors(kds, kds_enabled, trust, TcbFloors::default())
}

/// As [`fixture_with`], with daemon-wide TCB floors.
fn fixture_floors(
    kds: Box<dyn KdsClient>,
    kds_enabled: bool,
    trust: bool,
    floors: TcbFloors,
) -> Option<Fixture> {
    fixture_config(kds, kds_enabled, trust, |c| c.tcb_floors = floors)
}

/// As [`fixture_with`], with the configuration edited by `edit`.
fn fixture_config(
    kds: Box<dyn KdsClient>,
    kds_enabled: bool,
    trust: bool,
    edit: impl FnOnce(&mut Config),
) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let master = MasterKey::from_bytes(&[3; 32], MasterKeySource::Credential("/test".into()));
    let options = RegistryOptions {
        test_roots: true,
        ..RegistryOptions::default()
    };
    let registry = Arc::new(Registry::open_with(&state, master, &options).unwrap());
    let rec = register(&registry, dir.path(), "web", min_tcb())?;
    let ark = write(dir.path(), "ark.der", &platform().ark_der);
    let roots = if trust {
        vec![TestRoot {
            product: Product::Milan,
            ark_path: ark,
        }]
    } else {
        Vec::new()
    };
    let clock = TestClock(Arc::new(AtomicI64::new(
        OffsetDateTime::now_utc().unix_timestamp(),
    )));
    let mut config = config(&state, roots, kds_enabled);
    edit(&mut config);
    let attestor = Attestor::new(registry.clone(), &config, kds)
        .unwrap()
        .with_clock(Box::new(clock.clone()));
    Some(Fixture {
        dir,
        registry,
        attestor,
        clock,
        rec,
    })
}

fn fixture() -> Option<Fixture> {
    fixture_with(Box::new(NoKds), false, true)
}

/// Import inputs named as a client would name its files.
fn named(files: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(n, b)| ((*n).to_owned(), b.to_vec()))
        .collect()
}

fn cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    snpguard::certs::encode_cert_table(entries)
}

fn table_of(p: &SimPlatform) -> Vec<u8> {
    cert_table(&[(GUID_VCEK, &p.vcek_der), (GUID_ASK, &p.ask_der)])
}

/// What the guest's firmware would put into the report.
struct Guest<'a> {
    measurement: [u8; 48],
    image_id: [u8; 16],
    family_id: [u8; 16],
    id_key_digest: [u8; 48],
    author_key_digest: [u8; 48],
    policy: u64,
    vmpl: u32,
    chip_id: Vec<u8>,
    signer: &'a SimPlatform,
    /// Bind the report to another key than the one sent.
    bind_other_key: bool,
    table: Option<Vec<u8>>,
}

fn arr<const N: usize>(hex_str: &str) -> [u8; N] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

impl Fixture {
    fn guest(&self) -> Guest<'static> {
        Guest {
            measurement: arr(&self.rec.measurement),
            image_id: arr(&self.rec.image_id),
            family_id: arr(&self.rec.family_id),
            id_key_digest: arr(&self.rec.id_key_digest),
            author_key_digest: arr(&self.rec.author_key_digest),
            policy: self.rec.policy,
            vmpl: 0,
            chip_id: hwid(0x11),
            signer: platform(),
            bind_other_key: false,
            table: Some(table_of(platform())),
        }
    }

    fn nonce(&self) -> [u8; 32] {
        let c = self.attestor.challenge().unwrap();
        assert_eq!(c.expires_in, nonce::NONCE_LIFETIME_SECS);
        snpguard_protocol::attest::decode_nonce(&c.nonce).unwrap()
    }

    /// A signed attestation request of guest `g` (not asking for the
    /// offline-unlock directive), its ephemeral secret key and report.
    fn request(
        &self,
        g: &Guest<'_>,
        nonce: &[u8; 32],
    ) -> (AttestRequest, seal::SecretKey, Vec<u8>) {
        let (sk, pk) = seal::generate_keypair();
        let bound = if g.bind_other_key {
            seal::generate_keypair().1
        } else {
            pk.clone()
        };
        let r = Self::report(g, &report_data(nonce, &bound));
        let req = AttestRequest {
            nonce: encode_nonce(nonce),
            report: b64(&r),
            cert_table: g.table.as_ref().map(|t| b64(t)),
            ephemeral_key: b64(&pk.to_bytes()),
            signed: true,
            offline: false,
        };
        (req, sk, r.to_vec())
    }

    /// The report the simulated firmware gives guest `g` for REPORT_DATA
    /// `data`.
    fn report(g: &Guest<'_>, data: &[u8; 64]) -> [u8; REPORT_SIZE] {
        let mut r = [0u8; REPORT_SIZE];
        let tcb = tcb_bytes(Product::Milan, TCB).to_le_bytes();
        r[0..4].copy_from_slice(&3u32.to_le_bytes());
        r[0x08..0x10].copy_from_slice(&g.policy.to_le_bytes());
        r[0x10..0x20].copy_from_slice(&g.family_id);
        r[0x20..0x30].copy_from_slice(&g.image_id);
        r[0x30..0x34].copy_from_slice(&g.vmpl.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        r[0x38..0x40].copy_from_slice(&tcb);
        // KEY_INFO: author key enabled, signed by the VCEK.
        r[0x48..0x4C].copy_from_slice(&1u32.to_le_bytes());
        r[0x50..0x90].copy_from_slice(data);
        r[0x90..0xC0].copy_from_slice(&g.measurement);
        r[0xE0..0x110].copy_from_slice(&g.id_key_digest);
        r[0x110..0x140].copy_from_slice(&g.author_key_digest);
        r[0x180..0x188].copy_from_slice(&tcb);
        // CPUID: family 19h model 01h (Milan), stepping 1.
        r[0x188..0x18B].copy_from_slice(&[0x19, 0x01, 0x01]);
        r[0x1A0..0x1E0].copy_from_slice(&g.chip_id);
        r[0x1E0..0x1E8].copy_from_slice(&tcb);
        r[0x1F0..0x1F8].copy_from_slice(&tcb);
        g.signer.sign_report(&mut r, SimKey::Vcek).unwrap();
        r
    }

    fn attest(&self, g: &Guest<'_>) -> Result<Vec<u8>, AttestError> {
        let nonce = self.nonce();
        let (req, sk, report) = self.request(g, &nonce);
        let resp = self.attestor.attest(req, PEER)?;
        assert_eq!(resp.record, self.rec.id);
        let sealed_bytes = snpguard_protocol::attest::unb64(&resp.sealed_key, 4096).unwrap();
        // Every release is signed by the author key the report names.
        let message = snpguard_protocol::attest::release_message(
            &nonce,
            &report,
            &resp.record,
            &sealed_bytes,
            resp.offline_unlock,
        );
        snpguard_protocol::attest::verify_signature(&report, &message, resp.signature.as_ref())
            .expect("the release is signed by the report's author key");
        let sealed = SealedBox::from_bytes(&sealed_bytes).unwrap();
        Ok(open_key(&sk, &report, &sealed).unwrap().to_vec())
    }

    fn last_audit(&self) -> AuditEntry {
        self.attestor.audit_trail(1).unwrap().pop().unwrap()
    }

    fn audit_len(&self) -> usize {
        self.attestor.audit_trail(usize::MAX).unwrap().len()
    }

    /// The newest refusal decided before signature verification.
    fn last_unverified(&self) -> AuditEntry {
        self.registry.unverified_refusals(1).unwrap().pop().unwrap()
    }

    /// Expects a refusal decided before the signature was verified, with
    /// `code` first: in the unverified ring, not in the audit trail, no
    /// record's counter moved.
    fn expect_unverified(&self, g: &Guest<'_>, code: &str) -> AuditEntry {
        let before = (self.counters(), self.audit_len());
        let ring = self.registry.unverified_refusals(usize::MAX).unwrap().len();
        let err = self.attest(g).expect_err("must be refused");
        assert_eq!(err.code, "attestation-rejected", "{err:?}");
        assert_eq!(err.status, 403);
        self.assert_unverified(code, before, ring)
    }

    /// The last refusal went to the ring with `code`, and nothing else
    /// changed since `before` (counters, audit length) and `ring` (its
    /// length then).
    fn assert_unverified(
        &self,
        code: &str,
        before: ((u64, u64), usize),
        ring: usize,
    ) -> AuditEntry {
        let entry = self.last_unverified();
        assert_eq!(entry.result, code, "{entry:?}");
        assert_eq!(entry.codes[0], code, "{entry:?}");
        assert_eq!(
            self.registry.unverified_refusals(usize::MAX).unwrap().len(),
            ring + 1
        );
        assert_eq!(
            (self.counters(), self.audit_len()),
            before,
            "no counter, no audit entry"
        );
        entry
    }

    fn counters(&self) -> (u64, u64) {
        let r = self.registry.get(&self.rec.id).unwrap();
        (r.attestations_ok, r.attestations_failed)
    }

    /// Expects a refusal whose audit entry's first code is `code`, with
    /// the client told only `client_code`, and the record's failure
    /// counter up by one (when the record is known).
    fn expect_refused(&self, g: &Guest<'_>, code: &str) {
        let before = self.counters();
        let err = self.attest(g).expect_err("must be refused");
        assert_eq!(err.code, "attestation-rejected", "{err:?}");
        assert_eq!(err.status, 403);
        assert!(!err.message.contains(code), "{err:?} leaks the reason");
        let audit = self.last_audit();
        assert_eq!(audit.result, code, "{audit:?}");
        assert_eq!(audit.codes[0], code, "{audit:?}");
        let after = self.counters();
        assert_eq!(after.0, before.0, "nothing released");
        if audit.record.is_some() {
            assert_eq!(after.1, before.1 + 1);
        } else {
            assert_eq!(after.1, before.1);
        }
    }
}

#[test]
fn success_releases_the_exact_vmk_and_counts_it() {
    let Some(f) = fixture() else { return };
    let vmk = f.attest(&f.guest()).unwrap();
    assert_eq!(vmk, VMK);
    assert_eq!(f.counters(), (1, 0));
    let rec = f.registry.get(&f.rec.id).unwrap();
    assert!(rec.last_attestation.is_some());
    let audit = f.last_audit();
    assert_eq!(audit.result, "ok");
    assert_eq!(audit.record.as_deref(), Some(f.rec.id.as_str()));
    assert_eq!(audit.cert_source.as_deref(), Some("table"));
    assert_eq!(
        audit.measurement.as_deref(),
        Some(f.rec.measurement.as_str())
    );
    assert_eq!(
        audit.chip_id_prefix.as_deref(),
        Some(&hex::encode(&hwid(0x11)[..8])[..])
    );
    assert!(
        audit.notes.iter().any(|n| n.contains("TEST root")),
        "{audit:?}"
    );
    let json = serde_json::to_string(&audit).unwrap();
    assert!(
        !json.contains(&hex::encode(VMK)),
        "no key material in the audit"
    );
}

#[test]
fn wrong_measurement_is_refused() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.measurement[0] ^= 1;
    f.expect_refused(&g, "measurement-mismatch");
}

#[test]
fn debug_policy_is_refused_when_the_record_does_not_allow_it() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.policy |= POLICY_DEBUG;
    f.expect_refused(&g, "policy-debug");
}

#[test]
fn tcb_below_the_minimum_is_refused() {
    let Some(f) = fixture() else { return };
    let strict = register(
        &f.registry,
        f.dir.path(),
        "strict",
        MinTcb {
            microcode: 200,
            ..min_tcb()
        },
    )
    .unwrap();
    let mut g = f.guest();
    g.measurement = arr(&strict.measurement);
    g.image_id = arr(&strict.image_id);
    g.id_key_digest = arr(&strict.id_key_digest);
    let err = f.attest(&g).expect_err("refused");
    assert_eq!(err.code, "attestation-rejected");
    let audit = f.last_audit();
    assert_eq!(audit.record.as_deref(), Some(strict.id.as_str()));
    assert_eq!(audit.codes, ["tcb-below-minimum"], "{audit:?}");
    assert_eq!(f.registry.get(&strict.id).unwrap().attestations_failed, 1);
}

#[test]
fn vmpl_1_is_refused() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.vmpl = 1;
    f.expect_refused(&g, "vmpl-mismatch");
}

#[test]
fn disabled_record_releases_nothing() {
    let Some(f) = fixture() else { return };
    f.registry.set_enabled(&f.rec.id, false).unwrap();
    f.expect_refused(&f.guest(), "record-disabled");
    f.registry.set_enabled(&f.rec.id, true).unwrap();
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
}

#[test]
fn unknown_image_is_refused() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.image_id[0] ^= 0xff;
    let e = f.expect_unverified(&g, "unknown-image");
    assert!(e.record.is_none());
    // Same image id, another family: not this record either.
    let mut g = f.guest();
    g.family_id[15] = 1;
    f.expect_unverified(&g, "unknown-image");
}

#[test]
fn reused_nonce_is_refused() {
    let Some(f) = fixture() else { return };
    let nonce = f.nonce();
    let (req, _, _) = f.request(&f.guest(), &nonce);
    f.attestor.attest(req.clone(), PEER).unwrap();
    let before = (f.counters(), f.audit_len());
    let err = f.attestor.attest(req, PEER).unwrap_err();
    assert_eq!((err.code, err.status), ("nonce-reused", 401));
    let e = f.assert_unverified("nonce-reused", before, 0);
    assert_eq!(e.record.as_deref(), Some(f.rec.id.as_str()), "as claimed");
    assert_eq!(f.counters(), (1, 0));
}

#[test]
fn expired_nonce_is_refused() {
    let Some(f) = fixture() else { return };
    let nonce = f.nonce();
    f.clock.advance(nonce::NONCE_LIFETIME_SECS as i64 + 1);
    let (req, _, _) = f.request(&f.guest(), &nonce);
    let err = f.attestor.attest(req, PEER).unwrap_err();
    assert_eq!((err.code, err.status), ("nonce-expired", 401));
    f.assert_unverified("nonce-expired", ((0, 0), 0), 0);
}

#[test]
fn forged_nonce_is_refused() {
    let Some(f) = fixture() else { return };
    let mut nonce = f.nonce();
    nonce[9] ^= 1;
    let (req, _, _) = f.request(&f.guest(), &nonce);
    let err = f.attestor.attest(req, PEER).unwrap_err();
    assert_eq!((err.code, err.status), ("nonce-invalid", 400));
    f.assert_unverified("nonce-invalid", ((0, 0), 0), 0);
}

#[test]
fn report_data_not_bound_to_the_sent_key_is_refused() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.bind_other_key = true;
    f.expect_refused(&g, "report-data-mismatch");
}

#[test]
fn signature_by_another_chips_vcek_is_refused() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.signer = other_platform();
    f.expect_unverified(&g, "signature-invalid");
}

#[test]
fn chain_to_an_untrusted_root_is_refused() {
    let Some(f) = fixture_with(Box::new(NoKds), false, false) else {
        return;
    };
    // The simulated ASK names a simulated ARK, which is none of AMD's.
    f.expect_unverified(&f.guest(), "issuer-mismatch");
}

#[test]
fn protocol_errors_are_400_with_specific_codes() {
    let Some(f) = fixture() else { return };
    let nonce = f.nonce();
    let (good, _, _) = f.request(&f.guest(), &nonce);
    let cases: Vec<(AttestRequest, &str)> = vec![
        (
            AttestRequest {
                nonce: "%%%".into(),
                ..good.clone()
            },
            "nonce-invalid",
        ),
        (
            AttestRequest {
                report: b64(&[0u8; 10]),
                ..good.clone()
            },
            "bad-request",
        ),
        (
            AttestRequest {
                report: "not base64!".into(),
                ..good.clone()
            },
            "bad-request",
        ),
        (
            AttestRequest {
                ephemeral_key: b64(&[0u8; 32]),
                ..good.clone()
            },
            "bad-request",
        ),
        (
            AttestRequest {
                cert_table: Some(b64(&[1u8; 30])),
                ..good.clone()
            },
            "bad-request",
        ),
    ];
    for (req, code) in cases {
        let err = f.attestor.attest(req, PEER).unwrap_err();
        assert_eq!((err.code, err.status), (code, 400), "{err:?}");
    }
    // None of them used the nonce up.
    f.attestor.attest(good, PEER).unwrap();
}

/// A KDS on 127.0.0.1 serving one VCEK at one path; counts requests.
struct TestKds {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestKds {
    fn start(path: String, body: Vec<u8>) -> TestKds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let target = head.split(' ').nth(1).unwrap_or("");
                h.fetch_add(1, Ordering::SeqCst);
                let (status, payload) = if target == path {
                    ("200 OK", &body[..])
                } else {
                    ("404 Not Found", &b""[..])
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    payload.len()
                );
                let _ = conn.write_all(payload);
            }
        });
        TestKds {
            addr,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestKds {
    fn drop(&mut self) {
        self.shut_down();
    }
}

#[test]
fn kds_serves_the_vcek_and_the_cache_survives_an_outage() {
    let p = platform();
    let tcb = snpguard::report::TcbParts {
        bootloader: TCB.bootloader,
        tee: TCB.tee,
        snp: TCB.snp,
        microcode: TCB.microcode,
        fmc: None,
    };
    let path = kds::vcek_path(Product::Milan, &hwid(0x11), &tcb);
    let mut server = TestKds::start(path, p.vcek_der.clone());
    let Some(f) = fixture_with(Box::new(HttpKds::new(&server.url())), true, true) else {
        return;
    };
    // KDS serves only VCEKs; the simulated ASK is imported like an
    // air-gapped operator would import AMD's cert_chain.
    let imported = f
        .attestor
        .import_certificates(&named(&[("ask.der", &p.ask_der), ("ark.der", &p.ark_der)]))
        .unwrap();
    let sources: Vec<_> = imported.iter().map(|c| (c.role, c.source)).collect();
    assert_eq!(
        sources,
        [(CertRole::Ask, "imported"), (CertRole::Ark, "trusted-root")],
        "the ARK is checked, not stored"
    );
    let mut g = f.guest();
    g.table = None;
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds"));
    // Two requests: AMD's Milan CRL (none held; this KDS has none) and
    // the VCEK.
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    server.shut_down();
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("kds-cache"));
    // The CRL's failure is remembered; the VCEK comes from the cache.
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert_eq!(f.counters(), (2, 0));
}

#[test]
fn kds_outage_without_a_cached_vcek_names_the_missing_certificate() {
    // A port nothing listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let Some(f) = fixture_with(
        Box::new(HttpKds::new(&format!("http://{closed}"))),
        true,
        true,
    ) else {
        return;
    };
    f.attestor
        .import_certificates(&named(&[("ask.der", &platform().ask_der)]))
        .unwrap();
    let mut g = f.guest();
    g.table = None;
    let e = f.expect_unverified(&g, "missing-vcek");
    assert!(e.notes.iter().any(|n| n.starts_with("KDS:")), "{e:?}");
}

#[test]
fn kds_disabled_uses_only_held_certificates() {
    let Some(f) = fixture() else { return };
    let mut g = f.guest();
    g.table = None;
    let audit = f.expect_unverified(&g, "missing-vcek");
    assert!(audit.detail.contains("no VCEK certificate"), "{audit:?}");
    assert!(audit
        .notes
        .iter()
        .any(|n| n.contains("KDS access is disabled")));

    // An operator imports the VCEK (PEM) and the ASK (DER): now it passes.
    let pem = der::pem::encode_string(
        "CERTIFICATE",
        der::pem::LineEnding::LF,
        &platform().vcek_der,
    )
    .unwrap();
    let imported = f
        .attestor
        .import_certificates(&named(&[
            ("vcek.pem", pem.as_bytes()),
            ("ask.der", &platform().ask_der),
        ]))
        .unwrap();
    assert_eq!(imported.len(), 2);
    let vcek = imported.iter().find(|c| c.role == CertRole::Vcek).unwrap();
    assert_eq!(vcek.file.as_deref(), Some("vcek.pem"));
    assert_eq!(
        vcek.chip_id.as_deref(),
        Some(&hex::encode(&hwid(0x11)[..8])[..])
    );
    assert_eq!(vcek.tcb.as_deref(), Some("3.0.8.115"));
    assert_eq!(f.attestor.held_certificates().unwrap().len(), 2);
    assert_eq!(f.attest(&g).unwrap(), VMK);
    assert_eq!(f.last_audit().cert_source.as_deref(), Some("imported"));
}

#[test]
fn import_refuses_what_is_not_an_amd_certificate() {
    let Some(f) = fixture() else { return };
    let e = f
        .attestor
        .import_certificates(&named(&[("junk.bin", b"garbage")]))
        .unwrap_err();
    assert!(
        matches!(&e, CertImportError::Malformed { file, .. } if file == "junk.bin"),
        "{e}"
    );
    let tls = std::fs::read(f.dir.path().join("state/tls/cert.pem")).unwrap();
    let e = f
        .attestor
        .import_certificates(&named(&[
            ("ask.der", &platform().ask_der),
            ("tls.pem", &tls),
        ]))
        .unwrap_err();
    assert!(
        matches!(&e, CertImportError::Unrecognized { file, .. } if file == "tls.pem"),
        "{e}"
    );
    // All or nothing: the ASK of the refused batch was not stored.
    assert!(f.attestor.held_certificates().unwrap().is_empty());
    let mut g = f.guest();
    g.table = Some(cert_table(&[(GUID_VCEK, &platform().vcek_der)]));
    let err = f.attest(&g).unwrap_err();
    assert_eq!(err.code, "attestation-rejected");
}

#[test]
fn import_refuses_certificates_of_an_untrusted_root() {
    let Some(f) = fixture() else { return };
    let other = SimPlatform::generate(Product::Milan, TCB, &hwid(0x11)).unwrap();
    for (name, der, role) in [
        ("other-ask.der", &other.ask_der, CertRole::Ask),
        ("other-ark.der", &other.ark_der, CertRole::Ark),
    ] {
        let e = f
            .attestor
            .import_certificates(&named(&[(name, der)]))
            .unwrap_err();
        assert!(
            matches!(&e, CertImportError::Untrusted { file, role: r, .. } if file == name && *r == role),
            "{e}"
        );
    }
    // A foreign VCEK fails even next to the trusted ASK: it is not
    // signed by it.
    let e = f
        .attestor
        .import_certificates(&named(&[
            ("ask.der", &platform().ask_der),
            ("vcek.der", &other.vcek_der),
        ]))
        .unwrap_err();
    assert!(
        matches!(&e, CertImportError::Untrusted { file, code: "signature-invalid", .. } if file == "vcek.der"),
        "{e}"
    );
    assert!(f.attestor.held_certificates().unwrap().is_empty());
    // A certificate table (what the guest's firmware hands out) imports.
    let table = cert_table(&[
        (GUID_VCEK, &platform().vcek_der),
        (GUID_ASK, &platform().ask_der),
    ]);
    let imported = f
        .attestor
        .import_certificates(&named(&[("certs.bin", &table)]))
        .unwrap();
    let roles: Vec<_> = imported.iter().map(|c| c.role).collect();
    assert_eq!(roles, [CertRole::Ask, CertRole::Vcek]);
}

#[test]
fn challenge_nonces_are_fresh_and_ingestion_key_is_the_registry_s() {
    let Some(f) = fixture() else { return };
    assert_ne!(f.nonce(), f.nonce());
    assert_eq!(
        f.attestor.ingestion_key().to_vec(),
        f.registry.ingestion_public_key()
    );
}

/// A record registered without a minimum: refused below the daemon-wide
/// floor, the floor named; counted and audited (the report verified).
#[test]
fn daemon_floor_applies_to_a_record_without_minimum_and_is_named() {
    let floors = TcbFloors {
        milan: Some(MinTcb {
            snp: TCB.snp + 1,
            ..min_tcb()
        }),
        ..TcbFloors::default()
    };
    let Some(f) = fixture_floors(Box::new(NoKds), false, true, floors) else {
        return;
    };
    let bare = register_with(&f.registry, f.dir.path(), "bare", None, true).unwrap();
    assert_eq!(bare.min_tcb, None);
    let mut g = f.guest();
    g.measurement = arr(&bare.measurement);
    g.image_id = arr(&bare.image_id);
    g.id_key_digest = arr(&bare.id_key_digest);
    assert_eq!(f.attest(&g).unwrap_err().code, "attestation-rejected");
    let audit = f.last_audit();
    assert_eq!(audit.record.as_deref(), Some(bare.id.as_str()));
    assert_eq!(audit.codes, ["tcb-below-floor"], "{audit:?}");
    assert!(
        audit
            .detail
            .contains("daemon-wide milan floor: snp is 8, at least 9"),
        "{audit:?}"
    );
    assert_eq!(f.registry.get(&bare.id).unwrap().attestations_failed, 1);
    // The record with its own (met) minimum is refused by the floor too.
    f.expect_refused(&f.guest(), "tcb-below-floor");
}

/// A floor met by the platform changes nothing; a record minimum raised
/// over D-Bus's `SetMinimumTcb` path applies at once, without
/// re-registering, and lowering it again restores the release.
#[test]
fn set_min_tcb_answers_a_bulletin_without_re_registering() {
    let floors = TcbFloors {
        milan: Some(min_tcb()),
        ..TcbFloors::default()
    };
    let Some(f) = fixture_floors(Box::new(NoKds), false, true, floors) else {
        return;
    };
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
    f.registry
        .set_min_tcb(
            &f.rec.id,
            MinTcb {
                microcode: TCB.microcode + 1,
                ..min_tcb()
            },
        )
        .unwrap();
    f.expect_refused(&f.guest(), "tcb-below-minimum");
    assert!(f
        .last_audit()
        .detail
        .contains("tcb below minimum: ucode is 115"));
    f.registry.set_min_tcb(&f.rec.id, min_tcb()).unwrap();
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
}

/// A record registered without --allow-test-root never gets its key from
/// a report chained to a test root, even while the daemon trusts it; the
/// refusal is decided before the signature and touches no counter.
#[test]
fn production_record_refuses_a_test_root() {
    let Some(f) = fixture() else { return };
    let prod = register_with(&f.registry, f.dir.path(), "prod", Some(min_tcb()), false).unwrap();
    assert!(!prod.allow_test_root);
    let mut g = f.guest();
    g.measurement = arr(&prod.measurement);
    g.image_id = arr(&prod.image_id);
    g.id_key_digest = arr(&prod.id_key_digest);
    let before = (f.audit_len(), f.registry.get(&prod.id).unwrap());
    let err = f.attest(&g).expect_err("refused");
    assert_eq!(err.code, "attestation-rejected");
    let e = f.last_unverified();
    assert_eq!(e.codes, ["test-root-not-allowed"], "{e:?}");
    assert_eq!(e.record.as_deref(), Some(prod.id.as_str()));
    assert!(e.detail.contains("--allow-test-root"), "{e:?}");
    let after = f.registry.get(&prod.id).unwrap();
    assert_eq!(
        (after.attestations_ok, after.attestations_failed),
        (before.1.attestations_ok, before.1.attestations_failed)
    );
    assert_eq!(f.audit_len(), before.0);
    // The record registered with it still attests.
    assert_eq!(f.attest(&f.guest()).unwrap(), VMK);
}

/// A KDS whose fetch waits until the test lets it go.
struct SlowKds {
    vcek: Vec<u8>,
    started: std::sync::mpsc::SyncSender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl KdsClient for SlowKds {
    fn fetch_vcek(
        &self,
        _: Product,
        _: &[u8],
        _: &snpguard::report::TcbParts,
    ) -> Result<Vec<u8>, KdsError> {
        self.started.send(()).unwrap();
        self.go
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the test lets the fetch finish");
        Ok(self.vcek.clone())
    }

    fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError> {
        Err(KdsError::Status {
            url: crate::attest::kds::crl_path(product),
            status: 404,
        })
    }
}

/// A launch retired while the attestation waits on a slow KDS releases
/// nothing: the release re-checks the launch under the registry's lock.
#[test]
fn launch_retired_during_a_slow_kds_fetch_releases_nothing() {
    let (started_tx, started) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::channel();
    let kds = SlowKds {
        vcek: platform().vcek_der.clone(),
        started: started_tx,
        go: std::sync::Mutex::new(go_rx),
    };
    let Some(f) = fixture_with(Box::new(kds), true, true) else {
        return;
    };
    f.attestor
        .import_certificates(&named(&[("ask.der", &platform().ask_der)]))
        .unwrap();
    // A second approved launch, so launch 1 may be retired.
    let added = f
        .registry
        .add_launch(
            &f.rec.id,
            crate::service::LaunchRequest {
                kernel: Box::new(std::io::Cursor::new(random(40_000))),
                initrd: Box::new(std::io::Cursor::new(random(60_000))),
                cmdline: "console=ttyS0 quiet".into(),
                origin: "operator".into(),
            },
        )
        .unwrap();
    f.registry.approve_launch(&f.rec.id, &added.launch).unwrap();
    let mut g = f.guest();
    g.table = None;
    let nonce = f.nonce();
    let (req, _, _) = f.request(&g, &nonce);
    let result = std::thread::scope(|scope| {
        let attesting = scope.spawn(|| f.attestor.attest(req, PEER));
        started
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the attestation reaches KDS");
        // The operator retires the launch the guest runs.
        f.registry.retire_launch(&f.rec.id, "1").unwrap();
        go.send(()).unwrap();
        attesting.join().unwrap()
    });
    let err = result.expect_err("nothing released");
    assert_eq!(err.code, "attestation-rejected");
    let audit = f.last_audit();
    assert_eq!(audit.codes, ["launch-retired"], "{audit:?}");
    assert_eq!(audit.launch.as_deref(), Some("1"));
    assert_eq!(f.counters(), (0, 1));
}
