//! `GET /metrics`, and the layer that counts and times every HTTP request.
//!
//! A scrape renders the process's counters and histograms (the recorder), then the gauges it
//! computes now from this server's store and worker registry: jobs by state, the oldest dead
//! job's age, paused queues, circuit breakers (their state and the store's count of their
//! transitions), polling, workers by state, the PostgreSQL pool or the embedded
//! store's memory against its budget, the `process_*` metrics and the build. Those gauges are written
//! here rather than kept in the recorder, so they describe this server only (even with several
//! servers in one process), and a queue that is gone simply stops being exported instead of
//! keeping its last value forever.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dray_core::JobState;
use dray_runtime::Clock;
use dray_store::Store;

use super::names::*;
use crate::app::App;

/// The Prometheus text format's media type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The route label of a request no route matched (answered by the fallback).
const ROUTE_UNMATCHED: &str = "unmatched";

/// Counts and times one request under its route template. Lives inside the router, after
/// routing, so the matched route is known; requests no route matched have no template and count
/// as `unmatched`, so a scan of random paths adds no series.
pub(super) async fn track_request(request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => ROUTE_UNMATCHED.to_owned(),
    };
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_str().to_owned();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method).record(seconds);
    response
}

/// Methods other than the standard ones share one label: the method is the client's choice.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// `GET /metrics`: always 200 while the process serves, so Prometheus's `up` means "the process
/// answers". When the store cannot list its queues the per-queue gauges are left out of that
/// scrape (and a warning is logged), which an `absent()` alert can catch.
pub(super) async fn metrics_get(State(app): State<App>) -> Response {
    // The gauges first: their store call is then in this scrape's `dray_store_call_seconds`.
    let mut gauge_text = String::new();
    gauges(&app, &mut gauge_text).await;
    let mut body = super::recorder::handle().map(|handle| handle.render()).unwrap_or_default();
    body.push_str(&gauge_text);
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response()
}

/// What the gauges say about one `queue` label (several queues when folded into `_other`).
#[derive(Debug, Default)]
struct QueueGauges {
    counts: [u64; JobState::ALL.len()],
    dead_oldest_age_s: f64,
    paused: bool,
    /// Summed over folded queues; `None` when no queue of the label has the limit.
    concurrency_max: Option<u64>,
    rate_per_s: Option<f64>,
    polling: usize,
    last_poll_unix_s: f64,
    /// The breaker's gauge value (for _other: the highest), when a queue has a breaker.
    breaker_state: Option<u8>,
    /// Transitions into each breaker state, by `BreakerState::index` (for _other: summed).
    breaker_transitions: [u64; 3],
    /// Seconds left of a back-off after a reported downstream rate limit (for _other: the most).
    backoff_s: f64,
}

/// Appends the gauges computed at scrape time.
async fn gauges(app: &App, out: &mut String) {
    let mut queues: BTreeMap<Arc<str>, QueueGauges> = BTreeMap::new();
    let listed = app.store.queue_list().await;
    let now = app.clock.now();
    match &listed {
        Ok(list) => {
            for stats in list {
                let label = app.observe.queue_label(stats.config.name.as_str());
                let g = queues.entry(label).or_default();
                for (sum, n) in g.counts.iter_mut().zip(stats.counts) {
                    *sum += n;
                }
                if let Some(at) = stats.oldest_dead_at {
                    g.dead_oldest_age_s = g.dead_oldest_age_s.max(now.ms_since(at) as f64 / 1000.0);
                }
                g.paused |= stats.config.paused;
                if let Some(until) = stats.backoff_until.filter(|until| *until > now) {
                    g.backoff_s = g.backoff_s.max(until.ms_since(now) as f64 / 1000.0);
                }
                let limits = &stats.config.limits;
                if let Some(max) = limits.concurrency_max {
                    g.concurrency_max = Some(g.concurrency_max.unwrap_or(0) + u64::from(max));
                }
                if let Some(rate) = limits.rate {
                    let per_s = f64::from(rate.limit) * 1000.0 / rate.per_ms as f64;
                    g.rate_per_s = Some(g.rate_per_s.unwrap_or(0.0) + per_s);
                }
                if let (Some(policy), Some(breaker)) = (&stats.config.breaker, &stats.breaker) {
                    let view = breaker.view(policy, now);
                    g.breaker_state = g.breaker_state.max(Some(view.state.gauge()));
                    for (sum, n) in g.breaker_transitions.iter_mut().zip(view.transitions) {
                        *sum += n;
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list the queues; leaving out the per-queue gauges"),
    }
    for polled in app.workers.by_queue() {
        let g = queues.entry(app.observe.queue_label(polled.queue.as_str())).or_default();
        g.polling += polled.polling;
        g.last_poll_unix_s = g.last_poll_unix_s.max(polled.last_poll_unix_s);
    }

    if listed.is_ok() {
        family(out, QUEUE_JOBS, "Jobs in the queue by state, from the store at scrape time.");
        for (queue, g) in &queues {
            for state in JobState::ALL {
                sample(out, QUEUE_JOBS, &[("queue", queue), ("state", state.as_str())], g.counts[state.index()]);
            }
        }
        family(
            out,
            QUEUE_DEAD_OLDEST_AGE_SECONDS,
            "Seconds since the longest-dead job in the queue died; 0 when none is dead.",
        );
        for (queue, g) in &queues {
            sample(out, QUEUE_DEAD_OLDEST_AGE_SECONDS, &[("queue", queue)], g.dead_oldest_age_s);
        }
        family(out, QUEUE_PAUSED, "1 when the queue is paused (for _other: when any folded queue is).");
        for (queue, g) in &queues {
            sample(out, QUEUE_PAUSED, &[("queue", queue)], u8::from(g.paused));
        }
        family(
            out,
            QUEUE_CONCURRENCY_MAX,
            "The queue's concurrency_max (for _other: the sum); left out for queues without one.",
        );
        for (queue, g) in &queues {
            if let Some(max) = g.concurrency_max {
                sample(out, QUEUE_CONCURRENCY_MAX, &[("queue", queue)], max);
            }
        }
        family(
            out,
            QUEUE_RATE_LIMIT_PER_SECOND,
            "The queue's rate in leases per second (for _other: the sum); left out for queues without one.",
        );
        for (queue, g) in &queues {
            if let Some(per_s) = g.rate_per_s {
                sample(out, QUEUE_RATE_LIMIT_PER_SECOND, &[("queue", queue)], per_s);
            }
        }
        family(
            out,
            QUEUE_BREAKER_STATE,
            "The queue's circuit breaker: 0 closed, 1 half-open, 2 open (for _other: the highest); only queues with one.",
        );
        for (queue, g) in &queues {
            if let Some(state) = g.breaker_state {
                sample(out, QUEUE_BREAKER_STATE, &[("queue", queue)], state);
            }
        }
        family_of(
            out,
            QUEUE_BREAKER_TRANSITIONS_TOTAL,
            "Transitions of the queue's circuit breaker into the state `to`, as the store counts them (every node reports the same).",
            "counter",
        );
        for (queue, g) in queues.iter().filter(|(_, g)| g.breaker_state.is_some()) {
            for to in dray_core::BreakerState::ALL {
                let n = g.breaker_transitions[to.index()];
                sample(out, QUEUE_BREAKER_TRANSITIONS_TOTAL, &[("queue", queue), ("to", to.as_str())], n);
            }
        }
        family(
            out,
            QUEUE_BACKOFF_SECONDS,
            "Seconds until the queue leases again after a worker reported a downstream rate limit (0: not backing off; for _other: the most).",
        );
        for (queue, g) in &queues {
            sample(out, QUEUE_BACKOFF_SECONDS, &[("queue", queue)], g.backoff_s);
        }
    }
    if !queues.is_empty() {
        family(
            out,
            QUEUE_LAST_POLL_TIMESTAMP_SECONDS,
            "Unix time a worker last asked this node for the queue (now while one waits); 0 if never.",
        );
        for (queue, g) in &queues {
            sample(out, QUEUE_LAST_POLL_TIMESTAMP_SECONDS, &[("queue", queue)], g.last_poll_unix_s);
        }
        family(out, WORKERS_POLLING, "Lease requests (long-polls included) in progress on this node for the queue.");
        for (queue, g) in &queues {
            sample(out, WORKERS_POLLING, &[("queue", queue)], g.polling);
        }
    }

    if let Some(pool) = app.store.pool_status() {
        family(out, STORE_POOL_CONNECTIONS, "PostgreSQL connections of this node's pool, in use or idle.");
        sample(out, STORE_POOL_CONNECTIONS, &[("state", "in_use")], pool.in_use);
        sample(out, STORE_POOL_CONNECTIONS, &[("state", "idle")], pool.idle);
        family(out, STORE_POOL_CONNECTIONS_MAX, "The most connections this node's PostgreSQL pool opens.");
        sample(out, STORE_POOL_CONNECTIONS_MAX, &[], pool.size_max);
    }

    match app.store.schedule_list().await {
        Ok(schedules) => {
            family(
                out,
                SCHEDULE_NEXT_TICK_TIMESTAMP_SECONDS,
                "Unix time of the schedule's next tick not yet handled; left out while paused or when it fires no more.",
            );
            for s in schedules.iter().filter(|s| !s.spec.paused) {
                if let Some(at) = s.next_at {
                    sample(
                        out,
                        SCHEDULE_NEXT_TICK_TIMESTAMP_SECONDS,
                        &[("schedule", s.spec.name.as_str())],
                        at.0 as f64 / 1000.0,
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list the schedules; leaving out their gauge"),
    }

    let workers = app.workers.count();
    family(out, WORKERS, "Workers this node knows, by state: busy (holding a lease it handed out) or idle.");
    sample(out, WORKERS, &[("state", "busy")], workers.busy);
    sample(out, WORKERS, &[("state", "idle")], workers.idle);

    if let Some((used, budget)) = app.store.memory() {
        family(out, MEMORY_USED_BYTES, "Bytes of job data the embedded store holds in memory (estimated high).");
        sample(out, MEMORY_USED_BYTES, &[], used);
        family(out, MEMORY_BUDGET_BYTES, "The embedded store's memory budget: inserts past it are refused with 503.");
        sample(out, MEMORY_BUDGET_BYTES, &[], budget);
    }

    if let Some(process) = super::process::Process::read() {
        process.render(out);
    }

    family(out, BUILD_INFO, "Always 1; the labels tell the version and the store this server runs on.");
    sample(out, BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION")), ("store", app.store.kind())], 1);
}

/// The `# HELP` and `# TYPE` lines of a gauge.
fn family(out: &mut String, name: &str, help: &str) {
    family_of(out, name, help, "gauge");
}

/// The `# HELP` and `# TYPE` lines of a family of type `kind`.
fn family_of(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{k="v",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The text format's escapes in a label value: backslash, double quote and line feed. Queue
/// names cannot hold any of them today; the format must not depend on that.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_label_values() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\"y\\z\nw"), ("b", "ok")], 2.5);
        sample(&mut out, "n", &[], 1);
        assert_eq!(out, "m{a=\"x\\\"y\\\\z\\nw\",b=\"ok\"} 2.5\nn 1\n");
    }

    #[test]
    fn unusual_methods_share_a_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
