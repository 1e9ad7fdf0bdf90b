//! `EmbeddedStore`: the [`Store`] contract on the in-memory state and the write-ahead log.
//!
//! Every write takes the state lock, decides with `dray_core::transition`, appends the result to the
//! log and applies it to the state, then releases the lock and waits for the log to make it
//! durable. The log order is the lock order, and an acknowledgement waits for everything before
//! it, so no reply ever depends on a change that is not durable. After the log fails, every
//! operation fails: the state in memory may hold changes the disk does not.

use dray_core::json::same_value;
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use dray_core::dependency::{Dependency, Verdict};
use dray_core::{
    Breaker, BreakerOutcome, Effect, Event, FencingToken, Invalid, Job, JobId, JobState, Limits, Rejection, Timestamp,
    transition,
};
use dray_store::{
    Acked, BreakerForce, DeadDiscard, DeadRedrive, DeadSelection, DependencyResult, Error, Expired, Inserted, JobAck,
    JobCancel, JobFilter, JobInsert, JobLease, JobList, JobPage, JobPromote, JobStep, LeaseExtend, LeaseExtended,
    LeasedJob, Maintain, QueueConfig, QueueConfigure, QueueDelete, QueueDeleted, QueueStats, Redriven, ScheduleDelete,
    SchedulePause, SchedulePut, ScheduleSaved, ScheduleTrigger, SchedulesTick, StepRecorded, Store, Ticked,
};

use crate::codec;
use crate::lanes::Entry;
use crate::open::Inner;
use crate::state::{State, job_bytes, step_bytes, summary};
use crate::wal::Wal;

/// The embedded store. Open it with [`EmbeddedStore::open`]; share it behind an `Arc`.
#[derive(Debug)]
pub struct EmbeddedStore {
    pub(crate) inner: Arc<Inner>,
}

/// The state and the log, locked together: the order of appends is the order of changes.
#[derive(Debug)]
pub(crate) struct Locked {
    pub state: State,
    pub wal: Option<Wal>,
    /// Reused buffer for the records of one operation.
    pub scratch: Vec<u8>,
}

/// Operations other than inserts may log in several frames once this much is gathered; each
/// change is valid on its own, so a crash between frames leaves a consistent state.
const FRAME_SPLIT_BYTES: usize = 8 * 1024 * 1024;
/// A prune pass looks at most this many times its limit of finished jobs.
const PRUNE_SCAN_FACTOR: usize = 4;
/// The scratch buffer's capacity kept between operations.
const SCRATCH_KEEP_BYTES: usize = 1024 * 1024;

/// The records one operation logs, gathered into one log frame so they reach the disk all or
/// nothing. An insert batch is never split (its size is bounded by `Limits::BATCH_BYTES_MAX`, far
/// below the frame limit); other operations may be split into frames of `FRAME_SPLIT_BYTES`.
pub(crate) struct Changes<'w> {
    wal: &'w Wal,
    buf: Vec<u8>,
    atomic: bool,
    failed: Option<Error>,
    /// Queues where this operation released blocked jobs to `available` (with repeats).
    released: Vec<dray_core::QueueName>,
}

impl<'w> Changes<'w> {
    fn new(wal: &'w Wal, buf: Vec<u8>, atomic: bool) -> Changes<'w> {
        Changes { wal, buf, atomic, failed: None, released: Vec::new() }
    }

    /// Adds one record. Never fails here: a log failure surfaces from `finish`, and then the
    /// whole store refuses work.
    pub fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        codec::push_record(&mut self.buf, encode);
        if !self.atomic && self.failed.is_none() && self.buf.len() >= FRAME_SPLIT_BYTES {
            self.failed = self.append_frame().err();
        }
    }

    fn append_frame(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = &self.buf;
        let appended = self.wal.append(|frame| frame.extend_from_slice(buf)).map_err(log_err);
        self.buf.clear();
        appended
    }

    /// Appends what is left; gives back the buffer for reuse.
    fn finish(mut self) -> (Vec<u8>, Result<(), Error>) {
        let result = match self.failed.take() {
            Some(e) => Err(e),
            None => self.append_frame(),
        };
        (self.buf, result)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn closed() -> Error {
    Error::Unavailable { context: "the store is closed".into(), source: None }
}

pub(crate) fn rejected(job: JobId, r: Rejection) -> Error {
    Error::rejected(job, r)
}

/// Whether the store serves, for liveness and readiness probes; see [`EmbeddedStore::health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Accepting work.
    Ok,
    /// Refusing work for now because a resource ran out (file descriptors, disk space); nothing
    /// acknowledged is in doubt and the store comes back by itself once the resource is back.
    /// Not ready, but alive.
    Degraded(String),
    /// Stopped for good (a failed fsync, corrupt data, a panic while changing the state, or
    /// closed): only a restart helps.
    Failed(String),
}

impl EmbeddedStore {
    /// The state lock, unless the store is stopped. After a recoverable log failure this is
    /// where the store comes back: the first caller runs the in-process recovery (see
    /// `open::recover`), and the operation goes on if it worked.
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, Locked>, Error> {
        let guard = self.lock_state()?;
        let Some(stopped) = guard.wal.as_ref().and_then(Wal::failure) else {
            return Ok(guard);
        };
        if !stopped.is_recoverable() {
            return Err(Error::unavailable(
                "the write-ahead log failed earlier; the store accepts nothing until restarted",
                stopped,
            ));
        }
        drop(guard);
        crate::open::recover(&self.inner)?;
        let guard = self.lock_state()?;
        match guard.wal.as_ref().and_then(Wal::failure) {
            None => Ok(guard),
            Some(e) => Err(Error::unavailable("the write-ahead log stopped again", e)),
        }
    }

    fn lock_state(&self) -> Result<MutexGuard<'_, Locked>, Error> {
        self.inner.locked.lock().map_err(|_| Error::Unavailable {
            context: "an earlier operation panicked while changing the state; restart to recover".into(),
            source: None,
        })
    }

    /// Whether the store serves. `Failed` answers a liveness probe (restart me); `Degraded` a
    /// readiness probe only (send nothing now; the store retries in the background every half
    /// second and on every request, and comes back without a restart). Cheap: no I/O.
    pub fn health(&self) -> Health {
        let stopped = match self.inner.locked.lock() {
            Err(_) => return Health::Failed("an operation panicked while changing the state".into()),
            Ok(g) => match g.wal.as_ref() {
                None => return Health::Failed("the store is closed".into()),
                Some(wal) => wal.failure(),
            },
        };
        let Some(stopped) = stopped else { return Health::Ok };
        if !stopped.is_recoverable() {
            return Health::Failed(format!("the write-ahead log failed: {stopped}"));
        }
        let last = self.inner.recovering.try_lock().ok().and_then(|r| r.failure.clone());
        match last {
            Some((why, true)) => Health::Failed(format!("recovery failed: {why}")),
            Some((why, false)) => Health::Degraded(format!("waiting for a resource to come back: {why}")),
            None => Health::Degraded(format!("a resource ran out: {stopped}")),
        }
    }

    /// In-process recoveries from a recoverable storage failure since open.
    pub fn recoveries(&self) -> u64 {
        self.inner.recovering.lock().map(|r| r.recovered).unwrap_or(0)
    }

    /// Runs `f` under the lock, then waits until everything it (and everyone before it) logged is
    /// durable. `f` must validate before it appends: an `Err` after an append would leave a
    /// change in the log that the caller was told failed.
    pub(crate) async fn write<T>(
        &self,
        atomic: bool,
        f: impl FnOnce(&mut State, &mut Changes) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (value, commit) = {
            let mut guard = self.lock()?;
            let Locked { state, wal, scratch } = &mut *guard;
            let wal = wal.as_ref().ok_or_else(closed)?;
            let mut changes = Changes::new(wal, std::mem::take(scratch), atomic);
            let value = f(state, &mut changes);
            debug_assert!(value.is_ok() || changes.is_empty(), "an operation failed after changing state");
            let (mut buf, appended) = changes.finish();
            buf.clear();
            buf.shrink_to(SCRATCH_KEEP_BYTES);
            *scratch = buf;
            appended?;
            (value?, wal.commit())
        };
        commit.await.map_err(|e| Error::unavailable("the write-ahead log could not make the change durable", e))?;
        Ok(value)
    }

    /// Runs `f` under the lock, then waits until everything logged before it is durable, like
    /// a write does. Memory runs ahead of the disk while a commit is in flight: without the wait a
    /// reader could see a completion that a crash then undoes. Free when nothing is pending.
    pub(crate) async fn read<T>(&self, f: impl FnOnce(&State) -> Result<T, Error>) -> Result<T, Error> {
        let (value, commit) = {
            let guard = self.lock()?;
            let wal = guard.wal.as_ref().ok_or_else(closed)?;
            (f(&guard.state)?, wal.commit())
        };
        commit
            .await
            .map_err(|e| Error::unavailable("the write-ahead log could not make earlier changes durable", e))?;
        Ok(value)
    }

    /// Bytes of job data held, as counted against the memory budget.
    pub fn bytes_used(&self) -> u64 {
        self.inner.locked.lock().map(|g| g.state.bytes_used).unwrap_or(0)
    }

    /// The memory budget: `bytes_used` may not grow past it (inserts are refused instead).
    pub fn memory_budget_bytes(&self) -> u64 {
        self.inner.config.memory_budget_bytes
    }

    /// Jobs held in memory.
    pub fn jobs_count(&self) -> usize {
        self.inner.locked.lock().map(|g| g.state.jobs.len()).unwrap_or(0)
    }
}

fn log_err(e: crate::wal::WalError) -> Error {
    Error::unavailable("the write-ahead log refused the change", e)
}

/// Logs a job's new status and applies it. A job that finishes settles the jobs that depend on
/// it in the same operation (so in the same log frame, unless a long cascade splits it).
pub(crate) fn update(
    state: &mut State,
    changes: &mut Changes,
    job: JobId,
    t: dray_core::Transition,
) -> Result<(), Error> {
    let finishes = t.status.state.is_finished() && !state.jobs[&job].state().is_finished();
    let at = t.history.as_ref().map(|h| h.at);
    update_one(state, changes, job, t);
    if finishes && state.dependents.contains_key(&job) {
        settle_dependents(state, changes, job, at.expect("a finish is in the history"))?;
    }
    Ok(())
}

fn update_one(state: &mut State, changes: &mut Changes, job: JobId, t: dray_core::Transition) {
    let version = state.jobs[&job].version + u32::from(t.history.is_some());
    changes.push(|buf| codec::encode_job_update(buf, job, version, &t.status, t.history.as_ref()));
    state.job_update(job, t.status, t.history);
}

/// What a blocked job's dependencies say now (`dependency::verdict` over their states).
fn dependency_verdict(state: &State, job: &Job) -> Verdict {
    let states = job.depends_on.iter().map(|d| (*d, state.jobs.get(d).map(Job::state)));
    dray_core::dependency::verdict(job.on_dependency_failure, states)
}

/// `finished` just finished: each of its blocked dependents is released, ends cancelled (and
/// then settles its own dependents, and so on down the graph) or keeps waiting.
fn settle_dependents(state: &mut State, changes: &mut Changes, finished: JobId, now: Timestamp) -> Result<(), Error> {
    let mut settled = vec![finished];
    while let Some(id) = settled.pop() {
        let Some(dependents) = state.dependents.get(&id).cloned() else { continue };
        for d in dependents {
            let Some(job) = state.jobs.get(&d).filter(|j| j.state() == JobState::Blocked) else { continue };
            let event = match dependency_verdict(state, job) {
                Verdict::Wait => continue,
                Verdict::Release => Event::Release,
                Verdict::Fail { dependency, state } => Event::DependencyFailed { dependency, state },
            };
            let t = transition(job, event, now, 0).map_err(|r| rejected(d, r))?;
            let finishes = t.status.state.is_finished();
            if t.status.state == JobState::Available {
                changes.released.push(job.queue.clone());
            }
            update_one(state, changes, d, t);
            if finishes {
                settled.push(d);
            }
        }
    }
    Ok(())
}

/// A leased job's dependencies as they are now, in the order it named them.
fn dependency_results(state: &State, job: &Job) -> Vec<DependencyResult> {
    job.depends_on
        .iter()
        .map(|&id| {
            let dependency = state.jobs.get(&id);
            DependencyResult {
                id,
                state: dependency.map(Job::state),
                result: dependency.and_then(|j| j.status.result.clone()),
            }
        })
        .collect()
}

/// A fresh fencing token, starting a new logged epoch when this one's counter is spent.
pub(crate) fn token_next(state: &mut State, changes: &mut Changes) -> Result<FencingToken, Error> {
    if let Some(t) = state.token_next() {
        return Ok(t);
    }
    let epoch = state.epoch + 1;
    changes.push(|buf| codec::encode_epoch(buf, epoch));
    state.epoch_start(epoch);
    Ok(state.token_next().expect("a new epoch has tokens"))
}

/// Promotes due scheduled and retrying jobs of one queue, at most `limit`.
fn promote_queue(
    state: &mut State,
    changes: &mut Changes,
    queue: &dray_core::QueueName,
    now: Timestamp,
    limit: usize,
) -> Result<usize, Error> {
    let Some(q) = state.queues.get(queue) else { return Ok(0) };
    let due: Vec<JobId> = q.waiting.range(..=(now, JobId(u64::MAX))).take(limit).map(|(_, id)| *id).collect();
    for &id in &due {
        let t = transition(&state.jobs[&id], Event::Promote, now, 0).map_err(|r| rejected(id, r))?;
        update(state, changes, id, t)?;
    }
    Ok(due.len())
}

/// Counts an attempt's outcome towards its queue's breaker (if it has one), logging the breaker
/// when its state (not only its window) changed.
fn breaker_outcome(
    state: &mut State,
    changes: &mut Changes,
    queue: &dray_core::QueueName,
    now: Timestamp,
    leased_at: Timestamp,
    outcome: BreakerOutcome,
) {
    let Some(q) = state.queues.get_mut(queue) else { return };
    let (Some(policy), Some(breaker)) = (q.config.breaker.as_ref(), q.breaker.as_mut()) else { return };
    let before = breaker.clone();
    breaker.record(policy, now, leased_at, outcome);
    if !before.same_but_window(breaker) {
        changes.push(|buf| codec::encode_breaker_update(buf, queue, breaker));
    }
}

/// Resolves a dead-job selection to ids, checking every listed job is dead.
fn dead_ids(
    state: &State,
    selection: &DeadSelection,
    event: dray_core::transition::EventKind,
) -> Result<Vec<JobId>, Error> {
    match selection {
        DeadSelection::Ids(ids) => {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                let job = state.jobs.get(&id).ok_or(Error::JobNotFound(id))?;
                if job.status.state != JobState::Dead {
                    return Err(rejected(id, Rejection::NotAllowed { state: job.status.state, event }));
                }
                if seen.insert(id) {
                    out.push(id);
                }
            }
            Ok(out)
        }
        DeadSelection::Filter { filter, limit } => {
            let filter = JobFilter { state: Some(JobState::Dead), ..filter.clone() };
            Ok(state.list(&filter, None, *limit, false).into_iter().map(|j| j.id).collect())
        }
    }
}

/// Where a new job of a batch stands before anything is written.
#[derive(Clone, Copy)]
enum Planned {
    New,
    /// Same idempotency key and payload as an existing job.
    Existing(JobId, JobState),
    /// Same idempotency key and payload as an earlier job of this batch.
    SameAs(usize),
}

impl Store for EmbeddedStore {
    fn payload_check_set(&self, check: Arc<dyn dray_store::PayloadCheck>) {
        let _ = self.inner.payload_check.set(check);
    }

    async fn job_insert(&self, p: JobInsert) -> Result<Vec<Inserted>, Error> {
        p.validate()?;
        let window = self.inner.config.idempotency_window_ms;
        let budget = self.inner.config.memory_budget_bytes;
        let check = self.inner.payload_check.get().cloned();
        let JobInsert { now, jobs } = p;
        self.write(true, move |state, changes| {
            // Decide everything before writing anything: the batch is all or nothing.
            let mut plan = Vec::with_capacity(jobs.len());
            let mut batch_keys: HashMap<(&str, &str), usize> = HashMap::new();
            let mut next_id = state.next_job_id;
            let mut ids = Vec::with_capacity(jobs.len());
            let mut bytes_new = 0u64;
            for (i, job) in jobs.iter().enumerate() {
                let mut planned = Planned::New;
                if let Some(key) = job.idempotency_key.as_deref() {
                    if let Some(&j) = batch_keys.get(&(job.queue.as_str(), key)) {
                        // `JobInsert::validate` refused a batch repeating a key with another payload.
                        debug_assert!(same_value(jobs[j].payload.as_bytes(), job.payload.as_bytes()));
                        planned = Planned::SameAs(j);
                    } else if let Some(&existing) = state.idempotency.get(&(job.queue.clone(), key.into())) {
                        let old = &state.jobs[&existing];
                        if old.created_at.add_ms(window) > now {
                            if !same_value(old.payload.as_bytes(), job.payload.as_bytes()) {
                                return Err(Error::IdempotencyConflict {
                                    index: i,
                                    queue: job.queue.clone(),
                                    key: key.into(),
                                    existing,
                                });
                            }
                            planned = Planned::Existing(existing, old.status.state);
                        }
                    }
                    if matches!(planned, Planned::New) {
                        batch_keys.insert((job.queue.as_str(), key), i);
                    }
                }
                match planned {
                    Planned::New => {
                        if let Some(config) = state.queue_config(&job.queue) {
                            dray_store::payload_checked(check.as_deref(), config, &job.payload)
                                .map_err(|e| e.in_batch(i))?;
                        }
                        ids.push(JobId(next_id));
                        next_id += 1;
                        bytes_new += job.payload.len() as u64 + 600;
                    }
                    Planned::Existing(id, _) => ids.push(id),
                    Planned::SameAs(j) => ids.push(ids[j]),
                }
                plan.push(planned);
            }
            if bytes_new > 0 && state.bytes_used + bytes_new > budget {
                return Err(Error::OverCapacity { used_bytes: state.bytes_used, budget_bytes: budget });
            }
            // Each new job's dependencies as ids: an existing job, or a job of this batch (new or
            // found by its idempotency key).
            let mut resolved: Vec<Box<[JobId]>> = Vec::with_capacity(jobs.len());
            for (i, (job, planned)) in jobs.iter().zip(&plan).enumerate() {
                if !matches!(planned, Planned::New) || job.depends_on.is_empty() {
                    resolved.push(Box::default());
                    continue;
                }
                let mut deps = Vec::with_capacity(job.depends_on.len());
                for (j, dep) in job.depends_on.iter().enumerate() {
                    deps.push(match *dep {
                        Dependency::Batch(k) => ids[k],
                        Dependency::Job(id) if state.jobs.contains_key(&id) => id,
                        Dependency::Job(id) => {
                            let field = format!("jobs[{i}].depends_on[{j}]");
                            return Err(Invalid::new(field, format!("names job {id}, which does not exist")).into());
                        }
                    });
                }
                resolved.push(deps.into_boxed_slice());
            }

            // Dependencies inside the batch are inserted first, so each job's verdict reads
            // them; the answer keeps the request's order.
            let order = {
                let depends_on: Vec<&[Dependency]> = jobs.iter().map(|j| j.depends_on.as_slice()).collect();
                dray_core::dependency::batch_order(&depends_on)
            };
            let mut jobs: Vec<Option<dray_core::NewJob>> = jobs.into_iter().map(Some).collect();
            let mut out: Vec<Option<Inserted>> = vec![None; jobs.len()];
            for i in order {
                let new = jobs[i].take().expect("each position once");
                let id = ids[i];
                match plan[i] {
                    Planned::New => {
                        let config = match state.queue_config(&new.queue) {
                            Some(c) => c.clone(),
                            None => {
                                let c = QueueConfig::new(new.queue.clone());
                                changes.push(|buf| codec::encode_queue_upsert(buf, &c));
                                state.queue_upsert(c.clone());
                                c
                            }
                        };
                        let depends_on = std::mem::take(&mut resolved[i]);
                        let verdict = if depends_on.is_empty() {
                            Verdict::Release
                        } else {
                            let states = depends_on.iter().map(|d| (*d, state.jobs.get(d).map(Job::state)));
                            dray_core::dependency::verdict(new.on_dependency_failure, states)
                        };
                        let job = new
                            .into_job(id, now, config.retry, config.lease_ms)
                            .with_dependencies(depends_on, verdict != Verdict::Release);
                        let failed = match verdict {
                            Verdict::Fail { dependency, state } => Some((dependency, state)),
                            Verdict::Wait | Verdict::Release => None,
                        };
                        debug_assert!(job_bytes(&job) > 0);
                        changes.push(|buf| codec::encode_job_insert(buf, &job));
                        state.job_insert(job);
                        if let Some((dependency, dependency_state)) = failed {
                            let event = Event::DependencyFailed { dependency, state: dependency_state };
                            let t = transition(&state.jobs[&id], event, now, 0).map_err(|r| rejected(id, r))?;
                            update(state, changes, id, t)?;
                        }
                        out[i] = Some(Inserted { id, state: state.jobs[&id].state(), duplicate: false });
                    }
                    Planned::Existing(id, job_state) => {
                        out[i] = Some(Inserted { id, state: job_state, duplicate: true })
                    }
                    Planned::SameAs(_) => {}
                }
            }
            for i in 0..out.len() {
                if let Planned::SameAs(j) = plan[i] {
                    let first = out[j].expect("the first job with the key is placed");
                    out[i] = Some(Inserted { duplicate: true, ..first });
                }
            }
            Ok(out.into_iter().map(|o| o.expect("every position answered")).collect())
        })
        .await
    }

    async fn job_lease(&self, p: JobLease) -> Result<Vec<LeasedJob>, Error> {
        p.validate()?;
        let JobLease { now, mut queues, count_max, worker, lease_ms } = p;
        queues.sort();
        queues.dedup();
        self.write(false, move |state, changes| {
            // Each open queue with the jobs its breaker lets this lease take.
            let mut open: Vec<(&dray_core::QueueName, usize)> = Vec::with_capacity(queues.len());
            for queue in &queues {
                let Some(q) = state.queues.get_mut(queue).filter(|q| !q.config.paused && !q.backing_off(now)) else {
                    continue;
                };
                let allowed = match (q.config.breaker.as_ref(), q.breaker.as_mut()) {
                    (Some(policy), Some(breaker)) => {
                        if breaker.tick(now) {
                            changes.push(|buf| codec::encode_breaker_update(buf, queue, breaker));
                        }
                        breaker.allowance(policy, now).of(count_max)
                    }
                    _ => count_max,
                };
                if allowed == 0 {
                    continue;
                }
                open.push((queue, allowed));
                promote_queue(state, changes, queue, now, Limits::LEASE_JOBS_MAX)?;
            }
            for (queue, _) in &open {
                state.queues.get_mut(*queue).expect("an open queue exists").lanes.tick(now);
            }
            let mut out = Vec::with_capacity(count_max.min(64));
            while out.len() < count_max {
                // The best job whose turn it is across the queues asked for, within each queue's
                // breaker allowance, concurrency limit and rate.
                let mut best: Option<(Entry, usize)> = None;
                for (i, (queue, allowed)) in open.iter().enumerate() {
                    if *allowed == 0 {
                        continue;
                    }
                    let q = state.queues.get_mut(*queue).expect("an open queue exists");
                    let limits = q.config.limits;
                    let running = q.ids[JobState::Running.index()].len() as u64;
                    if limits.concurrency_max.is_some_and(|max| running >= u64::from(max))
                        || q.lanes.queue_rate_ready(now).is_err()
                    {
                        continue;
                    }
                    if let Some(e) = q.lanes.next(now)
                        && best.is_none_or(|(b, _)| e < b)
                    {
                        best = Some((e, i));
                    }
                }
                let Some(((_, _, id), i)) = best else { break };
                open[i].1 -= 1;
                let q = state.queues.get_mut(open[i].0).expect("an open queue exists");
                q.lanes.taken(now);
                if let Some(breaker) = q.breaker.as_mut().filter(|b| b.state != dray_core::BreakerState::Closed) {
                    // A probe: counted, and logged (a half-open breaker grants only a few).
                    breaker.granted(1);
                    changes.push(|buf| codec::encode_breaker_update(buf, open[i].0, breaker));
                }
                let token = token_next(state, changes)?;
                let lease_id = state.lease_ids.next();
                let event = Event::Lease { id: lease_id, token, worker: &worker, lease_ms };
                let ready_at = state.jobs[&id].status.run_at;
                let t = transition(&state.jobs[&id], event, now, 0).map_err(|r| rejected(id, r))?;
                update(state, changes, id, t)?;
                let job = &state.jobs[&id];
                let mut leased = LeasedJob::of(job, job.payload.clone(), ready_at);
                if !job.depends_on.is_empty() {
                    leased.dependencies = dependency_results(state, job);
                }
                out.push(leased);
            }
            Ok(out)
        })
        .await
    }

    async fn lease_extend(&self, p: LeaseExtend) -> Result<LeaseExtended, Error> {
        p.validate()?;
        let LeaseExtend { now, job, lease, extend_ms, progress, checkpoint } = p;
        self.write(false, move |state, changes| {
            let current = state.jobs.get(&job).ok_or(Error::JobNotFound(job))?;
            let event = Event::Heartbeat { lease, extend_ms, progress, checkpoint };
            let t = transition(current, event, now, 0).map_err(|r| rejected(job, r))?;
            let extended = t.effects.iter().find_map(|e| match e {
                Effect::LeaseExtended { deadline, cancel_requested } => Some(LeaseExtended {
                    deadline: *deadline,
                    lease_left_ms: None,
                    cancel_requested: *cancel_requested,
                }),
                _ => None,
            });
            update(state, changes, job, t)?;
            Ok(extended.expect("a heartbeat extends the lease"))
        })
        .await
    }

    async fn job_step(&self, p: JobStep) -> Result<StepRecorded, Error> {
        p.validate()?;
        let budget = self.inner.config.memory_budget_bytes;
        self.write(false, move |state, changes| {
            let current = state.jobs.get(&p.job).ok_or(Error::JobNotFound(p.job))?;
            let t = transition(current, p.event(), p.now, 0).map_err(|r| rejected(p.job, r))?;
            debug_assert_eq!(t.status, current.status, "a step changes no status");
            let queue = current.queue.clone();
            let (step, recorded) = t.step().map(|(s, r)| (s.clone(), r)).expect("a step event answers with its step");
            if !recorded {
                // First write wins: nothing to log. The answer still waits (in `write`) for the
                // first record to be durable.
                return Ok(StepRecorded { step, recorded, queue });
            }
            if state.bytes_used + step_bytes(&step) > budget {
                return Err(Error::OverCapacity { used_bytes: state.bytes_used, budget_bytes: budget });
            }
            let history = t.history.expect("a recorded step has a history entry");
            let version = current.version + 1;
            changes.push(|buf| codec::encode_step_record(buf, p.job, version, &step, &history));
            state.job_step(p.job, step.clone(), history);
            Ok(StepRecorded { step, recorded, queue })
        })
        .await
    }

    async fn job_ack(&self, p: JobAck) -> Result<Vec<Result<Acked, Error>>, Error> {
        p.validate()?;
        let JobAck { now, acks } = p;
        self.write(false, move |state, changes| {
            let mut out = Vec::with_capacity(acks.len());
            for ack in acks {
                let random = state.random();
                let Some(job) = state.jobs.get(&ack.job) else {
                    out.push(Err(Error::JobNotFound(ack.job)));
                    continue;
                };
                let queue = job.queue.clone();
                let (attempt, leased_at) = (job.status.attempt, job.status.lease.as_ref().map_or(now, |l| l.leased_at));
                match transition(job, ack.event(), now, random) {
                    Err(r) => out.push(Err(rejected(ack.job, r))),
                    Ok(t) => {
                        let state_after = t.status.state;
                        let retry_at = (state_after == JobState::Retrying).then_some(t.status.run_at);
                        let (backoff, verdict) = (t.queue_backoff(), t.breaker_outcome());
                        update(state, changes, ack.job, t)?;
                        let mut released = std::mem::take(&mut changes.released);
                        released.sort_unstable();
                        released.dedup();
                        if let Some(until) = backoff
                            && state.backoff_set(&queue, until)
                        {
                            changes.push(|buf| codec::encode_queue_backoff(buf, &queue, until));
                        }
                        breaker_outcome(state, changes, &queue, now, leased_at, verdict);
                        out.push(Ok(Acked { state: state_after, retry_at, queue, attempt, leased_at, released }));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn job_cancel(&self, p: JobCancel) -> Result<JobState, Error> {
        let JobCancel { now, job } = p;
        self.write(false, move |state, changes| {
            let current = state.jobs.get(&job).ok_or(Error::JobNotFound(job))?;
            let t = transition(current, Event::Cancel, now, 0).map_err(|r| rejected(job, r))?;
            let after = t.status.state;
            if !t.effects.contains(&Effect::Unchanged) {
                update(state, changes, job, t)?;
            }
            Ok(after)
        })
        .await
    }

    async fn job_promote(&self, p: JobPromote) -> Result<JobState, Error> {
        let JobPromote { now, job } = p;
        self.write(false, move |state, changes| {
            let current = state.jobs.get(&job).ok_or(Error::JobNotFound(job))?;
            let t = transition(current, Event::PromoteNow, now, 0).map_err(|r| rejected(job, r))?;
            let after = t.status.state;
            update(state, changes, job, t)?;
            Ok(after)
        })
        .await
    }

    async fn queue_delete(&self, p: QueueDelete) -> Result<QueueDeleted, Error> {
        let QueueDelete { now: _, queue } = p;
        self.write(false, move |state, changes| {
            let q = state.queues.get(&queue).ok_or_else(|| Error::QueueNotFound(queue.clone()))?;
            let holding = |s: JobState| q.ids[s.index()].len() as u64;
            let live: u64 = JobState::ALL
                .into_iter()
                .filter(|s| !matches!(s, JobState::Completed | JobState::Cancelled))
                .map(holding)
                .sum();
            if live > 0 {
                return Err(Error::QueueNotEmpty { queue, jobs: live });
            }
            let finished: Vec<JobId> = [JobState::Completed, JobState::Cancelled]
                .iter()
                .flat_map(|s| q.ids[s.index()].iter().copied())
                .collect();
            // Jobs first: a crash part-way leaves the queue with fewer finished jobs, never jobs
            // without their queue.
            for &id in &finished {
                changes.push(|buf| codec::encode_job_delete(buf, id));
                state.job_delete(id);
            }
            let name = queue.clone();
            changes.push(move |buf| codec::encode_queue_delete(buf, &name));
            state.queue_delete(&queue);
            Ok(QueueDeleted { jobs_deleted: finished.len() as u64 })
        })
        .await
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>, Error> {
        self.read(|state| Ok(state.jobs.get(&id).cloned())).await
    }

    async fn job_waiting(&self, id: JobId, now: Timestamp) -> Result<Option<dray_store::Waiting>, Error> {
        self.read(move |state| {
            let Some(job) = state.jobs.get(&id) else { return Ok(None) };
            let Some(q) = state.queues.get(&job.queue) else { return Ok(None) };
            Ok(state.wait_facts(q, job, now).waiting(job, &q.config, now))
        })
        .await
    }

    async fn job_list(&self, p: JobList) -> Result<JobPage, Error> {
        p.validate()?;
        self.read(|state| {
            // One more than asked for tells whether another page exists.
            let mut found = state.list(&p.filter, p.after, p.limit + 1, p.newest_first);
            let more = found.len() > p.limit;
            found.truncate(p.limit);
            let jobs: Vec<_> = found.into_iter().map(summary).collect();
            let next = if more { jobs.last().map(|j| j.id) } else { None };
            Ok(JobPage { jobs, next })
        })
        .await
    }

    async fn dead_redrive(&self, p: DeadRedrive) -> Result<Redriven, Error> {
        p.selection.validate()?;
        let DeadRedrive { now, selection, dry_run } = p;
        let check = self.inner.payload_check.get().cloned();
        self.write(false, move |state, changes| {
            let mut out = Redriven::default();
            for id in dead_ids(state, &selection, dray_core::transition::EventKind::Redrive)? {
                let job = &state.jobs[&id];
                let refusal = match state.queue_config(&job.queue) {
                    Some(config) => dray_store::payload_checked(check.as_deref(), config, &job.payload).err(),
                    None => None,
                };
                let event = match &refusal {
                    Some(refused) => {
                        out.rejected.push(id);
                        Event::Reject { error: &refused.message }
                    }
                    None => {
                        out.ids.push(id);
                        Event::Redrive
                    }
                };
                if !dry_run {
                    let t = transition(job, event, now, 0).map_err(|r| rejected(id, r))?;
                    update(state, changes, id, t)?;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn dead_discard(&self, p: DeadDiscard) -> Result<Vec<JobId>, Error> {
        p.selection.validate()?;
        let DeadDiscard { now: _, selection, dry_run } = p;
        self.write(false, move |state, changes| {
            let ids = dead_ids(state, &selection, dray_core::transition::EventKind::Discard)?;
            if !dry_run {
                for &id in &ids {
                    changes.push(|buf| codec::encode_job_delete(buf, id));
                    state.job_delete(id);
                }
            }
            Ok(ids)
        })
        .await
    }

    async fn leases_expire(&self, p: Maintain) -> Result<Vec<Expired>, Error> {
        let Maintain { now, limit } = p;
        self.write(false, move |state, changes| {
            let due: Vec<JobId> =
                state.running.range(..=(now, JobId(u64::MAX))).take(limit).map(|(_, id)| *id).collect();
            let mut out = Vec::with_capacity(due.len());
            for &id in &due {
                let random = state.random();
                let job = &state.jobs[&id];
                let (queue, attempt) = (job.queue.clone(), job.status.attempt);
                let leased_at = job.status.lease.as_ref().map_or(now, |l| l.leased_at);
                let t = transition(job, Event::Expire, now, random).map_err(|r| rejected(id, r))?;
                let (state_after, verdict) = (t.status.state, t.breaker_outcome());
                update(state, changes, id, t)?;
                // A lease that runs out is a failed attempt: a crashed worker is a failure.
                breaker_outcome(state, changes, &queue, now, leased_at, verdict);
                out.push(Expired { id, queue, attempt, state: state_after });
            }
            Ok(out)
        })
        .await
    }

    async fn jobs_promote(&self, p: Maintain) -> Result<usize, Error> {
        let Maintain { now, limit } = p;
        self.write(false, move |state, changes| {
            let queues: Vec<_> = state.queues.keys().cloned().collect();
            let mut done = 0;
            for queue in &queues {
                if done >= limit {
                    break;
                }
                done += promote_queue(state, changes, queue, now, limit - done)?;
            }
            Ok(done)
        })
        .await
    }

    async fn jobs_prune(&self, p: Maintain) -> Result<usize, Error> {
        let Maintain { now, limit } = p;
        let window = self.inner.config.idempotency_window_ms;
        self.write(false, move |state, changes| {
            let mut doomed = Vec::new();
            // Oldest first. A job kept for its idempotency window does not stop the scan, but the
            // scan is bounded so a pass never walks a long run of such jobs.
            let mut scan_left = limit.saturating_mul(PRUNE_SCAN_FACTOR);
            for q in state.queues.values() {
                for (set, retention) in [(&q.finished, q.config.retention_ms), (&q.dead, q.config.retention_dead_ms)] {
                    for &(finished_at, id) in set.iter() {
                        if doomed.len() >= limit || scan_left == 0 || finished_at.add_ms(retention) > now {
                            break;
                        }
                        scan_left -= 1;
                        let job = &state.jobs[&id];
                        if job.idempotency_key.is_some() && job.created_at.add_ms(window) > now {
                            continue;
                        }
                        if state.needed_by_dependents(id) {
                            continue;
                        }
                        doomed.push(id);
                    }
                }
            }
            for &id in &doomed {
                changes.push(|buf| codec::encode_job_delete(buf, id));
                state.job_delete(id);
            }
            Ok(doomed.len())
        })
        .await
    }

    async fn queue_configure(&self, p: QueueConfigure) -> Result<QueueConfig, Error> {
        self.write(false, move |state, changes| {
            let current = state.queue_config(&p.name).cloned().unwrap_or_else(|| QueueConfig::new(p.name.clone()));
            let config = p.apply_to(&current)?;
            changes.push(|buf| codec::encode_queue_upsert(buf, &config));
            state.queue_upsert(config.clone());
            Ok(config)
        })
        .await
    }

    async fn breaker_force(&self, p: BreakerForce) -> Result<Breaker, Error> {
        let BreakerForce { now, queue, open } = p;
        self.write(false, move |state, changes| {
            let q = state.queues.get_mut(&queue).ok_or_else(|| Error::QueueNotFound(queue.clone()))?;
            let Some(breaker) = q.breaker.as_mut() else {
                return Err(
                    dray_core::Invalid::new("breaker", format!("queue {queue} has no breaker configured")).into()
                );
            };
            breaker.force(open, now);
            changes.push(|buf| codec::encode_breaker_update(buf, &queue, breaker));
            Ok(breaker.clone())
        })
        .await
    }

    async fn queue_list(&self) -> Result<Vec<QueueStats>, Error> {
        self.read(|state| Ok(state.queues.values().map(|q| q.stats()).collect())).await
    }

    async fn queue_stats(&self, queue: &dray_core::QueueName) -> Result<QueueStats, Error> {
        self.read(|state| state.queues.get(queue).map(|q| q.stats()).ok_or_else(|| Error::QueueNotFound(queue.clone())))
            .await
    }

    async fn schedule_put(&self, p: SchedulePut) -> Result<ScheduleSaved, Error> {
        self.schedule_put_impl(p).await
    }

    async fn schedule_get(&self, name: &dray_core::ScheduleName) -> Result<Option<dray_core::Schedule>, Error> {
        self.read(|state| Ok(state.schedules.get(name).cloned())).await
    }

    async fn schedule_list(&self) -> Result<Vec<dray_core::Schedule>, Error> {
        self.read(|state| Ok(state.schedules.values().cloned().collect())).await
    }

    async fn schedule_delete(&self, p: ScheduleDelete) -> Result<(), Error> {
        self.schedule_delete_impl(p).await
    }

    async fn schedule_pause(&self, p: SchedulePause) -> Result<dray_core::Schedule, Error> {
        self.schedule_pause_impl(p).await
    }

    async fn schedule_trigger(&self, p: ScheduleTrigger) -> Result<Ticked, Error> {
        self.schedule_trigger_impl(p).await
    }

    async fn schedules_tick(&self, p: SchedulesTick) -> Result<Vec<Ticked>, Error> {
        self.schedules_tick_impl(p).await
    }
}
