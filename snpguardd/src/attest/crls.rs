//! The daemon's own ARK CRLs: at most one per trusted root, in
//! [`Tree::Certs`] under `crl/<Product>/<SHA-256 of the root, hex>`, the
//! value a source byte (`i` imported, `k` fetched from KDS) followed by
//! the DER. Every chain the daemon verifies is checked against the CRL
//! of its root (see [`snpguard::certs::Revocation`]), whatever CRL the
//! request carries.
//!
//! A CRL is stored only when a trusted root signed it ([`Crl::verify`]),
//! and only when it is newer (thisUpdate) than the one held: an older
//! CRL never replaces a newer one, so a replayed old CRL cannot hide a
//! later revocation. Stored CRLs are verified again when read (a
//! corrupt entry counts as missing, and is logged); [`CrlMemo`] keeps the
//! parsed ones so that the RSA check runs once per stored CRL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use snpguard::certs::{Crl, Product, TrustAnchors};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{Op, Store, StoreError, Tree};

/// The key prefix of the held CRLs.
pub const CRL_PREFIX: &[u8] = b"crl/";

/// Where a held CRL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrlSource {
    /// Imported by an operator.
    Imported,
    /// Fetched from AMD KDS.
    Kds,
}

impl CrlSource {
    fn tag(self) -> u8 {
        match self {
            CrlSource::Imported => b'i',
            CrlSource::Kds => b'k',
        }
    }

    /// `imported` or `kds-cache`, as listings name sources.
    pub fn name(self) -> &'static str {
        match self {
            CrlSource::Imported => "imported",
            CrlSource::Kds => "kds-cache",
        }
    }
}

/// The key of the CRL of the root `fingerprint` of `product`.
pub fn crl_key(product: Product, fingerprint: &[u8; 32]) -> Vec<u8> {
    format!("crl/{}/{}", product.kds_name(), hex::encode(fingerprint)).into_bytes()
}

/// A held CRL as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// The product of the root that signed it.
    pub product: Product,
    /// Signed by a configured test root, not AMD's ARK.
    pub test_root: bool,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339 ("" when absent).
    pub next_update: String,
    /// Number of revoked serial numbers.
    pub revoked: u32,
    /// Imported or fetched from KDS.
    pub source: CrlSource,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

impl CrlSummary {
    /// What operators see of `crl` from `source`.
    pub fn of(crl: &Crl, source: CrlSource) -> Self {
        CrlSummary {
            product: crl.product(),
            test_root: crl.test_root(),
            this_update: rfc3339(crl.this_update()),
            next_update: crl.next_update().map(rfc3339).unwrap_or_default(),
            revoked: u32::try_from(crl.revoked_count()).unwrap_or(u32::MAX),
            source,
        }
    }
}

/// A stored value and the CRL parsed from it.
type Parsed = (Vec<u8>, Arc<Crl>);

/// Parsed CRLs by store key, with the stored bytes they came from.
#[derive(Debug, Default)]
pub struct CrlMemo {
    inner: Mutex<HashMap<Vec<u8>, Parsed>>,
}

impl CrlMemo {
    /// The CRL stored under `key`, verified against `anchors` (once per
    /// stored value); `None` when absent or unusable (logged).
    pub fn get(
        &self,
        store: &dyn Store,
        anchors: &TrustAnchors,
        key: &[u8],
    ) -> Result<Option<(Arc<Crl>, CrlSource)>, StoreError> {
        let Some(value) = store.get(Tree::Certs, key)? else {
            return Ok(None);
        };
        let source = match value.first() {
            Some(b'k') => CrlSource::Kds,
            _ => CrlSource::Imported,
        };
        let mut memo = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((bytes, crl)) = memo.get(key) {
            if *bytes == value {
                return Ok(Some((crl.clone(), source)));
            }
        }
        match Crl::verify(anchors, value.get(1..).unwrap_or_default()) {
            Ok(crl) => {
                let crl = Arc::new(crl);
                memo.insert(key.to_vec(), (value, crl.clone()));
                Ok(Some((crl, source)))
            }
            Err(e) => {
                tracing::error!(
                    KEY = %String::from_utf8_lossy(key),
                    CODE = e.code(),
                    "a stored CRL does not verify, treating it as missing: {e}"
                );
                memo.remove(key);
                Ok(None)
            }
        }
    }

    /// Every held CRL of a root of `products`.
    pub fn held(
        &self,
        store: &dyn Store,
        anchors: &TrustAnchors,
        products: &[Product],
    ) -> Result<Vec<(Arc<Crl>, CrlSource)>, StoreError> {
        let mut out = Vec::new();
        for &p in products {
            for (fp, _) in anchors.root_fingerprints(p) {
                if let Some(held) = self.get(store, anchors, &crl_key(p, &fp))? {
                    out.push(held);
                }
            }
        }
        Ok(out)
    }
}

/// What [`store_if_newer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The CRL is now held (none was, or it is newer).
    Stored,
    /// The very same CRL is held already.
    Unchanged,
    /// A newer (or equally new, different) CRL is held and was kept;
    /// its thisUpdate.
    KeptNewer(OffsetDateTime),
}

/// The operation that stores `crl` from `source` unless the held one of
/// its root is newer or the same; see [`Stored`].
pub fn store_op(
    store: &dyn Store,
    anchors: &TrustAnchors,
    memo: &CrlMemo,
    crl: &Crl,
    source: CrlSource,
) -> Result<(Stored, Option<Op>), StoreError> {
    let key = crl_key(crl.product(), &crl.root_fingerprint());
    if let Some((held, _)) = memo.get(store, anchors, &key)? {
        if held.der() == crl.der() {
            return Ok((Stored::Unchanged, None));
        }
        if !crl.supersedes(&held) {
            return Ok((Stored::KeptNewer(held.this_update()), None));
        }
    }
    let mut value = vec![source.tag()];
    value.extend_from_slice(crl.der());
    Ok((Stored::Stored, Some(Op::put(Tree::Certs, key, value))))
}

/// Every held CRL, for listings, in key order.
pub fn list(
    store: &dyn Store,
    anchors: &TrustAnchors,
    memo: &CrlMemo,
) -> Result<Vec<CrlSummary>, StoreError> {
    let mut out = Vec::new();
    for p in Product::ALL {
        for (crl, source) in memo.held(store, anchors, &[p])? {
            out.push(CrlSummary::of(&crl, source));
        }
    }
    Ok(out)
}

/// Removes the held CRLs of `product` (every product when `None`) from
/// `source` (any when `None`), including entries that no longer verify
/// or belong to no trusted root; returns what was removed (unusable
/// entries are logged, not returned).
pub fn remove(
    store: &dyn Store,
    anchors: &TrustAnchors,
    memo: &CrlMemo,
    product: Option<Product>,
    source: Option<CrlSource>,
) -> Result<Vec<CrlSummary>, StoreError> {
    let mut ops = Vec::new();
    let mut out = Vec::new();
    for (key, value) in store.entries(Tree::Certs)? {
        if !key.starts_with(CRL_PREFIX) {
            continue;
        }
        let key_product = String::from_utf8_lossy(&key)
            .split('/')
            .nth(1)
            .and_then(|p| Product::ALL.into_iter().find(|x| x.kds_name() == p));
        if product.is_some_and(|p| key_product != Some(p)) {
            continue;
        }
        let entry_source = match value.first() {
            Some(b'k') => CrlSource::Kds,
            _ => CrlSource::Imported,
        };
        if source.is_some_and(|s| s != entry_source) {
            continue;
        }
        match memo.get(store, anchors, &key)? {
            Some((crl, s)) => out.push(CrlSummary::of(&crl, s)),
            None => tracing::info!(
                KEY = %String::from_utf8_lossy(&key),
                "removing an unusable stored CRL"
            ),
        }
        ops.push(Op::delete(Tree::Certs, key));
    }
    if !ops.is_empty() {
        store.transaction(&ops)?;
    }
    Ok(out)
}
