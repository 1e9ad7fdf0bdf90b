//! Ordering keys over HTTP (issue #11): jobs sharing a key are leased one at a time in enqueue
//! order, and the queue's `ordering_dead` is set with `PUT /v1/queues/{name}` (an unknown value
//! is a 422 naming the field).

mod common;

use common::*;
use serde_json::json;

async fn enqueue_keyed(addr: std::net::SocketAddr, queue: &str, key: &str, priority: i64) -> u64 {
    let body = json!({"queue": queue, "payload": {}, "ordering_key": key, "priority": priority});
    post(addr, "/v1/jobs", body).await.expect(201).value()["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_jobs_lease_one_at_a_time_and_ordering_dead_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    let queue = get(addr, "/v1/queues/orders").await;
    assert_eq!(queue.status, 404, "no queue before its first job");
    let a = enqueue_keyed(addr, "orders", "customer-7", 0).await;
    let b = enqueue_keyed(addr, "orders", "customer-7", 9).await;
    let queue = get(addr, "/v1/queues/orders").await.expect(200).value();
    assert_eq!(queue["ordering_dead"], "block", "the default");

    let leased = lease(addr, "orders", 10).await;
    let ids: Vec<u64> = leased.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![a], "b waits for a despite its priority");
    post(addr, &format!("/v1/jobs/{a}/complete"), json!({"lease_id": leased[0]["lease_id"]})).await.expect(200);
    let leased = lease(addr, "orders", 10).await;
    assert_eq!(leased[0]["id"].as_u64(), Some(b));

    let queue = put(addr, "/v1/queues/orders", json!({"ordering_dead": "skip"})).await.expect(200).value();
    assert_eq!(queue["ordering_dead"], "skip");
    let queue = put(addr, "/v1/queues/orders", json!({"paused": false})).await.expect(200).value();
    assert_eq!(queue["ordering_dead"], "skip", "a change to another field keeps it");

    let p = put(addr, "/v1/queues/orders", json!({"ordering_dead": "later"})).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("ordering_dead"), "{}", p.detail);
    assert_eq!(get(addr, "/v1/queues/orders").await.expect(200).value()["ordering_dead"], "skip");
}
