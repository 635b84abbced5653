//! A simulated platform persisted in a directory, so that a host tool can
//! create it once and sign launches with it later:
//!
//! - `platform.json`: format version, product, TCB and CHIP_ID;
//! - `ark.pem`, `ask.pem`, `asvk.pem`, `vcek.pem`, `vlek.pem`: the chain
//!   (`ark.pem` is the root a test daemon's `[[test_roots]]` trusts);
//! - `vcek-key.pem`, `vlek-key.pem`: the endorsement keys, PKCS#8, 0600;
//! - `ask-key.pem`: the ASK's RSA key, PKCS#8, 0600 (to issue VCEKs for
//!   more chips after loading);
//! - `ark-key.pem`: the ARK's RSA key, PKCS#8, 0600 (to sign CRLs after
//!   loading; optional when loading, for directories saved before it).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use der::pem::LineEnding;
use der::{Decode, Encode};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use super::{ec_spki, SimError, SimPlatform, SimTcb};
use snpguard::certs::Product;

/// Version of `platform.json`.
const PLATFORM_VERSION: u32 = 1;
/// Largest file [`SimPlatform::load`] reads.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformFile {
    version: u32,
    product: String,
    tcb: TcbFile,
    chip_id: String,
}

/// [`SimTcb`] as `platform.json` and the launch blob spell it.
#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct TcbFile {
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
    fmc: u8,
}

impl From<SimTcb> for TcbFile {
    fn from(t: SimTcb) -> Self {
        TcbFile {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        }
    }
}

impl From<TcbFile> for SimTcb {
    fn from(t: TcbFile) -> Self {
        SimTcb {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        }
    }
}

pub(super) fn malformed(what: impl Into<String>, reason: impl ToString) -> SimError {
    SimError::Malformed {
        what: what.into(),
        reason: reason.to_string(),
    }
}

pub(super) fn read_bounded(path: &Path) -> Result<Vec<u8>, SimError> {
    let io = |source| SimError::Io {
        path: path.to_owned(),
        source,
    };
    let len = fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE {
        return Err(malformed(
            path.display().to_string(),
            format!("{len} bytes is more than the {MAX_FILE} allowed"),
        ));
    }
    fs::read(path).map_err(io)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), SimError> {
    let io = |source| SimError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)
}

pub(super) fn cert_pem(der: &[u8]) -> Result<String, SimError> {
    der::pem::encode_string("CERTIFICATE", LineEnding::LF, der)
        .map_err(|e| malformed("certificate", e))
}

pub(super) fn cert_from_pem(what: &str, pem: &[u8]) -> Result<Vec<u8>, SimError> {
    let (label, der) = der::pem::decode_vec(pem).map_err(|e| malformed(what, e))?;
    if label != "CERTIFICATE" {
        return Err(malformed(
            what,
            format!("PEM label {label:?}, expected CERTIFICATE"),
        ));
    }
    Certificate::from_der(&der).map_err(|e| malformed(what, e))?;
    Ok(der)
}

pub(super) fn key_pem(key: &p384::ecdsa::SigningKey) -> Result<String, SimError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|s| s.to_string())
        .map_err(|e| malformed("endorsement key", e))
}

pub(super) fn key_from_pem(what: &str, pem: &[u8]) -> Result<p384::ecdsa::SigningKey, SimError> {
    let text = std::str::from_utf8(pem).map_err(|e| malformed(what, e))?;
    p384::ecdsa::SigningKey::from_pkcs8_pem(text).map_err(|e| malformed(what, e))
}

/// Checks that `key` is the private half of the key `cert_der` certifies.
pub(super) fn check_key_matches(
    what: &'static str,
    key: &p384::ecdsa::SigningKey,
    cert_der: &[u8],
) -> Result<(), SimError> {
    let cert = Certificate::from_der(cert_der).map_err(|e| malformed(what, e))?;
    let spki = ec_spki(key, what)?;
    let ours = spki
        .to_der()
        .map_err(|source| SimError::Der { cert: what, source })?;
    let theirs = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|source| SimError::Der { cert: what, source })?;
    if ours != theirs {
        return Err(malformed(
            what,
            "the private key does not belong to the certificate",
        ));
    }
    Ok(())
}

pub(super) fn parse_product(s: &str) -> Result<Product, SimError> {
    s.parse::<Product>()
        .map_err(|_| malformed("product", format!("{s:?} is not milan, genoa or turin")))
}

pub(super) fn parse_hex<const N: usize>(what: &str, s: &str) -> Result<[u8; N], SimError> {
    let v = hex::decode(s).map_err(|e| malformed(what, e))?;
    v.try_into()
        .map_err(|v: Vec<u8>| malformed(what, format!("{} bytes, expected {N}", v.len())))
}

impl SimPlatform {
    /// Writes the platform into `dir` (created 0700 if missing): the chain
    /// as PEM, the endorsement keys as PKCS#8 PEM (0600) and
    /// `platform.json` with `chip_id`, the CHIP_ID its reports carry.
    pub fn save(&self, dir: &Path, chip_id: &[u8; 64]) -> Result<(), SimError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SimError::Io {
                path: dir.to_owned(),
                source,
            })?;
        for (name, der) in [
            ("ark.pem", &self.ark_der),
            ("ask.pem", &self.ask_der),
            ("asvk.pem", &self.asvk_der),
            ("vcek.pem", &self.vcek_der),
            ("vlek.pem", &self.vlek_der),
        ] {
            write_file(&dir.join(name), cert_pem(der)?.as_bytes(), 0o644)?;
        }
        for (name, key) in [
            ("vcek-key.pem", &self.vcek_key),
            ("vlek-key.pem", &self.vlek_key),
        ] {
            let pem = zeroize::Zeroizing::new(key_pem(key)?);
            write_file(&dir.join(name), pem.as_bytes(), 0o600)?;
        }
        let ask_pem = self
            .ask_key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| malformed("ASK key", e))?;
        write_file(&dir.join("ask-key.pem"), ask_pem.as_bytes(), 0o600)?;
        if let Some(ark_key) = &self.ark_key {
            let ark_pem = ark_key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| malformed("ARK key", e))?;
            write_file(&dir.join("ark-key.pem"), ark_pem.as_bytes(), 0o600)?;
        }
        let meta = PlatformFile {
            version: PLATFORM_VERSION,
            product: self.product.to_string(),
            tcb: self.tcb.into(),
            chip_id: hex::encode(chip_id),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| malformed("platform.json", e))?;
        write_file(&dir.join("platform.json"), &json, 0o644)
    }

    /// Loads a platform [`SimPlatform::save`] wrote; returns it with its
    /// CHIP_ID. Every key is checked against its certificate.
    pub fn load(dir: &Path) -> Result<(SimPlatform, [u8; 64]), SimError> {
        let meta: PlatformFile = serde_json::from_slice(&read_bounded(&dir.join("platform.json"))?)
            .map_err(|e| malformed("platform.json", e))?;
        if meta.version != PLATFORM_VERSION {
            return Err(malformed(
                "platform.json",
                format!(
                    "version {} is not supported (expected {PLATFORM_VERSION})",
                    meta.version
                ),
            ));
        }
        let product = parse_product(&meta.product)?;
        let chip_id = parse_hex::<64>("platform.json chip_id", &meta.chip_id)?;
        let cert = |name: &str| cert_from_pem(name, &read_bounded(&dir.join(name))?);
        let key = |name: &str| key_from_pem(name, &read_bounded(&dir.join(name))?);
        let ask_der = cert("ask.pem")?;
        let ask_key = {
            let pem = zeroize::Zeroizing::new(read_bounded(&dir.join("ask-key.pem"))?);
            let text = std::str::from_utf8(&pem).map_err(|e| malformed("ask-key.pem", e))?;
            rsa::RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| malformed("ask-key.pem", e))?
        };
        let ask_cert = Certificate::from_der(&ask_der).map_err(|e| malformed("ask.pem", e))?;
        let ask_public = rsa::pkcs8::EncodePublicKey::to_public_key_der(&ask_key.to_public_key())
            .map_err(|e| malformed("ask-key.pem", e))?;
        let ask_spki = ask_cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|source| SimError::Der {
                cert: "ASK",
                source,
            })?;
        if ask_public.as_bytes() != ask_spki.as_slice() {
            return Err(malformed(
                "ask-key.pem",
                "the private key does not belong to the certificate",
            ));
        }
        let ask_name = ask_cert.tbs_certificate.subject.clone();
        let ark_der = cert("ark.pem")?;
        let ark_cert = Certificate::from_der(&ark_der).map_err(|e| malformed("ark.pem", e))?;
        let ark_key_path = dir.join("ark-key.pem");
        let ark_key = if ark_key_path.exists() {
            let pem = zeroize::Zeroizing::new(read_bounded(&ark_key_path)?);
            let text = std::str::from_utf8(&pem).map_err(|e| malformed("ark-key.pem", e))?;
            let k = rsa::RsaPrivateKey::from_pkcs8_pem(text)
                .map_err(|e| malformed("ark-key.pem", e))?;
            let public = rsa::pkcs8::EncodePublicKey::to_public_key_der(&k.to_public_key())
                .map_err(|e| malformed("ark-key.pem", e))?;
            let spki = ark_cert
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|source| SimError::Der {
                    cert: "ARK",
                    source,
                })?;
            if public.as_bytes() != spki.as_slice() {
                return Err(malformed(
                    "ark-key.pem",
                    "the private key does not belong to the certificate",
                ));
            }
            Some(k)
        } else {
            None
        };
        let platform = SimPlatform {
            product,
            tcb: meta.tcb.into(),
            ark_der,
            ark_key,
            ark_name: ark_cert.tbs_certificate.subject.clone(),
            ask_der,
            asvk_der: cert("asvk.pem")?,
            vcek_der: cert("vcek.pem")?,
            vlek_der: cert("vlek.pem")?,
            vcek_key: key("vcek-key.pem")?,
            vlek_key: key("vlek-key.pem")?,
            ask_key,
            ask_name,
        };
        check_key_matches("VCEK", &platform.vcek_key, &platform.vcek_der)?;
        check_key_matches("VLEK", &platform.vlek_key, &platform.vlek_der)?;
        Ok((platform, chip_id))
    }
}
