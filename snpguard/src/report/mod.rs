//! The SEV-SNP attestation report (AMD SEV-SNP ABI, "ATTESTATION_REPORT"
//! structure), parsed once into typed values.
//!
//! [`Report::parse`] enforces everything that is a property of the bytes
//! alone: size, a supported version (2, 3 or 5), the signature algorithm,
//! and every reserved (must-be-zero) field for that version. Whatever holds
//! a [`Report`] can rely on those; the rules that need certificates or an
//! expectation live in [`crate::verify`].

mod fields;

use std::fmt;

pub use fields::{
    Cpuid, FirmwareVersion, GuestPolicy, KeyInfo, PlatformInfo, SigningKey, Tcb, TcbLayout,
    TcbParts,
};

/// Size of a report in bytes.
pub const REPORT_SIZE: usize = 0x4A0;
/// The signature covers bytes `0x000..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2A0;
/// ECDSA P-384 with SHA-384, the only algorithm AMD defines.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Report versions this parser understands.
pub const SUPPORTED_VERSIONS: [u32; 3] = [2, 3, 5];

/// A report that is structurally invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Not exactly [`REPORT_SIZE`] bytes.
    #[error("report is {0} bytes, expected {REPORT_SIZE}; pass the raw binary report (not hex, not an extended-report blob)")]
    Size(usize),
    /// A version this parser does not know.
    #[error("report version {0} is not supported (supported: 2, 3, 5)")]
    UnsupportedVersion(u32),
    /// A signature algorithm other than ECDSA P-384/SHA-384.
    #[error("report signature algorithm {0} is not supported (only 1, ECDSA P-384 with SHA-384)")]
    UnsupportedSignatureAlgorithm(u32),
    /// A must-be-zero field is not zero.
    #[error("reserved field {field} (offset {offset:#x}) is not zero")]
    ReservedNonZero {
        /// Name of the field in the ABI specification.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
    },
    /// Guest policy bit 17 is reserved and must be one.
    #[error("guest policy {0:#x} has reserved bit 17 clear (must be set)")]
    PolicyReservedBit17(u64),
}

/// The r and s values of the report signature, as the report stores them
/// (72-byte little-endian integers, upper 24 bytes zero for P-384).
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    /// r, little-endian.
    pub r: [u8; 72],
    /// s, little-endian.
    pub s: [u8; 72],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("r", &hex::encode(self.r))
            .field("s", &hex::encode(self.s))
            .finish()
    }
}

impl Signature {
    /// The signature as the 96-byte big-endian `r || s` that ECDSA
    /// libraries take.
    pub fn to_p384_bytes(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        for i in 0..48 {
            out[47 - i] = self.r[i];
            out[95 - i] = self.s[i];
        }
        out
    }
}

/// A parsed attestation report. Every field of the ABI is here; the raw
/// bytes are kept for signature verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Report format version (2, 3 or 5).
    pub version: u32,
    /// Guest SVN from the ID block.
    pub guest_svn: u32,
    /// The guest policy the guest was launched with.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm (always 1 after parsing).
    pub sig_algo: u32,
    /// Current TCB of the platform (raw; layout depends on the product).
    pub current_tcb: Tcb,
    /// Platform information flags.
    pub platform_info: PlatformInfo,
    /// Key information (signing key, author key, chip-id masking).
    pub key_info: KeyInfo,
    /// Guest-provided data bound into the report.
    pub report_data: [u8; 64],
    /// Launch digest.
    pub measurement: [u8; 48],
    /// Host-provided data given at launch.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID public key that signed the ID block (zero if none).
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author public key (zero if none).
    pub author_key_digest: [u8; 48],
    /// Report ID of this guest.
    pub report_id: [u8; 32],
    /// Report ID of the guest's migration agent.
    pub report_id_ma: [u8; 32],
    /// The TCB the report is signed for: the VCEK must match it.
    pub reported_tcb: Tcb,
    /// CPUID family/model/stepping (version 3 and later).
    pub cpuid: Option<Cpuid>,
    /// Chip identifier (zero when masked; Turin uses the first 8 bytes).
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: Tcb,
    /// Current firmware version.
    pub current_version: FirmwareVersion,
    /// Committed firmware version.
    pub committed_version: FirmwareVersion,
    /// TCB at launch time.
    pub launch_tcb: Tcb,
    /// Mitigation vector at launch (version 5).
    pub launch_mit_vector: Option<u64>,
    /// Current mitigation vector (version 5).
    pub current_mit_vector: Option<u64>,
    /// The signature over bytes `0..SIGNED_LEN`.
    pub signature: Signature,
    raw: Box<[u8; REPORT_SIZE]>,
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

fn mbz(b: &[u8], field: &'static str, start: usize, end: usize) -> Result<(), ReportError> {
    if b[start..end].iter().all(|&x| x == 0) {
        Ok(())
    } else {
        Err(ReportError::ReservedNonZero {
            field,
            offset: start,
        })
    }
}

impl Report {
    /// Parses and structurally checks a raw report.
    pub fn parse(bytes: &[u8]) -> Result<Report, ReportError> {
        let raw: Box<[u8; REPORT_SIZE]> = bytes
            .try_into()
            .map(Box::new)
            .map_err(|_| ReportError::Size(bytes.len()))?;
        let b = &raw[..];
        let version = le32(b, 0x00);
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ReportError::UnsupportedVersion(version));
        }
        let sig_algo = le32(b, 0x34);
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::UnsupportedSignatureAlgorithm(sig_algo));
        }
        let policy = GuestPolicy(le64(b, 0x08));
        if !policy.reserved_bit17() {
            return Err(ReportError::PolicyReservedBit17(policy.0));
        }
        if policy.reserved_bits() != 0 {
            return Err(ReportError::ReservedNonZero {
                field: "POLICY[63:26]",
                offset: 0x08,
            });
        }
        let key_info = KeyInfo(le32(b, 0x48));
        if key_info.reserved_bits() != 0 {
            return Err(ReportError::ReservedNonZero {
                field: "KEY_INFO[31:5]",
                offset: 0x48,
            });
        }
        mbz(b, "RESERVED (after KEY_INFO)", 0x4C, 0x50)?;
        let cpuid = if version >= 3 {
            mbz(b, "RESERVED (after CPUID)", 0x18B, 0x1A0)?;
            Some(Cpuid {
                family: b[0x188],
                model: b[0x189],
                stepping: b[0x18A],
            })
        } else {
            mbz(b, "RESERVED (0x188)", 0x188, 0x1A0)?;
            None
        };
        mbz(b, "RESERVED (after CURRENT version)", 0x1EB, 0x1EC)?;
        mbz(b, "RESERVED (after COMMITTED version)", 0x1EF, 0x1F0)?;
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            mbz(b, "RESERVED (after CURRENT_MIT_VECTOR)", 0x208, SIGNED_LEN)?;
            (Some(le64(b, 0x1F8)), Some(le64(b, 0x200)))
        } else {
            mbz(b, "RESERVED (after LAUNCH_TCB)", 0x1F8, SIGNED_LEN)?;
            (None, None)
        };
        // r and s are P-384 scalars in 72-byte fields; the upper bytes and
        // the tail of the signature area must be zero.
        mbz(b, "SIGNATURE.R[71:48]", 0x2A0 + 48, 0x2A0 + 72)?;
        mbz(b, "SIGNATURE.S[71:48]", 0x2E8 + 48, 0x2E8 + 72)?;
        mbz(b, "SIGNATURE (reserved tail)", 0x330, REPORT_SIZE)?;

        Ok(Report {
            version,
            guest_svn: le32(b, 0x04),
            policy,
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: le32(b, 0x30),
            sig_algo,
            current_tcb: Tcb(le64(b, 0x38)),
            platform_info: PlatformInfo(le64(b, 0x40)),
            key_info,
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            id_key_digest: arr(b, 0xE0),
            author_key_digest: arr(b, 0x110),
            report_id: arr(b, 0x140),
            report_id_ma: arr(b, 0x160),
            reported_tcb: Tcb(le64(b, 0x180)),
            cpuid,
            chip_id: arr(b, 0x1A0),
            committed_tcb: Tcb(le64(b, 0x1E0)),
            current_version: FirmwareVersion::from_bytes(arr(b, 0x1E8)),
            committed_version: FirmwareVersion::from_bytes(arr(b, 0x1EC)),
            launch_tcb: Tcb(le64(b, 0x1F0)),
            launch_mit_vector,
            current_mit_vector,
            signature: Signature {
                r: arr(b, 0x2A0),
                s: arr(b, 0x2E8),
            },
            raw,
        })
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// The whole raw report.
    pub fn as_bytes(&self) -> &[u8; REPORT_SIZE] {
        &self.raw
    }

    /// Whether CHIP_ID is masked: the host configured the firmware
    /// (SNP_CONFIG MASK_CHIP_ID) to report zeros instead of the chip's ID.
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|&b| b == 0)
    }
}

#[cfg(test)]
mod tests;

impl serde::Serialize for Report {
    /// Every field; byte strings as lowercase hex, bit fields as numbers
    /// with their decoded flags.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let p = self.policy;
        let policy = serde_json::json!({
            "raw": format!("{:#x}", p.0),
            "abi_major": p.abi_major(), "abi_minor": p.abi_minor(),
            "smt": p.smt(), "migrate_ma": p.migrate_ma(), "debug": p.debug(),
            "single_socket": p.single_socket(), "cxl_allow": p.cxl_allow(),
            "mem_aes_256_xts": p.mem_aes_256_xts(), "rapl_dis": p.rapl_dis(),
            "ciphertext_hiding": p.ciphertext_hiding(),
            "page_swap_disable": p.page_swap_disable(),
        });
        let pi = self.platform_info;
        let platform_info = serde_json::json!({
            "raw": format!("{:#x}", pi.0),
            "smt_enabled": pi.smt_enabled(), "tsme_enabled": pi.tsme_enabled(),
            "ecc_enabled": pi.ecc_enabled(), "rapl_disabled": pi.rapl_disabled(),
            "ciphertext_hiding_enabled": pi.ciphertext_hiding_enabled(),
            "alias_check_complete": pi.alias_check_complete(),
        });
        let ki = self.key_info;
        let key_info = serde_json::json!({
            "raw": format!("{:#x}", ki.0),
            "author_key_en": ki.author_key_en(), "mask_chip_key": ki.mask_chip_key(),
            "signing_key": ki.signing_key(),
        });
        let tcb = |t: Tcb| format!("{:016x}", t.0);
        let mut st = s.serialize_struct("Report", 29)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("guest_svn", &self.guest_svn)?;
        st.serialize_field("policy", &policy)?;
        st.serialize_field("family_id", &hex::encode(self.family_id))?;
        st.serialize_field("image_id", &hex::encode(self.image_id))?;
        st.serialize_field("vmpl", &self.vmpl)?;
        st.serialize_field("sig_algo", &self.sig_algo)?;
        st.serialize_field("current_tcb", &tcb(self.current_tcb))?;
        st.serialize_field("platform_info", &platform_info)?;
        st.serialize_field("key_info", &key_info)?;
        st.serialize_field("report_data", &hex::encode(self.report_data))?;
        st.serialize_field("measurement", &hex::encode(self.measurement))?;
        st.serialize_field("host_data", &hex::encode(self.host_data))?;
        st.serialize_field("id_key_digest", &hex::encode(self.id_key_digest))?;
        st.serialize_field("author_key_digest", &hex::encode(self.author_key_digest))?;
        st.serialize_field("report_id", &hex::encode(self.report_id))?;
        st.serialize_field("report_id_ma", &hex::encode(self.report_id_ma))?;
        st.serialize_field("reported_tcb", &tcb(self.reported_tcb))?;
        st.serialize_field("cpuid", &self.cpuid)?;
        st.serialize_field("chip_id", &hex::encode(self.chip_id))?;
        st.serialize_field("committed_tcb", &tcb(self.committed_tcb))?;
        st.serialize_field("current_version", &self.current_version.to_string())?;
        st.serialize_field("committed_version", &self.committed_version.to_string())?;
        st.serialize_field("launch_tcb", &tcb(self.launch_tcb))?;
        st.serialize_field("launch_mit_vector", &self.launch_mit_vector)?;
        st.serialize_field("current_mit_vector", &self.current_mit_vector)?;
        st.serialize_field("signature_r", &hex::encode(self.signature.r))?;
        st.serialize_field("signature_s", &hex::encode(self.signature.s))?;
        st.end()
    }
}
