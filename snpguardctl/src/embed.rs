//! `snpguardctl embed`: writes a launch bundle into the image's
//! LAUNCH_ARTIFACTS partition, with A/B slots and an `/artifacts` symlink
//! naming the active one.
//!
//! The bundle is extracted and validated on the host first
//! ([`snpguard_protocol::bundle::extract_bundle`]: known names only, regular files,
//! bounded sizes), or, with `--in-staging`, its seven members are copied
//! from a directory without following links and checked the same way
//! ([`snpguard_protocol::bundle::check_extracted`]); a bad bundle is
//! refused before the image is opened.
//! The first embed creates the partition (512 MiB ext4 at the end,
//! growing the image) or wipes a partition with that label that lacks the
//! layout, fills /A, creates /B and points /artifacts at A. Later embeds
//! do nothing when the active slot already holds the bundle; otherwise
//! they rewrite the inactive slot and switch the symlink with one
//! rename(2).

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use snpguard_protocol::bundle::{check_extracted, extract_bundle, LAUNCH_CONFIG, MEMBERS};

use snpguard_protocol::bundle::partition::{other_slot, slot_named, ACTIVE_LINK, NEW_LINK};

use crate::bundle::NO_CONFIDENTIALITY;

use crate::image::appliance::{gerr, quote, Appliance, Drive};

pub use snpguard_protocol::bundle::partition::{LABEL, PARTITION_BYTES, SLOT_LIMITS as LIMITS};

#[derive(Debug, ClapArgs)]
#[command(group(clap::ArgGroup::new("source").args(["in_bundle", "in_staging"]).required(true)))]
pub struct Args {
    /// Image to write the bundle into (qcow2 or raw); grown by 512 MiB if
    /// it has no LAUNCH_ARTIFACTS partition yet
    #[arg(long, value_name = "IMG")]
    pub image: PathBuf,
    /// launch-artifacts.tar.gz from register or records export
    #[arg(long, value_name = "FILE")]
    pub in_bundle: Option<PathBuf>,
    /// A staging directory holding the seven members (a `convert
    /// --no-encryption` one after `launch-config`)
    #[arg(long, value_name = "DIR")]
    pub in_staging: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// What embed did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Partition created (image grown) and slot A written.
    Created,
    /// Existing partition wiped and slot A written.
    Initialized,
    /// Active slot already holds this bundle.
    Unchanged,
    /// Inactive slot written and made active.
    Switched,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Initialized => "initialized",
            Action::Unchanged => "unchanged",
            Action::Switched => "switched",
        }
    }
}

/// Copies the members of the staging directory `dir` into `staged`: each
/// a regular file (a link is refused, not followed), within the limits
/// while it is read, so that what is checked is what is written even if
/// `dir` changes meanwhile.
fn copy_members(dir: &Path, staged: &Path) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    for m in MEMBERS {
        let src = dir.join(m);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&src)
            .with_context(|| {
                format!(
                    "opening {} (a staging directory needs all of {}; run \
                     `snpguardctl launch-config` on it first)",
                    src.display(),
                    MEMBERS.join(", ")
                )
            })?;
        if !f.metadata()?.is_file() {
            bail!("{} is not a regular file", src.display());
        }
        let limit = if m == LAUNCH_CONFIG {
            LIMITS.max_config
        } else {
            LIMITS.max_member
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(staged.join(m))?;
        let n = std::io::copy(&mut f.take(limit + 1), &mut out)
            .with_context(|| format!("reading {}", src.display()))?;
        if n > limit {
            bail!("{} is larger than {limit} bytes", src.display());
        }
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let staged = tempdir()?;
    let config = match (&a.in_bundle, &a.in_staging) {
        (Some(bundle), _) => {
            let input =
                File::open(bundle).with_context(|| format!("opening {}", bundle.display()))?;
            extract_bundle(input, staged.path(), &LIMITS).with_context(|| {
                format!("refusing {}; the image was not touched", bundle.display())
            })?
        }
        (None, Some(dir)) => copy_members(dir, staged.path())
            .and_then(|()| Ok(check_extracted(staged.path(), &LIMITS)?))
            .and_then(|c| {
                crate::launch_config::check_signed(staged.path(), &c)?;
                Ok(c)
            })
            .with_context(|| format!("refusing {}; the image was not touched", dir.display()))?,
        (None, None) => unreachable!("clap requires --in-bundle or --in-staging"),
    };
    if config.no_encryption {
        eprintln!("{NO_CONFIDENTIALITY}");
    }

    let (action, slot) = embed(&a.image, staged.path())?;
    if a.json {
        println!(
            "{}",
            json!({
                "image": a.image.display().to_string(),
                "action": action.name(),
                "active_slot": slot,
                "record": config.name,
                "measurement": config.measurement,
            })
        );
    } else {
        println!(
            "{} {}: /artifacts -> {slot} ({}, measurement {})",
            action.name(),
            a.image.display(),
            config.name,
            config.measurement
        );
    }
    Ok(())
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let p = base.join(format!(
            "snpguard-embed-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("creating a temporary directory"),
        }
    }
    bail!(
        "could not create a temporary directory in {}",
        base.display()
    )
}

/// The partition with filesystem label [`LABEL`] on /dev/sda.
fn find_partition(app: &Appliance) -> Result<Option<String>> {
    let g = app.g();
    for p in g.list_partitions().map_err(gerr("list_partitions"))? {
        if g.vfs_label(&p).ok().as_deref() == Some(LABEL) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

fn launch(image: &Path) -> Result<Appliance> {
    Appliance::launch(&[Drive {
        path: image,
        readonly: false,
    }])
}

/// Grows `image` by [`PARTITION_BYTES`] plus room for the backup GPT.
fn grow(image: &Path) -> Result<()> {
    let out = std::process::Command::new("qemu-img")
        .arg("resize")
        .arg("-q")
        .arg(image)
        .arg(format!("+{}", PARTITION_BYTES + (2 << 20)))
        .output()
        .context("running qemu-img resize")?;
    if !out.status.success() {
        bail!(
            "qemu-img resize {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The partition table type (`gpt` or `msdos`) when a new partition fits
/// in it; checked before the image is grown, so that a refusal leaves it
/// untouched.
fn table_with_room(app: &Appliance) -> Result<String> {
    let g = app.g();
    let table = g
        .part_get_parttype("/dev/sda")
        .map_err(gerr("part_get_parttype"))
        .context("the image has no partition table to add LAUNCH_ARTIFACTS to")?;
    let primaries = g
        .part_list("/dev/sda")
        .map_err(gerr("part_list"))?
        .iter()
        .filter(|p| p.part_num <= 4)
        .count();
    match table.as_str() {
        "gpt" => {}
        "msdos" if primaries < 4 => {}
        "msdos" => bail!(
            "the image's MBR has no free primary partition for {LABEL}; \
             the image was not touched"
        ),
        other => bail!(
            "the image has a {other} partition table; {LABEL} needs gpt or msdos; \
             the image was not touched"
        ),
    }
    Ok(table)
}

/// Adds the partition at the end of the disk (a `table` partition table)
/// and formats it.
fn create_partition(app: &Appliance, table: &str) -> Result<String> {
    let g = app.g();
    if table == "gpt" {
        g.part_expand_gpt("/dev/sda")
            .map_err(gerr("part_expand_gpt"))?;
    }
    let parts = g.part_list("/dev/sda").map_err(gerr("part_list"))?;
    let end_of_last = parts.iter().map(|p| p.part_end).max().unwrap_or(1 << 20);
    let start = (end_of_last + 1).div_ceil(1 << 20) * (1 << 20) / 512;
    let end = start + PARTITION_BYTES / 512 - 1;
    g.part_add("/dev/sda", "p", start as i64, end as i64)
        .map_err(gerr("part_add"))
        .context("adding the LAUNCH_ARTIFACTS partition")?;
    let num = g
        .part_list("/dev/sda")
        .map_err(gerr("part_list"))?
        .into_iter()
        .find(|p| p.part_start / 512 == start)
        .context("the new partition is not in the table")?
        .part_num;
    if table == "gpt" {
        g.part_set_name("/dev/sda", num, LABEL)
            .map_err(gerr("part_set_name"))?;
    }
    Ok(format!("/dev/sda{num}"))
}

/// Formats `dev` (a libguestfs API partition name) as the empty artifacts
/// filesystem.
fn format(app: &Appliance, dev: &str) -> Result<()> {
    let num = app
        .g()
        .part_to_partnum(dev)
        .map_err(gerr("part_to_partnum"))?;
    let dev = format!("{}{num}", app.kernel_disk(0)?);
    app.sh(&format!(
        "wipefs -q -a {d}\nmke2fs -q -F -t ext4 -L {LABEL} -E nodiscard {d}",
        d = quote(&dev)
    ))
    .context("formatting the LAUNCH_ARTIFACTS partition")?;
    Ok(())
}

/// The active slot of a mounted partition, if it has the layout.
fn active_slot(app: &Appliance) -> Option<&'static str> {
    let g = app.g();
    let link = format!("/{ACTIVE_LINK}");
    if !g.is_symlink(&link).unwrap_or(false) {
        return None;
    }
    let slot = slot_named(&g.readlink(&link).ok()?)?;
    let dir = |d: &str| {
        g.is_dir(
            d,
            guestfs::IsDirOptArgs {
                followsymlinks: Some(false),
            },
        )
        .unwrap_or(false)
    };
    (dir("/A") && dir("/B")).then_some(slot)
}

/// Whether `/slot` holds exactly the staged bundle.
fn slot_matches(app: &Appliance, slot: &str, staged: &Path) -> Result<bool> {
    let g = app.g();
    let mut names = g.ls(&format!("/{slot}")).map_err(gerr("ls"))?;
    names.sort();
    let mut want: Vec<String> = MEMBERS.iter().map(|s| s.to_string()).collect();
    want.sort();
    if names != want {
        return Ok(false);
    }
    for m in MEMBERS {
        let remote = format!("/{slot}/{m}");
        let local = std::fs::metadata(staged.join(m))?.len();
        if g.filesize(&remote).map_err(gerr("filesize"))? as u64 != local {
            return Ok(false);
        }
        let theirs = g.checksum("sha256", &remote).map_err(gerr("checksum"))?;
        if theirs != sha256_file(&staged.join(m))? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn sha256_file(p: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut File::open(p)?, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Replaces the contents of `/slot` with the staged bundle.
fn write_slot(app: &Appliance, slot: &str, staged: &Path) -> Result<()> {
    let g = app.g();
    let dir = format!("/{slot}");
    g.rm_rf(&dir).map_err(gerr("rm_rf"))?;
    g.mkdir(&dir).map_err(gerr("mkdir"))?;
    g.chmod(0o755, &dir).map_err(gerr("chmod"))?;
    for (i, m) in MEMBERS.iter().enumerate() {
        if i == MEMBERS.len() / 2 {
            crash_point(app, snpguard::crash::points::EMBED_SLOT_PARTIAL);
        }
        let local = staged.join(m);
        let local = local.to_str().context("temporary path is not UTF-8")?;
        let remote = format!("{dir}/{m}");
        g.upload(local, &remote)
            .map_err(gerr("upload"))
            .with_context(|| format!("writing {remote}"))?;
        g.chmod(0o644, &remote).map_err(gerr("chmod"))?;
    }
    g.sync().map_err(gerr("sync"))?;
    Ok(())
}

/// Points `/artifacts` at `slot` atomically (a new symlink renamed over
/// the old one).
fn switch(app: &Appliance, slot: &str) -> Result<()> {
    let g = app.g();
    let new = format!("/{NEW_LINK}");
    g.rm_f(&new).map_err(gerr("rm_f"))?;
    g.ln_s(slot, &new).map_err(gerr("ln_s"))?;
    g.rename(&new, &format!("/{ACTIVE_LINK}"))
        .map_err(gerr("rename"))?;
    crash_point(app, snpguard::crash::points::EMBED_SWITCHED);
    g.sync().map_err(gerr("sync"))?;
    Ok(())
}

/// A crash point of `embed` ([`snpguard::crash`], debug builds only):
/// the appliance's QEMU is killed first, so whatever its guest had not
/// written back to the image is lost as in a power cut, then this
/// process.
fn crash_point(app: &Appliance, point: &'static str) {
    #[cfg(debug_assertions)]
    if std::env::var(snpguard::crash::ENV).as_deref() == Ok(point) {
        let qemu = app
            .g()
            .get_pid()
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = qemu {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = app;
    snpguard::crash::point(point);
}

fn embed(image: &Path, staged: &Path) -> Result<(Action, &'static str)> {
    let mut app = launch(image)?;
    let mut action = None;
    let dev = match find_partition(&app)? {
        Some(d) => d,
        None => {
            let table = table_with_room(&app)?;
            app.shutdown()?;
            grow(image)?;
            app = launch(image)?;
            let d = create_partition(&app, &table)?;
            format(&app, &d)?;
            action = Some(Action::Created);
            d
        }
    };
    let g = app.g();
    g.mount(&dev, "/").map_err(gerr("mount"))?;
    let result = match (action, active_slot(&app)) {
        (None, Some(active)) => {
            if slot_matches(&app, active, staged)? {
                (Action::Unchanged, active)
            } else {
                let next = other_slot(active);
                write_slot(&app, next, staged)?;
                switch(&app, next)?;
                (Action::Switched, next)
            }
        }
        (created, _) => {
            // A partition with the label but not the layout is wiped.
            if created.is_none() {
                g.umount_all().map_err(gerr("umount_all"))?;
                format(&app, &dev)?;
                g.mount(&dev, "/").map_err(gerr("mount"))?;
            }
            write_slot(&app, "A", staged)?;
            g.rm_rf("/B").map_err(gerr("rm_rf"))?;
            g.mkdir("/B").map_err(gerr("mkdir"))?;
            g.chmod(0o755, "/B").map_err(gerr("chmod"))?;
            switch(&app, "A")?;
            (created.unwrap_or(Action::Initialized), "A")
        }
    };
    g.umount_all().map_err(gerr("umount_all"))?;
    app.shutdown()?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alternate() {
        assert_eq!(other_slot("A"), "B");
        assert_eq!(other_slot("B"), "A");
        assert_eq!(slot_named("B"), Some("B"));
        for not in ["", "a", "C", "/A", "A/", "../A"] {
            assert_eq!(slot_named(not), None, "{not}");
        }
    }
}
