//! `dray enqueue`: one job (with `--wait`, printed once it is finished), or one job per line of
//! a JSON Lines file in atomic batches.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use dray_api::{EnqueueJob, Json};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cli::EnqueueArgs;
use crate::cmd::jobs::word;
use crate::exit::Failure;
use crate::output;

/// Jobs per batch request. The server takes up to 10,000; 1,000 keeps one refused batch (and the
/// work lost with it) small and the progress bar moving.
const BATCH_JOBS_MAX: usize = 1_000;
/// Payload bytes per batch request: well under the server's 16 MiB request limit, envelope included.
const BATCH_PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The payload of `--payload TEXT` or `--payload-file PATH` (`-` for stdin); `{}` without either.
pub fn payload_of(text: Option<&str>, file: Option<&std::path::Path>) -> Result<Json, Failure> {
    match (text, file) {
        (Some(text), _) => parse_payload(text.to_owned()).map_err(|err| {
            Failure::invalid("Invalid payload", format!("--payload is not JSON: {err}")).field("payload")
        }),
        (None, Some(path)) => {
            let text = read_file_or_stdin(path, "--payload-file")?;
            parse_payload(text).map_err(|err| {
                Failure::invalid("Invalid payload", format!("{} is not JSON: {err}", path.display())).field("payload")
            })
        }
        (None, None) => Ok(RawValue::from_string("{}".to_owned()).expect("valid JSON")),
    }
}

pub async fn run(client: &dray_client::Client, args: EnqueueArgs, json: bool) -> anyhow::Result<()> {
    if let Some(path) = args.jsonl.clone() {
        return run_jsonl(client, &args, &path, json).await;
    }
    let payload = payload_of(args.payload.as_deref(), args.payload_file.as_deref())?;
    let job = job(&args, payload);
    if let Some(wait) = args.wait {
        return crate::cmd::jobs::show_waited(client.enqueue_and_wait(job.into(), wait).await, json);
    }
    let enqueued = client.enqueue(job.into()).await?;
    if json {
        return output::json(&enqueued);
    }
    if enqueued.duplicate {
        println!("job {} already exists for this idempotency key ({})", enqueued.id, word(&enqueued.state));
    } else {
        println!("enqueued job {} ({})", enqueued.id, word(&enqueued.state));
    }
    Ok(())
}

pub(crate) fn parse_payload(text: String) -> Result<Json, serde_json::Error> {
    let trimmed = text.trim();
    if trimmed.len() == text.len() { RawValue::from_string(text) } else { RawValue::from_string(trimmed.to_owned()) }
}

/// The payload file's text. A file that cannot be read is bad input (exit status 5), like a file
/// that is not JSON.
pub(crate) fn read_file_or_stdin(path: &Path, flag: &str) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        File::open(path).and_then(|mut file| file.read_to_string(&mut text))
    };
    match read {
        Ok(_) => Ok(text),
        Err(err) => Err(unreadable(path, &err).field(flag)),
    }
}

/// The error for an input file (or stdin, `-`) that cannot be opened or read.
fn unreadable(path: &Path, err: &std::io::Error) -> Failure {
    let name = if path == Path::new("-") { "stdin".to_owned() } else { path.display().to_string() };
    Failure::invalid("Cannot read the input", format!("{name}: {err}"))
}

/// A job with the options of `args` and this payload.
fn job(args: &EnqueueArgs, payload: Json) -> EnqueueJob {
    EnqueueJob {
        queue: args.queue.clone(),
        payload,
        priority: args.priority,
        run_at: args.run_at.clone(),
        delay_ms: args.delay_ms,
        attempts_max: args.attempts_max,
        backoff: None,
        lease_ms: args.lease_ms,
        idempotency_key: args.idempotency_key.clone(),
        ordering_key: args.ordering_key.clone(),
        group_key: args.group_key.clone(),
        tags: args.tags.clone(),
        traceparent: args.traceparent.clone(),
        key: None,
        depends_on: args.after.iter().map(|&id| dray_api::DependencyRef::Id(id)).collect(),
        on_dependency_failure: args.on_dependency_failure.as_deref().map(|p| match p {
            "run" => dray_api::OnDependencyFailure::Run,
            _ => dray_api::OnDependencyFailure::Cancel,
        }),
    }
}

#[derive(Debug, Serialize)]
struct JsonlSummary {
    /// New jobs.
    enqueued: usize,
    /// Lines whose idempotency key matched an existing job (never, without keys).
    duplicates: usize,
    /// The job of each payload line, in order.
    ids: Vec<u64>,
}

/// A batch being filled: its jobs and the line each came from.
#[derive(Debug, Default)]
struct Batch {
    jobs: Vec<dray_client::Enqueue>,
    lines: Vec<u64>,
    payload_bytes: usize,
}

async fn run_jsonl(client: &dray_client::Client, args: &EnqueueArgs, path: &Path, json: bool) -> anyhow::Result<()> {
    let (mut reader, bytes_len): (Box<dyn BufRead>, Option<u64>) = if path == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = File::open(path).map_err(|err| unreadable(path, &err).field("--jsonl"))?;
        let len = file.metadata().ok().map(|meta| meta.len());
        (Box::new(BufReader::with_capacity(1 << 20, file)), len)
    };
    // On a regular file the bar measures bytes read; on stdin it counts jobs.
    let bar = match bytes_len {
        Some(len) => output::progress(Some(len), output::Unit::Bytes),
        None => output::progress(None, output::Unit::Jobs),
    };
    let mut summary = JsonlSummary { enqueued: 0, duplicates: 0, ids: Vec::new() };
    let mut batch = Batch::default();
    let mut line = String::new();
    let mut line_number: u64 = 0;
    let mut bytes_read: u64 = 0;
    loop {
        line.clear();
        let read = match reader.read_line(&mut line) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                bar.abandon();
                return Err(bad_line(line_number + 1, "not UTF-8", &summary, &batch).into());
            }
            Err(err) => {
                bar.abandon();
                return Err(unreadable(path, &err).field("--jsonl").into());
            }
        };
        if read == 0 {
            break;
        }
        line_number += 1;
        bytes_read += read as u64;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let payload = match RawValue::from_string(text.to_owned()) {
            Ok(payload) => payload,
            Err(err) => {
                bar.abandon();
                return Err(bad_line(line_number, &format!("not JSON: {err}"), &summary, &batch).into());
            }
        };
        batch.payload_bytes += text.len();
        batch.jobs.push(job(args, payload).into());
        batch.lines.push(line_number);
        if batch.jobs.len() >= BATCH_JOBS_MAX || batch.payload_bytes >= BATCH_PAYLOAD_BYTES_MAX {
            if let Err(err) = send(client, std::mem::take(&mut batch), &mut summary).await {
                bar.abandon();
                return Err(err);
            }
            bar.set_position(if bytes_len.is_some() { bytes_read } else { summary.ids.len() as u64 });
            bar.set_message(format!("{} enqueued", output::jobs(summary.ids.len())));
        }
    }
    if !batch.jobs.is_empty()
        && let Err(err) = send(client, batch, &mut summary).await
    {
        bar.abandon();
        return Err(err);
    }
    bar.finish_and_clear();
    if json {
        return output::json(&summary);
    }
    match (summary.ids.first(), summary.ids.last()) {
        (Some(_), Some(_)) => println!(
            "enqueued {} ({} duplicates), {}",
            output::jobs(summary.enqueued),
            summary.duplicates,
            output::id_ranges(&summary.ids)
        ),
        _ if path == Path::new("-") => println!("enqueued 0 jobs: stdin has no payload lines"),
        _ => println!("enqueued 0 jobs: {} has no payload lines", path.display()),
    }
    Ok(())
}

/// The error for a line that cannot be enqueued; says what was enqueued before it.
fn bad_line(line_number: u64, what: &str, summary: &JsonlSummary, batch: &Batch) -> Failure {
    let first_unsent = batch.lines.first().copied().unwrap_or(line_number);
    Failure::invalid(
        "Invalid line",
        format!(
            "line {line_number}: {what}; {} jobs from the lines before line {first_unsent} were \
             enqueued, nothing from line {first_unsent} on",
            summary.ids.len()
        ),
    )
    .field(format!("line {line_number}"))
}

async fn send(client: &dray_client::Client, batch: Batch, summary: &mut JsonlSummary) -> anyhow::Result<()> {
    let first = batch.lines.first().copied().unwrap_or(0);
    let last = batch.lines.last().copied().unwrap_or(0);
    let enqueued_before = summary.ids.len();
    let lines = batch.lines;
    let result = client.enqueue_batch(batch.jobs).await.map_err(|err| {
        // The server names the item at fault (`jobs[3].payload`): say which line that was.
        let line = problem_index(&err).and_then(|index| lines.get(index).copied());
        let mut context = format!(
            "batch of lines {first}-{last} refused, nothing from it enqueued \
             ({enqueued_before} jobs from earlier lines were)"
        );
        if let Some(line) = line {
            context = format!("line {line}: {context}");
        }
        anyhow::Error::new(err).context(context)
    })?;
    for job in result.jobs {
        if job.duplicate {
            summary.duplicates += 1;
        } else {
            summary.enqueued += 1;
        }
        summary.ids.push(job.id);
    }
    Ok(())
}

/// The batch index in a problem's field, e.g. 3 for `jobs[3].payload`.
fn problem_index(err: &dray_client::Error) -> Option<usize> {
    let dray_client::Error::Api { problem, .. } = err else {
        return None;
    };
    let field = problem.field.as_deref()?;
    let rest = field.strip_prefix("jobs[")?;
    rest[..rest.find(']')?].parse().ok()
}
