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
    let run = dray(&["work", "--help"], None);
    run.assert_code(0);
    for needle in ["DRAY_FENCING_TOKEN", "EX_DATAERR", "EX_TEMPFAIL"] {
        assert!(run.stdout.contains(needle), "{needle} in {}", run.stdout);
    }
}
