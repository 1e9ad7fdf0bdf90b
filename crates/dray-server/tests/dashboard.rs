//! The dashboard's server side, over HTTP: the embedded assets (types, caching, security headers),
//! the live stream of snapshots at `/dashboard/events`, and `GET /v1/workers`. The pages
//! themselves run in a real browser in `crates/dray/tests/dashboard.rs`.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_with_their_type_an_etag_and_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;

    let index = get(addr, "/").await.expect(200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&index.body).contains("/dashboard/app.js"));
    let csp = index.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(index.header("cache-control"), Some("no-cache"));

    for (path, kind) in [
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ] {
        let reply = get(addr, path).await.expect(200);
        assert_eq!(reply.header("content-type"), Some(kind), "{path}");
        assert!(!reply.body.is_empty(), "{path}");
        // Revalidation with the same tag: 304 and no body.
        let etag = reply.header("etag").expect("an etag").to_owned();
        let again = request(addr, "GET", path, &[("If-None-Match", &etag)], b"").await.expect(304);
        assert!(again.body.is_empty(), "{path}");
        request(addr, "GET", path, &[("If-None-Match", "\"other\"")], b"").await.expect(200);
    }

    let missing = get(addr, "/dashboard/nope.js").await.expect(404);
    assert_eq!(missing.problem().kind, "urn:dray:problem:not-found");
    server.shutdown().await.unwrap();
}

/// A `GET /dashboard/events` stream read over a raw socket: HTTP/1.1 chunks, then SSE events.
struct Events {
    stream: TcpStream,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked text not yet split into events.
    text: String,
}

impl Events {
    async fn open(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request_head("GET", "/dashboard/events", &[], 0).as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            read_some(&mut stream, &mut raw).await;
        }
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        raw.drain(..end + 4);
        Events { stream, raw, text: String::new() }
    }

    /// The next `snapshot` event's data. `None` when the server ended the stream.
    async fn snapshot(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                if !event.lines().any(|l| l == "event: snapshot") {
                    continue; // a keep-alive comment
                }
                let data = event.lines().find_map(|l| l.strip_prefix("data: ")).expect("data");
                return Some(serde_json::from_str(data).expect("JSON data"));
            }
            // One whole chunk: its size line, then that many bytes and CRLF.
            loop {
                if let Some(line) = self.raw.windows(2).position(|w| w == b"\r\n") {
                    let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..line]).unwrap(), 16).unwrap();
                    if size == 0 {
                        return None;
                    }
                    if self.raw.len() >= line + 2 + size + 2 {
                        let chunk = self.raw[line + 2..line + 2 + size].to_vec();
                        self.raw.drain(..line + 2 + size + 2);
                        self.text.push_str(std::str::from_utf8(&chunk).unwrap());
                        break;
                    }
                }
                if !read_some(&mut self.stream, &mut self.raw).await {
                    return None;
                }
            }
        }
    }
}

/// Reads what arrived; false at the end of the connection (closed or reset by the server).
async fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf).await {
        Ok(n) => {
            into.extend_from_slice(&buf[..n]);
            n > 0
        }
        Err(_) => false,
    }
}

fn queue<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    let queues = snapshot["queues"].as_array().unwrap_or_else(|| panic!("queues in {snapshot:#}"));
    queues.iter().find(|q| q["name"] == name).unwrap_or_else(|| panic!("{name} in {snapshot:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_sends_snapshots_that_follow_changes_and_ends_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    enqueue(addr, "mail", json!({"n": 1})).await;

    let mut events = Events::open(addr).await;
    let first = events.snapshot().await.expect("a snapshot at once");
    assert_eq!(queue(&first, "mail")["counts"]["available"], 1, "{first:#}");
    assert!(first["at"].is_string() && first["at_ms"].is_i64(), "{first:#}");
    assert!(first["problem"].is_null(), "{first:#}");

    // The next snapshots follow an enqueue and a lease, with the worker that leased.
    enqueue(addr, "mail", json!({"n": 2})).await;
    lease(addr, "mail", 1).await;
    let seen = loop {
        let snapshot = events.snapshot().await.expect("another snapshot");
        let counts = &queue(&snapshot, "mail")["counts"];
        if counts["available"] == 1 && counts["running"] == 1 {
            break snapshot;
        }
    };
    let workers = seen["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{seen:#}");
    assert_eq!(workers[0]["id"], "w1");
    assert_eq!(workers[0]["queues"], json!(["mail"]));
    assert_eq!(workers[0]["leased_total"], 1);

    // A dashboard left open does not hold up a graceful shutdown: the stream ends, and the store
    // closes (it could not while the stream still held it).
    let shutdown = tokio::spawn(server.shutdown());
    while events.snapshot().await.is_some() {}
    shutdown.await.unwrap().expect("a clean shutdown with a dashboard open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_who_polls_and_the_leases_still_held() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/v1/workers").await.expect(200).value()["workers"], json!([]));

    let a = enqueue(addr, "mail", json!({"n": 1})).await;
    let b = enqueue(addr, "mail", json!({"n": 2})).await;
    let jobs = lease(addr, "mail", 2).await;
    let list = get(addr, "/v1/workers").await.expect(200).value();
    assert_eq!(list["forget_after_ms"], 600_000);
    assert_eq!(list["workers_max"], 1_000);
    let w1 = &list["workers"][0];
    assert_eq!(
        (&w1["id"], &w1["queues"], &w1["polling"], &w1["leased_total"]),
        (&json!("w1"), &json!(["mail"]), &json!(0), &json!(2))
    );
    let held: Vec<(u64, u64)> = w1["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["job"].as_u64().unwrap(), l["fencing_token"].as_u64().unwrap()))
        .collect();
    let handed: Vec<(u64, u64)> =
        jobs.iter().map(|j| (j["id"].as_u64().unwrap(), j["fencing_token"].as_u64().unwrap())).collect();
    assert_eq!(held, handed);
    assert_eq!(held.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![a, b]);

    // A completed job's lease is no longer held; a heartbeat moves the other's deadline.
    let (done, other) = (&jobs[0], &jobs[1]);
    post(addr, &format!("/v1/jobs/{a}/complete"), json!({"lease_id": done["lease_id"]})).await.expect(200);
    let beat =
        post(addr, &format!("/v1/jobs/{b}/heartbeat"), json!({"lease_id": other["lease_id"], "extend_ms": 3_600_000}))
            .await
            .expect(200)
            .value();
    let list = get(addr, "/v1/workers").await.expect(200).value();
    let leases = list["workers"][0]["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{list:#}");
    assert_eq!(leases[0]["job"], b);
    assert_eq!(leases[0]["lease_id"], other["lease_id"]);
    assert_eq!(leases[0]["deadline"], beat["deadline"], "the store's deadline, not the one handed out");

    // A worker long-polling shows as polling, first in the list (seen now).
    let waiting = tokio::spawn(post(addr, "/v1/lease", json!({"queues": ["idle"], "worker": "w2", "wait_ms": 30_000})));
    while server.lease_waiting() != 1 {
        tokio::task::yield_now().await;
    }
    let list = get(addr, "/v1/workers").await.expect(200).value();
    let w2 = &list["workers"][0];
    assert_eq!((&w2["id"], &w2["queues"], &w2["polling"]), (&json!("w2"), &json!(["idle"]), &json!(1)), "{list:#}");
    assert_eq!(w2["leases"], json!([]));
    server.shutdown().await.unwrap();
    waiting.await.unwrap().expect(200);
}
