//! End-to-end load generator: the agent, as a separate process, against
//! simulated Modbus TCP devices and a real MQTT broker, all on loopback.
//!
//!     cargo build --release
//!     cargo run --release --example loadtest -- --devices 100 --tags 1000 --interval 1s --duration 60s --runs 3
//!
//! It starts one simulated device (`sim::SimDevice`) per `--devices` with
//! `--tags` adjacent u16 holding registers, a broker (mosquitto when it is
//! installed, else the embedded rumqttd; `--broker` chooses), a subscriber
//! on `zgsz/#`, and `target/release/zgsz-agent run --config <generated>`
//! for each phase. It reads the agent's counters from its outbox with
//! `buffer::read_stats` and its memory and CPU from `/proc/<pid>`.
//!
//! Phases (`--phases` picks some, comma-separated; default all):
//!
//! * `ceiling`: a bare tokio-modbus client, one connection per device,
//!   back-to-back 125-register reads: the most this machine serves.
//! * `throughput`: the agent at `--devices` x `--tags` every `--interval`
//!   for `--duration`: tag values/s committed to SQLite and acked.
//! * `saturation`: the same devices polled every 10 ms (the shortest
//!   interval the config allows), so the agent runs flat out; its register
//!   values/s against the ceiling.
//! * `coalescing`: 10 devices x `--tags` for 10 s with coalescing on and
//!   off: requests per poll cycle against the theoretical minimum.
//! * `latency`: 10 devices x 1,000 tags at 1 s (10,000 tags/s); each device
//!   bumps a change counter in register 0 at random moments, and the
//!   subscriber takes arrival time minus change time.
//! * `append`: the outbox alone (in this process, a real file), one poll
//!   cycle of 1,000 readings per commit, synchronous FULL and NORMAL.
//! * `drain`: a backlog of `--backlog` readings built while the broker is
//!   down (100 devices x 1,000 tags at 1 Hz); then the agent stops, the
//!   broker starts and the agent restarts on the same outbox without
//!   devices: time from its start until every backlog row is acked.
//! * `rss_start`: VmRSS 5 s after start with config/example.toml (its
//!   three TCP devices pointed at simulators).
//! * `rss_load`: VmRSS at 100 devices x 100 tags at 1 Hz after
//!   `--rss-duration` (default 5 min; run once, not per `--runs`).
//! * `cpu`: CPU time of one core at 50 devices x 50 tags at 1 Hz over
//!   `--cpu-duration`, from /proc/<pid>/stat utime+stime.
//!
//! `--agent PATH` runs another build of the agent, e.g. one without
//! `strip` and LTO for `perf record`.
//!
//! Everything runs on one machine: the simulators, the broker and the
//! subscriber take CPU from the agent, so the figures are a floor.
//! Results are printed as one table and appended to BENCHMARKS.md with the
//! machine description and the command (unless `--no-record`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_modbus::prelude::*;
use zgsz_agent::buffer::{self, cycle, Batch, Outbox, Publish, Route};
use zgsz_agent::config::{parse_duration, BufferConfig, Synchronous};
use zgsz_agent::reading::{Quality, Reading, Value};
use zgsz_agent::sim::{Bank, SimDevice};

const PHASES: [&str; 10] = [
    "ceiling",
    "throughput",
    "saturation",
    "coalescing",
    "latency",
    "append",
    "drain",
    "rss_start",
    "rss_load",
    "cpu",
];

struct Args {
    devices: usize,
    tags: usize,
    interval: Duration,
    duration: Duration,
    runs: usize,
    phases: Vec<String>,
    backlog: u64,
    latency_duration: Duration,
    rss_duration: Duration,
    cpu_duration: Duration,
    broker: String,
    /// `buffer.commit_window` for every agent run, to compare windows
    /// with one build; `None` keeps the default.
    commit_window: Option<String>,
    /// The agent binary; default: target/release/zgsz-agent beside us.
    agent: Option<PathBuf>,
    record: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadtest [--devices 100] [--tags 1000] [--interval 1s] [--duration 60s] [--runs 3]\n\
         \x20               [--phases {}]\n\
         \x20               [--backlog 1000000] [--latency-duration 30s] [--rss-duration 5m]\n\
         \x20               [--cpu-duration 60s] [--broker auto|mosquitto|embedded]\n\
         \x20               [--commit-window 100ms (buffer.commit_window; default: the agent's)]\n\
         \x20               [--agent PATH (e.g. an unstripped build to profile)] [--no-record]",
        PHASES.join(",")
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        devices: 100,
        tags: 1000,
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(60),
        runs: 3,
        phases: PHASES.iter().map(|s| s.to_string()).collect(),
        backlog: 1_000_000,
        latency_duration: Duration::from_secs(30),
        rss_duration: Duration::from_secs(300),
        cpu_duration: Duration::from_secs(60),
        broker: "auto".into(),
        commit_window: None,
        agent: None,
        record: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-record" {
            a.record = false;
            continue;
        }
        let Some(v) = it.next() else { usage() };
        let dur = |v: &str| parse_duration(v).unwrap_or_else(|| usage());
        let num = |v: &str| {
            v.replace('_', "")
                .parse::<u64>()
                .unwrap_or_else(|_| usage())
        };
        match flag.as_str() {
            "--devices" => a.devices = num(&v) as usize,
            "--tags" => a.tags = num(&v) as usize,
            "--interval" => a.interval = dur(&v),
            "--duration" => a.duration = dur(&v),
            "--runs" => a.runs = num(&v).max(1) as usize,
            "--backlog" => a.backlog = num(&v),
            "--latency-duration" => a.latency_duration = dur(&v),
            "--rss-duration" => a.rss_duration = dur(&v),
            "--cpu-duration" => a.cpu_duration = dur(&v),
            "--broker" => a.broker = v,
            "--commit-window" => {
                dur(&v);
                a.commit_window = Some(v)
            }
            "--agent" => a.agent = Some(PathBuf::from(v)),
            "--phases" => {
                a.phases = v.split(',').map(|s| s.trim().to_string()).collect();
                if a.phases.iter().any(|p| !PHASES.contains(&p.as_str())) {
                    usage()
                }
            }
            _ => usage(),
        }
    }
    if a.tags == 0 || a.tags > 60_000 || a.devices == 0 {
        usage()
    }
    a
}

// ---------------------------------------------------------------------------
// Simulators, broker, subscriber, agent process.

/// `n` simulated devices, each with `regs` holding registers (value = address).
async fn start_sims(n: usize, regs: usize) -> Vec<SimDevice> {
    let mut sims = Vec::with_capacity(n);
    for _ in 0..n {
        let mut bank = Bank::new(regs.max(128));
        for (i, r) in bank.holding.iter_mut().enumerate() {
            *r = i as u16;
        }
        let units = HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]);
        sims.push(SimDevice::start(units).await.expect("simulator starts"));
    }
    sims
}

fn reads(sims: &[SimDevice]) -> u64 {
    sims.iter()
        .map(|s| s.counters.reads.load(Ordering::Relaxed))
        .sum()
}

fn mosquitto_bin() -> Option<&'static str> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// A broker on 127.0.0.1:`port`: mosquitto (killed on drop), or the
/// embedded rumqttd, which lives until this process ends.
struct Broker {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    fn start(kind: &str, port: u16) -> Broker {
        if kind != "embedded" {
            if let Some(bin) = mosquitto_bin() {
                let dir = tempfile::tempdir().expect("tempdir");
                let conf = dir.path().join("mosquitto.conf");
                std::fs::write(
                    &conf,
                    format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n"),
                )
                .expect("write mosquitto.conf");
                #[allow(clippy::zombie_processes)] // killed and waited for in Drop
                let child = Command::new(bin)
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting mosquitto");
                for _ in 0..500 {
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Broker {
                            child: Some(child),
                            _dir: Some(dir),
                        };
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                panic!("mosquitto did not start listening on {port}");
            } else if kind == "mosquitto" {
                panic!("--broker mosquitto, but mosquitto is not installed");
            }
        }
        zgsz_agent::broker::start_embedded(port).expect("embedded broker starts");
        Broker {
            child: None,
            _dir: None,
        }
    }

    fn name(kind: &str) -> &'static str {
        if kind != "embedded" && mosquitto_bin().is_some() {
            "mosquitto"
        } else {
            "embedded rumqttd"
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the subscriber saw.
#[derive(Default)]
struct Seen {
    telemetry: AtomicU64,
    readings: AtomicU64,
    online: AtomicBool,
}

/// Change times of the latency phase: (device, counter value) -> when set.
type Changes = Arc<Mutex<HashMap<(usize, u16), Instant>>>;

/// Subscribes to `zgsz/#` at QoS 0 and counts; with `changes`, also
/// parses telemetry and records change-to-delivery latencies.
async fn subscribe(
    port: u16,
    changes: Option<Changes>,
) -> (Arc<Seen>, Arc<Mutex<Vec<f64>>>, tokio::task::JoinHandle<()>) {
    let mut opts = MqttOptions::new(format!("loadtest-{}", fastrand::u32(..)), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut el) = AsyncClient::new(opts, 64);
    client
        .subscribe("zgsz/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let seen = Arc::new(Seen::default());
    let lat = Arc::new(Mutex::new(Vec::new()));
    let (s2, l2) = (seen.clone(), lat.clone());
    let (subacked_tx, mut subacked) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subacked_tx.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    if p.topic.ends_with("/status") {
                        if p.payload.windows(8).any(|w| w == b"\"online\"") {
                            s2.online.store(true, Ordering::Relaxed);
                        }
                        continue;
                    }
                    if !p.topic.ends_with("/telemetry") {
                        continue;
                    }
                    s2.telemetry.fetch_add(1, Ordering::Relaxed);
                    s2.readings
                        .fetch_add(count_readings(&p.payload), Ordering::Relaxed);
                    if let Some(changes) = &changes {
                        record_latency(&p.payload, now, changes, &l2);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), subacked.wait_for(|&s| s)).await;
    (seen, lat, task)
}

/// Readings in a `zgsz.telemetry/3` message, counted without parsing it
/// (the subscriber must keep up with the agent): every member `"…":` is a
/// reading but the envelope's ten (`tags` included), each cycle's
/// `device`, `ts` and `values`, and `bad`. The load test's values are
/// integers, and its cycles carry no `ts_of`.
fn count_readings(payload: &[u8]) -> u64 {
    let members = payload.windows(2).filter(|w| *w == b"\":").count();
    let cycles = payload
        .windows(10)
        .filter(|w| *w == b"{\"device\":")
        .count();
    let bad = payload.windows(6).filter(|w| *w == b"\"bad\":").count();
    members.saturating_sub(10 + 3 * cycles + bad) as u64
}

#[derive(serde::Deserialize)]
struct Msg {
    tags: Vec<String>,
    cycles: Vec<WireCycle>,
}

#[derive(serde::Deserialize)]
struct WireCycle {
    device: String,
    values: std::collections::HashMap<String, serde_json::Value>,
}

fn record_latency(payload: &[u8], now: Instant, changes: &Changes, out: &Mutex<Vec<f64>>) {
    let Ok(msg) = serde_json::from_slice::<Msg>(payload) else {
        return;
    };
    // The values are keyed by their tag's index in `tags`.
    let Some(t0) = msg
        .tags
        .iter()
        .position(|t| t == "t0")
        .map(|i| i.to_string())
    else {
        return;
    };
    for c in msg.cycles {
        let (Some(d), Some(v)) = (
            c.device
                .strip_prefix("dev")
                .and_then(|d| d.parse::<usize>().ok()),
            c.values.get(&t0).and_then(|v| v.as_u64()),
        ) else {
            continue;
        };
        // The first delivery of a value is the one that counts.
        if let Some(t) = changes.lock().unwrap().remove(&(d, v as u16)) {
            out.lock()
                .unwrap()
                .push(now.duration_since(t).as_secs_f64() * 1000.0);
        }
    }
}

/// `--agent`, when given.
static AGENT_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn agent_bin() -> PathBuf {
    if let Some(bin) = AGENT_BIN.get() {
        return bin.clone();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/release/examples/loadtest -> target/release/zgsz-agent
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("zgsz-agent"))
        .expect("target directory");
    if !bin.exists() {
        eprintln!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

struct Spec<'a> {
    state_dir: &'a Path,
    mqtt_port: u16,
    devices: &'a [SocketAddr],
    tags: usize,
    interval: &'a str,
    coalesce: bool,
    /// `buffer.commit_window`; `None` keeps the agent's default.
    commit_window: Option<&'a str>,
}

fn config_toml(s: &Spec) -> String {
    let mut t = format!(
        r#"[agent]
gateway_id = "loadtest-gw"
state_dir = "{}"

[enterprise]
name = "负载测试企业"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"

# Two sinks, as a plant runs them: the enterprise's with the telemetry,
# the city's with the figures (idle here: no plant model).
[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
carries = ["metrics", "states", "status", "telemetry"]
topic_layout = "gateway"

[[sinks]]
name = "city"
host = "127.0.0.1"
port = {port}
tls = false
"#,
        s.state_dir.display(),
        port = s.mqtt_port
    );
    if let Some(w) = s.commit_window {
        t.push_str(&format!("\n[buffer]\ncommit_window = \"{w}\"\n"));
    }
    for (i, addr) in s.devices.iter().enumerate() {
        t.push_str(&format!(
            "\n[[devices]]\nid = \"dev{i}\"\naddress = \"{addr}\"\npoll_interval = \"{}\"\ncoalesce = {}\ntags = [\n",
            s.interval, s.coalesce
        ));
        for j in 0..s.tags {
            t.push_str(&format!(
                "  {{ name = \"t{j}\", area = \"holding_register\", address = {j} }},\n"
            ));
        }
        t.push_str("]\n");
    }
    t
}

/// The agent as a child process, stopped with SIGTERM on drop.
struct AgentProc {
    child: Child,
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProc {
    /// Writes the config (built by `toml` from the state dir) and starts
    /// the agent. `dir` is reused so a restart sees the same outbox.
    fn start(dir: tempfile::TempDir, toml: &dyn Fn(&Path) -> String) -> AgentProc {
        let state_dir = dir.path().join("state");
        let conf = dir.path().join("agent.toml");
        std::fs::write(&conf, toml(&state_dir)).expect("write config");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the agent");
        AgentProc {
            child,
            state_dir,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the clean stop; returns the temp dir.
    fn stop(mut self) -> tempfile::TempDir {
        self.terminate();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self._dir, dir)
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..600 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self._dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Counters read from the agent's outbox, beside the running agent.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    appended: u64,
    acked_readings: u64,
    pending_readings: u64,
    pending_rows: u64,
    evicted: u64,
}

fn counts(state_dir: &Path) -> Counts {
    let Ok(s) = buffer::read_stats(state_dir) else {
        return Counts::default();
    };
    let pending: i64 = buffer::open_read_only(state_dir)
        .and_then(|c| {
            Ok(c.query_row(
                "SELECT coalesce(sum(count), 0) FROM outbox WHERE kind = 0",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap_or(0);
    let pending = pending as u64;
    Counts {
        appended: s.appended_readings,
        acked_readings: s
            .appended_readings
            .saturating_sub(pending)
            .saturating_sub(s.evicted_readings),
        pending_readings: pending,
        pending_rows: s.rows,
        evicted: s.evicted_readings,
    }
}

async fn wait_for<F: FnMut() -> bool>(limit: Duration, mut cond: F) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after the name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Phases. Each returns named figures; the caller repeats and aggregates.

type Figures = Vec<(&'static str, f64)>;

async fn phase_ceiling(sims: &[SimDevice], seconds: f64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in sims {
        let (addr, stop, done) = (s.addr, stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut ctx = tcp::connect_slave(addr, Slave(1))
                .await
                .expect("connect to simulator");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(r)) = ctx.read_holding_registers(0, 125).await {
                    done.fetch_add(r.len() as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (r0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (r1, dt) = (done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    vec![("ceiling_register_values_per_s", (r1 - r0) as f64 / dt)]
}

/// Runs the agent on `sims` and measures committed/acked tag values/s
/// and requests per cycle over `window`, after a warm-up.
async fn measure_agent(
    a: &Args,
    sims: &[SimDevice],
    tags: usize,
    interval: &str,
    coalesce: bool,
    window: Duration,
) -> (Figures, Counts) {
    let port = zgsz_agent::broker::free_port().expect("free port");
    let _broker = Broker::start(&a.broker, port);
    let (seen, _, sub) = subscribe(port, None).await;
    let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &|sd| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &addrs,
            tags,
            interval,
            coalesce,
            commit_window: a.commit_window.as_deref(),
        })
    });
    let sd = agent.state_dir.clone();
    if !wait_for(Duration::from_secs(30), || counts(&sd).appended > 0).await {
        panic!("the agent committed nothing in 30 s:\n{}", agent.log_tail());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, q0, m0, t0) = (
        counts(&sd),
        reads(sims),
        seen.readings.load(Ordering::Relaxed),
        Instant::now(),
    );
    let cpu0 = cpu_ticks(agent.pid());
    tokio::time::sleep(window).await;
    let (c1, q1, m1, dt) = (
        counts(&sd),
        reads(sims),
        seen.readings.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let cpu1 = cpu_ticks(agent.pid());
    let rss = rss_kib(agent.pid());
    drop(agent);
    sub.abort();
    let committed = (c1.appended - c0.appended) as f64;
    let cycles = committed / tags as f64;
    let figs = vec![
        ("committed_per_s", committed / dt),
        (
            "acked_per_s",
            (c1.acked_readings - c0.acked_readings) as f64 / dt,
        ),
        ("received_per_s", (m1 - m0) as f64 / dt),
        ("requests_per_cycle", (q1 - q0) as f64 / cycles.max(1.0)),
        (
            "backlog_growth",
            c1.pending_readings as f64 - c0.pending_readings as f64,
        ),
        ("evicted", c1.evicted as f64),
        ("cpu_pct", (cpu1 - cpu0) as f64 / clk_tck() / dt * 100.0),
        ("rss_mib", rss as f64 / 1024.0),
    ];
    (figs, c1)
}

async fn phase_latency(a: &Args, seconds: f64) -> Figures {
    const DEVICES: usize = 10;
    const TAGS: usize = 1000;
    let sims = start_sims(DEVICES, TAGS).await;
    let port = zgsz_agent::broker::free_port().expect("free port");
    let _broker = Broker::start(&a.broker, port);
    let changes: Changes = Arc::new(Mutex::new(HashMap::new()));
    let (_, lat, sub) = subscribe(port, Some(changes.clone())).await;
    let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &|sd| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &addrs,
            tags: TAGS,
            interval: "1s",
            coalesce: true,
            commit_window: a.commit_window.as_deref(),
        })
    });
    let sd = agent.state_dir.clone();
    wait_for(Duration::from_secs(30), || counts(&sd).acked_readings > 0).await;
    // Each device bumps its counter at random moments, 0.3 to 1.7 poll
    // intervals apart, so changes fall anywhere in the poll cycle.
    let stop = Arc::new(AtomicBool::new(false));
    let mut changers = Vec::new();
    for (d, s) in sims.iter().enumerate() {
        let (bank, changes, stop) = (s.bank(1), changes.clone(), stop.clone());
        changers.push(tokio::spawn(async move {
            let mut n: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..1400))).await;
                n = n.wrapping_add(1).max(1);
                let mut c = changes.lock().unwrap();
                bank.lock().unwrap().holding[0] = n;
                c.insert((d, n), Instant::now());
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(agent);
    sub.abort();
    let mut v = lat.lock().unwrap().clone();
    v.sort_by(|x, y| x.total_cmp(y));
    let q = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    vec![
        ("latency_p50_ms", q(0.50)),
        ("latency_p99_ms", q(0.99)),
        ("latency_max_ms", q(1.0)),
        ("latency_samples", v.len() as f64),
    ]
}

fn phase_append(seconds: f64) -> Figures {
    let mut figs = Vec::new();
    for (sync, name) in [
        (Synchronous::Full, "append_full_per_s"),
        (Synchronous::Normal, "append_normal_per_s"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = BufferConfig {
            synchronous: sync,
            max_bytes: 4 << 30,
            max_rows: None,
            max_message_bytes: 64 * 1024,
            commit_window: Duration::ZERO,
        };
        let all = Route {
            name: "platform".into(),
            metrics: true,
            states: true,
            telemetry: Some(None),
        };
        let mut ob = Outbox::open(dir.path(), &cfg, &[all]).expect("open outbox");
        let dev: Arc<str> = "dev0".into();
        let names: Vec<Arc<str>> = (0..1000).map(|i| format!("t{i}").into()).collect();
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < seconds {
            let batch = Batch {
                readings: names
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Reading {
                        device: dev.clone(),
                        tag: t.clone(),
                        value: Some(Value::Int(i as i64)),
                        quality: Quality::Good,
                        ts: 1_764_300_000_000 + n as i64,
                    })
                    .collect(),
                publish: Publish::All,
                ..Default::default()
            };
            let rows = cycle::encode(std::slice::from_ref(&batch), 63 * 1024, |_| 1);
            ob.commit(&rows, &batch, &[], &[], 1).expect("commit");
            n += 1000;
        }
        figs.push((name, n as f64 / t0.elapsed().as_secs_f64()));
    }
    figs
}

async fn phase_drain(a: &Args) -> Figures {
    // Built at 100 devices x 1,000 tags at 1 Hz, a rate the outbox takes
    // in its stride, so that the backlog is close to `--backlog` when the
    // agent stops (not whatever an overload left queued in its channels).
    let sims = start_sims(100, 1000).await;
    let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let port = zgsz_agent::broker::free_port().expect("free port");
    let with_devices = |sd: &Path| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &addrs,
            tags: 1000,
            interval: "1s",
            coalesce: true,
            commit_window: a.commit_window.as_deref(),
        })
    };
    // Broker down: nothing listens on `port` yet.
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &with_devices);
    let sd = agent.state_dir.clone();
    let t_build = Instant::now();
    if !wait_for(Duration::from_secs(600), || {
        counts(&sd).appended >= a.backlog
    })
    .await
    {
        panic!("backlog not built:\n{}", agent.log_tail());
    }
    let build_s = t_build.elapsed().as_secs_f64();
    let dir = agent.stop();
    drop(sims);
    let before = counts(&sd);
    let last_seq = buffer::read_stats(&sd).map(|s| s.last_seq).unwrap_or(0);
    // The broker returns; the agent restarts on the same outbox, without
    // devices, so what is measured is the drain alone.
    let _broker = Broker::start(&a.broker, port);
    let (seen, _, sub) = subscribe(port, None).await;
    let t0 = Instant::now();
    let agent = AgentProc::start(dir, &|sd| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &[],
            tags: 0,
            interval: "1s",
            coalesce: true,
            commit_window: a.commit_window.as_deref(),
        })
    });
    let left = |sd: &Path| -> i64 {
        buffer::open_read_only(sd)
            .and_then(|c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM outbox WHERE seq <= ?1",
                    [last_seq],
                    |r| r.get(0),
                )?)
            })
            .unwrap_or(i64::MAX)
    };
    let mut connected_s = f64::NAN;
    let end = Instant::now() + Duration::from_secs(300);
    while left(&sd) > 0 && Instant::now() < end {
        if connected_s.is_nan() && seen.online.load(Ordering::Relaxed) {
            connected_s = t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = t0.elapsed().as_secs_f64();
    let remaining = left(&sd);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = seen.readings.load(Ordering::Relaxed);
    drop(agent);
    sub.abort();
    vec![
        ("backlog_readings", before.pending_readings as f64),
        ("backlog_rows", before.pending_rows as f64),
        ("backlog_build_s", build_s),
        ("drain_s", drain_s),
        ("drain_connect_s", connected_s),
        (
            "drain_readings_per_s",
            before.pending_readings as f64 / drain_s,
        ),
        ("drain_left_rows", remaining as f64),
        ("drain_received_readings", received as f64),
    ]
}

async fn phase_rss_start(a: &Args) -> Figures {
    // config/example.toml with its three TCP devices on simulators (units
    // 1, 3 and 255 behind each), its state in a temp dir, our broker.
    let example = include_str!("../config/example.toml");
    let mut sims = Vec::new();
    for _ in 0..3 {
        let mut units = HashMap::new();
        for u in [1u8, 3, 255] {
            units.insert(u, Arc::new(Mutex::new(Bank::new(512))));
        }
        sims.push(SimDevice::start(units).await.expect("simulator"));
    }
    let port = zgsz_agent::broker::free_port().expect("free port");
    let _broker = Broker::start(&a.broker, port);
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &|sd| {
        let mut t = example
            .replace("/var/lib/zgsz-agent", &sd.display().to_string())
            .replace("port = 1883", &format!("port = {port}"));
        for (i, s) in sims.iter().enumerate() {
            t = t.replace(&format!("127.0.0.1:{}", 5020 + i), &s.addr.to_string());
        }
        t
    });
    let sd = agent.state_dir.clone();
    wait_for(Duration::from_secs(15), || counts(&sd).acked_readings > 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(agent.pid());
    let acked = counts(&sd).acked_readings;
    drop(agent);
    vec![
        ("rss_start_mib", rss as f64 / 1024.0),
        ("rss_start_acked", acked as f64),
    ]
}

async fn phase_rss_load(a: &Args) -> Figures {
    let sims = start_sims(100, 100).await;
    let port = zgsz_agent::broker::free_port().expect("free port");
    let _broker = Broker::start(&a.broker, port);
    let (_, _, sub) = subscribe(port, None).await;
    let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &|sd| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &addrs,
            tags: 100,
            interval: "1s",
            coalesce: true,
            commit_window: a.commit_window.as_deref(),
        })
    });
    let t0 = Instant::now();
    let mut peak = 0u64;
    let mut at_min = BTreeMap::new();
    while t0.elapsed() < a.rss_duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = rss_kib(agent.pid());
        peak = peak.max(r);
        at_min.insert(t0.elapsed().as_secs() / 60, r);
    }
    let rss = rss_kib(agent.pid());
    let hwm = status_field(agent.pid(), "VmHWM:");
    let c = counts(&agent.state_dir);
    drop(agent);
    sub.abort();
    let mut figs = vec![
        ("rss_load_mib", rss as f64 / 1024.0),
        ("rss_load_hwm_mib", hwm.max(peak) as f64 / 1024.0),
        ("rss_load_minutes", a.rss_duration.as_secs_f64() / 60.0),
        ("rss_load_pending_readings", c.pending_readings as f64),
    ];
    if let Some((_, first)) = at_min.iter().next() {
        figs.push(("rss_load_first_minute_mib", *first as f64 / 1024.0));
    }
    figs
}

async fn phase_cpu(a: &Args) -> Figures {
    let sims = start_sims(50, 50).await;
    let port = zgsz_agent::broker::free_port().expect("free port");
    let _broker = Broker::start(&a.broker, port);
    let (_, _, sub) = subscribe(port, None).await;
    let addrs: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
    let agent = AgentProc::start(tempfile::tempdir().expect("tempdir"), &|sd| {
        config_toml(&Spec {
            state_dir: sd,
            mqtt_port: port,
            devices: &addrs,
            tags: 50,
            interval: "1s",
            coalesce: true,
            commit_window: a.commit_window.as_deref(),
        })
    });
    let sd = agent.state_dir.clone();
    wait_for(Duration::from_secs(30), || counts(&sd).acked_readings > 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, t0) = (cpu_ticks(agent.pid()), Instant::now());
    tokio::time::sleep(a.cpu_duration).await;
    let (c1, dt) = (cpu_ticks(agent.pid()), t0.elapsed().as_secs_f64());
    let acked = counts(&sd);
    drop(agent);
    sub.abort();
    vec![
        ("cpu_50x50_pct", (c1 - c0) as f64 / clk_tck() / dt * 100.0),
        ("cpu_50x50_evicted", acked.evicted as f64),
    ]
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

// ---------------------------------------------------------------------------
// Aggregation and the report.

#[derive(Default)]
struct Results {
    values: BTreeMap<&'static str, Vec<f64>>,
    loads: Vec<(String, String)>,
}

impl Results {
    fn add(&mut self, figs: Figures) {
        for (k, v) in figs {
            self.values.entry(k).or_default().push(v);
        }
    }
    fn note_load(&mut self, phase: &str) {
        self.loads.push((phase.to_string(), loadavg()));
    }
    /// (median, min, max, n)
    fn get(&self, k: &str) -> Option<(f64, f64, f64, usize)> {
        let mut v = self.values.get(k)?.clone();
        v.retain(|x| !x.is_nan());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((med, v[0], v[n - 1], n))
    }
}

fn num(x: f64) -> String {
    let a = x.abs();
    let s = if a >= 100.0 {
        format!("{:.0}", x)
    } else if a >= 10.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    };
    // Thousands separators on the integer part.
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{out}")
    } else {
        format!("{sign}{out}.{frac}")
    }
}

/// Bytes in a MiB: RSS is reported in MiB, the goals are in MB.
const MIB: f64 = 1024.0 * 1024.0;

#[allow(
    clippy::too_many_lines,
    reason = "writes the results table row by row, in the order it is read"
)]
fn table(a: &Args, r: &Results, broker: &str) -> String {
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut row = |what: String, key: &str, goal: &str, ok: Option<bool>| {
        if let Some((med, min, max, n)) = r.get(key) {
            let spread = if n > 1 {
                format!("{} / {} / {} (n={n})", num(med), num(min), num(max))
            } else {
                format!("{} (n=1)", num(med))
            };
            let verdict = match ok {
                Some(true) => format!("{goal}: met"),
                Some(false) => format!("{goal}: **missed**"),
                None => goal.to_string(),
            };
            rows.push([what, spread, verdict]);
        }
    };
    let med = |k: &str| r.get(k).map(|v| v.0);
    let offered = a.devices as f64 * a.tags as f64 / a.interval.as_secs_f64();
    let ival = fmt_duration(a.interval);
    row(
        "bare tokio-modbus ceiling, register values/s".into(),
        "ceiling_register_values_per_s",
        "",
        None,
    );
    row(
        format!(
            "throughput {}x{} every {ival} (offered {}/s): committed tag values/s",
            a.devices,
            a.tags,
            num(offered)
        ),
        "tp_committed_per_s",
        "",
        None,
    );
    row(
        "throughput: acked tag values/s".into(),
        "tp_acked_per_s",
        if offered >= 500_000.0 {
            "goal ≥ 500,000, all acked"
        } else {
            "goal ≥ 500,000 (offered less: use a shorter --interval)"
        },
        med("tp_acked_per_s")
            .filter(|_| offered >= 500_000.0)
            .map(|v| v >= 500_000.0),
    );
    row(
        "throughput: received by subscriber/s".into(),
        "tp_received_per_s",
        "",
        None,
    );
    row(
        "throughput: evicted readings".into(),
        "tp_evicted",
        "goal 0",
        med("tp_evicted").map(|v| v == 0.0),
    );
    row(
        "throughput: agent CPU % of one core".into(),
        "tp_cpu_pct",
        "",
        None,
    );
    row(
        "flat out (10 ms interval): committed tag values/s".into(),
        "sat_committed_per_s",
        "",
        None,
    );
    row(
        "flat out: acked tag values/s".into(),
        "sat_acked_per_s",
        "overload: no goal",
        None,
    );
    row(
        "flat out: outbox backlog growth over the window, readings".into(),
        "sat_backlog_growth",
        "",
        None,
    );
    row(
        "flat out: evicted readings".into(),
        "sat_evicted",
        "overload: no goal",
        None,
    );
    row(
        "flat out ÷ ceiling, register values, same run, %".into(),
        "sat_vs_ceiling_pct",
        "goal ≥ 80",
        med("sat_vs_ceiling_pct").map(|v| v >= 80.0),
    );
    let min_req = a.tags.div_ceil(125) as f64;
    row(
        format!(
            "requests per poll cycle, coalescing on ({} u16 tags; minimum {})",
            a.tags,
            num(min_req)
        ),
        "co_on_requests_per_cycle",
        "",
        None,
    );
    row(
        format!(
            "requests per poll cycle, coalescing off (one per tag: {})",
            a.tags
        ),
        "co_off_requests_per_cycle",
        "",
        None,
    );
    row(
        "coalescing on: committed tag values/s (10 devices)".into(),
        "co_on_committed_per_s",
        "",
        None,
    );
    row(
        "coalescing off: committed tag values/s (10 devices)".into(),
        "co_off_committed_per_s",
        "",
        None,
    );
    row(
        "latency change → subscriber at 10,000 tags/s, p50 ms".into(),
        "latency_p50_ms",
        "",
        None,
    );
    row(
        "latency p99 ms (poll interval 1 s)".into(),
        "latency_p99_ms",
        "goal ≤ 1,100",
        med("latency_p99_ms").map(|v| v <= 1100.0),
    );
    row("latency max ms".into(), "latency_max_ms", "", None);
    row(
        "latency samples per run".into(),
        "latency_samples",
        "",
        None,
    );
    row(
        "outbox append, synchronous FULL, readings/s (1,000 per commit)".into(),
        "append_full_per_s",
        "",
        None,
    );
    row(
        "outbox append, synchronous NORMAL, readings/s".into(),
        "append_normal_per_s",
        "",
        None,
    );
    row(
        "drain: backlog readings".into(),
        "backlog_readings",
        "",
        None,
    );
    row(
        "drain: backlog rows (messages)".into(),
        "backlog_rows",
        "",
        None,
    );
    row(
        format!("drain: time to ack the whole backlog ({broker}), s"),
        "drain_s",
        "goal ≤ 10",
        med("drain_s").map(|v| v <= 10.0),
    );
    row(
        "drain: of which until connected, s".into(),
        "drain_connect_s",
        "",
        None,
    );
    row("drain: readings/s".into(), "drain_readings_per_s", "", None);
    row(
        "drain: backlog rows not acked at the end".into(),
        "drain_left_rows",
        "goal 0",
        med("drain_left_rows").map(|v| v == 0.0),
    );
    row(
        "RSS 5 s after start, config/example.toml, MiB".into(),
        "rss_start_mib",
        "goal ≤ 10 MB (9.54 MiB)",
        med("rss_start_mib").map(|v| v * MIB <= 10e6),
    );
    let minutes = med("rss_load_minutes").unwrap_or(0.0);
    row(
        format!(
            "RSS at 100 × 100 tags at 1 Hz after {} min, MiB",
            num(minutes)
        ),
        "rss_load_mib",
        "goal ≤ 32 MB (30.5 MiB)",
        med("rss_load_mib").map(|v| v * MIB <= 32e6),
    );
    row(
        "RSS 100 × 100: in the first minute, MiB".into(),
        "rss_load_first_minute_mib",
        "",
        None,
    );
    row(
        "RSS 100 × 100: peak (VmHWM), MiB".into(),
        "rss_load_hwm_mib",
        "",
        None,
    );
    row(
        format!(
            "CPU % of one core, 50 × 50 tags at 1 Hz ({} s)",
            a.cpu_duration.as_secs()
        ),
        "cpu_50x50_pct",
        "goal ≤ 1",
        med("cpu_50x50_pct").map(|v| v <= 1.0),
    );
    let mut out = String::from("| measure | median / min / max | goal |\n|---|---:|---|\n");
    for [w, v, g] in rows {
        out.push_str(&format!("| {w} | {v} | {g} |\n"));
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "nproc = {nproc}, CPU \"{cpu}\", {:.1} GiB RAM, Linux {}, {rustc}",
        mem as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

#[tokio::main]
#[allow(
    clippy::too_many_lines,
    reason = "the load test's steps in the order they run: start, load, measure, report"
)]
async fn main() {
    let a = parse_args();
    if let Some(bin) = &a.agent {
        let _ = AGENT_BIN.set(bin.clone());
    }
    let on = |p: &str| a.phases.iter().any(|x| x == p);
    let broker = Broker::name(&a.broker);
    let started = Instant::now();
    let load_before = loadavg();
    eprintln!("machine: {}", machine());
    eprintln!("broker: {broker}; load average at start: {load_before}");
    let mut r = Results::default();
    let ival = fmt_duration(a.interval);

    for run in 1..=a.runs {
        eprintln!("--- run {run}/{}", a.runs);
        if on("ceiling") || on("throughput") || on("saturation") {
            let sims = start_sims(a.devices, a.tags).await;
            if on("ceiling") {
                r.note_load("ceiling");
                let f = phase_ceiling(&sims, 10.0).await;
                eprintln!("ceiling: {f:?}");
                r.add(f);
            }
            if on("throughput") {
                r.note_load("throughput");
                let (f, _) = measure_agent(&a, &sims, a.tags, &ival, true, a.duration).await;
                eprintln!("throughput: {f:?}");
                r.add(prefixed("tp_", f));
            }
            if on("saturation") {
                r.note_load("saturation");
                let (f, _) = measure_agent(&a, &sims, a.tags, "10ms", true, a.duration).await;
                eprintln!("saturation: {f:?}");
                r.add(prefixed("sat_", f));
            }
        }
        if on("coalescing") && run == 1 {
            let sims = start_sims(10, a.tags).await;
            for (coalesce, p) in [(true, "co_on_"), (false, "co_off_")] {
                r.note_load(p.trim_end_matches('_'));
                let (f, _) =
                    measure_agent(&a, &sims, a.tags, "1s", coalesce, Duration::from_secs(10)).await;
                eprintln!("coalescing {coalesce}: {f:?}");
                r.add(prefixed(p, f));
            }
        }
        if on("latency") {
            r.note_load("latency");
            let f = phase_latency(&a, a.latency_duration.as_secs_f64()).await;
            eprintln!("latency: {f:?}");
            r.add(f);
        }
        if on("append") {
            r.note_load("append");
            let f = tokio::task::spawn_blocking(|| phase_append(5.0))
                .await
                .expect("append phase");
            eprintln!("append: {f:?}");
            r.add(f);
        }
        if on("drain") {
            r.note_load("drain");
            let f = phase_drain(&a).await;
            eprintln!("drain: {f:?}");
            r.add(f);
        }
        if on("rss_start") {
            r.note_load("rss_start");
            let f = phase_rss_start(&a).await;
            eprintln!("rss_start: {f:?}");
            r.add(f);
        }
        if on("cpu") {
            r.note_load("cpu");
            let f = phase_cpu(&a).await;
            eprintln!("cpu: {f:?}");
            r.add(f);
        }
    }
    if on("rss_load") {
        r.note_load("rss_load");
        let f = phase_rss_load(&a).await;
        eprintln!("rss_load: {f:?}");
        r.add(f);
    }

    if let (Some(c), Some(s)) = (
        r.values.get("ceiling_register_values_per_s").cloned(),
        r.values.get("sat_committed_per_s").cloned(),
    ) {
        let ratios = c.iter().zip(&s).map(|(c, s)| s / c * 100.0).collect();
        r.values.insert("sat_vs_ceiling_pct", ratios);
    }
    let table = table(&a, &r, broker);
    println!("{table}");
    let loads = r
        .loads
        .iter()
        .map(|(p, l)| format!("{p} {l}"))
        .collect::<Vec<_>>()
        .join("; ");
    println!("load average (1/5/15 min) before each phase: {loads}");
    if a.record {
        let command = format!(
            "cargo run --release --example loadtest -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        let now = zgsz_agent::clock::Clock::now_ms(&zgsz_agent::clock::SystemClock);
        let date = time::OffsetDateTime::from_unix_timestamp(now / 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let section = format!(
            "\n## End-to-end load test, {date}\n\n\
             Command ({:.0} s in all):\n\n```sh\n{command}\n```\n\n\
             Machine: {}. Broker: {broker}. Load average (1/5/15 min) at start: {load_before}; \
             before each phase: {loads}. Other builds were running on this machine at the same time.\n\n{table}",
            started.elapsed().as_secs_f64(),
            machine(),
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&section);
        std::fs::write(&path, text).expect("append to BENCHMARKS.md");
        eprintln!("appended to BENCHMARKS.md");
    }
}

fn prefixed(p: &'static str, f: Figures) -> Figures {
    f.into_iter()
        .map(|(k, v)| {
            let key: &'static str = Box::leak(format!("{p}{k}").into_boxed_str());
            (key, v)
        })
        .collect()
}
