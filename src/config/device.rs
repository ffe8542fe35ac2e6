//! `[[devices]]`: the keys every device has (id, where it is, how often it
//! is polled), and the dispatch to its protocol's keys, which are validated
//! next to the code that uses them (`source::<protocol>::config`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, is_id, opcua, AgentConfig, ModbusConfig, Parity, Problems, SerialConfig};
use crate::source::modbus::decode::WordOrder;
use crate::source::modbus::plan::Area;

/// A `[[devices]]` table as written: every protocol's keys in one flat
/// table, so that a key of another protocol is reported by name with the
/// fix ("only applies to protocol = ...") rather than as an unknown field.
/// Each protocol's keys are validated by `source::<protocol>::config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    /// Names the device in equipment rules, telemetry, logs and `read`; required, unique.
    pub(crate) id: String,
    /// How the device is read (`modbus-tcp`, `modbus-rtu`, `modbus-rtu-over-tcp`, `opcua`, `s7`),
    /// which decides the other keys; default modbus-tcp.
    #[serde(default)]
    pub(crate) protocol: Protocol,
    /// Where the device is (`host:port`), for modbus-tcp, modbus-rtu-over-tcp and s7; required for
    /// them.
    pub(crate) address: Option<String>,
    /// The Modbus unit (slave) id, which tells units on one bus or gateway apart; default 1.
    #[serde(default = "default_unit_id")]
    pub(crate) unit_id: u16,
    /// The serial port (ideally /dev/serial/by-id/..., stable across reboots), for modbus-rtu only;
    /// required for it.
    pub(crate) port: Option<String>,
    /// modbus-rtu line speed; must match the unit and every unit on the bus; default 9600.
    pub(crate) baud: Option<u32>,
    /// modbus-rtu parity ("N", "E", "O"); must match the bus; default "N".
    pub(crate) parity: Option<Parity>,
    /// modbus-rtu data bits (7 or 8); must match the bus; default 8.
    pub(crate) data_bits: Option<u8>,
    /// modbus-rtu stop bits (1 or 2); must match the bus; default 1.
    pub(crate) stop_bits: Option<u8>,
    /// How often the device is read: the resolution of every state and figure; default "1s".
    #[serde(default = "default_poll_interval")]
    pub(crate) poll_interval: String,
    /// How long one request may take before the link is dropped and rebuilt (a late reply must not
    /// answer the next request); default "1s".
    #[serde(default = "default_timeout")]
    pub(crate) timeout: String,
    /// Retries of a failed request before the cycle's readings are bad and the device backs off;
    /// default 1.
    #[serde(default = "default_retries")]
    pub(crate) retries: u32,
    /// Unused registers (Modbus) or bytes (S7) one read may span to merge two tags into fewer
    /// requests; default 8.
    #[serde(default = "default_max_gap")]
    pub(crate) max_gap: u16,
    /// Merge neighbouring tags into one request; false reads one request per tag, for devices that
    /// refuse ranges; default true.
    #[serde(default = "default_true")]
    pub(crate) coalesce: bool,
    /// The values read from the device, each named for rules and telemetry; default none.
    #[serde(default)]
    pub(crate) tags: Vec<RawTag>,
    // OPC UA only (see config/opcua.rs).
    /// opcua: the server's endpoint URL (`opc.tcp://host:port`); required for it.
    pub(crate) endpoint: Option<String>,
    /// opcua: how messages are signed and encrypted; default None (plain).
    pub(crate) security_policy: Option<opcua::SecurityPolicy>,
    /// opcua: Sign or SignAndEncrypt; default SignAndEncrypt with a policy, else None.
    pub(crate) security_mode: Option<opcua::SecurityMode>,
    /// opcua: how the gateway logs in (anonymous, username, certificate); default anonymous.
    pub(crate) identity: Option<opcua::IdentityKind>,
    /// opcua: the login name with `identity = "username"`; default none.
    pub(crate) username: Option<String>,
    /// opcua: a file (mode 0600) holding the login's password, so it stays out of the config;
    /// default none.
    pub(crate) password_file: Option<PathBuf>,
    /// opcua: the X.509 user certificate (PEM or DER) with `identity = "certificate"`; default
    /// none.
    pub(crate) user_certificate: Option<PathBuf>,
    /// opcua: the private key of `user_certificate`; default none.
    pub(crate) user_private_key: Option<PathBuf>,
    /// opcua: accept any server certificate (a WARN at every connect), for commissioning only;
    /// default false.
    pub(crate) trust_unknown_server_certs: Option<bool>,
    /// opcua: the machine's root node (a browse path from Objects, or a node id) that tag paths and
    /// profiles start at; default Objects.
    pub(crate) root: Option<String>,
    /// opcua: a built-in profile (e.g. `opcua-machine-tool`) that adds its tags and gives the
    /// equipment its rules; default none.
    pub(crate) profile: Option<String>,
    /// opcua: with a profile, the channels to read; default those the profile finds.
    pub(crate) channels: Option<Vec<String>>,
    // S7 only (see source/s7/config.rs).
    /// s7: the CPU's rack (with `slot`, or TSAPs instead); default none.
    pub(crate) rack: Option<u8>,
    /// s7: the CPU's slot (S7-300 2, S7-400 3, S7-1200/1500 1); default none.
    pub(crate) slot: Option<u8>,
    /// s7: the local TSAP (two hex bytes), for PLCs addressed by TSAPs instead of rack/slot;
    /// default none.
    pub(crate) local_tsap: Option<String>,
    /// s7: the remote TSAP (two hex bytes), with `local_tsap`; default none.
    pub(crate) remote_tsap: Option<String>,
    /// s7: the PDU size asked for (240..=960); the PLC grants its own; default 960.
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
    /// Names the value in rules and telemetry; required, unique per device.
    pub(crate) name: String,
    /// Modbus: the register table (coil, discrete_input, input_register, holding_register);
    /// required for Modbus.
    pub(crate) area: Option<Area>,
    /// Where the value is: a 0-based register number (Modbus) or a STEP 7 address (S7,
    /// `"DB10.DBW2"`); required for both.
    pub(crate) address: Option<RawAddress>,
    /// How the raw data decode (Modbus `u16`, `f32`, ...; S7 `int`, `real`, ...); default bool for
    /// coils and bits, u16 for registers, from the address for S7.
    #[serde(rename = "type")]
    pub(crate) ty: Option<String>,
    /// Modbus: word and byte order of multi-register values, which vendors differ in; default ABCD.
    pub(crate) order: Option<WordOrder>,
    /// Modbus: one bit (0..15) of a register, for status words; default none (the whole register).
    pub(crate) bit: Option<u8>,
    /// Multiplies the raw value into engineering units; default 1.
    pub(crate) scale: Option<f64>,
    /// Added after `scale`; default 0.
    pub(crate) offset: Option<f64>,
    /// The engineering unit, for people reading telemetry; default none.
    pub(crate) unit: Option<String>,
    /// OPC UA: the node id; either it or `path` is required.
    pub(crate) node: Option<String>,
    /// OPC UA: a browse path from the device's `root`, which survives server restarts that renumber
    /// nodes; either it or `node`.
    pub(crate) path: Option<String>,
    /// OPC UA: subscribe (the server reports changes) or poll (a Read every poll interval); default
    /// subscribe.
    pub(crate) mode: Option<opcua::TagMode>,
    /// OPC UA: how often the server samples the value; default the publishing interval.
    pub(crate) sampling_interval: Option<String>,
    /// OPC UA: how often the server sends changes; default the device's poll interval.
    pub(crate) publishing_interval: Option<String>,
    /// OPC UA: changes between two publishes the server keeps; default 10.
    pub(crate) queue_size: Option<u32>,
    /// OPC UA: changes smaller than this are not reported, to save traffic on noisy values; default
    /// none.
    pub(crate) deadband_absolute: Option<f64>,
    /// OPC UA: the deadband as a percentage of the node's EURange; default none.
    pub(crate) deadband_percent: Option<f64>,
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

/// A device: what every protocol shares, and its protocol's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Names the device in rules, telemetry and logs.
    pub id: Arc<str>,
    /// Where the device is: `host:port` as written (resolved at every connect so DNS changes
    /// apply), the serial port for modbus-rtu, or the endpoint URL for opcua.
    pub address: String,
    /// How often the device is read; default 1 s.
    pub poll_interval: Duration,
    /// How long one request may take before the connection is dropped; default 1 s.
    pub timeout: Duration,
    /// Retries of a failed request before backing off; default 1.
    pub retries: u32,
    /// The protocol and the settings only it has, validated by `source::<protocol>::config`.
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

/// `[[devices]]`: each device, then the checks across devices.
pub(crate) fn validate_all(
    raw: Vec<RawDevice>,
    base: &Path,
    agent: &AgentConfig,
    p: &mut Problems,
) -> Vec<Arc<DeviceConfig>> {
    let mut devices = Vec::new();
    let mut seen_ids: HashMap<String, usize> = HashMap::new();
    for (di, d) in raw.into_iter().enumerate() {
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
        devices.push(Arc::new(validate_device(d, &key, base, agent, p)));
    }
    crate::source::modbus::config::check_buses(&devices, p);
    if devices.is_empty() && !p.has_errors() {
        p.warn(
            "devices",
            "no devices are configured; the agent will only publish its status",
        );
    }
    devices
}
