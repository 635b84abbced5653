//! `snpguardctl records add-launch|approve|retire|discard`: the launches
//! of a record. A kernel update becomes a *pending* launch (submitted by
//! the guest over HTTPS, or added here from a staging directory); it
//! releases nothing until an operator approves it, which signs its ID
//! block and writes its bundle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use snpguard_protocol::dbus::{launch_file_key, launch_state, RecordProxy};
use snpguard_protocol::text::escape;
use zbus::zvariant::OwnedFd;

use crate::bus::{call_mut, describe, Bus};
use crate::output;
use crate::register::{read_cmdline, INITRD, KERNEL};
use crate::review;

#[derive(Debug, Args)]
pub struct AddLaunchArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Staging directory with the new kernel, initrd and cmdline
    #[arg(long, value_name = "DIR")]
    pub staging: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Launch to approve (needed off a terminal; on one, the only
    /// pending launch is offered)
    #[arg(long, value_name = "L")]
    pub launch: Option<String>,
    /// Approve after showing the review without asking (needs --launch)
    #[arg(long, short = 'y', requires = "launch")]
    pub yes: bool,
    /// Write the approved launch's launch-artifacts.tar.gz here
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Record name or id
    #[arg(value_name = "ID-OR-NAME")]
    pub record: String,
    /// Launch id (see `records show`)
    #[arg(long, value_name = "L")]
    pub launch: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// A launch as the CLI prints it: the daemon's entry itself.
pub use snpguard_protocol::dbus::LaunchEntry as LaunchView;

/// The launches as a table, every daemon-supplied string escaped.
pub fn render_launches(launches: &[LaunchView]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("Launches:\n");
    let _ = writeln!(
        out,
        "  {:<4} {:<9} {:<20} {:<17} ORIGIN",
        "ID", "STATE", "CREATED", "MEASUREMENT"
    );
    for l in launches {
        let short: String = l.measurement.chars().take(16).collect();
        let _ = writeln!(
            out,
            "  {:<4} {:<9} {:<20} {}… {}",
            escape(&l.id),
            escape(&l.state),
            escape(&l.created),
            escape(&short),
            escape(&l.origin)
        );
        let _ = writeln!(out, "       cmdline: {}", escape(&l.cmdline));
    }
    out
}

/// The launch to approve: `given`, else the only pending one.
pub fn pick_pending(record: &str, launches: &[LaunchView], given: Option<&str>) -> Result<String> {
    if let Some(l) = given {
        return Ok(l.to_owned());
    }
    let pending: Vec<&str> = launches
        .iter()
        .filter(|l| l.state == launch_state::PENDING)
        .map(|l| l.id.as_str())
        .collect();
    match pending.as_slice() {
        [] => anyhow::bail!(
            "{record} has no pending launch; a guest submits one over HTTPS, or add one with \
             snpguardctl records add-launch"
        ),
        [one] => Ok((*one).to_owned()),
        several => anyhow::bail!(
            "{record} has several pending launches ({}); pick one with --launch",
            several.join(", ")
        ),
    }
}

async fn launches_of(r: &RecordProxy<'_>) -> Result<Vec<LaunchView>> {
    r.launches().await.map_err(describe)
}

/// Writes the bundle of launch `launch` to `out` atomically through an fd.
pub async fn export_launch(bus: &Bus, r: &RecordProxy<'_>, launch: &str, out: &Path) -> Result<()> {
    bus.require_fd_passing("writing the bundle")?;
    let file = output::AtomicFile::create(out, 0o644)?;
    let fd = file
        .file()
        .try_clone()
        .with_context(|| format!("writing {}", out.display()))?;
    let fd = OwnedFd::from(std::os::fd::OwnedFd::from(fd));
    call_mut::<_, ()>(r.inner(), "ExportLaunchBundle", &(launch, fd))
        .await
        .context("exporting the bundle")?;
    file.commit()
}

pub async fn add(bus: &Bus, r: &RecordProxy<'_>, a: &AddLaunchArgs) -> Result<()> {
    let dir = &a.staging;
    let fd = |name: &str| -> Result<OwnedFd> {
        let p = dir.join(name);
        let f = std::fs::File::open(&p).with_context(|| {
            format!(
                "opening {}; the staging dir has {KERNEL}, {INITRD} and cmdline",
                p.display()
            )
        })?;
        Ok(OwnedFd::from(std::os::fd::OwnedFd::from(f)))
    };
    let files: HashMap<&str, OwnedFd> = HashMap::from([
        (launch_file_key::KERNEL, fd(KERNEL)?),
        (launch_file_key::INITRD, fd(INITRD)?),
    ]);
    let cmdline = read_cmdline(dir)?;
    bus.require_fd_passing("add-launch")?;
    let launch: String = call_mut(r.inner(), "AddLaunch", &(files, cmdline.as_str()))
        .await
        .with_context(|| format!("adding a launch to {}", a.record))?;
    let view = launches_of(r)
        .await?
        .into_iter()
        .find(|l| l.id == launch)
        .with_context(|| format!("launch {launch} is not listed by the daemon"))?;
    let id = r.id().await.map_err(describe)?;
    if a.json {
        println!("{}", serde_json::json!({ "id": id, "launch": view }));
    } else {
        let launch = escape(&launch);
        println!("launch {launch} of {} is {}", a.record, escape(&view.state));
        println!("measurement {}", escape(&view.measurement));
        if view.state == launch_state::PENDING {
            println!(
                "approve it with: snpguardctl records approve {} --launch {launch}",
                a.record
            );
        }
    }
    Ok(())
}

pub async fn approve(bus: &Bus, r: &RecordProxy<'_>, a: &ApproveArgs) -> Result<()> {
    use std::io::IsTerminal;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let plan = review::plan(&a.record, a.launch.as_deref(), a.yes, interactive)?;
    let before = launches_of(r).await?;
    let launch = pick_pending(&a.record, &before, a.launch.as_deref())?;
    let view = before.iter().find(|l| l.id == launch).with_context(|| {
        format!(
            "{} has no launch {}; the launches are listed by snpguardctl records show {}",
            a.record,
            escape(&launch),
            a.record
        )
    })?;
    let id = r.id().await.map_err(describe)?;
    let digests = |l: String| async move {
        r.launch_digests(&l)
            .await
            .map(|(kernel, initrd)| review::Digests { kernel, initrd })
            .map_err(describe)
            .with_context(|| format!("reading the artifact digests of launch {}", escape(&l)))
    };
    let new_digests = digests(launch.clone()).await?;
    let mut current = review::Current {
        measurement: r.measurement().await.map_err(describe)?,
        cmdline: r.cmdline().await.map_err(describe)?,
        digests: None,
    };
    let agent_files = |l: String| async move {
        r.launch_agent_files(&l)
            .await
            .map_err(|e| describe(e).to_string())
    };
    let new_agent = agent_files(launch.clone()).await;
    let mut old_agent = None;
    let mut against = "the approved launch".to_owned();
    if let Some(c) = review::current_launch(&before, &current.measurement, &launch) {
        current.digests = Some(digests(c.id.clone()).await?);
        old_agent = Some(agent_files(c.id.clone()).await);
        against = format!("launch {}", escape(&c.id));
    }
    let mut text = review::render(&a.record, &id, view, &new_digests, &before, &current);
    text.push_str(&review::render_agent_files(
        &new_agent,
        old_agent.as_ref(),
        &against,
    ));
    // The review goes where a person reads it; with --json, stdout is
    // for the result only.
    if a.json || plan == review::Plan::Ask {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    if plan == review::Plan::Ask {
        let question = format!("Approve launch {} of {}?", escape(&launch), a.record);
        let yes = review::confirm(
            &mut std::io::stdin().lock(),
            &mut std::io::stderr(),
            &question,
        )?;
        if !yes {
            anyhow::bail!(
                "launch {} of {} was not approved",
                escape(&launch),
                a.record
            );
        }
    }
    call_mut::<_, ()>(r.inner(), "ApproveLaunch", &(launch.as_str(),))
        .await
        .with_context(|| format!("approving launch {} of {}", escape(&launch), a.record))?;
    if let Some(out) = &a.output {
        export_launch(bus, r, &launch, out).await.with_context(|| {
            format!(
                "launch {launch} is approved, but its bundle was not written; retry with \
                 snpguardctl records export {} --launch {launch} --out FILE",
                a.record
            )
        })?;
    }
    let measurement = launches_of(r)
        .await?
        .into_iter()
        .find(|l| l.id == launch)
        .map(|l| l.measurement)
        .unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "id": id,
                "launch": launch,
                "measurement": measurement,
                "bundle": a.output.as_ref().map(|p| p.display().to_string()),
            })
        );
    } else {
        println!(
            "approved launch {} of {} ({})",
            escape(&launch),
            a.record,
            escape(&id)
        );
        println!("measurement {}", escape(&measurement));
        if let Some(out) = &a.output {
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

/// `retire` or `discard`.
pub async fn change(r: &RecordProxy<'_>, a: &LaunchArgs, method: &str, done: &str) -> Result<()> {
    call_mut::<_, ()>(r.inner(), method, &(a.launch.as_str(),))
        .await
        .with_context(|| {
            format!(
                "{} launch {} of {}",
                method.to_lowercase(),
                a.launch,
                a.record
            )
        })?;
    let id = r.id().await.map_err(describe)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "id": id, "launch": a.launch, "result": done })
        );
    } else {
        println!("{done} launch {} of {} ({id})", a.launch, a.record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(id: &str, state: &str) -> LaunchView {
        LaunchView {
            id: id.into(),
            state: state.into(),
            measurement: "00".repeat(48),
            cmdline: String::new(),
            created: String::new(),
            origin: "operator".into(),
        }
    }

    #[test]
    fn the_only_pending_launch_is_the_default() {
        let ls = [l("1", "approved"), l("2", "pending"), l("3", "retired")];
        assert_eq!(pick_pending("web", &ls, None).unwrap(), "2");
        assert_eq!(pick_pending("web", &ls, Some("3")).unwrap(), "3");
    }

    #[test]
    fn no_or_several_pending_launches_need_a_choice() {
        let e = pick_pending("web", &[l("1", "approved")], None).unwrap_err();
        assert!(e.to_string().contains("no pending launch"), "{e}");
        let ls = [l("1", "approved"), l("2", "pending"), l("4", "pending")];
        let e = pick_pending("web", &ls, None).unwrap_err();
        assert!(e.to_string().contains("(2, 4)"), "{e}");
        assert!(e.to_string().contains("--launch"), "{e}");
    }
}
