//! Who is working: the workers that poll this node, on which queues, and the leases handed to
//! them. Node-local and bounded; it feeds `/v1/workers`, the dashboard and the metrics.
//!
//! STUB: to be filled in (issue #5).

use dray_core::{QueueName, WorkerId};
use dray_store::LeasedJob;

#[derive(Debug, Default)]
pub(crate) struct Workers {}

/// Held while a lease request is in progress (long-polls included).
#[derive(Debug)]
pub(crate) struct Polling;

impl Workers {
    /// `worker` is asking for jobs from `queues` until the returned guard drops.
    pub fn poll(&self, _worker: &WorkerId, _queues: &[QueueName]) -> Polling {
        Polling
    }

    /// `worker` was handed `jobs`.
    pub fn leased(&self, _worker: &WorkerId, _jobs: &[LeasedJob]) {}

    /// Per queue that a worker asked this node for: lease requests in progress and when the last
    /// one was made (for `/metrics`).
    pub fn by_queue(&self) -> Vec<QueuePolling> {
        Vec::new()
    }
}

/// Polling of one queue on this node.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct QueuePolling {
    pub queue: QueueName,
    /// Lease requests (long-polls included) in progress now.
    pub polling: usize,
    /// Unix time, in seconds, of the latest lease request (now while one is in progress).
    pub last_poll_unix_s: f64,
}
