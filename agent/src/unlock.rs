//! `snpguard-agent unlock`: wait for the device, check its LUKS2 header
//! against the pinned parameters, attest, check the released key against
//! the header, map the volume, wipe the key.

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::client::{self, Client};
use crate::config::Config;
use crate::console::say;
use crate::device::{self, Roots};
use crate::dm::{self, CryptTarget};
use crate::evidence::Source;
use crate::luks;

/// Runs the whole unlock; `Err` carries the one-line reason.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let l = &config.luks;
    if std::path::Path::new("/dev/mapper").join(&l.name).exists() {
        bail!(
            "/dev/mapper/{} already exists; refusing to map over it",
            l.name
        );
    }
    let source = Source::from_config(config, None);
    say!(
        "unlocking {} as /dev/mapper/{} (report source {}, {} server(s))",
        l.device,
        l.name,
        source.describe(),
        config.servers.len()
    );
    let ca = client::load_ca(&config.ca)?;

    let dev = device::wait(
        &l.device,
        &Roots::default(),
        Duration::from_secs(config.retry.device_timeout_secs),
    )
    .map_err(anyhow::Error::msg)?;
    say!("found {} ({} bytes)", dev.path.display(), dev.size);
    let header = luks::read_header(&dev.path, l)?;
    if header.used_secondary {
        say!("the primary LUKS2 header's checksum is bad; using the secondary header");
    }
    say!("LUKS2 header matches the pinned uuid, cipher, offset and sector size");

    let client = Client::new(ca);
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
    header.check_key(&key)?;
    say!("the released key opens this volume");

    let (major, minor) = dev.dev.with_context(|| {
        format!(
            "{} is not a block device; cannot create the dm-crypt mapping",
            dev.path.display()
        )
    })?;
    let node = dm::create_crypt(&CryptTarget {
        name: &l.name,
        luks_uuid: &l.uuid,
        cipher: &l.cipher,
        key: &key,
        major,
        minor,
        offset: l.offset,
        device_size: dev.size,
        sector_size: l.sector_size,
    })?;
    drop(key);
    say!("mapped {} at {}", dev.path.display(), node.display());
    Ok(())
}
