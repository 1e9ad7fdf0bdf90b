//! The server as a process: health and readiness, the OpenAPI document (a reviewed snapshot), and
//! a graceful shutdown that lets a request in flight finish.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    assert_eq!(get(addr, "/healthz").await.expect(200).value(), json!({"status": "ok"}));
    assert_eq!(get(addr, "/readyz").await.expect(200).value(), json!({"status": "ready"}));
    server.shutdown().await.unwrap();
}

/// Guards the API's shape: a change to any route or body shows up as a diff of `openapi.json`.
/// Review it, then accept it with `UPDATE_EXPECT=1 cargo nextest run -p dray-server openapi`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_matches_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let reply = get(server.addr, "/v1/openapi.json").await.expect(200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let served = String::from_utf8(reply.body).unwrap();
    assert_eq!(served, dray_server::openapi().to_pretty_json().unwrap(), "served as built");
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().any(|p| *p == "/v1/jobs/{id}/complete"), "{paths:?}");
    expect_test::expect_file!["../openapi.json"].assert_eq(&format!("{served}\n"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    // The server has read the request's head and is in the handler, reading the body.
    let in_flight = HalfSent::open(addr, "POST", "/v1/jobs", json!({"queue": "late", "payload": "last words"})).await;

    let shutdown = tokio::spawn(server.shutdown());
    // Wait (without sleeping) until the server has stopped accepting connections.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(!shutdown.is_finished(), "shutdown waits for the request in flight");

    let reply = in_flight.finish().await.expect(201);
    let id = reply.value()["id"].as_u64().unwrap();
    shutdown.await.unwrap().unwrap();

    // Accepted means durable: the job is there after a restart.
    let server = start(dir.path()).await;
    let job = get(server.addr, &format!("/v1/jobs/{id}")).await.expect(200).value();
    assert_eq!(job["payload"], "last words");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let err = dray_server::start(dray_server::Config::for_test(dir.path())).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot open the store"), "{err:#}");
    server.shutdown().await.unwrap();
}

/// `Running::wait`, as `dray serve` uses it: SIGTERM stops the server gracefully and closes the
/// store.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_gracefully() {
    use tokio::signal::unix::{SignalKind, signal};
    // Once tokio listens for SIGTERM anywhere in the process, the signal no longer kills it.
    let _survive = signal(SignalKind::terminate()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let id = enqueue(server.addr, "q", json!("kept")).await;
    let mut waiting = tokio::spawn(server.wait());
    // `wait` only sees signals sent after it starts listening, which it does not report: signal
    // until it answers (no sleeping; usually the first signal does it).
    let pid = std::process::id().to_string();
    loop {
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        tokio::select! {
            result = &mut waiting => {
                result.unwrap().unwrap();
                break;
            }
            () = tokio::task::yield_now() => {}
        }
    }
    let server = start(dir.path()).await;
    assert_eq!(get(server.addr, &format!("/v1/jobs/{id}")).await.expect(200).value()["payload"], "kept");
    server.shutdown().await.unwrap();
}
