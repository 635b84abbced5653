use std::sync::Mutex;

use super::*;

/// Plays configfs-tsm on an ordinary directory: `mkdir` creates the
/// attribute files; writing `inblob` bumps `generation` and fills
/// `outblob` and `auxblob` as the sev_guest provider would. Records every
/// operation so that the sequence can be checked.
struct FakeKernel {
    log: Mutex<Vec<String>>,
    provider: &'static str,
    /// Writes to inblob from "another process" after our write.
    interfere: Mutex<u32>,
    report_len: usize,
    corrupt_data: bool,
}

impl FakeKernel {
    fn new() -> Self {
        FakeKernel {
            log: Mutex::new(Vec::new()),
            provider: "sev_guest",
            interfere: Mutex::new(0),
            report_len: REPORT_SIZE,
            corrupt_data: false,
        }
    }
    fn log(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn ops(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

impl Fs for FakeKernel {
    fn mkdir(&self, p: &Path) -> io::Result<()> {
        std::fs::create_dir(p)?;
        std::fs::write(p.join("provider"), format!("{}\n", self.provider))?;
        std::fs::write(p.join("generation"), "0\n")?;
        self.log("mkdir".into());
        Ok(())
    }
    fn write(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        self.log(format!("write {}", name(p)));
        assert_eq!(name(p), "inblob");
        assert_eq!(data.len(), 64);
        let dir = p.parent().unwrap();
        let gen: u64 = std::fs::read_to_string(dir.join("generation"))?
            .trim()
            .parse()
            .unwrap();
        let mut report = vec![0u8; self.report_len];
        if self.report_len >= 0x90 {
            report[0x50..0x90].copy_from_slice(data);
            if self.corrupt_data {
                report[0x50] ^= 1;
            }
        }
        std::fs::write(dir.join("outblob"), report)?;
        std::fs::write(dir.join("auxblob"), b"CERT-TABLE")?;
        std::fs::write(dir.join("generation"), format!("{}\n", gen + 1))
    }
    fn read(&self, p: &Path, max: usize) -> io::Result<Vec<u8>> {
        self.log(format!("read {}", name(p)));
        let v = std::fs::read(p)?;
        // Another writer changes the entry between our two reads of
        // `generation`.
        let mut interfere = self.interfere.lock().unwrap();
        if name(p) == "outblob" && *interfere > 0 {
            *interfere -= 1;
            let g = p.parent().unwrap().join("generation");
            let gen: u64 = std::fs::read_to_string(&g)?.trim().parse().unwrap();
            std::fs::write(&g, format!("{}\n", gen + 1))?;
        }
        assert!(v.len() <= max);
        Ok(v)
    }
    fn rmdir(&self, p: &Path) -> io::Result<()> {
        self.log("rmdir".into());
        std::fs::remove_dir_all(p)
    }
}

fn data() -> [u8; 64] {
    let mut d = [0u8; 64];
    for (i, b) in d.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    d
}

#[test]
fn reads_report_and_auxblob_in_order_and_cleans_up() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::new(root.path(), FakeKernel::new());
    assert!(tsm.available());
    let ev = tsm.get(&data()).expect("report");
    assert_eq!(ev.report.len(), REPORT_SIZE);
    assert_eq!(&ev.report[0x50..0x90], &data()[..]);
    assert_eq!(ev.cert_table.as_deref(), Some(&b"CERT-TABLE"[..]));
    assert_eq!(
        tsm.fs.ops(),
        [
            "mkdir",
            "read provider",
            "write inblob",
            "read generation",
            "read outblob",
            "read auxblob",
            "read generation",
            "rmdir"
        ]
    );
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}

#[test]
fn a_changed_generation_is_retried() {
    let root = tempfile::tempdir().unwrap();
    let fake = FakeKernel::new();
    *fake.interfere.lock().unwrap() = 1;
    let tsm = Tsm::new(root.path(), fake);
    let ev = tsm.get(&data()).expect("report after a retry");
    assert_eq!(&ev.report[0x50..0x90], &data()[..]);
    let writes = tsm.fs.ops().iter().filter(|o| *o == "write inblob").count();
    assert_eq!(writes, 2);
}

#[test]
fn wrong_provider_is_refused_and_cleaned_up() {
    let root = tempfile::tempdir().unwrap();
    let mut fake = FakeKernel::new();
    fake.provider = "tdx_guest";
    let tsm = Tsm::new(root.path(), fake);
    let e = tsm.get(&data()).err().expect("refused").to_string();
    assert!(e.contains("tdx_guest"), "{e}");
    assert_eq!(tsm.fs.ops().last().map(String::as_str), Some("rmdir"));
}

#[test]
fn short_report_and_foreign_report_data_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut fake = FakeKernel::new();
    fake.report_len = 100;
    let e = Tsm::new(root.path(), fake).get(&data()).err().unwrap();
    assert!(e.to_string().contains("100 bytes"), "{e}");
    let mut fake = FakeKernel::new();
    fake.corrupt_data = true;
    let e = Tsm::new(root.path(), fake).get(&data()).err().unwrap();
    assert!(e.to_string().contains("REPORT_DATA"), "{e}");
}

#[test]
fn missing_root_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let tsm = Tsm::new(&root.path().join("absent"), RealFs);
    assert!(!tsm.available());
    let e = tsm.get(&data()).err().unwrap().to_string();
    assert!(e.contains("absent"), "{e}");
}
