//! What the server's tests share: a server on a temporary directory, a tiny HTTP/1.1 client over
//! a raw socket (one request per connection), which can also hold a request half-sent, and a
//! PostgreSQL database of its own for a test in PostgreSQL mode.
#![allow(dead_code)]

use std::net::SocketAddr;

use dray_api::Problem;
use dray_server::{Config, Running};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn start(dir: &std::path::Path) -> Running {
    dray_server::start(Config::for_test(dir)).await.expect("server starts")
}

/// A response: status, headers (names lowercased) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    pub fn value(&self) -> Value {
        self.json()
    }

    /// The body as a problem, checking it is served as one.
    pub fn problem(&self) -> Problem {
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let p: Problem = self.json();
        assert_eq!(p.status, self.status, "{p:?}");
        assert!(p.kind.starts_with("urn:dray:problem:"), "{p:?}");
        assert!(!p.detail.is_empty(), "{p:?}");
        p
    }

    /// Asserts the status, showing the body when it is not the one expected.
    #[track_caller]
    pub fn expect(self, status: u16) -> Reply {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        self
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = request_head(method, path, headers, body.len());
    let (mut read, mut write) = stream.split();
    // Write and read at once: the server may answer (413) before it has read the whole body.
    let writing = async {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(body).await;
    };
    let reading = async {
        let mut buf = Vec::new();
        read.read_to_end(&mut buf).await.map(|_| buf)
    };
    let ((), response) = tokio::join!(writing, reading);
    parse_response(&response.expect("read the response"))
}

/// A request head. Writes carry `Content-Type: application/json` unless `headers` names one (the
/// value [`NO_HEADER`] leaves the header out), and `Host: localhost` unless `headers` names one.
pub fn request_head(method: &str, path: &str, headers: &[(&str, &str)], body_len: usize) -> String {
    let named = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !named("host") {
        head.push_str("Host: localhost\r\n");
    }
    if !named("content-type") && (body_len > 0 || !matches!(method, "GET" | "HEAD" | "DELETE")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers.iter().filter(|(_, v)| *v != NO_HEADER) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {body_len}\r\n\r\n"));
    head
}

/// A header value meaning "send no such header" in [`request_head`].
pub const NO_HEADER: &str = "\u{0}none";

pub fn parse_response(bytes: &[u8]) -> Reply {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &bytes[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Reply { status, headers, body }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap().trim(), 16).unwrap();
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    request(addr, "POST", path, &[], body.to_string().as_bytes()).await
}

pub async fn put(addr: SocketAddr, path: &str, body: Value) -> Reply {
    request(addr, "PUT", path, &[], body.to_string().as_bytes()).await
}

/// Enqueues a job and returns its id.
pub async fn enqueue(addr: SocketAddr, queue: &str, payload: Value) -> u64 {
    let reply = post(addr, "/v1/jobs", json!({ "queue": queue, "payload": payload })).await.expect(201);
    reply.value()["id"].as_u64().unwrap()
}

/// Leases without waiting; returns the jobs as JSON.
pub async fn lease(addr: SocketAddr, queue: &str, count: usize) -> Vec<Value> {
    let reply = post(addr, "/v1/lease", json!({ "queues": [queue], "worker": "w1", "count": count })).await.expect(200);
    reply.value()["jobs"].as_array().unwrap().clone()
}

/// Everything the API shows about the store's contents: the queues with their counts, and every
/// job with its history. Equal before and after means nothing changed.
pub async fn state(addr: SocketAddr) -> Value {
    let queues = get(addr, "/v1/queues").await.expect(200).value();
    let page = get(addr, "/v1/jobs?limit=1000").await.expect(200).value();
    let mut jobs = Vec::new();
    for j in page["jobs"].as_array().unwrap() {
        let id = j["id"].as_u64().unwrap();
        jobs.push(get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value());
    }
    json!({ "queues": queues, "jobs": jobs })
}

/// A request sent up to the end of its head with `Expect: 100-continue`, answered with
/// `100 Continue` by the server: the request is in a handler, reading its body.
pub struct HalfSent {
    stream: TcpStream,
    body: Vec<u8>,
}

impl HalfSent {
    pub async fn open(addr: SocketAddr, method: &str, path: &str, body: Value) -> HalfSent {
        let body = body.to_string().into_bytes();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = request_head(method, path, &[("Expect", "100-continue")], body.len());
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "the connection closed before 100 Continue: {:?}", String::from_utf8_lossy(&seen));
            seen.push(byte[0]);
        }
        assert!(seen.starts_with(b"HTTP/1.1 100"), "{:?}", String::from_utf8_lossy(&seen));
        HalfSent { stream, body }
    }

    /// Sends the body and reads the response.
    pub async fn finish(mut self) -> Reply {
        self.stream.write_all(&self.body).await.unwrap();
        let mut buf = Vec::new();
        self.stream.read_to_end(&mut buf).await.unwrap();
        parse_response(&buf)
    }
}

/// POSTs `body` with a bearer token, expects 201, and returns the `id` of the answer.
pub async fn post_with(addr: SocketAddr, path: &str, body: Value, token: &str) -> u64 {
    let auth = format!("Bearer {token}");
    let reply = request(addr, "POST", path, &[("Authorization", &auth)], body.to_string().as_bytes()).await.expect(201);
    reply.value()["id"].as_u64().unwrap()
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    name: String,
    admin: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        // Unique across processes (nextest runs each test in its own) and within one.
        static CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unique = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), (std::process::id(), n));
        let name = format!("dray_server_{unique:016x}");
        let (client, connection) = admin_connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin}: {e}. Set DATABASE_URL, or start the local server.")
        });
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        TestDb { url: format!("{base}/{name}"), name, admin }
    }
}

/// A session on the admin database, opened as the store opens its own (TLS settings included).
pub async fn admin_connect(
    url: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<tokio_postgres::Socket, dray_store_postgres::TlsStream<tokio_postgres::Socket>>,
)> {
    let connector = dray_store_postgres::PostgresConfig::new(url).connector()?;
    Ok(connector.connect().await?)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which must not block: a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) = admin_connect(&admin).await {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}
