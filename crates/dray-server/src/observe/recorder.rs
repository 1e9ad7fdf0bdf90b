//! The process's Prometheus recorder: installed once, with explicit buckets for every histogram
//! and a description (the `# HELP` line) for every counter and histogram.
//!
//! The `metrics` facade has one global recorder per process, so counters and histograms are per
//! process: several servers started in one process (tests) add into the same series. The gauges
//! computed at scrape time are not kept here (see `scrape.rs`), so those stay per server.
//!
//! Without the exporter's HTTP listener nothing drains histogram samples between scrapes, and they
//! would pile up in memory on a server nobody scrapes: a thread does the exporter's upkeep every
//! few seconds instead.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::names::*;

/// Job wait and run times: a millisecond to an hour.
const JOB_SECONDS_BUCKETS: [f64; 19] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];
/// HTTP requests and store calls: half a millisecond to 30 s (a long-poll waits up to its limit).
const CALL_SECONDS_BUCKETS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Disk writes and fsyncs: 50 µs (a write to the page cache) to a second (a disk in trouble).
const DISK_SECONDS_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Log frames per fsync: powers of two up to a large group commit.
const GROUP_COMMIT_BUCKETS: [f64; 13] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// Every histogram and its buckets. One left out would render as a summary, which cannot be
/// aggregated across nodes.
/// How late a schedule's tick fired: from a tenth of a second (the maintenance interval) to an
/// hour (a misfire's grace is at most a day; later ticks are misfires, counted apart).
const LATENESS_SECONDS_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

const HISTOGRAMS: [(&str, &[f64]); 8] = [
    (JOB_WAIT_SECONDS, &JOB_SECONDS_BUCKETS),
    (JOB_RUN_SECONDS, &JOB_SECONDS_BUCKETS),
    (HTTP_REQUEST_DURATION_SECONDS, &CALL_SECONDS_BUCKETS),
    (STORE_CALL_SECONDS, &CALL_SECONDS_BUCKETS),
    (STORE_APPEND_SECONDS, &DISK_SECONDS_BUCKETS),
    (STORE_FSYNC_SECONDS, &DISK_SECONDS_BUCKETS),
    (STORE_GROUP_COMMIT_OPERATIONS, &GROUP_COMMIT_BUCKETS),
    (SCHEDULE_TICK_LATENESS_SECONDS, &LATENESS_SECONDS_BUCKETS),
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The recorder's handle, installing the recorder on first use. `None` when the process already
/// had another recorder (a program embedding the server): then the counters and histograms go
/// there and `/metrics` shows only what it computes at scrape time.
pub(super) fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in HISTOGRAMS {
        builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets) {
            Ok(builder) => builder,
            // Only for an empty list of buckets, which the constants above are not.
            Err(e) => unreachable!("buckets of {name}: {e}"),
        };
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(
            error = %e,
            "another metrics recorder is installed in this process; /metrics shows only the gauges computed at scrape time"
        );
        return None;
    }
    describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("dray-metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            upkeep.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded only when scraped");
    }
    Some(handle)
}

/// The `# HELP` text of every metric the recorder holds (the scrape-time gauges carry their own).
fn describe() {
    describe_counter!(JOBS_ENQUEUED_TOTAL, "New jobs accepted by this node (idempotent duplicates are not counted).");
    describe_counter!(JOBS_LEASED_TOTAL, "Job deliveries by this node: attempts started.");
    describe_counter!(JOBS_COMPLETED_TOTAL, "Attempts acknowledged as completed on this node.");
    describe_counter!(JOBS_FAILED_TOTAL, "Attempts failed by their worker on this node (retried, dead or cancelled).");
    describe_counter!(
        LEASE_EXPIRIES_TOTAL,
        "Leases that ran out, found by this node's maintenance (each a failed attempt)."
    );
    describe_counter!(
        JOBS_DEAD_TOTAL,
        "Jobs moved to the dead-letter queue by this node, by a failure or a lease expiry."
    );
    describe_counter!(JOBS_REDRIVEN_TOTAL, "Dead jobs redriven through this node.");
    describe_counter!(SCHEDULE_TICKS_TOTAL, "Jobs enqueued by the schedule's ticks (and triggers) on this node.");
    describe_counter!(
        SCHEDULE_MISFIRES_TOTAL,
        "Ticks of the schedule found missed (due longer ago than its misfire grace) on this node."
    );
    describe_counter!(
        SCHEDULE_TICKS_DROPPED_TOTAL,
        "Ticks that enqueued no job of their own, by reason: misfire (policy skip, merged by run_once, \
         past the run_all cap), overlap (the previous job still ran), refused (the job's queue refused it)."
    );
    describe_histogram!(
        SCHEDULE_TICK_LATENESS_SECONDS,
        "Seconds from a tick's instant to its job being enqueued, for ticks fired within their grace."
    );
    describe_counter!(JOBS_DISCARDED_TOTAL, "Dead jobs discarded through this node.");
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by route template (unmatched for unknown paths), method and status."
    );
    describe_histogram!(JOB_WAIT_SECONDS, "Time from a job becoming ready to its lease, in seconds.");
    describe_histogram!(JOB_RUN_SECONDS, "Time from a lease to its acknowledgement (complete or fail), in seconds.");
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        "Time to answer an HTTP request (up to the response head), in seconds."
    );
    describe_histogram!(
        STORE_CALL_SECONDS,
        "Duration of each store call the server made, by Store method, in seconds."
    );
    describe_histogram!(
        STORE_APPEND_SECONDS,
        "Embedded store: time to write one group commit's frames to the log, in seconds."
    );
    describe_histogram!(STORE_FSYNC_SECONDS, "Embedded store: duration of one fsync of a log segment, in seconds.");
    describe_histogram!(
        STORE_GROUP_COMMIT_OPERATIONS,
        "Embedded store: log frames (store operations) made durable by one fsync."
    );
}
