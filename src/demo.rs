//! `zgsz-agent demo`: the real agent against a simulated shop floor and an
//! embedded broker, with a "platform" subscriber printing what arrives.
//! `demo --serve` starts the floor and the broker only, and writes a config
//! for an agent run elsewhere: a gateway build (which has neither), e.g. an
//! ARM binary under qemu in `.ci/arm`.

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
    let broker_addr = start_broker()?;
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
    print_floor(&floor, broker_addr);
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

fn start_broker() -> anyhow::Result<std::net::SocketAddr> {
    let port = broker::free_port().context("finding a free loopback port for the broker")?;
    broker::start_embedded(port).context("starting the embedded MQTT broker")
}

/// The banner's lines on the floor and the broker.
fn print_floor(floor: &ShopFloor, broker_addr: std::net::SocketAddr) {
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
}

/// `demo --serve DIR`: the simulated shop floor and the embedded broker,
/// with no agent. Writes `DIR/agent.toml`, the demo's config pointed at
/// them with its state in `DIR/state`, for `zgsz-agent run` of any build,
/// and serves until `duration` has passed or a stop signal.
pub async fn serve(dir: &Path, duration: Option<Duration>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir).context("resolving the --serve directory")?;
    let floor = ShopFloor::start()
        .await
        .context("starting the simulated shop floor")?;
    let broker_addr = start_broker()?;
    let state = dir.join("state");
    let opcua_endpoint = floor.opcua_endpoint();
    let text = served_config(
        &floor.addresses(),
        opcua_endpoint.as_deref(),
        broker_addr,
        &state,
    )?;
    #[cfg(feature = "opcua-sim")]
    if let Some(sim) = floor.opcua() {
        crate::sim::opcua::trust_certificate(&state.join("pki"), &sim.server_certificate_der())
            .context("trusting the simulated OPC UA server's certificate")?;
    }
    let path = dir.join("agent.toml");
    // Written last: a script waiting for the file finds everything up.
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;

    println!("zgsz-agent demo --serve");
    print_floor(&floor, broker_addr);
    println!("  config:               {}", path.display());
    println!(
        "  run an agent with:    zgsz-agent run --config {}",
        path.display()
    );
    println!(
        "  stop with Ctrl-C{}",
        duration
            .map(|d| format!(" or after {}s", d.as_secs()))
            .unwrap_or_default()
    );
    let end = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = end => {}
        _ = crate::agent::daemon::stop_signal() => {}
    }
    Ok(())
}

/// The demo's config as TOML, with the devices, both sinks and the state
/// directory pointed at the served floor and broker.
fn served_config(
    addresses: &std::collections::HashMap<String, std::net::SocketAddr>,
    opcua_endpoint: Option<&str>,
    broker: std::net::SocketAddr,
    state: &Path,
) -> anyhow::Result<String> {
    use toml::Value;
    let mut doc: toml::Table = DEMO_CONFIG.parse().context("parsing the demo config")?;
    let port = Value::Integer(broker.port().into());
    let state = state
        .to_str()
        .context("the --serve directory is not UTF-8")?;
    if let Some(agent) = doc.get_mut("agent").and_then(Value::as_table_mut) {
        agent.insert("state_dir".into(), Value::String(state.into()));
    }
    if let Some(mqtt) = doc.get_mut("mqtt").and_then(Value::as_table_mut) {
        mqtt.insert("port".into(), port.clone());
    }
    fn tables(v: Option<&mut toml::Value>) -> Vec<&mut toml::Table> {
        v.and_then(toml::Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_table_mut)
            .collect()
    }
    for sink in tables(doc.get_mut("sinks")) {
        sink.insert("port".into(), port.clone());
    }
    for dev in tables(doc.get_mut("devices")) {
        let id = dev.get("id").and_then(Value::as_str).unwrap_or_default();
        if let Some(addr) = addresses.get(id) {
            dev.insert("address".into(), Value::String(addr.to_string()));
        } else if let (Some(endpoint), true) = (opcua_endpoint, dev.contains_key("endpoint")) {
            dev.insert("endpoint".into(), Value::String(endpoint.into()));
        }
    }
    Ok(format!(
        "# Written by `zgsz-agent demo --serve`: the demo plant (config/demo*.toml)\n\
         # pointed at the simulated shop floor and the broker it serves.\n\n{}",
        toml::to_string(&doc).context("writing the served config")?
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    #[test]
    fn served_config_points_every_device_and_sink_at_the_served_plant() {
        let lathe: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let line: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let addresses = HashMap::from([
            ("lathe-01".to_string(), lathe),
            ("press-line".to_string(), line),
        ]);
        let broker: SocketAddr = "127.0.0.1:40003".parse().unwrap();
        let endpoint = "opc.tcp://127.0.0.1:40004/";
        let state = Path::new("/tmp/served/state");
        let text = served_config(&addresses, Some(endpoint), broker, state).unwrap();
        let (cfg, warnings) = config::load_str(Path::new("served.toml"), &text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.agent.state_dir, state);
        assert!(cfg.sinks.iter().all(|s| s.mqtt.port == 40003));
        let address = |id: &str| {
            cfg.devices
                .iter()
                .find(|d| &*d.id == id)
                .map(|d| d.address.clone())
        };
        assert_eq!(address("lathe-01").as_deref(), Some("127.0.0.1:40001"));
        assert_eq!(address("press-line").as_deref(), Some("127.0.0.1:40002"));
        for d in cfg.devices.iter().filter(|d| d.opcua().is_some()) {
            assert_eq!(d.address, endpoint, "{}", d.id);
        }
    }
}
