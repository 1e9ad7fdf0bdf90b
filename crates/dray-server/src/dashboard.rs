//! The web dashboard served at `/`: static assets embedded in the binary, and a live stream of
//! snapshots over server-sent events.
//!
//! The pages are hand-written HTML, CSS and JavaScript modules (`assets/`), compiled into the
//! binary with `include_bytes!`: no build step, no network, nothing to install next to the
//! binary. They read and act through the public `/v1` API like any other client; the only route
//! of their own is `GET /dashboard/events`: the throughput history of the last minutes, then one
//! snapshot a second of what the overview shows, computed once per second for every open stream.
//!
//! With `--auth required` the static files stay open (they hold no data) and everything else
//! needs a token: the page signs in through `POST /dashboard/login` (`login.rs`, `assets/login.js`),
//! which keeps the token in an HttpOnly cookie the route layer accepts (docs/security.md).
//!
//! This module never changes a job: every action goes through the `/v1` routes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dray_api::{QueueList, timestamp_string};
use dray_core::JobState;
use dray_runtime::Clock;
use dray_store::Store;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::app::App;
use crate::observe::QueueActivity;
use crate::problem::ApiError;
use crate::workers::WorkerState;

/// Between two snapshots on the live stream.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Live streams open at once, over all clients. A stream costs a channel receiver and the write
/// of the shared snapshot's bytes once a second (the snapshot is computed once per tick for all
/// of them), so the bound is about file descriptors, not store load.
pub(crate) const STREAMS_MAX: usize = 1_024;
/// Points of throughput history kept (one per tick): five minutes.
pub(crate) const HISTORY_POINTS_MAX: usize = 300;
/// Queues per history point (the first by name); the overview shows the rest without history.
pub(crate) const HISTORY_QUEUES_MAX: usize = 100;

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
    asset!("schedules.js", JS),
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
    let live = Arc::new(Live::new());
    router
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/dashboard/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
        .route("/dashboard/events", get(move |State(app): State<App>| events(app, live.clone())))
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

/// The live view shared by every stream of one server: one ticker computes a snapshot a second
/// while anyone watches and hands the same bytes to every stream, and keeps the throughput
/// history that a stream receives first, so a reloaded page draws its charts at once.
struct Live {
    /// The latest snapshot; `None` before the first. Streams wait on it.
    latest: watch::Sender<Option<Arc<Shot>>>,
    /// One point per tick, oldest first, at most [`HISTORY_POINTS_MAX`], each already JSON.
    history: Mutex<VecDeque<Arc<str>>>,
    /// The ticker runs from the first stream on until the server closes.
    ticker: std::sync::Once,
    streams: Arc<Semaphore>,
}

/// One snapshot, serialized once for every stream.
struct Shot {
    at_ms: i64,
    json: String,
}

impl Live {
    fn new() -> Live {
        Live {
            latest: watch::Sender::new(None),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS_MAX)),
            ticker: std::sync::Once::new(),
            streams: Arc::new(Semaphore::new(STREAMS_MAX)),
        }
    }

    fn history_push(&self, point: Arc<str>) {
        let mut history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if history.len() >= HISTORY_POINTS_MAX {
            history.pop_front();
        }
        history.push_back(point);
    }

    /// The `history` event's data: `{"interval_ms": 1000, "points": [...]}`.
    fn history_json(&self) -> String {
        let history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = format!(r#"{{"interval_ms":{},"points":["#, SNAPSHOT_INTERVAL.as_millis());
        for (i, point) in history.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(point);
        }
        out.push_str("]}");
        out
    }

    /// Starts the ticker once (it needs a runtime: call from a handler).
    fn ensure_ticking(self: &Arc<Live>, app: &App) {
        self.ticker.call_once(|| {
            tokio::spawn(tick(app.clone(), self.clone()));
        });
    }
}

/// Once a second until the server closes: a full snapshot while a stream is open, else only the
/// history point from this node's counters (no store call when nobody watches). On closing it
/// wakes every stream, which then ends.
async fn tick(app: App, live: Arc<Live>) {
    let mut interval = tokio::time::interval(SNAPSHOT_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if app.waiters.is_closing() {
            break;
        }
        let now = app.clock.now();
        if live.latest.receiver_count() > 0 {
            let (snapshot, point) = snapshot(&app).await;
            live.history_push(point.to_string().into());
            let shot = Shot { at_ms: now.as_millis(), json: snapshot.to_string() };
            live.latest.send_replace(Some(Arc::new(shot)));
        } else {
            let activity = app.observe.activity();
            live.history_push(history_point(now.as_millis(), &activity, None).to_string().into());
        }
    }
    live.latest.send_modify(|_| {});
}

/// `GET /dashboard/events`: a `history` event, then a `snapshot` event now (when a fresh one is
/// there) and every second after, until the client goes away or the server shuts down (within a
/// second of it, so graceful shutdown is not held up).
async fn events(app: App, live: Arc<Live>) -> Result<Response, ApiError> {
    let Ok(permit) = live.streams.clone().try_acquire_owned() else {
        return Err(ApiError::not_ready(&format!(
            "too many live dashboard streams are open (at most {STREAMS_MAX}); close a dashboard tab"
        )));
    };
    let receiver = live.latest.subscribe();
    live.ensure_ticking(&app);
    let sse = Sse::new(stream(app, live, receiver, permit)).keep_alive(KeepAlive::default());
    Ok(([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], sse).into_response())
}

/// One client's stream. It only ever sends the newest snapshot: a client that reads slowly skips
/// the ones it missed instead of queueing them, so it holds up neither the others nor memory.
fn stream(
    app: App,
    live: Arc<Live>,
    mut latest: watch::Receiver<Option<Arc<Shot>>>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let history = Event::default().event("history").data(live.history_json());
    // The latest snapshot is sent at once only if it is fresh: the ticker does not query the
    // store while nobody watches, so an old one may be minutes stale.
    let now_ms = app.clock.now().as_millis();
    let fresh = latest
        .borrow_and_update()
        .clone()
        .filter(|shot| now_ms.saturating_sub(shot.at_ms) <= 2 * SNAPSHOT_INTERVAL.as_millis() as i64);
    let first = futures_util::stream::iter(
        std::iter::once(history).chain(fresh.map(|shot| Event::default().event("snapshot").data(&shot.json))).map(Ok),
    );
    // The stream keeps the waiters (to see the server closing), not the store.
    let waiters = app.waiters.clone();
    drop(app);
    let rest = futures_util::stream::unfold((waiters, latest, permit), |(waiters, mut latest, permit)| async move {
        loop {
            if waiters.is_closing() {
                return None;
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return None },
                // Sees the server closing even if the ticker is gone.
                () = tokio::time::sleep(SNAPSHOT_INTERVAL) => continue,
            }
            if waiters.is_closing() {
                return None;
            }
            let shot = latest.borrow_and_update().clone();
            if let Some(shot) = shot {
                let event = Event::default().event("snapshot").data(&shot.json);
                return Some((Ok(event), (waiters, latest, permit)));
            }
        }
    });
    first.chain(rest)
}

/// One point of throughput history: per queue (the first [`HISTORY_QUEUES_MAX`] by name), this
/// node's totals of enqueued, completed and failed jobs, and the jobs waiting (available,
/// scheduled, retrying) from the store, `null` when it was not asked.
fn history_point(at_ms: i64, activity: &[QueueActivity], waiting: Option<&[(String, u64)]>) -> serde_json::Value {
    let mut queues = serde_json::Map::new();
    for a in activity {
        queues.insert(
            a.queue.clone(),
            json!({"enqueued": a.enqueued, "completed": a.completed, "failed": a.failed, "waiting": null}),
        );
    }
    for (queue, n) in waiting.unwrap_or_default() {
        let entry = queues
            .entry(queue.clone())
            .or_insert_with(|| json!({"enqueued": 0, "completed": 0, "failed": 0, "waiting": null}));
        entry["waiting"] = json!(n);
    }
    // serde_json's map is sorted by key (no `preserve_order`): keep the first by name.
    let queues: serde_json::Map<String, serde_json::Value> = queues.into_iter().take(HISTORY_QUEUES_MAX).collect();
    json!({"at_ms": at_ms, "queues": queues})
}

/// What the live pages show: every queue with its counts, this node's activity per queue, and
/// the workers of this node's registry; and the history point of the same moment. A store error
/// is reported in the snapshot (`problem`), and the stream goes on: the next second may be fine.
async fn snapshot(app: &App) -> (serde_json::Value, serde_json::Value) {
    let now = app.clock.now();
    let queues = app.store.queue_list().await;
    let activity_list = app.observe.activity();
    let activity = serde_json::to_value(&activity_list).unwrap_or_default();
    let seen = app.workers.list();
    let (mut busy, mut idle) = (0, 0);
    let workers: Vec<serde_json::Value> = seen
        .into_iter()
        .map(|w| {
            let state = w.state();
            match state {
                WorkerState::Busy => busy += 1,
                WorkerState::Idle => idle += 1,
            }
            json!({
                "id": w.id.as_str(),
                "queues": w.queues.iter().map(|q| q.as_str()).collect::<Vec<_>>(),
                "last_seen": timestamp_string(w.last_seen),
                "polling": w.polling,
                "state": state.as_str(),
                // Leases this node handed it whose deadline, as this node knows it, is ahead.
                "leases": w.held,
                "leased_total": w.leased_total,
                // Recorded as handed out and not known to be over; `GET /v1/workers` checks
                // them against the store.
                "leases_recent": w.leases.len(),
            })
        })
        .collect();
    let (queues, problem, waiting) = match queues {
        Ok(mut stats) => {
            stats.sort_by(|a, b| a.config.name.cmp(&b.config.name));
            let waiting: Vec<(String, u64)> = stats
                .iter()
                .take(HISTORY_QUEUES_MAX)
                .map(|q| {
                    let n = [JobState::Available, JobState::Scheduled, JobState::Retrying]
                        .iter()
                        .map(|s| q.counts[s.index()])
                        .sum();
                    (q.config.name.to_string(), n)
                })
                .collect();
            (serde_json::to_value(QueueList::of(&stats, now)).unwrap_or_default()["queues"].take(), None, Some(waiting))
        }
        Err(e) => {
            tracing::warn!(error = %e, "dashboard snapshot: cannot list queues");
            (serde_json::Value::Null, serde_json::to_value(ApiError::from(e).problem()).ok(), None)
        }
    };
    let point = history_point(now.as_millis(), &activity_list, waiting.as_deref());
    let snapshot = json!({
        "at": timestamp_string(now),
        "at_ms": now.as_millis(),
        "queues": queues,
        "activity": activity,
        "workers": workers,
        "workers_busy": busy,
        "workers_idle": idle,
        "problem": problem,
    });
    (snapshot, point)
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
