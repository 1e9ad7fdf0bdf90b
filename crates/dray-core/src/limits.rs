//! Every bound Dray enforces, named with the qualifier last, and the error that names a broken one.
//!
//! A value without a bound is a bug: each identifier, payload, batch and duration a user can send
//! has a limit here, and the message for breaking it names the field and the limit.

use std::fmt;

/// The fixed bounds. Configurable defaults (lease, retries, retention) are validated against these.
#[derive(Debug)]
pub struct Limits;

const SECOND_MS: u64 = 1_000;
const HOUR_MS: u64 = 3_600 * SECOND_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

impl Limits {
    pub const QUEUE_NAME_BYTES_MAX: usize = 128;
    pub const WORKER_ID_BYTES_MAX: usize = 128;
    pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
    pub const ORDERING_KEY_BYTES_MAX: usize = 256;
    pub const GROUP_KEY_BYTES_MAX: usize = 256;
    pub const TAG_BYTES_MAX: usize = 64;
    pub const TAGS_PER_JOB_MAX: usize = 16;
    /// A W3C `traceparent` is exactly 55 bytes in version 00; later versions may append fields.
    pub const TRACEPARENT_BYTES_MAX: usize = 256;

    pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
    pub const RESULT_BYTES_MAX: usize = 256 * 1024;
    /// The text a job list may search last errors for.
    pub const ERROR_FILTER_BYTES_MAX: usize = 256;
    pub const CHECKPOINT_BYTES_MAX: usize = 64 * 1024;
    /// A queue's JSON Schema for payloads, as JSON text.
    pub const PAYLOAD_SCHEMA_BYTES_MAX: usize = 64 * 1024;
    pub const PROGRESS_BYTES_MAX: usize = 4 * 1024;
    /// A step's name (`ctx.step`): any text without control characters.
    pub const STEP_NAME_BYTES_MAX: usize = 256;
    /// A step's result, as JSON text.
    pub const STEP_RESULT_BYTES_MAX: usize = 256 * 1024;
    /// Steps one job records at most.
    pub const STEPS_PER_JOB_MAX: usize = 1_000;
    /// The names and results of one job's steps together.
    pub const STEPS_BYTES_PER_JOB_MAX: usize = 8 * 1024 * 1024;
    /// Longer error messages are truncated (not rejected): refusing a failure report would leave
    /// the job running until its lease expires, which loses more than the tail of a message.
    pub const ERROR_BYTES_MAX: usize = 8 * 1024;

    pub const BATCH_JOBS_MAX: usize = 10_000;
    /// The jobs one job may depend on. Their results travel with each of its leases; a larger
    /// fan-in is a batch with a callback.
    pub const DEPENDS_ON_MAX: usize = 1_000;
    /// Bytes of a client key naming a job within one insert batch (for `depends_on`).
    pub const JOB_KEY_BYTES_MAX: usize = 128;
    /// The payload bytes of one insert batch together. A batch is logged as one record, so this
    /// also bounds the largest write a store makes for one request.
    pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
    pub const LEASE_JOBS_MAX: usize = 1_000;
    pub const LEASE_QUEUES_MAX: usize = 64;
    pub const PAGE_JOBS_MAX: usize = 1_000;

    pub const PRIORITY_MIN: i16 = -1_000;
    pub const PRIORITY_MAX: i16 = 1_000;

    pub const LEASE_MS_MIN: u64 = SECOND_MS;
    pub const LEASE_MS_MAX: u64 = 12 * HOUR_MS;
    pub const LEASE_MS_DEFAULT: u64 = 30 * SECOND_MS;

    pub const ATTEMPTS_MAX_MAX: u32 = 1_000;
    pub const ATTEMPTS_MAX_DEFAULT: u32 = 25;
    pub const BACKOFF_BASE_MS_DEFAULT: u64 = SECOND_MS;
    pub const BACKOFF_BASE_MS_MAX: u64 = DAY_MS;
    pub const BACKOFF_FACTOR_DEFAULT: f64 = 2.0;
    pub const BACKOFF_FACTOR_MIN: f64 = 1.0;
    pub const BACKOFF_FACTOR_MAX: f64 = 10.0;
    pub const BACKOFF_CAP_MS_DEFAULT: u64 = HOUR_MS;
    pub const BACKOFF_CAP_MS_MAX: u64 = 30 * DAY_MS;
    /// The longest delay a worker may ask for with `retry_after`; longer requests are clamped.
    pub const RETRY_AFTER_MS_MAX: u64 = 30 * DAY_MS;

    /// How far in the future a job may be scheduled.
    pub const RUN_AT_AHEAD_MS_MAX: u64 = 366 * DAY_MS;

    /// A schedule's cron expression, as text.
    pub const CRON_EXPR_BYTES_MAX: usize = 256;
    /// An IANA time zone name; the longest in the database is about 30 bytes.
    pub const TIMEZONE_BYTES_MAX: usize = 64;
    /// An interval schedule's period: from one second to the longest calendar year.
    pub const SCHEDULE_EVERY_MS_MIN: u64 = SECOND_MS;
    pub const SCHEDULE_EVERY_MS_MAX: u64 = 366 * DAY_MS;

    /// How long an idempotency key keeps returning the original job (see `docs/semantics.md`).
    pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = DAY_MS;
    pub const IDEMPOTENCY_WINDOW_MS_MAX: u64 = 30 * DAY_MS;

    pub const RETENTION_MS_DEFAULT: u64 = DAY_MS;
    pub const RETENTION_DEAD_MS_DEFAULT: u64 = 30 * DAY_MS;
    pub const RETENTION_MS_MAX: u64 = 365 * DAY_MS;

    /// History entries kept per job; beyond it the oldest entries after the first are dropped and
    /// counted, so a job redriven forever cannot grow without bound.
    pub const HISTORY_ENTRIES_MAX: usize = 256;

    pub const SCHEDULE_NAME_BYTES_MAX: usize = 128;
    /// Schedules one store holds.
    pub const SCHEDULES_MAX: usize = 10_000;
    pub const SCHEDULE_JITTER_MS_MAX: u64 = DAY_MS;
    pub const MISFIRE_GRACE_MS_DEFAULT: u64 = 60 * SECOND_MS;
    pub const MISFIRE_GRACE_MS_MAX: u64 = DAY_MS;
    /// The most jobs a `run_all` misfire enqueues for one schedule's missed ticks.
    pub const MISFIRE_CAP_MAX: u32 = 1_000;
    pub const MISFIRE_CAP_DEFAULT: u32 = 100;
    /// Fire times `GET /v1/schedules/{name}` and `dray schedules preview` list.
    pub const SCHEDULE_PREVIEW_MAX: usize = 1_000;
    /// A queue's `concurrency_max` and `group_concurrency_max`.
    pub const CONCURRENCY_MAX_MAX: u32 = 1_000_000;
    /// A rate's `limit` and `burst`.
    pub const RATE_LIMIT_MAX: u32 = 1_000_000;
    /// A rate's `per_ms`: at most a day.
    pub const RATE_PER_MS_MAX: u64 = DAY_MS;

    /// How long `GET /v1/jobs/{id}?wait_ms=` may wait for the job to finish (long-poll); a longer
    /// wait is a loop of such requests (the SDK's `Client::job_wait`).
    pub const JOB_WAIT_MS_MAX: u64 = 60 * SECOND_MS;

    /// Bytes of a lock's name (ASCII letters, digits and `_ - . :`).
    pub const LOCK_NAME_BYTES_MAX: usize = 128;
    /// Bytes of a lock owner (any text without control characters).
    pub const LOCK_OWNER_BYTES_MAX: usize = 128;
    /// A lock's TTL: short enough to test pauses, long enough for any sane critical section.
    pub const LOCK_TTL_MS_MIN: u64 = 100;
    pub const LOCK_TTL_MS_MAX: u64 = 12 * HOUR_MS;
    /// How long an acquire may wait for the lock (long-poll).
    pub const LOCK_WAIT_MS_MAX: u64 = 60 * SECOND_MS;
    /// A semaphore's size: holders of one lock at once.
    pub const LOCK_PERMITS_MAX: u32 = 1_000;
    /// Locks held at once (names with a live holder); an acquire past it is refused.
    pub const LOCKS_MAX: usize = 100_000;
    /// Locks one page of `GET /v1/locks` lists at most.
    pub const PAGE_LOCKS_MAX: usize = 1_000;
    /// Bytes of a fenced resource's name (`<schema>.fence(resource, token)`).
    pub const FENCE_RESOURCE_BYTES_MAX: usize = 256;

    /// A circuit breaker's sliding window (`breaker.window_ms`).
    pub const BREAKER_WINDOW_MS_MIN: u64 = SECOND_MS;
    pub const BREAKER_WINDOW_MS_MAX: u64 = DAY_MS;
    /// Attempts a breaker's window must hold before its failure ratio can open it.
    pub const BREAKER_MIN_ATTEMPTS_MAX: u32 = 100_000;
    /// How long an opened breaker stays open before it probes (`breaker.open_ms`).
    pub const BREAKER_OPEN_MS_MIN: u64 = SECOND_MS;
    pub const BREAKER_OPEN_MS_MAX: u64 = DAY_MS;
    /// Trial leases a half-open breaker grants (`breaker.probes`).
    pub const BREAKER_PROBES_MAX: u32 = 100;
}

/// A value that breaks a rule: names the field (a path like `jobs[3].payload` in a batch) and says
/// what the limit is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Invalid {
        Invalid { field: field.into(), message: message.to_string() }
    }

    /// Prefixes the field with the position of the item in a batch: `payload` -> `jobs[3].payload`.
    pub fn in_batch(self, index: usize) -> Invalid {
        Invalid { field: format!("jobs[{index}].{}", self.field), ..self }
    }
}

/// Checks `value` is within `min..=max`; the message names both ends and the unit.
pub fn check_range<T: PartialOrd + fmt::Display>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(field, format!("is {value}{unit}; allowed is {min}{unit} to {max}{unit}")));
    }
    Ok(())
}

/// Checks a byte length against its limit.
pub fn check_bytes(field: &'static str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        return Err(Invalid::new(field, format!("is {len} bytes; the limit is {max}")));
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
