//! The guest agent's configuration, `/etc/snpguard/agent.toml`: one type
//! for both sides of the contract. `snpguardctl convert` builds an
//! [`AgentConfig`] and writes it with [`AgentConfig::to_toml`]; the agent
//! reads it with [`AgentConfig::load`]: parsed once into typed values and
//! checked. Unknown keys are refused; every error names the key. (Whether
//! the simulated report source is compiled in is the agent's own check.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location inside the initrd (and on the host at build time).
pub const DEFAULT_PATH: &str = "/etc/snpguard/agent.toml";
/// Largest configuration file read.
const MAX_SIZE: u64 = 64 * 1024;
/// Most servers tried.
pub const MAX_SERVERS: usize = 8;
/// Most attempts per server.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most data volumes (`[[volumes]]`).
pub const MAX_VOLUMES: usize = 16;

/// Where the attestation report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportSource {
    /// configfs-tsm, then /dev/sev-guest.
    Auto,
    /// /sys/kernel/config/tsm/report.
    Tsm,
    /// /dev/sev-guest (SNP_GET_EXT_REPORT).
    SevGuest,
    /// The test-only simulator (feature `simulator`).
    Simulated,
}

impl ReportSource {
    /// The name in the configuration (`report_source = "…"`).
    pub fn name(self) -> &'static str {
        match self {
            ReportSource::Auto => "auto",
            ReportSource::Tsm => "tsm",
            ReportSource::SevGuest => "sev-guest",
            ReportSource::Simulated => "simulated",
        }
    }
}

/// The whole configuration. [`AgentConfig::parse`] and
/// [`AgentConfig::load`] return only checked ones; [`AgentConfig::check`]
/// checks one built in code (convert does before writing it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The attestation servers, tried in order.
    pub servers: Vec<Server>,
    /// The pinned CA (absolute path in the guest).
    pub ca: PathBuf,
    /// Where the report comes from.
    #[serde(default = "default_source")]
    pub report_source: ReportSource,
    /// The root volume's pinned parameters.
    pub luks: Luks,
    /// The data volumes (`[[volumes]]`): every other guest-mounted file
    /// system, each its own LUKS2 volume whose key is derived from the
    /// root's (`snpguard::volume::data_volume_key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Bounded retries.
    #[serde(default)]
    pub retry: Retry,
    /// The simulated source's launch blob (test builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulator: Option<Simulator>,
}

/// A data volume: where the guest mounts it, and its pinned parameters.
/// Written as the `[luks]` keys plus `mountpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawVolume", into = "RawVolume")]
pub struct Volume {
    /// The guest's mount point (messages only; fstab mounts it).
    pub mountpoint: String,
    /// Its pinned parameters.
    pub luks: Luks,
}

impl From<RawVolume> for Volume {
    fn from(r: RawVolume) -> Volume {
        Volume {
            mountpoint: r.mountpoint,
            luks: Luks {
                device: r.device,
                uuid: r.uuid,
                name: r.name,
                cipher: r.cipher,
                key_bytes: r.key_bytes,
                sector_size: r.sector_size,
                offset: r.offset,
            },
        }
    }
}

impl From<Volume> for RawVolume {
    fn from(v: Volume) -> RawVolume {
        RawVolume {
            mountpoint: v.mountpoint,
            device: v.luks.device,
            uuid: v.luks.uuid,
            name: v.luks.name,
            cipher: v.luks.cipher,
            key_bytes: v.luks.key_bytes,
            sector_size: v.luks.sector_size,
            offset: v.luks.offset,
        }
    }
}

/// `[[volumes]]` as written: the `[luks]` keys plus the mount point.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    mountpoint: String,
    device: String,
    uuid: String,
    name: String,
    cipher: String,
    key_bytes: usize,
    sector_size: u32,
    offset: u64,
}

/// An attestation server, `https://host[:port]` (a string in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Server {
    /// As configured; without a trailing slash once checked.
    pub url: String,
}

/// The pinned parameters of the root volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Luks {
    /// `UUID=<uuid>` or a path (normally under /dev).
    pub device: String,
    /// The LUKS UUID the header must carry.
    pub uuid: String,
    /// The device-mapper name.
    pub name: String,
    /// dm-crypt cipher spec, e.g. `aes-xts-plain64`.
    pub cipher: String,
    /// Volume key length in bytes.
    pub key_bytes: usize,
    /// Encryption sector size (512 or 4096).
    pub sector_size: u32,
    /// Data segment offset in bytes.
    pub offset: u64,
}

impl Luks {
    /// Where the opened volume appears: `/dev/mapper/<name>`.
    pub fn mapper(&self) -> String {
        format!("/dev/mapper/{}", self.name)
    }
}

/// Bounded retries with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per server.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The first delay between attempts.
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    /// The longest delay between attempts.
    #[serde(default = "default_max_delay")]
    pub max_delay_ms: u64,
    /// How long to wait for the root device to appear.
    #[serde(default = "default_device_timeout")]
    pub device_timeout_secs: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: default_attempts(),
            initial_delay_ms: default_initial_delay(),
            max_delay_ms: default_max_delay(),
            device_timeout_secs: default_device_timeout(),
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_delay() -> u64 {
    1000
}
fn default_max_delay() -> u64 {
    30_000
}
fn default_device_timeout() -> u64 {
    60
}

/// The simulated source's launch blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Simulator {
    /// Where the blob appears in the guest (QEMU's fw_cfg).
    pub launch: PathBuf,
}

fn default_source() -> ReportSource {
    ReportSource::Auto
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes is more than the {MAX_SIZE} allowed")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{0}")]
    Syntax(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// A refusal of `key` for `reason` (also the agent's own checks).
pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(&AgentConfig::read(path)?)
    }

    /// The text of the file at `path`, at most 64 KiB.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_SIZE {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        std::fs::read_to_string(path).map_err(read)
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let raw: AgentConfig = toml::from_str(text).map_err(|e| {
            ConfigError::Syntax(
                e.to_string()
                    .trim_end()
                    .replace('\n', " ")
                    .replace("  ", " "),
            )
        })?;
        raw.check()
    }

    /// Checks every key, and returns the configuration with the servers'
    /// URLs without a trailing slash.
    pub fn check(mut self) -> Result<AgentConfig, ConfigError> {
        let raw = &mut self;
        if raw.servers.is_empty() || raw.servers.len() > MAX_SERVERS {
            return Err(invalid(
                "servers",
                format!(
                    "give 1 to {MAX_SERVERS} servers (got {})",
                    raw.servers.len()
                ),
            ));
        }
        for s in &mut raw.servers {
            s.url = parse_server(&s.url)?;
        }
        if !raw.ca.is_absolute() {
            return Err(invalid("ca", "must be an absolute path"));
        }
        check_luks(&raw.luks, "luks")?;
        check_volumes(&raw.volumes, &raw.luks)?;
        check_retry(&raw.retry)?;
        match (raw.report_source, &raw.simulator) {
            (ReportSource::Simulated, None) => {
                return Err(invalid(
                    "simulator.launch",
                    "report_source = \"simulated\" needs a [simulator] table with launch",
                ))
            }
            (ReportSource::Simulated, Some(_)) => {}
            (_, Some(_)) => {
                return Err(invalid(
                    "simulator",
                    "only allowed with report_source = \"simulated\"",
                ))
            }
            (_, None) => {}
        }
        Ok(self)
    }

    /// The configuration as TOML, after `header` (comment lines, each
    /// starting with `#`). Checked first: nothing unreadable is written.
    pub fn to_toml(&self, header: &str) -> Result<String, ConfigError> {
        if header.lines().any(|l| !l.starts_with('#')) {
            return Err(invalid("header", "every line must be a # comment"));
        }
        let checked = self.clone().check()?;
        let body = toml::to_string(&checked).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut out = String::from(header);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&body);
        Ok(out)
    }
}

/// `https://host[:port]` without a trailing slash, or the refusal.
fn parse_server(s: &str) -> Result<String, ConfigError> {
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| invalid("servers", format!("{s:?} must start with https://")))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || s.len() > 256
        || rest.contains(['/', '?', '#', '@', ' '])
        || !rest.is_ascii()
    {
        return Err(invalid(
            "servers",
            format!("{s:?} must be https://host[:port] with no path"),
        ));
    }
    Ok(format!("https://{rest}"))
}

/// A canonical UUID: 8-4-4-4-12 lowercase or uppercase hex.
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_luks(l: &Luks, table: &str) -> Result<(), ConfigError> {
    let key = |k: &str| format!("{table}.{k}");
    if !is_uuid(&l.uuid) {
        return Err(invalid(key("uuid"), format!("{:?} is not a UUID", l.uuid)));
    }
    match l.device.strip_prefix("UUID=") {
        Some(u) if is_uuid(u) => {}
        Some(u) => return Err(invalid(key("device"), format!("UUID={u:?} is not a UUID"))),
        // Normally a path under /dev; any absolute path so that host
        // tests can use a file.
        None if l.device.starts_with('/') && !l.device.contains("..") => {}
        None => {
            return Err(invalid(
                key("device"),
                format!(
                    "{:?} must be UUID=<uuid> or an absolute path such as /dev/vda2",
                    l.device
                ),
            ))
        }
    }
    if l.name.is_empty()
        || l.name.len() > 64
        || !l
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        || l.name.starts_with('.')
    {
        return Err(invalid(
            key("name"),
            format!("{:?} must be 1-64 characters of A-Z a-z 0-9 _ - .", l.name),
        ));
    }
    if l.cipher.is_empty()
        || l.cipher.len() > 64
        || !l
            .cipher
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
    {
        return Err(invalid(
            key("cipher"),
            format!("{:?} is not a dm-crypt cipher spec", l.cipher),
        ));
    }
    if !(16..=128).contains(&l.key_bytes) {
        return Err(invalid(
            key("key_bytes"),
            format!("{} must be 16 to 128", l.key_bytes),
        ));
    }
    if l.sector_size != 512 && l.sector_size != 4096 {
        return Err(invalid(
            key("sector_size"),
            format!("{} must be 512 or 4096", l.sector_size),
        ));
    }
    if l.offset == 0 || l.offset % 4096 != 0 {
        return Err(invalid(
            key("offset"),
            format!("{} must be a positive multiple of 4096", l.offset),
        ));
    }
    Ok(())
}

/// Checks the `[[volumes]]`: each a valid LUKS2 pin of its own (its key is
/// derived, so at least 32 bytes and a canonical lower-case UUID), mounted
/// at an absolute path other than `/`, and no name, UUID or mount point
/// used twice (nor the root's name or UUID).
fn check_volumes(raw: &[Volume], root: &Luks) -> Result<(), ConfigError> {
    if raw.len() > MAX_VOLUMES {
        return Err(invalid(
            "volumes",
            format!("at most {MAX_VOLUMES} data volumes (got {})", raw.len()),
        ));
    }
    for (i, v) in raw.iter().enumerate() {
        let out = &raw[..i];
        let table = format!("volumes[{i}]");
        let mp = &v.mountpoint;
        if !mp.starts_with('/')
            || mp == "/"
            || mp.len() > 256
            || mp.contains("//")
            || mp.ends_with('/')
            || mp.split('/').any(|c| c == "." || c == "..")
            || mp.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                format!("{table}.mountpoint"),
                format!("{mp:?} must be an absolute path other than / (no spaces, no . or ..)"),
            ));
        }
        check_luks(&v.luks, &table)?;
        if !snpguard::volume::is_canonical_uuid(&v.luks.uuid) {
            return Err(invalid(
                format!("{table}.uuid"),
                format!(
                    "{:?}: a data volume's key is derived from its UUID; write it in lower case",
                    v.luks.uuid
                ),
            ));
        }
        if v.luks.key_bytes < 32 {
            return Err(invalid(
                format!("{table}.key_bytes"),
                format!("{} must be 32 to 128 for a data volume", v.luks.key_bytes),
            ));
        }
        let clash = |other: &Luks| {
            other.name == v.luks.name || other.uuid.eq_ignore_ascii_case(&v.luks.uuid)
        };
        if clash(root) || out.iter().any(|o| clash(&o.luks)) {
            return Err(invalid(
                table,
                format!(
                    "name {:?} or uuid {} is already used by another volume",
                    v.luks.name, v.luks.uuid
                ),
            ));
        }
        if out.iter().any(|o| o.mountpoint == v.mountpoint) {
            return Err(invalid(
                format!("{table}.mountpoint"),
                format!("{:?} is given twice", v.mountpoint),
            ));
        }
    }
    Ok(())
}

fn check_retry(r: &Retry) -> Result<(), ConfigError> {
    if !(1..=MAX_ATTEMPTS).contains(&r.attempts) {
        return Err(invalid(
            "retry.attempts",
            format!("{} must be 1 to {MAX_ATTEMPTS}", r.attempts),
        ));
    }
    if r.initial_delay_ms > 600_000 {
        return Err(invalid(
            "retry.initial_delay_ms",
            format!("{} must be at most 600000", r.initial_delay_ms),
        ));
    }
    if r.max_delay_ms < r.initial_delay_ms || r.max_delay_ms > 600_000 {
        return Err(invalid(
            "retry.max_delay_ms",
            format!(
                "{} must be between initial_delay_ms and 600000",
                r.max_delay_ms
            ),
        ));
    }
    if !(1..=3600).contains(&r.device_timeout_secs) {
        return Err(invalid(
            "retry.device_timeout_secs",
            format!("{} must be 1 to 3600", r.device_timeout_secs),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
