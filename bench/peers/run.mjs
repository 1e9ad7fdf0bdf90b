#!/usr/bin/env node
// The peer driver of `cargo xtask bench compare`: runs one workload against one peer system and
// prints one JSON object as the last line of stdout (progress goes to stderr). See README.md.

import {
  DriverError,
  Recorder,
  log,
  now,
  parseFlags,
  seconds,
  sleep,
  waitUntil,
} from './common.mjs';

const SYSTEMS = {
  bullmq: () => import('./bullmq.mjs'),
  'graphile-worker': () => import('./graphile.mjs'),
  'pg-boss': () => import('./pgboss.mjs'),
};

/** Time given to a worker that reports itself started to enter its fetch loop, before timing. */
const WORKER_SETTLE_MS = 250;
/** Bulk and single wait for every job; they give up when nothing has run for this long. */
const STALL_MS = 30000;
/** Steady: how long the backlog may take to drain after the producers stop (the contract's 10 s). */
const STEADY_DRAIN_MS = 10000;
/** Steady, paced: enqueue calls one producer may have unanswered before it waits for one. */
const PRODUCER_OUTSTANDING_MAX = 256;

function round(value, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

async function bulk(flags, system, recorder) {
  log(`bulk: enqueueing ${flags.jobs} jobs in batches of ${flags.batch}, no worker running`);
  const enqueueStart = now();
  for (let done = 0; done < flags.jobs; ) {
    const n = Math.min(flags.batch, flags.jobs - done);
    const payloads = new Array(n);
    for (let k = 0; k < n; k++) payloads[k] = recorder.payload();
    try {
      await system.enqueueBatch(payloads);
    } catch (error) {
      recorder.fail(payloads);
      throw new DriverError(`enqueueing a batch of ${n} failed after ${done} jobs: ${error.message}`);
    }
    recorder.ack(payloads);
    done += n;
  }
  const enqueueEnd = now();
  log(`bulk: enqueued in ${seconds(enqueueEnd - enqueueStart)} s; starting workers`);

  const workerStart = now();
  await system.startWorkers();
  const workerStarted = now();
  const drained = await waitUntil(() => recorder.unique >= recorder.enqueued, {
    progress: () => recorder.unique,
    stallMs: STALL_MS,
    label: 'bulk: jobs run',
  });
  const enqueueS = (enqueueEnd - enqueueStart) / 1000;
  const processS = drained ? (recorder.lastFinishMs - workerStart) / 1000 : null;
  return {
    complete: drained,
    fields: {
      jobs: recorder.unique,
      enqueue_s: round(enqueueS, 3),
      process_s: round(processS, 3),
      e2e_s: processS === null ? null : round(enqueueS + processS, 3),
    },
    detail: {
      enqueue_rate: round(flags.jobs / enqueueS),
      process_rate: processS === null ? null : round(recorder.unique / processS),
      worker_start_ms: round(workerStarted - workerStart),
    },
  };
}

/** One paced producer: open loop, job k of producer p is due at start + (k * P + p) / rate. */
async function pacedProducer(p, flags, system, recorder, window, stats) {
  const interval = (1000 * flags.producers) / flags.rate;
  const offset = (1000 * p) / flags.rate;
  const inflight = new Set();
  for (let k = 0; ; ) {
    const due = window.start + offset + k * interval;
    const t = now();
    // A producer that fell behind (its calls unanswered) does not catch up after the window:
    // what it could not offer in time was not offered.
    if (due >= window.end || t >= window.end) break;
    if (due > t) {
      await sleep(due - t);
      continue;
    }
    if (inflight.size >= PRODUCER_OUTSTANDING_MAX) {
      await Promise.race(inflight);
      continue;
    }
    stats.lagMaxMs = Math.max(stats.lagMaxMs, t - due);
    const payload = recorder.payload();
    const call = system.enqueueOne(payload).then(
      () => recorder.ack([payload]),
      (error) => {
        recorder.fail([payload]);
        if (stats.errorsLogged++ < 5) log(`enqueue failed: ${error.message}`);
      },
    );
    inflight.add(call);
    call.finally(() => inflight.delete(call));
    k++;
  }
  await Promise.all(inflight);
}

/** One flat-out producer: closed loop, the next enqueue call as soon as the last is answered. */
async function flatOutProducer(flags, system, recorder, window, stats) {
  while (now() < window.end) {
    const payload = recorder.payload();
    try {
      await system.enqueueOne(payload);
      recorder.ack([payload]);
    } catch (error) {
      recorder.fail([payload]);
      if (stats.errorsLogged++ < 5) log(`enqueue failed: ${error.message}`);
    }
  }
}

async function steady(flags, system, recorder) {
  await system.startWorkers();
  await sleep(WORKER_SETTLE_MS);
  const start = now() + 5;
  const window = { start, end: start + flags.durationMs };
  recorder.window = window;
  const offered = flags.rate > 0 ? `${flags.rate} jobs/s` : 'flat out';
  log(`steady: ${flags.producers} producers, ${offered}, for ${flags.durationMs} ms`);

  const backlogStart = recorder.backlog();
  let backlogEnd = null;
  let outstandingEnd = null;
  const endSample = setTimeout(() => {
    backlogEnd = recorder.backlog();
    outstandingEnd = recorder.issued - recorder.enqueued - recorder.enqueueErrors;
  }, window.end - now());

  const stats = { lagMaxMs: 0, errorsLogged: 0 };
  const producers = [];
  for (let p = 0; p < flags.producers; p++) {
    producers.push(
      flags.rate > 0
        ? pacedProducer(p, flags, system, recorder, window, stats)
        : flatOutProducer(flags, system, recorder, window, stats),
    );
  }
  await Promise.all(producers);
  if (now() < window.end) await sleep(window.end - now());
  await sleep(1);
  clearTimeout(endSample);
  if (backlogEnd === null) {
    backlogEnd = recorder.backlog();
    outstandingEnd = 0;
  }
  const issued = recorder.issued;

  const drainStart = now();
  const drained = await waitUntil(() => recorder.unique >= recorder.enqueued, {
    progress: () => recorder.unique,
    stallMs: STEADY_DRAIN_MS,
    maxMs: STEADY_DRAIN_MS,
    label: 'steady: draining backlog',
  });
  const windowS = flags.durationMs / 1000;
  const achieved = recorder.finishedInWindow / windowS;
  const offeredRate = flags.rate > 0 ? flags.rate : issued / windowS;
  const sustained =
    flags.rate > 0
      ? achieved >= 0.95 * flags.rate && backlogEnd <= Math.max(1000, 0.5 * flags.rate)
      : null;
  return {
    // The backlog may legitimately outlast the drain time at a rate the system cannot sustain.
    complete: true,
    fields: {
      jobs: recorder.finishedInWindow,
      offered_rate: round(offeredRate),
      achieved_rate: round(achieved),
      backlog_start: backlogStart,
      backlog_end: backlogEnd,
      sustained,
      latency_ms: recorder.latency.quantiles(),
    },
    detail: {
      enqueued_in_window: issued,
      enqueue_rate: round(recorder.enqueued / windowS),
      enqueue_outstanding_at_end: outstandingEnd,
      producer_lag_max_ms: round(stats.lagMaxMs),
      drained_within_10s: drained,
      drain_ms: round(now() - drainStart),
      unfinished_after_drain: recorder.enqueued - recorder.unique,
      completed_total: recorder.unique,
    },
  };
}

async function single(flags, system, recorder) {
  await system.startWorkers();
  await sleep(WORKER_SETTLE_MS);
  log(`single: ${flags.jobs} sequential enqueue calls`);
  const begin = now();
  for (let k = 0; k < flags.jobs; k++) {
    const payload = recorder.payload();
    const t = now();
    try {
      await system.enqueueOne(payload);
    } catch (error) {
      recorder.fail([payload]);
      throw new DriverError(`enqueue call ${k + 1} of ${flags.jobs} failed: ${error.message}`);
    }
    recorder.requestLatency.push(now() - t);
    recorder.ack([payload]);
  }
  const enqueueS = (now() - begin) / 1000;
  const drained = await waitUntil(() => recorder.unique >= recorder.enqueued, {
    progress: () => recorder.unique,
    stallMs: STALL_MS,
    label: 'single: jobs run',
  });
  return {
    complete: drained,
    fields: {
      jobs: recorder.unique,
      latency_ms: recorder.latency.quantiles(),
      request_latency_ms: recorder.requestLatency.quantiles(),
    },
    detail: { enqueue_rate: round(flags.jobs / enqueueS) },
  };
}

const WORKLOADS = { bulk, steady, single };

async function main() {
  const flags = parseFlags(process.argv.slice(2));
  const recorder = new Recorder();
  const { open } = await SYSTEMS[flags.system]();
  log(`${flags.system}: setting up (not timed)`);
  const system = await open(flags, recorder);

  let outcome;
  let pending;
  try {
    outcome = await WORKLOADS[flags.workload](flags, system, recorder);
    // Verification: stop the workers (they flush what they hold), then every acknowledged job
    // must have run or still be queued in the system; anything else was lost.
    await system.stopWorkers();
    pending = await system.pending();
  } finally {
    await system.close().catch((e) => log(`close: ${e.message}`));
  }

  const notRun = recorder.notRun();
  const lost = Math.max(0, notRun - pending);
  const unfinished = outcome.complete ? 0 : notRun;
  const errors =
    lost + recorder.duplicates + recorder.enqueueErrors + recorder.badPayloads + system.errors() +
    (flags.workload === 'steady' ? 0 : unfinished - Math.min(unfinished, lost));

  const result = {
    system: flags.system,
    workload: flags.workload,
    version: system.version,
    config: {
      queue: flags.queue,
      jobs: flags.workload === 'steady' ? null : flags.jobs,
      batch: flags.workload === 'bulk' ? flags.batch : null,
      concurrency: flags.concurrency,
      producers: flags.workload === 'steady' ? flags.producers : flags.workload === 'single' ? 1 : null,
      rate: flags.workload === 'steady' ? flags.rate : null,
      duration_ms: flags.workload === 'steady' ? flags.durationMs : null,
      payload: '{"t": enqueue ms since epoch, "i": seq}',
      handler: 'no-op; records start_ms - t',
      node_version: process.versions.node,
      ...system.config,
    },
    jobs: null,
    enqueue_s: null,
    process_s: null,
    e2e_s: null,
    offered_rate: null,
    achieved_rate: null,
    backlog_start: null,
    backlog_end: null,
    sustained: null,
    latency_ms: null,
    request_latency_ms: null,
    ...outcome.fields,
    errors,
    detail: {
      ...outcome.detail,
      enqueued: recorder.enqueued,
      enqueue_errors: recorder.enqueueErrors,
      started: recorder.unique,
      duplicates: recorder.duplicates,
      bad_payloads: recorder.badPayloads,
      worker_errors: system.errors(),
      not_run: notRun,
      still_queued: pending,
      lost,
    },
  };

  let failure = null;
  if (lost > 0) failure = `${lost} acknowledged jobs never ran and are no longer queued (lost)`;
  else if (!outcome.complete) failure = `${notRun} of ${recorder.enqueued} jobs did not run (${pending} still queued)`;
  else if (recorder.enqueueErrors > 0) failure = `${recorder.enqueueErrors} enqueue calls failed`;
  if (failure !== null) log(`FAILED: ${failure}`);
  else log(`done: ${JSON.stringify(outcome.fields)}`);

  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(failure === null ? 0 : 1));
}

function die(error) {
  const message = error instanceof DriverError ? error.message : (error?.stack ?? String(error));
  process.stderr.write(`[peers] error: ${message}\n`);
  process.exit(2);
}

process.on('unhandledRejection', die);
main().catch(die);
