// BullMQ on Redis, set up the way BullMQ's guides advise for a busy queue:
// - separate ioredis connections for the producer (Queue) and the Worker; the Worker's has
//   `maxRetriesPerRequest: null` because it blocks waiting for jobs and must not give up on a
//   reconnect (BullMQ warns otherwise), and BullMQ duplicates it for its blocking client;
// - `Queue.addBulk` for batches (one atomic MULTI per call), `Queue.add` for single jobs;
// - one Worker with `concurrency` jobs in flight (a single Node process did better than two on
//   this 2-core machine), and bounded auto-removal of finished jobs, as the production guide
//   recommends, so Redis memory does not grow with every job ever run.

import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { DriverError, checkedVersion, log, within } from './common.mjs';

const CONNECT_TIMEOUT_MS = 15000;

/** Connects and pings once with no retries, so a wrong URL fails at once with a clear message. */
async function probe(url) {
  const redis = new Redis(url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  // With no retries ioredis rejects with "Connection is closed"; the cause comes as an event.
  let cause = null;
  redis.on('error', (e) => {
    cause ??= e.message;
  });
  try {
    await within(CONNECT_TIMEOUT_MS, `connecting to Redis at ${url}`, redis.connect());
    const info = await redis.info('server');
    const [, appendonly] = await redis.config('GET', 'appendonly');
    const [, appendfsync] = await redis.config('GET', 'appendfsync');
    const [, save] = await redis.config('GET', 'save');
    const [, maxmemoryPolicy] = await redis.config('GET', 'maxmemory-policy');
    const version = /redis_version:([^\r\n]+)/.exec(info)?.[1] ?? 'unknown';
    return { version, appendonly, appendfsync, save, maxmemoryPolicy, db: redis.options.db ?? 0 };
  } catch (error) {
    if (error instanceof DriverError) throw error;
    throw new DriverError(`cannot reach Redis at ${url}: ${cause ?? error.message}`);
  } finally {
    redis.disconnect();
  }
}

export async function open(flags, recorder) {
  const version = checkedVersion('bullmq');
  const ioredisVersion = checkedVersion('ioredis');
  const server = await probe(flags.redisUrl);
  if (server.maxmemoryPolicy !== 'noeviction') {
    log(`warning: Redis maxmemory-policy is ${server.maxmemoryPolicy}; BullMQ needs noeviction`);
  }

  // The producer connection keeps ioredis' default retry policy: an enqueue fails instead of
  // hanging forever if Redis goes away mid-run.
  const producerConnection = new Redis(flags.redisUrl);
  const workerConnection = new Redis(flags.redisUrl, { maxRetriesPerRequest: null });
  for (const c of [producerConnection, workerConnection]) c.on('error', (e) => log(`redis: ${e.message}`));

  // A fresh database: the orchestrator's Redis is ours alone (see README for hand runs).
  await producerConnection.flushdb();

  const removeOnComplete = { count: 1000 };
  const removeOnFail = { count: 5000 };
  const queue = new Queue(flags.queue, { connection: producerConnection });
  queue.on('error', (e) => log(`queue: ${e.message}`));
  const worker = new Worker(
    flags.queue,
    async (job) => {
      recorder.start(job.data);
      recorder.finish();
    },
    {
      connection: workerConnection,
      concurrency: flags.concurrency,
      autorun: false,
      removeOnComplete,
      removeOnFail,
    },
  );
  let workerErrors = 0;
  worker.on('error', (e) => {
    workerErrors++;
    log(`worker: ${e.message}`);
  });
  worker.on('failed', (job, e) => log(`job ${job?.id} failed: ${e.message}`));
  await within(CONNECT_TIMEOUT_MS, 'BullMQ queue start', queue.waitUntilReady());
  await within(CONNECT_TIMEOUT_MS, 'BullMQ worker start', worker.waitUntilReady());

  let running = null;
  const name = flags.queue;

  return {
    version,
    config: {
      redis_version: server.version,
      redis_db: server.db,
      durability: server.appendonly === 'yes' ? `aof appendfsync ${server.appendfsync}` : 'none (no aof)',
      redis_appendonly: server.appendonly,
      redis_appendfsync: server.appendfsync,
      redis_save: server.save,
      redis_maxmemory_policy: server.maxmemoryPolicy,
      ioredis_version: ioredisVersion,
      worker_processes: 1,
      worker_concurrency: flags.concurrency,
      connections: 'producer: own ioredis; worker: own ioredis (maxRetriesPerRequest null) + its blocking duplicate',
      enqueue_batch_api: 'Queue.addBulk',
      enqueue_single_api: 'Queue.add',
      removeOnComplete,
      removeOnFail,
      attempts: 1,
      drainDelay_s: 5,
    },
    async enqueueBatch(payloads) {
      await queue.addBulk(payloads.map((data) => ({ name, data })));
    },
    async enqueueOne(payload) {
      await queue.add(name, payload);
    },
    async startWorkers() {
      // `run()` settles only when the worker closes.
      running = worker.run().catch((e) => {
        workerErrors++;
        log(`worker run: ${e.message}`);
      });
    },
    async stopWorkers() {
      await worker.close();
      await running;
    },
    async pending() {
      const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized', 'paused', 'waiting-children');
      return Object.values(counts).reduce((a, b) => a + b, 0);
    },
    errors() {
      return workerErrors;
    },
    async close() {
      await queue.close();
      await worker.close();
      producerConnection.disconnect();
      workerConnection.disconnect();
    },
  };
}
