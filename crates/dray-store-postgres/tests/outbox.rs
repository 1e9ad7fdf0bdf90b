//! Transactional enqueue: the `<schema>.enqueue()` SQL function (migration 2) and the Rust SDK's
//! helpers on top of it (`dray_client::outbox::enqueue` for tokio-postgres, `enqueue_sqlx`). Each test gets a fresh database; the store
//! runs on the database's clock (`TimeSource::Database`), as the function does.

mod common;

use std::time::Duration;

use dray_core::{HistoryKind, JobId, JobState, Limits, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{JobInsert, JobLease, Store};
use dray_store_postgres::{PostgresConfig, PostgresStore, TimeSource};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use common::TestDb;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn store(db: &TestDb) -> PostgresStore {
    let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
    PostgresStore::connect(config).await.unwrap()
}

async fn db_now(client: &tokio_postgres::Client) -> Timestamp {
    let row = client.query_one("SELECT floor(extract(epoch FROM now()) * 1000)::bigint", &[]).await.unwrap();
    Timestamp(row.get(0))
}

fn lease(queue: &str) -> JobLease {
    JobLease {
        now: Timestamp(0),
        queues: vec![QueueName::new(queue).unwrap()],
        count_max: 10,
        worker: WorkerId::new("w").unwrap(),
        lease_ms: None,
    }
}

/// The single value of a `simple_query` that returned one row.
fn single(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
        _ => None,
    })?
}

/// Calls the function on `client` (autocommit), answering its id or the database error.
async fn enqueue(
    client: &tokio_postgres::Client,
    queue: &str,
    payload: &str,
    options: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT dray.enqueue($1::text, $2::text::jsonb, $3::text::jsonb)", &[&queue, &payload, &options])
        .await?;
    Ok(row.get(0))
}

fn db_message(e: &tokio_postgres::Error) -> (SqlState, String) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("not a database error: {e}"));
    (db.code().clone(), db.message().to_owned())
}

/// The limits and defaults the SQL function uses are exactly the core's: one source of truth,
/// checked here (a change in `Limits` fails this test until a migration replaces the function).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_in_sql_equal_the_core() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let client = db.client().await;
    let row = client.query_one("SELECT dray.enqueue_limits()::text", &[]).await.unwrap();
    let sql: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    let core = serde_json::json!({
        "queue_name_bytes_max": Limits::QUEUE_NAME_BYTES_MAX,
        "idempotency_key_bytes_max": Limits::IDEMPOTENCY_KEY_BYTES_MAX,
        "ordering_key_bytes_max": Limits::ORDERING_KEY_BYTES_MAX,
        "tag_bytes_max": Limits::TAG_BYTES_MAX,
        "tags_per_job_max": Limits::TAGS_PER_JOB_MAX,
        "traceparent_bytes_max": Limits::TRACEPARENT_BYTES_MAX,
        "payload_bytes_max": Limits::PAYLOAD_BYTES_MAX,
        "priority_min": Limits::PRIORITY_MIN,
        "priority_max": Limits::PRIORITY_MAX,
        "lease_ms_min": Limits::LEASE_MS_MIN,
        "lease_ms_max": Limits::LEASE_MS_MAX,
        "lease_ms_default": Limits::LEASE_MS_DEFAULT,
        "attempts_max_max": Limits::ATTEMPTS_MAX_MAX,
        "attempts_max_default": Limits::ATTEMPTS_MAX_DEFAULT,
        "backoff_base_ms_default": Limits::BACKOFF_BASE_MS_DEFAULT,
        "backoff_base_ms_max": Limits::BACKOFF_BASE_MS_MAX,
        "backoff_factor_default": Limits::BACKOFF_FACTOR_DEFAULT,
        "backoff_factor_min": Limits::BACKOFF_FACTOR_MIN,
        "backoff_factor_max": Limits::BACKOFF_FACTOR_MAX,
        "backoff_cap_ms_default": Limits::BACKOFF_CAP_MS_DEFAULT,
        "backoff_cap_ms_max": Limits::BACKOFF_CAP_MS_MAX,
        "run_at_ahead_ms_max": Limits::RUN_AT_AHEAD_MS_MAX,
        "idempotency_window_ms_default": Limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
        "idempotency_window_ms_max": Limits::IDEMPOTENCY_WINDOW_MS_MAX,
        "retention_ms_default": Limits::RETENTION_MS_DEFAULT,
        "retention_dead_ms_default": Limits::RETENTION_DEAD_MS_DEFAULT,
    });
    let (sql, core) = (sql.as_object().unwrap(), core.as_object().unwrap());
    assert_eq!(sql.keys().collect::<Vec<_>>(), core.keys().collect::<Vec<_>>(), "the same names");
    for (name, want) in core {
        let got = &sql[name];
        assert_eq!(got.as_f64(), want.as_f64(), "{name}: SQL has {got}, dray_core::Limits has {want}");
    }
    // The queue a first job creates gets the store's defaults.
    let defaults = dray_store::QueueConfig::new(QueueName::new("q").unwrap());
    assert_eq!(defaults.retry.attempts_max, Limits::ATTEMPTS_MAX_DEFAULT);
    assert_eq!(defaults.lease_ms, Limits::LEASE_MS_DEFAULT);
}

/// An application's own transaction in plain SQL (as any language would send it): the job and
/// the order commit together, and the store then sees exactly what its own insert would write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sql_commit_makes_the_job_visible() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    app.batch_execute("CREATE TABLE app_orders (id bigint PRIMARY KEY, total bigint NOT NULL)").await.unwrap();

    let before = db_now(&app).await;
    let script = format!(
        "BEGIN;
         INSERT INTO app_orders (id, total) VALUES (42, 990);
         SELECT dray.enqueue('emails', '{{\"order\": 42}}', '{{\"priority\": 5, \"tags\": [\"receipt\", \"eu\"],
             \"traceparent\": \"{TRACEPARENT}\", \"ordering_key\": \"customer-7\", \"lease_ms\": 60000,
             \"attempts_max\": 3, \"backoff\": {{\"base_ms\": 500, \"factor\": 3, \"cap_ms\": 10000}}}}');
         COMMIT;"
    );
    let messages = app.simple_query(&script).await.unwrap();
    let after = db_now(&app).await;
    let id: u64 = single(&messages).unwrap().parse().unwrap();

    let job = store.job_get(JobId(id)).await.unwrap().expect("visible after commit");
    assert_eq!(job.queue.as_str(), "emails");
    assert_eq!(job.payload.as_bytes(), br#"{"order": 42}"#, "stored as the jsonb's text");
    assert_eq!(job.state(), JobState::Available);
    assert_eq!(job.priority, 5);
    assert_eq!(job.version, 1);
    assert_eq!(job.retry.attempts_max, 3);
    assert_eq!((job.retry.backoff.base_ms, job.retry.backoff.factor, job.retry.backoff.cap_ms), (500, 3.0, 10_000));
    assert_eq!(job.lease_ms, 60_000);
    assert_eq!(job.tags.iter().map(|t| &**t).collect::<Vec<_>>(), ["receipt", "eu"]);
    assert_eq!(job.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(job.ordering_key.as_deref(), Some("customer-7"));
    assert!(before <= job.created_at && job.created_at <= after);
    assert_eq!(job.status.run_at, job.created_at);
    assert_eq!(job.history.len(), 1);
    let entry = &job.history[0];
    assert_eq!(
        (entry.kind, entry.state, entry.attempt, entry.at, entry.run_at),
        (HistoryKind::Enqueued, JobState::Available, 0, job.created_at, None)
    );

    let orders = app.query_one("SELECT count(*) FROM app_orders", &[]).await.unwrap();
    assert_eq!(orders.get::<_, i64>(0), 1);

    // The queue was created with the store's defaults, and the job leases like any other.
    let stats = store.queue_stats(&QueueName::new("emails").unwrap()).await.unwrap();
    assert_eq!(stats.config, dray_store::QueueConfig::new(QueueName::new("emails").unwrap()));
    let leased = store.job_lease(lease("emails")).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id, leased[0].attempt, leased[0].attempts_max), (JobId(id), 1, 3));
    assert_eq!(leased[0].payload.as_bytes(), br#"{"order": 42}"#);

    // Defaults come from the queue's policy (here: a configured queue).
    let id2 = enqueue(&app, "emails", "[1, 2]", "{}").await.unwrap();
    let job2 = store.job_get(JobId(id2 as u64)).await.unwrap().unwrap();
    assert_eq!((job2.retry, job2.lease_ms, job2.priority), (stats.config.retry, stats.config.lease_ms, 0));
    assert!(job2.id.0 > id, "ids keep increasing");
}

/// A rollback leaves nothing: no job, no history, no queue, no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_leaves_no_job() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    let messages = app
        .simple_query("BEGIN; SELECT dray.enqueue('rolled', '{}', '{\"idempotency_key\": \"k\"}'); ROLLBACK;")
        .await
        .unwrap();
    let id: u64 = single(&messages).unwrap().parse().unwrap();
    assert!(store.job_get(JobId(id)).await.unwrap().is_none());
    for table in ["jobs", "job_history", "queues", "idempotency"] {
        let n: i64 = app.query_one(&format!("SELECT count(*) FROM dray.{table}"), &[]).await.unwrap().get(0);
        assert_eq!(n, 0, "{table}");
    }
    assert!(store.job_lease(lease("rolled")).await.unwrap().is_empty());
    // The key is free again.
    let again = enqueue(&app, "rolled", "{}", r#"{"idempotency_key": "k"}"#).await.unwrap();
    assert_ne!(again as u64, id);
}

/// Same key and payload: the first job's id, nothing new. Same key, another payload: an error
/// with SQLSTATE 23505 naming the key and the job. The store's own insert agrees with both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_behave_as_in_the_store() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    let options = r#"{"idempotency_key": "order-42"}"#;
    let first = enqueue(&app, "q", r#"{"a": 1}"#, options).await.unwrap();
    let again = enqueue(&app, "q", r#"{ "a" : 1 }"#, options).await.unwrap();
    assert_eq!(first, again, "the same jsonb is the same payload");
    let n: i64 = app.query_one("SELECT count(*) FROM dray.jobs", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    let err = enqueue(&app, "q", r#"{"a": 2}"#, options).await.unwrap_err();
    let (code, message) = db_message(&err);
    assert_eq!(code, SqlState::UNIQUE_VIOLATION);
    assert_eq!(
        message,
        format!(
            r#"dray.enqueue: idempotency_key "order-42" is already used in queue "q" by job {first} with another payload"#
        )
    );
    // Another queue is another key space.
    assert_ne!(enqueue(&app, "other", r#"{"a": 2}"#, options).await.unwrap(), first);

    // The store sees the function's key: the same JSON value is a duplicate however it is
    // spelled (issue #18: the spacing of jsonb's text made every HTTP retry a conflict), another
    // value a conflict.
    let new = |body: &str| {
        let mut job = NewJob::new(QueueName::new("q").unwrap(), Payload::new(body.as_bytes().to_vec()));
        job.idempotency_key = Some("order-42".into());
        JobInsert { now: Timestamp(0), jobs: vec![job] }
    };
    let dup = store.job_insert(new(r#"{"a": 1}"#)).await.unwrap();
    assert_eq!((dup[0].id, dup[0].duplicate), (JobId(first as u64), true));
    let dup = store.job_insert(new(r#"{"a":1.0}"#)).await.unwrap();
    assert_eq!((dup[0].id, dup[0].duplicate), (JobId(first as u64), true));
    let conflict = store.job_insert(new(r#"{"a":2}"#)).await.unwrap_err();
    assert!(
        matches!(conflict, dray_store::Error::IdempotencyConflict { existing, .. } if existing == JobId(first as u64))
    );

    // And the function sees the store's keys.
    // Stored compact, sent with jsonb's spacing: the same value.
    let mut job = NewJob::new(QueueName::new("q").unwrap(), Payload::new(br#"{"b":true}"#.to_vec()));
    job.idempotency_key = Some("from-store".into());
    let stored = store.job_insert(JobInsert { now: Timestamp(0), jobs: vec![job] }).await.unwrap()[0].id;
    let via_sql = enqueue(&app, "q", r#"{"b": true}"#, r#"{"idempotency_key": "from-store"}"#).await.unwrap();
    assert_eq!(via_sql as u64, stored.0);

    // A number no double holds is refused, as over HTTP (issue #18).
    let err = enqueue(&app, "q", r#"{"n": [1e400]}"#, "{}").await.unwrap_err();
    let (code, message) = db_message(&err);
    assert_eq!(code, SqlState::INVALID_PARAMETER_VALUE, "{message}");
    assert!(message.contains("payload") && message.contains("64-bit"), "{message}");

    // Past its window the key is taken over by a new job.
    app.execute("UPDATE dray.idempotency SET expires_at = now() - interval '1 second' WHERE key = 'order-42'", &[])
        .await
        .unwrap();
    let fresh = enqueue(&app, "q", r#"{"a": 3}"#, options).await.unwrap();
    assert!(fresh > first);
    let owner: i64 = app
        .query_one("SELECT job_id FROM dray.idempotency WHERE queue = 'q' AND key = 'order-42'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, fresh);

    // The window follows `dray.idempotency_window_ms` when set (to match the server's setting).
    app.batch_execute("SET dray.idempotency_window_ms = '5000'").await.unwrap();
    let short = enqueue(&app, "q", "{}", r#"{"idempotency_key": "short"}"#).await.unwrap();
    let row = app
        .query_one(
            "SELECT (extract(epoch FROM j.idempotency_expires_at - j.created_at) * 1000)::bigint,
                    (extract(epoch FROM i.expires_at - j.created_at) * 1000)::bigint
             FROM dray.jobs j JOIN dray.idempotency i ON i.job_id = j.id WHERE j.id = $1",
            &[&short],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (5_000, 5_000));
}

/// Two transactions with the same key at once: the second waits for the first, then answers the
/// duplicate (same payload) after the first commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keys_wait_and_agree() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let a = db.client().await;
    let b = db.client().await;
    a.batch_execute("BEGIN").await.unwrap();
    let first = enqueue(&a, "q", "1", r#"{"idempotency_key": "k"}"#).await.unwrap();
    let waiting = tokio::spawn(async move {
        b.batch_execute("BEGIN").await.unwrap();
        let id = enqueue(&b, "q", "1", r#"{"idempotency_key": "k"}"#).await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        id
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second claim waits for the first transaction");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), first);
    let n: i64 = a.query_one("SELECT count(*) FROM dray.jobs", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

/// Every option is checked against the core's limits; the message names the field and the limit,
/// with SQLSTATE 22023.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_name_the_field_and_the_limit() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let app = db.client().await;
    let cases: &[(&str, &str, &str)] = &[
        ("q", r#"{"priority": 5000}"#, "dray.enqueue: priority is 5000; allowed is -1000 to 1000"),
        ("q", r#"{"priority": 1.5}"#, "dray.enqueue: priority must be a whole number; got 1.5"),
        ("q", r#"{"priority": "high"}"#, r#"dray.enqueue: priority must be a number; got "high""#),
        ("q", r#"{"lease_ms": 10}"#, "dray.enqueue: lease_ms is 10; allowed is 1000 to 43200000"),
        ("q", r#"{"attempts_max": 0}"#, "dray.enqueue: attempts_max is 0; allowed is 1 to 1000"),
        ("q", r#"{"delay_ms": -1}"#, "dray.enqueue: delay_ms is -1; allowed is 0 to 31622400000"),
        (
            "q",
            r#"{"delay_ms": 1, "run_at": "2001-01-01T00:00:00Z"}"#,
            "dray.enqueue: delay_ms cannot be combined with run_at",
        ),
        (
            "q",
            r#"{"run_at": "tomorrow"}"#,
            r#"dray.enqueue: run_at "tomorrow" is not an RFC 3339 timestamp (like 2026-11-21T09:00:00Z)"#,
        ),
        ("q", r#"{"run_at": "2999-01-01T00:00:00Z"}"#, "dray.enqueue: run_at is "),
        (
            "q",
            r#"{"backoff": {"base_ms": 10, "factor": 20, "cap_ms": 100}}"#,
            "dray.enqueue: backoff.factor is 20; allowed is 1.0 to 10.0",
        ),
        (
            "q",
            r#"{"backoff": {"base_ms": 10, "factor": 2, "cap_ms": 5}}"#,
            "dray.enqueue: backoff.cap_ms is 5; allowed is 10 to 2592000000",
        ),
        ("q", r#"{"backoff": {"base_ms": 10}}"#, "dray.enqueue: backoff needs all of base_ms, factor and cap_ms"),
        ("q", r#"{"idempotency_key": ""}"#, "dray.enqueue: idempotency_key must not be empty"),
        (
            "q",
            r#"{"idempotency_key": "a\u0001b"}"#,
            "dray.enqueue: idempotency_key must not contain control characters",
        ),
        (
            "q",
            r#"{"tags": ["ok", "not ok"]}"#,
            "dray.enqueue: tags contains ' '; allowed are ASCII letters, digits and _ - . :",
        ),
        (
            "q",
            r#"{"tags": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]}"#,
            "dray.enqueue: tags has 17 tags; the limit is 16",
        ),
        (
            "q",
            r#"{"traceparent": "00-abc"}"#,
            "dray.enqueue: traceparent is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)",
        ),
        (
            "q",
            r#"{"colour": "red", "priority": 1}"#,
            "dray.enqueue: options has unknown keys 'colour'; allowed are priority, run_at, delay_ms, attempts_max, backoff, lease_ms, idempotency_key, ordering_key, group_key, tags, traceparent",
        ),
        ("q", "[1]", "dray.enqueue: options must be a JSON object; got [1]"),
        ("bad queue", "{}", "dray.enqueue: queue contains ' '; allowed are ASCII letters, digits and _ - . :"),
        ("", "{}", "dray.enqueue: queue must not be empty"),
    ];
    for (queue, options, want) in cases {
        let err = enqueue(&app, queue, "{}", options).await.unwrap_err();
        let (code, message) = db_message(&err);
        assert_eq!(code, SqlState::INVALID_PARAMETER_VALUE, "{options}: {message}");
        assert!(message.starts_with(want), "{options}: got {message:?}, want {want:?}");
    }
    let long = format!("\"{}\"", "x".repeat(Limits::PAYLOAD_BYTES_MAX));
    let err = enqueue(&app, "q", &long, "{}").await.unwrap_err();
    assert_eq!(db_message(&err).1, format!("dray.enqueue: payload is {} bytes; the limit is 1048576", long.len()));
    let n: i64 = app.query_one("SELECT count(*) FROM dray.jobs", &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "nothing was written");
}

/// Scheduling: `delay_ms` and `run_at` on the transaction's clock, whole milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_and_run_at_schedule_the_job() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let app = db.client().await;
    let delayed = enqueue(&app, "q", "{}", r#"{"delay_ms": 60000}"#).await.unwrap();
    let job = store.job_get(JobId(delayed as u64)).await.unwrap().unwrap();
    assert_eq!(job.state(), JobState::Scheduled);
    assert_eq!(job.status.run_at, job.created_at.add_ms(60_000));
    assert_eq!(job.history[0].run_at, Some(job.status.run_at));

    // Thirty days ahead, written with a +01:00 offset and sub-millisecond digits.
    let row = app
        .query_one(
            "SELECT to_char((date_trunc('second', now()) + interval '30 days') AT TIME ZONE 'UTC' + interval '1 hour',
                            'YYYY-MM-DD\"T\"HH24:MI:SS') || '.1239+01:00',
                    (extract(epoch FROM date_trunc('second', now()) + interval '30 days') * 1000)::bigint + 123",
            &[],
        )
        .await
        .unwrap();
    let (text, want): (String, i64) = (row.get(0), row.get(1));
    let at = enqueue(&app, "q", "{}", &format!(r#"{{"run_at": "{text}"}}"#)).await.unwrap();
    let job = store.job_get(JobId(at as u64)).await.unwrap().unwrap();
    assert_eq!(job.status.run_at, Timestamp(want), "{text}: UTC, truncated to the millisecond");

    let past = enqueue(&app, "q", "{}", r#"{"run_at": "2001-01-01T00:00:00Z"}"#).await.unwrap();
    let job = store.job_get(JobId(past as u64)).await.unwrap().unwrap();
    assert_eq!(job.state(), JobState::Available);
    assert!(store.job_lease(lease("q")).await.unwrap().iter().any(|l| l.id == job.id));
}

/// A listener on the store's channel hears about the job at commit, not before, and never after
/// a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_arrives_only_at_commit() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    assert_eq!(store.notify_channel(), "dray_jobs");
    let (listener, mut connection) = common::connect_raw(&db.url).await.unwrap();
    let (send, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = send.send((n.channel().to_owned(), n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    listener.batch_execute("LISTEN dray_jobs").await.unwrap();

    let app = db.client().await;
    app.batch_execute("BEGIN").await.unwrap();
    enqueue(&app, "mail", "{}", "{}").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.try_recv().is_err(), "nothing before commit");
    app.batch_execute("COMMIT").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), heard.recv()).await.expect("notified at commit");
    assert_eq!(got, Some(("dray_jobs".to_owned(), "mail".to_owned())));

    app.simple_query("BEGIN; SELECT dray.enqueue('mail', '{}'); ROLLBACK;").await.unwrap();
    // A scheduled job makes nothing available: no notification either (as in the store).
    enqueue(&app, "later", "{}", r#"{"delay_ms": 60000}"#).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.try_recv().is_err(), "nothing after a rollback or for a scheduled job");
    drop(listener);
}

/// The Rust SDK's helper: the `Enqueue` builder, inside the application's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_helper_enqueues_in_the_callers_transaction() {
    use dray_client::{Enqueue, outbox};

    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE app_orders (id bigint PRIMARY KEY)").await.unwrap();

    let job = Enqueue::new("receipts", &serde_json::json!({"order": 7, "to": "a@b"}))
        .unwrap()
        .priority(-3)
        .lease(Duration::from_secs(90))
        .attempts_max(4)
        .idempotency_key("receipt-7")
        .tags(["t1"])
        .traceparent(TRACEPARENT);
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO app_orders (id) VALUES (7)", &[]).await.unwrap();
    let id = outbox::enqueue(&tx, "dray", &job).await.unwrap();
    assert!(store.job_get(JobId(id)).await.unwrap().is_none(), "invisible before commit");
    tx.commit().await.unwrap();

    let stored = store.job_get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(stored.payload.as_bytes(), br#"{"to": "a@b", "order": 7}"#, "jsonb's text of the payload");
    assert_eq!((stored.priority, stored.lease_ms, stored.retry.attempts_max), (-3, 90_000, 4));
    assert_eq!(stored.idempotency_key.as_deref(), Some("receipt-7"));
    assert_eq!(stored.tags.iter().map(|t| &**t).collect::<Vec<_>>(), ["t1"]);
    assert_eq!(stored.traceparent.as_deref(), Some(TRACEPARENT));

    // A retry of the same enqueue is the same job; another payload under the key is a conflict.
    assert_eq!(outbox::enqueue(&app, "dray", &job).await.unwrap(), id);
    let other = Enqueue::new("receipts", &serde_json::json!({"order": 8})).unwrap().idempotency_key("receipt-7");
    let err = outbox::enqueue(&app, "dray", &other).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");

    // Invalid options: the transaction is refused and rolls back with the application's row.
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO app_orders (id) VALUES (8)", &[]).await.unwrap();
    let bad = Enqueue::new("receipts", &1).unwrap().priority(5000);
    let err = outbox::enqueue(&tx, "dray", &bad).await.unwrap_err();
    assert!(err.is_invalid() && !err.is_conflict(), "{err}");
    assert_eq!(err.message(), "dray.enqueue: priority is 5000; allowed is -1000 to 1000");
    drop(tx);
    let n: i64 = app.query_one("SELECT count(*) FROM app_orders", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    // A bad schema name never reaches the database.
    let err = outbox::enqueue(&app, "dray; DROP TABLE app_orders", &job).await.unwrap_err();
    assert!(matches!(err, outbox::Error::Invalid { ref field, .. } if field == "schema"), "{err}");

    // Rolled back through the helper: no job.
    let tx = app.transaction().await.unwrap();
    let gone = outbox::enqueue(&tx, "dray", &Enqueue::new("receipts", &2).unwrap()).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(store.job_get(JobId(gone)).await.unwrap().is_none());
    let leased = store.job_lease(lease("receipts")).await.unwrap();
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![JobId(id)]);
}

/// The SDK's sqlx helper: the same call (built by the same code) on an sqlx transaction; commit
/// makes the job visible with everything the builder set, rollback leaves nothing, and errors
/// read the same as with tokio-postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_helper_commits_and_rolls_back_with_the_callers_transaction() {
    use dray_client::{Enqueue, outbox};
    use sqlx::Connection;

    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut app = sqlx::PgConnection::connect(&db.url).await.expect("sqlx connects");
    sqlx::query("CREATE TABLE app_orders (id bigint PRIMARY KEY)").execute(&mut app).await.unwrap();

    let job = Enqueue::new("receipts", &serde_json::json!({"order": 7}))
        .unwrap()
        .priority(2)
        .delay(Duration::from_secs(60))
        .idempotency_key("sqlx-7");
    let mut tx = app.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (7)").execute(&mut *tx).await.unwrap();
    let id = outbox::enqueue_sqlx(&mut tx, "dray", &job).await.unwrap();
    assert!(store.job_get(JobId(id)).await.unwrap().is_none(), "invisible before commit");
    tx.commit().await.unwrap();
    let stored = store.job_get(JobId(id)).await.unwrap().expect("visible after commit");
    assert_eq!(stored.payload.as_bytes(), br#"{"order": 7}"#);
    assert_eq!(stored.priority, 2);
    assert_eq!(stored.state(), JobState::Scheduled, "delay_ms reached the function");
    assert_eq!(stored.idempotency_key.as_deref(), Some("sqlx-7"));
    // The same enqueue again (autocommit) is the same job.
    assert_eq!(outbox::enqueue_sqlx(&mut app, "dray", &job).await.unwrap(), id);

    // Rolled back: neither the application's row nor the job.
    let mut tx = app.begin().await.unwrap();
    sqlx::query("INSERT INTO app_orders (id) VALUES (8)").execute(&mut *tx).await.unwrap();
    let gone = outbox::enqueue_sqlx(&mut tx, "dray", &Enqueue::new("receipts", &8).unwrap()).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(store.job_get(JobId(gone)).await.unwrap().is_none(), "no job after a rollback");
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM app_orders").fetch_one(&mut app).await.unwrap();
    assert_eq!(orders, 1);

    // The function's refusals, through sqlx's error type.
    let other = Enqueue::new("receipts", &9).unwrap().idempotency_key("sqlx-7");
    let err = outbox::enqueue_sqlx(&mut app, "dray", &other).await.unwrap_err();
    assert!(matches!(err, outbox::Error::Sqlx(_)) && err.is_conflict(), "{err}");
    let bad = Enqueue::new("receipts", &1).unwrap().priority(5000);
    let err = outbox::enqueue_sqlx(&mut app, "dray", &bad).await.unwrap_err();
    assert!(err.is_invalid() && !err.is_conflict(), "{err}");
    assert_eq!(err.message(), "dray.enqueue: priority is 5000; allowed is -1000 to 1000");
    let err = outbox::enqueue_sqlx(&mut app, "Dray", &job).await.unwrap_err();
    assert!(matches!(err, outbox::Error::Invalid { ref field, .. } if field == "schema"), "{err}");
}

/// Both helpers send exactly the call [`dray_client::outbox::EnqueueCall`] builds.
#[test]
fn one_call_for_every_driver() {
    use dray_client::{Enqueue, outbox::EnqueueCall};
    let job = Enqueue::new("q", &serde_json::json!([1])).unwrap().priority(1);
    let call = EnqueueCall::new("app_dray", &job).unwrap();
    assert_eq!(call.sql, "SELECT app_dray.enqueue($1::text, $2::text::jsonb, $3::text::jsonb)");
    assert_eq!((call.queue, call.payload, call.options.as_str()), ("q", "[1]", r#"{"priority":1}"#));
}
