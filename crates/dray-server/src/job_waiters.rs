//! Waiting for a job to finish (`GET /v1/jobs/{id}?wait_ms=`): this node's requests waiting on
//! each job, and the wake-up when the node learns that the job finished.
//!
//! One `Notify` per job someone waits on, created on demand and removed with its last waiter
//! (`notify_map.rs`, which lock waits use too), plus one for shutdown. The observer wakes a
//! job's waiters when it hears of the job finishing on this node: an ack that completes it or
//! ends it dead or cancelled (HTTP acks, and in PostgreSQL mode the acks applications made in
//! SQL, drained by `sql_acks.rs`), a lease expiry that dead-letters it, a cancel, a schedule tick
//! that cancels its previous job. This module only signals; the handler reads the job.
//!
//! What no handler on this node sees (an ack on another node in PostgreSQL mode, a change the
//! store makes by itself) is found by reading the job again every [`recheck`] interval while
//! waiting, so a waiter answers at most that long after its job finished anywhere.
//!
//! A waiter holds nothing while it waits: no store lock, no connection of the pool (each read is
//! one store call, finished before the wait). A waiter is a request in progress, and requests
//! are bounded by the connection cap (`--connections-max`, one request per HTTP/1.1 connection
//! at a time), so the map is bounded by it too. A request dropped because its client hung up
//! drops its [`Waiting`], which forgets the job when it was the last waiter.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use dray_core::JobId;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::notify_map::NotifyMap;
use crate::store::AnyStore;

/// How often a waiter reads its job again in PostgreSQL mode. Several nodes share the database
/// there, so a job completed through another node (a worker's ack to it, or an SQL ack it drains)
/// is common and announces nothing here: a quarter of a second keeps such answers prompt, and one
/// read by primary key every 250 ms per waiting request is cheap next to the acks it waits for.
const RECHECK_POSTGRES: Duration = Duration::from_millis(250);
/// How often a waiter reads its job again with the embedded store. Every ack, expiry and cancel
/// passes through this one process and wakes the waiter at once; the timer only covers changes
/// the store makes by itself (a cascade inside the store that no handler reports), so a second
/// is enough and keeps idle waiters nearly free.
const RECHECK_EMBEDDED: Duration = Duration::from_secs(1);

/// How often a waiter on `store` reads its job again: the bound on how late it answers after its
/// job finished somewhere this node did not see.
pub(crate) fn recheck(store: &AnyStore) -> Duration {
    match store {
        AnyStore::Postgres(_) => RECHECK_POSTGRES,
        AnyStore::Embedded(_) => RECHECK_EMBEDDED,
    }
}

/// This node's requests waiting for jobs to finish.
#[derive(Debug, Default)]
pub(crate) struct JobWaiters {
    jobs: NotifyMap<JobId>,
    /// Waits in progress (one per [`Waiting`]).
    waiting: AtomicUsize,
    closing: AtomicBool,
    /// Woken once, at shutdown.
    closed: Notify,
}

impl JobWaiters {
    /// Registers a wait for `job` for the life of the returned value.
    pub fn wait(&self, job: JobId) -> Waiting<'_> {
        let wait = self.jobs.wait(&job);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting { waiters: self, wait }
    }

    /// `job` finished: its waiters on this node read it again at once.
    pub fn finished(&self, job: JobId) {
        self.jobs.wake(&job);
    }

    /// Requests waiting for a job to finish on this node now. For tests and metrics.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Shutdown: every waiter answers with its job as it is, and no new one waits.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// One request waiting for one job. Dropping it forgets the job when nobody else waits on it.
#[derive(Debug)]
pub(crate) struct Waiting<'w> {
    waiters: &'w JobWaiters,
    wait: crate::notify_map::Waiting<'w, JobId>,
}

impl Waiting<'_> {
    /// Registers for the next wake-up (the job finished, or shutdown). Call before reading the
    /// job; await after: a wake-up between the read and the wait is not lost.
    pub fn arm(&self) -> Armed<'_> {
        let mut closed = Box::pin(self.waiters.closed.notified());
        closed.as_mut().enable();
        Armed { finished: self.wait.notified(), closed }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves at the next wake-up of an armed wait.
pub(crate) struct Armed<'a> {
    finished: Pin<Box<Notified<'a>>>,
    closed: Pin<Box<Notified<'a>>>,
}

impl Future for Armed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.finished.as_mut().poll(cx).is_ready() || this.closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_ready(armed: &mut Pin<&mut Armed<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        armed.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn a_finish_between_arming_and_waiting_is_not_lost_and_other_jobs_do_not_wake() {
        let w = JobWaiters::default();
        let waiting = w.wait(JobId(7));
        let armed = waiting.arm();
        w.finished(JobId(8));
        let mut armed = std::pin::pin!(armed);
        assert!(!is_ready(&mut armed), "another job finished");
        // Job 7 finishes before the waiter polls again.
        w.finished(JobId(7));
        assert!(is_ready(&mut armed));
    }

    #[test]
    fn waits_are_counted_and_the_map_forgets_jobs_nobody_waits_on() {
        let w = JobWaiters::default();
        let first = w.wait(JobId(1));
        let second = w.wait(JobId(1));
        let other = w.wait(JobId(2));
        assert_eq!((w.waiting(), w.jobs.len()), (3, 2));
        drop(first);
        assert_eq!((w.waiting(), w.jobs.len()), (2, 2), "job 1 is still waited on");
        drop(second);
        drop(other);
        assert_eq!((w.waiting(), w.jobs.len()), (0, 0));
    }

    #[tokio::test]
    async fn close_wakes_every_waiter() {
        let w = JobWaiters::default();
        let waiting = w.wait(JobId(1));
        let armed = waiting.arm();
        w.close();
        armed.await;
        assert!(w.is_closing());
    }
}
