//! `snpguardd`: parse arguments, set up logging, run the daemon.
//!
//! Start-up order matters for the sandbox: Landlock and the capability
//! sets apply to the calling thread and the threads it creates later, so
//! the sandbox is applied while the process is still single-threaded,
//! before the database (whose flusher is a thread) and the runtime start.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use snpguardd::config::{self, Bus, Config};
use snpguardd::keys::TlsConfig;
use snpguardd::registry::{Registry, RegistryOptions};
use snpguardd::secrets::MasterKey;
use snpguardd::{dbus, logging, notify, sandbox};

fn main() -> ExitCode {
    let args = config::Args::parse();
    if let Err(e) = logging::init() {
        eprintln!("snpguardd: setting up logging: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = notify::status(&format!("failed: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &config::Args) -> anyhow::Result<()> {
    let cfg = config::resolve(args).context("reading the configuration")?;
    cfg.log_summary();
    for dir in [&cfg.state_dir, &cfg.import_dir] {
        create_dir(dir)?;
    }

    let status = sandbox::apply(&sandbox::SandboxSpec::for_config(&cfg)).context("sandboxing")?;
    status.log();

    let master = MasterKey::load(&cfg.state_dir).context("loading the master key")?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => TlsConfig::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => TlsConfig::default(),
    };
    let registry = Registry::open_with(&cfg.state_dir, master, &RegistryOptions { tls })
        .with_context(|| format!("opening the registry in {}", cfg.state_dir.display()))?;
    tracing::info!("{}", registry.key_summary());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(cfg, registry))
}

fn create_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

async fn serve(cfg: Config, registry: Registry) -> anyhow::Result<()> {
    let _watchdog = notify::spawn_watchdog();
    let builder = match &cfg.bus {
        Bus::System => zbus::connection::Builder::system(),
        Bus::Session => zbus::connection::Builder::session(),
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    }
    .with_context(|| format!("connecting to the {} bus", cfg.bus))?;
    let conn = dbus::serve(builder, Arc::new(registry), cfg.import_dir.clone())
        .await
        .with_context(|| format!("serving the management API on the {} bus", cfg.bus))?;
    tracing::info!(
        bus = %cfg.bus,
        unique_name = conn.unique_name().map(|n| n.to_string()).unwrap_or_default(),
        "serving org.snpguard.SnpGuard1"
    );
    notify::ready("serving the management API")?;

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = notify::stopping();
    drop(conn);
    Ok(())
}
