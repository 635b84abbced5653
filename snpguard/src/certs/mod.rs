//! AMD's pinned roots, certificate sources and endorsement-chain
//! verification.
//!
//! - [`Product`], [`KeyKind`]: which AMD generation and which endorsement key.
//! - [`Cert`]: one parsed X.509 certificate, kept with its DER bytes.
//! - [`CertSet`]: the certificates at hand, from a directory
//!   ([`CertSet::from_dir`]), the extended-report / configfs-tsm certificate
//!   table ([`CertSet::from_cert_table`]) or configfs-tsm JSON
//!   ([`parse_tsm_json`]).
//! - [`TrustAnchors`]: the pinned AMD roots (and, for the simulated platform
//!   only, an explicit test root).
//! - [`verify_endorsement`]: VCEK/VLEK -> ASK/ASVK -> ARK, every rule every
//!   time, each failure a [`ChainError`] variant; [`EndorsementCache`] skips
//!   the RSA work for a chain already verified.
//! - [`Crl`], [`Revocation`]: a relying party's own ARK CRLs, applied to
//!   every chain under a [`RevocationPolicy`].

mod amd;
mod cache;
mod cert;
mod chain;
mod crl;
mod ext;
pub mod oid;
mod set;
mod sig;
mod table;
mod tsm;

#[cfg(test)]
mod testchain;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use amd::TrustAnchors;
pub use cache::EndorsementCache;
pub use cert::Cert;
pub use chain::{verify_ca, verify_endorsement, CaCert, CertRole, ChainError, Endorsement};
pub use crl::{Crl, CrlPolicy, Revocation, RevocationPolicy, RevocationWarning};
pub use ext::CertTcb;
pub use set::CertSet;
pub use table::{
    encode as encode_cert_table, CERT_TABLE_MAX_ENTRY, CERT_TABLE_MAX_SIZE, GUID_ARK, GUID_ASK,
    GUID_CRL, GUID_VCEK, GUID_VLEK,
};
pub use tsm::{parse_tsm_json, TSM_JSON_MAX_SIZE};

/// An AMD EPYC generation with SEV-SNP, each with its own ARK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// EPYC 7003 (Zen 3).
    Milan,
    /// EPYC 9004 / 8004 (Zen 4: Genoa, Bergamo, Siena).
    Genoa,
    /// EPYC 9005 (Zen 5).
    Turin,
}

impl Product {
    /// Every product, in release order.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The product for a CPUID family and model (as in the report's
    /// CPUID_FAM_ID / CPUID_MOD_ID, v3+), or `None` when unknown: family
    /// 19h models 00h-0Fh are Milan, 10h-1Fh and A0h-AFh Genoa (Genoa,
    /// Bergamo, Siena); family 1Ah models 00h-1Fh Turin.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Product> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Product::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Product::Genoa),
            (0x1A, 0x00..=0x1F) => Some(Product::Turin),
            _ => None,
        }
    }

    /// The name AMD uses in certificate names and KDS URLs ("Milan").
    pub fn kds_name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// Parses AMD's capitalised name as it appears in certificates
    /// ("Milan", "Genoa", "Turin"), exactly.
    pub(crate) fn from_amd_name(name: &str) -> Option<Product> {
        Product::ALL.into_iter().find(|p| p.kds_name() == name)
    }

    /// Whether VCEKs of this product carry the Turin-style TCB (with FMC)
    /// and an 8-byte hardware ID.
    pub fn has_fmc(self) -> bool {
        matches!(self, Product::Turin)
    }

    /// Length of the hwID extension of a VCEK (the report's CHIP_ID prefix
    /// that it must equal).
    pub fn hwid_len(self) -> usize {
        match self {
            Product::Milan | Product::Genoa => 64,
            Product::Turin => 8,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Product::Milan => "milan",
            Product::Genoa => "genoa",
            Product::Turin => "turin",
        })
    }
}

/// An unknown product name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown product {0:?}; expected milan, genoa or turin")]
pub struct UnknownProduct(pub String);

impl FromStr for Product {
    type Err = UnknownProduct;

    /// Parses "milan", "genoa" or "turin" (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Product::ALL
            .into_iter()
            .find(|p| p.kds_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProduct(s.chars().take(32).collect()))
    }
}

/// Which key signed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Versioned Chip Endorsement Key: per chip and TCB, issued by the ASK.
    Vcek,
    /// Versioned Loaded Endorsement Key: per cloud provider, issued by the ASVK.
    Vlek,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Vcek => "VCEK",
            KeyKind::Vlek => "VLEK",
        })
    }
}

/// Errors reading certificates from files, tables or JSON (before any
/// trust decision; those are [`ChainError`]s).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Neither a DER certificate nor a PEM CERTIFICATE block.
    #[error("{what}: not a DER or PEM X.509 certificate: {reason}")]
    Malformed {
        /// Which input.
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// An input larger than its bound.
    #[error("{what}: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Two files or table entries for the same role.
    #[error("{role} is given twice ({first} and {second}); keep one")]
    Duplicate {
        /// ARK, ASK, ...
        role: &'static str,
        /// Where the first came from.
        first: String,
        /// Where the second came from.
        second: String,
    },
    /// A certificate in `cert_chain.pem` that is neither ARK, ASK nor ASVK.
    #[error("{what}: certificate {subject:?} is not an AMD ARK, ASK or ASVK")]
    UnexpectedCert {
        /// Which input.
        what: String,
        /// Its subject common name.
        subject: String,
    },
    /// A built-in AMD root whose fingerprint is not the pinned one (a
    /// dependency changed it).
    #[error("built-in {product} ARK has SHA-256 {found}, but {expected} is pinned; refusing to trust it")]
    PinnedRootChanged {
        /// Which product.
        product: Product,
        /// The pinned fingerprint (hex).
        expected: String,
        /// The built-in certificate's fingerprint (hex).
        found: String,
    },
    /// A malformed certificate table.
    #[error("certificate table: {0}")]
    Table(String),
    /// Malformed configfs-tsm JSON.
    #[error("configfs-tsm json: {0}")]
    Tsm(String),
}
