//! The in-process sandbox, applied after setup and before serving
//! anything: `no_new_privs`, a Landlock filesystem ruleset, and no
//! capabilities at all.
//!
//! It complements the unit's hardening (which only applies under systemd)
//! so that a daemon started by hand or by a test is confined too.
//!
//! Landlock and capabilities are per thread: [`apply`] must run while the
//! process has a single thread, i.e. before the tokio runtime (or anything
//! else that spawns threads) starts. Every thread created afterwards
//! inherits the restrictions.

use std::io;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, ABI,
};

use crate::config::Config;

/// The Landlock ABI whose rights are requested. Pinned, so that a newer
/// kernel does not start denying what this version of the daemon was
/// written and tested against (ABI 9 adds control over connecting to
/// pathname UNIX sockets, which the D-Bus and journal sockets are).
const LANDLOCK_ABI: ABI = ABI::V7;

/// Files outside the daemon's own directories that it reads when it talks
/// to AMD KDS: name resolution and the system's CA certificates.
const KDS_READ_ONLY: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
];

/// What the sandboxed process may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Directories (and everything beneath) the daemon reads and writes.
    /// Each must exist.
    pub read_write: Vec<PathBuf>,
    /// Files and directories the daemon only reads. Each must exist.
    pub read_only: Vec<PathBuf>,
    /// Read-only paths used when present and skipped when absent (system
    /// files that differ between distributions).
    pub read_only_if_present: Vec<PathBuf>,
}

impl SandboxSpec {
    /// The sandbox for a configuration: read-write on the state and import
    /// directories; read-only on the configuration file's directory,
    /// `$CREDENTIALS_DIRECTORY`, the TLS files, test roots, and (when KDS
    /// is enabled) what name resolution and TLS to AMD need.
    pub fn for_config(config: &Config) -> SandboxSpec {
        let mut spec = SandboxSpec {
            read_write: vec![config.state_dir.clone(), config.import_dir.clone()],
            ..SandboxSpec::default()
        };
        if let Some(dir) = config.source.as_deref().and_then(Path::parent) {
            spec.read_only.push(dir.to_path_buf());
        }
        if let Some(creds) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            spec.read_only.push(PathBuf::from(creds));
        }
        spec.read_only.extend(config.tls_cert.iter().cloned());
        spec.read_only.extend(config.tls_key.iter().cloned());
        spec.read_only
            .extend(config.store.password_file.iter().cloned());
        spec.read_only.extend(config.store.ca_file.iter().cloned());
        spec.read_only
            .extend(config.test_roots.iter().map(|r| r.ark_path.clone()));
        if config.kds.enabled {
            spec.read_only_if_present
                .extend(KDS_READ_ONLY.iter().map(PathBuf::from));
        }
        spec
    }
}

/// How much of the Landlock ruleset the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockEnforcement {
    /// Every requested restriction is enforced.
    Full,
    /// An older kernel enforces a subset (best effort).
    Partial,
    /// The kernel has no Landlock (or it is disabled).
    None,
}

/// What [`apply`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Landlock enforcement.
    pub landlock: LandlockEnforcement,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
    /// The capability bounding set is empty. It cannot be cleared without
    /// CAP_SETPCAP (an unprivileged run); with no_new_privs set, nothing
    /// can regain a capability through exec either way.
    pub bounding_set_empty: bool,
}

/// Why the sandbox could not be applied. Any of these stops the daemon:
/// serving without the sandbox the operator expects is worse than not
/// serving.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A path the daemon needs is missing or cannot be opened.
    #[error("sandbox path {path}: {source}")]
    Path {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Setting `no_new_privs` failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] rustix::io::Errno),
    /// Building or enforcing the Landlock ruleset failed.
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// Dropping a capability set failed.
    #[error("dropping the {set} capability set: {message}")]
    Caps {
        /// Which set.
        set: &'static str,
        /// The error.
        message: String,
    },
}

/// Confines the calling thread and every thread it creates afterwards.
/// Call while the process is single-threaded; see the module docs.
pub fn apply(spec: &SandboxSpec) -> Result<SandboxStatus, SandboxError> {
    rustix::thread::set_no_new_privs(true).map_err(SandboxError::NoNewPrivs)?;
    let landlock = restrict_filesystem(spec)?;
    let bounding_set_empty = drop_capabilities()?;
    let no_new_privs = rustix::thread::no_new_privs().unwrap_or(false);
    Ok(SandboxStatus {
        landlock,
        no_new_privs,
        bounding_set_empty,
    })
}

impl SandboxStatus {
    /// Logs the outcome: info when fully confined, a warning otherwise.
    pub fn log(&self) {
        match self.landlock {
            LandlockEnforcement::Full => tracing::info!(
                landlock = "full",
                no_new_privs = self.no_new_privs,
                bounding_set_empty = self.bounding_set_empty,
                "sandbox applied: landlock fully enforced, no capabilities"
            ),
            LandlockEnforcement::Partial => tracing::warn!(
                landlock = "partial",
                no_new_privs = self.no_new_privs,
                bounding_set_empty = self.bounding_set_empty,
                "sandbox applied: landlock only partially enforced by this kernel, \
                 no capabilities; a kernel with Landlock ABI 7 confines fully"
            ),
            LandlockEnforcement::None => tracing::warn!(
                landlock = "none",
                no_new_privs = self.no_new_privs,
                bounding_set_empty = self.bounding_set_empty,
                "sandbox applied WITHOUT landlock (not supported or disabled: add \
                 lsm=landlock to the kernel command line); capabilities dropped"
            ),
        }
    }
}

fn restrict_filesystem(spec: &SandboxSpec) -> Result<LandlockEnforcement, SandboxError> {
    // The daemon never executes anything, so no rule grants Execute.
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let write = AccessFs::from_all(LANDLOCK_ABI) & !AccessFs::Execute;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .create()?;
    for path in &spec.read_write {
        ruleset = ruleset.add_rule(rule(path, write)?)?;
    }
    for path in &spec.read_only {
        ruleset = ruleset.add_rule(rule(path, read)?)?;
    }
    for path in &spec.read_only_if_present {
        match rule(path, read) {
            Ok(r) => ruleset = ruleset.add_rule(r)?,
            Err(SandboxError::Path { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let status = ruleset.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockEnforcement::Full,
        RulesetStatus::PartiallyEnforced => LandlockEnforcement::Partial,
        RulesetStatus::NotEnforced => LandlockEnforcement::None,
    })
}

/// A rule for `path`, restricted to the rights that make sense for its
/// type (a file cannot hold directory rights).
fn rule(path: &Path, access: BitFlags<AccessFs>) -> Result<PathBeneath<PathFd>, SandboxError> {
    let meta = std::fs::metadata(path).map_err(|source| SandboxError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    let fd = PathFd::new(path).map_err(|e| SandboxError::Path {
        path: path.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(LANDLOCK_ABI)
    };
    Ok(PathBeneath::new(fd, access))
}

/// Empties every capability set. Returns whether the bounding set is empty
/// (see [`SandboxStatus::bounding_set_empty`]). Sets that are already empty
/// are left alone, so under the unit (which grants nothing and denies
/// `capset` by seccomp) this makes no system call that could fail.
fn drop_capabilities() -> Result<bool, SandboxError> {
    let caps_err = |set: &'static str| {
        move |e: caps::errors::CapsError| SandboxError::Caps {
            set,
            message: e.to_string(),
        }
    };
    let held = |set: CapSet, name: &'static str| {
        caps::read(None, set)
            .map(|c| !c.is_empty())
            .map_err(caps_err(name))
    };
    // The bounding set first: shrinking it needs CAP_SETPCAP, which the
    // following steps give up.
    if held(CapSet::Bounding, "bounding")?
        && caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(caps_err("effective"))?
    {
        caps::clear(None, CapSet::Bounding).map_err(caps_err("bounding"))?;
    }
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        if held(set, name)? {
            caps::clear(None, set).map_err(caps_err(name))?;
        }
    }
    Ok(!held(CapSet::Bounding, "bounding")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bus, Kds, TestRoot};
    use snpguard::certs::Product;

    fn config() -> Config {
        Config {
            source: Some(PathBuf::from("/etc/snpguard/snpguardd.toml")),
            dropins: Vec::new(),
            state_dir: PathBuf::from("/var/lib/snpguard"),
            bus: Bus::System,
            listen: "0.0.0.0:3000".parse().expect("addr"),
            import_dir: PathBuf::from("/var/lib/snpguard/import"),
            tls_cert: Some(PathBuf::from("/etc/tls/c.pem")),
            tls_key: Some(PathBuf::from("/etc/tls/k.pem")),
            test_roots: vec![TestRoot {
                product: Product::Milan,
                ark_path: PathBuf::from("/sim/ark.pem"),
            }],
            kds: Kds { enabled: false },
            attest: Default::default(),
            rate_limit: Default::default(),
            https: Default::default(),
            tcb_floors: Default::default(),
            revocation: Default::default(),
            store: Default::default(),
            metrics_listen: None,
        }
    }

    #[test]
    fn spec_for_config_lists_only_what_the_daemon_uses() {
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() {
            return;
        }
        let spec = SandboxSpec::for_config(&config());
        assert_eq!(
            spec.read_write,
            vec![
                PathBuf::from("/var/lib/snpguard"),
                PathBuf::from("/var/lib/snpguard/import")
            ]
        );
        assert_eq!(
            spec.read_only,
            vec![
                PathBuf::from("/etc/snpguard"),
                PathBuf::from("/etc/tls/c.pem"),
                PathBuf::from("/etc/tls/k.pem"),
                PathBuf::from("/sim/ark.pem"),
            ]
        );
        assert!(spec.read_only_if_present.is_empty());
    }

    #[test]
    fn kds_adds_resolver_and_ca_files() {
        let mut c = config();
        c.kds.enabled = true;
        let spec = SandboxSpec::for_config(&c);
        assert!(spec
            .read_only_if_present
            .contains(&PathBuf::from("/etc/resolv.conf")));
        assert!(spec
            .read_only_if_present
            .contains(&PathBuf::from("/etc/ssl/certs")));
    }

    #[test]
    fn missing_required_path_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            rule(&dir.path().join("absent"), AccessFs::ReadFile.into()).expect_err("must fail");
        assert!(matches!(err, SandboxError::Path { .. }), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
