//! A worker for two queues: `emails` (quick jobs) and `reports` (long jobs that checkpoint their
//! progress, so a retry resumes where the failed attempt stopped). Ctrl-C shuts it down gracefully:
//! running jobs get the grace period to finish, then are handed back to the server.
//!
//! ```sh
//! DRAY_SERVER=http://127.0.0.1:7700 cargo run -p dray-client --example worker
//! ```

use std::time::Duration;

use dray_client::{Client, HandlerResult, JobContext, JobError, Worker};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct Email {
    to: String,
    template: String,
}

#[derive(Deserialize)]
struct Report {
    name: String,
    pages: u32,
}

#[derive(Serialize, Deserialize)]
struct ReportCheckpoint {
    pages_done: u32,
}

async fn send_email(ctx: JobContext) -> HandlerResult {
    // A payload that does not decode never will: straight to the dead-letter queue.
    let email: Email = ctx.payload().map_err(JobError::fatal)?;
    tracing::info!(job = ctx.id(), attempt = ctx.attempt(), to = %email.to, template = %email.template, "sending email");
    Ok(Some(json!({ "sent_to": email.to })))
}

async fn build_report(ctx: JobContext) -> HandlerResult {
    let report: Report = ctx.payload().map_err(JobError::fatal)?;
    // Resume from what an earlier attempt saved, if anything.
    let start = ctx.checkpoint::<ReportCheckpoint>()?.map_or(0, |c| c.pages_done);
    tracing::info!(job = ctx.id(), attempt = ctx.attempt(), report = %report.name, start, "building report");
    for page in start..report.pages {
        tokio::select! {
            // Cancelled by a user, or the lease is lost: stop now.
            reason = ctx.cancelled() => {
                return Err(JobError::retryable(format!("stopped at page {page}: {reason:?}")));
            }
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        // Saved with the next automatic heartbeat; sent before a failure is reported.
        ctx.save_checkpoint(&ReportCheckpoint { pages_done: page + 1 })?;
        ctx.progress(&json!({ "page": page + 1, "of": report.pages }))?;
    }
    Ok(Some(json!({ "report": report.name, "pages": report.pages })))
}

#[tokio::main]
async fn main() -> Result<(), dray_client::Error> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let url = std::env::var("DRAY_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new(url)?;
    let worker = Worker::builder(client)
        .queue("emails", send_email)
        .queue("reports", build_report)
        .concurrency(8)
        .lease_wait(Duration::from_secs(20))
        .shutdown_grace(Duration::from_secs(10))
        .build()?;
    tracing::info!(worker = worker.worker_id(), "press Ctrl-C to stop");
    let report = worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: shutting down");
        })
        .await?;
    tracing::info!(?report, "stopped");
    Ok(())
}
