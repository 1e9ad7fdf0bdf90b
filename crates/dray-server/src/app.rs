//! What every handler shares: the store, the clock, the long-poll waiters and the request limits.

use std::ops::Deref;
use std::sync::Arc;

use crate::store::AnyStore;
use dray_runtime::SystemClock;

use crate::observe::Observer;
use crate::waiters::Waiters;
use crate::workers::Workers;

/// Cheap to clone: handlers get one each.
#[derive(Clone, Debug)]
pub(crate) struct App(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<AnyStore>,
    /// The server's one clock: every `now` passed to the store comes from it.
    pub clock: SystemClock,
    pub waiters: Arc<Waiters>,
    /// Requests waiting for jobs to finish (`GET /v1/jobs/{id}?wait_ms=`).
    pub job_waiters: Arc<crate::job_waiters::JobWaiters>,
    /// Which queues have flow limits, for long-polls (`limited.rs`).
    pub limited: crate::limited::LimitedQueues,
    /// Acquires waiting for held locks on this node.
    pub lock_waiters: crate::locks::LockWaiters,
    /// Metrics and log events about jobs.
    pub observe: Arc<Observer>,
    /// The workers polling this node.
    pub workers: Arc<Workers>,
    pub body_bytes_max: usize,
    pub lease_wait_ms_max: u64,
    /// The browser defences' configuration (Host and Origin allow-lists).
    pub guard: Arc<crate::guard::Guard>,
    /// Authentication: the mode, the bootstrap admin token's hash, the token cache.
    pub auth: Arc<crate::auth::Auth>,
    /// Whether the dashboard's session cookie gets `Secure` (served over TLS).
    pub cookie_secure: bool,
}

impl App {
    pub fn new(shared: Shared) -> App {
        App(Arc::new(shared))
    }

    pub fn body_bytes_max(&self) -> usize {
        self.0.body_bytes_max
    }
}

impl Deref for App {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
