//! Certificates for one report, and the verification with them.
//!
//! The endorsement key is looked for in order, each source tried only
//! when the one before did not endorse the report:
//! 1. the request's certificate table (held intermediates fill gaps);
//! 2. the certificates the daemon holds: an operator's import, else the
//!    KDS cache (a cached VCEK whose chain or binding fails is evicted);
//! 3. AMD KDS (VCEKs only, when enabled), through the [`KdsGate`].
//!
//! A source "did not endorse the report" when its chain failed, the
//! signature did not verify with it, or its TCB or hwID binding failed;
//! any other refusal is about the guest, not the certificate, and is
//! final. Nothing is looked up or fetched for a report whose own
//! structure already refuses it: MASK_CHIP_KEY set, or a signing key
//! that is not a VCEK or VLEK (and KDS is asked for VCEKs only, never for
//! a masked CHIP_ID). A VCEK from KDS is cached only after it verified
//! the report's signature with its binding intact.

use snpguard::certs::{Cert, CertSet, KeyKind, Product};
use snpguard::report::{Report, SigningKey, TcbParts};
use snpguard::verify::{tcb_layout, Expectations, Failure, Rejection, Verified};
use time::OffsetDateTime;

use super::{candidate_products, secs, store_failed, Attestor};
use crate::attest::certs::{self as held, HeldSource};
use crate::attest::kds::KdsGate;
use crate::attest::AttestError;
use crate::store::StoreError;

/// The outcome of [`Attestor::endorse_and_verify`].
pub(super) struct Endorsed {
    /// The verification with the last certificates tried.
    pub result: Result<Verified, Rejection>,
    /// Where they came from: `table`, `imported`, `kds-cache` or `kds`.
    pub source: Option<&'static str>,
    /// What was tried and why it was not enough.
    pub notes: Vec<String>,
}

/// Whether the certificates failed to endorse the report (so another
/// source may do better).
fn endorsement_failed(r: &Result<Verified, Rejection>) -> bool {
    r.as_ref().is_err_and(|rej| {
        rej.failures().iter().any(|f| {
            matches!(
                f,
                Failure::Chain(_)
                    | Failure::Signature(_)
                    | Failure::TcbBinding { .. }
                    | Failure::HwidMismatch { .. }
            )
        })
    })
}

/// Whether the certificate itself is bad (its chain or its binding to
/// the chip and TCB it is stored for), not merely the report's
/// signature: only then is a cached one evicted. A signature that does
/// not verify says the report is forged, not that the certificate is.
fn certificate_bad(r: &Result<Verified, Rejection>) -> bool {
    r.as_ref().is_err_and(|rej| {
        rej.failures().iter().any(|f| {
            matches!(
                f,
                Failure::Chain(_) | Failure::TcbBinding { .. } | Failure::HwidMismatch { .. }
            )
        })
    })
}

/// Whether the report's signature verified with the certificate and its
/// binding held: the verifier got past the chain and the signature (every
/// failure is a content rule), and the binding rules are not among them.
fn signature_verified(r: &Result<Verified, Rejection>) -> bool {
    match r {
        Ok(_) => true,
        Err(rej) => rej.failures().iter().all(|f| {
            !matches!(
                f,
                Failure::Malformed(_)
                    | Failure::Unsigned
                    | Failure::ChipKeyMasked
                    | Failure::ReservedSigningKey(_)
                    | Failure::ProductMismatch { .. }
                    | Failure::Chain(_)
                    | Failure::Signature(_)
                    | Failure::TcbBinding { .. }
                    | Failure::HwidMismatch { .. }
            )
        }),
    }
}

fn has_leaf(c: &CertSet, kind: KeyKind) -> bool {
    match kind {
        KeyKind::Vcek => c.vcek.is_some(),
        KeyKind::Vlek => c.vlek.is_some(),
    }
}

/// The intermediates of `c` (no endorsement key).
fn intermediates(c: &CertSet) -> CertSet {
    CertSet {
        vcek: None,
        vlek: None,
        ..c.clone()
    }
}

fn headline(r: &Result<Verified, Rejection>) -> String {
    match r {
        Ok(_) => "verified".into(),
        Err(rej) => rej.to_string(),
    }
}

impl Attestor {
    /// Verifies `bytes` (parsed as `report`) against `expect` at `now`
    /// with the certificates of the request's `table`, then the held
    /// ones, then KDS, as the module documentation describes.
    pub(super) fn endorse_and_verify(
        &self,
        report: &Report,
        bytes: &[u8],
        table: Option<CertSet>,
        expect: &Expectations,
        now: OffsetDateTime,
    ) -> Result<Endorsed, AttestError> {
        let verify = |certs: &CertSet| self.verifier.verify(bytes, certs, expect, now);
        let table = table.unwrap_or_default();
        let kind = match report.key_info.signing_key() {
            SigningKey::Vcek => Some(KeyKind::Vcek),
            SigningKey::Vlek => Some(KeyKind::Vlek),
            SigningKey::None | SigningKey::Reserved(_) => None,
        };
        let kind = match kind {
            Some(k) if !report.key_info.mask_chip_key() => k,
            // Refused by name by the verifier; nothing looked up.
            _ => {
                return Ok(Endorsed {
                    result: verify(&table),
                    source: None,
                    notes: vec!["the report's KEY_INFO refuses it; no certificate looked up".into()],
                })
            }
        };
        let products = candidate_products(report);
        let chip = |p: Product| {
            let tcb = report.reported_tcb.parts(tcb_layout(p));
            (report.chip_id[..p.hwid_len()].to_vec(), tcb)
        };
        let store_err = |e: StoreError| store_failed("reading held certificates", e);
        // The held certificates of the first candidate product that has
        // an endorsement key, else of the first one (intermediates).
        let mut held_set = CertSet::default();
        let mut held_source = None;
        let mut held_chip = None;
        for (i, &p) in products.iter().enumerate() {
            let (hwid, tcb) = chip(p);
            let (set, source) =
                held::held(self.store(), kind, p, &hwid, &tcb).map_err(store_err)?;
            if has_leaf(&set, kind) || i == 0 {
                held_set = set;
                held_source = source;
                held_chip = Some((p, hwid, tcb));
            }
            if has_leaf(&held_set, kind) {
                break;
            }
        }
        let mut notes = Vec::new();
        let mut last: Option<(Result<Verified, Rejection>, &'static str)> = None;

        // 1. The request's table.
        if has_leaf(&table, kind) {
            let mut certs = table.clone();
            certs.merge(intermediates(&held_set));
            let r = verify(&certs);
            if !endorsement_failed(&r) {
                return Ok(Endorsed {
                    result: r,
                    source: Some("table"),
                    notes,
                });
            }
            notes.push(format!(
                "the request's certificates did not endorse the report: {}",
                headline(&r)
            ));
            last = Some((r, "table"));
        }

        // 2. What the daemon holds.
        if has_leaf(&held_set, kind) {
            let source = match held_source {
                Some(HeldSource::KdsCache) => "kds-cache",
                _ => "imported",
            };
            let mut certs = held_set.clone();
            certs.merge(intermediates(&table));
            let r = verify(&certs);
            if !endorsement_failed(&r) {
                return Ok(Endorsed {
                    result: r,
                    source: Some(source),
                    notes,
                });
            }
            notes.push(format!(
                "the {source} certificate did not endorse the report: {}",
                headline(&r)
            ));
            if let (Some(HeldSource::KdsCache), Some((p, hwid, tcb)), true) =
                (held_source, &held_chip, certificate_bad(&r))
            {
                self.evict(*p, hwid, tcb, &r, &mut notes);
            }
            last = Some((r, source));
        }

        // 3. KDS.
        if kind == KeyKind::Vcek {
            match &self.kds {
                None => notes.push(
                    "no VCEK in the request or held that endorses the report, and KDS access \
                     is disabled"
                        .into(),
                ),
                Some(gate) => {
                    if let Some(done) = self.verify_with_kds(
                        gate, &products, &chip, &table, expect, bytes, now, &mut notes,
                    )? {
                        return Ok(Endorsed {
                            result: done,
                            source: Some("kds"),
                            notes,
                        });
                    }
                }
            }
        }

        let (result, source) = match last {
            Some((r, source)) => (r, Some(source)),
            // No endorsement key anywhere: the verifier names what is
            // missing.
            None => {
                let mut certs = table;
                certs.merge(held_set);
                (verify(&certs), None)
            }
        };
        Ok(Endorsed {
            result,
            source,
            notes,
        })
    }

    /// Fetches the VCEK for the first candidate product KDS has one for
    /// and verifies with it; `None` when KDS served none.
    #[allow(clippy::too_many_arguments)]
    fn verify_with_kds(
        &self,
        gate: &KdsGate,
        products: &[Product],
        chip: &dyn Fn(Product) -> (Vec<u8>, TcbParts),
        table: &CertSet,
        expect: &Expectations,
        bytes: &[u8],
        now: OffsetDateTime,
        notes: &mut Vec<String>,
    ) -> Result<Option<Result<Verified, Rejection>>, AttestError> {
        let store_err = |e: StoreError| store_failed("reading held certificates", e);
        for &p in products {
            let (hwid, tcb) = chip(p);
            let der = match gate.fetch_vcek(p, &hwid, &tcb, secs(now)) {
                Ok(der) => der,
                Err(e) => {
                    notes.push(format!("KDS: {e}"));
                    continue;
                }
            };
            let cert = match Cert::from_pem_or_der(&der) {
                Ok(c) => c,
                Err(e) => {
                    gate.unusable(p, &hwid, &tcb, &e.to_string(), secs(now));
                    notes.push(format!("KDS served no certificate: {e}"));
                    continue;
                }
            };
            let (held_set, _) =
                held::held(self.store(), KeyKind::Vcek, p, &hwid, &tcb).map_err(store_err)?;
            let mut certs = CertSet {
                vcek: Some(cert),
                ..CertSet::default()
            };
            certs.merge(intermediates(&held_set));
            certs.merge(intermediates(table));
            let r = self.verifier.verify(bytes, &certs, expect, now);
            if signature_verified(&r) {
                match held::cache_vcek(self.store(), p, &hwid, &tcb, &der) {
                    Ok(()) => tracing::info!(
                        PRODUCT = %p,
                        CHIP_ID = %hex::encode(&hwid[..8]),
                        "cached the VCEK fetched from KDS"
                    ),
                    Err(e) => tracing::error!("caching the VCEK fetched from KDS: {e}"),
                }
            } else if certificate_bad(&r) {
                gate.unusable(p, &hwid, &tcb, &headline(&r), secs(now));
                notes.push(format!(
                    "the VCEK from KDS did not endorse the report: {}",
                    headline(&r)
                ));
            }
            return Ok(Some(r));
        }
        Ok(None)
    }

    /// Drops a cached VCEK whose chain or binding failed.
    fn evict(
        &self,
        p: Product,
        hwid: &[u8],
        tcb: &TcbParts,
        r: &Result<Verified, Rejection>,
        notes: &mut Vec<String>,
    ) {
        match held::evict_vcek(self.store(), p, hwid, tcb) {
            Ok(()) => {
                tracing::warn!(
                    PRODUCT = %p,
                    CHIP_ID = %hex::encode(&hwid[..hwid.len().min(8)]),
                    "evicted a cached VCEK that does not verify: {}",
                    headline(r)
                );
                notes.push("evicted the cached VCEK".into());
            }
            Err(e) => tracing::error!("evicting a cached VCEK: {e}"),
        }
    }
}
