//! `/v1/locks`: acquire (with long-poll), renew and release locks with fencing tokens; list and
//! show them; an operator's force-release. The rules are `dray_core::lock`'s, applied by the
//! store; handlers convert, call the store, and wait.
//!
//! Scopes (`auth::ROUTES`): `work` to acquire, renew and release, `read` to list and show,
//! `admin` to force-release. A token whose scope is limited to queue-name patterns may use the
//! locks whose names match them (a tenant's prefix covers its queues and its locks alike).
//!
//! Waiting: an acquire with `wait_ms` retries until the lock is granted or the wait ends. A
//! release or force-release on this node wakes the waiters of that lock at once; otherwise a
//! waiter retries when the earliest hold's TTL passes, and at least every
//! [`LOCK_POLL_MS_MAX`] (releases on other nodes in PostgreSQL mode, which send no
//! notification: polling keeps the database the one place locks live). Waiters are not served
//! in order: whoever retries first after a release wins.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use dray_api::{
    LockAcquireRequest, LockForceQuery, LockForceReleased, LockGrant, LockHolder, LockInfo, LockList, LockQuery,
    LockReleaseRequest, LockReleased, LockRenewRequest, Problem,
};
use dray_core::lock::Refusal;
use dray_core::{FencingToken, LockName, LockOwner, ScopeKind};
use dray_runtime::Clock;
use dray_store::{Error, LockAcquire, LockForceRelease, LockRelease, LockRenew, LockStore};

use crate::app::App;
use crate::auth::Principal;
use crate::extract::{Body, Query};
use crate::problem::ApiError;

/// A waiting acquire retries at least this often (releases on other nodes wake nobody here).
pub(crate) const LOCK_POLL_MS_MAX: u64 = 1_000;
/// ... starting this soon after a refusal, doubling up to [`LOCK_POLL_MS_MAX`].
const LOCK_POLL_MS_MIN: u64 = 25;

/// This node's waiting acquires, by lock name: one `Notify` per name while anyone waits.
pub(crate) type LockWaiters = crate::notify_map::NotifyMap<LockName>;

/// A lock's name from the path, validated.
#[derive(Debug)]
pub(crate) struct LockNameParam(pub LockName);

impl<S: Send + Sync> FromRequestParts<S> for LockNameParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::unprocessable("must be a lock name", Some("name".into())))?;
        LockName::new(&text).map(LockNameParam).map_err(|e| ApiError::unprocessable(e.message, Some("name".into())))
    }
}

/// 403 unless the token's `kind` scope covers the lock's name.
fn check(principal: &Principal, kind: ScopeKind, name: &LockName) -> Result<(), ApiError> {
    if principal.allows(kind, name.as_str()) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "the token has no {kind} scope for lock {name:?}; this needs scope {kind}:{name} or a pattern matching it",
        kind = kind.as_str(),
        name = name.as_str(),
    )))
}

/// Acquire a lock (or one permit of a semaphore). 200 with the hold's fencing token; 409
/// `lock-held` naming the holders when the lock is still held as the wait ends.
#[utoipa::path(
    post, path = "/v1/locks/{name}/acquire", tag = "locks",
    params(("name" = String, Path, description = "Lock name")),
    request_body = LockAcquireRequest,
    responses(
        (status = 200, description = "Granted (or the owner's hold given back)", body = LockGrant),
        (status = 409, description = "Held by others when the wait ended (`lock-held`), or held with other permits (`lock-permits-mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it and the limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable: the outcome is unknown, acquire again with the same owner", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn lock_acquire(
    State(app): State<App>,
    principal: Principal,
    LockNameParam(name): LockNameParam,
    Body(body): Body<LockAcquireRequest>,
) -> Result<Json<LockGrant>, ApiError> {
    check(&principal, ScopeKind::Work, &name)?;
    let owner = body.owner()?;
    let permits = body.permits()?;
    let wait_ms = body.wait_ms()?;
    let mut p = LockAcquire { now: app.clock.now(), name: name.clone(), owner, ttl_ms: body.ttl_ms, permits };
    p.validate()?;
    if wait_ms == 0 {
        return Ok(Json(LockGrant::of(&app.store.lock_acquire(p).await?)));
    }
    let deadline = tokio::time::sleep(Duration::from_millis(wait_ms));
    tokio::pin!(deadline);
    let waiting = app.lock_waiters.wait(&name);
    let mut poll_ms = LOCK_POLL_MS_MIN;
    loop {
        // Armed before the attempt, so a release between a refusal and the wait still wakes it.
        let released = waiting.notified();
        p.now = app.clock.now();
        let held = match app.store.lock_acquire(p.clone()).await {
            Ok(granted) => return Ok(Json(LockGrant::of(&granted))),
            Err(Error::Lock { refusal: Refusal::Held { holders, .. }, .. }) if !app.waiters.is_closing() => holders,
            Err(e) => return Err(e.into()),
        };
        // Retry when the earliest hold expires (on the store's clock, measured as a duration
        // from the store's own reading), or sooner to see releases on other nodes.
        let expires_ms = held.iter().map(|h| h.deadline.ms_since(p.now)).min().unwrap_or(0);
        let retry = Duration::from_millis(poll_ms.min(expires_ms.saturating_add(1)).max(1));
        poll_ms = (poll_ms * 2).min(LOCK_POLL_MS_MAX);
        tokio::select! {
            () = released => poll_ms = LOCK_POLL_MS_MIN,
            () = tokio::time::sleep(retry) => {}
            () = &mut deadline => {
                // One last attempt: the answer names the holders as they are now.
                p.now = app.clock.now();
                return Ok(Json(LockGrant::of(&app.store.lock_acquire(p).await?)));
            }
        }
    }
}

/// Extend a hold by `ttl_ms` from now (default: its last TTL). 409 `lock-lost` when the token is
/// not the owner's live hold (expired, released, someone else's).
#[utoipa::path(
    post, path = "/v1/locks/{name}/renew", tag = "locks",
    params(("name" = String, Path, description = "Lock name")),
    request_body = LockRenewRequest,
    responses(
        (status = 200, body = LockGrant),
        (status = 409, description = "The hold is lost (`lock-lost`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it and the limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn lock_renew(
    State(app): State<App>,
    principal: Principal,
    LockNameParam(name): LockNameParam,
    Body(body): Body<LockRenewRequest>,
) -> Result<Json<LockGrant>, ApiError> {
    check(&principal, ScopeKind::Work, &name)?;
    let p = LockRenew {
        now: app.clock.now(),
        name,
        owner: LockOwner::new(&body.owner)?,
        token: FencingToken(body.fencing_token),
        ttl_ms: body.ttl_ms,
    };
    p.validate()?;
    Ok(Json(LockGrant::of(&app.store.lock_renew(p).await?)))
}

/// End a hold and wake this node's waiters. Releasing a hold that already ended (released
/// before, or its TTL passed) answers `released: false`; 409 `lock-lost` when the token is
/// another owner's or the owner holds the lock with a newer token.
#[utoipa::path(
    post, path = "/v1/locks/{name}/release", tag = "locks",
    params(("name" = String, Path, description = "Lock name")),
    request_body = LockReleaseRequest,
    responses(
        (status = 200, body = LockReleased),
        (status = 409, description = "Another owner's or a superseded token (`lock-lost`); nothing changed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid request; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn lock_release(
    State(app): State<App>,
    principal: Principal,
    LockNameParam(name): LockNameParam,
    Body(body): Body<LockReleaseRequest>,
) -> Result<Json<LockReleased>, ApiError> {
    check(&principal, ScopeKind::Work, &name)?;
    let p = LockRelease {
        now: app.clock.now(),
        name: name.clone(),
        owner: LockOwner::new(&body.owner)?,
        token: FencingToken(body.fencing_token),
    };
    let released = app.store.lock_release(p).await?;
    if released {
        app.lock_waiters.wake(&name);
    }
    Ok(Json(LockReleased { released }))
}

/// An operator ends one hold (`?fencing_token=`) or every hold of the lock, and wakes this node's
/// waiters. The holders are not told: their next renew or release gets `lock-lost`, and a
/// fenced resource refuses their writes once a newer holder has written.
#[utoipa::path(
    delete, path = "/v1/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "Lock name"), LockForceQuery),
    responses(
        (status = 200, description = "The holds ended (none when nothing was held)", body = LockForceReleased),
    )
)]
pub(crate) async fn lock_force_release(
    State(app): State<App>,
    principal: Principal,
    LockNameParam(name): LockNameParam,
    Query(query): Query<LockForceQuery>,
) -> Result<Json<LockForceReleased>, ApiError> {
    check(&principal, ScopeKind::Admin, &name)?;
    let now = app.clock.now();
    let p = LockForceRelease { now, name: name.clone(), token: query.fencing_token.map(FencingToken) };
    let gone = app.store.lock_force_release(p).await?;
    if !gone.is_empty() {
        tracing::info!(lock = name.as_str(), holds = gone.len(), "locks force-released");
        app.lock_waiters.wake(&name);
    }
    Ok(Json(LockForceReleased { released: gone.iter().map(|h| LockHolder::of(h, now)).collect() }))
}

/// One lock: its size, live holders (tokens, deadlines) and this node's waiters.
#[utoipa::path(
    get, path = "/v1/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "Lock name")),
    responses(
        (status = 200, body = LockInfo),
        (status = 404, description = "Nobody holds the lock (`lock-not-held`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn lock_get(
    State(app): State<App>,
    principal: Principal,
    LockNameParam(name): LockNameParam,
) -> Result<Json<LockInfo>, ApiError> {
    check(&principal, ScopeKind::Read, &name)?;
    let waiters = app.lock_waiters.count(&name);
    match app.store.lock_get(&name, app.clock.now()).await? {
        Some(state) => Ok(Json(LockInfo::of(&state, waiters))),
        None => Err(ApiError::lock_not_held(&name, waiters)),
    }
}

/// Held locks by name, one page (`?after=&limit=`); a token limited to some names sees those.
#[utoipa::path(
    get, path = "/v1/locks", tag = "locks",
    params(LockQuery),
    responses((status = 200, body = LockList))
)]
pub(crate) async fn lock_list(
    State(app): State<App>,
    principal: Principal,
    Query(query): Query<LockQuery>,
) -> Result<Json<LockList>, ApiError> {
    let limit = query.limit()?;
    let after = query
        .after
        .as_deref()
        .map(LockName::new)
        .transpose()
        .map_err(|e| ApiError::from(dray_core::Invalid { field: "after".into(), ..e }))?;
    let p = dray_store::LockList { now: app.clock.now(), after, limit };
    let page = app.store.lock_list(p).await?;
    let next = (page.len() == limit).then(|| page.last().map(|s| s.lock.name.as_str().to_owned())).flatten();
    let locks = page
        .iter()
        .filter(|s| principal.allows(ScopeKind::Read, s.lock.name.as_str()))
        .map(|s| LockInfo::of(s, app.lock_waiters.count(&s.lock.name)))
        .collect();
    Ok(Json(LockList { locks, next }))
}
