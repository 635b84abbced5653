//! The attestation audit trail: one entry per attestation, accepted or
//! refused, in [`Tree::Audit`] keyed by a big-endian sequence number and
//! bounded to the last [`AUDIT_CAPACITY`] entries. Entries carry what an
//! operator needs to tell why (codes, the precise reason, the report
//! fields that matter) and never key material.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::{Op, Store, StoreError, Tree, CONFLICT_RETRIES};

/// Entries kept; older ones are deleted as new ones arrive.
pub const AUDIT_CAPACITY: u64 = 10_000;
/// Refusals decided before signature verification kept in memory.
pub const UNVERIFIED_CAPACITY: usize = 1024;

/// One attestation as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The client's address.
    pub peer: String,
    /// The record the report named, when one matched.
    pub record: Option<String>,
    /// The launch of the record the report's measurement is, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<String>,
    /// `ok`, `renewal-stored` (a renewal added or found a pending
    /// launch), or the headline reason code of the refusal.
    pub result: String,
    /// Every reason code (empty on success).
    pub codes: Vec<String>,
    /// The precise reason, as the journal has it (empty on success).
    pub detail: String,
    /// MEASUREMENT of the report (hex), when it parsed.
    pub measurement: Option<String>,
    /// REPORTED_TCB of the report (raw TCB_VERSION, hex), when it parsed.
    pub reported_tcb: Option<String>,
    /// First 8 bytes of CHIP_ID (hex), when the report parsed.
    pub chip_id_prefix: Option<String>,
    /// Where the endorsement certificate came from (`table`, `imported`,
    /// `kds-cache`, `kds`), when known.
    pub cert_source: Option<String>,
    /// Accepted-but-notable facts (test root, provisional firmware).
    pub notes: Vec<String>,
}

/// The sequence number after the trail's last entry.
fn next_after(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(match store.last(Tree::Audit)? {
        Some((k, _)) => <[u8; 8]>::try_from(k.as_slice())
            .map(|b| u64::from_be_bytes(b).saturating_add(1))
            .unwrap_or(0),
        None => 0,
    })
}

/// Appends entries and trims the trail.
#[derive(Debug)]
pub struct AuditLog {
    /// The next sequence number; the lock also orders appends.
    next: Mutex<u64>,
}

impl AuditLog {
    /// Opens the trail, continuing after its last entry.
    pub fn open(store: &dyn Store) -> Result<AuditLog, StoreError> {
        Ok(AuditLog {
            next: Mutex::new(next_after(store)?),
        })
    }

    /// Appends `entry` and deletes the entries beyond the capacity, in one
    /// transaction, deferred: durable within the store's flush interval
    /// (a crash may lose the last moments of the trail, never a nonce's
    /// used state, which is flushed before any key is released).
    pub fn append(&self, store: &dyn Store, entry: &AuditEntry) -> Result<(), StoreError> {
        let value = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Backend(format!("encoding an audit entry: {e}")))?;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let mut attempt = 0;
        loop {
            let seq = *next;
            let keep_from = (seq + 1).saturating_sub(AUDIT_CAPACITY);
            let mut ops: Vec<Op> = store
                .keys_below(Tree::Audit, &keep_from.to_be_bytes(), 256)?
                .into_iter()
                .map(|k| Op::delete(Tree::Audit, k))
                .collect();
            // Replicas on one database append to one trail: a sequence
            // number another replica took meanwhile is never overwritten.
            ops.push(Op::expect(Tree::Audit, seq.to_be_bytes(), None));
            ops.push(Op::put(Tree::Audit, seq.to_be_bytes(), value.clone()));
            match store.transaction_deferred(&ops) {
                Ok(()) => {
                    *next = seq + 1;
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    *next = next_after(store)?.max(seq + 1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last `n` entries, oldest first.
    pub fn recent(&self, store: &dyn Store, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        recent(store, n)
    }
}

/// Refusals decided before a report's signature was verified (bad nonce,
/// unknown image, chain or signature failure): anyone who can reach the
/// HTTPS endpoint can cause them, so they neither touch a record's
/// counters nor the audit trail (which they could otherwise flood), but
/// go to this ring of the last [`UNVERIFIED_CAPACITY`], in memory (lost at
/// a restart; the journal has every one).
#[derive(Debug, Default)]
pub struct UnverifiedLog {
    ring: Mutex<VecDeque<AuditEntry>>,
}

impl UnverifiedLog {
    /// Adds `entry`, dropping the oldest beyond the capacity.
    pub fn push(&self, entry: AuditEntry) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= UNVERIFIED_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The last `n` entries, oldest first.
    pub fn recent(&self, n: usize) -> Vec<AuditEntry> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let skip = ring.len().saturating_sub(n);
        ring.iter().skip(skip).cloned().collect()
    }
}

/// The last `n` entries of the trail in `store`, oldest first (for
/// readers without the [`AuditLog`], e.g. the management API).
pub fn recent(store: &dyn Store, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let all = store.entries(Tree::Audit)?;
    let skip = all.len().saturating_sub(n);
    Ok(all
        .into_iter()
        .skip(skip)
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            launch: None,
            time: format!("t{i}"),
            peer: "127.0.0.1".into(),
            record: None,
            result: "ok".into(),
            codes: vec![],
            detail: String::new(),
            measurement: None,
            reported_tcb: None,
            chip_id_prefix: None,
            cert_source: None,
            notes: vec![],
        }
    }

    #[test]
    fn unverified_ring_keeps_the_last_entries() {
        let ring = UnverifiedLog::default();
        assert!(ring.recent(10).is_empty());
        for i in 0..UNVERIFIED_CAPACITY + 5 {
            ring.push(entry(i));
        }
        let all = ring.recent(usize::MAX);
        assert_eq!(all.len(), UNVERIFIED_CAPACITY);
        assert_eq!(all[0].time, "t5");
        let last: Vec<_> = ring.recent(2).into_iter().map(|e| e.time).collect();
        assert_eq!(
            last,
            [
                format!("t{}", UNVERIFIED_CAPACITY + 3),
                format!("t{}", UNVERIFIED_CAPACITY + 4)
            ]
        );
    }

    #[test]
    fn trail_is_bounded_and_continues_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        {
            // Pretend the trail is nearly full without writing 10,000 entries.
            store
                .put(
                    Tree::Audit,
                    &0u64.to_be_bytes(),
                    &serde_json::to_vec(&entry(0)).unwrap(),
                )
                .unwrap();
            store
                .put(
                    Tree::Audit,
                    &(AUDIT_CAPACITY - 2).to_be_bytes(),
                    &serde_json::to_vec(&entry(1)).unwrap(),
                )
                .unwrap();
            let log = AuditLog::open(&store).unwrap();
            log.append(&store, &entry(2)).unwrap();
            // Sequence AUDIT_CAPACITY - 1: entry 0 is still inside the window.
            assert_eq!(store.entries(Tree::Audit).unwrap().len(), 3);
        }
        // A restarted daemon continues after the last entry.
        let log = AuditLog::open(&store).unwrap();
        log.append(&store, &entry(3)).unwrap();
        let recent = log.recent(&store, 10).unwrap();
        let times: Vec<_> = recent.iter().map(|e| e.time.as_str()).collect();
        assert_eq!(times, ["t1", "t2", "t3"]);
    }
}
