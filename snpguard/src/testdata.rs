//! Locating the real AMD test vectors (`../shared/testdata/snp`) for tests
//! and benchmarks. Not used by production code paths.
//!
//! The directory comes from `SNPGUARD_TESTDATA`, else the default
//! `../shared/testdata/snp` next to the repository checkout. When it is
//! missing, tests skip with a message, except under `CI=true`, where a
//! missing data set is a failure: CI must never pass by testing nothing.

use std::path::PathBuf;

/// The test-data directory, or `None` (after printing why) when it is
/// absent outside CI.
///
/// # Panics
/// When the directory is absent and `CI=true`.
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
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("skipping: {msg}");
    None
}

/// Reads a file below the test-data directory; `None` when the data set is
/// absent outside CI.
///
/// # Panics
/// When the data set exists but the file cannot be read, or as [`dir`].
pub fn read(rel: &str) -> Option<Vec<u8>> {
    let path = dir()?.join(rel);
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}
