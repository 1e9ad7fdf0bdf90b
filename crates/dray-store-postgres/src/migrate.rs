//! The schema, as embedded and versioned migrations, and the one function that applies them.
//!
//! Each migration is SQL text with `{s}` standing for the configured schema. They run in order,
//! each recorded in `<schema>.migrations`, all inside one transaction that first takes a
//! transaction-scoped advisory lock named after the schema: several nodes starting at once
//! serialize on it, and the later ones find the work done. A database whose schema is newer than
//! this binary knows is refused, never "migrated" backwards.

use dray_core::JobState;

use crate::config::PostgresConfig;
use crate::error::{ConnectError, db_context};

/// One step of the schema's history. Never edit a released migration: add a new one.
pub(crate) struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Versions are 1, 2, 3... without gaps.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration { version: 1, name: "jobs", sql: V1_JOBS }];

/// The first schema. Why each piece is shaped as it is:
///
/// - Timestamps are `timestamptz` holding whole milliseconds (the core's `Timestamp`); every value
///   is computed by the store in Rust from the transaction's `now`, so comparisons with a
///   microsecond `now()` agree with the core's millisecond ones.
/// - `state`, `dead_reason` and history `kind` are text with CHECKs: readable for operators and
///   for SQL written by other languages (the transactional enqueue to come).
/// - CHECKs repeat the core's invariants (a lease exactly while running, a finish time exactly
///   when finished, a dead reason exactly when dead): the data is asserted before it is written.
/// - Names and keys are compared byte for byte (`COLLATE "C"`): cheaper than a language's rules,
///   and queues list in the same order as in the embedded store, whatever the database's locale.
/// - No foreign keys: every write touching several tables is one transaction of the store, and a
///   foreign key would cost a lookup and a row lock on `jobs` for every history row.
/// - Fencing tokens come from a sequence with `CACHE 1` (the default, spelled out): values are
///   handed out in time order across every session and node, and a sequence never goes back,
///   also not after a crash. A larger cache would let two nodes hand out tokens out of order.
/// - Idempotency keys live in their own table, one row per (queue, key) pointing at the newest
///   job that used it, with the end of its window. A unique index on `jobs` cannot express "within
///   the window" (an index predicate cannot mention `now()`), and an old job whose window ended
///   may still exist while a new job owns the key. The job row keeps the end of its own key's
///   window too (`idempotency_expires_at`, fixed at insert), so pruning decides per row without a
///   join: a key is only ever taken over after that end.
/// - Partial indexes serve exactly the hot statements; a row is in an index only while it is in
///   the state that index serves, so each stays as small as the work it finds.
const V1_JOBS: &str = r#"
CREATE TABLE {s}.queues (
    name text COLLATE "C" PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 128),
    attempts_max integer NOT NULL CHECK (attempts_max BETWEEN 1 AND 1000),
    backoff_base_ms bigint NOT NULL CHECK (backoff_base_ms >= 1),
    backoff_factor double precision NOT NULL CHECK (backoff_factor >= 1),
    backoff_cap_ms bigint NOT NULL CHECK (backoff_cap_ms >= backoff_base_ms),
    lease_ms bigint NOT NULL CHECK (lease_ms >= 1),
    retention_ms bigint NOT NULL CHECK (retention_ms >= 0),
    retention_dead_ms bigint NOT NULL CHECK (retention_dead_ms >= 0),
    paused boolean NOT NULL
);

CREATE SEQUENCE {s}.fencing_tokens AS bigint MINVALUE 1 NO CYCLE CACHE 1;

CREATE TABLE {s}.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME {s}.jobs_id_seq CACHE 1) PRIMARY KEY,
    queue text COLLATE "C" NOT NULL,
    payload bytea NOT NULL,
    priority smallint NOT NULL,
    created_at timestamptz NOT NULL,
    attempts_max integer NOT NULL CHECK (attempts_max BETWEEN 1 AND 1000),
    backoff_base_ms bigint NOT NULL,
    backoff_factor double precision NOT NULL,
    backoff_cap_ms bigint NOT NULL,
    lease_ms bigint NOT NULL,
    idempotency_key text COLLATE "C",
    -- The end of the key's window: a finished job is not pruned before it.
    idempotency_expires_at timestamptz,
    ordering_key text,
    tags text[] NOT NULL,
    traceparent text,
    state text NOT NULL CHECK (state IN (__STATES__)),
    run_at timestamptz NOT NULL,
    attempt integer NOT NULL CHECK (attempt BETWEEN 0 AND attempts_max),
    lease_id bigint,
    token bigint,
    worker text,
    leased_at timestamptz,
    lease_deadline timestamptz,
    cancel_requested boolean NOT NULL,
    checkpoint bytea,
    progress bytea,
    result bytea,
    last_error text,
    dead_reason text CHECK (dead_reason IN (__DEAD_REASONS__)),
    finished_at timestamptz,
    version integer NOT NULL CHECK (version >= 1),
    CONSTRAINT jobs_lease_exactly_while_running CHECK (
        (state = 'running') = (lease_id IS NOT NULL AND token IS NOT NULL AND worker IS NOT NULL
                               AND leased_at IS NOT NULL AND lease_deadline IS NOT NULL)),
    CONSTRAINT jobs_finished_at_exactly_when_finished CHECK (
        (state IN ('completed', 'dead', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT jobs_dead_reason_exactly_when_dead CHECK ((state = 'dead') = (dead_reason IS NOT NULL)),
    CONSTRAINT jobs_key_window_exactly_with_key CHECK ((idempotency_key IS NULL) = (idempotency_expires_at IS NULL))
);

-- Leasing: the best available jobs of one queue, in lease order.
CREATE INDEX jobs_available ON {s}.jobs (queue, priority DESC, run_at, id) WHERE state = 'available';
-- Promotion (by a lease, per queue, and by maintenance): waiting jobs by due time.
CREATE INDEX jobs_waiting ON {s}.jobs (queue, run_at, id) WHERE state IN ('scheduled', 'retrying');
-- Expiry: running jobs by lease deadline, across queues.
CREATE INDEX jobs_running ON {s}.jobs (lease_deadline, id) WHERE state = 'running';
-- Pruning by retention, per queue.
CREATE INDEX jobs_finished ON {s}.jobs (queue, finished_at, id) WHERE state IN ('completed', 'cancelled');
-- Pruning dead jobs, and the oldest dead job per queue.
CREATE INDEX jobs_dead ON {s}.jobs (queue, finished_at, id) WHERE state = 'dead';
-- Listing by queue and state in id order; counts per state (index-only scans).
CREATE INDEX jobs_queue_state ON {s}.jobs (queue, state, id);

CREATE TABLE {s}.job_history (
    job_id bigint NOT NULL,
    seq integer NOT NULL CHECK (seq >= 1),
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN (__KINDS__)),
    state text NOT NULL CHECK (state IN (__STATES__)),
    attempt integer NOT NULL CHECK (attempt >= 0),
    token bigint,
    worker text,
    error text,
    run_at timestamptz,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE {s}.idempotency (
    queue text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    job_id bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX idempotency_job ON {s}.idempotency (job_id);
"#;

/// The SQL of a migration for `schema`, with the core's names for states, reasons and kinds
/// filled into the CHECKs (one source of truth: the core's enums).
pub(crate) fn render(sql: &str, schema: &str) -> String {
    let list = |names: &mut dyn Iterator<Item = &'static str>| {
        names.map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
    };
    sql.replace("{s}", schema)
        .replace("__STATES__", &list(&mut JobState::ALL.iter().map(|s| s.as_str())))
        .replace("__DEAD_REASONS__", &list(&mut dray_core::DeadReason::ALL.iter().map(|r| r.as_str())))
        .replace("__KINDS__", &list(&mut dray_core::HistoryKind::ALL.iter().map(|k| k.as_str())))
}

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// The versions this call applied (empty when the schema was current).
    pub applied: Vec<i32>,
    /// The schema's version now.
    pub version: i32,
}

/// The newest schema version this binary knows.
pub fn schema_version_latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the configured schema up to date (`dray migrate`); [`crate::PostgresStore::connect`]
/// calls it too. Safe to run from several nodes at once.
///
/// Cancel safety: everything happens in one transaction; dropping the future before it completes
/// applies nothing (or, if the commit was already sent, everything).
pub async fn migrate(config: &PostgresConfig) -> Result<Migrated, ConnectError> {
    config.validate()?;
    let pg = config.pg_config()?;
    let connecting = pg.connect(tokio_postgres::NoTls);
    let (mut client, connection) = tokio::time::timeout(config.connect_timeout(), connecting)
        .await
        .map_err(|_| ConnectError::timeout(config))?
        .map_err(|e| ConnectError::unavailable(config, e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    let result = migrate_on(&mut client, &config.schema).await;
    drop(client);
    let _ = driver.await;
    result
}

/// Applies the pending migrations over an open connection, in one transaction.
pub(crate) async fn migrate_on(client: &mut tokio_postgres::Client, schema: &str) -> Result<Migrated, ConnectError> {
    let tx = client.transaction().await.map_err(db_context("begin the migration"))?;
    // Scoped to this transaction: released at commit or rollback, also if the connection dies.
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('dray.migrate.' || $1::text, 0))", &[&schema])
        .await
        .map_err(db_context("take the migration lock"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(db_context("create the migrations table"))?;
    let row = tx
        .query_one(&format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"), &[])
        .await
        .map_err(db_context("read the schema version"))?;
    let current: i32 = row.get(0);
    let latest = schema_version_latest();
    if current > latest {
        return Err(ConnectError::SchemaTooNew { schema: schema.to_owned(), found: current, known: latest });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(&render(m.sql, schema)).await.map_err(|source| ConnectError::Migration {
            version: m.version,
            name: m.name,
            source,
        })?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .await
        .map_err(db_context("record a migration"))?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(db_context("commit the migration"))?;
    if !applied.is_empty() {
        tracing::info!(schema, ?applied, version = latest, "applied migrations");
    }
    Ok(Migrated { applied, version: latest.max(current) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "migration {} is out of order", m.name);
        }
    }

    #[test]
    fn render_fills_every_placeholder() {
        let sql = render(V1_JOBS, "myschema");
        assert!(!sql.contains("{s}") && !sql.contains("__"), "unfilled placeholder");
        assert!(sql.contains("CREATE TABLE myschema.jobs"));
        assert!(sql.contains("'lease_expired'") && sql.contains("'cancel_requested'") && sql.contains("'retrying'"));
    }
}
