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
    pub sql: Sql,
}

/// A migration's SQL: written out, or derived from an earlier migration's text (a function
/// redefined with one change, so the change is all the migration says).
pub(crate) enum Sql {
    Text(&'static str),
    Derived(fn() -> String),
}

impl Sql {
    fn text(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Sql::Text(text) => std::borrow::Cow::Borrowed(text),
            Sql::Derived(derive) => std::borrow::Cow::Owned(derive()),
        }
    }
}

/// Every migration, in order. Versions are 1, 2, 3... without gaps.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "jobs", sql: Sql::Text(V1_JOBS) },
    Migration { version: 2, name: "enqueue_function", sql: Sql::Text(V2_ENQUEUE) },
    Migration { version: 3, name: "leader", sql: Sql::Text(V3_LEADER) },
    Migration { version: 4, name: "tokens", sql: Sql::Text(V4_TOKENS) },
    Migration { version: 5, name: "enqueue_compares_values", sql: Sql::Derived(v5_enqueue_compares_values) },
    Migration { version: 6, name: "payload_schema", sql: Sql::Text(V6_PAYLOAD_SCHEMA) },
    Migration { version: 7, name: "schedules", sql: Sql::Text(V7_SCHEDULES) },
    Migration { version: 8, name: "ordering", sql: Sql::Text(V8_ORDERING) },
    Migration { version: 9, name: "flow_limits", sql: Sql::Derived(v9_flow_limits) },
    Migration { version: 10, name: "locks", sql: Sql::Text(V10_LOCKS) },
    Migration { version: 11, name: "breaker", sql: Sql::Text(V11_BREAKER) },
    Migration { version: 12, name: "queue_backoff", sql: Sql::Text(V12_QUEUE_BACKOFF) },
    Migration { version: 13, name: "complete_fail_functions", sql: Sql::Text(V13_COMPLETE_FAIL) },
    Migration { version: 14, name: "dependencies", sql: Sql::Text(V14_DEPENDENCIES) },
    Migration { version: 15, name: "job_steps", sql: Sql::Text(V15_JOB_STEPS) },
];

/// Job dependencies (`dray_core::dependency`): the state `blocked` and the history kind
/// `released` join the CHECKs; a dependent's edges are rows of `job_dependencies` in the order it
/// named them (the ids of a batch's own jobs are known only after its insert, so they cannot be
/// a column written by the insert), found from the dependency by the second index. Two columns
/// spare the hot statements any look at that table: `dependencies` (how many a job has: its
/// lease reads them only then) and `has_dependents` (set when a dependent is inserted, under the
/// dependency's row lock: a finishing job settles its dependents only then).
const V14_DEPENDENCIES: &str = "
ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check CHECK (state IN (__STATES__));
ALTER TABLE {s}.job_history DROP CONSTRAINT job_history_state_check;
ALTER TABLE {s}.job_history ADD CONSTRAINT job_history_state_check CHECK (state IN (__STATES__));
ALTER TABLE {s}.job_history DROP CONSTRAINT job_history_kind_check;
ALTER TABLE {s}.job_history ADD CONSTRAINT job_history_kind_check CHECK (kind IN (__KINDS__));
ALTER TABLE {s}.sql_acks DROP CONSTRAINT sql_acks_state_check;
ALTER TABLE {s}.sql_acks ADD CONSTRAINT sql_acks_state_check CHECK (state IN (__STATES__));
ALTER TABLE {s}.jobs
    ADD COLUMN dependencies integer NOT NULL DEFAULT 0 CHECK (dependencies >= 0),
    ADD COLUMN on_dependency_failure text CHECK (on_dependency_failure IN ('cancel', 'run')),
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
CREATE TABLE {s}.job_dependencies (
    dependent bigint NOT NULL,
    ordinal integer NOT NULL CHECK (ordinal >= 0),
    dependency bigint NOT NULL,
    PRIMARY KEY (dependent, ordinal)
);
CREATE INDEX job_dependencies_dependency ON {s}.job_dependencies (dependency);
";

/// Durable steps inside a job (`dray_core::step`, `Store::job_step`): one `job_steps` row per
/// recorded step, under the job's id and the step's name (the first record of a name wins, so
/// the key is also the guard), with its place in recording order (`seq`, from 1), its result
/// (JSON text as sent, like payloads), when and by which attempt it was recorded.
///
/// - `jobs.steps_count` and `jobs.steps_bytes` (names and results together) count a job's steps,
///   written with each step under the job's row lock: the job's bounds are checked from the row
///   without reading its steps, and a lease reads `job_steps` only for the jobs it picked whose
///   count is not 0, so leasing jobs that never recorded a step costs nothing more.
/// - No foreign key, as for `job_history`: every statement that deletes jobs (prune, discard,
///   queue delete) deletes their steps in the same statement.
/// - The history kind `step_recorded` joins the CHECK (as migration 6 added `rejected`). The
///   steps' entries are ordinary history rows (their `seq` is the job's version), so the SQL
///   `complete()`/`fail()` of migration 13 trim them with the rest, unchanged.
const V15_JOB_STEPS: &str = r#"
ALTER TABLE {s}.jobs ADD COLUMN steps_count integer NOT NULL DEFAULT 0 CHECK (steps_count >= 0),
                     ADD COLUMN steps_bytes bigint NOT NULL DEFAULT 0 CHECK (steps_bytes >= 0);

CREATE TABLE {s}.job_steps (
    job_id bigint NOT NULL,
    name text COLLATE "C" NOT NULL CHECK (octet_length(name) >= 1),
    seq integer NOT NULL CHECK (seq >= 1),
    result bytea NOT NULL CHECK (octet_length(result) >= 1),
    recorded_at timestamptz NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    PRIMARY KEY (job_id, name)
);

ALTER TABLE {s}.job_history DROP CONSTRAINT job_history_kind_check;
ALTER TABLE {s}.job_history ADD CONSTRAINT job_history_kind_check CHECK (kind IN (__KINDS__));
"#;

/// Until when a queue leases nothing because a worker reported a downstream rate limit (a
/// failure with `rate_limited`): set by the ack, raised only (`greatest`), read by every lease.
/// And the index the prune pass finds full rate buckets by (a full bucket is the same as none,
/// so its row is deleted: one row per group ever rate limited would otherwise stay forever).
const V12_QUEUE_BACKOFF: &str = "
ALTER TABLE {s}.queues ADD COLUMN backoff_until timestamptz;
CREATE INDEX rate_buckets_tat ON {s}.rate_buckets (tat);
";

/// Exactly-once effects: `<schema>.complete(job, lease_id, result)` and `<schema>.fail(job,
/// lease_id, error, retryable, retry_after_ms)`, which an application calls inside its own
/// transaction, next to the write of the job's effect, so that the effect and the end of the
/// attempt commit together or not at all (`docs/outbox.md`, "Exactly-once effects").
///
/// They apply the transition `PostgresStore::job_ack` applies (the core's `transition` for
/// `Event::Complete` and `Event::Fail`, written here a second time in SQL; the differential test
/// in `tests/exactly_once.rs` keeps the two equal): the same guards (the job's current lease, its
/// deadline not passed on the database's clock read after the row lock is held), the same limits
/// (`ack_limits()`, checked against `dray_core::Limits` by a test), the same row, history entry,
/// history trimming and `due <queue>` notification, and the same outcome counted by the queue's
/// circuit breaker (`breaker_record`, `dray_core::Breaker::record` in SQL).
///
/// - A lease that is not the job's current one (never granted, the job moved on or finished)
///   raises SQLSTATE `DR002`; the current lease past its deadline raises `DR003`; a job that does
///   not exist `P0002` (`no_data_found`); a refused argument `22023` with the field in `COLUMN`,
///   a NULL one `22004`. Nothing is written by a refused call.
/// - Lock order as `job_ack`: the job's row, then its queue's breaker row.
/// - `sql_acks` gets one row per accepted call, in the same transaction: the servers drain it
///   (`DELETE ... RETURNING`, each row by one node) and count it in their metrics and logs as an
///   HTTP ack, since no server saw the call.
///
/// Self-contained (it only reads tables of migrations 1 to 11), so it can be renumbered.
const V13_COMPLETE_FAIL: &str = r#"
CREATE TABLE {s}.sql_acks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    lease_id bigint NOT NULL,
    queue text COLLATE "C" NOT NULL,
    state text NOT NULL CHECK (state IN (__STATES__)),
    attempt integer NOT NULL,
    leased_at timestamptz NOT NULL,
    at timestamptz NOT NULL,
    retry_at timestamptz
);

CREATE FUNCTION {s}.ack_limits() RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT jsonb_build_object(
    'result_bytes_max', 262144,
    'error_bytes_max', 8192,
    'retry_after_ms_max', 2592000000,
    'history_entries_max', 256
)
$$;

-- Counts an attempt's outcome ('success', 'failure' or 'void') towards its queue's circuit
-- breaker, as `dray_core::Breaker::record` does; a queue without a breaker has no row.
CREATE FUNCTION {s}.breaker_record(p_queue text, p_now timestamptz, p_leased_at timestamptz, p_outcome text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    b record;
    v_bucket_ms bigint;
    v_n bigint;
    v_slot integer;
    v_starts bigint[];
    v_attempts integer[];
    v_failures integer[];
    v_total bigint := 0;
    v_failed bigint := 0;
    v_enter text;
    i integer;
BEGIN
    SELECT * INTO b FROM {s}.breakers bb WHERE bb.queue = p_queue FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF b.changed_at IS NOT NULL AND p_leased_at < b.changed_at THEN
        -- Leased under an earlier state: not this state's business.
        RETURN;
    END IF;
    IF b.state = 'open' OR (b.state = 'closed' AND p_outcome = 'void') THEN
        RETURN;
    END IF;
    IF b.state = 'closed' THEN
        v_bucket_ms := greatest((b.window_ms + 9) / 10, 1);
        v_n := floor((extract(epoch FROM p_now) * 1000) / v_bucket_ms)::bigint;
        v_slot := mod(mod(v_n, 10) + 10, 10)::integer + 1;
        IF cardinality(b.bucket_starts) = 10 AND cardinality(b.bucket_attempts) = 10
           AND cardinality(b.bucket_failures) = 10 THEN
            v_starts := b.bucket_starts;
            v_attempts := b.bucket_attempts;
            v_failures := b.bucket_failures;
        ELSE
            v_starts := array_fill(0::bigint, ARRAY[10]);
            v_attempts := array_fill(0, ARRAY[10]);
            v_failures := array_fill(0, ARRAY[10]);
        END IF;
        IF v_starts[v_slot] <> v_n OR (v_attempts[v_slot] = 0 AND v_failures[v_slot] = 0) THEN
            v_starts[v_slot] := v_n;
            v_attempts[v_slot] := 0;
            v_failures[v_slot] := 0;
        END IF;
        v_attempts[v_slot] := v_attempts[v_slot] + 1;
        IF p_outcome = 'failure' THEN
            v_failures[v_slot] := v_failures[v_slot] + 1;
        END IF;
        FOR i IN 1..10 LOOP
            IF v_starts[i] >= v_n - 9 AND v_starts[i] <= v_n THEN
                v_total := v_total + v_attempts[i];
                v_failed := v_failed + v_failures[i];
            END IF;
        END LOOP;
        IF v_total >= b.min_attempts AND v_failed::double precision >= b.failure_ratio * v_total::double precision THEN
            v_enter := 'open';
        ELSE
            UPDATE {s}.breakers SET bucket_starts = v_starts, bucket_attempts = v_attempts, bucket_failures = v_failures
            WHERE queue = p_queue;
            RETURN;
        END IF;
    ELSIF p_outcome = 'void' THEN
        -- A cancelled probe gives its slot back.
        UPDATE {s}.breakers SET probes_granted = greatest(probes_granted - 1, 0) WHERE queue = p_queue;
        RETURN;
    ELSIF p_outcome = 'failure' THEN
        v_enter := 'open';
    ELSIF b.probes_succeeded + 1 >= b.probes THEN
        v_enter := 'closed';
    ELSE
        UPDATE {s}.breakers SET probes_succeeded = probes_succeeded + 1 WHERE queue = p_queue;
        RETURN;
    END IF;
    -- Entering a state (`Breaker::enter`): its window emptied, its probes reset, counted.
    UPDATE {s}.breakers SET
        state = v_enter,
        forced = CASE WHEN v_enter = 'open' THEN false ELSE forced END,
        changed_at = p_now,
        half_open_at = CASE WHEN v_enter = 'open' THEN p_now + open_ms * interval '1 millisecond' END,
        probes_granted = 0,
        probes_succeeded = 0,
        to_open = to_open + (v_enter = 'open')::integer,
        to_closed = to_closed + (v_enter = 'closed')::integer,
        bucket_starts = array_fill(0::bigint, ARRAY[10]),
        bucket_attempts = array_fill(0, ARRAY[10]),
        bucket_failures = array_fill(0, ARRAY[10])
    WHERE queue = p_queue;
END
$$;

-- Raises the error every refused argument gets: SQLSTATE 22023, the field in COLUMN.
CREATE FUNCTION {s}.ack_invalid(caller text, field text, message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = '{s}.' || caller || ': ' || field || ' ' || message,
        ERRCODE = 'invalid_parameter_value', COLUMN = field;
END
$$;

-- The one body of complete() and fail(): `caller` names the function in messages.
CREATE FUNCTION {s}.ack_apply(caller text, p_job bigint, p_lease text, p_complete boolean, p_result jsonb,
                              p_error text, p_retryable boolean, p_retry_after_ms bigint)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    l jsonb := {s}.ack_limits();
    j record;
    v_lease bigint;
    v_lease_text text;
    v_now timestamptz;
    v_result bytea;
    v_number jsonb;
    v_error text;
    v_bytes bytea;
    v_end integer;
    v_state text;
    v_run_at timestamptz;
    v_retry_at timestamptz;
    v_dead_reason text;
    v_finished_at timestamptz;
    v_exponent integer;
    v_window bigint;
    v_window_f double precision;
    v_delay bigint;
    v_version integer;
    v_updated integer;
BEGIN
    IF p_job IS NULL OR p_lease IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = '{s}.' || caller || ': job and lease_id must not be null',
            ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_lease !~ '^[0-9A-Fa-f]{16}$' THEN
        PERFORM {s}.ack_invalid(caller, 'lease_id', 'must be the 16 hex digits the lease was granted with');
    END IF;
    v_lease := ('x' || p_lease)::bit(64)::bigint;
    v_lease_text := lower(p_lease);
    IF p_complete THEN
        IF p_result IS NOT NULL THEN
            v_result := convert_to(p_result::text, 'UTF8');
            IF octet_length(v_result) > (l->>'result_bytes_max')::integer THEN
                PERFORM {s}.ack_invalid(caller, 'result', format('is %s bytes; the limit is %s',
                    octet_length(v_result), l->>'result_bytes_max'));
            END IF;
            -- As the HTTP API: no number a worker reading JSON as doubles would see as infinity.
            FOR v_number IN SELECT x FROM jsonb_path_query(p_result, 'lax $.**') AS x
                            WHERE jsonb_typeof(x) = 'number' LOOP
                IF abs(v_number::text::numeric) > 1.7976931348623157e308 THEN
                    PERFORM {s}.ack_invalid(caller, 'result', format(
                        'holds the number %s, beyond the range of a 64-bit floating-point number (about 1.8e308)',
                        left(v_number::text, 40)));
                END IF;
            END LOOP;
        END IF;
    ELSE
        IF p_error IS NULL OR p_retryable IS NULL THEN
            RAISE EXCEPTION USING MESSAGE = '{s}.' || caller || ': error and retryable must not be null',
                ERRCODE = 'null_value_not_allowed';
        END IF;
        IF p_retry_after_ms IS NOT NULL AND (p_retry_after_ms < 0
                                             OR p_retry_after_ms > (l->>'retry_after_ms_max')::bigint) THEN
            PERFORM {s}.ack_invalid(caller, 'retry_after_ms', format('is %s; allowed is 0 to %s',
                p_retry_after_ms, l->>'retry_after_ms_max'));
        END IF;
        -- Truncated, not refused, to the limit's bytes on a character boundary (`truncate_utf8`).
        v_error := p_error;
        v_bytes := convert_to(p_error, 'UTF8');
        IF octet_length(v_bytes) > (l->>'error_bytes_max')::integer THEN
            v_end := (l->>'error_bytes_max')::integer;
            -- get_byte counts from 0: the byte after the kept ones must start a character.
            WHILE v_end > 0 AND (get_byte(v_bytes, v_end) & 192) = 128 LOOP
                v_end := v_end - 1;
            END LOOP;
            v_error := convert_from(substring(v_bytes FROM 1 FOR v_end), 'UTF8');
        END IF;
    END IF;

    SELECT * INTO j FROM {s}.jobs jj WHERE jj.id = p_job FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING MESSAGE = format('{s}.%s: no job %s', caller, p_job),
            ERRCODE = 'no_data_found';
    END IF;
    -- The database's clock once the row is ours: the deadline is checked and the change dated
    -- at the same instant, whole milliseconds like every time the store writes.
    v_now := date_trunc('milliseconds', clock_timestamp());
    IF j.state IN ('completed', 'dead', 'cancelled') THEN
        RAISE EXCEPTION USING
            MESSAGE = format('{s}.%s: stale lease %s: job %s is already %s', caller, v_lease_text, p_job, j.state),
            DETAIL = 'The job has finished; this attempt''s outcome no longer counts.',
            HINT = 'Roll back: the effect must not commit without the job''s completion.',
            ERRCODE = 'DR002';
    END IF;
    IF j.state <> 'running' OR j.lease_id <> v_lease THEN
        RAISE EXCEPTION USING
            MESSAGE = format('{s}.%s: stale lease %s: job %s is %s and this lease is not its current one',
                             caller, v_lease_text, p_job, j.state),
            DETAIL = 'The lease ran out or was never granted; the job is (or will be) delivered again.',
            HINT = 'Roll back: the effect must not commit without the job''s completion.',
            ERRCODE = 'DR002';
    END IF;
    IF j.lease_deadline <= v_now THEN
        RAISE EXCEPTION USING
            MESSAGE = format('{s}.%s: lease %s of job %s expired at %s (database clock)', caller, v_lease_text, p_job,
                             to_char(j.lease_deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
            DETAIL = 'The lease''s deadline passed before this call; the job will be delivered again.',
            HINT = 'Roll back: the effect must not commit without the job''s completion. Heartbeat more often or lease for longer.',
            ERRCODE = 'DR003';
    END IF;

    v_run_at := j.run_at;
    v_dead_reason := NULL;
    v_finished_at := NULL;
    IF p_complete THEN
        v_state := 'completed';
        v_finished_at := v_now;
    ELSIF j.cancel_requested THEN
        v_state := 'cancelled';
        v_finished_at := v_now;
    ELSIF NOT p_retryable THEN
        v_state := 'dead';
        v_dead_reason := 'non_retryable';
        v_finished_at := v_now;
    ELSIF j.attempt >= j.attempts_max THEN
        v_state := 'dead';
        v_dead_reason := 'failed';
        v_finished_at := v_now;
    ELSE
        v_state := 'retrying';
        IF p_retry_after_ms IS NOT NULL THEN
            v_delay := p_retry_after_ms;
        ELSE
            -- `Backoff::delay_ms`: full jitter over min(cap, base * factor^(attempt - 1)).
            v_exponent := least(greatest(j.attempt - 1, 0), 1000);
            IF ln(j.backoff_base_ms::double precision) + v_exponent * ln(j.backoff_factor)
               > ln(j.backoff_cap_ms::double precision) + 1 THEN
                v_window := j.backoff_cap_ms;
            ELSE
                v_window_f := j.backoff_base_ms::double precision * power(j.backoff_factor, v_exponent);
                v_window := CASE WHEN v_window_f < j.backoff_cap_ms THEN floor(v_window_f)::bigint
                                 ELSE j.backoff_cap_ms END;
            END IF;
            v_delay := least(floor(random() * (v_window + 1))::bigint, v_window);
        END IF;
        v_retry_at := v_now + v_delay * interval '1 millisecond';
        v_run_at := v_retry_at;
    END IF;
    v_version := j.version + 1;

    UPDATE {s}.jobs AS jj SET
        state = v_state, run_at = v_run_at, lease_id = NULL, token = NULL, worker = NULL, leased_at = NULL,
        lease_deadline = NULL,
        result = CASE WHEN p_complete THEN v_result ELSE jj.result END,
        last_error = CASE WHEN p_complete THEN jj.last_error ELSE v_error END,
        dead_reason = v_dead_reason, finished_at = v_finished_at, version = v_version
    WHERE jj.id = p_job AND jj.version = j.version AND jj.state = 'running' AND jj.lease_id = v_lease;
    GET DIAGNOSTICS v_updated = ROW_COUNT;
    IF v_updated <> 1 THEN
        -- The row is locked: only a writer outside Dray's rules gets here.
        RAISE EXCEPTION USING MESSAGE = format('{s}.%s: job %s changed under its row lock', caller, p_job),
            ERRCODE = 'serialization_failure';
    END IF;
    INSERT INTO {s}.job_history (job_id, seq, at, kind, state, attempt, token, worker, error, run_at)
    VALUES (p_job, v_version, v_now, CASE WHEN p_complete THEN 'completed' ELSE 'failed' END, v_state, j.attempt,
            j.token, j.worker, CASE WHEN p_complete THEN NULL ELSE v_error END, v_retry_at);
    IF v_version > (l->>'history_entries_max')::integer THEN
        -- The first entry and the newest `history_entries_max - 1` stay (`Job::push_history`).
        DELETE FROM {s}.job_history h
        WHERE h.job_id = p_job AND h.seq > 1 AND h.seq <= v_version - ((l->>'history_entries_max')::integer - 1);
    END IF;
    IF v_state = 'retrying' THEN
        -- Delivered at commit: nodes time their waiters' wake-ups by it.
        PERFORM pg_notify('{s}_jobs', 'due ' || j.queue);
    END IF;
    PERFORM {s}.breaker_record(j.queue, v_now, j.leased_at,
        CASE WHEN v_state = 'cancelled' THEN 'void' WHEN p_complete THEN 'success' ELSE 'failure' END);
    INSERT INTO {s}.sql_acks (job_id, lease_id, queue, state, attempt, leased_at, at, retry_at)
    VALUES (p_job, v_lease, j.queue, v_state, j.attempt, j.leased_at, v_now, v_retry_at);
    RETURN v_state;
END
$$;

CREATE FUNCTION {s}.complete(job bigint, lease_id text, result jsonb DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN {s}.ack_apply('complete', job, lease_id, true, result, NULL, NULL, NULL);
END
$$;

CREATE FUNCTION {s}.fail(job bigint, lease_id text, error text, retryable boolean DEFAULT true,
                         retry_after_ms bigint DEFAULT NULL) RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN {s}.ack_apply('fail', job, lease_id, false, NULL, error, retryable, retry_after_ms);
END
$$;

COMMENT ON FUNCTION {s}.complete(bigint, text, jsonb) IS
    'Completes a leased Dray job inside the caller''s transaction; returns its state. See docs/outbox.md.';
COMMENT ON FUNCTION {s}.fail(bigint, text, text, boolean, bigint) IS
    'Fails a leased Dray job''s attempt inside the caller''s transaction; returns its state. See docs/outbox.md.';
"#;

/// Circuit breakers (`dray_core::breaker`): one row per queue that has one, holding its policy,
/// its state and its sliding window (`BUCKETS` bucket numbers with their attempt and failure
/// counts, parallel arrays; empty until the first outcome). A queue without a breaker has no
/// row, so its leases and acks find nothing to lock. Acks, expiries and leases change a row only
/// under its lock (`store/breaker.rs`); deleting the queue deletes it.
const V11_BREAKER: &str = r#"
CREATE TABLE {s}.breakers (
    queue text COLLATE "C" PRIMARY KEY REFERENCES {s}.queues (name) ON DELETE CASCADE,
    failure_ratio double precision NOT NULL CHECK (failure_ratio > 0 AND failure_ratio <= 1),
    window_ms bigint NOT NULL CHECK (window_ms >= 1),
    min_attempts integer NOT NULL CHECK (min_attempts >= 1),
    open_ms bigint NOT NULL CHECK (open_ms >= 1),
    probes integer NOT NULL CHECK (probes >= 1),
    state text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    forced boolean NOT NULL DEFAULT false,
    changed_at timestamptz,
    half_open_at timestamptz,
    probes_granted integer NOT NULL DEFAULT 0,
    probes_succeeded integer NOT NULL DEFAULT 0,
    to_closed bigint NOT NULL DEFAULT 0,
    to_open bigint NOT NULL DEFAULT 0,
    to_half_open bigint NOT NULL DEFAULT 0,
    bucket_starts bigint[] NOT NULL DEFAULT '{}',
    bucket_attempts integer[] NOT NULL DEFAULT '{}',
    bucket_failures integer[] NOT NULL DEFAULT '{}'
);
"#;

/// Flow limits (`dray_store::FlowLimits`): a job's `group_key`; a queue's concurrency limits and
/// rates (a rate's three columns are NULL together); the token buckets of rated queues and groups
/// (`rate_buckets`, the queue's own bucket under the group `''`, each one number: the generic
/// cell rate algorithm's theoretical arrival time in nanoseconds, `dray_core::flow`); and the
/// partial indexes the lease probes: a group's running jobs and its available jobs in lease order.
/// `group_turns` holds, per queue with groups, the group served last (`''`: the jobs without a
/// group), where the next lease's turn starts (`sql::GROUPS_NEXT`). `jobs_available` is rebuilt
/// for ungrouped jobs only: grouped jobs are in `jobs_group_available`, so the lease of a queue
/// with groups reaches its ungrouped jobs without walking past its grouped ones, and no job is in
/// both indexes. `enqueue()` accepts `group_key`.
const V9_FLOW_LIMITS: &str = "
ALTER TABLE {s}.jobs ADD COLUMN group_key text CHECK (octet_length(group_key) BETWEEN 1 AND __GROUP_KEY_BYTES_MAX__);
ALTER TABLE {s}.queues
    ADD COLUMN concurrency_max integer CHECK (concurrency_max >= 1),
    ADD COLUMN group_concurrency_max integer CHECK (group_concurrency_max >= 1),
    ADD COLUMN rate_limit bigint,
    ADD COLUMN rate_per_ms bigint,
    ADD COLUMN rate_burst bigint,
    ADD COLUMN group_rate_limit bigint,
    ADD COLUMN group_rate_per_ms bigint,
    ADD COLUMN group_rate_burst bigint,
    ADD CONSTRAINT queues_rate_whole CHECK (num_nulls(rate_limit, rate_per_ms, rate_burst) IN (0, 3)),
    ADD CONSTRAINT queues_group_rate_whole
        CHECK (num_nulls(group_rate_limit, group_rate_per_ms, group_rate_burst) IN (0, 3));
CREATE TABLE {s}.rate_buckets (
    queue text NOT NULL REFERENCES {s}.queues (name) ON DELETE CASCADE,
    group_key text NOT NULL,
    tat bigint NOT NULL,
    PRIMARY KEY (queue, group_key)
);
CREATE INDEX jobs_group_running ON {s}.jobs (queue, group_key) WHERE group_key IS NOT NULL AND state = 'running';
CREATE INDEX jobs_group_available ON {s}.jobs (queue, group_key, priority DESC, run_at, id)
    WHERE group_key IS NOT NULL AND state = 'available';
DROP INDEX {s}.jobs_available;
CREATE INDEX jobs_available ON {s}.jobs (queue, priority DESC, run_at, id)
    WHERE state = 'available' AND group_key IS NULL;
CREATE TABLE {s}.group_turns (
    queue text PRIMARY KEY REFERENCES {s}.queues (name) ON DELETE CASCADE,
    last_group text NOT NULL
);
";

fn v9_flow_limits() -> String {
    let function = v5_enqueue_compares_values();
    let start = function.find("CREATE OR REPLACE FUNCTION {s}.enqueue(").expect("migration 5 redefines enqueue()");
    let mut function = function[start..].to_owned();
    let edits = [
        ("    v_ordering_key text;\n", "    v_ordering_key text;\n    v_group_key text;\n"),
        (
            "'idempotency_key', 'ordering_key', 'tags', 'traceparent']",
            "'idempotency_key', 'ordering_key', 'group_key', 'tags', 'traceparent']",
        ),
        (
            "idempotency_key, ordering_key, tags, traceparent');",
            "idempotency_key, ordering_key, group_key, tags, traceparent');",
        ),
        (
            "        (l->>'ordering_key_bytes_max')::integer);\n",
            "        (l->>'ordering_key_bytes_max')::integer);\n    v_group_key := {s}.enqueue_key({s}.enqueue_text(o->'group_key', 'group_key'), 'group_key',\n        __GROUP_KEY_BYTES_MAX__);\n",
        ),
        (
            "traceparent, state, run_at, attempt, cancel_requested, version)\n",
            "traceparent, state, run_at, attempt, cancel_requested, version, group_key)\n",
        ),
        (
            "v_ordering_key, v_tags, v_traceparent, v_state, v_run_at, 0, false, 1);",
            "v_ordering_key, v_tags, v_traceparent, v_state, v_run_at, 0, false, 1, v_group_key);",
        ),
    ];
    for (from, to) in edits {
        assert_eq!(function.matches(from).count(), 1, "migration 5's enqueue() has {from:?} once");
        function = function.replace(from, to);
    }
    format!("{V9_FLOW_LIMITS}\n{function}")
}

/// Locks with fencing tokens (`dray_core::lock`), and the fence that makes them safe.
///
/// - `locks` holds one row per lock someone held at its last change (a row whose holds all
///   expired stays until the lock next changes or a sweep at the bound); every operation locks
///   the row first, so operations on one lock run one at a time, and a new hold's token, drawn
///   from the jobs' `fencing_tokens` sequence after that row lock, is above every earlier hold's.
/// - `lock_holders` holds the holds, at most `permits` per lock (the core checks it; the bound is
///   `Limits::LOCK_PERMITS_MAX`). A holder's `token` is unique per lock, and so is its `owner`.
/// - `fences` is the newest token each fenced resource has seen, written only by `fence()`,
///   inside the caller's transaction: a rolled-back write leaves no trace, and the row lock it
///   takes serializes concurrent fenced writers of one resource until they commit.
/// - `fence()` raises SQLSTATE `DR001` (class `DR`, Dray's own) for a token older than the
///   newest seen, naming the resource, the token and the newest token; an equal token passes (a
///   holder writing twice). It returns the newest token, which is then its own.
const V10_LOCKS: &str = r#"
CREATE TABLE {s}.locks (
    name text COLLATE "C" PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 128),
    permits integer NOT NULL CHECK (permits BETWEEN 1 AND 1000)
);
CREATE TABLE {s}.lock_holders (
    name text COLLATE "C" NOT NULL,
    owner text NOT NULL CHECK (octet_length(owner) BETWEEN 1 AND 128),
    token bigint NOT NULL,
    acquired_at timestamptz NOT NULL,
    deadline timestamptz NOT NULL,
    ttl_ms bigint NOT NULL CHECK (ttl_ms >= 1),
    PRIMARY KEY (name, token),
    UNIQUE (name, owner)
);
CREATE TABLE {s}.fences (
    resource text COLLATE "C" PRIMARY KEY CHECK (octet_length(resource) BETWEEN 1 AND 256),
    token bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE FUNCTION {s}.fence(resource text, token bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    newest bigint;
BEGIN
    IF fence.resource IS NULL OR fence.token IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = '{s}.fence: resource and token must not be null',
            ERRCODE = 'null_value_not_allowed';
    END IF;
    IF octet_length(fence.resource) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION USING
            MESSAGE = format('{s}.fence: resource is %s bytes; allowed is 1 to 256', octet_length(fence.resource)),
            ERRCODE = 'invalid_parameter_value', COLUMN = 'resource';
    END IF;
    -- Locks the resource's row whether or not the token moves it forward.
    INSERT INTO {s}.fences AS f (resource, token, updated_at)
    VALUES (fence.resource, fence.token, now())
    ON CONFLICT ON CONSTRAINT fences_pkey DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at
        WHERE f.token < excluded.token
    RETURNING f.token INTO newest;
    IF newest IS NULL THEN
        SELECT f.token INTO newest FROM {s}.fences AS f WHERE f.resource = fence.resource;
    END IF;
    IF newest > fence.token THEN
        RAISE EXCEPTION USING
            MESSAGE = format('{s}.fence: resource %L refused fencing token %s: it has seen the newer token %s',
                             fence.resource, fence.token, newest),
            DETAIL = 'A newer holder of the lock has written to this resource; this holder''s lock was lost.',
            HINT = 'Roll back. Acquire the lock again before writing.',
            ERRCODE = 'DR001';
    END IF;
    RETURN newest;
END
$$;
"#;

/// Strict FIFO per ordering key: a queue's `ordering_dead` (whether a dead job holds its key
/// back), and the two partial indexes the lease's eligibility test probes (see `sql::LEASE`):
/// a key's blocking jobs in id order (dead ones included: the lease filters them by the queue's
/// policy), and its running jobs. Both hold only keyed jobs, so unkeyed queues pay nothing.
const V8_ORDERING: &str = "
ALTER TABLE {s}.queues ADD COLUMN ordering_dead text NOT NULL DEFAULT 'block'
    CHECK (ordering_dead IN ('block', 'skip'));
CREATE INDEX jobs_ordering ON {s}.jobs (queue, ordering_key, id)
    WHERE ordering_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retrying', 'dead');
CREATE INDEX jobs_ordering_running ON {s}.jobs (queue, ordering_key)
    WHERE ordering_key IS NOT NULL AND state = 'running';
";

/// Schedules (`dray_core::Schedule`), one row each, and the tick a job was enqueued for.
///
/// - The spec is columns, not a document: operators can read and query it, and CHECKs repeat
///   the core's shape of it (a backoff has all three parts or none, a cron rule has an
///   expression and a zone, an interval an every and an anchor, `run_all` a cap, a last tick
///   all three parts). The template's `run_at`, `delay_ms` and `idempotency_key` have no
///   columns: a valid spec never sets them.
/// - `anchor_ms` is the core's milliseconds as they are: an anchor may be any instant, also one
///   `timestamptz` cannot hold.
/// - `next_at` is the cursor: a tick pass moves it, in the same transaction as the jobs it
///   enqueues, under the row's lock and the leader's fence (see `PostgresStore::schedules_tick`).
///   `schedules_due` serves the pass's search for due schedules.
/// - The jobs' `schedule_name` and `schedule_at` are NULL for a job no tick enqueued (every job
///   before this migration, and every job `enqueue()` writes). The CHECK is added `NOT VALID`:
///   the new columns are NULL in every existing row, so there is nothing to check, and a
///   validating scan would hold the jobs table locked for as long as it reads it.
const V7_SCHEDULES: &str = r#"
CREATE TABLE {s}.schedules (
    name text COLLATE "C" PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 128),
    queue text COLLATE "C" NOT NULL,
    payload bytea NOT NULL,
    priority smallint NOT NULL,
    attempts_max integer,
    backoff_base_ms bigint,
    backoff_factor double precision,
    backoff_cap_ms bigint,
    lease_ms bigint,
    ordering_key text,
    tags text[] NOT NULL,
    traceparent text,
    rule text NOT NULL CHECK (rule IN ('cron', 'interval')),
    cron_expr text,
    cron_zone text,
    every_ms bigint CHECK (every_ms >= 1),
    anchor_ms bigint,
    misfire text NOT NULL CHECK (misfire IN ('run_once', 'skip', 'run_all')),
    misfire_cap integer CHECK (misfire_cap >= 1),
    overlap text NOT NULL CHECK (overlap IN ('allow', 'skip', 'cancel_previous')),
    jitter_ms bigint NOT NULL CHECK (jitter_ms >= 0),
    misfire_grace_ms bigint NOT NULL CHECK (misfire_grace_ms >= 0),
    paused boolean NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    next_at timestamptz,
    last_at timestamptz,
    last_job bigint,
    last_fired_at timestamptz,
    CONSTRAINT schedules_backoff_whole CHECK (
        (backoff_base_ms IS NULL) = (backoff_factor IS NULL) AND (backoff_factor IS NULL) = (backoff_cap_ms IS NULL)),
    CONSTRAINT schedules_cron_rule CHECK ((rule = 'cron') = (cron_expr IS NOT NULL AND cron_zone IS NOT NULL)),
    CONSTRAINT schedules_interval_rule CHECK ((rule = 'interval') = (every_ms IS NOT NULL AND anchor_ms IS NOT NULL)),
    CONSTRAINT schedules_cap_exactly_for_run_all CHECK ((misfire = 'run_all') = (misfire_cap IS NOT NULL)),
    CONSTRAINT schedules_last_tick_whole CHECK (
        (last_at IS NULL) = (last_job IS NULL) AND (last_job IS NULL) = (last_fired_at IS NULL))
);
-- The tick pass: schedules whose cursor has come, unless paused.
CREATE INDEX schedules_due ON {s}.schedules (next_at) WHERE NOT paused AND next_at IS NOT NULL;

ALTER TABLE {s}.jobs ADD COLUMN schedule_name text COLLATE "C", ADD COLUMN schedule_at timestamptz;
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_schedule_tick_whole
    CHECK ((schedule_name IS NULL) = (schedule_at IS NULL)) NOT VALID;
"#;

/// A queue's JSON Schema for payloads (checked by the server, which holds the validator), and
/// the history kind `rejected` (a redrive refused because the payload no longer matches it).
const V6_PAYLOAD_SCHEMA: &str = "
ALTER TABLE {s}.queues ADD COLUMN payload_schema text
    CHECK (octet_length(payload_schema) BETWEEN 1 AND __PAYLOAD_SCHEMA_BYTES_MAX__);
ALTER TABLE {s}.job_history DROP CONSTRAINT job_history_kind_check;
ALTER TABLE {s}.job_history ADD CONSTRAINT job_history_kind_check CHECK (kind IN (__KINDS__));
";

/// `enqueue()` as in migration 2, with two changes. An idempotency key repeated with the same
/// JSON value returns the existing job even when the text differs (spacing, member order,
/// `1.0` for `1`), as over HTTP: the stored bytes are compared as `jsonb` (`payload_same`), and
/// bytes `jsonb` cannot read compare as bytes. And a payload holding a number beyond a double's
/// range (`1e400`, which `jsonb` keeps exactly but a JavaScript or Python worker reads as
/// infinity) is refused, as over HTTP.
fn v5_enqueue_compares_values() -> String {
    let start = V2_ENQUEUE.find("CREATE FUNCTION {s}.enqueue(queue text").expect("migration 2 defines enqueue()");
    let end = V2_ENQUEUE.find("COMMENT ON FUNCTION {s}.enqueue(").expect("migration 2 comments enqueue()");
    let function = &V2_ENQUEUE[start..end];
    let edits = [
        ("CREATE FUNCTION {s}.enqueue(", "CREATE OR REPLACE FUNCTION {s}.enqueue("),
        ("IF v_existing_payload = v_body THEN", "IF {s}.payload_same(v_existing_payload, payload) THEN"),
        (
            "    v_body := convert_to(payload::text, 'UTF8');\n",
            "    v_body := convert_to(payload::text, 'UTF8');\n    PERFORM {s}.payload_check_numbers(payload);\n",
        ),
    ];
    let mut function = function.to_owned();
    for (from, to) in edits {
        assert_eq!(function.matches(from).count(), 1, "migration 2's enqueue() has {from:?} once");
        function = function.replace(from, to);
    }
    format!("{V5_PAYLOAD_FUNCTIONS}\n{function}")
}

const V5_PAYLOAD_FUNCTIONS: &str = r#"
-- Whether stored payload bytes hold the same JSON value as a jsonb (jsonb equality: member
-- order, spacing and number spelling do not matter). Bytes jsonb cannot read (a string holding
-- \u0000, which jsonb refuses) are the same only when equal to the jsonb's text.
CREATE FUNCTION {s}.payload_same(stored bytea, payload jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN convert_from(stored, 'UTF8')::jsonb = payload;
EXCEPTION WHEN others THEN
    RETURN stored = convert_to(payload::text, 'UTF8');
END
$$;

-- Refuses a payload holding a number no double can hold (as the HTTP API does).
CREATE FUNCTION {s}.payload_check_numbers(payload jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v jsonb;
BEGIN
    FOR v IN SELECT x FROM jsonb_path_query(payload, 'lax $.**') AS x WHERE jsonb_typeof(x) = 'number' LOOP
        IF abs(v::text::numeric) > 1.7976931348623157e308 THEN
            PERFORM {s}.enqueue_invalid('payload', format(
                'holds the number %s, beyond the range of a 64-bit floating-point number (about 1.8e308)',
                left(v::text, 40)));
        END IF;
    END LOOP;
END
$$;
"#;

/// API tokens (`dray_store::TokenStore`): the SHA-256 of each secret, never the secret. Scopes
/// are their text form (`enqueue:billing.*`), parsed back by the store. Revoked tokens stay
/// (with `revoked_at`), so the table only grows by what operators create; the store bounds it.
const V4_TOKENS: &str = r#"
CREATE TABLE {s}.tokens (
    id text COLLATE "C" PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 128),
    scopes text[] NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 32),
    hash bytea NOT NULL CHECK (octet_length(hash) = 32),
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz
);
"#;

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

/// Leader election (`leader.rs`): one row per elected role (today only `maintenance`), holding
/// who leads, the term's fencing token and when the lease ends on the database's clock.
///
/// - `epoch` is the fencing token: it grows by one at every new term (another holder, or the same
///   holder after its lease ran out), never goes back, and a statement fenced with it checks
///   `epoch = $mine AND expires_at > now()` in its own transaction.
/// - No row is ever deleted: a released lease keeps its holder and epoch with `expires_at` set to
///   the release time, so the next term's epoch continues from it.
const V3_LEADER: &str = r#"
CREATE TABLE {s}.leader (
    name text COLLATE "C" PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 64),
    holder text NOT NULL CHECK (octet_length(holder) BETWEEN 1 AND 256),
    epoch bigint NOT NULL CHECK (epoch >= 1),
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
"#;

/// Transactional enqueue: `<schema>.enqueue(queue, payload, options)`, for applications that
/// write their own rows and the job in one transaction of their own (the outbox pattern), from
/// any language. See `docs/outbox.md`.
///
/// It writes exactly what `PostgresStore::job_insert` writes for one job (the queue row with the
/// default policy if the queue is new, the job row at version 1, its `enqueued` history entry,
/// its idempotency key, and `NOTIFY <schema>_jobs` when the job is available, delivered at
/// commit), validates the options against the same limits as `NewJob::validate`, and takes time
/// from the transaction's `now()` (truncated to whole milliseconds, like the store).
///
/// The limits and defaults are literals in `<schema>.enqueue_limits()`, read by `enqueue`: one
/// place in SQL, compared with `dray_core::Limits` by a test (`tests/outbox.rs`). Should a limit
/// change in the core, that test fails and a new migration replaces the function.
///
/// Idempotency without the store's retry loop (the caller owns the transaction): the key is
/// claimed first with a job id drawn from the identity sequence; a key claimed meanwhile by a
/// concurrent transaction makes the claim wait for it, find it live, and look the key up again
/// (a new snapshot per statement under READ COMMITTED), which then answers duplicate or conflict.
const V2_ENQUEUE: &str = r##"
CREATE FUNCTION {s}.enqueue_limits() RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT jsonb_build_object(
    'queue_name_bytes_max', 128,
    'idempotency_key_bytes_max', 256,
    'ordering_key_bytes_max', 256,
    'tag_bytes_max', 64,
    'tags_per_job_max', 16,
    'traceparent_bytes_max', 256,
    'payload_bytes_max', 1048576,
    'priority_min', -1000,
    'priority_max', 1000,
    'lease_ms_min', 1000,
    'lease_ms_max', 43200000,
    'lease_ms_default', 30000,
    'attempts_max_max', 1000,
    'attempts_max_default', 25,
    'backoff_base_ms_default', 1000,
    'backoff_base_ms_max', 86400000,
    'backoff_factor_default', 2.0,
    'backoff_factor_min', 1.0,
    'backoff_factor_max', 10.0,
    'backoff_cap_ms_default', 3600000,
    'backoff_cap_ms_max', 2592000000,
    'run_at_ahead_ms_max', 31622400000,
    'idempotency_window_ms_default', 86400000,
    'idempotency_window_ms_max', 2592000000,
    'retention_ms_default', 86400000,
    'retention_dead_ms_default', 2592000000
)
$$;

-- Raises the error every refused option gets: SQLSTATE 22023 (invalid_parameter_value), the
-- field in the message and in the error's COLUMN field.
CREATE FUNCTION {s}.enqueue_invalid(field text, message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = '{s}.enqueue: ' || field || ' ' || message,
        ERRCODE = 'invalid_parameter_value', COLUMN = field;
END
$$;

-- A JSON number option (NULL when absent or JSON null), checked to be an integer when `integral`
-- and within lo..hi.
CREATE FUNCTION {s}.enqueue_number(v jsonb, field text, integral boolean, lo numeric, hi numeric)
RETURNS numeric LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n numeric;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'number' THEN
        PERFORM {s}.enqueue_invalid(field, 'must be a number; got ' || v::text);
    END IF;
    n := v::text::numeric;
    IF integral AND n <> trunc(n) THEN
        PERFORM {s}.enqueue_invalid(field, 'must be a whole number; got ' || v::text);
    END IF;
    IF n < lo OR n > hi THEN
        PERFORM {s}.enqueue_invalid(field, format('is %s; allowed is %s to %s', v::text, lo, hi));
    END IF;
    RETURN n;
END
$$;

-- A JSON string option (NULL when absent or JSON null).
CREATE FUNCTION {s}.enqueue_text(v jsonb, field text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM {s}.enqueue_invalid(field, 'must be a string; got ' || v::text);
    END IF;
    RETURN v #>> '{}';
END
$$;

-- A key (idempotency or ordering): not empty, within its bytes, no control characters (the
-- core's `char::is_control`: U+0000-U+001F and U+007F-U+009F).
CREATE FUNCTION {s}.enqueue_key(k text, field text, bytes_max integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF k IS NULL THEN
        RETURN NULL;
    END IF;
    IF k = '' THEN
        PERFORM {s}.enqueue_invalid(field, 'must not be empty');
    END IF;
    IF octet_length(k) > bytes_max THEN
        PERFORM {s}.enqueue_invalid(field, format('is %s bytes; the limit is %s', octet_length(k), bytes_max));
    END IF;
    IF k ~ ('[' || chr(1) || '-' || chr(31) || chr(127) || '-' || chr(159) || ']') THEN
        PERFORM {s}.enqueue_invalid(field, 'must not contain control characters');
    END IF;
    RETURN k;
END
$$;

-- A name (queue, tag): not empty, within its bytes, ASCII letters, digits and _ - . : only.
CREATE FUNCTION {s}.enqueue_name(name text, field text, bytes_max integer) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad text;
BEGIN
    IF name IS NULL OR name = '' THEN
        PERFORM {s}.enqueue_invalid(field, 'must not be empty');
    END IF;
    IF octet_length(name) > bytes_max THEN
        PERFORM {s}.enqueue_invalid(field, format('is %s bytes; the limit is %s', octet_length(name), bytes_max));
    END IF;
    bad := substring(name FROM '[^A-Za-z0-9_.:-]');
    IF bad IS NOT NULL THEN
        PERFORM {s}.enqueue_invalid(field, format('contains %L; allowed are ASCII letters, digits and _ - . :', bad));
    END IF;
    RETURN name;
END
$$;

CREATE FUNCTION {s}.enqueue(queue text, payload jsonb, options jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    l jsonb := {s}.enqueue_limits();
    o jsonb := coalesce(options, '{}'::jsonb);
    v_now timestamptz := date_trunc('milliseconds', now());
    v_queue text;
    v_body bytea;
    v_priority smallint;
    v_run_at_text text;
    v_run_at timestamptz;
    v_delay_ms bigint;
    v_attempts_max integer;
    b jsonb;
    v_base_ms bigint;
    v_factor double precision;
    v_cap_ms bigint;
    v_lease_ms bigint;
    v_key text;
    v_ordering_key text;
    v_tags text[] := '{}';
    t jsonb;
    v_traceparent text;
    tp text[];
    v_window_ms bigint;
    v_key_expires timestamptz;
    v_state text;
    q record;
    v_id bigint;
    v_existing bigint;
    v_existing_payload bytea;
    v_claimed integer;
    v_unknown text;
    v_attempt integer := 0;
BEGIN
    v_queue := {s}.enqueue_name(queue, 'queue', (l->>'queue_name_bytes_max')::integer);
    IF payload IS NULL THEN
        PERFORM {s}.enqueue_invalid('payload', 'must not be NULL (use ''null''::jsonb for a JSON null)');
    END IF;
    v_body := convert_to(payload::text, 'UTF8');
    IF octet_length(v_body) > (l->>'payload_bytes_max')::integer THEN
        PERFORM {s}.enqueue_invalid('payload',
            format('is %s bytes; the limit is %s', octet_length(v_body), l->>'payload_bytes_max'));
    END IF;

    IF jsonb_typeof(o) = 'null' THEN
        o := '{}'::jsonb;
    END IF;
    IF jsonb_typeof(o) <> 'object' THEN
        PERFORM {s}.enqueue_invalid('options', 'must be a JSON object; got ' || o::text);
    END IF;
    SELECT string_agg(format('%L', k), ', ' ORDER BY k) INTO v_unknown
    FROM jsonb_object_keys(o) AS k
    WHERE k <> ALL (ARRAY['priority', 'run_at', 'delay_ms', 'attempts_max', 'backoff', 'lease_ms',
                          'idempotency_key', 'ordering_key', 'tags', 'traceparent']);
    IF v_unknown IS NOT NULL THEN
        PERFORM {s}.enqueue_invalid('options', 'has unknown keys ' || v_unknown || '; allowed are priority, '
            || 'run_at, delay_ms, attempts_max, backoff, lease_ms, idempotency_key, ordering_key, tags, traceparent');
    END IF;

    v_priority := coalesce({s}.enqueue_number(o->'priority', 'priority', true,
        (l->>'priority_min')::numeric, (l->>'priority_max')::numeric), 0);

    v_run_at_text := {s}.enqueue_text(o->'run_at', 'run_at');
    v_delay_ms := {s}.enqueue_number(o->'delay_ms', 'delay_ms', true, 0, (l->>'run_at_ahead_ms_max')::numeric);
    IF v_run_at_text IS NOT NULL AND v_delay_ms IS NOT NULL THEN
        PERFORM {s}.enqueue_invalid('delay_ms', 'cannot be combined with run_at');
    END IF;
    IF v_run_at_text IS NOT NULL THEN
        IF v_run_at_text !~ '^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$' THEN
            PERFORM {s}.enqueue_invalid('run_at',
                format('%s is not an RFC 3339 timestamp (like 2026-11-21T09:00:00Z)', to_json(v_run_at_text)));
        END IF;
        BEGIN
            v_run_at := date_trunc('milliseconds', v_run_at_text::timestamptz);
        EXCEPTION WHEN others THEN
            PERFORM {s}.enqueue_invalid('run_at',
                format('%s is not an RFC 3339 timestamp (like 2026-11-21T09:00:00Z)', to_json(v_run_at_text)));
        END;
        IF v_run_at > v_now + (l->>'run_at_ahead_ms_max')::bigint * interval '1 millisecond' THEN
            PERFORM {s}.enqueue_invalid('run_at', format('is %s ms ahead; the limit is %s ms',
                (extract(epoch FROM v_run_at - v_now) * 1000)::bigint, l->>'run_at_ahead_ms_max'));
        END IF;
    ELSIF v_delay_ms IS NOT NULL THEN
        v_run_at := v_now + v_delay_ms * interval '1 millisecond';
    ELSE
        v_run_at := v_now;
    END IF;

    v_attempts_max := {s}.enqueue_number(o->'attempts_max', 'attempts_max', true, 1,
        (l->>'attempts_max_max')::numeric);

    b := o->'backoff';
    IF b IS NOT NULL AND jsonb_typeof(b) <> 'null' THEN
        IF jsonb_typeof(b) <> 'object' THEN
            PERFORM {s}.enqueue_invalid('backoff', 'must be an object {base_ms, factor, cap_ms}; got ' || b::text);
        END IF;
        SELECT string_agg(format('%L', k), ', ' ORDER BY k) INTO v_unknown
        FROM jsonb_object_keys(b) AS k WHERE k <> ALL (ARRAY['base_ms', 'factor', 'cap_ms']);
        IF v_unknown IS NOT NULL THEN
            PERFORM {s}.enqueue_invalid('backoff', 'has unknown keys ' || v_unknown || '; allowed are base_ms, factor, cap_ms');
        END IF;
        IF NOT (b ? 'base_ms' AND b ? 'factor' AND b ? 'cap_ms') THEN
            PERFORM {s}.enqueue_invalid('backoff', 'needs all of base_ms, factor and cap_ms');
        END IF;
        v_base_ms := {s}.enqueue_number(b->'base_ms', 'backoff.base_ms', true, 1, (l->>'backoff_base_ms_max')::numeric);
        v_factor := {s}.enqueue_number(b->'factor', 'backoff.factor', false,
            (l->>'backoff_factor_min')::numeric, (l->>'backoff_factor_max')::numeric);
        v_cap_ms := {s}.enqueue_number(b->'cap_ms', 'backoff.cap_ms', true, v_base_ms, (l->>'backoff_cap_ms_max')::numeric);
        IF v_base_ms IS NULL OR v_factor IS NULL OR v_cap_ms IS NULL THEN
            PERFORM {s}.enqueue_invalid('backoff', 'needs all of base_ms, factor and cap_ms');
        END IF;
    END IF;

    v_lease_ms := {s}.enqueue_number(o->'lease_ms', 'lease_ms', true, (l->>'lease_ms_min')::numeric,
        (l->>'lease_ms_max')::numeric);
    v_key := {s}.enqueue_key({s}.enqueue_text(o->'idempotency_key', 'idempotency_key'), 'idempotency_key',
        (l->>'idempotency_key_bytes_max')::integer);
    v_ordering_key := {s}.enqueue_key({s}.enqueue_text(o->'ordering_key', 'ordering_key'), 'ordering_key',
        (l->>'ordering_key_bytes_max')::integer);

    IF o->'tags' IS NOT NULL AND jsonb_typeof(o->'tags') <> 'null' THEN
        IF jsonb_typeof(o->'tags') <> 'array' THEN
            PERFORM {s}.enqueue_invalid('tags', 'must be an array of strings; got ' || (o->'tags')::text);
        END IF;
        IF jsonb_array_length(o->'tags') > (l->>'tags_per_job_max')::integer THEN
            PERFORM {s}.enqueue_invalid('tags', format('has %s tags; the limit is %s',
                jsonb_array_length(o->'tags'), l->>'tags_per_job_max'));
        END IF;
        FOR t IN SELECT value FROM jsonb_array_elements(o->'tags') LOOP
            IF jsonb_typeof(t) <> 'string' THEN
                PERFORM {s}.enqueue_invalid('tags', 'must be an array of strings; got ' || t::text);
            END IF;
            v_tags := v_tags || {s}.enqueue_name(t #>> '{}', 'tags', (l->>'tag_bytes_max')::integer);
        END LOOP;
    END IF;

    v_traceparent := {s}.enqueue_text(o->'traceparent', 'traceparent');
    IF v_traceparent IS NOT NULL THEN
        IF octet_length(v_traceparent) > (l->>'traceparent_bytes_max')::integer THEN
            PERFORM {s}.enqueue_invalid('traceparent', format('is %s bytes; the limit is %s',
                octet_length(v_traceparent), l->>'traceparent_bytes_max'));
        END IF;
        tp := string_to_array(v_traceparent, '-');
        IF cardinality(tp) < 4
           OR tp[1] !~ '^[0-9a-f]{2}$' OR tp[1] = 'ff'
           OR tp[2] !~ '^[0-9a-f]{32}$' OR tp[3] !~ '^[0-9a-f]{16}$' OR tp[4] !~ '^[0-9a-f]{2}$'
           OR tp[2] ~ '^0+$' OR tp[3] ~ '^0+$'
           OR (tp[1] = '00' AND cardinality(tp) > 4) THEN
            PERFORM {s}.enqueue_invalid('traceparent', 'is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)');
        END IF;
    END IF;

    -- The queue, created with the default policy by its first job (as the store does).
    INSERT INTO {s}.queues (name, attempts_max, backoff_base_ms, backoff_factor, backoff_cap_ms, lease_ms,
                            retention_ms, retention_dead_ms, paused)
    VALUES (v_queue, (l->>'attempts_max_default')::integer, (l->>'backoff_base_ms_default')::bigint,
            (l->>'backoff_factor_default')::double precision, (l->>'backoff_cap_ms_default')::bigint,
            (l->>'lease_ms_default')::bigint, (l->>'retention_ms_default')::bigint,
            (l->>'retention_dead_ms_default')::bigint, false)
    ON CONFLICT DO NOTHING;
    SELECT qq.attempts_max, qq.backoff_base_ms, qq.backoff_factor, qq.backoff_cap_ms, qq.lease_ms INTO q
    FROM {s}.queues qq WHERE qq.name = v_queue;

    v_state := CASE WHEN v_run_at > v_now THEN 'scheduled' ELSE 'available' END;

    IF v_key IS NULL THEN
        v_id := nextval('{s}.jobs_id_seq');
    ELSE
        v_window_ms := coalesce(nullif(current_setting('dray.idempotency_window_ms', true), '')::bigint,
                                (l->>'idempotency_window_ms_default')::bigint);
        IF v_window_ms < 1 OR v_window_ms > (l->>'idempotency_window_ms_max')::bigint THEN
            PERFORM {s}.enqueue_invalid('dray.idempotency_window_ms', format('is %s; allowed is 1 to %s',
                v_window_ms, l->>'idempotency_window_ms_max'));
        END IF;
        v_key_expires := v_now + v_window_ms * interval '1 millisecond';
        LOOP
            v_attempt := v_attempt + 1;
            SELECT j.id, j.payload INTO v_existing, v_existing_payload
            FROM {s}.idempotency i JOIN {s}.jobs j ON j.id = i.job_id
            WHERE i.queue = v_queue AND i.key = v_key AND i.expires_at > v_now;
            IF FOUND THEN
                IF v_existing_payload = v_body THEN
                    RETURN v_existing;
                END IF;
                RAISE EXCEPTION USING
                    MESSAGE = format('{s}.enqueue: idempotency_key %s is already used in queue %s by job %s with another payload',
                                     to_json(v_key), to_json(v_queue), v_existing),
                    DETAIL = format('existing job id: %s', v_existing),
                    HINT = 'Use a new key, or the same payload to get the existing job''s id.',
                    ERRCODE = 'unique_violation', CONSTRAINT = 'idempotency_pkey', TABLE = 'idempotency';
            END IF;
            IF v_attempt > 8 THEN
                RAISE EXCEPTION USING
                    MESSAGE = format('{s}.enqueue: idempotency_key %s in queue %s is held by a job that no longer exists',
                                     to_json(v_key), to_json(v_queue)),
                    ERRCODE = 'serialization_failure';
            END IF;
            v_id := nextval('{s}.jobs_id_seq');
            -- Claims a free key, or one past its window; waits for a concurrent claim to finish.
            INSERT INTO {s}.idempotency AS i (queue, key, job_id, expires_at)
            VALUES (v_queue, v_key, v_id, v_key_expires)
            ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
                WHERE i.expires_at <= v_now;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
            EXIT WHEN v_claimed = 1;
        END LOOP;
    END IF;

    INSERT INTO {s}.jobs (id, queue, payload, priority, created_at, attempts_max, backoff_base_ms, backoff_factor,
                          backoff_cap_ms, lease_ms, idempotency_key, idempotency_expires_at, ordering_key, tags,
                          traceparent, state, run_at, attempt, cancel_requested, version)
    OVERRIDING SYSTEM VALUE
    VALUES (v_id, v_queue, v_body, v_priority, v_now, coalesce(v_attempts_max, q.attempts_max),
            coalesce(v_base_ms, q.backoff_base_ms), coalesce(v_factor, q.backoff_factor),
            coalesce(v_cap_ms, q.backoff_cap_ms), coalesce(v_lease_ms, q.lease_ms), v_key, v_key_expires,
            v_ordering_key, v_tags, v_traceparent, v_state, v_run_at, 0, false, 1);
    INSERT INTO {s}.job_history (job_id, seq, at, kind, state, attempt, run_at)
    VALUES (v_id, 1, v_now, 'enqueued', v_state, 0, CASE WHEN v_state = 'scheduled' THEN v_run_at END);
    IF v_state = 'available' THEN
        -- Delivered at commit, when the job becomes visible; never after a rollback.
        PERFORM pg_notify('{s}_jobs', v_queue);
    END IF;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION {s}.enqueue(text, jsonb, jsonb) IS
    'Enqueues one Dray job inside the caller''s transaction; returns its id. See docs/outbox.md.';
"##;

/// The SQL of a migration for `schema`, with the core's names for states, reasons and kinds
/// filled into the CHECKs (one source of truth: the core's enums).
pub(crate) fn render(sql: &str, schema: &str) -> String {
    let list =
        |names: &mut dyn Iterator<Item = &'static str>| names.map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    sql.replace("{s}", schema)
        .replace("__STATES__", &list(&mut JobState::ALL.iter().map(|s| s.as_str())))
        .replace("__DEAD_REASONS__", &list(&mut dray_core::DeadReason::ALL.iter().map(|r| r.as_str())))
        .replace("__KINDS__", &list(&mut dray_core::HistoryKind::ALL.iter().map(|k| k.as_str())))
        .replace("__PAYLOAD_SCHEMA_BYTES_MAX__", &dray_core::Limits::PAYLOAD_SCHEMA_BYTES_MAX.to_string())
        .replace("__GROUP_KEY_BYTES_MAX__", &dray_core::Limits::GROUP_KEY_BYTES_MAX.to_string())
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
    let connector = config.connector()?;
    let (mut client, connection) = tokio::time::timeout(config.connect_timeout(), connector.connect())
        .await
        .map_err(|_| ConnectError::timeout(config))?
        .map_err(|e| ConnectError::connecting(config, e))?;
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
        tx.batch_execute(&render(&m.sql.text(), schema)).await.map_err(|source| ConnectError::Migration {
            version: m.version,
            name: m.name,
            source,
        })?;
        tx.execute(&format!("INSERT INTO {schema}.migrations (version, name) VALUES ($1, $2)"), &[&m.version, &m.name])
            .await
            .map_err(db_context("record a migration"))?;
        applied.push(m.version);
    }
    tx.commit().await.map_err(db_context("commit the migration"))?;
    if !applied.is_empty() {
        // A display string ("1,2"), not Rust debug text, in JSON logs.
        let applied_list = applied.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        tracing::info!(schema, applied = %applied_list, version = latest, "applied migrations");
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
        for m in MIGRATIONS {
            let sql = render(&m.sql.text(), "myschema");
            assert!(!sql.contains("{s}") && !sql.contains("__"), "unfilled placeholder in {}", m.name);
        }
        let sql = render(V1_JOBS, "myschema");
        assert!(!sql.contains("{s}") && !sql.contains("__"), "unfilled placeholder");
        assert!(sql.contains("CREATE TABLE myschema.jobs"));
        assert!(sql.contains("'lease_expired'") && sql.contains("'cancel_requested'") && sql.contains("'retrying'"));
    }
}
