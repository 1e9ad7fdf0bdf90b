//! Conversions between the wire bodies and the core's types, written by hand so the public JSON
//! can stay stable while the core changes. From the wire, every conversion checks its input and
//! names the field it refuses.

use dray_core::{Invalid, LeaseId, Limits, NewJob, Payload, QueueName, Timestamp};
use serde_json::value::RawValue;

use crate::types::*;

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-21T08:00:00.250Z`.
pub fn timestamp_string(t: Timestamp) -> String {
    match jiff::Timestamp::from_millisecond(t.0) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => format!("{}ms", t.0),
    }
}

/// Parses RFC 3339 (any offset; stored as UTC).
pub fn timestamp_parse(field: &str, s: &str) -> Result<Timestamp, Invalid> {
    s.parse::<jiff::Timestamp>()
        .map(|ts| Timestamp(ts.as_millisecond()))
        .map_err(|_| Invalid::new(field, format!("{s:?} is not an RFC 3339 timestamp (like 2026-11-21T09:00:00Z)")))
}

/// A `run_at`: RFC 3339, and within `Limits::RUN_AT_AHEAD_MS_MAX` of now (checked with the clock
/// in `NewJob::validate`). A well-formed timestamp past the year 9998 is beyond what the server's
/// time type holds; it is refused for being too far ahead, which is what is wrong with it.
fn run_at_parse(s: &str) -> Result<Timestamp, Invalid> {
    timestamp_parse("run_at", s).map_err(|e| {
        let year = s.split_once('-').and_then(|(y, _)| y.parse::<u64>().ok());
        match year {
            Some(year) if year >= 9999 && s.contains(['T', 't', ' ']) => Invalid::new(
                "run_at",
                format!(
                    "{s:?} is too far ahead; the limit is {} ms ({} days) from now",
                    dray_core::Limits::RUN_AT_AHEAD_MS_MAX,
                    dray_core::Limits::RUN_AT_AHEAD_MS_MAX / 86_400_000
                ),
            ),
            _ => e,
        }
    })
}

pub fn lease_id_string(id: LeaseId) -> String {
    format!("{:016x}", id.0)
}

pub fn lease_id_parse(s: &str) -> Result<LeaseId, Invalid> {
    if s.len() != 16 {
        return Err(Invalid::new("lease_id", "must be the 16 hex digits the lease was granted with"));
    }
    u64::from_str_radix(s, 16)
        .map(LeaseId)
        .map_err(|_| Invalid::new("lease_id", "must be the 16 hex digits the lease was granted with"))
}

/// Raw JSON as stored bytes, kept as sent. serde checked the syntax while parsing; this refuses
/// what serde lets through but no worker could read back: a lone surrogate escape (`"\ud800"`)
/// and a number beyond a double's range (`1e400`). See `dray_core::json::check`.
pub fn payload_from_json(field: &str, json: &RawValue) -> Result<Payload, Invalid> {
    let text = json.get().as_bytes();
    dray_core::json::check(text).map_err(|e| Invalid::new(field, e))?;
    Ok(Payload::new(text))
}

/// Stored bytes as raw JSON. Only bytes that came from [`payload_from_json`] are stored, so they
/// are valid JSON; anything else would be a bug, shown as a JSON string rather than a panic.
pub fn payload_to_json(p: &Payload) -> Json {
    let text = String::from_utf8_lossy(p.as_bytes()).into_owned();
    match RawValue::from_string(text) {
        Ok(raw) => raw,
        Err(_) => {
            let quoted = serde_json::to_string(&String::from_utf8_lossy(p.as_bytes())).unwrap_or_default();
            RawValue::from_string(quoted).expect("a JSON string is valid JSON")
        }
    }
}

impl From<dray_core::JobState> for State {
    fn from(s: dray_core::JobState) -> State {
        use dray_core::JobState as S;
        match s {
            S::Scheduled => State::Scheduled,
            S::Available => State::Available,
            S::Running => State::Running,
            S::Retrying => State::Retrying,
            S::Completed => State::Completed,
            S::Dead => State::Dead,
            S::Cancelled => State::Cancelled,
            S::Blocked => State::Blocked,
        }
    }
}

impl From<State> for dray_core::JobState {
    fn from(s: State) -> dray_core::JobState {
        use dray_core::JobState as S;
        match s {
            State::Scheduled => S::Scheduled,
            State::Available => S::Available,
            State::Running => S::Running,
            State::Retrying => S::Retrying,
            State::Completed => S::Completed,
            State::Dead => S::Dead,
            State::Cancelled => S::Cancelled,
            State::Blocked => S::Blocked,
        }
    }
}

impl From<dray_core::DeadReason> for DeadReason {
    fn from(r: dray_core::DeadReason) -> DeadReason {
        use dray_core::DeadReason as R;
        match r {
            R::Failed => DeadReason::Failed,
            R::LeaseExpired => DeadReason::LeaseExpired,
            R::NonRetryable => DeadReason::NonRetryable,
            R::Rejected => DeadReason::Rejected,
        }
    }
}

impl From<DeadReason> for dray_core::DeadReason {
    fn from(r: DeadReason) -> dray_core::DeadReason {
        use dray_core::DeadReason as R;
        match r {
            DeadReason::Failed => R::Failed,
            DeadReason::LeaseExpired => R::LeaseExpired,
            DeadReason::NonRetryable => R::NonRetryable,
            DeadReason::Rejected => R::Rejected,
        }
    }
}

impl From<dray_core::Backoff> for Backoff {
    fn from(b: dray_core::Backoff) -> Backoff {
        Backoff { base_ms: b.base_ms, factor: b.factor, cap_ms: b.cap_ms }
    }
}

impl From<Backoff> for dray_core::Backoff {
    fn from(b: Backoff) -> dray_core::Backoff {
        dray_core::Backoff { base_ms: b.base_ms, factor: b.factor, cap_ms: b.cap_ms }
    }
}

impl From<OnDependencyFailure> for dray_core::OnDependencyFailure {
    fn from(p: OnDependencyFailure) -> dray_core::OnDependencyFailure {
        match p {
            OnDependencyFailure::Cancel => dray_core::OnDependencyFailure::Cancel,
            OnDependencyFailure::Run => dray_core::OnDependencyFailure::Run,
        }
    }
}

impl From<dray_core::OnDependencyFailure> for OnDependencyFailure {
    fn from(p: dray_core::OnDependencyFailure) -> OnDependencyFailure {
        match p {
            dray_core::OnDependencyFailure::Cancel => OnDependencyFailure::Cancel,
            dray_core::OnDependencyFailure::Run => OnDependencyFailure::Run,
        }
    }
}

impl EnqueueJob {
    /// The core's insert request, alone: a `depends_on` key (naming another job of a batch) is
    /// refused. Field checks that need the server's clock (how far ahead `run_at` may be) happen
    /// later, in `NewJob::validate`.
    pub fn to_core(&self) -> Result<NewJob, Invalid> {
        self.to_core_in(&std::collections::HashMap::new())
    }

    /// The core's insert request within a batch whose `key`s are at the given positions.
    fn to_core_in(&self, keys: &std::collections::HashMap<&str, usize>) -> Result<NewJob, Invalid> {
        let queue = QueueName::new(&self.queue)?;
        if let Some(key) = &self.key {
            dray_core::limits::check_bytes("key", key.len(), Limits::JOB_KEY_BYTES_MAX)?;
            if key.is_empty() || key.chars().any(char::is_control) {
                return Err(Invalid::new("key", "must be 1 or more characters without control characters"));
            }
        }
        if self.depends_on.len() > Limits::DEPENDS_ON_MAX {
            return Err(Invalid::new(
                "depends_on",
                format!("names {} jobs; the limit is {}", self.depends_on.len(), Limits::DEPENDS_ON_MAX),
            ));
        }
        let mut depends_on = Vec::with_capacity(self.depends_on.len());
        for (j, dep) in self.depends_on.iter().enumerate() {
            depends_on.push(match dep {
                DependencyRef::Id(id) => dray_core::Dependency::Job(dray_core::JobId(*id)),
                DependencyRef::Key(key) => match keys.get(key.as_str()) {
                    Some(&k) => dray_core::Dependency::Batch(k),
                    None if keys.is_empty() => {
                        return Err(Invalid::new(
                            format!("depends_on[{j}]"),
                            format!("names the key {key:?}: keys name jobs of the same batch (POST /v1/jobs/batch)"),
                        ));
                    }
                    None => {
                        return Err(Invalid::new(
                            format!("depends_on[{j}]"),
                            format!("names the key {key:?}, which no job of this batch has"),
                        ));
                    }
                },
            });
        }
        let run_at = self.run_at.as_deref().map(run_at_parse).transpose()?;
        Ok(NewJob {
            queue,
            payload: payload_from_json("payload", &self.payload)?,
            priority: self.priority.unwrap_or(0),
            run_at,
            delay_ms: self.delay_ms,
            attempts_max: self.attempts_max,
            backoff: self.backoff.map(Into::into),
            lease_ms: self.lease_ms,
            idempotency_key: self.idempotency_key.as_deref().map(Into::into),
            ordering_key: self.ordering_key.as_deref().map(Into::into),
            group_key: self.group_key.as_deref().map(Into::into),
            tags: self.tags.iter().map(|t| t.as_str().into()).collect(),
            traceparent: self.traceparent.as_deref().map(Into::into),
            schedule: None,
            depends_on,
            on_dependency_failure: self.on_dependency_failure.unwrap_or_default().into(),
        })
    }
}

impl From<dray_store::Inserted> for Enqueued {
    fn from(i: dray_store::Inserted) -> Enqueued {
        Enqueued { id: i.id.0, state: i.state.into(), duplicate: i.duplicate }
    }
}

impl LeasedJob {
    pub fn from_store(j: &dray_store::LeasedJob, now: Timestamp) -> LeasedJob {
        LeasedJob {
            id: j.id.0,
            queue: j.queue.to_string(),
            payload: payload_to_json(&j.payload),
            priority: j.priority,
            attempt: j.attempt,
            attempts_max: j.attempts_max,
            lease_id: lease_id_string(j.lease),
            fencing_token: j.token.0,
            lease_ms: j.lease_left_ms.unwrap_or_else(|| j.deadline.ms_since(now)),
            deadline: timestamp_string(j.deadline),
            checkpoint: j.checkpoint.as_ref().map(payload_to_json),
            traceparent: j.traceparent.as_deref().map(Into::into),
            created_at: timestamp_string(j.created_at),
            dependencies: j
                .dependencies
                .iter()
                .map(|d| DependencyResult {
                    id: d.id.0,
                    state: d.state.map(Into::into),
                    result: d.result.as_ref().map(payload_to_json),
                })
                .collect(),
            steps: StepResults(j.steps.iter().map(|s| (s.name.to_string(), payload_to_json(&s.result))).collect()),
        }
    }
}

impl From<dray_store::Acked> for Acked {
    fn from(a: dray_store::Acked) -> Acked {
        Acked { state: a.state.into(), retry_at: a.retry_at.map(timestamp_string) }
    }
}

impl From<&dray_core::HistoryEntry> for HistoryEntry {
    fn from(h: &dray_core::HistoryEntry) -> HistoryEntry {
        // A step's entry holds the step's name where others hold an error.
        let step = h.kind == dray_core::HistoryKind::StepRecorded;
        let text = h.error.as_deref().map(String::from);
        HistoryEntry {
            at: timestamp_string(h.at),
            event: h.kind.as_str().into(),
            state: h.state.into(),
            attempt: h.attempt,
            fencing_token: h.token.map(|t| t.0),
            worker: h.worker.as_ref().map(|w| w.to_string()),
            error: if step { None } else { text.clone() },
            run_at: h.run_at.map(timestamp_string),
            step: if step { text } else { None },
        }
    }
}

impl From<&dray_core::Step> for JobStep {
    fn from(s: &dray_core::Step) -> JobStep {
        JobStep {
            name: s.name.to_string(),
            result: payload_to_json(&s.result),
            recorded_at: timestamp_string(s.at),
            attempt: s.attempt,
        }
    }
}

impl StepRequest {
    /// The store's step. The result's bytes are kept as sent: the store checks them
    /// (`dray_core::step::validate`: JSON that any worker can read back, within its limits) before
    /// anything else, once.
    pub fn to_store(&self, now: Timestamp, job: dray_core::JobId) -> Result<dray_store::JobStep, Invalid> {
        Ok(dray_store::JobStep {
            now,
            job,
            lease: lease_id_parse(&self.lease_id)?,
            name: self.name.as_str().into(),
            result: Payload::new(self.result.get().as_bytes()),
        })
    }
}

impl From<&dray_store::StepRecorded> for StepResponse {
    fn from(s: &dray_store::StepRecorded) -> StepResponse {
        StepResponse { name: s.step.name.to_string(), result: payload_to_json(&s.step.result), recorded: s.recorded }
    }
}

impl From<&dray_core::Job> for Job {
    fn from(j: &dray_core::Job) -> Job {
        let s = &j.status;
        Job {
            id: j.id.0,
            queue: j.queue.to_string(),
            state: s.state.into(),
            payload: payload_to_json(&j.payload),
            priority: j.priority,
            attempt: s.attempt,
            attempts_max: j.retry.attempts_max,
            backoff: j.retry.backoff.into(),
            lease_ms: j.lease_ms,
            created_at: timestamp_string(j.created_at),
            run_at: timestamp_string(s.run_at),
            finished_at: s.finished_at.map(timestamp_string),
            lease: s.lease.as_ref().map(|l| LeaseView {
                lease_id: lease_id_string(l.id),
                fencing_token: l.token.0,
                worker: l.worker.to_string(),
                leased_at: timestamp_string(l.leased_at),
                deadline: timestamp_string(l.deadline),
            }),
            cancel_requested: s.cancel_requested,
            checkpoint: s.checkpoint.as_ref().map(payload_to_json),
            progress: s.progress.as_ref().map(payload_to_json),
            result: s.result.as_ref().map(payload_to_json),
            last_error: s.last_error.as_deref().map(Into::into),
            dead_reason: s.dead_reason.map(Into::into),
            idempotency_key: j.idempotency_key.as_deref().map(Into::into),
            ordering_key: j.ordering_key.as_deref().map(Into::into),
            group_key: j.group_key.as_deref().map(Into::into),
            tags: j.tags.iter().map(|t| t.to_string()).collect(),
            traceparent: j.traceparent.as_deref().map(Into::into),
            schedule: j
                .schedule
                .as_ref()
                .map(|t| JobScheduleTick { name: t.name.to_string(), at: timestamp_string(t.at) }),
            depends_on: j.depends_on.iter().map(|id| id.0).collect(),
            on_dependency_failure: (!j.depends_on.is_empty()).then(|| j.on_dependency_failure.into()),
            history: j.history.iter().map(Into::into).collect(),
            history_dropped: j.history_dropped,
            steps: j.steps.iter().map(Into::into).collect(),
            waiting: None,
        }
    }
}

impl From<&dray_store::Waiting> for JobWaiting {
    fn from(w: &dray_store::Waiting) -> JobWaiting {
        use dray_store::Waiting as W;
        let none = JobWaiting {
            reason: WaitingReason::Paused,
            detail: String::new(),
            key: None,
            behind: None,
            running: None,
            limit: None,
            until: None,
        };
        match w {
            W::Paused => JobWaiting { detail: "the queue is paused".into(), ..none },
            W::Breaker { half_open: true, .. } => JobWaiting {
                reason: WaitingReason::Breaker,
                detail: "the queue's circuit breaker is half-open and every probe is out".into(),
                ..none
            },
            W::Breaker { half_open: false, until: Some(at) } => JobWaiting {
                reason: WaitingReason::Breaker,
                detail: format!("the queue's circuit breaker is open until {}", timestamp_string(*at)),
                until: Some(timestamp_string(*at)),
                ..none
            },
            W::Breaker { half_open: false, until: None } => JobWaiting {
                reason: WaitingReason::Breaker,
                detail: "the queue's circuit breaker is forced open, until an operator closes it".into(),
                ..none
            },
            W::OrderingKey { key, behind } => JobWaiting {
                reason: WaitingReason::OrderingKey,
                detail: format!("waiting for job {behind} of ordering key {key}"),
                key: Some(key.to_string()),
                behind: Some(behind.0),
                ..none
            },
            W::Concurrency { running, max } => JobWaiting {
                reason: WaitingReason::Concurrency,
                detail: format!("the queue is at its concurrency limit ({running} running, concurrency_max {max})"),
                running: Some(*running),
                limit: Some(*max),
                ..none
            },
            W::GroupConcurrency { group, running, max } => JobWaiting {
                reason: WaitingReason::GroupConcurrency,
                detail: format!(
                    "group {group} is at its concurrency limit ({running} running, group_concurrency_max {max})"
                ),
                key: Some(group.to_string()),
                running: Some(*running),
                limit: Some(*max),
                ..none
            },
            W::QueueBackoff { until } => JobWaiting {
                reason: WaitingReason::QueueBackoff,
                detail: format!(
                    "a worker reported a downstream rate limit: the queue backs off until {}",
                    timestamp_string(*until)
                ),
                until: Some(timestamp_string(*until)),
                ..none
            },
            W::Rate { until } => JobWaiting {
                reason: WaitingReason::Rate,
                detail: format!("rate limited until {}", timestamp_string(*until)),
                until: Some(timestamp_string(*until)),
                ..none
            },
            W::GroupRate { group, until } => JobWaiting {
                reason: WaitingReason::GroupRate,
                detail: format!("group {group} is rate limited until {}", timestamp_string(*until)),
                key: Some(group.to_string()),
                until: Some(timestamp_string(*until)),
                ..none
            },
        }
    }
}

impl From<&dray_store::JobSummary> for JobSummary {
    fn from(j: &dray_store::JobSummary) -> JobSummary {
        JobSummary {
            id: j.id.0,
            queue: j.queue.to_string(),
            state: j.state.into(),
            priority: j.priority,
            attempt: j.attempt,
            attempts_max: j.attempts_max,
            created_at: timestamp_string(j.created_at),
            run_at: timestamp_string(j.run_at),
            finished_at: j.finished_at.map(timestamp_string),
            dead_reason: j.dead_reason.map(Into::into),
            last_error: j.last_error.as_deref().map(Into::into),
            tags: j.tags.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl From<&dray_store::JobPage> for JobPage {
    fn from(p: &dray_store::JobPage) -> JobPage {
        JobPage { jobs: p.jobs.iter().map(Into::into).collect(), next: p.next.map(|id| id.0) }
    }
}

impl JobQuery {
    /// The store's filter; `state` is forced when the route implies it (`/v1/dead`).
    pub fn to_filter(&self) -> Result<dray_store::JobFilter, Invalid> {
        Ok(dray_store::JobFilter {
            queue: self.queue.as_deref().map(QueueName::new).transpose()?,
            state: self.state.map(Into::into),
            dead_reason: self.dead_reason.map(Into::into),
            tag: self.tag.as_deref().map(Into::into),
            created_from: self.created_from.as_deref().map(|s| timestamp_parse("created_from", s)).transpose()?,
            created_until: self.created_until.as_deref().map(|s| timestamp_parse("created_until", s)).transpose()?,
            error: self.error.as_deref().map(Into::into),
        })
    }
}

/// Default page size of list endpoints.
pub const PAGE_LIMIT_DEFAULT: usize = 100;
/// Default number of jobs a filtered dead-letter action touches.
pub const DEAD_ACTION_LIMIT_DEFAULT: usize = 1_000;

impl DeadAction {
    pub fn to_selection(&self) -> Result<dray_store::DeadSelection, Invalid> {
        let has_filter = self.queue.is_some()
            || self.dead_reason.is_some()
            || self.tag.is_some()
            || self.created_from.is_some()
            || self.created_until.is_some()
            || self.error.is_some();
        match &self.ids {
            Some(_) if has_filter || self.limit.is_some() => Err(Invalid::new(
                "ids",
                "cannot be combined with a filter (queue, dead_reason, tag, created_from, created_until, error, limit)",
            )),
            Some(ids) => Ok(dray_store::DeadSelection::Ids(ids.iter().map(|&id| dray_core::JobId(id)).collect())),
            None => {
                let query = JobQuery {
                    queue: self.queue.clone(),
                    state: Some(State::Dead),
                    dead_reason: self.dead_reason,
                    tag: self.tag.clone(),
                    created_from: self.created_from.clone(),
                    created_until: self.created_until.clone(),
                    error: self.error.clone(),
                    order: None,
                    after: None,
                    limit: None,
                };
                Ok(dray_store::DeadSelection::Filter {
                    filter: query.to_filter()?,
                    limit: self.limit.unwrap_or(DEAD_ACTION_LIMIT_DEFAULT),
                })
            }
        }
    }
}

impl Queue {
    /// The queue as it stands at `now` (its breaker's state depends on the time).
    pub fn of(q: &dray_store::QueueStats, now: Timestamp) -> Queue {
        use dray_core::JobState as S;
        let c = &q.config;
        Queue {
            name: c.name.to_string(),
            paused: c.paused,
            attempts_max: c.retry.attempts_max,
            backoff: c.retry.backoff.into(),
            lease_ms: c.lease_ms,
            retention_ms: c.retention_ms,
            retention_dead_ms: c.retention_dead_ms,
            payload_schema: c.payload_schema.as_ref().and_then(|s| serde_json::from_str(s.as_str()).ok()),
            ordering_dead: c.ordering_dead.into(),
            concurrency_max: c.limits.concurrency_max,
            group_concurrency_max: c.limits.group_concurrency_max,
            rate: c.limits.rate.map(Into::into),
            group_rate: c.limits.group_rate.map(Into::into),
            counts: StateCounts {
                scheduled: q.count(S::Scheduled),
                available: q.count(S::Available),
                running: q.count(S::Running),
                retrying: q.count(S::Retrying),
                completed: q.count(S::Completed),
                dead: q.count(S::Dead),
                cancelled: q.count(S::Cancelled),
                blocked: q.count(S::Blocked),
            },
            oldest_dead_at: q.oldest_dead_at.map(timestamp_string),
            breaker: match (&c.breaker, &q.breaker) {
                (Some(policy), Some(state)) => Some(BreakerStatus::of(policy, &state.view(policy, now))),
                _ => None,
            },
            backoff_until: q.backoff_until.filter(|until| *until > now).map(timestamp_string),
        }
    }
}

impl BreakerStatus {
    pub fn of(p: &dray_core::BreakerPolicy, v: &dray_core::BreakerView) -> BreakerStatus {
        use dray_core::BreakerState as S;
        BreakerStatus {
            failure_ratio: p.failure_ratio,
            window_ms: p.window_ms,
            min_attempts: p.min_attempts,
            open_ms: p.open_ms,
            probes: p.probes,
            state: v.state.into(),
            forced: v.forced,
            changed_at: v.changed_at.map(timestamp_string),
            half_open_at: v.half_open_at.map(timestamp_string),
            probes_granted: v.probes_granted,
            probes_succeeded: v.probes_succeeded,
            window_attempts: v.window_attempts,
            window_failures: v.window_failures,
            transitions: BreakerTransitions {
                closed: v.transitions[S::Closed.index()],
                open: v.transitions[S::Open.index()],
                half_open: v.transitions[S::HalfOpen.index()],
            },
        }
    }
}

impl From<dray_core::BreakerState> for BreakerStateName {
    fn from(s: dray_core::BreakerState) -> BreakerStateName {
        match s {
            dray_core::BreakerState::Closed => BreakerStateName::Closed,
            dray_core::BreakerState::Open => BreakerStateName::Open,
            dray_core::BreakerState::HalfOpen => BreakerStateName::HalfOpen,
        }
    }
}

impl From<BreakerConfig> for dray_core::BreakerPolicy {
    fn from(b: BreakerConfig) -> dray_core::BreakerPolicy {
        dray_core::BreakerPolicy {
            failure_ratio: b.failure_ratio,
            window_ms: b.window_ms,
            min_attempts: b.min_attempts,
            open_ms: b.open_ms,
            probes: b.probes,
        }
    }
}

impl From<dray_core::BreakerPolicy> for BreakerConfig {
    fn from(b: dray_core::BreakerPolicy) -> BreakerConfig {
        BreakerConfig {
            failure_ratio: b.failure_ratio,
            window_ms: b.window_ms,
            min_attempts: b.min_attempts,
            open_ms: b.open_ms,
            probes: b.probes,
        }
    }
}

impl QueueConfigure {
    /// The store's change request. A new `attempts_max` or `backoff` alone keeps the other half of
    /// the retry policy: `current` supplies it. `payload_schema` is this request's schema change,
    /// once the server has checked that the schema applies.
    pub fn to_store(
        &self,
        now: Timestamp,
        name: QueueName,
        current: &dray_core::RetryPolicy,
        payload_schema: Option<Option<dray_store::PayloadSchema>>,
    ) -> dray_store::QueueConfigure {
        let retry = (self.attempts_max.is_some() || self.backoff.is_some()).then(|| dray_core::RetryPolicy {
            attempts_max: self.attempts_max.unwrap_or(current.attempts_max),
            backoff: self.backoff.map(Into::into).unwrap_or(current.backoff),
        });
        dray_store::QueueConfigure {
            now,
            name,
            retry,
            lease_ms: self.lease_ms,
            retention_ms: self.retention_ms,
            retention_dead_ms: self.retention_dead_ms,
            paused: self.paused,
            payload_schema,
            ordering_dead: self.ordering_dead.map(Into::into),
            limits: dray_store::FlowLimitsChange {
                concurrency_max: self.concurrency_max,
                group_concurrency_max: self.group_concurrency_max,
                rate: self.rate.map(|r| r.map(Into::into)),
                group_rate: self.group_rate.map(|r| r.map(Into::into)),
            },
            breaker: self.breaker.map(|b| b.map(Into::into)),
        }
    }
}

impl From<Rate> for dray_core::Rate {
    fn from(r: Rate) -> dray_core::Rate {
        dray_core::Rate { limit: r.limit, per_ms: r.per_ms, burst: r.burst.unwrap_or(r.limit) }
    }
}

impl From<dray_core::Rate> for Rate {
    fn from(r: dray_core::Rate) -> Rate {
        Rate { limit: r.limit, per_ms: r.per_ms, burst: Some(r.burst) }
    }
}

impl From<dray_store::OrderingDead> for OrderingDead {
    fn from(o: dray_store::OrderingDead) -> OrderingDead {
        match o {
            dray_store::OrderingDead::Block => OrderingDead::Block,
            dray_store::OrderingDead::Skip => OrderingDead::Skip,
        }
    }
}

impl From<OrderingDead> for dray_store::OrderingDead {
    fn from(o: OrderingDead) -> dray_store::OrderingDead {
        match o {
            OrderingDead::Block => dray_store::OrderingDead::Block,
            OrderingDead::Skip => dray_store::OrderingDead::Skip,
        }
    }
}

/// Default number of jobs one lease call takes.
pub const LEASE_COUNT_DEFAULT: usize = 1;

/// Prefixes an error's field with the position of an item in a list: `lease_id` ->
/// `acks[3].lease_id`.
fn at_index(list: &str, index: usize) -> impl Fn(Invalid) -> Invalid + '_ {
    move |e| Invalid { field: format!("{list}[{index}].{}", e.field), ..e }
}

impl EnqueueBatch {
    /// The core's insert requests, `depends_on` keys turned into positions in the batch; an
    /// error names the job's index (`jobs[3].queue`).
    pub fn to_core(&self) -> Result<Vec<NewJob>, Invalid> {
        let mut keys = std::collections::HashMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            if let Some(key) = job.key.as_deref()
                && let Some(first) = keys.insert(key, i)
            {
                return Err(Invalid::new("key", format!("{key:?} is also the key of jobs[{first}]")).in_batch(i));
            }
        }
        self.jobs.iter().enumerate().map(|(i, job)| job.to_core_in(&keys).map_err(|e| e.in_batch(i))).collect()
    }
}

impl LeaseRequest {
    /// The store's lease request at `now`. `wait_ms` is the server's business (long-poll), not
    /// the store's, so it is not part of the result.
    pub fn to_store(&self, now: Timestamp) -> Result<dray_store::JobLease, Invalid> {
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueName::new(q).map_err(|e| Invalid { field: format!("queues[{i}]"), ..e }))
            .collect::<Result<Vec<_>, _>>()?;
        let count = self.count.unwrap_or(LEASE_COUNT_DEFAULT);
        // The store checks this too, as `count_max`; here it gets the name the client used.
        dray_core::limits::check_range("count", count, 1, dray_core::Limits::LEASE_JOBS_MAX, "")?;
        Ok(dray_store::JobLease {
            now,
            queues,
            count_max: count,
            worker: dray_core::WorkerId::new(&self.worker)?,
            lease_ms: self.lease_ms,
        })
    }
}

impl LeaseResponse {
    /// Each job's `lease_ms` is the time left the store measured at commit when it keeps its own
    /// clock (PostgreSQL), otherwise measured from `now`, the instant the lease was granted at.
    pub fn from_store(jobs: &[dray_store::LeasedJob], now: Timestamp) -> LeaseResponse {
        LeaseResponse { jobs: jobs.iter().map(|j| LeasedJob::from_store(j, now)).collect() }
    }
}

impl HeartbeatRequest {
    pub fn to_store(&self, now: Timestamp, job: dray_core::JobId) -> Result<dray_store::LeaseExtend, Invalid> {
        Ok(dray_store::LeaseExtend {
            now,
            job,
            lease: lease_id_parse(&self.lease_id)?,
            extend_ms: self.extend_ms,
            progress: self.progress.as_deref().map(|p| payload_from_json("progress", p)).transpose()?,
            checkpoint: self.checkpoint.as_deref().map(|p| payload_from_json("checkpoint", p)).transpose()?,
        })
    }
}

impl HeartbeatResponse {
    /// `lease_ms` is the time left the store measured at commit when it keeps its own clock
    /// (PostgreSQL), otherwise measured from `now`, the instant of the heartbeat.
    pub fn from_store(e: dray_store::LeaseExtended, now: Timestamp) -> HeartbeatResponse {
        HeartbeatResponse {
            lease_ms: e.lease_left_ms.unwrap_or_else(|| e.deadline.ms_since(now)),
            deadline: timestamp_string(e.deadline),
            cancel_requested: e.cancel_requested,
        }
    }
}

impl CompleteRequest {
    pub fn to_store(&self, job: dray_core::JobId) -> Result<dray_store::Ack, Invalid> {
        Ok(dray_store::Ack {
            job,
            lease: lease_id_parse(&self.lease_id)?,
            outcome: dray_store::AckOutcome::Complete {
                result: self.result.as_deref().map(|r| payload_from_json("result", r)).transpose()?,
            },
        })
    }
}

impl FailRequest {
    pub fn to_store(&self, job: dray_core::JobId) -> Result<dray_store::Ack, Invalid> {
        Ok(dray_store::Ack {
            job,
            lease: lease_id_parse(&self.lease_id)?,
            outcome: dray_store::AckOutcome::Fail {
                error: self.error.clone(),
                retryable: self.retryable.unwrap_or(true),
                retry_after_ms: self.retry_after_ms,
                rate_limited: self.rate_limited,
            },
        })
    }
}

impl AckItem {
    /// One ack; refuses fields that do not belong to its outcome (a `result` on a failure, an
    /// `error` on a completion) rather than ignoring them.
    pub fn to_store(&self) -> Result<dray_store::Ack, Invalid> {
        let job = dray_core::JobId(self.job);
        let lease = lease_id_parse(&self.lease_id)?;
        let outcome = match self.outcome {
            AckOutcome::Complete => {
                for (field, set) in [
                    ("error", self.error.is_some()),
                    ("retryable", self.retryable.is_some()),
                    ("retry_after_ms", self.retry_after_ms.is_some()),
                    ("rate_limited", self.rate_limited),
                ] {
                    if set {
                        return Err(Invalid::new(field, "is only for outcome `fail`"));
                    }
                }
                dray_store::AckOutcome::Complete {
                    result: self.result.as_deref().map(|r| payload_from_json("result", r)).transpose()?,
                }
            }
            AckOutcome::Fail => {
                if self.result.is_some() {
                    return Err(Invalid::new("result", "is only for outcome `complete`"));
                }
                let Some(error) = &self.error else {
                    return Err(Invalid::new("error", "is required for outcome `fail`"));
                };
                dray_store::AckOutcome::Fail {
                    error: error.clone(),
                    retryable: self.retryable.unwrap_or(true),
                    retry_after_ms: self.retry_after_ms,
                    rate_limited: self.rate_limited,
                }
            }
        };
        Ok(dray_store::Ack { job, lease, outcome })
    }
}

impl AckBatch {
    /// The store's batch at `now`; an error names the ack's index (`acks[3].lease_id`).
    pub fn to_store(&self, now: Timestamp) -> Result<dray_store::JobAck, Invalid> {
        let acks = self
            .acks
            .iter()
            .enumerate()
            .map(|(i, a)| a.to_store().map_err(at_index("acks", i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(dray_store::JobAck { now, acks })
    }
}

impl JobGetQuery {
    /// The longest `wait_ms`: [`dray_core::Limits::JOB_WAIT_MS_MAX`]. A longer wait is a loop
    /// of requests.
    pub const WAIT_MS_MAX: u64 = dray_core::Limits::JOB_WAIT_MS_MAX;

    /// How long to wait for the job to finish; 0 (answer at once) when absent.
    pub fn wait_ms(&self) -> Result<u64, Invalid> {
        let wait_ms = self.wait_ms.unwrap_or(0);
        dray_core::limits::check_range("wait_ms", wait_ms, 0, Self::WAIT_MS_MAX, " ms")?;
        Ok(wait_ms)
    }
}

impl JobQuery {
    /// The store's page request. `state` overrides the query's (the dead-letter list forces
    /// `dead`).
    pub fn to_list(&self, state: Option<State>) -> Result<dray_store::JobList, Invalid> {
        let mut filter = self.to_filter()?;
        if let Some(state) = state {
            filter.state = Some(state.into());
        }
        Ok(dray_store::JobList {
            filter,
            after: self.after.map(dray_core::JobId),
            limit: self.limit.unwrap_or(PAGE_LIMIT_DEFAULT),
            newest_first: matches!(self.order, Some(Order::Newest)),
        })
    }
}

impl DeadActionResponse {
    pub fn new(ids: &[dray_core::JobId], dry_run: bool) -> DeadActionResponse {
        DeadActionResponse { ids: ids.iter().map(|id| id.0).collect(), count: ids.len(), dry_run, rejected: Vec::new() }
    }

    /// A redrive's answer: `count` is the jobs moved back; `rejected` those left dead.
    pub fn redriven(r: &dray_store::Redriven, dry_run: bool) -> DeadActionResponse {
        DeadActionResponse {
            rejected: r.rejected.iter().map(|id| id.0).collect(),
            ..DeadActionResponse::new(&r.ids, dry_run)
        }
    }
}

impl From<dray_core::JobState> for CancelResponse {
    fn from(s: dray_core::JobState) -> CancelResponse {
        CancelResponse { state: s.into() }
    }
}

impl QueueList {
    /// The queues as they stand at `now`.
    pub fn of(queues: &[dray_store::QueueStats], now: Timestamp) -> QueueList {
        QueueList { queues: queues.iter().map(|q| Queue::of(q, now)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_utc_with_millis() {
        let t = Timestamp(1_763_712_000_250);
        let s = timestamp_string(t);
        assert_eq!(s, "2025-11-21T08:00:00.250Z");
        assert_eq!(timestamp_parse("run_at", &s).unwrap(), t);
        assert_eq!(timestamp_parse("run_at", "2025-11-21T09:00:00.250+01:00").unwrap(), t);
        let err = timestamp_parse("run_at", "tomorrow").unwrap_err();
        assert_eq!(err.field, "run_at");
        assert!(err.message.contains("RFC 3339"), "{err}");
    }

    /// Issue #18: a run_at in the year 9999 was refused as "not RFC 3339"; what is wrong with it
    /// is that it is too far ahead, and the message says so with the limit.
    #[test]
    fn run_at_past_the_representable_range_is_too_far_ahead() {
        for s in ["9999-12-31T23:59:59Z", "9999-12-31T23:59:59-05:00", "10000-01-01T00:00:00Z"] {
            let err = run_at_parse(s).unwrap_err();
            assert_eq!(err.field, "run_at");
            assert!(err.message.contains("too far ahead") && err.message.contains("31622400000 ms"), "{err}");
        }
        assert!(run_at_parse("9999-99-99").unwrap_err().message.contains("RFC 3339"));
        assert!(run_at_parse("2026-12-07T10:00:00Z").is_ok());
    }

    /// Issue #18: a lone surrogate escape and a number beyond a double's range were accepted
    /// (201) and handed to workers; they are refused, naming the field.
    #[test]
    fn payloads_no_worker_could_read_are_refused() {
        for (body, field) in
            [(r#"{"queue":"q","payload":"\ud800"}"#, "payload"), (r#"{"queue":"q","payload":{"n":1e400}}"#, "payload")]
        {
            let job: EnqueueJob = serde_json::from_str(body).unwrap();
            assert_eq!(job.to_core().unwrap_err().field, field, "{body}");
        }
        let ok: EnqueueJob = serde_json::from_str(r#"{"queue":"q","payload":{"n":1e300,"s":"\ud83d\ude00"}}"#).unwrap();
        assert!(ok.to_core().is_ok());
        let complete: CompleteRequest =
            serde_json::from_str(r#"{"lease_id":"00000000deadbeef","result":[1e999]}"#).unwrap();
        assert_eq!(complete.to_store(dray_core::JobId(1)).unwrap_err().field, "result");
        let beat: HeartbeatRequest =
            serde_json::from_str(r#"{"lease_id":"00000000deadbeef","checkpoint":"\udc00"}"#).unwrap();
        assert_eq!(beat.to_store(Timestamp(0), dray_core::JobId(1)).unwrap_err().field, "checkpoint");
    }

    /// A step on the wire: the request keeps its result byte for byte (the store validates it),
    /// a leased job's steps are an object in recording order (and absent when there are none),
    /// and a step's history entry shows the name as `step`, not as an error.
    #[test]
    fn steps_on_the_wire() {
        let req: StepRequest =
            serde_json::from_str(r#"{"lease_id":"00000000deadbeef","name":"fetch","result":{"b": 1, "a": [2]}}"#)
                .unwrap();
        let p = req.to_store(Timestamp(5), dray_core::JobId(3)).unwrap();
        assert_eq!((p.job, p.lease, &*p.name), (dray_core::JobId(3), LeaseId(0xdead_beef), "fetch"));
        assert_eq!(p.result.as_bytes(), br#"{"b": 1, "a": [2]}"#);
        let unknown =
            serde_json::from_str::<StepRequest>(r#"{"lease_id":"00000000deadbeef","name":"x","result":1,"ttl":1}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field `ttl`"));
        let missing = serde_json::from_str::<StepRequest>(r#"{"lease_id":"00000000deadbeef","name":"x"}"#);
        assert!(missing.unwrap_err().to_string().contains("missing field `result`"));

        let step = |name: &str, result: &str| dray_core::Step {
            name: name.into(),
            result: Payload::new(result.as_bytes().to_vec()),
            at: Timestamp(0),
            attempt: 1,
        };
        let leased = dray_store::LeasedJob {
            id: dray_core::JobId(3),
            queue: QueueName::new("q").unwrap(),
            payload: Payload::new(&b"{}"[..]),
            priority: 0,
            attempt: 2,
            attempts_max: 3,
            lease: LeaseId(1),
            token: dray_core::FencingToken(1),
            deadline: Timestamp(1_000),
            lease_left_ms: None,
            checkpoint: None,
            dependencies: Vec::new(),
            steps: dray_core::Steps::from_steps(vec![step("zeta", "1"), step("alpha", r#"{"x":[1, 2]}"#)]),
            traceparent: None,
            created_at: Timestamp(0),
            ready_at: Timestamp(0),
        };
        let json = serde_json::to_string(&LeasedJob::from_store(&leased, Timestamp(0))).unwrap();
        assert!(json.ends_with(r#""steps":{"zeta":1,"alpha":{"x":[1, 2]}}}"#), "{json}");
        let back: LeasedJob = serde_json::from_str(&json).unwrap();
        assert_eq!(back.steps.names().collect::<Vec<_>>(), ["zeta", "alpha"]);
        assert_eq!(back.steps.get("alpha").map(RawValue::get), Some(r#"{"x":[1, 2]}"#));
        let none = dray_store::LeasedJob { steps: dray_core::Steps::default(), ..leased };
        let json = serde_json::to_string(&LeasedJob::from_store(&none, Timestamp(0))).unwrap();
        assert!(!json.contains("steps"), "{json}");
        assert!(serde_json::from_str::<LeasedJob>(&json).unwrap().steps.is_empty());

        let entry = dray_core::HistoryEntry {
            at: Timestamp(0),
            kind: dray_core::HistoryKind::StepRecorded,
            state: dray_core::JobState::Running,
            attempt: 1,
            token: None,
            worker: None,
            error: Some("fetch".into()),
            run_at: None,
        };
        let wire = HistoryEntry::from(&entry);
        assert_eq!(
            (wire.event.as_str(), wire.step.as_deref(), wire.error.as_deref()),
            ("step_recorded", Some("fetch"), None)
        );
        let failed =
            dray_core::HistoryEntry { kind: dray_core::HistoryKind::Failed, error: Some("boom".into()), ..entry };
        let wire = HistoryEntry::from(&failed);
        assert_eq!((wire.step.as_deref(), wire.error.as_deref()), (None, Some("boom")));
    }

    #[test]
    fn lease_ids_are_16_hex_digits() {
        let id = LeaseId(0xdead_beef);
        assert_eq!(lease_id_string(id), "00000000deadbeef");
        assert_eq!(lease_id_parse("00000000deadbeef").unwrap(), id);
        assert_eq!(lease_id_parse("xyz").unwrap_err().field, "lease_id");
        assert_eq!(lease_id_parse("zzzzzzzzzzzzzzzz").unwrap_err().field, "lease_id");
    }

    #[test]
    fn enqueue_refuses_unknown_fields_and_names_bad_ones() {
        let err = serde_json::from_str::<EnqueueJob>(r#"{"queue":"q","payload":1,"colour":"red"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let job: EnqueueJob = serde_json::from_str(r#"{"queue":"bad name","payload":{"a":[1,2]}}"#).unwrap();
        assert_eq!(job.to_core().unwrap_err().field, "queue");
        let job: EnqueueJob = serde_json::from_str(r#"{"queue":"q","payload":{"a": [1, 2]}}"#).unwrap();
        let core = job.to_core().unwrap();
        assert_eq!(core.payload.as_bytes(), br#"{"a": [1, 2]}"#, "payload kept byte for byte");
    }

    #[test]
    fn dead_action_takes_ids_or_a_filter() {
        let both = DeadAction { ids: Some(vec![1]), queue: Some("q".into()), ..Default::default() };
        assert_eq!(both.to_selection().unwrap_err().field, "ids");
        let filter = DeadAction { queue: Some("q".into()), ..Default::default() };
        match filter.to_selection().unwrap() {
            dray_store::DeadSelection::Filter { filter, limit } => {
                assert_eq!(filter.state, Some(dray_core::JobState::Dead));
                assert_eq!(limit, DEAD_ACTION_LIMIT_DEFAULT);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_and_ack_errors_name_the_index() {
        let batch: EnqueueBatch =
            serde_json::from_str(r#"{"jobs":[{"queue":"q","payload":1},{"queue":"b d","payload":2}]}"#).unwrap();
        assert_eq!(batch.to_core().unwrap_err().field, "jobs[1].queue");
        let acks: AckBatch = serde_json::from_str(
            r#"{"acks":[{"job":1,"lease_id":"00000000deadbeef","outcome":"complete"},{"job":2,"lease_id":"00000000deadbeef","outcome":"fail"}]}"#,
        )
        .unwrap();
        assert_eq!(acks.to_store(Timestamp(0)).unwrap_err().field, "acks[1].error");
        let lease: LeaseRequest = serde_json::from_str(r#"{"queues":["a","b/c"],"worker":"w"}"#).unwrap();
        assert_eq!(lease.to_store(Timestamp(0)).unwrap_err().field, "queues[1]");
    }

    #[test]
    fn a_job_wait_is_bounded_by_the_limit() {
        let wait = |ms| JobGetQuery { wait_ms: ms }.wait_ms();
        assert_eq!(wait(None), Ok(0));
        assert_eq!(wait(Some(60_000)), Ok(60_000));
        let e = wait(Some(60_001)).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("wait_ms", "is 60001 ms; allowed is 0 ms to 60000 ms"));
    }

    #[test]
    fn states_say_their_wire_name_and_whether_they_are_finished() {
        let all = [
            State::Scheduled,
            State::Available,
            State::Running,
            State::Retrying,
            State::Completed,
            State::Dead,
            State::Cancelled,
        ];
        for state in all {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.is_finished(), dray_core::JobState::from(state).is_finished(), "{state:?}");
            assert_eq!(state.as_str(), dray_core::JobState::from(state).as_str());
        }
    }
}

impl From<&dray_store::TokenRecord> for Token {
    fn from(t: &dray_store::TokenRecord) -> Token {
        Token {
            id: t.id.clone(),
            name: t.name.clone(),
            scopes: t.scopes.iter().map(ToString::to_string).collect(),
            created_at: timestamp_string(t.created_at),
            expires_at: t.expires_at.map(timestamp_string),
            revoked: t.revoked_at.is_some(),
            revoked_at: t.revoked_at.map(timestamp_string),
        }
    }
}

/// A valid `POST /v1/tokens` body, checked against the server's clock.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub name: String,
    pub scopes: Vec<dray_core::Scope>,
    pub expires_at: Option<Timestamp>,
}

impl TokenCreate {
    /// Checks the body: the name's length, each scope (the error quotes the bad one), and that
    /// `expires_at` is after `now`.
    pub fn to_request(&self, now: Timestamp) -> Result<TokenRequest, Invalid> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > dray_store::TOKEN_NAME_BYTES_MAX {
            return Err(Invalid::new(
                "name",
                format!("is {} bytes; allowed is 1 to {}", name.len(), dray_store::TOKEN_NAME_BYTES_MAX),
            ));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(Invalid::new("name", format!("contains the control character {c:?}")));
        }
        let scopes = dray_core::scope::scopes_parse(&self.scopes)?;
        let expires_at = match &self.expires_at {
            None => None,
            Some(text) => {
                let at = timestamp_parse("expires_at", text)?;
                if at <= now {
                    return Err(Invalid::new(
                        "expires_at",
                        format!("{text} is not in the future (server clock: {})", timestamp_string(now)),
                    ));
                }
                Some(at)
            }
        };
        Ok(TokenRequest { name: name.to_owned(), scopes, expires_at })
    }
}
