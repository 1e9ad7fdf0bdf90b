//! Acks made in SQL (PostgreSQL mode): an application that completes or fails a job inside its
//! own transaction with `<schema>.complete()`/`fail()` never talks to a server, so no node saw
//! the ack. Each accepted call leaves a row in `<schema>.sql_acks`, committed with the
//! application's transaction; every node drains that table every [`DRAIN_INTERVAL`]
//! (`PostgresStore::sql_acks_drain`, which hands each row to exactly one node) and reports each
//! ack to the observer and to the waiters exactly as the ack route does for an HTTP ack: the
//! `completed`/`failed`/`dead` counters, the run-time histogram, the log event, the worker
//! registry, the requests waiting for the job to finish (through the observer), and a wake-up
//! of the queue's long-polls when it has flow limits.
//!
//! So SQL acks show in the metrics at most about a second late, summed over the nodes like every
//! counter, and counted once. While no node runs, the rows wait (the table only holds acks not
//! yet counted); a drain that fails is retried at the next interval.

use std::time::Duration;

use dray_core::{JobState, QueueName};
use tokio::sync::watch;

use crate::app::App;
use crate::store::AnyStore;

/// How often each node drains the table.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_secs(1);
/// Rows taken per statement; a full batch is followed by another at once.
const DRAIN_BATCH_MAX: usize = 1_000;

/// Runs until `stop` turns true (or its sender goes). Does nothing for the embedded store, which
/// has no SQL functions.
pub(crate) async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let AnyStore::Postgres(pg) = &*app.store else { return };
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => return,
            _ = tick.tick() => {}
        }
        loop {
            let acks = match pg.sql_acks_drain(DRAIN_BATCH_MAX).await {
                Ok(acks) => acks,
                Err(e) => {
                    tracing::debug!(error = %e, "could not drain the acks made in SQL; retrying later");
                    break;
                }
            };
            let full = acks.len() == DRAIN_BATCH_MAX;
            let mut limited: Vec<QueueName> = Vec::new();
            let mut available = false;
            for ack in acks {
                available |= ack.acked.state == JobState::Available;
                if app.limited.known(&ack.acked.queue) && !limited.contains(&ack.acked.queue) {
                    limited.push(ack.acked.queue.clone());
                }
                app.observe.acked(ack.at, ack.job, ack.lease, &Ok(ack.acked));
            }
            if available {
                app.waiters.wake_all();
            }
            if !limited.is_empty() {
                app.waiters.wake(&limited);
            }
            if !full {
                break;
            }
        }
    }
}
