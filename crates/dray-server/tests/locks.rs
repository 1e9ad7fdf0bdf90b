//! `/v1/locks` over HTTP on the embedded store: grants, contention (409 `lock-held` naming the
//! holder), stale tokens (409 `lock-lost`), long-polls woken by a release or by the TTL passing,
//! force release, listing, and bad input naming the field and the limit.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

async fn acquire(addr: SocketAddr, name: &str, body: Value) -> Reply {
    post(addr, &format!("/v1/locks/{name}/acquire"), body).await
}

#[track_caller]
fn problem(reply: &Reply, status: u16, kind: &str) -> String {
    assert_eq!(reply.status, status, "{}", String::from_utf8_lossy(&reply.body));
    let p = reply.problem();
    assert_eq!(p.kind, format!("urn:dray:problem:{kind}"), "{p:?}");
    p.detail
}

#[tokio::test]
async fn acquire_contend_renew_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    let a = acquire(addr, "report", json!({"owner": "A", "ttl_ms": 60_000})).await.expect(200).value();
    let token = a["fencing_token"].as_u64().unwrap();
    assert_eq!((a["ttl_ms"].as_u64(), a["new"].as_bool()), (Some(60_000), Some(true)));
    assert!(a["deadline"].as_str().unwrap().ends_with('Z'));

    let held = acquire(addr, "report", json!({"owner": "B", "ttl_ms": 1_000})).await;
    let detail = problem(&held, 409, "lock-held");
    assert!(detail.contains("owner \"A\"") && detail.contains(&token.to_string()), "{detail}");
    let mismatch = acquire(addr, "report", json!({"owner": "B", "ttl_ms": 1_000, "permits": 2})).await;
    problem(&mismatch, 409, "lock-permits-mismatch");

    // The holder again: its hold back, same token.
    let again = acquire(addr, "report", json!({"owner": "A", "ttl_ms": 30_000})).await.expect(200).value();
    assert_eq!((again["fencing_token"].as_u64(), again["new"].as_bool()), (Some(token), Some(false)));

    let stale = post(addr, "/v1/locks/report/renew", json!({"owner": "A", "fencing_token": token - 1})).await;
    let detail = problem(&stale, 409, "lock-lost");
    assert!(detail.contains(&(token - 1).to_string()), "{detail}");
    let renewed = post(addr, "/v1/locks/report/renew", json!({"owner": "A", "fencing_token": token, "ttl_ms": 5_000}))
        .await
        .expect(200)
        .value();
    assert_eq!((renewed["fencing_token"].as_u64(), renewed["ttl_ms"].as_u64()), (Some(token), Some(5_000)));

    let shown = get(addr, "/v1/locks/report").await.expect(200).value();
    assert_eq!(shown["permits"], 1);
    assert_eq!(shown["waiters"], 0);
    assert_eq!(shown["holders"][0]["owner"], "A");
    assert_eq!(shown["holders"][0]["fencing_token"], token);
    let listed = get(addr, "/v1/locks").await.expect(200).value();
    assert_eq!(listed["locks"].as_array().unwrap().len(), 1);
    assert!(listed.get("next").is_none());

    let release = json!({"owner": "A", "fencing_token": token});
    let released = post(addr, "/v1/locks/report/release", release.clone()).await.expect(200).value();
    assert_eq!(released, json!({"released": true}));
    let again = post(addr, "/v1/locks/report/release", release).await.expect(200).value();
    assert_eq!(again, json!({"released": false}), "a retried release is harmless");
    problem(&get(addr, "/v1/locks/report").await, 404, "lock-not-held");

    let b = acquire(addr, "report", json!({"owner": "B", "ttl_ms": 1_000})).await.expect(200).value();
    assert!(b["fencing_token"].as_u64().unwrap() > token);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_waiting_acquire_is_woken_by_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let a = acquire(addr, "l", json!({"owner": "A", "ttl_ms": 600_000})).await.expect(200).value();
    let waiter = tokio::spawn(acquire(addr, "l", json!({"owner": "B", "ttl_ms": 1_000, "wait_ms": 60_000})));
    // The waiter shows in `waiters` while it waits.
    loop {
        if get(addr, "/v1/locks/l").await.expect(200).value()["waiters"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    post(addr, "/v1/locks/l/release", json!({"owner": "A", "fencing_token": a["fencing_token"]})).await.expect(200);
    // A's TTL is ten minutes, B's wait one: only the release can have granted it.
    let b = waiter.await.unwrap().expect(200).value();
    assert!(b["fencing_token"].as_u64() > a["fencing_token"].as_u64());
    assert_eq!(get(addr, "/v1/locks/l").await.expect(200).value()["waiters"], 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wait_ends_granted_when_the_ttl_passes_or_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    acquire(addr, "short", json!({"owner": "A", "ttl_ms": 300})).await.expect(200);
    let b = acquire(addr, "short", json!({"owner": "B", "ttl_ms": 1_000, "wait_ms": 60_000})).await.expect(200);
    assert_eq!(b.value()["new"], true);

    acquire(addr, "long", json!({"owner": "A", "ttl_ms": 600_000})).await.expect(200);
    let refused = acquire(addr, "long", json!({"owner": "B", "ttl_ms": 1_000, "wait_ms": 100})).await;
    let detail = problem(&refused, 409, "lock-held");
    assert!(detail.contains("owner \"A\"") && detail.contains("1 of 1 permits"), "{detail}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn semaphore_and_force_release() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let mut tokens = Vec::new();
    for owner in ["a", "b", "c"] {
        let g = acquire(addr, "pool", json!({"owner": owner, "ttl_ms": 60_000, "permits": 3})).await.expect(200);
        tokens.push(g.value()["fencing_token"].as_u64().unwrap());
    }
    let full = acquire(addr, "pool", json!({"owner": "d", "ttl_ms": 60_000, "permits": 3})).await;
    assert!(problem(&full, 409, "lock-held").contains("3 of 3 permits"));

    let one = request(addr, "DELETE", &format!("/v1/locks/pool?fencing_token={}", tokens[1]), &[], b"").await;
    let one = one.expect(200).value();
    assert_eq!(one["released"][0]["owner"], "b");
    let lost = post(addr, "/v1/locks/pool/renew", json!({"owner": "b", "fencing_token": tokens[1]})).await;
    problem(&lost, 409, "lock-lost");
    acquire(addr, "pool", json!({"owner": "d", "ttl_ms": 60_000, "permits": 3})).await.expect(200);
    let all = request(addr, "DELETE", "/v1/locks/pool", &[], b"").await.expect(200).value();
    assert_eq!(all["released"].as_array().unwrap().len(), 3);
    let none = request(addr, "DELETE", "/v1/locks/pool", &[], b"").await.expect(200).value();
    assert_eq!(none, json!({"released": []}));

    // Pages: two locks, one per page.
    acquire(addr, "x1", json!({"owner": "a", "ttl_ms": 60_000})).await.expect(200);
    acquire(addr, "x2", json!({"owner": "a", "ttl_ms": 60_000})).await.expect(200);
    let first = get(addr, "/v1/locks?limit=1").await.expect(200).value();
    assert_eq!((first["locks"][0]["name"].as_str(), first["next"].as_str()), (Some("x1"), Some("x1")));
    let second = get(addr, "/v1/locks?limit=1&after=x1").await.expect(200).value();
    assert_eq!(second["locks"][0]["name"], "x2");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_names_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let cases: &[(&str, Value, &str, &str)] = &[
        ("l", json!({"owner": "A", "ttl_ms": 99}), "ttl_ms", "allowed is 100 ms to 43200000 ms"),
        ("l", json!({"owner": "A", "ttl_ms": 43_200_001}), "ttl_ms", "43200000"),
        ("l", json!({"owner": "A", "ttl_ms": 1_000, "wait_ms": 60_001}), "wait_ms", "allowed is 0 ms to 60000 ms"),
        ("l", json!({"owner": "A", "ttl_ms": 1_000, "permits": 0}), "permits", "allowed is 1 to 1000"),
        ("l", json!({"owner": "", "ttl_ms": 1_000}), "owner", "must not be empty"),
        ("l", json!({"owner": "a\u{7}", "ttl_ms": 1_000}), "owner", "control character"),
        ("l", json!({"owner": "A", "ttl_ms": 1_000, "lease": 1}), "lease", "unknown field"),
        ("bad!name", json!({"owner": "A", "ttl_ms": 1_000}), "name", "allowed are ASCII letters"),
    ];
    for (name, body, field, detail) in cases {
        let reply = acquire(addr, name, body.clone()).await;
        let p = reply.problem();
        assert_eq!(reply.status, 422, "{body}: {p:?}");
        assert_eq!(p.field.as_deref(), Some(*field), "{body}: {p:?}");
        assert!(p.detail.contains(detail), "{body}: {p:?}");
    }
    let page = get(addr, "/v1/locks?limit=1001").await;
    assert_eq!(page.problem().field.as_deref(), Some("limit"));
    assert!(get(addr, "/v1/locks").await.expect(200).value()["locks"].as_array().unwrap().is_empty());
    server.shutdown().await.unwrap();
}
