//! The outbox's telemetry records: whatever readings (odd device text,
//! extreme numbers, any size limit), every row becomes valid JSON once
//! wrapped in braces, holds every reading, and respects the size limit
//! unless a single reading alone exceeds it, with the names in the row or
//! in the outbox's dictionary, keyed by name or by index. Arbitrary bytes
//! given as a stored record are an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use zgsz_agent::buffer::cycle::{decode, encode_shared, write_json, Dictionary, Selection, TagKeys};
use zgsz_agent::buffer::{encode_readings, Batch, Publish};
use zgsz_agent::reading::{BadReason, Quality, Reading, Value};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Any bytes as a stored record (a damaged database file).
    let names: Vec<Arc<str>> = vec!["d".into(), "t".into()];
    let _ = decode(data, &names);
    let _ = write_json(data, &names, &Selection::default(), &mut Vec::new());

    let max = 64 + usize::from(data[0]) * 8;
    let mut readings = Vec::new();
    for chunk in data[1..].chunks(9) {
        let text = String::from_utf8_lossy(chunk).to_string();
        let n = i64::from_le_bytes({
            let mut b = [0u8; 8];
            b[..chunk.len().min(8)].copy_from_slice(&chunk[..chunk.len().min(8)]);
            b
        });
        let (value, quality) = match chunk[0] % 5 {
            0 => (Some(Value::Int(n)), Quality::Good),
            1 => (Some(Value::Float(f64::from_bits(n as u64))), Quality::Good),
            2 => (Some(Value::Str(text.clone())), Quality::Good),
            3 => (Some(Value::UInt(n as u64)), Quality::Good),
            _ => (None, Quality::Bad(BadReason::Exception(chunk[0]))),
        };
        readings.push(Reading { device: text.as_str().into(), tag: "t".into(), value, quality, ts: n });
    }
    let mut dict = Dictionary::default();
    let batch = Batch { readings: readings.clone(), publish: Publish::All, ..Default::default() };
    let shared = encode_shared(std::slice::from_ref(&batch), max, |_| 1, &mut dict);
    let names = dict.names();
    for (rows, keys) in [(encode_readings(&readings, max), TagKeys::Name), (shared, TagKeys::Index)] {
        let sel = Selection { keys, ..Default::default() };
        let mut seen = 0;
        for row in rows {
            let mut json = b"{".to_vec();
            let n = write_json(&row.body, &names, &sel, &mut json).expect("a record just written reads back");
            json.push(b'}');
            let v: serde_json::Value = serde_json::from_slice(&json).expect("row is valid JSON");
            assert_eq!(n, row.count as usize);
            assert!(json.len() <= max + 2 || row.count == 1, "row over the limit with {} readings", row.count);
            assert!(v["cycles"].as_array().is_some_and(|c| !c.is_empty()));
            seen += n;
        }
        assert_eq!(seen, readings.len());
    }
});
