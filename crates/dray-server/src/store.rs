//! The one store type the server runs on: the embedded store or the PostgreSQL store, chosen by
//! the configuration. [`AnyStore`] implements `dray_store::Store` by delegation, so handlers and
//! maintenance are written once for both.
//!
//! Every call through it is timed into `dray_store_call_seconds{call}` (the call is the `Store`
//! method's name), so the store's share of a request's latency shows the same way for both.

use dray_core::{Job, JobId, QueueName};
use dray_store::{
    Acked, DeadDiscard, DeadRedrive, Error, Expired, Inserted, JobAck, JobCancel, JobInsert, JobLease, JobList,
    JobPage, JobPromote, JobStep, LeaseExtend, LeaseExtended, LeasedJob, Maintain, QueueConfig, QueueConfigure,
    QueueDelete, QueueDeleted, QueueStats, StepRecorded, Store, TokenInsert, TokenRecord, TokenRevoke, TokenStore,
};
use dray_store::{LockAcquire, LockForceRelease, LockGranted, LockList, LockRelease, LockRenew, LockState, LockStore};
use dray_store_embedded::EmbeddedStore;
use dray_store_postgres::PostgresStore;

#[derive(Debug)]
pub(crate) enum AnyStore {
    Embedded(EmbeddedStore),
    Postgres(Box<PostgresStore>),
}

impl AnyStore {
    /// `embedded` or `postgres`, as in the `store` label of `dray_build_info`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Embedded(_) => "embedded",
            AnyStore::Postgres(_) => "postgres",
        }
    }

    /// The embedded store's job data in memory and its budget, in bytes: `(used, budget)`.
    /// `None` in PostgreSQL mode (the database holds the jobs).
    pub fn memory(&self) -> Option<(u64, u64)> {
        match self {
            AnyStore::Embedded(store) => Some((store.bytes_used(), store.memory_budget_bytes())),
            AnyStore::Postgres(_) => None,
        }
    }

    /// The PostgreSQL connection pool's state; `None` for the embedded store, which has none.
    pub fn pool_status(&self) -> Option<dray_store_postgres::PoolStatus> {
        match self {
            AnyStore::Embedded(_) => None,
            AnyStore::Postgres(store) => Some(store.pool_status()),
        }
    }

    /// Whether the store serves, for `/healthz` and `/readyz`. The embedded store knows it
    /// without I/O (`Failed`: stopped until restarted; `Degraded`: a resource ran out and it comes
    /// back by itself). The PostgreSQL store is always `Ok` here: an unreachable database is a
    /// readiness matter, found by a call, and never a reason to restart a node.
    pub fn health(&self) -> dray_store_embedded::Health {
        match self {
            AnyStore::Embedded(store) => store.health(),
            AnyStore::Postgres(_) => dray_store_embedded::Health::Ok,
        }
    }

    /// Closes the store: the embedded store flushes and releases its directory (on a blocking
    /// thread); the PostgreSQL pool closes its connections.
    pub async fn close(self) -> anyhow::Result<()> {
        use anyhow::Context;
        match self {
            AnyStore::Embedded(store) => tokio::task::spawn_blocking(move || store.close())
                .await
                .context("the task closing the store failed")?
                .context("closing the store failed"),
            // Every write was committed before it was answered: nothing to flush. Dropping the
            // pool closes its connections.
            AnyStore::Postgres(store) => {
                drop(store);
                Ok(())
            }
        }
    }
}

/// `match self { Embedded(s) => s.$call, Postgres(s) => s.$call }`, awaited and timed. A call
/// abandoned part-way (its request dropped) records nothing: only calls that returned, errors
/// included, are in the histogram.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {{
        let started = std::time::Instant::now();
        let result = match $self {
            AnyStore::Embedded(s) => s.$method($($arg),*).await,
            AnyStore::Postgres(s) => s.$method($($arg),*).await,
        };
        metrics::histogram!(crate::observe::STORE_CALL_SECONDS, "call" => stringify!($method))
            .record(started.elapsed().as_secs_f64());
        result
    }};
}

impl Store for AnyStore {
    fn payload_check_set(&self, check: std::sync::Arc<dyn dray_store::PayloadCheck>) {
        match self {
            AnyStore::Embedded(s) => s.payload_check_set(check),
            AnyStore::Postgres(s) => s.payload_check_set(check),
        }
    }

    async fn job_insert(&self, p: JobInsert) -> Result<Vec<Inserted>, Error> {
        delegate!(self.job_insert(p))
    }

    async fn job_lease(&self, p: JobLease) -> Result<Vec<LeasedJob>, Error> {
        delegate!(self.job_lease(p))
    }

    async fn lease_extend(&self, p: LeaseExtend) -> Result<LeaseExtended, Error> {
        delegate!(self.lease_extend(p))
    }

    async fn job_ack(&self, p: JobAck) -> Result<Vec<Result<Acked, Error>>, Error> {
        delegate!(self.job_ack(p))
    }

    async fn job_step(&self, p: JobStep) -> Result<StepRecorded, Error> {
        delegate!(self.job_step(p))
    }

    async fn job_cancel(&self, p: JobCancel) -> Result<dray_core::JobState, Error> {
        delegate!(self.job_cancel(p))
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>, Error> {
        delegate!(self.job_get(id))
    }

    async fn job_waiting(&self, id: JobId, now: dray_core::Timestamp) -> Result<Option<dray_store::Waiting>, Error> {
        delegate!(self.job_waiting(id, now))
    }

    async fn job_list(&self, p: JobList) -> Result<JobPage, Error> {
        delegate!(self.job_list(p))
    }

    async fn dead_redrive(&self, p: DeadRedrive) -> Result<dray_store::Redriven, Error> {
        delegate!(self.dead_redrive(p))
    }

    async fn dead_discard(&self, p: DeadDiscard) -> Result<Vec<JobId>, Error> {
        delegate!(self.dead_discard(p))
    }

    async fn leases_expire(&self, p: Maintain) -> Result<Vec<Expired>, Error> {
        delegate!(self.leases_expire(p))
    }

    async fn jobs_promote(&self, p: Maintain) -> Result<usize, Error> {
        delegate!(self.jobs_promote(p))
    }

    async fn jobs_prune(&self, p: Maintain) -> Result<usize, Error> {
        delegate!(self.jobs_prune(p))
    }

    async fn queue_configure(&self, p: QueueConfigure) -> Result<QueueConfig, Error> {
        delegate!(self.queue_configure(p))
    }

    async fn job_promote(&self, p: JobPromote) -> Result<dray_core::JobState, Error> {
        delegate!(self.job_promote(p))
    }

    async fn queue_delete(&self, p: QueueDelete) -> Result<QueueDeleted, Error> {
        delegate!(self.queue_delete(p))
    }

    async fn queue_list(&self) -> Result<Vec<QueueStats>, Error> {
        delegate!(self.queue_list())
    }

    async fn queue_stats(&self, queue: &QueueName) -> Result<QueueStats, Error> {
        delegate!(self.queue_stats(queue))
    }

    async fn breaker_force(&self, p: dray_store::BreakerForce) -> Result<dray_core::Breaker, Error> {
        delegate!(self.breaker_force(p))
    }

    async fn schedule_put(&self, p: dray_store::SchedulePut) -> Result<dray_store::ScheduleSaved, Error> {
        delegate!(self.schedule_put(p))
    }

    async fn schedule_get(&self, name: &dray_core::ScheduleName) -> Result<Option<dray_core::Schedule>, Error> {
        delegate!(self.schedule_get(name))
    }

    async fn schedule_list(&self) -> Result<Vec<dray_core::Schedule>, Error> {
        delegate!(self.schedule_list())
    }

    async fn schedule_delete(&self, p: dray_store::ScheduleDelete) -> Result<(), Error> {
        delegate!(self.schedule_delete(p))
    }

    async fn schedule_pause(&self, p: dray_store::SchedulePause) -> Result<dray_core::Schedule, Error> {
        delegate!(self.schedule_pause(p))
    }

    async fn schedule_trigger(&self, p: dray_store::ScheduleTrigger) -> Result<dray_store::Ticked, Error> {
        delegate!(self.schedule_trigger(p))
    }

    async fn schedules_tick(&self, p: dray_store::SchedulesTick) -> Result<Vec<dray_store::Ticked>, Error> {
        delegate!(self.schedules_tick(p))
    }
}

impl TokenStore for AnyStore {
    async fn token_insert(&self, p: TokenInsert) -> Result<(), Error> {
        delegate!(self.token_insert(p))
    }

    async fn token_get(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        delegate!(self.token_get(id))
    }

    async fn token_list(&self) -> Result<Vec<TokenRecord>, Error> {
        delegate!(self.token_list())
    }

    async fn token_revoke(&self, p: TokenRevoke) -> Result<Option<TokenRecord>, Error> {
        delegate!(self.token_revoke(p))
    }
}

impl LockStore for AnyStore {
    async fn lock_acquire(&self, p: LockAcquire) -> Result<LockGranted, Error> {
        delegate!(self.lock_acquire(p))
    }

    async fn lock_renew(&self, p: LockRenew) -> Result<LockGranted, Error> {
        delegate!(self.lock_renew(p))
    }

    async fn lock_release(&self, p: LockRelease) -> Result<bool, Error> {
        delegate!(self.lock_release(p))
    }

    async fn lock_force_release(&self, p: LockForceRelease) -> Result<Vec<dray_core::lock::Holder>, Error> {
        delegate!(self.lock_force_release(p))
    }

    async fn lock_get(
        &self,
        name: &dray_core::LockName,
        now: dray_core::Timestamp,
    ) -> Result<Option<LockState>, Error> {
        delegate!(self.lock_get(name, now))
    }

    async fn lock_list(&self, p: LockList) -> Result<Vec<LockState>, Error> {
        delegate!(self.lock_list(p))
    }
}
