//! `snpguardctl certs`: import AMD certificates and ARK CRLs into the
//! daemon for hosts without KDS access, list what it holds and remove
//! some, over D-Bus.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use snpguard_protocol::dbus::{limit, CertificateInfo, CertificatesProxy, CrlInfo};
use zbus::zvariant::OwnedFd;

use crate::bus::{self, call_mut, describe, Bus, Target};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Import VCEK, VLEK, ASK, ASVK or ARK certificates (PEM, DER or a
    /// certificate table) or an ARK CRL (crl.der from KDS); each must
    /// chain to (a CRL: be signed by) a trusted root
    Import(ImportArgs),
    /// List the certificates and ARK CRLs the daemon holds
    List(ListArgs),
    /// Remove held certificates (imports, cached VCEKs) or, with
    /// --kind CRL, held CRLs, matching every filter given
    #[command(
        override_usage = "snpguardctl certs remove FILTER... [--json]\n       \
                                snpguardctl certs remove --all [--json]\n\n\
                                FILTER: --source, --kind, --product, --chip-id, --tcb"
    )]
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("filter")
        .args(["source", "kind", "product", "chip_id", "tcb", "all"])
        .required(true)
        .multiple(true)
))]
pub struct RemoveArgs {
    /// Only imported certificates or only VCEKs cached from KDS
    #[arg(long, value_parser = ["imported", "kds-cache"])]
    pub source: Option<String>,
    /// Only this kind: VCEK, VLEK, ASK, ASVK, or CRL (CRLs are removed
    /// only with --kind CRL)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only this product: milan, genoa or turin
    #[arg(long, value_name = "PRODUCT")]
    pub product: Option<String>,
    /// Only VCEKs whose chip id starts with these hex digits
    #[arg(long, value_name = "HEX")]
    pub chip_id: Option<String>,
    /// Only VCEKs/VLEKs of this TCB (bootloader.tee.snp.microcode[.fmc])
    #[arg(long, value_name = "TCB")]
    pub tcb: Option<String>,
    /// Remove every held certificate (no other filter)
    #[arg(long, conflicts_with_all = ["source", "kind", "product", "chip_id", "tcb"])]
    pub all: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Certificate files, or directories whose regular files are imported
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// The FILEs are absolute paths inside the daemon's import directory
    /// (for -H, where file descriptors cannot be passed)
    #[arg(long)]
    pub in_import_dir: bool,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(target: &Target, cmd: CertsCommand) -> Result<()> {
    bus::runtime()?.block_on(run_async(target, cmd))
}

async fn run_async(target: &Target, cmd: CertsCommand) -> Result<()> {
    let bus = bus::connect(target).await?;
    match cmd {
        CertsCommand::Import(a) => import(&bus, a).await,
        CertsCommand::List(a) => {
            let c = CertificatesProxy::new(&bus.conn).await.map_err(describe)?;
            let held = c.list().await.map_err(describe)?;
            let crls = c.list_crls().await.map_err(describe)?;
            if a.json {
                // The certificates as before, then each CRL as an object
                // of kind "CRL" with its own fields.
                let mut v: Vec<serde_json::Value> = held
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?;
                for c in &crls {
                    let mut o = serde_json::to_value(c)?;
                    o["kind"] = "CRL".into();
                    v.push(o);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if held.is_empty() {
                println!("no certificates held; import some with snpguardctl certs import");
            } else {
                print(&held, false, false)?;
            }
            println!();
            print_crls(&crls);
            Ok(())
        }
        CertsCommand::Remove(a) => {
            let c = CertificatesProxy::new(&bus.conn).await.map_err(describe)?;
            let s = |o: &Option<String>| o.clone().unwrap_or_default();
            let args = (
                s(&a.source),
                s(&a.kind),
                s(&a.product),
                s(&a.chip_id),
                s(&a.tcb),
            );
            let removed: Vec<CertificateInfo> = call_mut(c.inner(), "Remove", &args)
                .await
                .context("removing certificates")?;
            if !a.json && removed.is_empty() {
                println!("no held certificate matches; nothing removed");
                return Ok(());
            }
            print(&removed, a.json, false)
        }
    }
}

/// The files named on the command line: files as given, directories
/// expanded to their regular files (sorted, not recursive).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
                let e = e.with_context(|| format!("reading {}", p.display()))?;
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    files.push(e.path());
                }
            }
            files.sort();
            if files.is_empty() {
                anyhow::bail!("{} holds no files to import", p.display());
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.len() > limit::IMPORT_FILES {
        anyhow::bail!(
            "{} files given; import at most {} per call",
            out.len(),
            limit::IMPORT_FILES
        );
    }
    Ok(out)
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

async fn import(bus: &Bus, a: ImportArgs) -> Result<()> {
    let c = CertificatesProxy::new(&bus.conn).await.map_err(describe)?;
    let imported: Vec<CertificateInfo> = if a.in_import_dir {
        let paths: Vec<String> = a.files.iter().map(|p| label(p)).collect();
        call_mut(c.inner(), "ImportFromPaths", &(paths,))
            .await
            .context("importing certificates")?
    } else {
        bus.require_fd_passing("certs import")?;
        let mut files: HashMap<String, OwnedFd> = HashMap::new();
        for p in expand(&a.files)? {
            let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            files.insert(label(&p), OwnedFd::from(std::os::fd::OwnedFd::from(f)));
        }
        call_mut(c.inner(), "Import", &(files,))
            .await
            .context("importing certificates")?
    };
    print(&imported, a.json, true)
}

fn print_crls(crls: &[CrlInfo]) {
    if crls.is_empty() {
        println!(
            "no CRL held: revocation is not checked (or refused, per [revocation] missing); \
             import AMD's with snpguardctl certs import crl.der"
        );
        return;
    }
    println!(
        "{:<7} {:<6} {:<21} {:<21} {:>7} SOURCE",
        "CRL", "ISSUER", "THIS UPDATE", "NEXT UPDATE", "REVOKED"
    );
    for c in crls {
        println!(
            "{:<7} {:<6} {:<21} {:<21} {:>7} {}",
            c.product,
            c.issuer,
            c.this_update,
            if c.next_update.is_empty() {
                "-"
            } else {
                &c.next_update
            },
            c.revoked,
            c.source
        );
    }
}

fn print(certs: &[CertificateInfo], json: bool, with_file: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(certs)?);
        return Ok(());
    }
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    println!(
        "{:<5} {:<7} {:<16} {:<14} {:<21} {:<13}{}",
        "KIND",
        "PRODUCT",
        "CHIP",
        "TCB",
        "NOT AFTER",
        "SOURCE",
        if with_file { " FILE" } else { "" }
    );
    for c in certs {
        println!(
            "{:<5} {:<7} {:<16} {:<14} {:<21} {:<13}{}",
            c.kind,
            c.product,
            dash(&c.chip_id),
            dash(&c.tcb),
            c.not_after,
            c.source,
            if with_file {
                format!(" {}", c.file)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
