//! The city's receiver against the real agent: the time-compressed demo
//! plant publishes through mosquitto, and `zgsz-platform` ingests through a
//! shared subscription, commits, acknowledges and verifies every seal; on
//! SQLite, and on a PostgreSQL that restarts under load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;
// The receiver's throw-away PostgreSQL cluster (initdb, pg_ctl).
#[allow(dead_code)]
#[path = "../platform/tests/common/pg.rs"]
mod pg;
#[path = "../platform/tests/common/session.rs"]
mod session;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{CompressedDemo, Mosquitto};
use zgsz_platform::config::{Backend, Config as PlatformConfig};
use zgsz_platform::store::{Gateway, Store, WindowRow};

/// One test of this file at a time. Each runs the agent at 7,200 times
/// real time beside its receivers; three at once on two cores starve the
/// agents' uplinks, and `RunningAgent::stop` does not wait for the uplink
/// to drain, so a seal sealed just before the stop may never be published
/// and "every seal verified" would wait for it in vain.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts a receiver instance `client_id` of the group `city` on `db`;
/// sending on the returned channel stops it.
async fn receiver(
    db: &Backend,
    port: u16,
    client_id: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), zgsz_platform::store::StoreError>>,
) {
    let database = match db {
        Backend::Sqlite { path } => format!("path = \"{}\"", path.display()),
        Backend::Postgres { url } => format!("url = \"{url}\""),
    };
    let text = format!(
        "[database]\n{database}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\nshare_group = \"city\"\nkeepalive_s = 5\n",
    );
    let cfg = PlatformConfig::parse("platform.toml", &text).expect("receiver config");
    session::persistent_session(port, client_id, &cfg.filters()).await;
    let store = Store::open(db).await.expect("receiver database");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(zgsz_platform::ingest::run(cfg, store, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Enrols the demo plant's gateway in the receiver's database at `db`.
async fn enrol(db: &Backend, demo: &CompressedDemo) {
    let (key, _) =
        zgsz_agent::signing::GatewayKey::load_or_create(demo.dir.path()).expect("gateway key");
    Store::open(db)
        .await
        .expect("receiver database")
        .enrol(&Gateway {
            gateway_id: demo.cfg.agent.gateway_id.clone(),
            uscc: demo.cfg.enterprise.uscc.clone(),
            region_code: demo.cfg.enterprise.region_code.clone(),
            public_key: key.public_hex(),
        })
        .await
        .expect("enrol");
}

/// Waits until the receiver's windows satisfy `cond`.
async fn windows_until(
    reader: &mut Store,
    limit: Duration,
    what: &str,
    cond: impl Fn(&[WindowRow]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !reader.windows().await.is_ok_and(|w| cond(&w)) {
        if tokio::time::Instant::now() > deadline {
            let open: Vec<String> = reader
                .windows()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|w| w.verdict != "verified")
                .map(|w| format!("{} {} {}: {}", w.kind, w.index, w.verdict, w.reason))
                .collect();
            panic!("timed out after {limit:?} waiting for {what}; not verified: {open:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the receiver holds ten verified hourly windows.
async fn ten_verified_hours(reader: &mut Store, what: &str) {
    windows_until(reader, Duration::from_secs(60), what, |w| {
        w.iter()
            .filter(|w| w.kind == "hour" && w.verdict == "verified")
            .count()
            >= 10
    })
    .await;
}

/// Waits until every seal in `sealed` is stored and verified; returns
/// every index the agent has sealed by the end.
///
/// `RunningAgent::stop` does not wait for the uplink, so the last seals
/// may still be in the outbox: the agent runs again meanwhile, and
/// publishes its backlog first, as after any restart.
async fn every_seal_verified(
    reader: &mut Store,
    demo: &CompressedDemo,
    sealed: &BTreeSet<i64>,
) -> BTreeSet<i64> {
    let again = zgsz_agent::agent::start(&demo.cfg, demo.clock.clone()).expect("agent");
    // A deadline, not a wait: on a loaded machine a receiver that backs
    // off while PostgreSQL restarts needs longer than on a quiet one.
    windows_until(
        reader,
        Duration::from_secs(90),
        "every seal verified",
        |w| {
            sealed
                .iter()
                .all(|i| w.iter().any(|w| w.index == *i && w.verdict == "verified"))
        },
    )
    .await;
    again.stop().await;
    self::sealed(demo.dir.path())
}

/// Nothing stored that the agent did not seal, and every seal of `sealed`
/// stored once (a window's key is its chain index).
fn stored_once(windows: &[WindowRow], sealed: &BTreeSet<i64>, all: &BTreeSet<i64>) {
    let stored: BTreeSet<i64> = windows.iter().map(|w| w.index).collect();
    assert_eq!(stored.len(), windows.len(), "a seal stored twice");
    assert!(stored.is_subset(all), "a window the agent never sealed");
    assert!(sealed.is_subset(&stored), "a seal missing");
}

/// The chain indices the agent has sealed.
fn sealed(state_dir: &std::path::Path) -> BTreeSet<i64> {
    let conn = zgsz_agent::buffer::open_read_only(state_dir).expect("the agent's outbox");
    let mut st = conn.prepare("SELECT idx FROM chain").expect("chain");
    let idx = st
        .query_map([], |r| r.get::<_, i64>(0))
        .expect("chain rows");
    idx.map(|i| i.expect("an index")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
async fn every_seal_of_the_demo_plant_is_stored_once_and_verified() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = Mosquitto::require("");
    let mut demo = CompressedDemo::start().await;
    demo.cfg.set_broker("127.0.0.1", broker.port);
    let state = demo.dir.path().to_path_buf();
    let city = tempfile::tempdir().unwrap();
    let db = Backend::Sqlite {
        path: city.path().join("platform.db"),
    };
    enrol(&db, &demo).await;
    let (stop_receiver, receiver) = receiver(&db, broker.port, "city-1").await;

    let agent = zgsz_agent::agent::start(&demo.cfg, demo.clock.clone()).expect("agent");
    let mut reader = Store::open(&db).await.expect("a second connection");
    // Ten hours of the plant: about 5 s at 7,200 times real time.
    ten_verified_hours(&mut reader, "ten verified hours").await;
    agent.stop().await;
    let sealed = sealed(&state);
    assert!(sealed.len() >= 10, "the agent sealed {}", sealed.len());
    // Everything the agent sealed reaches the receiver, and verifies.
    let all = every_seal_verified(&mut reader, &demo, &sealed).await;
    let _ = stop_receiver.send(());
    receiver
        .await
        .expect("the receiver task")
        .expect("the receiver stopped cleanly");

    let windows = reader.windows().await.expect("windows");
    stored_once(&windows, &sealed, &all);
    for w in windows.iter().filter(|w| sealed.contains(&w.index)) {
        assert_eq!(w.verdict, "verified", "{w:?}");
        assert!(!w.flags.contains("config_hash_changed"), "{w:?}");
    }
    let rejected = reader.rejected().await.expect("rejected");
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(reader.count("states").await.expect("states") > 0);
}

/// Two instances on one shared subscription and one database: the broker
/// splits the messages between them, both do a share, and every seal is
/// still stored once and verified, its neighbours stored by either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
async fn two_instances_on_one_shared_subscription_split_the_work_and_count_nothing_twice() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = Mosquitto::require("");
    let mut demo = CompressedDemo::start().await;
    demo.cfg.set_broker("127.0.0.1", broker.port);
    let state = demo.dir.path().to_path_buf();
    let city = tempfile::tempdir().unwrap();
    let db = Backend::Sqlite {
        path: city.path().join("platform.db"),
    };
    enrol(&db, &demo).await;
    let instances = [
        receiver(&db, broker.port, "city-1").await,
        receiver(&db, broker.port, "city-2").await,
    ];
    let mut reader = Store::open(&db).await.expect("a second connection");
    let agent = zgsz_agent::agent::start(&demo.cfg, demo.clock.clone()).expect("agent");
    windows_until(
        &mut reader,
        Duration::from_secs(60),
        "twenty stored hours",
        |w| w.iter().filter(|w| w.kind == "hour").count() >= 20,
    )
    .await;
    agent.stop().await;
    let sealed = sealed(&state);
    let all = every_seal_verified(&mut reader, &demo, &sealed).await;
    for (stop, task) in instances {
        let _ = stop.send(());
        task.await
            .expect("the receiver task")
            .expect("the receiver stopped cleanly");
    }
    stored_once(&reader.windows().await.expect("windows"), &sealed, &all);
    let by = reader.stored_by().await.expect("stored by");
    let share = |id: &str| by.iter().find(|(c, _)| c == id).map_or(0, |(_, n)| *n);
    assert!(
        share("city-1") > 0 && share("city-2") > 0,
        "both instances must do a share: {by:?}"
    );
    assert!(reader.rejected().await.expect("rejected").is_empty());
}

/// PostgreSQL stops for 2 s while the plant runs and the receiver ingests:
/// it keeps the message in hand unacknowledged, reconnects when the server
/// is back, and every seal the agent made is stored once and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL (.ci/run installs them and runs ignored tests)"]
async fn postgres_restarted_under_load_the_receiver_reconnects_and_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = pg::PgCluster::start() else {
        return;
    };
    let cluster = std::sync::Arc::new(cluster);
    let broker = Mosquitto::require("");
    let mut demo = CompressedDemo::start().await;
    demo.cfg.set_broker("127.0.0.1", broker.port);
    let state = demo.dir.path().to_path_buf();
    let db = Backend::Postgres {
        url: cluster.create_database(),
    };
    enrol(&db, &demo).await;
    let (stop_receiver, receiver) = receiver(&db, broker.port, "city-1").await;
    let mut reader = Store::open(&db).await.expect("a second connection");
    let agent = zgsz_agent::agent::start(&demo.cfg, demo.clock.clone()).expect("agent");
    windows_until(
        &mut reader,
        Duration::from_secs(60),
        "three stored hours",
        |w| w.iter().filter(|w| w.kind == "hour").count() >= 3,
    )
    .await;
    let outage = cluster.clone();
    tokio::task::spawn_blocking(move || {
        outage.stop();
        std::thread::sleep(Duration::from_secs(2));
        outage.start_again();
    })
    .await
    .expect("the outage");
    // The reader reconnects too, at its next transaction.
    ten_verified_hours(&mut reader, "ten verified hours after the restart").await;
    agent.stop().await;
    let sealed = sealed(&state);
    let all = every_seal_verified(&mut reader, &demo, &sealed).await;
    let _ = stop_receiver.send(());
    receiver
        .await
        .expect("the receiver task")
        .expect("the receiver stopped cleanly");
    stored_once(&reader.windows().await.expect("windows"), &sealed, &all);
    assert!(reader.rejected().await.expect("rejected").is_empty());
}
