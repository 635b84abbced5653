//! One object per record at `/org/snpguard/SnpGuard1/records/<id>`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use snpguard::dbus::{limit, Error, ACTION_EXPORT, ACTION_MANAGE, RECORDS_PATH};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedFd, OwnedObjectPath};
use zbus::{interface, Connection, ObjectServer};

use super::{blocking, polkit, Context};
use crate::service::RecordInfo;

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
    Ok(())
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
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        let info = blocking(move || svc.set_enabled(&id, enabled)).await?;
        let changed = info.enabled != self.info.enabled;
        self.info = info;
        if changed {
            self.enabled_changed(emitter).await?;
        }
        Ok(())
    }

    async fn export_to(&self, out: File) -> Result<(), Error> {
        let svc = self.ctx.service.clone();
        let id = self.info.id.clone();
        blocking(move || {
            let mut out = std::io::BufWriter::new(out);
            svc.export_bundle(&id, &mut out)?;
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
        server.remove::<Record, _>(path(&self.info.id)?).await?;
        Ok(())
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
        self.export_to(out).await
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
        let res = self.export_to(out).await;
        if res.is_err() {
            self.ctx.import.remove_file(&path);
        }
        res
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

    /// Launch digest, 96 hex digits.
    #[zbus(property)]
    async fn measurement(&self) -> String {
        self.info.measurement.clone()
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

    /// Kernel command line.
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
