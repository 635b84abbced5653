//! snpguard-agent: runs in the guest's initrd. `unlock` attests to
//! snpguardd, receives the root volume's key and maps it with dm-crypt;
//! on failure it prints one `snpguard: FAILED: <reason>` line and powers
//! off. `check-config` validates a configuration at build time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod client;
mod config;
mod console;
mod device;
mod dm;
mod evidence;
mod luks;
mod power;
mod unlock;

use console::say;

/// SnpGuard guest agent.
#[derive(Parser, Debug)]
#[command(name = "snpguard-agent", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attest, receive the volume key and map the LUKS2 root volume.
    Unlock {
        /// Agent configuration file.
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// On failure exit 1 instead of powering off (host tests only).
        #[arg(long)]
        no_poweroff: bool,
    },
    /// Parse and validate a configuration; exit 0 if usable.
    CheckConfig {
        /// Agent configuration file.
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    console::init();
    if cfg!(feature = "simulator") {
        say!("WARNING: this agent is built with the SIMULATED report source (feature simulator): TEST ONLY, it must never boot a production guest");
    }
    match cli.command {
        Command::CheckConfig { config } => match config::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} server(s), report source {}, device {})",
                    config.display(),
                    c.servers.len(),
                    c.report_source.name(),
                    c.luks.device
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Unlock {
            config,
            no_poweroff,
        } => {
            let result = config::Config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| unlock::run(&c));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say!("FAILED: {}", format!("{e:#}"));
                    if no_poweroff {
                        return ExitCode::FAILURE;
                    }
                    say!("powering off");
                    let e = power::power_off();
                    say!("power-off failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;
    use std::path::Path;

    #[test]
    fn cli_is_consistent_and_parses() {
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["snpguard-agent", "unlock", "--no-poweroff"]).unwrap();
        match c.command {
            Command::Unlock {
                config,
                no_poweroff,
            } => {
                assert_eq!(config, PathBuf::from("/etc/snpguard/agent.toml"));
                assert!(no_poweroff);
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["snpguard-agent", "check-config", "--config", "/x"]).unwrap();
        assert!(matches!(c.command, Command::CheckConfig { config } if config == Path::new("/x")));
        assert!(Cli::try_parse_from(["snpguard-agent", "shell"]).is_err());
    }
}
