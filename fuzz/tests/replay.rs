//! Replays every fuzz target on stable, in `cargo test --workspace` (so
//! `make test`): over its generated seeds, over `corpus/<target>/` when a
//! fuzzing run left one, and over every crash reproducer checked in under
//! `regressions/<target>/`. A violated property panics, naming the input.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use snpguard_fuzz::{Target, TARGETS};

/// The inputs of a directory, in name order; none when it is absent.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs `t` on every input; returns how many ran. Each failure is named.
fn replay(t: &Target, what: &str, inputs: &[(String, Vec<u8>)]) -> usize {
    let mut failed = Vec::new();
    for (name, data) in inputs {
        if catch_unwind(AssertUnwindSafe(|| (t.run)(data))).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "{}: {what}: {} input(s) violate a property: {}",
        t.name,
        failed.len(),
        failed.join(", ")
    );
    inputs.len()
}

fn dir(sub: &str, t: &Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(sub).join(t.name)
}

fn run(name: &str) {
    let t = TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let seeds: Vec<(String, Vec<u8>)> = (t.seeds)()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("seed {i}"), s))
        .collect();
    let named = |d: Vec<(PathBuf, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        d.into_iter()
            .map(|(p, b)| (p.display().to_string(), b))
            .collect()
    };
    let n = replay(t, "seeds", &seeds)
        + replay(t, "regressions", &named(inputs(&dir("regressions", t))))
        + replay(t, "corpus", &named(inputs(&dir("corpus", t))));
    assert!(
        n > 0 || snpguard_testkit::testdata::skip_requested(),
        "{name}: nothing was replayed"
    );
    assert!(
        snpguard_fuzz::reached_count(name) > 0 || snpguard_testkit::testdata::skip_requested(),
        "{name}: no seed got past refusal to the property checks"
    );
}

#[test]
fn every_target_has_a_replay_test_and_a_fuzz_binary() {
    let src = include_str!("replay.rs");
    for t in TARGETS {
        assert!(
            src.contains(&format!("run(\"{}\")", t.name)),
            "{}: no test below",
            t.name
        );
        let bin = dir("fuzz_targets", t).with_extension("rs");
        assert!(bin.is_file(), "{} is missing", bin.display());
        if let Some(d) = t.dict {
            let dict = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("dict/{d}.dict"));
            assert!(dict.is_file(), "{} is missing", dict.display());
        }
    }
}

#[test]
fn report() {
    run("report");
}

#[test]
fn report_mutation() {
    run("report_mutation");
}

#[test]
fn cert_table() {
    run("cert_table");
}

#[test]
fn tsm_json() {
    run("tsm_json");
}

#[test]
fn cert_parse() {
    run("cert_parse");
}

#[test]
fn cert_import() {
    run("cert_import");
}

#[test]
fn crl() {
    run("crl");
}

#[test]
fn sealed_box() {
    run("sealed_box");
}

#[test]
fn nonce_base64() {
    run("nonce_base64");
}

#[test]
fn attest_request() {
    run("attest_request");
}

#[test]
fn attest_response() {
    run("attest_response");
}

#[test]
fn tsm_reader() {
    run("tsm_reader");
}

#[test]
fn renew_response() {
    run("renew_response");
}

#[test]
fn signed_launch_response() {
    run("signed_launch_response");
}

#[test]
fn renew_leading_nonce() {
    run("renew_leading_nonce");
}

#[test]
fn renew_request() {
    run("renew_request");
}

#[test]
fn bundle_extract() {
    run("bundle_extract");
}

#[test]
fn ovmf_metadata() {
    run("ovmf_metadata");
}

#[test]
fn luks2_header() {
    run("luks2_header");
}

#[test]
fn agent_config() {
    run("agent_config");
}

#[test]
fn sfdisk_rewrite() {
    run("sfdisk_rewrite");
}

#[test]
fn initrd() {
    run("initrd");
}

#[test]
fn register_options() {
    run("register_options");
}
