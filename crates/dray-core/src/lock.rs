//! Locks with fencing tokens: the rules, as pure functions over one lock's state.
//!
//! A lock is a named set of at most `permits` holders (1: a mutex; more: a semaphore). Each
//! holder is an owner (a string the client chooses) holding a fencing token until a deadline on
//! the store's clock. A hold whose deadline has come is gone: the lock is free again without
//! anyone releasing it. Tokens come from the caller (the store's job fencing machinery), so they
//! strictly increase per lock name across restarts and nodes; this module only checks that every
//! new hold's token is above every token the lock holds.
//!
//! A lock does not by itself make writes exclusive: a holder paused past its deadline still
//! believes it holds the lock. The protected resource must refuse tokens older than the newest
//! it has seen (PostgreSQL mode ships `<schema>.fence(resource, token)` for that; see
//! `docs/locks.md`).
//!
//! Both stores apply these functions (the embedded store in memory, the PostgreSQL store to the
//! rows it holds locked), so they answer alike. Nothing here reads a clock: `now` is a parameter.

use std::fmt;
use std::sync::Arc;

use crate::ids::validate_name;
use crate::{FencingToken, Invalid, Limits, Timestamp, limits::check_range};

/// A lock's name: like a queue's, ASCII letters, digits and `_ - . :`, so it is safe in a URL path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockName(Arc<str>);

impl LockName {
    pub fn new(name: &str) -> Result<LockName, Invalid> {
        validate_name("name", name, Limits::LOCK_NAME_BYTES_MAX)?;
        Ok(LockName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds (or asks for) a lock: any text without control characters, chosen by the client
/// (a host and process id, a worker id). Two clients that share an owner share their holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockOwner(Arc<str>);

impl LockOwner {
    pub fn new(owner: &str) -> Result<LockOwner, Invalid> {
        if owner.is_empty() {
            return Err(Invalid::new("owner", "must not be empty"));
        }
        if owner.len() > Limits::LOCK_OWNER_BYTES_MAX {
            return Err(Invalid::new(
                "owner",
                format!("is {} bytes; the limit is {}", owner.len(), Limits::LOCK_OWNER_BYTES_MAX),
            ));
        }
        if let Some(c) = owner.chars().find(|c| c.is_control()) {
            return Err(Invalid::new("owner", format!("contains the control character {c:?}")));
        }
        Ok(LockOwner(Arc::from(owner)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a TTL against [`Limits::LOCK_TTL_MS_MIN`]..=[`Limits::LOCK_TTL_MS_MAX`].
pub fn ttl_ms_validate(ttl_ms: u64) -> Result<(), Invalid> {
    check_range("ttl_ms", ttl_ms, Limits::LOCK_TTL_MS_MIN, Limits::LOCK_TTL_MS_MAX, " ms")
}

/// Checks a semaphore size against 1..=[`Limits::LOCK_PERMITS_MAX`].
pub fn permits_validate(permits: u32) -> Result<(), Invalid> {
    check_range("permits", permits, 1, Limits::LOCK_PERMITS_MAX, "")
}

/// One hold of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: LockOwner,
    pub token: FencingToken,
    pub acquired_at: Timestamp,
    /// The hold ends at this instant (on the store's clock) unless renewed.
    pub deadline: Timestamp,
    /// The TTL of the last acquire or renew: what a renew without a TTL extends by.
    pub ttl_ms: u64,
}

impl Holder {
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.deadline
    }
}

/// A lock's state: its size and its holders, by token (oldest hold first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub name: LockName,
    /// How many may hold it at once; set by the acquire that finds it free.
    pub permits: u32,
    pub holders: Vec<Holder>,
}

/// Why a lock operation was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every permit is taken by other owners (`lock-held`). `holders` are the live holds.
    Held { permits: u32, holders: Vec<Holder> },
    /// The lock is held with another number of permits (`lock-permits-mismatch`).
    PermitsMismatch { permits: u32, asked: u32 },
    /// The token is not a live hold of this owner: it expired, was released, belongs to another
    /// owner, or never was (`lock-lost`).
    Lost { token: FencingToken, why: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Held { permits, holders } => {
                write!(f, "held by ")?;
                for (i, h) in holders.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "owner {:?} (fencing token {}, until {})", h.owner.as_str(), h.token.0, h.deadline)?;
                }
                write!(f, "; {} of {permits} permits taken", holders.len())
            }
            Refusal::PermitsMismatch { permits, asked } => {
                write!(
                    f,
                    "is held with permits {permits}, not {asked}; ask with the same permits or wait until it is free"
                )
            }
            Refusal::Lost { token, why } => write!(f, "fencing token {}: {why}", token.0),
        }
    }
}

/// A granted acquire or renew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    pub holder: Holder,
    /// `false` when the owner already held the lock and got its hold back (same token, new
    /// deadline).
    pub new: bool,
}

impl Lock {
    /// A lock nobody holds.
    pub fn new(name: LockName, permits: u32) -> Lock {
        Lock { name, permits, holders: Vec::new() }
    }

    /// Drops the holds whose deadline has come and returns them.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Holder> {
        let (live, gone) = std::mem::take(&mut self.holders).into_iter().partition(|h| h.is_live(now));
        self.holders = live;
        gone
    }

    /// The live holds at `now`.
    pub fn live(&self, now: Timestamp) -> impl Iterator<Item = &Holder> {
        self.holders.iter().filter(move |h| h.is_live(now))
    }

    /// Whether nobody holds it at `now`: a store may forget the lock.
    pub fn is_free(&self, now: Timestamp) -> bool {
        self.live(now).next().is_none()
    }

    /// Grants a hold to `owner` for `ttl_ms`. An owner that holds the lock already gets its hold
    /// back with the same token and a new deadline (an acquire retried after a lost reply must
    /// not take a second permit); otherwise it gets a fresh token from `token`, called only then
    /// (after every check), which must be above every token the lock holds. A lock found free
    /// takes `permits` as its size.
    pub fn acquire(
        &mut self,
        owner: &LockOwner,
        ttl_ms: u64,
        permits: u32,
        now: Timestamp,
        token: impl FnOnce() -> FencingToken,
    ) -> Result<Granted, Refusal> {
        self.expire(now);
        if let Some(h) = self.holders.iter_mut().find(|h| &h.owner == owner) {
            h.deadline = now.add_ms(ttl_ms);
            h.ttl_ms = ttl_ms;
            return Ok(Granted { holder: h.clone(), new: false });
        }
        if self.holders.is_empty() {
            self.permits = permits;
        } else if self.permits != permits {
            return Err(Refusal::PermitsMismatch { permits: self.permits, asked: permits });
        }
        if self.holders.len() >= self.permits as usize {
            return Err(Refusal::Held { permits: self.permits, holders: self.holders.clone() });
        }
        let token = token();
        assert!(
            self.holders.iter().all(|h| h.token < token),
            "lock {}: a new hold's token {} is not above the tokens held",
            self.name,
            token.0
        );
        let holder = Holder { owner: owner.clone(), token, acquired_at: now, deadline: now.add_ms(ttl_ms), ttl_ms };
        self.holders.push(holder.clone());
        Ok(Granted { holder, new: true })
    }

    /// Extends `owner`'s live hold with `token` by `ttl_ms` from `now` (by its last TTL when
    /// `None`).
    pub fn renew(
        &mut self,
        owner: &LockOwner,
        token: FencingToken,
        ttl_ms: Option<u64>,
        now: Timestamp,
    ) -> Result<Granted, Refusal> {
        self.expire(now);
        let h = self.holder_mut(owner, token)?;
        let ttl_ms = ttl_ms.unwrap_or(h.ttl_ms);
        h.deadline = now.add_ms(ttl_ms);
        h.ttl_ms = ttl_ms;
        Ok(Granted { holder: h.clone(), new: false })
    }

    /// Ends `owner`'s hold with `token`. `Ok(true)`: it was live and is gone. `Ok(false)`: no
    /// live hold has that token and the owner holds nothing else, so the lock is already free for
    /// this owner (a release retried after a lost reply, or after the TTL passed): harmless.
    /// Refused when the token is another owner's, or when the owner holds the lock with another
    /// (newer) token: a stale release must never end a newer hold.
    pub fn release(&mut self, owner: &LockOwner, token: FencingToken, now: Timestamp) -> Result<bool, Refusal> {
        self.expire(now);
        let concerned = self.holders.iter().any(|h| h.token == token || &h.owner == owner);
        match self.holder_mut(owner, token) {
            Ok(_) => {
                self.holders.retain(|h| h.token != token);
                Ok(true)
            }
            Err(refusal) if concerned => Err(refusal),
            Err(_) => Ok(false),
        }
    }

    /// An operator's release: ends the hold with `token`, or every hold when `None`. Returns the
    /// live holds it ended.
    pub fn force_release(&mut self, token: Option<FencingToken>, now: Timestamp) -> Vec<Holder> {
        self.expire(now);
        let (gone, kept) =
            std::mem::take(&mut self.holders).into_iter().partition(|h| token.is_none_or(|t| h.token == t));
        self.holders = kept;
        gone
    }

    fn holder_mut(&mut self, owner: &LockOwner, token: FencingToken) -> Result<&mut Holder, Refusal> {
        let mine = self.holders.iter().find(|h| &h.owner == owner).map(|h| h.token);
        match self.holders.iter_mut().find(|h| h.token == token) {
            Some(h) if &h.owner == owner => Ok(h),
            Some(h) => Err(Refusal::Lost {
                token,
                why: format!("is held by owner {:?}, not {:?}", h.owner.as_str(), owner.as_str()),
            }),
            None => Err(Refusal::Lost {
                token,
                why: match mine {
                    Some(newer) => {
                        format!("is not held; owner {:?} holds the lock with token {}", owner.as_str(), newer.0)
                    }
                    None => "is not held: it expired, was released, or was never granted".into(),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> LockOwner {
        LockOwner::new(s).unwrap()
    }

    fn lock() -> Lock {
        Lock::new(LockName::new("l").unwrap(), 1)
    }

    const T: Timestamp = Timestamp(1_000);

    #[test]
    fn names_and_owners_are_checked() {
        assert_eq!(LockName::new("").unwrap_err().field, "name");
        assert_eq!(LockName::new("a/b").unwrap_err().field, "name");
        assert!(LockName::new(&"x".repeat(Limits::LOCK_NAME_BYTES_MAX)).is_ok());
        assert!(LockName::new(&"x".repeat(Limits::LOCK_NAME_BYTES_MAX + 1)).is_err());
        assert!(LockOwner::new("host-1 pid 42 ü").is_ok());
        assert_eq!(LockOwner::new("a\nb").unwrap_err().field, "owner");
        assert_eq!(LockOwner::new(&"o".repeat(Limits::LOCK_OWNER_BYTES_MAX + 1)).unwrap_err().field, "owner");
        assert_eq!(ttl_ms_validate(Limits::LOCK_TTL_MS_MAX + 1).unwrap_err().field, "ttl_ms");
        assert_eq!(ttl_ms_validate(Limits::LOCK_TTL_MS_MIN - 1).unwrap_err().field, "ttl_ms");
        assert_eq!(permits_validate(0).unwrap_err().field, "permits");
        assert_eq!(permits_validate(Limits::LOCK_PERMITS_MAX + 1).unwrap_err().field, "permits");
    }

    #[test]
    fn mutex_grants_one_and_frees_at_the_deadline() {
        let mut l = lock();
        let a = l.acquire(&owner("a"), 500, 1, T, || FencingToken(10)).unwrap();
        assert!(a.new);
        assert_eq!(a.holder.deadline, Timestamp(1_500));
        match l.acquire(&owner("b"), 500, 1, Timestamp(1_499), || FencingToken(11)) {
            Err(Refusal::Held { permits: 1, holders }) => assert_eq!(holders[0].owner, owner("a")),
            other => panic!("{other:?}"),
        }
        // At the deadline itself the hold is gone.
        let b = l.acquire(&owner("b"), 500, 1, Timestamp(1_500), || FencingToken(12)).unwrap();
        assert_eq!(b.holder.token, FencingToken(12));
        assert_eq!(l.holders.len(), 1);
    }

    #[test]
    fn same_owner_gets_its_hold_back() {
        let mut l = lock();
        l.acquire(&owner("a"), 500, 1, T, || FencingToken(10)).unwrap();
        let again = l.acquire(&owner("a"), 800, 1, Timestamp(1_100), || FencingToken(11)).unwrap();
        assert!(!again.new);
        assert_eq!(again.holder.token, FencingToken(10), "the same token");
        assert_eq!(again.holder.deadline, Timestamp(1_900));
        assert_eq!(l.holders.len(), 1);
    }

    #[test]
    fn semaphore_permits() {
        let mut l = lock();
        l.acquire(&owner("a"), 500, 2, T, || FencingToken(1)).unwrap();
        l.acquire(&owner("b"), 500, 2, T, || FencingToken(2)).unwrap();
        assert!(matches!(l.acquire(&owner("c"), 500, 2, T, || FencingToken(3)), Err(Refusal::Held { permits: 2, .. })));
        assert_eq!(
            l.acquire(&owner("c"), 500, 3, T, || FencingToken(4)),
            Err(Refusal::PermitsMismatch { permits: 2, asked: 3 })
        );
        assert!(l.release(&owner("a"), FencingToken(1), T).unwrap());
        l.acquire(&owner("c"), 500, 2, T, || FencingToken(5)).unwrap();
        // Free again: the next acquire sets the size.
        l.force_release(None, T);
        assert!(l.is_free(T));
        l.acquire(&owner("d"), 500, 5, T, || FencingToken(6)).unwrap();
        assert_eq!(l.permits, 5);
    }

    #[test]
    fn renew_and_release_need_the_owners_live_token() {
        let mut l = lock();
        l.acquire(&owner("a"), 500, 1, T, || FencingToken(10)).unwrap();
        let lost = |r: Result<Granted, Refusal>| matches!(r, Err(Refusal::Lost { .. }));
        assert!(lost(l.renew(&owner("a"), FencingToken(9), None, T)));
        assert!(lost(l.renew(&owner("b"), FencingToken(10), None, T)));
        let r = l.renew(&owner("a"), FencingToken(10), Some(2_000), Timestamp(1_400)).unwrap();
        assert_eq!(r.holder.deadline, Timestamp(3_400));
        let r = l.renew(&owner("a"), FencingToken(10), None, Timestamp(3_000)).unwrap();
        assert_eq!(r.holder.deadline, Timestamp(5_000), "by the last TTL");
        // A stale token of the same owner never releases its newer hold; another owner never.
        assert!(l.release(&owner("a"), FencingToken(9), T).is_err());
        assert!(l.release(&owner("b"), FencingToken(10), T).is_err());
        assert!(l.release(&owner("a"), FencingToken(10), T).unwrap());
        assert!(!l.release(&owner("a"), FencingToken(10), T).unwrap(), "again: harmless");
        // Expired: renew is refused, release is harmless.
        l.acquire(&owner("a"), 500, 1, T, || FencingToken(20)).unwrap();
        assert!(lost(l.renew(&owner("a"), FencingToken(20), None, Timestamp(1_500))));
        assert!(!l.release(&owner("a"), FencingToken(20), Timestamp(1_500)).unwrap());
    }

    #[test]
    fn force_release_one_or_all() {
        let mut l = lock();
        l.acquire(&owner("a"), 500, 3, T, || FencingToken(1)).unwrap();
        l.acquire(&owner("b"), 500, 3, T, || FencingToken(2)).unwrap();
        l.acquire(&owner("c"), 500, 3, T, || FencingToken(3)).unwrap();
        assert_eq!(l.force_release(Some(FencingToken(2)), T).len(), 1);
        assert_eq!(l.live(T).map(|h| h.token.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(l.force_release(None, T).len(), 2);
        assert!(l.is_free(T));
    }

    #[test]
    #[should_panic(expected = "not above")]
    fn a_token_that_does_not_increase_is_a_bug() {
        let mut l = lock();
        l.acquire(&owner("a"), 500, 2, T, || FencingToken(10)).unwrap();
        let _ = l.acquire(&owner("b"), 500, 2, T, || FencingToken(10));
    }
}
