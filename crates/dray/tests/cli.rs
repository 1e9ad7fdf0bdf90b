//! The `dray` binary end to end: a real `dray serve` on a free port and a temporary data
//! directory, driven by the real CLI, checking what a script would check (stdout, `--json`, exit
//! statuses). Every wait is bounded by a deadline; nothing sleeps to synchronise.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::{Value, json};

use common::{BIN, POLL, ServeProcess, WAIT_MAX, terminate};

/// A running `dray serve` on its own temporary directory, stopped (and checked) by
/// [`Server::stop`] or killed on drop.
struct Server {
    process: Option<ServeProcess>,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let process = ServeProcess::start(&dir.path().join("data"));
        let url = process.url.clone();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Server { process: Some(process), url, _dir: dir }
    }

    /// `dray --server URL ARGS...`.
    fn dray(&self, args: &[&str]) -> Run {
        dray(&[&["--server", &self.url], args].concat(), None)
    }

    /// `dray --server URL ARGS...` with `stdin` on its standard input.
    fn dray_stdin(&self, args: &[&str], stdin: &str) -> Run {
        dray(&[&["--server", &self.url], args].concat(), Some(stdin))
    }

    /// Runs the command, asserts it succeeded and parses its `--json` output.
    fn json(&self, args: &[&str]) -> Value {
        let run = self.dray(&[&["--json"], args].concat());
        run.assert_code(0);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|err| panic!("dray {args:?} --json printed no JSON ({err}): {run:?}"))
    }

    fn job(&self, id: u64) -> Value {
        self.json(&["jobs", "show", &id.to_string()])
    }

    /// Waits until job `id` is in `state`; returns the job.
    fn wait_state(&self, id: u64, state: &str) -> Value {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let job = self.job(id);
            if job["state"] == state {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} not {state} within {WAIT_MAX:?}: {job:#}");
            std::thread::sleep(POLL);
        }
    }

    /// `dray work ...` in the background, against this server.
    fn work(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .args(["--server", &self.url, "work"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dray work starts")
    }

    /// SIGTERM, and the server must shut down gracefully: exit status 0.
    fn stop(mut self) {
        let status = self.process.take().expect("running").terminate();
        assert!(status.success(), "dray serve exited with {status} after SIGTERM");
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "unexpected exit status: {self:#?}");
        self
    }
}

fn dray(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dray runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).expect("writing stdin");
    }
    let Output { status, stdout, stderr } = wait_output(child);
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(stderr).expect("UTF-8 stderr"),
    }
}

/// `wait_with_output`, bounded: a CLI command that hangs fails the test instead of the run.
fn wait_output(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT_MAX) {
        Ok(output) => output.expect("dray's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("dray (pid {pid}) did not finish within {WAIT_MAX:?}");
        }
    }
}

fn id_of(value: &Value) -> u64 {
    value["id"].as_u64().unwrap_or_else(|| panic!("no id in {value:#}"))
}

fn events(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|entry| entry["event"].as_str().expect("event").to_owned())
        .collect()
}

#[test]
fn enqueue_one_and_from_jsonl_then_list_and_show() {
    let server = Server::start();

    // One job, human output.
    let run = server.dray(&[
        "enqueue",
        "--queue",
        "emails",
        "--payload",
        r#"{"to":"a@example.com"}"#,
        "--priority",
        "-5",
        "--tag",
        "receipt",
        "--tag",
        "eu",
    ]);
    run.assert_code(0);
    assert!(run.stdout.starts_with("enqueued job "), "{}", run.stdout);

    // One job, JSON output, idempotency key: the same request again is a duplicate.
    let args = [
        "enqueue",
        "--queue",
        "emails",
        "--payload",
        r#"{"to":"b@example.com"}"#,
        "--idempotency-key",
        "receipt-2",
        "--delay-ms",
        "3600000",
    ];
    let first = server.json(&args);
    assert_eq!(first["state"], "scheduled");
    assert_eq!(first["duplicate"], false);
    let again = server.json(&args);
    assert_eq!(again["duplicate"], true);
    assert_eq!(id_of(&again), id_of(&first));

    // The payload from a file, and from stdin.
    let dir = tempfile::tempdir().unwrap();
    let payload_file = dir.path().join("payload.json");
    std::fs::write(&payload_file, "{\"from\": \"file\"}\n").unwrap();
    let from_file = server.json(&["enqueue", "--queue", "files", "--payload-file", payload_file.to_str().unwrap()]);
    assert_eq!(server.job(id_of(&from_file))["payload"], json!({"from": "file"}));
    let run = server.dray_stdin(&["--json", "enqueue", "--queue", "files", "--payload-file", "-"], "[true]");
    run.assert_code(0);
    let from_stdin: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(server.job(id_of(&from_stdin))["payload"], json!([true]));

    // JSON Lines from a file: blank lines skipped; from stdin.
    let file = dir.path().join("jobs.jsonl");
    let lines: String = (0..2500).map(|n| format!("{{\"n\":{n}}}\n")).collect::<String>() + "\n";
    std::fs::write(&file, lines).unwrap();
    let summary = server.json(&["enqueue", "--queue", "bulk", "--jsonl", file.to_str().unwrap()]);
    assert_eq!(summary["enqueued"], 2500);
    assert_eq!(summary["ids"].as_array().unwrap().len(), 2500);
    let run = server.dray_stdin(&["enqueue", "--queue", "bulk", "--jsonl", "-"], "[1]\n[2]\n");
    run.assert_code(0);
    assert!(run.stdout.contains("enqueued 2 jobs"), "{}", run.stdout);

    // The 2,501st job of `bulk` is the first line of stdin.
    let id = summary["ids"][0].as_u64().unwrap();
    let job = server.job(id);
    assert_eq!(job["queue"], "bulk");
    assert_eq!(job["payload"], json!({"n": 0}));
    assert_eq!(events(&job), ["enqueued"]);

    // Listing with filters and paging.
    let page = server.json(&["jobs", "list", "--queue", "bulk", "--limit", "10"]);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 10);
    let next = page["next"].as_u64().expect("a next page");
    let page2 = server.json(&["jobs", "list", "--queue", "bulk", "--limit", "10", "--after", &next.to_string()]);
    assert!(id_of(&page2["jobs"][0]) > id_of(&page["jobs"][9]));
    let tagged = server.json(&["jobs", "list", "--tag", "eu"]);
    assert_eq!(tagged["jobs"].as_array().unwrap().len(), 1);
    let scheduled = server.json(&["jobs", "list", "--state", "scheduled"]);
    assert_eq!(id_of(&scheduled["jobs"][0]), id_of(&first));

    // Human output: a table and the timeline.
    let run = server.dray(&["jobs", "list", "--queue", "emails"]);
    run.assert_code(0);
    assert!(run.stdout.contains("ID") && run.stdout.contains("emails"), "{}", run.stdout);
    let run = server.dray(&["jobs", "show", &id_of(&first).to_string()]);
    run.assert_code(0);
    for needle in ["receipt-2", "history", "enqueued", "scheduled", "b@example.com"] {
        assert!(run.stdout.contains(needle), "no {needle:?} in:\n{}", run.stdout);
    }

    // Queues list counts them.
    let queues = server.json(&["queues", "list"]);
    let bulk = queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == "bulk").unwrap();
    assert_eq!(bulk["counts"]["available"], 2502);

    server.stop();
}

#[test]
fn jsonl_bad_line_is_named_and_its_batch_is_not_enqueued() {
    let server = Server::start();
    let run = server
        .dray_stdin(&["enqueue", "--queue", "bulk", "--jsonl", "-"], "{\"ok\":1}\n{\"ok\":2}\n{not json\n{\"ok\":4}\n");
    run.assert_code(5);
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);
    let page = server.json(&["jobs", "list", "--queue", "bulk"]);
    assert_eq!(page["jobs"], json!([]), "nothing from the bad line's batch is enqueued");

    // Same with --json: the error is one JSON object on stderr.
    let run = server.dray_stdin(&["--json", "enqueue", "--queue", "bulk", "--jsonl", "-"], "oops\n");
    run.assert_code(5);
    let error: Value = serde_json::from_str(&run.stderr).expect("a JSON error");
    assert_eq!(error["exit_code"], 5);
    assert_eq!(error["field"], "line 1");
    server.stop();
}

#[test]
fn work_exec_completes_with_stdout_as_result() {
    let server = Server::start();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let job = server.json(&["enqueue", "--queue", "echo", "--payload", r#"{"x":[1,2]}"#, "--traceparent", traceparent]);
    let id = id_of(&job);
    // The command sees the payload on stdin and the job in its environment.
    let exec = r#"printf '{"payload":%s,"id":%s,"queue":"%s","attempt":%s,"token":%s,"trace":"%s"}' "$(cat)" "$DRAY_JOB_ID" "$DRAY_QUEUE" "$DRAY_ATTEMPT" "$DRAY_FENCING_TOKEN" "$TRACEPARENT""#;
    let worker = server.work(&["--queue", "echo", "--exec", exec, "--concurrency", "2"]);
    let done = server.wait_state(id, "completed");
    let result = &done["result"];
    assert_eq!(result["payload"], json!({"x": [1, 2]}));
    assert_eq!(result["id"], id);
    assert_eq!(result["queue"], "echo");
    assert_eq!(result["attempt"], 1);
    assert_eq!(result["trace"], traceparent, "the job's trace context reaches the command");
    let leased = done["history"].as_array().unwrap().iter().find(|e| e["event"] == "leased").unwrap();
    assert_eq!(result["token"], leased["fencing_token"]);

    // A command whose stdout is not JSON completes without a result.
    let plain = id_of(&server.json(&["enqueue", "--queue", "plain", "--payload", "1"]));
    let status = terminate(worker);
    assert!(status.success(), "dray work exited with {status} after SIGTERM");
    let worker = server.work(&["--queue", "plain", "--exec", "echo hello"]);
    let done = server.wait_state(plain, "completed");
    assert!(done.get("result").is_none(), "{done:#}");
    assert!(terminate(worker).success());
    server.stop();
}

#[test]
fn work_exec_failure_dead_letters_and_redrive() {
    let server = Server::start();
    let id = id_of(&server.json(&["enqueue", "--queue", "fail", "--payload", "{}", "--attempts-max", "1"]));
    // Exit 65 (EX_DATAERR) is not retried even with attempts left.
    let fatal = id_of(&server.json(&["enqueue", "--queue", "fatal", "--payload", "{}", "--attempts-max", "5"]));
    let failing = server.work(&["--queue", "fail", "--exec", "echo boom >&2; exit 1"]);
    let fatal_worker = server.work(&["--queue", "fatal", "--exec", "echo 'bad input' >&2; exit 65"]);
    let dead = server.wait_state(id, "dead");
    assert_eq!(dead["dead_reason"], "failed");
    let failed = dead["history"].as_array().unwrap().iter().find(|e| e["event"] == "failed").unwrap();
    assert_eq!(failed["error"], "boom");
    let dead_fatal = server.wait_state(fatal, "dead");
    assert_eq!(dead_fatal["dead_reason"], "non_retryable");
    assert_eq!(dead_fatal["attempt"], 1);
    assert_eq!(dead_fatal["last_error"], "bad input");
    assert!(terminate(failing).success());
    assert!(terminate(fatal_worker).success());

    // The dead-letter queue lists them.
    let dlq = server.json(&["dlq", "list", "--queue", "fail"]);
    assert_eq!(dlq["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(id_of(&dlq["jobs"][0]), id);
    let dlq = server.json(&["dlq", "list", "--reason", "non_retryable"]);
    assert_eq!(id_of(&dlq["jobs"][0]), fatal);
    let run = server.dray(&["dlq", "list"]);
    run.assert_code(0);
    assert!(run.stdout.contains("boom"), "{}", run.stdout);

    // Dry run changes nothing; a redrive by id makes it available again.
    let dry = server.json(&["dlq", "redrive", &id.to_string(), "--dry-run"]);
    assert_eq!(dry["count"], 1);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(server.job(id)["state"], "dead");
    let run = server.dray(&["dlq", "redrive", &id.to_string()]);
    run.assert_code(0);
    assert!(run.stdout.contains("redriven 1 job: "), "{}", run.stdout);
    let job = server.job(id);
    assert_eq!(job["state"], "available");
    assert!(events(&job).contains(&"redriven".to_owned()));

    // By filter, at a rate (the listing path), then discard.
    let redriven = server.json(&["dlq", "redrive", "--queue", "fatal", "--rate", "100"]);
    assert_eq!(redriven["ids"], json!([fatal]));
    assert_eq!(server.job(fatal)["state"], "available");
    let nothing = server.json(&["dlq", "discard", "--queue", "fatal"]);
    assert_eq!(nothing["count"], 0);

    // A job redriven and dead again can be discarded; then it is gone.
    let worker = server.work(&["--queue", "fail", "--exec", "echo boom >&2; exit 1"]);
    server.wait_state(id, "dead");
    assert!(terminate(worker).success());
    let discarded = server.json(&["dlq", "discard", &id.to_string()]);
    assert_eq!(discarded["ids"], json!([id]));
    server.dray(&["jobs", "show", &id.to_string()]).assert_code(3);
    server.stop();
}

#[test]
fn work_exec_kills_the_command_of_a_cancelled_job() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A short lease: heartbeats (and so the cancel request) come every third of a second.
    let id = id_of(&server.json(&["enqueue", "--queue", "slow", "--payload", "{}", "--lease-ms", "1000"]));
    // The command starts a grandchild: killing the command must kill its whole process group.
    let exec = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
    let worker = server.work(&["--queue", "slow", "--exec", &exec]);
    server.wait_state(id, "running");
    let sleep_pid = wait_pid_file(&pid_file);
    assert!(alive(sleep_pid));
    let cancel = server.json(&["jobs", "cancel", &id.to_string()]);
    assert_eq!(cancel["state"], "running", "a running job is asked to stop");
    // The job ends only when the handler gives up, i.e. once the command has been stopped.
    server.wait_state(id, "cancelled");
    wait_until("the command's grandchild is killed", || !alive(sleep_pid));
    assert!(terminate(worker).success());
    server.stop();
}

#[test]
fn work_graceful_stop_hands_back_a_job_still_running_after_the_grace() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let id = id_of(&server.json(&["enqueue", "--queue", "slow", "--payload", "{}"]));
    let exec = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let worker = server.work(&["--queue", "slow", "--exec", &exec, "--shutdown-grace-ms", "100"]);
    server.wait_state(id, "running");
    let sleep_pid = wait_pid_file(&pid_file);
    // SIGTERM: no new jobs; after the grace the command is killed and its job handed back.
    assert!(terminate(worker).success(), "a graceful stop exits 0");
    assert!(!alive(sleep_pid), "the command was killed");
    let job = server.job(id);
    assert_ne!(job["state"], "running", "{job:#}");
    assert!(events(&job).contains(&"failed".to_owned()), "{job:#}");
    server.stop();
}

/// Polls `condition` until it holds, at most [`WAIT_MAX`].
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {WAIT_MAX:?}: {what}");
        std::thread::sleep(POLL);
    }
}

/// The pid a test command wrote to `path`, once it has.
fn wait_pid_file(path: &Path) -> u32 {
    let mut pid = None;
    wait_until("the command writes its pid", || {
        pid = std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse().ok());
        pid.is_some()
    });
    pid.expect("a pid")
}

/// Whether process `pid` exists and is not a zombie (a container's init may never reap it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `123 (sleep) S ...`.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn queues_pause_resume_configure_stats() {
    let server = Server::start();
    let configured = server.json(&[
        "queues",
        "configure",
        "reports",
        "--attempts-max",
        "3",
        "--lease-ms",
        "60000",
        "--backoff-base-ms",
        "500",
        "--backoff-factor",
        "3",
        "--backoff-cap-ms",
        "60000",
    ]);
    assert_eq!(configured["attempts_max"], 3);
    assert_eq!(configured["backoff"], json!({"base_ms": 500, "factor": 3.0, "cap_ms": 60000}));
    // Backoff flags go together.
    server.dray(&["queues", "configure", "reports", "--backoff-base-ms", "1"]).assert_code(2);

    assert_eq!(server.json(&["queues", "pause", "reports"])["paused"], true);
    assert_eq!(server.json(&["queues", "stats", "reports"])["paused"], true);
    let run = server.dray(&["queues", "list"]);
    run.assert_code(0);
    assert!(run.stdout.contains("reports") && run.stdout.contains("yes"), "{}", run.stdout);

    // A paused queue hands out nothing: the job waits until the queue is resumed.
    let id = id_of(&server.json(&["enqueue", "--queue", "reports", "--payload", "{}"]));
    let worker = server.work(&["--queue", "reports", "--exec", "true"]);
    let run = server.dray(&["queues", "resume", "reports"]);
    run.assert_code(0);
    assert!(run.stdout.contains("resumed"), "{}", run.stdout);
    server.wait_state(id, "completed");
    assert!(terminate(worker).success());

    let run = server.dray(&["queues", "stats", "reports"]);
    run.assert_code(0);
    assert!(run.stdout.contains("completed"), "{}", run.stdout);
    server.stop();
}

/// `dray queues configure --ordering-dead` sets whether dead jobs hold their ordering keys;
/// `queues stats` shows it and an unknown value is a usage error (exit 2).
#[test]
fn queues_ordering_dead() {
    let server = Server::start();
    let configured = server.json(&["queues", "configure", "ord", "--ordering-dead", "skip"]);
    assert_eq!(configured["ordering_dead"], "skip");
    let run = server.dray(&["queues", "stats", "ord"]);
    assert!(run.stdout.contains("ordering dead") && run.stdout.contains("skip"), "{}", run.stdout);
    server.dray(&["queues", "configure", "ord", "--ordering-dead", "later"]).assert_code(2);
    let configured = server.json(&["queues", "configure", "ord", "--ordering-dead", "block"]);
    assert_eq!(configured["ordering_dead"], "block");
    server.stop();
}

/// `dray queues configure --breaker-*` sets a queue's circuit breaker (all five flags together;
/// a value out of range exits 5 naming the field), `dray queues breaker open|close` forces it,
/// `queues stats` shows its state, and `--no-breaker` removes it.
#[test]
fn queues_breaker() {
    let server = Server::start();
    let flags = [
        "--breaker-failure-ratio",
        "0.5",
        "--breaker-window-ms",
        "60000",
        "--breaker-min-attempts",
        "10",
        "--breaker-open-ms",
        "30000",
        "--breaker-probes",
        "2",
    ];
    let args: Vec<&str> = ["queues", "configure", "pay"].into_iter().chain(flags).collect();
    let configured = server.json(&args);
    assert_eq!(configured["breaker"]["state"], "closed", "{configured:#}");
    assert_eq!(configured["breaker"]["min_attempts"], 10);
    server.dray(&["queues", "configure", "pay", "--breaker-failure-ratio", "0.5"]).assert_code(2);
    let mut bad = args.clone();
    bad[4] = "1.5";
    let run = server.dray(&bad);
    run.assert_code(5);
    assert!(run.stderr.contains("breaker.failure_ratio"), "{}", run.stderr);

    let run = server.dray(&["queues", "breaker", "open", "pay"]);
    run.assert_code(0);
    assert!(run.stdout.contains("forced open"), "{}", run.stdout);
    let run = server.dray(&["queues", "stats", "pay"]);
    assert!(run.stdout.contains("breaker state") && run.stdout.contains("forced"), "{}", run.stdout);
    let closed = server.json(&["queues", "breaker", "close", "pay"]);
    assert_eq!(closed["breaker"]["state"], "closed", "{closed:#}");
    server.dray(&["queues", "breaker", "open", "nowhere"]).assert_code(3);

    let removed = server.json(&["queues", "configure", "pay", "--no-breaker"]);
    assert!(removed.get("breaker").is_none(), "{removed:#}");
    server.stop();
}

/// `dray queues configure --payload-schema-file` sets a queue's schema, enqueues that do not
/// match exit 5 naming the pointer, `dray dlq redrive` reports jobs it left dead, and
/// `--no-payload-schema` removes the schema.
#[test]
fn queues_payload_schema() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("invoice.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["amount"]}"#).unwrap();
    // A job from before the schema, without an amount, goes to the dead-letter queue.
    let old = id_of(&server.json(&["enqueue", "--queue", "inv", "--payload", "{}", "--attempts-max", "1"]));
    let worker = server.work(&["--queue", "inv", "--exec", "false"]);
    server.wait_state(old, "dead");
    assert!(terminate(worker).success());

    let path = schema.to_str().unwrap();
    let configured = server.json(&["queues", "configure", "inv", "--payload-schema-file", path]);
    assert_eq!(configured["payload_schema"], json!({"type": "object", "required": ["amount"]}));
    let run = server.dray(&["queues", "stats", "inv"]);
    assert!(run.stdout.contains("payload schema"), "{}", run.stdout);
    let run = server.dray(&["enqueue", "--queue", "inv", "--payload", r#"{"n": 1}"#]);
    run.assert_code(5);
    assert!(run.stderr.contains("payload_schema") && run.stderr.contains("amount"), "{}", run.stderr);
    server.json(&["enqueue", "--queue", "inv", "--payload", r#"{"amount": 1}"#]);

    let run = server.dray(&["dlq", "redrive", "--queue", "inv"]);
    run.assert_code(0);
    assert!(run.stdout.contains("left 1 job dead") && run.stdout.contains(&old.to_string()), "{}", run.stdout);
    assert_eq!(server.json(&["jobs", "show", &old.to_string()])["dead_reason"], "rejected");

    std::fs::write(&schema, "{not json").unwrap();
    server.dray(&["queues", "configure", "inv", "--payload-schema-file", path]).assert_code(5);
    server.dray(&["queues", "configure", "inv", "--payload-schema-file", path, "--no-payload-schema"]).assert_code(2);
    let configured = server.json(&["queues", "configure", "inv", "--no-payload-schema"]);
    assert!(configured.get("payload_schema").is_none(), "{configured:#}");
    let redriven = server.json(&["dlq", "redrive", &old.to_string()]);
    assert_eq!(redriven["ids"], json!([old]));
    server.stop();
}

#[test]
fn exit_codes() {
    let server = Server::start();
    // 3: not found.
    let run = server.dray(&["jobs", "show", "999999"]);
    run.assert_code(3);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    let run = server.dray(&["--json", "jobs", "show", "999999"]);
    run.assert_code(3);
    let error: Value = serde_json::from_str(&run.stderr).expect("a JSON error");
    assert_eq!(error["status"], 404);
    assert_eq!(error["exit_code"], 3);
    server.dray(&["queues", "stats", "nope"]).assert_code(3);

    // 4: conflict (cancelling a completed job).
    let id = id_of(&server.json(&["enqueue", "--queue", "done", "--payload", "{}"]));
    let worker = server.work(&["--queue", "done", "--exec", "true"]);
    server.wait_state(id, "completed");
    assert!(terminate(worker).success());
    server.dray(&["jobs", "cancel", &id.to_string()]).assert_code(4);

    // 5: invalid input, from the server (a bad queue name) and from the CLI (a bad payload).
    let run = server.dray(&["enqueue", "--queue", "no spaces", "--payload", "{}"]);
    run.assert_code(5);
    assert!(run.stderr.contains("field: queue"), "{}", run.stderr);
    server.dray(&["enqueue", "--queue", "q", "--payload", "{oops"]).assert_code(5);

    // 2: usage.
    server.dray(&["jobs", "show", "not-a-number"]).assert_code(2);
    server.dray(&["dlq", "redrive"]).assert_code(2);
    dray(&["--server", "ftp://x", "queues", "list"], None).assert_code(2);

    server.stop();

    // 6: nothing listens there (the server just stopped; its port is free).
    let run = dray(&["--server", &server_url_unused(), "queues", "list"], None);
    run.assert_code(6);
    assert!(run.stderr.contains("is `dray serve` running at"), "{}", run.stderr);
}

/// `--wait`: `dray enqueue --wait` prints the job once it is finished and `dray jobs show --wait`
/// waits for one; the exit status says how it ended: 0 completed, 8 dead, 9 cancelled, 10 not
/// finished when the wait ran out (the job printed as it is, and it goes on).
#[test]
fn waiting_for_a_job_exits_by_how_it_ended() {
    let server = Server::start();
    let exec = r#"case "$(cat)" in *bad*) echo 'bad input' >&2; exit 65;; esac; echo '{"rows": 3}'"#;
    let worker = server.work(&["--queue", "waited", "--exec", exec]);

    // The waits are far longer than the jobs take: only a missed wake-up would run them out.
    let run = server.dray(&["--json", "enqueue", "--queue", "waited", "--payload", r#"{"ok":true}"#, "--wait", "25s"]);
    run.assert_code(0);
    let done: Value = serde_json::from_str(&run.stdout).expect("the job as JSON");
    assert_eq!((&done["state"], &done["result"]), (&json!("completed"), &json!({"rows": 3})));
    assert_eq!(done["payload"], json!({"ok": true}));

    let run = server.dray(&["--json", "enqueue", "--queue", "waited", "--payload", r#"{"bad":1}"#, "--wait", "25s"]);
    run.assert_code(8);
    let dead: Value = serde_json::from_str(&run.stdout).expect("the job as JSON");
    assert_eq!(dead["state"], "dead");
    let error: Value = serde_json::from_str(&run.stderr).expect("a JSON error");
    assert_eq!((&error["exit_code"], &error["job"]), (&json!(8), &dead["id"]));
    assert!(error["detail"].as_str().unwrap().contains("non_retryable"), "{error}");
    assert!(terminate(worker).success());

    // Nobody works `idle`: a wait there runs out, and the job is printed as it is.
    let id = id_of(&server.json(&["enqueue", "--queue", "idle", "--payload", "{}"]));
    let run = server.dray(&["jobs", "show", &id.to_string(), "--wait", "100ms"]);
    run.assert_code(10);
    assert!(run.stdout.contains("available"), "{}", run.stdout);
    assert!(run.stderr.contains(&format!("job {id} is still available after waiting 100ms")), "{}", run.stderr);

    server.json(&["jobs", "cancel", &id.to_string()]);
    let run = server.dray(&["jobs", "show", &id.to_string(), "--wait", "25s"]);
    run.assert_code(9);
    assert!(run.stderr.contains(&format!("job {id} ended cancelled")), "{}", run.stderr);
    // Without --wait, showing a cancelled job is no failure.
    server.dray(&["jobs", "show", &id.to_string()]).assert_code(0);

    // Usage: a duration needs its unit, and one wait is for one job.
    server.dray(&["jobs", "show", &id.to_string(), "--wait", "30"]).assert_code(2);
    server.dray_stdin(&["enqueue", "--queue", "idle", "--jsonl", "-", "--wait", "1s"], "{}\n").assert_code(2);
    server.stop();
}

/// A loopback URL with no server behind it: a port the OS just handed out and took back.
fn server_url_unused() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn help_documents_exit_codes_and_work_protocol() {
    let run = dray(&["--help"], None);
    run.assert_code(0);
    assert!(run.stdout.contains("6  server unavailable"), "{}", run.stdout);
    assert!(run.stdout.contains("10  the job waited for (--wait) was not finished"), "{}", run.stdout);
    let run = dray(&["work", "--help"], None);
    run.assert_code(0);
    for needle in ["DRAY_FENCING_TOKEN", "EX_DATAERR", "EX_TEMPFAIL"] {
        assert!(run.stdout.contains(needle), "{needle} in {}", run.stdout);
    }
}

// ---- issue #18, defects 6 and 7: the CLI's messages, inputs and logs ---------------------------

/// `dray ARGS...` with extra environment variables.
fn dray_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let Output { status, stdout, stderr } = wait_output(command.spawn().expect("dray runs"));
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(stderr).expect("UTF-8 stderr"),
    }
}

/// A child's piped output, line by line, through a channel: reads never block the test past a
/// deadline.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until `done` holds for the ones read so far; panics past [`WAIT_MAX`].
fn read_until(rx: &mpsc::Receiver<String>, what: &str, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT_MAX;
    let mut lines = Vec::new();
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("not within {WAIT_MAX:?}: {what}; read so far:\n{}", lines.join("\n")),
        }
    }
    lines
}

/// A server that accepts connections and closes them without an answer: every request sent to it
/// reached "something" and got no answer (the outcome of a write is unknown).
fn hang_up_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buffer);
            drop(stream);
        }
    });
    format!("http://{addr}")
}

// Regression (issue #18, defect 6): a refused connection and a failed read said "no answer,
// outcome unknown (retry with the same idempotency key)". A refused connection says "cannot
// connect to URL"; a lost answer to a read says it changed nothing; only a write keeps the
// unknown-outcome wording.
#[test]
fn transport_errors_say_what_happened() {
    let unused = server_url_unused();
    let run = dray(&["--server", &unused, "jobs", "show", "1"], None);
    run.assert_code(6);
    assert!(run.stderr.contains(&format!("cannot connect to {unused}: ")), "{}", run.stderr);
    assert!(!run.stderr.contains("idempotency"), "{}", run.stderr);

    let silent = hang_up_server();
    let run = dray(&["--server", &silent, "jobs", "show", "1"], None);
    run.assert_code(6);
    assert!(run.stderr.contains("a read changes nothing"), "{}", run.stderr);
    assert!(!run.stderr.contains("idempotency"), "{}", run.stderr);
    let run = dray(&["--server", &silent, "enqueue", "--queue", "q", "--payload", "{}"], None);
    run.assert_code(6);
    assert!(run.stderr.contains("outcome is unknown: retry with the same idempotency key"), "{}", run.stderr);

    // `dray work` against nothing: its lease failures say it cannot connect.
    let mut worker = Command::new(BIN)
        .args(["--server", &unused, "work", "--queue", "q", "--exec", "true", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dray work starts");
    let stderr = lines_of(worker.stderr.take().unwrap());
    let lines = read_until(&stderr, "a lease failure is logged", |lines| {
        lines.iter().any(|line| line.contains("lease failed"))
    });
    let failure: Value = serde_json::from_str(lines.last().unwrap()).expect("a JSON log line");
    let error = failure["fields"]["error"].as_str().unwrap();
    assert_eq!(error, format!("cannot connect to {unused}: Connection refused (os error 111)"), "{failure}");
    assert!(failure["fields"]["retry_in_ms"].is_u64(), "a number, not Debug text: {failure}");
    assert!(terminate(worker).success());
}

// Regression (issue #18, defect 6): a missing --payload-file exited 1, not the documented 5.
#[test]
fn unreadable_input_files_are_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let missing = missing.to_str().unwrap();
    // Nothing is sent: no server is needed to refuse the input.
    let server = server_url_unused();
    let run = dray(&["--server", &server, "--json", "enqueue", "--queue", "q", "--payload-file", missing], None);
    run.assert_code(5);
    let error: Value = serde_json::from_str(&run.stderr).expect("a JSON error");
    assert_eq!(error["field"], "--payload-file");
    assert!(error["detail"].as_str().unwrap().contains("missing.json"), "{error}");
    dray(&["--server", &server, "enqueue", "--queue", "q", "--jsonl", missing], None).assert_code(5);
}

// Regression (issue #18, defect 6): `--json work` printed nothing; it prints one JSON line per
// finished job. Also defect 7: the attempt that dead-letters a job is logged as final, not
// `retryable=true`.
#[test]
fn work_json_prints_a_line_per_job_and_logs_the_final_attempt() {
    let server = Server::start();
    let ok = id_of(&server.json(&["enqueue", "--queue", "mixed", "--payload", "1"]));
    let dead = id_of(&server.json(&["enqueue", "--queue", "mixed", "--payload", "2", "--attempts-max", "1"]));
    let retried = id_of(&server.json(&["enqueue", "--queue", "mixed", "--payload", "3", "--attempts-max", "2"]));
    // Payload 1 succeeds; 2 and 3 fail (exit 1, retryable); 3 succeeds on its second attempt.
    let exec = r#"read n; [ "$n" = 1 ] && exit 0; [ "$n" = 3 ] && [ "$DRAY_ATTEMPT" = 2 ] && exit 0; echo "no $n" >&2; exit 1"#;
    let mut worker = Command::new(BIN)
        .args(["--server", &server.url, "--json", "work", "--queue", "mixed", "--exec", exec])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info,dray_client=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dray work starts");
    let stdout = lines_of(worker.stdout.take().unwrap());
    let stderr = lines_of(worker.stderr.take().unwrap());
    let lines = read_until(&stdout, "four job lines", |lines| lines.len() >= 4);
    let mut lines: Vec<Value> =
        lines.iter().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    lines.sort_by_key(|line| (line["id"].as_u64(), line["attempt"].as_u64()));
    for line in &lines {
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["attempt", "duration_ms", "error", "id", "outcome", "queue"], "{line}");
        assert_eq!(line["queue"], "mixed");
        assert!(line["duration_ms"].is_u64(), "{line}");
    }
    let summary: Vec<(u64, u64, &str, Option<&str>)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_u64().unwrap(),
                l["attempt"].as_u64().unwrap(),
                l["outcome"].as_str().unwrap(),
                l["error"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ok, 1, "completed", None),
            (dead, 1, "dead", Some("no 2")),
            (retried, 1, "failed", Some("no 3")),
            (retried, 2, "completed", None),
        ]
    );
    assert!(terminate(worker).success());

    // The logs: JSON values, never Rust debug text; the dead-lettering attempt is not retryable.
    // The worker has exited: its stderr ends, and with it the channel.
    let logs: Vec<Value> = stderr.iter().filter_map(|line| serde_json::from_str(&line).ok()).collect();
    let failed: Vec<&Value> = logs
        .iter()
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("command failed")))
        .collect();
    let of = |id: u64| {
        failed.iter().find(|l| l["fields"]["job"] == id).unwrap_or_else(|| panic!("no failure of {id} in {failed:#?}"))
    };
    assert_eq!((&of(dead)["fields"]["retryable"], &of(dead)["fields"]["outcome"]), (&json!(false), &json!("dead")));
    assert_eq!(
        (&of(retried)["fields"]["retryable"], &of(retried)["fields"]["outcome"]),
        (&json!(true), &json!("retrying"))
    );
    let sdk_failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "job failed" && l["fields"]["job"] == dead)
        .expect("the SDK's debug line");
    assert_eq!(sdk_failed["fields"]["retryable"], false, "{sdk_failed}");
    let stopped = logs.iter().find(|l| l["fields"]["message"] == "worker stopped").expect("worker stopped");
    assert_eq!(stopped["fields"]["jobs_completed"], 2, "{stopped}");
    assert_no_debug_text(&logs);
    server.stop();
}

/// No log field holds Rust debug text of a struct (`Name { field: .. }`).
fn assert_no_debug_text(logs: &[Value]) {
    for line in logs {
        for (name, value) in line["fields"].as_object().unwrap() {
            if let Some(text) = value.as_str() {
                let debug_like = text.split_once(" { ").is_some_and(|(head, _)| {
                    head.chars().next().is_some_and(char::is_uppercase) && !head.contains(' ')
                });
                assert!(!debug_like, "field {name} holds Rust debug text: {line}");
            }
        }
    }
}

// Regression (issue #18, defect 7): a stopped command's job recorded "cancelled or lease lost";
// it says which. A cancel request here, a lost lease (the worker frozen past its lease) below.
#[test]
fn work_says_whether_a_job_was_cancelled_or_its_lease_lost() {
    let server = Server::start();
    let cancelled = id_of(&server.json(&["enqueue", "--queue", "slow", "--payload", "{}", "--lease-ms", "1000"]));
    let mut worker = Command::new(BIN)
        .args(["--server", &server.url, "--json", "work", "--queue", "slow", "--exec", "exec sleep 60"])
        .args(["--shutdown-grace-ms", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("dray work starts");
    let stdout = lines_of(worker.stdout.take().unwrap());
    server.wait_state(cancelled, "running");
    server.json(&["jobs", "cancel", &cancelled.to_string()]);
    let job = server.wait_state(cancelled, "cancelled");
    let lines = read_until(&stdout, "the cancelled job's line", |lines| !lines.is_empty());
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!((line["id"].as_u64(), &line["outcome"]), (Some(cancelled), &json!("cancelled")), "{line}");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("cancel requested") && !error.contains("lease"), "{error}");
    assert!(job.to_string().contains("cancel requested"), "the job's history says why: {job:#}");

    // Lease lost: freeze the worker past its one-second lease until the server expires it.
    let lost = id_of(&server.json(&[
        "enqueue",
        "--queue",
        "slow",
        "--payload",
        "{}",
        "--lease-ms",
        "1000",
        "--attempts-max",
        "5",
    ]));
    server.wait_state(lost, "running");
    let pid = worker.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    wait_until("the lease expires", || events(&server.job(lost)).iter().any(|event| event == "expired"));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let lines = read_until(&stdout, "the lost job's line", |lines| {
        lines.iter().any(|line| line.contains(&format!("\"id\":{lost},")))
    });
    let line: Value =
        serde_json::from_str(lines.iter().find(|l| l.contains(&format!("\"id\":{lost},"))).unwrap()).unwrap();
    assert_eq!(line["outcome"], "lease_lost", "{line}");
    assert!(line["error"].as_str().unwrap().contains("lease was lost"), "{line}");
    assert!(terminate(worker).success());
    server.stop();
}

// Regression (issue #18, defect 6): `ids 9..=50008` in human output; now a range people read.
#[test]
fn jsonl_summary_shows_a_human_range() {
    let server = Server::start();
    let run = server.dray_stdin(&["enqueue", "--queue", "bulk", "--jsonl", "-"], "[1]\n[2]\n[3]\n");
    run.assert_code(0);
    assert!(run.stdout.contains("enqueued 3 jobs (0 duplicates), ids 1-3"), "{}", run.stdout);
    assert!(!run.stdout.contains("..="), "{}", run.stdout);
    server.stop();
}

// Regression (issue #18, defect 6): `--listen localhost:7700` and `--memory-budget-bytes 512MiB`
// were refused. Host names resolve; sizes take units in flags, the environment and the file.
#[test]
fn serve_accepts_host_names_and_human_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dray.toml");
    std::fs::write(&config, "body_bytes_max = \"1MiB\"\n").unwrap();
    let config = config.to_str().unwrap();
    let process = common::ServeProcess::spawn(
        &dir.path().join("data"),
        "localhost:0",
        &["--memory-budget-bytes", "512MiB", "--config", config],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(process.addr.ip().is_loopback(), "{}", process.url);
    // The file's 1 MiB body limit holds: a 2 MiB payload is refused (413, exit 5).
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("\"{}\"", "x".repeat(2 << 20))).unwrap();
    let run =
        dray(&["--server", &process.url, "enqueue", "--queue", "q", "--payload-file", big.to_str().unwrap()], None);
    run.assert_code(5);
    assert!(run.stderr.contains("413") || run.stderr.to_lowercase().contains("too large"), "{}", run.stderr);
    assert!(process.terminate().success());

    // The environment too; and a bad size names the option (a usage error, exit 2).
    let run = dray_env(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().join("d2").to_str().unwrap()],
        &[("DRAY_MEMORY_BUDGET_BYTES", "12XB")],
    );
    run.assert_code(2);
    assert!(run.stderr.contains("--memory-budget-bytes") && run.stderr.contains("is not a size"), "{}", run.stderr);
}

// Regression (issue #18, defect 6): on a port clash the data directory was created before the
// bind failed; and the data-dir lock error printed its text twice.
#[test]
fn serve_start_failures_leave_no_trace_and_say_it_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = common::ServeProcess::spawn(&data, &listen, &[]).expect_err("the port is taken");
    assert!(err.contains("stopped before listening"), "{err}");
    assert!(!data.exists(), "a port clash must not create the data directory");

    let first = ServeProcess::start(&data);
    let run = dray(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()], None);
    run.assert_code(1);
    let error = run.stderr.lines().find(|line| line.starts_with("error: ")).expect("an error line");
    assert_eq!(error.matches("is in use by another process").count(), 1, "{error}");
    assert!(first.terminate().success());
}

// Regression (issue #18, defect 6): `serve --help` said the pool uses "plus one" connection where
// the operations guide says plus two (LISTEN and the leader election). Both say two now.
#[test]
fn serve_help_and_docs_agree_on_connections_outside_the_pool() {
    let run = dray(&["serve", "--help"], None);
    run.assert_code(0);
    assert!(run.stdout.contains("two more outside the pool"), "{}", run.stdout);
    assert!(!run.stdout.contains("plus one for LISTEN"), "{}", run.stdout);
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md")).unwrap();
    assert!(docs.contains("pool_size_max + 2"), "docs/operations.md");
}

// Issue #18 (expected and missing): shell completions and man pages from the clap definition.
#[test]
fn completions_and_man_pages_are_generated() {
    let bash = dray(&["completions", "bash"], None);
    bash.assert_code(0);
    assert!(bash.stdout.contains("_dray()") && bash.stdout.contains("--payload-file"), "{}", bash.stdout);
    // The script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("dray.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&script).output().expect("bash runs");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let zsh = dray(&["completions", "zsh"], None);
    zsh.assert_code(0);
    assert!(zsh.stdout.starts_with("#compdef dray"), "{}", zsh.stdout);
    let fish = dray(&["completions", "fish"], None);
    fish.assert_code(0);
    assert!(fish.stdout.contains("complete -c dray"), "{}", fish.stdout);
    dray(&["completions", "tcsh"], None).assert_code(2);

    let man = dray(&["man"], None);
    man.assert_code(0);
    assert!(man.stdout.starts_with(".ie") || man.stdout.contains(".TH dray 1"), "{}", man.stdout);
    assert!(man.stdout.contains("completions"), "{}", man.stdout);
    let pages = dir.path().join("man1");
    dray(&["man", "--dir", pages.to_str().unwrap()], None).assert_code(0);
    for page in ["dray.1", "dray-serve.1", "dray-jobs-list.1", "dray-work.1"] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
}

// Issue #18 (expected and missing): `dray health`, the container health check.
#[test]
fn health_answers_for_a_running_server_only() {
    let server = Server::start();
    let run = server.dray(&["health"]);
    run.assert_code(0);
    assert!(run.stdout.contains("ok"), "{}", run.stdout);
    assert_eq!(server.json(&["health"])["status"], "ok");
    server.stop();
    dray(&["--server", &server_url_unused(), "health", "--timeout-ms", "2000"], None).assert_code(6);
}

// Regression (issue #18, defect 7): the server logged `durability: "Interval { ms: 50 }"`; log
// fields are JSON values and display strings.
#[test]
fn serve_json_logs_hold_no_debug_text() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--durability", "interval=50"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dray serve starts");
    let stderr = lines_of(serve.stderr.take().unwrap());
    let lines = read_until(&stderr, "the server listens", |lines| {
        lines.last().is_some_and(|line| line.contains("dray serve listening"))
    });
    // Only its start-up lines matter here (a SIGTERM this early may beat the signal handler).
    let _ = serve.kill();
    let _ = serve.wait();
    let logs: Vec<Value> =
        lines.iter().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    let opening =
        logs.iter().find(|l| l["fields"]["message"] == "opening the embedded store").expect("the store's line");
    assert_eq!(opening["fields"]["durability"], "interval=50", "{opening}");
    assert!(opening["fields"]["memory_budget_bytes"].is_u64(), "{opening}");
    assert_no_debug_text(&logs);
}
