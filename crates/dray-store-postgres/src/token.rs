//! `TokenStore` for PostgreSQL: one row per token in `<schema>.tokens` (migration 4), shared by
//! every node on the database. Each call is one short statement or transaction; tokens are read
//! by id (the primary key), so a node's authentication cache refills in one round trip.

use dray_core::{Invalid, Scope};
use dray_store::{Error, TOKENS_MAX, TokenInsert, TokenRecord, TokenRevoke, TokenStore};
use tokio_postgres::Row;

use crate::error::{corrupt, db_error};
use crate::row::{from_time, get, to_time};
use crate::store::PostgresStore;

const COLUMNS: &str = "id, name, scopes, hash, created_at, expires_at, revoked_at";

fn token_from_row(row: &Row) -> Result<TokenRecord, Error> {
    let scopes: Vec<String> = get(row, "scopes")?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s).map_err(|e| corrupt(format!("token scope {s:?}: {}", e.message))))
        .collect::<Result<Vec<_>, _>>()?;
    let hash: Vec<u8> = get(row, "hash")?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| corrupt("a token hash is not 32 bytes"))?;
    Ok(TokenRecord {
        id: get(row, "id")?,
        name: get(row, "name")?,
        scopes,
        hash,
        created_at: from_time(get(row, "created_at")?),
        expires_at: get::<Option<std::time::SystemTime>>(row, "expires_at")?.map(from_time),
        revoked_at: get::<Option<std::time::SystemTime>>(row, "revoked_at")?.map(from_time),
    })
}

impl TokenStore for PostgresStore {
    async fn token_insert(&self, p: TokenInsert) -> Result<(), Error> {
        let t = &p.token;
        t.validate()?;
        let s = &self.config().schema;
        let client = self.client().await?;
        let scopes: Vec<String> = t.scopes.iter().map(ToString::to_string).collect();
        // One statement: the bound, the id's uniqueness and the insert together. Inserts racing
        // at the bound may pass it by as many as run at once; the bound is about not growing
        // without limit, and that still holds.
        let row = client
            .query_one(
                &format!(
                    "WITH ins AS (
                         INSERT INTO {s}.tokens ({COLUMNS})
                         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE (SELECT count(*) FROM {s}.tokens) < $8
                         ON CONFLICT (id) DO NOTHING
                         RETURNING 1
                     )
                     SELECT (SELECT count(*) FROM ins) AS inserted,
                            EXISTS (SELECT 1 FROM {s}.tokens WHERE id = $1) AS taken"
                ),
                &[
                    &t.id,
                    &t.name,
                    &scopes,
                    &t.hash.as_slice(),
                    &to_time(t.created_at),
                    &t.expires_at.map(to_time),
                    &t.revoked_at.map(to_time),
                    &(TOKENS_MAX as i64),
                ],
            )
            .await
            .map_err(db_error)?;
        let (inserted, taken): (i64, bool) = (get(&row, "inserted")?, get(&row, "taken")?);
        match (inserted, taken) {
            (1, _) => Ok(()),
            (_, true) => Err(Invalid::new("id", format!("token {} already exists", t.id)).into()),
            _ => Err(Invalid::new("tokens", format!("the store holds {TOKENS_MAX} tokens, the limit")).into()),
        }
    }

    async fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        let s = &self.config().schema;
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {COLUMNS} FROM {s}.tokens WHERE id = $1"), &[&id])
            .await
            .map_err(db_error)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_list(&self) -> Result<Vec<TokenRecord>, Error> {
        let s = &self.config().schema;
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {COLUMNS} FROM {s}.tokens ORDER BY created_at, id"), &[])
            .await
            .map_err(db_error)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn token_revoke(&self, p: TokenRevoke) -> Result<Option<TokenRecord>, Error> {
        let s = &self.config().schema;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE {s}.tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&p.id, &to_time(p.now)],
            )
            .await
            .map_err(db_error)?;
        row.as_ref().map(token_from_row).transpose()
    }
}
