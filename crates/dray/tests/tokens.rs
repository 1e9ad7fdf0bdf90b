//! Tokens end to end with the real binary: `dray serve --admin-token-file`, `dray tokens
//! create|list|revoke`, `--token` and `DRAY_TOKEN` on every command, the refusal to run open on
//! a non-loopback address, and revocation reaching every node of a PostgreSQL deployment.

mod common;
mod pg;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{BIN, POLL, ServeProcess, WAIT_MAX};

const ADMIN: &str = "cli-test-admin-token-0123456789";

fn admin_file(dir: &Path) -> String {
    let path = dir.join("admin-token");
    // Whitespace around the secret is trimmed.
    std::fs::write(&path, format!("  {ADMIN}\n\n")).unwrap();
    path.display().to_string()
}

/// `dray ARGS` against `url`, with `DRAY_TOKEN` set to `env_token` when given.
fn dray(url: &str, env_token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.env_remove("DRAY_TOKEN").env("DRAY_SERVER", url).args(args);
    if let Some(token) = env_token {
        command.env("DRAY_TOKEN", token);
    }
    command.output().expect("dray runs")
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tokens_create_list_revoke_and_the_token_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = admin_file(dir.path());
    let server = ServeProcess::spawn(&dir.path().join("data"), "127.0.0.1:0", &["--admin-token-file", &file]).unwrap();
    let url = server.url.clone();

    // Without a token: refused, exit status 7, the problem on stderr.
    let out = dray(&url, None, &["queues", "list"]);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let out = dray(&url, None, &["--json", "queues", "list"]);
    let problem: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!((problem["status"].as_u64(), problem["exit_code"].as_u64()), (Some(401), Some(7)), "{problem}");

    // --json create prints exactly the API's object.
    let created: Value = serde_json::from_str(&ok(dray(
        &url,
        None,
        &[
            "--token",
            ADMIN,
            "--json",
            "tokens",
            "create",
            "--name",
            "producer",
            "--scope",
            "enqueue:billing.*",
            "--scope",
            "read",
        ],
    )))
    .unwrap();
    let mut keys: Vec<&str> = created.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["expires_at", "id", "name", "scopes", "token"], "{created}");
    assert_eq!(created["scopes"], serde_json::json!(["enqueue:billing.*", "read"]));
    assert_eq!(created["expires_at"], Value::Null);
    let producer = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();

    // The human form shows the secret once, on a line of its own.
    let human = ok(dray(
        &url,
        Some(ADMIN),
        &["tokens", "create", "--name", "w", "--scope", "work", "--expires-at", "2999-01-01T00:00:00Z"],
    ));
    assert!(human.lines().any(|l| l.starts_with("token dray_")), "{human}");
    assert!(human.contains("2999-01-01T00:00:00Z"), "{human}");

    // DRAY_TOKEN is sent on every command; the producer's scopes decide.
    ok(dray(&url, Some(&producer), &["enqueue", "--queue", "billing.invoices", "--payload", "{}"]));
    let out = dray(&url, Some(&producer), &["enqueue", "--queue", "payments", "--payload", "{}"]);
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("enqueue") && stderr.contains("payments"), "names the scope and queue: {stderr}");
    ok(dray(&url, Some(&producer), &["queues", "list"]));
    // ... and --token beats DRAY_TOKEN.
    ok(dray(&url, Some(&producer), &["--token", ADMIN, "tokens", "list"]));
    assert_eq!(dray(&url, Some(&producer), &["tokens", "list"]).status.code(), Some(7));

    let list: Value = serde_json::from_str(&ok(dray(&url, Some(ADMIN), &["--json", "tokens", "list"]))).unwrap();
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(!list.to_string().contains(&producer[22..]), "no secret in the list");
    let table = ok(dray(&url, Some(ADMIN), &["tokens", "list"]));
    assert!(table.contains(&id) && table.contains("producer") && table.contains("enqueue:billing.*"), "{table}");

    let revoked = ok(dray(&url, Some(ADMIN), &["tokens", "revoke", &id]));
    assert!(revoked.contains("revoked"), "{revoked}");
    let out = dray(&url, Some(&producer), &["queues", "list"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    let out = dray(&url, Some(ADMIN), &["tokens", "revoke", "00000000000000ff"]);
    assert_eq!(out.status.code(), Some(3), "not found");

    // The token file is read, never written.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("  {ADMIN}\n\n"));
    drop(server);
}

#[test]
fn auth_none_on_a_network_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--auth", "none", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth none is refused on 0.0.0.0:0"), "{stderr}");
    // Without --auth, a network address needs tokens: with none in the store and no admin token
    // file, nobody could authenticate, so it refuses too.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nobody could authenticate"), "{stderr}");
}

/// Revocation on one node of a PostgreSQL deployment is seen by the other within the documented
/// bound (`TOKEN_CACHE_TTL`, 1 s, plus a database read). The test polls with a generous deadline
/// and prints how long it took; it asserts the token is refused and stays refused.
#[test]
fn revocation_reaches_every_node_on_postgres() {
    let db = pg::TestDb::create();
    let dir = tempfile::tempdir().unwrap();
    let file = admin_file(dir.path());
    let a = pg::Node::start_with(&db.url, &["--admin-token-file", &file]);
    let b = pg::Node::start_with(&db.url, &["--admin-token-file", &file]);

    let created: Value = serde_json::from_str(&ok(dray(
        &a.url,
        Some(ADMIN),
        &["--json", "tokens", "create", "--name", "reader", "--scope", "read"],
    )))
    .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    // Created on A, used on B: tokens live in the database.
    ok(dray(&b.url, Some(&token), &["queues", "list"]));

    ok(dray(&a.url, Some(ADMIN), &["tokens", "revoke", &id]));
    let revoked_at = Instant::now();
    assert_eq!(dray(&a.url, Some(&token), &["queues", "list"]).status.code(), Some(7), "at once on A");
    let deadline = revoked_at + WAIT_MAX;
    loop {
        let out = dray(&b.url, Some(&token), &["queues", "list"]);
        if out.status.code() == Some(7) {
            break;
        }
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(Instant::now() < deadline, "node B still accepts the revoked token after {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    }
    eprintln!("node B refused the revoked token {:?} after the revocation", revoked_at.elapsed());
    for _ in 0..5 {
        assert_eq!(dray(&b.url, Some(&token), &["queues", "list"]).status.code(), Some(7), "stays refused");
        std::thread::sleep(Duration::from_millis(100));
    }
}
