//! Acks made in SQL (migration 13: `<schema>.complete()` and `<schema>.fail()`, called by an
//! application inside its own transaction), as the servers learn of them: each accepted call
//! leaves a row in `<schema>.sql_acks`, committed with the caller's transaction, and
//! [`PostgresStore::sql_acks_drain`] takes the oldest rows out (each by exactly one caller, also
//! with several nodes draining at once) so a server can count and log them as it does the acks it
//! served over HTTP.

use std::time::SystemTime;

use dray_core::{JobId, JobState, LeaseId, QueueName};
use dray_store::{Acked, Error};

use super::{Fail, PostgresStore, TX_ATTEMPTS_MAX};
use crate::error::{corrupt, db_error};
use crate::row::{from_time, get, id_from_sql};

/// The SQLSTATE `<schema>.complete()` and `<schema>.fail()` raise for a lease that is not the
/// job's current one: never granted, or the job moved on or finished (class `DR`, Dray's own).
pub const STALE_LEASE_SQLSTATE: &str = "DR002";
/// The SQLSTATE `<schema>.complete()` and `<schema>.fail()` raise for the job's current lease
/// whose deadline has passed on the database's clock.
pub const LEASE_EXPIRED_SQLSTATE: &str = "DR003";

/// Takes out the oldest rows, at most `$1`, skipping rows another drain holds: each row goes to
/// one drain.
const DRAIN: &str = "
DELETE FROM {s}.sql_acks a
WHERE a.id IN (SELECT id FROM {s}.sql_acks ORDER BY id LIMIT $1::bigint FOR UPDATE SKIP LOCKED)
RETURNING a.id, a.job_id, a.lease_id, a.queue, a.state, a.attempt, a.leased_at, a.at, a.retry_at";

/// One ack made in SQL: what an HTTP ack of the same job answered with, plus the job, the lease
/// and the instant it was applied (the database's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlAck {
    pub job: JobId,
    pub lease: LeaseId,
    pub at: dray_core::Timestamp,
    pub acked: Acked,
}

impl PostgresStore {
    /// Takes out up to `limit` acks made through `<schema>.complete()`/`fail()` since the last
    /// drain, oldest first. Every such ack is returned by exactly one call on any node (rows
    /// another call is taking are skipped, not waited for); an ack whose drain fails to commit
    /// comes back at the next.
    ///
    /// Cancel safety: one transaction; dropping the future part-way rolls it back, and the rows
    /// come back at the next drain.
    pub async fn sql_acks_drain(&self, limit: usize) -> Result<Vec<SqlAck>, Error> {
        in_transaction!(self, "sql_acks_drain", |tx| self.drain_in(&tx, limit))
    }

    /// The drain in one transaction with the settling of the drained jobs' dependents: an ack
    /// made in SQL finishes a job without knowing its dependents, so they are released (or
    /// cancelled) here, at most a drain's period later, and never lost (the drained rows come
    /// back if this does not commit).
    async fn drain_in(&self, tx: &super::Transaction<'_>, limit: usize) -> Result<Vec<SqlAck>, Fail> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = DRAIN.replace("{s}", &self.config.schema);
        let st = super::prep(tx, &sql).await?;
        let rows = tx.query(&st, &[&limit]).await?;
        let acks = acks_of(&rows)?;
        let finished: Vec<i64> =
            acks.iter().filter(|a| a.acked.state.is_finished()).filter_map(|a| crate::row::id_to_sql(a.job)).collect();
        if let Some(now) = acks.iter().map(|a| a.at).max()
            && !finished.is_empty()
        {
            self.dependents_settle(tx, finished, now).await?;
        }
        Ok(acks)
    }
}

fn acks_of(rows: &[tokio_postgres::Row]) -> Result<Vec<SqlAck>, Error> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let queue: String = get(row, "queue")?;
        let state: String = get(row, "state")?;
        let attempt: i32 = get(row, "attempt")?;
        let id: i64 = get(row, "id")?;
        out.push((
            id,
            SqlAck {
                job: id_from_sql(get(row, "job_id")?)?,
                lease: LeaseId(u64::from_ne_bytes(get::<i64>(row, "lease_id")?.to_ne_bytes())),
                at: from_time(get(row, "at")?),
                acked: Acked {
                    state: JobState::parse(&state).ok_or_else(|| corrupt(format!("sql_acks state {state:?}")))?,
                    retry_at: get::<Option<SystemTime>>(row, "retry_at")?.map(from_time),
                    queue: QueueName::new(&queue).map_err(|e| corrupt(format!("sql_acks queue {queue:?}: {e}")))?,
                    attempt: u32::try_from(attempt).map_err(|_| corrupt(format!("sql_acks attempt {attempt}")))?,
                    leased_at: from_time(get(row, "leased_at")?),
                    released: Vec::new(),
                },
            },
        ));
    }
    // Oldest first: `RETURNING` keeps no order.
    out.sort_by_key(|(id, _)| *id);
    Ok(out.into_iter().map(|(_, a)| a).collect())
}
