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
//!
//! A VCEK for a chip at a TCB never changes, so cached entries never
//! expire; validity dates are still checked at every verification.
//! Nothing here is trusted: every certificate goes through the chain
//! verification against the pinned roots. ARKs are not imported (the
//! roots are built in, or configured test roots).

use der::asn1::Ia5StringRef;
use der::Decode;
use snpguard::certs::{oid, Cert, CertSet, KeyKind, Product};
use snpguard::report::TcbParts;

use crate::store::{Op, Store, StoreError, Tree};

/// Most certificates one import call takes.
pub const MAX_IMPORT_CERTS: usize = 64;

/// Why an import was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum CertImportError {
    /// A file holds no parsable certificate.
    #[error("file {file}: {reason}")]
    Malformed {
        /// Index of the file in the call.
        file: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate that is no AMD VCEK, VLEK, ASK or ASVK.
    #[error("file {file}: certificate {subject:?} is not an AMD VCEK, VLEK, ASK or ASVK")]
    Unrecognized {
        /// Index of the file in the call.
        file: usize,
        /// Its subject common name.
        subject: String,
    },
    /// A VCEK/VLEK whose AMD extensions cannot be read.
    #[error("file {file}: {reason}")]
    Extension {
        /// Index of the file in the call.
        file: usize,
        /// What is wrong.
        reason: String,
    },
    /// Too many certificates at once.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Caches a VCEK fetched from KDS (call only after its chain verified).
pub fn cache_vcek(
    store: &dyn Store,
    product: Product,
    hwid: &[u8],
    tcb: &TcbParts,
    der: &[u8],
) -> Result<(), StoreError> {
    store.put(Tree::Certs, &vcek_key("kds", product, hwid, tcb), der)
}

/// Splits a file into certificates: DER, or every PEM `CERTIFICATE`
/// block (KDS's `cert_chain` holds two).
fn split(bytes: &[u8], file: usize) -> Result<Vec<Cert>, CertImportError> {
    let malformed = |reason: String| CertImportError::Malformed { file, reason };
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN ") {
        return Ok(vec![
            Cert::from_pem_or_der(bytes).map_err(|e| malformed(e.to_string()))?
        ]);
    }
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
    Ok(certs)
}

fn extension(cert: &Cert, id: const_oid::ObjectIdentifier) -> Option<&[u8]> {
    cert.x509()
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == id)
        .map(|e| e.extn_value.as_bytes())
}

/// The product of an endorsement certificate: its productName
/// ("Milan-B0"), else its issuer ("SEV-Milan", "SEV-VLEK-Milan").
fn endorsement_product(cert: &Cert) -> Option<Product> {
    let from_name = |name: &str| {
        let base = name.split('-').next().unwrap_or(name);
        Product::ALL.into_iter().find(|p| p.kds_name() == base)
    };
    if let Some(raw) = extension(cert, oid::PRODUCT_NAME) {
        return Ia5StringRef::from_der(raw)
            .ok()
            .and_then(|s| from_name(s.as_str()));
    }
    let issuer = cert.issuer_cn()?;
    let base = issuer
        .strip_prefix("SEV-VLEK-")
        .or_else(|| issuer.strip_prefix("SEV-"))?;
    from_name(base)
}

fn spl(cert: &Cert, id: const_oid::ObjectIdentifier) -> Option<u8> {
    u8::from_der(extension(cert, id)?).ok()
}

fn endorsement_tcb(cert: &Cert, product: Product) -> Option<TcbParts> {
    Some(TcbParts {
        bootloader: spl(cert, oid::BL_SPL)?,
        tee: spl(cert, oid::TEE_SPL)?,
        snp: spl(cert, oid::SNP_SPL)?,
        microcode: spl(cert, oid::UCODE_SPL)?,
        fmc: if product.has_fmc() {
            Some(spl(cert, oid::FMC_SPL)?)
        } else {
            None
        },
    })
}

fn product_of_intermediate(cn: &str, prefix: &str) -> Option<Product> {
    let name = cn.strip_prefix(prefix)?;
    Product::ALL.into_iter().find(|p| p.kds_name() == name)
}

/// Where one imported certificate goes, or `None` for an ARK (skipped).
fn import_key(cert: &Cert, file: usize) -> Result<Option<Vec<u8>>, CertImportError> {
    let subject = cert.subject_cn().unwrap_or_default();
    let ext_err = |reason: String| CertImportError::Extension { file, reason };
    let endorsement = |kind: &str| {
        let product = endorsement_product(cert).ok_or_else(|| {
            ext_err(format!(
                "the {kind}'s product is unknown (no productName and no SEV-<product> issuer)"
            ))
        })?;
        let tcb = endorsement_tcb(cert, product).ok_or_else(|| {
            ext_err(format!(
                "the {kind}'s TCB extensions are missing or malformed"
            ))
        })?;
        Ok::<_, CertImportError>((product, tcb))
    };
    match subject.as_str() {
        "SEV-VCEK" => {
            let (product, tcb) = endorsement("VCEK")?;
            let hwid = extension(cert, oid::HW_ID)
                .filter(|h| h.len() == product.hwid_len())
                .ok_or_else(|| {
                    ext_err(format!(
                        "the VCEK's hwID is missing or not {} bytes",
                        product.hwid_len()
                    ))
                })?;
            Ok(Some(vcek_key("import", product, hwid, &tcb)))
        }
        "SEV-VLEK" => {
            let (product, tcb) = endorsement("VLEK")?;
            Ok(Some(vlek_key(product, &tcb)))
        }
        cn => {
            if let Some(p) = product_of_intermediate(cn, "ARK-") {
                tracing::info!(product = %p, "not importing an ARK: roots are built in");
                Ok(None)
            } else if let Some(p) = product_of_intermediate(cn, "SEV-VLEK-") {
                Ok(Some(intermediate_key("asvk", p)))
            } else if let Some(p) = product_of_intermediate(cn, "SEV-") {
                Ok(Some(intermediate_key("ask", p)))
            } else {
                Err(CertImportError::Unrecognized {
                    file,
                    subject: cn.chars().take(64).collect(),
                })
            }
        }
    }
}

/// Imports certificates (each file DER or PEM, possibly several PEM
/// blocks) in one transaction: all or none. Returns how many were stored
/// (ARKs are skipped). A later import of the same key replaces it.
pub fn import(store: &dyn Store, files: &[Vec<u8>]) -> Result<usize, CertImportError> {
    let mut ops = Vec::new();
    for (file, bytes) in files.iter().enumerate() {
        for cert in split(bytes, file)? {
            if let Some(key) = import_key(&cert, file)? {
                ops.push(Op::put(Tree::Certs, key, cert.der()));
            }
            if ops.len() > MAX_IMPORT_CERTS {
                return Err(CertImportError::TooMany);
            }
        }
    }
    if !ops.is_empty() {
        store.transaction(&ops)?;
    }
    Ok(ops.len())
}
