//! The `day_figures` table the pages read instead of the payloads: its
//! pooling of several gateways gives what the payloads give, its rows
//! follow the windows' verdicts, and a database filled before the table
//! existed gets its rows when it is opened again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::BTreeSet;

use common::{metrics_with, Fixture, Which, HOUR, REGION, USCC};
use serde_json::Value;
use zgsz_contract::payload::{Metrics, MetricsMessage};
use zgsz_contract::{Industry, Kind, State, WindowKind};
use zgsz_platform::aggregate::{area, enterprise_days, AreaInput, Day, Exclusion, GatewayDay};
use zgsz_platform::ingest::{handle, Handled};
use zgsz_platform::store::{Gateway, Store};
use zgsz_platform::summary::DaySummary;

on_both_backends!(
    day_rows_count_once_verified_and_a_broken_window_rejects_its_enterprise,
    a_database_filled_before_migration_6_gets_its_day_figures_when_reopened,
);

const D1: &str = "2026-11-02";
const D2: &str = "2026-11-03";
const GW2: &str = "gw-2";

/// A day body of `industry` on `date` with `processes` (id, key) and
/// `equipment` (process, kind, verified_nc, networked).
fn body(
    industry: Industry,
    date: &str,
    processes: &[(&str, bool)],
    equipment: &[(&str, Kind, bool, bool)],
) -> Metrics {
    let (v, _) = metrics_with(1, 0, 0, None, 0, &[], |b| {
        b.industry = industry;
        b.window.kind = WindowKind::Day;
        b.window.start = format!("{date}T00:00:00+08:00");
        let (p0, e0) = (b.processes[0].clone(), b.equipment[0].clone());
        b.processes = processes
            .iter()
            .map(|(id, key)| {
                let mut p = p0.clone();
                p.id = (*id).into();
                p.key = *key;
                p
            })
            .collect();
        b.equipment = equipment
            .iter()
            .enumerate()
            .map(|(i, (process, kind, verified, networked))| {
                let mut e = e0.clone();
                e.id = format!("m{i}");
                e.process = (*process).into();
                e.kind = *kind;
                e.verified_nc = *verified;
                e.networked = *networked;
                e.time_ms.running_nc = if *verified { 600 } else { 0 };
                e.time_ms.running_manual = 400 + i as u64;
                e
            })
            .collect();
    });
    serde_json::from_value::<MetricsMessage>(v).unwrap().body
}

fn day(gw: &str, uscc: &str, region: &str, body: Metrics) -> GatewayDay {
    GatewayDay {
        gateway_id: gw.into(),
        uscc: uscc.into(),
        region_code: region.into(),
        date: GatewayDay::date_of(&body).unwrap(),
        body,
    }
}

/// The figures of `input` as JSON: the city, each region, and every
/// enterprise-day, over `from..=to`.
fn figures<D: Day>(input: &AreaInput<D>, from: &str, to: &str) -> Value {
    let regions: Vec<Value> = input
        .regions()
        .into_iter()
        .map(|r| serde_json::to_value(area(input, Some(r), from, to)).unwrap())
        .collect();
    let days: Vec<String> = enterprise_days(&input.days)
        .iter()
        .map(|d| format!("{} {} {:?} {:?}", d.uscc, d.date, d.gateways, d.figures))
        .collect();
    serde_json::json!({
        "city": area(input, None, from, to),
        "regions": regions,
        "days": days,
    })
}

/// Enterprises whose gateways disagree on what is key, name processes the
/// others declare, share a process-industry process, or have no key
/// process or no equipment in one: the summaries pool like the payloads,
/// reasons of the null ratios included.
#[test]
fn summaries_pool_as_the_payloads_do() {
    use Kind::{Cnc, Dcs, Manual, Plc, Robot};
    let d = Industry::Discrete;
    let p = Industry::Process;
    let days = vec![
        // A: "turning" key at a1 only, "drill" named by a2's equipment only.
        day(
            "a1",
            "A",
            "321003",
            body(
                d,
                D1,
                &[("turning", true), ("pack", false)],
                &[("turning", Cnc, true, true), ("pack", Cnc, true, false)],
            ),
        ),
        day(
            "a2",
            "A",
            "321003",
            body(
                d,
                D1,
                &[("turning", false), ("milling", true)],
                &[
                    ("turning", Manual, false, true),
                    ("milling", Cnc, true, true),
                    ("drill", Robot, false, true),
                ],
            ),
        ),
        day(
            "a1",
            "A",
            "321003",
            body(
                d,
                D2,
                &[("turning", true)],
                &[("turning", Cnc, false, true)],
            ),
        ),
        // C: process industry, "reactor" key at both, a verified DCS at c1
        // and an unverified PLC at c2; "distill" key at c2 only.
        day(
            "c1",
            "C",
            "321012",
            body(p, D1, &[("reactor", true)], &[("reactor", Dcs, true, true)]),
        ),
        day(
            "c2",
            "C",
            "321012",
            body(
                p,
                D1,
                &[("reactor", true), ("distill", true)],
                &[("reactor", Plc, false, true), ("distill", Plc, false, true)],
            ),
        ),
        // E: no key process at either; G: a key process without equipment.
        day(
            "e1",
            "E",
            "321003",
            body(d, D1, &[("pack", false)], &[("pack", Cnc, true, true)]),
        ),
        day("e2", "E", "321003", body(d, D1, &[], &[])),
        day(
            "g1",
            "G",
            "321012",
            body(d, D1, &[("turning", true)], &[("pack", Cnc, true, true)]),
        ),
        day("h1", "H", "321012", body(p, D2, &[], &[])),
    ];
    let summaries: Vec<DaySummary> = days
        .iter()
        .map(|g| DaySummary::of(&g.gateway_id, &g.uscc, &g.region_code, &g.date, &g.body))
        .collect();
    let registered: Vec<(String, String)> = days
        .iter()
        .map(|g| (g.uscc.clone(), g.region_code.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let payloads = AreaInput {
        registered: registered.clone(),
        days,
        rejected: BTreeSet::new(),
    };
    let summarised = AreaInput {
        registered,
        days: summaries,
        rejected: BTreeSet::new(),
    };
    for (from, to) in [(D1, D1), (D2, D2), (D1, D2)] {
        assert_eq!(
            figures(&payloads, from, to),
            figures(&summarised, from, to),
            "{from}..{to}"
        );
    }
    // And the pooling is not a sum: A's verified rate on D1 counts a2's
    // manual bench in "turning" (key at a1) and its milling CNC.
    let a = enterprise_days(&summarised.days);
    let a1 = a.iter().find(|d| d.uscc == "A" && d.date == D1).unwrap();
    let v = &a1.figures.cnc_rate_verified;
    assert_eq!((v.numerator, v.denominator), (2, 3));
    let c = a.iter().find(|d| d.uscc == "C").unwrap();
    let v = &c.figures.cnc_rate_verified;
    assert_eq!((v.numerator, v.denominator), (1, 2), "reactor counted once");
}

/// The topic of `gw` (enterprise [`USCC`] in [`REGION`]).
fn topic_of(gw: &str, stream: &str) -> String {
    format!("zgsz/{REGION}/{USCC}/{gw}/{stream}")
}

/// Sends `payload` (a message of gateway `gw-1`) as gateway `gw`.
async fn put_as(f: &mut Fixture, gw: &str, stream: &str, mut payload: Value) -> Handled {
    payload["gateway_id"] = gw.into();
    handle(
        &mut f.store,
        &f.cfg,
        &topic_of(gw, stream),
        payload.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

/// What ends up stored: gw-1 sends verified days D1 (its lathe verified
/// NC) and D2 (not); gw-2, of the same enterprise, sends D1 before the
/// states that verify it (its lathe not verified, and its "turning" not
/// key: pooled with gw-1's, it is), then a D2 whose numerator was altered
/// after sealing (broken).
async fn fill(f: &mut Fixture) {
    common::day_windows(f, &[(D1, true), (D2, false)]).await;
    f.store
        .enrol(&Gateway {
            gateway_id: GW2.into(),
            uscc: USCC.into(),
            region_code: REGION.into(),
            public_key: "cd".repeat(32),
        })
        .await
        .unwrap();
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let history = [(t0, State::Idle)];
    let (m1, head) = metrics_with(2, t0, t0 + HOUR, None, 1, &history, |b| {
        b.window.kind = WindowKind::Day;
        b.window.start = format!("{D1}T00:00:00+08:00");
        b.processes[0].key = false;
        b.equipment[0].verified_nc = false;
    });
    assert_eq!(put_as(f, GW2, "metrics", m1).await, Handled::Stored);
    let input = f.store.area_input(D1, D2).await.unwrap();
    assert_eq!(input.days.len(), 2, "gw-2's day is pending: not counted");
    let states: Value = serde_json::from_str(&common::states(1, &[(1, t0, "idle")])).unwrap();
    assert_eq!(put_as(f, GW2, "states", states).await, Handled::Stored);
    let (mut m2, _) = metrics_with(3, t0 + HOUR, t0 + 2 * HOUR, Some(&head), 1, &history, |b| {
        b.window.kind = WindowKind::Day;
        b.window.start = format!("{D2}T00:00:00+08:00");
    });
    m2["indicators"]["networking_rate"]["numerator"] = 0.into();
    assert_eq!(put_as(f, GW2, "metrics", m2).await, Handled::Stored);
    let verdicts: Vec<(String, i64, String)> = f
        .store
        .windows()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.gateway_id, w.index, w.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("gw-1".into(), 1, "verified".into()),
            ("gw-1".into(), 2, "verified".into()),
            (GW2.into(), 1, "verified".into()),
            (GW2.into(), 2, "broken".into()),
        ]
    );
}

/// The figures [`fill`] leaves, as JSON, and a check of what they say.
async fn stored_figures(store: &mut Store) -> Value {
    let input = store.area_input(D1, D2).await.unwrap();
    assert_eq!(input.days.len(), 3, "the broken day is not counted");
    assert_eq!(input.rejected, BTreeSet::from([USCC.to_string()]));
    let d1 = store.area_input(D1, D1).await.unwrap();
    assert!(d1.rejected.is_empty(), "the broken window is of D2");
    let f = area(&d1, Some(REGION), D1, D1);
    assert_eq!(f.excluded.len(), 0, "{:?}", f.excluded);
    // Pooled: gw-1's verified lathe and gw-2's unverified one, both in
    // "turning", key at gw-1.
    let v = &f.cnc_rate_verified;
    assert_eq!((v.pooled.numerator, v.pooled.denominator), (1, 2));
    let f2 = area(&input, Some(REGION), D2, D2);
    assert_eq!(f2.excluded.get(&Exclusion::RejectedData), Some(&1));
    let days = enterprise_days(&input.days);
    assert_eq!(days[0].gateways, ["gw-1", GW2]);
    let mut all = figures(&input, D1, D2);
    all["d1"] = figures(&d1, D1, D1);
    all
}

async fn day_rows_count_once_verified_and_a_broken_window_rejects_its_enterprise(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    fill(&mut f).await;
    stored_figures(&mut f.store).await;
}

async fn a_database_filled_before_migration_6_gets_its_day_figures_when_reopened(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    fill(&mut f).await;
    let before = stored_figures(&mut f.store).await;
    // What migrations 6 and 7 added, taken away: the database as a
    // receiver without them left it.
    common::sql(
        &f.backend,
        "DROP INDEX windows_flagged;
         ALTER TABLE gateways DROP COLUMN enterprise_name;
         DELETE FROM schema_migrations WHERE version = 7;
         DROP TABLE day_figures;
         DROP INDEX windows_broken;
         ALTER TABLE windows DROP COLUMN local_date;
         DELETE FROM schema_migrations WHERE version = 6;",
    )
    .await;
    f.store = Store::open(&f.backend).await.unwrap();
    assert_eq!(
        f.store.schema_version().await.unwrap(),
        zgsz_platform::store::SCHEMA_VERSION
    );
    let after = stored_figures(&mut f.store).await;
    assert_eq!(before, after);
}
