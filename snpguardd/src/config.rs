//! Daemon configuration: a TOML file (`/etc/snpguard/snpguardd.toml` by
//! default) merged with command-line overrides.
//!
//! The default file may be absent (every key has a default); a file named
//! with `--config` must exist. Drop-ins (`*.toml` in `<main file>.d/`,
//! and packaged defaults in `/usr/lib/snpguard/snpguardd.toml.d/` unless
//! the former has a file of the same name) are merged over the main file
//! in the order of their names: tables merge key by key, any other value
//! (arrays included) is replaced by the later file's. Unknown keys are
//! errors that name the key and the file, so a typo never silently falls
//! back to a default. Relative paths in a file are relative to that
//! file's directory; relative paths on the command line are relative to
//! the working directory.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Parser;
use serde::Deserialize;
use snpguard::certs::{CrlPolicy, Product, RevocationPolicy};
use snpguard::verify::{MinTcb, TcbFloors};

use crate::attest::nonce::{NONCE_LIFETIME_SECS, NONCE_MAX_LIFETIME_SECS};

/// Where the configuration file is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/snpguard/snpguardd.toml";
/// Packaged drop-ins: each applies unless the main file's drop-in
/// directory has a file of the same name (a symlink to /dev/null there
/// masks it).
pub const VENDOR_DROPIN_DIR: &str = "/usr/lib/snpguard/snpguardd.toml.d";
/// Most drop-in files read from one directory.
const MAX_DROPINS: usize = 128;
/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Default state directory (the unit's `StateDirectory=snpguard`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/snpguard";
/// Default fallback listen address when no socket is passed by systemd.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3000";
/// Name of the import directory inside the state directory.
pub const IMPORT_SUBDIR: &str = "import";

/// Command line of the daemon.
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "snpguardd",
    version,
    about = "SnpGuard daemon: records, keys and attestation for SEV-SNP guests",
    help_expected = true,
    max_term_width = 80
)]
pub struct Args {
    /// Configuration file [default: /etc/snpguard/snpguardd.toml, if present];
    /// FILE.d/*.toml drop-ins are merged over it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for records, keys and caches (overrides the file)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// D-Bus to serve on: system, session or a D-Bus address
    #[arg(long, value_name = "system|session|ADDRESS")]
    pub bus: Option<Bus>,

    /// HTTPS address when systemd passes no socket [default: 0.0.0.0:3000]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// PostgreSQL database shared by replicas, as a postgresql:// URL
    /// (overrides [store] url) [default: sled in the state directory]
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,

    /// A one-off task instead of serving
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off tasks of the daemon binary.
#[derive(Debug, Clone, clap::Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Copy this host's embedded store (records, launches, blobs, keys,
    /// certificates, CRLs, audit trail) into an empty PostgreSQL
    /// database, then check the copy; run while snpguardd is stopped
    MigrateStore {
        /// The PostgreSQL database to fill, as a postgresql:// URL or a
        /// libpq key=value string
        #[arg(long, value_name = "URL")]
        to: String,
        /// File holding the database password [default: [store]
        /// password_file]
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// PEM CA file for TLS to the database [default: [store] ca_file]
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

/// Which message bus the daemon serves its management API on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bus {
    /// The system bus (production).
    #[default]
    System,
    /// The caller's session bus (development).
    Session,
    /// An explicit D-Bus address, e.g. `unix:path=/tmp/test-bus` (tests).
    Address(String),
}

impl FromStr for Bus {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Bus::System),
            "session" => Ok(Bus::Session),
            _ => {
                // A D-Bus address is `transport:key=value,...`, possibly
                // several separated by ';'. Check the shape only; the bus
                // library reports anything deeper when connecting.
                let valid = !s.is_empty()
                    && s.split(';').filter(|a| !a.is_empty()).all(|a| {
                        a.split_once(':').is_some_and(|(transport, _)| {
                            !transport.is_empty()
                                && transport
                                    .chars()
                                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                        })
                    });
                if valid {
                    Ok(Bus::Address(s.to_owned()))
                } else {
                    Err(ConfigError::InvalidBus(s.chars().take(200).collect()))
                }
            }
        }
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::System => f.write_str("system"),
            Bus::Session => f.write_str("session"),
            Bus::Address(a) => f.write_str(a),
        }
    }
}

/// A simulated platform root the daemon trusts in addition to AMD's pinned
/// ARKs. For end-to-end tests only; logged as a warning at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRoot {
    /// The product whose chain this root anchors.
    pub product: Product,
    /// PEM file holding the simulated ARK certificate.
    pub ark_path: PathBuf,
}

/// AMD Key Distribution Service settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kds {
    /// Fetch missing VCEKs and CRLs from kdsintf.amd.com. Air-gapped hosts
    /// turn this off and import certificates offline.
    pub enabled: bool,
}

/// Where records, keys, nonces and the audit trail are kept (`[store]`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// A PostgreSQL URL shared by replicas; `None`: sled in the state
    /// directory.
    pub url: Option<String>,
    /// File holding the database password (or the systemd credential
    /// `snpguard-store-password` when present).
    pub password_file: Option<PathBuf>,
    /// PEM CA file for TLS to the database (verify-full).
    pub ca_file: Option<PathBuf>,
}

/// The systemd credential holding the database password, used when
/// `[store] password_file` is not set.
pub const STORE_PASSWORD_CREDENTIAL: &str = "snpguard-store-password";

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL may carry a password: never print it.
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl StoreConfig {
    /// The password file actually used: the configured one, else the
    /// systemd credential when it exists.
    pub fn password_path(&self) -> Option<PathBuf> {
        self.password_file.clone().or_else(|| {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
            let p = PathBuf::from(dir).join(STORE_PASSWORD_CREDENTIAL);
            p.is_file().then_some(p)
        })
    }

    /// Whether this is the embedded single-host store.
    pub fn is_sled(&self) -> bool {
        self.url.is_none()
    }
}

/// Attestation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Seconds a nonce from `/v1/attest/challenge` stays usable,
    /// `1..=`[`NONCE_MAX_LIFETIME_SECS`].
    pub nonce_lifetime_secs: u64,
}

impl Default for Attest {
    fn default() -> Self {
        Attest {
            nonce_lifetime_secs: NONCE_LIFETIME_SECS,
        }
    }
}

/// The resolved configuration of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the configuration was read from, when one was read.
    pub source: Option<PathBuf>,
    /// The drop-ins merged over it, in order.
    pub dropins: Vec<PathBuf>,
    /// Records, keys and caches.
    pub state_dir: PathBuf,
    /// The bus the management API is served on.
    pub bus: Bus,
    /// HTTPS listen address when systemd passes no socket.
    pub listen: SocketAddr,
    /// Directory from which path-based D-Bus registration reads client
    /// files (for clients that cannot pass file descriptors).
    pub import_dir: PathBuf,
    /// TLS certificate chain (PEM); generated in the state dir when unset.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); set together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Simulated platform roots (tests only).
    pub test_roots: Vec<TestRoot>,
    /// AMD KDS access.
    pub kds: Kds,
    /// Attestation settings.
    pub attest: Attest,
    /// Per-source rate limit of the HTTPS endpoint.
    pub rate_limit: RateLimit,
    /// Daemon-wide minimum TCB per product (`[tcb_floor.<product>]`),
    /// applied to every record on top of the record's own minimum.
    pub tcb_floors: TcbFloors,
    /// Connection handling of the HTTPS endpoint.
    pub https: Https,
    /// What a missing or stale CRL of the daemon's own means
    /// (`[revocation]`).
    pub revocation: RevocationPolicy,
    /// The database (`[store]`).
    pub store: StoreConfig,
    /// Where `/metrics` is served (`[metrics] listen`); `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// Longest `client_hello_timeout_secs` accepted.
pub const MAX_CLIENT_HELLO_TIMEOUT_SECS: u64 = 60;

/// HTTPS connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Https {
    /// Seconds a client has after connecting to send its TLS ClientHello,
    /// `1..=`[`MAX_CLIENT_HELLO_TIMEOUT_SECS`].
    pub client_hello_timeout_secs: u64,
}

impl Default for Https {
    fn default() -> Self {
        Https {
            client_hello_timeout_secs: 5,
        }
    }
}

/// The HTTPS endpoint's per-source (IP address, IPv6 /64) token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second per source.
    pub per_second: f64,
    /// Burst size per source.
    pub burst: u32,
    /// Connections one source may hold open at once.
    pub connections: usize,
}

impl Eq for RateLimit {}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 20.0,
            burst: 200,
            connections: 32,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` (or the default, if unreadable for a
    /// reason other than absence) could not be read.
    #[error("reading configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included;
    /// the message names the key and its line).
    #[error("parsing configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the offending key.
        message: String,
    },
    /// A `bus` value that is neither `system`, `session` nor an address.
    #[error(
        "invalid bus {0:?}; expected system, session or a D-Bus address like unix:path=/run/bus"
    )]
    InvalidBus(String),
    /// A `listen` value that is not `ADDR:PORT`.
    #[error("invalid listen address {0:?}; expected ADDR:PORT, e.g. 0.0.0.0:3000")]
    InvalidListen(String),
    /// A test root names an unknown product.
    #[error("test_roots: {0}")]
    UnknownProduct(#[from] snpguard::certs::UnknownProduct),
    /// An `[attest]` value out of range.
    #[error("attest: {0}")]
    InvalidAttest(String),
    /// A `[tcb_floor.<product>]` table that is incomplete or does not fit
    /// the product.
    #[error("tcb_floor: {0}")]
    InvalidTcbFloor(String),
    /// A `[rate_limit]` value out of range.
    #[error("rate_limit: {0}")]
    InvalidRateLimit(String),
    /// An `[https]` value out of range.
    #[error("https: {0}")]
    InvalidHttps(String),
    /// `[store]` is inconsistent.
    #[error("invalid [store] in the configuration: {0}")]
    InvalidStore(String),
    /// `[metrics]` is invalid.
    #[error("invalid [metrics] in the configuration: {0}")]
    InvalidMetrics(String),
    /// A `[revocation]` value that is neither `fail` nor `warn`.
    #[error("revocation: {0}")]
    InvalidRevocation(String),
    /// Only one of `tls_cert` and `tls_key` was set.
    #[error("tls_cert and tls_key must be set together (or neither, to generate them)")]
    TlsHalfConfigured,
    /// The working directory is needed to resolve a relative path.
    #[error("resolving relative path {path}: {source}")]
    Absolute {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The on-disk schema. Everything optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    bus: Option<String>,
    listen: Option<String>,
    import_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    test_roots: Vec<FileTestRoot>,
    kds: Option<FileKds>,
    attest: Option<FileAttest>,
    rate_limit: Option<FileRateLimit>,
    https: Option<FileHttps>,
    tcb_floor: Option<FileTcbFloors>,
    revocation: Option<FileRevocation>,
    store: Option<FileStore>,
    metrics: Option<FileMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    url: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRevocation {
    missing: Option<String>,
    stale: Option<String>,
}

fn crl_policy(key: &str, v: &str) -> Result<CrlPolicy, ConfigError> {
    match v {
        "fail" => Ok(CrlPolicy::Fail),
        "warn" => Ok(CrlPolicy::Warn),
        _ => Err(ConfigError::InvalidRevocation(format!(
            "{key} = {:?}; expected \"fail\" or \"warn\"",
            v.chars().take(32).collect::<String>()
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTcbFloors {
    milan: Option<FileTcb>,
    genoa: Option<FileTcb>,
    turin: Option<FileTcb>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTcb {
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
    fmc: Option<u8>,
}

impl FileTcb {
    /// The floor of `product`: Turin's must have `fmc` (its TCB has
    /// one), Milan's and Genoa's must not (theirs has none).
    fn floor(self, product: Product) -> Result<MinTcb, ConfigError> {
        match (product, self.fmc) {
            (Product::Turin, None) => {
                return Err(ConfigError::InvalidTcbFloor(
                    "[tcb_floor.turin] needs fmc: the Turin TCB has an FMC component".into(),
                ))
            }
            (Product::Milan | Product::Genoa, Some(_)) => {
                return Err(ConfigError::InvalidTcbFloor(format!(
                    "[tcb_floor.{product}] has fmc, which only Turin has; remove it"
                )))
            }
            _ => {}
        }
        Ok(MinTcb {
            bootloader: self.bootloader,
            tee: self.tee,
            snp: self.snp,
            microcode: self.microcode,
            fmc: self.fmc,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttps {
    client_hello_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAttest {
    nonce_lifetime_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    per_source_per_second: Option<f64>,
    per_source_burst: Option<u32>,
    per_source_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTestRoot {
    product: String,
    ark_path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKds {
    enabled: Option<bool>,
}

/// Reads the configuration file (if any) and applies the command-line
/// overrides on top of it.
pub fn resolve(args: &Args) -> Result<Config, ConfigError> {
    resolve_with(args, Path::new(VENDOR_DROPIN_DIR))
}

/// [`resolve`] with packaged drop-ins from `vendor_dropins`.
pub fn resolve_with(args: &Args, vendor_dropins: &Path) -> Result<Config, ConfigError> {
    let (path, required) = match &args.config {
        Some(p) => (absolute(p)?, true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut merged = toml::Table::new();
    let source = match read_file(&path)? {
        Some(text) => {
            merge(&mut merged, file_table(&text, &path)?);
            Some(path.clone())
        }
        None if !required => None,
        None => {
            return Err(ConfigError::Read {
                path,
                source: io::ErrorKind::NotFound.into(),
            })
        }
    };
    let mut local = path.into_os_string();
    local.push(".d");
    let dropins = dropin_files(&[vendor_dropins, Path::new(&local)])?;
    for p in &dropins {
        // A drop-in that vanished since the listing is skipped like one
        // never listed.
        if let Some(text) = read_file(p)? {
            merge(&mut merged, file_table(&text, p)?);
        }
    }
    let file =
        FileConfig::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Parse {
            path: source.clone().unwrap_or_else(|| PathBuf::from("drop-ins")),
            message: format!("after merging the drop-ins: {}", e.to_string().trim_end()),
        })?;
    // Every path is absolute by now (made so relative to its own file).
    let in_file = |p: PathBuf| p;

    let state_dir = match &args.state_dir {
        Some(p) => absolute(p)?,
        None => file
            .state_dir
            .map(in_file)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    };
    let bus = match (&args.bus, file.bus) {
        (Some(b), _) => b.clone(),
        (None, Some(s)) => s.parse()?,
        (None, None) => Bus::System,
    };
    let listen = match (args.listen, file.listen) {
        (Some(a), _) => a,
        (None, Some(s)) => s
            .parse()
            .map_err(|_| ConfigError::InvalidListen(s.chars().take(200).collect()))?,
        (None, None) => default_listen(),
    };
    let import_dir = file
        .import_dir
        .map(in_file)
        .unwrap_or_else(|| state_dir.join(IMPORT_SUBDIR));
    let tls_cert = file.tls_cert.map(in_file);
    let tls_key = file.tls_key.map(in_file);
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(ConfigError::TlsHalfConfigured);
    }
    let test_roots = file
        .test_roots
        .into_iter()
        .map(|r| {
            Ok(TestRoot {
                product: r.product.parse()?,
                ark_path: in_file(r.ark_path),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let kds = Kds {
        enabled: file.kds.and_then(|k| k.enabled).unwrap_or(true),
    };
    let mut attest = Attest::default();
    if let Some(v) = file.attest.and_then(|a| a.nonce_lifetime_secs) {
        if !(1..=NONCE_MAX_LIFETIME_SECS).contains(&v) {
            return Err(ConfigError::InvalidAttest(format!(
                "nonce_lifetime_secs = {v} (must be 1 to {NONCE_MAX_LIFETIME_SECS} seconds)"
            )));
        }
        attest.nonce_lifetime_secs = v;
    }
    let mut rate_limit = RateLimit::default();
    if let Some(r) = file.rate_limit {
        if let Some(v) = r.per_source_per_second {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::InvalidRateLimit(format!(
                    "per_source_per_second = {v} (must be a positive number)"
                )));
            }
            rate_limit.per_second = v;
        }
        if let Some(b) = r.per_source_burst {
            if b == 0 {
                return Err(ConfigError::InvalidRateLimit(
                    "per_source_burst = 0 (must be at least 1)".into(),
                ));
            }
            rate_limit.burst = b;
        }
        if let Some(c) = r.per_source_connections {
            if c == 0 {
                return Err(ConfigError::InvalidRateLimit(
                    "per_source_connections = 0 (must be at least 1)".into(),
                ));
            }
            rate_limit.connections = c;
        }
    }
    let mut https = Https::default();
    if let Some(v) = file.https.and_then(|h| h.client_hello_timeout_secs) {
        if !(1..=MAX_CLIENT_HELLO_TIMEOUT_SECS).contains(&v) {
            return Err(ConfigError::InvalidHttps(format!(
                "client_hello_timeout_secs = {v} (must be 1 to {MAX_CLIENT_HELLO_TIMEOUT_SECS} seconds)"
            )));
        }
        https.client_hello_timeout_secs = v;
    }

    let mut tcb_floors = TcbFloors::default();
    if let Some(f) = file.tcb_floor {
        let floor = |t: Option<FileTcb>, p| t.map(|t| t.floor(p)).transpose();
        tcb_floors.milan = floor(f.milan, Product::Milan)?;
        tcb_floors.genoa = floor(f.genoa, Product::Genoa)?;
        tcb_floors.turin = floor(f.turin, Product::Turin)?;
    }

    let mut revocation = RevocationPolicy::default();
    if let Some(r) = file.revocation {
        if let Some(v) = r.missing {
            revocation.missing = crl_policy("missing", &v)?;
        }
        if let Some(v) = r.stale {
            revocation.stale = crl_policy("stale", &v)?;
        }
    }

    let mut store = StoreConfig::default();
    if let Some(f) = file.store {
        store.url = f.url;
        store.password_file = f.password_file.map(in_file);
        store.ca_file = f.ca_file.map(in_file);
    }
    if let Some(url) = &args.store {
        store.url = Some(url.clone());
    }
    if let Some(url) = &store.url {
        let ok = url.starts_with("postgresql://")
            || url.starts_with("postgres://")
            || (url.contains('=') && !url.contains("://"));
        if !ok {
            return Err(ConfigError::InvalidStore(
                "url must be a postgresql:// URL or a libpq key=value string; leave it out \
                 to keep the embedded store in the state directory"
                    .into(),
            ));
        }
    } else if store.password_file.is_some() || store.ca_file.is_some() {
        return Err(ConfigError::InvalidStore(
            "password_file and ca_file need url (the embedded store has no password)".into(),
        ));
    }

    let metrics_listen = match file.metrics.and_then(|m| m.listen) {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            ConfigError::InvalidMetrics(format!(
                "listen = {:?} is not an address:port such as \"127.0.0.1:9750\"",
                s.chars().take(200).collect::<String>()
            ))
        })?),
    };

    Ok(Config {
        metrics_listen,
        store,
        revocation,
        source,
        dropins,
        state_dir,
        bus,
        listen,
        import_dir,
        tls_cert,
        tls_key,
        test_roots,
        kds,
        attest,
        rate_limit,
        https,
        tcb_floors,
    })
}

impl Config {
    /// Logs what the daemon runs with; call once at every start, after
    /// logging is set up. Every simulated test root is a WARNING: a
    /// production daemon must never trust one.
    pub fn log_summary(&self) {
        match &self.source {
            Some(p) => tracing::info!(config = %p.display(), "configuration read"),
            None => tracing::info!("no configuration file; using defaults"),
        }
        for p in &self.dropins {
            tracing::info!(dropin = %p.display(), "configuration drop-in merged");
        }
        tracing::info!(
            state_dir = %self.state_dir.display(),
            import_dir = %self.import_dir.display(),
            bus = %self.bus,
            listen = %self.listen,
            kds = self.kds.enabled,
            store = if self.store.is_sled() { "sled (state directory)" } else { "postgresql" },
            nonce_lifetime_secs = self.attest.nonce_lifetime_secs,
            "settings"
        );
        for p in Product::ALL {
            match self.tcb_floors.get(p) {
                Some(f) => tracing::info!(
                    product = %p,
                    "daemon-wide TCB floor for {p}: {}, applied to every record",
                    floor_text(f)
                ),
                None => tracing::info!(
                    product = %p,
                    "no daemon-wide TCB floor for {p}: only each record's own minimum applies"
                ),
            }
        }
        let policy = |p: CrlPolicy| match p {
            CrlPolicy::Fail => "fail",
            CrlPolicy::Warn => "warn",
        };
        tracing::info!(
            missing = policy(self.revocation.missing),
            stale = policy(self.revocation.stale),
            "revocation: every chain is checked against the daemon's own ARK CRL \
             ([revocation] missing = {:?}, stale = {:?})",
            policy(self.revocation.missing),
            policy(self.revocation.stale),
        );
        for root in &self.test_roots {
            tracing::warn!(
                product = %root.product,
                ark_path = %root.ark_path.display(),
                "TRUSTING A SIMULATED PLATFORM ROOT for {}: attestation results are \
                 meaningless for real hardware; remove test_roots from the configuration \
                 on any production host",
                root.product
            );
        }
    }
}

/// A TCB minimum as `bl=N,tee=N,snp=N,ucode=N[,fmc=N]`.
pub fn floor_text(t: &MinTcb) -> String {
    let mut s = format!(
        "bl={},tee={},snp={},ucode={}",
        t.bootloader, t.tee, t.snp, t.microcode
    );
    if let Some(f) = t.fmc {
        s.push_str(&format!(",fmc={f}"));
    }
    s
}

fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The text of configuration file `path`; None when it does not exist.
fn read_file(path: &Path) -> Result<Option<String>, ConfigError> {
    use std::io::Read;
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read(io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        ))));
    }
    Ok(Some(text))
}

/// One file as a table for merging: checked against the schema first (so
/// an error names this file, the key and its line), with its relative
/// paths made absolute against its own directory.
fn file_table(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    parse(text, path)?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let anchor = |v: &mut toml::Value| {
        if let Some(p) = v.as_str() {
            *v = toml::Value::String(dir.join(p).to_string_lossy().into_owned());
        }
    };
    for key in ["state_dir", "import_dir", "tls_cert", "tls_key"] {
        if let Some(v) = table.get_mut(key) {
            anchor(v);
        }
    }
    if let Some(roots) = table.get_mut("test_roots").and_then(|r| r.as_array_mut()) {
        for root in roots.iter_mut().filter_map(|r| r.as_table_mut()) {
            if let Some(v) = root.get_mut("ark_path") {
                anchor(v);
            }
        }
    }
    Ok(table)
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The drop-ins of `dirs` (earlier directories are overridden by later
/// ones file name by file name), ordered by file name. Missing
/// directories are fine; files not ending in `.toml` are ignored.
fn dropin_files(dirs: &[&Path]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        let read = |source| ConfigError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read(e)),
        };
        let mut n = 0;
        for entry in entries {
            let name = entry.map_err(read)?.file_name();
            if Path::new(&name).extension().is_none_or(|e| e != "toml") {
                continue;
            }
            n += 1;
            if n > MAX_DROPINS {
                return Err(read(io::Error::other(format!(
                    "more than {MAX_DROPINS} drop-in files"
                ))));
            }
            by_name.insert(name.clone(), dir.join(name));
        }
    }
    Ok(by_name.into_values().collect())
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 3000))
}

fn absolute(p: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(p).map_err(|source| ConfigError::Absolute {
        path: p.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("snpguardd").chain(list.iter().copied()))
            .expect("arguments parse")
    }

    fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("snpguardd.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    #[test]
    fn cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn help_fits_80_columns() {
        let help = Args::command().render_long_help().to_string();
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
    }

    #[test]
    fn default_listen_constant_matches() {
        assert_eq!(
            DEFAULT_LISTEN.parse::<SocketAddr>().ok(),
            Some(default_listen())
        );
    }

    #[test]
    fn parses_every_argument() {
        let a = args(&[
            "--config",
            "/x/c.toml",
            "--state-dir",
            "/s",
            "--bus",
            "unix:path=/tmp/bus",
            "--listen",
            "127.0.0.1:8443",
        ]);
        assert_eq!(a.config, Some(PathBuf::from("/x/c.toml")));
        assert_eq!(a.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(a.bus, Some(Bus::Address("unix:path=/tmp/bus".into())));
        assert_eq!(a.listen, Some("127.0.0.1:8443".parse().expect("addr")));
        assert_eq!(args(&["--bus", "session"]).bus, Some(Bus::Session));
        assert_eq!(args(&["--bus", "system"]).bus, Some(Bus::System));
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            &["--bus", "sytem"][..],
            &["--bus", ":path=/x"],
            &["--listen", "3000"],
            &["--listen", "localhost:3000"],
            &["--frobnicate"],
        ] {
            let argv = std::iter::once("snpguardd").chain(bad.iter().copied());
            assert!(Args::try_parse_from(argv).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn bus_addresses() {
        for ok in [
            "unix:path=/run/dbus/system_bus_socket",
            "unix:abstract=/tmp/dbus-x,guid=0123",
            "tcp:host=127.0.0.1,port=1234;unix:path=/x",
        ] {
            assert_eq!(ok.parse::<Bus>().ok(), Some(Bus::Address(ok.into())));
        }
        for bad in ["", "nocolon", ":x", "un ix:path=/x"] {
            assert!(bad.parse::<Bus>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn missing_default_file_gives_defaults() {
        // The default path does not exist on a build machine; if it ever
        // does, this test is not about that host's configuration.
        if Path::new(DEFAULT_CONFIG_PATH).exists() {
            return;
        }
        let c = resolve(&args(&[])).expect("defaults");
        assert_eq!(c.source, None);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/snpguard"));
        assert_eq!(c.import_dir, PathBuf::from("/var/lib/snpguard/import"));
        assert_eq!(c.bus, Bus::System);
        assert_eq!(c.listen, "0.0.0.0:3000".parse().expect("addr"));
        assert_eq!(c.tls_cert, None);
        assert_eq!(c.tls_key, None);
        assert!(c.test_roots.is_empty());
        assert!(c.kds.enabled);
    }

    /// `files` (name, text) written under `dir`, creating directories.
    fn write_all(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
    }

    #[test]
    fn dropins_merge_over_the_main_file_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_all(
            d,
            &[
                (
                    "etc/snpguardd.toml",
                    "listen = \"127.0.0.1:9000\"\nbus = \"session\"\n\
                     [kds]\nenabled = false\n\
                     [[test_roots]]\nproduct = \"genoa\"\nark_path = \"main-ark.pem\"\n",
                ),
                // Masked by /etc's file of the same name.
                (
                    "vendor/10-base.toml",
                    "[rate_limit]\nper_source_burst = 5\n",
                ),
                // Applies: nothing in /etc is named like it.
                (
                    "vendor/30-https.toml",
                    "[https]\nclient_hello_timeout_secs = 7\n",
                ),
                ("etc/snpguardd.toml.d/10-base.toml", "bus = \"system\"\n"),
                (
                    "etc/snpguardd.toml.d/20-roots.toml",
                    "[[test_roots]]\nproduct = \"milan\"\nark_path = \"ark.pem\"\n\
                     [attest]\nnonce_lifetime_secs = 30\n",
                ),
                ("etc/snpguardd.toml.d/README", "not toml"),
            ],
        );
        let main = d.join("etc/snpguardd.toml");
        let c = resolve_with(
            &args(&["--config", main.to_str().expect("utf-8")]),
            &d.join("vendor"),
        )
        .expect("merged");
        assert_eq!(c.source, Some(main.clone()));
        assert_eq!(
            c.dropins,
            [
                d.join("etc/snpguardd.toml.d/10-base.toml"),
                d.join("etc/snpguardd.toml.d/20-roots.toml"),
                d.join("vendor/30-https.toml"),
            ]
        );
        // Later files win key by key; tables merge.
        assert_eq!(c.bus, Bus::System);
        assert_eq!(c.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert!(!c.kds.enabled);
        assert_eq!(c.attest.nonce_lifetime_secs, 30);
        assert_eq!(c.https.client_hello_timeout_secs, 7);
        assert_eq!(c.rate_limit.burst, RateLimit::default().burst, "masked");
        // An array is replaced, and a path is relative to its own file.
        assert_eq!(
            c.test_roots,
            [TestRoot {
                product: Product::Milan,
                ark_path: d.join("etc/snpguardd.toml.d/ark.pem"),
            }]
        );

        // A symlink to /dev/null masks a packaged drop-in.
        std::os::unix::fs::symlink("/dev/null", d.join("etc/snpguardd.toml.d/30-https.toml"))
            .expect("symlink");
        let c = resolve_with(
            &args(&["--config", main.to_str().expect("utf-8")]),
            &d.join("vendor"),
        )
        .expect("merged");
        assert_eq!(c.https, Https::default());

        // Without a main file the drop-ins still apply (default path
        // semantics: the main file may be absent).
        std::fs::remove_file(&main).expect("rm");
        let e = resolve_with(
            &args(&["--config", main.to_str().expect("utf-8")]),
            &d.join("vendor"),
        )
        .expect_err("an explicit main file must exist");
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    }

    #[test]
    fn an_error_in_a_dropin_names_the_dropin_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write_all(
            d,
            &[
                ("snpguardd.toml", "bus = \"system\"\n"),
                ("snpguardd.toml.d/50-typo.toml", "[kds]\nenabeld = true\n"),
            ],
        );
        let main = d.join("snpguardd.toml");
        let e = resolve_with(
            &args(&["--config", main.to_str().expect("utf-8")]),
            &d.join("none"),
        )
        .expect_err("typo");
        let msg = e.to_string();
        assert!(
            msg.contains("50-typo.toml") && msg.contains("enabeld"),
            "{msg}"
        );
        // A value that is valid alone but wrong merged is named too.
        write_all(
            d,
            &[(
                "snpguardd.toml.d/50-typo.toml",
                "[rate_limit]\nper_source_burst = 0\n",
            )],
        );
        let e = resolve_with(
            &args(&["--config", main.to_str().expect("utf-8")]),
            &d.join("none"),
        )
        .expect_err("burst 0");
        assert!(e.to_string().contains("per_source_burst = 0"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("absent.toml");
        let err = resolve(&args(&["--config", p.to_str().expect("utf-8")])).expect_err("must fail");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn full_file_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_config(
            &dir,
            r#"
state_dir = "/srv/snpguard"
bus = "session"
listen = "127.0.0.1:4443"
import_dir = "/srv/drop"
tls_cert = "tls/cert.pem"
tls_key = "/etc/snpguard/key.pem"

[kds]
enabled = false

[[test_roots]]
product = "genoa"
ark_path = "sim/ark.pem"
"#,
        );
        let c = resolve(&args(&["--config", p.to_str().expect("utf-8")])).expect("config");
        assert_eq!(c.source.as_deref(), Some(p.as_path()));
        assert_eq!(c.state_dir, PathBuf::from("/srv/snpguard"));
        assert_eq!(c.bus, Bus::Session);
        assert_eq!(c.listen, "127.0.0.1:4443".parse().expect("addr"));
        assert_eq!(c.import_dir, PathBuf::from("/srv/drop"));
        assert_eq!(c.tls_cert, Some(dir.path().join("tls/cert.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/snpguard/key.pem")));
        assert_eq!(
            c.test_roots,
            vec![TestRoot {
                product: Product::Genoa,
                ark_path: dir.path().join("sim/ark.pem"),
            }]
        );
        assert!(!c.kds.enabled);
    }

    #[test]
    fn command_line_overrides_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_config(
            &dir,
            "state_dir = \"/srv/a\"\nbus = \"session\"\nlisten = \"127.0.0.1:1\"\n",
        );
        let c = resolve(&args(&[
            "--config",
            p.to_str().expect("utf-8"),
            "--state-dir",
            "/srv/b",
            "--bus",
            "unix:path=/tmp/b",
            "--listen",
            "[::1]:2",
        ]))
        .expect("config");
        assert_eq!(c.state_dir, PathBuf::from("/srv/b"));
        // The import dir follows the overridden state dir.
        assert_eq!(c.import_dir, PathBuf::from("/srv/b/import"));
        assert_eq!(c.bus, Bus::Address("unix:path=/tmp/b".into()));
        assert_eq!(c.listen, "[::1]:2".parse().expect("addr"));
    }

    #[test]
    fn relative_state_dir_on_command_line_is_made_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_config(&dir, "");
        let c = resolve(&args(&[
            "--config",
            p.to_str().expect("utf-8"),
            "--state-dir",
            "rel/state",
        ]))
        .expect("config");
        assert!(c.state_dir.is_absolute());
        assert!(c.state_dir.ends_with("rel/state"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, key) in [
            ("state_dri = \"/x\"\n", "state_dri"),
            ("[kds]\nenabeld = true\n", "enabeld"),
            (
                "[[test_roots]]\nproduct = \"milan\"\nark_path = \"/a\"\nark = \"/b\"\n",
                "ark",
            ),
        ] {
            let p = write_config(&dir, text);
            let err =
                resolve(&args(&["--config", p.to_str().expect("utf-8")])).expect_err("must fail");
            assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
            assert!(err.to_string().contains(key), "{key} not named in: {err}");
        }
    }

    #[test]
    fn invalid_values_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        type Check = fn(&ConfigError) -> bool;
        let cases: [(&str, Check); 6] = [
            ("bus = \"sytem\"\n", |e| {
                matches!(e, ConfigError::InvalidBus(_))
            }),
            ("listen = \"3000\"\n", |e| {
                matches!(e, ConfigError::InvalidListen(_))
            }),
            ("tls_cert = \"/c.pem\"\n", |e| {
                matches!(e, ConfigError::TlsHalfConfigured)
            }),
            (
                "[[test_roots]]\nproduct = \"naples\"\nark_path = \"/a\"\n",
                |e| matches!(e, ConfigError::UnknownProduct(_)),
            ),
            ("[kds]\nenabled = \"yes\"\n", |e| {
                matches!(e, ConfigError::Parse { .. })
            }),
            ("state_dir = 3\n", |e| {
                matches!(e, ConfigError::Parse { .. })
            }),
        ];
        for (text, expected) in cases {
            let p = write_config(&dir, text);
            let err =
                resolve(&args(&["--config", p.to_str().expect("utf-8")])).expect_err("must fail");
            assert!(expected(&err), "{text:?} gave {err}");
        }
    }

    #[test]
    fn revocation_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolve_text = |t: &str| {
            let p = write_config(&dir, t);
            resolve(&args(&["--config", p.to_str().expect("utf-8")]))
        };
        let c = resolve_text("").expect("defaults");
        assert_eq!(
            c.revocation,
            RevocationPolicy {
                missing: CrlPolicy::Warn,
                stale: CrlPolicy::Fail
            }
        );
        let c = resolve_text("[revocation]\nmissing = \"fail\"\nstale = \"warn\"\n").expect("ok");
        assert_eq!(
            c.revocation,
            RevocationPolicy {
                missing: CrlPolicy::Fail,
                stale: CrlPolicy::Warn
            }
        );
        let e = resolve_text("[revocation]\nmissing = \"ignore\"\n").expect_err("refused");
        assert!(e.to_string().contains("\"fail\" or \"warn\""), "{e}");
        let e = resolve_text("[revocation]\nexpired = \"warn\"\n").expect_err("refused");
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn test_roots_need_both_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_config(&dir, "[[test_roots]]\nproduct = \"milan\"\n");
        let err = resolve(&args(&["--config", p.to_str().expect("utf-8")])).expect_err("must fail");
        assert!(err.to_string().contains("ark_path"), "{err}");
    }

    #[test]
    fn rate_limit_section() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let args = |p: &Path| Args {
            config: Some(p.to_owned()),
            state_dir: None,
            bus: None,
            listen: None,
            store: None,
            command: None,
        };
        std::fs::write(&path, "").expect("write");
        assert_eq!(
            resolve(&args(&path)).expect("ok").rate_limit,
            RateLimit::default()
        );
        std::fs::write(
            &path,
            "[rate_limit]\nper_source_per_second = 5.5\nper_source_burst = 7\nper_source_connections = 3\n",
        )
        .expect("write");
        let r = resolve(&args(&path)).expect("ok").rate_limit;
        assert_eq!((r.per_second, r.burst, r.connections), (5.5, 7, 3));
        for bad in [
            "[rate_limit]\nper_source_per_second = 0.0\n",
            "[rate_limit]\nper_source_per_second = -1.0\n",
            "[rate_limit]\nper_source_burst = 0\n",
            "[rate_limit]\nper_source_connections = 0\n",
            "[rate_limit]\nunknown = 1\n",
        ] {
            std::fs::write(&path, bad).expect("write");
            assert!(resolve(&args(&path)).is_err(), "{bad}");
        }
    }

    #[test]
    fn tcb_floor_tables_per_product() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, "");
        let a = args(&["--config", path.to_str().expect("utf-8")]);
        assert_eq!(resolve(&a).expect("ok").tcb_floors, TcbFloors::default());
        std::fs::write(
            &path,
            "[tcb_floor.milan]\nbootloader = 4\ntee = 0\nsnp = 24\nmicrocode = 213\n\
             [tcb_floor.turin]\nbootloader = 1\ntee = 0\nsnp = 2\nmicrocode = 71\nfmc = 1\n",
        )
        .expect("write");
        let f = resolve(&a).expect("ok").tcb_floors;
        assert_eq!(
            f.milan,
            Some(MinTcb {
                bootloader: 4,
                tee: 0,
                snp: 24,
                microcode: 213,
                fmc: None
            })
        );
        assert_eq!(f.genoa, None);
        assert_eq!(f.turin.and_then(|t| t.fmc), Some(1));
        for (bad, said) in [
            (
                "[tcb_floor.turin]\nbootloader = 1\ntee = 0\nsnp = 2\nmicrocode = 71\n",
                "needs fmc",
            ),
            (
                "[tcb_floor.genoa]\nbootloader = 1\ntee = 0\nsnp = 2\nmicrocode = 71\nfmc = 0\n",
                "only Turin",
            ),
            (
                "[tcb_floor.milan]\nbootloader = 1\ntee = 0\nsnp = 2\n",
                "microcode",
            ),
            ("[tcb_floor.rome]\nbootloader = 1\n", "rome"),
            (
                "[tcb_floor.milan]\nbootloader = 256\ntee = 0\nsnp = 2\nmicrocode = 1\n",
                "bootloader",
            ),
        ] {
            std::fs::write(&path, bad).expect("write");
            let e = resolve(&a).expect_err(bad);
            assert!(e.to_string().contains(said), "{bad}: {e}");
        }
    }

    #[test]
    fn attest_section_bounds_the_nonce_lifetime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, "");
        let a = args(&["--config", path.to_str().expect("utf-8")]);
        assert_eq!(
            resolve(&a).expect("ok").attest.nonce_lifetime_secs,
            NONCE_LIFETIME_SECS
        );
        std::fs::write(&path, "[attest]\nnonce_lifetime_secs = 1\n").expect("write");
        assert_eq!(resolve(&a).expect("ok").attest.nonce_lifetime_secs, 1);
        for bad in [
            "[attest]\nnonce_lifetime_secs = 0\n".to_owned(),
            format!(
                "[attest]\nnonce_lifetime_secs = {}\n",
                NONCE_MAX_LIFETIME_SECS + 1
            ),
            "[attest]\nnonce_lifetime = 5\n".to_owned(),
        ] {
            std::fs::write(&path, &bad).expect("write");
            let e = resolve(&a).expect_err(&bad);
            assert!(e.to_string().contains("nonce_lifetime"), "{bad}: {e}");
        }
    }

    #[test]
    fn https_section_bounds_the_client_hello_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, "");
        let a = args(&["--config", path.to_str().expect("utf-8")]);
        assert_eq!(resolve(&a).expect("ok").https, Https::default());
        assert_eq!(Https::default().client_hello_timeout_secs, 5);
        std::fs::write(&path, "[https]\nclient_hello_timeout_secs = 2\n").expect("write");
        assert_eq!(resolve(&a).expect("ok").https.client_hello_timeout_secs, 2);
        for bad in [
            "[https]\nclient_hello_timeout_secs = 0\n".to_owned(),
            format!(
                "[https]\nclient_hello_timeout_secs = {}\n",
                MAX_CLIENT_HELLO_TIMEOUT_SECS + 1
            ),
            "[https]\nclient_hello_timeout = 5\n".to_owned(),
        ] {
            std::fs::write(&path, &bad).expect("write");
            let e = resolve(&a).expect_err(&bad);
            assert!(e.to_string().contains("client_hello_timeout"), "{bad}: {e}");
        }
    }
}
