//! Wake-ups across nodes (PostgreSQL mode): one dedicated connection, outside the pool (a pooled
//! connection cannot listen), runs `LISTEN <schema>_jobs`. The store sends
//! `NOTIFY <schema>_jobs, '<queue>'` when a queue gets available jobs (insert, promotion,
//! redrive) on any node; each notification wakes this node's long-polls on that queue.
//!
//! A payload `due <queue>` says the queue got a delayed or retrying job instead: it does not wake
//! anyone, it asks the due-time timer (`due.rs`) to look at the due times again.
//!
//! Notifications sent while the connection is down are lost, so every (re)connect is treated as
//! "rescan": once `LISTEN` is in place, every waiter is woken to try leasing again, and the
//! due-time timer looks at the due times again. Connection
//! losses are retried with exponential backoff (capped), forever, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use dray_core::QueueName;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use crate::waiters::Waiters;

/// First pause after a failed or lost connection; doubled each time, up to the max.
const BACKOFF_MS_MIN: u64 = 50;
const BACKOFF_MS_MAX: u64 = 2_000;
/// How often an idle LISTEN connection is probed (an empty query), to notice a dead peer.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true. `pg` is the store's connection settings (URL, TLS, timeouts).
pub(crate) async fn run(
    pg: dray_store_postgres::Connector,
    channel: String,
    waiters: Arc<Waiters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MS_MIN;
    loop {
        let session = listen_once(&pg, &channel, &waiters);
        let outcome = tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => return,
            outcome = session => outcome,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!(channel, "the LISTEN connection closed; reconnecting");
                backoff = BACKOFF_MS_MIN;
            }
            Err(Fail { listening, error }) => {
                if listening {
                    // It worked for a while: start the backoff over.
                    backoff = BACKOFF_MS_MIN;
                }
                tracing::warn!(channel, error = %error, retry_ms = backoff, "the LISTEN connection failed; reconnecting");
            }
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => return,
            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MS_MAX);
    }
}

struct Fail {
    /// Whether `LISTEN` had succeeded before the failure.
    listening: bool,
    error: String,
}

/// One connection's life: connect, LISTEN, rescan, then wake waiters per notification until the
/// connection ends.
async fn listen_once(pg: &dray_store_postgres::Connector, channel: &str, waiters: &Waiters) -> Result<(), Fail> {
    let fail = |listening: bool| move |e: tokio_postgres::Error| Fail { listening, error: e.to_string() };
    let connect_timeout = pg.pg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(5));
    let (client, mut connection) = match tokio::time::timeout(connect_timeout, pg.connect()).await {
        Ok(result) => result.map_err(fail(false))?,
        Err(_) => return Err(Fail { listening: false, error: format!("no connection within {connect_timeout:?}") }),
    };
    // The connection must be polled for the LISTEN to complete; messages arriving before it
    // completes are notifications for this channel too (none can: we are not listening yet).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<AsyncMessage, tokio_postgres::Error>>();
    let driver = async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(message) => {
                    // An error ends the connection. Stop at the first: over TLS the stream keeps
                    // failing on every later poll (tokio-rustls reports the missing close_notify
                    // again and again), and polling on would spin this task and fill the channel
                    // without bound (regression: a node over TLS grew by gigabytes and stopped
                    // answering after PostgreSQL terminated its sessions).
                    let failed = message.is_err();
                    if tx.send(message).is_err() || failed {
                        return;
                    }
                }
                None => return,
            }
        }
    };
    let driver = tokio::spawn(driver);
    // Abort the driver (closing the socket) whatever way this function ends.
    let _guard = AbortOnDrop(driver);

    // The channel name is `<schema>_jobs`, a validated identifier: safe to splice in.
    let listen = tokio::time::timeout(connect_timeout, client.batch_execute(&format!("LISTEN {channel}"))).await;
    match listen {
        Ok(result) => result.map_err(fail(false))?,
        Err(_) => {
            return Err(Fail { listening: false, error: format!("LISTEN got no answer within {connect_timeout:?}") });
        }
    }
    tracing::info!(channel, "listening for wake-ups");
    // Rescan: whatever was notified while we were not listening is lost.
    waiters.wake_all();
    waiters.due_changed();

    // A peer that vanished without closing the socket sends nothing: probe now and then.
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + PROBE_INTERVAL, PROBE_INTERVAL);
    loop {
        let message = tokio::select! {
            message = rx.recv() => match message {
                Some(message) => message,
                None => break,
            },
            _ = probe.tick() => {
                match tokio::time::timeout(connect_timeout, client.simple_query("")).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(fail(true)(e)),
                    Err(_) => return Err(Fail { listening: true, error: format!("no answer to a probe within {connect_timeout:?}") }),
                }
            }
        };
        match message {
            Ok(AsyncMessage::Notification(n)) => match notification(n.payload()) {
                Wake::Available(queue) => waiters.wake([&queue]),
                // The due-time timer learns the new due time and wakes the waiters then.
                Wake::Due(_) => waiters.due_changed(),
                // Not one of ours (someone else notified the channel): wake everybody and look at
                // the due times again, cheaply correct.
                Wake::Unknown => {
                    waiters.wake_all();
                    waiters.due_changed();
                }
            },
            Ok(AsyncMessage::Notice(notice)) => tracing::debug!(notice = %notice, "notice on the LISTEN connection"),
            Ok(_) => {}
            Err(e) => return Err(fail(true)(e)),
        }
    }
    drop(client);
    Ok(())
}

/// What a notification on the channel says.
#[derive(Debug, PartialEq)]
enum Wake {
    /// `<queue>`: the queue has new available jobs.
    Available(QueueName),
    /// `due <queue>`: the queue has a new scheduled or retrying job.
    Due(QueueName),
    /// Anything else.
    Unknown,
}

fn notification(payload: &str) -> Wake {
    if let Some(name) = payload.strip_prefix(dray_store_postgres::DUE_PREFIX) {
        return QueueName::new(name).map_or(Wake::Unknown, Wake::Due);
    }
    QueueName::new(payload).map_or(Wake::Unknown, Wake::Available)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_available_or_due_queues() {
        let q = |name: &str| QueueName::new(name).unwrap();
        assert_eq!(notification("emails"), Wake::Available(q("emails")));
        assert_eq!(notification("due emails"), Wake::Due(q("emails")));
        assert_eq!(notification("due a:b.c"), Wake::Due(q("a:b.c")));
        assert_eq!(notification("due "), Wake::Unknown);
        assert_eq!(notification("something else"), Wake::Unknown);
    }
}
