//! What the server tells operators about the work going through it: Prometheus metrics (served
//! at `/metrics`) and structured log events, fed by the handlers and by maintenance.
//!
//! STUB: to be filled in (issue #5). The hooks below are called from `routes.rs` and `lib.rs`.

use dray_core::{JobId, LeaseId, QueueName, Timestamp, WorkerId};
use dray_runtime::TickReport;
use dray_store::{Acked, Error, Inserted, LeasedJob};

use crate::app::App;

/// Counts and logs what happens to jobs on this node.
#[derive(Debug, Default)]
pub(crate) struct Observer {}

impl Observer {
    pub fn new() -> Observer {
        Observer {}
    }

    /// Jobs accepted by an enqueue (`queues[i]` is `inserted[i]`'s queue).
    pub fn enqueued(&self, _queues: &[QueueName], _inserted: &[Inserted]) {}

    /// Jobs handed to `worker` at `now`.
    pub fn leased(&self, _now: Timestamp, _worker: &WorkerId, _jobs: &[LeasedJob]) {}

    /// The result of one ack of `job` under `lease`, applied at `now`.
    pub fn acked(&self, _now: Timestamp, _job: JobId, _lease: LeaseId, _result: &Result<Acked, Error>) {}

    /// What a maintenance tick did (expired leases among it).
    pub fn maintained(&self, _report: &TickReport) {}

    /// Dead jobs redriven.
    pub fn redriven(&self, _ids: &[JobId]) {}

    /// Dead jobs discarded.
    pub fn discarded(&self, _ids: &[JobId]) {}

    /// This node's activity per queue since it started, for the dashboard's live view: totals
    /// (the dashboard turns two snapshots into rates) and recent latency quantiles.
    pub fn activity(&self) -> Vec<QueueActivity> {
        Vec::new()
    }
}

/// One queue's activity on this node (see [`Observer::activity`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct QueueActivity {
    pub queue: String,
    pub enqueued: u64,
    pub leased: u64,
    pub completed: u64,
    pub failed: u64,
    pub expired: u64,
    pub dead: u64,
    /// Over the last minute or so; `None` when nothing was measured.
    pub wait_p50_ms: Option<f64>,
    pub wait_p95_ms: Option<f64>,
    pub run_p50_ms: Option<f64>,
    pub run_p95_ms: Option<f64>,
}

/// `/metrics`, and the layer that counts HTTP requests.
pub(crate) fn routes(router: axum::Router<App>, _app: &App) -> axum::Router<App> {
    router
}
