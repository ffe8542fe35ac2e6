//! Microbenchmarks of the hot paths: decoding, coalescing, the SQLite
//! outbox and payload encoding. Measurements, not tests: they run only
//! under `cargo bench` (see BENCHMARKS.md for figures).
//!
//!     cargo bench --bench pipeline
//!     cargo bench --bench pipeline -- outbox     # one group

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zgsz_agent::buffer::{self, cycle, Batch, Kind, Outbox, Publish, Route, Row};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::config::{self, BufferConfig, Config, Synchronous};
use zgsz_agent::reading::{BadReason, Quality, Reading, Value};
use zgsz_agent::source::modbus::decode::{decode_registers, DataType, WordOrder};
use zgsz_agent::source::modbus::plan::{plan, Area, Span};
use zgsz_agent::uplink::mqtt::{MqttUplink, UplinkState};

/// Every data type with a register image that decodes in every order.
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let regs: [u16; 8] = [
        0x4142, 0x4344, 0x4546, 0x4748, 0x3132, 0x3334, 0x3536, 0x3738,
    ];
    let types = [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::U64,
        DataType::I64,
        DataType::F64,
        DataType::String(16),
    ];
    for ty in types {
        for order in WordOrder::ALL {
            g.bench_function(format!("{}/{order:?}", ty.name()), |b| {
                b.iter(|| decode_registers(black_box(&regs), ty, order, None))
            });
        }
    }
    g.bench_function("bool_bit/ABCD", |b| {
        b.iter(|| decode_registers(black_box(&regs), DataType::Bool, WordOrder::ABCD, Some(3)))
    });
    g.finish();
}

/// Coalescing-plan construction for 10,000 tags: adjacent, with gaps, in
/// random order, and mixed areas.
fn coalescing(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan_10000_tags");
    g.throughput(Throughput::Elements(10_000));
    let hr = |address: u16, len: u16| Span {
        area: Area::HoldingRegister,
        address,
        len,
    };
    let adjacent: Vec<Span> = (0..10_000).map(|i| hr(i, 1)).collect();
    let gaps: Vec<Span> = (0..10_000).map(|i| hr(i * 6, 2)).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut shuffled = adjacent.clone();
    rng.shuffle(&mut shuffled);
    let areas = [
        Area::Coil,
        Area::DiscreteInput,
        Area::InputRegister,
        Area::HoldingRegister,
    ];
    let mixed: Vec<Span> = (0..10_000u16)
        .map(|i| Span {
            area: areas[usize::from(i % 4)],
            address: (i / 4) * 3,
            len: 1 + (i % 3),
        })
        .collect();
    for (name, spans) in [
        ("adjacent_u16", &adjacent),
        ("gap4_u32", &gaps),
        ("shuffled", &shuffled),
        ("mixed_areas", &mixed),
    ] {
        g.bench_function(format!("{name}/coalesce"), |b| {
            b.iter(|| plan(black_box(spans), 8, true))
        });
    }
    g.bench_function("adjacent_u16/one_per_tag", |b| {
        b.iter(|| plan(black_box(&adjacent), 8, false))
    });
    g.finish();
}

fn readings(n: usize, device: &str) -> Vec<Reading> {
    let device: Arc<str> = device.into();
    let ts = 1_764_300_000_000i64;
    (0..n)
        .map(|i| {
            let (value, quality) = match i % 8 {
                0 => (Some(Value::Float(1234.5 + i as f64)), Quality::Good),
                1 => (Some(Value::Bool(i % 3 == 0)), Quality::Good),
                2 => (Some(Value::Str("O1234".into())), Quality::Good),
                3 => (None, Quality::Bad(BadReason::Timeout)),
                _ => (Some(Value::Int(i as i64 * 7)), Quality::Good),
            };
            Reading {
                device: device.clone(),
                tag: format!("tag_{i}").into(),
                value,
                quality,
                ts: ts + i as i64,
            }
        })
        .collect()
}

fn buffer_cfg(sync: Synchronous) -> BufferConfig {
    BufferConfig {
        synchronous: sync,
        max_bytes: 4 << 30,
        max_rows: None,
        max_message_bytes: 64 * 1024,
        commit_window: std::time::Duration::ZERO,
    }
}

const MAX_BODY: usize = 64 * 1024 - buffer::ENVELOPE_RESERVE;

/// One sink that carries everything.
fn routes() -> [Route; 1] {
    [Route {
        name: "platform".into(),
        metrics: true,
        states: true,
        telemetry: Some(None),
    }]
}

/// A cycle's readings as the outbox stores them.
fn encode_readings(readings: &[Reading], max: usize) -> Vec<buffer::NewRow> {
    let batch = Batch {
        readings: readings.to_vec(),
        publish: Publish::All,
        ..Default::default()
    };
    cycle::encode(std::slice::from_ref(&batch), max, |_| 1)
}

/// Outbox append, lease and ack on a real SQLite file in a temporary
/// directory, with synchronous = FULL and NORMAL.
fn outbox(c: &mut Criterion) {
    let mut g = c.benchmark_group("outbox");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (sync, name) in [(Synchronous::Full, "full"), (Synchronous::Normal, "normal")] {
        for n in [100usize, 10_000] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut ob =
                Outbox::open(dir.path(), &buffer_cfg(sync), &routes()).expect("open outbox");
            let batch = Batch {
                readings: readings(n, "lathe-01"),
                ..Default::default()
            };
            let rows = encode_readings(&batch.readings, MAX_BODY);
            g.throughput(Throughput::Elements(n as u64));
            // One commit as the outbox thread makes it: encoded rows plus
            // the device health of the same readings.
            g.bench_function(format!("append_{n}_readings/{name}"), |b| {
                b.iter(|| ob.commit(&rows, &batch, &[], &[], 1).expect("commit"))
            });
        }
        // Lease and ack: a window of 32 rows, as the uplink asks for them.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ob = Outbox::open(dir.path(), &buffer_cfg(sync), &routes()).expect("open outbox");
        let batch = Batch {
            readings: readings(100, "lathe-01"),
            ..Default::default()
        };
        let rows = encode_readings(&batch.readings, 2048);
        let empty = Batch::default();
        for _ in 0..200 {
            ob.commit(&rows, &empty, &[], &[], 1).expect("fill");
        }
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("lease_32_rows/{name}"), |b| {
            b.iter(|| ob.lease(0, black_box(0), 32).expect("lease"))
        });
        g.bench_function(format!("ack_32_rows/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let last = ob
                        .commit(&rows, &empty, &[], &[], 1)
                        .expect("refill")
                        .last_seq;
                    let first = last - rows.len() as i64 + 1;
                    let acks: Vec<(u8, i64)> = (first..first + 32).map(|s| (0, s)).collect();
                    let t = Instant::now();
                    ob.commit(&[], &empty, &acks, &[], 2).expect("ack");
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

fn bench_config(state_dir: &Path) -> Config {
    let text = format!(
        r#"
[agent]
gateway_id = "yz-hj-gw-01"
state_dir = "{}"

[enterprise]
name = "扬州示例精密机械有限公司"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"

[mqtt]
host = "127.0.0.1"
port = 1883
tls = false
carries = ["metrics", "states", "status", "telemetry"]
topic_layout = "gateway"
"#,
        state_dir.display()
    );
    config::load_str(Path::new("bench.toml"), &text)
        .expect("bench config is valid")
        .0
}

/// Payload encoding: readings into outbox rows, and a row into the MQTT
/// message the uplink publishes.
fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [100usize, 1000] {
        let rs = readings(n, "lathe-01");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("encode_readings/{n}"), |b| {
            b.iter(|| encode_readings(black_box(&rs), MAX_BODY))
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = bench_config(dir.path());
    let routes: Vec<Route> = cfg.sinks.iter().map(|s| s.route()).collect();
    let ob = Outbox::open(dir.path(), &cfg.buffer, &routes).expect("open outbox");
    let _guard = rt.enter();
    let handles = buffer::spawn(ob, &cfg.buffer, Arc::new(SystemClock));
    let (state, board) = tokio::sync::watch::channel(UplinkState::default());
    let uplink = MqttUplink::new(
        cfg.sinks[0].clone(),
        &cfg.enterprise,
        &cfg.agent.gateway_id,
        handles.client.clone(),
        handles.appended.clone(),
        Arc::new(SystemClock),
        state,
        vec![board],
    );
    let rs = readings(800, "lathe-01");
    let body = encode_readings(&rs, MAX_BODY).remove(0).body;
    let row = Row {
        seq: 123_456,
        kind: Kind::Telemetry,
        created_ms: 1_764_300_000_000,
        count: 800,
        body,
        names: Default::default(),
    };
    g.throughput(Throughput::Bytes(row.body.len() as u64));
    g.bench_function("mqtt_message_800_readings", |b| {
        b.iter(|| uplink.message(black_box(&row), "0123456789abcdef", false))
    });
    g.finish();
}

criterion_group!(benches, decode, coalescing, outbox, encoding);
criterion_main!(benches);
