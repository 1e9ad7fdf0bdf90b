//! Enqueues a few jobs: one now, one in a minute, and an atomic batch.
//!
//! ```sh
//! DRAY_SERVER=http://127.0.0.1:7700 cargo run -p dray-client --example producer
//! ```

use std::time::Duration;

use dray_client::{Client, Enqueue};
use serde::Serialize;

#[derive(Serialize)]
struct Email<'a> {
    to: &'a str,
    template: &'a str,
}

#[derive(Serialize)]
struct Report {
    name: &'static str,
    pages: u32,
}

#[tokio::main]
async fn main() -> Result<(), dray_client::Error> {
    let url = std::env::var("DRAY_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let client = Client::new(url)?;

    // The idempotency key makes the enqueue safe to retry: if the answer is lost (a transport
    // error), sending the same job again returns the original instead of a second one.
    let welcome = Enqueue::new("emails", &Email { to: "ada@example.com", template: "welcome" })?
        .priority(5)
        .idempotency_key("welcome-ada")
        .attempts_max(5)
        .tags(["onboarding"]);
    let enqueued = client.enqueue(welcome).await?;
    println!("enqueued job {} ({:?}, duplicate: {})", enqueued.id, enqueued.state, enqueued.duplicate);

    let reminder =
        Enqueue::new("emails", &Email { to: "ada@example.com", template: "reminder" })?.delay(Duration::from_secs(60));
    let enqueued = client.enqueue(reminder).await?;
    println!("enqueued job {} ({:?}): runs in a minute", enqueued.id, enqueued.state);

    // All or nothing: one invalid job refuses the whole batch, naming it (`jobs[2].payload`).
    let reports = ["sales", "stock", "returns"]
        .into_iter()
        .map(|name| Enqueue::new("reports", &Report { name, pages: 300 }))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = client.enqueue_batch(reports).await?;
    let ids: Vec<u64> = batch.jobs.iter().map(|j| j.id).collect();
    println!("enqueued batch {ids:?}");

    let job = client.job(ids[0]).await?;
    println!("job {} is {:?} in queue {}", job.id, job.state, job.queue);
    Ok(())
}
