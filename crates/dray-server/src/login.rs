//! The dashboard's sign-in: `POST /dashboard/login` checks a token and keeps it in an `HttpOnly;
//! SameSite=Strict` cookie (plus `Secure` over TLS), which the route layer accepts as a credential
//! for the dashboard's own requests and its event stream; `POST /dashboard/logout` removes it.
//! Script on the page never sees the token again once it is sent.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dray_api::Login;
use dray_core::ScopeKind;
use dray_runtime::Clock;

use crate::app::App;
use crate::auth::{AuthMode, session_cookie, session_cookie_clear};
use crate::extract::Body;
use crate::problem::ApiError;

pub(crate) fn routes(router: axum::Router<App>) -> axum::Router<App> {
    router.route("/dashboard/login", post(login)).route("/dashboard/logout", post(logout))
}

/// 204 with the cookie when the token is good and may read every queue (what the dashboard
/// shows); 401 or 403 otherwise. With `--auth none`, 204 and no cookie.
async fn login(State(app): State<App>, Body(body): Body<Login>) -> Result<Response, ApiError> {
    if app.auth.mode() == AuthMode::None {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let token = body.token.trim();
    let principal = app.auth.authenticate(&*app.store, app.clock.now(), token).await?;
    if !principal.allows_all(ScopeKind::Read) {
        return Err(ApiError::forbidden(
            "the dashboard shows every queue: sign in with a token that has the read scope without a queue pattern",
        ));
    }
    Ok((
        StatusCode::NO_CONTENT,
        [
            (header::SET_COOKIE, session_cookie(token, app.cookie_secure)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

async fn logout(State(app): State<App>) -> Response {
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, session_cookie_clear(app.cookie_secure))]).into_response()
}
