//! `LockStore` for PostgreSQL (migration 10), deciding exactly as the embedded store does with
//! `dray_core::lock`.
//!
//! Each operation is one transaction: lock the lock's row (an acquire creates it), read its
//! holders, and read the time, pipelined in that order so the time (`clock_timestamp()`, under
//! `TimeSource::Database`) is read after the row lock is held, as leases read theirs: a call that
//! waited for the lock never grants or judges a hold by the instant it started waiting. An acquire
//! also draws a fencing token from the jobs' sequence after the row lock, so a later grant on the
//! same lock always has a larger token, whichever node grants it. The decision is the core's; the
//! lock's new state is written back whole (at most `Limits::LOCK_PERMITS_MAX` holders), or the
//! lock's rows are deleted once nobody holds it.

use std::time::SystemTime;

use dray_core::lock::{Holder, Lock};
use dray_core::{FencingToken, Limits, LockName, LockOwner, Timestamp};
use dray_store::{
    Error, LockAcquire, LockForceRelease, LockGranted, LockList, LockRelease, LockRenew, LockState, LockStore,
    lock_refused,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

// `TX_ATTEMPTS_MAX`, `Error`, `Fail` and `db_error` are named by `in_transaction!`.
use super::{Fail, PostgresStore, TX_ATTEMPTS_MAX, Transaction, ms_floor, prep};
use crate::error::{corrupt, db_error};
use crate::row::{from_time, get, ms_to_sql, to_time, token_from_sql, token_to_sql};

/// The SQLSTATE `<schema>.fence(resource, token)` raises for a token older than the newest the
/// resource has seen (class `DR`: Dray's own, used by no PostgreSQL condition).
pub const FENCE_SQLSTATE: &str = "DR001";

const HOLDER_COLUMNS: &str = "owner, token, acquired_at, deadline, ttl_ms";

fn holder_from_row(row: &Row) -> Result<Holder, Error> {
    let owner: String = get(row, "owner")?;
    Ok(Holder {
        owner: LockOwner::new(&owner).map_err(|e| corrupt(format!("lock owner {owner:?}: {}", e.message)))?,
        token: token_from_sql(get(row, "token")?)?,
        acquired_at: from_time(get(row, "acquired_at")?),
        deadline: from_time(get(row, "deadline")?),
        ttl_ms: u64::try_from(get::<i64>(row, "ttl_ms")?).map_err(|_| corrupt("a negative lock ttl_ms"))?,
    })
}

fn permits_from(v: i32) -> Result<u32, Error> {
    u32::try_from(v).ok().filter(|p| *p >= 1).ok_or_else(|| corrupt(format!("lock permits {v}")))
}

/// What an operation needs before it runs the core's rule.
enum Start {
    /// An acquire creates the row when missing.
    Acquire { permits: u32 },
    /// Every other change needs the row to exist.
    Existing,
}

impl PostgresStore {
    /// Locks the lock's row and reads its state, the time after the row lock and (for an acquire)
    /// a fresh token, in one round trip. `None`: no row (nobody holds the lock). Also says whether
    /// this call created the row.
    async fn lock_load(
        &self,
        tx: &Transaction<'_>,
        name: &LockName,
        now: Timestamp,
        start: Start,
    ) -> Result<Option<(Lock, Timestamp, Option<FencingToken>, bool)>, Fail> {
        let s = &self.config.schema;
        let row_sql = match start {
            Start::Acquire { .. } => format!(
                "INSERT INTO {s}.locks AS l (name, permits) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET name = excluded.name
                 RETURNING l.permits, (l.xmax = 0) AS created"
            ),
            Start::Existing => format!("SELECT permits, false AS created FROM {s}.locks WHERE name = $1 FOR UPDATE"),
        };
        let holders_sql = format!("SELECT {HOLDER_COLUMNS} FROM {s}.lock_holders WHERE name = $1 ORDER BY token");
        let token_sql = format!("SELECT nextval('{s}.fencing_tokens') AS token");
        let (row_st, holders_st, token_st, clock_st) = tokio::try_join!(
            prep(tx, &row_sql),
            prep(tx, &holders_sql),
            prep(tx, &token_sql),
            self.clock_statement(tx),
        )?;
        let name_text = name.as_str();
        let acquire = matches!(start, Start::Acquire { .. });
        let permits_param = match start {
            Start::Acquire { permits } => Some(permits as i32),
            Start::Existing => None,
        };
        // Pipelined in this order: the holders, the token and the clock after the row lock.
        let row_fut = async {
            match &permits_param {
                Some(p) => Ok::<_, Fail>(Some(tx.query_one(&row_st, &[&name_text, p]).await?)),
                None => Ok(tx.query_opt(&row_st, &[&name_text]).await?),
            }
        };
        let holders_fut = async { Ok::<_, Fail>(tx.query(&holders_st, &[&name_text]).await?) };
        let token_fut =
            async { if acquire { Ok::<_, Fail>(Some(tx.query_one(&token_st, &[]).await?)) } else { Ok(None) } };
        let clock_fut = async {
            match &clock_st {
                Some(st) => Ok::<_, Fail>(Some(tx.query_one(st, &[]).await?)),
                None => Ok(None),
            }
        };
        let (row, holders, token, clock) = tokio::try_join!(row_fut, holders_fut, token_fut, clock_fut)?;
        let now = match clock {
            Some(row) => ms_floor(row.try_get::<_, i64>(0).map_err(|e| corrupt(format!("clock: {e}")))?),
            None => now,
        };
        let Some(row) = row else { return Ok(None) };
        let permits = permits_from(get(&row, "permits")?)?;
        let created: bool = get(&row, "created")?;
        let holders = holders.iter().map(holder_from_row).collect::<Result<Vec<_>, _>>()?;
        let token = token.map(|row| token_from_sql(get(&row, "token")?)).transpose()?;
        Ok(Some((Lock { name: name.clone(), permits, holders }, now, token, created)))
    }

    /// Writes the lock's new state: its holders replaced, or its rows deleted when free.
    async fn lock_save(&self, tx: &Transaction<'_>, lock: &Lock, now: Timestamp) -> Result<(), Fail> {
        let s = &self.config.schema;
        let name = lock.name.as_str();
        let delete_holders = prep(tx, &format!("DELETE FROM {s}.lock_holders WHERE name = $1")).await?;
        if lock.is_free(now) {
            let delete_lock = prep(tx, &format!("DELETE FROM {s}.locks WHERE name = $1")).await?;
            let by_name: [&(dyn ToSql + Sync); 1] = [&name];
            tokio::try_join!(tx.execute(&delete_holders, &by_name), tx.execute(&delete_lock, &by_name))?;
            return Ok(());
        }
        let live: Vec<&Holder> = lock.live(now).collect();
        let owners: Vec<&str> = live.iter().map(|h| h.owner.as_str()).collect();
        let tokens: Vec<i64> = live.iter().map(|h| token_to_sql(h.token)).collect();
        let acquired: Vec<SystemTime> = live.iter().map(|h| to_time(h.acquired_at)).collect();
        let deadlines: Vec<SystemTime> = live.iter().map(|h| to_time(h.deadline)).collect();
        let ttls: Vec<i64> = live.iter().map(|h| ms_to_sql(h.ttl_ms)).collect();
        let permits = lock.permits as i32;
        let update_sql = format!("UPDATE {s}.locks SET permits = $2 WHERE name = $1");
        let insert_sql = format!(
            "INSERT INTO {s}.lock_holders (name, {HOLDER_COLUMNS})
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::timestamptz[], $5::timestamptz[], $6::bigint[])"
        );
        let (update_lock, insert_holders) = tokio::try_join!(prep(tx, &update_sql), prep(tx, &insert_sql))?;
        let by_name: [&(dyn ToSql + Sync); 1] = [&name];
        let update_params: [&(dyn ToSql + Sync); 2] = [&name, &permits];
        let insert_params: [&(dyn ToSql + Sync); 6] = [&name, &owners, &tokens, &acquired, &deadlines, &ttls];
        // In this order on the connection: the old holders go before the new ones arrive.
        tokio::try_join!(
            tx.execute(&update_lock, &update_params),
            tx.execute(&delete_holders, &by_name),
            tx.execute(&insert_holders, &insert_params),
        )?;
        Ok(())
    }

    /// At the bound of held locks, forgets the locks nobody holds any more and counts again.
    async fn locks_bound(&self, tx: &Transaction<'_>, now: Timestamp) -> Result<(), Fail> {
        let s = &self.config.schema;
        let count_st = prep(tx, &format!("SELECT count(*) AS count FROM {s}.locks")).await?;
        let count: i64 = get(&tx.query_one(&count_st, &[]).await?, "count")?;
        if count <= Limits::LOCKS_MAX as i64 {
            return Ok(());
        }
        let sweep = prep(
            tx,
            &format!(
                "WITH free AS (
                     DELETE FROM {s}.locks AS l
                     WHERE NOT EXISTS (SELECT 1 FROM {s}.lock_holders h WHERE h.name = l.name AND h.deadline > $1)
                       AND l.ctid IN (SELECT ctid FROM {s}.locks FOR UPDATE SKIP LOCKED)
                     RETURNING l.name
                 )
                 DELETE FROM {s}.lock_holders h USING free WHERE h.name = free.name"
            ),
        )
        .await?;
        tx.execute(&sweep, &[&to_time(now)]).await?;
        let count: i64 = get(&tx.query_one(&count_st, &[]).await?, "count")?;
        if count > Limits::LOCKS_MAX as i64 {
            return Err(Error::TooManyLocks.into());
        }
        Ok(())
    }

    async fn lock_acquire_in(&self, tx: &Transaction<'_>, p: &LockAcquire) -> Result<LockGranted, Fail> {
        let start = Start::Acquire { permits: p.permits };
        let (mut lock, now, token, created) =
            self.lock_load(tx, &p.name, p.now, start).await?.ok_or_else(|| corrupt("an upsert returned no row"))?;
        let token = token.ok_or_else(|| corrupt("an acquire drew no token"))?;
        let granted = lock
            .acquire(&p.owner, p.ttl_ms, p.permits, now, || token)
            .map_err(|refusal| lock_refused(&p.name, refusal))?;
        if created {
            self.locks_bound(tx, now).await?;
        }
        self.lock_save(tx, &lock, now).await?;
        Ok(LockGranted { holder: granted.holder, new: granted.new, now })
    }

    async fn lock_renew_in(&self, tx: &Transaction<'_>, p: &LockRenew) -> Result<LockGranted, Fail> {
        let loaded = self.lock_load(tx, &p.name, p.now, Start::Existing).await?;
        let (mut lock, now) = match loaded {
            Some((lock, now, _, _)) => (lock, now),
            None => (Lock::new(p.name.clone(), 1), p.now),
        };
        let granted = lock.renew(&p.owner, p.token, p.ttl_ms, now).map_err(|refusal| lock_refused(&p.name, refusal))?;
        self.lock_save(tx, &lock, now).await?;
        Ok(LockGranted { holder: granted.holder, new: false, now })
    }

    async fn lock_release_in(&self, tx: &Transaction<'_>, p: &LockRelease) -> Result<bool, Fail> {
        let Some((mut lock, now, _, _)) = self.lock_load(tx, &p.name, p.now, Start::Existing).await? else {
            return Ok(false);
        };
        let released = lock.release(&p.owner, p.token, now).map_err(|refusal| lock_refused(&p.name, refusal))?;
        if released {
            self.lock_save(tx, &lock, now).await?;
        }
        Ok(released)
    }

    async fn lock_force_release_in(&self, tx: &Transaction<'_>, p: &LockForceRelease) -> Result<Vec<Holder>, Fail> {
        let Some((mut lock, now, _, _)) = self.lock_load(tx, &p.name, p.now, Start::Existing).await? else {
            return Ok(Vec::new());
        };
        let gone = lock.force_release(p.token, now);
        if !gone.is_empty() {
            self.lock_save(tx, &lock, now).await?;
        }
        Ok(gone)
    }

    /// Locks with their live holders, by name: `name` alone, or a page after `after`.
    async fn locks_read(
        &self,
        name: Option<&LockName>,
        after: Option<&LockName>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LockState>, Error> {
        let s = &self.config.schema;
        // The instant reads judge holds by: the test's `now`, or the database's clock.
        let sql = format!(
            "WITH t AS (SELECT coalesce($2::timestamptz, clock_timestamp()) AS now),
             picked AS (
                 SELECT l.name, l.permits FROM {s}.locks l, t
                 WHERE ($1::text IS NULL OR l.name = $1) AND ($3::text IS NULL OR l.name > $3)
                   AND EXISTS (SELECT 1 FROM {s}.lock_holders h WHERE h.name = l.name AND h.deadline > t.now)
                 ORDER BY l.name LIMIT $4
             )
             SELECT p.name, p.permits, h.owner, h.token, h.acquired_at, h.deadline, h.ttl_ms,
                    floor(extract(epoch FROM t.now) * 1000)::bigint AS now_ms
             FROM picked p CROSS JOIN t
             JOIN {s}.lock_holders h ON h.name = p.name AND h.deadline > t.now
             ORDER BY p.name, h.token"
        );
        let name = name.map(|n| n.as_str());
        let after = after.map(|n| n.as_str());
        let now_param = self.now_param(now);
        let limit = limit as i64;
        let client = self.client().await?;
        let st = client.prepare_cached(&sql).await.map_err(db_error)?;
        let rows = client.query(&st, &[&name, &now_param, &after, &limit]).await.map_err(db_error)?;
        let mut out: Vec<LockState> = Vec::new();
        for row in &rows {
            let name: String = get(row, "name")?;
            let holder = holder_from_row(row)?;
            match out.last_mut() {
                Some(last) if last.lock.name.as_str() == name => last.lock.holders.push(holder),
                _ => {
                    let lock_name = LockName::new(&name).map_err(|e| corrupt(format!("lock name: {}", e.message)))?;
                    let permits = permits_from(get(row, "permits")?)?;
                    let now = Timestamp(get(row, "now_ms")?);
                    out.push(LockState { lock: Lock { name: lock_name, permits, holders: vec![holder] }, now });
                }
            }
        }
        Ok(out)
    }
}

impl LockStore for PostgresStore {
    async fn lock_acquire(&self, p: LockAcquire) -> Result<LockGranted, Error> {
        p.validate()?;
        in_transaction!(self, "lock_acquire", |tx| self.lock_acquire_in(&tx, &p))
    }

    async fn lock_renew(&self, p: LockRenew) -> Result<LockGranted, Error> {
        p.validate()?;
        in_transaction!(self, "lock_renew", |tx| self.lock_renew_in(&tx, &p))
    }

    async fn lock_release(&self, p: LockRelease) -> Result<bool, Error> {
        in_transaction!(self, "lock_release", |tx| self.lock_release_in(&tx, &p))
    }

    async fn lock_force_release(&self, p: LockForceRelease) -> Result<Vec<Holder>, Error> {
        in_transaction!(self, "lock_force_release", |tx| self.lock_force_release_in(&tx, &p))
    }

    async fn lock_get(&self, name: &LockName, now: Timestamp) -> Result<Option<LockState>, Error> {
        Ok(self.locks_read(Some(name), None, 1, now).await?.pop())
    }

    async fn lock_list(&self, p: LockList) -> Result<Vec<LockState>, Error> {
        p.validate()?;
        self.locks_read(None, p.after.as_ref(), p.limit, p.now).await
    }
}
