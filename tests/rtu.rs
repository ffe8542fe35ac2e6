//! Modbus RTU: real serial lines (pty pairs from socat) with tokio-modbus's
//! RTU server or a raw-frame slave on the far end, RTU over TCP against the
//! simulator, and the `scan`, `probe` and `read` commands as run by an
//! engineer. The serial tests are marked `#[ignore = "needs socat"]`: run
//! with `--include-ignored`, as `.ci/run` does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, Platform};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use zgsz_agent::clock::{Clock, SystemClock};
use zgsz_agent::config::{Config, Parity, SerialConfig};
use zgsz_agent::reading::{BadReason, Quality, Reading, Value};
use zgsz_agent::sim::rtu::{Behaviour, RawSlave};
use zgsz_agent::sim::{Bank, SimDevice, SimSerial};
use zgsz_agent::source::modbus::rtu::{open_serial, Bus};

const TAGS: &str = r#"
[[devices.tags]]
name = "id_word"
area = "holding_register"
address = 0
[[devices.tags]]
name = "temp"
area = "holding_register"
address = 2
type = "f32"
order = "CDAB"
[[devices.tags]]
name = "running"
area = "coil"
address = 0
"#;

/// A unit's registers: its id in holding 0, 20.5 + id as f32 CDAB at 2,
/// coil 0 set for odd ids.
fn unit_bank(unit: u8) -> Bank {
    let mut b = Bank::new(16);
    b.holding[0] = u16::from(unit) * 100;
    let bits = (20.5f32 + f32::from(unit)).to_bits();
    b.holding[2] = (bits & 0xFFFF) as u16;
    b.holding[3] = (bits >> 16) as u16;
    b.coils[0] = unit % 2 == 1;
    b
}

fn check_good(r: &[Reading], unit: u8) {
    assert_eq!(r.len(), 3, "{r:?}");
    assert!(r.iter().all(|r| r.quality.is_good()), "{r:?}");
    assert_eq!(r[0].value, Some(Value::Int(i64::from(unit) * 100)));
    assert_eq!(r[1].value, Some(Value::Float(20.5 + f64::from(unit))));
    assert_eq!(r[2].value, Some(Value::Bool(unit % 2 == 1)));
}

fn serial_device(
    id: &str,
    port: &str,
    baud: u32,
    unit: u8,
    interval: &str,
    timeout: &str,
) -> String {
    format!(
        "[[devices]]\nid = \"{id}\"\nprotocol = \"modbus-rtu\"\nport = \"{port}\"\nbaud = {baud}\nunit_id = {unit}\npoll_interval = \"{interval}\"\ntimeout = \"{timeout}\"\nretries = 0\n{TAGS}\n"
    )
}

fn line(baud: u32) -> SerialConfig {
    SerialConfig {
        baud,
        parity: Parity::N,
        data_bits: 8,
        stop_bits: 1,
    }
}

/// The cycles the sources send, per device, in arrival order.
type Cycles = HashMap<String, Vec<Vec<Reading>>>;

/// Runs the configured sources (exactly as `run` starts them) until `done`
/// holds over the cycles received so far, then stops them.
async fn collect<F: FnMut(&Cycles) -> bool>(cfg: &Config, limit: Duration, mut done: F) -> Cycles {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let tasks = zgsz_agent::source::spawn_all(&cfg.devices, &clock, &tx, &stop_rx);
    drop(tx);
    let mut cycles: Cycles = HashMap::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !done(&cycles) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => {
                let batch: Vec<Reading> = batch;
                let devices: std::collections::HashSet<&str> =
                    batch.iter().map(|r| &*r.device).collect();
                assert_eq!(devices.len(), 1, "one device per cycle: {batch:?}");
                cycles
                    .entry(batch[0].device.to_string())
                    .or_default()
                    .push(batch);
            }
            Ok(None) => panic!("sources stopped"),
            Err(_) => panic!(
                "timed out after {limit:?}; cycles so far: {:?}",
                cycles.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>()
            ),
        }
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    cycles
}

fn count(c: &Cycles, id: &str) -> usize {
    c.get(id).map_or(0, Vec::len)
}

#[ignore = "needs socat (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_on_one_serial_bus_share_a_lane_and_keep_their_qualities() {
    let pty = common::require_pty();
    let sim = SimSerial::start(
        &pty.a.display().to_string(),
        &line(9600),
        HashMap::from([
            (1u8, Arc::new(Mutex::new(unit_bank(1)))),
            (2u8, Arc::new(Mutex::new(unit_bank(2)))),
            (5u8, Arc::new(Mutex::new(unit_bank(5)))),
        ]),
    )
    .unwrap();
    // Unit 5 answers every request with "server device failure"; unit 9
    // is not on the bus at all.
    sim.faults.unit_exception.lock().unwrap().insert(5, 4);
    let port = pty.agent_end();
    let devices = [
        serial_device("u1", &port, 9600, 1, "50ms", "200ms"),
        serial_device("u2", &port, 9600, 2, "50ms", "200ms"),
        serial_device("u5", &port, 9600, 5, "50ms", "200ms"),
        serial_device("u9", &port, 9600, 9, "50ms", "200ms"),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, &devices, "", "");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let buses = Bus::group(&cfg.devices, &clock);
    assert_eq!(buses.len(), 1, "four devices on one port are one lane");
    assert_eq!(buses[0].units(), 4);

    let cycles = collect(&cfg, Duration::from_secs(30), |c| {
        count(c, "u1") >= 5 && count(c, "u2") >= 5 && count(c, "u5") >= 3 && count(c, "u9") >= 2
    })
    .await;
    for r in &cycles["u1"] {
        check_good(r, 1);
    }
    for r in &cycles["u2"] {
        check_good(r, 2);
    }
    for r in &cycles["u5"] {
        assert!(
            r.iter()
                .all(|r| r.quality == Quality::Bad(BadReason::Exception(4))),
            "{r:?}"
        );
    }
    // The absent unit costs its timeout once (the rest of that cycle is
    // already backing off), then backs off without the wire.
    assert!(cycles["u9"][0]
        .iter()
        .any(|r| r.quality == Quality::Bad(BadReason::Timeout)));
    assert!(cycles["u9"].iter().flatten().all(|r| matches!(
        r.quality,
        Quality::Bad(BadReason::Timeout | BadReason::Disconnected)
    )));
    // Read-only: the bus saw reads and nothing else.
    assert!(sim.counters.reads.load(Ordering::Relaxed) > 0);
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

/// Starts a raw slave on the slave's end of a fresh pty pair.
fn raw_slave(pty: &zgsz_agent::sim::rtu::SocatPty, baud: u32) -> RawSlave {
    let port = open_serial(&pty.a.display().to_string(), &line(baud)).unwrap();
    RawSlave::start(port, None)
}

#[ignore = "needs socat (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_never_interleave_and_the_inter_frame_gap_is_kept() {
    for baud in [9600u32, 115200] {
        let pty = common::require_pty();
        let slave = raw_slave(&pty, baud);
        for u in [1u8, 2, 3] {
            slave.set_unit(u, unit_bank(u), Behaviour::Answer);
        }
        // A slow device: a second requester on the line would have 3 ms
        // to slip a frame in before each answer.
        slave.set_delay(Duration::from_millis(3));
        let port = pty.agent_end();
        let devices = [
            serial_device("u1", &port, baud, 1, "10ms", "500ms"),
            serial_device("u2", &port, baud, 2, "10ms", "500ms"),
            serial_device("u3", &port, baud, 3, "10ms", "500ms"),
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1, &devices, "", "");
        let cycles = collect(&cfg, Duration::from_secs(30), |c| {
            ["u1", "u2", "u3"].iter().all(|d| count(c, d) >= 8)
        })
        .await;
        for (id, unit) in [("u1", 1), ("u2", 2), ("u3", 3)] {
            for r in &cycles[id] {
                check_good(r, unit);
            }
        }
        let gap = line(baud).inter_frame_gap();
        // The slave logs an exchange after its answer is written, so the
        // agent can finish its last cycle before the log holds it.
        assert!(
            slave
                .wait_for_exchanges(24 * 2, Duration::from_secs(10))
                .await,
            "two requests per cycle: {}",
            slave.log().len()
        );
        let log = slave.log();
        for (i, e) in log.iter().enumerate() {
            assert!(e.crc_ok, "request {i} arrived intact: {e:?}");
            assert_eq!(
                e.overlapping_bytes, 0,
                "at {baud} baud, bytes arrived while request {i} was being answered: {e:?}"
            );
            assert!(matches!(e.function, 1 | 3), "reads only: {e:?}");
        }
        for w in log.windows(2) {
            let end = w[0].response_end.expect("every unit answered");
            // The next request only comes after the answer, and after
            // 3.5 character times (1.75 ms above 19200 baud) of silence.
            let silence = w[1].request_start.saturating_duration_since(end);
            assert!(
                w[1].request_start >= end && silence >= gap,
                "at {baud} baud only {silence:?} of silence before a request (need {gap:?})"
            );
        }
        assert_eq!(slave.writes.load(Ordering::Relaxed), 0);
    }
}

#[ignore = "needs socat (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_unit_backs_off_while_the_live_units_keep_their_rate() {
    let pty = common::require_pty();
    let slave = raw_slave(&pty, 9600);
    slave.set_unit(1, unit_bank(1), Behaviour::Answer);
    slave.set_unit(3, unit_bank(3), Behaviour::Exception(6));
    // Unit 2 is configured but dead: it never answers.
    let port = pty.agent_end();
    let devices = [
        serial_device("live", &port, 9600, 1, "50ms", "100ms"),
        serial_device("dead", &port, 9600, 2, "50ms", "100ms"),
        serial_device("busy", &port, 9600, 3, "50ms", "100ms"),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, &devices, "", "");
    let cycles = collect(&cfg, Duration::from_secs(60), |c| count(c, "dead") >= 25).await;

    let dead = &cycles["dead"];
    assert!(dead[0]
        .iter()
        .any(|r| r.quality == Quality::Bad(BadReason::Timeout)));
    let backed_off = dead
        .iter()
        .filter(|c| {
            c.iter()
                .all(|r| r.quality == Quality::Bad(BadReason::Disconnected))
        })
        .count();
    // Unit 2 asked on the wire: one request per attempt (the first block
    // times out; the rest of that cycle is already backing off).
    let asked = slave.log().iter().filter(|e| e.unit == 2).count();
    assert!(asked >= 2, "the dead unit is tried again after its backoff");
    assert!(
        asked < dead.len() / 2 && backed_off > dead.len() / 2,
        "most of the dead unit's {} cycles must cost no wire time: {asked} requests, {backed_off} cycles backing off",
        dead.len()
    );
    // The live unit kept polling meanwhile, all good; the busy unit's
    // exceptions are answers, so it is polled at its rate too.
    let live = &cycles["live"];
    for r in live {
        check_good(r, 1);
    }
    assert!(
        live.len() >= dead.len() / 2,
        "live unit ran {} cycles while the dead one ran {}",
        live.len(),
        dead.len()
    );
    let busy = &cycles["busy"];
    assert!(busy.len() >= dead.len() / 2);
    assert!(busy
        .iter()
        .flatten()
        .all(|r| r.quality == Quality::Bad(BadReason::Exception(6))));
}

#[ignore = "needs socat (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_crc_is_a_decode_quality_and_the_bus_recovers() {
    let pty = common::require_pty();
    let slave = raw_slave(&pty, 19200);
    slave.set_unit(1, unit_bank(1), Behaviour::Answer);
    slave.set_unit(2, unit_bank(2), Behaviour::Answer);
    slave.corrupt_next(1, 2);
    let port = pty.agent_end();
    let devices = [
        serial_device("noisy", &port, 19200, 1, "30ms", "150ms"),
        serial_device("clean", &port, 19200, 2, "30ms", "150ms"),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, &devices, "", "");
    let cycles = collect(&cfg, Duration::from_secs(30), |c| {
        c.get("noisy").is_some_and(|v| {
            v.last()
                .is_some_and(|r| r.iter().all(|r| r.quality.is_good()))
        }) && count(c, "clean") >= 5
    })
    .await;
    let noisy = &cycles["noisy"];
    // The first answer failed its CRC: bytes came but no valid frame.
    assert!(
        noisy[0]
            .iter()
            .any(|r| r.quality == Quality::Bad(BadReason::Decode)),
        "{:?}",
        noisy[0]
    );
    assert!(noisy.iter().flatten().all(|r| r.quality.is_good()
        || matches!(
            r.quality,
            Quality::Bad(BadReason::Decode | BadReason::Disconnected)
        )));
    check_good(noisy.last().unwrap(), 1);
    // The other unit on the bus never noticed.
    for r in &cycles["clean"] {
        check_good(r, 2);
    }
    assert!(slave
        .log()
        .iter()
        .all(|e| e.overlapping_bytes == 0 && e.crc_ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_units_reach_the_platform() {
    let sim = SimDevice::start_rtu_over_tcp(HashMap::from([
        (1u8, Arc::new(Mutex::new(unit_bank(1)))),
        (2u8, Arc::new(Mutex::new(unit_bank(2)))),
    ]))
    .await
    .unwrap();
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = Platform::subscribe(port).await;
    let device = |id: &str, unit: u8| {
        format!(
            "[[devices]]\nid = \"{id}\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"{}\"\nunit_id = {unit}\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\nretries = 0\n{TAGS}\n",
            sim.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        port,
        &[device("rt1", 1), device("rt2", 2), device("rt7", 7)].concat(),
        "",
        "",
    );
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let good = |p: &Platform, dev: &str| {
        p.of_kind("telemetry")
            .iter()
            .flat_map(common::readings)
            .filter(|r| r["device"] == dev && r["quality"] == "good")
            .count()
    };
    platform
        .wait_for(Duration::from_secs(30), "readings of both units", |p| {
            good(p, "rt1") >= 6 && good(p, "rt2") >= 6
        })
        .await;
    agent.stop().await;
    for m in platform.of_kind("telemetry") {
        for r in &common::readings(&m) {
            let unit = match r["device"].as_str().unwrap() {
                "rt1" => 1,
                "rt2" => 2,
                _ => {
                    // Unit 7 is not behind the device server: silence.
                    assert_ne!(r["quality"], "good", "{r}");
                    continue;
                }
            };
            let expected = match r["tag"].as_str().unwrap() {
                "id_word" => json!(unit * 100),
                "temp" => json!(20.5 + f64::from(unit)),
                _ => json!(unit % 2 == 1),
            };
            assert_eq!(r["value"], expected, "{r}");
        }
    }
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

/// Runs the real binary without blocking the runtime.
async fn agent_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
            .args(&args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run zgsz-agent")
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn listed_units(stdout: &str) -> Vec<u8> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("unit "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn units_1_7_42() -> HashMap<u8, Arc<Mutex<Bank>>> {
    [1u8, 7, 42]
        .into_iter()
        .map(|u| (u, Arc::new(Mutex::new(unit_bank(u)))))
        .collect()
}

#[ignore = "needs socat (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_units_1_7_and_42_on_a_serial_bus() {
    let pty = common::require_pty();
    let sim = SimSerial::start(&pty.a.display().to_string(), &line(9600), units_1_7_42()).unwrap();
    // A unit that answers with an exception is there all the same.
    sim.faults.unit_exception.lock().unwrap().insert(7, 2);
    let out = agent_cli(
        [
            "scan",
            "--port",
            &pty.agent_end(),
            "--baud",
            "9600",
            "--parity",
            "N",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--units".into(),
            "1-50".into(),
            "--timeout".into(),
            "50ms".into(),
        ])
        .collect(),
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(listed_units(&stdout), vec![1, 7, 42], "{stdout}");
    assert!(stdout.contains("unit   7"), "{stdout}");
    assert!(
        stdout.contains("exception 2 (illegal data address): the unit is there"),
        "{stdout}"
    );
    assert!(
        stdout.contains("holding_register 0 = 0x1068"),
        "unit 42's register: {stdout}"
    );
    assert!(
        stdout.contains("3 of 50 unit id(s) answered in "),
        "{stdout}"
    );
    // Not a terminal: no progress lines on stderr.
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_behind_a_tcp_gateway_and_a_serial_device_server() {
    // A Modbus TCP gateway answers for absent units with exception 0x0B;
    // a serial device server (RTU over TCP) just stays silent.
    let gateway = SimDevice::start(units_1_7_42()).await.unwrap();
    let server = SimDevice::start_rtu_over_tcp(units_1_7_42()).await.unwrap();
    for (sim, extra) in [(&gateway, None), (&server, Some("--rtu-over-tcp"))] {
        let mut args: Vec<String> = [
            "scan",
            "--host",
            &sim.addr.to_string(),
            "--units",
            "1-10,40-45",
            "--timeout",
            "100ms",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(extra.map(String::from));
        let out = agent_cli(args).await;
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}\n{}",
            text(&out.stderr)
        );
        assert_eq!(listed_units(&stdout), vec![1, 7, 42], "{stdout}");
        assert!(stdout.contains("3 of 16 unit id(s) answered"), "{stdout}");
    }
    // Nobody home: exit 1 with advice.
    let out = agent_cli(
        [
            "scan",
            "--host",
            &gateway.addr.to_string(),
            "--units",
            "2-3",
            "--timeout",
            "100ms",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("0 of 2 unit id(s) answered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_decodes_every_type_and_suggests_the_tag() {
    let mut bank = Bank::new(128);
    bank.holding[100] = 0x0000;
    bank.holding[101] = 0x41BC;
    let sim = SimDevice::start(HashMap::from([(3u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap();
    let base: Vec<String> = [
        "probe",
        "--host",
        &sim.addr.to_string(),
        "--unit",
        "3",
        "--area",
        "holding",
        "--address",
        "100",
        "--count",
        "2",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut args = base.clone();
    args.extend(["--expect".to_string(), "23.5".to_string()]);
    let out = agent_cli(args).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("      100  0x0000"), "{stdout}");
    assert!(stdout.contains("      101  0x41BC"), "{stdout}");
    let f32_row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("f32"))
        .expect("an f32 row");
    // Columns ABCD, CDAB, BADC, DCBA: only CDAB is marked.
    let marked: Vec<&str> = f32_row.split("  ").filter(|c| c.ends_with(" *")).collect();
    assert_eq!(marked, ["23.5 *"], "{f32_row}");
    assert!(stdout.contains("Suggested: f32 CDAB = 23.5"), "{stdout}");
    assert!(
        stdout.contains(
            "area = \"holding_register\"\naddress = 100\ntype = \"f32\"\norder = \"CDAB\"\n"
        ),
        "{stdout}"
    );
    // 64-bit types need four registers: shown as "-".
    let u64_row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("u64"))
        .unwrap();
    assert!(u64_row.contains('-'), "{u64_row}");

    // Without --expect the plausible floats are marked (CDAB and DCBA).
    let out = agent_cli(base.clone()).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("* plausible float"), "{stdout}");
    assert!(
        stdout.contains("Suggested: f32 CDAB = 23.5 (2 combinations are marked"),
        "{stdout}"
    );

    // A value nothing gives: exit 1 with advice.
    let mut args = base;
    args.extend(["--expect".to_string(), "-7.25".to_string()]);
    let out = agent_cli(args).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("No type or order gives -7.25"));
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_probe_take_an_rtu_device_from_the_config() {
    let sim =
        SimDevice::start_rtu_over_tcp(HashMap::from([(4u8, Arc::new(Mutex::new(unit_bank(4))))]))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[agent]
gateway_id = "gw-test"
state_dir = "{state}"

[enterprise]
name = "测试企业"
uscc = "{uscc}"
region_code = "321003"
industry = "discrete"

[mqtt]
host = "127.0.0.1"
tls = false

[[devices]]
id = "meter-4"
protocol = "modbus-rtu-over-tcp"
address = "{addr}"
unit_id = 4
timeout = "500ms"
{TAGS}
"#,
            state = dir.path().display(),
            uscc = common::USCC,
            addr = sim.addr
        ),
    )
    .unwrap();
    let cfg = path.display().to_string();
    let out = agent_cli(vec![
        "read".into(),
        "--config".into(),
        cfg.clone(),
        "--device".into(),
        "meter-4".into(),
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("meter-4 (modbus-rtu-over-tcp "), "{stdout}");
    assert!(stdout.contains("24.5"), "{stdout}");

    let out = agent_cli(
        [
            "probe",
            "--config",
            &cfg,
            "--device",
            "meter-4",
            "--area",
            "holding",
            "--address",
            "2",
            "--count",
            "2",
            "--expect",
            "24.5",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("of unit 4 at "), "{stdout}");
    assert!(stdout.contains("order = \"CDAB\""), "{stdout}");

    // --device needs --config.
    let out = agent_cli(
        [
            "probe",
            "--device",
            "meter-4",
            "--area",
            "holding",
            "--address",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sim.counters.writes.load(Ordering::Relaxed), 0);
}
