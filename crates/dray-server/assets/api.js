// The dashboard is a client of the public /v1 API, like any other: these are its calls.

import { parseJson } from './dom.js';

/** A refusal from the server, carrying its problem+json body. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function call(method, path, body) {
  const init = { method, headers: { accept: 'application/json' } };
  // Every write carries the JSON content type, body or not: the server refuses writes without it
  // (so that no HTML form or cross-site page can send one).
  if (method !== 'GET') init.headers['content-type'] = 'application/json';
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { detail: `cannot reach the server: ${e.message}` });
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? parseJson(text) : null;
  } catch {
    parsed = null;
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent('dray:unauthorized'));
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

/** `?a=1&b=2` from the entries that have a value. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

const seg = encodeURIComponent;

export const api = {
  queues: () => call('GET', '/v1/queues'),
  queue: (name) => call('GET', `/v1/queues/${seg(name)}`),
  queuePause: (name) => call('POST', `/v1/queues/${seg(name)}/pause`),
  queueResume: (name) => call('POST', `/v1/queues/${seg(name)}/resume`),
  queueBreaker: (name, action) => call('POST', `/v1/queues/${seg(name)}/breaker`, { action }),
  jobs: (filter) => call('GET', `/v1/jobs${query(filter)}`),
  job: (id) => call('GET', `/v1/jobs/${seg(id)}`),
  jobCancel: (id) => call('POST', `/v1/jobs/${seg(id)}/cancel`),
  dead: (filter) => call('GET', `/v1/dead${query(filter)}`),
  deadRedrive: (action) => call('POST', '/v1/dead/redrive', action),
  deadDiscard: (action) => call('POST', '/v1/dead/discard', action),
  workers: () => call('GET', '/v1/workers'),
  schedules: (next) => call('GET', `/v1/schedules${query({ next })}`),
  schedule: (name, next) => call('GET', `/v1/schedules/${seg(name)}${query({ next })}`),
  schedulePause: (name) => call('POST', `/v1/schedules/${seg(name)}/pause`),
  scheduleResume: (name) => call('POST', `/v1/schedules/${seg(name)}/resume`),
  scheduleTrigger: (name) => call('POST', `/v1/schedules/${seg(name)}/trigger`),
};
