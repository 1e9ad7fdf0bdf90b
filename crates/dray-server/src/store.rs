//! The one store type the server runs on: the embedded store or the PostgreSQL store, chosen by
//! the configuration. [`AnyStore`] implements `dray_store::Store` by delegation, so handlers and
//! maintenance are written once for both.

use dray_core::{Job, JobId, QueueName};
use dray_store::{
    Acked, DeadDiscard, DeadRedrive, Error, Expired, Inserted, JobAck, JobCancel, JobInsert, JobLease, JobList,
    JobPage, LeaseExtend, LeaseExtended, LeasedJob, Maintain, QueueConfig, QueueConfigure, QueueStats, Store,
};
use dray_store_embedded::EmbeddedStore;
use dray_store_postgres::PostgresStore;

#[derive(Debug)]
pub(crate) enum AnyStore {
    Embedded(EmbeddedStore),
    Postgres(Box<PostgresStore>),
}

impl AnyStore {
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

/// `match self { Embedded(s) => s.$call, Postgres(s) => s.$call }`, awaited.
macro_rules! delegate {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Embedded(s) => s.$method($($arg),*).await,
            AnyStore::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store for AnyStore {
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

    async fn job_cancel(&self, p: JobCancel) -> Result<dray_core::JobState, Error> {
        delegate!(self.job_cancel(p))
    }

    async fn job_get(&self, id: JobId) -> Result<Option<Job>, Error> {
        delegate!(self.job_get(id))
    }

    async fn job_list(&self, p: JobList) -> Result<JobPage, Error> {
        delegate!(self.job_list(p))
    }

    async fn dead_redrive(&self, p: DeadRedrive) -> Result<Vec<JobId>, Error> {
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

    async fn queue_list(&self) -> Result<Vec<QueueStats>, Error> {
        delegate!(self.queue_list())
    }

    async fn queue_stats(&self, queue: &QueueName) -> Result<QueueStats, Error> {
        delegate!(self.queue_stats(queue))
    }
}
