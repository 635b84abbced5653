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
//! and are never fetched. The ARK's CRL is fetched from
//! `/vcek/v1/{product}/crl` (the same ARK signs it for ASKs and ASVKs),
//! through the same gate: one lookup per product is remembered like a
//! VCEK's.
//!
//! Whoever can send a report can make the daemon ask KDS, so every
//! lookup goes through a [`KdsGate`]: a (chip, TCB) that KDS already
//! answered is answered from memory for a while (a VCEK for
//! [`KDS_ANSWER_TTL_SECS`], a refusal or an outage for
//! [`KDS_NEGATIVE_TTL_SECS`]), at most [`KDS_FETCH_BURST`] fetches go
//! out at once and then one every [`KDS_FETCH_INTERVAL_SECS`], and a
//! masked CHIP_ID is never looked up. What the gate remembers is not
//! trusted either: it only saves the round trip.

use std::collections::HashMap;
use std::sync::Mutex;
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
    /// KDS failed for this chip and TCB a moment ago; not asked again yet.
    #[error("KDS failed for this chip and TCB {age_secs} s ago ({reason}); asking again in {retry_in_secs} s")]
    RecentlyFailed {
        /// Seconds since the failure.
        age_secs: u64,
        /// Seconds until KDS is asked again.
        retry_in_secs: u64,
        /// The failure.
        reason: String,
    },
    /// The daemon's own limit of KDS fetches is used up.
    #[error("too many KDS lookups; at most {KDS_FETCH_BURST} at once and one every {KDS_FETCH_INTERVAL_SECS} s")]
    RateLimited,
}

/// Seconds a VCEK fetched from KDS is answered from memory for its
/// (chip, TCB) before KDS is asked again (it is stored in the cache only
/// once it verified a report).
pub const KDS_ANSWER_TTL_SECS: u64 = 600;
/// Seconds a failed lookup (HTTP error, outage, unusable answer) of a
/// (chip, TCB) is remembered before KDS is asked again.
pub const KDS_NEGATIVE_TTL_SECS: u64 = 300;
/// Fetches that may go out at once.
pub const KDS_FETCH_BURST: u32 = 10;
/// Seconds per further fetch once the burst is used.
pub const KDS_FETCH_INTERVAL_SECS: u64 = 6;
/// (chip, TCB) answers remembered at once.
pub const KDS_MEMORY: usize = 1024;

/// What a lookup is keyed by: product, hwID and the TCB's components.
type LookupKey = (Product, Vec<u8>, (u8, u8, u8, u8, Option<u8>));

fn lookup_key(product: Product, hwid: &[u8], tcb: &TcbParts) -> LookupKey {
    let t = (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc);
    (product, hwid.to_vec(), t)
}

/// A remembered answer.
struct Answer {
    at: u64,
    result: Result<Vec<u8>, KdsError>,
}

struct GateState {
    answers: HashMap<LookupKey, Answer>,
    /// CRL lookups, per product.
    crls: HashMap<Product, Answer>,
    /// Fetch tokens (scaled by the interval: one token is one fetch).
    tokens: f64,
    refilled_at: u64,
}

/// Rate limit and memory of KDS lookups in front of a [`KdsClient`].
pub struct KdsGate {
    client: Box<dyn KdsClient>,
    state: Mutex<GateState>,
}

impl std::fmt::Debug for KdsGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsGate").finish_non_exhaustive()
    }
}

impl KdsGate {
    /// A gate in front of `client`.
    pub fn new(client: Box<dyn KdsClient>) -> Self {
        KdsGate {
            client,
            state: Mutex::new(GateState {
                answers: HashMap::new(),
                crls: HashMap::new(),
                tokens: f64::from(KDS_FETCH_BURST),
                refilled_at: 0,
            }),
        }
    }

    /// The VCEK of chip `hwid` at `tcb`, at `now` (seconds since the
    /// epoch): from memory when KDS answered for that (chip, TCB)
    /// recently, else fetched if the rate limit allows. The state lock is
    /// not held while fetching.
    pub fn fetch_vcek(
        &self,
        product: Product,
        hwid: &[u8],
        tcb: &TcbParts,
        now: u64,
    ) -> Result<Vec<u8>, KdsError> {
        if hwid.iter().all(|&b| b == 0) {
            return Err(KdsError::MaskedChipId);
        }
        let key = lookup_key(product, hwid, tcb);
        {
            let mut st = self.lock();
            if let Some(a) = st.answers.get(&key) {
                let age = now.saturating_sub(a.at);
                let ttl = ttl(&a.result);
                if age < ttl {
                    return match &a.result {
                        Ok(der) => Ok(der.clone()),
                        Err(e) => Err(KdsError::RecentlyFailed {
                            age_secs: age,
                            retry_in_secs: ttl - age,
                            reason: e.to_string(),
                        }),
                    };
                }
            }
            st.refill(now);
            if st.tokens < 1.0 {
                return Err(KdsError::RateLimited);
            }
            st.tokens -= 1.0;
        }
        let result = self.client.fetch_vcek(product, hwid, tcb);
        self.remember(key, result.clone(), now);
        result
    }

    /// The ARK CRL of `product`, at `now`: from memory when KDS answered
    /// for that product recently (a CRL for [`KDS_ANSWER_TTL_SECS`], a
    /// failure for [`KDS_NEGATIVE_TTL_SECS`]), else fetched if the rate
    /// limit allows.
    pub fn fetch_crl(&self, product: Product, now: u64) -> Result<Vec<u8>, KdsError> {
        {
            let mut st = self.lock();
            if let Some(a) = st.crls.get(&product) {
                let age = now.saturating_sub(a.at);
                let ttl = ttl(&a.result);
                if age < ttl {
                    return match &a.result {
                        Ok(der) => Ok(der.clone()),
                        Err(e) => Err(KdsError::RecentlyFailed {
                            age_secs: age,
                            retry_in_secs: ttl - age,
                            reason: e.to_string(),
                        }),
                    };
                }
            }
            st.refill(now);
            if st.tokens < 1.0 {
                return Err(KdsError::RateLimited);
            }
            st.tokens -= 1.0;
        }
        let result = self.client.fetch_crl(product);
        self.lock().crls.insert(
            product,
            Answer {
                at: now,
                result: result.clone(),
            },
        );
        result
    }

    /// Remembers that the VCEK KDS served for `hwid` at `tcb` is unusable
    /// (it does not parse, or does not verify the report's chain or
    /// binding), so that it is not fetched again at once.
    pub fn unusable(&self, product: Product, hwid: &[u8], tcb: &TcbParts, why: &str, now: u64) {
        let e = KdsError::Transport {
            url: vcek_path(product, hwid, tcb),
            reason: format!("unusable answer: {why}"),
        };
        self.remember(lookup_key(product, hwid, tcb), Err(e), now);
    }

    fn remember(&self, key: LookupKey, result: Result<Vec<u8>, KdsError>, now: u64) {
        let mut st = self.lock();
        if !st.answers.contains_key(&key) && st.answers.len() >= KDS_MEMORY {
            st.answers
                .retain(|_, a| now.saturating_sub(a.at) < ttl(&a.result));
            if st.answers.len() >= KDS_MEMORY {
                let oldest = st
                    .answers
                    .iter()
                    .min_by_key(|(_, a)| a.at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    st.answers.remove(&k);
                }
            }
        }
        st.answers.insert(key, Answer { at: now, result });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl GateState {
    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.refilled_at);
        if elapsed > 0 {
            let gained = elapsed as f64 / KDS_FETCH_INTERVAL_SECS as f64;
            self.tokens = (self.tokens + gained).min(f64::from(KDS_FETCH_BURST));
            self.refilled_at = now;
        }
    }
}

fn ttl(result: &Result<Vec<u8>, KdsError>) -> u64 {
    match result {
        Ok(_) => KDS_ANSWER_TTL_SECS,
        Err(_) => KDS_NEGATIVE_TTL_SECS,
    }
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

    /// The ARK's CRL of `product` (`/vcek/v1/{product}/crl`), DER as KDS
    /// serves it.
    fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError>;
}

/// The path of the ARK's CRL of `product` on KDS.
pub fn crl_path(product: Product) -> String {
    format!("/vcek/v1/{}/crl", product.kds_name())
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

impl HttpKds {
    fn get(&self, url: String) -> Result<Vec<u8>, KdsError> {
        let result = self.get_uncounted(url);
        crate::metrics::global().kds_request(result.is_err());
        result
    }

    fn get_uncounted(&self, url: String) -> Result<Vec<u8>, KdsError> {
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
        self.get(format!("{}{}", self.base, vcek_path(product, hwid, tcb)))
    }

    fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError> {
        self.get(format!("{}{}", self.base, crl_path(product)))
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

    /// Counts fetches; answers from a map of hwID first byte to result.
    struct Counting {
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl KdsClient for Counting {
        fn fetch_vcek(&self, _: Product, hwid: &[u8], _: &TcbParts) -> Result<Vec<u8>, KdsError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if hwid[0] == 0x44 {
                Err(KdsError::Status {
                    url: "x".into(),
                    status: 404,
                })
            } else {
                Ok(vec![hwid[0]])
            }
        }

        fn fetch_crl(&self, product: Product) -> Result<Vec<u8>, KdsError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(vec![product as u8])
        }
    }

    fn tcb(snp: u8) -> TcbParts {
        TcbParts {
            bootloader: 3,
            tee: 0,
            snp,
            microcode: 115,
            fmc: None,
        }
    }

    fn gate() -> (KdsGate, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = KdsGate::new(Box::new(Counting {
            calls: calls.clone(),
        }));
        (gate, calls)
    }

    fn calls(c: &std::sync::atomic::AtomicUsize) -> usize {
        c.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_failed_lookup_is_remembered_per_chip_and_tcb() {
        let (gate, n) = gate();
        let t0 = 1_000_000;
        let missing = [0x44u8; 64];
        let e = gate.fetch_vcek(Product::Milan, &missing, &tcb(8), t0);
        assert!(
            matches!(e, Err(KdsError::Status { status: 404, .. })),
            "{e:?}"
        );
        // Asked again: answered from memory, KDS is not asked.
        for later in [t0, t0 + KDS_NEGATIVE_TTL_SECS - 1] {
            let e = gate.fetch_vcek(Product::Milan, &missing, &tcb(8), later);
            assert!(matches!(e, Err(KdsError::RecentlyFailed { .. })), "{e:?}");
        }
        assert_eq!(calls(&n), 1);
        // Another TCB of the same chip is its own lookup.
        let _ = gate.fetch_vcek(Product::Milan, &missing, &tcb(9), t0);
        assert_eq!(calls(&n), 2);
        // Once the negative entry expired, KDS is asked again.
        let _ = gate.fetch_vcek(
            Product::Milan,
            &missing,
            &tcb(8),
            t0 + KDS_NEGATIVE_TTL_SECS,
        );
        assert_eq!(calls(&n), 3);
        // An answer found unusable is remembered like a failure.
        let chip = [0x55u8; 64];
        assert_eq!(
            gate.fetch_vcek(Product::Milan, &chip, &tcb(8), t0),
            Ok(vec![0x55])
        );
        gate.unusable(Product::Milan, &chip, &tcb(8), "chain", t0);
        let e = gate.fetch_vcek(Product::Milan, &chip, &tcb(8), t0 + 1);
        assert!(matches!(e, Err(KdsError::RecentlyFailed { .. })), "{e:?}");
        assert_eq!(calls(&n), 4);
    }

    #[test]
    fn a_served_vcek_is_answered_from_memory_for_a_while() {
        let (gate, n) = gate();
        let chip = [0x55u8; 64];
        let t0 = 1_000_000;
        for t in [t0, t0 + 1, t0 + KDS_ANSWER_TTL_SECS - 1] {
            assert_eq!(
                gate.fetch_vcek(Product::Milan, &chip, &tcb(8), t),
                Ok(vec![0x55])
            );
        }
        assert_eq!(calls(&n), 1);
        let _ = gate.fetch_vcek(Product::Milan, &chip, &tcb(8), t0 + KDS_ANSWER_TTL_SECS);
        assert_eq!(calls(&n), 2);
    }

    #[test]
    fn fetches_are_rate_limited() {
        let (gate, n) = gate();
        let t0 = 1_000_000;
        let chip = |i: u8| {
            let mut c = [0x60u8; 64];
            c[1] = i;
            c
        };
        for i in 0..KDS_FETCH_BURST as u8 {
            assert!(gate
                .fetch_vcek(Product::Milan, &chip(i), &tcb(8), t0)
                .is_ok());
        }
        assert_eq!(
            gate.fetch_vcek(Product::Milan, &chip(100), &tcb(8), t0),
            Err(KdsError::RateLimited)
        );
        assert_eq!(calls(&n), KDS_FETCH_BURST as usize);
        // One interval later, one more fetch.
        let t1 = t0 + KDS_FETCH_INTERVAL_SECS;
        assert!(gate
            .fetch_vcek(Product::Milan, &chip(100), &tcb(8), t1)
            .is_ok());
        assert_eq!(
            gate.fetch_vcek(Product::Milan, &chip(101), &tcb(8), t1),
            Err(KdsError::RateLimited)
        );
        // A masked CHIP_ID is never asked for and costs nothing.
        assert_eq!(
            gate.fetch_vcek(Product::Milan, &[0; 64], &tcb(8), t1 + 3600),
            Err(KdsError::MaskedChipId)
        );
        assert_eq!(calls(&n), KDS_FETCH_BURST as usize + 1);
    }

    #[test]
    fn crl_lookups_are_remembered_per_product_and_rate_limited() {
        let (gate, n) = gate();
        let t0 = 1_000_000;
        assert_eq!(gate.fetch_crl(Product::Genoa, t0), Ok(vec![1]));
        assert_eq!(
            gate.fetch_crl(Product::Genoa, t0 + KDS_ANSWER_TTL_SECS - 1),
            Ok(vec![1])
        );
        assert_eq!(calls(&n), 1);
        let _ = gate.fetch_crl(Product::Turin, t0);
        assert_eq!(calls(&n), 2);
        let _ = gate.fetch_crl(Product::Genoa, t0 + KDS_ANSWER_TTL_SECS);
        assert_eq!(calls(&n), 3);
        assert_eq!(crl_path(Product::Milan), "/vcek/v1/Milan/crl");
    }

    #[test]
    fn the_memory_stays_bounded() {
        let (gate, _) = gate();
        let t0 = 1_000_000;
        for i in 0..(KDS_MEMORY + 10) {
            let mut c = [0x60u8; 64];
            c[1..3].copy_from_slice(&(i as u16).to_be_bytes());
            // Spread over time so that the rate limit does not refuse.
            gate.remember(
                lookup_key(Product::Milan, &c, &tcb(8)),
                Ok(vec![1]),
                t0 + i as u64,
            );
        }
        assert!(gate.lock().answers.len() <= KDS_MEMORY);
    }
}
