//! The command line: every command, flag and help text, as clap derive types.
//!
//! This module only describes the interface; the commands live in `cmd/`. Flags that map to wire
//! fields use the wire's words (`--attempts-max`, `--lease-ms`, `--reason` for `dead_reason`).

use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// The exit statuses, shown at the end of `dray --help`. Keep in step with `exit::Exit`.
const EXIT_STATUS_HELP: &str = "\
Exit status (scripts can rely on it):
  0  success
  1  any other error
  2  usage error (unknown command, bad flag or argument)
  3  not found (HTTP 404): no such job or queue
  4  conflict (HTTP 409): e.g. cancelling a completed job, an idempotency key reused with another payload,
     a lock held by others (`locks acquire`) or lost (`locks renew`)
  5  invalid input (HTTP 400, 413, 422, or a bad line or file read by the CLI itself)
  6  server unavailable (HTTP 503) or unreachable (connection refused, timeout)
  7  not authorized (HTTP 401 or 403): no token (--token, DRAY_TOKEN), a bad one, or a missing scope
  8  the job waited for (--wait) ended dead
  9  the job waited for (--wait) ended cancelled
 10  the job waited for (--wait) was not finished when the wait ended (it goes on)

Errors go to stderr: the problem's title, detail and field, or with --json one JSON object
{\"type\", \"title\", \"status\", \"detail\", \"field\", \"job\", \"exit_code\"}.";

const WORK_HELP: &str = "\
Runs CMD through `sh -c` once per job, in its own process group:
  stdin   the job's payload (JSON)
  env     DRAY_JOB_ID, DRAY_QUEUE, DRAY_ATTEMPT, DRAY_FENCING_TOKEN (hand the token to downstream
          systems so they can reject a stale attempt's writes), and TRACEPARENT when the job
          carries W3C trace context
  exit 0  the job is completed; stdout, if it parses as JSON, is stored as its result
  exit 65 (EX_DATAERR) the job failed and is not retried: it goes to the dead-letter queue
  other   the job failed and is retried with backoff (75, EX_TEMPFAIL, is the conventional code;
          death by a signal counts the same); the error is the last 8 KiB of stderr
The lease is heartbeated while CMD runs. If the job is cancelled or its lease is lost, the process
group gets SIGTERM, then SIGKILL 5 s later.
Ctrl-C or SIGTERM stops leasing and waits for the running commands to finish; after
--shutdown-grace-ms they are killed and their jobs handed back (retried at once). A second Ctrl-C
or SIGTERM kills them and exits at once (their jobs come back when their leases expire).
With --json, one JSON line per job whose command ended is printed on stdout: id, queue, attempt,
outcome (completed, failed, dead, cancelled, lease_lost), duration_ms, error (null if completed).";

#[derive(Debug, Parser)]
#[command(
    name = "dray",
    version,
    about = "Dray: a durable job server, and the tool to operate it",
    long_about = "Dray: a durable job server, and the tool to operate it.\n\n\
        `dray serve` runs the server; every other command talks to one over HTTP (--server).\n\
        Output is a human table by default, one JSON document with --json.",
    after_long_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// The server's base URL.
    #[arg(long, global = true, env = "DRAY_SERVER", default_value = "http://127.0.0.1:7700")]
    pub server: String,
    /// Machine output: one JSON document on stdout; errors as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// The API token, sent as `Authorization: Bearer <token>` on every request (needed when the
    /// server requires authentication). Prefer the environment variable: flags show in `ps`.
    #[arg(long, global = true, env = "DRAY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// --server, besides the system's roots: for
    /// a server whose certificate comes from a private CA.
    #[arg(long, global = true, env = "DRAY_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server; prints `dray listening on http://ADDR` (https with --tls-cert) once it accepts connections.
    Serve(Box<ServeCommand>),
    /// Apply the embedded PostgreSQL migrations and print the schema version (safe while nodes run).
    Migrate(MigrateArgs),
    /// Enqueue one job, or one job per line of a JSON Lines file.
    Enqueue(EnqueueArgs),
    /// List, inspect and cancel jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// The dead-letter queue: list, redrive, discard.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queue administration: list, stats, pause, resume, configure.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Run a shell command for each job of the given queues (a worker for any language).
    #[command(after_long_help = WORK_HELP)]
    Work(WorkArgs),
    /// Check that the server answers `GET /healthz` (exit 0), for container health checks and
    /// scripts; exit 6 when it does not.
    Health(HealthArgs),
    /// Print a shell completion script, generated from this command line's definition.
    #[command(after_long_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a directory with `--dir`.
    #[command(after_long_help = MAN_HELP)]
    Man(ManArgs),
    /// API tokens: create, list, revoke (needs an admin token).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Schedules (cron or interval, in any IANA time zone): create, list, show, pause, resume,
    /// trigger, delete, and preview a rule's fire times locally.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Locks with fencing tokens: list, show, release (an operator's), acquire and renew.
    #[command(subcommand)]
    Locks(LocksCommand),
}

#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// Held locks by name, with their holders.
    List {
        /// Names after this one (the previous page's last).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
        /// Locks per page, 1 to 1000.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One lock: permits, holders (owner, fencing token, deadline) and this node's waiters.
    Show { name: String },
    /// End holds as an operator (admin scope): the one with --fencing-token, or all with --all.
    /// The holders are not told; their next renew gets `lock-lost`.
    #[command(group(ArgGroup::new("which").required(true).args(["fencing_token", "all"])))]
    Release {
        name: String,
        #[arg(long, value_name = "TOKEN")]
        fencing_token: Option<u64>,
        /// Every hold of the lock.
        #[arg(long)]
        all: bool,
    },
    /// Acquire a lock for OWNER and print its fencing token (with --json, the whole grant).
    Acquire(LockAcquireArgs),
    /// Extend a hold; exit 4 (`lock-lost`) when the hold is gone.
    Renew {
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long, value_name = "TOKEN")]
        fencing_token: u64,
        /// The new length from now; default the hold's last TTL.
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct LockAcquireArgs {
    pub name: String,
    /// Who holds it (a host and process id, say); acquiring again with the same owner gets the
    /// same hold back.
    #[arg(long)]
    pub owner: String,
    /// How long the hold lasts unless renewed (100 to 43200000).
    #[arg(long, value_name = "MS")]
    pub ttl_ms: u64,
    /// Wait up to this long while others hold it (at most 60000); exit 4 (`lock-held`) if they
    /// still do.
    #[arg(long, value_name = "MS")]
    pub wait_ms: Option<u64>,
    /// A semaphore's size: how many owners may hold it at once.
    #[arg(long)]
    pub permits: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Create a schedule (refused if the name is taken, unless --replace).
    Create(ScheduleCreateArgs),
    /// Every schedule with its next fire time and last tick.
    List,
    /// One schedule, with its next fire times in its zone and in UTC.
    Show {
        name: String,
        /// How many coming fire times to list (0 to 1000).
        #[arg(long, value_name = "N", default_value_t = 5)]
        next: usize,
    },
    /// Stop ticking; ticks due meanwhile meet the misfire policy on resume.
    Pause { name: String },
    /// Tick again.
    Resume { name: String },
    /// Enqueue the schedule's job now, outside its rule (paused or not).
    Trigger { name: String },
    /// Delete a schedule; the jobs it enqueued stay.
    Delete { name: String },
    /// Print the next fire instants of a cron rule, strictly after --from, computed here without
    /// a server: one RFC 3339 UTC timestamp per line, or a JSON array with --json.
    Preview(SchedulePreviewArgs),
}

#[derive(Debug, Args)]
pub struct SchedulePreviewArgs {
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or @hourly,
    /// @daily, @weekly, @monthly, @yearly.
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// IANA time zone the rule reads its wall-clock times in.
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub timezone: String,
    /// List fire times strictly after this instant (RFC 3339); default now.
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// How many fire times (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub count: usize,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("rule").args(["cron", "every_ms"]).required(true)))]
#[command(group(ArgGroup::new("source").args(["payload", "payload_file"])))]
pub struct ScheduleCreateArgs {
    pub name: String,
    /// A cron rule: 5 fields, 6 with leading seconds, or a macro (@daily ...).
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,
    /// The cron rule's IANA time zone (default UTC).
    #[arg(long, value_name = "ZONE", requires = "cron")]
    pub timezone: Option<String>,
    /// An interval rule: every this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub every_ms: Option<u64>,
    /// The interval's anchor (RFC 3339): it fires at the anchor plus whole multiples (default the
    /// Unix epoch).
    #[arg(long, value_name = "RFC3339", requires = "every_ms")]
    pub anchor: Option<String>,
    /// The queue each tick's job goes to.
    #[arg(long)]
    pub queue: String,
    /// The payload of each job, as JSON. Default `{}`.
    #[arg(long)]
    pub payload: Option<String>,
    /// Read the payload (JSON) from a file; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i16>,
    #[arg(long, value_name = "N")]
    pub attempts_max: Option<u32>,
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// A tag of each job (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// What to do with missed ticks (after downtime or a pause).
    #[arg(long, value_enum)]
    pub misfire: Option<MisfireArg>,
    /// With --misfire run_all: at most this many jobs for missed ticks.
    #[arg(long, value_name = "N")]
    pub misfire_cap: Option<u32>,
    /// A tick due longer ago than this is missed.
    #[arg(long, value_name = "MS")]
    pub misfire_grace_ms: Option<u64>,
    /// What a tick does while the previous tick's job still waits or runs.
    #[arg(long, value_enum)]
    pub overlap: Option<OverlapArg>,
    /// Each job runs a random 0 to this many ms after its tick.
    #[arg(long, value_name = "MS")]
    pub jitter_ms: Option<u64>,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Replace a schedule of the same name instead of refusing.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum MisfireArg {
    RunOnce,
    Skip,
    RunAll,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum OverlapArg {
    Allow,
    Skip,
    CancelPrevious,
}

const COMPLETIONS_HELP: &str = "\
Install (one of):
  bash  dray completions bash > ~/.local/share/bash-completion/completions/dray
        (system-wide: /usr/share/bash-completion/completions/dray)
  zsh   dray completions zsh > \"${fpath[1]}/_dray\"   (a directory in $fpath; then compinit)
  fish  dray completions fish > ~/.config/fish/completions/dray.fish
Then open a new shell.";

const MAN_HELP: &str = "\
Install: dray man --dir /usr/local/share/man/man1   (then `man dray`, `man dray-serve`, ...)
Or read it once: dray man | man -l -";

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Give up after this long (connecting included): a hung server is unhealthy too.
    #[arg(long, value_name = "MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate the script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `dray.1` and one page per command (`dray-serve.1`, `dray-jobs-list.1`, ...) into this
    /// directory instead of printing `dray.1` on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints its secret, which is shown this once.
    Create(TokenCreateArgs),
    /// Every token (never a secret), oldest first.
    List,
    /// Revoke a token: refused at once by this server, by every node within a second.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// A label for people ("billing producer").
    #[arg(long)]
    pub name: String,
    /// A scope (repeatable): read, enqueue, work or admin, optionally limited to queues matching
    /// a pattern, e.g. `enqueue:billing.*` (`*` matches any run of characters).
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<String>,
    /// When the token stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z). Never, by default.
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The database (`postgres://user@host:5432/db`).
    #[arg(long, env = "DRAY_DATABASE", value_name = "URL")]
    pub database: String,
    /// The schema holding Dray's tables.
    #[arg(long, env = "DRAY_DATABASE_SCHEMA", value_name = "NAME", default_value = "dray")]
    pub database_schema: String,
}

#[derive(Debug, Args)]
pub struct ServeCommand {
    #[command(flatten)]
    pub args: dray_server::ServeArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").args(["payload", "payload_file", "jsonl"])))]
#[command(group(ArgGroup::new("when").args(["delay_ms", "run_at"])))]
pub struct EnqueueArgs {
    /// The queue (created with default settings on first use).
    #[arg(long)]
    pub queue: String,
    /// The payload, as JSON. Default `{}`.
    #[arg(long)]
    pub payload: Option<String>,
    /// Read the payload (JSON) from a file; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Enqueue one job per line (each line a JSON payload; blank lines are skipped); `-` reads
    /// stdin. Sent in atomic batches of up to 1000 jobs; a bad line stops the run before its batch
    /// is sent, so jobs of earlier batches stay enqueued. The other options apply to every job.
    #[arg(long, value_name = "FILE", conflicts_with = "idempotency_key")]
    pub jsonl: Option<PathBuf>,
    /// Higher runs first (-1000 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i16>,
    /// Run this many milliseconds after the server accepts the job.
    #[arg(long, value_name = "MS")]
    pub delay_ms: Option<u64>,
    /// Run at this time (RFC 3339, e.g. 2026-11-05T09:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub run_at: Option<String>,
    /// Deliveries in all, lease expiries included (default: the queue's).
    #[arg(long, value_name = "N")]
    pub attempts_max: Option<u32>,
    /// Lease duration of each attempt (default: the queue's).
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// The same key and payload again return the original job instead of a new one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Jobs of the queue sharing this key (customer, order) run one at a time, in enqueue order.
    #[arg(long, value_name = "KEY")]
    pub ordering_key: Option<String>,
    /// The job's group (customer, tenant, SKU) for the queue's per-group concurrency and rate
    /// limits and fair turns across groups.
    #[arg(long, value_name = "KEY")]
    pub group_key: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// W3C trace context (`00-<trace id>-<parent id>-<flags>`) handed to the worker with the job.
    #[arg(long, value_name = "TRACEPARENT", env = "TRACEPARENT")]
    pub traceparent: Option<String>,
    /// Run only after this job finished (repeatable); until then the job is `blocked`.
    #[arg(long = "after", value_name = "JOB_ID")]
    pub after: Vec<u64>,
    /// What the job does when a job of `--after` ends dead or cancelled: `cancel` (the default)
    /// or `run`.
    #[arg(long, value_name = "POLICY", value_parser = ["cancel", "run"])]
    pub on_dependency_failure: Option<String>,
    /// Wait up to this long (e.g. 30s, 2m, 1h30m) for the job to finish, then print it as `jobs
    /// show` does; exit 0 completed, 8 dead, 9 cancelled, 10 not finished yet.
    #[arg(long, value_name = "DURATION", value_parser = duration_parse, conflicts_with = "jsonl")]
    pub wait: Option<std::time::Duration>,
}

/// A duration such as `30s`, `2m`, `1h30m` or `500ms` (jiff's friendly format; ISO 8601
/// `PT30S` too). A unit is required: a bare number could mean seconds or milliseconds.
fn duration_parse(text: &str) -> Result<std::time::Duration, String> {
    let duration: jiff::SignedDuration =
        text.trim().parse().map_err(|e| format!("{text:?} is not a duration such as 30s, 2m or 1h30m: {e}"))?;
    std::time::Duration::try_from(duration).map_err(|_| format!("{text:?} is negative"))
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, oldest first; `--after` the last id shown for the next page.
    List(JobsListArgs),
    /// One job with its timeline (history).
    Show {
        id: u64,
        /// Wait up to this long (e.g. 30s, 2m, 1h30m) for the job to finish before printing it;
        /// exit 0 completed, 8 dead, 9 cancelled, 10 not finished yet (printed as it is).
        #[arg(long, value_name = "DURATION", value_parser = duration_parse)]
        wait: Option<std::time::Duration>,
    },
    /// Cancel a job; a running one is asked to stop (its worker sees it on its next heartbeat).
    Cancel { id: u64 },
    /// Run a scheduled or retrying job now instead of at its time (its attempts are kept).
    Promote { id: u64 },
}

#[derive(Debug, Args)]
pub struct JobsListArgs {
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub state: Option<StateArg>,
    #[arg(long)]
    pub tag: Option<String>,
    /// Only jobs whose last error contains this text (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// `oldest` first (enqueue order, the default) or `newest` first.
    #[arg(long)]
    pub order: Option<OrderArg>,
    /// 1 to 1000 (server default 100).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after this job id (the `next` of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
}

/// The order of a job list.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OrderArg {
    Oldest,
    Newest,
}

impl From<OrderArg> for dray_api::Order {
    fn from(order: OrderArg) -> Self {
        match order {
            OrderArg::Oldest => dray_api::Order::Oldest,
            OrderArg::Newest => dray_api::Order::Newest,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead jobs.
    List(DlqListArgs),
    /// Make dead jobs available again, with a fresh budget of attempts.
    Redrive(DeadActionArgs),
    /// Delete dead jobs.
    Discard(DeadActionArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub reason: Option<ReasonArg>,
    #[arg(long)]
    pub tag: Option<String>,
    /// Only jobs whose last error contains this text (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub error: Option<String>,
    /// `oldest` first (the default) or `newest` first.
    #[arg(long)]
    pub order: Option<OrderArg>,
    /// 1 to 1000 (server default 100).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after this job id (the `next` of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
}

/// Either job ids, or a filter (`--queue`, `--reason`) with an optional `--limit`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).multiple(true).args(["ids", "queue", "reason"])))]
pub struct DeadActionArgs {
    /// Dead job ids.
    #[arg(conflicts_with_all = ["queue", "reason", "limit"])]
    pub ids: Vec<u64>,
    /// Act on the dead jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only dead jobs with this reason.
    #[arg(long)]
    pub reason: Option<ReasonArg>,
    /// With a filter: act on at most this many. Without --rate, one request of at most 10000
    /// (server default 1000); with --rate, no limit unless given.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Report what would be done, change nothing (ignores --rate).
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many jobs per second, in requests of up to 1000, with a progress bar. With a
    /// filter, the matching jobs are listed first, so jobs that die again meanwhile are not picked
    /// up twice.
    #[arg(long, value_name = "JOBS_PER_S")]
    pub rate: Option<NonZeroU32>,
}

// Parsed once per run: `Configure`'s size (the flow limits' flags made it 256 bytes) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// All queues with their job counts.
    List,
    /// One queue: configuration and job counts.
    Stats { name: String },
    /// Stop handing out this queue's jobs (enqueue still works).
    Pause { name: String },
    /// Hand out this queue's jobs again.
    Resume { name: String },
    /// Delete a queue that holds no work (its completed and cancelled jobs go with it); a queue
    /// with waiting, running, retrying or dead jobs is refused.
    Delete { name: String },
    /// Create a queue or change its policy; flags not given stay as they are.
    Configure(QueueConfigureArgs),
    /// Force a queue's circuit breaker open (it stays open, leasing nothing, until closed by
    /// hand) or closed (leases flow again, its window starts empty).
    Breaker { action: BreakerActionArg, name: String },
}

/// `dray queues breaker <ACTION>`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BreakerActionArg {
    Open,
    Close,
}

#[derive(Debug, Args)]
pub struct QueueConfigureArgs {
    pub name: String,
    /// Deliveries per job, lease expiries included.
    #[arg(long, value_name = "N")]
    pub attempts_max: Option<u32>,
    /// Default lease duration.
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// How long completed and cancelled jobs are kept.
    #[arg(long, value_name = "MS")]
    pub retention_ms: Option<u64>,
    /// How long dead jobs are kept.
    #[arg(long, value_name = "MS")]
    pub retention_dead_ms: Option<u64>,
    /// Retry backoff: the wait before retry n is random in [0, min(cap, base * factor^(n-1))].
    /// Give all three backoff flags together.
    #[arg(long, value_name = "MS", requires_all = ["backoff_factor", "backoff_cap_ms"])]
    pub backoff_base_ms: Option<u64>,
    #[arg(long, value_name = "F", requires_all = ["backoff_base_ms", "backoff_cap_ms"])]
    pub backoff_factor: Option<f64>,
    #[arg(long, value_name = "MS", requires_all = ["backoff_base_ms", "backoff_factor"])]
    pub backoff_cap_ms: Option<u64>,
    /// A JSON Schema (a file, or - for stdin) every new payload of the queue must match.
    #[arg(long, value_name = "FILE", conflicts_with = "no_payload_schema")]
    pub payload_schema_file: Option<std::path::PathBuf>,
    /// Remove the queue's payload schema.
    #[arg(long)]
    pub no_payload_schema: bool,
    /// Whether a dead job holds back the later jobs of its ordering key until it is redriven
    /// or discarded (block, the default) or the key moves on past it (skip).
    #[arg(long, value_name = "POLICY")]
    pub ordering_dead: Option<OrderingDeadArg>,
    /// Jobs of the queue running at once across every worker and node, or `none`.
    #[arg(long, value_name = "N|none")]
    pub concurrency_max: Option<String>,
    /// Jobs of one group key running at once, or `none`.
    #[arg(long, value_name = "N|none")]
    pub group_concurrency_max: Option<String>,
    /// Leases per time for the whole queue: `LIMIT/DURATION` (`100/1s`, `5/250ms`, `1000/1m`),
    /// optionally `,burst=N` (default: the limit), or `none`.
    #[arg(long, value_name = "RATE|none")]
    pub rate: Option<String>,
    /// Leases per time for each group key, as `--rate`.
    #[arg(long, value_name = "RATE|none")]
    pub group_rate: Option<String>,
    /// Circuit breaker: open when the failed share of the attempts that ended within the window
    /// reaches this ratio (0 < R <= 1). Give all five breaker flags together.
    #[arg(
        long,
        value_name = "R",
        requires_all = ["breaker_window_ms", "breaker_min_attempts", "breaker_open_ms", "breaker_probes"],
        conflicts_with = "no_breaker"
    )]
    pub breaker_failure_ratio: Option<f64>,
    /// Circuit breaker: the sliding window the ratio is counted over.
    #[arg(long, value_name = "MS", requires = "breaker_failure_ratio")]
    pub breaker_window_ms: Option<u64>,
    /// Circuit breaker: never open on fewer attempts in the window than this.
    #[arg(long, value_name = "N", requires = "breaker_failure_ratio")]
    pub breaker_min_attempts: Option<u32>,
    /// Circuit breaker: how long it stays open before trial leases.
    #[arg(long, value_name = "MS", requires = "breaker_failure_ratio")]
    pub breaker_open_ms: Option<u64>,
    /// Circuit breaker: trial leases while half-open; all succeeding close it.
    #[arg(long, value_name = "N", requires = "breaker_failure_ratio")]
    pub breaker_probes: Option<u32>,
    /// Remove the queue's circuit breaker.
    #[arg(long)]
    pub no_breaker: bool,
}

/// `--ordering-dead`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrderingDeadArg {
    Block,
    Skip,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// A queue to lease from (repeatable).
    #[arg(long = "queue", value_name = "QUEUE", required = true)]
    pub queues: Vec<String>,
    /// The command to run for each job, through `sh -c`.
    #[arg(long, value_name = "CMD")]
    pub exec: String,
    /// How many commands may run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// On Ctrl-C or SIGTERM, how long the running commands may take to finish before they are
    /// killed and their jobs handed back (failed, retried at once).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,
    /// How log lines (one per job) are written to stderr; `RUST_LOG` filters them.
    #[arg(long, env = "DRAY_LOG_FORMAT", value_enum, default_value_t = dray_server::LogFormat::Text)]
    pub log_format: dray_server::LogFormat,
}

/// A job state, spelled as on the wire.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StateArg {
    Scheduled,
    Available,
    Running,
    Retrying,
    Completed,
    Dead,
    Cancelled,
}

impl From<StateArg> for dray_api::State {
    fn from(state: StateArg) -> Self {
        use dray_api::State;
        match state {
            StateArg::Scheduled => State::Scheduled,
            StateArg::Available => State::Available,
            StateArg::Running => State::Running,
            StateArg::Retrying => State::Retrying,
            StateArg::Completed => State::Completed,
            StateArg::Dead => State::Dead,
            StateArg::Cancelled => State::Cancelled,
        }
    }
}

/// Why a job is dead, spelled as on the wire.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ReasonArg {
    Failed,
    LeaseExpired,
    NonRetryable,
    Rejected,
}

impl From<ReasonArg> for dray_api::DeadReason {
    fn from(reason: ReasonArg) -> Self {
        use dray_api::DeadReason;
        match reason {
            ReasonArg::Failed => DeadReason::Failed,
            ReasonArg::LeaseExpired => DeadReason::LeaseExpired,
            ReasonArg::NonRetryable => DeadReason::NonRetryable,
            ReasonArg::Rejected => DeadReason::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_durations_need_a_unit_and_are_not_negative() {
        use std::time::Duration;
        let cases =
            [("30s", Duration::from_secs(30)), ("2m", Duration::from_secs(120)), ("1h30m", Duration::from_secs(5400))];
        for (text, want) in cases {
            assert_eq!(duration_parse(text), Ok(want), "{text}");
        }
        assert_eq!(duration_parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration_parse("0s"), Ok(Duration::ZERO));
        assert!(duration_parse("30").unwrap_err().contains("such as 30s"));
        assert!(duration_parse("-5s").unwrap_err().contains("negative"));
    }
}
