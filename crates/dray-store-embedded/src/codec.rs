//! The binary encoding of log records and snapshot entries.
//!
//! Little-endian, length-prefixed, hand-written: the store's file format is ours to keep stable and
//! fast to decode (recovery speed is a product target), and serde belongs to the API crate only.
//! Every record starts with a tag byte. Decoding never panics on bad input: it returns a
//! [`DecodeError`] naming what it was reading.

use std::collections::HashMap;

use dray_core::cron::{CronRule, IntervalRule, Rule};
use dray_core::lock::{Holder, Lock};
use dray_core::schedule::LastTick;
use dray_core::{
    Backoff, Breaker, BreakerPolicy, BreakerState, DeadReason, FencingToken, HistoryEntry, HistoryKind, Job, JobId,
    JobState, JobStatus, Lease, LeaseId, LockName, LockOwner, Misfire, NewJob, OnDependencyFailure, Overlap, Payload,
    QueueName, RetryPolicy, Schedule, ScheduleName, ScheduleSpec, ScheduleTick, Step, Timestamp, WorkerId,
};
use dray_store::{FlowLimits, OrderingDead, PayloadSchema, QueueConfig, TokenRecord};

/// A change as it is logged: the result of a transition, not the request that caused it, so replay
/// never re-runs policy (and never needs the random numbers the change used).
#[derive(Debug)]
pub(crate) enum Record {
    /// A store was opened (or the token counter wrapped): fencing tokens from here on start at
    /// `epoch << EPOCH_SHIFT`, above every token issued before.
    Epoch {
        epoch: u64,
    },
    QueueUpsert(QueueConfig),
    JobInsert(Box<Job>),
    /// A job's new status. `version` is the job's version after the change; `history` is `None`
    /// for a heartbeat, which changes no state and keeps the version.
    JobUpdate {
        id: JobId,
        version: u32,
        status: Box<JobStatus>,
        history: Option<HistoryEntry>,
    },
    JobDelete {
        id: JobId,
    },
    /// A queue with no jobs was deleted (its configuration is forgotten).
    QueueDelete {
        name: QueueName,
    },
    /// First frame of a snapshot: the log segment replay starts from, and counters.
    SnapshotHeader {
        format: u32,
        seq: u64,
        epoch: u64,
        next_job_id: u64,
    },
    /// An API token, new or changed (revoked): the whole record, in the log and in snapshots
    /// (after the queues). Replaying it again is harmless.
    TokenUpsert(Box<TokenRecord>),
    /// A schedule, new or changed (a tick moves its cursor): the whole record, in the log and in
    /// snapshots. Replaying it again is harmless.
    ScheduleUpsert(Box<Schedule>),
    ScheduleDelete {
        name: ScheduleName,
    },
    /// A lock someone holds: its whole state (size and holders), in the log and in snapshots.
    /// Replaying it again is harmless.
    LockUpsert(Box<Lock>),
    /// Nobody holds the lock any more: forgotten.
    LockDelete {
        name: LockName,
    },
    /// A queue's circuit breaker after a change of state (a transition, a probe granted or
    /// succeeded, an operator's order): the whole state but its window, which is never logged.
    /// In the log and in snapshots (after the queues); replaying it again is harmless.
    BreakerUpdate {
        queue: QueueName,
        breaker: Box<Breaker>,
    },
    /// A queue backs off until `until`: a worker reported a downstream rate limit. In the log
    /// and in snapshots (after the queues); the later of two ends wins, so replaying it again is
    /// harmless.
    QueueBackoff {
        queue: QueueName,
        until: Timestamp,
    },
    /// A step a job's running attempt recorded (`Effect::StepRecorded`): the step, the history
    /// entry it adds and the job's version after it (the job's status does not change, so it is
    /// not logged). Replay skips it when the job is at that version already, like a `JobUpdate`.
    StepRecorded {
        id: JobId,
        version: u32,
        step: Box<Step>,
        history: HistoryEntry,
    },
    /// In snapshots only, right after the job's `JobInsert` frame: one of its steps, in
    /// recording order (the job record's layout stays as it is; its version and history already
    /// count the step).
    StepCopy {
        id: JobId,
        step: Box<Step>,
    },
    /// Last frame of a snapshot: without it the snapshot is incomplete.
    SnapshotEnd {
        jobs: u64,
        queues: u64,
    },
}

pub(crate) const SNAPSHOT_FORMAT: u32 = 1;

const TAG_EPOCH: u8 = 1;
const TAG_QUEUE_UPSERT: u8 = 2;
const TAG_JOB_INSERT: u8 = 3;
const TAG_JOB_UPDATE: u8 = 4;
const TAG_JOB_DELETE: u8 = 5;
const TAG_SNAPSHOT_HEADER: u8 = 6;
const TAG_SNAPSHOT_END: u8 = 7;
const TAG_QUEUE_DELETE: u8 = 8;
const TAG_TOKEN_UPSERT: u8 = 9;
const TAG_SCHEDULE_UPSERT: u8 = 10;
const TAG_SCHEDULE_DELETE: u8 = 11;
// Locks use tags 20..=29.
const TAG_LOCK_UPSERT: u8 = 20;
const TAG_LOCK_DELETE: u8 = 21;
// Circuit breakers use tags 30..=39.
const TAG_BREAKER_UPDATE: u8 = 30;
// Queue back-offs (downstream rate limits) use tags 40..=49.
const TAG_QUEUE_BACKOFF: u8 = 40;
// Steps inside a job use tags 50..=54.
const TAG_STEP_RECORD: u8 = 50;
const TAG_STEP_COPY: u8 = 51;

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what} at byte {offset} of a record")]
pub(crate) struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
}

// ---------------------------------------------------------------------------------------------
// Log frames: one operation's records, each prefixed by its length, in one frame, so the CRC of
// the frame makes the operation reach the disk all or nothing (a batch insert torn by a crash
// leaves no part of the batch behind).

/// Appends one length-prefixed record to a log frame being built.
pub(crate) fn push_record(buf: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    encode(buf);
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes every record of a log frame, in order.
pub(crate) fn decode_frame(
    frame: &[u8],
    names: &mut Names,
    mut f: impl FnMut(Record) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0;
    while pos < frame.len() {
        let Some(len_bytes) = frame.get(pos..pos + 4) else {
            return Err(format!("record length cut off at byte {pos} of a frame"));
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let Some(record) = frame.get(pos + 4..pos + 4 + len) else {
            return Err(format!("record at byte {pos} of a frame runs past its end"));
        };
        f(decode(record, names).map_err(|e| format!("{e} (record at byte {pos} of its frame)"))?)?;
        pos += 4 + len;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding

pub(crate) fn encode_epoch(buf: &mut Vec<u8>, epoch: u64) {
    buf.push(TAG_EPOCH);
    put_u64(buf, epoch);
}

pub(crate) fn encode_queue_upsert(buf: &mut Vec<u8>, config: &QueueConfig) {
    buf.push(TAG_QUEUE_UPSERT);
    put_str(buf, config.name.as_str());
    put_retry(buf, &config.retry);
    put_u64(buf, config.lease_ms);
    put_u64(buf, config.retention_ms);
    put_u64(buf, config.retention_dead_ms);
    buf.push(config.paused as u8);
    // Added after the first release: a record that ends here (written by an older version) has
    // no schema.
    put_opt_str(buf, config.payload_schema.as_ref().map(|s| s.as_str()));
    // Added later still: a record that ends before it blocks on dead jobs (the default).
    buf.push(match config.ordering_dead {
        OrderingDead::Block => 0,
        OrderingDead::Skip => 1,
    });
    // Added with flow limits: a record that ends before them has none.
    let l = &config.limits;
    put_opt_u32(buf, l.concurrency_max);
    put_opt_u32(buf, l.group_concurrency_max);
    put_opt_rate(buf, l.rate);
    put_opt_rate(buf, l.group_rate);
    // Added with circuit breakers, after the flow limits: a record that ends before it has no
    // breaker.
    match &config.breaker {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            put_u64(buf, b.failure_ratio.to_bits());
            put_u64(buf, b.window_ms);
            put_u32(buf, b.min_attempts);
            put_u64(buf, b.open_ms);
            put_u32(buf, b.probes);
        }
    }
}

pub(crate) fn encode_queue_backoff(buf: &mut Vec<u8>, queue: &QueueName, until: Timestamp) {
    buf.push(TAG_QUEUE_BACKOFF);
    put_str(buf, queue.as_str());
    put_i64(buf, until.0);
}

pub(crate) fn encode_breaker_update(buf: &mut Vec<u8>, queue: &QueueName, b: &Breaker) {
    buf.push(TAG_BREAKER_UPDATE);
    put_str(buf, queue.as_str());
    buf.push(match b.state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    });
    buf.push(b.forced as u8);
    put_opt_i64(buf, b.changed_at.map(|t| t.0));
    put_opt_i64(buf, b.half_open_at.map(|t| t.0));
    put_u32(buf, b.probes_granted);
    put_u32(buf, b.probes_succeeded);
    for n in b.transitions {
        put_u64(buf, n);
    }
}

fn put_opt_u32(buf: &mut Vec<u8>, v: Option<u32>) {
    match v {
        None => buf.push(0),
        Some(n) => {
            buf.push(1);
            put_u32(buf, n);
        }
    }
}

fn put_opt_rate(buf: &mut Vec<u8>, v: Option<dray_core::Rate>) {
    match v {
        None => buf.push(0),
        Some(r) => {
            buf.push(1);
            put_u32(buf, r.limit);
            put_u64(buf, r.per_ms);
            put_u32(buf, r.burst);
        }
    }
}

pub(crate) fn encode_job_insert(buf: &mut Vec<u8>, job: &Job) {
    buf.push(TAG_JOB_INSERT);
    put_u64(buf, job.id.0);
    put_str(buf, job.queue.as_str());
    put_bytes(buf, job.payload.as_bytes());
    buf.extend_from_slice(&job.priority.to_le_bytes());
    put_i64(buf, job.created_at.0);
    put_retry(buf, &job.retry);
    put_u64(buf, job.lease_ms);
    put_opt_str(buf, job.idempotency_key.as_deref());
    put_opt_str(buf, job.ordering_key.as_deref());
    put_u32(buf, job.tags.len() as u32);
    for tag in &job.tags {
        put_str(buf, tag);
    }
    put_opt_str(buf, job.traceparent.as_deref());
    put_status(buf, &job.status);
    put_u32(buf, job.version);
    put_u32(buf, job.history_dropped);
    put_u32(buf, job.history.len() as u32);
    for entry in &job.history {
        put_history(buf, entry);
    }
    // Added after the first release: a record that ends here has no schedule tick, and one that
    // goes on with a name's length holds just the tick.
    let dependencies = !job.depends_on.is_empty() || job.on_dependency_failure != OnDependencyFailure::Cancel;
    if job.group_key.is_none() && !dependencies {
        if let Some(tick) = &job.schedule {
            put_str(buf, tick.name.as_str());
            put_i64(buf, tick.at.0);
        }
        return;
    }
    // Added later: EXTENSION_MARK (never a schedule name's length), then the optional tick and
    // the group key.
    put_u32(buf, EXTENSION_MARK);
    match &job.schedule {
        None => buf.push(0),
        Some(tick) => {
            buf.push(1);
            put_str(buf, tick.name.as_str());
            put_i64(buf, tick.at.0);
        }
    }
    put_opt_str(buf, job.group_key.as_deref());
    // Added with dependencies: a record that ends after the group key has none.
    if dependencies {
        put_u32(buf, job.depends_on.len() as u32);
        for id in job.depends_on.iter() {
            put_u64(buf, id.0);
        }
        buf.push(match job.on_dependency_failure {
            OnDependencyFailure::Cancel => 0,
            OnDependencyFailure::Run => 1,
        });
    }
}

/// Where a job record's optional tail starts with this instead of a schedule name's length, the
/// tail holds the later optional fields too.
const EXTENSION_MARK: u32 = u32::MAX;

pub(crate) fn encode_job_update(
    buf: &mut Vec<u8>,
    id: JobId,
    version: u32,
    status: &JobStatus,
    history: Option<&HistoryEntry>,
) {
    buf.push(TAG_JOB_UPDATE);
    put_u64(buf, id.0);
    put_u32(buf, version);
    put_status(buf, status);
    match history {
        None => buf.push(0),
        Some(entry) => {
            buf.push(1);
            put_history(buf, entry);
        }
    }
}

pub(crate) fn encode_step_record(buf: &mut Vec<u8>, id: JobId, version: u32, step: &Step, history: &HistoryEntry) {
    buf.push(TAG_STEP_RECORD);
    put_u64(buf, id.0);
    put_u32(buf, version);
    put_step(buf, step);
    put_history(buf, history);
}

pub(crate) fn encode_step_copy(buf: &mut Vec<u8>, id: JobId, step: &Step) {
    buf.push(TAG_STEP_COPY);
    put_u64(buf, id.0);
    put_step(buf, step);
}

fn put_step(buf: &mut Vec<u8>, step: &Step) {
    put_str(buf, &step.name);
    put_bytes(buf, step.result.as_bytes());
    put_i64(buf, step.at.0);
    put_u32(buf, step.attempt);
}

pub(crate) fn encode_job_delete(buf: &mut Vec<u8>, id: JobId) {
    buf.push(TAG_JOB_DELETE);
    put_u64(buf, id.0);
}

pub(crate) fn encode_queue_delete(buf: &mut Vec<u8>, name: &QueueName) {
    buf.push(TAG_QUEUE_DELETE);
    put_str(buf, name.as_str());
}

pub(crate) fn encode_token_upsert(buf: &mut Vec<u8>, token: &TokenRecord) {
    buf.push(TAG_TOKEN_UPSERT);
    put_str(buf, &token.id);
    put_str(buf, &token.name);
    put_u32(buf, token.scopes.len() as u32);
    for scope in &token.scopes {
        put_str(buf, &scope.to_string());
    }
    buf.extend_from_slice(&token.hash);
    put_i64(buf, token.created_at.0);
    put_opt_i64(buf, token.expires_at.map(|t| t.0));
    put_opt_i64(buf, token.revoked_at.map(|t| t.0));
}

pub(crate) fn encode_schedule_upsert(buf: &mut Vec<u8>, s: &Schedule) {
    buf.push(TAG_SCHEDULE_UPSERT);
    let spec = &s.spec;
    put_str(buf, spec.name.as_str());
    let t = &spec.template;
    put_str(buf, t.queue.as_str());
    put_bytes(buf, t.payload.as_bytes());
    buf.extend_from_slice(&t.priority.to_le_bytes());
    put_opt_i64(buf, t.attempts_max.map(i64::from));
    match &t.backoff {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            put_u64(buf, b.base_ms);
            put_u64(buf, b.factor.to_bits());
            put_u64(buf, b.cap_ms);
        }
    }
    put_opt_i64(buf, t.lease_ms.map(|ms| ms as i64));
    put_opt_str(buf, t.ordering_key.as_deref());
    put_u32(buf, t.tags.len() as u32);
    for tag in &t.tags {
        put_str(buf, tag);
    }
    put_opt_str(buf, t.traceparent.as_deref());
    match &spec.rule {
        Rule::Cron(c) => {
            buf.push(0);
            put_str(buf, c.expr());
            put_str(buf, c.zone());
        }
        Rule::Interval(i) => {
            buf.push(1);
            put_u64(buf, i.every_ms());
            put_i64(buf, i.anchor().0);
        }
    }
    match spec.misfire {
        Misfire::RunOnce => buf.push(0),
        Misfire::Skip => buf.push(1),
        Misfire::RunAll { cap } => {
            buf.push(2);
            put_u32(buf, cap);
        }
    }
    buf.push(Overlap::ALL.iter().position(|o| *o == spec.overlap).unwrap_or(0) as u8);
    put_u64(buf, spec.jitter_ms);
    put_u64(buf, spec.misfire_grace_ms);
    buf.push(spec.paused as u8);
    put_i64(buf, s.created_at.0);
    put_i64(buf, s.updated_at.0);
    put_opt_i64(buf, s.next_at.map(|t| t.0));
    match &s.last {
        None => buf.push(0),
        Some(last) => {
            buf.push(1);
            put_i64(buf, last.at.0);
            put_u64(buf, last.job.0);
            put_i64(buf, last.fired_at.0);
        }
    }
}

pub(crate) fn encode_schedule_delete(buf: &mut Vec<u8>, name: &ScheduleName) {
    buf.push(TAG_SCHEDULE_DELETE);
    put_str(buf, name.as_str());
}

pub(crate) fn encode_lock_upsert(buf: &mut Vec<u8>, lock: &Lock) {
    buf.push(TAG_LOCK_UPSERT);
    put_str(buf, lock.name.as_str());
    put_u32(buf, lock.permits);
    put_u32(buf, lock.holders.len() as u32);
    for h in &lock.holders {
        put_str(buf, h.owner.as_str());
        put_u64(buf, h.token.0);
        put_i64(buf, h.acquired_at.0);
        put_i64(buf, h.deadline.0);
        put_u64(buf, h.ttl_ms);
    }
}

pub(crate) fn encode_lock_delete(buf: &mut Vec<u8>, name: &LockName) {
    buf.push(TAG_LOCK_DELETE);
    put_str(buf, name.as_str());
}

pub(crate) fn encode_snapshot_header(buf: &mut Vec<u8>, seq: u64, epoch: u64, next_job_id: u64) {
    buf.push(TAG_SNAPSHOT_HEADER);
    put_u32(buf, SNAPSHOT_FORMAT);
    put_u64(buf, seq);
    put_u64(buf, epoch);
    put_u64(buf, next_job_id);
}

pub(crate) fn encode_snapshot_end(buf: &mut Vec<u8>, jobs: u64, queues: u64) {
    buf.push(TAG_SNAPSHOT_END);
    put_u64(buf, jobs);
    put_u64(buf, queues);
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, v: &[u8]) {
    put_u32(buf, v.len() as u32);
    buf.extend_from_slice(v);
}

fn put_str(buf: &mut Vec<u8>, v: &str) {
    put_bytes(buf, v.as_bytes());
}

fn put_opt_str(buf: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

fn put_opt_bytes(buf: &mut Vec<u8>, v: Option<&Payload>) {
    match v {
        None => buf.push(0),
        Some(p) => {
            buf.push(1);
            put_bytes(buf, p.as_bytes());
        }
    }
}

fn put_opt_i64(buf: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => buf.push(0),
        Some(x) => {
            buf.push(1);
            put_i64(buf, x);
        }
    }
}

fn put_retry(buf: &mut Vec<u8>, r: &RetryPolicy) {
    put_u32(buf, r.attempts_max);
    put_u64(buf, r.backoff.base_ms);
    put_u64(buf, r.backoff.factor.to_bits());
    put_u64(buf, r.backoff.cap_ms);
}

fn put_status(buf: &mut Vec<u8>, s: &JobStatus) {
    buf.push(s.state.index() as u8);
    put_i64(buf, s.run_at.0);
    put_u32(buf, s.attempt);
    match &s.lease {
        None => buf.push(0),
        Some(l) => {
            buf.push(1);
            put_u64(buf, l.id.0);
            put_u64(buf, l.token.0);
            put_str(buf, l.worker.as_str());
            put_i64(buf, l.leased_at.0);
            put_i64(buf, l.deadline.0);
        }
    }
    buf.push(s.cancel_requested as u8);
    put_opt_bytes(buf, s.checkpoint.as_ref());
    put_opt_bytes(buf, s.progress.as_ref());
    put_opt_bytes(buf, s.result.as_ref());
    put_opt_str(buf, s.last_error.as_deref());
    buf.push(s.dead_reason.map_or(0, |r| 1 + DeadReason::ALL.iter().position(|x| *x == r).unwrap_or(0) as u8));
    put_opt_i64(buf, s.finished_at.map(|t| t.0));
}

fn put_history(buf: &mut Vec<u8>, h: &HistoryEntry) {
    put_i64(buf, h.at.0);
    buf.push(HistoryKind::ALL.iter().position(|k| *k == h.kind).unwrap_or(0) as u8);
    buf.push(h.state.index() as u8);
    put_u32(buf, h.attempt);
    match h.token {
        None => buf.push(0),
        Some(t) => {
            buf.push(1);
            put_u64(buf, t.0);
        }
    }
    put_opt_str(buf, h.worker.as_ref().map(|w| w.as_str()));
    put_opt_str(buf, h.error.as_deref());
    put_opt_i64(buf, h.run_at.map(|t| t.0));
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Shares queue and worker names while decoding, so recovering millions of jobs allocates (and
/// validates) each name once.
#[derive(Debug, Default)]
pub(crate) struct Names {
    queues: HashMap<Box<str>, QueueName>,
    workers: HashMap<Box<str>, WorkerId>,
}

impl Names {
    fn queue(&mut self, s: &str) -> Option<QueueName> {
        if let Some(q) = self.queues.get(s) {
            return Some(q.clone());
        }
        let q = QueueName::new(s).ok()?;
        self.queues.insert(s.into(), q.clone());
        Some(q)
    }

    fn worker(&mut self, s: &str) -> Option<WorkerId> {
        if let Some(w) = self.workers.get(s) {
            return Some(w.clone());
        }
        let w = WorkerId::new(s).ok()?;
        if self.workers.len() < 100_000 {
            self.workers.insert(s.into(), w.clone());
        }
        Some(w)
    }
}

pub(crate) fn decode(buf: &[u8], names: &mut Names) -> Result<Record, DecodeError> {
    let mut d = Dec { buf, pos: 0 };
    let record = match d.u8("tag")? {
        TAG_EPOCH => Record::Epoch { epoch: d.u64("epoch")? },
        TAG_QUEUE_UPSERT => Record::QueueUpsert(QueueConfig {
            name: d.queue(names)?,
            retry: d.retry()?,
            lease_ms: d.u64("lease_ms")?,
            retention_ms: d.u64("retention_ms")?,
            retention_dead_ms: d.u64("retention_dead_ms")?,
            paused: d.bool("paused")?,
            payload_schema: if d.at_end() { None } else { d.opt_str("payload_schema")?.map(PayloadSchema::new) },
            ordering_dead: if d.at_end() {
                OrderingDead::Block
            } else {
                match d.bool("ordering_dead")? {
                    false => OrderingDead::Block,
                    true => OrderingDead::Skip,
                }
            },
            limits: if d.at_end() {
                FlowLimits::default()
            } else {
                FlowLimits {
                    concurrency_max: d.opt_u32("concurrency_max")?,
                    group_concurrency_max: d.opt_u32("group_concurrency_max")?,
                    rate: d.opt_rate("rate")?,
                    group_rate: d.opt_rate("group_rate")?,
                }
            },
            breaker: if d.at_end() || !d.bool("breaker")? {
                None
            } else {
                Some(BreakerPolicy {
                    failure_ratio: f64::from_bits(d.u64("breaker failure_ratio")?),
                    window_ms: d.u64("breaker window_ms")?,
                    min_attempts: d.u32("breaker min_attempts")?,
                    open_ms: d.u64("breaker open_ms")?,
                    probes: d.u32("breaker probes")?,
                })
            },
        }),
        TAG_QUEUE_BACKOFF => Record::QueueBackoff { queue: d.queue(names)?, until: Timestamp(d.i64("backoff until")?) },
        TAG_BREAKER_UPDATE => {
            let queue = d.queue(names)?;
            let state = match d.u8("breaker state")? {
                0 => BreakerState::Closed,
                1 => BreakerState::Open,
                2 => BreakerState::HalfOpen,
                _ => return Err(DecodeError { what: "breaker state", offset: d.pos - 1 }),
            };
            let mut breaker = Breaker::new();
            breaker.state = state;
            breaker.forced = d.bool("breaker forced")?;
            breaker.changed_at = d.opt_i64("breaker changed_at")?.map(Timestamp);
            breaker.half_open_at = d.opt_i64("breaker half_open_at")?.map(Timestamp);
            breaker.probes_granted = d.u32("breaker probes_granted")?;
            breaker.probes_succeeded = d.u32("breaker probes_succeeded")?;
            for n in &mut breaker.transitions {
                *n = d.u64("breaker transitions")?;
            }
            Record::BreakerUpdate { queue, breaker: Box::new(breaker) }
        }
        TAG_JOB_INSERT => Record::JobInsert(Box::new(d.job(names)?)),
        TAG_JOB_UPDATE => {
            let id = JobId(d.u64("job id")?);
            let version = d.u32("version")?;
            let status = Box::new(d.status(names)?);
            let history = if d.bool("history flag")? { Some(d.history(names)?) } else { None };
            Record::JobUpdate { id, version, status, history }
        }
        TAG_JOB_DELETE => Record::JobDelete { id: JobId(d.u64("job id")?) },
        TAG_STEP_RECORD => Record::StepRecorded {
            id: JobId(d.u64("job id")?),
            version: d.u32("version")?,
            step: Box::new(d.step()?),
            history: d.history(names)?,
        },
        TAG_STEP_COPY => Record::StepCopy { id: JobId(d.u64("job id")?), step: Box::new(d.step()?) },
        TAG_QUEUE_DELETE => Record::QueueDelete { name: d.queue(names)? },
        TAG_SNAPSHOT_HEADER => Record::SnapshotHeader {
            format: d.u32("format")?,
            seq: d.u64("seq")?,
            epoch: d.u64("epoch")?,
            next_job_id: d.u64("next job id")?,
        },
        TAG_TOKEN_UPSERT => Record::TokenUpsert(Box::new(d.token()?)),
        TAG_SCHEDULE_UPSERT => Record::ScheduleUpsert(Box::new(d.schedule(names)?)),
        TAG_SCHEDULE_DELETE => Record::ScheduleDelete { name: d.schedule_name()? },
        TAG_LOCK_UPSERT => Record::LockUpsert(Box::new(d.lock()?)),
        TAG_LOCK_DELETE => Record::LockDelete { name: d.lock_name()? },
        TAG_SNAPSHOT_END => Record::SnapshotEnd { jobs: d.u64("jobs")?, queues: d.u64("queues")? },
        _ => return Err(DecodeError { what: "tag", offset: 0 }),
    };
    if d.pos != buf.len() {
        return Err(DecodeError { what: "end of record (trailing bytes)", offset: d.pos });
    }
    Ok(record)
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else { return Err(DecodeError { what, offset: self.pos }) };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Every byte of the record is read: an optional field added later is absent.
    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError { what, offset: self.pos - 1 }),
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes(what)?).map_err(|_| DecodeError { what, offset: at })
    }

    fn opt_str(&mut self, what: &'static str) -> Result<Option<Box<str>>, DecodeError> {
        Ok(if self.bool(what)? { Some(self.str(what)?.into()) } else { None })
    }

    fn opt_u32(&mut self, what: &'static str) -> Result<Option<u32>, DecodeError> {
        Ok(if self.bool(what)? { Some(self.u32(what)?) } else { None })
    }

    fn opt_rate(&mut self, what: &'static str) -> Result<Option<dray_core::Rate>, DecodeError> {
        if !self.bool(what)? {
            return Ok(None);
        }
        Ok(Some(dray_core::Rate { limit: self.u32(what)?, per_ms: self.u64(what)?, burst: self.u32(what)? }))
    }

    fn opt_payload(&mut self, what: &'static str) -> Result<Option<Payload>, DecodeError> {
        Ok(if self.bool(what)? { Some(Payload::new(self.bytes(what)?)) } else { None })
    }

    fn opt_i64(&mut self, what: &'static str) -> Result<Option<i64>, DecodeError> {
        Ok(if self.bool(what)? { Some(self.i64(what)?) } else { None })
    }

    fn queue(&mut self, names: &mut Names) -> Result<QueueName, DecodeError> {
        let at = self.pos;
        let s = self.str("queue name")?;
        names.queue(s).ok_or(DecodeError { what: "queue name", offset: at })
    }

    fn state(&mut self, what: &'static str) -> Result<JobState, DecodeError> {
        let at = self.pos;
        JobState::from_index(self.u8(what)? as usize).ok_or(DecodeError { what, offset: at })
    }

    fn retry(&mut self) -> Result<RetryPolicy, DecodeError> {
        Ok(RetryPolicy {
            attempts_max: self.u32("attempts_max")?,
            backoff: Backoff {
                base_ms: self.u64("backoff base")?,
                factor: f64::from_bits(self.u64("backoff factor")?),
                cap_ms: self.u64("backoff cap")?,
            },
        })
    }

    fn status(&mut self, names: &mut Names) -> Result<JobStatus, DecodeError> {
        let state = self.state("state")?;
        let run_at = Timestamp(self.i64("run_at")?);
        let attempt = self.u32("attempt")?;
        let lease = if self.bool("lease flag")? {
            let id = LeaseId(self.u64("lease id")?);
            let token = FencingToken(self.u64("fencing token")?);
            let at = self.pos;
            let worker = self.str("worker")?;
            let worker = names.worker(worker).ok_or(DecodeError { what: "worker", offset: at })?;
            Some(Lease {
                id,
                token,
                worker,
                leased_at: Timestamp(self.i64("leased_at")?),
                deadline: Timestamp(self.i64("deadline")?),
            })
        } else {
            None
        };
        let cancel_requested = self.bool("cancel_requested")?;
        let checkpoint = self.opt_payload("checkpoint")?;
        let progress = self.opt_payload("progress")?;
        let result = self.opt_payload("result")?;
        let last_error = self.opt_str("last_error")?;
        let at = self.pos;
        let dead_reason = match self.u8("dead_reason")? {
            0 => None,
            n => Some(*DeadReason::ALL.get(n as usize - 1).ok_or(DecodeError { what: "dead_reason", offset: at })?),
        };
        let finished_at = self.opt_i64("finished_at")?.map(Timestamp);
        Ok(JobStatus {
            state,
            run_at,
            attempt,
            lease,
            cancel_requested,
            checkpoint,
            progress,
            result,
            last_error,
            dead_reason,
            finished_at,
        })
    }

    fn history(&mut self, names: &mut Names) -> Result<HistoryEntry, DecodeError> {
        let at = Timestamp(self.i64("history time")?);
        let kind_at = self.pos;
        let kind = *HistoryKind::ALL
            .get(self.u8("history kind")? as usize)
            .ok_or(DecodeError { what: "history kind", offset: kind_at })?;
        let state = self.state("history state")?;
        let attempt = self.u32("history attempt")?;
        let token =
            if self.bool("history token flag")? { Some(FencingToken(self.u64("history token")?)) } else { None };
        let worker = match self.opt_str("history worker")? {
            None => None,
            Some(w) => Some(names.worker(&w).ok_or(DecodeError { what: "history worker", offset: self.pos })?),
        };
        let error = self.opt_str("history error")?;
        let run_at = self.opt_i64("history run_at")?.map(Timestamp);
        Ok(HistoryEntry { at, kind, state, attempt, token, worker, error, run_at })
    }

    /// A step, within the bounds it was written under (the paired assertion of
    /// `dray_core::step::validate`, without re-reading the JSON).
    fn step(&mut self) -> Result<Step, DecodeError> {
        let at = self.pos;
        let name = self.str("step name")?;
        if name.is_empty() || name.len() > dray_core::Limits::STEP_NAME_BYTES_MAX {
            return Err(DecodeError { what: "step name", offset: at });
        }
        let at = self.pos;
        let result = self.bytes("step result")?;
        if result.is_empty() || result.len() > dray_core::Limits::STEP_RESULT_BYTES_MAX {
            return Err(DecodeError { what: "step result", offset: at });
        }
        Ok(Step {
            name: name.into(),
            result: Payload::new(result),
            at: Timestamp(self.i64("step time")?),
            attempt: self.u32("step attempt")?,
        })
    }

    fn lock_name(&mut self) -> Result<LockName, DecodeError> {
        let at = self.pos;
        LockName::new(self.str("lock name")?).map_err(|_| DecodeError { what: "lock name", offset: at })
    }

    fn lock(&mut self) -> Result<Lock, DecodeError> {
        let name = self.lock_name()?;
        let permits = self.u32("lock permits")?;
        if permits == 0 || permits > dray_core::Limits::LOCK_PERMITS_MAX {
            return Err(DecodeError { what: "lock permits", offset: self.pos - 4 });
        }
        let count = self.u32("lock holder count")?;
        if count > permits {
            return Err(DecodeError { what: "lock holder count", offset: self.pos - 4 });
        }
        let mut holders = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let at = self.pos;
            let owner =
                LockOwner::new(self.str("lock owner")?).map_err(|_| DecodeError { what: "lock owner", offset: at })?;
            holders.push(Holder {
                owner,
                token: FencingToken(self.u64("lock token")?),
                acquired_at: Timestamp(self.i64("lock acquired_at")?),
                deadline: Timestamp(self.i64("lock deadline")?),
                ttl_ms: self.u64("lock ttl_ms")?,
            });
        }
        Ok(Lock { name, permits, holders })
    }

    fn token(&mut self) -> Result<TokenRecord, DecodeError> {
        let id = self.str("token id")?.to_owned();
        let name = self.str("token name")?.to_owned();
        let count = self.u32("token scope count")? as usize;
        if count > dray_core::Scope::PER_TOKEN_MAX {
            return Err(DecodeError { what: "token scope count", offset: self.pos });
        }
        let mut scopes = Vec::with_capacity(count);
        for _ in 0..count {
            let at = self.pos;
            let text = self.str("token scope")?;
            scopes.push(dray_core::Scope::parse(text).map_err(|_| DecodeError { what: "token scope", offset: at })?);
        }
        let hash = self.array::<32>("token hash")?;
        let created_at = Timestamp(self.i64("token created_at")?);
        let expires_at = self.opt_i64("token expires_at")?.map(Timestamp);
        let revoked_at = self.opt_i64("token revoked_at")?.map(Timestamp);
        Ok(TokenRecord { id, name, scopes, hash, created_at, expires_at, revoked_at })
    }

    fn job(&mut self, names: &mut Names) -> Result<Job, DecodeError> {
        let id = JobId(self.u64("job id")?);
        let queue = self.queue(names)?;
        let payload = Payload::new(self.bytes("payload")?);
        let priority = i16::from_le_bytes(self.array("priority")?);
        let created_at = Timestamp(self.i64("created_at")?);
        let retry = self.retry()?;
        let lease_ms = self.u64("lease_ms")?;
        let idempotency_key = self.opt_str("idempotency_key")?;
        let ordering_key = self.opt_str("ordering_key")?;
        let tag_count = self.u32("tag count")? as usize;
        if tag_count > dray_core::Limits::TAGS_PER_JOB_MAX {
            return Err(DecodeError { what: "tag count", offset: self.pos });
        }
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            tags.push(Box::<str>::from(self.str("tag")?));
        }
        let traceparent = self.opt_str("traceparent")?;
        let status = self.status(names)?;
        let version = self.u32("version")?;
        let history_dropped = self.u32("history_dropped")?;
        let history_len = self.u32("history length")? as usize;
        if history_len > dray_core::Limits::HISTORY_ENTRIES_MAX {
            return Err(DecodeError { what: "history length", offset: self.pos });
        }
        let mut history = Vec::with_capacity(history_len);
        for _ in 0..history_len {
            history.push(self.history(names)?);
        }
        let (mut schedule, mut group_key) = (None, None);
        let (mut depends_on, mut on_dependency_failure) = (Vec::new(), OnDependencyFailure::Cancel);
        if !self.at_end() {
            if self.buf[self.pos..].starts_with(&EXTENSION_MARK.to_le_bytes()) {
                self.u32("extension mark")?;
                if self.bool("schedule tick flag")? {
                    schedule =
                        Some(ScheduleTick { name: self.schedule_name()?, at: Timestamp(self.i64("schedule tick")?) });
                }
                group_key = self.opt_str("group_key")?;
                if !self.at_end() {
                    let count = self.u32("dependency count")? as usize;
                    if count > dray_core::Limits::DEPENDS_ON_MAX {
                        return Err(DecodeError { what: "dependency count", offset: self.pos });
                    }
                    for _ in 0..count {
                        depends_on.push(JobId(self.u64("dependency")?));
                    }
                    let at = self.pos;
                    on_dependency_failure = match self.u8("on_dependency_failure")? {
                        0 => OnDependencyFailure::Cancel,
                        1 => OnDependencyFailure::Run,
                        _ => return Err(DecodeError { what: "on_dependency_failure", offset: at }),
                    };
                }
            } else {
                schedule =
                    Some(ScheduleTick { name: self.schedule_name()?, at: Timestamp(self.i64("schedule tick")?) });
            }
        }
        Ok(Job {
            id,
            queue,
            payload,
            priority,
            created_at,
            retry,
            lease_ms,
            idempotency_key,
            ordering_key,
            group_key,
            tags: tags.into_boxed_slice(),
            traceparent,
            schedule,
            depends_on: depends_on.into_boxed_slice(),
            on_dependency_failure,
            status,
            // Never in this record: a snapshot copies them in `StepCopy` frames after it.
            steps: dray_core::Steps::default(),
            version,
            history,
            history_dropped,
        })
    }

    fn schedule_name(&mut self) -> Result<ScheduleName, DecodeError> {
        let at = self.pos;
        ScheduleName::new(self.str("schedule name")?).map_err(|_| DecodeError { what: "schedule name", offset: at })
    }

    fn schedule(&mut self, names: &mut Names) -> Result<Schedule, DecodeError> {
        let name = self.schedule_name()?;
        let queue = self.queue(names)?;
        let payload = Payload::new(self.bytes("template payload")?);
        let mut template = NewJob::new(queue, payload);
        template.priority = i16::from_le_bytes(self.array("template priority")?);
        let at = self.pos;
        template.attempts_max = match self.opt_i64("template attempts_max")? {
            None => None,
            Some(n) => Some(u32::try_from(n).map_err(|_| DecodeError { what: "template attempts_max", offset: at })?),
        };
        template.backoff = if self.bool("template backoff flag")? {
            Some(Backoff {
                base_ms: self.u64("template backoff base")?,
                factor: f64::from_bits(self.u64("template backoff factor")?),
                cap_ms: self.u64("template backoff cap")?,
            })
        } else {
            None
        };
        template.lease_ms = self.opt_i64("template lease_ms")?.map(|ms| ms as u64);
        template.ordering_key = self.opt_str("template ordering_key")?;
        let tag_count = self.u32("template tag count")? as usize;
        if tag_count > dray_core::Limits::TAGS_PER_JOB_MAX {
            return Err(DecodeError { what: "template tag count", offset: self.pos });
        }
        for _ in 0..tag_count {
            template.tags.push(Box::<str>::from(self.str("template tag")?));
        }
        template.traceparent = self.opt_str("template traceparent")?;
        let at = self.pos;
        let bad_rule = |_| DecodeError { what: "schedule rule", offset: at };
        let rule = match self.u8("schedule rule kind")? {
            0 => {
                let expr = self.str("cron expression")?;
                let zone = self.str("time zone")?;
                Rule::Cron(CronRule::parse(expr, zone).map_err(bad_rule)?)
            }
            1 => {
                let every_ms = self.u64("every_ms")?;
                let anchor = Timestamp(self.i64("anchor")?);
                Rule::Interval(IntervalRule::new(every_ms, anchor).map_err(bad_rule)?)
            }
            _ => return Err(DecodeError { what: "schedule rule kind", offset: at }),
        };
        let at = self.pos;
        let misfire = match self.u8("misfire")? {
            0 => Misfire::RunOnce,
            1 => Misfire::Skip,
            2 => Misfire::RunAll { cap: self.u32("misfire cap")? },
            _ => return Err(DecodeError { what: "misfire", offset: at }),
        };
        let at = self.pos;
        let overlap =
            *Overlap::ALL.get(self.u8("overlap")? as usize).ok_or(DecodeError { what: "overlap", offset: at })?;
        let jitter_ms = self.u64("jitter_ms")?;
        let misfire_grace_ms = self.u64("misfire_grace_ms")?;
        let paused = self.bool("paused")?;
        let created_at = Timestamp(self.i64("created_at")?);
        let updated_at = Timestamp(self.i64("updated_at")?);
        let next_at = self.opt_i64("next_at")?.map(Timestamp);
        let last = if self.bool("last tick flag")? {
            Some(LastTick {
                at: Timestamp(self.i64("last tick")?),
                job: JobId(self.u64("last tick job")?),
                fired_at: Timestamp(self.i64("last tick fired_at")?),
            })
        } else {
            None
        };
        let spec = ScheduleSpec { name, template, rule, misfire, overlap, jitter_ms, misfire_grace_ms, paused };
        Ok(Schedule { spec, created_at, updated_at, next_at, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock record round-trips every field; a lock with more holders than permits is refused.
    #[test]
    fn lock_records_round_trip() {
        let holder = |owner: &str, token: u64| Holder {
            owner: LockOwner::new(owner).unwrap(),
            token: FencingToken(token),
            acquired_at: Timestamp(5),
            deadline: Timestamp(1_005),
            ttl_ms: 1_000,
        };
        let lock = Lock {
            name: LockName::new("orders.42").unwrap(),
            permits: 2,
            holders: vec![holder("a ü", 7), holder("b", 9)],
        };
        let mut buf = Vec::new();
        encode_lock_upsert(&mut buf, &lock);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::LockUpsert(read) => assert_eq!(*read, lock),
            other => panic!("decoded {other:?}"),
        }
        let mut buf = Vec::new();
        encode_lock_upsert(&mut buf, &Lock { permits: 1, ..lock.clone() });
        assert_eq!(decode(&buf, &mut Names::default()).unwrap_err().what, "lock holder count");
        let mut buf = Vec::new();
        encode_lock_delete(&mut buf, &lock.name);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::LockDelete { name } => assert_eq!(name, lock.name),
            other => panic!("decoded {other:?}"),
        }
    }

    /// A queue record round-trips its `ordering_dead`, and one written before the field existed
    /// (ending after the payload schema) reads as `block`, the default. Guards old logs and
    /// snapshots staying readable.
    #[test]
    fn queue_record_ordering_dead_is_an_optional_trailing_field() {
        let mut config = QueueConfig::new(QueueName::new("q").unwrap());
        config.ordering_dead = OrderingDead::Skip;
        let mut buf = Vec::new();
        encode_queue_upsert(&mut buf, &config);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => assert_eq!(read, config),
            other => panic!("decoded {other:?}"),
        }
        // The breaker's flag and the four flow-limit fields, absent, are one byte each.
        buf.truncate(buf.len() - 6);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => {
                assert_eq!(read, QueueConfig { ordering_dead: OrderingDead::Block, ..config })
            }
            other => panic!("decoded {other:?}"),
        }
    }

    /// Flow limits round-trip; a queue record written before them has none.
    #[test]
    fn queue_record_flow_limits_are_optional_trailing_fields() {
        let mut config = QueueConfig::new(QueueName::new("q").unwrap());
        config.limits = FlowLimits {
            concurrency_max: Some(7),
            group_concurrency_max: Some(1),
            rate: Some(dray_core::Rate { limit: 10, per_ms: 1_000, burst: 20 }),
            group_rate: None,
        };
        let mut buf = Vec::new();
        encode_queue_upsert(&mut buf, &config);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => assert_eq!(read, config),
            other => panic!("decoded {other:?}"),
        }
        let mut old = Vec::new();
        encode_queue_upsert(&mut old, &QueueConfig::new(QueueName::new("q").unwrap()));
        // The breaker's flag and the four flow-limit flags.
        old.truncate(old.len() - 5);
        match decode(&old, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => assert!(read.limits.is_unlimited()),
            other => panic!("decoded {other:?}"),
        }
    }

    /// A job record keeps its group key, with or without a schedule tick, and a record written
    /// before group keys (ending after the history, or with the tick alone) still reads.
    #[test]
    fn job_record_group_key_follows_the_extension_mark() {
        let base = dray_core::NewJob::new(QueueName::new("q").unwrap(), dray_core::Payload::new(b"{}".to_vec()))
            .into_job(JobId(9), Timestamp(5), dray_core::RetryPolicy::default(), 30_000);
        let tick = ScheduleTick { name: ScheduleName::new("nightly").unwrap(), at: Timestamp(3) };
        for (group, schedule) in [
            (None, None),
            (None, Some(tick.clone())),
            (Some("customer-1"), None),
            (Some("customer-1"), Some(tick.clone())),
        ] {
            let job = Job { group_key: group.map(Into::into), schedule, ..base.clone() };
            let mut buf = Vec::new();
            encode_job_insert(&mut buf, &job);
            match decode(&buf, &mut Names::default()).unwrap() {
                Record::JobInsert(read) => assert_eq!(*read, job),
                other => panic!("decoded {other:?}"),
            }
        }
    }

    /// A queue record round-trips its breaker, and one written before the field existed (ending
    /// after the flow limits) reads as no breaker. Guards old logs and snapshots.
    #[test]
    fn queue_record_breaker_is_an_optional_trailing_field() {
        let mut config = QueueConfig::new(QueueName::new("q").unwrap());
        config.breaker =
            Some(BreakerPolicy { failure_ratio: 0.25, window_ms: 60_000, min_attempts: 7, open_ms: 9_000, probes: 3 });
        let mut buf = Vec::new();
        encode_queue_upsert(&mut buf, &config);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => assert_eq!(read, config),
            other => panic!("decoded {other:?}"),
        }
        buf.truncate(buf.len() - (1 + 8 + 8 + 4 + 8 + 4));
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::QueueUpsert(read) => assert_eq!(read, QueueConfig { breaker: None, ..config }),
            other => panic!("decoded {other:?}"),
        }
    }

    /// Step records round-trip (the log's with its version and history entry, the snapshot's
    /// copy), and a step past its bounds is refused when read back.
    #[test]
    fn step_records_round_trip() {
        let step = Step {
            name: "fetch ünïcode".into(),
            result: Payload::new(&b"{\"a\":1}"[..]),
            at: Timestamp(7),
            attempt: 3,
        };
        let entry = HistoryEntry {
            at: Timestamp(7),
            kind: HistoryKind::StepRecorded,
            state: JobState::Running,
            attempt: 3,
            token: Some(FencingToken(9)),
            worker: Some(WorkerId::new("w").unwrap()),
            error: Some("fetch ünïcode".into()),
            run_at: None,
        };
        let mut buf = Vec::new();
        encode_step_record(&mut buf, JobId(4), 12, &step, &entry);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::StepRecorded { id, version, step: read, history } => {
                assert_eq!((id, version, *read, history), (JobId(4), 12, step.clone(), entry));
            }
            other => panic!("decoded {other:?}"),
        }
        let mut buf = Vec::new();
        encode_step_copy(&mut buf, JobId(4), &step);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::StepCopy { id, step: read } => assert_eq!((id, *read), (JobId(4), step.clone())),
            other => panic!("decoded {other:?}"),
        }
        let long = Step { name: "n".repeat(dray_core::Limits::STEP_NAME_BYTES_MAX + 1).into(), ..step.clone() };
        let mut buf = Vec::new();
        encode_step_copy(&mut buf, JobId(4), &long);
        assert_eq!(decode(&buf, &mut Names::default()).unwrap_err().what, "step name");
        let empty = Step { result: Payload::new(Vec::new()), ..step };
        let mut buf = Vec::new();
        encode_step_copy(&mut buf, JobId(4), &empty);
        assert_eq!(decode(&buf, &mut Names::default()).unwrap_err().what, "step result");
    }

    /// A breaker record round-trips everything but the window.
    #[test]
    fn breaker_record_round_trips() {
        let mut b = Breaker::new();
        b.state = BreakerState::HalfOpen;
        b.forced = false;
        b.changed_at = Some(Timestamp(5));
        b.half_open_at = None;
        b.probes_granted = 2;
        b.probes_succeeded = 1;
        b.transitions = [1, 2, 3];
        let q = QueueName::new("q").unwrap();
        let mut buf = Vec::new();
        encode_breaker_update(&mut buf, &q, &b);
        match decode(&buf, &mut Names::default()).unwrap() {
            Record::BreakerUpdate { queue, breaker } => {
                assert_eq!(queue, q);
                assert_eq!(*breaker, b);
            }
            other => panic!("decoded {other:?}"),
        }
    }
}
