//! The `/v1` routes, registered together with their OpenAPI description (`utoipa-axum`'s
//! `routes!`), so the document served at `/v1/openapi.json` cannot drift from the router.
//!
//! Each handler parses (the extractors), converts with `dray-api`, calls the store with `now`
//! from the server's clock, and converts back. The only things handlers add are long-polls
//! (waiting for a job to lease, or for a job to finish) and waking the long-poll waiters when a
//! change makes jobs leasable. No job rule lives here.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::routing::get;
use dray_api::{
    AckBatch, AckBatchResponse, AckResult, Acked, BreakerAction, BreakerActionKind, CancelResponse, CompleteRequest,
    DeadAction, DeadActionResponse, EnqueueBatch, EnqueueJob, Enqueued, EnqueuedBatch, FailRequest, Health,
    HeartbeatRequest, HeartbeatResponse, Job, JobGetQuery, JobPage, JobQuery, LeaseRequest, LeaseResponse, Problem,
    PromoteResponse, Queue, QueueConfigure, QueueDeletedResponse, QueueList, State as JobStateBody, StepRequest,
    StepResponse,
};
use dray_core::{JobId, JobState, QueueName, ScopeKind};
use dray_runtime::Clock;
use dray_store::{
    DeadDiscard, DeadRedrive, Error, JobAck, JobCancel, JobInsert, JobPromote, QueueConfig, QueueDelete, Store,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;
use crate::auth::Principal;
use crate::extract::{Body, JobIdParam, Query, QueueNameParam, TraceParent};
use crate::problem::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dray",
        description = "A durable job server. Errors are `application/problem+json` (RFC 9457) with a stable \
                       `type` (`urn:dray:problem:<kind>`) and the `field` at fault. Timestamps are RFC 3339 \
                       in UTC; durations are integers named `*_ms`. See docs/api.md for the guide.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "Enqueue, inspect and cancel jobs."),
        (name = "workers", description = "Lease jobs (with long-poll), heartbeat, complete and fail."),
        (name = "dead letters", description = "The dead-letter queue: list, redrive, discard."),
        (name = "queues", description = "Queue configuration and counts."),
        (name = "health", description = "Liveness and readiness."),
        (name = "tokens", description = "API tokens and their scopes (admin only)."),
        (name = "schedules", description = "Cron and interval schedules that enqueue jobs, in any IANA time zone."),
        (name = "locks", description = "Locks and semaphores with fencing tokens (see docs/locks.md)."),
    )
)]
struct ApiDoc;

/// Every documented route, described and registered together.
fn api() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(job_enqueue))
        .routes(routes!(job_enqueue_batch))
        .routes(routes!(job_list))
        .routes(routes!(job_get))
        .routes(routes!(job_cancel))
        .routes(routes!(job_promote))
        .routes(routes!(lease))
        .routes(routes!(heartbeat))
        .routes(routes!(job_step))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(ack))
        .routes(routes!(crate::workers::workers_list))
        .routes(routes!(dead_list))
        .routes(routes!(dead_redrive))
        .routes(routes!(dead_discard))
        .routes(routes!(queue_list))
        .routes(routes!(queue_get, queue_put, queue_delete))
        .routes(routes!(queue_pause))
        .routes(routes!(queue_resume))
        .routes(routes!(queue_breaker))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(crate::tokens::token_create, crate::tokens::token_list))
        .routes(routes!(crate::tokens::token_revoke))
        .routes(routes!(crate::schedules::schedule_list, crate::schedules::schedule_create))
        .routes(routes!(
            crate::schedules::schedule_get,
            crate::schedules::schedule_put,
            crate::schedules::schedule_delete
        ))
        .routes(routes!(crate::schedules::schedule_pause))
        .routes(routes!(crate::schedules::schedule_resume))
        .routes(routes!(crate::schedules::schedule_trigger))
        .routes(routes!(crate::locks::lock_list))
        .routes(routes!(crate::locks::lock_get, crate::locks::lock_force_release))
        .routes(routes!(crate::locks::lock_acquire))
        .routes(routes!(crate::locks::lock_renew))
        .routes(routes!(crate::locks::lock_release))
}

/// Routes served outside the OpenAPI document (its own route, metrics, the dashboard). With the
/// document's paths they make up every route; `auth::ROUTES` must name each.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const UNDOCUMENTED_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/dashboard/{file}"),
    ("GET", "/dashboard/events"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
];

/// The OpenAPI 3.1 document of the API, as served at `GET /v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The whole router: the documented routes, the document itself, and problem+json answers for
/// unknown routes and methods.
pub(crate) fn router(app: App) -> axum::Router {
    let body_bytes_max = app.body_bytes_max();
    let (router, openapi) = api().split_for_parts();
    let document = Bytes::from(openapi.to_pretty_json().expect("the OpenAPI document serializes"));
    let router = crate::dashboard::routes(router, &app);
    let router = crate::login::routes(router);
    let openapi_json =
        get(move || async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], document) });
    let router = router
        .route("/v1/openapi.json", openapi_json)
        .fallback(|uri: Uri| async move { ApiError::route_not_found(uri.path()) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::method_not_allowed(method.as_str(), uri.path())
        });
    // Last before the outer layers: the request metrics' layer covers only what the router holds,
    // and must see every route and the fallbacks (counted as route "unmatched").
    let guard = app.guard.clone();
    let router = crate::observe::routes(router, &app);
    // After every route is in: the route layer wraps exactly the routes present.
    let router = router.route_layer(axum::middleware::from_fn_with_state(app.clone(), crate::auth::authorize));
    router
        .layer(DefaultBodyLimit::max(body_bytes_max))
        // Outside the body limit: a refused request is answered before its body is read.
        .layer(axum::middleware::from_fn_with_state(guard, crate::guard::layer))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

fn queue_names(jobs: &[dray_core::NewJob]) -> Vec<QueueName> {
    jobs.iter().map(|j| j.queue.clone()).collect()
}

/// Wakes long-polls on the queues that just got leasable jobs.
fn wake_inserted(app: &App, queues: &[QueueName], inserted: &[dray_store::Inserted]) {
    let ready =
        queues.iter().zip(inserted).filter(|(_, i)| i.state == JobState::Available && !i.duplicate).map(|(q, _)| q);
    app.waiters.wake(ready);
}

/// Enqueue one job.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = EnqueueJob,
    params(("traceparent" = Option<String>, Header, description = "W3C trace context; used when the body has none")),
    responses(
        (status = 201, description = "Accepted: the job is on stable storage", body = Enqueued),
        (status = 200, description = "The idempotency key matched an earlier job with the same payload; `id` is that job's", body = Enqueued),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key belongs to a job with another payload", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the server's limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid job; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Over capacity or storage unavailable; retry (same idempotency key)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_enqueue(
    State(app): State<App>,
    principal: Principal,
    TraceParent(traceparent): TraceParent,
    Body(body): Body<EnqueueJob>,
) -> Result<(StatusCode, Json<Enqueued>), ApiError> {
    let mut job = body.to_core()?;
    principal.check(ScopeKind::Enqueue, &job.queue)?;
    principal.check_dependencies(&*app.store, std::slice::from_ref(&job)).await?;
    if job.traceparent.is_none() {
        job.traceparent = traceparent.map(Into::into);
    }
    let queues = queue_names(std::slice::from_ref(&job));
    let p = JobInsert { now: app.clock.now(), jobs: vec![job] };
    let inserted = app.store.job_insert(p).await.map_err(|e| ApiError::from(e).unbatched())?;
    wake_inserted(&app, &queues, &inserted);
    app.observe.enqueued(&queues, &inserted);
    let first = inserted.into_iter().next().ok_or_else(|| no_result("job_insert"))?;
    let status = if first.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(first.into())))
}

/// Enqueue an atomic batch: every job is enqueued, or none.
#[utoipa::path(
    post, path = "/v1/jobs/batch", tag = "jobs",
    request_body = EnqueueBatch,
    params(("traceparent" = Option<String>, Header, description = "W3C trace context; used for each job that has none")),
    responses(
        (status = 201, description = "Accepted: every job is on stable storage (some may be duplicates)", body = EnqueuedBatch),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An idempotency key belongs to a job with another payload; nothing was enqueued", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the server's limit", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid job (`field` is like `jobs[3].payload`) or too many jobs; nothing was enqueued", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Over capacity or storage unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_enqueue_batch(
    State(app): State<App>,
    principal: Principal,
    TraceParent(traceparent): TraceParent,
    Body(body): Body<EnqueueBatch>,
) -> Result<(StatusCode, Json<EnqueuedBatch>), ApiError> {
    let mut jobs = body.to_core()?;
    principal.check_all(ScopeKind::Enqueue, jobs.iter().map(|j| &j.queue))?;
    principal.check_dependencies(&*app.store, &jobs).await?;
    if let Some(tp) = &traceparent {
        for job in jobs.iter_mut().filter(|j| j.traceparent.is_none()) {
            job.traceparent = Some(tp.as_str().into());
        }
    }
    let queues = queue_names(&jobs);
    let inserted = app.store.job_insert(JobInsert { now: app.clock.now(), jobs }).await?;
    wake_inserted(&app, &queues, &inserted);
    app.observe.enqueued(&queues, &inserted);
    Ok((StatusCode::CREATED, Json(EnqueuedBatch { jobs: inserted.into_iter().map(Into::into).collect() })))
}

/// List jobs matching a filter, in enqueue order, one page at a time.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(JobQuery),
    responses(
        (status = 200, body = JobPage),
        (status = 422, description = "Invalid filter; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_list(
    State(app): State<App>,
    principal: Principal,
    Query(query): Query<JobQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let list = query.to_list(None)?;
    check_list(&principal, &list.filter)?;
    let page = app.store.job_list(list).await?;
    Ok(Json((&page).into()))
}

/// A job with its whole history.
///
/// With `wait_ms`, waits (long-poll) for the job to finish: answers when it is completed, dead or
/// cancelled, or when the wait ends, with the job as it is then (`state` says which). The node
/// answers at once when it learns the job finished, and reads the job again every 250 ms in
/// PostgreSQL mode (every second embedded) for finishes it does not hear of (another node's).
#[utoipa::path(
    get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = u64, Path, description = "Job id"), JobGetQuery),
    responses(
        (status = 200, description = "The job; with `wait_ms`, once it finished or when the wait ended (read `state`)", body = Job),
        (status = 404, description = "No such job (at once, also with `wait_ms`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid id or query; `field` names it (`wait_ms` over 60000) and the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_get(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(id): JobIdParam,
    Query(query): Query<JobGetQuery>,
) -> Result<Json<Job>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms()?);
    let read = || async {
        let job = app.store.job_get(id).await?.ok_or(ApiError::job_not_found(id.0))?;
        principal.check(ScopeKind::Read, &job.queue)?;
        Ok::<_, ApiError>(job)
    };
    let job = if wait.is_zero() || app.job_waiters.is_closing() {
        read().await?
    } else {
        // Long-poll. Armed before each read, so a finish between the read and the wait still
        // wakes this request (see `job_waiters`); read again on a timer for what this node does
        // not hear of. Nothing is held between reads. A missing job is 404 at the first read.
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let waiting = app.job_waiters.wait(id);
        let recheck = crate::job_waiters::recheck(&app.store);
        loop {
            let armed = waiting.arm();
            let job = read().await?;
            if job.state().is_finished() || app.job_waiters.is_closing() {
                break job;
            }
            tokio::select! {
                () = armed => {}
                () = tokio::time::sleep(recheck) => {}
                // The wait is over: the job as it is now.
                () = &mut deadline => break read().await?,
            }
        }
    };
    let mut view: Job = (&job).into();
    if job.state() == dray_core::JobState::Available {
        view.waiting = app.store.job_waiting(id, app.clock.now()).await?.as_ref().map(Into::into);
    }
    Ok(Json(view))
}

/// Cancel a job: a waiting job at once; a running job's worker is asked to stop (its next
/// heartbeat answers `cancel_requested`).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses(
        (status = 200, body = CancelResponse),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is completed or dead", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_cancel(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
) -> Result<Json<CancelResponse>, ApiError> {
    principal.check_job(&*app.store, ScopeKind::Admin, job).await?;
    let state = app.store.job_cancel(JobCancel { now: app.clock.now(), job }).await?;
    app.observe.cancelled(job, state);
    Ok(Json(state.into()))
}

/// Run a scheduled or retrying job now, without waiting for its time (its attempts are kept).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/promote", tag = "jobs",
    params(("id" = u64, Path, description = "Job id")),
    responses(
        (status = 200, body = PromoteResponse),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not scheduled or retrying (`not-allowed`, `already-finished`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_promote(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
) -> Result<Json<PromoteResponse>, ApiError> {
    principal.check_job(&*app.store, ScopeKind::Admin, job).await?;
    let state = app.store.job_promote(JobPromote { now: app.clock.now(), job }).await?;
    if let Some(found) = app.store.job_get(job).await? {
        app.waiters.wake([&found.queue]);
    }
    Ok(Json(PromoteResponse { state: state.into() }))
}

/// Lease up to `count` jobs from `queues`. With `wait_ms`, waits (long-poll, up to the server's
/// limit) for a job when none is available; returns an empty list when none came.
#[utoipa::path(
    post, path = "/v1/lease", tag = "workers",
    request_body = LeaseRequest,
    responses(
        (status = 200, description = "The jobs leased; empty when none came within the wait", body = LeaseResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn lease(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let mut p = body.to_store(app.clock.now())?;
    principal.check_all(ScopeKind::Work, &p.queues)?;
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(0).min(app.lease_wait_ms_max));
    let _polling = app.workers.poll(&p.worker, &p.queues);
    let leased = |jobs: &[dray_store::LeasedJob], now| {
        app.observe.leased(now, &p.worker, jobs);
        app.workers.leased(&p.worker, jobs);
    };
    if wait.is_zero() {
        let jobs = app.store.job_lease(p.clone()).await?;
        leased(&jobs, p.now);
        return Ok(Json(LeaseResponse::from_store(&jobs, p.now)));
    }
    // Long-poll. Interest is armed before each attempt, so an enqueue between a failed attempt
    // and the wait still wakes this request (see `waiters`).
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let interest = app.waiters.interest(&p.queues);
    loop {
        let armed = interest.arm();
        p.now = app.clock.now();
        let jobs = app.store.job_lease(p.clone()).await?;
        leased(&jobs, p.now);
        if !jobs.is_empty() || app.waiters.is_closing() {
            return Ok(Json(LeaseResponse::from_store(&jobs, p.now)));
        }
        // A limited queue's jobs may become leasable without any wake-up (see `limited`).
        let recheck = if app.limited.any(&app.store, &p.queues).await { crate::limited::RECHECK } else { wait };
        tokio::select! {
            () = armed => {}
            () = tokio::time::sleep(recheck) => {}
            () = &mut deadline => return Ok(Json(LeaseResponse { jobs: Vec::new() })),
        }
    }
}

/// Wakes the long-polls of the limited queues among `queues`: a job of theirs stopped running,
/// so a permit may be free.
fn wake_limited<'q>(app: &App, queues: impl IntoIterator<Item = &'q QueueName>) {
    let limited: Vec<&QueueName> = queues.into_iter().filter(|q| app.limited.known(q)).collect();
    if !limited.is_empty() {
        app.waiters.wake(limited);
    }
}

/// Extend a lease; save progress and a checkpoint.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/heartbeat", tag = "workers",
    params(("id" = u64, Path, description = "Job id")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, body = HeartbeatResponse),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stale or expired lease (`urn:dray:problem:stale-lease`, `lease-expired`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn heartbeat(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
    Body(body): Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let p = body.to_store(app.clock.now(), job)?;
    principal.check_job(&*app.store, ScopeKind::Work, job).await?;
    let (now, lease) = (p.now, p.lease);
    let extended = app.store.lease_extend(p).await?;
    app.workers.extended(job, lease, extended.deadline);
    Ok(Json(HeartbeatResponse::from_store(extended, now)))
}

/// Record a step of a leased job's attempt: a named, memoized result. The first record of a name
/// wins: recording it again (a retried request, a later attempt) changes nothing and answers
/// `recorded: false` with the result recorded first. Every later attempt's lease carries the
/// job's steps.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/steps", tag = "workers",
    params(("id" = u64, Path, description = "Job id")),
    request_body = StepRequest,
    responses(
        (status = 200, description = "The step as recorded; `recorded: false` when its name was recorded before", body = StepResponse),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stale or expired lease (`urn:dray:problem:stale-lease`, `lease-expired`) or a finished job (`already-finished`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid step; `field` names it (`name`, `result`) and the detail the limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable (outcome unknown: retry, the first record wins) or over capacity", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn job_step(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
    Body(body): Body<StepRequest>,
) -> Result<Json<StepResponse>, ApiError> {
    let p = body.to_store(app.clock.now(), job)?;
    principal.check_job(&*app.store, ScopeKind::Work, job).await?;
    let recorded = app.store.job_step(p).await?;
    Ok(Json((&recorded).into()))
}

/// Runs one ack through the batch call and answers with its own result.
async fn ack_one(app: &App, ack: dray_store::Ack) -> Result<Json<Acked>, ApiError> {
    let (now, job, lease) = (app.clock.now(), ack.job, ack.lease);
    // The store names fields as in a batch (`acks[0].result`); this route has one ack, unnamed.
    let results =
        app.store.job_ack(JobAck { now, acks: vec![ack] }).await.map_err(|e| ApiError::from(e).unbatched())?;
    let result = results.into_iter().next().ok_or_else(|| no_result("job_ack"))?;
    app.observe.acked(now, job, lease, &result);
    let acked = result?;
    if acked.state == JobState::Available {
        app.waiters.wake_all();
    }
    app.waiters.wake(&acked.released);
    wake_limited(app, [&acked.queue]);
    Ok(Json(acked.into()))
}

/// Complete a leased job. Final: it is never delivered again.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/complete", tag = "workers",
    params(("id" = u64, Path, description = "Job id")),
    request_body = CompleteRequest,
    responses(
        (status = 200, body = Acked),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stale or expired lease; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn complete(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
    Body(body): Body<CompleteRequest>,
) -> Result<Json<Acked>, ApiError> {
    let ack = body.to_store(job)?;
    principal.check_job(&*app.store, ScopeKind::Work, job).await?;
    ack_one(&app, ack).await
}

/// Fail a leased job: retried with backoff, or dead when it was the last attempt or not retryable.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/fail", tag = "workers",
    params(("id" = u64, Path, description = "Job id")),
    request_body = FailRequest,
    responses(
        (status = 200, body = Acked),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Stale or expired lease; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn fail(
    State(app): State<App>,
    principal: Principal,
    JobIdParam(job): JobIdParam,
    Body(body): Body<FailRequest>,
) -> Result<Json<Acked>, ApiError> {
    let ack = body.to_store(job)?;
    principal.check_job(&*app.store, ScopeKind::Work, job).await?;
    ack_one(&app, ack).await
}

/// Complete and fail many leased jobs in one durable write; a result per ack.
#[utoipa::path(
    post, path = "/v1/ack", tag = "workers",
    request_body = AckBatch,
    responses(
        (status = 200, description = "A result per ack, in order: `acked`, or `problem` (a stale lease, say)", body = AckBatchResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request (`field` like `acks[3].lease_id`); nothing was applied", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable; outcome unknown", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn ack(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<AckBatch>,
) -> Result<Json<AckBatchResponse>, ApiError> {
    let p = body.to_store(app.clock.now())?;
    for a in &p.acks {
        principal.check_job(&*app.store, ScopeKind::Work, a.job).await?;
    }
    let now = p.now;
    let acks: Vec<(JobId, dray_core::LeaseId)> = p.acks.iter().map(|a| (a.job, a.lease)).collect();
    let results = app.store.job_ack(p).await?;
    for ((job, lease), result) in acks.iter().zip(&results) {
        app.observe.acked(now, *job, *lease, result);
    }
    let jobs = acks.iter().map(|(job, _)| job.0);
    if results.iter().any(|r| matches!(r, Ok(a) if a.state == JobState::Available)) {
        app.waiters.wake_all();
    }
    app.waiters.wake(results.iter().filter_map(|r| r.as_ref().ok()).flat_map(|a| &a.released));
    wake_limited(&app, results.iter().filter_map(|r| r.as_ref().ok()).map(|a| &a.queue));
    let results = jobs
        .into_iter()
        .zip(results)
        .map(|(job, result)| match result {
            Ok(acked) => AckResult { job, acked: Some(acked.into()), problem: None },
            Err(e) => AckResult { job, acked: None, problem: Some(ApiError::from(e).problem()) },
        })
        .collect();
    Ok(Json(AckBatchResponse { results }))
}

/// List dead jobs (the `state` filter is always `dead`).
#[utoipa::path(
    get, path = "/v1/dead", tag = "dead letters",
    params(JobQuery),
    responses(
        (status = 200, body = JobPage),
        (status = 422, description = "Invalid filter; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_list(
    State(app): State<App>,
    principal: Principal,
    Query(query): Query<JobQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let list = query.to_list(Some(JobStateBody::Dead))?;
    check_list(&principal, &list.filter)?;
    let page = app.store.job_list(list).await?;
    Ok(Json((&page).into()))
}

/// Redrive dead jobs (by `ids`, or by filter up to `limit`): each becomes available with a fresh
/// budget of attempts. `dry_run` reports without changing anything.
#[utoipa::path(
    post, path = "/v1/dead/redrive", tag = "dead letters",
    request_body = DeadAction,
    responses(
        (status = 200, body = DeadActionResponse),
        (status = 404, description = "A listed job does not exist; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A listed job is not dead; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_redrive(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<DeadAction>,
) -> Result<Json<DeadActionResponse>, ApiError> {
    let selection = body.to_selection()?;
    check_selection(&app, &principal, &selection).await?;
    let p = DeadRedrive { now: app.clock.now(), selection, dry_run: body.dry_run };
    let redriven = app.store.dead_redrive(p).await?;
    if !body.dry_run && !redriven.ids.is_empty() {
        app.waiters.wake_all();
        app.observe.redriven(&redriven.ids);
    }
    Ok(Json(DeadActionResponse::redriven(&redriven, body.dry_run)))
}

/// Delete dead jobs for good (by `ids`, or by filter up to `limit`). `dry_run` reports only.
#[utoipa::path(
    post, path = "/v1/dead/discard", tag = "dead letters",
    request_body = DeadAction,
    responses(
        (status = 200, body = DeadActionResponse),
        (status = 404, description = "A listed job does not exist; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A listed job is not dead; nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn dead_discard(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<DeadAction>,
) -> Result<Json<DeadActionResponse>, ApiError> {
    let selection = body.to_selection()?;
    check_selection(&app, &principal, &selection).await?;
    let p = DeadDiscard { now: app.clock.now(), selection, dry_run: body.dry_run };
    let ids = app.store.dead_discard(p).await?;
    if !body.dry_run {
        app.observe.discarded(&ids);
    }
    Ok(Json(DeadActionResponse::new(&ids, body.dry_run)))
}

/// Every known queue with its configuration and counts.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", responses((status = 200, body = QueueList)))]
async fn queue_list(State(app): State<App>, principal: Principal) -> Result<Json<QueueList>, ApiError> {
    let mut queues = app.store.queue_list().await?;
    // A token limited to some queues sees those only.
    queues.retain(|q| principal.allows(ScopeKind::Read, q.config.name.as_str()));
    Ok(Json(QueueList::of(&queues, app.clock.now())))
}

/// One queue's configuration and counts.
#[utoipa::path(
    get, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = Queue),
        (status = 404, description = "Unknown queue", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid queue name", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_get(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
) -> Result<Json<Queue>, ApiError> {
    principal.check(ScopeKind::Read, &name)?;
    queue_stats(app, name).await
}

async fn queue_stats(app: App, name: QueueName) -> Result<Json<Queue>, ApiError> {
    let stats = app.store.queue_stats(&name).await?;
    Ok(Json(Queue::of(&stats, app.clock.now())))
}

/// Create a queue or change the fields given; the others keep their value (or the default).
#[utoipa::path(
    put, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = QueueConfigure,
    responses(
        (status = 200, body = Queue),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid configuration; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_put(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
    Body(body): Body<QueueConfigure>,
) -> Result<Json<Queue>, ApiError> {
    principal.check(ScopeKind::Admin, &name)?;
    // A new `attempts_max` alone keeps the current backoff, and the other way round.
    let current = match app.store.queue_stats(&name).await {
        Ok(stats) => stats.config.retry,
        Err(Error::QueueNotFound(_)) => QueueConfig::new(name.clone()).retry,
        Err(e) => return Err(e.into()),
    };
    let schema = match &body.payload_schema {
        None => None,
        Some(None) => Some(None),
        Some(Some(schema)) => Some(Some(crate::schema::SchemaCheck::accept(schema)?)),
    };
    let config = app.store.queue_configure(body.to_store(app.clock.now(), name.clone(), &current, schema)).await?;
    app.limited.learned(&config);
    // Resumed, or limits raised or lifted: waiting workers may lease now.
    app.waiters.wake([&name]);
    queue_stats(app, name).await
}

/// Delete a queue that holds no work. Its completed and cancelled jobs go with it (and their
/// idempotency keys); a queue with waiting, running, retrying or dead jobs is refused (409).
#[utoipa::path(
    delete, path = "/v1/queues/{name}", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = QueueDeletedResponse),
        (status = 404, description = "Unknown queue", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The queue holds jobs (`queue-not-empty`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_delete(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
) -> Result<Json<QueueDeletedResponse>, ApiError> {
    principal.check(ScopeKind::Admin, &name)?;
    let deleted = app.store.queue_delete(QueueDelete { now: app.clock.now(), queue: name.clone() }).await?;
    Ok(Json(QueueDeletedResponse { name: name.to_string(), jobs_deleted: deleted.jobs_deleted }))
}

/// Pauses or resumes a queue that exists.
async fn queue_pause_set(app: App, name: QueueName, paused: bool) -> Result<Json<Queue>, ApiError> {
    app.store.queue_stats(&name).await?;
    let mut p = dray_store::QueueConfigure::new(app.clock.now(), name.clone());
    p.paused = Some(paused);
    app.store.queue_configure(p).await?;
    if !paused {
        app.waiters.wake([&name]);
    }
    queue_stats(app, name).await
}

/// Stop leasing from a queue; it still accepts jobs.
#[utoipa::path(
    post, path = "/v1/queues/{name}/pause", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = Queue),
        (status = 404, description = "Unknown queue (create it with PUT)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_pause(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
) -> Result<Json<Queue>, ApiError> {
    principal.check(ScopeKind::Admin, &name)?;
    queue_pause_set(app, name, true).await
}

/// Lease from a paused queue again; waiting workers are woken at once.
#[utoipa::path(
    post, path = "/v1/queues/{name}/resume", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    responses(
        (status = 200, body = Queue),
        (status = 404, description = "Unknown queue", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_resume(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
) -> Result<Json<Queue>, ApiError> {
    principal.check(ScopeKind::Admin, &name)?;
    queue_pause_set(app, name, false).await
}

/// An operator's order to the queue's circuit breaker: `open` (it then stays open, leasing
/// nothing, until closed by hand) or `close` (leases flow again; its window starts empty).
#[utoipa::path(
    post, path = "/v1/queues/{name}/breaker", tag = "queues",
    params(("name" = String, Path, description = "Queue name")),
    request_body = BreakerAction,
    responses(
        (status = 200, body = Queue),
        (status = 404, description = "Unknown queue", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The queue has no breaker (`field` is `breaker`)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn queue_breaker(
    State(app): State<App>,
    principal: Principal,
    QueueNameParam(name): QueueNameParam,
    Body(body): Body<BreakerAction>,
) -> Result<Json<Queue>, ApiError> {
    principal.check(ScopeKind::Admin, &name)?;
    let open = body.action == BreakerActionKind::Open;
    let p = dray_store::BreakerForce { now: app.clock.now(), queue: name.clone(), open };
    app.store.breaker_force(p).await?;
    if !open {
        app.waiters.wake([&name]);
    }
    queue_stats(app, name).await
}

/// The process is up and its store has not stopped for good.
///
/// A store that stopped accepting writes until restarted (a failed fsync, corrupt data) answers
/// 503, so an orchestrator restarts it. One refusing writes only until a resource comes back
/// stays 200 here (see `/readyz`).
#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The store stopped accepting writes until restarted", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn healthz(State(app): State<App>) -> Result<Json<Health>, ApiError> {
    if let dray_store_embedded::Health::Failed(why) = app.store.health() {
        tracing::error!(reason = %why, "not live: the store stopped until restarted");
        // The reason names files: it goes to the log, not to an unauthenticated probe.
        return Err(ApiError::not_live("the store stopped accepting writes until restarted (see the server log)"));
    }
    Ok(Json(Health { status: "ok".into() }))
}

/// The store is open and accepting writes, and the server is not shutting down.
///
/// A store out of file descriptors or disk space answers 503 here and returns to 200 by itself
/// once they are back.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Shutting down, or the store refuses writes (for now, or until restarted)", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn readyz(State(app): State<App>) -> Result<Json<Health>, ApiError> {
    if app.waiters.is_closing() {
        return Err(ApiError::not_ready("the server is shutting down"));
    }
    // Out of descriptors or disk space (it comes back by itself), or stopped for good. The
    // reason names files: it goes to the log, not to an unauthenticated probe.
    match app.store.health() {
        dray_store_embedded::Health::Ok => {}
        dray_store_embedded::Health::Degraded(why) => {
            tracing::warn!(reason = %why, "not ready");
            return Err(ApiError::not_ready(
                "the store ran out of file descriptors or disk space; it refuses writes until they are back",
            ));
        }
        dray_store_embedded::Health::Failed(why) => {
            tracing::warn!(reason = %why, "not ready");
            return Err(ApiError::not_ready("the store stopped accepting writes until restarted"));
        }
    }
    // A read goes through the same gate as every write (in PostgreSQL mode: is the database
    // reachable?).
    if let Err(e) = app.store.job_get(JobId(0)).await {
        tracing::warn!(error = %e, "not ready");
        return Err(ApiError::not_ready("the store is not accepting writes"));
    }
    Ok(Json(Health { status: "ready".into() }))
}

/// A store call that returned fewer results than it was given: a bug, reported as unavailable
/// (outcome unknown) rather than a panic.
fn no_result(call: &str) -> ApiError {
    ApiError::from(Error::Unavailable { context: format!("{call} returned no result"), source: None })
}

/// A list's filter for a principal: a queue it may read, or any when it may read every queue.
fn check_list(principal: &Principal, filter: &dray_store::JobFilter) -> Result<(), ApiError> {
    match &filter.queue {
        Some(queue) => principal.check(ScopeKind::Read, queue),
        None => principal.check_unfiltered(ScopeKind::Read),
    }
}

/// A dead-letter action for a principal: by filter, the filter's queue; by ids, each job's queue
/// (read once each, only for a token limited to some queues).
async fn check_selection(
    app: &App,
    principal: &Principal,
    selection: &dray_store::DeadSelection,
) -> Result<(), ApiError> {
    if principal.allows_all(ScopeKind::Admin) {
        return Ok(());
    }
    match selection {
        dray_store::DeadSelection::Ids(ids) => {
            for id in ids {
                principal.check_job(&*app.store, ScopeKind::Admin, *id).await?;
            }
            Ok(())
        }
        dray_store::DeadSelection::Filter { filter, .. } => match &filter.queue {
            Some(queue) => principal.check(ScopeKind::Admin, queue),
            None => principal.check_unfiltered(ScopeKind::Admin),
        },
    }
}
