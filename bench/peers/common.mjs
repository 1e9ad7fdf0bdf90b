// Shared parts of the peer drivers: flags, the clock, the per-job recorder (run counts per seq id,
// latency samples), quantiles, waiting with a stall guard, and the one JSON result line.
//
// The contract lives in `cargo xtask bench compare` (xtask/) and is the same for the Dray driver:
// every job's payload is `{"t": <enqueue time, ms since the epoch, float>, "i": <seq>}`, producers
// and workers run in this one process so one clock measures enqueue-to-start latency.

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** Wall-clock milliseconds with sub-millisecond precision (Date.now() only has whole ms). */
export function now() {
  return performance.timeOrigin + performance.now();
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Progress goes to stderr: stdout carries only the result line. */
export function log(message) {
  process.stderr.write(`[peers] ${message}\n`);
}

/** A failure the driver reports with a clear message and a non-zero exit code. */
export class DriverError extends Error {}

const SYSTEMS = ['bullmq', 'graphile-worker', 'pg-boss'];
const WORKLOADS = ['bulk', 'steady', 'single'];

// Upper bounds on the flags: far above any run this machine can do, low enough that a typo
// (an extra zero or three) fails at once instead of exhausting memory an hour later.
const LIMITS = {
  jobs_max: 10_000_000,
  batch_max: 100_000,
  concurrency_max: 10_000,
  producers_max: 1_000,
  rate_max: 1_000_000,
  duration_ms_max: 3_600_000,
  pgboss_workers_max: 100,
};

const USAGE = `usage: node bench/peers/run.mjs --system bullmq|graphile-worker|pg-boss --workload bulk|steady|single [flags]
  --jobs N               bulk: jobs to enqueue (default 100000); single: jobs (default 2000)
  --batch N              bulk: jobs per enqueue call (default 1000)
  --concurrency N        worker concurrency, jobs in flight at once (default 50)
  --producers N          steady: concurrent producer loops (default 4)
  --rate R               steady: offered jobs/s in total; 0 = flat out (default 0)
  --duration-ms D        steady: how long producers run (default 10000)
  --redis-url URL        bullmq (the database in it is flushed at start)
  --database-url URL     graphile-worker, pg-boss (a fresh, empty database)
  --queue NAME           default "bench"
 peer-specific (reported in "config"):
  --graphile-batching on|off   localQueue + batched completion (default on)
  --pgboss-workers K           work() loops (default 1)
  --pgboss-batch-size N        jobs per fetch per loop (default 500)`;

function integerFlag(name, raw, min, max) {
  if (raw === undefined) throw new DriverError(`--${name} needs a value`);
  if (!/^\d+$/.test(raw)) throw new DriverError(`--${name} must be a whole number, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) {
    throw new DriverError(`--${name} must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** Parses and validates the contract's flags; every error names the flag and its limit. */
export function parseFlags(argv) {
  const raw = new Map();
  for (let k = 0; k < argv.length; k++) {
    const arg = argv[k];
    if (arg === '--help' || arg === '-h') {
      process.stderr.write(`${USAGE}\n`);
      process.exit(0);
    }
    if (!arg.startsWith('--')) throw new DriverError(`unexpected argument "${arg}"\n${USAGE}`);
    const eq = arg.indexOf('=');
    if (eq > 0) {
      raw.set(arg.slice(2, eq), arg.slice(eq + 1));
    } else {
      raw.set(arg.slice(2), argv[k + 1]);
      k++;
    }
  }
  const known = new Set([
    'system', 'workload', 'jobs', 'batch', 'concurrency', 'producers', 'rate', 'duration-ms',
    'redis-url', 'database-url', 'dray-url', 'queue', 'graphile-batching', 'pgboss-workers',
    'pgboss-batch-size',
  ]);
  for (const name of raw.keys()) {
    if (!known.has(name)) throw new DriverError(`unknown flag --${name}\n${USAGE}`);
  }

  const system = raw.get('system');
  if (system === 'dray') {
    throw new DriverError('--system dray is driven by `xtask bench driver`, not by the Node peers');
  }
  if (!SYSTEMS.includes(system)) {
    throw new DriverError(`--system must be one of ${SYSTEMS.join(', ')}, got "${system ?? ''}"`);
  }
  const workload = raw.get('workload');
  if (!WORKLOADS.includes(workload)) {
    throw new DriverError(`--workload must be one of ${WORKLOADS.join(', ')}, got "${workload ?? ''}"`);
  }

  const get = (name, fallback, min, max) =>
    raw.has(name) ? integerFlag(name, raw.get(name), min, max) : fallback;

  const flags = {
    system,
    workload,
    jobs: get('jobs', workload === 'single' ? 2000 : 100000, 1, LIMITS.jobs_max),
    batch: get('batch', 1000, 1, LIMITS.batch_max),
    concurrency: get('concurrency', 50, 1, LIMITS.concurrency_max),
    producers: get('producers', 4, 1, LIMITS.producers_max),
    rate: get('rate', 0, 0, LIMITS.rate_max),
    durationMs: get('duration-ms', 10000, 1, LIMITS.duration_ms_max),
    redisUrl: raw.get('redis-url'),
    databaseUrl: raw.get('database-url'),
    queue: raw.get('queue') ?? 'bench',
    graphileBatching: true,
    pgbossWorkers: get('pgboss-workers', 1, 1, LIMITS.pgboss_workers_max),
    pgbossBatchSize: null,
  };
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(flags.queue)) {
    throw new DriverError(`--queue must be 1 to 64 of [A-Za-z0-9_.-], got "${flags.queue}"`);
  }
  if (raw.has('graphile-batching')) {
    const value = raw.get('graphile-batching');
    if (value !== 'on' && value !== 'off') {
      throw new DriverError(`--graphile-batching must be on or off, got "${value}"`);
    }
    flags.graphileBatching = value === 'on';
  }
  if (raw.has('pgboss-batch-size')) {
    flags.pgbossBatchSize = integerFlag('pgboss-batch-size', raw.get('pgboss-batch-size'), 1, LIMITS.batch_max);
  }
  if (system === 'bullmq' && !flags.redisUrl) throw new DriverError('--redis-url is required for bullmq');
  if (system !== 'bullmq' && !flags.databaseUrl) {
    throw new DriverError(`--database-url is required for ${system}`);
  }
  return flags;
}

/**
 * The installed version of a peer package, checked against the exact pin in package.json so a
 * figure is never reported under the wrong version.
 */
export function checkedVersion(pkg) {
  const own = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8'));
  const pinned = own.dependencies[pkg];
  let installed;
  try {
    installed = JSON.parse(
      readFileSync(new URL(`./node_modules/${pkg}/package.json`, import.meta.url), 'utf8'),
    ).version;
  } catch {
    throw new DriverError(`${pkg} is not installed: run \`npm ci\` in bench/peers`);
  }
  if (installed !== pinned) {
    throw new DriverError(
      `${pkg} ${installed} is installed but package.json pins ${pinned}: run \`npm ci\` in bench/peers`,
    );
  }
  return installed;
}

/** A growable array of doubles (a plain JS array of 10^6 numbers costs far more). */
class Samples {
  constructor() {
    this.data = new Float64Array(4096);
    this.length = 0;
  }

  push(value) {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = value;
  }

  /** Nearest-rank quantiles over the exact, sorted samples; null when there are none. */
  quantiles() {
    if (this.length === 0) return null;
    const sorted = this.data.slice(0, this.length).sort();
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
    const round = (v) => Math.round(v * 1000) / 1000;
    return { p50: round(at(0.5)), p99: round(at(0.99)), p999: round(at(0.999)), count: sorted.length };
  }
}

/**
 * Tracks every job by its seq id: whether its enqueue was acknowledged, how many times a handler
 * started it, and the enqueue-to-start latency of its first start (inside the measurement window,
 * when one is set).
 */
export class Recorder {
  constructor() {
    this.runs = new Uint16Array(1 << 16);
    this.acked = new Uint8Array(1 << 16);
    this.issued = 0; // seq ids handed out
    this.enqueued = 0; // seq ids whose enqueue call was acknowledged
    this.enqueueErrors = 0; // jobs whose enqueue call failed
    this.unique = 0; // distinct seq ids started at least once
    this.duplicates = 0; // starts beyond the first
    this.badPayloads = 0; // handler saw a payload without a valid seq id
    this.finished = 0;
    this.lastFinishMs = 0;
    this.window = null; // {start, end}: only starts/finishes inside it count for latency and rate
    this.finishedInWindow = 0;
    this.latency = new Samples();
    this.requestLatency = new Samples();
  }

  grow(seq) {
    if (seq < this.runs.length) return;
    let size = this.runs.length;
    while (size <= seq) size *= 2;
    const runs = new Uint16Array(size);
    runs.set(this.runs);
    this.runs = runs;
    const acked = new Uint8Array(size);
    acked.set(this.acked);
    this.acked = acked;
  }

  /** A new job payload stamped with the time of the enqueue call. */
  payload() {
    const seq = this.issued++;
    this.grow(seq);
    return { t: now(), i: seq };
  }

  ack(payloads) {
    for (const p of payloads) this.acked[p.i] = 1;
    this.enqueued += payloads.length;
  }

  fail(payloads) {
    this.enqueueErrors += payloads.length;
  }

  /** Called by every system's handler when a job starts. */
  start(payload) {
    const started = now();
    const seq = payload?.i;
    if (!Number.isInteger(seq) || seq < 0 || seq >= this.issued || typeof payload.t !== 'number') {
      this.badPayloads++;
      return;
    }
    const runs = this.runs[seq] + 1;
    this.runs[seq] = Math.min(runs, 0xffff);
    if (runs > 1) {
      this.duplicates++;
      return;
    }
    this.unique++;
    const w = this.window;
    if (w === null || (started >= w.start && started <= w.end)) this.latency.push(started - payload.t);
  }

  /** Called by every system's handler when the (no-op) work of a job is done. */
  finish() {
    const finished = now();
    this.finished++;
    this.lastFinishMs = finished;
    const w = this.window;
    if (w !== null && finished >= w.start && finished <= w.end) this.finishedInWindow++;
  }

  /** Acknowledged jobs that no handler ever started. */
  notRun() {
    let missing = 0;
    for (let seq = 0; seq < this.issued; seq++) {
      if (this.acked[seq] === 1 && this.runs[seq] === 0) missing++;
    }
    return missing;
  }

  /** Jobs waiting to start: acknowledged minus started. */
  backlog() {
    return this.enqueued - this.unique;
  }
}

/**
 * Waits until `done()` holds. Gives up (returns false) once `progress()` has not changed for
 * `stallMs`, or after `maxMs` in total; a slow but moving system is waited for.
 */
export async function waitUntil(done, { progress, stallMs = 30000, maxMs = Infinity, label }) {
  const begin = now();
  let last = progress();
  let lastChange = begin;
  let lastLog = begin;
  while (!done()) {
    await sleep(5);
    const t = now();
    const p = progress();
    if (p !== last) {
      last = p;
      lastChange = t;
    }
    if (t - lastLog > 5000) {
      log(`${label}: ${p} so far`);
      lastLog = t;
    }
    if (t - lastChange > stallMs) {
      log(`${label}: no progress for ${stallMs} ms, giving up`);
      return false;
    }
    if (t - begin > maxMs) return false;
  }
  return true;
}

export function seconds(ms) {
  return Math.round(ms) / 1000;
}

/** Rejects with a clear message if `promise` takes longer than `ms` (connecting, migrating). */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new DriverError(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
