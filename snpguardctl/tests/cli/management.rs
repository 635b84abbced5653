//! snpguardctl register/records against the real D-Bus API, served in
//! this process over the in-memory service double on a private bus with
//! the project's policy and a mock polkit (snpguard_testkit::bus).

use snpguard_testkit::bus;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;

use bus::{bundle_bytes, Harness};

async fn ctl(h: &Harness, args: &[&str]) -> Output {
    ctl_with(h, args, |_| {}).await
}

async fn ctl_with(
    h: &Harness,
    args: &[&str],
    tweak: impl FnOnce(&mut tokio::process::Command),
) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_snpguardctl"));
    cmd.args(args)
        .arg("--bus-address")
        .arg(&h.bus.address)
        .stdin(std::process::Stdio::null());
    tweak(&mut cmd);
    cmd.output().await.expect("running snpguardctl")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn failed(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn staging(dir: &Path) -> std::path::PathBuf {
    let s = dir.join("staging");
    std::fs::create_dir_all(&s).unwrap();
    for (f, data) in [
        ("firmware.fd", &b"FIRMWARE"[..]),
        ("kernel", b"KERNEL"),
        ("initrd", b"INITRD"),
        ("cmdline", b"console=ttyS0 root=/dev/vda1\n"),
        ("vmk.sealed", b"SEALED"),
    ] {
        std::fs::write(s.join(f), data).unwrap();
    }
    s
}

fn register_args<'a>(staging: &'a str, out: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "register",
        "--name",
        name,
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-v4",
        "--allow-smt",
        "--min-tcb-bootloader",
        "3",
        "--min-tcb-tee",
        "0",
        "--min-tcb-snp",
        "22",
        "--min-tcb-microcode",
        "213",
        "--staging-dir",
        staging,
        "--out-bundle",
        out,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_manage_records() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("web.tar.gz");
    let text = ok(&ctl(
        &h,
        &register_args(st.to_str().unwrap(), out.to_str().unwrap(), "web"),
    )
    .await);
    assert!(text.contains("registered web"), "{text}");
    let recs = h.service.records();
    let rec = recs.values().next().unwrap();
    assert_eq!(rec.firmware, b"FIRMWARE");
    assert_eq!(rec.initrd, b"INITRD");
    assert_eq!(rec.sealed_vmk, b"SEALED");
    assert_eq!(rec.info.cmdline, "console=ttyS0 root=/dev/vda1");
    assert_eq!(rec.info.min_tcb.unwrap().snp, 22);
    assert_eq!(std::fs::read(&out).unwrap(), bundle_bytes(rec));
    let id = rec.info.id.clone();

    let text = ok(&ctl(&h, &["records", "list"]).await);
    assert!(
        text.starts_with("NAME") && text.contains("web") && text.contains(&id),
        "{text}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "list", "--json"]).await)).unwrap();
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["min_tcb"]["microcode"], 213);
    assert_eq!(list[0]["last_attestation"], serde_json::Value::Null);

    let show: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "show", &id, "--json"]).await)).unwrap();
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["vcpus"], 2);
    let text = ok(&ctl(&h, &["records", "show", "web"]).await);
    assert!(
        text.contains("Min TCB:      bootloader=3,tee=0,snp=22,microcode=213"),
        "{text}"
    );

    let v: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "disable", "web", "--json"]).await))
            .unwrap();
    assert_eq!(v["enabled"], false);
    assert!(!h.service.records()[&id].info.enabled);
    let text = ok(&ctl(&h, &["records", "enable", "web"]).await);
    assert!(text.starts_with("enabled web"), "{text}");
    assert!(h.service.records()[&id].info.enabled);

    let again = dir.join("again.tar.gz");
    ok(&ctl(
        &h,
        &["records", "export", "web", "--out", again.to_str().unwrap()],
    )
    .await);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&out).unwrap());

    let v: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "delete", "web", "--json"]).await)).unwrap();
    assert_eq!(v["deleted"], true);
    assert!(h.service.records().is_empty());
    assert!(ok(&ctl(&h, &["records", "list"]).await).contains("no records"));
    let err = failed(&ctl(&h, &["records", "show", "web"]).await);
    assert!(err.contains("no record named \"web\" (NotFound)"), "{err}");

    // polkit saw the CLI processes, one unique name per call.
    let calls = h.polkit.calls();
    assert!(calls.iter().all(|c| c.subject_kind == "system-bus-name"));
    assert!(calls
        .iter()
        .all(|c| c.subject_name != h.daemon.unique_name().unwrap().as_str()));
    assert!(
        calls.iter().all(|c| c.flags == 0),
        "stdin is not a terminal"
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_unlock_is_registered_shown_and_switched() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("laptop.tar.gz");
    let mut args = register_args(st.to_str().unwrap(), out.to_str().unwrap(), "laptop");
    args.push("--allow-offline-unlock");
    let o = ctl(&h, &args).await;
    ok(&o);
    // The operator is told what it means, on stderr.
    let note = stderr(&o);
    assert!(
        note.contains("NOTE: a guest of laptop enrols a chip-derived key")
            && note.contains("comes online again"),
        "{note}"
    );
    let id = h.service.records().into_keys().next().unwrap();
    assert!(h.service.records()[&id].info.offline_unlock);
    let text = ok(&ctl(&h, &["records", "show", "laptop"]).await);
    assert!(text.contains("Offline:      unlock allowed"), "{text}");
    let list: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "list", "--json"]).await)).unwrap();
    assert_eq!(list[0]["offline_unlock"], true);

    // Off: JSON on stdout, the limit on stderr.
    let o = ctl(
        &h,
        &["records", "set-offline-unlock", "laptop", "off", "--json"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["offline_unlock"], false);
    assert_eq!(v["id"], id.as_str());
    assert!(
        stderr(&o).contains("never comes online again keeps unlocking offline"),
        "{}",
        stderr(&o)
    );
    assert!(!h.service.records()[&id].info.offline_unlock);
    let text = ok(&ctl(&h, &["records", "show", &id]).await);
    assert!(text.contains("Offline:      unlock not allowed"), "{text}");

    // On again, by id, in text.
    let text = ok(&ctl(&h, &["records", "set-offline-unlock", &id, "on"]).await);
    assert_eq!(text, format!("offline unlock of laptop ({id}) is on\n"));
    assert!(h.service.records()[&id].info.offline_unlock);

    // A word other than on or off: a usage error naming them, nothing
    // asked of the daemon.
    let before = h.polkit.calls().len();
    let err = failed(&ctl(&h, &["records", "set-offline-unlock", "laptop", "maybe"]).await);
    assert!(
        err.contains("invalid value 'maybe'") && err.contains("[possible values: on, off]"),
        "{err}"
    );
    assert_eq!(h.polkit.calls().len(), before);

    // polkit says no: the action is named, nothing changes.
    h.polkit.set_allow(false);
    let err = failed(&ctl(&h, &["records", "set-offline-unlock", "laptop", "off"]).await);
    assert!(
        err.contains("not authorized for org.snpguard.SnpGuard1.manage (AccessDenied)"),
        "{err}"
    );
    assert!(h.service.records()[&id].info.offline_unlock);
    h.polkit.set_allow(true);

    // An unknown record is named.
    let err = failed(&ctl(&h, &["records", "set-offline-unlock", "nosuch", "on"]).await);
    assert!(
        err.contains("no record named \"nosuch\" (NotFound)"),
        "{err}"
    );

    // Registered without the option: off, and no note.
    let other = dir.join("web.tar.gz");
    let o = ctl(
        &h,
        &register_args(st.to_str().unwrap(), other.to_str().unwrap(), "web"),
    )
    .await;
    ok(&o);
    assert!(!stderr(&o).contains("chip-derived"), "{}", stderr(&o));
    let show: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&h, &["records", "show", "web", "--json"]).await)).unwrap();
    assert_eq!(show["offline_unlock"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_and_bad_inputs_fail_cleanly() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("b.tar.gz");
    let (s, o) = (st.to_str().unwrap(), out.to_str().unwrap());

    h.polkit.set_allow(false);
    let err = failed(&ctl(&h, &register_args(s, o, "web")).await);
    assert!(
        err.contains("not authorized for org.snpguard.SnpGuard1.register (AccessDenied)"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(h.service.records().is_empty());
    h.polkit.set_allow(true);

    let err = failed(&ctl(&h, &register_args(s, o, "bad name")).await);
    assert!(
        err.contains("not a record name") && err.contains("(InvalidInput)"),
        "{err}"
    );
    let mut args = register_args(s, o, "web");
    args[6] = "Pentium";
    let err = failed(&ctl(&h, &args).await);
    assert!(err.contains("unknown vCPU type"), "{err}");
    std::fs::remove_file(st.join("initrd")).unwrap();
    let err = failed(&ctl(&h, &register_args(s, o, "web")).await);
    assert!(
        err.contains("staging/initrd") && err.contains("vmk.sealed"),
        "{err}"
    );
    std::fs::write(st.join("initrd"), b"I").unwrap();
    std::fs::write(st.join("vmk.sealed"), vec![1u8; 5000]).unwrap();
    let err = failed(&ctl(&h, &register_args(s, o, "web")).await);
    assert!(err.contains("larger than 4096"), "{err}");
    assert!(h.service.records().is_empty());
    assert!(!out.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_host_goes_through_ssh_and_stdio_bridge() {
    if std::process::Command::new("systemd-stdio-bridge")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-stdio-bridge is needed (apt-get install systemd)");
    }
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    // A stand-in ssh that records its arguments and runs the command it
    // was given against the test bus, as sshd would on the remote host.
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("ssh");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" > {}/ssh-args\nexec systemd-stdio-bridge --bus-path={}\n",
            dir.display(),
            h.bus.address
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let st = staging(dir);
    let out = dir.join("web.tar.gz");
    ok(&ctl(
        &h,
        &register_args(st.to_str().unwrap(), out.to_str().unwrap(), "web"),
    )
    .await);

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &'static [&'static str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_snpguardctl"));
        cmd.args(args)
            .args(["-H", "admin@vmhost"])
            .env("PATH", &path)
            .stdin(std::process::Stdio::null());
        cmd
    };
    let o = run(&["records", "list", "--json"]).output().await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(list[0]["name"], "web");
    assert_eq!(
        std::fs::read_to_string(dir.join("ssh-args"))
            .unwrap()
            .trim(),
        "-xT -- admin@vmhost systemd-stdio-bridge"
    );
    let o = run(&["records", "disable", "web"]).output().await.unwrap();
    ok(&o);
    assert!(!h.service.records().values().next().unwrap().info.enabled);
    // Descriptors cannot cross ssh: export says so instead of hanging.
    let o = run(&[
        "records",
        "export",
        "web",
        "--out",
        "/tmp/never-written.tar.gz",
    ])
    .output()
    .await
    .unwrap();
    assert!(failed(&o).contains("cannot cross ssh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_policy_lets_others_read_and_polkit_decide() {
    if rustix::process::getuid().as_raw() != 0 {
        eprintln!("skipped: needs root to run the CLI as another user");
        return;
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_snpguardctl"));
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("web.tar.gz");
    ok(&ctl(
        &h,
        &register_args(st.to_str().unwrap(), out.to_str().unwrap(), "web"),
    )
    .await);
    let nobody = |cmd: &mut tokio::process::Command| {
        cmd.uid(65534).gid(65534).current_dir("/");
    };
    let probe = std::process::Command::new(exe)
        .arg("--version")
        .uid(65534)
        .gid(65534)
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: {} is not executable by nobody", exe.display());
        return;
    }
    // Reading is open to everyone by the policy file.
    let text = ok(&ctl_with(&h, &["records", "show", "web"], nobody).await);
    assert!(text.contains("Name:         web"), "{text}");
    // Mutating calls pass the bus policy and polkit decides.
    let before = h.polkit.calls().len();
    h.polkit.set_allow(false);
    let err = failed(&ctl_with(&h, &["records", "disable", "web"], nobody).await);
    assert!(err.contains("(AccessDenied)"), "{err}");
    assert_eq!(h.polkit.calls().len(), before + 1);
    h.polkit.set_allow(true);
    ok(&ctl_with(&h, &["records", "disable", "web"], nobody).await);
    assert!(!h.service.records().values().next().unwrap().info.enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_import_expands_directories_and_reports_refusals() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path().join("chain");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("b.pem"), b"second").unwrap();
    std::fs::write(dir.join("a.der"), b"first").unwrap();
    std::fs::write(dir.join("sub/ignored.pem"), b"not recursive").unwrap();
    let single = h.bus.dir.path().join("vcek.pem");
    std::fs::write(&single, b"third").unwrap();

    let out = ok(&ctl(
        &h,
        &[
            "certs",
            "import",
            dir.to_str().unwrap(),
            single.to_str().unwrap(),
            "--json",
        ],
    )
    .await);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap())
        .collect();
    let name = |p: &Path| p.to_str().unwrap().to_owned();
    let mut want = vec![
        name(&dir.join("a.der")),
        name(&dir.join("b.pem")),
        name(&single),
    ];
    want.sort();
    assert_eq!(files, want, "directories expand to their files");
    assert_eq!(h.certs.held().len(), 3);

    // Refusals: exit 2 with the daemon's message naming the file.
    let bad = h.bus.dir.path().join("bad.pem");
    std::fs::write(&bad, b"UNTRUSTED").unwrap();
    let e = failed(&ctl(&h, &["certs", "import", bad.to_str().unwrap()]).await);
    assert!(e.contains("bad.pem") && e.contains("Untrusted"), "{e}");
    let e = failed(&ctl(&h, &["certs", "import", "/nonexistent/x.pem"]).await);
    assert!(e.contains("/nonexistent/x.pem"), "{e}");

    // The path variant reads inside the daemon's import directory.
    let inside = h.import_dir.join("ask.der");
    std::fs::write(&inside, b"ask").unwrap();
    let out = ok(&ctl(
        &h,
        &[
            "certs",
            "import",
            "--in-import-dir",
            inside.to_str().unwrap(),
        ],
    )
    .await);
    assert!(out.contains("ASK") && out.contains("ask.der"), "{out}");
    let listed = ok(&ctl(&h, &["certs", "list"]).await);
    let (certs, crls) = listed.split_once("\n\n").expect("two sections");
    assert_eq!(
        certs.lines().count(),
        1 + 4,
        "header and 4 certificates: {listed}"
    );
    assert!(crls.starts_with("no CRL held"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_cmdline_with_control_characters_is_refused_before_the_daemon() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("web.tar.gz");
    let (s, o) = (st.to_str().unwrap(), out.to_str().unwrap());
    std::fs::write(
        st.join("cmdline"),
        b"console=ttyS0 quiet\r\x1b[2Kinit=/bin/sh\n",
    )
    .unwrap();
    let err = failed(&ctl(&h, &register_args(s, o, "web")).await);
    assert!(
        err.contains("control character \\r at byte offset 19"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err}");
    assert!(h.service.records().is_empty());
    assert!(h.polkit.calls().is_empty(), "the daemon was not asked");

    // add-launch reads the same file the same way.
    std::fs::write(st.join("cmdline"), b"console=ttyS0\n").unwrap();
    ok(&ctl(&h, &register_args(s, o, "web")).await);
    std::fs::write(st.join("cmdline"), b"console=ttyS0\tquiet\n").unwrap();
    let err = failed(&ctl(&h, &["records", "add-launch", "web", "--staging", s]).await);
    assert!(
        err.contains("control character \\t at byte offset 13"),
        "{err}"
    );
    let rec = h.service.records().into_values().next().unwrap();
    assert_eq!(rec.info.launches.len(), 1, "nothing added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_reviews_and_needs_a_named_launch_off_a_terminal() {
    let h = Harness::start().await;
    let dir = h.bus.dir.path();
    let st = staging(dir);
    let out = dir.join("web.tar.gz");
    let (s, o) = (st.to_str().unwrap(), out.to_str().unwrap());
    ok(&ctl(&h, &register_args(s, o, "web")).await);
    std::fs::write(st.join("cmdline"), b"console=ttyS0 init=/bin/sh\n").unwrap();
    ok(&ctl(&h, &["records", "add-launch", "web", "--staging", s]).await);

    // No terminal (stdin is /dev/null), no --launch: refused, unchanged.
    let err = failed(&ctl(&h, &["records", "approve", "web"]).await);
    assert!(err.contains("pass --launch N"), "{err}");
    // --yes alone is a usage error.
    let o = ctl(&h, &["records", "approve", "web", "--yes"]).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let rec = h.service.records().into_values().next().unwrap();
    assert_eq!(rec.info.launches[1].state.as_str(), "pending");

    let text = ok(&ctl(&h, &["records", "approve", "web", "--launch", "2"]).await);
    let review_end = text.find("approved launch 2").expect("approved");
    let review = &text[..review_end];
    assert!(review.contains("Approving launch 2 of web"), "{text}");
    assert!(review.contains("Origin:       operator"), "{text}");
    assert!(
        review.contains(&format!(
            "Replaces:     {} (launch 1)",
            rec.info.measurement
        )),
        "{text}"
    );
    assert!(
        review.contains(&format!(
            "Measurement:  {}",
            rec.info.launches[1].measurement
        )),
        "{text}"
    );
    assert!(review.contains("Kernel:       sha256 "), "{text}");
    assert!(
        review
            .contains("Cmdline diff against launch 1:\n    - root=/dev/vda1\n    + init=/bin/sh\n"),
        "{text}"
    );
    let rec = h.service.records().into_values().next().unwrap();
    assert_eq!(rec.info.launches[1].state.as_str(), "approved");
}
