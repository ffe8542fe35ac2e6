//! The demo city in headless Chromium: the real agents for every demo
//! enterprise, the embedded broker, the receiver and its pages; Chromium
//! opens the city overview, a district and an enterprise through the
//! demo's login link, and each must show its figures and draw its charts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zgsz_platform::demo::{roster, City, Options};

/// Finds Debian's chromium.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium, headless, on `url`, with `extra` options; its stdout.
fn chrome(chrome: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every inline SVG is whole and drew from real numbers.
fn svgs_are_sound(dom: &str, page: &str) -> usize {
    let opened = dom.matches("<svg").count();
    assert_eq!(
        opened,
        dom.matches("</svg>").count(),
        "{page}: an SVG is cut"
    );
    for bad in ["NaN", "Infinity", "inf\""] {
        assert!(!dom.contains(bad), "{page}: {bad} in the page");
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (.ci/run installs it and runs ignored tests)"]
async fn the_demo_citys_pages_render_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing (apt-get install chromium); .ci/run installs it"
        );
        eprintln!("chromium is missing: not run");
        return;
    };
    let days = 3;
    let city = City::start(&Options {
        days,
        // Three days in about 20 s.
        speed: Some(f64::from(days) * 86_400.0 / 20.0),
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: None,
    })
    .await
    .unwrap();
    // Every running gateway's first two days verified.
    let gateways = roster::gateways();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let p = city.progress().await.unwrap();
        if p.days >= 2 * city.gateways {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the demo city made {} verified days of {} gateways in 180 s",
            p.days,
            city.gateways
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Two gateways' evidence reports, one of them again with a figure
    // edited after signing.
    let uploads = city.upload_reports().await.unwrap();
    let verdicts: Vec<&str> = uploads.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(verdicts.len(), 3, "{uploads:?}");
    assert_eq!(
        verdicts.iter().filter(|v| **v == "refused").count(),
        1,
        "{uploads:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile");
    let dump = |next: &str| {
        let url = format!("{}?next={next}", city.link);
        chrome(&browser, &profile, &["--dump-dom".to_string()], &url)
    };

    // The city overview: every region's row, the city's, and the trend.
    let overview = dump("/");
    assert!(
        overview.contains("重点企业关键工序数控化率"),
        "not the overview: {overview}"
    );
    for (code, _) in zgsz_platform::export::DISTRICTS {
        assert!(overview.contains(&format!("{code}</a>")), "{code} missing");
    }
    assert!(overview.contains("市本级 321000"));
    assert!(overview.contains("扬州市 321000"));
    // Registered 20, reporting 19: one enterprise never reports.
    assert!(
        overview.contains("<td class=\"num\">20</td><td class=\"num\">19</td>"),
        "the city row's coverage"
    );
    assert_eq!(svgs_are_sound(&overview, "overview"), 1);
    assert!(overview.contains("<polyline"), "the trend has no line");
    // Five rates in each of the eight rows.
    assert!(overview.matches('%').count() > 40, "figures missing");

    // A district: its enterprises, each with figures.
    let district = dump("/district/321012");
    let mine: Vec<_> = gateways
        .iter()
        .filter(|g| g.region_code == "321012")
        .collect();
    assert_eq!(mine.len(), 3);
    for g in &mine {
        assert!(district.contains(&g.uscc), "{} missing", g.enterprise);
        assert!(
            district.contains(g.enterprise),
            "{}'s name missing",
            g.enterprise
        );
    }
    // The overstating enterprise's days are flagged.
    assert!(district.contains("申报与核验差距大 declared–verified gap ×"));
    svgs_are_sound(&district, "district");

    // The enterprise with two gateways, one of which went down.
    let two: Vec<_> = gateways
        .iter()
        .filter(|g| g.enterprise == roster::DOWN.0)
        .collect();
    let enterprise = dump(&format!("/enterprise/{}", two[0].uscc));
    for g in &two {
        assert!(
            enterprise.contains(&g.gateway_id),
            "{} missing",
            g.gateway_id
        );
    }
    assert!(enterprise.contains(roster::DOWN.0), "the enterprise's name");
    assert!(enterprise.contains("每日指标"));
    // Its report uploads, with their verdicts.
    assert!(enterprise.contains("接受 <span class=\"en\">accepted</span>"));
    assert!(enterprise.contains("拒绝 <span class=\"en\">refused</span>"));
    assert!(
        svgs_are_sound(&enterprise, "enterprise") >= 1,
        "no state timeline"
    );
    assert!(
        enterprise.contains("class=\"running_nc\""),
        "no NC running in the timeline"
    );

    // The overview as a picture: a blank page compresses to a few KiB.
    let shot = match std::env::var_os("ZGSZ_SCREENSHOT") {
        Some(p) => PathBuf::from(p),
        None => dir.path().join("overview.png"),
    };
    chrome(
        &browser,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,1000".to_string(),
        ],
        &format!("{}?next=/", city.link),
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 40_000, "the screenshot is {size} bytes: blank?");
    city.stop().await.unwrap();
}
