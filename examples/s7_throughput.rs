//! S7 throughput: tag values per second from one PLC with 1,000 tags, and
//! the Read Var requests per poll cycle against the fewest the negotiated
//! PDU allows.
//!
//! ```sh
//! cargo run --release --example s7_throughput -- 3
//! ```
//!
//! The PLC is the in-process simulator (`sim::s7`, loopback TCP), which
//! refuses any request or answer larger than its PDU, as a CPU does. The
//! poller is the agent's own, polled back to back (no poll interval), so a
//! row is the ceiling of one connection: one request in flight at a time.
//! Layouts:
//!
//! * `one DB`: 1,000 `int` tags, adjacent, in one DB;
//! * `50 DBs`: 20 tags in each of 50 DBs (bool, int, dint, real,
//!   string(16) mixed), 40 bytes apart, so ranges do not merge across gaps;
//! * `one item per tag`: the 50-DB layout with `coalesce = false`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a measuring tool run by hand: a panic with its message is the right way to stop"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use zgsz_agent::clock::SystemClock;
use zgsz_agent::config;
use zgsz_agent::sim::s7::{Memory, SimS7};
use zgsz_agent::source::s7::S7Poller;

fn tags_one_db() -> String {
    (0..1000)
        .map(|i| {
            format!(
                "[[devices.tags]]\nname = \"t{i}\"\naddress = \"DB1.DBW{}\"\ntype = \"int\"\n",
                2 * i
            )
        })
        .collect()
}

fn tags_fifty_dbs() -> String {
    let mut s = String::new();
    for db in 0..50 {
        for k in 0..20 {
            let (addr, ty) = match k % 5 {
                0 => (format!("DB{}.DBX{}.3", db + 10, k * 40), "bool"),
                1 => (format!("DB{}.DBW{}", db + 10, k * 40), "int"),
                2 => (format!("DB{}.DBD{}", db + 10, k * 40), "dint"),
                3 => (format!("DB{}.DBD{}", db + 10, k * 40), "real"),
                _ => (format!("DB{}.DBB{}", db + 10, k * 40), "string(16)"),
            };
            s += &format!(
                "[[devices.tags]]\nname = \"t{db}_{k}\"\naddress = \"{addr}\"\ntype = \"{ty}\"\n"
            );
        }
    }
    s
}

fn memory() -> Memory {
    let mut m = Memory::new(16);
    m.dbs.insert(1, vec![0; 2000]);
    for db in 0..50 {
        let mut bytes = vec![0u8; 800];
        for k in 0..20 {
            // A valid (empty) S7 string wherever a string tag sits.
            bytes[k * 40] = 16;
        }
        m.dbs.insert(db + 10, bytes);
    }
    m
}

async fn row(
    sim: &SimS7,
    layout: &str,
    tags: &str,
    pdu: u16,
    coalesce: bool,
    seconds: f64,
) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = format!(
        "[agent]\ngateway_id = \"bench\"\nstate_dir = \"{}\"\n[enterprise]\nname = \"bench\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n\
         [[devices]]\nid = \"plc\"\nprotocol = \"s7\"\naddress = \"{}\"\nrack = 0\nslot = 1\npdu_size = {pdu}\ncoalesce = {coalesce}\ntimeout = \"2s\"\n{tags}",
        dir.path().display(),
        sim.addr
    );
    let (cfg, _) =
        config::load_str(&dir.path().join("bench.toml"), &text).map_err(|e| e.to_string())?;
    let mut p =
        S7Poller::new(cfg.devices[0].clone(), Arc::new(SystemClock)).ok_or("not an S7 device")?;
    // Warm-up: connect, negotiate, plan.
    let first = p.poll().await;
    let bad = first.iter().filter(|r| !r.quality.is_good()).count();
    if bad > 0 {
        return Err(format!(
            "{layout}: {bad} bad readings: {:?}",
            first.iter().find(|r| !r.quality.is_good())
        ));
    }
    let (granted, requests, fewest) = p.plan_stats().ok_or("no plan")?;
    let start = Instant::now();
    let (mut cycles, mut values) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        let r = p.poll().await;
        values += r.iter().filter(|r| r.quality.is_good()).count() as u64;
        cycles += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "| {layout:<16} | {granted:>4} | {requests:>8} | {fewest:>7} | {:>8.0} | {:>13.0} |",
        cycles as f64 / secs,
        values as f64 / secs
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    println!("| layout           |  PDU | requests | fewest  | cycles/s | tag values/s |");
    println!("|------------------|------|----------|---------|----------|--------------|");
    for pdu in [240u16, 480, 960] {
        let sim = SimS7::start(memory(), pdu)
            .await
            .map_err(|e| e.to_string())?;
        row(&sim, "one DB", &tags_one_db(), pdu, true, seconds).await?;
        row(&sim, "50 DBs", &tags_fifty_dbs(), pdu, true, seconds).await?;
        row(
            &sim,
            "one item per tag",
            &tags_fifty_dbs(),
            pdu,
            false,
            seconds,
        )
        .await?;
        let writes = sim
            .counters
            .writes
            .load(std::sync::atomic::Ordering::Relaxed);
        if writes != 0 {
            return Err(format!("the PLC saw {writes} writes"));
        }
    }
    Ok(())
}
