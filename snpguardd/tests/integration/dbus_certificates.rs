//! The Certificates interface on a private system-type bus with the
//! project's policy, a mock polkit and the certificate service double:
//! fds and import-directory paths reach the service named, refusals come
//! back typed, polkit is asked with its own action, bounds hold; removal
//! parses its filter, asks polkit with its own action and returns what
//! was removed.

use snpguard_testkit::bus as common;

use std::collections::HashMap;

use common::{error_of, Harness};
use snpguard::certs::{CertRole, Product};
use snpguard_protocol::dbus::{
    CertificatesProxy, ACTION_IMPORT_CERTIFICATES, ACTION_REMOVE_CERTIFICATES,
};
use snpguardd::attest::{CertFilter, HeldSource};
use zbus::zvariant::OwnedFd;

fn fd(path: &std::path::Path) -> OwnedFd {
    let f = std::fs::File::open(path).unwrap();
    OwnedFd::from(std::os::fd::OwnedFd::from(f))
}

fn assert_error(e: zbus::Error, name: &str, needle: &str) {
    let (got, msg) = error_of(e);
    assert_eq!(got, format!("org.snpguard.SnpGuard1.Error.{name}"), "{msg}");
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_by_fd_and_by_path_then_list() {
    let h = Harness::start().await;
    let conn = h.bus.connect().await;
    let c = CertificatesProxy::new(&conn).await.unwrap();
    assert!(c.list().await.unwrap().is_empty());

    let a = h.bus.dir.path().join("ask.pem");
    std::fs::write(&a, b"ask bytes").unwrap();
    let got = c
        .import(HashMap::from([("ask.pem", fd(&a))]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].kind.as_str(), got[0].product.as_str()),
        ("ASK", "milan")
    );
    assert_eq!(got[0].file, "ask.pem");
    assert_eq!(
        h.certs.held(),
        [("ask.pem".to_string(), b"ask bytes".to_vec())]
    );
    let calls = h.polkit.calls();
    let last = calls.last().expect("polkit was asked");
    assert_eq!(last.action, ACTION_IMPORT_CERTIFICATES);
    assert_eq!(last.subject_kind, "system-bus-name");
    assert_eq!(last.subject_name, conn.unique_name().unwrap().as_str());

    let p = h.import_dir.join("chain.pem");
    std::fs::write(&p, b"chain bytes").unwrap();
    let got = c.import_from_paths(&[p.to_str().unwrap()]).await.unwrap();
    assert_eq!(got[0].file, p.to_str().unwrap());
    let listed = c.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|i| i.file.is_empty() && i.source == "imported"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_name_the_file_and_store_nothing() {
    let h = Harness::start().await;
    let conn = h.bus.connect().await;
    let c = CertificatesProxy::new(&conn).await.unwrap();
    let dir = h.bus.dir.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good = write("good.der", b"fine");
    let junk = write("junk.bin", b"GARBAGE");
    let foreign = write("foreign.pem", b"UNTRUSTED");

    let e = c
        .import(HashMap::from([
            ("good.der", fd(&good)),
            ("junk.bin", fd(&junk)),
        ]))
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "junk.bin");
    let e = c
        .import(HashMap::from([("foreign.pem", fd(&foreign))]))
        .await
        .unwrap_err();
    assert_error(e, "Untrusted", "foreign.pem");
    assert!(h.certs.held().is_empty(), "all or nothing");

    // Bounds: no files, an oversize file, a pipe, a path outside.
    let e = c.import(HashMap::new()).await.unwrap_err();
    assert_error(e, "InvalidInput", "1 to 64 files");
    let big = write("big.pem", &vec![b'A'; 64 * 1024 + 1]);
    let e = c
        .import(HashMap::from([("big.pem", fd(&big))]))
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "big.pem");
    let (r, _w) = std::io::pipe().unwrap();
    let e = c
        .import(HashMap::from([(
            "pipe",
            OwnedFd::from(std::os::fd::OwnedFd::from(r)),
        )]))
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "not a regular file");
    let e = c
        .import_from_paths(&[good.to_str().unwrap()])
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "outside the import directory");

    // polkit says no: AccessDenied, nothing stored; listing still works.
    h.polkit.set_allow(false);
    let e = c
        .import(HashMap::from([("good.der", fd(&good))]))
        .await
        .unwrap_err();
    assert_error(e, "AccessDenied", "import-certificates");
    assert!(h.certs.held().is_empty());
    assert!(c.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_parses_the_filter_and_asks_polkit() {
    let h = Harness::start().await;
    let conn = h.bus.connect().await;
    let c = CertificatesProxy::new(&conn).await.unwrap();
    let a = h.bus.dir.path().join("ask.pem");
    std::fs::write(&a, b"ask bytes").unwrap();
    c.import(HashMap::from([("ask.pem", fd(&a))]))
        .await
        .unwrap();

    // Bad filters are InvalidInput and remove nothing.
    for (args, needle) in [
        (["kds", "", "", "", ""], "source"),
        (["", "ARK", "", "", ""], "kind"),
        (["", "", "naples", "", ""], "product"),
        (["", "", "", "xyz", ""], "chip_id"),
        (["", "", "", "", "1.2.3"], "tcb"),
    ] {
        let e = c
            .remove(args[0], args[1], args[2], args[3], args[4])
            .await
            .unwrap_err();
        assert_error(e, "InvalidInput", needle);
    }
    assert_eq!(h.certs.held().len(), 1);

    // polkit says no: AccessDenied naming the action, nothing removed.
    h.polkit.set_allow(false);
    let e = c.remove("imported", "", "", "", "").await.unwrap_err();
    assert_error(e, "AccessDenied", "remove-certificates");
    assert_eq!(h.certs.held().len(), 1);
    h.polkit.set_allow(true);

    let removed = c
        .remove("kds-cache", "vcek", "milan", "0A1B", "3.0.8.115")
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].kind, "ASK");
    assert_eq!(
        h.certs.last_filter(),
        Some(CertFilter {
            source: Some(HeldSource::KdsCache),
            role: Some(CertRole::Vcek),
            product: Some(Product::Milan),
            chip_id: Some("0a1b".into()),
            tcb: Some("3.0.8.115".into()),
            crl: false,
        })
    );
    let calls = h.polkit.calls();
    let last = calls.last().expect("polkit was asked");
    assert_eq!(last.action, ACTION_REMOVE_CERTIFICATES);
    assert_eq!(last.subject_name, conn.unique_name().unwrap().as_str());
    assert!(c.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_link_in_the_import_dir_is_refused() {
    let h = Harness::start().await;
    let conn = h.bus.connect().await;
    let c = CertificatesProxy::new(&conn).await.unwrap();
    // A file outside the import directory, linked into it.
    let outside = h.bus.dir.path().join("daemon-only.pem");
    std::fs::write(&outside, b"ask bytes").unwrap();
    let linked = h.import_dir.join("ask.pem");
    std::fs::hard_link(&outside, &linked).unwrap();
    let e = c
        .import_from_paths(&[linked.to_str().unwrap()])
        .await
        .unwrap_err();
    assert_error(e, "InvalidInput", "has 2 hard links");
    assert!(h.certs.held().is_empty(), "nothing read");
    // The same bytes as a copy are taken.
    std::fs::remove_file(&linked).unwrap();
    std::fs::copy(&outside, &linked).unwrap();
    let got = c
        .import_from_paths(&[linked.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
}
