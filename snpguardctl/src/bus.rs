//! Reaching the daemon's bus: the local system bus, an explicit address
//! (`--bus-address`, tests), or a remote system bus through
//! `ssh -xT [user@]host systemd-stdio-bridge` (`-H`, like `systemctl -H`).

use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use zbus::proxy::MethodFlags;
use zbus::Connection;

/// Where the daemon is.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// D-Bus address of the bus the daemon is on.
    pub bus_address: Option<String>,
    /// `[user@]host` to reach through ssh.
    pub host: Option<String>,
}

/// A connection, and the ssh process carrying it (killed on drop).
pub struct Bus {
    pub conn: Connection,
    _ssh: Option<tokio::process::Child>,
    remote: bool,
}

impl Bus {
    /// Whether file descriptors can reach the daemon (not through ssh).
    pub fn require_fd_passing(&self, what: &str) -> Result<()> {
        if self.remote {
            anyhow::bail!(
                "{what} passes files as descriptors, which cannot cross ssh; \
                 run snpguardctl on the host itself"
            );
        }
        Ok(())
    }
}

/// A single-threaded runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Connects to the daemon's bus.
pub async fn connect(target: &Target) -> Result<Bus> {
    if let Some(host) = &target.host {
        return connect_ssh(host).await;
    }
    let conn = match &target.bus_address {
        Some(addr) => zbus::connection::Builder::address(addr.as_str())
            .with_context(|| format!("bus address {addr:?}"))?
            .build()
            .await
            .with_context(|| format!("connecting to {addr}"))?,
        None => Connection::system()
            .await
            .context("connecting to the system bus; is dbus running?")?,
    };
    Ok(Bus {
        conn,
        _ssh: None,
        remote: false,
    })
}

async fn connect_ssh(host: &str) -> Result<Bus> {
    if host.starts_with('-') {
        anyhow::bail!("host {host:?} must not start with '-'");
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let theirs_out: OwnedFd = theirs.try_clone().context("socketpair")?.into();
    let theirs_in: OwnedFd = theirs.into();
    let ssh = tokio::process::Command::new("ssh")
        .args(["-xT", "--", host, "systemd-stdio-bridge"])
        .stdin(Stdio::from(theirs_in))
        .stdout(Stdio::from(theirs_out))
        .kill_on_drop(true)
        .spawn()
        .context("starting ssh")?;
    ours.set_nonblocking(true).context("socketpair")?;
    let stream = tokio::net::UnixStream::from_std(ours).context("socketpair")?;
    // The bridge authenticates the remote side itself (as the ssh user);
    // our uid means nothing there.
    let conn = zbus::connection::Builder::unix_stream(stream)
        .auth_mechanism(zbus::connection::AuthMechanism::Anonymous)
        .build()
        .await
        .with_context(|| format!("reaching the system bus of {host} through ssh"))?;
    Ok(Bus {
        conn,
        _ssh: Some(ssh),
        remote: true,
    })
}

/// Calls a mutating method, allowing polkit to ask for a password when
/// we run on a terminal (as systemctl does).
pub async fn call_mut<B, R>(proxy: &zbus::Proxy<'_>, method: &str, body: &B) -> Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: DeserializeOwned + zbus::zvariant::Type,
{
    let flags = if std::io::stdin().is_terminal() {
        MethodFlags::AllowInteractiveAuth.into()
    } else {
        Default::default()
    };
    proxy
        .call_with_flags(method, flags, body)
        .await
        .map_err(describe)?
        .ok_or_else(|| anyhow!("{method}: the daemon sent no reply"))
}

/// A D-Bus error as one line: the daemon's message and the error's name.
pub fn describe(e: zbus::Error) -> anyhow::Error {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            let short = name
                .as_str()
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            match msg {
                Some(m) => anyhow!("{m} ({short})"),
                None => anyhow!("{name}"),
            }
        }
        other => anyhow!(other),
    }
}
