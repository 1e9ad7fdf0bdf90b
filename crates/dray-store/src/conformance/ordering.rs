//! Strict FIFO per ordering key: within a queue, jobs sharing an `ordering_key` run one at a time
//! in enqueue (id) order, decided by the store at lease time; a dead job holds its key unless
//! the queue's `ordering_dead` is `skip`.

use dray_core::{JobId, JobState, Limits, NewJob};

use super::{BACKOFF_1MS, Ctx, Harness, ids_of, new_job};
use crate::{DeadDiscard, DeadRedrive, DeadSelection, OrderingDead, QueueConfigure, Store};

fn keyed(queue: &str, key: &str, body: &str) -> NewJob {
    NewJob { ordering_key: Some(key.into()), ..new_job(queue, body) }
}

async fn set_ordering_dead<H: Harness>(c: &Ctx<H>, queue: &str, ordering_dead: OrderingDead) {
    let p = QueueConfigure { ordering_dead: Some(ordering_dead), ..QueueConfigure::new(c.now, super::q(queue)) };
    let config = c.configure(p).await.unwrap();
    assert_eq!(config.ordering_dead, ordering_dead);
    assert_eq!(c.stats(queue).await.config.ordering_dead, ordering_dead);
}

/// Leases everything leasable from `queue` now (up to 100) and returns the ids, best first.
async fn lease_all<H: Harness>(c: &Ctx<H>, queue: &str) -> Vec<JobId> {
    ids_of(&c.lease(&[queue], 100).await)
}

async fn kill<H: Harness>(c: &Ctx<H>, queue: &str, id: JobId) {
    let l = c.lease_one(queue, id).await;
    c.fail(id, l.lease, "boom", false, None).await.unwrap();
    assert_eq!(c.get(id).await.state(), JobState::Dead);
}

async fn redrive<H: Harness>(c: &Ctx<H>, id: JobId) {
    let r = c.store().dead_redrive(DeadRedrive { now: c.now, selection: DeadSelection::Ids(vec![id]), dry_run: false });
    assert_eq!(r.await.unwrap().ids, vec![id]);
}

async fn discard<H: Harness>(c: &Ctx<H>, id: JobId) {
    let r = c.store().dead_discard(DeadDiscard { now: c.now, selection: DeadSelection::Ids(vec![id]), dry_run: false });
    assert_eq!(r.await.unwrap(), vec![id]);
}

/// Priority and run time do not reorder a key: a later job waits for an earlier one even when
/// it has a higher priority and the earlier one is scheduled for later. Other keys and unkeyed
/// jobs are not held back.
pub async fn ordering_fifo_across_priority_and_run_at<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let later = c.now.add_ms(10_000);
    let a = c.insert_one(NewJob { run_at: Some(later), ..keyed("q", "k", "a") }).await;
    let b = c.insert_one(NewJob { priority: 10, ..keyed("q", "k", "b") }).await;
    let other = c.insert_one(NewJob { priority: 5, ..keyed("q", "k2", "other") }).await;
    let plain = c.insert_one(new_job("q", "plain")).await;
    assert_eq!(lease_all(&c, "q").await, vec![other, plain], "b waits for the scheduled a");

    c.set_now(later);
    let l = c.lease_one("q", a).await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "b waits while a runs");
    c.complete(a, l.lease).await.unwrap();
    let l = c.lease_one("q", b).await;
    assert_eq!(l.priority, 10);

    // A batch keeps its order within a key, whatever the priorities.
    let batch = c
        .insert(vec![
            NewJob { priority: -5, ..keyed("q", "batch", "1") },
            NewJob { priority: 7, ..keyed("q", "batch", "2") },
            NewJob { priority: 3, ..keyed("q", "batch", "3") },
        ])
        .await;
    for ins in &batch {
        let l = c.lease_one("q", ins.id).await;
        c.complete(ins.id, l.lease).await.unwrap();
    }
}

/// A lease of count N returns the N best eligible jobs: a key's blocked jobs, however many and
/// however urgent, neither fill the lease nor hide the jobs behind them.
pub async fn ordering_lease_count_past_blocked_key<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let mut hot = Vec::new();
    for i in 0..20 {
        hot.push(c.insert_one(NewJob { priority: 9, ..keyed("q", "hot", &format!("hot {i}")) }).await);
    }
    let k2 = c.insert_one(NewJob { priority: 1, ..keyed("q", "cold", "k2") }).await;
    let mut plain = Vec::new();
    for i in 0..3 {
        plain.push(c.insert_one(new_job("q", &format!("plain {i}"))).await);
    }
    let leased = ids_of(&c.lease(&["q"], 4).await);
    assert_eq!(leased, vec![hot[0], k2, plain[0], plain[1]]);
    assert_eq!(lease_all(&c, "q").await, vec![plain[2]]);
}

/// A key moves on when its running job completes and past a cancelled waiting job.
pub async fn ordering_moves_on_after_complete_and_cancel<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let a = c.insert_one(keyed("q", "k", "a")).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let d = c.insert_one(keyed("q", "k", "d")).await;
    let l = c.lease_one("q", a).await;
    assert_eq!(c.cancel(b).await.unwrap(), JobState::Cancelled);
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "d waits while a runs");
    c.complete(a, l.lease).await.unwrap();
    c.lease_one("q", d).await;

    // Cancelling the head lets the next one go.
    let e = c.insert_one(keyed("q", "k2", "e")).await;
    let f = c.insert_one(keyed("q", "k2", "f")).await;
    assert_eq!(c.cancel(e).await.unwrap(), JobState::Cancelled);
    c.lease_one("q", f).await;
}

/// A retrying job holds its key: the next job waits out the backoff.
pub async fn ordering_retrying_blocks<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(NewJob { attempts_max: Some(3), ..keyed("q", "k", "a") }).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let l = c.lease_one("q", a).await;
    c.fail(a, l.lease, "again", true, Some(10_000)).await.unwrap();
    assert_eq!(c.get(a).await.state(), JobState::Retrying);
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "b waits for the retrying a");
    c.advance(10_000);
    let l = c.lease_one("q", a).await;
    c.complete(a, l.lease).await.unwrap();
    c.lease_one("q", b).await;
}

/// An expired lease keeps the order: the expired job runs again before the next one.
pub async fn ordering_lease_expiry_keeps_order<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let new = NewJob {
        attempts_max: Some(3),
        backoff: Some(BACKOFF_1MS),
        lease_ms: Some(Limits::LEASE_MS_MIN),
        ..keyed("q", "k", "a")
    };
    let a = c.insert_one(new).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let l = c.lease_one("q", a).await;
    c.set_now(l.deadline);
    assert_eq!(c.expire().await, 1);
    let l = c.lease_when_due("q", a, 10).await;
    assert_eq!(l.attempt, 2);
    c.complete(a, l.lease).await.unwrap();
    c.lease_one("q", b).await;
}

/// By default a dead job blocks its key until it is redriven (and then runs first) or
/// discarded.
pub async fn ordering_dead_blocks_until_redrive_or_discard<H: Harness>(h: H) {
    let c = Ctx::open(h).await;
    let a = c.insert_one(keyed("q", "k", "a")).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let plain = c.insert_one(new_job("q", "plain")).await;
    kill(&c, "q", a).await;
    assert_eq!(lease_all(&c, "q").await, vec![plain], "the dead a holds b back");

    redrive(&c, a).await;
    kill(&c, "q", a).await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new());
    discard(&c, a).await;
    c.lease_one("q", b).await;
}

/// With `ordering_dead: skip` a key moves on past dead jobs; a redriven one waits for the key's
/// running job and then goes first. Switching the policy back to `block` holds the key again.
pub async fn ordering_dead_skip<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(keyed("q", "k", "a")).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let d = c.insert_one(keyed("q", "k", "d")).await;
    set_ordering_dead(&c, "q", OrderingDead::Skip).await;
    kill(&c, "q", a).await;
    let lb = c.lease_one("q", b).await;

    redrive(&c, a).await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "the redriven a waits for the running b");
    c.complete(b, lb.lease).await.unwrap();
    kill(&c, "q", a).await;

    set_ordering_dead(&c, "q", OrderingDead::Block).await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "blocking again on the dead a");
    c.restart().await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "still blocking after a restart");
    set_ordering_dead(&c, "q", OrderingDead::Skip).await;
    c.restart().await;
    c.advance(1);
    c.lease_one("q", d).await;
}

/// The order survives restarts: a running head still holds its key, and a dead one too.
pub async fn ordering_survives_restart<H: Harness>(h: H) {
    let mut c = Ctx::open(h).await;
    let a = c.insert_one(keyed("q", "k", "a")).await;
    let b = c.insert_one(keyed("q", "k", "b")).await;
    let d = c.insert_one(keyed("q", "k", "d")).await;
    let l = c.lease_one("q", a).await;
    c.restart().await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new());
    c.complete(a, l.lease).await.unwrap();
    c.restart().await;
    kill(&c, "q", b).await;
    c.restart().await;
    assert_eq!(lease_all(&c, "q").await, Vec::<JobId>::new(), "the dead b holds d back after a restart");
    discard(&c, b).await;
    c.restart().await;
    c.lease_one("q", d).await;
}
