//! The flags a reviewer must see, which do not break the chain: a
//! `config_hash` change (in either arrival order), an unsynchronised clock
//! and a declared–verified gap over the configured threshold; on both
//! backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::{metrics_with, states, status, Fixture, Which, HOUR};
use zgsz_contract::{Ratio, State, StateTimes, WindowKind};
use zgsz_platform::ingest::Handled;

on_both_backends!(
    a_config_hash_change_is_flagged_whichever_window_arrives_first,
    an_unsynchronised_clock_flags_the_windows_that_arrive_while_it_lasts,
    a_declared_verified_gap_is_flagged_over_the_configured_threshold,
);

const T0: i64 = 1_800_000_000_000 / HOUR * HOUR;

/// Sealed hours from [`T0`], the lathe idle at each hour and running NC
/// from 20 minutes past; `edit(h, body)` changes hour `h` before it is
/// sealed. The states message of all transitions first, then the windows.
fn hours(
    n: i64,
    edit: impl Fn(i64, &mut zgsz_contract::payload::Metrics),
) -> (String, Vec<String>) {
    let mut history = Vec::new();
    let mut transitions = Vec::new();
    for h in 0..n {
        history.push((T0 + h * HOUR, State::Idle));
        history.push((T0 + h * HOUR + 20 * 60_000, State::RunningNc));
        transitions.push((2 * h + 1, T0 + h * HOUR, "idle"));
        transitions.push((2 * h + 2, T0 + h * HOUR + 20 * 60_000, "running_nc"));
    }
    let st = states(1, &transitions);
    let mut head = None;
    let mut windows = Vec::new();
    for h in 0..n {
        let start = T0 + h * HOUR;
        let (m, next) = metrics_with(
            h + 2,
            start,
            start + 20 * 60_000,
            head.as_ref(),
            1,
            &history,
            |b| edit(h, b),
        );
        windows.push(m.to_string());
        head = Some(next);
    }
    (st, windows)
}

/// (chain index, verdict, flags) of every window.
async fn flags(f: &mut Fixture) -> Vec<(i64, String, Vec<String>)> {
    f.store
        .windows()
        .await
        .unwrap()
        .into_iter()
        .map(|w| {
            let mut flags: Vec<String> = w
                .flags
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            flags.sort();
            (w.index, w.verdict, flags)
        })
        .collect()
}

async fn a_config_hash_change_is_flagged_whichever_window_arrives_first(which: Which) {
    let (st, w) = hours(3, |h, b| {
        if h == 2 {
            b.config_hash = "d".repeat(64);
        }
    });
    let want = vec![
        (1, "verified".to_string(), vec![]),
        (2, "verified".to_string(), vec![]),
        (
            3,
            "verified".to_string(),
            vec!["config_hash_changed".to_string()],
        ),
    ];
    for order in [[0, 1, 2], [2, 1, 0]] {
        let Some(mut f) = Fixture::new(which).await else {
            return;
        };
        assert_eq!(f.put("states", &st).await, Handled::Stored);
        for i in order {
            assert_eq!(f.put("metrics", &w[i]).await, Handled::Stored);
        }
        assert_eq!(flags(&mut f).await, want, "arrival order {order:?}");
    }
}

async fn an_unsynchronised_clock_flags_the_windows_that_arrive_while_it_lasts(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let (st, w) = hours(3, |_, _| {});
    f.put("states", &st).await;
    f.put("metrics", &w[0]).await;
    f.put("status", &status(1_000, "unsynchronized", 0, 0, 0))
        .await;
    f.put("metrics", &w[1]).await;
    f.put("status", &status(2_000, "synchronized", 0, 0, 0))
        .await;
    f.put("metrics", &w[2]).await;
    assert_eq!(
        flags(&mut f).await,
        vec![
            (1, "verified".to_string(), vec![]),
            (
                2,
                "verified".to_string(),
                vec!["clock_unsynchronized".to_string()]
            ),
            (3, "verified".to_string(), vec![]),
        ]
    );
}

async fn a_declared_verified_gap_is_flagged_over_the_configured_threshold(which: Which) {
    // Window 2: the lathe ran, but is declared NC and not verified NC
    // (declared 1/1, verified 0/1: a gap of 1.0). Days; see below for
    // hours and for days when nothing ran.
    let (st, w) = hours(2, |h, b| {
        b.window.kind = WindowKind::Day;
        if h == 1 {
            b.equipment[0].verified_nc = false;
            b.processes[0].verified_nc = 0;
        }
    });
    for (threshold, flagged) in [(0.2, true), (1.0, false)] {
        let Some(mut f) = Fixture::new(which).await else {
            return;
        };
        f.cfg.verify.max_declared_verified_gap = threshold;
        f.put("states", &st).await;
        for m in &w {
            assert_eq!(f.put("metrics", m).await, Handled::Stored);
        }
        let want: Vec<String> = if flagged {
            vec!["declared_verified_gap".into()]
        } else {
            vec![]
        };
        assert_eq!(
            flags(&mut f).await,
            vec![
                (1, "verified".to_string(), vec![]),
                (2, "verified".to_string(), want),
            ],
            "threshold {threshold}"
        );
    }
}

on_both_backends!(a_gap_in_an_hour_or_on_a_day_when_nothing_ran_is_not_flagged);

/// An hour of the night, or a closed day, verifies no machine: not a
/// sign of overstatement.
async fn a_gap_in_an_hour_or_on_a_day_when_nothing_ran_is_not_flagged(which: Which) {
    let (st, w) = hours(3, |h, b| {
        b.equipment[0].verified_nc = false;
        b.processes[0].verified_nc = 0;
        // 1: an hour with running time; 2 and 3: days with none.
        if h > 0 {
            b.window.kind = WindowKind::Day;
            let e = &mut b.equipment[0];
            e.time_ms = StateTimes {
                offline: 0,
                idle: HOUR as u64,
                running_manual: 0,
                running_nc: 0,
            };
            e.ran_nc = false;
            e.nc_time_share = Ratio::new(0, 0, "nothing ran");
            e.utilisation = Ratio::new(0, HOUR as u64, "none");
            b.processes[0].nc_time_share = Ratio::new(0, 0, "nothing ran");
            b.processes[0].utilisation = Ratio::new(0, HOUR as u64, "none");
        }
    });
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    f.put("states", &st).await;
    for m in &w {
        assert_eq!(f.put("metrics", m).await, Handled::Stored);
    }
    let got = flags(&mut f).await;
    assert_eq!(got.len(), 3);
    for (index, verdict, flags) in got {
        assert_eq!(verdict, "verified", "window {index}");
        assert!(flags.is_empty(), "window {index}: {flags:?}");
    }
}
