//! The worker's outbox of completions and failures: job tasks push one item each, and one task
//! sends them in batches with `POST /v1/ack` (one durable write on the server for many jobs).
//!
//! A batch leaves when `batch_max` items are waiting, when the first item has waited `linger`, or
//! at once when no handler is running (nothing more is coming soon, so waiting would only add
//! latency). Only one batch is in flight: while it is, the next one fills up, which is where the
//! batching under load comes from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dray_api::{AckBatch, AckItem, AckOutcome};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Client;
use crate::backoff::Backoff;

/// What the worker counts as it goes; a snapshot is returned by `Worker::run`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) lease_requests: AtomicU64,
    pub(crate) jobs_leased: AtomicU64,
    pub(crate) jobs_completed: AtomicU64,
    pub(crate) jobs_failed: AtomicU64,
    pub(crate) jobs_handed_back: AtomicU64,
    pub(crate) acks_refused: AtomicU64,
    pub(crate) ack_requests: AtomicU64,
    pub(crate) jobs_acked_in_transaction: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The receiving side of the outbox, and the batching rule.
#[derive(Debug)]
pub(crate) struct AckBuffer {
    rx: mpsc::Receiver<AckItem>,
    /// Handlers still running: each will push one item.
    running: Arc<AtomicUsize>,
    batch_max: usize,
    linger: Duration,
}

impl AckBuffer {
    pub(crate) fn new(
        rx: mpsc::Receiver<AckItem>,
        running: Arc<AtomicUsize>,
        batch_max: usize,
        linger: Duration,
    ) -> AckBuffer {
        AckBuffer { rx, running, batch_max: batch_max.max(1), linger }
    }

    /// The next batch to send; `None` once every sender is gone and the buffer is empty.
    pub(crate) async fn next_batch(&mut self) -> Option<Vec<AckItem>> {
        let first = self.rx.recv().await?;
        let deadline = Instant::now() + self.linger;
        let mut batch = vec![first];
        loop {
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if batch.len() >= self.batch_max || self.running.load(Ordering::Acquire) == 0 {
                return Some(batch);
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                // Closed, or lingered long enough.
                Ok(None) | Err(_) => return Some(batch),
            }
        }
    }
}

/// Sends batches until the buffer is closed and empty. Cancel safety: dropping it may lose the
/// batch in hand (its jobs come back when their leases expire); the worker only does that after a
/// bounded wait at shutdown.
pub(crate) async fn send_loop(client: Client, mut buffer: AckBuffer, counters: Arc<Counters>) {
    while let Some(batch) = buffer.next_batch().await {
        send_batch(&client, AckBatch { acks: batch }, &counters).await;
    }
}

async fn send_batch(client: &Client, batch: AckBatch, counters: &Counters) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut retried = false;
    loop {
        bump(&counters.ack_requests);
        match client.ack_ref(&batch).await {
            Ok(response) => {
                for (i, result) in response.results.iter().enumerate() {
                    // Results come in request order; the job id is the check.
                    let item = batch.acks.get(i).filter(|item| item.job == result.job);
                    if result.acked.is_some() {
                        match item.map(|item| item.outcome) {
                            Some(AckOutcome::Complete) => bump(&counters.jobs_completed),
                            Some(AckOutcome::Fail) => bump(&counters.jobs_failed),
                            None => {}
                        }
                        continue;
                    }
                    bump(&counters.acks_refused);
                    let Some(problem) = &result.problem else { continue };
                    if problem.status == 409 && retried {
                        // Most likely our own earlier try was applied and its answer lost.
                        tracing::debug!(job = result.job, problem = %problem.detail, "ack refused after a retry");
                    } else if problem.status == 409 {
                        tracing::warn!(
                            job = result.job,
                            problem = %problem.detail,
                            "ack refused: stale lease (the lease expired; someone else may hold the job now)"
                        );
                    } else {
                        tracing::warn!(job = result.job, status = problem.status, problem = %problem.detail, "ack refused");
                    }
                }
                return;
            }
            Err(e) if e.is_retryable() => {
                let pause = backoff.next();
                tracing::warn!(
                    error = %crate::worker::error_text(&e, client.base_url()),
                    jobs = batch.acks.len(),
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "ack batch failed; retrying (acks are idempotent per lease)"
                );
                retried = true;
                tokio::time::sleep(pause).await;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    jobs = batch.acks.len(),
                    "ack batch refused; its jobs will be delivered again when their leases expire"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(job: u64) -> AckItem {
        AckItem {
            job,
            lease_id: format!("{job:016x}"),
            outcome: AckOutcome::Complete,
            result: None,
            error: None,
            retryable: None,
            retry_after_ms: None,
            rate_limited: false,
        }
    }

    fn ids(batch: &[AckItem]) -> Vec<u64> {
        batch.iter().map(|i| i.job).collect()
    }

    /// Pushes `items` (with `running` handlers still busy) and returns the batches the buffer
    /// makes of them, with the paused clock's time when each was cut.
    async fn check(items: u64, running: usize, batch_max: usize) -> Vec<(Vec<u64>, Duration)> {
        let (tx, rx) = mpsc::channel(1024);
        let running = Arc::new(AtomicUsize::new(running));
        let mut buffer = AckBuffer::new(rx, running, batch_max, Duration::from_millis(2));
        for job in 0..items {
            tx.send(item(job)).await.unwrap();
        }
        drop(tx);
        let start = Instant::now();
        let mut batches = Vec::new();
        while let Some(batch) = buffer.next_batch().await {
            batches.push((ids(&batch), start.elapsed()));
        }
        batches
    }

    #[tokio::test(start_paused = true)]
    async fn batches_cap_at_batch_max() {
        let batches = check(150, 10, 64).await;
        let sizes: Vec<usize> = batches.iter().map(|(b, _)| b.len()).collect();
        assert_eq!(sizes, [64, 64, 22]);
        // Full batches leave at once; the tail waits out the linger (handlers are still running)
        // until the channel closes.
        assert_eq!(batches[0].1, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_worker_flushes_at_once() {
        let batches = check(3, 0, 64).await;
        assert_eq!(batches, [(vec![0, 1, 2], Duration::ZERO)]);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_worker_lingers_for_more_then_sends() {
        let (tx, rx) = mpsc::channel(16);
        let running = Arc::new(AtomicUsize::new(2));
        let mut buffer = AckBuffer::new(rx, running.clone(), 64, Duration::from_millis(2));
        tx.send(item(1)).await.unwrap();
        let late = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.send(item(2)).await.unwrap();
        });
        let start = Instant::now();
        // Item 2 arrives within the linger and joins item 1; then the linger ends the batch.
        let batch = buffer.next_batch().await.unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        assert_eq!(start.elapsed(), Duration::from_millis(2));
        // Later items, once nothing runs any more, go at once.
        running.store(0, Ordering::Release);
        tx.send(item(3)).await.unwrap();
        let start = Instant::now();
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), [3]);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// The point of the buffer: many completions arriving together make few requests.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_completions_makes_few_batches() {
        let batches = check(1_000, 8, 64).await;
        assert_eq!(batches.len(), 16, "1000 acks in batches of at most 64");
        assert_eq!(batches.iter().map(|(b, _)| b.len()).sum::<usize>(), 1_000);
    }
}
