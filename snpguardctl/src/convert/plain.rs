//! `convert --no-encryption`: the staging directory of an unchanged
//! image, for trying a measured launch before an attestation server
//! exists. The input is attached read-only and nothing is installed or
//! encrypted: the staging directory gets the firmware, the chosen
//! kernel and its initrd as the image has them, the bootloader's command
//! line (filtered as convert filters it, `root=UUID=` of the root file
//! system) and the [`NO_ENCRYPTION`] label that `register` refuses and
//! `launch-config` requires.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::outputs::Partial;
use super::progress::Progress;
use super::{check_firmware, create_private, select, stage_download, stage_firmware, Args};
use crate::bundle::NO_CONFIDENTIALITY;
use crate::image::appliance::{gerr, Appliance, Drive};
use crate::image::{guest, inspect};
use crate::register::{CMDLINE, FIRMWARE, INITRD, KERNEL, NO_ENCRYPTION};

/// The label's text: what the directory is and is not.
const LABEL_TEXT: &str = "Written by `snpguardctl convert --no-encryption`.\n\
    The image this staging directory boots is NOT encrypted and has no SnpGuard agent:\n\
    a launch of it gives NO confidentiality. It is for trying a measured launch\n\
    (`snpguardctl launch-config`, `embed --in-staging`) before an attestation server\n\
    exists; `snpguardctl register` refuses it.\n";

fn check_inputs(a: &Args) -> Result<()> {
    for (what, p) in [("input image", &a.in_image), ("firmware", &a.firmware)] {
        if !p.is_file() {
            bail!("{what} {} is not a file", p.display());
        }
    }
    check_firmware(&a.firmware)?;
    guest::check_append(&a.cmdline_append)?;
    Ok(())
}

pub fn run(a: &Args) -> Result<()> {
    check_inputs(a)?;
    eprintln!(
        "WARNING: --no-encryption: nothing is encrypted and no agent is installed; a launch \
         of this image gives NO confidentiality (for trying a measured launch only)"
    );
    let staging = Partial::new(&a.out_staging, true)?;
    std::fs::create_dir(staging.path())
        .with_context(|| format!("creating {}", staging.path().display()))?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))?;
    stage_firmware(&a.firmware, &staging.path().join(FIRMWARE))?;

    let mut progress = Progress::new(a.json);
    let phase = progress.start("inspect", "starting the appliance and inspecting the image");
    let app = Appliance::launch(&[Drive {
        path: &a.in_image,
        readonly: true,
    }])?;
    let guest = inspect::inspect(&app)?;
    progress.finish(phase);
    let interactive = std::io::stdin().is_terminal();
    let kernel = select::choose(&guest, a.kernel.as_deref(), a.yes, interactive)?.clone();

    let phase = progress.start("extract", "extracting kernel, initrd and command line");
    inspect::mount_ro(&app, guest.root.partnum, &guest.mounts)?;
    let has_initrd = app
        .g()
        .is_file(
            &kernel.initrd,
            guestfs::IsFileOptArgs {
                followsymlinks: Some(true),
            },
        )
        .map_err(gerr("is_file"))?;
    if !has_initrd {
        bail!(
            "kernel {} has no initrd in the image ({}); --no-encryption changes nothing in \
             the image, so it cannot make one: boot the image once to generate it, or convert \
             without --no-encryption",
            kernel.version,
            kernel.initrd
        );
    }
    stage_download(&app, &kernel.kernel, &staging.path().join(KERNEL))?;
    stage_download(&app, &kernel.initrd, &staging.path().join(INITRD))?;
    let guest::Cmdline {
        line: cmdline,
        dropped,
    } = guest::plain_cmdline(&kernel.cmdline, &guest.root.uuid, &a.cmdline_append)?;
    if !dropped.is_empty() {
        eprintln!(
            "WARNING: not carried over from the bootloader's command line (each opens a \
             shell, changes init or resumes from disk): {}",
            dropped.join(" ")
        );
    }
    let mut f = create_private(&staging.path().join(CMDLINE))?;
    f.write_all(cmdline.as_bytes())?;
    f.sync_all()?;
    let mut f = create_private(&staging.path().join(NO_ENCRYPTION))?;
    f.write_all(LABEL_TEXT.as_bytes())?;
    f.sync_all()?;
    app.g().umount_all().map_err(gerr("umount_all"))?;
    app.shutdown()?;
    progress.finish(phase);
    staging.commit()?;

    if a.json {
        println!(
            "{}",
            json!({
                "no_encryption": true,
                "in_image": a.in_image.display().to_string(),
                "out_staging": a.out_staging.display().to_string(),
                "product": guest.product,
                "root": guest.root,
                "kernel": kernel,
                "cmdline": cmdline,
            })
        );
    } else {
        println!(
            "staged    {} -> {}",
            a.in_image.display(),
            a.out_staging.display()
        );
        println!("kernel    {}", kernel.version);
        println!("cmdline   {cmdline}");
        println!(
            "next      snpguardctl launch-config --staging-dir {} --vcpus N --vcpu-type TYPE",
            a.out_staging.display()
        );
    }
    eprintln!("{NO_CONFIDENTIALITY}");
    Ok(())
}
