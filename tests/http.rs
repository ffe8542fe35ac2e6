//! `[http]`: Prometheus `/metrics` and `/healthz` over loopback, and the
//! responder's limits (methods, unknown paths, oversized and slow requests).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zgsz_agent::clock::SystemClock;
use zgsz_agent::config;
use zgsz_agent::sim::{Bank, SimDevice};

/// Sends `request` as is and returns the whole response (the server closes).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("a response within 10s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

/// GETs `path` every 100 ms until the response satisfies `ready` (20 s at
/// most); that response.
async fn get_until(addr: SocketAddr, path: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(addr, path).await;
        if ready(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn body(response: &str) -> &str {
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_over_loopback() {
    let mut bank = Bank::new(8);
    bank.holding[0] = 5;
    let dev = SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No broker listens on this port: the endpoint must work regardless.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = format!(
        r#"
[agent]
gateway_id = "gw-http"
state_dir = "{state}"
[enterprise]
name = "测试企业"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"
[mqtt]
host = "127.0.0.1"
port = {port}
tls = false
[http]
listen = "127.0.0.1:0"
[[devices]]
id = "lathe-01"
address = "{addr}"
poll_interval = "100ms"
[[devices.tags]]
name = "count"
area = "holding_register"
address = 0
"#,
        state = dir.path().display(),
        addr = dev.addr
    );
    let (cfg, _) = config::load_str(Path::new("t.toml"), &text).unwrap();
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let addr = agent.http_addr.expect("http bound");
    assert!(addr.ip().is_loopback());

    // 503 while the outbox, just opened, has not yet answered (on a slow
    // disk that can take longer than the endpoint waits); then 200.
    let health = get_until(addr, "/healthz", |h| h.starts_with("HTTP/1.1 200 OK\r\n")).await;
    let h: serde_json::Value = serde_json::from_str(body(&health)).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["mqtt_connected"], false);

    // Wait for the device's readings to reach the outbox, as /metrics says.
    let metrics = get_until(addr, "/metrics?x=1", |m| {
        m.contains("zgsz_device_readings_total{device=\"lathe-01\",quality=\"good\"}")
    })
    .await;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"));
    for name in [
        "zgsz_outbox_rows ",
        "zgsz_outbox_oldest_unsent_age_seconds ",
        "zgsz_mqtt_connected{sink=\"platform\"} 0",
        "zgsz_clock_synchronized ",
        "zgsz_build_info{version=",
    ] {
        assert!(body(&metrics).contains(name), "{name} in\n{metrics}");
    }
    let length: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(length, body(&metrics).len());

    // Limits.
    let r = get(addr, "/").await;
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 405 ") && r.contains("Allow: GET\r\n"),
        "{r}"
    );
    let r = exchange(addr, b"garbage\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = exchange(addr, huge.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

    // A client that never finishes its request does not hold up others,
    // and gets 408 once the timeout passes.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let r = get(addr, "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut out))
        .await
        .expect("the slow client is answered and closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));

    agent.stop().await;
    // The port is released at stop.
    assert!(TcpStream::connect(addr).await.is_err());
}
