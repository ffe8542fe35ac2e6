//! Configuration: serde types that mirror the TOML file, and the typed,
//! validated values the rest of the agent uses.
//!
//! Loading happens in two steps. Serde (with `deny_unknown_fields`) rejects
//! syntax errors, unknown keys and wrong value types, naming the key path.
//! Then [`validate`] checks everything else and collects *all* problems, so
//! an engineer fixes a file in one pass instead of one error per run. `check`
//! and `run` share this code, so `check` passing means `run` will start.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::identity::{self, UsccCheck};

/// The OPC UA keys live with the OPC UA source; this path is kept for callers.
pub use crate::source::opcua::config as opcua;
pub mod sink;
use crate::source::modbus::decode::WordOrder;
use crate::source::modbus::plan::Area;
pub use sink::{Carries, MqttConfig, SinkConfig, TopicLayout};

// ---------------------------------------------------------------------------
// The file, as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent: RawAgent,
    enterprise: RawEnterprise,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    buffer: RawBuffer,
    /// The platform sink, in its short form.
    mqtt: Option<sink::RawSink>,
    /// More northbound destinations (or all of them).
    #[serde(default)]
    sinks: Vec<sink::RawSink>,
    #[serde(default)]
    processes: Vec<RawProcess>,
    #[serde(default)]
    equipment: Vec<RawEquipment>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    http: Option<RawHttp>,
    /// What of each cycle is published: every cycle, or by exception.
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
}

/// `[http]`: the optional local Prometheus and health endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    #[serde(default)]
    allow_remote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    id: String,
    name: String,
    #[serde(default)]
    key: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEquipment {
    id: String,
    name: String,
    process: String,
    kind: crate::plant::Kind,
    device: String,
    profile: Option<String>,
    nc_active: Option<String>,
    running: Option<String>,
    parts: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_utc_offset")]
    utc_offset: String,
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
    /// 经营管理数字化: management systems in use (ERP, MES, SCM, CRM, PLM, ...).
    #[serde(default)]
    pub management: Vec<String>,
    /// 数字化研发设计工具: design tools in use (CAD, CAE, CAPP, PLM, ...).
    #[serde(default)]
    pub design_tools: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    gateway_id: String,
    state_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnterprise {
    name: String,
    uscc: String,
    region_code: String,
    industry: Industry,
    #[serde(default)]
    chain: String,
    #[serde(default)]
    declared: Declared,
}

/// A `[[devices]]` table as written: every protocol's keys in one flat
/// table, so that a key of another protocol is reported by name with the
/// fix ("only applies to protocol = ...") rather than as an unknown field.
/// Each protocol's keys are validated by `source::<protocol>::config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// host:port; for modbus-tcp and modbus-rtu-over-tcp only.
    pub(crate) address: Option<String>,
    #[serde(default = "default_unit_id")]
    pub(crate) unit_id: u16,
    /// Serial port (ideally /dev/serial/by-id/...); modbus-rtu only, as are
    /// the line settings below (defaults 9600, "N", 8, 1).
    pub(crate) port: Option<String>,
    pub(crate) baud: Option<u32>,
    pub(crate) parity: Option<Parity>,
    pub(crate) data_bits: Option<u8>,
    pub(crate) stop_bits: Option<u8>,
    #[serde(default = "default_poll_interval")]
    pub(crate) poll_interval: String,
    #[serde(default = "default_timeout")]
    pub(crate) timeout: String,
    #[serde(default = "default_retries")]
    pub(crate) retries: u32,
    #[serde(default = "default_max_gap")]
    pub(crate) max_gap: u16,
    #[serde(default = "default_true")]
    pub(crate) coalesce: bool,
    #[serde(default)]
    pub(crate) tags: Vec<RawTag>,
    // OPC UA only (see config/opcua.rs).
    pub(crate) endpoint: Option<String>,
    pub(crate) security_policy: Option<opcua::SecurityPolicy>,
    pub(crate) security_mode: Option<opcua::SecurityMode>,
    pub(crate) identity: Option<opcua::IdentityKind>,
    pub(crate) username: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) user_certificate: Option<PathBuf>,
    pub(crate) user_private_key: Option<PathBuf>,
    pub(crate) trust_unknown_server_certs: Option<bool>,
    pub(crate) root: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) channels: Option<Vec<String>>,
    // S7 only (see source/s7/config.rs).
    pub(crate) rack: Option<u8>,
    pub(crate) slot: Option<u8>,
    pub(crate) local_tsap: Option<String>,
    pub(crate) remote_tsap: Option<String>,
    pub(crate) pdu_size: Option<u16>,
}

/// A tag address: a number (Modbus, 0-based) or text (S7, `"DB10.DBW2"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawAddress {
    Number(u32),
    Text(String),
}

/// A tag: Modbus keys (area, address, ...) or OPC UA keys (node or path,
/// mode, ...); which apply depends on the device's protocol.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTag {
    pub(crate) name: String,
    pub(crate) area: Option<Area>,
    pub(crate) address: Option<RawAddress>,
    #[serde(rename = "type")]
    pub(crate) ty: Option<String>,
    pub(crate) order: Option<WordOrder>,
    pub(crate) bit: Option<u8>,
    pub(crate) scale: Option<f64>,
    pub(crate) offset: Option<f64>,
    pub(crate) unit: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) path: Option<String>,
    pub(crate) mode: Option<opcua::TagMode>,
    pub(crate) sampling_interval: Option<String>,
    pub(crate) publishing_interval: Option<String>,
    pub(crate) queue_size: Option<u32>,
    pub(crate) deadband_absolute: Option<f64>,
    pub(crate) deadband_percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    #[serde(default)]
    synchronous: Synchronous,
    #[serde(default = "default_max_bytes")]
    max_bytes: ByteSize,
    max_rows: Option<u64>,
    /// How long the outbox gathers further writes after the first before
    /// committing them together; "0ms" commits each batch at once.
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

fn default_unit_id() -> u16 {
    1
}
fn default_poll_interval() -> String {
    "1s".into()
}
fn default_timeout() -> String {
    "1s".into()
}
fn default_retries() -> u32 {
    1
}
fn default_max_gap() -> u16 {
    8
}
fn default_true() -> bool {
    true
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Industry {
    Discrete,
    Process,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Modbus TCP (MBAP framing), one connection per device.
    #[default]
    ModbusTcp,
    /// Modbus RTU on one of the gateway's own serial ports (RS-485).
    ModbusRtu,
    /// Raw RTU frames (with CRC) over TCP, for serial device servers that
    /// forward bytes transparently.
    ModbusRtuOverTcp,
    /// OPC UA binary over TCP (opc.tcp://), one session per device.
    Opcua,
    /// Siemens S7comm over ISO-on-TCP (port 102), one connection per device.
    S7,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            Protocol::Opcua => "opcua",
            Protocol::S7 => "s7",
        }
    }

    /// RTU framing on a bus that several units share.
    pub fn is_bus(self) -> bool {
        matches!(self, Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp)
    }
}

pub use crate::source::modbus::config::{ModbusConfig, Parity, SerialConfig, TagConfig};

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages.
    pub path: PathBuf,
    pub agent: AgentConfig,
    pub enterprise: Enterprise,
    pub devices: Vec<Arc<DeviceConfig>>,
    pub buffer: BufferConfig,
    /// The northbound MQTT destinations, `[mqtt]` first.
    pub sinks: Vec<Arc<SinkConfig>>,
    pub plant: Arc<crate::plant::PlantModel>,
    pub metrics: MetricsConfig,
    /// `None`: no HTTP endpoint (the default).
    pub http: Option<HttpConfig>,
    /// Report every cycle or by exception, per device and tag.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// The local `/metrics` and `/healthz` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Loopback unless `allow_remote` was set.
    pub listen: std::net::SocketAddr,
}

/// Window alignment and snapshot cadence of the indicators.
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    /// Hourly and daily windows start at whole hours / midnight in this offset.
    pub utc_offset: time::UtcOffset,
    /// How often the current partial day is published.
    pub snapshot_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub gateway_id: String,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Enterprise {
    pub name: String,
    pub uscc: String,
    pub region_code: String,
    pub industry: Industry,
    pub chain: String,
    pub declared: Declared,
}

/// A device: what every protocol shares, and its protocol's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub id: Arc<str>,
    /// Where the device is: `host:port` as written (resolved at every
    /// connect so DNS changes apply), the serial port for modbus-rtu, or the
    /// endpoint URL for opcua.
    pub address: String,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// The protocol and the settings only it has, validated by
    /// `source::<protocol>::config`.
    pub protocol: DeviceProtocol,
}

/// One variant per protocol, each holding what only that protocol has, so
/// that code dispatching on the protocol gets its settings with it and
/// cannot meet a device that lacks them.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceProtocol {
    /// Modbus TCP (MBAP framing), one connection per device.
    ModbusTcp(ModbusConfig),
    /// Modbus RTU on one of the gateway's own serial ports; `address` is
    /// the port.
    Rtu {
        serial: SerialConfig,
        modbus: ModbusConfig,
    },
    /// Raw RTU frames over TCP, through a serial device server.
    RtuOverTcp(ModbusConfig),
    /// OPC UA; `address` is the endpoint URL.
    OpcUa(Arc<opcua::OpcUaDevice>),
    /// Siemens S7comm over ISO-on-TCP.
    S7(Arc<crate::source::s7::config::S7Device>),
}

impl DeviceProtocol {
    /// The protocol as the config file names it.
    pub fn kind(&self) -> Protocol {
        match self {
            DeviceProtocol::ModbusTcp(_) => Protocol::ModbusTcp,
            DeviceProtocol::Rtu { .. } => Protocol::ModbusRtu,
            DeviceProtocol::RtuOverTcp(_) => Protocol::ModbusRtuOverTcp,
            DeviceProtocol::OpcUa(_) => Protocol::Opcua,
            DeviceProtocol::S7(_) => Protocol::S7,
        }
    }

    /// `protocol = "..."` as written in the config.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub synchronous: Synchronous,
    pub max_bytes: u64,
    pub max_rows: Option<u64>,
    /// Largest telemetry message; the buffer cuts rows to this size.
    pub max_message_bytes: usize,
    /// With `synchronous = FULL` every commit is an fsync, so a gateway
    /// whose devices answer at staggered moments would otherwise commit
    /// (and fsync) once per poll cycle; gathering writes for this long
    /// shares one commit. It is also the most a `kill -9` can take from
    /// readings that reached the outbox thread. Zero commits at once.
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
    fn has_errors(&self) -> bool {
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

/// The outbox must be able to live here: if the directory exists, it must
/// be a directory we can write to. A directory that does not exist yet is
/// fine (systemd's StateDirectory= creates it; otherwise `run` says
/// clearly that it cannot). Checked without creating anything, so `check`
/// has no side effects.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err("is not a directory; point state_dir at a directory".into()),
        Ok(_) if !writable(dir) => {
            Err("is not writable by this user; the outbox lives here, so give the agent's user write access".into())
        }
        _ => Ok(()),
    }
}

/// access(2) with W_OK: honours the effective user, groups and read-only mounts.
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn validate(raw: RawConfig, path: &Path, base: &Path, p: &mut Problems) -> Option<Config> {
    // [agent]
    if !is_id(&raw.agent.gateway_id) {
        p.error(
            "agent.gateway_id",
            format!(
                "{:?} must be 1 to 64 letters, digits, '-' or '_' (it becomes part of MQTT topics)",
                raw.agent.gateway_id
            ),
        );
    }
    let agent = AgentConfig {
        gateway_id: raw.agent.gateway_id,
        state_dir: resolve(base, &raw.agent.state_dir),
    };
    if let Err(why) = check_state_dir(&agent.state_dir) {
        p.error(
            "agent.state_dir",
            format!("{}: {why}", agent.state_dir.display()),
        );
    }

    // [enterprise]
    let e = raw.enterprise;
    if e.name.trim().is_empty() {
        p.error(
            "enterprise.name",
            "is empty; write the registered enterprise name",
        );
    }
    match identity::check_uscc(&e.uscc) {
        Ok(UsccCheck::Valid) => {}
        Ok(UsccCheck::BadCheckChar { expected, found }) => p.warn(
            "enterprise.uscc",
            format!(
                "check character is {found:?} but GB 32100-2015 gives {expected:?}; \
                 some early-issued codes fail this check, so confirm it against the business licence"
            ),
        ),
        Err(why) => p.error(
            "enterprise.uscc",
            format!("{:?} is not a 统一社会信用代码: {why}; copy the 18-character code from the business licence", e.uscc),
        ),
    }
    if e.region_code.len() != 6 || !e.region_code.bytes().all(|b| b.is_ascii_digit()) {
        p.error(
            "enterprise.region_code",
            format!(
                "{:?} must be a 6-digit GB/T 2260 code, e.g. \"321003\" for 邗江区",
                e.region_code
            ),
        );
    } else if identity::yangzhou_region_name(&e.region_code).is_none() {
        p.warn(
            "enterprise.region_code",
            format!("{} is not a Yangzhou code (321000, 321002, 321003, 321012, 321023, 321081, 321084)", e.region_code),
        );
    }
    let enterprise = Enterprise {
        name: e.name,
        uscc: e.uscc,
        region_code: e.region_code,
        industry: e.industry,
        chain: e.chain,
        declared: e.declared,
    };

    // [[devices]]
    let mut devices = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    for (di, d) in raw.devices.into_iter().enumerate() {
        let key = format!("devices[{di}]");
        let first = *seen_ids.entry(d.id.clone()).or_insert(di);
        if first != di {
            p.error(
                format!("{key}.id"),
                format!(
                    "{:?} is already used by devices[{first}]; device ids must be unique",
                    d.id
                ),
            );
        }
        if !is_id(&d.id) {
            p.error(
                format!("{key}.id"),
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", d.id),
            );
        }
        devices.push(Arc::new(validate_device(d, &key, base, &agent, p)));
    }
    crate::source::modbus::config::check_buses(&devices, p);
    if devices.is_empty() && !p.has_errors() {
        p.warn(
            "devices",
            "no devices are configured; the agent will only publish its status",
        );
    }

    // [buffer]
    let max_bytes = match raw.buffer.max_bytes.bytes() {
        Some(b) if b >= 1 << 20 => b,
        Some(_) => {
            p.error(
                "buffer.max_bytes",
                "is below 1MiB; give the outbox room for at least a few minutes of data",
            );
            1 << 20
        }
        None => {
            p.error(
                "buffer.max_bytes",
                "is not a size; write e.g. 268435456 or \"256MiB\"",
            );
            1 << 20
        }
    };
    if raw.buffer.max_rows == Some(0) {
        p.error("buffer.max_rows", "is 0; remove the key for no row limit");
    }
    let commit_window = {
        let w = duration(
            p,
            "buffer.commit_window",
            &raw.buffer.commit_window,
            Duration::ZERO,
        );
        // Readings in an open window are lost to a crash, and the window
        // adds to every reading's latency: it is meant to be short.
        if w > MAX_COMMIT_WINDOW {
            p.error(
                "buffer.commit_window",
                format!(
                    "{:?} is too long; use at most {}ms (\"100ms\" is the default, \"0ms\" commits at once)",
                    raw.buffer.commit_window,
                    MAX_COMMIT_WINDOW.as_millis()
                ),
            );
        }
        w
    };

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
    let plant = validate_plant(raw.processes, raw.equipment, &devices, p);
    let utc_offset = match time::UtcOffset::parse(
        &raw.metrics.utc_offset,
        time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]"),
    ) {
        Ok(o) => o,
        Err(_) => {
            p.error(
                "metrics.utc_offset",
                format!(
                    "{:?} is not a UTC offset; write e.g. \"+08:00\"",
                    raw.metrics.utc_offset
                ),
            );
            time::UtcOffset::UTC
        }
    };
    let metrics = MetricsConfig {
        utc_offset,
        snapshot_interval: duration(
            p,
            "metrics.snapshot_interval",
            &raw.metrics.snapshot_interval,
            Duration::from_secs(1),
        ),
    };

    let http = raw.http.and_then(|h| validate_http(h, p));
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

fn validate_http(h: RawHttp, p: &mut Problems) -> Option<HttpConfig> {
    let listen: std::net::SocketAddr = match h.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            p.error(
                "http.listen",
                format!(
                    "{:?} is not an IP address with a port; write e.g. \"127.0.0.1:9187\"",
                    h.listen
                ),
            );
            return None;
        }
    };
    if listen.ip().is_loopback() {
        return Some(HttpConfig { listen });
    }
    if !h.allow_remote {
        p.error(
            "http.listen",
            format!(
                "{listen} is not a loopback address, and /metrics and /healthz have no authentication; \
                 listen on 127.0.0.1:{port}, or set http.allow_remote = true and firewall the port",
                port = listen.port()
            ),
        );
        return None;
    }
    p.warn(
        "http.allow_remote",
        format!("/metrics and /healthz are reachable from the network on {listen} without authentication; firewall the port"),
    );
    Some(HttpConfig { listen })
}

fn validate_plant(
    processes: Vec<RawProcess>,
    equipment: Vec<RawEquipment>,
    devices: &[Arc<DeviceConfig>],
    p: &mut Problems,
) -> crate::plant::PlantModel {
    use crate::expr::{Expr, Type};
    use crate::plant::{profile_rules, Equipment, PlantModel, Process};

    let mut model = PlantModel::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, r) in processes.into_iter().enumerate() {
        let key = format!("processes[{i}]");
        if !is_id(&r.id) {
            p.error(
                format!("{key}.id"),
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", r.id),
            );
        }
        if r.name.trim().is_empty() {
            p.error(
                format!("{key}.name"),
                "is empty; write the process name, e.g. \"数控车削\"",
            );
        }
        let first = *index.entry(r.id.clone()).or_insert(i);
        if first != i {
            p.error(
                format!("{key}.id"),
                format!("{:?} is already used by processes[{first}]", r.id),
            );
            continue;
        }
        model.processes.push(Process {
            id: r.id,
            name: r.name,
            key: r.key,
        });
    }
    let mut used = vec![false; model.processes.len()];
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, r) in equipment.into_iter().enumerate() {
        let key = format!("equipment[{i}]");
        if !is_id(&r.id) {
            p.error(
                format!("{key}.id"),
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", r.id),
            );
        }
        let first = *ids.entry(r.id.clone()).or_insert(i);
        if first != i {
            p.error(
                format!("{key}.id"),
                format!("{:?} is already used by equipment[{first}]", r.id),
            );
        }
        let process = model.processes.iter().position(|pr| pr.id == r.process);
        if process.is_none() {
            let known: Vec<&str> = model.processes.iter().map(|pr| pr.id.as_str()).collect();
            p.error(
                format!("{key}.process"),
                format!(
                    "unknown process {:?}; processes are: {}",
                    r.process,
                    known.join(", ")
                ),
            );
        }
        let Some(dev) = devices.iter().find(|d| *d.id == r.device) else {
            let known: Vec<&str> = devices.iter().map(|d| &*d.id).collect();
            p.error(
                format!("{key}.device"),
                format!(
                    "unknown device {:?}; devices are: {}",
                    r.device,
                    known.join(", ")
                ),
            );
            continue;
        };
        let types = |name: &str| dev.tag_type(name);
        let tag_names = dev.tag_names();
        let (mut nc_text, mut run_text) = (None, None);
        // An OPC UA device's profile also sets its equipment's rules.
        let profile = r
            .profile
            .clone()
            .or_else(|| dev.opcua().and_then(|u| u.profile.clone()));
        if let Some(profile) = &profile {
            match profile_rules(profile, &tag_names) {
                Ok((nc, run)) => {
                    nc_text = Some(nc);
                    run_text = Some(run);
                }
                Err(why) => p.error(format!("{key}.profile"), why),
            }
        }
        let nc_active_given = r.nc_active.is_some();
        if let Some(t) = r.nc_active {
            nc_text = Some(t);
        }
        if let Some(t) = r.running {
            run_text = Some(t);
        }
        if !r.kind.nc_capable() {
            // Manual stations never run under NC, whatever a profile says.
            if nc_active_given {
                p.error(
                    format!("{key}.nc_active"),
                    format!("a {} equipment never runs under NC; remove nc_active, or set kind to cnc, plc, dcs or robot", format!("{:?}", r.kind).to_lowercase()),
                );
            }
            nc_text = Some("false".into());
        }
        let mut rule = |field: &str, text: Option<String>| -> Option<Expr> {
            let Some(text) = text else {
                if profile.is_none() {
                    p.error(format!("{key}.{field}"), format!("is missing; write a rule over {}'s tags, e.g. \"execution == 1\", or set profile", dev.id));
                }
                return None;
            };
            match Expr::parse(&text, &types) {
                Ok(e) => Some(e),
                Err(e) => {
                    p.error(
                        format!("{key}.{field}"),
                        format!("{e}; tags of {} are: {}", dev.id, tag_names.join(", ")),
                    );
                    None
                }
            }
        };
        let nc_active = rule("nc_active", nc_text);
        let running = rule("running", run_text);
        if let Some(parts) = &r.parts {
            if types(parts) != Some(Type::Num) {
                p.error(
                    format!("{key}.parts"),
                    format!("{parts:?} must be a numeric tag of {}", dev.id),
                );
            }
        }
        if let (Some(process), Some(nc_active), Some(running)) = (process, nc_active, running) {
            used[process] = true;
            model.equipment.push(Equipment {
                id: r.id.as_str().into(),
                name: r.name,
                process,
                kind: r.kind,
                device: dev.id.clone(),
                poll_interval: dev.poll_interval,
                nc_active,
                running,
                parts: r.parts,
                profile,
            });
        }
    }
    if !p.has_errors() {
        for (i, pr) in model.processes.iter().enumerate() {
            if !used[i] {
                p.error(format!("processes[{i}]"), format!("process {:?} has no equipment; add [[equipment]] with process = {:?} or remove it", pr.id, pr.id));
            }
        }
        if !model.processes.is_empty() && !model.processes.iter().any(|pr| pr.key) {
            p.warn("processes", "no process has key = true, so the key-process CNC rate (关键工序数控化率) has no denominator and is published as null");
        }
    }
    model
}

/// The usual TCP port of a protocol, for examples in messages.
fn default_port(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::S7 => 102,
        Protocol::Opcua => 4840,
        _ => 502,
    }
}

/// Where a TCP device is: `address`, never a serial port or line settings
/// (modbus-rtu's `port` and line are validated in `source::modbus::config`).
fn tcp_endpoint(d: &RawDevice, key: &str, p: &mut Problems) -> String {
    let serial_keys = [
        ("baud", d.baud.is_some()),
        ("parity", d.parity.is_some()),
        ("data_bits", d.data_bits.is_some()),
        ("stop_bits", d.stop_bits.is_some()),
    ];
    let proto = d.protocol.name();
    if d.port.is_some() {
        p.error(
            format!("{key}.port"),
            format!("only applies to protocol = \"modbus-rtu\" (this device is {proto}); set protocol = \"modbus-rtu\" for a serial port, or remove port and use address = \"host:port\""),
        );
    }
    for (k, set) in serial_keys {
        if set {
            let why = if d.protocol == Protocol::ModbusRtuOverTcp {
                "the device server sets up its own serial line, so configure the line there"
            } else if d.protocol == Protocol::S7 {
                "S7 talks over TCP and has no serial line"
            } else {
                "Modbus TCP has no serial line"
            };
            p.error(
                format!("{key}.{k}"),
                format!("only applies to protocol = \"modbus-rtu\" (this device is {proto}): {why}; remove it"),
            );
        }
    }
    let address = match &d.address {
        Some(a) => {
            match a.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => p.error(
                    format!("{key}.address"),
                    format!(
                        "{a:?} must be host:port, e.g. \"127.0.0.1:{}\"",
                        default_port(d.protocol)
                    ),
                ),
            }
            a.clone()
        }
        None => {
            p.error(
                format!("{key}.address"),
                format!("is missing; a {proto} device needs address = \"host:port\", e.g. \"127.0.0.1:{}\"", default_port(d.protocol)),
            );
            String::new()
        }
    };
    address
}

/// The keys every device has, then its protocol's own keys, validated by
/// the protocol's module (`source::<protocol>::config`).
fn validate_device(
    mut d: RawDevice,
    key: &str,
    base: &Path,
    agent: &AgentConfig,
    p: &mut Problems,
) -> DeviceConfig {
    use crate::source::{modbus, s7};
    let poll_interval = duration(
        p,
        &format!("{key}.poll_interval"),
        &d.poll_interval,
        Duration::from_millis(10),
    );
    let timeout = duration(
        p,
        &format!("{key}.timeout"),
        &d.timeout,
        Duration::from_millis(10),
    );
    let (address, protocol) = match d.protocol {
        Protocol::Opcua => {
            let ua = opcua::validate(
                &mut d,
                key,
                base,
                (&agent.state_dir, &agent.gateway_id),
                poll_interval,
                p,
            );
            (ua.endpoint.clone(), DeviceProtocol::OpcUa(Arc::new(ua)))
        }
        Protocol::S7 => {
            opcua::reject_on_modbus(&d, key, p);
            let address = tcp_endpoint(&d, key, p);
            let s7 = s7::config::from_raw(&mut d, key, p);
            (address, DeviceProtocol::S7(Arc::new(s7)))
        }
        Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => {
            opcua::reject_on_modbus(&d, key, p);
            let address = tcp_endpoint(&d, key, p);
            s7::config::reject_keys(&d, key, p);
            let m = modbus::config::validate(&mut d, key, p);
            if d.protocol == Protocol::ModbusTcp {
                (address, DeviceProtocol::ModbusTcp(m))
            } else {
                (address, DeviceProtocol::RtuOverTcp(m))
            }
        }
        Protocol::ModbusRtu => {
            opcua::reject_on_modbus(&d, key, p);
            let (port, serial) = modbus::config::serial_endpoint(&d, key, p);
            s7::config::reject_keys(&d, key, p);
            let modbus = modbus::config::validate(&mut d, key, p);
            (port, DeviceProtocol::Rtu { serial, modbus })
        }
    };
    DeviceConfig {
        id: d.id.as_str().into(),
        address,
        poll_interval,
        timeout,
        retries: d.retries,
        protocol,
    }
}

impl DeviceConfig {
    /// The Modbus settings of a Modbus device (any framing).
    pub fn modbus(&self) -> Option<&ModbusConfig> {
        match &self.protocol {
            DeviceProtocol::ModbusTcp(m) | DeviceProtocol::RtuOverTcp(m) => Some(m),
            DeviceProtocol::Rtu { modbus, .. } => Some(modbus),
            DeviceProtocol::OpcUa(_) | DeviceProtocol::S7(_) => None,
        }
    }

    /// Mutable Modbus settings, for commands that override them from flags.
    pub fn modbus_mut(&mut self) -> Option<&mut ModbusConfig> {
        match &mut self.protocol {
            DeviceProtocol::ModbusTcp(m) | DeviceProtocol::RtuOverTcp(m) => Some(m),
            DeviceProtocol::Rtu { modbus, .. } => Some(modbus),
            DeviceProtocol::OpcUa(_) | DeviceProtocol::S7(_) => None,
        }
    }

    /// The line settings of a modbus-rtu device.
    pub fn serial(&self) -> Option<SerialConfig> {
        match &self.protocol {
            DeviceProtocol::Rtu { serial, .. } => Some(*serial),
            _ => None,
        }
    }

    /// The OPC UA settings of an opcua device.
    pub fn opcua(&self) -> Option<&Arc<opcua::OpcUaDevice>> {
        match &self.protocol {
            DeviceProtocol::OpcUa(ua) => Some(ua),
            _ => None,
        }
    }

    /// The S7 settings of an s7 device.
    pub fn s7(&self) -> Option<&Arc<crate::source::s7::config::S7Device>> {
        match &self.protocol {
            DeviceProtocol::S7(s7) => Some(s7),
            _ => None,
        }
    }

    /// Every tag name, whatever the protocol, in config order.
    pub fn tag_names(&self) -> Vec<&str> {
        match &self.protocol {
            DeviceProtocol::ModbusTcp(m)
            | DeviceProtocol::RtuOverTcp(m)
            | DeviceProtocol::Rtu { modbus: m, .. } => m.tags.iter().map(|t| &*t.name).collect(),
            DeviceProtocol::OpcUa(ua) => ua.tags.iter().map(|t| &*t.name).collect(),
            DeviceProtocol::S7(s7) => s7.tags.iter().map(|t| &*t.name).collect(),
        }
    }

    /// What a rule may assume a tag holds.
    pub fn tag_type(&self, name: &str) -> Option<crate::expr::Type> {
        use crate::expr::Type;
        use crate::source::modbus::decode::DataType;
        use crate::source::s7::address::S7Type;
        match &self.protocol {
            DeviceProtocol::ModbusTcp(m)
            | DeviceProtocol::RtuOverTcp(m)
            | DeviceProtocol::Rtu { modbus: m, .. } => m
                .tags
                .iter()
                .find(|t| &*t.name == name)
                .map(|t| match t.ty {
                    DataType::Bool => Type::Bool,
                    DataType::String(_) => Type::Str,
                    _ => Type::Num,
                }),
            DeviceProtocol::OpcUa(ua) => ua.tag_kind(name).map(|k| match k {
                opcua::ValueKind::Num => Type::Num,
                opcua::ValueKind::Bool => Type::Bool,
                opcua::ValueKind::Str => Type::Str,
            }),
            DeviceProtocol::S7(s7) => {
                s7.tags
                    .iter()
                    .find(|t| &*t.name == name)
                    .map(|t| match t.ty {
                        S7Type::Bool => Type::Bool,
                        S7Type::String(_) => Type::Str,
                        _ => Type::Num,
                    })
            }
        }
    }

    /// The bus this device shares with others, if its protocol has one; all
    /// devices with the same key are polled by one task. A serial port is
    /// named by its resolved path when it exists, so `/dev/ttyUSB0` and its
    /// `/dev/serial/by-id/...` link are seen as one bus.
    pub fn bus_key(&self) -> Option<String> {
        match &self.protocol {
            DeviceProtocol::ModbusTcp(_) | DeviceProtocol::OpcUa(_) | DeviceProtocol::S7(_) => None,
            DeviceProtocol::Rtu { .. } => {
                let path = std::fs::canonicalize(&self.address)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| self.address.clone());
                Some(format!("serial:{path}"))
            }
            DeviceProtocol::RtuOverTcp(_) => Some(format!("tcp:{}", self.address)),
        }
    }
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
