//! Every statement the store runs, rendered once per store for its schema.
//!
//! Conventions, so that each statement reads the same way:
//! - `coalesce($n::timestamptz, now())` is "now": the parameter is `params.now` under
//!   `TimeSource::Params` and NULL under `TimeSource::Database` (see [`crate::TimeSource`]).
//! - Rows that a transition will change are read under a row lock (`FOR UPDATE`, or
//!   `FOR UPDATE SKIP LOCKED` where another worker's rows should simply be passed over), so the
//!   state `dray_core::transition` decides on is the state the write replaces.
//! - Writes of many rows go through `unnest` of parallel arrays: one statement per batch.
//! - Every parameter has an explicit type, so a statement's types never depend on inference.

use dray_core::Limits;
use dray_store::JobFilter;

/// The columns of `jobs` a transition needs: everything but the payload, which only a lease
/// hands out (it is read separately, and only for the jobs leased).
pub(crate) const JOB_COLUMNS: &str = "j.id, j.queue, j.priority, j.created_at, j.attempts_max, j.backoff_base_ms, \
     j.backoff_factor, j.backoff_cap_ms, j.lease_ms, j.idempotency_key, j.ordering_key, j.group_key, j.tags, j.traceparent, \
     j.state, j.run_at, j.attempt, j.lease_id, j.token, j.worker, j.leased_at, j.lease_deadline, \
     j.cancel_requested, j.checkpoint, j.progress, j.result, j.last_error, j.dead_reason, j.finished_at, j.version, \
     j.schedule_name, j.schedule_at, j.dependencies, j.on_dependency_failure, j.has_dependents,
     j.steps_count, j.steps_bytes";

pub(crate) const QUEUE_COLUMNS: &str = "q.name, q.attempts_max, q.backoff_base_ms, q.backoff_factor, \
     q.backoff_cap_ms, q.lease_ms, q.retention_ms, q.retention_dead_ms, q.paused, q.payload_schema, q.ordering_dead, \
     q.concurrency_max, q.group_concurrency_max, q.rate_limit, q.rate_per_ms, q.rate_burst, q.group_rate_limit, \
     q.group_rate_per_ms, q.group_rate_burst, q.backoff_until";

const SUMMARY_COLUMNS: &str = "j.id, j.queue, j.state, j.priority, j.attempt, j.attempts_max, j.created_at, \
     j.run_at, j.finished_at, j.dead_reason, j.last_error, j.tags";

/// The start of a notification's payload that says "this queue has a new scheduled or retrying
/// job" (followed by the queue's name), as opposed to a bare queue name, "this queue has new
/// available jobs". A space never occurs in a queue name, so the two cannot be confused, and a
/// listener that only knows queue names treats it as a notification it cannot place.
pub const DUE_PREFIX: &str = "due ";

/// History entries kept besides the first (the enqueue): `Limits::HISTORY_ENTRIES_MAX - 1`.
pub(crate) const HISTORY_NEWEST_KEPT: usize = Limits::HISTORY_ENTRIES_MAX - 1;

/// The database's `now` in whole milliseconds (the core's resolution), for `TimeSource::Database`.
const NOW: &str = "SELECT floor(extract(epoch FROM now()) * 1000)::bigint";

/// The database's clock as it reads when this statement runs (not the transaction's start), in
/// microseconds: sent after a statement that may wait for locks, it reads the time that statement
/// finished. Leases and heartbeats compute their deadlines from it and check them against it
/// again just before their commit (`TimeSource::Database` only).
const CLOCK: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint";

/// Makes sure the batch's queues exist (a queue is created by its first job, with the default
/// policy passed in) and returns their configuration. A queue created concurrently by another
/// transaction may be missing from the result: the caller retries.
const QUEUES_ENSURE: &str = "
WITH wanted AS (
    SELECT DISTINCT name FROM unnest($1::text[]) AS w(name)
), created AS (
    INSERT INTO {s}.queues AS q (name, attempts_max, backoff_base_ms, backoff_factor, backoff_cap_ms, lease_ms,
                                 retention_ms, retention_dead_ms, paused)
    SELECT name, $2::int, $3::bigint, $4::float8, $5::bigint, $6::bigint, $7::bigint, $8::bigint, false
    FROM wanted ORDER BY name
    ON CONFLICT (name) DO NOTHING
    RETURNING {queue_columns}
)
SELECT * FROM created
UNION ALL
SELECT {queue_columns} FROM {s}.queues q WHERE q.name = ANY($1::text[])";

/// The live idempotency keys among those of a batch, with the job that holds each.
const KEYS_LOOKUP: &str = "
SELECT k.queue, k.key, j.id, j.state, j.payload
FROM unnest($1::text[], $2::text[]) AS k(queue, key)
JOIN {s}.idempotency i ON i.queue = k.queue AND i.key = k.key
JOIN {s}.jobs j ON j.id = i.job_id
WHERE i.expires_at > coalesce($3::timestamptz, now())";

/// Inserts a batch of new jobs in one statement: ids in batch order (taken from the identity
/// sequence after ordering, so they increase along the batch), each job's first history entry
/// (decided by the core's `NewJob::into_job`), its idempotency key (claimed only if free or past
/// its window; a key claimed meanwhile by a concurrent insert shows in `keys_claimed`), and a
/// notification per queue that got an available job (`<queue>`) or a scheduled one
/// (`due <queue>`: see [`DUE_PREFIX`]). The tick a job stands for (`$24`, `$25`) is NULL for a job
/// no schedule enqueued.
const INSERT: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::smallint[], $4::timestamptz[], $5::text[], $6::int[],
                         $7::bigint[], $8::float8[], $9::bigint[], $10::bigint[], $11::text[], $12::text[],
                         $13::text[], $14::text[], $15::timestamptz[], $16::text[], $17::text[], $18::int[],
                         $19::timestamptz[], $24::text[], $25::timestamptz[], $26::text[])
        WITH ORDINALITY AS u(queue, payload, priority, run_at, state, attempts_max, backoff_base_ms,
                             backoff_factor, backoff_cap_ms, lease_ms, idempotency_key, ordering_key, tags,
                             traceparent, h_at, h_kind, h_state, h_attempt, h_run_at, schedule_name,
                             schedule_at, group_key, ord)
), numbered AS MATERIALIZED (
    SELECT nextval('{s}.jobs_id_seq') AS id, input.* FROM input ORDER BY ord
), inserted AS (
    INSERT INTO {s}.jobs (id, queue, payload, priority, created_at, attempts_max, backoff_base_ms, backoff_factor,
                          backoff_cap_ms, lease_ms, idempotency_key, idempotency_expires_at, ordering_key, tags,
                          traceparent, state, run_at, attempt, cancel_requested, version, schedule_name, schedule_at,
                          group_key)
    OVERRIDING SYSTEM VALUE
    SELECT id, queue, payload, priority, $20::timestamptz, attempts_max, backoff_base_ms, backoff_factor,
           backoff_cap_ms, lease_ms, idempotency_key,
           CASE WHEN idempotency_key IS NOT NULL THEN $20::timestamptz + $21::bigint * interval '1 millisecond' END,
           ordering_key, string_to_array(tags, ' '), traceparent, state, run_at, 0, false, 1, schedule_name,
           schedule_at, group_key
    FROM numbered ORDER BY ord
    RETURNING id
), history AS (
    INSERT INTO {s}.job_history (job_id, seq, at, kind, state, attempt, run_at)
    SELECT id, 1, h_at, h_kind, h_state, h_attempt, h_run_at FROM numbered
), keys AS (
    INSERT INTO {s}.idempotency AS i (queue, key, job_id, expires_at)
    SELECT queue, idempotency_key, id, $20::timestamptz + $21::bigint * interval '1 millisecond'
    FROM numbered WHERE idempotency_key IS NOT NULL ORDER BY queue, idempotency_key
    ON CONFLICT (queue, key) DO UPDATE SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
        WHERE i.expires_at <= coalesce($22::timestamptz, now())
    RETURNING 1
), notified AS (
    SELECT pg_notify($23::text, CASE WHEN state = 'available' THEN queue ELSE '{due_prefix}' || queue END)
    FROM (SELECT DISTINCT queue, state FROM numbered WHERE state IN ('available', 'scheduled')) q
)
SELECT (SELECT array_agg(id ORDER BY ord) FROM numbered) AS ids,
       (SELECT count(*) FROM inserted) AS inserted,
       (SELECT count(*) FROM keys) AS keys_claimed,
       (SELECT count(*) FROM notified) AS notified";

/// Ids the identity sequence would hand out next, consumed so they never name another job: for
/// the `existing` of a conflict between two new jobs of one (rejected) batch.
/// The lease. For the open (known, not paused) queues asked for, locks, skipping rows other
/// transactions hold: the due waiting jobs (to promote, at most `$4` per queue, earliest first)
/// and the best `$3` available jobs per queue; then picks the best `$3` of all those in lease
/// order and draws a fencing token for each, after the row locks are held (so a later grant on
/// the same job always draws a larger token). Payloads are read for the picked jobs only.
///
/// Queues under flow control (`FLOW_QUEUE`) are left out: `FLOW_QUEUES`, pipelined with this
/// statement, names them, and the store leases from them through the flow path (see
/// `FLOW_TAKE`). In a queue that is not under flow control no grouped job is available, so the
/// available jobs are the ungrouped ones, all of them in `jobs_available`.
/// A queue whose circuit breaker is not closed is passed over unless `$5` is true: the caller then
/// holds that breaker's row lock and asks for the one queue whose probes it counts
/// (`store/breaker.rs`). A queue backing off after a reported downstream rate limit
/// (`backoff_until`) is passed over until then.
const LEASE: &str = "
WITH open AS (
    SELECT q.name, q.ordering_dead FROM {s}.queues q
    WHERE q.name = ANY($1::text[]) AND NOT q.paused AND NOT {flow_queue}
      AND (q.backoff_until IS NULL OR q.backoff_until <= coalesce($2::timestamptz, now()))
      AND ($5::bool OR NOT EXISTS (SELECT 1 FROM {s}.breakers b WHERE b.queue = q.name AND b.state <> 'closed'))
), due AS (
    SELECT d.* FROM open CROSS JOIN LATERAL (
        SELECT {job_columns} FROM {s}.jobs j
        WHERE j.queue = open.name AND j.state IN ('scheduled', 'retrying')
          AND j.run_at <= coalesce($2::timestamptz, now())
        ORDER BY j.run_at, j.id
        LIMIT $4::bigint
        FOR UPDATE SKIP LOCKED
    ) d
), available AS (
    SELECT a.* FROM open CROSS JOIN LATERAL (
        SELECT {job_columns} FROM {s}.jobs j
        WHERE j.queue = open.name AND j.state = 'available' AND j.group_key IS NULL AND {ordering_eligible}
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT $3::bigint
        FOR UPDATE SKIP LOCKED
    ) a
), candidates AS (
    SELECT * FROM due UNION ALL SELECT * FROM available
), picked AS (
    SELECT id, nextval('{s}.fencing_tokens') AS new_token
    FROM (
        SELECT j.id FROM candidates j JOIN open ON open.name = j.queue
        WHERE j.state = 'available' OR {ordering_eligible}
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT $3::bigint
    ) best
)
SELECT c.*, p.new_token, jp.payload
FROM candidates c
LEFT JOIN picked p ON p.id = c.id
LEFT JOIN {s}.jobs jp ON jp.id = p.id";

/// Whether the queue `q` (a row of `queues`) leases through the flow path: it has a limit, or
/// grouped jobs are available (they take turns). A queue without either costs the lease one probe
/// of `jobs_group_available`, which holds nothing of it. The probe is ordered like that index
/// rather than an `EXISTS`: for an `EXISTS` the planner may expect a matching row early in a
/// sequential scan of `jobs` (it did, once most jobs had no group), which reads the whole table
/// when there is none.
const FLOW_QUEUE: &str = "(q.concurrency_max IS NOT NULL OR q.group_concurrency_max IS NOT NULL
        OR q.rate_limit IS NOT NULL OR q.group_rate_limit IS NOT NULL
        OR (SELECT g.group_key FROM {s}.jobs g
            WHERE g.queue = q.name AND g.group_key IS NOT NULL AND g.state = 'available'
            ORDER BY g.group_key LIMIT 1) IS NOT NULL)";

/// The open queues of `$1` under flow control, in name order: the ones `LEASE` leaves out (not
/// backing off at `$2`, or now).
const FLOW_QUEUES: &str = "
SELECT {queue_columns} FROM {s}.queues q
WHERE q.name = ANY($1::text[]) AND NOT q.paused AND {flow_queue}
  AND (q.backoff_until IS NULL OR q.backoff_until <= coalesce($2::timestamptz, now()))
ORDER BY q.name";

/// Makes the queues `$1` back off until `$2` (parallel arrays), unless they already do for
/// longer: a worker reported a downstream rate limit.
const BACKOFF_RAISE: &str = "
UPDATE {s}.queues q SET backoff_until = greatest(q.backoff_until, b.until)
FROM unnest($1::text[], $2::timestamptz[]) AS b(name, until)
WHERE q.name = b.name";

/// The flow path's serialization: one transaction-level advisory lock per queue of `$1`, in hash
/// order (so lessees never deadlock), taken before any lock that waits (the ordering keys' come
/// after). Every lease of a queue under flow control holds it from before it counts the queue's
/// running jobs and reads its buckets until it commits, so the next lessee's statements, whose
/// snapshots are taken after the lock is granted, see every grant before theirs: concurrency
/// limits and rates hold across nodes. One lock per queue rather than one per group: choosing
/// whose turn it is reads and moves the queue's one turn (`group_turns`), and a queue's leases
/// are short statements, so they queue up briefly rather than contend per group. Completions,
/// failures and expiries take no lock: they only give permits back, and a lessee that misses one
/// only leases less. The hash's separator (chr(30)) differs from the ordering keys' lock.
const FLOW_LOCK: &str = "
SELECT count(pg_advisory_xact_lock(k.h)) FROM (
    SELECT DISTINCT hashtextextended('{s}' || chr(30) || q, 0) AS h FROM unnest($1::text[]) AS u(q) ORDER BY 1
) k";

/// The due waiting jobs of a queue under flow control (`$1`), to promote before it leases: at
/// most `$3`, earliest first, skipping rows other transactions hold.
const FLOW_DUE: &str = "
SELECT {job_columns} FROM {s}.jobs j
WHERE j.queue = $1::text AND j.state IN ('scheduled', 'retrying') AND j.run_at <= coalesce($2::timestamptz, now())
ORDER BY j.run_at, j.id
LIMIT $3::bigint
FOR UPDATE SKIP LOCKED";

/// What a lease of a queue under flow control (`$1`) decides on, read under its `FLOW_LOCK`: its
/// running jobs (`jobs_queue_state`) counted up to its `concurrency_max` (`$2`; NULL: not counted,
/// nothing reads them: a count costs a heap check per running job, so it stops where the answer
/// is known), its own bucket, the group served last, and whether any ungrouped job is available
/// (one probe of `jobs_available`, which holds only those; ordered like it, see `FLOW_QUEUE`).
const FLOW_STATE: &str = "
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM {s}.jobs j
            WHERE $2::bigint IS NOT NULL AND j.queue = $1::text AND j.state = 'running' LIMIT $2::bigint
        ) r) AS running,
       (SELECT b.tat FROM {s}.rate_buckets b WHERE b.queue = $1::text AND b.group_key = '') AS tat,
       (SELECT t.last_group FROM {s}.group_turns t WHERE t.queue = $1::text) AS last_group,
       (SELECT j.id FROM {s}.jobs j
        WHERE j.queue = $1::text AND j.state = 'available' AND j.group_key IS NULL
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1) IS NOT NULL AS ungrouped";

/// The next groups of queue `$1` with an available job, in key order after `$2` and up to `$3`
/// (inclusive; NULL: no bound), at most `$4`: a skip scan of `jobs_group_available`, one index
/// descent per group found, so a lease reads as many groups as it serves whatever the number of
/// groups or of jobs in one.
const GROUPS_NEXT: &str = "
WITH RECURSIVE g(k, n) AS (
    (SELECT j.group_key, 1 FROM {s}.jobs j
     WHERE j.queue = $1::text AND j.group_key IS NOT NULL AND j.state = 'available' AND j.group_key > $2::text
     ORDER BY j.group_key LIMIT 1)
    UNION ALL
    SELECT (SELECT j.group_key FROM {s}.jobs j
            WHERE j.queue = $1::text AND j.group_key IS NOT NULL AND j.state = 'available' AND j.group_key > g.k
            ORDER BY j.group_key LIMIT 1), g.n + 1
    FROM g WHERE g.k IS NOT NULL AND g.n < $4::bigint AND ($3::text IS NULL OR g.k < $3::text)
)
SELECT g.k FROM g WHERE g.k IS NOT NULL AND ($3::text IS NULL OR g.k <= $3::text) ORDER BY g.n";

/// For the groups `$2` of queue `$1`: their running jobs (a probe of `jobs_group_running`),
/// counted up to the queue's `group_concurrency_max` (`$3`; NULL: not counted), and their buckets.
const GROUPS_STATE: &str = "
SELECT k.key,
       (SELECT count(*) FROM (
            SELECT 1 FROM {s}.jobs r
            WHERE $3::bigint IS NOT NULL AND r.queue = $1::text AND r.group_key = k.key AND r.state = 'running'
            LIMIT $3::bigint
        ) c) AS running,
       (SELECT b.tat FROM {s}.rate_buckets b WHERE b.queue = $1::text AND b.group_key = k.key) AS tat
FROM unnest($2::text[]) AS k(key)";

/// The flow path's lease of queue `$1`: the best `$3[i]` eligible available jobs of each group
/// `$2[i]` and the best `$5` ungrouped ones, in lease order, not those of `$4` (taken by an
/// earlier pass of this transaction, whose own locks it does not skip), locked skipping rows
/// other transactions hold; a fencing token for each, drawn after its row lock is held; the
/// payloads. The store decided the counts (limits, turns); this statement only finds the jobs.
const FLOW_TAKE: &str = "
WITH open AS (
    SELECT name, ordering_dead FROM {s}.queues WHERE name = $1::text
), grouped AS MATERIALIZED (
    SELECT t.* FROM unnest($2::text[], $3::bigint[]) AS w(key, quota) CROSS JOIN open CROSS JOIN LATERAL (
        SELECT {job_columns} FROM {s}.jobs j
        WHERE j.queue = open.name AND j.group_key = w.key AND j.state = 'available'
          AND j.id <> ALL($4::bigint[]) AND {ordering_eligible}
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT w.quota
        FOR UPDATE SKIP LOCKED
    ) t
), ungrouped AS MATERIALIZED (
    SELECT u.* FROM open CROSS JOIN LATERAL (
        SELECT {job_columns} FROM {s}.jobs j
        WHERE j.queue = open.name AND j.group_key IS NULL AND j.state = 'available'
          AND j.id <> ALL($4::bigint[]) AND {ordering_eligible}
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT $5::bigint
        FOR UPDATE SKIP LOCKED
    ) u
), taken AS (
    SELECT * FROM grouped UNION ALL SELECT * FROM ungrouped
)
SELECT c.*, nextval('{s}.fencing_tokens') AS new_token, jp.payload
FROM taken c JOIN {s}.jobs jp ON jp.id = c.id";

/// Saves the buckets a lease spent from: queue `$1[i]`, group `$2[i]` (`''`: the queue's own),
/// state `$3[i]`, in key order.
const BUCKETS_SAVE: &str = "
INSERT INTO {s}.rate_buckets AS b (queue, group_key, tat)
SELECT q, k, t FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(q, k, t) ORDER BY q, k
ON CONFLICT (queue, group_key) DO UPDATE SET tat = EXCLUDED.tat";

/// Saves the group served last per queue: queue `$1[i]`, group `$2[i]`.
const TURNS_SAVE: &str = "
INSERT INTO {s}.group_turns AS t (queue, last_group)
SELECT q, k FROM unnest($1::text[], $2::text[]) AS u(q, k) ORDER BY q
ON CONFLICT (queue) DO UPDATE SET last_group = EXCLUDED.last_group";

/// Strict FIFO per ordering key, as a condition on a job `j` of the queue `open` (which carries
/// the queue's `ordering_dead`): a job without a key is always eligible; a keyed one only when
/// no earlier job of its queue and key blocks it (scheduled, available, running, retrying, or
/// dead unless the queue skips dead jobs) and none of the key's jobs runs (a job redriven, or
/// blocking again after the queue stopped skipping dead jobs, waits for a later one that runs).
/// Each `NOT EXISTS` is one probe of a partial index of migration 8 (`jobs_ordering`,
/// `jobs_ordering_running`): for a blocked job the first earlier entry answers. (`e.id <> j.id`
/// in the running test changes nothing, `j` is not running; it keeps the planner from turning
/// the test into a hash of every running job of the database, built by each lease.)
///
/// The condition is read in the statement's snapshot, so two lease transactions could still
/// each see a different job of one key as eligible when the key's jobs change between their
/// snapshots (a redrive of an earlier dead job, or two concurrent enqueues of the key whose ids
/// commit out of order). `ORDERING_RECHECK` closes that: see there.
const ORDERING_ELIGIBLE: &str = "(j.ordering_key IS NULL OR (
    NOT EXISTS (
        SELECT 1 FROM {s}.jobs e
        WHERE e.queue = j.queue AND e.ordering_key = j.ordering_key AND e.id < j.id
          AND e.state IN ('scheduled', 'available', 'running', 'retrying', 'dead')
          AND (e.state <> 'dead' OR open.ordering_dead = 'block'))
    AND NOT EXISTS (
        SELECT 1 FROM {s}.jobs e
        WHERE e.queue = j.queue AND e.ordering_key = j.ordering_key AND e.state = 'running'
          AND e.id <> j.id)))";

/// Re-checks, under per-key locks, that the keyed jobs a lease picked (`$1`) are still eligible;
/// returns the ids that are. The lease takes a transaction-level advisory lock per (queue, key)
/// of its picked jobs first (`ORDERING_LOCK`, in a fixed order, so lessees never deadlock), and
/// this statement, run after the locks are granted, reads a new snapshot (READ COMMITTED): every
/// lease that held a lock of one of these keys before has committed (or rolled back) by now, so
/// its running job is visible here and blocks ours. Two transactions therefore never both lease
/// a job of one key: whichever takes the key's lock second sees the other's job running. Jobs
/// turning eligible needs no lock (a completion only frees a key; a stale snapshot only waits).
const ORDERING_RECHECK: &str = "
SELECT j.id FROM {s}.jobs j JOIN {s}.queues open ON open.name = j.queue
WHERE j.id = ANY($1::bigint[]) AND {ordering_eligible}";

/// One transaction-level advisory lock per (queue, ordering key) of `$1`/`$2`, in hash order. The
/// hash names the schema too, so stores in other schemas of the database do not contend; a hash
/// collision only serializes two keys' leases.
const ORDERING_LOCK: &str = "
SELECT count(pg_advisory_xact_lock(k.h)) FROM (
    SELECT DISTINCT hashtextextended('{s}' || chr(31) || q || chr(31) || k, 0) AS h
    FROM unnest($1::text[], $2::text[]) AS u(q, k) ORDER BY 1
) k";

/// For each queue of `$1` that is open, the earliest `run_at` of its scheduled and retrying jobs
/// later than that queue's bound in `$2` (NULL: any), and the milliseconds from now until then
/// (rounded up, 0 when already due), now being `$3` or the database's clock as this runs. One
/// probe of the `jobs_waiting` index per queue.
const DUE_NEXT: &str = "
SELECT w.name AS queue, floor(extract(epoch FROM d.run_at) * 1000)::bigint AS run_at_ms,
       greatest(0, ceil(extract(epoch FROM d.run_at - coalesce($3::timestamptz, clock_timestamp())) * 1000))::bigint
           AS wait_ms
FROM unnest($1::text[], $2::timestamptz[]) AS w(name, after)
JOIN {s}.queues q ON q.name = w.name AND NOT q.paused
CROSS JOIN LATERAL (
    SELECT j.run_at FROM {s}.jobs j
    WHERE j.queue = w.name AND j.state IN ('scheduled', 'retrying') AND (w.after IS NULL OR j.run_at > w.after)
    ORDER BY j.run_at
    LIMIT 1
) d";

const JOB_LOCK: &str = "SELECT {job_columns} FROM {s}.jobs j WHERE j.id = $1::bigint FOR UPDATE";

/// In id order, so concurrent callers locking overlapping sets queue up instead of deadlocking.
const JOBS_LOCK: &str = "SELECT {job_columns} FROM {s}.jobs j WHERE j.id = ANY($1::bigint[]) ORDER BY j.id FOR UPDATE";

const JOBS_READ: &str = "SELECT {job_columns} FROM {s}.jobs j WHERE j.id = ANY($1::bigint[]) ORDER BY j.id";

/// Writes the new status of changed jobs, each decided by `dray_core::transition`. The guard
/// repeats in SQL what the transition checked: the version read (nobody changed the job since),
/// and for acks and heartbeats that the job is running under the presented lease. A row whose
/// guard fails is not updated, and the caller sees fewer rows than it wrote.
///
/// `checkpoint`, `progress` and `result` are written only when the transition changed them, so
/// an unchanged large value is not rewritten.
const UPDATE: &str = "
UPDATE {s}.jobs AS j SET
    state = u.state, run_at = u.run_at, attempt = u.attempt, lease_id = u.lease_id, token = u.token,
    worker = u.worker, leased_at = u.leased_at, lease_deadline = u.lease_deadline,
    cancel_requested = u.cancel_requested,
    checkpoint = CASE WHEN u.checkpoint_set THEN u.checkpoint ELSE j.checkpoint END,
    progress = CASE WHEN u.progress_set THEN u.progress ELSE j.progress END,
    result = CASE WHEN u.result_set THEN u.result ELSE j.result END,
    last_error = u.last_error, dead_reason = u.dead_reason, finished_at = u.finished_at, version = u.version
FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[], $5::text[], $6::timestamptz[], $7::int[],
            $8::bigint[], $9::bigint[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::bool[],
            $14::bool[], $15::bytea[], $16::bool[], $17::bytea[], $18::bool[], $19::bytea[], $20::text[],
            $21::text[], $22::timestamptz[])
    AS u(id, old_version, version, guard_lease, state, run_at, attempt, lease_id, token, worker, leased_at,
         lease_deadline, cancel_requested, checkpoint_set, checkpoint, progress_set, progress, result_set, result,
         last_error, dead_reason, finished_at)
WHERE j.id = u.id AND j.version = u.old_version
  AND (u.guard_lease IS NULL OR (j.state = 'running' AND j.lease_id = u.guard_lease))";

const HISTORY_INSERT: &str = "
INSERT INTO {s}.job_history (job_id, seq, at, kind, state, attempt, token, worker, error, run_at)
SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::text[], $5::text[], $6::int[], $7::bigint[],
                     $8::text[], $9::text[], $10::timestamptz[])";

/// Keeps a job's history bounded like the core's `Job::push_history`: the first entry and the
/// newest ones, `Limits::HISTORY_ENTRIES_MAX` in all. `version` counts every entry ever written.
const HISTORY_TRIM: &str = "
DELETE FROM {s}.job_history h USING unnest($1::bigint[], $2::int[]) AS u(id, version)
WHERE h.job_id = u.id AND h.seq > 1 AND h.seq <= u.version - {history_newest_kept}";

const NOTIFY: &str = "SELECT pg_notify($1::text, q) FROM unnest($2::text[]) AS q";

/// A job with its kept history, in one statement (one snapshot).
/// What holds an available job `$1` back at `$2` (`dray_store::WaitFacts`): its queue and
/// breaker, the earliest job of its ordering key in its way, the running jobs its limits count,
/// and the rate buckets (see `rate_buckets`: the queue's own under the group `''`).
const JOB_WAITING: &str = "
SELECT {job_columns}, {queue_columns}, {breaker_columns},
    (floor(extract(epoch FROM coalesce($2::timestamptz, now())) * 1000))::bigint AS now_ms,
    (SELECT min(e.id) FROM {s}.jobs e
     WHERE j.ordering_key IS NOT NULL AND e.queue = j.queue AND e.ordering_key = j.ordering_key AND e.id <> j.id
       AND (e.state = 'running'
            OR (e.id < j.id AND (e.state IN ('scheduled', 'available', 'retrying')
                                 OR (e.state = 'dead' AND q.ordering_dead = 'block'))))) AS key_blocker,
    CASE WHEN q.concurrency_max IS NOT NULL THEN
        (SELECT count(*) FROM {s}.jobs r WHERE r.queue = j.queue AND r.state = 'running') ELSE 0 END AS queue_running,
    CASE WHEN q.group_concurrency_max IS NOT NULL AND j.group_key IS NOT NULL THEN
        (SELECT count(*) FROM {s}.jobs r WHERE r.queue = j.queue AND r.group_key = j.group_key AND r.state = 'running')
    ELSE 0 END AS group_running,
    (SELECT b.tat FROM {s}.rate_buckets b WHERE b.queue = j.queue AND b.group_key = '') AS queue_tat,
    (SELECT b.tat FROM {s}.rate_buckets b WHERE b.queue = j.queue AND b.group_key = j.group_key) AS group_tat
FROM {s}.jobs j JOIN {s}.queues q ON q.name = j.queue LEFT JOIN {s}.breakers b ON b.queue = q.name
WHERE j.id = $1::bigint";

const JOB_GET: &str = "
SELECT {job_columns}, j.payload, h.seqs, h.ats, h.kinds, h.states, h.attempts, h.tokens, h.workers, h.errors,
       h.run_ats, CASE WHEN j.dependencies > 0 THEN (SELECT array_agg(d.dependency ORDER BY d.ordinal)
                                          FROM {s}.job_dependencies d WHERE d.dependent = j.id) END AS depends_on,
       st.step_names, st.step_results, st.step_ats, st.step_attempts
FROM {s}.jobs j
CROSS JOIN LATERAL (
    SELECT array_agg(name ORDER BY seq) AS step_names, array_agg(result ORDER BY seq) AS step_results,
           array_agg(recorded_at ORDER BY seq) AS step_ats, array_agg(attempt ORDER BY seq) AS step_attempts
    FROM {s}.job_steps
    WHERE job_id = j.id AND j.steps_count > 0
) st
CROSS JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(at ORDER BY seq) AS ats,
           array_agg(kind ORDER BY seq) AS kinds, array_agg(state ORDER BY seq) AS states,
           array_agg(attempt ORDER BY seq) AS attempts, array_agg(token ORDER BY seq) AS tokens,
           array_agg(worker ORDER BY seq) AS workers, array_agg(error ORDER BY seq) AS errors,
           array_agg(run_at ORDER BY seq) AS run_ats
    FROM {s}.job_history
    WHERE job_id = j.id AND (seq = 1 OR seq > j.version - {history_newest_kept})
) h
WHERE j.id = $1::bigint";

/// The step `$2` of job `$1`, if recorded. Sent after the job's row lock (`JOB_LOCK`), so it
/// reads what the last holder of that lock committed.
const STEP_FIND: &str = "
SELECT s.result, s.recorded_at, s.attempt FROM {s}.job_steps s WHERE s.job_id = $1::bigint AND s.name = $2::text";

/// Records a step of job `$1` (under its row lock): the step as the `$3`th of the job, and the
/// job's new step count and bytes (`$7`); the guard on the count repeats what the row said when
/// the transition decided. The caller checks one row was updated.
const STEP_INSERT: &str = "
WITH step AS (
    INSERT INTO {s}.job_steps (job_id, name, seq, result, recorded_at, attempt)
    VALUES ($1::bigint, $2::text, $3::int, $4::bytea, $5::timestamptz, $6::int)
)
UPDATE {s}.jobs SET steps_count = $3::int, steps_bytes = $7::bigint
WHERE id = $1::bigint AND steps_count = $3::int - 1";

/// Every step of the jobs `$1` (those a lease picked that hold steps), in recording order.
const STEPS_READ: &str = "
SELECT s.job_id, s.name, s.result, s.recorded_at, s.attempt FROM {s}.job_steps s
WHERE s.job_id = ANY($1::bigint[])
ORDER BY s.job_id, s.seq";

/// Maintenance statements (this one, promotion and pruning) carry the leader's fence in `$3`
/// and `$4` (`crate::leader::guard`): a node whose term is over acts on nothing.
const EXPIRE_SELECT: &str = "
SELECT {job_columns} FROM {s}.jobs j
WHERE j.state = 'running' AND j.lease_deadline <= coalesce($1::timestamptz, now()) AND {leader_guard}
ORDER BY j.lease_deadline, j.id
LIMIT $2::bigint
FOR UPDATE SKIP LOCKED";

const PROMOTE_SELECT: &str = "
SELECT d.* FROM (SELECT name FROM {s}.queues WHERE {leader_guard} ORDER BY name) q
CROSS JOIN LATERAL (
    SELECT {job_columns} FROM {s}.jobs j
    WHERE j.queue = q.name AND j.state IN ('scheduled', 'retrying') AND j.run_at <= coalesce($1::timestamptz, now())
    ORDER BY j.run_at, j.id
    LIMIT $2::bigint
    FOR UPDATE SKIP LOCKED
) d
LIMIT $2::bigint";

/// Deletes finished jobs past their queue's retention, at most `$2`; a job whose idempotency key
/// is still within its window stays (and so does the key), and so does a job that a dependent
/// which has not finished will read. Every job found is past retention, so
/// no order is asked for: the index range is read as far as the limit needs, never sorted.
/// Also deletes up to `$2` rate buckets that are full (`rate_buckets_tat`): a full bucket and no
/// row mean the same to a lease, and a lease that races the deletion writes its row back (an
/// upsert). The count returned is of jobs only.
const PRUNE: &str = "
WITH finished AS (
    SELECT d.id, d.steps_count FROM (SELECT name, retention_ms FROM {s}.queues WHERE {leader_guard} ORDER BY name) q
    CROSS JOIN LATERAL (
        SELECT j.id, j.steps_count FROM {s}.jobs j
        WHERE j.queue = q.name AND j.state IN ('completed', 'cancelled')
          AND j.finished_at <= coalesce($1::timestamptz, now()) - q.retention_ms * interval '1 millisecond'
          AND (j.idempotency_expires_at IS NULL OR j.idempotency_expires_at <= coalesce($1::timestamptz, now()))
          AND NOT {needed_by_dependents}
        LIMIT $2::bigint
        FOR UPDATE SKIP LOCKED
    ) d
    LIMIT $2::bigint
), dead AS (
    SELECT d.id, d.steps_count FROM (SELECT name, retention_dead_ms FROM {s}.queues WHERE {leader_guard} ORDER BY name) q
    CROSS JOIN LATERAL (
        SELECT j.id, j.steps_count FROM {s}.jobs j
        WHERE j.queue = q.name AND j.state = 'dead'
          AND j.finished_at <= coalesce($1::timestamptz, now()) - q.retention_dead_ms * interval '1 millisecond'
          AND (j.idempotency_expires_at IS NULL OR j.idempotency_expires_at <= coalesce($1::timestamptz, now()))
          AND NOT {needed_by_dependents}
        LIMIT $2::bigint
        FOR UPDATE SKIP LOCKED
    ) d
    LIMIT $2::bigint
), doomed AS (
    SELECT id, steps_count FROM finished UNION ALL SELECT id, steps_count FROM dead LIMIT $2::bigint
), history AS (
    DELETE FROM {s}.job_history WHERE job_id IN (SELECT id FROM doomed)
), steps AS (
    DELETE FROM {s}.job_steps WHERE job_id IN (SELECT id FROM doomed WHERE steps_count > 0)
), keys AS (
    DELETE FROM {s}.idempotency WHERE job_id IN (SELECT id FROM doomed)
), edges AS (
    DELETE FROM {s}.job_dependencies WHERE dependent IN (SELECT id FROM doomed)
), buckets AS (
    DELETE FROM {s}.rate_buckets WHERE ctid = ANY(ARRAY(
        SELECT b.ctid FROM {s}.rate_buckets b
        WHERE b.tat <= floor(extract(epoch FROM coalesce($1::timestamptz, now())) * 1000)::bigint * 1000000
          AND {leader_guard}
        ORDER BY b.tat
        LIMIT $2::bigint
        FOR UPDATE SKIP LOCKED))
)
DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM doomed) RETURNING id";

/// Deletes dead jobs (the guard `state = 'dead'` repeats the check made before) with their
/// history, steps and idempotency keys.
const DISCARD: &str = "
WITH gone AS (
    DELETE FROM {s}.jobs WHERE id = ANY($1::bigint[]) AND state = 'dead' RETURNING id, steps_count
), history AS (
    DELETE FROM {s}.job_history WHERE job_id IN (SELECT id FROM gone)
), steps AS (
    DELETE FROM {s}.job_steps WHERE job_id IN (SELECT id FROM gone WHERE steps_count > 0)
), keys AS (
    DELETE FROM {s}.idempotency WHERE job_id IN (SELECT id FROM gone)
), edges AS (
    DELETE FROM {s}.job_dependencies WHERE dependent IN (SELECT id FROM gone)
)
SELECT id FROM gone";

const QUEUE_ENSURE_ONE: &str = "
INSERT INTO {s}.queues (name, attempts_max, backoff_base_ms, backoff_factor, backoff_cap_ms, lease_ms, retention_ms,
                        retention_dead_ms, paused, payload_schema, ordering_dead, concurrency_max,
                        group_concurrency_max, rate_limit, rate_per_ms, rate_burst, group_rate_limit,
                        group_rate_per_ms, group_rate_burst)
VALUES ($1::text, $2::int, $3::bigint, $4::float8, $5::bigint, $6::bigint, $7::bigint, $8::bigint, $9::bool,
        $10::text, $11::text, $12::int, $13::int, $14::bigint, $15::bigint, $16::bigint, $17::bigint, $18::bigint,
        $19::bigint)
ON CONFLICT (name) DO NOTHING";

/// The payload schemas of the queues named in `$1` that have one.
const QUEUE_SCHEMAS: &str =
    "SELECT name, payload_schema FROM {s}.queues WHERE name = ANY($1::text[]) AND payload_schema IS NOT NULL";

/// The payloads of the jobs `$1`.
const PAYLOADS_READ: &str = "SELECT id, payload FROM {s}.jobs WHERE id = ANY($1::bigint[])";

/// The queue's row, locked, with its breaker's policy and state (not locked: a configure writes
/// only the policy).
const QUEUE_LOCK: &str = "SELECT {queue_columns}, {breaker_columns} FROM {s}.queues q \
     LEFT JOIN {s}.breakers b ON b.queue = q.name WHERE q.name = $1::text FOR UPDATE OF q";

const QUEUE_UPDATE: &str = "
UPDATE {s}.queues SET attempts_max = $2::int, backoff_base_ms = $3::bigint, backoff_factor = $4::float8,
    backoff_cap_ms = $5::bigint, lease_ms = $6::bigint, retention_ms = $7::bigint, retention_dead_ms = $8::bigint,
    paused = $9::bool, payload_schema = $10::text, ordering_dead = $11::text, concurrency_max = $12::int,
    group_concurrency_max = $13::int, rate_limit = $14::bigint, rate_per_ms = $15::bigint, rate_burst = $16::bigint,
    group_rate_limit = $17::bigint, group_rate_per_ms = $18::bigint, group_rate_burst = $19::bigint
WHERE name = $1::text";

/// Configuration and counts per state of one queue (`$1`) or every queue (`$1` NULL), in one
/// snapshot. Counts are index-only scans of `jobs_queue_state`; the oldest dead job is the first
/// entry of `jobs_dead`.
const QUEUE_STATS: &str = "
SELECT {queue_columns}, c.n_scheduled, c.n_available, c.n_running, c.n_retrying, c.n_completed, c.n_dead,
       c.n_cancelled, c.n_blocked, d.oldest_dead_at, {breaker_columns}
FROM {s}.queues q
LEFT JOIN {s}.breakers b ON b.queue = q.name
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.state = 'scheduled') AS n_scheduled,
           count(*) FILTER (WHERE j.state = 'available') AS n_available,
           count(*) FILTER (WHERE j.state = 'running') AS n_running,
           count(*) FILTER (WHERE j.state = 'retrying') AS n_retrying,
           count(*) FILTER (WHERE j.state = 'completed') AS n_completed,
           count(*) FILTER (WHERE j.state = 'dead') AS n_dead,
           count(*) FILTER (WHERE j.state = 'cancelled') AS n_cancelled,
           count(*) FILTER (WHERE j.state = 'blocked') AS n_blocked
    FROM {s}.jobs j WHERE j.queue = q.name
) c
CROSS JOIN LATERAL (
    SELECT min(j.finished_at) AS oldest_dead_at FROM {s}.jobs j WHERE j.queue = q.name AND j.state = 'dead'
) d
WHERE $1::text IS NULL OR q.name = $1::text
ORDER BY q.name";

/// Deleting a queue: new writes to `jobs` wait while the queue is checked and removed, so no job
/// can be inserted into a queue whose row is being deleted (an insert does not lock the queue
/// row). Deleting a queue is rare; the pause is one short transaction.
const QUEUE_DELETE_LOCK: &str = "LOCK TABLE {s}.jobs IN SHARE ROW EXCLUSIVE MODE";

/// The queue (locked), and how many of its jobs hold work: not completed, not cancelled.
const QUEUE_DELETE_CHECK: &str = "
SELECT q.name, (SELECT count(*) FROM {s}.jobs j WHERE j.queue = q.name AND j.state NOT IN ('completed', 'cancelled'))
       AS holding
FROM {s}.queues q WHERE q.name = $1::text FOR UPDATE";

/// Deletes a queue's finished jobs (with their history, steps and keys), then the queue; the
/// guard on `state` repeats the check made before.
const QUEUE_DELETE: &str = "
WITH doomed AS (
    SELECT id, steps_count FROM {s}.jobs WHERE queue = $1::text AND state IN ('completed', 'cancelled')
), history AS (
    DELETE FROM {s}.job_history WHERE job_id IN (SELECT id FROM doomed)
), steps AS (
    DELETE FROM {s}.job_steps WHERE job_id IN (SELECT id FROM doomed WHERE steps_count > 0)
), keys AS (
    DELETE FROM {s}.idempotency WHERE job_id IN (SELECT id FROM doomed)
), edges AS (
    DELETE FROM {s}.job_dependencies WHERE dependent IN (SELECT id FROM doomed)
), jobs AS (
    DELETE FROM {s}.jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
), queue AS (
    DELETE FROM {s}.queues WHERE name = $1::text
)
SELECT count(*) FROM jobs";

/// The columns of `schedules`, in the order [`crate::row::schedule_from_row`] reads them and
/// [`SCHEDULE_SAVE`] writes them.
pub(crate) const SCHEDULE_COLUMNS: &str = "s.name, s.queue, s.payload, s.priority, s.attempts_max, \
     s.backoff_base_ms, s.backoff_factor, s.backoff_cap_ms, s.lease_ms, s.ordering_key, s.tags, s.traceparent, \
     s.rule, s.cron_expr, s.cron_zone, s.every_ms, s.anchor_ms, s.misfire, s.misfire_cap, s.overlap, s.jitter_ms, \
     s.misfire_grace_ms, s.paused, s.created_at, s.updated_at, s.next_at, s.last_at, s.last_job, s.last_fired_at";

const SCHEDULE_GET: &str = "SELECT {schedule_columns} FROM {s}.schedules s WHERE s.name = $1::text";

/// Every schedule, by name (byte order, as the embedded store lists them).
const SCHEDULE_LIST: &str = "SELECT {schedule_columns} FROM {s}.schedules s ORDER BY s.name";

/// The row a change (put, pause, trigger) decides on, locked until the change commits.
const SCHEDULE_LOCK: &str = "SELECT {schedule_columns} FROM {s}.schedules s WHERE s.name = $1::text FOR UPDATE";

/// Puts (and only they) take this transaction-scoped lock first: they serialize, so the count
/// checked against `Limits::SCHEDULES_MAX` is the count the insert adds to, and two creates of
/// one name never race to a unique violation. Ticks never take it.
const SCHEDULE_PUT_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('dray.schedules.{s}', 0))";

const SCHEDULE_COUNT: &str = "SELECT count(*) FROM {s}.schedules";

/// One queue's configuration, if it exists (no lock: a put checks its template's payload against
/// the schema as it is now, as the embedded store does).
const QUEUE_GET: &str = "SELECT {queue_columns}, {breaker_columns} FROM {s}.queues q \
     LEFT JOIN {s}.breakers b ON b.queue = q.name WHERE q.name = $1::text";

/// Writes a whole schedule, new or replacing the row (locked by the caller when it exists).
const SCHEDULE_SAVE: &str = "
INSERT INTO {s}.schedules AS s (name, queue, payload, priority, attempts_max, backoff_base_ms, backoff_factor,
                                backoff_cap_ms, lease_ms, ordering_key, tags, traceparent, rule, cron_expr, cron_zone,
                                every_ms, anchor_ms, misfire, misfire_cap, overlap, jitter_ms, misfire_grace_ms,
                                paused, created_at, updated_at, next_at, last_at, last_job, last_fired_at)
VALUES ($1::text, $2::text, $3::bytea, $4::smallint, $5::int, $6::bigint, $7::float8, $8::bigint, $9::bigint,
        $10::text, $11::text[], $12::text, $13::text, $14::text, $15::text, $16::bigint, $17::bigint, $18::text,
        $19::int, $20::text, $21::bigint, $22::bigint, $23::bool, $24::timestamptz, $25::timestamptz,
        $26::timestamptz, $27::timestamptz, $28::bigint, $29::timestamptz)
ON CONFLICT (name) DO UPDATE SET
    queue = EXCLUDED.queue, payload = EXCLUDED.payload, priority = EXCLUDED.priority,
    attempts_max = EXCLUDED.attempts_max, backoff_base_ms = EXCLUDED.backoff_base_ms,
    backoff_factor = EXCLUDED.backoff_factor, backoff_cap_ms = EXCLUDED.backoff_cap_ms,
    lease_ms = EXCLUDED.lease_ms, ordering_key = EXCLUDED.ordering_key, tags = EXCLUDED.tags,
    traceparent = EXCLUDED.traceparent, rule = EXCLUDED.rule, cron_expr = EXCLUDED.cron_expr,
    cron_zone = EXCLUDED.cron_zone, every_ms = EXCLUDED.every_ms, anchor_ms = EXCLUDED.anchor_ms,
    misfire = EXCLUDED.misfire, misfire_cap = EXCLUDED.misfire_cap, overlap = EXCLUDED.overlap,
    jitter_ms = EXCLUDED.jitter_ms, misfire_grace_ms = EXCLUDED.misfire_grace_ms, paused = EXCLUDED.paused,
    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, next_at = EXCLUDED.next_at,
    last_at = EXCLUDED.last_at, last_job = EXCLUDED.last_job, last_fired_at = EXCLUDED.last_fired_at";

const SCHEDULE_DELETE: &str = "DELETE FROM {s}.schedules WHERE name = $1::text RETURNING name";

/// The names of the schedules a tick pass at `$1` handles: due and not paused, at most `$2`, by
/// name (as the embedded store takes them). Fenced like maintenance (`$3`, `$4`).
const SCHEDULES_DUE: &str = "
SELECT s.name FROM {s}.schedules s
WHERE NOT s.paused AND s.next_at <= coalesce($1::timestamptz, now()) AND {leader_guard}
ORDER BY s.name
LIMIT $2::bigint";

/// One due schedule, locked for its tick; a row another node is ticking is passed over. Fenced
/// (`$2`, `$3`): a node whose term is over finds nothing to tick.
const SCHEDULE_TICK_LOCK: &str = "
SELECT {schedule_columns} FROM {s}.schedules s
WHERE s.name = $1::text AND {leader_guard_2}
FOR UPDATE OF s SKIP LOCKED";

/// A tick's new cursor and last tick, guarded by the cursor read under the lock (`$2`) and by the
/// leader's fence (`$7`, `$8`) checked again as the last statement before the commit: a node
/// whose term ended while it ticked updates nothing, and the tick (jobs included) runs again,
/// to find nothing to do under the fence.
const SCHEDULE_ADVANCE: &str = "
UPDATE {s}.schedules s SET next_at = $3::timestamptz, last_at = $4::timestamptz, last_job = $5::bigint,
    last_fired_at = $6::timestamptz
WHERE s.name = $1::text AND s.next_at IS NOT DISTINCT FROM $2::timestamptz AND {leader_guard_7}
RETURNING s.name";

/// Job dependencies (migration 14). The jobs a new job names, marked as having dependents and
/// locked in id order (so a concurrent finish of one waits for the insert, then settles the new
/// dependent), with their states: the insert decides the new job's verdict from them.
const DEPENDENCIES_MARK: &str = "
UPDATE {s}.jobs j SET has_dependents = true
WHERE j.id IN (SELECT l.id FROM {s}.jobs l WHERE l.id = ANY($1::bigint[]) ORDER BY l.id FOR UPDATE)
RETURNING j.id, j.state";

/// A batch's new edges, and on its new jobs how many dependencies each has, its policy, and
/// whether a job of the batch depends on it.
const DEPENDENCIES_INSERT: &str = "
WITH edges AS (
    INSERT INTO {s}.job_dependencies (dependent, ordinal, dependency)
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[])
)
UPDATE {s}.jobs j SET dependencies = u.n, on_dependency_failure = u.policy,
    has_dependents = j.has_dependents OR u.marked
FROM unnest($4::bigint[], $5::int[], $6::text[], $7::bool[]) AS u(id, n, policy, marked)
WHERE j.id = u.id";

/// The blocked dependents of jobs that just finished, locked in id order.
const DEPENDENTS_LOCK: &str = "
SELECT {job_columns} FROM {s}.jobs j
WHERE j.id IN (SELECT d.dependent FROM {s}.job_dependencies d WHERE d.dependency = ANY($1::bigint[]))
  AND j.state = 'blocked'
ORDER BY j.id
FOR UPDATE";

/// Each dependency of the given jobs in the order they named them, with its state and result
/// (NULL for one that no longer exists). Read after the dependents' row locks are held: a
/// dependency finished by a transaction that committed meanwhile is seen.
const DEPENDENCIES_OF: &str = "
SELECT d.dependent, d.dependency, j.state, CASE WHEN $2::bool THEN j.result END AS result
FROM {s}.job_dependencies d LEFT JOIN {s}.jobs j ON j.id = d.dependency
WHERE d.dependent = ANY($1::bigint[])
ORDER BY d.dependent, d.ordinal";

/// Whether a finished job `j` must be kept: a job depending on it has not finished and will read
/// its state and result. `has_dependents` spares every other job the look; a scalar subquery
/// with `LIMIT` (unlike `EXISTS`) is never planned as a hash of the whole table.
const NEEDED_BY_DEPENDENTS: &str = "(j.has_dependents AND (
    SELECT true FROM {s}.job_dependencies d JOIN {s}.jobs x ON x.id = d.dependent
    WHERE d.dependency = j.id AND x.state NOT IN ('completed', 'dead', 'cancelled') LIMIT 1) IS NOT NULL)";

/// The statements of one store, rendered for its schema.
#[derive(Debug)]
pub(crate) struct Sql {
    schema: String,
    pub now: String,
    pub clock: String,
    pub queues_ensure: String,
    pub keys_lookup: String,
    pub insert: String,
    pub lease: String,
    pub ordering_lock: String,
    pub ordering_recheck: String,
    pub flow_queues: String,
    pub backoff_raise: String,
    pub flow_lock: String,
    pub flow_due: String,
    pub flow_state: String,
    pub groups_next: String,
    pub groups_state: String,
    pub flow_take: String,
    pub buckets_save: String,
    pub turns_save: String,
    pub due_next: String,
    pub job_lock: String,
    pub jobs_lock: String,
    pub jobs_read: String,
    pub update: String,
    pub history_insert: String,
    pub history_trim: String,
    pub notify: String,
    pub job_get: String,
    pub step_find: String,
    pub step_insert: String,
    pub steps_read: String,
    pub job_waiting: String,
    pub expire_select: String,
    pub promote_select: String,
    pub prune: String,
    pub discard: String,
    pub queue_ensure_one: String,
    pub queue_lock: String,
    pub queue_update: String,
    pub queue_stats: String,
    pub queue_delete_lock: String,
    pub queue_delete_check: String,
    pub queue_delete: String,
    pub queue_schemas: String,
    pub payloads_read: String,
    pub schedule_get: String,
    pub schedule_list: String,
    pub schedule_lock: String,
    pub schedule_put_lock: String,
    pub schedule_count: String,
    pub queue_get: String,
    pub schedule_save: String,
    pub schedule_delete: String,
    pub schedules_due: String,
    pub schedule_tick_lock: String,
    pub schedule_advance: String,
    pub dependencies_mark: String,
    pub dependencies_insert: String,
    pub dependents_lock: String,
    pub dependencies_of: String,
    pub breaker: crate::store::BreakerSql,
}

impl Sql {
    pub fn new(schema: &str) -> Sql {
        let r = |sql: &str| render(sql, schema);
        Sql {
            schema: schema.to_owned(),
            now: r(NOW),
            clock: r(CLOCK),
            queues_ensure: r(QUEUES_ENSURE),
            keys_lookup: r(KEYS_LOOKUP),
            insert: r(INSERT),
            lease: r(LEASE),
            ordering_lock: r(ORDERING_LOCK),
            ordering_recheck: r(ORDERING_RECHECK),
            flow_queues: r(FLOW_QUEUES),
            backoff_raise: r(BACKOFF_RAISE),
            flow_lock: r(FLOW_LOCK),
            flow_due: r(FLOW_DUE),
            flow_state: r(FLOW_STATE),
            groups_next: r(GROUPS_NEXT),
            groups_state: r(GROUPS_STATE),
            flow_take: r(FLOW_TAKE),
            buckets_save: r(BUCKETS_SAVE),
            turns_save: r(TURNS_SAVE),
            due_next: r(DUE_NEXT),
            dependencies_mark: r(DEPENDENCIES_MARK),
            dependencies_insert: r(DEPENDENCIES_INSERT),
            dependents_lock: r(DEPENDENTS_LOCK),
            dependencies_of: r(DEPENDENCIES_OF),
            job_lock: r(JOB_LOCK),
            jobs_lock: r(JOBS_LOCK),
            jobs_read: r(JOBS_READ),
            update: r(UPDATE),
            history_insert: r(HISTORY_INSERT),
            history_trim: r(HISTORY_TRIM),
            notify: r(NOTIFY),
            job_get: r(JOB_GET),
            step_find: r(STEP_FIND),
            step_insert: r(STEP_INSERT),
            steps_read: r(STEPS_READ),
            job_waiting: r(JOB_WAITING),
            expire_select: r(EXPIRE_SELECT),
            promote_select: r(PROMOTE_SELECT),
            prune: r(PRUNE),
            discard: r(DISCARD),
            queue_ensure_one: r(QUEUE_ENSURE_ONE),
            queue_lock: r(QUEUE_LOCK),
            queue_update: r(QUEUE_UPDATE),
            queue_stats: r(QUEUE_STATS),
            queue_delete_lock: r(QUEUE_DELETE_LOCK),
            queue_delete_check: r(QUEUE_DELETE_CHECK),
            queue_delete: r(QUEUE_DELETE),
            queue_schemas: r(QUEUE_SCHEMAS),
            payloads_read: r(PAYLOADS_READ),
            schedule_get: r(SCHEDULE_GET),
            schedule_list: r(SCHEDULE_LIST),
            schedule_lock: r(SCHEDULE_LOCK),
            schedule_put_lock: r(SCHEDULE_PUT_LOCK),
            schedule_count: r(SCHEDULE_COUNT),
            queue_get: r(QUEUE_GET),
            schedule_save: r(SCHEDULE_SAVE),
            schedule_delete: r(SCHEDULE_DELETE),
            schedules_due: r(SCHEDULES_DUE),
            schedule_tick_lock: r(SCHEDULE_TICK_LOCK),
            schedule_advance: r(SCHEDULE_ADVANCE),
            breaker: crate::store::BreakerSql::new(schema),
        }
    }

    /// A select over jobs matching `filter` with an id above `$1`, in id order, at most `$2`
    /// (`newest_first`: below `$1`, in reverse id order).
    /// `columns` is what to return; `dead_only` forces `state = 'dead'` (dead-letter selections);
    /// `lock` adds `FOR UPDATE`. Only the conditions the filter sets are in the text, so each
    /// combination gets its own plan (a catch-all `($n IS NULL OR ...)` would plan badly). The
    /// returned parameters follow `$1` and `$2`.
    pub fn filtered(
        &self,
        columns: Columns,
        filter: &JobFilter,
        dead_only: bool,
        lock: bool,
        newest_first: bool,
    ) -> (String, FilterParams) {
        let mut text = format!(
            "SELECT {} FROM {}.jobs j WHERE j.id {} $1::bigint",
            match columns {
                Columns::Job => JOB_COLUMNS,
                Columns::Summary => SUMMARY_COLUMNS,
            },
            self.schema,
            if newest_first { "<" } else { ">" },
        );
        let mut params = FilterParams::default();
        let mut n = 2;
        let mut next = || {
            n += 1;
            n
        };
        if let Some(queue) = &filter.queue {
            text += &format!(" AND j.queue = ${}::text", next());
            params.texts.push(queue.as_str().to_owned());
        }
        let state = if dead_only { Some(dray_core::JobState::Dead) } else { filter.state };
        if let Some(state) = state {
            text += &format!(" AND j.state = ${}::text", next());
            params.texts.push(state.as_str().to_owned());
        }
        if let Some(reason) = filter.dead_reason {
            text += &format!(" AND j.dead_reason = ${}::text", next());
            params.texts.push(reason.as_str().to_owned());
        }
        if let Some(tag) = &filter.tag {
            text += &format!(" AND ${}::text = ANY(j.tags)", next());
            params.texts.push(tag.to_string());
        }
        if let Some(from) = filter.created_from {
            text += &format!(" AND j.created_at >= ${}::timestamptz", next());
            params.times.push(from);
        }
        if let Some(until) = filter.created_until {
            text += &format!(" AND j.created_at < ${}::timestamptz", next());
            params.times.push(until);
        }
        if let Some(error) = &filter.error {
            // "C": lower() folds ASCII letters only, as the embedded store does.
            text +=
                &format!(" AND strpos(lower(j.last_error COLLATE \"C\"), lower(${}::text COLLATE \"C\")) > 0", next());
            params.texts.push(error.to_string());
        }
        text += if newest_first { " ORDER BY j.id DESC LIMIT $2::bigint" } else { " ORDER BY j.id LIMIT $2::bigint" };
        if lock {
            text += " FOR UPDATE";
        }
        (text, params)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Columns {
    Job,
    Summary,
}

/// The values of a filtered select after `$1` (after) and `$2` (limit): texts first, then times,
/// in the order [`Sql::filtered`] numbered them.
#[derive(Debug, Default)]
pub(crate) struct FilterParams {
    pub texts: Vec<String>,
    pub times: Vec<dray_core::Timestamp>,
}

fn render(sql: &str, schema: &str) -> String {
    sql.replace("{job_columns}", JOB_COLUMNS)
        .replace("{queue_columns}", QUEUE_COLUMNS)
        .replace("{breaker_columns}", crate::store::BREAKER_COLUMNS)
        .replace("{schedule_columns}", SCHEDULE_COLUMNS)
        .replace("{history_newest_kept}", &HISTORY_NEWEST_KEPT.to_string())
        .replace("{leader_guard}", &crate::leader::guard("{s}", 3))
        .replace("{leader_guard_2}", &crate::leader::guard("{s}", 2))
        .replace("{leader_guard_7}", &crate::leader::guard("{s}", 7))
        .replace("{due_prefix}", DUE_PREFIX)
        .replace("{ordering_eligible}", ORDERING_ELIGIBLE)
        .replace("{flow_queue}", FLOW_QUEUE)
        .replace("{needed_by_dependents}", NEEDED_BY_DEPENDENTS)
        .replace("{s}", schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let sql = Sql::new("dray_x");
        let all = [
            &sql.now,
            &sql.clock,
            &sql.queues_ensure,
            &sql.keys_lookup,
            &sql.insert,
            &sql.lease,
            &sql.ordering_lock,
            &sql.ordering_recheck,
            &sql.flow_queues,
            &sql.flow_lock,
            &sql.flow_due,
            &sql.flow_state,
            &sql.groups_next,
            &sql.groups_state,
            &sql.flow_take,
            &sql.buckets_save,
            &sql.turns_save,
            &sql.due_next,
            &sql.job_lock,
            &sql.jobs_lock,
            &sql.jobs_read,
            &sql.update,
            &sql.history_insert,
            &sql.history_trim,
            &sql.notify,
            &sql.job_get,
            &sql.expire_select,
            &sql.promote_select,
            &sql.prune,
            &sql.discard,
            &sql.queue_ensure_one,
            &sql.queue_lock,
            &sql.queue_update,
            &sql.queue_stats,
            &sql.queue_delete_lock,
            &sql.queue_delete_check,
            &sql.queue_delete,
            &sql.queue_schemas,
            &sql.payloads_read,
            &sql.schedule_get,
            &sql.schedule_list,
            &sql.schedule_lock,
            &sql.schedule_put_lock,
            &sql.schedule_count,
            &sql.queue_get,
            &sql.schedule_save,
            &sql.schedule_delete,
            &sql.schedules_due,
            &sql.schedule_tick_lock,
            &sql.schedule_advance,
            &sql.breaker.blocked,
            &sql.breaker.lock,
            &sql.breaker.lock_for_jobs,
            &sql.breaker.save,
            &sql.breaker.put,
            &sql.breaker.delete,
            &sql.breaker.queue_exists,
            &sql.dependencies_mark,
            &sql.dependencies_insert,
            &sql.dependents_lock,
            &sql.dependencies_of,
        ];
        for text in all {
            assert!(!text.contains('{') || text.contains("'{"), "unfilled placeholder in {text}");
        }
        assert!(sql.lease.contains("dray_x.fencing_tokens"));
        for fenced in [&sql.expire_select, &sql.promote_select, &sql.prune, &sql.schedules_due] {
            assert!(fenced.contains("FROM dray_x.leader ldr WHERE ldr.name = $3::text"), "{fenced}");
        }
        assert!(sql.schedule_tick_lock.contains("FROM dray_x.leader ldr WHERE ldr.name = $2::text"));
        assert!(sql.schedule_advance.contains("FROM dray_x.leader ldr WHERE ldr.name = $7::text"));
    }

    #[test]
    fn filters_number_parameters_in_order() {
        let sql = Sql::new("s");
        let filter = JobFilter {
            queue: Some(dray_core::QueueName::new("q").unwrap()),
            tag: Some("t".into()),
            created_until: Some(dray_core::Timestamp(5)),
            ..JobFilter::default()
        };
        let (text, params) = sql.filtered(Columns::Summary, &filter, true, true, false);
        assert!(text.contains("j.queue = $3::text AND j.state = $4::text AND $5::text = ANY(j.tags) AND j.created_at < $6::timestamptz"), "{text}");
        assert!(text.ends_with("ORDER BY j.id LIMIT $2::bigint FOR UPDATE"));
        assert_eq!(params.texts, ["q", "dead", "t"]);
        assert_eq!(params.times, [dray_core::Timestamp(5)]);
    }
}
