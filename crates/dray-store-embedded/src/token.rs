//! `TokenStore` for the embedded store: tokens live in the state beside the jobs, each change
//! logged as a whole record (`TokenUpsert`) and copied into every snapshot, so tokens survive
//! restarts exactly as jobs do.

use dray_core::Invalid;
use dray_store::{Error, TOKENS_MAX, TokenInsert, TokenRecord, TokenRevoke, TokenStore};

use crate::codec;
use crate::store::EmbeddedStore;

impl TokenStore for EmbeddedStore {
    async fn token_insert(&self, p: TokenInsert) -> Result<(), Error> {
        p.token.validate()?;
        self.write(true, |state, changes| {
            if state.tokens.contains_key(&p.token.id) {
                return Err(Invalid::new("id", format!("token {} already exists", p.token.id)).into());
            }
            if state.tokens.len() >= TOKENS_MAX {
                return Err(Invalid::new("tokens", format!("the store holds {TOKENS_MAX} tokens, the limit")).into());
            }
            changes.push(|buf| codec::encode_token_upsert(buf, &p.token));
            state.tokens.insert(p.token.id.clone(), p.token);
            Ok(())
        })
        .await
    }

    async fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        self.read(|state| Ok(state.tokens.get(id).cloned())).await
    }

    async fn token_list(&self) -> Result<Vec<TokenRecord>, Error> {
        self.read(|state| {
            let mut tokens: Vec<TokenRecord> = state.tokens.values().cloned().collect();
            tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(tokens)
        })
        .await
    }

    async fn token_revoke(&self, p: TokenRevoke) -> Result<Option<TokenRecord>, Error> {
        self.write(true, |state, changes| {
            let Some(token) = state.tokens.get_mut(&p.id) else { return Ok(None) };
            if token.revoked_at.is_none() {
                token.revoked_at = Some(p.now);
                changes.push(|buf| codec::encode_token_upsert(buf, token));
            }
            Ok(Some(token.clone()))
        })
        .await
    }
}
