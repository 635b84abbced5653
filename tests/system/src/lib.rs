//! Reusable harness of SnpGuard's system tests (the initrd boot test, and
//! later `convert` and the demo): a cached Debian guest root file system
//! ([`rootfs`]), a chroot of it ([`chroot`]), an initrd built inside that
//! chroot by the guest's own tool with our module, agent, configuration
//! and CA ([`initrd`]), a LUKS2 disk whose root prints a marker
//! ([`disk`]), a QEMU/TCG boot with a deadline whose serial log the
//! tests read ([`qemu`]), and the host side of a boot: TLS, the simulated
//! platform, the test polkit and snpguardd on a private bus ([`host`]);
//! and the end-to-end guest one conversion test publishes for the e2e
//! boots ([`e2e_guest`]).
//!
//! Everything here needs root (debootstrap, chroot, mounts, dm) and the
//! tools `scripts/setup-deps.sh` installs. The tests are `#[ignore]`d in
//! the ordinary `cargo test` run and run by `make system-test`.

pub mod chroot;
pub mod cmd;
pub mod disk;
pub mod e2e_guest;
pub mod host;
pub mod initrd;
pub mod qemu;
pub mod rootfs;

use std::path::{Path, PathBuf};

pub use cmd::HarnessError;

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The directory cargo put this test's binaries in (`target/<profile>`),
/// where `cargo build --workspace` also put the workspace's binaries.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// A workspace binary built next to the tests, or a clear panic naming
/// the command that builds it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `make system-test` (it builds the workspace first)",
        p.display()
    );
    p
}
