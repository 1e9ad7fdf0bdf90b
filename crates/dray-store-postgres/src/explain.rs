//! The plans of the hot statements on a table of 100,000 jobs: each must use the index designed
//! for it and never scan `jobs` whole, with the parameters bound (custom plan) and as a generic
//! plan (what a prepared statement switches to after five executions). The plans are printed
//! (`cargo nextest run -p dray-store-postgres explain --no-capture`); `EXPLAIN.md` holds a copy.

use std::fmt::Write as _;

use crate::sql::{Columns, Sql};

const JOBS: i64 = 100_000;
/// The suite's epoch; the data is laid out around it.
const T0: &str = "'2023-11-14 22:13:20+00'::timestamptz";

/// One hot statement: its text, literal arguments for `EXECUTE`, and the indexes its plan must use.
struct Hot {
    name: &'static str,
    sql: String,
    args: String,
    indexes: &'static [&'static str],
}

fn hot_statements(sql: &Sql) -> Vec<Hot> {
    let filter = dray_store::JobFilter {
        queue: Some(dray_core::QueueName::new("q3").unwrap()),
        state: Some(dray_core::JobState::Dead),
        ..dray_store::JobFilter::default()
    };
    let (list_sql, _) = sql.filtered(Columns::Summary, &filter, false, false, false);
    let ids = format!("'{{{}}}'", (50_000..50_100).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    vec![
        Hot {
            name: "lease, one queue, 10 jobs",
            sql: sql.lease.clone(),
            args: "ARRAY['q1'], '2023-11-14 22:13:30+00', 10, 1000, false".into(),
            indexes: &[
                "jobs_available",
                "jobs_waiting",
                "jobs_ordering",
                "jobs_ordering_running",
                "jobs_group_available",
            ],
        },
        Hot {
            name: "lease, three queues, 100 jobs",
            sql: sql.lease.clone(),
            args: "ARRAY['q1', 'q2', 'q3'], '2023-11-14 22:13:30+00', 100, 1000, false".into(),
            indexes: &["jobs_available", "jobs_waiting", "jobs_ordering", "jobs_ordering_running"],
        },
        Hot {
            name: "lease: the queues under flow control",
            sql: sql.flow_queues.clone(),
            args: "ARRAY['q1', 'qg'], '2023-11-14 22:13:30+00'".into(),
            indexes: &["jobs_group_available"],
        },
        Hot {
            name: "flow lease: the queue's state",
            sql: sql.flow_state.clone(),
            args: "'qg', 1000".into(),
            indexes: &["jobs_queue_state", "jobs_available"],
        },
        Hot {
            name: "flow lease: the next 10 groups of 10,000, from the middle",
            sql: sql.groups_next.clone(),
            args: "'qg', 'g05000', NULL, 10".into(),
            indexes: &["jobs_group_available"],
        },
        Hot {
            name: "flow lease: the next 10 groups of 10,000, wrapping around",
            sql: sql.groups_next.clone(),
            args: "'qg', '', 'g00005', 10".into(),
            indexes: &["jobs_group_available"],
        },
        Hot {
            name: "flow lease: the state of 32 groups",
            sql: sql.groups_state.clone(),
            args: format!(
                "'qg', ARRAY['big', {}], 1",
                (1..32).map(|g| format!("'g{:05}'", g * 300)).collect::<Vec<_>>().join(", ")
            ),
            indexes: &["jobs_group_running", "rate_buckets_pkey"],
        },
        Hot {
            name: "flow lease: take 5 of the big group, 1 of another, 5 ungrouped",
            sql: sql.flow_take.clone(),
            args: "'qg', ARRAY['big', 'g05001'], ARRAY[5, 1]::bigint[], '{}'::bigint[], 5".into(),
            indexes: &["jobs_group_available", "jobs_available", "jobs_pkey"],
        },
        Hot {
            name: "lease: re-check of picked keyed jobs",
            sql: sql.ordering_recheck.clone(),
            args: "ARRAY[50000, 50004, 50008]::bigint[]".into(),
            indexes: &["jobs_pkey", "jobs_ordering", "jobs_ordering_running"],
        },
        Hot {
            name: "expire leases",
            sql: sql.expire_select.clone(),
            args: "'2023-11-14 22:13:30+00', 1000, NULL, NULL".into(),
            indexes: &["jobs_running"],
        },
        Hot {
            name: "expire leases, fenced by the leader's epoch",
            sql: sql.expire_select.clone(),
            args: "'2023-11-14 22:13:30+00', 1000, 'maintenance', 7".into(),
            indexes: &["jobs_running"],
        },
        Hot {
            name: "promote due jobs",
            sql: sql.promote_select.clone(),
            args: "'2023-11-14 22:13:30+00', 1000, 'maintenance', 7".into(),
            indexes: &["jobs_waiting"],
        },
        Hot {
            name: "prune",
            sql: sql.prune.clone(),
            args: "'2023-11-14 22:13:30+00', 1000, 'maintenance', 7".into(),
            indexes: &["jobs_finished", "jobs_dead"],
        },
        Hot { name: "lock jobs to ack (100 ids)", sql: sql.jobs_lock.clone(), args: ids, indexes: &["jobs_pkey"] },
        Hot {
            name: "write statuses (2 jobs)",
            sql: sql.update.clone(),
            args: "ARRAY[50000, 50001]::bigint[], ARRAY[1, 1], ARRAY[2, 2], ARRAY[NULL, NULL]::bigint[], \
                   ARRAY['completed', 'completed'], ARRAY[now(), now()], ARRAY[1, 1], ARRAY[NULL, NULL]::bigint[], \
                   ARRAY[NULL, NULL]::bigint[], ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::timestamptz[], \
                   ARRAY[NULL, NULL]::timestamptz[], ARRAY[false, false], ARRAY[false, false], \
                   ARRAY[NULL, NULL]::bytea[], ARRAY[false, false], ARRAY[NULL, NULL]::bytea[], \
                   ARRAY[false, false], ARRAY[NULL, NULL]::bytea[], ARRAY[NULL, NULL]::text[], \
                   ARRAY[NULL, NULL]::text[], ARRAY[now(), now()]"
                .into(),
            indexes: &["jobs_pkey"],
        },
        Hot {
            name: "job with history",
            sql: sql.job_get.clone(),
            args: "50000".into(),
            indexes: &["jobs_pkey", "job_history_pkey"],
        },
        Hot {
            name: "list dead jobs of a queue (page of 100)",
            sql: list_sql,
            args: "0, 101, 'q3', 'dead'".into(),
            indexes: &["jobs_queue_state"],
        },
        Hot {
            name: "queue stats",
            sql: sql.queue_stats.clone(),
            args: "'q1'".into(),
            indexes: &["jobs_queue_state", "jobs_dead"],
        },
        Hot {
            name: "idempotency lookup",
            sql: sql.keys_lookup.clone(),
            args: "ARRAY['q1', 'q2'], ARRAY['k1', 'k2'], NULL".into(),
            indexes: &["idempotency_pkey"],
        },
    ]
}

/// 100,000 jobs over 10 queues in a steady-state mix: most finished, some waiting, a few running,
/// with a small share of waiting jobs due and of leases past their deadline at the `now` used.
fn populate(schema: &str) -> String {
    format!(
        "
INSERT INTO {schema}.queues (name, attempts_max, backoff_base_ms, backoff_factor, backoff_cap_ms, lease_ms,
                             retention_ms, retention_dead_ms, paused)
SELECT 'q' || g, 25, 1000, 2, 3600000, 30000, 86400000, 2592000000, false FROM generate_series(0, 9) g;

INSERT INTO {schema}.jobs (queue, payload, priority, created_at, attempts_max, backoff_base_ms, backoff_factor,
                      backoff_cap_ms, lease_ms, tags, state, run_at, attempt, lease_id, token, worker, leased_at,
                      lease_deadline, cancel_requested, dead_reason, finished_at, version)
SELECT 'q' || (g % 10), '\\x7b7d'::bytea, (g % 3)::smallint, created_at, 25, 1000, 2, 3600000, 30000, '{{}}', state,
       CASE WHEN state IN ('scheduled', 'retrying') THEN {T0} + (g % 1000) * interval '1 second' ELSE created_at END,
       CASE WHEN state IN ('available', 'scheduled') THEN 0 ELSE 1 END,
       CASE WHEN state = 'running' THEN g END, CASE WHEN state = 'running' THEN g END,
       CASE WHEN state = 'running' THEN 'w' END, CASE WHEN state = 'running' THEN created_at END,
       CASE WHEN state = 'running' THEN {T0} + (g % 600) * interval '1 second' END,
       false, CASE WHEN state = 'dead' THEN 'failed' END,
       CASE WHEN state IN ('completed', 'dead', 'cancelled') THEN created_at + interval '1 second' END, 2
FROM (
    SELECT g, {T0} - interval '2 days' + g * interval '1 millisecond' AS created_at,
           CASE WHEN g % 100 < 60 THEN 'completed' WHEN g % 100 < 75 THEN 'available'
                WHEN g % 100 < 85 THEN 'scheduled' WHEN g % 100 < 90 THEN 'retrying'
                WHEN g % 100 < 95 THEN 'running' WHEN g % 100 < 98 THEN 'dead' ELSE 'cancelled' END AS state
    FROM generate_series(1, {JOBS}) g
) x;

INSERT INTO {schema}.job_history (job_id, seq, at, kind, state, attempt)
SELECT id, 1, created_at, 'enqueued', 'available', 0 FROM {schema}.jobs;
INSERT INTO {schema}.job_history (job_id, seq, at, kind, state, attempt)
SELECT id, 2, created_at, 'leased', 'running', 1 FROM {schema}.jobs;

-- The leader's current term, so fenced maintenance statements run in full.
INSERT INTO {schema}.leader (name, holder, epoch, acquired_at, expires_at)
VALUES ('maintenance', 'explain', 7, now(), now() + interval '1 hour');

UPDATE {schema}.jobs SET idempotency_key = 'k' || id, idempotency_expires_at = created_at + interval '1 day'
WHERE id % 7 = 0;
INSERT INTO {schema}.idempotency (queue, key, job_id, expires_at)
SELECT queue, idempotency_key, id, idempotency_expires_at FROM {schema}.jobs WHERE idempotency_key IS NOT NULL;

-- A quarter of the jobs, of every priority, carry one of 200 ordering keys: most keyed available
-- jobs are held back.
UPDATE {schema}.jobs SET ordering_key = 'o' || (id % 200) WHERE id % 4 = 0;

-- A queue under flow control with 10,000 groups: one big group of 20,000 available jobs, the
-- others with one available job each and one running in every tenth; 100 ungrouped jobs.
INSERT INTO {schema}.queues (name, attempts_max, backoff_base_ms, backoff_factor, backoff_cap_ms, lease_ms,
                             retention_ms, retention_dead_ms, paused, group_concurrency_max)
VALUES ('qg', 25, 1000, 2, 3600000, 30000, 86400000, 2592000000, false, 1);
INSERT INTO {schema}.jobs (queue, payload, priority, created_at, attempts_max, backoff_base_ms, backoff_factor,
                      backoff_cap_ms, lease_ms, tags, state, run_at, attempt, cancel_requested, version, group_key)
SELECT 'qg', '\\x7b7d'::bytea, 0, {T0} - interval '1 day', 25, 1000, 2, 3600000, 30000, '{{}}', 'available',
       {T0} - interval '1 day' + g * interval '1 millisecond', 0, false, 1,
       CASE WHEN g <= 20000 THEN 'big' WHEN g <= 29999 THEN 'g' || lpad((g - 20000)::text, 5, '0') END
FROM generate_series(1, 30099) g;
INSERT INTO {schema}.jobs (queue, payload, priority, created_at, attempts_max, backoff_base_ms, backoff_factor,
                      backoff_cap_ms, lease_ms, tags, state, run_at, attempt, lease_id, token, worker, leased_at,
                      lease_deadline, cancel_requested, version, group_key)
SELECT 'qg', '\\x7b7d'::bytea, 0, {T0} - interval '1 day', 25, 1000, 2, 3600000, 30000, '{{}}', 'running', {T0}, 1,
       g, g, 'w', {T0}, {T0} + interval '30 seconds', false, 2, 'g' || lpad(g::text, 5, '0')
FROM generate_series(10, 9999, 10) g;
-- Every group of it rated lately.
INSERT INTO {schema}.rate_buckets (queue, group_key, tat)
SELECT 'qg', 'g' || lpad(g::text, 5, '0'), 1700000000000000000 FROM generate_series(1, 9999) g;

"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_hot_statements_use_their_indexes() {
    let admin_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = connect(&admin_url).await;
    let db = format!("dray_explain_{}", std::process::id());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let result = explain_in(&admin_url, &db).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
    let report = result.unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
}

async fn explain_in(admin_url: &str, db: &str) -> Result<String, String> {
    let url = match admin_url.rfind('/') {
        Some(i) if admin_url.contains("://") => format!("{}/{db}", &admin_url[..i]),
        _ => format!("{admin_url} dbname={db}"),
    };
    let mut config = crate::PostgresConfig::new(&url);
    config.schema = "dray".into();
    crate::migrate(&config).await.map_err(|e| e.to_string())?;
    let client = connect(&url).await;
    client.batch_execute(&populate("dray")).await.map_err(|e| format!("populate: {e:?}"))?;
    // VACUUM cannot run in the implicit transaction of a multi-statement query.
    for table in ["jobs", "job_history", "idempotency", "queues", "rate_buckets", "group_turns"] {
        client.batch_execute(&format!("VACUUM ANALYZE dray.{table}")).await.map_err(|e| format!("vacuum: {e:?}"))?;
    }
    let sql = Sql::new("dray");
    let mut report = String::new();
    for (i, hot) in hot_statements(&sql).iter().enumerate() {
        for mode in ["force_custom_plan", "force_generic_plan"] {
            client
                .batch_execute(&format!("SET plan_cache_mode = {mode}; PREPARE hot{i} AS {}", hot.sql))
                .await
                .map_err(|e| format!("prepare {}: {e:?}", hot.name))?;
            // ANALYZE runs the statement: inside a transaction that is rolled back.
            let rows = client
                .simple_query(&format!(
                    "BEGIN; EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE hot{i}({}); ROLLBACK;",
                    hot.args
                ))
                .await
                .map_err(|e| format!("explain {}: {e:?}", hot.name))?;
            client.batch_execute(&format!("DEALLOCATE hot{i}")).await.map_err(|e| e.to_string())?;
            let plan: Vec<String> = rows
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            let text = plan.join("\n");
            let _ = writeln!(report, "### {} ({mode})\n```\n{text}\n```", hot.name);
            if text.contains("Seq Scan on jobs") {
                return Err(format!("{} ({mode}) scans jobs whole:\n{text}", hot.name));
            }
            for index in hot.indexes {
                if !text.contains(index) {
                    return Err(format!("{} ({mode}) does not use {index}:\n{text}", hot.name));
                }
            }
        }
    }
    Ok(report)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    // As the store connects (TLS settings of the URL included), without its statement timeout.
    let mut config = crate::PostgresConfig::new(url);
    config.statement_timeout_ms = crate::PostgresConfig::STATEMENT_TIMEOUT_MS_MAX;
    let connector = config.connector().unwrap_or_else(|e| panic!("{url}: {e}"));
    let (client, connection) = connector.connect().await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url}: {e}. Set DATABASE_URL, or start the local server with \
             `pg_ctlcluster 15 main start`."
        )
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
