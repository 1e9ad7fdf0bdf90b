// graphile-worker on PostgreSQL, set up after its performance page:
// - the schema is installed (`runMigrations`) before timing starts;
// - producers use one WorkerUtils instance (its own pool): `addJobs` for batches (a single
//   `add_jobs` call per batch), `addJob` for single jobs;
// - the worker is `run()` with a task list holding one no-op task named after the queue,
//   `concurrency` jobs at once, a pool of max(10, concurrency + 2) connections (the size its
//   docs advise), new jobs found through LISTEN/NOTIFY, `pollInterval` left at its default
//   (it only matters for jobs scheduled in the future and retries), `noHandleSignals`;
// - batching (on by default, `--graphile-batching off` for one fetch and one commit per job):
//   `localQueue.size` 500 and `completeJobBatchDelay`/`failJobBatchDelay` 0, the settings its
//   performance page used for its own figures; they trade extra locked jobs for fewer queries.
// Jobs are given no `queueName`: a named queue runs its jobs one at a time.

import graphileWorker from 'graphile-worker';
import { checkedVersion, log, within } from './common.mjs';
import { probe, withClient } from './postgres.mjs';

const { Logger, makeWorkerUtils, run, runMigrations } = graphileWorker;

const SETUP_TIMEOUT_MS = 60000;
const LOCAL_QUEUE_SIZE = 500;
const POLL_INTERVAL_MS = 2000;
const SCHEMA = 'graphile_worker';

/**
 * graphile-worker logs to stdout by default, and a line per completed job at `info`: the result
 * line must be alone on stdout, and a line per job would swamp stderr, so only warnings and
 * errors are kept (on stderr).
 */
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') log(`graphile-worker ${level}: ${message}`);
});

export async function open(flags, recorder) {
  const version = checkedVersion('graphile-worker');
  const server = await probe(flags.databaseUrl);
  const connectionString = flags.databaseUrl;
  const identifier = flags.queue;

  await within(SETUP_TIMEOUT_MS, 'graphile-worker migrations', runMigrations({ connectionString, logger }));
  // The orchestrator hands over a fresh database; a hand run may reuse one, and a job left over
  // from an earlier run would be counted against this run's seq ids: start with none queued.
  const leftover = await withClient(connectionString, (client) =>
    client.query(
      `delete from ${SCHEMA}._private_jobs j using ${SCHEMA}._private_tasks t
        where j.task_id = t.id and t.identifier = $1`,
      [identifier],
    ),
  );
  if (leftover.rowCount > 0) log(`removed ${leftover.rowCount} rows (any state) left by an earlier run`);
  const utils = await within(
    SETUP_TIMEOUT_MS,
    'graphile-worker utils',
    makeWorkerUtils({ connectionString, logger }),
  );

  const maxPoolSize = Math.max(10, flags.concurrency + 2);
  const batching = flags.graphileBatching
    ? { localQueue: { size: LOCAL_QUEUE_SIZE }, completeJobBatchDelay: 0, failJobBatchDelay: 0 }
    : { localQueue: { size: -1 }, completeJobBatchDelay: -1, failJobBatchDelay: -1 };

  let runner = null;
  let workerErrors = 0;

  return {
    version,
    config: {
      ...server,
      worker_processes: 1,
      concurrency: flags.concurrency,
      maxPoolSize,
      producer_pool_size: 10,
      pollInterval_ms: POLL_INTERVAL_MS,
      new_job_wakeup: 'LISTEN/NOTIFY',
      batching: flags.graphileBatching ? 'on' : 'off',
      localQueue_size: batching.localQueue.size,
      completeJobBatchDelay_ms: batching.completeJobBatchDelay,
      failJobBatchDelay_ms: batching.failJobBatchDelay,
      enqueue_batch_api: 'WorkerUtils.addJobs',
      enqueue_single_api: 'WorkerUtils.addJob',
      task_identifier: identifier,
      maxAttempts: 25,
      noHandleSignals: true,
    },
    async enqueueBatch(payloads) {
      await utils.addJobs(payloads.map((payload) => ({ identifier, payload })));
    },
    async enqueueOne(payload) {
      await utils.addJob(identifier, payload);
    },
    async startWorkers() {
      runner = await run({
        connectionString,
        concurrency: flags.concurrency,
        maxPoolSize,
        pollInterval: POLL_INTERVAL_MS,
        noHandleSignals: true,
        logger,
        taskList: {
          [identifier]: async (payload) => {
            recorder.start(payload);
            recorder.finish();
          },
        },
        preset: { worker: batching },
      });
      runner.events.on('job:error', ({ error }) => {
        workerErrors++;
        log(`job error: ${error?.message ?? error}`);
      });
      runner.events.on('pool:listen:error', ({ error }) => log(`listen error: ${error?.message ?? error}`));
    },
    async stopWorkers() {
      if (runner === null) return;
      // stop() returns locally queued jobs to the database and flushes batched completions.
      await runner.stop();
      await runner.promise.catch((e) => {
        workerErrors++;
        log(`runner: ${e.message}`);
      });
      runner = null;
    },
    async pending() {
      return withClient(connectionString, async (client) => {
        const { rows } = await client.query(
          `select count(*)::int as n from ${SCHEMA}.jobs where task_identifier = $1`,
          [identifier],
        );
        return rows[0].n;
      });
    },
    errors() {
      return workerErrors;
    },
    async close() {
      if (runner !== null) await this.stopWorkers();
      await utils.release();
    },
  };
}
