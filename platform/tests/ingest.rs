//! The receiver's decisions on hand-built message streams: storage,
//! de-duplication, reordering, the chain verdicts and the rejections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use serde_json::{json, Value};
use zgsz_contract::chain::{metrics_lines, seal, sha256_hex, transitions_lines, GENESIS};
use zgsz_contract::payload::{
    DeclaredIndicator, DeclaredIndicators, EquipmentMetrics, Metrics, ProcessMetrics, WindowInfo,
};
use zgsz_contract::{Industry, Kind, Ratio, State, StateTimes, WindowKind};
use zgsz_platform::config::Config;
use zgsz_platform::ingest::{handle, Handled};
use zgsz_platform::store::{Gateway, Store};

const GW: &str = "gw-1";
const USCC: &str = "91321003MA1XXXXX0A";
const REGION: &str = "321003";
const INST: &str = "3f9c2a7be41d0c58";
const HOUR: i64 = 3_600_000;

fn setup() -> (tempfile::TempDir, Store, Config) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse(
        "p.toml",
        "[database]\npath = \"p.db\"\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"t\"\n",
    )
    .unwrap();
    let mut store = Store::open(&dir.path().join("p.db")).unwrap();
    store
        .enrol(&Gateway {
            gateway_id: GW.into(),
            uscc: USCC.into(),
            region_code: REGION.into(),
            public_key: "ab".repeat(32),
        })
        .unwrap();
    (dir, store, cfg)
}

fn topic(stream: &str) -> String {
    format!("zgsz/{REGION}/{USCC}/{GW}/{stream}")
}

fn envelope(schema: &str, seq: i64) -> Value {
    json!({"schema": schema, "msg_id": format!("{INST}:{seq}"), "seq": seq,
           "created_ts": 1, "historical": false, "gateway_id": GW, "uscc": USCC,
           "region_code": REGION})
}

/// A states message with the transitions (id, ts, state) of `lathe`.
fn states(seq: i64, transitions: &[(i64, i64, &str)]) -> String {
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
fn metrics(
    seq: i64,
    start: i64,
    nc_from: i64,
    head: Option<&(u64, String)>,
    upto: i64,
    history: &[(i64, State)],
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

fn put(store: &mut Store, cfg: &Config, stream: &str, payload: &str) -> Handled {
    handle(store, cfg, &topic(stream), payload.as_bytes()).unwrap()
}

fn verdicts(store: &Store) -> Vec<(i64, String, String)> {
    store
        .windows()
        .unwrap()
        .into_iter()
        .map(|w| (w.index, w.verdict, w.reason))
        .collect()
}

/// Two hours: the lathe is idle from t0, runs NC from t0 + 20 min and
/// again (after idling) from t0 + 1 h 10 min.
fn two_hours() -> (String, Value, Value) {
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

#[test]
fn reordered_streams_verify_once_the_neighbours_arrive_and_duplicates_are_dropped() {
    let (_d, mut store, cfg) = setup();
    let (st, m1, m2) = two_hours();
    assert_eq!(
        put(&mut store, &cfg, "metrics", &m2.to_string()),
        Handled::Stored
    );
    assert_eq!(
        verdicts(&store),
        vec![(2, "pending".into(), "waiting for chain index 1".into())]
    );
    assert_eq!(
        put(&mut store, &cfg, "metrics", &m1.to_string()),
        Handled::Stored
    );
    assert_eq!(
        verdicts(&store)[0],
        (
            1,
            "pending".into(),
            "waiting for the states messages up to seq 1".into()
        )
    );
    assert_eq!(put(&mut store, &cfg, "states", &st), Handled::Stored);
    assert_eq!(
        verdicts(&store),
        vec![
            (1, "verified".into(), String::new()),
            (2, "verified".into(), String::new())
        ]
    );
    // Resends (same msg_id, other `historical`) are dropped.
    let mut again = m1.clone();
    again["historical"] = json!(true);
    assert_eq!(
        put(&mut store, &cfg, "metrics", &again.to_string()),
        Handled::Duplicate
    );
    assert_eq!(put(&mut store, &cfg, "states", &st), Handled::Duplicate);
    assert_eq!(store.count("metrics").unwrap(), 2);
    assert_eq!(store.count("states").unwrap(), 1);
    assert!(store.gaps().unwrap().is_empty());
}

#[test]
fn an_altered_numerator_is_a_break_with_the_reason() {
    let (_d, mut store, cfg) = setup();
    let (st, m1, _) = two_hours();
    put(&mut store, &cfg, "states", &st);
    // Only the figure edited: the seal no longer covers it.
    let mut edited = m1.clone();
    edited["indicators"]["nc_time_share"]["numerator"] = json!(3_000_000);
    assert_eq!(
        put(&mut store, &cfg, "metrics", &edited.to_string()),
        Handled::Stored
    );
    assert_eq!(
        verdicts(&store),
        vec![(
            1,
            "broken".into(),
            "metrics_sha256 does not match the payload's figures".into()
        )]
    );
}

#[test]
fn a_numerator_resealed_by_the_sender_still_disagrees_with_its_equipment() {
    let (_d, mut store, cfg) = setup();
    let mut v = two_hours().1;
    v["indicators"]["networking_rate"]["numerator"] = json!(0);
    v["indicators"]["networking_rate"]["value"] = json!(0.0);
    let lines = metrics_lines(&v).unwrap();
    let m = sha256_hex(lines.as_bytes());
    let t = v["seal"]["transitions_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    v["seal"]["metrics_sha256"] = json!(m);
    v["seal"]["digest"] = json!(zgsz_contract::chain::entry_digest(1, GENESIS, &m, &t));
    put(&mut store, &cfg, "metrics", &v.to_string());
    assert_eq!(
        verdicts(&store)[0].2,
        "networking_rate is 0/1, but the payload's equipment gives 1/1"
    );
}

#[test]
fn a_forged_seal_and_a_broken_link_are_flagged() {
    let (_d, mut store, cfg) = setup();
    let (st, m1, mut m2) = two_hours();
    put(&mut store, &cfg, "states", &st);
    let mut forged = m1.clone();
    forged["seal"]["digest"] = json!("f".repeat(64));
    put(&mut store, &cfg, "metrics", &forged.to_string());
    assert_eq!(
        verdicts(&store)[0].2,
        "digest does not match index, prev and the two hashes (a forged seal)"
    );
    // Index 2 names a prev that is not index 1's digest: the chain breaks.
    m2["seal"]["prev"] = json!("e".repeat(64));
    let s = &m2["seal"];
    let d = zgsz_contract::chain::entry_digest(
        2,
        s["prev"].as_str().unwrap(),
        s["metrics_sha256"].as_str().unwrap(),
        s["transitions_sha256"].as_str().unwrap(),
    );
    m2["seal"]["digest"] = json!(d);
    put(&mut store, &cfg, "metrics", &m2.to_string());
    assert_eq!(
        verdicts(&store)[1],
        (
            2,
            "broken".into(),
            "prev does not match the digest of chain index 1".into()
        )
    );
}

#[test]
fn unknown_gateways_mismatched_topics_replays_and_malformed_payloads_are_rejected() {
    let (_d, mut store, cfg) = setup();
    let (st, m1, _) = two_hours();
    let stranger = format!("zgsz/{REGION}/{USCC}/gw-9/metrics");
    let h = handle(&mut store, &cfg, &stranger, m1.to_string().as_bytes()).unwrap();
    assert_eq!(
        h,
        Handled::Rejected("unknown gateway gw-9: not enrolled".into())
    );
    let wrong_region = format!("zgsz/321002/{USCC}/{GW}/states");
    let h = handle(&mut store, &cfg, &wrong_region, st.as_bytes()).unwrap();
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("topic names USCC")),
        "{h:?}"
    );
    // A message of another (enrolled) gateway replayed on this one's topic.
    store
        .enrol(&Gateway {
            gateway_id: "gw-2".into(),
            uscc: USCC.into(),
            region_code: REGION.into(),
            public_key: "cd".repeat(32),
        })
        .unwrap();
    let replay = format!("zgsz/{REGION}/{USCC}/gw-2/metrics");
    let h = handle(&mut store, &cfg, &replay, m1.to_string().as_bytes()).unwrap();
    assert_eq!(
        h,
        Handled::Rejected(format!(
            "payload names gateway {GW} ({USCC}, {REGION}), but it came on gw-2's topic"
        ))
    );
    let h = put(
        &mut store,
        &cfg,
        "metrics",
        "{\"schema\":\"zgsz.metrics/1\",",
    );
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("malformed metrics payload: EOF")),
        "{h:?}"
    );
    let h = handle(&mut store, &cfg, &topic("states"), &[0xff, 0xfe]).unwrap();
    assert_eq!(h, Handled::Rejected("malformed payload: not UTF-8".into()));
    let mut no_instance = m1.clone();
    no_instance["msg_id"] = json!("7");
    let h = put(&mut store, &cfg, "metrics", &no_instance.to_string());
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("msg_id \"7\"")),
        "{h:?}"
    );
    assert_eq!(store.rejected().unwrap().len(), 6);
    assert_eq!(
        store.count("metrics").unwrap(),
        0,
        "nothing rejected is counted"
    );
    assert!(store.windows().unwrap().is_empty());
}

#[test]
fn gaps_are_listed_per_instance_and_migrations_apply_once() {
    let (dir, mut store, cfg) = setup();
    for seq in [1, 2, 5, 9] {
        put(
            &mut store,
            &cfg,
            "states",
            &states(seq, &[(seq, seq, "idle")]),
        );
    }
    let gaps: Vec<(i64, i64)> = store
        .gaps()
        .unwrap()
        .iter()
        .map(|g| (g.from, g.to))
        .collect();
    assert_eq!(gaps, vec![(3, 4), (6, 8)]);
    drop(store);
    let store = Store::open(&dir.path().join("p.db")).unwrap();
    assert_eq!(store.schema_version().unwrap(), 2);
    assert_eq!(store.count("states").unwrap(), 4);
}

#[test]
fn enrolment_checks_the_forms_and_refuses_a_second_enrolment() {
    let (_d, mut store, _cfg) = setup();
    let g = store.gateway(GW).unwrap().unwrap();
    assert_eq!(
        store.enrol(&g).unwrap_err().to_string(),
        "gateway gw-1 is already enrolled"
    );
    let mut bad = g.clone();
    bad.gateway_id = "x".into();
    bad.region_code = "3210".into();
    assert!(store
        .enrol(&bad)
        .unwrap_err()
        .to_string()
        .starts_with("region code \"3210\""));
    bad.region_code = REGION.into();
    bad.public_key = "AB".repeat(32);
    assert!(store
        .enrol(&bad)
        .unwrap_err()
        .to_string()
        .starts_with("public key"));
}
