//! The record's round trips, both row formats, both key forms, and damage.

use super::*;

const NAMED: Selection = Selection {
    devices: None,
    tags: None,
    keys: TagKeys::Name,
};

fn r(device: &str, tag: &str, value: Option<Value>, quality: Quality, ts: i64) -> Reading {
    Reading {
        device: device.into(),
        tag: tag.into(),
        value,
        quality,
        ts,
    }
}

fn every_kind() -> Vec<Reading> {
    let g = Quality::Good;
    vec![
        r(
            "lathe-01",
            "spindle_speed",
            Some(Value::Float(1200.5)),
            g.clone(),
            10_000,
        ),
        r(
            "lathe-01",
            "feed",
            Some(Value::Float(0.1)),
            g.clone(),
            10_000,
        ),
        r(
            "lathe-01",
            "part_count",
            Some(Value::Int(-4711)),
            g.clone(),
            9_990,
        ),
        r(
            "lathe-01",
            "energy",
            Some(Value::UInt(u64::MAX)),
            g.clone(),
            10_000,
        ),
        r(
            "lathe-01",
            "cycle_running",
            Some(Value::Bool(true)),
            g.clone(),
            10_000,
        ),
        r(
            "lathe-01",
            "program",
            Some(Value::Str("O\"1234".into())),
            g.clone(),
            10_000,
        ),
        r(
            "lathe-01",
            "alarm",
            None,
            Quality::Bad(BadReason::Exception(2)),
            10_000,
        ),
        r(
            "lathe-01",
            "mode",
            None,
            Quality::Bad(BadReason::Status("BadNodeIdUnknown")),
            10_000,
        ),
        r(
            "lathe-01",
            "door",
            Some(Value::Bool(false)),
            g.clone(),
            2_000,
        ),
        r(
            "mill-02",
            "spindle_speed",
            None,
            Quality::Bad(BadReason::Timeout),
            10_050,
        ),
    ]
}

fn all(readings: Vec<Reading>) -> Batch {
    Batch {
        readings,
        publish: Publish::All,
        ..Default::default()
    }
}

#[test]
fn every_value_kind_survives_the_record_and_becomes_telemetry_2_json() {
    let rows = encode(&[all(every_kind())], 64 * 1024, |_| 1);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].count, 10);
    let cycles = decode(&rows[0].body, &[]).expect("decodes");
    assert_eq!(cycles.len(), 2);
    assert_eq!(cycles[0].ts, 10_000);
    assert_eq!(
        cycles[0].readings[8].ts,
        Some(2_000),
        "an old value keeps its ts"
    );
    assert_eq!(
        cycles[0].readings[2].ts, None,
        "10 ms apart share the cycle's ts"
    );
    let mut out = b"{".to_vec();
    let n = write_json(&rows[0].body, &[], &NAMED, &mut out).expect("json");
    out.push(b'}');
    assert_eq!(n, 10);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    let c0 = &v["cycles"][0];
    assert_eq!(c0["device"], "lathe-01");
    assert_eq!(c0["values"]["spindle_speed"], 1200.5);
    assert_eq!(
        c0["values"]["feed"], 0.1,
        "a float f32 cannot hold stays exact"
    );
    assert_eq!(c0["values"]["part_count"], -4711);
    assert_eq!(c0["values"]["energy"], u64::MAX);
    assert_eq!(c0["values"]["program"], "O\"1234");
    assert_eq!(c0["bad"]["alarm"], "exception:2");
    assert_eq!(c0["bad"]["mode"], "BadNodeIdUnknown");
    assert_eq!(c0["ts_of"]["door"], 2_000);
    assert_eq!(v["cycles"][1]["bad"]["spindle_speed"], "timeout");
}

/// `/3` with its keys looked up in `tags`, as a consumer reads it.
fn resolved(v: &serde_json::Value) -> serde_json::Value {
    let tags = v["tags"].as_array().expect("tags");
    let name = |k: &str| -> String {
        let i: usize = k.parse().expect("an index");
        tags[i].as_str().expect("a name").to_string()
    };
    let mut v = v.clone();
    for c in v["cycles"].as_array_mut().expect("cycles") {
        for member in ["values", "bad", "ts_of"] {
            if let Some(o) = c.get(member).and_then(|o| o.as_object()) {
                let named: serde_json::Map<_, _> =
                    o.iter().map(|(k, x)| (name(k), x.clone())).collect();
                c[member] = serde_json::Value::Object(named);
            }
        }
    }
    v.as_object_mut().expect("object").remove("tags");
    v
}

#[test]
fn telemetry_3_names_each_tag_once_and_says_what_2_says() {
    let rows = encode(&[all(every_kind())], 64 * 1024, |_| 1);
    let json = |keys| {
        let mut out = b"{".to_vec();
        let sel = Selection {
            keys,
            ..Default::default()
        };
        let n = write_json(&rows[0].body, &[], &sel, &mut out);
        out.push(b'}');
        assert_eq!(n, Ok(10));
        serde_json::from_slice::<serde_json::Value>(&out).expect("valid JSON")
    };
    let (named, indexed) = (json(TagKeys::Name), json(TagKeys::Index));
    let tags: Vec<&str> = indexed["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    // spindle_speed is read from both machines, and named once.
    assert_eq!(tags.len(), 9, "{tags:?}");
    assert_eq!(tags.iter().filter(|t| **t == "spindle_speed").count(), 1);
    assert_eq!(indexed["cycles"][0]["values"]["0"], 1200.5);
    assert_eq!(indexed["cycles"][1]["bad"]["0"], "timeout");
    assert_eq!(resolved(&indexed), named);
}

#[test]
fn rows_on_the_outbox_dictionary_say_what_self_contained_rows_say() {
    let local = encode(&[all(every_kind())], 64 * 1024, |_| 1);
    let mut dict = Dictionary::from_saved(vec!["mill-02".into()]);
    let shared = encode_shared(&[all(every_kind())], 64 * 1024, |_| 1, &mut dict);
    let names = dict.names();
    // The same cycles; only the ids differ.
    type Plain = Vec<(String, i64, Vec<(String, Option<i64>, String)>)>;
    let plain = |c: Vec<StoredCycle>| -> Plain {
        c.into_iter()
            .map(|c| {
                let r = c.readings.iter();
                let r = r.map(|r| (r.tag.to_string(), r.ts, format!("{:?}", r.value)));
                (c.device.to_string(), c.ts, r.collect())
            })
            .collect()
    };
    assert_eq!(
        plain(decode(&shared[0].body, &names).expect("shared")),
        plain(decode(&local[0].body, &[]).expect("local"))
    );
    // Devices, tags and the one bad status; not the string value.
    let new: Vec<&str> = dict.unsaved().map(|(_, n)| n).collect();
    assert!(new.contains(&"spindle_speed") && new.contains(&"BadNodeIdUnknown"));
    assert!(!new.contains(&"mill-02"), "already saved");
    assert!(!new.iter().any(|n| n.contains("1234")), "{new:?}");
    assert_eq!(dict.unsaved().next().map(|(id, _)| id), Some(1));
    dict.mark_saved();
    assert_eq!(dict.unsaved().count(), 0);
    // A second batch names nothing new and is smaller than a row
    // that carries its names.
    let again = encode_shared(&[all(every_kind())], 64 * 1024, |_| 1, &mut dict);
    assert_eq!(dict.unsaved().count(), 0);
    assert!(again[0].body.len() * 2 < local[0].body.len());
    // Without the dictionary (or a shorter one) the row is damaged.
    assert!(decode(&again[0].body, &[]).is_err());
    assert!(decode(&again[0].body, &names[..3]).is_err());
}

#[test]
fn a_selection_leaves_out_other_devices_and_tags() {
    let rows = encode(&[all(every_kind())], 64 * 1024, |_| 1);
    let sel = Selection {
        devices: Some(vec!["lathe-01".into()]),
        tags: Some(vec!["spindle_speed".into(), "alarm".into()]),
        keys: TagKeys::Name,
    };
    let mut out = b"{".to_vec();
    assert_eq!(write_json(&rows[0].body, &[], &sel, &mut out), Ok(2));
    out.push(b'}');
    let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(v["cycles"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        v["cycles"][0]["values"].as_object().map(|o| o.len()),
        Some(1)
    );
    let none = Selection {
        devices: Some(vec!["press-9".into()]),
        ..Default::default()
    };
    let mut out = Vec::new();
    assert_eq!(write_json(&rows[0].body, &[], &none, &mut out), Ok(0));
}

#[test]
fn rows_are_cut_to_the_message_size_and_split_by_destination() {
    let readings: Vec<Reading> = (0..500)
        .map(|i| {
            r(
                if i < 250 { "a" } else { "b" },
                &format!("tag_{i}"),
                Some(Value::Float(i as f64 + 0.25)),
                Quality::Good,
                1,
            )
        })
        .collect();
    let max = 4096;
    let rows = encode(&[all(readings)], max, |d| if d == "a" { 1 } else { 2 });
    assert!(rows.len() > 2);
    assert_eq!(rows.iter().map(|r| r.count).sum::<u32>(), 500);
    for row in &rows {
        for sel in [&NAMED, &Selection::default()] {
            let mut out = Vec::new();
            write_json(&row.body, &[], sel, &mut out).expect("json");
            assert!(out.len() <= max, "{} > {max}", out.len());
        }
        let devices: Vec<&str> = decode(&row.body, &[])
            .expect("decodes")
            .iter()
            .map(|c| c.device)
            .collect();
        let want = if row.to == Some(1) { "a" } else { "b" };
        assert!(
            devices.iter().all(|d| *d == want),
            "{devices:?} in a row for {want}"
        );
    }
}

#[test]
fn unpublished_readings_and_devices_no_sink_takes_are_not_stored() {
    let mut b = all(every_kind());
    let mut flags = vec![false; 10];
    flags[0] = true;
    b.publish = Publish::Only(flags);
    let rows = encode(&[b], 64 * 1024, |d| u64::from(d == "lathe-01"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].count, 1);
    let none = Batch {
        readings: every_kind(),
        ..Default::default()
    };
    assert!(encode(&[none], 64 * 1024, |_| 1).is_empty());
}

#[test]
fn a_damaged_record_is_an_error_not_a_panic() {
    let rows = encode(&[all(every_kind())], 64 * 1024, |_| 1);
    let body = &rows[0].body;
    for cut in 0..body.len() {
        assert!(decode(&body[..cut], &[]).is_err(), "cut at {cut}");
    }
    let mut bad = body.clone();
    bad[0] = 9;
    assert_eq!(decode(&bad, &[]), Err(Damaged(0)));
    let mut out = Vec::new();
    for i in 0..body.len() {
        let mut b = body.clone();
        b[i] ^= 0xff;
        let _ = write_json(&b, &[], &Selection::default(), &mut out);
    }
}
