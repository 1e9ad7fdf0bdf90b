//! The one place errors become HTTP responses: `application/problem+json` bodies
//! ([`dray_api::Problem`], RFC 9457) with a stable `type` (`urn:dray:problem:<kind>`), the field
//! at fault when it is known, and never an internal detail (paths, I/O errors): those are logged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dray_api::{Problem, timestamp_string};
use dray_core::{Invalid, Rejection};
use dray_store::Error;

pub(crate) const PROBLEM_JSON: &str = "application/problem+json";
/// How long a client should wait before retrying after a 503. Short: the common causes (a burst
/// over the memory budget, a restart) pass quickly, and clients back off on their own.
const RETRY_AFTER_S: u32 = 1;

/// An error on its way to the client.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    /// The problem without the field; rendered as `field: message`.
    message: String,
    field: Option<String>,
    job: Option<u64>,
    retry_after: bool,
    /// A 401: answered with `WWW-Authenticate: Bearer`.
    www_authenticate: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            title,
            message: message.into(),
            field: None,
            job: None,
            retry_after: false,
            www_authenticate: false,
        }
    }

    fn with_field(mut self, field: Option<String>) -> ApiError {
        self.field = field.filter(|f| !f.is_empty());
        self
    }

    /// The body is not JSON at all (400).
    pub fn malformed(message: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON", message).with_field(field)
    }

    /// Well-formed JSON that does not fit the request's shape: an unknown field, a wrong type (422).
    pub fn unprocessable(message: impl Into<String>, field: Option<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", "Invalid request", message).with_field(field)
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the request body is over the limit of {limit} bytes (--body-bytes-max)"),
        )
    }

    /// The request could not be read (the client went away, a broken chunked encoding).
    pub fn unreadable_body() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Unreadable request body",
            "the request body could not be read",
        )
    }

    /// A write without `Content-Type: application/json` (`None`: without any content type).
    pub fn unsupported_media_type(got: Option<&str>) -> ApiError {
        let message = match got {
            Some(got) => format!("the content type is {got:?}; send JSON with Content-Type: application/json"),
            None => "a write needs Content-Type: application/json, with a body or without (no Content-Type \
                     was sent)"
                .to_string(),
        };
        ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", message)
    }

    /// A `Host` this server does not answer to (421): the defence against DNS rebinding.
    pub fn misdirected(host: &str) -> ApiError {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected-request",
            "Unknown host name",
            format!(
                "{host:?} is not a name this server answers to; use an IP address or localhost, or add the \
                 name with --allowed-hosts"
            ),
        )
        .with_field(Some("Host".into()))
    }

    /// A page on another origin called the API (403).
    pub fn forbidden_origin(origin: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden-origin",
            "Origin not allowed",
            format!(
                "requests from pages on {origin:?} are refused; allow the origin with --allowed-origins if it \
                 is yours"
            ),
        )
        .with_field(Some("Origin".into()))
    }

    pub fn route_not_found(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route for {path}; see GET /v1/openapi.json"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}; see GET /v1/openapi.json"),
        )
    }

    pub fn job_not_found(id: u64) -> ApiError {
        let mut e =
            ApiError::new(StatusCode::NOT_FOUND, "job-not-found", "Job not found", format!("job {id} not found"));
        e.job = Some(id);
        e
    }

    /// `/healthz`: the store stopped for good; only a restart helps (503, `not-live`).
    pub fn not_live(why: &str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-live", "Not live", why)
    }

    pub fn not_ready(why: &str) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready", why);
        e.retry_after = true;
        e
    }

    /// No usable credential: none, unknown, expired or revoked (401, with `WWW-Authenticate`).
    pub fn unauthorized(why: &str) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", why);
        e.www_authenticate = true;
        e
    }

    /// The credential is good but lacks a scope; `why` names the scope (and the queue).
    pub fn forbidden(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", why)
    }

    pub fn token_not_found(id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "token-not-found", "Token not found", format!("token {id} not found"))
    }

    /// `GET /v1/locks/{name}` of a lock nobody holds (404).
    pub fn lock_not_held(name: &dray_core::LockName, waiters: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "lock-not-held",
            "Lock not held",
            format!("nobody holds lock {name} ({waiters} acquires wait for it on this node)"),
        )
    }

    /// A failure of the server itself (500); the cause is logged where it happened.
    pub fn internal(why: &str) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", why)
    }

    /// The request's body did not arrive within `--body-timeout-ms` (408; the connection closes).
    pub fn body_timeout(ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!("the request body did not arrive within {ms} ms (--body-timeout-ms)"),
        )
    }

    /// Plain HTTP sent to the port that serves HTTPS (400, sent in clear).
    pub fn https_required() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "https-required",
            "HTTPS required",
            "this port serves HTTPS (--tls-cert); connect with https://",
        )
    }

    /// Every connection slot is taken (503, sent as the connection is closed).
    pub fn connections_full(max: usize) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "connections-full",
            "Too many connections",
            format!("the server holds {max} connections, its limit (--connections-max); retry shortly"),
        );
        e.retry_after = true;
        e
    }

    /// A request the HTTP parser refused before any handler saw it: 431 (head over the limits),
    /// 414 (request target over 65534 bytes) or 400 (not an HTTP/1 request). `None` for any other
    /// status.
    pub fn unparsable(status: StatusCode) -> Option<ApiError> {
        let (kind, title, message) = match status.as_u16() {
            431 => (
                "headers-too-large",
                "Request headers too large",
                "the request head is over the limit (100 header fields, about 400 KiB in all)",
            ),
            414 => ("uri-too-long", "Request target too long", "the request target is over the limit of 65534 bytes"),
            400 => ("bad-request", "Bad request", "the request line or a header is not valid HTTP/1.1"),
            _ => return None,
        };
        Some(ApiError::new(status, kind, title, message))
    }

    /// The whole HTTP/1.1 response as bytes, `Connection: close`: for answers written to a socket
    /// outside any handler (a full server, a parse error).
    pub fn raw_response(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {PROBLEM_JSON}\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.retry_after {
            head.push_str(&format!("retry-after: {RETRY_AFTER_S}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }

    /// For a single-job request whose checks speak of a batch: `jobs[0].payload` -> `payload`.
    pub fn unbatched(mut self) -> ApiError {
        if let Some(field) = &self.field
            && let Some(rest) = field.strip_prefix("jobs[0].").or_else(|| field.strip_prefix("acks[0]."))
        {
            self.field = Some(rest.to_string());
        }
        self
    }

    pub fn problem(&self) -> Problem {
        let detail = match &self.field {
            Some(field) => format!("{field}: {}", self.message),
            None => self.message.clone(),
        };
        Problem {
            kind: format!("urn:dray:problem:{}", self.kind),
            title: self.title.to_string(),
            status: self.status.as_u16(),
            detail,
            field: self.field.clone(),
            job: self.job,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::unprocessable(e.message, Some(e.field))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::Invalid(invalid) => invalid.into(),
            Error::JobNotFound(id) => ApiError::job_not_found(id.0),
            Error::QueueNotFound(q) => ApiError::new(
                StatusCode::NOT_FOUND,
                "queue-not-found",
                "Queue not found",
                format!("queue {q} not found"),
            ),
            Error::ScheduleNotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "schedule-not-found",
                "Schedule not found",
                format!("schedule {name} not found"),
            ),
            Error::ScheduleExists(name) => ApiError::new(
                StatusCode::CONFLICT,
                "schedule-exists",
                "Schedule exists",
                format!("schedule {name} already exists; PUT /v1/schedules/{name} replaces it"),
            ),
            Error::TooManySchedules => ApiError::new(
                StatusCode::CONFLICT,
                "too-many-schedules",
                "Too many schedules",
                format!(
                    "the server holds {} schedules, the limit; delete some first",
                    dray_core::Limits::SCHEDULES_MAX
                ),
            ),
            Error::QueueNotEmpty { queue, jobs } => ApiError::new(
                StatusCode::CONFLICT,
                "queue-not-empty",
                "Queue not empty",
                format!(
                    "queue {queue} holds {jobs} jobs that are waiting, running, retrying or dead; cancel or discard \
                     them first (completed and cancelled jobs are deleted with the queue)"
                ),
            ),
            Error::Lock { name, refusal } => lock_refused(&name, refusal),
            Error::TooManyLocks => ApiError::new(
                StatusCode::CONFLICT,
                "too-many-locks",
                "Too many locks",
                format!("the server holds {} locks, the limit; release some first", dray_core::Limits::LOCKS_MAX),
            ),
            Error::Rejected { job, rejection } => {
                let mut e = rejected(rejection);
                e.job = Some(job.0);
                e
            }
            Error::IdempotencyConflict { index, queue, key, existing } => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "idempotency-conflict",
                    "Idempotency key conflict",
                    format!("{key:?} in queue {queue} already belongs to job {existing} with a different payload"),
                )
                .with_field(Some(format!("jobs[{index}].idempotency_key")));
                e.job = Some(existing.0);
                e
            }
            Error::OverCapacity { used_bytes, budget_bytes } => {
                tracing::warn!(used_bytes, budget_bytes, "refused a write: the store is at its memory budget");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "over-capacity",
                    "Over capacity",
                    "the server holds as much job data as its memory budget allows; retry later",
                );
                e.retry_after = true;
                e
            }
            e @ Error::Unavailable { .. } => {
                tracing::error!(error = %error_chain(&e), "store unavailable");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Storage unavailable",
                    "the store is unavailable; the outcome of this request is unknown: retry it \
                     (an enqueue with the same idempotency key)",
                );
                e.retry_after = true;
                e
            }
        }
    }
}

/// A refused event (409). Timestamps are on the server's clock, shown in RFC 3339.
fn rejected(rejection: Rejection) -> ApiError {
    let conflict = |kind, title, message: String| ApiError::new(StatusCode::CONFLICT, kind, title, message);
    match rejection {
        Rejection::StaleLease { state } => conflict(
            "stale-lease",
            "Stale lease",
            format!("the lease is not the job's current one (the job is {state}); nothing was changed"),
        ),
        Rejection::LeaseExpired { deadline } => conflict(
            "lease-expired",
            "Lease expired",
            format!("the lease expired at {} (server clock); nothing was changed", timestamp_string(deadline)),
        ),
        Rejection::LeaseLive { deadline } => {
            conflict("lease-live", "Lease live", format!("the lease is live until {}", timestamp_string(deadline)))
        }
        Rejection::NotDue { run_at } => {
            conflict("not-due", "Not due", format!("the job is not due until {}", timestamp_string(run_at)))
        }
        Rejection::AlreadyFinished { state } => {
            conflict("already-finished", "Job already finished", format!("the job is already {state}"))
        }
        Rejection::NotAllowed { state, event } => {
            conflict("not-allowed", "Not allowed", format!("cannot {event} a job that is {state}"))
        }
        // Bad input, like any other (`store::Error::rejected` makes it `Error::Invalid` already).
        Rejection::Invalid(invalid) => invalid.into(),
    }
}

/// A refused lock operation (409). Deadlines are on the store's clock, shown in RFC 3339.
fn lock_refused(name: &dray_core::LockName, refusal: dray_core::lock::Refusal) -> ApiError {
    use dray_core::lock::Refusal;
    let conflict = |kind, title, message: String| ApiError::new(StatusCode::CONFLICT, kind, title, message);
    match refusal {
        Refusal::Held { permits, holders } => {
            let held: Vec<String> = holders
                .iter()
                .map(|h| {
                    format!(
                        "owner {:?} (fencing token {}, until {})",
                        h.owner.as_str(),
                        h.token.0,
                        timestamp_string(h.deadline)
                    )
                })
                .collect();
            conflict(
                "lock-held",
                "Lock held",
                format!("lock {name} is held by {}; {} of {permits} permits taken", held.join(", "), holders.len()),
            )
        }
        Refusal::PermitsMismatch { permits, asked } => conflict(
            "lock-permits-mismatch",
            "Lock held with other permits",
            format!(
                "lock {name} is held with permits {permits}, not {asked}; ask with the same permits or wait until \
                 it is free"
            ),
        )
        .with_field(Some("permits".into())),
        Refusal::Lost { token, why } => conflict(
            "lock-lost",
            "Lock lost",
            format!("lock {name}: fencing token {} {why}; nothing was changed", token.0),
        ),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response =
            (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        if self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        if self.www_authenticate {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dray\""));
        }
        // The body of a refused oversized or non-JSON request is not read to its end, so the
        // connection cannot carry another request: say so, or a keep-alive client reuses it and
        // its next, unrelated request fails with "outcome unknown".
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::REQUEST_TIMEOUT
        ) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use dray_core::{JobId, JobState, QueueName, Timestamp};

    use super::*;

    #[test]
    fn store_errors_map_to_statuses_and_stable_types() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::JobNotFound(JobId(7)), 404, "urn:dray:problem:job-not-found"),
            (Error::QueueNotFound(QueueName::new("q").unwrap()), 404, "urn:dray:problem:queue-not-found"),
            (
                Error::QueueNotEmpty { queue: QueueName::new("q").unwrap(), jobs: 3 },
                409,
                "urn:dray:problem:queue-not-empty",
            ),
            (
                Error::rejected(JobId(7), Rejection::StaleLease { state: JobState::Running }),
                409,
                "urn:dray:problem:stale-lease",
            ),
            (
                Error::rejected(JobId(7), Rejection::LeaseExpired { deadline: Timestamp(0) }),
                409,
                "urn:dray:problem:lease-expired",
            ),
            // A step past its job's bounds is bad input: 422, naming the field.
            (
                Error::rejected(JobId(7), Rejection::Invalid(Invalid::new("name", "the limit is 1000 steps per job"))),
                422,
                "urn:dray:problem:invalid-request",
            ),
            (Error::OverCapacity { used_bytes: 2, budget_bytes: 1 }, 503, "urn:dray:problem:over-capacity"),
            (
                Error::unavailable("fsync /secret/path", std::io::Error::other("disk on fire")),
                503,
                "urn:dray:problem:unavailable",
            ),
        ];
        for (error, status, kind) in cases {
            let p = ApiError::from(error).problem();
            assert_eq!((p.status, p.kind.as_str()), (status, kind));
            assert!(!p.detail.contains("secret") && !p.detail.contains("fire"), "leaks internals: {}", p.detail);
        }
    }

    #[test]
    fn responses_are_problem_json_and_503s_say_when_to_retry() {
        let response = ApiError::from(Error::OverCapacity { used_bytes: 2, budget_bytes: 1 }).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::job_not_found(1).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn unauthorized_says_how_to_authenticate() {
        let response = ApiError::unauthorized("no token").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"dray\"");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let response = ApiError::forbidden("scope").into_response();
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }

    #[test]
    fn conflicts_name_the_field_and_the_job() {
        let e = Error::IdempotencyConflict {
            index: 0,
            queue: QueueName::new("q").unwrap(),
            key: "k".into(),
            existing: JobId(3),
        };
        let p = ApiError::from(e).unbatched().problem();
        assert_eq!((p.field.as_deref(), p.job), (Some("idempotency_key"), Some(3)));
        assert_eq!(p.detail, "idempotency_key: \"k\" in queue q already belongs to job 3 with a different payload");
    }
}
