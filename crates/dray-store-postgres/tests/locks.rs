//! Locks on PostgreSQL beyond the shared suite: several stores (nodes) on one database, on the
//! database's clock, contending for one lock. Holds never overlap, and the tokens, taken in the
//! order the holds were granted, strictly increase whichever node granted them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dray_core::{LockName, LockOwner, Timestamp};
use dray_store::{Error, LockAcquire, LockRelease, LockStore};
use dray_store_postgres::{PostgresConfig, PostgresStore, TimeSource};

use common::TestDb;

const NODES: usize = 2;
const CLIENTS_PER_NODE: usize = 3;
const HOLDS_PER_CLIENT: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_nodes_never_overlap_and_tokens_increase_in_grant_order() {
    let db = TestDb::create().await;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let config = PostgresConfig { time_source: TimeSource::Database, ..db.config() };
        nodes.push(Arc::new(PostgresStore::connect(config).await.unwrap()));
    }
    let inside = Arc::new(AtomicBool::new(false));
    let granted = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for (n, store) in nodes.iter().enumerate() {
        for c in 0..CLIENTS_PER_NODE {
            let (store, inside, granted) = (store.clone(), inside.clone(), granted.clone());
            clients.push(tokio::spawn(async move {
                let name = LockName::new("m").unwrap();
                let owner = LockOwner::new(&format!("node{n}-client{c}")).unwrap();
                let mut held = 0;
                while held < HOLDS_PER_CLIENT {
                    let p = LockAcquire {
                        now: Timestamp(0),
                        name: name.clone(),
                        owner: owner.clone(),
                        ttl_ms: 60_000,
                        permits: 1,
                    };
                    let g = match store.lock_acquire(p).await {
                        Ok(g) => g,
                        Err(Error::Lock { .. }) => {
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    granted.lock().unwrap().push(g.holder.token);
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    let release = LockRelease {
                        now: Timestamp(0),
                        name: name.clone(),
                        owner: owner.clone(),
                        token: g.holder.token,
                    };
                    assert!(store.lock_release(release).await.unwrap());
                    held += 1;
                }
            }));
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    let tokens = granted.lock().unwrap().clone();
    assert_eq!(tokens.len(), NODES * CLIENTS_PER_NODE * HOLDS_PER_CLIENT);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens in grant order: {tokens:?}");
}
