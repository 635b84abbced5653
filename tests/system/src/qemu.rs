//! A QEMU/TCG boot of a kernel and initrd with a deadline, the serial
//! console going to a log file the tests read.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{describe, io, HarnessError};

/// Text that only a shell prompt or rescue mode prints: a refused guest
/// must never show any of it.
pub const SHELL_SIGNS: &[&str] = &[
    "(initramfs)",
    "BusyBox v",
    "Entering emergency mode",
    "emergency shell",
    "Give root password",
    "Press Enter for maintenance",
    "dracut:/#",
    "can't access tty",
];

/// One boot's set-up.
pub struct Boot<'a> {
    /// The guest's kernel.
    pub kernel: &'a Path,
    /// The initrd.
    pub initrd: &'a Path,
    /// The kernel command line.
    pub append: &'a str,
    /// A virtio disk (/dev/vda in the guest): a raw image, or a qcow2
    /// when its name ends in `.qcow2`.
    pub disk: Option<&'a Path>,
    /// `-fw_cfg name=NAME,file=PATH` items.
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// How long the guest may run before it is killed.
    pub deadline: Duration,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Outcome {
    /// The serial console.
    pub log: String,
    /// QEMU's exit status if it exited by itself (the guest powered off,
    /// or rebooted under -no-reboot), `None` if it was killed at the
    /// deadline.
    pub exited: Option<ExitStatus>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// Whether the kernel powered the machine off (as opposed to a reboot
    /// or a hang).
    pub fn powered_off(&self) -> bool {
        self.exited.is_some() && self.log.contains("reboot: Power down")
    }

    /// The [`SHELL_SIGNS`] the console shows.
    pub fn shell_signs(&self) -> Vec<&'static str> {
        SHELL_SIGNS
            .iter()
            .copied()
            .filter(|s| self.log.contains(s))
            .collect()
    }
}

/// Kills QEMU if the test panics while it runs.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Boot<'_> {
    /// Boots under TCG with user networking (the host's 127.0.0.1 is
    /// 10.0.2.2 in the guest) and waits for QEMU to exit, at most until
    /// the deadline. `log` receives the serial console.
    pub fn run(&self, log: &Path) -> Result<Outcome, HarnessError> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "1024", "-smp", "1"])
            .args(["-nographic", "-no-reboot", "-monitor", "none"])
            .arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-append")
            .arg(self.append)
            .args([
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-pci,netdev=net0",
            ])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()));
        if let Some(disk) = self.disk {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            cmd.arg("-drive")
                .arg(format!("if=virtio,format={format},file={}", disk.display()));
        }
        for (name, file) in &self.fw_cfg {
            cmd.arg("-fw_cfg")
                .arg(format!("name={name},file={}", file.display()));
        }
        let command = describe(&cmd);
        let qemu_log = log.with_extension("qemu.txt");
        let stderr = io("creating", &qemu_log, std::fs::File::create(&qemu_log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| HarnessError::Spawn { command, source })?;
        let mut running = Running(child);
        let start = Instant::now();
        let exited = loop {
            if let Some(status) = io("waiting for", log, running.0.try_wait())? {
                break Some(status);
            }
            if start.elapsed() >= self.deadline {
                break None;
            }
            // Polling QEMU's exit; the condition, not the interval, ends it.
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(running);
        let elapsed = start.elapsed();
        let serial = std::fs::read(log).unwrap_or_default();
        let mut text = String::from_utf8_lossy(&serial).into_owned();
        if let Ok(err) = std::fs::read_to_string(&qemu_log) {
            if !err.trim().is_empty() {
                text.push_str("\n--- qemu stderr ---\n");
                text.push_str(&err);
            }
        }
        Ok(Outcome {
            log: text,
            exited,
            elapsed,
        })
    }
}
