//! The D-Bus arguments of `Register` and `SetMinimumTcb` (`a{sv}` and
//! `a{sy}`), decoded from the wire as zbus does and then by the daemon's
//! own option parser: what any local caller polkit lets through sends.

use std::collections::HashMap;

use snpguard_protocol::dbus::{limit, option_key as key};
use snpguardd::dbus::options::{check_name, parse_min_tcb, RegisterOptions, MAX_VCPUS};
use zbus::zvariant::serialized::{Context, Data};
use zbus::zvariant::{to_bytes, OwnedValue, Value, LE};

use crate::fixtures::Input;

fn ctxt() -> Context {
    Context::new_dbus(LE, 0)
}

fn decode<T>(bytes: &[u8]) -> Option<T>
where
    T: for<'de> serde::Deserialize<'de> + zbus::zvariant::Type,
{
    let data = Data::new(bytes, ctxt());
    data.deserialize::<T>().ok().map(|(v, _)| v)
}

fn owned(v: Value<'_>) -> OwnedValue {
    OwnedValue::try_from(v).expect("a plain value has no file descriptor")
}

/// The options dictionary that says exactly what `o` holds.
fn options_of(o: &RegisterOptions) -> HashMap<String, OwnedValue> {
    let mut m: HashMap<String, OwnedValue> = HashMap::new();
    m.insert(key::NAME.into(), owned(Value::from(o.name.as_str())));
    m.insert(key::CMDLINE.into(), owned(Value::from(o.cmdline.as_str())));
    m.insert(key::VCPUS.into(), OwnedValue::from(o.vcpus));
    m.insert(
        key::VCPU_TYPE.into(),
        owned(Value::from(o.vcpu_type.as_str())),
    );
    for (k, b) in [
        (key::ALLOW_SMT, o.allow_smt),
        (key::ALLOW_DEBUG, o.allow_debug),
        (key::ALLOW_MIGRATE_MA, o.allow_migrate_ma),
        (key::ALLOW_TEST_ROOT, o.allow_test_root),
        (key::ALLOW_OFFLINE_UNLOCK, o.allow_offline_unlock),
    ] {
        m.insert(k.into(), OwnedValue::from(b));
    }
    if let Some(t) = &o.min_tcb {
        for (k, v) in [
            (key::MIN_TCB_BOOTLOADER, Some(t.bootloader)),
            (key::MIN_TCB_TEE, Some(t.tee)),
            (key::MIN_TCB_SNP, Some(t.snp)),
            (key::MIN_TCB_MICROCODE, Some(t.microcode)),
            (key::MIN_TCB_FMC, t.fmc),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), OwnedValue::from(v));
            }
        }
    }
    m
}

/// `register_options`: the first byte picks `a{sv}` for `Register` (0)
/// or `a{sy}` for `SetMinimumTcb` (1); the rest is the D-Bus body. An
/// accepted value keeps every bound, and the dictionary rebuilt from
/// it, sent over the wire again, is accepted as the same value.
pub fn register_options(data: &[u8]) {
    let mut input = Input::new(data);
    let which = input.byte() % 2;
    let body = input.rest();
    if which == 1 {
        let Some(tcb) = decode::<HashMap<String, u8>>(body) else {
            return;
        };
        let Ok(min) = parse_min_tcb(&tcb) else {
            return;
        };
        assert!(tcb.len() <= 5, "an unknown TCB component accepted");
        assert_eq!(min.fmc, tcb.get("fmc").copied());
        return;
    }
    let Some(map) = decode::<HashMap<String, OwnedValue>>(body) else {
        return;
    };
    let Ok(o) = RegisterOptions::parse(&map) else {
        return;
    };
    crate::fixtures::reached("register_options");
    assert!(map.len() <= limit::OPTIONS);
    check_name(&o.name).expect("an accepted name");
    assert!(o.cmdline.len() <= limit::CMDLINE);
    assert!(snpguard_protocol::text::check_cmdline(&o.cmdline).is_ok());
    assert!((1..=MAX_VCPUS).contains(&o.vcpus));
    assert!(!o.vcpu_type.is_empty() && o.vcpu_type.len() <= limit::VCPU_TYPE);
    let rebuilt = options_of(&o);
    let again = RegisterOptions::parse(&rebuilt).expect("rebuilt options are accepted");
    assert_eq!(again, o, "rebuilt options");
    let wire = to_bytes(ctxt(), &rebuilt).expect("encodes");
    let decoded: HashMap<String, OwnedValue> = decode(&wire).expect("decodes");
    let again = RegisterOptions::parse(&decoded).expect("accepted over the wire again");
    assert_eq!(again, o, "over the wire again");
}

fn body<T: serde::Serialize + zbus::zvariant::Type>(which: u8, value: &T) -> Vec<u8> {
    let wire = to_bytes(ctxt(), value).expect("encodes");
    [&[which][..], &wire[..]].concat()
}

/// Options as `snpguardctl register` sends them (with and without a
/// minimum TCB), wrong types and unknown keys; TCB dictionaries.
pub fn seeds() -> Vec<Vec<u8>> {
    let full = RegisterOptions {
        name: "web-1".into(),
        cmdline: "root=/dev/mapper/snpguard_root ro console=ttyS0".into(),
        vcpus: 2,
        vcpu_type: "EPYC-v4".into(),
        allow_smt: true,
        allow_debug: false,
        allow_migrate_ma: false,
        min_tcb: Some(snpguard::verify::MinTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: Some(1),
        }),
        allow_test_root: false,
        allow_offline_unlock: true,
    };
    let mut minimal = options_of(&RegisterOptions {
        min_tcb: None,
        ..full.clone()
    });
    let mut out = vec![body(0, &options_of(&full)), body(0, &minimal)];
    minimal.insert(key::VCPUS.into(), OwnedValue::from(2u8));
    minimal.insert("unknown".into(), OwnedValue::from(true));
    out.push(body(0, &minimal));
    let tcb: HashMap<String, u8> = [
        ("bootloader", 3),
        ("tee", 0),
        ("snp", 8),
        ("microcode", 115),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    out.push(body(1, &tcb));
    out
}
