//! Offline unlock against a real snpguardd: the record decides (off by
//! default, `records set-offline-unlock`), the agent enrols a keyslot for
//! the launch's chip-derived key only when a signed release says so,
//! opens the root with it only when no server answers, never for another
//! launch, and removes it when a release says the record turned it off.
//!
//! The volume is a file, so every run ends at the dm step after the key
//! checked against the header (`unlock`'s tests map real devices); where
//! device-mapper is usable, the offline run also maps a loop device.

use std::path::Path;
use std::process::Command;

use crate::common::{
    agent, dm_usable, failed_line, loop_device, registered_guest, run, start_daemon,
};

/// Whether the volume's header has the agent's offline token
/// (`cryptsetup luksDump` names token types).
fn enrolled(img: &Path) -> bool {
    let out = run(Command::new("cryptsetup").arg("luksDump").arg(img));
    String::from_utf8_lossy(&out.stdout).contains("snpguard-offline")
}

fn has(lines: &[String], s: &str) -> bool {
    lines.iter().any(|l| l.contains(s))
}

/// The run got the key (released or offline), checked it and stopped only
/// at the dm step (the volume is a file).
fn reached_the_mapping(lines: &[String], how: &str) {
    assert!(
        has(lines, &format!("{how} opens the root volume")),
        "{lines:#?}"
    );
    assert!(
        failed_line(lines).contains("not a block device"),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_unlock_follows_the_record_and_needs_no_server() {
    let Some(mut g) = registered_guest().await else {
        eprintln!("no AMD test data (SNPGUARD_SKIP_TESTDATA=1); skipped");
        return;
    };
    let blob = g.launch_blob("launch.json", &[]);
    let img = g.volume();
    let name = format!("sgoff{}", std::process::id());

    // Off by default: the release says remove, nothing is enrolled.
    let show = g.ctl(&["records", "show", "guest", "--json"]);
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["offline_unlock"], false, "{rec}");
    let (_, lines) = agent(&g.config(&img, &blob, &name));
    reached_the_mapping(&lines, "the released key");
    assert!(!has(&lines, "enrolled keyslot"), "{lines:#?}");
    assert!(!enrolled(&img));

    // Turned on: the next online unlock enrols this launch's key, and
    // the host's cryptsetup sees the keyslot.
    g.ctl(&["records", "set-offline-unlock", "guest", "on"]);
    let (_, lines) = agent(&g.config(&img, &blob, &name));
    reached_the_mapping(&lines, "the released key");
    assert!(
        has(&lines, "offline unlock: enrolled keyslot"),
        "{lines:#?}"
    );
    assert!(enrolled(&img));

    // With a server answering, the release still wins (the keyslot only
    // shortens the retries).
    let (_, lines) = agent(&g.config(&img, &blob, &name));
    assert!(has(&lines, "this launch's keyslot opens"), "{lines:#?}");
    reached_the_mapping(&lines, "the released key");
    assert!(
        has(&lines, "this launch's keyslot is enrolled"),
        "{lines:#?}"
    );

    // No server: the keyslot opens the root.
    g.daemon.stop();
    let config = g.config(&img, &blob, &name);
    let (_, lines) = agent(&config);
    assert!(has(&lines, "no server answered"), "{lines:#?}");
    reached_the_mapping(&lines, "the offline keyslot's key");

    // Another launch (another command line) derives another key: no
    // offline unlock, and without a server no key at all.
    let other_cmdline = g.dir.path().join("other-cmdline");
    std::fs::write(&other_cmdline, "console=ttyS0 root=/dev/mapper/root quiet").unwrap();
    let other = g.launch_blob(
        "other.json",
        &["--cmdline-file", other_cmdline.to_str().unwrap()],
    );
    let (code, lines) = agent(&g.config(&img, &other, &name));
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(has(&lines, "does not open for this launch"), "{lines:#?}");
    assert!(
        failed_line(&lines).contains("attestation failed"),
        "{lines:#?}"
    );
    assert!(!has(&lines, "opens the root volume"), "{lines:#?}");

    // On a real device the offline unlock maps the volume.
    if dm_usable() {
        let dev = loop_device(&img).expect("a loop device");
        let (code, lines) = agent(&g.config(Path::new(&dev.0), &blob, &name));
        let _ = Command::new("cryptsetup").args(["close", &name]).status();
        assert_eq!(code, Some(0), "{lines:#?}");
        assert!(has(&lines, "no server answered"), "{lines:#?}");
    } else {
        eprintln!("device-mapper unusable here: the offline mapping itself is not exercised");
    }

    // The server is back and the record turned it off: the next online
    // unlock removes the keyslot.
    g.daemon = start_daemon(&g.bus, g.dir.path(), &g.platform.join("ark.pem"));
    g.ctl(&["records", "set-offline-unlock", "guest", "off"]);
    let (_, lines) = agent(&g.config(&img, &blob, &name));
    reached_the_mapping(&lines, "the released key");
    assert!(has(&lines, "removed keyslot(s)"), "{lines:#?}");
    assert!(!enrolled(&img));
}
