//! Typed parameters and results of store operations. Each parameter that depends on time carries
//! `now`, the server's clock reading.

use dray_core::json::same_value;
use std::collections::HashMap;

use dray_core::{
    Breaker, BreakerPolicy, DeadReason, FencingToken, Invalid, Job, JobId, JobState, LeaseId, Limits, NewJob, Payload,
    QueueName, Rate, RetryPolicy, Step, Steps, Timestamp, WorkerId, limits::check_range,
};

/// Insert one job or an atomic batch.
#[derive(Clone, Debug)]
pub struct JobInsert {
    pub now: Timestamp,
    pub jobs: Vec<NewJob>,
}

impl JobInsert {
    /// Checks the batch and every job in it; errors name the job's index (`jobs[3].payload`).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.jobs.is_empty() {
            return Err(Invalid::new("jobs", "must hold at least one job"));
        }
        if self.jobs.len() > Limits::BATCH_JOBS_MAX {
            return Err(Invalid::new(
                "jobs",
                format!("has {} jobs; the limit is {}", self.jobs.len(), Limits::BATCH_JOBS_MAX),
            ));
        }
        let depends_on: Vec<&[dray_core::Dependency]> = self.jobs.iter().map(|j| j.depends_on.as_slice()).collect();
        dray_core::dependency::check_batch(&depends_on)?;
        let mut bytes = 0usize;
        let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            job.validate(self.now).map_err(|e| e.in_batch(i))?;
            bytes += job.payload.len();
            // Two jobs of one batch with one key must be the same job: a different payload is a
            // mistake in the request itself, whatever the store holds.
            if let Some(key) = job.idempotency_key.as_deref() {
                match keys.get(&(job.queue.as_str(), key)) {
                    Some(&j) if !same_value(self.jobs[j].payload.as_bytes(), job.payload.as_bytes()) => {
                        return Err(Invalid::new(
                            format!("jobs[{i}].idempotency_key"),
                            format!("{key:?} is also the key of jobs[{j}] in this batch, with a different payload"),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        keys.insert((job.queue.as_str(), key), i);
                    }
                }
            }
        }
        if bytes > Limits::BATCH_BYTES_MAX {
            return Err(Invalid::new(
                "jobs",
                format!("payloads total {bytes} bytes; the limit is {}", Limits::BATCH_BYTES_MAX),
            ));
        }
        Ok(())
    }
}

/// One job of an insert: its id, and whether it is an earlier job found by its idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub id: JobId,
    pub state: JobState,
    /// `true` when the idempotency key matched an earlier job with the same payload; `id` is then
    /// that job's id and nothing new was inserted.
    pub duplicate: bool,
}

/// Lease up to `count_max` jobs from `queues`.
#[derive(Clone, Debug)]
pub struct JobLease {
    pub now: Timestamp,
    pub queues: Vec<QueueName>,
    pub count_max: usize,
    pub worker: WorkerId,
    /// Overrides each job's lease duration.
    pub lease_ms: Option<u64>,
}

impl JobLease {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.queues.is_empty() {
            return Err(Invalid::new("queues", "must name at least one queue"));
        }
        if self.queues.len() > Limits::LEASE_QUEUES_MAX {
            return Err(Invalid::new(
                "queues",
                format!("names {} queues; the limit is {}", self.queues.len(), Limits::LEASE_QUEUES_MAX),
            ));
        }
        check_range("count_max", self.count_max, 1, Limits::LEASE_JOBS_MAX, "")?;
        if let Some(ms) = self.lease_ms {
            check_range("lease_ms", ms, Limits::LEASE_MS_MIN, Limits::LEASE_MS_MAX, "")?;
        }
        Ok(())
    }
}

/// A job handed to a worker under a lease.
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedJob {
    pub id: JobId,
    pub queue: QueueName,
    pub payload: Payload,
    pub priority: i16,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub attempts_max: u32,
    pub lease: LeaseId,
    pub token: FencingToken,
    /// On the server's clock.
    pub deadline: Timestamp,
    /// The time left on the lease when the grant committed, measured by a store that keeps its
    /// own clock (PostgreSQL: `deadline` minus the database's `clock_timestamp()` just before the
    /// commit, less the commit's own time). `None` when the store's clock is the caller's `now`
    /// (the embedded store): the caller measures `deadline` against that clock itself.
    pub lease_left_ms: Option<u64>,
    /// The checkpoint an earlier attempt saved, if any.
    pub checkpoint: Option<Payload>,
    /// Every step the job's attempts recorded, in recording order: the attempt skips them.
    pub steps: Steps,
    pub traceparent: Option<Box<str>>,
    pub created_at: Timestamp,
    /// When this attempt became due (its enqueue, its `run_at`, its retry time or its redrive):
    /// the lease's `now` minus this is the time the job waited for a worker.
    pub ready_at: Timestamp,
    /// The jobs this one depends on, in the order it named them, as they are at the lease:
    /// empty for a job without dependencies.
    pub dependencies: Vec<DependencyResult>,
}

/// A dependency of a leased job: how it ended and its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyResult {
    pub id: JobId,
    /// `None` when the dependency no longer exists (an operator discarded it).
    pub state: Option<JobState>,
    pub result: Option<Payload>,
}

impl LeasedJob {
    /// The delivery of `job` right after its lease transition, with `payload` (a store may read
    /// it separately) and the time this attempt became due, read before the transition. Its
    /// steps are `job.steps`: a store holding them elsewhere sets them afterwards.
    ///
    /// Panics if `job` holds no lease: call it only with a job the lease transition just ran on.
    pub fn of(job: &Job, payload: Payload, ready_at: Timestamp) -> LeasedJob {
        let lease = job.status.lease.as_ref().expect("a leased job holds a lease");
        LeasedJob {
            id: job.id,
            queue: job.queue.clone(),
            payload,
            priority: job.priority,
            attempt: job.status.attempt,
            attempts_max: job.retry.attempts_max,
            lease: lease.id,
            token: lease.token,
            deadline: lease.deadline,
            lease_left_ms: None,
            checkpoint: job.status.checkpoint.clone(),
            steps: job.steps.clone(),
            traceparent: job.traceparent.clone(),
            created_at: job.created_at,
            ready_at,
            dependencies: Vec::new(),
        }
    }
}

/// Extend a lease (heartbeat).
#[derive(Clone, Debug)]
pub struct LeaseExtend {
    pub now: Timestamp,
    pub job: JobId,
    pub lease: LeaseId,
    /// New deadline is `now + extend_ms`; `None` uses the job's lease duration.
    pub extend_ms: Option<u64>,
    pub progress: Option<Payload>,
    pub checkpoint: Option<Payload>,
}

impl LeaseExtend {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(ms) = self.extend_ms {
            check_range("extend_ms", ms, Limits::LEASE_MS_MIN, Limits::LEASE_MS_MAX, "")?;
        }
        if let Some(p) = &self.progress {
            dray_core::limits::check_bytes("progress", p.len(), Limits::PROGRESS_BYTES_MAX)?;
        }
        if let Some(c) = &self.checkpoint {
            dray_core::limits::check_bytes("checkpoint", c.len(), Limits::CHECKPOINT_BYTES_MAX)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseExtended {
    pub deadline: Timestamp,
    /// The time left on the extended lease when the heartbeat committed, as
    /// [`LeasedJob::lease_left_ms`]: `None` when the caller's `now` is the store's clock.
    pub lease_left_ms: Option<u64>,
    /// The job was asked to stop: the worker should wind down and report.
    pub cancel_requested: bool,
}

/// Record a step of a leased job's running attempt (`dray_core::Event::Step`).
#[derive(Clone, Debug)]
pub struct JobStep {
    pub now: Timestamp,
    pub job: JobId,
    pub lease: LeaseId,
    pub name: Box<str>,
    /// JSON text.
    pub result: Payload,
}

impl JobStep {
    /// The step's own bounds (`dray_core::step::validate`); the job's bounds are the
    /// transition's. Reads the whole result: call it before taking any lock.
    pub fn validate(&self) -> Result<(), Invalid> {
        dray_core::step::validate(&self.name, &self.result)
    }

    /// The core's event for this step.
    pub fn event(&self) -> dray_core::Event<'_> {
        dray_core::Event::Step { lease: self.lease, name: &self.name, result: self.result.clone() }
    }
}

/// What recording a step did: the step as recorded, and whether this call recorded it (`false`:
/// the name was recorded before, by this attempt or an earlier one, and `step` holds that first
/// record, whatever result this call sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecorded {
    pub step: Step,
    pub recorded: bool,
    pub queue: QueueName,
}

/// Complete or fail leased jobs, in one durable write.
#[derive(Clone, Debug)]
pub struct JobAck {
    pub now: Timestamp,
    pub acks: Vec<Ack>,
}

impl JobAck {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.acks.is_empty() {
            return Err(Invalid::new("acks", "must hold at least one ack"));
        }
        if self.acks.len() > Limits::BATCH_JOBS_MAX {
            return Err(Invalid::new(
                "acks",
                format!("has {} acks; the limit is {}", self.acks.len(), Limits::BATCH_JOBS_MAX),
            ));
        }
        for (i, ack) in self.acks.iter().enumerate() {
            let at = |e: Invalid| Invalid { field: format!("acks[{i}].{}", e.field), ..e };
            match &ack.outcome {
                AckOutcome::Complete { result: Some(r) } => {
                    dray_core::limits::check_bytes("result", r.len(), Limits::RESULT_BYTES_MAX).map_err(at)?
                }
                AckOutcome::Complete { result: None } => {}
                AckOutcome::Fail { retryable: false, rate_limited: true, .. } => {
                    return Err(at(Invalid::new(
                        "rate_limited",
                        "a rate-limited attempt is always retried, so it cannot also set retryable to false",
                    )));
                }
                AckOutcome::Fail { retry_after_ms: Some(ms), .. } => {
                    check_range("retry_after_ms", *ms, 0, Limits::RETRY_AFTER_MS_MAX, "").map_err(at)?
                }
                AckOutcome::Fail { .. } => {}
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Ack {
    pub job: JobId,
    pub lease: LeaseId,
    pub outcome: AckOutcome,
}

impl Ack {
    /// The core's event for this ack.
    pub fn event(&self) -> dray_core::Event<'_> {
        match &self.outcome {
            AckOutcome::Complete { result } => dray_core::Event::Complete { lease: self.lease, result: result.clone() },
            AckOutcome::Fail { error, retryable, retry_after_ms, rate_limited } => dray_core::Event::Fail {
                lease: self.lease,
                error,
                retryable: *retryable,
                retry_after_ms: *retry_after_ms,
                rate_limited: *rate_limited,
            },
        }
    }
}

#[derive(Clone, Debug)]
pub enum AckOutcome {
    Complete {
        result: Option<Payload>,
    },
    /// `error` longer than `Limits::ERROR_BYTES_MAX` is truncated. `rate_limited`: a downstream
    /// rate limit turned the attempt away; the attempt is handed back and the whole queue backs
    /// off until the job's retry (see `dray_core::Event::Fail`).
    Fail {
        error: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
        rate_limited: bool,
    },
}

/// What an accepted ack did to the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub state: JobState,
    /// For a job that will be retried: when.
    pub retry_at: Option<Timestamp>,
    pub queue: QueueName,
    /// The attempt the ack ended (1 for the first delivery).
    pub attempt: u32,
    /// When that attempt's lease was granted: the ack's `now` minus this is its run time.
    pub leased_at: Timestamp,
    /// The queues in which finishing this job released blocked dependents to `available`, once
    /// each: the server wakes their waiting workers. The embedded store fills it; PostgreSQL
    /// notifies those queues itself (in the ack's transaction) and leaves it empty.
    pub released: Vec<QueueName>,
}

/// A lease that ran out, and what became of its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub id: JobId,
    pub queue: QueueName,
    /// The attempt whose lease expired.
    pub attempt: u32,
    /// `Retrying` or `Dead`.
    pub state: JobState,
}

#[derive(Clone, Debug)]
pub struct JobCancel {
    pub now: Timestamp,
    pub job: JobId,
}

/// Run a scheduled or retrying job now.
#[derive(Clone, Debug)]
pub struct JobPromote {
    pub now: Timestamp,
    pub job: JobId,
}

/// Delete a queue that holds no work.
#[derive(Clone, Debug)]
pub struct QueueDelete {
    pub now: Timestamp,
    pub queue: QueueName,
}

/// What deleting a queue removed besides its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeleted {
    /// Finished (completed or cancelled) jobs kept for retention, deleted with the queue.
    pub jobs_deleted: u64,
}

/// A filter over jobs. Unset fields match everything.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub queue: Option<QueueName>,
    pub state: Option<JobState>,
    pub dead_reason: Option<DeadReason>,
    pub tag: Option<Box<str>>,
    /// Jobs created at or after this time.
    pub created_from: Option<Timestamp>,
    /// Jobs created before this time.
    pub created_until: Option<Timestamp>,
    /// Jobs whose last error contains this text, compared without regard to case (ASCII).
    pub error: Option<Box<str>>,
}

impl JobFilter {
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(error) = &self.error {
            if error.is_empty() {
                return Err(Invalid::new("error", "must not be empty"));
            }
            dray_core::limits::check_bytes("error", error.len(), Limits::ERROR_FILTER_BYTES_MAX)?;
        }
        Ok(())
    }

    /// Whether a job's last error matches the `error` filter (none set: every job does).
    pub fn error_matches(&self, last_error: Option<&str>) -> bool {
        match (&self.error, last_error) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(wanted), Some(error)) => {
                let wanted = wanted.to_ascii_lowercase();
                error.to_ascii_lowercase().contains(&wanted)
            }
        }
    }
}

/// A page of jobs, at most `limit` of them: in enqueue (id) order those with an id greater than
/// `after`, or newest first those with an id less than `after`.
#[derive(Clone, Debug)]
pub struct JobList {
    pub filter: JobFilter,
    pub after: Option<JobId>,
    pub limit: usize,
    pub newest_first: bool,
}

impl JobList {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_range("limit", self.limit, 1, Limits::PAGE_JOBS_MAX, "")?;
        self.filter.validate()
    }
}

/// Summaries of jobs, and where the next page starts (`None` when there is no more).
#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    pub next: Option<JobId>,
}

/// A job without its payload and history: for lists.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSummary {
    pub id: JobId,
    pub queue: QueueName,
    pub state: JobState,
    pub priority: i16,
    pub attempt: u32,
    pub attempts_max: u32,
    pub created_at: Timestamp,
    pub run_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub dead_reason: Option<DeadReason>,
    pub last_error: Option<Box<str>>,
    pub tags: Box<[Box<str>]>,
}

/// Which dead jobs an operation acts on: listed ids, or every dead job matching a filter (the
/// filter's `state` is ignored: it is always `dead`), at most `limit` of them.
#[derive(Clone, Debug)]
pub enum DeadSelection {
    Ids(Vec<JobId>),
    Filter { filter: JobFilter, limit: usize },
}

impl DeadSelection {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            DeadSelection::Ids(ids) if ids.is_empty() => Err(Invalid::new("ids", "must hold at least one id")),
            DeadSelection::Ids(ids) if ids.len() > Limits::BATCH_JOBS_MAX => {
                Err(Invalid::new("ids", format!("has {} ids; the limit is {}", ids.len(), Limits::BATCH_JOBS_MAX)))
            }
            DeadSelection::Ids(_) => Ok(()),
            DeadSelection::Filter { limit, filter } => {
                check_range("limit", *limit, 1, Limits::BATCH_JOBS_MAX, "")?;
                filter.validate()
            }
        }
    }
}

/// What a redrive did (or, for a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redriven {
    /// Moved back to `available`.
    pub ids: Vec<JobId>,
    /// Left dead with reason `rejected`: the payload no longer matches its queue's schema.
    pub rejected: Vec<JobId>,
}

#[derive(Clone, Debug)]
pub struct DeadRedrive {
    pub now: Timestamp,
    pub selection: DeadSelection,
    pub dry_run: bool,
}

#[derive(Clone, Debug)]
pub struct DeadDiscard {
    pub now: Timestamp,
    pub selection: DeadSelection,
    pub dry_run: bool,
}

/// A maintenance pass: act on at most `limit` jobs due at `now`.
#[derive(Clone, Copy, Debug)]
pub struct Maintain {
    pub now: Timestamp,
    pub limit: usize,
}

/// A queue's policy.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    pub name: QueueName,
    /// Default for jobs that do not set their own.
    pub retry: RetryPolicy,
    /// Default lease duration for jobs that do not set their own.
    pub lease_ms: u64,
    /// How long completed and cancelled jobs are kept.
    pub retention_ms: u64,
    /// How long dead jobs are kept.
    pub retention_dead_ms: u64,
    /// A paused queue accepts jobs but leases none.
    pub paused: bool,
    /// Payloads must match this JSON Schema: checked at enqueue and at redrive (see
    /// [`crate::PayloadCheck`]).
    pub payload_schema: Option<PayloadSchema>,
    /// Whether a dead job holds back the later jobs of its ordering key.
    pub ordering_dead: OrderingDead,
    /// Flow control, decided at lease time across every worker and node: `None` is unlimited.
    pub limits: FlowLimits,
    /// The queue's circuit breaker (`None`: none). See `dray_core::breaker`.
    pub breaker: Option<BreakerPolicy>,
}

/// A queue's flow limits. A job held back by one stays available and is charged no attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowLimits {
    /// Jobs of the queue running at once.
    pub concurrency_max: Option<u32>,
    /// Jobs of one `group_key` running at once.
    pub group_concurrency_max: Option<u32>,
    /// Leases per time for the whole queue.
    pub rate: Option<Rate>,
    /// Leases per time for each `group_key`.
    pub group_rate: Option<Rate>,
}

impl FlowLimits {
    pub fn validate(&self) -> Result<(), Invalid> {
        let max = Limits::CONCURRENCY_MAX_MAX;
        if let Some(n) = self.concurrency_max {
            check_range("concurrency_max", n, 1, max, "")?;
        }
        if let Some(n) = self.group_concurrency_max {
            check_range("group_concurrency_max", n, 1, max, "")?;
        }
        if let Some(r) = &self.rate {
            r.validate("rate")?;
        }
        if let Some(r) = &self.group_rate {
            r.validate("group_rate")?;
        }
        Ok(())
    }

    pub fn is_unlimited(&self) -> bool {
        *self == FlowLimits::default()
    }
}

/// Changes to a queue's flow limits: `None` keeps a limit, `Some(None)` removes it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlowLimitsChange {
    pub concurrency_max: Option<Option<u32>>,
    pub group_concurrency_max: Option<Option<u32>>,
    pub rate: Option<Option<Rate>>,
    pub group_rate: Option<Option<Rate>>,
}

impl FlowLimitsChange {
    pub fn apply_to(&self, current: FlowLimits) -> FlowLimits {
        FlowLimits {
            concurrency_max: self.concurrency_max.unwrap_or(current.concurrency_max),
            group_concurrency_max: self.group_concurrency_max.unwrap_or(current.group_concurrency_max),
            rate: self.rate.unwrap_or(current.rate),
            group_rate: self.group_rate.unwrap_or(current.group_rate),
        }
    }
}

/// What a dead job does to the later jobs of its ordering key. Within a queue, jobs sharing an
/// ordering key run one at a time in enqueue order; a dead job is not finished business, so by
/// default it holds its key until it is redriven or discarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderingDead {
    /// A dead job blocks its key until it is redriven or discarded (strict order).
    #[default]
    Block,
    /// The key moves on past dead jobs.
    Skip,
}

impl OrderingDead {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderingDead::Block => "block",
            OrderingDead::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<OrderingDead> {
        match s {
            "block" => Some(OrderingDead::Block),
            "skip" => Some(OrderingDead::Skip),
            _ => None,
        }
    }
}

impl QueueConfig {
    /// The policy a queue gets when its first job arrives before anyone configured it.
    pub fn new(name: QueueName) -> QueueConfig {
        QueueConfig {
            name,
            retry: RetryPolicy::default(),
            lease_ms: Limits::LEASE_MS_DEFAULT,
            retention_ms: Limits::RETENTION_MS_DEFAULT,
            retention_dead_ms: Limits::RETENTION_DEAD_MS_DEFAULT,
            paused: false,
            payload_schema: None,
            ordering_dead: OrderingDead::Block,
            limits: FlowLimits::default(),
            breaker: None,
        }
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        self.limits.validate()?;
        if let Some(schema) = &self.payload_schema {
            let len = schema.as_str().len();
            if len > Limits::PAYLOAD_SCHEMA_BYTES_MAX {
                return Err(Invalid::new(
                    "payload_schema",
                    format!("is {len} bytes; the limit is {} bytes", Limits::PAYLOAD_SCHEMA_BYTES_MAX),
                ));
            }
        }
        self.retry.validate()?;
        check_range("lease_ms", self.lease_ms, Limits::LEASE_MS_MIN, Limits::LEASE_MS_MAX, "")?;
        check_range("retention_ms", self.retention_ms, 0, Limits::RETENTION_MS_MAX, "")?;
        check_range("retention_dead_ms", self.retention_dead_ms, 0, Limits::RETENTION_MS_MAX, "")?;
        if let Some(breaker) = &self.breaker {
            breaker.validate()?;
        }
        Ok(())
    }
}

/// Changes to a queue's configuration; `None` keeps the current value (or the default for a new
/// queue).
#[derive(Clone, Debug)]
pub struct QueueConfigure {
    pub now: Timestamp,
    pub name: QueueName,
    pub retry: Option<RetryPolicy>,
    pub lease_ms: Option<u64>,
    pub retention_ms: Option<u64>,
    pub retention_dead_ms: Option<u64>,
    pub paused: Option<bool>,
    /// `Some(None)` removes the schema.
    pub payload_schema: Option<Option<PayloadSchema>>,
    pub ordering_dead: Option<OrderingDead>,
    pub limits: FlowLimitsChange,
    /// `Some(None)` removes the breaker (and its state).
    pub breaker: Option<Option<BreakerPolicy>>,
}

impl QueueConfigure {
    pub fn new(now: Timestamp, name: QueueName) -> QueueConfigure {
        QueueConfigure {
            now,
            name,
            retry: None,
            lease_ms: None,
            retention_ms: None,
            retention_dead_ms: None,
            paused: None,
            payload_schema: None,
            ordering_dead: None,
            limits: FlowLimitsChange::default(),
            breaker: None,
        }
    }

    /// `current` with these changes applied, validated.
    pub fn apply_to(&self, current: &QueueConfig) -> Result<QueueConfig, Invalid> {
        let config = QueueConfig {
            name: current.name.clone(),
            retry: self.retry.unwrap_or(current.retry),
            lease_ms: self.lease_ms.unwrap_or(current.lease_ms),
            retention_ms: self.retention_ms.unwrap_or(current.retention_ms),
            retention_dead_ms: self.retention_dead_ms.unwrap_or(current.retention_dead_ms),
            paused: self.paused.unwrap_or(current.paused),
            payload_schema: self.payload_schema.clone().unwrap_or_else(|| current.payload_schema.clone()),
            ordering_dead: self.ordering_dead.unwrap_or(current.ordering_dead),
            limits: self.limits.apply_to(current.limits),
            breaker: self.breaker.unwrap_or(current.breaker),
        };
        config.validate()?;
        Ok(config)
    }
}

/// A queue's configuration and how many of its jobs are in each state.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueStats {
    pub config: QueueConfig,
    /// Indexed by `JobState::index()`.
    pub counts: [u64; JobState::ALL.len()],
    /// When the longest-dead job died.
    pub oldest_dead_at: Option<Timestamp>,
    /// The breaker's state, when the queue has a breaker (`config.breaker`): what it was when last
    /// changed; `Breaker::view` says what it is at a given moment.
    pub breaker: Option<Breaker>,
    /// Until when the queue leases nothing because a worker reported a downstream rate limit
    /// (`AckOutcome::Fail::rate_limited`); possibly in the past.
    pub backoff_until: Option<Timestamp>,
}

impl QueueStats {
    pub fn count(&self, state: JobState) -> u64 {
        self.counts[state.index()]
    }
}

/// An operator's order to a queue's circuit breaker.
#[derive(Clone, Debug)]
pub struct BreakerForce {
    pub now: Timestamp,
    pub queue: QueueName,
    /// `true`: open it, and keep it open until closed by hand; `false`: close it (its window
    /// starts empty).
    pub open: bool,
}

/// A queue's breaker config changing from `before` to `after`: the state it keeps. A new breaker
/// starts closed; a changed policy keeps the state but empties the window (its buckets may have
/// changed width); no breaker keeps no state.
pub fn breaker_reconfigured(
    before: Option<&BreakerPolicy>,
    after: Option<&BreakerPolicy>,
    state: Option<Breaker>,
) -> Option<Breaker> {
    let after = after?;
    match (before, state) {
        (Some(b), Some(state)) if b == after => Some(state),
        (_, Some(mut state)) => {
            state.window_reset();
            Some(state)
        }
        (_, None) => Some(Breaker::new()),
    }
}

/// A queue's JSON Schema for payloads, as JSON text (the server checks that it is a schema before
/// a store ever sees it). Cloning shares the text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayloadSchema(std::sync::Arc<str>);

impl PayloadSchema {
    pub fn new(json: impl Into<std::sync::Arc<str>>) -> PayloadSchema {
        PayloadSchema(json.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks payloads against queue schemas. The store knows no JSON Schema: the server gives it a
/// checker ([`crate::Store::payload_check_set`]), which the store calls where it decides, so the
/// schema checked is the one the store holds at that moment (on every node alike).
pub trait PayloadCheck: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` when `payload` matches `schema`; `Err` says where it does not, naming the JSON
    /// pointer of the failing part (`payload at /amount: "x" is not of type "integer"`).
    fn check(&self, schema: &PayloadSchema, payload: &Payload) -> Result<(), String>;
}

/// Runs `check` (when there is one) on a new job's payload against its queue's schema (when it
/// has one); the error names the payload field.
pub fn payload_checked(
    check: Option<&dyn PayloadCheck>,
    config: &QueueConfig,
    payload: &Payload,
) -> Result<(), Invalid> {
    match (check, &config.payload_schema) {
        (Some(check), Some(schema)) => check.check(schema, payload).map_err(|message| Invalid::new("payload", message)),
        _ => Ok(()),
    }
}

/// Why an available job is not running yet, beyond waiting its turn: what the store's lease
/// would hold it back for now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// The queue is paused.
    Paused,
    /// The queue's circuit breaker is open (until `until` when it opened by itself; a breaker
    /// forced open has no end), or half-open with every probe granted.
    Breaker { half_open: bool, until: Option<Timestamp> },
    /// An earlier job of its ordering key (`behind`) has not finished, or one of the key's jobs runs.
    OrderingKey { key: Box<str>, behind: JobId },
    /// The queue runs `running` jobs, at its `concurrency_max`.
    Concurrency { running: u64, max: u32 },
    /// The job's group runs `running` jobs, at the queue's `group_concurrency_max`.
    GroupConcurrency { group: Box<str>, running: u64, max: u32 },
    /// A worker reported a downstream rate limit: the queue leases nothing until `until`.
    QueueBackoff { until: Timestamp },
    /// The queue's rate bucket is empty until `until`.
    Rate { until: Timestamp },
    /// The group's rate bucket is empty until `until`.
    GroupRate { group: Box<str>, until: Timestamp },
}

/// What a store knows about an available job's surroundings, for [`WaitFacts::waiting`].
#[derive(Clone, Debug, Default)]
pub struct WaitFacts {
    /// The earliest job of the job's ordering key that holds it back, if any.
    pub key_blocker: Option<JobId>,
    /// Running jobs of the queue and of the job's group (counted only where a limit applies).
    pub queue_running: u64,
    pub group_running: u64,
    /// When the queue's and the group's rate buckets next allow a lease, if they are empty now
    /// (from `dray_core::Rate::ready`).
    pub queue_rate_until: Option<Timestamp>,
    pub group_rate_until: Option<Timestamp>,
    /// The queue's circuit breaker, when it has one.
    pub breaker: Option<Breaker>,
    /// Until when the queue backs off after a worker reported a downstream rate limit.
    pub backoff_until: Option<Timestamp>,
}

impl WaitFacts {
    /// The first reason that holds `job` back under `config` at `now`, in the order the lease
    /// checks them; `None` for a job that is not available or only waits its turn.
    pub fn waiting(&self, job: &Job, config: &QueueConfig, now: Timestamp) -> Option<Waiting> {
        if job.state() != JobState::Available {
            return None;
        }
        let l = &config.limits;
        if config.paused {
            return Some(Waiting::Paused);
        }
        if let (Some(policy), Some(breaker)) = (&config.breaker, &self.breaker) {
            let view = breaker.view(policy, now);
            match view.state {
                dray_core::BreakerState::Open => {
                    return Some(Waiting::Breaker { half_open: false, until: view.half_open_at });
                }
                dray_core::BreakerState::HalfOpen if view.probes_granted >= policy.probes => {
                    return Some(Waiting::Breaker { half_open: true, until: None });
                }
                _ => {}
            }
        }
        if let Some(until) = self.backoff_until.filter(|until| *until > now) {
            return Some(Waiting::QueueBackoff { until });
        }
        if let (Some(key), Some(behind)) = (&job.ordering_key, self.key_blocker) {
            return Some(Waiting::OrderingKey { key: key.clone(), behind });
        }
        if let Some(max) = l.concurrency_max
            && self.queue_running >= u64::from(max)
        {
            return Some(Waiting::Concurrency { running: self.queue_running, max });
        }
        if let (Some(group), Some(max)) = (&job.group_key, l.group_concurrency_max)
            && self.group_running >= u64::from(max)
        {
            return Some(Waiting::GroupConcurrency { group: group.clone(), running: self.group_running, max });
        }
        if let Some(until) = self.queue_rate_until.filter(|until| l.rate.is_some() && *until > now) {
            return Some(Waiting::Rate { until });
        }
        if let (Some(group), Some(until)) =
            (&job.group_key, self.group_rate_until.filter(|until| l.group_rate.is_some() && *until > now))
        {
            return Some(Waiting::GroupRate { group: group.clone(), until });
        }
        None
    }
}
