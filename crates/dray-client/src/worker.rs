//! The worker runtime: leases jobs for its handlers, runs each in its own tokio task, heartbeats
//! for it, reports outcomes through the batched ack buffer, and shuts down gracefully.
//!
//! Shape: one lease loop asks for as many jobs as there are free slots (`concurrency` minus jobs in
//! hand), long-polling so that an idle worker sends one request per `lease_wait`. Each leased job
//! gets a task that spawns the handler in a task of its own (so a panic is caught as a failed
//! attempt), heartbeats at about a third of the lease, and pushes the outcome to the ack buffer
//! (`ack.rs`), whose one sender task batches `POST /v1/ack`.
//!
//! It never reads the server's timestamps: lease time is a duration from the moment a request was
//! sent, on the local monotonic clock.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dray_api::{AckItem, AckOutcome, LeaseRequest, LeasedJob};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Client;
use crate::ack::{self, AckBuffer, Counters, bump};
use crate::backoff::Backoff;
use crate::client::millis_ceil;
use crate::context::{Attempt, JobContext};
use crate::error::Error;
use crate::trace::{self, AttemptOutcome};

/// Jobs run at once by default.
pub const CONCURRENCY_DEFAULT: usize = 8;
/// One lease call asks for at most this many jobs (the server's `lease_jobs_max`).
pub const CONCURRENCY_MAX: usize = 1_000;
/// How long one lease request waits on the server for a job to arrive.
pub const LEASE_WAIT_DEFAULT: Duration = Duration::from_secs(20);
/// How long shutdown waits for running handlers before handing their jobs back.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// Acks sent in one `POST /v1/ack` at most.
pub const ACK_BATCH_MAX_DEFAULT: usize = 64;
/// How long the first ack of a batch waits for company while handlers are still running.
pub const ACK_LINGER_DEFAULT: Duration = Duration::from_millis(2);
/// The error a job handed back at shutdown fails with.
pub const SHUTDOWN_ERROR: &str = "worker shutting down";
/// After the grace period, how long handing back the remaining jobs may take (flushing their
/// checkpoints, queueing their failures) before their tasks are dropped; their leases then expire.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last acks to be sent (retrying a lost server) before giving up;
/// unsent acks mean the jobs come back when their leases expire.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// A worker name the server accepts: `[A-Za-z0-9_.:-]`, at most this many bytes.
const WORKER_ID_BYTES_MAX: usize = 128;

/// What a handler returns: a result to store with the completed job (any JSON, or `None`), or
/// an error that fails the attempt.
pub type HandlerResult = Result<Option<serde_json::Value>, JobError>;

/// The future a [`Handler`] returns, boxed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Runs one attempt of a job. Implemented for every `Fn(JobContext) -> impl Future<Output =
/// HandlerResult>`, so an `async fn handle(ctx: JobContext) -> HandlerResult` or an `async move`
/// closure is a handler.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: JobContext) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, ctx: JobContext) -> HandlerFuture {
        Box::pin(self(ctx))
    }
}

/// Why an attempt failed, and whether to try again.
///
/// Any `std::error::Error` converts into a *retryable* `JobError`, so `?` works in handlers; use
/// [`JobError::fatal`] for failures that no retry can fix (they go straight to the dead-letter
/// queue). Like `anyhow::Error`, it does not itself implement `std::error::Error` (that would
/// conflict with the blanket conversion).
pub struct JobError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
    rate_limited: bool,
}

impl JobError {
    /// A failure worth retrying: the job is delivered again after the backoff (or
    /// [`JobError::retry_after`]), unless this was its last attempt.
    pub fn retryable(message: impl fmt::Display) -> JobError {
        JobError { message: message.to_string(), retryable: true, retry_after: None, rate_limited: false }
    }

    /// A failure no retry can fix: the job goes to the dead-letter queue now.
    pub fn fatal(message: impl fmt::Display) -> JobError {
        JobError { message: message.to_string(), retryable: false, retry_after: None, rate_limited: false }
    }

    /// A downstream rate limit turned the job away (an HTTP 429, a quota): the attempt is handed
    /// back (it does not count towards the job's attempts), and the whole queue stops leasing,
    /// for every worker, until the job's retry: [`JobError::retry_after`] (pass the
    /// downstream's `Retry-After`) or the job's backoff.
    pub fn rate_limited(message: impl fmt::Display) -> JobError {
        JobError { message: message.to_string(), retryable: true, retry_after: None, rate_limited: true }
    }

    /// Retry after this long instead of the backoff (server clock; the server clamps it to 30
    /// days). Meaningless for a fatal error.
    pub fn retry_after(mut self, delay: Duration) -> JobError {
        self.retry_after = Some(delay);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// Whether this is a [`JobError::rate_limited`].
    pub fn is_rate_limited(&self) -> bool {
        self.rate_limited
    }

    /// What [`JobError::retry_after`] set.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> JobError {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobError::retryable(message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("retry_after", &self.retry_after)
            .field("rate_limited", &self.rate_limited)
            .finish()
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a worker did, returned by [`Worker::run`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// `POST /v1/lease` calls.
    pub lease_requests: u64,
    pub jobs_leased: u64,
    /// Completions the server accepted.
    pub jobs_completed: u64,
    /// Failures the server accepted (handed-back jobs included).
    pub jobs_failed: u64,
    /// Jobs still running when the grace period ended, failed with [`SHUTDOWN_ERROR`].
    pub jobs_handed_back: u64,
    /// Acks the server refused (a stale lease, mostly).
    pub acks_refused: u64,
    /// `POST /v1/ack` calls, retries included.
    pub ack_requests: u64,
    /// Jobs whose handler ended the attempt in its own transaction
    /// ([`JobContext::acked_in_transaction`]): no ack sent for them.
    pub jobs_acked_in_transaction: u64,
}

/// Configures a [`Worker`]; from [`Worker::builder`].
pub struct WorkerBuilder {
    client: Client,
    worker_id: Option<String>,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    concurrency: usize,
    lease_wait: Duration,
    lease_duration: Option<Duration>,
    shutdown_grace: Duration,
    ack_batch_max: usize,
    ack_linger: Duration,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("worker_id", &self.worker_id)
            .field("queues", &self.handlers.iter().map(|(q, _)| q).collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// The worker's name in job history, `[A-Za-z0-9_.:-]`, at most 128 bytes. Default
    /// `<hostname>-<pid>`.
    pub fn worker_id(mut self, id: impl Into<String>) -> WorkerBuilder {
        self.worker_id = Some(id.into());
        self
    }

    /// Runs the jobs of `queue` with `handler`.
    pub fn queue(mut self, queue: impl Into<String>, handler: impl Handler) -> WorkerBuilder {
        self.handlers.push((queue.into(), Arc::new(handler)));
        self
    }

    /// Runs the jobs of all these queues with one handler ([`JobContext::queue`] tells them apart).
    pub fn queues<I, S>(mut self, queues: I, handler: impl Handler) -> WorkerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        for queue in queues {
            self.handlers.push((queue.into(), handler.clone()));
        }
        self
    }

    /// Jobs run at once, 1 to 1000; default 8.
    pub fn concurrency(mut self, concurrency: usize) -> WorkerBuilder {
        self.concurrency = concurrency;
        self
    }

    /// How long one lease request waits on the server for a job; default 20 s. An idle worker sends
    /// one request per this long.
    pub fn lease_wait(mut self, wait: Duration) -> WorkerBuilder {
        self.lease_wait = wait;
        self
    }

    /// Lease duration for every job this worker takes, and what each heartbeat extends it by
    /// (1 s to 12 h); default each job's own (from its queue or its enqueue).
    pub fn lease_duration(mut self, lease: Duration) -> WorkerBuilder {
        self.lease_duration = Some(lease);
        self
    }

    /// At shutdown, how long to wait for running handlers before handing their jobs back; default
    /// 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> WorkerBuilder {
        self.shutdown_grace = grace;
        self
    }

    /// Acks per `POST /v1/ack` at most; default 64.
    pub fn ack_batch_max(mut self, max: usize) -> WorkerBuilder {
        self.ack_batch_max = max;
        self
    }

    /// How long a finished job's ack waits for others to share its request while handlers are
    /// still running; default 2 ms. When no handler is running it is sent at once.
    pub fn ack_linger(mut self, linger: Duration) -> WorkerBuilder {
        self.ack_linger = linger;
        self
    }

    pub fn build(self) -> Result<Worker, Error> {
        if self.handlers.is_empty() {
            return Err(Error::invalid("queues", "a worker needs at least one queue and its handler"));
        }
        let mut handlers = HashMap::new();
        for (queue, handler) in self.handlers {
            if queue.is_empty() {
                return Err(Error::invalid("queues", "a queue name is empty"));
            }
            if handlers.insert(queue.clone(), handler).is_some() {
                return Err(Error::invalid("queues", format!("queue {queue:?} has two handlers")));
            }
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(Error::invalid(
                "concurrency",
                format!("{} is not in 1 to {CONCURRENCY_MAX}", self.concurrency),
            ));
        }
        if self.ack_batch_max == 0 {
            return Err(Error::invalid("ack_batch_max", "must be at least 1"));
        }
        let worker_id = match self.worker_id {
            Some(id) => {
                if id.is_empty() || id.len() > WORKER_ID_BYTES_MAX || !id.bytes().all(worker_id_byte) {
                    return Err(Error::invalid(
                        "worker_id",
                        format!("{id:?} must be 1 to {WORKER_ID_BYTES_MAX} bytes of [A-Za-z0-9_.:-]"),
                    ));
                }
                id
            }
            None => worker_id_default(),
        };
        let mut queues: Vec<String> = handlers.keys().cloned().collect();
        queues.sort();
        Ok(Worker {
            client: self.client,
            worker_id,
            queues,
            handlers,
            concurrency: self.concurrency,
            lease_wait: self.lease_wait,
            lease_duration: self.lease_duration,
            shutdown_grace: self.shutdown_grace,
            ack_batch_max: self.ack_batch_max,
            ack_linger: self.ack_linger,
        })
    }
}

fn worker_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// `<hostname>-<pid>`, cleaned to what the server accepts.
fn worker_id_default() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let id = format!("{host}-{}", std::process::id());
    let mut id: String = id.chars().map(|c| if c.is_ascii() && worker_id_byte(c as u8) { c } else { '-' }).collect();
    // Keep the end (the pid) if a long host name has to be cut.
    if id.len() > WORKER_ID_BYTES_MAX {
        id = id.split_off(id.len() - WORKER_ID_BYTES_MAX);
    }
    id
}

/// A worker: leases jobs from its queues and runs them with their handlers until shut down.
///
/// ```no_run
/// # async fn f() -> Result<(), dray_client::Error> {
/// use dray_client::{Client, JobContext, HandlerResult, Worker};
/// async fn send_email(ctx: JobContext) -> HandlerResult {
///     let to: String = ctx.payload()?;
///     // ... send it ...
///     Ok(None)
/// }
/// let worker = Worker::builder(Client::new("http://127.0.0.1:7700")?)
///     .queue("emails", send_email)
///     .concurrency(8)
///     .build()?;
/// worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    client: Client,
    worker_id: String,
    queues: Vec<String>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    concurrency: usize,
    lease_wait: Duration,
    lease_duration: Option<Duration>,
    shutdown_grace: Duration,
    ack_batch_max: usize,
    ack_linger: Duration,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.worker_id)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease_wait", &self.lease_wait)
            .field("lease_duration", &self.lease_duration)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// What the lease loop shares with the job tasks.
struct Shared {
    client: Client,
    worker_id: String,
    handlers: HashMap<String, Arc<dyn Handler>>,
    extend_ms: Option<u64>,
    /// Handlers running (each will push one ack).
    running: Arc<AtomicUsize>,
    acks: mpsc::Sender<AckItem>,
    counters: Arc<Counters>,
}

enum Outcome {
    Completed(Option<serde_json::Value>),
    Failed(JobError),
    Panicked(String),
    HandedBack,
}

impl Worker {
    pub fn builder(client: Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            worker_id: None,
            handlers: Vec::new(),
            concurrency: CONCURRENCY_DEFAULT,
            lease_wait: LEASE_WAIT_DEFAULT,
            lease_duration: None,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            ack_batch_max: ACK_BATCH_MAX_DEFAULT,
            ack_linger: ACK_LINGER_DEFAULT,
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully: stops leasing, waits up to the
    /// grace period for running handlers, hands back the jobs still running (failed, retryable,
    /// `retry_after` 0, error [`SHUTDOWN_ERROR`], after sending their unsent checkpoints; their
    /// handler tasks are aborted), flushes the acks, and returns what it did.
    ///
    /// Server trouble (no answer, 5xx, 429) is logged and retried with backoff; the worker keeps
    /// going. It stops early, after the same graceful shutdown, only when the server refuses the
    /// lease request itself (a 4xx such as an invalid queue name), and returns that error.
    ///
    /// Cancel safety: not cancel safe. Dropping the future aborts the lease loop and every
    /// handler without reporting: jobs in hand come back only when their leases expire (acks
    /// already queued are still sent). Resolve `shutdown` instead.
    pub async fn run<F: Future<Output = ()>>(self, shutdown: F) -> Result<WorkerReport, Error> {
        let counters = Arc::new(Counters::default());
        let running = Arc::new(AtomicUsize::new(0));
        let (ack_tx, ack_rx) = mpsc::channel(self.concurrency + self.ack_batch_max);
        let ack_task = tokio::spawn(ack::send_loop(
            self.client.clone(),
            AckBuffer::new(ack_rx, running.clone(), self.ack_batch_max, self.ack_linger),
            counters.clone(),
        ));
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            worker_id: self.worker_id.clone(),
            handlers: self.handlers.clone(),
            extend_ms: self.lease_duration.map(millis_ceil),
            running,
            acks: ack_tx,
            counters: counters.clone(),
        });
        let (hand_back_tx, hand_back_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tracing::info!(
            worker = %self.worker_id,
            queues = %self.queues.join(","),
            concurrency = self.concurrency,
            "worker started"
        );

        let refused = self.lease_loop(shutdown, &shared, &mut tasks, &hand_back_rx).await;

        tracing::info!(
            worker = %self.worker_id,
            jobs_running = tasks.len(),
            grace_ms = millis_ceil(self.shutdown_grace),
            "worker stopping: no more leases; waiting for running jobs"
        );
        let all_done = async {
            while let Some(done) = tasks.join_next().await {
                job_task_joined(done);
            }
        };
        if tokio::time::timeout(self.shutdown_grace, all_done).await.is_err() {
            tracing::warn!(worker = %self.worker_id, jobs = tasks.len(), "grace period over: handing back running jobs");
            let _ = hand_back_tx.send(true);
            let all_handed_back = async {
                while let Some(done) = tasks.join_next().await {
                    job_task_joined(done);
                }
            };
            if tokio::time::timeout(HAND_BACK_TIMEOUT, all_handed_back).await.is_err() {
                tracing::error!(
                    jobs = tasks.len(),
                    "jobs not handed back in time; they come back when their leases expire"
                );
                tasks.abort_all();
            }
        }
        // The job tasks are gone; dropping the last sender closes the buffer, which then drains.
        drop(shared);
        let mut ack_task = ack_task;
        if tokio::time::timeout(ACK_FLUSH_TIMEOUT, &mut ack_task).await.is_err() {
            tracing::error!("acks not sent in time; their jobs come back when their leases expire");
            ack_task.abort();
        }
        let report = WorkerReport {
            lease_requests: counters.lease_requests.load(Ordering::Relaxed),
            jobs_leased: counters.jobs_leased.load(Ordering::Relaxed),
            jobs_completed: counters.jobs_completed.load(Ordering::Relaxed),
            jobs_failed: counters.jobs_failed.load(Ordering::Relaxed),
            jobs_handed_back: counters.jobs_handed_back.load(Ordering::Relaxed),
            acks_refused: counters.acks_refused.load(Ordering::Relaxed),
            ack_requests: counters.ack_requests.load(Ordering::Relaxed),
            jobs_acked_in_transaction: counters.jobs_acked_in_transaction.load(Ordering::Relaxed),
        };
        // Each count a field of its own: JSON logs get numbers, not `WorkerReport { .. }` text.
        tracing::info!(
            worker = %self.worker_id,
            lease_requests = report.lease_requests,
            jobs_leased = report.jobs_leased,
            jobs_completed = report.jobs_completed,
            jobs_failed = report.jobs_failed,
            jobs_handed_back = report.jobs_handed_back,
            acks_refused = report.acks_refused,
            ack_requests = report.ack_requests,
            jobs_acked_in_transaction = report.jobs_acked_in_transaction,
            "worker stopped"
        );
        match refused {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Leases until `shutdown` resolves (returns `None`) or the server refuses a lease request for
    /// good (returns the error).
    async fn lease_loop<F: Future<Output = ()>>(
        &self,
        shutdown: F,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
        hand_back: &watch::Receiver<bool>,
    ) -> Option<Error> {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut unavailable = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut idle = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let wait_ms = millis_ceil(self.lease_wait);
        let lease_ms = self.lease_duration.map(millis_ceil);
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = tasks.try_join_next() {
                job_task_joined(done);
            }
            // Wait for one free slot, then take every free one: ask for as many jobs as can run.
            let mut permit = tokio::select! {
                biased;
                () = &mut shutdown => return None,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let more = slots.available_permits();
            if more > 0
                && let Ok(extra) = slots.clone().try_acquire_many_owned(u32::try_from(more).unwrap_or(u32::MAX))
            {
                permit.merge(extra);
            }
            let request = LeaseRequest {
                queues: self.queues.clone(),
                worker: self.worker_id.clone(),
                count: Some(permit.num_permits()),
                lease_ms,
                wait_ms: Some(wait_ms),
            };
            let sent_at = Instant::now();
            bump(&shared.counters.lease_requests);
            // Dropping a long-poll that is still waiting grants nothing; see `Client::lease`.
            let result = tokio::select! {
                biased;
                () = &mut shutdown => return None,
                result = self.client.lease(request) => result,
            };
            match result {
                Ok(response) => {
                    let received_at = Instant::now();
                    unavailable.reset();
                    if response.jobs.is_empty() {
                        // A long-poll that came back empty well before its wait is over (another
                        // worker won the job, say): pause a little so that a server that does
                        // not wait can never make this loop spin.
                        if self.lease_wait.is_zero() || sent_at.elapsed() < self.lease_wait / 2 {
                            let pause = idle.next();
                            tokio::select! {
                                biased;
                                () = &mut shutdown => return None,
                                () = tokio::time::sleep(pause) => {}
                            }
                        } else {
                            idle.reset();
                        }
                        continue;
                    }
                    idle.reset();
                    for job in response.jobs {
                        bump(&shared.counters.jobs_leased);
                        shared.running.fetch_add(1, Ordering::AcqRel);
                        // More jobs than asked for would be a server bug; run them anyway rather
                        // than leave them to expire, at the cost of one slot too many.
                        let slot = permit.split(1);
                        tasks.spawn(run_job(shared.clone(), job, (sent_at, received_at), slot, hand_back.clone()));
                    }
                    // Slots the server had no jobs for go back.
                    drop(permit);
                }
                Err(e) if e.is_retryable() => {
                    drop(permit);
                    let pause = unavailable.next();
                    tracing::warn!(
                        error = %error_text(&e, shared.client.base_url()),
                        retry_in_ms = millis_ceil(pause),
                        "lease failed; retrying"
                    );
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "lease refused; the worker stops");
                    return Some(e);
                }
            }
        }
    }
}

/// An SDK error as a log line should read it. A transport error says what it means for the call:
/// a refused connection never reached the server ("cannot connect to URL"); a lost answer to a
/// read or a lease changed nothing a retry would duplicate; the SDK's own text (which tells
/// producers to retry with the same idempotency key) is for writes whose outcome is unknown.
pub(crate) fn error_text(e: &Error, base_url: &str) -> String {
    let Error::Transport { context, source } = e else {
        return e.to_string();
    };
    let text = source.to_string();
    let reason = text.rsplit(": ").next().unwrap_or_default();
    if source.is_connect() {
        return format!("cannot connect to {}: {reason}", base_url.trim_end_matches('/'));
    }
    format!("{context}: no answer from {}: {reason}", base_url.trim_end_matches('/'))
}

fn job_task_joined(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        // Handlers run in tasks of their own; this is the worker's own code.
        tracing::error!(error = %e, "a job task panicked");
    }
}

/// One leased job, from lease to ack.
async fn run_job(
    shared: Arc<Shared>,
    job: LeasedJob,
    (sent_at, received_at): (Instant, Instant),
    slot: Option<OwnedSemaphorePermit>,
    mut hand_back: watch::Receiver<bool>,
) {
    let attempt = Attempt::new(shared.client.clone(), job, sent_at, received_at, shared.extend_ms);
    let span = trace::attempt_span(&attempt.job);
    let (id, queue) = (attempt.job.id, attempt.job.queue.clone());
    let outcome = match shared.handlers.get(&queue).cloned() {
        Some(handler) => supervise(&attempt, handler, &span, &mut hand_back).instrument(span.clone()).await,
        None => Outcome::Failed(
            JobError::retryable(format!("no handler for queue {queue} on worker {}", shared.worker_id))
                .retry_after(Duration::ZERO),
        ),
    };
    if attempt.acked_in_transaction() {
        // The handler completed or failed the job in its own committed transaction: an ack
        // now would only be refused as stale.
        bump(&shared.counters.jobs_acked_in_transaction);
        let ended = match &outcome {
            Outcome::Completed(_) => AttemptOutcome::Completed,
            Outcome::Failed(_) => AttemptOutcome::Failed,
            Outcome::Panicked(_) => AttemptOutcome::Panicked,
            Outcome::HandedBack => AttemptOutcome::HandedBack,
        };
        if let Outcome::Failed(e) = &outcome {
            tracing::warn!(job = id, queue, error = %e, "the handler acked the job in its transaction, then failed; no ack sent");
        } else {
            tracing::debug!(job = id, queue, "job acked in the handler's transaction");
        }
        trace::record_outcome(&span, ended, None);
        drop(span);
        shared.running.fetch_sub(1, Ordering::AcqRel);
        drop(slot);
        return;
    }
    let (item, ended) = match outcome {
        Outcome::Completed(result) => {
            tracing::debug!(job = id, queue, "job completed");
            let result = match result.map(|v| serde_json::value::to_raw_value(&v)).transpose() {
                Ok(result) => Ok(result),
                Err(e) => Err(JobError::retryable(format!("the handler's result is not JSON: {e}"))),
            };
            match result {
                Ok(result) => (ack_item(&attempt.job, AckOutcome::Complete, result, None), AttemptOutcome::Completed),
                Err(e) => (ack_item(&attempt.job, AckOutcome::Fail, None, Some(e)), AttemptOutcome::Failed),
            }
        }
        Outcome::Failed(e) => {
            // On the last attempt a retryable error still ends the job: say so rather than
            // `retryable=true` on the attempt that dead-letters it.
            let last = !e.retryable || attempt.job.attempt >= attempt.job.attempts_max;
            tracing::debug!(
                job = id,
                queue,
                error = %e,
                retryable = e.retryable && !last,
                outcome = if last { "dead" } else { "retrying" },
                "job failed"
            );
            (ack_item(&attempt.job, AckOutcome::Fail, None, Some(e)), AttemptOutcome::Failed)
        }
        Outcome::Panicked(message) => {
            tracing::warn!(job = id, queue, panic = %message, "handler panicked");
            let e = JobError::retryable(format!("handler panicked: {message}"));
            (ack_item(&attempt.job, AckOutcome::Fail, None, Some(e)), AttemptOutcome::Panicked)
        }
        Outcome::HandedBack => {
            bump(&shared.counters.jobs_handed_back);
            tracing::info!(job = id, queue, "job handed back");
            let e = JobError::retryable(SHUTDOWN_ERROR).retry_after(Duration::ZERO);
            (ack_item(&attempt.job, AckOutcome::Fail, None, Some(e)), AttemptOutcome::HandedBack)
        }
    };
    // The attempt's span ends once the handler's task, finished or aborted, drops its handle too;
    // what follows is the worker's bookkeeping, batched with other jobs'.
    trace::record_outcome(&span, ended, item.error.as_deref());
    drop(span);
    // A failed attempt's checkpoint is for the next attempt: make sure the server has it before
    // the failure lets another worker start.
    if item.outcome == AckOutcome::Fail
        && attempt.checkpoint_unsent()
        && !attempt.lease_lost()
        && let Err(e) = attempt.beat().await
    {
        tracing::warn!(job = id, error = %e, "could not send the checkpoint before the failure");
    }
    // Not running any more: let the ack buffer know before the item arrives, so that an idle
    // worker's ack goes out at once.
    shared.running.fetch_sub(1, Ordering::AcqRel);
    if shared.acks.send(item).await.is_err() {
        tracing::error!(job = id, "ack buffer closed; the job comes back when its lease expires");
    }
    drop(slot);
}

/// Runs the handler in a task of its own, inside the attempt's `span`, and heartbeats for it until
/// it finishes or is handed back.
async fn supervise(
    attempt: &Arc<Attempt>,
    handler: Arc<dyn Handler>,
    span: &tracing::Span,
    hand_back: &mut watch::Receiver<bool>,
) -> Outcome {
    // Aborted with this future too: a handler never outlives its job's task (which is dropped
    // when `Worker::run` is, or when handing back takes too long). The call itself is in the span
    // too: a handler may do synchronous work before its first await.
    let future = span.in_scope(|| handler.call(attempt.context()));
    let mut task = AbortOnDrop(tokio::spawn(future.instrument(span.clone())));
    loop {
        let beat_at = attempt.beat_at();
        tokio::select! {
            biased;
            joined = &mut task.0 => {
                return match joined {
                    Ok(Ok(result)) => Outcome::Completed(result),
                    Ok(Err(e)) => Outcome::Failed(e),
                    Err(e) if e.is_panic() => Outcome::Panicked(panic_message(e.into_panic())),
                    // Only `supervise` aborts the task, below.
                    Err(_) => Outcome::HandedBack,
                };
            }
            () = handed_back(hand_back) => {
                task.0.abort();
                return Outcome::HandedBack;
            }
            () = sleep_until_some(beat_at) => attempt.beat_periodic().await,
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves once the worker says to hand jobs back (or is gone). Cancel safe.
async fn handed_back(hand_back: &mut watch::Receiver<bool>) {
    let _ = hand_back.wait_for(|yes| *yes).await;
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}

fn ack_item(job: &LeasedJob, outcome: AckOutcome, result: Option<dray_api::Json>, error: Option<JobError>) -> AckItem {
    AckItem {
        job: job.id,
        lease_id: job.lease_id.clone(),
        outcome,
        result,
        retryable: error.as_ref().map(|e| e.retryable),
        retry_after_ms: error.as_ref().and_then(|e| e.retry_after).map(millis_ceil),
        rate_limited: error.as_ref().is_some_and(|e| e.rate_limited),
        error: error.map(|e| e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_worker_id_is_accepted_by_the_server_rules() {
        let id = worker_id_default();
        assert!(!id.is_empty() && id.len() <= WORKER_ID_BYTES_MAX, "{id}");
        assert!(id.bytes().all(worker_id_byte), "{id}");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    }

    #[test]
    fn build_refuses_bad_configuration() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let ok = |ctx: JobContext| async move {
            let _ = ctx;
            Ok(None)
        };
        let field = |r: Result<Worker, Error>| match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(Worker::builder(client.clone()).build()), "queues");
        assert_eq!(field(Worker::builder(client.clone()).queue("a", ok).queue("a", ok).build()), "queues");
        assert_eq!(field(Worker::builder(client.clone()).queue("a", ok).concurrency(0).build()), "concurrency");
        assert_eq!(field(Worker::builder(client.clone()).queue("a", ok).worker_id("a b").build()), "worker_id");
        let w = Worker::builder(client).queues(["b", "a"], ok).worker_id("w-1").build().unwrap();
        assert_eq!(w.queues, ["a", "b"]);
        assert_eq!(w.worker_id(), "w-1");
    }

    #[test]
    fn errors_convert_into_retryable_job_errors_with_their_sources() {
        let e: JobError = std::io::Error::other("disk full").into();
        assert!(e.is_retryable());
        assert_eq!(e.message(), "disk full");
        let e = JobError::fatal("bad input").retry_after(Duration::from_secs(1));
        assert!(!e.is_retryable());
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn ack_items_carry_the_failure() {
        let job: LeasedJob = serde_json::from_value(serde_json::json!({
            "id": 7, "queue": "q", "payload": {}, "priority": 0, "attempt": 1, "attempts_max": 3,
            "lease_id": "00000000000000ff", "fencing_token": 9, "lease_ms": 30000,
            "deadline": "2030-01-01T00:00:00Z", "created_at": "2030-01-01T00:00:00Z"
        }))
        .unwrap();
        let item = ack_item(
            &job,
            AckOutcome::Fail,
            None,
            Some(JobError::retryable(SHUTDOWN_ERROR).retry_after(Duration::ZERO)),
        );
        assert_eq!(item.lease_id, "00000000000000ff");
        assert_eq!(item.error.as_deref(), Some(SHUTDOWN_ERROR));
        assert_eq!(item.retryable, Some(true));
        assert_eq!(item.retry_after_ms, Some(0));
        assert!(!item.rate_limited);
        let limited = JobError::rate_limited("429").retry_after(Duration::from_millis(1_500));
        assert!(limited.is_rate_limited() && limited.is_retryable());
        let item = ack_item(&job, AckOutcome::Fail, None, Some(limited));
        assert!(item.rate_limited);
        assert_eq!(item.retry_after_ms, Some(1_500));
    }
}
