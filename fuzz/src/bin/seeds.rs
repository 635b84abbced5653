//! Writes the seed corpora for cargo fuzz: `<dir>/<target>/` for every
//! target (default dir `fuzz/corpus`), each seed named by its SHA-256 as
//! libFuzzer names its own. Seeds are built at run time from the AMD test
//! data (`SNPGUARD_TESTDATA`) and from inputs made in code; files already
//! there are kept. `--list` prints each target and its dictionary (`-`
//! for none) instead, one per line, for scripts/fuzz.sh.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if args.first().map(String::as_str) == Some("--list") {
        for t in snpguard_fuzz::TARGETS {
            let dict = t.dict.map_or_else(
                || "-".to_owned(),
                |d| {
                    fuzz_dir
                        .join(format!("dict/{d}.dict"))
                        .display()
                        .to_string()
                },
            );
            println!("{} {dict}", t.name);
        }
        return ExitCode::SUCCESS;
    }
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz_dir.join("corpus"));
    for t in snpguard_fuzz::TARGETS {
        let out = dir.join(t.name);
        let seeds = (t.seeds)();
        let written = std::fs::create_dir_all(&out).and_then(|()| {
            for seed in &seeds {
                std::fs::write(out.join(hex::encode(Sha256::digest(seed))), seed)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            eprintln!("writing the seeds of {} to {}: {e}", t.name, out.display());
            return ExitCode::FAILURE;
        }
        println!(
            "{:<18} {:>3} seeds in {}",
            t.name,
            seeds.len(),
            out.display()
        );
    }
    ExitCode::SUCCESS
}
