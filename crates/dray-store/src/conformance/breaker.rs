//! A queue's circuit breaker, decided by the store at lease time from the outcomes it counts
//! itself (acks and lease expiries, whichever worker or node they come from): opens at its failure
//! ratio once its window holds `min_attempts`; while open the queue leases nothing and charges no
//! attempt; after `open_ms` it grants exactly `probes` trial leases; all succeeding close it, one
//! failing opens it again. Operators force it open or closed. The rules themselves are
//! `dray_core::breaker`'s; these tests check that a store applies them where it decides.

use dray_core::{Breaker, BreakerPolicy, BreakerState, JobId, JobState, Limits, RetryPolicy, WorkerId};

use super::{BACKOFF_1MS, Ctx, Harness, assert_invalid, ids_of, new_job, q};
use crate::{BreakerForce, Error, QueueConfigure, Store};

const POLICY: BreakerPolicy =
    BreakerPolicy { failure_ratio: 0.5, window_ms: 60_000, min_attempts: 4, open_ms: 10_000, probes: 2 };

/// Configures queue `q` with [`POLICY`] and retries due at once.
async fn setup<H: Harness>(c: &Ctx<H>) {
    let p = QueueConfigure {
        breaker: Some(Some(POLICY)),
        retry: Some(RetryPolicy { attempts_max: 25, backoff: BACKOFF_1MS }),
        ..QueueConfigure::new(c.now, q("q"))
    };
    let config = c.configure(p).await.unwrap();
    assert_eq!(config.breaker, Some(POLICY));
}

async fn breaker<H: Harness>(c: &Ctx<H>) -> Breaker {
    c.stats("q").await.breaker.expect("queue q has a breaker")
}

async fn insert_n<H: Harness>(c: &Ctx<H>, n: usize) -> Vec<JobId> {
    let jobs = (0..n).map(|i| new_job("q", &format!("{i}"))).collect();
    c.insert(jobs).await.into_iter().map(|i| i.id).collect()
}

async fn force<H: Harness>(c: &Ctx<H>, queue: &str, open: bool) -> Result<Breaker, Error> {
    c.store().breaker_force(BreakerForce { now: c.now, queue: q(queue), open }).await
}

/// Opens the breaker of `q` with four failures, from two workers. Returns when it opened.
async fn trip<H: Harness>(c: &mut Ctx<H>) {
    let mut leased = Vec::new();
    for w in ["worker-a", "worker-b"] {
        c.worker = WorkerId::new(w).unwrap();
        leased.extend(c.lease(&["q"], 2).await);
    }
    assert_eq!(leased.len(), 4);
    for l in leased {
        c.fail(l.id, l.lease, "boom", true, None).await.unwrap();
    }
    assert_eq!(breaker(c).await.state, BreakerState::Open);
}

/// Outcomes from several workers count towards one breaker, and it opens exactly when the window
/// holds `min_attempts` with the failed share at the ratio: not on fewer attempts even when all
/// failed.
pub async fn breaker_opens_at_ratio_across_workers<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 10).await;
    assert_eq!(c.stats("q").await.breaker, Some(Breaker::new()), "a new breaker is closed and empty");
    let mut leased = Vec::new();
    for w in ["worker-a", "worker-b", "worker-c"] {
        c.worker = WorkerId::new(w).unwrap();
        leased.extend(c.lease(&["q"], 1).await);
    }
    // Two failures out of three attempts: more than the ratio, fewer than min_attempts.
    c.fail(leased[0].id, leased[0].lease, "boom", true, None).await.unwrap();
    c.complete(leased[1].id, leased[1].lease).await.unwrap();
    c.fail(leased[2].id, leased[2].lease, "boom", false, None).await.unwrap();
    let b = breaker(&c).await;
    assert_eq!(b.state, BreakerState::Closed);
    assert_eq!(b.window_counts(&POLICY, c.now), (3, 2));
    c.advance(1);
    c.worker = WorkerId::new("worker-d").unwrap();
    let l = c.lease(&["q"], 1).await.pop().unwrap();
    c.complete(l.id, l.lease).await.unwrap();
    // Four attempts, two failed: 0.5 reaches the ratio.
    let b = breaker(&c).await;
    assert_eq!(b.state, BreakerState::Open, "opens at the ratio once min_attempts are counted");
    assert!(!b.forced);
    assert_eq!(b.changed_at, Some(c.now));
    assert_eq!(b.half_open_at, Some(c.now.add_ms(POLICY.open_ms)));
    assert_eq!(b.transitions[BreakerState::Open.index()], 1);
}

/// While open, the queue leases nothing, the waiting jobs are not charged an attempt, and other
/// queues of the same lease are served.
pub async fn breaker_open_leases_nothing<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    let ids = insert_n(&c, 8).await;
    let other = c.insert_one(new_job("other", "x")).await;
    trip(&mut c).await;
    c.advance(POLICY.open_ms - 1);
    assert_eq!(ids_of(&c.lease(&["q", "other"], 10).await), vec![other], "only the other queue leases");
    assert!(c.lease(&["q"], 10).await.is_empty());
    for id in &ids[4..] {
        let job = c.get(*id).await;
        assert_eq!((job.state(), job.status.attempt), (JobState::Available, 0), "job {id} is not charged");
    }
    for id in &ids[..4] {
        let job = c.get(*id).await;
        assert_eq!(job.status.attempt, 1, "job {id} is not charged a second attempt");
        assert_eq!(job.state(), JobState::Retrying, "due, but its queue leases nothing");
    }
    assert_eq!(breaker(&c).await.state, BreakerState::Open);
}

/// After `open_ms` the breaker turns half-open and grants exactly `probes` leases in all, over
/// several lease calls; every probe succeeding closes it, with an empty window.
pub async fn breaker_half_open_probes_then_closes<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 10).await;
    trip(&mut c).await;
    c.advance(POLICY.open_ms);
    let first = c.lease(&["q"], 1).await;
    assert_eq!(first.len(), 1);
    let b = breaker(&c).await;
    assert_eq!((b.state, b.probes_granted), (BreakerState::HalfOpen, 1));
    assert_eq!(b.changed_at, Some(c.now));
    let second = c.lease(&["q"], 10).await;
    assert_eq!(second.len(), 1, "exactly `probes` leases in all");
    assert!(c.lease(&["q"], 10).await.is_empty(), "no more while the probes run");
    c.advance(1);
    c.complete(first[0].id, first[0].lease).await.unwrap();
    assert_eq!(breaker(&c).await.state, BreakerState::HalfOpen, "one probe of two succeeded");
    c.complete(second[0].id, second[0].lease).await.unwrap();
    let b = breaker(&c).await;
    assert_eq!(b.state, BreakerState::Closed);
    assert_eq!(b.window_counts(&POLICY, c.now), (0, 0));
    assert_eq!(b.transitions, [1, 1, 1]);
    assert_eq!(c.lease(&["q"], 100).await.len(), 8, "leases flow again, the four retries included");
}

/// A probe that fails opens the breaker again for `open_ms`; the other probe's later success
/// belongs to the half-open period that ended and changes nothing.
pub async fn breaker_probe_failure_reopens<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 10).await;
    trip(&mut c).await;
    c.advance(POLICY.open_ms);
    let probes = c.lease(&["q"], 10).await;
    assert_eq!(probes.len(), 2);
    c.advance(1);
    c.fail(probes[0].id, probes[0].lease, "still down", true, None).await.unwrap();
    let b = breaker(&c).await;
    assert_eq!(b.state, BreakerState::Open);
    assert_eq!(b.half_open_at, Some(c.now.add_ms(POLICY.open_ms)));
    c.advance(1);
    c.complete(probes[1].id, probes[1].lease).await.unwrap();
    assert_eq!(breaker(&c).await.state, BreakerState::Open);
    assert!(c.lease(&["q"], 10).await.is_empty());
    assert_eq!(breaker(&c).await.transitions, [0, 2, 1]);
}

/// An expired lease is a failure (a crashed worker is a failed attempt); a cancelled probe counts
/// for nothing and gives its slot back.
pub async fn breaker_counts_expiry_not_cancel<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 10).await;
    let leased = c.lease(&["q"], 4).await;
    assert_eq!(leased.len(), 4);
    c.advance(Limits::LEASE_MS_DEFAULT);
    assert_eq!(c.expire().await, 4);
    assert_eq!(breaker(&c).await.state, BreakerState::Open, "four expiries open it");

    c.advance(POLICY.open_ms);
    let probes = c.lease(&["q"], 10).await;
    assert_eq!(probes.len(), 2);
    assert_eq!(c.cancel(probes[0].id).await.unwrap(), JobState::Running);
    c.fail(probes[0].id, probes[0].lease, "stopped", true, None).await.unwrap();
    assert_eq!(c.get(probes[0].id).await.state(), JobState::Cancelled);
    let b = breaker(&c).await;
    assert_eq!((b.state, b.probes_granted), (BreakerState::HalfOpen, 1), "the cancelled probe is given back");
    let again = c.lease(&["q"], 10).await;
    assert_eq!(again.len(), 1);
    c.complete(probes[1].id, probes[1].lease).await.unwrap();
    c.complete(again[0].id, again[0].lease).await.unwrap();
    assert_eq!(breaker(&c).await.state, BreakerState::Closed);
}

/// An operator forces the breaker open (it stays open past `open_ms`, until closed by hand) and
/// closed. Forcing needs a known queue with a breaker.
pub async fn breaker_force_open_and_close<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 3).await;
    let b = force(&c, "q", true).await.unwrap();
    assert_eq!((b.state, b.forced, b.half_open_at), (BreakerState::Open, true, None));
    assert_eq!(breaker(&c).await, b);
    c.advance(POLICY.open_ms * 10);
    assert!(c.lease(&["q"], 10).await.is_empty(), "a forced breaker stays open");
    assert_eq!(breaker(&c).await.state, BreakerState::Open);
    c.advance(1);
    let b = force(&c, "q", false).await.unwrap();
    assert_eq!((b.state, b.forced, b.changed_at), (BreakerState::Closed, false, Some(c.now)));
    assert_eq!(c.lease(&["q"], 10).await.len(), 3);

    // Forcing closed an automatically opened breaker.
    insert_n(&c, 4).await;
    trip(&mut c).await;
    force(&c, "q", false).await.unwrap();
    c.advance(1);
    assert_eq!(c.lease(&["q"], 10).await.len(), 4, "the four retries, due");

    c.insert_one(new_job("plain", "x")).await;
    assert_invalid(force(&c, "plain", true).await, "breaker");
    match force(&c, "nowhere", true).await {
        Err(Error::QueueNotFound(name)) => assert_eq!(name.as_str(), "nowhere"),
        other => panic!("expected QueueNotFound, got {other:?}"),
    }
}

/// A bad policy is refused naming the field and changes nothing; removing the breaker forgets its
/// state and the queue leases again.
pub async fn breaker_configure_validates_and_removes<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 6).await;
    let before = c.snapshot().await;
    let bad: [(BreakerPolicy, &str); 5] = [
        (BreakerPolicy { failure_ratio: 0.0, ..POLICY }, "breaker.failure_ratio"),
        (BreakerPolicy { failure_ratio: 1.01, ..POLICY }, "breaker.failure_ratio"),
        (BreakerPolicy { window_ms: Limits::BREAKER_WINDOW_MS_MAX + 1, ..POLICY }, "breaker.window_ms"),
        (BreakerPolicy { min_attempts: 0, ..POLICY }, "breaker.min_attempts"),
        (BreakerPolicy { probes: Limits::BREAKER_PROBES_MAX + 1, ..POLICY }, "breaker.probes"),
    ];
    for (policy, field) in bad {
        let p = QueueConfigure { breaker: Some(Some(policy)), ..QueueConfigure::new(c.now, q("q")) };
        assert_invalid(c.configure(p).await, field);
    }
    c.assert_unchanged(&before, "a refused breaker policy").await;

    trip(&mut c).await;
    // A changed policy keeps the state.
    let p = QueueConfigure {
        breaker: Some(Some(BreakerPolicy { probes: 1, ..POLICY })),
        ..QueueConfigure::new(c.now, q("q"))
    };
    c.configure(p).await.unwrap();
    assert_eq!(breaker(&c).await.state, BreakerState::Open);
    let p = QueueConfigure { breaker: Some(None), ..QueueConfigure::new(c.now, q("q")) };
    assert_eq!(c.configure(p).await.unwrap().breaker, None);
    let stats = c.stats("q").await;
    assert_eq!((stats.config.breaker, stats.breaker), (None, None));
    c.advance(1);
    assert_eq!(c.lease(&["q"], 10).await.len(), 6, "without a breaker the queue leases");
    assert_eq!(c.stats("q").await.config.breaker, None);
}

/// The breaker's state (not its window, which a store may keep in memory only) survives a
/// restart: an open breaker stays open, a forced one stays forced.
pub async fn breaker_state_survives_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    setup(&c).await;
    insert_n(&c, 6).await;
    trip(&mut c).await;
    let opened = breaker(&c).await;
    c.restart().await;
    let b = breaker(&c).await;
    assert!(b.same_but_window(&opened), "{b:?} after restart, {opened:?} before");
    assert_eq!(c.stats("q").await.config.breaker, Some(POLICY));
    assert!(c.lease(&["q"], 10).await.is_empty());
    force(&c, "q", true).await.unwrap();
    c.restart().await;
    let b = breaker(&c).await;
    assert_eq!((b.state, b.forced), (BreakerState::Open, true));
    c.advance(POLICY.open_ms * 2);
    assert!(c.lease(&["q"], 10).await.is_empty());
}
