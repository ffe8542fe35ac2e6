//! kill -9 of the receiver in the middle of a stream: the real
//! `zgsz-platform run` against mosquitto, killed twice while it ingests and
//! started again with the same client id. What it had committed stays;
//! what it had not is still in its persistent session (never acked) and
//! comes again. Afterwards every message is stored exactly once and every
//! window verified.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::time::Duration;

use common::mqtt::{self, Mosquitto};
use common::{chain, stored, topic, Fixture, Which};
use zgsz_platform::store::Store;

/// 2,000 messages: ingesting them takes several seconds, so each kill
/// lands mid-stream.
const HOURS: i64 = 1000;

/// Waits until `stored` reaches `n`.
async fn wait_stored(store: &mut Store, n: i64, limit: Duration, what: &str) -> i64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = stored(store).await;
        if s >= n {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}: {s} of {n} stored");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn killed_mid_ingest_twice_then_everything_stored_once(which: Which) {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = mqtt::receiver_config(dir.path(), &f.backend, broker.port, "city-1");
    let log = dir.path().join("receiver.log");
    let mut receiver = mqtt::spawn_receiver(&conf, &log);
    broker.wait_subscribed("city-1", 1).await;

    let messages: Vec<(String, String)> = chain(HOURS)
        .into_iter()
        .map(|(s, p)| (topic(s), p))
        .collect();
    let total = messages.len() as i64;
    let publisher = tokio::spawn(mqtt::publish_all(broker.port, messages));

    // Two kills: after a fifth and after three fifths are stored.
    for (round, fifths) in [(1, 1), (2, 3)] {
        wait_stored(
            &mut f.store,
            total * fifths / 5,
            Duration::from_secs(30),
            "the receiver to ingest before the kill",
        )
        .await;
        receiver.kill(); // SIGKILL
        let at_kill = stored(&mut f.store).await;
        assert!(
            at_kill < total,
            "kill {round} came after the last message; make the stream longer"
        );
        receiver = mqtt::spawn_receiver(&conf, &log);
        broker.wait_subscribed("city-1", round + 1).await;
        // It came back to its session, and the session held the rest.
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.matches("session_present=true").count(),
            round,
            "the restarted receiver resumes its persistent session:\n{text}"
        );
    }
    publisher.await.unwrap();
    wait_stored(
        &mut f.store,
        total,
        Duration::from_secs(60),
        "every message stored after two kills",
    )
    .await;
    receiver.kill();
    // The session's queue arrives in a burst after each restart; every
    // committed message was acknowledged, none left for a redelivery.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Ack not queued"), "{text}");

    // Exactly once: the counts equal what was published (the primary key
    // forbids a msg_id twice), and no seq is missing, so each is there.
    f.assert_chain_complete(HOURS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
async fn sqlite_receiver_killed_mid_ingest_twice_stores_every_message_once() {
    killed_mid_ingest_twice_then_everything_stored_once(Which::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL (.ci/run installs them and runs ignored tests)"]
async fn postgres_receiver_killed_mid_ingest_twice_stores_every_message_once() {
    killed_mid_ingest_twice_then_everything_stored_once(Which::Postgres).await;
}
