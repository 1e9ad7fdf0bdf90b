//! `dray jobs`: list, show (with the timeline; `--wait` for the job to finish), cancel.

use dray_api::{Job, JobPage, JobQuery, JobSummary};

use crate::cli::{JobsCommand, JobsListArgs};
use crate::output;

pub async fn run(client: &dray_client::Client, command: JobsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        JobsCommand::List(args) => list(client, args, json).await,
        JobsCommand::Show { id, wait: None } => show(client, id, json).await,
        JobsCommand::Show { id, wait: Some(wait) } => show_waited(client.job_wait(id, wait).await, json),
        JobsCommand::Cancel { id } => {
            let cancelled = client.cancel(id).await?;
            if json {
                return output::json(&cancelled);
            }
            match word(&cancelled.state).as_str() {
                "running" => println!("job {id} is running: its worker was asked to stop"),
                state => println!("job {id} {state}"),
            }
            Ok(())
        }
        JobsCommand::Promote { id } => {
            let promoted = client.promote(id).await?;
            if json {
                return output::json(&promoted);
            }
            println!("job {id} {}: it runs now", word(&promoted.state));
            Ok(())
        }
    }
}

async fn list(client: &dray_client::Client, args: JobsListArgs, json: bool) -> anyhow::Result<()> {
    let query = JobQuery {
        queue: args.queue,
        state: args.state.map(Into::into),
        tag: args.tag,
        error: args.error,
        order: args.order.map(Into::into),
        after: args.after,
        limit: args.limit,
        ..JobQuery::default()
    };
    let page = client.jobs(query).await?;
    if json {
        return output::json(&page);
    }
    print_page(&page);
    Ok(())
}

/// A page of jobs as a table, with the command for the next page.
pub fn print_page(page: &JobPage) {
    if page.jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let mut table = output::table(["ID", "QUEUE", "STATE", "ATTEMPT", "CREATED", "RUN AT", "TAGS", "LAST ERROR"]);
    for job in &page.jobs {
        table.add_row(summary_row(job));
    }
    output::print_table(&mut table);
    if let Some(next) = page.next {
        println!("more: --after {next}");
    }
}

fn summary_row(job: &JobSummary) -> Vec<String> {
    let mut state = word(&job.state);
    if let Some(reason) = &job.dead_reason {
        state = format!("{state} ({})", word(reason));
    }
    vec![
        job.id.to_string(),
        job.queue.clone(),
        state,
        format!("{}/{}", job.attempt, job.attempts_max),
        output::time(&job.created_at),
        output::time(&job.run_at),
        job.tags.join(","),
        job.last_error.as_deref().map(|error| output::brief(error, 60)).unwrap_or_default(),
    ]
}

async fn show(client: &dray_client::Client, id: u64, json: bool) -> anyhow::Result<()> {
    let job = client.job(id).await?;
    if json {
        return output::json(&job);
    }
    print_job(&job);
    Ok(())
}

/// Prints the job a wait ended with (finished, or as it was when the wait ran out) and returns
/// what decides the exit status: the job's outcome (`exit::job_ended`) or the wait's timeout.
pub fn show_waited(waited: Result<Job, dray_client::Error>, json: bool) -> anyhow::Result<()> {
    let (job, timed_out) = match waited {
        Ok(job) => (job, None),
        Err(dray_client::Error::WaitTimeout { job, waited }) => (*job, Some(waited)),
        Err(e) => return Err(e.into()),
    };
    if json {
        output::json(&job)?;
    } else {
        print_job(&job);
    }
    match timed_out {
        None => Ok(crate::exit::job_ended(&job)?),
        Some(waited) => Err(dray_client::Error::WaitTimeout { job: Box::new(job), waited }.into()),
    }
}

fn print_job(job: &Job) {
    let mut fields = output::fields();
    let mut state = word(&job.state);
    if let Some(reason) = &job.dead_reason {
        state = format!("{state} ({})", word(reason));
    }
    if job.cancel_requested && word(&job.state) == "running" {
        state.push_str(", cancel requested");
    }
    fields.add_row(["job", &job.id.to_string()]);
    fields.add_row(["queue", &job.queue]);
    fields.add_row(["state", &state]);
    fields.add_row(["attempt", &format!("{} of {}", job.attempt, job.attempts_max)]);
    fields.add_row(["priority", &job.priority.to_string()]);
    fields.add_row(["created", &output::time(&job.created_at)]);
    fields.add_row(["run at", &output::time(&job.run_at)]);
    if let Some(finished) = &job.finished_at {
        fields.add_row(["finished", &output::time(finished)]);
    }
    if let Some(lease) = &job.lease {
        fields.add_row([
            "lease",
            &format!(
                "worker {}, fencing token {}, deadline {}",
                lease.worker,
                lease.fencing_token,
                output::time(&lease.deadline)
            ),
        ]);
    }
    fields.add_row([
        "retry",
        &format!(
            "lease {}, backoff {} x{} up to {}",
            output::duration_ms(job.lease_ms),
            output::duration_ms(job.backoff.base_ms),
            job.backoff.factor,
            output::duration_ms(job.backoff.cap_ms)
        ),
    ]);
    if !job.tags.is_empty() {
        fields.add_row(["tags", &job.tags.join(", ")]);
    }
    if let Some(key) = &job.idempotency_key {
        fields.add_row(["idempotency key", key]);
    }
    if let Some(key) = &job.ordering_key {
        fields.add_row(["ordering key", key]);
    }
    if let Some(key) = &job.group_key {
        fields.add_row(["group key", key]);
    }
    if let Some(waiting) = &job.waiting {
        fields.add_row(["waiting", &waiting.detail]);
    }
    if let Some(traceparent) = &job.traceparent {
        fields.add_row(["traceparent", traceparent]);
    }
    fields.add_row(["payload", job.payload.get()]);
    if let Some(result) = &job.result {
        fields.add_row(["result", result.get()]);
    }
    if let Some(progress) = &job.progress {
        fields.add_row(["progress", progress.get()]);
    }
    if let Some(checkpoint) = &job.checkpoint {
        fields.add_row(["checkpoint", checkpoint.get()]);
    }
    if let Some(error) = &job.last_error {
        fields.add_row(["last error", error]);
    }
    output::print_table(&mut fields);

    if !job.steps.is_empty() {
        println!();
        println!("steps:");
        let mut steps = output::table(["STEP", "ATTEMPT", "RECORDED", "RESULT"]);
        for step in &job.steps {
            steps.add_row(vec![
                step.name.clone(),
                step.attempt.to_string(),
                output::time(&step.recorded_at),
                output::brief(step.result.get(), 80),
            ]);
        }
        output::print_table(&mut steps);
    }

    println!();
    if job.history_dropped > 0 {
        println!("history ({} older entries dropped after the first):", job.history_dropped);
    } else {
        println!("history:");
    }
    let mut history = output::table(["AT", "EVENT", "STATE", "ATTEMPT", "WORKER", "FENCING TOKEN", "ERROR"]);
    for entry in &job.history {
        let mut event = entry.event.clone();
        if let Some(run_at) = &entry.run_at {
            event = format!("{event} (run at {})", output::time(run_at));
        }
        if let Some(step) = &entry.step {
            event = format!("{event} ({step})");
        }
        history.add_row(vec![
            output::time(&entry.at),
            event,
            word(&entry.state),
            entry.attempt.to_string(),
            entry.worker.clone().unwrap_or_default(),
            entry.fencing_token.map(|token| token.to_string()).unwrap_or_default(),
            entry.error.as_deref().map(|error| output::brief(error, 200)).unwrap_or_default(),
        ]);
    }
    output::print_table(&mut history);
}

/// A wire enum's word (`dead`, `lease_expired`), as the API spells it.
pub fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|value| value.as_str().map(str::to_owned)).unwrap_or_default()
}
