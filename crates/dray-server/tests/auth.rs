//! Tokens and scopes over HTTP: 401 and 403 as problem+json, the scope of every route (generated
//! from the server's own route table), queue patterns on everything a request touches, expiry,
//! revocation, restarts, and the refusal to start with no way to authenticate.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dray_core::ScopeKind;
use dray_server::{AuthMode, Config, Running};
use serde_json::{Value, json};

use common::{Reply, parse_response, request_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "test-admin-token-0123456789abcdef";

async fn start(dir: &std::path::Path) -> Running {
    dray_server::start(Config::for_test(dir).with_admin_token(ADMIN)).await.expect("server starts")
}

/// One request with an optional bearer token.
async fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if method == "POST" && body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    common::request(addr, method, path, &headers, body.as_bytes()).await
}

/// Only the head of a response (for the endless event stream).
async fn call_head(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    stream.write_all(request_head("GET", path, &headers, 0).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    // The head only: a chunked body (the stream) is not read.
    let mut head = buf[..end].to_vec();
    head.extend_from_slice(b"\r\nX-Head-Only: 1\r\n\r\n");
    let text = String::from_utf8_lossy(&head)
        .replace("Transfer-Encoding: chunked", "X-Was-Chunked: 1")
        .replace("transfer-encoding: chunked", "x-was-chunked: 1");
    let mut reply = parse_response(text.as_bytes());
    reply.body.clear();
    reply
}

/// Creates a token with the admin token; returns (id, secret).
async fn token(addr: SocketAddr, scopes: &[&str]) -> (String, String) {
    let reply =
        call(addr, "POST", "/v1/tokens", Some(ADMIN), Some(json!({ "name": "t", "scopes": scopes }))).await.expect(201);
    let v = reply.value();
    (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

#[track_caller]
fn assert_401(reply: &Reply, detail: &str) {
    assert_eq!(reply.status, 401, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.header("www-authenticate"), Some("Bearer realm=\"dray\""));
    let p = reply.problem();
    assert_eq!(p.kind, "urn:dray:problem:unauthorized");
    assert!(p.detail.contains(detail), "{p:?}");
}

#[track_caller]
fn assert_403(reply: &Reply, detail: &str) {
    assert_eq!(reply.status, 403, "{}", String::from_utf8_lossy(&reply.body));
    let p = reply.problem();
    assert_eq!(p.kind, "urn:dray:problem:forbidden");
    assert!(p.detail.contains(detail), "{p:?} should say {detail:?}");
}

#[tokio::test]
async fn no_token_unknown_token_and_open_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    assert_401(&call(addr, "GET", "/v1/queues", None, None).await, "Authorization: Bearer");
    assert_401(&call(addr, "GET", "/metrics", None, None).await, "Authorization: Bearer");
    assert_401(&call(addr, "POST", "/v1/jobs", None, Some(json!({"queue": "q", "payload": 1}))).await, "Bearer");
    assert_401(&call(addr, "GET", "/v1/queues", Some("not-a-token"), None).await, "not a Dray token");
    let forged = format!("dray_0123456789abcdef_{}", "a".repeat(64));
    assert_401(&call(addr, "GET", "/v1/queues", Some(&forged), None).await, "unknown");
    let basic = common::request(addr, "GET", "/v1/queues", &[("Authorization", "Basic YTpi")], b"").await;
    assert_401(&basic, "Bearer <token>");
    // A real token's id with another secret is unknown too.
    let (id, _) = token(addr, &["read"]).await;
    let guessed = format!("dray_{id}_{}", "0".repeat(64));
    assert_401(&call(addr, "GET", "/v1/queues", Some(&guessed), None).await, "unknown");

    call(addr, "GET", "/healthz", None, None).await.expect(200);
    call(addr, "GET", "/readyz", None, None).await.expect(200);
    // The dashboard's static files hold no data: the login page must load without a token.
    call(addr, "GET", "/", None, None).await.expect(200);
    call(addr, "GET", "/dashboard/app.js", None, None).await.expect(200);
    let events = call_head(addr, "/dashboard/events", None).await;
    assert_eq!((events.status, events.header("www-authenticate")), (401, Some("Bearer realm=\"dray\"")));
    call(addr, "GET", "/v1/queues", Some(ADMIN), None).await.expect(200);
    server.shutdown().await.unwrap();
}

/// A sample request for each route of the scope table: path with its parameters filled, and a
/// body. A route the test has no sample for fails the test, so a new route needs one.
fn sample(method: &str, path: &str, job: u64, token_id: &str) -> (String, Option<Value>) {
    let mut p = path.replace("{id}", &job.to_string()).replace("{name}", "q").replace("{file}", "app.js");
    if method == "GET" && (path == "/v1/jobs" || path == "/v1/dead") {
        // A token limited to some queues lists with a queue filter.
        p.push_str("?queue=q");
    }
    let lease_body = json!({ "lease_id": "0000000000000001" });
    let body = match (method, path) {
        (_, "/v1/tokens/{id}") => return (path.replace("{id}", token_id), None),
        ("POST", "/v1/jobs") => Some(json!({ "queue": "q", "payload": 1 })),
        ("POST", "/v1/jobs/batch") => Some(json!({ "jobs": [{ "queue": "q", "payload": 2 }] })),
        ("POST", "/v1/lease") => Some(json!({ "queues": ["q"], "worker": "w", "count": 1 })),
        ("POST", "/v1/jobs/{id}/heartbeat") => Some(lease_body),
        ("POST", "/v1/jobs/{id}/steps") => Some(json!({ "lease_id": "0000000000000001", "name": "s", "result": 1 })),
        ("POST", "/v1/jobs/{id}/complete") => Some(lease_body),
        ("POST", "/v1/jobs/{id}/fail") => Some(json!({ "lease_id": "0000000000000001", "error": "x" })),
        ("POST", "/v1/ack") => Some(json!({ "acks": [] })),
        ("POST", "/v1/dead/redrive" | "/v1/dead/discard") => Some(json!({ "queue": "q", "dry_run": true })),
        ("PUT", "/v1/queues/{name}") => Some(json!({})),
        // Refused with 422 (queue q has no breaker) once allowed.
        ("POST", "/v1/queues/{name}/breaker") => Some(json!({ "action": "close" })),
        ("POST", "/v1/tokens") => Some(json!({ "name": "n", "scopes": ["read"] })),
        ("POST", "/dashboard/login") => Some(json!({ "token": ADMIN })),
        ("POST", "/dashboard/logout") => None,
        ("POST", "/v1/jobs/{id}/cancel" | "/v1/queues/{name}/pause" | "/v1/queues/{name}/resume") => None,
        // Refused with 409 by the state of the job or the queue (it holds the job): never deleted.
        ("POST", "/v1/jobs/{id}/promote") => None,
        ("DELETE", "/v1/queues/{name}") => None,
        ("POST", "/v1/schedules") => {
            Some(json!({ "name": "s", "every_ms": 3_600_000, "job": { "queue": "q", "payload": 3 } }))
        }
        ("PUT", "/v1/schedules/{name}") => {
            Some(json!({ "every_ms": 3_600_000, "job": { "queue": "q", "payload": 4 } }))
        }
        ("DELETE", "/v1/schedules/{name}") => None,
        ("POST", "/v1/schedules/{name}/pause" | "/v1/schedules/{name}/resume" | "/v1/schedules/{name}/trigger") => None,
        ("POST", "/v1/locks/{name}/acquire") => Some(json!({ "owner": "o", "ttl_ms": 1_000 })),
        // 409 lock-lost or `released: false`: the token is no hold.
        ("POST", "/v1/locks/{name}/renew" | "/v1/locks/{name}/release") => {
            Some(json!({ "owner": "o", "fencing_token": 1 }))
        }
        ("DELETE", "/v1/locks/{name}") => None,
        ("GET", _) => None,
        _ => panic!("no sample request for {method} {path}: add one to this test"),
    };
    (p, body)
}

/// Scope x route, generated from the server's own table (`dray_server::route_scopes`, which a
/// unit test checks against the router): each token kind is refused (403) exactly where its kind
/// does not grant the route's scope, and passes the check everywhere else.
#[tokio::test]
async fn every_route_checks_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let job = common::post_with(addr, "/v1/jobs", json!({"queue": "q", "payload": 0}), ADMIN).await;
    let kinds = [
        ("read", ScopeKind::Read),
        ("enqueue", ScopeKind::Enqueue),
        ("work", ScopeKind::Work),
        ("admin", ScopeKind::Admin),
        ("admin:q*", ScopeKind::Admin),
    ];
    let mut checked = 0;
    for (scope_text, kind) in kinds {
        let (_, secret) = token(addr, &[scope_text]).await;
        let limited = scope_text.contains(':');
        for route in dray_server::route_scopes() {
            // A throwaway token for each revocation, so the ones in use stay valid.
            let (victim, _) = token(addr, &["read"]).await;
            let (path, body) = sample(route.method, route.path, job, &victim);
            let reply = if route.path == "/dashboard/events" {
                call_head(addr, &path, Some(&secret)).await
            } else {
                call(addr, route.method, &path, Some(&secret), body).await
            };
            let what =
                format!("{scope_text} on {} {}: {}", route.method, route.path, String::from_utf8_lossy(&reply.body));
            let granted = match route.scope {
                None => true,
                Some(needed) => kind.grants(needed) && !(route.every_queue && limited),
            };
            if granted {
                assert!(![401, 403].contains(&reply.status), "refused: {what}");
            } else {
                assert_eq!(reply.status, 403, "allowed: {what}");
                if !reply.body.is_empty() {
                    let p = reply.problem();
                    assert!(p.detail.contains(route.scope.unwrap().as_str()), "names the scope: {what}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5 * 30, "{checked}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn queue_patterns_apply_to_every_queue_a_request_touches() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let other = common::post_with(addr, "/v1/jobs", json!({"queue": "other", "payload": 0}), ADMIN).await;
    let (_, enq) = token(addr, &["enqueue:billing.*"]).await;
    let (_, work) = token(addr, &["work:billing.*"]).await;
    let (_, read) = token(addr, &["read:billing.*"]).await;
    let (_, admin) = token(addr, &["admin:billing.*"]).await;

    // Enqueue: the body's queue, and every queue of a batch (nothing enqueued when one is out).
    let own = call(addr, "POST", "/v1/jobs", Some(&enq), Some(json!({"queue": "billing.invoices", "payload": 1})))
        .await
        .expect(201)
        .value()["id"]
        .as_u64()
        .unwrap();
    assert_403(
        &call(addr, "POST", "/v1/jobs", Some(&enq), Some(json!({"queue": "billing", "payload": 1}))).await,
        "enqueue scope for queue \"billing\"",
    );
    let batch = json!({"jobs": [{"queue": "billing.a", "payload": 1}, {"queue": "payments", "payload": 2}]});
    assert_403(&call(addr, "POST", "/v1/jobs/batch", Some(&enq), Some(batch)).await, "\"payments\"");
    let count = call(addr, "GET", "/v1/jobs?queue=billing.a", Some(ADMIN), None).await.expect(200).value();
    assert_eq!(count["jobs"].as_array().unwrap().len(), 0, "the refused batch enqueued nothing");
    assert_403(&call(addr, "GET", "/v1/queues", Some(&enq), None).await, "read");

    // Work: every leased queue; a job's queue for heartbeats and acks.
    let lease = json!({"queues": ["billing.invoices", "other"], "worker": "w", "count": 1});
    assert_403(&call(addr, "POST", "/v1/lease", Some(&work), Some(lease)).await, "work scope for queue \"other\"");
    let lease = json!({"queues": ["billing.invoices"], "worker": "w", "count": 1});
    let leased = call(addr, "POST", "/v1/lease", Some(&work), Some(lease)).await.expect(200).value();
    let lease_id = leased["jobs"][0]["lease_id"].as_str().unwrap().to_owned();
    assert_403(
        &call(addr, "POST", &format!("/v1/jobs/{other}/complete"), Some(&work), Some(json!({"lease_id": lease_id})))
            .await,
        "\"other\"",
    );
    let acks = json!({"acks": [{"job": other, "lease_id": lease_id, "outcome": "complete"}]});
    assert_403(&call(addr, "POST", "/v1/ack", Some(&work), Some(acks)).await, "\"other\"");
    call(addr, "POST", &format!("/v1/jobs/{own}/complete"), Some(&work), Some(json!({"lease_id": lease_id})))
        .await
        .expect(200);

    // Read: list filters, a job's queue, queue routes; the queue list shows only what it covers.
    assert_403(&call(addr, "GET", "/v1/jobs", Some(&read), None).await, "filter by a queue");
    assert_403(&call(addr, "GET", "/v1/jobs?queue=other", Some(&read), None).await, "\"other\"");
    call(addr, "GET", "/v1/jobs?queue=billing.invoices", Some(&read), None).await.expect(200);
    assert_403(&call(addr, "GET", "/v1/dead", Some(&read), None).await, "filter by a queue");
    call(addr, "GET", "/v1/dead?queue=billing.invoices", Some(&read), None).await.expect(200);
    call(addr, "GET", &format!("/v1/jobs/{own}"), Some(&read), None).await.expect(200);
    assert_403(&call(addr, "GET", &format!("/v1/jobs/{other}"), Some(&read), None).await, "\"other\"");
    assert_403(&call(addr, "GET", "/v1/queues/other", Some(&read), None).await, "\"other\"");
    let names: Vec<String> = call(addr, "GET", "/v1/queues", Some(&read), None).await.expect(200).value()["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["billing.invoices"]);
    assert_403(&call(addr, "GET", "/metrics", Some(&read), None).await, "without a queue pattern");
    assert_403(&call(addr, "GET", "/v1/workers", Some(&read), None).await, "without a queue pattern");

    // Admin within a pattern: its queues only, and never tokens.
    call(addr, "POST", "/v1/queues/billing.invoices/pause", Some(&admin), None).await.expect(200);
    assert_403(&call(addr, "POST", "/v1/queues/other/pause", Some(&admin), None).await, "admin scope for queue");
    assert_403(&call(addr, "PUT", "/v1/queues/other", Some(&admin), Some(json!({}))).await, "\"other\"");
    assert_403(&call(addr, "POST", &format!("/v1/jobs/{other}/cancel"), Some(&admin), None).await, "\"other\"");
    let redrive = json!({"ids": [other]});
    assert_403(&call(addr, "POST", "/v1/dead/redrive", Some(&admin), Some(redrive)).await, "\"other\"");
    assert_403(&call(addr, "POST", "/v1/dead/discard", Some(&admin), Some(json!({"dry_run": true}))).await, "filter");
    assert_403(&call(addr, "GET", "/v1/tokens", Some(&admin), None).await, "without a queue pattern");
    assert_403(
        &call(addr, "POST", "/v1/tokens", Some(&admin), Some(json!({"name": "esc", "scopes": ["admin"]}))).await,
        "admin",
    );
    // ... but it implies read, enqueue and work on its queues.
    call(addr, "POST", "/v1/jobs", Some(&admin), Some(json!({"queue": "billing.x", "payload": 1}))).await.expect(201);
    // Depending on a job reads its result (the dependent's lease carries it): read scope on the
    // dependency's queue, which enqueue alone does not give; admin implies it on its queues.
    let after_other = json!({"queue": "billing.x", "payload": 1, "depends_on": [other]});
    assert_403(
        &call(addr, "POST", "/v1/jobs", Some(&enq), Some(after_other.clone())).await,
        &format!("depends_on names job {other}"),
    );
    assert_403(&call(addr, "POST", "/v1/jobs", Some(&admin), Some(after_other)).await, "read:other");
    let in_batch = json!({"jobs": [{"queue": "billing.a", "payload": 1}, {"queue": "billing.b", "payload": 2, "depends_on": [own]}]});
    assert_403(&call(addr, "POST", "/v1/jobs/batch", Some(&enq), Some(in_batch)).await, "read:billing.invoices");
    let after_own = json!({"queue": "billing.x", "payload": 1, "depends_on": [own]});
    call(addr, "POST", "/v1/jobs", Some(&admin), Some(after_own)).await.expect(201);
    let keyed = json!({"jobs": [{"queue": "billing.a", "payload": 1, "key": "a"}, {"queue": "billing.b", "payload": 2, "depends_on": ["a"]}]});
    call(addr, "POST", "/v1/jobs/batch", Some(&enq), Some(keyed)).await.expect(201);
    server.shutdown().await.unwrap();
}

/// A schedule belongs to its template's queue: a token limited to some queues sees and changes
/// only the schedules that enqueue into them, and cannot move one out of (or into) another queue.
#[tokio::test]
async fn schedules_follow_the_queue_patterns_of_their_template() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (_, admin) = token(addr, &["admin:billing.*"]).await;
    let (_, read) = token(addr, &["read:billing.*"]).await;
    let rule = |queue: &str| json!({ "every_ms": 3_600_000, "job": { "queue": queue, "payload": 1 } });

    call(addr, "PUT", "/v1/schedules/invoices", Some(&admin), Some(rule("billing.invoices"))).await.expect(201);
    assert_403(
        &call(addr, "PUT", "/v1/schedules/ops", Some(&admin), Some(rule("ops"))).await,
        "admin scope for queue \"ops\"",
    );
    call(addr, "PUT", "/v1/schedules/ops", Some(ADMIN), Some(rule("ops"))).await.expect(201);
    // Taking over another queue's schedule, or moving one's jobs out of billing, is refused.
    assert_403(&call(addr, "PUT", "/v1/schedules/ops", Some(&admin), Some(rule("billing.x"))).await, "\"ops\"");
    assert_403(&call(addr, "PUT", "/v1/schedules/invoices", Some(&admin), Some(rule("ops"))).await, "\"ops\"");
    assert_403(&call(addr, "POST", "/v1/schedules/ops/trigger", Some(&admin), None).await, "\"ops\"");
    assert_403(&call(addr, "DELETE", "/v1/schedules/ops", Some(&admin), None).await, "\"ops\"");
    call(addr, "POST", "/v1/schedules/invoices/trigger", Some(&admin), None).await.expect(201);
    call(addr, "POST", "/v1/schedules/invoices/pause", Some(&admin), None).await.expect(200);

    let listed = call(addr, "GET", "/v1/schedules", Some(&read), None).await.expect(200).value();
    let names: Vec<&str> =
        listed["schedules"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["invoices"], "only the schedules of readable queues are listed");
    assert_403(&call(addr, "GET", "/v1/schedules/ops", Some(&read), None).await, "read scope for queue \"ops\"");
    assert_403(&call(addr, "POST", "/v1/schedules/invoices/resume", Some(&read), None).await, "admin");
    let all = call(addr, "GET", "/v1/schedules", Some(ADMIN), None).await.expect(200).value();
    assert_eq!(all["schedules"].as_array().unwrap().len(), 2, "nothing refused changed anything");
    assert_eq!(all["schedules"][0]["job"]["queue"], "billing.invoices");
    assert_eq!(all["schedules"][1]["job"]["queue"], "ops");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_are_created_listed_revoked_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let body = json!({"name": "billing producer", "scopes": ["enqueue:billing.*", "read"], "expires_at": "2999-01-01T00:00:00Z"});
    let created = call(addr, "POST", "/v1/tokens", Some(ADMIN), Some(body)).await.expect(201).value();
    let keys: Vec<&str> = created.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "exactly id, name, scopes, expires_at, token: {created}");
    for key in ["id", "name", "scopes", "expires_at", "token"] {
        assert!(created.get(key).is_some(), "{key} in {created}");
    }
    assert_eq!(created["scopes"], json!(["enqueue:billing.*", "read"]));
    assert_eq!(created["expires_at"], "2999-01-01T00:00:00.000Z");
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("dray_{id}_")), "{secret}");
    let never = call(addr, "POST", "/v1/tokens", Some(ADMIN), Some(json!({"name": "n", "scopes": ["work"]})))
        .await
        .expect(201)
        .value();
    assert_eq!(never["expires_at"], Value::Null, "present and null when it never expires");

    let list = call(addr, "GET", "/v1/tokens", Some(ADMIN), None).await.expect(200);
    let text = String::from_utf8_lossy(&list.body).into_owned();
    assert!(!text.contains(&secret[10..]), "no secret in the list: {text}");
    // Both tokens may have been created in the same millisecond: find this one by its id.
    let tokens = list.value()["tokens"].as_array().unwrap().clone();
    let listed = tokens.iter().find(|t| t["id"].as_str() == Some(id.as_str())).expect("the token is listed");
    assert_eq!(listed["revoked"].as_bool(), Some(false));

    call(addr, "GET", "/v1/queues", Some(&secret), None).await.expect(200);
    server.shutdown().await.unwrap();

    // Tokens live in the store: the same token works after a restart, and revocation is at once.
    let server = start(dir.path()).await;
    let addr = server.addr;
    call(addr, "GET", "/v1/queues", Some(&secret), None).await.expect(200);
    let revoked = call(addr, "DELETE", &format!("/v1/tokens/{id}"), Some(ADMIN), None).await.expect(200).value();
    assert_eq!(revoked["revoked"], true);
    assert_401(&call(addr, "GET", "/v1/queues", Some(&secret), None).await, "revoked");
    call(addr, "DELETE", &format!("/v1/tokens/{id}"), Some(ADMIN), None).await.expect(200);
    let missing = call(addr, "DELETE", "/v1/tokens/00000000000000ff", Some(ADMIN), None).await.expect(404);
    assert_eq!(missing.problem().kind, "urn:dray:problem:token-not-found");
    call(addr, "DELETE", "/v1/tokens/nonsense", Some(ADMIN), None).await.expect(404);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_token_requests_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let cases = [
        (json!({"name": "", "scopes": ["read"]}), "name"),
        (json!({"name": "x".repeat(129), "scopes": ["read"]}), "name"),
        (json!({"name": "n", "scopes": []}), "scopes"),
        (json!({"name": "n", "scopes": ["write"]}), "scopes"),
        (json!({"name": "n", "scopes": ["read:bad/queue"]}), "scopes"),
        (json!({"name": "n", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"name": "n", "scopes": ["read"], "expires_at": "tomorrow"}), "expires_at"),
    ];
    for (body, field) in cases {
        let reply = call(addr, "POST", "/v1/tokens", Some(ADMIN), Some(body.clone())).await.expect(422);
        assert_eq!(reply.problem().field.as_deref(), Some(field), "{body}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let expires = dray_api::timestamp_string(dray_core::Timestamp(now_ms + 1_500));
    let body = json!({"name": "short", "scopes": ["read"], "expires_at": expires});
    let secret = call(addr, "POST", "/v1/tokens", Some(ADMIN), Some(body)).await.expect(201).value()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = call(addr, "GET", "/v1/queues", Some(&secret), None).await;
        if reply.status == 401 {
            assert_401(&reply, "expired");
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_dashboard_signs_in_with_a_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let (_, limited) = token(addr, &["read:billing.*"]).await;
    let reply = call(addr, "POST", "/dashboard/login", None, Some(json!({"token": limited}))).await;
    assert_403(&reply, "read scope without a queue pattern");
    assert_401(&call(addr, "POST", "/dashboard/login", None, Some(json!({"token": "wrong"}))).await, "not a Dray");
    let (_, reader) = token(addr, &["read"]).await;
    let reply = call(addr, "POST", "/dashboard/login", None, Some(json!({"token": reader}))).await.expect(204);
    let cookie = reply.header("set-cookie").unwrap().to_owned();
    assert_eq!(cookie, format!("dray_token={reader}; Path=/; HttpOnly; SameSite=Strict"));
    let jar = format!("dray_token={reader}");
    common::request(addr, "GET", "/v1/queues", &[("Cookie", &jar)], b"").await.expect(200);
    let events = {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = request_head("GET", "/dashboard/events", &[("Cookie", &jar)], 0);
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(events.starts_with("HTTP/1.1 200"), "{events}");
    let out = call(addr, "POST", "/dashboard/logout", None, None).await.expect(204);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    server.shutdown().await.unwrap();
}

/// Guards the documented refusal: with `--auth required`, no admin token file and no token in
/// the store, nobody could ever authenticate, so the server does not start.
#[tokio::test]
async fn required_auth_without_any_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let e = dray_server::start(Config::for_test(dir.path()).with_auth(AuthMode::Required)).await.unwrap_err();
    assert!(format!("{e:#}").contains("nobody could authenticate"), "{e:#}");
    // Once a token exists (created with the bootstrap token), the same start succeeds.
    let server = start(dir.path()).await;
    let (_, secret) = token(server.addr, &["admin"]).await;
    server.shutdown().await.unwrap();
    let server = dray_server::start(Config::for_test(dir.path()).with_auth(AuthMode::Required)).await.unwrap();
    call(server.addr, "GET", "/v1/tokens", Some(&secret), None).await.expect(200);
    assert_401(&call(server.addr, "GET", "/v1/tokens", Some(ADMIN), None).await, "not a Dray token");
    server.shutdown().await.unwrap();
}

/// Auth off (the loopback default) keeps every route open, as before tokens existed.
#[tokio::test]
async fn auth_none_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    call(server.addr, "GET", "/v1/queues", None, None).await.expect(200);
    call(server.addr, "GET", "/metrics", None, None).await.expect(200);
    call(server.addr, "POST", "/v1/tokens", None, Some(json!({"name": "n", "scopes": ["read"]}))).await.expect(201);
    server.shutdown().await.unwrap();
}
