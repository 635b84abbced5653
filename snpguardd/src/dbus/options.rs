//! The `a{sv}` options of `Register`/`RegisterFromPaths`, decoded once
//! into [`RegisterOptions`]: unknown keys, wrong types, missing required
//! keys and out-of-bounds values are `InvalidInput` naming the key.

use std::collections::HashMap;

use snpguard::verify::MinTcb;
use snpguard_protocol::dbus::{limit, option_key as key, Error};
use zbus::zvariant::{OwnedValue, Value};

/// Registration options, checked at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Record name.
    pub name: String,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u32,
    /// vCPU model.
    pub vcpu_type: String,
    /// Guest policy switch.
    pub allow_smt: bool,
    /// Guest policy switch.
    pub allow_debug: bool,
    /// Guest policy switch.
    pub allow_migrate_ma: bool,
    /// TCB minimums.
    pub min_tcb: Option<MinTcb>,
    /// Accept reports endorsed by a configured test root.
    pub allow_test_root: bool,
    /// Allow offline unlock with a chip-derived key.
    pub allow_offline_unlock: bool,
}

const KNOWN: [&str; 14] = [
    key::NAME,
    key::CMDLINE,
    key::VCPUS,
    key::VCPU_TYPE,
    key::ALLOW_SMT,
    key::ALLOW_DEBUG,
    key::ALLOW_MIGRATE_MA,
    key::MIN_TCB_BOOTLOADER,
    key::MIN_TCB_TEE,
    key::MIN_TCB_SNP,
    key::MIN_TCB_MICROCODE,
    key::MIN_TCB_FMC,
    key::ALLOW_TEST_ROOT,
    key::ALLOW_OFFLINE_UNLOCK,
];

/// Upper bound on `vcpus`: the one limit of `snpguard::measure`.
pub use snpguard::measure::MAX_VCPUS;

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

struct Opts<'a>(&'a HashMap<String, OwnedValue>);

impl Opts<'_> {
    fn get(&self, k: &str) -> Option<&Value<'static>> {
        self.0.get(k).map(|v| {
            let v: &Value<'static> = v;
            v
        })
    }

    fn string(&self, k: &str, required: bool) -> Result<Option<String>, Error> {
        match self.get(k) {
            None if required => Err(invalid(format!("option {k:?} (type s) is required"))),
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.to_string())),
            Some(v) => Err(wrong_type(k, "s", v)),
        }
    }

    fn boolean(&self, k: &str) -> Result<bool, Error> {
        match self.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong_type(k, "b", v)),
        }
    }

    fn byte(&self, k: &str) -> Result<Option<u8>, Error> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::U8(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong_type(k, "y", v)),
        }
    }
}

fn wrong_type(k: &str, want: &str, v: &Value<'_>) -> Error {
    invalid(format!(
        "option {k:?} must be of type {want}, got {}",
        v.value_signature()
    ))
}

impl RegisterOptions {
    /// Decodes and bounds-checks the options dictionary.
    pub fn parse(options: &HashMap<String, OwnedValue>) -> Result<Self, Error> {
        if options.len() > limit::OPTIONS {
            return Err(invalid(format!(
                "{} options given; at most {} are accepted",
                options.len(),
                limit::OPTIONS
            )));
        }
        let mut unknown: Vec<&str> = options
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let shown: Vec<String> = unknown.iter().take(4).map(|k| format!("{k:?}")).collect();
            return Err(invalid(format!(
                "unknown option {}; known options: {}",
                shown.join(", "),
                KNOWN.join(", ")
            )));
        }
        let o = Opts(options);
        let name = o.string(key::NAME, true)?.unwrap_or_default();
        check_name(&name)?;
        let cmdline = o.string(key::CMDLINE, true)?.unwrap_or_default();
        if cmdline.len() > limit::CMDLINE {
            return Err(invalid(format!(
                "option \"cmdline\" is {} bytes; at most {} are accepted",
                cmdline.len(),
                limit::CMDLINE
            )));
        }
        if let Err(e) = snpguard_protocol::text::check_cmdline(&cmdline) {
            return Err(invalid(format!("option \"cmdline\": {e}")));
        }
        let vcpus = match o.get(key::VCPUS) {
            None => return Err(invalid("option \"vcpus\" (type u) is required".into())),
            Some(Value::U32(n)) => *n,
            Some(v) => return Err(wrong_type(key::VCPUS, "u", v)),
        };
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(invalid(format!(
                "option \"vcpus\" is {vcpus}; it must be in 1..={MAX_VCPUS}"
            )));
        }
        let vcpu_type = o.string(key::VCPU_TYPE, true)?.unwrap_or_default();
        if vcpu_type.is_empty() || vcpu_type.len() > limit::VCPU_TYPE {
            return Err(invalid(format!(
                "option \"vcpu_type\" must be 1..={} bytes (e.g. \"EPYC-v4\")",
                limit::VCPU_TYPE
            )));
        }
        let tcb = [
            o.byte(key::MIN_TCB_BOOTLOADER)?,
            o.byte(key::MIN_TCB_TEE)?,
            o.byte(key::MIN_TCB_SNP)?,
            o.byte(key::MIN_TCB_MICROCODE)?,
        ];
        let fmc = o.byte(key::MIN_TCB_FMC)?;
        let min_tcb = match tcb {
            [Some(bootloader), Some(tee), Some(snp), Some(microcode)] => Some(MinTcb {
                bootloader,
                tee,
                snp,
                microcode,
                fmc,
            }),
            [None, None, None, None] if fmc.is_none() => None,
            _ => {
                return Err(invalid(
                    "options min_tcb_bootloader, min_tcb_tee, min_tcb_snp and \
                     min_tcb_microcode go together (min_tcb_fmc only with them); \
                     give all four or none"
                        .into(),
                ))
            }
        };
        Ok(RegisterOptions {
            name,
            cmdline,
            vcpus,
            vcpu_type,
            allow_smt: o.boolean(key::ALLOW_SMT)?,
            allow_debug: o.boolean(key::ALLOW_DEBUG)?,
            allow_migrate_ma: o.boolean(key::ALLOW_MIGRATE_MA)?,
            min_tcb,
            allow_test_root: o.boolean(key::ALLOW_TEST_ROOT)?,
            allow_offline_unlock: o.boolean(key::ALLOW_OFFLINE_UNLOCK)?,
        })
    }
}

/// Decodes the `tcb` argument of `SetMinimumTcb`: `bootloader`, `tee`,
/// `snp` and `microcode` required, `fmc` optional, nothing else.
pub fn parse_min_tcb(tcb: &HashMap<String, u8>) -> Result<MinTcb, Error> {
    use snpguard_protocol::dbus::tcb_key;
    if let Some(k) = tcb.keys().find(|k| !tcb_key::ALL.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(invalid(format!(
            "unknown TCB component {shown:?}; expected {}",
            tcb_key::ALL.join(", ")
        )));
    }
    let get = |k: &str| {
        tcb.get(k).copied().ok_or_else(|| {
            invalid(format!(
                "TCB component {k:?} is missing; bootloader, tee, snp and microcode are \
                 required (fmc too for Turin)"
            ))
        })
    };
    Ok(MinTcb {
        bootloader: get(tcb_key::BOOTLOADER)?,
        tee: get(tcb_key::TEE)?,
        snp: get(tcb_key::SNP)?,
        microcode: get(tcb_key::MICROCODE)?,
        fmc: tcb.get(tcb_key::FMC).copied(),
    })
}

/// A record name: `[A-Za-z0-9._-]`, 1..=64 bytes.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > limit::NAME || !name.chars().all(ok_char) {
        return Err(invalid(format!(
            "option \"name\" {name:?} is not a record name: use 1..={} of A-Z a-z 0-9 . _ -",
            limit::NAME
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, OwnedValue> {
        let mut m = HashMap::new();
        m.insert(
            "name".into(),
            OwnedValue::try_from(Value::from("web")).unwrap(),
        );
        m.insert(
            "cmdline".into(),
            OwnedValue::try_from(Value::from("console=ttyS0")).unwrap(),
        );
        m.insert("vcpus".into(), OwnedValue::from(2u32));
        m.insert(
            "vcpu_type".into(),
            OwnedValue::try_from(Value::from("EPYC-v4")).unwrap(),
        );
        m
    }

    fn err(m: &HashMap<String, OwnedValue>) -> String {
        match RegisterOptions::parse(m) {
            Err(Error::InvalidInput(s)) => s,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn minimal_options_parse_with_defaults() {
        let o = RegisterOptions::parse(&base()).unwrap();
        assert_eq!(o.name, "web");
        assert_eq!(o.vcpus, 2);
        assert!(!o.allow_smt && !o.allow_debug && !o.allow_migrate_ma);
        assert_eq!(o.min_tcb, None);
        assert!(!o.allow_test_root);
        assert!(!o.allow_offline_unlock);
    }

    #[test]
    fn allow_test_root_is_a_boolean_option() {
        let mut m = base();
        m.insert("allow_test_root".into(), OwnedValue::from(true));
        assert!(RegisterOptions::parse(&m).unwrap().allow_test_root);
        m.insert("allow_test_root".into(), OwnedValue::from(1u8));
        assert!(err(&m).contains("\"allow_test_root\" must be of type b"));
    }

    #[test]
    fn allow_offline_unlock_is_a_boolean_option() {
        let mut m = base();
        m.insert("allow_offline_unlock".into(), OwnedValue::from(true));
        let o = RegisterOptions::parse(&m).unwrap();
        assert!(o.allow_offline_unlock);
        assert!(!o.allow_test_root, "one option does not set another");
        m.insert("allow_offline_unlock".into(), OwnedValue::from(false));
        assert!(!RegisterOptions::parse(&m).unwrap().allow_offline_unlock);
        for wrong in [
            OwnedValue::from(1u8),
            OwnedValue::from(1u32),
            OwnedValue::try_from(Value::from("on")).unwrap(),
        ] {
            m.insert("allow_offline_unlock".into(), wrong);
            let e = err(&m);
            assert!(
                e.contains("\"allow_offline_unlock\" must be of type b"),
                "{e}"
            );
        }
        // The spelling is exact: a near miss is an unknown option that
        // lists the known ones.
        let mut m = base();
        m.insert("offline_unlock".into(), OwnedValue::from(true));
        let e = err(&m);
        assert!(
            e.contains("unknown option \"offline_unlock\"") && e.contains("allow_offline_unlock"),
            "{e}"
        );
    }

    #[test]
    fn minimum_tcb_argument() {
        let mut m: HashMap<String, u8> = [
            ("bootloader", 4),
            ("tee", 0),
            ("snp", 24),
            ("microcode", 213),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = parse_min_tcb(&m).unwrap();
        assert_eq!(
            (t.bootloader, t.snp, t.microcode, t.fmc),
            (4, 24, 213, None)
        );
        m.insert("fmc".into(), 1);
        assert_eq!(parse_min_tcb(&m).unwrap().fmc, Some(1));
        m.insert("ucode".into(), 1);
        let msg = |m: &HashMap<String, u8>| match parse_min_tcb(m) {
            Err(Error::InvalidInput(s)) => s,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        let e = msg(&m);
        assert!(e.contains("unknown TCB component \"ucode\""), "{e}");
        m.remove("ucode");
        m.remove("snp");
        let e = msg(&m);
        assert!(e.contains("\"snp\" is missing"), "{e}");
    }

    #[test]
    fn full_tcb_parses() {
        let mut m = base();
        for (k, v) in [
            ("min_tcb_bootloader", 1u8),
            ("min_tcb_tee", 2),
            ("min_tcb_snp", 3),
            ("min_tcb_microcode", 4),
            ("min_tcb_fmc", 5),
        ] {
            m.insert(k.into(), OwnedValue::from(v));
        }
        m.insert("allow_smt".into(), OwnedValue::from(true));
        let o = RegisterOptions::parse(&m).unwrap();
        let t = o.min_tcb.unwrap();
        assert_eq!(
            (t.bootloader, t.tee, t.snp, t.microcode, t.fmc),
            (1, 2, 3, 4, Some(5))
        );
        assert!(o.allow_smt);
    }

    #[test]
    fn each_rule_is_enforced() {
        let mut m = base();
        m.insert("colour".into(), OwnedValue::from(1u8));
        assert!(err(&m).contains("unknown option \"colour\""));

        let mut m = base();
        m.remove("vcpus");
        assert!(err(&m).contains("\"vcpus\" (type u) is required"));

        let mut m = base();
        m.insert("vcpus".into(), OwnedValue::from(2u64));
        assert!(err(&m).contains("\"vcpus\" must be of type u, got t"));

        let mut m = base();
        m.insert("vcpus".into(), OwnedValue::from(0u32));
        assert!(err(&m).contains("1..=4096"));

        let mut m = base();
        m.insert(
            "name".into(),
            OwnedValue::try_from(Value::from("a/b")).unwrap(),
        );
        assert!(err(&m).contains("not a record name"));

        let mut m = base();
        let long = "x".repeat(65);
        m.insert(
            "name".into(),
            OwnedValue::try_from(Value::from(long.as_str())).unwrap(),
        );
        assert!(err(&m).contains("not a record name"));

        let mut m = base();
        let long = "x".repeat(4097);
        m.insert(
            "cmdline".into(),
            OwnedValue::try_from(Value::from(long.as_str())).unwrap(),
        );
        assert!(err(&m).contains("at most 4096"));

        let mut m = base();
        m.insert("allow_debug".into(), OwnedValue::from(1u32));
        assert!(err(&m).contains("\"allow_debug\" must be of type b"));

        let mut m = base();
        m.insert("min_tcb_tee".into(), OwnedValue::from(1u8));
        assert!(err(&m).contains("go together"));

        let mut m = base();
        m.insert("min_tcb_fmc".into(), OwnedValue::from(1u8));
        assert!(err(&m).contains("go together"));

        let mut m = base();
        for i in 0..33 {
            m.insert(format!("k{i}"), OwnedValue::from(1u8));
        }
        assert!(err(&m).contains("at most 32"));
    }
}
