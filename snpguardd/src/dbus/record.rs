//! One object per record at `/org/snpguard/SnpGuard1/records/<id>`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use snpguard_protocol::dbus::{
    launch_file_key, limit, AgentFileEntry, Error, LaunchEntry, ACTION_EXPORT, ACTION_MANAGE,
    ACTION_REGISTER, RECORDS_PATH,
};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedFd, OwnedObjectPath};
use zbus::{interface, Connection, ObjectServer};

use super::{blocking, import, options, polkit, Context};
use crate::registry::launch_origin;
use crate::service::{LaunchRequest, LaunchState, RecordInfo, ServiceError};

/// The object path of record `id`. Ids are lowercase hex; anything else
/// is a storage inconsistency, not a client error.
pub fn path(id: &str) -> Result<OwnedObjectPath, Error> {
    let ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(Error::Storage(format!(
            "record id {id:?} cannot be an object path element"
        )));
    }
    OwnedObjectPath::try_from(format!("{RECORDS_PATH}/{id}"))
        .map_err(|e| Error::Storage(format!("record id {id:?}: {e}")))
}

/// Adds the object of a record (emitting InterfacesAdded) and returns its
/// path.
pub(crate) async fn add(
    conn: &Connection,
    ctx: &Arc<Context>,
    info: RecordInfo,
) -> Result<OwnedObjectPath, Error> {
    let p = path(&info.id)?;
    let obj = Record {
        ctx: ctx.clone(),
        info,
    };
    conn.object_server().at(&p, obj).await?;
    Ok(p)
}

/// Replaces the cached state of a record object with `info` (for example
/// after an attestation changed its counters) and emits PropertiesChanged
/// for what changed. A record without an object is ignored.
pub async fn update(conn: &Connection, info: RecordInfo) -> Result<(), Error> {
    let p = path(&info.id)?;
    let Ok(iface) = conn.object_server().interface::<_, Record>(&p).await else {
        return Ok(());
    };
    let mut rec = iface.get_mut().await;
    let old = std::mem::replace(&mut rec.info, info);
    let e = iface.signal_emitter();
    if old.enabled != rec.info.enabled {
        rec.enabled_changed(e).await?;
    }
    if old.attestations_ok != rec.info.attestations_ok {
        rec.attestations_ok_changed(e).await?;
    }
    if old.attestations_failed != rec.info.attestations_failed {
        rec.attestations_failed_changed(e).await?;
    }
    if old.last_attestation != rec.info.last_attestation {
        rec.last_attestation_changed(e).await?;
    }
    if old.min_tcb != rec.info.min_tcb {
        rec.min_tcb_changed(e).await?;
    }
    if old.offline_unlock != rec.info.offline_unlock {
        rec.offline_unlock_changed(e).await?;
    }
    rec.launches_changed_from(&old, e).await
}

/// Publishes `info` written elsewhere (another replica on the shared
/// store): updates the record's object, or adds it (InterfacesAdded) when
/// this daemon has none yet.
pub(crate) async fn sync(
    conn: &Connection,
    ctx: &Arc<Context>,
    info: RecordInfo,
) -> Result<(), Error> {
    let p = path(&info.id)?;
    if conn
        .object_server()
        .interface::<_, Record>(&p)
        .await
        .is_ok()
    {
        update(conn, info).await
    } else {
        add(conn, ctx, info).await.map(|_| ())
    }
}

/// Removes the object of a record deleted elsewhere (InterfacesRemoved);
/// nothing when this daemon has none.
pub(crate) async fn remove(conn: &Connection, id: &str) -> Result<(), Error> {
    let p = path(id)?;
    let server = conn.object_server();
    if server.interface::<_, Record>(&p).await.is_ok() {
        server.remove::<Record, _>(&p).await?;
    }
    Ok(())
}

/// Checks a launch id argument's length (the registry checks the rest).
fn check_launch_arg(launch: &str) -> Result<(), Error> {
    if launch.is_empty() || launch.len() > limit::LAUNCH_ID {
        return Err(Error::InvalidInput(format!(
            "launch id must be 1 to {} bytes; see the Launches property",
            limit::LAUNCH_ID
        )));
    }
    Ok(())
}

/// Checks the keys of a launch files dictionary: exactly
/// [`launch_file_key::ALL`].
fn check_launch_files<V>(files: &HashMap<String, V>) -> Result<(), Error> {
    for k in files.keys() {
        if !launch_file_key::ALL.contains(&k.as_str()) {
            return Err(Error::InvalidInput(format!(
                "unknown file {k:?}; expected {}",
                launch_file_key::ALL.join(", ")
            )));
        }
    }
    for k in launch_file_key::ALL {
        if !files.contains_key(k) {
            return Err(Error::InvalidInput(format!("file {k:?} is missing")));
        }
    }
    Ok(())
}

fn check_cmdline_arg(cmdline: &str) -> Result<(), Error> {
    if cmdline.len() > limit::CMDLINE {
        return Err(Error::InvalidInput(format!(
            "cmdline is longer than {} bytes",
            limit::CMDLINE
        )));
    }
    snpguard_protocol::text::check_cmdline(cmdline)
        .map_err(|e| Error::InvalidInput(format!("cmdline: {e}")))
}

/// `org.snpguard.SnpGuard1.Record`: one registered launch.
pub struct Record {
    ctx: Arc<Context>,
    info: RecordInfo,
}

impl Record {
    async fn set_enabled(
        &mut self,
        conn: &Connection,
        hdr: &Header<'_>,
        emitter: &SignalEmitter<'_>,
        enabled: bool,
    ) -> Result<(), Error> {
        polkit::authorize(conn, hdr, ACTION_MANAGE).await?;
        let caller = polkit::caller(conn, hdr).await;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let info = blocking(move || svc.set_enabled(&id, enabled)).await?;
        let changed = info.enabled != self.info.enabled;
        self.info = info;
        let state = if enabled { "enabled" } else { "disabled" };
        tracing::info!(
            RECORD = %self.info.id,
            NAME = %self.info.name,
            ENABLED = %enabled,
            CALLER = %caller.name,
            CALLER_UID = %caller.uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            "record {} {state}{} (by {caller})",
            self.info.name,
            if changed { "" } else { " again, unchanged" }
        );
        if changed {
            self.enabled_changed(emitter).await?;
        }
        Ok(())
    }

    /// Emits PropertiesChanged for the launch properties that differ
    /// between `old` and the current state.
    async fn launches_changed_from(
        &self,
        old: &RecordInfo,
        e: &SignalEmitter<'_>,
    ) -> Result<(), Error> {
        if old.launches != self.info.launches {
            self.launches_changed(e).await?;
            self.pending_launches_changed(e).await?;
        }
        if old.measurement != self.info.measurement {
            self.measurement_changed(e).await?;
        }
        if old.cmdline != self.info.cmdline {
            self.cmdline_changed(e).await?;
        }
        Ok(())
    }

    /// Replaces the cached state after a launch operation and announces
    /// what changed.
    async fn replace_info(&mut self, info: RecordInfo, e: &SignalEmitter<'_>) -> Result<(), Error> {
        let old = std::mem::replace(&mut self.info, info);
        self.launches_changed_from(&old, e).await
    }

    async fn add_launch_files(
        &mut self,
        emitter: &SignalEmitter<'_>,
        mut files: HashMap<String, File>,
        cmdline: String,
    ) -> Result<String, Error> {
        let mut take = |k: &str| {
            files
                .remove(k)
                .ok_or_else(|| Error::InvalidInput(format!("file {k:?} is missing")))
        };
        let req = LaunchRequest {
            kernel: Box::new(take(launch_file_key::KERNEL)?),
            initrd: Box::new(take(launch_file_key::INITRD)?),
            cmdline,
            origin: launch_origin::OPERATOR.to_owned(),
        };
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let added = blocking(move || svc.add_launch(&id, req)).await?;
        tracing::info!(
            RECORD = %self.info.id,
            LAUNCH = %added.launch,
            MEASUREMENT = %added.measurement,
            ORIGIN = launch_origin::OPERATOR,
            "{} launch {} of record {}",
            if added.created { "added pending" } else { "already had" },
            added.launch,
            self.info.id
        );
        self.replace_info(added.record, emitter).await?;
        Ok(added.launch)
    }

    /// Runs a launch operation that answers with the changed record.
    async fn launch_op(
        &mut self,
        conn: &Connection,
        hdr: &Header<'_>,
        emitter: &SignalEmitter<'_>,
        launch: String,
        what: &'static str,
        op: fn(&dyn crate::service::RecordService, &str, &str) -> Result<RecordInfo, ServiceError>,
    ) -> Result<(), Error> {
        polkit::authorize(conn, hdr, ACTION_MANAGE).await?;
        check_launch_arg(&launch)?;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let l = launch.clone();
        let info = blocking(move || op(svc.as_ref(), &id, &l)).await?;
        tracing::info!(
            RECORD = %self.info.id,
            LAUNCH = %launch,
            "{what} launch {launch} of record {}",
            self.info.id
        );
        self.replace_info(info, emitter).await
    }

    async fn export_to(&self, launch: Option<String>, out: File) -> Result<(), Error> {
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        blocking(move || {
            let mut out = std::io::BufWriter::new(out);
            svc.export_bundle(&id, launch.as_deref(), &mut out)?;
            out.flush().map_err(|e| {
                crate::service::ServiceError::Storage(format!("writing the bundle: {e}"))
            })
        })
        .await
    }
}

#[interface(name = "org.snpguard.SnpGuard1.Record")]
impl Record {
    /// Allows attestation to release the record's key.
    async fn enable(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.set_enabled(conn, &hdr, &emitter, true).await
    }

    /// Refuses attestation for the record from now on.
    async fn disable(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), Error> {
        self.set_enabled(conn, &hdr, &emitter, false).await
    }

    /// Replaces the record's own minimum TCB: `tcb` maps "bootloader",
    /// "tee", "snp" and "microcode" (and "fmc" for Turin) to the lowest
    /// SPL accepted from now on. The daemon-wide floors still apply on top.
    async fn set_minimum_tcb(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        tcb: HashMap<String, u8>,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_MANAGE).await?;
        let min = options::parse_min_tcb(&tcb)?;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let info = blocking(move || svc.set_min_tcb(&id, min)).await?;
        let changed = info.min_tcb != self.info.min_tcb;
        self.info = info;
        if changed {
            self.min_tcb_changed(&emitter).await?;
        }
        Ok(())
    }

    /// Allows (`enabled` true) or forbids offline unlock: from now on a
    /// signed release that asks for the directive tells the agent to enrol
    /// its chip-derived key, or to remove the offline keyslot it enrolled.
    /// A guest that never attests online again keeps what it has.
    async fn set_offline_unlock(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        enabled: bool,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_MANAGE).await?;
        let caller = polkit::caller(conn, &hdr).await;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let info = blocking(move || svc.set_offline_unlock(&id, enabled)).await?;
        let was = self.info.offline_unlock;
        let changed = info.offline_unlock != was;
        self.info = info;
        let state = |on: bool| if on { "on" } else { "off" };
        let what = match (changed, enabled) {
            (true, true) => {
                "turned on: its guests enrol a chip-derived key at their next online unlock"
            }
            (true, false) => {
                "turned off: a guest that enrolled removes its offline keyslot at its next \
                 online unlock; one that never comes online again keeps it"
            }
            (false, _) => "set again, unchanged",
        };
        tracing::info!(
            RECORD = %self.info.id,
            NAME = %self.info.name,
            OFFLINE_UNLOCK = %state(enabled),
            OLD_OFFLINE_UNLOCK = %state(was),
            CALLER = %caller.name,
            CALLER_UID = %caller.uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            "offline unlock of record {} {what} (by {caller})",
            self.info.name
        );
        if changed {
            self.offline_unlock_changed(&emitter).await?;
        }
        Ok(())
    }

    /// Deletes the record and its secrets; the object disappears.
    async fn delete(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_MANAGE).await?;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        blocking(move || svc.delete(&id)).await?;
        // On a shared store the change feed may have removed the object
        // already (the deletion is published to every replica).
        match server.remove::<Record, _>(path(&self.info.id)?).await {
            Ok(_) | Err(zbus::Error::InterfaceNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the record's launch-artifacts.tar.gz to `fd`, which the
    /// caller opened for writing.
    async fn export_bundle(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        fd: OwnedFd,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_EXPORT).await?;
        let out = File::from(std::os::fd::OwnedFd::from(fd));
        self.export_to(None, out).await
    }

    /// Writes the record's launch-artifacts.tar.gz to a new file at `path`
    /// inside the import directory.
    async fn export_bundle_to_path(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_EXPORT).await?;
        if path.len() > limit::PATH {
            return Err(Error::InvalidInput(format!(
                "path longer than {} bytes",
                limit::PATH
            )));
        }
        let out = self.ctx.import.create_file(&path)?;
        let res = self.export_to(None, out).await;
        if res.is_err() {
            self.ctx.import.remove_file(&path);
        }
        res
    }

    /// Writes the launch-artifacts.tar.gz of launch `launch` (approved or
    /// retired) to `fd`, which the caller opened for writing.
    async fn export_launch_bundle(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        launch: String,
        fd: OwnedFd,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_EXPORT).await?;
        check_launch_arg(&launch)?;
        let out = File::from(std::os::fd::OwnedFd::from(fd));
        self.export_to(Some(launch), out).await
    }

    /// Writes the launch-artifacts.tar.gz of launch `launch` to a new file
    /// at `path` inside the import directory.
    async fn export_launch_bundle_to_path(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        launch: String,
        path: String,
    ) -> Result<(), Error> {
        polkit::authorize(conn, &hdr, ACTION_EXPORT).await?;
        check_launch_arg(&launch)?;
        if path.len() > limit::PATH {
            return Err(Error::InvalidInput(format!(
                "path longer than {} bytes",
                limit::PATH
            )));
        }
        let out = self.ctx.import.create_file(&path)?;
        let res = self.export_to(Some(launch), out).await;
        if res.is_err() {
            self.ctx.import.remove_file(&path);
        }
        res
    }

    /// Adds a pending launch: `files` maps "kernel" and "initrd" to open
    /// regular files; `cmdline` is the kernel command line as measured.
    /// Returns the launch id (an existing launch's when the measurement is
    /// the same).
    #[zbus(out_args("launch"))]
    async fn add_launch(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        files: HashMap<String, OwnedFd>,
        cmdline: String,
    ) -> Result<String, Error> {
        polkit::authorize(conn, &hdr, ACTION_REGISTER).await?;
        check_launch_files(&files)?;
        check_cmdline_arg(&cmdline)?;
        let mut opened = HashMap::new();
        for (k, fd) in files {
            let f = File::from(std::os::fd::OwnedFd::from(fd));
            import::require_regular(&f, &format!("file {k:?}"))?;
            opened.insert(k, f);
        }
        self.add_launch_files(&emitter, opened, cmdline).await
    }

    /// Adds a pending launch from files inside the import directory.
    #[zbus(out_args("launch"))]
    async fn add_launch_from_paths(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        files: HashMap<String, String>,
        cmdline: String,
    ) -> Result<String, Error> {
        polkit::authorize(conn, &hdr, ACTION_REGISTER).await?;
        check_launch_files(&files)?;
        check_cmdline_arg(&cmdline)?;
        let mut opened = HashMap::new();
        for (k, path) in files {
            opened.insert(k, self.ctx.import.open_file(&path)?);
        }
        self.add_launch_files(&emitter, opened, cmdline).await
    }

    /// Approves a pending (or retired) launch: signs its ID block; from
    /// now on attestation with its measurement releases the key.
    async fn approve_launch(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        launch: String,
    ) -> Result<(), Error> {
        self.launch_op(conn, &hdr, &emitter, launch, "approved", |s, id, l| {
            s.approve_launch(id, l)
        })
        .await
    }

    /// Retires an approved launch; its measurement releases nothing from
    /// now on. The last approved launch cannot be retired.
    async fn retire_launch(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        launch: String,
    ) -> Result<(), Error> {
        self.launch_op(conn, &hdr, &emitter, launch, "retired", |s, id, l| {
            s.retire_launch(id, l)
        })
        .await
    }

    /// Removes a pending or retired launch and its artifacts.
    async fn discard_launch(
        &mut self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        launch: String,
    ) -> Result<(), Error> {
        self.launch_op(conn, &hdr, &emitter, launch, "discarded", |s, id, l| {
            s.discard_launch(id, l)
        })
        .await
    }

    /// The SHA-256 digests of a launch's kernel and initrd, so that an
    /// operator can check what an approval signs. Read-only.
    #[zbus(out_args("kernel_sha256", "initrd_sha256"))]
    async fn launch_digests(&self, launch: String) -> Result<(String, String), Error> {
        match self.info.launches.iter().find(|l| l.id == launch) {
            Some(l) => Ok((l.kernel_sha256.clone(), l.initrd_sha256.clone())),
            None => Err(Error::NotFound(format!(
                "record {} has no launch {}",
                self.info.id,
                snpguard_protocol::text::escape(&launch)
            ))),
        }
    }

    /// The agent's files in the initrd of launch `launch` as the kernel
    /// unpacks it: (path, kind, sha256, text) sorted by path, text empty
    /// when not kept (binary, over 64 KiB, outside the agent
    /// directories), and the problems that make the list unreliable (an
    /// initrd that cannot be read; symlinks, hard links or `..` around
    /// the agent's paths). For the review before an approval. polkit:
    /// export, as the initrd itself.
    #[zbus(out_args("files", "problems"))]
    async fn launch_agent_files(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        launch: String,
    ) -> Result<(Vec<AgentFileEntry>, Vec<String>), Error> {
        polkit::authorize(conn, &hdr, ACTION_EXPORT).await?;
        check_launch_arg(&launch)?;
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let found = blocking(move || svc.launch_agent_files(&id, &launch)).await?;
        let files = found
            .files
            .into_iter()
            .map(|f| {
                let kind = f.kind.as_str().to_owned();
                (f.path, kind, f.sha256, f.text.unwrap_or_default())
            })
            .collect();
        Ok((files, found.problems))
    }

    /// Record id: the image ID in lowercase hex.
    #[zbus(property)]
    async fn id(&self) -> String {
        self.info.id.clone()
    }

    /// Human name.
    #[zbus(property)]
    async fn name(&self) -> String {
        self.info.name.clone()
    }

    /// Whether attestation may release the record's key.
    #[zbus(property)]
    async fn enabled(&self) -> bool {
        self.info.enabled
    }

    /// Creation time, RFC 3339.
    #[zbus(property)]
    async fn created(&self) -> String {
        self.info.created.clone()
    }

    /// Launch digest of the newest approved launch, 96 hex digits.
    #[zbus(property)]
    async fn measurement(&self) -> String {
        self.info.measurement.clone()
    }

    /// Every launch, oldest first: (id, state, measurement, cmdline,
    /// created, origin).
    #[zbus(property)]
    async fn launches(&self) -> Vec<LaunchEntry> {
        self.info
            .launches
            .iter()
            .map(|l| LaunchEntry {
                id: l.id.clone(),
                state: l.state.as_str().to_owned(),
                measurement: l.measurement.clone(),
                cmdline: l.cmdline.clone(),
                created: l.created.clone(),
                origin: l.origin.clone(),
            })
            .collect()
    }

    /// Number of pending launches.
    #[zbus(property)]
    async fn pending_launches(&self) -> u32 {
        let n = self
            .info
            .launches
            .iter()
            .filter(|l| l.state == LaunchState::Pending)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Guest policy.
    #[zbus(property)]
    async fn policy(&self) -> u64 {
        self.info.policy
    }

    /// vCPU count.
    #[zbus(property)]
    async fn vcpus(&self) -> u32 {
        self.info.vcpus
    }

    /// vCPU model.
    #[zbus(property)]
    async fn vcpu_type(&self) -> String {
        self.info.vcpu_type.clone()
    }

    /// Kernel command line of the newest approved launch.
    #[zbus(property)]
    async fn cmdline(&self) -> String {
        self.info.cmdline.clone()
    }

    /// Family ID of the ID block, hex.
    #[zbus(property)]
    async fn family_id(&self) -> String {
        self.info.family_id.clone()
    }

    /// Image ID of the ID block, hex.
    #[zbus(property)]
    async fn image_id(&self) -> String {
        self.info.image_id.clone()
    }

    /// SHA-384 of the record's ID key, hex.
    #[zbus(property)]
    async fn id_key_digest(&self) -> String {
        self.info.id_key_digest.clone()
    }

    /// SHA-384 of the daemon's author key, hex.
    #[zbus(property)]
    async fn author_key_digest(&self) -> String {
        self.info.author_key_digest.clone()
    }

    /// Minimum TCB by component ("bootloader", "tee", "snp", "microcode",
    /// "fmc"); empty when the record has none.
    #[zbus(property)]
    async fn min_tcb(&self) -> HashMap<String, u8> {
        let mut m = HashMap::new();
        if let Some(t) = &self.info.min_tcb {
            m.insert("bootloader".to_string(), t.bootloader);
            m.insert("tee".to_string(), t.tee);
            m.insert("snp".to_string(), t.snp);
            m.insert("microcode".to_string(), t.microcode);
            if let Some(f) = t.fmc {
                m.insert("fmc".to_string(), f);
            }
        }
        m
    }

    /// Whether reports endorsed by a configured test root (a simulated
    /// platform) are accepted; set at registration only.
    #[zbus(property)]
    async fn allow_test_root(&self) -> bool {
        self.info.allow_test_root
    }

    /// Whether the record allows offline unlock: a signed release that
    /// asks for the directive says `enrol` when it does, `remove` when not;
    /// changed by `SetOfflineUnlock`.
    #[zbus(property)]
    async fn offline_unlock(&self) -> bool {
        self.info.offline_unlock
    }

    /// Successful attestations.
    #[zbus(property)]
    async fn attestations_ok(&self) -> u64 {
        self.info.attestations_ok
    }

    /// Refused attestations.
    #[zbus(property)]
    async fn attestations_failed(&self) -> u64 {
        self.info.attestations_failed
    }

    /// Time of the last attestation, RFC 3339, or "" if never.
    #[zbus(property)]
    async fn last_attestation(&self) -> String {
        self.info.last_attestation.clone().unwrap_or_default()
    }
}
