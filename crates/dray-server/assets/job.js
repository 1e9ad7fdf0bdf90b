// One job: every history entry on a timeline, each attempt with its worker, fencing token and
// error, the current lease, the steps its attempts recorded, and the payload, result, checkpoint
// and progress as sent. Refreshes itself every two seconds while the job is not finished.

import { api } from './api.js';
import { ago, badge, confirmDialog, count, duration, h, jsonBlock, notice, replace, time } from './dom.js';

const FINAL = new Set(['completed', 'dead', 'cancelled']);
const REFRESH_MS = 2000;
/** A step's result is shown up to this many characters of its JSON text. */
const STEP_RESULT_CHARS_MAX = 120;

export async function renderJob(main, params, id) {
  let job = await api.job(id);
  const message = h('div');
  const body = h('div');
  replace(main, message, body);

  const act = async (what, call, text) => {
    const ok = await confirmDialog({ title: `${what} job ${job.id}?`, text, ok: what, danger: what !== 'Redrive' });
    if (!ok) return;
    try {
      await call();
      replace(message, notice(`${what}: done.`, 'ok'));
      job = await api.job(id);
      draw();
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
    }
  };

  function draw() {
    const actions = [];
    if (!FINAL.has(job.state)) {
      actions.push(h('button', {
        onclick: () => act('Cancel', () => api.jobCancel(job.id), job.state === 'running'
          ? 'Its worker is asked to stop (its next heartbeat says so); the job ends cancelled if that attempt fails or expires.'
          : 'It will never run. This cannot be undone.'),
      }, job.cancel_requested ? 'Cancel (requested)' : 'Cancel'));
    }
    if (job.state === 'dead') {
      actions.push(h('button', {
        class: 'primary',
        id: 'job-redrive',
        onclick: () => act('Redrive', () => api.deadRedrive({ ids: [job.id] }), `Redrive 1 job: it becomes available with a fresh budget of ${job.attempts_max} attempts.`),
      }, 'Redrive'));
      actions.push(h('button', {
        class: 'danger',
        onclick: () => act('Discard', () => api.deadDiscard({ ids: [job.id] }), 'Discard 1 job: it is deleted for good.'),
      }, 'Discard'));
    }

    const b = job.backoff;
    const field = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
    const summary = h('div', { class: 'panel' }, h('h2', {}, 'Job'), h('dl', { class: 'fields', id: 'job-fields' },
      field('queue', h('a', { href: `#/queues/${encodeURIComponent(job.queue)}` }, job.queue)),
      field('state', [badge(job.state), job.dead_reason ? ` ${job.dead_reason}` : '', job.cancel_requested ? ' (cancel requested)' : '']),
      ...(job.waiting ? field('waiting', h('span', { id: 'job-waiting', class: 'warn' }, job.waiting.detail)) : []),
      field('attempt', `${job.attempt} of ${job.attempts_max}`),
      field('priority', String(job.priority)),
      field('created', time(job.created_at)),
      field('run at', time(job.run_at)),
      field('finished', time(job.finished_at)),
      field('lease_ms', duration(job.lease_ms)),
      field('backoff', `${duration(b.base_ms)} × ${b.factor}^n, at most ${duration(b.cap_ms)}`),
      field('last error', job.last_error ? h('span', { class: 'err' }, job.last_error) : h('span', { class: 'muted' }, '—')),
      field('tags', job.tags.length ? job.tags.map((t) => [badge(t, 'tag'), ' ']) : h('span', { class: 'muted' }, '—')),
      field('idempotency key', job.idempotency_key ?? '—'),
      field('ordering key', job.ordering_key ?? '—'),
      field('group key', job.group_key ?? '—'),
      ...(job.depends_on?.length ? field('depends on', h('span', { id: 'job-depends-on' },
        job.depends_on.map((id, i) => [i ? ', ' : '', h('a', { href: `#/jobs/${id}` }, String(id))]),
        ` (if one fails: ${job.on_dependency_failure})`)) : []),
      field('traceparent', job.traceparent ? h('code', {}, job.traceparent) : '—')));

    const l = job.lease;
    const lease = h('div', { class: 'panel', id: 'job-lease' }, h('h2', {}, 'Current lease'), l
      ? h('dl', { class: 'fields' },
        field('worker', l.worker),
        field('lease id', h('code', {}, l.lease_id)),
        field('fencing token', h('code', {}, String(l.fencing_token))),
        field('leased', time(l.leased_at)),
        field('deadline', [time(l.deadline), h('span', { class: 'muted' }, ` (${ago(l.deadline)})`)]))
      : h('p', { class: 'muted' }, 'Not leased.'));

    replace(body,
      h('div', { class: 'page-head' },
        h('div', {},
          h('div', { class: 'muted small' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('a', { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, job.queue)),
          h('h1', {}, `Job ${job.id}`, badge(job.state))),
        h('div', { class: 'toolbar' }, actions)),
      h('div', { class: 'grid' }, summary, h('div', {}, lease, attemptsPanel(job))),
      stepsPanel(job),
      timelinePanel(job),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Payload'), jsonBlock(job.payload, { id: 'job-payload' })),
        h('div', { class: 'panel' }, h('h2', {}, 'Result'), jsonBlock(job.result, { id: 'job-result' }))),
      h('div', { class: 'grid' },
        h('div', { class: 'panel' }, h('h2', {}, 'Checkpoint'), jsonBlock(job.checkpoint, { id: 'job-checkpoint' })),
        h('div', { class: 'panel' }, h('h2', {}, 'Progress'), jsonBlock(job.progress, { id: 'job-progress' }))));
  }

  draw();
  let shown = JSON.stringify(job);
  const timer = setInterval(async () => {
    if (FINAL.has(job.state) || document.hidden) return;
    try {
      const fresh = await api.job(id);
      const text = JSON.stringify(fresh);
      if (text !== shown) {
        job = fresh;
        shown = text;
        draw();
      }
    } catch {
      // The next tick tries again; a discarded job stays as last shown.
    }
  }, REFRESH_MS);
  return () => clearInterval(timer);
}

/** Every history entry, oldest first. */
function timelinePanel(job) {
  const items = job.history.map((e, i) => h('li', { dataset: { event: e.event } },
    h('div', {}, time(e.at)),
    h('div', { class: 'what' }, e.event, ' ', badge(e.state)),
    h('div', { class: 'detail' },
      [
        `attempt ${e.attempt}`,
        e.worker ? `worker ${e.worker}` : null,
        e.fencing_token !== undefined ? `fencing token ${e.fencing_token}` : null,
        e.run_at ? `due ${new Date(e.run_at).toISOString()}` : null,
        e.step !== undefined ? `step ${e.step}` : null,
      ].filter(Boolean).join(' · '),
      e.error ? [h('br'), h('span', { class: 'err' }, e.error)] : null,
      i === 0 && job.history_dropped ? [h('br'), h('em', {}, `${count(job.history_dropped)} older entries dropped after this one`)] : null)));
  return h('div', { class: 'panel', id: 'job-timeline' },
    h('h2', {}, `Timeline (${count(job.history.length + job.history_dropped)} events)`),
    h('ol', { class: 'timeline' }, items));
}

/** The steps the job's attempts recorded, in recording order: later attempts skip them. */
function stepsPanel(job) {
  const steps = job.steps || [];
  const shown = (result) => {
    const text = JSON.stringify(result);
    return text.length > STEP_RESULT_CHARS_MAX ? `${text.slice(0, STEP_RESULT_CHARS_MAX)}…` : text;
  };
  return h('div', { class: 'panel', id: 'job-steps' }, h('h2', {}, `Steps (${count(steps.length)})`), steps.length
    ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Step'), h('th', { class: 'num' }, 'Attempt'), h('th', {}, 'Recorded'),
        h('th', {}, 'Result'))),
      h('tbody', {}, steps.map((s) => h('tr', { dataset: { step: s.name } },
        h('td', { class: 'wrap' }, s.name),
        h('td', { class: 'num' }, String(s.attempt)),
        h('td', {}, time(s.recorded_at)),
        h('td', { class: 'wrap' }, h('code', {}, shown(s.result)))))))
    : h('p', { class: 'muted' }, 'No steps recorded.'));
}

/** One row per delivery: who had it, under which fencing token, and how it ended. */
function attemptsPanel(job) {
  const attempts = [];
  let open = null;
  for (const e of job.history) {
    if (e.event === 'leased') {
      open = { attempt: e.attempt, at: e.at, worker: e.worker, token: e.fencing_token, end: null };
      attempts.push(open);
    } else if (open && ['completed', 'failed', 'expired', 'cancelled'].includes(e.event)) {
      open.end = e;
      open = null;
    }
  }
  return h('div', { class: 'panel', id: 'job-attempts' }, h('h2', {}, 'Attempts'), attempts.length
    ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', { class: 'num' }, '#'), h('th', {}, 'Leased'), h('th', {}, 'Worker'),
        h('th', { class: 'num' }, 'Fencing token'), h('th', {}, 'Outcome'))),
      h('tbody', {}, attempts.map((a) => h('tr', {},
        h('td', { class: 'num' }, String(a.attempt)),
        h('td', {}, time(a.at)),
        h('td', { class: 'wrap' }, a.worker || '—'),
        h('td', { class: 'num' }, a.token !== undefined ? String(a.token) : '—'),
        h('td', { class: a.end && a.end.error ? 'err' : '' },
          a.end ? [a.end.event, ' ', time(a.end.at), a.end.error ? [h('br'), a.end.error] : null] : 'in progress')))))
    : h('p', { class: 'muted' }, 'Never leased.'));
}
