//! Dray's Rust SDK: a [`Client`] for producers and operators (one typed method per route of the
//! `/v1` HTTP API) and a [`Worker`] runtime that leases jobs, runs them with your handlers,
//! heartbeats, checkpoints, batches acks and shuts down gracefully.
//!
//! It speaks the wire types of `dray-api` (re-exported as [`api`]) and nothing else: a worker never
//! compiles a database driver or the server's engine, and this crate never touches storage.
//!
//! Delivery is at least once. A handler may run more than once for the same job (after a lease
//! expiry, or when an ack's answer was lost), so make it idempotent; [`JobContext::id`] and
//! [`JobContext::fencing_token`] help. A [`Error::Transport`] (or a 5xx) means the outcome is
//! unknown: retry with the same idempotency key.
//!
//! # Waiting for results
//!
//! A producer that needs a job's outcome waits for it: [`Client::enqueue_and_wait`] enqueues and
//! returns the job once it is finished (completed, dead or cancelled), and [`Client::job_wait`]
//! does the waiting for a job enqueued earlier. Read the outcome from `state`, the typed result
//! with [`api::Job::result_as`], a failure from `last_error`. Past the timeout the error is
//! [`Error::WaitTimeout`], which carries the job as it was then; the job itself goes on.
//!
//! ```no_run
//! # async fn f(client: dray_client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dray_client::Enqueue;
//! let job = Enqueue::new("reports", &serde_json::json!({"month": "2026-10"}))?
//!     .idempotency_key("report-2026-10");
//! let done = client.enqueue_and_wait(job, Duration::from_secs(300)).await?;
//! let url: Option<String> = done.result_as()?;
//! # Ok(()) }
//! ```
//!
//! Waiting costs the server one request at a time per waiter (a long-poll of up to a minute,
//! repeated) and no polling load: the node wakes the request when it learns the job finished,
//! and re-reads the job every 250 ms in PostgreSQL mode for finishes on other nodes.
//!
//! # Trace context
//!
//! A job can carry its producer's W3C `traceparent` ([`Enqueue::traceparent`]). Each attempt runs
//! its handler in a `job` span (fields `job_id`, `queue`, `attempt`, `lease_id`, and `trace_id`
//! and `traceparent` when the job has one; `outcome` and `error` when it ends), and the handler
//! reads the raw value with [`JobContext::traceparent`].
//!
//! The `otel` feature (off by default) joins this to OpenTelemetry through
//! `tracing-opentelemetry`: [`Client::enqueue`] fills a missing traceparent from the current
//! span's context, and each attempt's span gets the producer's span as its parent, so producer
//! and attempts form one trace, every attempt's status `Ok` or `Error` with the failure's
//! message. A job without a traceparent starts a new trace. Install the OpenTelemetry layer and
//! exporter in your application as usual; this crate exports nothing.

mod ack;
mod backoff;
mod client;
mod context;
mod error;
#[cfg(any(feature = "postgres", feature = "sqlx"))]
pub mod outbox;
#[cfg(feature = "tls")]
mod tls;
mod trace;
mod worker;

pub use client::{CONNECT_TIMEOUT_DEFAULT, Client, ClientBuilder, Enqueue, JOB_WAIT_STEP_MAX, REQUEST_TIMEOUT_DEFAULT};
pub use context::{CancelReason, JobContext};
pub use error::{Error, TransportError};
pub use worker::{
    ACK_BATCH_MAX_DEFAULT, ACK_LINGER_DEFAULT, CONCURRENCY_DEFAULT, CONCURRENCY_MAX, Handler, HandlerFuture,
    HandlerResult, JobError, LEASE_WAIT_DEFAULT, SHUTDOWN_ERROR, SHUTDOWN_GRACE_DEFAULT, Worker, WorkerBuilder,
    WorkerReport,
};

/// The wire types, for the requests and answers of [`Client`].
pub use dray_api as api;
