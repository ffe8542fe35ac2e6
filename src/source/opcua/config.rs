//! OPC UA device settings: the typed values, and their validation.
//!
//! Node ids are parsed here, once, so a typo fails `check` rather than the
//! first connect. Browse paths cannot be checked without the server: they
//! are resolved at every connect, and a path that matches nothing gives
//! that tag a bad quality, not the device.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opcua::types::NodeId;
use serde::Deserialize;

use super::profile;
use crate::config::{
    duration, is_ident, resolve, warn_world_readable, Problems, RawDevice, RawTag, Secret,
};

/// Message security policy, named as in the OPC UA specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityPolicy {
    #[default]
    None,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// The policy's name as the OPC UA crate and the specification write it.
    pub fn name(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityMode {
    #[default]
    None,
    Sign,
    SignAndEncrypt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    #[default]
    Anonymous,
    Username,
    Certificate,
}

/// Who the agent logs in as.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    Anonymous,
    UserName {
        user: String,
        password: Secret,
    },
    /// An X.509 user certificate (DER or PEM) and its private key (PEM).
    Certificate {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Where a tag's node is.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeRef {
    Id(NodeId),
    /// Browse names from the device's root (or the Objects folder). A
    /// segment matches a child's browse name by name, in any namespace,
    /// unless written `<ns>:Name`; `*` matches the first child, in browse
    /// name order, under which the rest of the path exists.
    Path(Vec<String>),
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Id(id) => write!(f, "{id}"),
            NodeRef::Path(p) => f.write_str(&p.join("/")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagMode {
    /// A monitored item: the server reports changes (with deadband).
    #[default]
    Subscribe,
    /// A Read every poll interval, for servers with weak subscription support.
    Poll,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    Absolute(f64),
    /// Of the node's EURange; the server must know the range.
    Percent(f64),
}

/// What the plant rules may assume a tag holds; the server decides the
/// real type, and a mismatch just makes the rule unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Num,
    Bool,
    Str,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaTag {
    /// Names the value in rules and telemetry; unique per device.
    pub name: Arc<str>,
    /// The node read: an id, or a browse path resolved at every connect (node ids may change when
    /// the server restarts).
    pub node: NodeRef,
    /// Subscribe (the server reports changes) or poll (a Read every poll interval, for weak
    /// servers); default subscribe.
    pub mode: TagMode,
    /// How often the server samples the value; default the publishing interval.
    pub sampling_interval: Duration,
    /// How often the server sends changes: tags sharing it share a subscription; default the
    /// device's poll interval.
    pub publishing_interval: Duration,
    /// Changes between two publishes the server keeps, so short pulses are not lost; default 10.
    pub queue_size: u32,
    /// Changes smaller than this are not reported, to save traffic on noisy values; default none.
    pub deadband: Option<Deadband>,
    /// What the plant rules may assume the value is, checked at load; default number.
    pub kind: ValueKind,
    /// From a profile: a node the standard allows to be absent. Absent,
    /// it is left out (logged once) instead of being reported bad forever.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaDevice {
    /// `opc.tcp://host:port/path`, as written.
    pub endpoint: String,
    /// How messages are signed and encrypted; default None.
    pub policy: SecurityPolicy,
    /// Sign or SignAndEncrypt; default SignAndEncrypt with a policy, else None.
    pub mode: SecurityMode,
    /// How the gateway logs in (anonymous, a user name, a user certificate); default anonymous.
    pub identity: Identity,
    /// Accept any server certificate (logged as a WARN at every connect), for commissioning only;
    /// default false.
    pub trust_unknown_server_certs: bool,
    /// The machine's root node, where tag paths and profiles start; default `None`, the Objects
    /// folder.
    pub root: Option<NodeRef>,
    /// The built-in profile whose tags were added, e.g. opcua-machine-tool; default none.
    pub profile: Option<String>,
    /// The values read each cycle, the profile's included.
    pub tags: Vec<OpcUaTag>,
    /// `<state_dir>/pki`: the gateway's certificate and the trust list.
    pub pki_dir: PathBuf,
    /// Goes into the application URI of the gateway's certificate.
    pub gateway_id: String,
}

impl OpcUaDevice {
    pub fn tag_kind(&self, name: &str) -> Option<ValueKind> {
        self.tags.iter().find(|t| &*t.name == name).map(|t| t.kind)
    }
}

/// Reports every key of `keys` that is set as not belonging here; `why`
/// says what to write instead.
fn not_here(p: &mut Problems, prefix: &str, keys: &[(&str, bool)], why: &str) {
    for (k, set) in keys {
        if *set {
            p.error(format!("{prefix}.{k}"), why);
        }
    }
}

/// Parses `ns=2;s=...`, `i=85` and the other forms of OPC UA Part 6 5.3.1.10.
pub fn parse_node_id(s: &str) -> Option<NodeId> {
    s.parse::<NodeId>().ok()
}

fn parse_path(s: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = s
        .trim_matches('/')
        .split('/')
        .map(|x| x.trim().to_string())
        .collect();
    (!segs.iter().any(String::is_empty)).then_some(segs)
}

/// Splits `2:Name` into a namespace index and a name.
pub fn split_segment(seg: &str) -> (Option<u16>, &str) {
    match seg.split_once(':') {
        Some((ns, name)) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) => {
            (ns.parse().ok(), name)
        }
        _ => (None, seg),
    }
}

/// An endpoint URL that is not `opc.tcp://host[:port][/path]`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} must start with opc.tcp://, e.g. \"opc.tcp://192.168.10.21:4840\"")]
    Scheme(String),
    #[error("{0:?} has no host; write e.g. \"opc.tcp://192.168.10.21:4840\"")]
    NoHost(String),
    #[error("{url:?}: {port:?} is not a port; OPC UA servers usually listen on 4840")]
    Port { url: String, port: String },
}

/// Checks `opc.tcp://host[:port][/path]`.
pub fn check_endpoint(url: &str) -> Result<(), EndpointError> {
    let Some(rest) = url.strip_prefix("opc.tcp://") else {
        return Err(EndpointError::Scheme(url.to_string()));
    };
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (hostport, None),
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    };
    if host.is_empty() {
        return Err(EndpointError::NoHost(url.to_string()));
    }
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(EndpointError::Port {
                url: url.to_string(),
                port: p.to_string(),
            });
        }
    }
    Ok(())
}

/// Validates the OPC UA keys of `d` (protocol = "opcua").
#[allow(
    clippy::too_many_lines,
    reason = "checks every key of one OPC UA device in file order into one list of problems; not split yet"
)]
pub(crate) fn validate(
    d: &mut RawDevice,
    key: &str,
    base: &std::path::Path,
    agent: (&std::path::Path, &str),
    poll_interval: Duration,
    p: &mut Problems,
) -> OpcUaDevice {
    // Modbus keys on an OPC UA device are a copy-paste slip.
    not_here(
        p,
        key,
        &[
            ("address", d.address.is_some()),
            ("port", d.port.is_some()),
            ("baud", d.baud.is_some()),
            ("parity", d.parity.is_some()),
            ("data_bits", d.data_bits.is_some()),
            ("stop_bits", d.stop_bits.is_some()),
        ],
        "is a Modbus key; an opcua device is reached at endpoint = \"opc.tcp://host:4840\" (remove it)",
    );
    let endpoint = match &d.endpoint {
        Some(url) => {
            if let Err(why) = check_endpoint(url) {
                p.error(format!("{key}.endpoint"), why.to_string());
            }
            url.clone()
        }
        None => {
            p.error(
                format!("{key}.endpoint"),
                "is missing; an opcua device needs endpoint = \"opc.tcp://host:4840\" (the server's endpoint URL)",
            );
            String::new()
        }
    };
    let policy = d.security_policy.unwrap_or_default();
    let mode = d.security_mode.unwrap_or(match policy {
        SecurityPolicy::None => SecurityMode::None,
        _ => SecurityMode::SignAndEncrypt,
    });
    match (policy, mode) {
        (SecurityPolicy::None, SecurityMode::None) => {}
        (SecurityPolicy::None, _) => p.error(
            format!("{key}.security_mode"),
            format!("{mode:?} needs a security policy; set security_policy = \"Basic256Sha256\" (or Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss)"),
        ),
        (_, SecurityMode::None) => p.error(
            format!("{key}.security_mode"),
            format!("None sends in plain text, which makes security_policy = {:?} meaningless; use \"Sign\" or \"SignAndEncrypt\"", policy.name()),
        ),
        _ => {}
    }
    let identity = match d.identity.unwrap_or_default() {
        IdentityKind::Anonymous => {
            not_here(
                p,
                key,
                &[
                    ("username", d.username.is_some()),
                    ("password_file", d.password_file.is_some()),
                    ("user_certificate", d.user_certificate.is_some()),
                    ("user_private_key", d.user_private_key.is_some()),
                ],
                "is set but identity is anonymous; set identity = \"username\" or \"certificate\", or remove it",
            );
            Identity::Anonymous
        }
        IdentityKind::Username => {
            let user = d.username.clone().unwrap_or_else(|| {
                p.error(
                    format!("{key}.username"),
                    "is missing; identity = \"username\" needs username and password_file",
                );
                String::new()
            });
            let password = match &d.password_file {
                Some(f) => {
                    let f = resolve(base, f);
                    warn_world_readable(&f, &format!("{key}.password_file"), p);
                    match std::fs::read_to_string(&f) {
                        Ok(s) => Secret::new(s.trim_end_matches(['\r', '\n'])),
                        Err(e) => {
                            p.error(
                                format!("{key}.password_file"),
                                format!("cannot read {}: {e}; create it with only the password inside, mode 0600", f.display()),
                            );
                            Secret::new(String::new())
                        }
                    }
                }
                None => {
                    p.error(
                        format!("{key}.password_file"),
                        "is missing; identity = \"username\" needs a file holding the password (mode 0600)",
                    );
                    Secret::new(String::new())
                }
            };
            Identity::UserName { user, password }
        }
        IdentityKind::Certificate => {
            let mut file = |k: &str, v: &Option<PathBuf>, what: &str| -> PathBuf {
                match v {
                    Some(f) => {
                        let f = resolve(base, f);
                        if !f.is_file() {
                            p.error(
                                format!("{key}.{k}"),
                                format!("{} does not exist; {what}", f.display()),
                            );
                        }
                        f
                    }
                    None => {
                        p.error(
                            format!("{key}.{k}"),
                            format!("is missing; identity = \"certificate\" needs {what}"),
                        );
                        PathBuf::new()
                    }
                }
            };
            let cert = file(
                "user_certificate",
                &d.user_certificate,
                "the user certificate (DER or PEM) the server's administrator registered",
            );
            let key_file = file(
                "user_private_key",
                &d.user_private_key,
                "the certificate's private key (PEM, mode 0600)",
            );
            warn_world_readable(&key_file, &format!("{key}.user_private_key"), p);
            Identity::Certificate {
                cert,
                key: key_file,
            }
        }
    };
    let trust = d.trust_unknown_server_certs.unwrap_or(false);
    if trust {
        p.warn(
            format!("{key}.trust_unknown_server_certs"),
            "is true: any server certificate is accepted, so a man in the middle goes unnoticed; copy the server's certificate into pki/trusted instead",
        );
    }
    let root = d
        .root
        .as_deref()
        .map(|r| node_ref(r, &format!("{key}.root"), p));

    let mut tags: Vec<OpcUaTag> = Vec::new();
    let raw_tags = std::mem::take(&mut d.tags);
    let none_written = raw_tags.is_empty();
    for (ti, t) in raw_tags.into_iter().enumerate() {
        let tkey = format!("{key}.tags[{ti}]");
        if let Some(tag) = validate_tag(t, &tkey, poll_interval, p) {
            tags.push(tag);
        }
    }
    let profile = d.profile.clone();
    if let Some(name) = &profile {
        match profile::tags(name, d.channels.as_deref(), poll_interval) {
            Ok(extra) => {
                if root.is_none() {
                    p.error(
                        format!("{key}.root"),
                        format!("is missing; profile {name:?} resolves its nodes under the machine's root, e.g. root = \"Machines/DMG-01\" (a browse path from Objects) or \"ns=3;s=Machine1\""),
                    );
                }
                // Tags written by hand win over the profile's.
                for t in extra {
                    if !tags.iter().any(|x| x.name == t.name) {
                        tags.push(t);
                    }
                }
            }
            Err(why) => p.error(format!("{key}.profile"), why.to_string()),
        }
    } else if d.channels.is_some() {
        p.error(
            format!("{key}.channels"),
            "only applies with profile = \"opcua-machine-tool\"; remove it",
        );
    }
    if none_written && profile.is_none() {
        p.error(
            format!("{key}.tags"),
            "is empty; add [[devices.tags]] with node = \"ns=2;s=...\" or path = \"...\" (`zgsz-agent browse` prints them), or set profile = \"opcua-machine-tool\"",
        );
    }
    OpcUaDevice {
        endpoint,
        policy,
        mode,
        identity,
        trust_unknown_server_certs: trust,
        root,
        profile,
        tags,
        pki_dir: agent.0.join("pki"),
        gateway_id: agent.1.to_string(),
    }
}

fn node_ref(s: &str, key: &str, p: &mut Problems) -> NodeRef {
    let looks_like_id = ["ns=", "i=", "s=", "g=", "b=", "nsu="]
        .iter()
        .any(|pre| s.starts_with(pre));
    if looks_like_id {
        match parse_node_id(s) {
            Some(id) => NodeRef::Id(id),
            None => {
                p.error(key, format!("{s:?} is not a node id; write e.g. \"ns=2;s=Channel1.State\" or \"ns=3;i=1001\""));
                NodeRef::Path(Vec::new())
            }
        }
    } else {
        match parse_path(s) {
            Some(segs) => NodeRef::Path(segs),
            None => {
                p.error(key, format!("{s:?} is not a browse path; write browse names separated by '/', e.g. \"Machines/DMG-01\""));
                NodeRef::Path(Vec::new())
            }
        }
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "checks every key of one OPC UA tag in file order into one list of problems; not split yet"
)]
fn validate_tag(t: RawTag, tkey: &str, poll: Duration, p: &mut Problems) -> Option<OpcUaTag> {
    if !is_ident(&t.name) {
        p.error(format!("{tkey}.name"), format!("{:?} must start with a letter or '_' and use only letters, digits and '_' (it is used in expressions)", t.name));
    }
    not_here(
        p,
        tkey,
        &[
            ("area", t.area.is_some()),
            ("address", t.address.is_some()),
            ("bit", t.bit.is_some()),
            ("order", t.order.is_some()),
            ("scale", t.scale.is_some()),
            ("offset", t.offset.is_some()),
        ],
        "is a Modbus key; an OPC UA tag names its node with node = \"ns=2;s=...\" or path = \"...\" (remove it)",
    );
    let node = match (&t.node, &t.path) {
        (Some(_), Some(_)) => {
            p.error(
                format!("{tkey}.path"),
                "node is set too; give either node (a node id) or path (a browse path)",
            );
            return None;
        }
        (Some(n), None) => match parse_node_id(n) {
            Some(id) => NodeRef::Id(id),
            None => {
                p.error(format!("{tkey}.node"), format!("{n:?} is not a node id; write e.g. \"ns=2;s=Channel1.State\" or \"ns=3;i=1001\" (for a browse path use path = \"...\")"));
                return None;
            }
        },
        (None, Some(path)) => match parse_path(path) {
            Some(segs) => NodeRef::Path(segs),
            None => {
                p.error(format!("{tkey}.path"), format!("{path:?} is not a browse path; write browse names separated by '/', e.g. \"Monitoring/MachineTool/OperationMode\""));
                return None;
            }
        },
        (None, None) => {
            p.error(
                format!("{tkey}.node"),
                "is missing; give node = \"ns=2;s=...\" or path = \"Monitoring/...\" (relative to the device's root)",
            );
            return None;
        }
    };
    let kind = match t.ty.as_deref() {
        None | Some("number") => ValueKind::Num,
        Some("bool") => ValueKind::Bool,
        Some("string") => ValueKind::Str,
        Some(other) => {
            p.error(
                format!("{tkey}.type"),
                format!("{other:?}: an OPC UA tag's type is what rules may assume, one of \"number\" (default), \"bool\", \"string\"; the server sends its own data type"),
            );
            ValueKind::Num
        }
    };
    let mode = t.mode.unwrap_or_default();
    let interval = |k: &str, v: &Option<String>, default: Duration, p: &mut Problems| match v {
        Some(s) => duration(p, &format!("{tkey}.{k}"), s, Duration::ZERO),
        None => default,
    };
    let publishing_interval = interval("publishing_interval", &t.publishing_interval, poll, p);
    let sampling_interval = interval(
        "sampling_interval",
        &t.sampling_interval,
        publishing_interval,
        p,
    );
    let queue_size = t.queue_size.unwrap_or(10);
    if !(1..=10_000).contains(&queue_size) {
        p.error(
            format!("{tkey}.queue_size"),
            format!("{queue_size} is out of range; use 1..=10000 (changes between two publishes that the server keeps)"),
        );
    }
    let deadband = match (t.deadband_absolute, t.deadband_percent) {
        (Some(_), Some(_)) => {
            p.error(
                format!("{tkey}.deadband_percent"),
                "deadband_absolute is set too; use one",
            );
            None
        }
        (Some(a), None) if a.is_finite() && a >= 0.0 => Some(Deadband::Absolute(a)),
        (None, Some(pc)) if (0.0..=100.0).contains(&pc) => Some(Deadband::Percent(pc)),
        (Some(a), None) => {
            p.error(
                format!("{tkey}.deadband_absolute"),
                format!("{a} must be a finite number >= 0 in the value's unit"),
            );
            None
        }
        (None, Some(pc)) => {
            p.error(
                format!("{tkey}.deadband_percent"),
                format!("{pc} must be 0..=100 (percent of the node's EURange)"),
            );
            None
        }
        (None, None) => None,
    };
    if mode == TagMode::Poll {
        not_here(
            p,
            tkey,
            &[
                ("sampling_interval", t.sampling_interval.is_some()),
                ("publishing_interval", t.publishing_interval.is_some()),
                ("queue_size", t.queue_size.is_some()),
                ("deadband_absolute", t.deadband_absolute.is_some()),
                ("deadband_percent", t.deadband_percent.is_some()),
            ],
            "only applies to mode = \"subscribe\"; a polled tag is read every poll_interval (remove it)",
        );
    }
    Some(OpcUaTag {
        name: t.name.as_str().into(),
        node,
        mode,
        sampling_interval,
        publishing_interval,
        queue_size,
        deadband,
        kind,
        optional: false,
    })
}

/// OPC UA keys on a Modbus device or tag are a copy-paste slip too.
pub(crate) fn reject_on_modbus(d: &RawDevice, key: &str, p: &mut Problems) {
    not_here(
        p,
        key,
        &[
            ("endpoint", d.endpoint.is_some()),
            ("security_policy", d.security_policy.is_some()),
            ("security_mode", d.security_mode.is_some()),
            ("identity", d.identity.is_some()),
            ("username", d.username.is_some()),
            ("password_file", d.password_file.is_some()),
            ("user_certificate", d.user_certificate.is_some()),
            ("user_private_key", d.user_private_key.is_some()),
            (
                "trust_unknown_server_certs",
                d.trust_unknown_server_certs.is_some(),
            ),
            ("root", d.root.is_some()),
            ("profile", d.profile.is_some()),
            ("channels", d.channels.is_some()),
        ],
        &format!(
            "only applies to protocol = \"opcua\" (this device is {}); remove it",
            d.protocol.name()
        ),
    );
    for (ti, t) in d.tags.iter().enumerate() {
        not_here(
            p,
            &format!("{key}.tags[{ti}]"),
            &[
                ("node", t.node.is_some()),
                ("path", t.path.is_some()),
                ("mode", t.mode.is_some()),
                ("sampling_interval", t.sampling_interval.is_some()),
                ("publishing_interval", t.publishing_interval.is_some()),
                ("queue_size", t.queue_size.is_some()),
                ("deadband_absolute", t.deadband_absolute.is_some()),
                ("deadband_percent", t.deadband_percent.is_some()),
            ],
            "only applies to OPC UA tags; a Modbus tag is placed with area and address (remove it)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("opc.tcp://127.0.0.1:4840").is_ok());
        assert!(check_endpoint("opc.tcp://plc-7:4840/UA/Server").is_ok());
        assert!(check_endpoint("opc.tcp://[::1]:4840/").is_ok());
        assert!(check_endpoint("opc.tcp://host").is_ok());
        assert!(check_endpoint("http://host:4840").is_err());
        assert!(check_endpoint("opc.tcp://:4840").is_err());
        assert!(check_endpoint("opc.tcp://host:99999").is_err());
    }

    #[test]
    fn segments() {
        assert_eq!(split_segment("3:Monitoring"), (Some(3), "Monitoring"));
        assert_eq!(split_segment("Monitoring"), (None, "Monitoring"));
        assert_eq!(split_segment("a:b"), (None, "a:b"));
        assert_eq!(
            parse_path("/Machines/DMG-01/"),
            Some(vec!["Machines".to_string(), "DMG-01".to_string()])
        );
        assert_eq!(parse_path("a//b"), None);
    }
}
