//! District and city figures from hand-built day windows, against figures
//! computed by hand: the mean of enterprise rates and the pooled ratio
//! (which differ here), an enterprise with two gateways, a
//! process-industry enterprise, a period of several days, and each reason
//! an enterprise is left out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::BTreeSet;

use zgsz_contract::payload::{
    DeclaredIndicator, DeclaredIndicators, EquipmentMetrics, Indicators, Metrics, ProcessMetrics,
    WindowInfo,
};
use zgsz_contract::{Industry, Kind, Ratio, StateTimes, WindowKind};
use zgsz_platform::aggregate::{area, AreaInput, Exclusion, GatewayDay};

const DAY: i64 = 86_400_000;

/// (process, key) and (process, kind, verified_nc, networked) rows.
fn body(
    industry: Industry,
    date: &str,
    processes: &[(&str, bool)],
    equipment: &[(&str, Kind, bool, bool)],
) -> Metrics {
    let r = || Ratio::new(0, 0, "-");
    Metrics {
        industry,
        chain: String::new(),
        enterprise_name: "E".into(),
        agent_version: "0.1.0".into(),
        config_hash: "c".repeat(64),
        window: WindowInfo {
            kind: WindowKind::Day,
            start: format!("{date}T00:00:00+08:00"),
            end: "e".into(),
            start_ts: 0,
            end_ts: DAY,
        },
        indicators: Indicators {
            cnc_rate_declared: r(),
            cnc_rate_verified: r(),
            nc_time_share: r(),
            nc_time_share_key: r(),
            networking_rate: r(),
            networking_rate_key: r(),
            completeness: r(),
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
        processes: processes
            .iter()
            .map(|(id, key)| ProcessMetrics {
                id: (*id).into(),
                name: (*id).into(),
                key: *key,
                equipment: 0,
                nc_capable: 0,
                control_systems: 0,
                verified_nc: 0,
                nc_time_share: r(),
                utilisation: r(),
            })
            .collect(),
        equipment: equipment
            .iter()
            .enumerate()
            .map(
                |(i, (process, kind, verified, networked))| EquipmentMetrics {
                    id: format!("m{i}"),
                    name: format!("m{i}"),
                    process: (*process).into(),
                    kind: *kind,
                    nc_capable: kind.nc_capable(),
                    device: format!("m{i}"),
                    // A verified machine ran 6 h under NC and 2 h by hand;
                    // the others 8 h by hand.
                    time_ms: StateTimes {
                        offline: 0,
                        idle: 16 * 3_600_000,
                        running_manual: if *verified { 2 } else { 8 } * 3_600_000,
                        running_nc: if *verified { 6 } else { 0 } * 3_600_000,
                    },
                    networked: *networked,
                    ran_nc: *verified,
                    verified_nc: *verified,
                    utilisation: r(),
                    nc_time_share: r(),
                    completeness: Ratio::new(1, 1, "-"),
                },
            )
            .collect(),
        seal: None,
        states_upto_seq: None,
    }
}

/// `verified` of `total` CNC lathes in the key process, all networked.
fn lathes(date: &str, verified: usize, total: usize) -> Metrics {
    let eq: Vec<(&str, Kind, bool, bool)> = (0..total)
        .map(|i| ("turning", Kind::Cnc, i < verified, true))
        .collect();
    body(Industry::Discrete, date, &[("turning", true)], &eq)
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

const D1: &str = "2026-11-02";
const D2: &str = "2026-11-03";

/// District 321003: A (one gateway, 6 of 7 verified), B (two gateways, 1
/// of 1 and 0 of 1: 1 of 2 pooled), D (registered, silent), E (no key
/// process), F (a broken window). District 321012: C, process industry.
fn city() -> AreaInput {
    let registered = [
        ("A", "321003"),
        ("B", "321003"),
        ("C", "321012"),
        ("D", "321003"),
        ("E", "321003"),
        ("F", "321003"),
    ]
    .iter()
    .map(|(u, r)| ((*u).to_string(), (*r).to_string()))
    .collect();
    let process = body(
        Industry::Process,
        D1,
        &[("reactor", true), ("distill", true), ("pack", false)],
        &[
            ("reactor", Kind::Dcs, true, true),
            ("distill", Kind::Plc, false, true),
            ("pack", Kind::Manual, false, false),
        ],
    );
    let no_key = body(
        Industry::Discrete,
        D1,
        &[("pack", false)],
        &[("pack", Kind::Cnc, true, true)],
    );
    let days = vec![
        day("a1", "A", "321003", lathes(D1, 6, 7)),
        day("a1", "A", "321003", lathes(D2, 5, 7)),
        day("b1", "B", "321003", lathes(D1, 1, 1)),
        day("b2", "B", "321003", lathes(D1, 0, 1)),
        day("c1", "C", "321012", process),
        day("e1", "E", "321003", no_key),
        day("f1", "F", "321003", lathes(D1, 1, 1)),
    ];
    AreaInput {
        registered,
        days,
        rejected: BTreeSet::from(["F".to_string()]),
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn a_district_day_the_mean_of_enterprise_rates_and_the_pooled_ratio_differ() {
    let input = city();
    let f = area(&input, Some("321003"), D1, D1);
    // A 6/7, B pooled over its two gateways 1/2.
    let v = &f.cnc_rate_verified;
    assert_eq!(v.enterprises, 2);
    assert!(
        close(v.mean_of_enterprises, (6.0 / 7.0 + 0.5) / 2.0),
        "{v:?}"
    );
    assert_eq!((v.pooled.numerator, v.pooled.denominator), (7, 9));
    // Declared: every lathe is NC-capable.
    assert_eq!(
        (
            f.cnc_rate_declared.pooled.numerator,
            f.cnc_rate_declared.pooled.denominator
        ),
        (9, 9)
    );
    assert!(close(f.cnc_rate_declared.mean_of_enterprises, 1.0));
    // NC time share pools time: 7 verified machines × 6 h of 8 h, 2 others 8 h by hand.
    assert_eq!(
        (
            f.nc_time_share.pooled.numerator,
            f.nc_time_share.pooled.denominator
        ),
        (7 * 6 * 3_600_000, 9 * 8 * 3_600_000)
    );
    assert_eq!(f.registered, 5);
    assert_eq!(f.reporting, 4, "A, B, E and F sent verified days");
    assert_eq!(f.at_target, 1, "A at 85.7 %, B at 50 %");
    assert_eq!(f.excluded.get(&Exclusion::NotReporting), Some(&1));
    assert_eq!(f.excluded.get(&Exclusion::NoKeyProcess), Some(&1));
    assert_eq!(f.excluded.get(&Exclusion::RejectedData), Some(&1));
    let b = f.enterprises.iter().find(|e| e.uscc == "B").unwrap();
    assert!(close(b.cnc_rate_verified, 0.5));
}

#[test]
fn a_process_industry_enterprise_counts_key_processes_with_a_verified_control_system() {
    let input = city();
    let f = area(&input, Some("321012"), D1, D1);
    // Key processes: reactor (DCS, verified) and distill (PLC, not).
    let v = &f.cnc_rate_verified;
    assert_eq!((v.pooled.numerator, v.pooled.denominator), (1, 2));
    assert!(close(v.mean_of_enterprises, 0.5));
    let d = &f.cnc_rate_declared;
    assert_eq!((d.pooled.numerator, d.pooled.denominator), (2, 2));
    // Networking counts all equipment: 2 of 3.
    assert_eq!(
        (
            f.networking_rate.pooled.numerator,
            f.networking_rate.pooled.denominator
        ),
        (2, 3)
    );
    assert_eq!((f.registered, f.reporting, f.at_target), (1, 1, 0));
}

#[test]
fn over_a_period_enterprise_rates_are_means_of_days_and_the_city_pools_enterprise_days() {
    let input = city();
    let f = area(&input, None, D1, D2);
    let a = f.enterprises.iter().find(|e| e.uscc == "A").unwrap();
    assert_eq!(a.days, 2);
    assert!(close(a.cnc_rate_verified, (6.0 / 7.0 + 5.0 / 7.0) / 2.0));
    // City: A 11/14, B 1/2, C 1/2 (process industry).
    let v = &f.cnc_rate_verified;
    assert_eq!(v.enterprises, 3);
    assert!(close(
        v.mean_of_enterprises,
        (11.0 / 14.0 + 0.5 + 0.5) / 3.0
    ));
    assert_eq!(
        (v.pooled.numerator, v.pooled.denominator),
        (6 + 5 + 1 + 1, 7 + 7 + 2 + 2)
    );
    assert_eq!((f.registered, f.reporting, f.at_target), (6, 5, 1));
    // Day 2 alone: only A reports.
    let f = area(&input, None, D2, D2);
    assert_eq!(f.reporting, 1);
    assert_eq!(f.excluded.get(&Exclusion::NotReporting), Some(&4));
    assert!(close(f.cnc_rate_verified.mean_of_enterprises, 5.0 / 7.0));
}

#[test]
fn gateways_of_one_enterprise_that_disagree_on_the_industry_are_left_out() {
    let registered = vec![("M".to_string(), "321002".to_string())];
    let mut process = lathes(D1, 1, 1);
    process.industry = Industry::Process;
    let days = vec![
        day("m1", "M", "321002", lathes(D1, 1, 1)),
        day("m2", "M", "321002", process),
    ];
    let input = AreaInput {
        registered,
        days,
        rejected: BTreeSet::new(),
    };
    let f = area(&input, Some("321002"), D1, D1);
    assert_eq!(f.excluded.get(&Exclusion::MixedIndustry), Some(&1));
    assert_eq!(f.cnc_rate_verified.enterprises, 0);
    assert_eq!(f.cnc_rate_verified.pooled.value, None);
}

/// Two verified day windows of the fixture's gateway (enterprise
/// `common::USCC` in 321003), stored through ingest; the second day's
/// lathe is not verified NC. Then `figures` reads them back.
#[tokio::test]
async fn figures_reads_the_verified_day_windows_from_the_database() {
    use common::{day_windows, Fixture, Which};
    let mut f = Fixture::new(Which::Sqlite).await.unwrap();
    day_windows(&mut f, &[(D1, true), (D2, false)]).await;
    let verdicts: Vec<String> = f.verdicts().await.into_iter().map(|v| v.1).collect();
    assert_eq!(verdicts, ["verified", "verified"]);
    let input = f.store.area_input(D1, D2).await.unwrap();
    assert_eq!(input.days.len(), 2);
    let a = area(&input, Some(common::REGION), D1, D2);
    assert_eq!((a.registered, a.reporting, a.at_target), (1, 1, 0));
    assert!(close(a.cnc_rate_verified.mean_of_enterprises, 0.5));
    // The command prints the same.
    let dir = tempfile::tempdir().unwrap();
    let config = f.config_file(dir.path(), "t");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-platform"))
        .args(["figures", "--from", D1, "--to", D1, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("321003\t1\t1\t1\t100.0% / 100.0% (1/1)"),
        "{text}"
    );
}

/// The exported .xlsx, read back, holds the figures `area` computes; the
/// CSV the same cells as text.
#[test]
fn the_xlsx_and_csv_exports_hold_the_figures() {
    use calamine::{open_workbook, Data, Reader, Xlsx};
    use zgsz_platform::export::{table, write_csv, write_xlsx, HEADERS};
    let input = city();
    let rows = table(&input, D1, D1);
    let dir = tempfile::tempdir().unwrap();
    let xlsx = dir.path().join("t.xlsx");
    write_xlsx(&rows, D1, &xlsx).unwrap();
    let mut book: Xlsx<_> = open_workbook(&xlsx).unwrap();
    let sheet = book.worksheet_range("关键工序数控化率").unwrap();
    let cell = |r: u32, c: u32| sheet.get_value((r, c)).cloned().unwrap_or(Data::Empty);
    for (c, h) in HEADERS.iter().enumerate() {
        assert_eq!(cell(1, c as u32), Data::String((*h).to_string()));
    }
    // Rows: 321003, 321012, then the city.
    assert_eq!(cell(2, 0), Data::String("321003".into()));
    assert_eq!(cell(2, 1), Data::String("邗江区".into()));
    assert_eq!(cell(4, 1), Data::String("扬州市".into()));
    let district = area(&input, Some("321003"), D1, D1);
    let number = |r: u32, c: u32| match cell(r, c) {
        Data::Float(v) => v,
        other => panic!("({r}, {c}) is {other:?}"),
    };
    assert_eq!(number(2, 2), district.registered as f64);
    assert_eq!(number(2, 4), district.at_target as f64);
    assert!(close(
        Some(number(2, 5)),
        district.cnc_rate_verified.mean_of_enterprises.unwrap()
    ));
    assert!(close(Some(number(2, 6)), 7.0 / 9.0));
    assert_eq!((number(2, 7), number(2, 8)), (7.0, 9.0));
    assert_eq!(number(2, 15), 3.0, "D, E and F left out");
    let city_row = area(&input, None, D1, D1);
    assert!(close(
        Some(number(4, 5)),
        city_row.cnc_rate_verified.mean_of_enterprises.unwrap()
    ));

    let csv = dir.path().join("t.csv");
    write_csv(&rows, &csv).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(
        lines[0].starts_with("\u{feff}区县代码,区县,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("321003,邗江区,5,4,1,67.9%,77.8%,7,9,"),
        "{}",
        lines[1]
    );
}

/// The city overview renders every district of the table, the city row,
/// and a trend whose points sit where the figures say.
#[test]
fn the_city_overview_shows_the_table_and_the_trend() {
    use zgsz_platform::aggregate::daily_trend;
    use zgsz_platform::pages::{city as city_page, trend};
    let input = city();
    let districts: Vec<(String, _)> = ["321003", "321012"]
        .iter()
        .map(|r| (r.to_string(), area(&input, Some(r), D1, D2)))
        .collect();
    let all = area(&input, None, D1, D2);
    let points = daily_trend(&input, None, D1, D2);
    assert_eq!(points.len(), 2);
    assert!(close(points[1].1, 5.0 / 7.0), "{points:?}");
    let svg = trend(&points);
    let html = city_page("2026-11-02 – 2026-11-03", &districts, &all, &svg, 3);
    assert!(html.contains("<a href=\"district/321003\">邗江区 321003</a>"));
    assert!(html.contains("<a href=\"district/321012\">江都区 321012</a>"));
    assert!(html.contains("扬州市 321000"));
    assert!(html.contains(">数据质量问题 <span class=\"en\">data-quality problems</span>: 3</a>"));
    // The city's verified mean over the two days, as the table shows it.
    let mean = all.cnc_rate_verified.mean_of_enterprises.unwrap();
    assert!(html.contains(&format!("{:.1}%", mean * 100.0)));
    // The trend: one polyline of two points (y = 200 − v × 160), and the
    // dashed target line at 65 %.
    let y = |v: f64| 200.0 - v * 160.0;
    assert!(
        svg.contains(&format!(
            "points=\"40.0,{:.1} 680.0,{:.1}\"",
            y(points[0].1.unwrap()),
            y(5.0 / 7.0)
        )),
        "{svg}"
    );
    assert!(svg.contains(&format!("y1=\"{:.1}\"", y(0.65))));
    assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    // A day without a figure breaks the line into dots.
    let broken = trend(&[
        (D1.into(), Some(0.5)),
        ("2026-11-04".into(), None),
        (D2.into(), Some(0.7)),
    ]);
    assert_eq!(broken.matches("<circle").count(), 2);
    assert!(!broken.contains("<polyline"));
    assert_eq!(
        zgsz_platform::pages::esc("<a&\"'>"),
        "&lt;a&amp;&quot;&#39;&gt;"
    );
}

/// The district page lists its enterprises in the order asked for, with
/// the reason an enterprise is left out.
#[test]
fn the_district_page_sorts_its_enterprises() {
    use zgsz_platform::pages::{district, Sort};
    let input = city();
    let f = area(&input, Some("321003"), D1, D1);
    let order = |html: &str| -> Vec<usize> {
        ["A", "B", "D", "E", "F"]
            .iter()
            .map(|u| html.find(&format!("enterprise/{u}\"")).unwrap())
            .collect()
    };
    let by_uscc = district("321003", D1, &f, &Default::default(), Sort::Uscc);
    let o = order(&by_uscc);
    assert!(o.windows(2).all(|w| w[0] < w[1]), "{o:?}");
    // Verified, lowest first: B (50 %) before A (85.7 %).
    let by_rate = district("321003", D1, &f, &Default::default(), Sort::Verified);
    let o = order(&by_rate);
    assert!(o[1] < o[0]);
    assert!(by_uscc.contains("邗江区 321003"));
    assert!(by_uscc.contains("数据被拒 a window failed verification"));
    assert!(by_uscc.contains("未报送 no verified day in the period"));
    assert_eq!(Sort::parse("gap"), Some(Sort::Gap));
    assert_eq!(Sort::parse("x"), None);
}
