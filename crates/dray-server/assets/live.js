// The live stream: one EventSource on /dashboard/events for the whole page. The server sends a
// `history` event first (its throughput history: one point a second for the last few minutes),
// then a `snapshot` event a second. Pages subscribe while they are shown. The browser reconnects
// by itself after a drop (and gets the history again); the indicator in the header says which it is.
//
// A point is `{ at_ms, queues: { NAME: { enqueued, completed, failed, waiting } } }`: this node's
// totals since it started, and the jobs waiting (null when the server did not ask the store).

const listeners = new Set();
/** Points, oldest first: the server's history, then one per snapshot received. */
const points = [];
const POINTS_MAX = 300;
let latest = null;
/** Snapshots received since the page loaded (the rest of `points` came from the history). */
let received = 0;
let source = null;

function setIndicator(on, text) {
  const el = document.getElementById('live');
  if (!el) return;
  el.textContent = text;
  el.classList.toggle('on', on);
  el.classList.toggle('off', !on);
}

/** The history point of a snapshot, as the server computes it. */
function pointOf(snapshot) {
  const queues = {};
  for (const a of snapshot.activity || []) {
    queues[a.queue] = { enqueued: a.enqueued, completed: a.completed, failed: a.failed, waiting: null };
  }
  for (const q of snapshot.queues || []) {
    const entry = queues[q.name] || (queues[q.name] = { enqueued: 0, completed: 0, failed: 0, waiting: null });
    entry.waiting = q.counts.available + q.counts.scheduled + q.counts.retrying;
  }
  return { at_ms: snapshot.at_ms, queues };
}

function notify() {
  if (!latest) return;
  for (const listener of listeners) {
    try {
      listener(latest, points);
    } catch (e) {
      console.error('live listener failed', e);
    }
  }
}

export function start() {
  if (source) return;
  source = new EventSource('/dashboard/events');
  source.addEventListener('open', () => setIndicator(true, 'live'));
  source.addEventListener('error', () => setIndicator(false, 'reconnecting'));
  source.addEventListener('history', (event) => {
    let history;
    try {
      history = JSON.parse(event.data);
    } catch {
      return;
    }
    // The server's history covers what this page saw before a reconnect, and more.
    points.length = 0;
    points.push(...(history.points || []).slice(-POINTS_MAX));
    notify();
  });
  source.addEventListener('snapshot', (event) => {
    let snapshot;
    try {
      snapshot = JSON.parse(event.data);
    } catch {
      return;
    }
    latest = snapshot;
    received += 1;
    if (!points.length || points[points.length - 1].at_ms < snapshot.at_ms) points.push(pointOf(snapshot));
    if (points.length > POINTS_MAX) points.splice(0, points.length - POINTS_MAX);
    setIndicator(!snapshot.problem, snapshot.problem ? `store: ${snapshot.problem.title}` : 'live');
    notify();
  });
}

/** Snapshots received since the page loaded (for the charts' data attributes and tests). */
export function snapshotsReceived() {
  return received;
}

/** Calls `listener(snapshot, points)` on every snapshot (and at once with the latest one). */
export function subscribe(listener) {
  listeners.add(listener);
  if (latest) listener(latest, points);
  return () => listeners.delete(listener);
}

/**
 * Per-queue rates from the two points furthest apart within the last `windowMs`: enqueued,
 * completed and failed jobs per second on this node. `null` while fewer than two points exist.
 */
export function rates(pts, windowMs = 10_000) {
  if (pts.length < 2) return null;
  const last = pts[pts.length - 1];
  let first = pts[pts.length - 2];
  for (let i = pts.length - 2; i >= 0; i -= 1) {
    if (last.at_ms - pts[i].at_ms > windowMs) break;
    first = pts[i];
  }
  const seconds = (last.at_ms - first.at_ms) / 1000;
  if (seconds <= 0) return null;
  const out = new Map();
  for (const [name, a] of Object.entries(last.queues || {})) {
    const b = (first.queues || {})[name] || {};
    out.set(name, {
      enqueued: Math.max(0, (a.enqueued - (b.enqueued || 0)) / seconds),
      completed: Math.max(0, (a.completed - (b.completed || 0)) / seconds),
      failed: Math.max(0, (a.failed - (b.failed || 0)) / seconds),
    });
  }
  return out;
}

/**
 * Throughput over the points: for each pair of neighbours, jobs per second enqueued and
 * completed (all queues together). A counter that went down (the server restarted) counts 0.
 */
export function throughput(pts) {
  const out = [];
  for (let i = 1; i < pts.length; i += 1) {
    const [a, b] = [pts[i - 1], pts[i]];
    const seconds = (b.at_ms - a.at_ms) / 1000;
    if (seconds <= 0) continue;
    let enqueued = 0;
    let completed = 0;
    for (const [name, q] of Object.entries(b.queues || {})) {
      const p = (a.queues || {})[name] || { enqueued: 0, completed: 0 };
      enqueued += Math.max(0, q.enqueued - p.enqueued);
      completed += Math.max(0, q.completed - p.completed);
    }
    out.push({ at_ms: b.at_ms, enqueued: enqueued / seconds, completed: completed / seconds });
  }
  return out;
}
