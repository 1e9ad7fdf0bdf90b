// The browser defences of issue #10, in Debian's chromium: what a web page on another origin
// can try against a Dray it can reach (the operator's localhost), and the dashboard's own
// sign-in and actions, which must keep working. Run by crates/dray/tests/dashboard.rs.
//
//   node tests/browser/defences.mjs <open-url> <guarded-url> <admin-token>
//
// <open-url> serves with `--auth none` (only the browser defences stand in the way);
// <guarded-url> with `--auth required` and <admin-token>. Exits 0 when every check passed.

import { createServer } from 'node:http';
import { launch, step } from './chromium.mjs';

const [open, guarded, token] = process.argv.slice(2);
if (!open || !guarded || !token) {
  console.error('usage: node defences.mjs <open-url> <guarded-url> <admin-token>');
  process.exit(2);
}
const WAIT_MS = 15_000;
// The attacker's page: another origin on loopback too (another port), so that the browser's own
// private-network rules do not stop the requests before Dray's defences are tried.
const attacker = createServer((_, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><title>cats</title><p>cute cats</p>');
});
await new Promise((resolve) => attacker.listen(0, '127.0.0.1', resolve));
const ATTACKER = `http://127.0.0.1:${attacker.address().port}`;
const openPort = new URL(open).port;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** The API as the test sees it (Node's fetch: no browser rules). */
async function api(base, method, path, body, auth) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (auth) headers.authorization = `Bearer ${auth}`;
  const response = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}


const { context, close } = await launch({
  args: [
    // DNS rebinding, without a DNS server: a name of the attacker's that resolves to loopback.
    '--host-resolver-rules=MAP rebind.test 127.0.0.1',
  ],
});
let failed = false;
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await api(open, 'PUT', '/v1/queues/victim', {});

  await step('a CORS-simple fetch (text/plain) from another origin writes nothing', async () => {
    await page.goto(`${ATTACKER}/`);
    const outcome = await page.evaluate(async (url) => {
      try {
        const r = await fetch(`${url}/v1/jobs`, {
          method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' },
          body: JSON.stringify({ queue: 'stolen', payload: 1 }),
        });
        return `sent (${r.type})`;
      } catch (e) {
        return `blocked: ${e.message}`;
      }
    }, open);
    check(outcome === 'sent (opaque)', `the browser sent it; only Dray can refuse it (${outcome})`);
    check((await api(open, 'GET', '/v1/queues/stolen')).status === 404, 'no job was enqueued (queue "stolen" does not exist)');
  });

  await step('a JSON fetch from another origin needs a preflight that is never granted', async () => {
    const outcome = await page.evaluate(async (url) => {
      try {
        await fetch(`${url}/v1/queues/victim/pause`, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}',
        });
        return 'answered';
      } catch (e) {
        return `blocked: ${e.message}`;
      }
    }, open);
    check(outcome.startsWith('blocked'), `the browser blocked the request (${outcome})`);
    check((await api(open, 'GET', '/v1/queues/victim')).body.paused === false, 'the queue is not paused');
  });

  await step('an HTML form post from another origin is refused', async () => {
    await page.goto(`${ATTACKER}/`);
    const navigation = page.waitForNavigation();
    await page.evaluate((url) => {
      const form = document.createElement('form');
      form.method = 'POST';
      form.action = `${url}/v1/queues/victim/pause`;
      const input = document.createElement('input');
      input.name = 'x';
      input.value = '1';
      form.append(input);
      document.body.append(form);
      form.submit();
    }, open);
    const response = await navigation;
    const status = response ? response.status() : 0;
    check(status === 403 || status === 415, `the form post got 403 or 415 (got ${status})`);
    check((await api(open, 'GET', '/v1/queues/victim')).body.paused === false, 'the queue is not paused');
  });

  await step('a rebound host name (DNS rebinding) is refused with 421', async () => {
    for (const path of ['/v1/queues', '/']) {
      const response = await page.goto(`http://rebind.test:${openPort}${path}`);
      check(response.status() === 421, `GET ${path} through rebind.test got 421 (got ${response.status()})`);
      check(!(await page.content()).includes('victim'), `nothing of the server's data reached the page (${path})`);
    }
  });

  await step('the dashboard of a guarded server signs in with a token and acts', async () => {
    await api(guarded, 'PUT', '/v1/queues/billing', {}, token);
    await page.goto(`${guarded}/`);
    await page.waitForSelector('form#login');
    await page.fill('#token', 'dray_not_a_real_token');
    await page.click('form#login button[type=submit]');
    await page.waitForSelector('.notice.bad');
    await page.fill('#token', token);
    await page.click('form#login button[type=submit]');
    await page.waitForSelector('tr[data-queue="billing"]');
    const cookies = await context.cookies(guarded);
    const session = cookies.find((c) => c.httpOnly);
    check(session && session.sameSite === 'Strict', `an HttpOnly, SameSite=Strict session cookie (${JSON.stringify(cookies)})`);
    await page.goto(`${guarded}/#/queues/billing`);
    await page.click('#queue-pause');
    await page.waitForSelector('dialog#confirm[open]');
    await page.click('#confirm-ok');
    await page.waitForFunction(() => document.querySelector('#queue-pause')?.textContent === 'Resume');
    const queue = await api(guarded, 'GET', '/v1/queues/billing', undefined, token);
    check(queue.body.paused === true, 'the pause from the dashboard reached the server');
    // The session cookie is not a credential for another origin's requests.
    await page.goto(`${ATTACKER}/`);
    const status = await page.evaluate(async (url) => {
      try {
        const r = await fetch(`${url}/v1/queues`, { credentials: 'include' });
        return r.status;
      } catch (e) {
        return `blocked: ${e.message}`;
      }
    }, guarded);
    check(status !== 200, `a foreign page cannot read with the operator's session (${status})`);
  });
} catch (e) {
  failed = true;
  console.error(`FAIL ${e.message}`);
} finally {
  await close();
  attacker.close();
}
process.exit(failed ? 1 : 0);
