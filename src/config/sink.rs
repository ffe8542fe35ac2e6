//! `[mqtt]` and `[[sinks]]`: the northbound MQTT destinations, what each
//! carries, and their connection settings (TLS, login, topics).
//!
//! `[mqtt]` is the short form of one sink, named `platform`: the city's
//! broker. It carries the figures and the evidence behind them (metrics,
//! states, status) and, unless the config says so, no telemetry: raw
//! production data goes only where the enterprise chooses to send it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    duration, is_id, is_ident, is_loopback, resolve, warn_world_readable, ByteSize, Enterprise,
    Problems, Secret,
};
pub use crate::buffer::Stream;

/// The name `[mqtt]` gets.
pub const PLATFORM: &str = "platform";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// How logs, `status` and the outbox name this sink; default "platform" for `[mqtt]`, required
    /// in `[[sinks]]`.
    name: Option<String>,
    /// The streams this sink carries; default metrics, states and status, telemetry (raw production
    /// data) only when listed.
    carries: Option<Vec<Stream>>,
    /// With `carries` telemetry: only these devices' readings, to keep others' private; default
    /// all.
    telemetry_devices: Option<Vec<String>>,
    /// With `carries` telemetry: only these tags, to keep others private; default all.
    telemetry_tags: Option<Vec<String>>,
    /// With `carries` telemetry: `index` (`zgsz.telemetry/3`: each tag named once per message, the
    /// fewest bytes) or `name` (`zgsz.telemetry/2`: values keyed by tag name, for consumers that
    /// cannot look a key up); default index.
    telemetry_keys: Option<crate::buffer::cycle::TagKeys>,
    /// `platform`: `{prefix}/{region}/{uscc}/{gateway}/{stream}`, the city's namespace; `gateway`:
    /// `{prefix}/{gateway}/{stream}`, for an enterprise's own broker. Default platform.
    #[serde(default)]
    topic_layout: TopicLayout,
    /// The broker's host name or address; default 127.0.0.1 (a local broker or bridge).
    #[serde(default = "default_host")]
    host: String,
    /// The broker's port; default 8883 with TLS, else 1883 (the MQTT conventions).
    port: Option<u16>,
    /// Encrypts and authenticates the broker connection, which crosses networks the enterprise does
    /// not own; default true.
    #[serde(default = "default_true")]
    tls: bool,
    /// The CA certificate (PEM) the broker's certificate must chain to, for a private CA; default
    /// the system's CA certificates.
    ca_file: Option<PathBuf>,
    /// The gateway's certificate (PEM), for brokers that authenticate gateways by mutual TLS;
    /// default none.
    client_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `client_cert_file`; required with it, default none.
    client_key_file: Option<PathBuf>,
    /// The broker account of this gateway, for brokers that authenticate by login; default none
    /// (anonymous).
    username: Option<String>,
    /// A file (mode 0600) holding the account's password, so the password stays out of the config;
    /// default none.
    password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password (systemd: `LoadCredential=` or an
    /// `EnvironmentFile=` readable only by root); default none.
    password_env: Option<String>,
    /// Refuse to start with `tls = false`: a site policy switch that outlives edits to `tls`;
    /// default false.
    #[serde(default)]
    require_tls: bool,
    /// The MQTT client id, unique per broker or one connection drops the other; default
    /// `zgsz-<gateway_id>`, plus `-<name>` for other sinks than `platform`.
    client_id: Option<String>,
    /// The first topic level, so one broker can carry several programmes; default "zgsz".
    #[serde(default = "default_topic_prefix")]
    topic_prefix: String,
    /// How soon a dead connection is noticed, by both sides; default "30s".
    #[serde(default = "default_keepalive")]
    keepalive: String,
    /// Unacknowledged messages in flight: more hides latency, fewer bounds a resend after a drop;
    /// default 32.
    #[serde(default = "default_max_inflight")]
    max_inflight: u16,
    /// Largest message the broker takes; telemetry rows are cut to it; default 64KiB.
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: ByteSize,
    /// How often the retained status is refreshed, so the platform sees a live gateway and its
    /// backlog; default "60s".
    #[serde(default = "default_status_interval")]
    status_interval: String,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_true() -> bool {
    true
}
fn default_topic_prefix() -> String {
    "zgsz".into()
}
fn default_keepalive() -> String {
    "30s".into()
}
fn default_max_inflight() -> u16 {
    32
}
fn default_max_message_bytes() -> ByteSize {
    ByteSize::Number(64 * 1024)
}
fn default_status_interval() -> String {
    "60s".into()
}

/// Where a sink's topics live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicLayout {
    /// `{prefix}/{region_code}/{uscc}/{gateway_id}/{stream}`: the platform's
    /// namespace, where a city subscribes per region.
    #[default]
    Platform,
    /// `{prefix}/{gateway_id}/{stream}`: an enterprise's own broker.
    Gateway,
}

/// The streams one sink carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carries {
    /// The `metrics` stream: the figures of each window.
    pub metrics: bool,
    /// The `states` stream: equipment state changes, the evidence behind the figures.
    pub states: bool,
    /// The retained `status` and its Last Will: whether the gateway is up, and its backlog.
    pub status: bool,
    /// `None`: no telemetry (raw production data); else which devices and tags, keyed how.
    pub telemetry: Option<crate::buffer::cycle::Selection>,
}

/// One northbound destination.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique; names the sink in logs, `status` and the outbox.
    pub name: String,
    /// The connection to its broker.
    pub mqtt: MqttConfig,
    /// The streams it carries; default metrics, states and status.
    pub carries: Carries,
    /// Where its topics live; default the platform layout.
    pub layout: TopicLayout,
    /// Where the sink's keys are in the file (`mqtt`, `sinks[1]`), so that a failure at run time
    /// can name the keys to check.
    pub key: String,
}

impl SinkConfig {
    /// What the outbox needs to know of this sink.
    pub fn route(&self) -> crate::buffer::Route {
        crate::buffer::Route {
            name: self.name.clone(),
            metrics: self.carries.metrics,
            states: self.carries.states,
            telemetry: self.carries.telemetry.as_ref().map(|t| t.devices.clone()),
        }
    }
}

/// A sink's TLS settings, paths resolved against the config file's folder.
/// The uplink builds its rustls client config from them (`uplink::tls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The CA certificates (PEM) the broker's certificate must chain to;
    /// `None`: the system's CA certificates.
    pub ca_file: Option<PathBuf>,
    /// The gateway's own certificate and key, for brokers that require
    /// mutual TLS; `None`: no client certificate.
    pub client_auth: Option<ClientAuth>,
}

/// A client certificate and its private key (PEM), for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// The gateway's certificate chain (PEM) it presents to the broker.
    pub cert_file: PathBuf,
    /// The private key (PEM) of `cert_file`.
    pub key_file: PathBuf,
}

/// A sink's MQTT connection.
#[derive(Clone)]
pub struct MqttConfig {
    /// The broker's host; default 127.0.0.1.
    pub host: String,
    /// The broker's port; default 8883 with TLS, else 1883.
    pub port: u16,
    /// The TLS settings; `None` means plaintext (only sensible on loopback). Default TLS with the
    /// system's CA certificates.
    pub tls: Option<TlsSettings>,
    /// The broker account, for login; default none.
    pub username: Option<String>,
    /// The account's password, read from its file or variable at load; default none.
    pub password: Option<Secret>,
    /// Unique per broker; default `zgsz-<gateway_id>` (plus `-<name>` beside the platform).
    pub client_id: String,
    /// The first topic level; default "zgsz".
    pub topic_prefix: String,
    /// How soon a dead connection is noticed; default 30 s.
    pub keepalive: Duration,
    /// Unacknowledged messages in flight; default 32.
    pub max_inflight: u16,
    /// Largest message to this broker; default 64 KiB.
    pub max_message_bytes: usize,
    /// How often the retained status is refreshed; default 60 s.
    pub status_interval: Duration,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

/// Validates `[mqtt]` and `[[sinks]]` into the sinks, `[mqtt]` first.
pub(super) fn validate_all(
    mqtt: Option<RawSink>,
    sinks: Vec<RawSink>,
    base: &Path,
    gateway_id: &str,
    enterprise: &Enterprise,
    p: &mut Problems,
) -> Vec<Arc<SinkConfig>> {
    if mqtt.is_none() && sinks.is_empty() {
        p.error(
            "mqtt",
            "no northbound destination; add [mqtt] with the platform broker's host (or [[sinks]])",
        );
    }
    let mut out: Vec<Arc<SinkConfig>> = Vec::new();
    let all = mqtt.into_iter().map(|m| ("mqtt".to_string(), m)).chain(
        sinks
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("sinks[{i}]"), s)),
    );
    for (key, raw) in all {
        let s = validate_sink(raw, &key, base, gateway_id, enterprise, p);
        if out.iter().any(|o| o.name == s.name) {
            p.error(
                format!("{key}.name"),
                format!(
                    "{:?} is already the name of another sink; give every sink its own name",
                    s.name
                ),
            );
        }
        if let Some(o) = out.iter().find(|o| {
            o.mqtt.host == s.mqtt.host
                && o.mqtt.port == s.mqtt.port
                && o.mqtt.client_id == s.mqtt.client_id
        }) {
            p.error(
                format!("{key}.client_id"),
                format!(
                    "{:?} is also sink {:?}'s client id on the same broker, which would drop one connection for the other; give each sink its own client_id",
                    s.mqtt.client_id, o.name
                ),
            );
        }
        out.push(Arc::new(s));
    }
    out
}

#[allow(
    clippy::too_many_lines,
    reason = "checks every key of one [[sinks]] entry in file order into one list of problems; not split yet"
)]
fn validate_sink(
    m: RawSink,
    key: &str,
    base: &Path,
    gateway_id: &str,
    enterprise: &Enterprise,
    p: &mut Problems,
) -> SinkConfig {
    let k = |s: &str| format!("{key}.{s}");
    let name = match (&m.name, key) {
        (Some(n), _) => n.clone(),
        (None, "mqtt") => PLATFORM.to_string(),
        (None, _) => {
            p.error(
                k("name"),
                "is missing; name every [[sinks]] entry, e.g. name = \"enterprise\"",
            );
            key.replace(['[', ']'], "")
        }
    };
    if !is_id(&name) {
        p.error(
            k("name"),
            format!("{name:?} must be 1 to 64 letters, digits, '-' or '_'"),
        );
    }
    let carries = carries(&m, &k, p);
    if carries.telemetry.is_some() && m.topic_layout == TopicLayout::Platform {
        p.warn(
            k("carries"),
            format!(
                "sends telemetry (raw production data) to topics under {}/{}, the platform's namespace; \
                 the city needs only metrics, states and status. For the enterprise's own broker set topic_layout = \"gateway\"",
                enterprise.region_code, enterprise.uscc
            ),
        );
    }
    let max_message_bytes = match m.max_message_bytes.bytes() {
        Some(b) if (1024..=16 << 20).contains(&b) => b as usize,
        _ => {
            p.error(
                k("max_message_bytes"),
                "must be a size between 1KiB and 16MiB, e.g. \"64KiB\"",
            );
            64 * 1024
        }
    };
    if m.topic_prefix.is_empty()
        || m.topic_prefix.contains(['+', '#'])
        || m.topic_prefix.starts_with('/')
        || m.topic_prefix.ends_with('/')
    {
        p.error(
            k("topic_prefix"),
            format!(
                "{:?} must be non-empty, without '+', '#' or a leading/trailing '/'",
                m.topic_prefix
            ),
        );
    }
    if m.max_inflight == 0 {
        p.error(k("max_inflight"), "must be at least 1");
    }
    let tls = tls(base, &m, &k, p);
    let password = password(base, &m, &k, p);
    let port = connection_checks(&m, &k, p);
    let mqtt = MqttConfig {
        host: m.host.clone(),
        port,
        tls,
        username: m.username.clone(),
        password,
        client_id: m.client_id.clone().unwrap_or_else(|| {
            if name == PLATFORM {
                format!("zgsz-{gateway_id}")
            } else {
                format!("zgsz-{gateway_id}-{name}")
            }
        }),
        topic_prefix: m.topic_prefix.clone(),
        keepalive: {
            let ka = duration(p, &k("keepalive"), &m.keepalive, Duration::from_secs(5));
            // MQTT carries keep-alive as 16-bit seconds.
            if ka > Duration::from_secs(65535) {
                p.error(
                    k("keepalive"),
                    "exceeds MQTT's limit of 65535s; 30s to 120s is usual",
                );
            }
            ka
        },
        max_inflight: m.max_inflight,
        max_message_bytes,
        status_interval: duration(
            p,
            &k("status_interval"),
            &m.status_interval,
            Duration::from_secs(1),
        ),
    };

    SinkConfig {
        name,
        mqtt,
        carries,
        layout: m.topic_layout,
        key: key.to_string(),
    }
}

/// `tls` and the keys that need it: the settings, or `None` for plaintext.
fn tls(
    base: &Path,
    m: &RawSink,
    k: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<TlsSettings> {
    let tls = if m.tls {
        tls_settings(base, m, k, p)
    } else {
        for (k_, v) in [
            ("ca_file", &m.ca_file),
            ("client_cert_file", &m.client_cert_file),
            ("client_key_file", &m.client_key_file),
        ] {
            if v.is_some() {
                p.error(
                    k(k_),
                    "is set but tls = false; set tls = true or remove the key",
                );
            }
        }
        None
    };
    if m.require_tls && !m.tls {
        p.error(
            k("tls"),
            "is false but require_tls = true; set tls = true with ca_file",
        );
    }
    tls
}

/// The broker password, from `password_env` or `password_file`, with the
/// checks on both.
fn password(
    base: &Path,
    m: &RawSink,
    k: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<Secret> {
    if m.password_file.is_some() && m.password_env.is_some() {
        p.error(
            k("password_env"),
            "password_file is set too; keep one source of the password",
        );
    }
    for (k_, f) in [
        ("password_file", &m.password_file),
        ("client_key_file", &m.client_key_file),
    ] {
        if let Some(f) = f {
            warn_world_readable(&resolve(base, f), &k(k_), p);
        }
    }
    let from_env = m.password_env.as_ref().and_then(|name| match std::env::var(name) {
        Ok(v) => Some(Secret::new(v)),
        Err(_) => {
            p.error(k("password_env"), format!("environment variable {name} is not set; set it for the agent's service, or use password_file"));
            None
        }
    });
    let password = from_env.or_else(|| {
        m.password_file.as_ref().and_then(|f| {
            let f = resolve(base, f);
            match std::fs::read_to_string(&f) {
                Ok(s) => Some(Secret::new(s.trim_end_matches(['\r', '\n']).to_string())),
                Err(e) => {
                    p.error(
                        k("password_file"),
                        format!(
                        "cannot read {}: {e}; create it with only the password inside, mode 0600",
                        f.display()
                    ),
                    );
                    None
                }
            }
        })
    });
    if password.is_some() && m.username.is_none() {
        p.error(
            k("username"),
            "password_file is set but username is not; MQTT sends a password only with a username",
        );
    }
    password
}

/// The broker's port, host and client id, and a warning for plaintext over
/// the network; returns the port.
fn connection_checks(m: &RawSink, k: &dyn Fn(&str) -> String, p: &mut Problems) -> u16 {
    let port = m.port.unwrap_or(if m.tls { 8883 } else { 1883 });
    if port == 0 {
        p.error(
            k("port"),
            "0 is not a port; the platform's MQTT port is usually 8883 (TLS) or 1883",
        );
    }
    if m.host.trim().is_empty() {
        p.error(
            k("host"),
            "is empty; write the platform broker's host name or address",
        );
    }
    if m.client_id
        .as_deref()
        .is_some_and(|c| c.is_empty() || c.len() > 128)
    {
        p.error(
            k("client_id"),
            "must be 1 to 128 characters; remove it to use zgsz-<gateway_id>",
        );
    }
    if !m.tls && !is_loopback(&m.host) {
        let what = if m.password_file.is_some() {
            "telemetry and the password"
        } else {
            "telemetry"
        };
        p.warn(k("tls"),
            format!("is false for {:?}: {what} would cross the network in plain text; set tls = true and ca_file", m.host),
        );
    }
    port
}

/// Every device a sink's `telemetry_devices` names is configured: a typo
/// would quietly send the enterprise nothing of that machine.
pub(super) fn check_devices(sinks: &[Arc<SinkConfig>], devices: &[&str], p: &mut Problems) {
    for s in sinks {
        let named = s
            .carries
            .telemetry
            .as_ref()
            .and_then(|t| t.devices.as_ref());
        for d in named.into_iter().flatten() {
            if !devices.contains(&&**d) {
                p.error(
                    format!("{}.telemetry_devices", s.key),
                    format!(
                        "{d:?} is not a configured device id; use the id of a [[devices]] entry"
                    ),
                );
            }
        }
    }
}

/// `carries`, `telemetry_devices`, `telemetry_tags` and `telemetry_keys`.
fn carries(m: &RawSink, k: &dyn Fn(&str) -> String, p: &mut Problems) -> Carries {
    let list = m
        .carries
        .clone()
        .unwrap_or_else(|| vec![Stream::Metrics, Stream::States, Stream::Status]);
    let has = |s: Stream| list.contains(&s);
    let mut names = |key: &str, l: &Option<Vec<String>>, check: fn(&str) -> bool| {
        l.as_ref().map(|l| {
            for n in l {
                if !check(n) {
                    p.error(k(key), format!("{n:?} is not a device or tag name"));
                }
            }
            l.iter()
                .map(|n| Arc::from(n.as_str()))
                .collect::<Vec<Arc<str>>>()
        })
    };
    let devices = names("telemetry_devices", &m.telemetry_devices, is_id);
    let tags = names("telemetry_tags", &m.telemetry_tags, is_ident);
    if !has(Stream::Telemetry) {
        for (key, set) in [
            ("telemetry_devices", devices.is_some()),
            ("telemetry_tags", tags.is_some()),
            ("telemetry_keys", m.telemetry_keys.is_some()),
        ] {
            if set {
                p.error(
                    k(key),
                    "is set but carries does not list \"telemetry\"; add it to carries, or remove the key",
                );
            }
        }
    }
    if list.is_empty() {
        p.error(
            k("carries"),
            "is empty; list what this sink carries: \"metrics\", \"states\", \"status\", \"telemetry\"",
        );
    }
    Carries {
        metrics: has(Stream::Metrics),
        states: has(Stream::States),
        status: has(Stream::Status),
        telemetry: has(Stream::Telemetry).then_some(crate::buffer::cycle::Selection {
            devices,
            tags,
            keys: m.telemetry_keys.unwrap_or_default(),
        }),
    }
}

/// The TLS settings of a sink, checked by building the client config the
/// uplink will build (`uplink::tls`), so that `check` refuses what `run`
/// would.
fn tls_settings(
    base: &Path,
    m: &RawSink,
    k: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<TlsSettings> {
    let mut s = TlsSettings {
        ca_file: m.ca_file.as_ref().map(|f| resolve(base, f)),
        client_auth: None,
    };
    let pairing = match (&m.client_cert_file, &m.client_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            s.client_auth = Some(ClientAuth {
                cert_file: resolve(base, cert),
                key_file: resolve(base, key),
            });
            None
        }
        (Some(_), None) => Some((
            "client_key_file",
            "client_cert_file is set, so the matching key file is needed too",
        )),
        (None, Some(_)) => Some((
            "client_cert_file",
            "client_key_file is set, so the matching certificate is needed too",
        )),
    };
    if let Err(e) = crate::uplink::tls::client_config(&s) {
        p.error(k(e.key()), e.to_string());
        return None;
    }
    if let Some((key, why)) = pairing {
        p.error(k(key), why);
        return None;
    }
    Some(s)
}
