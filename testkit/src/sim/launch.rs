//! The simulated launch blob: what the "hardware" knows about one guest
//! launch, handed to the guest by the host (QEMU `-fw_cfg
//! name=opt/org.snpguard/sim-launch,file=BLOB`) so that the agent's
//! simulated report source can answer like the firmware would.
//!
//! **Test use only.** The blob carries the simulated VCEK's private key:
//! whoever reads it can sign any report for that platform. That is
//! acceptable only because the platform's root is a throw-away test key
//! that a daemon trusts solely through an explicit `[[test_roots]]`.

use serde::{Deserialize, Serialize};

use super::persist::{
    cert_from_pem, cert_pem, check_key_matches, key_from_pem, key_pem, malformed, parse_hex,
    parse_product, TcbFile,
};
use super::{sign_report_with, tcb_bytes, SimError, SimKey, SimPlatform, SimTcb};
use snpguard::certs::{encode_cert_table, Product, GUID_ARK, GUID_ASK, GUID_VCEK};
use snpguard::report::REPORT_SIZE;

/// Format version of the blob.
pub const SIM_LAUNCH_VERSION: u32 = 1;
/// Largest blob [`SimLaunch::from_json`] accepts.
pub const SIM_LAUNCH_MAX_SIZE: usize = 64 * 1024;

/// Report version the simulator emits (v3: CPUID fields present).
const REPORT_VERSION: u32 = 3;

/// One simulated guest launch: the platform's VCEK and chain, and the
/// values the firmware fixed at launch time.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimLaunch {
    /// Always [`SIM_LAUNCH_VERSION`].
    pub version: u32,
    /// Product (`milan`, `genoa`, `turin`).
    pub product: String,
    /// The platform's TCB (current, committed, launch and reported).
    tcb: TcbFile,
    /// CHIP_ID, 128 hex digits.
    pub chip_id: String,
    /// The VCEK private key, PKCS#8 PEM (test key; see the module docs).
    vcek_key: String,
    /// The VCEK certificate, PEM.
    pub vcek: String,
    /// The ASK certificate, PEM.
    pub ask: String,
    /// The ARK certificate, PEM.
    pub ark: String,
    /// Guest policy the guest was launched with.
    pub policy: u64,
    /// VMPL the report is requested at.
    pub vmpl: u32,
    /// Launch digest, 96 hex digits.
    pub measurement: String,
    /// Image ID from the ID block, 32 hex digits.
    pub image_id: String,
    /// Family ID from the ID block, 32 hex digits.
    pub family_id: String,
    /// Guest SVN from the ID block.
    pub guest_svn: u32,
    /// SHA-384 of the ID key, 96 hex digits.
    pub id_key_digest: String,
    /// SHA-384 of the author key, 96 hex digits (zeros: none).
    pub author_key_digest: String,
}

impl std::fmt::Debug for SimLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimLaunch")
            .field("product", &self.product)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

/// What the firmware fixed when the guest was launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchValues {
    /// Guest policy.
    pub policy: u64,
    /// VMPL the guest asks for reports at.
    pub vmpl: u32,
    /// Launch digest.
    pub measurement: [u8; 48],
    /// Image ID.
    pub image_id: [u8; 16],
    /// Family ID.
    pub family_id: [u8; 16],
    /// Guest SVN.
    pub guest_svn: u32,
    /// ID key digest.
    pub id_key_digest: [u8; 48],
    /// Author key digest (zeros when no author key).
    pub author_key_digest: [u8; 48],
}

/// CPUID family, model and stepping the simulator reports for a product.
fn cpuid(product: Product) -> [u8; 3] {
    match product {
        Product::Milan => [0x19, 0x01, 0x01],
        Product::Genoa => [0x19, 0x11, 0x01],
        Product::Turin => [0x1A, 0x02, 0x01],
    }
}

impl SimLaunch {
    /// The blob for a guest launched on `platform` (whose reports carry
    /// `chip_id`) with `values`.
    pub fn new(
        platform: &SimPlatform,
        chip_id: &[u8; 64],
        values: &LaunchValues,
    ) -> Result<SimLaunch, SimError> {
        Ok(SimLaunch {
            version: SIM_LAUNCH_VERSION,
            product: platform.product.to_string(),
            tcb: platform.tcb.into(),
            chip_id: hex::encode(chip_id),
            vcek_key: key_pem(&platform.vcek_key)?,
            vcek: cert_pem(&platform.vcek_der)?,
            ask: cert_pem(&platform.ask_der)?,
            ark: cert_pem(&platform.ark_der)?,
            policy: values.policy,
            vmpl: values.vmpl,
            measurement: hex::encode(values.measurement),
            image_id: hex::encode(values.image_id),
            family_id: hex::encode(values.family_id),
            guest_svn: values.guest_svn,
            id_key_digest: hex::encode(values.id_key_digest),
            author_key_digest: hex::encode(values.author_key_digest),
        })
    }

    /// Serialises the blob (JSON).
    pub fn to_json(&self) -> Result<Vec<u8>, SimError> {
        serde_json::to_vec_pretty(self).map_err(|e| malformed("launch blob", e))
    }

    /// Parses and checks a blob: size, version, every field's encoding,
    /// and that the key belongs to the VCEK.
    pub fn from_json(bytes: &[u8]) -> Result<SimLaunch, SimError> {
        if bytes.len() > SIM_LAUNCH_MAX_SIZE {
            return Err(malformed(
                "launch blob",
                format!(
                    "{} bytes is more than the {SIM_LAUNCH_MAX_SIZE} allowed",
                    bytes.len()
                ),
            ));
        }
        let blob: SimLaunch =
            serde_json::from_slice(bytes).map_err(|e| malformed("launch blob", e))?;
        if blob.version != SIM_LAUNCH_VERSION {
            return Err(malformed(
                "launch blob",
                format!(
                    "version {} is not supported (expected {SIM_LAUNCH_VERSION})",
                    blob.version
                ),
            ));
        }
        blob.values()?;
        parse_product(&blob.product)?;
        parse_hex::<64>("chip_id", &blob.chip_id)?;
        let vcek = cert_from_pem("vcek", blob.vcek.as_bytes())?;
        cert_from_pem("ask", blob.ask.as_bytes())?;
        cert_from_pem("ark", blob.ark.as_bytes())?;
        let key = key_from_pem("vcek_key", blob.vcek_key.as_bytes())?;
        check_key_matches("VCEK", &key, &vcek)?;
        Ok(blob)
    }

    /// The launch values, decoded.
    pub fn values(&self) -> Result<LaunchValues, SimError> {
        Ok(LaunchValues {
            policy: self.policy,
            vmpl: self.vmpl,
            measurement: parse_hex("measurement", &self.measurement)?,
            image_id: parse_hex("image_id", &self.image_id)?,
            family_id: parse_hex("family_id", &self.family_id)?,
            guest_svn: self.guest_svn,
            id_key_digest: parse_hex("id_key_digest", &self.id_key_digest)?,
            author_key_digest: parse_hex("author_key_digest", &self.author_key_digest)?,
        })
    }

    /// The ARK (DER) a verifier must trust for this blob's reports.
    pub fn ark_der(&self) -> Result<Vec<u8>, SimError> {
        cert_from_pem("ark", self.ark.as_bytes())
    }

    /// A signed 1184-byte report (version 3, VCEK-signed) carrying
    /// `report_data`, laid out as the firmware lays it out.
    pub fn report(&self, report_data: &[u8; 64]) -> Result<[u8; REPORT_SIZE], SimError> {
        let v = self.values()?;
        let product = parse_product(&self.product)?;
        let chip_id = parse_hex::<64>("chip_id", &self.chip_id)?;
        let tcb = tcb_bytes(product, SimTcb::from(self.tcb)).to_le_bytes();
        let mut r = [0u8; REPORT_SIZE];
        r[0x00..0x04].copy_from_slice(&REPORT_VERSION.to_le_bytes());
        r[0x04..0x08].copy_from_slice(&v.guest_svn.to_le_bytes());
        r[0x08..0x10].copy_from_slice(&v.policy.to_le_bytes());
        r[0x10..0x20].copy_from_slice(&v.family_id);
        r[0x20..0x30].copy_from_slice(&v.image_id);
        r[0x30..0x34].copy_from_slice(&v.vmpl.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes()); // ECDSA P-384
        for off in [0x38, 0x180, 0x1E0, 0x1F0] {
            r[off..off + 8].copy_from_slice(&tcb);
        }
        // KEY_INFO: AUTHOR_KEY_EN when an author key signed the ID key;
        // SIGNING_KEY 0 = VCEK.
        let author = v.author_key_digest != [0u8; 48];
        r[0x48..0x4C].copy_from_slice(&u32::from(author).to_le_bytes());
        r[0x50..0x90].copy_from_slice(report_data);
        r[0x90..0xC0].copy_from_slice(&v.measurement);
        r[0xE0..0x110].copy_from_slice(&v.id_key_digest);
        r[0x110..0x140].copy_from_slice(&v.author_key_digest);
        // REPORT_ID: derived from the launch so that it is stable for a
        // blob; REPORT_ID_MA all ones (no migration agent).
        let id = sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            v.measurement,
        ));
        r[0x140..0x160].copy_from_slice(&id);
        r[0x160..0x180].fill(0xFF);
        r[0x188..0x18B].copy_from_slice(&cpuid(product));
        r[0x1A0..0x1E0].copy_from_slice(&chip_id);
        // CURRENT and COMMITTED firmware version 1.55.21 (build, minor,
        // major, reserved).
        r[0x1E8..0x1EC].copy_from_slice(&[21, 55, 1, 0]);
        r[0x1EC..0x1F0].copy_from_slice(&[21, 55, 1, 0]);
        let key = key_from_pem("vcek_key", self.vcek_key.as_bytes())?;
        sign_report_with(&key, SimKey::Vcek, &mut r)?;
        Ok(r)
    }

    /// What SNP_GET_DERIVED_KEY gives a guest of this launch on this
    /// simulated chip: a key derived from the VCEK's secret (the firmware's
    /// default root key) and the launch's fields `select` names
    /// (GUEST_FIELD_SELECT: bit 0 policy, 1 image ID, 2 family ID, 3
    /// measurement, 4 guest SVN, 5 TCB version), with `tcb`, which must not
    /// exceed the platform's reported TCB. Another chip, a lower TCB or a
    /// launch that differs in a selected field derives another key; a field
    /// not selected does not matter. (SHA-256 over a label, the VCEK scalar
    /// and the selected values: a simulation, not the firmware's KDF.)
    pub fn derived_key(&self, select: u64, tcb: u64) -> Result<[u8; 32], SimError> {
        if select >> 6 != 0 {
            return Err(malformed(
                "derived key field select",
                format!("{select:#x} sets bits above 5"),
            ));
        }
        let v = self.values()?;
        let product = parse_product(&self.product)?;
        let platform = tcb_bytes(product, SimTcb::from(self.tcb));
        let fits = (0..8).all(|i| (tcb >> (8 * i)) & 0xff <= (platform >> (8 * i)) & 0xff);
        if !fits {
            return Err(malformed(
                "derived key TCB",
                format!("{tcb:#018x} exceeds the platform's {platform:#018x}"),
            ));
        }
        let key = key_from_pem("vcek_key", self.vcek_key.as_bytes())?;
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        let mut put = |b: &[u8]| sha2::Digest::update(&mut h, b);
        put(b"snpguard-sim/derived-key\0");
        put(&key.to_bytes());
        put(&select.to_le_bytes());
        if select & 1 != 0 {
            put(&v.policy.to_le_bytes());
        }
        if select & 2 != 0 {
            put(&v.image_id);
        }
        if select & 4 != 0 {
            put(&v.family_id);
        }
        if select & 8 != 0 {
            put(&v.measurement);
        }
        if select & 16 != 0 {
            put(&v.guest_svn.to_le_bytes());
        }
        if select & 32 != 0 {
            put(&tcb.to_le_bytes());
        }
        Ok(sha2::Digest::finalize(h).into())
    }

    /// The certificate table the firmware's extended report (or the
    /// configfs-tsm auxblob) carries: VCEK, ASK and ARK.
    pub fn cert_table(&self) -> Result<Vec<u8>, SimError> {
        let vcek = cert_from_pem("vcek", self.vcek.as_bytes())?;
        let ask = cert_from_pem("ask", self.ask.as_bytes())?;
        let ark = cert_from_pem("ark", self.ark.as_bytes())?;
        Ok(encode_cert_table(&[
            (GUID_VCEK, &vcek),
            (GUID_ASK, &ask),
            (GUID_ARK, &ark),
        ]))
    }
}
