//! The filter every argument of a converted guest's kernel command line
//! passes: the bootloader's arguments (dropped with a warning when
//! forbidden) and `--cmdline-append` (refused, naming the argument).
//!
//! The command line is measured: whatever it says, the attestation vouches
//! for. Forbidden are the arguments that open a shell or a debug console,
//! boot another init or unit, or resume from a (host-writable) hibernation
//! image. Keys are compared as the kernel and systemd compare them: `-`
//! and `_` are the same character (`systemd.debug-shell` is
//! `systemd.debug_shell`). The list is a deny-list because a bootloader's
//! arguments (consoles, module parameters, `net.ifnames=0` …) cannot be
//! enumerated; it is kept small and exact, and the tests spell every entry
//! both ways.

use anyhow::{bail, Result};

/// Forbidden keys, in their normalised spelling (`_` for `-`). A key
/// matches with or without a value (`break`, `break=premount`).
pub const FORBIDDEN: &[&str] = &[
    // initrd shells and breakpoints (dracut, initramfs-tools).
    "rd.break",
    "break",
    "rd.shell",
    "rd.debug",
    // systemd: a root shell on tty9, unit choice, interactive start.
    "systemd.debug_shell",
    "rd.systemd.debug_shell",
    "systemd.unit",
    "rd.systemd.unit",
    "systemd.confirm_spawn",
    "systemd.mask",
    "rd.systemd.mask",
    "systemd.wants",
    "rd.systemd.wants",
    // Another init.
    "init",
    "rdinit",
    // Rescue and emergency targets, as systemd and sysvinit read the
    // words the kernel passes on to init.
    "rescue",
    "rd.rescue",
    "emergency",
    "single",
    "s",
    "S",
    "1",
    "_s",
    "_b",
    // Resuming a hibernation image from a device the host writes
    // (`noresume` is set by convert itself).
    "resume",
    "resume_offset",
];

/// The arguments of `line` as the kernel splits them (`next_arg` in
/// lib/cmdline.c): at whitespace outside double quotes.
pub fn split(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                out.push(&line[s..i]);
            }
            continue;
        }
        if start.is_none() {
            start = Some(i);
        }
        if c == '"' {
            quoted = !quoted;
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
    out
}

/// The key of `arg` as the kernel and systemd compare it: the part before
/// the first `=`, with `-` spelled `_`.
pub fn key(arg: &str) -> String {
    arg.split('=').next().unwrap_or(arg).replace('-', "_")
}

/// Why `arg` may not be on the command line, or `None`.
pub fn refusal(arg: &str) -> Option<String> {
    if arg == "--" {
        return Some(
            "`--` hands the arguments after it to init, also the ones convert adds".into(),
        );
    }
    if arg.contains('"') {
        return Some("quoted arguments are not accepted".into());
    }
    let k = key(arg);
    FORBIDDEN
        .iter()
        .find(|f| **f == k)
        .map(|f| format!("`{f}` opens a shell, changes init or resumes a hibernation image"))
}

/// The bootloader's arguments after the filter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    /// What stays, in order.
    pub kept: Vec<String>,
    /// Forbidden arguments that were removed (for a warning).
    pub dropped: Vec<String>,
}

/// Filters a bootloader's arguments: removes `BOOT_IMAGE=`, every key in
/// `replaced` (what convert sets itself; normalised like [`FORBIDDEN`])
/// silently, and the forbidden arguments, `--` and what follows it
/// (arguments for init) with a note in [`Filtered::dropped`].
pub fn filter_bootloader(args: &str, replaced: &[&str]) -> Filtered {
    let mut out = Filtered::default();
    let mut to_init = false;
    for arg in split(args) {
        if to_init || arg == "--" {
            to_init = true;
            out.dropped.push(arg.to_owned());
            continue;
        }
        let k = key(arg);
        if k == "BOOT_IMAGE" || replaced.iter().any(|r| r.replace('-', "_") == k) {
            continue;
        }
        if refusal(arg).is_some() {
            out.dropped.push(arg.to_owned());
        } else {
            out.kept.push(arg.to_owned());
        }
    }
    out
}

/// The arguments of `--cmdline-append`, or an error naming the first one
/// that is forbidden.
pub fn check_append(append: &str) -> Result<Vec<String>> {
    if append.contains(['\n', '\0']) {
        bail!("--cmdline-append must be one line");
    }
    split(append)
        .into_iter()
        .map(|arg| match refusal(arg) {
            Some(why) => bail!(
                "--cmdline-append: {arg:?} is not allowed on a measured command line ({why}); \
                 remove it"
            ),
            None => Ok(arg.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both spellings of `key`: as listed and with every `_` as `-`.
    fn spellings(key: &str) -> Vec<String> {
        let dashed = key.replace('_', "-");
        if dashed == key {
            vec![key.to_owned()]
        } else {
            vec![key.to_owned(), dashed]
        }
    }

    /// The keys the review named, in the spelling it used.
    const NAMED: [&str; 11] = [
        "break=premount",
        "systemd.debug-shell",
        "systemd.debug_shell=1",
        "rescue",
        "emergency",
        "single",
        "s",
        "1",
        "resume=/dev/vdb",
        "resume_offset=34816",
        "rd.break=pre-mount",
    ];

    #[test]
    fn every_forbidden_key_is_dropped_from_the_bootloader_args_in_both_spellings() {
        for f in FORBIDDEN {
            for k in spellings(f) {
                for arg in [k.clone(), format!("{k}=1")] {
                    let line = format!("quiet {arg} console=ttyS0");
                    let got = filter_bootloader(&line, &[]);
                    assert_eq!(got.kept, ["quiet", "console=ttyS0"], "{arg}");
                    assert_eq!(got.dropped, std::slice::from_ref(&arg), "{arg}");
                }
            }
        }
        for arg in NAMED {
            let got = filter_bootloader(arg, &[]);
            assert!(got.kept.is_empty(), "{arg} kept");
            assert_eq!(got.dropped, [arg]);
        }
    }

    #[test]
    fn every_forbidden_key_is_refused_in_the_append_in_both_spellings() {
        for f in FORBIDDEN {
            for k in spellings(f) {
                for arg in [k.clone(), format!("{k}=x")] {
                    let e = check_append(&format!("loglevel=7 {arg}"))
                        .unwrap_err()
                        .to_string();
                    assert!(
                        e.starts_with(&format!("--cmdline-append: {arg:?} is not allowed")),
                        "{e}"
                    );
                    assert!(e.contains(&format!("`{f}`")), "{e}");
                }
            }
        }
        for arg in NAMED {
            assert!(check_append(arg).is_err(), "{arg}");
        }
    }

    #[test]
    fn similar_but_harmless_arguments_stay() {
        let ok = "quiet splash=silent singleuser.x=1 rd.breakfast=1 noresume resumed=1 \
                  initcall_debug console=ttyS0,115200 10 s2idle net.ifnames=0";
        let got = filter_bootloader(ok, &[]);
        assert!(got.dropped.is_empty(), "{:?}", got.dropped);
        assert_eq!(got.kept.len(), split(ok).len());
        assert_eq!(check_append(ok).unwrap(), got.kept);
        assert_eq!(check_append("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn init_arguments_after_a_double_dash_are_dropped_or_refused() {
        let got = filter_bootloader("quiet -- single foo", &[]);
        assert_eq!(got.kept, ["quiet"]);
        assert_eq!(got.dropped, ["--", "single", "foo"]);
        let e = check_append("a -- b").unwrap_err().to_string();
        assert!(e.contains("\"--\" is not allowed"), "{e}");
    }

    #[test]
    fn quotes_are_split_like_the_kernel_and_refused() {
        assert_eq!(
            split(" a \"b c\" d=\"e f\"  g "),
            ["a", "\"b c\"", "d=\"e f\"", "g"]
        );
        // The kernel removes the quotes: this is `init=/bin/sh`.
        let got = filter_bootloader("quiet \"init=/bin/sh\"", &[]);
        assert_eq!(got.kept, ["quiet"]);
        assert_eq!(got.dropped, ["\"init=/bin/sh\""]);
        let e = check_append("x=\"a b\"").unwrap_err().to_string();
        assert!(e.contains("quoted arguments"), "{e}");
        assert!(check_append("a\nb").is_err());
        assert!(check_append("a\0b").is_err());
    }

    #[test]
    fn replaced_keys_go_silently_in_both_spellings() {
        let got = filter_bootloader(
            "BOOT_IMAGE=/vmlinuz root=UUID=x rd.neednet=0 ro net-x_y=1 net_x-y",
            &["root", "rd.neednet", "net_x_y"],
        );
        assert_eq!(got.kept, ["ro"]);
        assert!(got.dropped.is_empty());
    }
}
