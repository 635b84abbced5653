//! Fetching VCEKs from AMD's Key Distribution Service.
//!
//! Nothing fetched is trusted: a VCEK from KDS goes through the same chain
//! verification as one from the guest, and it is cached only after its
//! chain verified (see [`super::certs`]). The transport is behind
//! [`KdsClient`] so tests can serve certificates from 127.0.0.1.
//!
//! URLs (AMD, "VCEK Certificate and KDS Interface Specification"):
//! - Milan, Genoa: `/vcek/v1/{Milan|Genoa}/{hex of the 64-byte CHIP_ID}
//!   ?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
//! - Turin: `/vcek/v1/Turin/{hex of the first 8 bytes of CHIP_ID}
//!   ?fmcSPL=..&blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
//!
//! VLEKs are not published by KDS (they are loaded by the cloud provider)
//! and are never fetched.

use std::time::Duration;

use snpguard::certs::Product;
use snpguard::report::TcbParts;

/// AMD's KDS.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// Largest response accepted (a VCEK is ~1.3 KiB).
pub const MAX_VCEK_RESPONSE: u64 = 64 * 1024;
/// Time allowed for one whole fetch.
pub const KDS_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed fetch. Never fatal for an attestation by itself: the report
/// is then verified with what else is at hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KdsError {
    /// KDS answered with an HTTP error status (404: unknown chip or TCB).
    #[error("KDS answered HTTP {status} for {url}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// KDS could not be reached or the response could not be read.
    #[error("fetching {url}: {reason}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The hwID cannot be used for a KDS URL (masked CHIP_ID).
    #[error("CHIP_ID is masked (all zeros); KDS cannot be asked for this chip's VCEK")]
    MaskedChipId,
}

/// Fetches VCEK certificates (DER) by product, hwID and TCB.
pub trait KdsClient: Send + Sync + 'static {
    /// The VCEK of chip `hwid` (64 bytes for Milan/Genoa, 8 for Turin) at
    /// `tcb`, DER as KDS serves it.
    fn fetch_vcek(
        &self,
        product: Product,
        hwid: &[u8],
        tcb: &TcbParts,
    ) -> Result<Vec<u8>, KdsError>;
}

/// The path and query of a VCEK on KDS (below the base URL).
pub fn vcek_path(product: Product, hwid: &[u8], tcb: &TcbParts) -> String {
    let name = product.kds_name();
    let hwid = hex::encode(hwid);
    let (bl, tee, snp, uc) = (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode);
    match product {
        Product::Milan | Product::Genoa => {
            format!("/vcek/v1/{name}/{hwid}?blSPL={bl}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={uc}")
        }
        Product::Turin => {
            let fmc = tcb.fmc.unwrap_or(0);
            format!(
                "/vcek/v1/{name}/{hwid}?fmcSPL={fmc}&blSPL={bl}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={uc}"
            )
        }
    }
}

/// The KDS client over HTTPS (ureq with rustls and the webpki roots).
/// TLS here only protects availability: what it returns is verified
/// against the pinned ARKs like any other certificate.
pub struct HttpKds {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpKds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpKds").field("base", &self.base).finish()
    }
}

impl HttpKds {
    /// AMD's KDS at [`AMD_KDS_URL`].
    pub fn amd() -> Self {
        Self::new(AMD_KDS_URL)
    }

    /// A KDS at `base` (scheme, host and port, no trailing slash; tests
    /// use `http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(KDS_TIMEOUT))
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("snpguardd/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpKds {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.into(),
        }
    }
}

impl KdsClient for HttpKds {
    fn fetch_vcek(
        &self,
        product: Product,
        hwid: &[u8],
        tcb: &TcbParts,
    ) -> Result<Vec<u8>, KdsError> {
        if hwid.iter().all(|&b| b == 0) {
            return Err(KdsError::MaskedChipId);
        }
        let url = format!("{}{}", self.base, vcek_path(product, hwid, tcb));
        let transport = |e: ureq::Error| KdsError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut resp = self.agent.get(&url).call().map_err(transport)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(KdsError::Status { url, status });
        }
        resp.body_mut()
            .with_config()
            .limit(MAX_VCEK_RESPONSE)
            .read_to_vec()
            .map_err(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcek_paths_follow_the_kds_specification() {
        let milan = TcbParts {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        };
        let hwid = [0xabu8; 64];
        assert_eq!(
            vcek_path(Product::Milan, &hwid, &milan),
            format!(
                "/vcek/v1/Milan/{}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
                "ab".repeat(64)
            )
        );
        let turin = TcbParts {
            bootloader: 1,
            tee: 4,
            snp: 2,
            microcode: 217,
            fmc: Some(7),
        };
        assert_eq!(
            vcek_path(Product::Turin, &[1, 2, 3, 4, 5, 6, 7, 8], &turin),
            "/vcek/v1/Turin/0102030405060708?fmcSPL=7&blSPL=1&teeSPL=4&snpSPL=2&ucodeSPL=217"
        );
    }

    #[test]
    fn masked_chip_id_is_not_fetched() {
        let kds = HttpKds::new("http://127.0.0.1:9");
        let tcb = TcbParts {
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
        };
        assert_eq!(
            kds.fetch_vcek(Product::Milan, &[0; 64], &tcb),
            Err(KdsError::MaskedChipId)
        );
    }
}
