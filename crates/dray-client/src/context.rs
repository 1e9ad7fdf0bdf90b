//! What a handler gets for one attempt: the job, its checkpoint, a way to report progress and save
//! a checkpoint, and the cancellation signal. It also owns the attempt's heartbeat state, shared
//! with the worker task that heartbeats for it, so the handler never heartbeats by hand.
//!
//! Steps ([`JobContext::step`]) are memoized per job on the server: the lease hands this attempt
//! every step earlier attempts recorded, and the attempt keeps what it records itself, so a step's
//! closure runs at most once per job unless its record was lost.
//!
//! Lease time is tracked as durations on the local monotonic clock. A heartbeat's `lease_ms`
//! counts from when the request was *sent* (so the local deadline is never later than the
//! server's). A lease's `lease_ms` counts from when the job was granted, which during a long-poll
//! can be long after the request was sent: it counts from the answer's arrival, less the answer's
//! transit (at most [`LEASE_TRANSIT_MAX`]). The server's timestamps are never compared with the
//! local clock.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dray_api::{HeartbeatRequest, Json, LeasedJob, StepRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Client;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::worker::JobError;

/// Heartbeats are sent at about this fraction of the lease.
const HEARTBEAT_FRACTION: u32 = 3;
/// Never heartbeat more often than this, whatever the lease.
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(50);
/// A heartbeat that failed without an answer is retried after at most this long.
const HEARTBEAT_RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a lease answer may have travelled after the server granted it, at most: the local
/// lease deadline counts from its arrival less this (or less the whole request, if shorter).
pub(crate) const LEASE_TRANSIT_MAX: Duration = Duration::from_secs(1);
/// Pauses between tries of a step record whose outcome was unknown (a transport error, a 5xx).
const STEP_RETRY_FIRST: Duration = Duration::from_millis(50);
const STEP_RETRY_MAX: Duration = Duration::from_secs(5);
/// Bounds of one heartbeat request's timeout (otherwise the time left on the lease).
const HEARTBEAT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// Why [`JobContext::cancelled`] fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelReason {
    /// Someone cancelled the job. Stop and return an error: the job then ends `cancelled` (if the
    /// handler completes instead, the job is `completed`).
    Requested,
    /// The lease is gone: the server refused a heartbeat (409/404), or the lease ran out without a
    /// successful heartbeat. Another worker may hold the job now; this attempt's outcome will be
    /// refused. Stop, and do not write anything more downstream without the fencing token.
    LeaseLost,
}

/// One attempt of one job, handed to the handler. Cheap to clone (clones share the attempt).
#[derive(Clone)]
pub struct JobContext {
    pub(crate) shared: Arc<Attempt>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let job = &self.shared.job;
        f.debug_struct("JobContext")
            .field("id", &job.id)
            .field("queue", &job.queue)
            .field("attempt", &job.attempt)
            .field("fencing_token", &job.fencing_token)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    pub fn id(&self) -> u64 {
        self.shared.job.id
    }

    pub fn queue(&self) -> &str {
        &self.shared.job.queue
    }

    /// 1 for the first delivery.
    pub fn attempt(&self) -> u32 {
        self.shared.job.attempt
    }

    pub fn attempts_max(&self) -> u32 {
        self.shared.job.attempts_max
    }

    /// Strictly increasing across all leases: hand it to downstream systems so that they can
    /// refuse writes from a worker whose lease has been superseded.
    pub fn fencing_token(&self) -> u64 {
        self.shared.job.fencing_token
    }

    pub fn lease_id(&self) -> &str {
        &self.shared.job.lease_id
    }

    pub fn priority(&self) -> i16 {
        self.shared.job.priority
    }

    /// The producer's W3C trace context, if it sent one.
    pub fn traceparent(&self) -> Option<&str> {
        self.shared.job.traceparent.as_deref()
    }

    /// The job as the server handed it out.
    pub fn leased_job(&self) -> &LeasedJob {
        &self.shared.job
    }

    /// The payload, decoded as `T`. (With `?` in a handler a decode error becomes a *retryable*
    /// failure; use `.map_err(JobError::fatal)` to send a payload that can never decode straight to
    /// the dead-letter queue.)
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.shared.job.payload.get())
            .map_err(|source| Error::Decode { context: format!("job {}: payload", self.id()), source })
    }

    /// The payload as raw JSON text.
    pub fn payload_json(&self) -> &RawValue {
        &self.shared.job.payload
    }

    /// The newest checkpoint: the last one this attempt saved, else what an earlier attempt saved
    /// (`None` if there is none).
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let state = self.shared.state();
        state
            .checkpoint
            .as_ref()
            .map(|c| serde_json::from_str(c.get()))
            .transpose()
            .map_err(|source| Error::Decode { context: format!("job {}: checkpoint", self.id()), source })
    }

    /// Saves a checkpoint for the next attempt, should this one fail. It goes to the server with
    /// the next heartbeat (about every third of the lease), or right away with
    /// [`JobContext::flush`]; when the handler fails (or panics, or is handed back at shutdown) an
    /// unsent checkpoint is sent before the failure. Saving again replaces it. At most 64 KiB of
    /// JSON (the server refuses more; the refused checkpoint is then dropped and logged).
    pub fn save_checkpoint<T: Serialize + ?Sized>(&self, checkpoint: &T) -> Result<(), Error> {
        let json = serde_json::value::to_raw_value(checkpoint).map_err(|e| Error::invalid("checkpoint", e))?;
        let mut state = self.shared.state();
        state.checkpoint = Some(json);
        state.checkpoint_dirty = true;
        Ok(())
    }

    /// Reports progress (any small JSON, at most 4 KiB), shown with the job. Sent with the next
    /// heartbeat or [`JobContext::flush`]; only the newest value is sent.
    pub fn progress<T: Serialize + ?Sized>(&self, progress: &T) -> Result<(), Error> {
        let json = serde_json::value::to_raw_value(progress).map_err(|e| Error::invalid("progress", e))?;
        self.shared.state().progress = Some(json);
        Ok(())
    }

    /// Heartbeats now: extends the lease and sends the unsent progress and checkpoint. Returns
    /// once the server has them (on stable storage). A 409 means the lease is lost (and
    /// [`JobContext::cancelled`] fires).
    ///
    /// Cancel safety: dropping the future leaves unknown whether the heartbeat arrived; the
    /// progress and checkpoint it carried are then queued again for the next heartbeat.
    pub async fn flush(&self) -> Result<(), Error> {
        self.shared.beat().await
    }

    /// Resolves when the job should stop: a cancel was requested or the lease is lost. Cancel
    /// safe; resolves at once if that already happened.
    pub async fn cancelled(&self) -> CancelReason {
        let mut rx = self.shared.cancel.subscribe();
        // The guard `wait_for` returns must not live across another await (it is not `Send`).
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => *reason,
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The sender lives as long as this context: unreachable, but never resolve falsely.
            None => std::future::pending().await,
        }
    }

    /// Says that the handler ended this attempt itself, inside its own database transaction
    /// (`outbox::complete` or `outbox::fail`, PostgreSQL mode), and that transaction committed:
    /// the worker then sends no ack for it, whatever the handler returns, and stops heartbeating
    /// it at once. Call it after your `COMMIT` succeeded, never before: if the commit fails or
    /// its outcome is unknown, return an error instead and the worker fails the attempt over
    /// HTTP (refused harmlessly as stale if the commit did happen).
    pub fn acked_in_transaction(&self) {
        self.shared.acked_in_transaction.store(true, std::sync::atomic::Ordering::Release);
        self.shared.state().beat_at = None;
    }

    /// Runs the step `name` of this job once: if an earlier attempt (or this one) recorded it,
    /// returns the recorded result, decoded, without running `run`; otherwise runs `run`, records
    /// its result on the server (durably, before returning) and returns it. Steps are how a long
    /// job resumes where it crashed: an agent whose 14th of 20 paid API calls crashed gets the
    /// results of calls 1 to 13 from the lease and runs only from the 14th on.
    ///
    /// - Names are unique within the job (1 to 256 bytes, no control characters); a result is
    ///   any `T` that serializes to at most 256 KiB of JSON, and a job's steps hold at most 1,000
    ///   steps and 8 MiB in all. Past a bound the step fails with a *fatal* [`JobError`] (no
    ///   retry could record it).
    /// - The first record of a name wins. If the record's answer was lost and the retry finds the
    ///   name recorded, the recorded result is returned.
    /// - An error of `run` is returned as is: nothing is recorded, so the next attempt runs the
    ///   step again.
    /// - A record whose outcome is unknown (no answer, a 5xx) is sent again with a capped backoff
    ///   while the lease lasts. A 409 or 404 means the lease is lost: [`JobContext::cancelled`]
    ///   fires with [`CancelReason::LeaseLost`] and the step fails with the server's refusal, as
    ///   a heartbeat would. A result recorded under a lost lease is not kept.
    /// - `run` may run again for the same job when its result was never recorded: the attempt
    ///   crashed after `run` finished and before the record, or the lease was lost meanwhile.
    ///   Make the work idempotent (an idempotency key derived from [`JobContext::id`] and the
    ///   step's name) or fence it with [`JobContext::fencing_token`].
    ///
    /// Cancel safety: dropping the future while `run` runs drops `run`'s future; dropping it while
    /// the record is in flight leaves unknown whether it was recorded (the next call of the same
    /// step finds out: the server answers with the first record).
    ///
    /// ```no_run
    /// # use dray_client::{HandlerResult, JobContext, JobError};
    /// # async fn call_model(prompt: &str) -> Result<String, std::io::Error> { Ok(prompt.into()) }
    /// async fn agent(ctx: JobContext) -> HandlerResult {
    ///     let goal: String = ctx.payload().map_err(JobError::fatal)?;
    ///     // Each step runs once per job; a retried attempt gets the recorded results back.
    ///     let plan: String = ctx.step("plan", || call_model(&goal)).await?;
    ///     let draft: String = ctx.step("draft", || call_model(&plan)).await?;
    ///     let review: String = ctx.step("review", || async {
    ///         call_model(&draft).await.map_err(|e| JobError::retryable(format!("review: {e}")))
    ///     }).await?;
    ///     Ok(Some(serde_json::json!({ "draft": draft, "review": review })))
    /// }
    /// ```
    pub async fn step<T, F, Fut, E>(&self, name: &str, run: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<JobError>,
    {
        if let Some(done) = self.recorded_step(name)? {
            return Ok(done);
        }
        let value = run().await.map_err(Into::into)?;
        let json = step_json(self.id(), name, &value)?;
        let (recorded, by_us) = self.shared.record_step(name, json).await?;
        if by_us {
            return Ok(value);
        }
        decode_step(self.id(), name, &recorded)
    }

    /// The result step `name` recorded, decoded: by an earlier attempt (the lease carried it) or
    /// by this one; `None` when it was never recorded. For code that cannot pass its work as a
    /// closure to [`JobContext::step`]; pair it with [`JobContext::record_step`]. A recorded
    /// result that does not decode as `T` is a fatal error (no retry would change it).
    pub fn recorded_step<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, JobError> {
        let recorded = self.shared.state().steps.get(name).cloned();
        recorded.map(|json| decode_step(self.id(), name, &json)).transpose()
    }

    /// Records step `name` with `result` and returns the result recorded: `result`, or the one
    /// recorded first if the name was recorded before (the first record wins). What
    /// [`JobContext::step`] does after running its closure, with the same errors and retries.
    ///
    /// Cancel safety: as [`JobContext::step`]'s record.
    pub async fn record_step<T: Serialize + DeserializeOwned>(&self, name: &str, result: &T) -> Result<T, JobError> {
        let json = step_json(self.id(), name, result)?;
        let (recorded, _) = self.shared.record_step(name, json).await?;
        decode_step(self.id(), name, &recorded)
    }

    /// The names of the steps recorded for this job so far, earlier attempts' and this one's.
    pub fn step_names(&self) -> Vec<String> {
        let state = self.shared.state();
        let mut names: Vec<String> = state.steps.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    pub fn is_cancelled(&self) -> bool {
        self.shared.cancel.borrow().is_some()
    }

    pub fn cancel_reason(&self) -> Option<CancelReason> {
        *self.shared.cancel.borrow()
    }
}

/// The state of one attempt, shared by the handler's [`JobContext`] and the worker's task that
/// heartbeats and reports for it.
pub(crate) struct Attempt {
    client: Client,
    pub(crate) job: LeasedJob,
    /// Sent as `extend_ms` (the worker's configured lease duration), else the job's own.
    extend_ms: Option<u64>,
    state: Mutex<AttemptState>,
    /// One heartbeat at a time, so that an older checkpoint can never land after a newer one.
    beating: tokio::sync::Mutex<()>,
    cancel: watch::Sender<Option<CancelReason>>,
    /// Set by [`JobContext::acked_in_transaction`]: the worker must not ack this attempt.
    acked_in_transaction: std::sync::atomic::AtomicBool,
}

struct AttemptState {
    /// The newest checkpoint: delivered, or saved by this attempt.
    checkpoint: Option<Json>,
    /// Saved by this attempt and not yet accepted by the server.
    checkpoint_dirty: bool,
    /// Unsent progress.
    progress: Option<Json>,
    /// When the lease ends at the latest, on the local monotonic clock.
    deadline: Instant,
    /// When to heartbeat next; `None` once the lease is lost.
    beat_at: Option<Instant>,
    /// The job's recorded steps by name: from the lease, and those this attempt recorded.
    steps: HashMap<String, Json>,
}

impl Attempt {
    /// `sent_at`, `received_at`: when the lease request was sent and its answer arrived.
    pub(crate) fn new(
        client: Client,
        job: LeasedJob,
        sent_at: Instant,
        received_at: Instant,
        extend_ms: Option<u64>,
    ) -> Arc<Attempt> {
        let lease = Duration::from_millis(job.lease_ms);
        // A long-poll may have waited 20 s before the grant: counting from the send would make
        // the lease look nearly over on arrival.
        let granted_at = received_at - received_at.saturating_duration_since(sent_at).min(LEASE_TRANSIT_MAX);
        let state = AttemptState {
            checkpoint: job.checkpoint.clone(),
            checkpoint_dirty: false,
            progress: None,
            deadline: granted_at + lease,
            beat_at: Some(Instant::now() + beat_interval(lease)),
            steps: job.steps.0.iter().map(|(name, result)| (name.clone(), result.clone())).collect(),
        };
        Arc::new(Attempt {
            client,
            job,
            extend_ms,
            state: Mutex::new(state),
            beating: tokio::sync::Mutex::new(()),
            cancel: watch::Sender::new(None),
            acked_in_transaction: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn state(&self) -> MutexGuard<'_, AttemptState> {
        // The lock is never held across an await or user code, so poisoning means a bug here;
        // the state itself is still consistent field by field.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn context(self: &Arc<Self>) -> JobContext {
        JobContext { shared: self.clone() }
    }

    /// When the next periodic heartbeat is due; `None` once the lease is lost.
    pub(crate) fn beat_at(&self) -> Option<Instant> {
        self.state().beat_at
    }

    pub(crate) fn checkpoint_unsent(&self) -> bool {
        self.state().checkpoint_dirty
    }

    /// Whether the handler ended the attempt in its own transaction ([`JobContext::acked_in_transaction`]).
    pub(crate) fn acked_in_transaction(&self) -> bool {
        self.acked_in_transaction.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn lease_lost(&self) -> bool {
        *self.cancel.borrow() == Some(CancelReason::LeaseLost)
    }

    fn fire(&self, reason: CancelReason) {
        self.cancel.send_if_modified(|current| match current {
            // Lease loss is the stronger news: it overrides a cancel request.
            Some(CancelReason::LeaseLost) => false,
            Some(CancelReason::Requested) if reason == CancelReason::Requested => false,
            _ => {
                *current = Some(reason);
                true
            }
        });
    }

    /// The periodic heartbeat. Errors are handled here (logged, retried, or turned into lease
    /// loss); the caller only waits for the next `beat_at`.
    pub(crate) async fn beat_periodic(&self) {
        if self.acked_in_transaction() {
            return;
        }
        {
            let mut state = self.state();
            if Instant::now() >= state.deadline {
                // The lease ran out on our clock without a successful heartbeat: on the server's
                // it has too (our deadline is never later, up to the transit of a lease answer).
                state.beat_at = None;
                drop(state);
                tracing::warn!(job = self.job.id, "lease ran out without a successful heartbeat");
                self.fire(CancelReason::LeaseLost);
                return;
            }
        }
        if let Err(e) = self.beat().await {
            tracing::debug!(job = self.job.id, error = %crate::worker::error_text(&e, self.client.base_url()), "heartbeat failed");
        }
    }

    /// One heartbeat with the unsent progress and checkpoint.
    ///
    /// Cancel safety: if dropped before the answer, the values it carried are queued again (the
    /// server may or may not have them), so they go with the next heartbeat.
    pub(crate) async fn beat(&self) -> Result<(), Error> {
        let _one_at_a_time = self.beating.lock().await;
        let (request, timeout) = {
            let mut state = self.state();
            let request = HeartbeatRequest {
                lease_id: self.job.lease_id.clone(),
                extend_ms: self.extend_ms,
                progress: state.progress.take(),
                checkpoint: if state.checkpoint_dirty { state.checkpoint.clone() } else { None },
            };
            state.checkpoint_dirty = false;
            let left = state.deadline.saturating_duration_since(Instant::now());
            (request, left.clamp(HEARTBEAT_TIMEOUT_MIN, HEARTBEAT_TIMEOUT_MAX))
        };
        let mut owed = Owed {
            attempt: self,
            checkpoint: request.checkpoint.is_some(),
            progress: request.progress.clone(),
            settled: false,
        };
        let sent_at = Instant::now();
        let result = self.client.heartbeat_within(self.job.id, &request, Some(timeout)).await;
        match &result {
            // Unknown whether it arrived: send the values again with the next one.
            Err(e) if e.is_retryable() => owed.restore(),
            // Arrived; or lost its lease, or refused for its content (a checkpoint over the limit,
            // say), which a resend would not change: either way the values are done with.
            _ => owed.settled = true,
        }
        drop(owed);
        if self.acked_in_transaction() {
            // The handler ended the attempt meanwhile: no more heartbeats, and a refusal of this
            // one (the job is finished) is no news.
            self.state().beat_at = None;
            return result.map(|_| ());
        }
        let mut state = self.state();
        match result {
            Ok(response) => {
                let lease = Duration::from_millis(response.lease_ms);
                state.deadline = sent_at + lease;
                state.beat_at = Some(Instant::now() + beat_interval(lease));
                drop(state);
                if response.cancel_requested {
                    self.fire(CancelReason::Requested);
                }
                Ok(())
            }
            Err(e) if e.is_conflict() || e.is_not_found() => {
                drop(state);
                self.lose_lease(&e);
                Err(e)
            }
            Err(e) => {
                let now = Instant::now();
                let left = state.deadline.saturating_duration_since(now);
                let retry = if e.is_retryable() {
                    (left / 4).clamp(HEARTBEAT_INTERVAL_MIN, HEARTBEAT_RETRY_MAX)
                } else {
                    (left / 4).max(HEARTBEAT_INTERVAL_MIN)
                };
                state.beat_at = Some(now + retry);
                drop(state);
                if !e.is_retryable() {
                    tracing::error!(job = self.job.id, error = %e, "heartbeat refused; its progress and checkpoint are dropped");
                }
                Err(e)
            }
        }
    }
}

impl Attempt {
    /// The server refused the lease (409 or 404): no more heartbeats, and the handler learns.
    fn lose_lease(&self, e: &Error) {
        self.state().beat_at = None;
        tracing::info!(job = self.job.id, error = %e, "lease lost");
        self.fire(CancelReason::LeaseLost);
    }

    /// Records a step, sending it again while its outcome is unknown and the lease lasts.
    /// Returns the result recorded and whether this call recorded it; keeps it for the attempt.
    async fn record_step(&self, name: &str, result: Json) -> Result<(Json, bool), JobError> {
        let request = StepRequest { lease_id: self.job.lease_id.clone(), name: name.to_owned(), result };
        let mut backoff = Backoff::new(STEP_RETRY_FIRST, STEP_RETRY_MAX);
        loop {
            if self.lease_lost() {
                return Err(JobError::retryable(format!("job {}: step {name:?}: the lease is lost", self.job.id)));
            }
            let e = match self.client.step(self.job.id, &request).await {
                Ok(answer) => {
                    self.state().steps.insert(name.to_owned(), answer.result.clone());
                    return Ok((answer.result, answer.recorded));
                }
                Err(e) => e,
            };
            if e.is_conflict() || e.is_not_found() {
                self.lose_lease(&e);
                return Err(e.into());
            }
            if !e.is_retryable() {
                // Refused for its content (a name or result past its limit): no retry helps.
                return Err(JobError::fatal(format!("job {}: step {name:?}: {e}", self.job.id)));
            }
            let left = self.state().deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(job = self.job.id, step = name, "the lease ran out while a step was being recorded");
                self.state().beat_at = None;
                self.fire(CancelReason::LeaseLost);
                return Err(e.into());
            }
            let pause = backoff.next().min(left);
            tracing::debug!(job = self.job.id, step = name, error = %crate::worker::error_text(&e, self.client.base_url()), "step record failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

/// A step's result as JSON; a result that does not serialize is a fatal error.
fn step_json<T: Serialize + ?Sized>(job: u64, name: &str, result: &T) -> Result<Json, JobError> {
    serde_json::value::to_raw_value(result)
        .map_err(|e| JobError::fatal(format!("job {job}: step {name:?}: the result is not JSON: {e}")))
}

/// A recorded step's result as `T`; one that does not decode is a fatal error.
fn decode_step<T: DeserializeOwned>(job: u64, name: &str, json: &RawValue) -> Result<T, JobError> {
    serde_json::from_str(json.get())
        .map_err(|e| JobError::fatal(format!("job {job}: step {name:?}: the recorded result does not decode: {e}")))
}

/// The progress and checkpoint a heartbeat took out of the attempt's state, until its answer
/// says they arrived. Dropped unsettled (the heartbeat's future was dropped), they are queued
/// again.
struct Owed<'a> {
    attempt: &'a Attempt,
    checkpoint: bool,
    progress: Option<Json>,
    settled: bool,
}

impl Owed<'_> {
    /// Queues the values again, unless newer ones were saved meanwhile.
    fn restore(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut state = self.attempt.state();
        if self.checkpoint {
            // The newest checkpoint is always in the state; only its flag was taken.
            state.checkpoint_dirty = true;
        }
        if state.progress.is_none() {
            state.progress = self.progress.take();
        }
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        self.restore();
    }
}

fn beat_interval(lease: Duration) -> Duration {
    (lease / HEARTBEAT_FRACTION).max(HEARTBEAT_INTERVAL_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    fn leased(lease_ms: u64) -> LeasedJob {
        serde_json::from_value(serde_json::json!({
            "id": 7, "queue": "q", "payload": {}, "priority": 0, "attempt": 1, "attempts_max": 3,
            "lease_id": "00000000000000ff", "fencing_token": 9, "lease_ms": lease_ms,
            "deadline": "2030-01-01T00:00:00Z", "created_at": "2030-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    /// A heartbeat dropped before its answer (a handler's `flush` under a timeout, an aborted
    /// handler) must not lose the checkpoint it carried: it is queued for the next one.
    #[tokio::test]
    async fn a_dropped_heartbeat_queues_its_checkpoint_again() {
        // Accepted by the kernel, never answered.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = Client::new(format!("http://{}", silent.local_addr().unwrap())).unwrap();
        let attempt = Attempt::new(client, leased(30_000), Instant::now(), Instant::now(), None);
        let ctx = attempt.context();
        ctx.save_checkpoint(&7).unwrap();
        ctx.progress(&"half").unwrap();
        assert!(attempt.checkpoint_unsent());
        let flushed = tokio::time::timeout(Duration::from_millis(200), ctx.flush()).await;
        assert!(flushed.is_err(), "the silent server never answers");
        assert!(attempt.checkpoint_unsent());
        assert_eq!(attempt.state().progress.as_ref().map(|p| p.get().to_owned()).as_deref(), Some(r#""half""#));
        assert_eq!(ctx.checkpoint::<u32>().unwrap(), Some(7));
    }

    /// Regression: a job granted at the end of a 20 s long-poll once looked nearly expired on
    /// arrival (its 30 s counted from the send), and its first heartbeat declared the lease lost.
    #[tokio::test(start_paused = true)]
    async fn a_lease_counts_from_its_arrival_less_the_transit_not_from_the_long_poll_start() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let sent_at = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        let received_at = Instant::now();
        let attempt = Attempt::new(client.clone(), leased(30_000), sent_at, received_at, None);
        let (deadline, beat_at) = {
            let state = attempt.state();
            (state.deadline, state.beat_at)
        };
        assert_eq!(deadline, received_at + Duration::from_secs(29));
        assert_eq!(beat_at, Some(received_at + Duration::from_secs(10)));
        // An immediate answer counts from the send: never later than the server's deadline.
        let sent_at = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        let attempt = Attempt::new(client, leased(30_000), sent_at, Instant::now(), None);
        assert_eq!(attempt.state().deadline, sent_at + Duration::from_secs(30));
    }

    /// Handlers run on a multi-threaded runtime: every future a handler may await on its context
    /// must be `Send`. (Regression: `cancelled` once held a `watch` guard across an await.)
    #[test]
    fn context_futures_are_send() {
        let job = leased(30_000);
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = rt.enter();
        let ctx = Attempt::new(client, job, Instant::now(), Instant::now(), None).context();
        assert_send(&ctx.cancelled());
        assert_send(&ctx.flush());
        assert_send(&ctx);
    }
}
