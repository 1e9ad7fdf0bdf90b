//! Flow limits over HTTP (issue #11): queue options set with `PUT /v1/queues/{name}` (out of
//! range is a 422 naming the field; `null` removes a limit), `group_key` on jobs, limits held at
//! lease time, and `waiting` on a held-back job's view.

mod common;

use common::*;
use serde_json::json;

/// Returns once a long-poll on `queue` is waiting on the server (its `dray_workers_polling`).
async fn polling(addr: std::net::SocketAddr, queue: &str) {
    let line = format!("dray_workers_polling{{queue=\"{queue}\"}} 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = String::from_utf8(get(addr, "/metrics").await.expect(200).body).unwrap();
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no long-poll on {queue} started within 10 s");
        tokio::task::yield_now().await;
    }
}

async fn enqueue(addr: std::net::SocketAddr, queue: &str, group: Option<&str>) -> u64 {
    let mut body = json!({"queue": queue, "payload": {}});
    if let Some(group) = group {
        body["group_key"] = json!(group);
    }
    post(addr, "/v1/jobs", body).await.expect(201).value()["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_queue_options_held_at_lease_and_explained_on_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    let body = json!({"concurrency_max": 2, "group_concurrency_max": 1, "rate": {"limit": 100, "per_ms": 1000}});
    let queue = put(addr, "/v1/queues/partner", body).await.expect(200).value();
    assert_eq!(queue["concurrency_max"], 2);
    assert_eq!(queue["group_concurrency_max"], 1);
    assert_eq!(queue["rate"], json!({"limit": 100, "per_ms": 1000, "burst": 100}), "burst defaults to the limit");
    assert!(queue.get("group_rate").is_none(), "an unset limit is left out");

    let a1 = enqueue(addr, "partner", Some("a")).await;
    let a2 = enqueue(addr, "partner", Some("a")).await;
    let b1 = enqueue(addr, "partner", Some("b")).await;
    let plain = enqueue(addr, "partner", None).await;
    let job = get(addr, &format!("/v1/jobs/{a1}")).await.expect(200).value();
    assert_eq!(job["group_key"], "a");
    assert!(job.get("waiting").is_none(), "nothing holds a1 back: {job}");

    let leased = lease(addr, "partner", 10).await;
    let mut ids: Vec<u64> = leased.iter().map(|j| j["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![a1, b1], "one per group, two in all");

    let job = get(addr, &format!("/v1/jobs/{a2}")).await.expect(200).value();
    assert_eq!(job["state"], "available");
    assert_eq!(job["attempt"], 0, "held back, not charged");
    assert_eq!(job["waiting"]["reason"], "concurrency", "{job}");
    assert_eq!(job["waiting"]["running"], 2);
    assert_eq!(job["waiting"]["limit"], 2);
    let job = get(addr, &format!("/v1/jobs/{plain}")).await.expect(200).value();
    assert_eq!(job["waiting"]["reason"], "concurrency");

    // Lifting the queue limit leaves the group limit: a2 now waits for its group.
    put(addr, "/v1/queues/partner", json!({"concurrency_max": null})).await.expect(200);
    let job = get(addr, &format!("/v1/jobs/{a2}")).await.expect(200).value();
    assert_eq!(job["waiting"]["reason"], "group_concurrency", "{job}");
    assert_eq!(job["waiting"]["key"], "a");
    assert!(job["waiting"]["detail"].as_str().unwrap().contains("group a"), "{job}");
    let leased = lease(addr, "partner", 10).await;
    assert_eq!(leased.iter().map(|j| j["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![plain]);
    let queue = get(addr, "/v1/queues/partner").await.expect(200).value();
    assert!(queue.get("concurrency_max").is_none(), "null removed it: {queue}");
    assert_eq!(queue["group_concurrency_max"], 1, "other limits stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_refused_naming_the_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    put(addr, "/v1/queues/q", json!({"concurrency_max": 3})).await.expect(200);

    for (body, field) in [
        (json!({"concurrency_max": 0}), "concurrency_max"),
        (json!({"group_concurrency_max": 1_000_001}), "group_concurrency_max"),
        (json!({"rate": {"limit": 0, "per_ms": 1000}}), "rate.limit"),
        (json!({"group_rate": {"limit": 1, "per_ms": 86_400_001}}), "group_rate.per_ms"),
        (json!({"rate": {"limit": 5, "per_ms": 1000, "burst": 0}}), "rate.burst"),
    ] {
        let p = put(addr, "/v1/queues/q", body.clone()).await.expect(422).problem();
        assert_eq!(p.field.as_deref(), Some(field), "{body}: {}", p.detail);
    }
    let p = put(addr, "/v1/queues/q", json!({"rate": {"limit": 5}})).await.problem();
    assert!(p.detail.contains("per_ms"), "a rate without per_ms: {}", p.detail);
    let queue = get(addr, "/v1/queues/q").await.expect(200).value();
    assert_eq!(queue["concurrency_max"], 3, "refused changes change nothing");
    assert!(queue.get("rate").is_none());

    let long = "k".repeat(257);
    let p = post(addr, "/v1/jobs", json!({"queue": "q", "payload": {}, "group_key": long})).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("group_key"), "{}", p.detail);
    let p = post(addr, "/v1/jobs", json!({"queue": "q", "payload": {}, "group_key": ""})).await.expect(422).problem();
    assert_eq!(p.field.as_deref(), Some("group_key"), "{}", p.detail);
}

/// A long-poll on a limited queue does not sleep through its chance: it gets the job when a
/// running one completes (a permit comes back) or when a rate token comes due, well before its
/// wait ends, though neither enqueues anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_gets_a_job_when_a_permit_frees_or_a_token_comes_due() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let long_poll = |queue: &'static str| async move {
        let t = std::time::Instant::now();
        let body = json!({"queues": [queue], "worker": "w2", "count": 1, "wait_ms": 30_000});
        let jobs = post(addr, "/v1/lease", body).await.expect(200).value()["jobs"].as_array().unwrap().clone();
        (jobs, t.elapsed())
    };

    put(addr, "/v1/queues/one", json!({"concurrency_max": 1})).await.expect(200);
    let first = enqueue(addr, "one", None).await;
    let second = enqueue(addr, "one", None).await;
    let held = lease(addr, "one", 1).await;
    assert_eq!(held[0]["id"].as_u64(), Some(first));
    let waiting = tokio::spawn(long_poll("one"));
    polling(addr, "one").await;
    post(addr, &format!("/v1/jobs/{first}/complete"), json!({"lease_id": held[0]["lease_id"]})).await.expect(200);
    let (jobs, took) = waiting.await.unwrap();
    assert_eq!(jobs.len(), 1, "the long-poll got the freed permit's job");
    assert_eq!(jobs[0]["id"].as_u64(), Some(second));
    assert!(took < std::time::Duration::from_secs(20), "woken, not timed out: {took:?}");

    put(addr, "/v1/queues/slow", json!({"rate": {"limit": 1, "per_ms": 1000}})).await.expect(200);
    let a = enqueue(addr, "slow", None).await;
    let b = enqueue(addr, "slow", None).await;
    assert_eq!(lease(addr, "slow", 5).await[0]["id"].as_u64(), Some(a));
    let (jobs, took) = long_poll("slow").await;
    assert_eq!(jobs[0]["id"].as_u64(), Some(b), "the next token's job");
    assert!(took < std::time::Duration::from_secs(20), "woken when the token came due: {took:?}");
}

/// A worker reporting a downstream rate limit (`rate_limited` on a failure, alone or in a batch
/// ack) hands its attempt back and makes the whole queue back off: the queue view shows
/// `backoff_until`, the waiting jobs say `queue_backoff`, and nothing is leased until then.
/// `rate_limited` with `retryable: false`, or on a completion, is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_failure_backs_the_queue_off_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let first = enqueue(addr, "gateway", None).await;
    let second = enqueue(addr, "gateway", None).await;
    let leased = lease(addr, "gateway", 1).await;
    assert_eq!(leased[0]["id"], first);
    let lease_id = leased[0]["lease_id"].as_str().unwrap().to_owned();

    let refused = json!({"lease_id": lease_id, "error": "429", "rate_limited": true, "retryable": false});
    let problem = post(addr, &format!("/v1/jobs/{first}/fail"), refused).await.expect(422).value();
    assert_eq!(problem["field"], "rate_limited", "{problem}");
    let complete = json!({"acks": [{"job": first, "lease_id": lease_id, "outcome": "complete", "rate_limited": true}]});
    let problem = post(addr, "/v1/ack", complete).await.expect(422).value();
    assert_eq!(problem["field"], "acks[0].rate_limited", "a completion cannot be rate limited: {problem}");

    let body = json!({"acks": [{"job": first, "lease_id": lease_id, "outcome": "fail", "error": "partner: 429",
                                "rate_limited": true, "retry_after_ms": 600_000}]});
    let acked = post(addr, "/v1/ack", body).await.expect(200).value();
    assert_eq!(acked["results"][0]["acked"]["state"], "retrying", "{acked}");
    let job = get(addr, &format!("/v1/jobs/{first}")).await.expect(200).value();
    assert_eq!(job["attempt"], 0, "the attempt is handed back: {job}");
    let queue = get(addr, "/v1/queues/gateway").await.expect(200).value();
    let until = queue["backoff_until"].as_str().expect("the queue view shows the back-off").to_owned();
    assert_eq!(Some(until.as_str()), acked["results"][0]["acked"]["retry_at"].as_str(), "until the job's retry");
    let job = get(addr, &format!("/v1/jobs/{second}")).await.expect(200).value();
    assert_eq!(job["waiting"]["reason"], "queue_backoff", "{job}");
    assert_eq!(job["waiting"]["until"], until.as_str());
    assert!(lease(addr, "gateway", 10).await.is_empty(), "the queue leases nothing while it backs off");
}
