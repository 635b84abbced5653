//! Picking the kernel to boot: `--kernel`, `--yes` (the default), or a
//! prompt on a terminal.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};

use crate::image::inspect::{Guest, Kernel};
use crate::image::kernel::SevSupport;

/// The kernel table shown before the prompt (and in errors).
pub fn table(guest: &Guest) -> String {
    let default = guest.default_kernel().map(|k| k.version.as_str());
    let mut s = String::new();
    for (i, k) in guest.kernels.iter().enumerate() {
        let mark = if Some(k.version.as_str()) == default {
            "*"
        } else {
            " "
        };
        let sev = match &k.sev {
            SevSupport::BuiltIn => "SEV-SNP: yes (built in)".to_string(),
            SevSupport::Module { .. } => "SEV-SNP: yes (module)".to_string(),
            SevSupport::Missing { reason } => format!("SEV-SNP: no — {reason}"),
        };
        s.push_str(&format!(
            "{mark}{i:>2}  {}\n      kernel {}  initrd {}\n      cmdline {}\n      {sev}\n",
            k.version, k.kernel, k.initrd, k.cmdline
        ));
    }
    s
}

fn no_supported_kernel(guest: &Guest) -> anyhow::Error {
    let reasons: Vec<String> = guest
        .kernels
        .iter()
        .filter_map(|k| match &k.sev {
            SevSupport::Missing { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    anyhow::anyhow!(
        "no kernel in the image can boot as an SEV-SNP guest: {}",
        reasons.join("; ")
    )
}

/// Chooses the kernel: `wanted` (must exist and be supported), else the
/// default when `yes`, else asks on the terminal when `interactive`.
pub fn choose<'a>(
    guest: &'a Guest,
    wanted: Option<&str>,
    yes: bool,
    interactive: bool,
) -> Result<&'a Kernel> {
    if let Some(v) = wanted {
        let Some(k) = guest.kernels.iter().find(|k| k.version == v) else {
            let have: Vec<&str> = guest.kernels.iter().map(|k| k.version.as_str()).collect();
            bail!("no kernel {v} in the image; it has {}", have.join(", "));
        };
        if let SevSupport::Missing { reason } = &k.sev {
            bail!("{reason}");
        }
        return Ok(k);
    }
    let default = guest
        .default_kernel()
        .ok_or_else(|| no_supported_kernel(guest))?;
    if yes {
        return Ok(default);
    }
    if !interactive {
        bail!(
            "stdin is not a terminal; pass --kernel VERSION or --yes to take the default ({})",
            default.version
        );
    }
    let stdin = std::io::stdin();
    let mut err = std::io::stderr();
    write!(err, "{}", table(guest))?;
    loop {
        write!(err, "kernel to boot [{}]: ", default.version)?;
        err.flush()?;
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .context("reading the answer")?
            == 0
        {
            bail!("no kernel chosen (end of input)");
        }
        match pick(guest, line.trim(), default) {
            Ok(k) => return Ok(k),
            Err(e) => writeln!(err, "{e}")?,
        }
    }
}

/// Interprets an answer: empty for the default, an index or a version.
fn pick<'a>(guest: &'a Guest, answer: &str, default: &'a Kernel) -> Result<&'a Kernel> {
    let k = if answer.is_empty() {
        default
    } else if let Ok(i) = answer.parse::<usize>() {
        guest
            .kernels
            .get(i)
            .with_context(|| format!("no kernel number {i}"))?
    } else {
        guest
            .kernels
            .iter()
            .find(|k| k.version == answer)
            .with_context(|| format!("no kernel {answer}"))?
    };
    if let SevSupport::Missing { reason } = &k.sev {
        bail!("{reason}");
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::inspect::{InitrdTool, RootFs};

    fn kernel(v: &str, ok: bool) -> Kernel {
        Kernel {
            version: v.into(),
            kernel: format!("/boot/vmlinuz-{v}"),
            initrd: format!("/boot/initrd.img-{v}"),
            cmdline: "ro".into(),
            sev: if ok {
                SevSupport::BuiltIn
            } else {
                SevSupport::Missing {
                    reason: format!("kernel {v} has CONFIG_SEV_GUEST unset"),
                }
            },
        }
    }

    fn guest(kernels: Vec<Kernel>, default: Option<&str>) -> Guest {
        Guest {
            product: "Debian".into(),
            root: RootFs {
                partnum: 1,
                fstype: "ext4".into(),
                uuid: "u".into(),
                label: String::new(),
                used_bytes: 1,
            },
            mounts: vec![],
            swap_partitions: vec![],
            kernels,
            bootloader_default: default.map(String::from),
            initrd_tool: InitrdTool::InitramfsTools,
            initrd_tool_path: "/usr/sbin/update-initramfs".into(),
        }
    }

    #[test]
    fn default_is_the_bootloaders_when_supported() {
        let g = guest(vec![kernel("6.12", true), kernel("6.1", true)], Some("6.1"));
        assert_eq!(choose(&g, None, true, false).unwrap().version, "6.1");
        let g = guest(
            vec![kernel("6.12", true), kernel("6.1", false)],
            Some("6.1"),
        );
        assert_eq!(choose(&g, None, true, false).unwrap().version, "6.12");
    }

    #[test]
    fn explicit_choice_and_refusals() {
        let g = guest(vec![kernel("6.12", true), kernel("6.1", false)], None);
        assert_eq!(
            choose(&g, Some("6.12"), false, false).unwrap().version,
            "6.12"
        );
        let e = choose(&g, Some("6.1"), false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("6.1 has CONFIG_SEV_GUEST unset"), "{e}");
        let e = choose(&g, Some("5.0"), false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no kernel 5.0") && e.contains("6.12, 6.1"),
            "{e}"
        );
        let e = choose(&g, None, false, false).unwrap_err().to_string();
        assert!(e.contains("--kernel VERSION or --yes"), "{e}");

        let none = guest(vec![kernel("6.1", false)], None);
        let e = choose(&none, None, true, false).unwrap_err().to_string();
        assert!(
            e.contains("no kernel in the image can boot") && e.contains("6.1"),
            "{e}"
        );
    }

    #[test]
    fn answers() {
        let g = guest(vec![kernel("6.12", true), kernel("6.1", false)], None);
        let d = &g.kernels[0];
        assert_eq!(pick(&g, "", d).unwrap().version, "6.12");
        assert_eq!(pick(&g, "0", d).unwrap().version, "6.12");
        assert!(pick(&g, "1", d).is_err());
        assert!(pick(&g, "6.1", d).is_err());
        assert!(pick(&g, "7", d).is_err());
        assert!(table(&g).contains("* 0  6.12"));
    }
}
