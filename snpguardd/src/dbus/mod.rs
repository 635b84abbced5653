//! The D-Bus management API (`org.snpguard.SnpGuard1`), served over a
//! [`RecordService`]. Names, limits, errors and client proxies live in
//! [`snpguard_protocol::dbus`]; the reference is `docs/dbus.md`.
//!
//! - [`manager`]: the Manager object (register, list, find).
//! - [`record`]: one object per record (properties, enable, export, …).
//! - [`certificates`]: certificate imports, listing and removal (on the
//!   Manager object), over a [`CertificateService`].
//! - [`options`]: the `a{sv}` registration options, parsed once.
//! - [`import`]: confinement of path arguments to the import directory.
//! - [`polkit`]: authorization of every mutating call.

pub mod certificates;
pub mod import;
pub mod manager;
pub mod options;
pub mod polkit;
pub mod record;

use std::path::PathBuf;
use std::sync::Arc;

use snpguard_protocol::dbus::{Error, BUS_NAME, MANAGER_PATH};
use zbus::fdo::ObjectManager;
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use crate::attest::CertificateService;
use crate::service::{RecordService, ServiceError};

/// What every object of the API shares.
pub(crate) struct Context {
    pub(crate) service: Arc<dyn RecordService>,
    pub(crate) certs: Arc<dyn CertificateService>,
    pub(crate) import: import::ImportDir,
}

/// Serves the API on the connection `builder` makes: registers the
/// Manager (with its Certificates interface over `certs`), the
/// ObjectManager and one object per existing record, then requests
/// [`BUS_NAME`]. Returns the connection; the API is served for as
/// long as it lives.
///
/// `import_dir` is the only directory `RegisterFromPaths` and
/// `ImportFromPaths` read from and `ExportBundleToPath` writes to; it
/// must exist.
pub async fn serve(
    builder: zbus::connection::Builder<'_>,
    service: Arc<dyn RecordService>,
    certs: Arc<dyn CertificateService>,
    import_dir: PathBuf,
) -> Result<Connection, Error> {
    let import = import::ImportDir::open(&import_dir)?;
    let ctx = Arc::new(Context {
        service,
        certs,
        import,
    });
    let conn = builder.build().await?;
    let server = conn.object_server();
    server.at(MANAGER_PATH, ObjectManager).await?;
    server
        .at(MANAGER_PATH, manager::Manager::new(ctx.clone()))
        .await?;
    server
        .at(MANAGER_PATH, certificates::Certificates::new(ctx.clone()))
        .await?;
    let svc = ctx.service.clone();
    let records = blocking(move || svc.list()).await?;
    for info in records {
        record::add(&conn, &ctx, info).await?;
    }
    conn.request_name(BUS_NAME).await?;
    Ok(conn)
}

/// Publishes a change of the shared store made by any replica: the
/// record's object is added, updated or removed, with the usual signals,
/// so that clients of this daemon's bus (Cockpit) see changes made
/// through another; a change of the held certificates or CRLs is
/// signalled (`Certificates.Changed`). A resync adds and updates every
/// record and signals the certificates too.
pub async fn publish_change(
    conn: &Connection,
    change: crate::store::StoreChange,
) -> Result<(), Error> {
    let ctx = conn
        .object_server()
        .interface::<_, manager::Manager>(MANAGER_PATH)
        .await?
        .get()
        .await
        .ctx();
    match change {
        crate::store::StoreChange::Record(id) => {
            let svc = ctx.service.clone();
            let lookup = id.clone();
            match blocking(move || svc.get(&lookup)).await {
                Ok(info) => record::sync(conn, &ctx, info).await,
                Err(Error::NotFound(_)) => record::remove(conn, &id).await,
                Err(e) => Err(e),
            }
        }
        crate::store::StoreChange::Certificates => {
            let emitter = SignalEmitter::new(conn, MANAGER_PATH)?;
            certificates::Certificates::changed(&emitter).await?;
            Ok(())
        }
        crate::store::StoreChange::Resync => {
            let svc = ctx.service.clone();
            for info in blocking(move || svc.list()).await? {
                record::sync(conn, &ctx, info).await?;
            }
            let emitter = SignalEmitter::new(conn, MANAGER_PATH)?;
            certificates::Certificates::changed(&emitter).await?;
            Ok(())
        }
    }
}

/// Runs a blocking [`RecordService`] call off the async executor.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("service task failed: {e}")))?
        .map_err(to_dbus)
}

/// The typed D-Bus error for a service error.
pub(crate) fn to_dbus(e: ServiceError) -> Error {
    let msg = e.to_string();
    match e {
        ServiceError::InvalidInput(_) => Error::InvalidInput(msg),
        ServiceError::NotFound(_) => Error::NotFound(msg),
        ServiceError::AlreadyExists(_) => Error::AlreadyExists(msg),
        ServiceError::SealedKey(_) => Error::SealedKey(msg),
        ServiceError::Storage(_) => Error::Storage(msg),
        ServiceError::Unavailable(_) => Error::Unavailable(msg),
        ServiceError::LaunchState(_) => Error::LaunchState(msg),
        ServiceError::LastApprovedLaunch(_) => Error::LastApprovedLaunch(msg),
        ServiceError::TooManyPending(_) => Error::TooManyPending(msg),
    }
}
