//! Compact telemetry: poll cycles stored in a small binary record, and
//! written as `zgsz.telemetry/3` (or `/2`) JSON when a sink publishes them.
//!
//! # Why binary at rest
//!
//! The outbox must hold hours of a plant's telemetry while a sink is down
//! (docs/delivery.md). As JSON, every reading repeats its device, tag and
//! timestamp: about 90 bytes. Stored here, a row names each device and tag
//! once (a string table), a cycle carries one timestamp, and a value is a
//! type byte plus its payload (a float that survives the trip through
//! `f32` takes 4 bytes): about 7 to 11 bytes a reading. The JSON is
//! written from it at publish, so every sink can get its own selection of
//! devices and tags from the one stored row.
//!
//! # Why tag indices on the wire
//!
//! A plant's machines share their tag names (`spindle_speed` on every
//! lathe), and a message holds the cycles of many machines. `/3` names each
//! tag once per message, in `tags`, and keys the values by its index
//! there: about 13 bytes a reading instead of 22 for `"spindle_speed":`
//! keys (`/2`, kept for consumers that want names as keys). A message is
//! still complete on its own: no state to keep between messages, no birth
//! certificate to miss.
//!
//! # Record
//!
//! ```text
//! row    := 0x01 strings cycles      names in the row (tools, tests)
//!         | 0x02 cycles              names in the outbox's dictionary
//! strings:= varint n, n × (varint len, UTF-8 bytes)
//! cycles := varint n, n × cycle
//! cycle  := varint device, zigzag ts, varint n, n × value
//! value  := varint tag, u8 type [| 0x10 own ts], [varint age], payload
//! ```
//!
//! The outbox writes `0x02` rows: device ids, tag names and bad statuses
//! are ids into a [`Dictionary`] it keeps in its own table, committed with
//! the rows that first use them. Reporting by exception leaves a row with
//! a few changed values, and naming their tags in every row was most of
//! the row; with the names kept once, an outage lasts about twice as long
//! before the cap evicts. String values stay in the row (`T_STR_INLINE`):
//! they are data, and would grow the dictionary without bound.
//!
//! A cycle's `ts` is its latest reading's; a reading more than
//! [`OWN_TS_AFTER_MS`] older keeps its own (OPC UA source timestamps of
//! values that changed earlier), sent as `ts_of`.

use std::collections::HashMap;
use std::sync::Arc;

mod json;

pub use json::{write_json, Selection, TagKeys};

use super::{Batch, Kind, NewRow, Publish};
use crate::reading::{BadReason, Quality, Reading, Value};

/// Readings of one cycle within this of its `ts` share it.
pub const OWN_TS_AFTER_MS: i64 = 1_000;

/// A row that carries its own string table.
const FORMAT_LOCAL: u8 = 1;
/// A row whose names are ids into the outbox's [`Dictionary`].
const FORMAT_SHARED: u8 = 2;
const OWN_TS: u8 = 0x10;

// Value types (low nibble).
const T_TIMEOUT: u8 = 0;
const T_DISCONNECTED: u8 = 1;
const T_DECODE: u8 = 2;
const T_EXCEPTION: u8 = 3;
const T_STATUS: u8 = 4;
const T_FALSE: u8 = 5;
const T_TRUE: u8 = 6;
const T_INT: u8 = 7;
const T_UINT: u8 = 8;
const T_F32: u8 = 9;
const T_F64: u8 = 10;
/// A string value in the string table (rows of earlier versions).
const T_STR: u8 = 11;
/// A string value in the row: varint length, UTF-8 bytes.
const T_STR_INLINE: u8 = 12;

/// The names (device ids, tag names, bad statuses) of an outbox's rows,
/// each stored once. Ids are positions and never change; the table only
/// grows, by the names a config brings, so it stays small.
#[derive(Debug, Default)]
pub struct Dictionary {
    /// Shared with the rows handed to the sinks, which read names from it.
    names: Arc<Vec<Arc<str>>>,
    index: HashMap<Arc<str>, u32>,
    /// How many of `names` are committed; the rest are new in this commit.
    saved: usize,
}

impl Dictionary {
    /// The dictionary as stored: `names[i]` has id `i`.
    pub fn from_saved(names: Vec<Arc<str>>) -> Dictionary {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Dictionary {
            saved: names.len(),
            names: Arc::new(names),
            index,
        }
    }

    fn id(&mut self, s: &Arc<str>) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.names.len() as u32;
        Arc::make_mut(&mut self.names).push(s.clone());
        self.index.insert(s.clone(), i);
        i
    }

    /// Names added since the last [`Dictionary::mark_saved`], with their ids:
    /// to be written in the transaction of the rows that use them.
    pub fn unsaved(&self) -> impl Iterator<Item = (u32, &str)> {
        self.names[self.saved..]
            .iter()
            .enumerate()
            .map(|(i, n)| ((self.saved + i) as u32, &**n))
    }

    /// The unsaved names were committed.
    pub fn mark_saved(&mut self) {
        self.saved = self.names.len();
    }

    /// The names, for reading rows.
    pub fn names(&self) -> Arc<Vec<Arc<str>>> {
        self.names.clone()
    }
}

/// A stored record that cannot be read (a damaged database file).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("telemetry record damaged at byte {0}")]
pub struct Damaged(pub usize);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Builds one row: the cycles of the devices that go to the same sinks.
struct RowBuilder {
    strings: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
    cycles: Vec<u8>,
    ncycles: u32,
    readings: u32,
    /// Upper bound of the JSON this row becomes.
    json: usize,
}

impl RowBuilder {
    fn new() -> RowBuilder {
        RowBuilder {
            strings: Vec::new(),
            index: HashMap::new(),
            cycles: Vec::with_capacity(1024),
            ncycles: 0,
            readings: 0,
            // `"tags":[],"cycles":[]`
            json: 24,
        }
    }

    /// `s`'s id: in the dictionary when there is one, else in the row.
    fn string(&mut self, dict: Option<&mut Dictionary>, s: &Arc<str>) -> u32 {
        if let Some(d) = dict {
            return d.id(s);
        }
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.clone());
        self.index.insert(s.clone(), i);
        i
    }

    fn finish(self, to: u64, shared: bool) -> NewRow {
        let mut body = Vec::with_capacity(self.cycles.len() + 16 * self.strings.len() + 8);
        if shared {
            body.push(FORMAT_SHARED);
        } else {
            body.push(FORMAT_LOCAL);
            put_varint(&mut body, self.strings.len() as u64);
            for s in &self.strings {
                put_varint(&mut body, s.len() as u64);
                body.extend_from_slice(s.as_bytes());
            }
        }
        put_varint(&mut body, u64::from(self.ncycles));
        body.extend_from_slice(&self.cycles);
        NewRow {
            kind: Kind::Telemetry,
            count: self.readings,
            body,
            to: Some(to),
        }
    }

    /// Appends a cycle of `readings` (one device, non-empty).
    fn cycle(&mut self, mut dict: Option<&mut Dictionary>, readings: &[&Reading]) {
        let ts = readings.iter().map(|r| r.ts).max().unwrap_or(0);
        let device = self.string(dict.as_deref_mut(), &readings[0].device);
        let mut c = std::mem::take(&mut self.cycles);
        put_varint(&mut c, u64::from(device));
        put_zigzag(&mut c, ts);
        put_varint(&mut c, readings.len() as u64);
        self.json += cycle_json_bound(&readings[0].device);
        for r in readings {
            let tag = self.string(dict.as_deref_mut(), &r.tag);
            put_varint(&mut c, u64::from(tag));
            let age = ts - r.ts;
            let own = if age > OWN_TS_AFTER_MS { OWN_TS } else { 0 };
            let at = c.len();
            c.push(own);
            if own != 0 {
                put_varint(&mut c, age as u64);
            }
            let ty = match (&r.quality, &r.value) {
                (Quality::Bad(why), _) => match why {
                    BadReason::Timeout => T_TIMEOUT,
                    BadReason::Disconnected => T_DISCONNECTED,
                    BadReason::Decode => T_DECODE,
                    BadReason::Exception(code) => {
                        c.push(*code);
                        T_EXCEPTION
                    }
                    BadReason::Status(name) => {
                        let i = self.string(dict.as_deref_mut(), &Arc::from(*name));
                        put_varint(&mut c, u64::from(i));
                        T_STATUS
                    }
                },
                (Quality::Good, None) => T_DECODE,
                (Quality::Good, Some(v)) => match v {
                    Value::Bool(false) => T_FALSE,
                    Value::Bool(true) => T_TRUE,
                    Value::Int(i) => {
                        put_zigzag(&mut c, *i);
                        T_INT
                    }
                    Value::UInt(u) => {
                        put_varint(&mut c, *u);
                        T_UINT
                    }
                    Value::Float(f) => {
                        let small = *f as f32;
                        if f64::from(small) == *f {
                            c.extend_from_slice(&small.to_le_bytes());
                            T_F32
                        } else {
                            c.extend_from_slice(&f.to_le_bytes());
                            T_F64
                        }
                    }
                    Value::Str(s) => {
                        put_varint(&mut c, s.len() as u64);
                        c.extend_from_slice(s.as_bytes());
                        T_STR_INLINE
                    }
                },
            };
            c[at] |= ty;
            self.json += reading_json_bound(r, ts);
        }
        self.cycles = c;
        self.ncycles += 1;
        self.readings += readings.len() as u32;
    }
}

/// Whether a string goes into JSON as it is (device ids and tag names do).
pub(super) fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// JSON bytes of a string, quotes included, at most.
fn str_bound(s: &str) -> usize {
    2 + if plain(s) { s.len() } else { 6 * s.len() }
}

/// JSON bytes of a cycle besides its readings, at most.
fn cycle_json_bound(device: &str) -> usize {
    // {"device":"…","ts":-9223372036854775808,"values":{},"bad":{},"ts_of":{}},
    str_bound(device) + 80
}

/// JSON bytes of one reading inside a cycle whose `ts` is `cycle_ts`, at
/// most: `"tag":value,`, and `"tag":ts,` in `ts_of` when it keeps its own.
/// A key is counted as the larger of its two forms: the name, or an index
/// (up to 6 digits) plus the name's entry in `tags`.
pub fn reading_json_bound(r: &Reading, cycle_ts: i64) -> usize {
    let key = str_bound(&r.tag) + 11;
    let own = if cycle_ts - r.ts > OWN_TS_AFTER_MS {
        key + 20
    } else {
        0
    };
    key + own
        + match (&r.quality, &r.value) {
            (Quality::Bad(BadReason::Status(s)), _) => str_bound(s),
            (Quality::Bad(_), _) => 18,
            (_, Some(Value::Str(s))) => str_bound(s),
            _ => 24,
        }
}

/// Encodes the published readings of `batches` into telemetry rows. A row
/// holds the cycles of devices that go to the same sinks (`mask` of a
/// device; 0: no sink), and becomes at most `max_json` bytes of JSON.
/// Each row carries its own names (see [`encode_shared`] for the outbox's).
pub fn encode(batches: &[Batch], max_json: usize, mask: impl Fn(&str) -> u64) -> Vec<NewRow> {
    encode_with(batches, max_json, mask, None)
}

/// [`encode`], with the names in `dict`: the rows the outbox writes.
pub fn encode_shared(
    batches: &[Batch],
    max_json: usize,
    mask: impl Fn(&str) -> u64,
    dict: &mut Dictionary,
) -> Vec<NewRow> {
    encode_with(batches, max_json, mask, Some(dict))
}

fn encode_with(
    batches: &[Batch],
    max_json: usize,
    mask: impl Fn(&str) -> u64,
    mut dict: Option<&mut Dictionary>,
) -> Vec<NewRow> {
    let shared = dict.is_some();
    let mut open: Vec<(u64, RowBuilder)> = Vec::new();
    let mut rows = Vec::new();
    let mut masks: Vec<(Arc<str>, u64)> = Vec::new();
    let mut cycle: Vec<&Reading> = Vec::new();
    for b in batches {
        let keep = |i: usize| match &b.publish {
            Publish::None => false,
            Publish::All => true,
            Publish::Only(flags) => flags.get(i).copied().unwrap_or(false),
        };
        if b.publish == Publish::None {
            continue;
        }
        let mut i = 0;
        while i < b.readings.len() {
            // One device's run of readings is one cycle.
            let device = &b.readings[i].device;
            cycle.clear();
            while i < b.readings.len() && b.readings[i].device == *device {
                if keep(i) {
                    cycle.push(&b.readings[i]);
                }
                i += 1;
            }
            if cycle.is_empty() {
                continue;
            }
            let to = match masks.iter().find(|(d, _)| d == device) {
                Some((_, m)) => *m,
                None => {
                    let m = mask(device);
                    masks.push((device.clone(), m));
                    m
                }
            };
            if to == 0 {
                continue;
            }
            let cycle_ts = cycle.iter().map(|r| r.ts).max().unwrap_or(0);
            let slot = match open.iter().position(|(m, _)| *m == to) {
                Some(s) => s,
                None => {
                    open.push((to, RowBuilder::new()));
                    open.len() - 1
                }
            };
            // Cut the cycle where the row would outgrow a message.
            let mut start = 0;
            while start < cycle.len() {
                let row = &mut open[slot].1;
                let mut room = max_json.saturating_sub(row.json + cycle_json_bound(device));
                let mut end = start;
                while end < cycle.len() {
                    let need = reading_json_bound(cycle[end], cycle_ts);
                    if need > room {
                        break;
                    }
                    room -= need;
                    end += 1;
                }
                if end == start {
                    if row.ncycles > 0 {
                        let full = std::mem::replace(row, RowBuilder::new());
                        rows.push(full.finish(to, shared));
                        continue;
                    }
                    // A single reading larger than a message still goes.
                    end = start + 1;
                }
                row.cycle(dict.as_deref_mut(), &cycle[start..end]);
                start = end;
            }
        }
    }
    rows.extend(open.into_iter().map(|(to, b)| b.finish(to, shared)));
    rows
}

/// Encodes readings as published cycles, for every sink that carries
/// telemetry (tools, tests and benchmarks that write rows directly).
pub fn encode_readings(readings: &[Reading], max_json: usize) -> Vec<NewRow> {
    let batch = Batch {
        readings: readings.to_vec(),
        publish: Publish::All,
        ..Default::default()
    };
    let mut rows = encode(std::slice::from_ref(&batch), max_json, |_| 1);
    for r in &mut rows {
        r.to = None;
    }
    rows
}

/// A decoded value of a stored cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<'a> {
    Good(Value),
    Bad(BadText<'a>),
}

/// Why a stored reading is bad, as `telemetry/1` and `/2` name it.
#[derive(Debug, Clone, PartialEq)]
pub enum BadText<'a> {
    Reason(BadReason),
    Status(&'a str),
}

impl std::fmt::Display for BadText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadText::Reason(r) => r.fmt(f),
            BadText::Status(s) => f.write_str(s),
        }
    }
}

/// One reading of a stored cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading<'a> {
    pub tag: &'a str,
    /// `tag`'s index in the row's string table: what `/3` keys are
    /// assigned from without hashing the name.
    pub tag_id: u32,
    /// Its own timestamp, when it is older than the cycle's by more than
    /// [`OWN_TS_AFTER_MS`].
    pub ts: Option<i64>,
    pub value: Stored<'a>,
}

/// One stored cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCycle<'a> {
    pub device: &'a str,
    pub ts: i64,
    pub readings: Vec<StoredReading<'a>>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Damaged> {
        let b = *self.buf.get(self.at).ok_or(Damaged(self.at))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, Damaged> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Damaged(self.at))
    }

    fn zigzag(&mut self) -> Result<i64, Damaged> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        let end = self.at.checked_add(n).ok_or(Damaged(self.at))?;
        let s = self.buf.get(self.at..end).ok_or(Damaged(self.at))?;
        self.at = end;
        Ok(s)
    }

    fn string<'s>(&mut self, table: &'s [&'a str]) -> Result<&'a str, Damaged> {
        Ok(self.string_at(table)?.1)
    }

    fn string_at<'s>(&mut self, table: &'s [&'a str]) -> Result<(u32, &'a str), Damaged> {
        let at = self.at;
        let i = self.varint()?;
        let s = usize::try_from(i)
            .ok()
            .and_then(|i| table.get(i))
            .ok_or(Damaged(at))?;
        Ok((i as u32, s))
    }
}

/// Reads a stored telemetry row back; `dict`: the outbox's names, which
/// `0x02` rows refer to.
pub fn decode<'a>(body: &'a [u8], dict: &'a [Arc<str>]) -> Result<Vec<StoredCycle<'a>>, Damaged> {
    let mut r = Reader { buf: body, at: 0 };
    let strings: Vec<&str> = match r.byte()? {
        FORMAT_LOCAL => {
            let n = r.varint()? as usize;
            let mut strings = Vec::with_capacity(n.min(body.len()));
            for _ in 0..n {
                let len = r.varint()? as usize;
                let at = r.at;
                let s = std::str::from_utf8(r.bytes(len)?).map_err(|_| Damaged(at))?;
                strings.push(s);
            }
            strings
        }
        FORMAT_SHARED => dict.iter().map(|s| &**s).collect(),
        _ => return Err(Damaged(0)),
    };
    let n = r.varint()? as usize;
    let mut cycles = Vec::with_capacity(n.min(body.len()));
    for _ in 0..n {
        let device = r.string(&strings)?;
        let ts = r.zigzag()?;
        let count = r.varint()? as usize;
        let mut readings = Vec::with_capacity(count.min(body.len()));
        for _ in 0..count {
            let (tag_id, tag) = r.string_at(&strings)?;
            let at = r.at;
            let head = r.byte()?;
            let own = if head & OWN_TS != 0 {
                Some(ts - r.varint()? as i64)
            } else {
                None
            };
            let value = match head & 0x0f {
                T_TIMEOUT => Stored::Bad(BadText::Reason(BadReason::Timeout)),
                T_DISCONNECTED => Stored::Bad(BadText::Reason(BadReason::Disconnected)),
                T_DECODE => Stored::Bad(BadText::Reason(BadReason::Decode)),
                T_EXCEPTION => Stored::Bad(BadText::Reason(BadReason::Exception(r.byte()?))),
                T_STATUS => Stored::Bad(BadText::Status(r.string(&strings)?)),
                T_FALSE => Stored::Good(Value::Bool(false)),
                T_TRUE => Stored::Good(Value::Bool(true)),
                T_INT => Stored::Good(Value::Int(r.zigzag()?)),
                T_UINT => Stored::Good(Value::UInt(r.varint()?)),
                T_F32 => {
                    let b = r.bytes(4)?;
                    Stored::Good(Value::Float(f64::from(f32::from_le_bytes([
                        b[0], b[1], b[2], b[3],
                    ]))))
                }
                T_F64 => {
                    let b = r.bytes(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    Stored::Good(Value::Float(f64::from_le_bytes(a)))
                }
                T_STR => Stored::Good(Value::Str(r.string(&strings)?.to_string())),
                T_STR_INLINE => {
                    let len = r.varint()? as usize;
                    let at = r.at;
                    let s = std::str::from_utf8(r.bytes(len)?).map_err(|_| Damaged(at))?;
                    Stored::Good(Value::Str(s.to_string()))
                }
                _ => return Err(Damaged(at)),
            };
            readings.push(StoredReading {
                tag,
                tag_id,
                ts: own,
                value,
            });
        }
        cycles.push(StoredCycle {
            device,
            ts,
            readings,
        });
    }
    Ok(cycles)
}

#[cfg(test)]
mod tests;
