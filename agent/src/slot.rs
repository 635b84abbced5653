//! Writing a launch into the inactive slot of a mounted LAUNCH_ARTIFACTS
//! partition (the layout of [`snpguard_protocol::bundle::partition`]) and
//! making it active with one rename(2) of a symbolic link: a power cut
//! leaves either the old launch or the new one active, never a mix. The
//! written slot is checked as an extracted bundle and then as the launch
//! its configuration describes (the members re-measured, the ID block and
//! ID auth verified) before the switch; a slot that does not check out is
//! emptied and the active one is left alone.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use snpguard_protocol::bundle::partition::{
    other_slot, slot_named, ACTIVE_LINK, LABEL, NEW_LINK, SLOTS, SLOT_LIMITS,
};
use snpguard_protocol::bundle::{
    check_extracted, check_signed, LaunchConfig, CMDLINE, FIRMWARE, ID_AUTH, ID_BLOCK, INITRD,
    KERNEL, LAUNCH_CONFIG, MEMBERS,
};

/// A launch to write: everything but the firmware, which is the active
/// slot's (a record's launches share its firmware).
pub struct NewLaunch<'a> {
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
    /// `launch-config.json`, exactly as the daemon sent it.
    pub launch_config: &'a str,
    pub id_block: &'a [u8],
    pub id_auth: &'a [u8],
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// The active slot already holds this launch.
    Unchanged { slot: &'static str },
    /// `slot` was written and made active.
    Switched { slot: &'static str },
}

/// The active slot of the partition mounted at `root`.
pub fn active_slot(root: &Path) -> anyhow::Result<&'static str> {
    let link = root.join(ACTIVE_LINK);
    let layout = || {
        format!(
            "{} is not a {LABEL} partition with A/B slots; embed a bundle from the host \
             first (snpguardctl embed)",
            root.display()
        )
    };
    let target = fs::read_link(&link)
        .with_context(|| format!("reading {}", link.display()))
        .with_context(layout)?;
    let slot = target
        .to_str()
        .and_then(slot_named)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} points at {}, not at a slot",
                link.display(),
                target.display()
            )
        })
        .with_context(layout)?;
    for s in SLOTS {
        let meta = fs::symlink_metadata(root.join(s))
            .with_context(|| format!("reading {}", root.join(s).display()))
            .with_context(layout)?;
        if !meta.is_dir() {
            bail!("{}/{s} is not a directory; {}", root.display(), layout());
        }
    }
    Ok(slot)
}

/// Reads `path`: a regular file (a link is refused, not followed) of at
/// most `max` bytes.
fn read_member(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut out = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    if out.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(out)
}

/// Whether `slot` holds exactly `members` (name, bytes).
fn holds(dir: &Path, members: &[(&str, &[u8])]) -> bool {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(_) => return false,
    };
    names.sort();
    let mut want: Vec<String> = MEMBERS.iter().map(|m| m.to_string()).collect();
    want.sort();
    names == want
        && members.iter().all(|(name, bytes)| {
            read_member(&dir.join(name), SLOT_LIMITS.max_member).is_ok_and(|b| b == *bytes)
        })
}

/// Removes everything in `dir` (the inactive slot), without following
/// links.
fn empty(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Writes `bytes` as `dir/name`, mode 0644, on disk before it returns.
fn write_member(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(0o644)))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `launch` into the inactive slot of the partition mounted at
/// `root` with the active slot's firmware, checks it, and makes it
/// active. `expect` checks the written launch's configuration (that it
/// belongs to the running guest's record) before the members are
/// measured.
pub fn install(
    root: &Path,
    launch: &NewLaunch<'_>,
    expect: impl FnOnce(&LaunchConfig) -> anyhow::Result<()>,
) -> anyhow::Result<Installed> {
    let active = active_slot(root)?;
    let firmware = read_member(&root.join(active).join(FIRMWARE), SLOT_LIMITS.max_member)
        .context("the active slot's firmware")?;
    let members: [(&str, &[u8]); 7] = [
        (LAUNCH_CONFIG, launch.launch_config.as_bytes()),
        (FIRMWARE, &firmware),
        (KERNEL, launch.kernel),
        (INITRD, launch.initrd),
        (CMDLINE, launch.cmdline.as_bytes()),
        (ID_BLOCK, launch.id_block),
        (ID_AUTH, launch.id_auth),
    ];
    if holds(&root.join(active), &members) {
        return Ok(Installed::Unchanged { slot: active });
    }
    let slot = other_slot(active);
    let dir: PathBuf = root.join(slot);
    empty(&dir)?;
    let written = (|| {
        for (name, bytes) in members {
            write_member(&dir, name, bytes)?;
        }
        sync_dir(&dir)?;
        let config = check_extracted(&dir, &SLOT_LIMITS)
            .with_context(|| format!("the launch written to slot {slot}"))?;
        expect(&config)?;
        check_signed(&dir, &config)
            .with_context(|| format!("the launch written to slot {slot} is not what was signed"))?;
        Ok(())
    })();
    if let Err(e) = written {
        // Nothing half-written stays behind; the active slot is untouched.
        let _ = empty(&dir).and_then(|()| sync_dir(&dir));
        return Err(e);
    }
    switch(root, slot)?;
    Ok(Installed::Switched { slot })
}

/// Points the active link at `slot` atomically.
fn switch(root: &Path, slot: &str) -> anyhow::Result<()> {
    let new = root.join(NEW_LINK);
    match fs::remove_file(&new) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", new.display())),
    }
    std::os::unix::fs::symlink(slot, &new)
        .with_context(|| format!("creating {}", new.display()))?;
    fs::rename(&new, root.join(ACTIVE_LINK))
        .with_context(|| format!("switching {} to {slot}", root.join(ACTIVE_LINK).display()))?;
    sync_dir(root)
}

#[cfg(test)]
mod tests;
