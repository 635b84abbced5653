//! configfs-tsm (Linux 6.7+): `mkdir` an entry under the report root,
//! write the 64-byte REPORT_DATA to `inblob`, read `outblob` (the report)
//! and `auxblob` (the certificate table), check that `generation` did not
//! move underneath (another writer), `rmdir` the entry.
//!
//! File system access goes through [`Fs`] so that tests can play the
//! kernel's part on an ordinary directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use snpguard::certs::CERT_TABLE_MAX_SIZE;
use snpguard::report::REPORT_SIZE;

use super::{Evidence, EvidenceError};

/// Largest outblob read (an SNP report is [`REPORT_SIZE`] bytes).
const MAX_OUTBLOB: usize = 16 * 1024;
/// Attempts when the generation changes between writing and reading.
const GENERATION_RETRIES: u32 = 3;

/// The file operations the source needs.
pub trait Fs {
    fn mkdir(&self, p: &Path) -> io::Result<()>;
    fn write(&self, p: &Path, data: &[u8]) -> io::Result<()>;
    fn read(&self, p: &Path, max: usize) -> io::Result<Vec<u8>>;
    fn rmdir(&self, p: &Path) -> io::Result<()>;
}

/// The real file system.
pub struct RealFs;

impl Fs for RealFs {
    fn mkdir(&self, p: &Path) -> io::Result<()> {
        std::fs::create_dir(p)
    }
    fn write(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(p, data)
    }
    fn read(&self, p: &Path, max: usize) -> io::Result<Vec<u8>> {
        use std::io::Read as _;
        let mut v = Vec::new();
        std::fs::File::open(p)?
            .take(max as u64 + 1)
            .read_to_end(&mut v)?;
        if v.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {max} bytes", p.display()),
            ));
        }
        Ok(v)
    }
    fn rmdir(&self, p: &Path) -> io::Result<()> {
        std::fs::remove_dir(p)
    }
}

/// The configfs-tsm source rooted at a report directory.
pub struct Tsm<F: Fs> {
    root: PathBuf,
    fs: F,
}

static ENTRY: AtomicU32 = AtomicU32::new(0);

fn err(what: &str, p: &Path, e: io::Error) -> EvidenceError {
    EvidenceError::Tsm(format!("{what} {}: {e}", p.display()))
}

impl<F: Fs> Tsm<F> {
    pub fn new(root: &Path, fs: F) -> Self {
        Tsm {
            root: root.to_owned(),
            fs,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the report root exists.
    pub fn available(&self) -> bool {
        self.root.is_dir()
    }

    /// A report for `report_data`.
    pub fn get(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let entry = self.root.join(format!(
            "snpguard-{}-{}",
            std::process::id(),
            ENTRY.fetch_add(1, Ordering::Relaxed)
        ));
        self.fs
            .mkdir(&entry)
            .map_err(|e| err("creating", &entry, e))?;
        let result = self.read_entry(&entry, report_data);
        let removed = self.fs.rmdir(&entry);
        let evidence = result?;
        removed.map_err(|e| err("removing", &entry, e))?;
        Ok(evidence)
    }

    fn read_entry(&self, entry: &Path, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let provider = entry.join("provider");
        let p = self
            .fs
            .read(&provider, 64)
            .map_err(|e| err("reading", &provider, e))?;
        let p = String::from_utf8_lossy(&p).trim().to_string();
        if p != "sev_guest" {
            return Err(EvidenceError::Tsm(format!(
                "provider is {p:?}, not sev_guest: this is not an SEV-SNP guest"
            )));
        }
        for _ in 0..GENERATION_RETRIES {
            let inblob = entry.join("inblob");
            self.fs
                .write(&inblob, report_data)
                .map_err(|e| err("writing", &inblob, e))?;
            let before = self.generation(entry)?;
            let outblob = entry.join("outblob");
            let report = self
                .fs
                .read(&outblob, MAX_OUTBLOB)
                .map_err(|e| err("reading", &outblob, e))?;
            let auxblob = entry.join("auxblob");
            let aux = match self.fs.read(&auxblob, CERT_TABLE_MAX_SIZE) {
                Ok(v) => v,
                // No certificates configured by the host.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Vec::new(),
                Err(e) => return Err(err("reading", &auxblob, e)),
            };
            if self.generation(entry)? != before {
                continue;
            }
            if report.len() != REPORT_SIZE {
                return Err(EvidenceError::Tsm(format!(
                    "outblob is {} bytes, expected a {REPORT_SIZE}-byte SNP report",
                    report.len()
                )));
            }
            if report[0x50..0x90] != report_data[..] {
                return Err(EvidenceError::Tsm(
                    "the report does not carry the REPORT_DATA written to inblob".into(),
                ));
            }
            return Ok(Evidence {
                report,
                cert_table: (!aux.is_empty()).then_some(aux),
            });
        }
        Err(EvidenceError::Tsm(format!(
            "the generation changed {GENERATION_RETRIES} times while reading: another process is using {}",
            entry.display()
        )))
    }

    fn generation(&self, entry: &Path) -> Result<u64, EvidenceError> {
        let p = entry.join("generation");
        let g = self.fs.read(&p, 32).map_err(|e| err("reading", &p, e))?;
        String::from_utf8_lossy(&g)
            .trim()
            .parse()
            .map_err(|e| EvidenceError::Tsm(format!("{}: {e}", p.display())))
    }
}

#[cfg(test)]
mod tests;
