//! Telemetry rows written as JSON for one sink: its selection of devices
//! and tags, keyed by tag index (`zgsz.telemetry/3`) or by name (`/2`).
//! Why indices: see the module above.

use super::{decode, plain, Damaged, Stored, StoredReading};
use crate::reading::Value;
use std::sync::Arc;

/// Which devices and tags a sink takes (`None`: all), and how it keys them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub devices: Option<Vec<Arc<str>>>,
    pub tags: Option<Vec<Arc<str>>>,
    pub keys: TagKeys,
}

impl Selection {
    fn device(&self, d: &str) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| &**x == d))
    }
    fn tag(&self, t: &str) -> bool {
        self.tags
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| &**x == t))
    }
}

/// How a sink's telemetry names the tags of a reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagKeys {
    /// `zgsz.telemetry/3`: each tag once in the message's `tags`, values
    /// keyed by its index there (the fewest bytes).
    #[default]
    Index,
    /// `zgsz.telemetry/2`: values keyed by the tag's name.
    Name,
}

impl TagKeys {
    /// The `schema` of a telemetry message written this way.
    pub fn schema(self) -> &'static str {
        match self {
            TagKeys::Index => "zgsz.telemetry/3",
            TagKeys::Name => "zgsz.telemetry/2",
        }
    }
}

/// The keys of one message: a tag's name, or its index in `tags`.
struct Keys<'a> {
    kind: TagKeys,
    /// Row string id → index in `tags` (`u32::MAX`: not yet there).
    index: Vec<u32>,
    tags: Vec<&'a str>,
}

impl<'a> Keys<'a> {
    fn write(&mut self, out: &mut Vec<u8>, r: &StoredReading<'a>) {
        if self.kind == TagKeys::Name {
            json_str(out, r.tag);
            out.push(b':');
            return;
        }
        let id = r.tag_id as usize;
        if self.index.len() <= id {
            self.index.resize(id + 1, u32::MAX);
        }
        if self.index[id] == u32::MAX {
            self.index[id] = self.tags.len() as u32;
            self.tags.push(r.tag);
        }
        out.push(b'"');
        out.extend_from_slice(itoa::Buffer::new().format(self.index[id]).as_bytes());
        out.extend_from_slice(b"\":");
    }
}

/// Writes the telemetry members of a message (no braces) for the selected
/// devices and tags of a stored row: `"tags":[…],"cycles":[…]` with
/// [`TagKeys::Index`], `"cycles":[…]` with [`TagKeys::Name`]. Returns how
/// many readings it wrote; zero means the sink has nothing to publish
/// from this row.
pub fn write_json(
    body: &[u8],
    dict: &[Arc<str>],
    sel: &Selection,
    out: &mut Vec<u8>,
) -> Result<usize, Damaged> {
    let cycles = decode(body, dict)?;
    let mut written = 0;
    let mut keys = Keys {
        kind: sel.keys,
        index: Vec::new(),
        tags: Vec::new(),
    };
    // With indices, the cycles go after the table they refer to.
    let mut indexed = Vec::new();
    let w: &mut Vec<u8> = match keys.kind {
        TagKeys::Index => {
            indexed.reserve(body.len() * 2);
            &mut indexed
        }
        TagKeys::Name => &mut *out,
    };
    w.extend_from_slice(b"\"cycles\":[");
    let mut first_cycle = true;
    for c in &cycles {
        if !sel.device(c.device) {
            continue;
        }
        let picked: Vec<&StoredReading> = c.readings.iter().filter(|r| sel.tag(r.tag)).collect();
        if picked.is_empty() {
            continue;
        }
        if !first_cycle {
            w.push(b',');
        }
        first_cycle = false;
        w.extend_from_slice(b"{\"device\":");
        json_str(w, c.device);
        w.extend_from_slice(b",\"ts\":");
        w.extend_from_slice(itoa::Buffer::new().format(c.ts).as_bytes());
        w.extend_from_slice(b",\"values\":{");
        let mut first = true;
        for r in picked.iter() {
            if let Stored::Good(v) = &r.value {
                if !first {
                    w.push(b',');
                }
                first = false;
                keys.write(w, r);
                json_value(w, v);
            }
        }
        w.push(b'}');
        if picked.iter().any(|r| matches!(r.value, Stored::Bad(_))) {
            w.extend_from_slice(b",\"bad\":{");
            let mut first = true;
            for r in picked.iter() {
                if let Stored::Bad(why) = &r.value {
                    if !first {
                        w.push(b',');
                    }
                    first = false;
                    keys.write(w, r);
                    json_str(w, &why.to_string());
                }
            }
            w.push(b'}');
        }
        if picked.iter().any(|r| r.ts.is_some()) {
            w.extend_from_slice(b",\"ts_of\":{");
            let mut first = true;
            for r in picked.iter() {
                if let Some(ts) = r.ts {
                    if !first {
                        w.push(b',');
                    }
                    first = false;
                    keys.write(w, r);
                    w.extend_from_slice(itoa::Buffer::new().format(ts).as_bytes());
                }
            }
            w.push(b'}');
        }
        w.push(b'}');
        written += picked.len();
    }
    w.push(b']');
    if keys.kind == TagKeys::Index {
        out.extend_from_slice(b"\"tags\":[");
        for (i, t) in keys.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, t);
        }
        out.extend_from_slice(b"],");
        out.extend_from_slice(&indexed);
    }
    Ok(written)
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Serialising a string into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn json_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
        Value::Float(f) if f.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes())
        }
        Value::Float(_) => out.extend_from_slice(b"null"),
        Value::Str(s) => json_str(out, s),
    }
}
