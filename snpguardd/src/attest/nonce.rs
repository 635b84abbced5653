//! Attestation nonces: stateless to issue, single-use to consume.
//!
//! A nonce is 32 bytes: the issue time (u64 big-endian Unix seconds), 8
//! random bytes, and the first 16 bytes of HMAC-SHA256 over those 16
//! bytes with the daemon's nonce key. Any replica sharing the store (and
//! so the key) can check one without having issued it. Consuming a nonce
//! inserts it into [`Tree::Nonces`] with an insert-if-absent, so of two
//! concurrent uses exactly one wins, and the mark is on disk before the
//! attestation goes on. The decision the attestation then reaches on a
//! record settles the nonce ([`Consumed::settle`]) in the same transaction
//! as the record's counters and the audit entry. Used nonces are deleted
//! once they could no longer pass the age check (plus a margin against the
//! clock stepping back).

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use snpguard_protocol::attest::NONCE_LEN;
use zeroize::Zeroizing;

use crate::store::{Op, Store, StoreError, Tree};

/// How long a nonce is accepted after it was issued, in seconds, unless
/// the configuration (`[attest] nonce_lifetime_secs`) says otherwise.
pub const NONCE_LIFETIME_SECS: u64 = 120;
/// The longest lifetime the configuration may set, in seconds.
pub const NONCE_MAX_LIFETIME_SECS: u64 = 600;
/// How far in the future an issue time may lie (clock skew between
/// replicas sharing the store), in seconds.
pub const NONCE_MAX_SKEW_SECS: u64 = 30;
/// How long a used nonce is remembered beyond its lifetime, in seconds,
/// so a clock stepped back by up to this much cannot revive it.
pub const NONCE_GC_MARGIN_SECS: u64 = 600;
/// Most used nonces deleted in one garbage collection pass.
const GC_BATCH: usize = 1024;

const MAC_LEN: usize = 16;
const BODY_LEN: usize = NONCE_LEN - MAC_LEN;

/// Why a nonce was refused. The codes are what the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Not issued by this daemon (bad MAC) or issued in the future.
    #[error("the nonce was not issued by this service")]
    Invalid,
    /// Older than the lifetime.
    #[error("the nonce expired {age} s after issue (lifetime {lifetime} s)")]
    Expired {
        /// Its age in seconds.
        age: u64,
        /// The lifetime in force, in seconds.
        lifetime: u64,
    },
    /// Already used once.
    #[error("the nonce was already used")]
    Reused,
}

impl NonceError {
    /// The stable code for the client, the audit trail and the journal.
    pub fn code(&self) -> &'static str {
        match self {
            NonceError::Invalid => "nonce-invalid",
            NonceError::Expired { .. } => "nonce-expired",
            NonceError::Reused => "nonce-reused",
        }
    }
}

/// What an attestation decided with a nonce, stored after the consume
/// time in the nonce's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A key was released.
    Released = 1,
    /// The verified report was refused.
    Refused = 2,
    /// A renewal was stored.
    Renewed = 3,
    /// A signed launch was sent.
    LaunchSent = 4,
}

/// A nonce this attestation consumed: marked used, durably, with the
/// consume time; its outcome is written with the decision.
#[derive(Debug, Clone)]
pub struct Consumed {
    nonce: [u8; NONCE_LEN],
    at: u64,
}

impl Consumed {
    /// The writes that record `outcome` for the nonce, in the transaction
    /// of the decision: the nonce must still hold the mark this attestation
    /// wrote (a nonce collected meanwhile makes the decision conflict, and
    /// nothing is released).
    pub fn settle(&self, outcome: Outcome) -> [Op; 2] {
        let mark = self.at.to_be_bytes().to_vec();
        let mut settled = mark.clone();
        settled.push(outcome as u8);
        [
            Op::expect(Tree::Nonces, self.nonce, Some(mark)),
            Op::put(Tree::Nonces, self.nonce, settled),
        ]
    }
}

/// Issues and checks nonces with the daemon's nonce key.
pub struct Nonces {
    key: Zeroizing<[u8; 32]>,
    lifetime: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8; 32], body: &[u8]) -> Hmac<Sha256> {
    // HMAC pads a key shorter than the hash's block with zeros (RFC 2104),
    // so padding it here is the same HMAC and needs no fallible call.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    let mut m = <Hmac<Sha256> as KeyInit>::new(&hmac::digest::Key::<Hmac<Sha256>>::from(*block));
    m.update(b"snpguard/v1/nonce\0");
    m.update(body);
    m
}

impl Nonces {
    /// Nonces keyed with `key` (the daemon's nonce HMAC key), living
    /// [`NONCE_LIFETIME_SECS`].
    pub fn new(key: &Zeroizing<[u8; 32]>) -> Self {
        Nonces {
            key: key.clone(),
            lifetime: NONCE_LIFETIME_SECS,
        }
    }

    /// The same nonces with a lifetime of `secs`, clamped to
    /// `1..=`[`NONCE_MAX_LIFETIME_SECS`] (the configuration refuses
    /// values outside that range before this is called).
    pub fn with_lifetime(mut self, secs: u64) -> Self {
        self.lifetime = secs.clamp(1, NONCE_MAX_LIFETIME_SECS);
        self
    }

    /// How long a nonce is accepted after issue, in seconds.
    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    /// A fresh nonce issued at `now` (Unix seconds) with `random` bytes.
    pub fn issue(&self, now: u64, random: [u8; 8]) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&now.to_be_bytes());
        n[8..BODY_LEN].copy_from_slice(&random);
        let tag = mac(&self.key, &n[..BODY_LEN]).finalize().into_bytes();
        n[BODY_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        n
    }

    /// Checks the MAC (in constant time) and the age at `now`; returns
    /// the issue time.
    pub fn check(&self, nonce: &[u8; NONCE_LEN], now: u64) -> Result<u64, NonceError> {
        mac(&self.key, &nonce[..BODY_LEN])
            .verify_truncated_left(&nonce[BODY_LEN..])
            .map_err(|_| NonceError::Invalid)?;
        let mut t = [0u8; 8];
        t.copy_from_slice(&nonce[..8]);
        let issued = u64::from_be_bytes(t);
        if issued > now.saturating_add(NONCE_MAX_SKEW_SECS) {
            return Err(NonceError::Invalid);
        }
        let age = now.saturating_sub(issued);
        if age > self.lifetime {
            return Err(NonceError::Expired {
                age,
                lifetime: self.lifetime,
            });
        }
        Ok(issued)
    }

    /// Checks `nonce` at `now` and marks it used, durably; a second use
    /// fails with [`NonceError::Reused`] however the two calls interleave.
    pub fn consume(
        &self,
        store: &dyn Store,
        nonce: &[u8; NONCE_LEN],
        now: u64,
    ) -> Result<Result<Consumed, NonceError>, StoreError> {
        if let Err(e) = self.check(nonce, now) {
            return Ok(Err(e));
        }
        if store.insert_new(Tree::Nonces, nonce, &now.to_be_bytes())? {
            Ok(Ok(Consumed {
                nonce: *nonce,
                at: now,
            }))
        } else {
            Ok(Err(NonceError::Reused))
        }
    }
}

/// Deletes used nonces that can no longer pass [`Nonces::check`] at
/// `now` under any configurable lifetime (issued before `now -`
/// [`NONCE_MAX_LIFETIME_SECS`] `- margin`); returns how many.
pub fn collect_garbage(store: &dyn Store, now: u64) -> Result<usize, StoreError> {
    let cutoff = now.saturating_sub(NONCE_MAX_LIFETIME_SECS + NONCE_GC_MARGIN_SECS);
    let mut removed = 0;
    loop {
        let keys = store.keys_below(Tree::Nonces, &cutoff.to_be_bytes(), GC_BATCH)?;
        if keys.is_empty() {
            return Ok(removed);
        }
        let ops: Vec<_> = keys
            .iter()
            .map(|k| crate::store::Op::delete(Tree::Nonces, k.as_slice()))
            .collect();
        store.transaction(&ops)?;
        removed += keys.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn nonces() -> Nonces {
        Nonces::new(&Zeroizing::new([5u8; 32]))
    }

    #[test]
    fn issued_nonce_checks_within_its_lifetime() {
        let n = nonces().issue(1000, [1; 8]);
        assert_eq!(nonces().check(&n, 1000), Ok(1000));
        assert_eq!(nonces().check(&n, 1000 + NONCE_LIFETIME_SECS), Ok(1000));
        assert_eq!(
            nonces().check(&n, 1001 + NONCE_LIFETIME_SECS),
            Err(NonceError::Expired {
                age: NONCE_LIFETIME_SECS + 1,
                lifetime: NONCE_LIFETIME_SECS,
            })
        );
        // A configured lifetime moves the bound, within its limits.
        let short = nonces().with_lifetime(1);
        assert_eq!(short.check(&n, 1001), Ok(1000));
        assert_eq!(
            short.check(&n, 1002),
            Err(NonceError::Expired {
                age: 2,
                lifetime: 1
            })
        );
        assert_eq!(nonces().with_lifetime(0).lifetime(), 1);
        assert_eq!(
            nonces().with_lifetime(u64::MAX).lifetime(),
            NONCE_MAX_LIFETIME_SECS
        );
    }

    #[test]
    fn tampered_or_foreign_nonce_is_invalid() {
        let n = nonces().issue(1000, [1; 8]);
        for i in [0, 7, 8, 15, 16, 31] {
            let mut bad = n;
            bad[i] ^= 1;
            assert_eq!(nonces().check(&bad, 1000), Err(NonceError::Invalid), "{i}");
        }
        let other = Nonces::new(&Zeroizing::new([6u8; 32]));
        assert_eq!(other.check(&n, 1000), Err(NonceError::Invalid));
        // Issued too far in the future: not ours to accept.
        let future = nonces().issue(1000 + NONCE_MAX_SKEW_SECS + 1, [1; 8]);
        assert_eq!(nonces().check(&future, 1000), Err(NonceError::Invalid));
    }

    #[test]
    fn consume_is_single_use_and_gc_forgets_only_dead_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        let n = nonces();
        let old = n.issue(1000, [1; 8]);
        let fresh = n.issue(2000, [2; 8]);
        let used = n.consume(&store, &old, 1010).unwrap().unwrap();
        assert_eq!(
            n.consume(&store, &old, 1011).unwrap().unwrap_err(),
            NonceError::Reused
        );
        // Settled with its decision: still used; settled twice: a conflict.
        store.transaction(&used.settle(Outcome::Released)).unwrap();
        assert_eq!(
            store.get(Tree::Nonces, &old).unwrap(),
            Some([&1010u64.to_be_bytes()[..], &[1]].concat())
        );
        assert!(matches!(
            store.transaction(&used.settle(Outcome::Refused)),
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(
            n.consume(&store, &old, 1012).unwrap().unwrap_err(),
            NonceError::Reused
        );
        n.consume(&store, &fresh, 2000).unwrap().unwrap();
        let now = 1001 + NONCE_MAX_LIFETIME_SECS + NONCE_GC_MARGIN_SECS;
        assert_eq!(collect_garbage(&store, now).unwrap(), 1);
        assert_eq!(store.get(Tree::Nonces, &old).unwrap(), None);
        assert!(store.get(Tree::Nonces, &fresh).unwrap().is_some());
    }
}
