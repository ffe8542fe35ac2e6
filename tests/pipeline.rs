//! The whole spine against real parts: a tokio-modbus server on loopback,
//! the SQLite outbox in a temp dir, and an MQTT broker (embedded rumqttd).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_contiguous, assert_schema, config, Mode, Platform, Proxy};
use serde_json::{json, Value as Json};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::reading::{BadReason, Quality, Value};
use zgsz_agent::sim::{Bank, SimDevice};
use zgsz_agent::source::modbus::ModbusDevice;
use zgsz_agent::source::Source;

/// A register image with one tag of every type and order.
fn known_bank() -> Bank {
    let mut b = Bank::new(64);
    let h = &mut b.holding;
    h[0..2].copy_from_slice(&[0x41BC, 0x0000]); // f32 ABCD 23.5
    h[2..4].copy_from_slice(&[0x0000, 0x41BC]); // f32 CDAB 23.5
    h[4..6].copy_from_slice(&[0xBC41, 0x0000]); // f32 BADC 23.5
    h[6..8].copy_from_slice(&[0x0000, 0xBC41]); // f32 DCBA 23.5
    h[8] = 0xFFFE; // i16 -2
    h[9] = 0xFFFF; // u16 65535
    h[10..12].copy_from_slice(&[0x1234, 0x5678]); // u32 ABCD 0x12345678
    h[12..14].copy_from_slice(&[0xFFFE, 0xFFFF]); // i32 CDAB -2
    h[14..18].copy_from_slice(&[0x0102, 0x0304, 0x0506, 0x0708]); // u64 ABCD
    h[18..22].copy_from_slice(&[0xFDFF, 0xFFFF, 0xFFFF, 0xFFFF]); // i64 DCBA -3
    h[22..26].copy_from_slice(&[0x4037, 0x8000, 0, 0]); // f64 ABCD 23.5
    h[26..30].copy_from_slice(&[0x4C41, 0x5448, 0x452D, 0x3100]); // "LATHE-1"
    h[30] = 0b1000; // status word, bit 3 set
    h[31] = 650; // raw temperature ×0.1 − 40
    b.input[0] = 7;
    b.coils[5] = true;
    b.discrete[3] = true;
    b
}

const KNOWN_TAGS: &str = r#"
[[devices.tags]]
name = "f_abcd"
area = "holding_register"
address = 0
type = "f32"
[[devices.tags]]
name = "f_cdab"
area = "holding_register"
address = 2
type = "f32"
order = "CDAB"
[[devices.tags]]
name = "f_badc"
area = "holding_register"
address = 4
type = "f32"
order = "BADC"
[[devices.tags]]
name = "f_dcba"
area = "holding_register"
address = 6
type = "f32"
order = "DCBA"
[[devices.tags]]
name = "i16"
area = "holding_register"
address = 8
type = "i16"
[[devices.tags]]
name = "u16"
area = "holding_register"
address = 9
[[devices.tags]]
name = "u32"
area = "holding_register"
address = 10
type = "u32"
[[devices.tags]]
name = "i32"
area = "holding_register"
address = 12
type = "i32"
order = "CDAB"
[[devices.tags]]
name = "u64"
area = "holding_register"
address = 14
type = "u64"
[[devices.tags]]
name = "i64"
area = "holding_register"
address = 18
type = "i64"
order = "DCBA"
[[devices.tags]]
name = "f64"
area = "holding_register"
address = 22
type = "f64"
[[devices.tags]]
name = "text"
area = "holding_register"
address = 26
type = "string(8)"
[[devices.tags]]
name = "status_word"
area = "holding_register"
address = 30
[[devices.tags]]
name = "door_open"
area = "holding_register"
address = 30
bit = 3
[[devices.tags]]
name = "temp"
area = "holding_register"
address = 31
scale = 0.1
offset = -40.0
unit = "°C"
[[devices.tags]]
name = "ir"
area = "input_register"
address = 0
[[devices.tags]]
name = "coil"
area = "coil"
address = 5
[[devices.tags]]
name = "di"
area = "discrete_input"
address = 3
"#;

fn expected_known() -> HashMap<&'static str, Json> {
    HashMap::from([
        ("f_abcd", json!(23.5)),
        ("f_cdab", json!(23.5)),
        ("f_badc", json!(23.5)),
        ("f_dcba", json!(23.5)),
        ("i16", json!(-2)),
        ("u16", json!(65535)),
        ("u32", json!(0x1234_5678)),
        ("i32", json!(-2)),
        ("u64", json!(0x0102_0304_0506_0708u64)),
        ("i64", json!(-3)),
        ("f64", json!(23.5)),
        ("text", json!("LATHE-1")),
        ("status_word", json!(8)),
        ("door_open", json!(true)),
        ("temp", json!(25.0)),
        ("ir", json!(7)),
        ("coil", json!(true)),
        ("di", json!(true)),
    ])
}

fn device_toml(
    id: &str,
    addr: std::net::SocketAddr,
    interval: &str,
    timeout: &str,
    tags: &str,
) -> String {
    format!("[[devices]]\nid = \"{id}\"\naddress = \"{addr}\"\npoll_interval = \"{interval}\"\ntimeout = \"{timeout}\"\nretries = 0\n{tags}\n")
}

async fn sim_with(bank: Bank) -> SimDevice {
    SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap()
}

fn embedded_broker() -> u16 {
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_arrives_exactly_as_decoded() {
    let sim = sim_with(known_bank()).await;
    let port = embedded_broker();
    let platform = Platform::subscribe(port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        port,
        &device_toml("plc-1", sim.addr, "100ms", "1s", KNOWN_TAGS),
        "",
        "",
    );
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();

    platform
        .wait_for(
            Duration::from_secs(20),
            "three poll cycles of telemetry",
            |p| {
                p.of_kind("telemetry")
                    .iter()
                    .map(|m| common::readings(m).len())
                    .sum::<usize>()
                    >= 3 * 18
            },
        )
        .await;
    agent.stop().await;

    let expected = expected_known();
    let telemetry = platform.of_kind("telemetry");
    for m in &telemetry {
        assert_schema("telemetry", m);
        assert_eq!(m["gateway_id"], "gw-test");
        assert_eq!(m["uscc"], common::USCC);
        for r in &common::readings(m) {
            let tag = r["tag"].as_str().unwrap();
            assert_eq!(r["quality"], "good", "{r}");
            assert_eq!(r["value"], expected[tag], "tag {tag}");
        }
    }
    let by_seq = platform.telemetry_by_seq();
    assert_contiguous(&by_seq);

    // Status: online with outbox figures while running; offline after stop.
    platform
        .wait_for(Duration::from_secs(30), "offline status", |p| {
            p.of_kind("status").iter().any(|s| s["state"] == "offline")
        })
        .await;
    let statuses = platform.of_kind("status");
    assert_eq!(statuses[0]["state"], "online");
    for s in &statuses {
        assert_schema("status", s);
    }
    let raw = platform.raw.lock().unwrap();
    assert!(raw
        .iter()
        .filter(|(t, _, _)| t.ends_with("/status"))
        .all(|(t, _, _)| t == "zgsz/321003/91350100M000100Y43/gw-test/status"));
}

#[tokio::test]
async fn coalescing_reads_a_cycle_in_the_fewest_requests() {
    let sim = sim_with(known_bank()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        1,
        &device_toml("plc-1", sim.addr, "1s", "1s", KNOWN_TAGS),
        "",
        "",
    );
    let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
    // holding 0..=31 in one read, plus one each for input, coil, discrete.
    assert_eq!(dev.plan_len(), 4);
    let readings = dev.poll_once().await;
    assert_eq!(readings.len(), 18);
    assert!(readings.iter().all(|r| r.quality.is_good()), "{readings:?}");
    assert_eq!(dev.last_requests(), 4);
    assert_eq!(sim.counters.reads.load(Ordering::Relaxed), 4);
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);

    // Without coalescing, a naive gateway needs one request per tag.
    let naive = KNOWN_TAGS.to_string();
    let toml = device_toml("plc-1", sim.addr, "1s", "1s", &naive)
        .replace("retries = 0", "retries = 0\ncoalesce = false");
    let cfg = config(dir.path(), 1, &toml, "", "");
    let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
    dev.poll_once().await;
    assert_eq!(dev.last_requests(), 18);
}

#[tokio::test]
async fn refused_merged_read_falls_back_to_single_reads_and_remembers() {
    let sim = sim_with(known_bank()).await;
    // The device maps registers 0..20 only.
    *sim.faults.mapped_below.lock().unwrap() = Some(20);
    let tags = r#"
[[devices.tags]]
name = "a"
area = "holding_register"
address = 0
[[devices.tags]]
name = "b"
area = "holding_register"
address = 8
type = "i16"
[[devices.tags]]
name = "c"
area = "holding_register"
address = 17
type = "f64"
"#;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        1,
        &device_toml("plc-1", sim.addr, "1s", "1s", tags),
        "",
        "",
    );
    let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
    assert_eq!(dev.plan_len(), 1, "0..21 merges with max_gap 8");
    let r = dev.poll_once().await;
    let by_tag: HashMap<&str, _> = r.iter().map(|r| (&*r.tag, r)).collect();
    assert_eq!(by_tag["a"].value, Some(Value::Int(0x41BC)));
    assert_eq!(by_tag["b"].value, Some(Value::Int(-2)));
    assert_eq!(by_tag["c"].quality, Quality::Bad(BadReason::Exception(2)));
    assert_eq!(dev.plan_len(), 3);
    assert_eq!(
        dev.last_requests(),
        4,
        "the refused merged read, then three single reads"
    );
    dev.poll_once().await;
    assert_eq!(dev.last_requests(), 3, "the split is remembered");
}

#[tokio::test]
async fn exception_timeout_and_refused_connection_are_distinct_qualities() {
    let tags = "[[devices.tags]]\nname = \"a\"\narea = \"holding_register\"\naddress = 0\n";
    let dir = tempfile::tempdir().unwrap();

    let busy = sim_with(known_bank()).await;
    *busy.faults.exception.lock().unwrap() = Some(6);
    let cfg = config(
        dir.path(),
        1,
        &device_toml("busy", busy.addr, "1s", "1s", tags),
        "",
        "",
    );
    let r = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock))
        .poll_once()
        .await;
    assert_eq!(r[0].quality, Quality::Bad(BadReason::Exception(6)));
    assert_eq!(r[0].value, None);

    let silent = sim_with(known_bank()).await;
    silent.faults.silent.store(true, Ordering::Relaxed);
    let cfg = config(
        dir.path(),
        1,
        &device_toml("silent", silent.addr, "1s", "200ms", tags),
        "",
        "",
    );
    let r = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock))
        .poll_once()
        .await;
    assert_eq!(r[0].quality, Quality::Bad(BadReason::Timeout));

    let gone = sim_with(known_bank()).await;
    let addr = gone.addr;
    drop(gone);
    let cfg = config(
        dir.path(),
        1,
        &device_toml("gone", addr, "1s", "200ms", tags),
        "",
        "",
    );
    let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
    let r = dev.poll_once().await;
    assert_eq!(r[0].quality, Quality::Bad(BadReason::Disconnected));
}

#[tokio::test]
async fn reconnects_after_timeout_and_never_mismatches_replies() {
    // A slow reply arrives after our timeout; the next request must not be
    // answered with it. We drop the connection, so values stay correct.
    let sim = sim_with(known_bank()).await;
    let tags = "[[devices.tags]]\nname = \"u16\"\narea = \"holding_register\"\naddress = 9\n[[devices.tags]]\nname = \"ir\"\narea = \"input_register\"\naddress = 0\n";
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        1,
        &device_toml("slow", sim.addr, "1s", "150ms", tags),
        "",
        "",
    );
    let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
    sim.faults.delay_ms.store(400, Ordering::Relaxed);
    let r = dev.poll_once().await;
    // The input register is read first and times out; the connection is
    // dropped, so the holding register is not even tried on it.
    assert_eq!(r[1].quality, Quality::Bad(BadReason::Timeout));
    assert_eq!(r[0].quality, Quality::Bad(BadReason::Disconnected));
    sim.faults.delay_ms.store(0, Ordering::Relaxed);
    // After the backoff the device is polled again on a fresh connection.
    let mut good = None;
    for _ in 0..50 {
        let r = dev.poll_once().await;
        if r.iter().all(|r| r.quality.is_good()) {
            good = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = good.expect("device recovers after its backoff");
    assert_eq!(r[0].value, Some(Value::Int(65535)));
    assert_eq!(r[1].value, Some(Value::Int(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_does_not_delay_the_others() {
    let tags = "[[devices.tags]]\nname = \"a\"\narea = \"holding_register\"\naddress = 0\n";
    let live = sim_with(known_bank()).await;
    let dead = sim_with(known_bank()).await;
    dead.faults.silent.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        "{}{}",
        device_toml("live", live.addr, "50ms", "1s", tags),
        device_toml("dead", dead.addr, "50ms", "2s", tags)
    );
    let cfg = config(dir.path(), 1, &devices, "", "");
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    for d in &cfg.devices {
        let dev = ModbusDevice::new(d.clone(), Arc::new(SystemClock));
        tokio::spawn(zgsz_agent::source::run(dev, tx.clone(), stop_rx.clone()));
    }
    let mut live_cycles = 0;
    loop {
        let batch: Vec<zgsz_agent::reading::Reading> = rx.recv().await.unwrap();
        match &*batch[0].device {
            "live" => {
                assert!(batch[0].quality.is_good());
                live_cycles += 1;
            }
            _ => {
                assert_eq!(batch[0].quality, Quality::Bad(BadReason::Timeout));
                break;
            }
        }
    }
    // The dead device's first cycle took its 2s timeout; at 50ms the live
    // device ran many cycles meanwhile (not a timing claim: 5 is far below 40).
    assert!(
        live_cycles >= 5,
        "live device ran only {live_cycles} cycles while the dead one timed out"
    );
}

/// A device with every type, a broker, its platform subscriber, and a
/// proxy in front of the broker that refuses the agent until told otherwise.
async fn broker_unreachable() -> (
    SimDevice,
    Platform,
    Proxy,
    tempfile::TempDir,
    zgsz_agent::config::Config,
) {
    let sim = sim_with(known_bank()).await;
    let broker = embedded_broker();
    let platform = Platform::subscribe(broker).await;
    let proxy = Proxy::start(([127, 0, 0, 1], broker).into(), Mode::Refuse).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        proxy.port,
        &device_toml("plc-1", sim.addr, "50ms", "1s", KNOWN_TAGS),
        "",
        "",
    );
    (sim, platform, proxy, dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_up_delivers_every_reading_as_sent() {
    common::logs();
    let (_sim, platform, proxy, dir, cfg) = broker_unreachable().await;
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();

    // Build a backlog while the broker is unreachable.
    let buffer = agent.buffer.clone();
    common::wait_for_stats(
        &buffer,
        Duration::from_secs(60),
        "backlog built while the broker is down",
        |s| s.rows >= 20,
    )
    .await;
    assert!(!agent.uplink.borrow().connected);
    assert!(platform.of_kind("telemetry").is_empty());

    proxy.set(Mode::Forward);
    let mut stats = buffer.stats().await.unwrap();
    platform
        .wait_for(
            Duration::from_secs(30),
            "the backlog at the platform",
            |p| {
                p.telemetry_by_seq()
                    .keys()
                    .last()
                    .is_some_and(|&s| s >= stats.last_seq)
            },
        )
        .await;
    agent.stop().await;
    stats = zgsz_agent::buffer::read_stats(dir.path()).unwrap();

    let by_seq = platform.telemetry_by_seq();
    let (first, _) = assert_contiguous(&by_seq);
    assert_eq!(first, 1);
    let expected = expected_known();
    let mut readings = 0u64;
    for m in by_seq.values() {
        for r in &common::readings(m) {
            assert_eq!(r["value"], expected[r["tag"].as_str().unwrap()]);
            readings += 1;
        }
    }
    // Everything the outbox took in was delivered (the last rows may still
    // be unacknowledged at stop: they stay in the outbox, not lost).
    let acked_or_pending: u64 = readings;
    assert!(acked_or_pending <= stats.appended_readings);
    assert_eq!(stats.evicted_rows, 0);
    // Messages created while the broker was down are marked historical and
    // keep their original timestamps.
    assert_eq!(by_seq[&1]["historical"], true);
    // The uplink's record for the evidence report: down from the first
    // refused attempt, then up; only changes are stored.
    let conn = zgsz_agent::buffer::open_read_only(dir.path()).unwrap();
    let events = zgsz_agent::buffer::uplink_events(&conn, 0, i64::MAX).unwrap();
    let states: Vec<bool> = events.iter().map(|e| e.1).collect();
    assert_eq!(states, vec![false, true], "{events:?}");
    assert!(events[0].2.is_some(), "a loss records its reason");
    let created = by_seq[&1]["created_ts"].as_i64().unwrap();
    let first_ts = common::readings(&by_seq[&1])[0]["ts"].as_i64().unwrap();
    assert!(first_ts <= created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_rows_pending_sends_them_with_their_original_seq() {
    let (_sim, platform, proxy, dir, cfg) = broker_unreachable().await;

    // First run: the broker is unreachable; stop with rows pending.
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let buffer = agent.buffer.clone();
    common::wait_for_stats(&buffer, Duration::from_secs(20), "10 pending rows", |s| {
        s.rows >= 10
    })
    .await;
    agent.stop().await;
    let before = zgsz_agent::buffer::read_stats(dir.path()).unwrap();
    assert!(before.rows >= 10);
    assert_eq!(before.acked_rows, 0);

    // Second run: the broker is back; the old rows go first, same seqs.
    proxy.set(Mode::Forward);
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    platform
        .wait_for(
            Duration::from_secs(30),
            "the pending rows and new ones",
            |p| {
                p.telemetry_by_seq()
                    .keys()
                    .last()
                    .is_some_and(|&s| s > before.last_seq)
            },
        )
        .await;
    agent.stop().await;
    let by_seq = platform.telemetry_by_seq();
    let (first, _) = assert_contiguous(&by_seq);
    assert_eq!(first, 1);
    let instance = &before.instance;
    for (seq, m) in &by_seq {
        assert_eq!(m["msg_id"], format!("{instance}:{seq}"));
        if *seq <= before.last_seq {
            assert_eq!(
                m["historical"], true,
                "seq {seq} was created in the first run"
            );
        }
    }
}
