//! The certificates at hand for one verification, from whichever source.

use std::path::Path;

use super::cert::{Cert, CERT_MAX_SIZE};
use super::{table, CertError, CertRole};

/// The certificates available for verifying one report. Nothing in a
/// `CertSet` is trusted; [`super::verify_endorsement`] decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertSet {
    /// AMD Root Key certificate (must equal the pinned one when present).
    pub ark: Option<Cert>,
    /// AMD SEV Key certificate (issues VCEKs).
    pub ask: Option<Cert>,
    /// AMD SEV VLEK Key certificate (issues VLEKs).
    pub asvk: Option<Cert>,
    /// Versioned Chip Endorsement Key certificate.
    pub vcek: Option<Cert>,
    /// Versioned Loaded Endorsement Key certificate.
    pub vlek: Option<Cert>,
    /// Certificate revocation list of the ARK, DER or PEM, as received.
    pub crl: Option<Vec<u8>>,
}

/// Largest CRL accepted (AMD's are ~1 KiB).
pub(crate) const CRL_MAX_SIZE: usize = 256 * 1024;

impl CertSet {
    /// Reads a directory of certificates: `ark`, `ask`, `asvk`, `vcek`,
    /// `vlek` (each `.pem` or `.der`), KDS's `cert_chain.pem` (ASK+ARK or
    /// ASVK+ARK, told apart by subject name) and `crl.der` / `crl.pem`.
    /// Other files are ignored; a role given twice is an error.
    pub fn from_dir(dir: &Path) -> Result<Self, CertError> {
        let mut set = CertSet::default();
        let mut origin: [Option<String>; 6] = Default::default();
        for stem in ["ark", "ask", "asvk", "vcek", "vlek"] {
            for ext in ["pem", "der", "crt", "cer"] {
                let name = format!("{stem}.{ext}");
                let path = dir.join(&name);
                if !path.is_file() {
                    continue;
                }
                let bytes = read_bounded(&path, CERT_MAX_SIZE)?;
                let cert = Cert::parse(&bytes, &path.display().to_string())?;
                set.put(stem, cert, &name, &mut origin)?;
            }
        }
        let chain = dir.join("cert_chain.pem");
        if chain.is_file() {
            let bytes = read_bounded(&chain, 4 * CERT_MAX_SIZE)?;
            let what = chain.display().to_string();
            for cert in Cert::parse_many(&bytes, &what)? {
                // KDS's chain holds only CAs (ASK+ARK or ASVK+ARK).
                let stem = match cert.named_role() {
                    Some(CertRole::Ark) => "ark",
                    Some(CertRole::Ask) => "ask",
                    Some(CertRole::Asvk) => "asvk",
                    Some(CertRole::Vcek | CertRole::Vlek) | None => {
                        return Err(CertError::UnexpectedCert {
                            what,
                            subject: cert.subject_cn().unwrap_or_default(),
                        })
                    }
                };
                set.put(stem, cert, "cert_chain.pem", &mut origin)?;
            }
        }
        for name in ["crl.der", "crl.pem"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let bytes = read_bounded(&path, CRL_MAX_SIZE)?;
            if let Some(first) = &origin[5] {
                return Err(CertError::Duplicate {
                    role: "CRL",
                    first: first.clone(),
                    second: name.to_owned(),
                });
            }
            origin[5] = Some(name.to_owned());
            set.crl = Some(bytes);
        }
        Ok(set)
    }

    fn put(
        &mut self,
        stem: &str,
        cert: Cert,
        from: &str,
        origin: &mut [Option<String>; 6],
    ) -> Result<(), CertError> {
        let (i, role, slot) = match stem {
            "ark" => (0, "ARK", &mut self.ark),
            "ask" => (1, "ASK", &mut self.ask),
            "asvk" => (2, "ASVK", &mut self.asvk),
            "vcek" => (3, "VCEK", &mut self.vcek),
            _ => (4, "VLEK", &mut self.vlek),
        };
        if let Some(first) = &origin[i] {
            // The same certificate from two places (ark.pem and
            // cert_chain.pem) is harmless; two different ones are not.
            if slot.as_ref() == Some(&cert) {
                return Ok(());
            }
            return Err(CertError::Duplicate {
                role,
                first: first.clone(),
                second: from.to_owned(),
            });
        }
        origin[i] = Some(from.to_owned());
        *slot = Some(cert);
        Ok(())
    }

    /// Parses the GUID-keyed certificate table of an extended report or a
    /// configfs-tsm `auxblob`. Unknown GUIDs are ignored; every offset and
    /// length is bounds-checked; entries may not overlap.
    pub fn from_cert_table(table: &[u8]) -> Result<Self, CertError> {
        table::parse(table)
    }

    /// Fills the roles missing here from `other`; present ones are kept.
    pub fn merge(&mut self, other: CertSet) {
        fn fill<T>(slot: &mut Option<T>, other: Option<T>) {
            if slot.is_none() {
                *slot = other;
            }
        }
        fill(&mut self.ark, other.ark);
        fill(&mut self.ask, other.ask);
        fill(&mut self.asvk, other.asvk);
        fill(&mut self.vcek, other.vcek);
        fill(&mut self.vlek, other.vlek);
        fill(&mut self.crl, other.crl);
    }

    /// Whether no certificate and no CRL is present.
    pub fn is_empty(&self) -> bool {
        self == &CertSet::default()
    }
}

fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>, CertError> {
    use std::io::Read;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > limit {
        return Err(CertError::TooLarge {
            what: path.display().to_string(),
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}
