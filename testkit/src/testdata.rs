//! Locating the real AMD test vectors (`../shared/testdata/snp`) for tests
//! and benchmarks. Not used by production code paths.
//!
//! The directory comes from `SNPGUARD_TESTDATA`, else the default
//! `../shared/testdata/snp` next to the repository checkout. When it is
//! missing, every test that needs it fails with a message saying where it
//! looked: a suite must never pass by testing nothing. Only an explicit
//! `SNPGUARD_SKIP_TESTDATA=1` turns that into a skip (for a checkout
//! without the data set, on purpose).

use std::path::PathBuf;

/// The test-data directory, or `None` (after printing why) when it is
/// absent and `SNPGUARD_SKIP_TESTDATA=1` asks to skip.
///
/// # Panics
/// When the directory is absent and skipping was not asked for.
pub fn dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SNPGUARD_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/snp"),
    };
    if dir.join("README.md").is_file() {
        return Some(dir);
    }
    let msg = format!(
        "SNP test data not found at {} (set SNPGUARD_TESTDATA)",
        dir.display()
    );
    if skip_requested() {
        eprintln!("skipping (SNPGUARD_SKIP_TESTDATA=1): {msg}");
        return None;
    }
    panic!("{msg}; set SNPGUARD_SKIP_TESTDATA=1 to skip the tests that need it instead");
}

/// Whether `SNPGUARD_SKIP_TESTDATA=1` asks tests to skip when the data set
/// is missing.
pub fn skip_requested() -> bool {
    std::env::var("SNPGUARD_SKIP_TESTDATA").is_ok_and(|v| v == "1")
}

/// Reads a file below the test-data directory; `None` when the data set is
/// absent and skipping was asked for.
///
/// # Panics
/// When the data set exists but the file cannot be read, or as [`dir`].
pub fn read(rel: &str) -> Option<Vec<u8>> {
    let path = dir()?.join(rel);
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}
