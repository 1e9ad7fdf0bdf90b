//! End to end against the real `dray serve` binary: each test starts its own server process on a
//! free port and a temporary data directory, drives it with the Rust SDK (`dray-client`) or with
//! raw HTTP, and stops it with SIGTERM (checking the exit status) or kills it with SIGKILL and
//! restarts it on the same directory.
//!
//! What a user relies on, checked from outside the process: the lifecycle, retries into the
//! dead-letter queue and redrive, lease loss and fencing, long-poll wake-ups, graceful shutdown,
//! durability across `kill -9` (also under load, at seeded random moments), and the answers to bad
//! input. Every wait is bounded by a deadline; nothing sleeps to synchronise (leases are short,
//! 1 to 2 s, where one has to run out; the only pauses are the kill test's seeded kill moments).
//!
//! Regressions guarded here (both found by these tests):
//! - a read (`GET /v1/jobs/{id}`) showed a change that was not durable yet, which a `kill -9`
//!   then undid: every completion a read showed must survive the kills (see [`observe`]);
//! - a 413 did not announce that the server closes the connection after it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dray_client::api::{
    AckBatch, AckItem, AckOutcome, Backoff, CompleteRequest, DeadAction, DeadReason, HistoryEntry, Job, JobQuery,
    LeaseRequest, QueueList, State,
};
use dray_client::{Client, Enqueue, JobContext, JobError, Worker};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use common::{POLL, ServeProcess, WAIT_MAX};

/// Retries as fast as the server allows: a test about retries should not wait out real backoff.
const BACKOFF_FAST: Backoff = Backoff { base_ms: 1, factor: 1.0, cap_ms: 1 };

// ---- the server process -----------------------------------------------------------------------

/// A `dray serve` on a data directory this test owns; it can be stopped, killed and restarted
/// there. Dropping it kills the process.
struct Node {
    /// Declared first: the process dies before its directory is removed.
    process: Option<ServeProcess>,
    url: String,
    /// Extra `dray serve` flags, kept for restarts.
    extra: Vec<String>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

/// A raw HTTP answer.
#[derive(Debug)]
struct Raw {
    status: u16,
    content_type: String,
    /// The `Connection` header, if any.
    connection: Option<String>,
    text: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts an RFC 9457 problem with this status and `urn:dray:problem:KIND`; returns its body.
    #[track_caller]
    fn assert_problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/problem+json", "{self:?}");
        let body = self.json();
        assert_eq!(body["type"], format!("urn:dray:problem:{kind}"), "{body:#}");
        assert_eq!(body["status"], status, "{body:#}");
        body
    }
}

impl Node {
    async fn start(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let http = common::http().timeout(Duration::from_secs(60)).build().expect("an HTTP client");
        let mut node =
            Node { process: None, url: String::new(), extra: extra.iter().map(|s| s.to_string()).collect(), http, dir };
        node.up("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        node
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn up(&mut self, listen: &str) -> Result<(), String> {
        assert!(self.process.is_none(), "already running");
        let (data, listen, extra) = (self.data(), listen.to_owned(), self.extra.clone());
        let process = blocking(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            ServeProcess::spawn(&data, &listen, &extra)
        })
        .await?;
        self.url = process.url.clone();
        self.process = Some(process);
        Ok(())
    }

    /// Starts it again on the same directory, on a port the OS picks.
    async fn restart(&mut self) {
        self.up("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    }

    fn addr(&self) -> String {
        self.url.strip_prefix("http://").expect("http://").to_owned()
    }

    fn client(&self) -> Client {
        Client::new(&self.url).expect("an SDK client")
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().expect("running").pid()
    }

    /// SIGTERM: the server must stop gracefully, exit status 0.
    async fn stop(&mut self) {
        let process = self.process.take().expect("running");
        let status = blocking(move || process.terminate()).await;
        assert!(status.success(), "dray serve exited with {status} after SIGTERM");
    }

    /// `kill -9`.
    async fn kill9(&mut self) {
        let process = self.process.take().expect("running");
        blocking(move || process.kill9()).await;
    }

    /// One raw HTTP request (JSON content type when there is a body), on a pooled connection.
    async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Raw {
        self.raw_on(&self.http, method, path, body).await
    }

    async fn raw_on(&self, http: &reqwest::Client, method: Method, path: &str, body: Option<Vec<u8>>) -> Raw {
        let mut request = http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        raw_of(response).await
    }

    async fn post(&self, path: &str, body: &Value) -> Raw {
        self.raw(Method::POST, path, Some(body.to_string().into_bytes())).await
    }
}

async fn raw_of(response: reqwest::Response) -> Raw {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
    let connection = response.headers().get("connection").map(|v| v.to_str().unwrap_or("").to_owned());
    let text = response.text().await.expect("a response body");
    Raw { status, content_type, connection, text }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking task")
}

// ---- waiting and reading jobs -----------------------------------------------------------------

/// Polls job `id` until `done` holds (at most [`WAIT_MAX`]); returns the job.
async fn wait_job(client: &Client, id: u64, what: &str, done: impl Fn(&Job) -> bool) -> Job {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let job = client.job(id).await.unwrap_or_else(|e| panic!("job {id}: {e}"));
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} not {what} within {WAIT_MAX:?}: {job:#?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_state(client: &Client, id: u64, state: State) -> Job {
    wait_job(client, id, &format!("{state:?}"), |job| job.state == state).await
}

fn events(job: &Job) -> Vec<&str> {
    job.history.iter().map(|h| h.event.as_str()).collect()
}

fn entries<'a>(job: &'a Job, event: &str) -> Vec<&'a HistoryEntry> {
    job.history.iter().filter(|h| h.event == event).collect()
}

fn value(json: &RawValue) -> Value {
    serde_json::from_str(json.get()).expect("JSON")
}

/// A server timestamp (`2026-11-21T08:00:00.250Z`) as a sortable key. The server writes them in
/// one fixed-width UTC format, so text order is time order; this checks that it is that format.
fn instant(at: &str) -> &str {
    assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.', "not the server's format: {at}");
    at
}

/// The history invariants every job keeps, whatever happened to it: each lease grant has a
/// fencing token larger than every earlier one; an event about a lease carries that lease's token
/// (never one from the future); a second lease only after the first ended by expiry or failure
/// (no redelivery of a job whose attempt was not over); nothing leased after a completion.
fn check_history(job: &Job) {
    let id = job.id;
    let mut token_max: Option<u64> = None;
    let mut lease_open = false;
    let mut completed = false;
    for h in &job.history {
        match h.event.as_str() {
            "leased" => {
                let token = h.fencing_token.unwrap_or_else(|| panic!("job {id}: a lease without a token: {h:?}"));
                if let Some(max) = token_max {
                    assert!(token > max, "job {id}: fencing token {token} after {max}: {:#?}", job.history);
                }
                assert!(!lease_open, "job {id}: leased again while an attempt was open: {:#?}", job.history);
                assert!(!completed, "job {id}: leased again after its completion: {:#?}", job.history);
                token_max = Some(token);
                lease_open = true;
            }
            "completed" | "failed" | "expired" => {
                assert!(lease_open, "job {id}: {} without a lease: {:#?}", h.event, job.history);
                if let Some(token) = h.fencing_token {
                    assert_eq!(Some(token), token_max, "job {id}: {} names another lease: {:#?}", h.event, job.history);
                }
                lease_open = false;
                completed |= h.event == "completed";
            }
            _ => {}
        }
    }
}

// ---- 1. the lifecycle -------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    order: u64,
    to: String,
}

/// Typed payloads in, typed results out, through the SDK only: enqueue (one job delayed), a
/// `Worker` runs them, and `client.job` shows the results and the timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_through_the_sdk() {
    let mut node = Node::start(&[]).await;
    let client = node.client();

    let receipts: Vec<Receipt> =
        (1..=3).map(|order| Receipt { order, to: format!("user{order}@example.com") }).collect();
    let mut now_ids = Vec::new();
    for receipt in &receipts[..2] {
        let job = Enqueue::new("emails", receipt).unwrap().tags(["receipt"]);
        let enqueued = client.enqueue(job).await.unwrap();
        assert_eq!((enqueued.state, enqueued.duplicate), (State::Available, false));
        now_ids.push(enqueued.id);
    }
    let delay = Duration::from_millis(1_500);
    let delayed = client.enqueue(Enqueue::new("emails", &receipts[2]).unwrap().delay(delay).priority(5)).await.unwrap();
    assert_eq!(delayed.state, State::Scheduled);
    let job = client.job(delayed.id).await.unwrap();
    assert!(instant(&job.run_at) > instant(&job.created_at), "{job:#?}");

    // The worker reports each attempt it ran: (job, attempt, fencing token).
    let (ran_tx, mut ran) = mpsc::unbounded_channel::<(u64, u32, u64)>();
    let worker = Worker::builder(client.clone())
        .worker_id("mailer-1")
        .lease_wait(Duration::from_secs(5))
        .queue("emails", move |ctx: JobContext| {
            let ran_tx = ran_tx.clone();
            async move {
                let receipt: Receipt = ctx.payload()?;
                let _ = ran_tx.send((ctx.id(), ctx.attempt(), ctx.fencing_token()));
                Ok(Some(json!({"sent_to": receipt.to, "order": receipt.order})))
            }
        })
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    let mut tokens = HashMap::new();
    for (id, receipt) in now_ids.iter().chain([&delayed.id]).zip(&receipts) {
        let job = wait_state(&client, *id, State::Completed).await;
        let payload: Receipt = serde_json::from_str(job.payload.get()).unwrap();
        assert_eq!(&payload, receipt);
        let result = value(job.result.as_deref().expect("a result"));
        assert_eq!(result, json!({"sent_to": receipt.to, "order": receipt.order}));
        assert_eq!(job.attempt, 1);
        assert!(job.lease.is_none(), "a completed job holds no lease: {job:#?}");
        let leased = entries(&job, "leased");
        assert_eq!(leased.len(), 1, "{:#?}", job.history);
        assert_eq!(leased[0].worker.as_deref(), Some("mailer-1"));
        tokens.insert(*id, leased[0].fencing_token.expect("a token"));
        check_history(&job);
        if *id == delayed.id {
            assert_eq!(events(&job), ["enqueued", "promoted", "leased", "completed"]);
            // Never delivered early, on the server's clock.
            assert!(instant(&leased[0].at) >= instant(&job.run_at), "{job:#?}");
        } else {
            assert_eq!(events(&job), ["enqueued", "leased", "completed"]);
            assert_eq!(job.tags, ["receipt"]);
        }
    }
    // Every attempt the handler ran is the one in the history, with the same fencing token.
    let mut seen = Vec::new();
    while let Ok((id, attempt, token)) = ran.try_recv() {
        assert_eq!((attempt, Some(&token)), (1, tokens.get(&id)), "job {id}");
        seen.push(id);
    }
    seen.sort_unstable();
    let mut expected: Vec<u64> = tokens.keys().copied().collect();
    expected.sort_unstable();
    assert_eq!(seen, expected);

    let queue = client.queue("emails").await.unwrap();
    assert_eq!(queue.counts.completed, 3, "{queue:#?}");
    assert_eq!(queue.counts.available + queue.counts.scheduled + queue.counts.running, 0, "{queue:#?}");

    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.jobs_leased, report.jobs_completed, report.acks_refused), (3, 3, 0), "{report:?}");
    node.stop().await;
}

// ---- 2. dead letters ----------------------------------------------------------------------------

/// A handler that keeps failing sends its job to the dead-letter queue after exactly
/// `attempts_max` deliveries, with every attempt's error in the history; a fatal error goes there
/// at once. Redrive by filter (dry run first) takes only the matching one, and the worker then
/// completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_end_in_the_dead_letter_queue_and_redrive_brings_them_back() {
    let mut node = Node::start(&[]).await;
    let client = node.client();
    let flaky = client
        .enqueue(Enqueue::new("reports", &json!({"month": "2026-10"})).unwrap().attempts_max(3).backoff(BACKOFF_FAST))
        .await
        .unwrap()
        .id;
    let poison = client
        .enqueue(Enqueue::new("reports", &json!({"month": "bad", "poison": true})).unwrap().attempts_max(3))
        .await
        .unwrap()
        .id;

    let healthy = Arc::new(AtomicBool::new(false));
    let poison_runs = Arc::new(AtomicU32::new(0));
    let worker = Worker::builder(client.clone())
        .worker_id("reporter")
        .lease_wait(Duration::from_secs(5))
        .queue("reports", {
            let (healthy, poison_runs) = (healthy.clone(), poison_runs.clone());
            move |ctx: JobContext| {
                let (healthy, poison_runs) = (healthy.clone(), poison_runs.clone());
                async move {
                    let payload: Value = ctx.payload()?;
                    if payload["poison"] == true {
                        poison_runs.fetch_add(1, Ordering::SeqCst);
                        return Err(JobError::fatal("unparseable month"));
                    }
                    if !healthy.load(Ordering::SeqCst) {
                        return Err(JobError::retryable(format!("no data (attempt {})", ctx.attempt())));
                    }
                    Ok(Some(json!({"rows": 3})))
                }
            }
        })
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    let dead = wait_state(&client, flaky, State::Dead).await;
    assert_eq!(dead.dead_reason, Some(DeadReason::Failed));
    assert_eq!(dead.attempt, 3);
    let failed = entries(&dead, "failed");
    let errors: Vec<(u32, Option<&str>)> = failed.iter().map(|h| (h.attempt, h.error.as_deref())).collect();
    assert_eq!(
        errors,
        [(1, Some("no data (attempt 1)")), (2, Some("no data (attempt 2)")), (3, Some("no data (attempt 3)"))],
        "{:#?}",
        dead.history
    );
    assert_eq!(entries(&dead, "leased").len(), 3, "exactly attempts_max deliveries");
    assert_eq!(dead.last_error.as_deref(), Some("no data (attempt 3)"));
    check_history(&dead);

    let dead_poison = wait_state(&client, poison, State::Dead).await;
    assert_eq!(dead_poison.dead_reason, Some(DeadReason::NonRetryable));
    assert_eq!(entries(&dead_poison, "leased").len(), 1, "a fatal error is not retried");

    let listed = client.dead(JobQuery { queue: Some("reports".into()), ..Default::default() }).await.unwrap();
    let listed: Vec<u64> = listed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(listed, [flaky, poison]);
    let queue = client.queue("reports").await.unwrap();
    assert_eq!(queue.counts.dead, 2, "{queue:#?}");
    assert!(queue.oldest_dead_at.is_some(), "{queue:#?}");

    let by_filter =
        || DeadAction { queue: Some("reports".into()), dead_reason: Some(DeadReason::Failed), ..Default::default() };
    let dry = client.dead_redrive(DeadAction { dry_run: true, ..by_filter() }).await.unwrap();
    assert_eq!((dry.ids.as_slice(), dry.count, dry.dry_run), (&[flaky][..], 1, true));
    assert_eq!(client.job(flaky).await.unwrap().state, State::Dead, "a dry run changes nothing");

    healthy.store(true, Ordering::SeqCst);
    let redriven = client.dead_redrive(by_filter()).await.unwrap();
    assert_eq!((redriven.ids.as_slice(), redriven.count, redriven.dry_run), (&[flaky][..], 1, false));

    let done = wait_state(&client, flaky, State::Completed).await;
    assert_eq!(value(done.result.as_deref().unwrap()), json!({"rows": 3}));
    assert_eq!(done.attempt, 1, "a redriven job starts a fresh budget");
    assert_eq!(entries(&done, "failed").len(), 3, "the history keeps the earlier attempts: {:#?}", done.history);
    let after_redrive: Vec<&str> = events(&done).into_iter().skip_while(|e| *e != "redriven").collect();
    assert_eq!(after_redrive, ["redriven", "leased", "completed"], "{:#?}", done.history);
    check_history(&done);

    let still = client.job(poison).await.unwrap();
    assert_eq!((still.state, still.dead_reason), (State::Dead, Some(DeadReason::NonRetryable)));
    assert_eq!(poison_runs.load(Ordering::SeqCst), 1);

    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.jobs_completed, report.jobs_failed, report.acks_refused), (1, 4, 0), "{report:?}");
    node.stop().await;
}

// ---- 3. lease loss and fencing ------------------------------------------------------------------

/// A worker that leases a job and goes silent loses it when its lease runs out; a second worker
/// gets the job with a larger fencing token and completes it. The first holder's late complete,
/// fail and heartbeat are each refused with a 409 problem and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_lease_and_cannot_ack_late() {
    let mut node = Node::start(&[]).await;
    let client = node.client();
    let id = client
        .enqueue(Enqueue::new("zombie", &json!({"charge": 42})).unwrap().attempts_max(5).backoff(BACKOFF_FAST))
        .await
        .unwrap()
        .id;

    // The zombie: a raw lease of the shortest length, never heartbeated.
    let leased = client
        .lease(LeaseRequest {
            queues: vec!["zombie".into()],
            worker: "zombie-1".into(),
            count: Some(1),
            lease_ms: Some(1_000),
            wait_ms: None,
        })
        .await
        .unwrap();
    let [first] = leased.jobs.as_slice() else { panic!("one job leased: {leased:?}") };
    assert_eq!((first.id, first.lease_ms), (id, 1_000));

    // The rescuer, started only now so that the zombie surely got the job first.
    let (token_tx, mut token_rx) = mpsc::unbounded_channel::<u64>();
    let worker = Worker::builder(client.clone())
        .worker_id("rescuer")
        .lease_wait(Duration::from_secs(5))
        .queue("zombie", move |ctx: JobContext| {
            let token_tx = token_tx.clone();
            async move {
                let _ = token_tx.send(ctx.fencing_token());
                Ok(Some(json!({"charged_by": "rescuer"})))
            }
        })
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    let done = wait_state(&client, id, State::Completed).await;
    let second_token = token_rx.recv().await.expect("the rescuer ran the job");
    assert!(second_token > first.fencing_token, "{second_token} > {}", first.fencing_token);

    // The zombie wakes up: every late ack is refused, over plain HTTP.
    let path = |action: &str| format!("/v1/jobs/{id}/{action}");
    let late = [
        node.post(&path("complete"), &json!({"lease_id": first.lease_id, "result": {"charged_by": "zombie"}})).await,
        node.post(&path("fail"), &json!({"lease_id": first.lease_id, "error": "late"})).await,
        node.post(&path("heartbeat"), &json!({"lease_id": first.lease_id})).await,
    ];
    // The rescuer completed the job, so each late ack is told the job is already finished.
    for answer in &late {
        let problem = answer.assert_problem(409, "already-finished");
        assert_eq!(problem["job"], id, "{problem:#}");
    }
    // And through the SDK, which reports it as a conflict.
    let err =
        client.complete(id, CompleteRequest { lease_id: first.lease_id.clone(), result: None }).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");

    let after = client.job(id).await.unwrap();
    assert_eq!(after.state, State::Completed);
    assert_eq!(value(after.result.as_deref().unwrap()), json!({"charged_by": "rescuer"}));
    assert_eq!(after.history, done.history, "the refused acks changed nothing");
    let leased: Vec<(Option<&str>, Option<u64>)> =
        entries(&after, "leased").iter().map(|h| (h.worker.as_deref(), h.fencing_token)).collect();
    assert_eq!(
        leased,
        [(Some("zombie-1"), Some(first.fencing_token)), (Some("rescuer"), Some(second_token))],
        "{:#?}",
        after.history
    );
    assert_eq!(entries(&after, "expired").len(), 1, "{:#?}", after.history);
    let completed = entries(&after, "completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].fencing_token, Some(second_token), "{:#?}", after.history);
    check_history(&after);

    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.jobs_completed, report.acks_refused), (1, 0), "{report:?}");
    node.stop().await;
}

// ---- 4. long-poll -------------------------------------------------------------------------------

/// A lease request waiting up to 30 s on an empty queue is answered with a job enqueued while it
/// waits, long before its wait is over: only the enqueue can answer it early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_on_enqueue() {
    let mut node = Node::start(&[]).await;
    let client = node.client();
    let request = node
        .http
        .post(format!("{}/v1/lease", node.url))
        .json(&json!({"queues": ["wake"], "worker": "poller", "wait_ms": 30_000}));
    let sent = Instant::now();
    let waiting = tokio::spawn(async move { raw_of(request.send().await.expect("the lease answers")).await });
    // One round trip on another connection: the lease is then most likely waiting on the server
    // (if not, it finds the job at once, which this test also accepts). Either way it has not
    // come back empty.
    assert_eq!(node.raw(Method::GET, "/healthz", None).await.status, 200);
    assert!(!waiting.is_finished(), "the long-poll answered before anything was enqueued");

    let id = client.enqueue(Enqueue::new("wake", &json!({"n": 1})).unwrap()).await.unwrap().id;
    let answer = tokio::time::timeout(WAIT_MAX, waiting).await.expect("the lease answered").unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    let jobs = body["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{body:#}");
    assert_eq!(jobs[0]["id"], id);
    assert!(elapsed < Duration::from_secs(20), "woken, not timed out: {elapsed:?}");
    eprintln!("e2e long-poll: answered {elapsed:?} after it was sent");
    node.stop().await;
}

// ---- 5. graceful shutdown ----------------------------------------------------------------------

/// SIGTERM while a worker is in the middle of a job and other requests are in flight: the server
/// answers them (the waiting long-poll with nothing), exits 0, and after a restart on the same
/// directory the job is completed or waiting for its next attempt, and every job ever
/// acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_jobs_in_flight_loses_nothing() {
    let mut node = Node::start(&[]).await;
    let client = node.client();
    let mut accepted: BTreeMap<u64, String> = BTreeMap::new();
    let slow = client
        .enqueue(
            Enqueue::new("slow", &json!({"step": "long"})).unwrap().lease(Duration::from_secs(2)).backoff(BACKOFF_FAST),
        )
        .await
        .unwrap()
        .id;
    accepted.insert(slow, r#"{"step":"long"}"#.into());
    for n in 0..5 {
        let payload = format!(r#"{{"other":{n}}}"#);
        let id = client.enqueue(Enqueue::from_json("other", raw(&payload))).await.unwrap().id;
        accepted.insert(id, payload);
    }

    // The handler blocks its first attempt until released.
    let (started_tx, mut started) = mpsc::unbounded_channel::<u64>();
    let (release, released) = watch::channel(false);
    let worker = Worker::builder(client.clone())
        .worker_id("graceful")
        .concurrency(2)
        .lease_wait(Duration::from_secs(5))
        .queue("slow", move |ctx: JobContext| {
            let (started_tx, mut released) = (started_tx.clone(), released.clone());
            async move {
                if ctx.attempt() == 1 {
                    let _ = started_tx.send(ctx.id());
                    let _ = released.wait_for(|yes| *yes).await;
                }
                Ok(Some(json!({"attempt": ctx.attempt()})))
            }
        })
        .build()
        .unwrap();
    let (stop_worker, worker_stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async move {
        let _ = worker_stopped.await;
    }));
    assert_eq!(tokio::time::timeout(WAIT_MAX, started.recv()).await.unwrap(), Some(slow));
    wait_state(&client, slow, State::Running).await;

    // In flight at the SIGTERM: a long-poll, and a producer enqueueing as fast as it can.
    let poll = node
        .http
        .post(format!("{}/v1/lease", node.url))
        .json(&json!({"queues": ["idle"], "worker": "idler", "wait_ms": 30_000}));
    let long_poll = tokio::spawn(async move { raw_of(poll.send().await.expect("the long-poll answers")).await });
    assert_eq!(node.raw(Method::GET, "/healthz", None).await.status, 200);
    assert!(!long_poll.is_finished());
    let producer = tokio::spawn({
        let client = client.clone();
        async move {
            let mut acked = BTreeMap::new();
            for n in 0u64.. {
                let payload = format!(r#"{{"bystander":{n}}}"#);
                match client.enqueue(Enqueue::from_json("bystander", raw(&payload))).await {
                    Ok(enqueued) => {
                        acked.insert(enqueued.id, payload);
                    }
                    // The server is gone (or going): the outcome of this one is unknown.
                    Err(e) => {
                        assert!(e.is_outcome_unknown() || e.status() == Some(503), "{e}");
                        return acked;
                    }
                }
            }
            unreachable!()
        }
    });
    // Let the producer get going, so the SIGTERM lands among its requests.
    wait_until("the producer enqueued some jobs", || async {
        client.queue("bystander").await.is_ok_and(|q| q.counts.available >= 20)
    })
    .await;

    let old_addr = node.addr();
    node.stop().await;
    let answer = tokio::time::timeout(WAIT_MAX, long_poll).await.unwrap().unwrap();
    assert_eq!(answer.status, 200, "the waiting long-poll is answered: {answer:?}");
    assert_eq!(answer.json(), json!({"jobs": []}));
    let bystanders = tokio::time::timeout(WAIT_MAX, producer).await.unwrap().unwrap();
    let bystanders_acked = bystanders.len() as u64;
    assert!(bystanders_acked >= 20, "{bystanders_acked}");
    accepted.extend(bystanders);

    // The handler finishes while the server is down: its ack waits for a server.
    release.send(true).unwrap();
    // Same port if it is still free, so that the worker (whose client has the old address)
    // reconnects; else any port, and the job must come back when its lease runs out.
    let same_port = node.up(&old_addr).await.is_ok();
    if !same_port {
        node.restart().await;
    }
    let client = node.client();
    let job = wait_job(&client, slow, "completed, or waiting for another attempt", |job| {
        matches!(job.state, State::Completed | State::Available | State::Retrying)
    })
    .await;
    check_history(&job);
    match job.state {
        State::Completed => assert_eq!(entries(&job, "completed").len(), 1),
        _ => assert_eq!(entries(&job, "expired").len(), 1, "its lease ran out: {:#?}", job.history),
    }
    eprintln!("e2e graceful: restarted on the same port: {same_port}; the job is {:?}", job.state);

    for (id, payload) in &accepted {
        let job = client.job(*id).await.unwrap_or_else(|e| panic!("accepted job {id} lost: {e}"));
        assert_eq!(job.payload.get(), payload, "job {id}");
    }
    // At most one more: the enqueue cut off by the shutdown, whose outcome was unknown.
    let bystander = client.queue("bystander").await.unwrap();
    let count = bystander.counts.available;
    assert!(count == bystanders_acked || count == bystanders_acked + 1, "{count} vs {bystanders_acked} acknowledged");

    if same_port {
        stop_worker.send(()).unwrap();
        tokio::time::timeout(WAIT_MAX, worker).await.unwrap().unwrap().unwrap();
    } else {
        // Its client points at a port nobody listens on: nothing to stop gracefully.
        worker.abort();
    }
    node.stop().await;
}

/// Polls `condition` until it holds, at most [`WAIT_MAX`].
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT_MAX;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {WAIT_MAX:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("JSON")
}

/// `body` as JSON text with `payload` spliced in exactly as written (a `Value` would reformat it).
fn with_payload(mut body: Value, payload: &str) -> String {
    body["payload"] = json!("<payload>");
    body.to_string().replacen(r#""<payload>""#, payload, 1)
}

// ---- 6. kill -9 and restart --------------------------------------------------------------------

/// Every job whose enqueue was answered 2xx (single or batch, available, scheduled or keyed) is
/// there after `kill -9` and a restart, its payload byte for byte; so are the completions and
/// leases that were answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_every_accepted_job() {
    let mut node = Node::start(&[]).await;
    // id -> the payload exactly as sent (spacing included: it is kept byte for byte).
    let mut accepted: BTreeMap<u64, String> = BTreeMap::new();
    let mut keyed = None;
    for n in 0..150u32 {
        let payload = format!(r#"{{"n": {n}, "kind": "single"}}"#);
        let mut body = json!({"queue": if n % 2 == 0 { "restart-a" } else { "restart-b" }});
        match n % 5 {
            1 => body["delay_ms"] = json!(3_600_000),
            2 => body["idempotency_key"] = json!(format!("key-{n}")),
            3 => body["priority"] = json!(-7),
            _ => {}
        }
        let body = with_payload(body, &payload);
        let answer = node.raw(Method::POST, "/v1/jobs", Some(body.clone().into_bytes())).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        let id = answer.json()["id"].as_u64().unwrap();
        if n == 2 {
            keyed = Some((id, body));
        }
        accepted.insert(id, payload);
    }
    for b in 0..15u32 {
        let payloads: Vec<String> = (0..10).map(|i| format!(r#"{{"batch": {b},  "i": {i}}}"#)).collect();
        let jobs: Vec<String> = payloads.iter().map(|p| with_payload(json!({"queue": "restart-a"}), p)).collect();
        let body = format!(r#"{{"jobs": [{}]}}"#, jobs.join(", "));
        let answer = node.raw(Method::POST, "/v1/jobs/batch", Some(body.into_bytes())).await;
        assert_eq!(answer.status, 201, "{answer:?}");
        let body = answer.json();
        let ids = body["jobs"].as_array().unwrap();
        assert_eq!(ids.len(), 10);
        for (item, payload) in ids.iter().zip(payloads) {
            accepted.insert(item["id"].as_u64().unwrap(), payload);
        }
    }
    assert_eq!(accepted.len(), 300, "ids are distinct");

    // Some work answered before the kill: 4 leases, 2 of them completed.
    let leased =
        node.post("/v1/lease", &json!({"queues": ["restart-b"], "worker": "w", "count": 4, "lease_ms": 600_000})).await;
    assert_eq!(leased.status, 200, "{leased:?}");
    let leased = leased.json()["jobs"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 4);
    for job in &leased[..2] {
        let answer =
            node.post(&format!("/v1/jobs/{}/complete", job["id"]), &json!({"lease_id": job["lease_id"]})).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    node.kill9().await;
    node.restart().await;
    let client = node.client();
    for (id, payload) in &accepted {
        let job = client.job(*id).await.unwrap_or_else(|e| panic!("accepted job {id} lost after kill -9: {e}"));
        assert_eq!(job.payload.get(), payload, "job {id}");
    }
    for (n, job) in leased.iter().enumerate() {
        let id = job["id"].as_u64().unwrap();
        let after = client.job(id).await.unwrap();
        if n < 2 {
            assert_eq!(after.state, State::Completed, "an answered completion is durable: {after:#?}");
        } else {
            assert_eq!(after.state, State::Running, "{after:#?}");
            assert_eq!(after.lease.as_ref().map(|l| l.lease_id.as_str()), job["lease_id"].as_str());
        }
    }
    let (a, b) = (client.queue("restart-a").await.unwrap(), client.queue("restart-b").await.unwrap());
    let total = |q: &dray_client::api::Queue| {
        let c = &q.counts;
        c.scheduled + c.available + c.running + c.retrying + c.completed + c.dead + c.cancelled
    };
    assert_eq!(total(&a) + total(&b), 300, "nothing extra either: {a:#?} {b:#?}");
    assert_eq!(a.counts.scheduled + b.counts.scheduled, 30);

    // The idempotency key survived: the same request is the same job.
    let (keyed_id, keyed_body) = keyed.unwrap();
    let again = node.raw(Method::POST, "/v1/jobs", Some(keyed_body.into_bytes())).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!((again.json()["id"].as_u64(), again.json()["duplicate"].as_bool()), (Some(keyed_id), Some(true)));
    // A new job gets a new id, never one of the accepted ones.
    let fresh = client.enqueue(Enqueue::new("restart-a", &json!({"after": "restart"})).unwrap()).await.unwrap();
    assert!(fresh.id > *accepted.keys().last().unwrap(), "{} reused or went back", fresh.id);
    node.stop().await;
}

// ---- 7. kill -9 under load ----------------------------------------------------------------------

/// A small seeded generator (splitmix64): the kill moments replay from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|e| panic!("{name}={text:?}: {e}")))
}

/// What the load saw acknowledged, shared by its tasks.
#[derive(Default)]
struct Ledger {
    /// Enqueues answered 2xx: id -> payload as sent.
    enqueued: Mutex<BTreeMap<u64, String>>,
    /// Jobs a handler ran (not yet known to be completed).
    candidates: Mutex<BTreeSet<u64>>,
    /// Jobs `client.job` showed completed, confirmed durable by a later write's 2xx: id -> the
    /// completing lease's fencing token.
    completed: Mutex<BTreeMap<u64, u64>>,
    /// Jobs `client.job` showed completed when no later write could confirm it (the server was
    /// killed first): id -> token. See [`observe`] for why these may be undone.
    completed_unconfirmed: Mutex<BTreeMap<u64, u64>>,
    /// Completions answered 2xx by `POST /v1/ack` (the raw completer): id -> token.
    acked: Mutex<BTreeMap<u64, u64>>,
}

/// Pace of each producer: bounds the jobs (about 2,000 a second in all) so that checking every
/// one of them at the end stays quick whatever the disk.
const PRODUCE_EVERY: Duration = Duration::from_millis(4);

/// The address of the current server life: (life number, client). `None` once the load stops.
type Current = watch::Receiver<Option<(u64, Client)>>;

/// Waits for a server life other than `life` (after a failed call); false when the load stops.
async fn next_life(current: &mut Current, life: u64) -> bool {
    // A call can also fail while its server is up (a 503): retry on the same one after a pause.
    let changed = tokio::time::timeout(Duration::from_millis(50), async {
        current.wait_for(|c| c.as_ref().is_none_or(|(l, _)| *l != life)).await.map(|c| c.is_some())
    })
    .await;
    match changed {
        Ok(Ok(up)) => up,
        Ok(Err(_)) => false,
        Err(_) => current.borrow().is_some(),
    }
}

/// Enqueues continuously (batches of 1 to 8 jobs, at most one request per [`PRODUCE_EVERY`])
/// until the load stops, recording every job whose enqueue was answered 2xx.
async fn produce(producer: u64, mut current: Current, ledger: Arc<Ledger>) {
    let mut n = 0u64;
    let mut pace = tokio::time::interval(PRODUCE_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pace.tick().await;
        let Some((life, client)) = current.borrow().clone() else {
            return;
        };
        let size = 1 + (n * 7 + producer) % 8;
        let payloads: Vec<String> = (0..size).map(|i| format!(r#"{{"p":{producer},"n":{}}}"#, n + i)).collect();
        n += size;
        let jobs: Vec<Enqueue> = payloads
            .iter()
            .map(|p| {
                Enqueue::from_json("load", raw(p)).lease(Duration::from_secs(2)).backoff(Backoff {
                    base_ms: 10,
                    factor: 2.0,
                    cap_ms: 200,
                })
            })
            .collect();
        let answer = if size == 1 {
            client.enqueue(jobs.into_iter().next().unwrap()).await.map(|e| vec![e.id])
        } else {
            client.enqueue_batch(jobs).await.map(|b| b.jobs.iter().map(|e| e.id).collect())
        };
        match answer {
            Ok(ids) => {
                assert_eq!(ids.len(), payloads.len());
                ledger.enqueued.lock().unwrap().extend(ids.into_iter().zip(payloads));
            }
            Err(e) => {
                assert!(e.is_outcome_unknown(), "producer {producer}: {e}");
                if !next_life(&mut current, life).await {
                    return;
                }
            }
        }
    }
}

/// Looks at the jobs handlers ran until `client.job` shows them completed, and records those:
/// a completion is counted as acknowledged only once the server showed it.
///
/// Regression: reads once returned changes that were not durable yet, so a completion
/// `client.job` showed could be undone by a `kill -9` just after; reads now wait for durability
/// like writes. A completion seen here is also confirmed by a later write (an enqueue into
/// `barrier`), and both the confirmed and the merely seen ones must survive every kill.
async fn observe(mut current: Current, ledger: Arc<Ledger>) {
    loop {
        let Some((life, client)) = current.borrow().clone() else {
            return;
        };
        let pending: Vec<u64> = ledger.candidates.lock().unwrap().iter().take(256).copied().collect();
        if pending.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        let mut seen = Vec::new();
        let mut failed = false;
        for id in pending {
            match client.job(id).await {
                Ok(job) if job.state == State::Completed => {
                    let completed = entries(&job, "completed");
                    assert_eq!(completed.len(), 1, "job {id}: {:#?}", job.history);
                    seen.push((id, completed[0].fencing_token.expect("a completion names its lease")));
                }
                Ok(_) => {}
                Err(e) => {
                    assert!(e.is_outcome_unknown(), "job {id}: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if !seen.is_empty() {
            match client.enqueue(Enqueue::new("barrier", &json!({"life": life})).unwrap()).await {
                Ok(_) => {
                    let mut candidates = ledger.candidates.lock().unwrap();
                    let mut unconfirmed = ledger.completed_unconfirmed.lock().unwrap();
                    for (id, _) in &seen {
                        candidates.remove(id);
                        unconfirmed.remove(id);
                    }
                    ledger.completed.lock().unwrap().extend(seen);
                }
                Err(e) => {
                    assert!(e.is_outcome_unknown(), "barrier: {e}");
                    ledger.completed_unconfirmed.lock().unwrap().extend(seen);
                    failed = true;
                }
            }
        }
        if failed && !next_life(&mut current, life).await {
            return;
        }
    }
}

/// Leases and completes jobs with plain SDK calls (no `Worker`), recording each completion the
/// server answered 2xx: those are acknowledged, and final.
async fn complete_raw(mut current: Current, ledger: Arc<Ledger>) {
    loop {
        let Some((life, client)) = current.borrow().clone() else {
            return;
        };
        let lease = LeaseRequest {
            queues: vec!["load".into()],
            worker: format!("raw-{life}"),
            count: Some(16),
            lease_ms: Some(2_000),
            wait_ms: Some(500),
        };
        let acked = match client.lease(lease).await {
            Ok(leased) if leased.jobs.is_empty() => continue,
            Ok(leased) => {
                let tokens: HashMap<u64, u64> = leased.jobs.iter().map(|j| (j.id, j.fencing_token)).collect();
                let acks = leased
                    .jobs
                    .iter()
                    .map(|j| AckItem {
                        job: j.id,
                        lease_id: j.lease_id.clone(),
                        outcome: AckOutcome::Complete,
                        result: Some(raw(r#"{"by":"raw"}"#)),
                        error: None,
                        retryable: None,
                        retry_after_ms: None,
                        rate_limited: false,
                    })
                    .collect();
                client.ack(AckBatch { acks }).await.map(|answer| (answer, tokens))
            }
            Err(e) => Err(e),
        };
        match acked {
            Ok((answer, tokens)) => {
                let mut ledger = ledger.acked.lock().unwrap();
                for result in answer.results {
                    // A refusal is a lease that ran out meanwhile (a slow moment): not an error.
                    if result.acked.is_some() {
                        ledger.insert(result.job, tokens[&result.job]);
                    }
                }
            }
            Err(e) => {
                assert!(e.is_outcome_unknown(), "raw completer: {e}");
                if !next_life(&mut current, life).await {
                    return;
                }
            }
        }
    }
}

/// One worker per server life (its client knows one address); aborted when the server is killed,
/// so its jobs in hand come back when their leases run out.
fn work(life: u64, client: Client, ledger: Arc<Ledger>) -> tokio::task::JoinHandle<()> {
    let worker = Worker::builder(client)
        .worker_id(format!("load-{life}"))
        .concurrency(16)
        .lease_wait(Duration::from_secs(1))
        .queue("load", move |ctx: JobContext| {
            let ledger = ledger.clone();
            async move {
                ledger.candidates.lock().unwrap().insert(ctx.id());
                Ok(Some(json!({"token": ctx.fencing_token()})))
            }
        })
        .build()
        .unwrap();
    tokio::spawn(async move {
        let _ = worker.run(std::future::pending()).await;
    })
}

/// `kill -9` at seeded random moments while producers enqueue and a worker completes jobs,
/// restarting on the same directory each time: every acknowledged enqueue survives, every job
/// seen completed stays completed and is never leased again, and fencing tokens only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let kills = env_u64("DRAY_E2E_KILLS").unwrap_or(10);
    let seed = env_u64("DRAY_E2E_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("e2e kill9: seed {seed} (replay with DRAY_E2E_SEED={seed}), kills {kills}");
    let mut rng = Rng(seed);

    let mut node = Node::start(&[]).await;
    let ledger = Arc::new(Ledger::default());
    let (current_tx, current) = watch::channel(Some((0, node.client())));
    let mut tasks = Vec::new();
    for producer in 0..2 {
        tasks.push(tokio::spawn(produce(producer, current.clone(), ledger.clone())));
    }
    tasks.push(tokio::spawn(observe(current.clone(), ledger.clone())));
    tasks.push(tokio::spawn(complete_raw(current.clone(), ledger.clone())));
    let mut worker = work(0, node.client(), ledger.clone());
    let started = Instant::now();

    for life in 1..=kills {
        // Load for a random while, then the kill: the moment is the point, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1_200))).await;
        let pid = node.pid();
        node.kill9().await;
        worker.abort();
        eprintln!("e2e kill9: kill {life} (pid {pid}) at {:?}", started.elapsed());
        node.restart().await;
        current_tx.send_replace(Some((life, node.client())));
        worker = work(life, node.client(), ledger.clone());
    }
    // The last life gets load too (all of it when DRAY_E2E_KILLS=0).
    tokio::time::sleep(Duration::from_millis(rng.between(300, 1_200))).await;
    current_tx.send_replace(None);
    for task in tasks {
        tokio::time::timeout(WAIT_MAX, task).await.expect("the load stops").unwrap();
    }
    let load_stopped = started.elapsed();

    // At least once: the last worker gets every job done, those whose leases died with a
    // server included (they come back when their leases run out).
    let client = node.client();
    wait_until("every job completed after the last kill", || async {
        let c = client.queue("load").await.unwrap().counts;
        c.completed > 0 && c.scheduled + c.available + c.running + c.retrying + c.dead + c.cancelled == 0
    })
    .await;
    worker.abort();
    let enqueued = ledger.enqueued.lock().unwrap().clone();
    let observed = ledger.completed.lock().unwrap().clone();
    let unconfirmed = ledger.completed_unconfirmed.lock().unwrap().clone();
    let acked = ledger.acked.lock().unwrap().clone();
    assert!(!enqueued.is_empty() && !observed.is_empty() && !acked.is_empty(), "the load did something");

    // Every job on the server, by pages; then each one whole (payload and history).
    let mut states: BTreeMap<u64, State> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = client
            .jobs(JobQuery { queue: Some("load".into()), after, limit: Some(1_000), ..Default::default() })
            .await
            .unwrap();
        states.extend(page.jobs.iter().map(|j| (j.id, j.state)));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let lost: Vec<u64> = enqueued.keys().filter(|id| !states.contains_key(id)).copied().collect();
    assert!(lost.is_empty(), "{} acknowledged jobs lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(20)]);

    let ids: Vec<u64> = states.keys().copied().collect();
    let mut checks = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(8).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        let (enqueued, observed, unconfirmed, acked) =
            (enqueued.clone(), observed.clone(), unconfirmed.clone(), acked.clone());
        checks.spawn(async move {
            let (mut redelivered, mut undone) = (0u64, 0u64);
            for id in chunk {
                let job = client.job(id).await.unwrap_or_else(|e| panic!("job {id}: {e}"));
                check_history(&job);
                assert_eq!(job.state, State::Completed, "job {id}: {job:#?}");
                redelivered += u64::from(entries(&job, "leased").len() > 1);
                if let Some(payload) = enqueued.get(&id) {
                    assert_eq!(job.payload.get(), payload, "job {id}");
                }
                let done = entries(&job, "completed");
                assert_eq!(done.len(), 1, "job {id}: {:#?}", job.history);
                let token = done[0].fencing_token;
                if let Some(seen) = observed.get(&id) {
                    assert_eq!(token, Some(*seen), "job {id} was seen completed (and confirmed): {:#?}", job.history);
                }
                if let Some(answered) = acked.get(&id) {
                    assert_eq!(token, Some(*answered), "job {id}: its completion was answered 2xx: {:#?}", job.history);
                }
                if let Some(seen) = unconfirmed.get(&id) {
                    // A read showed it completed: that must hold, confirmed or not.
                    assert_eq!(
                        token,
                        Some(*seen),
                        "job {id} was seen completed, then a kill undid it: {:#?}",
                        job.history
                    );
                    undone += u64::from(token != Some(*seen));
                }
            }
            (redelivered, undone)
        });
    }
    let (mut redelivered, mut undone) = (0, 0);
    while let Some(done) = checks.join_next().await {
        let (r, u) = done.unwrap();
        (redelivered, undone) = (redelivered + r, undone + u);
    }
    eprintln!(
        "e2e kill9: seed {seed}: kills {kills} in {load_stopped:?}; jobs acknowledged {}, on the server {} \
         (the rest had an unknown outcome), completed {} (while the load ran: answered 2xx {}, seen and \
         confirmed {}, seen unconfirmed {}, of which undone by a kill {undone}), delivered again after an \
         expired lease {redelivered}; all checked at {:?}",
        enqueued.len(),
        states.len(),
        states.len(),
        acked.len(),
        observed.len(),
        unconfirmed.len(),
        started.elapsed()
    );
    node.stop().await;
}

// ---- 8. bad input -------------------------------------------------------------------------------

/// Bad requests over raw HTTP against the real binary: each gets its status and problem type, the
/// field it names, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    // A small body limit, so the oversized body is cheap; it still fits a batch of 10,001 jobs.
    let mut node = Node::start(&["--body-bytes-max", "1048576"]).await;
    let ok = node.post("/v1/jobs", &json!({"queue": "q", "payload": {"n": 1}})).await;
    assert_eq!(ok.status, 201, "{ok:?}");
    let before = node.raw(Method::GET, "/v1/queues", None).await;
    assert_eq!(before.status, 200);

    let too_many: Vec<Value> = (0..10_001).map(|n| json!({"queue": "q", "payload": n})).collect();
    let too_many = json!({"jobs": too_many}).to_string().into_bytes();
    assert!(too_many.len() < 1_048_576);
    let oversized = format!(r#"{{"queue": "q", "payload": "{}"}}"#, "x".repeat(2 * 1_048_576)).into_bytes();
    let json_of = |v: Value| v.to_string().into_bytes();

    // (case, path, body, status, problem type, field it must name, text the detail must contain)
    type Case = (&'static str, &'static str, Vec<u8>, u16, &'static str, Option<&'static str>, &'static str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", "/v1/jobs", br#"{"queue": "q", "payload": "#.to_vec(), 400, "malformed-json", None, ""),
        ("empty body", "/v1/jobs", Vec::new(), 400, "malformed-json", None, ""),
        (
            "unknown field",
            "/v1/jobs",
            json_of(json!({"queue": "q", "payload": 1, "priorty": 5})),
            422,
            "invalid-request",
            Some("priorty"),
            "priorty",
        ),
        ("oversized body", "/v1/jobs", oversized, 413, "body-too-large", None, "1048576"),
        ("batch over 10,000 jobs", "/v1/jobs/batch", too_many, 422, "invalid-request", Some("jobs"), "10000"),
        (
            "bad queue name",
            "/v1/jobs",
            json_of(json!({"queue": "bad queue!", "payload": 1})),
            422,
            "invalid-request",
            Some("queue"),
            "",
        ),
        (
            "bad queue name in a batch",
            "/v1/jobs/batch",
            json_of(json!({"jobs": [{"queue": "q", "payload": 1}, {"queue": "", "payload": 2}]})),
            422,
            "invalid-request",
            Some("jobs[1].queue"),
            "",
        ),
        (
            "wrong type",
            "/v1/jobs",
            json_of(json!({"queue": "q", "payload": 1, "priority": "high"})),
            422,
            "invalid-request",
            Some("priority"),
            "",
        ),
        ("missing payload", "/v1/jobs", json_of(json!({"queue": "q"})), 422, "invalid-request", Some("payload"), ""),
        ("not an object", "/v1/jobs", json_of(json!([1, 2])), 422, "invalid-request", None, ""),
        (
            "lease too short",
            "/v1/lease",
            json_of(json!({"queues": ["q"], "worker": "w", "lease_ms": 999})),
            422,
            "invalid-request",
            Some("lease_ms"),
            "",
        ),
    ];
    let mut failures = Vec::new();
    let mut too_large = None;
    for (case, path, body, status, kind, field, detail) in cases {
        let answer = if status == 413 {
            // The server closes the connection after a 413 whose body it did not read; it must
            // say so (`Connection: close`) so a keep-alive client does not reuse it.
            let alone = common::http().build().unwrap();
            let answer = node.raw_on(&alone, Method::POST, path, Some(body)).await;
            too_large = Some(answer.connection.clone());
            answer
        } else {
            node.raw(Method::POST, path, Some(body)).await
        };
        let problem: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
        let ok = answer.status == status
            && answer.content_type == "application/problem+json"
            && problem["type"] == format!("urn:dray:problem:{kind}")
            && problem["status"] == status
            && field.is_none_or(|f| problem["field"] == f)
            && problem["detail"].as_str().is_some_and(|d| d.contains(detail));
        if !ok {
            failures.push(format!("{case}: want {status} {kind} field {field:?} detail ~{detail:?}; got {answer:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(too_large, Some(Some("close".to_string())), "a 413 must announce that the connection closes");

    let after = node.raw(Method::GET, "/v1/queues", None).await;
    let (before, after): (QueueList, QueueList) =
        (serde_json::from_str(&before.text).unwrap(), serde_json::from_str(&after.text).unwrap());
    let counts = |list: &QueueList| list.queues.iter().map(|q| (q.name.clone(), q.counts.clone())).collect::<Vec<_>>();
    assert_eq!(counts(&before), counts(&after), "bad requests changed nothing");
    let page = node.raw(Method::GET, "/v1/jobs", None).await.json();
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page:#}");
    node.stop().await;
}
