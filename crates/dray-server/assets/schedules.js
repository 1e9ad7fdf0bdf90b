// Schedules: every schedule with its rule, queue, state, next fire time (in the schedule's zone
// and in UTC) and last tick; one schedule with its settings, next ten fire times and the job it
// enqueues. Pause, resume and "Run now" (trigger), each behind a confirmation. Both views refresh
// every two seconds.

import { api } from './api.js';
import { ago, badge, confirmDialog, count, duration, h, jsonBlock, notice, replace } from './dom.js';

const REFRESH_MS = 2000;
/** Fire times listed on a schedule's page. */
const NEXT_DETAIL = 10;

const MISFIRE = {
  run_once: 'one job for all the ticks it missed',
  skip: 'the ticks it missed are dropped',
  run_all: 'one job per tick it missed',
};

const OVERLAP = {
  allow: 'a tick enqueues even while the previous tick\'s job waits or runs',
  skip: 'a tick is skipped while the previous tick\'s job waits or runs',
  cancel_previous: 'a tick cancels the previous tick\'s job if it still waits or runs',
};

const link = (name) => `#/schedules/${encodeURIComponent(name)}`;
const queueLink = (q) => h('a', { href: `#/queues/${encodeURIComponent(q)}` }, q);
const jobLink = (id) => h('a', { href: `#/jobs/${id}` }, `job ${id}`);
/** The zone a schedule's wall clock reads (an interval rule counts real time: UTC). */
const zoneOf = (s) => s.timezone || 'UTC';

/** "2026-11-21T09:00:00.000Z" -> "2026-11-21 09:00:00" (milliseconds only when not zero). */
function utcText(rfc3339) {
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const ms = d.getUTCMilliseconds();
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} `
    + `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}${ms ? `.${pad(ms, 3)}` : ''}`;
}

/** The server's "2026-03-29T09:00:00+02:00[Europe/Berlin]" -> "2026-03-29 09:00:00 +02:00". */
function localText(local) {
  const m = /^(\d{4,}-\d\d-\d\d)T(\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)(?:\[.*\])?$/.exec(local || '');
  return m ? `${m[1]} ${m[2]} ${m[3] === 'Z' ? '+00:00' : m[3]}` : (local || '—');
}

/** An instant on the wall clock of `zone`, as localText shows one (for the last tick, which the API gives in UTC). */
function inZone(rfc3339, zone) {
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return rfc3339;
  try {
    const parts = Object.fromEntries(new Intl.DateTimeFormat('en-US', {
      timeZone: zone, hourCycle: 'h23', timeZoneName: 'longOffset',
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
    }).formatToParts(d).map((p) => [p.type, p.value]));
    const offset = parts.timeZoneName === 'GMT' ? '+00:00' : parts.timeZoneName.replace(/^GMT/, '');
    return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${offset}`;
  } catch {
    return null;
  }
}

/**
 * A fire time on two labelled lines: the wall clock of the schedule's zone, then UTC. An
 * interval rule has no zone: one UTC line.
 */
function fireTime(s, fire, now) {
  if (!fire) return h('span', { class: 'muted' }, s.cron ? 'never (the rule matches no date)' : '—');
  const utc = h('div', { class: 'fire-utc' }, utcText(fire.at), ' ', h('span', { class: 'zone' }, 'UTC'));
  return h('div', { class: 'fire', dataset: { at: fire.at } },
    s.timezone && s.timezone !== 'UTC'
      ? h('div', { class: 'fire-local' }, localText(fire.local), ' ', h('span', { class: 'zone' }, s.timezone))
      : null,
    utc,
    h('div', { class: 'muted small' }, ago(fire.at, now)));
}

/** "30 2 * * * America/New_York", "every 300 s (5.0 min)". */
function ruleText(s) {
  if (s.cron) return [h('code', {}, s.cron), ' ', h('span', { class: 'muted' }, zoneOf(s))];
  const ms = s.every_ms;
  const every = ms % 1000 === 0 ? `every ${count(ms / 1000)} s` : `every ${count(ms)} ms`;
  return ms >= 60_000 ? `${every} (${duration(ms)})` : every;
}

function stateBadge(s) {
  return s.paused ? badge('paused') : badge('active', 'completed');
}

function policyText(s) {
  return [
    h('div', {}, h('span', { class: 'muted' }, 'misfire '), s.misfire, s.misfire_cap != null ? ` (cap ${count(s.misfire_cap)})` : ''),
    h('div', {}, h('span', { class: 'muted' }, 'overlap '), s.overlap),
    s.jitter_ms ? h('div', {}, h('span', { class: 'muted' }, 'jitter '), duration(s.jitter_ms)) : null,
  ];
}

function misfireText(s) {
  const text = MISFIRE[s.misfire] || s.misfire;
  return s.misfire === 'run_all' && s.misfire_cap != null ? `${text} (at most ${count(s.misfire_cap)})` : text;
}

/**
 * Pause or Resume, and Run now, for schedule `s`: each asks first, then says what it did in
 * `message` and calls `reload`.
 */
function actionButtons(s, message, reload) {
  const toggle = async () => {
    const ok = await confirmDialog(s.paused
      ? {
        title: `Resume schedule ${s.name}?`,
        text: `It enqueues jobs on ${s.job.queue} again, from its next fire time. Ticks missed while it was paused meet its misfire policy, ${s.misfire}: ${misfireText(s)}.`,
        ok: 'Resume',
      }
      : {
        title: `Pause schedule ${s.name}?`,
        text: `It enqueues no more jobs on ${s.job.queue} until it is resumed; its jobs already enqueued run as usual. Ticks due meanwhile meet its misfire policy (${s.misfire}) on resume. "Run now" still works.`,
        ok: 'Pause',
        danger: true,
      });
    if (!ok) return;
    try {
      const after = s.paused ? await api.scheduleResume(s.name) : await api.schedulePause(s.name);
      replace(message, notice(after.paused ? `Schedule ${after.name} is paused.` : `Schedule ${after.name} is active again.`, 'ok'));
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
    }
    await reload();
  };
  const trigger = async () => {
    const ok = await confirmDialog({
      title: `Run ${s.name} now?`,
      text: `Enqueues one job on ${s.job.queue} now, outside its rule${s.paused ? ' (even though the schedule is paused)' : ''} and whatever its overlap policy. Its next tick stays as it was.`,
      ok: 'Run now',
    });
    if (!ok) return;
    try {
      const done = await api.scheduleTrigger(s.name);
      replace(message, notice(['Schedule ', done.schedule, ' enqueued ', jobLink(done.job.id), ` on ${s.job.queue} (${done.job.state}).`], 'ok'));
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
    }
    await reload();
  };
  return [
    h('button', { class: s.paused ? 'primary' : '', dataset: { action: s.paused ? 'resume' : 'pause' }, onclick: toggle }, s.paused ? 'Resume' : 'Pause'),
    h('button', { dataset: { action: 'trigger' }, onclick: trigger }, 'Run now'),
  ];
}

function emptyState() {
  return h('div', { class: 'pad' },
    h('p', { class: 'muted' }, 'No schedules yet. A schedule enqueues a job on a cron rule read in an IANA time zone, or every N milliseconds. Create one with the CLI:'),
    h('pre', { class: 'json' }, "dray schedules create NAME --cron '0 9 * * MON-FRI' --timezone Europe/Berlin --queue reports"),
    h('p', { class: 'muted small' }, 'or with PUT /v1/schedules/NAME (docs/schedules.md). It shows here within two seconds.'));
}

export async function renderSchedules(main) {
  const message = h('div', { id: 'schedules-message' });
  const list = h('div', { class: 'panel flush', id: 'schedules' }, h('p', { class: 'muted pad' }, 'Loading…'));
  replace(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Schedules'),
      h('div', { class: 'muted small' }, 'Cron or interval rules that enqueue a job per tick. A cron rule reads the wall clock of its time zone: its next fire time is shown there and in UTC.'))),
    message, list);

  let errorShown = false;
  let shown = '';
  async function load() {
    let data;
    try {
      data = await api.schedules(1);
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
      errorShown = true;
      return;
    }
    // An action's notice stays until the next action; a failed load's goes with the next load.
    if (errorShown) { replace(message); errorShown = false; }
    const now = Date.now();
    // Redrawn when something changed or a relative time moved, not under the pointer every time.
    const key = JSON.stringify(data) + data.schedules.map((s) => ago(s.next[0] && s.next[0].at, now)
      + (s.last_tick ? ago(s.last_tick.fired_at, now) : '')).join();
    if (key === shown) return;
    shown = key;
    if (!data.schedules.length) {
      replace(list, emptyState());
      return;
    }
    replace(list, h('table', {},
      h('thead', {}, h('tr', {},
        h('th', {}, 'Schedule'), h('th', {}, 'Rule'), h('th', {}, 'Queue'), h('th', {}, 'State'),
        h('th', {}, 'Next fire (its zone, UTC)'), h('th', {}, 'Last tick (UTC)'), h('th', {}, 'Policies'), h('th', {}, ''))),
      h('tbody', {}, data.schedules.map((s) => h('tr', { dataset: { schedule: s.name, state: s.paused ? 'paused' : 'active' } },
        h('td', { class: 'wrap' }, h('a', { href: link(s.name) }, h('strong', {}, s.name))),
        h('td', { class: 'wrap' }, ruleText(s)),
        h('td', { class: 'wrap' }, queueLink(s.job.queue)),
        h('td', { class: 'state' }, stateBadge(s)),
        h('td', { class: 'next' }, s.paused
          ? [h('div', { class: 'muted small' }, 'paused; when resumed:'), fireTime(s, s.next[0], now)]
          : fireTime(s, s.next[0], now)),
        h('td', { class: 'last' }, s.last_tick
          ? [h('div', {}, utcText(s.last_tick.at)), h('div', {}, jobLink(s.last_tick.job_id), h('span', { class: 'muted small' }, ` ${ago(s.last_tick.fired_at, now)}`))]
          : h('span', { class: 'muted' }, 'never')),
        h('td', { class: 'small' }, policyText(s)),
        h('td', {}, h('div', { class: 'row-actions' }, actionButtons(s, message, load))))))));
  }

  await load();
  const timer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  return () => clearInterval(timer);
}

export async function renderSchedule(main, params, name) {
  let s = await api.schedule(name, NEXT_DETAIL);
  const message = h('div', { id: 'schedule-message' });
  const body = h('div');
  replace(main, message, body);

  function draw() {
    const now = Date.now();
    const zone = zoneOf(s);
    const field = (label, value) => [h('dt', {}, label), h('dd', {}, value)];
    const muted = (text) => h('span', { class: 'muted' }, text);

    const settings = h('div', { class: 'panel' }, h('h2', {}, 'Settings'), h('dl', { class: 'fields', id: 'schedule-fields' },
      field('rule', ruleText(s)),
      s.cron
        ? field('time zone', [zone, muted(s.interval_like
          ? ' · interval-like (its minute or hour field starts with *): across a DST change it keeps the elapsed time'
          : ' · fixed-time: a wall time skipped by DST fires when the clocks change, a repeated one fires once')])
        : field('anchor', [utcText(s.anchor), ' UTC ', muted('(fires at the anchor plus whole periods; no time zone)')]),
      field('state', [stateBadge(s), s.paused ? muted(' no ticks until resumed') : null]),
      field('queue', queueLink(s.job.queue)),
      field('misfire', [s.misfire, muted(` · ${misfireText(s)}; a tick is missed when due more than ${duration(s.misfire_grace_ms)} ago`)]),
      field('overlap', [s.overlap, muted(` · ${OVERLAP[s.overlap] || ''}`)]),
      field('jitter', s.jitter_ms ? `each job runs up to ${duration(s.jitter_ms)} after its tick` : muted('none')),
      field('next tick due', s.next_at ? [utcText(s.next_at), ' UTC', muted(` (${ago(s.next_at, now)})`)] : muted('none: the rule fires no more')),
      field('created', [utcText(s.created_at), ' UTC']),
      field('updated', [utcText(s.updated_at), ' UTC'])));

    const t = s.last_tick;
    const last = h('div', { class: 'panel', id: 'schedule-last' }, h('h2', {}, 'Last tick'), t
      ? h('dl', { class: 'fields' },
        field('tick', [utcText(t.at), ' UTC', s.timezone && s.timezone !== 'UTC' && inZone(t.at, zone)
          ? muted(` · ${inZone(t.at, zone)} ${zone}`) : null]),
        field('job', jobLink(t.job_id)),
        field('enqueued', [utcText(t.fired_at), ' UTC', muted(` (${ago(t.fired_at, now)})`)]))
      : h('p', { class: 'muted' }, 'It has not enqueued a job yet.'));

    const local = s.timezone && s.timezone !== 'UTC';
    const upcoming = h('div', { class: 'panel flush', id: 'schedule-next' },
      h('h2', {}, `Next ${s.next.length} fire times`),
      s.next.length
        ? h('table', {},
          h('thead', {}, h('tr', {},
            h('th', { class: 'num' }, '#'),
            local ? h('th', {}, `Local time (${zone})`) : null,
            h('th', {}, 'UTC'),
            h('th', {}, 'In'))),
          h('tbody', {}, s.next.map((f, i) => h('tr', { dataset: { at: f.at } },
            h('td', { class: 'num' }, String(i + 1)),
            local ? h('td', { class: 'fire-local' }, localText(f.local)) : null,
            h('td', { class: 'fire-utc' }, utcText(f.at)),
            h('td', { class: 'muted' }, ago(f.at, now))))))
        : h('p', { class: 'muted pad' }, 'None: the rule matches no date to come.'));

    const j = s.job;
    const template = h('div', { class: 'panel', id: 'schedule-job' }, h('h2', {}, 'Job it enqueues'),
      h('dl', { class: 'fields' },
        field('queue', queueLink(j.queue)),
        field('priority', String(j.priority)),
        field('attempts_max', j.attempts_max != null ? count(j.attempts_max) : muted("the queue's")),
        field('lease_ms', j.lease_ms != null ? duration(j.lease_ms) : muted("the queue's")),
        j.backoff ? field('backoff', `${duration(j.backoff.base_ms)} × ${j.backoff.factor}^n, at most ${duration(j.backoff.cap_ms)}`) : null,
        field('tags', j.tags && j.tags.length ? j.tags.map((x) => [badge(x, 'tag'), ' ']) : muted('—')),
        field('ordering key', j.ordering_key ?? '—'),
        j.traceparent ? field('traceparent', h('code', {}, j.traceparent)) : null),
      h('h2', { class: 'gap' }, 'Payload'),
      jsonBlock(j.payload, { id: 'schedule-payload' }));

    replace(body,
      h('div', { class: 'page-head' },
        h('div', {},
          h('div', { class: 'muted small' }, h('a', { href: '#/schedules' }, 'Schedules'), ' / schedule'),
          h('h1', {}, s.name, stateBadge(s))),
        h('div', { class: 'toolbar' },
          h('a', { href: `#/jobs?queue=${encodeURIComponent(j.queue)}` }, 'Jobs on its queue'),
          actionButtons(s, message, reload))),
      h('div', { class: 'grid' }, settings, h('div', {}, last, template)),
      upcoming);
  }

  let shown = '';
  let errorShown = false;
  async function reload() {
    try {
      s = await api.schedule(name, NEXT_DETAIL);
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
      errorShown = true;
      return;
    }
    if (errorShown) { replace(message); errorShown = false; }
    // Redrawn when something changed, and at least as often as the "in ..." texts move.
    const key = JSON.stringify(s) + ago(s.next[0] && s.next[0].at);
    if (key !== shown) {
      shown = key;
      draw();
    }
  }

  shown = JSON.stringify(s) + ago(s.next[0] && s.next[0].at);
  draw();
  const timer = setInterval(() => { if (!document.hidden) reload(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
