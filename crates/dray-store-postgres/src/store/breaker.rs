//! Circuit breakers in the PostgreSQL store (migration 11, `<schema>.breakers`: one row per queue
//! that has a breaker, holding its policy, its state and its window), deciding exactly as the
//! embedded store does with `dray_core::breaker`.
//!
//! Every decision is made in Rust on a row read under its lock (`FOR UPDATE`) and written back in
//! the same transaction, so the outcomes of every node's acks and expiries count towards one
//! breaker, and the probes a half-open breaker grants are counted across nodes. A queue without a
//! breaker has no row: its leases pay one pipelined probe of an empty index (`BLOCKED`), its acks
//! a pipelined select that finds nothing, and nothing is locked.
//!
//! Lock order: job rows first (leases skip locked ones, acks and expiries lock theirs), then
//! breaker rows in queue order; configuring a queue locks its queue row and then writes its
//! breaker row. No transaction takes them the other way round.

use std::collections::HashMap;
use std::time::SystemTime;

use dray_core::breaker::{BUCKETS, Bucket};
use dray_core::{Breaker, BreakerOutcome, BreakerPolicy, BreakerState, Invalid, QueueName, Timestamp};
use dray_store::{BreakerForce, Error};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Fail, PostgresStore, Transaction, prep};
use crate::error::corrupt;
use crate::row::{from_time, get, ms_to_sql, to_time};

/// The breaker's columns, named `b_*`, from a `breakers b` that may be outer-joined (all NULL: no
/// breaker).
pub(crate) const BREAKER_COLUMNS: &str = "b.failure_ratio AS b_failure_ratio, b.window_ms AS b_window_ms, \
     b.min_attempts AS b_min_attempts, b.open_ms AS b_open_ms, b.probes AS b_probes, b.state AS b_state, \
     b.forced AS b_forced, b.changed_at AS b_changed_at, b.half_open_at AS b_half_open_at, \
     b.probes_granted AS b_probes_granted, b.probes_succeeded AS b_probes_succeeded, b.to_closed AS b_to_closed, \
     b.to_open AS b_to_open, b.to_half_open AS b_to_half_open, b.bucket_starts AS b_bucket_starts, \
     b.bucket_attempts AS b_bucket_attempts, b.bucket_failures AS b_bucket_failures";

/// The queues of `$1` whose breaker is not closed: sent with every lease, pipelined after the
/// lease statement (which passes those queues over), so only they take the locked probe path.
const BLOCKED: &str = "SELECT queue FROM {s}.breakers WHERE queue = ANY($1::text[]) AND state <> 'closed'";

/// The breakers of the queues `$1`, locked, in queue order.
const LOCK: &str = "SELECT b.queue, {breaker_columns} FROM {s}.breakers b WHERE b.queue = ANY($1::text[]) \
     ORDER BY b.queue FOR UPDATE";

/// The breakers of the queues of the jobs `$1`, locked, in queue order: pipelined with an ack's
/// job locks, so a queue without a breaker costs no round trip.
const LOCK_FOR_JOBS: &str = "SELECT b.queue, {breaker_columns} FROM {s}.breakers b \
     WHERE b.queue IN (SELECT j.queue FROM {s}.jobs j WHERE j.id = ANY($1::bigint[])) ORDER BY b.queue FOR UPDATE";

/// A breaker's state after a decision (its policy is written only by [`PUT`]).
const SAVE: &str = "
UPDATE {s}.breakers SET state = $2::text, forced = $3::bool, changed_at = $4::timestamptz,
    half_open_at = $5::timestamptz, probes_granted = $6::int, probes_succeeded = $7::int, to_closed = $8::bigint,
    to_open = $9::bigint, to_half_open = $10::bigint, bucket_starts = $11::bigint[], bucket_attempts = $12::int[],
    bucket_failures = $13::int[]
WHERE queue = $1::text";

/// A queue's breaker policy, new (closed, empty) or changed (its state kept, its window emptied:
/// the buckets may have changed width).
const PUT: &str = "
INSERT INTO {s}.breakers AS b (queue, failure_ratio, window_ms, min_attempts, open_ms, probes)
VALUES ($1::text, $2::float8, $3::bigint, $4::int, $5::bigint, $6::int)
ON CONFLICT (queue) DO UPDATE SET failure_ratio = EXCLUDED.failure_ratio, window_ms = EXCLUDED.window_ms,
    min_attempts = EXCLUDED.min_attempts, open_ms = EXCLUDED.open_ms, probes = EXCLUDED.probes,
    bucket_starts = '{}', bucket_attempts = '{}', bucket_failures = '{}'";

const DELETE: &str = "DELETE FROM {s}.breakers WHERE queue = $1::text";

const QUEUE_EXISTS: &str = "SELECT 1 FROM {s}.queues WHERE name = $1::text";

/// The breaker statements, rendered for one schema.
#[derive(Debug)]
pub(crate) struct BreakerSql {
    pub blocked: String,
    pub lock: String,
    pub lock_for_jobs: String,
    pub save: String,
    pub put: String,
    pub delete: String,
    pub queue_exists: String,
}

impl BreakerSql {
    pub fn new(schema: &str) -> BreakerSql {
        let r = |sql: &str| sql.replace("{breaker_columns}", BREAKER_COLUMNS).replace("{s}", schema);
        BreakerSql {
            blocked: r(BLOCKED),
            lock: r(LOCK),
            lock_for_jobs: r(LOCK_FOR_JOBS),
            save: r(SAVE),
            put: r(PUT),
            delete: r(DELETE),
            queue_exists: r(QUEUE_EXISTS),
        }
    }
}

/// The breaker policy of a row with [`BREAKER_COLUMNS`] (`None`: the queue has none).
pub(crate) fn policy_from_row(row: &Row) -> Result<Option<BreakerPolicy>, Error> {
    let Some(failure_ratio) = get::<Option<f64>>(row, "b_failure_ratio")? else { return Ok(None) };
    let u64_of = |column: &str| -> Result<u64, Error> {
        u64::try_from(get::<i64>(row, column)?).map_err(|_| corrupt(format!("a negative {column}")))
    };
    let u32_of = |column: &str| -> Result<u32, Error> {
        u32::try_from(get::<i32>(row, column)?).map_err(|_| corrupt(format!("a negative {column}")))
    };
    Ok(Some(BreakerPolicy {
        failure_ratio,
        window_ms: u64_of("b_window_ms")?,
        min_attempts: u32_of("b_min_attempts")?,
        open_ms: u64_of("b_open_ms")?,
        probes: u32_of("b_probes")?,
    }))
}

/// The breaker state of a row with [`BREAKER_COLUMNS`] (`None`: the queue has no breaker).
pub(crate) fn breaker_from_row(row: &Row) -> Result<Option<Breaker>, Error> {
    let Some(state) = get::<Option<String>>(row, "b_state")? else { return Ok(None) };
    let count = |column: &str| -> Result<u32, Error> {
        u32::try_from(get::<i32>(row, column)?).map_err(|_| corrupt(format!("a negative {column}")))
    };
    let total = |column: &str| -> Result<u64, Error> {
        u64::try_from(get::<i64>(row, column)?).map_err(|_| corrupt(format!("a negative {column}")))
    };
    let mut b = Breaker::new();
    b.state = BreakerState::parse(&state).ok_or_else(|| corrupt(format!("breaker state {state:?}")))?;
    b.forced = get(row, "b_forced")?;
    b.changed_at = get::<Option<SystemTime>>(row, "b_changed_at")?.map(from_time);
    b.half_open_at = get::<Option<SystemTime>>(row, "b_half_open_at")?.map(from_time);
    b.probes_granted = count("b_probes_granted")?;
    b.probes_succeeded = count("b_probes_succeeded")?;
    b.transitions = [total("b_to_closed")?, total("b_to_open")?, total("b_to_half_open")?];
    let starts: Vec<i64> = get(row, "b_bucket_starts")?;
    let attempts: Vec<i32> = get(row, "b_bucket_attempts")?;
    let failures: Vec<i32> = get(row, "b_bucket_failures")?;
    if starts.len() == BUCKETS && attempts.len() == BUCKETS && failures.len() == BUCKETS {
        for (i, slot) in b.window.iter_mut().enumerate() {
            *slot = Bucket {
                start: starts[i],
                attempts: u32::try_from(attempts[i]).unwrap_or(0),
                failures: u32::try_from(failures[i]).unwrap_or(0),
            };
        }
    }
    Ok(Some(b))
}

/// A breaker read under its row lock, and what it was when read (written back only if changed).
#[derive(Debug)]
pub(crate) struct Held {
    pub policy: BreakerPolicy,
    pub breaker: Breaker,
    read: Breaker,
}

/// The locked breakers of a transaction, by queue name.
pub(crate) type HeldBreakers = HashMap<String, Held>;

fn held_from_rows(rows: &[Row]) -> Result<HeldBreakers, Error> {
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let queue: String = get(row, "queue")?;
        let policy = policy_from_row(row)?.ok_or_else(|| corrupt("a breaker row without a policy"))?;
        let breaker = breaker_from_row(row)?.ok_or_else(|| corrupt("a breaker row without a state"))?;
        out.insert(queue, Held { policy, read: breaker.clone(), breaker });
    }
    Ok(out)
}

/// Owned parameters of [`SAVE`].
struct SaveParams {
    queue: String,
    state: &'static str,
    forced: bool,
    changed_at: Option<SystemTime>,
    half_open_at: Option<SystemTime>,
    probes_granted: i32,
    probes_succeeded: i32,
    transitions: [i64; 3],
    starts: Vec<i64>,
    attempts: Vec<i32>,
    failures: Vec<i32>,
}

impl SaveParams {
    fn of(queue: &str, b: &Breaker) -> SaveParams {
        let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        SaveParams {
            queue: queue.to_owned(),
            state: b.state.as_str(),
            forced: b.forced,
            changed_at: b.changed_at.map(to_time),
            half_open_at: b.half_open_at.map(to_time),
            probes_granted: int(b.probes_granted),
            probes_succeeded: int(b.probes_succeeded),
            transitions: b.transitions.map(big),
            starts: b.window.iter().map(|w| w.start).collect(),
            attempts: b.window.iter().map(|w| int(w.attempts)).collect(),
            failures: b.window.iter().map(|w| int(w.failures)).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 13] {
        [
            &self.queue,
            &self.state,
            &self.forced,
            &self.changed_at,
            &self.half_open_at,
            &self.probes_granted,
            &self.probes_succeeded,
            &self.transitions[0],
            &self.transitions[1],
            &self.transitions[2],
            &self.starts,
            &self.attempts,
            &self.failures,
        ]
    }
}

impl PostgresStore {
    /// Locks the breakers of `queues` (sorted), by queue.
    pub(super) async fn breakers_lock(&self, tx: &Transaction<'_>, queues: &[&str]) -> Result<HeldBreakers, Fail> {
        let st = prep(tx, &self.sql.breaker.lock).await?;
        let rows = tx.query(&st, &[&queues]).await?;
        Ok(held_from_rows(&rows)?)
    }

    /// Locks the breakers of the queues of jobs `ids`, by queue.
    pub(super) async fn breakers_lock_for_jobs(&self, tx: &Transaction<'_>, ids: &[i64]) -> Result<HeldBreakers, Fail> {
        let st = prep(tx, &self.sql.breaker.lock_for_jobs).await?;
        let rows = tx.query(&st, &[&ids]).await?;
        Ok(held_from_rows(&rows)?)
    }

    /// Of `queues`, those whose breaker is not closed (no lock).
    pub(super) async fn breakers_blocked(&self, tx: &Transaction<'_>, queues: &[&str]) -> Result<Vec<String>, Fail> {
        let st = prep(tx, &self.sql.breaker.blocked).await?;
        let rows = tx.query(&st, &[&queues]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Counts outcomes `(queue, leased_at, outcome)` in order towards the held breakers, then
    /// writes back those that changed.
    pub(super) async fn breakers_record(
        &self,
        tx: &Transaction<'_>,
        mut held: HeldBreakers,
        now: Timestamp,
        outcomes: &[(QueueName, Timestamp, BreakerOutcome)],
    ) -> Result<(), Fail> {
        if held.is_empty() {
            return Ok(());
        }
        for (queue, leased_at, outcome) in outcomes {
            if let Some(h) = held.get_mut(queue.as_str()) {
                h.breaker.record(&h.policy, now, *leased_at, *outcome);
            }
        }
        self.breakers_save(tx, &held).await
    }

    /// Writes back the held breakers that changed.
    pub(super) async fn breakers_save(&self, tx: &Transaction<'_>, held: &HeldBreakers) -> Result<(), Fail> {
        let changed: Vec<SaveParams> =
            held.iter().filter(|(_, h)| h.breaker != h.read).map(|(q, h)| SaveParams::of(q, &h.breaker)).collect();
        if changed.is_empty() {
            return Ok(());
        }
        let st = prep(tx, &self.sql.breaker.save).await?;
        for p in &changed {
            let n = tx.execute(&st, &p.params()).await?;
            if n != 1 {
                return Err(Fail::Retry("a locked breaker row vanished"));
            }
        }
        Ok(())
    }

    /// Writes a queue's breaker policy after a configure changed it from `before` (the queue's
    /// row is locked by the caller).
    pub(super) async fn breaker_configure(
        &self,
        tx: &Transaction<'_>,
        queue: &str,
        before: Option<&BreakerPolicy>,
        after: Option<&BreakerPolicy>,
    ) -> Result<(), Fail> {
        match after {
            _ if before == after => Ok(()),
            None => {
                let st = prep(tx, &self.sql.breaker.delete).await?;
                tx.execute(&st, &[&queue]).await?;
                Ok(())
            }
            Some(p) => {
                let st = prep(tx, &self.sql.breaker.put).await?;
                let (window, open) = (ms_to_sql(p.window_ms), ms_to_sql(p.open_ms));
                let min_attempts = i32::try_from(p.min_attempts).unwrap_or(i32::MAX);
                let probes = i32::try_from(p.probes).unwrap_or(i32::MAX);
                tx.execute(&st, &[&queue, &p.failure_ratio, &window, &min_attempts, &open, &probes]).await?;
                Ok(())
            }
        }
    }

    pub(super) async fn breaker_force_in(&self, tx: &Transaction<'_>, p: &BreakerForce) -> Result<Breaker, Fail> {
        let queue = p.queue.as_str();
        let queues = [queue];
        let (now, mut held) = tokio::try_join!(self.now(tx, p.now), self.breakers_lock(tx, &queues))?;
        let Some(h) = held.get_mut(queue) else {
            let st = prep(tx, &self.sql.breaker.queue_exists).await?;
            if tx.query_opt(&st, &[&queue]).await?.is_none() {
                return Err(Error::QueueNotFound(p.queue.clone()).into());
            }
            return Err(Error::from(Invalid::new("breaker", format!("queue {queue} has no breaker configured"))).into());
        };
        h.breaker.force(p.open, now);
        let breaker = h.breaker.clone();
        self.breakers_save(tx, &held).await?;
        Ok(breaker)
    }
}
