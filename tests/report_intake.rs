//! The city's receiver takes in the real agent's evidence report over
//! HTTP: the time-compressed demo plant publishes through the embedded
//! broker, every message the broker delivered is stored by the receiver's
//! own ingest code (`ingest::handle`, what `run` calls after the MQTT
//! receive), the agent makes and signs its report, and the report is
//! posted to `POST /api/v1/reports` on loopback as curl would send it;
//! then edited, signed again, signed by another key, sent for an unknown
//! gateway and sent malformed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::CompressedDemo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zgsz_agent::chain::{entry_digest, metrics_lines, sha256_hex};
use zgsz_agent::report;
use zgsz_agent::signing::GatewayKey;
use zgsz_platform::config::Config as PlatformConfig;
use zgsz_platform::ingest::Handled;
use zgsz_platform::store::{Gateway, Store};

const BOUNDARY: &str = "zgsz-test-8d2f41c07a";

/// A multipart/form-data body of `parts` (name, bytes), as
/// `curl -F name=@file` sends it.
fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// One HTTP/1.1 request on a new connection; the status and the JSON
/// answer. The body is written while the answer is read: a server that
/// refuses an upload early answers before it has read it all.
async fn request(
    addr: SocketAddr,
    method: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "{method} /api/v1/reports HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        // The server may close before it read everything (413).
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        let _ = wr.flush().await;
        wr
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset after the answer (the server dropped the rest of
            // the upload) ends it too.
            Err(_) if !answer.is_empty() => break,
            Err(e) => panic!("no answer: {e}"),
        }
    }
    drop(writer.await);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

async fn post(addr: SocketAddr, parts: &[(&str, &[u8])]) -> (u16, Value) {
    request(
        addr,
        "POST",
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        multipart(parts),
    )
    .await
}

fn codes(answer: &Value) -> Vec<String> {
    answer["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["code"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(v).unwrap();
    json.push(b'\n');
    json
}

/// Changes one figure of the report's first sealed day, seals that day's
/// entry and every entry after it again (each `prev` the new digest before
/// it), as a gateway rewriting its own chain would.
fn rewrite_first_sealed_day(v: &mut Value) -> u64 {
    let days = v["days"].as_array_mut().unwrap();
    let day = days
        .iter_mut()
        .find(|d| d["status"] == "sealed")
        .expect("a sealed day in the report");
    let m = &mut day["metrics"];
    let n = m["indicators"]["completeness"]["numerator"]
        .as_i64()
        .unwrap();
    m["indicators"]["completeness"]["numerator"] = Value::from(n - 1);
    let start = m["window"]["start_ts"].as_i64().unwrap();
    let sha = sha256_hex(metrics_lines(m).unwrap().as_bytes());
    let entries = v["chain"]["entries"].as_array_mut().unwrap();
    let at = entries
        .iter()
        .position(|e| e["kind"] == "day" && e["start_ts"] == start)
        .expect("the day's chain entry");
    let index = entries[at]["index"].as_u64().unwrap();
    entries[at]["metrics_sha256"] = Value::from(sha);
    for i in at..entries.len() {
        if i > at {
            entries[i]["prev"] = entries[i - 1]["digest"].clone();
        }
        let e = &entries[i];
        let d = entry_digest(
            e["index"].as_u64().unwrap(),
            e["prev"].as_str().unwrap(),
            e["metrics_sha256"].as_str().unwrap(),
            e["transitions_sha256"].as_str().unwrap(),
        );
        entries[i]["digest"] = Value::from(d);
    }
    index
}

/// The demo plant's agent runs until a day is sealed and delivered, and
/// an hour after it (whose seal links to the day's): at 7,200 times real
/// time, within 13 s. Returns the demo and the simulated time it stopped.
async fn run_until_a_day_is_sealed() -> (CompressedDemo, i64) {
    let demo = CompressedDemo::start().await;
    let agent = zgsz_agent::agent::start(&demo.cfg, demo.clock.clone()).expect("agent");
    demo.platform
        .wait_for(
            Duration::from_secs(60),
            "a sealed day and an hour after it",
            |p| {
                let sealed = p.of_kind("metrics");
                let sealed = sealed.iter().filter(|m| m["seal"].is_object());
                let ends = |kind: &str| {
                    sealed
                        .clone()
                        .filter(|m| m["window"]["kind"] == kind)
                        .filter_map(|m| m["window"]["end_ts"].as_i64())
                        .collect::<Vec<_>>()
                };
                let days = ends("day");
                ends("hour").iter().any(|h| days.iter().any(|d| h > d))
            },
        )
        .await;
    agent.stop().await;
    let now = demo.clock.now_ms();
    (demo, now)
}

/// The receiver, on `db`, enrols the demo's gateway under `key` and
/// stores what the broker delivered, through its own code.
async fn receive(demo: &CompressedDemo, key: &GatewayKey, db: &std::path::Path) -> PlatformConfig {
    let pcfg = PlatformConfig::parse(
        "platform.toml",
        &format!(
            "[database]\npath = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"city-1\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            db.display()
        ),
    )
    .unwrap();
    let mut store = Store::sqlite(db).await.unwrap();
    store
        .enrol(&Gateway {
            gateway_id: demo.cfg.agent.gateway_id.clone(),
            uscc: demo.cfg.enterprise.uscc.clone(),
            region_code: demo.cfg.enterprise.region_code.clone(),
            public_key: key.public_hex(),
        })
        .await
        .unwrap();
    let delivered = demo.platform.raw.lock().unwrap().clone();
    let mut stored = 0;
    for (topic, payload, _) in &delivered {
        let ours = topic.starts_with("zgsz/")
            && ["/metrics", "/states", "/status"]
                .iter()
                .any(|s| topic.ends_with(s));
        if !ours {
            continue;
        }
        match zgsz_platform::ingest::handle(&mut store, &pcfg, topic, payload)
            .await
            .unwrap()
        {
            Handled::Rejected(why) => panic!("{topic}: rejected: {why}"),
            Handled::Stored => stored += 1,
            Handled::Duplicate => {}
        }
    }
    assert!(stored > 0);
    pcfg
}

/// The agent's report of the days it ran through, made and signed by its
/// own code: (report.json, report.json.sig).
fn agent_report(demo: &CompressedDemo, key: &GatewayKey, now: i64) -> (Vec<u8>, Vec<u8>) {
    let first = demo
        .platform
        .of_kind("metrics")
        .iter()
        .filter_map(|m| m["window"]["start_ts"].as_i64())
        .min()
        .unwrap();
    let offset = demo.cfg.metrics.utc_offset;
    let date = |ts: i64| {
        time::OffsetDateTime::from_unix_timestamp(ts / 1000)
            .unwrap()
            .to_offset(offset)
            .date()
    };
    let out = demo.dir.path().join("report");
    let r = report::build(&demo.cfg, key, date(first), date(now), now).unwrap();
    report::write(&out, &r, key).unwrap();
    let json = std::fs::read(out.join(report::JSON_FILE)).unwrap();
    let sig = std::fs::read(out.join(report::SIG_FILE)).unwrap();
    (json, sig)
}

/// Edited reports, each refused with its reason.
async fn edits_are_refused(addr: SocketAddr, json: &[u8], sig: &[u8], key: &GatewayKey) {
    // One byte of a figure edited after signing.
    let text = String::from_utf8(json.to_vec()).unwrap();
    let at = text.find("\"numerator\": ").unwrap() + "\"numerator\": ".len();
    let mut edited = json.to_vec();
    edited[at] = if edited[at] == b'9' {
        b'8'
    } else {
        edited[at] + 1
    };
    let (status, a) = post(addr, &[("report", &edited), ("signature", sig)]).await;
    assert_eq!(status, 422, "{a:#}");
    assert_eq!(a["verdict"], "refused");
    assert!(codes(&a).contains(&"signature".to_string()), "{a:#}");

    // A day figure changed, the chain sealed again, signed with the
    // gateway's own key: what the platform received differs.
    let mut v: Value = serde_json::from_slice(json).unwrap();
    let index = rewrite_first_sealed_day(&mut v);
    let resealed = pretty(&v);
    let (status, a) = post(
        addr,
        &[("report", &resealed), ("signature", &key.sign(&resealed))],
    )
    .await;
    assert_eq!(status, 422, "{a:#}");
    assert!(codes(&a).iter().all(|c| c == "rewritten"), "{a:#}");
    // The day and the hour after it, at least.
    assert!(a["counts"]["mismatched"].as_u64().unwrap() >= 2, "{a:#}");
    let first_reason = a["reasons"][0]["text"].as_str().unwrap();
    assert!(
        first_reason.starts_with(&format!("chain entry {index} (day from ")),
        "{first_reason}"
    );

    // Signed by another key.
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = GatewayKey::load_or_create(other.path()).unwrap();
    let (status, a) = post(
        addr,
        &[("report", json), ("signature", &stranger.sign(json))],
    )
    .await;
    assert_eq!(status, 422, "{a:#}");
    assert_eq!(codes(&a), ["signature"], "{a:#}");

    // A gateway that is not enrolled.
    let mut v: Value = serde_json::from_slice(json).unwrap();
    v["gateway"]["id"] = Value::from("gw-unknown");
    let unknown = pretty(&v);
    let (status, a) = post(
        addr,
        &[("report", &unknown), ("signature", &key.sign(&unknown))],
    )
    .await;
    assert_eq!(status, 422, "{a:#}");
    assert!(codes(&a).contains(&"unknown_gateway".to_string()), "{a:#}");
}

/// Malformed uploads: a missing part, a report that is not JSON, not
/// multipart at all, too large.
async fn malformed_uploads_are_400_or_413(addr: SocketAddr, json: &[u8], sig: &[u8]) {
    let (status, a) = post(addr, &[("report", json)]).await;
    assert_eq!(status, 400, "{a:#}");
    assert!(a["error"]
        .as_str()
        .unwrap()
        .contains("missing part signature"));
    let (status, a) = post(addr, &[("report", b"not json"), ("signature", sig)]).await;
    assert_eq!(status, 400, "{a:#}");
    assert_eq!(codes(&a), ["malformed"], "{a:#}");
    let (status, _) = request(addr, "POST", "application/json", json.to_vec()).await;
    assert_eq!(status, 400);
    let huge = vec![b' '; zgsz_platform::http::MAX_UPLOAD + 1024];
    let (status, _) = post(addr, &[("report", &huge), ("signature", sig)]).await;
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_takes_in_the_agents_report_over_http_and_refuses_edits() {
    let (demo, now) = run_until_a_day_is_sealed().await;
    let (key, _) = GatewayKey::load_or_create(demo.dir.path()).unwrap();
    let city = tempfile::tempdir().unwrap();
    let db = city.path().join("platform.db");
    let pcfg = receive(&demo, &key, &db).await;
    let (json, sig) = agent_report(&demo, &key, now);

    let listener = zgsz_platform::http::bind(pcfg.http.as_ref().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(zgsz_platform::http::serve(
        listener,
        Store::sqlite(&db).await.unwrap(),
        zgsz_platform::http::Site::default(),
        async {
            let _ = stopped.await;
        },
    ));

    // As made: accepted, its seals found among those received.
    let (status, a) = post(addr, &[("report", &json), ("signature", &sig)]).await;
    assert_eq!(status, 200, "{a:#}");
    assert_eq!(a["verdict"], "accepted");
    assert_eq!(a["gateway_id"], demo.cfg.agent.gateway_id.as_str());
    assert!(a["counts"]["matched"].as_u64().unwrap() > 0, "{a:#}");
    assert_eq!(a["counts"]["mismatched"], 0);
    assert_eq!(a["report_sha256"], sha256_hex(&json).as_str());

    edits_are_refused(addr, &json, &sig, &key).await;
    malformed_uploads_are_400_or_413(addr, &json, &sig).await;

    // Every intake that reached the check is listed, newest first.
    let (status, list) = request(addr, "GET", "text/plain", Vec::new()).await;
    assert_eq!(status, 200);
    let verdicts: Vec<&str> = list["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["refused", "refused", "refused", "refused", "refused", "accepted"]
    );
    assert!(list["reports"][0].get("report").is_none(), "no bodies");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
