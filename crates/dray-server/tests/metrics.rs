//! `/metrics` and the job log events, through the HTTP API of a real server: jobs driven through
//! every path the counters count, then a scrape parsed and checked series by series; the
//! `queue` label bound; the PostgreSQL pool gauges; and the JSON log fields, read from the
//! stderr of a real process.
//!
//! The recorder is process-wide, so each check here reads queues only its own test uses (nextest
//! also runs every test in a process of its own).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// How long a job may take to reach a state (a lease expiry takes its lease, 1 s, plus a tick).
const WAIT_MAX: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// One scrape, parsed: every sample with its labels.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Scrape {
    async fn get(addr: SocketAddr) -> Scrape {
        let reply = get(addr, "/metrics").await.expect(200);
        assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        Scrape::parse(String::from_utf8(reply.body).expect("UTF-8"))
    }

    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// The samples of `name` whose labels include `labels`.
    fn matching<'s>(&'s self, name: &'s str, labels: &'s [(&str, &str)]) -> impl Iterator<Item = &'s Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The one sample of `name` with `labels`.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}\n{}", self.text);
        found[0].value
    }

    fn has_family(&self, name: &str) -> bool {
        self.text.lines().any(|l| l == format!("# TYPE {name} gauge") || l.starts_with(&format!("# TYPE {name} ")))
    }
}

/// `name{k="v",...} value`, with the text format's escapes in label values.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name_end, has_labels) = match line.find(['{', ' ']) {
        Some(i) => (i, line.as_bytes()[i] == b'{'),
        None => return None,
    };
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if has_labels {
        rest = &rest[1..];
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"")?;
            let key = rest[..eq].to_owned();
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &rest[eq + 2 + end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.trim().parse().ok()?;
    Some(Sample { name, labels, value })
}

async fn enqueue_with(addr: SocketAddr, body: Value) -> (u16, u64) {
    let reply = post(addr, "/v1/jobs", body).await;
    let status = reply.status;
    (status, reply.value()["id"].as_u64().unwrap_or_else(|| panic!("no id: {status}")))
}

/// Leases the next job of `queue` (which must be `id`) and returns its lease id.
async fn lease_one(addr: SocketAddr, queue: &str, id: u64, lease_ms: Option<u64>) -> String {
    let body = json!({ "queues": [queue], "worker": "w-metrics", "count": 1, "lease_ms": lease_ms });
    let jobs = post(addr, "/v1/lease", body).await.expect(200).value()["jobs"].clone();
    assert_eq!(jobs[0]["id"].as_u64(), Some(id), "{jobs}");
    jobs[0]["lease_id"].as_str().unwrap().to_owned()
}

async fn wait_state(addr: SocketAddr, id: u64, state: &str) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let job = get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value();
        if job["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} not {state} within {WAIT_MAX:?}: {job:#}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_job_event_and_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let q = "mtx";

    // Enqueue three jobs, and one duplicate (not counted).
    let keyed = json!({ "queue": q, "payload": 1, "idempotency_key": "k1" });
    let (status, done) = enqueue_with(addr, keyed.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(enqueue_with(addr, keyed).await, (200, done));
    let (_, failed) = enqueue_with(addr, json!({ "queue": q, "payload": 2, "attempts_max": 1 })).await;
    let (_, expired) = enqueue_with(addr, json!({ "queue": q, "payload": 3, "attempts_max": 1 })).await;

    // A completion; a failure into the dead-letter queue; a lease left to expire (dead too).
    let lease_done = lease_one(addr, q, done, None).await;
    post(addr, &format!("/v1/jobs/{done}/complete"), json!({ "lease_id": lease_done })).await.expect(200);
    let lease_failed = lease_one(addr, q, failed, None).await;
    let body = json!({ "lease_id": lease_failed, "error": "boom", "retryable": false });
    assert_eq!(post(addr, &format!("/v1/jobs/{failed}/fail"), body).await.expect(200).value()["state"], "dead");
    let lease_expired = lease_one(addr, q, expired, Some(1_000)).await;
    wait_state(addr, expired, "dead").await;

    // Requests that no route answers, or not with this method.
    get(addr, "/no/such/route").await.expect(404);
    request(addr, "DELETE", "/v1/jobs", &[], b"").await.expect(405);

    let s = Scrape::get(addr).await;
    let mq = [("queue", q)];
    for (name, expected) in [
        ("dray_jobs_enqueued_total", 3.0),
        ("dray_jobs_leased_total", 3.0),
        ("dray_jobs_completed_total", 1.0),
        ("dray_jobs_failed_total", 1.0),
        ("dray_lease_expiries_total", 1.0),
        ("dray_jobs_dead_total", 2.0),
        ("dray_job_wait_seconds_count", 3.0),
        ("dray_job_run_seconds_count", 2.0),
    ] {
        assert_eq!(s.value(name, &mq), expected, "{name}{{queue=\"{q}\"}}");
    }
    // Buckets are explicit: a histogram, never a summary.
    assert_eq!(s.value("dray_job_wait_seconds_bucket", &[("queue", q), ("le", "+Inf")]), 3.0);
    assert_eq!(s.value("dray_job_wait_seconds_bucket", &[("queue", q), ("le", "3600")]), 3.0);
    assert!(s.text.contains("# TYPE dray_job_run_seconds histogram"), "{}", s.text);
    assert!(s.text.contains("# HELP dray_jobs_enqueued_total "), "{}", s.text);

    for (state, expected) in
        [("scheduled", 0.0), ("available", 0.0), ("running", 0.0), ("retrying", 0.0), ("completed", 1.0), ("dead", 2.0)]
    {
        assert_eq!(s.value("dray_queue_jobs", &[("queue", q), ("state", state)]), expected, "{state}");
    }
    assert_eq!(s.value("dray_queue_jobs", &[("queue", q), ("state", "cancelled")]), 0.0);
    // The failed job died before the other lease ran out (a second at least).
    let age = s.value("dray_queue_dead_oldest_age_seconds", &mq);
    assert!(age > 0.0, "{age}");
    assert_eq!(s.value("dray_queue_paused", &mq), 0.0);
    assert_eq!(s.value("dray_workers_polling", &mq), 0.0);
    assert!(s.value("dray_queue_last_poll_timestamp_seconds", &mq) >= 0.0);
    assert_eq!(s.value("dray_jobs_redriven_total", &[]), 0.0, "registered at zero");
    assert_eq!(s.value("dray_build_info", &[("store", "embedded"), ("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(!s.has_family("dray_store_pool_connections"), "PostgreSQL only");

    // Requests by route template, method and status.
    let http = |route, method, status| {
        s.value("dray_http_requests_total", &[("route", route), ("method", method), ("status", status)])
    };
    assert_eq!(http("/v1/jobs", "POST", "201"), 3.0);
    assert_eq!(http("/v1/jobs", "POST", "200"), 1.0);
    assert_eq!(http("/v1/lease", "POST", "200"), 3.0);
    assert_eq!(http("/v1/jobs/{id}/complete", "POST", "200"), 1.0);
    assert_eq!(http("/v1/jobs/{id}/fail", "POST", "200"), 1.0);
    assert_eq!(http("unmatched", "GET", "404"), 1.0);
    assert_eq!(http("/v1/jobs", "DELETE", "405"), 1.0);
    assert_eq!(s.value("dray_http_request_duration_seconds_count", &[("route", "/v1/lease"), ("method", "POST")]), 3.0);

    // Every store call is timed; the embedded log reports its writes, fsyncs and groups.
    assert_eq!(s.value("dray_store_call_seconds_count", &[("call", "job_insert")]), 4.0);
    assert_eq!(s.value("dray_store_call_seconds_count", &[("call", "job_ack")]), 2.0);
    assert_eq!(s.value("dray_store_call_seconds_count", &[("call", "job_lease")]), 3.0);
    assert!(s.value("dray_store_call_seconds_count", &[("call", "leases_expire")]) >= 1.0);
    assert!(s.value("dray_store_call_seconds_count", &[("call", "queue_list")]) >= 1.0);
    for name in [
        "dray_store_append_seconds_count",
        "dray_store_fsync_seconds_count",
        "dray_store_group_commit_operations_count",
    ] {
        assert!(s.value(name, &[]) >= 1.0, "{name}");
    }

    // No label holds a job id, a lease id or a worker id.
    let ids = [done, failed, expired].map(|id| id.to_string());
    let forbidden: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .chain([lease_done.as_str(), lease_failed.as_str(), lease_expired.as_str(), "w-metrics"])
        .collect();
    for sample in &s.samples {
        for (key, value) in &sample.labels {
            assert!(!["job_id", "lease_id", "worker", "job"].contains(&key.as_str()), "{sample:?}");
            // A bucket bound may well read "1", like the first job id.
            if key != "le" {
                assert!(!forbidden.contains(&value.as_str()), "{sample:?} holds an id");
            }
        }
    }

    // Redrive one dead job and discard the other: counted, and the gauges follow.
    let redriven = post(addr, "/v1/dead/redrive", json!({ "ids": [failed] })).await.expect(200).value();
    assert_eq!(redriven["count"], 1);
    post(addr, "/v1/dead/discard", json!({ "ids": [expired] })).await.expect(200);
    let s = Scrape::get(addr).await;
    assert_eq!(s.value("dray_jobs_redriven_total", &[]), 1.0);
    assert_eq!(s.value("dray_jobs_discarded_total", &[]), 1.0);
    assert_eq!(s.value("dray_queue_jobs", &[("queue", q), ("state", "dead")]), 0.0);
    assert_eq!(s.value("dray_queue_jobs", &[("queue", q), ("state", "available")]), 1.0);
    assert_eq!(s.value("dray_queue_dead_oldest_age_seconds", &mq), 0.0);
    // The earlier scrape was answered and counted.
    assert_eq!(
        s.value("dray_http_requests_total", &[("route", "/metrics"), ("method", "GET"), ("status", "200")]),
        1.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_beyond_the_label_bound_fold_into_other() {
    let dir = tempfile::tempdir().unwrap();
    let args = dray_server::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().to_path_buf()),
        metrics_queues_max: Some(2),
        ..Default::default()
    };
    let server = dray_server::start(dray_server::Config::from_args(args).unwrap()).await.unwrap();
    let addr = server.addr;
    for queue in ["fold-a", "fold-b", "fold-c", "fold-d", "fold-d"] {
        enqueue(addr, queue, json!({})).await;
    }
    request(addr, "POST", "/v1/queues/fold-c/pause", &[], b"").await.expect(200);

    let s = Scrape::get(addr).await;
    assert_eq!(s.value("dray_jobs_enqueued_total", &[("queue", "fold-a")]), 1.0);
    assert_eq!(s.value("dray_jobs_enqueued_total", &[("queue", "fold-b")]), 1.0);
    assert_eq!(s.value("dray_jobs_enqueued_total", &[("queue", "_other")]), 3.0);
    assert_eq!(s.value("dray_queue_jobs", &[("queue", "_other"), ("state", "available")]), 3.0);
    assert_eq!(s.value("dray_queue_paused", &[("queue", "_other")]), 1.0);
    assert_eq!(s.value("dray_queue_paused", &[("queue", "fold-a")]), 0.0);
    let queues: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .flat_map(|sample| sample.labels.iter().filter(|(k, _)| k == "queue").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(queues.into_iter().collect::<Vec<_>>(), ["_other", "fold-a", "fold-b"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_mode_exports_the_pool_and_the_same_queue_gauges() {
    let db = TestDb::create().await;
    let mut pg = dray_server::PostgresConfig::new(db.url.clone());
    pg.pool_size_max = 3;
    let server = dray_server::start(dray_server::Config::for_test_postgres(pg)).await.unwrap();
    let addr = server.addr;
    let id = enqueue(addr, "pgm", json!({})).await;
    let lease = lease_one(addr, "pgm", id, None).await;
    post(addr, &format!("/v1/jobs/{id}/complete"), json!({ "lease_id": lease })).await.expect(200);

    let s = Scrape::get(addr).await;
    assert_eq!(s.value("dray_build_info", &[("store", "postgres")]), 1.0);
    assert_eq!(s.value("dray_store_pool_connections_max", &[]), 3.0);
    let in_use = s.value("dray_store_pool_connections", &[("state", "in_use")]);
    let idle = s.value("dray_store_pool_connections", &[("state", "idle")]);
    assert!((1.0..=3.0).contains(&(in_use + idle)), "{in_use} in use, {idle} idle");
    assert_eq!(s.value("dray_queue_jobs", &[("queue", "pgm"), ("state", "completed")]), 1.0);
    assert_eq!(s.value("dray_jobs_completed_total", &[("queue", "pgm")]), 1.0);
    assert_eq!(s.value("dray_store_call_seconds_count", &[("call", "job_ack")]), 1.0);
    assert!(!s.text.contains("dray_store_fsync_seconds_count"), "the embedded log is not in use");
    server.shutdown().await.unwrap();
}

/// Acks made in SQL (`dray.complete()`/`dray.fail()` in an application's transaction) reach no
/// server, yet count in the metrics as HTTP acks do: the node drains them from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_made_in_sql_count_in_the_metrics() {
    let db = TestDb::create().await;
    let server =
        dray_server::start(dray_server::Config::for_test_postgres(dray_server::PostgresConfig::new(db.url.clone())))
            .await
            .unwrap();
    let addr = server.addr;
    let (app, connection) = admin_connect(&db.url).await.unwrap();
    tokio::spawn(connection);
    let mut leases = Vec::new();
    for _ in 0..3 {
        let id = enqueue(addr, "sqlm", json!({})).await;
        leases.push((id as i64, lease_one(addr, "sqlm", id, None).await));
    }
    app.query_one("SELECT dray.complete($1, $2)", &[&leases[0].0, &leases[0].1]).await.unwrap();
    app.query_one("SELECT dray.fail($1, $2, 'down')", &[&leases[1].0, &leases[1].1]).await.unwrap();
    app.query_one("SELECT dray.fail($1, $2, 'bad', false)", &[&leases[2].0, &leases[2].1]).await.unwrap();

    let want = [("dray_jobs_completed_total", 1.0), ("dray_jobs_failed_total", 2.0), ("dray_jobs_dead_total", 1.0)];
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let s = Scrape::get(addr).await;
        let got: Vec<f64> = want.iter().map(|(name, _)| s.value(name, &[("queue", "sqlm")])).collect();
        if got == want.map(|(_, v)| v) {
            assert_eq!(s.value("dray_job_run_seconds_count", &[("queue", "sqlm")]), 3.0);
            break;
        }
        assert!(Instant::now() < deadline, "SQL acks not counted within {WAIT_MAX:?}: {got:?}");
        tokio::time::sleep(POLL).await;
    }
    let left: i64 = app.query_one("SELECT count(*) FROM dray.sql_acks", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "drained");
    server.shutdown().await.unwrap();
}

// ---- Structured logs --------------------------------------------------------------------------

/// Set in the child process of [`job_events_are_json_log_fields`].
const LOG_CHILD: &str = "DRAY_TEST_LOG_CHILD";
const LOG_TEST: &str = "job_events_are_json_log_fields";

/// Runs this very test again as a child process with `--log-format json` logging at debug, reads
/// its stderr, and finds each job event with its fields as JSON fields. The child drives the jobs
/// and prints their ids on stdout.
#[test]
fn job_events_are_json_log_fields() {
    if std::env::var_os(LOG_CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        return runtime.block_on(log_child());
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", LOG_TEST, "--nocapture", "--test-threads", "1"])
        .env(LOG_CHILD, "1")
        .env("RUST_LOG", "dray_server=debug")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed:\n{stdout}\n{stderr}");
    let ids_line =
        stdout.lines().find_map(|l| l.split_once("JOB_IDS ").map(|(_, ids)| ids)).unwrap_or_else(|| panic!("{stdout}"));
    let ids: Value = serde_json::from_str(ids_line).unwrap();
    let events: Vec<Value> = stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect();
    assert!(!events.is_empty(), "no JSON lines on stderr:\n{stderr}");

    let find = |message: &str, job: &Value| -> &Value {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message && e["fields"]["job_id"] == *job)
            .unwrap_or_else(|| panic!("no {message:?} event for job {job}:\n{stderr}"))
    };
    let check = |e: &Value, level: &str, queue: &str, attempt: u64| {
        assert_eq!(e["level"], level, "{e}");
        assert_eq!(e["fields"]["queue"], queue, "{e}");
        assert_eq!(e["fields"]["attempt"], attempt, "{e}");
    };
    let enqueued = find("job enqueued", &ids["done"]);
    assert_eq!((&enqueued["level"], &enqueued["fields"]["queue"]), (&json!("DEBUG"), &json!("logq")), "{enqueued}");
    let leased = find("job leased", &ids["done"]);
    check(leased, "DEBUG", "logq", 1);
    assert_eq!(leased["fields"]["lease_id"], ids["done_lease"], "{leased}");
    let completed = find("job completed", &ids["done"]);
    check(completed, "DEBUG", "logq", 1);
    assert_eq!(completed["fields"]["lease_id"], ids["done_lease"], "{completed}");
    let retried = find("job attempt failed; it will be retried", &ids["retried"]);
    check(retried, "INFO", "logq", 1);
    assert!(retried["fields"]["lease_id"].is_string(), "{retried}");
    let dead = find("job failed; moved to the dead-letter queue", &ids["dead"]);
    check(dead, "WARN", "logq-dead", 1);
    assert!(dead["fields"]["lease_id"].is_string(), "{dead}");
    let expired = find("lease expired; the job moved to the dead-letter queue", &ids["expired"]);
    check(expired, "WARN", "logq-expiry", 1);
    assert_eq!(expired["fields"]["state"], "dead", "{expired}");
}

/// The child's part: JSON logs on stderr, jobs through every logged path, ids on stdout.
async fn log_child() {
    dray_server::init_logging(dray_server::LogFormat::Json);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let q = "logq";
    let done = enqueue(addr, q, json!(1)).await;
    let done_lease = lease_one(addr, q, done, None).await;
    post(addr, &format!("/v1/jobs/{done}/complete"), json!({ "lease_id": done_lease })).await.expect(200);
    let (_, retried) = enqueue_with(addr, json!({ "queue": q, "payload": 2, "attempts_max": 2 })).await;
    let lease = lease_one(addr, q, retried, None).await;
    post(addr, &format!("/v1/jobs/{retried}/fail"), json!({ "lease_id": lease, "error": "again" })).await.expect(200);
    let (_, dead) = enqueue_with(addr, json!({ "queue": "logq-dead", "payload": 3, "attempts_max": 1 })).await;
    let lease = lease_one(addr, "logq-dead", dead, None).await;
    post(addr, &format!("/v1/jobs/{dead}/fail"), json!({ "lease_id": lease, "error": "fatal", "retryable": false }))
        .await
        .expect(200);
    let (_, expired) = enqueue_with(addr, json!({ "queue": "logq-expiry", "payload": 4, "attempts_max": 1 })).await;
    lease_one(addr, "logq-expiry", expired, Some(1_000)).await;
    wait_state(addr, expired, "dead").await;
    server.shutdown().await.unwrap();
    // libtest has written "test <name> ... " without a line end: start a line of our own.
    println!(
        "\nJOB_IDS {}",
        json!({ "done": done, "done_lease": done_lease, "retried": retried, "dead": dead, "expired": expired })
    );
}
