//! What the receiver's tests share: hand-built, validly sealed message
//! streams of one enrolled gateway, a receiver store on either backend,
//! and mosquitto with the receiver binary around it ([`mqtt`]).
#![allow(dead_code)] // each test file uses a part

pub mod mqtt;
pub mod pg;

use std::sync::Arc;

use serde_json::{json, Value};
use zgsz_contract::chain::{metrics_lines, seal, transitions_lines};
use zgsz_contract::payload::{
    DeclaredIndicator, DeclaredIndicators, EquipmentMetrics, Metrics, ProcessMetrics, WindowInfo,
};
use zgsz_contract::{Industry, Kind, Ratio, State, StateTimes, WindowKind};
use zgsz_platform::config::{Backend, Config};
use zgsz_platform::ingest::{handle, Handled};
use zgsz_platform::store::{Gateway, Store};

use pg::PgCluster;

/// The backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Sqlite,
    Postgres,
}

/// Where a test's database lives; dropping it removes the database.
pub enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(Arc<PgCluster>),
    /// Kept alive by another fixture.
    None,
}

/// An empty database on `which`; `None` when PostgreSQL is not installed
/// (outside CI; see [`pg`]).
pub fn new_database(which: Which) -> Option<(Backend, Place)> {
    Some(match which {
        Which::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.db");
            (Backend::Sqlite { path }, Place::Sqlite(dir))
        }
        Which::Postgres => {
            let cluster = PgCluster::shared()?;
            let url = cluster.create_database();
            (Backend::Postgres { url }, Place::Postgres(cluster))
        }
    })
}

/// A receiver's store with the gateway [`GW`] enrolled, and its config.
pub struct Fixture {
    pub store: Store,
    pub cfg: Config,
    /// The database, to open it again.
    pub backend: Backend,
    /// Keeps the database alive.
    pub place: Place,
}

impl Fixture {
    /// `None` when PostgreSQL is not installed (outside CI; see [`pg`]).
    pub async fn new(which: Which) -> Option<Fixture> {
        let (backend, place) = new_database(which)?;
        Some(Fixture::on(backend, place, "t").await)
    }

    /// A fixture on an existing database, as receiver `client_id`.
    pub async fn on(backend: Backend, place: Place, client_id: &str) -> Fixture {
        let cfg = config(&backend, client_id);
        let mut store = Store::open(&backend).await.unwrap();
        match store
            .enrol(&Gateway {
                gateway_id: GW.into(),
                uscc: USCC.into(),
                region_code: REGION.into(),
                public_key: "ab".repeat(32),
            })
            .await
        {
            Ok(()) | Err(zgsz_platform::store::StoreError::AlreadyEnrolled(_)) => {}
            Err(e) => panic!("enrol: {e}"),
        }
        Fixture {
            store,
            cfg,
            backend,
            place,
        }
    }

    /// Handles `payload` on [`GW`]'s topic of `stream`.
    pub async fn put(&mut self, stream: &str, payload: &str) -> Handled {
        handle(
            &mut self.store,
            &self.cfg,
            &topic(stream),
            payload.as_bytes(),
        )
        .await
        .unwrap()
    }

    /// Metrics and states messages stored.
    pub async fn stored(&mut self) -> i64 {
        stored(&mut self.store).await
    }

    /// The whole of a [`chain`] of `hours` is stored exactly once (the
    /// counts equal what was sent, the primary key forbids a msg_id twice,
    /// and no seq is missing), every window is verified and nothing was
    /// rejected.
    pub async fn assert_chain_complete(&mut self, hours: i64) {
        assert_eq!(self.store.count("metrics").await.unwrap(), hours);
        assert_eq!(self.store.count("states").await.unwrap(), hours);
        let gaps = self.store.gaps().await.unwrap();
        assert!(gaps.is_empty(), "{gaps:?}");
        let verdicts = self.verdicts().await;
        assert_eq!(verdicts.len(), hours as usize);
        assert!(
            verdicts.iter().all(|v| v.1 == "verified"),
            "{:?}",
            verdicts.iter().find(|v| v.1 != "verified")
        );
        let rejected = self.store.rejected().await.unwrap();
        assert!(rejected.is_empty(), "{rejected:?}");
    }

    /// Writes this fixture's receiver config into `dir`, for the binary.
    pub fn config_file(&self, dir: &std::path::Path, client_id: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{client_id}.toml"));
        std::fs::write(&path, config_text(&self.backend, client_id)).unwrap();
        path
    }

    /// (chain index, verdict, reason) of every window.
    pub async fn verdicts(&mut self) -> Vec<(i64, String, String)> {
        self.store
            .windows()
            .await
            .unwrap()
            .into_iter()
            .map(|w| (w.index, w.verdict, w.reason))
            .collect()
    }
}

/// Metrics and states messages stored.
pub async fn stored(store: &mut Store) -> i64 {
    store.count("metrics").await.unwrap() + store.count("states").await.unwrap()
}

/// A receiver config for `backend`, as `client_id`.
pub fn config(backend: &Backend, client_id: &str) -> Config {
    Config::parse("p.toml", &config_text(backend, client_id)).unwrap()
}

/// The text of [`config`].
pub fn config_text(backend: &Backend, client_id: &str) -> String {
    let database = match backend {
        Backend::Sqlite { path } => format!("path = \"{}\"", path.display()),
        Backend::Postgres { url } => format!("url = \"{url}\""),
    };
    format!("[database]\n{database}\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"{client_id}\"\n")
}

pub const GW: &str = "gw-1";
pub const USCC: &str = "91321003MA1XXXXX0A";
pub const REGION: &str = "321003";
pub const INST: &str = "3f9c2a7be41d0c58";
pub const HOUR: i64 = 3_600_000;

pub fn topic(stream: &str) -> String {
    format!("zgsz/{REGION}/{USCC}/{GW}/{stream}")
}

pub fn envelope(schema: &str, seq: i64) -> Value {
    json!({"schema": schema, "msg_id": format!("{INST}:{seq}"), "seq": seq,
           "created_ts": 1, "historical": false, "gateway_id": GW, "uscc": USCC,
           "region_code": REGION})
}

/// An online status of [`GW`] written at `ts`, whose outbox (instance
/// [`INST`]) holds `unsent` rows and has evicted `evicted_metrics` metrics
/// rows and `evicted_states` transitions.
pub fn status(
    ts: i64,
    clock_sync: &str,
    unsent: u64,
    evicted_metrics: u64,
    evicted_states: u64,
) -> String {
    json!({"schema": "zgsz.status/1", "state": "online", "gateway_id": GW, "uscc": USCC,
           "region_code": REGION, "agent_version": "0.1.0", "ts": ts,
           "outbox": {"instance": INST, "rows": unsent, "last_seq": 100,
                      "evicted_rows": evicted_metrics + evicted_states,
                      "evicted_metrics": evicted_metrics, "evicted_states": evicted_states},
           "clock_sync": clock_sync})
    .to_string()
}

/// Runs each named `async fn(Which)` as two tests, `<name>::sqlite` and
/// `<name>::postgres` (ignored unless asked for: it needs PostgreSQL).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Which::Sqlite).await
            }
            #[tokio::test]
            #[ignore = "needs PostgreSQL (initdb, pg_ctl)"]
            async fn postgres() {
                super::$name(super::Which::Postgres).await
            }
        }
    )*};
}

/// A states message with the transitions (id, ts, state) of `lathe`.
pub fn states(seq: i64, transitions: &[(i64, i64, &str)]) -> String {
    let mut v = envelope("zgsz.states/1", seq);
    v["transitions"] = transitions
        .iter()
        .map(|(id, ts, s)| json!({"id": id, "equipment": "lathe", "state": s, "ts": ts}))
        .collect();
    v.to_string()
}

/// A sealed hour `[start, start + 1 h)` of a one-lathe plant whose lathe
/// was idle then ran NC from `nc_from`; sealed after `head` with the
/// transitions the gateway held at `upto`.
pub fn metrics(
    seq: i64,
    start: i64,
    nc_from: i64,
    head: Option<&(u64, String)>,
    upto: i64,
    history: &[(i64, State)],
) -> (Value, (u64, String)) {
    metrics_with(seq, start, nc_from, head, upto, history, |_| {})
}

/// [`metrics`], with `edit` applied to the body before the headline is
/// computed and the window sealed: a gateway that really sent this.
pub fn metrics_with(
    seq: i64,
    start: i64,
    nc_from: i64,
    head: Option<&(u64, String)>,
    upto: i64,
    history: &[(i64, State)],
    edit: impl FnOnce(&mut Metrics),
) -> (Value, (u64, String)) {
    let end = start + HOUR;
    let times = StateTimes {
        offline: 0,
        idle: (nc_from - start) as u64,
        running_manual: 0,
        running_nc: (end - nc_from) as u64,
    };
    let r = |n: u64, d: u64| Ratio::new(n, d, "none");
    let mut body = Metrics {
        industry: Industry::Discrete,
        chain: String::new(),
        enterprise_name: "E".into(),
        agent_version: "0.1.0".into(),
        config_hash: "c".repeat(64),
        window: WindowInfo {
            kind: WindowKind::Hour,
            start: "s".into(),
            end: "e".into(),
            start_ts: start,
            end_ts: end,
        },
        indicators: zgsz_contract::payload::Indicators {
            cnc_rate_declared: r(0, 0),
            cnc_rate_verified: r(0, 0),
            nc_time_share: r(0, 0),
            nc_time_share_key: r(0, 0),
            networking_rate: r(0, 0),
            networking_rate_key: r(0, 0),
            completeness: r(0, 0),
        },
        declared: DeclaredIndicators {
            management: DeclaredIndicator {
                source: "declared".into(),
                items: vec![],
            },
            design_tools: DeclaredIndicator {
                source: "declared".into(),
                items: vec![],
            },
        },
        processes: vec![ProcessMetrics {
            id: "turning".into(),
            name: "T".into(),
            key: true,
            equipment: 1,
            nc_capable: 1,
            control_systems: 0,
            verified_nc: 1,
            nc_time_share: r(times.running_nc, times.running()),
            utilisation: r(times.running(), HOUR as u64),
        }],
        equipment: vec![EquipmentMetrics {
            id: "lathe".into(),
            name: "L".into(),
            process: "turning".into(),
            kind: Kind::Cnc,
            nc_capable: true,
            device: "lathe".into(),
            networked: true,
            ran_nc: true,
            verified_nc: true,
            utilisation: r(times.running(), HOUR as u64),
            nc_time_share: r(times.running_nc, times.running()),
            completeness: r(3600, 3600),
            time_ms: times,
        }],
        seal: None,
        states_upto_seq: None,
    };
    edit(&mut body);
    body.indicators = body.recompute_headline().into();
    let value = serde_json::to_value(&body).unwrap();
    let lines = metrics_lines(&value).unwrap();
    let initial = history
        .iter()
        .rfind(|(ts, _)| *ts <= start)
        .map(|(_, s)| *s);
    let inside = history
        .iter()
        .filter(|(ts, _)| *ts > start && *ts < end)
        .map(|(ts, s)| ("lathe", *ts, *s));
    let t = transitions_lines(&["lathe"], start, end, |_| initial, inside);
    let s = seal(head, &lines, &t);
    body.seal = Some(s.clone());
    body.states_upto_seq = Some(upto);
    let mut msg = envelope("zgsz.metrics/1", seq);
    for (k, v) in serde_json::to_value(&body).unwrap().as_object().unwrap() {
        msg[k] = v.clone();
    }
    (msg, (s.index, s.digest))
}

/// Two hours: the lathe is idle from t0, runs NC from t0 + 20 min and
/// again (after idling) from t0 + 1 h 10 min.
pub fn two_hours() -> (String, Value, Value) {
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let history = [
        (t0, State::Idle),
        (t0 + 20 * 60_000, State::RunningNc),
        (t0 + HOUR, State::Idle),
        (t0 + HOUR + 10 * 60_000, State::RunningNc),
    ];
    let st = states(
        1,
        &[
            (1, t0, "idle"),
            (2, t0 + 20 * 60_000, "running_nc"),
            (3, t0 + HOUR, "idle"),
            (4, t0 + HOUR + 10 * 60_000, "running_nc"),
        ],
    );
    let (m1, head) = metrics(2, t0, t0 + 20 * 60_000, None, 1, &history);
    let (m2, _) = metrics(
        3,
        t0 + HOUR,
        t0 + HOUR + 10 * 60_000,
        Some(&head),
        2,
        &history,
    );
    (st, m1, m2)
}

/// `hours` sealed hours from `t0`, in order: for each, a states message
/// (the lathe idle at the hour, running NC from 20 minutes past) and the
/// sealed metrics of that hour. Topic stream and payload, in the order the
/// gateway sends them.
pub fn chain(hours: i64) -> Vec<(&'static str, String)> {
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let mut history = Vec::new();
    for h in 0..hours {
        history.push((t0 + h * HOUR, State::Idle));
        history.push((t0 + h * HOUR + 20 * 60_000, State::RunningNc));
    }
    let mut out = Vec::new();
    let mut head: Option<(u64, String)> = None;
    for h in 0..hours {
        let start = t0 + h * HOUR;
        let states_seq = 2 * h + 1;
        out.push((
            "states",
            states(
                states_seq,
                &[
                    (2 * h + 1, start, "idle"),
                    (2 * h + 2, start + 20 * 60_000, "running_nc"),
                ],
            ),
        ));
        let (m, next) = metrics(
            states_seq + 1,
            start,
            start + 20 * 60_000,
            head.as_ref(),
            states_seq,
            &history,
        );
        out.push(("metrics", m.to_string()));
        head = Some(next);
    }
    out
}

/// Verified day windows of [`GW`] (enterprise [`USCC`] in [`REGION`]), one
/// per `(date, verified_nc)`: a one-lathe plant whose lathe is or is not
/// verified NC that day. Stored through ingest, with their states.
pub async fn day_windows(f: &mut Fixture, days: &[(&str, bool)]) {
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let n = days.len() as i64;
    let history: Vec<(i64, State)> = (0..n).map(|i| (t0 + i * HOUR, State::Idle)).collect();
    let transitions: Vec<(i64, i64, &str)> =
        (0..n).map(|i| (i + 1, t0 + i * HOUR, "idle")).collect();
    f.put("states", &states(1, &transitions)).await;
    let mut head = None;
    for (i, (date, verified)) in days.iter().enumerate() {
        let start = t0 + i as i64 * HOUR;
        let (m, next) = metrics_with(
            i as i64 + 2,
            start,
            start + HOUR,
            head.as_ref(),
            1,
            &history,
            |b| {
                b.window.kind = WindowKind::Day;
                b.window.start = format!("{date}T00:00:00+08:00");
                b.equipment[0].verified_nc = *verified;
            },
        );
        f.put("metrics", &m.to_string()).await;
        head = Some(next);
    }
}

/// Runs `text` on the database of `backend`, beside the store.
pub async fn sql(backend: &Backend, text: &str) {
    match backend {
        Backend::Sqlite { path } => rusqlite::Connection::open(path)
            .unwrap()
            .execute_batch(text)
            .unwrap(),
        Backend::Postgres { url } => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(text).await.unwrap();
        }
    }
}
