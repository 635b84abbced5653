//! The agent's configfs-tsm reader (agent/src/evidence/tsm.rs, included
//! as it is) against a kernel played from the fuzzer's bytes: what the
//! provider, generation, outblob and auxblob files hold, and which file
//! operations fail.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use snpguard::certs::CERT_TABLE_MAX_SIZE;
use snpguard::report::REPORT_SIZE;

use crate::agent_src::evidence::tsm::{Fs, Tsm};
use crate::fixtures::{self, Input};

/// What the reader did to the played kernel.
struct Kernel<'a> {
    input: Input<'a>,
    made: Vec<PathBuf>,
    removed: Vec<PathBuf>,
    /// The last REPORT_DATA written to inblob.
    inblob: Option<Vec<u8>>,
    /// The last outblob and auxblob handed out (None: the read failed).
    outblob: Option<Vec<u8>>,
    auxblob: Option<Vec<u8>>,
    /// The largest read asked for, per file name.
    largest_read: Vec<(String, usize)>,
}

/// The file operations, from the input: a control byte per operation;
/// 0xF0..=0xF7 fails it with ENOENT, 0xF8..=0xFF with another error,
/// anything else picks what the file holds. Past the input's end every
/// control byte is 0: the well-behaved kernel.
struct Played<'a>(RefCell<Kernel<'a>>);

fn failure(ctrl: u8) -> Option<io::Error> {
    match ctrl {
        0xF0..=0xF7 => Some(io::Error::from_raw_os_error(libc::ENOENT)),
        0xF8..=0xFF => Some(io::Error::other("played I/O error")),
        _ => None,
    }
}

impl Fs for &Played<'_> {
    fn mkdir(&self, p: &Path) -> io::Result<()> {
        let mut k = self.0.borrow_mut();
        if let Some(e) = failure(k.input.byte()) {
            return Err(e);
        }
        k.made.push(p.to_owned());
        Ok(())
    }

    fn write(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        let mut k = self.0.borrow_mut();
        if let Some(e) = failure(k.input.byte()) {
            return Err(e);
        }
        if p.file_name().is_some_and(|n| n == "inblob") {
            k.inblob = Some(data.to_vec());
        }
        Ok(())
    }

    fn read(&self, p: &Path, max: usize) -> io::Result<Vec<u8>> {
        let mut k = self.0.borrow_mut();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        k.largest_read.push((name.clone(), max));
        let ctrl = k.input.byte();
        if name == "outblob" {
            k.outblob = None;
        }
        if name == "auxblob" {
            k.auxblob = None;
        }
        if let Some(e) = failure(ctrl) {
            return Err(e);
        }
        let data = match (name.as_str(), ctrl % 4) {
            ("provider", 3) | ("generation", 3) => k.input.chunk().to_vec(),
            ("provider", _) => b"sev_guest\n".to_vec(),
            ("generation", _) => format!("{}\n", ctrl / 4 % 3).into_bytes(),
            ("outblob", 0 | 1) => {
                let mut r = vec![k.input.byte(); REPORT_SIZE];
                if let Some(d) = k.inblob.clone().filter(|d| d.len() == 64) {
                    r[0x50..0x90].copy_from_slice(&d);
                }
                if ctrl % 4 == 1 {
                    r[0x50] ^= 1;
                }
                r
            }
            ("outblob", 2) => k.input.chunk().to_vec(),
            ("outblob", _) => vec![0; REPORT_SIZE + 1],
            ("auxblob", 0) => k.input.chunk().to_vec(),
            ("auxblob", 1) => return Err(io::Error::from(io::ErrorKind::NotFound)),
            ("auxblob", 2) => vec![0; max + 1],
            ("auxblob", _) => vec![0xA5; usize::from(k.input.u16()) * 16],
            _ => k.input.chunk().to_vec(),
        };
        // The real reader reads at most max + 1 bytes and refuses more.
        if data.len() > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
        }
        match name.as_str() {
            "outblob" => k.outblob = Some(data.clone()),
            "auxblob" => k.auxblob = Some(data.clone()),
            _ => {}
        }
        Ok(data)
    }

    fn rmdir(&self, p: &Path) -> io::Result<()> {
        let mut k = self.0.borrow_mut();
        k.removed.push(p.to_owned());
        match failure(k.input.byte()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `tsm_reader` (the guest kernel's configfs-tsm files; the certificate
/// table in auxblob is the host's): the first 64 bytes are the
/// REPORT_DATA, the rest plays the kernel. Every entry made is removed,
/// whatever happens; reads are bounded (a report's 16 KiB, a certificate
/// table's 1 MiB, 64 bytes of provider, 32 of generation); evidence
/// returned is a whole report carrying the REPORT_DATA written, with the
/// certificate table (if any) the kernel handed out in the same round.
pub fn tsm_reader(data: &[u8]) {
    let mut input = Input::new(data);
    let mut report_data = [0u8; 64];
    for b in &mut report_data {
        *b = input.byte();
    }
    let played = Played(RefCell::new(Kernel {
        input,
        made: Vec::new(),
        removed: Vec::new(),
        inblob: None,
        outblob: None,
        auxblob: None,
        largest_read: Vec::new(),
    }));
    let result = Tsm::new(Path::new("/sys/kernel/config/tsm/report"), &played).get(&report_data);
    let k = played.0.into_inner();

    assert!(k.made.len() <= 1, "more than one entry: {:?}", k.made);
    assert_eq!(k.made, k.removed, "an entry made was not removed");
    for (name, max) in &k.largest_read {
        let bound = match name.as_str() {
            "provider" => 64,
            "generation" => 32,
            "outblob" => 16 * 1024,
            "auxblob" => CERT_TABLE_MAX_SIZE,
            other => panic!("read of an unexpected file {other}"),
        };
        assert!(*max <= bound, "{name} read with a bound of {max}");
    }
    let Ok(evidence) = result else {
        return;
    };
    fixtures::reached("tsm_reader");
    assert_eq!(evidence.report.len(), REPORT_SIZE);
    assert_eq!(evidence.report[0x50..0x90], report_data[..]);
    assert_eq!(k.inblob.as_deref(), Some(&report_data[..]));
    assert_eq!(k.outblob.as_ref(), Some(&evidence.report));
    match &evidence.cert_table {
        Some(t) => {
            assert!(!t.is_empty() && t.len() <= CERT_TABLE_MAX_SIZE);
            assert_eq!(k.auxblob.as_ref(), Some(t));
        }
        None => assert!(k.auxblob.as_ref().is_none_or(Vec::is_empty)),
    }
}

/// The well-behaved kernel (an empty input after the REPORT_DATA) with
/// and without a certificate table, and each kind of misbehaviour.
pub fn seeds() -> Vec<Vec<u8>> {
    let rd: Vec<u8> = (0..64).collect();
    let with = |rest: &[u8]| [&rd[..], rest].concat();
    // mkdir, provider, write inblob, generation, outblob (+ fill byte),
    // auxblob (+ chunk), generation, rmdir.
    let mut table = with(&[0, 0, 0, 0, 0, 7, 0]);
    table.extend_from_slice(&fixtures::chunk(b"a certificate table of the host"));
    table.extend_from_slice(&[0, 0]);
    vec![
        with(&[]),
        table,
        with(&[0xF0]),
        with(&[0, 3, 4, b's', b'e', b'v', b'!']),
        with(&[0, 0, 0, 0, 1]),
        with(&[0, 0, 0, 0, 3]),
        with(&[0, 0, 0, 0, 0, 0, 2]),
        with(&[0, 0, 0, 4, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0]),
        with(&[0, 0, 0, 0, 0, 0, 0, 0, 0xF9]),
    ]
}
