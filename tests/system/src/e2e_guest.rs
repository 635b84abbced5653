//! The end-to-end guest: one bootable conversion shared by two test
//! binaries, so a cold `make test` converts the split layout once instead
//! of twice (each conversion is minutes of TCG).
//!
//! `snpguardctl`'s split-layout conversion test (tests/convert.rs,
//! `make test-convert`) converts the `--marker split` image with the
//! agent's simulator build, the real initrd modules and a server address
//! the guest can reach, checks it like every other conversion, and then
//! [`publish`]es it here. `tests/e2e.rs` ([`load`]) boots its refusals
//! from it. The directory (`build/e2e-guest`) holds:
//!
//! - `guest.qcow2`: the converted image (cases boot qcow2 overlays of it);
//! - `staging/`: what convert extracted, the VMK sealed to `ingestion.key`;
//! - `ingestion.key`: the conversion's throw-away ingestion secret (a test
//!   key, 0600), so the e2e test can re-seal the VMK to its own daemon;
//! - `tls/`: the CA baked into the guest and the server certificate and
//!   key (for 10.0.2.2 and 127.0.0.1) signed by it;
//! - `agent`: a copy of the agent the guest carries;
//! - `manifest.json`: the port baked into the guest's configuration, the
//!   image's marker token and when it was made.
//!
//! It is published by renaming a complete directory into place, so a
//! half-written guest is never loaded; [`load`] refuses one made with
//! another agent or older than [`MAX_AGE`] (its TLS certificates are
//! short-lived) and says to run the conversion again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cmd::{io, HarnessError};

/// The published guest's directory under the repository.
const DIR: &str = "build/e2e-guest";
/// Its description.
const MANIFEST: &str = "manifest.json";
/// A published guest older than this is stale (its certificates are
/// valid for two days).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// What rebuilds it.
const REBUILD: &str = "run `make test-e2e` (it converts the guest first) or `make test-convert`";

/// The published guest (see the module documentation).
#[derive(Debug, Clone)]
pub struct E2eGuest {
    /// Its directory.
    pub dir: PathBuf,
    /// The port in the guest's agent configuration (`https://10.0.2.2:PORT`).
    pub port: u16,
    /// The token the image's marker line carries.
    pub token: String,
}

impl E2eGuest {
    /// The converted image.
    pub fn image(&self) -> PathBuf {
        self.dir.join("guest.qcow2")
    }
    /// The staging directory convert wrote.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("staging")
    }
    /// The ingestion secret the VMK in `staging/vmk.sealed` is sealed to.
    pub fn ingestion_key(&self) -> PathBuf {
        self.dir.join("ingestion.key")
    }
    /// `ca.pem`, `server.pem` and `server.key`.
    pub fn tls(&self) -> PathBuf {
        self.dir.join("tls")
    }
}

/// Where the guest is published.
pub fn dir() -> PathBuf {
    crate::repo_root().join(DIR)
}

/// A fresh directory beside the published one to lay a guest out in
/// (`guest.qcow2`, `staging/`, `ingestion.key`, `tls/`, `agent`) before
/// [`publish`]; emptied if a crashed run left it.
pub fn staging_area() -> Result<PathBuf, HarnessError> {
    let p = crate::repo_root().join(format!("{DIR}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    io("creating", &p, std::fs::create_dir_all(&p))?;
    Ok(p)
}

/// Writes the manifest into `area` (laid out by the caller) and renames
/// it into place over any earlier guest.
pub fn publish(area: &Path, port: u16, token: &str) -> Result<E2eGuest, HarnessError> {
    for f in ["guest.qcow2", "staging", "ingestion.key", "tls", "agent"] {
        if !area.join(f).exists() {
            return Err(HarnessError::Fixture(format!(
                "{}: {f} is missing; nothing published",
                area.display()
            )));
        }
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let manifest = serde_json::json!({ "port": port, "token": token, "created": created });
    let path = area.join(MANIFEST);
    io(
        "writing",
        &path,
        std::fs::write(&path, manifest.to_string()),
    )?;
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    io("publishing", &dir, std::fs::rename(area, &dir))?;
    Ok(E2eGuest {
        dir,
        port,
        token: token.to_owned(),
    })
}

/// The published guest, if it was converted with `agent` less than
/// [`MAX_AGE`] ago; otherwise an error saying what to run.
pub fn load(agent: &Path) -> Result<E2eGuest, HarnessError> {
    let dir = dir();
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        HarnessError::Fixture(format!(
            "no end-to-end guest ({}: {e}); {REBUILD}",
            path.display()
        ))
    })?;
    let bad = |what: &str| HarnessError::Fixture(format!("{}: {what}; {REBUILD}", path.display()));
    let m: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("not JSON"))?;
    let port = m["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| bad("no port"))?;
    let token = m["token"]
        .as_str()
        .ok_or_else(|| bad("no token"))?
        .to_owned();
    let created = m["created"]
        .as_u64()
        .ok_or_else(|| bad("no creation time"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.saturating_sub(created) > MAX_AGE.as_secs() {
        return Err(bad("older than a day (its TLS certificates expire)"));
    }
    let want = io("reading", agent, std::fs::read(agent))?;
    let copy = dir.join("agent");
    let have = io("reading", &copy, std::fs::read(&copy))?;
    if want != have {
        return Err(bad(&format!(
            "converted with another agent than {}",
            agent.display()
        )));
    }
    Ok(E2eGuest { dir, port, token })
}
