//! Locks at rest: the [`LockStore`] trait, a storage trait of its own beside [`crate::Store`]
//! (locks are not jobs). The rules are `dray_core::lock`'s; a store keeps each lock's holders
//! durably, draws fencing tokens from the machinery its job leases use (so tokens strictly
//! increase per lock name across restarts and, in PostgreSQL mode, across nodes), and decides on
//! its own clock (the database's in PostgreSQL mode) whether a hold has expired.
//!
//! Waiting for a held lock is not the store's business: the server long-polls by retrying.

use std::future::Future;

use dray_core::lock::{Holder, Lock, Refusal};
use dray_core::{FencingToken, Invalid, Limits, LockName, LockOwner, Timestamp};

use crate::Error;

/// Asks for a hold of `name` (see `dray_core::Lock::acquire`).
#[derive(Clone, Debug)]
pub struct LockAcquire {
    pub now: Timestamp,
    pub name: LockName,
    pub owner: LockOwner,
    pub ttl_ms: u64,
    /// The lock's size if it is free; otherwise it must match the size it is held with.
    pub permits: u32,
}

impl LockAcquire {
    pub fn validate(&self) -> Result<(), Invalid> {
        dray_core::lock::ttl_ms_validate(self.ttl_ms)?;
        dray_core::lock::permits_validate(self.permits)
    }
}

/// Extends a live hold.
#[derive(Clone, Debug)]
pub struct LockRenew {
    pub now: Timestamp,
    pub name: LockName,
    pub owner: LockOwner,
    pub token: FencingToken,
    /// `None`: by the hold's last TTL.
    pub ttl_ms: Option<u64>,
}

impl LockRenew {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.ttl_ms.map_or(Ok(()), dray_core::lock::ttl_ms_validate)
    }
}

/// Ends a hold (its owner's release).
#[derive(Clone, Debug)]
pub struct LockRelease {
    pub now: Timestamp,
    pub name: LockName,
    pub owner: LockOwner,
    pub token: FencingToken,
}

/// An operator ends one hold (`token`) or every hold of a lock.
#[derive(Clone, Debug)]
pub struct LockForceRelease {
    pub now: Timestamp,
    pub name: LockName,
    pub token: Option<FencingToken>,
}

/// A page of held locks, by name.
#[derive(Clone, Debug)]
pub struct LockList {
    pub now: Timestamp,
    /// Names after this one.
    pub after: Option<LockName>,
    pub limit: usize,
}

impl LockList {
    pub fn validate(&self) -> Result<(), Invalid> {
        dray_core::limits::check_range("limit", self.limit, 1, Limits::PAGE_LOCKS_MAX, "")
    }
}

/// A granted acquire or renew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockGranted {
    pub holder: Holder,
    /// `false` when the owner already held the lock (same token, new deadline).
    pub new: bool,
    /// The store's clock when it decided, so the caller can report the time left without
    /// comparing its own clock with the store's.
    pub now: Timestamp,
}

impl LockGranted {
    /// Milliseconds of the hold left when the store decided.
    pub fn left_ms(&self) -> u64 {
        self.holder.deadline.ms_since(self.now)
    }
}

/// A lock's live holders as a store read them, with the store's clock then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockState {
    pub lock: Lock,
    pub now: Timestamp,
}

/// Where locks live. Implemented by both stores.
///
/// Every refusal is [`Error::Lock`] (see [`dray_core::lock::Refusal`]) and changes nothing.
/// Writes are durable before they return, as with [`crate::Store`]. Cancel safety: as
/// [`crate::Store`]: a dropped call may or may not have been applied, which is why an acquire
/// retried by the same owner gets the same hold back.
pub trait LockStore: Send + Sync + 'static {
    /// Grants a hold, or refuses with `Held` (every permit taken by other owners) or
    /// `PermitsMismatch`. [`Error::TooManyLocks`] past `Limits::LOCKS_MAX` held locks.
    fn lock_acquire(&self, p: LockAcquire) -> impl Future<Output = Result<LockGranted, Error>> + Send;

    /// Extends a live hold; `Lost` when the token is not this owner's live hold.
    fn lock_renew(&self, p: LockRenew) -> impl Future<Output = Result<LockGranted, Error>> + Send;

    /// Ends a hold: `true` when it was live, `false` when the lock was already free for this
    /// owner (harmless). `Lost` when the token is another owner's or the owner holds a newer one.
    fn lock_release(&self, p: LockRelease) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Ends one or every live hold and returns them (empty when nothing was held).
    fn lock_force_release(&self, p: LockForceRelease) -> impl Future<Output = Result<Vec<Holder>, Error>> + Send;

    /// A lock's live holders, or `None` when nobody holds it.
    fn lock_get(
        &self,
        name: &LockName,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<LockState>, Error>> + Send;

    /// Held locks by name, each with its live holders only.
    fn lock_list(&self, p: LockList) -> impl Future<Output = Result<Vec<LockState>, Error>> + Send;
}

/// The error of a refused lock operation.
pub fn lock_refused(name: &LockName, refusal: Refusal) -> Error {
    Error::Lock { name: name.clone(), refusal }
}
