//! Test support for the D-Bus API: a private system-type dbus-daemon with
//! the project's policy file, a mock polkit authority on it, an in-memory
//! [`RecordService`] double, and a harness serving the real API over them.
//! Used by the daemon's, snpguardctl's, the agent's and the system tests.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use snpguard::certs::{CertRole, Product};
use snpguardd::attest::{CertFilter, CertImportError, CertSummary, CertificateService};
use snpguardd::audit::AuditEntry;
use snpguardd::service::{
    LaunchAdded, LaunchInfo, LaunchRequest, LaunchState, RecordInfo, RecordService,
    RegisterRequest, ServiceError,
};
use snpguardd::store::StoreError;
use zbus::zvariant::OwnedValue;
use zbus::{interface, Connection};

/// A private dbus-daemon (`<type>system</type>`) on a socket in a temp
/// dir, whose policy includes `dbus/org.snpguard.SnpGuard1.conf`.
pub struct TestBus {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
}

/// The project's bus policy file (found from any workspace member,
/// including tests/system).
pub fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("dbus/org.snpguard.SnpGuard1.conf"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
        .expect("dbus/org.snpguard.SnpGuard1.conf")
}

impl TestBus {
    pub fn start() -> TestBus {
        let dir = tempfile::Builder::new()
            .prefix("snpguard-bus-")
            .tempdir()
            .expect("temp dir");
        // Other users (the CLI run as nobody) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let uid = rustix::process::getuid().as_raw();
        // The system bus defaults of dbus-daemon's system.conf, the mock
        // polkit's own policy, then the project's policy file. A non-root
        // test user gets what the policy grants root.
        let extra_user = if uid == 0 {
            String::new()
        } else {
            format!(
                r#"<policy user="{uid}">
    <allow own="org.snpguard.SnpGuard1"/>
    <allow send_destination="org.snpguard.SnpGuard1"/>
  </policy>"#
            )
        };
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <include>{defaults}</include>
  <policy user="{uid}">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  {extra_user}
  <include>{policy}</include>
</busconfig>
"#,
            sock = dir.path().join("bus").display(),
            policy = policy_file().display(),
            defaults = policy_file()
                .parent()
                .and_then(Path::parent)
                .expect("the repository")
                .join("tests/dbus/private-system-bus.conf")
                .display(),
        );
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config).expect("write bus config");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--print-address", "--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Warnings (unknown user "snpguard", fd limits) go to a log.
            .stderr(File::create(dir.path().join("bus.log")).expect("bus log"))
            .spawn()
            .expect("dbus-daemon (apt-get install dbus-daemon)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the bus address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address ({address:?}); its log:\n{}",
            std::fs::read_to_string(dir.path().join("bus.log")).unwrap_or_default()
        );
        TestBus {
            dir,
            address,
            child,
        }
    }

    pub async fn connect(&self) -> Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .expect("address")
            .build()
            .await
            .expect("connecting to the test bus")
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One CheckAuthorization call as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolkitCall {
    pub subject_kind: String,
    pub subject_name: String,
    pub action: String,
    pub details_empty: bool,
    pub flags: u32,
    pub cancellation_id: String,
}

#[derive(Default)]
struct PolkitState {
    allow: bool,
    calls: Vec<PolkitCall>,
}

/// A mock `org.freedesktop.PolicyKit1.Authority`: answers every check
/// with the configured rule and records what it was asked.
#[derive(Clone, Default)]
pub struct MockPolkit(Arc<Mutex<PolkitState>>);

impl MockPolkit {
    pub fn set_allow(&self, allow: bool) {
        self.0.lock().unwrap().allow = allow;
    }

    pub fn calls(&self) -> Vec<PolkitCall> {
        self.0.lock().unwrap().calls.clone()
    }

    /// Serves the authority on a new connection owning the polkit name.
    pub async fn serve(&self, bus: &TestBus) -> Connection {
        zbus::connection::Builder::address(bus.address.as_str())
            .expect("address")
            .serve_at("/org/freedesktop/PolicyKit1/Authority", self.clone())
            .expect("serve_at")
            .name("org.freedesktop.PolicyKit1")
            .expect("name")
            .build()
            .await
            .expect("mock polkit")
    }
}

#[interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl MockPolkit {
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        details: HashMap<String, String>,
        flags: u32,
        cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        let name = subject
            .1
            .get("name")
            .and_then(|v| <&str>::try_from(v).ok())
            .unwrap_or_default()
            .to_string();
        let mut st = self.0.lock().unwrap();
        st.calls.push(PolkitCall {
            subject_kind: subject.0,
            subject_name: name,
            action: action_id,
            details_empty: details.is_empty(),
            flags,
            cancellation_id,
        });
        (st.allow, false, HashMap::new())
    }
}

/// What the double stored for a record: the bytes it was given.
#[derive(Debug, Clone)]
pub struct Stored {
    pub info: RecordInfo,
    pub firmware: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub sealed_vmk: Vec<u8>,
}

/// In-memory [`RecordService`] test double. Known vCPU types are
/// `EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`; a sealed VMK starting with
/// `BAD` cannot be opened; the bundle is `SNPGUARD-TEST-BUNDLE <id>\n`
/// followed by the firmware bytes (with ` launch <l>` after the id when a
/// launch is given). Launches: measurements are counters, at most 4
/// pending, the last approved launch cannot be retired.
#[derive(Default)]
pub struct MemService {
    state: Mutex<(u64, BTreeMap<String, Stored>)>,
    audit: Mutex<Vec<AuditEntry>>,
    unverified: Mutex<Vec<AuditEntry>>,
}

pub fn bundle_bytes(s: &Stored) -> Vec<u8> {
    let mut v = format!("SNPGUARD-TEST-BUNDLE {}\n", s.info.id).into_bytes();
    v.extend_from_slice(&s.firmware);
    v
}

impl MemService {
    /// Appends to the audit trail (as an attestation would).
    pub fn audit(&self, entry: AuditEntry) {
        self.audit.lock().unwrap().push(entry);
    }

    /// Appends to the ring of refusals before signature verification.
    pub fn unverified(&self, entry: AuditEntry) {
        self.unverified.lock().unwrap().push(entry);
    }

    pub fn records(&self) -> BTreeMap<String, Stored> {
        self.state.lock().unwrap().1.clone()
    }

    /// Changes a record behind the API's back (as an attestation would).
    pub fn count_attestation(&self, id: &str, ok: bool) -> RecordInfo {
        let mut st = self.state.lock().unwrap();
        let r = st.1.get_mut(id).expect("record");
        if ok {
            r.info.attestations_ok += 1;
        } else {
            r.info.attestations_failed += 1;
        }
        r.info.last_attestation = Some("2026-01-02T03:04:05Z".into());
        r.info.clone()
    }
}

fn launch_of<'a>(r: &'a mut Stored, launch: &str) -> Result<&'a mut LaunchInfo, ServiceError> {
    r.info
        .launches
        .iter_mut()
        .find(|l| l.id == launch)
        .ok_or_else(|| ServiceError::NotFound(format!("no launch {launch}")))
}

fn read_all(mut f: impl Read) -> Result<Vec<u8>, ServiceError> {
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .map_err(|e| ServiceError::InvalidInput(format!("reading input: {e}")))?;
    Ok(v)
}

impl RecordService for MemService {
    fn register(&self, req: RegisterRequest) -> Result<RecordInfo, ServiceError> {
        if !["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"].contains(&req.vcpu_type.as_str()) {
            return Err(ServiceError::InvalidInput(format!(
                "unknown vCPU type {:?}",
                req.vcpu_type
            )));
        }
        if req.sealed_vmk.starts_with(b"BAD") {
            return Err(ServiceError::SealedKey("HPKE open failed".into()));
        }
        let firmware = read_all(req.firmware)?;
        let kernel = read_all(req.kernel)?;
        let initrd = read_all(req.initrd)?;
        let mut st = self.state.lock().unwrap();
        if st.1.values().any(|r| r.info.name == req.name) {
            return Err(ServiceError::AlreadyExists(req.name));
        }
        st.0 += 1;
        let id = format!("{:032x}", st.0);
        let info = RecordInfo {
            id: id.clone(),
            name: req.name,
            enabled: true,
            created: "2026-01-01T00:00:00Z".into(),
            measurement: format!("{:096x}", st.0),
            policy: 0x30000 | u64::from(req.allow_smt) << 16 | u64::from(req.allow_debug) << 19,
            vcpus: req.vcpus,
            vcpu_type: req.vcpu_type,
            launches: vec![LaunchInfo {
                id: "1".into(),
                state: LaunchState::Approved,
                measurement: format!("{:096x}", st.0),
                cmdline: req.cmdline.clone(),
                created: "2026-01-01T00:00:00Z".into(),
                approved: Some("2026-01-01T00:00:00Z".into()),
                retired: None,
                origin: "registration".into(),
                kernel_sha256: "11".repeat(32),
                initrd_sha256: "22".repeat(32),
            }],
            cmdline: req.cmdline,
            family_id: "00".repeat(16),
            image_id: id.clone(),
            id_key_digest: "11".repeat(48),
            author_key_digest: "22".repeat(48),
            min_tcb: req.min_tcb,
            allow_test_root: req.allow_test_root,
            offline_unlock: req.allow_offline_unlock,
            attestations_ok: 0,
            attestations_failed: 0,
            last_attestation: None,
        };
        st.1.insert(
            id,
            Stored {
                info: info.clone(),
                firmware,
                kernel,
                initrd,
                sealed_vmk: req.sealed_vmk,
            },
        );
        Ok(info)
    }

    fn list(&self) -> Result<Vec<RecordInfo>, ServiceError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .1
            .values()
            .map(|r| r.info.clone())
            .collect())
    }

    fn get(&self, id: &str) -> Result<RecordInfo, ServiceError> {
        let st = self.state.lock().unwrap();
        st.1.get(id)
            .map(|r| r.info.clone())
            .ok_or_else(|| ServiceError::NotFound(id.into()))
    }

    fn set_enabled(&self, id: &str, enabled: bool) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        r.info.enabled = enabled;
        Ok(r.info.clone())
    }

    fn set_min_tcb(
        &self,
        id: &str,
        min_tcb: snpguard::verify::MinTcb,
    ) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        r.info.min_tcb = Some(min_tcb);
        Ok(r.info.clone())
    }

    fn set_offline_unlock(&self, id: &str, allowed: bool) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        r.info.offline_unlock = allowed;
        Ok(r.info.clone())
    }

    fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let mut st = self.state.lock().unwrap();
        st.1.remove(id)
            .map(|_| ())
            .ok_or_else(|| ServiceError::NotFound(id.into()))
    }

    fn export_bundle(
        &self,
        id: &str,
        launch: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<(), ServiceError> {
        let data = {
            let mut st = self.state.lock().unwrap();
            let r =
                st.1.get_mut(id)
                    .ok_or_else(|| ServiceError::NotFound(id.into()))?;
            match launch {
                None => bundle_bytes(r),
                Some(l) => {
                    if launch_of(r, l)?.state == LaunchState::Pending {
                        return Err(ServiceError::LaunchState(format!("launch {l} is pending")));
                    }
                    let mut v =
                        format!("SNPGUARD-TEST-BUNDLE {} launch {l}\n", r.info.id).into_bytes();
                    v.extend_from_slice(&r.firmware);
                    v
                }
            }
        };
        out.write_all(&data)
            .map_err(|e| ServiceError::Storage(format!("writing bundle: {e}")))
    }

    fn add_launch(&self, id: &str, req: LaunchRequest) -> Result<LaunchAdded, ServiceError> {
        read_all(req.kernel)?;
        read_all(req.initrd)?;
        let mut st = self.state.lock().unwrap();
        st.0 += 1;
        let n = st.0;
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        let pending = r
            .info
            .launches
            .iter()
            .filter(|l| l.state == LaunchState::Pending)
            .count();
        if pending >= 4 {
            return Err(ServiceError::TooManyPending(format!(
                "{pending} pending launches"
            )));
        }
        let launch = (r.info.launches.len() + 1).to_string();
        let measurement = format!("{n:096x}");
        r.info.launches.push(LaunchInfo {
            id: launch.clone(),
            state: LaunchState::Pending,
            measurement: measurement.clone(),
            cmdline: req.cmdline,
            created: "2026-01-03T00:00:00Z".into(),
            approved: None,
            retired: None,
            origin: req.origin,
            kernel_sha256: format!("{n:064x}"),
            initrd_sha256: format!("{:064x}", n + 1),
        });
        Ok(LaunchAdded {
            record: r.info.clone(),
            launch,
            measurement,
            created: true,
        })
    }

    fn launch_agent_files(
        &self,
        id: &str,
        launch: &str,
    ) -> Result<snpguard_protocol::initrd::AgentFiles, ServiceError> {
        let st = self.state.lock().unwrap();
        let r =
            st.1.get(id)
                .ok_or_else(|| ServiceError::NotFound(id.to_owned()))?;
        if !r.info.launches.iter().any(|l| l.id == launch) {
            return Err(ServiceError::NotFound(format!("no launch {launch}")));
        }
        Ok(snpguardd::service::agent_files_of(r.initrd.as_slice()))
    }

    fn approve_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        let l = launch_of(r, launch)?;
        if l.state == LaunchState::Approved {
            return Err(ServiceError::LaunchState(format!("{launch} is approved")));
        }
        l.state = LaunchState::Approved;
        l.approved = Some("2026-01-04T00:00:00Z".into());
        let (m, c) = (l.measurement.clone(), l.cmdline.clone());
        r.info.measurement = m;
        r.info.cmdline = c;
        Ok(r.info.clone())
    }

    fn retire_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        let approved = r
            .info
            .launches
            .iter()
            .filter(|l| l.state == LaunchState::Approved)
            .count();
        let l = launch_of(r, launch)?;
        if l.state != LaunchState::Approved {
            return Err(ServiceError::LaunchState(format!(
                "{launch} is not approved"
            )));
        }
        if approved <= 1 {
            return Err(ServiceError::LastApprovedLaunch(format!(
                "{launch} is the last approved launch"
            )));
        }
        l.state = LaunchState::Retired;
        let current = r
            .info
            .launches
            .iter()
            .rev()
            .find(|l| l.state == LaunchState::Approved)
            .map(|l| (l.measurement.clone(), l.cmdline.clone()));
        if let Some((m, c)) = current {
            r.info.measurement = m;
            r.info.cmdline = c;
        }
        Ok(r.info.clone())
    }

    fn discard_launch(&self, id: &str, launch: &str) -> Result<RecordInfo, ServiceError> {
        let mut st = self.state.lock().unwrap();
        let r =
            st.1.get_mut(id)
                .ok_or_else(|| ServiceError::NotFound(id.into()))?;
        if launch_of(r, launch)?.state == LaunchState::Approved {
            return Err(ServiceError::LaunchState(format!("{launch} is approved")));
        }
        r.info.launches.retain(|l| l.id != launch);
        Ok(r.info.clone())
    }

    fn ingestion_public_key(&self) -> Vec<u8> {
        vec![0x42; 32]
    }

    fn audit_trail(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        let all = self.audit.lock().unwrap();
        Ok(all[all.len().saturating_sub(n)..].to_vec())
    }

    fn unverified_refusals(&self, n: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        let all = self.unverified.lock().unwrap();
        Ok(all[all.len().saturating_sub(n)..].to_vec())
    }
}

/// In-memory [`CertificateService`] test double: every file is one ASK of
/// `milan` named after it, unless its bytes start with `GARBAGE`
/// (malformed) or `UNTRUSTED` (refused as untrusted); all or nothing.
#[derive(Default)]
pub struct MemCerts {
    held: Mutex<Vec<(String, Vec<u8>)>>,
    last_filter: Mutex<Option<CertFilter>>,
}

impl MemCerts {
    /// The filter of the last removal.
    pub fn last_filter(&self) -> Option<CertFilter> {
        self.last_filter.lock().unwrap().clone()
    }

    /// What was stored: (name, bytes) per file.
    pub fn held(&self) -> Vec<(String, Vec<u8>)> {
        self.held.lock().unwrap().clone()
    }
}

fn summary(name: &str) -> CertSummary {
    CertSummary {
        role: CertRole::Ask,
        product: Product::Milan,
        chip_id: None,
        tcb: None,
        not_after: "2045-01-01T00:00:00Z".into(),
        source: "imported",
        file: Some(name.to_owned()),
        crl: None,
    }
}

impl CertificateService for MemCerts {
    fn import_certificates(
        &self,
        files: &[(String, Vec<u8>)],
    ) -> Result<Vec<CertSummary>, CertImportError> {
        for (name, bytes) in files {
            if bytes.starts_with(b"GARBAGE") {
                return Err(CertImportError::Malformed {
                    file: name.clone(),
                    reason: "not a certificate".into(),
                });
            }
            if bytes.starts_with(b"UNTRUSTED") {
                return Err(CertImportError::Untrusted {
                    file: name.clone(),
                    role: CertRole::Ask,
                    code: "signature-invalid",
                    reason: "not signed by a trusted root".into(),
                });
            }
        }
        self.held.lock().unwrap().extend(files.iter().cloned());
        Ok(files.iter().map(|(n, _)| summary(n)).collect())
    }

    fn list_certificates(&self) -> Result<Vec<CertSummary>, StoreError> {
        Ok(self
            .held()
            .iter()
            .map(|(n, _)| CertSummary {
                file: None,
                ..summary(n)
            })
            .collect())
    }

    /// One imported Milan CRL per file whose bytes start with `CRL`.
    fn list_crls(&self) -> Result<Vec<snpguardd::attest::CrlSummary>, StoreError> {
        Ok(self
            .held()
            .iter()
            .filter(|(_, b)| b.starts_with(b"CRL"))
            .map(|_| snpguardd::attest::CrlSummary {
                product: Product::Milan,
                test_root: false,
                this_update: "2026-01-01T00:00:00Z".into(),
                next_update: "2026-02-01T00:00:00Z".into(),
                revoked: 1,
                source: snpguardd::attest::CrlSource::Imported,
            })
            .collect())
    }

    /// Removes by product (everything held is a milan ASK); records the
    /// last filter.
    fn remove_certificates(&self, filter: &CertFilter) -> Result<Vec<CertSummary>, StoreError> {
        *self.last_filter.lock().unwrap() = Some(filter.clone());
        if filter.product.is_some_and(|p| p != Product::Milan) {
            return Ok(Vec::new());
        }
        let removed: Vec<_> = self.held.lock().unwrap().drain(..).collect();
        Ok(removed
            .iter()
            .map(|(n, _)| CertSummary {
                file: None,
                ..summary(n)
            })
            .collect())
    }
}

/// The real API served over the double on a private bus, with a mock
/// polkit that allows until told otherwise.
pub struct Harness {
    pub bus: TestBus,
    pub polkit: MockPolkit,
    pub polkit_conn: Option<Connection>,
    pub service: Arc<MemService>,
    pub certs: Arc<MemCerts>,
    pub daemon: Connection,
    pub import_dir: PathBuf,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(true).await
    }

    /// `with_polkit: false` leaves the bus without a polkit authority.
    pub async fn start_with(with_polkit: bool) -> Harness {
        let bus = TestBus::start();
        let polkit = MockPolkit::default();
        polkit.set_allow(true);
        let polkit_conn = if with_polkit {
            Some(polkit.serve(&bus).await)
        } else {
            None
        };
        let import_dir = bus.dir.path().join("import");
        std::fs::create_dir(&import_dir).expect("import dir");
        std::fs::set_permissions(
            &import_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod");
        let service = Arc::new(MemService::default());
        let certs = Arc::new(MemCerts::default());
        let builder = zbus::connection::Builder::address(bus.address.as_str()).expect("address");
        let daemon =
            snpguardd::dbus::serve(builder, service.clone(), certs.clone(), import_dir.clone())
                .await
                .expect("serving the API");
        Harness {
            bus,
            polkit,
            polkit_conn,
            service,
            certs,
            daemon,
            import_dir,
        }
    }
}

/// The D-Bus error name and message of a failed call.
pub fn error_of(e: zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, msg, _) => (name.to_string(), msg.unwrap_or_default()),
        other => panic!("expected a D-Bus error reply, got {other:?}"),
    }
}
