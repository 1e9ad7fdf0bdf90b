// One queue: live counts and activity, its configuration, pause and resume, its circuit breaker
// (state, window, force open and close), the workers polling it, and its jobs (a page at a time,
// by state).

import { api } from './api.js';
import { STATES, ago, badge, confirmDialog, count, duration, h, notice, rate, replace, time, workerBadge } from './dom.js';
import { jobsTable } from './jobs.js';
import { rates, subscribe } from './live.js';

const PAGE = 25;

export async function renderQueue(main, params, name) {
  let queue = await api.queue(name);
  const head = h('div', { class: 'page-head' });
  const message = h('div');
  const cards = h('div', { class: 'cards', id: 'queue-counts' });
  const config = h('div', { class: 'panel' });
  const activity = h('div', { class: 'panel', id: 'queue-activity' });
  const pollers = h('div', { class: 'panel', id: 'queue-workers' });
  const breaker = h('div', { class: 'panel', id: 'queue-breaker' });
  const jobs = h('div', { class: 'panel flush', id: 'queue-jobs' });
  replace(main, head, message, cards, h('div', { class: 'grid' }, config, breaker, activity, pollers), jobs);

  const state = params.get('state') || '';
  let after = null;
  const cursors = [];

  function drawHead() {
    const toggle = h('button', {
      id: 'queue-pause',
      class: queue.paused ? 'primary' : '',
      onclick: async () => {
        if (!queue.paused) {
          const ok = await confirmDialog({
            title: `Pause ${queue.name}?`,
            text: `Workers get no more jobs from ${queue.name} until it is resumed; it still accepts new jobs. ${count(queue.counts.running)} running jobs finish as usual.`,
            ok: 'Pause',
            danger: true,
          });
          if (!ok) return;
        }
        try {
          queue = queue.paused ? await api.queueResume(queue.name) : await api.queuePause(queue.name);
          replace(message, notice(queue.paused ? `${queue.name} is paused.` : `${queue.name} is leasing again.`, 'ok'));
          drawHead(); drawCounts(queue.counts); drawConfig();
        } catch (e) {
          replace(message, notice(e.message, 'bad'));
        }
      },
    }, queue.paused ? 'Resume' : 'Pause');
    replace(head,
      h('div', {},
        h('div', { class: 'muted small' }, h('a', { href: '#/' }, 'Overview'), ' / queue'),
        h('h1', {}, queue.name, queue.paused ? badge('paused') : null,
          queue.backoff_until ? badge('backing off', 'backoff') : null)),
      h('div', { class: 'toolbar' },
        h('a', { href: `#/jobs?queue=${encodeURIComponent(queue.name)}` }, 'Search its jobs'),
        h('a', { href: `#/dead?queue=${encodeURIComponent(queue.name)}` }, 'Its dead letters'),
        toggle));
  }

  function drawCounts(counts) {
    replace(cards, STATES.map((s) => h('div', { class: `card${s === 'dead' && counts[s] ? ' alarm' : ''}`, dataset: { state: s } },
      h('div', { class: 'label' }, h('a', { href: `#/queues/${encodeURIComponent(queue.name)}?state=${s}` }, s)),
      h('div', { class: 'value' }, count(counts[s])))));
  }

  function drawConfig() {
    const b = queue.backoff;
    replace(config, h('h2', {}, 'Configuration'), h('dl', { class: 'fields' },
      h('dt', {}, 'paused'), h('dd', {}, queue.paused ? 'yes' : 'no'),
      h('dt', {}, 'attempts_max'), h('dd', {}, count(queue.attempts_max)),
      h('dt', {}, 'backoff'), h('dd', {}, `${duration(b.base_ms)} × ${b.factor}^n, at most ${duration(b.cap_ms)} (full jitter)`),
      h('dt', {}, 'lease_ms'), h('dd', {}, duration(queue.lease_ms)),
      h('dt', {}, 'retention_ms'), h('dd', {}, duration(queue.retention_ms)),
      h('dt', {}, 'retention_dead_ms'), h('dd', {}, duration(queue.retention_dead_ms)),
      h('dt', {}, 'ordering_dead'), h('dd', {}, queue.ordering_dead),
      h('dt', {}, 'concurrency_max'), h('dd', { id: 'queue-concurrency-max' }, limit(queue.concurrency_max, queue.counts.running)),
      h('dt', {}, 'group_concurrency_max'), h('dd', {}, limit(queue.group_concurrency_max)),
      h('dt', {}, 'rate'), h('dd', { id: 'queue-rate' }, rateText(queue.rate)),
      h('dt', {}, 'group_rate'), h('dd', {}, rateText(queue.group_rate)),
      h('dt', { title: 'A worker reported a downstream rate limit: the queue leases nothing until then' }, 'backing off until'),
      h('dd', { id: 'queue-backoff' }, queue.backoff_until ? time(queue.backoff_until) : h('span', { class: 'muted' }, 'not backing off')),
      h('dt', {}, 'oldest dead'), h('dd', {}, time(queue.oldest_dead_at))));
  }

  function limit(max, running) {
    if (max == null) return h('span', { class: 'muted' }, 'none');
    return running == null ? count(max) : `${count(running)} running of ${count(max)}`;
  }

  function rateText(r) {
    if (!r) return h('span', { class: 'muted' }, 'none');
    return `${count(r.limit)} per ${duration(r.per_ms)}, burst ${count(r.burst ?? r.limit)}`;
  }

  function drawBreaker() {
    const b = queue.breaker;
    if (!b) {
      replace(breaker, h('h2', {}, 'Circuit breaker'),
        h('p', { class: 'muted' }, 'None. Set one with PUT /v1/queues/{name} or dray queues configure --breaker-failure-ratio …'));
      return;
    }
    const force = (action) => async () => {
      if (action === 'open') {
        const ok = await confirmDialog({
          title: `Force the breaker of ${queue.name} open?`,
          text: `Workers get no jobs from ${queue.name} until you close the breaker again; it does not close by itself. ${count(queue.counts.running)} running jobs finish as usual.`,
          ok: 'Force open',
          danger: true,
        });
        if (!ok) return;
      }
      try {
        queue = await api.queueBreaker(queue.name, action);
        replace(message, notice(action === 'open'
          ? `The breaker of ${queue.name} is forced open.`
          : `The breaker of ${queue.name} is closed: ${queue.name} is leasing again.`, 'ok'));
        drawBreaker();
      } catch (e) {
        replace(message, notice(e.message, 'bad'));
      }
    };
    const row = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
    let detail;
    if (b.state === 'open') {
      detail = b.forced ? 'forced open: stays open until closed by hand' : `half-open at ${time(b.half_open_at)}`;
    } else if (b.state === 'half_open') {
      detail = `${count(b.probes_granted)} of ${count(b.probes)} probes granted, ${count(b.probes_succeeded)} succeeded`;
    } else {
      detail = `${count(b.window_failures)} failed of ${count(b.window_attempts)} attempts in the window`;
    }
    replace(breaker, h('h2', {}, 'Circuit breaker'),
      h('p', { dataset: { breakerState: b.state } }, badge(b.state.replace('_', '-'), `breaker-${b.state}`), ' ', detail),
      h('dl', { class: 'fields' },
        row('failure_ratio', `${b.failure_ratio} of at least ${count(b.min_attempts)} attempts`),
        row('window_ms', duration(b.window_ms)),
        row('open_ms', duration(b.open_ms)),
        row('probes', count(b.probes)),
        row('since', time(b.changed_at)),
        row('opened', `${count(b.transitions.open)} times`)),
      h('div', { class: 'toolbar' },
        b.state === 'open' && b.forced ? null : h('button', { id: 'breaker-open', onclick: force('open') }, 'Force open'),
        b.state === 'closed' ? null : h('button', { id: 'breaker-close', class: 'primary', onclick: force('close') }, 'Close')));
  }

  function drawActivity(a, r) {
    const row = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
    replace(activity, h('h2', {}, 'Activity on this node'), a ? h('dl', { class: 'fields' },
      row('enqueued', `${count(a.enqueued)} (${rate(r ? r.enqueued : null)})`),
      row('leased', count(a.leased)),
      row('completed', `${count(a.completed)} (${rate(r ? r.completed : null)})`),
      row('failed', count(a.failed)),
      row('lease expired', count(a.expired)),
      row('went dead', count(a.dead)),
      row('wait p50 / p95', a.wait_p50_ms == null ? '—' : `${duration(a.wait_p50_ms)} / ${duration(a.wait_p95_ms)}`),
      row('run p50 / p95', a.run_p50_ms == null ? '—' : `${duration(a.run_p50_ms)} / ${duration(a.run_p95_ms)}`))
      : h('p', { class: 'muted' }, 'Nothing measured on this node since it started.'));
  }

  function drawPollers(workers, now) {
    const mine = workers.filter((w) => w.queues.includes(queue.name));
    replace(pollers, h('h2', {}, 'Workers'), mine.length
      ? h('table', {}, h('tbody', {}, mine.map((w) => h('tr', {},
        h('td', { class: 'wrap' }, h('a', { href: '#/workers' }, w.id)),
        h('td', {}, workerBadge(w)),
        h('td', { class: 'muted' }, ago(w.last_seen, now))))))
      : h('p', { class: 'muted' }, 'None now (on this node).'));
  }

  async function drawJobs() {
    const filter = { queue: queue.name, state: state || undefined, after: after ?? undefined, limit: PAGE };
    let page;
    try {
      page = await api.jobs(filter);
    } catch (e) {
      replace(jobs, notice(e.message, 'bad'));
      return;
    }
    const tabs = h('div', { class: 'toolbar pad' },
      h('strong', {}, 'Jobs'),
      ['', ...STATES].map((s) => (s === state
        ? h('strong', {}, s || 'all')
        : h('a', { href: `#/queues/${encodeURIComponent(queue.name)}${s ? `?state=${s}` : ''}` }, s || 'all'))),
      h('span', { class: 'muted small' }, 'in enqueue order'));
    const pager = h('div', { class: 'pager' },
      h('button', { disabled: cursors.length === 0, onclick: () => { after = cursors.pop(); drawJobs(); } }, '← Previous'),
      h('button', { disabled: page.next === undefined, onclick: () => { cursors.push(after); after = page.next; drawJobs(); } }, 'Next →'));
    replace(jobs, tabs, jobsTable(page.jobs, { showQueue: false }), pager);
  }

  drawHead();
  drawCounts(queue.counts);
  drawConfig();
  drawBreaker();
  drawActivity(null, null);
  drawPollers([], Date.now());
  await drawJobs();

  return subscribe((snapshot, points) => {
    const q = (snapshot.queues || []).find((x) => x.name === queue.name);
    if (q) {
      if (q.paused !== queue.paused) { queue = q; drawHead(); drawConfig(); }
      const changed = JSON.stringify(q.breaker) !== JSON.stringify(queue.breaker);
      queue = q;
      if (changed) drawBreaker();
      drawCounts(q.counts);
    }
    const a = (snapshot.activity || []).find((x) => x.queue === queue.name);
    const r = rates(points);
    drawActivity(a || null, r && r.get(queue.name));
    drawPollers(snapshot.workers || [], snapshot.at_ms);
  });
}
