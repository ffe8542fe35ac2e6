//! The S7 source against the in-process simulated PLC (`sim::s7`) and
//! against an independent server, python-snap7's (tests/s7_server.py).
//!
//! The python-snap7 tests need its virtualenv: `.ci/run` creates it and
//! points `ZGSZ_SNAP7_PYTHON` at its interpreter; elsewhere they are
//! ignored (run them with `cargo test --test s7 -- --include-ignored`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zgsz_agent::clock::SystemClock;
use zgsz_agent::reading::{BadReason, Quality, Reading, Value};
use zgsz_agent::sim::s7::{Memory, SimS7};
use zgsz_agent::source::s7::proto::{self, Area};
use zgsz_agent::source::s7::S7Poller;

const WAIT: Duration = Duration::from_secs(20);

/// An S7 device's TOML: `tags` are (name, address, type or "").
fn device(id: &str, addr: &str, extra: &str, tags: &[(&str, &str, &str)]) -> String {
    let mut s = format!("[[devices]]\nid = \"{id}\"\nprotocol = \"s7\"\naddress = \"{addr}\"\nrack = 0\nslot = 1\npoll_interval = \"100ms\"\ntimeout = \"500ms\"\nretries = 0\n{extra}\n");
    for (name, address, ty) in tags {
        s += &format!("[[devices.tags]]\nname = \"{name}\"\naddress = \"{address}\"\n");
        if !ty.is_empty() {
            s += &format!("type = \"{ty}\"\n");
        }
    }
    s
}

fn poller(dir: &std::path::Path, toml: &str) -> S7Poller {
    let cfg = common::config(dir, 1, toml, "", "");
    S7Poller::new(cfg.devices[0].clone(), Arc::new(SystemClock)).expect("an S7 device")
}

fn by_name(readings: Vec<Reading>) -> HashMap<String, Reading> {
    readings
        .into_iter()
        .map(|r| (r.tag.to_string(), r))
        .collect()
}

/// The tags of every area and type, with the values both servers hold
/// (tests/s7_server.py and [`memory`]).
fn every_type() -> Vec<(&'static str, &'static str, &'static str, Value)> {
    vec![
        ("bit1", "DB10.DBX0.1", "", Value::Bool(true)),
        ("bit0", "DB10.DBX0.0", "", Value::Bool(false)),
        ("byte", "DB10.DBB1", "", Value::Int(171)),
        ("word", "DB10.DBW2", "", Value::Int(0x1234)),
        ("int", "DB10.DBW4", "int", Value::Int(-1234)),
        ("dword", "DB10.DBD6", "", Value::Int(0xDEAD_BEEF)),
        ("dint", "DB10.DBD10", "dint", Value::Int(-123_456)),
        ("real", "DB10.DBD14", "real", Value::Float(23.5)),
        ("lreal", "DB10.DBB18", "lreal", Value::Float(-1250.0)),
        (
            "text",
            "DB10.DBB26",
            "string(10)",
            Value::Str("hello".into()),
        ),
        ("vb", "VB100", "", Value::Int(7)),
        ("vw", "VW102", "", Value::Int(1000)),
        ("vd", "VD104", "real", Value::Float(1.5)),
        ("m0", "M10.0", "", Value::Bool(true)),
        ("m6", "M10.6", "", Value::Bool(false)),
        ("m7", "M10.7", "", Value::Bool(true)),
        ("mw", "MW12", "", Value::Int(500)),
        ("md", "MD16", "dint", Value::Int(70_000)),
        ("i0", "I0.0", "", Value::Bool(true)),
        ("i1", "I0.1", "", Value::Bool(false)),
        ("e2", "E0.2", "", Value::Bool(true)),
        ("ib", "IB0", "", Value::Int(5)),
        ("iw", "IW2", "", Value::Int(321)),
        ("q0", "Q0.0", "", Value::Bool(true)),
        ("qw", "QW2", "", Value::Int(42)),
        ("ab", "AB0", "", Value::Int(1)),
    ]
}

/// The same memory as tests/s7_server.py registers.
fn memory() -> Memory {
    let mut m = Memory::new(64);
    let mut db10 = vec![0u8; 64];
    db10[0] = 0b10;
    db10[1] = 0xAB;
    db10[2..4].copy_from_slice(&0x1234u16.to_be_bytes());
    db10[4..6].copy_from_slice(&(-1234i16).to_be_bytes());
    db10[6..10].copy_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
    db10[10..14].copy_from_slice(&(-123_456i32).to_be_bytes());
    db10[14..18].copy_from_slice(&23.5f32.to_be_bytes());
    db10[18..26].copy_from_slice(&(-1250.0f64).to_be_bytes());
    db10[38..40].copy_from_slice(&250i16.to_be_bytes());
    m.dbs.insert(10, db10);
    m.put_string(Area::Db(10), 26, 10, "hello");
    let mut db1 = vec![0u8; 256];
    db1[100] = 7;
    db1[102..104].copy_from_slice(&1000u16.to_be_bytes());
    db1[104..108].copy_from_slice(&1.5f32.to_be_bytes());
    m.dbs.insert(1, db1);
    let db20: Vec<u8> = (0..1000u16).flat_map(|i| i.to_be_bytes()).collect();
    m.dbs.insert(20, db20);
    m.flags[10] = 0x81;
    m.flags[12..14].copy_from_slice(&500u16.to_be_bytes());
    m.flags[16..20].copy_from_slice(&70_000i32.to_be_bytes());
    m.inputs[0] = 0b101;
    m.inputs[2..4].copy_from_slice(&321u16.to_be_bytes());
    m.outputs[0] = 1;
    m.outputs[2..4].copy_from_slice(&42u16.to_be_bytes());
    m
}

/// Checks every tag of [`every_type`] plus a scaled one.
async fn assert_every_type(addr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cases = every_type();
    let tags: Vec<(&str, &str, &str)> = cases.iter().map(|c| (c.0, c.1, c.2)).collect();
    let mut toml = device("plc", addr, "", &tags);
    toml += "[[devices.tags]]\nname = \"scaled\"\naddress = \"DB10.DBW38\"\ntype = \"int\"\nscale = 0.1\n";
    let mut p = poller(dir.path(), &toml);
    let r = by_name(p.poll().await);
    for (name, address, _, want) in &cases {
        let got = &r[*name];
        assert_eq!(got.quality, Quality::Good, "{name} ({address})");
        assert_eq!(got.value.as_ref(), Some(want), "{name} ({address})");
    }
    assert_eq!(r["scaled"].value, Some(Value::Float(25.0)));
    // Four areas plus DB1 and DB10: every area is one range, and all of
    // them fit one request.
    assert_eq!(p.last_requests(), 1);
}

/// A thousand word tags of DB20 in the fewest requests the PDU allows.
async fn assert_many_tags(addr: &str, pdu: u16) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("w{i}"), format!("DB20.DBW{}", 2 * i)))
        .collect();
    let tags: Vec<(&str, &str, &str)> = names
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str(), ""))
        .collect();
    let mut p = poller(
        dir.path(),
        &device("plc", addr, &format!("pdu_size = {pdu}"), &tags),
    );
    let r = p.poll().await;
    assert_eq!(r.len(), 1000);
    for (i, reading) in r.iter().enumerate() {
        assert_eq!(reading.quality, Quality::Good, "{}", reading.tag);
        assert_eq!(reading.value, Some(Value::Int(i as i64)), "{}", reading.tag);
    }
    let (granted, requests, fewest) = p.plan_stats().unwrap();
    assert_eq!(granted, pdu);
    assert_eq!(
        requests, fewest,
        "requests per cycle against the PDU minimum"
    );
    assert_eq!(p.last_requests(), requests);
    (requests, fewest)
}

#[tokio::test]
async fn every_area_and_type_from_the_simulated_plc() {
    let sim = SimS7::start(memory(), 240).await.unwrap();
    assert_every_type(&sim.addr.to_string()).await;
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_thousand_tags_fit_the_negotiated_pdu() {
    // The simulator refuses any request or answer larger than its PDU, so
    // good values prove the packing fits; 4,000 bytes of answers at PDU
    // 240 need ceil(2000 / 222) = 10 requests.
    let sim = SimS7::start(memory(), 240).await.unwrap();
    let (requests, _) = assert_many_tags(&sim.addr.to_string(), 240).await;
    assert_eq!(requests, 10);
    assert_eq!(sim.counters.reads.load(Ordering::Relaxed), requests as u64);
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn item_return_codes_become_per_tag_qualities() {
    let mut mem = memory();
    mem.dbs.insert(30, vec![0; 8]);
    mem.protected.insert(30);
    let sim = SimS7::start(mem, 240).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = device(
        "plc",
        &sim.addr.to_string(),
        "",
        &[
            ("good", "DB10.DBW2", ""),
            ("missing", "DB99.DBW0", ""),
            ("beyond", "DB10.DBW200", ""),
            ("optimised", "DB30.DBW0", ""),
            // Merged with DB10.DBW60 into a range that reaches past the
            // end of DB10 (64 bytes): split, then read one by one.
            ("edge", "DB10.DBW62", ""),
            ("past", "DB10.DBD64", ""),
        ],
    );
    let mut p = poller(dir.path(), &toml);
    for _ in 0..2 {
        let r = by_name(p.poll().await);
        let q = |n: &str| r[n].quality.clone();
        assert_eq!(q("good"), Quality::Good);
        assert_eq!(
            q("missing"),
            Quality::Bad(BadReason::Status("BadS7ObjectDoesNotExist"))
        );
        assert_eq!(
            q("beyond"),
            Quality::Bad(BadReason::Status("BadS7AddressOutOfRange"))
        );
        assert_eq!(
            q("optimised"),
            Quality::Bad(BadReason::Status("BadS7AccessDenied"))
        );
        assert_eq!(q("edge"), Quality::Good);
        assert_eq!(
            q("past"),
            Quality::Bad(BadReason::Status("BadS7AddressOutOfRange"))
        );
    }
    // PUT/GET off: the CPU refuses the whole request.
    sim.faults.put_get_off.store(true, Ordering::Relaxed);
    let r = by_name(p.poll().await);
    assert_eq!(
        r["good"].quality,
        Quality::Bad(BadReason::Status("BadS7AccessDenied"))
    );
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_silent_plc_times_out_backs_off_and_recovers_and_a_restart_heals() {
    let sim = SimS7::start(memory(), 240).await.unwrap();
    let addr = sim.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut p = poller(
        dir.path(),
        &device("plc", &addr.to_string(), "", &[("w", "DB10.DBW2", "")]),
    );
    assert_eq!(p.poll().await[0].quality, Quality::Good);
    sim.faults.silent.store(true, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    assert_eq!(p.poll().await[0].quality, Quality::Bad(BadReason::Timeout));
    // The 500 ms timeout, not a hang (the bound only catches a hang).
    assert!(started.elapsed() < Duration::from_secs(10));
    // Backing off: no connection, no request at all.
    let (connections, reads) = (
        sim.counters.connections.load(Ordering::Relaxed),
        sim.counters.reads.load(Ordering::Relaxed),
    );
    assert_eq!(
        p.poll().await[0].quality,
        Quality::Bad(BadReason::Disconnected)
    );
    assert_eq!(
        sim.counters.connections.load(Ordering::Relaxed),
        connections
    );
    assert_eq!(sim.counters.reads.load(Ordering::Relaxed), reads);
    sim.faults.silent.store(false, Ordering::Relaxed);
    let mut good = false;
    for _ in 0..100 {
        if p.poll().await[0].quality == Quality::Good {
            good = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(good, "the PLC was not read again after it answered again");

    // Stopped: the link goes down; started again on the same port: good.
    sim.stop();
    drop(sim);
    let r = p.poll().await;
    assert!(!r[0].quality.is_good());
    let sim = SimS7::start_on(addr, memory(), 240).await.unwrap();
    let mut good = false;
    for _ in 0..200 {
        if p.poll().await[0].quality == Quality::Good {
            good = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(good, "no good reading after the PLC came back");
    assert!(sim.counters.connections.load(Ordering::Relaxed) >= 1);
}

/// How a fake PLC answers a Read Var after a proper connect and setup.
#[derive(Clone, Copy, Debug)]
enum Lie {
    Garbage,
    /// A TPKT header announcing far more than any PLC sends.
    Oversized,
    /// An answer cut short inside the item data.
    Truncated,
    /// A well-formed answer to another request (PDU reference).
    WrongReference,
    /// A well-formed answer with more bytes than asked for.
    LongItem,
    /// A well-formed answer with fewer bytes than asked for.
    ShortItem,
}

async fn liar(lie: Lie) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut n = 0;
                loop {
                    let mut head = [0u8; 4];
                    if s.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = proto::tpkt_payload_len(head).unwrap();
                    let mut payload = vec![0u8; len];
                    if s.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    n += 1;
                    let reply = match n {
                        1 => proto::connect_confirm(0x0100, 0x0101),
                        2 => {
                            let (r, _) = proto::parse_job(&payload).unwrap();
                            proto::ack(r, (0, 0), &[0xF0, 0, 0, 1, 0, 1, 0, 240], &[])
                        }
                        _ => {
                            let (r, _) = proto::parse_job(&payload).unwrap();
                            let item = |len: usize| {
                                proto::read_answer_data(&[proto::ItemResult::Data(vec![7; len])])
                            };
                            match lie {
                                Lie::Garbage => (0..40).map(|_| fastrand::u8(..)).collect(),
                                Lie::Oversized => vec![3, 0, 0xFF, 0xF0, 2, 0xF0, 0x80],
                                Lie::Truncated => {
                                    let mut f = proto::ack(r, (0, 0), &[4, 1], &item(2));
                                    f.truncate(f.len() - 1);
                                    f
                                }
                                Lie::WrongReference => {
                                    proto::ack(r.wrapping_add(7), (0, 0), &[4, 1], &item(2))
                                }
                                Lie::LongItem => proto::ack(r, (0, 0), &[4, 1], &item(4)),
                                Lie::ShortItem => proto::ack(r, (0, 0), &[4, 1], &item(1)),
                            }
                        }
                    };
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn broken_answers_are_decode_or_link_failures_never_values() {
    let dir = tempfile::tempdir().unwrap();
    for lie in [
        Lie::Garbage,
        Lie::Oversized,
        Lie::Truncated,
        Lie::WrongReference,
        Lie::LongItem,
        Lie::ShortItem,
    ] {
        let addr = liar(lie).await;
        let mut p = poller(
            dir.path(),
            &device("liar", &addr.to_string(), "", &[("w", "DB1.DBW0", "")]),
        );
        for _ in 0..3 {
            for r in p.poll().await {
                assert_eq!(r.value, None, "{lie:?} gave a value");
                match &r.quality {
                    Quality::Bad(
                        BadReason::Decode | BadReason::Timeout | BadReason::Disconnected,
                    ) => {}
                    other => panic!("{lie:?}: {other:?}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plc_end_to_end_into_the_cnc_rate() {
    let mut mem = Memory::new(16);
    // DB5: mode (int, 0 manual / 1 automatic), running (bit), speed (real).
    mem.dbs.insert(5, vec![0; 8]);
    mem.put_bit(Area::Db(5), 2, 0, true);
    mem.put(Area::Db(5), 4, &1500.0f32.to_be_bytes());
    let sim = SimS7::start(mem, 240).await.unwrap();
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = common::Platform::subscribe(port).await;
    let dir = tempfile::tempdir().unwrap();
    let mut devices = device(
        "line-plc",
        &sim.addr.to_string(),
        "",
        &[
            ("mode", "DB5.DBW0", "int"),
            ("running", "DB5.DBX2.0", ""),
            ("speed", "DB5.DBD4", "real"),
            ("ghost", "DB77.DBW0", ""),
        ],
    );
    devices += "[[processes]]\nid = \"forming\"\nname = \"冲压成形\"\nkey = true\n\
        [[equipment]]\nid = \"press-line\"\nname = \"冲压线\"\nprocess = \"forming\"\nkind = \"cnc\"\ndevice = \"line-plc\"\n\
        nc_active = \"mode == 1\"\nrunning = \"running\"\n";
    let mut cfg = common::config(&dir.path().join("state"), port, &devices, "", "");
    cfg.metrics.snapshot_interval = Duration::from_millis(300);
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(zgsz_agent::clock::SystemClock)).unwrap();
    let verified = |m: &serde_json::Value| {
        (
            m["indicators"]["cnc_rate_verified"]["numerator"].as_u64(),
            m["indicators"]["cnc_rate_verified"]["denominator"].as_u64(),
        )
    };
    let manual_ms = |m: &serde_json::Value| {
        m["equipment"][0]["time_ms"]["running_manual"]
            .as_u64()
            .unwrap_or(0)
    };
    platform
        .wait_for(WAIT, "time running manually", |p| {
            p.of_kind("metrics").iter().any(|m| manual_ms(m) > 0)
        })
        .await;
    for m in platform.of_kind("metrics") {
        assert_eq!(verified(&m), (Some(0), Some(1)), "{m}");
    }
    // The line switches to automatic: under NC, and verified.
    sim.memory
        .lock()
        .unwrap()
        .put(Area::Db(5), 0, &1i16.to_be_bytes());
    platform
        .wait_for(WAIT, "verified 1/1", |p| {
            p.of_kind("metrics")
                .iter()
                .any(|m| verified(m) == (Some(1), Some(1)))
        })
        .await;
    agent.stop().await;
    let telemetry = platform.of_kind("telemetry");
    for t in &telemetry {
        common::assert_schema("telemetry", t);
    }
    let readings: Vec<serde_json::Value> = telemetry.iter().flat_map(common::readings).collect();
    assert!(readings
        .iter()
        .any(|r| r["tag"] == "speed" && r["value"] == 1500.0));
    let ghost: Vec<&serde_json::Value> = readings.iter().filter(|r| r["tag"] == "ghost").collect();
    assert!(
        !ghost.is_empty()
            && ghost
                .iter()
                .all(|r| r["reason"] == "BadS7ObjectDoesNotExist"),
        "{ghost:?}"
    );
    for m in platform.of_kind("metrics") {
        common::assert_schema("metrics", &m);
    }
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

// ---------------------------------------------------------------------------
// python-snap7's server

/// tests/s7_server.py, driven over its stdin and stdout.
struct Snap7 {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Snap7 {
    fn start() -> Snap7 {
        let python = std::env::var("ZGSZ_SNAP7_PYTHON").unwrap_or_else(|_| {
            let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/snap7-venv/bin/python");
            assert!(
                std::path::Path::new(venv).exists(),
                "python-snap7 is needed: set ZGSZ_SNAP7_PYTHON to a Python with python-snap7, or create {venv} (see .ci/run)"
            );
            venv.to_string()
        });
        let mut child = Command::new(python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s7_server.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting tests/s7_server.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut s = Snap7 {
            child,
            stdin,
            stdout,
            port: 0,
        };
        let hello = s.line();
        s.port = hello["port"].as_u64().expect("port") as u16;
        s
    }

    fn line(&mut self) -> serde_json::Value {
        let mut text = String::new();
        self.stdout
            .read_line(&mut text)
            .expect("reading the server");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
    }

    fn command(&mut self, c: &str) -> serde_json::Value {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Asserts the server saw reads and not a single write.
    fn assert_read_only(&mut self) {
        let counts = self.command("counts");
        assert!(counts["reads"].as_u64().unwrap() > 0, "{counts}");
        assert_eq!(counts["writes"], 0, "the server saw a write: {counts}");
    }
}

impl Drop for Snap7 {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs python-snap7; .ci/run installs it"]
async fn snap7_every_area_and_type() {
    let mut server = Snap7::start();
    assert_every_type(&server.addr()).await;
    server.assert_read_only();
}

#[tokio::test]
#[ignore = "needs python-snap7; .ci/run installs it"]
async fn snap7_a_thousand_tags_packed_at_the_negotiated_pdu() {
    let mut server = Snap7::start();
    for pdu in [240, 480] {
        assert_many_tags(&server.addr(), pdu).await;
    }
    server.assert_read_only();
}

#[tokio::test]
#[ignore = "needs python-snap7; .ci/run installs it"]
async fn snap7_missing_db_and_out_of_range() {
    let mut server = Snap7::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = poller(
        dir.path(),
        &device(
            "plc",
            &server.addr(),
            "",
            &[
                ("good", "DB10.DBW2", ""),
                ("missing", "DB99.DBW0", ""),
                ("beyond", "DB10.DBW500", ""),
                ("edge", "DB10.DBW62", ""),
                ("past", "DB10.DBD64", ""),
            ],
        ),
    );
    let r = by_name(p.poll().await);
    let q = |n: &str| r[n].quality.clone();
    assert_eq!(q("good"), Quality::Good);
    assert_eq!(r["good"].value, Some(Value::Int(0x1234)));
    assert_eq!(
        q("missing"),
        Quality::Bad(BadReason::Status("BadS7ObjectDoesNotExist"))
    );
    assert_eq!(
        q("beyond"),
        Quality::Bad(BadReason::Status("BadS7AddressOutOfRange"))
    );
    assert_eq!(q("edge"), Quality::Good);
    assert_eq!(
        q("past"),
        Quality::Bad(BadReason::Status("BadS7AddressOutOfRange"))
    );
    server.assert_read_only();
}

#[tokio::test]
#[ignore = "needs python-snap7; .ci/run installs it"]
async fn snap7_server_stopped_and_restarted() {
    let mut server = Snap7::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = poller(
        dir.path(),
        &device("plc", &server.addr(), "", &[("w", "DB10.DBW2", "")]),
    );
    assert_eq!(p.poll().await[0].quality, Quality::Good);
    server.command("stop");
    let mut bad = false;
    for _ in 0..100 {
        if !p.poll().await[0].quality.is_good() {
            bad = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bad, "readings stayed good with the server stopped");
    server.command("start");
    let mut good = false;
    for _ in 0..400 {
        let r = p.poll().await;
        if r[0].quality == Quality::Good {
            assert_eq!(r[0].value, Some(Value::Int(0x1234)));
            good = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(good, "no good reading after the server came back");
    server.assert_read_only();
}

/// Runs the agent binary with `args` off the runtime (the simulated PLC
/// answers from this test's runtime meanwhile).
async fn agent(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
            .args(&args)
            .output()
            .expect("running zgsz-agent")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_read_commands_against_the_simulated_plc() {
    let sim = SimS7::start(memory(), 240).await.unwrap();
    let host = sim.addr.to_string();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["probe", "--host", &host, "--rack", "0", "--slot", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // The real at DBD14 is found from the value the HMI would show.
    let out = agent(args(&[
        "--area",
        "DB10",
        "--address",
        "8",
        "--count",
        "16",
        "--expect",
        "23.5",
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Suggested: DB10.DBD14 real = 23.5"),
        "{stdout}"
    );
    assert!(stdout.contains("address = \"DB10.DBD14\""), "{stdout}");
    // A missing DB: the return code and what to do.
    let out = agent(args(&["--area", "DB99", "--address", "0", "--count", "4"])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("BadS7ObjectDoesNotExist"), "{stderr}");

    // `read` of a config's S7 device: every tag, the plan, and a note.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    let text = format!(
        "[agent]\ngateway_id = \"gw\"\nstate_dir = {:?}\n[enterprise]\nname = \"测试\"\nuscc = \"{}\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n{}",
        dir.path().display().to_string(),
        common::USCC,
        device(
            "plc",
            &host,
            "",
            &[("speed", "DB10.DBD14", "real"), ("ghost", "DB99.DBW0", "")]
        )
    );
    std::fs::write(&file, text).unwrap();
    let out = agent(vec![
        "read".into(),
        "--config".into(),
        file.display().to_string(),
        "--device".into(),
        "plc".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("PDU 240, requests per cycle: 1 (the fewest the PDU allows: 1)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("speed") && l.contains("23.5") && l.ends_with("good")),
        "{stdout}"
    );
    assert!(stdout.contains("bad (BadS7ObjectDoesNotExist)"), "{stdout}");
    assert!(
        stdout.contains("note: the PLC has no such object"),
        "{stdout}"
    );
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_plc_costs_only_its_own_task() {
    let alive = SimS7::start(memory(), 240).await.unwrap();
    let dead = SimS7::start(memory(), 240).await.unwrap();
    dead.faults.silent.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    // The dead PLC's every answer is 3 s late, never arriving.
    let toml = device(
        "dead",
        &dead.addr.to_string(),
        "",
        &[("w", "DB10.DBW2", "")],
    )
    .replace("timeout = \"500ms\"", "timeout = \"3s\"")
        + &device(
            "alive",
            &alive.addr.to_string(),
            "",
            &[("w", "DB10.DBW2", "")],
        );
    let cfg = common::config(dir.path(), 1, &toml, "", "");
    assert_eq!(
        cfg.devices[0].timeout,
        Duration::from_secs(3),
        "the dead PLC's timeout"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let clock: Arc<dyn zgsz_agent::clock::Clock> = Arc::new(SystemClock);
    let tasks = zgsz_agent::source::spawn_all(&cfg.devices, &clock, &tx, &stop_rx);
    // Both devices poll every 100 ms. Until the dead one's first cycle has
    // timed out, the live one goes on: about 30 cycles, all good. Had they
    // shared a task it would have delivered at most one (5 is not a timing
    // claim, only far from both).
    let mut alive_good = 0;
    let first_timeout = async {
        loop {
            let cycle = rx.recv().await.expect("the sources run");
            for r in cycle {
                match (&*r.device, r.quality.is_good()) {
                    ("alive", true) => alive_good += 1,
                    ("dead", false) => return,
                    other => panic!("unexpected reading {other:?}: {r:?}"),
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), first_timeout)
        .await
        .expect("the dead PLC timed out within 60 s");
    let _ = stop.send(true);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        alive_good >= 5,
        "the live PLC delivered only {alive_good} cycles while the dead one timed out"
    );
}
