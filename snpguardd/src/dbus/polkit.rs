//! Authorization of mutating calls through polkit, on the connection the
//! call arrived on. The subject is the caller's unique bus name, never the
//! daemon's own process; interaction is allowed only when the caller set
//! ALLOW_INTERACTIVE_AUTHORIZATION on its message. Anything but a clear
//! "authorized" (polkit unreachable, malformed answer) denies.

use std::collections::HashMap;

use snpguard_protocol::dbus::Error;
use zbus::message::{Flags, Header};
use zbus::proxy;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedValue, Value};
use zbus::Connection;

/// polkit's `CheckAuthorization` flag allowing interaction.
const ALLOW_USER_INTERACTION: u32 = 0x1;

/// A polkit subject: kind and details.
pub type Subject = (String, HashMap<String, OwnedValue>);

#[proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority",
    gen_blocking = false
)]
trait Authority {
    fn check_authorization(
        &self,
        subject: &Subject,
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Who made a call, for the journal line of a change: the caller's unique
/// bus name and, when the bus can tell, its Unix user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The unique bus name (`:1.42`).
    pub name: String,
    /// The Unix user id the bus knows the connection by.
    pub uid: Option<u32>,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.uid {
            Some(uid) => write!(f, "uid {uid} ({})", self.name),
            None => write!(f, "{} (uid unknown)", self.name),
        }
    }
}

/// The caller of `hdr` as the bus daemon knows it (`GetConnectionUnixUser`
/// on the connection the call came in on). A bus that cannot tell gives
/// no uid, not an error: the call was authorized already.
pub async fn caller(conn: &Connection, hdr: &Header<'_>) -> Caller {
    let Some(sender) = hdr.sender() else {
        return Caller {
            name: String::new(),
            uid: None,
        };
    };
    let uid = match zbus::fdo::DBusProxy::new(conn).await {
        Ok(bus) => bus
            .get_connection_unix_user(sender.clone().into())
            .await
            .ok(),
        Err(_) => None,
    };
    Caller {
        name: sender.to_string(),
        uid,
    }
}

/// Returns `Ok(())` if polkit authorizes the sender of `hdr` for `action`.
pub async fn authorize(conn: &Connection, hdr: &Header<'_>, action: &str) -> Result<(), Error> {
    let sender = hdr
        .sender()
        .ok_or_else(|| Error::AccessDenied("the call has no sender; cannot authorize it".into()))?;
    let name = OwnedValue::try_from(Value::from(sender.as_str()))
        .map_err(|e| Error::AccessDenied(format!("cannot build polkit subject: {e}")))?;
    let subject: Subject = (
        "system-bus-name".to_string(),
        HashMap::from([("name".to_string(), name)]),
    );
    let flags = if hdr.primary().flags().contains(Flags::AllowInteractiveAuth) {
        ALLOW_USER_INTERACTION
    } else {
        0
    };
    let unreachable = |e: zbus::Error| {
        Error::AccessDenied(format!(
            "polkit could not be asked about {action} ({e}); refusing. Is polkitd running?"
        ))
    };
    let authority = AuthorityProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(unreachable)?;
    let (authorized, challenge, _) = authority
        .check_authorization(&subject, action, HashMap::new(), flags, "")
        .await
        .map_err(unreachable)?;
    if authorized {
        Ok(())
    } else if challenge {
        Err(Error::AccessDenied(format!(
            "{action} needs an administrator's authentication: run it as root or as a \
             member of the group snpguard-admin, or from a terminal with a polkit agent"
        )))
    } else {
        Err(Error::AccessDenied(format!("not authorized for {action}")))
    }
}
