//! The district and city pages over a year of data: 500 enterprises in one
//! district, one gateway each, 365 verified day windows per gateway,
//! stored in SQLite through the receiver's own ingest
//! (`ingest::handle_batch`). Each page is requested through the axum
//! router the HTTP server runs, with a logged-in session, so the time is
//! the whole handler: reading the day figures, the arithmetic and the
//! HTML. Storing the data is not measured.
//!
//! `cargo bench -p zgsz-platform --bench pages`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is a failed run, and its helpers are test code"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::Value;
use tower::ServiceExt;
use zgsz_contract::{State, WindowKind};
use zgsz_platform::auth::{hash_password, User};
use zgsz_platform::config::Backend;
use zgsz_platform::ingest::{handle_batch, Handled};
use zgsz_platform::store::{Gateway, Store};

const ENTERPRISES: usize = 500;
const DAYS: usize = 365;
const REGION: &str = "321003";
/// Distinct day-by-day histories, dealt out to the gateways in turn.
const VARIANTS: usize = 7;
/// The year to date of the last day, 2026-11-30.
const YEAR_TO_DATE: &str = "from=2026-01-01&to=2026-11-30";

/// 2025-12-01 to 2026-11-30.
fn dates() -> Vec<String> {
    let months = [
        (2025, 12, 31),
        (2026, 1, 31),
        (2026, 2, 28),
        (2026, 3, 31),
        (2026, 4, 30),
        (2026, 5, 31),
        (2026, 6, 30),
        (2026, 7, 31),
        (2026, 8, 31),
        (2026, 9, 30),
        (2026, 10, 31),
        (2026, 11, 30),
    ];
    let d: Vec<String> = months
        .iter()
        .flat_map(|(y, m, n)| (1..=*n).map(move |d| format!("{y}-{m:02}-{d:02}")))
        .collect();
    assert_eq!(d.len(), DAYS);
    d
}

/// One gateway's messages, sealed as `common::day_windows` seals them (a
/// one-lathe plant; its lathe verified NC on the days `variant` says): the
/// states message, then the 365 day windows in chain order. The seal does
/// not cover the envelope, so each variant is sealed once and every
/// gateway sends it in its own envelope.
fn variant(v: usize, dates: &[String]) -> Vec<(&'static str, Value)> {
    let t0 = 1_800_000_000_000 / common::HOUR * common::HOUR;
    let n = dates.len() as i64;
    let history: Vec<(i64, State)> = (0..n)
        .map(|i| (t0 + i * common::HOUR, State::Idle))
        .collect();
    let transitions: Vec<(i64, i64, &str)> = (0..n)
        .map(|i| (i + 1, t0 + i * common::HOUR, "idle"))
        .collect();
    let mut out = vec![(
        "states",
        serde_json::from_str(&common::states(1, &transitions)).unwrap(),
    )];
    let mut head = None;
    for (i, date) in dates.iter().enumerate() {
        let start = t0 + i as i64 * common::HOUR;
        let verified = !(i + v).is_multiple_of(VARIANTS);
        let (m, next) = common::metrics_with(
            i as i64 + 2,
            start,
            start + common::HOUR,
            head.as_ref(),
            1,
            &history,
            |b| {
                b.window.kind = WindowKind::Day;
                b.window.start = format!("{date}T00:00:00+08:00");
                b.equipment[0].verified_nc = verified;
            },
        );
        out.push(("metrics", m));
        head = Some(next);
    }
    out
}

fn uscc(i: usize) -> String {
    format!("91321003MA{i:08}")
}

/// A SQLite store with the year stored and verified.
async fn fill(backend: &Backend) -> Store {
    let mut store = Store::open(backend).await.unwrap();
    let cfg = common::config(backend, "bench");
    let dates = dates();
    let variants: Vec<_> = (0..VARIANTS).map(|v| variant(v, &dates)).collect();
    let started = Instant::now();
    for i in 0..ENTERPRISES {
        let gw = format!("gw-{i:04}");
        let uscc = uscc(i);
        store
            .enrol(&Gateway {
                gateway_id: gw.clone(),
                uscc: uscc.clone(),
                region_code: REGION.into(),
                public_key: "ab".repeat(32),
            })
            .await
            .unwrap();
        let messages: Vec<(String, String)> = variants[i % VARIANTS]
            .iter()
            .map(|(stream, v)| {
                let mut v = v.clone();
                v["gateway_id"] = gw.as_str().into();
                v["uscc"] = uscc.as_str().into();
                (format!("zgsz/{REGION}/{uscc}/{gw}/{stream}"), v.to_string())
            })
            .collect();
        let batch: Vec<(&str, &[u8])> = messages
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_bytes()))
            .collect();
        let outcomes = handle_batch(&mut store, &cfg, &batch).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == Handled::Stored));
    }
    let verdicts = store.verdicts().await.unwrap();
    assert_eq!(
        verdicts,
        [("verified".to_string(), (ENTERPRISES * DAYS) as i64)]
    );
    eprintln!(
        "stored {} verified day windows of {ENTERPRISES} gateways in {:.1} s (not measured)",
        ENTERPRISES * DAYS,
        started.elapsed().as_secs_f64()
    );
    store
}

/// The session cookie of a login on `app`.
async fn login(app: &Router) -> String {
    let req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("name=bench&password=bench"))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// GET `path` with the session; the page's HTML.
async fn get(app: &Router, cookie: &str, path: &str) -> String {
    let req = Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The CPU time of the calling thread so far, in ns (Linux).
fn cpu_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn pages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite {
        path: dir.path().join("pages.db"),
    };
    let store = rt.block_on(fill(&backend));
    let users = vec![User {
        name: "bench".into(),
        password_hash: hash_password("bench").unwrap(),
    }];
    let store = Arc::new(tokio::sync::Mutex::new(store));
    let site = zgsz_platform::http::Site {
        users,
        stale_ms: 7_200_000,
        link: None,
    };
    let app = zgsz_platform::web::router(store.clone(), site);
    let cookie = rt.block_on(login(&app));

    let district_ytd = format!("/district/{REGION}?{YEAR_TO_DATE}");
    let district_all = format!("/district/{REGION}");
    let city_ytd = format!("/?{YEAR_TO_DATE}");
    // What is timed is what it should be: every enterprise listed, over
    // the period asked for.
    let html = rt.block_on(get(&app, &cookie, &district_ytd));
    assert_eq!(
        html.matches("href=\"../enterprise/").count(),
        ENTERPRISES,
        "{html}"
    );
    assert!(html.contains("2026-01-01 – 2026-11-30"));
    let html = rt.block_on(get(&app, &cookie, &district_all));
    assert!(html.contains("2025-12-01 – 2026-11-30"));

    // On a shared machine the wall time criterion reports includes the
    // time other processes had the CPU; the CPU time this thread spent
    // (everything runs on it) is the handler's own cost.
    let pages = [
        ("district, year to date", district_ytd.clone()),
        ("district, default period (all days)", district_all.clone()),
        ("city overview, year to date", city_ytd.clone()),
        ("city overview, default period (all days)", "/".to_string()),
    ];
    for (name, path) in &pages {
        let (wall, cpu) = (Instant::now(), cpu_ns());
        for _ in 0..5 {
            rt.block_on(get(&app, &cookie, path));
        }
        let cpu_ms = (cpu_ns() - cpu) as f64 / 5e6;
        let wall_ms = wall.elapsed().as_secs_f64() * 1000.0 / 5.0;
        eprintln!("{name}: {wall_ms:.0} ms wall, {cpu_ms:.0} ms CPU per request (mean of 5)");
    }

    let mut g = c.benchmark_group("pages, 500 enterprises × 365 days, SQLite");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, path) in &pages {
        g.bench_function(*name, |b| b.iter(|| rt.block_on(get(&app, &cookie, path))));
    }
    // The part of the city overview that reads the whole history: its
    // count of data-quality problems.
    g.bench_function("data-quality problems (in the city overview)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let now = zgsz_platform::store::now_ms();
                store.lock().await.quality(now, 7_200_000).await.unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, pages);
criterion_main!(benches);
