//! Loss accounting: the windows and transitions that never arrived,
//! weighed against the eviction counters of the gateway's status, on both
//! backends; and `gaps --unexplained` as a monitoring check.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::{chain, status, Fixture, Which, INST};
use zgsz_platform::gaps::Verdict;
use zgsz_platform::ingest::Handled;

on_both_backends!(missing_windows_and_transitions_are_explained_only_by_the_counters);

/// Six hours, without the third hour's metrics and the fifth hour's states
/// (two transitions): what the accounting makes of it as statuses arrive.
async fn missing_windows_and_transitions_are_explained_only_by_the_counters(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    let stream = chain(6);
    for (i, (stream_name, payload)) in stream.iter().enumerate() {
        // Entry 5 is hour 3's metrics (index 3), entry 8 hour 5's states.
        if i == 5 || i == 8 {
            continue;
        }
        assert_eq!(f.put(stream_name, payload).await, Handled::Stored);
    }
    let a = verdict(&mut f).await;
    assert_eq!(a.instance, INST);
    assert_eq!(a.missing_windows, vec![(3, 3)]);
    assert_eq!(a.missing_transitions, vec![(9, 10)]);
    assert_eq!(a.seq_gaps, vec![(6, 6), (9, 9)]);
    // Window 4 waits for 3, window 5 for its states (window 6 begins
    // with a transition of its own, so it does not need them).
    assert_eq!(a.pending_windows, 2);
    assert_eq!(a.verdict(), Verdict::NoStatus);

    // The gateway still holds rows: the holes may fill.
    f.put("status", &status(1_000, "synchronized", 4, 0, 0))
        .await;
    assert_eq!(
        verdict(&mut f).await.verdict(),
        Verdict::Owed { unsent_rows: 4 }
    );
    // Everything delivered, nothing evicted: lost after the broker.
    f.put("status", &status(2_000, "synchronized", 0, 0, 0))
        .await;
    assert_eq!(
        verdict(&mut f).await.verdict(),
        Verdict::Unexplained {
            windows: 1,
            transitions: 2
        }
    );
    // The counters cover one window and one transition only.
    f.put("status", &status(3_000, "synchronized", 0, 1, 1))
        .await;
    assert_eq!(
        verdict(&mut f).await.verdict(),
        Verdict::Unexplained {
            windows: 0,
            transitions: 1
        }
    );
    // They cover it all.
    f.put("status", &status(4_000, "synchronized", 0, 1, 2))
        .await;
    let a = verdict(&mut f).await;
    assert_eq!(a.verdict(), Verdict::Explained);
    assert_eq!(a.counters.as_ref().map(|c| c.ts), Some(4_000));
    // An older status arriving late does not replace the newer counters.
    f.put("status", &status(2_500, "synchronized", 0, 0, 0))
        .await;
    assert_eq!(verdict(&mut f).await.verdict(), Verdict::Explained);
}

/// The accounting of the fixture's one (gateway, instance).
async fn verdict(f: &mut Fixture) -> zgsz_platform::gaps::Accounting {
    let a = f.store.accounting().await.unwrap();
    assert_eq!(a.len(), 1, "{a:?}");
    a.into_iter().next().unwrap()
}

#[tokio::test]
async fn gaps_unexplained_exits_1_and_names_what_is_missing() {
    let mut f = Fixture::new(Which::Sqlite).await.unwrap();
    let stream = chain(3);
    for (i, (stream_name, payload)) in stream.iter().enumerate() {
        if i != 3 {
            f.put(stream_name, payload).await;
        }
    }
    f.put("status", &status(1_000, "synchronized", 0, 0, 0))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = f.config_file(dir.path(), "t");
    let run = |unexplained: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-platform"));
        cmd.arg("gaps").arg("--config").arg(&config);
        if unexplained {
            cmd.arg("--unexplained");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(true);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("unexplained: 1 window(s) and 0 transition(s)"),
        "{text}"
    );
    assert!(
        text.contains("windows missing: 1 (chain index 2)"),
        "{text}"
    );
    // Once the gateway reports the eviction, nothing is listed.
    f.put("status", &status(2_000, "synchronized", 0, 1, 0))
        .await;
    let (code, text) = run(true);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("nothing unexplained"), "{text}");
    let (code, text) = run(false);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("explained by the gateway's evictions"),
        "{text}"
    );
}
