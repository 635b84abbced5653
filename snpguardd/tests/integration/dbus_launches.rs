//! The launch methods and properties of the Record object on a private
//! bus with the project's policy, a mock polkit and the service double:
//! add (fds and paths), approve, retire, discard, export of a launch,
//! typed errors, PropertiesChanged and polkit denial.

use snpguard_testkit::bus as common;

use std::collections::HashMap;
use std::fs::File;
use std::time::Duration;

use common::{error_of, Harness};
use futures_util::StreamExt;
use snpguard_protocol::dbus::{launch_state, LaunchEntry, ManagerProxy, RecordProxy};
use snpguardd::service::LaunchState;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue, Value};
use zbus::Connection;

const DEADLINE: Duration = Duration::from_secs(20);

fn s(v: &str) -> OwnedValue {
    OwnedValue::try_from(Value::from(v)).unwrap()
}

fn fd(p: &std::path::Path) -> OwnedFd {
    OwnedFd::from(std::os::fd::OwnedFd::from(File::open(p).unwrap()))
}

/// Files `keys` in `dir`, tagged by `tag`.
fn files(dir: &std::path::Path, tag: &str, keys: &[&str]) -> HashMap<String, std::path::PathBuf> {
    keys.iter()
        .map(|k| {
            let p = dir.join(format!("{tag}-{k}"));
            std::fs::write(&p, format!("{tag} {k} bytes")).unwrap();
            (k.to_string(), p)
        })
        .collect()
}

fn fds(f: &HashMap<String, std::path::PathBuf>) -> HashMap<&str, OwnedFd> {
    f.iter().map(|(k, p)| (k.as_str(), fd(p))).collect()
}

/// A client, a registered record "web" and an uncached proxy for it.
async fn setup(h: &Harness) -> (Connection, OwnedObjectPath, RecordProxy<'static>) {
    let conn = h.bus.connect().await;
    let m = ManagerProxy::new(&conn).await.unwrap();
    let f = files(h.bus.dir.path(), "web", &["firmware", "kernel", "initrd"]);
    let opts = HashMap::from([
        ("name".to_string(), s("web")),
        ("cmdline".to_string(), s("console=ttyS0")),
        ("vcpus".to_string(), OwnedValue::from(2u32)),
        ("vcpu_type".to_string(), s("EPYC-v4")),
    ]);
    let path = m.register(fds(&f), &opts, b"sealed").await.unwrap();
    let r = RecordProxy::builder(&conn)
        .path(path.clone())
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    (conn, path, r)
}

fn assert_error(e: zbus::Error, name: &str, needle: &str) {
    let (got, msg) = error_of(e);
    assert_eq!(got, format!("org.snpguard.SnpGuard1.Error.{name}"), "{msg}");
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

fn states(r: &[LaunchEntry]) -> Vec<(String, String)> {
    r.iter().map(|l| (l.id.clone(), l.state.clone())).collect()
}

fn pair(id: &str, state: &str) -> (String, String) {
    (id.to_owned(), state.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_are_added_approved_retired_and_discarded() {
    let h = Harness::start().await;
    let (_conn, _path, r) = setup(&h).await;
    let id = r.id().await.unwrap();
    let first = r.measurement().await.unwrap();
    assert_eq!(
        states(&r.launches().await.unwrap()),
        [pair("1", "approved")]
    );

    let new = files(h.bus.dir.path(), "new", &["kernel", "initrd"]);
    let launch = r
        .add_launch(fds(&new), "console=ttyS0 quiet")
        .await
        .unwrap();
    assert_eq!(launch, "2");
    assert_eq!(r.pending_launches().await.unwrap(), 1);
    let ls = r.launches().await.unwrap();
    assert_eq!(
        states(&ls),
        [pair("1", "approved"), pair("2", launch_state::PENDING)]
    );
    assert_eq!(ls[1].cmdline, "console=ttyS0 quiet");
    assert_eq!(ls[1].origin, "operator");
    assert_eq!(
        r.measurement().await.unwrap(),
        first,
        "pending changes nothing"
    );
    let stored = &h.service.records()[&id];
    assert_eq!(stored.info.launches[1].state, LaunchState::Pending);

    // A pending launch has no bundle.
    let out = h.bus.dir.path().join("pending.tgz");
    assert_error(
        r.export_launch_bundle(
            "2",
            OwnedFd::from(std::os::fd::OwnedFd::from(File::create(&out).unwrap())),
        )
        .await
        .unwrap_err(),
        "LaunchState",
        "pending",
    );

    r.approve_launch("2").await.unwrap();
    assert_eq!(r.pending_launches().await.unwrap(), 0);
    assert_eq!(r.measurement().await.unwrap(), ls[1].measurement);
    assert_eq!(r.cmdline().await.unwrap(), "console=ttyS0 quiet");
    assert_error(
        r.approve_launch("2").await.unwrap_err(),
        "LaunchState",
        "approved",
    );
    assert_error(r.approve_launch("7").await.unwrap_err(), "NotFound", "7");

    r.retire_launch("1").await.unwrap();
    assert_error(
        r.retire_launch("2").await.unwrap_err(),
        "LastApprovedLaunch",
        "last approved",
    );
    assert_error(
        r.discard_launch("2").await.unwrap_err(),
        "LaunchState",
        "approved",
    );
    assert_eq!(
        states(&r.launches().await.unwrap()),
        [pair("1", "retired"), pair("2", "approved")]
    );

    // The bundle of a given launch, to an fd and to a path.
    let out = h.bus.dir.path().join("one.tgz");
    r.export_launch_bundle(
        "1",
        OwnedFd::from(std::os::fd::OwnedFd::from(File::create(&out).unwrap())),
    )
    .await
    .unwrap();
    let got = std::fs::read(&out).unwrap();
    assert!(got.starts_with(format!("SNPGUARD-TEST-BUNDLE {id} launch 1\n").as_bytes()));
    let at = h.import_dir.join("two.tgz");
    r.export_launch_bundle_to_path("2", at.to_str().unwrap())
        .await
        .unwrap();
    assert!(std::fs::read(&at)
        .unwrap()
        .starts_with(format!("SNPGUARD-TEST-BUNDLE {id} launch 2\n").as_bytes()));

    r.discard_launch("1").await.unwrap();
    assert_eq!(
        states(&r.launches().await.unwrap()),
        [pair("2", "approved")]
    );

    // polkit was asked for the right action each time.
    let actions: Vec<String> = h.polkit.calls().into_iter().map(|c| c.action).collect();
    for want in [
        "org.snpguard.SnpGuard1.register",
        "org.snpguard.SnpGuard1.manage",
        "org.snpguard.SnpGuard1.export",
    ] {
        assert!(actions.iter().any(|a| a == want), "{want} in {actions:?}");
    }
    assert_eq!(
        actions.iter().filter(|a| a.ends_with(".manage")).count(),
        7,
        "approve x3, retire x2, discard x2: {actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_launch_from_paths_and_bad_inputs() {
    let h = Harness::start().await;
    let (_conn, _path, r) = setup(&h).await;
    let inside = files(&h.import_dir, "p", &["kernel", "initrd"]);
    let by_path: HashMap<&str, &str> = inside
        .iter()
        .map(|(k, p)| (k.as_str(), p.to_str().unwrap()))
        .collect();
    assert_eq!(r.add_launch_from_paths(by_path, "").await.unwrap(), "2");

    let outside = files(h.bus.dir.path(), "o", &["kernel", "initrd"]);
    let by_path: HashMap<&str, &str> = outside
        .iter()
        .map(|(k, p)| (k.as_str(), p.to_str().unwrap()))
        .collect();
    assert_error(
        r.add_launch_from_paths(by_path, "").await.unwrap_err(),
        "InvalidInput",
        "import",
    );
    // Missing, unknown and non-regular files.
    let mut f = fds(&outside);
    f.remove("initrd");
    assert_error(
        r.add_launch(f, "").await.unwrap_err(),
        "InvalidInput",
        "initrd",
    );
    let extra = files(h.bus.dir.path(), "x", &["kernel", "initrd", "firmware"]);
    assert_error(
        r.add_launch(fds(&extra), "").await.unwrap_err(),
        "InvalidInput",
        "firmware",
    );
    let mut f = fds(&outside);
    f.insert("kernel", fd(std::path::Path::new("/dev/null")));
    assert_error(
        r.add_launch(f, "").await.unwrap_err(),
        "InvalidInput",
        "kernel",
    );
    assert_error(
        r.add_launch(fds(&outside), &"x".repeat(5000))
            .await
            .unwrap_err(),
        "InvalidInput",
        "cmdline",
    );
    // Control characters could hide part of the command line from the
    // operator who approves it: refused, by fd and by path, naming the
    // offset and the escaped character only.
    for (cmdline, shown) in [
        ("quiet\rinit=/bin/sh", "\\r at byte offset 5"),
        ("quiet \x1b[8minit=/bin/sh", "\\x1b at byte offset 6"),
        ("a\tb", "\\t at byte offset 1"),
        ("a\x7f", "\\x7f at byte offset 1"),
    ] {
        assert_error(
            r.add_launch(fds(&outside), cmdline).await.unwrap_err(),
            "InvalidInput",
            shown,
        );
        let by_path: HashMap<&str, &str> = inside
            .iter()
            .map(|(k, p)| (k.as_str(), p.to_str().unwrap()))
            .collect();
        assert_error(
            r.add_launch_from_paths(by_path, cmdline).await.unwrap_err(),
            "InvalidInput",
            "control character",
        );
    }
    assert_eq!(r.pending_launches().await.unwrap(), 1, "nothing added");
    assert_error(
        r.launch_digests("9").await.unwrap_err(),
        "NotFound",
        "no launch 9",
    );
    let (kernel, initrd) = r.launch_digests("2").await.unwrap();
    assert_eq!((kernel.len(), initrd.len()), (64, 64));
    // The agent's files: this initrd is no cpio archive, which the
    // answer says instead of failing; an unknown launch is NotFound.
    let (files, problems) = r.launch_agent_files("2").await.unwrap();
    assert!(files.is_empty(), "{files:?}");
    assert!(
        problems[0].contains("neither a cpio archive"),
        "{problems:?}"
    );
    assert_error(
        r.launch_agent_files("9").await.unwrap_err(),
        "NotFound",
        "no launch 9",
    );
    assert_error(
        r.approve_launch(&"9".repeat(40)).await.unwrap_err(),
        "InvalidInput",
        "launch id",
    );

    // The pending limit is a typed error.
    for n in 0..3 {
        r.add_launch(fds(&outside), &format!("n={n}"))
            .await
            .unwrap();
    }
    assert_error(
        r.add_launch(fds(&outside), "one more").await.unwrap_err(),
        "TooManyPending",
        "pending",
    );
    assert_eq!(r.pending_launches().await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_changes_emit_properties_changed() {
    let h = Harness::start().await;
    let (conn, path, _) = setup(&h).await;
    let cached = RecordProxy::builder(&conn)
        .path(path)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut pending = cached.receive_pending_launches_changed().await;
    let first = tokio::time::timeout(DEADLINE, pending.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.get().await.unwrap(), 0);
    let mut measurement = cached.receive_measurement_changed().await;
    let _ = tokio::time::timeout(DEADLINE, measurement.next())
        .await
        .unwrap();

    let new = files(h.bus.dir.path(), "new", &["kernel", "initrd"]);
    cached.add_launch(fds(&new), "quiet").await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, pending.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.get().await.unwrap(), 1);
    cached.approve_launch("2").await.unwrap();
    let ch = tokio::time::timeout(DEADLINE, pending.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.get().await.unwrap(), 0);
    let ch = tokio::time::timeout(DEADLINE, measurement.next())
        .await
        .unwrap()
        .unwrap();
    let id = cached.id().await.unwrap();
    assert_eq!(
        ch.get().await.unwrap(),
        h.service.records()[&id].info.measurement
    );

    // A launch a guest added behind the API is published by update().
    let info = {
        use snpguardd::service::{LaunchRequest, RecordService};
        h.service
            .add_launch(
                &id,
                LaunchRequest {
                    kernel: Box::new(std::io::Cursor::new(b"k".to_vec())),
                    initrd: Box::new(std::io::Cursor::new(b"i".to_vec())),
                    cmdline: "guest".into(),
                    origin: "guest 192.0.2.1".into(),
                },
            )
            .unwrap()
            .record
    };
    snpguardd::dbus::record::update(&h.daemon, info)
        .await
        .unwrap();
    let ch = tokio::time::timeout(DEADLINE, pending.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ch.get().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_denial_changes_no_launch() {
    let h = Harness::start().await;
    let (_conn, _path, r) = setup(&h).await;
    let new = files(h.bus.dir.path(), "new", &["kernel", "initrd"]);
    r.add_launch(fds(&new), "quiet").await.unwrap();
    let id = r.id().await.unwrap();
    let before = h.service.records()[&id].info.clone();
    h.polkit.set_allow(false);

    assert_error(
        r.approve_launch("2").await.unwrap_err(),
        "AccessDenied",
        ".manage",
    );
    assert_error(
        r.retire_launch("1").await.unwrap_err(),
        "AccessDenied",
        ".manage",
    );
    assert_error(
        r.discard_launch("2").await.unwrap_err(),
        "AccessDenied",
        ".manage",
    );
    assert_error(
        r.add_launch(fds(&new), "other").await.unwrap_err(),
        "AccessDenied",
        ".register",
    );
    let out = File::create(h.bus.dir.path().join("b")).unwrap();
    assert_error(
        r.export_launch_bundle("1", OwnedFd::from(std::os::fd::OwnedFd::from(out)))
            .await
            .unwrap_err(),
        "AccessDenied",
        ".export",
    );
    // Reading the initrd's agent files is an export too.
    assert_error(
        r.launch_agent_files("2").await.unwrap_err(),
        "AccessDenied",
        ".export",
    );
    assert_eq!(h.service.records()[&id].info, before);
    assert_eq!(r.pending_launches().await.unwrap(), 1);
}
