//! The receiver against a PostgreSQL server that goes away under load: it
//! keeps the message unacknowledged, reconnects when the server is back,
//! and loses nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pg::PgCluster;
use common::{chain, topic, Fixture, Place};
use zgsz_platform::config::Backend;
use zgsz_platform::ingest::{handle, handle_retrying, Handled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl)"]
async fn postgres_restarted_mid_stream_the_receiver_reconnects_and_stores_every_message_once() {
    // A cluster of its own: this test stops it.
    let Some(cluster) = PgCluster::start() else {
        return;
    };
    let cluster = Arc::new(cluster);
    let url = cluster.create_database();
    let mut f = Fixture::on(
        Backend::Postgres { url },
        Place::Postgres(cluster.clone()),
        "city-1",
    )
    .await;
    const HOURS: i64 = 150;
    let stream = chain(HOURS);
    let total = stream.len();
    let committed = Arc::new(AtomicUsize::new(0));
    // What `run` does with each message: commit (retrying), then ack.
    let feeder = tokio::spawn({
        let committed = committed.clone();
        async move {
            for (stream, payload) in &stream {
                let h = handle_retrying(&mut f.store, &f.cfg, &topic(stream), payload.as_bytes())
                    .await
                    .expect("only transient errors, retried");
                assert!(matches!(h, Handled::Stored | Handled::Duplicate), "{h:?}");
                committed.fetch_add(1, Ordering::SeqCst);
            }
            (f, stream)
        }
    });
    while committed.load(Ordering::SeqCst) < total / 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outage = {
        let cluster = cluster.clone();
        let committed = committed.clone();
        tokio::task::spawn_blocking(move || {
            cluster.stop();
            let stopped = committed.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(2));
            let before_start = committed.load(Ordering::SeqCst);
            cluster.start_again();
            (stopped, before_start)
        })
    };
    let (stopped, before_start) = outage.await.expect("the outage");
    assert!(
        stopped < total,
        "the stream ended before the server stopped; make it longer"
    );
    // The feeder counts a commit after the server has acknowledged it: one
    // acknowledged just before the stop may be counted after.
    assert!(
        before_start <= stopped + 1,
        "nothing commits while the server is down ({stopped} then {before_start})"
    );
    let (mut f, stream) = tokio::time::timeout(Duration::from_secs(120), feeder)
        .await
        .expect("the stream resumes after the restart")
        .expect("the feeder");

    // Every message is stored once: the counts, no gap, every seal
    // verified (its neighbours and states are all there).
    f.assert_chain_complete(HOURS).await;
    // The broker's redelivery of everything after the restart: each one a
    // duplicate.
    for (stream, payload) in &stream {
        let h = handle(&mut f.store, &f.cfg, &topic(stream), payload.as_bytes())
            .await
            .unwrap();
        assert_eq!(h, Handled::Duplicate);
    }
}

/// Stored payloads are compressed with lz4 where the server has it (it is
/// a build option of PostgreSQL; Debian's has it), not the default pglz,
/// whose CPU was the largest single cost of the server in a catch-up.
#[tokio::test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl)"]
async fn payloads_stored_out_of_line_are_compressed_with_lz4() {
    let Some(mut f) = Fixture::new(common::Which::Postgres).await else {
        return;
    };
    for (stream, payload) in chain(3) {
        assert_eq!(f.put(stream, &payload).await, Handled::Stored);
    }
    let Backend::Postgres { url } = &f.backend else {
        unreachable!("a PostgreSQL fixture")
    };
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let lz4: bool = client
        .query_one(
            "SELECT count(*) > 0 FROM pg_config() WHERE name = 'CONFIGURE' AND setting LIKE '%with-lz4%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = client
        .query(
            "SELECT stream, pg_column_compression(payload) FROM messages
             WHERE pg_column_compression(payload) IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let methods: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        methods.iter().any(|(s, _)| s == "metrics"),
        "no metrics payload was compressed: {methods:?}"
    );
    let want = if lz4 { "lz4" } else { "pglz" };
    assert!(
        methods.iter().all(|(_, m)| m == want),
        "want {want}: {methods:?}"
    );
}
