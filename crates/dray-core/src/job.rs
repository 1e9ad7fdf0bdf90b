//! The job model: what a job is, the states it moves through and the history it keeps.

use std::fmt;
use std::sync::Arc;

use crate::dependency::{Dependency, OnDependencyFailure};
use crate::ids::{FencingToken, JobId, LeaseId, QueueName, WorkerId, validate_name};
use crate::limits::{Invalid, Limits, check_bytes, check_range};
use crate::retry::{Backoff, RetryPolicy};
use crate::schedule::ScheduleTick;
use crate::step::Steps;
use crate::time::Timestamp;

/// Where a job is in its life. `Completed`, `Dead` and `Cancelled` are final until an operator
/// acts (a dead job can be redriven); the others are live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Waiting for its run-at time.
    Scheduled,
    /// Ready to be leased.
    Available,
    /// Leased to a worker.
    Running,
    /// Waiting out its backoff before the next attempt.
    Retrying,
    Completed,
    /// In the dead-letter queue.
    Dead,
    Cancelled,
    /// Waiting for the jobs it depends on to finish (`depends_on`). Last in the list so that the
    /// storage numbers of the other states stay what they were.
    Blocked,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retrying,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// A stable small number for storage formats and array indexes.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: usize) -> Option<JobState> {
        JobState::ALL.get(i).copied()
    }

    /// Completed, dead or cancelled: no worker will see the job again unless it is redriven.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Dead | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended in the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// Its last allowed attempt failed.
    Failed,
    /// Its last allowed attempt's lease expired (the worker vanished or stalled).
    LeaseExpired,
    /// A worker reported an error that must not be retried.
    NonRetryable,
    /// Refused before any attempt (for example by the queue's schema).
    Rejected,
}

impl DeadReason {
    pub const ALL: [DeadReason; 4] =
        [DeadReason::Failed, DeadReason::LeaseExpired, DeadReason::NonRetryable, DeadReason::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Failed => "failed",
            DeadReason::LeaseExpired => "lease_expired",
            DeadReason::NonRetryable => "non_retryable",
            DeadReason::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<DeadReason> {
        DeadReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Opaque bytes owned by the user: a payload, result, checkpoint or progress value. By convention
/// JSON text (the API checks that); the core never looks inside. Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Arc<[u8]>);

impl Payload {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Payload {
        Payload(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "{s:?}"),
            _ => write!(f, "<{} bytes>", self.0.len()),
        }
    }
}

/// A worker's claim on one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub token: FencingToken,
    pub worker: WorkerId,
    pub leased_at: Timestamp,
    /// On the server's clock. Heartbeats move it; past it the lease is dead.
    pub deadline: Timestamp,
}

/// What a history entry records. Each is one event that happened to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistoryKind {
    Enqueued,
    Promoted,
    Leased,
    Completed,
    Failed,
    Expired,
    CancelRequested,
    Cancelled,
    Redriven,
    /// A redrive was refused: the payload no longer matches the queue's schema. The job stays
    /// dead, now with reason `rejected`.
    Rejected,
    /// Every dependency finished as the job's policy requires: a blocked job may run.
    Released,
    /// The running attempt recorded a step (`Event::Step`); the entry's `error` holds the step's
    /// name. The state does not change.
    StepRecorded,
}

impl HistoryKind {
    /// Every kind, in the order of their storage index (a new kind goes at the end).
    pub const ALL: [HistoryKind; 12] = [
        HistoryKind::Enqueued,
        HistoryKind::Promoted,
        HistoryKind::Leased,
        HistoryKind::Completed,
        HistoryKind::Failed,
        HistoryKind::Expired,
        HistoryKind::CancelRequested,
        HistoryKind::Cancelled,
        HistoryKind::Redriven,
        HistoryKind::Rejected,
        HistoryKind::Released,
        HistoryKind::StepRecorded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Enqueued => "enqueued",
            HistoryKind::Promoted => "promoted",
            HistoryKind::Leased => "leased",
            HistoryKind::Completed => "completed",
            HistoryKind::Failed => "failed",
            HistoryKind::Expired => "expired",
            HistoryKind::CancelRequested => "cancel_requested",
            HistoryKind::Cancelled => "cancelled",
            HistoryKind::Redriven => "redriven",
            HistoryKind::Rejected => "rejected",
            HistoryKind::Released => "released",
            HistoryKind::StepRecorded => "step_recorded",
        }
    }
}

/// One change in a job's life: when, what, the state it led to, and the attempt and lease it
/// concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub kind: HistoryKind,
    /// The state after the event.
    pub state: JobState,
    pub attempt: u32,
    pub token: Option<FencingToken>,
    pub worker: Option<WorkerId>,
    /// The error of a failure, an expiry or a rejection. For a `StepRecorded` entry, the step's
    /// name instead (the API shows it as `step`): entries keep one shape in every store.
    pub error: Option<Box<str>>,
    /// For a move to `scheduled` or `retrying`: when the job becomes due.
    pub run_at: Option<Timestamp>,
}

/// The part of a job that changes over its life. A transition produces a whole new `JobStatus`, so
/// a store can log the result of a change and replay it without re-running any policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    pub state: JobState,
    /// When a scheduled or retrying job becomes due; for an available job, its place in line.
    pub run_at: Timestamp,
    /// Deliveries so far (since the last redrive). Counted when the lease is granted.
    pub attempt: u32,
    pub lease: Option<Lease>,
    pub cancel_requested: bool,
    pub checkpoint: Option<Payload>,
    pub progress: Option<Payload>,
    pub result: Option<Payload>,
    pub last_error: Option<Box<str>>,
    pub dead_reason: Option<DeadReason>,
    pub finished_at: Option<Timestamp>,
}

/// A request to enqueue one job, before the store gives it an id. Construct it, then `validate`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub queue: QueueName,
    pub payload: Payload,
    pub priority: i16,
    /// When the job may run; `None` means now. Never delivered before this on the server's clock.
    pub run_at: Option<Timestamp>,
    /// Relative alternative to `run_at`, resolved against the server's `now` at insert.
    pub delay_ms: Option<u64>,
    /// Overrides the queue's policy for this job.
    pub attempts_max: Option<u32>,
    pub backoff: Option<Backoff>,
    pub lease_ms: Option<u64>,
    pub idempotency_key: Option<Box<str>>,
    pub ordering_key: Option<Box<str>>,
    /// The job's group for per-group concurrency, rate and fair turns (`group_concurrency_max`,
    /// `group_rate` on the queue).
    pub group_key: Option<Box<str>>,
    pub tags: Vec<Box<str>>,
    pub traceparent: Option<Box<str>>,
    /// Set by a schedule's tick, never by a user: the tick this job was enqueued for.
    pub schedule: Option<ScheduleTick>,
    /// The jobs that must finish before this one may run; while any has not, the job is
    /// `blocked`. Checked per batch by `dependency::check_batch`.
    pub depends_on: Vec<Dependency>,
    pub on_dependency_failure: OnDependencyFailure,
}

impl NewJob {
    /// A job with every option at its default.
    pub fn new(queue: QueueName, payload: Payload) -> NewJob {
        NewJob {
            queue,
            payload,
            priority: 0,
            run_at: None,
            delay_ms: None,
            attempts_max: None,
            backoff: None,
            lease_ms: None,
            idempotency_key: None,
            ordering_key: None,
            group_key: None,
            tags: Vec::new(),
            traceparent: None,
            schedule: None,
            depends_on: Vec::new(),
            on_dependency_failure: OnDependencyFailure::Cancel,
        }
    }

    /// Checks every field against its limit; `now` bounds how far ahead `run_at` may be.
    pub fn validate(&self, now: Timestamp) -> Result<(), Invalid> {
        check_bytes("payload", self.payload.len(), Limits::PAYLOAD_BYTES_MAX)?;
        check_range("priority", self.priority, Limits::PRIORITY_MIN, Limits::PRIORITY_MAX, "")?;
        if self.run_at.is_some() && self.delay_ms.is_some() {
            return Err(Invalid::new("delay_ms", "cannot be combined with run_at"));
        }
        if let Some(delay) = self.delay_ms {
            check_range("delay_ms", delay, 0, Limits::RUN_AT_AHEAD_MS_MAX, "")?;
        }
        if let Some(run_at) = self.run_at {
            let latest = now.add_ms(Limits::RUN_AT_AHEAD_MS_MAX);
            if run_at > latest {
                return Err(Invalid::new(
                    "run_at",
                    format!("is {} ms ahead; the limit is {} ms", run_at.ms_since(now), Limits::RUN_AT_AHEAD_MS_MAX),
                ));
            }
        }
        if let Some(attempts) = self.attempts_max {
            check_range("attempts_max", attempts, 1, Limits::ATTEMPTS_MAX_MAX, "")?;
        }
        if let Some(backoff) = &self.backoff {
            backoff.validate()?;
        }
        if let Some(lease) = self.lease_ms {
            check_range("lease_ms", lease, Limits::LEASE_MS_MIN, Limits::LEASE_MS_MAX, "")?;
        }
        if let Some(key) = &self.idempotency_key {
            check_key("idempotency_key", key, Limits::IDEMPOTENCY_KEY_BYTES_MAX)?;
        }
        if let Some(key) = &self.ordering_key {
            check_key("ordering_key", key, Limits::ORDERING_KEY_BYTES_MAX)?;
        }
        if let Some(key) = &self.group_key {
            check_key("group_key", key, Limits::GROUP_KEY_BYTES_MAX)?;
        }
        if self.tags.len() > Limits::TAGS_PER_JOB_MAX {
            return Err(Invalid::new(
                "tags",
                format!("has {} tags; the limit is {}", self.tags.len(), Limits::TAGS_PER_JOB_MAX),
            ));
        }
        for tag in &self.tags {
            validate_name("tags", tag, Limits::TAG_BYTES_MAX)?;
        }
        if let Some(tp) = &self.traceparent {
            validate_traceparent(tp)?;
        }
        Ok(())
    }

    /// The first time the job may run.
    pub fn due_at(&self, now: Timestamp) -> Timestamp {
        match (self.run_at, self.delay_ms) {
            (Some(at), _) => at,
            (None, Some(delay)) => now.add_ms(delay),
            (None, None) => now,
        }
    }

    /// Turns the request into a stored job. `policy` and `lease_ms` are the queue's defaults,
    /// used where the job does not override them.
    pub fn into_job(self, id: JobId, now: Timestamp, policy: RetryPolicy, lease_ms: u64) -> Job {
        let run_at = self.due_at(now);
        let state = if run_at > now { JobState::Scheduled } else { JobState::Available };
        let retry = RetryPolicy {
            attempts_max: self.attempts_max.unwrap_or(policy.attempts_max),
            backoff: self.backoff.unwrap_or(policy.backoff),
        };
        let entry = HistoryEntry {
            at: now,
            kind: HistoryKind::Enqueued,
            state,
            attempt: 0,
            token: None,
            worker: None,
            error: None,
            run_at: (state == JobState::Scheduled).then_some(run_at),
        };
        Job {
            id,
            queue: self.queue,
            payload: self.payload,
            priority: self.priority,
            created_at: now,
            retry,
            lease_ms: self.lease_ms.unwrap_or(lease_ms),
            idempotency_key: self.idempotency_key,
            ordering_key: self.ordering_key,
            group_key: self.group_key,
            tags: self.tags.into_boxed_slice(),
            traceparent: self.traceparent,
            schedule: self.schedule,
            depends_on: Box::default(),
            on_dependency_failure: self.on_dependency_failure,
            status: JobStatus {
                state,
                run_at,
                attempt: 0,
                lease: None,
                cancel_requested: false,
                checkpoint: None,
                progress: None,
                result: None,
                last_error: None,
                dead_reason: None,
                finished_at: None,
            },
            steps: Steps::default(),
            version: 1,
            history: vec![entry],
            history_dropped: 0,
        }
    }
}

fn check_key(field: &'static str, key: &str, bytes_max: usize) -> Result<(), Invalid> {
    if key.is_empty() {
        return Err(Invalid::new(field, "must not be empty"));
    }
    check_bytes(field, key.len(), bytes_max)?;
    if key.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A W3C trace context `traceparent`: `version-traceid-parentid-flags`, lowercase hex, with
/// all-zero trace and parent ids invalid. Later versions may append fields after the flags.
pub fn validate_traceparent(tp: &str) -> Result<(), Invalid> {
    let bad = || Invalid::new("traceparent", "is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)");
    check_bytes("traceparent", tp.len(), Limits::TRACEPARENT_BYTES_MAX)?;
    let mut parts = tp.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return Err(bad());
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return Err(bad());
    }
    if version == "00" && parts.next().is_some() {
        return Err(bad());
    }
    Ok(())
}

/// A job as the store keeps it: the immutable request, its resolved policy, its current status
/// and its history.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub queue: QueueName,
    pub payload: Payload,
    pub priority: i16,
    pub created_at: Timestamp,
    pub retry: RetryPolicy,
    pub lease_ms: u64,
    pub idempotency_key: Option<Box<str>>,
    pub ordering_key: Option<Box<str>>,
    pub group_key: Option<Box<str>>,
    pub tags: Box<[Box<str>]>,
    pub traceparent: Option<Box<str>>,
    /// The schedule tick that enqueued this job, if one did.
    pub schedule: Option<ScheduleTick>,
    /// The jobs this one waited for (resolved ids, in the order the request named them).
    pub depends_on: Box<[JobId]>,
    pub on_dependency_failure: OnDependencyFailure,
    pub status: JobStatus,
    /// The steps its attempts recorded (`ctx.step`), kept across retries and redrives. Not part of
    /// the status, which is logged whole on every change: a step is logged once, when recorded.
    pub steps: Steps,
    /// Counts the changes recorded in history (the enqueue is 1). A store logs it with each change
    /// so that replaying a log over a newer snapshot can skip what the snapshot already holds.
    pub version: u32,
    pub history: Vec<HistoryEntry>,
    /// Entries dropped to keep `history` within `Limits::HISTORY_ENTRIES_MAX`.
    pub history_dropped: u32,
}

impl Job {
    pub fn state(&self) -> JobState {
        self.status.state
    }

    /// A job just made by [`NewJob::into_job`], given the ids its `depends_on` resolved to and
    /// whether it must wait for them (`dependency::verdict` said so, or it will end cancelled
    /// because one failed): then it starts `blocked`, keeping its run time for when it is
    /// released.
    pub fn with_dependencies(mut self, depends_on: Box<[JobId]>, blocked: bool) -> Job {
        assert_eq!(self.version, 1, "dependencies are set on a new job");
        self.depends_on = depends_on;
        if blocked {
            self.status.state = JobState::Blocked;
            self.history[0].state = JobState::Blocked;
            self.history[0].run_at = None;
        }
        self
    }

    /// Appends a history entry, keeping the first entry (the enqueue) and the most recent ones
    /// within the bound.
    pub fn push_history(&mut self, entry: HistoryEntry) {
        if self.history.len() >= Limits::HISTORY_ENTRIES_MAX {
            self.history.remove(1);
            self.history_dropped += 1;
        }
        self.history.push(entry);
    }
}
