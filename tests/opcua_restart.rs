//! An OPC UA server restarting mid-stream, in a test binary of its own:
//! it restarts the server on the same port, which another test starting a
//! server on a free port at that moment could take.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::opcua::{config, options, Collector, WAIT};
use zgsz_agent::reading::Quality;
use zgsz_agent::sim::opcua::OpcUaSim;

/// The server restarts mid-stream: readings turn bad while it is away,
/// then the subscription is recreated, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_resubscribes_without_duplicate_items() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("server-pki");
    let sim = OpcUaSim::start(options(&pki)).await.unwrap();
    let port = sim.port();
    let cfg = config(
        &dir.path().join("state"),
        &format!(
            "endpoint = \"{}\"\nroot = \"Machines/m1\"\n\
             [[devices.tags]]\nname = \"mode\"\npath = \"Monitoring/MachineTool/OperationMode\"\n\
             [[devices.tags]]\nname = \"feed\"\npath = \"Monitoring/Channel1/FeedOverride\"\n",
            sim.endpoint()
        ),
    );
    let c = Collector::start(&cfg);
    c.wait("good readings", |rs| {
        rs.iter().any(|r| &*r.tag == "feed" && r.quality.is_good())
    })
    .await;
    common::wait_until(WAIT, "two monitored items", || {
        sim.monitored_item_count() == 2
    })
    .await;
    sim.stop().await;
    let before = c.count();
    c.wait("disconnected readings", |rs| {
        rs[before..]
            .iter()
            .any(|r| matches!(&r.quality, Quality::Bad(why) if why.to_string() == "disconnected"))
    })
    .await;

    let mut opts = options(&pki);
    opts.port = port;
    let sim = OpcUaSim::start(opts).await.unwrap();
    let marker = c.count();
    c.wait("good readings after the restart", |rs| {
        rs[marker..]
            .iter()
            .any(|r| &*r.tag == "feed" && r.quality.is_good())
    })
    .await;
    common::wait_until(WAIT, "monitored items recreated", || {
        sim.monitored_item_count() >= 2
    })
    .await;
    // A few more cycles: nothing else gets created.
    let now = c.count();
    c.wait("more cycles", |rs| rs.len() > now + 10).await;
    assert_eq!(sim.monitored_item_count(), 2, "monitored items doubled");
    // Every cycle while the server was away is accounted for: each reading
    // is good, or bad with a reason.
    for r in c.readings.lock().unwrap().iter() {
        assert_eq!(r.value.is_some(), r.quality.is_good(), "{r:?}");
    }
    c.stop().await;
    sim.stop().await;
}
