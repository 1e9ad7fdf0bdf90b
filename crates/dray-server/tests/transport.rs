//! The accept loop against hostile and broken clients (`serve.rs`), and HTTPS (`tls.rs`), in
//! process over raw sockets. Timeouts are set small through `Config`; every wait is bounded by
//! [`WAIT_MAX`], and no assertion depends on how fast anything is.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Reply, parse_response, request, request_head};
use dray_server::{Config, Running};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT_MAX: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name)
}

async fn start_with(config: Config) -> Running {
    dray_server::start(config).await.expect("server starts")
}

/// Reads until the server closes the connection (EOF or reset), bounded by [`WAIT_MAX`].
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT_MAX, read).await.expect("the server closes the connection");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(Config::for_test(dir.path())).await;
    let length = (100 << 20).to_string();
    for extra in [None, Some(("Expect", "100-continue"))] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut head = "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n".to_string();
        if let Some((name, value)) = extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
        stream.write_all(head.as_bytes()).await.unwrap();
        // Not a byte of the body is sent: the answer comes anyway, and it is not `100 Continue`.
        let reply = parse_response(&read_until_closed(&mut stream).await).expect(413);
        assert_eq!(reply.problem().kind, "urn:dray:problem:body-too-large");
        assert_eq!(reply.header("connection"), Some("close"));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_get_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(Config::for_test(dir.path())).await;
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("X-Header-{i}"), "x".to_owned())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply = request(server.addr, "GET", "/v1/queues", &many, b"").await.expect(431);
    assert_eq!(reply.problem().kind, "urn:dray:problem:headers-too-large");
    let long = format!("/v1/jobs?{}", "a".repeat(70_000));
    let reply = request(server.addr, "GET", &long, &[], b"").await.expect(414);
    assert_eq!(reply.problem().kind, "urn:dray:problem:uri-too-long");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /v1/queues HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n").await.unwrap();
    let reply = parse_response(&read_until_closed(&mut stream).await).expect(400);
    assert_eq!(reply.problem().kind, "urn:dray:problem:bad-request");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_idle_connections_and_stalled_bodies_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_test(dir.path()).with_transport_timeouts_ms(300, 300, 300);
    let server = start_with(config).await;

    // Slowloris: half a head, then nothing. The connection is closed without an answer.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    assert!(read_until_closed(&mut slow).await.is_empty());

    // A connection that never says anything.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());

    // Kept alive after an answer, then idle: closed.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let answered = read_until_closed(&mut idle).await;
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answered));

    // A body that stalls: 408, and the connection closes.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let head = request_head("POST", "/v1/jobs", &[], 100);
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(b"{\"queue\": \"q\", ").await.unwrap();
    let reply = parse_response(&read_until_closed(&mut stalled).await).expect(408);
    assert_eq!(reply.problem().kind, "urn:dray:problem:body-timeout");

    // None of this touches a request in its handler: a long-poll waits longer than every timeout
    // and still gets its (empty) answer.
    let body = json!({"queues": ["nothing"], "worker": "w1", "count": 1, "wait_ms": 1_000}).to_string();
    let reply = request(server.addr, "POST", "/v1/lease", &[], body.as_bytes()).await.expect(200);
    assert_eq!(reply.value()["jobs"], json!([]));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_get_503_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(Config::for_test(dir.path()).with_connections_max(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // The three are accepted in the background: poll until the fourth is refused.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let answer = read_until_closed(&mut extra).await;
        if answer.starts_with(b"HTTP/1.1 503") {
            assert_eq!(parse_response(&answer).problem().kind, "urn:dray:problem:connections-full");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused: {}", String::from_utf8_lossy(&answer));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    loop {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
        if read_until_closed(&mut stream).await.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.shutdown().await.unwrap();
}

/// Regression: with `axum::serve`, a connection holding half a head kept shutdown waiting the
/// whole grace period, and the store could not be closed ("cannot close the store").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_holding_half_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(Config::for_test(dir.path())).await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: loc").await.unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    // The default grace is 10 s; finishing well inside it shows nothing waited for these two.
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown does not wait for connections without a request in flight")
        .expect("the store closes");
    assert!(read_until_closed(&mut half).await.is_empty());
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(fixture("ca.pem")).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring: see dray-server's tls.rs
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn https_get(addr: SocketAddr, path: &str) -> Reply {
    https_request(addr, "GET", path, b"").await
}

async fn https_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tls_connector().connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request_head(method, path, &[], body.len()).as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    parse_response(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_and_tells_plain_http_clients_to_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(Config::for_test(dir.path()).with_tls(fixture("a.pem"), fixture("a.key"))).await;
    assert!(server.url().starts_with("https://127.0.0.1:"), "{}", server.url());
    let reply = https_get(server.addr, "/healthz").await.expect(200);
    assert_eq!(reply.value()["status"], "ok");
    let reply = https_get(server.addr, "/v1/nothing").await.expect(404);
    reply.problem();

    server.shutdown().await.unwrap();

    // Over HTTPS the dashboard's session cookie is `Secure`.
    let secret = "transport-test-admin-token-0123456789";
    let config = Config::for_test(dir.path()).with_admin_token(secret).with_tls(fixture("a.pem"), fixture("a.key"));
    let server = start_with(config).await;
    let body = json!({ "token": secret }).to_string();
    let reply = https_request(server.addr, "POST", "/dashboard/login", body.as_bytes()).await.expect(204);
    let cookie = reply.header("set-cookie").expect("a session cookie");
    assert!(cookie.split(';').any(|part| part.trim() == "Secure"), "{cookie}");

    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let reply = parse_response(&read_until_closed(&mut plain).await).expect(400);
    assert_eq!(reply.problem().kind, "urn:dray:problem:https-required");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificates_fail_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not PEM at all\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases = [
        (missing.clone(), fixture("a.key"), format!("--tls-cert: cannot read {}", missing.display())),
        (empty.clone(), fixture("a.key"), format!("--tls-cert: {} holds no certificate", empty.display())),
        (fixture("a.pem"), empty.clone(), format!("--tls-key: {} holds no private key", empty.display())),
        (
            fixture("a.pem"),
            fixture("b.key"),
            format!(
                "--tls-key: the private key in {} does not match the certificate in {}",
                fixture("b.key").display(),
                fixture("a.pem").display()
            ),
        ),
    ];
    for (cert, key, expected) in cases {
        let data = tempfile::tempdir().unwrap();
        let err = dray_server::start(Config::for_test(data.path()).with_tls(cert, key)).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with(&expected), "{text}\nexpected: {expected}");
        // Refused before the store was created.
        assert!(std::fs::read_dir(data.path()).unwrap().next().is_none(), "{text}");
    }
}
