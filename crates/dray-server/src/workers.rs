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
}
