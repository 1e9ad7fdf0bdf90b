//! The web dashboard served at `/`: static assets embedded in the binary, and a live stream of
//! snapshots over server-sent events.
//!
//! The pages are hand-written HTML, CSS and JavaScript modules (`assets/`), compiled into the
//! binary with `include_bytes!`: no build step, no network, nothing to install next to the
//! binary. They read and act through the public `/v1` API like any other client; the only route
//! of their own is `GET /dashboard/events`, one snapshot a second of what the overview shows.
//!
//! With `--auth required` the static files stay open (they hold no data) and everything else
//! needs a token: the page signs in through `POST /dashboard/login` (`login.rs`, `assets/login.js`),
//! which keeps the token in an HttpOnly cookie the route layer accepts (docs/security.md).
//!
//! This module never changes a job: every action goes through the `/v1` routes.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dray_api::{QueueList, timestamp_string};
use dray_runtime::Clock;
use dray_store::Store;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::App;
use crate::problem::ApiError;

/// Between two snapshots on the live stream.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Live streams open at once. Each reads the queue list once a second (one query in PostgreSQL
/// mode), so the bound keeps forgotten browser tabs from adding up.
pub(crate) const STREAMS_MAX: usize = 32;

/// One embedded file.
struct Asset {
    /// Under `/dashboard/`.
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, bytes: include_bytes!(concat!("../assets/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("live.js", JS),
    asset!("overview.js", JS),
    asset!("queue.js", JS),
    asset!("jobs.js", JS),
    asset!("job.js", JS),
    asset!("dead.js", JS),
    asset!("workers.js", JS),
    asset!("login.js", JS),
];

/// An entity tag per asset, from its bytes: a browser revalidates (`Cache-Control: no-cache`)
/// and gets a 304 until a new binary serves different bytes under the same name.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(a.bytes))).expect("hex is a valid header"))
        .collect()
});

/// FNV-1a, 64 bits: enough to tell two versions of a file apart; not a security boundary.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Every page and script comes from this server; nothing inline, nothing from elsewhere. Job
/// payloads are user data: even if one slipped into the markup it could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn routes(router: axum::Router<App>, _app: &App) -> axum::Router<App> {
    let streams = Arc::new(Semaphore::new(STREAMS_MAX));
    router
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
        .route("/dashboard/events", get(move |State(app): State<App>| events(app, streams.clone())))
}

/// An embedded asset, or a 404 problem.
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(at) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::route_not_found(&format!("/dashboard/{name}")).into_response();
    };
    let (asset, etag) = (&ASSETS[at], &ETAGS[at]);
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag.to_str().unwrap_or_default() || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.bytes).into_response()
}

/// `GET /dashboard/events`: a `snapshot` event now and every second after, until the client goes
/// away or the server shuts down (within a second of it, so graceful shutdown is not held up).
async fn events(app: App, streams: Arc<Semaphore>) -> Result<Response, ApiError> {
    let Ok(permit) = streams.try_acquire_owned() else {
        return Err(ApiError::not_ready(&format!(
            "too many live dashboard streams are open (at most {STREAMS_MAX}); close a dashboard tab"
        )));
    };
    let sse = Sse::new(snapshots(app, permit)).keep_alive(KeepAlive::default());
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], sse).into_response())
}

fn snapshots(app: App, permit: OwnedSemaphorePermit) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut interval = tokio::time::interval(SNAPSHOT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures_util::stream::unfold((app, interval, permit), |(app, mut interval, permit)| async move {
        interval.tick().await;
        if app.waiters.is_closing() {
            return None;
        }
        let event = Event::default().event("snapshot").data(snapshot(&app).await.to_string());
        Some((Ok(event), (app, interval, permit)))
    })
}

/// What the live pages show: every queue with its counts, this node's activity per queue, and
/// the workers polling this node. A store error is reported in the snapshot (`problem`), and the
/// stream goes on: the next second may be fine.
async fn snapshot(app: &App) -> serde_json::Value {
    let now = app.clock.now();
    let queues = app.store.queue_list().await;
    let activity = serde_json::to_value(app.observe.activity()).unwrap_or_default();
    let workers: Vec<serde_json::Value> = app
        .workers
        .list()
        .into_iter()
        .map(|w| {
            json!({
                "id": w.id.as_str(),
                "queues": w.queues.iter().map(|q| q.as_str()).collect::<Vec<_>>(),
                "last_seen": timestamp_string(w.last_seen),
                "polling": w.polling,
                "leased_total": w.leased_total,
                // Recorded as handed out; `GET /v1/workers` checks which are still held.
                "leases_recent": w.leases.len(),
            })
        })
        .collect();
    let (queues, problem) = match queues {
        Ok(mut stats) => {
            stats.sort_by(|a, b| a.config.name.cmp(&b.config.name));
            (serde_json::to_value(QueueList::from(stats.as_slice())).unwrap_or_default()["queues"].take(), None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "dashboard snapshot: cannot list queues");
            (serde_json::Value::Null, serde_json::to_value(ApiError::from(e).problem()).ok())
        }
    };
    json!({
        "at": timestamp_string(now),
        "at_ms": now.as_millis(),
        "queues": queues,
        "activity": activity,
        "workers": workers,
        "problem": problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_there_once_and_index_loads_the_app() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len(), "an asset is listed twice");
        let index = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        assert!(index.contains(r#"src="/dashboard/app.js""#), "{index}");
        // Every module a script imports is served.
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let target = line.rsplit_once("from './").map(|(_, t)| t.trim_end_matches("';")).unwrap();
                assert!(names.contains(&target), "{} imports {target}, which is not served", asset.name);
            }
        }
    }

    #[test]
    fn etags_differ_when_bytes_do() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(ETAGS.len(), ASSETS.len());
    }
}
