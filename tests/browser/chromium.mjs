// What the browser scripts share: Debian's chromium (never a downloaded browser) in a fresh
// profile, and the step reporter.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Launches /usr/bin/chromium headless with a fresh profile; `close()` ends it and removes the profile. */
export async function launch({ args = [], ...options } = {}) {
  const profile = await mkdtemp(join(tmpdir(), 'dray-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
      ...args,
    ],
    timezoneId: 'UTC',
    ...options,
  });
  const close = async () => {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  };
  return { context, close };
}

/** Runs one named check and reports it with its time. */
export async function step(name, body) {
  const started = Date.now();
  await body();
  console.log(`ok   ${name} (${Date.now() - started} ms)`);
}
