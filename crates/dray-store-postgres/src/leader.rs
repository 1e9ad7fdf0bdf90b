//! Leader election among the nodes sharing one database: a lease in `<schema>.leader`, held by at
//! most one node at a time, with a fencing token (the term's `epoch`).
//!
//! **Why a leader.** Maintenance (promotion, lease expiry, pruning, schedule ticks) would be
//! correct on every node at once (its rows are claimed with `FOR UPDATE SKIP LOCKED`, and a tick
//! moves its schedule's cursor under the row's lock), but N nodes polling it every interval cost
//! the database N times the work for nothing. So one node, the leader, runs them.
//!
//! **The lease lives on the database's clock.** Acquiring and renewing is one statement, an upsert
//! that takes the row when its lease has run out (`expires_at <= now()`) or is already ours, and
//! sets `expires_at = now() + ttl`. No node's clock is ever compared with another's: the node only
//! measures durations on its own monotonic clock, and only to step down early, never to hold on.
//!
//! **The fencing token.** Every new term (another holder, or the same one after its lease ran
//! out) increments `epoch`. The store's maintenance statements carry the epoch this node believes
//! it holds and check `epoch = $mine AND expires_at > now()` in their own transaction, so a node
//! that lost the lease (paused, partitioned, slow) changes nothing once its statement starts after
//! the loss. A transaction that started before the loss may still commit; that overlap is harmless
//! for maintenance, because every change it makes is row-locked and guarded by the job's version.
//!
//! **Timing.** The leader renews every third of the TTL and gives each renewal a quarter of it; a
//! renewal that fails, times out or finds another holder steps the node down at once, so a node
//! stops believing it leads before its lease can have run out (its lease was extended from a
//! database instant after the renewal was sent). Followers try every third of the TTL, so a
//! vanished leader is replaced within `ttl + ttl/3` plus one round trip; a leader that stops
//! cleanly releases its lease (sets `expires_at = now()`), and a follower takes over at its next
//! try, within a third of the TTL.
//!
//! **One connection of its own**, outside the pool: renewals must not queue behind requests when
//! the pool is busy, or a loaded leader would lose its lease for no reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::PostgresConfig;

/// The role maintenance (schedule ticks included) is elected for: the row's `name`.
pub const MAINTENANCE: &str = "maintenance";

/// Bytes of the host name kept in a holder name (the column allows 256).
const HOST_BYTES_MAX: usize = 200;

/// Acquires or renews. `ours` is the epoch when this node holds the lease after the statement;
/// otherwise the current holder is read for the logs (from the statement's snapshot).
const CLAIM: &str = "
WITH claim AS (
    INSERT INTO {s}.leader AS l (name, holder, epoch, acquired_at, expires_at)
    VALUES ($1::text, $2::text, 1, now(), now() + $3::bigint * interval '1 millisecond')
    ON CONFLICT (name) DO UPDATE SET
        holder = EXCLUDED.holder,
        epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END,
        acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.acquired_at
                           ELSE now() END,
        expires_at = EXCLUDED.expires_at
    WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
    RETURNING l.epoch
)
SELECT (SELECT epoch FROM claim) AS ours, l.holder, l.epoch
FROM (SELECT 1) AS one LEFT JOIN {s}.leader l ON l.name = $1::text";

/// Ends this node's term at once, so a follower need not wait for the TTL.
const RELEASE: &str = "
UPDATE {s}.leader SET expires_at = now()
WHERE name = $1::text AND holder = $2::text AND epoch = $3::bigint AND expires_at > now()";

/// The guard a fenced maintenance statement adds (parameters `$n` name, `$n+1` epoch; both NULL
/// when maintenance is not fenced): true while the term `$n+1` is current on the database's
/// clock. Always the database's `now()`, also under `TimeSource::Params`: the lease is never on
/// a test's clock.
pub(crate) fn guard(schema: &str, name_param: u32) -> String {
    let epoch_param = name_param + 1;
    format!(
        "(${name_param}::text IS NULL OR EXISTS (SELECT 1 FROM {schema}.leader ldr WHERE ldr.name = ${name_param}::text \
         AND ldr.epoch = ${epoch_param}::bigint AND ldr.expires_at > now()))"
    )
}

/// What a maintenance call of the store must do, given this node's leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fence {
    /// No election runs (a single process, tests): act without a guard.
    Unfenced,
    /// An election runs and this node does not lead: act on nothing.
    Follower,
    /// This node leads in this term: act, guarded by its epoch in SQL.
    Leader(i64),
}

impl Fence {
    /// The guard's parameters: (name, epoch), NULL when unfenced.
    pub(crate) fn params(self) -> (Option<&'static str>, Option<i64>) {
        match self {
            Fence::Leader(epoch) => (Some(MAINTENANCE), Some(epoch)),
            Fence::Unfenced | Fence::Follower => (None, None),
        }
    }
}

/// This node's term, while it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    epoch: i64,
    /// When the lease may have run out at the latest: the instant the last successful renewal was
    /// sent, plus the TTL (the database set `expires_at` from a later instant).
    valid_until: Instant,
}

impl Term {
    /// The term's fencing token: larger for every later term.
    pub fn epoch(&self) -> u64 {
        u64::try_from(self.epoch).unwrap_or(0)
    }
}

/// This node's side of the election. Cheap to clone; every clone sees the same state. Obtain it
/// from [`crate::PostgresStore::leadership`], start it with [`Leadership::run`].
#[derive(Clone, Debug)]
pub struct Leadership {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    holder: String,
    ttl: Duration,
    config: PostgresConfig,
    term: watch::Sender<Option<Term>>,
    /// The leader as the last attempt that reached the database saw it: (holder, epoch).
    observed: watch::Sender<Option<(String, u64)>>,
    /// Set when [`Leadership::run`] starts: from then on maintenance calls are fenced.
    elected: AtomicBool,
}

impl Leadership {
    pub(crate) fn new(config: &PostgresConfig) -> Leadership {
        Leadership {
            shared: Arc::new(Shared {
                holder: holder_name(),
                ttl: Duration::from_millis(config.leader_ttl_ms),

                config: config.clone(),
                term: watch::Sender::new(None),
                observed: watch::Sender::new(None),
                elected: AtomicBool::new(false),
            }),
        }
    }

    /// This node's name in the `holder` column: `<host>:<pid>:<random>`, new for every process,
    /// so a restarted node never mistakes its predecessor's lease for its own.
    pub fn holder(&self) -> &str {
        &self.shared.holder
    }

    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Whether this node leads now (holds a lease it renewed less than a TTL ago).
    pub fn is_leader(&self) -> bool {
        self.epoch().is_some()
    }

    /// The fencing token of this node's current term, while it leads.
    pub fn epoch(&self) -> Option<u64> {
        let term = (*self.shared.term.borrow())?;
        (Instant::now() < term.valid_until).then(|| term.epoch())
    }

    /// This node's terms as they change: `Some` while it leads (a renewal within the term
    /// publishes the same epoch again), `None` once it stepped down. The election steps down, and
    /// publishes `None`, before a term's lease can have run out in the database.
    pub fn subscribe(&self) -> watch::Receiver<Option<Term>> {
        self.shared.term.subscribe()
    }

    /// Who leads, as this node's election last saw it in the database: `(holder, epoch)` (this
    /// node's own holder name while it leads). `None` before the first answer. Changes only when
    /// the leader or its term changes.
    pub fn observed(&self) -> watch::Receiver<Option<(String, u64)>> {
        self.shared.observed.subscribe()
    }

    fn observe(&self, holder: &str, epoch: i64) {
        let epoch = u64::try_from(epoch).unwrap_or(0);
        self.shared.observed.send_if_modified(|seen| {
            if seen.as_ref().is_some_and(|(h, e)| h == holder && *e == epoch) {
                return false;
            }
            *seen = Some((holder.to_owned(), epoch));
            true
        });
    }

    pub(crate) fn fence(&self) -> Fence {
        if !self.shared.elected.load(Ordering::Acquire) {
            return Fence::Unfenced;
        }
        match *self.shared.term.borrow() {
            Some(term) if Instant::now() < term.valid_until => Fence::Leader(term.epoch),
            _ => Fence::Follower,
        }
    }

    /// Takes part in the election until `stop` turns true (or its sender goes): acquires the lease
    /// when it is free, renews it while this node holds it, steps down at once when a renewal
    /// fails, and on stop releases it so another node takes over without waiting for the TTL.
    /// Errors (database down, connection lost) are logged and retried every third of the TTL;
    /// they never end the election.
    ///
    /// Call it once per store (a second concurrent call would renew the same lease twice, which is
    /// harmless but pointless). From the first call on, the store's maintenance calls act only
    /// while this node leads.
    ///
    /// Cancel safety: dropping the future instead of signalling `stop` leaves the lease to run out
    /// by itself (failover after the TTL, as after a crash); the node stops claiming to lead.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        self.shared.elected.store(true, Ordering::Release);
        let _stepped_down = StepDownOnDrop(self);
        let period = self.shared.ttl / 3;
        let mut session: Option<Session> = None;
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                break;
            }
            let outcome = tokio::select! {
                biased;
                _ = stop.wait_for(|&s| s) => break,
                outcome = self.attempt(&mut session) => outcome,
            };
            match outcome {
                Ok(Claim::Ours { epoch, sent }) => {
                    failures = 0;
                    self.lead(epoch, sent);
                    self.observe(&self.shared.holder, epoch);
                }
                Ok(Claim::Theirs { holder, epoch }) => {
                    failures = 0;
                    self.step_down("another node holds the lease");
                    let known =
                        self.shared.observed.borrow().as_ref().is_some_and(|(h, e)| *h == holder && *e as i64 == epoch);
                    if !known {
                        tracing::info!(node = %self.shared.holder, leader = %holder, epoch, "following the leader");
                        self.observe(&holder, epoch);
                    }
                }
                Err(error) => {
                    failures += 1;
                    session = None;
                    self.step_down("the lease could not be renewed");
                    // The first failure after a success (always logged: it may have ended a term),
                    // then one in ten while the database stays out of reach (an outage is
                    // reported by requests and /readyz too).
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(
                            node = %self.shared.holder,
                            database = %self.shared.config.url_redacted(),
                            %error,
                            failures,
                            retry_ms = period.as_millis() as u64,
                            "leader election: cannot reach the database"
                        );
                    }
                }
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(|&s| s) => break,
                () = tokio::time::sleep(period) => {}
            }
        }
        self.release(session.as_ref()).await;
    }

    /// One acquire-or-renew on the election's own connection, bounded by a quarter of the TTL.
    /// Opening the connection first (when there is none) is bounded by the connect timeout
    /// instead: a short TTL must not make a distant database unreachable.
    async fn attempt(&self, session: &mut Option<Session>) -> Result<Claim, String> {
        if session.is_none() {
            let timeout = self.shared.config.connect_timeout();
            let opened = tokio::time::timeout(timeout, Session::open(&self.shared.config))
                .await
                .map_err(|_| format!("no connection within the connect timeout of {} ms", timeout.as_millis()))??;
            *session = Some(opened);
        }
        let session = session.as_ref().expect("opened above");
        let budget = self.shared.ttl / 4;
        let sent = Instant::now();
        let attempt = async {
            let ttl_ms = i64::try_from(self.shared.ttl.as_millis()).unwrap_or(i64::MAX);
            let row = session
                .client
                .query_one(&session.claim, &[&MAINTENANCE, &self.shared.holder, &ttl_ms])
                .await
                .map_err(|e| e.to_string())?;
            let ours: Option<i64> = row.try_get("ours").map_err(|e| e.to_string())?;
            Ok(match ours {
                Some(epoch) => Claim::Ours { epoch, sent },
                None => Claim::Theirs {
                    holder: row.try_get::<_, Option<String>>("holder").map_err(|e| e.to_string())?.unwrap_or_default(),
                    epoch: row.try_get::<_, Option<i64>>("epoch").map_err(|e| e.to_string())?.unwrap_or(0),
                },
            })
        };
        match tokio::time::timeout(budget, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} ms (a quarter of the leader TTL)", budget.as_millis())),
        }
    }

    fn lead(&self, epoch: i64, sent: Instant) {
        let term = Term { epoch, valid_until: sent + self.shared.ttl };
        let previous = self.shared.term.send_replace(Some(term));
        if previous.is_none_or(|p| p.epoch != epoch) {
            tracing::info!(
                node = %self.shared.holder,
                epoch,
                ttl_ms = self.shared.ttl.as_millis() as u64,
                "this node is now the leader (maintenance runs here)"
            );
        }
    }

    fn step_down(&self, why: &str) {
        let mut ended = None;
        // Subscribers hear only of a real change: a follower stays quiet at every attempt.
        self.shared.term.send_if_modified(|term| {
            ended = term.take();
            ended.is_some()
        });
        if let Some(term) = ended {
            tracing::info!(node = %self.shared.holder, epoch = term.epoch, reason = why, "this node is no longer the leader");
        }
    }

    /// Ends this node's term in the database (when it leads and the connection works), bounded by
    /// a quarter of the TTL. A failed release only means followers wait for the TTL.
    async fn release(&self, session: Option<&Session>) {
        let Some(term) = self.shared.term.send_replace(None) else { return };
        let released = match session {
            None => Err("no connection".to_owned()),
            Some(session) => {
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&MAINTENANCE, &self.shared.holder, &term.epoch];
                let release = session.client.execute(&session.release, &params);
                match tokio::time::timeout(self.shared.ttl / 4, release).await {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_owned()),
                }
            }
        };
        match released {
            Ok(1) => tracing::info!(node = %self.shared.holder, epoch = term.epoch, "released the leadership"),
            Ok(_) => {
                tracing::info!(node = %self.shared.holder, epoch = term.epoch, "stepped down (the lease had already run out)")
            }
            Err(error) => tracing::warn!(
                node = %self.shared.holder,
                epoch = term.epoch,
                %error,
                "stepped down without releasing the lease: another node takes over after the TTL"
            ),
        }
    }
}

/// Whatever ends [`Leadership::run`] (stop, or the future dropped), the node no longer leads.
struct StepDownOnDrop<'a>(&'a Leadership);

impl Drop for StepDownOnDrop<'_> {
    fn drop(&mut self) {
        self.0.step_down("the election stopped");
    }
}

enum Claim {
    Ours { epoch: i64, sent: Instant },
    Theirs { holder: String, epoch: i64 },
}

/// The election's connection and its prepared statements.
struct Session {
    client: tokio_postgres::Client,
    claim: tokio_postgres::Statement,
    release: tokio_postgres::Statement,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(config: &PostgresConfig) -> Result<Session, String> {
        let mut connector = config.connector().map_err(|e| e.to_string())?;
        if connector.pg.get_application_name() == Some("dray") {
            connector.pg.application_name("dray-leader");
        }
        let (client, connection) = connector.connect().await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "the leader election's connection ended");
            }
        });
        let render = |sql: &str| sql.replace("{s}", &config.schema);
        let claim = client.prepare(&render(CLAIM)).await.map_err(|e| e.to_string())?;
        let release = client.prepare(&render(RELEASE)).await.map_err(|e| e.to_string())?;
        Ok(Session { client, claim, release, driver })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the client closes the connection; the driver then ends by itself. Aborting
        // it too makes sure a connection stuck on a dead peer goes at once.
        self.driver.abort();
    }
}

/// `<host>:<pid>:<8 hex digits>`: which machine and process, and unique per start.
fn holder_name() -> String {
    use std::hash::{BuildHasher, RandomState};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let mut end = host.len().min(HOST_BYTES_MAX);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    let nonce = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now())) as u32;
    format!("{}:{}:{nonce:08x}", &host[..end], std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_are_unique_and_fit() {
        let (a, b) = (holder_name(), holder_name());
        assert_ne!(a, b);
        assert!(a.len() <= 256);
        let pid = std::process::id().to_string();
        assert_eq!(a.split(':').nth(1), Some(pid.as_str()), "{a}");
    }

    #[test]
    fn the_guard_is_a_no_op_without_a_name() {
        assert_eq!(
            guard("s", 3),
            "($3::text IS NULL OR EXISTS (SELECT 1 FROM s.leader ldr WHERE ldr.name = $3::text \
             AND ldr.epoch = $4::bigint AND ldr.expires_at > now()))"
        );
    }
}
