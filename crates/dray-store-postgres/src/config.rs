//! How a PostgreSQL store connects: the raw configuration, its validation, and the connection
//! settings every pooled session gets.

use std::fmt;
use std::time::Duration;

use dray_core::Invalid;
use dray_core::limits::check_range;
use tokio_postgres::Socket;

use crate::error::ConnectError;
use crate::tls::{Tls, TlsParams, TlsStream, split_url};

/// Where the store takes `now` from.
///
/// Every SQL statement that compares with the clock uses `coalesce($now, now())`; this decides
/// what `$now` is. The Rust side (`dray_core::transition`) gets the very same instant: in
/// `Database` mode it reads `now()` in the same transaction (PostgreSQL's `now()` is the start
/// of the transaction, so every statement of it sees one instant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// Production: the database's clock, shared by every node. `params.now` is ignored.
    #[default]
    Database,
    /// Tests: `params.now`, so the conformance suite can drive time. Never in production: nodes
    /// with skewed clocks would disagree on deadlines.
    Params,
}

/// The PostgreSQL store's configuration. Start from [`PostgresConfig::new`].
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq-style URL (`postgres://user@host:5432/db`) or key=value string.
    pub url: String,
    /// The schema that holds every table, sequence and index of the store. Lowercase ASCII
    /// letters, digits and `_`, starting with a letter or `_`, at most
    /// [`PostgresConfig::SCHEMA_BYTES_MAX`] bytes (so `<schema>_jobs` is a valid channel name).
    pub schema: String,
    /// Connections in the pool.
    pub pool_size_max: usize,
    /// Bounds opening a connection (TCP connect and the startup handshake) and waiting for a free
    /// pooled connection.
    pub connect_timeout_ms: u64,
    /// `statement_timeout` of every session: a statement running longer is cancelled and the
    /// operation fails with `Unavailable`. A whole store call gets this plus `connect_timeout_ms`
    /// before the store gives up waiting for an answer (`Unavailable`) and drops the connection.
    pub statement_timeout_ms: u64,
    pub time_source: TimeSource,
    /// How long an idempotency key returns the original job (see `docs/semantics.md`).
    pub idempotency_window_ms: u64,
    /// The leader's lease ([`crate::Leadership`]): a leader renews it every third of this, and
    /// when a leader vanishes another node takes over at most this long after its last renewal
    /// (plus one follower poll, a third of it). Shorter means faster failover and more renewals.
    pub leader_ttl_ms: u64,
}

impl PostgresConfig {
    pub const SCHEMA_DEFAULT: &'static str = "dray";
    /// 63 (PostgreSQL's identifier limit) minus the `_jobs` suffix of the notification channel.
    pub const SCHEMA_BYTES_MAX: usize = 58;
    pub const POOL_SIZE_MAX_DEFAULT: usize = 16;
    pub const POOL_SIZE_MAX_MAX: usize = 1_024;
    pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
    pub const CONNECT_TIMEOUT_MS_MAX: u64 = 300_000;
    pub const STATEMENT_TIMEOUT_MS_DEFAULT: u64 = 30_000;
    pub const STATEMENT_TIMEOUT_MS_MAX: u64 = 3_600_000;
    /// Five seconds: failover within seconds, for a renewal every 1.7 s (a one-row update).
    pub const LEADER_TTL_MS_DEFAULT: u64 = 5_000;
    /// A renewal must fit in a quarter of the TTL (its own timeout), network round trip included.
    pub const LEADER_TTL_MS_MIN: u64 = 500;
    pub const LEADER_TTL_MS_MAX: u64 = 600_000;

    /// Every option at its default: schema `dray`, 16 connections, 5 s to connect, 30 s per
    /// statement, the database's clock, the default idempotency window, a 5 s leader lease.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            schema: Self::SCHEMA_DEFAULT.to_owned(),
            pool_size_max: Self::POOL_SIZE_MAX_DEFAULT,
            connect_timeout_ms: Self::CONNECT_TIMEOUT_MS_DEFAULT,
            statement_timeout_ms: Self::STATEMENT_TIMEOUT_MS_DEFAULT,
            time_source: TimeSource::Database,
            idempotency_window_ms: dray_core::Limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            leader_ttl_ms: Self::LEADER_TTL_MS_DEFAULT,
        }
    }

    /// Checks every field; the error names the field and the limit.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate_schema(&self.schema)?;
        check_range("pool_size_max", self.pool_size_max, 1, Self::POOL_SIZE_MAX_MAX, "")?;
        check_range("connect_timeout_ms", self.connect_timeout_ms, 1, Self::CONNECT_TIMEOUT_MS_MAX, "")?;
        check_range("statement_timeout_ms", self.statement_timeout_ms, 1, Self::STATEMENT_TIMEOUT_MS_MAX, "")?;
        check_range(
            "idempotency_window_ms",
            self.idempotency_window_ms,
            1,
            dray_core::Limits::IDEMPOTENCY_WINDOW_MS_MAX,
            "",
        )?;
        check_range("leader_ttl_ms", self.leader_ttl_ms, Self::LEADER_TTL_MS_MIN, Self::LEADER_TTL_MS_MAX, " ms")?;
        self.pg_config()?;
        Ok(())
    }

    /// The driver's configuration: the URL plus the session settings the store relies on.
    ///
    /// `synchronous_commit=on` is set on every connection, whatever the server or database
    /// default: "accepted means durable" must not depend on how someone configured the server.
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, Invalid> {
        Ok(self.pg_config_tls()?.0)
    }

    /// [`PostgresConfig::pg_config`] and the TLS settings the driver does not parse itself.
    fn pg_config_tls(&self) -> Result<(tokio_postgres::Config, TlsParams), Invalid> {
        let (url, tls) = split_url(&self.url)?;
        let mut pg: tokio_postgres::Config =
            url.parse().map_err(|e| Invalid::new("url", format!("is not a PostgreSQL connection string: {e}")))?;
        let ours =
            format!("-c synchronous_commit=on -c statement_timeout={} -c TimeZone=UTC", self.statement_timeout_ms);
        let options = match pg.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        pg.options(options);
        if pg.get_application_name().is_none() {
            pg.application_name("dray");
        }
        pg.connect_timeout(self.connect_timeout());
        Ok((pg, tls))
    }

    /// How to open a session like the store's own (the URL's settings, `sslmode` and
    /// `sslrootcert` included, plus the session settings above), for a connection outside the
    /// pool: the server's LISTEN connection, tests. Reads the CA certificates the URL names.
    pub fn connector(&self) -> Result<Connector, ConnectError> {
        let (pg, params) = self.pg_config_tls()?;
        let tls = Tls::new(&params).map_err(|e| ConnectError::Tls {
            context: format!("cannot set up TLS for {}", redact(&self.url)),
            source: Some(Box::new(e)),
        })?;
        Ok(Connector { pg, tls })
    }

    /// The URL with any password replaced by `***`, for logs and error messages.
    pub fn url_redacted(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The client-side bound of one store call: one statement's worth of server time plus a
    /// connection's worth of waiting. The server bounds each statement; this bounds what the
    /// server cannot, a database that stops answering altogether.
    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms.saturating_add(self.connect_timeout_ms))
    }
}

/// Opens sessions as the store does: the driver's settings and the TLS connector that goes with
/// them. From [`PostgresConfig::connector`].
#[derive(Clone, Debug)]
pub struct Connector {
    /// The driver's settings; change them (an application name) before connecting.
    pub pg: tokio_postgres::Config,
    pub tls: Tls,
}

impl Connector {
    /// Connects once; the caller must poll (spawn) the returned connection.
    ///
    /// Cancel safety: dropping the future drops the half-open connection.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio_postgres::Connection<Socket, TlsStream<Socket>>), tokio_postgres::Error>
    {
        self.pg.connect(self.tls.clone()).await
    }
}

fn validate_schema(schema: &str) -> Result<(), Invalid> {
    if schema.is_empty() {
        return Err(Invalid::new("schema", "must not be empty"));
    }
    if schema.len() > PostgresConfig::SCHEMA_BYTES_MAX {
        return Err(Invalid::new(
            "schema",
            format!("is {} bytes; the limit is {}", schema.len(), PostgresConfig::SCHEMA_BYTES_MAX),
        ));
    }
    let first_ok = schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    let rest_ok = schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.starts_with("pg_") {
        return Err(Invalid::new(
            "schema",
            "must be lowercase ASCII letters, digits and _, start with a letter or _, and not start with pg_",
        ));
    }
    Ok(())
}

impl fmt::Debug for PostgresConfig {
    /// Never prints a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size_max", &self.pool_size_max)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("time_source", &self.time_source)
            .field("idempotency_window_ms", &self.idempotency_window_ms)
            .field("leader_ttl_ms", &self.leader_ttl_ms)
            .finish()
    }
}

/// The URL with any password replaced: `postgres://user:***@host/db`, `password=***`.
pub(crate) fn redact(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!("{}{}:***{}", &url[..scheme_end + 3], &rest[..colon], &rest[at..]);
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| if kv.starts_with("password=") { "password=***" } else { kv })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        let mut c = PostgresConfig::new("postgres://postgres@127.0.0.1/test");
        assert!(c.validate().is_ok());
        for bad in ["", "Dray", "1dray", "dr-ay", "pg_dray", &"s".repeat(59)] {
            c.schema = bad.to_owned();
            assert_eq!(c.validate().unwrap_err().field, "schema", "{bad:?}");
        }
        c.schema = "_dray_2".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bounds_name_the_field() {
        let mut c = PostgresConfig::new("postgres://postgres@127.0.0.1/test");
        c.pool_size_max = 0;
        assert_eq!(c.validate().unwrap_err().to_string(), "pool_size_max: is 0; allowed is 1 to 1024");
        let mut c = PostgresConfig::new("postgres://postgres@127.0.0.1/test");
        c.leader_ttl_ms = 100;
        assert_eq!(c.validate().unwrap_err().to_string(), "leader_ttl_ms: is 100 ms; allowed is 500 ms to 600000 ms");
        let mut c = PostgresConfig::new("postgres://postgres@127.0.0.1/test");
        c.url = "postgres://host:notaport/x".into();
        assert_eq!(c.validate().unwrap_err().field, "url");
    }

    #[test]
    fn passwords_never_printed() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h password=secret user=u"), "host=h password=*** user=u");
        let c = PostgresConfig::new("postgres://u:secret@h/db");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn sessions_always_commit_synchronously() {
        let mut c = PostgresConfig::new("postgres://u@h/db?options=-c%20work_mem%3D64MB");
        c.statement_timeout_ms = 1_234;
        let pg = c.pg_config().unwrap();
        let options = pg.get_options().unwrap();
        assert!(options.starts_with("-c work_mem=64MB "), "{options}");
        assert!(options.contains("-c synchronous_commit=on"), "{options}");
        assert!(options.contains("-c statement_timeout=1234"), "{options}");
    }
}
