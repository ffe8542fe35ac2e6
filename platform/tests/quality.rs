//! The data-quality list: a forged window, a missing window beyond the
//! evictions, an unsynchronised clock, a declared–verified gap, a model
//! change, and a gateway never heard from, each listed once with its
//! gateway; on both backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::{metrics_with, states, status, Fixture, Which, GW, HOUR};
use serde_json::json;
use zgsz_contract::{State, WindowKind};
use zgsz_platform::quality::Problem;
use zgsz_platform::store::Gateway;

on_both_backends!(every_kind_of_problem_is_listed_with_its_gateway);

async fn every_kind_of_problem_is_listed_with_its_gateway(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    f.store
        .enrol(&Gateway {
            gateway_id: "gw-silent".into(),
            uscc: common::USCC.into(),
            region_code: common::REGION.into(),
            public_key: "cd".repeat(32),
        })
        .await
        .unwrap();
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let mut history = Vec::new();
    let mut transitions = Vec::new();
    for h in 0..6 {
        history.push((t0 + h * HOUR, State::Idle));
        transitions.push((h + 1, t0 + h * HOUR, "idle"));
    }
    f.put("states", &states(1, &transitions)).await;
    f.put("status", &status(1_000, "unsynchronized", 0, 0, 0))
        .await;
    let mut head = None;
    for h in 0..6 {
        let start = t0 + h * HOUR;
        let (mut m, next) = metrics_with(
            h + 2,
            start,
            start + HOUR,
            head.as_ref(),
            1,
            &history,
            |b| {
                b.window.start = format!("2027-01-15T{h:02}:00:00+08:00");
                // Index 2: a day on which the lathe, declared NC, ran
                // only by hand. Index 5 on: a new model.
                if h == 1 {
                    b.window.kind = WindowKind::Day;
                    let e = &mut b.equipment[0];
                    e.verified_nc = false;
                    e.time_ms.idle = HOUR as u64 / 2;
                    e.time_ms.running_manual = HOUR as u64 / 2;
                }
                if h >= 4 {
                    b.config_hash = "d".repeat(64);
                }
            },
        );
        head = Some(next);
        if h == 2 {
            // Index 3 never arrives.
            continue;
        }
        if h == 5 {
            m["seal"]["digest"] = json!("f".repeat(64));
        }
        f.put("metrics", &m.to_string()).await;
    }
    let now = zgsz_platform::store::now_ms();
    let problems = f.store.quality(now, 3_600_000).await.unwrap();
    let got: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.gateway_id(), p.kind()))
        .collect();
    assert_eq!(
        got,
        vec![
            (GW, "链断裂 chain break"),
            (GW, "无法解释的缺失 unexplained gap"),
            (GW, "时钟未同步 clock unsynchronised"),
            (GW, "申报与核验差距大 declared–verified gap"),
            (GW, "配置变更 config changed"),
            ("gw-silent", "失联 stale gateway"),
        ],
        "{problems:#?}"
    );
    assert!(matches!(
        &problems[0],
        Problem::ChainBreak { index: 6, reason, .. } if reason.contains("forged seal")
    ));
    assert!(matches!(
        &problems[3],
        Problem::DeclaredVerifiedGap {
            windows: 1,
            latest_index: 2,
            ..
        }
    ));
    assert!(matches!(
        &problems[4],
        Problem::ConfigChanged { index: 5, .. }
    ));
    assert!(matches!(
        &problems[5],
        Problem::Stale {
            last_contact_ts: None,
            ..
        }
    ));
    district_notes(&mut f).await;
    // The page lists the same, each with its detail.
    let page = zgsz_platform::pages::quality(&problems);
    for p in &problems {
        assert!(page.contains(p.kind()), "{}", p.kind());
    }
    assert!(page.contains("instance 3f9c2a7be41d0c58, chain index 6: digest does not match"));
    assert!(zgsz_platform::pages::quality(&[]).contains("Nothing to review."));
    // An hour later with nothing new, the gateway that did talk is stale too.
    let later = f
        .store
        .quality(now + 2 * 3_600_000, 3_600_000)
        .await
        .unwrap();
    assert!(later.iter().any(|p| p.gateway_id() == GW
        && matches!(
            p,
            Problem::Stale {
                last_contact_ts: Some(_),
                ..
            }
        )));
}

/// The district page's notes of the fixture: the enterprise's name and
/// its flagged windows of the day, counted by flag.
async fn district_notes(f: &mut Fixture) {
    let notes = f
        .store
        .region_notes(common::REGION, "2027-01-15", "2027-01-15")
        .await
        .unwrap();
    let n = &notes[common::USCC];
    assert_eq!(n.name, "E");
    assert_eq!(n.flags.get("declared_verified_gap"), Some(&1));
    assert_eq!(n.flags.get("config_hash_changed"), Some(&1));
    assert_eq!(n.flags.get("broken"), Some(&1));
    assert!(n.flags.get("clock_unsynchronized") >= Some(&4), "{n:?}");
    let other_day = f
        .store
        .region_notes(common::REGION, "2027-01-16", "2027-01-16")
        .await
        .unwrap();
    assert!(other_day[common::USCC].flags.is_empty());
}
