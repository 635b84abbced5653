//! `snpguard-sim polkit`: a polkit authority that allows every action, for
//! the private D-Bus bus of `make demo` and the system tests. snpguardd
//! asks polkit about every mutating call; on a private bus there is no
//! polkitd, so this stands in for it and prints every decision.
//! **Test use only**: it owns `org.freedesktop.PolicyKit1` on the bus it is
//! given, never on the system bus (the bus policy there refuses it, and
//! the command requires an explicit address).

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use zbus::zvariant::OwnedValue;

/// polkit's well-known name and the authority's object.
const NAME: &str = "org.freedesktop.PolicyKit1";
const PATH: &str = "/org/freedesktop/PolicyKit1/Authority";

/// The authority: every `CheckAuthorization` is answered "authorized".
struct AllowAll;

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl AllowAll {
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        _details: HashMap<String, String>,
        _flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        let who = subject
            .1
            .get("name")
            .and_then(|v| <&str>::try_from(v).ok())
            .unwrap_or("?")
            .to_owned();
        eprintln!(
            "snpguard-sim polkit: ALLOWED {action_id} for {} {who} (test authority: allows everything)",
            subject.0
        );
        (true, false, HashMap::new())
    }
}

/// Whether `address` names a bus this may serve on: an explicit D-Bus
/// address, never the system bus socket.
fn check_address(address: &str) -> anyhow::Result<()> {
    if !address.contains(':') || address.contains("/run/dbus/system_bus_socket") {
        bail!(
            "{address:?} is not a private bus address (unix:path=…); the test polkit never serves the system bus"
        );
    }
    Ok(())
}

/// Serves the authority on `address` until SIGTERM or SIGINT.
pub fn serve(address: &str) -> anyhow::Result<()> {
    check_address(address)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let _conn = zbus::connection::Builder::address(address)
            .with_context(|| format!("bus address {address:?}"))?
            .serve_at(PATH, AllowAll)?
            .name(NAME)?
            .build()
            .await
            .with_context(|| format!("owning {NAME} on {address}"))?;
        // Scripts wait for this line before starting the daemon.
        println!("snpguard-sim polkit: serving {NAME} on {address}, ALLOWING EVERY ACTION");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r.context("SIGINT handler")?,
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::check_address;

    #[test]
    fn only_explicit_private_addresses() {
        check_address("unix:path=/tmp/snpguard-bus-x/bus").unwrap();
        assert!(check_address("unix:path=/run/dbus/system_bus_socket").is_err());
        assert!(check_address("system").is_err());
    }
}
