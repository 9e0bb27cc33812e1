import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import pg from 'pg';
import { loadConfig } from '../../src/config.js';
import { embeddedStorePaths, ensureEmbeddedStore, stopEmbeddedStore, storeDatabase } from '../../src/store/embedded.js';
import { resolveRunAs } from '../../src/postgres/osuser.js';
import { writeConfText } from '../../src/postgres/server.js';
import { escapeIdentifier } from '../../src/postgres/sql.js';
import { seedDataDir } from './prepared.js';

/**
 * One store server for a whole test run, started by `test/run.ts` (what `npm test` runs): a
 * Postgres made the way `cellar up` makes its embedded store, from the run's prepared one, whose
 * migrated store database is kept as a template. Each test Cellar gets a database of its own,
 * copied from that template (`CREATE DATABASE … TEMPLATE`), and reaches it through
 * CELLAR_STORE_URL: no copy of a whole data directory and no postmaster of its own per Cellar. A
 * Cellar's rows, LISTEN channels and advisory locks are its database's alone.
 *
 * A test about the embedded store itself (its files, its restart, `cellar down` stopping it) asks
 * for one (`TestCellar.create(env, { store: 'embedded' })`); so does every Cellar when a test file
 * runs on its own, without the runner.
 */

/** The shared server's admin URL (its `postgres` database), set by the runner for every test process. */
export const sharedStoreVariable = 'CELLAR_TEST_SHARED_STORE';
const templateDatabase = 'cellar_template';
/** Test Cellars at once (four files, a few each) times the connections each opens (pool, proxy, listeners). */
const sharedConnectionsMax = 400;
const adminConnectMs = 10_000;

export interface SharedStore {
  readonly adminUrl: string;
  stop(): Promise<void>;
}

/** Starts the run's shared store server under `root` (which the caller removes). */
export async function startSharedStore(root: string): Promise<SharedStore> {
  const dataDir = join(root, 'data');
  await seedDataDir(dataDir, { store: true, templates: false });
  // More connections than one Cellar's store allows, set before its first start: postgresql.auto.conf is read after cellar.conf.
  await writeConfText(embeddedStorePaths(dataDir).pgdata, 'postgresql.auto.conf', `max_connections = ${sharedConnectionsMax}\n`, await resolveRunAs());
  const config = loadConfig({ CELLAR_HOME: join(root, 'home'), CELLAR_DATA: dataDir });
  const adminUrl = withDatabase(await ensureEmbeddedStore(config), 'postgres');
  try {
    await withAdmin(adminUrl, async (client) => {
      await client.query(`alter database ${escapeIdentifier(storeDatabase)} rename to ${escapeIdentifier(templateDatabase)}`);
      await client.query(`alter database ${escapeIdentifier(templateDatabase)} with is_template true allow_connections false`);
    });
  } catch (error) {
    await stopEmbeddedStore(dataDir).catch(() => false);
    throw error;
  }
  return { adminUrl, stop: async () => void (await stopEmbeddedStore(dataDir)) };
}

/**
 * A new store database for one test Cellar on the run's shared server, as a CELLAR_STORE_URL;
 * null when this process runs without the runner (the Cellar then makes its embedded store).
 */
export async function createStoreDatabase(): Promise<string | null> {
  const adminUrl = process.env[sharedStoreVariable];
  if (adminUrl === undefined || adminUrl === '') return null;
  const name = `cellar_${randomBytes(8).toString('hex')}`;
  await withAdmin(adminUrl, (client) => client.query(`create database ${escapeIdentifier(name)} template ${escapeIdentifier(templateDatabase)}`));
  return withDatabase(adminUrl, name);
}

/** Drops a database `createStoreDatabase` made, ending any session still on it. */
export async function dropStoreDatabase(url: string): Promise<void> {
  const adminUrl = process.env[sharedStoreVariable];
  if (adminUrl === undefined || adminUrl === '') throw new Error(`${sharedStoreVariable} is not set: no shared store made ${url}`);
  const name = new URL(url).pathname.slice(1);
  if (!/^cellar_[0-9a-f]{16}$/.test(name)) throw new Error(`${name} is not a test Cellar's database`);
  await withAdmin(adminUrl, (client) => client.query(`drop database if exists ${escapeIdentifier(name)} with (force)`));
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

async function withAdmin<T>(adminUrl: string, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: adminConnectMs });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}
