// Drives the dashboard in Debian's chromium and checks every page against the scene that
// crates/dray/tests/dashboard.rs set up through the API (passed in DRAY_DASHBOARD_FIXTURE).
//
//   node tests/browser/dashboard.mjs <base-url> <screenshot-dir>
//
// Exits 0 when every check passed; otherwise prints what failed and exits 1. Never downloads a
// browser: it launches /usr/bin/chromium with a fresh profile directory.

import { join } from 'node:path';
import { launch, step } from './chromium.mjs';

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error('usage: node dashboard.mjs <base-url> <screenshot-dir>');
  process.exit(2);
}
const fixture = JSON.parse(process.env.DRAY_DASHBOARD_FIXTURE || 'null');
if (!fixture) {
  console.error('DRAY_DASHBOARD_FIXTURE is not set: run this through `cargo nextest run -p dray --test dashboard`');
  process.exit(2);
}

/** Bound on any one wait in the page (a live update arrives within about a second). */
const WAIT_MS = 15_000;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function api(method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const text = (page, selector) => page.locator(selector).first().innerText();
const number = (s) => Number(String(s).replace(/[^0-9]/g, ''));

/** What the schedules page shows for the server's "2026-03-29T09:00:00+02:00[Europe/Berlin]": "2026-03-29 09:00:00 +02:00". */
const localShown = (local) => local.replace(/^(\S+)T(\d\d:\d\d:\d\d)([+-]\d\d:\d\d)\[.*\]$/, '$1 $2 $3');
/** ... and for "2026-03-29T07:00:00.000Z": "2026-03-29 07:00:00". */
const utcShown = (at) => at.replace(/^(\S+)T(\d\d:\d\d:\d\d)(\.000)?Z$/, '$1 $2');

/** Clicks `selector`, checks the confirmation's title, then presses its OK button. */
async function confirmed(page, selector, title) {
  await page.click(selector);
  await page.waitForSelector('dialog#confirm[open]');
  const shown = await text(page, '#confirm-title');
  check(shown === title, `the confirmation says "${title}" (${shown})`);
  await page.click('#confirm-ok');
  await page.waitForSelector('dialog#confirm:not([open])', { state: 'attached' });
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  console.log(`  screenshot ${name}.png`);
}


const { context, close } = await launch({ viewport: { width: 1440, height: 900 } });
const errors = [];
let failed = false;
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console error: ${m.text()}`); });
  // The page must never load anything from elsewhere (no CDN, no fonts): fail on any attempt.
  page.on('request', (r) => { if (!r.url().startsWith(base)) errors.push(`request outside the server: ${r.url()}`); });

  await step('overview shows every queue with its counts, live', async () => {
    await page.goto(`${base}/`);
    await page.waitForSelector('tr[data-queue="emails"]');
    for (const q of fixture.queues) await page.waitForSelector(`tr[data-queue="${q}"]`);
    const cell = (q, s) => text(page, `tr[data-queue="${q}"] td[data-state="${s}"]`);
    check(number(await cell('emails', 'completed')) === fixture.completed_jobs, 'emails: completed count');
    check(number(await cell('emails', 'available')) === fixture.emails_jobs.length - fixture.completed_jobs, 'emails: available count');
    check(number(await cell('billing', 'dead')) === fixture.dead_jobs.length, 'billing: dead count');
    check(number(await cell('reports', 'running')) === 1, 'reports: running count');
    await page.waitForSelector('#live.on');
    check(number(await text(page, '#total-dead .value')) === fixture.dead_jobs.length, 'total dead card');
  });

  await step('a live update arrives without reloading', async () => {
    await page.evaluate(() => { window.__sameDocument = true; });
    const selector = 'tr[data-queue="emails"] td[data-state="available"]';
    const before = number(await text(page, selector));
    // 60 more: enough for the job search to need a second page.
    const jobs = Array.from({ length: 60 }, (_, i) => ({ queue: 'emails', payload: { n: i }, tags: ['bulk'] }));
    await api('POST', '/v1/jobs/batch', { jobs });
    await page.waitForFunction(([sel, want]) => {
      const el = document.querySelector(sel);
      return el && Number(el.textContent.replace(/[^0-9]/g, '')) === want;
    }, [selector, before + 60]);
    check(await page.evaluate(() => window.__sameDocument === true), 'the page was not reloaded');
    await shot(page, 'overview');
  });

  // Regression (issue #18, defect 1): the overview counted polls in flight ("workers polling 0"
  // while jobs ran). test-worker-2 holds a lease (and long-polls): one busy worker.
  await step('overview counts workers, busy and idle', async () => {
    await page.waitForFunction(() => document.querySelector('#total-workers')?.dataset.busy === '1');
    check((await text(page, '#total-workers')).includes('busy'), 'the card says busy');
  });

  // Regression (issue #18, defect 2): the content was capped at 1400 px and the last column hid
  // behind a horizontal scrollbar even at 1920 px.
  await step('overview table fits the window, last column visible', async () => {
    for (const width of [1280, 1920]) {
      await page.setViewportSize({ width, height: 900 });
      await page.waitForSelector('#queues');
      const fit = await page.evaluate(() => {
        const table = document.querySelector('#queues');
        const panel = table.parentElement;
        const last = table.querySelector('thead th:last-child');
        return {
          scroll: panel.scrollWidth, client: panel.clientWidth,
          lastRight: last.getBoundingClientRect().right, lastText: last.textContent,
          main: document.querySelector('main').getBoundingClientRect().width, window: window.innerWidth,
        };
      });
      check(fit.lastText.includes('Run'), `the last column is Run p50 / p95 (${fit.lastText})`);
      check(fit.scroll <= fit.client, `no horizontal scroll at ${width} px (${fit.scroll} > ${fit.client})`);
      check(fit.lastRight <= fit.window, `the last column is inside the window at ${width} px (${fit.lastRight})`);
      if (width === 1920) check(fit.main > 1800, `the content uses the width at 1920 px (${fit.main})`);
    }
    await shot(page, 'overview-1920');
    await page.setViewportSize({ width: 1440, height: 900 });
  });

  // Regression (issue #18, item 4): the charts started empty after a reload. The server keeps
  // the history; a reloaded page draws more points than snapshots it received.
  await step('throughput history survives a reload', async () => {
    await page.waitForFunction(() => Number(document.querySelector('#throughput')?.dataset.points) >= 5);
    await page.reload();
    await page.waitForFunction(() => Number(document.querySelector('#throughput')?.dataset.live) >= 1);
    const drawn = await page.evaluate(() => {
      const chart = document.querySelector('#throughput');
      return { points: Number(chart.dataset.points), live: Number(chart.dataset.live), lines: chart.querySelectorAll('polyline').length };
    });
    check(drawn.points >= drawn.live + 3, `history drawn after the reload (${drawn.points} points, ${drawn.live} live)`);
    check(drawn.lines === 2, 'enqueued and completed lines');
  });

  // Issue #18, item 5: dark mode follows the system setting.
  await step('dark mode follows prefers-color-scheme', async () => {
    const luminance = () => page.evaluate(() => {
      const rgb = (el) => getComputedStyle(el).backgroundColor.match(/\d+/g).slice(0, 3).map(Number);
      const sum = (c) => c[0] + c[1] + c[2];
      return { body: sum(rgb(document.body)), panel: sum(rgb(document.querySelector('.panel'))), text: getComputedStyle(document.body).color };
    });
    await page.emulateMedia({ colorScheme: 'dark' });
    const dark = await luminance();
    check(dark.body < 150 && dark.panel < 200, `dark backgrounds (${JSON.stringify(dark)})`);
    await shot(page, 'overview-dark');
    await page.emulateMedia({ colorScheme: 'light' });
    const light = await luminance();
    check(light.body > 600 && light.panel > 600, `light backgrounds (${JSON.stringify(light)})`);
  });

  // Regression (issue #18, defect 2): `#/` then `#/nonsense` highlighted three nav items
  // (`classList.toggle('active', undefined)` flips instead of removing).
  await step('unknown routes: a not-found view and no nav item highlighted', async () => {
    await page.goto(`${base}/#/`);
    await page.waitForSelector('header nav a.active[data-nav="overview"]');
    await page.evaluate(() => { window.location.hash = '#/nonsense'; });
    await page.waitForSelector('#not-found');
    check(await page.locator('header nav a.active').count() === 0, 'no nav item active on an unknown route');
    await page.evaluate(() => { window.location.hash = '#/dead'; });
    await page.waitForSelector('header nav a.active[data-nav="dead"]');
    check(await page.locator('header nav a.active').count() === 1, 'exactly one nav item active');
    await page.goto(`${base}/#/`);
    await page.waitForSelector('tr[data-queue="billing"] a');
  });

  await step('queue page: counts, configuration, pause and resume', async () => {
    await page.click('tr[data-queue="billing"] a');
    await page.waitForSelector('h1:has-text("billing")');
    check(number(await text(page, '#queue-counts [data-state="dead"] .value')) === fixture.dead_jobs.length, 'billing dead card');
    check((await text(page, '.panel dl.fields')).includes('attempts_max'), 'configuration shown');
    await page.waitForSelector('#queue-jobs tr[data-job]');
    check(await page.locator('#queue-jobs tr[data-job]').count() === fixture.dead_jobs.length, 'billing jobs listed');
    await page.click('#queue-pause');
    await page.waitForSelector('dialog#confirm[open]');
    check((await text(page, '#confirm-title')).includes('Pause billing'), 'pause confirmation');
    await page.click('#confirm-ok');
    await page.waitForSelector('h1 .badge.paused');
    check((await api('GET', '/v1/queues/billing')).paused === true, 'billing paused via the page');
    await page.click('#queue-pause');
    await page.waitForFunction(() => !document.querySelector('h1 .badge.paused'));
    check((await api('GET', '/v1/queues/billing')).paused === false, 'billing resumed via the page');
    // The circuit breaker: shown once configured, forced open and closed from the page.
    check((await text(page, '#queue-breaker')).includes('None'), 'no breaker yet');
    const breaker = { failure_ratio: 0.5, window_ms: 60000, min_attempts: 10, open_ms: 30000, probes: 2 };
    await api('PUT', '/v1/queues/billing', { breaker });
    await page.reload();
    await page.waitForSelector('#queue-breaker [data-breaker-state="closed"]');
    await page.click('#breaker-open');
    await page.waitForSelector('dialog#confirm[open]');
    check((await text(page, '#confirm-title')).includes('breaker of billing'), 'force-open confirmation');
    await page.click('#confirm-ok');
    await page.waitForSelector('#queue-breaker [data-breaker-state="open"]');
    const forced = (await api('GET', '/v1/queues/billing')).breaker;
    check(forced.state === 'open' && forced.forced === true, `breaker forced open via the page (${JSON.stringify(forced)})`);
    await page.click('#breaker-close');
    await page.waitForSelector('#queue-breaker [data-breaker-state="closed"]');
    check((await api('GET', '/v1/queues/billing')).breaker.state === 'closed', 'breaker closed via the page');
    await page.goto(`${base}/#/queues/emails`);
    await page.waitForSelector('h1:has-text("emails")');
    await page.waitForSelector('#queue-jobs tr[data-job]');
    await shot(page, 'queue');
  });

  await step('job search: filters and paging with the cursor', async () => {
    await page.goto(`${base}/#/jobs`);
    await page.selectOption('#filter-queue', 'emails');
    await page.selectOption('#filter-state', 'completed');
    await page.click('form.filters button[type=submit]');
    await page.waitForFunction(() => window.location.hash.includes('state=completed'));
    await page.waitForSelector('#job-results tr[data-job]');
    check(await page.locator('#job-results tr[data-job]').count() === fixture.completed_jobs, 'completed emails found');
    await page.goto(`${base}/#/jobs?queue=emails`);
    await page.waitForSelector('#job-results tr[data-job]');
    const firstPage = await page.locator('#job-results tr[data-job]').count();
    check(firstPage === 50, `a full first page (${firstPage})`);
    const firstId = await page.locator('#job-results tr[data-job]').first().getAttribute('data-job');
    await page.click('#page-next');
    await page.waitForFunction((id) => {
      const row = document.querySelector('#job-results tr[data-job]');
      return row && row.dataset.job !== id;
    }, firstId);
    const secondPage = await page.locator('#job-results tr[data-job]').count();
    check(secondPage === fixture.emails_jobs.length + 60 - 50, `the rest on page two (${secondPage})`);
    await page.click('#page-prev');
    await page.waitForFunction((id) => document.querySelector('#job-results tr[data-job]')?.dataset.job === id, firstId);
    await page.goto(`${base}/#/jobs?tag=welcome`);
    await page.waitForSelector('#job-results tr[data-job]');
    check(await page.locator('#job-results tr[data-job]').count() === fixture.emails_jobs.length, 'tag filter');
    await shot(page, 'jobs');
  });

  await step('job page: timeline, lease, fencing token, steps, payload as sent', async () => {
    await page.goto(`${base}/#/jobs/${fixture.running_job}`);
    await page.waitForSelector('#job-timeline li[data-event="leased"]');
    check(await page.locator('#job-timeline li[data-event="enqueued"]').count() === 1, 'enqueued entry');
    const lease = await text(page, '#job-lease');
    check(lease.includes(fixture.running_worker), 'lease names the worker');
    check(lease.includes(String(fixture.running_token)), 'lease shows the fencing token');
    check((await text(page, '#job-timeline')).includes(`fencing token ${fixture.running_token}`), 'token on the timeline');
    check((await text(page, '#job-progress')).includes('"done": 40'), 'progress shown');
    check((await text(page, '#job-checkpoint')).includes('"page": 7'), 'checkpoint shown');
    const steps = fixture.running_steps;
    check(await page.locator('#job-steps tr[data-step]').count() === steps.length, 'every step listed');
    const fetched = await text(page, `#job-steps tr[data-step="${steps[0]}"]`);
    check(fetched.includes('"rows":120') && fetched.includes('<b>bold</b>'), 'a step result shown as text');
    check(await page.locator('#job-steps b').count() === 0, 'no element was made from a step result');
    const rendered = await text(page, `#job-steps tr[data-step="${steps[1]}"]`);
    check(rendered.includes('…') && rendered.length < 300, 'a long step result is cut');
    check(await page.locator('#job-timeline li[data-event="step_recorded"]').count() === steps.length, 'steps on the timeline');
    check((await text(page, '#job-timeline')).includes(`step ${steps[0]}`), 'a step entry names its step');
    await shot(page, 'job-running');

    await page.goto(`${base}/#/jobs/${fixture.emails_jobs[0]}`);
    await page.waitForSelector('#job-payload');
    const payload = await text(page, '#job-payload');
    check(payload.includes('<img src=x onerror=alert(1)>'), 'markup in a payload is shown as text');
    check(payload.includes('123456789012345678901234567890'), 'a big number is shown exactly');
    check(await page.locator('main img').count() === 0, 'no element was made from the payload');
    check((await text(page, '#job-result')).includes('250 ok'), 'result shown');

    await page.goto(`${base}/#/jobs/${fixture.dead_jobs[1]}`);
    await page.waitForSelector('#job-timeline li[data-event="failed"]');
    check((await text(page, '#job-timeline li[data-event="failed"]')).includes(fixture.dead_error), 'error on the timeline');
    check((await text(page, '#job-attempts')).includes(fixture.dead_error), 'error in the attempts table');
    check(await page.locator('#job-redrive').count() === 1, 'a dead job offers redrive');
    await shot(page, 'job-dead');
  });

  await step('dead letters: select, confirm, redrive; the API agrees', async () => {
    await page.goto(`${base}/#/dead?queue=billing`);
    await page.waitForSelector('#dead-list tr[data-job]');
    check(await page.locator('#dead-list tr[data-job]').count() === fixture.dead_jobs.length, 'every dead job listed');
    const target = fixture.dead_jobs[0];
    await page.check(`input[data-select="${target}"]`);
    check((await text(page, '#redrive-selected')).includes('(1)'), 'one selected');
    await page.click('#redrive-selected');
    await page.waitForSelector('dialog#confirm[open]');
    check((await text(page, '#confirm-title')) === 'Redrive 1 job?', 'the dialog says how many');
    await shot(page, 'dead-confirm');
    await page.click('#confirm-ok');
    await page.waitForSelector('#dead-message .notice.ok');
    check((await text(page, '#dead-message')).includes('Redrove 1 job'), 'the page reports the redrive');
    const job = await api('GET', `/v1/jobs/${target}`);
    check(job.state !== 'dead', `job ${target} left the dead-letter queue (now ${job.state})`);
    await page.waitForFunction((n) => document.querySelectorAll('#dead-list tr[data-job]').length === n, fixture.dead_jobs.length - 1);

    // "All matching" asks first, with the number, and Cancel changes nothing.
    await page.click('#redrive-all');
    await page.waitForSelector('dialog#confirm[open]');
    check((await text(page, '#confirm-title')) === `Redrive ${fixture.dead_jobs.length - 1} jobs?`, 'the count of all matching');
    await page.click('#confirm-cancel');
    await page.waitForSelector('dialog#confirm:not([open])', { state: 'attached' });
    const dead = await api('GET', '/v1/dead?queue=billing');
    check(dead.jobs.length === fixture.dead_jobs.length - 1, 'cancel redrove nothing');
    await shot(page, 'dead');
  });

  await step('workers: who is busy, which leases they hold', async () => {
    // test-worker-1 finished its jobs long ago: it asks once more, so it is idle, not gone.
    await api('POST', '/v1/lease', { queues: ['reports'], worker: fixture.idle_worker });
    await page.goto(`${base}/#/workers`);
    const row = `tr[data-worker="${fixture.running_worker}"]`;
    await page.waitForSelector(row);
    // Regression (issue #18, defect 1): holding a lease is busy, whether or not it polls now.
    await page.waitForSelector(`${row}[data-state="busy"] .badge.running`);
    check((await text(page, row)).includes('reports'), 'its queue');
    await page.waitForSelector(`${row} tr[data-job="${fixture.running_job}"]`);
    check((await text(page, `${row} tr[data-job="${fixture.running_job}"]`)).includes(`token ${fixture.running_token}`), 'its lease and token');
    const idle = `tr[data-worker="${fixture.idle_worker}"]`;
    await page.waitForSelector(`${idle}[data-state="idle"]`);
    check((await text(page, idle)).includes('idle'), 'the other worker is idle');
    check((await text(page, idle)).includes('none'), 'the other worker holds no lease any more');
    await shot(page, 'workers');
  });

  await step('schedules: both rows, next fire in New York and in UTC, pause and resume', async () => {
    const { active, paused, zone, queue } = fixture.schedules;
    await page.click('header nav a[data-nav="schedules"]');
    const row = `tr[data-schedule="${active}"]`;
    const pausedRow = `tr[data-schedule="${paused}"]`;
    await page.waitForSelector(`${row}[data-state="active"]`);
    await page.waitForSelector(`${pausedRow}[data-state="paused"] .badge.paused`);
    check(await page.locator('header nav a.active[data-nav="schedules"]').count() === 1, 'the nav item is active');
    const rowText = await text(page, row);
    check(rowText.includes('30 2 * * *') && rowText.includes(zone), `the cron rule with its zone (${rowText})`);
    check(rowText.includes('run_once') && rowText.includes('allow'), 'misfire and overlap policies');
    check(await page.locator(`${row} a[href="#/queues/${queue}"]`).count() === 1, 'a link to its queue');
    check(await page.locator(`${row} a[href="#/schedules/${active}"]`).count() === 1, 'a link to its page');
    check((await text(page, `${row} td.last`)).includes('never'), 'no tick yet');
    const pausedText = await text(page, pausedRow);
    check(pausedText.includes('every 3,600 s') && pausedText.includes('skip'), `the interval rule (${pausedText})`);

    // The next fire, as the API computes it: on New York's wall clock and in UTC, each labelled.
    const s = await api('GET', `/v1/schedules/${active}`);
    const local = await text(page, `${row} td.next .fire-local`);
    const utc = await text(page, `${row} td.next .fire-utc`);
    check(local.includes(localShown(s.next[0].local)) && local.includes(zone), `next fire in ${zone}: ${local} (API ${s.next[0].local})`);
    check(/ -0[45]:00 /.test(local), `a New York offset (${local})`);
    check(utc.includes(utcShown(s.next[0].at)) && utc.includes('UTC'), `next fire in UTC: ${utc} (API ${s.next[0].at})`);
    check(local.slice(0, 19) !== utc.slice(0, 19), 'the two clocks differ');
    await shot(page, 'schedules');

    // Resume the paused one from its row and pause it again: the badge follows, the API agrees.
    await confirmed(page, `${pausedRow} button[data-action="resume"]`, `Resume schedule ${paused}?`);
    await page.waitForSelector(`${pausedRow}[data-state="active"]`);
    check((await text(page, '#schedules-message')).includes('active again'), 'the page reports the resume');
    check((await api('GET', `/v1/schedules/${paused}`)).paused === false, `${paused} resumed via the page`);
    await confirmed(page, `${pausedRow} button[data-action="pause"]`, `Pause schedule ${paused}?`);
    await page.waitForSelector(`${pausedRow}[data-state="paused"] .badge.paused`);
    check((await api('GET', `/v1/schedules/${paused}`)).paused === true, `${paused} paused again via the page`);
  });

  await step('schedule page: next 10 fire times, payload, run now, pause and resume', async () => {
    const { active, zone, queue } = fixture.schedules;
    await page.click(`tr[data-schedule="${active}"] a[href="#/schedules/${active}"]`);
    await page.waitForSelector(`h1:has-text("${active}")`);
    await page.waitForSelector('#schedule-next tbody tr');
    const s = await api('GET', `/v1/schedules/${active}?next=10`);
    const rows = await page.locator('#schedule-next tbody tr').evaluateAll((trs) => trs.map((tr) => ({
      local: tr.querySelector('.fire-local').textContent, utc: tr.querySelector('.fire-utc').textContent,
    })));
    check(rows.length === 10, `ten fire times (${rows.length})`);
    rows.forEach((r, i) => {
      check(r.local === localShown(s.next[i].local), `fire ${i + 1} in ${zone}: ${r.local} (API ${s.next[i].local})`);
      check(r.utc === utcShown(s.next[i].at), `fire ${i + 1} in UTC: ${r.utc} (API ${s.next[i].at})`);
    });
    const heads = await text(page, '#schedule-next thead');
    check(heads.includes(`Local time (${zone})`) && heads.includes('UTC'), `labelled columns (${heads})`);
    check((await text(page, '#schedule-payload')).includes('"report": "daily"'), 'the job template payload');
    check((await text(page, '#schedule-fields')).includes('fixed-time'), 'the DST kind of the rule');
    check((await text(page, '#schedule-last')).includes('not enqueued'), 'no tick yet');

    await confirmed(page, 'button[data-action="trigger"]', `Run ${active} now?`);
    const link = await page.waitForSelector('#schedule-message .notice.ok a[href^="#/jobs/"]');
    const id = (await link.getAttribute('href')).replace('#/jobs/', '');
    const job = await api('GET', `/v1/jobs/${id}`);
    check(job.queue === queue && job.payload.report === 'daily', `job ${id} is the schedule's (${JSON.stringify(job)})`);
    await page.waitForFunction((want) => document.querySelector('#schedule-last')?.textContent.includes(want), `job ${id}`);
    await shot(page, 'schedule');

    await confirmed(page, 'button[data-action="pause"]', `Pause schedule ${active}?`);
    await page.waitForSelector('h1 .badge.paused');
    check((await api('GET', `/v1/schedules/${active}`)).paused === true, `${active} paused via the page`);
    await confirmed(page, 'button[data-action="resume"]', `Resume schedule ${active}?`);
    await page.waitForFunction(() => !document.querySelector('h1 .badge.paused'));
    check((await api('GET', `/v1/schedules/${active}`)).paused === false, `${active} resumed via the page`);

    // The list's last tick links the job it enqueued.
    await page.goto(`${base}/#/schedules`);
    await page.waitForSelector(`tr[data-schedule="${active}"] td.last a[href="#/jobs/${id}"]`);
    await page.click(`tr[data-schedule="${active}"] td.last a[href="#/jobs/${id}"]`);
    await page.waitForSelector('#job-payload');
    check((await text(page, '#job-payload')).includes('"report": "daily"'), 'the enqueued job page');
  });

  check(errors.length === 0, `no errors in the page:\n  ${errors.join('\n  ')}`);
} catch (e) {
  failed = true;
  console.error(`FAIL ${e.message}`);
  if (errors.length) console.error(`page errors:\n  ${errors.join('\n  ')}`);
  try {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true });
    console.error(`  screenshot failure.png in ${shots}`);
  } catch {
    // Nothing more to show.
  }
} finally {
  await close();
}
process.exit(failed ? 1 : 0);
