//! What `snpguardctl records approve` shows before it signs: the launch's
//! origin, its full measurement, the one it replaces, how its kernel
//! command line differs from the approved one, and what changed in the
//! agent's files inside its initrd (configuration, CA, binary), with
//! everything that came from a guest or a staging directory escaped for
//! the terminal.

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use snpguard_protocol::dbus::AgentFileEntry;
use snpguard_protocol::text::escape;

use crate::launches::LaunchView;

/// How `approve` proceeds, from its flags and whether it runs on a
/// terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Show the review, then ask on the terminal.
    Ask,
    /// Show the review and approve (`--launch` given and `--yes`, or no
    /// terminal to ask on).
    Approve,
}

/// Decides how `approve` proceeds. Without a terminal there is nobody
/// to confirm a default pick, so the launch must be named.
pub fn plan(record: &str, launch: Option<&str>, yes: bool, interactive: bool) -> Result<Plan> {
    match (launch, yes, interactive) {
        (None, true, _) => bail!("--yes approves without review only together with --launch"),
        (None, false, false) => bail!(
            "not on a terminal, so there is nobody to confirm the launch: pass --launch N \
             (the launches are listed by snpguardctl records show {record})"
        ),
        (_, false, true) => Ok(Plan::Ask),
        (Some(_), _, _) => Ok(Plan::Approve),
    }
}

/// The SHA-256 digests of a launch's kernel and initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub kernel: String,
    pub initrd: String,
}

/// What the review compares against: the record's current approved
/// launch.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub measurement: String,
    pub cmdline: String,
    /// Its digests, when the launch is listed.
    pub digests: Option<Digests>,
}

/// The approval review of `launch` (with artifact digests `digests`) of
/// a record whose current approved launch is `current`.
pub fn render(
    record: &str,
    id: &str,
    launch: &LaunchView,
    digests: &Digests,
    launches: &[LaunchView],
    current: &Current,
) -> String {
    let current_measurement = current.measurement.as_str();
    let current_cmdline = current.cmdline.as_str();
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Approving launch {} of {} ({}): the daemon signs its ID block, and VMs that \
         measure as below get the record's key.",
        escape(&launch.id),
        escape(record),
        escape(id)
    ));
    line(format!("  State:        {}", escape(&launch.state)));
    line(format!("  Origin:       {}", escape(&launch.origin)));
    line(format!("  Created:      {}", escape(&launch.created)));
    line(format!("  Measurement:  {}", escape(&launch.measurement)));
    let current_launch = current_launch(launches, current_measurement, &launch.id);
    match current_launch {
        Some(c) => {
            line(format!(
                "  Replaces:     {} (launch {})",
                escape(current_measurement),
                escape(&c.id)
            ));
        }
        None if current_measurement.is_empty() => line("  Replaces:     nothing".into()),
        None => line(format!("  Replaces:     {}", escape(current_measurement))),
    }
    let old = current.digests.as_ref();
    let mark = |new: &str, old: Option<&str>| match old {
        Some(o) if o == new => " (unchanged)",
        Some(_) => " (changed)",
        None => "",
    };
    line(format!(
        "  Kernel:       sha256 {}{}",
        escape(&digests.kernel),
        mark(&digests.kernel, old.map(|d| d.kernel.as_str()))
    ));
    line(format!(
        "  Initrd:       sha256 {}{}",
        escape(&digests.initrd),
        mark(&digests.initrd, old.map(|d| d.initrd.as_str()))
    ));
    line(format!("  Cmdline:      {}", escape(&launch.cmdline)));
    let against = current_launch.map_or_else(
        || "the approved launch".to_owned(),
        |c| format!("launch {}", escape(&c.id)),
    );
    let diff = cmdline_diff(current_cmdline, &launch.cmdline);
    if diff.is_empty() {
        line(format!("  Cmdline diff: none against {against}"));
    } else {
        line(format!("  Cmdline diff against {against}:"));
        for d in diff {
            line(format!("    {d}"));
        }
    }
    out
}

/// The approved launch a record's current measurement belongs to, other
/// than `except`.
pub fn current_launch<'a>(
    launches: &'a [LaunchView],
    measurement: &str,
    except: &str,
) -> Option<&'a LaunchView> {
    launches
        .iter()
        .find(|l| l.measurement == measurement && l.id != except)
}

/// The words removed from `old` (`- word`) and added in `new`
/// (`+ word`), in order, from a longest common subsequence of the
/// space-separated words; empty when the words are the same.
pub fn cmdline_diff(old: &str, new: &str) -> Vec<String> {
    let a: Vec<&str> = old.split(' ').filter(|w| !w.is_empty()).collect();
    let b: Vec<&str> = new.split(' ').filter(|w| !w.is_empty()).collect();
    // Both sides are bounded by the command line limit (at most 2048
    // words each).
    diff(&a, &b)
}

/// The most lines of an agent file diffed (each side); the daemon sends
/// at most 64 KiB of text per file.
const MAX_DIFF_LINES: usize = 2048;

/// The items removed from `a` (`- item`) and added in `b` (`+ item`), in
/// order, escaped.
fn diff(a: &[&str], b: &[&str]) -> Vec<String> {
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u16; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first where either order keeps the subsequence.
            out.push(format!("- {}", escape(a[i])));
            i += 1;
        } else {
            out.push(format!("+ {}", escape(b[j])));
            j += 1;
        }
    }
    out
}

/// The agent's files in a launch's initrd, as `LaunchAgentFiles` gives
/// them, or why they could not be read.
pub type AgentFiles = Result<(Vec<AgentFileEntry>, Vec<String>), String>;

/// The review of the agent's files in the initrd of the launch being
/// approved (`new`) against those of the current approved launch (`old`,
/// described by `against`), if any: each file unchanged, changed (with a
/// line diff of its text), added or removed, and a WARNING for a changed
/// CA, a missing configuration and anything that makes the list
/// unreliable.
pub fn render_agent_files<'a>(
    new: &'a AgentFiles,
    old: Option<&'a AgentFiles>,
    against: &str,
) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let (files, problems) = match new {
        Ok(f) => f,
        Err(e) => {
            line(format!(
                "  WARNING: the agent files in the initrd cannot be shown: {}; compare the \
                 initrds yourself before approving",
                escape(e)
            ));
            return out;
        }
    };
    // Only a readable baseline without problems is compared against.
    let old = match old {
        Some(Ok((f, p))) if p.is_empty() => Some(f),
        _ => None,
    };
    let find = |list: &'a [AgentFileEntry], path: &str| list.iter().find(|f| f.0 == path);
    match old {
        Some(_) => line(format!("  Agent files in the initrd, against {against}:")),
        None => line("  Agent files in the initrd:".into()),
    }
    if files.is_empty() {
        line("    none".into());
    }
    for (path, kind, sha256, text) in files {
        let p = escape(path);
        let link = if kind == "symlink" {
            format!(" (symlink to {})", escape(text))
        } else {
            String::new()
        };
        let Some(old) = old else {
            line(format!("    {p}{link}: sha256 {}", escape(sha256)));
            continue;
        };
        match find(old, path) {
            None => line(format!("    {p}{link}: added, sha256 {}", escape(sha256))),
            Some(o) if o.1 == *kind && o.2 == *sha256 => line(format!("    {p}{link}: unchanged")),
            Some(o) => {
                line(format!("    {p}{link}: changed, sha256 {}", escape(sha256)));
                let (a, b): (Vec<&str>, Vec<&str>) =
                    (o.3.lines().collect(), text.lines().collect());
                let texts = kind == "file" && o.1 == "file" && !(o.3.is_empty() && text.is_empty());
                if texts && a.len() <= MAX_DIFF_LINES && b.len() <= MAX_DIFF_LINES {
                    for d in diff(&a, &b) {
                        line(format!("      {d}"));
                    }
                }
            }
        }
    }
    if let Some(old) = old {
        for (path, ..) in old.iter().filter(|o| find(files, &o.0).is_none()) {
            line(format!("    {}: removed", escape(path)));
        }
    }
    let config = find(files, snpguard_protocol::initrd::AGENT_CONFIG);
    match config {
        None => line(format!(
            "  WARNING: the initrd has no /{}: the SnpGuard agent is not configured in it, so \
             a VM booting this launch will not unlock its disk",
            snpguard_protocol::initrd::AGENT_CONFIG
        )),
        Some(c) => {
            let ca = snpguard_protocol::initrd::configured_ca(&c.3);
            let changed = |path: &str| {
                let new = find(files, path).map(|f| (&f.1, &f.2));
                let old = old.map(|o| find(o, path).map(|f| (&f.1, &f.2)));
                matches!(old, Some(o) if o != new)
            };
            if let Some(ca) = ca.filter(|ca| changed(ca.as_str())) {
                line(format!(
                    "  WARNING: the CA the agent trusts (/{}) changed: the agent will take its \
                     key from any server that CA certifies",
                    escape(&ca)
                ));
            }
            if changed(snpguard_protocol::initrd::AGENT_CONFIG) {
                line(
                    "  WARNING: the agent configuration changed: check the servers and settings \
                     above"
                        .into(),
                );
            }
        }
    }
    for p in problems {
        line(format!(
            "  WARNING: {}; compare the initrds yourself before approving",
            escape(p)
        ));
    }
    out
}

/// Asks on `out` and reads the answer from `input`; only `y` or `yes`
/// approves.
pub fn confirm(input: &mut dyn BufRead, out: &mut dyn Write, question: &str) -> Result<bool> {
    write!(out, "{question} [y/N] ")?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(id: &str, state: &str, m: char, cmdline: &str, origin: &str) -> LaunchView {
        LaunchView {
            id: id.into(),
            state: state.into(),
            measurement: m.to_string().repeat(96),
            cmdline: cmdline.into(),
            created: "2026-12-03T02:00:00Z".into(),
            origin: origin.into(),
        }
    }

    #[test]
    fn the_plan_needs_a_named_launch_off_a_terminal() {
        let e = plan("web", None, false, false).unwrap_err().to_string();
        assert!(e.contains("pass --launch N"), "{e}");
        assert!(e.contains("records show web"), "{e}");
        let e = plan("web", None, true, true).unwrap_err().to_string();
        assert!(e.contains("only together with --launch"), "{e}");
        assert!(plan("web", None, true, false).is_err());
        assert_eq!(plan("web", None, false, true).unwrap(), Plan::Ask);
        assert_eq!(plan("web", Some("2"), false, true).unwrap(), Plan::Ask);
        assert_eq!(plan("web", Some("2"), true, true).unwrap(), Plan::Approve);
        assert_eq!(plan("web", Some("2"), false, false).unwrap(), Plan::Approve);
        assert_eq!(plan("web", Some("2"), true, false).unwrap(), Plan::Approve);
    }

    #[test]
    fn the_diff_names_removed_and_added_words() {
        assert!(cmdline_diff("a b c", "a  b c").is_empty());
        assert_eq!(
            cmdline_diff(
                "console=ttyS0 root=/dev/mapper/root quiet",
                "console=ttyS0 root=/dev/sda1 quiet init=/bin/sh"
            ),
            [
                "- root=/dev/mapper/root",
                "+ root=/dev/sda1",
                "+ init=/bin/sh"
            ]
        );
        assert_eq!(cmdline_diff("", "x"), ["+ x"]);
        assert_eq!(cmdline_diff("x", ""), ["- x"]);
        // A repeated word counts.
        assert_eq!(cmdline_diff("a", "a a"), ["+ a"]);
        // Escaped, even though the daemon refuses such words now.
        assert_eq!(cmdline_diff("", "a\x1b[8m"), ["+ a\\x1b[8m"]);
    }

    #[test]
    fn the_review_shows_what_is_signed_escaped() {
        let launches = [
            l("1", "approved", 'a', "console=ttyS0 quiet", "registration"),
            l(
                "2",
                "pending",
                'b',
                "console=ttyS0 quiet\x1b[8m init=/bin/sh",
                "guest 10.0.0.5",
            ),
        ];
        let digests = Digests {
            kernel: "c".repeat(64),
            initrd: "d".repeat(64),
        };
        let current = Current {
            measurement: "a".repeat(96),
            cmdline: "console=ttyS0 quiet".into(),
            digests: Some(Digests {
                kernel: "c".repeat(64),
                initrd: "e".repeat(64),
            }),
        };
        let text = render("web", "0123", &launches[1], &digests, &launches, &current);
        assert!(text.contains("Approving launch 2 of web (0123)"), "{text}");
        assert!(text.contains("Origin:       guest 10.0.0.5"), "{text}");
        assert!(
            text.contains(&format!("Measurement:  {}", "b".repeat(96))),
            "{text}"
        );
        assert!(
            text.contains(&format!("Replaces:     {} (launch 1)", "a".repeat(96))),
            "{text}"
        );
        assert!(text.contains("Cmdline diff against launch 1:\n    - quiet\n    + quiet\\x1b[8m\n    + init=/bin/sh\n"), "{text}");
        assert!(
            text.contains(&format!(
                "Kernel:       sha256 {} (unchanged)",
                "c".repeat(64)
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "Initrd:       sha256 {} (changed)",
                "d".repeat(64)
            )),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "{text}");
        // The first registration: nothing to compare with.
        let text = render(
            "web",
            "0123",
            &launches[0],
            &digests,
            &launches[..1],
            &Current::default(),
        );
        assert!(text.contains("Replaces:     nothing"), "{text}");
        assert!(
            text.contains(&format!("Kernel:       sha256 {}\n", "c".repeat(64))),
            "{text}"
        );
    }

    fn f(path: &str, sha: char, text: &str) -> AgentFileEntry {
        let kind = if text.starts_with('/') {
            "symlink"
        } else {
            "file"
        };
        (
            path.into(),
            kind.into(),
            sha.to_string().repeat(64),
            text.into(),
        )
    }

    const CONFIG: &str = "ca = \"/etc/snpguard/ca.pem\"\nservers = [\"https://a:8443\"]\n";
    const CONFIG_B: &str = "ca = \"/etc/snpguard/ca.pem\"\nservers = [\"https://b:8443\"]\n";

    #[test]
    fn the_agent_review_diffs_the_config_and_warns_on_a_new_ca() {
        let old: AgentFiles = Ok((
            vec![
                f("etc/snpguard/agent.toml", 'a', CONFIG),
                f("etc/snpguard/ca.pem", 'c', "CA1"),
                f("etc/snpguard/old.conf", 'o', "x"),
                f("usr/lib/snpguard/snpguard-agent", 'e', ""),
            ],
            vec![],
        ));
        let new: AgentFiles = Ok((
            vec![
                f("etc/snpguard/agent.toml", 'b', CONFIG_B),
                f("etc/snpguard/ca.pem", 'd', "CA2\x1b[8m"),
                f("etc/snpguard/extra", 'x', "/tmp/y"),
                f("usr/lib/snpguard/snpguard-agent", 'e', ""),
            ],
            vec![],
        ));
        let text = render_agent_files(&new, Some(&old), "launch 1");
        let want = [
            "  Agent files in the initrd, against launch 1:",
            &format!(
                "    etc/snpguard/agent.toml: changed, sha256 {}",
                "b".repeat(64)
            ),
            "      - servers = [\"https://a:8443\"]",
            "      + servers = [\"https://b:8443\"]",
            &format!(
                "    etc/snpguard/ca.pem: changed, sha256 {}",
                "d".repeat(64)
            ),
            "      - CA1",
            "      + CA2\\x1b[8m",
            &format!(
                "    etc/snpguard/extra (symlink to /tmp/y): added, sha256 {}",
                "x".repeat(64)
            ),
            "    usr/lib/snpguard/snpguard-agent: unchanged",
            "    etc/snpguard/old.conf: removed",
            "  WARNING: the CA the agent trusts (/etc/snpguard/ca.pem) changed: the agent will \
             take its key from any server that CA certifies",
            "  WARNING: the agent configuration changed: check the servers and settings above",
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
        // The same files: all unchanged, no warning.
        let text = render_agent_files(&old, Some(&old), "launch 1");
        assert!(
            !text.contains("WARNING") && !text.contains("changed,"),
            "{text}"
        );
        assert_eq!(text.matches(": unchanged").count(), 4, "{text}");
    }

    #[test]
    fn the_agent_review_warns_when_it_cannot_compare() {
        let unreadable: AgentFiles = Err("AccessDenied".into());
        let text = render_agent_files(&unreadable, None, "launch 1");
        assert!(
            text.contains("WARNING: the agent files in the initrd cannot be shown: AccessDenied"),
            "{text}"
        );
        let problem: AgentFiles = Ok((vec![], vec!["the initrd cannot be read: xz".into()]));
        let text = render_agent_files(&problem, None, "launch 1");
        assert!(text.contains("    none\n"), "{text}");
        assert!(
            text.contains("WARNING: the initrd has no /etc/snpguard/agent.toml"),
            "{text}"
        );
        assert!(
            text.contains("WARNING: the initrd cannot be read: xz; compare the initrds yourself"),
            "{text}"
        );
        // A baseline with problems is not compared against: digests only.
        let new: AgentFiles = Ok((vec![f("etc/snpguard/agent.toml", 'b', CONFIG_B)], vec![]));
        let text = render_agent_files(&new, Some(&problem), "launch 1");
        assert!(text.starts_with("  Agent files in the initrd:\n"), "{text}");
        assert!(
            text.contains(&format!("agent.toml: sha256 {}", "b".repeat(64))),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
    }

    #[test]
    fn only_yes_confirms() {
        for (answer, want) in [
            ("y\n", true),
            ("YES\n", true),
            ("n\n", false),
            ("\n", false),
            ("", false),
            ("yess\n", false),
        ] {
            let mut out = Vec::new();
            let got = confirm(&mut answer.as_bytes(), &mut out, "Approve?").unwrap();
            assert_eq!(got, want, "{answer:?}");
            assert_eq!(out, b"Approve? [y/N] ");
        }
    }
}
