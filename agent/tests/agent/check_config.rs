//! `snpguard-agent check-config` as the initrd modules and `convert` call
//! it: exit 0 with a summary, or 1 with a message naming the key.

use std::process::Command;

const GOOD: &str = r#"servers = ["https://10.0.2.2:8443"]
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
"#;

fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("agent.toml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"))
        .args(["check-config", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn good_and_bad_configurations() {
    let (code, out, _) = check(GOOD);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("ok") && out.contains("report source auto"),
        "{out}"
    );

    let (code, _, err) = check(&GOOD.replace("key_bytes = 64", "key_bytes = 3"));
    assert_eq!(code, Some(1));
    assert!(err.contains("luks.key_bytes"), "{err}");

    let (code, _, err) = check(&format!("{GOOD}passphrase = \"x\"\n"));
    assert_eq!(code, Some(1));
    assert!(err.contains("passphrase"), "{err}");

    let sim = format!(
        "{}\n[simulator]\nlaunch = \"/blob\"\n",
        GOOD.replace("\"auto\"", "\"simulated\"")
    );
    let (code, out, err) = check(&sim);
    if cfg!(feature = "simulator") {
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("simulated"));
        assert!(
            err.contains("WARNING") && err.contains("SIMULATED"),
            "{err}"
        );
    } else {
        assert_eq!(code, Some(1));
        assert!(
            err.contains("report_source") && err.contains("not compiled"),
            "{err}"
        );
        assert!(
            !err.contains("SIMULATED"),
            "a production build never warns: {err}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_snpguard-agent"))
        .args(["check-config", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}
