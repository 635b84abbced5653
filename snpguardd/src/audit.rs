//! The attestation audit trail: one entry per attestation, accepted or
//! refused, in [`Tree::Audit`] keyed by a big-endian sequence number and
//! bounded to the last [`AUDIT_CAPACITY`] entries. Entries carry what an
//! operator needs to tell why (codes, the precise reason, the report
//! fields that matter) and never key material.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::{Op, Store, StoreError, Tree};

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

    /// The writes that append `entry` and delete the entries beyond the
    /// capacity, for the caller to commit in the transaction of the
    /// decision the entry records (see [`crate::registry::Companion`]).
    /// The sequence number is reserved at once; `first` is false when the
    /// caller's previous attempt conflicted, and then the number is taken
    /// after the trail's last entry as stored now (another replica may
    /// have appended). Callers stage under the registry's commit lock, so
    /// this daemon's attempts never race each other; a number reserved by
    /// an attempt that failed otherwise leaves a gap, which readers skip.
    pub fn stage(
        &self,
        store: &dyn Store,
        entry: &AuditEntry,
        first: bool,
    ) -> Result<Vec<Op>, StoreError> {
        let value = serde_json::to_vec(entry)
            .map_err(|e| StoreError::Backend(format!("encoding an audit entry: {e}")))?;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if !first {
            *next = next_after(store)?;
        }
        let seq = *next;
        *next = seq.saturating_add(1);
        drop(next);
        let keep_from = (seq + 1).saturating_sub(AUDIT_CAPACITY);
        let mut ops: Vec<Op> = store
            .keys_below(Tree::Audit, &keep_from.to_be_bytes(), 256)?
            .into_iter()
            .map(|k| Op::delete(Tree::Audit, k))
            .collect();
        // Replicas on one database append to one trail: a sequence number
        // another replica took meanwhile is never overwritten.
        ops.push(Op::expect(Tree::Audit, seq.to_be_bytes(), None));
        ops.push(Op::put(Tree::Audit, seq.to_be_bytes(), value));
        Ok(ops)
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
            let ops = log.stage(&store, &entry(2), true).unwrap();
            store.transaction(&ops).unwrap();
            // Sequence AUDIT_CAPACITY - 1: entry 0 is still inside the window.
            assert_eq!(store.entries(Tree::Audit).unwrap().len(), 3);
        }
        // A restarted daemon continues after the last entry.
        let log = AuditLog::open(&store).unwrap();
        // An attempt that conflicted: the retry takes the number after the
        // stored trail's end again, so no gap is left.
        let _lost = log.stage(&store, &entry(9), true).unwrap();
        let ops = log.stage(&store, &entry(3), false).unwrap();
        store.transaction(&ops).unwrap();
        let recent = log.recent(&store, 10).unwrap();
        let times: Vec<_> = recent.iter().map(|e| e.time.as_str()).collect();
        assert_eq!(times, ["t1", "t2", "t3"]);
    }
}
