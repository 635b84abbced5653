//! A throw-away PostgreSQL cluster for tests: Debian's postgresql server
//! (installed by `make deps`), initialised in a temporary directory, run
//! by an unprivileged user (the `postgres` account when the tests run as
//! root: initdb refuses root), listening on a Unix socket in that
//! directory only, and stopped when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running cluster with a database `snpguard` and a user of that name.
pub struct Postgres {
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    /// The server account's uid and gid, when the tests run as root.
    as_user: Option<(u32, u32)>,
    /// Server settings added by [`Postgres::enable_tls`].
    extra: Vec<String>,
}

/// The uid and gid of the `postgres` account (from /etc/passwd).
fn postgres_account() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("a postgres account (Debian's postgresql package creates it); run `make deps`")
}

/// The directory holding initdb/postgres: `SNPGUARD_PG_BIN`, else the
/// newest version Debian installed.
fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SNPGUARD_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries: /usr/lib/postgresql is missing; run `make deps` \
             (it installs Debian's postgresql) or set SNPGUARD_PG_BIN",
        )
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server under /usr/lib/postgresql; run `make deps`")
        .1
}

impl Postgres {
    /// Initialises and starts a cluster.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("snpguard-pg-")
            .tempdir()
            .expect("temp dir");
        let root = rustix::process::geteuid().is_root();
        let as_user = root.then(postgres_account);
        if root {
            // The server account owns its directory; nobody else reads it.
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let port = 20000 + (std::process::id() % 20000) as u16;
        let mut pg = Postgres {
            dir,
            child: None,
            bin,
            port,
            as_user,
            extra: Vec::new(),
        };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "snpguard", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.run();
        let out = pg
            .command("createdb")
            .args(["-h"])
            .arg(pg.dir.path())
            .args(["-p", &pg.port.to_string(), "-U", "snpguard", "snpguard"])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server tool run as the server account. No su/runuser in
    /// between: signals must reach the server itself.
    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.as_user {
            c.uid(uid).gid(gid).current_dir("/");
        }
        c
    }

    /// Starts the server (again) on the same data and port and waits
    /// until it accepts connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
        if self.as_user.is_some() {
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(self.dir.path().join("server.log"))
                .status();
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-c", "listen_addresses=", "-p", &self.port.to_string()])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .args(self.extra.iter().flat_map(|e| ["-c", e.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .command("pg_isready")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "snpguard", "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts the server listening on 127.0.0.1:[`Postgres::port`] too,
    /// TLS only there (certificate and key PEM as given) with password
    /// authentication for `snpguard`, whose password becomes `password`.
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str, password: &str) {
        let out = self
            .command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "snpguard",
                "-d",
                "snpguard",
                "-c",
            ])
            .arg(format!("ALTER USER snpguard PASSWORD '{password}'"))
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.stop();
        let data = self.data_dir();
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let p = data.join(name);
            std::fs::write(&p, text).expect("tls file");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            if let Some((uid, gid)) = self.as_user {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
            }
        }
        // First match wins: TCP is TLS with a password, before initdb's
        // trust lines (which keep the local socket open for the harness).
        let hba = data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 host all all 127.0.0.1/32 reject\n{old}"
            ),
        )
        .expect("pg_hba.conf");
        self.extra = vec!["ssl=on".into(), "listen_addresses=127.0.0.1".into()];
        self.run();
    }

    /// The port (of the Unix socket, and of TCP once TLS is enabled).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let _ = child.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A libpq key-value connection string for the database `snpguard`.
    pub fn url(&self) -> String {
        self.url_for("snpguard")
    }

    /// As [`Postgres::url`], for another database.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "host={} port={} user=snpguard dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    /// Creates another empty database.
    pub fn create_db(&self, name: &str) {
        let out = self
            .command("createdb")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "snpguard", name])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
