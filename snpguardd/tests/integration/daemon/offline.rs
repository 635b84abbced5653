//! Offline unlock end to end: a record registered with
//! `--allow-offline-unlock`, its signed releases telling the agent to
//! enrol, `records set-offline-unlock` turning it off (PropertiesChanged,
//! a journal line naming who did it, polkit's `manage`), and the next
//! release telling the agent to remove its keyslot.

use futures_util::StreamExt;
use snpguard_protocol::attest::{release_message, verify_signature, OfflineUnlock};
use snpguard_protocol::dbus::{ManagerProxy, RecordProxy};

use super::*;

/// A signed release for `launch` over `conn`, asking for the directive
/// when `offline`: the response, after its signature was checked over
/// the message with the directive it carries (as the agent checks it)
/// and found not to hold without it, and the key it released.
pub(super) async fn signed_release(
    conn: &Conn,
    sim: &SimPlatform,
    launch: &Launch,
    offline: bool,
) -> (AttestResponse, Vec<u8>) {
    let (ch, nonce) = challenge(conn).await;
    let (secret, public) = seal::generate_keypair();
    let report = sim_report(sim, launch, &report_data(&nonce, &public));
    let mut req = attest_request(sim, ch.nonce, &report, &public);
    req.offline = offline;
    let (resp, report, secret) = send_attest(conn, &req, report, secret)
        .await
        .unwrap_or_else(|(status, e)| panic!("refused: {status} {}", e.error));
    let sealed = unb64(&resp.sealed_key, 4096).expect("sealed key");
    let message = |d| release_message(&nonce, &report, &resp.record, &sealed, d);
    verify_signature(
        &report,
        &message(resp.offline_unlock),
        resp.signature.as_ref(),
    )
    .expect("signed over the directive it carries");
    if resp.offline_unlock.is_some() {
        assert!(
            verify_signature(&report, &message(None), resp.signature.as_ref()).is_err(),
            "the directive is covered"
        );
    }
    let key = released(&resp, &report, &secret);
    (resp, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_unlock_is_decided_by_the_record_and_switched_by_an_operator() {
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) =
        registered_guest_with(&s, &sim, 17, "laptop", "", &["--allow-offline-unlock"])
    else {
        return;
    };
    let shown = || -> serde_json::Value {
        serde_json::from_str(&ok(&ctl(&s.bus, &["records", "show", "laptop", "--json"])))
            .expect("json")
    };
    assert_eq!(shown()["offline_unlock"], true);
    let conn = target.connect().await.expect("connect");

    // Asked for: enrol, signed. Not asked for: no directive, the release
    // an older agent understands.
    let (resp, key) = signed_release(&conn, &sim, &launch, true).await;
    assert_eq!(resp.offline_unlock, Some(OfflineUnlock::Enrol));
    assert_eq!(key, vmk);
    let (resp, key) = signed_release(&conn, &sim, &launch, false).await;
    assert_eq!(resp.offline_unlock, None);
    assert_eq!(key, vmk);

    // Watch the property as Cockpit would.
    let bus = zbus::connection::Builder::address(s.bus.address.as_str())
        .expect("address")
        .build()
        .await
        .expect("connect to the bus");
    let path = ManagerProxy::new(&bus)
        .await
        .expect("manager")
        .find_record("laptop")
        .await
        .expect("find");
    let record = RecordProxy::builder(&bus)
        .path(path)
        .expect("path")
        .build()
        .await
        .expect("record proxy");
    let mut changes = record.receive_offline_unlock_changed().await;
    let first = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .expect("current value")
        .expect("stream");
    assert!(first.get().await.expect("value"));

    // polkit says no: the action is named, nothing changes.
    s.polkit.set_allow(false);
    let e = err(&ctl(
        &s.bus,
        &["records", "set-offline-unlock", "laptop", "off"],
    ));
    assert!(
        e.contains("not authorized for org.snpguard.SnpGuard1.manage"),
        "{e}"
    );
    assert_eq!(
        s.polkit.calls().pop().expect("asked").action,
        "org.snpguard.SnpGuard1.manage"
    );
    s.polkit.set_allow(true);
    assert_eq!(shown()["offline_unlock"], true);

    // Turned off: announced, journaled with who did it, and the next
    // release tells the agent to remove its keyslot.
    let out = ok(&ctl(
        &s.bus,
        &["records", "set-offline-unlock", "laptop", "off"],
    ));
    assert!(out.starts_with("offline unlock of laptop ("), "{out}");
    let ch = tokio::time::timeout(DEADLINE, changes.next())
        .await
        .expect("PropertiesChanged in time")
        .expect("stream");
    assert!(!ch.get().await.expect("value"));
    assert_eq!(shown()["offline_unlock"], false);
    let log = super::refusals::log_since(&s.state, 0);
    let uid = rustix::process::getuid().as_raw();
    let line = log
        .lines()
        .find(|l| l.contains("offline unlock of record laptop turned off"))
        .unwrap_or_else(|| panic!("no journal line for the change:\n{log}"));
    assert!(
        line.contains(&format!("by uid {uid} (:"))
            && line.contains(&format!("CALLER_UID={uid}"))
            && line.contains("OFFLINE_UNLOCK=off")
            && line.contains("OLD_OFFLINE_UNLOCK=on"),
        "{line}"
    );
    let (resp, key) = signed_release(&conn, &sim, &launch, true).await;
    assert_eq!(resp.offline_unlock, Some(OfflineUnlock::Remove));
    assert_eq!(key, vmk, "turning it off withholds nothing online");

    // The directive of each release is in its "key released" line.
    let log = super::refusals::log_since(&s.state, 0);
    let released_lines: Vec<&str> = log.lines().filter(|l| l.contains("key released")).collect();
    for want in [
        "OFFLINE_UNLOCK=enrol",
        "OFFLINE_UNLOCK=-",
        "OFFLINE_UNLOCK=remove",
    ] {
        assert!(
            released_lines.iter().any(|l| l.contains(want)),
            "{want} in {released_lines:#?}"
        );
    }

    // On again: the next release enrols again.
    ok(&ctl(
        &s.bus,
        &["records", "set-offline-unlock", "laptop", "on"],
    ));
    let (resp, _) = signed_release(&conn, &sim, &launch, true).await;
    assert_eq!(resp.offline_unlock, Some(OfflineUnlock::Enrol));
    daemon.stop();
}
