//! What only the PostgreSQL store has to prove, beyond the shared conformance suite: migrations
//! under concurrent starts, deadlines on the database's clock, durability settings that do not
//! depend on server defaults, prompt `Unavailable` answers when the database is out of reach, and
//! the row locking that lets several stores share one database.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dray_core::{JobId, JobState, NewJob, Payload, QueueName, Timestamp, WorkerId};
use dray_store::{Error, JobCancel, JobInsert, JobLease, LeaseExtend, Maintain, Store};
use dray_store_postgres::{ConnectError, PostgresConfig, PostgresStore, TimeSource, migrate, schema_version_latest};

use common::TestDb;

fn job(queue: &str, body: &str) -> NewJob {
    NewJob::new(QueueName::new(queue).unwrap(), Payload::new(body.as_bytes().to_vec()))
}

fn lease_params(now: Timestamp, queue: &str, count_max: usize) -> JobLease {
    JobLease {
        now,
        queues: vec![QueueName::new(queue).unwrap()],
        count_max,
        worker: WorkerId::new("w").unwrap(),
        lease_ms: None,
    }
}

/// The database's `now()` in whole milliseconds, read on its own connection.
async fn db_now(client: &tokio_postgres::Client) -> Timestamp {
    let row = client.query_one("SELECT floor(extract(epoch FROM now()) * 1000)::bigint", &[]).await.unwrap();
    Timestamp(row.get(0))
}

/// Several nodes starting at once on an empty database: each connect migrates or finds the work
/// done, every migration is recorded exactly once, and running it again applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_concurrent_and_repeated_are_safe() {
    let db = TestDb::create().await;
    let config = db.config();
    let (a, b, c, m) = tokio::join!(
        PostgresStore::connect(config.clone()),
        PostgresStore::connect(config.clone()),
        PostgresStore::connect(config.clone()),
        migrate(&config),
    );
    for (i, r) in [a.err(), b.err(), c.err()].into_iter().enumerate() {
        assert!(r.is_none(), "connect {i} failed: {r:?}");
    }
    assert_eq!(m.unwrap().version, schema_version_latest());

    let again = migrate(&config).await.unwrap();
    assert_eq!((again.applied, again.version), (vec![], schema_version_latest()));
    let client = db.client().await;
    let rows = client
        .query("SELECT version, count(*) FROM dray.migrations GROUP BY version ORDER BY version", &[])
        .await
        .unwrap();
    let recorded: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(i32, i64)> = (1..=schema_version_latest()).map(|v| (v, 1)).collect();
    assert_eq!(recorded, want, "each migration recorded exactly once");

    // Another schema in the same database is another store.
    let other = PostgresConfig { schema: "dray_other".into(), ..config.clone() };
    let store = PostgresStore::connect(other).await.unwrap();
    let q = QueueName::new("q").unwrap();
    assert!(matches!(store.queue_stats(&q).await, Err(Error::QueueNotFound(_))));
}

/// A database migrated by a newer Dray is refused, not migrated backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_newer_than_the_binary_is_refused() {
    let db = TestDb::create().await;
    migrate(&db.config()).await.unwrap();
    let client = db.client().await;
    client.execute("INSERT INTO dray.migrations (version, name) VALUES (9999, 'from the future')", &[]).await.unwrap();
    match PostgresStore::connect(db.config()).await {
        Err(ConnectError::SchemaTooNew { found: 9999, known, .. }) => assert_eq!(known, schema_version_latest()),
        other => panic!("expected SchemaTooNew, got {:?}", other.map(|_| "a store")),
    }
}

/// In `Database` mode every deadline and comparison uses the database's `now()`: a wildly wrong
/// `params.now` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_time_mode_uses_the_database_clock() {
    let db = TestDb::create().await;
    let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
    let store = PostgresStore::connect(config).await.unwrap();
    let client = db.client().await;
    let past = Timestamp(631_152_000_000); // 1990-01-01
    let future = Timestamp(4_102_444_800_000); // 2100-01-01

    let before = db_now(&client).await;
    let inserted = store
        .job_insert(JobInsert { now: past, jobs: vec![NewJob { lease_ms: Some(60_000), ..job("q", "now") }] })
        .await
        .unwrap();
    let after = db_now(&client).await;
    let id = inserted[0].id;
    assert_eq!(inserted[0].state, JobState::Available);
    let created = store.job_get(id).await.unwrap().unwrap().created_at;
    assert!(before <= created && created <= after, "created_at {created} outside the database's [{before}, {after}]");

    // Due in an hour by the database's clock: a far-future params.now does not make it due.
    let scheduled = store
        .job_insert(JobInsert { now: future, jobs: vec![NewJob { delay_ms: Some(3_600_000), ..job("q", "later") }] })
        .await
        .unwrap()[0]
        .id;
    let run_at = store.job_get(scheduled).await.unwrap().unwrap().status.run_at;
    assert!(run_at.ms_since(before) >= 3_600_000 && run_at <= db_now(&client).await.add_ms(3_600_000));

    let before = db_now(&client).await;
    let leased = store.job_lease(lease_params(future, "q", 10)).await.unwrap();
    let after = db_now(&client).await;
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![id], "the scheduled job is not due");
    let deadline = leased[0].deadline;
    assert!(
        before.add_ms(60_000) <= deadline && deadline <= after.add_ms(60_000),
        "deadline {deadline} is not the database's now + 60 s (now was in [{before}, {after}])"
    );

    // The lease is live by the database's clock, whatever the parameters say.
    assert_eq!(store.leases_expire(Maintain { now: future, limit: 100 }).await.unwrap().len(), 0);
    assert_eq!(store.jobs_promote(Maintain { now: future, limit: 100 }).await.unwrap(), 0);
    let before = db_now(&client).await;
    let extended = store
        .lease_extend(LeaseExtend {
            now: past,
            job: id,
            lease: leased[0].lease,
            extend_ms: Some(5_000),
            progress: None,
            checkpoint: None,
        })
        .await
        .unwrap();
    let after = db_now(&client).await;
    assert!(
        before.add_ms(5_000) <= extended.deadline && extended.deadline <= after.add_ms(5_000),
        "heartbeat deadline {} is not the database's now + 5 s (now was in [{before}, {after}])",
        extended.deadline
    );
    assert_eq!(store.job_get(id).await.unwrap().unwrap().status.lease.unwrap().deadline, extended.deadline);
}

/// "Accepted means durable" does not depend on server defaults: a database configured with
/// `synchronous_commit = off` still gets synchronous commits from the store's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commit_synchronously_whatever_the_defaults() {
    let db = TestDb::create().await;
    db.admin().await.batch_execute(&format!("ALTER DATABASE {} SET synchronous_commit = off", db.name)).await.unwrap();
    let raw = db.client().await;
    let default: String = raw.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    assert_eq!(default, "off", "the test's premise: the database default is off");

    let config = PostgresConfig { statement_timeout_ms: 12_345, ..db.config() };
    let store = PostgresStore::connect(config).await.unwrap();
    let settings = store.session_settings().await.unwrap();
    let get = |name: &str| settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(get("synchronous_commit"), Some("on"));
    assert_eq!(get("statement_timeout"), Some("12345ms"));
}

/// Nothing listens on the port: `Unavailable` at once, not a hang and not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut config = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/test"));
    config.connect_timeout_ms = 2_000;
    let started = Instant::now();
    let r = PostgresStore::connect(config).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(ConnectError::Unavailable { .. })), "{:?}", r.err());
    assert!(took < Duration::from_millis(2_000), "took {took:?}, more than the connect timeout");
    let as_store: Error = r.err().unwrap().into();
    assert!(matches!(as_store, Error::Unavailable { .. }));
}

/// A server that accepts the connection and never answers: `Unavailable` within the connect
/// timeout (which bounds the startup handshake too, not just the TCP connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_silent_server_is_unavailable_within_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/test"));
    config.connect_timeout_ms = 500;
    let started = Instant::now();
    let r = PostgresStore::connect(config).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(ConnectError::Unavailable { .. })), "{:?}", r.err());
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(2_500), "took {took:?}");
    silent.abort();
}

/// When the database goes away under a running store, every operation answers `Unavailable`
/// promptly; when it comes back, the store works again without a restart and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_going_away_is_unavailable_then_recovers() {
    let db = TestDb::create().await;
    let config = PostgresConfig { connect_timeout_ms: 1_000, ..db.config() };
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Timestamp(1_700_000_000_000);
    let id = store.job_insert(JobInsert { now, jobs: vec![job("q", "kept")] }).await.unwrap()[0].id;

    let admin = db.admin().await;
    admin.batch_execute(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", db.name)).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", &[&db.name])
        .await
        .unwrap();

    let q = QueueName::new("q").unwrap();
    for round in 0..3 {
        let started = Instant::now();
        let results: Vec<(&str, Result<(), Error>)> = vec![
            ("insert", store.job_insert(JobInsert { now, jobs: vec![job("q", "lost?")] }).await.map(drop)),
            ("lease", store.job_lease(lease_params(now, "q", 1)).await.map(drop)),
            ("get", store.job_get(id).await.map(drop)),
            ("cancel", store.job_cancel(JobCancel { now, job: id }).await.map(drop)),
            ("stats", store.queue_stats(&q).await.map(drop)),
            ("prune", store.jobs_prune(Maintain { now, limit: 10 }).await.map(drop)),
        ];
        for (op, r) in results {
            assert!(matches!(r, Err(Error::Unavailable { .. })), "round {round}: {op} gave {r:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(6), "round {round} took {:?}", started.elapsed());
    }

    admin.batch_execute(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", db.name)).await.unwrap();
    let job = store.job_get(id).await.unwrap().expect("the accepted job is still there");
    assert_eq!(job.state(), JobState::Available);
    let leased = store.job_lease(lease_params(now, "q", 10)).await.unwrap();
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![id], "nothing was inserted while unavailable");
}

/// A statement that waits past `statement_timeout` (here on a row another session holds) fails
/// with `Unavailable` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_unavailable() {
    let db = TestDb::create().await;
    let config = PostgresConfig { statement_timeout_ms: 300, ..db.config() };
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Timestamp(1_700_000_000_000);
    let id = store.job_insert(JobInsert { now, jobs: vec![job("q", "x")] }).await.unwrap()[0].id;

    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM dray.jobs WHERE id = $1 FOR UPDATE", &[&i64::try_from(id.0).unwrap()]).await.unwrap();
    let r = store.job_cancel(JobCancel { now, job: id }).await;
    match r {
        Err(Error::Unavailable { context, .. }) => assert!(context.contains("statement timeout"), "{context}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tx.rollback().await.unwrap();
    assert_eq!(store.job_get(id).await.unwrap().unwrap().state(), JobState::Available);
    assert_eq!(store.job_cancel(JobCancel { now, job: id }).await.unwrap(), JobState::Cancelled);
}

/// Two stores on one database (two nodes) leasing concurrently: `SKIP LOCKED` hands each job to
/// exactly one of them, and every grant's fencing token is unique.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_never_share_a_job() {
    let db = TestDb::create().await;
    let a = std::sync::Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let b = std::sync::Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let now = Timestamp(1_700_000_000_000);
    let n = 400;
    a.job_insert(JobInsert { now, jobs: (0..n).map(|i| job("q", &i.to_string())).collect() }).await.unwrap();

    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone(), a, b] {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let leased = store.job_lease(lease_params(now, "q", 7)).await.unwrap();
                if leased.is_empty() {
                    return got;
                }
                got.extend(leased.into_iter().map(|l| (l.id, l.token)));
            }
        }));
    }
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for t in tasks {
        for (id, token) in t.await.unwrap() {
            assert!(ids.insert(id), "job {id} leased twice");
            assert!(tokens.insert(token), "token {token} granted twice");
        }
    }
    assert_eq!(ids.len(), n, "every job leased once");
}

/// Two stores leasing keyed jobs concurrently: no two jobs of one ordering key ever run at once,
/// and each key's jobs are leased in id order (strict FIFO per key holds across nodes; guards the
/// per-key advisory lock and re-check of the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_keep_one_job_per_ordering_key() {
    use dray_store::{Ack, AckOutcome, JobAck};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let db = TestDb::create().await;
    let a = Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let b = Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let now = Timestamp(1_700_000_000_000);
    let keys = 4;
    let n = 120;
    let jobs = (0..n)
        .map(|i| NewJob { ordering_key: Some(format!("k{}", i % keys).into()), ..job("q", &i.to_string()) })
        .collect();
    a.job_insert(JobInsert { now, jobs }).await.unwrap();

    // Per key: the job running now (by what the tasks know) and the last id leased.
    type Seen = HashMap<String, (Option<JobId>, JobId)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mut tasks = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone(), a, b] {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut idle = 0;
            while idle < 50 {
                let leased = store.job_lease(lease_params(now, "q", 3)).await.unwrap();
                if leased.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for l in &leased {
                    let key = store.job_get(l.id).await.unwrap().unwrap().ordering_key.unwrap().to_string();
                    let mut seen = seen.lock().unwrap();
                    let entry = seen.entry(key.clone()).or_insert((None, JobId(0)));
                    assert_eq!(entry.0, None, "job {} of key {key} leased while job {:?} runs", l.id, entry.0);
                    assert!(l.id > entry.1, "key {key}: job {} leased after the later job {}", l.id, entry.1);
                    *entry = (Some(l.id), l.id);
                }
                for l in leased {
                    let key = store.job_get(l.id).await.unwrap().unwrap().ordering_key.unwrap().to_string();
                    // Forget it before completing it: once complete, the next job may be leased.
                    seen.lock().unwrap().get_mut(&key).unwrap().0 = None;
                    let ack = Ack { job: l.id, lease: l.lease, outcome: AckOutcome::Complete { result: None } };
                    store.job_ack(JobAck { now, acks: vec![ack] }).await.unwrap().pop().unwrap().unwrap();
                    done += 1;
                }
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, n, "every job ran once");
}

/// Concurrent inserts with one idempotency key, from two stores: exactly one job, and every
/// caller gets its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_with_one_key_make_one_job() {
    let db = TestDb::create().await;
    let a = std::sync::Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let b = std::sync::Arc::new(PostgresStore::connect(db.config()).await.unwrap());
    let now = Timestamp(1_700_000_000_000);
    for round in 0..5 {
        let key = format!("order-{round}");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let new = NewJob { idempotency_key: Some(key.as_str().into()), ..job("q", "same payload") };
            tasks.push(tokio::spawn(async move { store.job_insert(JobInsert { now, jobs: vec![new] }).await }));
        }
        let mut ids = HashSet::new();
        let mut fresh = 0;
        for t in tasks {
            let inserted = t.await.unwrap().unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            ids.insert(inserted[0].id);
            fresh += usize::from(!inserted[0].duplicate);
        }
        assert_eq!((ids.len(), fresh), (1, 1), "round {round}: one job, created once");
    }
    let stats = a.queue_stats(&QueueName::new("q").unwrap()).await.unwrap();
    assert_eq!(stats.count(JobState::Available), 5);
    let unknown = JobId(u64::MAX);
    assert_eq!(a.job_get(unknown).await.unwrap(), None, "an id beyond bigint names no job");
}

/// Inserts and promotions that make jobs available notify `<schema>_jobs` with the queue's name
/// (at commit); a scheduled job does not, until it is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_jobs_are_notified() {
    let db = TestDb::create().await;
    let store = PostgresStore::connect(db.config()).await.unwrap();
    assert_eq!(store.notify_channel(), "dray_jobs");
    let (listener, mut connection) = common::connect_raw(&db.url).await.unwrap();
    let (sender, mut notified) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = sender.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN dray_jobs").await.unwrap();
    let mut next = async || tokio::time::timeout(Duration::from_secs(10), notified.recv()).await.unwrap().unwrap();

    let now = Timestamp(1_700_000_000_000);
    let later = NewJob { delay_ms: Some(1_000), ..job("scheduled", "x") };
    store.job_insert(JobInsert { now, jobs: vec![later] }).await.unwrap();
    store.job_insert(JobInsert { now, jobs: vec![job("ready", "x"), job("ready", "y")] }).await.unwrap();
    // Notifications arrive in commit order: the scheduled job's insert says when a job waits for
    // its time (nodes time their own wake-ups by it), not that one is available.
    assert_eq!(next().await, ("dray_jobs".to_owned(), "due scheduled".to_owned()));
    assert_eq!(next().await, ("dray_jobs".to_owned(), "ready".to_owned()));
    assert_eq!(store.jobs_promote(Maintain { now: now.add_ms(1_000), limit: 10 }).await.unwrap(), 1);
    assert_eq!(next().await, ("dray_jobs".to_owned(), "scheduled".to_owned()));
}

/// A TCP proxy to the test server that can stop forwarding, as a network partition does: no
/// error, no reply, the bytes just stop.
struct Proxy {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { return };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pump(client_read, server_write, watch.clone()));
                tokio::spawn(Self::pump(server_read, client_write, watch.clone()));
            }
        });
        Proxy { port, frozen, task }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // While frozen, hold what was read: neither side hears anything.
            while *frozen.borrow_and_update() {
                if frozen.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The database stops answering mid-operation (a partition): the call fails with `Unavailable`
/// within the call timeout instead of hanging, its connection is thrown away, new connections
/// time out too; when the network heals the store works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_that_stops_answering_is_unavailable_within_the_call_timeout() {
    let db = TestDb::create().await;
    let pg: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("this test needs a TCP server, DATABASE_URL names {other:?}"),
    };
    let proxy = Proxy::start(format!("{host}:{}", pg.get_ports().first().copied().unwrap_or(5432))).await;
    let mut url =
        format!("host=127.0.0.1 port={} dbname={} user={}", proxy.port, db.name, pg.get_user().unwrap_or("postgres"));
    if let Some(password) = pg.get_password() {
        url += &format!(" password={}", String::from_utf8_lossy(password));
    }
    let config = PostgresConfig { url, statement_timeout_ms: 500, connect_timeout_ms: 500, ..db.config() };
    let store = PostgresStore::connect(config).await.unwrap();
    let now = Timestamp(1_700_000_000_000);
    let kept = store.job_insert(JobInsert { now, jobs: vec![job("q", "before")] }).await.unwrap()[0].id;

    proxy.freeze(true);
    let started = Instant::now();
    let r = store.job_insert(JobInsert { now, jobs: vec![job("q", "during")] }).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    assert!(took >= Duration::from_millis(1_000) && took < Duration::from_millis(3_000), "took {took:?}");
    let started = Instant::now();
    let r = store.job_get(kept).await;
    assert!(matches!(r, Err(Error::Unavailable { .. })), "a new connection cannot be made either: {r:?}");
    assert!(started.elapsed() < Duration::from_millis(3_000), "took {:?}", started.elapsed());

    proxy.freeze(false);
    assert_eq!(store.job_get(kept).await.unwrap().unwrap().state(), JobState::Available);
    let leased = store.job_lease(lease_params(now, "q", 10)).await.unwrap();
    // The frozen insert never reached its COMMIT: here the unknown outcome is "not applied".
    assert_eq!(leased.iter().map(|l| l.id).collect::<Vec<_>>(), vec![kept]);
}

#[test]
fn test_database_urls() {
    assert_eq!(common::with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
    assert_eq!(
        common::with_database("postgres://u@h:5432/test?sslmode=disable", "x"),
        "postgres://u@h:5432/x?sslmode=disable"
    );
    assert_eq!(common::with_database("postgresql://h", "x"), "postgresql://h/x");
    assert_eq!(common::with_database("host=h user=u", "x"), "host=h user=u dbname=x");
}
