//! `launch-config.json` and the checks every reader and writer applies.

use serde::{Deserialize, Serialize};

use super::{BundleError, CONFIG_VERSION, MAX_NAME_LEN};

/// `launch-config.json`: the launch parameters the QEMU script and
/// `embed` need, and the values the daemon expects the guest to report.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LaunchConfig {
    /// Format version; always [`CONFIG_VERSION`].
    pub version: u32,
    /// Record name; `[A-Za-z0-9._-]`, 1 to 128 characters.
    pub name: String,
    /// Number of vCPUs (at least 1).
    pub vcpus: u32,
    /// QEMU CPU model, e.g. `EPYC-v4`; `[A-Za-z0-9._-]`.
    pub vcpu_type: String,
    /// Guest policy, `0x`-prefixed lowercase hex, e.g. `0x30000`.
    pub guest_policy: String,
    /// SEV features, `0x`-prefixed lowercase hex, e.g. `0x1`.
    pub guest_features: String,
    /// Launch digest, 96 lowercase hex digits.
    pub measurement: String,
    /// SHA-384 of the ID public key, 96 lowercase hex digits.
    pub id_key_digest: String,
    /// SHA-384 of the author public key, 96 lowercase hex digits.
    pub author_key_digest: String,
    /// Family ID, 32 lowercase hex digits.
    pub family_id: String,
    /// Image ID, 32 lowercase hex digits.
    pub image_id: String,
    /// Kernel, initrd and cmdline hashes in the firmware (must be true:
    /// the measurement assumes `kernel-hashes=on`).
    pub kernel_hashes: bool,
    /// A launch made locally by `snpguardctl launch-config` from a
    /// `convert --no-encryption` staging directory: its disk is not
    /// encrypted, no attestation server knows it, and its ID block is
    /// signed by keys thrown away after signing. It gives NO
    /// confidentiality; the tools that launch it say so. Absent (false) in
    /// every bundle the daemon writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_encryption: bool,
}

impl LaunchConfig {
    /// Checks every field; [`write_bundle`] and [`extract_bundle`] call it.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported (expected {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        check_token("name", &self.name)?;
        if self.vcpus == 0 || self.vcpus > snpguard::measure::MAX_VCPUS {
            return Err(invalid(
                "vcpus",
                format!("must be 1 to {}", snpguard::measure::MAX_VCPUS),
            ));
        }
        check_token("vcpu_type", &self.vcpu_type)?;
        if let Err(e) = self.vcpu_type.parse::<snpguard::measure::VcpuType>() {
            return Err(invalid("vcpu_type", e.to_string()));
        }
        check_hex_u64("guest_policy", &self.guest_policy)?;
        check_hex_u64("guest_features", &self.guest_features)?;
        check_hex_bytes("measurement", &self.measurement, 48)?;
        check_hex_bytes("id_key_digest", &self.id_key_digest, 48)?;
        check_hex_bytes("author_key_digest", &self.author_key_digest, 48)?;
        check_hex_bytes("family_id", &self.family_id, 16)?;
        check_hex_bytes("image_id", &self.image_id, 16)?;
        if !self.kernel_hashes {
            return Err(invalid(
                "kernel_hashes",
                "must be true: the launch digest covers kernel, initrd and cmdline".into(),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: String) -> BundleError {
    BundleError::InvalidConfig { field, reason }
}

/// A name safe to pass on a QEMU command line (no `,` or `=` or spaces).
fn check_token(field: &'static str, value: &str) -> Result<(), BundleError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            field,
            format!("character {c:?} not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_hex_u64(field: &'static str, value: &str) -> Result<(), BundleError> {
    let digits = value.strip_prefix("0x").unwrap_or("");
    if digits.is_empty() || digits.len() > 16 || !is_lower_hex(digits) {
        return Err(invalid(
            field,
            format!("{value:?} is not 0x followed by 1 to 16 lowercase hex digits"),
        ));
    }
    Ok(())
}

fn check_hex_bytes(field: &'static str, value: &str, bytes: usize) -> Result<(), BundleError> {
    if value.len() != bytes * 2 || !is_lower_hex(value) {
        return Err(invalid(
            field,
            format!("must be {} lowercase hex digits ({bytes} bytes)", bytes * 2),
        ));
    }
    Ok(())
}
