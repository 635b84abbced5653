//! The checked-in interface XML under dbus/interfaces/ must describe the
//! live object server: methods (argument names, types, directions),
//! signals and properties (types, access). Standard org.freedesktop.DBus.*
//! interfaces, annotations, docs, whitespace and order are ignored.

use snpguard_testkit::bus as common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Harness, TestBus};
use snpguard_protocol::dbus::{
    ManagerProxy, BUS_NAME, CERTIFICATES_INTERFACE, MANAGER_INTERFACE, MANAGER_PATH,
    RECORD_INTERFACE,
};
use zbus::fdo::IntrospectableProxy;
use zbus::zvariant::{OwnedFd, OwnedValue, Value};
use zbus_xml::{ArgDirection, Node};

/// One line per member of interface `name` in `xml`, sorted.
fn members(xml: &str, name: &str) -> BTreeSet<String> {
    let node = Node::from_reader(xml.as_bytes()).expect("parsing introspection XML");
    let iface = node
        .interfaces()
        .iter()
        .find(|i| i.name().as_str() == name)
        .unwrap_or_else(|| panic!("no interface {name} in:\n{xml}"));
    let args = |args: &[zbus_xml::Arg]| -> String {
        args.iter()
            .map(|a| {
                let dir = match a.direction() {
                    Some(ArgDirection::Out) => "out",
                    _ => "in",
                };
                // Output argument names are documentation only.
                let n = if dir == "out" {
                    ""
                } else {
                    a.name().unwrap_or("")
                };
                format!("{dir} {} {n}", a.ty().inner())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = BTreeSet::new();
    for m in iface.methods() {
        out.insert(format!("method {}({})", m.name(), args(m.args())));
    }
    for s in iface.signals() {
        out.insert(format!("signal {}({})", s.name(), args(s.args())));
    }
    for p in iface.properties() {
        out.insert(format!(
            "property {} {} {:?}",
            p.name(),
            p.ty().inner(),
            p.access()
        ));
    }
    out
}

fn checked_in(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dbus/interfaces")
        .join(format!("{name}.xml"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

async fn live(bus: &TestBus, path: &str) -> String {
    let conn = bus.connect().await;
    IntrospectableProxy::builder(&conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(path)
        .unwrap()
        .build()
        .await
        .unwrap()
        .introspect()
        .await
        .unwrap()
}

fn compare(name: &str, live_xml: &str) {
    let want = members(&checked_in(name), name);
    let got = members(live_xml, name);
    let missing: Vec<_> = got.difference(&want).collect();
    let stale: Vec<_> = want.difference(&got).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "dbus/interfaces/{name}.xml drifted from the live object.\n\
         served but not in the XML: {missing:#?}\n\
         in the XML but not served: {stale:#?}\n\
         live introspection:\n{live_xml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_in_xml_matches_the_live_objects() {
    let h = Harness::start().await;
    let conn = h.bus.connect().await;
    let m = ManagerProxy::new(&conn).await.unwrap();
    let files = ["firmware", "kernel", "initrd"].map(|k| {
        let p = h.bus.dir.path().join(k);
        std::fs::write(&p, k).unwrap();
        let f = std::fs::File::open(p).unwrap();
        (k, OwnedFd::from(std::os::fd::OwnedFd::from(f)))
    });
    let s = |v: &str| OwnedValue::try_from(Value::from(v)).unwrap();
    let opts = [
        ("name".to_string(), s("x")),
        ("cmdline".to_string(), s("")),
        ("vcpus".to_string(), OwnedValue::from(1u32)),
        ("vcpu_type".to_string(), s("EPYC-v4")),
    ]
    .into();
    let record = m.register(files.into(), &opts, b"v").await.unwrap();

    compare(MANAGER_INTERFACE, &live(&h.bus, MANAGER_PATH).await);
    compare(CERTIFICATES_INTERFACE, &live(&h.bus, MANAGER_PATH).await);
    compare(RECORD_INTERFACE, &live(&h.bus, record.as_str()).await);

    // The ObjectManager sits on the manager object, nothing sits at `/`
    // but the path down to it.
    let root = live(&h.bus, "/").await;
    let node = Node::from_reader(root.as_bytes()).unwrap();
    assert!(node
        .interfaces()
        .iter()
        .all(|i| i.name().as_str().starts_with("org.freedesktop.DBus.")));
    let mgr = live(&h.bus, MANAGER_PATH).await;
    assert!(mgr.contains("org.freedesktop.DBus.ObjectManager"));
}
