//! PLCs that lie, stall, reset or talk garbage, and a clock that steps
//! backwards. Qualities must be right, other devices unaffected, no panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, Platform};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zgsz_agent::clock::{Clock, OffsetClock, SystemClock};
use zgsz_agent::reading::{BadReason, Quality};
use zgsz_agent::sim::{Bank, SimDevice};
use zgsz_agent::source::modbus::ModbusDevice;
use zgsz_agent::source::Source;

/// How a fake PLC answers each read request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Random bytes instead of a frame.
    Garbage,
    /// A header announcing more bytes than ever come.
    Truncated,
    /// A well-formed answer to some other transaction.
    WrongTransaction,
    /// A well-formed answer with fewer registers (or bytes of bits) than
    /// asked for.
    ShortAnswer,
    /// A well-formed answer with more registers (or bytes of bits) than
    /// asked for, as from a converter that mixed up two answers.
    LongAnswer,
    /// Accept, then reset the connection.
    Reset,
}

async fn liar(lie: Lie) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Lie::Reset = lie {
                    #[allow(deprecated)] // blocking on drop is the point: it sends the RST
                    let _ = s.set_linger(Some(Duration::ZERO));
                    return;
                }
                let mut req = [0u8; 12];
                while s.read_exact(&mut req).await.is_ok() {
                    let tid = [req[0], req[1]];
                    let function = req[7];
                    let count = u16::from_be_bytes([req[10], req[11]]);
                    // Registers, or for coils and discrete inputs bytes.
                    let units = if function <= 2 {
                        count.div_ceil(8)
                    } else {
                        count
                    };
                    let reply: Vec<u8> = match lie {
                        Lie::Garbage => (0..17).map(|_| fastrand::u8(..)).collect(),
                        Lie::Truncated => vec![tid[0], tid[1], 0, 0, 0, 40, 1, 3, 2],
                        Lie::WrongTransaction => frame([tid[0] ^ 0xFF, tid[1]], function, units),
                        Lie::ShortAnswer => frame(tid, function, units.saturating_sub(1)),
                        Lie::LongAnswer => frame(tid, function, units + 2),
                        Lie::Reset => unreachable!(),
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

/// An answer to read function `function` with `n` registers of 7, or for
/// coils and discrete inputs `n` bytes of bits 0b0101_0101.
fn frame(tid: [u8; 2], function: u8, n: u16) -> Vec<u8> {
    let mut pdu = vec![function];
    if function <= 2 {
        pdu.push(n as u8);
        pdu.extend(std::iter::repeat_n(0x55u8, usize::from(n)));
    } else {
        pdu.push((n * 2) as u8);
        for _ in 0..n {
            pdu.extend_from_slice(&7u16.to_be_bytes());
        }
    }
    let mut f = vec![tid[0], tid[1], 0, 0];
    f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    f.push(1);
    f.extend_from_slice(&pdu);
    f
}

const TAGS: &str = "[[devices.tags]]\nname = \"a\"\narea = \"holding_register\"\naddress = 0\n[[devices.tags]]\nname = \"b\"\narea = \"holding_register\"\naddress = 1\n";

/// `timeout`: short only where the lie is silence; a PLC that answers
/// (wrongly) gets seconds, so a slow machine cannot turn its answer into a
/// timeout.
fn device(id: &str, addr: std::net::SocketAddr, timeout: &str) -> String {
    format!("[[devices]]\nid = \"{id}\"\naddress = \"{addr}\"\npoll_interval = \"50ms\"\ntimeout = \"{timeout}\"\nretries = 0\n{TAGS}")
}

#[tokio::test]
async fn lying_plcs_give_bad_qualities_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (lie, expect) in [
        (
            Lie::Garbage,
            vec![
                BadReason::Decode,
                BadReason::Disconnected,
                BadReason::Timeout,
            ],
        ),
        (
            Lie::Truncated,
            vec![BadReason::Timeout, BadReason::Disconnected],
        ),
        (
            Lie::WrongTransaction,
            vec![BadReason::Decode, BadReason::Disconnected],
        ),
        (Lie::Reset, vec![BadReason::Disconnected]),
    ] {
        let addr = liar(lie).await;
        let timeout = if lie == Lie::Truncated { "300ms" } else { "5s" };
        let cfg = config(dir.path(), 1, &device("liar", addr, timeout), "", "");
        let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
        for _ in 0..3 {
            for r in dev.poll_once().await {
                match &r.quality {
                    Quality::Bad(why) => assert!(expect.contains(why), "{lie:?}: got {why}"),
                    Quality::Good => panic!("{lie:?} produced a good reading: {r:?}"),
                }
                assert_eq!(r.value, None);
            }
        }
    }
}

/// An answer whose size disagrees with the request, shorter or longer, is
/// `decode` for every tag of the request, never data: asked for 3 registers
/// and answered with 5, the first 3 must not pass as good. For every area
/// and read function code.
#[tokio::test]
async fn answers_of_another_size_than_asked_are_decode_in_every_area() {
    let dir = tempfile::tempdir().unwrap();
    for lie in [Lie::ShortAnswer, Lie::LongAnswer] {
        for area in [
            "coil",
            "discrete_input",
            "input_register",
            "holding_register",
        ] {
            let addr = liar(lie).await;
            let tags: String = ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    format!(
                        "[[devices.tags]]\nname = \"{name}\"\narea = \"{area}\"\naddress = {i}\n"
                    )
                })
                .collect();
            let dev_cfg = format!("[[devices]]\nid = \"sized\"\naddress = \"{addr}\"\npoll_interval = \"50ms\"\ntimeout = \"5s\"\nretries = 0\n{tags}");
            let cfg = config(dir.path(), 1, &dev_cfg, "", "");
            let mut dev = ModbusDevice::new(cfg.devices[0].clone(), Arc::new(SystemClock));
            assert_eq!(
                dev.plan_len(),
                1,
                "{area}: the three tags share one request"
            );
            let readings = dev.poll_once().await;
            assert_eq!(readings.len(), 3);
            for r in readings {
                assert_eq!(
                    r.quality,
                    Quality::Bad(BadReason::Decode),
                    "{lie:?} on {area}: {r:?}"
                );
                assert_eq!(r.value, None, "{lie:?} on {area}");
            }
            // The broken answer dropped the connection and the device backs
            // off; still no value.
            for r in dev.poll_once().await {
                assert!(!r.quality.is_good(), "{lie:?} on {area}: {r:?}");
                assert_eq!(r.value, None, "{lie:?} on {area}");
            }
        }
    }
}

/// An RTU-over-TCP device server that answers every read with `extra`
/// more (or, negative, fewer) registers or bytes of bits than asked for,
/// in a frame whose byte count and CRC are right.
async fn rtu_liar(extra: i16) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // unit, function, address (2), count (2), CRC (2)
                let mut req = [0u8; 8];
                while s.read_exact(&mut req).await.is_ok() {
                    let (unit, function) = (req[0], req[1]);
                    let count = u16::from_be_bytes([req[4], req[5]]);
                    let units = if function <= 2 {
                        count.div_ceil(8)
                    } else {
                        count
                    };
                    let n = u16::try_from(i32::from(units) + i32::from(extra)).unwrap_or(0);
                    let mut reply = vec![unit, function];
                    if function <= 2 {
                        reply.push(n as u8);
                        reply.extend(std::iter::repeat_n(0x55u8, usize::from(n)));
                    } else {
                        reply.push((n * 2) as u8);
                        for _ in 0..n {
                            reply.extend_from_slice(&7u16.to_be_bytes());
                        }
                    }
                    let crc = zgsz_agent::sim::rtu::crc16(&reply);
                    reply.extend_from_slice(&crc.to_le_bytes());
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The same over RTU framing (a serial device server): a frame that is
/// valid in itself but holds more or fewer registers or bits than asked
/// for is `decode` for every tag, in every area and read function code.
#[tokio::test]
async fn rtu_answers_of_another_size_than_asked_are_decode_in_every_area() {
    use zgsz_agent::source::modbus::{AnyLink, Poller};
    let dir = tempfile::tempdir().unwrap();
    for extra in [-1i16, 2] {
        for area in [
            "coil",
            "discrete_input",
            "input_register",
            "holding_register",
        ] {
            let addr = rtu_liar(extra).await;
            let tags: String = ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    format!(
                        "[[devices.tags]]\nname = \"{name}\"\narea = \"{area}\"\naddress = {i}\n"
                    )
                })
                .collect();
            let dev_cfg = format!("[[devices]]\nid = \"sized\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"{addr}\"\npoll_interval = \"50ms\"\ntimeout = \"5s\"\nretries = 0\n{tags}");
            let cfg = config(dir.path(), 1, &dev_cfg, "", "");
            let dev = cfg.devices[0].clone();
            let mut link = AnyLink::for_device(&dev);
            let mut poller = Poller::new(dev, Arc::new(SystemClock));
            assert_eq!(
                poller.plan_len(),
                1,
                "{area}: the three tags share one request"
            );
            let readings = poller.poll(&mut link).await;
            assert_eq!(readings.len(), 3);
            for r in readings {
                assert_eq!(
                    r.quality,
                    Quality::Bad(BadReason::Decode),
                    "{extra:+} on {area}: {r:?}"
                );
                assert_eq!(r.value, None, "{extra:+} on {area}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_of_liars_does_not_disturb_an_honest_device() {
    let mut bank = Bank::new(8);
    bank.holding[0] = 42;
    bank.holding[1] = 43;
    let honest = SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap();
    let mut devices = device("honest", honest.addr, "5s");
    for (i, lie) in [
        Lie::Garbage,
        Lie::Truncated,
        Lie::WrongTransaction,
        Lie::ShortAnswer,
        Lie::Reset,
    ]
    .into_iter()
    .enumerate()
    {
        devices += &device(&format!("liar-{i}"), liar(lie).await, "300ms");
    }
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = Platform::subscribe(port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port, &devices, "", "");
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let honest_cycles = |p: &Platform| {
        p.of_kind("telemetry")
            .iter()
            .flat_map(common::readings)
            .filter(|r| r["device"] == "honest")
            .count()
            / 2
    };
    platform
        .wait_for(Duration::from_secs(30), "20 honest cycles", |p| {
            honest_cycles(p) >= 20
        })
        .await;
    agent.stop().await;
    for m in platform.of_kind("telemetry") {
        for r in &common::readings(&m) {
            if r["device"] == "honest" {
                assert_eq!(r["quality"], "good", "{r}");
            }
        }
    }
}

/// Captures log output, to see the WARN an operator would see.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_stepping_back_an_hour_reuses_no_seq_and_is_warned_about() {
    let logs = Logs::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init();

    let mut bank = Bank::new(8);
    bank.holding[0] = 1; // controller_mode AUTOMATIC
    bank.holding[1] = 1; // execution ACTIVE
    let sim = SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap();
    let devices = format!(
        "[[devices]]\nid = \"m1\"\naddress = \"{}\"\npoll_interval = \"50ms\"\n[[devices.tags]]\nname = \"controller_mode\"\narea = \"holding_register\"\naddress = 0\n[[devices.tags]]\nname = \"execution\"\narea = \"holding_register\"\naddress = 1\n[[processes]]\nid = \"p\"\nname = \"车削\"\nkey = true\n[[equipment]]\nid = \"m1\"\nname = \"m1\"\nprocess = \"p\"\nkind = \"cnc\"\ndevice = \"m1\"\nprofile = \"mtconnect-like\"\n",
        sim.addr
    );
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = Platform::subscribe(port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port, &devices, "", "");
    let clock = Arc::new(OffsetClock::default());
    let agent = zgsz_agent::agent::start(&cfg, clock.clone()).unwrap();
    platform
        .wait_for(Duration::from_secs(20), "telemetry before the step", |p| {
            p.of_kind("telemetry").len() >= 5
        })
        .await;
    let before_step = clock.now_ms();
    clock.step(-3_600_000);
    // Toggle the machine so that a transition happens after the step.
    sim.bank(1).lock().unwrap().holding[1] = 0;
    platform
        .wait_for(
            Duration::from_secs(20),
            "telemetry stamped after the step",
            |p| {
                p.of_kind("telemetry")
                    .iter()
                    .flat_map(common::readings)
                    .any(|r| {
                        r["tag"] == "execution"
                            && r["value"] == 0
                            && r["ts"].as_i64().unwrap() < before_step - 3_000_000
                    })
            },
        )
        .await;
    agent.stop().await;

    // Seqs keep counting up; each msg_id has one seq (telemetry_by_seq checks).
    // Telemetry and metrics share the seq space: check both together.
    let mut by_seq = platform.telemetry_by_seq();
    for m in platform
        .of_kind("metrics")
        .into_iter()
        .chain(platform.of_kind("states"))
    {
        by_seq.insert(m["seq"].as_i64().unwrap(), m);
    }
    common::assert_contiguous(&by_seq);
    // The state history never goes backwards in time.
    let conn = zgsz_agent::buffer::open_read_only(dir.path()).unwrap();
    let mut st = conn
        .prepare("SELECT ts FROM transitions WHERE equipment = 'm1' ORDER BY rowid")
        .unwrap();
    let ts: Vec<i64> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(ts.len() >= 2, "{ts:?}");
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "transitions out of order: {ts:?}"
    );
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        text.contains("WARN") && text.contains("System clock stepped backwards"),
        "no WARN in:\n{text}"
    );
}
