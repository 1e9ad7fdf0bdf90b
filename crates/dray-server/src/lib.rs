//! Dray's HTTP server: the `/v1` JSON API over a store, its OpenAPI document, problem+json
//! errors, long-poll leasing, configuration, logging and the process's life (start, graceful
//! shutdown).
//!
//! It wires things together and translates; it never decides what happens to a job. Requests are
//! converted with `dray-api`, carried out by a `dray_store::Store` with `now` read from
//! `dray_runtime::SystemClock`, and time passes through `dray_runtime::Maintenance`.
//!
//! ```no_run
//! # async fn run(args: dray_server::ServeArgs) -> anyhow::Result<()> {
//! let config = dray_server::Config::from_args(args)?;
//! dray_server::init_logging(config.log_format());
//! let running = dray_server::start(config).await?;
//! running.wait().await // until SIGTERM or SIGINT, then a graceful shutdown
//! # }
//! ```

mod app;
mod auth;
mod config;
mod dashboard;
mod due;
mod extract;
mod guard;
mod job_waiters;
mod limited;
mod listen;
mod locks;
mod login;
mod notify_map;
mod observe;
mod problem;
mod routes;
mod schedules;
mod schema;
mod serve;
mod sql_acks;
mod store;
mod tls;
mod tokens;
mod waiters;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dray_runtime::{Maintenance, MaintenanceConfig, SystemClock, TickReport};
use dray_store_embedded::EmbeddedStore;
use dray_store_postgres::{PostgresStore, TimeSource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{AuthMode, RouteScope, TOKEN_CACHE_TTL, route_scopes};
pub use config::{Config, LogFormat, ServeArgs, TlsFiles};
pub use dray_store_postgres::{Migrated, PostgresConfig, schema_version_latest};
pub use routes::openapi;

use crate::app::{App, Shared};
use crate::job_waiters::JobWaiters;
use crate::observe::Observer;
use crate::store::AnyStore;
use crate::waiters::Waiters;
use crate::workers::Workers;

/// Installs the global `tracing` subscriber: lines on stderr, filtered by `RUST_LOG` (default
/// `info`). A second call changes nothing.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: escape codes in a log file or pipe are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // Err only when a subscriber is already installed (a test, an embedding program): keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens the store, binds the listener and serves in the background; maintenance runs alongside.
/// Returns once the server accepts connections (at [`Running::addr`]).
///
/// Cancel safety: dropping the future while the store is opening leaves the opening to finish on
/// a blocking thread, and the store is then dropped (closed without a final flush).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    tracing::info!(
        listen = %config.listen(),
        store = if config.database().is_some() { "postgres" } else { "embedded" },
        body_bytes_max = config.body_bytes_max(),
        lease_wait_ms_max = config.lease_wait_ms_max(),
        shutdown_grace_ms = config.shutdown_grace_ms(),
        maintenance_interval_ms = config.maintenance().interval_ms,
        tls = config.tls().is_some(),
        header_timeout_ms = config.header_timeout_ms(),
        body_timeout_ms = config.body_timeout_ms(),
        idle_timeout_ms = config.idle_timeout_ms(),
        "dray serve starting"
    );
    // Before anything else: a certificate that cannot be used fails the start with the file named.
    let tls = match config.tls() {
        Some(files) => {
            let tls = tls::Tls::load(files)?;
            tracing::info!(cert = %files.cert.display(), key = %files.key.display(), "serving HTTPS");
            Some(Arc::new(tls))
        }
        None => None,
    };
    let transport = transport_settings(&config);
    // Bind first: a port already taken fails the start before the store creates or locks its
    // data directory (issue #18: a port clash used to leave a fresh empty data directory behind).
    // Connections that arrive while the store opens wait in the listen backlog.
    let listener = tokio::net::TcpListener::bind(config.listen())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen()))?;
    let addr = listener.local_addr().context("the listener has no local address")?;
    let store = Arc::new(open_store(&config).await?);
    dray_store::Store::payload_check_set(&*store, Arc::new(schema::SchemaCheck::default()));
    if let Err(e) = check_auth(&config, &store).await {
        drop(listener);
        close_store(store, Duration::ZERO).await?;
        return Err(e);
    }

    let clock = SystemClock::new();
    let waiters = Arc::new(Waiters::default());
    let observe = Arc::new(Observer::new(clock, config.metrics_queues_max()));
    let workers = Arc::new(Workers::new(clock));
    observe.workers_attach(workers.clone());
    let job_waiters = Arc::new(JobWaiters::default());
    observe.job_waiters_attach(job_waiters.clone());
    let app = App::new(Shared {
        store: store.clone(),
        clock,
        waiters: waiters.clone(),
        job_waiters: job_waiters.clone(),
        limited: Default::default(),
        lock_waiters: Default::default(),
        observe: observe.clone(),
        workers,
        body_bytes_max: config.body_bytes_max(),
        lease_wait_ms_max: config.lease_wait_ms_max(),
        guard: Arc::new(guard::Guard::new(config.allowed_hosts(), config.allowed_origins())),
        auth: Arc::new(auth::Auth::new(config.auth(), config.admin_token())),
        // Served over HTTPS: the dashboard's session cookie is `Secure`.
        cookie_secure: tls.is_some(),
    });

    let (stop_maintenance, maintenance_stopped) = watch::channel(false);
    // On PostgreSQL only the elected leader runs maintenance (see `maintain`).
    config.maintenance().validate().map_err(|e| anyhow::anyhow!("maintenance: {e}"))?;
    let wakeups = match &*store {
        AnyStore::Postgres(pg) => {
            let connection = listen_config(pg)?;
            let channel = pg.notify_channel().to_owned();
            let listening = listen::run(connection, channel, waiters.clone(), stop_maintenance.subscribe());
            // Delayed and retrying jobs wake this node's long-polls when due, leader or not.
            let due = due::run(store.clone(), clock, waiters.clone(), stop_maintenance.subscribe());
            // Acks made in SQL reach the metrics through the node that drains them.
            let sql_acks = sql_acks::run(app.clone(), stop_maintenance.subscribe());
            Some(tokio::spawn(async move {
                tokio::join!(listening, due, sql_acks);
            }))
        }
        AnyStore::Embedded(_) => None,
    };
    let maintenance = tokio::spawn(maintain(
        store.clone(),
        clock,
        config.maintenance(),
        waiters.clone(),
        observe,
        maintenance_stopped,
    ));

    let (stop_serving, serving_stopped) = watch::channel(false);
    if let Some(tls) = &tls {
        tokio::spawn(tls::reload_on_hangup(tls.clone(), serving_stopped.clone()));
    }
    let router = routes::router(app);
    let server = tokio::spawn(serve::run(listener, router, transport, tls.clone(), serving_stopped));
    tracing::info!(%addr, tls = tls.is_some(), "dray serve listening");
    Ok(Running {
        addr,
        tls: tls.is_some(),
        store,
        waiters,
        job_waiters,
        server: Some(server),
        stop_serving,
        maintenance,
        wakeups,
        stop_maintenance,
        grace: Duration::from_millis(config.shutdown_grace_ms()),
    })
}

/// The transport's limits: the configured ones, and the connection cap (given, or derived from
/// the open-file limit once that is raised to its hard limit).
fn transport_settings(config: &Config) -> serve::Settings {
    let (soft, hard) = serve::raise_nofile();
    let room = config.connections_max_default(soft.unwrap_or(u64::MAX));
    let connections_max = match config.connections_max() {
        Some(n) => {
            if soft.is_some() && n > room {
                tracing::warn!(
                    connections_max = n,
                    nofile = soft,
                    "--connections-max is more than the open-file limit leaves room for ({room}): past that, \
                     accepting pauses instead of answering 503"
                );
            }
            n
        }
        None => room,
    };
    tracing::info!(
        nofile_soft = soft,
        nofile_hard = hard,
        connections_max,
        derived = config.connections_max().is_none(),
        "open-file limit and connection cap"
    );
    serve::Settings {
        header_timeout: Duration::from_millis(config.header_timeout_ms()),
        body_timeout: Duration::from_millis(config.body_timeout_ms()),
        idle_timeout: Duration::from_millis(config.idle_timeout_ms()),
        connections_max,
        body_bytes_max: config.body_bytes_max(),
    }
}

/// A durability policy as written in the configuration (`always`, `interval=50`, `never`), for
/// logs: never Rust debug text such as `Interval { ms: 50 }`.
fn durability_text(durability: dray_store_embedded::Durability) -> String {
    use dray_store_embedded::Durability;
    match durability {
        Durability::Always => "always".to_owned(),
        Durability::Interval { ms } => format!("interval={ms}"),
        Durability::Never => "never".to_owned(),
    }
}

/// With `--auth required` and no admin token file, someone must already hold a token, or nobody
/// could ever authenticate: refuse to start unless the store holds a live token.
async fn check_auth(config: &Config, store: &AnyStore) -> anyhow::Result<()> {
    use dray_store::TokenStore;
    tracing::info!(auth = config.auth().as_str(), admin_token = config.admin_token().is_some(), "authentication");
    if config.auth() == AuthMode::None || config.admin_token().is_some() {
        return Ok(());
    }
    let now = dray_runtime::Clock::now(&SystemClock::new());
    let tokens = store.token_list().await.context("cannot read the API tokens")?;
    if !tokens.iter().any(|t| t.is_live(now)) {
        anyhow::bail!(
            "--auth required, but there is no --admin-token-file (DRAY_ADMIN_TOKEN_FILE) and the store holds no \
             live token: nobody could authenticate. Write a secret into a file and pass --admin-token-file FILE \
             (then create tokens with `dray tokens create`), or listen on 127.0.0.1 with --auth none"
        );
    }
    Ok(())
}

/// [`start`] was stopped by SIGTERM or SIGINT before the server was up (while it waited for the
/// database): not a failure, the process should exit cleanly.
#[derive(Debug)]
pub struct Interrupted {
    /// `SIGTERM` or `SIGINT`.
    pub signal: &'static str,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {} while waiting for the database", self.signal)
    }
}

impl std::error::Error for Interrupted {}

/// First pause after a failed attempt to open the PostgreSQL store at start; doubled each time.
const OPEN_RETRY_MS_MIN: u64 = 100;
/// The longest pause between attempts: a database that comes back is noticed within this (plus
/// the connect timeout).
const OPEN_RETRY_MS_MAX: u64 = 5_000;

/// Opens the configured store: the embedded one in its directory, or PostgreSQL (migrating the
/// schema if needed).
///
/// A PostgreSQL database that cannot be reached (down, not created yet, refusing connections) is
/// retried with backoff, forever, each failure logged with the URL's password redacted: nodes
/// started before their database (a whole system booting, a failover in progress) come up by
/// themselves when it does. SIGTERM or SIGINT meanwhile ends the wait with [`Interrupted`].
/// Configuration errors, a schema newer than this binary and a failed migration are not retried:
/// waiting would not change them.
async fn open_store(config: &Config) -> anyhow::Result<AnyStore> {
    match config.database() {
        None => {
            tracing::info!(
                data_dir = %config.data_dir().display(),
                durability = %durability_text(config.durability()),
                memory_budget_bytes = config.memory_budget_bytes(),
                "opening the embedded store"
            );
            let store_config = config.store();
            let dir = config.data_dir().display().to_string();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(store_config))
                .await
                .context("the task opening the store failed")?
                .with_context(|| format!("cannot open the store in {dir}"))?;
            Ok(AnyStore::Embedded(store))
        }
        Some(pg) => {
            // Nodes with skewed clocks would disagree on deadlines: production runs on the
            // database's clock only.
            if pg.time_source != TimeSource::Database {
                anyhow::bail!("the PostgreSQL store must use the database's clock (TimeSource::Database)");
            }
            tracing::info!(
                database = %pg.url_redacted(),
                schema = %pg.schema,
                pool_size_max = pg.pool_size_max,
                connect_timeout_ms = pg.connect_timeout_ms,
                statement_timeout_ms = pg.statement_timeout_ms,
                leader_ttl_ms = pg.leader_ttl_ms,
                "opening the PostgreSQL store"
            );
            let context = || format!("cannot open the PostgreSQL store (schema {})", pg.schema);
            let first = PostgresStore::connect(pg.clone()).await;
            let store = match first {
                Ok(store) => store,
                Err(e @ dray_store_postgres::ConnectError::Unavailable { .. }) => {
                    // Listening for signals only from here: once tokio handles SIGTERM the default
                    // action (exit) is gone for good, so a normal start leaves it alone. After a
                    // retried start, a signal arriving in the few milliseconds between this
                    // listener's end and `Running::wait`'s is not seen (tokio's listeners see only
                    // signals after they exist); a second one is.
                    let signal = shutdown_signal();
                    tokio::pin!(signal);
                    let mut failures = 1u32;
                    let mut pause_ms = OPEN_RETRY_MS_MIN;
                    let mut error = anyhow::Error::new(e);
                    loop {
                        tracing::warn!(
                            database = %pg.url_redacted(),
                            failures,
                            retry_ms = pause_ms,
                            error = %format!("{error:#}"),
                            "cannot reach the database; retrying (SIGTERM or SIGINT stops)"
                        );
                        let attempt = async {
                            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                            PostgresStore::connect(pg.clone()).await
                        };
                        let result = tokio::select! {
                            signal = &mut signal => {
                                let signal = signal?;
                                tracing::info!(signal, "stopped while waiting for the database");
                                return Err(Interrupted { signal }.into());
                            }
                            result = attempt => result,
                        };
                        match result {
                            Ok(store) => {
                                tracing::info!(failures, "the database is reachable: PostgreSQL store open");
                                break store;
                            }
                            Err(e @ dray_store_postgres::ConnectError::Unavailable { .. }) => {
                                failures += 1;
                                pause_ms = (pause_ms * 2).min(OPEN_RETRY_MS_MAX);
                                error = anyhow::Error::new(e);
                            }
                            Err(e) => return Err(e).with_context(context),
                        }
                    }
                }
                Err(e) => return Err(e).with_context(context),
            };
            Ok(AnyStore::Postgres(Box::new(store)))
        }
    }
}

/// The LISTEN connection's settings: the store's (URL, TLS, connect timeout), its own name.
fn listen_config(store: &PostgresStore) -> anyhow::Result<dray_store_postgres::Connector> {
    let mut connector = store.config().connector().context("--database")?;
    if connector.pg.get_application_name() == Some("dray") {
        connector.pg.application_name("dray-listen");
    }
    Ok(connector)
}

/// A server serving in the background. Stop it with [`Running::shutdown`], or hand it to
/// [`Running::wait`] to stop on SIGTERM/SIGINT. Dropping it also stops the server (waiting
/// long-polls are answered), but in the background and without closing the store: its last
/// request drops it, unflushed under a relaxed durability policy.
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the port the OS picked, when configured with port 0).
    pub addr: SocketAddr,
    /// Whether it serves HTTPS.
    tls: bool,
    store: Arc<AnyStore>,
    waiters: Arc<Waiters>,
    job_waiters: Arc<JobWaiters>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    stop_serving: watch::Sender<bool>,
    maintenance: JoinHandle<()>,
    /// PostgreSQL mode: the task listening for other nodes' wake-ups, and the due-time timer.
    wakeups: Option<JoinHandle<()>>,
    stop_maintenance: watch::Sender<bool>,
    grace: Duration,
}

impl Running {
    /// The server's base URL: `http://ADDR`, or `https://ADDR` when it serves HTTPS.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Lease requests currently long-polling (waiting for a job). For metrics and tests.
    pub fn lease_waiting(&self) -> usize {
        self.waiters.waiting()
    }

    /// Requests waiting for a job to finish (`GET /v1/jobs/{id}?wait_ms=`) on this node. For
    /// metrics and tests.
    pub fn job_waiting(&self) -> usize {
        self.job_waiters.waiting()
    }

    /// Whether this node runs maintenance now: always in embedded mode (one process); in
    /// PostgreSQL mode while it holds the leader's lease. For metrics and tests.
    pub fn is_leader(&self) -> bool {
        match &*self.store {
            AnyStore::Embedded(_) => true,
            AnyStore::Postgres(pg) => pg.leadership().is_leader(),
        }
    }

    /// Waits for SIGTERM or SIGINT (Ctrl-C), then shuts down gracefully. Returns early with an
    /// error if the server stops on its own.
    pub async fn wait(self) -> anyhow::Result<()> {
        let signals = shutdown_signals()?;
        self.wait_with(signals).await
    }

    /// [`Running::wait`] with signals listened for since [`shutdown_signals`] was called: `dray
    /// serve` starts listening before it prints its address, so a supervisor that signals as soon
    /// as it reads the address is never missed (nor kills the process by the default action).
    pub async fn wait_with(mut self, signals: impl Future<Output = &'static str>) -> anyhow::Result<()> {
        let mut server = self.server.take().expect("a running server has its task");
        let ended = tokio::select! {
            name = signals => {
                tracing::info!(signal = name, "shutting down");
                None
            }
            result = &mut server => Some(result),
        };
        match ended {
            None => {
                self.server = Some(server);
                self.shutdown().await
            }
            Some(result) => {
                let why = match result {
                    Ok(Ok(())) => anyhow::anyhow!("the server stopped on its own"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("the server stopped"),
                    Err(e) => anyhow::Error::new(e).context("the server task failed"),
                };
                if let Err(e) = self.shutdown().await {
                    tracing::warn!(error = %format!("{e:#}"), "shutdown after the server stopped");
                }
                Err(why)
            }
        }
    }

    /// Stops gracefully: stops accepting connections, answers waiting long-polls (with what they
    /// have: nothing), lets requests in flight finish within the grace period, stops maintenance,
    /// then closes the store (which makes everything logged durable).
    ///
    /// Cancel safety: dropping the future part-way leaves the server stopping but the store
    /// unclosed (it is closed without a final flush when the last reference goes).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.waiters.close();
        self.job_waiters.close();
        let _ = self.stop_serving.send(true);
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the server task failed"),
                Err(_) => {
                    tracing::warn!(
                        grace_ms = self.grace.as_millis() as u64,
                        "requests still in flight after the grace period; abandoning them"
                    );
                    server.abort();
                }
            }
        }
        let _ = self.stop_maintenance.send(true);
        if let Err(e) = (&mut self.maintenance).await {
            tracing::warn!(error = %e, "the maintenance task failed");
        }
        if let Some(wakeups) = self.wakeups.take()
            && let Err(e) = wakeups.await
        {
            tracing::warn!(error = %e, "the LISTEN task failed");
        }
        let store = self.store.clone();
        drop(self);
        close_store(store, remaining(deadline)).await?;
        tracing::info!("dray serve stopped");
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the senders stops serving and maintenance; long-polls need telling.
        self.waiters.close();
        self.job_waiters.close();
    }
}

fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline.saturating_duration_since(tokio::time::Instant::now())
}

/// Closes the store once this is its last reference. Connection tasks let go of theirs just after
/// the server reports them done, so wait a little (at most `patience`, and a few scheduler turns
/// at least) for that.
async fn close_store(mut store: Arc<AnyStore>, patience: Duration) -> anyhow::Result<()> {
    /// Turns of the scheduler to give tasks that are finishing before checking the clock.
    const YIELDS_MIN: u32 = 64;
    /// Between checks once the quick turns are spent.
    const RETRY_MS: u64 = 5;
    let deadline = tokio::time::Instant::now() + patience;
    let mut turns = 0u32;
    let store = loop {
        match Arc::try_unwrap(store) {
            Ok(store) => break store,
            Err(shared) => store = shared,
        }
        turns += 1;
        if turns < YIELDS_MIN {
            tokio::task::yield_now().await;
        } else if tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
        } else {
            anyhow::bail!(
                "cannot close the store: {} requests still hold it after the grace period",
                Arc::strong_count(&store) - 1
            );
        }
    };
    store.close().await
}

/// The maintenance loop, plus one thing the server needs: when a tick promoted or expired jobs,
/// waiting long-polls are woken to try again.
///
/// Maintenance runs on the leader only. Embedded, the one process is the leader. On PostgreSQL
/// this also takes part in the leader election (`dray_store_postgres::Leadership`) and ticks
/// only during this node's terms: a tick in progress when the term ends is dropped (safe: see
/// `Maintenance::tick`), and the store fences every maintenance statement with the term's epoch
/// besides. On `stop`, maintenance ends first, then the lease is released so another node takes
/// over without waiting for the TTL.
async fn maintain(
    store: Arc<AnyStore>,
    clock: SystemClock,
    config: MaintenanceConfig,
    waiters: Arc<Waiters>,
    observe: Arc<Observer>,
    stop: watch::Receiver<bool>,
) {
    let mut on_tick = |report: &TickReport| {
        observe.maintained(report);
        let fired = report.ticked.iter().any(|t| t.fired.iter().any(|f| f.job.is_some()));
        if report.promoted > 0 || report.expired > 0 || fired {
            waiters.wake_all();
        }
    };
    let new_maintenance = || Maintenance::new(store.clone(), clock, config).expect("validated by start");
    let leadership = match &*store {
        AnyStore::Postgres(pg) => pg.leadership().clone(),
        AnyStore::Embedded(_) => return new_maintenance().run_with(stop, on_tick).await,
    };
    let (stop_election, election_stopped) = watch::channel(false);
    let election = leadership.run(election_stopped);
    let terms = async {
        let mut terms = leadership.subscribe();
        let mut stop = stop.clone();
        loop {
            let epoch = tokio::select! {
                biased;
                _ = stop.wait_for(|&s| s) => break,
                term = terms.wait_for(Option::is_some) => match term {
                    Ok(term) => term.map(|t| t.epoch()),
                    Err(_) => break,
                },
            };
            let (end_term, term_over) = watch::channel(false);
            let watch_term = async {
                tokio::select! {
                    _ = stop.wait_for(|&s| s) => {}
                    _ = terms.wait_for(|t| t.map(|t| t.epoch()) != epoch) => {}
                }
                let _ = end_term.send(true);
            };
            tokio::join!(new_maintenance().run_with(term_over, &mut on_tick), watch_term);
        }
        // Maintenance has stopped: now hand the lease over.
        let _ = stop_election.send(true);
    };
    tokio::join!(election, terms);
}

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    Ok(shutdown_signals()?.await)
}

/// Listens for SIGTERM and SIGINT from now on (a signal sent before the returned future is first
/// polled is kept), and resolves with the first one's name. Pass it to [`Running::wait_with`] to
/// start listening before the server announces itself.
pub fn shutdown_signals() -> anyhow::Result<impl Future<Output = &'static str> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// `dray migrate`: brings the PostgreSQL schema up to date (safe while nodes run or start) and
/// returns what it did. `schema` defaults to `dray`.
pub async fn migrate(url: &str, schema: Option<&str>) -> anyhow::Result<Migrated> {
    let mut pg = dray_store_postgres::PostgresConfig::new(url);
    if let Some(schema) = schema {
        pg.schema = schema.to_owned();
    }
    pg.validate().map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    dray_store_postgres::migrate(&pg).await.with_context(|| format!("cannot migrate schema {}", pg.schema))
}
