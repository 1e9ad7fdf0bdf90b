//! The SDK's one error type. It keeps apart the things a caller has to decide between: the
//! server refused the request (`Api`, nothing changed unless the status is 5xx), the outcome is
//! unknown (`Transport`: retry with the same idempotency key), bad input that never left the
//! process (`Invalid`), and a wait for a job that ended before the job did (`WaitTimeout`).

use std::fmt;
use std::time::Duration;

use dray_api::{Job, Problem};

/// An error from a [`Client`](crate::Client) call or a [`JobContext`](crate::JobContext) helper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status and an `application/problem+json` body (or, from
    /// something in between such as a proxy, another body; it is then wrapped in a `Problem` of
    /// type `about:blank`).
    ///
    /// For 4xx the request changed nothing. A 5xx (503: storage unavailable) means the outcome is
    /// unknown, exactly like [`Error::Transport`]: see [`Error::is_outcome_unknown`].
    ///
    /// The problem is boxed to keep `Result<_, Error>` small.
    #[error("{}", ApiDisplay::new(*.status, .problem))]
    Api { status: u16, problem: Box<Problem> },

    /// The request or its answer was lost: connection refused or reset, timeout, a body cut short.
    ///
    /// **The outcome is unknown**: the server may or may not have applied the request. Retry it; for
    /// an enqueue, retry with the same idempotency key so that a job that was in fact accepted is
    /// not enqueued twice (the retry then answers `duplicate: true` with the original job's id).
    #[error("{context}: no answer, outcome unknown (retry with the same idempotency key)")]
    Transport {
        /// The call, e.g. `POST /v1/jobs`.
        context: String,
        #[source]
        source: TransportError,
    },

    /// A body could not be decoded: a 2xx answer that is not the expected JSON (the request was
    /// applied; an SDK that does not match the server is the likely cause), or a job's payload or
    /// checkpoint that does not fit the type asked for.
    #[error("{context}: cannot decode JSON")]
    Decode {
        /// What was being decoded, e.g. `POST /v1/jobs: response` or `job 7: payload`.
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// Bad input caught before anything was sent. Nothing was sent and nothing changed.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },

    /// [`Client::job_wait`](crate::Client::job_wait) or
    /// [`Client::enqueue_and_wait`](crate::Client::enqueue_and_wait) gave up: the job was not
    /// finished (completed, dead or cancelled) when `waited` had passed. Nothing failed and
    /// nothing changed; the job goes on. `job` is the job as last read: its `state` says where it
    /// is, and its `id` is what to wait on again.
    #[error("job {} is still {} after waiting {waited:?}", job.id, job.state.as_str())]
    WaitTimeout {
        /// The job when the wait ended (boxed to keep `Result<_, Error>` small).
        job: Box<Job>,
        /// The timeout the caller gave.
        waited: Duration,
    },
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl fmt::Display) -> Error {
        Error::Invalid { field: field.into(), message: message.to_string() }
    }

    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's problem body of an [`Error::Api`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// 409: a stale lease (someone else holds the job now), an idempotency key already used with
    /// another payload, an action that does not apply to the job as it is now.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// 404: no such job or queue.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The request may or may not have been applied: a transport error or a 5xx. Retry with the
    /// same idempotency key.
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Api { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Worth retrying as is, after a pause: the outcome is unknown, or the server asked to slow
    /// down (429).
    pub fn is_retryable(&self) -> bool {
        self.is_outcome_unknown() || self.status() == Some(429)
    }
}

struct ApiDisplay<'a> {
    status: u16,
    problem: &'a Problem,
}

impl<'a> ApiDisplay<'a> {
    fn new(status: u16, problem: &'a Problem) -> ApiDisplay<'a> {
        ApiDisplay { status, problem }
    }
}

impl fmt::Display for ApiDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.problem;
        write!(f, "{} {}", self.status, p.title)?;
        if !p.detail.is_empty() {
            write!(f, ": {}", p.detail)?;
        }
        if let Some(field) = &p.field {
            write!(f, " (field {field})")?;
        }
        if let Some(job) = p.job {
            write!(f, " (job {job})")?;
        }
        Ok(())
    }
}

/// Why a request got no answer. Opaque so that the HTTP library stays an implementation detail.
#[derive(Debug)]
pub struct TransportError(pub(crate) reqwest::Error);

impl TransportError {
    /// The request timed out (connect or whole request).
    pub fn is_timeout(&self) -> bool {
        self.0.is_timeout()
    }

    /// The connection could not be made: the request surely did not reach the server.
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // reqwest's own message is terse ("error sending request"); its sources say why.
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for TransportError {}
