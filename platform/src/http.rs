//! The HTTP endpoint of report intake: `POST /api/v1/reports`
//! (multipart/form-data with the parts `report` and `signature`, as
//! `curl -F report=@report.json -F signature=@report.json.sig` sends them)
//! and `GET /api/v1/reports` (the intakes recorded, without the bodies).
//!
//! The report endpoint has no login: [`crate::config::Http`] listens on
//! loopback by default, and anything wider must go behind a reverse proxy
//! that authenticates. The pages beside it ([`crate::web`]) need a login. The server has its own database connection, so an intake
//! never waits for a message in ingest, and intakes take turns on it.

use std::future::Future;
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::Http;
use crate::report::{intake, Intake, Verdict};
use crate::store::{ReportRecord, Store};

/// The largest upload taken in: a year of a large plant's report is a few
/// MiB; this leaves room without letting one request hold the memory.
pub const MAX_UPLOAD: usize = 32 << 20;

type Shared = Arc<Mutex<Store>>;

/// What the server serves besides report intake: the pages and their
/// API ([`crate::web`]).
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// Who may log in.
    pub users: Vec<crate::auth::User>,
    /// `verify.stale_after_s`, in ms.
    pub stale_ms: i64,
    /// A login link's secret: `GET /login/link/{secret}` opens a session
    /// as [`crate::web::LINK_USER`]. Never from the config: only the demo
    /// makes one, to print a URL that opens its pages.
    pub link: Option<String>,
}

impl Site {
    /// From the config's `[http]` users and `[verify]`.
    pub fn of(cfg: &crate::config::Config) -> Site {
        Site {
            users: cfg.http.as_ref().map_or_else(Vec::new, |h| {
                h.users
                    .iter()
                    .map(|u| crate::auth::User {
                        name: u.name.clone(),
                        password_hash: u.password_hash.clone(),
                    })
                    .collect()
            }),
            stale_ms: i64::try_from(cfg.verify.stale_after_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            link: None,
        }
    }
}

/// The routes, on `store`.
pub fn router(store: Store, site: Site) -> Router {
    let shared = Arc::new(Mutex::new(store));
    Router::new()
        .route("/api/v1/reports", post(post_report).get(list_reports))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(shared.clone())
        .merge(crate::web::router(shared, site))
}

/// Binds `[http] listen`, so that a taken port fails `run` at start.
pub async fn bind(cfg: &Http) -> std::io::Result<tokio::net::TcpListener> {
    let addr = cfg.addr();
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "The report endpoint has no login; keep it behind a reverse proxy that authenticates");
    }
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes, then finishes the requests in hand.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    site: Site,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Serving the pages (after /login) and POST /api/v1/reports");
    }
    axum::serve(listener, router(store, site))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "error": text.into() }))).into_response()
}

/// The two parts, or why the upload is malformed.
async fn parts(mut multipart: Multipart) -> Result<(Vec<u8>, Vec<u8>), Response> {
    let mut report = None;
    let mut signature = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(error(e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        let slot = match name.as_str() {
            "report" => &mut report,
            "signature" => &mut signature,
            other => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("unexpected part {other:?}; send the parts report (report.json) and signature (report.json.sig)"),
                ))
            }
        };
        if slot.is_some() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("part {name:?} sent twice"),
            ));
        }
        match field.bytes().await {
            Ok(b) => *slot = Some(b.to_vec()),
            Err(e) => return Err(error(e.status(), e.body_text())),
        }
    }
    match (report, signature) {
        (Some(r), Some(s)) => Ok((r, s)),
        (r, _) => Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "missing part {}; send -F report=@report.json -F signature=@report.json.sig",
                if r.is_none() { "report" } else { "signature" }
            ),
        )),
    }
}

async fn post_report(
    State(store): State<Shared>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return error(
                e.status(),
                format!(
                    "{}; send multipart/form-data with the parts report and signature",
                    e.body_text()
                ),
            )
        }
    };
    let (report, signature) = match parts(multipart).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let outcome = intake(&mut *store.lock().await, &report, &signature).await;
    match outcome {
        Ok(i) => {
            tracing::info!(id = %i.id, gateway = %i.gateway_id, verdict = i.verdict.as_str(), matched = i.counts.matched, "Report intake");
            let status = match i.verdict {
                Verdict::Accepted => StatusCode::OK,
                Verdict::Refused if i.is_malformed() => StatusCode::BAD_REQUEST,
                Verdict::Refused => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, Json(answer(&i))).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "Report intake failed");
            let status = if e.is_transient() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            error(status, e.to_string())
        }
    }
}

/// The JSON answer of an intake.
pub fn answer(i: &Intake) -> Value {
    json!({
        "id": i.id,
        "verdict": i.verdict,
        "gateway_id": i.gateway_id,
        "period": { "from": i.period_from, "to": i.period_to },
        "report_sha256": i.report_sha256,
        "counts": i.counts,
        "reasons": i.reasons,
    })
}

fn listed(r: &ReportRecord) -> Value {
    json!({
        "id": r.id,
        "received_ts": r.received_ts,
        "verdict": r.verdict,
        "gateway_id": r.gateway_id,
        "period": { "from": r.period_from, "to": r.period_to },
        "report_sha256": r.report_sha256,
        "counts": {
            "entries": r.entries,
            "matched": r.matched,
            "not_received": r.not_received,
            "mismatched": r.mismatched,
        },
        "reasons": serde_json::from_str::<Value>(&r.reasons).unwrap_or(Value::String(r.reasons.clone())),
    })
}

async fn list_reports(State(store): State<Shared>) -> Response {
    match store.lock().await.reports().await {
        Ok(rows) => {
            Json(json!({ "reports": rows.iter().map(listed).collect::<Vec<_>>() })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
