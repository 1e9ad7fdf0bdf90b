//! Wake-ups for long-polling lease requests: an idle waiter costs no polling, and an enqueue
//! into a queue wakes the waiters on that queue at once.
//!
//! One [`Notify`] per queue that someone is waiting on (created on demand, removed when its last
//! waiter leaves, so the map is bounded by the waiters), plus one for everybody (maintenance
//! promoted or expired jobs, a redrive, shutdown). This module only signals; it never leases.
//!
//! A waiter arms itself *before* it tries to lease and waits *after*: a [`Notified`] future
//! receives every `notify_waiters` from the moment it is created, so an enqueue that lands
//! between the failed attempt and the wait is not lost.
//!
//! In PostgreSQL mode the node also wakes waiters when a delayed or retrying job of their queues
//! falls due (`due.rs`): it learns which queues are waited on from [`Waiters::queues`], and is
//! asked to look again ([`Waiters::rescan_requested`]) when a queue gets its first waiter or a
//! notification says a queue has a new waiting job ([`Waiters::due_changed`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use dray_core::QueueName;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Debug, Default)]
pub(crate) struct Waiters {
    queues: Mutex<HashMap<QueueName, Arc<Notify>>>,
    /// Woken for everybody: maintenance made jobs due, a redrive, shutdown.
    everyone: Notify,
    closing: AtomicBool,
    /// Long-polls currently waiting (after an empty attempt).
    waiting: AtomicUsize,
    /// The waited-on queues or their due times may have changed: the due-time timer looks again.
    /// `notify_one` keeps a permit, so a change while the timer is busy is not lost.
    rescan: Notify,
}

impl Waiters {
    fn map(&self) -> MutexGuard<'_, HashMap<QueueName, Arc<Notify>>> {
        // The map holds no invariant a panic could break half-way: keep using it.
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Declares interest in `queues` for the life of the returned value.
    pub fn interest(&self, queues: &[QueueName]) -> Interest<'_> {
        let mut map = self.map();
        let mut notifies: Vec<(QueueName, Arc<Notify>)> = Vec::with_capacity(queues.len());
        for q in queues {
            if notifies.iter().any(|(name, _)| name == q) {
                continue;
            }
            let notify = match map.get(q) {
                Some(notify) => notify.clone(),
                None => {
                    // A queue nobody waited on: the due-time timer does not know its due times.
                    self.rescan.notify_one();
                    map.entry(q.clone()).or_default().clone()
                }
            };
            notifies.push((q.clone(), notify));
        }
        Interest { waiters: self, notifies }
    }

    /// The queues someone is waiting on now (in no particular order).
    pub fn queues(&self) -> Vec<QueueName> {
        self.map().keys().cloned().collect()
    }

    /// A queue may have a new delayed or retrying job, or notifications may have been lost:
    /// the due-time timer should look at the due times again.
    pub fn due_changed(&self) {
        self.rescan.notify_one();
    }

    /// Resolves once [`Self::due_changed`] was called or a queue got its first waiter since the
    /// last time it resolved.
    pub async fn rescan_requested(&self) {
        self.rescan.notified().await;
    }

    /// Wakes every waiter on any of `queues`.
    pub fn wake<'q>(&self, queues: impl IntoIterator<Item = &'q QueueName>) {
        let map = self.map();
        for q in queues {
            if let Some(notify) = map.get(q) {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every waiter: they each try to lease again.
    pub fn wake_all(&self) {
        self.everyone.notify_waiters();
    }

    /// Shutdown: every waiter returns what it has, and no new one waits.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// A waiter's interest in some queues. Dropping it forgets queues nobody else waits on.
#[derive(Debug)]
pub(crate) struct Interest<'w> {
    waiters: &'w Waiters,
    notifies: Vec<(QueueName, Arc<Notify>)>,
}

impl Interest<'_> {
    /// Registers for the next wake-up. Call before trying to lease; await after.
    pub fn arm(&self) -> Armed<'_> {
        let mut notified: Vec<Pin<Box<Notified<'_>>>> =
            self.notifies.iter().map(|(_, n)| Box::pin(n.notified())).collect();
        notified.push(Box::pin(self.waiters.everyone.notified()));
        Armed { notified, _waiting: None, waiters: self.waiters }
    }
}

impl Drop for Interest<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map();
        for (name, notify) in self.notifies.drain(..) {
            // Clones are only made under this lock: two references (the map's and ours) mean
            // nobody else is waiting on the queue.
            if Arc::strong_count(&notify) == 2 {
                map.remove(&name);
            }
        }
    }
}

/// Resolves at the next wake-up for the armed interest. Counts as waiting while polled.
pub(crate) struct Armed<'a> {
    notified: Vec<Pin<Box<Notified<'a>>>>,
    waiters: &'a Waiters,
    _waiting: Option<WaitingGuard<'a>>,
}

impl Future for Armed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this._waiting.is_none() {
            this.waiters.waiting.fetch_add(1, Ordering::SeqCst);
            this._waiting = Some(WaitingGuard(this.waiters));
        }
        for n in &mut this.notified {
            if n.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

struct WaitingGuard<'a>(&'a Waiters);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    fn is_ready(armed: &mut Pin<&mut Armed<'_>>) -> bool {
        let waker = std::task::Waker::noop();
        armed.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn a_wake_between_arming_and_waiting_is_not_lost() {
        let w = Waiters::default();
        let interest = w.interest(&[q("a"), q("b"), q("a")]);
        let armed = interest.arm();
        // The enqueue lands before the waiter ever polls.
        w.wake([&q("b")]);
        let mut armed = std::pin::pin!(armed);
        assert!(is_ready(&mut armed));
    }

    #[test]
    fn other_queues_do_not_wake_and_everyone_does() {
        let w = Waiters::default();
        let interest = w.interest(&[q("a")]);
        let mut armed = std::pin::pin!(interest.arm());
        w.wake([&q("other")]);
        assert!(!is_ready(&mut armed));
        assert_eq!(w.waiting(), 1);
        w.wake_all();
        assert!(is_ready(&mut armed));
    }

    #[test]
    fn the_map_forgets_queues_nobody_waits_on() {
        let w = Waiters::default();
        let first = w.interest(&[q("a"), q("b")]);
        let second = w.interest(&[q("a")]);
        drop(first);
        assert_eq!(w.map().len(), 1, "a is still wanted");
        drop(second);
        assert!(w.map().is_empty());
    }

    #[test]
    fn a_queue_s_first_waiter_asks_for_a_rescan_and_later_ones_do_not() {
        let w = Waiters::default();
        let first = w.interest(&[q("a")]);
        let mut rescan = std::pin::pin!(w.rescan_requested());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(rescan.as_mut().poll(&mut cx).is_ready(), "a new queue asks for a rescan");
        let _second = w.interest(&[q("a")]);
        let mut rescan = std::pin::pin!(w.rescan_requested());
        assert!(rescan.as_mut().poll(&mut cx).is_pending(), "a known queue does not");
        w.due_changed();
        assert!(rescan.as_mut().poll(&mut cx).is_ready());
        let mut queues = w.queues();
        queues.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(queues, [q("a")]);
        drop(first);
    }

    #[tokio::test]
    async fn close_wakes_and_is_seen_after_arming() {
        let w = Waiters::default();
        let interest = w.interest(&[q("a")]);
        let armed = interest.arm();
        w.close();
        armed.await;
        assert!(w.is_closing());
        assert_eq!(w.waiting(), 0);
    }
}
