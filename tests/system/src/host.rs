//! The host side of a guest boot: TLS for the address the guest dials
//! (10.0.2.2 under QEMU user networking), a simulated SEV-SNP platform
//! (`snpguard-sim init`), the test polkit authority (`snpguard-sim
//! polkit`) and snpguardd on a private bus trusting the platform's root.
//! Every process is stopped when its handle is dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{describe, io, run, HarnessError};

/// The QEMU fw_cfg item carrying the simulated platform's launch blob.
pub const FW_CFG_NAME: &str = "opt/org.snpguard/sim-launch";
/// Where that item appears in the guest (the agent's `[simulator] launch`).
pub const SIM_LAUNCH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.snpguard/sim-launch/raw";
/// How long snpguardd may take to report READY=1.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1 (free when asked; the daemon binds it).
pub fn free_port() -> Result<u16, HarnessError> {
    let l = io(
        "binding",
        Path::new("127.0.0.1:0"),
        std::net::TcpListener::bind("127.0.0.1:0"),
    )?;
    Ok(io(
        "reading the address of",
        Path::new("127.0.0.1:0"),
        l.local_addr(),
    )?
    .port())
}

/// A CA and a server certificate for 10.0.2.2 and 127.0.0.1 in `dir`
/// (scripts/generate-tls-certs.sh): ca.pem, server.pem, server.key.
pub fn generate_tls(dir: &Path) -> Result<(), HarnessError> {
    run(
        Command::new(crate::repo_root().join("scripts/generate-tls-certs.sh"))
            .arg("--output")
            .arg(dir)
            .args(["--ip", "10.0.2.2", "--ip", "127.0.0.1", "--days", "2"]),
    )
    .map(drop)
}

/// A simulated Genoa platform in `dir` (`dir/ark.pem` is its root).
pub fn sim_platform(dir: &Path) -> Result<(), HarnessError> {
    run(Command::new(crate::workspace_binary("snpguard-sim"))
        .args(["init", "--product", "genoa", "--dir"])
        .arg(dir))
    .map(drop)
}

/// A child process killed and reaped on drop.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `snpguard-sim polkit` on a private bus: allows every action.
pub struct Polkit {
    _child: Owned,
}

impl Polkit {
    /// Starts the authority on `bus_address` and returns once it owns
    /// polkit's name (it prints a line then; EOF means it failed).
    pub fn start(bus_address: &str, log: &Path) -> Result<Polkit, HarnessError> {
        let mut cmd = Command::new(crate::workspace_binary("snpguard-sim"));
        cmd.args(["polkit", "--bus", bus_address]);
        let command = describe(&cmd);
        let stderr = io("creating", log, std::fs::File::create(log))?;
        let mut child = Owned(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .map_err(|source| HarnessError::Spawn {
                    command: command.clone(),
                    source,
                })?,
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut line = String::new();
        io(
            "reading the output of",
            log,
            BufReader::new(stdout).read_line(&mut line),
        )?;
        if !line.contains("serving") {
            return Err(HarnessError::Fixture(format!(
                "{command} did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )));
        }
        Ok(Polkit { _child: child })
    }
}

/// snpguardd on a private bus, HTTPS on 127.0.0.1:`port` with the
/// certificate of `tls`, trusting the simulated platform's root, KDS off.
pub struct Daemon {
    child: Owned,
    /// The HTTPS port.
    pub port: u16,
    /// The state directory.
    pub state: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon (killed and reaped): a server that does not
    /// answer. [`Daemon::start`] on the same `dir` brings it back with
    /// its state.
    pub fn stop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts snpguardd with its state in `dir/state` (kept if it is
    /// there) and its configuration in `dir/conf.d`, and waits for
    /// READY=1.
    pub fn start(
        bus_address: &str,
        dir: &Path,
        ark: &Path,
        tls: &Path,
        port: u16,
    ) -> Result<Daemon, HarnessError> {
        let state = dir.join("state");
        let conf = dir.join("conf.d");
        io("creating", &conf, std::fs::create_dir_all(&conf))?;
        let ark_copy = conf.join("sim-ark.pem");
        io("copying", ark, std::fs::copy(ark, &ark_copy))?;
        let config = conf.join("snpguardd.toml");
        io(
            "writing",
            &config,
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\n\
                     tls_cert = \"{}\"\n\
                     tls_key = \"{}\"\n\
                     [[test_roots]]\nproduct = \"genoa\"\nark_path = \"sim-ark.pem\"\n\
                     [kds]\nenabled = false\n",
                    tls.join("server.pem").display(),
                    tls.join("server.key").display(),
                ),
            ),
        )?;
        let notify = io(
            "binding a notify socket for",
            dir,
            snpguard_testkit::ready::Notify::new(),
        )?;
        let log = state.with_extension("log");
        let log_file = io("creating", &log, std::fs::File::create(&log))?;
        let mut cmd = Command::new(crate::workspace_binary("snpguardd"));
        cmd.arg("--state-dir")
            .arg(&state)
            .arg("--bus")
            .arg(bus_address)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", notify.path())
            .env_remove("CREDENTIALS_DIRECTORY");
        let command = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                command: command.clone(),
                source,
            })?;
        let mut d = Daemon {
            child: Owned(child),
            port,
            state,
            log,
        };
        match notify.wait_ready(&mut d.child.0, READY_DEADLINE) {
            Ok(()) => Ok(d),
            Err(e) => Err(HarnessError::Fixture(format!(
                "{command} {e}; log:\n{}",
                d.log()
            ))),
        }
    }
}
