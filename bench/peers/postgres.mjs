// What both PostgreSQL peers need besides their own library: a fail-fast connection check that
// also reads the durability settings to print beside a figure, and one-off queries.

import pg from 'pg';
import { DriverError, within } from './common.mjs';

const CONNECT_TIMEOUT_MS = 15000;

/** Runs `fn` with a fresh client, closed afterwards; connection failures become DriverErrors. */
export async function withClient(url, fn) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  client.on('error', () => {});
  try {
    await within(CONNECT_TIMEOUT_MS, `connecting to PostgreSQL at ${redact(url)}`, client.connect());
  } catch (error) {
    await client.end().catch(() => {});
    if (error instanceof DriverError) throw error;
    throw new DriverError(`cannot connect to PostgreSQL at ${redact(url)}: ${error.message}`);
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Server version and the settings that decide what a commit costs. */
export async function probe(url) {
  return withClient(url, async (client) => {
    const setting = async (name) => (await client.query(`show ${name}`)).rows[0][name];
    const version = await setting('server_version');
    const synchronousCommit = await setting('synchronous_commit');
    const fsync = await setting('fsync');
    return {
      postgres_version: version,
      durability: `synchronous_commit=${synchronousCommit} fsync=${fsync}`,
      postgres_synchronous_commit: synchronousCommit,
      postgres_fsync: fsync,
      postgres_shared_buffers: await setting('shared_buffers'),
      postgres_max_connections: await setting('max_connections'),
    };
  });
}

/** The URL without its password, for messages. */
export function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable URL>';
  }
}
