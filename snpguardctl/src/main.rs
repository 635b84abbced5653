//! `snpguardctl`: the SnpGuard operator CLI.
//!
//! `main` parses arguments and dispatches each subcommand to its module;
//! errors print one `error: ...` line and exit with status 2.

mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Manage AMD SEV-SNP confidential VMs and their attestation with SnpGuard.
#[derive(Debug, Parser)]
#[command(
    name = "snpguardctl",
    version,
    help_expected = true,
    max_term_width = 80
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show and verify SEV-SNP attestation reports offline.
    #[command(subcommand)]
    Report(report::ReportCommand),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Report(cmd) => report::run(cmd),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
