//! The store's error: what went wrong, with the context a caller needs to answer a user.

use dray_core::{Invalid, JobId, Limits, LockName, QueueName, Rejection, ScheduleName};

/// Why a store operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input. Nothing was changed.
    #[error(transparent)]
    Invalid(#[from] Invalid),

    #[error("job {0} not found")]
    JobNotFound(JobId),

    #[error("queue {0} not found")]
    QueueNotFound(QueueName),

    /// The queue still holds work (waiting, running, retrying or dead jobs). Nothing was changed.
    #[error("queue {queue} holds {jobs} jobs that are not finished (or are dead)")]
    QueueNotEmpty { queue: QueueName, jobs: u64 },

    #[error("schedule {0} not found")]
    ScheduleNotFound(ScheduleName),

    #[error("schedule {0} already exists")]
    ScheduleExists(ScheduleName),

    #[error("the store holds {} schedules, the limit", Limits::SCHEDULES_MAX)]
    TooManySchedules,

    /// The event does not apply to the job as it is now (a stale lease, a finished job). Nothing
    /// was changed.
    #[error("job {job}: {rejection}")]
    Rejected { job: JobId, rejection: Rejection },

    /// A lock operation was refused (held, lost, another size). Nothing was changed.
    #[error("lock {name}: {refusal}")]
    Lock { name: LockName, refusal: dray_core::lock::Refusal },

    #[error("the store holds {} locks, the limit", Limits::LOCKS_MAX)]
    TooManyLocks,

    /// The idempotency key is already used, within its window, by a job with another payload.
    #[error(
        "jobs[{index}].idempotency_key: {key:?} in queue {queue} already belongs to job {existing} with a different payload"
    )]
    IdempotencyConflict { index: usize, queue: QueueName, key: Box<str>, existing: JobId },

    /// The store is at its memory budget; retry later or raise the budget.
    #[error("over capacity: {used_bytes} of {budget_bytes} bytes of job data in use")]
    OverCapacity { used_bytes: u64, budget_bytes: u64 },

    /// The storage failed or is out of reach. The outcome of the operation is unknown: retry it
    /// with the same idempotency key. An embedded store refuses every further operation after a
    /// write or fsync error until it is restarted and recovered.
    #[error("storage unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    pub fn unavailable(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Unavailable { context: context.into(), source: Some(source.into()) }
    }

    /// A refused event. A refusal for bad input (`Rejection::Invalid`: the event's data breaks
    /// a bound of the job) is [`Error::Invalid`], like any other bad input.
    pub fn rejected(job: JobId, rejection: Rejection) -> Error {
        match rejection {
            Rejection::Invalid(invalid) => Error::Invalid(invalid),
            rejection => Error::Rejected { job, rejection },
        }
    }
}
