//! What leaves the factory, and what the outbox holds, per reading: the
//! sizes behind the northbound-sink figures in BENCHMARKS.md, computed by
//! the agent's own code (the exception filter, the outbox's telemetry
//! records, the uplink's messages and the metrics) on a synthetic plant of
//! 50 machines × 50 tags at 1 s, with tag names like `spindle_speed`.
//! Deterministic (a fixed seed), so anyone gets the same figures:
//!
//!     cargo run --release --example wire
//!
//! Bytes on the wire are MQTT PUBLISH packets (fixed header, topic, packet
//! id, payload), without TCP/TLS framing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

use std::path::Path;
use std::sync::Arc;

use zgsz_agent::buffer::{self, cycle, Batch, Kind, Row, Stats};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::config::{self, Config};
use zgsz_agent::metrics::{seal_window, Window, WindowData, WindowKind};
use zgsz_agent::plant::State;
use zgsz_agent::reading::{Quality, Reading, Value};
use zgsz_agent::telemetry::Exceptions;
use zgsz_agent::uplink::mqtt::{MqttUplink, Topics, UplinkState};

const MACHINES: usize = 50;
const TAGS: usize = 50;
/// Device cycles that share a commit (50 devices on two poll slots at 1 s).
const PER_COMMIT: usize = 25;
const CYCLES: usize = 600;
const DAY_S: f64 = 86_400.0;
const CAP: f64 = 256.0 * 1024.0 * 1024.0;

/// 50 tag names as CNC and PLC maps name them (13 characters on average).
fn tag_names() -> Vec<String> {
    let base = [
        "controller_mode",
        "execution",
        "part_count",
        "spindle_speed",
        "spindle_load",
        "feed_rate",
        "feed_override",
        "rapid_override",
        "program",
        "cycle_running",
        "axis_x_pos",
        "axis_y_pos",
        "axis_z_pos",
        "axis_x_load",
        "axis_y_load",
        "axis_z_load",
        "coolant_temp",
        "coolant_level",
        "hydraulic_psi",
        "lube_level",
        "tool_number",
        "tool_life",
        "alarm_code",
        "door_closed",
        "servo_temp",
    ];
    let mut out: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    for s in &base {
        out.push(format!("{s}_2"));
    }
    out.truncate(TAGS);
    out
}

fn config_text(report: &str, keys: &str) -> String {
    let names = tag_names();
    let mut t = format!(
        "[agent]\ngateway_id = \"yz-hj-gw-01\"\nstate_dir = \"{}\"\n\
         [enterprise]\nname = \"示例\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n\
         [mqtt]\ntls = false\n\
         [[sinks]]\nname = \"enterprise\"\ntls = false\nport = 1884\ntopic_prefix = \"factory\"\ntopic_layout = \"gateway\"\ncarries = [\"telemetry\", \"status\"]\ntelemetry_keys = \"{keys}\"\n\
         [telemetry]\nreport = \"{report}\"\n\
         [[processes]]\nid = \"turning\"\nname = \"数控车削\"\nkey = true\n",
        std::env::temp_dir().join("zgsz-wire").display()
    );
    for m in 0..MACHINES {
        t += &format!(
            "[[devices]]\nid = \"machine-{m:02}\"\naddress = \"127.0.0.1:{}\"\n",
            20_000 + m
        );
        for (i, n) in names.iter().enumerate() {
            t += &format!(
                "[[devices.tags]]\nname = \"{n}\"\narea = \"holding_register\"\naddress = {i}\n"
            );
        }
    }
    for m in 0..MACHINES {
        t += &format!(
            "[[equipment]]\nid = \"machine-{m:02}\"\nname = \"数控车床 {m}#\"\nprocess = \"turning\"\nkind = \"cnc\"\ndevice = \"machine-{m:02}\"\nprofile = \"mtconnect-like\"\nparts = \"part_count\"\n"
        );
    }
    t
}

fn load(report: &str, keys: &str) -> Config {
    std::fs::create_dir_all(std::env::temp_dir().join("zgsz-wire")).expect("temp dir");
    config::load_str(Path::new("wire.toml"), &config_text(report, keys))
        .expect("the synthetic plant's config is valid")
        .0
}

/// A value as a machine has it: a float with one decimal, a counter, a
/// flag, a mode.
fn value(tag: usize, v: u64) -> Value {
    match tag % 10 {
        0..=5 => Value::Float((v % 40_000) as f64 / 10.0),
        6 | 7 => Value::Int((v % 100_000) as i64),
        8 => Value::Bool(v.is_multiple_of(2)),
        _ => Value::Int((v % 4) as i64),
    }
}

/// Sizes of one run of the synthetic plant: `changing` is the share of
/// values that change per cycle.
struct Run {
    readings: u64,
    wire: u64,
    stored: u64,
    messages: u64,
}

fn run(cfg: &Config, uplink: &MqttUplink, topics: &Topics, changing: f64) -> Run {
    let names: Vec<Arc<str>> = tag_names().iter().map(|s| Arc::from(s.as_str())).collect();
    let devices: Vec<Arc<str>> = (0..MACHINES)
        .map(|m| Arc::from(format!("machine-{m:02}").as_str()))
        .collect();
    let mut filter = Exceptions::new(cfg);
    let mut rng = fastrand::Rng::with_seed(20_241_130);
    let mut current: Vec<Vec<u64>> = (0..MACHINES)
        .map(|_| (0..TAGS).map(|_| rng.u64(0..1_000_000)).collect())
        .collect();
    let mut out = Run {
        readings: 0,
        wire: 0,
        stored: 0,
        messages: 0,
    };
    let topic = topics.of("telemetry").len() as u64;
    let mut seq = 0i64;
    // The outbox's names, as the agent keeps them (see buffer::cycle).
    let mut dict = cycle::Dictionary::default();
    let t0 = 1_764_300_000_000i64;
    for c in 0..CYCLES {
        let mut batches = Vec::new();
        for (m, device) in devices.iter().enumerate() {
            for v in current[m].iter_mut() {
                if rng.f64() < changing {
                    *v = rng.u64(0..1_000_000);
                }
            }
            let ts = t0 + c as i64 * 1000 + m as i64 * 20;
            let readings: Vec<Reading> = names
                .iter()
                .enumerate()
                .map(|(i, tag)| Reading {
                    device: device.clone(),
                    tag: tag.clone(),
                    value: Some(value(i, current[m][i])),
                    quality: Quality::Good,
                    ts,
                })
                .collect();
            out.readings += readings.len() as u64;
            let publish = filter.select(&readings);
            batches.push(Batch {
                readings,
                publish,
                ..Default::default()
            });
            if batches.len() == PER_COMMIT {
                let rows = cycle::encode_shared(
                    &batches,
                    cfg.buffer.max_message_bytes - buffer::ENVELOPE_RESERVE,
                    |_| 2,
                    &mut dict,
                );
                dict.mark_saved();
                for r in rows {
                    out.stored += r.body.len() as u64 + 32;
                    seq += 1;
                    let row = Row {
                        seq,
                        kind: Kind::Telemetry,
                        created_ms: ts,
                        count: r.count,
                        body: r.body,
                        names: dict.names(),
                    };
                    if let Some(msg) = uplink.message(&row, "3f9c2a7be41d0c58", false) {
                        out.messages += 1;
                        out.wire += publish_packet(topic, msg.len() as u64);
                    }
                }
                batches.clear();
            }
        }
    }
    out
}

/// An MQTT 3.1.1 QoS 1 PUBLISH: fixed header, topic, packet id, payload.
fn publish_packet(topic: u64, payload: u64) -> u64 {
    let rest = 2 + topic + 2 + payload;
    let len_bytes = match rest {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + len_bytes + rest
}

/// Bytes a day to the platform sink: metrics, states and status.
fn platform_day(cfg: &Config, uplink: &MqttUplink, topics: &Topics) -> (u64, Vec<(String, u64)>) {
    // A realistic window: each machine in one state, changing 6 times an hour.
    let mut data = WindowData::default();
    for e in &cfg.plant.equipment {
        data.initial.insert(e.id.to_string(), State::RunningNc);
        data.samples.insert(e.id.to_string(), (3600, 3600));
    }
    for (i, e) in cfg.plant.equipment.iter().enumerate() {
        for k in 0..6 {
            let s = if k % 2 == 0 {
                State::Idle
            } else {
                State::RunningNc
            };
            data.transitions
                .push((e.id.to_string(), 600_000 * k + i as i64 * 1000 + 1, s));
        }
    }
    data.transitions.sort_by_key(|t| t.1);
    data.upto_seq = 123_456;
    let metrics = |kind: WindowKind, seal: bool| -> u64 {
        let w = Window {
            kind,
            start: 0,
            end: 3_600_000,
        };
        let head = seal.then_some((41u64, "0".repeat(64)));
        let (_, row, _) = seal_window(
            &cfg.plant,
            &cfg.enterprise,
            &cfg.hash(),
            w,
            cfg.metrics.utc_offset,
            &data,
            head.as_ref(),
        )
        .expect("metrics");
        let row = Row {
            seq: 1,
            kind: Kind::Metrics,
            created_ms: 0,
            count: row.count,
            body: row.body,
            names: Default::default(),
        };
        let msg = uplink
            .message(&row, "3f9c2a7be41d0c58", false)
            .expect("a metrics message");
        publish_packet(topics.of("metrics").len() as u64, msg.len() as u64)
    };
    let per_day = DAY_S / cfg.metrics.snapshot_interval.as_secs_f64();
    let hours = 24 * metrics(WindowKind::Hour, true);
    let days = metrics(WindowKind::Day, true);
    let snapshots = (per_day * metrics(WindowKind::Snapshot, false) as f64) as u64;
    // One states message per transition (a machine's changes rarely share
    // a commit): 50 machines × 6 an hour.
    let states_body = br#""transitions":[{"id":123456,"equipment":"machine-07","state":"running_nc","ts":1764300000000}]"#.to_vec();
    let states_row = Row {
        seq: 1,
        kind: Kind::States,
        created_ms: 0,
        count: 1,
        body: states_body,
        names: Default::default(),
    };
    let one_state = publish_packet(
        topics.of("states").len() as u64,
        uplink
            .message(&states_row, "3f9c2a7be41d0c58", false)
            .expect("states")
            .len() as u64,
    );
    let states = (MACHINES as u64) * 6 * 24 * one_state;
    // Status every status_interval, with every device's health.
    let stats = Stats {
        instance: "3f9c2a7be41d0c58".into(),
        devices: (0..MACHINES)
            .map(|m| buffer::DeviceHealth {
                id: format!("machine-{m:02}"),
                last_good_ts: Some(1_764_300_000_000),
                good: 4_320_000,
                ..Default::default()
            })
            .collect(),
        sinks: vec![
            buffer::SinkStats {
                name: "platform".into(),
                ..Default::default()
            },
            buffer::SinkStats {
                name: "enterprise".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let status_len = uplink.status_payload("online", Some(&stats)).len() as u64;
    let per_status = publish_packet(topics.of("status").len() as u64, status_len);
    let status = (DAY_S / cfg.sinks[0].mqtt.status_interval.as_secs_f64()) as u64 * per_status;
    let parts = vec![
        ("metrics, hourly".to_string(), hours),
        ("metrics, daily".to_string(), days),
        (
            format!(
                "metrics, snapshots every {:?}",
                cfg.metrics.snapshot_interval
            ),
            snapshots,
        ),
        (
            "states (6 changes per machine per hour)".to_string(),
            states,
        ),
        (
            format!("status every {:?}", cfg.sinks[0].mqtt.status_interval),
            status,
        ),
    ];
    (parts.iter().map(|p| p.1).sum(), parts)
}

/// A sink's session (for its messages) and its topics.
fn session(
    cfg: &Config,
    sink: Arc<zgsz_agent::config::SinkConfig>,
    handles: &buffer::BufferHandles,
) -> (MqttUplink, Topics) {
    let topics = Topics::new(
        &sink.mqtt.topic_prefix,
        sink.layout,
        &cfg.enterprise,
        &cfg.agent.gateway_id,
    );
    let (state, board) = tokio::sync::watch::channel(UplinkState::default());
    let uplink = MqttUplink::new(
        sink,
        &cfg.enterprise,
        &cfg.agent.gateway_id,
        handles.client.clone(),
        handles.appended.clone(),
        Arc::new(SystemClock),
        state,
        vec![board],
    );
    (uplink, topics)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    println!("Synthetic plant: {MACHINES} machines × {TAGS} tags at 1 s, {CYCLES} cycles, {PER_COMMIT} device cycles per commit\n");
    for (name, report, changing) in [
        ("every cycle, 10% of values changing", "cycle", 0.1),
        ("on change, 10% of values changing", "change", 0.1),
    ] {
        let cfg = load(report, "index");
        let dir = tempfile::tempdir().expect("tempdir");
        let ob = buffer::Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).expect("outbox");
        let handles = buffer::spawn(ob, &cfg.buffer, Arc::new(SystemClock));
        let sink = cfg.sinks[1].clone();
        let (uplink, topics) = session(&cfg, sink, &handles);
        let r = run(&cfg, &uplink, &topics, changing);
        // The same plant to a sink keyed by tag name (`/2`).
        let named = {
            let cfg = load(report, "name");
            let dir = tempfile::tempdir().expect("tempdir");
            let ob = buffer::Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).expect("outbox");
            let handles = buffer::spawn(ob, &cfg.buffer, Arc::new(SystemClock));
            let (uplink, topics) = session(&cfg, cfg.sinks[1].clone(), &handles);
            run(&cfg, &uplink, &topics, changing)
        };
        let per_s = (MACHINES * TAGS) as f64;
        let wire = r.wire as f64 / r.readings as f64;
        let stored = r.stored as f64 / r.readings as f64;
        println!("telemetry, {name}:");
        println!(
            "  on the wire, tags by index (zgsz.telemetry/3, the default): {wire:.2} bytes per reading polled ({} messages, {} bytes)",
            r.messages, r.wire
        );
        println!(
            "  on the wire, tags by name (zgsz.telemetry/2): {:.2} bytes per reading polled ({} messages, {} bytes)",
            named.wire as f64 / named.readings as f64,
            named.messages,
            named.wire
        );
        println!("  in the outbox: {stored:.2} bytes per reading polled, as counted against buffer.max_bytes");
        println!(
            "  the default 256 MiB cap holds {:.1} h of outage",
            CAP / (stored * per_s) / 3600.0
        );
        println!(
            "  to the enterprise a day: {:.1} GB",
            wire * per_s * DAY_S / 1e9
        );
        if report == "cycle" {
            let (p, platform) = session(&cfg, cfg.sinks[0].clone(), &handles);
            let (total, parts) = platform_day(&cfg, &p, &platform);
            println!("\nplatform sink (metrics, states, status), bytes a day:");
            for (what, b) in parts {
                println!("  {what}: {:.2} MB", b as f64 / 1e6);
            }
            println!("  total: {:.2} MB\n", total as f64 / 1e6);
        }
    }
}
