//! Long-poll leasing: a waiting worker gets a job the moment one is enqueued, an empty answer when
//! none comes within its wait, and an answer at once when the server shuts down.

mod common;

use common::*;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Waits (without sleeping) until the server has `n` lease requests long-polling.
async fn until_waiting(server: &dray_server::Running, n: usize) {
    while server.lease_waiting() != n {
        tokio::task::yield_now().await;
    }
}

/// Starts a long-poll in the background; its answer arrives on the channel.
fn lease_waiting(addr: std::net::SocketAddr, queues: Value, wait_ms: u64) -> oneshot::Receiver<Reply> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let reply = post(addr, "/v1/lease", json!({"queues": queues, "worker": "w", "wait_ms": wait_ms})).await;
        let _ = tx.send(reply);
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_wakes_a_waiting_lease_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // Far longer than the test may take: the answer can only come from the enqueue.
    let mut answer = lease_waiting(addr, json!(["other", "mail"]), 30_000);
    until_waiting(&server, 1).await;
    assert!(answer.try_recv().is_err(), "no answer before a job exists");

    let id = enqueue(addr, "mail", json!({"to": "x"})).await;
    let reply = answer.await.unwrap().expect(200).value();
    let jobs = reply["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id);
    assert_eq!(server.lease_waiting(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_wakes_every_waiter_it_can_serve() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let first = lease_waiting(addr, json!(["a"]), 30_000);
    let second = lease_waiting(addr, json!(["b"]), 30_000);
    until_waiting(&server, 2).await;
    post(addr, "/v1/jobs/batch", json!({"jobs": [{"queue": "a", "payload": 1}, {"queue": "b", "payload": 2}]}))
        .await
        .expect(201);
    let a = first.await.unwrap().expect(200).value();
    let b = second.await.unwrap().expect(200).value();
    assert_eq!((a["jobs"][0]["payload"].clone(), b["jobs"][0]["payload"].clone()), (json!(1), json!(2)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_queue_wakes_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    put(addr, "/v1/queues/held", json!({"paused": true})).await.expect(200);
    let id = enqueue(addr, "held", json!(1)).await;
    let answer = lease_waiting(addr, json!(["held"]), 30_000);
    until_waiting(&server, 1).await;
    post(addr, "/v1/queues/held/resume", json!({})).await.expect(200);
    let reply = answer.await.unwrap().expect(200).value();
    assert_eq!(reply["jobs"][0]["id"], id);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_reaches_a_waiter_through_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let answer = lease_waiting(addr, json!(["later"]), 30_000);
    until_waiting(&server, 1).await;
    // Due shortly: maintenance promotes it and wakes the waiter (the enqueue itself does not).
    let reply = post(addr, "/v1/jobs", json!({"queue": "later", "payload": 1, "delay_ms": 20})).await.expect(201);
    assert_eq!(reply.value()["state"], "scheduled");
    let reply = answer.await.unwrap().expect(200).value();
    assert_eq!(reply["jobs"][0]["payload"], 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_within_the_wait_returns_empty() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // The one wall-clock wait in these tests: the long-poll's own bound, kept tiny.
    let reply = post(addr, "/v1/lease", json!({"queues": ["idle"], "worker": "w", "wait_ms": 20})).await.expect(200);
    assert_eq!(reply.value(), json!({"jobs": []}));
    assert_eq!(server.lease_waiting(), 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_leases_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let answer = lease_waiting(addr, json!(["q"]), 30_000);
    until_waiting(&server, 1).await;
    server.shutdown().await.unwrap();
    let reply = answer.await.unwrap().expect(200);
    assert_eq!(reply.value(), json!({"jobs": []}));
}

/// A worker that hangs up while waiting must not take a job with it: its request is dropped (and
/// stops waiting) when the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_hangs_up_stops_waiting() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let body = json!({"queues": ["q"], "worker": "w", "wait_ms": 30_000}).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request_head("POST", "/v1/lease", &[], body.len()).as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    until_waiting(&server, 1).await;
    drop(stream);
    until_waiting(&server, 0).await;
    let id = enqueue(addr, "q", json!(1)).await;
    assert_eq!(lease(addr, "q", 1).await[0]["id"], id, "the job is still there for a live worker");
    server.shutdown().await.unwrap();
}
