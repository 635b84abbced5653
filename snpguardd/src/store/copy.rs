//! Copying one store into another (`snpguardd migrate-store`): every tree
//! entry by entry in bounded transactions, into a target that must hold
//! nothing yet, then a comparison of both.

use super::{Op, Store, StoreError, Tree};

/// Most entries per transaction of a copy.
const BATCH_ENTRIES: usize = 256;
/// Most value bytes per transaction of a copy.
const BATCH_BYTES: usize = 8 << 20;

/// What was copied, per tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopySummary {
    /// `(tree name, entries)` in [`Tree::ALL`] order.
    pub trees: Vec<(&'static str, usize)>,
}

/// Why a copy was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds data.
    #[error(
        "the target database is not empty (its {0} tree has entries); migrate into a new, empty \
         database"
    )]
    NotEmpty(&'static str),
    /// The two stores are at different schema versions.
    #[error("the stores have schema versions {from} and {to}; upgrade both to one snpguardd")]
    Schema {
        /// The source's version.
        from: u32,
        /// The target's version.
        to: u32,
    },
    /// After the copy, a tree differs.
    #[error("after the copy the {0} tree differs between the two stores; the target is unusable")]
    Differs(&'static str),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every tree of `from` except [`Tree::Meta`] (the target keeps
/// its own schema version, which must equal the source's) and
/// [`Tree::Blobs`] when `skip_blobs` (the caller shares blobs itself),
/// then compares the two.
pub fn copy_store(from: &dyn Store, to: &dyn Store) -> Result<CopySummary, CopyError> {
    let (vf, vt) = (
        super::schema::schema_version(from)?,
        super::schema::schema_version(to)?,
    );
    if vf != vt {
        return Err(CopyError::Schema { from: vf, to: vt });
    }
    for tree in Tree::ALL {
        if tree != Tree::Meta && to.last(tree)?.is_some() {
            return Err(CopyError::NotEmpty(tree.name()));
        }
    }
    let mut summary = CopySummary::default();
    for tree in Tree::ALL {
        if tree == Tree::Meta {
            continue;
        }
        let entries = from.entries(tree)?;
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (k, v) in &entries {
            bytes += v.len();
            ops.push(Op::put(tree, k.clone(), v.clone()));
            if ops.len() >= BATCH_ENTRIES || bytes >= BATCH_BYTES {
                to.transaction(&ops)?;
                ops.clear();
                bytes = 0;
            }
        }
        if !ops.is_empty() {
            to.transaction(&ops)?;
        }
        summary.trees.push((tree.name(), entries.len()));
    }
    for tree in Tree::ALL {
        if from.entries(tree)? != to.entries(tree)? {
            return Err(CopyError::Differs(tree.name()));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn copies_every_tree_into_an_empty_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = SledStore::open(&dir.path().join("a")).unwrap();
        let b = SledStore::open(&dir.path().join("b")).unwrap();
        for i in 0..600u32 {
            a.put(Tree::Nonces, &i.to_be_bytes(), b"t").unwrap();
        }
        a.put(Tree::Records, b"r", b"record").unwrap();
        a.put(Tree::Secrets, b"vmk/r", &[7u8; 100]).unwrap();
        let summary = copy_store(&a, &b).unwrap();
        assert!(summary.trees.contains(&("nonces", 600)));
        assert!(summary.trees.contains(&("records", 1)));
        assert_eq!(
            b.get(Tree::Secrets, b"vmk/r").unwrap(),
            Some(vec![7u8; 100])
        );
        let err = copy_store(&a, &b).unwrap_err();
        assert!(matches!(err, CopyError::NotEmpty("records")), "{err}");
    }
}
