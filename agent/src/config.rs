//! The agent's configuration: the shared contract
//! ([`snpguard_protocol::agent_config`], the type convert writes) plus the one check
//! only this build can make: whether the simulated report source is
//! compiled in.

use std::path::Path;

pub use snpguard_protocol::agent_config::{
    invalid, AgentConfig, ConfigError, Luks, ReportSource, Retry, Server, DEFAULT_PATH,
};

/// Reads and checks the file at `path` for this build.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    parse(&AgentConfig::read(path)?)
}

/// Parses and checks configuration text for this build.
pub fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
    for_this_build(AgentConfig::parse(text)?)
}

/// Refuses the simulated source in a production build.
fn for_this_build(c: AgentConfig) -> Result<AgentConfig, ConfigError> {
    if c.report_source == ReportSource::Simulated && !cfg!(feature = "simulator") {
        return Err(invalid(
            "report_source",
            "\"simulated\" is not compiled into this agent (a production build); use auto, tsm or sev-guest",
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULATED: &str = r#"
servers = ["https://10.0.2.2:8443"]
ca = "/etc/snpguard/ca.pem"
report_source = "simulated"
[luks]
device = "UUID=0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
uuid = "0b6a3c3e-6c1c-4b5e-9d8a-3d7e2f1a9c00"
name = "snpguard_root"
cipher = "aes-xts-plain64"
key_bytes = 64
sector_size = 512
offset = 16777216
[simulator]
launch = "/tmp/blob"
"#;

    #[test]
    fn the_simulated_source_only_in_a_simulator_build() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, SIMULATED).unwrap();
        let r = load(&p);
        assert_eq!(
            parse(SIMULATED).map_err(|e| e.to_string()),
            r.as_ref().map(Clone::clone).map_err(|e| e.to_string())
        );
        if cfg!(feature = "simulator") {
            assert_eq!(r.expect("simulated").report_source, ReportSource::Simulated);
        } else {
            let e = r.expect_err("a production build refuses it").to_string();
            assert!(
                e.contains("report_source") && e.contains("simulated"),
                "{e}"
            );
        }
    }
}
