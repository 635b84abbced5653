//! What convert changes inside the guest: the agent, its configuration and
//! CA, the initrd module, fstab, and the regenerated initrd; and the kernel
//! command line that boots it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use snpguard_protocol::agent_config::ReportSource;
use snpguard_protocol::agent_config::{AgentConfig, Luks, Retry, Server, Simulator, Volume};

use super::appliance::{gerr, Appliance};
use super::inspect::InitrdTool;
use super::layout::{rewrite_fstab, FstabPlan};

/// The agent's path in the guest.
pub const AGENT_PATH: &str = "/usr/lib/snpguard/snpguard-agent";
/// The agent configuration's path in the guest.
pub const CONFIG_PATH: &str = "/etc/snpguard/agent.toml";
/// The pinned CA's path in the guest.
pub const CA_PATH: &str = "/etc/snpguard/ca.pem";
/// Where the simulated platform's launch blob appears in the guest: the
/// QEMU fw_cfg item `opt/org.snpguard/sim-launch` (`snpguard-sim launch`).
pub const SIM_LAUNCH_PATH: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/org.snpguard/sim-launch/raw";

/// The kernel postinst hook that submits a new kernel for renewal, under
/// the modules directory (`make install`: /usr/share/snpguard/kernel/…).
pub const KERNEL_HOOK_SRC: &str = "kernel/postinst.d/zz-snpguard-renew";
/// Where the kernel package's run-parts finds that hook in the guest.
pub const KERNEL_HOOK_PATH: &str = "/etc/kernel/postinst.d/zz-snpguard-renew";
/// dracut configuration that keeps the module in every initrd the guest
/// builds later (kernel updates run dracut without `--add snpguard`).
pub const DRACUT_CONF_PATH: &str = "/etc/dracut.conf.d/snpguard.conf";
/// Its content (docs/initrd.md).
pub const DRACUT_CONF: &str = "add_dracutmodules+=\" snpguard \"\n";

/// Kernel parameters convert adds for the guest's initrd framework, as
/// docs/initrd.md pins them: failing closed (no shell, no prompt, power
/// off or reboot on panic), never resuming a hibernation image (it would
/// come from a disk the host writes) and, for dracut, the network the
/// agent needs (initramfs-tools brings it up by default). `rd.luks=0`
/// keeps dracut's own LUKS handling from ever prompting for a passphrase.
pub fn snpguard_args(tool: InitrdTool) -> &'static [&'static str] {
    match tool {
        InitrdTool::InitramfsTools => &["noresume", "panic=-1"],
        InitrdTool::Dracut => &[
            "rd.neednet=1",
            "ip=dhcp",
            "rd.shell=0",
            "rd.emergency=poweroff",
            "rd.luks=0",
            "noresume",
            "panic=-1",
        ],
    }
}

/// The keys of [`snpguard_args`] (both frameworks) and `root`: convert
/// sets them, and a later duplicate would override its value.
fn reserved_keys() -> Vec<String> {
    let both = [InitrdTool::InitramfsTools, InitrdTool::Dracut];
    let mut keys: Vec<String> = both
        .iter()
        .flat_map(|t| snpguard_args(*t))
        .chain(&["root"])
        .map(|a| super::cmdline::key(a))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The arguments of `--cmdline-append`: refused when one is forbidden
/// ([`super::cmdline::check_append`]) or sets what convert sets itself
/// (`root=`, `panic=`, `noresume`, dracut's `rd.*` …).
pub fn check_append(append: &str) -> Result<Vec<String>> {
    let args = super::cmdline::check_append(append)?;
    let reserved = reserved_keys();
    if let Some(a) = args
        .iter()
        .find(|a| reserved.contains(&super::cmdline::key(a)))
    {
        bail!(
            "--cmdline-append: {a:?} would override what convert sets itself \
             (root=, noresume, panic= and, for dracut, rd.neednet, ip, rd.shell, \
             rd.emergency, rd.luks); remove it"
        );
    }
    Ok(args)
}

/// A converted guest's kernel command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Cmdline {
    /// The command line, as measured.
    pub line: String,
    /// Bootloader arguments the filter removed (see [`super::cmdline`]).
    pub dropped: Vec<String>,
}

/// The command line that boots the converted guest: `root=` naming the
/// device the agent maps, the bootloader's arguments without `root=`,
/// `BOOT_IMAGE=`, the forbidden ones ([`super::cmdline::FORBIDDEN`],
/// reported in [`Cmdline::dropped`]) and those convert sets itself, `ro`
/// unless `ro`/`rw` is there, `console=ttyS0` unless a console is named,
/// convert's parameters, then the operator's additions, which are refused
/// when one of them is forbidden.
pub fn cmdline(
    bootloader_args: &str,
    mapper: &str,
    tool: InitrdTool,
    append: &str,
) -> Result<Cmdline> {
    assemble(
        bootloader_args,
        &format!("root={mapper}"),
        snpguard_args(tool),
        append,
    )
}

/// The command line of a `convert --no-encryption` launch: the
/// bootloader's, filtered as [`cmdline`] filters it, with `root=UUID=` of
/// the unchanged root file system and nothing of SnpGuard's.
pub fn plain_cmdline(bootloader_args: &str, root_uuid: &str, append: &str) -> Result<Cmdline> {
    if root_uuid.is_empty() || !root_uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!(
            "the root file system has no usable UUID ({root_uuid:?}) to name on the command line"
        );
    }
    assemble(
        bootloader_args,
        &format!("root=UUID={root_uuid}"),
        &[],
        append,
    )
}

fn assemble(bootloader_args: &str, root: &str, ours: &[&str], append: &str) -> Result<Cmdline> {
    let append = check_append(append)?;
    let mut replaced: Vec<&str> = vec!["root"];
    replaced.extend(ours.iter().map(|a| a.split('=').next().unwrap_or(a)));
    let filtered = super::cmdline::filter_bootloader(bootloader_args, &replaced);
    let mut args = filtered.kept;
    if !args.iter().any(|a| a == "ro" || a == "rw") {
        args.insert(0, "ro".into());
    }
    if !args.iter().any(|a| a.starts_with("console=")) {
        args.push("console=ttyS0".into());
    }
    let mut out = vec![root.to_owned()];
    out.extend(args);
    out.extend(ours.iter().map(|s| s.to_string()));
    out.extend(append);
    Ok(Cmdline {
        line: out.join(" "),
        dropped: filtered.dropped,
    })
}

/// The agent configuration (/etc/snpguard/agent.toml) for `servers`, the
/// LUKS2 root volume, the data `volumes` (mount point and parameters) and
/// the report `source`: `Auto` (the SEV-SNP firmware: configfs-tsm, else
/// /dev/sev-guest) or `Simulated` (snpguard-sim's platform through QEMU's
/// fw_cfg: tests and the demo only; only the agent's simulator build
/// accepts it). Checked as the agent checks it before it is written.
pub fn agent_config(
    servers: &[String],
    luks: &Luks,
    volumes: &[(String, Luks)],
    source: ReportSource,
) -> Result<String> {
    let simulated = source == ReportSource::Simulated;
    let config = AgentConfig {
        servers: servers.iter().map(|s| Server { url: s.clone() }).collect(),
        ca: CA_PATH.into(),
        report_source: source,
        luks: luks.clone(),
        volumes: volumes
            .iter()
            .map(|(mountpoint, v)| Volume {
                mountpoint: mountpoint.clone(),
                luks: v.clone(),
            })
            .collect(),
        retry: Retry::default(),
        simulator: simulated.then(|| Simulator {
            launch: SIM_LAUNCH_PATH.into(),
        }),
    };
    let header = if simulated {
        "# Written by snpguardctl convert. Measured as part of the initrd.\n\
         # TEST ONLY: the simulated platform of snpguard-sim.\n"
    } else {
        "# Written by snpguardctl convert. Measured as part of the initrd.\n"
    };
    config
        .to_toml(header)
        .context("the agent configuration convert would write")
}

/// Files of the initrd module for `tool` under `modules_dir` (the tree
/// installed at /usr/share/snpguard, or the source tree), with their
/// destination in the guest and whether they are executable.
pub fn module_files(modules_dir: &Path, tool: InitrdTool) -> Result<Vec<(PathBuf, String, bool)>> {
    let (src, dst) = match tool {
        InitrdTool::InitramfsTools => (
            modules_dir.join("initramfs-tools"),
            "/usr/share/initramfs-tools".to_string(),
        ),
        InitrdTool::Dracut => (
            modules_dir.join("dracut").join("90snpguard"),
            "/usr/lib/dracut/modules.d/90snpguard".to_string(),
        ),
    };
    let mut out = Vec::new();
    walk(&src, &src, &dst, &mut out)
        .with_context(|| format!("reading the {} module in {}", tool.name(), src.display()))?;
    if out.is_empty() {
        bail!(
            "no {} module files in {}; pass --modules-dir DIR with the SnpGuard modules",
            tool.name(),
            src.display()
        );
    }
    out.sort();
    Ok(out)
}

/// The kernel postinst hook under `modules_dir` ([`KERNEL_HOOK_SRC`]).
pub fn kernel_hook(modules_dir: &Path) -> Result<PathBuf> {
    let p = modules_dir.join(KERNEL_HOOK_SRC);
    if !p.is_file() {
        bail!(
            "the kernel hook {} is missing (converted guests need it to renew \
             their launch after a kernel update); pass --modules-dir DIR with \
             the tree `make install` puts at /usr/share/snpguard",
            p.display()
        );
    }
    Ok(p)
}

fn walk(base: &Path, dir: &Path, dst: &str, out: &mut Vec<(PathBuf, String, bool)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("README") || name.starts_with('.') {
            continue;
        }
        if ft.is_dir() {
            walk(base, &p, dst, out)?;
        } else if ft.is_file() {
            let rel = p.strip_prefix(base).context("module path")?;
            let rel = rel.to_str().context("module file names must be UTF-8")?;
            let exec = e.metadata()?.permissions().mode() & 0o111 != 0;
            out.push((p.clone(), format!("{dst}/{rel}"), exec));
        } else {
            bail!("{} is neither a file nor a directory", p.display());
        }
    }
    Ok(())
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not a UTF-8 path", p.display()))
}

/// Uploads `local` to `remote` in the mounted guest, owned by root with
/// `mode`.
fn install_file(app: &Appliance, local: &Path, remote: &str, mode: i32) -> Result<()> {
    let g = app.g();
    let parent = remote
        .rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
    g.mkdir_p(parent).map_err(gerr("mkdir_p"))?;
    g.upload(utf8(local)?, remote)
        .map_err(gerr("upload"))
        .with_context(|| format!("installing {} as {remote}", local.display()))?;
    g.chown(0, 0, remote).map_err(gerr("chown"))?;
    g.chmod(mode, remote).map_err(gerr("chmod"))?;
    Ok(())
}

/// What to install into the guest.
pub struct Install<'a> {
    /// Agent binary on the host.
    pub agent: &'a Path,
    /// Directory with `initramfs-tools/` and `dracut/90snpguard/`.
    pub modules_dir: &'a Path,
    /// The pinned CA (PEM) on the host.
    pub ca: &'a Path,
    /// The agent configuration.
    pub config: &'a str,
    /// The guest's initrd framework.
    pub tool: InitrdTool,
}

/// The udev rule (in the modules directory's dracut module) that makes the
/// agent's mappings usable by systemd; the guest's root gets it too when it
/// has data volumes (its fstab mounts them through /dev/mapper, and a
/// guest without dmsetup has no device-mapper rules of its own).
pub const DM_RULES_SRC: &str = "dracut/90snpguard/55-snpguard-dm.rules";
/// Where the guest's udev finds it.
pub const DM_RULES_PATH: &str = "/etc/udev/rules.d/55-snpguard-dm.rules";

/// Installs the agent, configuration, CA, initrd module (with dracut's
/// configuration enabling it) and the kernel postinst hook into the guest
/// mounted at `/`, and rewrites fstab by `plan` (the root by UUID, data
/// volumes through /dev/mapper, /boot gone, the ESP `noauto`, no swap
/// partition). Returns the swap lines it dropped.
pub fn install(app: &Appliance, i: &Install<'_>, plan: &FstabPlan) -> Result<Vec<String>> {
    let g = app.g();
    install_file(app, i.agent, AGENT_PATH, 0o755)?;
    install_file(app, i.ca, CA_PATH, 0o644)?;
    g.write(CONFIG_PATH, i.config.as_bytes())
        .map_err(gerr("write"))
        .context("writing the agent configuration")?;
    g.chmod(0o644, CONFIG_PATH).map_err(gerr("chmod"))?;
    for (local, remote, exec) in module_files(i.modules_dir, i.tool)? {
        install_file(app, &local, &remote, if exec { 0o755 } else { 0o644 })?;
    }
    if i.tool == InitrdTool::Dracut {
        g.mkdir_p("/etc/dracut.conf.d").map_err(gerr("mkdir_p"))?;
        g.write(DRACUT_CONF_PATH, DRACUT_CONF.as_bytes())
            .map_err(gerr("write"))
            .context("writing the dracut configuration")?;
        g.chown(0, 0, DRACUT_CONF_PATH).map_err(gerr("chown"))?;
        g.chmod(0o644, DRACUT_CONF_PATH).map_err(gerr("chmod"))?;
    }
    install_file(app, &kernel_hook(i.modules_dir)?, KERNEL_HOOK_PATH, 0o755)?;
    if !plan.encrypted.is_empty() {
        let rules = i.modules_dir.join(DM_RULES_SRC);
        if !rules.is_file() {
            bail!(
                "{} is missing: the guest's data volumes need it; pass --modules-dir DIR \
                 with the tree `make install` puts at /usr/share/snpguard",
                rules.display()
            );
        }
        install_file(app, &rules, DM_RULES_PATH, 0o644)?;
    }
    let has_fstab = g
        .is_file(
            "/etc/fstab",
            guestfs::IsFileOptArgs {
                followsymlinks: Some(true),
            },
        )
        .map_err(gerr("is_file"))?;
    if !has_fstab {
        if plan.encrypted.is_empty() && plan.moved.is_empty() && plan.esp.is_empty() {
            return Ok(Vec::new());
        }
        bail!("the guest has file systems besides / but no /etc/fstab");
    }
    let fstab = String::from_utf8_lossy(&g.read_file("/etc/fstab").map_err(gerr("read_file"))?)
        .into_owned();
    let new = rewrite_fstab(&fstab, plan)?;
    if new.text != fstab {
        g.write("/etc/fstab", new.text.as_bytes())
            .map_err(gerr("write"))?;
    }
    Ok(new.dropped_swaps)
}

/// Regenerates the initrd of kernel `version` at `initrd` with the guest's
/// own tool (chrooted into the guest by libguestfs; no network).
pub fn regenerate_initrd(
    app: &Appliance,
    tool: InitrdTool,
    tool_path: &str,
    version: &str,
    initrd: &str,
) -> Result<String> {
    let g = app.g();
    let exists = g
        .is_file(
            initrd,
            guestfs::IsFileOptArgs {
                followsymlinks: Some(true),
            },
        )
        .map_err(gerr("is_file"))?;
    let args: Vec<&str> = match tool {
        InitrdTool::InitramfsTools => {
            vec![tool_path, if exists { "-u" } else { "-c" }, "-k", version]
        }
        InitrdTool::Dracut => vec![
            tool_path,
            "--force",
            "--no-hostonly-cmdline",
            "--add",
            "snpguard",
            "--kver",
            version,
            initrd,
        ],
    };
    g.command(&args)
        .map_err(gerr("command"))
        .with_context(|| format!("regenerating the initrd with {}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::luks;

    #[test]
    fn cmdline_keeps_bootloader_args_and_sets_root() {
        let c = cmdline(
            "BOOT_IMAGE=/vmlinuz root=PARTUUID=abc ro console=ttyS0 panic=5 quiet rd.break init=/bin/sh \
             resume=/dev/vdb noresume systemd.debug-shell single",
            "/dev/mapper/snpguard_root",
            InitrdTool::InitramfsTools,
            "loglevel=7 ",
        )
        .unwrap();
        assert_eq!(
            c.line,
            "root=/dev/mapper/snpguard_root ro console=ttyS0 quiet noresume panic=-1 loglevel=7"
        );
        assert_eq!(
            c.dropped,
            [
                "rd.break",
                "init=/bin/sh",
                "resume=/dev/vdb",
                "systemd.debug-shell",
                "single"
            ]
        );
        let d = cmdline("", "/dev/mapper/r", InitrdTool::Dracut, "").unwrap();
        assert_eq!(
            d.line,
            "root=/dev/mapper/r ro console=ttyS0 rd.neednet=1 ip=dhcp rd.shell=0 \
             rd.emergency=poweroff rd.luks=0 noresume panic=-1"
        );
        assert!(d.dropped.is_empty());
        assert!(!d.line.ends_with(' ') && !d.line.contains('\n'));
    }

    #[test]
    fn a_plain_cmdline_names_the_root_by_uuid_and_adds_nothing_of_snpguard() {
        let c = plain_cmdline(
            "BOOT_IMAGE=/vmlinuz root=PARTUUID=abc ro quiet panic=5 init=/bin/sh",
            "0f6c6a4e-5b1e-4d7a-9e0c-1f2a3b4c5d6e",
            "loglevel=7",
        )
        .unwrap();
        assert_eq!(
            c.line,
            "root=UUID=0f6c6a4e-5b1e-4d7a-9e0c-1f2a3b4c5d6e ro quiet panic=5 console=ttyS0 \
             loglevel=7"
        );
        assert_eq!(c.dropped, ["init=/bin/sh"]);
        // The operator's additions are checked as convert checks them.
        let e = plain_cmdline("", "0f6c", "rd.break")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rd.break"), "{e}");
        // A UUID that could smuggle arguments is refused.
        for bad in ["", "a b", "x=1", "abc\n"] {
            assert!(plain_cmdline("", bad, "").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_append_overriding_convert_is_refused_by_name() {
        for (append, named) in [
            ("root=/dev/vdb1", "\"root=/dev/vdb1\""),
            ("quiet panic=5", "\"panic=5\""),
            ("noresume", "\"noresume\""),
            ("rd.luks=1", "\"rd.luks=1\""),
            ("ip=off", "\"ip=off\""),
        ] {
            for tool in [InitrdTool::InitramfsTools, InitrdTool::Dracut] {
                let e = cmdline("", "/dev/mapper/r", tool, append)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.starts_with(&format!(
                        "--cmdline-append: {named} would override what convert sets itself"
                    )),
                    "{e}"
                );
            }
        }
        assert_eq!(
            check_append("quiet loglevel=7 rootwait").unwrap(),
            ["quiet", "loglevel=7", "rootwait"]
        );
    }

    #[test]
    fn a_forbidden_append_is_refused_by_name() {
        for (append, named) in [
            ("quiet rd.break", "\"rd.break\""),
            ("systemd.debug-shell", "\"systemd.debug-shell\""),
            ("break=premount", "\"break=premount\""),
            ("resume=/dev/vdb", "\"resume=/dev/vdb\""),
            ("1", "\"1\""),
        ] {
            let e = cmdline("", "/dev/mapper/r", InitrdTool::Dracut, append)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("--cmdline-append: {named} is not allowed")),
                "{e}"
            );
        }
    }

    #[test]
    fn agent_config_is_valid_toml_with_the_pinned_parameters() {
        let p = luks::new_volume(luks::MAPPER_NAME, "0b5c7d1e-aaaa-4bbb-8ccc-123456789abc");
        let c = agent_config(
            &["https://a:8443".into(), "https://b\"x".into()],
            &p,
            &[],
            ReportSource::Auto,
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&c).expect("valid TOML");
        assert_eq!(
            v["servers"].as_array().unwrap()[1].as_str(),
            Some("https://b\"x")
        );
        assert_eq!(v["ca"].as_str(), Some(CA_PATH));
        let l = v["luks"].as_table().unwrap();
        assert_eq!(
            l["device"].as_str(),
            Some("UUID=0b5c7d1e-aaaa-4bbb-8ccc-123456789abc")
        );
        assert_eq!(l["offset"].as_integer(), Some(16 * 1024 * 1024));
        assert_eq!(l["key_bytes"].as_integer(), Some(64));
        assert_eq!(l["sector_size"].as_integer(), Some(512));
        assert_eq!(l["name"].as_str(), Some("snpguard_root"));
        assert_eq!(v["retry"]["attempts"].as_integer(), Some(5));
        assert_eq!(v["report_source"].as_str(), Some("auto"));
        assert!(v.get("simulator").is_none(), "{c}");
    }

    #[test]
    fn data_volumes_are_written_as_volumes_tables() {
        let root = luks::new_root();
        let var = luks::new_data("snpguard_var");
        let home = luks::new_data("snpguard_home");
        let c = agent_config(
            &["https://a:8443".into()],
            &root,
            &[("/var".into(), var.clone()), ("/home".into(), home.clone())],
            ReportSource::Auto,
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&c).expect("valid TOML");
        let vols = v["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        for (t, (mp, p)) in vols.iter().zip([("/var", &var), ("/home", &home)]) {
            assert_eq!(t["mountpoint"].as_str(), Some(mp));
            assert_eq!(t["uuid"].as_str(), Some(p.uuid.as_str()));
            assert_eq!(t["device"].as_str().unwrap(), format!("UUID={}", p.uuid));
            assert_eq!(t["name"].as_str(), Some(p.name.as_str()));
            assert_eq!(t["key_bytes"].as_integer(), Some(64));
            assert_eq!(t["offset"].as_integer(), Some(16 << 20));
        }
        // The root's table is what it is without volumes.
        let plain: toml::Table = toml::from_str(
            &agent_config(&["https://a:8443".into()], &root, &[], ReportSource::Auto).unwrap(),
        )
        .unwrap();
        assert_eq!(v["luks"], plain["luks"]);
        assert!(plain.get("volumes").is_none());
    }

    #[test]
    fn simulated_platform_config_reads_the_fw_cfg_launch_blob() {
        let p = luks::new_root();
        let c = agent_config(
            &["https://10.0.2.2:8443".into()],
            &p,
            &[],
            ReportSource::Simulated,
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&c).expect("valid TOML");
        assert_eq!(v["report_source"].as_str(), Some("simulated"));
        assert_eq!(
            v["simulator"]["launch"].as_str(),
            Some("/sys/firmware/qemu_fw_cfg/by_name/opt/org.snpguard/sim-launch/raw")
        );
        // Everything else is what a production conversion writes.
        let prod: toml::Table = toml::from_str(
            &agent_config(
                &["https://10.0.2.2:8443".into()],
                &p,
                &[],
                ReportSource::Auto,
            )
            .unwrap(),
        )
        .unwrap();
        for key in ["servers", "ca", "luks", "retry"] {
            assert_eq!(v[key], prod[key], "{key}");
        }
        assert_eq!(v.len(), prod.len() + 1, "only [simulator] is added: {c}");
    }

    #[test]
    fn module_files_map_to_guest_paths() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let h = d.path().join("initramfs-tools/hooks");
        let s = d.path().join("initramfs-tools/scripts/local-top");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(h.join("snpguard"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(h.join("snpguard"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(s.join("snpguard"), "#!/bin/sh\n").unwrap();
        std::fs::write(d.path().join("initramfs-tools/README.md"), "x").unwrap();
        let f = module_files(d.path(), InitrdTool::InitramfsTools).unwrap();
        let got: Vec<(&str, bool)> = f.iter().map(|(_, r, x)| (r.as_str(), *x)).collect();
        assert_eq!(
            got,
            [
                ("/usr/share/initramfs-tools/hooks/snpguard", true),
                (
                    "/usr/share/initramfs-tools/scripts/local-top/snpguard",
                    false
                )
            ]
        );
        let e = module_files(d.path(), InitrdTool::Dracut).unwrap_err();
        assert!(format!("{e:#}").contains("dracut"), "{e:#}");
    }

    #[test]
    fn the_kernel_hook_is_required_in_the_modules_dir() {
        let d = tempfile::tempdir().unwrap();
        let e = kernel_hook(d.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("kernel/postinst.d/zz-snpguard-renew is missing"),
            "{e:#}"
        );
        let hooks = d.path().join("kernel/postinst.d");
        std::fs::create_dir_all(&hooks).unwrap();
        std::fs::write(hooks.join("zz-snpguard-renew"), "#!/bin/sh\n").unwrap();
        assert_eq!(
            kernel_hook(d.path()).unwrap(),
            hooks.join("zz-snpguard-renew")
        );
        // The shipped fixture links to the real hook.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/convert/modules");
        let hook = kernel_hook(&fixture).unwrap();
        let real =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/kernel-hooks/zz-snpguard-renew");
        assert_eq!(std::fs::read(hook).unwrap(), std::fs::read(real).unwrap());
    }
}
