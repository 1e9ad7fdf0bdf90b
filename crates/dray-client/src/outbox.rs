//! Transactional enqueue (the outbox pattern) for the PostgreSQL mode: write your own rows and a
//! Dray job in one transaction of yours, so the job exists exactly when your data does. Behind
//! the `postgres` feature (tokio-postgres: [`enqueue`]) or the `sqlx` feature (sqlx:
//! [`enqueue_sqlx`]); both may be on.
//!
//! Both call the `<schema>.enqueue(queue, payload, options)` SQL function that the PostgreSQL
//! store installs (migration 2); any language can call that function directly (see
//! `docs/outbox.md`). The job becomes visible to workers at your `COMMIT` (the `NOTIFY` that wakes
//! them is delivered then too); a rollback leaves no job. What is sent is built once, by
//! [`EnqueueCall`], whatever the driver: the helpers only execute it.
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
//!
//! With sqlx (a `sqlx::Transaction<'_, Postgres>` dereferences to the connection):
//!
//! ```ignore
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id, total) VALUES ($1, $2)").bind(42i64).bind(990i64).execute(&mut *tx).await?;
//! let id = outbox::enqueue_sqlx(&mut *tx, "dray", &job).await?;
//! tx.commit().await?;
//! ```
//!
//! The same module holds the other half of Dray's locks: [`fence`] (and [`fence_sqlx`]) call
//! `<schema>.fence(resource, token)` in your transaction before you write, so a lock holder whose
//! lock expired while it was paused cannot write over a newer holder's work (`docs/locks.md`):
//!
//! ```no_run
//! # async fn f(client: &mut tokio_postgres::Client, token: u64) -> Result<(), Box<dyn std::error::Error>> {
//! use dray_client::outbox;
//! let tx = client.transaction().await?;
//! outbox::fence(&tx, "dray", "report:2026-12", token).await?; // Err(is_fenced) for a stale token
//! tx.execute("UPDATE reports SET body = $1 WHERE month = '2026-12'", &[&"..."]).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! And the consumer's half of exactly-once effects: [`complete`] and [`fail`] (and their sqlx
//! forms) end a leased job's attempt inside your transaction, through `<schema>.complete()` and
//! `<schema>.fail()`, so the job's effect (a row you write) and its completion commit together or
//! not at all (`docs/outbox.md`, "Exactly-once effects"). Tell the [`crate::Worker`] with
//! [`crate::JobContext::acked_in_transaction`] once you committed, so it does not ack again:
//!
//! ```no_run
//! # async fn f(client: &mut tokio_postgres::Client, ctx: dray_client::JobContext) -> dray_client::HandlerResult {
//! use dray_client::outbox;
//! let tx = client.transaction().await?;
//! tx.execute("INSERT INTO receipts (order_id) VALUES ($1)", &[&42i64]).await?;
//! outbox::complete(&tx, "dray", ctx.id(), ctx.lease_id(), None).await?; // Err(is_lease_lost): roll back
//! tx.commit().await?;
//! ctx.acked_in_transaction();
//! Ok(None)
//! # }
//! ```

use std::fmt;

use crate::client::Enqueue;
use crate::worker::JobError;

/// SQLSTATE of the function's refusals of an option (`invalid_parameter_value`).
const SQLSTATE_INVALID: &str = "22023";
/// SQLSTATE of an idempotency key used with another payload (`unique_violation`).
const SQLSTATE_CONFLICT: &str = "23505";
/// SQLSTATE `<schema>.fence()` raises for a token older than the newest the resource has seen
/// (Dray's own class `DR`; the store's `FENCE_SQLSTATE`).
pub const SQLSTATE_FENCED: &str = "DR001";

/// SQLSTATE `<schema>.complete()` and `<schema>.fail()` raise for a lease that is not the job's
/// current one (never granted, or the job moved on or finished).
pub const SQLSTATE_STALE_LEASE: &str = "DR002";
/// SQLSTATE `<schema>.complete()` and `<schema>.fail()` raise for the job's current lease when its
/// deadline has passed on the database's clock.
pub const SQLSTATE_LEASE_EXPIRED: &str = "DR003";
/// SQLSTATE of `<schema>.complete()` and `<schema>.fail()` for a job that does not exist
/// (`no_data_found`).
pub const SQLSTATE_NO_JOB: &str = "P0002";

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
    /// tokio-postgres refused or failed the call. [`Error::is_invalid`] and [`Error::is_conflict`]
    /// pick out the function's own refusals; anything else is the database's (connection lost:
    /// the outcome is unknown unless you saw your `COMMIT` fail before it was sent).
    #[cfg(feature = "postgres")]
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
    /// sqlx refused or failed the call; read as [`Error::Database`].
    #[cfg(feature = "sqlx")]
    #[error("{0}")]
    Sqlx(#[from] sqlx::Error),
}

impl Error {
    /// The SQLSTATE of a database error, whichever driver reported it.
    fn sqlstate(&self) -> Option<String> {
        match self {
            #[cfg(feature = "postgres")]
            Error::Database(e) => e.code().map(|c| c.code().to_owned()),
            #[cfg(feature = "sqlx")]
            Error::Sqlx(e) => e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned()),
            Error::Invalid { .. } => None,
        }
    }

    /// An option broke a limit (SQLSTATE 22023): the message names the field and the limit.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid { .. }) || self.sqlstate().as_deref() == Some(SQLSTATE_INVALID)
    }

    /// The idempotency key is used, within its window, by a job with another payload (SQLSTATE
    /// 23505).
    pub fn is_conflict(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_CONFLICT)
    }

    /// [`fence`] refused the token: a newer lock holder has written to the resource (SQLSTATE
    /// `DR001`). Roll back; this holder's lock is lost.
    pub fn is_fenced(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_FENCED)
    }

    /// [`complete`] or [`fail`] refused the lease: it is not the job's current one (SQLSTATE
    /// `DR002`: the job moved on, or finished). Roll back: your effect must not commit.
    pub fn is_stale_lease(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_STALE_LEASE)
    }

    /// [`complete`] or [`fail`] found the lease's deadline passed on the database's clock
    /// (SQLSTATE `DR003`): the job will be delivered again. Roll back.
    pub fn is_lease_expired(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_LEASE_EXPIRED)
    }

    /// Either of [`Error::is_stale_lease`] and [`Error::is_lease_expired`]: this attempt's outcome
    /// no longer counts.
    pub fn is_lease_lost(&self) -> bool {
        self.is_stale_lease() || self.is_lease_expired()
    }

    /// The job does not exist (SQLSTATE `P0002`): pruned, or a wrong id.
    pub fn is_no_job(&self) -> bool {
        self.sqlstate().as_deref() == Some(SQLSTATE_NO_JOB)
    }

    /// The database's message (`dray.enqueue: priority is 5000; allowed is -1000 to 1000`), or
    /// this error's own for [`Error::Invalid`].
    pub fn message(&self) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Error::Database(e) => e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            #[cfg(feature = "sqlx")]
            Error::Sqlx(e) => e.as_database_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            other => other.to_string(),
        }
    }
}

/// One call of `<schema>.enqueue()`, checked and built, for any driver to execute: the statement
/// and its three text parameters. Building it is where all the rules of the helpers live (the
/// schema is an identifier, the options are the wire body without queue and payload), so the
/// tokio-postgres and sqlx helpers cannot drift apart.
#[derive(Debug)]
pub struct EnqueueCall<'a> {
    /// `SELECT <schema>.enqueue($1::text, $2::text::jsonb, $3::text::jsonb)`: parameters sent as
    /// text and cast in SQL, so every driver binds them the same way.
    pub sql: String,
    pub queue: &'a str,
    /// The payload's JSON text.
    pub payload: &'a str,
    /// The options object's JSON text ([`options_json`]).
    pub options: String,
}

impl<'a> EnqueueCall<'a> {
    pub fn new(schema: &str, job: &'a Enqueue) -> Result<EnqueueCall<'a>, Error> {
        schema_check(schema)?;
        let options = options_json(job)?;
        let wire = job.as_wire();
        Ok(EnqueueCall {
            sql: format!("SELECT {schema}.enqueue($1::text, $2::text::jsonb, $3::text::jsonb)"),
            queue: &wire.queue,
            payload: wire.payload.get(),
            options,
        })
    }

    /// The function's answer as a job id (ids are positive).
    fn job_id(id: i64) -> Result<u64, Error> {
        u64::try_from(id).map_err(|_| Error::Invalid { field: "id".into(), message: format!("is {id}") })
    }
}

/// Enqueues `job` inside the caller's transaction (or on a plain client, in autocommit) through
/// `<schema>.enqueue()`, and returns the job's id. With an idempotency key that a live job with
/// the same payload holds, that job's id is returned and nothing is inserted.
///
/// The payload is stored as PostgreSQL's `jsonb` text of it (keys sorted, whitespace
/// normalized), so an idempotent retry must go through the function again, not through the HTTP
/// API, to compare equal.
///
/// Cancel safety: as for the statement itself; dropping the future leaves the call applied or
/// not, inside your transaction (which you then roll back or commit).
#[cfg(feature = "postgres")]
pub async fn enqueue(client: &impl tokio_postgres::GenericClient, schema: &str, job: &Enqueue) -> Result<u64, Error> {
    let call = EnqueueCall::new(schema, job)?;
    let row = client.query_one(&call.sql, &[&call.queue, &call.payload, &call.options]).await?;
    EnqueueCall::job_id(row.try_get(0)?)
}

/// [`enqueue`] on an sqlx PostgreSQL connection: pass `&mut *tx` for a
/// `sqlx::Transaction<'_, Postgres>`, or a `&mut PgConnection` (autocommit). Same statement,
/// same answers, same errors ([`Error::Sqlx`] for the database's).
///
/// Cancel safety: as for [`enqueue`].
#[cfg(feature = "sqlx")]
pub async fn enqueue_sqlx(conn: &mut sqlx::PgConnection, schema: &str, job: &Enqueue) -> Result<u64, Error> {
    let call = EnqueueCall::new(schema, job)?;
    let id: i64 =
        sqlx::query_scalar(&call.sql).bind(call.queue).bind(call.payload).bind(&call.options).fetch_one(conn).await?;
    EnqueueCall::job_id(id)
}

/// The statement [`fence`] and [`fence_sqlx`] run: `SELECT <schema>.fence($1::text, $2::bigint)`.
pub fn fence_sql(schema: &str) -> Result<String, Error> {
    schema_check(schema)?;
    Ok(format!("SELECT {schema}.fence($1::text, $2::bigint)"))
}

fn fence_token(token: u64) -> Result<i64, Error> {
    i64::try_from(token)
        .map_err(|_| Error::Invalid { field: "token".into(), message: format!("{token} is not a fencing token") })
}

/// Checks `token` (a lock's fencing token) against the newest token `resource` has seen, inside
/// the caller's transaction, and makes it the newest: call it before writing to the resource.
/// Refused ([`Error::is_fenced`]) when a newer token has been seen: a newer holder of the lock
/// has written, so this holder lost the lock (its TTL passed while it was paused, say) and must
/// not write. The same token again passes. Returns the newest token, now `token`.
///
/// The check holds a row lock on the resource's fence until your transaction ends, so fenced
/// writers of one resource commit one at a time; a rollback undoes the fence's change too.
///
/// Cancel safety: as for the statement itself, inside your transaction.
#[cfg(feature = "postgres")]
pub async fn fence(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    resource: &str,
    token: u64,
) -> Result<u64, Error> {
    let sql = fence_sql(schema)?;
    let row = client.query_one(&sql, &[&resource, &fence_token(token)?]).await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// [`fence`] on an sqlx PostgreSQL connection (`&mut *tx` for a transaction).
///
/// Cancel safety: as for [`fence`].
#[cfg(feature = "sqlx")]
pub async fn fence_sqlx(conn: &mut sqlx::PgConnection, schema: &str, resource: &str, token: u64) -> Result<u64, Error> {
    let sql = fence_sql(schema)?;
    let newest: i64 = sqlx::query_scalar(&sql).bind(resource).bind(fence_token(token)?).fetch_one(conn).await?;
    Ok(u64::try_from(newest).unwrap_or(0))
}

/// Where a job went when [`complete`] or [`fail`] ended its attempt (once your transaction
/// commits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Completed,
    /// Failed; delivered again after its backoff (or the error's `retry_after`).
    Retrying,
    /// Failed for good: in the dead-letter queue.
    Dead,
    /// Failed while a cancel was requested: cancelled.
    Cancelled,
}

impl Ended {
    fn parse(state: &str) -> Result<Ended, Error> {
        match state {
            "completed" => Ok(Ended::Completed),
            "retrying" => Ok(Ended::Retrying),
            "dead" => Ok(Ended::Dead),
            "cancelled" => Ok(Ended::Cancelled),
            other => Err(Error::Invalid {
                field: "state".into(),
                message: format!("{other:?} is not a state an ack ends in"),
            }),
        }
    }
}

/// One call of `<schema>.complete()` or `<schema>.fail()`, checked and built for any driver, like
/// [`EnqueueCall`]: the statement and its parameters.
#[derive(Debug)]
pub struct AckCall<'a> {
    /// `SELECT <schema>.complete($1::bigint, $2::text, $3::text::jsonb)`, or
    /// `SELECT <schema>.fail($1::bigint, $2::text, $3::text, $4::bool, $5::bigint)`.
    pub sql: String,
    pub job: i64,
    pub lease_id: &'a str,
    /// The result's JSON text (complete), or the error's message (fail).
    pub text: Option<String>,
    pub retryable: bool,
    pub retry_after_ms: Option<i64>,
}

/// `JobError::retry_after` is documented as clamped to 30 days (`Limits::RETRY_AFTER_MS_MAX`).
const RETRY_AFTER_MS_MAX: u64 = 30 * 24 * 3_600 * 1_000;

impl<'a> AckCall<'a> {
    pub fn complete(
        schema: &str,
        job: u64,
        lease_id: &'a str,
        result: Option<&serde_json::Value>,
    ) -> Result<AckCall<'a>, Error> {
        schema_check(schema)?;
        Ok(AckCall {
            sql: format!("SELECT {schema}.complete($1::bigint, $2::text, $3::text::jsonb)"),
            job: job_param(job)?,
            lease_id,
            text: result.map(serde_json::Value::to_string),
            retryable: false,
            retry_after_ms: None,
        })
    }

    pub fn fail(schema: &str, job: u64, lease_id: &'a str, error: &JobError) -> Result<AckCall<'a>, Error> {
        schema_check(schema)?;
        let retry_after_ms = error
            .retry_delay()
            .map(|d| i64::try_from(crate::client::millis_ceil(d).min(RETRY_AFTER_MS_MAX)).unwrap_or(i64::MAX));
        Ok(AckCall {
            sql: format!("SELECT {schema}.fail($1::bigint, $2::text, $3::text, $4::bool, $5::bigint)"),
            job: job_param(job)?,
            lease_id,
            text: Some(error.message().to_owned()),
            retryable: error.is_retryable(),
            retry_after_ms,
        })
    }

    fn is_fail(&self) -> bool {
        self.sql.contains(".fail(")
    }
}

fn job_param(job: u64) -> Result<i64, Error> {
    i64::try_from(job).map_err(|_| Error::Invalid { field: "job".into(), message: format!("{job} is not a job id") })
}

/// Completes the leased job `job` under `lease_id` inside the caller's transaction, through
/// `<schema>.complete()`: exactly what the HTTP completion does, applied at your `COMMIT` (a
/// rollback leaves the job running under the same lease). Write the job's effect in the same
/// transaction. `result` is stored as PostgreSQL's `jsonb` text of it.
///
/// Refused with [`Error::is_stale_lease`] or [`Error::is_lease_expired`] when the lease is no
/// longer the job's: roll back, so the effect does not commit either. From the call until your
/// transaction ends the job's row is locked: nobody else can expire, lease or ack it meanwhile.
///
/// Cancel safety: as for the statement itself, inside your transaction.
#[cfg(feature = "postgres")]
pub async fn complete(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    job: u64,
    lease_id: &str,
    result: Option<&serde_json::Value>,
) -> Result<Ended, Error> {
    ack_postgres(client, AckCall::complete(schema, job, lease_id, result)?).await
}

/// Fails the attempt of the leased job `job` under `lease_id` inside the caller's transaction,
/// through `<schema>.fail()`, with `error`'s message, retryability and `retry_after`: retried
/// after its backoff, or dead (not retryable, or its last attempt). As [`complete`] otherwise.
///
/// Cancel safety: as for the statement itself, inside your transaction.
#[cfg(feature = "postgres")]
pub async fn fail(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
    job: u64,
    lease_id: &str,
    error: &JobError,
) -> Result<Ended, Error> {
    ack_postgres(client, AckCall::fail(schema, job, lease_id, error)?).await
}

#[cfg(feature = "postgres")]
async fn ack_postgres(client: &impl tokio_postgres::GenericClient, call: AckCall<'_>) -> Result<Ended, Error> {
    let row = if call.is_fail() {
        client
            .query_one(&call.sql, &[&call.job, &call.lease_id, &call.text, &call.retryable, &call.retry_after_ms])
            .await?
    } else {
        client.query_one(&call.sql, &[&call.job, &call.lease_id, &call.text]).await?
    };
    Ended::parse(row.try_get(0)?)
}

/// [`complete`] on an sqlx PostgreSQL connection (`&mut *tx` for a transaction).
///
/// Cancel safety: as for [`complete`].
#[cfg(feature = "sqlx")]
pub async fn complete_sqlx(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    job: u64,
    lease_id: &str,
    result: Option<&serde_json::Value>,
) -> Result<Ended, Error> {
    ack_sqlx(conn, AckCall::complete(schema, job, lease_id, result)?).await
}

/// [`fail`] on an sqlx PostgreSQL connection (`&mut *tx` for a transaction).
///
/// Cancel safety: as for [`fail`].
#[cfg(feature = "sqlx")]
pub async fn fail_sqlx(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    job: u64,
    lease_id: &str,
    error: &JobError,
) -> Result<Ended, Error> {
    ack_sqlx(conn, AckCall::fail(schema, job, lease_id, error)?).await
}

#[cfg(feature = "sqlx")]
async fn ack_sqlx(conn: &mut sqlx::PgConnection, call: AckCall<'_>) -> Result<Ended, Error> {
    let query = sqlx::query_scalar::<_, String>(&call.sql).bind(call.job).bind(call.lease_id).bind(&call.text);
    let state = if call.is_fail() {
        query.bind(call.retryable).bind(call.retry_after_ms).fetch_one(conn).await?
    } else {
        query.fetch_one(conn).await?
    };
    Ended::parse(&state)
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
    fn ack_calls_carry_the_outcome() {
        let call = AckCall::complete("dray", 7, "00000000000000ff", Some(&serde_json::json!({"ok": true}))).unwrap();
        assert_eq!(call.sql, "SELECT dray.complete($1::bigint, $2::text, $3::text::jsonb)");
        assert_eq!((call.job, call.lease_id, call.text.as_deref()), (7, "00000000000000ff", Some(r#"{"ok":true}"#)));
        assert!(!call.is_fail());
        let e = JobError::fatal("no such customer").retry_after(Duration::from_secs(40 * 24 * 3600));
        let call = AckCall::fail("app", 8, "x", &e).unwrap();
        assert_eq!(call.sql, "SELECT app.fail($1::bigint, $2::text, $3::text, $4::bool, $5::bigint)");
        assert!(call.is_fail() && !call.retryable);
        assert_eq!(call.retry_after_ms, Some(RETRY_AFTER_MS_MAX as i64), "clamped to 30 days");
        assert!(matches!(AckCall::complete("Bad", 1, "x", None), Err(Error::Invalid { .. })));
        let Err(Error::Invalid { field, .. }) = AckCall::complete("dray", u64::MAX, "x", None) else { panic!() };
        assert_eq!(field, "job");
        assert_eq!(Ended::parse("retrying").unwrap(), Ended::Retrying);
        assert!(Ended::parse("running").is_err());
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
