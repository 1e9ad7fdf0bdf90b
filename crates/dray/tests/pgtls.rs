//! `dray serve --database` over TLS, as whole processes, against a private PostgreSQL cluster
//! with `ssl = on` and a certificate for `localhost` from a CA the test makes:
//!
//! - a certificate that does not verify ends the start promptly with a non-zero exit and a
//!   message that names the problem (it used to retry forever: "no TLS implementation
//!   configured");
//! - `sslmode=verify-full` with the CA serves a job end to end, and every session the node opens
//!   (the pool, the leader election, the LISTEN connection) is encrypted.

#[path = "../../dray-store-postgres/tests/cluster/mod.rs"]
mod cluster;
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Certs, Cluster};
use common::{BIN, ServeProcess, WAIT_MAX};
use dray_client::api::{CompleteRequest, LeaseRequest, State};
use dray_client::{Client, Enqueue};

/// Far below "forever", far above a refused handshake on a busy machine.
const START_REFUSED_MAX: Duration = Duration::from_secs(20);

#[test]
fn serve_over_tls_refuses_a_bad_certificate_and_serves_with_a_good_one() {
    let certs = Certs::new(&["localhost"]);
    let cluster = Cluster::start(Some(&certs));
    let ca = certs.ca.display().to_string();
    let data = tempfile::tempdir().expect("a temporary directory");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_host = cluster.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path().join("unused"))
        .args(["--database", &wrong_host])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dray serve starts");
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > START_REFUSED_MAX {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dray serve still running {START_REFUSED_MAX:?} after a TLS refusal: it should stop, not retry");
        }
        std::thread::sleep(common::POLL);
    };
    let mut stderr = String::new();
    child.stderr.take().expect("piped").read_to_string(&mut stderr).expect("stderr");
    assert!(!status.success(), "a refused certificate fails the start: {status}\n{stderr}");
    for needle in ["TLS with PostgreSQL failed", "sslmode=verify-full", "not valid for name \"127.0.0.1\""] {
        assert!(stderr.contains(needle), "the message names the problem ({needle:?}):\n{stderr}");
    }
    assert!(!stderr.contains("retrying"), "a TLS refusal is not retried:\n{stderr}");

    let good = cluster.url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let node = ServeProcess::spawn(&data.path().join("unused"), "127.0.0.1:0", &["--database", &good])
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let client = Client::builder(&node.url).request_timeout(Duration::from_secs(30)).build().expect("a client");
        let id = client.enqueue(Enqueue::new("tls", &"hello").expect("a job")).await.expect("enqueue").id;
        let request = LeaseRequest {
            queues: vec!["tls".into()],
            worker: "w".into(),
            count: Some(1),
            lease_ms: None,
            wait_ms: Some(5_000),
        };
        let leased = client.lease(request).await.expect("lease");
        let job = leased.jobs.first().expect("the job is leased");
        assert_eq!(job.id, id);
        client.complete(id, CompleteRequest { lease_id: job.lease_id.clone(), result: None }).await.expect("complete");
        assert_eq!(client.job(id).await.expect("job").state, State::Completed);
    });

    // Every session of the node, once all three kinds are open, is TLS.
    let inspect = cluster.url("127.0.0.1", "sslmode=disable");
    let sql = "SELECT a.application_name || '=' || s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
               WHERE a.application_name LIKE 'dray%' ORDER BY 1";
    let deadline = Instant::now() + WAIT_MAX;
    let sessions = loop {
        let out = Command::new("psql").args([&inspect, "-X", "-At", "-c", sql]).output().expect("psql runs");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        let sessions: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        let kinds = ["dray=", "dray-leader=", "dray-listen="];
        if kinds.iter().all(|k| sessions.iter().any(|s| s.starts_with(k))) || Instant::now() > deadline {
            break sessions;
        }
        std::thread::sleep(common::POLL);
    };
    for kind in ["dray=true", "dray-leader=true", "dray-listen=true"] {
        assert!(sessions.iter().any(|s| s == kind), "a {kind} session: {sessions:?}");
    }
    assert!(sessions.iter().all(|s| s.ends_with("=true")), "every session is TLS: {sessions:?}");
    let status = node.terminate();
    assert!(status.success(), "graceful shutdown: {status}");
}
