//! PostgreSQL over TLS: each `sslmode` against private clusters this test starts (one with
//! `ssl = on` and a certificate for `localhost` from a CA of its own, one without TLS), through
//! `PostgresStore::connect` (migrations, then the pool) and the store's `Connector`.
//!
//! A refusal must be `ConnectError::Tls` (start-up does not retry it) and name the problem; a
//! success must give sessions that are (or, for `disable` and a `prefer` fallback, are not)
//! encrypted, as `pg_stat_ssl` reports for the pool's own sessions.

mod cluster;

use cluster::{Certs, Cluster};
use dray_store_postgres::{ConnectError, PostgresConfig, PostgresStore};

enum Expect {
    /// Connects; every session of the case is (or is not) encrypted.
    Ssl(bool),
    /// `ConnectError::Tls` whose message contains this.
    Refused(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_private_clusters() {
    let (certs, other_ca, tls, plain) = tokio::task::spawn_blocking(|| {
        let certs = Certs::new(&["localhost"]);
        let other_ca = Certs::new(&["localhost"]);
        let tls = Cluster::start(Some(&certs));
        let plain = Cluster::start(None);
        (certs, other_ca, tls, plain)
    })
    .await
    .expect("clusters start");
    let ca = certs.ca.display().to_string();
    let wrong_ca = other_ca.ca.display().to_string();
    let cases: Vec<(&Cluster, &str, String, Expect)> = vec![
        (&tls, "localhost", "sslmode=require".into(), Expect::Ssl(true)),
        (&tls, "127.0.0.1", "sslmode=require".into(), Expect::Ssl(true)),
        // No sslmode: plaintext for now (not libpq's prefer; see tls.rs on the termination hang).
        (&tls, "127.0.0.1", String::new(), Expect::Ssl(false)),
        (&tls, "127.0.0.1", "sslmode=prefer".into(), Expect::Ssl(true)),
        (&tls, "127.0.0.1", "sslmode=disable".into(), Expect::Ssl(false)),
        (&tls, "localhost", format!("sslmode=verify-full&sslrootcert={ca}"), Expect::Ssl(true)),
        // The certificate names localhost only.
        (&tls, "127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}"), Expect::Refused("not valid for name")),
        // verify-ca checks the chain, not the name.
        (&tls, "127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}"), Expect::Ssl(true)),
        (&tls, "localhost", format!("sslmode=verify-ca&sslrootcert={wrong_ca}"), Expect::Refused("UnknownIssuer")),
        (&tls, "localhost", format!("sslmode=verify-full&sslrootcert={wrong_ca}"), Expect::Refused("UnknownIssuer")),
        // libpq: require with a root certificate is verify-ca.
        (&tls, "localhost", format!("sslmode=require&sslrootcert={wrong_ca}"), Expect::Refused("UnknownIssuer")),
        (
            &tls,
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".into(),
            Expect::Refused("cannot be read"),
        ),
        (&plain, "127.0.0.1", "sslmode=require".into(), Expect::Refused("server does not support TLS")),
        (
            &plain,
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            Expect::Refused("server does not support TLS"),
        ),
        (&plain, "127.0.0.1", "sslmode=prefer".into(), Expect::Ssl(false)),
        (&plain, "127.0.0.1", "sslmode=disable".into(), Expect::Ssl(false)),
    ];
    let mut failures = Vec::new();
    for (i, (cluster, host, params, expect)) in cases.into_iter().enumerate() {
        let sep = if params.is_empty() { "" } else { "&" };
        let url = cluster.url(host, &format!("application_name=case{i}{sep}{params}"));
        if let Err(e) = check(&url, &format!("case{i}"), expect).await {
            failures.push(format!("case {i} (ssl = {}): {url}\n    {e}", cluster.ssl));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

async fn check(url: &str, name: &str, expect: Expect) -> Result<(), String> {
    let mut config = PostgresConfig::new(url);
    config.pool_size_max = 2;
    config.connect_timeout_ms = 10_000;
    let connected = PostgresStore::connect(config.clone()).await;
    match (connected, expect) {
        (Ok(store), Expect::Ssl(ssl)) => {
            // The pool keeps the session it opened at connect; the inspection session is the
            // store's Connector with the same URL (so also `prefer`'s or `disable`'s choice).
            let (client, connection) =
                config.connector().map_err(|e| e.to_string())?.connect().await.map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let row = client
                .query_one(
                    "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS mine, \
                     array_agg(s.ssl) AS theirs \
                     FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                    &[&name],
                )
                .await
                .map_err(|e| e.to_string())?;
            let mine: bool = row.get("mine");
            let theirs: Vec<bool> = row.get("theirs");
            drop(client);
            let _ = driver.await;
            drop(store);
            if mine != ssl || theirs.len() < 2 || theirs.iter().any(|&s| s != ssl) {
                return Err(format!(
                    "expected ssl = {ssl}; this session: {mine}, the case's sessions (pool and this one): {theirs:?}"
                ));
            }
            Ok(())
        }
        (Err(ConnectError::Tls { context, source }), Expect::Refused(needle)) => {
            let full = format!("{context}: {}", source.map(|s| anyhow_like(&*s)).unwrap_or_default());
            let text = format!("{}", ConnectError::Tls { context, source: None });
            if !full.contains(needle) || !text.starts_with("TLS with PostgreSQL failed") {
                return Err(format!("refused, but the message does not say {needle:?}: {full}"));
            }
            Ok(())
        }
        (Ok(_), Expect::Refused(needle)) => Err(format!("connected; expected a refusal naming {needle:?}")),
        (Err(e), _) => Err(format!("unexpected error: {}", anyhow_like(&e))),
    }
}

/// The error and its causes on one line.
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}
