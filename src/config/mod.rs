//! Configuration: serde types that mirror the TOML file, and the typed,
//! validated values the rest of the agent uses.
//!
//! Loading happens in two steps. Serde (with `deny_unknown_fields`) rejects
//! syntax errors, unknown keys and wrong value types, naming the key path.
//! Then [`validate`] checks everything else and collects *all* problems, so
//! an engineer fixes a file in one pass instead of one error per run. `check`
//! and `run` share this code, so `check` passing means `run` will start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// The OPC UA keys live with the OPC UA source; this path is kept for callers.
pub use crate::source::opcua::config as opcua;
pub mod sink;
pub use sink::{Carries, ClientAuth, MqttConfig, SinkConfig, TlsSettings, TopicLayout};
mod device;
mod sections;
pub use device::{DeviceConfig, DeviceProtocol, Protocol};
pub(crate) use device::{RawAddress, RawDevice, RawTag};

// ---------------------------------------------------------------------------
// The file, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `[agent]`: who this gateway is and where it keeps its state; required.
    agent: RawAgent,
    /// `[enterprise]`: whose figures these are, which every message carries; required.
    enterprise: RawEnterprise,
    /// `[[devices]]`: the machines and PLCs to read; default none (the agent then only publishes
    /// status).
    #[serde(default)]
    devices: Vec<RawDevice>,
    /// `[buffer]`: the outbox's durability and size; defaults as in [`RawBuffer`].
    #[serde(default)]
    buffer: RawBuffer,
    /// `[mqtt]`: the city platform's broker, the short form of a sink named `platform`; default
    /// none.
    mqtt: Option<sink::RawSink>,
    /// `[[sinks]]`: further northbound destinations (or all of them); default none.
    #[serde(default)]
    sinks: Vec<sink::RawSink>,
    /// `[[processes]]`: the production processes the CNC rate is counted over; default none.
    #[serde(default)]
    processes: Vec<crate::plant::RawProcess>,
    /// `[[equipment]]`: what is measured, each with its process, kind and rules; default none.
    #[serde(default)]
    equipment: Vec<crate::plant::RawEquipment>,
    /// `[metrics]`: how windows align and how often the open day is published; defaults as in
    /// [`RawMetrics`].
    #[serde(default)]
    metrics: RawMetrics,
    /// `[http]`: the local Prometheus and health endpoint; default none (no listener).
    #[serde(default)]
    http: Option<RawHttp>,
    /// `[telemetry]`: which readings of a cycle are published, every cycle or by exception; default
    /// every cycle.
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
}

/// `[http]`: the optional local Prometheus and health endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Where `/metrics` and `/healthz` listen (`host:port`); required in `[http]`.
    listen: String,
    /// A non-loopback `listen` exposes plant figures on the network, so it must be asked for;
    /// default false.
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// Hours and days are the plant's, not UTC's: windows align to this offset; default "+08:00".
    #[serde(default = "default_utc_offset")]
    utc_offset: String,
    /// How often the open day's figures so far are published, for a live view; default "15m".
    #[serde(default = "default_snapshot_interval")]
    snapshot_interval: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            utc_offset: default_utc_offset(),
            snapshot_interval: default_snapshot_interval(),
        }
    }
}

fn default_utc_offset() -> String {
    "+08:00".into()
}
fn default_snapshot_interval() -> String {
    "15m".into()
}

/// Declared (self-reported) enterprise indicators; published marked as
/// declared, never mixed with measured figures.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Declared {
    /// 经营管理数字化: management systems in use (ERP, MES, SCM, CRM, PLM, ...), as the enterprise
    /// declares them; default none.
    #[serde(default)]
    pub management: Vec<String>,
    /// 数字化研发设计工具: design tools in use (CAD, CAE, CAPP, PLM, ...), as the enterprise declares them;
    /// default none.
    #[serde(default)]
    pub design_tools: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    /// Names this gateway in topics, messages and reports; required, 1 to 64 letters, digits, '-'
    /// or '_'.
    gateway_id: String,
    /// Where the outbox database, the gateway key and the OPC UA PKI live; required (relative to
    /// the config file).
    state_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnterprise {
    /// The registered enterprise name, for people reading the platform and the report; required.
    name: String,
    /// The 统一社会信用代码 that identifies the enterprise in topics and messages; required.
    uscc: String,
    /// The six-digit Yangzhou region code the city sorts enterprises by; required.
    region_code: String,
    /// Discrete or process manufacturing: decides how the CNC rate is counted; required.
    industry: Industry,
    /// The 产业链 (industrial chain) the city groups enterprises by; default "".
    #[serde(default)]
    chain: String,
    /// Self-reported indicators, published apart from the measured ones; default none.
    #[serde(default)]
    declared: Declared,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    /// Whether a commit survives power loss (`full`, fsync each commit) or only a crash (`normal`);
    /// default full.
    #[serde(default)]
    synchronous: Synchronous,
    /// Caps the outbox on the gateway's flash while the broker is away; oldest telemetry is evicted
    /// first; default "256MiB".
    #[serde(default = "default_max_bytes")]
    max_bytes: ByteSize,
    /// Caps the outbox's rows as well, for small flash or slow SQLite; default no row limit.
    max_rows: Option<u64>,
    /// How long the outbox gathers further writes after the first before committing them together,
    /// so one fsync serves many cycles; "0ms" commits each batch at once; default "100ms".
    #[serde(default = "default_commit_window")]
    commit_window: String,
}

impl Default for RawBuffer {
    fn default() -> Self {
        RawBuffer {
            synchronous: Synchronous::default(),
            max_bytes: default_max_bytes(),
            max_rows: None,
            commit_window: default_commit_window(),
        }
    }
}

fn default_max_bytes() -> ByteSize {
    ByteSize::Text("256MiB".into())
}
fn default_commit_window() -> String {
    "100ms".into()
}

/// A size written as a number of bytes or as text such as `"256MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ByteSize {
    Number(u64),
    Text(String),
}

impl ByteSize {
    pub(crate) fn bytes(&self) -> Option<u64> {
        match self {
            ByteSize::Number(n) => Some(*n),
            ByteSize::Text(s) => parse_size(s),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The longest `buffer.commit_window` accepted.
pub const MAX_COMMIT_WINDOW: Duration = Duration::from_secs(1);

/// Parses `"500ms"`, `"1s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// The typed values the agent runs on.

/// Manufacturing type; it decides how the CNC rate is defined.
pub use zgsz_contract::Industry;

/// SQLite durability level of the outbox; see docs/delivery.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync at every commit: a committed reading survives power loss.
    #[default]
    Full,
    /// fsync at WAL checkpoints only: the last commits may be lost on power
    /// loss (not on a process crash), for less flash wear and more speed.
    Normal,
}

pub use crate::source::modbus::config::{ModbusConfig, Parity, SerialConfig, TagConfig};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages.
    pub path: PathBuf,
    /// `[agent]`: the gateway's id and state directory.
    pub agent: AgentConfig,
    /// `[enterprise]`: the identity every message and report carries.
    pub enterprise: Enterprise,
    /// `[[devices]]`, in file order: what the sources poll.
    pub devices: Vec<Arc<DeviceConfig>>,
    /// `[buffer]`: the outbox's durability, caps and commit window.
    pub buffer: BufferConfig,
    /// The northbound MQTT destinations, `[mqtt]` first.
    pub sinks: Vec<Arc<SinkConfig>>,
    /// Processes and equipment with their rules, built and type-checked against the devices' tags.
    pub plant: Arc<crate::plant::PlantModel>,
    /// `[metrics]`: window alignment and snapshot cadence.
    pub metrics: MetricsConfig,
    /// The local `/metrics` and `/healthz` endpoint; `None`: none (the default).
    pub http: Option<HttpConfig>,
    /// Report every cycle or by exception, per device and tag; default every cycle.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// The local `/metrics` and `/healthz` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where the endpoint listens; loopback unless `allow_remote` was set.
    pub listen: std::net::SocketAddr,
}

/// Window alignment and snapshot cadence of the indicators.
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    /// Hourly and daily windows start at whole hours / midnight in this offset; default +08:00.
    pub utc_offset: time::UtcOffset,
    /// How often the current partial day is published; default 15 min.
    pub snapshot_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Names this gateway in topics, messages and reports.
    pub gateway_id: String,
    /// Where the outbox database, the gateway key and the OPC UA PKI live, resolved against the
    /// config file.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Enterprise {
    /// The registered enterprise name, for people.
    pub name: String,
    /// The 统一社会信用代码, checked: it identifies the enterprise in topics and messages.
    pub uscc: String,
    /// The six-digit Yangzhou region code the city sorts by.
    pub region_code: String,
    /// Decides how the CNC rate is counted (equipment or processes).
    pub industry: Industry,
    /// The 产业链 the city groups enterprises by; default "".
    pub chain: String,
    /// Self-reported indicators, published marked as declared; default none.
    pub declared: Declared,
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// Whether a commit survives power loss or only a process crash; default full.
    pub synchronous: Synchronous,
    /// The outbox's cap on flash; beyond it the oldest telemetry is evicted (counted); default 256
    /// MiB.
    pub max_bytes: u64,
    /// A row cap besides the byte cap; default `None`, no row limit.
    pub max_rows: Option<u64>,
    /// Largest telemetry message (the smallest sink's `max_message_bytes`); the buffer cuts rows to
    /// this size. Default 64 KiB.
    pub max_message_bytes: usize,
    /// With `synchronous = FULL` every commit is an fsync, so a gateway whose devices answer at
    /// staggered moments would otherwise commit (and fsync) once per poll cycle; gathering writes
    /// for this long shares one commit.
    /// It is also the most a `kill -9` can take from readings that reached the outbox thread. Zero
    /// commits at once; default 100 ms.
    pub commit_window: Duration,
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// One thing wrong (or suspicious) in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `devices[2].tags[5].address`.
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// Warnings are printed but do not stop the agent.
    pub warning: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {key}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}", format_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| p.display(path))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Problem {
    pub fn display(&self, path: &Path) -> String {
        let level = if self.warning { "warning" } else { "error" };
        format!(
            "{level}: {}: {}: {}",
            path.display(),
            self.key,
            self.message
        )
    }
}

/// Collects problems while validating.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
            warning: false,
        });
    }
    pub(crate) fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
            warning: true,
        });
    }
    pub(crate) fn has_errors(&self) -> bool {
        self.0.iter().any(|p| !p.warning)
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// Reads, parses and validates a config file. On success, the warnings are
/// returned beside the config for the caller to log.
pub fn load(path: &Path) -> Result<(Config, Vec<Problem>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(path, &text)
}

/// Like [`load`], from text; `path` is used for messages and to resolve
/// relative paths inside the file.
pub fn load_str(path: &Path, text: &str) -> Result<(Config, Vec<Problem>), ConfigError> {
    let raw = parse(path, text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = Problems::default();
    let config = validate(raw, path, base, &mut problems);
    match config {
        Some(c) if !problems.has_errors() => Ok((c, problems.0)),
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: problems.0,
        }),
    }
}

fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let syntax = |key: String, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        key,
        message,
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| syntax("(file)".into(), one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".to_string()
        } else {
            key
        };
        syntax(key, one_line(&e.into_inner().to_string()))
    })
}

/// toml's messages span several lines with a source excerpt; keep them
/// readable in a one-line-per-problem listing.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Ids and names end up in every message; keep them short.
const MAX_ID_LEN: usize = 64;

pub(crate) fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_ID_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn duration(p: &mut Problems, key: &str, s: &str, min: Duration) -> Duration {
    match parse_duration(s) {
        Some(d) if d >= min => d,
        Some(_) => {
            p.error(
                key,
                format!("{s:?} is too short; use at least {}ms", min.as_millis()),
            );
            min
        }
        None => {
            p.error(
                key,
                format!("{s:?} is not a duration; write e.g. \"500ms\", \"1s\", \"5m\" or \"1h\""),
            );
            min
        }
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn validate(raw: RawConfig, path: &Path, base: &Path, p: &mut Problems) -> Option<Config> {
    let agent = sections::agent(raw.agent, base, p);
    let enterprise = sections::enterprise(raw.enterprise, p);

    let devices = device::validate_all(raw.devices, base, &agent, p);

    let (max_bytes, commit_window) = sections::buffer(&raw.buffer, p);

    // [mqtt] and [[sinks]]
    let sinks = sink::validate_all(raw.mqtt, raw.sinks, base, &agent.gateway_id, &enterprise, p);
    let buffer = BufferConfig {
        synchronous: raw.buffer.synchronous,
        max_bytes,
        max_rows: raw.buffer.max_rows,
        // One stored row is one message to every sink that carries it.
        max_message_bytes: sinks
            .iter()
            .map(|s| s.mqtt.max_message_bytes)
            .min()
            .unwrap_or(64 * 1024),
        commit_window,
    };
    let plant = crate::plant::build(raw.processes, raw.equipment, &devices, p);
    let metrics = sections::metrics(&raw.metrics, p);

    let http = raw.http.and_then(|h| sections::http(h, p));
    let ids: Vec<&str> = devices.iter().map(|d| &*d.id).collect();
    let telemetry = crate::telemetry::validate(raw.telemetry, &ids, p);
    sink::check_devices(&sinks, &ids, p);

    Some(Config {
        path: path.to_path_buf(),
        agent,
        enterprise,
        devices,
        buffer,
        sinks,
        plant: Arc::new(plant),
        metrics,
        http,
        telemetry,
    })
}

/// Secrets readable by every user on the gateway are a finding in any
/// security review; say so, but do not refuse to run.
pub(crate) fn warn_world_readable(path: &Path, key: &str, p: &mut Problems) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            p.warn(key, format!("{} is readable by every user on this machine; chmod 600 it (owner: the agent's user)", path.display()));
        }
    }
}

/// Re-pointing a loaded config, for `demo` (whose simulated devices and
/// broker listen on ports chosen at start-up) and for tests.
impl Config {
    pub fn set_device_address(&mut self, id: &str, address: &str) {
        for d in &mut self.devices {
            if &*d.id == id {
                let d = Arc::make_mut(d);
                d.address = address.to_string();
                if let DeviceProtocol::OpcUa(ua) = &mut d.protocol {
                    Arc::make_mut(ua).endpoint = address.to_string();
                }
            }
        }
    }

    /// What the outbox needs to know of the sinks.
    pub fn routes(&self) -> Vec<crate::buffer::Route> {
        self.sinks.iter().map(|s| s.route()).collect()
    }

    /// Points every sink at one broker.
    pub fn set_broker(&mut self, host: &str, port: u16) {
        for s in &mut self.sinks {
            let m = &mut Arc::make_mut(s).mqtt;
            m.host = host.to_string();
            m.port = port;
        }
    }

    /// Points the sink called `name` at a broker.
    pub fn set_sink_broker(&mut self, name: &str, host: &str, port: u16) {
        for s in &mut self.sinks {
            if s.name == name {
                let m = &mut Arc::make_mut(s).mqtt;
                m.host = host.to_string();
                m.port = port;
            }
        }
    }

    pub fn set_state_dir(&mut self, dir: &Path) {
        self.agent.state_dir = dir.to_path_buf();
        for d in &mut self.devices {
            if let DeviceProtocol::OpcUa(ua) = &mut Arc::make_mut(d).protocol {
                Arc::make_mut(ua).pki_dir = dir.join("pki");
            }
        }
    }

    /// SHA-256 over a canonical text of everything that shapes the figures:
    /// identity, devices and tags, processes, equipment and rules. Computed
    /// on demand so that re-pointing devices changes it too.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        use std::fmt::Write;
        let mut t = String::new();
        let e = &self.enterprise;
        let _ = writeln!(
            t,
            "enterprise|{}|{}|{}|{:?}|{}",
            e.name, e.uscc, e.region_code, e.industry, e.chain
        );
        let _ = writeln!(t, "gateway|{}", self.agent.gateway_id);
        for d in &self.devices {
            let _ = writeln!(
                t,
                "device|{}|{}|{}|{}",
                d.id,
                d.address,
                d.modbus().map_or(0, |m| m.unit_id),
                d.poll_interval.as_millis()
            );
            for g in d.modbus().map(|m| &m.tags[..]).unwrap_or_default() {
                let _ = writeln!(
                    t,
                    "tag|{}|{}|{}|{}|{:?}|{:?}|{}|{}",
                    g.name,
                    g.area.name(),
                    g.address,
                    g.ty.name(),
                    g.order,
                    g.bit,
                    g.scale,
                    g.offset
                );
            }
            if let Some(ua) = d.opcua() {
                let _ = writeln!(
                    t,
                    "opcua|{}|{}|{:?}|{:?}",
                    ua.endpoint,
                    ua.policy.name(),
                    ua.mode,
                    ua.root.as_ref().map(|r| r.to_string())
                );
                for g in &ua.tags {
                    let _ = writeln!(
                        t,
                        "uatag|{}|{}|{:?}|{:?}|{:?}|{}|{:?}",
                        g.name,
                        g.node,
                        g.mode,
                        g.sampling_interval,
                        g.publishing_interval,
                        g.queue_size,
                        g.deadband
                    );
                }
            }
            if let Some(s7) = d.s7() {
                let _ = writeln!(
                    t,
                    "s7|{:04X}|{:04X}|{}",
                    s7.local_tsap, s7.remote_tsap, s7.pdu_size
                );
                for g in &s7.tags {
                    let _ = writeln!(
                        t,
                        "s7tag|{}|{}|{}|{}|{}",
                        g.name,
                        g.text,
                        g.ty.name(),
                        g.scale,
                        g.offset
                    );
                }
            }
        }
        for p in &self.plant.processes {
            let _ = writeln!(t, "process|{}|{}|{}", p.id, p.name, p.key);
        }
        for q in &self.plant.equipment {
            let _ = writeln!(
                t,
                "equipment|{}|{}|{}|{:?}|{}|{}|{}",
                q.id,
                q.name,
                self.plant.processes[q.process].id,
                q.kind,
                q.device,
                q.nc_active.text,
                q.running.text
            );
        }
        let _ = writeln!(t, "window|{}", self.metrics.utc_offset);
        let digest = Sha256::digest(t.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2 days"), None);
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("12 parsecs"), None);
    }

    #[test]
    fn rtu_devices_take_serial_defaults_and_share_a_bus() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"
[agent]
gateway_id = "gw-01"
state_dir = "{}"
[enterprise]
name = "x"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"
[mqtt]
tls = false
[[devices]]
id = "a"
protocol = "modbus-rtu"
port = "/dev/serial/by-id/usb-FTDI-if00-port0"
unit_id = 3
[[devices]]
id = "b"
protocol = "modbus-rtu"
port = "/dev/serial/by-id/usb-FTDI-if00-port0"
baud = 9600
parity = "N"
data_bits = 8
stop_bits = 1
unit_id = 4
[[devices]]
id = "c"
protocol = "modbus-rtu-over-tcp"
address = "127.0.0.1:4001"
unit_id = 3
"#,
            dir.path().display()
        );
        let (c, warnings) = load_str(Path::new("t.toml"), &text).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        let d = &c.devices;
        assert_eq!(d[0].serial(), Some(SerialConfig::default()));
        assert_eq!(d[0].serial().map(|s| s.describe()), Some("9600 8N1".into()));
        assert_eq!(d[0].address, "/dev/serial/by-id/usb-FTDI-if00-port0");
        assert_eq!(d[0].bus_key(), d[1].bus_key());
        assert_eq!(d[2].serial(), None);
        assert_eq!(d[2].bus_key(), Some("tcp:127.0.0.1:4001".into()));
        assert_eq!(d[2].protocol.kind(), Protocol::ModbusRtuOverTcp);
    }
}
