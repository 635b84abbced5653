//! `snpguardctl report`: show and verify attestation reports offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use snpguard::certs::{self, Cert, CertSet, Product, TrustAnchors};
use snpguard::report::Report;
use snpguard::verify::{self, Expectations, MinTcb};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Largest input file read (reports, certificates, tables, JSON).
const MAX_INPUT: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Verify a report: signature, AMD certificate chain, policy, TCB and
    /// expected values. Exit 0 accepted, 1 rejected, 2 usage or I/O error.
    Verify(Box<VerifyArgs>),
    /// Print every field of a report.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Raw attestation report (1184 bytes).
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Raw attestation report (1184 bytes); not needed with --tsm-json.
    #[arg(long, value_name = "FILE", required_unless_present = "tsm_json")]
    report: Option<PathBuf>,
    /// VCEK certificate (DER or PEM).
    #[arg(long, value_name = "FILE", conflicts_with = "vlek")]
    vcek: Option<PathBuf>,
    /// VLEK certificate (DER or PEM); its ASVK comes from --certs or a
    /// certificate table.
    #[arg(long, value_name = "FILE")]
    vlek: Option<PathBuf>,
    /// Directory of certificates: ark, ask, asvk, vcek, vlek (.pem/.der),
    /// a KDS cert_chain.pem, crl.der.
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// GUID-keyed certificate table (extended report / auxblob).
    #[arg(long, value_name = "FILE")]
    cert_table: Option<PathBuf>,
    /// configfs-tsm evidence: JSON with base64url outblob and auxblob.
    #[arg(long, value_name = "FILE", conflicts_with = "report")]
    tsm_json: Option<PathBuf>,
    /// Verification time (RFC 3339), default now.
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Product, only when it cannot be derived from report or certificate.
    #[arg(long, value_name = "PRODUCT", value_parser = ["milan", "genoa", "turin"])]
    product: Option<String>,
    /// Required VMPL of the report.
    #[arg(long, value_name = "N", default_value_t = 0)]
    vmpl: u32,
    /// Accept a guest policy that allows debugging (test guests only).
    #[arg(long)]
    allow_debug: bool,
    /// Accept a guest policy that allows SMT.
    #[arg(long)]
    allow_smt: bool,
    /// Accept a guest policy that allows a migration agent.
    #[arg(long)]
    allow_migrate_ma: bool,
    /// Require the guest policy to demand a single socket.
    #[arg(long)]
    require_single_socket: bool,
    /// Minimum ABI version the guest policy must request.
    #[arg(long, value_name = "MAJOR.MINOR", value_parser = parse_abi)]
    min_abi: Option<(u8, u8)>,
    /// Reject provisional firmware (current TCB not committed).
    #[arg(long)]
    strict_tcb: bool,
    /// Expected launch digest (96 hex digits).
    #[arg(long, value_name = "HEX", value_parser = hex_array::<48>)]
    measurement: Option<[u8; 48]>,
    /// Expected report data (128 hex digits).
    #[arg(long, value_name = "HEX", value_parser = hex_array::<64>)]
    report_data: Option<[u8; 64]>,
    /// Expected host data (64 hex digits).
    #[arg(long, value_name = "HEX", value_parser = hex_array::<32>)]
    host_data: Option<[u8; 32]>,
    /// Expected ID key digest (96 hex digits).
    #[arg(long, value_name = "HEX", value_parser = hex_array::<48>)]
    id_key_digest: Option<[u8; 48]>,
    /// Expected author key digest (96 hex digits).
    #[arg(long, value_name = "HEX", value_parser = hex_array::<48>)]
    author_key_digest: Option<[u8; 48]>,
    /// Minimum reported TCB: bl=N,tee=N,snp=N,ucode=N[,fmc=N].
    #[arg(long, value_name = "SPEC")]
    min_tcb: Option<MinTcb>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_abi(s: &str) -> Result<(u8, u8), String> {
    let err = || format!("{s:?} is not MAJOR.MINOR (e.g. 1.51)");
    let (a, b) = s.split_once('.').ok_or_else(err)?;
    Ok((a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?))
}

fn hex_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    let v = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
    v.try_into().map_err(|v: Vec<u8>| {
        format!(
            "{} bytes given, {N} expected ({} hex digits)",
            v.len(),
            2 * N
        )
    })
}

/// Reads a bounded input file.
fn read_input(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_INPUT + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if buf.len() as u64 > MAX_INPUT {
        bail!("{what} {} is larger than {MAX_INPUT} bytes", path.display());
    }
    Ok(buf)
}

pub fn run(cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::Show(args) => show(&args),
        ReportCommand::Verify(args) => verify_cmd(&args),
    }
}

fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&args.report, "report")?;
    let report = Report::parse(&bytes)
        .with_context(|| format!("parsing report {}", args.report.display()))?;
    let value = serde_json::to_value(&report).context("encoding report")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_fields("", &value);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a JSON tree as aligned `name: value` lines, nested objects as
/// dotted names.
fn print_fields(prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                print_fields(&name, v);
            }
        }
        serde_json::Value::String(s) => println!("{prefix:<28} {s}"),
        serde_json::Value::Null => println!("{prefix:<28} -"),
        other => println!("{prefix:<28} {other}"),
    }
}

fn verify_cmd(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let at = match &a.at {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339).with_context(|| {
            format!("--at {s:?} is not an RFC 3339 time (e.g. 2025-01-01T00:00:00Z)")
        })?,
        None => OffsetDateTime::now_utc(),
    };
    // Operator-supplied certificates first: a slot is only filled from
    // the guest's evidence (configfs-tsm auxblob) when the operator left
    // it empty, so a guest cannot override the operator's CRL or chain.
    let mut set = CertSet::default();
    if let Some(p) = &a.vcek {
        set.vcek = Some(load_cert(p, "VCEK")?);
    }
    if let Some(p) = &a.vlek {
        set.vlek = Some(load_cert(p, "VLEK")?);
    }
    if let Some(dir) = &a.certs {
        set.merge(
            CertSet::from_dir(dir)
                .with_context(|| format!("loading certificates from {}", dir.display()))?,
        );
    }
    if let Some(p) = &a.cert_table {
        let table = read_input(p, "certificate table")?;
        set.merge(
            CertSet::from_cert_table(&table)
                .with_context(|| format!("parsing certificate table {}", p.display()))?,
        );
    }
    let report_bytes = match (&a.report, &a.tsm_json) {
        (Some(p), None) => read_input(p, "report")?,
        (None, Some(p)) => {
            let json = read_input(p, "configfs-tsm evidence")?;
            let (report, certs) = certs::parse_tsm_json(&json)
                .with_context(|| format!("parsing configfs-tsm evidence {}", p.display()))?;
            set.merge(certs);
            report
        }
        _ => bail!("give exactly one of --report and --tsm-json"),
    };
    let product = a
        .product
        .as_deref()
        .map(str::parse::<Product>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--product: {e}"))?;
    let expect = Expectations {
        product,
        vmpl: a.vmpl,
        allow_debug: a.allow_debug,
        allow_smt: a.allow_smt,
        allow_migrate_ma: a.allow_migrate_ma,
        require_single_socket: a.require_single_socket,
        min_abi: a.min_abi,
        min_tcb: a.min_tcb,
        // Only AMD's pinned roots are trusted here; no daemon floors.
        tcb_floors: Default::default(),
        forbid_test_root: true,
        strict_tcb: a.strict_tcb,
        measurement: a.measurement,
        report_data: a.report_data,
        host_data: a.host_data,
        id_key_digest: a.id_key_digest,
        author_key_digest: a.author_key_digest,
        // Offline: the CRL given with the certificates (crl.der in
        // --certs-dir) is checked; there is no held one.
        revocation: None,
    };
    let anchors = TrustAnchors::amd().context("loading the pinned AMD roots")?;
    match verify::verify(&anchors, &report_bytes, &set, &expect, at) {
        Ok(v) => {
            let tcb = v.report.reported_tcb.parts(v.layout);
            if a.json {
                let out = json!({
                    "accepted": true,
                    "product": v.endorsement.product.to_string(),
                    "signing_key": v.endorsement.kind.to_string(),
                    "reported_tcb": tcb,
                    "measurement": hex::encode(v.report.measurement),
                    "notes": v.notes,
                    "report": v.report,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "accepted: {} report v{}, signed by {}, tcb {}, measurement {}",
                    v.endorsement.product,
                    v.report.version,
                    v.endorsement.kind,
                    tcb,
                    hex::encode(v.report.measurement)
                );
                for n in &v.notes {
                    println!("note: {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rej) => {
            if a.json {
                let failures: Vec<_> = rej
                    .failures()
                    .iter()
                    .map(|f| json!({"rule": f.code(), "message": f.to_string()}))
                    .collect();
                let out = json!({
                    "accepted": false,
                    "rule": rej.primary().code(),
                    "message": rej.primary().to_string(),
                    "failures": failures,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            eprintln!("rejected: {rej}");
            Ok(ExitCode::from(1))
        }
    }
}

fn load_cert(path: &Path, what: &str) -> anyhow::Result<Cert> {
    let bytes = read_input(path, what)?;
    Cert::from_pem_or_der(&bytes).with_context(|| format!("parsing {what} {}", path.display()))
}
