//! What the targets share: the real AMD test vectors, the trust anchors,
//! the time every verification runs at, and a reader of fuzz input.

use std::sync::OnceLock;

use snpguard::certs::{Cert, CertSet, TrustAnchors};
use snpguard::report::Report;
use snpguard::verify::{Expectations, Verifier};
use snpguard_testkit::testdata;
use time::macros::datetime;
use time::OffsetDateTime;

/// Every verification runs at this instant, so that a run does not depend
/// on the day: all certificates of the test data are valid then (the
/// Milan VLEK expired 2025-12-10; the Genoa and Turin VCEKs were issued in
/// July and August 2025).
pub const VERIFY_AT: OffsetDateTime = datetime!(2025-09-01 0:00 UTC);

/// A real report from `reports/<name>/` with the certificates it verifies
/// with and what the verifier must expect of it to accept it.
pub struct RealReport {
    /// The directory name.
    pub name: &'static str,
    /// The 1184 bytes as AMD's firmware signed them.
    pub bytes: Vec<u8>,
    /// The endorsement key certificate (and, for the VLEK, the ASVK); the
    /// ARK and ASK are the built-in AMD ones.
    pub certs: CertSet,
    /// Everything that holds for this report (its VMPL; debug, SMT and a
    /// migration agent allowed), so that only the signature and the
    /// chain decide.
    pub expect: Expectations,
}

/// (directory, endorsement key certificate)
const REPORTS: [(&str, &str); 6] = [
    ("milan-virtee", "vcek.der"),
    ("milan-gosevguest", "vcek.der"),
    ("milan-trustee", "vcek.der"),
    ("milan-trustee-vlek", "vlek.der"),
    ("genoa-oak", "vcek.der"),
    ("turin-oak", "vcek.der"),
];

/// Reads a file of the test data; `None` when the data set is absent and
/// `SNPGUARD_SKIP_TESTDATA=1` asked to skip (panics otherwise).
pub fn read(rel: &str) -> Option<Vec<u8>> {
    testdata::read(rel)
}

fn cert(rel: &str) -> Option<Cert> {
    let bytes = read(rel)?;
    Some(Cert::from_pem_or_der(&bytes).unwrap_or_else(|e| panic!("{rel}: {e}")))
}

/// The real reports; empty when the test data is skipped.
pub fn reports() -> &'static [RealReport] {
    static REAL: OnceLock<Vec<RealReport>> = OnceLock::new();
    REAL.get_or_init(|| {
        let mut out = Vec::new();
        for (name, key) in REPORTS {
            let Some(bytes) = read(&format!("reports/{name}/report.bin")) else {
                return Vec::new();
            };
            let parsed = Report::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let endorsement = cert(&format!("reports/{name}/{key}"));
            let mut certs = CertSet::default();
            if key == "vlek.der" {
                certs.vlek = endorsement;
                certs.asvk = cert("amd/milan/asvk.pem");
            } else {
                certs.vcek = endorsement;
            }
            let expect = Expectations {
                vmpl: parsed.vmpl,
                allow_debug: true,
                allow_smt: true,
                allow_migrate_ma: true,
                ..Expectations::default()
            };
            out.push(RealReport {
                name,
                bytes,
                certs,
                expect,
            });
        }
        out
    })
}

/// AMD's pinned roots.
pub fn anchors() -> &'static TrustAnchors {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(|| TrustAnchors::amd().expect("the built-in AMD roots load"))
}

/// A verifier trusting AMD's roots, remembering chains it verified.
pub fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::new(anchors().clone()))
}

/// Reads a fuzz input front to back; past the end it yields zeros, so
/// every input, however short, means something.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A reader of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input(data)
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// The next `n` bytes, or `None` when fewer are left (nothing is
    /// consumed then).
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A chunk prefixed by its 16-bit little-endian length (cut at the end
    /// of the input).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16()).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// The encoding [`Input::chunk`] reads.
pub fn chunk(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("a seed chunk is below 64 KiB");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// XOR mutations as [`apply_xors`] reads them: (position u16 LE, value).
pub fn xor_at(pos: usize, value: u8) -> Vec<u8> {
    let pos = u16::try_from(pos).expect("a mutation position fits 16 bits");
    let [lo, hi] = pos.to_le_bytes();
    vec![lo, hi, value]
}

/// Applies the rest of `input` as XOR mutations to `bytes`: 3-byte
/// records (position u16 LE modulo the length, value); a partial record
/// at the end is ignored.
pub fn apply_xors(input: &mut Input<'_>, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    while let Some(rec) = input.take(3) {
        let pos = usize::from(u16::from_le_bytes([rec[0], rec[1]])) % bytes.len();
        bytes[pos] ^= rec[2];
    }
}

/// A scratch directory for targets that must go through files, one per
/// process, on tmpfs when there is one.
pub fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let builder = tempfile::Builder::new()
            .prefix("snpguard-fuzz-")
            .tempdir_in(shm);
        builder
            .or_else(|_| tempfile::tempdir())
            .expect("a scratch directory")
    })
    .path()
}

/// How often each target got past refusal to its property checks on an
/// accepted input, in this process.
static REACHED: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Counts one accepted input of `target`.
pub fn reached(target: &'static str) {
    let mut m = REACHED.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(target).or_default() += 1;
}

/// How many inputs of `target` were accepted in this process: the stable
/// replay checks that its seeds reach the property checks at all.
pub fn reached_count(target: &str) -> usize {
    let m = REACHED.lock().unwrap_or_else(|e| e.into_inner());
    m.get(target).copied().unwrap_or(0)
}
