//! The roots of trust: AMD's ARKs for each product, pinned twice (the PEM
//! shipped in the `sev` crate and its SHA-256 fingerprint written here),
//! plus, only when asked for explicitly, a test root for the simulated
//! platform.

use sha2::{Digest, Sha256};

use super::cert::Cert;
use super::{CertError, Product};

/// SHA-256 of the DER of AMD's ARKs. A dependency update that changes the
/// bundled roots makes [`TrustAnchors::amd`] fail instead of silently
/// trusting something else. Same values as AMD KDS, go-sev-guest and
/// trustee.
const ARK_SHA256: [(Product, &str); 3] = [
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

/// A root certificate trusted for one product.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    pub product: Product,
    pub cert: Cert,
    /// A non-AMD root added with [`TrustAnchors::with_test_root`].
    pub test: bool,
}

/// The roots [`super::verify_endorsement`] accepts, per product, and the
/// built-in ASKs used when a certificate set carries none.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    roots: Vec<Root>,
    asks: Vec<(Product, Cert)>,
    /// Identifies the set (cache keys); recomputed on every change.
    digest: [u8; 32],
}

fn builtin(product: Product) -> (&'static [u8], &'static [u8]) {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    match product {
        Product::Milan => (milan::ARK, milan::ASK),
        Product::Genoa => (genoa::ARK, genoa::ASK),
        Product::Turin => (turin::ARK, turin::ASK),
    }
}

impl TrustAnchors {
    /// AMD's ARKs (and ASKs) for Milan, Genoa and Turin, each ARK checked
    /// against its pinned fingerprint.
    pub fn amd() -> Result<TrustAnchors, CertError> {
        let mut roots = Vec::new();
        let mut asks = Vec::new();
        for (product, pinned) in ARK_SHA256 {
            let (ark_pem, ask_pem) = builtin(product);
            let ark = Cert::parse(ark_pem, &format!("built-in {product} ARK"))?;
            let found = hex::encode(ark.fingerprint());
            if found != pinned {
                return Err(CertError::PinnedRootChanged {
                    product,
                    expected: pinned.to_owned(),
                    found,
                });
            }
            roots.push(Root {
                product,
                cert: ark,
                test: false,
            });
            asks.push((
                product,
                Cert::parse(ask_pem, &format!("built-in {product} ASK"))?,
            ));
        }
        let mut anchors = TrustAnchors {
            roots,
            asks,
            digest: [0; 32],
        };
        anchors.digest = anchors.compute_digest();
        Ok(anchors)
    }

    /// Adds a non-AMD root for `product` (DER or PEM): the simulated
    /// platform's. Endorsements chaining to it carry `test_root = true`,
    /// and [`TrustAnchors::is_test`] turns true; callers must say so
    /// loudly. Production configurations never call this.
    pub fn with_test_root(mut self, product: Product, ark: &[u8]) -> Result<Self, CertError> {
        let cert = Cert::parse(ark, &format!("test root for {product}"))?;
        if !cert.issued_by_name(&cert) {
            return Err(CertError::Malformed {
                what: format!("test root for {product}"),
                reason: "not self-issued (issuer differs from subject)".to_owned(),
            });
        }
        if !self
            .roots
            .iter()
            .any(|r| r.product == product && r.cert == cert)
        {
            self.roots.push(Root {
                product,
                cert,
                test: true,
            });
            self.digest = self.compute_digest();
        }
        Ok(self)
    }

    /// Whether any non-AMD root is trusted.
    pub fn is_test(&self) -> bool {
        self.roots.iter().any(|r| r.test)
    }

    /// AMD's pinned ARK for `product`.
    pub fn amd_ark(&self, product: Product) -> Option<&Cert> {
        self.roots
            .iter()
            .find(|r| r.product == product && !r.test)
            .map(|r| &r.cert)
    }

    /// The built-in ASK for `product` (still verified against the ARK on
    /// every use).
    pub fn builtin_ask(&self, product: Product) -> Option<&Cert> {
        self.asks
            .iter()
            .find(|(p, _)| *p == product)
            .map(|(_, c)| c)
    }

    /// SHA-256 fingerprints of every root trusted for `product`, AMD's
    /// first, each with whether it is a test root.
    pub fn root_fingerprints(&self, product: Product) -> Vec<([u8; 32], bool)> {
        self.roots(product)
            .map(|r| (r.cert.fingerprint(), r.test))
            .collect()
    }

    /// Every root trusted for `product`, AMD's first.
    pub(crate) fn roots(&self, product: Product) -> impl Iterator<Item = &Root> {
        self.roots.iter().filter(move |r| r.product == product)
    }

    /// A digest identifying this set of anchors (for cache keys).
    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    fn compute_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for r in &self.roots {
            h.update([r.product as u8, u8::from(r.test)]);
            h.update(r.cert.fingerprint());
        }
        for (p, c) in &self.asks {
            h.update([*p as u8]);
            h.update(c.fingerprint());
        }
        h.finalize().into()
    }
}
