//! SIGHUP: what a new config means for the running agent.
//!
//! The new file is validated in full first (the same `config::load` that
//! `check` and `run` use); a bad file changes nothing. A good one is
//! compared with the running one:
//!
//! * only `[[devices]]` changed, and no changed or removed device feeds an
//!   `[[equipment]]` entry: the changed, added and removed devices are
//!   restarted, started and stopped; every other device keeps its task
//!   and its Modbus connection (see `RunningAgent::reload_devices`);
//! * anything else changed (`[agent]`, `[enterprise]`, `[buffer]`, `[mqtt]`,
//!   `[metrics]`, the plant model, or a device the plant model reads): the
//!   whole agent restarts in-process, flushing the outbox first, exactly as
//!   a stop and start would.
//!
//! Sections are compared as parsed TOML, so comments and formatting do not
//! count as changes. Files a config refers to (CA and client certificates,
//! password files) are read again only by a restart in-process, i.e. when
//! their section changed, or by restarting the service.

use std::path::Path;

use crate::config::Config;

/// What to do with a validated new config.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing that matters changed.
    Unchanged,
    /// Only devices changed; restart those.
    Devices,
    /// Restart the whole agent in-process; the reason names what changed.
    Restart(String),
}

/// The config file as a TOML table, for comparing sections.
pub fn read_raw(path: &Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str(&text).ok()
}

/// Decides how to apply `new` (already valid) over `old`.
pub fn plan(
    old_raw: Option<&toml::Table>,
    new_raw: Option<&toml::Table>,
    old: &Config,
    new: &Config,
) -> Plan {
    let (Some(old_raw), Some(new_raw)) = (old_raw, new_raw) else {
        return Plan::Restart("the config file could not be compared".into());
    };
    let mut sections: Vec<&str> = old_raw
        .keys()
        .chain(new_raw.keys())
        .map(String::as_str)
        .filter(|k| *k != "devices" && old_raw.get(*k) != new_raw.get(*k))
        .collect();
    sections.sort_unstable();
    sections.dedup();
    if !sections.is_empty() {
        return Plan::Restart(format!("[{}] changed", sections.join("], [")));
    }
    let touched: Vec<&str> = old
        .devices
        .iter()
        .filter(|d| !new.devices.iter().any(|n| n == *d))
        .map(|d| &*d.id)
        .collect();
    if touched.is_empty() && old.devices.len() == new.devices.len() {
        return Plan::Unchanged;
    }
    let feeds_plant: Vec<&str> = touched
        .iter()
        .copied()
        .filter(|id| old.plant.equipment.iter().any(|e| &*e.device == *id))
        .collect();
    if !feeds_plant.is_empty() {
        return Plan::Restart(format!(
            "device(s) {} feed the plant model",
            feeds_plant.join(", ")
        ));
    }
    Plan::Devices
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[agent]
gateway_id = "gw"
state_dir = "/nonexistent-state"

[enterprise]
name = "测试企业"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"

[mqtt]
host = "127.0.0.1"
port = 1883
tls = false
"#;

    fn device(id: &str, interval: &str) -> String {
        format!(
            r#"
[[devices]]
id = "{id}"
address = "127.0.0.1:5020"
poll_interval = "{interval}"
[[devices.tags]]
name = "t"
area = "holding_register"
address = 0
type = "u16"
"#
        )
    }

    fn load(text: &str) -> (toml::Table, Config) {
        let raw: toml::Table = toml::from_str(text).expect("test TOML");
        match crate::config::load_str(Path::new("t.toml"), text) {
            Ok((c, _)) => (raw, c),
            Err(e) => panic!("{e}"),
        }
    }

    fn plan_of(a: &str, b: &str) -> Plan {
        let (ra, ca) = load(a);
        let (rb, cb) = load(b);
        plan(Some(&ra), Some(&rb), &ca, &cb)
    }

    #[test]
    fn device_changes_restart_devices_only() {
        let a = format!("{BASE}{}{}", device("a", "1s"), device("b", "1s"));
        let same = format!("# a comment\n{a}");
        assert_eq!(plan_of(&a, &same), Plan::Unchanged);
        let b = format!("{BASE}{}{}", device("a", "1s"), device("b", "2s"));
        assert_eq!(plan_of(&a, &b), Plan::Devices);
        let added = format!("{a}{}", device("c", "1s"));
        assert_eq!(plan_of(&a, &added), Plan::Devices);
        let removed = format!("{BASE}{}", device("a", "1s"));
        assert_eq!(plan_of(&a, &removed), Plan::Devices);
    }

    #[test]
    fn other_sections_restart_everything() {
        let a = format!("{BASE}{}", device("a", "1s"));
        let b = a.replace("port = 1883", "port = 1884");
        match plan_of(&a, &b) {
            Plan::Restart(why) => assert!(why.contains("[mqtt]"), "{why}"),
            p => panic!("{p:?}"),
        }
        let c = format!("{a}\n[buffer]\nmax_bytes = \"64MiB\"\n");
        match plan_of(&a, &c) {
            Plan::Restart(why) => assert!(why.contains("[buffer]"), "{why}"),
            p => panic!("{p:?}"),
        }
    }
}
