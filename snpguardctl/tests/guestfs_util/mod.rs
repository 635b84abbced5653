//! Shared by the convert and embed tests: the generated test images, a
//! libguestfs appliance to look inside outputs, and file manifests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cached test image for `layout` (tests/guest/build-image.sh). Panics
/// with what to do when the root filesystem it needs is missing.
pub fn image(layout: &str) -> PathBuf {
    image_of(layout, None)
}

/// The cached test image for `layout` built from `rootfs` (a directory or
/// tar of tests/guest/build-rootfs.sh; default SNPGUARD_TEST_ROOTFS).
pub fn image_of(layout: &str, rootfs: Option<&Path>) -> PathBuf {
    let out = Command::new(repo().join("tests/guest/build-image.sh"))
        .arg(layout)
        .args(rootfs)
        .current_dir(repo())
        .output()
        .expect("running tests/guest/build-image.sh");
    assert!(
        out.status.success(),
        "tests/guest/build-image.sh {layout} failed (set SNPGUARD_TEST_ROOTFS or run \
         tests/guest/build-rootfs.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = String::from_utf8(out.stdout).expect("path");
    repo().join(p.trim())
}

/// The cached `--marker` test image for `layout` (build-image.sh: the
/// guest prints where its file systems are mounted from and a token, kept
/// beside the image as `.token`, once it reaches multi-user).
pub fn marker_image(layout: &str) -> PathBuf {
    let out = Command::new(repo().join("tests/guest/build-image.sh"))
        .args(["--marker", layout])
        .current_dir(repo())
        .output()
        .expect("running tests/guest/build-image.sh");
    assert!(
        out.status.success(),
        "tests/guest/build-image.sh --marker {layout} failed (set SNPGUARD_TEST_ROOTFS or run \
         tests/guest/build-rootfs.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = String::from_utf8(out.stdout).expect("path");
    repo().join(p.lines().last().unwrap_or_default().trim())
}

/// `snpguardctl` with `args`.
pub fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snpguardctl"))
        .args(args)
        .env("LIBGUESTFS_BACKEND", "direct")
        .env("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")
        .output()
        .expect("running snpguardctl")
}

/// SHA-256 of a file, hex.
pub fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).expect("open"), &mut h).expect("read");
    hex::encode(h.finalize())
}

/// A launched appliance over `drives` (path, read-only).
pub struct Appliance(pub guestfs::Handle);

fn e(op: &str) -> impl Fn(guestfs::Error) -> String + '_ {
    move |err| format!("{op}: {err:?}")
}

impl Appliance {
    pub fn launch(drives: &[(&Path, bool)]) -> Self {
        std::env::set_var("LIBGUESTFS_BACKEND", "direct");
        std::env::set_var("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg");
        let g = guestfs::Handle::create().expect("guestfs handle");
        for (p, ro) in drives {
            g.add_drive(
                p.to_str().unwrap(),
                guestfs::AddDriveOptArgs {
                    readonly: Some(*ro),
                    format: Some("qcow2"),
                    iface: None,
                    name: None,
                    label: None,
                    protocol: None,
                    server: None,
                    username: None,
                    secret: None,
                    cachemode: None,
                    discard: None,
                    copyonread: None,
                },
            )
            .map_err(e("add_drive"))
            .unwrap();
        }
        g.set_memsize(1536).map_err(e("set_memsize")).unwrap();
        g.launch().map_err(e("launch")).unwrap();
        Appliance(g)
    }

    /// Runs `script` in the appliance's shell; returns (exit status,
    /// output).
    pub fn sh(&self, script: &str) -> (i32, String) {
        let w = format!("( {script}\n) 2>&1; echo \"__rc=$?\"");
        let out = self.0.debug("sh", &[&w]).map_err(e("debug sh")).unwrap();
        let at = out.rfind("__rc=").expect("rc marker");
        let rc = out[at + 5..].trim().parse().expect("rc");
        (rc, out[..at].to_string())
    }

    /// The kernel's name of drive `index` (the kernel may order disks
    /// differently from libguestfs's API names).
    pub fn kdisk(&self, index: usize) -> String {
        self.ok(&format!(
            "readlink -f /dev/disk/by-path/*-scsi-0:0:{index}:0"
        ))
        .trim()
        .to_string()
    }

    /// Like `sh`, panicking on a non-zero exit.
    pub fn ok(&self, script: &str) -> String {
        let (rc, out) = self.sh(script);
        assert_eq!(rc, 0, "{script}: {out}");
        out
    }
}

/// A manifest of the tree mounted at `dir` in the appliance: for every
/// path its type, mode, owner, group, size, symlink target, mtime,
/// content hash, xattrs (ACLs included, as system.posix_acl_*) and the
/// set of paths it shares its inode with.
pub fn manifest(app: &Appliance, dir: &str) -> BTreeMap<String, String> {
    let listing = app.ok(&format!(
        "cd {dir} && find . -xdev -printf '%p\\t%y\\t%m\\t%U\\t%G\\t%s\\t%l\\t%T@\\t%i\\n'"
    ));
    let hashes = app.ok(&format!(
        "cd {dir} && find . -xdev -type f -print0 | xargs -0 -r sha256sum"
    ));
    let xattrs = app.ok(&format!(
        "cd {dir} && getfattr -R -P -h -d -m - -e hex . 2>/dev/null || true"
    ));
    let mut hash_of = BTreeMap::new();
    for l in hashes.lines() {
        if let Some((h, p)) = l.split_once("  ") {
            hash_of.insert(p.to_string(), h.to_string());
        }
    }
    let mut xattr_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for l in xattrs.lines() {
        if let Some(p) = l.strip_prefix("# file: ") {
            current = if p == "." {
                ".".into()
            } else {
                format!("./{}", p.trim_start_matches("./"))
            };
        } else if !l.trim().is_empty() {
            xattr_of
                .entry(current.clone())
                .or_default()
                .push(l.to_string());
        }
    }
    let mut by_inode: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rows = Vec::new();
    for l in listing.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), 9, "{l}");
        if f[1] != "d" {
            by_inode
                .entry(f[8].to_string())
                .or_default()
                .push(f[0].to_string());
        }
        rows.push(f);
    }
    let mut m = BTreeMap::new();
    for f in rows {
        let links = if f[1] == "d" {
            String::new()
        } else {
            let mut group = by_inode[f[8]].clone();
            group.sort();
            group.join(",")
        };
        let mut xa = xattr_of.get(f[0]).cloned().unwrap_or_default();
        xa.sort();
        // Directory sizes depend on the filesystem's history, not on
        // what the copy preserved.
        let size = if f[1] == "d" { "" } else { f[5] };
        m.insert(
            f[0].to_string(),
            format!(
                "{} {} {}:{} size={} -> {} mtime={} sha={} links=[{}] xattrs={:?}",
                f[1],
                f[2],
                f[3],
                f[4],
                size,
                f[6],
                f[7],
                hash_of.get(f[0]).map_or("", |s| s.as_str()),
                links,
                xa
            ),
        );
    }
    m
}

/// Differences between two manifests, for a readable assertion message.
pub fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("only in input: {k}")),
            Some(w) if w != v => d.push(format!("{k}:\n  in  {v}\n  out {w}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            d.push(format!("only in output: {k}"));
        }
    }
    d
}
