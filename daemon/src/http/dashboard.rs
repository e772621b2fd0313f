//! The dashboard (docs/dashboard.md): `POST /v1/dashboard` on the Unix socket opens a web
//! listener on 127.0.0.1 for as long as that request's NDJSON stream stays open (the client
//! going away, an idle timeout or the daemon's shutdown close it), and this file serves the
//! pages there. The socket stays the only control channel: the web listener serves read-only
//! views plus the CLI's safe actions (pause, unpause, tick now), each a POST carrying the token.
//!
//! Security: a fresh 256-bit token per listener, required on every request (in the query once,
//! then an HttpOnly SameSite=Strict cookie); a `Host` or `Origin` that is not this listener's
//! own loopback address is refused (DNS rebinding); no CORS headers; a strict CSP.

use super::error::ApiError;
use super::extract::{JsonBody, refuse_if_shutting_down, registered_key};
use super::stream::ndjson_body;
use crate::http::dashboard_html as html;
use crate::notify::store::TickFilter;
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Path as AxPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use megaplan_cloud_api::ErrorCode;
use megaplan_cloud_api::wire::{DashboardRequest, Frame, PauseRequest};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// The cookie holding the token after the first request.
const COOKIE: &str = "megaplan_dashboard";
/// The listener closes after this long with no request and no page open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often the opening stream is written to: a client that went away is noticed by the
/// failed write, so the listener never outlives its `megaplan-cloudctl dashboard`.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Open pages are re-rendered this often even without a tick, so relative times ("next tick in
/// 3m") and pauses set from the CLI stay current. Ticks and dashboard actions push at once.
const REFRESH: Duration = Duration::from_secs(30);
/// Event streams one listener serves at once (each re-renders on every tick): a bound, not a
/// number a person reaches with tabs.
const MAX_OPEN_PAGES: usize = 32;
/// The actor recorded for actions taken on the page.
pub const ACTOR: &str = "dashboard";

/// One open dashboard listener.
pub struct Dash {
    app: Arc<AppState>,
    token: String,
    port: u16,
    /// When the last request came (for the idle timeout).
    last_seen: std::sync::Mutex<Instant>,
    /// Event streams open now: a page showing is not idle.
    open_pages: AtomicUsize,
    /// Rung after an action taken on the page, so every open page redraws.
    changed: broadcast::Sender<()>,
    stop: CancellationToken,
}

impl Dash {
    fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle(&self) -> bool {
        self.open_pages.load(Ordering::SeqCst) == 0
            && self
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                >= IDLE_TIMEOUT
    }

    /// The `Host` values this listener answers to.
    fn own_host(&self, host: &str) -> bool {
        host == format!("127.0.0.1:{}", self.port) || host == format!("localhost:{}", self.port)
    }

    fn own_origin(&self, origin: &str) -> bool {
        origin
            .strip_prefix("http://")
            .is_some_and(|h| self.own_host(h))
    }

    fn token_ok(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.token.as_bytes())
    }
}

/// Compare without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /v1/dashboard`: bind 127.0.0.1:`port`, answer a stream whose first stdout frame is
/// the URL with the token, and serve until the stream's reader goes away.
pub async fn open(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<DashboardRequest>,
) -> Result<Response, ApiError> {
    refuse_if_shutting_down(&state)?;
    // Loopback only, by construction: no setting or request can widen it.
    let asked = SocketAddr::from((Ipv4Addr::LOCALHOST, req.port));
    let listener = tokio::net::TcpListener::bind(asked).await.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgs,
            format!(
                "cannot listen on {asked}: {e}; pass another --port, or --port 0 for any free one"
            ),
        )
        .field("port")
    })?;
    let local = listener.local_addr().map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the dashboard listener has no address: {e}"),
        )
    })?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let (changed, _) = broadcast::channel(16);
    let dash = Arc::new(Dash {
        app: state.clone(),
        token,
        port: local.port(),
        last_seen: std::sync::Mutex::new(Instant::now()),
        open_pages: AtomicUsize::new(0),
        changed,
        stop: state.shutdown().child_token(),
    });
    let url = format!("http://{local}/?token={}", dash.token);
    let web = router(dash.clone());
    let stop = dash.stop.clone();
    let serving = tokio::spawn(async move {
        let done = stop.clone();
        if let Err(e) = axum::serve(listener, web)
            .with_graceful_shutdown(async move { done.cancelled().await })
            .await
        {
            tracing::warn!(error = %e, "dashboard listener failed");
        }
    });
    tracing::info!(address = %local, "dashboard listening");
    let (tx, rx) = mpsc::channel::<Frame>(8);
    tokio::spawn(async move {
        let _ = tx
            .send(Frame::Stdout {
                data: format!("{url}\n"),
            })
            .await;
        let _ = tx
            .send(Frame::Stderr {
                data: format!(
                    "dashboard: serving {local} until Ctrl-C (or {} idle minutes)\n",
                    IDLE_TIMEOUT.as_secs() / 60
                ),
            })
            .await;
        let mut beat = tokio::time::interval(HEARTBEAT);
        let why = loop {
            tokio::select! {
                _ = tx.closed() => break None,
                _ = dash.stop.cancelled() => break None,
                _ = beat.tick() => {
                    if dash.idle() {
                        break Some("closed after the idle timeout with no page open");
                    }
                    // An empty stderr frame: prints nothing, but a write to a client that went
                    // away fails, which ends this stream and with it the listener.
                    if tx.send(Frame::Stderr { data: String::new() }).await.is_err() {
                        break None;
                    }
                }
            }
        };
        dash.stop.cancel();
        let _ = serving.await;
        tracing::info!(address = %local, "dashboard closed");
        if let Some(why) = why {
            let _ = tx
                .send(Frame::Result {
                    payload: serde_json::json!({"success": true, "closed": why}),
                    exit_code: 0,
                })
                .await;
        }
    });
    let gone = vec![Frame::Stderr {
        data: "dashboard: megaplan-cloudd is shutting down; the dashboard closes\n".to_string(),
    }];
    Ok(ndjson_body(rx, state.shutdown().clone(), gone))
}

fn router(dash: Arc<Dash>) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/chain/{key}", get(chain_page))
        .route("/chain/{key}/pause", post(pause))
        .route("/chain/{key}/unpause", post(unpause))
        .route("/chain/{key}/unquarantine", post(unquarantine))
        .route("/chain/{key}/tick", post(tick_now))
        .route("/events", get(events))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::from_fn_with_state(dash.clone(), guard))
        .with_state(dash)
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{why}\n"),
    )
        .into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// Every request: its own Host and Origin, then the token (cookie or query). A valid token in
/// the query is moved into the cookie and the address bar cleaned by a redirect.
async fn guard(State(dash): State<Arc<Dash>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !dash.own_host(host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: this dashboard answers only to its own 127.0.0.1 address",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|o| dash.own_origin(o))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: a request from another origin",
        );
    }
    let from_query = query_token(req.uri().query());
    let from_cookie = cookie_token(headers);
    let ok = from_cookie.as_deref().is_some_and(|t| dash.token_ok(t))
        || from_query.as_deref().is_some_and(|t| dash.token_ok(t));
    if !ok {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden: open the link `megaplan-cloudctl dashboard` printed (it carries the access token)",
        );
    }
    dash.touch();
    // A valid token in the query is moved into the cookie on the same answer (not by a
    // redirect: a redirect chain started from another site, such as the file the client opens
    // the browser with, would not carry a SameSite=Strict cookie). The page's script then
    // removes the token from the address bar.
    let set_cookie = req.method() == axum::http::Method::GET
        && from_query.as_deref().is_some_and(|t| dash.token_ok(t));
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if set_cookie
        && let Ok(cookie) = HeaderValue::from_str(&format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            dash.token
        ))
    {
        h.insert(header::SET_COOKIE, cookie);
    }
    resp
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        html::APP_JS,
    )
        .into_response()
}

async fn style_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        html::STYLE_CSS,
    )
        .into_response()
}

fn page(markup: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn error_page(e: ApiError) -> Response {
    let status = e.status;
    (status, page(html::error(&e.body.message))).into_response()
}

/// The fleet view's live part.
async fn fleet_part(dash: &Dash) -> Result<maud::Markup, ApiError> {
    let fleet = crate::http::fleet::build(&dash.app).await?;
    // The runner's liveness as the last tick of each probed it (not a field of the fleet rows).
    let last = crate::notify::store::last_tick_per_key(dash.app.store()).await?;
    let runners: html::Runners = last
        .into_iter()
        .filter_map(|(k, t)| t.report.runner.status.map(|s| (k, s.as_str())))
        .collect();
    Ok(html::fleet(&fleet, &runners))
}

/// A chain's live part: its fleet row, ticks, notifications and explanation.
async fn chain_part(dash: &Dash, key: &str) -> Result<maud::Markup, ApiError> {
    let app = &dash.app;
    let fleet = crate::http::fleet::build(app).await?;
    let row = fleet.registrations.into_iter().find(|r| r.key == key);
    let filter = TickFilter {
        key: Some(key.to_string()),
        ..Default::default()
    };
    let mut ticks = crate::notify::store::list_ticks(app.store(), &filter, 60).await?;
    ticks.reverse();
    let explain = ticks.last().map(|rec| {
        let mut e = crate::notify::explain::explain(rec);
        if let Some(b) = app.scheduler().backoff.get(key) {
            crate::notify::explain::with_backoff(&mut e, &b.to_wire());
        }
        e
    });
    let breakers = app.notifier().sink_breakers();
    let notes = crate::notify::store::list_outbox(app.store(), Some(key), 10, &breakers).await?;
    Ok(html::chain(html::Chain {
        key,
        row: row.as_ref(),
        ticks: &ticks,
        notifications: &notes,
        explain: explain.as_ref(),
        token: &dash.token,
    }))
}

async fn fleet_page(State(dash): State<Arc<Dash>>) -> Response {
    match fleet_part(&dash).await {
        Ok(part) => page(html::layout("fleet", "/events", part)),
        Err(e) => error_page(e),
    }
}

async fn chain_page(State(dash): State<Arc<Dash>>, AxPath(k): AxPath<String>) -> Response {
    let key = match registered_key(&dash.app, &k).await {
        Ok(key) => key,
        Err(e) => return error_page(e),
    };
    match chain_part(&dash, &key).await {
        Ok(part) => page(html::layout(
            &format!("chain {key}"),
            &format!("/events?chain={key}"),
            part,
        )),
        Err(e) => error_page(e),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    chain: Option<String>,
}

/// Counts an open page for as long as its event stream lives.
struct OpenPage(Arc<Dash>);

impl Drop for OpenPage {
    fn drop(&mut self) {
        self.0.open_pages.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// `GET /events`: Server-Sent Events, one `update` (the re-rendered live part) after every
/// stored tick, every action taken on the page, and every [`REFRESH`]. Ends with the listener.
async fn events(State(dash): State<Arc<Dash>>, Query(q): Query<EventsQuery>) -> Response {
    let key = match q.chain {
        Some(k) => match registered_key(&dash.app, &k).await {
            Ok(key) => Some(key),
            Err(e) => return refuse(e.status, &e.body.message),
        },
        None => None,
    };
    if dash.open_pages.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN_PAGES {
        dash.open_pages.fetch_sub(1, Ordering::SeqCst);
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard pages open on this listener; close some tabs",
        );
    }
    struct Feed {
        page: OpenPage,
        key: Option<String>,
        ticks: broadcast::Receiver<megaplan_cloud_api::wire::TickRecord>,
        changed: broadcast::Receiver<()>,
        registrations: broadcast::Receiver<String>,
        refresh: tokio::time::Interval,
    }
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.reset();
    let feed = Feed {
        key,
        ticks: dash.app.subscribe_ticks(),
        changed: dash.changed.subscribe(),
        registrations: dash.app.subscribe_changes(),
        refresh,
        page: OpenPage(dash),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let dash = feed.page.0.clone();
        tokio::select! {
            _ = dash.stop.cancelled() => return None,
            r = feed.ticks.recv() => match r {
                Ok(rec) if feed.key.as_deref().is_some_and(|k| k != rec.key) => {
                    return Some((Ok::<_, std::convert::Infallible>(Event::default().comment("")), feed));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
                _ => {}
            },
            r = feed.changed.recv() => if let Err(broadcast::error::RecvError::Closed) = r {
                return None;
            },
            // A pause, unpause, register or unregister from the CLI shows at once too.
            r = feed.registrations.recv() => match r {
                Ok(k) if feed.key.as_deref().is_some_and(|mine| mine != k) => {
                    return Some((Ok::<_, std::convert::Infallible>(Event::default().comment("")), feed));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
                _ => {}
            },
            _ = feed.refresh.tick() => {}
        }
        let part = match &feed.key {
            Some(k) => chain_part(&dash, k).await,
            None => fleet_part(&dash).await,
        };
        let body = match part {
            Ok(m) => m.into_string(),
            Err(e) => html::error(&e.body.message).into_string(),
        };
        Some((Ok(Event::default().event("update").data(body)), feed))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    reason: Option<String>,
}

/// An action needs the token in its form too: the cookie alone is what a forged
/// cross-site POST would carry. `Some(refusal)` when it is missing or wrong.
fn action_refused(dash: &Dash, form: &ActionForm) -> Option<Response> {
    (!dash.token_ok(&form.token)).then(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "forbidden: an action needs the page's token",
        )
    })
}

fn back_to(key: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, format!("/chain/{key}"))
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn pause(
    State(dash): State<Arc<Dash>>,
    AxPath(k): AxPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(r) = action_refused(&dash, &form) {
        return r;
    }
    let reason = form
        .reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.trim().to_string());
    let req = PauseRequest {
        by: ACTOR.to_string(),
        reason,
    };
    // `pause` writes its own journal line, naming who paused.
    let done = crate::http::pause::pause(State(dash.app.clone()), AxPath(k), JsonBody(req)).await;
    changed(&dash, done.map(|d| d.0.key))
}

async fn unpause(
    State(dash): State<Arc<Dash>>,
    AxPath(k): AxPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(r) = action_refused(&dash, &form) {
        return r;
    }
    let done = crate::http::pause::unpause(State(dash.app.clone()), AxPath(k)).await;
    acted(&dash, "unpaused", done.map(|d| d.0.key))
}

async fn unquarantine(
    State(dash): State<Arc<Dash>>,
    AxPath(k): AxPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(r) = action_refused(&dash, &form) {
        return r;
    }
    let done = crate::http::quarantine::unquarantine(State(dash.app.clone()), AxPath(k)).await;
    acted(&dash, "unquarantined", done.map(|d| d.0.key))
}

/// After an action on registration `key`: the journal line (actor `dashboard`), then
/// [`changed`].
fn acted(dash: &Dash, what: &str, key: Result<String, ApiError>) -> Response {
    if let Ok(key) = &key {
        tracing::info!(key = %key, by = ACTOR, "{what}");
    }
    changed(dash, key)
}

/// After a change to registration `key`: the pages told of it, and back to the chain's page;
/// or the error page.
fn changed(dash: &Dash, key: Result<String, ApiError>) -> Response {
    match key {
        Ok(key) => {
            let _ = dash.changed.send(());
            back_to(&key)
        }
        Err(e) => error_page(e),
    }
}

/// Tick now: the tick runs on the daemon's own tasks; the page learns its report from the
/// tick feed instead of waiting here.
async fn tick_now(
    State(dash): State<Arc<Dash>>,
    AxPath(k): AxPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(r) = action_refused(&dash, &form) {
        return r;
    }
    let key = match registered_key(&dash.app, &k).await {
        Ok(key) => key,
        Err(e) => return error_page(e),
    };
    tracing::info!(key = %key, by = ACTOR, "tick now");
    let app = dash.app.clone();
    let k2 = key.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::http::clouds::tick_now(State(app), AxPath(k2)).await {
            tracing::warn!(error = %e.body.message, by = ACTOR, "tick now failed");
        }
    });
    back_to(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_the_cookie_and_the_query_only_by_their_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("other=1; megaplan_dashboard=abc; x=y"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        assert_eq!(cookie_token(&HeaderMap::new()), None);
        assert_eq!(query_token(Some("a=1&token=t0k")).as_deref(), Some("t0k"));
        assert_eq!(query_token(Some("xtoken=1")), None);
        assert_eq!(query_token(None), None);
    }

    #[test]
    fn comparison_needs_the_whole_token() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"abcd"));
    }
}
