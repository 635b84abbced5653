//! `snpguardctl`: the SnpGuard operator CLI.
//!
//! `main` parses arguments and dispatches each subcommand to its module;
//! errors print one `error: ...` line and exit with status 2.

mod audit;
mod bundle;
mod bus;
mod certs;
mod convert;
mod embed;
mod idblock;
mod image;
mod interrupt;
mod launch_config;
mod launches;
mod measure;
mod output;
mod records;
mod register;
mod report;
mod review;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate SnpGuard: verify reports, measure, sign and manage AMD SEV-SNP
/// guests.
#[derive(Debug, Parser)]
#[command(version, about, help_expected = true, term_width = 80)]
struct Cli {
    /// D-Bus address of the daemon's bus (default: the system bus)
    #[arg(long, global = true, value_name = "ADDR", conflicts_with = "host")]
    bus_address: Option<String>,
    /// Manage the daemon on a remote host through ssh
    #[arg(short = 'H', long, global = true, value_name = "[USER@]HOST")]
    host: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show and verify SEV-SNP attestation reports offline
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Compute the SEV-SNP launch digest of a guest (like sev-snp-measure)
    Measure(measure::Args),
    /// Sign an ID block and ID auth info for a launch digest
    IdBlock(idblock::Args),
    /// Register a launch with the daemon and write its bundle
    Register(register::Args),
    /// Manage the daemon's records and their launches (list, show, approve…)
    #[command(subcommand)]
    Records(records::RecordsCommand),
    /// Import or list the AMD certificates the daemon holds
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Show the attestation audit trail (releases and refusals)
    Audit(audit::AuditArgs),
    /// Check a launch bundle before booting it
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
    /// Turn a cloud image into one with a LUKS2 root and the agent in its
    /// initrd, and stage what register needs
    Convert(convert::Args),
    /// Write a launch bundle into the image's LAUNCH_ARTIFACTS partition
    Embed(embed::Args),
    /// Measure and sign, locally, the launch of a `convert --no-encryption`
    /// staging directory (NO confidentiality: for trying a measured launch)
    LaunchConfig(launch_config::Args),
    /// Print a shell completion script (bash's belongs in
    /// /usr/share/bash-completion/completions/snpguardctl)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let target = bus::Target {
        bus_address: cli.bus_address,
        host: cli.host,
    };
    match cli.command {
        Command::Report(cmd) => report::run(cmd),
        Command::Measure(args) => measure::run(args).map(|()| ExitCode::SUCCESS),
        Command::IdBlock(args) => idblock::run(args).map(|()| ExitCode::SUCCESS),
        Command::Register(args) => register::run(&target, args).map(|()| ExitCode::SUCCESS),
        Command::Records(cmd) => records::run(&target, cmd).map(|()| ExitCode::SUCCESS),
        Command::Certs(cmd) => certs::run(&target, cmd).map(|()| ExitCode::SUCCESS),
        Command::Audit(args) => audit::run(&target, args).map(|()| ExitCode::SUCCESS),
        Command::Bundle(cmd) => bundle::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Convert(args) => convert::run(args).map(|()| ExitCode::SUCCESS),
        Command::Embed(args) => embed::run(args).map(|()| ExitCode::SUCCESS),
        Command::LaunchConfig(args) => launch_config::run(args).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "snpguardctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(_) if interrupt::interrupted() => {
            eprintln!("interrupted; partial output removed");
            ExitCode::from(interrupt::EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Clap's multi-line usage error as one line: the message, without the
/// usage summary and the `--help` hint.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The manual pages in man/ (all but the hand-written section 5) and
    /// the bash completion in completions/ are what the command lines
    /// generate. After changing a command line, regenerate them with
    /// `SNPGUARD_REGENERATE_DOCS=1 cargo test -p snpguardctl generated_docs`.
    #[test]
    fn generated_docs_are_current() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned();
        let out = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), out.path()).unwrap();
        let mut daemon = Vec::new();
        clap_mangen::Man::new(<snpguardd::config::Args as CommandFactory>::command())
            .section("8")
            .render(&mut daemon)
            .unwrap();
        std::fs::write(out.path().join("snpguardd.8"), daemon).unwrap();
        let mut bash = Vec::new();
        let shell = clap_complete::Shell::Bash;
        clap_complete::generate(shell, &mut Cli::command(), "snpguardctl", &mut bash);
        let mut generated: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_owned();
                (repo.join("man").join(name), std::fs::read(&p).unwrap())
            })
            .collect();
        generated.push((repo.join("completions/snpguardctl.bash"), bash));
        generated.sort();
        if std::env::var_os("SNPGUARD_REGENERATE_DOCS").is_some() {
            for entry in std::fs::read_dir(repo.join("man")).unwrap() {
                let p = entry.unwrap().path();
                if p.extension().is_some_and(|e| e == "1" || e == "8") {
                    std::fs::remove_file(p).unwrap();
                }
            }
            for (path, bytes) in &generated {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
        }
        let how = "regenerate with SNPGUARD_REGENERATE_DOCS=1 cargo test -p snpguardctl \
                   generated_docs";
        for (path, bytes) in &generated {
            let have = std::fs::read(path).unwrap_or_default();
            assert!(have == *bytes, "{} is not current: {how}", path.display());
        }
        // No page left for a command that no longer exists.
        for entry in std::fs::read_dir(repo.join("man")).unwrap() {
            let p = entry.unwrap().path();
            let generated_kind = p.extension().is_some_and(|e| e == "1" || e == "8");
            let known = generated.iter().any(|(g, _)| *g == p);
            assert!(!generated_kind || known, "{} is stale: {how}", p.display());
        }
    }

    #[test]
    fn completions_are_printed_for_bash() {
        let cli = Cli::try_parse_from(["snpguardctl", "completions", "bash"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completions {
                shell: clap_complete::Shell::Bash
            }
        ));
        assert!(Cli::try_parse_from(["snpguardctl", "completions", "tcsh"]).is_err());
    }

    #[test]
    fn management_commands_parse() {
        let cli = Cli::try_parse_from([
            "snpguardctl",
            "register",
            "--name",
            "web",
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-v4",
            "--min-tcb-bootloader",
            "1",
            "--min-tcb-tee",
            "0",
            "--min-tcb-snp",
            "22",
            "--min-tcb-microcode",
            "213",
            "--staging-dir",
            "s",
            "--out-bundle",
            "b",
            "-H",
            "root@h",
        ])
        .unwrap();
        assert_eq!(cli.host.as_deref(), Some("root@h"));
        let Command::Register(a) = cli.command else {
            panic!("not register")
        };
        assert_eq!(
            (a.launch.vcpus, a.min_tcb_snp, a.min_tcb_fmc),
            (4, Some(22), None)
        );

        // TCB minimums go together.
        let e = Cli::try_parse_from([
            "snpguardctl",
            "register",
            "--name",
            "w",
            "--vcpus",
            "1",
            "--vcpu-type",
            "t",
            "--min-tcb-snp",
            "1",
            "--staging-dir",
            "s",
            "--out-bundle",
            "b",
        ]);
        assert!(e.is_err());

        let cli = Cli::try_parse_from([
            "snpguardctl",
            "records",
            "show",
            "web",
            "--json",
            "--bus-address",
            "unix:path=/x",
        ])
        .unwrap();
        assert_eq!(cli.bus_address.as_deref(), Some("unix:path=/x"));
        assert!(matches!(
            cli.command,
            Command::Records(records::RecordsCommand::Show(records::RecordArg {
                json: true,
                ..
            }))
        ));
        assert!(Cli::try_parse_from([
            "snpguardctl",
            "records",
            "list",
            "--bus-address",
            "a",
            "-H",
            "h"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["snpguardctl", "records", "export", "web"]).is_err());

        let set = |extra: &[&str]| {
            let base = [
                "snpguardctl",
                "records",
                "set-min-tcb",
                "web",
                "--bootloader",
                "4",
                "--tee",
                "0",
                "--snp",
                "24",
            ];
            Cli::try_parse_from(base.iter().chain(extra))
        };
        let cli = set(&["--microcode", "213", "--fmc", "1"]).unwrap();
        let Command::Records(records::RecordsCommand::SetMinTcb(a)) = cli.command else {
            panic!("not set-min-tcb")
        };
        assert_eq!(
            (a.record.as_str(), a.bootloader, a.snp, a.microcode, a.fmc),
            ("web", 4, 24, 213, Some(1))
        );
        // Every component but fmc is required; 256 is no SPL.
        assert!(set(&[]).is_err());
        assert!(set(&["--microcode", "256"]).is_err());

        let cli = Cli::try_parse_from([
            "snpguardctl",
            "register",
            "--name",
            "sim",
            "--vcpus",
            "1",
            "--vcpu-type",
            "EPYC-v4",
            "--allow-test-root",
            "--staging-dir",
            "s",
            "--out-bundle",
            "b",
        ])
        .unwrap();
        let Command::Register(a) = cli.command else {
            panic!("not register")
        };
        assert!(a.allow_test_root);
        assert!(register::options(&a, "c")
            .unwrap()
            .contains_key("allow_test_root"));

        let cli =
            Cli::try_parse_from(["snpguardctl", "certs", "import", "vcek.pem", "certs/"]).unwrap();
        let Command::Certs(certs::CertsCommand::Import(a)) = cli.command else {
            panic!("not certs import")
        };
        assert_eq!(a.files.len(), 2);
        assert!(!a.in_import_dir);
        assert!(Cli::try_parse_from(["snpguardctl", "certs", "import"]).is_err());
        assert!(Cli::try_parse_from(["snpguardctl", "certs", "list", "--json"]).is_ok());

        let cli = Cli::try_parse_from([
            "snpguardctl",
            "certs",
            "remove",
            "--source",
            "kds-cache",
            "--chip-id",
            "0a1b",
        ])
        .unwrap();
        let Command::Certs(certs::CertsCommand::Remove(a)) = cli.command else {
            panic!("not certs remove")
        };
        assert_eq!(a.source.as_deref(), Some("kds-cache"));
        assert_eq!(a.chip_id.as_deref(), Some("0a1b"));
        assert!(!a.all);
        // A filter or --all is required; --all takes no filter; sources
        // are checked.
        for bad in [
            &["certs", "remove"][..],
            &["certs", "remove", "--all", "--kind", "VCEK"],
            &["certs", "remove", "--source", "kds"],
        ] {
            let argv = std::iter::once("snpguardctl").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "accepted {bad:?}");
        }
        assert!(Cli::try_parse_from(["snpguardctl", "certs", "remove", "--all"]).is_ok());
    }

    #[test]
    fn offline_unlock_commands_parse() {
        let set = |state: &str| {
            Cli::try_parse_from(["snpguardctl", "records", "set-offline-unlock", "web", state])
        };
        for (word, want) in [
            ("on", records::OfflineUnlockState::On),
            ("off", records::OfflineUnlockState::Off),
        ] {
            let cli = set(word).unwrap();
            let Command::Records(records::RecordsCommand::SetOfflineUnlock(a)) = cli.command else {
                panic!("not set-offline-unlock")
            };
            assert_eq!((a.record.as_str(), a.state, a.json), ("web", want, false));
        }
        // Anything else is refused naming the accepted values, on one line.
        for bad in ["maybe", "yes", "true", "1", "ON", ""] {
            let e = set(bad).unwrap_err();
            let line = one_line(&e.to_string());
            let named = if bad.is_empty() {
                "a value is required for '<on|off>'".to_owned()
            } else {
                format!("invalid value '{bad}' for '<on|off>'")
            };
            assert!(
                line.starts_with(&format!("error: {named}"))
                    && line.ends_with("[possible values: on, off]")
                    && !line.contains('\n'),
                "{bad:?}: {line}"
            );
        }
        // The state is required.
        assert!(
            Cli::try_parse_from(["snpguardctl", "records", "set-offline-unlock", "web"]).is_err()
        );

        let register = |extra: &[&str]| {
            let base = [
                "snpguardctl",
                "register",
                "--name",
                "laptop",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-v4",
                "--staging-dir",
                "s",
                "--out-bundle",
                "b",
            ];
            let cli = Cli::try_parse_from(base.iter().chain(extra)).unwrap();
            let Command::Register(a) = cli.command else {
                panic!("not register")
            };
            a
        };
        let a = register(&["--allow-offline-unlock"]);
        assert!(a.allow_offline_unlock && !a.allow_test_root);
        let o = register::options(&a, "c").unwrap();
        assert!(
            bool::try_from(&o["allow_offline_unlock"]).unwrap(),
            "sent as a boolean true"
        );
        // Off by default, and then not sent at all (an older daemon
        // without the option still registers).
        let a = register(&[]);
        assert!(!a.allow_offline_unlock);
        assert!(!register::options(&a, "c")
            .unwrap()
            .contains_key("allow_offline_unlock"));
    }

    #[test]
    fn launch_commands_parse() {
        let cli = Cli::try_parse_from([
            "snpguardctl",
            "records",
            "approve",
            "web",
            "--launch",
            "2",
            "--output",
            "b.tar.gz",
        ])
        .unwrap();
        let Command::Records(records::RecordsCommand::Approve(a)) = cli.command else {
            panic!("not approve")
        };
        assert_eq!(a.record, "web");
        assert_eq!(a.launch.as_deref(), Some("2"));
        assert_eq!(a.output.as_deref(), Some(std::path::Path::new("b.tar.gz")));

        // The launch is optional for approve only.
        let cli = Cli::try_parse_from(["snpguardctl", "records", "approve", "web"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Records(records::RecordsCommand::Approve(launches::ApproveArgs {
                launch: None,
                output: None,
                ..
            }))
        ));
        for sub in ["retire", "discard"] {
            assert!(Cli::try_parse_from(["snpguardctl", "records", sub, "web"]).is_err());
            let cli = Cli::try_parse_from(["snpguardctl", "records", sub, "web", "--launch", "1"])
                .unwrap();
            let Command::Records(cmd) = cli.command else {
                panic!("not records")
            };
            match (sub, cmd) {
                ("retire", records::RecordsCommand::Retire(a))
                | ("discard", records::RecordsCommand::Discard(a)) => {
                    assert_eq!((a.record.as_str(), a.launch.as_str()), ("web", "1"));
                }
                (_, other) => panic!("{sub} parsed as {other:?}"),
            }
        }

        let cli = Cli::try_parse_from([
            "snpguardctl",
            "records",
            "add-launch",
            "web",
            "--staging",
            "/s",
            "--json",
        ])
        .unwrap();
        let Command::Records(records::RecordsCommand::AddLaunch(a)) = cli.command else {
            panic!("not add-launch")
        };
        assert_eq!(a.staging, std::path::PathBuf::from("/s"));
        assert!(a.json);
        assert!(Cli::try_parse_from(["snpguardctl", "records", "add-launch", "web"]).is_err());

        let cli = Cli::try_parse_from([
            "snpguardctl",
            "records",
            "export",
            "web",
            "--out",
            "b",
            "--launch",
            "3",
        ])
        .unwrap();
        let Command::Records(records::RecordsCommand::Export(a)) = cli.command else {
            panic!("not export")
        };
        assert_eq!(a.launch.as_deref(), Some("3"));
    }

    #[test]
    fn usage_errors_are_one_line() {
        let e = Cli::try_parse_from(["snpguardctl", "measure", "--ovmf", "f"]).unwrap_err();
        let line = one_line(&e.to_string());
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains("--vcpus") && !line.contains('\n'), "{line}");
    }

    /// Every subcommand's help, nested ones included.
    fn all_helps(cmd: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
        out.push((path.clone(), cmd.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            let p = format!("{path} {}", sub.get_name());
            all_helps(sub, p, out);
        }
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut helps = Vec::new();
        all_helps(&mut cmd, "snpguardctl".into(), &mut helps);
        assert!(helps.len() >= 6, "{}", helps.len());
        for (sub, help) in helps {
            // clap never wraps the generated usage line; everything else
            // must fit.
            for line in help.lines().filter(|l| !l.starts_with("Usage:")) {
                assert!(line.chars().count() <= 80, "{sub}: {line:?}");
            }
        }
    }
}
