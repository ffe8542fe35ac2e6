//! The indicators against hand-computed fixtures, window edges read back
//! from a real SQLite outbox, and the demo plant end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use zgsz_agent::buffer::{self, Batch, Outbox};
use zgsz_agent::config::{self, Config};
use zgsz_agent::metrics::{compute, Ratio, Window, WindowData, WindowKind};
use zgsz_agent::plant::{State, Tracker, Transition};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

/// A plant config; `plant_toml` adds processes and equipment over four
/// devices d1..d4 that each have `mode` and `exec` registers.
fn plant(industry: &str, plant_toml: &str) -> Config {
    let mut devices = String::new();
    for d in 1..=4 {
        devices += &format!(
            "[[devices]]\nid = \"d{d}\"\naddress = \"127.0.0.1:1502\"\n[[devices.tags]]\nname = \"controller_mode\"\narea = \"holding_register\"\naddress = 0\n[[devices.tags]]\nname = \"execution\"\narea = \"holding_register\"\naddress = 1\n"
        );
    }
    let text = format!(
        "[agent]\ngateway_id = \"gw\"\nstate_dir = \"state\"\n[enterprise]\nname = \"测试\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"{industry}\"\n[metrics]\nutc_offset = \"+00:00\"\n[mqtt]\ntls = false\n{devices}\n{plant_toml}"
    );
    match config::load_str(Path::new("fixture.toml"), &text) {
        Ok((c, _)) => c,
        Err(e) => panic!("{e}"),
    }
}

fn equipment(id: &str, process: &str, kind: &str, device: &str) -> String {
    format!("[[equipment]]\nid = \"{id}\"\nname = \"{id}\"\nprocess = \"{process}\"\nkind = \"{kind}\"\ndevice = \"{device}\"\nprofile = \"mtconnect-like\"\n")
}

fn process(id: &str, key: bool) -> String {
    format!("[[processes]]\nid = \"{id}\"\nname = \"工序{id}\"\nkey = {key}\n")
}

fn ratio(r: &Ratio) -> (Option<f64>, u64, u64) {
    (r.value, r.numerator, r.denominator)
}

fn hour0() -> Window {
    Window {
        kind: WindowKind::Hour,
        start: 0,
        end: HOUR,
    }
}

#[test]
fn discrete_plant_hand_computed() {
    let cfg = plant(
        "discrete",
        &[
            process("p1", true),
            process("p2", false),
            equipment("e1", "p1", "cnc", "d1"),
            equipment("e2", "p1", "cnc", "d2"),
            equipment("e3", "p1", "manual", "d3"),
            equipment("e4", "p2", "cnc", "d4"),
        ]
        .concat(),
    );
    let data = WindowData {
        initial: HashMap::from([
            ("e1".into(), State::Idle),
            ("e2".into(), State::RunningManual),
            ("e4".into(), State::RunningNc),
        ]),
        transitions: vec![
            ("e1".into(), 10 * MIN, State::RunningNc),
            ("e1".into(), 30 * MIN, State::Idle),
            ("e3".into(), 30 * MIN, State::RunningManual),
        ],
        samples: HashMap::from([
            ("e1".into(), (3600, 3600)),
            ("e2".into(), (3600, 3600)),
            ("e3".into(), (1800, 3600)),
            ("e4".into(), (3600, 3600)),
        ]),
        ..Default::default()
    };
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0(),
        time::UtcOffset::UTC,
        &data,
    );
    let i = &r.indicators;
    // Key processes hold e1, e2 (cnc) and e3 (manual); e4 is outside them.
    assert_eq!(ratio(&i.cnc_rate_declared), (Some(2.0 / 3.0), 2, 3));
    // Only e1 ran under NC; e2 ran the whole hour, but by hand.
    assert_eq!(ratio(&i.cnc_rate_verified), (Some(1.0 / 3.0), 1, 3));
    let (nc, run) = (
        20 * MIN as u64 + 60 * MIN as u64,
        (20 + 60 + 30 + 60) * MIN as u64,
    );
    assert_eq!(
        ratio(&i.nc_time_share),
        (Some(nc as f64 / run as f64), nc, run)
    );
    let (nc_k, run_k) = (20 * MIN as u64, (20 + 60 + 30) * MIN as u64);
    assert_eq!(
        ratio(&i.nc_time_share_key),
        (Some(nc_k as f64 / run_k as f64), nc_k, run_k)
    );
    assert_eq!(ratio(&i.networking_rate), (Some(1.0), 4, 4));
    assert_eq!(ratio(&i.networking_rate_key), (Some(1.0), 3, 3));
    assert_eq!(
        ratio(&i.completeness),
        (Some(12600.0 / 14400.0), 12600, 14400)
    );

    let e1 = &r.equipment[0];
    assert_eq!(
        (e1.time_ms.idle, e1.time_ms.running_nc),
        (40 * MIN as u64, 20 * MIN as u64)
    );
    assert_eq!(
        ratio(&e1.utilisation),
        (Some(1.0 / 3.0), 20 * MIN as u64, HOUR as u64)
    );
    assert_eq!(
        ratio(&e1.nc_time_share),
        (Some(1.0), 20 * MIN as u64, 20 * MIN as u64)
    );
    let e3 = &r.equipment[2];
    assert_eq!(
        (e3.time_ms.offline, e3.time_ms.running_manual),
        (30 * MIN as u64, 30 * MIN as u64)
    );
    assert!(!e3.nc_capable && !e3.verified_nc);
    assert_eq!(
        ratio(&r.processes[0].nc_time_share),
        (Some(nc_k as f64 / run_k as f64), nc_k, run_k)
    );
    assert_eq!(
        (
            r.processes[0].equipment,
            r.processes[0].nc_capable,
            r.processes[0].verified_nc
        ),
        (3, 2, 1)
    );
    assert_eq!(r.window.start, "1970-01-01T00:00:00Z");
}

#[test]
fn process_plant_hand_computed_with_an_offline_control_system() {
    let cfg = plant(
        "process",
        &[
            process("p1", true),
            process("p2", true),
            process("p3", true),
            process("p4", false),
            equipment("dcs", "p1", "dcs", "d1"),
            equipment("bench", "p2", "manual", "d2"),
            equipment("plc", "p3", "plc", "d3"),
            equipment("plc4", "p4", "plc", "d4"),
        ]
        .concat(),
    );
    let data = WindowData {
        initial: HashMap::from([
            ("dcs".into(), State::RunningNc),
            ("plc4".into(), State::RunningNc),
        ]),
        transitions: vec![],
        samples: HashMap::from([("dcs".into(), (3600, 3600)), ("plc4".into(), (3600, 3600))]),
        ..Default::default()
    };
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0(),
        time::UtcOffset::UTC,
        &data,
    );
    // p1 and p3 have a control system; p2 (manual only) has none.
    assert_eq!(
        ratio(&r.indicators.cnc_rate_declared),
        (Some(2.0 / 3.0), 2, 3)
    );
    // p3's PLC was offline the whole window, so only p1 is verified.
    assert_eq!(
        ratio(&r.indicators.cnc_rate_verified),
        (Some(1.0 / 3.0), 1, 3)
    );
    let plc = r.equipment.iter().find(|e| e.id == "plc").unwrap();
    assert!(!plc.networked);
    assert_eq!(plc.time_ms.offline, HOUR as u64);
    assert_eq!(ratio(&r.indicators.networking_rate), (Some(0.5), 2, 4));
    assert_eq!(
        ratio(&r.indicators.networking_rate_key),
        (Some(1.0 / 3.0), 1, 3)
    );
    assert_eq!(ratio(&plc.nc_time_share), (None, 0, 0));
    assert!(plc.nc_time_share.reason.is_some());
}

#[test]
fn no_key_process_gives_null_with_a_reason_never_zero() {
    let cfg = plant(
        "discrete",
        &[process("p1", false), equipment("e1", "p1", "cnc", "d1")].concat(),
    );
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0(),
        time::UtcOffset::UTC,
        &WindowData::default(),
    );
    for ratio in [
        &r.indicators.cnc_rate_declared,
        &r.indicators.cnc_rate_verified,
        &r.indicators.networking_rate_key,
    ] {
        assert_eq!(ratio.value, None);
        assert_eq!(
            ratio.reason.as_deref(),
            Some("no key process is configured")
        );
    }
    let json = serde_json::to_value(&r.indicators.cnc_rate_declared).unwrap();
    assert_eq!(json["value"], serde_json::Value::Null);
}

#[test]
fn windows_align_to_the_configured_offset() {
    let offset = time::UtcOffset::from_hms(8, 0, 0).unwrap();
    // 2026-11-28T00:30:00+08:00 = 2026-11-27T16:30:00Z
    let ts = 1_795_797_000_000;
    let day = Window::containing(WindowKind::Day, ts, offset);
    assert_eq!(
        zgsz_agent::metrics::rfc3339(day.start, offset),
        "2026-11-28T00:00:00+08:00"
    );
    assert_eq!(day.len_ms(), 24 * HOUR);
    let hour = Window::containing(WindowKind::Hour, ts, offset);
    assert_eq!(
        zgsz_agent::metrics::rfc3339(hour.start, offset),
        "2026-11-28T00:00:00+08:00"
    );
    assert_eq!(hour.next().start, hour.end);
    let snap = Window::containing(WindowKind::Snapshot, ts, offset);
    assert_eq!((snap.start, snap.end), (day.start, ts));
}

fn outbox(dir: &Path, cfg: &Config) -> Outbox {
    Outbox::open(dir, &cfg.buffer, &cfg.routes()).unwrap()
}

fn commit(o: &mut Outbox, transitions: Vec<Transition>) {
    o.commit(
        &[],
        &Batch {
            transitions,
            ..Default::default()
        },
        &[],
        &[],
        0,
    )
    .unwrap();
}

fn t(eq: &str, ts: i64, state: State) -> Transition {
    Transition {
        equipment: eq.into(),
        ts,
        state,
    }
}

#[test]
fn a_transition_on_a_boundary_belongs_to_the_window_it_starts() {
    let cfg = plant(
        "discrete",
        &[process("p1", true), equipment("e1", "p1", "cnc", "d1")].concat(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut o = outbox(dir.path(), &cfg);
    commit(
        &mut o,
        vec![
            t("e1", 0, State::Idle),
            t("e1", HOUR, State::RunningNc),
            t("e1", 2 * HOUR, State::Idle),
        ],
    );
    let conn = buffer::open_read_only(dir.path()).unwrap();
    let first = buffer::window_data(&conn, 0, HOUR).unwrap();
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0(),
        time::UtcOffset::UTC,
        &first,
    );
    assert_eq!(r.equipment[0].time_ms.idle, HOUR as u64);
    assert_eq!(r.equipment[0].time_ms.running_nc, 0);
    assert!(!r.equipment[0].ran_nc);
    let second = buffer::window_data(&conn, HOUR, 2 * HOUR).unwrap();
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0().next(),
        time::UtcOffset::UTC,
        &second,
    );
    assert_eq!(r.equipment[0].time_ms.running_nc, HOUR as u64);
    assert!(r.equipment[0].verified_nc);
}

#[test]
fn a_restart_mid_window_counts_the_unobserved_gap_as_offline() {
    let cfg = plant(
        "discrete",
        &[process("p1", true), equipment("e1", "p1", "cnc", "d1")].concat(),
    );
    let dir = tempfile::tempdir().unwrap();
    // First run: running under NC from minute 0; the agent's last commit
    // (its last sign of life) was at minute 20, then it was killed.
    {
        let mut o = outbox(dir.path(), &cfg);
        commit(&mut o, vec![t("e1", 0, State::RunningNc)]);
        let reading = zgsz_agent::reading::Reading {
            device: "d1".into(),
            tag: "execution".into(),
            value: Some(zgsz_agent::reading::Value::Int(1)),
            quality: zgsz_agent::reading::Quality::Good,
            ts: 20 * MIN,
        };
        o.commit(
            &[],
            &Batch {
                readings: vec![reading],
                ..Default::default()
            },
            &[],
            &[],
            20 * MIN,
        )
        .unwrap();
    }
    // Second run at minute 40: the tracker resumes from SQLite.
    let mut o = outbox(dir.path(), &cfg);
    let (restored, last_alive) = o.plant_restore().unwrap();
    assert_eq!(last_alive, Some(20 * MIN));
    let (_, closing) = Tracker::new(cfg.plant.clone(), &restored, last_alive);
    assert_eq!(closing, vec![t("e1", 20 * MIN, State::Offline)]);
    commit(&mut o, closing);
    commit(&mut o, vec![t("e1", 40 * MIN, State::RunningNc)]);
    let conn = buffer::open_read_only(dir.path()).unwrap();
    let data = buffer::window_data(&conn, 0, HOUR).unwrap();
    let r = compute(
        &cfg.plant,
        &cfg.enterprise,
        "h",
        hour0(),
        time::UtcOffset::UTC,
        &data,
    );
    let times = &r.equipment[0].time_ms;
    assert_eq!(
        (times.running_nc, times.offline),
        (40 * MIN as u64, 20 * MIN as u64)
    );
}

#[cfg(feature = "opcua-sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "an end-to-end scenario, read top to bottom as it happens"
)]
async fn demo_plant_end_to_end_verified_rate_follows_a_switch_to_manual() {
    use std::time::Duration;
    use zgsz_agent::sim::{MachineKind, ModeOverride, ShopFloor};
    // The demo's machines, with short cycles so every one runs within seconds.
    let machines: Vec<(&str, MachineKind, u64, u64)> = zgsz_agent::sim::DEMO_MACHINES
        .iter()
        .map(|&(id, k, _, _)| (id, k, 3, 1))
        .collect();
    // And the demo's S7 line PLC.
    let floor = ShopFloor::start_with_lines(&machines, &[("press-line", 3, 1)])
        .await
        .unwrap();
    floor.set_mode("lathe-01", ModeOverride::Manual);
    // The demo's OPC UA machine tools, with short cycles too.
    let ua_dir = tempfile::tempdir().unwrap();
    let ua = zgsz_agent::sim::opcua::OpcUaSim::start(zgsz_agent::sim::opcua::OpcUaSimOptions {
        port: 0,
        pki_dir: ua_dir.path().to_path_buf(),
        trust_client_certs: true,
        allow_anonymous: true,
        users: Vec::new(),
        user_certificates: Vec::new(),
        secure_endpoints: true,
        machines: zgsz_agent::sim::DEMO_OPCUA_MACHINES
            .iter()
            .map(
                |&(name, kind, channels, _, _)| zgsz_agent::sim::opcua::MachineSpec {
                    name: name.into(),
                    kind,
                    channels,
                    cycle_s: 3,
                    idle_s: 1,
                },
            )
            .collect(),
        plant_day: None,
    })
    .await
    .unwrap();
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = common::Platform::subscribe(port).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) =
        config::load_str(Path::new("config/demo.toml"), zgsz_agent::demo::DEMO_CONFIG).unwrap();
    for (id, addr) in floor.addresses() {
        cfg.set_device_address(&id, &addr.to_string());
    }
    for (id, _, _, _, _) in zgsz_agent::sim::DEMO_OPCUA_MACHINES {
        cfg.set_device_address(id, &ua.endpoint());
    }
    zgsz_agent::sim::opcua::trust_certificate(
        &dir.path().join("pki"),
        &ua.server_certificate_der(),
    )
    .unwrap();
    cfg.set_broker("127.0.0.1", port);
    cfg.set_state_dir(dir.path());
    cfg.metrics.snapshot_interval = Duration::from_millis(500);
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(zgsz_agent::clock::SystemClock)).unwrap();

    let rate = |m: &serde_json::Value, name: &str| {
        (
            m["indicators"][name]["numerator"].as_u64(),
            m["indicators"][name]["denominator"].as_u64(),
        )
    };
    // Every machine but the manual bench and lathe-01 (forced to manual)
    // runs under NC, the two OPC UA machine tools and the S7 line
    // included: verified 8/10 while declared stays 9/10.
    platform
        .wait_for(Duration::from_secs(30), "verified 8/10", |p| {
            p.of_kind("metrics")
                .iter()
                .any(|m| rate(m, "cnc_rate_verified") == (Some(8), Some(10)))
        })
        .await;
    let metrics = platform.of_kind("metrics");
    for m in &metrics {
        common::assert_schema("metrics", m);
        assert_eq!(rate(m, "cnc_rate_declared"), (Some(9), Some(10)));
        let lathe = m["equipment"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "lathe-01")
            .unwrap();
        assert_eq!(
            lathe["verified_nc"], false,
            "lathe-01 never ran under NC yet"
        );
        assert_eq!(lathe["time_ms"]["running_nc"], 0);
    }
    // Back to automatic: once it runs a cycle under NC it counts.
    floor.set_mode("lathe-01", ModeOverride::Auto);
    platform
        .wait_for(Duration::from_secs(30), "verified 9/10", |p| {
            p.of_kind("metrics")
                .iter()
                .any(|m| rate(m, "cnc_rate_verified") == (Some(9), Some(10)))
        })
        .await;
    agent.stop().await;
    ua.stop().await;

    // The `metrics` command recomputes today's figures from the same outbox.
    let file = dir.path().join("demo.toml");
    let text = zgsz_agent::demo::DEMO_CONFIG.replace(
        "state_dir = \"demo-state\"",
        &format!("state_dir = {:?}", dir.path().display().to_string()),
    );
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .args(["metrics", "--json", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let today: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rate(&today, "cnc_rate_declared"), (Some(9), Some(10)));
    assert_eq!(rate(&today, "cnc_rate_verified"), (Some(9), Some(10)));
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .args(["metrics", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("CNC rate, verified")
            && table.contains("lathe-01")
            && table.contains("dmg-01")
            && table.contains("press-line"),
        "{table}"
    );

    for m in platform.of_kind("metrics") {
        common::assert_schema("metrics", &m);
        assert_eq!(m["window"]["kind"], "snapshot");
        assert_eq!(m["config_hash"].as_str().map(str::len), Some(64));
    }
}

/// Each built-in profile against simulator registers: the equipment state
/// follows the standard codes as the registers change.
#[tokio::test]
async fn every_builtin_profile_reads_its_standard_codes_from_registers() {
    use zgsz_agent::sim::{Bank, SimDevice};
    use zgsz_agent::source::modbus::ModbusDevice;
    use zgsz_agent::source::Source;

    let bank = Arc::new(std::sync::Mutex::new(Bank::new(16)));
    let sim = SimDevice::start(HashMap::from([(1u8, bank.clone())]))
        .await
        .unwrap();
    // One register per signal: OPC 40501 OperationMode and two channels'
    // ChannelState, OPC 40001 MachineryItemState, MTConnect-like mode/execution.
    let tags = [
        ("operation_mode", 0),
        ("channel_state", 1),
        ("channel_state_2", 2),
        ("machinery_item_state", 3),
        ("controller_mode", 4),
        ("execution", 5),
    ]
    .iter()
    .map(|(n, a)| {
        format!("[[devices.tags]]\nname = \"{n}\"\narea = \"holding_register\"\naddress = {a}\n")
    })
    .collect::<String>();
    let text = format!(
        "[agent]\ngateway_id = \"gw\"\nstate_dir = \"state\"\n[enterprise]\nname = \"测试\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n[[devices]]\nid = \"d\"\naddress = \"{}\"\n{tags}\n{}{}{}{}",
        sim.addr,
        process("p", true),
        equipment("machine_tool", "p", "cnc", "d").replace("mtconnect-like", "opcua-machine-tool"),
        equipment("machinery", "p", "robot", "d").replace("mtconnect-like", "opcua-machinery"),
        equipment("mtc", "p", "cnc", "d"),
    );
    let (cfg, _) = config::load_str(Path::new("profiles.toml"), &text).unwrap();
    let mut dev = ModbusDevice::new(
        cfg.devices[0].clone(),
        Arc::new(zgsz_agent::clock::SystemClock),
    );
    let (mut tracker, _) = Tracker::new(cfg.plant.clone(), &HashMap::new(), None);
    async fn states(
        bank: &std::sync::Mutex<Bank>,
        dev: &mut ModbusDevice,
        tracker: &mut Tracker,
        regs: [u16; 6],
    ) -> HashMap<String, State> {
        bank.lock().unwrap().holding[..6].copy_from_slice(&regs);
        let readings = dev.poll_once().await;
        let (mut tr, mut samples) = (Vec::new(), Vec::new());
        tracker.observe(&readings, &mut tr, &mut samples);
        assert!(samples.iter().all(|s| s.good), "{samples:?}");
        tr.into_iter()
            .map(|t| (t.equipment.to_string(), t.state))
            .collect()
    }
    // Automatic(1), channel 2 Active(0); Executing(3); AUTOMATIC + ACTIVE.
    let s = states(&bank, &mut dev, &mut tracker, [1, 2, 0, 3, 1, 1]).await;
    assert_eq!(s["machine_tool"], State::RunningNc);
    assert_eq!(s["machinery"], State::RunningNc);
    assert_eq!(s["mtc"], State::RunningNc);
    // Manual(0) with a channel active; Idle(1); MANUAL + ACTIVE.
    let s = states(&bank, &mut dev, &mut tracker, [0, 0, 2, 1, 0, 1]).await;
    assert_eq!(s["machine_tool"], State::RunningManual);
    assert_eq!(s["machinery"], State::Idle);
    assert_eq!(s["mtc"], State::RunningManual);
    // AutoWithManualIntervention(3), every channel Reset(2); execution READY.
    let s = states(&bank, &mut dev, &mut tracker, [3, 2, 2, 3, 1, 0]).await;
    assert_eq!(s["machine_tool"], State::Idle);
    assert_eq!(s["mtc"], State::Idle);
    // Executing(3) again after Idle: an executing machine counts as under
    // program control unless its config says how to tell otherwise.
    assert_eq!(s["machinery"], State::RunningNc);
}
