//! Mapping database and pool errors to the store's errors.
//!
//! A database that cannot be reached, a lost connection, a timeout, a failed commit: all are
//! `store::Error::Unavailable`, because the caller cannot know whether the change happened. A
//! refused change (a stale lease) is never an error here: it is decided in Rust by
//! `dray_core::transition`, before anything is written.

use dray_core::Invalid;
use dray_store::Error;
use tokio_postgres::error::SqlState;

use crate::config::{PostgresConfig, redact};
use crate::tls::{TlsError, split_url};

/// Why a store could not be opened or its schema migrated.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is invalid; the error names the field.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The database cannot be reached (or did not answer in time).
    #[error("PostgreSQL unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// TLS failed: the CA certificates cannot be used, the server's certificate was refused, or
    /// the server does not offer TLS where `sslmode` requires it. Trying again would not help,
    /// unlike [`ConnectError::Unavailable`].
    #[error("TLS with PostgreSQL failed: {context}")]
    Tls {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The schema holds migrations this binary does not know: a newer Dray ran on this database.
    #[error("schema {schema} is at version {found}, newer than this binary knows ({known}); upgrade Dray")]
    SchemaTooNew { schema: String, found: i32, known: i32 },
    /// A migration failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// A failed connection attempt: [`ConnectError::Tls`] when TLS was refused (retrying
    /// cannot help), else [`ConnectError::Unavailable`].
    pub(crate) fn connecting(config: &PostgresConfig, source: tokio_postgres::Error) -> ConnectError {
        if is_tls_refusal(&source) {
            let mode = split_url(&config.url).map_or("?", |(_, params)| params.mode.as_str());
            return ConnectError::Tls {
                context: format!("cannot connect to {} with sslmode={mode}", redact(&config.url)),
                source: Some(Box::new(source)),
            };
        }
        ConnectError::Unavailable {
            context: format!("cannot connect to {}", redact(&config.url)),
            source: Some(source),
        }
    }

    pub(crate) fn timeout(config: &PostgresConfig) -> ConnectError {
        ConnectError::Unavailable {
            context: format!(
                "no connection to {} within the connect timeout of {} ms",
                redact(&config.url),
                config.connect_timeout_ms
            ),
            source: None,
        }
    }
}

/// Whether a connection failed because TLS was refused rather than because the server could not
/// be reached. tokio-postgres has no public error kinds, so this looks at the cause it keeps: our
/// own connector's errors, a rustls error inside the handshake's I/O error (a certificate that
/// does not verify, a TLS alert), or the driver's own messages for a server without TLS under
/// `sslmode=require` and a TLS connection without a host name. A connection reset or closed
/// during the handshake is none of these: it stays "unavailable", and is retried.
pub(crate) fn is_tls_refusal(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    let Some(cause) = e.source() else { return false };
    if cause.downcast_ref::<TlsError>().is_some() {
        return true;
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        return io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    }
    e.as_db_error().is_none()
        && matches!(
            cause.to_string().as_str(),
            "server does not support TLS" | "no hostname provided for TLS handshake"
        )
}

/// A store call's view: everything but bad input means "unavailable".
impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Error {
        match e {
            ConnectError::Invalid(invalid) => Error::Invalid(invalid),
            other => Error::Unavailable { context: other.to_string(), source: Some(Box::new(other)) },
        }
    }
}

pub(crate) fn db_context(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ConnectError {
    move |source| ConnectError::Unavailable { context: context.to_owned(), source: Some(source) }
}

/// Why one attempt at a transaction did not produce a result.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Someone else changed what this transaction relies on (a serialization failure, a deadlock,
    /// a guard that matched fewer rows than were locked, an idempotency key claimed meanwhile):
    /// run the whole transaction again. The next attempt reads the new state, so it answers as the
    /// embedded store would (a duplicate, a stale lease...).
    Retry(&'static str),
    /// The answer, an error for the caller (unavailable, not found, rejected, invalid).
    Store(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Store(e)
    }
}

impl From<Invalid> for Fail {
    fn from(e: Invalid) -> Fail {
        Fail::Store(Error::Invalid(e))
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        match e.code() {
            Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
                Fail::Retry("a concurrent transaction conflicted")
            }
            _ => Fail::Store(db_error(e)),
        }
    }
}

/// Any database error as "unavailable: outcome unknown". The database's message is kept as the
/// source for logs; the context says what kind of failure it was.
pub(crate) fn db_error(e: tokio_postgres::Error) -> Error {
    let context = match e.code() {
        Some(code) if *code == SqlState::QUERY_CANCELED => "a statement exceeded the statement timeout".to_owned(),
        Some(code) => format!("the database refused a statement ({})", code.code()),
        None if e.is_closed() => "the connection to the database was lost".to_owned(),
        None => "the database call failed (connection, protocol or parameter encoding)".to_owned(),
    };
    Error::Unavailable { context, source: Some(Box::new(e)) }
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    let context = match &e {
        PoolError::Timeout(_) => "no database connection within the connect timeout".to_owned(),
        PoolError::Backend(_) => "cannot connect to the database".to_owned(),
        PoolError::Closed => "the store is closed".to_owned(),
        other => format!("database connection pool: {other}"),
    };
    Error::Unavailable { context, source: Some(Box::new(e)) }
}

/// A row the store wrote that it cannot read back: the schema was changed by hand, or a bug.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Unavailable { context: format!("unexpected data in the database: {what}"), source: None }
}
