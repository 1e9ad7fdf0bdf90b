//! `/v1/tokens`: create, list and revoke API tokens (unlimited `admin` scope only; see
//! `auth::ROUTES`). The secret is drawn here, shown once in the answer to `POST`, and only its
//! hash is stored.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dray_api::{Problem, Token, TokenCreate, TokenCreated, TokenList, timestamp_string};
use dray_runtime::Clock;
use dray_store::{TokenInsert, TokenRecord, TokenRevoke, TokenStore};

use crate::app::App;
use crate::extract::Body;
use crate::problem::ApiError;

/// Create a token. The answer holds its secret (`token`): the only time it is shown.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens",
    request_body = TokenCreate,
    responses(
        (status = 201, description = "Created; `token` is the secret, shown this once", body = TokenCreated),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the unlimited `admin` scope", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name, scope or expiry; `field` names it", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn token_create(
    State(app): State<App>,
    Body(body): Body<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let now = app.clock.now();
    let request = body.to_request(now)?;
    let (id, secret, hash) = crate::auth::token_new()?;
    let record = TokenRecord {
        id: id.clone(),
        name: request.name,
        scopes: request.scopes,
        hash,
        created_at: now,
        expires_at: request.expires_at,
        revoked_at: None,
    };
    app.store.token_insert(TokenInsert { now, token: record.clone() }).await?;
    tracing::info!(token = %id, name = %record.name, scopes = ?record.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(), "token created");
    let created = TokenCreated {
        id,
        name: record.name,
        scopes: record.scopes.iter().map(ToString::to_string).collect(),
        expires_at: record.expires_at.map(timestamp_string),
        token: secret,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Every token, oldest first, revoked ones included; never a secret.
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the unlimited `admin` scope", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn token_list(State(app): State<App>) -> Result<Json<TokenList>, ApiError> {
    let tokens = app.store.token_list().await?;
    Ok(Json(TokenList { tokens: tokens.iter().map(Token::from).collect() }))
}

/// Revoke a token. This node refuses it at once, every other node within
/// `auth::TOKEN_CACHE_TTL` (1 s). Revoking a revoked token changes nothing.
#[utoipa::path(
    delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (16 hex digits)")),
    responses(
        (status = 200, description = "Revoked", body = Token),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the unlimited `admin` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn token_revoke(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Token>, ApiError> {
    if dray_store::token_id_validate(&id).is_err() {
        return Err(ApiError::token_not_found(&id));
    }
    let revoked = app.store.token_revoke(TokenRevoke { now: app.clock.now(), id: id.clone() }).await?;
    app.auth.forget(&id);
    let record = revoked.ok_or_else(|| ApiError::token_not_found(&id))?;
    tracing::info!(token = %id, "token revoked");
    Ok(Json(Token::from(&record)))
}
