//! The Manager object: registration, listing and lookup.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use snpguard::measure::VcpuType;
use snpguard_protocol::dbus::{file_key, limit, AuditSummary, Error, ACTION_REGISTER};
use zbus::message::Header;
use zbus::zvariant::{OwnedFd, OwnedObjectPath, OwnedValue};
use zbus::{interface, Connection};

use super::options::RegisterOptions;
use super::{blocking, import, polkit, record, Context};
use crate::service::RegisterRequest;

/// `org.snpguard.SnpGuard1.Manager` at `/org/snpguard/SnpGuard1`.
pub struct Manager {
    ctx: Arc<Context>,
}

impl Manager {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Manager { ctx }
    }

    pub(crate) fn ctx(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    async fn register_files(
        &self,
        conn: &Connection,
        hdr: &Header<'_>,
        mut files: HashMap<String, File>,
        options: RegisterOptions,
        sealed_vmk: Vec<u8>,
    ) -> Result<OwnedObjectPath, Error> {
        let mut take = |k: &str| {
            files
                .remove(k)
                .ok_or_else(|| Error::InvalidInput(format!("file {k:?} is missing")))
        };
        let req = RegisterRequest {
            name: options.name,
            firmware: take(file_key::FIRMWARE)?,
            kernel: take(file_key::KERNEL)?,
            initrd: take(file_key::INITRD)?,
            cmdline: options.cmdline,
            vcpus: options.vcpus,
            vcpu_type: options.vcpu_type,
            allow_smt: options.allow_smt,
            allow_debug: options.allow_debug,
            allow_migrate_ma: options.allow_migrate_ma,
            min_tcb: options.min_tcb,
            allow_test_root: options.allow_test_root,
            allow_offline_unlock: options.allow_offline_unlock,
            sealed_vmk,
        };
        let svc = self.ctx.service.clone();
        let info = blocking(move || svc.register(req)).await?;
        let caller = polkit::caller(conn, hdr).await;
        tracing::info!(
            RECORD = %info.id,
            NAME = %info.name,
            MEASUREMENT = %info.measurement,
            CALLER = %caller.name,
            CALLER_UID = %caller.uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            "record {} registered (by {caller})",
            info.name
        );
        record::add(conn, &self.ctx, info).await
    }
}

/// An audit entry as the D-Bus API returns it.
fn wire_entry(e: crate::audit::AuditEntry) -> AuditSummary {
    AuditSummary {
        time: e.time,
        record: e.record.unwrap_or_default(),
        peer: e.peer,
        result: e.result,
        codes: e.codes,
        detail: e.detail,
    }
}

/// Checks the keys of a files dictionary: exactly [`file_key::ALL`].
fn check_file_keys<V>(files: &HashMap<String, V>) -> Result<(), Error> {
    for k in files.keys() {
        if !file_key::ALL.contains(&k.as_str()) {
            return Err(Error::InvalidInput(format!(
                "unknown file {k:?}; expected {}",
                file_key::ALL.join(", ")
            )));
        }
    }
    for k in file_key::ALL {
        if !files.contains_key(k) {
            return Err(Error::InvalidInput(format!("file {k:?} is missing")));
        }
    }
    Ok(())
}

fn check_sealed_vmk(v: &[u8]) -> Result<(), Error> {
    if v.is_empty() || v.len() > limit::SEALED_VMK {
        return Err(Error::InvalidInput(format!(
            "sealed_vmk is {} bytes; it must be 1..={} (vmk.sealed from convert)",
            v.len(),
            limit::SEALED_VMK
        )));
    }
    Ok(())
}

#[interface(name = "org.snpguard.SnpGuard1.Manager")]
impl Manager {
    /// Registers a launch. `files` maps "firmware", "kernel" and "initrd"
    /// to open regular files; `options` is described in docs/dbus.md.
    #[zbus(out_args("record"))]
    async fn register(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        files: HashMap<String, OwnedFd>,
        options: HashMap<String, OwnedValue>,
        sealed_vmk: Vec<u8>,
    ) -> Result<OwnedObjectPath, Error> {
        polkit::authorize(conn, &hdr, ACTION_REGISTER).await?;
        check_file_keys(&files)?;
        let options = RegisterOptions::parse(&options)?;
        check_sealed_vmk(&sealed_vmk)?;
        let mut opened = HashMap::new();
        for (k, fd) in files {
            let f = File::from(std::os::fd::OwnedFd::from(fd));
            import::require_regular(&f, &format!("file {k:?}"))?;
            opened.insert(k, f);
        }
        self.register_files(conn, &hdr, opened, options, sealed_vmk)
            .await
    }

    /// Registers a launch from files inside the import directory.
    #[zbus(out_args("record"))]
    async fn register_from_paths(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        files: HashMap<String, String>,
        options: HashMap<String, OwnedValue>,
        sealed_vmk: Vec<u8>,
    ) -> Result<OwnedObjectPath, Error> {
        polkit::authorize(conn, &hdr, ACTION_REGISTER).await?;
        check_file_keys(&files)?;
        let options = RegisterOptions::parse(&options)?;
        check_sealed_vmk(&sealed_vmk)?;
        let mut opened = HashMap::new();
        for (k, path) in files {
            let f = self.ctx.import.open_file(&path)?;
            opened.insert(k, f);
        }
        self.register_files(conn, &hdr, opened, options, sealed_vmk)
            .await
    }

    /// Object paths of every record.
    #[zbus(out_args("records"))]
    async fn list_records(&self) -> Result<Vec<OwnedObjectPath>, Error> {
        let svc = self.ctx.service.clone();
        let records = blocking(move || svc.list()).await?;
        records.iter().map(|r| record::path(&r.id)).collect()
    }

    /// The record whose name (or id) is `name`.
    #[zbus(out_args("record"))]
    async fn find_record(&self, name: String) -> Result<OwnedObjectPath, Error> {
        if name.len() > limit::FIND_KEY {
            return Err(Error::InvalidInput(format!(
                "name longer than {} bytes",
                limit::FIND_KEY
            )));
        }
        let svc = self.ctx.service.clone();
        let records = blocking(move || svc.list()).await?;
        let found = records
            .iter()
            .find(|r| r.name == name)
            .or_else(|| records.iter().find(|r| r.id == name))
            .ok_or_else(|| Error::NotFound(format!("no record named {name:?}")))?;
        record::path(&found.id)
    }

    /// The last `count` attestations (1..=1000), oldest first. Reading,
    /// like the records' properties: the bus policy decides, not polkit.
    #[zbus(out_args("entries"))]
    async fn audit_trail(&self, count: u32) -> Result<Vec<AuditSummary>, Error> {
        if count == 0 || count > limit::AUDIT_ENTRIES {
            return Err(Error::InvalidInput(format!(
                "count is {count}; it must be 1..={}",
                limit::AUDIT_ENTRIES
            )));
        }
        let svc = self.ctx.service.clone();
        let entries = blocking(move || svc.audit_trail(count as usize)).await?;
        Ok(entries.into_iter().map(wire_entry).collect())
    }

    /// The last `count` refusals (1..=1000) decided before a report's
    /// signature was verified (bad nonce, unknown image, chain or
    /// signature failure), oldest first; they are in neither the audit
    /// trail nor any record's counters. Reading: the bus policy decides.
    #[zbus(out_args("entries"))]
    async fn unverified_refusals(&self, count: u32) -> Result<Vec<AuditSummary>, Error> {
        if count == 0 || count > limit::AUDIT_ENTRIES {
            return Err(Error::InvalidInput(format!(
                "count is {count}; it must be 1..={}",
                limit::AUDIT_ENTRIES
            )));
        }
        let svc = self.ctx.service.clone();
        let entries = blocking(move || svc.unverified_refusals(count as usize)).await?;
        Ok(entries.into_iter().map(wire_entry).collect())
    }

    /// The daemon's HPKE ingestion public key (raw X25519, 32 bytes).
    #[zbus(property)]
    async fn ingestion_public_key(&self) -> Vec<u8> {
        self.ctx.service.ingestion_public_key()
    }

    /// The daemon's version.
    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The only directory `RegisterFromPaths` reads from and
    /// `ExportBundleToPath` writes to, as configured.
    #[zbus(property)]
    async fn import_directory(&self) -> String {
        self.ctx.import.path().display().to_string()
    }

    /// The vCPU models `vcpu_type` accepts.
    #[zbus(property)]
    async fn supported_vcpu_types(&self) -> Vec<String> {
        VcpuType::ALL.iter().map(|t| t.name().to_string()).collect()
    }
}
