//! Test databases: each test gets its own, created on the server named by `DATABASE_URL`
//! (default: the local server, `postgres://postgres@127.0.0.1:5432/test`) and dropped when the
//! test ends, also when it fails. No server means a failed test with instructions, never a skip.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use dray_store_postgres::{PostgresConfig, TimeSource};

pub const DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DATABASE_URL_DEFAULT.to_owned())
}

/// A connection for test setup and inspection, with the store's TLS settings (so a
/// `DATABASE_URL` with `sslmode=verify-full&sslrootcert=...` works here too) but not its
/// session settings.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = match connect_raw(url).await {
        Ok(pair) => pair,
        Err(e) => no_server(url, &e),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// [`connect`] without the panic; the caller polls the connection.
pub async fn connect_raw(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, dray_store_postgres::TlsStream<tokio_postgres::Socket>>,
    ),
    String,
> {
    let mut connector = PostgresConfig::new(url).connector().map_err(|e| e.to_string())?;
    // A plain session: the database's own defaults, not the store's session settings (tests
    // check those defaults, and setup statements may run longer than a store call).
    connector.pg.options("");
    match tokio::time::timeout(std::time::Duration::from_secs(10), connector.connect()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 10 s".to_owned()),
    }
}

fn no_server(url: &str, why: &str) -> ! {
    panic!(
        "PostgreSQL is not reachable at {url}: {why}.\n\
         These tests need a PostgreSQL server on which they may create and drop databases.\n\
         Set DATABASE_URL to one (for example postgres://postgres@127.0.0.1:5432/test), or start the\n\
         local server with `pg_ctlcluster 15 main start`."
    )
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let after = scheme_end + 3;
        let rest = &url[after..];
        let authority_end = rest.find(['/', '?']).map_or(url.len(), |i| after + i);
        let query_start = url[authority_end..].find('?').map_or(url.len(), |i| authority_end + i);
        format!("{}/{}{}", &url[..authority_end], name, &url[query_start..])
    } else {
        format!("{url} dbname={name}")
    }
}

fn unique_name() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r = RandomState::new().hash_one((std::process::id(), n));
    format!("dray_test_{:016x}", r)
}

/// A database of its own for one test, dropped (best effort) when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let client = connect(&admin).await;
        let name = unique_name();
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
        TestDb { url: with_database(&admin, &name), name, admin }
    }

    /// The store's configuration for this database, with time taken from the parameters (as the
    /// conformance suite needs).
    pub fn config(&self) -> PostgresConfig {
        let mut config = PostgresConfig::new(&self.url);
        config.time_source = TimeSource::Params;
        config.pool_size_max = 4;
        config
    }

    /// A connection to this database, for inspection.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// A connection to the server's administrative database.
    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.admin).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its
        // own small runtime.
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let Ok((client, connection)) = connect_raw(&admin).await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            });
        });
        let _ = dropping.join();
    }
}

/// Waits (at most 30 s) until `store` leads the maintenance election and returns its epoch.
pub async fn leads(store: &dray_store_postgres::PostgresStore) -> u64 {
    let wait_max = std::time::Duration::from_secs(30);
    let mut terms = store.leadership().subscribe();
    let term = tokio::time::timeout(wait_max, terms.wait_for(Option::is_some))
        .await
        .unwrap_or_else(|_| panic!("{} did not become the leader within {wait_max:?}", store.leadership().holder()))
        .expect("the election is alive");
    term.map(|t: dray_store_postgres::Term| t.epoch()).expect("a term")
}
