//! Report verification throughput on a real AMD report (Milan, VCEK chain
//! cached) next to the raw P-384 ECDSA verification rate on the same
//! machine and the same bytes, the bound a verifier cannot beat.
//!
//! Run with `cargo bench -p snpguard --bench verify`; the numbers go into
//! docs/performance.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use p384::ecdsa::signature::Verifier as _;
use snpguard::certs::{CertSet, TrustAnchors};
use snpguard::report::Report;
use snpguard::verify::{Expectations, Verifier};
use snpguard_testkit::testdata;

/// Runs `f` repeatedly for about `budget` and returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm-up.
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..50 {
            f();
        }
        n += 50;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let (Some(report), Some(vcek)) = (
        testdata::read("reports/milan-virtee/report.bin"),
        testdata::read("reports/milan-virtee/vcek.der"),
    ) else {
        return;
    };
    let mut certs = CertSet::default();
    certs.vcek = Some(snpguard::certs::Cert::from_pem_or_der(&vcek).expect("vcek"));
    let anchors = TrustAnchors::amd().expect("anchors");
    let verifier = Verifier::new(anchors);
    let expect = Expectations {
        allow_smt: true,
        ..Expectations::default()
    };
    let at = time::OffsetDateTime::now_utc();
    verifier
        .verify(&report, &certs, &expect, at)
        .expect("the real report verifies");

    let parsed = Report::parse(&report).expect("parses");
    let key = snpguard::certs::verify_endorsement(
        verifier.anchors(),
        &certs,
        snpguard::certs::KeyKind::Vcek,
        None,
        at,
    )
    .expect("chain")
    .key;
    let sig = p384::ecdsa::Signature::from_slice(&parsed.signature.to_p384_bytes()).expect("sig");
    let signed = parsed.signed_bytes().to_vec();

    let budget = Duration::from_secs(3);
    // Interleave to even out frequency drift; take the best of three.
    let mut raw = 0f64;
    let mut full = 0f64;
    let mut uncached = 0f64;
    for _ in 0..3 {
        raw = raw.max(rate(budget, || {
            black_box(key.verify(black_box(&signed), &sig)).expect("raw verify");
        }));
        full = full.max(rate(budget, || {
            black_box(verifier.verify(black_box(&report), &certs, &expect, at)).expect("verify");
        }));
        uncached = uncached.max(rate(budget / 3, || {
            black_box(snpguard::verify::verify(
                verifier.anchors(),
                black_box(&report),
                &certs,
                &expect,
                at,
            ))
            .expect("verify");
        }));
    }
    println!("| measurement | rate (/s) | vs raw P-384 |");
    println!("|---|---|---|");
    println!("| raw P-384 ECDSA verify (same bytes, same key) | {raw:.0} | 1.00 |");
    println!(
        "| full report verification, VCEK chain cached | {full:.0} | {:.2} |",
        full / raw
    );
    println!(
        "| full report verification, chain re-verified (3x RSA-4096-PSS) | {uncached:.0} | {:.2} |",
        uncached / raw
    );
}
