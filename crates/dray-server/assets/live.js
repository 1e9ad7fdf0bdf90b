// The live stream: one EventSource on /dashboard/events for the whole page, a `snapshot` event a
// second. Pages subscribe while they are shown. The browser reconnects by itself after a drop;
// the indicator in the header says which it is.

const listeners = new Set();
/** The latest snapshots, newest last; pages turn two of them into rates. */
const history = [];
const HISTORY_MAX = 120;
let source = null;

function setIndicator(on, text) {
  const el = document.getElementById('live');
  if (!el) return;
  el.textContent = text;
  el.classList.toggle('on', on);
  el.classList.toggle('off', !on);
}

export function start() {
  if (source) return;
  source = new EventSource('/dashboard/events');
  source.addEventListener('open', () => setIndicator(true, 'live'));
  source.addEventListener('error', () => setIndicator(false, 'reconnecting'));
  source.addEventListener('snapshot', (event) => {
    let snapshot;
    try {
      snapshot = JSON.parse(event.data);
    } catch {
      return;
    }
    history.push(snapshot);
    if (history.length > HISTORY_MAX) history.shift();
    setIndicator(!snapshot.problem, snapshot.problem ? `store: ${snapshot.problem.title}` : 'live');
    for (const listener of listeners) {
      try {
        listener(snapshot, history);
      } catch (e) {
        console.error('live listener failed', e);
      }
    }
  });
}

/** Calls `listener(snapshot, history)` on every snapshot (and at once with the latest one). */
export function subscribe(listener) {
  listeners.add(listener);
  if (history.length) listener(history[history.length - 1], history);
  return () => listeners.delete(listener);
}

/**
 * Per-queue rates from the two snapshots furthest apart within the last `windowMs`: enqueued and
 * completed jobs per second on this node. `null` while fewer than two snapshots exist.
 */
export function rates(snapshots, windowMs = 10_000) {
  if (snapshots.length < 2) return null;
  const last = snapshots[snapshots.length - 1];
  let first = snapshots[snapshots.length - 2];
  for (let i = snapshots.length - 2; i >= 0; i -= 1) {
    if (last.at_ms - snapshots[i].at_ms > windowMs) break;
    first = snapshots[i];
  }
  const seconds = (last.at_ms - first.at_ms) / 1000;
  if (seconds <= 0) return null;
  const before = new Map((first.activity || []).map((a) => [a.queue, a]));
  const out = new Map();
  for (const a of last.activity || []) {
    const b = before.get(a.queue) || {};
    out.set(a.queue, {
      enqueued: Math.max(0, (a.enqueued - (b.enqueued || 0)) / seconds),
      completed: Math.max(0, (a.completed - (b.completed || 0)) / seconds),
      failed: Math.max(0, (a.failed - (b.failed || 0)) / seconds),
    });
  }
  return out;
}
