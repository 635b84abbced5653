//! `snpguard-agent install-launch`: runs in the booted guest after a
//! renewal, and writes the guest's own next launch. Once an operator has
//! approved the launch the renewal created, the agent asks snpguardd for
//! its signed parts (`POST /v1/signed-launch`, a report binding a fresh
//! nonce and the launch id; the answer signed by the author key in this
//! guest's own report), checks that they belong to this guest's record,
//! and writes them with the kernel, initrd and command line it submitted
//! (read again from the encrypted root) and the firmware of the active
//! slot into the inactive slot of its LAUNCH_ARTIFACTS partition
//! ([`crate::slot`]): the members re-measured must be the signed
//! measurement, or nothing is switched. The next power cycle from the
//! partition boots the new launch.
//!
//! Not the boot path: nothing is powered off, and the launch that runs
//! now keeps booting whatever happens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use snpguard::report::Report;
use snpguard_protocol::attest::is_launch_id;
use snpguard_protocol::bundle::partition::LABEL;
use snpguard_protocol::bundle::LaunchConfig;

use crate::client::{self, Client};
use crate::config::AgentConfig;
use crate::console::say;
use crate::evidence::Source;
use crate::renew;
use crate::slot::{self, Installed, NewLaunch};

/// The partition udev names by its file system label.
pub const DEFAULT_DEVICE: &str = "/dev/disk/by-label/LAUNCH_ARTIFACTS";

/// Where the partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A block device, mounted by the agent for the write.
    Device(PathBuf),
    /// A directory where it is mounted already.
    Mounted(PathBuf),
}

/// What `install-launch` was asked to do.
pub struct Request<'a> {
    /// The launch id `renew` printed.
    pub launch: &'a str,
    /// The kernel, initrd and command line submitted by `renew`.
    pub artifacts: renew::Request<'a>,
    pub target: Target,
    /// How long to wait for the approval.
    pub wait: Duration,
    /// How often to ask while the launch is pending.
    pub poll: Duration,
}

/// The launch written, and where.
pub struct Outcome {
    pub installed: Installed,
    pub record: String,
    pub measurement: String,
}

/// The partition mounted at a private directory for as long as this
/// lives.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(device: &Path) -> anyhow::Result<Mount> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = PathBuf::from(format!("/run/snpguard-agent-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        use rustix::mount::{mount, MountFlags};
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        if let Err(e) = mount(device, &dir, "ext4", flags, None) {
            let _ = std::fs::remove_dir(&dir);
            bail!(
                "mounting {} (the {LABEL} partition) at {}: {e}; is the image's bundle \
                 embedded (snpguardctl embed)?",
                device.display(),
                dir.display()
            );
        }
        Ok(Mount { dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        match rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&self.dir);
            }
            Err(e) => say!("unmounting {}: {e}", self.dir.display()),
        }
    }
}

/// The signed launch must be one of this guest's record: the same image
/// and family IDs, keys and policy as the launch that runs now, whose
/// values the PSP put in its report.
pub fn check_same_record(config: &LaunchConfig, report: &Report) -> anyhow::Result<()> {
    let differs = |what: &str| {
        anyhow::anyhow!(
            "the signed launch's {what} is not the running launch's (in this guest's report); \
             it is not a launch of this guest's record"
        )
    };
    if config.image_id != hex::encode(report.image_id)
        || config.family_id != hex::encode(report.family_id)
    {
        return Err(differs("image or family ID"));
    }
    if config.id_key_digest != hex::encode(report.id_key_digest)
        || config.author_key_digest != hex::encode(report.author_key_digest)
    {
        return Err(differs("ID or author key"));
    }
    if config.guest_policy != format!("{:#x}", report.policy.0) {
        return Err(differs("guest policy"));
    }
    Ok(())
}

/// Asks until the launch is approved or `req.wait` has passed.
fn fetch(config: &AgentConfig, req: &Request<'_>) -> anyhow::Result<client::SignedLaunch> {
    let source = Source::from_config(config, None);
    let ca = client::load_ca(&config.ca)?;
    let client = Client::new(ca, client::TIMEOUT);
    let deadline = Instant::now() + req.wait;
    let what = format!("asking for launch {} from", req.launch);
    loop {
        let got = client::with_retries(&config.servers, &config.retry, &what, |s| {
            client.signed_launch_once(s, &source, req.launch)
        });
        let left = deadline.saturating_duration_since(Instant::now());
        let why = match got {
            Ok(Some(got)) => return Ok(got),
            Ok(None) if left.is_zero() => bail!(
                "launch {} is still pending approval; approve it on the host \
                 (snpguardctl records approve RECORD --launch {}) and run install-launch \
                 again, or give --wait",
                req.launch,
                req.launch
            ),
            Ok(None) => format!("launch {} is pending approval", req.launch),
            // A refusal is final; no answer at all is not while there is
            // time left (a server restarting, a network outage).
            Err(e) if e.refused || left.is_zero() => {
                bail!("fetching launch {} failed: {e}", req.launch)
            }
            Err(e) => format!("no server answered about launch {} ({e})", req.launch),
        };
        let pause = req.poll.min(left);
        say!("{why}; asking again in {} s", pause.as_secs_f64().ceil());
        std::thread::sleep(pause);
    }
}

pub fn run(config: &AgentConfig, req: &Request<'_>) -> anyhow::Result<Outcome> {
    if !is_launch_id(req.launch) {
        bail!(
            "--launch {:?} is not a launch id (a decimal number, as renew prints it)",
            req.launch
        );
    }
    // The files first: nothing is asked for a launch this guest cannot
    // write.
    let artifacts = renew::load(&req.artifacts)?;
    let client::SignedLaunch {
        resp,
        parts,
        report,
    } = fetch(config, req)?;
    let report = Report::parse(&report).context("this guest's report")?;
    let (id_block, id_auth) = (parts.id_block, parts.id_auth);
    let launch = NewLaunch {
        kernel: &artifacts.kernel,
        initrd: &artifacts.initrd,
        cmdline: &artifacts.cmdline,
        launch_config: &resp.launch_config,
        id_block: &id_block,
        id_auth: &id_auth,
    };
    let mut measurement = String::new();
    let expect = |c: &LaunchConfig| {
        measurement.clone_from(&c.measurement);
        check_same_record(c, &report)
    };
    let installed = match &req.target {
        Target::Mounted(dir) => slot::install(dir, &launch, expect)?,
        Target::Device(device) => {
            let mount = Mount::new(device)?;
            slot::install(&mount.dir, &launch, expect)?
        }
    };
    Ok(Outcome {
        installed,
        record: resp.record,
        measurement,
    })
}
