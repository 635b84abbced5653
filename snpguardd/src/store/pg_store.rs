//! The PostgreSQL implementation of [`Store`], for a fleet of snpguardd
//! replicas sharing one database (see docs/fleet.md).
//!
//! Every tree is a slice of one table, `snpguard_kv (tree, key, value)`,
//! whose primary key orders keys bytewise like sled does. Each mutation is
//! one database transaction committed before the call returns; the
//! single-use guarantee of a nonce is the primary key itself
//! (`INSERT … ON CONFLICT DO NOTHING`), so two replicas racing with the
//! same nonce cannot both consume it. [`Op::Expect`] preconditions take a
//! transaction-scoped advisory lock per key, then compare, so every
//! read-modify-write through them is serialized across replicas.
//!
//! The [`Store`] trait is synchronous (sled is). Here the database work
//! runs on a small runtime of its own and the caller waits for the answer
//! on a channel, so a call works the same from a plain thread and from
//! inside the daemon's async tasks. A call that cannot reach the database
//! within [`CALL_TIMEOUT`] fails with [`StoreError::Unavailable`]; broken
//! connections are dropped and new ones made on the next call, so the
//! daemon recovers by itself when the database comes back.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config as PgConfig, NoTls};
use zeroize::Zeroizing;

use super::schema::{migrate, MIGRATIONS};
use super::{Entries, Entry, Op, Store, StoreChange, StoreError, Tree};

/// The notification channel of record changes.
const CHANNEL: &str = "snpguard_records";
/// The channel of changes to the held certificates and CRLs.
const CERTS_CHANNEL: &str = "snpguard_certs";
/// Statements sent to the database by every [`PgStore`] of the process
/// (BEGIN and COMMIT included), for the benchmark's count per
/// attestation.
static ROUND_TRIPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Database round trips so far (see [`ROUND_TRIPS`]).
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed)
}

fn count(n: usize) {
    ROUND_TRIPS.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Changes the feed holds for a daemon that has not taken them yet.
const FEED_CAPACITY: usize = 1024;
/// Wait before the change feed reconnects.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// How long one store call may take, connecting included, before it
/// fails as [`StoreError::Unavailable`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept open at most (each call holds one).
const POOL_SIZE: usize = 8;
/// Advisory lock key serializing schema creation across replicas
/// (`"snpguard"` in ASCII).
const SCHEMA_LOCK: i64 = 0x736e_7067_7561_7264;

/// Where and how to connect.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgresql://` URL or a libpq key-value string. `sslmode` may be
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub url: String,
    /// The password, when not in the URL (read from a file or credential).
    pub password: Option<Zeroizing<String>>,
    /// PEM file of the CA(s) that sign the database server's certificate.
    /// With it the connection uses TLS and checks the server's certificate
    /// and name (verify-full); without it only `sslmode=disable`/`prefer`
    /// (plain connections, for a local socket or a loopback address) are
    /// accepted.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"<redacted>")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

struct Pool {
    config: PgConfig,
    tls: Tls,
    idle: Mutex<Vec<Client>>,
    permits: tokio::sync::Semaphore,
}

impl Pool {
    async fn connect(&self) -> Result<Client, StoreError> {
        let client = match &self.tls {
            Tls::Plain => {
                let (client, conn) = self.config.connect(NoTls).await.map_err(classify)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("database connection closed: {e}");
                    }
                });
                client
            }
            Tls::Rustls(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(classify)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("database connection closed: {e}");
                    }
                });
                client
            }
        };
        Ok(client)
    }

    /// Runs `f` on a pooled connection; the connection goes back to the
    /// pool unless the database could not be reached through it.
    async fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closing".into()))?;
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match idle.pop() {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            }
        };
        let mut client = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        let result = f(&mut client).await;
        let reusable = !client.is_closed() && !matches!(result, Err(StoreError::Unavailable(_)));
        if reusable {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
        }
        result
    }
}

/// A PostgreSQL database shared by replicas.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Arc<Pool>,
    /// Host and database, for messages (never the password).
    target: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime blocks; the daemon may drop the store
            // from async code.
            rt.shutdown_background();
        }
    }
}

/// Maps a driver error: no SQLSTATE or a connection-class one means the
/// database was not reachable; a serialization failure or a duplicate key
/// is a conflict with another writer; anything else is a backend error.
fn classify(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        None => StoreError::Unavailable(db_message(&e)),
        Some(code) => {
            let c = code.code();
            if c.starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            {
                StoreError::Unavailable(db_message(&e))
            } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::UNIQUE_VIOLATION
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                StoreError::Conflict {
                    tree: "(database)",
                    key: db_message(&e),
                }
            } else {
                StoreError::Backend(db_message(&e))
            }
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The driver's own errors say little ("error performing TLS
            // handshake"); their sources say why.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The advisory lock key of one entry (stable across replicas and
/// versions: the first 8 bytes of a SHA-256 of tree and key).
fn lock_key(tree: Tree, key: &[u8]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"snpguard/v1/kv-lock\0");
    h.update(tree.name().as_bytes());
    h.update([0]);
    h.update(key);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// Reads the password file (or credential), without its final newline.
pub fn read_password(path: &Path) -> Result<Zeroizing<String>, StoreError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        error: format!("reading the database password: {e}"),
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| StoreError::Open {
        path: path.display().to_string(),
        error: "the database password file is not UTF-8".into(),
    })?;
    Ok(Zeroizing::new(
        text.strip_suffix('\n')
            .unwrap_or(text)
            .trim_end_matches('\r')
            .to_owned(),
    ))
}

/// Splits the `sslmode` off a URL or key-value string: tokio-postgres
/// knows `disable`, `prefer` and `require`; `verify-ca`/`verify-full` are
/// what a CA file gives here (rustls always checks chain and name).
fn tls_mode(url: &str) -> (String, Option<String>) {
    let mut mode = None;
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(at) = rest.find("sslmode=") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "sslmode=".len()..];
        let end = after.find(['&', ' ', '#']).unwrap_or(after.len());
        let value = &after[..end];
        mode = Some(value.to_owned());
        if matches!(value, "verify-ca" | "verify-full" | "require") {
            out.push_str("sslmode=require");
        } else {
            out.push_str(&rest[at..at + "sslmode=".len() + end]);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, mode)
}

fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, StoreError> {
    let open = |error: String| StoreError::Open {
        path: ca_file.display().to_string(),
        error,
    };
    let pem = std::fs::read(ca_file).map_err(|e| open(format!("reading the database CA: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| open(format!("the database CA file is not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| open(format!("a database CA certificate is invalid: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(open("the database CA file holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| open(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// Connects, creates the table when absent and brings the schema to
    /// [`super::SCHEMA_VERSION`] (race-safe when replicas start at once).
    pub fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let store = Self::open_unmigrated(options)?;
        migrate(&store, &MIGRATIONS)?;
        Ok(store)
    }

    /// Connects and creates the table, without looking at the schema
    /// version.
    pub fn open_unmigrated(options: &PgOptions) -> Result<PgStore, StoreError> {
        let (url, mode) = tls_mode(&options.url);
        let open_err = |error: String| StoreError::Open {
            path: "[store] url".into(),
            error,
        };
        let mut config: PgConfig = url
            .parse()
            .map_err(|e| open_err(format!("not a PostgreSQL URL: {e}")))?;
        if let Some(pw) = &options.password {
            config.password(pw.as_bytes());
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("snpguardd");
        let wants_tls = matches!(
            mode.as_deref(),
            Some("require" | "verify-ca" | "verify-full")
        );
        let tls = match (&options.ca_file, wants_tls) {
            (Some(ca), _) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                    ca,
                )?))
            }
            (None, true) => {
                return Err(open_err(format!(
                    "sslmode={} needs the CA of the database server: set [store] ca_file",
                    mode.unwrap_or_default()
                )))
            }
            (None, false) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Tls::Plain
            }
        };
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snpguard-store")
            .enable_all()
            .build()
            .map_err(|e| open_err(format!("starting the store's runtime: {e}")))?;
        let store = PgStore {
            runtime: Some(runtime),
            pool: Arc::new(Pool {
                config,
                tls,
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(POOL_SIZE),
            }),
            target,
        };
        store.run(|pool| async move {
            pool.with_client(async |c| {
                let tx = c.transaction().await.map_err(classify)?;
                tx.query_typed(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[(&SCHEMA_LOCK, Type::INT8)],
                )
                .await
                .map_err(classify)?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS snpguard_kv (
                         tree text NOT NULL,
                         key bytea NOT NULL,
                         value bytea NOT NULL,
                         PRIMARY KEY (tree, key));
                     -- Every replica hears of every record written by any
                     -- other (the payload is the record id), and of every
                     -- change to the held certificates and CRLs (no
                     -- payload: one transaction notifies once). Versioned
                     -- by name: an older replica restarting re-creates its
                     -- own trigger (records only) next to this one, which
                     -- only duplicates record notifications (harmless).
                     CREATE OR REPLACE FUNCTION snpguard_notify_v2() RETURNS trigger
                     LANGUAGE plpgsql AS $$
                     DECLARE
                       t text := CASE TG_OP WHEN 'DELETE' THEN OLD.tree ELSE NEW.tree END;
                       k bytea := CASE TG_OP WHEN 'DELETE' THEN OLD.key ELSE NEW.key END;
                     BEGIN
                       IF t = 'records' THEN
                         PERFORM pg_notify('snpguard_records', convert_from(k, 'UTF8'));
                       ELSIF t = 'certs' THEN
                         PERFORM pg_notify('snpguard_certs', '');
                       END IF;
                       RETURN NULL;
                     END $$;
                     DROP TRIGGER IF EXISTS snpguard_records_notify ON snpguard_kv;
                     CREATE OR REPLACE TRIGGER snpguard_notify_v2
                       AFTER INSERT OR UPDATE OR DELETE ON snpguard_kv
                       FOR EACH ROW EXECUTE FUNCTION snpguard_notify_v2();
                     -- One store transaction in one statement (one round
                     -- trip): advisory locks in the caller's order, the
                     -- preconditions, then the writes (a NULL value is a
                     -- delete). Returns 0, or the 1-based index of the
                     -- first precondition that failed (nothing written).
                     CREATE OR REPLACE FUNCTION snpguard_apply_v1(
                       deferred boolean, locks bigint[],
                       exp_tree text[], exp_key bytea[], exp_val bytea[], exp_absent boolean[],
                       op_tree text[], op_key bytea[], op_val bytea[]) RETURNS integer
                     LANGUAGE plpgsql AS $$
                     DECLARE i integer; cur bytea; hit boolean;
                     BEGIN
                       IF deferred THEN
                         PERFORM set_config('synchronous_commit', 'off', true);
                       END IF;
                       FOR i IN 1..coalesce(array_length(locks, 1), 0) LOOP
                         PERFORM pg_advisory_xact_lock(locks[i]);
                       END LOOP;
                       FOR i IN 1..coalesce(array_length(exp_tree, 1), 0) LOOP
                         SELECT value, true INTO cur, hit FROM snpguard_kv
                           WHERE tree = exp_tree[i] AND key = exp_key[i];
                         IF exp_absent[i] THEN
                           IF hit THEN RETURN i; END IF;
                         ELSIF hit IS NULL OR cur <> exp_val[i] THEN
                           RETURN i;
                         END IF;
                       END LOOP;
                       FOR i IN 1..coalesce(array_length(op_tree, 1), 0) LOOP
                         IF op_val[i] IS NULL THEN
                           DELETE FROM snpguard_kv WHERE tree = op_tree[i] AND key = op_key[i];
                         ELSE
                           INSERT INTO snpguard_kv (tree, key, value)
                             VALUES (op_tree[i], op_key[i], op_val[i])
                             ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value;
                         END IF;
                       END LOOP;
                       RETURN 0;
                     END $$;",
                )
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)
            })
            .await
        })?;
        Ok(store)
    }

    /// What in the database's settings weakens the guarantees snpguardd
    /// relies on (a nonce consumed stays consumed, a record written stays
    /// written), as sentences for the start-up log; empty when nothing.
    pub fn durability_warnings(&self) -> Result<Vec<String>, StoreError> {
        let settings = self.run(|pool| async move {
            pool.with_client(async |c| {
                let rows = c
                    .query_typed(
                        "SELECT name, setting FROM pg_settings WHERE name IN \
                         ('fsync', 'synchronous_commit', 'full_page_writes', \
                          'synchronous_standby_names')",
                        &[],
                    )
                    .await
                    .map_err(classify)?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect::<Vec<_>>())
            })
            .await
        })?;
        let get = |name: &str| {
            settings
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let mut warnings = Vec::new();
        if get("fsync") == "off" {
            warnings.push(
                "fsync is off on the database: a crash of its host can lose consumed nonces and \
                 records; turn it on"
                    .to_owned(),
            );
        }
        if get("full_page_writes") == "off" {
            warnings.push(
                "full_page_writes is off on the database: a crash can corrupt it; turn it on"
                    .to_owned(),
            );
        }
        if matches!(get("synchronous_commit"), "off" | "local") {
            warnings.push(format!(
                "synchronous_commit is {} on the database: a committed nonce can be lost by a \
                 crash or failover and a report replayed once more; set it to on",
                get("synchronous_commit")
            ));
        }
        if get("synchronous_standby_names").is_empty() {
            warnings.push(
                "the database has no synchronous standby (synchronous_standby_names is empty): a \
                 failover to an asynchronous standby can lose consumed nonces; see docs/fleet.md"
                    .to_owned(),
            );
        }
        Ok(warnings)
    }

    /// The database, for messages: hosts and database name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs a database task on the store's runtime and waits for it.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Pool>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let (tx, rx) = mpsc::sync_channel(1);
        let fut = f(self.pool.clone());
        rt.spawn(async move {
            let result = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
            };
            let _ = tx.send(result);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the store's task ended".into()))?
    }

    /// One store transaction, in one statement ([`snpguard_apply_v1`]
    /// created with the table): one round trip whatever its size.
    fn write(&self, ops: &[Op], deferred: bool) -> Result<(), StoreError> {
        let mut locks: Vec<i64> = Vec::new();
        let (mut exp_tree, mut exp_key, mut exp_val, mut exp_absent) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut op_tree, mut op_key, mut op_val) = (Vec::new(), Vec::new(), Vec::new());
        let mut expected = Vec::new();
        for op in ops {
            match op {
                Op::Expect { tree, key, value } => {
                    locks.push(lock_key(*tree, key));
                    exp_tree.push(tree.name());
                    exp_key.push(key.clone());
                    exp_absent.push(value.is_none());
                    exp_val.push(value.clone());
                    expected.push((tree.name(), String::from_utf8_lossy(key).into_owned()));
                }
                Op::Put { tree, key, value } => {
                    op_tree.push(tree.name());
                    op_key.push(key.clone());
                    op_val.push(Some(value.clone()));
                }
                Op::Delete { tree, key } => {
                    op_tree.push(tree.name());
                    op_key.push(key.clone());
                    op_val.push(None::<Vec<u8>>);
                }
            }
        }
        // One order for every transaction: no deadlock between them.
        locks.sort_unstable();
        locks.dedup();
        let failed = self.run(move |pool| async move {
            pool.with_client(async |c| {
                count(1);
                let rows = c
                    .query_typed(
                        "SELECT snpguard_apply_v1($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            (&deferred, Type::BOOL),
                            (&locks, Type::INT8_ARRAY),
                            (&exp_tree, Type::TEXT_ARRAY),
                            (&exp_key, Type::BYTEA_ARRAY),
                            (&exp_val, Type::BYTEA_ARRAY),
                            (&exp_absent, Type::BOOL_ARRAY),
                            (&op_tree, Type::TEXT_ARRAY),
                            (&op_key, Type::BYTEA_ARRAY),
                            (&op_val, Type::BYTEA_ARRAY),
                        ],
                    )
                    .await
                    .map_err(classify)?;
                Ok(rows.first().map(|r| r.get::<_, i32>(0)).unwrap_or(0))
            })
            .await
        })?;
        if failed == 0 {
            return Ok(());
        }
        let (tree, key) = usize::try_from(failed - 1)
            .ok()
            .and_then(|i| expected.get(i).cloned())
            .unwrap_or(("(database)", String::new()));
        Err(StoreError::Conflict { tree, key })
    }
}

fn describe(config: &PgConfig) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "postgresql on {} database {}",
        if hosts.is_empty() {
            "the default socket".to_owned()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("(user's default)")
    )
}

/// Feeds record notifications into `tx` until it is closed,
/// reconnecting (and asking for a resync) whenever the connection drops.
async fn listen(pool: Arc<Pool>, tx: tokio::sync::mpsc::Sender<StoreChange>) {
    loop {
        let result = match &pool.tls {
            Tls::Plain => match pool.config.connect(NoTls).await {
                Ok((client, conn)) => feed(client, conn, &tx).await,
                Err(e) => Err(db_message(&e)),
            },
            Tls::Rustls(tls) => match pool.config.connect(tls.clone()).await {
                Ok((client, conn)) => feed(client, conn, &tx).await,
                Err(e) => Err(db_message(&e)),
            },
        };
        if tx.is_closed() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!("the store's change feed stopped ({e}); reconnecting");
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

async fn feed<S, T>(
    client: Client,
    mut conn: tokio_postgres::Connection<S, T>,
    tx: &tokio::sync::mpsc::Sender<StoreChange>,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_postgres::AsyncMessage;
    let sql = format!("LISTEN {CHANNEL}; LISTEN {CERTS_CHANNEL}");
    let listen = client.batch_execute(&sql);
    let mut listen = std::pin::pin!(listen);
    let mut listening = false;
    // Bounded: when the daemon falls behind, single changes are dropped
    // and one resync stands for all of them.
    let mut overflowed = false;
    let mut send = |change: StoreChange| -> bool {
        use tokio::sync::mpsc::error::TrySendError;
        if overflowed {
            match tx.try_send(StoreChange::Resync) {
                Ok(()) => overflowed = false,
                Err(TrySendError::Full(_)) => return true,
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match tx.try_send(change) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                overflowed = true;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    };
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| db_message(&e))?;
                listening = true;
                // Whatever happened while nobody listened: reload.
                if !send(StoreChange::Resync) {
                    return Ok(());
                }
            }
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    if !send(StoreChange::Record(n.payload().to_owned())) {
                        return Ok(());
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CERTS_CHANNEL => {
                    if !send(StoreChange::Certificates) {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(db_message(&e)),
                None => return Err("the connection closed".into()),
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

impl Store for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<StoreChange>> {
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_CAPACITY);
        self.runtime.as_ref()?.spawn(listen(self.pool.clone(), tx));
        Some(rx)
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT value FROM snpguard_kv WHERE tree = $1 AND key = $2",
            vec![Param::Text(tree.name()), Param::Bytes(key.to_vec())],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn entries(&self, tree: Tree) -> Result<Entries, StoreError> {
        let rows = self.query(
            "SELECT key, value FROM snpguard_kv WHERE tree = $1 ORDER BY key",
            vec![Param::Text(tree.name())],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn transaction(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, false)
    }

    fn transaction_deferred(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.write(ops, true)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every synchronous commit is durable when it returns; a deferred
        // one is after the database's WAL writer runs (wal_writer_delay).
        // A synchronous commit that writes flushes the WAL up to itself,
        // so every earlier deferred commit with it (a transaction that
        // writes nothing commits without waiting).
        self.write(
            &[Op::put(Tree::Meta, b"last-flush".to_vec(), Vec::new())],
            false,
        )
    }

    fn insert_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let rows = self.query(
            "INSERT INTO snpguard_kv (tree, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (tree, key) DO NOTHING RETURNING 1",
            vec![
                Param::Text(tree.name()),
                Param::Bytes(key.to_vec()),
                Param::Bytes(value.to_vec()),
            ],
        )?;
        Ok(rows.len() == 1)
    }

    fn keys_below(&self, tree: Tree, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self.query(
            "SELECT key FROM snpguard_kv WHERE tree = $1 AND key < $2 ORDER BY key LIMIT $3",
            vec![
                Param::Text(tree.name()),
                Param::Bytes(end.to_vec()),
                Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn last(&self, tree: Tree) -> Result<Option<Entry>, StoreError> {
        let rows = self.query(
            "SELECT key, value FROM snpguard_kv WHERE tree = $1 ORDER BY key DESC LIMIT 1",
            vec![Param::Text(tree.name())],
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

/// A parameter of a one-statement store call.
enum Param {
    Text(&'static str),
    Bytes(Vec<u8>),
    Int(i64),
}

impl PgStore {
    /// Runs one statement (one round trip) on a pooled connection.
    fn query(
        &self,
        sql: &'static str,
        params: Vec<Param>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.run(move |pool| async move {
            pool.with_client(async |c| {
                count(1);
                let typed: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> = params
                    .iter()
                    .map(|p| match p {
                        Param::Text(t) => {
                            (t as &(dyn tokio_postgres::types::ToSql + Sync), Type::TEXT)
                        }
                        Param::Bytes(b) => {
                            (b as &(dyn tokio_postgres::types::ToSql + Sync), Type::BYTEA)
                        }
                        Param::Int(i) => {
                            (i as &(dyn tokio_postgres::types::ToSql + Sync), Type::INT8)
                        }
                    })
                    .collect();
                c.query_typed(sql, &typed).await.map_err(classify)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_are_split_off_the_url() {
        let (u, m) = tls_mode("postgresql://db.example/snpguard?sslmode=verify-full");
        assert_eq!(u, "postgresql://db.example/snpguard?sslmode=require");
        assert_eq!(m.as_deref(), Some("verify-full"));
        let (u, m) = tls_mode("host=/run/postgresql dbname=snp sslmode=disable user=x");
        assert_eq!(u, "host=/run/postgresql dbname=snp sslmode=disable user=x");
        assert_eq!(m.as_deref(), Some("disable"));
        let (u, m) = tls_mode("postgresql://h/d");
        assert_eq!((u.as_str(), m), ("postgresql://h/d", None));
    }

    #[test]
    fn tls_without_a_ca_is_refused_before_connecting() {
        let err = PgStore::open(&PgOptions {
            url: "postgresql://db.example/snpguard?sslmode=verify-full".into(),
            password: None,
            ca_file: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca_file"), "{err}");
    }

    #[test]
    fn lock_keys_differ_by_tree_and_key() {
        assert_ne!(lock_key(Tree::Records, b"a"), lock_key(Tree::Names, b"a"));
        assert_ne!(lock_key(Tree::Records, b"a"), lock_key(Tree::Records, b"b"));
        assert_eq!(lock_key(Tree::Records, b"a"), lock_key(Tree::Records, b"a"));
    }

    #[test]
    fn an_unreachable_database_is_unavailable_not_a_hang() {
        // A port nothing listens on: refused at once.
        let err = PgStore::open(&PgOptions {
            url: "postgresql://snpguard@127.0.0.1:1/snpguard".into(),
            password: None,
            ca_file: None,
        })
        .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
}
