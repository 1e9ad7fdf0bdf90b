//! Transactional enqueue (the outbox pattern) for the PostgreSQL mode: write your own rows and a
//! Dray job in one transaction of yours, so the job exists exactly when your data does. Behind
//! the `postgres` feature.
//!
//! [`enqueue`] calls the `<schema>.enqueue(queue, payload, options)` SQL function that the
//! PostgreSQL store installs (migration 2); any language can call that function directly (see
//! `docs/outbox.md`). The job becomes visible to workers at your `COMMIT` (the `NOTIFY` that wakes
//! them is delivered then too); a rollback leaves no job.
//!
//! ```no_run
//! # async fn f(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use dray_client::{Enqueue, outbox};
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", &[&42i64, &990i64]).await?;
//! let job = Enqueue::new("emails", &serde_json::json!({"order": 42}))?.idempotency_key("receipt-42");
//! let id = outbox::enqueue(&tx, "dray", &job).await?;
//! tx.commit().await?;
//! # let _ = id; Ok(()) }
//! ```

use std::fmt;

use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use crate::client::Enqueue;

/// The schema the store uses unless configured otherwise.
pub const SCHEMA_DEFAULT: &str = "dray";

/// Why [`enqueue`] failed. Like any statement error, it aborts your transaction: roll it back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input caught before anything was sent (a schema name that is not an identifier, a
    /// payload that is not JSON).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The database refused or failed the call. [`Error::is_invalid`] and [`Error::is_conflict`]
    /// pick out the function's own refusals; anything else is the database's (connection lost:
    /// the outcome is unknown unless you saw your `COMMIT` fail before it was sent).
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
}

impl Error {
    fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Error::Database(e) => e.code(),
            Error::Invalid { .. } => None,
        }
    }

    /// An option broke a limit (SQLSTATE 22023): the message names the field and the limit.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid { .. }) || self.sqlstate() == Some(&SqlState::INVALID_PARAMETER_VALUE)
    }

    /// The idempotency key is used, within its window, by a job with another payload (SQLSTATE
    /// 23505).
    pub fn is_conflict(&self) -> bool {
        self.sqlstate() == Some(&SqlState::UNIQUE_VIOLATION)
    }

    /// The database's message (`dray.enqueue: priority is 5000; allowed is -1000 to 1000`), or
    /// this error's own for [`Error::Invalid`].
    pub fn message(&self) -> String {
        match self {
            Error::Database(e) => e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            other => other.to_string(),
        }
    }
}

/// Enqueues `job` inside the caller's transaction (or on a plain client, in autocommit) through
/// `<schema>.enqueue()`, and returns the job's id. With an idempotency key that a live job with
/// the same payload holds, that job's id is returned and nothing is inserted.
///
/// The payload is stored as PostgreSQL's `jsonb` text of it (keys sorted, whitespace
/// normalized), so an idempotent retry must go through the function again, not through the HTTP
/// API, to compare equal.
pub async fn enqueue(client: &impl GenericClient, schema: &str, job: &Enqueue) -> Result<u64, Error> {
    schema_check(schema)?;
    let options = options_json(job)?;
    let wire = job.as_wire();
    let sql = format!("SELECT {schema}.enqueue($1::text, $2::text::jsonb, $3::text::jsonb)");
    let row = client.query_one(&sql, &[&wire.queue, &wire.payload.get(), &options]).await?;
    let id: i64 = row.try_get(0)?;
    u64::try_from(id).map_err(|_| Error::Invalid { field: "id".into(), message: format!("is {id}") })
}

/// The options object of `<schema>.enqueue()` for `job`: its wire body without queue and payload.
pub fn options_json(job: &Enqueue) -> Result<String, Error> {
    let mut value = serde_json::to_value(job.as_wire())
        .map_err(|e| Error::Invalid { field: "job".into(), message: e.to_string() })?;
    if let Some(map) = value.as_object_mut() {
        map.remove("queue");
        map.remove("payload");
    }
    Ok(value.to_string())
}

/// The same rule as the store's schema name: a lowercase identifier (it is spliced into SQL).
fn schema_check(schema: &str) -> Result<(), Error> {
    let first_ok = schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let rest_ok = schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > 58 {
        return Err(Error::Invalid { field: "schema".into(), message: SchemaRule(schema).to_string() });
    }
    Ok(())
}

struct SchemaRule<'a>(&'a str);

impl fmt::Display for SchemaRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a lowercase identifier (a-z, 0-9, _; at most 58 bytes)", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn options_are_the_wire_body_without_queue_and_payload() {
        let job = Enqueue::new("emails", &serde_json::json!({"to": "a@b"}))
            .unwrap()
            .priority(5)
            .delay(Duration::from_millis(1500))
            .idempotency_key("k")
            .tags(["a", "b"]);
        let options: serde_json::Value = serde_json::from_str(&options_json(&job).unwrap()).unwrap();
        assert_eq!(
            options,
            serde_json::json!({"priority": 5, "delay_ms": 1500, "idempotency_key": "k", "tags": ["a", "b"]})
        );
        let bare = Enqueue::new("q", &1).unwrap();
        assert_eq!(options_json(&bare).unwrap(), "{}");
    }

    #[test]
    fn schema_names_are_identifiers() {
        for ok in ["dray", "_x", "app_dray2"] {
            assert!(schema_check(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Dray", "1x", "dray; DROP TABLE x", "a.b"] {
            assert!(schema_check(bad).is_err(), "{bad}");
        }
    }
}
