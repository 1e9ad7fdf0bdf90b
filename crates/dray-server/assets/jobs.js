// Job search: filter by queue, state and tag; pages follow the API's cursor (`next` -> `after`).
// The filters live in the URL, so a search can be bookmarked and the back button works.

import { api } from './api.js';
import { go } from './app.js';
import { JOB_STATES, badge, count, h, notice, replace, time } from './dom.js';

const PAGE = 50;

/** A table of job summaries (shared with the queue and dead-letter pages). */
export function jobsTable(jobs, { showQueue = true, select = null } = {}) {
  if (!jobs.length) return h('p', { class: 'muted pad' }, 'No jobs match.');
  return h('table', { class: 'jobs' },
    h('thead', {}, h('tr', {},
      select ? h('th', {}, select.header) : null,
      h('th', { class: 'num' }, 'Id'),
      showQueue ? h('th', {}, 'Queue') : null,
      h('th', {}, 'State'),
      h('th', { class: 'num' }, 'Attempt'),
      h('th', {}, 'Created'),
      h('th', {}, 'Run at / finished'),
      h('th', {}, 'Tags'),
      h('th', {}, 'Last error'))),
    h('tbody', {}, jobs.map((j) => h('tr', { dataset: { job: j.id } },
      select ? h('td', {}, select.cell(j)) : null,
      h('td', { class: 'num' }, h('a', { href: `#/jobs/${j.id}` }, String(j.id))),
      showQueue ? h('td', { class: 'wrap' }, h('a', { href: `#/queues/${encodeURIComponent(j.queue)}` }, j.queue)) : null,
      h('td', {}, badge(j.state), j.dead_reason ? h('span', { class: 'muted small' }, ` ${j.dead_reason}`) : null),
      h('td', { class: 'num' }, `${j.attempt} / ${j.attempts_max}`),
      h('td', {}, time(j.created_at)),
      h('td', {}, time(j.finished_at || j.run_at)),
      h('td', { class: 'wrap' }, j.tags.map((t) => [badge(t, 'tag'), ' '])),
      h('td', { class: 'err' }, j.last_error || '')))));
}

export async function renderJobs(main, params) {
  const filter = {
    queue: params.get('queue') || '',
    state: params.get('state') || '',
    tag: params.get('tag') || '',
  };
  const after = params.get('after') || '';
  // Earlier cursors, so "Previous" can go back: kept in the URL as a list.
  const back = (params.get('back') || '').split(',').filter(Boolean);

  let queues = [];
  try {
    queues = (await api.queues()).queues.map((q) => q.name);
  } catch {
    queues = [];
  }
  if (filter.queue && !queues.includes(filter.queue)) queues.push(filter.queue);

  const queueSelect = h('select', { name: 'queue', id: 'filter-queue' },
    h('option', { value: '' }, 'any queue'),
    queues.map((q) => h('option', { value: q, selected: q === filter.queue }, q)));
  const stateSelect = h('select', { name: 'state', id: 'filter-state' },
    h('option', { value: '' }, 'any state'),
    JOB_STATES.map((s) => h('option', { value: s, selected: s === filter.state }, s)));
  const tagInput = h('input', { name: 'tag', id: 'filter-tag', value: filter.tag, placeholder: 'tag', maxlength: 64 });
  const form = h('form', {
    class: 'filters',
    onsubmit: (e) => {
      e.preventDefault();
      go('/jobs', { queue: queueSelect.value, state: stateSelect.value, tag: tagInput.value.trim() });
    },
  },
  h('label', {}, 'Queue', queueSelect),
  h('label', {}, 'State', stateSelect),
  h('label', {}, 'Tag', tagInput),
  h('button', { type: 'submit', class: 'primary' }, 'Search'),
  h('button', { type: 'button', onclick: () => go('/jobs') }, 'Clear'));

  const results = h('div', { class: 'panel flush', id: 'job-results' }, h('p', { class: 'muted pad' }, 'Searching…'));
  replace(main,
    h('div', { class: 'page-head' }, h('div', {}, h('h1', {}, 'Jobs'),
      h('div', { class: 'muted small' }, 'In enqueue order, without payloads; open a job for everything.'))),
    form, results);

  let page;
  try {
    page = await api.jobs({ ...filter, after: after || undefined, limit: PAGE });
  } catch (e) {
    replace(results, notice(e.message, 'bad'));
    return null;
  }
  const pager = h('div', { class: 'pager' },
    h('button', {
      id: 'page-prev',
      disabled: !after,
      onclick: () => {
        const previous = back[back.length - 1];
        go('/jobs', { ...filter, after: previous === '0' ? '' : previous, back: back.slice(0, -1).join(',') });
      },
    }, '← Previous'),
    h('button', {
      id: 'page-next',
      disabled: page.next === undefined,
      onclick: () => go('/jobs', { ...filter, after: page.next, back: [...back, after || '0'].join(',') }),
    }, 'Next →'),
    h('span', { class: 'muted small' }, `${count(page.jobs.length)} on this page${after ? `, after job ${after}` : ''}`));
  replace(results, jobsTable(page.jobs), pager);
  return null;
}
