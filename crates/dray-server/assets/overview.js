// Overview: every queue with its depth by state, this node's enqueue and completion rates, wait
// and run latency, the throughput of the last minutes (kept by the server, so a reload draws it
// at once) and the workers, busy or idle; redrawn on every live snapshot.

import { STATES, badge, count, depthBar, duration, h, notice, rate, replace, sparkline, svg } from './dom.js';
import { rates, snapshotsReceived, subscribe, throughput } from './live.js';

const WAITING = ['available', 'scheduled', 'retrying'];
/** Points in a queue's "waiting" sparkline: two minutes. */
const SPARK_POINTS = 120;

export function renderOverview(main) {
  const totals = h('div', { class: 'cards', id: 'totals' });
  const table = h('div', { class: 'panel flush' });
  const chart = h('div', { class: 'panel', id: 'throughput' });
  const status = h('div');
  replace(main,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, 'Overview'),
        h('div', { class: 'muted small' }, 'Live: counts from the store, rates and latencies measured on this node.'))),
    status, totals, chart, table);

  table.append(h('p', { class: 'muted pad' }, 'Waiting for the first snapshot…'));

  return subscribe((snapshot, points) => {
    if (snapshot.problem) {
      replace(status, notice(`The store did not answer: ${snapshot.problem.detail}`, 'bad'));
      return;
    }
    replace(status);
    const queues = snapshot.queues || [];
    const activity = new Map((snapshot.activity || []).map((a) => [a.queue, a]));
    const perSecond = rates(points);
    const workers = snapshot.workers || [];
    const busy = workers.filter((w) => w.state === 'busy').length;
    const idle = workers.length - busy;
    drawThroughput(chart, points);

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
      workersCard(busy, idle));

    if (!queues.length) {
      replace(table, h('p', { class: 'muted pad' }, 'No queues yet. Enqueue a job (POST /v1/jobs) and it shows up here.'));
      return;
    }
    const max = Math.max(1, ...queues.map((q) => q.counts.running + q.counts.available + q.counts.retrying + q.counts.scheduled + q.counts.dead));
    const rows = queues.map((q) => {
      const a = activity.get(q.name) || {};
      const r = perSecond && perSecond.get(q.name);
      const depth = points.slice(-SPARK_POINTS)
        .map((p) => ((p.queues || {})[q.name] || {}).waiting)
        .filter((n) => n !== null && n !== undefined);
      return h('tr', { dataset: { queue: q.name } },
        h('td', {}, h('a', { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name), ' ', q.paused ? badge('paused') : null,
          q.backoff_until ? badge('backing off', 'backoff') : null,
          q.breaker && q.breaker.state !== 'closed' ? badge(`breaker ${q.breaker.state.replace('_', '-')}`, `breaker-${q.breaker.state}`) : null),
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

/** Workers this node knows: busy (holding a lease) and idle (polling, or seen in the last 30 s). */
function workersCard(busy, idle) {
  return h('div', { class: 'card', id: 'total-workers', dataset: { busy, idle }, title: 'Busy: holding a lease. Idle: polling, holding none.' },
    h('div', { class: 'label' }, 'workers'),
    h('div', { class: 'value' }, count(busy), h('span', { class: 'unit' }, ' busy'), ' ', count(idle), h('span', { class: 'unit' }, ' idle')));
}

const CHART_W = 600;
const CHART_H = 90;

/** Enqueued and completed jobs per second on this node over the points (all queues). */
function drawThroughput(el, points) {
  const series = throughput(points);
  el.dataset.points = String(series.length);
  el.dataset.live = String(snapshotsReceived());
  const head = h('div', { class: 'chart-head' },
    h('h2', {}, 'Throughput on this node'),
    h('span', { class: 'muted small' }, series.length
      ? `last ${Math.round((series[series.length - 1].at_ms - series[0].at_ms) / 60000 * 10) / 10 || '<0.1'} min`
      : 'waiting for two points'));
  if (!series.length) {
    replace(el, head);
    return;
  }
  const last = series[series.length - 1];
  const t0 = series[0].at_ms;
  const span = Math.max(1, last.at_ms - t0);
  const max = Math.max(1, ...series.map((p) => Math.max(p.enqueued, p.completed)));
  const line = (key) => series.map((p) => `${(((p.at_ms - t0) / span) * CHART_W).toFixed(1)},${(CHART_H - 2 - (p[key] / max) * (CHART_H - 4)).toFixed(1)}`).join(' ');
  replace(el, head,
    svg('svg', { class: 'chart', viewBox: `0 0 ${CHART_W} ${CHART_H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': 'Jobs per second, enqueued and completed' },
      svg('polyline', { class: 'enqueued', points: line('enqueued') }),
      svg('polyline', { class: 'completed', points: line('completed') })),
    h('div', { class: 'legend small' },
      h('span', { class: 'key enqueued' }, `enqueued ${rate(last.enqueued)}`),
      h('span', { class: 'key completed' }, `completed ${rate(last.completed)}`),
      h('span', { class: 'muted' }, `peak ${rate(max)}`)));
}

function card(label, value, id, extra) {
  return h('div', { class: `card ${extra || ''}`, id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

function latency(p50, p95) {
  if (p50 === null || p50 === undefined) return '—';
  return `${duration(p50)} / ${duration(p95)}`;
}
