//! Fuzz targets for every SnpGuard parser that takes untrusted bytes: from
//! a guest (reports, certificate tables, attestation requests), a host or
//! an operator (firmware, bundles, certificate imports, D-Bus options), a
//! network peer (configfs-tsm JSON, CRLs, sealed boxes) or a disk image
//! (LUKS2 headers, partition tables, the agent's configuration).
//!
//! Each target is one function `fn(&[u8])` that panics when a property is
//! violated: not only "no panic", but round trips where an encoder exists,
//! rejection of every change to a real AMD report, extraction that stays
//! inside its directory and under its caps. The libFuzzer binaries
//! (`fuzz_targets/`, feature `libfuzzer`, nightly) and the stable replay
//! (`tests/replay.rs`) call the same functions; [`TARGETS`] lists them
//! with their seeds and dictionaries. See docs/fuzzing.md.
//!
//! Seeds come from the real AMD test vectors (`snpguard_testkit::testdata`, read
//! in place, never copied into the repository) and from inputs built
//! here.

// The agent and snpguardctl are binaries; their parsers are included
// as they are, file for file (their own unit tests come along under
// cfg(test) and are linted, not run, here). The agent's `luks` names
// `crate::config`.
#[path = "../../agent/src"]
mod agent_src {
    #[allow(
        dead_code,
        unused_imports,
        reason = "only the parser of the agent's configuration is fuzzed"
    )]
    pub mod config;
    #[allow(
        dead_code,
        reason = "only the configfs-tsm reader of the evidence sources is fuzzed"
    )]
    pub mod evidence;
    pub mod luks;
}
#[path = "../../snpguardctl/src/image"]
mod snpguardctl_src {
    pub mod sfdisk;
}
use agent_src::{config, luks};
use snpguardctl_src::sfdisk;

mod agent;
mod attest;
mod bundle;
mod certs;
mod convert;
mod dbus;
mod firmware;
mod fixtures;
mod initrd;
mod report;
mod seal;
mod store;
mod tsm;

pub use agent::{agent_config, luks2_header};
pub use attest::{
    attest_request, attest_response, nonce_base64, renew_leading_nonce, renew_request,
    renew_response, signed_launch_response,
};
pub use bundle::bundle_extract;
pub use certs::{cert_import, cert_parse, cert_table, crl, tsm_json};
pub use convert::sfdisk_rewrite;
pub use dbus::register_options;
pub use firmware::ovmf_metadata;
pub use fixtures::reached_count;
pub use initrd::initrd;
pub use report::{report, report_mutation};
pub use seal::sealed_box;
pub use tsm::tsm_reader;

/// One fuzz target: its function, its seeds and its dictionary.
pub struct Target {
    /// The name of the target, its `fuzz_targets/<name>.rs` binary and its
    /// `corpus/<name>` and `regressions/<name>` directories.
    pub name: &'static str,
    /// The property checks; panics on a violation.
    pub run: fn(&[u8]),
    /// The seed inputs, built at run time; empty when the AMD test data
    /// is absent and `SNPGUARD_SKIP_TESTDATA=1` asked to skip it.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// The libFuzzer dictionary, `dict/<name>.dict`, when there is one.
    pub dict: Option<&'static str>,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "report",
        run: report,
        seeds: report::report_seeds,
        dict: None,
    },
    Target {
        name: "report_mutation",
        run: report_mutation,
        seeds: report::mutation_seeds,
        dict: None,
    },
    Target {
        name: "cert_table",
        run: cert_table,
        seeds: certs::table_seeds,
        dict: None,
    },
    Target {
        name: "tsm_json",
        run: tsm_json,
        seeds: certs::tsm_seeds,
        dict: Some("json"),
    },
    Target {
        name: "cert_parse",
        run: cert_parse,
        seeds: certs::parse_seeds,
        dict: Some("pem"),
    },
    Target {
        name: "cert_import",
        run: cert_import,
        seeds: certs::import_seeds,
        dict: Some("pem"),
    },
    Target {
        name: "crl",
        run: crl,
        seeds: certs::crl_seeds,
        dict: Some("pem"),
    },
    Target {
        name: "sealed_box",
        run: sealed_box,
        seeds: seal::seeds,
        dict: None,
    },
    Target {
        name: "nonce_base64",
        run: nonce_base64,
        seeds: attest::nonce_seeds,
        dict: None,
    },
    Target {
        name: "attest_request",
        run: attest_request,
        seeds: attest::attest_seeds,
        dict: Some("json"),
    },
    Target {
        name: "attest_response",
        run: attest_response,
        seeds: attest::response_seeds,
        dict: Some("json"),
    },
    Target {
        name: "tsm_reader",
        run: tsm_reader,
        seeds: tsm::seeds,
        dict: None,
    },
    Target {
        name: "renew_response",
        run: renew_response,
        seeds: attest::renew_response_seeds,
        dict: Some("json"),
    },
    Target {
        name: "signed_launch_response",
        run: signed_launch_response,
        seeds: attest::signed_launch_response_seeds,
        dict: Some("json"),
    },
    Target {
        name: "renew_request",
        run: renew_request,
        seeds: attest::renew_seeds,
        dict: Some("json"),
    },
    Target {
        name: "renew_leading_nonce",
        run: renew_leading_nonce,
        seeds: attest::renew_leading_seeds,
        dict: Some("json"),
    },
    Target {
        name: "bundle_extract",
        run: bundle_extract,
        seeds: bundle::seeds,
        dict: Some("bundle"),
    },
    Target {
        name: "ovmf_metadata",
        run: ovmf_metadata,
        seeds: firmware::seeds,
        dict: None,
    },
    Target {
        name: "luks2_header",
        run: luks2_header,
        seeds: agent::luks_seeds,
        dict: Some("luks2"),
    },
    Target {
        name: "agent_config",
        run: agent_config,
        seeds: agent::config_seeds,
        dict: Some("agent_config"),
    },
    Target {
        name: "sfdisk_rewrite",
        run: sfdisk_rewrite,
        seeds: convert::seeds,
        dict: Some("sfdisk"),
    },
    Target {
        name: "initrd",
        run: initrd,
        seeds: initrd::seeds,
        dict: None,
    },
    Target {
        name: "register_options",
        run: register_options,
        seeds: dbus::seeds,
        dict: None,
    },
];
