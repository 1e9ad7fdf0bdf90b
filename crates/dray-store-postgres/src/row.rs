//! Rows to core types and back: time, jobs, queues, summaries, and the column arrays of the
//! batched writes. Reading asserts what the schema's CHECKs promise (TigerStyle's paired
//! assertions): a row that does not make a valid core value is reported, never guessed at.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dray_core::cron::{CronRule, IntervalRule, Rule};
use dray_core::schedule::LastTick;
use dray_core::{
    Backoff, DeadReason, FencingToken, HistoryEntry, HistoryKind, Job, JobId, JobState, JobStatus, Lease, LeaseId,
    Limits, Misfire, NewJob, OnDependencyFailure, Overlap, Payload, QueueName, RetryPolicy, Schedule, ScheduleName,
    ScheduleSpec, ScheduleTick, Step, Steps, Timestamp, WorkerId,
};
use dray_store::{Error, FlowLimits, JobSummary, OrderingDead, PayloadSchema, QueueConfig, QueueStats};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use crate::error::corrupt;

/// A core timestamp (ms since the epoch) as the driver's `timestamptz` value.
pub(crate) fn to_time(t: Timestamp) -> SystemTime {
    let ms = t.as_millis();
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A `timestamptz` as a core timestamp, rounded down to the millisecond.
pub(crate) fn from_time(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        Err(e) => {
            let before = e.duration();
            let ms = i64::try_from(before.as_millis()).unwrap_or(i64::MAX);
            // Round toward the past, like the positive side.
            let partial = before.as_nanos() % 1_000_000 != 0;
            Timestamp(-ms - i64::from(partial))
        }
    }
}

/// A millisecond count of the core (`u64`) as `bigint`. Every such value is validated far below
/// `i64::MAX`; saturating keeps "far in the future" far in the future if one ever is not.
pub(crate) fn ms_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Lease ids are random 64-bit values; `bigint` holds their bit pattern.
pub(crate) fn lease_to_sql(id: LeaseId) -> i64 {
    i64::from_ne_bytes(id.0.to_ne_bytes())
}

fn lease_from_sql(v: i64) -> LeaseId {
    LeaseId(u64::from_ne_bytes(v.to_ne_bytes()))
}

pub(crate) fn token_to_sql(t: FencingToken) -> i64 {
    // Tokens come from a `bigint` sequence starting at 1.
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

pub(crate) fn token_from_sql(v: i64) -> Result<FencingToken, Error> {
    u64::try_from(v).map(FencingToken).map_err(|_| corrupt(format!("fencing token {v}")))
}

/// Job ids are `bigint` identities, always positive. An id the database cannot hold names no job.
pub(crate) fn id_to_sql(id: JobId) -> Option<i64> {
    i64::try_from(id.0).ok()
}

pub(crate) fn id_from_sql(v: i64) -> Result<JobId, Error> {
    u64::try_from(v).map(JobId).map_err(|_| corrupt(format!("job id {v}")))
}

pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, column: &str) -> Result<T, Error> {
    row.try_get(column).map_err(|e| corrupt(format!("column {column}: {e}")))
}

pub(crate) fn u32_of(v: i32, what: &str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

fn u64_of(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| corrupt(format!("{what} {v}")))
}

pub(crate) fn state_of(s: &str) -> Result<JobState, Error> {
    JobState::parse(s).ok_or_else(|| corrupt(format!("job state {s:?}")))
}

fn queue_of(s: &str) -> Result<QueueName, Error> {
    QueueName::new(s).map_err(|e| corrupt(format!("queue name: {e}")))
}

fn worker_of(s: &str) -> Result<WorkerId, Error> {
    WorkerId::new(s).map_err(|e| corrupt(format!("worker id: {e}")))
}

fn kind_of(s: &str) -> Result<HistoryKind, Error> {
    HistoryKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| corrupt(format!("history kind {s:?}")))
}

fn payload_of(bytes: Option<Vec<u8>>) -> Option<Payload> {
    bytes.map(Payload::new)
}

/// A job row (the columns of [`crate::sql::JOB_COLUMNS`]) as a core `Job`, with the given payload
/// and no history: a transition needs neither. Its steps are a view of their count and bytes
/// (`Steps::view`): a step's transition adds the one step it needs; a lease and `job_get` read
/// them all.
pub(crate) fn job_from_row(row: &Row, payload: Payload) -> Result<Job, Error> {
    let id = id_from_sql(get(row, "id")?)?;
    let state = state_of(get(row, "state")?)?;
    let lease = match get::<Option<i64>>(row, "lease_id")? {
        None => None,
        Some(lease_id) => Some(Lease {
            id: lease_from_sql(lease_id),
            token: token_from_sql(get(row, "token")?)?,
            worker: worker_of(get(row, "worker")?)?,
            leased_at: from_time(get(row, "leased_at")?),
            deadline: from_time(get(row, "lease_deadline")?),
        }),
    };
    if lease.is_some() != (state == JobState::Running) {
        return Err(corrupt(format!(
            "job {id} is {state} and {} a lease",
            if lease.is_some() { "holds" } else { "lacks" }
        )));
    }
    let dead_reason = match get::<Option<&str>>(row, "dead_reason")? {
        None => None,
        Some(r) => Some(DeadReason::parse(r).ok_or_else(|| corrupt(format!("dead reason {r:?}")))?),
    };
    let tags: Vec<String> = get(row, "tags")?;
    let status = JobStatus {
        state,
        run_at: from_time(get(row, "run_at")?),
        attempt: u32_of(get(row, "attempt")?, "attempt")?,
        lease,
        cancel_requested: get(row, "cancel_requested")?,
        checkpoint: payload_of(get(row, "checkpoint")?),
        progress: payload_of(get(row, "progress")?),
        result: payload_of(get(row, "result")?),
        last_error: get::<Option<String>>(row, "last_error")?.map(String::into_boxed_str),
        dead_reason,
        finished_at: get::<Option<SystemTime>>(row, "finished_at")?.map(from_time),
    };
    let schedule = match get::<Option<&str>>(row, "schedule_name")? {
        None => None,
        Some(name) => Some(ScheduleTick {
            name: schedule_name_of(name)?,
            at: from_time(
                get::<Option<SystemTime>>(row, "schedule_at")?
                    .ok_or_else(|| corrupt(format!("job {id}: a schedule tick without its instant")))?,
            ),
        }),
    };
    let on_dependency_failure = match get::<Option<&str>>(row, "on_dependency_failure")? {
        None => OnDependencyFailure::Cancel,
        Some(p) => OnDependencyFailure::parse(p).ok_or_else(|| corrupt(format!("on_dependency_failure {p:?}")))?,
    };
    Ok(Job {
        schedule,
        // Read where needed (`job_dependencies`); `dependencies` says how many there are.
        depends_on: Box::default(),
        on_dependency_failure,
        id,
        queue: queue_of(get(row, "queue")?)?,
        payload,
        priority: get(row, "priority")?,
        created_at: from_time(get(row, "created_at")?),
        retry: RetryPolicy {
            attempts_max: u32_of(get(row, "attempts_max")?, "attempts_max")?,
            backoff: Backoff {
                base_ms: u64_of(get(row, "backoff_base_ms")?, "backoff_base_ms")?,
                factor: get(row, "backoff_factor")?,
                cap_ms: u64_of(get(row, "backoff_cap_ms")?, "backoff_cap_ms")?,
            },
        },
        lease_ms: u64_of(get(row, "lease_ms")?, "lease_ms")?,
        idempotency_key: get::<Option<String>>(row, "idempotency_key")?.map(String::into_boxed_str),
        ordering_key: get::<Option<String>>(row, "ordering_key")?.map(String::into_boxed_str),
        group_key: get::<Option<String>>(row, "group_key")?.map(String::into_boxed_str),
        tags: tags.into_iter().map(String::into_boxed_str).collect(),
        traceparent: get::<Option<String>>(row, "traceparent")?.map(String::into_boxed_str),
        status,
        steps: Steps::view(
            usize::try_from(get::<i32>(row, "steps_count")?).map_err(|_| corrupt(format!("job {id}: steps_count")))?,
            usize::try_from(get::<i64>(row, "steps_bytes")?).map_err(|_| corrupt(format!("job {id}: steps_bytes")))?,
            None,
        ),
        version: u32_of(get(row, "version")?, "version")?,
        history: Vec::new(),
        history_dropped: 0,
    })
}

/// A step read back: its name and the columns of `job_steps`, checked against the bounds it was
/// written under.
pub(crate) fn step_of(name: String, result: Vec<u8>, at: SystemTime, attempt: i32) -> Result<Step, Error> {
    if name.is_empty() || name.len() > Limits::STEP_NAME_BYTES_MAX || result.len() > Limits::STEP_RESULT_BYTES_MAX {
        return Err(corrupt(format!("step {name:?} of {} result bytes is out of its bounds", result.len())));
    }
    Ok(Step {
        name: name.into_boxed_str(),
        result: Payload::new(result),
        at: from_time(at),
        attempt: u32_of(attempt, "step attempt")?,
    })
}

/// Every step of a job, from `JOB_GET`'s arrays, checked against the count and bytes of its row.
pub(crate) fn steps_from_row(row: &Row, job: &Job) -> Result<Steps, Error> {
    let names: Option<Vec<String>> = get(row, "step_names")?;
    let names = names.unwrap_or_default();
    let results: Vec<Vec<u8>> = get::<Option<Vec<Vec<u8>>>>(row, "step_results")?.unwrap_or_default();
    let ats: Vec<SystemTime> = get::<Option<Vec<SystemTime>>>(row, "step_ats")?.unwrap_or_default();
    let attempts: Vec<i32> = get::<Option<Vec<i32>>>(row, "step_attempts")?.unwrap_or_default();
    let n = names.len();
    if [results.len(), ats.len(), attempts.len()].iter().any(|&len| len != n) {
        return Err(corrupt("step arrays of different lengths"));
    }
    let mut list = Vec::with_capacity(n);
    for (((name, result), at), attempt) in names.into_iter().zip(results).zip(ats).zip(attempts) {
        list.push(step_of(name, result, at, attempt)?);
    }
    steps_checked(job, list)
}

/// `list` as the job's steps, if it agrees with the count and bytes of the job's row.
pub(crate) fn steps_checked(job: &Job, list: Vec<Step>) -> Result<Steps, Error> {
    let steps = Steps::from_steps(list);
    if (steps.len(), steps.bytes()) != (job.steps.len(), job.steps.bytes()) {
        return Err(corrupt(format!(
            "job {} counts {} steps of {} bytes but holds {} of {}",
            job.id,
            job.steps.len(),
            job.steps.bytes(),
            steps.len(),
            steps.bytes()
        )));
    }
    Ok(steps)
}

fn schedule_name_of(s: &str) -> Result<ScheduleName, Error> {
    ScheduleName::new(s).map_err(|e| corrupt(format!("schedule name: {e}")))
}

/// A schedule row (the columns of [`crate::sql::SCHEDULE_COLUMNS`]). Rules are parsed again, so
/// a row holding a rule the core no longer accepts is reported rather than ticked.
pub(crate) fn schedule_from_row(row: &Row) -> Result<Schedule, Error> {
    let name = schedule_name_of(get(row, "name")?)?;
    let bad = |what: &str, e: &dyn std::fmt::Display| corrupt(format!("schedule {name}: {what}: {e}"));
    let mut template = NewJob::new(queue_of(get(row, "queue")?)?, Payload::new(get::<Vec<u8>>(row, "payload")?));
    template.priority = get(row, "priority")?;
    template.attempts_max = get::<Option<i32>>(row, "attempts_max")?.map(|n| u32_of(n, "attempts_max")).transpose()?;
    template.backoff = match (
        get::<Option<i64>>(row, "backoff_base_ms")?,
        get::<Option<f64>>(row, "backoff_factor")?,
        get::<Option<i64>>(row, "backoff_cap_ms")?,
    ) {
        (None, None, None) => None,
        (Some(base), Some(factor), Some(cap)) => {
            Some(Backoff { base_ms: u64_of(base, "backoff_base_ms")?, factor, cap_ms: u64_of(cap, "backoff_cap_ms")? })
        }
        _ => return Err(bad("backoff", &"only some of its parts")),
    };
    template.lease_ms = get::<Option<i64>>(row, "lease_ms")?.map(|ms| u64_of(ms, "lease_ms")).transpose()?;
    template.ordering_key = get::<Option<String>>(row, "ordering_key")?.map(String::into_boxed_str);
    template.tags = get::<Vec<String>>(row, "tags")?.into_iter().map(String::into_boxed_str).collect();
    template.traceparent = get::<Option<String>>(row, "traceparent")?.map(String::into_boxed_str);
    let rule = match get::<&str>(row, "rule")? {
        "cron" => {
            let expr: Option<&str> = get(row, "cron_expr")?;
            let zone: Option<&str> = get(row, "cron_zone")?;
            let (Some(expr), Some(zone)) = (expr, zone) else {
                return Err(bad("rule", &"cron without its expression"));
            };
            Rule::Cron(CronRule::parse(expr, zone).map_err(|e| bad("cron rule", &e))?)
        }
        "interval" => {
            let every: Option<i64> = get(row, "every_ms")?;
            let anchor: Option<i64> = get(row, "anchor_ms")?;
            let (Some(every), Some(anchor)) = (every, anchor) else {
                return Err(bad("rule", &"interval without its period"));
            };
            Rule::Interval(
                IntervalRule::new(u64_of(every, "every_ms")?, Timestamp(anchor))
                    .map_err(|e| bad("interval rule", &e))?,
            )
        }
        other => return Err(bad("rule", &other)),
    };
    let misfire = match (get::<&str>(row, "misfire")?, get::<Option<i32>>(row, "misfire_cap")?) {
        ("run_once", None) => Misfire::RunOnce,
        ("skip", None) => Misfire::Skip,
        ("run_all", Some(cap)) => Misfire::RunAll { cap: u32_of(cap, "misfire_cap")? },
        (other, cap) => return Err(bad("misfire", &format!("{other} with cap {cap:?}"))),
    };
    let overlap = get::<&str>(row, "overlap")?;
    let overlap = Overlap::parse(overlap).ok_or_else(|| bad("overlap", &overlap))?;
    let last = match (
        get::<Option<SystemTime>>(row, "last_at")?,
        get::<Option<i64>>(row, "last_job")?,
        get::<Option<SystemTime>>(row, "last_fired_at")?,
    ) {
        (None, None, None) => None,
        (Some(at), Some(job), Some(fired_at)) => {
            Some(LastTick { at: from_time(at), job: id_from_sql(job)?, fired_at: from_time(fired_at) })
        }
        _ => return Err(bad("last tick", &"only some of its parts")),
    };
    let spec = ScheduleSpec {
        name,
        template,
        rule,
        misfire,
        overlap,
        jitter_ms: u64_of(get(row, "jitter_ms")?, "jitter_ms")?,
        misfire_grace_ms: u64_of(get(row, "misfire_grace_ms")?, "misfire_grace_ms")?,
        paused: get(row, "paused")?,
    };
    Ok(Schedule {
        spec,
        created_at: from_time(get(row, "created_at")?),
        updated_at: from_time(get(row, "updated_at")?),
        next_at: get::<Option<SystemTime>>(row, "next_at")?.map(from_time),
        last,
    })
}

/// The history arrays of a `job_get` row (one element per kept entry, in order).
pub(crate) fn history_from_row(row: &Row) -> Result<Vec<HistoryEntry>, Error> {
    let seqs: Option<Vec<i32>> = get(row, "seqs")?;
    let Some(seqs) = seqs else { return Ok(Vec::new()) };
    let ats: Vec<SystemTime> = get(row, "ats")?;
    let kinds: Vec<String> = get(row, "kinds")?;
    let states: Vec<String> = get(row, "states")?;
    let attempts: Vec<i32> = get(row, "attempts")?;
    let tokens: Vec<Option<i64>> = get(row, "tokens")?;
    let workers: Vec<Option<String>> = get(row, "workers")?;
    let errors: Vec<Option<String>> = get(row, "errors")?;
    let run_ats: Vec<Option<SystemTime>> = get(row, "run_ats")?;
    let n = seqs.len();
    if [ats.len(), kinds.len(), states.len(), attempts.len(), tokens.len(), workers.len(), errors.len(), run_ats.len()]
        .iter()
        .any(|&len| len != n)
    {
        return Err(corrupt("history arrays of different lengths"));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(HistoryEntry {
            at: from_time(ats[i]),
            kind: kind_of(&kinds[i])?,
            state: state_of(&states[i])?,
            attempt: u32_of(attempts[i], "history attempt")?,
            token: tokens[i].map(token_from_sql).transpose()?,
            worker: workers[i].as_deref().map(worker_of).transpose()?,
            error: errors[i].clone().map(String::into_boxed_str),
            run_at: run_ats[i].map(from_time),
        });
    }
    Ok(out)
}

/// A queue row (the columns of [`crate::sql::QUEUE_COLUMNS`]).
pub(crate) fn queue_from_row(row: &Row) -> Result<QueueConfig, Error> {
    let config = QueueConfig {
        name: queue_of(get(row, "name")?)?,
        retry: RetryPolicy {
            attempts_max: u32_of(get(row, "attempts_max")?, "attempts_max")?,
            backoff: Backoff {
                base_ms: u64_of(get(row, "backoff_base_ms")?, "backoff_base_ms")?,
                factor: get(row, "backoff_factor")?,
                cap_ms: u64_of(get(row, "backoff_cap_ms")?, "backoff_cap_ms")?,
            },
        },
        lease_ms: u64_of(get(row, "lease_ms")?, "lease_ms")?,
        retention_ms: u64_of(get(row, "retention_ms")?, "retention_ms")?,
        retention_dead_ms: u64_of(get(row, "retention_dead_ms")?, "retention_dead_ms")?,
        paused: get(row, "paused")?,
        payload_schema: get::<Option<String>>(row, "payload_schema")?.map(PayloadSchema::new),
        ordering_dead: {
            let text: String = get(row, "ordering_dead")?;
            OrderingDead::parse(&text).ok_or_else(|| corrupt("a queue's ordering_dead is neither block nor skip"))?
        },
        limits: FlowLimits {
            concurrency_max: get::<Option<i32>>(row, "concurrency_max")?
                .map(|n| u32_of(n, "concurrency_max"))
                .transpose()?,
            group_concurrency_max: get::<Option<i32>>(row, "group_concurrency_max")?
                .map(|n| u32_of(n, "group_concurrency_max"))
                .transpose()?,
            rate: rate_of(row, "rate")?,
            group_rate: rate_of(row, "group_rate")?,
        },
        // Only statements that join the queue's breaker (`BREAKER_COLUMNS`) read its policy; the
        // insert path's queue rows (`QUEUES_ENSURE`) do without: an insert needs no breaker.
        breaker: if row.columns().iter().any(|c| c.name() == "b_failure_ratio") {
            crate::store::policy_from_row(row)?
        } else {
            None
        },
    };
    Ok(config)
}

/// A rate from its three columns `<prefix>_limit`, `_per_ms` and `_burst`, NULL together.
fn rate_of(row: &Row, prefix: &str) -> Result<Option<dray_core::Rate>, Error> {
    let column = |suffix: &str| get::<Option<i64>>(row, &format!("{prefix}_{suffix}"));
    match (column("limit")?, column("per_ms")?, column("burst")?) {
        (Some(limit), Some(per_ms), Some(burst)) => Ok(Some(dray_core::Rate {
            limit: u32::try_from(limit).map_err(|_| corrupt(format!("a queue's {prefix}_limit is {limit}")))?,
            per_ms: u64::try_from(per_ms).map_err(|_| corrupt(format!("a queue's {prefix}_per_ms is {per_ms}")))?,
            burst: u32::try_from(burst).map_err(|_| corrupt(format!("a queue's {prefix}_burst is {burst}")))?,
        })),
        (None, None, None) => Ok(None),
        _ => Err(corrupt(format!("a queue's {prefix} columns are partly NULL"))),
    }
}

/// A row of the queue statistics statement.
pub(crate) fn stats_from_row(row: &Row) -> Result<QueueStats, Error> {
    let mut counts = [0u64; JobState::ALL.len()];
    for state in JobState::ALL {
        let n: i64 = get(row, &format!("n_{}", state.as_str()))?;
        counts[state.index()] = u64_of(n, "count")?;
    }
    Ok(QueueStats {
        config: queue_from_row(row)?,
        counts,
        oldest_dead_at: get::<Option<SystemTime>>(row, "oldest_dead_at")?.map(from_time),
        breaker: crate::store::breaker_from_row(row)?,
        backoff_until: backoff_from_row(row)?,
    })
}

/// A queue row's `backoff_until` ([`crate::sql::QUEUE_COLUMNS`]).
pub(crate) fn backoff_from_row(row: &Row) -> Result<Option<Timestamp>, Error> {
    Ok(get::<Option<SystemTime>>(row, "backoff_until")?.map(from_time))
}

pub(crate) fn summary_from_row(row: &Row) -> Result<JobSummary, Error> {
    let tags: Vec<String> = get(row, "tags")?;
    let dead_reason = match get::<Option<&str>>(row, "dead_reason")? {
        None => None,
        Some(r) => Some(DeadReason::parse(r).ok_or_else(|| corrupt(format!("dead reason {r:?}")))?),
    };
    Ok(JobSummary {
        id: id_from_sql(get(row, "id")?)?,
        queue: queue_of(get(row, "queue")?)?,
        state: state_of(get(row, "state")?)?,
        priority: get(row, "priority")?,
        attempt: u32_of(get(row, "attempt")?, "attempt")?,
        attempts_max: u32_of(get(row, "attempts_max")?, "attempts_max")?,
        created_at: from_time(get(row, "created_at")?),
        run_at: from_time(get(row, "run_at")?),
        finished_at: get::<Option<SystemTime>>(row, "finished_at")?.map(from_time),
        dead_reason,
        last_error: get::<Option<String>>(row, "last_error")?.map(String::into_boxed_str),
        tags: tags.into_iter().map(String::into_boxed_str).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trips_at_millisecond_resolution() {
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_001, i64::from(i32::MAX) * 1_000] {
            assert_eq!(from_time(to_time(Timestamp(ms))), Timestamp(ms), "{ms}");
        }
        // Sub-millisecond parts round toward the past on both sides of the epoch.
        assert_eq!(from_time(UNIX_EPOCH + Duration::from_micros(1_999)), Timestamp(1));
        assert_eq!(from_time(UNIX_EPOCH - Duration::from_micros(1_001)), Timestamp(-2));
    }

    #[test]
    fn lease_ids_keep_every_bit() {
        for id in [0, 1, u64::MAX, 1 << 63, 0x0123_4567_89ab_cdef] {
            assert_eq!(lease_from_sql(lease_to_sql(LeaseId(id))), LeaseId(id));
        }
    }
}
