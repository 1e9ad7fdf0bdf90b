//! `dray work --exec CMD`: a worker that runs a shell command per job, so a handler can be written
//! in any language. The protocol (stdin, environment, exit codes) is in `cli::WORK_HELP`.
//!
//! Leasing, heartbeats, acks and the graceful stop are `dray_client::Worker`'s; this module only
//! runs the command and turns its exit into the handler's result. Each command runs in its own
//! process group, so a Ctrl-C in the terminal reaches `dray work` (which then finishes the running
//! jobs) and not the commands, and so killing a command kills whatever it started too.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dray_client::{CancelReason, JobContext, JobError};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::cli::WorkArgs;
use crate::output;

/// EX_DATAERR from sysexits.h: the input is wrong, retrying cannot help.
const EXIT_DATAERR: i32 = 65;
/// The tail of stderr kept as the error: the server's error text limit.
const STDERR_TAIL_BYTES_MAX: usize = 8 * 1024;
/// The head of stdout kept as the result: the server's result limit. Longer output is no result.
const STDOUT_BYTES_MAX: usize = 256 * 1024;
/// After SIGTERM, how long a command has to exit before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// After the command exits, how long its output pipes may stay open (held by a background process
/// it started) before its process group is killed.
const PIPES_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The process groups of the running commands, to kill on a forced stop.
type Groups = Arc<Mutex<HashSet<u32>>>;

/// With `--json`, the line printed on stdout for each job whose command finished (or was stopped):
/// what a script needs to follow the worker without parsing its logs.
#[derive(Debug, Serialize)]
struct JobLine<'a> {
    id: u64,
    queue: &'a str,
    attempt: u32,
    /// `completed`; `failed` (retried later); `dead` (failed on its last attempt or with exit 65:
    /// the dead-letter queue); `cancelled` (cancel requested); `lease_lost` (another worker may
    /// hold the job now; this attempt's outcome is refused).
    outcome: &'static str,
    /// From the command's start to its end, on this machine's monotonic clock.
    duration_ms: u64,
    /// Why it failed; `null` when completed.
    error: Option<&'a str>,
}

pub async fn run(client: dray_client::Client, args: WorkArgs, json: bool) -> anyhow::Result<()> {
    dray_server::init_logging(args.log_format);
    let exec: Arc<str> = args.exec.into();
    let groups: Groups = Arc::default();
    let handler = {
        let groups = groups.clone();
        move |ctx: JobContext| run_command(ctx, exec.clone(), groups.clone(), json)
    };
    let worker = dray_client::Worker::builder(client)
        .queues(args.queues, handler)
        .concurrency(args.concurrency as usize)
        .shutdown_grace(Duration::from_millis(args.shutdown_grace_ms))
        .build()?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal_groups = groups.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("dray work: stopping: no new jobs, waiting for the running commands (again to kill them)");
        let _ = stop_tx.send(());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        let running: Vec<u32> = lock(&signal_groups).iter().copied().collect();
        for group in &running {
            signal_group(*group, "KILL");
        }
        eprintln!(
            "dray work: killed {} running commands; their jobs come back when their leases expire",
            running.len()
        );
        std::process::exit(1);
    });

    let report = worker
        .run(async move {
            let _ = stop_rx.await;
        })
        .await?;
    if report.jobs_handed_back > 0 {
        eprintln!("dray work: {} jobs were still running after the grace period: handed back", report.jobs_handed_back);
    }
    Ok(())
}

fn lock(groups: &Groups) -> std::sync::MutexGuard<'_, HashSet<u32>> {
    // A panic while holding this lock cannot leave the set inconsistent: take it anyway.
    groups.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `signal` to a process group with kill(1) (the workspace denies `unsafe`, so no libc).
fn signal_group(group: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running command's process group: in the running set while it lives; killed if the handler
/// stops before the command has exited (the worker aborts handlers it hands back at shutdown).
struct Group {
    groups: Groups,
    id: u32,
    exited: bool,
}

impl Group {
    fn new(groups: &Groups, id: u32) -> Group {
        lock(groups).insert(id);
        Group { groups: groups.clone(), id, exited: false }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.exited {
            signal_group(self.id, "KILL");
        }
        lock(&self.groups).remove(&self.id);
    }
}

async fn run_command(ctx: JobContext, exec: Arc<str>, groups: Groups, json: bool) -> Result<Option<Value>, JobError> {
    let started = std::time::Instant::now();
    let outcome = run_command_inner(&ctx, &exec, &groups).await;
    let (outcome_word, error) = match &outcome {
        Ok(_) => ("completed", None),
        Err(Ended::Stopped(reason, err)) => (stop_word(*reason), Some(err.message())),
        Err(Ended::Failed(err)) if is_final(&ctx, err) => ("dead", Some(err.message())),
        Err(Ended::Failed(err)) => ("failed", Some(err.message())),
    };
    if json {
        let line = JobLine {
            id: ctx.id(),
            queue: ctx.queue(),
            attempt: ctx.attempt(),
            outcome: outcome_word,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            error,
        };
        // One line per job, written whole: `println!` holds stdout's lock for the line.
        match serde_json::to_string(&line) {
            Ok(text) => println!("{text}"),
            Err(err) => tracing::error!(job = ctx.id(), error = %err, "cannot write the job's JSON line"),
        }
    }
    outcome.map_err(|ended| match ended {
        Ended::Stopped(_, err) | Ended::Failed(err) => err,
    })
}

/// How a command that did not succeed ended.
enum Ended {
    /// Stopped by the worker: the job was cancelled or its lease lost.
    Stopped(CancelReason, JobError),
    /// It failed by itself (or could not start).
    Failed(JobError),
}

impl From<JobError> for Ended {
    fn from(err: JobError) -> Ended {
        Ended::Failed(err)
    }
}

/// Whether this failure is the job's last: not retryable, or its last attempt. The server decides
/// (a redrive gives new attempts); this is what the attempt it was leased with says.
fn is_final(ctx: &JobContext, err: &JobError) -> bool {
    !err.is_retryable() || ctx.attempt() >= ctx.attempts_max()
}

fn stop_word(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::Requested => "cancelled",
        _ => "lease_lost",
    }
}

async fn run_command_inner(ctx: &JobContext, exec: &str, groups: &Groups) -> Result<Option<Value>, Ended> {
    // The payload byte for byte as the producer sent it.
    let payload = ctx.payload_json().get().as_bytes().to_vec();
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(exec)
        .env("DRAY_JOB_ID", ctx.id().to_string())
        .env("DRAY_QUEUE", ctx.queue())
        .env("DRAY_ATTEMPT", ctx.attempt().to_string())
        .env("DRAY_FENCING_TOKEN", ctx.fencing_token().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The environment-variable carrier of trace context that OpenTelemetry SDKs read, so the
    // command's own spans join the producer's trace.
    if let Some(traceparent) = ctx.traceparent() {
        command.env("TRACEPARENT", traceparent);
    }
    let mut child =
        command.spawn().map_err(|err| JobError::retryable(format!("cannot start `sh -c {exec}`: {err}")))?;
    let Some(pid) = child.id() else {
        return Err(JobError::retryable("the command exited before it could be watched").into());
    };
    let mut group = Group::new(groups, pid);

    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // A command that does not read its stdin closes the pipe: that is not an error.
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&payload).await;
        let _ = stdin.shutdown().await;
    });
    let stdout = tokio::spawn(read_head(stdout, STDOUT_BYTES_MAX));
    let stderr = tokio::spawn(read_tail(stderr, STDERR_TAIL_BYTES_MAX));

    let status = tokio::select! {
        status = child.wait() => status,
        reason = ctx.cancelled() => {
            // Say which: a cancel request (from the heartbeat's answer) ends the job `cancelled`;
            // a lost lease (a 409 or 404 to a heartbeat, or no heartbeat in time) means another
            // worker may hold it now.
            let why = match reason {
                CancelReason::Requested => "the job was cancelled (cancel requested)",
                _ => "the lease was lost (another worker may hold the job now)",
            };
            tracing::info!(job = ctx.id(), reason = stop_word(reason), "{why}: stopping the command");
            stop(group.id, &mut child).await;
            group.exited = true;
            writer.abort();
            return Err(Ended::Stopped(reason, JobError::retryable(format!("{why}: the command was killed"))));
        }
    };
    group.exited = true;
    writer.abort();
    let status = status.map_err(|err| JobError::retryable(format!("waiting for the command: {err}")))?;

    // The pipes close when every process holding them exits; a background process the command
    // left behind may hold them open. Give it a moment, then kill the group.
    let deadline = tokio::time::Instant::now() + PIPES_CLOSE_GRACE;
    let stdout = join_by(deadline, stdout, group.id).await;
    let stderr = join_by(deadline, stderr, group.id).await;
    let outcome = outcome(status, stdout, stderr, ctx.id());
    match &outcome {
        Ok(result) => tracing::info!(job = ctx.id(), result = result.is_some(), "command succeeded: job completed"),
        Err(err) => {
            // On the last attempt (or exit 65) the job goes to the dead-letter queue: the log says
            // so instead of `retryable=true`.
            let last = is_final(ctx, err);
            tracing::info!(
                job = ctx.id(),
                attempt = ctx.attempt(),
                attempts_max = ctx.attempts_max(),
                status = %status,
                retryable = err.is_retryable() && !last,
                outcome = if last { "dead" } else { "retrying" },
                error = %output::brief(err.message(), 200),
                "{}",
                if last { "command failed: final attempt, the job goes to the dead-letter queue" } else { "command failed: the job will be retried" }
            )
        }
    }
    Ok(outcome?)
}

/// What a reading task returns, waiting for it until `deadline`; then the command's process group
/// is killed to close the pipe, and after one more second the task is given up on.
async fn join_by<T: Default>(deadline: tokio::time::Instant, mut task: tokio::task::JoinHandle<T>, group: u32) -> T {
    if let Ok(joined) = tokio::time::timeout_at(deadline, &mut task).await {
        return joined.unwrap_or_default();
    }
    tracing::warn!("the command's output is still open after it exited: killing its process group");
    signal_group(group, "KILL");
    match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
        Ok(joined) => joined.unwrap_or_default(),
        Err(_) => {
            task.abort();
            T::default()
        }
    }
}

/// The handler's result for a command that exited with `status`.
fn outcome(
    status: ExitStatus,
    (stdout, stdout_truncated): (Vec<u8>, bool),
    stderr: Vec<u8>,
    job: u64,
) -> Result<Option<Value>, JobError> {
    let error = || {
        let text = String::from_utf8_lossy(&stderr);
        let text = text.trim();
        match (status.code(), status.signal()) {
            _ if !text.is_empty() => text.to_owned(),
            (Some(code), _) => format!("the command exited with code {code}"),
            (None, Some(signal)) => format!("the command was killed by signal {signal}"),
            (None, None) => format!("the command ended with {status}"),
        }
    };
    match status.code() {
        Some(0) => {
            if stdout_truncated {
                tracing::warn!(
                    job,
                    "stdout is longer than {STDOUT_BYTES_MAX} bytes: the job completes without a result"
                );
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&stdout);
            let text = text.trim();
            if text.is_empty() {
                return Ok(None);
            }
            match serde_json::from_str::<Value>(text) {
                Ok(result) => Ok(Some(result)),
                Err(_) => Ok(None),
            }
        }
        Some(EXIT_DATAERR) => Err(JobError::fatal(error())),
        _ => Err(JobError::retryable(error())),
    }
}

/// SIGTERM to the command's process group, SIGKILL after a grace period.
async fn stop(group: u32, child: &mut tokio::process::Child) {
    signal_group(group, "TERM");
    if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
        signal_group(group, "KILL");
        let _ = child.wait().await;
    }
}

/// The first `bytes_max` bytes of `reader`, and whether there was more; reads to the end so the
/// writer never blocks on a full pipe.
async fn read_head(mut reader: impl AsyncRead + Unpin, bytes_max: usize) -> (Vec<u8>, bool) {
    let mut head = Vec::new();
    let mut truncated = false;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = bytes_max.saturating_sub(head.len());
                head.extend_from_slice(&buffer[..read.min(room)]);
                truncated |= read > room;
            }
        }
    }
    (head, truncated)
}

/// The last `bytes_max` bytes of `reader`, starting at a character boundary.
async fn read_tail(mut reader: impl AsyncRead + Unpin, bytes_max: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                tail.extend_from_slice(&buffer[..read]);
                // Trim now and then, not on every read: amortised, and memory stays bounded.
                if tail.len() > 2 * bytes_max + buffer.len() {
                    tail.drain(..tail.len() - bytes_max);
                }
            }
        }
    }
    if tail.len() > bytes_max {
        tail.drain(..tail.len() - bytes_max);
    }
    // Do not start in the middle of a UTF-8 sequence.
    let continuation = tail.iter().take(3).take_while(|byte| (**byte & 0xC0) == 0x80).count();
    tail.drain(..continuation);
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_tail_keeps_the_end_at_a_char_boundary() {
        let text = "é".repeat(10); // 20 bytes
        let tail = read_tail(text.as_bytes(), 5).await;
        assert_eq!(String::from_utf8(tail).unwrap(), "éé");
        let long = "x".repeat(300_000) + "boom";
        let tail = read_tail(long.as_bytes(), 8).await;
        assert_eq!(tail, b"xxxxboom");
    }

    #[tokio::test]
    async fn read_head_reports_truncation() {
        assert_eq!(read_head(&b"hello"[..], 10).await, (b"hello".to_vec(), false));
        assert_eq!(read_head(&b"hello"[..], 3).await, (b"hel".to_vec(), true));
        assert_eq!(read_head(&b"hel"[..], 3).await, (b"hel".to_vec(), false));
    }

    #[test]
    fn exit_codes_decide_the_outcome() {
        let ok = ExitStatus::from_raw(0);
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(
            outcome(ok, (br#" {"a":1} "#.to_vec(), false), Vec::new(), 1).unwrap(),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(outcome(ok, (b"not json".to_vec(), false), Vec::new(), 1).unwrap(), None);
        assert_eq!(outcome(ok, (b"{}".to_vec(), true), Vec::new(), 1).unwrap(), None);
        let failed = outcome(exit(1), (Vec::new(), false), b"boom\n".to_vec(), 1).unwrap_err();
        assert_eq!((failed.message(), failed.is_retryable()), ("boom", true));
        let fatal = outcome(exit(65), (Vec::new(), false), Vec::new(), 1).unwrap_err();
        assert_eq!((fatal.message(), fatal.is_retryable()), ("the command exited with code 65", false));
        let tempfail = outcome(exit(75), (Vec::new(), false), Vec::new(), 1).unwrap_err();
        assert!(tempfail.is_retryable());
        let killed = outcome(ExitStatus::from_raw(9), (Vec::new(), false), Vec::new(), 1).unwrap_err();
        assert_eq!((killed.message(), killed.is_retryable()), ("the command was killed by signal 9", true));
    }
}
