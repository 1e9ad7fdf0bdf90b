//! `PostgresStore`: the [`Store`] contract on PostgreSQL.
//!
//! Every operation that changes jobs is one transaction shaped the same way:
//!
//! 1. read the rows it may change under a row lock, and the transaction's `now` (pipelined: one
//!    round trip);
//! 2. decide every change in Rust with `dray_core::transition`, exactly as the embedded store does
//!    (the row becomes a `Job` without history: no transition needs it);
//! 3. write the results back in a few batched statements (pipelined: one round trip), each update
//!    guarded in SQL by the version read and, for acks and heartbeats, by `state = 'running' AND
//!    lease_id = $lease`;
//! 4. commit (`synchronous_commit = on`): only then is the caller answered.
//!
//! If a guard matches fewer rows than were decided, or PostgreSQL reports a serialization failure
//! or deadlock, the whole transaction runs again from step 1; the new attempt sees the new state
//! and answers exactly as the embedded store would (a stale lease, a duplicate).

use dray_core::json::same_value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction};
use dray_core::dependency::Verdict;
use dray_core::transition::EventKind;
use dray_core::{
    Effect, Event, FencingToken, HistoryEntry, Job, JobId, JobState, LeaseId, Limits, NewJob, Payload, QueueName,
    Rejection, Schedule, ScheduleName, Transition, transition,
};
use dray_store::{
    Acked, DeadDiscard, DeadRedrive, DeadSelection, Error, Expired, Inserted, JobAck, JobCancel, JobFilter, JobInsert,
    JobLease, JobList, JobPage, JobPromote, JobStep, LeaseExtend, LeaseExtended, LeasedJob, Maintain, PayloadCheck,
    PayloadSchema, QueueConfig, QueueConfigure, QueueDelete, QueueDeleted, QueueStats, Redriven, ScheduleDelete,
    SchedulePause, SchedulePut, ScheduleSaved, ScheduleTrigger, SchedulesTick, StepRecorded, Store, Ticked,
    payload_checked,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use crate::config::{PostgresConfig, TimeSource};
use crate::error::{ConnectError, Fail, corrupt, db_error, pool_error};
use crate::leader::{Fence, Leadership};
use crate::row::{
    get, history_from_row, id_from_sql, id_to_sql, job_from_row, lease_to_sql, ms_to_sql, queue_from_row, state_of,
    stats_from_row, summary_from_row, to_time, token_from_sql, token_to_sql,
};
use crate::sql::{Columns, FilterParams, Sql};

/// How often a transaction is run again after a conflict before the operation gives up with
/// `Unavailable`. Conflicts need a concurrent change of the same rows, so a handful is plenty.
pub(crate) const TX_ATTEMPTS_MAX: u32 = 8;

/// The bytes of checkpoints, progress and results one status update statement carries; a larger
/// batch is split into several statements (PostgreSQL refuses a single value over 1 GiB).
const UPDATE_STATEMENT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The PostgreSQL store. Connect with [`PostgresStore::connect`]; share it behind an `Arc`.
#[derive(Debug)]
pub struct PostgresStore {
    pool: Pool,
    /// Enqueues may hold at most this many of the pool's connections at once, so that leases,
    /// heartbeats and acks always find one free: without it, a flood of producers queues ahead
    /// of the workers in the pool's FIFO and the queue stops draining while it grows.
    enqueue_permits: tokio::sync::Semaphore,
    sql: Sql,
    config: PostgresConfig,
    /// `<schema>_jobs`: notified with the queue's name when a queue gets available jobs.
    channel: String,
    rng: Rng,
    /// Whether this node leads; once an election runs, maintenance calls act only while it does.
    leadership: Leadership,
    /// Checks payloads against queue schemas, once the server has set it.
    payload_check: std::sync::OnceLock<Arc<dyn PayloadCheck>>,
}

/// Connections enqueues may hold at once out of a pool of `pool_size_max`: all but a quarter (at
/// least one kept for the workers when the pool has two or more).
fn enqueue_connections_max(pool_size_max: usize) -> usize {
    let reserved = (pool_size_max / 4).max(1);
    pool_size_max.saturating_sub(reserved).max(1)
}

/// A uniformly random `u64` per call (splitmix64 over an atomic counter), seeded from the OS's
/// randomness through std's `RandomState`: for lease ids and backoff jitter. Lease ids only need
/// to be unguessable and never repeat for a job; 64 random bits per grant do that across restarts
/// and nodes without any shared state.
#[derive(Debug)]
struct Rng(AtomicU64);

impl Rng {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn from_os() -> Rng {
        use std::hash::{BuildHasher, RandomState};
        Rng(AtomicU64::new(RandomState::new().hash_one(0x6472_6179_u64)))
    }

    fn next(&self) -> u64 {
        let mut z = self.0.fetch_add(Self::GAMMA, Ordering::Relaxed).wrapping_add(Self::GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Runs `$body` (an expression of type `impl Future<Output = Result<T, Fail>>` using the
/// transaction `$tx`) in a transaction on a pooled connection, committing on success and running
/// it again on `Fail::Retry`. The whole attempt is bounded by the call timeout: a database that
/// stops answering (a network partition: no error, no reply) gives `Unavailable`, and the
/// connection is discarded rather than handed to the next caller.
///
/// A macro rather than a function: the body borrows the transaction, and a generic async closure
/// could not promise the `Send` future the `Store` trait requires.
macro_rules! in_transaction {
    ($store:expr, $op:literal, |$tx:ident| $body:expr) => {{
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut client = $store.client().await?;
            let attempt = async {
                let $tx = client.transaction().await.map_err(db_error)?;
                let result = $body.await;
                match result {
                    Ok(value) => {
                        $tx.commit().await.map_err(db_error)?;
                        Ok::<_, Fail>(value)
                    }
                    Err(e) => {
                        // Rolled back before answering or running again: dropping the transaction
                        // would only queue the rollback, and the next attempt (on another pooled
                        // connection) or the caller's next call would find its row locks still
                        // held and skip those jobs. A failed rollback closes the connection,
                        // which rolls back too.
                        let _ = $tx.rollback().await;
                        Err(e)
                    }
                }
            };
            match tokio::time::timeout($store.config.call_timeout(), attempt).await {
                Ok(Ok(value)) => break Ok(value),
                Ok(Err(Fail::Store(e))) => break Err(e),
                Ok(Err(Fail::Retry(why))) if attempts < TX_ATTEMPTS_MAX => {
                    tracing::debug!(op = $op, why, attempts, "running a transaction again");
                }
                Ok(Err(Fail::Retry(why))) => {
                    break Err(Error::Unavailable {
                        context: format!("{}: gave up after {attempts} conflicting attempts ({why})", $op),
                        source: None,
                    });
                }
                Err(_) => break Err($store.timed_out(client)),
            }
        }
    }};
}

/// Runs `$body` (a future using the pooled client `$client`, giving `Result<T, Error>`) outside a
/// transaction, bounded by the call timeout like [`in_transaction!`].
macro_rules! on_client {
    ($store:expr, |$client:ident| $body:expr) => {{
        let $client = $store.client().await?;
        match tokio::time::timeout($store.config.call_timeout(), async { $body.await }).await {
            Ok(result) => result,
            Err(_) => Err($store.timed_out($client)),
        }
    }};
}

// After the macros: the modules use them.
mod breaker;
mod flow;
pub(crate) mod lock;
mod schedule;
pub(crate) mod sql_ack;

pub(crate) use breaker::{BREAKER_COLUMNS, BreakerSql, breaker_from_row, policy_from_row};

async fn prep(tx: &Transaction<'_>, sql: &str) -> Result<Statement, Fail> {
    Ok(tx.prepare_cached(sql).await?)
}

async fn prep_client(client: &Object, sql: &str) -> Result<Statement, Error> {
    client.prepare_cached(sql).await.map_err(db_error)
}

/// What the probe path of a lease needs from the lease: its statement, the flow queues asked for
/// (whose locks it holds) and `$now`.
struct Probes<'a> {
    lease_st: &'a Statement,
    flow_configs: &'a [QueueConfig],
    now_param: Option<SystemTime>,
}

fn rejected(job: JobId, r: Rejection) -> Fail {
    Fail::Store(Error::rejected(job, r))
}

/// The next job of a queue to fall due (see [`PostgresStore::jobs_due_next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueNext {
    pub queue: QueueName,
    /// Its `run_at`, on the database's clock.
    pub run_at: dray_core::Timestamp,
    /// Milliseconds from the query until `run_at`, rounded up; 0 when already due.
    pub wait_ms: u64,
}

/// A snapshot of the connection pool (see [`PostgresStore::pool_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool opens (`pool_size_max`).
    pub size_max: usize,
    /// Connections lent to a call now.
    pub in_use: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Calls waiting for a connection.
    pub waiting: usize,
}

impl PostgresStore {
    /// Connects, applies pending migrations (safe when several nodes start at once) and opens a
    /// pool of `pool_size_max` connections, each with `synchronous_commit = on`.
    ///
    /// Cancel safety: dropping the future part-way leaves at most a committed or rolled-back
    /// migration; no store exists until it returns.
    pub async fn connect(config: PostgresConfig) -> Result<PostgresStore, ConnectError> {
        config.validate()?;
        crate::migrate::migrate(&config).await?;
        let connector = config.connector()?;
        let manager = Manager::from_config(
            connector.pg,
            connector.tls,
            // A closed connection is noticed by the driver; a broken one fails its next statement,
            // which reports `Unavailable` (outcome unknown) as it must anyway.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let timeout = Some(config.connect_timeout());
        let pool = Pool::builder(manager)
            .max_size(config.pool_size_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(timeout)
            .create_timeout(timeout)
            .recycle_timeout(timeout)
            .build()
            .map_err(|e| ConnectError::Unavailable {
                context: format!("building the connection pool: {e}"),
                source: None,
            })?;
        // One pooled connection proves the session settings are accepted.
        let client = pool.get().await.map_err(|e| ConnectError::Unavailable {
            context: format!("opening a pooled connection: {e}"),
            source: None,
        })?;
        drop(client);
        Ok(PostgresStore {
            enqueue_permits: tokio::sync::Semaphore::new(enqueue_connections_max(config.pool_size_max)),
            pool,
            sql: Sql::new(&config.schema),
            channel: format!("{}_jobs", config.schema),
            leadership: Leadership::new(&config),
            config,
            rng: Rng::from_os(),
            payload_check: std::sync::OnceLock::new(),
        })
    }

    /// This node's part in the leader election (see [`Leadership`]). Until someone calls
    /// [`Leadership::run`] on it, maintenance calls (`leases_expire`, `jobs_promote`,
    /// `jobs_prune`) act unconditionally, as a single process or a test needs; from then on they
    /// act only while this node leads (a follower's call returns at once, acting on nothing), and
    /// each of their statements checks the term's epoch in SQL.
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// The channel this store notifies (with the queue's name as payload) when a queue gets
    /// available jobs: `<schema>_jobs`.
    pub fn notify_channel(&self) -> &str {
        &self.channel
    }

    /// The settings of one pooled session that the store's guarantees rest on, as
    /// `(name, value)`: `synchronous_commit`, `statement_timeout`, `server_version`. For
    /// diagnostics (`dray doctor`) and tests.
    ///
    /// Cancel safety: read-only.
    pub async fn session_settings(&self) -> Result<Vec<(String, String)>, Error> {
        on_client!(self, |client| async {
            let mut out = Vec::new();
            for name in ["synchronous_commit", "statement_timeout", "server_version"] {
                let row = client.query_one("SELECT current_setting($1::text)", &[&name]).await.map_err(db_error)?;
                out.push((name.to_owned(), get::<String>(&row, "current_setting")?));
            }
            Ok(out)
        })
    }

    /// When the next scheduled or retrying job of each of `queues` falls due, for a node that
    /// wakes its own long-polls at that instant instead of waiting for the leader to promote the
    /// job (a failover would delay it by the leader's TTL). `after` holds a bound per queue
    /// (`None`: any): only jobs due later than it count, so a node that already woke its
    /// waiters for a job that stays waiting (locked by someone else) does not wake them again
    /// for it. Paused queues and queues with no such job are left out. Each answer carries the
    /// time until it is due on the database's clock, measured as the query runs, rounded up:
    /// a timer set for that long when the answer arrives never fires early.
    ///
    /// Cancel safety: read-only.
    pub async fn jobs_due_next(
        &self,
        queues: &[(QueueName, Option<dray_core::Timestamp>)],
        now: dray_core::Timestamp,
    ) -> Result<Vec<DueNext>, Error> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = queues.iter().map(|(q, _)| q.as_str()).collect();
        let after: Vec<Option<SystemTime>> = queues.iter().map(|(_, a)| a.map(to_time)).collect();
        let now = self.now_param(now);
        let rows = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.due_next).await?;
            client.query(&st, &[&names, &after, &now]).await.map_err(db_error)
        })?;
        rows.iter()
            .map(|row| {
                let queue: String = get(row, "queue")?;
                Ok(DueNext {
                    queue: QueueName::new(&queue).map_err(|e| corrupt(format!("queue {queue:?}: {e}")))?,
                    run_at: dray_core::Timestamp(get(row, "run_at_ms")?),
                    wait_ms: u64::try_from(get::<i64>(row, "wait_ms")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// The connection pool's state now, for metrics: a pool that stays fully in use while calls
    /// wait for connections is the first sign that `pool_size_max` is too small.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.pool.status();
        PoolStatus {
            size_max: status.max_size,
            in_use: status.size.saturating_sub(status.available),
            idle: status.available,
            waiting: status.waiting,
        }
    }

    pub(crate) async fn client(&self) -> Result<Object, Error> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A call that got no answer within the call timeout: its connection may be stuck (a dead
    /// peer, a partition), so it leaves the pool and is closed instead of being reused.
    fn timed_out(&self, client: Object) -> Error {
        drop(Object::take(client));
        Error::Unavailable {
            context: format!(
                "no answer from the database within {} ms (statement timeout plus connect timeout)",
                self.config.call_timeout().as_millis()
            ),
            source: None,
        }
    }

    /// `$now` of the SQL statements: `params.now` or NULL (the database's `now()`).
    fn now_param(&self, now: dray_core::Timestamp) -> Option<SystemTime> {
        match self.config.time_source {
            TimeSource::Params => Some(to_time(now)),
            TimeSource::Database => None,
        }
    }

    /// The transaction's `now` for `dray_core::transition`: the same instant the SQL statements
    /// of this transaction compare with.
    async fn now(&self, tx: &Transaction<'_>, now: dray_core::Timestamp) -> Result<dray_core::Timestamp, Fail> {
        match self.config.time_source {
            TimeSource::Params => Ok(now),
            TimeSource::Database => {
                let st = prep(tx, &self.sql.now).await?;
                let row = tx.query_one(&st, &[]).await?;
                Ok(dray_core::Timestamp(row.try_get(0).map_err(|e| corrupt(format!("now: {e}")))?))
            }
        }
    }

    /// The statement reading the database's clock (`clock_timestamp()`), under
    /// `TimeSource::Database`; `None` when the test's `params.now` is the clock.
    async fn clock_statement(&self, tx: &Transaction<'_>) -> Result<Option<Statement>, Fail> {
        match self.config.time_source {
            TimeSource::Params => Ok(None),
            TimeSource::Database => Ok(Some(prep(tx, &self.sql.clock).await?)),
        }
    }

    /// Writes the jobs a call changed (new status, guarded; new history entries; history
    /// trimming) and notifies `notify` queues, all pipelined into one round trip.
    async fn write(&self, tx: &Transaction<'_>, jobs: &[Loaded], notify: &[&str]) -> Result<(), Fail> {
        self.write_then_clock(tx, jobs, notify, None).await.map(|_| ())
    }

    /// [`Self::write`], and with `clock` ([`Self::clock_statement`]) the database's clock read
    /// after the write's statements, in the same round trip: the instant the change is ready to
    /// commit, in microseconds. A statement of the write that waited for a lock delays this
    /// reading as much as it delayed the commit.
    async fn write_then_clock(
        &self,
        tx: &Transaction<'_>,
        jobs: &[Loaded],
        notify: &[&str],
        clock: Option<&Statement>,
    ) -> Result<Option<i64>, Fail> {
        let end = self.write_rows(tx, jobs, notify, clock).await?;
        let finished: Vec<&Loaded> = jobs
            .iter()
            .filter(|l| l.changed && l.has_dependents && !l.base_state.is_finished() && l.job.state().is_finished())
            .collect();
        if let Some(now) = finished.iter().filter_map(|l| l.job.history.last().map(|h| h.at)).max() {
            let ids = finished.iter().filter_map(|l| id_to_sql(l.job.id)).collect();
            self.dependents_settle(tx, ids, now).await?;
        }
        Ok(end)
    }

    /// Settles the blocked dependents of jobs that just finished, in the same transaction: each
    /// is released, ends cancelled (and its own dependents are settled next, down the graph) or
    /// keeps waiting, as `dray_core::dependency::verdict` decides from its dependencies' states
    /// read after its row lock is held. Two transactions finishing two dependencies of one job
    /// queue on its row: the second sees the first's commit, so the last one releases it.
    async fn dependents_settle(
        &self,
        tx: &Transaction<'_>,
        finished: Vec<i64>,
        now: dray_core::Timestamp,
    ) -> Result<(), Fail> {
        let mut frontier = finished;
        while !frontier.is_empty() {
            let (lock_st, of_st) =
                tokio::try_join!(prep(tx, &self.sql.dependents_lock), prep(tx, &self.sql.dependencies_of))?;
            let rows = tx.query(&lock_st, &[&frontier]).await?;
            if rows.is_empty() {
                break;
            }
            let mut dependents: Vec<Loaded> = rows.iter().map(loaded).collect::<Result<_, _>>()?;
            let ids: Vec<i64> = dependents.iter().filter_map(|l| id_to_sql(l.job.id)).collect();
            let mut states: HashMap<JobId, Vec<(JobId, Option<JobState>)>> = HashMap::new();
            for row in tx.query(&of_st, &[&ids, &false]).await? {
                let state = match get::<Option<&str>>(&row, "state")? {
                    None => None,
                    Some(s) => Some(state_of(s)?),
                };
                let dependency = id_from_sql(get(&row, "dependency")?)?;
                states.entry(id_from_sql(get(&row, "dependent")?)?).or_default().push((dependency, state));
            }
            let mut next = Vec::new();
            let mut available: Vec<String> = Vec::new();
            for l in &mut dependents {
                let deps = states.remove(&l.job.id).unwrap_or_default();
                let event = match dray_core::dependency::verdict(l.job.on_dependency_failure, deps) {
                    Verdict::Wait => continue,
                    Verdict::Release => Event::Release,
                    Verdict::Fail { dependency, state } => Event::DependencyFailed { dependency, state },
                };
                let t = transition(&l.job, event, now, 0).map_err(|r| rejected(l.job.id, r))?;
                l.apply(t);
                match l.job.state() {
                    JobState::Available => available.push(l.job.queue.to_string()),
                    s if s.is_finished() && l.has_dependents => next.extend(id_to_sql(l.job.id)),
                    _ => {}
                }
            }
            available.sort_unstable();
            available.dedup();
            available.extend(due_notifications(&dependents));
            let notify: Vec<&str> = available.iter().map(String::as_str).collect();
            self.write_rows(tx, &dependents, &notify, None).await?;
            frontier = next;
        }
        Ok(())
    }

    /// [`Self::write_then_clock`] without settling dependents: for a caller that decided them
    /// itself (an insert whose jobs end cancelled by a failed dependency).
    async fn write_rows(
        &self,
        tx: &Transaction<'_>,
        jobs: &[Loaded],
        notify: &[&str],
        clock: Option<&Statement>,
    ) -> Result<Option<i64>, Fail> {
        let read_clock = async {
            match clock {
                None => Ok(None),
                Some(st) => Ok::<_, Fail>(Some(clock_us(&tx.query_one(st, &[]).await?)?)),
            }
        };
        let changed: Vec<&Loaded> = jobs.iter().filter(|l| l.changed).collect();
        if changed.is_empty() && notify.is_empty() {
            return read_clock.await;
        }
        let mut chunks: Vec<Vec<&Loaded>> = vec![Vec::new()];
        let mut chunk_bytes = 0;
        let mut history = HistoryColumns::default();
        let mut trim = (Vec::new(), Vec::new());
        for &l in &changed {
            let new_entries = u32::try_from(l.job.history.len()).unwrap_or(u32::MAX);
            assert_eq!(
                l.job.version,
                l.base_version + new_entries,
                "job {}: version and new history disagree",
                l.job.id
            );
            let bytes = l.payload_bytes_written();
            if chunk_bytes + bytes > UPDATE_STATEMENT_BYTES_MAX && !chunks.last().is_some_and(Vec::is_empty) {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunks.last_mut().expect("one chunk at least").push(l);
            let id = id_to_sql(l.job.id).ok_or_else(|| corrupt(format!("job id {}", l.job.id)))?;
            for (i, entry) in l.job.history.iter().enumerate() {
                let seq = l.base_version + 1 + u32::try_from(i).unwrap_or(u32::MAX);
                history.push(id, seq, entry);
            }
            if new_entries > 0 && l.job.version as usize > Limits::HISTORY_ENTRIES_MAX {
                trim.0.push(id);
                trim.1.push(version_to_sql(l.job.version));
            }
        }
        let (update_st, history_st, trim_st, notify_st) = tokio::try_join!(
            prep(tx, &self.sql.update),
            prep(tx, &self.sql.history_insert),
            prep(tx, &self.sql.history_trim),
            prep(tx, &self.sql.notify),
        )?;
        let update = async {
            let mut updated = 0;
            for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                let columns = StatusColumns::of(chunk)?;
                updated += tx.execute(&update_st, &columns.params()).await?;
            }
            Ok::<u64, Fail>(updated)
        };
        let insert_history = async {
            if history.id.is_empty() {
                return Ok(0);
            }
            Ok::<u64, Fail>(tx.execute(&history_st, &history.params()).await?)
        };
        let trim_history = async {
            if trim.0.is_empty() {
                return Ok(0);
            }
            Ok::<u64, Fail>(tx.execute(&trim_st, &[&trim.0, &trim.1]).await?)
        };
        let send_notify = async {
            if notify.is_empty() {
                return Ok(0);
            }
            Ok::<u64, Fail>(tx.execute(&notify_st, &[&self.channel, &notify]).await?)
        };
        // Polled in this order, each sends its statement on its first poll: the clock is read
        // after the others ran (a single update chunk, as every lease and heartbeat writes).
        let (updated, _, _, _, end) = tokio::try_join!(update, insert_history, trim_history, send_notify, read_clock)?;
        if updated != changed.len() as u64 {
            // Rows are locked, so only a writer outside this store could cause this.
            return Err(Fail::Retry("a job changed under its row lock"));
        }
        Ok(end)
    }

    /// Inserts `jobs` (a batch: all or nothing), creating their queues as needed, and notifies
    /// the queues that got available or scheduled jobs. Refusals of a job name its field in the
    /// batch (`jobs[3].payload`) when `in_batch`, else the bare field (`payload`), for a caller
    /// that inserts one job of its own making (a schedule's tick).
    async fn insert_in(
        &self,
        tx: &Transaction<'_>,
        now_given: dray_core::Timestamp,
        jobs: &[NewJob],
        in_batch: bool,
    ) -> Result<Vec<Inserted>, Fail> {
        let field = |e: dray_core::Invalid, i: usize| if in_batch { e.in_batch(i) } else { e };
        let mut queue_names: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        queue_names.sort_unstable();
        queue_names.dedup();
        let keyed: Vec<(&str, &str)> =
            jobs.iter().filter_map(|j| Some((j.queue.as_str(), j.idempotency_key.as_deref()?))).collect();
        let defaults = QueueConfig::new(jobs[0].queue.clone());
        let now_param = self.now_param(now_given);

        let queues = async {
            let st = prep(tx, &self.sql.queues_ensure).await?;
            let d = &defaults;
            let attempts_max = i32::try_from(d.retry.attempts_max).unwrap_or(i32::MAX);
            let (base, cap) = (ms_to_sql(d.retry.backoff.base_ms), ms_to_sql(d.retry.backoff.cap_ms));
            let (lease, retention, retention_dead) =
                (ms_to_sql(d.lease_ms), ms_to_sql(d.retention_ms), ms_to_sql(d.retention_dead_ms));
            let params: [&(dyn ToSql + Sync); 8] = [
                &queue_names,
                &attempts_max,
                &base,
                &d.retry.backoff.factor,
                &cap,
                &lease,
                &retention,
                &retention_dead,
            ];
            Ok::<Vec<Row>, Fail>(tx.query(&st, &params).await?)
        };
        let keys = async {
            if keyed.is_empty() {
                return Ok(Vec::new());
            }
            let st = prep(tx, &self.sql.keys_lookup).await?;
            let (qs, ks): (Vec<&str>, Vec<&str>) = keyed.iter().copied().unzip();
            Ok::<Vec<Row>, Fail>(tx.query(&st, &[&qs, &ks, &now_param]).await?)
        };
        let (now, queue_rows, key_rows) = tokio::try_join!(self.now(tx, now_given), queues, keys)?;
        if now != now_given {
            // The database's clock decides how far ahead a run-at may be.
            for (i, job) in jobs.iter().enumerate() {
                job.validate(now).map_err(|e| field(e, i))?;
            }
        }

        let mut configs: HashMap<String, QueueConfig> = HashMap::with_capacity(queue_rows.len());
        for row in &queue_rows {
            let config = queue_from_row(row)?;
            configs.insert(config.name.as_str().to_owned(), config);
        }
        if queue_names.iter().any(|n| !configs.contains_key(*n)) {
            return Err(Fail::Retry("a queue was created concurrently"));
        }
        let mut existing: HashMap<(String, String), (JobId, JobState, Vec<u8>)> = HashMap::new();
        for row in &key_rows {
            let queue: String = get(row, "queue")?;
            let key: String = get(row, "key")?;
            let id = id_from_sql(get(row, "id")?)?;
            let state = state_of(get(row, "state")?)?;
            existing.insert((queue, key), (id, state, get(row, "payload")?));
        }

        // Decide everything before writing anything: the batch is all or nothing.
        let mut plan = Vec::with_capacity(jobs.len());
        let mut batch_keys: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let mut planned = Planned::New;
            if let Some(key) = job.idempotency_key.as_deref() {
                let queue = job.queue.as_str();
                if let Some(&j) = batch_keys.get(&(queue, key)) {
                    // `JobInsert::validate` refused a batch repeating a key with another payload.
                    debug_assert!(same_value(jobs[j].payload.as_bytes(), job.payload.as_bytes()));
                    planned = Planned::SameAs(j);
                } else if let Some((id, state, payload)) = existing.get(&(queue.to_owned(), key.to_owned())) {
                    if !same_value(payload, job.payload.as_bytes()) {
                        return Err(conflict(i, job, key, *id));
                    }
                    planned = Planned::Existing(*id, *state);
                }
                if matches!(planned, Planned::New) {
                    batch_keys.insert((queue, key), i);
                }
            }
            plan.push(planned);
        }

        if let Some(check) = self.payload_check.get() {
            for (i, (job, planned)) in jobs.iter().zip(&plan).enumerate() {
                if matches!(planned, Planned::New) {
                    payload_checked(Some(check.as_ref()), &configs[job.queue.as_str()], &job.payload)
                        .map_err(|e| field(e, i))?;
                }
            }
        }

        // Dependencies: the existing jobs named (directly, or as a job of the batch found by its
        // idempotency key) are marked and locked, and each new job's verdict is decided from
        // their states and those of the batch's jobs, dependencies first.
        let batch_target = |k: usize| -> Result<JobId, usize> {
            match plan[k] {
                Planned::Existing(id, _) => Ok(id),
                Planned::SameAs(j) => match plan[j] {
                    Planned::Existing(id, _) => Ok(id),
                    _ => Err(j),
                },
                Planned::New => Err(k),
            }
        };
        let mut marked: Vec<i64> = Vec::new();
        for (job, planned) in jobs.iter().zip(&plan) {
            if matches!(planned, Planned::New) {
                for dep in &job.depends_on {
                    let existing = match *dep {
                        dray_core::Dependency::Job(id) => Some(id),
                        dray_core::Dependency::Batch(k) => batch_target(k).ok(),
                    };
                    marked.extend(existing.and_then(id_to_sql));
                }
            }
        }
        marked.sort_unstable();
        marked.dedup();
        let mut existing_states: HashMap<JobId, JobState> = HashMap::new();
        if !marked.is_empty() {
            let st = prep(tx, &self.sql.dependencies_mark).await?;
            for row in tx.query(&st, &[&marked]).await? {
                existing_states.insert(id_from_sql(get(&row, "id")?)?, state_of(get(&row, "state")?)?);
            }
            for (i, job) in jobs.iter().enumerate().filter(|(i, _)| matches!(plan[*i], Planned::New)) {
                for (j, dep) in job.depends_on.iter().enumerate() {
                    if let dray_core::Dependency::Job(id) = *dep
                        && !existing_states.contains_key(&id)
                    {
                        let e = dray_core::Invalid::new(
                            format!("depends_on[{j}]"),
                            format!("names job {id}, which does not exist"),
                        );
                        return Err(field(e, i).into());
                    }
                }
            }
        }
        let order = {
            let depends_on: Vec<&[dray_core::Dependency]> = jobs.iter().map(|j| j.depends_on.as_slice()).collect();
            dray_core::dependency::batch_order(&depends_on)
        };
        // Per position: the state its job starts in (or has), and for a new job its verdict.
        let mut start: Vec<Option<JobState>> = vec![None; jobs.len()];
        let mut verdicts: Vec<Verdict> = vec![Verdict::Release; jobs.len()];
        for &i in &order {
            let job = &jobs[i];
            match plan[i] {
                Planned::Existing(_, state) => start[i] = Some(state),
                Planned::SameAs(_) => {}
                Planned::New => {
                    let config = &configs[job.queue.as_str()];
                    if !job.depends_on.is_empty() {
                        let states = job.depends_on.iter().map(|dep| match *dep {
                            dray_core::Dependency::Job(id) => (id, existing_states.get(&id).copied()),
                            dray_core::Dependency::Batch(k) => match batch_target(k) {
                                Ok(id) => (id, existing_states.get(&id).copied()),
                                Err(j) => (batch_placeholder(j), start[j]),
                            },
                        });
                        verdicts[i] = dray_core::dependency::verdict(job.on_dependency_failure, states);
                    }
                    start[i] = Some(match verdicts[i] {
                        Verdict::Release => {
                            NewJob::clone(job).into_job(JobId(0), now, config.retry, config.lease_ms).state()
                        }
                        Verdict::Wait => JobState::Blocked,
                        Verdict::Fail { .. } => JobState::Cancelled,
                    });
                }
            }
            if let Planned::SameAs(j) = plan[i] {
                start[i] = start[j];
            }
        }

        let mut new_jobs: Vec<Job> = Vec::new();
        for (i, (new, planned)) in jobs.iter().zip(&plan).enumerate() {
            if matches!(planned, Planned::New) {
                let config = &configs[new.queue.as_str()];
                let job = NewJob::clone(new).into_job(JobId(0), now, config.retry, config.lease_ms);
                new_jobs.push(job.with_dependencies(Box::default(), verdicts[i] != Verdict::Release));
            }
        }
        let mut ids: Vec<JobId> = Vec::new();
        if !new_jobs.is_empty() {
            let keys_expected = new_jobs.iter().filter(|j| j.idempotency_key.is_some()).count();
            let columns = InsertColumns::of(&new_jobs)?;
            let created_at = to_time(now);
            let window = ms_to_sql(self.config.idempotency_window_ms);
            let st = prep(tx, &self.sql.insert).await?;
            let mut params = columns.params();
            params.extend([&created_at as &(dyn ToSql + Sync), &window, &now_param, &self.channel]);
            params.extend(columns.schedule_params());
            let row = tx.query_one(&st, &params).await?;
            let raw: Vec<i64> = get(&row, "ids")?;
            let inserted: i64 = get(&row, "inserted")?;
            let keys_claimed: i64 = get(&row, "keys_claimed")?;
            if raw.len() != new_jobs.len() || inserted != raw.len() as i64 {
                return Err(corrupt(format!("inserted {inserted} jobs of {}", new_jobs.len())).into());
            }
            if keys_claimed != keys_expected as i64 {
                return Err(Fail::Retry("an idempotency key was claimed concurrently"));
            }
            ids = raw.into_iter().map(id_from_sql).collect::<Result<_, _>>()?;
            debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase along the batch");
        }

        let mut out: Vec<Inserted> = Vec::with_capacity(jobs.len());
        let mut fresh = ids.into_iter().zip(new_jobs.iter().map(|j| j.status.state));
        for planned in &plan {
            out.push(match *planned {
                Planned::New => {
                    let (id, state) = fresh.next().expect("one id per new job");
                    Inserted { id, state, duplicate: false }
                }
                Planned::Existing(id, state) => Inserted { id, state, duplicate: true },
                Planned::SameAs(j) => Inserted { duplicate: true, ..out[j] },
            });
        }
        if jobs.iter().zip(&plan).any(|(j, p)| matches!(p, Planned::New) && !j.depends_on.is_empty()) {
            self.dependencies_insert(tx, jobs, &plan, &mut out, &verdicts, now).await?;
        }
        Ok(out)
    }

    /// Writes a batch's dependency edges and the new jobs' dependency columns, then ends the new
    /// jobs whose dependency already failed (their dependents in the batch were decided with
    /// that end already).
    async fn dependencies_insert(
        &self,
        tx: &Transaction<'_>,
        jobs: &[NewJob],
        plan: &[Planned],
        out: &mut [Inserted],
        verdicts: &[Verdict],
        now: dray_core::Timestamp,
    ) -> Result<(), Fail> {
        let (mut dependent, mut ordinal, mut dependency) = (Vec::new(), Vec::new(), Vec::new());
        let mut has_dependents: HashSet<JobId> = HashSet::new();
        for (i, job) in jobs.iter().enumerate() {
            if !matches!(plan[i], Planned::New) {
                continue;
            }
            for (n, dep) in job.depends_on.iter().enumerate() {
                let id = match *dep {
                    dray_core::Dependency::Job(id) => id,
                    dray_core::Dependency::Batch(k) => out[k].id,
                };
                if let dray_core::Dependency::Batch(k) = *dep
                    && !out[k].duplicate
                {
                    has_dependents.insert(id);
                }
                dependent.extend(id_to_sql(out[i].id));
                ordinal.push(i32::try_from(n).unwrap_or(i32::MAX));
                dependency.extend(id_to_sql(id));
            }
        }
        let (mut ids, mut counts, mut policies, mut marks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, job) in jobs.iter().enumerate() {
            if !matches!(plan[i], Planned::New) {
                continue;
            }
            let marked = has_dependents.contains(&out[i].id);
            if job.depends_on.is_empty() && !marked {
                continue;
            }
            ids.extend(id_to_sql(out[i].id));
            counts.push(i32::try_from(job.depends_on.len()).unwrap_or(i32::MAX));
            policies.push((!job.depends_on.is_empty()).then_some(job.on_dependency_failure.as_str()));
            marks.push(marked);
        }
        let st = prep(tx, &self.sql.dependencies_insert).await?;
        tx.execute(&st, &[&dependent, &ordinal, &dependency, &ids, &counts, &policies, &marks]).await?;

        let failed: Vec<JobId> = (0..jobs.len())
            .filter(|&i| matches!(verdicts[i], Verdict::Fail { .. }) && matches!(plan[i], Planned::New))
            .map(|i| out[i].id)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        let mut locked = self.lock_jobs(tx, &failed, true).await?;
        let mut changed = Vec::with_capacity(failed.len());
        for i in (0..jobs.len()).filter(|&i| matches!(plan[i], Planned::New)) {
            let Verdict::Fail { dependency, state } = verdicts[i] else { continue };
            // A new job of the batch gets its id only now.
            let dependency = batch_position(dependency, jobs.len()).map_or(dependency, |k| out[k].id);
            let mut l = locked.remove(&out[i].id).ok_or_else(|| corrupt(format!("job {} vanished", out[i].id)))?;
            let t = transition(&l.job, Event::DependencyFailed { dependency, state }, now, 0)
                .map_err(|r| rejected(l.job.id, r))?;
            l.apply(t);
            out[i].state = l.job.state();
            changed.push(l);
        }
        for i in 0..out.len() {
            if let Planned::SameAs(j) = plan[i] {
                out[i].state = out[j].state;
            }
        }
        self.write_rows(tx, &changed, &[], None).await?;
        Ok(())
    }

    /// The lease, in one transaction. Under `TimeSource::Database` its `now` is the database's
    /// clock read *after* the lease statement holds its row locks (not the transaction's start:
    /// a statement that waited for a lock would otherwise grant a lease that started before the
    /// wait), and the clock is read again after the write: a lease that would be born expired by
    /// then (the write waited for a lock as long as the lease lasts) is not granted, the
    /// transaction runs again instead and the jobs stay available meanwhile. Each job's
    /// `lease_left_ms` is its deadline minus that second reading; the caller subtracts the
    /// commit's time, measured from the returned instant.
    async fn lease_in(
        &self,
        tx: &Transaction<'_>,
        p: &JobLease,
        queues: &[&str],
    ) -> Result<(Vec<LeasedJob>, Option<Instant>), Fail> {
        let count = p.count_max as i64;
        let promote_max = Limits::LEASE_JOBS_MAX as i64;
        let now_param = self.now_param(p.now);
        let (lease_st, flow_st, clock_st) =
            tokio::try_join!(prep(tx, &self.sql.lease), prep(tx, &self.sql.flow_queues), self.clock_statement(tx))?;
        let params: [&(dyn ToSql + Sync); 5] = [&queues, &now_param, &count, &promote_max, &false];
        let flow_params: [&(dyn ToSql + Sync); 2] = [&queues, &now_param];
        // Pipelined after the lease statement, which passes over queues under flow control and
        // queues whose breaker is not closed: those go through the paths below.
        let (mut rows, flow_rows, mut now, blocked) = match &clock_st {
            None => {
                let (rows, flow, blocked) = tokio::try_join!(
                    async { Ok(tx.query(&lease_st, &params).await?) },
                    async { Ok(tx.query(&flow_st, &flow_params).await?) },
                    self.breakers_blocked(tx, queues)
                )?;
                (rows, flow, p.now, blocked)
            }
            Some(clock) => {
                // Pipelined in this order: the clock is read once the lease statement is done.
                let (rows, flow, t, blocked) = tokio::try_join!(
                    async { Ok(tx.query(&lease_st, &params).await?) },
                    async { Ok(tx.query(&flow_st, &flow_params).await?) },
                    async { Ok(tx.query_one(clock, &[]).await?) },
                    self.breakers_blocked(tx, queues)
                )?;
                (rows, flow, ms_floor(clock_us(&t)?), blocked)
            }
        };
        // Queues under flow control: `LEASE` left them out. One that `LEASE` leased from after all
        // (it came under flow control between the two statements' snapshots) waits for the next
        // call, so no job is taken twice.
        let mut flows = Vec::new();
        let mut flow_configs: Vec<QueueConfig> = Vec::new();
        if !flow_rows.is_empty() {
            let mut plain: HashSet<String> = HashSet::new();
            for row in &rows {
                plain.insert(get(row, "queue")?);
            }
            for row in &flow_rows {
                let config = queue_from_row(row)?;
                if !plain.contains(config.name.as_str()) {
                    flow_configs.push(config);
                }
            }
        }
        let mut picked_plain = 0usize;
        for row in &rows {
            picked_plain += usize::from(get::<Option<i64>>(row, "new_token")?.is_some());
        }
        let mut left = p.count_max.saturating_sub(picked_plain);
        if !flow_configs.is_empty() {
            let names: Vec<&str> = flow_configs.iter().map(|c| c.name.as_str()).collect();
            now = self.flow_lock(tx, &names, now, clock_st.as_ref()).await?;
            // A flow queue whose breaker is not closed leases only its probes, below.
            for config in flow_configs.iter().filter(|c| !blocked.iter().any(|b| b == c.name.as_str())) {
                if left == 0 {
                    break;
                }
                let (taken, flow) = self.flow_lease(tx, config, now, u32::try_from(left).unwrap_or(u32::MAX)).await?;
                left -= taken.len().min(left);
                rows.extend(taken);
                flows.push(flow);
            }
        }
        let mut breakers = breaker::HeldBreakers::new();
        if !blocked.is_empty() {
            let probes = Probes { lease_st: &lease_st, flow_configs: &flow_configs, now_param };
            breakers = self.breaker_probes(tx, &probes, &blocked, left, now, &mut rows, &mut flows).await?;
        }
        if rows.is_empty() {
            self.flow_charge(tx, &flows, &HashMap::new(), now).await?;
            self.breakers_save(tx, &breakers).await?;
            return Ok((Vec::new(), None));
        }
        let mut jobs = Vec::with_capacity(rows.len());
        let mut picked: Vec<(usize, FencingToken, Payload)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let mut l = loaded(row)?;
            if matches!(l.job.state(), JobState::Scheduled | JobState::Retrying) {
                let t = transition(&l.job, Event::Promote, now, 0).map_err(|r| rejected(l.job.id, r))?;
                l.apply(t);
            }
            if let Some(token) = get::<Option<i64>>(row, "new_token")? {
                let payload =
                    get::<Option<Vec<u8>>>(row, "payload")?.ok_or_else(|| corrupt("a leased job without payload"))?;
                picked.push((i, token_from_sql(token)?, Payload::new(payload)));
            }
            jobs.push(l);
        }
        let mut loaded = jobs;
        self.ordering_recheck(tx, &loaded, &mut picked).await?;
        if !flows.is_empty() {
            let mut leased: HashMap<(&str, &str), u32> = HashMap::new();
            for (i, _, _) in &picked {
                let job = &loaded[*i].job;
                *leased.entry((job.queue.as_str(), job.group_key.as_deref().unwrap_or(""))).or_default() += 1;
            }
            self.flow_charge(tx, &flows, &leased, now).await?;
        }
        if !breakers.is_empty() {
            for (i, _, _) in &picked {
                if let Some(h) = breakers.get_mut(loaded[*i].job.queue.as_str()) {
                    h.breaker.granted(1);
                }
            }
            self.breakers_save(tx, &breakers).await?;
        }
        // Best first, and tokens in the same order: each grant's token is larger than the last.
        let mut tokens: Vec<FencingToken> = picked.iter().map(|(_, t, _)| *t).collect();
        tokens.sort_unstable();
        picked.sort_by_key(|(i, _, _)| {
            let job = &loaded[*i].job;
            (std::cmp::Reverse(job.priority), job.status.run_at, job.id)
        });
        let mut out = Vec::with_capacity(picked.len());
        // From the OS CSPRNG: a lease id is a credential and must not be guessable.
        let mut lease_ids = dray_store::LeaseIds::default();
        for ((i, _, payload), token) in picked.into_iter().zip(tokens) {
            let l = &mut loaded[i];
            let event = Event::Lease { id: lease_ids.next(), token, worker: &p.worker, lease_ms: p.lease_ms };
            let ready_at = l.job.status.run_at;
            let t = transition(&l.job, event, now, 0).map_err(|r| rejected(l.job.id, r))?;
            l.apply(t);
            out.push(LeasedJob::of(&l.job, payload, ready_at));
        }
        let with_dependencies: Vec<i64> = loaded
            .iter()
            .filter(|l| l.dependencies > 0 && l.job.state() == JobState::Running)
            .filter_map(|l| id_to_sql(l.job.id))
            .collect();
        if !with_dependencies.is_empty() {
            self.dependency_results(tx, &with_dependencies, &mut out).await?;
        }
        self.steps_load(tx, &loaded, &mut out).await?;
        // Jobs this lease promoted but did not take: other workers may want them.
        let mut notify: Vec<&str> =
            loaded.iter().filter(|l| l.job.state() == JobState::Available).map(|l| l.job.queue.as_str()).collect();
        notify.sort_unstable();
        notify.dedup();
        let Some(end) = self.write_then_clock(tx, &loaded, &notify, clock_st.as_ref()).await? else {
            return Ok((out, None));
        };
        let measured = Instant::now();
        for job in &mut out {
            let left = lease_left_ms(job.deadline, end).ok_or(Fail::Retry("a lease would be born expired"))?;
            job.lease_left_ms = Some(left);
        }
        Ok((out, Some(measured)))
    }

    /// Fills each leased job's dependencies (states and results) for the jobs `ids` among them.
    async fn dependency_results(&self, tx: &Transaction<'_>, ids: &[i64], out: &mut [LeasedJob]) -> Result<(), Fail> {
        let st = prep(tx, &self.sql.dependencies_of).await?;
        let mut found: HashMap<JobId, Vec<dray_store::DependencyResult>> = HashMap::new();
        for row in tx.query(&st, &[&ids, &true]).await? {
            let state = match get::<Option<&str>>(&row, "state")? {
                None => None,
                Some(s) => Some(state_of(s)?),
            };
            let result = get::<Option<Vec<u8>>>(&row, "result")?.map(Payload::new);
            let id = id_from_sql(get(&row, "dependency")?)?;
            found.entry(id_from_sql(get(&row, "dependent")?)?).or_default().push(dray_store::DependencyResult {
                id,
                state,
                result,
            });
        }
        for job in out {
            if let Some(deps) = found.remove(&job.id) {
                job.dependencies = deps;
            }
        }
        Ok(())
    }

    /// Sets the steps of the jobs a lease picked, read in its transaction (their row locks are
    /// held, so no step can be added meanwhile): one statement for the jobs whose row counts
    /// steps, none when no job does.
    async fn steps_load(&self, tx: &Transaction<'_>, loaded: &[Loaded], out: &mut [LeasedJob]) -> Result<(), Fail> {
        let counted: HashMap<JobId, &Job> =
            loaded.iter().filter(|l| !l.job.steps.is_empty()).map(|l| (l.job.id, &l.job)).collect();
        let ids: Vec<i64> =
            out.iter().filter(|j| counted.contains_key(&j.id)).filter_map(|j| id_to_sql(j.id)).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let st = prep(tx, &self.sql.steps_read).await?;
        let mut read: HashMap<JobId, Vec<dray_core::Step>> = HashMap::new();
        for row in tx.query(&st, &[&ids]).await? {
            let id = crate::row::id_from_sql(get(&row, "job_id")?)?;
            let step = crate::row::step_of(
                get(&row, "name")?,
                get(&row, "result")?,
                get(&row, "recorded_at")?,
                get(&row, "attempt")?,
            )?;
            read.entry(id).or_default().push(step);
        }
        for job in out.iter_mut() {
            if let Some(row) = counted.get(&job.id) {
                job.steps = crate::row::steps_checked(row, read.remove(&job.id).unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// A step, in one transaction: the job's row lock, then the step of its name read after the
    /// lock is held (pipelined, one round trip); the transition decides (lease, first write wins,
    /// the job's bounds from its row's counts); a new step is written with its history entry and
    /// the row's counts under the lock, a known one writes nothing.
    async fn step_in(&self, tx: &Transaction<'_>, p: &JobStep) -> Result<StepRecorded, Fail> {
        let Some(sql_id) = id_to_sql(p.job) else { return Err(Error::JobNotFound(p.job).into()) };
        let (lock_st, find_st) = tokio::try_join!(prep(tx, &self.sql.job_lock), prep(tx, &self.sql.step_find))?;
        let name: &str = &p.name;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&sql_id];
        let find_params: [&(dyn ToSql + Sync); 2] = [&sql_id, &name];
        // Prepared above, so each sends on its first poll: the find runs once the lock is held.
        let (now, row, found) =
            tokio::try_join!(self.now(tx, p.now), async { Ok(tx.query_opt(&lock_st, &lock_params).await?) }, async {
                Ok::<_, Fail>(tx.query_opt(&find_st, &find_params).await?)
            },)?;
        let row = row.ok_or(Error::JobNotFound(p.job))?;
        let mut l = Loaded::new(job_from_row(&row, Payload::new(Vec::new()))?);
        let found = match found {
            None => None,
            Some(f) => Some(crate::row::step_of(
                name.to_owned(),
                get(&f, "result")?,
                get(&f, "recorded_at")?,
                get(&f, "attempt")?,
            )?),
        };
        l.job.steps = dray_core::Steps::view(l.job.steps.len(), l.job.steps.bytes(), found);
        let t = transition(&l.job, p.event(), now, 0).map_err(|r| rejected(p.job, r))?;
        let queue = l.job.queue.clone();
        let (step, recorded) =
            t.step().map(|(s, r)| (s.clone(), r)).ok_or_else(|| corrupt("a step event without its step"))?;
        if !recorded {
            return Ok(StepRecorded { step, recorded, queue });
        }
        l.guard = Some(p.lease);
        l.apply(t);
        let count = i32::try_from(l.job.steps.len()).map_err(|_| corrupt("steps_count"))?;
        let bytes = i64::try_from(l.job.steps.bytes()).map_err(|_| corrupt("steps_bytes"))?;
        let attempt = i32::try_from(step.attempt).map_err(|_| corrupt("step attempt"))?;
        let (result, at) = (step.result.as_bytes(), to_time(step.at));
        let insert_st = prep(tx, &self.sql.step_insert).await?;
        let insert_params: [&(dyn ToSql + Sync); 7] = [&sql_id, &name, &count, &result, &at, &attempt, &bytes];
        let (_, counted) = tokio::try_join!(self.write(tx, std::slice::from_ref(&l), &[]), async {
            Ok::<_, Fail>(tx.execute(&insert_st, &insert_params).await?)
        },)?;
        if counted != 1 {
            // The row is locked: only a writer outside this store could cause this.
            return Err(Fail::Retry("a job's steps changed under its row lock"));
        }
        Ok(StepRecorded { step, recorded, queue })
    }

    /// The probe path of a lease: locks the breakers of `blocked` (queues asked for whose breaker
    /// was not closed), turns those whose open period is over half-open, and leases from each
    /// half-open one at most its probes left (and at most `left` in all), appending the rows to
    /// `rows` (a queue under flow control through the flow path, its lock already held, adding
    /// to `flows`). Returns the locked breakers; the caller counts the probes actually granted
    /// (after the ordering re-check) and writes them back.
    #[allow(clippy::too_many_arguments)]
    async fn breaker_probes(
        &self,
        tx: &Transaction<'_>,
        probes: &Probes<'_>,
        blocked: &[String],
        mut left: usize,
        now: dray_core::Timestamp,
        rows: &mut Vec<Row>,
        flows: &mut Vec<flow::FlowLease>,
    ) -> Result<breaker::HeldBreakers, Fail> {
        let names: Vec<&str> = blocked.iter().map(String::as_str).collect();
        let mut held = self.breakers_lock(tx, &names).await?;
        let promote_max = Limits::LEASE_JOBS_MAX as i64;
        for name in &names {
            let Some(h) = held.get_mut(*name) else { continue };
            let allowed = h.breaker.allowance(&h.policy, now).of(left);
            if allowed == 0 {
                continue;
            }
            if let Some(config) = probes.flow_configs.iter().find(|c| c.name.as_str() == *name) {
                let (taken, flow) =
                    self.flow_lease(tx, config, now, u32::try_from(allowed).unwrap_or(u32::MAX)).await?;
                left -= taken.len().min(left);
                rows.extend(taken);
                flows.push(flow);
                continue;
            }
            let count = allowed as i64;
            let one = [*name];
            let params: [&(dyn ToSql + Sync); 5] = [&one.as_slice(), &probes.now_param, &count, &promote_max, &true];
            let got = tx.query(probes.lease_st, &params).await?;
            left -= got.iter().filter(|r| r.get::<_, Option<i64>>("new_token").is_some()).count().min(left);
            rows.extend(got);
        }
        Ok(held)
    }

    /// Drops from `picked` the keyed jobs that are no longer eligible once this transaction holds
    /// the advisory locks of their keys (see `sql::ORDERING_RECHECK` for why this closes the
    /// race between concurrent leases). A lease that picked no keyed job takes no lock.
    async fn ordering_recheck(
        &self,
        tx: &Transaction<'_>,
        loaded: &[Loaded],
        picked: &mut Vec<(usize, FencingToken, Payload)>,
    ) -> Result<(), Fail> {
        let mut queues: Vec<&str> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        let mut ids: Vec<i64> = Vec::new();
        for (i, _, _) in picked.iter() {
            let job = &loaded[*i].job;
            if let (Some(key), Some(id)) = (job.ordering_key.as_deref(), id_to_sql(job.id)) {
                queues.push(job.queue.as_str());
                keys.push(key);
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let st = prep(tx, &self.sql.ordering_lock).await?;
        tx.query_one(&st, &[&queues, &keys]).await?;
        let st = prep(tx, &self.sql.ordering_recheck).await?;
        let still: HashSet<i64> = tx.query(&st, &[&ids]).await?.iter().map(|row| row.get(0)).collect();
        picked.retain(|(i, _, _)| {
            let job = &loaded[*i].job;
            job.ordering_key.is_none() || id_to_sql(job.id).is_some_and(|id| still.contains(&id))
        });
        Ok(())
    }

    /// Locks the listed jobs (in id order), keyed by id. Ids the database cannot hold are absent.
    async fn lock_jobs(&self, tx: &Transaction<'_>, ids: &[JobId], lock: bool) -> Result<HashMap<JobId, Loaded>, Fail> {
        let sql_ids: Vec<i64> =
            ids.iter().filter_map(|&id| id_to_sql(id)).collect::<HashSet<_>>().into_iter().collect();
        let st = prep(tx, if lock { &self.sql.jobs_lock } else { &self.sql.jobs_read }).await?;
        let rows = tx.query(&st, &[&sql_ids]).await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let l = loaded(row)?;
            out.insert(l.job.id, l);
        }
        Ok(out)
    }

    async fn lock_one(
        &self,
        tx: &Transaction<'_>,
        id: JobId,
        now: dray_core::Timestamp,
    ) -> Result<(dray_core::Timestamp, Loaded), Fail> {
        let Some(sql_id) = id_to_sql(id) else { return Err(Error::JobNotFound(id).into()) };
        let row = async {
            let st = prep(tx, &self.sql.job_lock).await?;
            Ok::<Option<Row>, Fail>(tx.query_opt(&st, &[&sql_id]).await?)
        };
        let (now, row) = tokio::try_join!(self.now(tx, now), row)?;
        let row = row.ok_or(Error::JobNotFound(id))?;
        Ok((now, loaded(&row)?))
    }

    /// A heartbeat, timed like [`Self::lease_in`]: under `TimeSource::Database` the lease is
    /// checked and extended at the database's clock read after the row lock is held, and a new
    /// deadline that has passed by the time the write is done (it waited for a lock) is refused
    /// like any expired lease, changing nothing.
    async fn extend_in(&self, tx: &Transaction<'_>, p: &LeaseExtend) -> Result<(LeaseExtended, Option<Instant>), Fail> {
        let clock_st = self.clock_statement(tx).await?;
        let (now, mut l) = match &clock_st {
            None => self.lock_one(tx, p.job, p.now).await?,
            Some(clock) => {
                let Some(sql_id) = id_to_sql(p.job) else { return Err(Error::JobNotFound(p.job).into()) };
                let st = prep(tx, &self.sql.job_lock).await?;
                // Pipelined in this order: the clock is read once the row lock is held.
                let params: [&(dyn ToSql + Sync); 1] = [&sql_id];
                let (row, t) = tokio::try_join!(tx.query_opt(&st, &params), tx.query_one(clock, &[]))?;
                let row = row.ok_or(Error::JobNotFound(p.job))?;
                (ms_floor(clock_us(&t)?), loaded(&row)?)
            }
        };
        let event = Event::Heartbeat {
            lease: p.lease,
            extend_ms: p.extend_ms,
            progress: p.progress.clone(),
            checkpoint: p.checkpoint.clone(),
        };
        let t = transition(&l.job, event, now, 0).map_err(|r| rejected(p.job, r))?;
        let extended = t
            .effects
            .iter()
            .find_map(|e| match e {
                Effect::LeaseExtended { deadline, cancel_requested } => Some(LeaseExtended {
                    deadline: *deadline,
                    lease_left_ms: None,
                    cancel_requested: *cancel_requested,
                }),
                _ => None,
            })
            .ok_or_else(|| corrupt("a heartbeat that extends no lease"))?;
        l.guard = Some(p.lease);
        l.apply(t);
        let Some(end) = self.write_then_clock(tx, std::slice::from_ref(&l), &[], clock_st.as_ref()).await? else {
            return Ok((extended, None));
        };
        let measured = Instant::now();
        let deadline = extended.deadline;
        let left = lease_left_ms(deadline, end).ok_or_else(|| rejected(p.job, Rejection::LeaseExpired { deadline }))?;
        Ok((LeaseExtended { lease_left_ms: Some(left), ..extended }, Some(measured)))
    }

    async fn ack_in(&self, tx: &Transaction<'_>, p: &JobAck) -> Result<Vec<Result<Acked, Error>>, Fail> {
        let ids: Vec<JobId> = p.acks.iter().map(|a| a.job).collect();
        let sql_ids: Vec<i64> = ids.iter().filter_map(|&id| id_to_sql(id)).collect();
        // The breakers of the jobs' queues, locked after the jobs (pipelined: none costs nothing).
        let (now, mut jobs, breakers) = tokio::try_join!(
            self.now(tx, p.now),
            self.lock_jobs(tx, &ids, true),
            self.breakers_lock_for_jobs(tx, &sql_ids)
        )?;
        let mut outcomes = Vec::new();
        let mut backoffs: Vec<(String, SystemTime)> = Vec::new();
        let mut out = Vec::with_capacity(p.acks.len());
        // Items apply in order: a second ack of one job in the same call sees the first's result.
        for ack in &p.acks {
            let random = self.rng.next();
            let Some(l) = jobs.get_mut(&ack.job) else {
                out.push(Err(Error::JobNotFound(ack.job)));
                continue;
            };
            let queue = l.job.queue.clone();
            let (attempt, leased_at) = (l.job.status.attempt, l.job.status.lease.as_ref().map_or(now, |l| l.leased_at));
            match transition(&l.job, ack.event(), now, random) {
                Err(r) => out.push(Err(Error::rejected(ack.job, r))),
                Ok(t) => {
                    let state = t.status.state;
                    let retry_at = (state == JobState::Retrying).then_some(t.status.run_at);
                    let verdict = t.breaker_outcome();
                    if let Some(until) = t.queue_backoff() {
                        backoffs.push((queue.to_string(), to_time(until)));
                    }
                    // The first accepted ack of a job is the one its lease guards in SQL; after
                    // it the job is no longer running, so no later ack of it is accepted.
                    l.guard.get_or_insert(ack.lease);
                    l.apply(t);
                    if breakers.contains_key(queue.as_str()) {
                        outcomes.push((queue.clone(), leased_at, verdict));
                    }
                    out.push(Ok(Acked { state, retry_at, queue, attempt, leased_at, released: Vec::new() }));
                }
            }
        }
        let jobs: Vec<Loaded> = jobs.into_values().collect();
        let due = due_notifications(&jobs);
        self.write(tx, &jobs, &due.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        self.breakers_record(tx, breakers, now, &outcomes).await?;
        if !backoffs.is_empty() {
            // One row per queue, its latest end: an UPDATE ... FROM joining a queue twice would
            // apply only one of them, not necessarily the later.
            backoffs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            backoffs.dedup_by(|later, kept| later.0 == kept.0);
            let (names, untils): (Vec<String>, Vec<SystemTime>) = backoffs.into_iter().unzip();
            let st = prep(tx, &self.sql.backoff_raise).await?;
            tx.execute(&st, &[&names, &untils]).await?;
        }
        Ok(out)
    }

    async fn cancel_in(&self, tx: &Transaction<'_>, p: &JobCancel) -> Result<JobState, Fail> {
        let (now, mut l) = self.lock_one(tx, p.job, p.now).await?;
        let t = transition(&l.job, Event::Cancel, now, 0).map_err(|r| rejected(p.job, r))?;
        let after = t.status.state;
        if !t.effects.contains(&Effect::Unchanged) {
            l.apply(t);
            self.write(tx, std::slice::from_ref(&l), &[]).await?;
        }
        Ok(after)
    }

    /// The dead jobs a selection names, locked (unless `lock` is false), in the order they will be
    /// reported: the listed order without repeats, or id order for a filter. A listed job that is
    /// missing or not dead fails the whole request.
    async fn dead_selected(
        &self,
        tx: &Transaction<'_>,
        selection: &DeadSelection,
        event: EventKind,
        lock: bool,
    ) -> Result<Vec<Loaded>, Fail> {
        match selection {
            DeadSelection::Ids(ids) => {
                let mut found = self.lock_jobs(tx, ids, lock).await?;
                let mut out = Vec::with_capacity(ids.len());
                let mut seen = HashSet::new();
                for &id in ids {
                    let state = found.get(&id).map(|l| l.job.state());
                    match state {
                        None if !seen.contains(&id) => return Err(Error::JobNotFound(id).into()),
                        None => {}
                        Some(JobState::Dead) => {
                            seen.insert(id);
                            out.push(found.remove(&id).expect("found above"));
                        }
                        Some(state) => return Err(rejected(id, Rejection::NotAllowed { state, event })),
                    }
                }
                Ok(out)
            }
            DeadSelection::Filter { filter, limit } => {
                let rows = self.filtered(tx, Columns::Job, filter, None, *limit, true, lock).await?;
                rows.iter().map(|row| Ok(loaded(row)?)).collect()
            }
        }
    }

    /// Runs a filtered select ([`Sql::filtered`]) in a transaction.
    #[allow(clippy::too_many_arguments)]
    async fn filtered(
        &self,
        tx: &Transaction<'_>,
        columns: Columns,
        filter: &JobFilter,
        after: Option<i64>,
        limit: usize,
        dead_only: bool,
        lock: bool,
    ) -> Result<Vec<Row>, Fail> {
        let (text, extra) = self.sql.filtered(columns, filter, dead_only, lock, false);
        let st = prep(tx, &text).await?;
        Ok(tx.query(&st, &filter_params(after.unwrap_or(0), limit, &extra).refs()).await?)
    }

    async fn redrive_in(&self, tx: &Transaction<'_>, p: &DeadRedrive) -> Result<Redriven, Fail> {
        let (now, mut jobs) = tokio::try_join!(
            self.now(tx, p.now),
            self.dead_selected(tx, &p.selection, EventKind::Redrive, !p.dry_run)
        )?;
        let refusals = self.schema_refusals(tx, &jobs).await?;
        let mut out = Redriven::default();
        for l in &mut jobs {
            let id = l.job.id;
            let event = match refusals.get(&id) {
                Some(error) => {
                    out.rejected.push(id);
                    Event::Reject { error }
                }
                None => {
                    out.ids.push(id);
                    Event::Redrive
                }
            };
            if !p.dry_run {
                let t = transition(&l.job, event, now, 0).map_err(|r| rejected(id, r))?;
                l.apply(t);
            }
        }
        if p.dry_run {
            return Ok(out);
        }
        let mut notify: Vec<&str> =
            jobs.iter().filter(|l| !refusals.contains_key(&l.job.id)).map(|l| l.job.queue.as_str()).collect();
        notify.sort_unstable();
        notify.dedup();
        self.write(tx, &jobs, &notify).await?;
        Ok(out)
    }

    /// Why each of `jobs` may not be redriven: its payload does not match its queue's schema.
    /// Reads payloads only for jobs whose queue has a schema.
    async fn schema_refusals(&self, tx: &Transaction<'_>, jobs: &[Loaded]) -> Result<HashMap<JobId, String>, Fail> {
        let mut refusals = HashMap::new();
        let Some(check) = self.payload_check.get() else { return Ok(refusals) };
        if jobs.is_empty() {
            return Ok(refusals);
        }
        let mut queues: Vec<&str> = jobs.iter().map(|l| l.job.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        let st = prep(tx, &self.sql.queue_schemas).await?;
        let mut schemas: HashMap<String, PayloadSchema> = HashMap::new();
        for row in tx.query(&st, &[&queues]).await? {
            schemas.insert(get(&row, "name")?, PayloadSchema::new(get::<String>(&row, "payload_schema")?));
        }
        let checked: Vec<i64> = jobs
            .iter()
            .filter(|l| schemas.contains_key(l.job.queue.as_str()))
            .filter_map(|l| id_to_sql(l.job.id))
            .collect();
        if checked.is_empty() {
            return Ok(refusals);
        }
        let st = prep(tx, &self.sql.payloads_read).await?;
        let mut payloads: HashMap<JobId, Payload> = HashMap::new();
        for row in tx.query(&st, &[&checked]).await? {
            payloads.insert(id_from_sql(get(&row, "id")?)?, Payload::new(get::<Vec<u8>>(&row, "payload")?));
        }
        for l in jobs {
            let (Some(schema), Some(payload)) = (schemas.get(l.job.queue.as_str()), payloads.get(&l.job.id)) else {
                continue;
            };
            if let Err(error) = check.check(schema, payload) {
                refusals.insert(l.job.id, error);
            }
        }
        Ok(refusals)
    }

    async fn discard_in(&self, tx: &Transaction<'_>, p: &DeadDiscard) -> Result<Vec<JobId>, Fail> {
        let jobs = self.dead_selected(tx, &p.selection, EventKind::Discard, !p.dry_run).await?;
        let ids: Vec<JobId> = jobs.iter().map(|l| l.job.id).collect();
        if p.dry_run || ids.is_empty() {
            return Ok(ids);
        }
        let sql_ids: Vec<i64> = ids.iter().filter_map(|&id| id_to_sql(id)).collect();
        let st = prep(tx, &self.sql.discard).await?;
        let gone = tx.query(&st, &[&sql_ids]).await?;
        if gone.len() != ids.len() {
            return Err(Fail::Retry("a dead job changed under its row lock"));
        }
        Ok(ids)
    }

    async fn expire_in(&self, tx: &Transaction<'_>, p: &Maintain, fence: Fence) -> Result<Vec<Expired>, Fail> {
        let now_param = self.now_param(p.now);
        let limit = p.limit.min(i64::MAX as usize) as i64;
        let (name, epoch) = fence.params();
        let rows = async {
            let st = prep(tx, &self.sql.expire_select).await?;
            Ok::<Vec<Row>, Fail>(tx.query(&st, &[&now_param, &limit, &name, &epoch]).await?)
        };
        let (now, rows) = tokio::try_join!(self.now(tx, p.now), rows)?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut expired = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut l = loaded(row)?;
            let t = transition(&l.job, Event::Expire, now, self.rng.next()).map_err(|r| rejected(l.job.id, r))?;
            // A lease that runs out is a failed attempt: a crashed worker is a failure.
            let leased_at = l.job.status.lease.as_ref().map_or(now, |l| l.leased_at);
            outcomes.push((l.job.queue.clone(), leased_at, t.breaker_outcome()));
            expired.push(Expired {
                id: l.job.id,
                queue: l.job.queue.clone(),
                attempt: l.job.status.attempt,
                state: t.status.state,
            });
            l.apply(t);
            jobs.push(l);
        }
        let due = due_notifications(&jobs);
        self.write(tx, &jobs, &due.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        if !outcomes.is_empty() {
            let mut queues: Vec<&str> = outcomes.iter().map(|(q, _, _)| q.as_str()).collect();
            queues.sort_unstable();
            queues.dedup();
            let breakers = self.breakers_lock(tx, &queues).await?;
            self.breakers_record(tx, breakers, now, &outcomes).await?;
        }
        Ok(expired)
    }

    async fn promote_in(&self, tx: &Transaction<'_>, p: &Maintain, fence: Fence) -> Result<usize, Fail> {
        let now_param = self.now_param(p.now);
        let limit = p.limit.min(i64::MAX as usize) as i64;
        let (name, epoch) = fence.params();
        let rows = async {
            let st = prep(tx, &self.sql.promote_select).await?;
            Ok::<Vec<Row>, Fail>(tx.query(&st, &[&now_param, &limit, &name, &epoch]).await?)
        };
        let (now, rows) = tokio::try_join!(self.now(tx, p.now), rows)?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut l = loaded(row)?;
            let t = transition(&l.job, Event::Promote, now, 0).map_err(|r| rejected(l.job.id, r))?;
            l.apply(t);
            jobs.push(l);
        }
        let mut notify: Vec<&str> = jobs.iter().map(|l| l.job.queue.as_str()).collect();
        notify.sort_unstable();
        notify.dedup();
        self.write(tx, &jobs, &notify).await?;
        Ok(jobs.len())
    }

    async fn promote_now_in(&self, tx: &Transaction<'_>, p: &JobPromote) -> Result<JobState, Fail> {
        let (now, mut l) = self.lock_one(tx, p.job, p.now).await?;
        let t = transition(&l.job, Event::PromoteNow, now, 0).map_err(|r| rejected(p.job, r))?;
        let after = t.status.state;
        l.apply(t);
        let queue = l.job.queue.clone();
        self.write(tx, std::slice::from_ref(&l), &[queue.as_str()]).await?;
        Ok(after)
    }

    async fn queue_delete_in(&self, tx: &Transaction<'_>, p: &QueueDelete) -> Result<QueueDeleted, Fail> {
        let name = p.queue.as_str();
        tx.batch_execute(&self.sql.queue_delete_lock).await?;
        let st = prep(tx, &self.sql.queue_delete_check).await?;
        let Some(row) = tx.query_opt(&st, &[&name]).await? else {
            return Err(Error::QueueNotFound(p.queue.clone()).into());
        };
        let holding: i64 = get(&row, "holding")?;
        if holding > 0 {
            return Err(Error::QueueNotEmpty { queue: p.queue.clone(), jobs: holding.unsigned_abs() }.into());
        }
        let st = prep(tx, &self.sql.queue_delete).await?;
        let deleted: i64 = tx.query_one(&st, &[&name]).await?.get(0);
        Ok(QueueDeleted { jobs_deleted: deleted.unsigned_abs() })
    }

    async fn configure_in(&self, tx: &Transaction<'_>, p: &QueueConfigure) -> Result<QueueConfig, Fail> {
        let name = p.name.as_str();
        let d = QueueConfig::new(p.name.clone());
        let ensure = async {
            let st = prep(tx, &self.sql.queue_ensure_one).await?;
            let c = QueueColumns::of(&d);
            Ok::<u64, Fail>(tx.execute(&st, &c.params(&name)).await?)
        };
        let lock = async {
            let st = prep(tx, &self.sql.queue_lock).await?;
            Ok::<Option<Row>, Fail>(tx.query_opt(&st, &[&name]).await?)
        };
        let (_, row) = tokio::try_join!(ensure, lock)?;
        let Some(row) = row else { return Err(Fail::Retry("a queue vanished while being configured")) };
        let current = queue_from_row(&row)?;
        let config = p.apply_to(&current)?;
        let st = prep(tx, &self.sql.queue_update).await?;
        tx.execute(&st, &QueueColumns::of(&config).params(&name)).await?;
        self.breaker_configure(tx, name, current.breaker.as_ref(), config.breaker.as_ref()).await?;
        Ok(config)
    }

    async fn stats(&self, queue: Option<&QueueName>) -> Result<Vec<QueueStats>, Error> {
        let name: Option<&str> = queue.map(QueueName::as_str);
        on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.queue_stats).await?;
            let rows = client.query(&st, &[&name]).await.map_err(db_error)?;
            rows.iter().map(stats_from_row).collect()
        })
    }
}

/// Stands for the new job at position `k` of an insert batch while its id is not known yet
/// (ids are handed out by the insert): never a real id, which are far smaller.
fn batch_placeholder(k: usize) -> JobId {
    JobId(u64::MAX - k as u64)
}

/// The position a [`batch_placeholder`] stands for.
fn batch_position(id: JobId, batch_len: usize) -> Option<usize> {
    let k = u64::MAX - id.0;
    (k < batch_len as u64).then_some(k as usize)
}

/// Where a job of an insert batch stands before anything is written.
#[derive(Clone, Copy, Debug)]
enum Planned {
    New,
    /// Same idempotency key and payload as an existing job within its window.
    Existing(JobId, JobState),
    /// Same idempotency key and payload as an earlier new job of this batch.
    SameAs(usize),
}

fn conflict(index: usize, job: &NewJob, key: &str, existing: JobId) -> Fail {
    Fail::Store(Error::IdempotencyConflict { index, queue: job.queue.clone(), key: key.into(), existing })
}

/// The notifications saying "a job of this queue now waits for its time" (`due <queue>`, once
/// per queue) for the jobs of `jobs` this call turned `retrying`: nodes time their waiters'
/// wake-ups by them (see [`PostgresStore::jobs_due_next`]).
fn due_notifications(jobs: &[Loaded]) -> Vec<String> {
    let mut queues: Vec<&str> = jobs
        .iter()
        .filter(|l| l.changed && matches!(l.job.state(), JobState::Retrying | JobState::Scheduled))
        .map(|l| l.job.queue.as_str())
        .collect();
    queues.sort_unstable();
    queues.dedup();
    queues.into_iter().map(|q| format!("{}{q}", crate::sql::DUE_PREFIX)).collect()
}

/// A reading of the [`Sql::clock`] statement: microseconds since the epoch.
fn clock_us(row: &Row) -> Result<i64, Fail> {
    Ok(row.try_get(0).map_err(|e| corrupt(format!("clock: {e}")))?)
}

/// A clock reading in microseconds as the core's whole milliseconds, rounded down: a deadline
/// computed from it is never later than the lease's length after the reading.
fn ms_floor(us: i64) -> dray_core::Timestamp {
    dray_core::Timestamp(us.div_euclid(1_000))
}

/// The whole milliseconds left before `deadline` at the clock reading `now_us`, rounded down;
/// `None` once the deadline has passed.
fn lease_left_ms(deadline: dray_core::Timestamp, now_us: i64) -> Option<u64> {
    let left_us = deadline.0.checked_mul(1_000)?.checked_sub(now_us)?;
    (left_us > 0).then_some((left_us / 1_000) as u64)
}

/// Whole milliseconds (rounded up) since `measured`, the instant the clock was read before a
/// commit: what the commit and the way back took off the time left.
fn committing_ms(measured: Option<Instant>) -> u64 {
    measured.map_or(0, |at| {
        let elapsed = at.elapsed();
        let ms = elapsed.as_millis() as u64;
        if elapsed.as_nanos() % 1_000_000 == 0 { ms } else { ms + 1 }
    })
}

fn version_to_sql(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A job read under lock, the transitions applied to it in this call, and what the write needs to
/// know about the row as it was.
#[derive(Debug)]
struct Loaded {
    /// Its status after this call's transitions; `history` holds only this call's new entries.
    job: Job,
    base_version: u32,
    base_checkpoint: Option<Payload>,
    base_progress: Option<Payload>,
    base_result: Option<Payload>,
    /// The lease the SQL guard requires the row to still hold (acks, heartbeats).
    guard: Option<LeaseId>,
    changed: bool,
    base_state: JobState,
    /// How many jobs it depends on (`jobs.dependencies`).
    dependencies: u32,
    /// Whether jobs depend on it (`jobs.has_dependents`): when it finishes, they are settled.
    has_dependents: bool,
}

/// A job row (of [`crate::sql::JOB_COLUMNS`]) read to be changed.
fn loaded(row: &Row) -> Result<Loaded, Error> {
    let job = job_from_row(row, Payload::new(Vec::new()))?;
    let dependencies = crate::row::u32_of(get(row, "dependencies")?, "dependencies")?;
    Ok(Loaded { dependencies, has_dependents: get(row, "has_dependents")?, ..Loaded::new(job) })
}

impl Loaded {
    fn new(job: Job) -> Loaded {
        debug_assert!(job.history.is_empty());
        Loaded {
            base_state: job.status.state,
            dependencies: 0,
            has_dependents: false,
            base_version: job.version,
            base_checkpoint: job.status.checkpoint.clone(),
            base_progress: job.status.progress.clone(),
            base_result: job.status.result.clone(),
            guard: None,
            changed: false,
            job,
        }
    }

    fn apply(&mut self, t: Transition) {
        self.job.apply(t);
        self.changed = true;
    }

    fn checkpoint_set(&self) -> bool {
        self.job.status.checkpoint != self.base_checkpoint
    }

    fn progress_set(&self) -> bool {
        self.job.status.progress != self.base_progress
    }

    fn result_set(&self) -> bool {
        self.job.status.result != self.base_result
    }

    /// Bytes of the large values the update statement will carry for this job.
    fn payload_bytes_written(&self) -> usize {
        let len = |set: bool, v: &Option<Payload>| if set { v.as_ref().map_or(0, Payload::len) } else { 0 };
        let s = &self.job.status;
        len(self.checkpoint_set(), &s.checkpoint)
            + len(self.progress_set(), &s.progress)
            + len(self.result_set(), &s.result)
    }
}

/// The parallel arrays of one status update statement ([`crate::sql`]'s `UPDATE`).
struct StatusColumns<'a> {
    id: Vec<i64>,
    old_version: Vec<i32>,
    version: Vec<i32>,
    guard: Vec<Option<i64>>,
    state: Vec<&'static str>,
    run_at: Vec<SystemTime>,
    attempt: Vec<i32>,
    lease_id: Vec<Option<i64>>,
    token: Vec<Option<i64>>,
    worker: Vec<Option<&'a str>>,
    leased_at: Vec<Option<SystemTime>>,
    deadline: Vec<Option<SystemTime>>,
    cancel_requested: Vec<bool>,
    checkpoint_set: Vec<bool>,
    checkpoint: Vec<Option<&'a [u8]>>,
    progress_set: Vec<bool>,
    progress: Vec<Option<&'a [u8]>>,
    result_set: Vec<bool>,
    result: Vec<Option<&'a [u8]>>,
    last_error: Vec<Option<&'a str>>,
    dead_reason: Vec<Option<&'static str>>,
    finished_at: Vec<Option<SystemTime>>,
}

impl<'a> StatusColumns<'a> {
    fn of(jobs: &[&'a Loaded]) -> Result<StatusColumns<'a>, Fail> {
        let n = jobs.len();
        let mut c = StatusColumns {
            id: Vec::with_capacity(n),
            old_version: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            guard: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            run_at: Vec::with_capacity(n),
            attempt: Vec::with_capacity(n),
            lease_id: Vec::with_capacity(n),
            token: Vec::with_capacity(n),
            worker: Vec::with_capacity(n),
            leased_at: Vec::with_capacity(n),
            deadline: Vec::with_capacity(n),
            cancel_requested: Vec::with_capacity(n),
            checkpoint_set: Vec::with_capacity(n),
            checkpoint: Vec::with_capacity(n),
            progress_set: Vec::with_capacity(n),
            progress: Vec::with_capacity(n),
            result_set: Vec::with_capacity(n),
            result: Vec::with_capacity(n),
            last_error: Vec::with_capacity(n),
            dead_reason: Vec::with_capacity(n),
            finished_at: Vec::with_capacity(n),
        };
        for &l in jobs {
            let s = &l.job.status;
            let bytes = |set: bool, v: &'a Option<Payload>| if set { v.as_ref().map(Payload::as_bytes) } else { None };
            c.id.push(id_to_sql(l.job.id).ok_or_else(|| corrupt(format!("job id {}", l.job.id)))?);
            c.old_version.push(version_to_sql(l.base_version));
            c.version.push(version_to_sql(l.job.version));
            c.guard.push(l.guard.map(lease_to_sql));
            c.state.push(s.state.as_str());
            c.run_at.push(to_time(s.run_at));
            c.attempt.push(i32::try_from(s.attempt).unwrap_or(i32::MAX));
            c.lease_id.push(s.lease.as_ref().map(|x| lease_to_sql(x.id)));
            c.token.push(s.lease.as_ref().map(|x| token_to_sql(x.token)));
            c.worker.push(s.lease.as_ref().map(|x| x.worker.as_str()));
            c.leased_at.push(s.lease.as_ref().map(|x| to_time(x.leased_at)));
            c.deadline.push(s.lease.as_ref().map(|x| to_time(x.deadline)));
            c.cancel_requested.push(s.cancel_requested);
            c.checkpoint_set.push(l.checkpoint_set());
            c.checkpoint.push(bytes(l.checkpoint_set(), &s.checkpoint));
            c.progress_set.push(l.progress_set());
            c.progress.push(bytes(l.progress_set(), &s.progress));
            c.result_set.push(l.result_set());
            c.result.push(bytes(l.result_set(), &s.result));
            c.last_error.push(s.last_error.as_deref());
            c.dead_reason.push(s.dead_reason.map(|r| r.as_str()));
            c.finished_at.push(s.finished_at.map(to_time));
        }
        Ok(c)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 22] {
        [
            &self.id,
            &self.old_version,
            &self.version,
            &self.guard,
            &self.state,
            &self.run_at,
            &self.attempt,
            &self.lease_id,
            &self.token,
            &self.worker,
            &self.leased_at,
            &self.deadline,
            &self.cancel_requested,
            &self.checkpoint_set,
            &self.checkpoint,
            &self.progress_set,
            &self.progress,
            &self.result_set,
            &self.result,
            &self.last_error,
            &self.dead_reason,
            &self.finished_at,
        ]
    }
}

#[derive(Default)]
struct HistoryColumns<'a> {
    id: Vec<i64>,
    seq: Vec<i32>,
    at: Vec<SystemTime>,
    kind: Vec<&'static str>,
    state: Vec<&'static str>,
    attempt: Vec<i32>,
    token: Vec<Option<i64>>,
    worker: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
    run_at: Vec<Option<SystemTime>>,
}

impl<'a> HistoryColumns<'a> {
    fn push(&mut self, id: i64, seq: u32, e: &'a HistoryEntry) {
        self.id.push(id);
        self.seq.push(version_to_sql(seq));
        self.at.push(to_time(e.at));
        self.kind.push(e.kind.as_str());
        self.state.push(e.state.as_str());
        self.attempt.push(i32::try_from(e.attempt).unwrap_or(i32::MAX));
        self.token.push(e.token.map(token_to_sql));
        self.worker.push(e.worker.as_ref().map(|w| w.as_str()));
        self.error.push(e.error.as_deref());
        self.run_at.push(e.run_at.map(to_time));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.id,
            &self.seq,
            &self.at,
            &self.kind,
            &self.state,
            &self.attempt,
            &self.token,
            &self.worker,
            &self.error,
            &self.run_at,
        ]
    }
}

/// The parallel arrays of the insert statement: the new jobs as `NewJob::into_job` made them.
struct InsertColumns<'a> {
    queue: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    priority: Vec<i16>,
    run_at: Vec<SystemTime>,
    state: Vec<&'static str>,
    attempts_max: Vec<i32>,
    backoff_base_ms: Vec<i64>,
    backoff_factor: Vec<f64>,
    backoff_cap_ms: Vec<i64>,
    lease_ms: Vec<i64>,
    idempotency_key: Vec<Option<&'a str>>,
    ordering_key: Vec<Option<&'a str>>,
    group_key: Vec<Option<&'a str>>,
    /// Space-separated: tags are validated names, which never contain a space.
    tags: Vec<String>,
    traceparent: Vec<Option<&'a str>>,
    h_at: Vec<SystemTime>,
    h_kind: Vec<&'static str>,
    h_state: Vec<&'static str>,
    h_attempt: Vec<i32>,
    h_run_at: Vec<Option<SystemTime>>,
    schedule_name: Vec<Option<&'a str>>,
    schedule_at: Vec<Option<SystemTime>>,
}

impl<'a> InsertColumns<'a> {
    fn of(jobs: &'a [Job]) -> Result<InsertColumns<'a>, Fail> {
        let mut c = InsertColumns {
            queue: Vec::new(),
            payload: Vec::new(),
            priority: Vec::new(),
            run_at: Vec::new(),
            state: Vec::new(),
            attempts_max: Vec::new(),
            backoff_base_ms: Vec::new(),
            backoff_factor: Vec::new(),
            backoff_cap_ms: Vec::new(),
            lease_ms: Vec::new(),
            idempotency_key: Vec::new(),
            ordering_key: Vec::new(),
            group_key: Vec::new(),
            tags: Vec::new(),
            traceparent: Vec::new(),
            h_at: Vec::new(),
            h_kind: Vec::new(),
            h_state: Vec::new(),
            h_attempt: Vec::new(),
            h_run_at: Vec::new(),
            schedule_name: Vec::new(),
            schedule_at: Vec::new(),
        };
        for job in jobs {
            let [entry] = job.history.as_slice() else {
                return Err(corrupt("a new job without exactly one history entry").into());
            };
            debug_assert!(entry.token.is_none() && entry.worker.is_none() && entry.error.is_none());
            debug_assert!(job.tags.iter().all(|t| !t.contains(' ')), "tags are validated names");
            c.queue.push(job.queue.as_str());
            c.payload.push(job.payload.as_bytes());
            c.priority.push(job.priority);
            c.run_at.push(to_time(job.status.run_at));
            c.state.push(job.status.state.as_str());
            c.attempts_max.push(i32::try_from(job.retry.attempts_max).unwrap_or(i32::MAX));
            c.backoff_base_ms.push(ms_to_sql(job.retry.backoff.base_ms));
            c.backoff_factor.push(job.retry.backoff.factor);
            c.backoff_cap_ms.push(ms_to_sql(job.retry.backoff.cap_ms));
            c.lease_ms.push(ms_to_sql(job.lease_ms));
            c.idempotency_key.push(job.idempotency_key.as_deref());
            c.ordering_key.push(job.ordering_key.as_deref());
            c.group_key.push(job.group_key.as_deref());
            c.tags.push(job.tags.join(" "));
            c.traceparent.push(job.traceparent.as_deref());
            c.h_at.push(to_time(entry.at));
            c.h_kind.push(entry.kind.as_str());
            c.h_state.push(entry.state.as_str());
            c.h_attempt.push(i32::try_from(entry.attempt).unwrap_or(i32::MAX));
            c.h_run_at.push(entry.run_at.map(to_time));
            c.schedule_name.push(job.schedule.as_ref().map(|t| t.name.as_str()));
            c.schedule_at.push(job.schedule.as_ref().map(|t| to_time(t.at)));
        }
        Ok(c)
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.queue,
            &self.payload,
            &self.priority,
            &self.run_at,
            &self.state,
            &self.attempts_max,
            &self.backoff_base_ms,
            &self.backoff_factor,
            &self.backoff_cap_ms,
            &self.lease_ms,
            &self.idempotency_key,
            &self.ordering_key,
            &self.tags,
            &self.traceparent,
            &self.h_at,
            &self.h_kind,
            &self.h_state,
            &self.h_attempt,
            &self.h_run_at,
        ]
    }

    /// `$24` to `$26`, after the four scalars that follow [`Self::params`].
    fn schedule_params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.schedule_name, &self.schedule_at, &self.group_key]
    }
}

/// A queue's policy as statement parameters (`$1` is the name).
struct QueueColumns {
    attempts_max: i32,
    base: i64,
    factor: f64,
    cap: i64,
    lease: i64,
    retention: i64,
    retention_dead: i64,
    paused: bool,
    payload_schema: Option<String>,
    ordering_dead: &'static str,
    concurrency_max: Option<i32>,
    group_concurrency_max: Option<i32>,
    rate: [Option<i64>; 3],
    group_rate: [Option<i64>; 3],
}

/// A rate as its three columns (`limit`, `per_ms`, `burst`), all NULL when there is none.
fn rate_columns(rate: Option<dray_core::Rate>) -> [Option<i64>; 3] {
    match rate {
        Some(r) => [Some(i64::from(r.limit)), Some(ms_to_sql(r.per_ms)), Some(i64::from(r.burst))],
        None => [None; 3],
    }
}

impl QueueColumns {
    fn of(c: &QueueConfig) -> QueueColumns {
        QueueColumns {
            attempts_max: i32::try_from(c.retry.attempts_max).unwrap_or(i32::MAX),
            base: ms_to_sql(c.retry.backoff.base_ms),
            factor: c.retry.backoff.factor,
            cap: ms_to_sql(c.retry.backoff.cap_ms),
            lease: ms_to_sql(c.lease_ms),
            retention: ms_to_sql(c.retention_ms),
            retention_dead: ms_to_sql(c.retention_dead_ms),
            paused: c.paused,
            payload_schema: c.payload_schema.as_ref().map(|s| s.as_str().to_owned()),
            ordering_dead: c.ordering_dead.as_str(),
            concurrency_max: c.limits.concurrency_max.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            group_concurrency_max: c.limits.group_concurrency_max.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            rate: rate_columns(c.limits.rate),
            group_rate: rate_columns(c.limits.group_rate),
        }
    }

    fn params<'a>(&'a self, name: &'a &'a str) -> [&'a (dyn ToSql + Sync); 19] {
        [
            name,
            &self.attempts_max,
            &self.base,
            &self.factor,
            &self.cap,
            &self.lease,
            &self.retention,
            &self.retention_dead,
            &self.paused,
            &self.payload_schema,
            &self.ordering_dead,
            &self.concurrency_max,
            &self.group_concurrency_max,
            &self.rate[0],
            &self.rate[1],
            &self.rate[2],
            &self.group_rate[0],
            &self.group_rate[1],
            &self.group_rate[2],
        ]
    }
}

/// Owned parameters of a filtered select: `$1` after, `$2` limit, then the filter's.
struct OwnedParams {
    after: i64,
    limit: i64,
    texts: Vec<String>,
    times: Vec<SystemTime>,
}

impl OwnedParams {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut out: Vec<&(dyn ToSql + Sync)> = vec![&self.after, &self.limit];
        out.extend(self.texts.iter().map(|t| t as &(dyn ToSql + Sync)));
        out.extend(self.times.iter().map(|t| t as &(dyn ToSql + Sync)));
        out
    }
}

fn filter_params(after: i64, limit: usize, extra: &FilterParams) -> OwnedParams {
    OwnedParams {
        after,
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        texts: extra.texts.clone(),
        times: extra.times.iter().map(|&t| to_time(t)).collect(),
    }
}

impl Store for PostgresStore {
    fn payload_check_set(&self, check: Arc<dyn PayloadCheck>) {
        let _ = self.payload_check.set(check);
    }

    async fn schedule_put(&self, p: SchedulePut) -> Result<ScheduleSaved, Error> {
        p.spec.validate(p.now)?;
        in_transaction!(self, "schedule_put", |tx| self.schedule_put_in(&tx, &p))
    }

    async fn schedule_get(&self, name: &ScheduleName) -> Result<Option<Schedule>, Error> {
        self.schedule_get_one(name.as_str()).await
    }

    async fn schedule_list(&self) -> Result<Vec<Schedule>, Error> {
        self.schedule_list_all().await
    }

    async fn schedule_delete(&self, p: ScheduleDelete) -> Result<(), Error> {
        self.schedule_delete_one(&p).await
    }

    async fn schedule_pause(&self, p: SchedulePause) -> Result<Schedule, Error> {
        in_transaction!(self, "schedule_pause", |tx| self.schedule_pause_in(&tx, &p))
    }

    async fn schedule_trigger(&self, p: ScheduleTrigger) -> Result<Ticked, Error> {
        in_transaction!(self, "schedule_trigger", |tx| self.schedule_trigger_in(&tx, &p))
    }

    async fn schedules_tick(&self, p: SchedulesTick) -> Result<Vec<Ticked>, Error> {
        self.schedules_tick_all(p).await
    }

    async fn job_insert(&self, p: JobInsert) -> Result<Vec<Inserted>, Error> {
        p.validate()?;
        // Waits like a pool checkout does, and gives up the same way.
        let _permit = tokio::time::timeout(self.config.connect_timeout(), self.enqueue_permits.acquire())
            .await
            .map_err(|_| Error::Unavailable {
                context: "no database connection for an enqueue within the connect timeout".into(),
                source: None,
            })?
            .map_err(|_| Error::Unavailable { context: "the store is closed".into(), source: None })?;
        in_transaction!(self, "job_insert", |tx| self.insert_in(&tx, p.now, &p.jobs, true))
    }

    async fn job_lease(&self, p: JobLease) -> Result<Vec<LeasedJob>, Error> {
        p.validate()?;
        let mut queues: Vec<&str> = p.queues.iter().map(QueueName::as_str).collect();
        queues.sort_unstable();
        queues.dedup();
        let (mut leased, measured) = in_transaction!(self, "job_lease", |tx| self.lease_in(&tx, &p, &queues))?;
        let spent = committing_ms(measured);
        for job in &mut leased {
            job.lease_left_ms = job.lease_left_ms.map(|ms| ms.saturating_sub(spent));
        }
        Ok(leased)
    }

    async fn lease_extend(&self, p: LeaseExtend) -> Result<LeaseExtended, Error> {
        p.validate()?;
        let (extended, measured) = in_transaction!(self, "lease_extend", |tx| self.extend_in(&tx, &p))?;
        let spent = committing_ms(measured);
        Ok(LeaseExtended { lease_left_ms: extended.lease_left_ms.map(|ms| ms.saturating_sub(spent)), ..extended })
    }

    async fn job_step(&self, p: JobStep) -> Result<StepRecorded, Error> {
        p.validate()?;
        in_transaction!(self, "job_step", |tx| self.step_in(&tx, &p))
    }

    async fn job_ack(&self, p: JobAck) -> Result<Vec<Result<Acked, Error>>, Error> {
        p.validate()?;
        in_transaction!(self, "job_ack", |tx| self.ack_in(&tx, &p))
    }

    async fn breaker_force(&self, p: dray_store::BreakerForce) -> Result<dray_core::Breaker, Error> {
        in_transaction!(self, "breaker_force", |tx| self.breaker_force_in(&tx, &p))
    }

    async fn job_cancel(&self, p: JobCancel) -> Result<JobState, Error> {
        in_transaction!(self, "job_cancel", |tx| self.cancel_in(&tx, &p))
    }

    async fn job_promote(&self, p: JobPromote) -> Result<JobState, Error> {
        in_transaction!(self, "job_promote", |tx| self.promote_now_in(&tx, &p))
    }

    async fn queue_delete(&self, p: QueueDelete) -> Result<QueueDeleted, Error> {
        in_transaction!(self, "queue_delete", |tx| self.queue_delete_in(&tx, &p))
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>, Error> {
        let Some(sql_id) = id_to_sql(id) else { return Ok(None) };
        let row = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.job_get).await?;
            client.query_opt(&st, &[&sql_id]).await.map_err(db_error)
        })?;
        let Some(row) = row else { return Ok(None) };
        let payload: Vec<u8> = get(&row, "payload")?;
        let mut job = job_from_row(&row, Payload::new(payload))?;
        job.steps = crate::row::steps_from_row(&row, &job)?;
        job.history = history_from_row(&row)?;
        if let Some(deps) = get::<Option<Vec<i64>>>(&row, "depends_on")? {
            job.depends_on = deps.into_iter().map(id_from_sql).collect::<Result<_, _>>()?;
        }
        let kept = u32::try_from(job.history.len()).unwrap_or(u32::MAX);
        if kept > job.version || job.history.first().is_none_or(|e| e.kind != dray_core::HistoryKind::Enqueued) {
            return Err(corrupt(format!("job {id} at version {} has {kept} history entries", job.version)));
        }
        job.history_dropped = job.version - kept;
        Ok(Some(job))
    }

    async fn job_waiting(&self, id: JobId, now: dray_core::Timestamp) -> Result<Option<dray_store::Waiting>, Error> {
        let Some(sql_id) = id_to_sql(id) else { return Ok(None) };
        let now = self.now_param(now);
        let row = on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.job_waiting).await?;
            client.query_opt(&st, &[&sql_id, &now]).await.map_err(db_error)
        })?;
        let Some(row) = row else { return Ok(None) };
        let job = job_from_row(&row, Payload::new(Vec::new()))?;
        let config = crate::row::queue_from_row(&row)?;
        let now = dray_core::Timestamp(get(&row, "now_ms")?);
        let count = |column: &str| -> Result<u64, Error> {
            let n: i64 = get(&row, column)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let until = |rate: Option<dray_core::Rate>, tat: Option<i64>| rate.and_then(|r| r.ready(tat, now).err());
        let facts = dray_store::WaitFacts {
            key_blocker: get::<Option<i64>>(&row, "key_blocker")?.map(|id| JobId(id as u64)),
            queue_running: count("queue_running")?,
            group_running: count("group_running")?,
            queue_rate_until: until(config.limits.rate, get(&row, "queue_tat")?),
            group_rate_until: until(config.limits.group_rate, get(&row, "group_tat")?),
            breaker: breaker_from_row(&row)?,
            backoff_until: crate::row::backoff_from_row(&row)?,
        };
        Ok(facts.waiting(&job, &config, now))
    }

    async fn job_list(&self, p: JobList) -> Result<JobPage, Error> {
        p.validate()?;
        let after = match (p.after, p.newest_first) {
            (None, false) => 0,
            (None, true) => i64::MAX,
            // Ids past what the database holds: none after them, all before them.
            (Some(id), newest_first) => match id_to_sql(id) {
                Some(v) => v,
                None if newest_first => i64::MAX,
                None => return Ok(JobPage { jobs: Vec::new(), next: None }),
            },
        };
        let (text, extra) = self.sql.filtered(Columns::Summary, &p.filter, false, false, p.newest_first);
        // One more than asked for tells whether another page exists.
        let params = filter_params(after, p.limit + 1, &extra);
        let rows = on_client!(self, |client| async {
            let st = prep_client(&client, &text).await?;
            client.query(&st, &params.refs()).await.map_err(db_error)
        })?;
        let more = rows.len() > p.limit;
        let jobs: Vec<_> = rows.iter().take(p.limit).map(summary_from_row).collect::<Result<_, _>>()?;
        let next = if more { jobs.last().map(|j| j.id) } else { None };
        Ok(JobPage { jobs, next })
    }

    async fn dead_redrive(&self, p: DeadRedrive) -> Result<Redriven, Error> {
        p.selection.validate()?;
        in_transaction!(self, "dead_redrive", |tx| self.redrive_in(&tx, &p))
    }

    async fn dead_discard(&self, p: DeadDiscard) -> Result<Vec<JobId>, Error> {
        p.selection.validate()?;
        in_transaction!(self, "dead_discard", |tx| self.discard_in(&tx, &p))
    }

    async fn leases_expire(&self, p: Maintain) -> Result<Vec<Expired>, Error> {
        let fence = self.leadership.fence();
        if fence == Fence::Follower {
            return Ok(Vec::new());
        }
        in_transaction!(self, "leases_expire", |tx| self.expire_in(&tx, &p, fence))
    }

    async fn jobs_promote(&self, p: Maintain) -> Result<usize, Error> {
        let fence = self.leadership.fence();
        if fence == Fence::Follower {
            return Ok(0);
        }
        in_transaction!(self, "jobs_promote", |tx| self.promote_in(&tx, &p, fence))
    }

    async fn jobs_prune(&self, p: Maintain) -> Result<usize, Error> {
        let fence = self.leadership.fence();
        if fence == Fence::Follower {
            return Ok(0);
        }
        let (name, epoch) = fence.params();
        let now = self.now_param(p.now);
        let limit = i64::try_from(p.limit).unwrap_or(i64::MAX);
        // One statement: atomic on its own, no transaction block needed.
        on_client!(self, |client| async {
            let st = prep_client(&client, &self.sql.prune).await?;
            let rows = client.query(&st, &[&now, &limit, &name, &epoch]).await.map_err(db_error)?;
            Ok(rows.len())
        })
    }

    async fn queue_configure(&self, p: QueueConfigure) -> Result<QueueConfig, Error> {
        in_transaction!(self, "queue_configure", |tx| self.configure_in(&tx, &p))
    }

    async fn queue_list(&self) -> Result<Vec<QueueStats>, Error> {
        self.stats(None).await
    }

    async fn queue_stats(&self, queue: &QueueName) -> Result<QueueStats, Error> {
        self.stats(Some(queue)).await?.pop().ok_or_else(|| Error::QueueNotFound(queue.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::from_time;

    #[test]
    fn enqueues_leave_workers_a_quarter_of_the_pool() {
        let cases: Vec<(usize, usize)> =
            [1, 2, 3, 4, 8, 16, 100].iter().map(|&n| (n, enqueue_connections_max(n))).collect();
        assert_eq!(cases, [(1, 1), (2, 1), (3, 2), (4, 3), (8, 6), (16, 12), (100, 75)]);
    }

    #[test]
    fn rng_streams_differ_and_spread() {
        let (a, b) = (Rng::from_os(), Rng::from_os());
        let xs: Vec<u64> = (0..64).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..64).map(|_| b.next()).collect();
        assert_ne!(xs, ys, "two stores draw different lease ids");
        let distinct: HashSet<u64> = xs.iter().copied().collect();
        assert_eq!(distinct.len(), xs.len());
    }

    #[test]
    fn time_left_rounds_down_and_ends_at_the_deadline() {
        let deadline = dray_core::Timestamp(10_000);
        assert_eq!(ms_floor(8_999_999), dray_core::Timestamp(8_999));
        assert_eq!(lease_left_ms(deadline, 8_000_000), Some(2_000));
        assert_eq!(lease_left_ms(deadline, 8_000_001), Some(1_999));
        assert_eq!(lease_left_ms(deadline, 9_999_999), Some(0), "live for one more microsecond");
        assert_eq!(lease_left_ms(deadline, 10_000_000), None, "born expired");
        assert_eq!(lease_left_ms(deadline, 12_000_000), None);
        assert_eq!(committing_ms(None), 0);
    }

    #[test]
    fn due_notifications_name_each_queue_with_a_new_retrying_job_once() {
        let job = |queue: &str, state: JobState, changed: bool| {
            let new = NewJob::new(QueueName::new(queue).unwrap(), Payload::new(b"{}".to_vec()));
            let mut job = new.into_job(JobId(1), dray_core::Timestamp(0), dray_core::RetryPolicy::default(), 1_000);
            job.history.clear();
            job.status.state = state;
            Loaded { changed, ..Loaded::new(job) }
        };
        let jobs = [
            job("b", JobState::Retrying, true),
            job("a", JobState::Retrying, true),
            job("b", JobState::Retrying, true),
            job("c", JobState::Retrying, false),
            job("d", JobState::Dead, true),
        ];
        assert_eq!(due_notifications(&jobs), ["due a", "due b"]);
    }

    #[test]
    fn timestamp_helpers_agree() {
        let t = dray_core::Timestamp(1_700_000_000_123);
        assert_eq!(from_time(to_time(t)), t);
    }
}
