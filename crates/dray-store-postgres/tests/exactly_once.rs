//! Exactly-once effects: `<schema>.complete()` and `<schema>.fail()` (migration 13), called by an
//! application inside its own transaction next to the write of the job's effect, and the SDK's
//! helpers on top of them (`dray_client::outbox::complete`, `fail`, and their sqlx forms).
//!
//! The SQL functions repeat in SQL what `PostgresStore::job_ack` decides in Rust; the
//! differential test here runs the same acks both ways on twin jobs and compares what they
//! wrote. Each test gets a fresh database.

mod common;

use std::collections::HashSet;

use dray_client::{JobError, outbox};
use dray_core::{BreakerPolicy, JobId, JobState, LeaseId, Limits, QueueName, Rejection, Timestamp, WorkerId};
use dray_store::{Ack, AckOutcome, Error, JobAck, JobCancel, JobLease, LeasedJob, Maintain, QueueConfigure, Store};
use dray_store_postgres::{LEASE_EXPIRED_SQLSTATE, PostgresConfig, PostgresStore, STALE_LEASE_SQLSTATE, TimeSource};

use common::TestDb;

async fn store(db: &TestDb) -> PostgresStore {
    let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
    PostgresStore::connect(config).await.unwrap()
}

async fn db_now(client: &tokio_postgres::Client) -> Timestamp {
    let row =
        client.query_one("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[]).await.unwrap();
    Timestamp(row.get(0))
}

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

fn lease_of(queue: &str, now: Timestamp, lease_ms: Option<u64>) -> JobLease {
    JobLease { now, queues: vec![q(queue)], count_max: 1, worker: WorkerId::new("w-1").unwrap(), lease_ms }
}

async fn enqueue(client: &tokio_postgres::Client, queue: &str, options: &str) -> u64 {
    let row = client
        .query_one("SELECT dray.enqueue($1::text, '{\"n\": 1}'::jsonb, $2::text::jsonb)", &[&queue, &options])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// Leases the one available job of `queue` (the database's clock).
async fn lease_one(store: &PostgresStore, queue: &str) -> LeasedJob {
    let mut leased = store.job_lease(lease_of(queue, Timestamp(0), None)).await.unwrap();
    assert_eq!(leased.len(), 1, "one job of {queue} to lease");
    leased.remove(0)
}

fn lease_text(id: LeaseId) -> String {
    format!("{:016x}", id.0)
}

/// The SQLSTATE and message of a refused statement.
fn refused(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("a database error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// A job's row and history as text, without what differs between twins (ids, times, lease ids,
/// tokens, the queue's name) but with whether each is set.
async fn row_text(client: &tokio_postgres::Client, id: u64) -> String {
    let id = id as i64;
    let row = client
        .query_one(
            "SELECT state, attempt, lease_id IS NULL, token IS NULL, worker, leased_at IS NULL,
                    lease_deadline IS NULL, cancel_requested, convert_from(result, 'UTF8'), last_error, dead_reason,
                    finished_at IS NULL, version, run_at > created_at
             FROM dray.jobs WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let job = format!(
        "state={} attempt={} lease_null={} token_null={} worker={:?} leased_at_null={} deadline_null={} \
         cancel_requested={} result={:?} last_error={:?} dead_reason={:?} finished_null={} version={} run_later={}",
        row.get::<_, String>(0),
        row.get::<_, i32>(1),
        row.get::<_, bool>(2),
        row.get::<_, bool>(3),
        row.get::<_, Option<String>>(4),
        row.get::<_, bool>(5),
        row.get::<_, bool>(6),
        row.get::<_, bool>(7),
        row.get::<_, Option<String>>(8),
        row.get::<_, Option<String>>(9),
        row.get::<_, Option<String>>(10),
        row.get::<_, bool>(11),
        row.get::<_, i32>(12),
        row.get::<_, bool>(13),
    );
    let history = client
        .query(
            "SELECT seq, kind, state, attempt, token IS NULL, worker, error, run_at IS NULL
             FROM dray.job_history WHERE job_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap();
    let mut out = job;
    for h in &history {
        out.push_str(&format!(
            "\n  {} {} {} {} token_null={} worker={:?} error={:?} run_at_null={}",
            h.get::<_, i32>(0),
            h.get::<_, String>(1),
            h.get::<_, String>(2),
            h.get::<_, i32>(3),
            h.get::<_, bool>(4),
            h.get::<_, Option<String>>(5),
            h.get::<_, Option<String>>(6),
            h.get::<_, bool>(7),
        ));
    }
    out
}

/// A queue's breaker row, without its times and bucket numbers.
async fn breaker_text(client: &tokio_postgres::Client, queue: &str) -> String {
    let row = client
        .query_one(
            "SELECT state, forced, changed_at IS NULL, half_open_at IS NULL, probes_granted, probes_succeeded,
                    to_closed, to_open, to_half_open,
                    (SELECT coalesce(sum(a), 0)::bigint FROM unnest(bucket_attempts) a),
                    (SELECT coalesce(sum(f), 0)::bigint FROM unnest(bucket_failures) f)
             FROM dray.breakers WHERE queue = $1",
            &[&queue],
        )
        .await
        .unwrap();
    format!(
        "state={} forced={} changed_null={} half_open_null={} probes={}/{} transitions={}/{}/{} attempts={:?} failures={:?}",
        row.get::<_, String>(0),
        row.get::<_, bool>(1),
        row.get::<_, bool>(2),
        row.get::<_, bool>(3),
        row.get::<_, i32>(4),
        row.get::<_, i32>(5),
        row.get::<_, i64>(6),
        row.get::<_, i64>(7),
        row.get::<_, i64>(8),
        row.get::<_, i64>(9),
        row.get::<_, i64>(10),
    )
}

/// The limits in SQL are the core's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_in_sql_equal_the_core() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let client = db.client().await;
    // The SDK names the same SQLSTATEs as the store.
    assert_eq!(outbox::SQLSTATE_STALE_LEASE, STALE_LEASE_SQLSTATE);
    assert_eq!(outbox::SQLSTATE_LEASE_EXPIRED, LEASE_EXPIRED_SQLSTATE);
    let row = client.query_one("SELECT dray.ack_limits()::text", &[]).await.unwrap();
    let sql: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    let core = serde_json::json!({
        "result_bytes_max": Limits::RESULT_BYTES_MAX,
        "error_bytes_max": Limits::ERROR_BYTES_MAX,
        "retry_after_ms_max": Limits::RETRY_AFTER_MS_MAX,
        "history_entries_max": Limits::HISTORY_ENTRIES_MAX,
    });
    assert_eq!(sql, core);
}

/// The effect and the completion commit together; a rollback leaves the job running under the
/// same lease (which can then still complete), and the committed completion is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_applies_and_rollback_leaves_the_lease() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE receipts (job bigint PRIMARY KEY)").await.unwrap();
    let id = enqueue(&app, "emails", "{}").await;
    let leased = lease_one(&store, "emails").await;
    let lease = lease_text(leased.lease);
    let before = store.job_get(JobId(id)).await.unwrap().unwrap();

    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO receipts VALUES ($1)", &[&(id as i64)]).await.unwrap();
    let state: String = tx.query_one("SELECT dray.complete($1, $2)", &[&(id as i64), &lease]).await.unwrap().get(0);
    assert_eq!(state, "completed");
    tx.rollback().await.unwrap();

    let after = store.job_get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(after, before, "a rollback changes nothing: running, same lease, same version");
    assert_eq!(after.status.lease.as_ref().map(|l| l.id), Some(leased.lease));
    let receipts: i64 = app.query_one("SELECT count(*) FROM receipts", &[]).await.unwrap().get(0);
    assert_eq!(receipts, 0);
    assert!(store.sql_acks_drain(100).await.unwrap().is_empty(), "a rolled-back ack is not counted");

    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO receipts VALUES ($1)", &[&(id as i64)]).await.unwrap();
    let ended = outbox::complete(&tx, "dray", id, &lease, Some(&serde_json::json!({"sent": true}))).await.unwrap();
    assert_eq!(ended, outbox::Ended::Completed);
    tx.commit().await.unwrap();

    let job = store.job_get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(job.state(), JobState::Completed);
    assert_eq!(job.status.result.as_ref().map(|r| r.as_bytes().to_vec()), Some(br#"{"sent": true}"#.to_vec()));
    assert_eq!(job.version, before.version + 1);
    let entry = job.history.last().unwrap();
    assert_eq!((entry.kind, entry.state, entry.attempt), (dray_core::HistoryKind::Completed, JobState::Completed, 1));
    assert_eq!((entry.token, entry.worker.as_ref().map(WorkerId::as_str)), (Some(leased.token), Some("w-1")));
    assert_eq!(job.status.finished_at, Some(entry.at));

    // Counted once, as an HTTP ack would answer.
    let acks = store.sql_acks_drain(100).await.unwrap();
    assert_eq!(acks.len(), 1);
    let ack = &acks[0];
    assert_eq!((ack.job, ack.lease, ack.at), (JobId(id), leased.lease, entry.at));
    assert_eq!((ack.acked.state, ack.acked.attempt, ack.acked.queue.as_str()), (JobState::Completed, 1, "emails"));
    assert_eq!(ack.acked.leased_at, before.status.lease.as_ref().unwrap().leased_at);
    assert!(store.sql_acks_drain(100).await.unwrap().is_empty(), "drained once");

    // Final: neither path accepts another ack of it.
    let again = app.query_one("SELECT dray.complete($1, $2)", &[&(id as i64), &lease]).await.unwrap_err();
    let (code, message) = refused(&again);
    assert_eq!(code, STALE_LEASE_SQLSTATE);
    assert!(message.contains("is already completed"), "{message}");
    let http = store
        .job_ack(JobAck {
            now: Timestamp(0),
            acks: vec![Ack { job: JobId(id), lease: leased.lease, outcome: AckOutcome::Complete { result: None } }],
        })
        .await
        .unwrap();
    assert!(matches!(&http[0], Err(Error::Rejected { rejection: Rejection::AlreadyFinished { .. }, .. })));
}

/// A stale or expired lease raises its own SQLSTATE and the caller's transaction rolls back with
/// its effect; bad arguments name the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_expired_leases_raise_and_roll_back() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE effects (job bigint PRIMARY KEY)").await.unwrap();

    // Stale: a lease this job never had.
    let id = enqueue(&app, "q", "{}").await;
    let leased = lease_one(&store, "q").await;
    let wrong = lease_text(LeaseId(leased.lease.0 ^ 1));
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO effects VALUES ($1)", &[&(id as i64)]).await.unwrap();
    let e = outbox::complete(&tx, "dray", id, &wrong, None).await.unwrap_err();
    assert!(e.is_stale_lease() && e.is_lease_lost() && !e.is_lease_expired(), "{e}");
    assert!(e.message().contains("is running and this lease is not its current one"), "{}", e.message());
    tx.rollback().await.unwrap();
    let effects: i64 = app.query_one("SELECT count(*) FROM effects", &[]).await.unwrap().get(0);
    assert_eq!(effects, 0, "the effect rolled back with the refused completion");
    assert_eq!(store.job_get(JobId(id)).await.unwrap().unwrap().state(), JobState::Running);

    // Expired by the database's clock: leased by a store whose clock is a minute behind.
    let behind = PostgresStore::connect(db.config()).await.unwrap();
    let id2 = enqueue(&app, "old", "{}").await;
    let now = db_now(&app).await;
    let mut leased2 = behind.job_lease(lease_of("old", Timestamp(now.0 - 60_000), Some(1_000))).await.unwrap();
    let leased2 = leased2.remove(0);
    let tx = app.transaction().await.unwrap();
    let e = outbox::fail(&tx, "dray", id2, &lease_text(leased2.lease), &JobError::retryable("x")).await.unwrap_err();
    assert!(e.is_lease_expired() && e.is_lease_lost(), "{e}");
    assert!(e.message().contains("(database clock)"), "{}", e.message());
    tx.rollback().await.unwrap();
    assert_eq!(store.job_get(JobId(id2)).await.unwrap().unwrap().state(), JobState::Running, "expiry's business");

    // No such job; bad arguments.
    let cases: [(&str, &str, Option<&str>); 6] = [
        ("SELECT dray.complete(999999, '0000000000000001')", "P0002", None),
        ("SELECT dray.complete(1, 'xyz')", "22023", Some("lease_id")),
        ("SELECT dray.complete(NULL, '0000000000000001')", "22004", None),
        ("SELECT dray.fail(1, '0000000000000001', NULL)", "22004", None),
        ("SELECT dray.fail(1, '0000000000000001', 'e', true, -1)", "22023", Some("retry_after_ms")),
        ("SELECT dray.fail(1, '0000000000000001', 'e', true, 2592000001)", "22023", Some("retry_after_ms")),
    ];
    for (sql, code, column) in cases {
        let e = app.query_one(sql, &[]).await.unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!((db.code().code(), db.column()), (code, column), "{sql}: {}", db.message());
    }
    let big = serde_json::Value::String("r".repeat(Limits::RESULT_BYTES_MAX));
    let e = outbox::complete(&app, "dray", id, &lease_text(leased.lease), Some(&big)).await.unwrap_err();
    assert!(e.is_invalid(), "{e}");
    assert!(e.message().contains("result is 262146 bytes; the limit is 262144"), "{}", e.message());
    let huge = app
        .query_one("SELECT dray.complete($1, $2, '{\"n\": 1e400}')", &[&(id as i64), &lease_text(leased.lease)])
        .await
        .unwrap_err();
    assert_eq!(refused(&huge).0, "22023");
    assert_eq!(store.job_get(JobId(id)).await.unwrap().unwrap().state(), JobState::Running, "refusals change nothing");
}

/// The same acks through the store (the HTTP path) and through SQL, on twin jobs in twin queues
/// with the same breaker, leave the same rows: job, history (trimmed past its bound), breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_acks_write_what_http_acks_write() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    // Breakers that count every outcome and never open (an open one would lease nothing); the
    // pair `http_open`/`sql_open` opens on its second failure.
    let counting =
        BreakerPolicy { failure_ratio: 1.0, window_ms: 86_400_000, min_attempts: 100_000, open_ms: 60_000, probes: 1 };
    let opening = BreakerPolicy { min_attempts: 2, failure_ratio: 0.5, ..counting };
    for (queue, breaker) in [("http", counting), ("sql", counting), ("http_open", opening), ("sql_open", opening)] {
        let mut c = QueueConfigure::new(Timestamp(0), q(queue));
        c.breaker = Some(Some(breaker));
        c.retry = Some(dray_core::RetryPolicy {
            attempts_max: 1000,
            backoff: dray_core::Backoff { base_ms: 1, factor: 1.0, cap_ms: 1 },
        });
        store.queue_configure(c).await.unwrap();
    }

    enum Step {
        Complete(Option<&'static str>),
        Fail { error: String, retryable: bool, retry_after_ms: Option<u64> },
        CancelThenFail,
    }
    let long_error = format!("{}é{}", "e".repeat(Limits::ERROR_BYTES_MAX - 1), "tail");
    let scenarios: Vec<(&str, &str, Vec<Step>)> = vec![
        (
            "",
            "{}",
            vec![
                Step::Fail { error: "down".into(), retryable: true, retry_after_ms: Some(0) },
                Step::Fail { error: "down".into(), retryable: true, retry_after_ms: Some(0) },
            ],
        ),
        ("", "{}", vec![Step::Complete(Some(r#"{"a": [1, 2]}"#))]),
        ("", "{}", vec![Step::Complete(None)]),
        (
            "",
            "{}",
            vec![
                Step::Fail { error: "boom".into(), retryable: true, retry_after_ms: Some(0) },
                Step::Fail { error: long_error.clone(), retryable: true, retry_after_ms: Some(0) },
                Step::Complete(None),
            ],
        ),
        ("", "{}", vec![Step::Fail { error: "bad input".into(), retryable: false, retry_after_ms: None }]),
        (
            "",
            r#"{"attempts_max": 1}"#,
            vec![Step::Fail { error: "last".into(), retryable: true, retry_after_ms: None }],
        ),
        ("", "{}", vec![Step::CancelThenFail]),
        // Past the history bound: 130 failed attempts write 260 entries besides the first.
        (
            "",
            "{}",
            (0..130)
                .map(|i| Step::Fail { error: format!("attempt {i}"), retryable: true, retry_after_ms: Some(0) })
                .chain([Step::Complete(None)])
                .collect(),
        ),
        // A failure with the queue's backoff (1 ms) rather than retry_after.
        ("", "{}", vec![Step::Fail { error: "backoff".into(), retryable: true, retry_after_ms: None }]),
    ];
    // The first scenario runs on the opening pair.
    let scenarios: Vec<(&str, &str, Vec<Step>)> = scenarios
        .into_iter()
        .enumerate()
        .map(|(i, (_, options, steps))| (if i == 0 { "_open" } else { "" }, options, steps))
        .collect();
    for (suffix, options, steps) in &scenarios {
        let queues = [format!("http{suffix}"), format!("sql{suffix}")];
        let twins = [enqueue(&app, &queues[0], options).await, enqueue(&app, &queues[1], options).await];
        for step in steps {
            for (i, queue) in queues.iter().map(String::as_str).enumerate() {
                let id = twins[i];
                // A retrying twin is due at once (retry_after 0, backoff 1 ms): the lease promotes it.
                let leased = loop {
                    let mut l = store.job_lease(lease_of(queue, Timestamp(0), None)).await.unwrap();
                    if let Some(l) = l.pop() {
                        break l;
                    }
                };
                assert_eq!(leased.id, JobId(id));
                let lease = lease_text(leased.lease);
                let outcome = match step {
                    Step::Complete(result) => {
                        AckOutcome::Complete { result: result.map(|r| dray_core::Payload::new(r.as_bytes().to_vec())) }
                    }
                    Step::Fail { error, retryable, retry_after_ms } => AckOutcome::Fail {
                        error: error.clone(),
                        retryable: *retryable,
                        retry_after_ms: *retry_after_ms,
                        rate_limited: false,
                    },
                    Step::CancelThenFail => {
                        store.job_cancel(JobCancel { now: Timestamp(0), job: JobId(id) }).await.unwrap();
                        AckOutcome::Fail {
                            error: "stopped".into(),
                            retryable: true,
                            retry_after_ms: None,
                            rate_limited: false,
                        }
                    }
                };
                if i == 0 {
                    let acks = vec![Ack { job: JobId(id), lease: leased.lease, outcome }];
                    let r = store.job_ack(JobAck { now: Timestamp(0), acks }).await.unwrap();
                    r[0].as_ref().unwrap();
                } else {
                    match outcome {
                        AckOutcome::Complete { result } => {
                            let result = result.map(|r| String::from_utf8(r.as_bytes().to_vec()).unwrap());
                            app.query_one(
                                "SELECT dray.complete($1, $2, $3::text::jsonb)",
                                &[&(id as i64), &lease, &result],
                            )
                            .await
                            .unwrap();
                        }
                        AckOutcome::Fail { error, retryable, retry_after_ms, .. } => {
                            let retry_after_ms = retry_after_ms.map(|ms| ms as i64);
                            app.query_one(
                                "SELECT dray.fail($1, $2, $3, $4, $5)",
                                &[&(id as i64), &lease, &error, &retryable, &retry_after_ms],
                            )
                            .await
                            .unwrap();
                        }
                    }
                }
            }
        }
        let (http, sql) = (row_text(&app, twins[0]).await, row_text(&app, twins[1]).await);
        assert_eq!(http, sql, "options {options}: the HTTP twin (left) and the SQL twin (right) differ");
        // Read back through the store too: the SQL twin is a job the store reads like any other.
        let job = store.job_get(JobId(twins[1])).await.unwrap().unwrap();
        assert!(job.history.len() <= Limits::HISTORY_ENTRIES_MAX);
        let breakers = (breaker_text(&app, &queues[0]).await, breaker_text(&app, &queues[1]).await);
        assert_eq!(breakers.0, breakers.1, "options {options}: breakers");
    }
    let trimmed: i64 = app
        .query_one("SELECT max(n) FROM (SELECT count(*) AS n FROM dray.job_history GROUP BY job_id) c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(trimmed, Limits::HISTORY_ENTRIES_MAX as i64, "the long scenario reached the bound");
    let opened: String =
        app.query_one("SELECT state FROM dray.breakers WHERE queue = 'sql_open'", &[]).await.unwrap().get(0);
    assert_eq!(opened, "open", "two failures opened both breakers");
    let counted = breaker_text(&app, "sql").await;
    assert!(counted.contains("attempts=139 failures=135"), "every outcome but the cancelled one: {counted}");
    // The SQL twins' acks are there to be counted: one per SQL call.
    let calls: usize = scenarios.iter().map(|(_, _, steps)| steps.len()).sum();
    assert_eq!(store.sql_acks_drain(10_000).await.unwrap().len(), calls);
}

/// A failed attempt through SQL waits out the job's backoff (full jitter within its window) and
/// sends `due <queue>` at commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_fail_backs_off_within_the_window_and_notifies_at_commit() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut app = db.client().await;
    let (listener, mut connection) = common::connect_raw(&db.url).await.unwrap();
    let (tx_n, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx_n.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN dray_jobs").await.unwrap();

    let options = r#"{"backoff": {"base_ms": 10000, "factor": 2, "cap_ms": 15000}}"#;
    let mut delays = Vec::new();
    for _ in 0..2 {
        let id = enqueue(&app, "slow", options).await;
        let enqueued = tokio::time::timeout(std::time::Duration::from_secs(10), notifications.recv()).await.unwrap();
        assert_eq!(enqueued.as_deref(), Some("slow"), "the enqueue's own notification");
        let leased = lease_one(&store, "slow").await;
        let tx = app.transaction().await.unwrap();
        let ended =
            outbox::fail(&tx, "dray", id, &lease_text(leased.lease), &JobError::retryable("later")).await.unwrap();
        assert_eq!(ended, outbox::Ended::Retrying);
        assert!(notifications.try_recv().is_err(), "nothing before the commit");
        tx.commit().await.unwrap();
        let payload = tokio::time::timeout(std::time::Duration::from_secs(10), notifications.recv()).await.unwrap();
        assert_eq!(payload.as_deref(), Some("due slow"));
        let job = store.job_get(JobId(id)).await.unwrap().unwrap();
        let failed_at = job.history.last().unwrap().at;
        assert_eq!(job.history.last().unwrap().run_at, Some(job.status.run_at));
        delays.push(job.status.run_at.0 - failed_at.0);
    }
    // The first retry's window is base_ms (10 s); the delay is drawn from 0..=10000.
    assert!(delays.iter().all(|d| (0..=10_000).contains(d)), "{delays:?}");
    assert_ne!(delays[0], delays[1], "jittered (equal with chance 1 in 10001)");
}

/// HTTP and SQL completing the same job at once: exactly one wins, the other is refused; the
/// job is completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_sql_completions_race_to_one_winner() {
    let db = TestDb::create().await;
    let store = std::sync::Arc::new(store(&db).await);
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE effects (job bigint PRIMARY KEY)").await.unwrap();
    let (mut sql_wins, mut http_wins) = (0, 0);
    for _ in 0..40 {
        let id = enqueue(&app, "race", "{}").await;
        let leased = lease_one(&store, "race").await;
        let http = {
            let store = store.clone();
            tokio::spawn(async move {
                let acks =
                    vec![Ack { job: JobId(id), lease: leased.lease, outcome: AckOutcome::Complete { result: None } }];
                store.job_ack(JobAck { now: Timestamp(0), acks }).await.unwrap().remove(0)
            })
        };
        let tx = app.transaction().await.unwrap();
        tx.execute("INSERT INTO effects VALUES ($1)", &[&(id as i64)]).await.unwrap();
        let sql = outbox::complete(&tx, "dray", id, &lease_text(leased.lease), None).await;
        let sql_ok = match sql {
            Ok(_) => {
                tx.commit().await.unwrap();
                true
            }
            Err(e) => {
                assert!(e.is_stale_lease(), "{e}");
                tx.rollback().await.unwrap();
                false
            }
        };
        let http = http.await.unwrap();
        match (sql_ok, &http) {
            (true, Err(Error::Rejected { rejection: Rejection::AlreadyFinished { .. }, .. })) => sql_wins += 1,
            (false, Ok(a)) if a.state == JobState::Completed => http_wins += 1,
            other => panic!("job {id}: not one winner: sql {}, http {:?}", other.0, other.1),
        }
        let job = store.job_get(JobId(id)).await.unwrap().unwrap();
        let completions = job.history.iter().filter(|h| h.kind == dray_core::HistoryKind::Completed).count();
        assert_eq!((job.state(), completions), (JobState::Completed, 1));
        let effect: i64 =
            app.query_one("SELECT count(*) FROM effects WHERE job = $1", &[&(id as i64)]).await.unwrap().get(0);
        assert_eq!(effect, i64::from(sql_ok), "the effect exists exactly when SQL won");
    }
    eprintln!("sql won {sql_wins}, http won {http_wins}");
}

/// A completion in a transaction racing the lease's expiry: the database decides, one wins.
/// Either the job completed (and the expiry passed it over) or it expired (and the completion
/// was refused, its effect rolled back), never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_racing_expiry_has_one_winner() {
    let db = TestDb::create().await;
    let live = std::sync::Arc::new(store(&db).await);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let election = live.leadership().clone();
    tokio::spawn(async move { election.run(stop_rx).await });
    common::leads(&live).await;
    // Leases by the test's clock, placed so that deadlines fall around the database's now.
    let placed = PostgresStore::connect(db.config()).await.unwrap();
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE effects (job bigint PRIMARY KEY)").await.unwrap();
    let mut seen = HashSet::new();
    for i in 0..60i64 {
        // A queue per round: an expired job comes back, and must not be leased by the next round.
        let queue = format!("race-{i}");
        let id = enqueue(&app, &queue, "{}").await as i64;
        let now = db_now(&app).await;
        // Deadline between 20 ms ago and 20 ms ahead of the database's clock.
        let offset = (i * 7) % 41 - 20;
        let leased = placed.job_lease(lease_of(&queue, Timestamp(now.0 - 1_000 + offset), Some(1_000))).await.unwrap();
        assert_eq!(leased[0].id, JobId(id as u64));
        let lease = lease_text(leased[0].lease);
        let expiring = {
            let live = live.clone();
            tokio::spawn(async move {
                // Maintenance's sweep at the database's now, a little later.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                live.leases_expire(Maintain { now: Timestamp(0), limit: 100 }).await.unwrap()
            })
        };
        let tx = app.transaction().await.unwrap();
        tx.execute("INSERT INTO effects VALUES ($1)", &[&id]).await.unwrap();
        let completed = match outbox::complete(&tx, "dray", id as u64, &lease, None).await {
            Ok(_) => {
                tx.commit().await.unwrap();
                true
            }
            Err(e) => {
                assert!(e.is_lease_lost(), "{e}");
                tx.rollback().await.unwrap();
                false
            }
        };
        let expired_now = expiring.await.unwrap().iter().any(|e| e.id == JobId(id as u64));
        // A deadline still ahead at the sweep: the next sweep, once it has passed.
        let expired_later = if !completed && !expired_now {
            loop {
                let swept = live.leases_expire(Maintain { now: Timestamp(0), limit: 100 }).await.unwrap();
                if swept.iter().any(|e| e.id == JobId(id as u64)) {
                    break true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        } else {
            false
        };
        let job = live.job_get(JobId(id as u64)).await.unwrap().unwrap();
        let kinds: Vec<_> = job.history.iter().map(|h| h.kind).collect();
        let effect: i64 = app.query_one("SELECT count(*) FROM effects WHERE job = $1", &[&id]).await.unwrap().get(0);
        if completed {
            assert!(!expired_now, "job {id}: completed and expired");
            assert_eq!(job.state(), JobState::Completed, "{kinds:?}");
            assert!(!kinds.contains(&dray_core::HistoryKind::Expired), "{kinds:?}");
            assert_eq!(effect, 1);
        } else {
            assert!(expired_now || expired_later);
            assert_eq!(job.state(), JobState::Retrying, "{kinds:?}");
            assert!(!kinds.contains(&dray_core::HistoryKind::Completed), "{kinds:?}");
            assert_eq!(effect, 0);
        }
        seen.insert(completed);
    }
    assert_eq!(seen.len(), 2, "both outcomes happened: {seen:?}");
}

/// The sqlx helpers send the same calls: commit applies, rollback leaves the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_helpers_complete_and_fail_in_the_callers_transaction() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let id = enqueue(&app, "q", "{}").await;
    let leased = lease_one(&store, "q").await;
    let lease = lease_text(leased.lease);

    let mut tx = pool.begin().await.unwrap();
    let ended = outbox::fail_sqlx(&mut tx, "dray", id, &lease, &JobError::fatal("no such customer")).await.unwrap();
    assert_eq!(ended, outbox::Ended::Dead);
    tx.rollback().await.unwrap();
    assert_eq!(store.job_get(JobId(id)).await.unwrap().unwrap().state(), JobState::Running);

    let mut tx = pool.begin().await.unwrap();
    let ended = outbox::complete_sqlx(&mut tx, "dray", id, &lease, Some(&serde_json::json!(7))).await.unwrap();
    assert_eq!(ended, outbox::Ended::Completed);
    tx.commit().await.unwrap();
    let job = store.job_get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(
        (job.state(), job.status.result.map(|r| r.as_bytes().to_vec())),
        (JobState::Completed, Some(b"7".to_vec()))
    );

    let mut conn = pool.acquire().await.unwrap();
    let e = outbox::complete_sqlx(&mut conn, "dray", id, &lease, None).await.unwrap_err();
    assert!(e.is_stale_lease(), "{e}");
}
