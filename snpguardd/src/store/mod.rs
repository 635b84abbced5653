//! Persistent storage: a small key-value [`Store`] trait over named trees,
//! with atomic multi-tree transactions, and its sled implementation.
//!
//! Every mutation is durable (flushed to disk) before the call returns, so
//! a caller that hears "done" can tell the client "done". The database
//! carries a schema version in the [`Tree::Meta`] tree; opening runs the
//! migrations from an older version and refuses a newer one.

mod copy;
mod pg_store;
mod schema;
mod sled_store;

pub use copy::{copy_store, CopyError, CopySummary};
pub use pg_store::{read_password, round_trips, PgOptions, PgStore};
pub use schema::{migrate, Migration, SCHEMA_VERSION, SCHEMA_VERSION_KEY};
pub use sled_store::SledStore;

/// The trees of the store. Each holds one kind of value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree {
    /// Store metadata: the schema version, the master key check value.
    Meta,
    /// Records by id (serialized record values).
    Records,
    /// Record ids by name (the uniqueness index).
    Names,
    /// Per-record secrets sealed with the master key (VMKs, ID keys).
    Secrets,
    /// The daemon's own key material, sealed with the master key.
    Keys,
    /// Used attestation nonces, keyed by the nonce (whose first 8 bytes
    /// are its issue time, big-endian, so keys sort by age).
    Nonces,
    /// Certificates held by the daemon: operator imports and VCEKs
    /// cached from AMD KDS (see [`crate::attest`]).
    Certs,
    /// The attestation audit trail, keyed by a big-endian sequence number.
    Audit,
    /// Kernel, initrd and firmware blobs in chunks, when the store is
    /// shared by replicas (`m/<sha256>` manifests, `c/<sha256>/<index>`
    /// chunks); empty on a single host, where blobs are files.
    Blobs,
}

impl Tree {
    /// Every tree, in a fixed order.
    pub const ALL: [Tree; 9] = [
        Tree::Meta,
        Tree::Records,
        Tree::Names,
        Tree::Secrets,
        Tree::Keys,
        Tree::Nonces,
        Tree::Certs,
        Tree::Audit,
        Tree::Blobs,
    ];

    /// The tree's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Records => "records",
            Tree::Names => "names",
            Tree::Secrets => "secrets",
            Tree::Keys => "keys",
            Tree::Nonces => "nonces",
            Tree::Certs => "certs",
            Tree::Audit => "audit",
            Tree::Blobs => "blobs",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Tree::Meta => 0,
            Tree::Records => 1,
            Tree::Names => 2,
            Tree::Secrets => 3,
            Tree::Keys => 4,
            Tree::Nonces => 5,
            Tree::Certs => 6,
            Tree::Audit => 7,
            Tree::Blobs => 8,
        }
    }
}

/// One mutation of a [`Store::transaction`].
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` in `tree` to `value`.
    Put {
        /// The tree.
        tree: Tree,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key` from `tree` (no error when absent).
    Delete {
        /// The tree.
        tree: Tree,
        /// The key.
        key: Vec<u8>,
    },
    /// A precondition: `key` in `tree` holds `value` (`None`: is absent)
    /// when the transaction commits, else nothing is applied and the
    /// transaction fails with [`StoreError::Conflict`]. This is how a
    /// read-modify-write stays correct when several daemons share one
    /// database: read, compute, commit expecting what was read, and start
    /// again on a conflict.
    Expect {
        /// The tree.
        tree: Tree,
        /// The key.
        key: Vec<u8>,
        /// The value that must be there, or `None` for "absent".
        value: Option<Vec<u8>>,
    },
}

// Values may be sealed secrets; keep them out of logs all the same.
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put { tree, key, value } => f
                .debug_struct("Put")
                .field("tree", tree)
                .field("key", &String::from_utf8_lossy(key))
                .field("value_len", &value.len())
                .finish(),
            Op::Delete { tree, key } => f
                .debug_struct("Delete")
                .field("tree", tree)
                .field("key", &String::from_utf8_lossy(key))
                .finish(),
            Op::Expect { tree, key, value } => f
                .debug_struct("Expect")
                .field("tree", tree)
                .field("key", &String::from_utf8_lossy(key))
                .field("value_len", &value.as_ref().map(Vec::len))
                .finish(),
        }
    }
}

impl Op {
    /// A put.
    pub fn put(tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            tree,
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete.
    pub fn delete(tree: Tree, key: impl Into<Vec<u8>>) -> Op {
        Op::Delete {
            tree,
            key: key.into(),
        }
    }

    /// A precondition: `key` holds `value` (`None`: is absent).
    pub fn expect(tree: Tree, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) -> Op {
        Op::Expect {
            tree,
            key: key.into(),
            value,
        }
    }
}

/// How many times a read-modify-write is started again after a
/// [`StoreError::Conflict`] before the conflict is reported. Conflicts
/// only happen when another daemon on the same database changed the same
/// entry in between, so a handful is plenty.
pub const CONFLICT_RETRIES: usize = 16;

/// Why a store operation failed. A failed mutation had no effect.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the database at {path}: {error}")]
    Open {
        /// The database directory.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// The database engine failed.
    #[error("database error: {0}")]
    Backend(String),
    /// The database cannot be reached (down, restarting, network). Nothing
    /// was changed; the same call may succeed once it is back.
    #[error(
        "the database is unavailable ({0}); snpguardd keeps running and reconnects by itself \
         once it is reachable again"
    )]
    Unavailable(String),
    /// An [`Op::Expect`] precondition did not hold: another writer changed
    /// the entry first. Nothing was applied.
    #[error(
        "the {tree} entry {key} was changed by another writer at the same time; nothing was \
         changed, try again"
    )]
    Conflict {
        /// The tree's name.
        tree: &'static str,
        /// The key (lossy UTF-8).
        key: String,
    },
    /// The database was written by a newer snpguardd.
    #[error(
        "the database has schema version {found}, newer than the {supported} this snpguardd \
         supports; run the newer snpguardd or restore a backup of the state directory"
    )]
    NewerSchema {
        /// The version in the database.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The schema version entry is not a version number.
    #[error("the database's schema version entry is corrupt ({len} bytes); restore a backup")]
    CorruptSchemaVersion {
        /// Its length in bytes.
        len: usize,
    },
    /// A migration step failed; the database is still at `from`.
    #[error("migrating the database from schema version {from}: {error}")]
    Migration {
        /// The version the step started from.
        from: u32,
        /// What went wrong.
        error: String,
    },
}

/// One `(key, value)` pair of a tree.
pub type Entry = (Vec<u8>, Vec<u8>);
/// The entries of a tree: `(key, value)` pairs in key order.
pub type Entries = Vec<Entry>;

/// Milliseconds within which a deferred write reaches the disk at the latest
/// (sled's periodic flush; any later flushed write also carries it).
pub const DEFERRED_FLUSH_MS: u64 = 500;

/// A key-value store of named trees. Implementations are thread-safe and
/// every successful mutation is on disk before it returns, except those of
/// [`Store::transaction_deferred`].
pub trait Store: Send + Sync {
    /// The value of `key` in `tree`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets one value (durably).
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.transaction(&[Op::put(tree, key, value)])
    }
    /// Removes one key (durably); no error when it is absent.
    fn delete(&self, tree: Tree, key: &[u8]) -> Result<(), StoreError> {
        self.transaction(&[Op::delete(tree, key)])
    }
    /// Every entry of `tree`, in key order.
    fn entries(&self, tree: Tree) -> Result<Entries, StoreError>;
    /// Applies all `ops` atomically (all or none, also across a crash),
    /// then flushes.
    fn transaction(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Applies all `ops` atomically like [`Store::transaction`] (readers
    /// see them at once; a crash keeps all or none) without waiting for
    /// the disk: they are durable after the next flush — of any later
    /// write, [`Store::flush`], or the periodic one within
    /// [`DEFERRED_FLUSH_MS`]. For data a crash may lose the last moments
    /// of (attestation counters, the audit trail); never for data a
    /// security decision rests on.
    fn transaction_deferred(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Whether concurrent [`Store::flush`] calls share one disk sync
    /// (group commit). Then a caller that decides under a lock applies its
    /// transaction with [`Store::transaction_deferred`] under the lock and
    /// flushes after releasing it, so concurrent decisions share the sync;
    /// otherwise it commits with [`Store::transaction`] (one round trip).
    fn flush_is_grouped(&self) -> bool {
        false
    }
    /// Sets `key` to `value` only if `key` is absent, atomically with
    /// respect to every other writer (then flushes). Returns whether it
    /// was inserted; `false` means the key was already present and
    /// nothing changed.
    fn insert_new(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<bool, StoreError>;
    /// Up to `limit` keys of `tree` below `end` (exclusive), in key order.
    fn keys_below(&self, tree: Tree, end: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The entry with the greatest key of `tree`, if any.
    fn last(&self, tree: Tree) -> Result<Option<Entry>, StoreError>;
    /// Whether other daemons share this store (then blobs live in it too,
    /// see [`Tree::Blobs`]).
    fn shared(&self) -> bool {
        false
    }
    /// For a shared store: a feed of the records written by any daemon
    /// (this one included), so that each can publish them on its own bus.
    /// `None` when nobody else writes the store.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<StoreChange>> {
        None
    }
}

/// A change to a shared store, from [`Store::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// The record with this id was written or removed.
    Record(String),
    /// A certificate or CRL was stored or removed (an import, a removal,
    /// a VCEK or CRL cached from KDS).
    Certificates,
    /// Changes may have been missed (the feed started or reconnected):
    /// reload every record.
    Resync,
}
