// The dashboard's entry point: hash routing between the pages, and the live stream.
//
// Routes:
//   #/                      overview (live)
//   #/queues/NAME           one queue (live counts, config, pause/resume, its jobs)
//   #/jobs?queue=&state=&tag=&after=   job search, paged with the API's cursor
//   #/jobs/ID               one job (timeline, payload, result, leases)
//   #/dead?queue=&dead_reason=&tag=    dead letters: redrive, discard
//   #/workers               who polls what, which leases they hold
//   #/schedules             every schedule: rule, next fire (its zone and UTC), last tick
//   #/schedules/NAME        one schedule: settings, next 10 fire times, its job; pause, resume, run now
//
// Each page is `render(main, params) -> cleanup`; the cleanup runs when the route changes.

import { h, notice, replace } from './dom.js';
import { start } from './live.js';
import { ensureSignedIn } from './login.js';
import { renderOverview } from './overview.js';
import { renderQueue } from './queue.js';
import { renderJobs } from './jobs.js';
import { renderJob } from './job.js';
import { renderDead } from './dead.js';
import { renderWorkers } from './workers.js';
import { renderSchedule, renderSchedules } from './schedules.js';

const routes = [
  { pattern: /^\/?$/, nav: 'overview', render: renderOverview, title: 'Overview' },
  { pattern: /^\/queues\/([^/]+)$/, nav: 'overview', render: renderQueue, title: 'Queue' },
  { pattern: /^\/jobs\/(\d+)$/, nav: 'jobs', render: renderJob, title: 'Job' },
  { pattern: /^\/jobs$/, nav: 'jobs', render: renderJobs, title: 'Jobs' },
  { pattern: /^\/dead$/, nav: 'dead', render: renderDead, title: 'Dead letters' },
  { pattern: /^\/workers$/, nav: 'workers', render: renderWorkers, title: 'Workers' },
  { pattern: /^\/schedules\/([^/]+)$/, nav: 'schedules', render: renderSchedule, title: 'Schedule' },
  { pattern: /^\/schedules$/, nav: 'schedules', render: renderSchedules, title: 'Schedules' },
];

let cleanup = null;
let generation = 0;

/** `#/path?query` -> { path, params }. */
export function currentRoute() {
  const hash = window.location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = hash.split('?');
  return { path, params: new URLSearchParams(search) };
}

/** Navigates to `#path` with `params` (entries without a value are left out). */
export function go(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  window.location.hash = s ? `${path}?${s}` : path;
}

async function route() {
  if (cleanup) {
    try { cleanup(); } catch (e) { console.error(e); }
    cleanup = null;
  }
  generation += 1;
  const mine = generation;
  const main = document.getElementById('page');
  const { path, params } = currentRoute();
  const match = routes.map((r) => ({ r, m: r.pattern.exec(path) })).find((x) => x.m);
  for (const a of document.querySelectorAll('header nav a')) {
    // A boolean always: `toggle(name, undefined)` flips the class instead of removing it.
    a.classList.toggle('active', Boolean(match) && a.dataset.nav === match.r.nav);
  }
  if (!match) {
    document.title = 'Not found · Dray';
    replace(main, h('h1', { id: 'not-found' }, 'Not found'), notice(`No page at #${path}.`, 'bad'), h('a', { href: '#/' }, 'Back to the overview'));
    return;
  }
  const args = match.m.slice(1).map(decodeURIComponent);
  document.title = `${args[0] ? `${args[0]} · ` : ''}${match.r.title} · Dray`;
  replace(main);
  try {
    const result = await match.r.render(main, params, ...args);
    // A slow page may finish after the user moved on: drop its cleanup at once.
    if (mine !== generation) {
      if (typeof result === 'function') result();
    } else {
      cleanup = typeof result === 'function' ? result : null;
    }
  } catch (e) {
    if (mine === generation) replace(main, h('h1', {}, match.r.title), notice(e.message, 'bad'));
  }
}

ensureSignedIn().then(() => {
  window.addEventListener('hashchange', route);
  start();
  route();
});
