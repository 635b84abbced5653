//! A writable copy of a guest root file system to chroot into, with the
//! API file systems the guest's initrd tools need. Dropping it unmounts
//! everything below it first and never deletes a tree that still has a
//! mount inside it (a bind-mounted /dev must never be emptied).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cmd::{io, run, HarnessError};

/// An extracted guest tree in a temporary directory.
pub struct Chroot {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Chroot {
    /// Extracts `tar` into a fresh directory below `parent`.
    pub fn extract(tar: &Path, parent: &Path) -> Result<Chroot, HarnessError> {
        io("creating", parent, std::fs::create_dir_all(parent))?;
        let dir = io(
            "creating a directory in",
            parent,
            tempfile::Builder::new()
                .prefix("chroot-")
                .tempdir_in(parent),
        )?;
        let root = dir.path().join("root");
        io("creating", &root, std::fs::create_dir(&root))?;
        let chroot = Chroot {
            dir: Some(dir),
            root,
        };
        run(Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf"])
            .arg(tar)
            .arg("-C")
            .arg(&chroot.root))?;
        Ok(chroot)
    }

    /// The tree's top directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` (absolute inside the guest) on the host.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Writes `contents` to `path` inside the guest with `mode`, creating
    /// parent directories.
    pub fn write(&self, path: &str, contents: &[u8], mode: u32) -> Result<(), HarnessError> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(path);
        if let Some(parent) = p.parent() {
            io("creating", parent, std::fs::create_dir_all(parent))?;
        }
        io("writing", &p, std::fs::write(&p, contents))?;
        io(
            "chmod",
            &p,
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)),
        )
    }

    /// Mounts /proc, and binds /sys and /dev (as slaves), for tools that
    /// read them.
    fn mount_api(&self) -> Result<(), HarnessError> {
        run(Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(self.path("/proc")))?;
        for fs in ["/sys", "/dev"] {
            run(Command::new("mount")
                .arg("--rbind")
                .arg(fs)
                .arg(self.path(fs)))?;
            run(Command::new("mount")
                .arg("--make-rslave")
                .arg(self.path(fs)))?;
        }
        Ok(())
    }

    /// Mount points at or below the tree, deepest first.
    fn mounts(&self) -> Vec<String> {
        let top = self.root.to_string_lossy().into_owned();
        let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut m: Vec<String> = table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &top || p.starts_with(&format!("{top}/")))
            .collect();
        m.sort();
        m.reverse();
        m
    }

    fn unmount_all(&self) {
        for m in self.mounts() {
            let _ = Command::new("umount").arg("-R").arg("-l").arg(&m).output();
        }
    }

    /// Runs `args` inside the guest with /proc, /sys and /dev mounted,
    /// unmounting them afterwards whatever happened. Returns the output of
    /// a successful run, or the error with what it printed.
    pub fn run(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let result = self.mount_api().and_then(|()| {
            run(Command::new("chroot")
                .arg(&self.root)
                .args(args)
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LC_ALL", "C.UTF-8"))
        });
        self.unmount_all();
        result
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        self.unmount_all();
        let left = self.mounts();
        if let Some(dir) = self.dir.take() {
            if left.is_empty() {
                let _ = dir.close();
            } else {
                // Deleting through a mount would delete the host's files.
                let kept = dir.keep();
                eprintln!(
                    "chroot: {} still has mounts {left:?}; left in place",
                    kept.display()
                );
            }
        }
    }
}
