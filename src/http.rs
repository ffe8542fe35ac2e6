//! Optional local HTTP endpoint: Prometheus `/metrics` and `/healthz`.
//!
//! # Design
//!
//! A hand-rolled HTTP/1.1 responder on tokio rather than a server crate.
//! The gateway build has no HTTP stack in its dependency tree: hyper, axum
//! and tower come only with the demo's embedded broker (rumqttd, behind the
//! `demo` feature). A server crate would bring hyper, hyper-util, http,
//! http-body and httparse into a binary already over its size goal, for
//! two read-only GET routes that need no request body, keep-alive,
//! chunking or TLS; the responder below is about 150 lines, most of them
//! the bounds that a server crate would need configuring for anyway.
//! Every connection gets one request and one response, then closes
//! (`Connection: close`). What an unfriendly
//! client can cost us is bounded: at most [`MAX_CONNECTIONS`] at a time
//! (more are dropped on accept), a request head of at most [`MAX_HEAD`]
//! bytes (431 beyond that), and [`IO_TIMEOUT`] to send it and to read the
//! answer (408 for a slow sender). Bodies are never read. Off by default;
//! `config.rs` keeps it on loopback unless `allow_remote` is set.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::buffer::{BufferClient, Stats};
use crate::clock::Clock;
use crate::clocksync::ClockSync;
use crate::uplink::mqtt::UplinkState;

/// Connections served at once; more are closed straight away.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time to receive the request head, and to send the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// `/healthz` fails if the outbox does not answer within this.
const OUTBOX_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} (http.listen): {source}; is another program using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the endpoint reports on.
pub struct HttpState {
    pub buffer: BufferClient,
    /// Every sink's connection state.
    pub uplink: Vec<watch::Receiver<UplinkState>>,
    pub clock: Arc<dyn Clock>,
    /// Clock-sync probe (replaceable in tests).
    pub clock_sync: fn() -> ClockSync,
}

/// Binds now, so that a busy port is a start-up error, not a log line.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HttpError> {
    let bind_err = |source| HttpError::Bind { addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Cannot serve HTTP; /metrics and /healthz are unavailable");
            return;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Serving /metrics and /healthz");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the limit: dropping the stream closes it
        };
        let state = state.clone();
        tokio::spawn(async move {
            handle(stream, &state).await;
            drop(slot);
        });
    }
}

async fn handle(mut stream: TcpStream, state: &HttpState) {
    let response = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => route(&head, state).await,
        Ok(Err(status)) => Response::text(status, status_text(status)),
        Err(_) => Response::text(408, "request timeout"),
    };
    let bytes = response.to_bytes();
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads up to the blank line ending the head; `Err(status)` on a bad or
/// oversized request.
async fn read_head(stream: &mut TcpStream) -> Result<String, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).map_err(|_| 400);
        }
        if buf.len() > MAX_HEAD {
            return Err(431);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            status_text(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            head.push_str("Allow: GET\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn route(head: &str, state: &HttpState) -> Response {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "bad request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "HTTP/1.x only");
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" && path != "/healthz" {
        return Response::text(404, "not found; try /metrics or /healthz");
    }
    if method != "GET" {
        return Response::text(405, "GET only");
    }
    let stats = tokio::time::timeout(OUTBOX_TIMEOUT, state.buffer.stats()).await;
    let uplink: Vec<UplinkState> = state.uplink.iter().map(|u| u.borrow().clone()).collect();
    let sync = (state.clock_sync)();
    match (path, stats) {
        ("/metrics", Ok(Ok(s))) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(&s, &uplink, sync, state.clock.now_ms()),
        },
        ("/metrics", _) => Response::text(503, "the outbox does not answer"),
        (_, Ok(Ok(s))) => Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::json!({
                "status": "ok",
                "mqtt_connected": uplink.iter().all(|u| u.connected),
                "sinks": uplink.iter().map(|u| serde_json::json!({"name": u.name, "connected": u.connected})).collect::<Vec<_>>(),
                "outbox_rows": s.rows,
                "disk_full": s.disk_full,
                "clock_sync": sync,
            })
            .to_string()
                + "\n",
        },
        (_, Ok(Err(e))) => Response::text(503, &format!("outbox error: {e}")),
        (_, Err(_)) => Response::text(503, "the outbox does not answer"),
    }
}

/// Prometheus text exposition of the outbox, uplink and device figures.
#[allow(
    clippy::too_many_lines,
    reason = "one declaration per exposed metric, in exposition order: a flat list reads best"
)]
pub fn render_metrics(s: &Stats, sinks: &[UplinkState], sync: ClockSync, now_ms: i64) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "zgsz_build_info",
        "gauge",
        "Agent version.",
        &[(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    metric(
        "zgsz_outbox_rows",
        "gauge",
        "Rows waiting for PUBACK.",
        &one(s.rows as f64),
    );
    metric(
        "zgsz_outbox_bytes",
        "gauge",
        "Size of the waiting rows as counted against buffer.max_bytes.",
        &one(s.bytes as f64),
    );
    metric(
        "zgsz_outbox_disk_full",
        "gauge",
        "1 for 10 minutes after an outbox write failed for want of disk space.",
        &one(if s.disk_full { 1.0 } else { 0.0 }),
    );
    let age = match s.oldest_unsent_ts {
        Some(t) if s.rows > 0 => (now_ms - t).max(0) as f64 / 1000.0,
        _ => 0.0,
    };
    metric(
        "zgsz_outbox_oldest_unsent_age_seconds",
        "gauge",
        "Age of the oldest waiting row; 0 when none waits.",
        &one(age),
    );
    metric(
        "zgsz_outbox_last_seq",
        "gauge",
        "Highest seq assigned.",
        &one(s.last_seq as f64),
    );
    if let Some(t) = s.last_ack_ts {
        metric(
            "zgsz_outbox_last_ack_timestamp_seconds",
            "gauge",
            "When a PUBACK was last applied.",
            &one(t as f64 / 1000.0),
        );
    }
    for (name, help, v) in [
        (
            "zgsz_outbox_appended_readings_total",
            "Readings committed to the outbox.",
            s.appended_readings,
        ),
        (
            "zgsz_outbox_acked_rows_total",
            "Rows deleted on PUBACK.",
            s.acked_rows,
        ),
        (
            "zgsz_outbox_evicted_rows_total",
            "Rows evicted over the cap.",
            s.evicted_rows,
        ),
        (
            "zgsz_outbox_evicted_readings_total",
            "Readings inside evicted rows.",
            s.evicted_readings,
        ),
    ] {
        metric(name, "counter", help, &one(v as f64));
    }
    let per_sink = |f: &dyn Fn(&UplinkState) -> f64| -> Vec<(String, f64)> {
        sinks
            .iter()
            .map(|u| (format!("{{sink=\"{}\"}}", u.name), f(u)))
            .collect()
    };
    metric(
        "zgsz_mqtt_connected",
        "gauge",
        "1 while the sink is connected to its broker.",
        &per_sink(&|u| if u.connected { 1.0 } else { 0.0 }),
    );
    metric(
        "zgsz_mqtt_connects_total",
        "counter",
        "Successful broker connections since start.",
        &per_sink(&|u| u.connects as f64),
    );
    metric(
        "zgsz_mqtt_published_bytes_total",
        "counter",
        "Payload bytes handed to the broker since start.",
        &per_sink(&|u| u.published_bytes as f64),
    );
    let share = |f: &dyn Fn(&crate::buffer::SinkStats) -> u64| -> Vec<(String, f64)> {
        s.sinks
            .iter()
            .map(|x| (format!("{{sink=\"{}\"}}", x.name), f(x) as f64))
            .collect()
    };
    metric(
        "zgsz_sink_outbox_rows",
        "gauge",
        "Rows the sink still owes a PUBACK for.",
        &share(&|x| x.rows),
    );
    metric(
        "zgsz_sink_acked_rows_total",
        "counter",
        "Rows the sink's broker acknowledged.",
        &share(&|x| x.acked_rows),
    );
    metric(
        "zgsz_sink_evicted_rows_total",
        "counter",
        "Rows evicted over the cap while the sink still owed them.",
        &share(&|x| x.evicted_rows),
    );
    metric(
        "zgsz_sink_evicted_readings_total",
        "counter",
        "Readings inside rows evicted while the sink still owed them.",
        &share(&|x| x.evicted_readings),
    );
    metric(
        "zgsz_clock_synchronized",
        "gauge",
        "1 if the system clock is NTP-synchronised, 0 if not, -1 if unknown.",
        &one(match sync {
            ClockSync::Synchronized => 1.0,
            ClockSync::Unsynchronized => 0.0,
            ClockSync::Unknown => -1.0,
        }),
    );
    let mut readings = Vec::new();
    let mut last_good = Vec::new();
    for d in &s.devices {
        let id = escape(&d.id);
        readings.push((
            format!("{{device=\"{id}\",quality=\"good\"}}"),
            d.good as f64,
        ));
        readings.push((format!("{{device=\"{id}\",quality=\"bad\"}}"), d.bad as f64));
        if let Some(t) = d.last_good_ts {
            last_good.push((format!("{{device=\"{id}\"}}"), t as f64 / 1000.0));
        }
    }
    metric(
        "zgsz_device_readings_total",
        "counter",
        "Readings per device and quality.",
        &readings,
    );
    metric(
        "zgsz_device_last_good_timestamp_seconds",
        "gauge",
        "When each device last gave a good reading.",
        &last_good,
    );
    o
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::DeviceHealth;

    #[test]
    fn renders_prometheus_text() {
        let s = Stats {
            rows: 3,
            oldest_unsent_ts: Some(10_000),
            last_seq: 42,
            appended_readings: 100,
            devices: vec![DeviceHealth {
                id: "lathe-01".into(),
                good: 7,
                bad: 2,
                last_good_ts: Some(9_000),
                ..Default::default()
            }],
            ..Default::default()
        };
        let u = UplinkState {
            name: "platform".into(),
            connected: true,
            connects: 1,
            ..Default::default()
        };
        let t = render_metrics(&s, &[u], ClockSync::Unsynchronized, 12_500);
        for line in [
            "zgsz_outbox_rows 3",
            "zgsz_outbox_oldest_unsent_age_seconds 2.5",
            "zgsz_outbox_last_seq 42",
            "zgsz_outbox_appended_readings_total 100",
            "zgsz_mqtt_connected{sink=\"platform\"} 1",
            "zgsz_clock_synchronized 0",
            "zgsz_device_readings_total{device=\"lathe-01\",quality=\"good\"} 7",
            "zgsz_device_readings_total{device=\"lathe-01\",quality=\"bad\"} 2",
            "zgsz_device_last_good_timestamp_seconds{device=\"lathe-01\"} 9",
            "# TYPE zgsz_outbox_acked_rows_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn escapes_labels() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
