//! Tag values per second on one RTU bus, against the theoretical maximum
//! for the same frames.
//!
//!     cargo run --release --example rtu_throughput [-- SECONDS]
//!
//! A socat pty pair is the bus: the agent's bus lane (exactly as `run`
//! starts it) on one end, the raw-frame slave of `sim::rtu` on the other,
//! with four units whose polling interval is far shorter than the bus can
//! serve, so the lane runs flat out.
//!
//! A pty moves bytes at memory speed whatever the baud rate, so each case
//! runs twice:
//!
//! * "line-rate": the slave holds every answer back for the time the
//!   request and the answer would take on a real wire at that baud rate
//!   (10 bits per character at 8N1) plus the 3.5-character silence that
//!   ends the request. With the agent's own 3.5-character gap before its
//!   next request, one exchange then costs exactly what the theory says,
//!   so measured / theoretical is the lane's efficiency.
//! * "raw pty": no emulation; only the agent's gap and its own overheads
//!   remain, which shows the lane's ceiling, not a wire's.
//!
//! Theoretical maximum per exchange: (request + answer characters) x
//! character time + 2 x inter-frame gap (one ends the request, one ends
//! the answer), with 3.5 characters as the gap at or below 19200 baud and
//! 1.75 ms above.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use zgsz_agent::clock::{Clock, SystemClock};
use zgsz_agent::config::{self, Parity, SerialConfig};
use zgsz_agent::reading::Reading;
use zgsz_agent::sim::rtu::{Behaviour, RawSlave, SocatPty};
use zgsz_agent::sim::Bank;
use zgsz_agent::source::modbus::rtu::open_serial;

const UNITS: u8 = 4;

struct Case {
    baud: u32,
    /// u16 tags per unit, adjacent: one request of this many registers.
    tags: u16,
    line_rate: bool,
}

struct Result {
    measured: f64,
    theoretical: f64,
    exchanges_per_s: f64,
}

fn line(baud: u32) -> SerialConfig {
    SerialConfig {
        baud,
        parity: Parity::N,
        data_bits: 8,
        stop_bits: 1,
    }
}

/// Tag values per second if the wire were the only limit.
fn theoretical(baud: u32, tags: u16) -> f64 {
    let l = line(baud);
    let request = 8.0; // unit, function, start, count, CRC
    let answer = 5.0 + 2.0 * f64::from(tags); // unit, function, byte count, data, CRC
    let exchange =
        (request + answer) * l.char_time().as_secs_f64() + 2.0 * l.inter_frame_gap().as_secs_f64();
    f64::from(tags) / exchange
}

async fn run(case: &Case, seconds: f64) -> std::result::Result<Result, String> {
    let pty = SocatPty::start().map_err(|e| format!("socat: {e}"))?;
    let l = line(case.baud);
    let port = open_serial(&pty.a.display().to_string(), &l).map_err(|e| e.to_string())?;
    let slave = RawSlave::start(port, case.line_rate.then_some(l));
    let mut bank = Bank::new(128);
    for (i, r) in bank.holding.iter_mut().enumerate() {
        *r = i as u16;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut text = format!(
        "[agent]\ngateway_id = \"bench\"\nstate_dir = \"{}\"\n[enterprise]\nname = \"bench\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n",
        dir.path().display()
    );
    for unit in 1..=UNITS {
        slave.set_unit(unit, bank.clone(), Behaviour::Answer);
        text.push_str(&format!(
            "[[devices]]\nid = \"u{unit}\"\nprotocol = \"modbus-rtu\"\nport = \"{}\"\nbaud = {}\nunit_id = {unit}\npoll_interval = \"10ms\"\ntimeout = \"1s\"\nretries = 0\n",
            pty.agent_end(),
            case.baud
        ));
        for t in 0..case.tags {
            text.push_str(&format!(
                "[[devices.tags]]\nname = \"t{t}\"\narea = \"holding_register\"\naddress = {t}\n"
            ));
        }
    }
    let (cfg, _) =
        config::load_str(&dir.path().join("bench.toml"), &text).map_err(|e| e.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(4096);
    let (stop, stop_rx) = watch::channel(false);
    let tasks = zgsz_agent::source::spawn_all(&cfg.devices, &clock, &tx, &stop_rx);
    drop(tx);
    // Warm up (port open, stagger), then count good values in a window.
    let warm_until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm_until {
        let _ = tokio::time::timeout_at(warm_until, rx.recv()).await;
    }
    let exchanges_before = slave.log().len();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut values = 0u64;
    while let Ok(Some(batch)) = tokio::time::timeout_at(end, rx.recv()).await {
        values += batch.iter().filter(|r| r.quality.is_good()).count() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let exchanges = slave.log().len() - exchanges_before;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if slave.writes.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        return Err("the agent wrote to the bus".into());
    }
    Ok(Result {
        measured: values as f64 / elapsed,
        theoretical: theoretical(case.baud, case.tags),
        exchanges_per_s: exchanges as f64 / elapsed,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    println!(
        "| baud | regs/request | bus | exchanges/s | tag values/s | theoretical max | measured/theoretical |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|");
    for baud in [9600, 115200] {
        for tags in [10u16, 60] {
            for line_rate in [true, false] {
                let case = Case {
                    baud,
                    tags,
                    line_rate,
                };
                match run(&case, seconds).await {
                    Ok(r) => println!(
                        "| {baud} | {tags} | {} | {:.1} | {:.0} | {:.0} | {:.0}% |",
                        if line_rate { "line-rate" } else { "raw pty" },
                        r.exchanges_per_s,
                        r.measured,
                        r.theoretical,
                        100.0 * r.measured / r.theoretical
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
