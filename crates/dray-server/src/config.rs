//! Configuration in two steps: raw settings from a TOML file, the environment and flags (each
//! later source overriding the earlier), then one validated [`Config`] the server runs with.
//!
//! Every option is documented here once: its flag, its `DRAY_*` variable, its file key, its
//! default and its bounds. An error names the option where it came from and the allowed range.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use dray_runtime::MaintenanceConfig;
use dray_store_embedded::{Durability, EmbeddedConfig};
use dray_store_postgres::{PostgresConfig, TimeSource};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The options of `dray serve`. Each can also be set in the environment (`DRAY_*`) or in the
/// `--config` file; a flag beats the environment, which beats the file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on, e.g. 0.0.0.0:7700 or localhost:7700 (a host name is resolved
    /// at start: its first IPv4 address, else its first IPv6 one) [default: 127.0.0.1:7700].
    #[arg(long, env = "DRAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the embedded store [default: ./dray-data].
    #[arg(long, env = "DRAY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// When an accepted change is on disk: `always` (fsync before every reply), `interval=<ms>`
    /// or `never` [default: always]. Only `always` loses nothing acknowledged on power loss.
    #[arg(long, env = "DRAY_DURABILITY", value_name = "POLICY")]
    pub durability: Option<String>,
    /// Bytes of job data held in memory before enqueues are refused with 503; a number or a size
    /// like 512MiB or 2GB [default: half the machine's memory].
    #[arg(long, env = "DRAY_MEMORY_BUDGET_BYTES", value_name = "BYTES", value_parser = parse_bytes_arg)]
    pub memory_budget_bytes: Option<u64>,
    /// A TOML file with any of these options (keys in snake_case: `data_dir = "/var/lib/dray"`).
    #[arg(long, env = "DRAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr [default: text]. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "DRAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest request body; larger requests get 413; a number or a size like 24MiB [default:
    /// 25165824 (24 MiB)].
    #[arg(long, env = "DRAY_BODY_BYTES_MAX", value_name = "BYTES", value_parser = parse_bytes_arg)]
    pub body_bytes_max: Option<u64>,
    /// Longest a lease request may wait for a job (its `wait_ms` is cut to this) [default: 30000].
    #[arg(long, env = "DRAY_LEASE_WAIT_MS_MAX", value_name = "MS")]
    pub lease_wait_ms_max: Option<u64>,
    /// On SIGTERM/SIGINT, how long requests in flight may take to finish [default: 10000].
    #[arg(long, env = "DRAY_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Distinct queue names used as a `queue` label in /metrics; later queues share the label
    /// `_other` [default: 1000].
    #[arg(long, env = "DRAY_METRICS_QUEUES_MAX", value_name = "N")]
    pub metrics_queues_max: Option<u64>,
    /// Run on PostgreSQL instead of the embedded store (`postgres://user@host:5432/db`); many
    /// nodes may share one database. `--data-dir` is then unused.
    #[arg(long, env = "DRAY_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// The schema holding Dray's tables [default: dray].
    #[arg(long, env = "DRAY_DATABASE_SCHEMA", value_name = "NAME")]
    pub database_schema: Option<String>,
    /// Pooled connections per node; each node opens two more outside the pool, one for LISTEN and
    /// one for the leader election [default: 16].
    #[arg(long, env = "DRAY_DATABASE_POOL_SIZE_MAX", value_name = "N")]
    pub database_pool_size_max: Option<u64>,
    /// Bound on opening a connection and on waiting for a pooled one [default: 5000].
    #[arg(long, env = "DRAY_DATABASE_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub database_connect_timeout_ms: Option<u64>,
    /// `statement_timeout` of every session [default: 30000].
    #[arg(long, env = "DRAY_DATABASE_STATEMENT_TIMEOUT_MS", value_name = "MS")]
    pub database_statement_timeout_ms: Option<u64>,
    /// The leader's lease: maintenance runs on one elected node, and another takes over at most
    /// this long (plus a third of it) after the leader vanishes [default: 5000].
    #[arg(long, env = "DRAY_DATABASE_LEADER_TTL_MS", value_name = "MS")]
    pub database_leader_ttl_ms: Option<u64>,
    /// Host names clients use to reach this server, besides loopback names and IP addresses; a
    /// request naming another host gets 421 (the defence against DNS rebinding). Comma-separated.
    #[arg(long, env = "DRAY_ALLOWED_HOSTS", value_name = "NAMES", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ops.example.com`) whose web pages may call this server; pages on any
    /// other origin get 403. Comma-separated [default: only the server's own].
    #[arg(long, env = "DRAY_ALLOWED_ORIGINS", value_name = "ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Whether requests need a token (`Authorization: Bearer`): `required` or `none` [default:
    /// required when --admin-token-file is given or the listen address is not loopback, else
    /// none]. `none` on a non-loopback address refuses to start.
    #[arg(long, env = "DRAY_AUTH", value_enum)]
    pub auth: Option<crate::AuthMode>,
    /// A file holding the bootstrap admin token, a secret you choose (surrounding whitespace is
    /// trimmed). Dray reads it at start and never writes it; use it to create other tokens.
    #[arg(long, env = "DRAY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first); needs
    /// --tls-key. Both files are read again on SIGHUP.
    #[arg(long, env = "DRAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "DRAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// How long a client may take to send a request's head (line and headers), from the
    /// connection's start or from the first byte of a later request; then the connection is
    /// closed [default: 10000].
    #[arg(long, env = "DRAY_HEADER_TIMEOUT_MS", value_name = "MS")]
    pub header_timeout_ms: Option<u64>,
    /// How long a client may take to send a request's body, from the end of its head; a body
    /// still unfinished then gets 408 and the connection is closed. The handler's own time (a
    /// long-poll's wait) does not count [default: 30000].
    #[arg(long, env = "DRAY_BODY_TIMEOUT_MS", value_name = "MS")]
    pub body_timeout_ms: Option<u64>,
    /// How long a kept-alive connection may sit idle between requests before it is closed
    /// [default: 60000].
    #[arg(long, env = "DRAY_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Open client connections at most; more are answered 503 and closed at once [default: the
    /// open-file limit (raised to its hard limit at start) less 256 descriptors kept for the store,
    /// less the database pool in PostgreSQL mode; at least 16, at most 65536].
    #[arg(long, env = "DRAY_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<u64>,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The validated configuration the server runs with. Build it with [`Config::from_args`] (or
/// [`Config::for_test`]); read it with the accessors.
#[derive(Clone, Debug)]
pub struct Config {
    listen: SocketAddr,
    data_dir: PathBuf,
    durability: Durability,
    memory_budget_bytes: u64,
    log_format: LogFormat,
    body_bytes_max: usize,
    lease_wait_ms_max: u64,
    shutdown_grace_ms: u64,
    metrics_queues_max: usize,
    maintenance: MaintenanceConfig,
    /// `Some`: PostgreSQL mode (the embedded settings are unused).
    database: Option<PostgresConfig>,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    auth: crate::AuthMode,
    /// The bootstrap admin token, read from `--admin-token-file`.
    admin_token: Option<Secret>,
    /// `--tls-cert` and `--tls-key`: serve HTTPS.
    tls: Option<TlsFiles>,
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    idle_timeout_ms: u64,
    /// `None`: derived from the open-file limit at start (see [`Config::connections_max_default`]).
    connections_max: Option<usize>,
}

/// The certificate chain and private key files of `--tls-cert` and `--tls-key` (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Config {
    pub const LISTEN_DEFAULT: &str = "127.0.0.1:7700";
    pub const DATA_DIR_DEFAULT: &str = "./dray-data";
    /// A durable `interval` policy syncs at least this often.
    pub const DURABILITY_INTERVAL_MS_MIN: u64 = 1;
    pub const DURABILITY_INTERVAL_MS_MAX: u64 = 60_000;
    /// Below this the store could hardly hold a batch.
    pub const MEMORY_BUDGET_BYTES_MIN: u64 = 16 * 1024 * 1024;
    /// 24 MiB: a batch of 10,000 small jobs (`Limits::BATCH_JOBS_MAX`) fits, and so does a batch
    /// near `Limits::BATCH_BYTES_MAX` (16 MiB of payload) with its JSON around it.
    pub const BODY_BYTES_MAX_DEFAULT: u64 = 24 * 1024 * 1024;
    pub const BODY_BYTES_MAX_MIN: u64 = 64 * 1024;
    pub const BODY_BYTES_MAX_MAX: u64 = 1024 * 1024 * 1024;
    pub const LEASE_WAIT_MS_MAX_DEFAULT: u64 = 30_000;
    /// Ten minutes: longer than most proxies keep an idle request open anyway.
    pub const LEASE_WAIT_MS_MAX_MAX: u64 = 600_000;
    pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 10_000;
    pub const SHUTDOWN_GRACE_MS_MAX: u64 = 600_000;
    /// Every queue label is a set of time series in Prometheus (a dozen per queue): a thousand
    /// queues is about what one Prometheus takes from one server without strain.
    pub const METRICS_QUEUES_MAX_DEFAULT: u64 = 1_000;
    pub const METRICS_QUEUES_MAX_MAX: u64 = 100_000;
    /// An admin token shorter than this is accepted with a warning.
    pub const ADMIN_TOKEN_BYTES_WEAK: usize = 16;
    pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
    pub const BODY_TIMEOUT_MS_DEFAULT: u64 = 30_000;
    pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
    /// The longest any of the three transport timeouts may be set to: an hour.
    pub const TRANSPORT_TIMEOUT_MS_MAX: u64 = 3_600_000;
    pub const CONNECTIONS_MAX_MAX: u64 = 1_000_000;
    /// Descriptors kept back from the open-file limit for the store (log segments, snapshots, the
    /// directory lock, the PostgreSQL connections outside the pool) and the process itself.
    pub const FDS_RESERVED: u64 = 256;
    /// Bounds of the derived default connection cap.
    pub const CONNECTIONS_MAX_DEFAULT_MIN: u64 = 16;
    pub const CONNECTIONS_MAX_DEFAULT_MAX: u64 = 65_536;
    /// Maintenance in tests ticks this often, so expiries and promotions show up quickly.
    const TEST_MAINTENANCE_INTERVAL_MS: u64 = 10;

    /// Reads the file named by `--config` (if any), lays the environment and flags over it, and
    /// validates the result. Errors name the option and its limit.
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => FileSettings::read(path)?,
            None => FileSettings::default(),
        };
        Raw::layer(args, file).validate()
    }

    /// For tests: listens on 127.0.0.1 with a port the OS picks, fsyncs every change, and runs
    /// maintenance every 10 ms.
    pub fn for_test(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            durability: Durability::Always,
            memory_budget_bytes: EmbeddedConfig::new(data_dir).memory_budget_bytes,
            log_format: LogFormat::Text,
            body_bytes_max: Self::BODY_BYTES_MAX_DEFAULT as usize,
            lease_wait_ms_max: Self::LEASE_WAIT_MS_MAX_DEFAULT,
            shutdown_grace_ms: Self::SHUTDOWN_GRACE_MS_DEFAULT,
            metrics_queues_max: Self::METRICS_QUEUES_MAX_DEFAULT as usize,
            maintenance: MaintenanceConfig {
                interval_ms: Self::TEST_MAINTENANCE_INTERVAL_MS,
                ..MaintenanceConfig::default()
            },
            database: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            auth: crate::AuthMode::None,
            admin_token: None,
            tls: None,
            header_timeout_ms: Self::HEADER_TIMEOUT_MS_DEFAULT,
            body_timeout_ms: Self::BODY_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: Self::IDLE_TIMEOUT_MS_DEFAULT,
            connections_max: None,
        }
    }

    /// Serves HTTPS with this certificate chain and key (as `--tls-cert`, `--tls-key`).
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Config {
        self.tls = Some(TlsFiles { cert: cert.into(), key: key.into() });
        self
    }

    /// Sets the header, body and idle timeouts (as `--header-timeout-ms`, `--body-timeout-ms`,
    /// `--idle-timeout-ms`).
    pub fn with_transport_timeouts_ms(mut self, header: u64, body: u64, idle: u64) -> Config {
        (self.header_timeout_ms, self.body_timeout_ms, self.idle_timeout_ms) = (header, body, idle);
        self
    }

    /// Sets the connection cap (as `--connections-max`).
    pub fn with_connections_max(mut self, n: usize) -> Config {
        self.connections_max = Some(n);
        self
    }

    /// `--tls-cert` and `--tls-key`, when HTTPS is on.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    pub fn header_timeout_ms(&self) -> u64 {
        self.header_timeout_ms
    }

    pub fn body_timeout_ms(&self) -> u64 {
        self.body_timeout_ms
    }

    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms
    }

    /// `--connections-max` as given; `None` when it is to be derived from the open-file limit.
    pub fn connections_max(&self) -> Option<usize> {
        self.connections_max
    }

    /// The default connection cap for an open-file limit of `nofile` descriptors: the limit less
    /// [`Config::FDS_RESERVED`], less the pool's connections in PostgreSQL mode, within
    /// [`Config::CONNECTIONS_MAX_DEFAULT_MIN`] and [`Config::CONNECTIONS_MAX_DEFAULT_MAX`].
    pub fn connections_max_default(&self, nofile: u64) -> usize {
        let pool = self.database.as_ref().map_or(0, |pg| pg.pool_size_max as u64);
        let room = nofile.saturating_sub(Self::FDS_RESERVED + pool);
        room.clamp(Self::CONNECTIONS_MAX_DEFAULT_MIN, Self::CONNECTIONS_MAX_DEFAULT_MAX) as usize
    }

    /// Requires a token on every route, with `secret` as the bootstrap admin token (as if read
    /// from `--admin-token-file`). For tests and embedding programs.
    pub fn with_admin_token(mut self, secret: impl Into<String>) -> Config {
        self.auth = crate::AuthMode::Required;
        self.admin_token = Some(Secret(secret.into()));
        self
    }

    /// Sets the auth mode (without a bootstrap token: only tokens already in the store work).
    pub fn with_auth(mut self, mode: crate::AuthMode) -> Config {
        self.auth = mode;
        self
    }

    /// Whether requests need a token: `required` or `none`.
    pub fn auth(&self) -> crate::AuthMode {
        self.auth
    }

    /// The bootstrap admin token's secret, if one was given.
    pub(crate) fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_ref().map(|s| s.0.as_str())
    }

    /// [`Config::for_test`] on PostgreSQL: the store in `database` (its time source must be
    /// [`TimeSource::Database`]; [`crate::start`] refuses any other).
    pub fn for_test_postgres(database: PostgresConfig) -> Config {
        Config { database: Some(database), ..Config::for_test(Path::new(Self::DATA_DIR_DEFAULT)) }
    }

    /// The PostgreSQL store's configuration, in PostgreSQL mode; `None` in embedded mode.
    pub fn database(&self) -> Option<&PostgresConfig> {
        self.database.as_ref()
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_bytes
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    pub fn body_bytes_max(&self) -> usize {
        self.body_bytes_max
    }

    pub fn lease_wait_ms_max(&self) -> u64 {
        self.lease_wait_ms_max
    }

    pub fn shutdown_grace_ms(&self) -> u64 {
        self.shutdown_grace_ms
    }

    /// Queue names that keep their own `queue` label in /metrics; the rest share `_other`.
    pub fn metrics_queues_max(&self) -> usize {
        self.metrics_queues_max
    }

    /// Host names the server answers to besides loopback names and IP addresses (lower case).
    pub fn allowed_hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    /// Origins whose pages may call the server, as `scheme://host[:port]` (lower case).
    pub fn allowed_origins(&self) -> &[String] {
        &self.allowed_origins
    }

    pub fn maintenance(&self) -> MaintenanceConfig {
        self.maintenance
    }

    /// The embedded store's configuration.
    pub(crate) fn store(&self) -> EmbeddedConfig {
        EmbeddedConfig {
            durability: self.durability,
            memory_budget_bytes: self.memory_budget_bytes,
            ..EmbeddedConfig::new(&self.data_dir)
        }
    }
}

/// Where a setting came from, so an error can point at it.
#[derive(Clone, Debug)]
enum Origin {
    Default,
    /// A flag, or the environment variable standing in for it (clap merges the two).
    Arg {
        flag: &'static str,
        env: &'static str,
    },
    File {
        key: &'static str,
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::Arg { flag, env } => write!(f, "{flag} (or {env})"),
            Origin::File { key, path } => write!(f, "{key} in {}", path.display()),
        }
    }
}

/// One raw setting and where it came from.
#[derive(Clone, Debug)]
struct Setting<T> {
    value: Option<T>,
    origin: Origin,
}

impl<T> Setting<T> {
    /// The flag (or its environment variable) if given, else the file's value.
    fn pick(
        arg: Option<T>,
        flag: &'static str,
        env: &'static str,
        file: Option<T>,
        key: &'static str,
        path: &Option<PathBuf>,
    ) -> Setting<T> {
        match (arg, file, path) {
            (Some(v), _, _) => Setting { value: Some(v), origin: Origin::Arg { flag, env } },
            (None, Some(v), Some(path)) => Setting { value: Some(v), origin: Origin::File { key, path: path.clone() } },
            _ => Setting { value: None, origin: Origin::Default },
        }
    }
}

/// Settings read from the TOML file; every key optional.
#[derive(Debug, Default)]
struct FileSettings {
    path: Option<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    durability: Option<String>,
    memory_budget_bytes: Option<u64>,
    log_format: Option<LogFormat>,
    body_bytes_max: Option<u64>,
    lease_wait_ms_max: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    metrics_queues_max: Option<u64>,
    database: Option<String>,
    database_schema: Option<String>,
    database_pool_size_max: Option<u64>,
    database_connect_timeout_ms: Option<u64>,
    database_statement_timeout_ms: Option<u64>,
    database_leader_ttl_ms: Option<u64>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    auth: Option<String>,
    admin_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    header_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    connections_max: Option<u64>,
}

impl FileSettings {
    const KEYS: [&str; 25] = [
        "listen",
        "data_dir",
        "durability",
        "memory_budget_bytes",
        "log_format",
        "body_bytes_max",
        "lease_wait_ms_max",
        "shutdown_grace_ms",
        "metrics_queues_max",
        "database",
        "database_schema",
        "database_pool_size_max",
        "database_connect_timeout_ms",
        "database_statement_timeout_ms",
        "database_leader_ttl_ms",
        "allowed_hosts",
        "allowed_origins",
        "auth",
        "admin_token_file",
        "tls_cert",
        "tls_key",
        "header_timeout_ms",
        "body_timeout_ms",
        "idle_timeout_ms",
        "connections_max",
    ];

    fn read(path: &Path) -> anyhow::Result<FileSettings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--config: cannot read {}", path.display()))?;
        FileSettings::parse(&text, path)
    }

    /// Parses the file by hand from a TOML table: no serde derive outside the API crate, and each
    /// error names the key and the file.
    fn parse(text: &str, path: &Path) -> anyhow::Result<FileSettings> {
        let table: toml::Table =
            toml::from_str(text).with_context(|| format!("--config: {} is not valid TOML", path.display()))?;
        let at = |key: &str| format!("{key} in {}", path.display());
        if let Some(key) = table.keys().find(|k| !Self::KEYS.contains(&k.as_str())) {
            bail!("{}: unknown option; known are {}", at(key), Self::KEYS.join(", "));
        }
        let string = |key: &str| -> anyhow::Result<Option<String>> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(anyhow!("{}: must be a string, not {}", at(key), other.type_str())),
            }
        };
        let number = |key: &str| -> anyhow::Result<Option<u64>> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) => {
                    u64::try_from(*n).map(Some).map_err(|_| anyhow!("{}: must not be negative", at(key)))
                }
                Some(other) => Err(anyhow!("{}: must be an integer, not {}", at(key), other.type_str())),
            }
        };
        let strings = |key: &str| -> anyhow::Result<Option<Vec<String>>> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Err(anyhow!("{}: must be a list of strings, not of {}", at(key), other.type_str())),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map(Some),
                Some(other) => Err(anyhow!("{}: must be a list of strings, not {}", at(key), other.type_str())),
            }
        };
        // A size: an integer, or a string with a unit ("512MiB").
        let bytes = |key: &str| -> anyhow::Result<Option<u64>> {
            match table.get(key) {
                Some(toml::Value::String(s)) => parse_bytes(s).map(Some).map_err(|e| anyhow!("{}: {e}", at(key))),
                None | Some(toml::Value::Integer(_)) => number(key),
                Some(other) => {
                    Err(anyhow!("{}: must be an integer or a size like \"512MiB\", not {}", at(key), other.type_str()))
                }
            }
        };
        let log_format = string("log_format")?
            .map(|s| {
                LogFormat::parse(&s).ok_or_else(|| anyhow!("{}: {s:?} is not one of text, json", at("log_format")))
            })
            .transpose()?;
        Ok(FileSettings {
            path: Some(path.to_path_buf()),
            listen: string("listen")?,
            data_dir: string("data_dir")?.map(PathBuf::from),
            durability: string("durability")?,
            memory_budget_bytes: bytes("memory_budget_bytes")?,
            log_format,
            body_bytes_max: bytes("body_bytes_max")?,
            lease_wait_ms_max: number("lease_wait_ms_max")?,
            shutdown_grace_ms: number("shutdown_grace_ms")?,
            metrics_queues_max: number("metrics_queues_max")?,
            database: string("database")?,
            database_schema: string("database_schema")?,
            database_pool_size_max: number("database_pool_size_max")?,
            database_connect_timeout_ms: number("database_connect_timeout_ms")?,
            database_statement_timeout_ms: number("database_statement_timeout_ms")?,
            database_leader_ttl_ms: number("database_leader_ttl_ms")?,
            allowed_hosts: strings("allowed_hosts")?,
            allowed_origins: strings("allowed_origins")?,
            auth: string("auth")?,
            admin_token_file: string("admin_token_file")?.map(PathBuf::from),
            tls_cert: string("tls_cert")?.map(PathBuf::from),
            tls_key: string("tls_key")?.map(PathBuf::from),
            header_timeout_ms: number("header_timeout_ms")?,
            body_timeout_ms: number("body_timeout_ms")?,
            idle_timeout_ms: number("idle_timeout_ms")?,
            connections_max: number("connections_max")?,
        })
    }
}

/// Every setting, layered, before validation.
#[derive(Debug)]
struct Raw {
    listen: Setting<String>,
    data_dir: Setting<PathBuf>,
    durability: Setting<String>,
    memory_budget_bytes: Setting<u64>,
    log_format: Setting<LogFormat>,
    body_bytes_max: Setting<u64>,
    lease_wait_ms_max: Setting<u64>,
    shutdown_grace_ms: Setting<u64>,
    metrics_queues_max: Setting<u64>,
    database: Setting<String>,
    database_schema: Setting<String>,
    database_pool_size_max: Setting<u64>,
    database_connect_timeout_ms: Setting<u64>,
    database_statement_timeout_ms: Setting<u64>,
    database_leader_ttl_ms: Setting<u64>,
    allowed_hosts: Setting<Vec<String>>,
    allowed_origins: Setting<Vec<String>>,
    auth: Setting<String>,
    admin_token_file: Setting<PathBuf>,
    tls_cert: Setting<PathBuf>,
    tls_key: Setting<PathBuf>,
    header_timeout_ms: Setting<u64>,
    body_timeout_ms: Setting<u64>,
    idle_timeout_ms: Setting<u64>,
    connections_max: Setting<u64>,
}

impl Raw {
    fn layer(args: ServeArgs, file: FileSettings) -> Raw {
        let path = &file.path;
        Raw {
            listen: Setting::pick(args.listen, "--listen", "DRAY_LISTEN", file.listen, "listen", path),
            data_dir: Setting::pick(args.data_dir, "--data-dir", "DRAY_DATA_DIR", file.data_dir, "data_dir", path),
            durability: Setting::pick(
                args.durability,
                "--durability",
                "DRAY_DURABILITY",
                file.durability,
                "durability",
                path,
            ),
            memory_budget_bytes: Setting::pick(
                args.memory_budget_bytes,
                "--memory-budget-bytes",
                "DRAY_MEMORY_BUDGET_BYTES",
                file.memory_budget_bytes,
                "memory_budget_bytes",
                path,
            ),
            log_format: Setting::pick(
                args.log_format,
                "--log-format",
                "DRAY_LOG_FORMAT",
                file.log_format,
                "log_format",
                path,
            ),
            body_bytes_max: Setting::pick(
                args.body_bytes_max,
                "--body-bytes-max",
                "DRAY_BODY_BYTES_MAX",
                file.body_bytes_max,
                "body_bytes_max",
                path,
            ),
            lease_wait_ms_max: Setting::pick(
                args.lease_wait_ms_max,
                "--lease-wait-ms-max",
                "DRAY_LEASE_WAIT_MS_MAX",
                file.lease_wait_ms_max,
                "lease_wait_ms_max",
                path,
            ),
            shutdown_grace_ms: Setting::pick(
                args.shutdown_grace_ms,
                "--shutdown-grace-ms",
                "DRAY_SHUTDOWN_GRACE_MS",
                file.shutdown_grace_ms,
                "shutdown_grace_ms",
                path,
            ),
            metrics_queues_max: Setting::pick(
                args.metrics_queues_max,
                "--metrics-queues-max",
                "DRAY_METRICS_QUEUES_MAX",
                file.metrics_queues_max,
                "metrics_queues_max",
                path,
            ),
            database: Setting::pick(args.database, "--database", "DRAY_DATABASE", file.database, "database", path),
            database_schema: Setting::pick(
                args.database_schema,
                "--database-schema",
                "DRAY_DATABASE_SCHEMA",
                file.database_schema,
                "database_schema",
                path,
            ),
            database_pool_size_max: Setting::pick(
                args.database_pool_size_max,
                "--database-pool-size-max",
                "DRAY_DATABASE_POOL_SIZE_MAX",
                file.database_pool_size_max,
                "database_pool_size_max",
                path,
            ),
            database_connect_timeout_ms: Setting::pick(
                args.database_connect_timeout_ms,
                "--database-connect-timeout-ms",
                "DRAY_DATABASE_CONNECT_TIMEOUT_MS",
                file.database_connect_timeout_ms,
                "database_connect_timeout_ms",
                path,
            ),
            database_statement_timeout_ms: Setting::pick(
                args.database_statement_timeout_ms,
                "--database-statement-timeout-ms",
                "DRAY_DATABASE_STATEMENT_TIMEOUT_MS",
                file.database_statement_timeout_ms,
                "database_statement_timeout_ms",
                path,
            ),
            database_leader_ttl_ms: Setting::pick(
                args.database_leader_ttl_ms,
                "--database-leader-ttl-ms",
                "DRAY_DATABASE_LEADER_TTL_MS",
                file.database_leader_ttl_ms,
                "database_leader_ttl_ms",
                path,
            ),
            allowed_hosts: Setting::pick(
                Some(args.allowed_hosts).filter(|v| !v.is_empty()),
                "--allowed-hosts",
                "DRAY_ALLOWED_HOSTS",
                file.allowed_hosts,
                "allowed_hosts",
                path,
            ),
            allowed_origins: Setting::pick(
                Some(args.allowed_origins).filter(|v| !v.is_empty()),
                "--allowed-origins",
                "DRAY_ALLOWED_ORIGINS",
                file.allowed_origins,
                "allowed_origins",
                path,
            ),
            auth: Setting::pick(
                args.auth.map(|a| a.as_str().to_owned()),
                "--auth",
                "DRAY_AUTH",
                file.auth,
                "auth",
                path,
            ),
            admin_token_file: Setting::pick(
                args.admin_token_file,
                "--admin-token-file",
                "DRAY_ADMIN_TOKEN_FILE",
                file.admin_token_file,
                "admin_token_file",
                path,
            ),
            tls_cert: Setting::pick(args.tls_cert, "--tls-cert", "DRAY_TLS_CERT", file.tls_cert, "tls_cert", path),
            tls_key: Setting::pick(args.tls_key, "--tls-key", "DRAY_TLS_KEY", file.tls_key, "tls_key", path),
            header_timeout_ms: Setting::pick(
                args.header_timeout_ms,
                "--header-timeout-ms",
                "DRAY_HEADER_TIMEOUT_MS",
                file.header_timeout_ms,
                "header_timeout_ms",
                path,
            ),
            body_timeout_ms: Setting::pick(
                args.body_timeout_ms,
                "--body-timeout-ms",
                "DRAY_BODY_TIMEOUT_MS",
                file.body_timeout_ms,
                "body_timeout_ms",
                path,
            ),
            idle_timeout_ms: Setting::pick(
                args.idle_timeout_ms,
                "--idle-timeout-ms",
                "DRAY_IDLE_TIMEOUT_MS",
                file.idle_timeout_ms,
                "idle_timeout_ms",
                path,
            ),
            connections_max: Setting::pick(
                args.connections_max,
                "--connections-max",
                "DRAY_CONNECTIONS_MAX",
                file.connections_max,
                "connections_max",
                path,
            ),
        }
    }

    /// The auth mode and the bootstrap admin token. The default mode is `required` when a token
    /// file is given or the listen address is not loopback; `none` is refused on a non-loopback
    /// address (anyone who reaches it could do anything), and with a token file (it would never
    /// be checked).
    fn auth(&self, listen: SocketAddr) -> anyhow::Result<(crate::AuthMode, Option<Secret>)> {
        use crate::AuthMode;
        let admin_token = match &self.admin_token_file.value {
            None => None,
            Some(path) => {
                let origin = &self.admin_token_file.origin;
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{origin}: cannot read {}", path.display()))?;
                let secret = text.trim();
                if secret.is_empty() {
                    bail!("{origin}: {} is empty; write the admin token (a secret you choose) into it", path.display());
                }
                if secret.len() < Config::ADMIN_TOKEN_BYTES_WEAK {
                    tracing::warn!(
                        bytes = secret.len(),
                        "the admin token is short; use at least {} random characters",
                        Config::ADMIN_TOKEN_BYTES_WEAK
                    );
                }
                Some(Secret(secret.to_owned()))
            }
        };
        let mode = match self.auth.value.as_deref() {
            None if admin_token.is_some() || !listen.ip().is_loopback() => AuthMode::Required,
            None => AuthMode::None,
            Some(text) => AuthMode::parse(text)
                .ok_or_else(|| anyhow!("{}: {text:?} is not one of required, none", self.auth.origin))?,
        };
        if mode == AuthMode::None {
            if !listen.ip().is_loopback() {
                bail!(
                    "{}: auth none is refused on {listen}, which is not a loopback address: anyone who can reach \
                     it could read and change every job. Use --auth required with --admin-token-file FILE, or \
                     listen on 127.0.0.1",
                    self.auth.origin
                );
            }
            if admin_token.is_some() {
                bail!(
                    "{}: auth none with {}: the admin token would never be checked; drop one of them",
                    self.auth.origin,
                    self.admin_token_file.origin
                );
            }
        }
        Ok((mode, admin_token))
    }

    /// The PostgreSQL settings, validated, when `database` is set. Options that only make sense
    /// with a database are refused without one, so a typo does not silently run embedded.
    fn database(&self) -> anyhow::Result<Option<PostgresConfig>> {
        let Some(url) = self.database.value.clone() else {
            let given = [
                (&self.database_schema.origin, self.database_schema.value.is_some()),
                (&self.database_pool_size_max.origin, self.database_pool_size_max.value.is_some()),
                (&self.database_connect_timeout_ms.origin, self.database_connect_timeout_ms.value.is_some()),
                (&self.database_statement_timeout_ms.origin, self.database_statement_timeout_ms.value.is_some()),
                (&self.database_leader_ttl_ms.origin, self.database_leader_ttl_ms.value.is_some()),
            ];
            if let Some((origin, _)) = given.iter().find(|(_, set)| *set) {
                bail!("{origin}: only applies with --database (PostgreSQL mode)");
            }
            return Ok(None);
        };
        if url.trim().is_empty() {
            bail!("{}: must not be empty", self.database.origin);
        }
        let mut pg = PostgresConfig::new(url);
        pg.time_source = TimeSource::Database;
        if let Some(schema) = &self.database_schema.value {
            pg.schema = schema.clone();
        }
        if let Some(n) = self.database_pool_size_max.value {
            let n = in_range(&self.database_pool_size_max.origin, n, 1, PostgresConfig::POOL_SIZE_MAX_MAX as u64, "")?;
            pg.pool_size_max = n as usize;
        }
        if let Some(ms) = self.database_connect_timeout_ms.value {
            pg.connect_timeout_ms = in_range(
                &self.database_connect_timeout_ms.origin,
                ms,
                1,
                PostgresConfig::CONNECT_TIMEOUT_MS_MAX,
                " ms",
            )?;
        }
        if let Some(ms) = self.database_statement_timeout_ms.value {
            pg.statement_timeout_ms = in_range(
                &self.database_statement_timeout_ms.origin,
                ms,
                1,
                PostgresConfig::STATEMENT_TIMEOUT_MS_MAX,
                " ms",
            )?;
        }
        if let Some(ms) = self.database_leader_ttl_ms.value {
            pg.leader_ttl_ms = in_range(
                &self.database_leader_ttl_ms.origin,
                ms,
                PostgresConfig::LEADER_TTL_MS_MIN,
                PostgresConfig::LEADER_TTL_MS_MAX,
                " ms",
            )?;
        }
        if let Err(e) = pg.validate() {
            let origin = match e.field.as_str() {
                "schema" => &self.database_schema.origin,
                _ => &self.database.origin,
            };
            bail!("{origin}: {e}");
        }
        Ok(Some(pg))
    }

    fn validate(self) -> anyhow::Result<Config> {
        let database = self.database()?;
        let listen_text = self.listen.value.as_deref().unwrap_or(Config::LISTEN_DEFAULT);
        let listen = resolve_listen(listen_text).map_err(|e| anyhow!("{}: {e}", self.listen.origin))?;
        let (auth, admin_token) = self.auth(listen)?;
        let data_dir = self.data_dir.value.unwrap_or_else(|| PathBuf::from(Config::DATA_DIR_DEFAULT));
        if data_dir.as_os_str().is_empty() {
            bail!("{}: must not be empty", self.data_dir.origin);
        }
        let durability = match self.durability.value.as_deref() {
            None => Durability::Always,
            Some(text) => parse_durability(text).map_err(|e| anyhow!("{}: {e}", self.durability.origin))?,
        };
        let memory_budget_bytes = match self.memory_budget_bytes.value {
            None => EmbeddedConfig::new(&data_dir).memory_budget_bytes,
            Some(n) => {
                in_range(&self.memory_budget_bytes.origin, n, Config::MEMORY_BUDGET_BYTES_MIN, u64::MAX, " bytes")?
            }
        };
        let body_bytes_max = in_range(
            &self.body_bytes_max.origin,
            self.body_bytes_max.value.unwrap_or(Config::BODY_BYTES_MAX_DEFAULT),
            Config::BODY_BYTES_MAX_MIN,
            Config::BODY_BYTES_MAX_MAX,
            " bytes",
        )?;
        let lease_wait_ms_max = in_range(
            &self.lease_wait_ms_max.origin,
            self.lease_wait_ms_max.value.unwrap_or(Config::LEASE_WAIT_MS_MAX_DEFAULT),
            0,
            Config::LEASE_WAIT_MS_MAX_MAX,
            " ms",
        )?;
        let shutdown_grace_ms = in_range(
            &self.shutdown_grace_ms.origin,
            self.shutdown_grace_ms.value.unwrap_or(Config::SHUTDOWN_GRACE_MS_DEFAULT),
            0,
            Config::SHUTDOWN_GRACE_MS_MAX,
            " ms",
        )?;
        let metrics_queues_max = in_range(
            &self.metrics_queues_max.origin,
            self.metrics_queues_max.value.unwrap_or(Config::METRICS_QUEUES_MAX_DEFAULT),
            1,
            Config::METRICS_QUEUES_MAX_MAX,
            "",
        )?;
        let tls = match (self.tls_cert.value, self.tls_key.value) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (Some(_), None) => bail!("{}: needs --tls-key (DRAY_TLS_KEY) too", self.tls_cert.origin),
            (None, Some(_)) => bail!("{}: needs --tls-cert (DRAY_TLS_CERT) too", self.tls_key.origin),
        };
        let timeout = |setting: &Setting<u64>, default: u64| {
            in_range(&setting.origin, setting.value.unwrap_or(default), 1, Config::TRANSPORT_TIMEOUT_MS_MAX, " ms")
        };
        let header_timeout_ms = timeout(&self.header_timeout_ms, Config::HEADER_TIMEOUT_MS_DEFAULT)?;
        let body_timeout_ms = timeout(&self.body_timeout_ms, Config::BODY_TIMEOUT_MS_DEFAULT)?;
        let idle_timeout_ms = timeout(&self.idle_timeout_ms, Config::IDLE_TIMEOUT_MS_DEFAULT)?;
        let connections_max = match self.connections_max.value {
            None => None,
            Some(n) => Some(in_range(&self.connections_max.origin, n, 1, Config::CONNECTIONS_MAX_MAX, "")? as usize),
        };
        Ok(Config {
            listen,
            data_dir,
            durability,
            memory_budget_bytes,
            log_format: self.log_format.value.unwrap_or_default(),
            body_bytes_max: usize::try_from(body_bytes_max).context("--body-bytes-max: too large for this machine")?,
            lease_wait_ms_max,
            shutdown_grace_ms,
            metrics_queues_max: usize::try_from(metrics_queues_max)
                .context("--metrics-queues-max: too large for this machine")?,
            maintenance: MaintenanceConfig::default(),
            database,
            allowed_hosts: validate_hosts(&self.allowed_hosts)?,
            allowed_origins: validate_origins(&self.allowed_origins)?,
            auth,
            admin_token,
            tls,
            header_timeout_ms,
            body_timeout_ms,
            idle_timeout_ms,
            connections_max,
        })
    }
}

/// Host names: letters, digits, `-` and `.`, without a port (the Host check ignores ports).
fn validate_hosts(setting: &Setting<Vec<String>>) -> anyhow::Result<Vec<String>> {
    let names = setting.value.clone().unwrap_or_default();
    for name in &names {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !ok {
            bail!("{}: {name:?} is not a host name (like dray.example.com, without a port)", setting.origin);
        }
    }
    Ok(names.into_iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect())
}

/// Origins as browsers send them: `http://` or `https://`, a host, an optional port, no path.
fn validate_origins(setting: &Setting<Vec<String>>) -> anyhow::Result<Vec<String>> {
    let origins = setting.value.clone().unwrap_or_default();
    for origin in &origins {
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        let ok = authority.is_some_and(|a| {
            let a = a.trim_end_matches('/');
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'))
        });
        if !ok {
            bail!(
                "{}: {origin:?} is not an origin (like https://ops.example.com or http://localhost:3000)",
                setting.origin
            );
        }
    }
    Ok(origins.into_iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect())
}

/// An address and port (`127.0.0.1:7700`, `[::1]:7700`) as is, or a host name and port
/// (`localhost:7700`) resolved now: its first IPv4 address, else its first IPv6 one (clients
/// default to `127.0.0.1`, so `localhost` should mean that where both exist).
fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let form = "like 127.0.0.1:7700, [::1]:7700 or localhost:7700";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not an address or host name and a port, {form}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{text:?} is not an address or host name and a port, {form}"));
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?}: cannot resolve the host name {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: the host name {host:?} has no address"))
}

/// Bytes as a plain number (`536870912`) or a number and a unit: `KiB`, `MiB`, `GiB`, `TiB`
/// (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000), in any case, `B` alone allowed,
/// a space between allowed. Whole numbers only: `1.5GiB` is refused rather than rounded.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    const UNITS: [(&str, u64); 9] = [
        ("b", 1),
        ("kb", 1_000),
        ("mb", 1_000_000),
        ("gb", 1_000_000_000),
        ("tb", 1_000_000_000_000),
        ("kib", 1 << 10),
        ("mib", 1 << 20),
        ("gib", 1 << 30),
        ("tib", 1 << 40),
    ];
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = trimmed.split_at(digits);
    let unit = unit.trim_start().to_ascii_lowercase();
    let explain = || {
        format!(
            "{text:?} is not a size: a whole number of bytes, optionally with a unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. 512MiB"
        )
    };
    let number: u64 = number.parse().map_err(|_| explain())?;
    let multiplier = if unit.is_empty() {
        1
    } else {
        UNITS.iter().find(|(name, _)| *name == unit).map(|(_, m)| *m).ok_or_else(explain)?
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is more than {} bytes", u64::MAX))
}

/// [`parse_bytes`] for clap (flags and their environment variables).
fn parse_bytes_arg(text: &str) -> Result<u64, String> {
    parse_bytes(text)
}

fn in_range(origin: &Origin, value: u64, min: u64, max: u64, unit: &str) -> anyhow::Result<u64> {
    if value < min || value > max {
        bail!("{origin}: is {value}{unit}; allowed is {min}{unit} to {max}{unit}");
    }
    Ok(value)
}

/// `always`, `never` or `interval=<ms>`.
fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        _ => {
            let Some(ms) = text.strip_prefix("interval=") else {
                return Err(format!("{text:?} is not one of always, interval=<ms>, never"));
            };
            let ms: u64 =
                ms.parse().map_err(|_| format!("{text:?}: the interval must be a whole number of milliseconds"))?;
            let (min, max) = (Config::DURABILITY_INTERVAL_MS_MIN, Config::DURABILITY_INTERVAL_MS_MAX);
            if !(min..=max).contains(&ms) {
                return Err(format!("{text:?}: the interval is {ms} ms; allowed is {min} ms to {max} ms"));
            }
            Ok(Durability::Interval { ms })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileSettings {
        FileSettings::parse(text, Path::new("dray.toml")).unwrap()
    }

    fn err(args: ServeArgs, text: &str) -> String {
        let file = FileSettings::parse(text, Path::new("dray.toml")).unwrap();
        Raw::layer(args, file).validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = Raw::layer(ServeArgs::default(), FileSettings::default()).validate().unwrap();
        assert_eq!(c.listen().to_string(), "127.0.0.1:7700");
        assert_eq!(c.data_dir(), Path::new("./dray-data"));
        assert_eq!(c.durability(), Durability::Always);
        assert_eq!(c.body_bytes_max(), 24 * 1024 * 1024);
        assert_eq!((c.lease_wait_ms_max(), c.shutdown_grace_ms()), (30_000, 10_000));
        assert_eq!(c.log_format(), LogFormat::Text);
    }

    #[test]
    fn flags_beat_the_file() {
        let args = ServeArgs { listen: Some("0.0.0.0:9000".into()), ..ServeArgs::default() };
        let f = file("listen = \"127.0.0.1:1\"\ndurability = \"interval=50\"\nlog_format = \"json\"\n");
        let c = Raw::layer(args, f).validate().unwrap();
        assert_eq!(c.listen().to_string(), "0.0.0.0:9000");
        assert_eq!(c.durability(), Durability::Interval { ms: 50 });
        assert_eq!(c.log_format(), LogFormat::Json);
    }

    #[test]
    fn errors_name_the_option_its_source_and_the_limit() {
        let args = ServeArgs { body_bytes_max: Some(10), ..ServeArgs::default() };
        assert_eq!(
            err(args, ""),
            "--body-bytes-max (or DRAY_BODY_BYTES_MAX): is 10 bytes; allowed is 65536 bytes to 1073741824 bytes"
        );
        assert_eq!(
            err(ServeArgs::default(), "lease_wait_ms_max = 600001"),
            "lease_wait_ms_max in dray.toml: is 600001 ms; allowed is 0 ms to 600000 ms"
        );
        assert_eq!(
            err(ServeArgs::default(), "durability = \"interval=0\""),
            "durability in dray.toml: \"interval=0\": the interval is 0 ms; allowed is 1 ms to 60000 ms"
        );
        assert_eq!(
            err(ServeArgs { durability: Some("sometimes".into()), ..ServeArgs::default() }, ""),
            "--durability (or DRAY_DURABILITY): \"sometimes\" is not one of always, interval=<ms>, never"
        );
        assert!(
            err(ServeArgs { listen: Some("localhost".into()), ..ServeArgs::default() }, "").starts_with("--listen")
        );
    }

    // Regression (issue #18): `--memory-budget-bytes 512MiB` was refused; sizes take units in
    // flags, the environment and the config file.
    #[test]
    fn sizes_take_units() {
        let cases = [
            ("536870912", 536_870_912),
            ("512MiB", 512 << 20),
            ("512 MiB", 512 << 20),
            ("512mib", 512 << 20),
            ("2GB", 2_000_000_000),
            ("64KiB", 64 << 10),
            ("64kb", 64_000),
            ("1TiB", 1 << 40),
            ("7B", 7),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "1.5GiB", "12XB", "-1", "99999999999999999999", "16EiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} is accepted");
        }
        assert!(parse_bytes("20000000TiB").unwrap_err().contains("is more than"));
        let c = Raw::layer(ServeArgs::default(), file("memory_budget_bytes = \"1GiB\"\nbody_bytes_max = 1048576"))
            .validate()
            .unwrap();
        assert_eq!((c.memory_budget_bytes(), c.body_bytes_max()), (1 << 30, 1 << 20));
        let e = FileSettings::parse("body_bytes_max = \"big\"", Path::new("dray.toml")).unwrap_err().to_string();
        assert!(e.starts_with("body_bytes_max in dray.toml: \"big\" is not a size"), "{e}");
        assert_eq!(
            err(ServeArgs::default(), "memory_budget_bytes = \"1MiB\""),
            "memory_budget_bytes in dray.toml: is 1048576 bytes; allowed is 16777216 bytes to 18446744073709551615 bytes"
        );
    }

    // Regression (issue #18): `--listen localhost:7700` was refused; a host name is resolved.
    #[test]
    fn listen_resolves_host_names() {
        assert_eq!(resolve_listen("127.0.0.1:7700").unwrap().to_string(), "127.0.0.1:7700");
        assert_eq!(resolve_listen("[::1]:0").unwrap().to_string(), "[::1]:0");
        let addr = resolve_listen("localhost:7700").unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 7700, "{addr}");
        let args = ServeArgs { listen: Some("localhost:0".into()), ..ServeArgs::default() };
        assert!(Raw::layer(args, FileSettings::default()).validate().unwrap().listen().ip().is_loopback());
        for bad in ["localhost", ":7700", "localhost:http", "localhost:70000"] {
            let e = resolve_listen(bad).unwrap_err();
            assert!(e.contains("is not an address or host name and a port"), "{bad}: {e}");
        }
        assert!(resolve_listen("no-such-host.invalid:7700").unwrap_err().contains("cannot resolve"));
    }

    #[test]
    fn metrics_queues_max_layers_and_is_bounded() {
        let c = Raw::layer(ServeArgs::default(), FileSettings::default()).validate().unwrap();
        assert_eq!(c.metrics_queues_max(), 1_000);
        let c = Raw::layer(ServeArgs::default(), file("metrics_queues_max = 20")).validate().unwrap();
        assert_eq!(c.metrics_queues_max(), 20);
        let args = ServeArgs { metrics_queues_max: Some(5), ..ServeArgs::default() };
        assert_eq!(Raw::layer(args, file("metrics_queues_max = 20")).validate().unwrap().metrics_queues_max(), 5);
        assert_eq!(
            err(ServeArgs { metrics_queues_max: Some(0), ..ServeArgs::default() }, ""),
            "--metrics-queues-max (or DRAY_METRICS_QUEUES_MAX): is 0; allowed is 1 to 100000"
        );
        assert_eq!(
            err(ServeArgs::default(), "metrics_queues_max = 100001"),
            "metrics_queues_max in dray.toml: is 100001; allowed is 1 to 100000"
        );
    }

    #[test]
    fn database_options() {
        let c = Raw::layer(ServeArgs::default(), FileSettings::default()).validate().unwrap();
        assert!(c.database().is_none(), "embedded by default");
        let f = file("database = \"postgres://u@h/db\"\ndatabase_schema = \"jobs\"\ndatabase_pool_size_max = 4\n");
        let args = ServeArgs { database_statement_timeout_ms: Some(1_000), ..ServeArgs::default() };
        let c = Raw::layer(args, f).validate().unwrap();
        let pg = c.database().unwrap();
        assert_eq!((pg.url.as_str(), pg.schema.as_str(), pg.pool_size_max), ("postgres://u@h/db", "jobs", 4));
        assert_eq!((pg.statement_timeout_ms, pg.connect_timeout_ms), (1_000, 5_000));
        assert_eq!(pg.time_source, TimeSource::Database);
        assert_eq!(pg.leader_ttl_ms, PostgresConfig::LEADER_TTL_MS_DEFAULT);
        let f = file("database = \"postgres://u@h/db\"\ndatabase_leader_ttl_ms = 2000\n");
        let c = Raw::layer(ServeArgs::default(), f).validate().unwrap();
        assert_eq!(c.database().unwrap().leader_ttl_ms, 2_000);
        let f = file("database = \"postgres://u@h/db\"\ndatabase_leader_ttl_ms = 2000\n");
        let args = ServeArgs { database_leader_ttl_ms: Some(800), ..ServeArgs::default() };
        assert_eq!(Raw::layer(args, f).validate().unwrap().database().unwrap().leader_ttl_ms, 800);
        assert_eq!(
            err(
                ServeArgs {
                    database_leader_ttl_ms: Some(100),
                    database: Some("postgres://h/d".into()),
                    ..ServeArgs::default()
                },
                ""
            ),
            "--database-leader-ttl-ms (or DRAY_DATABASE_LEADER_TTL_MS): is 100 ms; allowed is 500 ms to 600000 ms"
        );
        assert_eq!(
            err(ServeArgs::default(), "database_leader_ttl_ms = 2000"),
            "database_leader_ttl_ms in dray.toml: only applies with --database (PostgreSQL mode)"
        );
        assert_eq!(
            err(
                ServeArgs {
                    database_pool_size_max: Some(0),
                    database: Some("postgres://h/d".into()),
                    ..ServeArgs::default()
                },
                ""
            ),
            "--database-pool-size-max (or DRAY_DATABASE_POOL_SIZE_MAX): is 0; allowed is 1 to 1024"
        );
        assert_eq!(
            err(ServeArgs { database_schema: Some("x".into()), ..ServeArgs::default() }, ""),
            "--database-schema (or DRAY_DATABASE_SCHEMA): only applies with --database (PostgreSQL mode)"
        );
        let e = err(
            ServeArgs {
                database: Some("postgres://h/d".into()),
                database_schema: Some("Bad".into()),
                ..ServeArgs::default()
            },
            "",
        );
        assert!(e.starts_with("--database-schema (or DRAY_DATABASE_SCHEMA): schema"), "{e}");
    }

    #[test]
    fn auth_defaults_follow_the_listen_address_and_the_token_file() {
        use crate::AuthMode;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, "  s3cret-admin-token-0123456789\n").unwrap();
        let c = Raw::layer(ServeArgs::default(), FileSettings::default()).validate().unwrap();
        assert_eq!((c.auth(), c.admin_token()), (AuthMode::None, None), "loopback without a token: open");
        let args = ServeArgs { admin_token_file: Some(token_file.clone()), ..ServeArgs::default() };
        let c = Raw::layer(args, FileSettings::default()).validate().unwrap();
        assert_eq!(c.auth(), AuthMode::Required);
        assert_eq!(c.admin_token(), Some("s3cret-admin-token-0123456789"), "trimmed");
        assert!(!format!("{c:?}").contains("s3cret"), "the secret never shows in Debug");
        let args = ServeArgs { listen: Some("0.0.0.0:7700".into()), ..ServeArgs::default() };
        assert_eq!(Raw::layer(args, FileSettings::default()).validate().unwrap().auth(), AuthMode::Required);
        let args = ServeArgs { listen: Some("[::1]:7700".into()), ..ServeArgs::default() };
        assert_eq!(Raw::layer(args, FileSettings::default()).validate().unwrap().auth(), AuthMode::None);
        let e = err(
            ServeArgs { listen: Some("0.0.0.0:7700".into()), auth: Some(AuthMode::None), ..ServeArgs::default() },
            "",
        );
        assert!(e.starts_with("--auth (or DRAY_AUTH): auth none is refused on 0.0.0.0:7700"), "{e}");
        let e = err(ServeArgs { listen: Some("10.1.2.3:7700".into()), ..ServeArgs::default() }, "auth = \"none\"");
        assert!(e.starts_with("auth in dray.toml: auth none is refused"), "{e}");
        let c = Raw::layer(ServeArgs::default(), file("auth = \"required\"")).validate().unwrap();
        assert_eq!(c.auth(), AuthMode::Required);
        let e = err(ServeArgs::default(), "auth = \"maybe\"");
        assert_eq!(e, "auth in dray.toml: \"maybe\" is not one of required, none");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = err(ServeArgs { admin_token_file: Some(empty), ..ServeArgs::default() }, "");
        assert!(
            e.starts_with("--admin-token-file (or DRAY_ADMIN_TOKEN_FILE): ")
                && e.ends_with("is empty; write the admin token (a secret you choose) into it"),
            "{e}"
        );
        let e = err(ServeArgs { admin_token_file: Some(dir.path().join("missing")), ..ServeArgs::default() }, "");
        assert!(e.starts_with("--admin-token-file (or DRAY_ADMIN_TOKEN_FILE): cannot read"), "{e}");
        let text = format!("admin_token_file = {:?}", token_file.display().to_string());
        let c = Raw::layer(ServeArgs::default(), file(&text)).validate().unwrap();
        assert_eq!(c.auth(), AuthMode::Required);
    }

    #[test]
    fn transport_options() {
        let c = Raw::layer(ServeArgs::default(), FileSettings::default()).validate().unwrap();
        assert_eq!((c.header_timeout_ms(), c.body_timeout_ms(), c.idle_timeout_ms()), (10_000, 30_000, 60_000));
        assert_eq!((c.tls(), c.connections_max()), (None, None));
        let f = file("tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nidle_timeout_ms = 5000\nconnections_max = 10");
        let args = ServeArgs { header_timeout_ms: Some(250), ..ServeArgs::default() };
        let c = Raw::layer(args, f).validate().unwrap();
        assert_eq!(c.tls(), Some(&TlsFiles { cert: "c.pem".into(), key: "k.pem".into() }));
        assert_eq!((c.header_timeout_ms(), c.idle_timeout_ms(), c.connections_max()), (250, 5_000, Some(10)));
        assert_eq!(
            err(ServeArgs { tls_cert: Some("c.pem".into()), ..ServeArgs::default() }, ""),
            "--tls-cert (or DRAY_TLS_CERT): needs --tls-key (DRAY_TLS_KEY) too"
        );
        assert_eq!(
            err(ServeArgs::default(), "tls_key = \"k.pem\""),
            "tls_key in dray.toml: needs --tls-cert (DRAY_TLS_CERT) too"
        );
        assert_eq!(
            err(ServeArgs { body_timeout_ms: Some(0), ..ServeArgs::default() }, ""),
            "--body-timeout-ms (or DRAY_BODY_TIMEOUT_MS): is 0 ms; allowed is 1 ms to 3600000 ms"
        );
        assert_eq!(
            err(ServeArgs::default(), "connections_max = 0"),
            "connections_max in dray.toml: is 0; allowed is 1 to 1000000"
        );
        // The derived cap: the limit less 256, within 16..=65536.
        assert_eq!(c.connections_max_default(1024), 768);
        assert_eq!(c.connections_max_default(100), 16);
        assert_eq!(c.connections_max_default(1 << 20), 65_536);
    }

    #[test]
    fn file_errors_name_the_key() {
        let e = FileSettings::parse("colour = 1", Path::new("dray.toml")).unwrap_err().to_string();
        assert!(e.starts_with("colour in dray.toml: unknown option; known are listen,"), "{e}");
        let e = FileSettings::parse("body_bytes_max = true", Path::new("dray.toml")).unwrap_err().to_string();
        assert_eq!(e, "body_bytes_max in dray.toml: must be an integer or a size like \"512MiB\", not boolean");
        let e = FileSettings::parse("log_format = \"xml\"", Path::new("dray.toml")).unwrap_err().to_string();
        assert_eq!(e, "log_format in dray.toml: \"xml\" is not one of text, json");
    }
}
