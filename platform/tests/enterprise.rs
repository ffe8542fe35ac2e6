//! The enterprise view and page: gateways, how far the chain is verified,
//! a break, the model history and the machines' last day, from a stream
//! stored through ingest; on both backends.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::{chain, Fixture, Which, GW, HOUR, USCC};
use serde_json::Value;
use zgsz_platform::store::ReportRecord;

on_both_backends!(the_enterprise_view_follows_the_chain_and_the_states);

async fn the_enterprise_view_follows_the_chain_and_the_states(which: Which) {
    let Some(mut f) = Fixture::new(which).await else {
        return;
    };
    assert_eq!(
        f.store.enterprise("91000000000000000X").await.unwrap(),
        None
    );
    // Four hours; the fourth window's numerator is edited on the way.
    for (stream, payload) in chain(4) {
        let mut payload = payload;
        if stream == "metrics" && payload.contains("\"index\":4") {
            let mut v: Value = serde_json::from_str(&payload).unwrap();
            v["indicators"]["cnc_rate_verified"]["numerator"] = Value::from(0);
            payload = v.to_string();
        }
        f.put(stream, &payload).await;
    }
    let view = f.store.enterprise(USCC).await.unwrap().unwrap();
    assert_eq!(view.gateways.len(), 1);
    // The name, from the figures (the test streams call it "E").
    assert_eq!(view.name, "E");
    let g = &view.gateways[0];
    assert_eq!(g.gateway_id, GW);
    assert!(g.last_contact_ts.is_some());
    let c = &g.chains[0];
    assert_eq!((c.verified_to, c.windows, c.pending), (3, 4, 0));
    assert_eq!(c.broken, vec![4]);
    assert_eq!(c.config_hashes.len(), 1);
    // The last day before the newest transition: the lathe, idle at each
    // hour and running NC from 20 minutes past.
    let (from, to) = view.timeline_span.unwrap();
    let t0 = 1_800_000_000_000 / HOUR * HOUR;
    let newest = t0 + 3 * HOUR + 20 * 60_000;
    assert_eq!((from, to), (newest - 24 * HOUR, newest + 1));
    assert_eq!(view.timeline.len(), 1);
    let states: Vec<&str> = view.timeline[0]
        .changes
        .iter()
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(states, ["idle", "running_nc"].repeat(4));

    assert!(view.reports.is_empty());

    // Report intakes: one refused for this gateway, one for another
    // gateway, which this enterprise's page must not show.
    let intake = |gateway_id: &str, verdict: &str, ts: i64| ReportRecord {
        id: String::new(),
        received_ts: ts,
        gateway_id: gateway_id.to_string(),
        period_from: "2027-01-15".into(),
        period_to: "2027-01-16".into(),
        report_sha256: format!("{ts:064}"),
        verdict: verdict.into(),
        reasons: r#"[{"code":"signature","text":"the signature does not verify"}]"#.into(),
        entries: 48,
        matched: 40,
        not_received: 8,
        mismatched: 0,
    };
    f.store
        .record_report(&intake(GW, "refused", 1_800_000_000_000), "{}", "00")
        .await
        .unwrap();
    f.store
        .record_report(
            &intake("other-gw", "accepted", 1_800_000_001_000),
            "{}",
            "00",
        )
        .await
        .unwrap();
    let view = f.store.enterprise(USCC).await.unwrap().unwrap();
    assert_eq!(view.reports.len(), 1);
    assert_eq!(
        (
            view.reports[0].gateway_id.as_str(),
            view.reports[0].verdict.as_str()
        ),
        (GW, "refused")
    );

    let html = zgsz_platform::pages::enterprise(&view, &[]);
    assert!(
        html.contains("拒绝 <span class=\"en\">refused</span>"),
        "{html}"
    );
    assert!(html.contains("the signature does not verify"));
    assert!(html.contains("<td class=\"num\">40/48</td>"));
    // 1,800,000,000,000 ms is 2027-01-15 08:00 UTC.
    assert!(html.contains("2027-01-15 16:00 (UTC+8)"));
    assert!(html.contains(&format!("企业 {USCC}")));
    assert!(
        html.contains("<td class=\"flag\">4</td>"),
        "the break is shown"
    );
    assert_eq!(html.matches("<rect class=\"running_nc\"").count(), 4);
    assert_eq!(html.matches("<rect class=\"idle\"").count(), 4);
}
