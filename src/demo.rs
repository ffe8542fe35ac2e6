//! `zgsz-agent demo`: the real agent against a simulated shop floor and an
//! embedded broker, with a "platform" subscriber printing what arrives.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::Instant;

use crate::broker;
use crate::clock::{Clock, ScaledClock, SystemClock};
use crate::config;
use crate::sim::ShopFloor;

/// The demo's config, built in so the demo works from any directory: the
/// Modbus plant and the S7 line, plus the OPC UA machine tools when the
/// simulator has them (arrays of tables, so the other files just append
/// devices and equipment).
#[cfg(feature = "opcua-sim")]
pub const DEMO_CONFIG: &str = concat!(
    include_str!("../config/demo.toml"),
    include_str!("../config/demo-s7.toml"),
    include_str!("../config/demo-opcua.toml")
);
#[cfg(not(feature = "opcua-sim"))]
pub const DEMO_CONFIG: &str = concat!(
    include_str!("../config/demo.toml"),
    include_str!("../config/demo-s7.toml")
);

/// What the subscribers (the city platform and the enterprise's systems)
/// have seen.
#[derive(Default)]
struct Platform {
    /// Messages on the platform's topics (metrics, states, status).
    platform_messages: u64,
    /// Telemetry messages (the enterprise sink's).
    messages: u64,
    duplicates: u64,
    readings: u64,
    seen: HashSet<String>,
    last_seq: i64,
    /// device -> tag -> latest value (as text).
    latest: BTreeMap<String, BTreeMap<String, String>>,
    status: String,
    /// The latest metrics snapshot.
    metrics: Option<serde_json::Value>,
}

/// `85.7% (6/7)`, or `n/a (reason)`.
fn ratio(r: &serde_json::Value) -> String {
    match r["value"].as_f64() {
        Some(v) => format!(
            "{:.1}% ({}/{})",
            v * 100.0,
            r["numerator"],
            r["denominator"]
        ),
        None => format!("n/a ({})", r["reason"].as_str().unwrap_or("?")),
    }
}

impl Platform {
    fn take(&mut self, topic: &str, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        if topic.starts_with("zgsz/") {
            self.platform_messages += 1;
        }
        if topic.ends_with("/status") {
            self.status = v["state"].as_str().unwrap_or("?").to_string();
            return;
        }
        let id = v["msg_id"].as_str().unwrap_or_default().to_string();
        if !self.seen.insert(id) {
            self.duplicates += 1;
            return;
        }
        self.last_seq = self.last_seq.max(v["seq"].as_i64().unwrap_or(0));
        if topic.ends_with("/metrics") {
            self.metrics = Some(v);
            return;
        }
        if !topic.ends_with("/telemetry") {
            return;
        }
        self.messages += 1;
        // `zgsz.telemetry/3` keys values by their tag's index in `tags`.
        let tags = v["tags"].as_array();
        let name = |key: &String| -> String {
            tags.and_then(|t| t.get(key.parse::<usize>().ok()?))
                .and_then(|t| t.as_str())
                .map_or_else(|| key.clone(), str::to_string)
        };
        for c in v["cycles"].as_array().into_iter().flatten() {
            let dev = c["device"].as_str().unwrap_or("?").to_string();
            let latest = self.latest.entry(dev).or_default();
            for (key, value) in c["values"].as_object().into_iter().flatten() {
                let tag = name(key);
                self.readings += 1;
                let val = match value {
                    serde_json::Value::Number(n) => match n.as_f64() {
                        Some(f) if n.is_f64() => format!("{f:.1}"),
                        _ => n.to_string(),
                    },
                    other => other.to_string(),
                };
                latest.insert(tag, val);
            }
            for (key, why) in c["bad"].as_object().into_iter().flatten() {
                self.readings += 1;
                latest.insert(name(key), format!("bad({})", why.as_str().unwrap_or("?")));
            }
        }
    }
}

/// The demo's poll interval in real time at `speed`, and in clock time:
/// 1 s at speed 1; under compression the machines are polled every 12
/// simulated minutes, but never more often than every 100 ms of real time.
fn scaled_poll(speed: f64) -> (Duration, Duration) {
    if speed <= 1.0 {
        return (Duration::from_secs(1), Duration::from_secs(1));
    }
    let real = Duration::from_secs(1)
        .mul_f64((720.0 / speed).min(1.0))
        .max(Duration::from_millis(100));
    (real, real.mul_f64(speed))
}

#[allow(
    clippy::too_many_lines,
    reason = "starts the whole demo (simulated machines, broker, agent, report) in start order; not split yet"
)]
pub async fn run(
    duration: Option<Duration>,
    speed: f64,
    report: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (mut cfg, _warnings) = config::load_str(Path::new("config/demo.toml"), DEMO_CONFIG)?;
    let scaled = speed > 1.0;
    let clock: Arc<dyn Clock> = if scaled {
        Arc::new(ScaledClock::new(speed))
    } else {
        Arc::new(SystemClock)
    };
    let floor = if scaled {
        ShopFloor::start_plant_day(clock.clone(), cfg.metrics.utc_offset).await
    } else {
        ShopFloor::start().await
    }
    .context("starting the simulated shop floor")?;
    let port = broker::free_port().context("finding a free loopback port for the broker")?;
    let broker_addr = broker::start_embedded(port).context("starting the embedded MQTT broker")?;
    let state = tempfile::Builder::new()
        .prefix("zgsz-demo-")
        .tempdir()
        .context("creating a temporary state directory")?;

    if scaled {
        // Poll intervals and the snapshot cadence are clock time.
        let (_, poll) = scaled_poll(speed);
        for d in &mut cfg.devices {
            Arc::make_mut(d).poll_interval = poll;
        }
        for e in &mut Arc::make_mut(&mut cfg.plant).equipment {
            e.poll_interval = poll;
        }
        cfg.metrics.snapshot_interval = cfg.metrics.snapshot_interval.mul_f64(speed);
    }
    for (id, addr) in floor.addresses() {
        cfg.set_device_address(&id, &addr.to_string());
    }
    cfg.set_broker("127.0.0.1", broker_addr.port());
    cfg.set_state_dir(state.path());
    #[cfg(feature = "opcua-sim")]
    if let Some(sim) = floor.opcua() {
        let ids: Vec<String> = cfg
            .devices
            .iter()
            .filter(|d| d.opcua().is_some())
            .map(|d| d.id.to_string())
            .collect();
        for id in ids {
            cfg.set_device_address(&id, &sim.endpoint());
        }
        // What an engineer does on site after checking the thumbprint.
        crate::sim::opcua::trust_certificate(
            &state.path().join("pki"),
            &sim.server_certificate_der(),
        )
        .context("trusting the simulated OPC UA server's certificate")?;
    }

    println!("zgsz-agent demo");
    println!(
        "  simulated shop floor: {} machines on 127.0.0.1 (Modbus TCP), {} S7 line PLC{}",
        floor.machines.len(),
        floor.lines.len(),
        floor
            .opcua_endpoint()
            .map(|e| format!(
                " and {} OPC UA machine tools at {e}",
                crate::sim::DEMO_OPCUA_MACHINES.len()
            ))
            .unwrap_or_default()
    );
    println!("  embedded MQTT broker: {broker_addr}");
    println!(
        "  outbox:               {}",
        state.path().join(crate::buffer::DB_FILE).display()
    );
    if scaled {
        println!(
            "  time compression:     ×{speed} (a day in {:.0} s); machines polled every {} simulated s",
            86_400.0 / speed,
            scaled_poll(speed).1.as_secs()
        );
    }
    println!(
        "  stop with Ctrl-C{}",
        duration
            .map(|d| format!(" or after {}s", d.as_secs()))
            .unwrap_or_default()
    );

    println!("  sinks (both on the embedded broker):");
    for sink in &cfg.sinks {
        println!(
            "    {:<10} {} -> {}/…",
            sink.name,
            carried(sink),
            crate::uplink::mqtt::Topics::new(
                &sink.mqtt.topic_prefix,
                sink.layout,
                &cfg.enterprise,
                &cfg.agent.gateway_id
            )
            .of("")
            .trim_end_matches('/')
        );
    }

    // The platform and the enterprise: a plain subscriber on the broker.
    let mut opts = MqttOptions::new("demo-platform", "127.0.0.1", broker_addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (sub, mut sub_loop) = AsyncClient::new(opts, 64);
    sub.subscribe("#", QoS::AtLeastOnce).await?;

    let agent = crate::agent::start(&cfg, clock.clone())?;
    let demo_start = clock.now_ms();

    let started = Instant::now();
    let mut platform = Platform::default();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let signal = crate::agent::daemon::stop_signal();
    tokio::pin!(signal);
    let mut last_msgs = 0u64;
    loop {
        tokio::select! {
            ev = sub_loop.poll() => {
                if let Ok(Event::Incoming(Packet::Publish(p))) = ev {
                    platform.take(&p.topic, &p.payload);
                } else if ev.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = tick.tick() => {
                let stats = agent.buffer.stats().await.ok();
                let rate = (platform.messages - last_msgs) as f64 / 2.0;
                last_msgs = platform.messages;
                if scaled {
                    println!("\n[simulated {}]", crate::metrics::rfc3339(clock.now_ms() / 1000 * 1000, cfg.metrics.utc_offset));
                }
                println!(
                    "\n[{:>4}s] telemetry: {} msgs ({rate:.1}/s), {} readings | last seq {} | outbox {} rows",
                    started.elapsed().as_secs(),
                    platform.messages, platform.readings, platform.last_seq,
                    stats.as_ref().map(|s| s.rows).unwrap_or(0),
                );
                // What leaves the factory, per destination, and per day at
                // this rate (of simulated time under compression).
                let simulated_ms = (clock.now_ms() - demo_start).max(1) as f64;
                for sink in &agent.sinks {
                    let u = sink.borrow().clone();
                    println!(
                        "  sink {:<10} {:<9} {:>7} msgs {:>10} ≈ {}/day",
                        u.name,
                        if u.connected { "connected" } else { "DOWN" },
                        u.published_messages,
                        human_bytes(u.published_bytes as f64),
                        human_bytes(u.published_bytes as f64 / simulated_ms * 86_400_000.0),
                    );
                }
                if let Some(m) = &platform.metrics {
                    let i = &m["indicators"];
                    println!(
                        "  关键工序数控化率 CNC rate: declared {} | verified {} | 设备联网率 networking {} | NC time share {}",
                        ratio(&i["cnc_rate_declared"]), ratio(&i["cnc_rate_verified"]),
                        ratio(&i["networking_rate"]), ratio(&i["nc_time_share"]),
                    );
                }
                for (dev, tags) in &platform.latest {
                    let get = |t: &str| tags.get(t).cloned().unwrap_or_else(|| "-".into());
                    if tags.contains_key("recipe") {
                        println!(
                            "  {dev:<9} S7 mode {:<3} running {:<5} speed {:>6} /min  parts {:>6}  recipe {}",
                            get("mode"), get("running"), get("line_speed"), get("part_count"), get("recipe")
                        );
                        continue;
                    }
                    if tags.contains_key("operation_mode") {
                        let channel = tags
                            .get("channel_state")
                            .or_else(|| tags.get("channel_state_1"))
                            .cloned()
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "  {dev:<9} OPC UA operation mode {:<3} channel state {:<3} program {}",
                            get("operation_mode"), channel, get("program_state")
                        );
                        continue;
                    }
                    println!(
                        "  {dev:<9} mode {:<3} exec {:<3} spindle {:>8} rpm  parts {:>6}  running {}",
                        get("controller_mode"), get("execution"), get("spindle_speed"), get("part_count"), get("cycle_running")
                    );
                }
            }
            _ = &mut end => break,
            _ = &mut signal => break,
        }
    }
    agent.stop().await;
    if let Some(dir) = report {
        let day = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
                .map(|t| crate::report::format_date(t.to_offset(cfg.metrics.utc_offset).date()))
        };
        let (from, to) = (day(demo_start)?, day(clock.now_ms())?);
        println!("\nWriting the evidence report of the run ({from} to {to}):");
        crate::cli::report(&cfg, &from, &to, &dir, clock.now_ms())?;
    }
    println!(
        "\nDemo done: the platform received {} messages (metrics, states, status); the enterprise received {} telemetry messages ({} readings, {} duplicates dropped by msg_id).",
        platform.platform_messages, platform.messages, platform.readings, platform.duplicates
    );
    Ok(())
}

/// What a sink carries, for the banner.
fn carried(sink: &config::SinkConfig) -> String {
    let c = &sink.carries;
    [
        (c.metrics, "metrics"),
        (c.states, "states"),
        (c.status, "status"),
        (c.telemetry.is_some(), "telemetry"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join(", ")
}

/// `1.2 MB`: decimal units, as bandwidth is billed.
fn human_bytes(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}
