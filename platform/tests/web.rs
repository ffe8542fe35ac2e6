//! The pages and their API over real HTTP on loopback: nothing without a
//! login, then the city, a district, an enterprise and data quality, in
//! HTML and JSON, from day windows stored through ingest.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::net::SocketAddr;

use common::{Fixture, Which, USCC};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zgsz_platform::auth::{hash_password, User};
use zgsz_platform::http::Site;
use zgsz_platform::store::Store;

/// One HTTP/1.1 request on a new connection: (status, head, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn nothing_is_served_without_a_login_and_everything_with_one() {
    let mut f = Fixture::new(Which::Sqlite).await.unwrap();
    common::day_windows(&mut f, &[("2026-11-02", true), ("2026-11-03", true)]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let site = Site {
        users: vec![User {
            name: "gxj".into(),
            password_hash: hash_password("正确 right").unwrap(),
        }],
        stale_ms: 7_200_000,
        link: None,
    };
    let store = Store::open(&f.backend).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(zgsz_platform::http::serve(listener, store, site, async {
        let _ = stopped.await;
    }));

    // Without a session: pages go to the login, the API says 401, and no
    // answer holds a figure or a name.
    let private = [
        "/",
        "/district/321003",
        &format!("/enterprise/{USCC}"),
        "/quality",
        "/api/v1/figures",
        "/api/v1/districts/321003",
        &format!("/api/v1/enterprises/{USCC}"),
        "/api/v1/quality",
    ];
    for path in private {
        let (status, head, body) = request(addr, "GET", path, None, None).await;
        if path.starts_with("/api/") {
            assert_eq!(status, 401, "{path}");
        } else {
            assert_eq!(status, 303, "{path}");
            assert!(head.contains("location: /login"), "{path}: {head}");
        }
        assert!(
            !body.contains("321003") && !body.contains(USCC),
            "{path}: {body}"
        );
    }
    // No login link was made: a link is only the login form.
    let (status, head, _) = request(addr, "GET", "/login/link/x", None, None).await;
    assert_eq!(status, 303);
    assert!(head.contains("location: /login\r\n") && !head.contains("set-cookie"));
    let forged = format!("zgsz_session={}", "a".repeat(64));
    assert_eq!(request(addr, "GET", "/", Some(&forged), None).await.0, 303);
    let (status, _, body) = request(addr, "GET", "/login", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<form method=\"post\""));
    let wrong = "name=gxj&password=wrong";
    assert_eq!(
        request(addr, "POST", "/login", None, Some(wrong)).await.0,
        401
    );

    // Logged in.
    let right = "name=gxj&password=%E6%AD%A3%E7%A1%AE+right";
    let (status, head, _) = request(addr, "POST", "/login", None, Some(right)).await;
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let get = |path: String| {
        let cookie = cookie.clone();
        async move { request(addr, "GET", &path, Some(&cookie), None).await }
    };
    let (status, _, city) = get("/".into()).await;
    assert_eq!(status, 200);
    assert!(
        city.contains("<a href=\"district/321003\">邗江区 321003</a>"),
        "{city}"
    );
    assert!(city.contains("2026-11-02 – 2026-11-03"));
    // The day, week, month and year to date, ending on the last day stored.
    let link = |from: &&str| city.contains(&format!("?from={from}&amp;to=2026-11-03\""));
    assert!(["2026-11-03", "2026-10-28", "2026-11-01", "2026-01-01"]
        .iter()
        .all(link));
    assert!(city.contains("100.0%"), "{city}");
    assert!(city.contains("<svg"));
    let (status, _, json) = get("/api/v1/figures?from=2026-11-02&to=2026-11-02".into()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["city"]["cnc_rate_verified"]["pooled"]["numerator"], 1);
    assert_eq!(v["districts"][0]["name"], "邗江区");
    assert_eq!(get("/api/v1/figures?from=11-02".into()).await.0, 400);
    let (status, _, district) = get("/district/321003?sort=verified".into()).await;
    assert_eq!(status, 200);
    // Sorting keeps the period; another period keeps the sort.
    assert!(district.contains("?from=2026-11-02&amp;to=2026-11-03&amp;sort=gap"));
    assert!(district.contains("?from=2026-11-01&amp;to=2026-11-03&amp;sort=verified"));
    assert!(district.contains(&format!("enterprise/{USCC}")));
    assert_eq!(get("/district/999999".into()).await.0, 404);
    let (status, _, json) = get("/api/v1/districts/321003".into()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["name"], "邗江区");
    assert_eq!(v["figures"]["reporting"], 1);
    // The name from the figures (the test streams call it "E").
    assert_eq!(v["enterprises"][USCC]["name"], "E");
    assert_eq!(get("/api/v1/districts/999999".into()).await.0, 404);
    let (status, _, enterprise) = get(format!("/enterprise/{USCC}")).await;
    assert_eq!(status, 200);
    assert!(enterprise.contains("2026-11-03"), "{enterprise}");
    let (status, _, json) = get(format!("/api/v1/enterprises/{USCC}")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["days"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["enterprise"]["gateways"][0]["chains"][0]["verified_to"],
        2
    );
    assert_eq!(get("/quality".into()).await.0, 200);
    let (_, _, json) = get("/api/v1/quality".into()).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(v["problems"].is_array());

    // Logged out: nothing again.
    assert_eq!(get("/logout".into()).await.0, 303);
    assert_eq!(get("/".into()).await.0, 303);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The set-cookie of a response head, as a request's cookie.
fn cookie_of(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_string)
}

/// The demo's login link: the right secret opens a session and leads on,
/// within the site only; a wrong one is the login form.
#[tokio::test]
async fn a_login_link_opens_a_session_only_with_its_secret() {
    let mut f = Fixture::new(Which::Sqlite).await.unwrap();
    common::day_windows(&mut f, &[("2026-11-02", true)]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let secret = "5".repeat(64);
    let site = Site {
        users: Vec::new(),
        stale_ms: 7_200_000,
        link: Some(secret.clone()),
    };
    let store = Store::open(&f.backend).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(zgsz_platform::http::serve(listener, store, site, async {
        let _ = stopped.await;
    }));

    for wrong in ["5".repeat(63), "6".repeat(64), format!("{secret}5")] {
        let path = format!("/login/link/{wrong}?next=/quality");
        let (status, head, _) = request(addr, "GET", &path, None, None).await;
        assert_eq!(status, 303);
        assert!(head.contains("location: /login\r\n"), "{head}");
        assert_eq!(cookie_of(&head), None);
    }
    let path = format!("/login/link/{secret}?next=/district/321003");
    let (status, head, _) = request(addr, "GET", &path, None, None).await;
    assert_eq!(status, 303);
    assert!(head.contains("location: /district/321003\r\n"), "{head}");
    let cookie = cookie_of(&head).unwrap();
    let (status, _, page) = request(addr, "GET", "/district/321003", Some(&cookie), None).await;
    assert_eq!(status, 200);
    assert!(page.contains(USCC));
    // Never off the site.
    for next in [
        "//elsewhere.example/",
        "https://elsewhere.example/",
        "%5C%5Celsewhere",
    ] {
        let path = format!("/login/link/{secret}?next={next}");
        let (_, head, _) = request(addr, "GET", &path, None, None).await;
        assert!(head.contains("location: /\r\n"), "{next}: {head}");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
