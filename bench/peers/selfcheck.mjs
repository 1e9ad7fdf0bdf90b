#!/usr/bin/env node
// A by-hand check of the peer drivers against the local services: every system x workload, small,
// each in a fresh process (and, for the PostgreSQL peers, a throwaway database dropped afterwards).
// It checks the result line is a JSON object with every field of the contract, for the right
// system and workload, with no errors and every bulk/single job run, and prints the figures seen
// (indicative only). Usage:
//   node bench/peers/selfcheck.mjs [--redis-url redis://127.0.0.1:6379/15]
//                                  [--database-url postgres://postgres@127.0.0.1:5432/postgres]
// The Redis database given is flushed; the PostgreSQL role must be allowed to CREATE DATABASE.

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const k = args.indexOf(`--${name}`);
  return k >= 0 ? args[k + 1] : fallback;
};
const redisUrl = flag('redis-url', 'redis://127.0.0.1:6379/15');
const adminUrl = flag('database-url', 'postgres://postgres@127.0.0.1:5432/postgres');
const runMjs = fileURLToPath(new URL('./run.mjs', import.meta.url));

const WORKLOADS = [
  { name: 'bulk', args: ['--workload', 'bulk', '--jobs', '3000', '--batch', '500'], jobs: 3000 },
  { name: 'steady-1k', args: ['--workload', 'steady', '--rate', '1000', '--duration-ms', '3000'] },
  { name: 'steady-max', args: ['--workload', 'steady', '--rate', '0', '--duration-ms', '2000'] },
  { name: 'single', args: ['--workload', 'single', '--jobs', '300'], jobs: 300 },
];
const SYSTEMS = [
  { system: 'bullmq', extra: [] },
  { system: 'graphile-worker', extra: [] },
  { system: 'graphile-worker', extra: ['--graphile-batching', 'off'] },
  { system: 'pg-boss', extra: [] },
];
const FIELDS = [
  'system', 'workload', 'version', 'config', 'jobs', 'enqueue_s', 'process_s', 'e2e_s',
  'offered_rate', 'achieved_rate', 'backlog_start', 'backlog_end', 'sustained', 'latency_ms',
  'request_latency_ms', 'errors',
];

function drive(argv) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [runMjs, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function check(run, system, workload) {
  const last = run.stdout.trim().split('\n').pop() ?? '';
  let r;
  try {
    r = JSON.parse(last);
  } catch {
    return { problem: `exit ${run.code}, last stdout line is not JSON: ${JSON.stringify(last.slice(0, 200))}\n${run.stderr.slice(-600)}` };
  }
  const missing = FIELDS.filter((f) => !(f in r));
  if (run.code !== 0) return { r, problem: `exit ${run.code}: ${run.stderr.slice(-600)}` };
  if (missing.length > 0) return { r, problem: `missing fields ${missing.join(', ')}` };
  if (r.system !== system || r.workload !== workload.args[1]) return { r, problem: `reported ${r.system} ${r.workload}` };
  if (r.errors !== 0) return { r, problem: `errors ${r.errors}: ${JSON.stringify(r.detail)}` };
  if (workload.jobs && r.jobs !== workload.jobs) return { r, problem: `jobs ${r.jobs} of ${workload.jobs}` };
  return { r, problem: null };
}

function figures(r) {
  const q = (l) => (l ? `p50 ${l.p50} p99 ${l.p99} p999 ${l.p999} ms` : '');
  if (r.workload === 'bulk') {
    const e2e = r.e2e_s ? Math.round(r.jobs / r.e2e_s) : null;
    return `enqueue ${r.enqueue_s} s, process ${r.process_s} s, e2e ${e2e} jobs/s`;
  }
  if (r.workload === 'steady') {
    return `offered ${r.offered_rate}/s achieved ${r.achieved_rate}/s backlog_end ${r.backlog_end} sustained ${r.sustained}; start ${q(r.latency_ms)}`;
  }
  return `request ${q(r.request_latency_ms)}; start ${q(r.latency_ms)}`;
}

async function main() {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  let passed = 0;
  let failed = 0;
  try {
    for (const { system, extra } of SYSTEMS) {
      const label = [system, ...extra].join(' ');
      const db = `bench_selfcheck_${system.replace(/-/g, '_')}_${process.pid}`;
      const target = [];
      if (system === 'bullmq') {
        target.push('--redis-url', redisUrl);
      } else {
        await admin.query(`create database ${db}`);
        const url = new URL(adminUrl);
        url.pathname = `/${db}`;
        target.push('--database-url', url.toString());
      }
      try {
        for (const workload of WORKLOADS) {
          const run = await drive(['--system', system, ...workload.args, ...extra, ...target]);
          const { r, problem } = check(run, system, workload);
          if (problem === null) {
            passed++;
            process.stdout.write(`ok    ${label} ${workload.name}: ${figures(r)} [${r.config.durability}]\n`);
          } else {
            failed++;
            process.stdout.write(`FAIL  ${label} ${workload.name}: ${problem}\n`);
          }
        }
      } finally {
        if (system !== 'bullmq') await admin.query(`drop database if exists ${db} with (force)`);
      }
    }
  } finally {
    await admin.end();
  }
  process.stdout.write(`${passed} passed, ${failed} failed\n`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  process.stderr.write(`selfcheck: ${e.message}\n`);
  process.exit(2);
});
