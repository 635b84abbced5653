//! A small bounded cache of verified chains: a repeated verification of the
//! same certificates skips the RSA work but still checks every validity
//! window at the time asked.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::chain::{verify_static, ChainError, CheckedChain, Endorsement};
use super::{CertSet, KeyKind, Product, TrustAnchors};

/// Cache of chains that passed every time-independent rule, keyed by
/// SHA-256 over everything [`super::verify_endorsement`] looks at except
/// the time: the anchors, the key kind, the product hint, and the DER of
/// the endorsement certificate, the intermediates, the supplied ARK and
/// the CRL. Only successes are cached. Safe to share between threads.
#[derive(Debug)]
pub struct EndorsementCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<[u8; 32], CheckedChain>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<[u8; 32]>,
}

impl EndorsementCache {
    /// A cache holding at most `capacity` chains (at least one).
    pub fn new(capacity: usize) -> Self {
        EndorsementCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Number of cached chains.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry
        // (inserts are single operations), so a poisoned cache is usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`super::verify_endorsement`], reusing an earlier verification of
    /// the same inputs for everything but validity at `at`.
    pub fn verify(
        &self,
        anchors: &TrustAnchors,
        certs: &CertSet,
        kind: KeyKind,
        product_hint: Option<Product>,
        at: OffsetDateTime,
    ) -> Result<Endorsement, ChainError> {
        let key = cache_key(anchors, certs, kind, product_hint);
        if let Some(hit) = self.lock().map.get(&key) {
            return hit.at(at);
        }
        let verified = verify_static(anchors, certs, kind, product_hint)?;
        let result = verified.at(at);
        let mut inner = self.lock();
        if !inner.map.contains_key(&key) {
            while inner.map.len() >= self.capacity {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.map.remove(&old);
                    }
                    None => break,
                }
            }
            inner.order.push_back(key);
            inner.map.insert(key, verified);
        }
        result
    }
}

fn cache_key(
    anchors: &TrustAnchors,
    certs: &CertSet,
    kind: KeyKind,
    product_hint: Option<Product>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"snpguard endorsement cache v1");
    h.update(anchors.digest());
    h.update([
        match kind {
            KeyKind::Vcek => 1,
            KeyKind::Vlek => 2,
        },
        product_hint.map_or(0, |p| p as u8 + 1),
    ]);
    // Each part length-prefixed so no two inputs share an encoding.
    let mut part = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            h.update([1]);
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        None => h.update([0]),
    };
    let (leaf, inter) = match kind {
        KeyKind::Vcek => (&certs.vcek, &certs.ask),
        KeyKind::Vlek => (&certs.vlek, &certs.asvk),
    };
    part(leaf.as_ref().map(|c| c.der()));
    part(inter.as_ref().map(|c| c.der()));
    part(certs.ark.as_ref().map(|c| c.der()));
    part(certs.crl.as_deref());
    h.finalize().into()
}
