//! Who may do what: bearer tokens, the one table of the scope each route needs, and the check of
//! the queues a request touches.
//!
//! A request's credential is `Authorization: Bearer <token>`, or (for the dashboard's own
//! requests and its event stream) the `dray_token` cookie set by `POST /dashboard/login`. A token
//! is the bootstrap admin secret from `--admin-token-file` (compared by hash, never stored), or
//! `dray_<id>_<secret>` as created by `POST /v1/tokens`: its record is found by id and the
//! SHA-256 of the whole token compared with the stored hash in constant time.
//!
//! The route layer ([`authorize`]) answers 401 (no, unknown, expired or revoked token) or 403
//! (the token has no scope of the kind the route needs) before the handler runs, and hands the
//! handler a [`Principal`]. Handlers then check the queues the request touches with
//! [`Principal::check`] (enqueue bodies, lease queues, queue routes, a job's queue, list filters).
//!
//! Revocation: each node keeps what it read of a token for at most [`TOKEN_CACHE_TTL`], so a
//! token revoked on one node is refused by every node within that bound (plus a store read); the
//! node that revokes forgets it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dray_core::scope::{scopes_allow, scopes_allow_all, scopes_allow_some};
use dray_core::{Dependency, JobId, NewJob, QueueName, Scope, ScopeKind, Timestamp};
use dray_runtime::Clock;
use dray_store::{Store, TokenRecord, TokenStore};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::problem::ApiError;

/// Whether requests need a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Every route but `/healthz`, `/readyz` and the dashboard's static files needs a token.
    Required,
    /// No token needed: only allowed when every listen address is loopback.
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::None => "none",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "required" => Some(AuthMode::Required),
            "none" => Some(AuthMode::None),
            _ => None,
        }
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// Nothing: health checks, the dashboard's static files and its login.
    Open,
    /// A scope of this kind; the handler checks the queues it touches.
    Scope(ScopeKind),
    /// A scope of this kind without a queue pattern: the route shows or changes more than one
    /// queue's business (metrics, workers, tokens).
    ScopeAll(ScopeKind),
}

/// Every route and the scope it needs: the one place this is decided. A route missing here is
/// refused (403) for every token, and the test generated from the router fails.
pub(crate) const ROUTES: &[(&str, &str, Need)] = {
    use Need::*;
    use ScopeKind::*;
    &[
        ("GET", "/healthz", Open),
        ("GET", "/readyz", Open),
        ("GET", "/", Open),
        ("GET", "/dashboard/{file}", Open),
        ("POST", "/dashboard/login", Open),
        ("POST", "/dashboard/logout", Open),
        ("GET", "/dashboard/events", ScopeAll(Read)),
        ("GET", "/metrics", ScopeAll(Read)),
        ("GET", "/v1/openapi.json", Scope(Read)),
        ("POST", "/v1/jobs", Scope(Enqueue)),
        ("POST", "/v1/jobs/batch", Scope(Enqueue)),
        ("GET", "/v1/jobs", Scope(Read)),
        ("GET", "/v1/jobs/{id}", Scope(Read)),
        ("POST", "/v1/jobs/{id}/cancel", Scope(Admin)),
        ("POST", "/v1/jobs/{id}/promote", Scope(Admin)),
        ("POST", "/v1/lease", Scope(Work)),
        ("POST", "/v1/jobs/{id}/heartbeat", Scope(Work)),
        ("POST", "/v1/jobs/{id}/steps", Scope(Work)),
        ("POST", "/v1/jobs/{id}/complete", Scope(Work)),
        ("POST", "/v1/jobs/{id}/fail", Scope(Work)),
        ("POST", "/v1/ack", Scope(Work)),
        ("GET", "/v1/workers", ScopeAll(Read)),
        ("GET", "/v1/dead", Scope(Read)),
        ("POST", "/v1/dead/redrive", Scope(Admin)),
        ("POST", "/v1/dead/discard", Scope(Admin)),
        ("GET", "/v1/queues", Scope(Read)),
        ("GET", "/v1/queues/{name}", Scope(Read)),
        ("PUT", "/v1/queues/{name}", Scope(Admin)),
        ("DELETE", "/v1/queues/{name}", Scope(Admin)),
        ("POST", "/v1/queues/{name}/pause", Scope(Admin)),
        ("POST", "/v1/queues/{name}/resume", Scope(Admin)),
        ("POST", "/v1/queues/{name}/breaker", Scope(Admin)),
        ("POST", "/v1/tokens", ScopeAll(Admin)),
        ("GET", "/v1/tokens", ScopeAll(Admin)),
        ("DELETE", "/v1/tokens/{id}", ScopeAll(Admin)),
        ("GET", "/v1/schedules", Scope(Read)),
        ("POST", "/v1/schedules", Scope(Admin)),
        ("GET", "/v1/schedules/{name}", Scope(Read)),
        ("PUT", "/v1/schedules/{name}", Scope(Admin)),
        ("DELETE", "/v1/schedules/{name}", Scope(Admin)),
        ("POST", "/v1/schedules/{name}/pause", Scope(Admin)),
        ("POST", "/v1/schedules/{name}/resume", Scope(Admin)),
        ("POST", "/v1/schedules/{name}/trigger", Scope(Admin)),
        // Locks: a token limited to queue-name patterns may use the locks whose names match.
        ("GET", "/v1/locks", Scope(Read)),
        ("GET", "/v1/locks/{name}", Scope(Read)),
        ("DELETE", "/v1/locks/{name}", Scope(Admin)),
        ("POST", "/v1/locks/{name}/acquire", Scope(Work)),
        ("POST", "/v1/locks/{name}/renew", Scope(Work)),
        ("POST", "/v1/locks/{name}/release", Scope(Work)),
    ]
};

/// One row of the scope table, for tests and documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteScope {
    pub method: &'static str,
    /// As registered: `/v1/jobs/{id}`.
    pub path: &'static str,
    /// `None`: open to everyone.
    pub scope: Option<ScopeKind>,
    /// The scope must not be limited to a queue pattern.
    pub every_queue: bool,
}

/// Every route and the scope it needs (the table the route layer enforces).
pub fn route_scopes() -> Vec<RouteScope> {
    ROUTES
        .iter()
        .map(|&(method, path, need)| {
            let (scope, every_queue) = match need {
                Need::Open => (None, false),
                Need::Scope(kind) => (Some(kind), false),
                Need::ScopeAll(kind) => (Some(kind), true),
            };
            RouteScope { method, path, scope, every_queue }
        })
        .collect()
}

/// What `method` on the route `path` (as registered, `/v1/jobs/{id}`) needs; `None` when the
/// table does not know it.
pub(crate) fn need(method: &Method, path: &str) -> Option<Need> {
    // HEAD is served by GET routes and needs what GET needs.
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    ROUTES.iter().find(|(m, p, _)| *m == method && *p == path).map(|(_, _, need)| *need)
}

/// How long a node trusts what it read of a token: the bound on how late a revocation made on
/// another node takes effect here.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Token records a node caches at most; past it the cache starts over.
const TOKEN_CACHE_ENTRIES_MAX: usize = 4_096;
/// The cookie the dashboard's login sets.
pub(crate) const COOKIE_NAME: &str = "dray_token";
/// `dray_` + 16 hex digits of id + `_` + 64 hex digits of secret.
const TOKEN_PREFIX: &str = "dray_";
const SECRET_HEX_LEN: usize = 64;

/// The server's authentication settings and its cache of token records.
#[derive(Debug)]
pub(crate) struct Auth {
    mode: AuthMode,
    /// SHA-256 of the bootstrap admin secret.
    admin_hash: Option<[u8; 32]>,
    cache: Mutex<HashMap<String, (Option<TokenRecord>, Instant)>>,
}

/// Who is asking, as the route layer found out: handed to handlers in the request's extensions.
#[derive(Clone, Debug)]
pub(crate) enum Principal {
    /// Authentication is off (`--auth none`): everything is allowed.
    Anyone,
    /// A token with these scopes (the bootstrap admin token has `admin`).
    Token { scopes: Arc<[Scope]> },
}

impl Auth {
    pub fn new(mode: AuthMode, admin_secret: Option<&str>) -> Auth {
        Auth { mode, admin_hash: admin_secret.map(sha256), cache: Mutex::new(HashMap::new()) }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The principal a presented token stands for, or the 401 to answer.
    pub async fn authenticate<S: TokenStore>(
        &self,
        store: &S,
        now: Timestamp,
        token: &str,
    ) -> Result<Principal, ApiError> {
        let hash = sha256(token);
        if let Some(admin) = &self.admin_hash
            && constant_time_eq(admin, &hash)
        {
            return Ok(Principal::Token { scopes: Arc::from([Scope::all(ScopeKind::Admin)]) });
        }
        let Some(id) = token_id(token) else {
            return Err(ApiError::unauthorized("the bearer token is not a Dray token"));
        };
        let record = self.record(store, id).await?;
        let Some(record) = record.filter(|r| constant_time_eq(&r.hash, &hash)) else {
            return Err(ApiError::unauthorized("the bearer token is unknown"));
        };
        if record.revoked_at.is_some() {
            return Err(ApiError::unauthorized("the bearer token was revoked"));
        }
        if !record.is_live(now) {
            return Err(ApiError::unauthorized("the bearer token has expired"));
        }
        Ok(Principal::Token { scopes: Arc::from(record.scopes) })
    }

    /// A token's record, from the cache when read within the TTL.
    async fn record<S: TokenStore>(&self, store: &S, id: &str) -> Result<Option<TokenRecord>, ApiError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((record, at)) = cache.get(id)
            && at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(record.clone());
        }
        let record = store.token_get(id).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= TOKEN_CACHE_ENTRIES_MAX {
                cache.clear();
            }
            cache.insert(id.to_owned(), (record.clone(), Instant::now()));
        }
        Ok(record)
    }

    /// Forgets a token's record (after this node revoked it).
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }
}

/// A fresh token: `dray_<id>_<secret>` with a random 64-bit id and a 256-bit secret from the
/// OS's CSPRNG, and the SHA-256 of the whole token (what the store keeps).
pub(crate) fn token_new() -> Result<(String, String, [u8; 32]), ApiError> {
    let mut bytes = [0u8; 8 + 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "the OS's random number generator failed");
        ApiError::internal("cannot draw random bytes for a token")
    })?;
    let id = hex(&bytes[..8]);
    let token = format!("{TOKEN_PREFIX}{id}_{}", hex(&bytes[8..]));
    let hash = sha256(&token);
    Ok((id, token, hash))
}

/// The id part of a Dray token, if it has the shape of one.
fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_ok = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (dray_store::token_id_validate(id).is_ok() && secret.len() == SECRET_HEX_LEN && hex_ok(secret)).then_some(id)
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Equal without an early exit, so the time taken says nothing about where two hashes differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The credential of a request: the bearer token, else the dashboard's cookie.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not text"))?;
        let Some((scheme, token)) = value.split_once(' ') else {
            return Err(ApiError::unauthorized("the Authorization header must be `Bearer <token>`"));
        };
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::unauthorized("the Authorization header must be `Bearer <token>`"));
        }
        return Ok(Some(token.trim()));
    }
    Ok(cookie(headers, COOKIE_NAME))
}

/// A cookie's value from the `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The dashboard's session cookie holding `token`; `secure` adds `Secure` (when served over TLS).
/// No `Max-Age`: it ends with the browser session, and sooner when the token is revoked.
pub(crate) fn session_cookie(token: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("dray_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
}

/// The header that removes the session cookie.
pub(crate) fn session_cookie_clear(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"))
        .expect("a fixed cookie is a valid header")
}

/// The route layer: finds what the route needs, authenticates the request and hands the
/// [`Principal`] on. Runs only for routes the router matched (unknown routes get their 404).
pub(crate) async fn authorize(
    State(app): State<App>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let Some(need) = need(req.method(), path) else {
        // A known route with another method: the router answers 405 (no handler runs).
        if ROUTES.iter().any(|(_, p, _)| *p == path) {
            return next.run(req).await;
        }
        tracing::error!(method = %req.method(), path, "a route has no entry in the scope table; refused");
        return ApiError::forbidden(format!(
            "{} {path} has no scope assigned; it is refused to every token",
            req.method()
        ))
        .into_response();
    };
    let principal = match (need, app.auth.mode()) {
        (_, AuthMode::None) => Principal::Anyone,
        (Need::Open, AuthMode::Required) => Principal::Token { scopes: Arc::from([]) },
        (Need::Scope(kind) | Need::ScopeAll(kind), AuthMode::Required) => {
            let token = match credential(req.headers()) {
                Ok(Some(token)) => token,
                Ok(None) => {
                    return ApiError::unauthorized("this route needs `Authorization: Bearer <token>`").into_response();
                }
                Err(e) => return e.into_response(),
            };
            let principal = match app.auth.authenticate(&*app.store, app.clock.now(), token).await {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let allowed = match need {
                Need::ScopeAll(_) => principal.allows_all(kind),
                _ => principal.allows_some(kind),
            };
            if !allowed {
                let limit = if matches!(need, Need::ScopeAll(_)) { " without a queue pattern" } else { "" };
                return ApiError::forbidden(format!(
                    "the token has no {kind:?} scope{limit}; {} {path} needs scope {kind}",
                    req.method(),
                    kind = kind.as_str(),
                ))
                .into_response();
            }
            principal
        }
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

impl Principal {
    fn allows_some(&self, kind: ScopeKind) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { scopes } => scopes_allow_some(scopes, kind),
        }
    }

    /// Whether this principal may do `kind` on every queue.
    pub fn allows_all(&self, kind: ScopeKind) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { scopes } => scopes_allow_all(scopes, kind),
        }
    }

    pub fn allows(&self, kind: ScopeKind, queue: &str) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Token { scopes } => scopes_allow(scopes, kind, queue),
        }
    }

    /// 403 unless this principal may do `kind` on `queue`.
    pub fn check(&self, kind: ScopeKind, queue: &QueueName) -> Result<(), ApiError> {
        if self.allows(kind, queue.as_str()) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "the token has no {kind} scope for queue {queue:?}; this needs scope {kind}:{queue} or a pattern matching it",
            kind = kind.as_str(),
        )))
    }

    /// [`Principal::check`] for each queue.
    pub fn check_all<'q>(
        &self,
        kind: ScopeKind,
        queues: impl IntoIterator<Item = &'q QueueName>,
    ) -> Result<(), ApiError> {
        queues.into_iter().try_for_each(|q| self.check(kind, q))
    }

    /// 403 unless this principal may do `kind` on the queue of job `id`. Free when it may do
    /// `kind` on every queue; otherwise one read of the job. A job that does not exist passes
    /// (the handler answers 404).
    pub async fn check_job<S: Store>(&self, store: &S, kind: ScopeKind, id: JobId) -> Result<(), ApiError> {
        if self.allows_all(kind) {
            return Ok(());
        }
        match store.job_get(id).await? {
            Some(job) => self.check(kind, &job.queue),
            None => Ok(()),
        }
    }

    /// 403 unless this principal may read the queue of every existing job `jobs` depend on: a
    /// dependency's result flows into its dependent's lease, so naming a job as a dependency
    /// reads it. Free when it may read every queue; otherwise one read per distinct job named.
    /// Jobs of the same insert (`Dependency::Batch`) are the request's own; an unknown id passes
    /// (the insert refuses it with 422).
    pub async fn check_dependencies<S: Store>(&self, store: &S, jobs: &[NewJob]) -> Result<(), ApiError> {
        if self.allows_all(ScopeKind::Read) {
            return Ok(());
        }
        let mut named: Vec<JobId> = jobs
            .iter()
            .flat_map(|j| j.depends_on.iter())
            .filter_map(|d| match d {
                Dependency::Job(id) => Some(*id),
                Dependency::Batch(_) => None,
            })
            .collect();
        named.sort_unstable();
        named.dedup();
        for id in named {
            if let Some(job) = store.job_get(id).await? {
                if !self.allows(ScopeKind::Read, job.queue.as_str()) {
                    return Err(ApiError::forbidden(format!(
                        "depends_on names job {id}, whose result the token may not read: this needs scope read:{queue} \
                         or a pattern matching it",
                        id = id.0,
                        queue = job.queue,
                    )));
                }
            }
        }
        Ok(())
    }

    /// For a list without a queue filter: 403 unless this principal may do `kind` on every
    /// queue, naming the filter to add.
    pub fn check_unfiltered(&self, kind: ScopeKind) -> Result<(), ApiError> {
        if self.allows_all(kind) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "the token's {kind} scope is limited to some queues: filter by a queue it covers (`queue=`)",
            kind = kind.as_str(),
        )))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        // Fail closed: a handler reached without the route layer (a wiring bug) refuses.
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| ApiError::internal("the request was not authorized"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_hash() {
        let (id, token, hash) = token_new().unwrap();
        assert_eq!(token_id(&token), Some(id.as_str()));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 16 + 1 + SECRET_HEX_LEN);
        assert_eq!(hash, sha256(&token));
        let (id2, token2, _) = token_new().unwrap();
        assert_ne!((id, token), (id2, token2), "two tokens share nothing");
        for bad in ["", "dray_", "dray_0123456789abcdef", "dray_0123456789abcdef_abc", "bearer x"] {
            assert_eq!(token_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn constant_time_eq_compares_every_byte() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn credentials_from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h).unwrap(), None);
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; dray_token=t1"));
        assert_eq!(credential(&h).unwrap(), Some("t1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t2"));
        assert_eq!(credential(&h).unwrap(), Some("t2"), "the header wins");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dTpw"));
        assert!(credential(&h).is_err());
        assert_eq!(
            session_cookie("t", true).to_str().unwrap(),
            "dray_token=t; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(session_cookie("t", false).to_str().unwrap(), "dray_token=t; Path=/; HttpOnly; SameSite=Strict");
    }

    /// Generated from the router: every documented route and method must have a scope in
    /// `ROUTES`, and every entry of `ROUTES` must be a route (documented, or one of the few
    /// served outside the OpenAPI document). A new route without a scope fails here.
    #[test]
    fn every_route_of_the_router_has_a_scope() {
        let doc = crate::routes::openapi();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
                ("HEAD", item.head.is_some()),
                ("OPTIONS", item.options.is_some()),
            ];
            for (method, present) in methods {
                if present {
                    documented.push((method, path.clone()));
                }
            }
        }
        assert!(documented.len() >= 24, "the document lists the routes: {documented:?}");
        for (method, path) in &documented {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(need(&method, path).is_some(), "{method} {path} has no entry in auth::ROUTES");
        }
        let undocumented = crate::routes::UNDOCUMENTED_ROUTES;
        for (method, path, _) in ROUTES {
            let known = documented.iter().any(|(m, p)| m == method && p == path)
                || undocumented.iter().any(|(m, p)| m == method && p == path);
            assert!(known, "auth::ROUTES names {method} {path}, which the router does not serve");
        }
        for (method, path) in undocumented {
            assert!(need(&Method::from_bytes(method.as_bytes()).unwrap(), path).is_some(), "{method} {path}");
        }
    }
}
