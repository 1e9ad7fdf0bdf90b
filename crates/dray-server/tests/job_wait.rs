//! Waiting for a job to finish, `GET /v1/jobs/{id}?wait_ms=`: woken by a completion, a cancel, a
//! dead letter (failure or lease expiry); the job as it is when the wait runs out; finished and
//! missing jobs answered at once; `wait_ms` out of range refused naming the field and the limit;
//! a client that hangs up leaves no waiter; shutdown answers; and in PostgreSQL mode a job
//! completed through another node wakes a waiter on this one.
//!
//! Waits that should end early ask for 30 s and must answer within [`PROMPT`]: a missed wake-up
//! fails the test instead of passing late, and a slow machine has twenty seconds of margin.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Longer than any prompt answer can take; far shorter than the 30 s the waits ask for.
const PROMPT: Duration = Duration::from_secs(20);

/// Waits (without sleeping) until `server` has `n` requests waiting for jobs.
async fn until_waiting(server: &dray_server::Running, n: usize) {
    while server.job_waiting() != n {
        tokio::task::yield_now().await;
    }
}

/// `GET /v1/jobs/{id}?wait_ms=` in the background; its answer arrives on the channel.
fn wait_for(addr: SocketAddr, id: u64, wait_ms: u64) -> oneshot::Receiver<Reply> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(get(addr, &format!("/v1/jobs/{id}?wait_ms={wait_ms}")).await);
    });
    rx
}

/// The answer of a wait that must end before its `wait_ms`: within [`PROMPT`].
async fn prompt(answer: oneshot::Receiver<Reply>) -> Value {
    let reply = tokio::time::timeout(PROMPT, answer).await.expect("the wait answered before its end").unwrap();
    reply.expect(200).value()
}

/// Enqueues a job into `queue` and leases it; returns its id and lease id.
async fn running(addr: SocketAddr, queue: &str, job: Value) -> (u64, String) {
    let mut body = json!({"queue": queue, "payload": {}});
    body.as_object_mut().unwrap().extend(job.as_object().unwrap().clone());
    let id = post(addr, "/v1/jobs", body).await.expect(201).value()["id"].as_u64().unwrap();
    let leased = lease(addr, queue, 1).await;
    assert_eq!(leased[0]["id"], id);
    (id, leased[0]["lease_id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_wakes_a_waiter_with_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (id, lease_id) = running(addr, "thumbs", json!({})).await;
    let mut answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    assert!(answer.try_recv().is_err(), "no answer while the job runs");

    let result = json!({"url": "https://example.com/cat-200.png"});
    post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease_id, "result": result})).await.expect(200);
    let job = prompt(answer).await;
    assert_eq!((&job["id"], &job["state"], &job["result"]), (&json!(id), &json!("completed"), &result));
    assert_eq!(server.job_waiting(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_wakes_every_waiter_of_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (a, lease_a) = running(addr, "acks", json!({})).await;
    let (b, lease_b) = running(addr, "acks", json!({"attempts_max": 1})).await;
    let answers = [wait_for(addr, a, 30_000), wait_for(addr, a, 30_000), wait_for(addr, b, 30_000)];
    until_waiting(&server, 3).await;
    let acks = json!({"acks": [
        {"job": a, "lease_id": lease_a, "outcome": "complete", "result": 1},
        {"job": b, "lease_id": lease_b, "outcome": "fail", "error": "boom"},
    ]});
    post(addr, "/v1/ack", acks).await.expect(200);
    let [first, second, third] = answers;
    assert_eq!(prompt(first).await["state"], "completed");
    assert_eq!(prompt(second).await["result"], 1);
    let dead = prompt(third).await;
    assert_eq!((&dead["state"], &dead["last_error"]), (&json!("dead"), &json!("boom")));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_answers_with_the_job_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (id, _lease) = running(addr, "slow", json!({})).await;
    // The one wall-clock wait here: the wait's own bound, kept small.
    let job = get(addr, &format!("/v1/jobs/{id}?wait_ms=50")).await.expect(200).value();
    assert_eq!(job["state"], "running");
    assert_eq!(job["lease"]["worker"], "w1");
    assert_eq!(server.job_waiting(), 0, "the wait is over: nothing left behind");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_and_missing_jobs_answer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (id, lease_id) = running(addr, "done", json!({})).await;
    post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease_id})).await.expect(200);
    // The longest wait there is: an answer within PROMPT can only be the immediate one.
    let answer = wait_for(addr, id, 60_000);
    assert_eq!(prompt(answer).await["state"], "completed");

    let cancelled = enqueue(addr, "done", json!({})).await;
    post(addr, &format!("/v1/jobs/{cancelled}/cancel"), json!({})).await.expect(200);
    assert_eq!(prompt(wait_for(addr, cancelled, 60_000)).await["state"], "cancelled");

    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move { tx.send(get(addr, "/v1/jobs/987654?wait_ms=60000").await) });
    let reply = tokio::time::timeout(PROMPT, rx).await.expect("a missing job answers at once").unwrap();
    let problem = reply.expect(404).problem();
    assert_eq!((problem.kind.as_str(), problem.job), ("urn:dray:problem:job-not-found", Some(987_654)));
    assert_eq!(server.job_waiting(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_wakes_its_waiters_waiting_or_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // A waiting job: cancelled at once.
    let id = enqueue(addr, "cancel", json!({})).await;
    let answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    post(addr, &format!("/v1/jobs/{id}/cancel"), json!({})).await.expect(200);
    assert_eq!(prompt(answer).await["state"], "cancelled");

    // A running job: the cancel only asks; the attempt's failure then ends it cancelled.
    let (id, lease_id) = running(addr, "cancel", json!({})).await;
    let mut answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    let asked = post(addr, &format!("/v1/jobs/{id}/cancel"), json!({})).await.expect(200).value();
    assert_eq!(asked["state"], "running");
    assert!(answer.try_recv().is_err(), "still running: the waiter keeps waiting");
    post(addr, &format!("/v1/jobs/{id}/fail"), json!({"lease_id": lease_id, "error": "stopped"})).await.expect(200);
    let job = prompt(answer).await;
    assert_eq!((&job["state"], &job["cancel_requested"]), (&json!("cancelled"), &json!(true)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_wakes_its_waiters_by_failure_or_lease_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // A failure that is not retryable.
    let (id, lease_id) = running(addr, "dlq", json!({})).await;
    let answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    let fail = json!({"lease_id": lease_id, "error": "bad input", "retryable": false});
    post(addr, &format!("/v1/jobs/{id}/fail"), fail).await.expect(200);
    let job = prompt(answer).await;
    assert_eq!((&job["state"], &job["dead_reason"]), (&json!("dead"), &json!("non_retryable")));

    // The last attempt's lease expires (1 s, the shortest): maintenance dead-letters the job.
    let (id, _lease) = running(addr, "dlq", json!({"attempts_max": 1, "lease_ms": 1000})).await;
    let answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    let job = prompt(answer).await;
    assert_eq!((&job["state"], &job["dead_reason"]), (&json!("dead"), &json!("lease_expired")));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ms_out_of_range_is_refused_naming_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "bad", json!({})).await;
    let cases = [
        ("wait_ms=60001", "wait_ms", "60000 ms"),
        ("wait_ms=-1", "wait_ms", "query string"),
        ("wait_ms=soon", "wait_ms", "query string"),
        ("wait_ms=99999999999999999999999", "wait_ms", "query string"),
        ("wait=5", "wait", "unknown field"),
    ];
    for (query, field, says) in cases {
        let reply = get(addr, &format!("/v1/jobs/{id}?{query}")).await;
        assert_eq!(reply.status, 422, "{query}: {}", String::from_utf8_lossy(&reply.body));
        let problem = reply.problem();
        assert_eq!(problem.field.as_deref(), Some(field), "{query}: {problem:?}");
        assert!(problem.detail.contains(says), "{query}: {problem:?}");
    }
    // In range, including the bound and no wait at all.
    assert_eq!(get(addr, &format!("/v1/jobs/{id}?wait_ms=0")).await.expect(200).value()["id"], id);
    assert_eq!(get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value()["state"], "available");
    server.shutdown().await.unwrap();
}

/// A client that hangs up while waiting leaves nothing behind: its request is dropped with the
/// connection, and the registry forgets the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_leaves_no_waiter() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "gone", json!({})).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = request_head("GET", &format!("/v1/jobs/{id}?wait_ms=30000"), &[], 0);
        stream.write_all(head.as_bytes()).await.unwrap();
        streams.push(stream);
    }
    until_waiting(&server, 3).await;
    drop(streams);
    until_waiting(&server, 0).await;
    // Nothing stale answers a later wait: it waits and is woken like any other.
    let answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    post(addr, &format!("/v1/jobs/{id}/cancel"), json!({})).await.expect(200);
    assert_eq!(prompt(answer).await["state"], "cancelled");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_requests_with_the_job_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "stop", json!({})).await;
    let answer = wait_for(addr, id, 30_000);
    until_waiting(&server, 1).await;
    server.shutdown().await.unwrap();
    assert_eq!(prompt(answer).await["state"], "available");
}

/// PostgreSQL mode, two nodes on one schema: a job completed through node B wakes a request
/// waiting on node A, which B's handlers never reach (A reads the job again every 250 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_job_completed_on_another_node_wakes_a_waiter() {
    let db = TestDb::create().await;
    let node = || dray_server::start(dray_server::Config::for_test_postgres(dray_server::PostgresConfig::new(&db.url)));
    let a = node().await.unwrap();
    let b = node().await.unwrap();
    let id = enqueue(a.addr, "pgwait", json!({"n": 1})).await;
    let leased = lease(b.addr, "pgwait", 1).await;
    assert_eq!(leased[0]["id"], id);
    let mut answer = wait_for(a.addr, id, 30_000);
    until_waiting(&a, 1).await;
    assert!(answer.try_recv().is_err(), "no answer while the job runs");

    let lease_id = leased[0]["lease_id"].as_str().unwrap();
    let result = json!({"total": 42});
    post(b.addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease_id, "result": result})).await.expect(200);
    let job = prompt(answer).await;
    assert_eq!((&job["state"], &job["result"]), (&json!("completed"), &result));
    assert_eq!(a.job_waiting(), 0);

    // And a local completion on A still wakes A's waiter (through the observer, at once).
    let id = enqueue(a.addr, "pgwait", json!({"n": 2})).await;
    let leased = lease(a.addr, "pgwait", 1).await;
    let answer = wait_for(a.addr, id, 30_000);
    until_waiting(&a, 1).await;
    let lease_id = leased[0]["lease_id"].as_str().unwrap();
    post(a.addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease_id})).await.expect(200);
    assert_eq!(prompt(answer).await["state"], "completed");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
