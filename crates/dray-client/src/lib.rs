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

mod ack;
mod backoff;
mod client;
mod context;
mod error;
#[cfg(feature = "postgres")]
pub mod outbox;
mod worker;

pub use client::{CONNECT_TIMEOUT_DEFAULT, Client, ClientBuilder, Enqueue, REQUEST_TIMEOUT_DEFAULT};
pub use context::{CancelReason, JobContext};
pub use error::{Error, TransportError};
pub use worker::{
    ACK_BATCH_MAX_DEFAULT, ACK_LINGER_DEFAULT, CONCURRENCY_DEFAULT, CONCURRENCY_MAX, Handler, HandlerFuture,
    HandlerResult, JobError, LEASE_WAIT_DEFAULT, SHUTDOWN_ERROR, SHUTDOWN_GRACE_DEFAULT, Worker, WorkerBuilder,
    WorkerReport,
};

/// The wire types, for the requests and answers of [`Client`].
pub use dray_api as api;
