// Dead letters: filter, select, then redrive or discard, each behind a confirmation that says
// how many jobs it touches. "All matching" asks the server for a dry run first and then acts on
// exactly the jobs that dry run listed, so the number confirmed is the number acted on.

import { api } from './api.js';
import { go } from './app.js';
import { confirmDialog, count, h, notice, replace } from './dom.js';
import { jobsTable } from './jobs.js';

const PAGE = 100;
/** The most one "all matching" action takes (the API allows up to 10,000 per call). */
const ALL_MAX = 1000;
const REASONS = ['failed', 'lease_expired', 'non_retryable', 'rejected'];

export async function renderDead(main, params) {
  const filter = {
    queue: params.get('queue') || '',
    dead_reason: params.get('dead_reason') || '',
    tag: params.get('tag') || '',
  };
  const after = params.get('after') || '';

  let queues = [];
  try {
    queues = (await api.queues()).queues.filter((q) => q.counts.dead > 0 || q.name === filter.queue).map((q) => q.name);
  } catch {
    queues = filter.queue ? [filter.queue] : [];
  }
  const queueSelect = h('select', { id: 'dead-queue' }, h('option', { value: '' }, 'any queue'),
    queues.map((q) => h('option', { value: q, selected: q === filter.queue }, q)));
  const reasonSelect = h('select', { id: 'dead-reason' }, h('option', { value: '' }, 'any reason'),
    REASONS.map((r) => h('option', { value: r, selected: r === filter.dead_reason }, r)));
  const tagInput = h('input', { id: 'dead-tag', value: filter.tag, placeholder: 'tag', maxlength: 64 });
  const form = h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      go('/dead', { queue: queueSelect.value, dead_reason: reasonSelect.value, tag: tagInput.value.trim() });
    },
  },
  h('label', {}, 'Queue', queueSelect),
  h('label', {}, 'Reason', reasonSelect),
  h('label', {}, 'Tag', tagInput),
  h('button', { type: 'submit', class: 'primary' }, 'Filter'),
  h('button', { type: 'button', onclick: () => go('/dead') }, 'Clear'));

  const message = h('div', { id: 'dead-message' });
  const toolbar = h('div', { class: 'toolbar' });
  const list = h('div', { class: 'panel flush', id: 'dead-list' }, h('p', { class: 'muted pad' }, 'Loading…'));
  replace(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Dead letters'),
      h('div', { class: 'muted small' }, 'Jobs that ran out of attempts, failed for good, or were rejected.'))),
    form, message, toolbar, list);

  const selected = new Set();
  let page = { jobs: [] };

  const selection = () => [...selected];
  const apiFilter = () => ({
    queue: filter.queue || undefined,
    dead_reason: filter.dead_reason || undefined,
    tag: filter.tag || undefined,
  });
  const described = () => Object.entries(apiFilter()).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ') || 'any';

  async function act(verb, call, ids) {
    const n = ids.length;
    const consequence = verb === 'Redrive'
      ? 'Each becomes available again with a fresh budget of attempts.'
      : 'They are deleted for good; this cannot be undone.';
    const ok = await confirmDialog({
      title: `${verb} ${count(n)} ${n === 1 ? 'job' : 'jobs'}?`,
      text: `${verb} ${count(n)} dead ${n === 1 ? 'job' : 'jobs'}. ${consequence}`,
      ok: `${verb} ${count(n)}`,
      danger: verb === 'Discard',
    });
    if (!ok) return;
    try {
      const done = await call({ ids });
      replace(message, notice(`${verb === 'Redrive' ? 'Redrove' : 'Discarded'} ${count(done.count)} ${done.count === 1 ? 'job' : 'jobs'}.`, 'ok'));
      selected.clear();
      await load();
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
    }
  }

  async function actAll(verb, call) {
    let preview;
    try {
      preview = await call({ ...apiFilter(), limit: ALL_MAX, dry_run: true });
    } catch (e) {
      replace(message, notice(e.message, 'bad'));
      return;
    }
    if (!preview.count) {
      replace(message, notice('No dead job matches the filter.'));
      return;
    }
    await act(verb, call, preview.ids);
  }

  function drawToolbar() {
    const n = selected.size;
    replace(toolbar,
      h('button', { id: 'redrive-selected', class: 'primary', disabled: n === 0, onclick: () => act('Redrive', api.deadRedrive, selection()) }, `Redrive selected (${n})`),
      h('button', { id: 'discard-selected', class: 'danger', disabled: n === 0, onclick: () => act('Discard', api.deadDiscard, selection()) }, `Discard selected (${n})`),
      h('button', { id: 'redrive-all', onclick: () => actAll('Redrive', api.deadRedrive), title: `At most ${ALL_MAX} at once` }, 'Redrive all matching…'),
      h('button', { id: 'discard-all', onclick: () => actAll('Discard', api.deadDiscard), title: `At most ${ALL_MAX} at once` }, 'Discard all matching…'),
      h('span', { class: 'muted small' }, `Filter: ${described()}`));
  }

  function drawList() {
    const all = h('input', {
      type: 'checkbox',
      id: 'select-page',
      title: 'Select this page',
      checked: page.jobs.length > 0 && page.jobs.every((j) => selected.has(j.id)),
      onchange: (e) => {
        for (const j of page.jobs) if (e.target.checked) selected.add(j.id); else selected.delete(j.id);
        drawList(); drawToolbar();
      },
    });
    const table = jobsTable(page.jobs, {
      select: {
        header: all,
        cell: (j) => h('input', {
          type: 'checkbox',
          'aria-label': `select job ${j.id}`,
          dataset: { select: j.id },
          checked: selected.has(j.id),
          onchange: (e) => {
            if (e.target.checked) selected.add(j.id); else selected.delete(j.id);
            e.target.closest('tr').classList.toggle('selected', e.target.checked);
            drawToolbar();
            all.checked = page.jobs.every((x) => selected.has(x.id));
          },
        }),
      },
    });
    const pager = h('div', { class: 'pager' },
      h('button', { disabled: !after, onclick: () => go('/dead', { ...filter }) }, '⇤ First page'),
      h('button', { disabled: page.next === undefined, onclick: () => go('/dead', { ...filter, after: page.next }) }, 'Next →'),
      h('span', { class: 'muted small' }, `${count(page.jobs.length)} on this page`));
    replace(list, table, pager);
  }

  async function load() {
    try {
      page = await api.dead({ ...apiFilter(), after: after || undefined, limit: PAGE });
    } catch (e) {
      replace(list, notice(e.message, 'bad'));
      return;
    }
    for (const id of [...selected]) if (!page.jobs.some((j) => j.id === id)) selected.delete(id);
    drawToolbar();
    drawList();
  }

  drawToolbar();
  await load();
  return null;
}
