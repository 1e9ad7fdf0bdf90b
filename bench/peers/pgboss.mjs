// pg-boss 10 on PostgreSQL, set up as its docs describe for throughput:
// - `start()` installs or migrates the schema and `createQueue` makes the queue (a "standard"
//   policy queue) before timing starts;
// - `insert()` for batches (one statement for the whole array), `send()` for single jobs;
// - workers are `work()` loops. pg-boss 10 has no per-worker concurrency setting: a loop fetches
//   up to `batchSize` jobs and hands the array to one handler call, and its docs point to
//   `batchSize` (and more `work()` calls) for throughput. The driver fetches 500 at a time (the
//   same read-ahead graphile-worker gets with its localQueue) and the handler runs them with at
//   most --concurrency in flight (split over the loops), so "concurrency" means the same thing
//   for every system: jobs executing at once, not jobs fetched.
// - pg-boss 10 has no push wake-up: each loop polls, and after a fetch it sleeps until
//   `pollingIntervalSeconds` has passed since the fetch began (unless the fetch and handler took
//   longer). 0.5 s is the least it accepts, so a loop fetches at most twice a second and the
//   ceiling is loops x batchSize / 0.5 s jobs/s. That is its design; the config reports it.
//   (`notifyWorker` can cut a sleep short, but only from inside the worker's own process, so a
//   producer elsewhere could not use it: the driver does not either.)

import PgBoss from 'pg-boss';
import { checkedVersion, log, now, sleep, within } from './common.mjs';
import { probe, withClient } from './postgres.mjs';

const SETUP_TIMEOUT_MS = 60000;
const POLLING_INTERVAL_S = 0.5; // pg-boss 10's minimum (POLICY.MIN_POLLING_INTERVAL_MS)
const SCHEMA = 'pgboss';
const SETTLE_TIMEOUT_MS = 10000;
const FETCH_BATCH_DEFAULT = 500;

export async function open(flags, recorder) {
  const version = checkedVersion('pg-boss');
  const server = await probe(flags.databaseUrl);
  const name = flags.queue;
  const workers = flags.pgbossWorkers;
  const batchSize = flags.pgbossBatchSize ?? FETCH_BATCH_DEFAULT;
  const perLoop = Math.max(1, Math.floor(flags.concurrency / workers));
  // Each loop holds a connection while it fetches; completions and producers need some more.
  const poolSize = Math.max(10, workers + 4);

  const boss = new PgBoss({ connectionString: flags.databaseUrl, max: poolSize });
  let bossErrors = 0;
  boss.on('error', (e) => {
    bossErrors++;
    log(`pg-boss: ${e.message}`);
  });
  await within(SETUP_TIMEOUT_MS, 'pg-boss start (schema install)', boss.start());
  // The orchestrator hands over a fresh database; a hand run may reuse one, and a job left over
  // from an earlier run would be counted against this run's seq ids: start from an empty queue.
  // (`deleteQueue` refuses while the queue holds jobs, hence the plain delete.)
  await within(SETUP_TIMEOUT_MS, 'pg-boss createQueue', boss.createQueue(name, { name, policy: 'standard' }));
  const leftover = await withClient(flags.databaseUrl, (client) =>
    client.query(`delete from ${SCHEMA}.job where name = $1`, [name]),
  );
  if (leftover.rowCount > 0) log(`removed ${leftover.rowCount} rows (any state) left by an earlier run`);

  const stateCounts = async () =>
    withClient(flags.databaseUrl, async (client) => {
      const { rows } = await client.query(
        `select state::text, count(*)::int as n from ${SCHEMA}.job where name = $1 group by state`,
        [name],
      );
      return Object.fromEntries(rows.map((r) => [r.state, r.n]));
    });

  return {
    version,
    config: {
      ...server,
      worker_processes: 1,
      work_loops: workers,
      batchSize,
      handler_concurrency_per_loop: perLoop,
      jobs_in_flight_max: workers * Math.min(perLoop, batchSize),
      pollingIntervalSeconds: POLLING_INTERVAL_S,
      pollingIntervalSeconds_min: POLLING_INTERVAL_S,
      new_job_wakeup: 'polling only',
      fetch_ceiling_jobs_per_s: (workers * batchSize) / POLLING_INTERVAL_S,
      pool_max: poolSize,
      queue_policy: 'standard',
      enqueue_batch_api: 'PgBoss.insert',
      enqueue_single_api: 'PgBoss.send',
      handler_shape: 'one call per fetched batch; pg-boss completes the whole batch when it returns',
      retryLimit: 2,
    },
    async enqueueBatch(payloads) {
      await boss.insert(payloads.map((data) => ({ name, data })));
    },
    async enqueueOne(payload) {
      await boss.send(name, payload);
    },
    async startWorkers() {
      for (let k = 0; k < workers; k++) {
        await boss.work(name, { batchSize, pollingIntervalSeconds: POLLING_INTERVAL_S }, async (jobs) => {
          // `perLoop` runners take the batch's jobs in turn: at most that many run at once.
          let next = 0;
          const runner = async () => {
            while (next < jobs.length) {
              recorder.start(jobs[next++].data);
              recorder.finish();
            }
          };
          await Promise.all(Array.from({ length: Math.min(perLoop, jobs.length) }, runner));
        });
      }
    },
    async stopWorkers() {
      await boss.offWork(name);
      // pg-boss sends a batch's completion without waiting for it: let those land (and the
      // loops wind down) before the pending count is read.
      const begin = now();
      while (now() - begin < SETTLE_TIMEOUT_MS) {
        const counts = await stateCounts();
        if (!counts.active) break;
        await sleep(100);
      }
    },
    async pending() {
      const counts = await stateCounts();
      return (counts.created ?? 0) + (counts.retry ?? 0) + (counts.active ?? 0);
    },
    errors() {
      return bossErrors;
    },
    async close() {
      await boss.stop({ graceful: true, wait: true, timeout: SETTLE_TIMEOUT_MS });
    },
  };
}
