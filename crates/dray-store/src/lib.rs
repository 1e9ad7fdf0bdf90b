//! The storage contract: the [`Store`] trait, its typed parameters, [`Error`], and (behind the
//! `conformance` feature) the one conformance suite every store runs.
//!
//! Every parameter that can depend on time carries `now`, the server's clock reading, so a store
//! never reads a clock itself (the PostgreSQL store uses the database's `now()` instead and ignores
//! it). This crate knows no SQL, no file formats and no HTTP.

mod error;
mod lease_id;
mod lock;
mod params;
mod schedule;
mod token;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::future::Future;

pub use error::Error;
pub use lease_id::LeaseIds;
pub use lock::*;
pub use params::*;
pub use schedule::*;
pub use token::*;

use dray_core::{Job, JobId, QueueName, Schedule, ScheduleName, Timestamp};

/// A durable home for jobs. Implementations: `dray-store-embedded` (default) and
/// `dray-store-postgres`.
///
/// Writes return only once the change is durable under the store's durability policy; an `Err`
/// means the change was not made, or (for [`Error::Unavailable`]) that its outcome is unknown.
///
/// Cancel safety: dropping a returned future before it completes never corrupts the store, but
/// the change may or may not have been applied (the same as a lost reply).
pub trait Store: Send + Sync + 'static {
    /// Sets the checker for queues' payload schemas (the server's JSON Schema validator), once,
    /// before serving. Without one, schemas are stored but not checked.
    fn payload_check_set(&self, check: std::sync::Arc<dyn PayloadCheck>);

    /// Inserts one job or an atomic batch: either every job is inserted (or matched to an earlier
    /// job by its idempotency key) or none is.
    fn job_insert(&self, p: JobInsert) -> impl Future<Output = Result<Vec<Inserted>, Error>> + Send;

    /// Leases up to `count_max` available jobs from `queues`, best first: higher priority, then
    /// earlier run time, then enqueue order. Jobs whose run time has come are promoted first, so a
    /// due job is leasable without waiting for maintenance. Paused queues give nothing, and neither
    /// do queues whose circuit breaker is open; a half-open one gives at most its probes left.
    fn job_lease(&self, p: JobLease) -> impl Future<Output = Result<Vec<LeasedJob>, Error>> + Send;

    /// Extends a live lease, recording progress and a checkpoint.
    fn lease_extend(&self, p: LeaseExtend) -> impl Future<Output = Result<LeaseExtended, Error>> + Send;

    /// Records a step of the running attempt holding `p.lease` (`dray_core::Event::Step`, fenced
    /// like an ack), durably, with a `step_recorded` history entry. The first record of a name
    /// wins: recording it again (a worker retrying a lost reply, a later attempt) changes
    /// nothing and answers with the step as recorded then. Steps are kept across failed attempts,
    /// lease expiries and redrives, handed to every later attempt ([`LeasedJob::steps`]) and
    /// shown by `job_get`; they go with the job. Refused with [`Error::Invalid`] (field `name` or
    /// `result`) past a bound of the step or of the job's steps.
    fn job_step(&self, p: JobStep) -> impl Future<Output = Result<StepRecorded, Error>> + Send;

    /// Completes or fails leased jobs; each outcome counts towards its queue's circuit breaker,
    /// if it has one (see `dray_core::breaker`). The outer `Err` means nothing was applied; each inner result
    /// says whether that ack was accepted (a stale lease is rejected and changes nothing).
    fn job_ack(&self, p: JobAck) -> impl Future<Output = Result<Vec<Result<Acked, Error>>, Error>> + Send;

    /// Cancels a job: a waiting job at once, a running job by request (its worker learns at the
    /// next heartbeat; the job ends `cancelled` when the attempt ends). Returns the job's state.
    fn job_cancel(&self, p: JobCancel) -> impl Future<Output = Result<dray_core::JobState, Error>> + Send;

    /// Makes a scheduled or retrying job available now, ahead of its time (an operator's "run
    /// now"). Returns its new state; other states are refused (`Rejection::NotAllowed`).
    fn job_promote(&self, p: JobPromote) -> impl Future<Output = Result<dray_core::JobState, Error>> + Send;

    /// A job with its whole history, or `None`.
    fn job_get(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, Error>> + Send;

    /// Why an available job is held back at `now` (see [`Waiting`]); `None` when it is not
    /// available, unknown, or only waits its turn.
    fn job_waiting(&self, id: JobId, now: Timestamp) -> impl Future<Output = Result<Option<Waiting>, Error>> + Send;

    /// Jobs matching a filter, in id (enqueue) order, one bounded page at a time.
    fn job_list(&self, p: JobList) -> impl Future<Output = Result<JobPage, Error>> + Send;

    /// Moves dead jobs back to `available` with a fresh budget of attempts. A job whose payload
    /// no longer matches its queue's schema stays dead, with reason `rejected`. With `dry_run`,
    /// only reports what would happen.
    fn dead_redrive(&self, p: DeadRedrive) -> impl Future<Output = Result<Redriven, Error>> + Send;

    /// Deletes dead jobs for good. With `dry_run`, only reports which jobs would go.
    fn dead_discard(&self, p: DeadDiscard) -> impl Future<Output = Result<Vec<JobId>, Error>> + Send;

    /// Expires leases whose deadline has passed: each is a failed attempt (retried or dead), and a
    /// failure for its queue's circuit breaker.
    fn leases_expire(&self, p: Maintain) -> impl Future<Output = Result<Vec<Expired>, Error>> + Send;

    /// Moves scheduled and retrying jobs whose time has come to `available`.
    fn jobs_promote(&self, p: Maintain) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Deletes finished jobs past their queue's retention (and past their idempotency window).
    fn jobs_prune(&self, p: Maintain) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Creates or changes a queue's configuration; unset fields keep their current value.
    fn queue_configure(&self, p: QueueConfigure) -> impl Future<Output = Result<QueueConfig, Error>> + Send;

    /// Deletes a queue's configuration together with its finished (completed, cancelled) jobs.
    /// Refused with [`Error::QueueNotEmpty`] while it holds scheduled, available, running,
    /// retrying or dead jobs, and with [`Error::QueueNotFound`] for an unknown queue.
    fn queue_delete(&self, p: QueueDelete) -> impl Future<Output = Result<QueueDeleted, Error>> + Send;

    /// Every known queue (configured, or created by its first job) with its counts.
    fn queue_list(&self) -> impl Future<Output = Result<Vec<QueueStats>, Error>> + Send;

    /// One queue's configuration and counts.
    fn queue_stats(&self, queue: &QueueName) -> impl Future<Output = Result<QueueStats, Error>> + Send;

    /// An operator's order to a queue's circuit breaker: open it (it then stays open until closed
    /// by hand) or close it. Returns its new state. Refused with [`Error::QueueNotFound`] for an
    /// unknown queue and with [`Error::Invalid`] (field `breaker`) for a queue without a breaker.
    fn breaker_force(&self, p: BreakerForce) -> impl Future<Output = Result<dray_core::Breaker, Error>> + Send;

    /// Creates or replaces a schedule (see [`Schedule::replaced`] for what a replace keeps).
    /// Refused with [`Error::ScheduleExists`] for `create_only` on an existing name, and with
    /// [`Error::TooManySchedules`] past `Limits::SCHEDULES_MAX`.
    fn schedule_put(&self, p: SchedulePut) -> impl Future<Output = Result<ScheduleSaved, Error>> + Send;

    fn schedule_get(&self, name: &ScheduleName) -> impl Future<Output = Result<Option<Schedule>, Error>> + Send;

    /// Every schedule, by name.
    fn schedule_list(&self) -> impl Future<Output = Result<Vec<Schedule>, Error>> + Send;

    /// Deletes a schedule ([`Error::ScheduleNotFound`] if there is none); its jobs stay.
    fn schedule_delete(&self, p: ScheduleDelete) -> impl Future<Output = Result<(), Error>> + Send;

    fn schedule_pause(&self, p: SchedulePause) -> impl Future<Output = Result<Schedule, Error>> + Send;

    /// Enqueues the schedule's job now, whatever its rule, pause and overlap policy say.
    fn schedule_trigger(&self, p: ScheduleTrigger) -> impl Future<Output = Result<Ticked, Error>> + Send;

    /// Fires the due ticks of due schedules, each schedule's jobs and its new cursor in one
    /// atomic change, so a tick is enqueued at most once (see `dray_core::schedule::plan`).
    /// Returns the schedules it acted on.
    fn schedules_tick(&self, p: SchedulesTick) -> impl Future<Output = Result<Vec<Ticked>, Error>> + Send;
}
