//! The other half of locks: `<schema>.fence(resource, token)` (migration 9), called by an
//! application inside its own transaction before it writes, and the SDK's helpers on top of it
//! (`dray_client::outbox::fence`, `fence_sqlx`). A fenced resource never accepts a token older
//! than the newest it has seen. Each test gets a fresh database.

mod common;

use dray_client::outbox;
use dray_core::{LockName, LockOwner, Timestamp};
use dray_store::{LockAcquire, LockStore};
use dray_store_postgres::{FENCE_SQLSTATE, PostgresConfig, PostgresStore, TimeSource};

use common::TestDb;

async fn store(db: &TestDb) -> PostgresStore {
    let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
    PostgresStore::connect(config).await.unwrap()
}

async fn fence(
    client: &impl tokio_postgres::GenericClient,
    resource: &str,
    token: i64,
) -> Result<i64, (String, String)> {
    match client.query_one("SELECT dray.fence($1, $2)", &[&resource, &token]).await {
        Ok(row) => Ok(row.get(0)),
        Err(e) => {
            let db = e.as_db_error().expect("a database error");
            Err((db.code().code().to_owned(), db.message().to_owned()))
        }
    }
}

/// Newer and equal tokens pass and move the resource forward; an older one raises `DR001` with a
/// message naming the resource, the token and the newest token; resources are independent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_refuses_tokens_older_than_the_newest_seen() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let app = db.client().await;

    assert_eq!(fence(&app, "report:2026-12", 5).await, Ok(5));
    assert_eq!(fence(&app, "report:2026-12", 5).await, Ok(5), "the same holder writing again");
    let (code, message) = fence(&app, "report:2026-12", 4).await.unwrap_err();
    assert_eq!(code, FENCE_SQLSTATE);
    assert!(
        message.contains("'report:2026-12'") && message.contains("token 4") && message.contains("newer token 5"),
        "{message}"
    );
    assert_eq!(fence(&app, "report:2026-12", 9).await, Ok(9));
    assert_eq!(fence(&app, "report:2026-12", 5).await.unwrap_err().0, FENCE_SQLSTATE, "5 is stale now");
    assert_eq!(fence(&app, "other", 1).await, Ok(1), "another resource has its own newest token");

    // Bad input is the caller's mistake, not a fence refusal.
    let empty = fence(&app, "", 1).await.unwrap_err();
    assert_eq!(empty.0, "22023", "{empty:?}");
    // The SQL bound is the core's (`Limits::FENCE_RESOURCE_BYTES_MAX`).
    let longest = "r".repeat(dray_core::Limits::FENCE_RESOURCE_BYTES_MAX);
    assert_eq!(fence(&app, &longest, 1).await, Ok(1));
    assert_eq!(fence(&app, &format!("{longest}r"), 1).await.unwrap_err().0, "22023");
    let null = app.query_one("SELECT dray.fence(NULL, 1)", &[]).await.unwrap_err();
    assert_eq!(null.code().unwrap().code(), "22004", "null_value_not_allowed");
}

/// Inside a transaction that rolls back, the fence changes nothing: the resource's newest token
/// is what it was, so the holder it was moved past can still write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_in_a_rolled_back_transaction_changes_nothing() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let mut app = db.client().await;
    app.batch_execute("CREATE TABLE reports (month text PRIMARY KEY, body text NOT NULL, token bigint NOT NULL)")
        .await
        .unwrap();
    assert_eq!(fence(&app, "r", 10).await, Ok(10));

    let tx = app.transaction().await.unwrap();
    assert_eq!(fence(&tx, "r", 20).await, Ok(20));
    tx.execute("INSERT INTO reports VALUES ('2026-12', 'by 20', 20)", &[]).await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(fence(&app, "r", 10).await, Ok(10), "20 was never seen");
    assert_eq!(fence(&app, "r", 15).await, Ok(15));
    let rows: i64 = app.query_one("SELECT count(*) FROM reports", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);

    // A refused fence aborts the caller's transaction: its write before the fence goes too.
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO reports VALUES ('2026-11', 'stale', 3)", &[]).await.unwrap();
    assert_eq!(fence(&tx, "r", 3).await.unwrap_err().0, FENCE_SQLSTATE);
    // PostgreSQL answers the COMMIT of an aborted transaction with a rollback.
    let _ = tx.commit().await;
    let rows: i64 = app.query_one("SELECT count(*) FROM reports", &[]).await.unwrap().get(0);
    assert_eq!(rows, 0);
}

/// Two fenced writers of one resource at once: the newer token's transaction holds the fence's
/// row lock until it ends, so the older one waits, then is refused once the newer commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_serializes_concurrent_writers() {
    let db = TestDb::create().await;
    let _store = store(&db).await;
    let mut newer = db.client().await;
    let mut older = db.client().await;
    let tx_new = newer.transaction().await.unwrap();
    assert_eq!(fence(&tx_new, "r", 8).await, Ok(8));
    let waiting = tokio::spawn(async move {
        let tx_old = older.transaction().await.unwrap();
        let result = fence(&tx_old, "r", 7).await;
        let _ = tx_old.rollback().await;
        result
    });
    // Once the older writer waits for a lock, the newer one commits.
    let watch = db.client().await;
    loop {
        let waits: i64 = watch.query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[]).await.unwrap().get(0);
        if waits > 0 {
            break;
        }
        assert!(!waiting.is_finished(), "the older writer finished before the newer one's commit");
        tokio::task::yield_now().await;
    }
    tx_new.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap_err().0, FENCE_SQLSTATE);
}

/// The SDK helpers, on tokio-postgres and sqlx, with tokens from real lock grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_fence_helpers_refuse_the_stale_holder() {
    use sqlx::Connection;

    let db = TestDb::create().await;
    // The suite's time (`TimeSource::Params`): the first holder's TTL passes without waiting.
    let store =
        PostgresStore::connect(PostgresConfig { time_source: TimeSource::Params, ..db.config() }).await.unwrap();
    let acquire = |owner: &str, now: i64| LockAcquire {
        now: Timestamp(now),
        name: LockName::new("report").unwrap(),
        owner: LockOwner::new(owner).unwrap(),
        ttl_ms: 100,
        permits: 1,
    };
    let first = store.lock_acquire(acquire("a", 1_000)).await.unwrap().holder.token.0;
    // The first holder's TTL passes (as if it were paused); the second gets the lock.
    let second = store.lock_acquire(acquire("b", 1_100)).await.unwrap().holder.token.0;
    assert!(second > first);

    let mut app = db.client().await;
    let tx = app.transaction().await.unwrap();
    assert_eq!(outbox::fence(&tx, "dray", "report", second).await.unwrap(), second);
    tx.commit().await.unwrap();

    let tx = app.transaction().await.unwrap();
    let err = outbox::fence(&tx, "dray", "report", first).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(err.message().contains(&format!("newer token {second}")), "{}", err.message());
    drop(tx);

    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("sqlx connects");
    let mut tx = conn.begin().await.unwrap();
    let err = outbox::fence_sqlx(&mut tx, "dray", "report", first).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    tx.rollback().await.unwrap();
    assert_eq!(outbox::fence_sqlx(&mut conn, "dray", "report", second).await.unwrap(), second);
    assert!(outbox::fence_sql("Bad-Schema").is_err());
}
