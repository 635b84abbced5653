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
use snpguardd::attest::kds::HttpKds;
use snpguardd::attest::Attestor;
use snpguardd::config::{self, Bus, Config};
use snpguardd::keys::{TlsConfig, TlsSource};
use snpguardd::registry::{Registry, RegistryOptions, StoreChoice};
use snpguardd::secrets::MasterKey;
use snpguardd::{dbus, https, logging, notify, sandbox};

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
    if let Some(config::Command::MigrateStore {
        to,
        password_file,
        ca_file,
    }) = &args.command
    {
        return migrate_store(&cfg, to, password_file.as_deref(), ca_file.as_deref());
    }
    cfg.log_summary();
    for dir in [&cfg.state_dir, &cfg.import_dir] {
        create_dir(dir)?;
    }
    // Socket activation reads and clears the environment: single-threaded.
    let (listener, source) = notify::listener(cfg.listen).context("opening the HTTPS listener")?;
    // Off unless configured; bound before the sandbox like the HTTPS one.
    let metrics = cfg
        .metrics_listen
        .map(|addr| {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("opening the metrics listener on {addr}"))?;
            l.set_nonblocking(true)
                .context("setting up the metrics listener")?;
            tracing::info!(address = %addr, "serving /metrics");
            Ok::<_, anyhow::Error>(l)
        })
        .transpose()?;
    tracing::info!(?source, addr = ?listener.local_addr().ok(), "HTTPS listener");

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
    let registry = Registry::open_with(
        &cfg.state_dir,
        master,
        &RegistryOptions {
            tls,
            test_roots: !cfg.test_roots.is_empty(),
            store: store_choice(&cfg.store)?,
        },
    )
    .with_context(|| format!("opening the registry in {}", cfg.state_dir.display()))?;
    tracing::info!("{}", registry.key_summary());
    let tls = match registry.keys().tls() {
        TlsSource::Generated {
            cert_pem, key_pem, ..
        } => https::TlsMaterial::new(
            cert_pem.as_bytes().to_vec(),
            zeroize::Zeroizing::new(key_pem.as_bytes().to_vec()),
        ),
        TlsSource::Files { cert, key } => {
            https::TlsMaterial::read(cert, key).context("reading the configured TLS files")?
        }
    };
    let tls = https::server_config(&tls).context("setting up TLS")?;
    let registry = Arc::new(registry);
    let attestor = Attestor::new(registry.clone(), &cfg, Box::new(HttpKds::amd()))
        .context("setting up attestation")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        if let Some(l) = metrics {
            let l =
                tokio::net::TcpListener::from_std(l).context("registering the metrics listener")?;
            tokio::spawn(snpguardd::metrics::serve(l));
        }
        serve(cfg, registry, attestor, listener, tls).await
    })
}

/// `snpguardd migrate-store`: the state directory's embedded store into
/// an empty PostgreSQL database.
fn migrate_store(
    cfg: &Config,
    to: &str,
    password_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let store = config::StoreConfig {
        url: Some(to.to_owned()),
        password_file: password_file
            .map(std::path::Path::to_path_buf)
            .or_else(|| cfg.store.password_file.clone()),
        ca_file: ca_file
            .map(std::path::Path::to_path_buf)
            .or_else(|| cfg.store.ca_file.clone()),
    };
    let StoreChoice::Postgres(target) = store_choice(&store)? else {
        anyhow::bail!("--to must name a PostgreSQL database");
    };
    let summary =
        snpguardd::registry::migrate_store(&cfg.state_dir, &target).with_context(|| {
            format!(
                "migrating the store of {} (is snpguardd stopped?)",
                cfg.state_dir.display()
            )
        })?;
    println!(
        "copied the store of {} into the database:",
        cfg.state_dir.display()
    );
    for (tree, n) in &summary.trees {
        println!("  {tree:<8} {n} entries");
    }
    println!("  {} blob files", summary.blobs);
    println!(
        "checked: every tree equal, every referenced blob present. Now set [store] url (and \
         password_file / ca_file) in the configuration and start snpguardd."
    );
    Ok(())
}

/// The database the configuration names; the password is read here, once.
fn store_choice(cfg: &config::StoreConfig) -> anyhow::Result<StoreChoice> {
    let Some(url) = &cfg.url else {
        return Ok(StoreChoice::Sled);
    };
    let password = cfg
        .password_path()
        .map(|p| snpguardd::store::read_password(&p))
        .transpose()?;
    Ok(StoreChoice::Postgres(snpguardd::store::PgOptions {
        url: url.clone(),
        password,
        ca_file: cfg.ca_file.clone(),
    }))
}

fn create_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

async fn serve(
    cfg: Config,
    registry: Arc<Registry>,
    attestor: Attestor,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let _watchdog = notify::spawn_watchdog();
    let builder = match &cfg.bus {
        Bus::System => zbus::connection::Builder::system(),
        Bus::Session => zbus::connection::Builder::session(),
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    }
    .with_context(|| format!("connecting to the {} bus", cfg.bus))?;
    // Attestations update the records' counters; publish them on the bus.
    // Bounded: under a flood a few intermediate counter signals are
    // dropped (the store has the truth, the next update catches up).
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::channel(1024);
    let attestor = Arc::new(attestor.with_observer(Box::new(move |info| {
        let _ = updates_tx.try_send(info);
    })));
    // The attestor also holds the certificates operators import over D-Bus.
    let conn = dbus::serve(
        builder,
        registry.clone(),
        attestor.clone(),
        cfg.import_dir.clone(),
    )
    .await
    .with_context(|| format!("serving the management API on the {} bus", cfg.bus))?;
    let bus_conn = conn.clone();
    tokio::spawn(async move {
        while let Some(info) = updates_rx.recv().await {
            if let Err(e) = dbus::record::update(&bus_conn, info).await {
                tracing::warn!("publishing record counters: {e}");
            }
        }
    });
    // Replicas on a shared store: publish what the others change too.
    if let Some(mut changes) = registry.store().subscribe() {
        let bus_conn = conn.clone();
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                if let Err(e) = dbus::publish_change(&bus_conn, change).await {
                    tracing::warn!("publishing a change made by another replica: {e}");
                }
            }
        });
    }
    tracing::info!(
        bus = %cfg.bus,
        unique_name = conn.unique_name().map(|n| n.to_string()).unwrap_or_default(),
        "serving org.snpguard.SnpGuard1"
    );

    let listener =
        tokio::net::TcpListener::from_std(listener).context("registering the HTTPS listener")?;
    let limits = https::Limits {
        per_ip_rate: cfg.rate_limit.per_second,
        per_ip_burst: cfg.rate_limit.burst,
        max_connections_per_source: cfg.rate_limit.connections,
        client_hello_timeout: std::time::Duration::from_secs(cfg.https.client_hello_timeout_secs),
        ..https::Limits::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(https::serve(listener, tls, attestor, limits, async move {
        let _ = stop_rx.await;
    }));
    // Installed before READY=1, so that a stop request sent as soon as
    // the daemon reports ready is a clean shutdown (before this point,
    // SIGTERM's default action ends the start-up).
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    notify::ready("serving the management API and HTTPS attestation")?;

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = notify::stopping();
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("HTTPS server stopped with: {e}"),
        Err(e) => tracing::warn!("HTTPS server task failed: {e}"),
    }
    drop(conn);
    // Every decision is durable already; flush what else is buffered.
    registry
        .store()
        .flush()
        .context("flushing the database at shutdown")?;
    Ok(())
}
