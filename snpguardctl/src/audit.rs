//! `snpguardctl audit`: the daemon's attestation audit trail (every
//! attestation whose report's signature verified: releases, refusals at
//! release time, renewals) or, with `--unverified`, the refusals decided
//! before a signature was verified, over D-Bus.

use anyhow::Result;
use clap::Args;
use snpguard_protocol::dbus::{limit, AuditSummary, ManagerProxy};

use crate::bus::{self, describe, Target};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many of the latest entries to show (oldest first)
    #[arg(long, short = 'n', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(limit::AUDIT_ENTRIES)))]
    pub count: u32,
    /// Show the refusals decided before a report's signature was verified
    /// instead (bad nonces, unknown images, chains or signatures that do
    /// not verify: anyone can cause these; kept in memory, lost at a
    /// restart)
    #[arg(long)]
    pub unverified: bool,
    /// Only the entries of this record (name or id) among the latest
    /// --count
    #[arg(long, value_name = "RECORD")]
    pub record: Option<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(target: &Target, args: AuditArgs) -> Result<()> {
    bus::runtime()?.block_on(async {
        let bus = bus::connect(target).await?;
        let m = ManagerProxy::new(&bus.conn).await.map_err(describe)?;
        let mut entries = if args.unverified {
            m.unverified_refusals(args.count).await
        } else {
            m.audit_trail(args.count).await
        }
        .map_err(describe)?;
        if let Some(key) = &args.record {
            // A deleted record's entries stay in the trail: its id still
            // selects them.
            let id = match crate::records::find(&bus, key).await {
                Ok(r) => r.id().await.map_err(describe)?,
                Err(_) if key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    key.to_ascii_lowercase()
                }
                Err(e) => return Err(e),
            };
            entries.retain(|e| e.record == id);
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&entries)?);
        } else {
            print(&entries, args.unverified);
        }
        Ok(())
    })
}

fn print(entries: &[AuditSummary], unverified: bool) {
    if entries.is_empty() {
        println!(
            "{}",
            if unverified {
                "no refusals before signature verification since the daemon started"
            } else {
                "the audit trail is empty: no attestation has verified yet"
            }
        );
        return;
    }
    println!(
        "{:<20} {:<32} {:<39} {:<22} DETAIL",
        "TIME", "RECORD", "PEER", "RESULT"
    );
    for e in entries {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        // Every code after the headline one, then the reason.
        let mut detail = e.detail.clone();
        if e.codes.len() > 1 {
            detail = format!("[{}] {detail}", e.codes[1..].join(","));
        }
        println!(
            "{:<20} {:<32} {:<39} {:<22} {}",
            e.time,
            dash(&e.record),
            e.peer,
            e.result,
            dash(&detail)
        );
    }
}
