//! Every kind of bad input gets the right status and a problem+json body naming the field, and
//! changes nothing. One table, one `check`.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
    field: Option<&'static str>,
    /// A piece of the detail that names the limit or the problem.
    detail: &'static str,
}

fn case(name: &'static str, method: &'static str, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: body.into(),
        status: 0,
        kind: "",
        field: None,
        detail: "",
    }
}

impl Case {
    fn want(self, status: u16, kind: &'static str, field: Option<&'static str>, detail: &'static str) -> Case {
        Case { status, kind, field, detail, ..self }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Case {
        self.headers.push((name, value));
        self
    }
}

fn json_body(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

async fn check(addr: SocketAddr, c: &Case) {
    let before = state(addr).await;
    let reply = request(addr, c.method, &c.path, &c.headers, &c.body).await;
    assert_eq!(reply.status, c.status, "{}: {}", c.name, String::from_utf8_lossy(&reply.body));
    let p = reply.problem();
    assert_eq!(p.kind, format!("urn:dray:problem:{}", c.kind), "{}: {p:?}", c.name);
    assert_eq!(p.field.as_deref(), c.field, "{}: {p:?}", c.name);
    assert!(p.detail.contains(c.detail), "{}: {:?} should mention {:?}", c.name, p.detail, c.detail);
    assert_eq!(state(addr).await, before, "{}: bad input changed state", c.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // Something to leave untouched: a queue with a leased job.
    let id = enqueue(addr, "q", json!({"keep": true})).await;
    let leased = lease(addr, "q", 1).await;
    assert_eq!(leased[0]["id"], id);

    let deep = format!(r#"{{"queue":"q","payload":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
    let too_big = vec![b' '; dray_server::Config::BODY_BYTES_MAX_DEFAULT as usize + 1];
    let payload_over = format!(r#"{{"queue":"q","payload":"{}"}}"#, "x".repeat(1024 * 1024));
    let batch_over: Vec<Value> = (0..10_001).map(|_| json!({"queue": "q", "payload": 1})).collect();
    let ok_job = json!({"queue": "q", "payload": 1});
    let lease_id = leased[0]["lease_id"].as_str().unwrap().to_string();
    let result_over = json_body(json!({"lease_id": lease_id, "result": "x".repeat(257 * 1024)}));
    let cases =
        vec![
            case("syntax", "POST", "/v1/jobs", r#"{"queue":"q","payload":"#).want(
                400,
                "malformed-json",
                Some("payload"),
                "EOF",
            ),
            case("empty body", "POST", "/v1/jobs", "").want(400, "malformed-json", None, "EOF"),
            case("not an object", "POST", "/v1/jobs", "[1]").want(422, "invalid-request", None, "JSON object"),
            case("too deep", "POST", "/v1/jobs", deep).want(400, "malformed-json", None, "deeper than 128 levels"),
            case("body over the limit", "POST", "/v1/jobs", too_big).want(
                413,
                "body-too-large",
                None,
                "25165824 bytes",
            ),
            case("payload over the limit", "POST", "/v1/jobs", payload_over).want(
                422,
                "invalid-request",
                Some("payload"),
                "the limit is 1048576",
            ),
            case("batch over the limit", "POST", "/v1/jobs/batch", json_body(json!({ "jobs": batch_over }))).want(
                422,
                "invalid-request",
                Some("jobs"),
                "the limit is 10000",
            ),
            case("empty batch", "POST", "/v1/jobs/batch", json_body(json!({"jobs": []}))).want(
                422,
                "invalid-request",
                Some("jobs"),
                "at least one",
            ),
            case(
                "one bad job in a batch",
                "POST",
                "/v1/jobs/batch",
                json_body(json!({"jobs": [ok_job, {"queue": "no spaces", "payload": 1}]})),
            )
            .want(422, "invalid-request", Some("jobs[1].queue"), "allowed are"),
            case("unknown field", "POST", "/v1/jobs", json_body(json!({"queue": "q", "payload": 1, "colour": "red"})))
                .want(422, "invalid-request", Some("colour"), "unknown field"),
            case(
                "nested unknown field",
                "POST",
                "/v1/jobs/batch",
                json_body(json!({"jobs": [{"queue": "q", "payload": 1, "x": 1}]})),
            )
            .want(422, "invalid-request", Some("jobs[0].x"), "unknown field"),
            case("missing field", "POST", "/v1/jobs", json_body(json!({"queue": "q"}))).want(
                422,
                "invalid-request",
                Some("payload"),
                "missing field",
            ),
            case("bad queue name", "POST", "/v1/jobs", json_body(json!({"queue": "a b", "payload": 1}))).want(
                422,
                "invalid-request",
                Some("queue"),
                "allowed are",
            ),
            case("long queue name", "POST", "/v1/jobs", json_body(json!({"queue": "q".repeat(129), "payload": 1})))
                .want(422, "invalid-request", Some("queue"), "the limit is 128"),
            case("wrong type", "POST", "/v1/jobs", json_body(json!({"queue": "q", "payload": 1, "priority": "high"})))
                .want(422, "invalid-request", Some("priority"), "invalid type"),
            case("out of range", "POST", "/v1/jobs", json_body(json!({"queue": "q", "payload": 1, "priority": 5000})))
                .want(422, "invalid-request", Some("priority"), "1000"),
            case("bad timestamp", "POST", "/v1/jobs", json_body(json!({"queue": "q", "payload": 1, "run_at": "soon"})))
                .want(422, "invalid-request", Some("run_at"), "RFC 3339"),
            case("bad traceparent header", "POST", "/v1/jobs", json_body(json!({"queue": "q", "payload": 1})))
                .header("traceparent", "00-nope")
                .want(422, "invalid-request", Some("traceparent"), "W3C"),
            case("text body", "POST", "/v1/jobs", "queue=q").header("Content-Type", "text/plain").want(
                415,
                "unsupported-media-type",
                None,
                "application/json",
            ),
            case("bad lease queue", "POST", "/v1/lease", json_body(json!({"queues": ["ok", "not ok"], "worker": "w"})))
                .want(422, "invalid-request", Some("queues[1]"), "allowed are"),
            case("lease count", "POST", "/v1/lease", json_body(json!({"queues": ["q"], "worker": "w", "count": 1001})))
                .want(422, "invalid-request", Some("count"), "1000"),
            case("bad lease id", "POST", format!("/v1/jobs/{id}/complete"), json_body(json!({"lease_id": "xyz"})))
                .want(422, "invalid-request", Some("lease_id"), "16 hex digits"),
            case(
                "fail without an error",
                "POST",
                "/v1/ack",
                json_body(json!({"acks": [{"job": id, "lease_id": "0000000000000001", "outcome": "fail"}]})),
            )
            .want(422, "invalid-request", Some("acks[0].error"), "required"),
            case("bad job id", "GET", "/v1/jobs/abc", "").want(422, "invalid-request", Some("id"), "job id"),
            case("unknown job", "GET", "/v1/jobs/999999", "").want(404, "job-not-found", None, "999999"),
            case("cancel unknown job", "POST", "/v1/jobs/999999/cancel", "").want(404, "job-not-found", None, "999999"),
            case("unknown queue", "GET", "/v1/queues/nope", "").want(404, "queue-not-found", None, "nope"),
            case("bad queue in path", "PUT", "/v1/queues/a%20b", "{}").want(
                422,
                "invalid-request",
                Some("name"),
                "allowed are",
            ),
            case("bad queue config", "PUT", "/v1/queues/fresh", json_body(json!({"lease_ms": 10}))).want(
                422,
                "invalid-request",
                Some("lease_ms"),
                "1000",
            ),
            case("page too large", "GET", "/v1/jobs?limit=5000", "").want(
                422,
                "invalid-request",
                Some("limit"),
                "1000",
            ),
            case("bad query value", "GET", "/v1/jobs?limit=ten", "").want(
                422,
                "invalid-request",
                Some("limit"),
                "invalid digit",
            ),
            case("unknown query parameter", "GET", "/v1/dead?colour=red", "").want(
                422,
                "invalid-request",
                Some("colour"),
                "unknown field",
            ),
            case("bad state filter", "GET", "/v1/jobs?state=sleeping", "").want(
                422,
                "invalid-request",
                Some("state"),
                "unknown variant",
            ),
            case("ids and a filter", "POST", "/v1/dead/redrive", json_body(json!({"ids": [1], "queue": "q"}))).want(
                422,
                "invalid-request",
                Some("ids"),
                "cannot be combined",
            ),
            // Issue #18: inputs that were accepted or named wrongly.
            case("signed job id", "GET", "/v1/jobs/+1", "").want(422, "invalid-request", Some("id"), "job id"),
            case("lone surrogate", "POST", "/v1/jobs", r#"{"queue":"q","payload":{"s":"\ud800"}}"#).want(
                422,
                "invalid-request",
                Some("payload"),
                "surrogate",
            ),
            case("number beyond a double", "POST", "/v1/jobs", r#"{"queue":"q","payload":[1e400]}"#).want(
                422,
                "invalid-request",
                Some("payload"),
                "64-bit floating-point",
            ),
            case(
                "run_at in 9999",
                "POST",
                "/v1/jobs",
                json_body(json!({"queue": "q", "payload": 1, "run_at": "9999-12-31T23:59:59Z"})),
            )
            .want(422, "invalid-request", Some("run_at"), "too far ahead; the limit is 31622400000 ms"),
            case("result over the limit", "POST", format!("/v1/jobs/{id}/complete"), result_over).want(
                422,
                "invalid-request",
                Some("result"),
                "262144",
            ),
            case(
                "retry_after_ms over the limit",
                "POST",
                format!("/v1/jobs/{id}/fail"),
                json_body(json!({"lease_id": lease_id, "error": "x", "retry_after_ms": 1_000_000_000_000u64})),
            )
            .want(422, "invalid-request", Some("retry_after_ms"), "2592000000"),
            case(
                "one key, two payloads in a batch",
                "POST",
                "/v1/jobs/batch",
                json_body(json!({"jobs": [
                    {"queue": "q", "payload": 1, "idempotency_key": "k"},
                    {"queue": "q", "payload": 2, "idempotency_key": "k"},
                ]})),
            )
            .want(422, "invalid-request", Some("jobs[1].idempotency_key"), "different payload"),
            case("latin-1 JSON", "POST", "/v1/jobs", json_body(ok_job.clone()))
                .header("Content-Type", "application/json; charset=latin1")
                .want(415, "unsupported-media-type", None, "latin1"),
            case("merge patch", "PUT", "/v1/queues/q", "{}")
                .header("Content-Type", "application/merge-patch+json")
                .want(415, "unsupported-media-type", None, "merge-patch"),
            // Issue #10: what an HTML form or a CORS-simple fetch can send, and DNS rebinding.
            case("form post", "POST", "/v1/queues/q/pause", "x=1")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .want(415, "unsupported-media-type", None, "application/json"),
            case("text/plain enqueue", "POST", "/v1/jobs", json_body(ok_job.clone()))
                .header("Content-Type", "text/plain")
                .want(415, "unsupported-media-type", None, "text/plain"),
            case("no content type", "POST", "/v1/jobs", json_body(ok_job.clone()))
                .header("Content-Type", NO_HEADER)
                .want(415, "unsupported-media-type", None, "no Content-Type was sent"),
            case("body-less write without a content type", "POST", "/v1/queues/q/pause", "")
                .header("Content-Type", NO_HEADER)
                .want(415, "unsupported-media-type", None, "no Content-Type was sent"),
            case("rebound host name", "POST", "/v1/jobs", json_body(ok_job.clone()))
                .header("Host", "evil.example:7700")
                .want(421, "misdirected-request", Some("Host"), "--allowed-hosts"),
            case("rebound host name, read", "GET", "/v1/jobs", "").header("Host", "evil.example").want(
                421,
                "misdirected-request",
                Some("Host"),
                "evil.example",
            ),
            case("foreign origin", "POST", "/v1/jobs", json_body(ok_job.clone()))
                .header("Origin", "https://evil.example")
                .want(403, "forbidden-origin", Some("Origin"), "evil.example"),
            case("unknown route", "GET", "/v1/nothing", "").want(404, "not-found", None, "/v1/nothing"),
            case("wrong method", "DELETE", "/v1/jobs", "").want(405, "method-not-allowed", None, "DELETE"),
        ];
    for c in &cases {
        check(addr, c).await;
    }
    server.shutdown().await.unwrap();
}
