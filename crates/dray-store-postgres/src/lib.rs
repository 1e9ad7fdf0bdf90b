//! The PostgreSQL store: the [`dray_store::Store`] contract on a database that several
//! `dray serve` nodes share. It owns the schema (embedded, versioned migrations) and is the only
//! crate with SQL text; it never speaks HTTP.
//!
//! # Design, and why
//!
//! **One transition function.** Every change of a job's state is decided by
//! `dray_core::transition` in Rust, exactly as in the embedded store; SQL only reads and writes.
//! An operation reads the rows it may change under a row lock (`SELECT ... FOR UPDATE`; leasing,
//! expiry, promotion and pruning use `FOR UPDATE SKIP LOCKED` so concurrent nodes pass over each
//! other's rows instead of queueing), turns each row into a `Job` (without history: no transition
//! reads it), calls `transition`, and writes the resulting status back. Rules therefore live in
//! one place and both stores keep one contract: the conformance suite checks them side by side.
//! Writing the rules a second time in SQL would make them drift.
//!
//! **The same guard in SQL.** Each write is `UPDATE ... WHERE id = $id AND version = $read`,
//! and for acks and heartbeats also `AND state = 'running' AND lease_id = $lease` (River's
//! `river_job.sql` is the model): the check `transition` made is repeated where the data is. Under
//! the row lock the guard always holds; should it ever not (a writer outside the store), the
//! transaction is run again from the read, and answers as a fresh attempt would. Serialization
//! failures and deadlocks are retried the same way.
//!
//! **Few round trips.** One transaction per store call; statements that do not depend on each
//! other are pipelined (tokio-postgres sends them back to back). A call is typically `BEGIN`, one
//! round trip to read (rows and `now`), one to write (status update, history insert, history
//! trim, notification: each one statement over `unnest`ed arrays however many jobs the call
//! touched), and `COMMIT`. An insert batch is one statement (jobs, history, idempotency keys,
//! notification through data-modifying CTEs). A lease is one statement too: the due jobs to
//! promote, the best available jobs per queue (through the partial index, one index range per
//! queue), and a fencing token per job picked, drawn after the row locks are held.
//!
//! **Time.** Production deadlines run on the database's clock, the one clock every node shares.
//! Tests drive time through `params.now`. One code path does both: every statement compares with
//! `coalesce($now, now())`, where `$now` is `params.now` under [`TimeSource::Params`] and NULL
//! under [`TimeSource::Database`]; in the latter mode the Rust side reads the transaction's
//! `now()` (truncated to the core's milliseconds) in the same round trip as its rows, and every
//! timestamp the store writes is computed from it. PostgreSQL's `now()` is the transaction's start,
//! so all statements and the transition agree on one instant; stored timestamps are whole
//! milliseconds, so comparing them with a microsecond `now()` gives the same answer as the core's
//! millisecond comparison.
//!
//! **Fencing tokens** come from a sequence with `CACHE 1`: strictly increasing across sessions,
//! nodes and restarts (a sequence never goes back, also not after a crash). A lease draws its
//! tokens after it holds the row locks, so a later grant on the same job always gets a larger
//! token. **Lease ids** are 64 random bits from an OS-seeded generator per store: unguessable, and
//! never repeated for a job, without any coordination between nodes.
//!
//! **Idempotency keys** have their own table, one row per (queue, key) pointing at the newest job
//! that used it, with the end of its window. An insert looks the batch's keys up, decides
//! duplicates and conflicts in Rust (as the embedded store does), and claims new keys with
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now`: a key another transaction
//! claimed meanwhile is not taken over, the insert notices and runs again, and then finds the
//! other job (a duplicate, or a conflict). Pruning keeps a finished job while a key still points
//! at it within its window. A partial unique index on `jobs` could not express the window.
//!
//! **Durability.** Every pooled session is opened with `synchronous_commit=on` (and the
//! configured `statement_timeout`) as startup options: "accepted means durable" does not depend
//! on the server's or the database's defaults. A call returns only after its `COMMIT` returned.
//! A failed connection, statement or commit is `Error::Unavailable`: the outcome is unknown.
//!
//! **Schema.** Everything lives in one schema (`dray` by default). Migrations are SQL embedded in
//! the binary, versioned in `<schema>.migrations` and applied at [`PostgresStore::connect`] (or by
//! [`migrate`]) in one transaction holding `pg_advisory_xact_lock`, so nodes starting together are
//! safe. See `migrate.rs` for the tables and indexes, and `EXPLAIN.md` in this crate for the plans
//! of the hot statements on 100k jobs.
//!
//! **Wake-ups.** Inserts, promotions and redrives that make jobs available send
//! `NOTIFY <schema>_jobs, '<queue>'` (delivered at commit); the server listens on it. Inserts of
//! scheduled jobs, failed attempts and expired leases that leave a job `retrying` send
//! `'due <queue>'` ([`DUE_PREFIX`]): a node then asks [`PostgresStore::jobs_due_next`] when that
//! queue's next job falls due and wakes its own long-polls then, so no wake-up waits for the
//! leader's promotion (nor for a failover).
//!
//! **One leader for maintenance.** Migration 3 adds `<schema>.leader`; [`Leadership`] (from
//! [`PostgresStore::leadership`]) takes part in the election on a connection of its own. Once it
//! runs, the maintenance calls (`leases_expire`, `jobs_promote`, `jobs_prune`, `schedules_tick`)
//! act only while this node leads, and each of their statements checks the term's epoch against
//! the table in SQL (`leader.rs` says why that fence suffices). Without an election they act
//! unconditionally.
//!
//! **Schedules.** Migration 7 adds `<schema>.schedules` (the spec as columns, the cursor
//! `next_at`, the last tick) and the tick a job stands for on `jobs` (`schedule_name`,
//! `schedule_at`). Decisions are the core's (`dray_core::schedule::plan`, `Overlap::decide`), as in
//! the embedded store. A schedule's tick is one transaction: its row locked, its jobs inserted by
//! `job_insert`'s code, its new cursor written under a guard on the old one and on the leader's
//! epoch, so a tick instant enqueues at most once whichever nodes tick, fail or lose their term
//! (`store/schedule.rs`).
//!
//! **Transactional enqueue.** Migration 2 installs `<schema>.enqueue(queue, payload, options)`,
//! which an application calls inside its own transaction (`docs/outbox.md`); it writes exactly
//! what `job_insert` writes for one job, with the same limits (`<schema>.enqueue_limits()`,
//! checked against `dray_core::Limits` in a test).
//!
//! **TLS.** Every connection (the pool, migrations, the election, and through
//! [`PostgresConfig::connector`] the server's LISTEN connection and the tests' own sessions) is
//! opened by one [`Connector`]: libpq's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`,
//! `verify-full`) and `sslrootcert`, on rustls with the ring provider (`tls.rs`). A TLS refusal
//! (a certificate that does not verify, a server without TLS under `require`, an unreadable CA
//! file) is [`ConnectError::Tls`], which start-up reports instead of retrying; only
//! [`ConnectError::Unavailable`] is worth another attempt.
//!
//! # Not here (yet)
//!
//! Client certificates (`sslcert`/`sslkey`) and channel binding, and strict FIFO per ordering key
//! (as in the embedded store, the key is stored).

mod config;
mod error;
mod leader;
mod migrate;
mod row;
mod sql;
mod store;
mod tls;
mod token;

#[cfg(test)]
mod explain;

pub use config::{Connector, PostgresConfig, TimeSource};
pub use error::ConnectError;
pub use leader::{Leadership, MAINTENANCE, Term};
pub use migrate::{Migrated, migrate, schema_version_latest};
pub use sql::DUE_PREFIX;
pub use store::lock::FENCE_SQLSTATE;
pub use store::sql_ack::{LEASE_EXPIRED_SQLSTATE, STALE_LEASE_SQLSTATE, SqlAck};
pub use store::{DueNext, PoolStatus, PostgresStore};
pub use tls::{Tls, TlsConnector, TlsError, TlsStream};
