//! The receiver's decisions on hand-built message streams: storage,
//! de-duplication, reordering, the chain verdicts and the rejections; each
//! test runs on SQLite and on PostgreSQL, so that both backends are shown
//! to decide the same.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::{
    envelope, metrics_with, states, topic, two_hours, Fixture, Which, GW, HOUR, REGION, USCC,
};
use serde_json::json;
use zgsz_contract::chain::{metrics_lines, seal, sha256_hex, transitions_lines, GENESIS};
use zgsz_contract::State;
use zgsz_platform::ingest::{handle, Handled};
use zgsz_platform::store::{Gateway, Store};

on_both_backends!(
    reordered_streams_verify_once_the_neighbours_arrive_and_duplicates_are_dropped,
    an_altered_numerator_is_a_break_with_the_reason,
    a_numerator_resealed_by_the_sender_still_disagrees_with_its_equipment,
    a_forged_seal_and_a_broken_link_are_flagged,
    unknown_gateways_mismatched_topics_replays_and_malformed_payloads_are_rejected,
    gaps_are_listed_per_instance_and_migrations_apply_once,
    enrolment_checks_the_forms_and_refuses_a_second_enrolment,
    two_instances_writing_at_once_store_each_message_once_and_verify_every_window,
    a_machine_idle_for_many_transitions_of_another_is_found_at_the_window_start,
    transitions_stored_before_migration_8_verify_windows_after_it,
);

async fn reordered_streams_verify_once_the_neighbours_arrive_and_duplicates_are_dropped(
    which: Which,
) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, m1, m2) = two_hours();
    assert_eq!(f.put("metrics", &m2.to_string()).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await,
        vec![(2, "pending".into(), "waiting for chain index 1".into())]
    );
    assert_eq!(f.put("metrics", &m1.to_string()).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await[0],
        (
            1,
            "pending".into(),
            "waiting for the states messages up to seq 1".into()
        )
    );
    assert_eq!(f.put("states", &st).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await,
        vec![
            (1, "verified".into(), String::new()),
            (2, "verified".into(), String::new())
        ]
    );
    // Resends (same msg_id, other `historical`) are dropped.
    let mut again = m1.clone();
    again["historical"] = json!(true);
    assert_eq!(
        f.put("metrics", &again.to_string()).await,
        Handled::Duplicate
    );
    assert_eq!(f.put("states", &st).await, Handled::Duplicate);
    assert_eq!(f.store.count("metrics").await.unwrap(), 2);
    assert_eq!(f.store.count("states").await.unwrap(), 1);
    assert!(f.store.gaps().await.unwrap().is_empty());
}

async fn an_altered_numerator_is_a_break_with_the_reason(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, m1, _) = two_hours();
    f.put("states", &st).await;
    // Only the figure edited: the seal no longer covers it.
    let mut edited = m1.clone();
    edited["indicators"]["nc_time_share"]["numerator"] = json!(3_000_000);
    assert_eq!(f.put("metrics", &edited.to_string()).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await,
        vec![(
            1,
            "broken".into(),
            "metrics_sha256 does not match the payload's figures".into()
        )]
    );
}

async fn a_numerator_resealed_by_the_sender_still_disagrees_with_its_equipment(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
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
    f.put("metrics", &v.to_string()).await;
    assert_eq!(
        f.verdicts().await[0].2,
        "networking_rate is 0/1, but the payload's equipment gives 1/1"
    );
}

async fn a_forged_seal_and_a_broken_link_are_flagged(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, m1, mut m2) = two_hours();
    f.put("states", &st).await;
    let mut forged = m1.clone();
    forged["seal"]["digest"] = json!("f".repeat(64));
    f.put("metrics", &forged.to_string()).await;
    assert_eq!(
        f.verdicts().await[0].2,
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
    f.put("metrics", &m2.to_string()).await;
    assert_eq!(
        f.verdicts().await[1],
        (
            2,
            "broken".into(),
            "prev does not match the digest of chain index 1".into()
        )
    );
}

async fn unknown_gateways_mismatched_topics_replays_and_malformed_payloads_are_rejected(
    which: Which,
) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, m1, _) = two_hours();
    let stranger = format!("zgsz/{REGION}/{USCC}/gw-9/metrics");
    let h = handle(&mut f.store, &f.cfg, &stranger, m1.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(
        h,
        Handled::Rejected("unknown gateway gw-9: not enrolled".into())
    );
    let wrong_region = format!("zgsz/321002/{USCC}/{GW}/states");
    let h = handle(&mut f.store, &f.cfg, &wrong_region, st.as_bytes())
        .await
        .unwrap();
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("topic names USCC")),
        "{h:?}"
    );
    // A message of another (enrolled) gateway replayed on this one's topic.
    f.store
        .enrol(&Gateway {
            gateway_id: "gw-2".into(),
            uscc: USCC.into(),
            region_code: REGION.into(),
            public_key: "cd".repeat(32),
        })
        .await
        .unwrap();
    let replay = format!("zgsz/{REGION}/{USCC}/gw-2/metrics");
    let h = handle(&mut f.store, &f.cfg, &replay, m1.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(
        h,
        Handled::Rejected(format!(
            "payload names gateway {GW} ({USCC}, {REGION}), but it came on gw-2's topic"
        ))
    );
    let h = f.put("metrics", "{\"schema\":\"zgsz.metrics/1\",").await;
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("malformed metrics payload: EOF")),
        "{h:?}"
    );
    let h = handle(&mut f.store, &f.cfg, &topic("states"), &[0xff, 0xfe])
        .await
        .unwrap();
    assert_eq!(h, Handled::Rejected("malformed payload: not UTF-8".into()));
    let mut no_instance = m1.clone();
    no_instance["msg_id"] = json!("7");
    let h = f.put("metrics", &no_instance.to_string()).await;
    assert!(
        matches!(&h, Handled::Rejected(r) if r.starts_with("msg_id \"7\"")),
        "{h:?}"
    );
    assert_eq!(f.store.rejected().await.unwrap().len(), 6);
    assert_eq!(
        f.store.count("metrics").await.unwrap(),
        0,
        "nothing rejected is counted"
    );
    assert!(f.store.windows().await.unwrap().is_empty());
}

async fn gaps_are_listed_per_instance_and_migrations_apply_once(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    for seq in [1, 2, 5, 9] {
        f.put("states", &states(seq, &[(seq, seq, "idle")])).await;
    }
    let gaps: Vec<(i64, i64)> = f
        .store
        .gaps()
        .await
        .unwrap()
        .iter()
        .map(|g| (g.from, g.to))
        .collect();
    assert_eq!(gaps, vec![(3, 4), (6, 8)]);
    // A second connection (another instance starting) applies nothing
    // again, and sees what the first stored.
    let mut again = Store::open(&f.backend).await.unwrap();
    assert_eq!(
        again.schema_version().await.unwrap(),
        zgsz_platform::store::SCHEMA_VERSION
    );
    assert_eq!(again.count("states").await.unwrap(), 4);
}

async fn enrolment_checks_the_forms_and_refuses_a_second_enrolment(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let g = f.store.gateway(GW).await.unwrap().unwrap();
    assert_eq!(
        f.store.enrol(&g).await.unwrap_err().to_string(),
        "gateway gw-1 is already enrolled"
    );
    let mut bad = g.clone();
    bad.gateway_id = "x".into();
    bad.region_code = "3210".into();
    assert!(f
        .store
        .enrol(&bad)
        .await
        .unwrap_err()
        .to_string()
        .starts_with("region code \"3210\""));
    bad.region_code = REGION.into();
    bad.public_key = "AB".repeat(32);
    assert!(f
        .store
        .enrol(&bad)
        .await
        .unwrap_err()
        .to_string()
        .starts_with("public key"));
}

/// Two receiver instances (two connections) store one gateway's stream at
/// once, each a share in its own order, some messages delivered to both:
/// every message is stored once, and every window is verified, though its
/// neighbours were stored by either instance, in either order.
async fn two_instances_writing_at_once_store_each_message_once_and_verify_every_window(
    which: Which,
) {
    let Some(mut one) = Fixture::new(which).await else {
        return;
    };
    let mut two = Fixture::on(one.backend.clone(), common::Place::None, "t2").await;
    let stream = common::chain(40);
    let mut first = Vec::new();
    let mut second = Vec::new();
    for (i, m) in stream.iter().enumerate() {
        match i % 3 {
            0 => first.push(m.clone()),
            1 => second.push(m.clone()),
            // Redelivered: to both.
            _ => {
                first.push(m.clone());
                second.push(m.clone());
            }
        }
    }
    // The second instance takes its share newest first.
    second.reverse();
    async fn feed(f: &mut Fixture, share: Vec<(&'static str, String)>) {
        for (stream, payload) in share {
            handle(&mut f.store, &f.cfg, &topic(stream), payload.as_bytes())
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    }
    tokio::join!(feed(&mut one, first), feed(&mut two, second));
    assert_eq!(one.store.count("metrics").await.unwrap(), 40);
    assert_eq!(one.store.count("states").await.unwrap(), 40);
    let verdicts = one.verdicts().await;
    assert_eq!(verdicts.len(), 40);
    for v in &verdicts {
        assert_eq!(v.1, "verified", "{v:?}");
    }
    let by = one.store.stored_by().await.unwrap();
    assert!(by.len() == 2 && by.iter().all(|(_, n)| *n > 0), "{by:?}");
    assert!(one.store.rejected().await.unwrap().is_empty());
}

/// Verifying reads back from a window's start until it has met every
/// machine's last transition, a few rows per machine at first; a machine
/// idle for longer is then read on its own. Here the mill's one transition
/// lies behind 40 of the lathe's: if it were not found, the window's
/// transitions would not rebuild its seal and it would stay pending.
async fn a_machine_idle_for_many_transitions_of_another_is_found_at_the_window_start(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let mut st = envelope("zgsz.states/1", 1);
    let mut transitions =
        vec![json!({"id": 1, "equipment": "mill", "state": "running_nc", "ts": t0})];
    let lathe = |k: i64| if k % 2 == 0 { "idle" } else { "running_nc" };
    for k in 1..=40 {
        transitions.push(
            json!({"id": k + 1, "equipment": "lathe", "state": lathe(k), "ts": t0 + k * 60_000}),
        );
    }
    st["transitions"] = json!(transitions);
    let start = t0 + HOUR;
    let (mut m, _) = metrics_with(2, start, start + 20 * 60_000, None, 1, &[], |b| {
        let mut mill = b.equipment[0].clone();
        mill.id = "mill".into();
        mill.device = "mill".into();
        b.equipment.push(mill);
    });
    // Sealed again over both machines' states at the start.
    let initial = |id: &str| {
        Some(if id == "mill" {
            State::RunningNc
        } else {
            State::Idle
        })
    };
    let t = transitions_lines(
        &["lathe", "mill"],
        start,
        start + HOUR,
        initial,
        std::iter::empty(),
    );
    m["seal"] = serde_json::to_value(seal(None, &metrics_lines(&m).unwrap(), &t)).unwrap();
    assert_eq!(f.put("states", &st.to_string()).await, Handled::Stored);
    assert_eq!(f.put("metrics", &m.to_string()).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await,
        vec![(1, "verified".into(), String::new())]
    );
}

/// Migration 8 moves the transitions into a table ordered by time; those
/// stored before it verify the windows that arrive after it.
async fn transitions_stored_before_migration_8_verify_windows_after_it(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, m1, m2) = two_hours();
    assert_eq!(f.put("states", &st).await, Handled::Stored);
    // The transitions as a receiver before migration 8 kept them.
    common::sql(
        &f.backend,
        "CREATE TABLE transitions_v1 (
            gateway_id TEXT NOT NULL, instance TEXT NOT NULL, id BIGINT NOT NULL,
            seq BIGINT NOT NULL, equipment TEXT NOT NULL, state TEXT NOT NULL,
            ts BIGINT NOT NULL, PRIMARY KEY (gateway_id, instance, id));
         INSERT INTO transitions_v1 (gateway_id, instance, id, seq, equipment, state, ts)
             SELECT gateway_id, instance, id, seq, equipment, state, ts FROM transitions;
         DROP TABLE transitions;
         ALTER TABLE transitions_v1 RENAME TO transitions;
         CREATE INDEX transitions_by_ts ON transitions (gateway_id, instance, ts);
         CREATE INDEX transitions_by_equipment ON transitions (gateway_id, instance, equipment, ts);
         DELETE FROM schema_migrations WHERE version = 8;",
    )
    .await;
    f.store = Store::open(&f.backend).await.unwrap();
    assert_eq!(
        f.store.schema_version().await.unwrap(),
        zgsz_platform::store::SCHEMA_VERSION
    );
    assert_eq!(f.put("metrics", &m2.to_string()).await, Handled::Stored);
    assert_eq!(f.put("metrics", &m1.to_string()).await, Handled::Stored);
    assert_eq!(
        f.verdicts().await,
        vec![
            (1, "verified".into(), String::new()),
            (2, "verified".into(), String::new())
        ]
    );
    assert_eq!(f.put("states", &st).await, Handled::Duplicate);
}
