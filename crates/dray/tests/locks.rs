//! Locks with fencing tokens through the real binary: a holder process paused (SIGSTOP) past its
//! TTL is fenced out by `<schema>.fence()` when it wakes and writes; `kill -9` and restarts of the
//! server keep tokens increasing and held locks held until their TTL.
//!
//! The holder is a shell script using `dray locks` and `psql`, as any language's client would.
//! Waits are polls bounded by `common::WAIT_MAX`, never a fixed sleep: "past its TTL" is observed
//! as the server saying nobody holds the lock.

mod common;
mod pg;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::{BIN, POLL, ServeProcess, WAIT_MAX};
use pg::{Node, TestDb, query};

/// `dray --server URL ARGS...`: (exit code, stdout, stderr).
fn dray(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("--server").arg(url).args(args).output().expect("dray runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dray locks acquire NAME --owner OWNER --ttl-ms TTL`: the fencing token.
#[track_caller]
fn acquire(url: &str, name: &str, owner: &str, ttl_ms: u64) -> u64 {
    let (code, out, err) = dray(url, &["locks", "acquire", name, "--owner", owner, "--ttl-ms", &ttl_ms.to_string()]);
    assert_eq!(code, 0, "acquire {name} for {owner}: {err}");
    out.trim().parse().unwrap_or_else(|e| panic!("not a token: {out:?}: {e}"))
}

/// `dray locks show NAME --json`, or `None` when nobody holds it (exit 3).
#[track_caller]
fn show(url: &str, name: &str) -> Option<serde_json::Value> {
    let (code, out, err) = dray(url, &["--json", "locks", "show", name]);
    match code {
        0 => Some(serde_json::from_str(&out).expect("JSON")),
        3 => None,
        _ => panic!("locks show {name}: exit {code}: {err}"),
    }
}

/// Polls until nobody holds `name`.
fn wait_free(url: &str, name: &str) {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if show(url, name).is_none() {
            return;
        }
        assert!(Instant::now() < deadline, "lock {name} still held after {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill(1) runs");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The holder: acquires the lock, says so, waits for a line on stdin (the test pauses it there
/// with SIGSTOP, past its TTL), then renews and writes through the fence with its token, as a
/// client that does not know it was paused.
const HOLDER: &str = r#"
set -u
t=$("$DRAY" --server "$URL" locks acquire report --owner A --ttl-ms 1000) || exit 10
echo "acquired $t"
read go
if "$DRAY" --server "$URL" locks renew report --owner A --fencing-token "$t" >/dev/null 2>&1; then
    echo "renew ok"
else
    echo "renew exit $?"
fi
psql "$DB" -X -q -v ON_ERROR_STOP=1 -v VERBOSITY=verbose \
    -c "BEGIN; SELECT dray.fence('report', $t); UPDATE reports SET body = 'by A', token = $t; COMMIT;" 2>&1
echo "write exit $?"
"#;

/// Regression guard for the Redlock failure (docs/locks.md): a holder paused past its TTL, whose
/// lock another holder then took and used, wakes up believing it still holds the lock; its renew
/// is refused and its write is refused by `fence()`, so the resource keeps the newer write. Then
/// a `kill -9` and restart of the node: the held lock is still held, tokens keep increasing.
#[test]
fn a_holder_paused_past_its_ttl_is_fenced_out() {
    let db = TestDb::create();
    let mut node = Node::start(&db.url);
    let url = node.url.clone();
    query(&db.url, "CREATE TABLE reports (id int PRIMARY KEY, body text NOT NULL, token bigint NOT NULL)");
    query(&db.url, "INSERT INTO reports VALUES (1, 'initial', 0)");

    let mut holder = Command::new("bash")
        .args(["-c", HOLDER])
        .env("DRAY", BIN)
        .env("URL", &url)
        .env("DB", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash runs");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = holder.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = lines.recv_timeout(WAIT_MAX).expect("the holder acquires");
    let token_a: u64 = first.strip_prefix("acquired ").and_then(|t| t.parse().ok()).expect(&first);

    // Paused with the lock in hand; its go-ahead waits in the pipe for when it runs again.
    signal(holder.id(), "-STOP");
    holder.stdin.take().expect("piped").write_all(b"go\n").unwrap();
    let held = show(&url, "report").expect("held by A");
    assert_eq!(held["holders"][0]["owner"], "A");
    assert_eq!(held["holders"][0]["fencing_token"], token_a);

    // Its TTL passes while it is stopped; B takes the lock and writes through the fence.
    wait_free(&url, "report");
    let token_b = acquire(&url, "report", "B", 30_000);
    assert!(token_b > token_a, "{token_b} after {token_a}");
    query(
        &db.url,
        &format!(
            "BEGIN; SELECT dray.fence('report', {token_b}); UPDATE reports SET body = 'by B', token = {token_b}; COMMIT;"
        ),
    );

    // A wakes up and carries on as if it still held the lock.
    signal(holder.id(), "-CONT");
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(WAIT_MAX) {
        let done = line.starts_with("write exit");
        rest.push(line);
        if done {
            break;
        }
    }
    let status = holder.wait().unwrap();
    assert!(status.success(), "{status}");
    let rest = rest.join("\n");
    assert!(rest.contains("renew exit 4"), "the stale renew is refused (lock-lost): {rest}");
    assert!(rest.contains("DR001"), "fence() refuses the stale token: {rest}");
    assert!(rest.contains(&format!("refused fencing token {token_a}")), "{rest}");
    assert!(rest.lines().last().is_some_and(|l| l != "write exit 0"), "{rest}");
    assert_eq!(query(&db.url, "SELECT body || ',' || token FROM reports").trim(), format!("by B,{token_b}"));

    // kill -9 and restart: B's lock is still held (its TTL has not passed), a new owner is
    // refused with 409 naming B, and the next token is still larger.
    node.kill_and_restart();
    let held = show(&url, "report").expect("still held by B after the restart");
    assert_eq!(
        (held["holders"][0]["owner"].as_str(), held["holders"][0]["fencing_token"].as_u64()),
        (Some("B"), Some(token_b))
    );
    let (code, _, err) = dray(&url, &["locks", "acquire", "report", "--owner", "C", "--ttl-ms", "1000"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("lock-held") || err.contains("Lock held"), "{err}");
    assert!(err.contains("\"B\""), "names the holder: {err}");
    let (code, out, err) = dray(&url, &["--json", "locks", "release", "report", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&token_b.to_string()), "{out}");
    let token_c = acquire(&url, "report", "C", 1_000);
    assert!(token_c > token_b, "{token_c} after {token_b}");
}

/// The embedded store: locks survive `kill -9` (held until their TTL, by the same holder with
/// the same token), and every new grant's token is larger than every token before it, however
/// often the server is killed.
#[test]
fn kill_9_keeps_locks_held_until_their_ttl_and_tokens_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path());
    let mut last = 0;
    for round in 0..3 {
        let url = server.url.clone();
        let owner = format!("holder-{round}");
        let name = format!("lock-{round}");
        let token = acquire(&url, &name, &owner, 60_000);
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        // A short one too, to see a TTL pass after the restart.
        let short = acquire(&url, "short", &owner, 1_500);
        assert!(short > last);
        last = short;

        server.kill9();
        server = ServeProcess::start(dir.path());
        let url = server.url.clone();
        let held = show(&url, &name).expect("held after kill -9");
        assert_eq!(
            (held["holders"][0]["owner"].as_str(), held["holders"][0]["fencing_token"].as_u64()),
            (Some(owner.as_str()), Some(token))
        );
        let (code, _, err) = dray(&url, &["locks", "acquire", &name, "--owner", "other", "--ttl-ms", "1000"]);
        assert_eq!(code, 4, "still held: {err}");

        // The short lock frees once its TTL passes, with nobody releasing it. (When exactly is
        // the conformance suite's business: the server's clock is not this process's.)
        wait_free(&url, "short");
        let (code, out, err) =
            dray(&url, &["locks", "renew", &name, "--owner", &owner, "--fencing-token", &token.to_string()]);
        assert_eq!((code, out.trim()), (0, token.to_string().as_str()), "the holder renews after the restart: {err}");
    }
    let (code, out, _) = dray(&server.url, &["locks", "list"]);
    assert_eq!(code, 0);
    for round in 0..3 {
        assert!(out.contains(&format!("lock-{round}")), "{out}");
    }
}
