//! Job dependencies over HTTP: a graph submitted in one batch with client keys, `blocked` until
//! its dependencies complete, the lease carrying their results, a failure cascading as a cancel
//! with its reason, and refusals naming the field.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

async fn complete(addr: SocketAddr, leased: &Value, result: Value) {
    let id = leased["id"].as_u64().unwrap();
    let body = json!({"lease_id": leased["lease_id"], "result": result});
    post(addr, &format!("/v1/jobs/{id}/complete"), body).await.expect(200);
}

async fn job(addr: SocketAddr, id: u64) -> Value {
    get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_in_one_batch_runs_in_dependency_order_with_results() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let body = json!({"jobs": [
        {"queue": "invoice", "payload": {"step": "invoice"}, "depends_on": ["a", "b"]},
        {"queue": "items", "payload": {"item": 1}, "key": "a"},
        {"queue": "items", "payload": {"item": 2}, "key": "b"},
    ]});
    let jobs = post(addr, "/v1/jobs/batch", body).await.expect(201).value()["jobs"].clone();
    let states: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["blocked", "available", "available"]);
    let (invoice, a, b) =
        (jobs[0]["id"].as_u64().unwrap(), jobs[1]["id"].as_u64().unwrap(), jobs[2]["id"].as_u64().unwrap());
    let shown = job(addr, invoice).await;
    assert_eq!(shown["depends_on"], json!([a, b]));
    assert_eq!(shown["on_dependency_failure"], "cancel");
    assert!(lease(addr, "invoice", 1).await.is_empty(), "blocked jobs are not leased");

    let items = lease(addr, "items", 2).await;
    complete(addr, &items[0], json!({"total": 10})).await;
    assert_eq!(job(addr, invoice).await["state"], "blocked");
    complete(addr, &items[1], json!({"total": 32})).await;
    assert_eq!(job(addr, invoice).await["state"], "available");

    let leased = lease(addr, "invoice", 1).await;
    assert_eq!(leased[0]["id"], invoice);
    assert_eq!(
        leased[0]["dependencies"],
        json!([
            {"id": a, "state": "completed", "result": {"total": 10}},
            {"id": b, "state": "completed", "result": {"total": 32}},
        ])
    );
    let events: Vec<String> = job(addr, invoice).await["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["enqueued", "released", "leased"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dependency_cancels_its_dependents_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let charge = enqueue(addr, "charge", json!({})).await;
    let body = json!({"jobs": [
        {"queue": "ship", "payload": {}, "depends_on": [charge], "key": "ship"},
        {"queue": "notify", "payload": {}, "depends_on": ["ship"]},
        {"queue": "audit", "payload": {}, "depends_on": [charge], "on_dependency_failure": "run"},
    ]});
    let jobs = post(addr, "/v1/jobs/batch", body).await.expect(201).value()["jobs"].clone();
    let id = |i: usize| jobs[i]["id"].as_u64().unwrap();
    let leased = lease(addr, "charge", 1).await;
    let fail = json!({"lease_id": leased[0]["lease_id"], "error": "card declined", "retryable": false});
    post(addr, &format!("/v1/jobs/{charge}/fail"), fail).await.expect(200);

    let ship = job(addr, id(0)).await;
    assert_eq!(ship["state"], "cancelled");
    assert_eq!(ship["last_error"], format!("dependency {charge} ended dead"));
    let notify = job(addr, id(1)).await;
    assert_eq!(notify["state"], "cancelled", "the cancel cascades");
    assert_eq!(notify["last_error"], format!("dependency {} ended cancelled", id(0)));
    let audit = lease(addr, "audit", 1).await;
    assert_eq!(audit[0]["dependencies"], json!([{"id": charge, "state": "dead"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependencies_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let cases = [
        (json!({"jobs": [{"queue": "q", "payload": {}, "depends_on": ["nope"]}]}), "jobs[0].depends_on[0]"),
        (json!({"jobs": [{"queue": "q", "payload": {}, "depends_on": [987654321]}]}), "jobs[0].depends_on[0]"),
        (
            json!({"jobs": [
                {"queue": "q", "payload": {}, "key": "a", "depends_on": ["b"]},
                {"queue": "q", "payload": {}, "key": "b", "depends_on": ["a"]},
            ]}),
            "jobs[0].depends_on",
        ),
        (
            json!({"jobs": [{"queue": "q", "payload": {}, "key": "a"}, {"queue": "q", "payload": {}, "key": "a"}]}),
            "jobs[1].key",
        ),
    ];
    for (body, field) in cases {
        let problem = post(addr, "/v1/jobs/batch", body.clone()).await.expect(422).problem();
        assert_eq!(problem.field.as_deref(), Some(field), "{body}");
    }
    let single = json!({"queue": "q", "payload": {}, "depends_on": ["a"]});
    let problem = post(addr, "/v1/jobs", single).await.expect(422).problem();
    assert_eq!(problem.field.as_deref(), Some("depends_on[0]"));
    assert!(lease(addr, "q", 10).await.is_empty(), "nothing refused was inserted");
}
