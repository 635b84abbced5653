//! snpguard-agent: runs in the guest's initrd. `unlock` attests to
//! snpguardd, receives the root volume's key and maps it with dm-crypt;
//! on failure it prints one `snpguard: FAILED: <reason>` line and powers
//! off. `check-config` validates a configuration at build time. `renew`
//! runs in the booted guest after a kernel update and submits the new
//! kernel, initrd and command line as a pending launch; `install-launch`
//! writes that launch, once approved, into the guest's LAUNCH_ARTIFACTS
//! partition.

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
mod next_launch;
mod offline;
mod power;
mod renew;
mod slot;
mod unlock;

use console::say;

/// SnpGuard guest agent.
#[derive(Parser, Debug)]
#[command(name = "snpguard-agent", version, help_expected = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The kernel, initrd and command line of a new launch: what `renew`
/// submits and `install-launch` writes (the same files for both).
#[derive(clap::Args, Debug)]
struct ArtifactArgs {
    /// New kernel, encrypted root (/boot/vmlinuz-VER)
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// New initrd, encrypted root (/boot/initrd.img-VER)
    #[arg(long, value_name = "FILE")]
    initrd: PathBuf,
    /// New command line, exact [default: the running one].
    #[arg(long, value_name = "STR", conflicts_with = "cmdline_file")]
    cmdline: Option<String>,
    /// File with the command line (final newline dropped).
    #[arg(long, value_name = "FILE")]
    cmdline_file: Option<PathBuf>,
}

impl ArtifactArgs {
    /// The request `renew::load` reads the files for.
    fn request<'a>(&'a self, boot_files: &'a renew::BootFiles) -> renew::Request<'a> {
        renew::Request {
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: renew::CmdlineArg::from_options(
                self.cmdline.clone(),
                self.cmdline_file.clone(),
            ),
            boot_files,
        }
    }
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
    /// Submit a new kernel for approval (booted guest, after an update).
    Renew {
        /// Configuration.
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[command(flatten)]
        artifacts: ArtifactArgs,
    },
    /// Write an approved launch into the LAUNCH_ARTIFACTS partition.
    InstallLaunch {
        /// Configuration.
        #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The launch id renew printed.
        #[arg(long, value_name = "ID")]
        launch: String,
        #[command(flatten)]
        artifacts: ArtifactArgs,
        /// The partition's block device.
        #[arg(long, value_name = "DEV", default_value = next_launch::DEFAULT_DEVICE)]
        device: PathBuf,
        /// The partition, mounted already (not --device).
        #[arg(long, value_name = "DIR", conflicts_with = "device")]
        mounted: Option<PathBuf>,
        /// Seconds to wait for the approval.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
        /// Seconds between asks while pending.
        #[arg(long, value_name = "SECS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(1..))]
        poll: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    console::init();
    if cfg!(feature = "simulator") {
        say!("WARNING: this agent is built with the SIMULATED report source (feature simulator): TEST ONLY, it must never boot a production guest");
    }
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config) {
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
        Command::Renew { config, artifacts } => {
            let boot_files = renew::BootFiles::from_environment();
            let req = artifacts.request(&boot_files);
            let result = config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| renew::run(&c, &req));
            match result {
                Ok(resp) => {
                    say!(
                        "renewal stored: record {} launch {} is pending approval",
                        resp.record,
                        resp.launch
                    );
                    println!("record: {}", resp.record);
                    println!("launch: {}", resp.launch);
                    println!("measurement: {}", resp.measurement);
                    // Pending until an operator runs this on the host.
                    println!("approve: {}", renew::approve_command(&resp));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // Not the boot path: no FAILED line, no power-off.
                    say!("{}", format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::InstallLaunch {
            config,
            launch,
            artifacts,
            device,
            mounted,
            wait,
            poll,
        } => {
            let boot_files = renew::BootFiles::from_environment();
            let req = next_launch::Request {
                launch: &launch,
                artifacts: artifacts.request(&boot_files),
                target: match mounted {
                    Some(dir) => next_launch::Target::Mounted(dir),
                    None => next_launch::Target::Device(device),
                },
                wait: std::time::Duration::from_secs(wait),
                poll: std::time::Duration::from_secs(poll),
            };
            let result = config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| next_launch::run(&c, &req));
            match result {
                Ok(out) => {
                    let (slot, verb) = match out.installed {
                        slot::Installed::Switched { slot } => (slot, "written and made active"),
                        slot::Installed::Unchanged { slot } => (slot, "already active"),
                    };
                    say!(
                        "launch {launch} of record {} {verb} in slot {slot}; the next power \
                         cycle from the partition boots it",
                        out.record
                    );
                    println!("record: {}", out.record);
                    println!("launch: {launch}");
                    println!("measurement: {}", out.measurement);
                    println!("slot: {slot}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // Not the boot path: no FAILED line, no power-off.
                    say!("install-launch failed: {}", format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Unlock {
            config,
            no_poweroff,
        } => {
            let result = config::load(&config)
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

    #[test]
    fn renew_help_fits_80_columns() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("renew")
            .expect("renew")
            .render_help()
            .to_string();
        assert!(help.contains("--cmdline-file"), "{help}");
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
    }

    #[test]
    fn install_launch_arguments_and_help() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("install-launch")
            .expect("install-launch")
            .render_help()
            .to_string();
        assert!(help.contains("--mounted"), "{help}");
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                [
                    "snpguard-agent",
                    "install-launch",
                    "--kernel",
                    "k",
                    "--initrd",
                    "i",
                ]
                .iter()
                .chain(args),
            )
            .map_err(|e| e.to_string())
        };
        match parse(&["--launch", "2"]).unwrap().command {
            Command::InstallLaunch {
                launch,
                device,
                mounted,
                wait,
                poll,
                ..
            } => {
                assert_eq!(launch, "2");
                assert_eq!(device, PathBuf::from(next_launch::DEFAULT_DEVICE));
                assert_eq!((mounted, wait, poll), (None, 0, 60));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&[]).unwrap_err().contains("--launch"));
        let e = parse(&[
            "--launch",
            "2",
            "--device",
            "/dev/vdb2",
            "--mounted",
            "/mnt",
        ]);
        assert!(e.unwrap_err().contains("cannot be used with"));
        assert!(parse(&["--launch", "2", "--poll", "0"]).is_err());
    }

    fn renew(args: &[&str]) -> Result<(PathBuf, PathBuf, PathBuf, renew::CmdlineArg), String> {
        let c = Cli::try_parse_from(["snpguard-agent", "renew"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match c.command {
            Command::Renew { config, artifacts } => Ok((
                config,
                artifacts.kernel,
                artifacts.initrd,
                renew::CmdlineArg::from_options(artifacts.cmdline, artifacts.cmdline_file),
            )),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renew_arguments() {
        let (config, kernel, initrd, cmdline) = renew(&[
            "--kernel",
            "/boot/vmlinuz-6.12",
            "--initrd",
            "/boot/initrd.img-6.12",
        ])
        .unwrap();
        assert_eq!(config, PathBuf::from("/etc/snpguard/agent.toml"));
        assert_eq!(kernel, PathBuf::from("/boot/vmlinuz-6.12"));
        assert_eq!(initrd, PathBuf::from("/boot/initrd.img-6.12"));
        assert_eq!(cmdline, renew::CmdlineArg::Running);

        let (config, _, _, cmdline) = renew(&[
            "--config",
            "/c.toml",
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "console=ttyS0 quiet",
        ])
        .unwrap();
        assert_eq!(config, PathBuf::from("/c.toml"));
        assert_eq!(
            cmdline,
            renew::CmdlineArg::Given("console=ttyS0 quiet".into())
        );
        // An empty command line is a command line.
        let (.., cmdline) = renew(&["--kernel", "k", "--initrd", "i", "--cmdline", ""]).unwrap();
        assert_eq!(cmdline, renew::CmdlineArg::Given(String::new()));
        let (.., cmdline) =
            renew(&["--kernel", "k", "--initrd", "i", "--cmdline-file", "/f"]).unwrap();
        assert_eq!(cmdline, renew::CmdlineArg::File("/f".into()));

        // Both sources at once, or a missing artifact, is a usage error.
        let e = renew(&[
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--cmdline",
            "a",
            "--cmdline-file",
            "/f",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        assert!(renew(&["--kernel", "k"]).unwrap_err().contains("--initrd"));
        assert!(renew(&["--initrd", "i"]).unwrap_err().contains("--kernel"));
    }
}
