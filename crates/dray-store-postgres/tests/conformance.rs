//! The shared store conformance suite, run against the PostgreSQL store: each test in a fresh
//! database of its own, with time driven by the suite (`TimeSource::Params`). A restart drops
//! the store (its pool of connections) and connects again to the same database.

mod common;

use dray_store::conformance::Harness;
use dray_store_postgres::PostgresStore;

use common::TestDb;

struct PgHarness {
    db: Option<TestDb>,
}

impl PgHarness {
    fn new() -> PgHarness {
        PgHarness { db: None }
    }

    async fn connect(&self) -> PostgresStore {
        let db = self.db.as_ref().expect("the database exists once opened");
        PostgresStore::connect(db.config())
            .await
            .unwrap_or_else(|e| panic!("connect to test database {}: {e}", db.name))
    }
}

impl Harness for PgHarness {
    type Store = PostgresStore;

    async fn open(&mut self) -> PostgresStore {
        self.db = Some(TestDb::create().await);
        self.connect().await
    }

    async fn restart(&mut self, store: PostgresStore) -> PostgresStore {
        drop(store);
        self.connect().await
    }
}

dray_store::conformance_suite!(PgHarness::new());

mod tokens {
    use super::*;
    dray_store::token_conformance_suite!(PgHarness::new());
}

mod locks {
    use super::*;
    dray_store::lock_conformance_suite!(PgHarness::new());
}
