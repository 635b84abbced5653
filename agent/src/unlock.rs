//! `snpguard-agent unlock`: wait for the devices, check their LUKS2
//! headers against the pinned parameters, attest, check the released key
//! against the root's header and each data volume's derived key against
//! its header, map every volume, wipe the keys. Nothing is mapped unless
//! every key checked.

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::client::{self, Client};
use crate::config::{AgentConfig, Luks};
use crate::console::say;
use crate::device::{self, Roots};
use crate::dm::{self, CryptTarget};
use crate::evidence::Source;
use crate::luks::{self, Header};

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

    let client = Client::new(ca, client::TIMEOUT);
    let (record, key) = client::attest(&client, &config.servers, &config.retry, &source)
        .map_err(|e| anyhow::anyhow!("attestation failed: {e}"))?;
    say!("attested as record {record}; key released");
    if key.len() != l.key_bytes {
        bail!(
            "the released key is {} bytes, the configuration pins key_bytes = {}",
            key.len(),
            l.key_bytes
        );
    }
    root.header.check_key(&key)?;
    say!("the released key opens the root volume");
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
