//! Certificates the daemon holds: operator imports (for air-gapped hosts)
//! and VCEKs cached from AMD KDS, in [`Tree::Certs`].
//!
//! Keys (product as KDS spells it, hwID in lowercase hex, TCB as
//! `bl.tee.snp.ucode` plus `.fmc` on Turin):
//!
//! | key                                     | value                      |
//! |-----------------------------------------|----------------------------|
//! | `import/vcek/<Product>/<hwid>/<tcb>`    | DER of an imported VCEK    |
//! | `import/vlek/<Product>/<tcb>`           | DER of an imported VLEK    |
//! | `import/ask/<Product>`                  | DER of an imported ASK     |
//! | `import/asvk/<Product>`                 | DER of an imported ASVK    |
//! | `kds/vcek/<Product>/<hwid>/<tcb>`       | DER of a VCEK from KDS     |
//! | `crl/<Product>/<root sha256>`           | an ARK CRL ([`super::crls`]) |
//!
//! A VCEK for a chip at a TCB never changes, so cached entries do not
//! expire; validity dates are still checked at every verification, and a
//! cached VCEK whose chain or binding fails is evicted. A VCEK from KDS is
//! cached only once it verified a report's signature, and the cache holds
//! at most [`MAX_KDS_CACHE`] VCEKs (the first in key order make room).
//! Operators list held certificates and remove them ([`remove`]) over
//! D-Bus. Nothing here is trusted: every certificate goes through the
//! chain verification against the pinned roots. ARKs are not imported
//! (the roots are built in, or configured test roots).

use snpguard::certs::{
    verify_ca, verify_endorsement, Cert, CertRole, CertSet, CertTcb, KeyKind, Product, TrustAnchors,
};
use snpguard::report::TcbParts;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{Op, Store, StoreError, Tree};

/// Most certificates one import call takes.
pub const MAX_IMPORT_CERTS: usize = 64;

/// Largest file one import reads (a certificate table is at most 64 KiB).
pub const MAX_IMPORT_FILE: usize = 64 * 1024;

/// Most VCEKs the KDS cache holds (a VCEK is about 1.3 KiB).
pub const MAX_KDS_CACHE: usize = 4096;

/// The key prefix of the KDS cache.
const KDS_PREFIX: &[u8] = b"kds/";

/// Why an import was refused; nothing was stored. `file` is the name the
/// client gave the input.
#[derive(Debug, thiserror::Error)]
pub enum CertImportError {
    /// A file holds no parsable certificate.
    #[error("{file}: {reason}")]
    Malformed {
        /// The input's name.
        file: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate that is no AMD VCEK, VLEK, ASK, ASVK or ARK.
    #[error("{file}: certificate {subject:?} is not an AMD VCEK, VLEK, ASK, ASVK or ARK")]
    Unrecognized {
        /// The input's name.
        file: String,
        /// Its subject common name.
        subject: String,
    },
    /// A certificate that does not chain to a trusted root (or is
    /// outside its validity, or its extensions are wrong).
    #[error("{file}: the {role} is not trusted ({code}): {reason}")]
    Untrusted {
        /// The input's name.
        file: String,
        /// VCEK, VLEK, ASK, ASVK or ARK.
        role: CertRole,
        /// The chain rule's stable code (`signature-invalid`, …).
        code: &'static str,
        /// The precise reason.
        reason: String,
    },
    /// A CRL that is malformed or not signed by a trusted root.
    #[error("{file}: the CRL is not accepted ({code}): {reason}")]
    Crl {
        /// The input's name.
        file: String,
        /// The rule's stable code (`crl-signature`, `crl-issuer`,
        /// `crl-malformed`).
        code: &'static str,
        /// The precise reason.
        reason: String,
    },
    /// A CRL older than (or as old as) the one held for its root.
    #[error("{file}: the {product} CRL held (thisUpdate {held}) is newer than or as new as this one (thisUpdate {given}); an older CRL never replaces a newer one, so nothing was imported")]
    CrlNotNewer {
        /// The input's name.
        file: String,
        /// The product.
        product: Product,
        /// thisUpdate of the held CRL.
        held: String,
        /// thisUpdate of the given one.
        given: String,
    },
    /// Too many certificates or files at once.
    #[error("more than {MAX_IMPORT_CERTS} certificates in one import; import them in batches")]
    TooMany,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The TCB part of a key.
fn tcb_key(product: Product, tcb: &TcbParts) -> String {
    let base = format!(
        "{}.{}.{}.{}",
        tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
    );
    if product.has_fmc() {
        format!("{base}.{}", tcb.fmc.unwrap_or(0))
    } else {
        base
    }
}

fn vcek_key(source: &str, product: Product, hwid: &[u8], tcb: &TcbParts) -> Vec<u8> {
    format!(
        "{source}/vcek/{}/{}/{}",
        product.kds_name(),
        hex::encode(hwid),
        tcb_key(product, tcb)
    )
    .into_bytes()
}

fn vlek_key(product: Product, tcb: &TcbParts) -> Vec<u8> {
    format!(
        "import/vlek/{}/{}",
        product.kds_name(),
        tcb_key(product, tcb)
    )
    .into_bytes()
}

fn intermediate_key(role: &str, product: Product) -> Vec<u8> {
    format!("import/{role}/{}", product.kds_name()).into_bytes()
}

fn get_cert(store: &dyn Store, key: &[u8]) -> Result<Option<Cert>, StoreError> {
    // An entry that no longer parses is treated as absent (and logged):
    // the verification then reports the missing certificate.
    Ok(store.get(Tree::Certs, key)?.and_then(|der| {
        Cert::from_pem_or_der(&der)
            .map_err(|e| {
                tracing::warn!(
                    KEY = %String::from_utf8_lossy(key),
                    "stored certificate does not parse, ignoring it: {e}"
                )
            })
            .ok()
    }))
}

/// Where a held endorsement certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeldSource {
    /// Imported by an operator.
    Imported,
    /// Cached from KDS.
    KdsCache,
}

/// The certificates held for a report signed by `kind` on `product`, chip
/// `hwid` at `tcb`: the endorsement key (imported first, then the KDS
/// cache) and the imported intermediate.
pub fn held(
    store: &dyn Store,
    kind: KeyKind,
    product: Product,
    hwid: &[u8],
    tcb: &TcbParts,
) -> Result<(CertSet, Option<HeldSource>), StoreError> {
    let mut set = CertSet::default();
    let mut source = None;
    match kind {
        KeyKind::Vcek => {
            if let Some(c) = get_cert(store, &vcek_key("import", product, hwid, tcb))? {
                set.vcek = Some(c);
                source = Some(HeldSource::Imported);
            } else if let Some(c) = get_cert(store, &vcek_key("kds", product, hwid, tcb))? {
                set.vcek = Some(c);
                source = Some(HeldSource::KdsCache);
            }
            set.ask = get_cert(store, &intermediate_key("ask", product))?;
        }
        KeyKind::Vlek => {
            set.vlek = get_cert(store, &vlek_key(product, tcb))?;
            source = set.vlek.as_ref().map(|_| HeldSource::Imported);
            set.asvk = get_cert(store, &intermediate_key("asvk", product))?;
        }
    }
    Ok((set, source))
}

/// Caches a VCEK fetched from KDS. Call only after it verified a
/// report's signature and its binding held. When the cache holds
/// [`MAX_KDS_CACHE`] VCEKs, the first in key order are dropped to make
/// room (KDS serves them again when needed).
pub fn cache_vcek(
    store: &dyn Store,
    product: Product,
    hwid: &[u8],
    tcb: &TcbParts,
    der: &[u8],
) -> Result<(), StoreError> {
    cache_vcek_bounded(store, product, hwid, tcb, der, MAX_KDS_CACHE)
}

pub(crate) fn cache_vcek_bounded(
    store: &dyn Store,
    product: Product,
    hwid: &[u8],
    tcb: &TcbParts,
    der: &[u8],
    capacity: usize,
) -> Result<(), StoreError> {
    let key = vcek_key("kds", product, hwid, tcb);
    let others: Vec<Vec<u8>> = store
        .entries(Tree::Certs)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(KDS_PREFIX) && *k != key)
        .collect();
    let excess = (others.len() + 1).saturating_sub(capacity.max(1));
    let mut ops: Vec<Op> = others[..excess]
        .iter()
        .map(|k| Op::delete(Tree::Certs, k.clone()))
        .collect();
    if excess > 0 {
        tracing::info!(
            COUNT = excess,
            "the KDS certificate cache is full; dropped the first cached VCEKs"
        );
    }
    ops.push(Op::put(Tree::Certs, key, der));
    store.transaction(&ops)
}

/// Drops a VCEK from the KDS cache (one whose chain or binding failed);
/// imported certificates are the operator's and are never evicted.
pub fn evict_vcek(
    store: &dyn Store,
    product: Product,
    hwid: &[u8],
    tcb: &TcbParts,
) -> Result<(), StoreError> {
    store.delete(Tree::Certs, &vcek_key("kds", product, hwid, tcb))
}

/// Which held certificates [`remove`] removes; a `None` field matches
/// every certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFilter {
    /// Imported or cached from KDS.
    pub source: Option<HeldSource>,
    /// VCEK, VLEK, ASK or ASVK.
    pub role: Option<CertRole>,
    /// The product.
    pub product: Option<Product>,
    /// Leading hex digits of a VCEK's hwID (the listing shows the first
    /// 16); matches VCEKs only.
    pub chip_id: Option<String>,
    /// `bootloader.tee.snp.microcode` (`.fmc` on Turin); matches VCEKs
    /// and VLEKs only.
    pub tcb: Option<String>,
    /// Kind `CRL`: the held ARK CRLs (of `product`, from `source`) and
    /// nothing else. Without it no CRL is ever removed.
    pub crl: bool,
}

/// Why a filter of [`CertFilter::parse`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(String);

impl CertFilter {
    /// A filter from the strings of the D-Bus method and the CLI (`""`
    /// matches any): source `imported` or `kds-cache`; kind `VCEK`,
    /// `VLEK`, `ASK` or `ASVK` (any case); product `milan`, `genoa` or
    /// `turin`; chip_id 1 to 128 hex digits; tcb four (or five) numbers
    /// separated by dots.
    pub fn parse(
        source: &str,
        kind: &str,
        product: &str,
        chip_id: &str,
        tcb: &str,
    ) -> Result<CertFilter, FilterError> {
        let bad = |m: String| Err(FilterError(m));
        let source = match source {
            "" => None,
            "imported" => Some(HeldSource::Imported),
            "kds-cache" => Some(HeldSource::KdsCache),
            s => return bad(format!("source {s:?}: expected imported or kds-cache")),
        };
        let crl = kind.eq_ignore_ascii_case("CRL");
        let role = match kind.to_ascii_uppercase().as_str() {
            "" | "CRL" => None,
            "VCEK" => Some(CertRole::Vcek),
            "VLEK" => Some(CertRole::Vlek),
            "ASK" => Some(CertRole::Ask),
            "ASVK" => Some(CertRole::Asvk),
            _ => {
                return bad(format!(
                    "kind {:?}: expected VCEK, VLEK, ASK, ASVK or CRL (ARKs are never stored)",
                    kind.chars().take(16).collect::<String>()
                ))
            }
        };
        let product = match product {
            "" => None,
            p => Some(
                p.parse()
                    .map_err(|e| FilterError(format!("product: {e}")))?,
            ),
        };
        let chip_id = match chip_id {
            "" => None,
            c if c.len() <= 128 && c.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(c.to_ascii_lowercase())
            }
            _ => return bad("chip_id: expected 1 to 128 hex digits".into()),
        };
        let tcb = match tcb {
            "" => None,
            t if (4..=5).contains(&t.split('.').count())
                && t.split('.').all(|n| n.parse::<u8>().is_ok()) =>
            {
                Some(t.to_owned())
            }
            _ => {
                return bad(format!(
                    "tcb {:?}: expected bootloader.tee.snp.microcode[.fmc], e.g. 3.0.8.115",
                    tcb.chars().take(32).collect::<String>()
                ))
            }
        };
        if crl && (chip_id.is_some() || tcb.is_some()) {
            return bad(
                "kind CRL: a CRL has no chip_id or tcb; filter by product and source".into(),
            );
        }
        Ok(CertFilter {
            source,
            role,
            product,
            chip_id,
            tcb,
            crl,
        })
    }
}

/// Certificate management as the D-Bus layer sees it (implemented by the
/// [`super::Attestor`], which holds the trust anchors). Calls block.
pub trait CertificateService: Send + Sync + 'static {
    /// Checks and stores certificates; all or nothing. See [`import`].
    fn import_certificates(
        &self,
        files: &[(String, Vec<u8>)],
    ) -> Result<Vec<CertSummary>, CertImportError>;
    /// Every certificate held. See [`list`].
    fn list_certificates(&self) -> Result<Vec<CertSummary>, StoreError>;
    /// Every ARK CRL held. See [`super::crls::list`].
    fn list_crls(&self) -> Result<Vec<super::crls::CrlSummary>, StoreError>;
    /// Removes the held certificates `filter` matches. See [`remove`].
    fn remove_certificates(&self, filter: &CertFilter) -> Result<Vec<CertSummary>, StoreError>;
    /// Whether the certificates live in a store other daemons share: then
    /// every change to them, this daemon's included, arrives through the
    /// store's feed ([`crate::store::StoreChange::Certificates`]) and is
    /// signalled from there, not by the call that made it.
    fn shared(&self) -> bool {
        false
    }
}

/// One certificate the daemon holds or just imported, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// VCEK, VLEK, ASK, ASVK or ARK.
    pub role: CertRole,
    /// The product.
    pub product: Product,
    /// First 8 bytes of the hwID (VCEK), lowercase hex.
    pub chip_id: Option<String>,
    /// `bootloader.tee.snp.microcode` (`.fmc` on Turin), VCEK and VLEK.
    pub tcb: Option<String>,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// `imported`, `kds-cache`, or `trusted-root` (an ARK that is already
    /// a trust anchor, not stored).
    pub source: &'static str,
    /// The input it came from (imports only).
    pub file: Option<String>,
    /// Set when this is an ARK CRL, not a certificate (`role` is then
    /// the ARK, its issuer, and `not_after` its nextUpdate).
    pub crl: Option<super::crls::CrlSummary>,
}

fn not_after(cert: &Cert) -> String {
    let t = cert
        .x509()
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration();
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn tcb_parts(t: &CertTcb) -> TcbParts {
    TcbParts {
        bootloader: t.bootloader,
        tee: t.tee,
        snp: t.snp,
        microcode: t.microcode,
        fmc: t.fmc,
    }
}

/// Splits one input into certificates: PEM (every `CERTIFICATE` block;
/// KDS's `cert_chain` holds two), DER, or an extended-report /
/// configfs-tsm certificate table (GUID entries).
fn split(bytes: &[u8], file: &str) -> Result<Vec<Cert>, CertImportError> {
    let malformed = |reason: String| CertImportError::Malformed {
        file: file.to_owned(),
        reason,
    };
    if bytes.len() > MAX_IMPORT_FILE {
        return Err(malformed(format!(
            "{} bytes; at most {MAX_IMPORT_FILE} are read",
            bytes.len()
        )));
    }
    let trimmed = bytes.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(malformed("empty; expected a PEM or DER certificate".into()));
    }
    if trimmed.starts_with(b"-----BEGIN ") {
        let text = std::str::from_utf8(bytes).map_err(|_| malformed("PEM is not UTF-8".into()))?;
        const END: &str = "-----END CERTIFICATE-----";
        let mut certs = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let end = block
                .find(END)
                .ok_or_else(|| malformed("PEM block without END CERTIFICATE line".into()))?
                + END.len();
            certs.push(
                Cert::from_pem_or_der(&block.as_bytes()[..end])
                    .map_err(|e| malformed(e.to_string()))?,
            );
            if certs.len() > MAX_IMPORT_CERTS {
                return Err(CertImportError::TooMany);
            }
            rest = &block[end..];
        }
        return Ok(certs);
    }
    // DER is a SEQUENCE (0x30); a certificate table starts with a GUID.
    if bytes[0] == 0x30 {
        return Ok(vec![
            Cert::from_pem_or_der(bytes).map_err(|e| malformed(e.to_string()))?
        ]);
    }
    let set = CertSet::from_cert_table(bytes).map_err(|e| {
        malformed(format!(
            "neither a PEM or DER certificate nor a certificate table ({e})"
        ))
    })?;
    let certs: Vec<Cert> = [set.ark, set.ask, set.asvk, set.vcek, set.vlek]
        .into_iter()
        .flatten()
        .collect();
    if certs.is_empty() {
        return Err(malformed(
            "the certificate table holds no certificate".into(),
        ));
    }
    Ok(certs)
}

/// What a certificate claims to be, from its subject name.
fn role_of(cert: &Cert, file: &str) -> Result<CertRole, CertImportError> {
    cert.named_role()
        .ok_or_else(|| CertImportError::Unrecognized {
            file: file.to_owned(),
            subject: cert
                .subject_cn()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect(),
        })
}

/// Checks every certificate of `files` (name, bytes) against `anchors`
/// at `now` and stores them in one transaction: all or none. ASKs and
/// ASVKs must be signed by a trusted root; VCEKs and VLEKs must chain to
/// one through an intermediate of the same import, one held, or (VCEK,
/// AMD roots) the built-in ASK. ARKs are checked and not stored (the
/// roots are built in or configured). A later import of the same key
/// replaces it. Returns what was imported, in input order.
pub fn import(
    store: &dyn Store,
    anchors: &TrustAnchors,
    files: &[(String, Vec<u8>)],
    now: OffsetDateTime,
) -> Result<Vec<CertSummary>, CertImportError> {
    let mut parsed: Vec<(&str, CertRole, Cert)> = Vec::new();
    for (file, bytes) in files {
        for cert in split(bytes, file)? {
            parsed.push((file, role_of(&cert, file)?, cert));
            if parsed.len() > MAX_IMPORT_CERTS {
                return Err(CertImportError::TooMany);
            }
        }
    }
    let untrusted =
        |file: &str, role: CertRole, e: snpguard::certs::ChainError| CertImportError::Untrusted {
            file: file.to_owned(),
            role,
            code: e.code(),
            reason: e.to_string(),
        };
    // Intermediates first: the endorsement keys may need them.
    let mut ops = Vec::new();
    let mut out = Vec::new();
    let mut batch_asks: Vec<(Product, Cert)> = Vec::new();
    let mut batch_asvks: Vec<(Product, Cert)> = Vec::new();
    for (file, role, cert) in parsed
        .iter()
        .filter(|(_, r, _)| matches!(r, CertRole::Ark | CertRole::Ask | CertRole::Asvk))
    {
        let ca = verify_ca(anchors, cert, now).map_err(|e| untrusted(file, *role, e))?;
        let source = match ca.role {
            CertRole::Ask => {
                ops.push(Op::put(
                    Tree::Certs,
                    intermediate_key("ask", ca.product),
                    cert.der(),
                ));
                batch_asks.push((ca.product, cert.clone()));
                "imported"
            }
            CertRole::Asvk => {
                ops.push(Op::put(
                    Tree::Certs,
                    intermediate_key("asvk", ca.product),
                    cert.der(),
                ));
                batch_asvks.push((ca.product, cert.clone()));
                "imported"
            }
            _ => "trusted-root",
        };
        out.push(CertSummary {
            role: ca.role,
            product: ca.product,
            chip_id: None,
            tcb: None,
            not_after: not_after(cert),
            source,
            file: Some((*file).to_owned()),
            crl: None,
        });
    }
    for (file, role, cert) in parsed
        .iter()
        .filter(|(_, r, _)| matches!(r, CertRole::Vcek | CertRole::Vlek))
    {
        let kind = if *role == CertRole::Vcek {
            KeyKind::Vcek
        } else {
            KeyKind::Vlek
        };
        let claimed = cert.claimed_product();
        let pick = |list: &[(Product, Cert)]| {
            list.iter()
                .find(|(p, _)| Some(*p) == claimed)
                .map(|(_, c)| c.clone())
        };
        let held_ca = |role: &str| -> Result<Option<Cert>, CertImportError> {
            match claimed {
                Some(p) => Ok(get_cert(store, &intermediate_key(role, p))?),
                None => Ok(None),
            }
        };
        let mut set = CertSet::default();
        match kind {
            KeyKind::Vcek => {
                set.vcek = Some(cert.clone());
                set.ask = match pick(&batch_asks) {
                    Some(c) => Some(c),
                    None => held_ca("ask")?,
                };
            }
            KeyKind::Vlek => {
                set.vlek = Some(cert.clone());
                set.asvk = match pick(&batch_asvks) {
                    Some(c) => Some(c),
                    None => held_ca("asvk")?,
                };
            }
        }
        let e = verify_endorsement(anchors, &set, kind, None, now)
            .map_err(|e| untrusted(file, *role, e))?;
        let tcb = tcb_parts(&e.tcb);
        let (key, chip_id) = match (&e.hwid, kind) {
            (Some(hwid), KeyKind::Vcek) => (
                vcek_key("import", e.product, hwid, &tcb),
                Some(hex::encode(&hwid[..hwid.len().min(8)])),
            ),
            _ => (vlek_key(e.product, &tcb), None),
        };
        ops.push(Op::put(Tree::Certs, key, cert.der()));
        out.push(CertSummary {
            role: *role,
            product: e.product,
            chip_id,
            tcb: Some(tcb_key(e.product, &tcb)),
            not_after: not_after(cert),
            source: "imported",
            file: Some((*file).to_owned()),
            crl: None,
        });
    }
    if !ops.is_empty() {
        store.transaction(&ops)?;
    }
    Ok(out)
}

/// Every certificate held (imports and the KDS cache), in key order.
/// Entries that no longer parse are skipped (and logged).
pub fn list(store: &dyn Store) -> Result<Vec<CertSummary>, StoreError> {
    Ok(held_entries(store)?
        .into_iter()
        .map(|h| h.summary)
        .collect())
}

/// Removes every held certificate `filter` matches, in one transaction;
/// returns what was removed. Entries that no longer parse are removed
/// when the filter names neither a kind, a product, a chip nor a TCB.
pub fn remove(store: &dyn Store, filter: &CertFilter) -> Result<Vec<CertSummary>, StoreError> {
    if filter.crl {
        // CRLs are removed by [`super::crls::remove`], certificates never
        // by a CRL filter.
        return Ok(Vec::new());
    }
    let mut ops = Vec::new();
    let mut out = Vec::new();
    let only_source = CertFilter {
        source: filter.source,
        ..CertFilter::default()
    } == *filter;
    for h in held_entries(store)? {
        let s = &h.summary;
        let source = match s.source {
            "kds-cache" => HeldSource::KdsCache,
            _ => HeldSource::Imported,
        };
        let matches = filter.source.is_none_or(|f| f == source)
            && filter.role.is_none_or(|r| r == s.role)
            && filter.product.is_none_or(|p| p == s.product)
            && filter.chip_id.as_ref().is_none_or(|c| {
                s.role == CertRole::Vcek && h.hwid.as_deref().is_some_and(|w| w.starts_with(c))
            })
            && filter
                .tcb
                .as_ref()
                .is_none_or(|t| s.tcb.as_deref() == Some(t.as_str()));
        if matches {
            ops.push(Op::delete(Tree::Certs, h.key));
            out.push(h.summary);
        }
    }
    if only_source {
        for key in unparsable_keys(store)? {
            let source = if key.starts_with(KDS_PREFIX) {
                HeldSource::KdsCache
            } else {
                HeldSource::Imported
            };
            if filter.source.is_none_or(|f| f == source) {
                tracing::info!(KEY = %String::from_utf8_lossy(&key), "removing an unusable stored certificate");
                ops.push(Op::delete(Tree::Certs, key));
            }
        }
    }
    if !ops.is_empty() {
        store.transaction(&ops)?;
    }
    Ok(out)
}

/// One stored certificate: its key, its hwID in hex (VCEKs) and summary.
struct HeldEntry {
    key: Vec<u8>,
    hwid: Option<String>,
    summary: CertSummary,
}

/// Keys of entries [`held_entries`] skips.
fn unparsable_keys(store: &dyn Store) -> Result<Vec<Vec<u8>>, StoreError> {
    let good: std::collections::HashSet<Vec<u8>> =
        held_entries(store)?.into_iter().map(|h| h.key).collect();
    Ok(store
        .entries(Tree::Certs)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !good.contains(k) && !k.starts_with(super::crls::CRL_PREFIX))
        .collect())
}

fn held_entries(store: &dyn Store) -> Result<Vec<HeldEntry>, StoreError> {
    let mut out = Vec::new();
    for (raw_key, der) in store.entries(Tree::Certs)? {
        if raw_key.starts_with(super::crls::CRL_PREFIX) {
            continue;
        }
        let key = String::from_utf8_lossy(&raw_key).into_owned();
        let parts: Vec<&str> = key.split('/').collect();
        let (Some(source), Some(role), Some(product)) = (
            parts.first().and_then(|s| match *s {
                "import" => Some("imported"),
                "kds" => Some("kds-cache"),
                _ => None,
            }),
            parts.get(1).and_then(|r| match *r {
                "vcek" => Some(CertRole::Vcek),
                "vlek" => Some(CertRole::Vlek),
                "ask" => Some(CertRole::Ask),
                "asvk" => Some(CertRole::Asvk),
                _ => None,
            }),
            parts
                .get(2)
                .and_then(|p| Product::ALL.into_iter().find(|x| x.kds_name() == *p)),
        ) else {
            tracing::warn!(KEY = %key, "unexpected key in the certificate store, skipping it");
            continue;
        };
        let cert = match Cert::from_pem_or_der(&der) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(KEY = %key, "stored certificate does not parse, skipping it: {e}");
                continue;
            }
        };
        let (chip_id, tcb) = match role {
            CertRole::Vcek => (
                parts.get(3).map(|h| h.chars().take(16).collect()),
                parts.get(4).map(|t| (*t).to_owned()),
            ),
            CertRole::Vlek => (None, parts.get(3).map(|t| (*t).to_owned())),
            _ => (None, None),
        };
        let hwid = match role {
            CertRole::Vcek => parts.get(3).map(|h| (*h).to_owned()),
            _ => None,
        };
        out.push(HeldEntry {
            key: raw_key,
            hwid,
            summary: CertSummary {
                role,
                product,
                chip_id,
                tcb,
                not_after: not_after(&cert),
                source,
                file: None,
                crl: None,
            },
        });
    }
    Ok(out)
}
