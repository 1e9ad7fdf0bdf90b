//! Which queues have flow limits, as this node last read them, for long-polls.
//!
//! A long-poll sleeps until an enqueue, a promotion or a resume wakes it. On a queue with flow
//! limits a job can also become leasable when a running job stops (a permit comes back) or a rate
//! token comes due, and neither enqueues anything: so an ack or expiry on this node wakes the
//! waiters of a limited queue at once, and a long-poll on a limited queue also looks again every
//! [`RECHECK`] (a permit freed on another node, a token due). Queues without limits keep waiting
//! for notifications only: no polling for them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dray_core::QueueName;
use dray_store::{QueueConfig, Store};

use crate::store::AnyStore;

/// How often a long-poll on a limited queue looks again.
pub(crate) const RECHECK: Duration = Duration::from_millis(100);
/// How long a queue's answer is trusted before it is read again.
const FRESH: Duration = Duration::from_secs(5);
/// Entries kept at most; beyond, the map starts over (it is only a cache).
const ENTRIES_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct LimitedQueues {
    map: Mutex<HashMap<QueueName, (Instant, bool)>>,
}

fn limited(config: &QueueConfig) -> bool {
    !config.limits.is_unlimited()
}

impl LimitedQueues {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<QueueName, (Instant, bool)>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a configuration this node just wrote or read.
    pub fn learned(&self, config: &QueueConfig) {
        let mut map = self.map();
        if map.len() >= ENTRIES_MAX {
            map.clear();
        }
        map.insert(config.name.clone(), (Instant::now(), limited(config)));
    }

    /// Whether `queue` was limited when last read, without reading it again.
    pub fn known(&self, queue: &QueueName) -> bool {
        self.map().get(queue).is_some_and(|(_, limited)| *limited)
    }

    /// Whether any of `queues` has flow limits, reading the ones not read lately.
    pub async fn any(&self, store: &AnyStore, queues: &[QueueName]) -> bool {
        let mut any = false;
        for queue in queues {
            let cached = self.map().get(queue).copied().filter(|(at, _)| at.elapsed() < FRESH);
            let is = match cached {
                Some((_, is)) => is,
                None => match store.queue_stats(queue).await {
                    Ok(stats) => {
                        self.learned(&stats.config);
                        limited(&stats.config)
                    }
                    // An unknown queue has no limits; a failing store is the lease's to report.
                    Err(_) => false,
                },
            };
            any |= is;
        }
        any
    }
}
