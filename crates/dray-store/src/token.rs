//! API tokens at rest: the [`TokenStore`] trait, a storage trait of its own beside [`crate::Store`]
//! (tokens are not jobs, and a store that serves jobs need not change to serve tokens).
//!
//! A store keeps a token's id, name, scopes, times and the SHA-256 of its secret, never the
//! secret itself: the secret is shown once, when the token is created, and then exists only with
//! whoever holds it. Comparing a presented secret with the stored hash is the server's job (in
//! constant time); the store only files records. Revoked tokens are kept (listed as revoked) so
//! an operator can see what existed; the number of tokens is bounded by [`TOKENS_MAX`].

use std::future::Future;

use dray_core::{Invalid, Scope, Timestamp};

use crate::Error;

/// Tokens a store holds at most, revoked ones included.
pub const TOKENS_MAX: usize = 10_000;
/// Bytes of a token's name at most.
pub const TOKEN_NAME_BYTES_MAX: usize = 128;
/// A token id: 16 lowercase hex digits (64 random bits).
pub const TOKEN_ID_LEN: usize = 16;

/// One token as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// 16 lowercase hex digits; public (it is part of the token, and listed).
    pub id: String,
    /// The operator's label ("billing producer").
    pub name: String,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the secret part of the token.
    pub hash: [u8; 32],
    pub created_at: Timestamp,
    /// After this instant the token is refused.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked; revoked tokens are refused.
    pub revoked_at: Option<Timestamp>,
}

impl TokenRecord {
    /// Whether the token may be used at `now`: not revoked, not expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }

    /// Checks the record before it is written: the id's shape, the name's length, the scopes'
    /// count. Stores call it so both refuse the same records.
    pub fn validate(&self) -> Result<(), Invalid> {
        token_id_validate(&self.id)?;
        if self.name.is_empty() || self.name.len() > TOKEN_NAME_BYTES_MAX {
            return Err(Invalid::new(
                "name",
                format!("is {} bytes; allowed is 1 to {TOKEN_NAME_BYTES_MAX}", self.name.len()),
            ));
        }
        if let Some(c) = self.name.chars().find(|c| c.is_control()) {
            return Err(Invalid::new("name", format!("contains the control character {c:?}")));
        }
        if self.scopes.is_empty() || self.scopes.len() > Scope::PER_TOKEN_MAX {
            return Err(Invalid::new(
                "scopes",
                format!("has {} scopes; allowed is 1 to {}", self.scopes.len(), Scope::PER_TOKEN_MAX),
            ));
        }
        Ok(())
    }
}

/// Whether `id` is a token id: [`TOKEN_ID_LEN`] lowercase hex digits.
pub fn token_id_validate(id: &str) -> Result<(), Invalid> {
    if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Invalid::new("id", format!("{id:?} is not a token id ({TOKEN_ID_LEN} lowercase hex digits)")));
    }
    Ok(())
}

/// Files a new token.
#[derive(Clone, Debug)]
pub struct TokenInsert {
    pub now: Timestamp,
    pub token: TokenRecord,
}

/// Revokes a token.
#[derive(Clone, Debug)]
pub struct TokenRevoke {
    pub now: Timestamp,
    pub id: String,
}

/// Where API tokens live. Implemented by both stores, so tokens survive restarts and, in
/// PostgreSQL mode, every node sees the same ones.
///
/// Writes are durable before they return, as with [`crate::Store`]. Cancel safety: as
/// [`crate::Store`]: a dropped call may or may not have been applied.
pub trait TokenStore: Send + Sync + 'static {
    /// Files a new token. Refused (`Invalid`) when the record is invalid, its id is taken, or the
    /// store already holds [`TOKENS_MAX`] tokens.
    fn token_insert(&self, p: TokenInsert) -> impl Future<Output = Result<(), Error>> + Send;

    /// One token, revoked and expired ones included, or `None`.
    fn token_get(&self, id: &str) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send;

    /// Every token, oldest first (then by id).
    fn token_list(&self) -> impl Future<Output = Result<Vec<TokenRecord>, Error>> + Send;

    /// Revokes a token and returns it; `None` if there is no such token. Revoking a revoked token
    /// changes nothing (it keeps its first `revoked_at`).
    fn token_revoke(&self, p: TokenRevoke) -> impl Future<Output = Result<Option<TokenRecord>, Error>> + Send;
}

#[cfg(test)]
mod tests {
    use dray_core::ScopeKind;

    use super::*;

    #[test]
    fn live_means_neither_revoked_nor_expired() {
        let mut t = TokenRecord {
            id: "dddddddddddddddd".into(),
            name: "t".into(),
            scopes: vec![Scope::all(ScopeKind::Read)],
            hash: [0; 32],
            created_at: Timestamp(0),
            expires_at: Some(Timestamp(10)),
            revoked_at: None,
        };
        assert!(t.validate().is_ok());
        assert!(t.is_live(Timestamp(9)));
        assert!(!t.is_live(Timestamp(10)), "expired at the instant itself");
        t.expires_at = None;
        assert!(t.is_live(Timestamp(i64::MAX)));
        t.revoked_at = Some(Timestamp(0));
        assert!(!t.is_live(Timestamp(0)));
        assert_eq!(token_id_validate("DDDDDDDDDDDDDDDD").unwrap_err().field, "id");
    }
}
