//! The pages and their JSON API, behind a login.
//!
//! Every page is the JSON of the same route rendered by [`crate::pages`],
//! so the two cannot disagree. Nothing here is served without a session:
//! a page request without one is sent to `/login`, an API request gets
//! 401, and neither carries a figure. Users come from `[[http.users]]`
//! (argon2id hashes, see [`crate::auth`]); with none configured, nobody
//! can log in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::aggregate::{area, daily_trend, enterprise_days, AreaInput};
use crate::auth::Sessions;
use crate::store::{now_ms, Scope, Store};
use crate::summary::DaySummary;

/// The session cookie's name.
const COOKIE: &str = "zgsz_session";
/// A session unused this long is closed.
const IDLE: Duration = Duration::from_secs(8 * 3600);
#[derive(Clone)]
struct Web {
    store: Arc<Mutex<Store>>,
    sessions: Arc<Mutex<Sessions>>,
    /// `verify.stale_after_s`, in ms.
    stale_ms: i64,
    /// The login link's secret, if any (see [`crate::http::Site::link`]).
    link: Option<Arc<str>>,
}

/// Who a login link logs in as.
pub const LINK_USER: &str = "demo";

/// The pages, the API and the login, on `store`, for `site`'s users.
pub fn router(store: Arc<Mutex<Store>>, site: crate::http::Site) -> Router {
    let web = Web {
        store,
        sessions: Arc::new(Mutex::new(Sessions::new(site.users, IDLE))),
        stale_ms: site.stale_ms,
        link: site.link.map(Arc::from),
    };
    let private = Router::new()
        .route("/", get(city_page))
        .route("/district/:code", get(district_page))
        .route("/enterprise/:uscc", get(enterprise_page))
        .route("/quality", get(quality_page))
        .route("/api/v1/figures", get(figures_api))
        .route("/api/v1/districts/:code", get(district_api))
        .route("/api/v1/enterprises/:uscc", get(enterprise_api))
        .route("/api/v1/quality", get(quality_api))
        .route_layer(axum::middleware::from_fn_with_state(web.clone(), gate));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route("/login/link/:secret", get(login_link))
        .merge(private)
        .with_state(web)
}

/// The session's token from the request's cookies.
fn token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Lets a request through only with an open session.
async fn gate(State(web): State<Web>, req: Request, next: Next) -> Response {
    let user = match token(&req) {
        Some(t) => web.sessions.lock().await.user(&t, Instant::now()),
        None => None,
    };
    if user.is_some() {
        return next.run(req).await;
    }
    if req.uri().path().starts_with("/api/") {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "log in first: POST /login"})),
        )
            .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

async fn login_form() -> Html<String> {
    Html(crate::pages::page(
        "登录",
        "Log in",
        "<form method=\"post\" action=\"/login\"><p><label>用户 <span class=\"en\">User</span> \
<input name=\"name\" autocomplete=\"username\"></label></p><p><label>密码 <span class=\"en\">Password</span> \
<input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label></p>\
<p><button>登录 <span class=\"en\">Log in</span></button></p></form>",
    ))
}

#[derive(Deserialize)]
struct Credentials {
    name: String,
    password: String,
}

async fn login(State(web): State<Web>, Form(c): Form<Credentials>) -> Response {
    match web.sessions.lock().await.login(&c.name, &c.password) {
        Ok(Some(token)) => session_cookie(&token, "/"),
        Ok(None) => (
            StatusCode::UNAUTHORIZED,
            Html(crate::pages::page(
                "登录失败",
                "Login failed",
                "<p>用户或密码不对。<span class=\"en\">Wrong user or password.</span> <a href=\"/login\">再试 <span class=\"en\">Again</span></a></p>",
            )),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `?next=/path`: where a login link leads.
#[derive(Deserialize)]
struct LinkQuery {
    next: Option<String>,
}

/// A login link: a session as [`LINK_USER`] for the right secret, then
/// on to `next` (a path on this site only). Anything else is the login
/// form, as if no link existed.
async fn login_link(
    State(web): State<Web>,
    Path(secret): Path<String>,
    Query(n): Query<LinkQuery>,
) -> Response {
    let Some(link) = web.link.as_deref() else {
        return Redirect::to("/login").into_response();
    };
    if !same_secret(link.as_bytes(), secret.as_bytes()) {
        return Redirect::to("/login").into_response();
    }
    let next = n
        .next
        .filter(|p| p.starts_with('/') && !p.starts_with("//") && !p.contains('\\'))
        .unwrap_or_else(|| "/".to_string());
    match web.sessions.lock().await.open_for(LINK_USER) {
        Ok(token) => session_cookie(&token, &next),
        Err(e) => failed(e),
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// 303 to `next` with the session cookie of `token`.
fn session_cookie(token: &str, next: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"),
            ),
            (header::LOCATION, next.to_string()),
        ],
    )
        .into_response()
}

async fn logout(State(web): State<Web>, req: Request) -> Redirect {
    if let Some(t) = token(&req) {
        web.sessions.lock().await.logout(&t);
    }
    Redirect::to("/login")
}

/// `?from=YYYY-MM-DD&to=YYYY-MM-DD`; by default every day with figures.
#[derive(Deserialize)]
struct Period {
    from: Option<String>,
    to: Option<String>,
    sort: Option<String>,
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
}

fn bad_date() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "from and to: YYYY-MM-DD, e.g. 2026-11-02",
    )
        .into_response()
}

/// The figures' input of `scope` and the period asked for (or all there
/// is, in the whole city).
async fn period(
    web: &Web,
    p: &Period,
    scope: Scope<'_>,
) -> Result<(AreaInput<DaySummary>, String, String), Response> {
    if [&p.from, &p.to]
        .iter()
        .any(|d| d.as_deref().is_some_and(|d| !crate::aggregate::is_date(d)))
    {
        return Err(bad_date());
    }
    let from = p.from.clone().unwrap_or_else(|| "0000-01-01".into());
    let to = p.to.clone().unwrap_or_else(|| "9999-12-31".into());
    let mut store = web.store.lock().await;
    let input = store
        .area_input_of(&from, &to, scope)
        .await
        .map_err(failed)?;
    let (first, last) = if p.from.is_some() && p.to.is_some() {
        (None, None)
    } else {
        store.day_span(&from, &to).await.map_err(failed)?
    };
    let from = p.from.clone().or(first).unwrap_or(from);
    let to = p.to.clone().or(last).unwrap_or(to);
    Ok((input, from, to))
}

async fn city_page(State(web): State<Web>, Query(p): Query<Period>) -> Response {
    let (input, from, to) = match period(&web, &p, Scope::City).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let problems = match web.store.lock().await.quality(now_ms(), web.stale_ms).await {
        Ok(p) => p.len(),
        Err(e) => return failed(e),
    };
    let districts: Vec<(String, _)> = input
        .regions()
        .into_iter()
        .map(|r| (r.to_string(), area(&input, Some(r), &from, &to)))
        .collect();
    let city = area(&input, None, &from, &to);
    let svg = crate::pages::trend(&daily_trend(&input, None, &from, &to));
    Html(crate::pages::city(
        &format!("{from} – {to}"),
        &districts,
        &city,
        &svg,
        problems,
    ))
    .into_response()
}

async fn figures_api(State(web): State<Web>, Query(p): Query<Period>) -> Response {
    let (input, from, to) = match period(&web, &p, Scope::City).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let districts: Vec<_> = input
        .regions()
        .into_iter()
        .map(|r| {
            let f = area(&input, Some(r), &from, &to);
            json!({"region_code": r, "name": crate::export::district_name(r), "figures": f})
        })
        .collect();
    Json(json!({
        "from": from,
        "to": to,
        "target": crate::aggregate::TARGET,
        "city": area(&input, None, &from, &to),
        "districts": districts,
        "trend": daily_trend(&input, None, &from, &to),
    }))
    .into_response()
}

/// What a district page shows: its figures over the period, its
/// enterprises' names and flags, and the period; or the response that
/// says why not.
type District = (
    crate::aggregate::AreaFigures,
    std::collections::BTreeMap<String, crate::quality::EnterpriseNotes>,
    String,
    String,
);

async fn district_data(web: &Web, code: &str, p: &Period) -> Result<District, Response> {
    let (input, from, to) = period(web, p, Scope::Region(code)).await?;
    if !input.regions().contains(&code) {
        return Err((StatusCode::NOT_FOUND, "no enrolled gateway in this region").into_response());
    }
    let notes = web
        .store
        .lock()
        .await
        .region_notes(code, &from, &to)
        .await
        .map_err(failed)?;
    Ok((area(&input, Some(code), &from, &to), notes, from, to))
}

async fn district_page(
    State(web): State<Web>,
    Path(code): Path<String>,
    Query(p): Query<Period>,
) -> Response {
    let (f, notes, from, to) = match district_data(&web, &code, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sort = p
        .sort
        .as_deref()
        .and_then(crate::pages::Sort::parse)
        .unwrap_or(crate::pages::Sort::Uscc);
    Html(crate::pages::district(
        &code,
        &format!("{from} – {to}"),
        &f,
        &notes,
        sort,
    ))
    .into_response()
}

async fn district_api(
    State(web): State<Web>,
    Path(code): Path<String>,
    Query(p): Query<Period>,
) -> Response {
    let (f, notes, from, to) = match district_data(&web, &code, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    Json(json!({
        "region_code": code,
        "name": crate::export::district_name(&code),
        "from": from,
        "to": to,
        "figures": f,
        "enterprises": notes,
    }))
    .into_response()
}

/// The enterprise's view and its days, or the response that says why not.
async fn enterprise_data(
    web: &Web,
    uscc: &str,
) -> Result<
    (
        crate::enterprise::EnterpriseView,
        Vec<crate::aggregate::EnterpriseDay>,
    ),
    Response,
> {
    let mut store = web.store.lock().await;
    let view = match store.enterprise(uscc).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(
                (StatusCode::NOT_FOUND, "no gateway of this USCC is enrolled").into_response(),
            )
        }
        Err(e) => return Err(failed(e)),
    };
    let input = store
        .area_input_of("0000-01-01", "9999-12-31", Scope::Enterprise(uscc))
        .await
        .map_err(failed)?;
    Ok((view, enterprise_days(&input.days)))
}

async fn enterprise_page(State(web): State<Web>, Path(uscc): Path<String>) -> Response {
    match enterprise_data(&web, &uscc).await {
        Ok((view, days)) => Html(crate::pages::enterprise(&view, &days)).into_response(),
        Err(r) => r,
    }
}

async fn enterprise_api(State(web): State<Web>, Path(uscc): Path<String>) -> Response {
    match enterprise_data(&web, &uscc).await {
        Ok((view, days)) => {
            let days: Vec<_> = days
                .iter()
                .map(|d| {
                    json!({
                        "date": d.date,
                        "gateways": d.gateways,
                        "cnc_rate_verified": d.figures.cnc_rate_verified,
                        "cnc_rate_declared": d.figures.cnc_rate_declared,
                        "networking_rate": d.figures.networking_rate,
                        "nc_time_share": d.figures.nc_time_share,
                    })
                })
                .collect();
            Json(json!({"enterprise": view, "days": days})).into_response()
        }
        Err(r) => r,
    }
}

async fn quality_page(State(web): State<Web>) -> Response {
    match web.store.lock().await.quality(now_ms(), web.stale_ms).await {
        Ok(p) => Html(crate::pages::quality(&p)).into_response(),
        Err(e) => failed(e),
    }
}

async fn quality_api(State(web): State<Web>) -> Response {
    match web.store.lock().await.quality(now_ms(), web.stale_ms).await {
        Ok(p) => Json(json!({"problems": p})).into_response(),
        Err(e) => failed(e),
    }
}
