//! The conformance suite of [`LockStore`]: every store that keeps locks runs it, through
//! `dray_store::lock_conformance_suite!(harness)` (the same [`Harness`] as the job suite, whose
//! store must also implement [`LockStore`]). Time is the suite's: each call passes `now`.

use dray_core::lock::{Holder, Refusal};
use dray_core::{FencingToken, Limits, LockName, LockOwner, Timestamp};

use super::{Harness, T0};
use crate::{
    Error, LockAcquire, LockForceRelease, LockGranted, LockList, LockRelease, LockRenew, LockState, LockStore,
};

fn name(s: &str) -> LockName {
    LockName::new(s).expect("a valid lock name")
}

fn owner(s: &str) -> LockOwner {
    LockOwner::new(s).expect("a valid owner")
}

fn at(ms: i64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

async fn acquire<S: LockStore>(
    store: &S,
    lock: &str,
    who: &str,
    ttl_ms: u64,
    permits: u32,
    now: Timestamp,
) -> Result<LockGranted, Error> {
    store.lock_acquire(LockAcquire { now, name: name(lock), owner: owner(who), ttl_ms, permits }).await
}

async fn renew<S: LockStore>(
    store: &S,
    lock: &str,
    who: &str,
    token: FencingToken,
    ttl_ms: Option<u64>,
    now: Timestamp,
) -> Result<LockGranted, Error> {
    store.lock_renew(LockRenew { now, name: name(lock), owner: owner(who), token, ttl_ms }).await
}

async fn release<S: LockStore>(
    store: &S,
    lock: &str,
    who: &str,
    token: FencingToken,
    now: Timestamp,
) -> Result<bool, Error> {
    store.lock_release(LockRelease { now, name: name(lock), owner: owner(who), token }).await
}

async fn get<S: LockStore>(store: &S, lock: &str, now: Timestamp) -> Option<LockState> {
    store.lock_get(&name(lock), now).await.expect("lock_get")
}

fn owners(state: &Option<LockState>) -> Vec<String> {
    state.iter().flat_map(|s| s.lock.holders.iter().map(|h| h.owner.as_str().to_owned())).collect()
}

#[track_caller]
fn refusal<T: std::fmt::Debug>(r: Result<T, Error>) -> Refusal {
    match r {
        Err(Error::Lock { refusal, .. }) => refusal,
        other => panic!("expected a lock refusal, got {other:?}"),
    }
}

#[track_caller]
fn lost<T: std::fmt::Debug>(r: Result<T, Error>) {
    match refusal(r) {
        Refusal::Lost { .. } => {}
        other => panic!("expected lost, got {other:?}"),
    }
}

pub async fn lock_acquire_grants_one_holder<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    assert_eq!(get(&store, "orders", T0).await, None, "a new store holds no lock");
    let a = acquire(&store, "orders", "a", 10_000, 1, T0).await.unwrap();
    assert!(a.new);
    assert_eq!(a.holder.owner, owner("a"));
    assert_eq!(a.holder.acquired_at, T0);
    assert_eq!(a.holder.deadline, at(10_000));
    assert_eq!(a.holder.ttl_ms, 10_000);
    assert_eq!(a.left_ms(), 10_000);

    // Held: the refusal names the holder.
    match refusal(acquire(&store, "orders", "b", 10_000, 1, at(1)).await) {
        Refusal::Held { permits: 1, holders } => assert_eq!(holders, vec![a.holder.clone()]),
        other => panic!("expected held, got {other:?}"),
    }
    // Another name is another lock.
    let other = acquire(&store, "invoices", "b", 10_000, 1, at(2)).await.unwrap();
    assert!(other.holder.token > a.holder.token);

    // Contract decision: the holder acquiring again gets its hold back (same token, new
    // deadline), so an acquire retried after a lost reply never takes a second permit.
    let again = acquire(&store, "orders", "a", 20_000, 1, at(3)).await.unwrap();
    assert!(!again.new);
    assert_eq!(again.holder.token, a.holder.token);
    assert_eq!(again.holder.deadline, at(20_003));

    let state = get(&store, "orders", at(4)).await.expect("held");
    assert_eq!(state.lock.permits, 1);
    assert_eq!(state.lock.holders, vec![again.holder.clone()]);
    let listed = store.lock_list(LockList { now: at(4), after: None, limit: 10 }).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.lock.name.as_str()).collect::<Vec<_>>(), vec!["invoices", "orders"]);
    let page = store.lock_list(LockList { now: at(4), after: Some(name("invoices")), limit: 10 }).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].lock.holders, vec![again.holder]);
}

pub async fn lock_semaphore_permits<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    let a = acquire(&store, "pool", "a", 10_000, 3, T0).await.unwrap();
    let b = acquire(&store, "pool", "b", 10_000, 3, T0).await.unwrap();
    let c = acquire(&store, "pool", "c", 10_000, 3, T0).await.unwrap();
    assert!(a.holder.token < b.holder.token && b.holder.token < c.holder.token, "every holder its own token");
    match refusal(acquire(&store, "pool", "d", 10_000, 3, T0).await) {
        Refusal::Held { permits: 3, holders } => assert_eq!(holders.len(), 3),
        other => panic!("expected held, got {other:?}"),
    }
    assert_eq!(
        refusal(acquire(&store, "pool", "d", 10_000, 4, T0).await),
        Refusal::PermitsMismatch { permits: 3, asked: 4 }
    );
    assert!(release(&store, "pool", "b", b.holder.token, at(1)).await.unwrap());
    let d = acquire(&store, "pool", "d", 10_000, 3, at(2)).await.unwrap();
    assert!(d.holder.token > c.holder.token);
    assert_eq!(owners(&get(&store, "pool", at(3)).await), vec!["a", "c", "d"], "holders by token");

    // Once free, the next acquire sets the size.
    let forced = store.lock_force_release(LockForceRelease { now: at(4), name: name("pool"), token: None }).await;
    assert_eq!(forced.unwrap().len(), 3);
    assert_eq!(get(&store, "pool", at(4)).await, None);
    acquire(&store, "pool", "e", 10_000, 1, at(5)).await.unwrap();
    assert_eq!(get(&store, "pool", at(5)).await.unwrap().lock.permits, 1);
}

pub async fn lock_ttl_expiry_frees<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    let a = acquire(&store, "l", "a", 1_000, 1, T0).await.unwrap();
    assert!(matches!(refusal(acquire(&store, "l", "b", 1_000, 1, at(999)).await), Refusal::Held { .. }));
    // At the deadline the lock is free: nobody listed, and another owner gets it.
    assert_eq!(get(&store, "l", at(1_000)).await, None);
    assert!(store.lock_list(LockList { now: at(1_000), after: None, limit: 10 }).await.unwrap().is_empty());
    let b = acquire(&store, "l", "b", 1_000, 1, at(1_000)).await.unwrap();
    assert!(b.new && b.holder.token > a.holder.token);
    // The expired holder's token is lost: renew refused, release harmless (already free for it).
    lost(renew(&store, "l", "a", a.holder.token, None, at(1_001)).await);
    assert!(!release(&store, "l", "a", a.holder.token, at(1_001)).await.unwrap());
    assert_eq!(owners(&get(&store, "l", at(1_001)).await), vec!["b"], "b's hold untouched");
    // The same owner coming back after its TTL gets a new hold with a new token.
    let a2 = acquire(&store, "l", "a", 1_000, 1, at(5_000)).await.unwrap();
    assert!(a2.new && a2.holder.token > b.holder.token);
}

pub async fn lock_renew_and_release_refuse_stale_tokens<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    let a = acquire(&store, "l", "a", 1_000, 1, T0).await.unwrap();
    let t = a.holder.token;
    let r = renew(&store, "l", "a", t, Some(5_000), at(900)).await.unwrap();
    assert_eq!((r.holder.token, r.holder.deadline, r.holder.ttl_ms), (t, at(5_900), 5_000));
    let r = renew(&store, "l", "a", t, None, at(5_000)).await.unwrap();
    assert_eq!(r.holder.deadline, at(10_000), "by the last TTL");

    lost(renew(&store, "l", "a", FencingToken(t.0 - 1), None, at(5_001)).await);
    lost(renew(&store, "l", "b", t, None, at(5_001)).await);
    lost(renew(&store, "nothing", "a", t, None, at(5_001)).await);
    lost(release(&store, "l", "b", t, at(5_001)).await);
    lost(release(&store, "l", "a", FencingToken(t.0 - 1), at(5_001)).await);
    assert_eq!(owners(&get(&store, "l", at(5_001)).await), vec!["a"], "refusals changed nothing");
    let bad_ttl = renew(&store, "l", "a", t, Some(Limits::LOCK_TTL_MS_MAX + 1), at(5_001)).await;
    assert!(matches!(bad_ttl, Err(Error::Invalid(ref i)) if i.field == "ttl_ms"), "{bad_ttl:?}");

    assert!(release(&store, "l", "a", t, at(5_002)).await.unwrap());
    assert_eq!(get(&store, "l", at(5_002)).await, None);
    // Contract decision: releasing again (a retry after a lost reply) is harmless.
    assert!(!release(&store, "l", "a", t, at(5_003)).await.unwrap());
    lost(renew(&store, "l", "a", t, None, at(5_003)).await);
    assert!(!release(&store, "never-held", "a", t, at(5_003)).await.unwrap());
}

pub async fn lock_force_release_one_or_all<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    let a = acquire(&store, "l", "a", 10_000, 2, T0).await.unwrap();
    let b = acquire(&store, "l", "b", 10_000, 2, T0).await.unwrap();
    let force = |token| store.lock_force_release(LockForceRelease { now: at(1), name: name("l"), token });
    let gone: Vec<Holder> = force(Some(a.holder.token)).await.unwrap();
    assert_eq!(gone, vec![a.holder.clone()]);
    assert_eq!(force(Some(a.holder.token)).await.unwrap(), vec![], "again: nothing");
    lost(renew(&store, "l", "a", a.holder.token, None, at(2)).await);
    assert_eq!(owners(&get(&store, "l", at(2)).await), vec!["b"]);
    assert_eq!(force(None).await.unwrap(), vec![b.holder.clone()]);
    assert_eq!(get(&store, "l", at(2)).await, None);
    let c = acquire(&store, "l", "c", 10_000, 1, at(3)).await.unwrap();
    assert!(c.holder.token > b.holder.token);
}

pub async fn lock_tokens_increase_across_restarts<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let mut store = h.open().await;
    let mut last = FencingToken(0);
    let mut now = T0;
    for round in 0..3 {
        let a = acquire(&store, "l", &format!("a{round}"), 1_000, 1, now).await.unwrap();
        assert!(a.holder.token > last, "round {round}: {:?} after {last:?}", a.holder.token);
        last = a.holder.token;
        store = h.restart(store).await;
        // A held lock stays held across the restart, until its TTL.
        let state = get(&store, "l", now).await.expect("held after a restart");
        assert_eq!(state.lock.holders, vec![a.holder.clone()]);
        assert!(matches!(refusal(acquire(&store, "l", "other", 1_000, 1, now).await), Refusal::Held { .. }));
        renew(&store, "l", &format!("a{round}"), a.holder.token, None, now).await.unwrap();
        now = Timestamp(now.0 + 1_000);
    }
    // Released before a restart: free after it.
    let a = acquire(&store, "l", "z", 1_000, 1, now).await.unwrap();
    assert!(release(&store, "l", "z", a.holder.token, now).await.unwrap());
    store = h.restart(store).await;
    assert_eq!(get(&store, "l", now).await, None);
    let b = acquire(&store, "l", "y", 1_000, 1, now).await.unwrap();
    assert!(b.holder.token > a.holder.token);
}

pub async fn lock_validation_changes_nothing<H: Harness>(mut h: H)
where
    H::Store: LockStore,
{
    let store = h.open().await;
    let field = |r: Result<LockGranted, Error>| match r {
        Err(Error::Invalid(invalid)) => invalid.field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(field(acquire(&store, "l", "a", Limits::LOCK_TTL_MS_MIN - 1, 1, T0).await), "ttl_ms");
    assert_eq!(field(acquire(&store, "l", "a", Limits::LOCK_TTL_MS_MAX + 1, 1, T0).await), "ttl_ms");
    assert_eq!(field(acquire(&store, "l", "a", 1_000, 0, T0).await), "permits");
    assert_eq!(field(acquire(&store, "l", "a", 1_000, Limits::LOCK_PERMITS_MAX + 1, T0).await), "permits");
    let list = store.lock_list(LockList { now: T0, after: None, limit: Limits::PAGE_LOCKS_MAX + 1 }).await;
    assert!(matches!(list, Err(Error::Invalid(ref i)) if i.field == "limit"), "{list:?}");
    assert_eq!(get(&store, "l", T0).await, None);
    // The bounds themselves are fine.
    acquire(&store, "l", "a", Limits::LOCK_TTL_MS_MAX, Limits::LOCK_PERMITS_MAX, T0).await.unwrap();
}

/// Expands to one `#[tokio::test]` per test of the lock suite, each calling
/// `dray_store::conformance::<name>(<harness expression>)`.
#[macro_export]
macro_rules! lock_conformance_suite {
    ($make:expr) => {
        $crate::__conformance_tests! {
            $make;
            lock_acquire_grants_one_holder,
            lock_semaphore_permits,
            lock_ttl_expiry_frees,
            lock_renew_and_release_refuse_stale_tokens,
            lock_force_release_one_or_all,
            lock_tokens_increase_across_restarts,
            lock_validation_changes_nothing,
        }
    };
}
