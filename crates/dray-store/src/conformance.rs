//! The conformance suite: one set of tests every [`Store`] runs, so that every store keeps the
//! same delivery contract (River's `riverdrivertest` is the model).
//!
//! A store crate implements [`Harness`] (how to open a fresh store and how to restart it over the
//! same data) and writes, in `tests/conformance.rs`:
//!
//! ```ignore
//! dray_store::conformance_suite!(MyHarness::new());
//! ```
//!
//! which expands to one `#[tokio::test]` per test of the suite, so each shows up by name and fails
//! alone. The calling crate needs `tokio` as a dev-dependency with the `rt-multi-thread` and
//! `macros` features.
//!
//! Every test passes explicit [`Timestamp`]s (starting at [`T0`]) and never reads a real clock;
//! the store must take `now` from the parameters. The suite never looks inside a store: it sees only
//! the [`Store`] trait, so it checks behaviour, not representation.
//!
//! Where the contract leaves a detail open, the suite decides it once, here, in a comment on the
//! test that depends on it (search for "Contract decision").
//!
//! Cancel safety: the test functions are whole tests, not building blocks; dropping one part-way
//! leaves its store in whatever state it had reached.

use std::fmt::Debug;
use std::future::Future;

use dray_core::transition::EventKind;
use dray_core::{
    Backoff, HistoryEntry, HistoryKind, Job, JobId, JobState, LeaseId, Limits, NewJob, Payload, QueueName, Rejection,
    RetryPolicy, Timestamp, WorkerId,
};

use crate::{
    Ack, AckOutcome, Acked, Error, Expired, Inserted, JobAck, JobCancel, JobFilter, JobInsert, JobLease, JobList,
    JobSummary, LeaseExtend, LeaseExtended, LeasedJob, Maintain, QueueConfig, QueueConfigure, QueueStats, Store,
};

mod admin;
mod breaker;
mod dependency;
mod lifecycle;
mod limits;
mod lock;
mod model;
mod ordering;
mod schedule;
mod steps;
mod token;

/// What an ack did to the job (the parts a test usually checks).
pub fn outcome(acked: &Acked) -> (JobState, Option<Timestamp>) {
    (acked.state, acked.retry_at)
}

pub use admin::*;
pub use breaker::*;
pub use dependency::*;
pub use lifecycle::*;
pub use limits::*;
pub use lock::*;
pub use model::model_random_operations;
pub use ordering::*;
pub use schedule::*;
pub use steps::*;
pub use token::*;

/// How the suite gets a store. `open` opens the store (fresh on first call); `restart` closes the
/// given store and reopens the same data (a clean shutdown and start).
///
/// Each test gets its own harness (the macro evaluates the harness expression once per test), calls
/// `open` once and then `restart` as often as it likes.
pub trait Harness: Send + 'static {
    type Store: crate::Store;
    fn open(&mut self) -> impl Future<Output = Self::Store> + Send;
    fn restart(&mut self, store: Self::Store) -> impl Future<Output = Self::Store> + Send;
}

/// Expands to one `#[tokio::test]` per conformance test, each calling
/// `dray_store::conformance::<name>(<harness expression>)`. The harness expression is evaluated
/// once per test.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::__conformance_tests! {
            $make;
            // Dependencies.
            dependency_blocks_until_every_dependency_completes,
            dependency_batch_graph_runs_in_order,
            dependency_failure_cancels_in_cascade_or_runs_by_policy,
            dependency_cancel_and_expiry_cascade,
            dependency_refusals_and_finished_dependencies,
            dependency_run_at_and_retention,
            // Insert.
            insert_one_job,
            insert_batch_ids_in_order,
            insert_scheduled_by_run_at,
            insert_scheduled_by_delay,
            insert_run_at_in_the_past,
            insert_invalid_job_rejects_whole_batch,
            insert_batch_size_limits,
            // Idempotency.
            idempotency_duplicate_returns_original,
            idempotency_duplicate_within_batch,
            idempotency_survives_restart,
            idempotency_conflict_different_payload,
            idempotency_scoped_to_queue,
            idempotency_window_ends,
            // Lease.
            lease_order_priority_run_time_enqueue,
            lease_count_max,
            lease_fields_and_deadline,
            lease_tokens_increase_across_restart,
            lease_ids_never_repeat_across_restart,
            lease_invisible_until_deadline,
            lease_paused_queue,
            lease_unknown_queue_is_empty,
            // Heartbeat.
            heartbeat_extends_deadline,
            heartbeat_after_deadline_rejected,
            heartbeat_wrong_lease_rejected,
            heartbeat_reports_cancel_requested,
            heartbeat_checkpoint_goes_to_next_attempt,
            // Ack.
            complete_is_final,
            complete_twice_rejected,
            ack_after_deadline_rejected,
            stale_worker_rejected_after_release,
            ack_batch_mixed,
            // Steps.
            step_recorded_then_leased_after_failure,
            step_kept_after_lease_expiry,
            step_stale_and_expired_leases_refused,
            step_first_write_wins,
            step_limits,
            step_survives_restart,
            step_kept_on_redrive,
            step_history_entries,
            // Fail.
            fail_retryable_backoff_window,
            fail_retry_after_exact,
            fail_non_retryable_dead,
            fail_attempts_exhausted_dead,
            fail_long_error_truncated,
            // Expiry.
            expire_before_deadline_does_nothing,
            expire_at_deadline_retries,
            expire_last_attempt_dead,
            poison_job_dead_after_attempts_max,
            // Cancel.
            cancel_waiting_jobs,
            cancel_running_then_fail,
            cancel_running_then_expire,
            cancel_running_then_complete,
            cancel_finished_rejected,
            cancel_unknown_not_found,
            // Dead letters.
            dead_list_filters_and_paging,
            dead_redrive_by_ids,
            dead_redrive_by_filter_with_limit,
            dead_redrive_dry_run,
            dead_redrive_not_dead_rejected,
            dead_discard_removes,
            dead_discard_dry_run,
            // Queues.
            queue_stats_counts,
            queue_stats_oldest_dead_at,
            queue_configure_validates,
            queue_configure_defaults_and_overrides,
            queue_list_lists_every_queue,
            queue_stats_unknown_queue,
            queue_delete_only_without_work,
            job_promote_runs_now,
            payload_schema_checked_at_insert_and_redrive,
            // Maintenance.
            promote_moves_due_jobs,
            promote_respects_limit,
            prune_respects_retention,
            prune_keeps_idempotency_window,
            // History and restart.
            history_records_every_change,
            history_bounded,
            restart_preserves_everything,
            // Validation.
            lease_validation_changes_nothing,
            lease_extend_validation_changes_nothing,
            ack_validation_changes_nothing,
            list_and_dead_validation_changes_nothing,
            // Ordering keys.
            ordering_fifo_across_priority_and_run_at,
            ordering_lease_count_past_blocked_key,
            ordering_moves_on_after_complete_and_cancel,
            ordering_retrying_blocks,
            ordering_lease_expiry_keeps_order,
            ordering_dead_blocks_until_redrive_or_discard,
            ordering_dead_skip,
            ordering_survives_restart,
            // Flow limits.
            limits_queue_concurrency_max,
            limits_group_concurrency_max,
            limits_fair_turns_across_groups,
            limits_queue_rate,
            limits_group_rate,
            limits_configure_validate_and_restart,
            limits_with_ordering_keys,
            limits_waiting_reasons,
            limits_rate_limited_failure_backs_off_the_queue,
            // Circuit breaker.
            breaker_opens_at_ratio_across_workers,
            breaker_open_leases_nothing,
            breaker_half_open_probes_then_closes,
            breaker_probe_failure_reopens,
            breaker_counts_expiry_not_cancel,
            breaker_force_open_and_close,
            breaker_configure_validates_and_removes,
            breaker_state_survives_restart,
            // Schedules.
            schedule_put_get_list_delete,
            schedule_put_validates,
            schedule_ticks_once_per_instant_across_restarts,
            schedule_misfire_policies,
            schedule_overlap_policies,
            schedule_pause_resume_trigger,
            schedule_jitter_delays_within_bound,
            schedule_cron_rule_in_a_zone,
            schedule_clock_steps_neither_burst_nor_double_fire,
            // Model-based.
            model_random_operations,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name($make).await
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Shared helpers: one place that calls the store, so each test reads as data and expectations.
// ---------------------------------------------------------------------------------------------

/// The suite's epoch: every test starts its clock here and only moves it forward.
pub const T0: Timestamp = Timestamp(1_700_000_000_000);

/// A generous maintenance limit: larger than any test's population.
const MAINTAIN_LIMIT: usize = 10_000;

pub(crate) fn q(name: &str) -> QueueName {
    QueueName::new(name).expect("test queue names are valid")
}

pub(crate) fn payload(s: &str) -> Payload {
    Payload::new(s.as_bytes().to_vec())
}

pub(crate) fn new_job(queue: &str, body: &str) -> NewJob {
    NewJob::new(q(queue), payload(body))
}

/// A backoff whose delay is 0 or 1 ms: retries are due (almost) at once, so tests that are not
/// about backoff do not have to wait it out.
pub(crate) const BACKOFF_1MS: Backoff = Backoff { base_ms: 1, factor: 1.0, cap_ms: 1 };

pub(crate) fn other_lease(l: LeaseId) -> LeaseId {
    LeaseId(l.0 ^ 0x5a5a_5a5a_0000_0001)
}

/// The store under test, the harness that can restart it, and the test's clock.
pub(crate) struct Ctx<H: Harness> {
    h: H,
    store: Option<H::Store>,
    pub now: Timestamp,
    pub worker: WorkerId,
}

impl<H: Harness> Ctx<H> {
    pub async fn open(mut h: H) -> Ctx<H> {
        let store = h.open().await;
        Ctx { h, store: Some(store), now: T0, worker: WorkerId::new("worker-1").unwrap() }
    }

    pub fn store(&self) -> &H::Store {
        self.store.as_ref().expect("store is open")
    }

    pub async fn restart(&mut self) {
        let store = self.store.take().expect("store is open");
        self.store = Some(self.h.restart(store).await);
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.add_ms(ms);
    }

    pub fn set_now(&mut self, t: Timestamp) {
        assert!(t >= self.now, "the test clock only moves forward ({} -> {})", self.now, t);
        self.now = t;
    }

    pub async fn try_insert(&self, jobs: Vec<NewJob>) -> Result<Vec<Inserted>, Error> {
        self.store().job_insert(JobInsert { now: self.now, jobs }).await
    }

    pub async fn insert(&self, jobs: Vec<NewJob>) -> Vec<Inserted> {
        let n = jobs.len();
        let inserted = self.try_insert(jobs).await.unwrap_or_else(|e| panic!("job_insert at {}: {e:?}", self.now));
        assert_eq!(inserted.len(), n, "job_insert returns one result per job");
        inserted
    }

    pub async fn insert_one(&self, job: NewJob) -> JobId {
        let inserted = self.insert(vec![job]).await;
        assert!(!inserted[0].duplicate, "a job without a matching idempotency key is not a duplicate");
        inserted[0].id
    }

    pub fn lease_params(&self, queues: &[&str], count_max: usize) -> JobLease {
        JobLease {
            now: self.now,
            queues: queues.iter().map(|n| q(n)).collect(),
            count_max,
            worker: self.worker.clone(),
            lease_ms: None,
        }
    }

    pub async fn try_lease_with(&self, p: JobLease) -> Result<Vec<LeasedJob>, Error> {
        self.store().job_lease(p).await
    }

    pub async fn lease_with(&self, p: JobLease) -> Vec<LeasedJob> {
        let count_max = p.count_max;
        let leased = self.try_lease_with(p).await.unwrap_or_else(|e| panic!("job_lease at {}: {e:?}", self.now));
        assert!(leased.len() <= count_max, "job_lease returned {} jobs for count_max {count_max}", leased.len());
        leased
    }

    pub async fn lease(&self, queues: &[&str], count_max: usize) -> Vec<LeasedJob> {
        self.lease_with(self.lease_params(queues, count_max)).await
    }

    /// Leases exactly one job from `queue` and checks it is `id`.
    pub async fn lease_one(&self, queue: &str, id: JobId) -> LeasedJob {
        let mut leased = self.lease(&[queue], 1).await;
        assert_eq!(leased.len(), 1, "expected job {id} to be leasable from {queue} at {}", self.now);
        let l = leased.pop().unwrap();
        assert_eq!(l.id, id, "leased the wrong job from {queue} at {}", self.now);
        l
    }

    /// Moves the clock forward one millisecond at a time (at most `ms_max`) until `id` is
    /// leasable, and leases it. For jobs whose backoff is [`BACKOFF_1MS`].
    pub async fn lease_when_due(&mut self, queue: &str, id: JobId, ms_max: u64) -> LeasedJob {
        for _ in 0..=ms_max {
            let mut leased = self.lease(&[queue], 1).await;
            if let Some(l) = leased.pop() {
                assert_eq!(l.id, id, "leased the wrong job from {queue} at {}", self.now);
                return l;
            }
            self.advance(1);
        }
        panic!("job {id} was not leasable within {ms_max} ms");
    }

    pub async fn try_get(&self, id: JobId) -> Option<Job> {
        self.store().job_get(id).await.unwrap_or_else(|e| panic!("job_get({id}): {e:?}"))
    }

    pub async fn get(&self, id: JobId) -> Job {
        self.try_get(id).await.unwrap_or_else(|| panic!("job {id} not found"))
    }

    pub async fn heartbeat(&self, job: JobId, lease: LeaseId, extend_ms: Option<u64>) -> Result<LeaseExtended, Error> {
        self.store()
            .lease_extend(LeaseExtend { now: self.now, job, lease, extend_ms, progress: None, checkpoint: None })
            .await
    }

    pub async fn try_ack(&self, acks: Vec<Ack>) -> Result<Vec<Result<Acked, Error>>, Error> {
        self.store().job_ack(JobAck { now: self.now, acks }).await
    }

    pub async fn ack(&self, acks: Vec<Ack>) -> Vec<Result<Acked, Error>> {
        let n = acks.len();
        let results = self.try_ack(acks).await.unwrap_or_else(|e| panic!("job_ack at {}: {e:?}", self.now));
        assert_eq!(results.len(), n, "job_ack returns one result per ack");
        results
    }

    pub async fn ack_one(&self, job: JobId, lease: LeaseId, outcome: AckOutcome) -> Result<Acked, Error> {
        self.ack(vec![Ack { job, lease, outcome }]).await.pop().unwrap()
    }

    pub async fn complete(&self, job: JobId, lease: LeaseId) -> Result<Acked, Error> {
        self.ack_one(job, lease, AckOutcome::Complete { result: None }).await
    }

    pub async fn fail(
        &self,
        job: JobId,
        lease: LeaseId,
        error: &str,
        retryable: bool,
        retry_after_ms: Option<u64>,
    ) -> Result<Acked, Error> {
        self.ack_one(
            job,
            lease,
            AckOutcome::Fail { error: error.to_owned(), retryable, retry_after_ms, rate_limited: false },
        )
        .await
    }

    pub async fn cancel(&self, job: JobId) -> Result<JobState, Error> {
        self.store().job_cancel(JobCancel { now: self.now, job }).await
    }

    pub fn maintain(&self) -> Maintain {
        Maintain { now: self.now, limit: MAINTAIN_LIMIT }
    }

    pub async fn expire(&self) -> usize {
        self.expire_all().await.len()
    }

    /// Expires due leases, returning what became of each job.
    pub async fn expire_all(&self) -> Vec<Expired> {
        self.store().leases_expire(self.maintain()).await.unwrap_or_else(|e| panic!("leases_expire: {e:?}"))
    }

    pub async fn promote(&self) -> usize {
        self.store().jobs_promote(self.maintain()).await.unwrap_or_else(|e| panic!("jobs_promote: {e:?}"))
    }

    pub async fn prune(&self) -> usize {
        self.store().jobs_prune(self.maintain()).await.unwrap_or_else(|e| panic!("jobs_prune: {e:?}"))
    }

    pub async fn configure(&self, p: QueueConfigure) -> Result<QueueConfig, Error> {
        self.store().queue_configure(p).await
    }

    pub async fn stats(&self, queue: &str) -> QueueStats {
        self.store().queue_stats(&q(queue)).await.unwrap_or_else(|e| panic!("queue_stats({queue}): {e:?}"))
    }

    pub async fn queue_list(&self) -> Vec<QueueStats> {
        let mut list = self.store().queue_list().await.unwrap_or_else(|e| panic!("queue_list: {e:?}"));
        list.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        list
    }

    /// Every job matching `filter`, following pages of `limit`, checking the paging contract on
    /// the way (ids strictly increasing, pages bounded, `next` absent only at the end).
    pub async fn list_paged(&self, filter: JobFilter, limit: usize) -> Vec<JobSummary> {
        self.list_paged_in(filter, limit, false).await
    }

    /// [`Ctx::list_paged`] in either order: newest first, ids strictly decrease across pages.
    pub async fn list_paged_in(&self, filter: JobFilter, limit: usize, newest_first: bool) -> Vec<JobSummary> {
        let mut all: Vec<JobSummary> = Vec::new();
        let mut after = None;
        for _ in 0..100_000 {
            let page = self
                .store()
                .job_list(JobList { filter: filter.clone(), after, limit, newest_first })
                .await
                .unwrap_or_else(|e| panic!("job_list: {e:?}"));
            assert!(page.jobs.len() <= limit, "job_list page of {} for limit {limit}", page.jobs.len());
            for s in &page.jobs {
                if let Some(last) = all.last() {
                    let ordered = if newest_first { s.id < last.id } else { s.id > last.id };
                    assert!(ordered, "job_list returns ids in order across pages (newest first: {newest_first})");
                }
                if let Some(a) = after {
                    let beyond = if newest_first { s.id < a } else { s.id > a };
                    assert!(beyond, "job_list returns only ids beyond `after` (newest first: {newest_first})");
                }
                all.push(s.clone());
            }
            match page.next {
                Some(next) => {
                    assert!(!page.jobs.is_empty(), "job_list gave `next` with an empty page");
                    after = Some(next);
                }
                None => return all,
            }
        }
        panic!("job_list paging did not end");
    }

    pub async fn list(&self, filter: JobFilter) -> Vec<JobSummary> {
        self.list_paged(filter, Limits::PAGE_JOBS_MAX).await
    }

    pub async fn list_ids(&self, filter: JobFilter) -> Vec<JobId> {
        self.list(filter).await.into_iter().map(|s| s.id).collect()
    }

    /// Every job with its whole history, and every queue: for before/after comparisons.
    pub async fn snapshot(&self) -> Snapshot {
        let ids = self.list_ids(JobFilter::default()).await;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(self.get(id).await);
        }
        Snapshot { jobs, queues: self.queue_list().await }
    }

    /// Checks the store still holds exactly `before`.
    pub async fn assert_unchanged(&self, before: &Snapshot, context: &str) {
        let after = self.snapshot().await;
        assert_snapshots_eq(before, &after, context);
    }
}

/// Every job and queue of a store at one moment.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Snapshot {
    pub jobs: Vec<Job>,
    pub queues: Vec<QueueStats>,
}

pub(crate) fn assert_snapshots_eq(before: &Snapshot, after: &Snapshot, context: &str) {
    let ids = |s: &Snapshot| s.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(before), ids(after), "{context}: the set of jobs changed");
    for (b, a) in before.jobs.iter().zip(&after.jobs) {
        assert_job_eq(a, b, context);
    }
    assert_eq!(before.queues, after.queues, "{context}: queues or their counts changed");
}

#[track_caller]
pub(crate) fn assert_job_eq(actual: &Job, expected: &Job, context: &str) {
    if actual != expected {
        panic!("{context}: job {} differs\n--- expected:\n{expected:#?}\n--- actual:\n{actual:#?}", expected.id);
    }
}

#[track_caller]
pub(crate) fn assert_invalid<T: Debug>(r: Result<T, Error>, field: &str) {
    match r {
        Err(Error::Invalid(invalid)) => {
            assert_eq!(invalid.field, field, "Error::Invalid names the wrong field ({invalid})")
        }
        other => panic!("expected Error::Invalid naming {field:?}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_rejected<T: Debug>(r: Result<T, Error>, job: JobId, rejection: Rejection) {
    match r {
        Err(Error::Rejected { job: j, rejection: got }) => {
            assert_eq!(j, job, "Error::Rejected names the wrong job");
            assert_eq!(got, rejection, "job {job} rejected for the wrong reason");
        }
        other => panic!("expected job {job} to be rejected with {rejection:?}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_not_found<T: Debug>(r: Result<T, Error>, job: JobId) {
    match r {
        Err(Error::JobNotFound(j)) => assert_eq!(j, job, "Error::JobNotFound names the wrong job"),
        other => panic!("expected Error::JobNotFound({job}), got {other:?}"),
    }
}

/// Checks a queue's counts: the listed states have these counts, every other state is zero.
#[track_caller]
pub(crate) fn assert_counts(stats: &QueueStats, expected: &[(JobState, u64)]) {
    let mut want = [0u64; JobState::ALL.len()];
    for (state, n) in expected {
        want[state.index()] = *n;
    }
    if stats.counts != want {
        let show = |c: &[u64; JobState::ALL.len()]| {
            JobState::ALL
                .iter()
                .filter(|s| c[s.index()] != 0)
                .map(|s| format!("{}={}", s, c[s.index()]))
                .collect::<Vec<_>>()
                .join(" ")
        };
        panic!("queue {} counts: expected [{}], got [{}]", stats.config.name, show(&want), show(&stats.counts));
    }
}

pub(crate) fn kinds(job: &Job) -> Vec<HistoryKind> {
    job.history.iter().map(|e| e.kind).collect()
}

/// History without `Promoted` entries: whether a due job is promoted by a maintenance pass or by
/// the lease that takes it is the store's choice.
pub(crate) fn kinds_unpromoted(job: &Job) -> Vec<HistoryKind> {
    job.history.iter().map(|e| e.kind).filter(|k| *k != HistoryKind::Promoted).collect()
}

pub(crate) fn entries_of(job: &Job, kind: HistoryKind) -> Vec<&HistoryEntry> {
    job.history.iter().filter(|e| e.kind == kind).collect()
}

pub(crate) fn default_config(name: &str) -> QueueConfig {
    QueueConfig::new(q(name))
}

/// The job `new` should become when inserted at `now` into a queue with default policy.
pub(crate) fn expected_inserted(new: &NewJob, id: JobId, now: Timestamp) -> Job {
    new.clone().into_job(id, now, RetryPolicy::default(), Limits::LEASE_MS_DEFAULT)
}

pub(crate) fn redrive_not_allowed(state: JobState) -> Rejection {
    Rejection::NotAllowed { state, event: EventKind::Redrive }
}

/// `t` minus `ms` milliseconds.
pub(crate) fn before(t: Timestamp, ms: u64) -> Timestamp {
    Timestamp(t.0 - i64::try_from(ms).expect("small duration"))
}

/// What `event` at `now` should make of `job`, by the core's own transition function. For
/// deterministic events only: the random number is 0, so a backoff delay would be 0.
pub(crate) fn after(job: &Job, event: dray_core::Event<'_>, now: Timestamp) -> Job {
    let kind = event.kind();
    let t = dray_core::transition(job, event, now, 0)
        .unwrap_or_else(|r| panic!("test bug: {kind} on job {} is rejected by the core: {r}", job.id));
    let mut j = job.clone();
    j.apply(t);
    j
}

pub(crate) fn ids_of(leased: &[LeasedJob]) -> Vec<JobId> {
    leased.iter().map(|l| l.id).collect()
}
