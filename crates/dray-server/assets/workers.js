// Workers: who works for this node, on which queues, busy (holding leases) or idle, and which
// leases they hold (GET /v1/workers, which checks every lease against the store). Refreshed
// every two seconds.

import { api } from './api.js';
import { ago, count, h, notice, replace, time, workerBadge } from './dom.js';

const REFRESH_MS = 2000;

export async function renderWorkers(main) {
  const message = h('div');
  const list = h('div', { class: 'panel flush', id: 'workers' }, h('p', { class: 'muted pad' }, 'Loading…'));
  const note = h('p', { class: 'muted small' });
  replace(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Workers'),
      h('div', { class: 'muted small' }, 'The workers that hold a lease this node handed out (busy) or asked it for jobs recently (idle). With several nodes on one PostgreSQL database, each node lists the workers it serves.'))),
    message, list, note);

  async function load() {
    let data;
    try {
      data = await api.workers();
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
      return;
    }
    replace(message);
    const bound = `${Math.round(data.forget_after_ms / 1000)} s`;
    replace(note, `A worker that holds no lease is dropped ${bound} after its last request; at most ${count(data.workers_max)} are kept.`);
    if (!data.workers.length) {
      replace(list, h('p', { class: 'muted pad' }, `No worker holds a lease from this node or asked it for jobs in the last ${bound}.`));
      return;
    }
    const now = Date.now();
    replace(list, h('table', {},
      h('thead', {}, h('tr', {},
        h('th', {}, 'Worker'), h('th', {}, 'Queues'), h('th', {}, 'Status'), h('th', {}, 'Last seen'),
        h('th', {}, 'First seen'), h('th', { class: 'num' }, 'Jobs leased'), h('th', {}, 'Leases held'))),
      h('tbody', {}, data.workers.map((w) => h('tr', { dataset: { worker: w.id, state: w.state } },
        h('td', { class: 'wrap' }, h('strong', {}, w.id)),
        h('td', { class: 'wrap' }, w.queues.map((q) => [h('a', { href: `#/queues/${encodeURIComponent(q)}` }, q), ' '])),
        h('td', {}, workerBadge(w)),
        h('td', {}, w.polling ? 'now' : ago(w.last_seen, now)),
        h('td', {}, time(w.first_seen)),
        h('td', { class: 'num' }, count(w.leased_total)),
        h('td', { class: 'leases' }, w.leases.length
          ? h('table', {}, h('tbody', {}, w.leases.map((l) => h('tr', { dataset: { job: l.job } },
            h('td', {}, h('a', { href: `#/jobs/${l.job}` }, `job ${l.job}`)),
            h('td', { class: 'muted' }, l.queue),
            h('td', { class: 'mono', title: `lease ${l.lease_id}` }, `token ${l.fencing_token}`),
            h('td', { title: l.deadline }, `deadline ${ago(l.deadline, now)}`)))))
          : h('span', { class: 'muted' }, 'none')))))));
  }

  await load();
  const timer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
