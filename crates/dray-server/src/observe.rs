//! What the server tells operators about the work going through it: Prometheus metrics (served
//! at `/metrics`, catalogued in docs/operations.md) and a structured log event for every job
//! event it handles. Handlers and maintenance call the [`Observer`] after the store answered; it
//! counts and logs, and never changes what happens to a job. It also passes on what it hears to
//! the node's registries that depend on it: which leases ended (`workers.rs`) and which jobs
//! finished (`job_waiters.rs`, whose waiting requests then answer).
//!
//! - `names`: every metric's name.
//! - `recorder`: the process-wide Prometheus recorder (buckets, descriptions, upkeep).
//! - `scrape`: `GET /metrics`, the gauges computed at scrape time, and the HTTP request layer.
//! - `process`: the standard `process_*` metrics, from `/proc`.
//! - `recent`: the windowed latencies behind [`Observer::activity`].
//!
//! Log events (target `dray_server::observe`) carry `job_id`, `queue`, `attempt` and `lease_id`
//! as fields, so `--log-format json` makes each a JSON field: enqueue, lease and completion at
//! debug, a failed attempt at info, a dead letter and a lease expiry at warn.
//!
//! Label bound: the `queue` label takes at most `metrics_queues_max` distinct values per server,
//! first come first served; later queues share the label `_other`. Job, worker and lease ids are
//! never labels (they are log fields).

mod names;
mod process;
mod recent;
mod recorder;
mod scrape;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use axum::routing::get;
use dray_core::{JobId, JobState, LeaseId, QueueName, Timestamp, WorkerId};
use dray_runtime::{Clock, SystemClock, TickReport};
use dray_store::{Acked, Error, Inserted, LeasedJob, Ticked};
use metrics::{Counter, Histogram};

use crate::app::App;
use crate::job_waiters::JobWaiters;
use crate::workers::Workers;
pub(crate) use names::STORE_CALL_SECONDS;
use names::*;
use recent::Recent;

/// Counts and logs what happens to jobs on this node.
pub(crate) struct Observer {
    clock: SystemClock,
    /// Distinct queue labels at most; see the module docs.
    queues_max: usize,
    /// Queue name to its metrics, for the first `queues_max` queues seen.
    queues: RwLock<HashMap<Arc<str>, Arc<QueueMetrics>>>,
    /// The queues beyond the bound, together.
    other: OnceLock<Arc<QueueMetrics>>,
    redriven: Counter,
    discarded: Counter,
    /// The worker registry, told which leases ended (acks, expiries) so it knows who is busy.
    workers: OnceLock<Arc<Workers>>,
    /// The requests waiting for jobs to finish, told which jobs did.
    job_waiters: OnceLock<Arc<JobWaiters>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queues = self.queues.read().map_or(0, |q| q.len());
        f.debug_struct("Observer")
            .field("queues_max", &self.queues_max)
            .field("queues", &queues)
            .field("other", &self.other.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Observer {
    /// On its own clock, with the default label bound.
    fn default() -> Observer {
        Observer::new(SystemClock::new(), crate::Config::METRICS_QUEUES_MAX_DEFAULT as usize)
    }
}

/// One `queue` label's series, plus the node-local totals and recent latencies the dashboard
/// reads (a Prometheus counter cannot be read back).
struct QueueMetrics {
    label: Arc<str>,
    enqueued: Counter,
    leased: Counter,
    completed: Counter,
    failed: Counter,
    expiries: Counter,
    dead: Counter,
    wait: Histogram,
    run: Histogram,
    totals: Totals,
    wait_recent: Recent,
    run_recent: Recent,
}

#[derive(Default)]
struct Totals {
    enqueued: AtomicU64,
    leased: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    expired: AtomicU64,
    dead: AtomicU64,
}

impl QueueMetrics {
    /// Registers the label's counters and histograms at zero, so they are in every scrape from
    /// now on, not only after their first event.
    fn new(label: Arc<str>) -> QueueMetrics {
        let counter = |name: &'static str| metrics::counter!(name, "queue" => label.to_string());
        let histogram = |name: &'static str| metrics::histogram!(name, "queue" => label.to_string());
        QueueMetrics {
            enqueued: counter(JOBS_ENQUEUED_TOTAL),
            leased: counter(JOBS_LEASED_TOTAL),
            completed: counter(JOBS_COMPLETED_TOTAL),
            failed: counter(JOBS_FAILED_TOTAL),
            expiries: counter(LEASE_EXPIRIES_TOTAL),
            dead: counter(JOBS_DEAD_TOTAL),
            wait: histogram(JOB_WAIT_SECONDS),
            run: histogram(JOB_RUN_SECONDS),
            totals: Totals::default(),
            wait_recent: Recent::default(),
            run_recent: Recent::default(),
            label,
        }
    }

    fn add(counter: &Counter, total: &AtomicU64, n: u64) {
        counter.increment(n);
        total.fetch_add(n, Ordering::Relaxed);
    }

    /// An attempt that ended at `now` after running `ms`, failed (not completed) when `failed`.
    fn attempt_ended(&self, now: Timestamp, ms: u64, failed: bool) {
        self.run.record(ms as f64 / 1000.0);
        self.run_recent.record(now, ms);
        if failed {
            QueueMetrics::add(&self.failed, &self.totals.failed, 1);
        } else {
            QueueMetrics::add(&self.completed, &self.totals.completed, 1);
        }
    }

    fn died(&self) {
        QueueMetrics::add(&self.dead, &self.totals.dead, 1);
    }
}

impl Observer {
    /// Installs the process's metrics recorder if it is not yet (see `recorder`), so everything
    /// counted from here on is exported. `queues_max` bounds the `queue` label.
    pub fn new(clock: SystemClock, queues_max: usize) -> Observer {
        recorder::handle();
        let redriven = metrics::counter!(JOBS_REDRIVEN_TOTAL);
        let discarded = metrics::counter!(JOBS_DISCARDED_TOTAL);
        // Registered at zero: a counter that appears only on its first increment makes
        // `increase()` miss that first event.
        redriven.increment(0);
        discarded.increment(0);
        Observer {
            clock,
            queues_max: queues_max.max(1),
            queues: RwLock::new(HashMap::new()),
            other: OnceLock::new(),
            redriven,
            discarded,
            workers: OnceLock::new(),
            job_waiters: OnceLock::new(),
        }
    }

    /// From now on, tells `workers` of every lease that ends through this observer (acks and
    /// expiries). Once: a later call is ignored.
    pub(crate) fn workers_attach(&self, workers: Arc<Workers>) {
        let _ = self.workers.set(workers);
    }

    /// From now on, tells `job_waiters` of every job that finishes through this observer (acks,
    /// expiries, cancels, schedule ticks). Once: a later call is ignored.
    pub(crate) fn job_waiters_attach(&self, job_waiters: Arc<JobWaiters>) {
        let _ = self.job_waiters.set(job_waiters);
    }

    /// Wakes the requests waiting for `job` when `state` is a finished one.
    fn job_reached(&self, job: JobId, state: JobState) {
        if state.is_finished()
            && let Some(job_waiters) = self.job_waiters.get()
        {
            job_waiters.finished(job);
        }
    }

    /// The metrics of `queue`'s label: its own while there is room, else `_other`'s. A queue
    /// really named `_other` shares that label too.
    fn queue(&self, queue: &str) -> Arc<QueueMetrics> {
        if queue != QUEUE_OTHER {
            let known = self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(m) = known.get(queue) {
                return m.clone();
            }
            let full = known.len() >= self.queues_max;
            drop(known);
            if !full {
                let mut known = self.queues.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if known.len() < self.queues_max {
                    let label: Arc<str> = Arc::from(queue);
                    return known.entry(label.clone()).or_insert_with(|| Arc::new(QueueMetrics::new(label))).clone();
                }
                if let Some(m) = known.get(queue) {
                    return m.clone();
                }
            }
        }
        self.other.get_or_init(|| Arc::new(QueueMetrics::new(Arc::from(QUEUE_OTHER)))).clone()
    }

    /// The `queue` label `queue` is exported under (registering it, like any event would).
    pub(crate) fn queue_label(&self, queue: &str) -> Arc<str> {
        self.queue(queue).label.clone()
    }

    /// Jobs accepted by an enqueue (`queues[i]` is `inserted[i]`'s queue).
    pub fn enqueued(&self, queues: &[QueueName], inserted: &[Inserted]) {
        let mut last: Option<(&QueueName, Arc<QueueMetrics>)> = None;
        for (queue, job) in queues.iter().zip(inserted) {
            tracing::debug!(
                job_id = job.id.0,
                queue = %queue,
                state = job.state.as_str(),
                duplicate = job.duplicate,
                "job enqueued"
            );
            if job.duplicate {
                continue;
            }
            // A batch is usually one queue: look its label up once.
            let m = match &last {
                Some((name, m)) if *name == queue => m.clone(),
                _ => self.queue(queue.as_str()),
            };
            QueueMetrics::add(&m.enqueued, &m.totals.enqueued, 1);
            last = Some((queue, m));
        }
    }

    /// Jobs handed to `worker` at `now`.
    pub fn leased(&self, now: Timestamp, worker: &WorkerId, jobs: &[LeasedJob]) {
        for job in jobs {
            let waited_ms = now.ms_since(job.ready_at);
            tracing::debug!(
                job_id = job.id.0,
                queue = %job.queue,
                attempt = job.attempt,
                lease_id = %job.lease,
                worker = %worker,
                waited_ms,
                "job leased"
            );
            let m = self.queue(job.queue.as_str());
            QueueMetrics::add(&m.leased, &m.totals.leased, 1);
            m.wait.record(waited_ms as f64 / 1000.0);
            m.wait_recent.record(now, waited_ms);
        }
    }

    /// The result of one ack of `job` under `lease`, applied at `now`.
    pub fn acked(&self, now: Timestamp, job: JobId, lease: LeaseId, result: &Result<Acked, Error>) {
        // Completed, failed, or refused because that lease is over: the worker holds it no more.
        if matches!(result, Ok(_) | Err(Error::Rejected { .. } | Error::JobNotFound(_)))
            && let Some(workers) = self.workers.get()
        {
            workers.acked(job, lease);
        }
        let acked = match result {
            Ok(acked) => acked,
            Err(e) => {
                tracing::debug!(job_id = job.0, lease_id = %lease, error = %e, "ack refused; the job is unchanged");
                return;
            }
        };
        self.job_reached(job, acked.state);
        let ran_ms = now.ms_since(acked.leased_at);
        let m = self.queue(acked.queue.as_str());
        let (job_id, queue, attempt, lease_id, state) =
            (job.0, acked.queue.as_str(), acked.attempt, tracing::field::display(lease), acked.state.as_str());
        match acked.state {
            JobState::Completed => {
                tracing::debug!(job_id, queue, attempt, lease_id, ran_ms, "job completed");
            }
            JobState::Dead => {
                tracing::warn!(
                    job_id,
                    queue,
                    attempt,
                    lease_id,
                    ran_ms,
                    state,
                    "job failed; moved to the dead-letter queue"
                );
            }
            JobState::Cancelled => {
                tracing::info!(
                    job_id,
                    queue,
                    attempt,
                    lease_id,
                    ran_ms,
                    state,
                    "job attempt failed; cancelled as requested"
                );
            }
            _ => {
                let retry_at = acked.retry_at.map(|t| t.0);
                tracing::info!(
                    job_id,
                    queue,
                    attempt,
                    lease_id,
                    ran_ms,
                    state,
                    retry_at,
                    "job attempt failed; it will be retried"
                );
            }
        }
        m.attempt_ended(now, ran_ms, acked.state != JobState::Completed);
        if acked.state == JobState::Dead {
            m.died();
        }
    }

    /// What a maintenance tick did (expired leases among it).
    pub fn maintained(&self, report: &TickReport) {
        self.schedules_ticked(&report.ticked);
        if let Some(workers) = self.workers.get() {
            workers.expired(&report.expirations.iter().map(|e| e.id).collect::<Vec<_>>());
        }
        for expired in &report.expirations {
            self.job_reached(expired.id, expired.state);
            let state = expired.state.as_str();
            if expired.state == JobState::Dead {
                tracing::warn!(
                    job_id = expired.id.0,
                    queue = %expired.queue,
                    attempt = expired.attempt,
                    state,
                    "lease expired; the job moved to the dead-letter queue"
                );
            } else {
                tracing::warn!(
                    job_id = expired.id.0,
                    queue = %expired.queue,
                    attempt = expired.attempt,
                    state,
                    "lease expired; the attempt counts as failed"
                );
            }
            let m = self.queue(expired.queue.as_str());
            QueueMetrics::add(&m.expiries, &m.totals.expired, 1);
            if expired.state == JobState::Dead {
                m.died();
            }
        }
    }

    /// What tick passes (and triggers) did: counted per schedule, and logged.
    pub fn schedules_ticked(&self, ticked: &[Ticked]) {
        for t in ticked {
            let label = t.name.to_string();
            let enqueued = t.fired.iter().filter(|f| f.job.is_some()).count() as u64;
            let overlapped = t.fired.iter().filter(|f| f.job.is_none()).count() as u64;
            metrics::counter!(SCHEDULE_TICKS_TOTAL, "schedule" => label.clone()).increment(enqueued);
            if t.missed > 0 {
                metrics::counter!(SCHEDULE_MISFIRES_TOTAL, "schedule" => label.clone()).increment(t.missed);
                tracing::warn!(
                    schedule = %t.name,
                    missed = t.missed,
                    dropped = t.dropped,
                    "schedule ticks were missed (downtime, a pause or a clock step); its misfire policy decided"
                );
            }
            let dropped = |reason: &'static str, n: u64| {
                if n > 0 {
                    metrics::counter!(SCHEDULE_TICKS_DROPPED_TOTAL, "schedule" => label.clone(), "reason" => reason)
                        .increment(n);
                }
            };
            dropped("misfire", t.dropped);
            if let Some(error) = &t.error {
                tracing::error!(schedule = %t.name, %error, "a schedule's tick enqueued nothing: its job was refused");
                dropped("refused", overlapped);
            } else {
                dropped("overlap", overlapped);
            }
            for f in &t.fired {
                if f.fire.ticks == 1 {
                    metrics::histogram!(SCHEDULE_TICK_LATENESS_SECONDS)
                        .record(t.now.ms_since(f.fire.at) as f64 / 1000.0);
                }
                if let Some(cancelled) = f.cancelled {
                    self.job_reached(cancelled, JobState::Cancelled);
                }
                match (f.job, f.cancelled) {
                    (Some(job), cancelled) => tracing::info!(
                        schedule = %t.name,
                        tick = %dray_api::timestamp_string(f.fire.at),
                        ticks = f.fire.ticks,
                        job_id = job.0,
                        cancelled_job_id = cancelled.map(|c| c.0),
                        "schedule ticked"
                    ),
                    (None, _) if t.error.is_none() => tracing::info!(
                        schedule = %t.name,
                        tick = %dray_api::timestamp_string(f.fire.at),
                        "schedule tick skipped: the previous tick's job is still waiting or running"
                    ),
                    (None, _) => {}
                }
            }
        }
    }

    /// `job` was cancelled by a request and is now in `state`: `cancelled`, or still `running`
    /// with its worker asked to stop (it ends `cancelled` when that attempt fails or expires).
    pub fn cancelled(&self, job: JobId, state: JobState) {
        if state == JobState::Cancelled {
            tracing::info!(job_id = job.0, "job cancelled");
        } else {
            tracing::info!(job_id = job.0, state = state.as_str(), "job cancel requested; its worker is asked to stop");
        }
        self.job_reached(job, state);
    }

    /// Dead jobs redriven.
    pub fn redriven(&self, ids: &[JobId]) {
        for id in ids {
            tracing::debug!(job_id = id.0, "dead job redriven");
        }
        tracing::info!(jobs = ids.len(), "dead jobs redriven");
        self.redriven.increment(ids.len() as u64);
    }

    /// Dead jobs discarded.
    pub fn discarded(&self, ids: &[JobId]) {
        for id in ids {
            tracing::debug!(job_id = id.0, "dead job discarded");
        }
        if !ids.is_empty() {
            tracing::info!(jobs = ids.len(), "dead jobs discarded");
        }
        self.discarded.increment(ids.len() as u64);
    }

    /// This node's activity per queue since it started, for the dashboard's live view: totals
    /// (the dashboard turns two snapshots into rates) and recent latency quantiles. One entry per
    /// `queue` label, by name, `_other` included once used.
    pub fn activity(&self) -> Vec<QueueActivity> {
        let now = self.clock.now();
        let mut all: Vec<Arc<QueueMetrics>> =
            self.queues.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        all.extend(self.other.get().cloned());
        let mut out: Vec<QueueActivity> = all
            .iter()
            .map(|m| {
                let t = &m.totals;
                let [wait_p50_ms, wait_p95_ms] = m.wait_recent.quantiles(now, [0.5, 0.95]);
                let [run_p50_ms, run_p95_ms] = m.run_recent.quantiles(now, [0.5, 0.95]);
                QueueActivity {
                    queue: m.label.to_string(),
                    enqueued: t.enqueued.load(Ordering::Relaxed),
                    leased: t.leased.load(Ordering::Relaxed),
                    completed: t.completed.load(Ordering::Relaxed),
                    failed: t.failed.load(Ordering::Relaxed),
                    expired: t.expired.load(Ordering::Relaxed),
                    dead: t.dead.load(Ordering::Relaxed),
                    wait_p50_ms,
                    wait_p95_ms,
                    run_p50_ms,
                    run_p95_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| a.queue.cmp(&b.queue));
        out
    }
}

/// One queue's activity on this node (see [`Observer::activity`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct QueueActivity {
    pub queue: String,
    pub enqueued: u64,
    pub leased: u64,
    pub completed: u64,
    pub failed: u64,
    pub expired: u64,
    pub dead: u64,
    /// Over the last minute or so; `None` when nothing was measured.
    pub wait_p50_ms: Option<f64>,
    pub wait_p95_ms: Option<f64>,
    pub run_p50_ms: Option<f64>,
    pub run_p95_ms: Option<f64>,
}

/// `GET /metrics`, and the layer that counts HTTP requests. The layer covers only what the router
/// holds when this is called, so call it after every route and fallback is added.
pub(crate) fn routes(router: axum::Router<App>, _app: &App) -> axum::Router<App> {
    router.route("/metrics", get(scrape::metrics_get)).layer(axum::middleware::from_fn(scrape::track_request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dray_core::{FencingToken, Payload};

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    fn leased(id: u64, queue: &str, ready_at: i64) -> LeasedJob {
        LeasedJob {
            id: JobId(id),
            queue: q(queue),
            payload: Payload::new(b"{}".as_slice()),
            priority: 0,
            attempt: 1,
            attempts_max: 3,
            lease: LeaseId(id),
            token: FencingToken(id),
            deadline: Timestamp(ready_at + 60_000),
            lease_left_ms: None,
            checkpoint: None,
            steps: Default::default(),
            traceparent: None,
            created_at: Timestamp(ready_at),
            ready_at: Timestamp(ready_at),
            dependencies: Vec::new(),
        }
    }

    fn acked(queue: &str, state: JobState, leased_at: i64) -> Result<Acked, Error> {
        Ok(Acked {
            state,
            retry_at: None,
            queue: q(queue),
            attempt: 1,
            leased_at: Timestamp(leased_at),
            released: Vec::new(),
        })
    }

    #[test]
    fn queues_beyond_the_bound_share_the_other_label() {
        let o = Observer::new(SystemClock::new(), 2);
        assert_eq!(&*o.queue_label("a"), "a");
        assert_eq!(&*o.queue_label("b"), "b");
        assert_eq!(&*o.queue_label("c"), QUEUE_OTHER);
        assert_eq!(&*o.queue_label("a"), "a", "a known queue keeps its label");
        assert_eq!(&*o.queue_label(QUEUE_OTHER), QUEUE_OTHER);
        let labels: Vec<String> = o.activity().into_iter().map(|a| a.queue).collect();
        assert_eq!(labels, ["_other", "a", "b"]);
    }

    #[test]
    fn activity_totals_and_recent_latencies() {
        let clock = SystemClock::new();
        let o = Observer::new(clock, 10);
        let now = clock.now();
        let inserted = |id, duplicate| Inserted { id: JobId(id), state: JobState::Available, duplicate };
        o.enqueued(&[q("mail"), q("mail"), q("sms")], &[inserted(1, false), inserted(1, true), inserted(2, false)]);
        o.leased(now, &WorkerId::new("w").unwrap(), &[leased(1, "mail", now.0 - 40), leased(2, "sms", now.0)]);
        o.acked(now, JobId(1), LeaseId(1), &acked("mail", JobState::Completed, now.0 - 10));
        o.acked(now, JobId(2), LeaseId(2), &acked("sms", JobState::Dead, now.0 - 30));
        o.acked(now, JobId(3), LeaseId(3), &Err(Error::JobNotFound(JobId(3))));
        o.maintained(&TickReport {
            expired: 1,
            expirations: vec![dray_store::Expired { id: JobId(4), queue: q("sms"), attempt: 2, state: JobState::Dead }],
            ..TickReport::default()
        });
        let activity = o.activity();
        let mail = &activity[0];
        assert_eq!(
            (mail.queue.as_str(), mail.enqueued, mail.leased, mail.completed, mail.failed, mail.expired, mail.dead),
            ("mail", 1, 1, 1, 0, 0, 0)
        );
        assert_eq!((mail.wait_p50_ms, mail.run_p95_ms), (Some(40.0), Some(10.0)));
        let sms = &activity[1];
        assert_eq!(
            (sms.queue.as_str(), sms.enqueued, sms.leased, sms.completed, sms.failed, sms.expired, sms.dead),
            ("sms", 1, 1, 0, 1, 1, 2)
        );
        assert_eq!((sms.wait_p50_ms, sms.run_p50_ms), (Some(0.0), Some(30.0)));
    }

    /// Regression (issue #18, defect 1): the registry learns from the observer which leases
    /// ended, so a worker is busy exactly while it holds one.
    #[test]
    fn acks_and_expiries_end_leases_in_the_worker_registry() {
        let clock = SystemClock::new();
        let o = Observer::new(clock, 10);
        let workers = Arc::new(Workers::new(clock));
        o.workers_attach(workers.clone());
        let w = WorkerId::new("w").unwrap();
        let now = clock.now();
        let jobs: Vec<LeasedJob> = (1..=4).map(|id| leased(id, "mail", now.0)).collect();
        workers.leased(&w, &jobs);
        let held = || workers.list()[0].held;
        assert_eq!(held(), 4);
        o.acked(now, JobId(1), LeaseId(1), &acked("mail", JobState::Completed, now.0));
        let stale = Err(Error::Rejected {
            job: JobId(2),
            rejection: dray_core::Rejection::StaleLease { state: JobState::Available },
        });
        o.acked(now, JobId(2), LeaseId(2), &stale);
        assert_eq!(held(), 2, "a completion and a stale-lease refusal both end the lease");
        o.acked(now, JobId(3), LeaseId(3), &Err(Error::unavailable("disk", std::io::Error::other("gone"))));
        assert_eq!(held(), 2, "an unknown outcome ends nothing");
        // Maintenance expires job 4's lease: only once its deadline has passed does it go.
        o.maintained(&TickReport {
            expired: 1,
            expirations: vec![dray_store::Expired {
                id: JobId(4),
                queue: q("mail"),
                attempt: 1,
                state: JobState::Retrying,
            }],
            ..TickReport::default()
        });
        assert_eq!(held(), 2, "job 4's recorded deadline is a minute ahead: a newer lease, kept");
        assert_eq!(workers.list()[0].state(), crate::workers::WorkerState::Busy);
    }

    /// The observer is where this node learns that jobs finished, so it wakes their waiters:
    /// acks that complete, dead-letter or cancel a job, expiries that dead-letter it, cancels,
    /// and schedule ticks that cancel a previous job. A retry, a refused ack and a cancel that
    /// only asks a running job to stop wake nobody.
    #[test]
    fn finished_jobs_wake_their_waiters() {
        let clock = SystemClock::new();
        let observer = Observer::new(clock, 10);
        let waiters = Arc::new(JobWaiters::default());
        observer.job_waiters_attach(waiters.clone());
        let o = &observer;
        let now = clock.now();
        let woken = |id: u64, event: &dyn Fn()| {
            let waiting = waiters.wait(JobId(id));
            let mut armed = std::pin::pin!(waiting.arm());
            event();
            let ready = armed.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            ready.is_ready()
        };
        let ack = |id: u64, state| move || o.acked(now, JobId(id), LeaseId(id), &acked("q", state, now.0));
        assert!(woken(1, &ack(1, JobState::Completed)));
        assert!(woken(2, &ack(2, JobState::Dead)));
        assert!(woken(3, &ack(3, JobState::Cancelled)));
        assert!(!woken(4, &ack(4, JobState::Retrying)));
        assert!(!woken(5, &|| o.acked(now, JobId(5), LeaseId(5), &Err(Error::JobNotFound(JobId(5))))));
        let expiry = |id: u64, state| {
            move || {
                o.maintained(&TickReport {
                    expired: 1,
                    expirations: vec![dray_store::Expired { id: JobId(id), queue: q("q"), attempt: 1, state }],
                    ..TickReport::default()
                })
            }
        };
        assert!(woken(6, &expiry(6, JobState::Dead)));
        assert!(!woken(7, &expiry(7, JobState::Retrying)));
        assert!(woken(8, &|| o.cancelled(JobId(8), JobState::Cancelled)));
        assert!(!woken(9, &|| o.cancelled(JobId(9), JobState::Running)));
        let tick = dray_store::Ticked {
            name: dray_core::ScheduleName::new("nightly").unwrap(),
            now,
            fired: vec![dray_store::TickFired {
                fire: dray_core::schedule::Fire { at: now, ticks: 1 },
                job: Some(JobId(11)),
                cancelled: Some(JobId(10)),
            }],
            missed: 0,
            dropped: 0,
            next_at: None,
            error: None,
        };
        assert!(woken(10, &|| o.schedules_ticked(std::slice::from_ref(&tick))), "the previous tick's job");
        assert!(!woken(11, &|| o.schedules_ticked(std::slice::from_ref(&tick))), "the new tick's job");
        assert_eq!(waiters.waiting(), 0);
    }
}
