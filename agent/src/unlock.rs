//! `snpguard-agent unlock`: wait for the devices, check their LUKS2
//! headers against the pinned parameters, attest, check the released key
//! against the root's header and each data volume's derived key against
//! its header, map every volume, wipe the keys. Nothing is mapped unless
//! every key checked.
//!
//! Offline unlock ([`crate::offline`]): when the root has a keyslot that
//! this launch's chip-derived key opens, the agent still asks the servers
//! first, once each: a release wins (and carries the record's directive),
//! a refusal fails the boot as always, and only when no server answers at
//! all does the keyslot's key open the root. Without such a keyslot the
//! agent attests with its full retries and follows the release's
//! directive: enrol a keyslot for this launch, or remove its keyslots.

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::client::{self, Client};
use crate::config::{AgentConfig, Luks, Retry};
use crate::console::say;
use crate::device::{self, Roots};
use crate::dm::{self, CryptTarget};
use crate::evidence::Source;
use crate::luks::{self, Header};
use crate::offline::{self, DerivedKey};

/// A volume whose device was found and whose header matches its pin.
struct Found<'a> {
    pin: &'a Luks,
    what: String,
    dev: device::Device,
    header: Header,
}

/// Waits for the device of `pin` and checks its header.
fn find(pin: &Luks, what: String, timeout: Duration) -> anyhow::Result<Found<'_>> {
    if std::path::Path::new("/dev/mapper").join(&pin.name).exists() {
        bail!(
            "/dev/mapper/{} already exists; refusing to map over it",
            pin.name
        );
    }
    let dev = device::wait(&pin.device, &Roots::default(), timeout)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    say!("{what}: found {} ({} bytes)", dev.path.display(), dev.size);
    let header = luks::read_header(&dev.path, pin).with_context(|| what.clone())?;
    if header.used_secondary {
        say!("{what}: the primary LUKS2 header's checksum is bad; using the secondary header");
    }
    Ok(Found {
        pin,
        what,
        dev,
        header,
    })
}

/// Maps `f` with `key`.
fn map(f: &Found<'_>, key: &[u8]) -> anyhow::Result<()> {
    let (major, minor) = f.dev.dev.with_context(|| {
        format!(
            "{} is not a block device; cannot create the dm-crypt mapping",
            f.dev.path.display()
        )
    })?;
    let node = dm::create_crypt(&CryptTarget {
        name: &f.pin.name,
        luks_uuid: &f.pin.uuid,
        cipher: &f.pin.cipher,
        key,
        major,
        minor,
        offset: f.pin.offset,
        device_size: f.dev.size,
        sector_size: f.pin.sector_size,
    })?;
    say!(
        "{}: mapped {} at {}",
        f.what,
        f.dev.path.display(),
        node.display()
    );
    Ok(())
}

/// Runs the whole unlock; `Err` carries the one-line reason.
pub fn run(config: &AgentConfig) -> anyhow::Result<()> {
    let l = &config.luks;
    let source = Source::from_config(config, None);
    say!(
        "unlocking {} as /dev/mapper/{} and {} data volume(s) (report source {}, {} server(s))",
        l.device,
        l.name,
        config.volumes.len(),
        source.describe(),
        config.servers.len()
    );
    let ca = client::load_ca(&config.ca)?;

    // Every device and header first: a missing or foreign volume fails
    // the boot before any key is asked for.
    let timeout = Duration::from_secs(config.retry.device_timeout_secs);
    let root = find(l, "root".into(), timeout)?;
    let mut data = Vec::with_capacity(config.volumes.len());
    for v in &config.volumes {
        data.push(find(&v.luks, v.mountpoint.clone(), timeout)?);
    }
    say!("LUKS2 headers match the pinned uuid, cipher, offset and sector size");

    // This launch's derived key, and what the agent's keyslot gives with it.
    let derived = if source.can_derive() {
        DerivedKey::get(&source)
            .map_err(|e| say!("offline unlock: no chip-derived key ({e})"))
            .ok()
    } else {
        None
    };
    let offline_key = match &derived {
        Some(k) => offline::try_unlock(k, &root.dev.path).unwrap_or_else(|e| {
            say!("offline unlock: reading the root's keyslots failed ({e})");
            None
        }),
        None => None,
    };
    let retry = if offline_key.is_some() {
        say!("offline unlock: this launch's keyslot opens; asking the servers once each first");
        Retry {
            attempts: 1,
            ..config.retry
        }
    } else {
        config.retry
    };

    let client = Client::new(ca, client::TIMEOUT);
    let released = client::attest(&client, &config.servers, &retry, &source, derived.is_some());
    let (key, directive, what) = match (released, offline_key) {
        (Ok(r), offline_key) => {
            say!("attested as record {}; key released", r.record);
            let directive = r.offline.map(|d| (d, offline_key.is_some()));
            (r.key, directive, "the released key")
        }
        (Err(e), Some(k)) if !e.any_refused => {
            say!("no server answered ({e}); unlocking offline with this launch's chip-derived key");
            (k, None, "the offline keyslot's key")
        }
        (Err(e), _) => bail!("attestation failed: {e}"),
    };
    if key.len() != l.key_bytes {
        bail!(
            "the released key is {} bytes, the configuration pins key_bytes = {}",
            key.len(),
            l.key_bytes
        );
    }
    root.header.check_key(&key)?;
    say!("{what} opens the root volume");
    if let Some((d, opened)) = directive {
        offline::follow(Some(d), derived.as_ref(), opened, &root.dev.path, &key);
    }
    let mut keys = Vec::with_capacity(data.len());
    for f in &data {
        let k = snpguard::volume::data_volume_key(&key, &f.pin.uuid, f.pin.key_bytes)
            .with_context(|| format!("{}: deriving the volume key", f.what))?;
        f.header
            .check_key(&k)
            .with_context(|| format!("{}: the key derived from the released key", f.what))?;
        keys.push(k);
    }
    if !data.is_empty() {
        say!("the derived keys open every data volume");
    }

    for (f, k) in data.iter().zip(&keys) {
        map(f, k)?;
    }
    drop(keys);
    map(&root, &key)?;
    drop(key);
    Ok(())
}
