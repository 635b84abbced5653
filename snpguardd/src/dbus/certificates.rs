//! The Certificates interface on the Manager object: operator imports of
//! AMD certificates for hosts without KDS access, their listing, and the
//! removal of imports and cached VCEKs.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use snpguard_protocol::dbus::{
    limit, CertificateInfo, CrlInfo, Error, ACTION_IMPORT_CERTIFICATES, ACTION_REMOVE_CERTIFICATES,
};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedFd;
use zbus::{interface, Connection};

use super::{import, polkit, Context};
use crate::attest::{CertFilter, CertImportError, CertSummary, CrlSummary};

/// `org.snpguard.SnpGuard1.Certificates` at `/org/snpguard/SnpGuard1`.
pub struct Certificates {
    ctx: Arc<Context>,
}

impl Certificates {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Certificates { ctx }
    }

    async fn import_files(
        &self,
        files: Vec<(String, File)>,
    ) -> Result<Vec<CertificateInfo>, Error> {
        let certs = self.ctx.certs.clone();
        let imported = tokio::task::spawn_blocking(move || {
            let mut read = Vec::with_capacity(files.len());
            for (name, f) in files {
                let bytes = read_bounded(f, &name)?;
                read.push((name, bytes));
            }
            certs.import_certificates(&read).map_err(to_dbus)
        })
        .await
        .map_err(|e| Error::Storage(format!("import task failed: {e}")))??;
        Ok(imported.into_iter().map(info).collect())
    }
}

impl Certificates {
    /// Signals a change this daemon made, unless the store is shared:
    /// then the store's feed reports it, like every other replica's.
    async fn signal_local_change(&self, emitter: &SignalEmitter<'_>) {
        if self.ctx.certs.shared() {
            return;
        }
        if let Err(e) = Self::changed(emitter).await {
            tracing::warn!("signalling a change of the held certificates: {e}");
        }
    }
}

fn check_count(n: usize) -> Result<(), Error> {
    if n == 0 || n > limit::IMPORT_FILES {
        return Err(Error::InvalidInput(format!(
            "{n} files given; import 1 to {} files per call",
            limit::IMPORT_FILES
        )));
    }
    Ok(())
}

fn read_bounded(f: File, name: &str) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    f.take(limit::IMPORT_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::InvalidInput(format!("{name}: reading: {e}")))?;
    if bytes.len() > limit::IMPORT_FILE {
        return Err(Error::InvalidInput(format!(
            "{name}: larger than {} bytes; that is no certificate or certificate table",
            limit::IMPORT_FILE
        )));
    }
    Ok(bytes)
}

fn to_dbus(e: CertImportError) -> Error {
    let msg = e.to_string();
    match e {
        CertImportError::Malformed { .. }
        | CertImportError::Unrecognized { .. }
        | CertImportError::TooMany
        | CertImportError::CrlNotNewer { .. } => Error::InvalidInput(msg),
        CertImportError::Crl {
            code: "crl-malformed",
            ..
        } => Error::InvalidInput(msg),
        CertImportError::Untrusted { .. } | CertImportError::Crl { .. } => Error::Untrusted(msg),
        CertImportError::Store(_) => Error::Storage(msg),
    }
}

fn crl_info(c: CrlSummary) -> CrlInfo {
    CrlInfo {
        product: c.product.to_string(),
        issuer: if c.test_root { "test" } else { "amd" }.to_owned(),
        this_update: c.this_update,
        next_update: c.next_update,
        revoked: c.revoked,
        source: c.source.name().to_owned(),
    }
}

fn info(c: CertSummary) -> CertificateInfo {
    CertificateInfo {
        kind: if c.crl.is_some() {
            "CRL".to_owned()
        } else {
            c.role.to_string()
        },
        product: c.product.to_string(),
        chip_id: c.chip_id.unwrap_or_default(),
        tcb: c.tcb.unwrap_or_default(),
        not_after: c.not_after,
        source: c.source.to_owned(),
        file: c.file.unwrap_or_default(),
    }
}

#[interface(name = "org.snpguard.SnpGuard1.Certificates")]
impl Certificates {
    /// Checks and stores AMD certificates (PEM, DER or a certificate
    /// table per file), all or nothing. `files` maps a name (used in
    /// errors and results) to an open regular file.
    #[zbus(out_args("imported"))]
    async fn import(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        files: HashMap<String, OwnedFd>,
    ) -> Result<Vec<CertificateInfo>, Error> {
        polkit::authorize(conn, &hdr, ACTION_IMPORT_CERTIFICATES).await?;
        check_count(files.len())?;
        let mut opened = Vec::with_capacity(files.len());
        for (name, fd) in files {
            if name.is_empty() || name.len() > limit::FILE_LABEL {
                return Err(Error::InvalidInput(format!(
                    "file names must be 1 to {} bytes",
                    limit::FILE_LABEL
                )));
            }
            let f = File::from(std::os::fd::OwnedFd::from(fd));
            import::require_regular(&f, &name)?;
            opened.push((name, f));
        }
        opened.sort_by(|a, b| a.0.cmp(&b.0));
        let imported = self.import_files(opened).await?;
        self.signal_local_change(&emitter).await;
        Ok(imported)
    }

    /// As Import, from absolute paths of regular files inside the import
    /// directory (no "..", no symlinks below it).
    #[zbus(out_args("imported"))]
    async fn import_from_paths(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        paths: Vec<String>,
    ) -> Result<Vec<CertificateInfo>, Error> {
        polkit::authorize(conn, &hdr, ACTION_IMPORT_CERTIFICATES).await?;
        check_count(paths.len())?;
        let mut opened = Vec::with_capacity(paths.len());
        for path in paths {
            let f = self.ctx.import.open_file(&path)?;
            opened.push((path, f));
        }
        let imported = self.import_files(opened).await?;
        self.signal_local_change(&emitter).await;
        Ok(imported)
    }

    /// Every certificate the daemon holds (imports and the KDS cache).
    #[zbus(out_args("certificates"))]
    async fn list(&self) -> Result<Vec<CertificateInfo>, Error> {
        let certs = self.ctx.certs.clone();
        let held = tokio::task::spawn_blocking(move || certs.list_certificates())
            .await
            .map_err(|e| Error::Storage(format!("listing task failed: {e}")))?
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(held.into_iter().map(info).collect())
    }

    /// Every ARK CRL the daemon holds (imported or fetched from KDS),
    /// applied to every chain it verifies.
    #[zbus(out_args("crls"))]
    async fn list_crls(&self) -> Result<Vec<CrlInfo>, Error> {
        let certs = self.ctx.certs.clone();
        let held = tokio::task::spawn_blocking(move || certs.list_crls())
            .await
            .map_err(|e| Error::Storage(format!("listing task failed: {e}")))?
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(held.into_iter().map(crl_info).collect())
    }

    /// Removes the held certificates (imports and cached VCEKs) matching
    /// every non-empty argument: source `imported` or `kds-cache`; kind
    /// VCEK, VLEK, ASK, ASVK or CRL (held CRLs, by product and source
    /// only; CRLs are removed only with kind CRL); product; leading hex
    /// digits of a VCEK's chip id; tcb. All empty removes every
    /// certificate held. Returns what was removed.
    #[zbus(out_args("removed"))]
    #[allow(clippy::too_many_arguments)] // the D-Bus signature: five filters
    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        source: String,
        kind: String,
        product: String,
        chip_id: String,
        tcb: String,
    ) -> Result<Vec<CertificateInfo>, Error> {
        polkit::authorize(conn, &hdr, ACTION_REMOVE_CERTIFICATES).await?;
        let filter = CertFilter::parse(&source, &kind, &product, &chip_id, &tcb)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        let certs = self.ctx.certs.clone();
        let removed = tokio::task::spawn_blocking(move || certs.remove_certificates(&filter))
            .await
            .map_err(|e| Error::Storage(format!("removal task failed: {e}")))?
            .map_err(|e| Error::Storage(e.to_string()))?;
        if !removed.is_empty() {
            self.signal_local_change(&emitter).await;
        }
        Ok(removed.into_iter().map(info).collect())
    }

    /// The held certificates or CRLs changed, through this daemon or
    /// through another replica sharing its store: list them again. Sent
    /// after an import or a removal, and on a shared store also for a
    /// VCEK or CRL another replica cached from KDS.
    #[zbus(signal)]
    pub(crate) async fn changed(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}
