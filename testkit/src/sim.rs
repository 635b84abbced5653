//! A simulated SEV-SNP platform: a test-only certificate chain shaped like
//! AMD's, and a report signer, generated at run time.
//!
//! **Test use only.** Nothing in this module is ever trusted by a
//! production configuration: the root it generates is a fresh, throw-away
//! key with no relation to AMD's pinned ARKs, and a verifier only accepts
//! it when a test (or a daemon started by a test, explicitly and loudly
//! configured to trust it) hands it over. It lives in the test kit
//! (`publish = false`), outside the trust core: the daemon's, the CLI's
//! and the agent's tests share it, and only the agent's `simulator` build
//! (the QEMU tests' agent, refused by `make install`) links it to sign its
//! simulated reports.
//!
//! The chain mirrors the real one certificate by certificate (checked
//! against AMD's certificates and KDS-issued VCEKs/VLEKs in
//! `../shared/testdata/snp`):
//!
//! - ARK: RSA, self-signed, serial 0x10000, key usage certSign + cRLSign,
//!   CA. ASK (CN `SEV-<product>`, serial 0x10001) and ASVK
//!   (CN `SEV-VLEK-<product>`, serial 0x10101): RSA, signed by the ARK,
//!   CA with path length 0, key usage certSign. AMD's keys are RSA-4096;
//!   these are [`RSA_BITS`] (2048) so that generating a chain takes well
//!   under a second in a debug build. Nothing in the verifier depends on
//!   the modulus size.
//! - VCEK (signed by the ASK) and VLEK (signed by the ASVK): EC P-384,
//!   serial 0, carrying AMD's extensions under 1.3.6.1.4.1.3704.1 in the
//!   order and encoding KDS uses: structVersion, productName, the SPL
//!   values (`fmcSPL` on Turin only; `spl_4` absent on Turin), the hwID
//!   (VCEK) or the cspID (VLEK).
//! - Every signature is RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
//!   The AlgorithmIdentifier parameters are AMD's bytes: the ARK, ASK and
//!   ASVK spell out the default trailer field as AMD's roots do; the VCEK
//!   and VLEK omit it as current KDS certificates do. A verifier therefore
//!   sees both encodings.
//! - Names keep AMD's shape and the common names the verifier derives the
//!   product from (`ARK-Milan`, `SEV-Milan`, `SEV-VCEK`, ...), but the
//!   organisation and organisational unit say [`SIM_ORGANIZATION`] and
//!   [`SIM_ORGANIZATIONAL_UNIT`], so no one mistakes a simulated
//!   certificate for AMD's.
//! - Validity: 2020-01-01 to 2045-01-01 for every certificate, so tests
//!   that do not pin a time keep passing; expiry tests pin a time outside
//!   that window.
//!
//! The CRL distribution point extension of AMD's CA certificates is left
//! out: it would name AMD's KDS, which has no CRL for these keys.

use std::fmt;
use std::io;
use std::path::Path;

use snpguard::certs::Product;

use const_oid::db::rfc4519;
use const_oid::ObjectIdentifier;
use der::asn1::{BitString, Ia5StringRef, OctetString, PrintableStringRef, SetOfVec, UtcTime};
use der::{Any, DateTime, Decode, Encode};
use p384::ecdsa::signature::Signer;
use rand_core::OsRng;
use rsa::pkcs8::EncodePublicKey;
use rsa::{Pss, RsaPrivateKey};
use sha2::{Digest, Sha256, Sha384};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};

use snpguard::report::{REPORT_SIZE, SIGNED_LEN};

/// Modulus size of the simulated ARK, ASK and ASVK (AMD's are 4096 bits;
/// smaller keeps key generation fast in tests).
pub const RSA_BITS: usize = 2048;

/// Organisation (O) of every simulated certificate; AMD's say
/// "Advanced Micro Devices".
pub const SIM_ORGANIZATION: &str = "SnpGuard TEST - not Advanced Micro Devices";

/// Organisational unit (OU) of every simulated certificate; AMD's say
/// "Engineering".
pub const SIM_ORGANIZATIONAL_UNIT: &str = "SnpGuard TEST";

/// The cspID extension of the simulated VLEK (real VLEKs name the cloud
/// provider, e.g. `CN=cc-us-east-2.amazonaws.com`).
pub const SIM_VLEK_CSP_ID: &str = "CN=snpguard-test.invalid";

/// id-RSASSA-PSS parameters as AMD's ARK and ASK encode them: SHA-384,
/// MGF1 with SHA-384, salt length 48, and the default trailer field 1
/// spelled out.
const PSS_PARAMS_EXPLICIT_TRAILER: [u8; 59] = [
    0x30, 0x39, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];

/// The same parameters as current KDS-issued VCEKs and VLEKs encode them:
/// the default trailer field omitted, as DER requires.
const PSS_PARAMS_DEFAULT_TRAILER: [u8; 54] = [
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x02, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x30,
];

/// Failure to generate the simulated platform or to sign with it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The hwID has the wrong length for the product.
    #[error("hwID for {product} must be {expected} bytes (got {got}); pass the report's CHIP_ID (Turin: its first 8 bytes)")]
    HwidLength {
        /// The simulated product.
        product: Product,
        /// The length AMD uses for that product.
        expected: usize,
        /// The length passed.
        got: usize,
    },
    /// RSA key generation failed.
    #[error("generating the simulated {cert} RSA key: {source}")]
    RsaKey {
        /// Which certificate's key.
        cert: &'static str,
        /// The RSA error.
        source: rsa::Error,
    },
    /// RSA-PSS signing of a certificate failed.
    #[error("signing the simulated {cert} certificate: {source}")]
    RsaSign {
        /// Which certificate.
        cert: &'static str,
        /// The RSA error.
        source: rsa::Error,
    },
    /// Encoding a public key as SubjectPublicKeyInfo failed.
    #[error("encoding the simulated {cert} public key: {source}")]
    PublicKey {
        /// Which certificate.
        cert: &'static str,
        /// The SPKI error.
        source: x509_cert::spki::Error,
    },
    /// DER encoding of a certificate part failed.
    #[error("encoding the simulated {cert} certificate: {source}")]
    Der {
        /// Which certificate.
        cert: &'static str,
        /// The DER error.
        source: der::Error,
    },
    /// Reading or writing a persisted platform or launch blob failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A persisted platform or launch blob is malformed.
    #[error("{what}: {reason}")]
    Malformed {
        /// What was being read (a file name or field).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// ECDSA signing of a report failed.
    #[error("signing the simulated report with the {key:?}: {source}")]
    ReportSign {
        /// The endorsement key used.
        key: SimKey,
        /// The ECDSA error.
        source: p384::ecdsa::Error,
    },
    /// A platform loaded without its ARK key cannot issue a CRL.
    #[error("this simulated platform was saved without its ARK key (ark-key.pem), so it cannot sign a CRL; create it again with snpguard-sim init")]
    NoArkKey,
}

/// An intermediate of the simulated chain, as a CRL lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimCa {
    /// The ASK (issues VCEKs).
    Ask,
    /// The ASVK (issues VLEKs).
    Asvk,
}

/// The productName extension of a VCEK ("Milan-B0" as on KDS-issued
/// Milan VCEKs; Genoa and Turin VCEKs carry the bare name).
fn vcek_product_name(product: Product) -> &'static str {
    match product {
        Product::Milan => "Milan-B0",
        Product::Genoa | Product::Turin => product.kds_name(),
    }
}

/// The structVersion extension (1 on Turin, whose TCB layout differs).
fn struct_version(product: Product) -> u8 {
    match product {
        Product::Milan | Product::Genoa => 0,
        Product::Turin => 1,
    }
}

/// The security patch levels the simulated platform runs at, as they
/// appear in the VCEK/VLEK extensions and (via [`tcb_bytes`]) in a report's
/// TCB_VERSION fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimTcb {
    /// Boot loader SPL (blSPL).
    pub bootloader: u8,
    /// PSP OS SPL (teeSPL).
    pub tee: u8,
    /// SNP firmware SPL (snpSPL).
    pub snp: u8,
    /// Microcode SPL (ucodeSPL).
    pub microcode: u8,
    /// Firmware SPL (fmcSPL); Turin only, ignored for Milan and Genoa.
    pub fmc: u8,
}

/// Encodes `tcb` as a TCB_VERSION value for `product` (the report stores it
/// little-endian): Milan and Genoa put the boot loader, TEE, SNP and
/// microcode SPLs in bytes 0, 1, 6 and 7; Turin puts FMC, boot loader,
/// TEE and SNP in bytes 0 to 3 and microcode in byte 7.
pub fn tcb_bytes(product: Product, tcb: SimTcb) -> u64 {
    let mut b = [0u8; 8];
    match product {
        Product::Milan | Product::Genoa => {
            b[0] = tcb.bootloader;
            b[1] = tcb.tee;
            b[6] = tcb.snp;
        }
        Product::Turin => {
            b[0] = tcb.fmc;
            b[1] = tcb.bootloader;
            b[2] = tcb.tee;
            b[3] = tcb.snp;
        }
    }
    b[7] = tcb.microcode;
    u64::from_le_bytes(b)
}

/// Which endorsement key signs a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimKey {
    /// The chip's VCEK (report KEY_INFO.SIGNING_KEY = 0).
    Vcek,
    /// The provider's VLEK (report KEY_INFO.SIGNING_KEY = 1).
    Vlek,
}

/// A simulated platform: its certificate chain (DER) and the private keys
/// of its two endorsement keys. Generated fresh by [`SimPlatform::generate`];
/// [`SimPlatform::save`] and [`SimPlatform::load`] persist one in a
/// directory (the `snpguard-sim` tool's `init`).
#[derive(Clone)]
pub struct SimPlatform {
    /// The product the chain is issued for.
    pub product: Product,
    /// The TCB the VCEK and VLEK are issued for.
    pub tcb: SimTcb,
    /// Self-signed root, CN `ARK-<product>`.
    pub ark_der: Vec<u8>,
    /// Intermediate signing VCEKs, CN `SEV-<product>`.
    pub ask_der: Vec<u8>,
    /// Intermediate signing VLEKs, CN `SEV-VLEK-<product>`.
    pub asvk_der: Vec<u8>,
    /// Chip endorsement key, CN `SEV-VCEK`, signed by the ASK.
    pub vcek_der: Vec<u8>,
    /// Loaded endorsement key, CN `SEV-VLEK`, signed by the ASVK.
    pub vlek_der: Vec<u8>,
    vcek_key: p384::ecdsa::SigningKey,
    vlek_key: p384::ecdsa::SigningKey,
    /// The ASK's key and name, to issue VCEKs for more chips.
    ask_key: RsaPrivateKey,
    ask_name: Name,
    /// The ARK's key (to sign CRLs; absent when loaded from a directory
    /// saved without it) and name.
    ark_key: Option<RsaPrivateKey>,
    ark_name: Name,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("product", &self.product)
            .field("tcb", &self.tcb)
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// Generates a fresh ARK, ASK, ASVK, VCEK and VLEK for `product` at
    /// `tcb`. `hwid` is the VCEK's hwID: the report's 64-byte CHIP_ID on
    /// Milan and Genoa, its first 8 bytes on Turin.
    pub fn generate(product: Product, tcb: SimTcb, hwid: &[u8]) -> Result<Self, SimError> {
        if hwid.len() != product.hwid_len() {
            return Err(SimError::HwidLength {
                product,
                expected: product.hwid_len(),
                got: hwid.len(),
            });
        }
        let validity = validity()?;
        let p = product.kds_name();

        let ark_key = rsa_key("ARK")?;
        let ark_name = amd_name(&format!("ARK-{p}"), "ARK")?;
        let ark_spki = rsa_spki(&ark_key, "ARK")?;
        let ark_kid = key_id(&ark_spki);
        let ark_der = issue(
            Tbs {
                cert: "ARK",
                serial: 0x10000,
                issuer: &ark_name,
                subject: ark_name.clone(),
                validity,
                spki: ark_spki,
                extensions: vec![
                    ext(
                        &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign),
                        "ARK",
                    )?,
                    ext(&subject_key_id(&ark_kid, "ARK")?, "ARK")?,
                    ext(&ca(None), "ARK")?,
                ],
            },
            &ark_key,
            &PSS_PARAMS_EXPLICIT_TRAILER,
        )?;

        let intermediate = |cert: &'static str, cn: String, serial: u32| {
            let key = rsa_key(cert)?;
            let name = amd_name(&cn, cert)?;
            let spki = rsa_spki(&key, cert)?;
            let kid = key_id(&spki);
            let der = issue(
                Tbs {
                    cert,
                    serial,
                    issuer: &ark_name,
                    subject: name.clone(),
                    validity,
                    spki,
                    extensions: vec![
                        ext(&subject_key_id(&kid, cert)?, cert)?,
                        ext(&authority_key_id(&ark_kid, cert)?, cert)?,
                        ext(&ca(Some(0)), cert)?,
                        ext(&KeyUsage(KeyUsages::KeyCertSign.into()), cert)?,
                    ],
                },
                &ark_key,
                &PSS_PARAMS_EXPLICIT_TRAILER,
            )?;
            Ok::<_, SimError>((key, name, der))
        };
        let (ask_key, ask_name, ask_der) = intermediate("ASK", format!("SEV-{p}"), 0x10001)?;
        let (asvk_key, asvk_name, asvk_der) =
            intermediate("ASVK", format!("SEV-VLEK-{p}"), 0x10101)?;

        let (vcek_key, vcek_der) = issue_vcek(product, tcb, hwid, &ask_key, &ask_name)?;

        let vlek_key = p384::ecdsa::SigningKey::random(&mut OsRng);
        let mut vlek_ext = amd_extensions(product, product.kds_name(), tcb, "VLEK")?;
        let csp = Ia5StringRef::new(SIM_VLEK_CSP_ID)
            .and_then(|s| s.to_der())
            .map_err(|source| SimError::Der {
                cert: "VLEK",
                source,
            })?;
        vlek_ext.push(raw_ext(snpguard::certs::oid::CSP_ID, &csp, "VLEK")?);
        let vlek_der = issue(
            Tbs {
                cert: "VLEK",
                serial: 0,
                issuer: &asvk_name,
                subject: amd_name("SEV-VLEK", "VLEK")?,
                validity,
                spki: ec_spki(&vlek_key, "VLEK")?,
                extensions: vlek_ext,
            },
            &asvk_key,
            &PSS_PARAMS_DEFAULT_TRAILER,
        )?;

        Ok(SimPlatform {
            product,
            tcb,
            ark_der,
            ask_der,
            asvk_der,
            vcek_der,
            vlek_der,
            vcek_key,
            vlek_key,
            ask_key,
            ask_name,
            ark_key: Some(ark_key),
            ark_name,
        })
    }

    /// A CRL of the ARK (RSASSA-PSS SHA-384 like AMD's), revoking the
    /// intermediates `revoked`, current from `this_update` to
    /// `next_update`.
    pub fn issue_crl(
        &self,
        revoked: &[SimCa],
        this_update: time::OffsetDateTime,
        next_update: time::OffsetDateTime,
    ) -> Result<Vec<u8>, SimError> {
        use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
        let key = self.ark_key.as_ref().ok_or(SimError::NoArkKey)?;
        let der_err = |source| SimError::Der {
            cert: "CRL",
            source,
        };
        let at = |t: time::OffsetDateTime| {
            let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
            UtcTime::from_unix_duration(std::time::Duration::from_secs(secs))
                .map(Time::UtcTime)
                .map_err(der_err)
        };
        let mut entries = Vec::new();
        for ca in revoked {
            let der = match ca {
                SimCa::Ask => &self.ask_der,
                SimCa::Asvk => &self.asvk_der,
            };
            let cert = Certificate::from_der(der).map_err(der_err)?;
            entries.push(RevokedCert {
                serial_number: cert.tbs_certificate.serial_number.clone(),
                revocation_date: at(this_update)?,
                crl_entry_extensions: None,
            });
        }
        let algorithm = AlgorithmIdentifierOwned {
            oid: const_oid::db::rfc5912::ID_RSASSA_PSS,
            parameters: Some(Any::from_der(&PSS_PARAMS_EXPLICIT_TRAILER).map_err(der_err)?),
        };
        let tbs = TbsCertList {
            version: Version::V2,
            signature: algorithm.clone(),
            issuer: self.ark_name.clone(),
            this_update: at(this_update)?,
            next_update: Some(at(next_update)?),
            revoked_certificates: (!entries.is_empty()).then_some(entries),
            crl_extensions: None,
        };
        let to_sign = tbs.to_der().map_err(der_err)?;
        let signature = key
            .sign_with_rng(&mut OsRng, Pss::new::<Sha384>(), &Sha384::digest(&to_sign))
            .map_err(|source| SimError::RsaSign {
                cert: "CRL",
                source,
            })?;
        CertificateList {
            tbs_cert_list: tbs,
            signature_algorithm: algorithm,
            signature: BitString::from_bytes(&signature).map_err(der_err)?,
        }
        .to_der()
        .map_err(der_err)
    }

    /// Another chip of the same platform: a fresh VCEK for `hwid` at the
    /// same TCB, issued by the same ASK under the same ARK (the VLEK is
    /// shared, as a cloud provider's is).
    pub fn another_chip(&self, hwid: &[u8]) -> Result<Self, SimError> {
        if hwid.len() != self.product.hwid_len() {
            return Err(SimError::HwidLength {
                product: self.product,
                expected: self.product.hwid_len(),
                got: hwid.len(),
            });
        }
        let (vcek_key, vcek_der) =
            issue_vcek(self.product, self.tcb, hwid, &self.ask_key, &self.ask_name)?;
        Ok(SimPlatform {
            vcek_der,
            vcek_key,
            ..self.clone()
        })
    }

    /// The public half of the VCEK or VLEK.
    pub fn verifying_key(&self, key: SimKey) -> p384::ecdsa::VerifyingKey {
        *self.signing_key(key).verifying_key()
    }

    /// Signs `report` in place as the firmware does: ECDSA P-384 with
    /// SHA-384 over bytes `0x000..0x2A0`; r and s written as 72-byte
    /// little-endian integers at 0x2A0 and 0x2E8 (upper 24 bytes zero), the
    /// rest of the signature area zeroed. The report's own fields
    /// (KEY_INFO, CHIP_ID, TCBs ...) are left as the caller set them.
    pub fn sign_report(&self, report: &mut [u8; REPORT_SIZE], key: SimKey) -> Result<(), SimError> {
        sign_report_with(self.signing_key(key), key, report)
    }

    /// Writes the chain as `ark.der`, `ask.der`, `asvk.der`, `vcek.der` and
    /// `vlek.der` into `dir`, creating it if needed.
    pub fn write_certs_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, der) in [
            ("ark.der", &self.ark_der),
            ("ask.der", &self.ask_der),
            ("asvk.der", &self.asvk_der),
            ("vcek.der", &self.vcek_der),
            ("vlek.der", &self.vlek_der),
        ] {
            std::fs::write(dir.join(name), der)?;
        }
        Ok(())
    }

    fn signing_key(&self, key: SimKey) -> &p384::ecdsa::SigningKey {
        match key {
            SimKey::Vcek => &self.vcek_key,
            SimKey::Vlek => &self.vlek_key,
        }
    }
}

/// Signs `report` with `signer` as [`SimPlatform::sign_report`] describes.
fn sign_report_with(
    signer: &p384::ecdsa::SigningKey,
    key: SimKey,
    report: &mut [u8; REPORT_SIZE],
) -> Result<(), SimError> {
    let sig: p384::ecdsa::Signature = signer
        .try_sign(&report[..SIGNED_LEN])
        .map_err(|source| SimError::ReportSign { key, source })?;
    let (r, s) = sig.split_bytes();
    report[SIGNED_LEN..].fill(0);
    for (i, b) in r.iter().rev().enumerate() {
        report[0x2A0 + i] = *b;
    }
    for (i, b) in s.iter().rev().enumerate() {
        report[0x2E8 + i] = *b;
    }
    Ok(())
}

/// Everything of a certificate except its signature.
/// A fresh VCEK key and its certificate for chip `hwid` at `tcb`.
fn issue_vcek(
    product: Product,
    tcb: SimTcb,
    hwid: &[u8],
    ask_key: &RsaPrivateKey,
    ask_name: &Name,
) -> Result<(p384::ecdsa::SigningKey, Vec<u8>), SimError> {
    let vcek_key = p384::ecdsa::SigningKey::random(&mut OsRng);
    let mut vcek_ext = amd_extensions(product, vcek_product_name(product), tcb, "VCEK")?;
    vcek_ext.push(raw_ext(snpguard::certs::oid::HW_ID, hwid, "VCEK")?);
    let vcek_der = issue(
        Tbs {
            cert: "VCEK",
            serial: 0,
            issuer: ask_name,
            subject: amd_name("SEV-VCEK", "VCEK")?,
            validity: validity()?,
            spki: ec_spki(&vcek_key, "VCEK")?,
            extensions: vcek_ext,
        },
        ask_key,
        &PSS_PARAMS_DEFAULT_TRAILER,
    )?;
    Ok((vcek_key, vcek_der))
}

struct Tbs<'a> {
    cert: &'static str,
    serial: u32,
    issuer: &'a Name,
    subject: Name,
    validity: Validity,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Vec<Extension>,
}

/// Assembles, signs (RSASSA-PSS/SHA-384 with `signer`) and encodes a
/// certificate. `pss_params` is one of the two AMD encodings above.
fn issue(tbs: Tbs<'_>, signer: &RsaPrivateKey, pss_params: &[u8]) -> Result<Vec<u8>, SimError> {
    let cert = tbs.cert;
    let der_err = |source| SimError::Der { cert, source };
    let algorithm = AlgorithmIdentifierOwned {
        oid: const_oid::db::rfc5912::ID_RSASSA_PSS,
        parameters: Some(Any::from_der(pss_params).map_err(der_err)?),
    };
    let tbs_certificate = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(tbs.serial),
        signature: algorithm.clone(),
        issuer: tbs.issuer.clone(),
        validity: tbs.validity,
        subject: tbs.subject,
        subject_public_key_info: tbs.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(tbs.extensions),
    };
    let to_sign = tbs_certificate.to_der().map_err(der_err)?;
    let signature = signer
        .sign_with_rng(&mut OsRng, Pss::new::<Sha384>(), &Sha384::digest(&to_sign))
        .map_err(|source| SimError::RsaSign { cert, source })?;
    Certificate {
        tbs_certificate,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)
}

/// AMD's extensions common to VCEK and VLEK, in KDS order: structVersion,
/// productName, then the SPLs (Turin: fmc, bl, tee, snp, 5, 6, 7, ucode;
/// Milan/Genoa: bl, tee, 4, 5, 6, 7, snp, ucode).
fn amd_extensions(
    product: Product,
    product_name: &str,
    tcb: SimTcb,
    cert: &'static str,
) -> Result<Vec<Extension>, SimError> {
    let spls: &[(ObjectIdentifier, u8)] = match product {
        Product::Milan | Product::Genoa => &[
            (snpguard::certs::oid::BL_SPL, tcb.bootloader),
            (snpguard::certs::oid::TEE_SPL, tcb.tee),
            (snpguard::certs::oid::SPL_4, 0),
            (snpguard::certs::oid::SPL_5, 0),
            (snpguard::certs::oid::SPL_6, 0),
            (snpguard::certs::oid::SPL_7, 0),
            (snpguard::certs::oid::SNP_SPL, tcb.snp),
            (snpguard::certs::oid::UCODE_SPL, tcb.microcode),
        ],
        Product::Turin => &[
            (snpguard::certs::oid::FMC_SPL, tcb.fmc),
            (snpguard::certs::oid::BL_SPL, tcb.bootloader),
            (snpguard::certs::oid::TEE_SPL, tcb.tee),
            (snpguard::certs::oid::SNP_SPL, tcb.snp),
            (snpguard::certs::oid::SPL_5, 0),
            (snpguard::certs::oid::SPL_6, 0),
            (snpguard::certs::oid::SPL_7, 0),
            (snpguard::certs::oid::UCODE_SPL, tcb.microcode),
        ],
    };
    let der_err = |source| SimError::Der { cert, source };
    let name = Ia5StringRef::new(product_name)
        .and_then(|s| s.to_der())
        .map_err(der_err)?;
    let mut out = vec![
        raw_ext(
            snpguard::certs::oid::STRUCT_VERSION,
            &struct_version(product).to_der().map_err(der_err)?,
            cert,
        )?,
        raw_ext(snpguard::certs::oid::PRODUCT_NAME, &name, cert)?,
    ];
    for (id, value) in spls {
        out.push(raw_ext(*id, &value.to_der().map_err(der_err)?, cert)?);
    }
    Ok(out)
}

/// A non-critical extension whose OCTET STRING holds `value` as is.
fn raw_ext(
    extn_id: ObjectIdentifier,
    value: &[u8],
    cert: &'static str,
) -> Result<Extension, SimError> {
    Ok(Extension {
        extn_id,
        critical: false,
        extn_value: OctetString::new(value).map_err(|source| SimError::Der { cert, source })?,
    })
}

/// A standard extension, critical where RFC 5280 (and AMD) make it so.
fn ext<E: AsExtension>(e: &E, cert: &'static str) -> Result<Extension, SimError> {
    e.to_extension(&Name::default(), &[])
        .map_err(|source| SimError::Der { cert, source })
}

fn ca(path_len_constraint: Option<u8>) -> BasicConstraints {
    BasicConstraints {
        ca: true,
        path_len_constraint,
    }
}

fn subject_key_id(
    kid: &[u8],
    cert: &'static str,
) -> Result<x509_cert::ext::pkix::SubjectKeyIdentifier, SimError> {
    Ok(x509_cert::ext::pkix::SubjectKeyIdentifier(
        OctetString::new(kid).map_err(|source| SimError::Der { cert, source })?,
    ))
}

fn authority_key_id(kid: &[u8], cert: &'static str) -> Result<AuthorityKeyIdentifier, SimError> {
    Ok(AuthorityKeyIdentifier {
        key_identifier: Some(
            OctetString::new(kid).map_err(|source| SimError::Der { cert, source })?,
        ),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    })
}

/// A key identifier: SHA-256 of the subjectPublicKey bits truncated to 160
/// bits (RFC 7093 method 1; the SHA-1 of RFC 5280 would need another
/// dependency and nothing compares the value with AMD's).
fn key_id(spki: &SubjectPublicKeyInfoOwned) -> [u8; 20] {
    let digest = Sha256::digest(spki.subject_public_key.raw_bytes());
    let mut kid = [0u8; 20];
    kid.copy_from_slice(&digest[..20]);
    kid
}

/// AMD's subject/issuer shape (OU, C, L, ST, O, CN; UTF8String except the
/// PrintableString country) with the simulator's O and OU.
fn amd_name(cn: &str, cert: &'static str) -> Result<Name, SimError> {
    let der_err = |source| SimError::Der { cert, source };
    let utf8 = |s: &str| Any::new(der::Tag::Utf8String, s.as_bytes());
    let rdns = [
        (rfc4519::OU, utf8(SIM_ORGANIZATIONAL_UNIT)),
        (
            rfc4519::C,
            PrintableStringRef::new("US").and_then(|s| Any::encode_from(&s)),
        ),
        (rfc4519::L, utf8("Santa Clara")),
        (rfc4519::ST, utf8("CA")),
        (rfc4519::O, utf8(SIM_ORGANIZATION)),
        (rfc4519::CN, utf8(cn)),
    ];
    let mut seq = Vec::with_capacity(rdns.len());
    for (oid, value) in rdns {
        let atv = AttributeTypeAndValue {
            oid,
            value: value.map_err(der_err)?,
        };
        seq.push(RelativeDistinguishedName(
            SetOfVec::try_from(vec![atv]).map_err(der_err)?,
        ));
    }
    Ok(RdnSequence(seq))
}

fn validity() -> Result<Validity, SimError> {
    let time = |year| {
        DateTime::new(year, 1, 1, 0, 0, 0)
            .and_then(UtcTime::from_date_time)
            .map(Time::UtcTime)
            .map_err(|source| SimError::Der {
                cert: "validity",
                source,
            })
    };
    Ok(Validity {
        not_before: time(2020)?,
        not_after: time(2045)?,
    })
}

fn rsa_key(cert: &'static str) -> Result<RsaPrivateKey, SimError> {
    RsaPrivateKey::new(&mut OsRng, RSA_BITS).map_err(|source| SimError::RsaKey { cert, source })
}

fn rsa_spki(
    key: &RsaPrivateKey,
    cert: &'static str,
) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let doc = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|source| SimError::PublicKey { cert, source })?;
    SubjectPublicKeyInfoOwned::from_der(doc.as_bytes())
        .map_err(|source| SimError::Der { cert, source })
}

fn ec_spki(
    key: &p384::ecdsa::SigningKey,
    cert: &'static str,
) -> Result<SubjectPublicKeyInfoOwned, SimError> {
    let doc = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|source| SimError::PublicKey { cert, source })?;
    SubjectPublicKeyInfoOwned::from_der(doc.as_bytes())
        .map_err(|source| SimError::Der { cert, source })
}

mod launch;
mod persist;

pub use launch::{LaunchValues, SimLaunch, SIM_LAUNCH_MAX_SIZE, SIM_LAUNCH_VERSION};

#[cfg(test)]
mod tests;
