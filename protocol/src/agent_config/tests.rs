use super::*;

const GOOD: &str = r#"
servers = ["https://10.0.2.2:8443", "https://backup.example:443/"]
ca = "/etc/snpguard/ca.pem"
report_source = "auto"
[luks]
device = "UUID=0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
uuid = "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
name = "snpguard_root"
cipher = "aes-xts-plain64"
key_bytes = 64
sector_size = 512
offset = 16777216
[retry]
attempts = 5
initial_delay_ms = 1000
max_delay_ms = 30000
device_timeout_secs = 60
"#;

fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

fn err(text: &str) -> String {
    AgentConfig::parse(text)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn good_config_parses() {
    let c = AgentConfig::parse(GOOD).expect("good");
    assert_eq!(c.servers.len(), 2);
    assert_eq!(c.servers[1].url, "https://backup.example:443");
    assert_eq!(c.report_source, ReportSource::Auto);
    assert_eq!(c.luks.offset, 16 << 20);
    assert_eq!(c.retry.attempts, 5);
    assert!(c.simulator.is_none());
}

#[test]
fn retry_defaults_apply() {
    let text = GOOD.split("[retry]").next().unwrap();
    let c = AgentConfig::parse(text).expect("no retry table");
    assert_eq!(c.retry, Retry::default());
}

#[test]
fn unknown_keys_are_refused_by_name() {
    assert!(err(&format!("{GOOD}\nextra = 1\n")).contains("extra"));
    assert!(err(&with("key_bytes = 64", "key_bytes = 64\nkeyslot = 1")).contains("keyslot"));
    assert!(err(&with("attempts = 5", "attempts = 5\nforever = true")).contains("forever"));
}

#[test]
fn each_bad_key_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "servers = [\"https://10.0.2.2:8443\", \"https://backup.example:443/\"]",
            "servers = []",
            "servers",
        ),
        (
            "\"https://10.0.2.2:8443\"",
            "\"http://10.0.2.2:8443\"",
            "servers",
        ),
        (
            "\"https://10.0.2.2:8443\"",
            "\"https://10.0.2.2:8443/v1\"",
            "servers",
        ),
        ("ca = \"/etc/snpguard/ca.pem\"", "ca = \"ca.pem\"", "ca"),
        (
            "report_source = \"auto\"",
            "report_source = \"magic\"",
            "report_source",
        ),
        (
            "device = \"UUID=0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00\"",
            "device = \"UUID=nope\"",
            "luks.device",
        ),
        (
            "device = \"UUID=0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00\"",
            "device = \"sda2\"",
            "luks.device",
        ),
        (
            "uuid = \"0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00\"",
            "uuid = \"0b6a3c3e\"",
            "luks.uuid",
        ),
        (
            "name = \"snpguard_root\"",
            "name = \"../root\"",
            "luks.name",
        ),
        (
            "cipher = \"aes-xts-plain64\"",
            "cipher = \"aes xts\"",
            "luks.cipher",
        ),
        ("key_bytes = 64", "key_bytes = 8", "luks.key_bytes"),
        (
            "sector_size = 512",
            "sector_size = 1024",
            "luks.sector_size",
        ),
        ("offset = 16777216", "offset = 1000", "luks.offset"),
        ("attempts = 5", "attempts = 0", "retry.attempts"),
        ("attempts = 5", "attempts = 1000", "retry.attempts"),
        (
            "max_delay_ms = 30000",
            "max_delay_ms = 10",
            "retry.max_delay_ms",
        ),
        (
            "initial_delay_ms = 1000",
            "initial_delay_ms = 9999999",
            "retry.initial_delay_ms",
        ),
        (
            "device_timeout_secs = 60",
            "device_timeout_secs = 0",
            "retry.device_timeout_secs",
        ),
    ];
    for (from, to, key) in cases {
        let e = err(&with(from, to));
        assert!(e.contains(key), "{to}: {e}");
    }
}

#[test]
fn missing_tables_are_named() {
    let no_luks = GOOD.replace("[luks]", "[other]");
    assert!(err(&no_luks).contains("other") || err(&no_luks).contains("luks"));
    let no_ca = with("ca = \"/etc/snpguard/ca.pem\"\n", "");
    assert!(err(&no_ca).contains("ca"));
}

#[test]
fn too_many_servers() {
    let many = (0..9)
        .map(|i| format!("\"https://s{i}.example\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = with(
        "servers = [\"https://10.0.2.2:8443\", \"https://backup.example:443/\"]",
        &format!("servers = [{many}]"),
    );
    assert!(err(&text).contains("servers"));
}

#[test]
fn simulator_table_only_with_the_simulated_source() {
    let text = format!("{GOOD}\n[simulator]\nlaunch = \"/tmp/blob\"\n");
    assert!(err(&text).contains("simulator"));
    let sim = with("report_source = \"auto\"", "report_source = \"simulated\"");
    assert!(err(&sim).contains("simulator"));
    let full = format!("{sim}\n[simulator]\nlaunch = \"/tmp/blob\"\n");
    // Whether the source is compiled in is the agent's check (agent/src/config.rs).
    let c = AgentConfig::parse(&full).expect("simulated");
    assert_eq!(c.report_source, ReportSource::Simulated);
}

#[test]
fn written_configurations_read_back_the_same() {
    let mut c = AgentConfig::parse(&format!("{GOOD}{VOLUME}")).expect("good");
    let text = c.to_toml("# a header\n# two lines").expect("written");
    assert!(text.starts_with("# a header\n# two lines\n"), "{text}");
    assert_eq!(AgentConfig::parse(&text).expect("read back"), c);
    // The simulated source, its table, and no volumes.
    c.report_source = ReportSource::Simulated;
    c.simulator = Some(Simulator {
        launch: PathBuf::from("/sys/firmware/blob"),
    });
    c.volumes.clear();
    let text = c.to_toml("").expect("written");
    assert!(!text.contains("volumes"), "{text}");
    assert_eq!(AgentConfig::parse(&text).expect("read back"), c);
    // Strings that need escaping survive.
    c.luks.device = "/dev/disk/by-id/a\"b\\c".into();
    let text = c.to_toml("").expect("written");
    assert_eq!(AgentConfig::parse(&text).expect("read back"), c);
}

#[test]
fn nothing_unchecked_is_written() {
    let mut c = AgentConfig::parse(GOOD).expect("good");
    c.servers[0].url = "http://plain".into();
    assert!(c.to_toml("").unwrap_err().to_string().contains("servers"));
    let c = AgentConfig::parse(GOOD).expect("good");
    assert!(c
        .to_toml("not a comment")
        .unwrap_err()
        .to_string()
        .contains("header"));
}

#[test]
fn oversize_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("agent.toml");
    std::fs::write(&p, "#".repeat(100 * 1024)).unwrap();
    assert!(matches!(
        AgentConfig::load(&p),
        Err(ConfigError::TooLarge { .. })
    ));
}

const VOLUME: &str = r#"
[[volumes]]
mountpoint = "/var"
device = "UUID=5d1b0c3e-8f0a-4c2e-9b7d-0a1b2c3d4e5f"
uuid = "5d1b0c3e-8f0a-4c2e-9b7d-0a1b2c3d4e5f"
name = "snpguard_data_var"
cipher = "aes-xts-plain64"
key_bytes = 64
sector_size = 512
offset = 16777216
"#;

#[test]
fn data_volumes_parse_in_order() {
    assert!(AgentConfig::parse(GOOD).unwrap().volumes.is_empty());
    let home = VOLUME
        .replace("/var", "/home")
        .replace("5d1b0c3e", "6e2c1d4f")
        .replace("_var", "_home");
    let c = AgentConfig::parse(&format!("{GOOD}{VOLUME}{home}")).expect("volumes");
    assert_eq!(c.volumes.len(), 2);
    assert_eq!(c.volumes[0].mountpoint, "/var");
    assert_eq!(c.volumes[0].luks.name, "snpguard_data_var");
    assert_eq!(c.volumes[1].mountpoint, "/home");
    assert_eq!(
        c.volumes[1].luks.uuid,
        "6e2c1d4f-8f0a-4c2e-9b7d-0a1b2c3d4e5f"
    );
}

#[test]
fn each_bad_data_volume_key_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "mountpoint = \"/var\"",
            "mountpoint = \"/\"",
            "volumes[0].mountpoint",
        ),
        (
            "mountpoint = \"/var\"",
            "mountpoint = \"var\"",
            "volumes[0].mountpoint",
        ),
        (
            "mountpoint = \"/var\"",
            "mountpoint = \"/var/../etc\"",
            "volumes[0].mountpoint",
        ),
        (
            "mountpoint = \"/var\"",
            "mountpoint = \"/v ar\"",
            "volumes[0].mountpoint",
        ),
        (
            "uuid = \"5d1b0c3e-8f0a-4c2e-9b7d-0a1b2c3d4e5f\"",
            "uuid = \"5D1B0C3E-8F0A-4C2E-9B7D-0A1B2C3D4E5F\"",
            "volumes[0].uuid",
        ),
        ("uuid = \"5d1b0c3e", "uuid = \"zzzzzzzz", "volumes[0].uuid"),
        (
            "device = \"UUID=",
            "device = \"relative/",
            "volumes[0].device",
        ),
        (
            "name = \"snpguard_data_var\"",
            "name = \"a b\"",
            "volumes[0].name",
        ),
        // Taken by the root volume.
        (
            "name = \"snpguard_data_var\"",
            "name = \"snpguard_root\"",
            "volumes[0]",
        ),
        ("key_bytes = 64", "key_bytes = 16", "volumes[0].key_bytes"),
        (
            "sector_size = 512",
            "sector_size = 1024",
            "volumes[0].sector_size",
        ),
        ("offset = 16777216", "offset = 100", "volumes[0].offset"),
    ];
    for (from, to, key) in cases {
        assert!(VOLUME.contains(from), "{from}");
        let e = err(&format!("{GOOD}{}", VOLUME.replacen(from, to, 1)));
        assert!(e.starts_with(key), "{to}: {e}");
    }
    // An unknown key in a volume, a volume given twice.
    assert!(err(&format!(
        "{GOOD}{}",
        VOLUME.replace("offset", "keyslot = 1\noffset")
    ))
    .contains("keyslot"));
    let e = err(&format!("{GOOD}{VOLUME}{VOLUME}"));
    assert!(e.starts_with("volumes[1]"), "{e}");
    let many: String = (0..=MAX_VOLUMES)
        .map(|i| {
            VOLUME
                .replace("/var", &format!("/v{i}"))
                .replace("5d1b0c3e", &format!("{i:08x}"))
                .replace("_var", &format!("_v{i}"))
        })
        .collect();
    assert!(err(&format!("{GOOD}{many}")).starts_with("volumes: at most"));
}
