//! Due-time wake-ups (PostgreSQL mode): each node wakes its own long-polls when a delayed or
//! retrying job of a queue they wait on falls due, instead of waiting for the maintenance leader
//! to promote the job and notify. A lease promotes due jobs itself, so the woken long-polls get
//! the job at once; the leader's promotion still runs, for queues nobody waits on. Without this,
//! a leader failover delays such a job for a waiting long-poll by the leader's TTL (issue #18,
//! defect 11).
//!
//! One timer per node, for all its waiters: it asks the store when the next waiting job of each
//! waited-on queue falls due (one index probe per queue, `PostgresStore::jobs_due_next`), sleeps
//! until the earliest, wakes that queue's waiters, and asks again. It asks again early when a
//! queue gets its first waiter or a notification says a queue has a new waiting job (inserts of
//! scheduled jobs, failed attempts and expired leases send `due <queue>`), when the LISTEN
//! connection (re)connects, and at least every [`RESCAN_INTERVAL`] (jobs enqueued through the SQL
//! `enqueue()` function send no such notification).
//!
//! The time to wait comes from the database's clock (milliseconds until the job's `run_at`,
//! rounded up, measured as the query ran), counted on this node's monotonic clock from when the
//! answer arrived: never early, so a woken lease finds the job due. Once a queue's waiters were
//! woken for jobs due up to some `run_at`, later questions only count jobs due after it: a job
//! that stays waiting (its row locked by another transaction) does not wake them again and again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dray_core::{QueueName, Timestamp};
use dray_runtime::{Clock, SystemClock};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::AnyStore;
use crate::waiters::Waiters;

/// The longest the timer goes without asking again, for due times no notification announced.
pub(crate) const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two questions: a burst of notifications costs one query.
const QUERY_GAP_MIN: Duration = Duration::from_millis(10);
/// After a failed question (the database out of reach), the pause before the next.
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true (or its sender goes). Does nothing for the embedded store, whose
/// one process runs maintenance itself.
pub(crate) async fn run(
    store: Arc<AnyStore>,
    clock: SystemClock,
    waiters: Arc<Waiters>,
    mut stop: watch::Receiver<bool>,
) {
    let AnyStore::Postgres(pg) = &*store else { return };
    // Per waited-on queue: its waiters were woken for every job due up to this `run_at`.
    let mut woken: HashMap<QueueName, Timestamp> = HashMap::new();
    let mut last_query: Option<Instant> = None;
    loop {
        if let Some(at) = last_query {
            tokio::select! {
                biased;
                _ = stop.wait_for(|&s| s) => return,
                () = tokio::time::sleep_until(at + QUERY_GAP_MIN) => {}
            }
        }
        let queues = waiters.queues();
        woken.retain(|q, _| queues.contains(q));
        let asked: Vec<(QueueName, Option<Timestamp>)> =
            queues.iter().map(|q| (q.clone(), woken.get(q).copied())).collect();
        let mut pause = RESCAN_INTERVAL;
        let mut next: Vec<(Instant, QueueName, Timestamp)> = Vec::new();
        if !asked.is_empty() {
            last_query = Some(Instant::now());
            match pg.jobs_due_next(&asked, clock.now()).await {
                Ok(due) => {
                    let answered = Instant::now();
                    next = due
                        .into_iter()
                        .map(|d| (answered + Duration::from_millis(d.wait_ms), d.queue, d.run_at))
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read when waiting jobs fall due; retrying");
                    pause = RETRY_AFTER_ERROR;
                }
            }
        }
        let first = next.iter().map(|(at, _, _)| *at).min();
        let timer = async {
            match first {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => return,
            () = timer => {
                let now = Instant::now();
                let due: Vec<&(Instant, QueueName, Timestamp)> = next.iter().filter(|(at, _, _)| *at <= now).collect();
                for (_, queue, run_at) in &due {
                    woken.insert(queue.clone(), *run_at);
                }
                tracing::debug!(queues = due.len(), "waiting jobs fell due: waking their long-polls");
                waiters.wake(due.iter().map(|(_, queue, _)| queue));
            }
            () = waiters.rescan_requested() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}
