//! One [`Notify`] per key while anyone waits on that key: the registry under waits for a lock
//! (`locks.rs`, keyed by lock name) and waits for a job to finish (`job_waiters.rs`, keyed by
//! job id). A key's entry is made by its first waiter and removed with its last, so the map is
//! bounded by the waits in progress. This module only signals; its users decide what a wake-up
//! means.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Debug)]
pub(crate) struct NotifyMap<K> {
    keys: Mutex<HashMap<K, Arc<Notify>>>,
}

impl<K> Default for NotifyMap<K> {
    fn default() -> NotifyMap<K> {
        NotifyMap { keys: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone> NotifyMap<K> {
    fn map(&self) -> MutexGuard<'_, HashMap<K, Arc<Notify>>> {
        // The map holds no invariant a panic could break half-way: keep using it.
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a wait on `key` for the life of the returned value.
    pub fn wait(&self, key: &K) -> Waiting<'_, K> {
        let notify = self.map().entry(key.clone()).or_default().clone();
        Waiting { map: self, key: key.clone(), notify: Some(notify) }
    }

    /// Wakes every wait on `key` (armed with [`Waiting::notified`]).
    pub fn wake(&self, key: &K) {
        if let Some(notify) = self.map().get(key) {
            notify.notify_waiters();
        }
    }

    /// Waits on `key` now.
    pub fn count(&self, key: &K) -> u64 {
        // Every `Waiting` holds one reference; the map holds the last.
        self.map().get(key).map_or(0, |n| Arc::strong_count(n) as u64 - 1)
    }

    /// Keys with a wait now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

/// One wait on one key. Dropping it forgets the key when it was the last wait on it.
#[derive(Debug)]
pub(crate) struct Waiting<'m, K: Eq + Hash + Clone> {
    map: &'m NotifyMap<K>,
    key: K,
    /// Always `Some` until dropped (taken then, under the map's lock).
    notify: Option<Arc<Notify>>,
}

impl<K: Eq + Hash + Clone> Waiting<'_, K> {
    /// The next wake-up of this key, already registered: a wake between this call and the
    /// first poll is not lost. Call it before checking what the wait is for; await after.
    pub fn notified(&self) -> Pin<Box<Notified<'_>>> {
        let notify = self.notify.as_deref().expect("a live wait has its Notify");
        let mut notified = Box::pin(notify.notified());
        notified.as_mut().enable();
        notified
    }
}

impl<K: Eq + Hash + Clone> Drop for Waiting<'_, K> {
    fn drop(&mut self) {
        let mut map = self.map.map();
        // Ours goes first, under the map's lock (where every clone is made): two waits ending at
        // once cannot both see the other's reference and leave the entry behind.
        drop(self.notify.take());
        if map.get(&self.key).is_some_and(|n| Arc::strong_count(n) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn is_ready(notified: &mut Pin<Box<Notified<'_>>>) -> bool {
        let waker = std::task::Waker::noop();
        notified.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }

    /// Waits are counted per key while they wait, and a key's entry goes with its last wait,
    /// whatever order they leave in (the map stays bounded by the waits in progress).
    #[test]
    fn waits_are_counted_and_forgotten() {
        let map = NotifyMap::<&str>::default();
        let first = map.wait(&"a");
        let second = map.wait(&"a");
        let other = map.wait(&"b");
        assert_eq!((map.count(&"a"), map.count(&"b"), map.len()), (2, 1, 2));
        drop(first);
        assert_eq!(map.count(&"a"), 1);
        drop(other);
        drop(second);
        assert_eq!((map.count(&"a"), map.len()), (0, 0));
        // Waking a key nobody waits on creates nothing.
        map.wake(&"a");
        assert_eq!(map.len(), 0);
    }

    #[test]
    fn a_wake_between_arming_and_waiting_is_not_lost_and_other_keys_do_not_wake() {
        let map = NotifyMap::<u64>::default();
        let waiting = map.wait(&7);
        let mut notified = waiting.notified();
        map.wake(&8);
        assert!(!is_ready(&mut notified), "another key");
        // Key 7 is woken before the wait is first polled.
        map.wake(&7);
        assert!(is_ready(&mut notified));
    }
}
