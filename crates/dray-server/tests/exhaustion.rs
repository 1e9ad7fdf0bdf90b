//! The server when its process runs out of file descriptors (issue #10: under
//! `prlimit --nofile=128` with idle sockets, ~64 MiB of enqueues needed a new log segment that
//! could not be opened, and every request answered 503 for good, even after the sockets closed).
//!
//! Here, in one process: the test lowers its own soft limit, takes every free descriptor, and
//! enqueues over a connection opened before, until the store needs a new segment. That enqueue
//! gets 503 (nothing accepted), `/readyz` answers 503 while `/healthz` stays 200 (do not restart:
//! it comes back), and once the descriptors are given back `/readyz` returns to 200 by itself and
//! every accepted job is there.
//!
//! A full disk and a failed fsync cannot be produced here without root tricks; the store-level
//! tests on the simulated disk (`crates/dray-store-embedded/tests/faults.rs`) cover them, and
//! `Health::Failed` maps to `/healthz` 503 in `routes.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `EMFILE` on Linux, spelled out: this crate does not depend on `libc`.
const EMFILE: i32 = 24;

/// One HTTP/1.1 keep-alive connection, spoken by hand: it needs no new descriptor per request.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        Conn { stream: BufReader::new(TcpStream::connect(addr).await.expect("connect")) }
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(body.as_bytes()).await.expect("write");
        let mut line = String::new();
        self.stream.read_line(&mut line).await.expect("status line");
        let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.expect("header");
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a length");
            }
        }
        let mut buf = vec![0; length];
        self.stream.read_exact(&mut buf).await.expect("body");
        (status, serde_json::from_slice(&buf).unwrap_or(Value::Null))
    }
}

/// Sets this process's soft limit on open files with `prlimit` (no unsafe code needed).
fn nofile_soft_limit(limit: u64) {
    let pid = std::process::id().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={limit}:")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_store_refuses_then_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut conn = Conn::open(server.addr).await;
    let mut probe = Conn::open(server.addr).await;
    assert_eq!(probe.request("GET", "/readyz", None).await.0, 200);

    // Room for what is open now and a little more, then take every free descriptor.
    nofile_soft_limit(open_descriptors() + 64);
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }

    // 4 MiB batches: the default 64 MiB segment is full after about sixteen.
    let payload = "x".repeat(4_000);
    let batch = json!({"jobs": (0..1_000).map(|_| json!({"queue": "q", "payload": payload})).collect::<Vec<_>>()});
    let mut accepted = 0u64;
    let mut refused = None;
    for _ in 0..40 {
        let (status, body) = conn.request("POST", "/v1/jobs/batch", Some(&batch)).await;
        match status {
            201 => accepted += 1_000,
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("enqueue answered {other}: {body}"),
        }
    }
    let refused = refused.expect("a new log segment was needed and could not be opened");
    assert!(accepted > 0);
    assert_eq!(refused["status"], 503, "{refused}");
    let (status, body) = probe.request("GET", "/readyz", None).await;
    assert_eq!(status, 503, "not ready while out of descriptors: {body}");
    let (status, body) = probe.request("GET", "/healthz", None).await;
    assert_eq!(status, 200, "alive: a restart is not needed: {body}");
    assert_eq!(conn.request("POST", "/v1/jobs/batch", Some(&batch)).await.0, 503, "still out");

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = probe.request("GET", "/readyz", None).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never came back: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = conn.request("POST", "/v1/jobs/batch", Some(&batch)).await;
    assert_eq!(status, 201, "{body}");
    accepted += 1_000;
    let (status, queue) = probe.request("GET", "/v1/queues/q", None).await;
    assert_eq!(status, 200, "{queue}");
    assert_eq!(queue["counts"]["available"], accepted, "every accepted job, none of the refused: {queue}");
    server.shutdown().await.unwrap();
}
