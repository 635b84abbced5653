//! Remote attestation: what the HTTPS endpoint asks of the daemon. The
//! transport (`https`) sees only [`AttestHandler`]; the attestor behind it
//! checks nonces, finds the record, runs the full verification of the
//! trust core and releases the key.
//!
//! - [`Attestor`]: the [`AttestHandler`] of the daemon.
//! - [`nonce`]: stateless, MAC'd, single-use nonces.
//! - [`certs`]: certificates held by the daemon (imports, KDS cache).
//! - [`crls`]: the daemon's own ARK CRLs, applied to every chain.
//! - [`kds`]: fetching VCEKs from AMD KDS ([`KdsClient`], [`HttpKds`]).
//!
//! The audit trail of the decisions is [`crate::audit`] (the registry
//! writes it in the same transactions).

pub mod attestor;
pub mod certs;
pub mod crls;
pub mod kds;
pub mod nonce;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use snpguard_protocol::attest::{
    AttestRequest, AttestResponse, ChallengeResponse, RenewRequest, RenewResponse,
    SignedLaunchRequest, SignedLaunchResponse,
};

pub use attestor::{Attestor, AttestorError, Clock, SystemClock};
pub use certs::{CertFilter, CertImportError, CertSummary, CertificateService, HeldSource};
pub use crls::{CrlSource, CrlSummary};
pub use kds::{HttpKds, KdsClient, KdsError, KdsGate, AMD_KDS_URL};

/// A refusal or failure as the remote client sees it: a stable code, an
/// HTTP status and a coarse message. The precise reason goes to the
/// journal and the audit trail, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AttestError {
    /// Stable code, e.g. `attestation-rejected`, `bad-request`,
    /// `nonce-invalid`, `rate-limited`, `too-many-pending`, `internal`.
    pub code: &'static str,
    /// HTTP status to answer with.
    pub status: u16,
    /// Coarse human-readable message.
    pub message: String,
}

impl AttestError {
    /// A client error (400) with a stable code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        AttestError {
            code,
            status: 400,
            message: message.into(),
        }
    }
}

/// The attestation operations behind `/v1`. Implementations are
/// thread-safe; calls may block (verification, storage), so the server
/// runs them off its async executor.
pub trait AttestHandler: Send + Sync + 'static {
    /// A fresh single-use nonce.
    fn challenge(&self) -> Result<ChallengeResponse, AttestError>;
    /// Verifies the evidence and, if every rule holds, releases the key.
    fn attest(&self, req: AttestRequest, peer: IpAddr) -> Result<AttestResponse, AttestError>;
    /// Verifies the evidence as [`AttestHandler::attest`] does, with
    /// REPORT_DATA bound to the new artifacts, and stores them as a
    /// pending launch of the record. Releases nothing.
    fn renew(&self, req: RenewRequest, peer: IpAddr) -> Result<RenewResponse, AttestError>;
    /// Verifies the evidence as [`AttestHandler::attest`] does, with
    /// REPORT_DATA bound to the launch asked for, and answers with that
    /// approved launch's signed configuration, ID block and ID auth
    /// block. Releases nothing.
    fn signed_launch(
        &self,
        req: SignedLaunchRequest,
        peer: IpAddr,
    ) -> Result<SignedLaunchResponse, AttestError>;
    /// Checks a nonce without using it: issued by this service, not
    /// expired, not used yet. Returns how much longer it stays valid.
    /// The server asks this before it lets a `/v1/renew` upload take the
    /// one renewal slot, so that a client without a live nonce cannot
    /// hold it; [`AttestHandler::renew`] still consumes the nonce.
    fn check_nonce(&self, nonce: &str) -> Result<std::time::Duration, AttestError>;
    /// The HPKE ingestion public key (raw X25519).
    fn ingestion_key(&self) -> [u8; 32];
}
