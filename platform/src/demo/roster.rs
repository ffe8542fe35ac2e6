//! The demo city's enterprises: who they are, where, and what their
//! machines do, as gateway configs the real agent loads.

use std::fmt::Write as _;

use zgsz_agent::sim::MachineKind;

/// One machine of a demo plant, by what its config declares and what the
/// simulator makes it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// A CNC lathe that runs under NC.
    Lathe,
    /// A machining centre that runs under NC.
    Mill,
    /// A manual station, declared as one.
    Bench,
    /// Declared a CNC lathe; in fact always run by hand. The overstating
    /// enterprise has these.
    Posing,
}

impl Machine {
    fn code(c: char) -> Option<Machine> {
        match c {
            'L' => Some(Machine::Lathe),
            'M' => Some(Machine::Mill),
            'H' => Some(Machine::Bench),
            'F' => Some(Machine::Posing),
            _ => None,
        }
    }

    fn sim(self) -> MachineKind {
        match self {
            Machine::Lathe => MachineKind::Lathe,
            Machine::Mill => MachineKind::Mill,
            Machine::Bench | Machine::Posing => MachineKind::Manual,
        }
    }
}

/// One demo enterprise.
pub struct Enterprise {
    pub name: &'static str,
    pub region_code: &'static str,
    /// The 统一社会信用代码, with its check character.
    pub uscc: String,
    /// Each gateway's machines, one letter each: L lathe, M mill, H manual
    /// station, F a "CNC lathe" run by hand.
    pub gateways: Vec<&'static str>,
}

/// What the demo does to one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Runs,
    /// Stops after this many simulated days, and stays down.
    DownAfterDays(u32),
    /// Enrolled, but never switched on.
    NeverStarts,
}

/// One gateway of the roster, ready to start.
pub struct Gateway {
    pub gateway_id: String,
    pub enterprise: &'static str,
    pub uscc: String,
    pub region_code: &'static str,
    pub fate: Fate,
    /// (device id, simulated kind): for the simulated shop floor.
    pub machines: Vec<(String, MachineKind)>,
    /// The agent's config, with placeholder addresses the demo replaces.
    pub config: String,
}

/// (name, region, gateways' machines). Twenty enterprises across
/// Yangzhou's seven region codes, with different rates; 邗江示范电机's
/// second gateway goes down, 江都示范液压 declares hand-run machines as
/// CNC, and 仪征示范精工 is enrolled but never reports.
const ROSTER: &[(&str, &str, &[&str])] = &[
    ("扬州示范精密机械有限公司", "321000", &["LLLMMH"]),
    ("扬州示范智能装备有限公司", "321000", &["LMH"]),
    ("广陵示范汽车配件有限公司", "321002", &["LLMMH"]),
    ("广陵示范五金制品有限公司", "321002", &["LHH"]),
    ("广陵示范阀门有限公司", "321002", &["LMMH"]),
    ("邗江示范数控科技有限公司", "321003", &["LLLMMM"]),
    ("邗江示范模具有限公司", "321003", &["LMHH"]),
    ("邗江示范电机有限公司", "321003", &["LLM", "MMH"]),
    ("邗江示范紧固件有限公司", "321003", &["LLHH"]),
    ("江都示范船舶配件有限公司", "321012", &["LLMH"]),
    ("江都示范液压有限公司", "321012", &["LFFFH"]),
    ("江都示范齿轮有限公司", "321012", &["LMMMH"]),
    ("宝应示范电气有限公司", "321023", &["LMH"]),
    ("宝应示范机电有限公司", "321023", &["LHHH"]),
    ("宝应示范泵业有限公司", "321023", &["LLMM"]),
    ("仪征示范汽车零部件有限公司", "321081", &["LLLMH"]),
    ("仪征示范化工机械有限公司", "321081", &["LMHH"]),
    ("仪征示范精工有限公司", "321081", &["LLMH"]),
    ("高邮示范电缆设备有限公司", "321084", &["LLMMH"]),
    ("高邮示范灯具有限公司", "321084", &["LHH"]),
];

/// The enterprise whose second gateway goes down, and when.
pub const DOWN: (&str, u32) = ("邗江示范电机有限公司", 3);
/// The enterprise enrolled but never heard from.
pub const SILENT: &str = "仪征示范精工有限公司";
/// The enterprise whose declared rate overstates what its machines do.
pub const OVERSTATING: &str = "江都示范液压有限公司";

/// A valid 统一社会信用代码 for the `n`th demo enterprise in `region`:
/// "91" (an enterprise), the region, an organisation code, and the check
/// character GB 32100-2015 gives.
fn uscc(region: &str, n: usize) -> String {
    let body = format!("91{region}MADEM{n:04}");
    for c in "0123456789ABCDEFGHJKLMNPQRTUWXY".chars() {
        let code = format!("{body}{c}");
        if matches!(
            zgsz_agent::identity::check_uscc(&code),
            Ok(zgsz_agent::identity::UsccCheck::Valid)
        ) {
            return code;
        }
    }
    // Unreachable: one of the 31 characters is the check character.
    format!("{body}0")
}

/// Every gateway of the demo city.
pub fn gateways() -> Vec<Gateway> {
    let mut out = Vec::new();
    for (n, &(name, region_code, machines)) in ROSTER.iter().enumerate() {
        let e = Enterprise {
            name,
            region_code,
            uscc: uscc(region_code, n + 1),
            gateways: machines.to_vec(),
        };
        for (g, codes) in e.gateways.iter().enumerate() {
            let gateway_id = format!("demo-{}-{:02}-gw{}", region_code, n + 1, g + 1);
            let fate = if name == SILENT {
                Fate::NeverStarts
            } else if name == DOWN.0 && g == 1 {
                Fate::DownAfterDays(DOWN.1)
            } else {
                Fate::Runs
            };
            let machines = machine_ids(codes);
            let config = agent_config(&e, &gateway_id, &machines);
            out.push(Gateway {
                gateway_id,
                enterprise: name,
                uscc: e.uscc.clone(),
                region_code,
                fate,
                machines: machines
                    .iter()
                    .map(|(id, m)| (id.clone(), m.sim()))
                    .collect(),
                config,
            });
        }
    }
    out
}

/// Device ids the simulator knows (lathe-02 is set up by hand in the
/// morning, lathe-03 is run by hand every third day, mill-01 is down every
/// fourth day, mill-02 stops after lunch), so the daily figures move.
///
/// Only plants of six machines or more get those ids: in a smaller one a
/// machine down for a day moves the verified rate by a third or more, as
/// much as the overstating enterprise's gap, and would hide it.
fn machine_ids(codes: &str) -> Vec<(String, Machine)> {
    let first = if codes.len() >= 6 { 0 } else { 3 };
    let (mut lathes, mut mills, mut benches) = (first, first, 0);
    codes
        .chars()
        .filter_map(Machine::code)
        .map(|m| {
            let id = match m {
                Machine::Lathe | Machine::Posing => {
                    lathes += 1;
                    format!("lathe-{lathes:02}")
                }
                Machine::Mill => {
                    mills += 1;
                    format!("mill-{mills:02}")
                }
                Machine::Bench => {
                    benches += 1;
                    format!("bench-{benches:02}")
                }
            };
            (id, m)
        })
        .collect()
}

/// The gateway's config: its plant, the city platform as its only sink
/// (figures and evidence, no telemetry), and loopback placeholders.
fn agent_config(e: &Enterprise, gateway_id: &str, machines: &[(String, Machine)]) -> String {
    let mut t = format!(
        r#"[agent]
gateway_id = "{gateway_id}"
state_dir = "state"

[enterprise]
name = "{name}"
uscc = "{uscc}"
region_code = "{region}"
industry = "discrete"
chain = "高端装备"

[buffer]
synchronous = "normal"
max_bytes = "32MiB"

[metrics]
utc_offset = "+08:00"
snapshot_interval = "1h"

[mqtt]
host = "127.0.0.1"
port = 1883
tls = false
topic_prefix = "zgsz"
status_interval = "5s"
"#,
        name = e.name,
        uscc = e.uscc,
        region = e.region_code,
    );
    for (id, name, present) in [
        ("turning", "数控车削", Machine::Lathe),
        ("milling", "数控铣削", Machine::Mill),
        ("deburring", "去毛刺", Machine::Bench),
    ] {
        let used = machines
            .iter()
            .any(|(_, m)| *m == present || (present == Machine::Lathe && *m == Machine::Posing));
        if used {
            let _ = write!(
                t,
                "\n[[processes]]\nid = \"{id}\"\nname = \"{name}\"\nkey = true\n"
            );
        }
    }
    for (id, m) in machines {
        let _ = write!(
            t,
            r#"
[[devices]]
id = "{id}"
address = "127.0.0.1:1"
poll_interval = "1s"
timeout = "500ms"
[[devices.tags]]
name = "controller_mode"
area = "holding_register"
address = 0
type = "u16"
[[devices.tags]]
name = "execution"
area = "holding_register"
address = 1
type = "u16"
[[devices.tags]]
name = "part_count"
area = "holding_register"
address = 4
type = "u32"
order = "CDAB"
[[devices.tags]]
name = "cycle_running"
area = "coil"
address = 0
"#
        );
        let equipment = match m {
            Machine::Lathe | Machine::Posing => format!(
                "name = \"数控车床 {id}\"\nprocess = \"turning\"\nkind = \"cnc\"\nprofile = \"mtconnect-like\"\nparts = \"part_count\""
            ),
            Machine::Mill => format!(
                "name = \"加工中心 {id}\"\nprocess = \"milling\"\nkind = \"cnc\"\nprofile = \"mtconnect-like\"\nparts = \"part_count\""
            ),
            Machine::Bench => format!(
                "name = \"手工去毛刺台 {id}\"\nprocess = \"deburring\"\nkind = \"manual\"\nrunning = \"cycle_running\""
            ),
        };
        let _ = write!(
            t,
            "\n[[equipment]]\nid = \"{id}\"\ndevice = \"{id}\"\n{equipment}\n"
        );
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test: a panic is a failure")]
    use super::*;

    #[test]
    fn every_demo_gateway_has_a_config_the_agent_loads_without_warnings() {
        let all = gateways();
        assert_eq!(
            all.len(),
            ROSTER.len() + 1,
            "one enterprise has two gateways"
        );
        let regions: std::collections::BTreeSet<_> = all.iter().map(|g| g.region_code).collect();
        assert_eq!(regions.len(), zgsz_agent::identity::YANGZHOU_REGIONS.len());
        for g in &all {
            let (cfg, warnings) =
                zgsz_agent::config::load_str(std::path::Path::new("demo-city.toml"), &g.config)
                    .unwrap_or_else(|e| panic!("{}: {e}\n{}", g.gateway_id, g.config));
            assert!(warnings.is_empty(), "{}: {warnings:?}", g.gateway_id);
            assert_eq!(cfg.enterprise.uscc, g.uscc);
            assert_eq!(cfg.devices.len(), g.machines.len());
        }
        assert_eq!(
            all.iter().filter(|g| g.fate == Fate::NeverStarts).count(),
            1
        );
        assert_eq!(
            all.iter()
                .filter(|g| matches!(g.fate, Fate::DownAfterDays(_)))
                .count(),
            1
        );
    }
}
