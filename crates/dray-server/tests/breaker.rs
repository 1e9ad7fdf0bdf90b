//! A queue's circuit breaker over HTTP (issue #11): configured with `PUT /v1/queues/{name}`
//! (refusals name the field), shown in `GET /v1/queues/{name}` and the queue list, opened by
//! failures reported by several workers, forced open and closed with
//! `POST /v1/queues/{name}/breaker`.

mod common;

use common::*;
use serde_json::json;

const BREAKER: &str =
    r#"{"failure_ratio": 0.5, "window_ms": 60000, "min_attempts": 4, "open_ms": 3600000, "probes": 2}"#;

async fn lease_as(addr: std::net::SocketAddr, queue: &str, worker: &str, count: usize) -> Vec<serde_json::Value> {
    let reply = post(addr, "/v1/lease", json!({ "queues": [queue], "worker": worker, "count": count })).await;
    reply.expect(200).value()["jobs"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_failures_from_several_workers_and_operators_force_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let breaker: serde_json::Value = serde_json::from_str(BREAKER).unwrap();

    let bad =
        json!({"breaker": {"failure_ratio": 1.5, "window_ms": 60000, "min_attempts": 4, "open_ms": 1000, "probes": 2}});
    let p = put(addr, "/v1/queues/pay", bad).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("breaker.failure_ratio"), "{}", p.detail);
    let bad = json!({"breaker": {"failure_ratio": 0.5, "window_ms": 60000, "min_attempts": 4, "open_ms": 1000}});
    put(addr, "/v1/queues/pay", bad).await.expect(422);

    let queue = put(addr, "/v1/queues/pay", json!({ "breaker": breaker })).await.expect(200).value();
    let b = &queue["breaker"];
    assert_eq!((b["state"].as_str(), b["forced"].as_bool()), (Some("closed"), Some(false)), "{queue:#}");
    assert_eq!(b["failure_ratio"], 0.5);
    assert_eq!(b["probes"], 2);

    for n in 0..6 {
        enqueue(addr, "pay", json!({ "n": n })).await;
    }
    // Two workers, two failures each: the server counts them all towards one breaker.
    for worker in ["w1", "w2"] {
        for job in lease_as(addr, "pay", worker, 2).await {
            let id = job["id"].as_u64().unwrap();
            let body = json!({"lease_id": job["lease_id"], "error": "gateway down", "retryable": true});
            post(addr, &format!("/v1/jobs/{id}/fail"), body).await.expect(200);
        }
    }
    let queue = get(addr, "/v1/queues/pay").await.expect(200).value();
    let b = &queue["breaker"];
    assert_eq!(b["state"], "open", "{queue:#}");
    assert_eq!(b["transitions"]["open"], 1);
    assert!(b["half_open_at"].is_string(), "{queue:#}");
    assert!(lease_as(addr, "pay", "w3", 10).await.is_empty(), "an open breaker leases nothing");
    let listed = get(addr, "/v1/queues").await.expect(200).value();
    assert_eq!(listed["queues"][0]["breaker"]["state"], "open");

    let queue = post(addr, "/v1/queues/pay/breaker", json!({"action": "close"})).await.expect(200).value();
    assert_eq!(queue["breaker"]["state"], "closed", "{queue:#}");
    assert_eq!(lease_as(addr, "pay", "w3", 2).await.len(), 2, "leases flow again");

    let queue = post(addr, "/v1/queues/pay/breaker", json!({"action": "open"})).await.expect(200).value();
    assert_eq!((queue["breaker"]["state"].as_str(), queue["breaker"]["forced"].as_bool()), (Some("open"), Some(true)));
    assert!(lease_as(addr, "pay", "w3", 10).await.is_empty());

    post(addr, "/v1/queues/pay/breaker", json!({"action": "wobble"})).await.expect(422);
    enqueue(addr, "plain", json!({})).await;
    let p = post(addr, "/v1/queues/plain/breaker", json!({"action": "open"})).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("breaker"), "{}", p.detail);
    post(addr, "/v1/queues/nowhere/breaker", json!({"action": "open"})).await.expect(404);

    let queue = put(addr, "/v1/queues/pay", json!({ "breaker": null })).await.expect(200).value();
    assert!(queue.get("breaker").is_none(), "{queue:#}");
    enqueue(addr, "pay", json!({ "n": "after" })).await;
    assert!(!lease_as(addr, "pay", "w3", 10).await.is_empty(), "without a breaker the queue leases");
}
