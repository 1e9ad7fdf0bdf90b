//! The HTTP client: one typed method per route of the `/v1` API, for producers, operators and
//! workers. It owns the HTTP connection pool and the timeouts; it never retries on its own (a retry
//! is the caller's decision, and an enqueue retry must carry the same idempotency key).
//!
//! Cancel safety: every async method here sends one request. Dropping its future abandons the
//! request, which leaves the outcome unknown exactly as an [`Error::Transport`] does: the server
//! may or may not have applied it.

use std::time::Duration;

use dray_api::{
    AckBatch, AckBatchResponse, Acked, Backoff, CancelResponse, CompleteRequest, DeadAction, DeadActionResponse,
    DependencyRef, EnqueueBatch, EnqueueJob, Enqueued, EnqueuedBatch, FailRequest, Health, HeartbeatRequest,
    HeartbeatResponse, Job, JobGetQuery, JobPage, JobQuery, Json, LeaseRequest, LeaseResponse, LockAcquireRequest,
    LockForceQuery, LockForceReleased, LockGrant, LockInfo, LockList, LockQuery, LockReleaseRequest, LockReleased,
    LockRenewRequest, OnDependencyFailure, Problem, PromoteResponse, Queue, QueueConfigure, QueueDeletedResponse,
    QueueList, Schedule, ScheduleBody, ScheduleList, ScheduleQuery, StepRequest, StepResponse, Token, TokenCreate,
    TokenCreated, TokenList, Triggered,
};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, TransportError};

/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a whole request may take. A lease's long-poll wait is added to it.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long an idle pooled connection is kept: less than the server's default idle timeout
/// (`--idle-timeout-ms`, 60 s), so the client lets a connection go before the server closes it
/// under a request being sent (whose outcome would then be unknown).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// How much of a non-problem error body goes into the synthesized problem's detail.
const ERROR_BODY_CHARS_MAX: usize = 512;
/// The longest single long-poll of [`Client::job_wait`]: the server's bound on `wait_ms`
/// (60 s). A longer wait is a loop of requests.
pub const JOB_WAIT_STEP_MAX: Duration = Duration::from_millis(JobGetQuery::WAIT_MS_MAX);
/// Each request of [`Client::job_wait`] takes at least this long (or its whole step, when
/// shorter): a server that answers before the wait ends without the job finishing (one shutting
/// down, or one too old to know `wait_ms`) is asked again after a pause, never in a tight loop.
const JOB_WAIT_ROUND_MIN: Duration = Duration::from_millis(250);

/// A client of one Dray server. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    request_timeout: Duration,
}

/// Options of a [`Client`], for when the defaults do not fit.
#[derive(Clone)]
pub struct ClientBuilder {
    base_url: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Sent as `Authorization: Bearer <token>` on every request.
    token: Option<String>,
    /// PEM texts of CA certificates trusted besides the system's roots (feature `tls`).
    ca_pem: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .field("ca_certificates", &self.ca_pem.len())
            .finish()
    }
}

impl ClientBuilder {
    /// The API token sent as `Authorization: Bearer <token>` on every request (and so by every
    /// [`Worker`](crate::Worker) built on this client). Needed when the server requires
    /// authentication; its scopes decide what the client may do.
    pub fn token(mut self, token: impl Into<String>) -> ClientBuilder {
        self.token = Some(token.into());
        self
    }

    /// Default [`CONNECT_TIMEOUT_DEFAULT`] (5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Default [`REQUEST_TIMEOUT_DEFAULT`] (30 s). A lease adds its long-poll wait to it.
    pub fn request_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.request_timeout = timeout;
        self
    }

    /// Trusts the CA certificates in `pem` (one or more `BEGIN CERTIFICATE` blocks) for https://
    /// servers, besides the system's roots: for a server whose certificate comes from a private
    /// CA. Checked by [`ClientBuilder::build`]. Needs the `tls` feature (on by default).
    pub fn ca_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> ClientBuilder {
        self.ca_pem.push(pem.into());
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let mut base = Url::parse(&self.base_url)
            .map_err(|e| Error::invalid("base_url", format!("{:?} is not a URL: {e}", self.base_url)))?;
        match base.scheme() {
            "http" => {}
            "https" if cfg!(feature = "tls") => {}
            "https" => {
                return Err(Error::invalid(
                    "base_url",
                    "https needs dray-client's `tls` feature, which this build leaves out; use http:// or enable it",
                ));
            }
            other => return Err(Error::invalid("base_url", format!("scheme {other:?} is not http or https"))),
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            return Err(Error::invalid("base_url", "must be like http://host:port or http://host:port/prefix"));
        }
        // Routes are appended as path segments: drop a trailing slash so `/prefix/` and `/prefix`
        // mean the same.
        if let Ok(mut segments) = base.path_segments_mut() {
            segments.pop_if_empty();
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| Error::invalid("token", "must be printable ASCII without line breaks"))?;
            // Kept out of debug output and HTTP/2 header compression tables.
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder();
        // Our own rustls configuration, always: reqwest would otherwise need a process-wide
        // crypto provider installed (and panic without one), a global an SDK must not set.
        #[cfg(feature = "tls")]
        let http = http.tls_backend_preconfigured(crate::tls::client_config(&self.ca_pem)?);
        #[cfg(not(feature = "tls"))]
        if !self.ca_pem.is_empty() {
            return Err(Error::invalid("ca_certificates", "needs dray-client's `tls` feature"));
        }
        let http = http
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(concat!("dray-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::invalid("client", TransportError(e)))?;
        Ok(Client { http, base, request_timeout: self.request_timeout })
    }
}

impl Client {
    /// A client with the default timeouts (connect 5 s, request 30 s), e.g.
    /// `Client::new("http://127.0.0.1:7700")`.
    pub fn new(base_url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            token: None,
            ca_pem: Vec::new(),
        }
    }

    /// The server's address as given (without a trailing slash).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    // ---- producers -------------------------------------------------------------------------

    /// `POST /v1/jobs`: enqueue one job. A 2xx means the job is on stable storage.
    ///
    /// With the `otel` feature, a job without a [traceparent](Enqueue::traceparent) gets the
    /// current span's OpenTelemetry context, so its attempts join the caller's trace.
    ///
    /// On [`Error::Transport`] or a 5xx the outcome is unknown: retry with the same idempotency
    /// key. Cancel safety: dropping the future leaves the outcome unknown too.
    pub async fn enqueue(&self, job: Enqueue) -> Result<Enqueued, Error> {
        let job = job.with_current_trace();
        self.send(Method::POST, &["v1", "jobs"], None, Some(&job.job), None).await
    }

    /// `POST /v1/jobs/batch`: enqueue all jobs atomically (all or none). An error naming
    /// `jobs[3].payload` points at the fourth job. Trace context as in [`Client::enqueue`], job by
    /// job. Cancel safety: as [`Client::enqueue`].
    pub async fn enqueue_batch(&self, jobs: Vec<Enqueue>) -> Result<EnqueuedBatch, Error> {
        let body = EnqueueBatch { jobs: jobs.into_iter().map(|e| e.with_current_trace().job).collect() };
        self.send(Method::POST, &["v1", "jobs", "batch"], None, Some(&body), None).await
    }

    /// [`Client::enqueue`], then [`Client::job_wait`] on the job: the job once it is finished
    /// (completed, dead or cancelled), with its `result`. `timeout` bounds the wait, counted from
    /// the enqueue's answer; past it the error is [`Error::WaitTimeout`], carrying the job as it
    /// was then. An idempotency key that matches an earlier job waits on that job.
    ///
    /// ```no_run
    /// # async fn f(client: dray_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use dray_client::Enqueue;
    /// use dray_client::api::State;
    /// #[derive(serde::Serialize)]
    /// struct Resize { image: String, width: u32 }
    /// #[derive(serde::Deserialize)]
    /// struct Thumbnail { url: String }
    ///
    /// let job = Enqueue::new("thumbnails", &Resize { image: "cat.png".into(), width: 200 })?
    ///     .idempotency_key("thumbnail-cat-200");
    /// let done = client.enqueue_and_wait(job, Duration::from_secs(30)).await?;
    /// match done.state {
    ///     State::Completed => {
    ///         let thumbnail: Option<Thumbnail> = done.result_as()?;
    ///         println!("{:?}", thumbnail.map(|t| t.url));
    ///     }
    ///     // Dead (its attempts used up, or failed as not retryable) or cancelled.
    ///     state => println!("job {} ended {}: {:?}", done.id, state.as_str(), done.last_error),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Cancel safety: dropping the future during the enqueue leaves its outcome unknown (as
    /// [`Client::enqueue`]); during the wait it abandons only the wait. An error after the
    /// enqueue was accepted (a lost answer while waiting) does not undo it: with an idempotency
    /// key, calling again waits on the same job instead of enqueuing another.
    pub async fn enqueue_and_wait(&self, job: Enqueue, timeout: Duration) -> Result<Job, Error> {
        let enqueued = self.enqueue(job).await?;
        self.job_wait(enqueued.id, timeout).await
    }

    // ---- reading and administration ---------------------------------------------------------

    /// `GET /v1/jobs/{id}`: a job with its whole history. Cancel safe (reads only).
    pub async fn job(&self, id: u64) -> Result<Job, Error> {
        self.get(&["v1", "jobs", &id.to_string()], None).await
    }

    /// Waits until job `id` is finished (completed, dead or cancelled) and returns it, with its
    /// `result` (see [`Job::result_as`]) or its `last_error`. Past `timeout` the error is
    /// [`Error::WaitTimeout`], which carries the job as it was last read.
    ///
    /// It long-polls `GET /v1/jobs/{id}?wait_ms=`, in steps of at most [`JOB_WAIT_STEP_MAX`] (the
    /// server's bound), so any timeout works; each request's timeout is the client's request
    /// timeout plus its step. The server answers as soon as it learns the job finished: at once
    /// for a finish on the node the request is on, within a quarter of a second for one on
    /// another node (PostgreSQL mode). A timeout of zero reads the job once.
    ///
    /// ```no_run
    /// # async fn f(client: dray_client::Client, id: u64) -> Result<(), dray_client::Error> {
    /// use std::time::Duration;
    /// match client.job_wait(id, Duration::from_secs(120)).await {
    ///     Ok(job) => println!("job {id} is {}", job.state.as_str()),
    ///     Err(dray_client::Error::WaitTimeout { job, .. }) => {
    ///         println!("job {id} is still {} after two minutes", job.state.as_str())
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// Errors as [`Client::job`]: 404 for a job that does not exist (or was deleted while
    /// waited on), and transport errors, which a read can simply retry. Cancel safe (reads only).
    pub async fn job_wait(&self, id: u64, timeout: Duration) -> Result<Job, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id_text = id.to_string();
        loop {
            let started = tokio::time::Instant::now();
            let step = deadline.saturating_duration_since(started).min(JOB_WAIT_STEP_MAX);
            let query = JobGetQuery { wait_ms: Some(millis_ceil(step).min(JobGetQuery::WAIT_MS_MAX)) };
            let request_timeout = self.request_timeout.saturating_add(step);
            let job: Job = self
                .send::<(), Job>(Method::GET, &["v1", "jobs", &id_text], Some(&query), None, Some(request_timeout))
                .await?;
            if job.state.is_finished() {
                return Ok(job);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::WaitTimeout { job: Box::new(job), waited: timeout });
            }
            tokio::time::sleep_until((started + step.min(JOB_WAIT_ROUND_MIN)).min(deadline)).await;
        }
    }

    /// `GET /v1/jobs`: one page of jobs matching the query; pass the page's `next` as `after` for
    /// the next. Cancel safe (reads only).
    pub async fn jobs(&self, query: JobQuery) -> Result<JobPage, Error> {
        self.get(&["v1", "jobs"], Some(&query)).await
    }

    /// `POST /v1/jobs/{id}/cancel`: a waiting job is cancelled at once (`cancelled`); a running one
    /// is asked to stop (`running`): its worker learns it at its next heartbeat. Cancel safety:
    /// dropping the future leaves the outcome unknown; cancelling again is harmless.
    pub async fn cancel(&self, id: u64) -> Result<CancelResponse, Error> {
        self.post_empty(&["v1", "jobs", &id.to_string(), "cancel"]).await
    }

    /// `POST /v1/jobs/{id}/promote`: run a scheduled or retrying job now. Not idempotent (a
    /// second call finds the job available and is refused with 409).
    pub async fn promote(&self, id: u64) -> Result<PromoteResponse, Error> {
        self.post_empty(&["v1", "jobs", &id.to_string(), "promote"]).await
    }

    /// `DELETE /v1/queues/{name}`: delete a queue that holds no work (409 otherwise).
    pub async fn queue_delete(&self, name: &str) -> Result<QueueDeletedResponse, Error> {
        self.send::<(), QueueDeletedResponse>(
            Method::DELETE,
            &["v1", "queues", segment("name", name)?],
            None,
            None,
            None,
        )
        .await
    }

    /// `GET /v1/dead`: one page of the dead-letter queue. Cancel safe (reads only).
    pub async fn dead(&self, query: JobQuery) -> Result<JobPage, Error> {
        self.get(&["v1", "dead"], Some(&query)).await
    }

    /// `POST /v1/dead/redrive`: make dead jobs `available` again with a fresh budget of attempts,
    /// by ids or by filter (set `dry_run` to see which). Cancel safety: dropping the future leaves
    /// the outcome unknown; redriving by ids again is harmless (a job no longer dead is skipped
    /// or refused).
    pub async fn dead_redrive(&self, action: DeadAction) -> Result<DeadActionResponse, Error> {
        self.send(Method::POST, &["v1", "dead", "redrive"], None, Some(&action), None).await
    }

    /// `POST /v1/dead/discard`: delete dead jobs, by ids or by filter. Cancel safety: as
    /// [`Client::dead_redrive`].
    pub async fn dead_discard(&self, action: DeadAction) -> Result<DeadActionResponse, Error> {
        self.send(Method::POST, &["v1", "dead", "discard"], None, Some(&action), None).await
    }

    /// `GET /v1/queues`: every queue with its configuration and counts. Cancel safe.
    pub async fn queues(&self) -> Result<QueueList, Error> {
        self.get(&["v1", "queues"], None).await
    }

    /// `GET /v1/queues/{name}`. Cancel safe.
    pub async fn queue(&self, name: &str) -> Result<Queue, Error> {
        self.get(&["v1", "queues", segment("name", name)?], None).await
    }

    /// `PUT /v1/queues/{name}`: create the queue or change the fields given. Idempotent, so cancel
    /// safe in effect: repeat it if the outcome is unknown.
    pub async fn queue_configure(&self, name: &str, configure: QueueConfigure) -> Result<Queue, Error> {
        self.send(Method::PUT, &["v1", "queues", segment("name", name)?], None, Some(&configure), None).await
    }

    /// `POST /v1/queues/{name}/pause`: stop handing out its jobs (enqueue still works). Idempotent.
    pub async fn queue_pause(&self, name: &str) -> Result<Queue, Error> {
        self.post_empty(&["v1", "queues", segment("name", name)?, "pause"]).await
    }

    /// `POST /v1/queues/{name}/resume`. Idempotent.
    pub async fn queue_resume(&self, name: &str) -> Result<Queue, Error> {
        self.post_empty(&["v1", "queues", segment("name", name)?, "resume"]).await
    }

    /// `POST /v1/queues/{name}/breaker`: force the queue's circuit breaker open (it stays open
    /// until closed by hand) or closed. Not idempotent in what it records (each order that changes
    /// the state counts a transition), safe to retry.
    pub async fn queue_breaker(&self, name: &str, action: dray_api::BreakerActionKind) -> Result<Queue, Error> {
        let body = dray_api::BreakerAction { action };
        self.send(Method::POST, &["v1", "queues", segment("name", name)?, "breaker"], None, Some(&body), None).await
    }

    /// `GET /v1/schedules`, each with its next `next` fire times (server default 5). Cancel safe.
    pub async fn schedules(&self, next: Option<usize>) -> Result<ScheduleList, Error> {
        self.get(&["v1", "schedules"], Some(&ScheduleQuery { next })).await
    }

    /// `GET /v1/schedules/{name}` with its next `next` fire times. Cancel safe.
    pub async fn schedule(&self, name: &str, next: Option<usize>) -> Result<Schedule, Error> {
        self.get(&["v1", "schedules", segment("name", name)?], Some(&ScheduleQuery { next })).await
    }

    /// `POST /v1/schedules`: create a schedule named in `body.name`; a taken name is refused
    /// (409). Retry an unknown outcome with [`Client::schedule_put`], which is idempotent.
    pub async fn schedule_create(&self, body: &ScheduleBody) -> Result<Schedule, Error> {
        self.send(Method::POST, &["v1", "schedules"], None, Some(body), None).await
    }

    /// `PUT /v1/schedules/{name}`: create or replace. Idempotent.
    pub async fn schedule_put(&self, name: &str, body: &ScheduleBody) -> Result<Schedule, Error> {
        self.send(Method::PUT, &["v1", "schedules", segment("name", name)?], None, Some(body), None).await
    }

    /// `DELETE /v1/schedules/{name}`: answers the schedule as it was; the jobs it enqueued stay.
    pub async fn schedule_delete(&self, name: &str) -> Result<Schedule, Error> {
        self.send::<(), Schedule>(Method::DELETE, &["v1", "schedules", segment("name", name)?], None, None, None).await
    }

    /// `POST /v1/schedules/{name}/pause`. Idempotent.
    pub async fn schedule_pause(&self, name: &str) -> Result<Schedule, Error> {
        self.post_empty(&["v1", "schedules", segment("name", name)?, "pause"]).await
    }

    /// `POST /v1/schedules/{name}/resume`. Idempotent.
    pub async fn schedule_resume(&self, name: &str) -> Result<Schedule, Error> {
        self.post_empty(&["v1", "schedules", segment("name", name)?, "resume"]).await
    }

    /// `POST /v1/schedules/{name}/trigger`: enqueue its job now. Not idempotent: each call
    /// enqueues one job.
    pub async fn schedule_trigger(&self, name: &str) -> Result<Triggered, Error> {
        self.post_empty(&["v1", "schedules", segment("name", name)?, "trigger"]).await
    }

    /// `POST /v1/tokens` (admin): a new API token. The answer's `token` is the secret, shown
    /// this once. Cancel safety: dropping the future may leave a token created whose secret
    /// nobody saw; revoke it (it is listed by name).
    pub async fn token_create(&self, request: TokenCreate) -> Result<TokenCreated, Error> {
        self.send(Method::POST, &["v1", "tokens"], None, Some(&request), None).await
    }

    /// `GET /v1/tokens` (admin): every token, without secrets. Cancel safe.
    pub async fn tokens(&self) -> Result<TokenList, Error> {
        self.get(&["v1", "tokens"], None).await
    }

    /// `DELETE /v1/tokens/{id}` (admin): revoke a token. Idempotent.
    pub async fn token_revoke(&self, id: &str) -> Result<Token, Error> {
        self.send::<(), Token>(Method::DELETE, &["v1", "tokens", segment("id", id)?], None, None, None).await
    }

    // ---- locks (see docs/locks.md) -------------------------------------------------------------

    /// `POST /v1/locks/{name}/acquire`: hold the lock (or one of its `permits`) for `ttl_ms`,
    /// waiting up to `wait_ms` while others hold it (the request timeout is extended by the
    /// wait). A 409 `lock-held` names the holders when the wait ends. Hand the answer's
    /// `fencing_token` to the resource you protect ([`crate::outbox::fence`] in PostgreSQL mode):
    /// a lock alone does not stop a holder that was paused past its TTL from writing.
    ///
    /// Cancel safety: dropping the future may leave the lock granted to `owner` until its TTL;
    /// acquiring again with the same owner gets that same hold back, so retry rather than wait.
    pub async fn lock_acquire(&self, name: &str, request: &LockAcquireRequest) -> Result<LockGrant, Error> {
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let timeout = self.request_timeout.saturating_add(wait);
        self.send(Method::POST, &["v1", "locks", segment("name", name)?, "acquire"], None, Some(request), Some(timeout))
            .await
    }

    /// `POST /v1/locks/{name}/renew`: extend the hold by `ttl_ms` from now (default: its last
    /// TTL). A 409 `lock-lost` means the hold is gone: stop writing. Idempotent.
    pub async fn lock_renew(&self, name: &str, request: &LockRenewRequest) -> Result<LockGrant, Error> {
        self.send(Method::POST, &["v1", "locks", segment("name", name)?, "renew"], None, Some(request), None).await
    }

    /// `POST /v1/locks/{name}/release`: end the hold. `released: false` when it had already
    /// ended (a retry, or the TTL passed). Idempotent.
    pub async fn lock_release(&self, name: &str, request: &LockReleaseRequest) -> Result<LockReleased, Error> {
        self.send(Method::POST, &["v1", "locks", segment("name", name)?, "release"], None, Some(request), None).await
    }

    /// `GET /v1/locks/{name}`: holders, tokens, deadlines, waiters (404 `lock-not-held` when
    /// nobody holds it). Cancel safe.
    pub async fn lock(&self, name: &str) -> Result<LockInfo, Error> {
        self.get(&["v1", "locks", segment("name", name)?], None).await
    }

    /// `GET /v1/locks`: held locks by name, one page. Cancel safe.
    pub async fn locks(&self, query: LockQuery) -> Result<LockList, Error> {
        self.get(&["v1", "locks"], Some(&query)).await
    }

    /// `DELETE /v1/locks/{name}` (admin): end the hold with `fencing_token`, or every hold.
    /// Idempotent.
    pub async fn lock_force_release(&self, name: &str, fencing_token: Option<u64>) -> Result<LockForceReleased, Error> {
        let query = LockForceQuery { fencing_token };
        self.send::<(), LockForceReleased>(
            Method::DELETE,
            &["v1", "locks", segment("name", name)?],
            Some(&query),
            None,
            None,
        )
        .await
    }

    /// `GET /healthz`. Cancel safe.
    pub async fn health(&self) -> Result<Health, Error> {
        self.get(&["healthz"], None).await
    }

    // ---- workers (the [`Worker`](crate::Worker) runtime uses these; call them directly to build
    // your own loop) ---------------------------------------------------------------------------

    /// `POST /v1/lease`: lease up to `count` jobs, long-polling up to `wait_ms` when none is
    /// available. The request timeout is extended by the wait.
    ///
    /// Cancel safety: **not cancel safe.** If the future is dropped after the server granted
    /// leases, those jobs stay invisible until their leases expire (then they are delivered again,
    /// the attempt counted). Dropping it while the server is still waiting grants nothing.
    pub async fn lease(&self, request: LeaseRequest) -> Result<LeaseResponse, Error> {
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let timeout = self.request_timeout.saturating_add(wait);
        self.send(Method::POST, &["v1", "lease"], None, Some(&request), Some(timeout)).await
    }

    /// `POST /v1/jobs/{id}/heartbeat`: extend the lease, save progress and a checkpoint, learn
    /// whether a cancel was requested. A 409 means the lease is lost: stop working on the job.
    ///
    /// Cancel safety: dropping the future leaves unknown whether the lease was extended and the
    /// checkpoint saved; send another heartbeat.
    pub async fn heartbeat(&self, id: u64, request: HeartbeatRequest) -> Result<HeartbeatResponse, Error> {
        self.heartbeat_within(id, &request, None).await
    }

    pub(crate) async fn heartbeat_within(
        &self,
        id: u64,
        request: &HeartbeatRequest,
        timeout: Option<Duration>,
    ) -> Result<HeartbeatResponse, Error> {
        self.send(Method::POST, &["v1", "jobs", &id.to_string(), "heartbeat"], None, Some(request), timeout).await
    }

    /// `POST /v1/jobs/{id}/steps`: record a step of the attempt holding `request.lease_id`. The
    /// first record of a name wins: the answer says whether this call recorded it, and always
    /// carries the result recorded. A 409 means the lease is stale (someone else holds the job
    /// now) or the job finished. Workers use [`JobContext::step`](crate::JobContext::step).
    ///
    /// Cancel safety: dropping the future leaves unknown whether the step was recorded; sending
    /// it again is safe (the answer then carries the first record).
    pub async fn step(&self, id: u64, request: &StepRequest) -> Result<StepResponse, Error> {
        self.send(Method::POST, &["v1", "jobs", &id.to_string(), "steps"], None, Some(request), None).await
    }

    /// `POST /v1/jobs/{id}/complete`. An accepted completion is final. A 409 means the lease is
    /// stale: someone else holds the job now, and nothing changed.
    ///
    /// Cancel safety: dropping the future leaves the outcome unknown; sending the same completion
    /// again is safe (if the first one was applied, the retry gets a 409).
    pub async fn complete(&self, id: u64, request: CompleteRequest) -> Result<Acked, Error> {
        self.send(Method::POST, &["v1", "jobs", &id.to_string(), "complete"], None, Some(&request), None).await
    }

    /// `POST /v1/jobs/{id}/fail`: a failed attempt, retried after the backoff (or `retry_after_ms`)
    /// unless it is not retryable or was the last. Cancel safety: as [`Client::complete`].
    pub async fn fail(&self, id: u64, request: FailRequest) -> Result<Acked, Error> {
        self.send(Method::POST, &["v1", "jobs", &id.to_string(), "fail"], None, Some(&request), None).await
    }

    /// `POST /v1/ack`: completions and failures in one durable write, one result per item (a
    /// refused item carries a problem; the others are applied). Cancel safety: as
    /// [`Client::complete`], item by item.
    pub async fn ack(&self, batch: AckBatch) -> Result<AckBatchResponse, Error> {
        self.ack_ref(&batch).await
    }

    /// [`Client::ack`] without giving up the batch, for retries.
    pub(crate) async fn ack_ref(&self, batch: &AckBatch) -> Result<AckBatchResponse, Error> {
        self.send(Method::POST, &["v1", "ack"], None, Some(batch), None).await
    }

    // ---- plumbing -----------------------------------------------------------------------------

    async fn get<R: DeserializeOwned>(&self, path: &[&str], query: Option<&dyn QueryParams>) -> Result<R, Error> {
        self.send::<(), R>(Method::GET, path, query, None, None).await
    }

    async fn post_empty<R: DeserializeOwned>(&self, path: &[&str]) -> Result<R, Error> {
        self.send::<(), R>(Method::POST, path, None, None, None).await
    }

    async fn send<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: Option<&dyn QueryParams>,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<R, Error> {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(path);
        }
        if let Some(query) = query {
            query_append(&mut url, query)?;
        }
        let context = || format!("{method} {}", url.path());
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.json(body);
        } else if method != Method::GET {
            // The server refuses a write without a JSON content type (what an HTML form or a
            // cross-site page could send), body or not.
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response =
            request.send().await.map_err(|e| Error::Transport { context: context(), source: TransportError(e) })?;
        let status = response.status();
        let bytes =
            response.bytes().await.map_err(|e| Error::Transport { context: context(), source: TransportError(e) })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|source| Error::Decode { context: format!("{}: response", context()), source });
        }
        let problem = match serde_json::from_slice::<Problem>(&bytes) {
            Ok(problem) => problem,
            // Something in between (a proxy, a load balancer) answered, or the body is not ours.
            Err(_) => {
                let text = String::from_utf8_lossy(&bytes);
                Problem {
                    kind: "about:blank".into(),
                    title: status.canonical_reason().unwrap_or("error").into(),
                    status: status.as_u16(),
                    detail: text.chars().take(ERROR_BODY_CHARS_MAX).collect(),
                    field: None,
                    job: None,
                }
            }
        };
        Err(Error::Api { status: status.as_u16(), problem: Box::new(problem) })
    }
}

/// A path segment from user input. `.` and `..` would be resolved away by URL normalization and
/// address another route, so they are refused here rather than sent.
fn segment<'a>(field: &str, s: &'a str) -> Result<&'a str, Error> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(Error::invalid(field, format!("{s:?} is not a name")));
    }
    Ok(s)
}

/// The query string of a list request: each field that is set, as the server's query parser
/// reads it (strings, numbers and the snake_case state names).
/// A request body's fields sent as query parameters instead.
trait QueryParams: Sync {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error>;
}

impl QueryParams for JobQuery {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl QueryParams for JobGetQuery {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl QueryParams for LockQuery {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl QueryParams for LockForceQuery {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

impl QueryParams for ScheduleQuery {
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

fn query_append(url: &mut Url, query: &dyn QueryParams) -> Result<(), Error> {
    let value = query.to_value().map_err(|e| Error::invalid("query", e))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(Error::invalid("query", "is not an object"));
    };
    let mut pairs = url.query_pairs_mut();
    for (key, value) in fields {
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                pairs.append_pair(&key, &s);
            }
            serde_json::Value::Number(n) => {
                pairs.append_pair(&key, &n.to_string());
            }
            serde_json::Value::Bool(b) => {
                pairs.append_pair(&key, if b { "true" } else { "false" });
            }
            other => return Err(Error::invalid(key, format!("{other} cannot be a query parameter"))),
        }
    }
    drop(pairs);
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(())
}

/// Milliseconds of a duration, rounded up so that "not before" stays true, saturating (the server
/// refuses anything that large with a message naming the limit).
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// One job to enqueue: a queue, a JSON payload and options. Built with chained setters:
///
/// ```no_run
/// # async fn f(client: dray_client::Client) -> Result<(), dray_client::Error> {
/// use std::time::Duration;
/// use dray_client::Enqueue;
/// #[derive(serde::Serialize)]
/// struct Receipt { order: u64 }
/// let job = Enqueue::new("emails", &Receipt { order: 42 })?
///     .priority(5)
///     .delay(Duration::from_secs(60))
///     .idempotency_key("receipt-42")
///     .attempts_max(3);
/// let enqueued = client.enqueue(job).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Enqueue {
    job: EnqueueJob,
}

impl Enqueue {
    /// A job for `queue` with `payload` serialized as JSON. Fails (`Invalid`, field `payload`) only
    /// if the value cannot be serialized (a map with non-string keys, say).
    pub fn new<T: Serialize + ?Sized>(queue: impl Into<String>, payload: &T) -> Result<Enqueue, Error> {
        let payload = serde_json::value::to_raw_value(payload).map_err(|e| Error::invalid("payload", e))?;
        Ok(Enqueue::from_json(queue, payload))
    }

    /// A job whose payload is already JSON text.
    pub fn from_json(queue: impl Into<String>, payload: Json) -> Enqueue {
        Enqueue {
            job: EnqueueJob {
                queue: queue.into(),
                payload,
                priority: None,
                run_at: None,
                delay_ms: None,
                attempts_max: None,
                backoff: None,
                lease_ms: None,
                idempotency_key: None,
                ordering_key: None,
                group_key: None,
                tags: Vec::new(),
                traceparent: None,
                key: None,
                depends_on: Vec::new(),
                on_dependency_failure: None,
            },
        }
    }

    /// Names this job within one [`Client::enqueue_batch`] call, so that other jobs of the
    /// batch can depend on it with [`Enqueue::after_key`]. 1 to 128 bytes, unique in the batch.
    pub fn key(mut self, key: impl Into<String>) -> Enqueue {
        self.job.key = Some(key.into());
        self
    }

    /// Runs only once the existing job `id` finished (completed, by default: see
    /// [`Enqueue::run_if_dependency_fails`]); until then the job is `blocked`. Call once per
    /// dependency; the lease carries each dependency's state and result in this order.
    pub fn after(mut self, id: u64) -> Enqueue {
        self.job.depends_on.push(DependencyRef::Id(id));
        self
    }

    /// Like [`Enqueue::after`], naming another job of the same batch by its [`Enqueue::key`]:
    /// a whole graph goes in one request.
    pub fn after_key(mut self, key: impl Into<String>) -> Enqueue {
        self.job.depends_on.push(DependencyRef::Key(key.into()));
        self
    }

    /// Runs once every dependency finished even if one ended dead or cancelled (the default is
    /// to end cancelled, naming the dependency, and to cancel the jobs depending on this one).
    pub fn run_if_dependency_fails(mut self) -> Enqueue {
        self.job.on_dependency_failure = Some(OnDependencyFailure::Run);
        self
    }

    /// Higher runs first; -1000 to 1000, default 0.
    pub fn priority(mut self, priority: i16) -> Enqueue {
        self.job.priority = Some(priority);
        self
    }

    /// Run this long after the server accepts the job (server clock; rounded up to whole
    /// milliseconds). Replaces an earlier [`Enqueue::run_at`].
    pub fn delay(mut self, delay: Duration) -> Enqueue {
        self.job.delay_ms = Some(millis_ceil(delay));
        self.job.run_at = None;
        self
    }

    /// Run at this RFC 3339 instant (server clock), e.g. `2026-11-21T09:00:00Z`. Replaces an
    /// earlier [`Enqueue::delay`].
    pub fn run_at(mut self, rfc3339: impl Into<String>) -> Enqueue {
        self.job.run_at = Some(rfc3339.into());
        self.job.delay_ms = None;
        self
    }

    /// Deliveries in all, lease expiries included; default from the queue.
    pub fn attempts_max(mut self, attempts_max: u32) -> Enqueue {
        self.job.attempts_max = Some(attempts_max);
        self
    }

    /// Retry backoff of this job; default from the queue.
    pub fn backoff(mut self, backoff: Backoff) -> Enqueue {
        self.job.backoff = Some(backoff);
        self
    }

    /// Lease duration of each attempt (1 s to 12 h); default from the queue.
    pub fn lease(mut self, lease: Duration) -> Enqueue {
        self.job.lease_ms = Some(millis_ceil(lease));
        self
    }

    /// Within the server's window, the same key and payload return the original job
    /// (`duplicate: true`); the same key with another payload is refused (409).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Enqueue {
        self.job.idempotency_key = Some(key.into());
        self
    }

    /// Jobs of a queue sharing an ordering key run one at a time, in enqueue order.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Enqueue {
        self.job.ordering_key = Some(key.into());
        self
    }

    /// The job's group, for the queue's `group_concurrency_max` and `group_rate` and for fair
    /// turns across groups.
    pub fn group_key(mut self, key: impl Into<String>) -> Enqueue {
        self.job.group_key = Some(key.into());
        self
    }

    /// Replaces the tags (at most 16).
    pub fn tags<I, S>(mut self, tags: I) -> Enqueue
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.job.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// The producer's W3C trace context (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
    /// at most 256 bytes; the server refuses anything else, naming the field). It is stored with
    /// the job and handed to every attempt: as [`JobContext::traceparent`](crate::JobContext::traceparent),
    /// as the `trace_id` and `traceparent` fields of the attempt's `job` span, and with the `otel`
    /// feature as that span's OpenTelemetry parent. Without it, and with the `otel` feature, the
    /// client sends the current span's context instead; a value given here always wins.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Enqueue {
        self.job.traceparent = Some(traceparent.into());
        self
    }

    /// The wire body as built. (With the `otel` feature a missing traceparent is filled in when
    /// the job is sent, from the span current then.)
    pub fn as_wire(&self) -> &EnqueueJob {
        &self.job
    }

    /// Fills a missing traceparent from the current span (`otel` feature; otherwise as is).
    fn with_current_trace(self) -> Enqueue {
        #[cfg(feature = "otel")]
        if self.job.traceparent.is_none() {
            let mut this = self;
            this.job.traceparent = crate::trace::current_traceparent();
            return this;
        }
        self
    }
}

impl From<EnqueueJob> for Enqueue {
    fn from(job: EnqueueJob) -> Enqueue {
        Enqueue { job }
    }
}

impl From<Enqueue> for EnqueueJob {
    fn from(e: Enqueue) -> EnqueueJob {
        e.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_keeps_a_prefix_and_drops_a_trailing_slash() {
        let c = Client::new("http://127.0.0.1:7700/").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:7700/");
        let c = Client::new("http://example.test/dray/").unwrap();
        assert_eq!(c.base_url(), "http://example.test/dray");
    }

    #[test]
    fn bad_base_urls_are_invalid() {
        for bad in ["not a url", "ftp://x", "http://x/?a=b"] {
            let err = Client::new(bad).unwrap_err();
            assert!(matches!(&err, Error::Invalid { field, .. } if field == "base_url"), "{bad}: {err}");
        }
        // https needs the `tls` feature (on by default).
        assert_eq!(Client::new("https://x").is_ok(), cfg!(feature = "tls"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn ca_certificates_must_be_pem_certificates() {
        let err = Client::builder("https://x").ca_certificates_pem("not PEM").build().unwrap_err();
        assert!(matches!(&err, Error::Invalid { field, .. } if field == "ca_certificates"), "{err}");
    }

    #[test]
    fn queries_become_query_strings() {
        let mut url = Url::parse("http://x/v1/jobs").unwrap();
        let query = JobQuery {
            queue: Some("a b".into()),
            state: Some(dray_api::State::Dead),
            limit: Some(5),
            ..Default::default()
        };
        query_append(&mut url, &query).unwrap();
        assert_eq!(url.as_str(), "http://x/v1/jobs?limit=5&queue=a+b&state=dead");
        let mut url = Url::parse("http://x/v1/jobs").unwrap();
        query_append(&mut url, &JobQuery::default()).unwrap();
        assert_eq!(url.as_str(), "http://x/v1/jobs");
    }

    #[test]
    fn dot_segments_are_refused() {
        assert!(segment("name", "..").is_err());
        assert!(segment("name", "").is_err());
        assert_eq!(segment("name", "a.b").unwrap(), "a.b");
    }

    #[test]
    fn enqueue_builder_fills_the_wire_body() {
        let e = Enqueue::new("emails", &serde_json::json!({"to": "a@b"}))
            .unwrap()
            .priority(5)
            .run_at("2030-01-01T00:00:00Z")
            .delay(Duration::from_micros(1_500))
            .idempotency_key("k")
            .attempts_max(3)
            .tags(["a", "b"])
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let job = e.as_wire();
        assert_eq!(job.payload.get(), r#"{"to":"a@b"}"#);
        assert_eq!(job.delay_ms, Some(2), "rounded up, never early");
        assert_eq!(job.run_at, None, "delay replaces run_at");
        let json = serde_json::to_value(job).unwrap();
        assert_eq!(json["priority"], 5);
        assert_eq!(json["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(json["idempotency_key"], "k");
    }
}
