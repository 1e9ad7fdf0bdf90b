// Building the page without ever parsing a string as HTML: every text, job payloads included,
// goes in as a text node or an attribute value. There is no innerHTML anywhere in the dashboard.

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * h('a', {href: '#/x', class: 'c'}, 'text', child, [more]) -> an element.
 * Attributes starting with "on" are event listeners; `null`/`false` children are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements (sparklines). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

const STATES = ['scheduled', 'available', 'running', 'retrying', 'completed', 'dead', 'cancelled'];
/** Every state a job can be in, for filters: STATES (the overview's columns) and `blocked`. */
const JOB_STATES = [...STATES, 'blocked'];
export { JOB_STATES, STATES };

export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}` }, text);
}

/** 1234567 -> "1,234,567". */
export function count(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
}

/** Milliseconds as "850 ms", "12.3 s", "4.2 min", "3.1 h". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  if (ms < 86_400_000) return `${(ms / 3_600_000).toFixed(1)} h`;
  return `${(ms / 86_400_000).toFixed(1)} d`;
}

/** Per second, "—" when unknown. */
export function rate(perSecond) {
  if (perSecond === null || perSecond === undefined || Number.isNaN(perSecond)) return '—';
  if (perSecond === 0) return '0/s';
  if (perSecond < 10) return `${perSecond.toFixed(1)}/s`;
  return `${Math.round(perSecond).toLocaleString('en-US')}/s`;
}

/** An RFC 3339 time as the local "2026-11-21 09:00:00.250", with the UTC original as a tooltip. */
export function time(rfc3339) {
  if (!rfc3339) return h('span', { class: 'muted' }, '—');
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return h('span', {}, rfc3339);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  return h('time', { datetime: rfc3339, title: rfc3339 }, text);
}

/** "12 s ago", "in 3.0 min", relative to `now` (ms). */
export function ago(rfc3339, now = Date.now()) {
  if (!rfc3339) return '—';
  const delta = now - new Date(rfc3339).getTime();
  if (Math.abs(delta) < 1000) return 'now';
  return delta > 0 ? `${duration(delta)} ago` : `in ${duration(-delta)}`;
}

/**
 * Parses JSON keeping every number exactly as written when a JavaScript number cannot hold it
 * (ids past 2^53, long decimals): job payloads are user data and must be shown as sent.
 */
export function parseJson(text) {
  if (typeof JSON.rawJSON !== 'function') return JSON.parse(text);
  return JSON.parse(text, (key, value, context) => {
    if (typeof value === 'number' && context && typeof context.source === 'string' && losesDigits(value, context.source)) {
      // Only then: a raw value is an object, which the pages could not do arithmetic on.
      return JSON.rawJSON(context.source);
    }
    return value;
  });
}

/** Whether the number `source` reads as `value` with digits lost (`2.0` loses none). */
function losesDigits(value, source) {
  if (/^-?\d+$/.test(source)) return !Number.isSafeInteger(value);
  // Significant digits of the mantissa: a double keeps 15 exactly.
  const digits = source.replace(/^-/, '').replace(/[eE].*$/, '').replace('.', '').replace(/^0+/, '').replace(/0+$/, '');
  return digits.length > 15;
}

/** A JSON value, indented, as text in a <pre>. */
export function jsonBlock(value, attrs = {}) {
  if (value === undefined) return h('p', { class: 'muted' }, 'none');
  return h('pre', { class: 'json', ...attrs }, JSON.stringify(value, null, 2));
}

/** A message box. */
export function notice(text, kind = '') {
  return h('div', { class: `notice ${kind}`, role: kind === 'bad' ? 'alert' : 'status' }, text);
}

/** A horizontal bar of the waiting and running states, scaled to `max`. */
export function depthBar(counts, max) {
  const parts = ['running', 'available', 'retrying', 'scheduled', 'dead'];
  const bar = h('div', { class: 'bar', title: parts.map((s) => `${s} ${counts[s]}`).join(', ') });
  for (const s of parts) {
    if (!counts[s] || !max) continue;
    const span = h('span', { class: s });
    span.style.width = `${Math.max(1, (100 * counts[s]) / max)}%`;
    bar.append(span);
  }
  return bar;
}

/** A small line chart of `values` (oldest first). */
export function sparkline(values, width = 120, height = 24) {
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`);
  return svg('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, 'aria-hidden': 'true' },
    svg('polyline', { points: points.join(' ') }));
}

/**
 * A worker's state as a badge: `busy` while it holds leases (with how many), else `idle`
 * (polling now, or seen within the server's bound). `w.leases` is a count in the live snapshot
 * and a list in GET /v1/workers.
 */
export function workerBadge(w) {
  const held = Array.isArray(w.leases) ? w.leases.length : (w.leases || 0);
  if (w.state === 'busy') return badge(held > 1 ? `busy ×${held}` : 'busy', 'running');
  return badge(w.polling ? 'idle, polling' : 'idle', 'cancelled');
}

/** Asks for confirmation in the page's modal dialog; resolves true when confirmed. */
export function confirmDialog({ title, text, ok, danger = false }) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  const okButton = document.getElementById('confirm-ok');
  const cancelButton = document.getElementById('confirm-cancel');
  okButton.textContent = ok;
  okButton.className = danger ? 'danger' : 'primary';
  return new Promise((resolve) => {
    const done = (answer) => {
      okButton.removeEventListener('click', onOk);
      cancelButton.removeEventListener('click', onCancel);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const onOk = () => done(true);
    const onCancel = () => done(false);
    okButton.addEventListener('click', onOk);
    cancelButton.addEventListener('click', onCancel);
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
    cancelButton.focus();
  });
}
