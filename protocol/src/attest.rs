//! The attestation protocol between the guest agent and snpguardd: the
//! JSON wire types of `/v1`, the binding of a report to the server's nonce
//! and the agent's ephemeral key, and the sealing of the released key.
//! Both sides use these functions; nothing else defines the protocol.
//!
//! Flow: `POST /v1/attest/challenge` -> nonce; the agent makes an
//! ephemeral X25519 key, asks the firmware for a report whose REPORT_DATA
//! is [`report_data`]`(nonce, key)`, and `POST /v1/attest` with the nonce,
//! the report, its certificate table and the key; the daemon answers with
//! the VMK sealed by [`seal_key`] to that key, bound to the report.
//!
//! Renewal (a kernel update): the guest takes a fresh nonce, asks for a
//! report whose REPORT_DATA is [`renewal_report_data`] of the nonce and
//! the new kernel, initrd and command line, and `POST /v1/renew`s them in
//! a [`RenewRequest`]. The daemon stores them as a *pending* launch of the
//! record; nothing is released for it until an operator approves it.
//!
//! The guest's next launch: once approved, the guest asks for that
//! launch's signed configuration with a report whose REPORT_DATA is
//! [`signed_launch_report_data`] of a fresh nonce and the launch id
//! ([`SignedLaunchRequest`]); the daemon answers with the launch's
//! `launch-config.json`, ID block and ID auth block, signed over
//! [`signed_launch_message`]. The guest writes them with its own kernel,
//! initrd, command line and firmware into its LAUNCH_ARTIFACTS partition.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384, Sha512};
use zeroize::Zeroizing;

use snpguard::idblock;
use snpguard::report::Report;
use snpguard::seal::{self, PublicKey, SealError, SealedBox, SecretKey};

/// Largest request body the daemon reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 32;
/// Largest `POST /v1/renew` body the daemon reads: room for a distribution
/// kernel and initrd in base64.
pub const MAX_RENEW_BODY: usize = 256 << 20;
/// Most pending launches a record may have at once.
pub const MAX_PENDING_LAUNCHES: usize = 4;

/// `POST /v1/attest/challenge` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// The nonce, base64url without padding.
    pub nonce: String,
    /// Seconds until the nonce expires.
    pub expires_in: u64,
}

/// `POST /v1/attest` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// The nonce from the challenge, as received.
    pub nonce: String,
    /// The raw 1184-byte report, standard base64.
    pub report: String,
    /// The GUID certificate table of the extended report / auxblob,
    /// standard base64, when the platform provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_table: Option<String>,
    /// The agent's ephemeral X25519 public key, standard base64.
    pub ephemeral_key: String,
    /// Asks for a [`ReleaseSignature`] in the response. Agents that check
    /// it always set this; an agent that does not (older than the signed
    /// release) gets the response it understands.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed: bool,
    /// Asks for the record's [`OfflineUnlock`] directive in the signed
    /// response. Agents that can derive a key from the chip set it with
    /// `signed`; the daemon answers it only in a signed response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// The record's word on offline unlock, in a signed key release: the
/// server decides whether a guest may open its root with a chip-derived
/// key when no server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OfflineUnlock {
    /// The record allows offline unlock: the agent enrols a keyslot for
    /// this launch's derived key (unless one already opens).
    Enrol,
    /// The record does not: the agent removes any offline keyslot it
    /// enrolled before.
    Remove,
}

impl OfflineUnlock {
    /// The directive for a record whose option is `allowed`.
    pub fn for_record(allowed: bool) -> OfflineUnlock {
        if allowed {
            OfflineUnlock::Enrol
        } else {
            OfflineUnlock::Remove
        }
    }

    /// The wire spelling, which the release signature covers.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineUnlock::Enrol => "enrol",
            OfflineUnlock::Remove => "remove",
        }
    }
}

/// `POST /v1/attest` success response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestResponse {
    /// The record the report matched (its id).
    pub record: String,
    /// The key, sealed by [`seal_key`]: standard base64 of the sealed box.
    pub sealed_key: String,
    /// The daemon's signature over the release ([`release_message`]),
    /// when the request asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ReleaseSignature>,
    /// The record's offline-unlock directive, when the request asked for
    /// it (`offline`) and a signature; the signature covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_unlock: Option<OfflineUnlock>,
}

/// `POST /v1/renew` request: new boot artifacts, bound to an attested VM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The nonce from the challenge, as received.
    pub nonce: String,
    /// The raw 1184-byte report, standard base64; its REPORT_DATA is
    /// [`renewal_report_data`] of the nonce and the three artifacts.
    pub report: String,
    /// The GUID certificate table, standard base64, when available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_table: Option<String>,
    /// The new kernel, standard base64.
    pub kernel: String,
    /// The new initrd, standard base64.
    pub initrd: String,
    /// The new kernel command line, exactly as it will be measured.
    pub cmdline: String,
    /// Asks for a [`ReleaseSignature`] over the response
    /// ([`renewal_message`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed: bool,
}

impl std::fmt::Debug for RenewRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The artifacts are large; their sizes say enough.
        f.debug_struct("RenewRequest")
            .field("nonce", &self.nonce)
            .field("report_len", &self.report.len())
            .field("cert_table", &self.cert_table.is_some())
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.len())
            .field("cmdline", &self.cmdline)
            .finish()
    }
}

/// `POST /v1/renew` response (202 Accepted): the pending launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewResponse {
    /// The record the report matched (its id).
    pub record: String,
    /// The launch id of the new (or already present) pending launch.
    pub launch: String,
    /// Its launch digest, 96 hex digits.
    pub measurement: String,
    /// The daemon's signature over the response ([`renewal_message`]),
    /// when the request asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ReleaseSignature>,
}

/// `POST /v1/signed-launch` request: a running guest asks for the signed
/// launch configuration of another launch of its record (the one its
/// renewal created, once approved), to write its own next launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedLaunchRequest {
    /// The nonce from `/v1/attest/challenge`.
    pub nonce: String,
    /// The attestation report (1184 bytes), standard base64; its
    /// REPORT_DATA is [`signed_launch_report_data`] of the nonce and
    /// `launch`.
    pub report: String,
    /// The certificate table, standard base64, if the guest has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_table: Option<String>,
    /// The launch id asked for (as `/v1/renew` returned it).
    pub launch: String,
    /// Asks for a [`ReleaseSignature`] over the response
    /// ([`signed_launch_message`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signed: bool,
}

/// `POST /v1/signed-launch` response: what a launch bundle holds besides
/// the firmware, kernel, initrd and command line the guest already has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedLaunchResponse {
    /// The record (its id).
    pub record: String,
    /// The launch id.
    pub launch: String,
    /// `launch-config.json` exactly as the launch's bundle holds it.
    pub launch_config: String,
    /// `id-block.bin`, standard base64.
    pub id_block: String,
    /// `id-auth.bin`, standard base64.
    pub id_auth: String,
    /// The daemon's signature over the response
    /// ([`signed_launch_message`]), when the request asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ReleaseSignature>,
}

/// Longest launch id a `/v1/signed-launch` request may name.
pub const MAX_LAUNCH_ID_LEN: usize = 20;

/// Whether `id` has the shape of a launch id: 1 to
/// [`MAX_LAUNCH_ID_LEN`] ASCII digits, no leading zero.
pub fn is_launch_id(id: &str) -> bool {
    (1..=MAX_LAUNCH_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit())
        && !id.starts_with('0')
}

/// The daemon's signature over a response, by a key the PSP vouches for:
/// the SHA-384 of `key` is the AUTHOR_KEY_DIGEST (or ID_KEY_DIGEST) in the
/// very report the guest sent, so a server that only holds a valid TLS
/// certificate cannot make one. Checked with [`verify_signature`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSignature {
    /// The signer's SNP public key structure (1028 bytes), standard base64.
    pub key: String,
    /// ECDSA P-384/SHA-384 as an SNP signature structure (512 bytes),
    /// standard base64.
    pub signature: String,
}

/// Why a response's signature is not accepted; each names its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The response carries no signature.
    #[error("the response is not signed (release-unsigned)")]
    Missing,
    /// The key or signature field does not decode.
    #[error("the response's signature does not decode (release-signature-malformed): {0}")]
    Malformed(String),
    /// The report the guest sent does not parse.
    #[error("the report sent cannot be parsed: {0}")]
    Report(String),
    /// The signer's digest is neither the report's author nor its ID key.
    #[error(
        "the response is signed by a key whose digest is neither the author key \
         nor the ID key in this guest's own report (release-signer-unknown)"
    )]
    UnknownSigner,
    /// The signature does not verify over the message.
    #[error("the response's signature does not verify (release-signature-invalid)")]
    Invalid,
}

/// The bytes a key release's signature covers: a domain label, the nonce,
/// and SHA-384 of the report, the record id and the sealed box; with an
/// offline-unlock directive, another label and SHA-384 of the directive
/// too, so a signature over a release without one cannot stand for a
/// release with one, nor one directive for the other.
pub fn release_message(
    nonce: &[u8; NONCE_LEN],
    report: &[u8],
    record: &str,
    sealed_key: &[u8],
    offline: Option<OfflineUnlock>,
) -> Vec<u8> {
    let mut m = match offline {
        None => b"snpguard/v1/release-signature\0".to_vec(),
        Some(_) => b"snpguard/v1/release-signature-offline\0".to_vec(),
    };
    m.extend_from_slice(nonce);
    m.extend_from_slice(&Sha384::digest(report));
    m.extend_from_slice(&Sha384::digest(record.as_bytes()));
    m.extend_from_slice(&Sha384::digest(sealed_key));
    if let Some(d) = offline {
        m.extend_from_slice(&Sha384::digest(d.as_str().as_bytes()));
    }
    m
}

/// The bytes a renewal response's signature covers: a domain label, the
/// nonce, and SHA-384 of the report, the record, launch and measurement.
pub fn renewal_message(nonce: &[u8; NONCE_LEN], report: &[u8], resp: &RenewResponse) -> Vec<u8> {
    let mut m = b"snpguard/v1/renewal-signature\0".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(&Sha384::digest(report));
    for field in [&resp.record, &resp.launch, &resp.measurement] {
        m.extend_from_slice(&Sha384::digest(field.as_bytes()));
    }
    m
}

/// The bytes a signed launch's signature covers: a domain label, the
/// nonce, and SHA-384 of the report, the record, the launch, the launch
/// configuration, the ID block and the ID auth block (the latter two as
/// they decode, so base64 spelling does not matter).
pub fn signed_launch_message(
    nonce: &[u8; NONCE_LEN],
    report: &[u8],
    record: &str,
    launch: &str,
    launch_config: &str,
    id_block: &[u8],
    id_auth: &[u8],
) -> Vec<u8> {
    let mut m = b"snpguard/v1/signed-launch-signature\0".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(&Sha384::digest(report));
    for field in [
        record.as_bytes(),
        launch.as_bytes(),
        launch_config.as_bytes(),
        id_block,
        id_auth,
    ] {
        m.extend_from_slice(&Sha384::digest(field));
    }
    m
}

/// The ID block and ID auth block of a signed-launch answer that
/// [`check_signed_launch`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLaunchParts {
    /// `id-block.bin`.
    pub id_block: Vec<u8>,
    /// `id-auth.bin`.
    pub id_auth: Vec<u8>,
}

/// Why a signed-launch answer is not used; each names its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedLaunchRejection {
    /// The ID block or ID auth block is not base64 of its size.
    #[error("the {0} is not standard base64 of its size (signed-launch-malformed)")]
    Malformed(&'static str),
    /// The signature does not hold for this guest's report.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A signed answer for another launch than the one asked for.
    #[error("asked for launch {asked}, the answer is launch {got} (signed-launch-other)")]
    OtherLaunch {
        /// The launch asked for.
        asked: String,
        /// The launch answered.
        got: String,
    },
}

/// Checks a `/v1/signed-launch` answer for the guest that sent `report`
/// with `nonce`, asking for launch `asked`: the ID block and ID auth
/// decode to their sizes, the signature over every field is by a key the
/// report names ([`verify_signature`]), and it is the launch asked for.
/// The agent uses nothing of an answer before this passes; whether the
/// launch is its record's, and what it measures to, it checks after.
pub fn check_signed_launch(
    nonce: &[u8; NONCE_LEN],
    report: &[u8],
    asked: &str,
    resp: &SignedLaunchResponse,
) -> Result<SignedLaunchParts, SignedLaunchRejection> {
    let id_block = unb64(&resp.id_block, idblock::ID_BLOCK_SIZE)
        .filter(|b| b.len() == idblock::ID_BLOCK_SIZE)
        .ok_or(SignedLaunchRejection::Malformed("ID block"))?;
    let id_auth = unb64(&resp.id_auth, idblock::ID_AUTH_SIZE)
        .filter(|b| b.len() == idblock::ID_AUTH_SIZE)
        .ok_or(SignedLaunchRejection::Malformed("ID auth block"))?;
    let message = signed_launch_message(
        nonce,
        report,
        &resp.record,
        &resp.launch,
        &resp.launch_config,
        &id_block,
        &id_auth,
    );
    verify_signature(report, &message, resp.signature.as_ref())?;
    if resp.launch != asked {
        return Err(SignedLaunchRejection::OtherLaunch {
            asked: asked.to_owned(),
            got: resp.launch.clone(),
        });
    }
    Ok(SignedLaunchParts { id_block, id_auth })
}

/// Signs `message` with `key` (the daemon's author key).
pub fn sign_message(key: &p384::ecdsa::SigningKey, message: &[u8]) -> ReleaseSignature {
    ReleaseSignature {
        key: b64(&idblock::public_key_bytes(key.verifying_key())),
        signature: b64(&idblock::sign_snp(key, message)),
    }
}

/// Checks `sig` over `message` for the guest that sent `report`: the
/// signer's key digest must be the report's AUTHOR_KEY_DIGEST or
/// ID_KEY_DIGEST (both written by the PSP from the ID authentication
/// information the launch was started with), and the signature must
/// verify. Nothing released may be used before this passes.
pub fn verify_signature(
    report: &[u8],
    message: &[u8],
    sig: Option<&ReleaseSignature>,
) -> Result<(), SignatureError> {
    let sig = sig.ok_or(SignatureError::Missing)?;
    let report = Report::parse(report).map_err(|e| SignatureError::Report(e.to_string()))?;
    let key_bytes = unb64(&sig.key, idblock::PUBLIC_KEY_SIZE)
        .filter(|k| k.len() == idblock::PUBLIC_KEY_SIZE)
        .ok_or_else(|| SignatureError::Malformed("key: not a 1028-byte SNP public key".into()))?;
    let digest: [u8; 48] = Sha384::digest(&key_bytes).into();
    // A digest of all zeros means "no key"; no key hashes to it.
    if digest != report.author_key_digest && digest != report.id_key_digest {
        return Err(SignatureError::UnknownSigner);
    }
    let key = idblock::public_key_from_bytes(&key_bytes, "release signer")
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let signature = unb64(&sig.signature, idblock::SIGNATURE_SIZE).ok_or_else(|| {
        SignatureError::Malformed("signature: not a 512-byte SNP signature".into())
    })?;
    idblock::verify_snp(&key, message, &signature, "release").map_err(|e| match e {
        idblock::IdBlockError::SignatureMismatch(_) => SignatureError::Invalid,
        other => SignatureError::Malformed(other.to_string()),
    })
}

/// Every error response: a stable code and a coarse message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `attestation-rejected`.
    pub error: String,
    /// Human-readable, deliberately coarse for remote clients.
    pub message: String,
}

/// `GET /v1/ingestion-key` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestionKeyResponse {
    /// The daemon's HPKE ingestion public key (X25519), standard base64.
    pub public_key: String,
}

/// Encodes a nonce for the wire.
pub fn encode_nonce(nonce: &[u8; NONCE_LEN]) -> String {
    URL_SAFE_NO_PAD.encode(nonce)
}

/// Decodes a nonce from the wire.
pub fn decode_nonce(s: &str) -> Option<[u8; NONCE_LEN]> {
    if s.len() > 64 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()
}

/// Standard base64 for binary fields.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a standard-base64 field of at most `max` decoded bytes.
pub fn unb64(s: &str, max: usize) -> Option<Vec<u8>> {
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return None;
    }
    STANDARD.decode(s).ok().filter(|v| v.len() <= max)
}

/// REPORT_DATA that binds a report to the server's nonce and the agent's
/// ephemeral key: SHA-512 over a domain label, the nonce and the key.
pub fn report_data(nonce: &[u8; NONCE_LEN], ephemeral_key: &PublicKey) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"snpguard/v1/report-data\0");
    h.update(nonce);
    h.update(ephemeral_key.to_bytes());
    h.finalize().into()
}

/// REPORT_DATA of a renewal: binds the server's nonce and the SHA-384
/// digests of the new kernel, initrd and command line to the report, so
/// the artifacts come from the attested VM and not just over its TLS
/// session. SHA-512 over a domain label, the nonce and the three digests.
pub fn renewal_report_data(
    nonce: &[u8; NONCE_LEN],
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"snpguard/v1/renewal\0");
    h.update(nonce);
    h.update(Sha384::digest(kernel));
    h.update(Sha384::digest(initrd));
    h.update(Sha384::digest(cmdline.as_bytes()));
    h.finalize().into()
}

/// REPORT_DATA of a signed-launch request: binds the server's nonce and
/// the launch asked for to the report. SHA-512 over a domain label, the
/// nonce and SHA-384 of the launch id.
pub fn signed_launch_report_data(nonce: &[u8; NONCE_LEN], launch: &str) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"snpguard/v1/signed-launch\0");
    h.update(nonce);
    h.update(Sha384::digest(launch.as_bytes()));
    h.finalize().into()
}

/// The HPKE info for a key release: a domain label and SHA-384 of the
/// exact report the key is released for.
pub fn release_info(report: &[u8]) -> Vec<u8> {
    let mut info = b"snpguard/v1/key-release\0".to_vec();
    info.extend_from_slice(&Sha384::digest(report));
    info
}

/// Seals a released key to the agent's ephemeral key, bound to the report.
pub fn seal_key(to: &PublicKey, report: &[u8], key: &[u8]) -> Result<SealedBox, SealError> {
    seal::seal(to, &release_info(report), b"", key)
}

/// Opens a released key with the agent's ephemeral secret.
pub fn open_key(
    secret: &SecretKey,
    report: &[u8],
    sealed: &SealedBox,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    seal::open(secret, &release_info(report), b"", sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_round_trip_and_bounds() {
        let n = [7u8; NONCE_LEN];
        assert_eq!(decode_nonce(&encode_nonce(&n)), Some(n));
        assert_eq!(decode_nonce("AAAA"), None);
        assert_eq!(decode_nonce(&"A".repeat(1000)), None);
        assert_eq!(decode_nonce("not base64!"), None);
    }

    #[test]
    fn report_data_binds_nonce_and_key() {
        let (_, k1) = seal::generate_keypair();
        let (_, k2) = seal::generate_keypair();
        let n1 = [1u8; NONCE_LEN];
        let mut n2 = n1;
        n2[31] = 2;
        let base = report_data(&n1, &k1);
        assert_eq!(base, report_data(&n1, &k1));
        assert_ne!(base, report_data(&n2, &k1));
        assert_ne!(base, report_data(&n1, &k2));
    }

    #[test]
    fn renewal_report_data_binds_every_artifact() {
        let n = [4u8; NONCE_LEN];
        let base = renewal_report_data(&n, b"kernel", b"initrd", "console=ttyS0");
        assert_eq!(
            base,
            renewal_report_data(&n, b"kernel", b"initrd", "console=ttyS0")
        );
        let mut n2 = n;
        n2[0] ^= 1;
        for other in [
            renewal_report_data(&n2, b"kernel", b"initrd", "console=ttyS0"),
            renewal_report_data(&n, b"kernel!", b"initrd", "console=ttyS0"),
            renewal_report_data(&n, b"kernel", b"initrd!", "console=ttyS0"),
            renewal_report_data(&n, b"kernel", b"initrd", "console=ttyS1"),
            // Moving bytes between fields changes the binding too.
            renewal_report_data(&n, b"kerneli", b"nitrd", "console=ttyS0"),
        ] {
            assert_ne!(base, other);
        }
        // Never the key-release binding of the same nonce.
        let (_, k) = seal::generate_keypair();
        assert_ne!(base, report_data(&n, &k));
    }

    #[test]
    fn signed_launch_bindings_cover_every_field() {
        let n = [6u8; NONCE_LEN];
        let base = signed_launch_report_data(&n, "2");
        assert_eq!(base, signed_launch_report_data(&n, "2"));
        let mut n2 = n;
        n2[1] ^= 1;
        assert_ne!(base, signed_launch_report_data(&n2, "2"));
        assert_ne!(base, signed_launch_report_data(&n, "3"));
        // Never a renewal's or a key release's binding.
        assert_ne!(base, renewal_report_data(&n, b"", b"", ""));
        let (_, k) = seal::generate_keypair();
        assert_ne!(base, report_data(&n, &k));

        let report = [7u8; 64];
        let m = |r: &str, l: &str, c: &str, b: &[u8], a: &[u8]| {
            signed_launch_message(&n, &report, r, l, c, b, a)
        };
        let base = m("rec", "2", "{}", b"block", b"auth");
        for other in [
            signed_launch_message(&n2, &report, "rec", "2", "{}", b"block", b"auth"),
            signed_launch_message(&n, &[8u8; 64], "rec", "2", "{}", b"block", b"auth"),
            m("rec2", "2", "{}", b"block", b"auth"),
            m("rec", "3", "{}", b"block", b"auth"),
            m("rec", "2", "{ }", b"block", b"auth"),
            m("rec", "2", "{}", b"block!", b"auth"),
            m("rec", "2", "{}", b"block", b"auth!"),
            // Moving bytes between fields changes the message too.
            m("rec", "2", "{}", b"bloc", b"kauth"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn a_signed_launch_is_used_only_as_signed_for_this_guest_and_launch() {
        let author = p384_key();
        let report = report_naming(&idblock::key_digest(author.verifying_key()), &[0u8; 48]);
        let nonce = [9u8; NONCE_LEN];
        let (block, auth) = (
            vec![1u8; idblock::ID_BLOCK_SIZE],
            vec![2u8; idblock::ID_AUTH_SIZE],
        );
        let sign = |resp: &mut SignedLaunchResponse, key: &p384::ecdsa::SigningKey| {
            let m = signed_launch_message(
                &nonce,
                &report,
                &resp.record,
                &resp.launch,
                &resp.launch_config,
                &block,
                &auth,
            );
            resp.signature = Some(sign_message(key, &m));
        };
        let mut genuine = SignedLaunchResponse {
            record: "rec".into(),
            launch: "2".into(),
            launch_config: "{}\n".into(),
            id_block: b64(&block),
            id_auth: b64(&auth),
            signature: None,
        };
        sign(&mut genuine, &author);
        let parts = check_signed_launch(&nonce, &report, "2", &genuine).unwrap();
        assert_eq!(
            (parts.id_block, parts.id_auth),
            (block.clone(), auth.clone())
        );

        // Another launch than the one asked for, though signed.
        assert!(matches!(
            check_signed_launch(&nonce, &report, "3", &genuine),
            Err(SignedLaunchRejection::OtherLaunch { .. })
        ));
        // Another nonce: the signature does not hold.
        assert_eq!(
            check_signed_launch(&[8u8; NONCE_LEN], &report, "2", &genuine),
            Err(SignedLaunchRejection::Signature(SignatureError::Invalid))
        );
        // A changed configuration after signing.
        let mut changed = genuine.clone();
        changed.launch_config = "{ }\n".into();
        assert_eq!(
            check_signed_launch(&nonce, &report, "2", &changed),
            Err(SignedLaunchRejection::Signature(SignatureError::Invalid))
        );
        // Unsigned; signed by a stranger.
        let unsigned = SignedLaunchResponse {
            signature: None,
            ..genuine.clone()
        };
        assert_eq!(
            check_signed_launch(&nonce, &report, "2", &unsigned),
            Err(SignedLaunchRejection::Signature(SignatureError::Missing))
        );
        let mut stranger = genuine.clone();
        sign(&mut stranger, &p384_key());
        assert_eq!(
            check_signed_launch(&nonce, &report, "2", &stranger),
            Err(SignedLaunchRejection::Signature(
                SignatureError::UnknownSigner
            ))
        );
        // A short ID block is refused before any signature is checked.
        let short = SignedLaunchResponse {
            id_block: b64(&block[1..]),
            ..genuine.clone()
        };
        assert_eq!(
            check_signed_launch(&nonce, &report, "2", &short),
            Err(SignedLaunchRejection::Malformed("ID block"))
        );
    }

    #[test]
    fn launch_ids_are_short_decimal_numbers() {
        for ok in ["1", "2", "10", "12345678901234567890"] {
            assert!(is_launch_id(ok), "{ok}");
        }
        for bad in [
            "",
            "0",
            "01",
            "-1",
            "1a",
            " 1",
            "１",
            "123456789012345678901",
        ] {
            assert!(!is_launch_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn released_key_is_bound_to_the_report() {
        let (sk, pk) = seal::generate_keypair();
        let report = vec![3u8; 1184];
        let sealed = seal_key(&pk, &report, b"volume key").expect("seal");
        assert_eq!(
            &open_key(&sk, &report, &sealed).expect("open")[..],
            b"volume key"
        );
        let mut other = report.clone();
        other[0x90] ^= 1;
        assert!(open_key(&sk, &other, &sealed).is_err());
        let (sk2, _) = seal::generate_keypair();
        assert!(open_key(&sk2, &report, &sealed).is_err());
    }

    /// A minimal report that parses, naming `author` and `id` as its keys.
    fn report_naming(author: &[u8; 48], id: &[u8; 48]) -> Vec<u8> {
        let mut r = vec![0u8; snpguard::report::REPORT_SIZE];
        r[0..4].copy_from_slice(&2u32.to_le_bytes());
        r[0x08..0x10].copy_from_slice(&0x30000u64.to_le_bytes());
        r[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        r[0xE0..0x110].copy_from_slice(id);
        r[0x110..0x140].copy_from_slice(author);
        r
    }

    fn p384_key() -> p384::ecdsa::SigningKey {
        p384::ecdsa::SigningKey::random(&mut rand_core::OsRng)
    }

    #[test]
    fn a_release_signed_by_the_reports_author_or_id_key_verifies() {
        let author = p384_key();
        let id = p384_key();
        let report = report_naming(
            &idblock::key_digest(author.verifying_key()),
            &idblock::key_digest(id.verifying_key()),
        );
        let nonce = [5u8; NONCE_LEN];
        let msg = release_message(&nonce, &report, "rec", b"sealed box", None);
        for key in [&author, &id] {
            let sig = sign_message(key, &msg);
            assert_eq!(verify_signature(&report, &msg, Some(&sig)), Ok(()));
        }
        // Renewal responses likewise, under their own label.
        let resp = RenewResponse {
            record: "rec".into(),
            launch: "2".into(),
            measurement: "ab".repeat(48),
            signature: None,
        };
        let rmsg = renewal_message(&nonce, &report, &resp);
        assert_ne!(rmsg, msg);
        let sig = sign_message(&author, &rmsg);
        assert_eq!(verify_signature(&report, &rmsg, Some(&sig)), Ok(()));
        // ...and a renewal signature is no release signature.
        assert_eq!(
            verify_signature(&report, &msg, Some(&sig)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn a_release_not_signed_by_a_key_in_the_report_is_refused() {
        let author = p384_key();
        let report = report_naming(&idblock::key_digest(author.verifying_key()), &[0; 48]);
        let nonce = [5u8; NONCE_LEN];
        let msg = release_message(&nonce, &report, "rec", b"sealed box", None);
        // Unsigned.
        assert_eq!(
            verify_signature(&report, &msg, None),
            Err(SignatureError::Missing)
        );
        // Signed by a key the PSP never saw (a TLS-only attacker's).
        let forged = sign_message(&p384_key(), &msg);
        assert_eq!(
            verify_signature(&report, &msg, Some(&forged)),
            Err(SignatureError::UnknownSigner)
        );
        // The author key's public part with another key's signature.
        let mut spliced = sign_message(&author, &msg);
        spliced.signature = forged.signature.clone();
        assert_eq!(
            verify_signature(&report, &msg, Some(&spliced)),
            Err(SignatureError::Invalid)
        );
        // Every field the message binds.
        let good = sign_message(&author, &msg);
        let mut other_report = report.clone();
        other_report[0x50] ^= 1;
        for other in [
            release_message(&[6u8; NONCE_LEN], &report, "rec", b"sealed box", None),
            release_message(&nonce, &other_report, "rec", b"sealed box", None),
            release_message(&nonce, &report, "rec2", b"sealed box", None),
            release_message(&nonce, &report, "rec", b"sealed boy", None),
            // The same release with a directive it was not signed with.
            release_message(
                &nonce,
                &report,
                "rec",
                b"sealed box",
                Some(OfflineUnlock::Enrol),
            ),
            release_message(
                &nonce,
                &report,
                "rec",
                b"sealed box",
                Some(OfflineUnlock::Remove),
            ),
        ] {
            assert_eq!(
                verify_signature(&report, &other, Some(&good)),
                Err(SignatureError::Invalid)
            );
        }
        // Malformed fields are named, never a panic.
        let mut bad = good.clone();
        bad.key = b64(&[1u8; 10]);
        assert!(matches!(
            verify_signature(&report, &msg, Some(&bad)),
            Err(SignatureError::Malformed(_))
        ));
        let mut bad = good.clone();
        bad.signature = b64(&[0u8; 512]);
        assert!(matches!(
            verify_signature(&report, &msg, Some(&bad)),
            Err(SignatureError::Malformed(_))
        ));
        // A report with no author and no ID key trusts no signer.
        let bare = report_naming(&[0; 48], &[0; 48]);
        let msg = release_message(&nonce, &bare, "rec", b"sealed box", None);
        assert_eq!(
            verify_signature(&bare, &msg, Some(&sign_message(&author, &msg))),
            Err(SignatureError::UnknownSigner)
        );
    }

    #[test]
    fn the_offline_directive_is_bound_to_the_release_signature() {
        let author = p384_key();
        let report = report_naming(&idblock::key_digest(author.verifying_key()), &[0; 48]);
        let nonce = [5u8; NONCE_LEN];
        let msg = |d| release_message(&nonce, &report, "rec", b"sealed box", d);
        let enrol = sign_message(&author, &msg(Some(OfflineUnlock::Enrol)));
        assert_eq!(
            verify_signature(&report, &msg(Some(OfflineUnlock::Enrol)), Some(&enrol)),
            Ok(())
        );
        // A man in the middle can neither turn the directive over nor
        // strip it.
        for other in [Some(OfflineUnlock::Remove), None] {
            assert_eq!(
                verify_signature(&report, &msg(other), Some(&enrol)),
                Err(SignatureError::Invalid)
            );
        }
        // The wire spellings, which the signature covers.
        for d in [OfflineUnlock::Enrol, OfflineUnlock::Remove] {
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                format!("\"{}\"", d.as_str())
            );
        }
        assert_eq!(OfflineUnlock::for_record(true), OfflineUnlock::Enrol);
        assert_eq!(OfflineUnlock::for_record(false), OfflineUnlock::Remove);
        // A request from an agent older than the directive does not ask,
        // and its response carries none.
        let old: AttestRequest =
            serde_json::from_str(r#"{"nonce":"n","report":"r","ephemeral_key":"k","signed":true}"#)
                .unwrap();
        assert!(!old.offline);
        let resp = AttestResponse {
            record: "r".into(),
            sealed_key: "s".into(),
            signature: None,
            offline_unlock: None,
        };
        assert!(!serde_json::to_string(&resp).unwrap().contains("offline"));
    }

    #[test]
    fn base64_fields_are_bounded() {
        assert_eq!(unb64(&b64(&[1, 2, 3]), 3), Some(vec![1, 2, 3]));
        assert_eq!(unb64(&b64(&[0u8; 10]), 9), None);
        assert_eq!(unb64("%%%", 10), None);
        assert_eq!(unb64(&"A".repeat(10_000), 100), None);
    }
}
