//! The fleet store (PostgreSQL): one conformance suite run against both
//! store backends, and replicas of the real daemon sharing one database —
//! a record registered on one is served by the other, a nonce issued by
//! one is consumed once anywhere, replays raced to two replicas release
//! at most once, and a database outage fails closed with 503 and heals
//! without restarting the daemons.

use futures_util::StreamExt;
use snpguard_protocol::dbus::CertificatesProxy;
use snpguardd::store::{
    Op, PgOptions, PgStore, SledStore, Store, StoreError, Tree, SCHEMA_VERSION, SCHEMA_VERSION_KEY,
};

use super::*;

use snpguard_testkit::postgres::Postgres;

fn pg_store(pg: &Postgres) -> PgStore {
    PgStore::open(&PgOptions {
        url: pg.url(),
        password: None,
        ca_file: None,
    })
    .expect("open the PostgreSQL store")
}

/// The contract of [`Store`], checked on one backend. `other` is a second
/// handle on the same database (another replica), or `None` for sled,
/// which one process owns.
fn conformance(store: &dyn Store, other: Option<&dyn Store>) {
    // A fresh store is at the current schema version.
    assert_eq!(
        store.get(Tree::Meta, SCHEMA_VERSION_KEY).expect("get"),
        Some(SCHEMA_VERSION.to_be_bytes().to_vec())
    );

    // Keys sort bytewise, as unsigned bytes, shorter prefix first.
    let keys: [&[u8]; 5] = [b"\x00", b"\x01", b"\x7f\xff", b"\x80", b"\xff"];
    for k in keys.iter().rev() {
        store.put(Tree::Certs, k, &[k.len() as u8]).expect("put");
    }
    store
        .put(Tree::Records, b"\x05", b"other tree")
        .expect("put");
    let listed: Vec<Vec<u8>> = store
        .entries(Tree::Certs)
        .expect("entries")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
    assert_eq!(
        store.keys_below(Tree::Certs, b"\x80", 10).expect("below"),
        vec![b"\x00".to_vec(), b"\x01".to_vec(), b"\x7f\xff".to_vec()]
    );
    assert_eq!(
        store
            .keys_below(Tree::Certs, b"\x80", 2)
            .expect("below")
            .len(),
        2
    );
    assert_eq!(
        store.last(Tree::Certs).expect("last"),
        Some((b"\xff".to_vec(), vec![1]))
    );
    assert_eq!(store.last(Tree::Nonces).expect("last"), None);
    store.delete(Tree::Certs, b"\x80").expect("delete");
    store.delete(Tree::Certs, b"absent").expect("delete absent");
    assert_eq!(store.get(Tree::Certs, b"\x80").expect("get"), None);
    assert_eq!(
        store.get(Tree::Records, b"\x05").expect("get"),
        Some(b"other tree".to_vec())
    );
    // Empty values and large ones come back as they went in.
    store.put(Tree::Keys, b"empty", b"").expect("put");
    assert_eq!(store.get(Tree::Keys, b"empty").expect("get"), Some(vec![]));
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    store.put(Tree::Keys, b"big", &big).expect("put big");
    assert_eq!(
        store.get(Tree::Keys, b"big").expect("get").as_ref(),
        Some(&big)
    );

    // A transaction is all or nothing; a failed precondition applies
    // nothing and says which entry conflicted.
    let err = store
        .transaction(&[
            Op::put(Tree::Names, b"a", b"1"),
            Op::expect(Tree::Names, b"b", Some(b"2".to_vec())),
            Op::put(Tree::Names, b"c", b"3"),
        ])
        .expect_err("precondition");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.get(Tree::Names, b"a").expect("get"), None);
    store
        .transaction(&[
            Op::expect(Tree::Names, b"a", None),
            Op::put(Tree::Names, b"a", b"1"),
            Op::put(Tree::Secrets, b"s", b"x"),
        ])
        .expect("expect absent");
    store
        .transaction(&[
            Op::expect(Tree::Names, b"a", Some(b"1".to_vec())),
            Op::delete(Tree::Names, b"a"),
            Op::delete(Tree::Secrets, b"s"),
        ])
        .expect("expect present");
    assert_eq!(store.get(Tree::Secrets, b"s").expect("get"), None);

    // Deferred writes are visible at once and durable after a flush.
    store
        .transaction_deferred(&[Op::put(Tree::Audit, 7u64.to_be_bytes(), b"entry")])
        .expect("deferred");
    store.flush().expect("flush");
    let seen = other.unwrap_or(store);
    assert_eq!(
        seen.get(Tree::Audit, &7u64.to_be_bytes()).expect("get"),
        Some(b"entry".to_vec())
    );

    // insert_new: the first writer wins, from any handle.
    assert!(store.insert_new(Tree::Nonces, b"n1", b"t").expect("insert"));
    assert!(!seen.insert_new(Tree::Nonces, b"n1", b"u").expect("insert"));
    assert_eq!(
        store.get(Tree::Nonces, b"n1").expect("get"),
        Some(b"t".to_vec())
    );

    // Racing writers: 16 threads over both handles consume one nonce
    // each round; exactly one wins. And a counter incremented by
    // read-expect-write from all of them loses no increment.
    let handles: Vec<&dyn Store> = [Some(store), other].into_iter().flatten().collect();
    for round in 0..20u32 {
        let key = format!("race-{round}");
        let wins: usize = std::thread::scope(|s| {
            (0..16)
                .map(|i| {
                    let h = handles[i % handles.len()];
                    let key = key.as_bytes();
                    s.spawn(move || h.insert_new(Tree::Nonces, key, b"x").expect("insert"))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| usize::from(t.join().expect("thread")))
                .sum()
        });
        assert_eq!(wins, 1, "round {round}: one consumer of a nonce");
    }
    std::thread::scope(|s| {
        for i in 0..8 {
            let h = handles[i % handles.len()];
            s.spawn(move || {
                for _ in 0..25 {
                    loop {
                        let old = h.get(Tree::Meta, b"counter").expect("get");
                        let n = old
                            .as_deref()
                            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        match h.transaction(&[
                            Op::expect(Tree::Meta, b"counter", old.clone()),
                            Op::put(Tree::Meta, b"counter", (n + 1).to_be_bytes()),
                        ]) {
                            Ok(()) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        store.get(Tree::Meta, b"counter").expect("get"),
        Some(200u32.to_be_bytes().to_vec()),
        "no increment lost"
    );
}

#[test]
fn store_conformance_on_sled_and_postgresql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(&dir.path().join("db")).expect("sled");
    conformance(&sled, None);

    let pg = Postgres::start();
    let a = pg_store(&pg);
    let b = pg_store(&pg);
    conformance(&a, Some(&b));
}

#[test]
fn replicas_starting_at_once_on_an_empty_database_agree_on_one_schema() {
    let pg = Postgres::start();
    let url = pg.url();
    // Eight "replicas" open the empty database at the same moment.
    let versions: Vec<Vec<u8>> = std::thread::scope(|s| {
        (0..8)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let store = PgStore::open(&PgOptions {
                        url,
                        password: None,
                        ca_file: None,
                    })
                    .expect("open");
                    store
                        .get(Tree::Meta, SCHEMA_VERSION_KEY)
                        .expect("get")
                        .expect("version")
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect()
    });
    assert!(versions
        .iter()
        .all(|v| v == &SCHEMA_VERSION.to_be_bytes().to_vec()));
    // A database from a newer snpguardd is refused, with what to do.
    let store = pg_store(&pg);
    store
        .put(
            Tree::Meta,
            SCHEMA_VERSION_KEY,
            &(SCHEMA_VERSION + 1).to_be_bytes(),
        )
        .expect("put");
    let err = PgStore::open(&PgOptions {
        url,
        password: None,
        ca_file: None,
    })
    .expect_err("newer schema");
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");
    assert!(err.to_string().contains("newer snpguardd"), "{err}");
}

/// Waits (polling, with a deadline) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "not within {DEADLINE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bundle of record `name` exported through `s`'s bus.
fn export(s: &Setup, name: &str, tag: &str) -> Vec<u8> {
    let out = s.dir.path().join(format!("{name}-{tag}.tar.gz"));
    let path = out.to_str().expect("utf-8");
    ok(&ctl(&s.bus, &["records", "export", name, "--out", path]));
    std::fs::read(out).expect("bundle")
}

/// The `[store]` section pointing at `pg`.
fn store_config(pg: &Postgres) -> String {
    format!("[store]\nurl = \"{}\"\n", pg.url())
}

/// A second daemon on its own bus and state directory, sharing `first`'s
/// master key (as replicas share the credential) and `pg`.
async fn replica(first: &Setup, sim: &SimPlatform, pg: &Postgres) -> (Setup, Daemon, Target) {
    let s = setup().await;
    std::fs::create_dir_all(&s.state).expect("state");
    std::fs::copy(first.state.join("master.key"), s.state.join("master.key"))
        .expect("share the master key");
    let (daemon, target) = attest_daemon_with(&s, sim, &store_config(pg));
    (s, daemon, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_records_nonces_and_keys() {
    let pg = Postgres::start();
    let a = setup().await;
    let sim = sim_platform();
    let Some((daemon_a, target_a, vmk, launch)) =
        registered_guest_with(&a, &sim, 41, "fleet-guest", &store_config(&pg), &[])
    else {
        return;
    };
    let (b, daemon_b, target_b) = replica(&a, &sim, &pg).await;
    // The test cluster runs with fsync off and no standby: said loudly.
    let log = daemon_log(&b.state);
    assert!(log.contains("fsync is off"), "{log}");
    assert!(log.contains("no synchronous standby"), "{log}");

    // Registered through A, listed by B; one ingestion key for both.
    let names: Vec<String> = records(&b.bus)
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["fleet-guest"]);
    assert_eq!(
        std::fs::read(a.state.join("ingestion.pub")).expect("A"),
        std::fs::read(b.state.join("ingestion.pub")).expect("B"),
        "replicas serve one ingestion key"
    );
    assert_eq!(
        launch_of(&b.bus, "fleet-guest").measurement,
        launch.measurement
    );

    // Blobs travel through the database: B, which never saw the files,
    // exports the very bundle A exports.
    assert_eq!(
        export(&b, "fleet-guest", "b"),
        export(&a, "fleet-guest", "a"),
        "one bundle from either replica"
    );

    // A nonce issued by A is accepted once by B, and never again anywhere.
    let conn_a = target_a.connect().await.expect("connect A");
    let conn_b = target_b.connect().await.expect("connect B");
    let (ch, n) = challenge(&conn_a).await;
    let (secret, public) = seal::generate_keypair();
    let report = sim_report(&sim, &launch, &report_data(&n, &public));
    let req = attest_request(&sim, ch.nonce, &report, &public);
    let (resp, rep, sec) = send_attest(&conn_b, &req, report.clone(), secret.clone())
        .await
        .expect("B accepts A's nonce");
    assert_eq!(released(&resp, &rep, &sec), vmk);
    for conn in [&conn_a, &conn_b] {
        let r = send_attest(conn, &req, report.clone(), secret.clone()).await;
        assert_eq!(
            r.err().map(|(s, b)| (s, b.error)),
            Some((401, "nonce-reused".to_owned()))
        );
    }

    // The same request raced to both replicas releases at most once.
    for round in 0..25 {
        let from = if round % 2 == 0 { &conn_a } else { &conn_b };
        let (ch, n) = challenge(from).await;
        let (secret, public) = seal::generate_keypair();
        let report = sim_report(&sim, &launch, &report_data(&n, &public));
        let req = attest_request(&sim, ch.nonce, &report, &public);
        let (ra, rb) = tokio::join!(
            send_attest(&conn_a, &req, report.clone(), secret.clone()),
            send_attest(&conn_b, &req, report.clone(), secret.clone()),
        );
        let outcomes = [&ra, &rb];
        let released_n = outcomes.iter().filter(|r| r.is_ok()).count();
        assert_eq!(released_n, 1, "round {round}: one release");
        for r in outcomes {
            if let Err((status, body)) = r {
                assert_eq!((*status, body.error.as_str()), (401, "nonce-reused"));
            }
        }
    }

    // Both replicas counted into the one record, and each publishes the
    // total on its own bus (PropertiesChanged from the change feed).
    for s in [&a, &b] {
        eventually("both replicas' attestations counted on each bus", || {
            let shown: serde_json::Value = serde_json::from_str(&ok(&ctl(
                &s.bus,
                &["records", "show", "fleet-guest", "--json"],
            )))
            .expect("json");
            shown["attestations_ok"].as_u64() == Some(26)
        });
    }

    // Registered on A while B runs: B adds the object (InterfacesAdded).
    let stage = staging(a.dir.path(), &a.state, 42).expect("staging");
    let bundle = a.dir.path().join("second.tar.gz");
    ok(&register_with(
        &a.bus,
        &stage,
        "second",
        &bundle,
        &["--allow-test-root"],
    ));
    eventually("a record registered on A appears on B's bus", || {
        records(&b.bus).iter().any(|r| r["name"] == "second")
    });
    ok(&ctl(&b.bus, &["records", "delete", "second"]));
    eventually("a record deleted on B leaves A's bus", || {
        !records(&a.bus).iter().any(|r| r["name"] == "second")
    });

    // A change on B is seen on A.
    ok(&ctl(&b.bus, &["records", "disable", "fleet-guest"]));
    let r = attest_once(&conn_a, &sim, &launch, |_| {}).await;
    assert!(r.is_err(), "disabled on B, refused on A");
    ok(&ctl(&a.bus, &["records", "enable", "fleet-guest"]));
    attest_once(&conn_b, &sim, &launch, |_| {})
        .await
        .expect("enabled on A, released by B");

    // So is offline unlock: turned on through B, A shows it on its bus
    // and A's next signed release tells the agent to enrol.
    ok(&ctl(
        &b.bus,
        &["records", "set-offline-unlock", "fleet-guest", "on"],
    ));
    eventually("offline unlock turned on at B is shown by A", || {
        let shown: serde_json::Value = serde_json::from_str(&ok(&ctl(
            &a.bus,
            &["records", "show", "fleet-guest", "--json"],
        )))
        .expect("json");
        shown["offline_unlock"] == true
    });
    let (resp, key) = super::offline::signed_release(&conn_a, &sim, &launch, true).await;
    assert_eq!(
        resp.offline_unlock,
        Some(snpguard_protocol::attest::OfflineUnlock::Enrol)
    );
    assert_eq!(key, vmk);

    // A certificate imported on A: B holds it at once and signals
    // Certificates.Changed, and so does A (from the feed, like B).
    let listen = |s: &Setup| {
        let address = s.bus.address.clone();
        async move {
            let conn = zbus::connection::Builder::address(address.as_str())
                .expect("address")
                .build()
                .await
                .expect("connect");
            let proxy = CertificatesProxy::new(&conn).await.expect("proxy");
            let stream = proxy.receive_changed().await.expect("subscribe");
            (conn, stream)
        }
    };
    let (_bus_a, mut changed_a) = listen(&a).await;
    let (_bus_b, mut changed_b) = listen(&b).await;
    let vcek = a.dir.path().join("vcek.pem");
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &sim.vcek_der)
        .expect("pem");
    std::fs::write(&vcek, pem).expect("vcek");
    let ask = a.dir.path().join("ask.der");
    std::fs::write(&ask, &sim.ask_der).expect("ask");
    let files = [vcek.to_str().expect("utf-8"), ask.to_str().expect("utf-8")];
    ok(&ctl(&a.bus, &["certs", "import", files[0], files[1]]));
    let held: Vec<serde_json::Value> =
        serde_json::from_str(&ok(&ctl(&b.bus, &["certs", "list", "--json"]))).expect("json");
    assert!(
        held.iter()
            .any(|c| c["source"] == "imported" && c["kind"] == "VCEK"),
        "{held:?}"
    );
    for (name, changed) in [("B", &mut changed_b), ("A", &mut changed_a)] {
        tokio::time::timeout(Duration::from_secs(30), changed.next())
            .await
            .unwrap_or_else(|_| panic!("no Certificates.Changed on {name}"))
            .expect("signal stream");
    }
    // One import, one transaction, one signal: the replica that made the
    // change does not signal it a second time itself.
    let again = tokio::time::timeout(Duration::from_secs(1), changed_a.next()).await;
    assert!(again.is_err(), "a second Certificates.Changed on A");

    daemon_b.stop();
    daemon_a.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_closed_and_heals_without_a_restart() {
    let mut pg = Postgres::start();
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) =
        registered_guest_with(&s, &sim, 43, "outage", &store_config(&pg), &[])
    else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("before the outage");

    pg.stop();
    // Attestation: 503 store-unavailable, nothing released.
    let r = attest_once(&conn, &sim, &launch, |_| {}).await;
    match r {
        Ok(_) => panic!("a key was released without the database"),
        Err((status, body)) => {
            assert_eq!(
                (status, body.error.as_str()),
                (503, "store-unavailable"),
                "{body:?}"
            )
        }
    }
    // D-Bus: a change gets a typed error that says what happened (the
    // record was not disabled); the daemon stays up.
    let out = ctl(&s.bus, &["records", "disable", "outage"]);
    assert!(!out.status.success());
    let e = err(&out);
    assert!(e.contains("unavailable"), "{e}");
    let (status, _) = conn.get("/v1/health").await.expect("health");
    assert_eq!(status.as_u16(), 200, "the daemon is still up");

    // The database returns: full service, same daemon.
    pg.run();
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("after the outage");
    assert_eq!(released(&resp, &report, &secret), vmk);
    assert_eq!(records(&s.bus).len(), 1);
    daemon.stop();
}

/// Starts snpguardd on `config`, which it must refuse; returns its stderr.
fn refused_config(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snpguardd.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_snpguardd"))
        .arg("--config")
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run");
    assert!(!out.status.success(), "snpguardd accepted:\n{config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_unknown_store_url_is_refused_with_what_to_do() {
    let text = refused_config("[store]\nurl = \"mysql://db/x\"\n");
    assert!(text.contains("postgresql://"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_moves_a_host_into_the_database_unchanged() {
    let pg = Postgres::start();
    let s = setup().await;
    let sim = sim_platform();
    let Some((daemon, target, vmk, launch)) = registered_guest(&s, &sim, 45, "moved") else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("attested on the single host");
    let before = export(&s, "moved", "before");
    daemon.stop();

    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_snpguardd"))
            .arg("--config")
            .arg(config_dir(&s.state).join("snpguardd.toml"))
            .arg("--state-dir")
            .arg(&s.state)
            .args(["migrate-store", "--to", &pg.url()])
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("migrate-store")
    };
    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("records  1 entries"), "{stdout}");
    assert!(stdout.contains("3 blob files"), "{stdout}");
    // Never into a database that holds data.
    let again = migrate();
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(e.contains("not empty"), "{e}");

    // A replica that never saw this host's files serves the same record:
    // the same bundle byte for byte, the same key, the counters carried.
    let (b, daemon_b, target_b) = replica(&s, &sim, &pg).await;
    assert_eq!(
        export(&b, "moved", "after"),
        before,
        "the exported bundle is unchanged"
    );
    let conn = target_b.connect().await.expect("connect");
    let (resp, report, secret) = attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("attested from the database");
    assert_eq!(released(&resp, &report, &secret), vmk);
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&b.bus, &["records", "show", "moved", "--json"])))
            .expect("json");
    assert_eq!(shown["attestations_ok"].as_u64(), Some(2), "{shown}");
    daemon_b.stop();
}

#[test]
fn tls_with_verify_full_and_a_password_file_and_nothing_less() {
    let mut pg = Postgres::start();
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    pg.enable_tls(
        &server.cert.pem(),
        &server.signing_key.serialize_pem(),
        "s3cret pw",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, server.cert.pem()).expect("ca");
    let pw = dir.path().join("db-password");
    std::fs::write(&pw, "s3cret pw\n").expect("password");
    let url = format!(
        "postgresql://snpguard@127.0.0.1:{}/snpguard?sslmode=verify-full",
        pg.port()
    );
    let open = |ca: &Path, password: Option<&Path>| {
        PgStore::open(&PgOptions {
            url: url.clone(),
            password: password.map(|p| snpguardd::store::read_password(p).expect("read")),
            ca_file: Some(ca.to_owned()),
        })
    };

    // The right CA and password: a working store.
    let store = open(&ca, Some(&pw)).expect("TLS + password");
    store.put(Tree::Certs, b"k", b"v").expect("put");
    assert_eq!(
        store.get(Tree::Certs, b"k").expect("get"),
        Some(b"v".to_vec())
    );
    drop(store);

    // A server certificate from another CA: refused before any password.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let wrong_ca = dir.path().join("other-ca.pem");
    std::fs::write(&wrong_ca, other.cert.pem()).expect("ca");
    let err = open(&wrong_ca, Some(&pw)).expect_err("another CA");
    assert!(err.to_string().contains("certificate"), "{err}");

    // A wrong password, and none at all: refused.
    let bad = dir.path().join("bad-password");
    std::fs::write(&bad, "guess").expect("password");
    let err = open(&ca, Some(&bad)).expect_err("wrong password");
    assert!(err.to_string().contains("password"), "{err}");
    assert!(open(&ca, None).is_err(), "no password");
}

/// `snpguard-sim`, built next to `snpguardd` by the workspace tests.
fn snpguard_sim() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_snpguardd")).with_file_name("snpguard-sim");
    assert!(
        p.is_file(),
        "{} is missing: run the workspace tests (make test) or `cargo build -p snpguard-sim` first",
        p.display()
    );
    p
}

/// A persisted simulated Milan platform (`snpguard-sim init`).
fn sim_dir(s: &Setup) -> (PathBuf, SimPlatform) {
    let dir = s.dir.path().join("platform");
    let out = Command::new(snpguard_sim())
        .args(["init", "--product", "milan", "--dir"])
        .arg(&dir)
        .output()
        .expect("snpguard-sim init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (platform, _) = SimPlatform::load(&dir).expect("load the platform");
    (dir, platform)
}

fn url(target: &Target) -> String {
    format!("https://localhost:{}", target.addr().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_replica_under_load_fails_no_attestation() {
    let pg = Postgres::start();
    let a = setup().await;
    let (platform_dir, sim) = sim_dir(&a);
    let Some((daemon_a, target_a, vmk, _)) =
        registered_guest_with(&a, &sim, 51, "failover", &store_config(&pg), &[])
    else {
        return;
    };
    let (b, daemon_b, target_b) = replica(&a, &sim, &pg).await;
    let ca = a.state.join("tls/cert.pem");
    assert_eq!(
        std::fs::read(&ca).expect("A"),
        std::fs::read(b.state.join("tls/cert.pem")).expect("B"),
        "replicas serve one TLS certificate"
    );

    // 2,000 attestations, A first then B, every success replayed to B.
    let client = Command::new(snpguard_sim())
        .arg("attest")
        .arg("--dir")
        .arg(&platform_dir)
        .arg("--bundle")
        .arg(a.dir.path().join("failover.tar.gz"))
        .arg("--ca")
        .arg(&ca)
        .args(["--server", &url(&target_a), "--server", &url(&target_b)])
        .args(["--replay-to", &url(&target_b)])
        .args(["--count", "2000", "--concurrency", "8", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snpguard-sim attest");
    // Midway, A dies as in a power cut.
    eventually("a few hundred attestations done", || {
        let shown: serde_json::Value = serde_json::from_str(&ok(&ctl(
            &b.bus,
            &["records", "show", "failover", "--json"],
        )))
        .expect("json");
        shown["attestations_ok"].as_u64().unwrap_or(0) >= 300
    });
    daemon_a.kill();
    let out = client.wait_with_output().expect("client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&text).expect("summary json");
    assert_eq!(summary["attempted"], 2000, "{summary}");
    assert_eq!(
        summary["succeeded"], 2000,
        "no failed attestation: {summary}"
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(
        summary["failovers"].as_u64().unwrap_or(0) > 0,
        "some went to B after A died: {summary}"
    );
    // No nonce used twice: each successful request replayed to B was
    // refused, and every release was the registered key.
    assert_eq!(summary["replays_accepted"], 0, "{summary}");
    assert_eq!(summary["replays_refused"], 2000, "{summary}");
    let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&vmk));
    assert_eq!(summary["key_sha256"], serde_json::json!([key]), "{summary}");
    daemon_b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_refuses_only_store_unavailable() {
    let mut pg = Postgres::start();
    let s = setup().await;
    let (platform_dir, sim) = sim_dir(&s);
    let Some((daemon, target, _, _)) =
        registered_guest_with(&s, &sim, 53, "restart", &store_config(&pg), &[])
    else {
        return;
    };
    let ca = s.state.join("tls/cert.pem");
    let attest = |count: &str| {
        Command::new(snpguard_sim())
            .arg("attest")
            .arg("--dir")
            .arg(&platform_dir)
            .arg("--bundle")
            .arg(s.dir.path().join("restart.tar.gz"))
            .arg("--ca")
            .arg(&ca)
            .args(["--server", &url(&target)])
            .args(["--count", count, "--concurrency", "4", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("snpguard-sim attest")
    };
    let client = attest("1500");
    eventually("some attestations done", || {
        let shown: serde_json::Value =
            serde_json::from_str(&ok(&ctl(&s.bus, &["records", "show", "restart", "--json"])))
                .expect("json");
        shown["attestations_ok"].as_u64().unwrap_or(0) >= 200
    });
    pg.stop();
    eventually("the daemon saw the outage", || {
        daemon_log(&s.state).contains("store-unavailable")
    });
    pg.run();
    let out = client.wait_with_output().expect("client");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert_eq!(summary["attempted"], 1500, "{summary}");
    let refusals = summary["refusals"].as_object().expect("refusals");
    assert!(
        refusals.keys().all(|code| code == "store-unavailable"),
        "only store-unavailable during the outage: {summary}"
    );
    assert!(!refusals.is_empty(), "the outage was seen: {summary}");
    let succeeded = summary["succeeded"].as_u64().expect("succeeded");

    // Full service afterwards from the same daemon, nothing lost.
    let after = attest("100").wait_with_output().expect("client");
    let again: serde_json::Value = serde_json::from_slice(&after.stdout).expect("summary json");
    assert_eq!(again["succeeded"], 100, "{again}");
    assert_eq!(again["refusals"], serde_json::json!({}), "{again}");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&s.bus, &["records", "show", "restart", "--json"])))
            .expect("json");
    assert!(
        shown["attestations_ok"].as_u64().unwrap_or(0) >= succeeded + 100,
        "every acknowledged release counted: {shown} vs {succeeded} + 100"
    );
    daemon.stop();
}

/// `GET path` over plain HTTP/1.0: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect /metrics");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_attestations_by_outcome_on_their_own_listener() {
    let s = setup().await;
    let sim = sim_platform();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let Some((daemon, target, _, launch)) =
        registered_guest_with(&s, &sim, 55, "metered", &config, &[])
    else {
        return;
    };
    let conn = target.connect().await.expect("connect");
    attest_once(&conn, &sim, &launch, |_| {})
        .await
        .expect("released");
    let refused = attest_once(&conn, &sim, &launch, |l| l.measurement[0] ^= 1).await;
    assert!(refused.is_err());
    // A challenge nobody answers is a nonce in flight.
    challenge(&conn).await;

    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    for line in [
        "snpguard_attestations_total{outcome=\"released\",code=\"ok\"} 1",
        "snpguard_attestations_total{outcome=\"refused\",code=\"attestation-rejected\"} 1",
        "snpguard_attestation_duration_seconds_count 2",
        "snpguard_nonces_in_flight 1",
        "snpguard_store_errors_total 0",
        "snpguard_kds_requests_total 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} missing in\n{body}");
    }
    let (status, _) = http_get(port, "/v1/attest");
    assert!(status.contains("404"), "only /metrics there: {status}");
    daemon.stop();

    // An address that is not one is refused at start, naming the key.
    let text = refused_config("[metrics]\nlisten = \"everywhere\"\n");
    assert!(
        text.contains("[metrics]") && text.contains("everywhere"),
        "{text}"
    );
}

#[test]
fn replicas_starting_at_once_on_an_empty_database_end_up_with_one_key_set() {
    use snpguardd::keys::TlsSource;
    use snpguardd::registry::{Registry, RegistryOptions, StoreChoice};
    use snpguardd::secrets::{MasterKey, MasterKeySource};
    let pg = Postgres::start();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let keys: Vec<(Vec<u8>, String)> = std::thread::scope(|s| {
        dirs.iter()
            .map(|d| {
                let url = pg.url();
                s.spawn(move || {
                    let master =
                        MasterKey::from_bytes(&[9; 32], MasterKeySource::Credential("/t".into()));
                    let options = RegistryOptions {
                        store: StoreChoice::Postgres(PgOptions {
                            url,
                            password: None,
                            ca_file: None,
                        }),
                        ..Default::default()
                    };
                    let reg = Registry::open_with(d.path(), master, &options).expect("open");
                    let cert = match reg.keys().tls() {
                        TlsSource::Generated { cert_pem, .. } => cert_pem.clone(),
                        TlsSource::Files { .. } => panic!("generated TLS expected"),
                    };
                    (
                        snpguardd::service::RecordService::ingestion_public_key(&reg),
                        cert,
                    )
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("replica"))
            .collect()
    });
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "one ingestion key and one TLS certificate for all"
    );
    // A replica with another master key refuses the shared store.
    let other = MasterKey::from_bytes(&[8; 32], MasterKeySource::Credential("/t".into()));
    let err = Registry::open_with(
        dirs[0].path(),
        other,
        &RegistryOptions {
            store: StoreChoice::Postgres(PgOptions {
                url: pg.url(),
                password: None,
                ca_file: None,
            }),
            ..Default::default()
        },
    )
    .expect_err("another master key");
    assert!(err.to_string().contains("master key"), "{err}");
}
