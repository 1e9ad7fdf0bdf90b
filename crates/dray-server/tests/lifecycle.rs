//! A job's whole life over HTTP, the 409s of stale workers, the dead-letter workflow, queue
//! administration, and restarts that keep every accepted job.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_lease_heartbeat_complete() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = request(
        addr,
        "POST",
        "/v1/jobs",
        &[("traceparent", tp)],
        br#"{"queue":"emails","payload":{"to":"a@example.com", "n": [1, 2]},"priority":5,"tags":["t1"]}"#,
    )
    .await
    .expect(201);
    let enqueued = reply.value();
    assert_eq!(enqueued["state"], "available");
    assert_eq!(enqueued["duplicate"], false);
    let id = enqueued["id"].as_u64().unwrap();

    let jobs = lease(addr, "emails", 10).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["id"], id);
    assert_eq!(job["payload"], json!({"to": "a@example.com", "n": [1, 2]}));
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["traceparent"], tp, "the header fills the field");
    assert!(job["lease_ms"].as_u64().unwrap() > 0);
    let lease_id = job["lease_id"].as_str().unwrap().to_string();

    let beat = post(
        addr,
        &format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_id": lease_id, "extend_ms": 60_000, "progress": {"done": 1}, "checkpoint": {"page": 2}}),
    )
    .await
    .expect(200)
    .value();
    assert_eq!(beat["cancel_requested"], false);
    assert!(beat["lease_ms"].as_u64().unwrap() > 30_000);

    let done = post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": lease_id, "result": {"ok": true}}))
        .await
        .expect(200)
        .value();
    assert_eq!(done["state"], "completed");

    let job = get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value();
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"], json!({"ok": true}));
    assert_eq!(job["checkpoint"], json!({"page": 2}));
    assert_eq!(job["tags"], json!(["t1"]));
    let events: Vec<&str> = job["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["enqueued", "leased", "completed"]);

    let page = get(addr, "/v1/jobs?queue=emails&state=completed").await.expect(200).value();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let queue = get(addr, "/v1/queues/emails").await.expect(200).value();
    assert_eq!(queue["counts"]["completed"], 1);
    assert!(lease(addr, "emails", 10).await.is_empty(), "a completed job is never delivered again");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_conflicts_by_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let job = json!({"queue": "q", "payload": {"a": 1}, "idempotency_key": "k1"});
    let first = post(addr, "/v1/jobs", job.clone()).await.expect(201).value();
    let again = post(addr, "/v1/jobs", job).await.expect(200).value();
    assert_eq!((again["id"].clone(), again["duplicate"].clone()), (first["id"].clone(), json!(true)));
    let before = state(addr).await;
    let p = post(addr, "/v1/jobs", json!({"queue": "q", "payload": {"a": 2}, "idempotency_key": "k1"}))
        .await
        .expect(409)
        .problem();
    assert_eq!(p.kind, "urn:dray:problem:idempotency-conflict");
    assert_eq!(p.field.as_deref(), Some("idempotency_key"));
    assert_eq!(p.job, first["id"].as_u64());
    let p = post(
        addr,
        "/v1/jobs/batch",
        json!({"jobs": [{"queue": "q", "payload": 3}, {"queue": "q", "payload": {"a": 2}, "idempotency_key": "k1"}]}),
    )
    .await
    .expect(409)
    .problem();
    assert_eq!(p.field.as_deref(), Some("jobs[1].idempotency_key"));
    assert_eq!(state(addr).await, before, "a refused batch inserts nothing");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_gets_409_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "q", json!(1)).await;
    let jobs = lease(addr, "q", 1).await;
    let real = jobs[0]["lease_id"].as_str().unwrap().to_string();
    let stale = if real == "0000000000000001" { "0000000000000002" } else { "0000000000000001" };

    let before = state(addr).await;
    for (path, body) in [
        ("complete", json!({"lease_id": stale})),
        ("fail", json!({"lease_id": stale, "error": "boom"})),
        ("heartbeat", json!({"lease_id": stale})),
    ] {
        let p = post(addr, &format!("/v1/jobs/{id}/{path}"), body).await.expect(409).problem();
        assert_eq!(p.kind, "urn:dray:problem:stale-lease", "{path}");
        assert_eq!(p.job, Some(id));
    }
    let batch = post(addr, "/v1/ack", json!({"acks": [{"job": id, "lease_id": stale, "outcome": "complete"}]}))
        .await
        .expect(200)
        .value();
    assert_eq!(batch["results"][0]["problem"]["type"], "urn:dray:problem:stale-lease");
    assert_eq!(batch["results"][0]["problem"]["status"], 409);
    assert_eq!(state(addr).await, before, "stale acks change nothing");

    // The real lease still works.
    post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": real})).await.expect(200);
    let p = post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": real})).await.expect(409).problem();
    assert_eq!(p.job, Some(id));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_acks_cancel_and_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let jobs: Vec<Value> = (0..5).map(|i| json!({"queue": "work", "payload": {"i": i}})).collect();
    let batch = post(addr, "/v1/jobs/batch", json!({ "jobs": jobs })).await.expect(201).value();
    let ids: Vec<u64> = batch["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 5);

    // Cancel a waiting job at once.
    let cancelled = post(addr, &format!("/v1/jobs/{}/cancel", ids[4]), json!({})).await.expect(200).value();
    assert_eq!(cancelled["state"], "cancelled");

    let leased = lease(addr, "work", 10).await;
    assert_eq!(leased.len(), 4);
    let acks: Vec<Value> = leased
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let (job, lease_id) = (j["id"].clone(), j["lease_id"].clone());
            match i {
                0 | 1 => json!({"job": job, "lease_id": lease_id, "outcome": "complete", "result": i}),
                _ => {
                    json!({"job": job, "lease_id": lease_id, "outcome": "fail", "error": "poison", "retryable": false})
                }
            }
        })
        .collect();
    let results = post(addr, "/v1/ack", json!({ "acks": acks })).await.expect(200).value();
    let states: Vec<&str> =
        results["results"].as_array().unwrap().iter().map(|r| r["acked"]["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["completed", "completed", "dead", "dead"]);

    let dead = get(addr, "/v1/dead?queue=work").await.expect(200).value();
    let dead_ids: Vec<u64> = dead["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_u64().unwrap()).collect();
    assert_eq!(dead_ids.len(), 2);
    assert!(dead["jobs"].as_array().unwrap().iter().all(|j| j["dead_reason"] == "non_retryable"));
    assert_eq!(get(addr, "/v1/queues/work").await.expect(200).value()["counts"]["dead"], 2);

    let dry = post(addr, "/v1/dead/redrive", json!({"queue": "work", "dry_run": true})).await.expect(200).value();
    assert_eq!((dry["count"].clone(), dry["dry_run"].clone()), (json!(2), json!(true)));
    assert_eq!(get(addr, "/v1/queues/work").await.value()["counts"]["dead"], 2, "a dry run changes nothing");

    let redriven = post(addr, "/v1/dead/redrive", json!({"ids": [dead_ids[0]]})).await.expect(200).value();
    assert_eq!(redriven["ids"], json!([dead_ids[0]]));
    let again = lease(addr, "work", 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["id"], dead_ids[0]);
    assert_eq!(again[0]["attempt"], 1, "a redrive gives a fresh budget of attempts");

    let discarded = post(addr, "/v1/dead/discard", json!({"ids": [dead_ids[1]]})).await.expect(200).value();
    assert_eq!(discarded["count"], 1);
    get(addr, &format!("/v1/jobs/{}", dead_ids[1])).await.expect(404).problem();
    // Redriving a job that is not dead is refused and changes nothing.
    let p = post(addr, "/v1/dead/redrive", json!({"ids": [ids[0]]})).await.expect(409).problem();
    assert_eq!(p.kind, "urn:dray:problem:not-allowed");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_configuration_pause_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    get(addr, "/v1/queues/reports").await.expect(404).problem();
    post(addr, "/v1/queues/reports/pause", json!({})).await.expect(404).problem();

    let q = put(addr, "/v1/queues/reports", json!({"attempts_max": 3, "lease_ms": 5_000})).await.expect(200).value();
    assert_eq!(
        (q["attempts_max"].clone(), q["lease_ms"].clone(), q["paused"].clone()),
        (json!(3), json!(5_000), json!(false))
    );
    let q = put(addr, "/v1/queues/reports", json!({"backoff": {"base_ms": 10, "factor": 3.0, "cap_ms": 1000}}))
        .await
        .expect(200)
        .value();
    assert_eq!(q["attempts_max"], 3, "a new backoff keeps the attempts");

    post(addr, "/v1/queues/reports/pause", json!({})).await.expect(200);
    let id = enqueue(addr, "reports", json!("r")).await;
    assert!(lease(addr, "reports", 1).await.is_empty(), "a paused queue leases nothing");
    let q = post(addr, "/v1/queues/reports/resume", json!({})).await.expect(200).value();
    assert_eq!(q["paused"], false);
    assert_eq!(q["counts"]["available"], 1);
    let leased = lease(addr, "reports", 1).await;
    assert_eq!(leased[0]["id"], id);
    assert_eq!(leased[0]["attempts_max"], 3);

    let list = get(addr, "/v1/queues").await.expect(200).value();
    assert_eq!(list["queues"].as_array().unwrap().len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_accepted_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let single = enqueue(addr, "keep", json!({"n": 0})).await;
    let jobs: Vec<Value> = (1..=50).map(|n| json!({"queue": "keep", "payload": {"n": n}})).collect();
    post(addr, "/v1/jobs/batch", json!({ "jobs": jobs })).await.expect(201);
    let leased = lease(addr, "keep", 2).await;
    post(addr, &format!("/v1/jobs/{}/complete", leased[0]["id"]), json!({"lease_id": leased[0]["lease_id"]}))
        .await
        .expect(200);
    let before = state(addr).await;
    server.shutdown().await.unwrap();

    let server = start(dir.path()).await;
    let addr = server.addr;
    assert_eq!(state(addr).await, before);
    let job = get(addr, &format!("/v1/jobs/{single}")).await.expect(200).value();
    assert_eq!(job["payload"], json!({"n": 0}));
    let q = get(addr, "/v1/queues/keep").await.expect(200).value();
    assert_eq!(
        (q["counts"]["available"].clone(), q["counts"]["running"].clone(), q["counts"]["completed"].clone()),
        (json!(49), json!(1), json!(1))
    );
    server.shutdown().await.unwrap();
}

/// The default body limit fits the largest batches the store accepts: 10,000 small jobs, and
/// 16 MiB of payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batches_fit_the_default_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let many: Vec<Value> = (0..10_000).map(|i| json!({"queue": "many", "payload": {"i": i}, "tags": ["t"]})).collect();
    let reply = post(addr, "/v1/jobs/batch", json!({ "jobs": many })).await.expect(201).value();
    assert_eq!(reply["jobs"].as_array().unwrap().len(), 10_000);

    // Each payload is a JSON string of exactly 1 MiB (quotes included): 16 MiB in all.
    let big = "x".repeat(1024 * 1024 - 2);
    let heavy: Vec<Value> = (0..16).map(|_| json!({"queue": "heavy", "payload": big})).collect();
    let reply = post(addr, "/v1/jobs/batch", json!({ "jobs": heavy })).await.expect(201).value();
    assert_eq!(reply["jobs"].as_array().unwrap().len(), 16);
    let q = get(addr, "/v1/queues/heavy").await.expect(200).value();
    assert_eq!(q["counts"]["available"], 16);
    server.shutdown().await.unwrap();
}
