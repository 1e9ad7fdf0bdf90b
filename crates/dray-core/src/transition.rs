//! The one function every change to a job goes through.
//!
//! [`transition`] takes a job, an event, the server's `now` and a random number, and returns either
//! the job's whole new status plus its history entry and effects (as data), or a [`Rejection`]: a
//! normal value saying why the event does not apply (a stale lease, a job not yet due). It never
//! mutates anything; the caller logs the result and applies it with [`Job::apply`].

use std::fmt;

use crate::breaker::BreakerOutcome;
use crate::dependency::failure_reason;
use crate::ids::{FencingToken, JobId, LeaseId, WorkerId};
use crate::job::{DeadReason, HistoryEntry, HistoryKind, Job, JobState, JobStatus, Lease, Payload};
use crate::limits::{Invalid, Limits, truncate_utf8};
use crate::step::Step;
use crate::time::Timestamp;

/// Something that happens to a job. Events are verbs; states are participles.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A scheduled or retrying job's time has come.
    Promote,
    /// Grant a lease on the next attempt. `lease_ms` overrides the job's lease duration.
    Lease {
        id: LeaseId,
        token: FencingToken,
        worker: &'a WorkerId,
        lease_ms: Option<u64>,
    },
    /// The worker is alive: extend the lease (by `extend_ms`, or the job's lease duration) and
    /// record progress and a checkpoint.
    Heartbeat {
        lease: LeaseId,
        extend_ms: Option<u64>,
        progress: Option<Payload>,
        checkpoint: Option<Payload>,
    },
    Complete {
        lease: LeaseId,
        result: Option<Payload>,
    },
    /// The attempt failed. `retry_after_ms` replaces the backoff delay (clamped to
    /// `Limits::RETRY_AFTER_MS_MAX`).
    ///
    /// `rate_limited`: the worker was turned away by a rate limit downstream. The attempt is
    /// handed back (it does not count towards `attempts_max`, so it never dead-letters the job),
    /// the job waits `retry_after_ms` (or its next backoff delay) and its whole queue backs off
    /// until then ([`Effect::QueueBackoff`]).
    Fail {
        lease: LeaseId,
        error: &'a str,
        retryable: bool,
        retry_after_ms: Option<u64>,
        rate_limited: bool,
    },
    /// The lease's deadline passed without a completion or failure: a failed attempt.
    Expire,
    /// Stop the job: at once if it is waiting, by request to the worker if it is running.
    Cancel,
    /// Take a dead job out of the dead-letter queue with a fresh budget of attempts.
    Redrive,
    /// An operator's "run now": a scheduled or retrying job becomes available at once instead of
    /// at its time (its attempts are not reset).
    PromoteNow,
    /// A redrive refused before any attempt: the dead job stays dead, with reason `rejected` and
    /// `error` saying why (its payload no longer matches the queue's schema).
    Reject {
        error: &'a str,
    },
    /// Every dependency of a blocked job finished as its policy requires
    /// (`dependency::Verdict::Release`): it becomes available, or scheduled if its run time is
    /// still ahead.
    Release,
    /// A dependency of a blocked job ended dead or cancelled (or is gone) and its policy is
    /// `cancel` (`dependency::Verdict::Fail`): it ends cancelled, naming the dependency.
    DependencyFailed {
        dependency: JobId,
        state: Option<JobState>,
    },
    /// The attempt holding `lease` recorded a step: `name` finished with `result` (checked with
    /// `step::validate` before). Fenced like an ack. The first record of a name wins: a name
    /// already recorded changes nothing, and the answer is the result recorded then
    /// ([`Effect::StepKnown`]).
    Step {
        lease: LeaseId,
        name: &'a str,
        result: Payload,
    },
}

/// The kind of an [`Event`], without its data: for tables, logs and rejections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Promote,
    Lease,
    Heartbeat,
    Complete,
    Fail,
    Expire,
    Cancel,
    Redrive,
    PromoteNow,
    Reject,
    Release,
    DependencyFailed,
    Step,
    /// Not an event of [`transition`]: deleting a dead job. Named here so a refusal to discard a
    /// job that is not dead reads right.
    Discard,
}

impl Event<'_> {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Promote => EventKind::Promote,
            Event::Lease { .. } => EventKind::Lease,
            Event::Heartbeat { .. } => EventKind::Heartbeat,
            Event::Complete { .. } => EventKind::Complete,
            Event::Fail { .. } => EventKind::Fail,
            Event::Expire => EventKind::Expire,
            Event::Cancel => EventKind::Cancel,
            Event::Redrive => EventKind::Redrive,
            Event::PromoteNow => EventKind::PromoteNow,
            Event::Reject { .. } => EventKind::Reject,
            Event::Release => EventKind::Release,
            Event::DependencyFailed { .. } => EventKind::DependencyFailed,
            Event::Step { .. } => EventKind::Step,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            EventKind::Promote => "promote",
            EventKind::PromoteNow => "run now",
            EventKind::Lease => "lease",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Complete => "complete",
            EventKind::Fail => "fail",
            EventKind::Expire => "expire",
            EventKind::Cancel => "cancel",
            EventKind::Redrive => "redrive",
            EventKind::Reject => "reject",
            EventKind::Release => "release",
            EventKind::DependencyFailed => "apply a failed dependency to",
            EventKind::Step => "record a step of",
            EventKind::Discard => "discard",
        };
        f.write_str(s)
    }
}

/// Why an event does not apply. A normal outcome, not a failure of the system.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The lease presented is not the job's current one: it was never granted, or the job has
    /// moved on (expired and delivered again, completed, cancelled).
    #[error("stale lease: the job is {state} and this lease is not its current one")]
    StaleLease { state: JobState },
    /// The lease is the current one but its deadline has passed on the server's clock.
    #[error("lease expired at {deadline} (server clock)")]
    LeaseExpired { deadline: Timestamp },
    /// The lease is still live, so it cannot expire yet.
    #[error("lease is live until {deadline}")]
    LeaseLive { deadline: Timestamp },
    /// The job is not due yet.
    #[error("job is not due until {run_at}")]
    NotDue { run_at: Timestamp },
    /// The job is completed, dead or cancelled.
    #[error("job is already {state}")]
    AlreadyFinished { state: JobState },
    /// The event does not apply in this state at all.
    #[error("cannot {event} a job that is {state}")]
    NotAllowed { state: JobState, event: EventKind },
    /// The event's data breaks a bound of the job as it is now (a step past the job's steps
    /// limit); the refusal names the field and the limit, like any bad input.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// What a transition caused, beyond the job's own new status: for the caller to act on (wake
/// waiters, count metrics, answer the worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A lease was granted; deliver the job.
    Delivered,
    /// The lease was extended; tell the worker whether a cancel was requested.
    LeaseExtended { deadline: Timestamp, cancel_requested: bool },
    /// The job will be delivered again at `at`.
    RetryScheduled { at: Timestamp },
    /// A downstream rate limit turned the attempt away: the job's queue leases nothing until
    /// `until`.
    QueueBackoff { until: Timestamp },
    /// The job is in the dead-letter queue.
    DeadLettered { reason: DeadReason },
    /// The job reached a final state (completed, dead or cancelled) at this time.
    Finished,
    /// The job became available.
    BecameAvailable,
    /// A cancel was requested of a running job; its worker learns at its next heartbeat.
    CancelRequested,
    /// The event changed nothing (a repeated cancel).
    Unchanged,
    /// A step was recorded: the caller appends it to the job's steps (as [`Job::apply`] does).
    StepRecorded(Step),
    /// The step's name was recorded already: nothing changed; this is the step as recorded then.
    StepKnown(Step),
}

/// The result of an accepted event: the job's whole new status, the history entry to append
/// (`None` for heartbeats, which change no state), and effects for the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub status: JobStatus,
    pub history: Option<HistoryEntry>,
    pub effects: Vec<Effect>,
}

impl Transition {
    /// Until when the job's queue backs off: a downstream rate limit turned the attempt away.
    pub fn queue_backoff(&self) -> Option<Timestamp> {
        self.effects.iter().find_map(|e| match e {
            Effect::QueueBackoff { until } => Some(*until),
            _ => None,
        })
    }

    /// The step a `Step` event recorded or found, and whether it recorded it (`false`: the name
    /// was recorded before, and this is the first record).
    pub fn step(&self) -> Option<(&Step, bool)> {
        self.effects.iter().find_map(|e| match e {
            Effect::StepRecorded(step) => Some((step, true)),
            Effect::StepKnown(step) => Some((step, false)),
            _ => None,
        })
    }

    /// What the attempt this transition ended (a completion, a failure or an expiry) means to its
    /// queue's circuit breaker: a completion is a success, a failure or an expiry a failure; an
    /// attempt whose job ended cancelled, or that a downstream rate limit turned away, counts for
    /// nothing (a rate limit says nothing of the downstream's health).
    pub fn breaker_outcome(&self) -> BreakerOutcome {
        if self.status.state == JobState::Cancelled || self.queue_backoff().is_some() {
            BreakerOutcome::Void
        } else if self.status.state == JobState::Completed {
            BreakerOutcome::Success
        } else {
            BreakerOutcome::Failure
        }
    }
}

/// Computes what `event` does to `job` at `now`. `random` is a uniformly random number used for
/// backoff jitter; passing it in keeps this function pure and replayable.
pub fn transition(job: &Job, event: Event<'_>, now: Timestamp, random: u64) -> Result<Transition, Rejection> {
    let current = &job.status;
    let state = current.state;
    let kind = event.kind();
    let not_allowed = || Rejection::NotAllowed { state, event: kind };
    let entry = |kind: HistoryKind, status: &JobStatus| HistoryEntry {
        at: now,
        kind,
        state: status.state,
        attempt: status.attempt,
        token: None,
        worker: None,
        error: None,
        run_at: None,
    };

    match event {
        Event::Promote => {
            if !matches!(state, JobState::Scheduled | JobState::Retrying) {
                return Err(not_allowed());
            }
            if current.run_at > now {
                return Err(Rejection::NotDue { run_at: current.run_at });
            }
            let status = JobStatus { state: JobState::Available, ..current.clone() };
            let history = entry(HistoryKind::Promoted, &status);
            Ok(Transition { status, history: Some(history), effects: vec![Effect::BecameAvailable] })
        }

        Event::PromoteNow => {
            if !matches!(state, JobState::Scheduled | JobState::Retrying) {
                return Err(not_allowed());
            }
            // Due already (maintenance had not promoted it yet): it keeps its place in line.
            let status = JobStatus { state: JobState::Available, run_at: current.run_at.min(now), ..current.clone() };
            let history = entry(HistoryKind::Promoted, &status);
            Ok(Transition { status, history: Some(history), effects: vec![Effect::BecameAvailable] })
        }

        Event::Lease { id, token, worker, lease_ms } => {
            if state != JobState::Available {
                return Err(not_allowed());
            }
            assert!(
                current.attempt < job.retry.attempts_max,
                "an available job has attempts left (job {}: attempt {} of {})",
                job.id,
                current.attempt,
                job.retry.attempts_max
            );
            let lease = Lease {
                id,
                token,
                worker: worker.clone(),
                leased_at: now,
                deadline: now.add_ms(lease_ms.unwrap_or(job.lease_ms)),
            };
            let status = JobStatus {
                state: JobState::Running,
                attempt: current.attempt + 1,
                lease: Some(lease),
                ..current.clone()
            };
            let history = HistoryEntry {
                token: Some(token),
                worker: Some(worker.clone()),
                ..entry(HistoryKind::Leased, &status)
            };
            Ok(Transition { status, history: Some(history), effects: vec![Effect::Delivered] })
        }

        Event::Heartbeat { lease, extend_ms, progress, checkpoint } => {
            let held = check_lease(job, lease, now)?;
            let deadline = now.add_ms(extend_ms.unwrap_or(job.lease_ms));
            let status = JobStatus {
                lease: Some(Lease { deadline, ..held.clone() }),
                progress: progress.or_else(|| current.progress.clone()),
                checkpoint: checkpoint.or_else(|| current.checkpoint.clone()),
                ..current.clone()
            };
            let effect = Effect::LeaseExtended { deadline, cancel_requested: current.cancel_requested };
            Ok(Transition { status, history: None, effects: vec![effect] })
        }

        Event::Complete { lease, result } => {
            let held = check_lease(job, lease, now)?;
            let token = held.token;
            let status = JobStatus {
                state: JobState::Completed,
                lease: None,
                result,
                finished_at: Some(now),
                ..current.clone()
            };
            let history = HistoryEntry {
                token: Some(token),
                worker: Some(held.worker.clone()),
                ..entry(HistoryKind::Completed, &status)
            };
            Ok(Transition { status, history: Some(history), effects: vec![Effect::Finished] })
        }

        Event::Fail { lease, error, retryable: _, retry_after_ms, rate_limited: true } if !current.cancel_requested => {
            let held = check_lease(job, lease, now)?;
            let (token, worker) = (held.token, held.worker.clone());
            let error = truncate_utf8(error, Limits::ERROR_BYTES_MAX);
            let delay = retry_after_ms
                .map(|ms| ms.min(Limits::RETRY_AFTER_MS_MAX))
                .unwrap_or_else(|| job.retry.backoff.delay_ms(current.attempt, random));
            let at = now.add_ms(delay);
            let status = JobStatus {
                state: JobState::Retrying,
                run_at: at,
                attempt: current.attempt.saturating_sub(1),
                lease: None,
                last_error: Some(error.into()),
                ..current.clone()
            };
            // The entry names the attempt that ran, though the job's count went back.
            let history = HistoryEntry {
                at: now,
                kind: HistoryKind::Failed,
                state: JobState::Retrying,
                attempt: current.attempt,
                token: Some(token),
                worker: Some(worker),
                error: Some(error.into()),
                run_at: Some(at),
            };
            let effects = vec![Effect::RetryScheduled { at }, Effect::QueueBackoff { until: at }];
            Ok(Transition { status, history: Some(history), effects })
        }

        Event::Fail { lease, error, retryable, retry_after_ms, rate_limited: _ } => {
            let held = check_lease(job, lease, now)?;
            let token = held.token;
            let error = truncate_utf8(error, Limits::ERROR_BYTES_MAX);
            let dead_reason = if retryable { DeadReason::Failed } else { DeadReason::NonRetryable };
            let delay = retry_after_ms.map(|ms| ms.min(Limits::RETRY_AFTER_MS_MAX));
            let outcome = after_failed_attempt(job, now, random, dead_reason, retryable, delay);
            let worker = held.worker.clone();
            let mut t = failed_attempt(job, now, outcome, error, HistoryKind::Failed);
            if let Some(history) = &mut t.history {
                history.token = Some(token);
                history.worker = Some(worker);
            }
            Ok(t)
        }

        Event::Expire => {
            if state != JobState::Running {
                return Err(not_allowed());
            }
            let held = current.lease.as_ref().expect("a running job holds a lease");
            if held.deadline > now {
                return Err(Rejection::LeaseLive { deadline: held.deadline });
            }
            let token = held.token;
            let worker = held.worker.clone();
            let outcome = after_failed_attempt(job, now, random, DeadReason::LeaseExpired, true, None);
            let mut t = failed_attempt(job, now, outcome, "lease expired", HistoryKind::Expired);
            if let Some(history) = &mut t.history {
                history.token = Some(token);
                history.worker = Some(worker);
            }
            Ok(t)
        }

        Event::Cancel => match state {
            JobState::Scheduled | JobState::Available | JobState::Retrying | JobState::Blocked => {
                let status = JobStatus { state: JobState::Cancelled, finished_at: Some(now), ..current.clone() };
                let history = entry(HistoryKind::Cancelled, &status);
                Ok(Transition { status, history: Some(history), effects: vec![Effect::Finished] })
            }
            JobState::Running if current.cancel_requested => {
                Ok(Transition { status: current.clone(), history: None, effects: vec![Effect::Unchanged] })
            }
            JobState::Running => {
                let status = JobStatus { cancel_requested: true, ..current.clone() };
                let history = entry(HistoryKind::CancelRequested, &status);
                Ok(Transition { status, history: Some(history), effects: vec![Effect::CancelRequested] })
            }
            JobState::Cancelled => {
                Ok(Transition { status: current.clone(), history: None, effects: vec![Effect::Unchanged] })
            }
            JobState::Completed | JobState::Dead => Err(Rejection::AlreadyFinished { state }),
        },

        Event::Redrive => {
            if state != JobState::Dead {
                return Err(not_allowed());
            }
            let status = JobStatus {
                state: JobState::Available,
                run_at: now,
                attempt: 0,
                dead_reason: None,
                finished_at: None,
                cancel_requested: false,
                ..current.clone()
            };
            let history = entry(HistoryKind::Redriven, &status);
            Ok(Transition { status, history: Some(history), effects: vec![Effect::BecameAvailable] })
        }

        Event::Release => {
            if state != JobState::Blocked {
                return Err(not_allowed());
            }
            // Its place in line starts now: a job released late does not jump ahead of jobs
            // that were available before it.
            let (state, run_at, effect) = if current.run_at > now {
                (JobState::Scheduled, current.run_at, None)
            } else {
                (JobState::Available, now, Some(Effect::BecameAvailable))
            };
            let status = JobStatus { state, run_at, ..current.clone() };
            let history = HistoryEntry {
                run_at: (state == JobState::Scheduled).then_some(run_at),
                ..entry(HistoryKind::Released, &status)
            };
            Ok(Transition { status, history: Some(history), effects: effect.into_iter().collect() })
        }

        Event::DependencyFailed { dependency, state: dependency_state } => {
            if state != JobState::Blocked {
                return Err(not_allowed());
            }
            let reason = failure_reason(dependency, dependency_state);
            let status = JobStatus {
                state: JobState::Cancelled,
                finished_at: Some(now),
                last_error: Some(reason.as_str().into()),
                ..current.clone()
            };
            let history = HistoryEntry { error: Some(reason.into()), ..entry(HistoryKind::Cancelled, &status) };
            Ok(Transition { status, history: Some(history), effects: vec![Effect::Finished] })
        }

        Event::Reject { error } => {
            if state != JobState::Dead {
                return Err(not_allowed());
            }
            let error = truncate_utf8(error, Limits::ERROR_BYTES_MAX);
            let status = JobStatus {
                dead_reason: Some(DeadReason::Rejected),
                last_error: Some(error.into()),
                ..current.clone()
            };
            let history = HistoryEntry { error: Some(error.into()), ..entry(HistoryKind::Rejected, &status) };
            let effects = vec![Effect::DeadLettered { reason: DeadReason::Rejected }];
            Ok(Transition { status, history: Some(history), effects })
        }

        Event::Step { lease, name, result } => {
            let held = check_lease(job, lease, now)?;
            // First write wins: a worker retrying a lost reply gets the memoized value.
            if let Some(step) = job.steps.get(name) {
                return Ok(Transition {
                    status: current.clone(),
                    history: None,
                    effects: vec![Effect::StepKnown(step.clone())],
                });
            }
            job.steps.room_for(name, &result)?;
            // The entry carries the step's name where other entries carry an error.
            let history = HistoryEntry {
                token: Some(held.token),
                worker: Some(held.worker.clone()),
                error: Some(name.into()),
                ..entry(HistoryKind::StepRecorded, current)
            };
            let step = Step { name: name.into(), result, at: now, attempt: current.attempt };
            Ok(Transition {
                status: current.clone(),
                history: Some(history),
                effects: vec![Effect::StepRecorded(step)],
            })
        }
    }
}

/// The lease presented must be the job's current lease, and still live.
fn check_lease(job: &Job, lease: LeaseId, now: Timestamp) -> Result<&Lease, Rejection> {
    // A finished job is said to be finished whichever lease is presented: "already completed"
    // tells a worker retrying a lost ack reply more than "stale lease" does.
    if job.status.state.is_finished() {
        return Err(Rejection::AlreadyFinished { state: job.status.state });
    }
    let stale = Rejection::StaleLease { state: job.status.state };
    let Some(held) = job.status.lease.as_ref() else { return Err(stale) };
    if job.status.state != JobState::Running || held.id != lease {
        return Err(stale);
    }
    if held.deadline <= now {
        return Err(Rejection::LeaseExpired { deadline: held.deadline });
    }
    Ok(held)
}

/// Where a failed attempt leads.
enum AfterFailure {
    Retry { at: Timestamp },
    Dead(DeadReason),
    Cancelled,
}

fn after_failed_attempt(
    job: &Job,
    now: Timestamp,
    random: u64,
    dead_reason: DeadReason,
    retryable: bool,
    delay_ms: Option<u64>,
) -> AfterFailure {
    let status = &job.status;
    if status.cancel_requested {
        return AfterFailure::Cancelled;
    }
    if !retryable {
        return AfterFailure::Dead(DeadReason::NonRetryable);
    }
    if status.attempt >= job.retry.attempts_max {
        return AfterFailure::Dead(dead_reason);
    }
    let delay = delay_ms.unwrap_or_else(|| job.retry.backoff.delay_ms(status.attempt, random));
    AfterFailure::Retry { at: now.add_ms(delay) }
}

fn failed_attempt(job: &Job, now: Timestamp, outcome: AfterFailure, error: &str, kind: HistoryKind) -> Transition {
    let current = &job.status;
    let base = JobStatus { lease: None, last_error: Some(error.into()), ..current.clone() };
    let (status, effects, run_at) = match outcome {
        AfterFailure::Retry { at } => {
            (JobStatus { state: JobState::Retrying, run_at: at, ..base }, vec![Effect::RetryScheduled { at }], Some(at))
        }
        AfterFailure::Dead(reason) => (
            JobStatus { state: JobState::Dead, dead_reason: Some(reason), finished_at: Some(now), ..base },
            vec![Effect::DeadLettered { reason }, Effect::Finished],
            None,
        ),
        AfterFailure::Cancelled => {
            (JobStatus { state: JobState::Cancelled, finished_at: Some(now), ..base }, vec![Effect::Finished], None)
        }
    };
    let history = HistoryEntry {
        at: now,
        kind,
        state: status.state,
        attempt: status.attempt,
        token: None,
        worker: None,
        error: Some(error.into()),
        run_at,
    };
    Transition { status, history: Some(history), effects }
}

impl Job {
    /// Applies an accepted transition: the new status, a recorded step, and the history entry
    /// (which counts as a new version).
    pub fn apply(&mut self, t: Transition) {
        self.status = t.status;
        for effect in t.effects {
            if let Effect::StepRecorded(step) = effect {
                self.steps.push(step);
            }
        }
        if let Some(entry) = t.history {
            self.version += 1;
            self.push_history(entry);
        }
    }
}
