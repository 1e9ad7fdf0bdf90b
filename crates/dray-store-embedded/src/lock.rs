//! `LockStore` for the embedded store: locks live in the state beside the jobs, each change
//! logged as the lock's whole new state (`LockUpsert`) or its end (`LockDelete`, once nobody
//! holds it), and copied into every snapshot. Tokens come from the jobs' `epoch << 40 | counter`
//! machinery, so they strictly increase across restarts too. A hold whose deadline has come is
//! simply not live: nothing is logged when a TTL passes; the next change of the lock drops it.

use dray_core::lock::{Holder, Lock};
use dray_core::{Limits, LockName, Timestamp};
use dray_store::{
    Error, LockAcquire, LockForceRelease, LockGranted, LockList, LockRelease, LockRenew, LockState, LockStore,
    lock_refused,
};

use crate::codec;
use crate::state::State;
use crate::store::{Changes, EmbeddedStore, token_next};

/// Stores `lock` as it is now: logged whole, or forgotten (and its end logged) when free.
fn save(state: &mut State, changes: &mut Changes, lock: Lock, now: Timestamp) {
    if lock.is_free(now) {
        if state.locks.remove(&lock.name).is_some() {
            changes.push(|buf| codec::encode_lock_delete(buf, &lock.name));
        }
    } else {
        changes.push(|buf| codec::encode_lock_upsert(buf, &lock));
        state.locks.insert(lock.name.clone(), lock);
    }
}

/// The lock's live state at `now`, as a copy to change.
fn current(state: &State, name: &LockName, now: Timestamp) -> Option<Lock> {
    let mut lock = state.locks.get(name)?.clone();
    lock.expire(now);
    Some(lock)
}

fn live_state(lock: &Lock, now: Timestamp) -> Option<LockState> {
    let mut lock = lock.clone();
    lock.expire(now);
    (!lock.holders.is_empty()).then_some(LockState { lock, now })
}

impl LockStore for EmbeddedStore {
    async fn lock_acquire(&self, p: LockAcquire) -> Result<LockGranted, Error> {
        p.validate()?;
        self.write(true, |state, changes| {
            let mut lock = match current(state, &p.name, p.now) {
                Some(lock) => lock,
                None => {
                    if state.locks.len() >= Limits::LOCKS_MAX {
                        // Locks whose holds all expired still count until swept: sweep first.
                        let free: Vec<LockName> =
                            state.locks.values().filter(|l| l.is_free(p.now)).map(|l| l.name.clone()).collect();
                        if free.is_empty() {
                            return Err(Error::TooManyLocks);
                        }
                        for name in free {
                            state.locks.remove(&name);
                            changes.push(|buf| codec::encode_lock_delete(buf, &name));
                        }
                    }
                    Lock::new(p.name.clone(), p.permits)
                }
            };
            let mut token = None;
            let granted = lock.acquire(&p.owner, p.ttl_ms, p.permits, p.now, || {
                *token.insert(token_next(state, changes).expect("a fencing token is always available"))
            });
            // A refusal comes only for a lock held by others, never after a sweep (a lock found
            // free grants), so a refused call has logged nothing.
            let granted = granted.map_err(|refusal| lock_refused(&p.name, refusal))?;
            save(state, changes, lock, p.now);
            Ok(LockGranted { holder: granted.holder, new: granted.new, now: p.now })
        })
        .await
    }

    async fn lock_renew(&self, p: LockRenew) -> Result<LockGranted, Error> {
        p.validate()?;
        self.write(true, |state, changes| {
            let mut lock = current(state, &p.name, p.now).unwrap_or_else(|| Lock::new(p.name.clone(), 1));
            let granted =
                lock.renew(&p.owner, p.token, p.ttl_ms, p.now).map_err(|refusal| lock_refused(&p.name, refusal))?;
            save(state, changes, lock, p.now);
            Ok(LockGranted { holder: granted.holder, new: false, now: p.now })
        })
        .await
    }

    async fn lock_release(&self, p: LockRelease) -> Result<bool, Error> {
        self.write(true, |state, changes| {
            let Some(mut lock) = current(state, &p.name, p.now) else { return Ok(false) };
            let released = lock.release(&p.owner, p.token, p.now).map_err(|refusal| lock_refused(&p.name, refusal))?;
            if released {
                save(state, changes, lock, p.now);
            }
            Ok(released)
        })
        .await
    }

    async fn lock_force_release(&self, p: LockForceRelease) -> Result<Vec<Holder>, Error> {
        self.write(true, |state, changes| {
            let Some(mut lock) = current(state, &p.name, p.now) else { return Ok(Vec::new()) };
            let gone = lock.force_release(p.token, p.now);
            if !gone.is_empty() {
                save(state, changes, lock, p.now);
            }
            Ok(gone)
        })
        .await
    }

    async fn lock_get(&self, name: &LockName, now: Timestamp) -> Result<Option<LockState>, Error> {
        self.read(|state| Ok(state.locks.get(name).and_then(|l| live_state(l, now)))).await
    }

    async fn lock_list(&self, p: LockList) -> Result<Vec<LockState>, Error> {
        p.validate()?;
        self.read(|state| {
            use std::ops::Bound;
            let from = p.after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            Ok(state
                .locks
                .range((from, Bound::Unbounded))
                .filter_map(|(_, l)| live_state(l, p.now))
                .take(p.limit)
                .collect())
        })
        .await
    }
}
