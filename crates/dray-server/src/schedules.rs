//! `/v1/schedules`: create, replace, read, pause, resume, trigger and delete schedules. The
//! scope a route needs is in `auth::ROUTES`; the queue a schedule's job goes to is checked like
//! any other queue a request touches (a token limited to some queues sees and manages the
//! schedules of those queues only).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use dray_api::{Enqueued, Problem, Schedule, ScheduleBody, ScheduleList, ScheduleQuery, Triggered};
use dray_core::{JobState, ScheduleName, ScopeKind};
use dray_runtime::Clock;
use dray_store::{ScheduleDelete, SchedulePause, SchedulePut, ScheduleTrigger, Store};

use crate::app::App;
use crate::auth::Principal;
use crate::extract::{Body, Query};
use crate::problem::ApiError;

/// A schedule's name from the path, validated.
#[derive(Debug)]
pub(crate) struct ScheduleNameParam(pub ScheduleName);

impl<S: Send + Sync> FromRequestParts<S> for ScheduleNameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::unprocessable("must be a schedule name", Some("name".into())))?;
        ScheduleName::new(&text)
            .map(ScheduleNameParam)
            .map_err(|e| ApiError::unprocessable(e.message, Some("name".into())))
    }
}

/// Every schedule whose queue the token may read, by name.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    params(ScheduleQuery),
    responses((status = 200, body = ScheduleList))
)]
pub(crate) async fn schedule_list(
    State(app): State<App>,
    principal: Principal,
    Query(query): Query<ScheduleQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    let next = query.next()?;
    let now = app.clock.now();
    let schedules = app.store.schedule_list().await?;
    let schedules = schedules
        .iter()
        .filter(|s| principal.allows(ScopeKind::Read, s.spec.template.queue.as_str()))
        .map(|s| Schedule::of(s, now, next))
        .collect();
    Ok(Json(ScheduleList { schedules }))
}

/// One schedule with its next fire times (`?next=N`, default 5, at most 1000).
#[utoipa::path(
    get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name"), ScheduleQuery),
    responses(
        (status = 200, body = Schedule),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_get(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
    Query(query): Query<ScheduleQuery>,
) -> Result<Json<Schedule>, ApiError> {
    let next = query.next()?;
    let schedule = app.store.schedule_get(&name).await?.ok_or(dray_store::Error::ScheduleNotFound(name))?;
    principal.check(ScopeKind::Read, &schedule.spec.template.queue)?;
    Ok(Json(Schedule::of(&schedule, app.clock.now(), next)))
}

/// Create a schedule named in the body; 409 if the name is taken.
#[utoipa::path(
    post, path = "/v1/schedules", tag = "schedules",
    request_body = ScheduleBody,
    responses(
        (status = 201, body = Schedule),
        (status = 409, description = "The name is taken (`schedule-exists`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid rule, zone or job; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_create(
    State(app): State<App>,
    principal: Principal,
    Body(body): Body<ScheduleBody>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let Some(text) = body.name.as_deref() else {
        return Err(ApiError::unprocessable("is required (or PUT /v1/schedules/{name})", Some("name".into())));
    };
    let name = ScheduleName::new(text)?;
    save(app, principal, name, body, true).await
}

/// Create a schedule or replace it. A replace keeps the schedule's place (its next tick) unless
/// the rule changed, and keeps its last tick.
#[utoipa::path(
    put, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    request_body = ScheduleBody,
    responses(
        (status = 200, description = "Replaced", body = Schedule),
        (status = 201, description = "Created", body = Schedule),
        (status = 422, description = "Invalid rule, zone or job; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_put(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
    Body(body): Body<ScheduleBody>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    if body.name.as_deref().is_some_and(|n| n != name.as_str()) {
        return Err(ApiError::unprocessable("differs from the name in the path", Some("name".into())));
    }
    save(app, principal, name, body, false).await
}

async fn save(
    app: App,
    principal: Principal,
    name: ScheduleName,
    body: ScheduleBody,
    create_only: bool,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let spec = body.to_spec(name.clone())?;
    principal.check(ScopeKind::Admin, &spec.template.queue)?;
    if !create_only && let Some(current) = app.store.schedule_get(&name).await? {
        // Moving a schedule to another queue needs a say over the one it leaves too.
        principal.check(ScopeKind::Admin, &current.spec.template.queue)?;
    }
    let now = app.clock.now();
    let saved = app.store.schedule_put(SchedulePut { now, spec, create_only }).await?;
    let s = &saved.schedule;
    tracing::info!(schedule = %name, created = saved.created, next_at = ?s.next_at.map(dray_api::timestamp_string), "schedule saved");
    let status = if saved.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(Schedule::of(s, now, ScheduleQuery::NEXT_DEFAULT))))
}

/// Delete a schedule; the answer is the schedule as it was. The jobs it enqueued stay.
#[utoipa::path(
    delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Deleted", body = Schedule),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_delete(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
) -> Result<Json<Schedule>, ApiError> {
    let current =
        app.store.schedule_get(&name).await?.ok_or_else(|| dray_store::Error::ScheduleNotFound(name.clone()))?;
    principal.check(ScopeKind::Admin, &current.spec.template.queue)?;
    app.store.schedule_delete(ScheduleDelete { now: app.clock.now(), name: name.clone() }).await?;
    tracing::info!(schedule = %name, "schedule deleted");
    Ok(Json(Schedule::of(&current, app.clock.now(), 0)))
}

/// Stop ticking. Ticks due while paused meet the misfire policy on resume.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, body = Schedule),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_pause(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
) -> Result<Json<Schedule>, ApiError> {
    pause_set(app, principal, name, true).await
}

/// Tick again. Ticks missed while paused meet the misfire policy at the next pass.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, body = Schedule),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_resume(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
) -> Result<Json<Schedule>, ApiError> {
    pause_set(app, principal, name, false).await
}

async fn pause_set(
    app: App,
    principal: Principal,
    name: ScheduleName,
    paused: bool,
) -> Result<Json<Schedule>, ApiError> {
    let current =
        app.store.schedule_get(&name).await?.ok_or_else(|| dray_store::Error::ScheduleNotFound(name.clone()))?;
    principal.check(ScopeKind::Admin, &current.spec.template.queue)?;
    let now = app.clock.now();
    let schedule = app.store.schedule_pause(SchedulePause { now, name: name.clone(), paused }).await?;
    tracing::info!(schedule = %name, paused, "schedule paused or resumed");
    Ok(Json(Schedule::of(&schedule, now, ScheduleQuery::NEXT_DEFAULT)))
}

/// Enqueue the schedule's job now, outside its rule: paused or not, whatever the overlap
/// policy. The job's tick is the time of the trigger.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/trigger", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 201, body = Triggered),
        (status = 404, description = "Unknown schedule", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn schedule_trigger(
    State(app): State<App>,
    principal: Principal,
    ScheduleNameParam(name): ScheduleNameParam,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    let current =
        app.store.schedule_get(&name).await?.ok_or_else(|| dray_store::Error::ScheduleNotFound(name.clone()))?;
    let queue = current.spec.template.queue.clone();
    principal.check(ScopeKind::Admin, &queue)?;
    let random = {
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish()
    };
    let ticked =
        app.store.schedule_trigger(ScheduleTrigger { now: app.clock.now(), name: name.clone(), random }).await?;
    let Some(id) = ticked.fired.first().and_then(|f| f.job) else {
        return Err(ApiError::from(dray_store::Error::ScheduleNotFound(name)));
    };
    let state = app.store.job_get(id).await?.map_or(JobState::Available, |j| j.status.state);
    app.observe.schedules_ticked(std::slice::from_ref(&ticked));
    app.waiters.wake([&queue]);
    tracing::info!(schedule = %name, job_id = id.0, "schedule triggered");
    Ok((
        StatusCode::CREATED,
        Json(Triggered {
            schedule: name.to_string(),
            job: Enqueued { id: id.0, state: state.into(), duplicate: false },
        }),
    ))
}
