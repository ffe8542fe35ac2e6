//! Shared test fixtures: a platform-side subscriber, a controllable TCP
//! proxy, mosquitto, and config builders. Everything binds 127.0.0.1.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use zgsz_agent::config::{self, Config};

#[cfg(feature = "opcua-sim")]
pub mod opcua;

pub const USCC: &str = "91350100M000100Y43";

/// A config with the given `[[devices]]` TOML appended, broker at `port`.
pub fn config(
    state_dir: &Path,
    mqtt_port: u16,
    devices_toml: &str,
    extra_mqtt: &str,
    buffer_toml: &str,
) -> Config {
    let text = format!(
        r#"
[agent]
gateway_id = "gw-test"
state_dir = "{state}"

[enterprise]
name = "测试企业"
uscc = "{USCC}"
region_code = "321003"
industry = "discrete"

[buffer]
{buffer_toml}

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
tls = false
keepalive = "5s"
carries = ["metrics", "states", "status", "telemetry"]
{extra_mqtt}

{devices_toml}
"#,
        state = state_dir.display()
    );
    match config::load_str(Path::new("test.toml"), &text) {
        Ok((c, _)) => c,
        Err(e) => panic!("test config invalid: {e}\n{text}"),
    }
}

/// The readings of a `zgsz.telemetry/2` or `/3` message, one object each
/// with `device`, `tag`, `value`, `quality`, `reason` (bad only) and `ts`,
/// as a consumer would flatten its cycles (`/3`: keys looked up in `tags`).
pub fn readings(m: &Json) -> Vec<Json> {
    let tags = m["tags"].as_array();
    if m["schema"] == "zgsz.telemetry/3" {
        assert!(tags.is_some(), "a /3 message without tags: {m}");
    }
    let name = |key: &str| -> String {
        match tags {
            Some(t) => {
                let i: usize = key
                    .parse()
                    .unwrap_or_else(|_| panic!("key {key:?} is no index"));
                t.get(i)
                    .and_then(|n| n.as_str())
                    .unwrap_or_else(|| panic!("index {i} outside tags {t:?}"))
                    .to_string()
            }
            None => key.to_string(),
        }
    };
    let mut out = Vec::new();
    for c in m["cycles"].as_array().into_iter().flatten() {
        let ts_of = |key: &str| {
            c["ts_of"]
                .get(key)
                .cloned()
                .unwrap_or_else(|| c["ts"].clone())
        };
        for (key, v) in c["values"].as_object().into_iter().flatten() {
            out.push(serde_json::json!({
                "device": c["device"], "tag": name(key), "value": v, "quality": "good", "ts": ts_of(key),
            }));
        }
        for (key, why) in c["bad"].as_object().into_iter().flatten() {
            out.push(serde_json::json!({
                "device": c["device"], "tag": name(key), "value": null, "quality": "bad", "reason": why, "ts": ts_of(key),
            }));
        }
    }
    out
}

/// Starts the agent binary on `config` (quiet), for SIGKILL tests.
pub fn spawn_agent(config: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the agent")
}

/// Polls `cond` until it holds or `limit` passes. This waits for a state,
/// not for time: the interval only bounds how often we look.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (topic, payload, retain flag).
pub type RawMessage = (String, Vec<u8>, bool);

/// The platform: subscribes to everything under a prefix and keeps every
/// message it receives, duplicates included.
#[derive(Clone)]
pub struct Platform {
    pub messages: Arc<Mutex<Vec<(String, Json)>>>,
    /// (topic, payload, retain flag) as received.
    pub raw: Arc<Mutex<Vec<RawMessage>>>,
    count: watch::Receiver<usize>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl Platform {
    /// Connects to `port` and subscribes to every topic (`#`: the demo's
    /// sinks use two prefixes); returns once SUBACK arrived.
    pub async fn subscribe(port: u16) -> Platform {
        let mut opts =
            MqttOptions::new(format!("platform-{}", fastrand::u32(..)), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client
            .subscribe("#", QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let (subacked_tx, mut subacked) = watch::channel(false);
        let (m2, r2) = (messages.clone(), raw.clone());
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subacked_tx.send(true);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        // Our agent publishes JSON only; anything else is
                        // not ours (e.g. another test's broker), so leave it.
                        let Ok(json) = serde_json::from_slice::<Json>(&p.payload) else {
                            eprintln!("ignoring a non-JSON message on {}", p.topic);
                            continue;
                        };
                        r2.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec(), p.retain));
                        let mut m = m2.lock().unwrap();
                        m.push((p.topic.clone(), json));
                        let _ = count_tx.send(m.len());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subacked.wait_for(|&s| s))
            .await
            .expect("SUBACK within 10s")
            .expect("subscriber alive");
        Platform {
            messages,
            raw,
            count,
            _task: Arc::new(task),
        }
    }

    /// Messages on topics ending with `/kind`.
    pub fn of_kind(&self, kind: &str) -> Vec<Json> {
        let suffix = format!("/{kind}");
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with(&suffix))
            .map(|(_, j)| j.clone())
            .collect()
    }

    /// Telemetry de-duplicated by msg_id, keyed by seq.
    pub fn telemetry_by_seq(&self) -> BTreeMap<i64, Json> {
        let mut out: BTreeMap<i64, Json> = BTreeMap::new();
        let mut ids: HashMap<String, i64> = HashMap::new();
        for m in self.of_kind("telemetry") {
            let id = m["msg_id"].as_str().unwrap().to_string();
            let seq = m["seq"].as_i64().unwrap();
            if let Some(prev) = ids.insert(id, seq) {
                assert_eq!(prev, seq, "one msg_id, two seqs");
                assert_eq!(
                    out[&seq]["cycles"], m["cycles"],
                    "a resend changed the readings of seq {seq}"
                );
            }
            out.insert(seq, m);
        }
        out
    }

    /// Waits until `cond` holds over the messages received so far.
    pub async fn wait_for<F: FnMut(&Platform) -> bool>(
        &self,
        limit: Duration,
        what: &str,
        mut cond: F,
    ) {
        let mut count = self.count.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "timed out after {limit:?} waiting for {what}; got {} messages",
                    self.messages.lock().unwrap().len()
                ),
            }
        }
    }
}

/// Asserts seqs form one run with no gaps and returns (first, last).
pub fn assert_contiguous(by_seq: &BTreeMap<i64, Json>) -> (i64, i64) {
    let first = *by_seq.keys().next().expect("some telemetry");
    let last = *by_seq.keys().last().unwrap();
    let missing: Vec<i64> = (first..=last).filter(|s| !by_seq.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "seqs missing at the platform: {missing:?}"
    );
    (first, last)
}

/// What a TCP proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Accept, then close at once (a broker that is down, seen through a
    /// load balancer).
    Refuse,
    /// Keep every connection open but pass nothing in either direction
    /// (a cut cable: no FIN, no RST).
    Blackhole,
}

/// A TCP proxy the test controls, between the agent and a server.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode_tx, mode_rx) = watch::channel(mode);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let mode = mode_rx.clone();
                tokio::spawn(async move {
                    let current = *mode.borrow();
                    if current == Mode::Refuse {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pipe(ri, wo, mode.clone()), pipe(ro, wi, mode));
                });
            }
        });
        Proxy {
            port,
            mode: mode_tx,
            _task: task,
        }
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = from.read(&mut buf) => {
                let n = match n {
                    Ok(n) if n > 0 => n,
                    _ => {
                        // A cut cable does not pass on a close either: while
                        // blackholed, keep our side open until the mode changes.
                        while *mode.borrow() == Mode::Blackhole {
                            if mode.changed().await.is_err() { return; }
                        }
                        return;
                    }
                };
                let current = *mode.borrow();
                match current {
                    Mode::Forward => if to.write_all(&buf[..n]).await.is_err() { return },
                    Mode::Blackhole => {}
                    Mode::Refuse => return,
                }
            }
            changed = mode.changed() => {
                let current = *mode.borrow();
                if changed.is_err() || current == Mode::Refuse { return; }
            }
        }
    }
}

/// A mosquitto broker on a free loopback port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// `None` when mosquitto is not installed.
    pub fn start(extra_conf: &str) -> Option<Mosquitto> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        let bin = bin?;
        // A free port can be taken by another process before mosquitto
        // binds it; try a few.
        for _ in 0..5 {
            let port = zgsz_agent::broker::free_port().unwrap();
            if let Some(m) = Self::try_start_on(bin, port, extra_conf) {
                return Some(m);
            }
        }
        panic!("mosquitto could not start on any of 5 free ports");
    }

    /// For tests marked `#[ignore = "needs mosquitto …"]`: they run only
    /// when asked for, so a missing mosquitto is a failure, never a pass.
    pub fn require(extra_conf: &str) -> Mosquitto {
        match Self::start(extra_conf) {
            Some(m) => m,
            None => panic!(
                "mosquitto is not installed (apt-get install mosquitto); .ci/run installs it"
            ),
        }
    }

    fn start_on(bin: &str, port: u16, extra_conf: &str) -> Mosquitto {
        match Self::try_start_on(bin, port, extra_conf) {
            Some(m) => m,
            None => panic!("mosquitto could not listen on 127.0.0.1:{port}"),
        }
    }

    /// Starts mosquitto and waits for its own log line saying it listens,
    /// so that a connect cannot reach some other process that happens to
    /// hold the port. `None` if it exited instead (port taken).
    fn try_start_on(bin: &str, port: u16, extra_conf: &str) -> Option<Mosquitto> {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "log_dest stderr\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 0\n{extra_conf}\n"
            ),
        )
        .unwrap();
        #[allow(clippy::zombie_processes)] // killed and waited for in Drop, or here
        let mut child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting mosquitto");
        // Read its log (stderr: unbuffered, unlike a piped stdout) on a thread (which keeps draining it afterwards, so
        // mosquitto never blocks on a full pipe) and wait for the line.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let wanted = format!("listen socket on port {port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(&wanted) => {
                    return Some(Mosquitto {
                        port,
                        child,
                        _dir: dir,
                    })
                }
                Ok(_) => {}
                // Log closed (mosquitto exited, e.g. port taken) or no line in time.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Kills the broker and starts a fresh one on the same port.
    pub fn restart(&mut self, extra_conf: &str) {
        let bin = self.bin();
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start_on(&bin, self.port, extra_conf);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn bin(&self) -> String {
        [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap()
        .to_string()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Validates `instance` against the JSON Schema at `docs/schema/<name>.json`.
pub fn assert_schema(name: &str, instance: &Json) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schema")
        .join(format!("{name}.json"));
    let schema: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} payload does not match {}:\n{}\n{instance:#}",
        path.display(),
        errors.join("\n")
    );
}

/// Logs to the test's output when RUST_LOG is set.
pub fn logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// A pty pair from socat (a serial cable in software), for tests marked
/// `#[ignore = "needs socat …"]`: they run only when asked for, so a
/// missing socat is a failure, never a pass.
pub fn require_pty() -> zgsz_agent::sim::rtu::SocatPty {
    match zgsz_agent::sim::rtu::SocatPty::start() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("socat is not installed (apt-get install socat); .ci/run installs it")
        }
        Err(e) => panic!("socat failed to make a pty pair: {e}"),
    }
}

/// Waits until the outbox figures satisfy `cond` and returns them.
pub async fn wait_for_stats<F: FnMut(&zgsz_agent::buffer::Stats) -> bool>(
    buffer: &zgsz_agent::buffer::BufferClient,
    limit: Duration,
    what: &str,
    mut cond: F,
) -> zgsz_agent::buffer::Stats {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = buffer.stats().await.expect("outbox running");
        if cond(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}; outbox: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sets every device's poll interval, and the equipment's (which the plant
/// model uses to date an equipment offline), to `every`.
pub fn poll_every(cfg: &mut Config, every: Duration) {
    for d in &mut cfg.devices {
        Arc::make_mut(d).poll_interval = every;
    }
    for e in &mut Arc::make_mut(&mut cfg.plant).equipment {
        e.poll_interval = every;
    }
}

/// The demo plant on a clock 7,200 times faster than real time (a day in
/// 12 s), its Modbus machines polled every 720 clock seconds (100 ms),
/// with the embedded broker and a platform subscriber. The config is the
/// caller's to adjust before the agent starts.
pub struct CompressedDemo {
    pub clock: Arc<dyn zgsz_agent::clock::Clock>,
    pub platform: Platform,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
    pub floor: zgsz_agent::sim::ShopFloor,
}

impl CompressedDemo {
    pub async fn start() -> CompressedDemo {
        let clock: Arc<dyn zgsz_agent::clock::Clock> =
            Arc::new(zgsz_agent::clock::ScaledClock::new(7200.0));
        let port = zgsz_agent::broker::free_port().unwrap();
        zgsz_agent::broker::start_embedded(port).unwrap();
        let platform = Platform::subscribe(port).await;
        let dir = tempfile::tempdir().unwrap();
        let (mut cfg, _) =
            config::load_str(Path::new("config/demo.toml"), zgsz_agent::demo::DEMO_CONFIG).unwrap();
        let floor =
            zgsz_agent::sim::ShopFloor::start_plant_day(clock.clone(), cfg.metrics.utc_offset)
                .await
                .unwrap();
        for (id, addr) in floor.addresses() {
            cfg.set_device_address(&id, &addr.to_string());
        }
        poll_every(&mut cfg, Duration::from_secs(720));
        cfg.metrics.snapshot_interval = Duration::from_secs(3600);
        cfg.set_broker("127.0.0.1", port);
        cfg.set_state_dir(dir.path());
        CompressedDemo {
            clock,
            platform,
            dir,
            cfg,
            floor,
        }
    }
}
