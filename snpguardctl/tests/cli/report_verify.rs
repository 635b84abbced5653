//! `snpguardctl report verify` on the real AMD reports in the shared test
//! data: each is accepted with the right flags, and each rule that can be
//! broken without re-signing (expectations, certificates, time, flags) is
//! broken exactly once and must give exactly that rejection.
//! Rules that need a modified report re-signed by a simulated platform are
//! tested in the library (snpguard/tests/core/verify_rules.rs).

use std::path::PathBuf;
use std::process::{Command, Output};

use snpguard_testkit::testdata;

const BIN: &str = env!("CARGO_BIN_EXE_snpguardctl");
/// Before the VLEK certificate expired (2025-12-10).
const VLEK_TIME: &str = "2025-01-01T00:00:00Z";

fn td() -> Option<PathBuf> {
    testdata::dir()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running snpguardctl")
}

fn report(td: &std::path::Path, name: &str) -> String {
    td.join("reports")
        .join(name)
        .join("report.bin")
        .display()
        .to_string()
}

fn key(td: &std::path::Path, name: &str) -> String {
    let dir = td.join("reports").join(name);
    let f = if dir.join("vlek.der").exists() {
        "vlek.der"
    } else {
        "vcek.der"
    };
    dir.join(f).display().to_string()
}

/// The flags with which each real report is accepted.
fn accepted_args(td: &std::path::Path, name: &str) -> Vec<String> {
    let mut a = vec![
        "report".into(),
        "verify".into(),
        "--report".into(),
        report(td, name),
    ];
    if name == "milan-trustee-vlek" {
        a.extend([
            "--vlek".into(),
            key(td, name),
            "--certs".into(),
            td.join("amd/milan").display().to_string(),
            "--at".into(),
            VLEK_TIME.into(),
            "--vmpl".into(),
            "1".into(),
        ]);
    } else {
        a.extend(["--vcek".into(), key(td, name)]);
    }
    if name == "milan-gosevguest" {
        a.push("--allow-debug".into());
    }
    a.push("--allow-smt".into());
    a
}

const ALL: &[&str] = &[
    "genoa-oak",
    "milan-gosevguest",
    "milan-trustee",
    "milan-trustee-vlek",
    "milan-virtee",
    "turin-oak",
];

fn check_accepted(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: expected acceptance, got {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts exit 1 and that the one stderr line names `rule`.
fn check_rejected(out: &Output, rule: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected rejection, stderr: {err}"
    );
    let line = err.lines().next().unwrap_or("");
    assert!(
        line.starts_with("rejected: ") && line.contains(rule),
        "{what}: expected 'rejected: ...{rule}...', got {err:?}"
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: one line on stderr, got {err:?}"
    );
}

fn with(base: &[String], extra: &[&str]) -> Vec<String> {
    let mut v = base.to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_s(args: &[String]) -> Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a)
}

#[test]
fn every_real_report_is_accepted_with_the_right_flags() {
    let Some(td) = td() else { return };
    for name in ALL {
        let out = run_s(&accepted_args(&td, name));
        check_accepted(&out, name);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("accepted: "), "{name}: {stdout}");
    }
}

#[test]
fn products_are_derived() {
    let Some(td) = td() else { return };
    for (name, product) in [
        ("genoa-oak", "genoa"),
        ("milan-virtee", "milan"),
        ("turin-oak", "turin"),
        ("milan-trustee-vlek", "milan"),
    ] {
        let out = run_s(&with(&accepted_args(&td, name), &["--json"]));
        check_accepted(&out, name);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["accepted"], true);
        assert_eq!(v["product"], product, "{name}");
    }
}

#[test]
fn debug_policy_needs_allow_debug() {
    let Some(td) = td() else { return };
    let args: Vec<String> = accepted_args(&td, "milan-gosevguest")
        .into_iter()
        .filter(|a| a != "--allow-debug")
        .collect();
    check_rejected(
        &run_s(&args),
        "policy allows debug",
        "gosevguest without --allow-debug",
    );
}

#[test]
fn smt_policy_needs_allow_smt() {
    let Some(td) = td() else { return };
    let args: Vec<String> = accepted_args(&td, "milan-virtee")
        .into_iter()
        .filter(|a| a != "--allow-smt")
        .collect();
    check_rejected(
        &run_s(&args),
        "policy allows SMT",
        "virtee without --allow-smt",
    );
}

#[test]
fn vlek_report_needs_vmpl_1_and_a_time_before_expiry() {
    let Some(td) = td() else { return };
    let base = accepted_args(&td, "milan-trustee-vlek");
    // Default vmpl 0.
    let no_vmpl: Vec<String> = {
        let i = base.iter().position(|a| a == "--vmpl").expect("has --vmpl");
        let mut v = base.clone();
        v.drain(i..i + 2);
        v
    };
    check_rejected(&run_s(&no_vmpl), "vmpl mismatch", "vlek at vmpl 0");
    // Today: expired.
    let now: Vec<String> = {
        let i = base.iter().position(|a| a == "--at").expect("has --at");
        let mut v = base.clone();
        v.drain(i..i + 2);
        v
    };
    let out = run_s(&now);
    check_rejected(&out, "expired", "vlek today");
    // Without the ASVK the chain cannot be built.
    let no_asvk: Vec<String> = {
        let i = base
            .iter()
            .position(|a| a == "--certs")
            .expect("has --certs");
        let mut v = base.clone();
        v.drain(i..i + 2);
        v
    };
    let out = run_s(&no_asvk);
    check_rejected(&out, "ASVK", "vlek without asvk");
}

#[test]
fn expected_values_must_match() {
    let Some(td) = td() else { return };
    let name = "milan-trustee";
    let bytes = std::fs::read(report(&td, name)).expect("report");
    let base = accepted_args(&td, name);
    let field = |off: usize, len: usize| bytes[off..off + len].to_vec();
    let flipped = |mut v: Vec<u8>| {
        let last = v.len() - 1;
        v[last] ^= 1;
        hex::encode(v)
    };
    for (flag, off, len, rule) in [
        ("--measurement", 0x90, 48, "measurement mismatch"),
        ("--report-data", 0x50, 64, "report_data mismatch"),
        ("--host-data", 0xC0, 32, "host_data mismatch"),
        ("--id-key-digest", 0xE0, 48, "id key digest mismatch"),
    ] {
        let right = hex::encode(field(off, len));
        check_accepted(&run_s(&with(&base, &[flag, &right])), flag);
        let wrong = flipped(field(off, len));
        check_rejected(&run_s(&with(&base, &[flag, &wrong])), rule, flag);
    }
    // No author key signed this report's ID key: any expected author digest fails.
    let any = hex::encode([0x11u8; 48]);
    check_rejected(
        &run_s(&with(&base, &["--author-key-digest", &any])),
        "author key digest mismatch",
        "author key",
    );
}

#[test]
fn tcb_minimums() {
    let Some(td) = td() else { return };
    // milan-virtee reported TCB: bl=3 tee=0 snp=8 ucode=115.
    let base = accepted_args(&td, "milan-virtee");
    check_accepted(
        &run_s(&with(&base, &["--min-tcb", "bl=3,tee=0,snp=8,ucode=115"])),
        "equal",
    );
    for (spec, comp) in [
        ("bl=4,tee=0,snp=8,ucode=115", "bl is 3"),
        ("bl=3,tee=1,snp=8,ucode=115", "tee is 0"),
        ("bl=3,tee=0,snp=9,ucode=115", "snp is 8"),
        ("bl=3,tee=0,snp=8,ucode=116", "ucode is 115"),
    ] {
        let out = run_s(&with(&base, &["--min-tcb", spec]));
        check_rejected(&out, "tcb below minimum", spec);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(comp),
            "{spec}"
        );
    }
    // Turin: fmc is a component.
    let base = accepted_args(&td, "turin-oak");
    check_accepted(
        &run_s(&with(
            &base,
            &["--min-tcb", "fmc=0,bl=1,tee=0,snp=2,ucode=71"],
        )),
        "turin",
    );
    check_rejected(
        &run_s(&with(
            &base,
            &["--min-tcb", "fmc=1,bl=1,tee=0,snp=2,ucode=71"],
        )),
        "fmc is 0",
        "turin fmc",
    );
}

#[test]
fn policy_requirements() {
    let Some(td) = td() else { return };
    let base = accepted_args(&td, "milan-virtee");
    check_rejected(
        &run_s(&with(&base, &["--require-single-socket"])),
        "single socket",
        "single socket",
    );
    check_rejected(
        &run_s(&with(&base, &["--min-abi", "1.51"])),
        "policy ABI 0.0",
        "abi",
    );
    check_accepted(&run_s(&with(&base, &["--min-abi", "0.0"])), "abi 0.0");
    // milan-trustee requests ABI 0.31.
    let base = accepted_args(&td, "milan-trustee");
    check_accepted(&run_s(&with(&base, &["--min-abi", "0.31"])), "abi 0.31");
    check_rejected(
        &run_s(&with(&base, &["--min-abi", "0.32"])),
        "policy ABI 0.31",
        "abi 0.32",
    );
}

#[test]
fn wrong_product_is_a_rejection() {
    let Some(td) = td() else { return };
    // Stated product contradicting the report's CPUID (v3+).
    let base = accepted_args(&td, "genoa-oak");
    check_rejected(
        &run_s(&with(&base, &["--product", "milan"])),
        "product",
        "genoa as milan",
    );
    // Stated product contradicting the certificate (v2 report, no CPUID).
    let base = accepted_args(&td, "milan-virtee");
    check_rejected(
        &run_s(&with(&base, &["--product", "turin"])),
        "product",
        "milan as turin",
    );
    check_accepted(
        &run_s(&with(&base, &["--product", "milan"])),
        "milan as milan",
    );
}

#[test]
fn another_chips_vcek_is_rejected() {
    let Some(td) = td() else { return };
    // Same product and TCB, different chip: the signature cannot verify.
    let mut args = accepted_args(&td, "milan-virtee");
    let i = args.iter().position(|a| a == "--vcek").expect("--vcek");
    args[i + 1] = key(&td, "milan-trustee");
    check_rejected(&run_s(&args), "signature invalid", "other chip's vcek");
    // Another product's VCEK for a v2 report (no CPUID): the Genoa chain
    // holds, the signature cannot.
    args[i + 1] = key(&td, "genoa-oak");
    check_rejected(
        &run_s(&args),
        "signature invalid",
        "genoa vcek for milan v2 report",
    );
    // For a v5 report the CPUID names the product, and the certificate
    // contradicts it before any signature is checked.
    let mut args = accepted_args(&td, "turin-oak");
    let i = args.iter().position(|a| a == "--vcek").expect("--vcek");
    args[i + 1] = key(&td, "genoa-oak");
    check_rejected(&run_s(&args), "product", "genoa vcek for turin report");
}

#[test]
fn genoa_chain_for_a_milan_vcek_is_rejected() {
    let Some(td) = td() else { return };
    let args = with(
        &accepted_args(&td, "milan-virtee"),
        &["--certs", &td.join("amd/genoa").display().to_string()],
    );
    check_rejected(&run_s(&args), "certificate chain", "genoa chain");
}

#[test]
fn corrupted_signature_is_rejected() {
    let Some(td) = td() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    for (off, rule) in [
        (0x2A0, "signature invalid"),      // r
        (0x2A0 + 47, "signature invalid"), // r, most significant byte
        (0x2E8, "signature invalid"),      // s
        (0x2A0 + 60, "malformed report"),  // r above 384 bits
        (0x90, "signature invalid"),       // measurement byte: signed content
        (0x08 + 2, "malformed report"),    // policy bit 17 cleared: structure
    ] {
        let mut b = std::fs::read(report(&td, "milan-virtee")).expect("report");
        b[off] ^= 0x02;
        let p = dir.join(format!("r{off:x}.bin"));
        std::fs::write(&p, &b).expect("write");
        let mut args = accepted_args(&td, "milan-virtee");
        let i = args.iter().position(|a| a == "--report").expect("--report");
        args[i + 1] = p.display().to_string();
        check_rejected(&run_s(&args), rule, &format!("byte {off:#x}"));
    }
}

#[test]
fn tsm_evidence_verifies_with_its_own_certificates() {
    let Some(td) = td() else { return };
    let tsm = td.join("tsm/genoa-veraison.json").display().to_string();
    let out = run(&[
        "report",
        "verify",
        "--tsm-json",
        &tsm,
        "--allow-smt",
        "--json",
    ]);
    check_accepted(&out, "tsm json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["product"], "genoa");
    assert_eq!(v["report"]["version"], 3);
}

#[test]
fn json_rejection_lists_every_failure() {
    let Some(td) = td() else { return };
    let args: Vec<String> = accepted_args(&td, "milan-gosevguest")
        .into_iter()
        .filter(|a| a != "--allow-debug" && a != "--allow-smt")
        .chain(["--json".to_string()])
        .collect();
    let out = run_s(&args);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["accepted"], false);
    assert_eq!(v["rule"], "policy-debug");
    let rules: Vec<&str> = v["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["rule"].as_str().expect("rule"))
        .collect();
    assert_eq!(rules, ["policy-debug", "policy-smt"]);
}

#[test]
fn usage_and_io_errors_exit_2() {
    let Some(td) = td() else { return };
    let r = report(&td, "milan-virtee");
    for args in [
        vec!["report", "verify"],
        vec!["report", "verify", "--report", "/nonexistent/report.bin"],
        vec!["report", "verify", "--report", &r, "--at", "yesterday"],
        vec!["report", "verify", "--report", &r, "--measurement", "abcd"],
        vec!["report", "verify", "--report", &r, "--min-tcb", "bl=1"],
        vec!["report", "verify", "--report", &r, "--product", "rome"],
        vec!["report", "verify", "--report", &r, "--vcek", "/nonexistent"],
        vec!["report", "verify", "--report", &r, "--vcek", &r],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn show_prints_every_field() {
    let Some(td) = td() else { return };
    let out = run(&[
        "report",
        "show",
        "--report",
        &report(&td, "turin-oak"),
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["version"], 5);
    assert_eq!(v["policy"]["smt"], true);
    assert_eq!(v["cpuid"]["family"], 0x1a);
    assert_eq!(v["chip_id"].as_str().expect("hex").len(), 128);
    let out = run(&["report", "show", "--report", &report(&td, "milan-virtee")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for f in [
        "measurement",
        "policy.debug",
        "reported_tcb",
        "chip_id",
        "signature_r",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(f)),
            "{f} missing in\n{text}"
        );
    }
}
