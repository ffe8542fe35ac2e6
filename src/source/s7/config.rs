//! The S7 keys of a device and its tags, validated into typed values.
//!
//! ```toml
//! [[devices]]
//! id = "line-plc"
//! protocol = "s7"
//! address = "192.168.0.1:102"
//! rack = 0              # with slot: the CPU's position (S7-300: 0/2, S7-1200/1500: 0/1)
//! slot = 1
//! # or, instead of rack/slot (S7-200 SMART, LOGO!, CP connections), the
//! # TSAPs of the device's connection settings:
//! # local_tsap = "01.00"
//! # remote_tsap = "02.00"
//! pdu_size = 960        # asked for; the PLC grants its own, often 240 or 480
//! [[devices.tags]]
//! name = "running"
//! address = "DB10.DBX0.1"
//! ```
//!
//! Validation collects every problem as (key path, message); the config
//! loader reports them with the file name.

use super::address::{self, Address, S7Type};
use crate::config::{is_ident, Problems as ConfigProblems, RawAddress, RawDevice};

/// PDU size asked for at Setup Communication unless the config says
/// otherwise: the largest an S7-1500 grants; smaller PLCs answer with
/// their own (240 on an S7-1200 or S7-300, 480 on an S7-400).
pub const DEFAULT_PDU: u16 = 960;
/// Local TSAP with rack/slot: a PG connection's, as most S7 clients use.
pub const DEFAULT_LOCAL_TSAP: u16 = 0x0100;

/// An S7 device's validated settings (its `host:port` is the device's
/// `address`, shared by every protocol).
#[derive(Debug, Clone, PartialEq)]
pub struct S7Device {
    /// The gateway's TSAP in the connection request; default 01.00 (a PG connection) with
    /// rack/slot.
    pub local_tsap: u16,
    /// The PLC's TSAP, which selects the CPU (from rack and slot, or as written).
    pub remote_tsap: u16,
    /// PDU size asked for (the PLC may grant less); larger PDUs need fewer requests; default 960.
    pub pdu_size: u16,
    /// Unused bytes a merged read may span between two tags, to need fewer items; default 8.
    pub max_gap: u16,
    /// Tags are merged into ranges (false: one item per tag, for PLCs that refuse ranges); default
    /// true.
    pub coalesce: bool,
    /// The values read each cycle, in config order.
    pub tags: Vec<S7Tag>,
}

/// One validated S7 tag.
#[derive(Debug, Clone, PartialEq)]
pub struct S7Tag {
    /// Names the value in rules and telemetry; unique per device.
    pub name: std::sync::Arc<str>,
    /// The address as written, for messages and `read`.
    pub text: String,
    /// The parsed address (area, DB, byte, bit) the requests are planned from.
    pub address: Address,
    /// How the bytes decode; default from the address width (bit bool, B byte, W word, D dword).
    pub ty: S7Type,
    /// Multiplies the raw value into engineering units; default 1.
    pub scale: f64,
    /// Added after `scale`; default 0.
    pub offset: f64,
    /// The engineering unit, for people reading telemetry; default none.
    pub unit: Option<String>,
}

impl S7Tag {
    /// Bytes read for this tag.
    pub fn len(&self) -> u16 {
        self.ty.size()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The device-level S7 keys as written.
#[derive(Debug, Default)]
pub struct DeviceKeys {
    /// The CPU's rack, with `slot` (or TSAPs instead); default none.
    pub rack: Option<u8>,
    /// The CPU's slot: S7-300 2, S7-400 3, S7-1200/1500 1; default none.
    pub slot: Option<u8>,
    /// Local TSAP (two hex bytes), for PLCs addressed by TSAPs instead of rack/slot; default none.
    pub local_tsap: Option<String>,
    /// Remote TSAP (two hex bytes), with `local_tsap`; default none.
    pub remote_tsap: Option<String>,
    /// The PDU size to ask for, 240..=960; default none (960).
    pub pdu_size: Option<u16>,
    /// Unused bytes one read may span between two tags; default 8.
    pub max_gap: u16,
    /// Merge tags into ranges (false: one item per tag); default true.
    pub coalesce: bool,
}

/// A tag's keys as written; `foreign` lists keys of other protocols that
/// were set (each is an error on an S7 tag).
#[derive(Debug, Default)]
pub struct TagKeys {
    /// Names the value in rules and telemetry.
    pub name: String,
    /// The address text; `Err` holds what was written instead (a number).
    pub address: Option<Result<String, String>>,
    /// The type as written; default from the address.
    pub ty: Option<String>,
    /// Multiplies the raw value; default 1.
    pub scale: Option<f64>,
    /// Added after `scale`; default 0.
    pub offset: Option<f64>,
    /// The engineering unit; default none.
    pub unit: Option<String>,
    /// Keys of other protocols that were set, each an error on an S7 tag, so the message names
    /// them.
    pub foreign: Vec<&'static str>,
}

/// Problems found: (key path, message).
pub type Problems = Vec<(String, String)>;

/// Parses a TSAP: `"01.02"` (the two bytes in hex, as TIA Portal and
/// LOGO!Soft show them) or `"0x0102"`.
pub fn parse_tsap(s: &str) -> Option<u16> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 4 {
            return None;
        }
        return u16::from_str_radix(hex, 16).ok();
    }
    let (hi, lo) = s.split_once('.')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 2 || lo.len() > 2 {
        return None;
    }
    let hi = u8::from_str_radix(hi, 16).ok()?;
    let lo = u8::from_str_radix(lo, 16).ok()?;
    Some(u16::from_be_bytes([hi, lo]))
}

/// The remote TSAP of a rack/slot connection: connection type PG (0x01),
/// then rack × 32 + slot.
pub fn rack_slot_tsap(rack: u8, slot: u8) -> u16 {
    0x0100 | (u16::from(rack) << 5) | u16::from(slot)
}

/// Validates an S7 device's keys and tags.
pub fn validate(d: DeviceKeys, tags: Vec<TagKeys>, key: &str) -> (S7Device, Problems) {
    let mut p: Problems = Vec::new();
    let (local_tsap, remote_tsap) = connection(&d, key, &mut p);
    let pdu_size = match d.pdu_size {
        None => DEFAULT_PDU,
        Some(n @ 240..=960) => n,
        Some(n) => {
            p.push((format!("{key}.pdu_size"), format!("{n} is not a PDU size an S7 PLC negotiates; use 240..=960 (the PLC grants at most its own: 240 on an S7-1200 or S7-300, 480 on an S7-400, 960 on an S7-1500), or remove the key")));
            DEFAULT_PDU
        }
    };
    let mut out: Vec<S7Tag> = Vec::new();
    let mut names: std::collections::HashMap<String, usize> = Default::default();
    for (ti, t) in tags.into_iter().enumerate() {
        let tkey = format!("{key}.tags[{ti}]");
        if let Some(first) = names.get(&t.name) {
            p.push((
                format!("{tkey}.name"),
                format!("{:?} is already used by {key}.tags[{first}]", t.name),
            ));
        }
        names.entry(t.name.clone()).or_insert(ti);
        for k in &t.foreign {
            p.push((format!("{tkey}.{k}"), format!("is not an S7 tag key: the address (e.g. \"DB10.DBW2\") gives area, offset and bit, and type the width; remove {k}")));
        }
        if let Some(tag) = validate_tag(t, &tkey, &mut p) {
            out.push(tag);
        }
    }
    let dev = S7Device {
        local_tsap,
        remote_tsap,
        pdu_size,
        max_gap: d.max_gap,
        coalesce: d.coalesce,
        tags: out,
    };
    (dev, p)
}

fn connection(d: &DeviceKeys, key: &str, p: &mut Problems) -> (u16, u16) {
    let tsap = |name: &str, v: &Option<String>, p: &mut Problems| -> Option<u16> {
        let text = v.as_ref()?;
        let parsed = parse_tsap(text);
        if parsed.is_none() {
            p.push((format!("{key}.{name}"), format!("{text:?} is not a TSAP; write its two bytes in hex as \"01.02\" (as TIA Portal and LOGO!Soft show them) or \"0x0102\"")));
        }
        parsed
    };
    let local = tsap("local_tsap", &d.local_tsap, p);
    let remote = tsap("remote_tsap", &d.remote_tsap, p);
    let tsaps_given = d.local_tsap.is_some() || d.remote_tsap.is_some();
    match (d.rack, d.slot, tsaps_given) {
        (Some(rack), Some(slot), false) => {
            if rack > 7 {
                p.push((format!("{key}.rack"), format!("{rack} is not a rack; use 0..=7 (0 for every S7-1200/1500 and most S7-300)")));
            }
            if slot > 31 {
                p.push((format!("{key}.slot"), format!("{slot} is not a slot; use 0..=31 (the CPU is in slot 2 on an S7-300, 1 on an S7-1200/1500)")));
            }
            (DEFAULT_LOCAL_TSAP, rack_slot_tsap(rack & 7, slot & 31))
        }
        (None, None, true) => match (local, remote, &d.local_tsap, &d.remote_tsap) {
            (Some(l), Some(r), _, _) => (l, r),
            (_, _, None, _) => {
                p.push((format!("{key}.local_tsap"), "is missing; explicit TSAPs come in pairs: local_tsap and remote_tsap, both from the device's connection settings (e.g. \"01.00\" and \"02.00\")".into()));
                (0, 0)
            }
            (_, _, _, None) => {
                p.push((format!("{key}.remote_tsap"), "is missing; explicit TSAPs come in pairs: local_tsap and remote_tsap, both from the device's connection settings (e.g. \"01.00\" and \"02.00\")".into()));
                (0, 0)
            }
            _ => (0, 0),
        },
        (None, None, false) => {
            p.push((key.to_string(), "an S7 device needs rack and slot (S7-300: rack = 0, slot = 2; S7-1200/1500: rack = 0, slot = 1) or local_tsap and remote_tsap (S7-200 SMART, LOGO!, CP connections); see docs/s7.md".into()));
            (0, 0)
        }
        (_, _, true) => {
            p.push((
                key.to_string(),
                "give either rack and slot or local_tsap and remote_tsap, not both".into(),
            ));
            (0, 0)
        }
        (r, _, false) => {
            let missing = if r.is_none() { "rack" } else { "slot" };
            p.push((
                format!("{key}.{missing}"),
                "is missing; rack and slot come together (S7-300: 0 and 2; S7-1200/1500: 0 and 1)"
                    .into(),
            ));
            (0, 0)
        }
    }
}

fn validate_tag(t: TagKeys, tkey: &str, p: &mut Problems) -> Option<S7Tag> {
    let text = match t.address {
        Some(Ok(text)) => text,
        Some(Err(written)) => {
            p.push((format!("{tkey}.address"), format!("{written} is a Modbus-style number; an S7 address is text in STEP 7 notation, one of: {}", address::FORMS)));
            return None;
        }
        None => {
            p.push((
                format!("{tkey}.address"),
                format!(
                    "is missing; an S7 tag needs an address, one of: {}",
                    address::FORMS
                ),
            ));
            return None;
        }
    };
    let Some(addr) = address::parse(&text) else {
        p.push((
            format!("{tkey}.address"),
            format!(
                "{text:?} is not an S7 address; use one of: {}",
                address::FORMS
            ),
        ));
        return None;
    };
    let ty = match &t.ty {
        None => S7Type::default_for(addr.width),
        Some(s) => match S7Type::parse(s) {
            Some(ty) => ty,
            None => {
                p.push((
                    format!("{tkey}.type"),
                    format!("unknown S7 type {s:?}; use one of {}", address::TYPES),
                ));
                return None;
            }
        },
    };
    if let Err(why) = ty.fits(addr.width) {
        p.push((
            format!("{tkey}.type"),
            format!("{why}, and {text:?} is not one; fix the address or the type"),
        ));
        return None;
    }
    let end = u64::from(addr.byte) + u64::from(ty.size());
    if end > u64::from(address::MAX_BYTE) + 1 {
        p.push((
            format!("{tkey}.address"),
            format!(
                "a {} at {text:?} ends beyond the addressable range",
                ty.name()
            ),
        ));
        return None;
    }
    let (scale, offset) = (t.scale.unwrap_or(1.0), t.offset.unwrap_or(0.0));
    if !scale.is_finite() || scale == 0.0 {
        p.push((
            format!("{tkey}.scale"),
            "must be a finite, non-zero number".into(),
        ));
    }
    if !offset.is_finite() {
        p.push((format!("{tkey}.offset"), "must be a finite number".into()));
    }
    Some(S7Tag {
        name: t.name.as_str().into(),
        text,
        address: addr,
        ty,
        scale,
        offset,
        unit: t.unit,
    })
}

/// Validates an S7 device's keys as the config file has them (the tags
/// are taken out of `d`), adding each problem to `p`.
pub(crate) fn from_raw(d: &mut RawDevice, key: &str, p: &mut ConfigProblems) -> S7Device {
    let keys = DeviceKeys {
        rack: d.rack,
        slot: d.slot,
        local_tsap: d.local_tsap.take(),
        remote_tsap: d.remote_tsap.take(),
        pdu_size: d.pdu_size,
        max_gap: d.max_gap,
        coalesce: d.coalesce,
    };
    let tags = std::mem::take(&mut d.tags)
        .into_iter()
        .map(|t| TagKeys {
            foreign: [
                ("area", t.area.is_some()),
                ("order", t.order.is_some()),
                ("bit", t.bit.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect(),
            name: t.name,
            address: t.address.map(|a| match a {
                RawAddress::Text(s) => Ok(s),
                RawAddress::Number(n) => Err(n.to_string()),
            }),
            ty: t.ty,
            scale: t.scale,
            offset: t.offset,
            unit: t.unit,
        })
        .collect();
    let (dev, problems) = validate(keys, tags, key);
    for (k, m) in problems {
        p.error(k, m);
    }
    for (ti, t) in dev.tags.iter().enumerate() {
        if !is_ident(&t.name) {
            p.error(format!("{key}.tags[{ti}].name"), format!("{:?} must start with a letter or '_' and use only letters, digits and '_' (it is used in expressions)", t.name));
        }
    }
    dev
}

/// S7 device keys on a Modbus device.
pub(crate) fn reject_keys(d: &RawDevice, key: &str, p: &mut ConfigProblems) {
    for (k, set) in [
        ("rack", d.rack.is_some()),
        ("slot", d.slot.is_some()),
        ("local_tsap", d.local_tsap.is_some()),
        ("remote_tsap", d.remote_tsap.is_some()),
        ("pdu_size", d.pdu_size.is_some()),
    ] {
        if set {
            p.error(
                format!("{key}.{k}"),
                format!(
                    "only applies to protocol = \"s7\" (this device is {}); remove it",
                    d.protocol.name()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsaps_in_both_spellings() {
        assert_eq!(parse_tsap("01.02"), Some(0x0102));
        assert_eq!(parse_tsap("0x4D57"), Some(0x4D57));
        assert_eq!(parse_tsap("1.2"), Some(0x0102));
        assert_eq!(parse_tsap("0102"), None);
        assert_eq!(parse_tsap("01.002"), None);
        assert_eq!(rack_slot_tsap(0, 2), 0x0102);
        assert_eq!(rack_slot_tsap(1, 3), 0x0123);
    }

    #[test]
    fn rack_slot_or_tsaps_never_both() {
        let keys = |rack, slot, tsap: Option<&str>| DeviceKeys {
            rack,
            slot,
            local_tsap: tsap.map(str::to_string),
            remote_tsap: tsap.map(str::to_string),
            ..Default::default()
        };
        assert!(validate(keys(Some(0), Some(1), None), vec![], "d")
            .1
            .is_empty());
        assert!(validate(keys(None, None, Some("03.01")), vec![], "d")
            .1
            .is_empty());
        assert!(
            !validate(keys(Some(0), Some(1), Some("03.01")), vec![], "d")
                .1
                .is_empty()
        );
        assert!(!validate(keys(None, None, None), vec![], "d").1.is_empty());
        assert!(!validate(keys(Some(0), None, None), vec![], "d")
            .1
            .is_empty());
    }
}
