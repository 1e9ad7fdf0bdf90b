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
        ("/dashboard/schedules.js", "text/javascript; charset=utf-8"),
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

/// Every file in `assets/` is embedded and served as it is on disk: a page added without its line
/// in `dashboard.rs` would be missing from the binary, and the dashboard would fail to load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_in_assets_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut names: Vec<String> =
        std::fs::read_dir(&assets).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert!(names.iter().any(|n| n == "schedules.js"), "{names:?}");
    for name in &names {
        let reply = get(server.addr, &format!("/dashboard/{name}")).await.expect(200);
        assert_eq!(reply.body, std::fs::read(assets.join(name)).unwrap(), "{name}");
    }
    // The navigation links the schedules page, and the entry point routes to it.
    let index = String::from_utf8(get(server.addr, "/").await.expect(200).body).unwrap();
    assert!(index.contains(r##"href="#/schedules""##), "{index}");
    let app = String::from_utf8(get(server.addr, "/dashboard/app.js").await.expect(200).body).unwrap();
    assert!(app.contains("./schedules.js"), "app.js imports the schedules page");
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
        self.next("snapshot").await
    }

    /// The next event named `kind` (others are skipped). `None` when the server ended the stream.
    async fn next(&mut self, kind: &str) -> Option<Value> {
        let wanted = format!("event: {kind}");
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                if !event.lines().any(|l| l == wanted) {
                    continue; // a keep-alive comment, or another kind
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
    assert_eq!(list["forget_after_ms"], 30_000);
    assert_eq!(list["workers_max"], 1_000);
    let w1 = &list["workers"][0];
    // Regression (issue #18, defect 1): not polling but holding leases is busy, not idle.
    assert_eq!(
        (&w1["id"], &w1["queues"], &w1["polling"], &w1["leased_total"], &w1["state"]),
        (&json!("w1"), &json!(["mail"]), &json!(0), &json!(2), &json!("busy"))
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
    assert_eq!(list["workers"][0]["state"], "busy");
    // Its last lease acked (failed, here): idle.
    post(addr, &format!("/v1/jobs/{b}/fail"), json!({"lease_id": other["lease_id"], "error": "x"})).await.expect(200);
    let list = get(addr, "/v1/workers").await.expect(200).value();
    assert_eq!((&list["workers"][0]["state"], &list["workers"][0]["leases"]), (&json!("idle"), &json!([])), "{list:#}");

    // A worker long-polling shows as polling. (It is listed by when it was last seen, which
    // can be the same millisecond as w1's last ack, so it is found by its id.)
    let waiting = tokio::spawn(post(addr, "/v1/lease", json!({"queues": ["idle"], "worker": "w2", "wait_ms": 30_000})));
    while server.lease_waiting() != 1 {
        tokio::task::yield_now().await;
    }
    let list = get(addr, "/v1/workers").await.expect(200).value();
    let w2 = list["workers"].as_array().unwrap().iter().find(|w| w["id"] == "w2").expect("w2 is listed");
    assert_eq!((&w2["id"], &w2["queues"], &w2["polling"]), (&json!("w2"), &json!(["idle"]), &json!(1)), "{list:#}");
    assert_eq!((&w2["leases"], &w2["state"]), (&json!([]), &json!("idle")));
    server.shutdown().await.unwrap();
    waiting.await.unwrap().expect(200);
}

/// Regression (issue #18, defect 1): the live view counted polls in flight ("Workers polling 0"
/// while jobs ran) and showed busy workers as idle. The snapshot says who is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_counts_busy_and_idle_workers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    enqueue(addr, "mail", json!({"n": 1})).await;
    let jobs = lease(addr, "mail", 1).await;
    let mut events = Events::open(addr).await;
    let busy = loop {
        let s = events.snapshot().await.expect("a snapshot");
        if s["workers_busy"] == 1 {
            break s;
        }
    };
    let w = &busy["workers"][0];
    assert_eq!(
        (&w["id"], &w["state"], &w["leases"], &w["polling"]),
        (&json!("w1"), &json!("busy"), &json!(1), &json!(0))
    );
    assert_eq!(busy["workers_idle"], 0);
    let id = jobs[0]["id"].as_u64().unwrap();
    post(addr, &format!("/v1/jobs/{id}/complete"), json!({"lease_id": jobs[0]["lease_id"]})).await.expect(200);
    let idle = loop {
        let s = events.snapshot().await.expect("a snapshot");
        if s["workers_idle"] == 1 {
            break s;
        }
    };
    assert_eq!((&idle["workers"][0]["state"], &idle["workers"][0]["leases"]), (&json!("idle"), &json!(0)));
    assert_eq!(idle["workers_busy"], 0);
    server.shutdown().await.unwrap();
}

/// Regression (issue #18, item 4): the overview's charts started empty after a reload. A stream
/// begins with the server's throughput history, so a new page has the minutes before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_begins_with_the_throughput_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let mut first = Events::open(addr).await;
    let history = first.next("history").await.expect("a history event first");
    assert_eq!(history["interval_ms"], 1_000);
    // Three ticks, with an enqueue before each.
    for n in 0..3 {
        enqueue(addr, "mail", json!({ "n": n })).await;
        let want = n + 1;
        while first.snapshot().await.expect("a snapshot")["activity"][0]["enqueued"] != want {}
    }
    drop(first);
    // A reload: the history comes first and holds what the first page saw.
    let mut reloaded = Events::open(addr).await;
    let history = reloaded.next("history").await.expect("a history event first");
    let points = history["points"].as_array().unwrap();
    assert!(points.len() >= 3, "{history:#}");
    let at: Vec<i64> = points.iter().map(|p| p["at_ms"].as_i64().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "one point per tick, oldest first: {at:?}");
    let enqueued: Vec<u64> = points.iter().filter_map(|p| p["queues"]["mail"]["enqueued"].as_u64()).collect();
    assert!(enqueued.windows(2).all(|w| w[0] <= w[1]), "totals only grow: {enqueued:?}");
    assert_eq!(enqueued.last(), Some(&3), "{history:#}");
    let last = points.last().unwrap();
    assert_eq!(last["queues"]["mail"]["waiting"], 3, "waiting jobs from the store: {last:#}");
    server.shutdown().await.unwrap();
}

/// Regression (issue #18, defect 9): at most 32 streams were open at once, each reading the
/// store every second, so one tab too many stopped a colleague's dashboard. Now one snapshot a
/// tick is shared by every stream, and far more streams may be open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_snapshot_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    enqueue(addr, "mail", json!({"n": 1})).await;
    const STREAMS: usize = 64;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        // Each opens with 200 (`Events::open` checks), past the old bound of 32.
        streams.push(Events::open(addr).await);
    }
    let queue_lists = |scrape: &str| -> f64 {
        let line = scrape
            .lines()
            .find(|l| l.starts_with("dray_store_call_seconds_count{") && l.contains("call=\"queue_list\""))
            .unwrap_or_else(|| panic!("queue_list calls in\n{scrape}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = queue_lists(&String::from_utf8(get(addr, "/metrics").await.expect(200).body).unwrap());
    let started = std::time::Instant::now();
    // Every stream gets two more snapshots.
    let mut at = std::collections::BTreeSet::new();
    for events in &mut streams {
        for _ in 0..2 {
            at.insert(events.snapshot().await.expect("a snapshot")["at_ms"].as_i64().unwrap());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = queue_lists(&String::from_utf8(get(addr, "/metrics").await.expect(200).body).unwrap());
    // One store read per tick (at most one a second, however many streams) plus the scrape's
    // own; a read per stream would be at least 2 x 64.
    let calls = after - before;
    assert!(calls <= elapsed.ceil() + 3.0, "{calls} queue_list calls in {elapsed:.1} s for {STREAMS} streams");
    assert!(at.len() as f64 <= elapsed.ceil() + 3.0, "{} distinct snapshots in {elapsed:.1} s", at.len());
    drop(streams);
    server.shutdown().await.unwrap();
}
