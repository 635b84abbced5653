//! `snpguardctl records`: list, show, enable, disable, delete and export
//! the daemon's records over D-Bus, and change their minimum TCB and
//! offline unlock; their launches are in [`crate::launches`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use snpguard_protocol::dbus::{
    ManagerProxy, RecordProxy, BUS_NAME, MANAGER_PATH, RECORD_INTERFACE,
};
use snpguard_protocol::text::escape;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue};

use crate::bus::{self, call_mut, describe, Bus, Target};
use crate::launches::{self, AddLaunchArgs, ApproveArgs, LaunchArgs, LaunchView};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// List every record
    List(JsonArg),
    /// Show one record
    Show(RecordArg),
    /// Allow attestation to release the record's key
    Enable(RecordArg),
    /// Refuse attestation for the record
    Disable(RecordArg),
    /// Delete the record and its secrets
    Delete(RecordArg),
    /// Set the record's minimum TCB (e.g. after an AMD security bulletin)
    SetMinTcb(SetMinTcbArgs),
    /// Allow (on) or forbid (off) unlocking the guest's root offline with
    /// a chip-derived key
    SetOfflineUnlock(SetOfflineUnlockArgs),
    /// Export the record's launch-artifacts.tar.gz
    Export(ExportArgs),
    /// Add a pending launch (new kernel, initrd, cmdline) from a directory
    AddLaunch(AddLaunchArgs),
    /// Approve a pending launch: sign it and (with --output) write its bundle
    Approve(ApproveArgs),
    /// Retire an approved launch; its measurement gets no key any more
    Retire(LaunchArgs),
    /// Discard a pending or retired launch
    Discard(LaunchArgs),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecordArg {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SetMinTcbArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Minimum boot loader SPL
    #[arg(long, value_name = "N")]
    pub bootloader: u8,
    /// Minimum TEE SPL
    #[arg(long, value_name = "N")]
    pub tee: u8,
    /// Minimum SNP firmware SPL
    #[arg(long, value_name = "N")]
    pub snp: u8,
    /// Minimum microcode SPL
    #[arg(long, value_name = "N")]
    pub microcode: u8,
    /// Minimum FMC SPL (Turin; required for Turin guests)
    #[arg(long, value_name = "N")]
    pub fmc: Option<u8>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SetOfflineUnlockArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Whether the record's guests may unlock offline
    #[arg(value_enum, value_name = "on|off")]
    pub state: OfflineUnlockState,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Offline unlock turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OfflineUnlockState {
    /// Guests enrol a chip-derived key at their next online unlock and may
    /// then open their root without a server
    On,
    /// Guests remove that key at their next online unlock (one that never
    /// comes online again keeps it)
    Off,
}

impl OfflineUnlockState {
    /// True for on.
    pub fn is_on(self) -> bool {
        self == OfflineUnlockState::On
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Where to write the bundle (replaced atomically)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Export this launch (default: the newest approved one)
    #[arg(long, value_name = "L")]
    pub launch: Option<String>,
    /// tar.gz (launch-artifacts.tar.gz) or squashfs (the same members in
    /// a squashfs image; needs mksquashfs)
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::bundle::Format,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// A record as the CLI prints it.
#[derive(Debug, Serialize)]
pub struct RecordView {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub created: String,
    pub measurement: String,
    pub policy: u64,
    pub vcpus: u32,
    pub vcpu_type: String,
    pub cmdline: String,
    pub launches: Vec<LaunchView>,
    pub pending_launches: u32,
    pub family_id: String,
    pub image_id: String,
    pub id_key_digest: String,
    pub author_key_digest: String,
    pub min_tcb: BTreeMap<String, u8>,
    pub allow_test_root: bool,
    pub offline_unlock: bool,
    pub attestations_ok: u64,
    pub attestations_failed: u64,
    pub last_attestation: Option<String>,
}

/// A record object's properties, as `GetAll` and `GetManagedObjects`
/// return them.
type Properties = HashMap<String, OwnedValue>;

impl RecordView {
    /// The record behind `r`, in one round trip (`Properties.GetAll`):
    /// over `-H` every call crosses ssh.
    pub async fn fetch(r: &RecordProxy<'_>) -> Result<Self> {
        let props = zbus::fdo::PropertiesProxy::builder(r.inner().connection())
            .destination(BUS_NAME)?
            .path(r.inner().path().to_owned())?
            .build()
            .await
            .map_err(describe)?;
        let iface = zbus::names::InterfaceName::from_static_str(RECORD_INTERFACE)?;
        let all = props.get_all(iface).await.map_err(|e| describe(e.into()))?;
        Self::from_properties(&all)
    }

    /// Every record, in one round trip (`GetManagedObjects` on the
    /// manager's ObjectManager).
    pub async fn fetch_all(bus: &Bus) -> Result<Vec<Self>> {
        let om = zbus::fdo::ObjectManagerProxy::builder(&bus.conn)
            .destination(BUS_NAME)?
            .path(MANAGER_PATH)?
            .build()
            .await
            .map_err(describe)?;
        let objects = om
            .get_managed_objects()
            .await
            .map_err(|e| describe(e.into()))?;
        objects
            .values()
            .filter_map(|ifaces| {
                ifaces
                    .iter()
                    .find(|(name, _)| name.as_str() == RECORD_INTERFACE)
                    .map(|(_, props)| props)
            })
            .map(Self::from_properties)
            .collect()
    }

    fn from_properties(p: &Properties) -> Result<Self> {
        let last: String = prop(p, "LastAttestation")?;
        let launches: Vec<LaunchView> = prop(p, "Launches")?;
        let min_tcb: HashMap<String, u8> = prop(p, "MinTcb")?;
        Ok(RecordView {
            id: prop(p, "Id")?,
            name: prop(p, "Name")?,
            enabled: prop(p, "Enabled")?,
            created: prop(p, "Created")?,
            measurement: prop(p, "Measurement")?,
            policy: prop(p, "Policy")?,
            vcpus: prop(p, "Vcpus")?,
            vcpu_type: prop(p, "VcpuType")?,
            cmdline: prop(p, "Cmdline")?,
            launches,
            pending_launches: prop(p, "PendingLaunches")?,
            family_id: prop(p, "FamilyId")?,
            image_id: prop(p, "ImageId")?,
            id_key_digest: prop(p, "IdKeyDigest")?,
            author_key_digest: prop(p, "AuthorKeyDigest")?,
            min_tcb: min_tcb.into_iter().collect(),
            allow_test_root: prop(p, "AllowTestRoot")?,
            offline_unlock: prop(p, "OfflineUnlock")?,
            attestations_ok: prop(p, "AttestationsOk")?,
            attestations_failed: prop(p, "AttestationsFailed")?,
            last_attestation: (!last.is_empty()).then_some(last),
        })
    }

    /// The minimum TCB as `bootloader=N,tee=N,…`, or `none`.
    fn tcb_text(&self) -> String {
        if self.min_tcb.is_empty() {
            "none (only the daemon's [tcb_floor] applies)".to_string()
        } else {
            ["bootloader", "tee", "snp", "microcode", "fmc"]
                .iter()
                .filter_map(|k| self.min_tcb.get(*k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// Whether the record allows offline unlock, in words.
    fn offline_text(&self) -> &'static str {
        if self.offline_unlock {
            "unlock allowed (guests enrol a chip-derived key at their next online unlock)"
        } else {
            "unlock not allowed"
        }
    }

    fn print(&self) {
        print!("{}", self.render());
    }

    /// The text of `records show`, every daemon-supplied string escaped.
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let tcb = self.tcb_text();
        let _ = writeln!(out, "Name:         {}", escape(&self.name));
        let _ = writeln!(out, "Id:           {}", escape(&self.id));
        let _ = writeln!(
            out,
            "Enabled:      {}",
            if self.enabled { "yes" } else { "no" }
        );
        let _ = writeln!(out, "Created:      {}", escape(&self.created));
        let _ = writeln!(out, "Measurement:  {}", escape(&self.measurement));
        let _ = writeln!(out, "Policy:       {:#x}", self.policy);
        let _ = writeln!(
            out,
            "vCPUs:        {} x {}",
            self.vcpus,
            escape(&self.vcpu_type)
        );
        let _ = writeln!(out, "Cmdline:      {}", escape(&self.cmdline));
        let _ = writeln!(out, "Family ID:    {}", escape(&self.family_id));
        let _ = writeln!(out, "Image ID:     {}", escape(&self.image_id));
        let _ = writeln!(out, "ID key:       {}", escape(&self.id_key_digest));
        let _ = writeln!(out, "Author key:   {}", escape(&self.author_key_digest));
        let _ = writeln!(out, "Min TCB:      {tcb}");
        let _ = writeln!(
            out,
            "Test root:    {}",
            if self.allow_test_root {
                "ACCEPTED (registered with --allow-test-root; never for production)"
            } else {
                "refused"
            }
        );
        let _ = writeln!(out, "Offline:      {}", self.offline_text());
        let _ = writeln!(
            out,
            "Attestations: {} ok, {} refused, last {}",
            self.attestations_ok,
            self.attestations_failed,
            escape(self.last_attestation.as_deref().unwrap_or("never"))
        );
        out.push_str(&launches::render_launches(&self.launches));
        out
    }
}

/// Property `name` of a record, as type `T`.
fn prop<T>(p: &Properties, name: &str) -> Result<T>
where
    T: TryFrom<OwnedValue>,
    T::Error: std::fmt::Display,
{
    let v = p.get(name).with_context(|| {
        format!("the daemon's record has no property {name}; is snpguardd older than snpguardctl?")
    })?;
    let v = v
        .try_clone()
        .with_context(|| format!("reading the record's property {name}"))?;
    T::try_from(v).map_err(|e| anyhow::anyhow!("the record's property {name}: {e}"))
}

/// A proxy for the record object at `path`.
pub async fn record_at<'a>(bus: &Bus, path: OwnedObjectPath) -> Result<RecordProxy<'a>> {
    RecordProxy::builder(&bus.conn)
        .path(path)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(describe)
}

pub async fn find<'a>(bus: &Bus, key: &str) -> Result<RecordProxy<'a>> {
    let m = ManagerProxy::new(&bus.conn).await.map_err(describe)?;
    let path = m.find_record(key).await.map_err(describe)?;
    record_at(bus, path).await
}

/// Writes the bundle of `r` to `out` atomically through an fd.
pub async fn export_to(bus: &Bus, r: &RecordProxy<'_>, out: &std::path::Path) -> Result<()> {
    bus.require_fd_passing("export")?;
    let file = output::AtomicFile::create(out, 0o644)?;
    let fd = file
        .file()
        .try_clone()
        .with_context(|| format!("writing {}", out.display()))?;
    let fd = OwnedFd::from(std::os::fd::OwnedFd::from(fd));
    call_mut::<_, ()>(r.inner(), "ExportBundle", &(fd,))
        .await
        .context("exporting the bundle")?;
    file.commit()
}

pub fn run(target: &Target, cmd: RecordsCommand) -> Result<()> {
    bus::runtime()?.block_on(run_async(target, cmd))
}

async fn run_async(target: &Target, cmd: RecordsCommand) -> Result<()> {
    let bus = bus::connect(target).await?;
    match cmd {
        RecordsCommand::List(a) => list(&bus, a.json).await,
        RecordsCommand::Show(a) => {
            let view = RecordView::fetch(&find(&bus, &a.record).await?).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                view.print();
            }
            Ok(())
        }
        RecordsCommand::Enable(a) => set_enabled(&bus, a, true).await,
        RecordsCommand::SetMinTcb(a) => set_min_tcb(&bus, a).await,
        RecordsCommand::SetOfflineUnlock(a) => set_offline_unlock(&bus, a).await,
        RecordsCommand::Disable(a) => set_enabled(&bus, a, false).await,
        RecordsCommand::Delete(a) => {
            let r = find(&bus, &a.record).await?;
            let id = r.id().await.map_err(describe)?;
            let name = r.name().await.map_err(describe)?;
            call_mut::<_, ()>(r.inner(), "Delete", &()).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": id, "name": name, "deleted": true })
                );
            } else {
                println!("deleted {name} ({id})");
            }
            Ok(())
        }
        RecordsCommand::Export(a) => {
            let r = find(&bus, &a.record).await?;
            // A squashfs image is made from the tar.gz the daemon writes.
            let tmp = match a.format {
                crate::bundle::Format::TarGz => None,
                crate::bundle::Format::Squashfs => Some({
                    crate::bundle::require_mksquashfs()?;
                    tempfile::Builder::new()
                        .prefix("snpguard-export-")
                        .tempdir()
                        .context("creating a temporary directory")?
                }),
            };
            let tar_gz = match &tmp {
                None => a.out.clone(),
                Some(d) => d.path().join("launch-artifacts.tar.gz"),
            };
            match &a.launch {
                None => export_to(&bus, &r, &tar_gz).await?,
                Some(l) => launches::export_launch(&bus, &r, l, &tar_gz).await?,
            }
            if tmp.is_some() {
                crate::bundle::to_squashfs(&tar_gz, &a.out)?;
            }
            let id = r.id().await.map_err(describe)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": id, "bundle": a.out.display().to_string() })
                );
            } else {
                println!("wrote {}", a.out.display());
            }
            Ok(())
        }
        RecordsCommand::AddLaunch(a) => {
            launches::add(&bus, &find(&bus, &a.record).await?, &a).await
        }
        RecordsCommand::Approve(a) => {
            launches::approve(&bus, &find(&bus, &a.record).await?, &a).await
        }
        RecordsCommand::Retire(a) => {
            let r = find(&bus, &a.record).await?;
            launches::change(&r, &a, "RetireLaunch", "retired").await
        }
        RecordsCommand::Discard(a) => {
            let r = find(&bus, &a.record).await?;
            launches::change(&r, &a, "DiscardLaunch", "discarded").await
        }
    }
}

async fn list(bus: &Bus, json: bool) -> Result<()> {
    let mut views = RecordView::fetch_all(bus).await?;
    views.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        println!("no records; add one with snpguardctl register");
        return Ok(());
    }
    println!(
        "{:<24} {:<32} {:<7} {:>5} {:>7} MEASUREMENT",
        "NAME", "ID", "ENABLED", "VCPUS", "PENDING"
    );
    for v in &views {
        let short: String = v.measurement.chars().take(16).collect();
        println!(
            "{:<24} {:<32} {:<7} {:>5} {:>7} {}…",
            escape(&v.name),
            escape(&v.id),
            if v.enabled { "yes" } else { "no" },
            v.vcpus,
            v.pending_launches,
            escape(&short)
        );
    }
    Ok(())
}

async fn set_min_tcb(bus: &Bus, a: SetMinTcbArgs) -> Result<()> {
    use snpguard_protocol::dbus::tcb_key as k;
    let r = find(bus, &a.record).await?;
    let mut tcb: std::collections::HashMap<&str, u8> = [
        (k::BOOTLOADER, a.bootloader),
        (k::TEE, a.tee),
        (k::SNP, a.snp),
        (k::MICROCODE, a.microcode),
    ]
    .into();
    if let Some(f) = a.fmc {
        tcb.insert(k::FMC, f);
    }
    call_mut::<_, ()>(r.inner(), "SetMinimumTcb", &(tcb,))
        .await
        .with_context(|| format!("setting the minimum TCB of {}", a.record))?;
    let view = RecordView::fetch(&r).await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "id": view.id, "name": view.name, "min_tcb": view.min_tcb })
        );
    } else {
        println!(
            "minimum TCB of {} ({}) is now {}",
            view.name,
            view.id,
            view.tcb_text()
        );
    }
    Ok(())
}

async fn set_offline_unlock(bus: &Bus, a: SetOfflineUnlockArgs) -> Result<()> {
    let r = find(bus, &a.record).await?;
    let on = a.state.is_on();
    call_mut::<_, ()>(r.inner(), "SetOfflineUnlock", &(on,))
        .await
        .with_context(|| {
            format!(
                "turning offline unlock of {} {}",
                a.record,
                if on { "on" } else { "off" }
            )
        })?;
    let view = RecordView::fetch(&r).await?;
    // On stderr, so that --json output stays parseable.
    for line in offline_notes(&view.name, view.offline_unlock) {
        eprintln!("{line}");
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "id": view.id,
                "name": view.name,
                "offline_unlock": view.offline_unlock,
            })
        );
    } else {
        println!(
            "offline unlock of {} ({}) is {}",
            escape(&view.name),
            escape(&view.id),
            if view.offline_unlock { "on" } else { "off" }
        );
    }
    Ok(())
}

/// What an operator must know about offline unlock being on or off (the
/// limit of what the server decides).
pub fn offline_notes(name: &str, on: bool) -> Vec<String> {
    let name = escape(name);
    if on {
        vec![format!(
            "NOTE: a guest of {name} enrols a chip-derived key at its next online unlock and \
             can then open its root without any server; the server does not see such a boot, \
             and neither `records disable` nor `records set-offline-unlock {name} off` reaches \
             a guest until it comes online again"
        )]
    } else {
        vec![format!(
            "NOTE: a guest of {name} that enrolled removes its offline keyslot at its next \
             online unlock; a guest that never comes online again keeps unlocking offline"
        )]
    }
}

async fn set_enabled(bus: &Bus, a: RecordArg, enabled: bool) -> Result<()> {
    let r = find(bus, &a.record).await?;
    let method = if enabled { "Enable" } else { "Disable" };
    call_mut::<_, ()>(r.inner(), method, &())
        .await
        .with_context(|| format!("{} {}", method.to_lowercase(), a.record))?;
    let view = RecordView::fetch(&r).await?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "id": view.id, "name": view.name, "enabled": view.enabled })
        );
    } else {
        println!(
            "{} {} ({})",
            if view.enabled { "enabled" } else { "disabled" },
            view.name,
            view.id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_escapes_what_a_guest_or_daemon_supplied() {
        let launch = LaunchView {
            id: "2".into(),
            state: "pending".into(),
            measurement: "b".repeat(96),
            cmdline: "quiet\r\x1b[2Kconsole=ttyS0 init=/bin/sh".into(),
            created: "2026-12-03T02:00:00Z".into(),
            origin: "guest 10.0.0.5\x1b]0;owned\x07".into(),
        };
        let view = RecordView {
            id: "0".repeat(32),
            name: "web".into(),
            enabled: true,
            created: "2026-12-03T01:00:00Z".into(),
            measurement: "a".repeat(96),
            policy: 0x30000,
            vcpus: 2,
            vcpu_type: "EPYC-v4".into(),
            cmdline: "console=ttyS0\u{202e}x".into(),
            launches: vec![launch],
            pending_launches: 1,
            family_id: "00".repeat(16),
            image_id: "00".repeat(16),
            id_key_digest: "11".repeat(48),
            author_key_digest: "22".repeat(48),
            min_tcb: BTreeMap::new(),
            allow_test_root: false,
            offline_unlock: false,
            attestations_ok: 0,
            attestations_failed: 0,
            last_attestation: None,
        };
        let text = view.render();
        assert!(
            text.contains("cmdline: quiet\\r\\x1b[2Kconsole=ttyS0 init=/bin/sh\n"),
            "{text}"
        );
        assert!(
            text.contains("guest 10.0.0.5\\x1b]0;owned\\x07\n"),
            "{text}"
        );
        assert!(
            text.contains("Cmdline:      console=ttyS0\\u{202e}x\n"),
            "{text}"
        );
        for c in ['\x1b', '\r', '\x07', '\u{202e}'] {
            assert!(!text.contains(c), "{c:?} in {text}");
        }
        assert!(
            text.contains("Offline:      unlock not allowed\n"),
            "{text}"
        );
    }

    #[test]
    fn show_and_json_say_whether_offline_unlock_is_allowed() {
        let mut view = RecordView {
            id: "0".repeat(32),
            name: "laptop".into(),
            enabled: true,
            created: "2026-12-03T01:00:00Z".into(),
            measurement: "a".repeat(96),
            policy: 0x30000,
            vcpus: 2,
            vcpu_type: "EPYC-v4".into(),
            cmdline: String::new(),
            launches: Vec::new(),
            pending_launches: 0,
            family_id: "00".repeat(16),
            image_id: "00".repeat(16),
            id_key_digest: "11".repeat(48),
            author_key_digest: "22".repeat(48),
            min_tcb: BTreeMap::new(),
            allow_test_root: false,
            offline_unlock: true,
            attestations_ok: 0,
            attestations_failed: 0,
            last_attestation: None,
        };
        let text = view.render();
        assert!(
            text.contains("Offline:      unlock allowed (guests enrol a chip-derived key"),
            "{text}"
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["offline_unlock"], true);
        view.offline_unlock = false;
        assert_eq!(
            serde_json::to_value(&view).unwrap()["offline_unlock"],
            false
        );
    }

    #[test]
    fn offline_notes_state_the_limit() {
        let on = offline_notes("web", true).join("\n");
        assert!(on.contains("without any server") && on.contains("comes online again"));
        assert!(on.contains("records set-offline-unlock web off"), "{on}");
        let off = offline_notes("web", false).join("\n");
        assert!(
            off.contains("removes its offline keyslot at its next online unlock")
                && off.contains("never comes online again keeps unlocking offline"),
            "{off}"
        );
        // A name is escaped like everywhere else on the terminal.
        assert!(!offline_notes("a\x1bb", true).concat().contains('\x1b'));
    }
}
