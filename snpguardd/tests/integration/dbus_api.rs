//! The D-Bus API on a private system-type bus with the project's policy,
//! a mock polkit authority and the in-memory service double.

use snpguard_testkit::bus as common;

use std::collections::HashMap;
use std::fs::File;
use std::time::Duration;

use common::{bundle_bytes, error_of, Harness, MemService, MockPolkit, TestBus};
use futures_util::StreamExt;
use snpguard_protocol::dbus::{
    ManagerProxy, RecordProxy, BUS_NAME, MANAGER_PATH, RECORD_INTERFACE,
};
use zbus::fdo::ObjectManagerProxy;
use zbus::proxy::MethodFlags;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value};
use zbus::Connection;

const DEADLINE: Duration = Duration::from_secs(20);

fn s(v: &str) -> OwnedValue {
    OwnedValue::try_from(Value::from(v)).unwrap()
}

fn opts(name: &str) -> HashMap<String, OwnedValue> {
    HashMap::from([
        ("name".to_string(), s(name)),
        ("cmdline".to_string(), s("console=ttyS0")),
        ("vcpus".to_string(), OwnedValue::from(4u32)),
        ("vcpu_type".to_string(), s("EPYC-v4")),
    ])
}

/// Three input files in `dir`, with contents tagged by `tag`.
fn inputs(dir: &std::path::Path, tag: &str) -> HashMap<String, std::path::PathBuf> {
    ["firmware", "kernel", "initrd"]
        .iter()
        .map(|k| {
            let p = dir.join(format!("{tag}-{k}"));
            std::fs::write(&p, format!("{tag} {k} bytes")).unwrap();
            (k.to_string(), p)
        })
        .collect()
}

fn fds(files: &HashMap<String, std::path::PathBuf>) -> HashMap<&str, OwnedFd> {
    files
        .iter()
        .map(|(k, p)| {
            let f = File::open(p).unwrap();
            (k.as_str(), OwnedFd::from(std::os::fd::OwnedFd::from(f)))
        })
        .collect()
}

async fn client(h: &Harness) -> (Connection, ManagerProxy<'static>) {
    let conn = h.bus.connect().await;
    let m = ManagerProxy::new(&conn).await.unwrap();
    (conn, m)
}

async fn register(h: &Harness, m: &ManagerProxy<'_>, name: &str) -> OwnedObjectPath {
    let files = inputs(h.bus.dir.path(), name);
    m.register(fds(&files), &opts(name), b"sealed")
        .await
        .expect("register")
}

async fn record<'a>(conn: &Connection, path: &OwnedObjectPath) -> RecordProxy<'a> {
    RecordProxy::builder(conn)
        .path(path.clone())
        .unwrap()
        .build()
        .await
        .unwrap()
}

fn assert_error(e: zbus::Error, name: &str, needle: &str) {
    let (got, msg) = error_of(e);
    assert_eq!(got, format!("org.snpguard.SnpGuard1.Error.{name}"), "{msg}");
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_by_fds_creates_a_record_object() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let om = ObjectManagerProxy::builder(&conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut added = om.receive_interfaces_added().await.unwrap();

    let files = inputs(h.bus.dir.path(), "web");
    let mut o = opts("web");
    for (k, v) in [
        ("min_tcb_bootloader", 3u8),
        ("min_tcb_tee", 0),
        ("min_tcb_snp", 22),
        ("min_tcb_microcode", 213),
    ] {
        o.insert(k.into(), OwnedValue::from(v));
    }
    o.insert("allow_smt".into(), OwnedValue::from(true));
    let path = m.register(fds(&files), &o, b"sealed-vmk").await.unwrap();
    assert!(path
        .as_str()
        .starts_with("/org/snpguard/SnpGuard1/records/"));

    let sig = tokio::time::timeout(DEADLINE, added.next())
        .await
        .expect("InterfacesAdded in time")
        .unwrap();
    let args = sig.args().unwrap();
    assert_eq!(args.object_path().as_str(), path.as_str());
    assert!(args
        .interfaces_and_properties()
        .contains_key(RECORD_INTERFACE));

    let r = record(&conn, &path).await;
    let stored = h.service.records();
    let st = stored.values().next().unwrap();
    assert_eq!(r.id().await.unwrap(), st.info.id);
    assert_eq!(r.name().await.unwrap(), "web");
    assert!(r.enabled().await.unwrap());
    assert_eq!(r.vcpus().await.unwrap(), 4);
    assert_eq!(r.vcpu_type().await.unwrap(), "EPYC-v4");
    assert_eq!(r.cmdline().await.unwrap(), "console=ttyS0");
    assert_eq!(r.measurement().await.unwrap(), st.info.measurement);
    assert_eq!(r.policy().await.unwrap(), st.info.policy);
    assert_eq!(r.last_attestation().await.unwrap(), "");
    assert_eq!(r.attestations_ok().await.unwrap(), 0);
    let tcb = r.min_tcb().await.unwrap();
    assert_eq!(tcb.get("snp"), Some(&22));
    assert_eq!(tcb.get("microcode"), Some(&213));
    assert!(!tcb.contains_key("fmc"));
    assert_eq!(st.firmware, b"web firmware bytes");
    assert_eq!(st.kernel, b"web kernel bytes");
    assert_eq!(st.initrd, b"web initrd bytes");
    assert_eq!(st.sealed_vmk, b"sealed-vmk");
    assert_eq!(m.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(m.ingestion_public_key().await.unwrap(), vec![0x42; 32]);

    // polkit was asked about the caller, not the daemon.
    let calls = h.polkit.calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.subject_kind, "system-bus-name");
    assert_eq!(c.subject_name, conn.unique_name().unwrap().as_str());
    assert_ne!(c.subject_name, h.daemon.unique_name().unwrap().as_str());
    assert_eq!(c.action, "org.snpguard.SnpGuard1.register");
    assert!(c.details_empty);
    assert_eq!(c.flags, 0, "not interactive unless the caller asks");
    assert_eq!(c.cancellation_id, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_flag_reaches_polkit() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    r.inner()
        .call_with_flags::<_, _, ()>("Disable", MethodFlags::AllowInteractiveAuth.into(), &())
        .await
        .unwrap();
    let last = h.polkit.calls().pop().unwrap();
    assert_eq!(last.action, "org.snpguard.SnpGuard1.manage");
    assert_eq!(last.flags, 1, "AllowUserInteraction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_from_paths_refuses_a_hard_link() {
    let h = Harness::start().await;
    let (_conn, m) = client(&h).await;
    let inside = inputs(&h.import_dir, "in");
    let outside = inputs(h.bus.dir.path(), "out");
    let linked = h.import_dir.join("linked-kernel");
    std::fs::hard_link(&outside["kernel"], &linked).unwrap();
    let mut files: HashMap<String, String> = inside
        .iter()
        .map(|(k, p)| (k.clone(), p.to_str().unwrap().to_string()))
        .collect();
    files.insert("kernel".into(), linked.to_str().unwrap().into());
    let f: HashMap<&str, &str> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let e = m
        .register_from_paths(f, &opts("linked"), b"sealed")
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "has 2 hard links");
    assert!(h.service.records().is_empty(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_from_paths_is_confined_to_the_import_dir() {
    let h = Harness::start().await;
    let (_conn, m) = client(&h).await;
    let imp = &h.import_dir;
    let inside = inputs(imp, "in");
    let as_str = |f: &HashMap<String, std::path::PathBuf>| -> HashMap<String, String> {
        f.iter()
            .map(|(k, p)| (k.clone(), p.to_str().unwrap().to_string()))
            .collect()
    };
    let call = |files: HashMap<String, String>, name: &str| {
        let m = m.clone();
        let o = opts(name);
        async move {
            let f: HashMap<&str, &str> = files
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            m.register_from_paths(f, &o, b"sealed").await
        }
    };
    let path = call(as_str(&inside), "ok").await.unwrap();
    assert!(path
        .as_str()
        .starts_with("/org/snpguard/SnpGuard1/records/"));
    let st = h.service.records();
    assert_eq!(st.values().next().unwrap().kernel, b"in kernel bytes");

    // Outside the directory.
    let outside = inputs(h.bus.dir.path(), "out");
    let mut f = as_str(&inside);
    f.insert("kernel".into(), as_str(&outside)["kernel"].clone());
    assert_error(
        call(f, "a").await.unwrap_err(),
        "InvalidInput",
        "outside the import directory",
    );

    // A symlink inside pointing outside, and one pointing inside.
    std::os::unix::fs::symlink(&outside["kernel"], imp.join("link-out")).unwrap();
    std::os::unix::fs::symlink(&inside["kernel"], imp.join("link-in")).unwrap();
    for link in ["link-out", "link-in"] {
        let mut f = as_str(&inside);
        f.insert("kernel".into(), imp.join(link).to_str().unwrap().into());
        assert_error(call(f, "b").await.unwrap_err(), "InvalidInput", "symlink");
    }

    // A symlinked directory component.
    std::os::unix::fs::symlink(h.bus.dir.path(), imp.join("dir-out")).unwrap();
    let mut f = as_str(&inside);
    f.insert(
        "kernel".into(),
        imp.join("dir-out/out-kernel").to_str().unwrap().into(),
    );
    assert_error(call(f, "c").await.unwrap_err(), "InvalidInput", "symlink");

    // `..`, relative, missing, a directory, the import dir itself.
    let mut f = as_str(&inside);
    f.insert("kernel".into(), format!("{}/../out-kernel", imp.display()));
    assert_error(call(f, "d").await.unwrap_err(), "InvalidInput", "\"..\"");
    let mut f = as_str(&inside);
    f.insert("kernel".into(), "in-kernel".into());
    assert_error(
        call(f, "e").await.unwrap_err(),
        "InvalidInput",
        "not absolute",
    );
    let mut f = as_str(&inside);
    f.insert("kernel".into(), imp.join("nope").to_str().unwrap().into());
    assert_error(
        call(f, "f").await.unwrap_err(),
        "InvalidInput",
        "does not exist",
    );
    std::fs::create_dir(imp.join("sub")).unwrap();
    let mut f = as_str(&inside);
    f.insert("kernel".into(), imp.join("sub").to_str().unwrap().into());
    assert_error(
        call(f, "g").await.unwrap_err(),
        "InvalidInput",
        "not a regular file",
    );
    let mut f = as_str(&inside);
    f.insert("kernel".into(), imp.to_str().unwrap().into());
    assert_error(
        call(f, "h").await.unwrap_err(),
        "InvalidInput",
        "import directory itself",
    );
    let mut f = as_str(&inside);
    f.insert(
        "kernel".into(),
        format!("{}/{}", imp.display(), "x".repeat(5000)),
    );
    assert_error(
        call(f, "i").await.unwrap_err(),
        "InvalidInput",
        "longer than 4096",
    );

    assert_eq!(
        h.service.records().len(),
        1,
        "only the good call registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_find_records() {
    let h = Harness::start().await;
    let (_conn, m) = client(&h).await;
    assert!(m.list_records().await.unwrap().is_empty());
    let a = register(&h, &m, "alpha").await;
    let b = register(&h, &m, "beta").await;
    let mut list: Vec<String> = m
        .list_records()
        .await
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    list.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(list, want);
    assert_eq!(m.find_record("beta").await.unwrap(), b);
    let id_a = a.as_str().rsplit('/').next().unwrap();
    assert_eq!(m.find_record(id_a).await.unwrap(), a);
    assert_error(
        m.find_record("gamma").await.unwrap_err(),
        "NotFound",
        "gamma",
    );
    assert_error(
        m.find_record(&"x".repeat(300)).await.unwrap_err(),
        "InvalidInput",
        "longer",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_disable_emit_properties_changed() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    let mut changes = r.receive_enabled_changed().await;
    // The first item is the current value.
    let first = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.get().await.unwrap());

    r.disable().await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!ch.get().await.unwrap());
    let id = r.id().await.unwrap();
    assert!(!h.service.records()[&id].info.enabled);

    r.enable().await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ch.get().await.unwrap());
    assert!(h.service.records()[&id].info.enabled);

    // Counters changed behind the API are pushed by record::update.
    let mut ok = r.receive_attestations_ok_changed().await;
    let _ = tokio::time::timeout(DEADLINE, ok.next()).await.unwrap();
    let mut last = r.receive_last_attestation_changed().await;
    let _ = tokio::time::timeout(DEADLINE, last.next()).await.unwrap();
    let info = h.service.count_attestation(&id, true);
    snpguardd::dbus::record::update(&h.daemon, info)
        .await
        .unwrap();
    let ch = tokio::time::timeout(DEADLINE, ok.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.get().await.unwrap(), 1);
    let ch = tokio::time::timeout(DEADLINE, last.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.get().await.unwrap(), "2026-01-02T03:04:05Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_minimum_tcb_is_polkit_guarded_checked_and_announced() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    assert!(r.min_tcb().await.unwrap().is_empty());
    assert!(!r.allow_test_root().await.unwrap());
    let id = r.id().await.unwrap();
    let mut changes = r.receive_min_tcb_changed().await;
    let first = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.get().await.unwrap().is_empty());
    let tcb = HashMap::from([
        ("bootloader", 4u8),
        ("tee", 0),
        ("snp", 24),
        ("microcode", 213),
    ]);

    // polkit says no: nothing changes.
    h.polkit.set_allow(false);
    assert_error(
        r.set_minimum_tcb(tcb.clone()).await.unwrap_err(),
        "AccessDenied",
        "org.snpguard.SnpGuard1.manage",
    );
    assert_eq!(
        h.polkit.calls().pop().unwrap().action,
        "org.snpguard.SnpGuard1.manage"
    );
    assert_eq!(h.service.records()[&id].info.min_tcb, None);

    h.polkit.set_allow(true);
    r.set_minimum_tcb(tcb.clone()).await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    let got = ch.get().await.unwrap();
    assert_eq!(got.get("snp"), Some(&24));
    assert_eq!(got.get("microcode"), Some(&213));
    assert!(!got.contains_key("fmc"));
    let stored = h.service.records()[&id].info.min_tcb.unwrap();
    assert_eq!((stored.bootloader, stored.snp, stored.fmc), (4, 24, None));

    // Incomplete or unknown components: refused by name, nothing changes.
    let mut bad = tcb.clone();
    bad.remove("tee");
    assert_error(
        r.set_minimum_tcb(bad).await.unwrap_err(),
        "InvalidInput",
        "\"tee\" is missing",
    );
    let mut bad = tcb.clone();
    bad.insert("ucode", 1);
    assert_error(
        r.set_minimum_tcb(bad).await.unwrap_err(),
        "InvalidInput",
        "unknown TCB component \"ucode\"",
    );
    assert_eq!(h.service.records()[&id].info.min_tcb, Some(stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_test_root_is_registered_and_shown() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let files = inputs(h.bus.dir.path(), "sim");
    let mut o = opts("sim");
    o.insert("allow_test_root".into(), OwnedValue::from(true));
    let path = m.register(fds(&files), &o, b"sealed").await.unwrap();
    let r = record(&conn, &path).await;
    assert!(r.allow_test_root().await.unwrap());
    let id = r.id().await.unwrap();
    assert!(h.service.records()[&id].info.allow_test_root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_offline_unlock_is_polkit_guarded_and_announced() {
    use snpguardd::service::RecordService;
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    let id = r.id().await.unwrap();
    let mut changes = r.receive_offline_unlock_changed().await;
    // The first item is the current value: off unless registered with it.
    let first = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!first.get().await.unwrap());

    // polkit says no: refused by name, nothing changes.
    h.polkit.set_allow(false);
    assert_error(
        r.set_offline_unlock(true).await.unwrap_err(),
        "AccessDenied",
        "org.snpguard.SnpGuard1.manage",
    );
    let asked = h.polkit.calls().pop().unwrap();
    assert_eq!(asked.action, "org.snpguard.SnpGuard1.manage");
    assert_eq!(asked.subject_name, conn.unique_name().unwrap().as_str());
    assert!(!h.service.records()[&id].info.offline_unlock);
    assert!(!r.offline_unlock().await.unwrap());

    h.polkit.set_allow(true);
    r.set_offline_unlock(true).await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ch.get().await.unwrap());
    assert!(h.service.records()[&id].info.offline_unlock);
    // Nothing else moved.
    assert!(h.service.records()[&id].info.enabled);

    r.set_offline_unlock(false).await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!ch.get().await.unwrap());
    assert!(!h.service.records()[&id].info.offline_unlock);

    // A change made elsewhere (another replica on the shared store) is
    // pushed by record::update like the counters.
    let info = h.service.set_offline_unlock(&id, true).unwrap();
    snpguardd::dbus::record::update(&h.daemon, info)
        .await
        .unwrap();
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ch.get().await.unwrap());
    assert!(r.offline_unlock().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_offline_unlock_is_registered_and_shown() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let files = inputs(h.bus.dir.path(), "laptop");
    let mut o = opts("laptop");
    o.insert("allow_offline_unlock".into(), OwnedValue::from(true));
    let path = m.register(fds(&files), &o, b"sealed").await.unwrap();
    let r = record(&conn, &path).await;
    assert!(r.offline_unlock().await.unwrap());
    assert!(!r.allow_test_root().await.unwrap());
    let id = r.id().await.unwrap();
    assert!(h.service.records()[&id].info.offline_unlock);

    // Not a boolean: refused by name, nothing registered.
    let files = inputs(h.bus.dir.path(), "bad");
    let mut o = opts("bad");
    o.insert("allow_offline_unlock".into(), s("on"));
    assert_error(
        m.register(fds(&files), &o, b"sealed").await.unwrap_err(),
        "InvalidInput",
        "\"allow_offline_unlock\" must be of type b",
    );
    assert_eq!(h.service.records().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_refusals_are_apart_from_the_audit_trail() {
    let h = Harness::start().await;
    h.polkit.set_allow(false);
    let (_conn, m) = client(&h).await;
    assert!(m.unverified_refusals(10).await.unwrap().is_empty());
    h.service
        .audit(audited(1, Some("00112233445566778899aabbccddeeff"), "ok"));
    for i in 2..5 {
        h.service.unverified(audited(i, None, "signature-invalid"));
    }
    let got = m.unverified_refusals(2).await.unwrap();
    let times: Vec<_> = got.iter().map(|e| e.time.as_str()).collect();
    assert_eq!(times, ["2026-01-02T03:04:03Z", "2026-01-02T03:04:04Z"]);
    assert_eq!(got[0].result, "signature-invalid");
    assert_eq!(got[0].record, "");
    assert_eq!(m.unverified_refusals(1000).await.unwrap().len(), 3);
    let trail = m.audit_trail(1000).await.unwrap();
    assert_eq!(
        trail.len(),
        1,
        "the audit trail holds only the verified one"
    );
    for bad in [0, 1001] {
        assert_error(
            m.unverified_refusals(bad).await.unwrap_err(),
            "InvalidInput",
            "count",
        );
    }
    assert!(h.polkit.calls().is_empty(), "reads never ask polkit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_object() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let om = ObjectManagerProxy::builder(&conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(MANAGER_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut removed = om.receive_interfaces_removed().await.unwrap();
    let r = record(&conn, &path).await;
    r.delete().await.unwrap();
    let sig = tokio::time::timeout(DEADLINE, removed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sig.args().unwrap().object_path().as_str(), path.as_str());
    assert!(h.service.records().is_empty());
    assert!(m.list_records().await.unwrap().is_empty());
    let objects = om.get_managed_objects().await.unwrap();
    assert!(
        objects
            .keys()
            .all(|p| !p.as_str().starts_with("/org/snpguard/SnpGuard1/records/")),
        "{objects:?}"
    );
    let gone = r.name().await.unwrap_err();
    let (name, _) = error_of(gone);
    assert!(
        name.starts_with("org.freedesktop.DBus.Error.Unknown"),
        "{name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_bundle_to_fd_and_to_path() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    let want = bundle_bytes(h.service.records().values().next().unwrap());

    let out = h.bus.dir.path().join("bundle.tar.gz");
    let f = File::create(&out).unwrap();
    r.export_bundle(OwnedFd::from(std::os::fd::OwnedFd::from(f)))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
    assert_eq!(
        h.polkit.calls().last().unwrap().action,
        "org.snpguard.SnpGuard1.export"
    );

    // A read-only fd cannot take the bundle.
    let ro = File::open(&out).unwrap();
    assert_error(
        r.export_bundle(OwnedFd::from(std::os::fd::OwnedFd::from(ro)))
            .await
            .unwrap_err(),
        "Storage",
        "writing",
    );

    let target = h.import_dir.join("web.tar.gz");
    r.export_bundle_to_path(target.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), want);
    assert_error(
        r.export_bundle_to_path(target.to_str().unwrap())
            .await
            .unwrap_err(),
        "AlreadyExists",
        "exists",
    );
    assert_error(
        r.export_bundle_to_path(out.with_file_name("x.tar.gz").to_str().unwrap())
            .await
            .unwrap_err(),
        "InvalidInput",
        "outside the import directory",
    );
    std::os::unix::fs::symlink(h.bus.dir.path().join("y"), h.import_dir.join("y")).unwrap();
    assert_error(
        r.export_bundle_to_path(h.import_dir.join("y").to_str().unwrap())
            .await
            .unwrap_err(),
        "InvalidInput",
        "symlink",
    );
    assert!(!h.bus.dir.path().join("y").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_denial_is_access_denied_and_changes_nothing() {
    let h = Harness::start().await;
    let (conn, m) = client(&h).await;
    let path = register(&h, &m, "web").await;
    let r = record(&conn, &path).await;
    h.polkit.set_allow(false);

    let files = inputs(h.bus.dir.path(), "other");
    assert_error(
        m.register(fds(&files), &opts("other"), b"sealed")
            .await
            .unwrap_err(),
        "AccessDenied",
        "org.snpguard.SnpGuard1.register",
    );
    let inside = inputs(&h.import_dir, "p");
    let f: HashMap<&str, &str> = inside
        .iter()
        .map(|(k, p)| (k.as_str(), p.to_str().unwrap()))
        .collect();
    assert_error(
        m.register_from_paths(f, &opts("p"), b"sealed")
            .await
            .unwrap_err(),
        "AccessDenied",
        "register",
    );
    assert_error(r.disable().await.unwrap_err(), "AccessDenied", "manage");
    assert_error(
        r.set_offline_unlock(true).await.unwrap_err(),
        "AccessDenied",
        "manage",
    );
    assert_error(r.delete().await.unwrap_err(), "AccessDenied", "manage");
    let out = File::create(h.bus.dir.path().join("b")).unwrap();
    assert_error(
        r.export_bundle(OwnedFd::from(std::os::fd::OwnedFd::from(out)))
            .await
            .unwrap_err(),
        "AccessDenied",
        "export",
    );
    assert_error(
        r.export_bundle_to_path(h.import_dir.join("b").to_str().unwrap())
            .await
            .unwrap_err(),
        "AccessDenied",
        "export",
    );
    let recs = h.service.records();
    assert_eq!(recs.len(), 1);
    assert!(recs.values().next().unwrap().info.enabled);
    assert!(!recs.values().next().unwrap().info.offline_unlock);
    assert_eq!(
        std::fs::metadata(h.bus.dir.path().join("b")).unwrap().len(),
        0
    );
    assert!(!h.import_dir.join("b").exists());
    // Reading needs no authorization.
    assert_eq!(m.list_records().await.unwrap().len(), 1);
    assert_eq!(r.name().await.unwrap(), "web");
    let calls = h.polkit.calls();
    assert_eq!(calls.len(), 1 + 7, "every mutating call asked polkit");
    for c in calls {
        assert_eq!(c.subject_name, conn.unique_name().unwrap().as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polkit_everything_mutating_is_denied() {
    let h = Harness::start_with(false).await;
    let (_conn, m) = client(&h).await;
    let files = inputs(h.bus.dir.path(), "web");
    assert_error(
        m.register(fds(&files), &opts("web"), b"sealed")
            .await
            .unwrap_err(),
        "AccessDenied",
        "polkit could not be asked",
    );
    assert!(h.service.records().is_empty());
    assert!(m.list_records().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_invalid_input_and_the_daemon_stays_up() {
    let h = Harness::start().await;
    let (_conn, m) = client(&h).await;
    let files = inputs(h.bus.dir.path(), "web");
    let with = |k: &str, v: OwnedValue| {
        let mut o = opts("web");
        o.insert(k.to_string(), v);
        o
    };
    let without = |k: &str| {
        let mut o = opts("web");
        o.remove(k);
        o
    };
    let mut many = opts("web");
    for i in 0..40 {
        many.insert(format!("x{i}"), OwnedValue::from(1u8));
    }
    let cases: Vec<(HashMap<String, OwnedValue>, &str)> = vec![
        (with("colour", s("blue")), "unknown option \"colour\""),
        (with("vcpus", s("4")), "\"vcpus\" must be of type u"),
        (with("vcpus", OwnedValue::from(0u32)), "1..=4096"),
        (with("vcpus", OwnedValue::from(100_000u32)), "1..=4096"),
        (with("name", s("")), "not a record name"),
        (with("name", s("a b")), "not a record name"),
        (with("name", s(&"n".repeat(65))), "not a record name"),
        (with("cmdline", s(&"c".repeat(4097))), "at most 4096"),
        (
            with("cmdline", s("console=ttyS0\r\x1b[2Kquiet")),
            "control character \\r at byte offset 13",
        ),
        (
            with("cmdline", OwnedValue::from(1u32)),
            "\"cmdline\" must be of type s",
        ),
        (with("vcpu_type", s("")), "vcpu_type"),
        (with("vcpu_type", s(&"v".repeat(65))), "vcpu_type"),
        (
            with("allow_smt", OwnedValue::from(1u8)),
            "\"allow_smt\" must be of type b",
        ),
        (
            with("allow_debug", s("yes")),
            "\"allow_debug\" must be of type b",
        ),
        (
            with("allow_migrate_ma", OwnedValue::from(0u32)),
            "must be of type b",
        ),
        (with("min_tcb_snp", OwnedValue::from(1u8)), "go together"),
        (with("min_tcb_fmc", OwnedValue::from(1u8)), "go together"),
        (
            with("min_tcb_tee", OwnedValue::from(1u32)),
            "\"min_tcb_tee\" must be of type y",
        ),
        (without("name"), "\"name\" (type s) is required"),
        (without("cmdline"), "\"cmdline\" (type s) is required"),
        (without("vcpus"), "\"vcpus\" (type u) is required"),
        (without("vcpu_type"), "\"vcpu_type\" (type s) is required"),
        (many, "at most 32"),
    ];
    for (o, needle) in cases {
        let e = m.register(fds(&files), &o, b"sealed").await.unwrap_err();
        assert_error(e, "InvalidInput", needle);
        assert!(m.list_records().await.unwrap().is_empty(), "daemon answers");
    }

    // sealed_vmk bounds.
    for vmk in [vec![], vec![7u8; 4097]] {
        let e = m
            .register(fds(&files), &opts("web"), &vmk)
            .await
            .unwrap_err();
        assert_error(e, "InvalidInput", "sealed_vmk");
    }
    // File keys: missing, unknown.
    let mut f = fds(&files);
    f.remove("initrd");
    assert_error(
        m.register(f, &opts("web"), b"s").await.unwrap_err(),
        "InvalidInput",
        "\"initrd\" is missing",
    );
    let mut f = fds(&files);
    let extra = File::open(&files["kernel"]).unwrap();
    f.insert("bios", OwnedFd::from(std::os::fd::OwnedFd::from(extra)));
    assert_error(
        m.register(f, &opts("web"), b"s").await.unwrap_err(),
        "InvalidInput",
        "unknown file \"bios\"",
    );
    // A pipe instead of a file.
    let (rd, _wr) = std::io::pipe().unwrap();
    let mut f = fds(&files);
    f.insert("kernel", OwnedFd::from(std::os::fd::OwnedFd::from(rd)));
    assert_error(
        m.register(f, &opts("web"), b"s").await.unwrap_err(),
        "InvalidInput",
        "not a regular file",
    );

    // Service errors keep their type.
    let e = m
        .register(fds(&files), &with("vcpu_type", s("Pentium")), b"s")
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "unknown vCPU type");
    let e = m
        .register(fds(&files), &opts("web"), b"BAD")
        .await
        .unwrap_err();
    assert_error(e, "SealedKey", "convert with this daemon's ingestion key");
    register(&h, &m, "web").await;
    let e = m
        .register(fds(&files), &opts("web"), b"s")
        .await
        .unwrap_err();
    assert_error(e, "AlreadyExists", "web");
    assert_eq!(m.list_records().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_records_are_served_at_start() {
    let bus = TestBus::start();
    let polkit = MockPolkit::default();
    let _pk = polkit.serve(&bus).await;
    let service = std::sync::Arc::new(MemService::default());
    let files = inputs(bus.dir.path(), "old");
    let open = |k: &str| File::open(&files[k]).unwrap();
    use snpguardd::service::RecordService;
    let info = service
        .register(snpguardd::service::RegisterRequest {
            name: "old".into(),
            firmware: open("firmware"),
            kernel: open("kernel"),
            initrd: open("initrd"),
            cmdline: String::new(),
            vcpus: 1,
            vcpu_type: "EPYC-v4".into(),
            allow_smt: false,
            allow_debug: false,
            allow_migrate_ma: false,
            min_tcb: None,
            allow_test_root: false,
            allow_offline_unlock: false,
            sealed_vmk: b"x".to_vec(),
        })
        .unwrap();
    let import = bus.dir.path().join("import");
    std::fs::create_dir(&import).unwrap();
    let builder = zbus::connection::Builder::address(bus.address.as_str()).unwrap();
    let certs = std::sync::Arc::new(common::MemCerts::default());
    let _daemon = snpguardd::dbus::serve(builder, service, certs, import)
        .await
        .unwrap();
    let conn = bus.connect().await;
    let m = ManagerProxy::new(&conn).await.unwrap();
    let p = m.find_record("old").await.unwrap();
    assert!(p.as_str().ends_with(&info.id));
    let r = record(&conn, &p).await;
    assert_eq!(r.name().await.unwrap(), "old");
}

fn audited(i: u32, record: Option<&str>, result: &str) -> snpguardd::audit::AuditEntry {
    snpguardd::audit::AuditEntry {
        time: format!("2026-01-02T03:04:{i:02}Z"),
        peer: format!("192.0.2.{i}:4000"),
        record: record.map(str::to_string),
        launch: None,
        result: result.into(),
        codes: if result == "ok" {
            vec![]
        } else {
            vec![result.into(), "tcb".into()]
        },
        detail: if result == "ok" {
            String::new()
        } else {
            format!("refused #{i}")
        },
        measurement: Some("ab".repeat(48)),
        reported_tcb: None,
        chip_id_prefix: None,
        cert_source: None,
        notes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_and_supported_vcpu_types_for_clients_like_cockpit() {
    let h = Harness::start().await;
    // Reading needs no polkit.
    h.polkit.set_allow(false);
    let (_conn, m) = client(&h).await;
    assert!(m.audit_trail(10).await.unwrap().is_empty());
    for i in 0..5 {
        let (record, result) = match i % 2 {
            0 => (Some("00112233445566778899aabbccddeeff"), "ok"),
            _ => (None, "unknown-image"),
        };
        h.service.audit(audited(i, record, result));
    }
    let last3 = m.audit_trail(3).await.unwrap();
    let times: Vec<_> = last3.iter().map(|e| e.time.as_str()).collect();
    assert_eq!(
        times,
        [
            "2026-01-02T03:04:02Z",
            "2026-01-02T03:04:03Z",
            "2026-01-02T03:04:04Z"
        ]
    );
    assert_eq!(last3[0].record, "00112233445566778899aabbccddeeff");
    assert_eq!(last3[0].result, "ok");
    assert!(last3[0].codes.is_empty());
    assert_eq!(last3[1].record, "", "no record matched");
    assert_eq!(last3[1].peer, "192.0.2.3:4000");
    assert_eq!(last3[1].codes, ["unknown-image", "tcb"]);
    assert_eq!(last3[1].detail, "refused #3");
    assert_eq!(m.audit_trail(1000).await.unwrap().len(), 5);
    for bad in [0, 1001] {
        assert_error(
            m.audit_trail(bad).await.unwrap_err(),
            "InvalidInput",
            "count",
        );
    }
    assert!(h.polkit.calls().is_empty(), "reads never ask polkit");

    assert_eq!(
        m.import_directory().await.unwrap(),
        h.import_dir.display().to_string()
    );
    let types = m.supported_vcpu_types().await.unwrap();
    assert_eq!(types.first().map(String::as_str), Some("EPYC"));
    for t in ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    // Each is what registration's vcpu_type accepts.
    for t in &types {
        t.parse::<snpguard::measure::VcpuType>().expect(t);
    }
}
