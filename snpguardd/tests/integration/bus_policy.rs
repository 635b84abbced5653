//! The system bus policy (dbus/org.snpguard.SnpGuard1.conf) must let every
//! client send each method of the checked-in interfaces, because the daemon
//! asks polkit about every mutating one and the read-only ones are public,
//! except the methods listed in [`ROOT_ONLY`], which the policy keeps to
//! root and the daemon's user. A method added to an interface without a
//! policy line would be refused by the bus for every unprivileged
//! administrator whatever polkit says; this test names it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use zbus_xml::Node;

/// Methods only root and the daemon's user may call: the audit trail holds
/// client addresses and precise refusal reasons.
const ROOT_ONLY: &[&str] = &[
    "org.snpguard.SnpGuard1.Manager.AuditTrail",
    "org.snpguard.SnpGuard1.Manager.UnverifiedRefusals",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `interface.Method` for every method of every checked-in interface.
fn interface_methods() -> BTreeSet<String> {
    let dir = repo().join("dbus/interfaces");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(&dir).expect("dbus/interfaces") {
        let path = e.expect("dir entry").path();
        if path.extension().and_then(|x| x.to_str()) != Some("xml") {
            continue;
        }
        let xml = std::fs::read_to_string(&path).expect("interface XML");
        let node =
            Node::from_reader(xml.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for iface in node.interfaces() {
            for m in iface.methods() {
                out.insert(format!("{}.{}", iface.name(), m.name()));
            }
        }
    }
    assert!(!out.is_empty(), "no methods found under {}", dir.display());
    out
}

/// The value of attribute `name` in the element text `el`.
fn attr<'a>(el: &'a str, name: &str) -> Option<&'a str> {
    let start = el.find(&format!("{name}=\""))? + name.len() + 2;
    let len = el[start..].find('"')?;
    Some(&el[start..start + len])
}

/// `interface.Method` for every `<allow send_interface=… send_member=…>` of
/// the policy's default context naming our interfaces.
fn default_context_allows() -> BTreeSet<String> {
    let conf = std::fs::read_to_string(repo().join("dbus/org.snpguard.SnpGuard1.conf"))
        .expect("dbus/org.snpguard.SnpGuard1.conf");
    let start = conf
        .find("<policy context=\"default\">")
        .expect("a default-context policy");
    let end = start + conf[start..].find("</policy>").expect("its end");
    let mut out = BTreeSet::new();
    for el in conf[start..end].split("<allow").skip(1) {
        let el = &el[..el.find("/>").expect("an empty <allow/> element")];
        let (Some(iface), Some(member)) = (attr(el, "send_interface"), attr(el, "send_member"))
        else {
            continue;
        };
        if iface.starts_with("org.snpguard.") {
            assert!(
                out.insert(format!("{iface}.{member}")),
                "{iface}.{member} is allowed twice"
            );
        }
    }
    out
}

#[test]
fn every_method_is_either_public_or_root_only() {
    let methods = interface_methods();
    let allowed = default_context_allows();
    let root_only: BTreeSet<String> = ROOT_ONLY.iter().map(|s| s.to_string()).collect();
    for m in &root_only {
        assert!(
            methods.contains(m),
            "ROOT_ONLY names {m}, which no interface has"
        );
        assert!(
            !allowed.contains(m),
            "{m} is root-only but the policy allows it"
        );
    }
    let missing: Vec<&String> = methods
        .iter()
        .filter(|m| !allowed.contains(*m) && !root_only.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "the bus policy's default context does not allow {missing:?}: unprivileged \
         administrators could never reach polkit for them"
    );
    let unknown: Vec<&String> = allowed.iter().filter(|a| !methods.contains(*a)).collect();
    assert!(
        unknown.is_empty(),
        "the bus policy allows methods no interface has: {unknown:?}"
    );
}
