//! The load generator of `examples/platform_load` makes streams the
//! receiver verifies: every window of several gateways, enveloped from
//! shared streams, through `ingest::handle` one message at a time and
//! through `ingest::handle_batch` in batches, in the order the gateways
//! replay them and in another.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

#[allow(dead_code)]
#[path = "../examples/platform_load/gen.rs"]
mod gen;

use zgsz_platform::config::Config;
use zgsz_platform::ingest::{handle, handle_batch, Handled};
use zgsz_platform::store::{Gateway, Store};

const GATEWAYS: usize = 3;
const HOURS: usize = 30;

/// The receiver's store, with the gateways enrolled, and its config.
async fn receiver(dir: &std::path::Path, gateways: &[gen::Gateway]) -> (Store, Config) {
    let path = dir.join("p.db");
    let cfg = Config::parse(
        "platform.toml",
        &format!(
            "[database]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"t\"\nshare_group = \"city\"\ntopic_prefix = \"{}\"\n",
            path.display(),
            gen::PREFIX
        ),
    )
    .unwrap();
    let mut store = Store::sqlite(&path).await.unwrap();
    for g in gateways {
        store
            .enrol(&Gateway {
                gateway_id: g.id.clone(),
                uscc: g.uscc.clone(),
                region_code: g.region.clone(),
                public_key: "ab".repeat(32),
            })
            .await
            .unwrap();
    }
    (store, cfg)
}

/// Every gateway's messages, hour by hour across the gateways; two
/// streams shared by three gateways.
fn messages(agent: &gen::Agent, gateways: &[gen::Gateway]) -> Vec<(String, Vec<u8>)> {
    let streams = [agent.stream(HOURS, 1), agent.stream(HOURS, 2)];
    assert_eq!(
        streams[0].len(),
        2 * HOURS,
        "a states and a metrics row an hour"
    );
    assert_ne!(
        streams[0][1].body, streams[1][1].body,
        "different seeds give different windows"
    );
    let mut out = Vec::new();
    for rows in streams[0].iter().zip(&streams[1]) {
        for (n, g) in gateways.iter().enumerate() {
            let (t, p) = g.message(if n % 2 == 0 { rows.0 } else { rows.1 });
            out.push((t.to_string(), p));
        }
    }
    out
}

async fn all_verified(store: &mut Store) {
    assert!(store.rejected().await.unwrap().is_empty());
    let windows = store.windows().await.unwrap();
    assert_eq!(windows.len(), GATEWAYS * HOURS);
    let not: Vec<_> = windows.iter().filter(|w| w.verdict != "verified").collect();
    assert!(
        not.is_empty(),
        "not verified: {:?}",
        &not[..not.len().min(3)]
    );
    let ids: std::collections::BTreeSet<&str> =
        windows.iter().map(|w| w.gateway_id.as_str()).collect();
    assert_eq!(ids.len(), GATEWAYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_window_verifies_one_by_one() {
    let agent = gen::Agent::new(3);
    let gateways: Vec<gen::Gateway> = (0..GATEWAYS).map(|n| agent.gateway(n)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut store, cfg) = receiver(dir.path(), &gateways).await;
    for (t, p) in messages(&agent, &gateways) {
        assert_eq!(
            handle(&mut store, &cfg, &t, &p).await.unwrap(),
            Handled::Stored
        );
    }
    let (t, p) = gateways[0].status();
    assert_eq!(
        handle(&mut store, &cfg, t, &p).await.unwrap(),
        Handled::Stored
    );
    all_verified(&mut store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_generated_window_verifies_in_batches_out_of_order() {
    let agent = gen::Agent::new(3);
    let gateways: Vec<gen::Gateway> = (0..GATEWAYS).map(|n| agent.gateway(n)).collect();
    let dir = tempfile::tempdir().unwrap();
    let (mut store, cfg) = receiver(dir.path(), &gateways).await;
    let mut all = messages(&agent, &gateways);
    // As two receivers of a shared subscription see them: later hours
    // before earlier ones, metrics before their states.
    all.reverse();
    all.push(all[0].clone());
    for chunk in all.chunks(37) {
        let batch: Vec<(&str, &[u8])> = chunk.iter().map(|(t, p)| (t.as_str(), &p[..])).collect();
        handle_batch(&mut store, &cfg, &batch).await.unwrap();
    }
    // The repeated message is a duplicate; a foreign one is rejected
    // without taking the batch's others with it.
    let (t, p) = &all[1];
    let outcomes = handle_batch(
        &mut store,
        &cfg,
        &[
            (t, p),
            ("zgsz/321003/91321000MA99999999/gw-99999/states", b"{}"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcomes[0], Handled::Duplicate);
    assert!(matches!(&outcomes[1], Handled::Rejected(r) if r.contains("not enrolled")));
    assert_eq!(store.rejected().await.unwrap().len(), 1);
    let windows = store.windows().await.unwrap();
    assert!(windows.iter().all(|w| w.verdict == "verified"));
    assert_eq!(windows.len(), GATEWAYS * HOURS);
}
