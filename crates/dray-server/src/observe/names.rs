//! Every metric's name, once. They are a contract with the Grafana dashboard and the alert rules
//! in `deploy/` and with docs/operations.md: rename one only together with them.

pub(crate) const JOBS_ENQUEUED_TOTAL: &str = "dray_jobs_enqueued_total";
pub(crate) const JOBS_LEASED_TOTAL: &str = "dray_jobs_leased_total";
pub(crate) const JOBS_COMPLETED_TOTAL: &str = "dray_jobs_completed_total";
pub(crate) const JOBS_FAILED_TOTAL: &str = "dray_jobs_failed_total";
pub(crate) const LEASE_EXPIRIES_TOTAL: &str = "dray_lease_expiries_total";
pub(crate) const JOBS_DEAD_TOTAL: &str = "dray_jobs_dead_total";
pub(crate) const JOBS_REDRIVEN_TOTAL: &str = "dray_jobs_redriven_total";
pub(crate) const JOBS_DISCARDED_TOTAL: &str = "dray_jobs_discarded_total";
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "dray_http_requests_total";
pub(crate) const SCHEDULE_TICKS_TOTAL: &str = "dray_schedule_ticks_total";
pub(crate) const SCHEDULE_MISFIRES_TOTAL: &str = "dray_schedule_misfires_total";
pub(crate) const SCHEDULE_TICKS_DROPPED_TOTAL: &str = "dray_schedule_ticks_dropped_total";

pub(crate) const JOB_WAIT_SECONDS: &str = "dray_job_wait_seconds";
pub(crate) const JOB_RUN_SECONDS: &str = "dray_job_run_seconds";
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "dray_http_request_duration_seconds";
pub(crate) const STORE_CALL_SECONDS: &str = "dray_store_call_seconds";
pub(crate) const SCHEDULE_TICK_LATENESS_SECONDS: &str = "dray_schedule_tick_lateness_seconds";
/// Recorded by the embedded store's log writer (`dray-store-embedded/src/wal.rs`, which spells
/// them out itself: it knows nothing of the server).
pub(crate) const STORE_APPEND_SECONDS: &str = "dray_store_append_seconds";
pub(crate) const STORE_FSYNC_SECONDS: &str = "dray_store_fsync_seconds";
pub(crate) const STORE_GROUP_COMMIT_OPERATIONS: &str = "dray_store_group_commit_operations";

pub(crate) const QUEUE_JOBS: &str = "dray_queue_jobs";
pub(crate) const QUEUE_DEAD_OLDEST_AGE_SECONDS: &str = "dray_queue_dead_oldest_age_seconds";
pub(crate) const QUEUE_PAUSED: &str = "dray_queue_paused";
pub(crate) const QUEUE_CONCURRENCY_MAX: &str = "dray_queue_concurrency_max";
pub(crate) const QUEUE_RATE_LIMIT_PER_SECOND: &str = "dray_queue_rate_limit_per_second";
pub(crate) const QUEUE_BREAKER_STATE: &str = "dray_queue_breaker_state";
/// A counter kept by the store (the breaker's own count of its transitions), rendered at scrape
/// time like the gauges: the same value from every node in PostgreSQL mode.
pub(crate) const QUEUE_BREAKER_TRANSITIONS_TOTAL: &str = "dray_queue_breaker_transitions_total";
pub(crate) const QUEUE_BACKOFF_SECONDS: &str = "dray_queue_backoff_seconds";
pub(crate) const QUEUE_LAST_POLL_TIMESTAMP_SECONDS: &str = "dray_queue_last_poll_timestamp_seconds";
pub(crate) const WORKERS_POLLING: &str = "dray_workers_polling";
pub(crate) const SCHEDULE_NEXT_TICK_TIMESTAMP_SECONDS: &str = "dray_schedule_next_tick_timestamp_seconds";
pub(crate) const STORE_POOL_CONNECTIONS: &str = "dray_store_pool_connections";
pub(crate) const STORE_POOL_CONNECTIONS_MAX: &str = "dray_store_pool_connections_max";
pub(crate) const BUILD_INFO: &str = "dray_build_info";
pub(crate) const WORKERS: &str = "dray_workers";
pub(crate) const MEMORY_USED_BYTES: &str = "dray_memory_used_bytes";
pub(crate) const MEMORY_BUDGET_BYTES: &str = "dray_memory_budget_bytes";

/// The `queue` label shared by every queue beyond `metrics_queues_max`.
pub(crate) const QUEUE_OTHER: &str = "_other";
