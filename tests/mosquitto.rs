//! Interoperability with a real, independent broker: mosquitto, started by
//! the test on a free loopback port. Marked `#[ignore = "needs mosquitto"]`:
//! run with `--include-ignored`, as `.ci/run` does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_contiguous, assert_schema, config, wait_until, Mode, Mosquitto, Platform, Proxy,
};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::sim::{Bank, SimDevice};

const TAGS: &str = r#"
[[devices.tags]]
name = "counter"
area = "holding_register"
address = 0
type = "u32"
[[devices.tags]]
name = "speed"
area = "holding_register"
address = 2
type = "f32"
"#;

async fn sim() -> SimDevice {
    let mut b = Bank::new(16);
    b.holding[0..4].copy_from_slice(&[0, 42, 0x41BC, 0]);
    SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(b)))]))
        .await
        .unwrap()
}

fn devices(addr: std::net::SocketAddr) -> String {
    format!("[[devices]]\nid = \"plc-1\"\naddress = \"{addr}\"\npoll_interval = \"20ms\"\n{TAGS}")
}

#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_through_a_mosquitto_restart_with_nothing_missing() {
    let mut broker = Mosquitto::require("");
    let sim = sim().await;
    let proxy = Proxy::start(([127, 0, 0, 1], broker.port).into(), Mode::Forward).await;
    let before = Platform::subscribe(broker.port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), proxy.port, &devices(sim.addr), "", "");
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    before
        .wait_for(Duration::from_secs(20), "live telemetry", |p| {
            p.of_kind("telemetry").len() >= 5
        })
        .await;

    // The broker dies; the agent must notice and keep polling into the outbox.
    broker.kill();
    proxy.set(Mode::Refuse);
    let uplink = agent.uplink.clone();
    wait_until(
        Duration::from_secs(30),
        "the agent to notice the broker is gone",
        || !uplink.borrow().connected,
    )
    .await;
    let buffer = agent.buffer.clone();
    common::wait_for_stats(
        &buffer,
        Duration::from_secs(60),
        "a backlog builds while the broker is down",
        |s| s.rows >= 30,
    )
    .await;

    // A fresh broker on the same port; the platform subscribes before the
    // agent is let through, so it sees every message.
    broker.restart("");
    let after = Platform::subscribe(broker.port).await;
    proxy.set(Mode::Forward);
    let target = buffer.stats().await.unwrap().last_seq;
    after
        .wait_for(
            Duration::from_secs(60),
            "the backlog after the restart",
            |p| {
                p.telemetry_by_seq()
                    .keys()
                    .last()
                    .is_some_and(|&s| s >= target)
            },
        )
        .await;
    agent.stop().await;

    let mut all: BTreeMap<i64, serde_json::Value> = before.telemetry_by_seq();
    for (seq, m) in after.telemetry_by_seq() {
        if let Some(prev) = all.get(&seq) {
            assert_eq!(prev["cycles"], m["cycles"], "seq {seq} changed on resend");
        }
        all.insert(seq, m);
    }
    let (first, last) = assert_contiguous(&all);
    assert_eq!(first, 1);
    assert!(last >= target);
    for m in all.values() {
        assert_schema("telemetry", m);
        for r in &common::readings(m) {
            match r["tag"].as_str().unwrap() {
                "counter" => assert_eq!(r["value"], 42),
                _ => assert_eq!(r["value"], 23.5),
            }
        }
    }
    let stats = zgsz_agent::buffer::read_stats(dir.path()).unwrap();
    assert_eq!(stats.evicted_rows, 0);
    assert!(
        after
            .of_kind("telemetry")
            .iter()
            .any(|m| m["historical"] == true),
        "the backlog is marked historical"
    );
}

#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_and_says_offline_after_a_clean_stop() {
    let broker = Mosquitto::require("");
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), broker.port, &devices(sim.addr), "", "");
    // An early subscriber sees the online status arrive: from then on the
    // broker holds it as retained (waiting only for "connected" would race
    // with the status publish).
    let early = Platform::subscribe(broker.port).await;
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    early
        .wait_for(Duration::from_secs(20), "the online status", |p| {
            !p.of_kind("status").is_empty()
        })
        .await;

    // A subscriber that arrives later still gets the retained status.
    let late = Platform::subscribe(broker.port).await;
    late.wait_for(Duration::from_secs(10), "retained online status", |p| {
        p.raw
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _, retain)| t.ends_with("/status") && *retain)
    })
    .await;
    let online = late.of_kind("status");
    assert_eq!(online[0]["state"], "online");
    assert_schema("status", &online[0]);
    agent.stop().await;

    let after = Platform::subscribe(broker.port).await;
    after
        .wait_for(Duration::from_secs(10), "retained offline status", |p| {
            !p.of_kind("status").is_empty()
        })
        .await;
    let status = after.of_kind("status");
    assert_eq!(status[0]["state"], "offline");
    assert_schema("status", &status[0]);
}

#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_says_offline_when_the_agent_vanishes() {
    let broker = Mosquitto::require("");
    let sim = sim().await;
    let proxy = Proxy::start(([127, 0, 0, 1], broker.port).into(), Mode::Forward).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), proxy.port, &devices(sim.addr), "", "");
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let uplink = agent.uplink.clone();
    wait_until(Duration::from_secs(20), "the agent to connect", || {
        uplink.borrow().connected
    })
    .await;
    let platform = Platform::subscribe(broker.port).await;
    // Cut the connection under the agent: the broker sees it vanish
    // without a DISCONNECT and publishes the will.
    proxy.set(Mode::Refuse);
    platform
        .wait_for(Duration::from_secs(20), "the last will", |p| {
            p.of_kind("status").iter().any(|s| s["state"] == "offline")
        })
        .await;
    let will = platform
        .of_kind("status")
        .into_iter()
        .find(|s| s["state"] == "offline")
        .unwrap();
    assert_schema("status", &will);
    assert_eq!(will["gateway_id"], "gw-test");
    agent.stop().await;
}
