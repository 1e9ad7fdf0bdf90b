// Overview: every queue with its depth by state, this node's enqueue and completion rates, wait
// and run latency, and the workers polling; redrawn on every live snapshot.

import { STATES, badge, count, depthBar, duration, h, notice, rate, replace, sparkline } from './dom.js';
import { rates, subscribe } from './live.js';

const WAITING = ['available', 'scheduled', 'retrying'];

export function renderOverview(main) {
  const totals = h('div', { class: 'cards', id: 'totals' });
  const table = h('div', { class: 'panel flush' });
  const status = h('div');
  replace(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Overview'),
        h('div', { class: 'muted small' }, 'Live: counts from the store, rates and latencies measured on this node.'))),
    status, totals, table);

  table.append(h('p', { class: 'muted pad' }, 'Waiting for the first snapshot…'));

  return subscribe((snapshot, snapshots) => {
    if (snapshot.problem) {
      replace(status, notice(`The store did not answer: ${snapshot.problem.detail}`, 'bad'));
      return;
    }
    replace(status);
    const queues = snapshot.queues || [];
    const activity = new Map((snapshot.activity || []).map((a) => [a.queue, a]));
    const perSecond = rates(snapshots);
    const workers = snapshot.workers || [];

    const sum = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const q of queues) for (const s of STATES) sum[s] += q.counts[s];
    let enq = null;
    let done = null;
    if (perSecond) {
      enq = 0; done = 0;
      for (const r of perSecond.values()) { enq += r.enqueued; done += r.completed; }
    }
    replace(totals,
      card('queues', count(queues.length)),
      card('waiting', count(WAITING.reduce((n, s) => n + sum[s], 0)), 'total-waiting'),
      card('running', count(sum.running), 'total-running'),
      card('dead', count(sum.dead), 'total-dead', sum.dead ? 'alarm' : ''),
      card('enqueued', rate(enq)),
      card('completed', rate(done)),
      card('workers polling', count(workers.filter((w) => w.polling > 0).length), 'total-polling'));

    if (!queues.length) {
      replace(table, h('p', { class: 'muted pad' }, 'No queues yet. Enqueue a job (POST /v1/jobs) and it shows up here.'));
      return;
    }
    const max = Math.max(1, ...queues.map((q) => q.counts.running + q.counts.available + q.counts.retrying + q.counts.scheduled + q.counts.dead));
    const rows = queues.map((q) => {
      const a = activity.get(q.name) || {};
      const r = perSecond && perSecond.get(q.name);
      const depth = snapshots.map((s) => {
        const sq = (s.queues || []).find((x) => x.name === q.name);
        return sq ? WAITING.reduce((n, st) => n + sq.counts[st], 0) : 0;
      });
      return h('tr', { dataset: { queue: q.name } },
        h('td', {}, h('a', { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name), ' ', q.paused ? badge('paused') : null),
        ...STATES.map((s) => h('td', { class: `num${q.counts[s] ? '' : ' zero'}`, dataset: { state: s } }, count(q.counts[s]))),
        h('td', {}, depthBar(q.counts, max)),
        h('td', { title: 'Jobs waiting (available, scheduled, retrying) over the last two minutes' }, sparkline(depth)),
        h('td', { class: 'num' }, rate(r ? r.enqueued : null)),
        h('td', { class: 'num' }, rate(r ? r.completed : null)),
        h('td', { class: 'num', title: 'p50 / p95 of the time from due to leased' }, latency(a.wait_p50_ms, a.wait_p95_ms)),
        h('td', { class: 'num', title: 'p50 / p95 of the time from leased to completed or failed' }, latency(a.run_p50_ms, a.run_p95_ms)));
    });
    replace(table,
      h('table', { id: 'queues' },
        h('thead', {}, h('tr', {},
          h('th', {}, 'Queue'),
          ...STATES.map((s) => h('th', { class: 'num' }, s)),
          h('th', {}, 'Depth'), h('th', {}, 'Waiting, 2 min'),
          h('th', { class: 'num' }, 'Enqueued'), h('th', { class: 'num' }, 'Completed'),
          h('th', { class: 'num' }, 'Wait p50 / p95'), h('th', { class: 'num' }, 'Run p50 / p95'))),
        h('tbody', {}, rows)));
  });
}

function card(label, value, id, extra) {
  return h('div', { class: `card ${extra || ''}`, id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

function latency(p50, p95) {
  if (p50 === null || p50 === undefined) return '—';
  return `${duration(p50)} / ${duration(p95)}`;
}
