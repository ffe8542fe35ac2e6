//! The Modbus keys of a device and its tags, validated into typed values:
//! the unit id, the request plan's `max_gap` and `coalesce`, register and
//! coil tags, and for modbus-rtu the serial port and its line settings.
//! Also the checks across devices that share an RTU bus or a TCP address.
//!
//! Every problem is collected with its key path; the config loader reports
//! them with the file name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::decode::{DataType, WordOrder};
use super::plan::Area;
use crate::config::{is_ident, DeviceConfig, Problems, Protocol, RawAddress, RawDevice};

/// Serial parity, written as in "9600 8N1".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum Parity {
    #[default]
    N,
    E,
    O,
}

/// The line settings of a serial port; every unit on one port shares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialConfig {
    /// Line speed in bit/s; every unit on the port must use it; default 9600.
    pub baud: u32,
    /// Parity bit (N, E, O); must match every unit on the port; default N.
    pub parity: Parity,
    /// Data bits per character (7 or 8); default 8.
    pub data_bits: u8,
    /// Stop bits per character (1 or 2); default 1.
    pub stop_bits: u8,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            baud: 9600,
            parity: Parity::N,
            data_bits: 8,
            stop_bits: 1,
        }
    }
}

impl SerialConfig {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::N)
            + u32::from(self.stop_bits)
    }

    /// Time one character takes on the wire.
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)))
    }

    /// The silence that ends an RTU frame: 3.5 character times, fixed at
    /// 1.75 ms above 19200 baud (Modbus over serial line, 2.5.1.1).
    pub fn inter_frame_gap(&self) -> Duration {
        if self.baud > 19200 {
            Duration::from_micros(1750)
        } else {
            self.char_time().mul_f64(3.5)
        }
    }

    /// "9600 8N1".
    pub fn describe(&self) -> String {
        format!(
            "{} {}{:?}{}",
            self.baud, self.data_bits, self.parity, self.stop_bits
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagConfig {
    /// Names the value in rules and telemetry; unique per device.
    pub name: Arc<str>,
    /// The register table it is read from (coils, discrete inputs, input or holding registers).
    pub area: Area,
    /// The first register (or bit), 0-based as on the wire.
    pub address: u16,
    /// How the registers decode; default bool for bits, u16 for registers.
    pub ty: DataType,
    /// Word and byte order of multi-register values, which vendors differ in; default ABCD.
    pub order: WordOrder,
    /// One bit (0..15) of a register, for status words; default `None`, the whole register.
    pub bit: Option<u8>,
    /// Multiplies the raw value into engineering units; default 1.
    pub scale: f64,
    /// Added after `scale`; default 0.
    pub offset: f64,
    /// The engineering unit, for people reading telemetry; default none.
    pub unit: Option<String>,
}

impl TagConfig {
    /// Registers (or bits) this tag occupies.
    pub fn span(&self) -> u16 {
        if self.area.is_bits() {
            1
        } else {
            self.ty.registers()
        }
    }
}

/// A Modbus device's validated settings, whichever the framing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModbusConfig {
    /// The unit (station) id the requests are addressed to; default 1.
    pub unit_id: u8,
    /// Unused registers a merged read may span between two tags, to need fewer requests; default 8.
    pub max_gap: u16,
    /// Whether tags may be merged into one request at all (some devices refuse ranges); default
    /// true.
    pub coalesce: bool,
    /// The values read each cycle, in config order.
    pub tags: Vec<TagConfig>,
}

/// A modbus-rtu device's serial port and line settings; `address` is for
/// the TCP protocols.
pub(crate) fn serial_endpoint(
    d: &RawDevice,
    key: &str,
    p: &mut Problems,
) -> (String, SerialConfig) {
    if let Some(a) = &d.address {
        p.error(
            format!("{key}.address"),
            format!("{a:?}: address is for the TCP protocols; a modbus-rtu device names its serial port with port = \"/dev/serial/by-id/...\" (or set protocol = \"modbus-rtu-over-tcp\" for a serial device server)"),
        );
    }
    let port = match &d.port {
        Some(port) if !port.trim().is_empty() => port.clone(),
        _ => {
            p.error(
                format!("{key}.port"),
                "is missing; a modbus-rtu device needs its serial port, e.g. port = \"/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0\" (a stable name) or \"/dev/ttyUSB0\"",
            );
            String::new()
        }
    };
    let mut serial = SerialConfig::default();
    if let Some(baud) = d.baud {
        if (300..=4_000_000).contains(&baud) {
            serial.baud = baud;
        } else {
            p.error(
                format!("{key}.baud"),
                format!("{baud} is not a serial line speed; use the device's setting, e.g. 9600, 19200 or 115200"),
            );
        }
    }
    if let Some(parity) = d.parity {
        serial.parity = parity;
    }
    match d.data_bits {
        None | Some(8) => {}
        Some(7) => p.error(
            format!("{key}.data_bits"),
            "7 data bits is Modbus ASCII, which the agent does not speak; Modbus RTU always uses 8 (remove the key)",
        ),
        Some(other) => p.error(
            format!("{key}.data_bits"),
            format!("{other} is not valid for Modbus RTU, which always uses 8 data bits; remove the key"),
        ),
    }
    match d.stop_bits {
        None => {}
        Some(n @ (1 | 2)) => serial.stop_bits = n,
        Some(other) => p.error(
            format!("{key}.stop_bits"),
            format!(
                "{other} is not a number of stop bits; use 1 or 2 (2 is usual with parity = \"N\")"
            ),
        ),
    }
    (port, serial)
}

/// The keys every Modbus framing shares: unit id, plan and tags.
#[allow(
    clippy::too_many_lines,
    reason = "mostly one problem message per way a tag can be wrong, checked in the order the keys are read so problems come out in that order"
)]
pub(crate) fn validate(d: &mut RawDevice, key: &str, p: &mut Problems) -> ModbusConfig {
    // 0 is broadcast (no answer ever comes); 248..=254 are reserved; 255 is
    // the usual "don't care" id of Modbus TCP devices, and means nothing on
    // a serial bus.
    let unit_id = match d.unit_id {
        1..=247 => d.unit_id as u8,
        255 if d.protocol == Protocol::ModbusTcp => 255,
        255 => {
            p.error(format!("{key}.unit_id"), format!("255 is only for Modbus TCP devices that ignore the unit id; on a {} bus use the device's station number, 1..=247", d.protocol.name()));
            1
        }
        other => {
            p.error(format!("{key}.unit_id"), format!("{other} is not a unit id a device answers to; use 1..=247 (or 255 for TCP-only devices)"));
            1
        }
    };
    if d.max_gap > 125 {
        p.error(
            format!("{key}.max_gap"),
            format!(
                "{} exceeds one request (125 registers); use 0..=125",
                d.max_gap
            ),
        );
    }

    let mut tags: Vec<TagConfig> = Vec::new();
    let mut tag_keys: Vec<String> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (ti, t) in std::mem::take(&mut d.tags).into_iter().enumerate() {
        let tkey = format!("{key}.tags[{ti}]");
        if !is_ident(&t.name) {
            p.error(format!("{tkey}.name"), format!("{:?} must start with a letter or '_' and use only letters, digits and '_' (it is used in expressions)", t.name));
        }
        let first = *names.entry(t.name.clone()).or_insert(ti);
        if first != ti {
            p.error(
                format!("{tkey}.name"),
                format!("{:?} is already used by {key}.tags[{first}]", t.name),
            );
        }
        let address = match t.address {
            Some(RawAddress::Number(n)) => Some(n),
            Some(RawAddress::Text(text)) => {
                p.error(format!("{tkey}.address"), format!("{text:?}: a Modbus address is a number (0-based, e.g. 0 for register 40001); text addresses such as \"DB10.DBW2\" are for protocol = \"s7\""));
                continue;
            }
            None => None,
        };
        let (Some(area), Some(address)) = (t.area, address) else {
            let k = if t.area.is_none() { "area" } else { "address" };
            p.error(
                format!("{tkey}.{k}"),
                "is missing; a Modbus tag needs area (holding_register, input_register, coil or discrete_input) and address (0-based)",
            );
            continue;
        };
        let (order, scale, offset) = (
            t.order.unwrap_or_default(),
            t.scale.unwrap_or(1.0),
            t.offset.unwrap_or(0.0),
        );
        let ty_text = t.ty.clone().unwrap_or_else(|| {
            if area.is_bits() || t.bit.is_some() {
                "bool".into()
            } else {
                "u16".into()
            }
        });
        let Some(ty) = DataType::parse(&ty_text) else {
            p.error(format!("{tkey}.type"), format!("unknown type {ty_text:?}; use one of bool, u16, i16, u32, i32, u64, i64, f32, f64, string(N) with N in 1..=250"));
            continue;
        };
        if area.is_bits() && ty != DataType::Bool {
            p.error(
                format!("{tkey}.type"),
                format!("a {} holds single bits; use type = \"bool\"", area.name()),
            );
            continue;
        }
        if let Some(bit) = t.bit {
            if area.is_bits() {
                p.error(
                    format!("{tkey}.bit"),
                    "bit only applies to registers; remove it for a coil or discrete input",
                );
            } else if ty != DataType::Bool {
                p.error(
                    format!("{tkey}.bit"),
                    "a bit of a register is a bool; set type = \"bool\" or remove bit",
                );
            } else if bit > 15 {
                p.error(
                    format!("{tkey}.bit"),
                    format!("{bit} is not a bit of a 16-bit register; use 0 (LSB) ..= 15"),
                );
            }
        }
        if !scale.is_finite() || scale == 0.0 {
            p.error(format!("{tkey}.scale"), "must be a finite, non-zero number");
        }
        if !offset.is_finite() {
            p.error(format!("{tkey}.offset"), "must be a finite number");
        }
        let tag = TagConfig {
            name: t.name.as_str().into(),
            area,
            address: address.min(65535) as u16,
            ty,
            order,
            bit: t.bit,
            scale,
            offset,
            unit: t.unit,
        };
        let end = u64::from(address) + u64::from(tag.span()) - 1;
        if address > 65535 {
            p.error(format!("{tkey}.address"), format!("{} is beyond the Modbus address space; addresses are 0-based, 0..=65535 (register 40001 is holding_register address 0)", address));
            continue;
        } else if end > 65535 {
            p.error(
                format!("{tkey}.address"),
                format!(
                    "a {} at {} ends at {end}, beyond 65535; move it or shorten it",
                    ty.name(),
                    address
                ),
            );
            continue;
        }
        tags.push(tag);
        tag_keys.push(tkey);
    }
    check_overlaps(&tags, &tag_keys, p);
    ModbusConfig {
        unit_id,
        max_gap: d.max_gap,
        coalesce: d.coalesce,
        tags,
    }
}

/// Units on one bus (a serial port, or one RTU-over-TCP device server) are
/// polled by one task over one line: they must agree on the line settings
/// and each needs its own unit id. One TCP address speaks one framing.
pub(crate) fn check_buses(devices: &[Arc<DeviceConfig>], p: &mut Problems) {
    let mut first_at_address: HashMap<&str, usize> = HashMap::new();
    let mut first_on_bus: HashMap<String, usize> = HashMap::new();
    let mut unit_on_bus: HashMap<(String, u8), usize> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        if d.address.is_empty() {
            continue;
        }
        if d.protocol.kind() != Protocol::ModbusRtu {
            let first = *first_at_address.entry(&d.address).or_insert(i);
            let other = &devices[first];
            if other.protocol.kind() != d.protocol.kind() {
                p.error(
                    format!("devices[{i}].protocol"),
                    format!(
                        "{:?} differs from devices[{first}] ({:?}) at the same address {}; one server speaks one framing, so give both the protocol the server speaks",
                        d.protocol.name(), other.protocol.name(), d.address
                    ),
                );
                continue;
            }
        }
        let Some(bus) = d.bus_key() else {
            continue;
        };
        let first = *first_on_bus.entry(bus.clone()).or_insert(i);
        if let (Some(mine), Some(theirs)) = (d.serial(), devices[first].serial()) {
            let diffs = [
                (
                    "baud",
                    mine.baud != theirs.baud,
                    mine.baud.to_string(),
                    theirs.baud.to_string(),
                ),
                (
                    "parity",
                    mine.parity != theirs.parity,
                    format!("{:?}", mine.parity),
                    format!("{:?}", theirs.parity),
                ),
                (
                    "data_bits",
                    mine.data_bits != theirs.data_bits,
                    mine.data_bits.to_string(),
                    theirs.data_bits.to_string(),
                ),
                (
                    "stop_bits",
                    mine.stop_bits != theirs.stop_bits,
                    mine.stop_bits.to_string(),
                    theirs.stop_bits.to_string(),
                ),
            ];
            for (k, differs, a, b) in diffs {
                if differs {
                    p.error(
                        format!("devices[{i}].{k}"),
                        format!(
                            "{a} differs from devices[{first}] ({b}) on the same port {}; every unit on one RS-485 bus uses the same line settings, so make them equal (and set the devices to match)",
                            d.address
                        ),
                    );
                }
            }
        }
        let unit_id = d.modbus().map_or(0, |m| m.unit_id);
        let prev = *unit_on_bus.entry((bus, unit_id)).or_insert(i);
        if prev != i {
            p.error(
                format!("devices[{i}].unit_id"),
                format!(
                    "{} is already used by devices[{prev}] on the same bus {}; every unit on one bus needs its own station number",
                    unit_id, d.address
                ),
            );
        }
    }
}

/// Two register tags may share registers only if they decode them the same
/// way, or if one reads a single bit (status words are read both whole and
/// bit by bit). Anything else is almost always a typo in an address.
fn check_overlaps(tags: &[TagConfig], keys: &[String], p: &mut Problems) {
    let mut by_area: BTreeMap<Area, Vec<usize>> = BTreeMap::new();
    for (i, t) in tags.iter().enumerate() {
        if !t.area.is_bits() && t.bit.is_none() {
            by_area.entry(t.area).or_default().push(i);
        }
    }
    for idx in by_area.values_mut() {
        idx.sort_by_key(|&i| tags[i].address);
        for (n, &i) in idx.iter().enumerate() {
            let a = &tags[i];
            let a_end = u32::from(a.address) + u32::from(a.span());
            for &j in &idx[n + 1..] {
                let b = &tags[j];
                if u32::from(b.address) >= a_end {
                    break;
                }
                if a.ty != b.ty || a.order != b.order || a.address != b.address {
                    let (first, second) = if i < j { (i, j) } else { (j, i) };
                    p.error(
                        format!("{}.address", keys[second]),
                        format!(
                            "{:?} ({} at {}) overlaps {} ({:?}, {} at {}); two tags may share registers only at the same address with the same type and order (or as a bit), so check both addresses",
                            tags[second].name, tags[second].ty.name(), tags[second].address,
                            keys[first], tags[first].name, tags[first].ty.name(), tags[first].address
                        ),
                    );
                }
            }
        }
    }
}
