//! Queue payload schemas over HTTP (issue #10): set with `PUT /v1/queues/{name}`, checked at
//! enqueue (422 naming the failing JSON pointer) and at redrive (a job that no longer matches
//! stays dead with reason `rejected`), kept across a restart, removed with `null`.

mod common;

use common::*;
use serde_json::{Value, json};

fn invoice_schema() -> Value {
    json!({
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "integer", "minimum": 1}, "lines": {"type": "array", "items": {"type": "string"}}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_checked_against_the_queue_schema() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    // A job from before the schema, that will not match it, dies.
    let old = enqueue(addr, "invoices", json!({"amount": "12"})).await;
    let leased = lease(addr, "invoices", 1).await;
    post(
        addr,
        &format!("/v1/jobs/{old}/fail"),
        json!({"lease_id": leased[0]["lease_id"], "error": "boom", "retryable": false}),
    )
    .await
    .expect(200);

    let queue = put(addr, "/v1/queues/invoices", json!({"payload_schema": invoice_schema()})).await.expect(200).value();
    assert_eq!(queue["payload_schema"], invoice_schema());
    let other = put(addr, "/v1/queues/invoices", json!({"attempts_max": 3})).await.expect(200).value();
    assert_eq!(other["payload_schema"], invoice_schema(), "a change to another field keeps the schema");

    enqueue(addr, "invoices", json!({"amount": 5, "lines": ["a"]})).await;
    let p = post(addr, "/v1/jobs", json!({"queue": "invoices", "payload": {"amount": 5, "lines": ["a", 7]}}))
        .await
        .expect(422)
        .problem();
    assert_eq!(p.field.as_deref(), Some("payload"));
    assert!(p.detail.contains(r#"at "/lines/1""#), "{}", p.detail);
    assert!(p.detail.contains("/properties/lines/items/type"), "{}", p.detail);
    let p = post(addr, "/v1/jobs", json!({"queue": "invoices", "payload": 7})).await.expect(422).problem();
    assert!(p.detail.contains("at the top level"), "{}", p.detail);

    // A batch is all or nothing; the error names the job.
    let before = get(addr, "/v1/queues/invoices").await.expect(200).value()["counts"].clone();
    let batch = json!({"jobs": [
        {"queue": "invoices", "payload": {"amount": 1}},
        {"queue": "elsewhere", "payload": "anything"},
        {"queue": "invoices", "payload": {"amount": 0}},
    ]});
    let p = post(addr, "/v1/jobs/batch", batch).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("jobs[2].payload"));
    assert!(p.detail.contains(r#"at "/amount""#), "{}", p.detail);
    assert_eq!(get(addr, "/v1/queues/invoices").await.expect(200).value()["counts"], before, "nothing inserted");

    // Redrive: the old job no longer matches; a dry run says so and changes nothing.
    let dry = post(addr, "/v1/dead/redrive", json!({"ids": [old], "dry_run": true})).await.expect(200).value();
    assert_eq!(dry, json!({"ids": [], "count": 0, "dry_run": true, "rejected": [old]}));
    let job = get(addr, &format!("/v1/jobs/{old}")).await.expect(200).value();
    assert_eq!(job["dead_reason"], "non_retryable");
    let done = post(addr, "/v1/dead/redrive", json!({"queue": "invoices"})).await.expect(200).value();
    assert_eq!(done, json!({"ids": [], "count": 0, "dry_run": false, "rejected": [old]}));
    let job = get(addr, &format!("/v1/jobs/{old}")).await.expect(200).value();
    assert_eq!((&job["state"], &job["dead_reason"]), (&json!("dead"), &json!("rejected")));
    assert!(job["last_error"].as_str().unwrap().contains(r#"at "/amount""#), "{job:#}");
    assert_eq!(job["history"].as_array().unwrap().last().unwrap()["event"], "rejected");
    let listed = get(addr, "/v1/dead?dead_reason=rejected").await.expect(200).value();
    assert_eq!(listed["jobs"][0]["id"], old);

    // The schema survives a restart and is still applied.
    server.shutdown().await.unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/v1/queues/invoices").await.expect(200).value()["payload_schema"], invoice_schema());
    post(addr, "/v1/jobs", json!({"queue": "invoices", "payload": {}})).await.expect(422);

    // `null` removes it: the old job can go again.
    let queue = put(addr, "/v1/queues/invoices", json!({"payload_schema": null})).await.expect(200).value();
    assert!(queue.get("payload_schema").is_none(), "{queue:#}");
    enqueue(addr, "invoices", json!({"amount": "any"})).await;
    let done = post(addr, "/v1/dead/redrive", json!({"ids": [old]})).await.expect(200).value();
    assert_eq!(done, json!({"ids": [old], "count": 1, "dry_run": false}));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_that_cannot_apply_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    for bad in [
        json!(42),
        json!({"type": "whole-number"}),
        json!({"properties": {"a": {"minimum": "1"}}}),
        json!({"$ref": "https://example.com/invoice.json"}),
    ] {
        let p = put(addr, "/v1/queues/q", json!({"payload_schema": bad})).await.expect(422).problem();
        assert_eq!(p.field.as_deref(), Some("payload_schema"), "{bad}: {}", p.detail);
    }
    let big = json!({"description": "x".repeat(70 * 1024)});
    let p = put(addr, "/v1/queues/q", json!({"payload_schema": big})).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("payload_schema"));
    assert!(p.detail.contains("the limit is 65536 bytes"), "{}", p.detail);
    // Nothing was set by the refusals: the queue does not even exist.
    get(addr, "/v1/queues/q").await.expect(404);
    server.shutdown().await.unwrap();
}
