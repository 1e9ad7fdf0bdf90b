//! The request and response bodies.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Any JSON value, kept byte for byte as the client sent it.
pub type Json = Box<RawValue>;

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Scheduled,
    Available,
    Running,
    Retrying,
    Completed,
    Dead,
    Cancelled,
    /// Waiting for the jobs it depends on (`depends_on`) to finish.
    Blocked,
}

/// What a job waiting for others does when one of them ends dead or cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDependencyFailure {
    /// The job ends cancelled, naming the dependency; the jobs depending on it follow.
    #[default]
    Cancel,
    /// The job runs once every dependency finished, and sees how each ended.
    Run,
}

/// A job another job depends on: an id, or the `key` of another job of the same batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DependencyRef {
    Id(u64),
    Key(String),
}

/// A dependency of a leased job as it ended.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DependencyResult {
    pub id: u64,
    /// `null` when the dependency no longer exists (discarded by an operator).
    pub state: Option<State>,
    /// Its result, when it completed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Json>,
}

impl State {
    /// The state's name on the wire: `running`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Available => "available",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Completed => "completed",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
            State::Blocked => "blocked",
        }
    }

    /// Completed, dead or cancelled: the job will not run again unless it is redriven. What
    /// `GET /v1/jobs/{id}?wait_ms=` waits for.
    pub fn is_finished(self) -> bool {
        matches!(self, State::Completed | State::Dead | State::Cancelled)
    }
}

/// Why a job is in the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    Failed,
    LeaseExpired,
    NonRetryable,
    Rejected,
}

/// Exponential backoff with full jitter: the wait before retry `n` is uniformly random in
/// `[0, min(cap_ms, base_ms * factor^(n-1))]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base_ms: u64,
    pub factor: f64,
    pub cap_ms: u64,
}

/// A job to enqueue: the body of `POST /v1/jobs` and each item of a batch.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueJob {
    pub queue: String,
    /// Any JSON value, handed to the worker as sent.
    #[schema(value_type = Value)]
    pub payload: Json,
    /// Higher runs first. -1000 to 1000, default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i16>,
    /// RFC 3339. Never delivered before this on the server's clock. Not with `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Run this long after the server accepts the job. Not with `run_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Deliveries in all, lease expiries included; default from the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Lease duration for each attempt; default from the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Within its window, the same key and payload return the original job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Jobs sharing an ordering key run one at a time, in enqueue order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub ordering_key: Option<String>,
    /// The job's group for the queue's `group_concurrency_max` and `group_rate`, and for fair
    /// turns: leases rotate across groups so a flooded group cannot starve the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub group_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// W3C trace context, also accepted as the `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// A name for this job within one batch, so that other jobs of the batch can name it in
    /// `depends_on` (1 to 128 bytes, unique in the batch). Not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 128)]
    pub key: Option<String>,
    /// The jobs that must finish before this one runs: ids of existing jobs, or `key`s of other
    /// jobs of the same batch. Until then the job is `blocked`. At most 1000.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 1000)]
    pub depends_on: Vec<DependencyRef>,
    /// When a dependency ends dead or cancelled: `cancel` (default) or `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dependency_failure: Option<OnDependencyFailure>,
}

/// `POST /v1/jobs/batch`: all jobs are enqueued, or none.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatch {
    pub jobs: Vec<EnqueueJob>,
}

/// One enqueued job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Enqueued {
    pub id: u64,
    pub state: State,
    /// The idempotency key matched an earlier job: `id` is that job's.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnqueuedBatch {
    pub jobs: Vec<Enqueued>,
}

/// `POST /v1/lease`: lease up to `count` jobs from `queues`, waiting up to `wait_ms` for one.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub queues: Vec<String>,
    /// The worker's name, recorded in job history.
    pub worker: String,
    /// 1 to 1000, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Overrides each job's lease duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Long-poll: when no job is available, wait up to this long for one. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A job handed to a worker.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LeasedJob {
    pub id: u64,
    pub queue: String,
    #[schema(value_type = Value)]
    pub payload: Json,
    pub priority: i16,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub attempts_max: u32,
    /// Present it with every heartbeat, completion and failure.
    pub lease_id: String,
    /// Strictly increasing across all leases; hand it to downstream systems.
    pub fencing_token: u64,
    /// The lease's length from now. Workers reason in durations, never in the server's timestamps.
    pub lease_ms: u64,
    /// RFC 3339, server clock; for display.
    pub deadline: String,
    /// What an earlier attempt saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub checkpoint: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub created_at: String,
    /// The jobs this one depended on, in the order it named them, with how each ended and its
    /// result. Absent for a job without dependencies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyResult>,
    /// The steps earlier attempts (or this job's earlier runs, before a redrive) recorded, by
    /// name: `{"fetch": {...}, "summarize": "..."}`, in recording order. Omitted when the job has
    /// recorded none. Skip them: `POST /v1/jobs/{id}/steps` would answer each with the same
    /// result.
    #[serde(default, skip_serializing_if = "StepResults::is_empty")]
    #[schema(value_type = Option<HashMap<String, Value>>)]
    pub steps: StepResults,
}

/// Step results by name, as a JSON object in recording order (`LeasedJob::steps`). Each result is
/// kept byte for byte as recorded.
#[derive(Clone, Debug, Default)]
pub struct StepResults(pub Vec<(String, Json)>);

impl StepResults {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The result recorded for `name`.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, r)| &**r)
    }

    /// The names, in recording order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
}

impl Serialize for StepResults {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, result)| (name, result)))
    }
}

impl<'de> Deserialize<'de> for StepResults {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<StepResults, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StepResults;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of step results by name")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StepResults, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((name, result)) = map.next_entry::<String, Json>()? {
                    out.push((name, result));
                }
                Ok(StepResults(out))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LeaseResponse {
    pub jobs: Vec<LeasedJob>,
}

/// `POST /v1/jobs/{id}/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub lease_id: String,
    /// New deadline = now + this; default the job's lease duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub progress: Option<Json>,
    /// Saved for the next attempt, should this one fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub checkpoint: Option<Json>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    pub lease_ms: u64,
    pub deadline: String,
    /// Someone cancelled the job: stop and report.
    pub cancel_requested: bool,
}

/// `POST /v1/jobs/{id}/steps`: the attempt holding `lease_id` finished step `name` with
/// `result`. The first record of a name wins (see `StepResponse`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    pub lease_id: String,
    /// 1 to 256 bytes, no control characters; unique within the job.
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    /// Any JSON value, at most 256 KiB; a job's steps hold at most 8 MiB together.
    #[schema(value_type = Value)]
    pub result: Json,
}

/// The step as recorded. `recorded` is false when the name was recorded before (by this attempt
/// or an earlier one): nothing changed, and `result` is the result recorded then, not the one
/// sent.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StepResponse {
    pub name: String,
    #[schema(value_type = Value)]
    pub result: Json,
    pub recorded: bool,
}

/// `POST /v1/jobs/{id}/complete`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub lease_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Json>,
}

/// `POST /v1/jobs/{id}/fail`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub lease_id: String,
    pub error: String,
    /// Default true. A non-retryable failure goes straight to the dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Replaces the backoff for this retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// A downstream rate limit turned the attempt away (an HTTP 429, a quota): the attempt is
    /// handed back (it does not count towards `attempts_max`), the job is retried after
    /// `retry_after_ms` (or its backoff), and its whole queue leases nothing until then.
    /// Cannot be combined with `retryable: false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited: bool,
}

/// What a completion or failure did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Acked {
    pub state: State,
    /// For a job that will be retried: when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
}

/// Complete or fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Complete,
    Fail,
}

/// One item of `POST /v1/ack`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    pub job: u64,
    pub lease_id: String,
    pub outcome: AckOutcome,
    /// For `complete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Json>,
    /// For `fail` (required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `fail`: a downstream rate limit turned the attempt away; see `FailRequest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rate_limited: bool,
}

/// `POST /v1/ack`: completions and failures in one durable write.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBatch {
    pub acks: Vec<AckItem>,
}

/// The result of one ack: `acked` when accepted, `problem` when refused (a stale lease, say).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AckResult {
    pub job: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<Acked>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AckBatchResponse {
    pub results: Vec<AckResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// `cancelled`, or `running` when the worker was asked to stop.
    pub state: State,
}

/// `POST /v1/jobs/{id}/promote`: the job's state after it was made available.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PromoteResponse {
    /// `available`.
    pub state: State,
}

/// `DELETE /v1/queues/{name}`: what went with the queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueDeletedResponse {
    pub name: String,
    /// Completed and cancelled jobs (kept for retention) deleted with the queue.
    pub jobs_deleted: u64,
}

/// A worker's lease on a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    pub lease_id: String,
    pub fencing_token: u64,
    pub worker: String,
    pub leased_at: String,
    pub deadline: String,
}

/// One change in a job's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub at: String,
    /// `enqueued`, `promoted`, `leased`, `completed`, `failed`, `expired`, `cancel_requested`,
    /// `cancelled`, `redriven`, `rejected` (a redrive refused by the queue's payload schema), `released`
    /// (every dependency of a blocked job finished as it requires),
    /// `step_recorded` (the running attempt recorded the step named in `step`).
    pub event: String,
    /// The state after the event.
    pub state: State,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// For `step_recorded`: the step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// A step a job's attempt recorded (`GET /v1/jobs/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobStep {
    pub name: String,
    #[schema(value_type = Value)]
    pub result: Json,
    /// RFC 3339, server clock.
    pub recorded_at: String,
    /// The attempt that recorded it.
    pub attempt: u32,
}

/// `GET /v1/jobs/{id}`: a job with its whole history.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: u64,
    pub queue: String,
    pub state: State,
    #[schema(value_type = Value)]
    pub payload: Json,
    pub priority: i16,
    pub attempt: u32,
    pub attempts_max: u32,
    pub backoff: Backoff,
    pub lease_ms: u64,
    pub created_at: String,
    pub run_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
    pub cancel_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub checkpoint: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub progress: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_key: Option<String>,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The schedule tick that enqueued the job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<JobScheduleTick>,
    /// The jobs it waits for (or waited for), in the order it named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<u64>,
    /// For a job with dependencies: what it does when one ends dead or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dependency_failure: Option<OnDependencyFailure>,
    pub history: Vec<HistoryEntry>,
    /// Oldest entries dropped to keep the history bounded (the first entry is always kept).
    pub history_dropped: u32,
    /// The steps its attempts recorded, in recording order; omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<JobStep>,
    /// Why an available job is not running yet, beyond waiting its turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<JobWaiting>,
}

impl Job {
    /// The `result` its worker completed it with, decoded as `T`; `None` when there is none (a
    /// job not completed, or completed without a result). The counterpart of a typed payload:
    ///
    /// ```
    /// # fn f(job: dray_api::Job) -> Result<(), serde_json::Error> {
    /// #[derive(serde::Deserialize)]
    /// struct Thumbnail { url: String }
    /// if let Some(thumbnail) = job.result_as::<Thumbnail>()? {
    ///     println!("{}", thumbnail.url);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn result_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, serde_json::Error> {
        self.result.as_deref().map(|raw| serde_json::from_str(raw.get())).transpose()
    }
}

/// What holds an available job back: the first reason the next lease would give.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobWaiting {
    pub reason: WaitingReason,
    /// The same, for people: "waiting for job 41 of ordering key order-7".
    pub detail: String,
    /// The ordering key or group key concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The job of the ordering key it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<u64>,
    /// Running jobs and the limit, for a concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// When the rate allows the next lease, for a rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingReason {
    Paused,
    Breaker,
    OrderingKey,
    QueueBackoff,
    Concurrency,
    GroupConcurrency,
    Rate,
    GroupRate,
}

/// The schedule and tick instant a job was enqueued for (for a trigger, the trigger's time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobScheduleTick {
    pub name: String,
    pub at: String,
}

/// A job in a list: no payload, no history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub id: u64,
    pub queue: String,
    pub state: State,
    pub priority: i16,
    pub attempt: u32,
    pub attempts_max: u32,
    pub created_at: String,
    pub run_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub tags: Vec<String>,
}

/// A page of jobs; pass `next` as `after` for the next page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Query of `GET /v1/jobs` and `GET /v1/dead`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// RFC 3339: jobs created at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from: Option<String>,
    /// RFC 3339: jobs created before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_until: Option<String>,
    /// Jobs whose last error contains this text (ignoring the case of ASCII letters); 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(min_length = 1, max_length = 256)]
    pub error: Option<String>,
    /// `oldest` (default: enqueue order) or `newest` first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// Cursor: the `next` of the previous page (in the same `order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// 1 to 1000, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/jobs/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobGetQuery {
    /// Long-poll: wait up to this many milliseconds for the job to finish (`completed`, `dead`
    /// or `cancelled`), then answer with the job as it is (read `state`); a finished job is
    /// answered at once. 0 to 60000; absent or 0 answers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 60000)]
    pub wait_ms: Option<u64>,
}

/// The order of a job list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Enqueue order (ascending ids).
    Oldest,
    /// Newest first (descending ids).
    Newest,
}

/// `POST /v1/dead/redrive` and `POST /v1/dead/discard`: either `ids`, or a filter with a `limit`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<DeadReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_until: Option<String>,
    /// Dead jobs whose last error contains this text (ignoring the case of ASCII letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub error: Option<String>,
    /// With a filter: act on at most this many (1 to 10000, default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Report what would be done, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadActionResponse {
    pub ids: Vec<u64>,
    pub count: usize,
    pub dry_run: bool,
    /// Redrive only: jobs left dead with reason `rejected`, their payload no longer matching
    /// their queue's `payload_schema` (their `last_error` says where).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<u64>,
}

/// `PUT /v1/queues/{name}`: creates the queue or changes the fields given.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfigure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// How long completed and cancelled jobs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// How long dead jobs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_dead_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// A JSON Schema every new payload must match (checked at enqueue and at redrive); `null`
    /// removes it. Self-contained: remote `$ref`s are not fetched.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    #[schema(value_type = Option<Object>, nullable)]
    pub payload_schema: Option<Option<serde_json::Value>>,
    /// Whether a dead job holds back the later jobs of its ordering key (`block`, the default)
    /// or the key moves on past it (`skip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_dead: Option<OrderingDead>,
    /// Jobs of the queue running at once, across every worker and node (1 to 1000000); `null`
    /// removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_as")]
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 1_000_000)]
    pub concurrency_max: Option<Option<u32>>,
    /// Jobs of one `group_key` running at once (1 to 1000000); `null` removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_as")]
    #[schema(value_type = Option<u32>, nullable, minimum = 1, maximum = 1_000_000)]
    pub group_concurrency_max: Option<Option<u32>>,
    /// Leases per time for the whole queue, on the server's clock; `null` removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_as")]
    #[schema(value_type = Option<Rate>, nullable)]
    pub rate: Option<Option<Rate>>,
    /// Leases per time for each `group_key`; `null` removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_as")]
    #[schema(value_type = Option<Rate>, nullable)]
    pub group_rate: Option<Option<Rate>>,
    /// The queue's circuit breaker; `null` removes it (and its state). See
    /// `docs/flow-control.md`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present_breaker")]
    #[schema(nullable)]
    pub breaker: Option<Option<BreakerConfig>>,
}

/// A token bucket: `limit` leases per `per_ms` milliseconds, and up to `burst` at once after a
/// quiet spell (default: `limit`). A job held back stays available and is charged no attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub limit: u32,
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub per_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<u32>,
}

/// A queue's circuit breaker: it opens when, among the attempts that ended within `window_ms`
/// (at least `min_attempts` of them), the failed share reaches `failure_ratio` (failures and lease
/// expiries count, cancellations do not); the queue then leases nothing for `open_ms`, then grants
/// `probes` trial leases: all succeeding close it, any failing opens it again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Greater than 0, at most 1.
    pub failure_ratio: f64,
    /// The sliding window, 1000 to 86400000 ms (ten buckets of a tenth each).
    pub window_ms: u64,
    /// 1 to 100000.
    pub min_attempts: u32,
    /// 1000 to 86400000 ms.
    pub open_ms: u64,
    /// 1 to 100.
    pub probes: u32,
}

/// `closed`: leases flow; `open`: the queue leases nothing; `half_open`: a few trial leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerStateName {
    Closed,
    Open,
    HalfOpen,
}

/// A queue's circuit breaker: its configuration and its state at the time of the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BreakerStatus {
    pub failure_ratio: f64,
    pub window_ms: u64,
    pub min_attempts: u32,
    pub open_ms: u64,
    pub probes: u32,
    pub state: BreakerStateName,
    /// Opened by an operator: it stays open until closed by hand.
    pub forced: bool,
    /// When it entered its state (absent: closed since it was configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    /// Open and not forced: when it turns half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_at: Option<String>,
    /// Half-open: trial leases granted, and how many succeeded.
    pub probes_granted: u32,
    pub probes_succeeded: u32,
    /// Closed: the attempts that ended within the window, and how many failed.
    pub window_attempts: u64,
    pub window_failures: u64,
    /// Transitions into each state so far.
    pub transitions: BreakerTransitions,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BreakerTransitions {
    pub closed: u64,
    pub open: u64,
    pub half_open: u64,
}

/// `POST /v1/queues/{name}/breaker`: an operator's order to the queue's breaker. `open` keeps it
/// open until a `close`; `close` closes it with an empty window.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerAction {
    pub action: BreakerActionKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerActionKind {
    Open,
    Close,
}

fn present_breaker<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<BreakerConfig>>, D::Error> {
    Ok(Some(Option::<BreakerConfig>::deserialize(d)?))
}

/// What a dead job does to the later jobs of its ordering key. Jobs of a queue sharing an
/// `ordering_key` run one at a time in enqueue order; `block` keeps the key waiting until the
/// dead job is redriven or discarded, `skip` lets the key move on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderingDead {
    Block,
    Skip,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value (`Some(Some(v))`).
fn present_as<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?))
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value (`Some(Some(v))`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Ok(Some(Option::<serde_json::Value>::deserialize(d)?))
}

/// How many of a queue's jobs are in each state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateCounts {
    pub scheduled: u64,
    pub available: u64,
    pub running: u64,
    pub retrying: u64,
    pub completed: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Waiting for the jobs they depend on.
    #[serde(default)]
    pub blocked: u64,
}

/// A queue's configuration and counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Queue {
    pub name: String,
    pub paused: bool,
    pub attempts_max: u32,
    pub backoff: Backoff,
    pub lease_ms: u64,
    pub retention_ms: u64,
    pub retention_dead_ms: u64,
    /// The JSON Schema payloads must match, when the queue has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload_schema: Option<serde_json::Value>,
    /// Whether a dead job holds back the later jobs of its ordering key.
    pub ordering_dead: OrderingDead,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_concurrency_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_rate: Option<Rate>,
    pub counts: StateCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_dead_at: Option<String>,
    /// The circuit breaker, when the queue has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerStatus>,
    /// While a worker's report of a downstream rate limit (`rate_limited` on a failure) holds
    /// the queue: it leases nothing until then (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    pub queues: Vec<Queue>,
}

/// An error, as `application/problem+json` (RFC 9457).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:dray:problem:stale-lease`. Stable: match on it,
    /// not on `title` or `detail`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, e.g. `jobs[3].payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The job concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<u64>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// `GET /v1/workers`: the workers that asked this node for jobs recently. Node-local: with
/// several nodes on one PostgreSQL database, each node lists the workers polling it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    /// Most recently seen first.
    pub workers: Vec<WorkerStatus>,
    /// How long a worker that stopped polling and holds no lease stays listed.
    pub forget_after_ms: u64,
    /// At most this many workers are remembered (the least recently seen go first).
    pub workers_max: usize,
}

/// One worker, as this node saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerStatus {
    pub id: String,
    /// The queues it asked for, by name.
    pub queues: Vec<String>,
    /// RFC 3339: its first lease request since this node started (or since it was forgotten).
    pub first_seen: String,
    /// RFC 3339: the latest moment a lease request of its was in progress (now while one is), or
    /// a heartbeat or ack of one of its leases came in.
    pub last_seen: String,
    /// Its lease requests (long-polls included) in progress now.
    pub polling: u32,
    /// Jobs this node handed it since `first_seen`.
    pub leased_total: u64,
    /// `busy` while it holds a lease (`leases` is not empty), else `idle` (polling, or seen within
    /// `forget_after_ms`).
    pub state: String,
    /// The leases this node handed it that the store still shows running under that same lease,
    /// with their current deadline.
    pub leases: Vec<WorkerLease>,
}

/// A lease a worker holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerLease {
    pub job: u64,
    pub queue: String,
    pub lease_id: String,
    pub fencing_token: u64,
    pub leased_at: String,
    /// RFC 3339, server clock; heartbeats move it.
    pub deadline: String,
}

/// `POST /v1/tokens`: a new API token. Scopes are `read`, `enqueue`, `work` or `admin`, each
/// optionally limited to queue names matching a glob (`enqueue:billing.*`); see docs/security.md.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// A label for people (1 to 128 bytes).
    pub name: String,
    /// 1 to 32 scopes.
    pub scopes: Vec<String>,
    /// RFC 3339; after it the token is refused. Never, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The answer to `POST /v1/tokens`: the only time the secret (`token`) is shown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `null` when the token does not expire.
    pub expires_at: Option<String>,
    /// The secret, for `Authorization: Bearer <token>`. Shown once: Dray keeps only its hash.
    pub token: String,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: String,
    /// `null` when the token does not expire.
    pub expires_at: Option<String>,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// `GET /v1/tokens`: every token, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// `POST /dashboard/login`: the token the dashboard signs in with (kept in an `HttpOnly` cookie).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub token: String,
}
