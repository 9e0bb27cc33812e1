import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { Binaries } from '../postgres/binaries.js';
import { ensureDirectory, ensureDirectoryTree } from '../postgres/files.js';
import { resolveRunAs, selfRunAs } from '../postgres/osuser.js';
import { dataDirMode, prepareDataDir, resolveDataDir } from '../postgres/paths.js';
import { cellarConfFile, initdb, localHbaLine, serverPid, startDetached, stopServer, writeAuthFiles, writeConf } from '../postgres/server.js';
import { escapeIdentifier, escapeLiteral, localSuperuser, withClient } from '../postgres/sql.js';
import { buildThenRename, exists } from '../postgres/build.js';
import { freePort } from '../lib/net.js';

/**
 * The embedded cell store: a Postgres server of Cellar's own, made on the first `cellar up` under
 * the data directory and reused after. Its port and password live in `$CELLAR_HOME/store.json`.
 */

export const storeDatabase = 'cellar';
const storeStateFile = 'store.json';
const storeConnectionsMax = 100;

interface StoreState {
  readonly port: number;
  readonly password: string;
}

export interface EmbeddedStorePaths {
  readonly root: string;
  readonly pgdata: string;
  readonly run: string;
  readonly log: string;
}

export function embeddedStorePaths(dataDir: string): EmbeddedStorePaths {
  const root = join(dataDir, 'store');
  return { root, pgdata: join(root, 'pgdata'), run: join(root, 'run'), log: join(root, 'postgres.log') };
}

async function loadOrCreateState(home: string): Promise<StoreState> {
  const path = join(home, storeStateFile);
  try {
    const state = JSON.parse(await readFile(path, 'utf8')) as StoreState;
    if (Number.isInteger(state.port) && typeof state.password === 'string') return state;
  } catch {
    // First start: fall through and make one.
  }
  const state = { port: await freePort(), password: randomBytes(24).toString('base64url') };
  await writeFile(path, `${JSON.stringify(state)}\n`, { mode: 0o600 });
  return state;
}

export function storeUrlFor(state: StoreState): string {
  return `postgresql://postgres:${encodeURIComponent(state.password)}@127.0.0.1:${state.port}/${storeDatabase}?sslmode=disable`;
}

/** The embedded store's URL from its state file, without starting it (the proxy must not). */
export async function embeddedStoreUrl(home: string): Promise<string | null> {
  try {
    const state = JSON.parse(await readFile(join(home, storeStateFile), 'utf8')) as StoreState;
    return storeUrlFor(state);
  } catch {
    return null;
  }
}

/** No trust: Cellar's own OS user on the socket (peer, mapped), and the control plane's password over TCP. */
const storeHba = [
  '# Written by Cellar; rewritten on every start. Do not edit.',
  localHbaLine,
  'host    all          postgres             127.0.0.1/32  scram-sha-256',
  '',
].join('\n');

/** Makes (first time) and starts (if stopped) the embedded store; returns its connection URL. */
export async function ensureEmbeddedStore(config: Config): Promise<string> {
  await ensureDirectoryTree(config.home, 0o700, selfRunAs());
  const runAs = await resolveRunAs();
  const binaries = await Binaries.discover({ pgBin: config.pgBin });
  const storeVersion = Math.max(...binaries.versions());
  const binDir = binaries.binFor(storeVersion);
  const dataDir = resolveDataDir(config, runAs);
  await prepareDataDir(dataDir);
  const paths = embeddedStorePaths(dataDir);
  const state = await loadOrCreateState(config.home);
  await ensureDirectory(paths.root, dataDirMode, selfRunAs());
  await ensureDirectory(paths.run, 0o700, runAs);
  if (!(await exists(paths.pgdata))) {
    await buildThenRename(paths.pgdata, runAs, (tmp) => initdb({ binDir, pgdata: tmp, runAs }));
  }
  await writeAuthFiles(paths.pgdata, storeHba, runAs);
  await writeConf(
    paths.pgdata,
    cellarConfFile,
    {
      port: String(state.port),
      listen_addresses: '127.0.0.1',
      unix_socket_directories: paths.run,
      max_connections: String(storeConnectionsMax),
      ssl: 'off',
      password_encryption: 'scram-sha-256',
      // After a crash, one syncfs instead of an fsync per file: the store is back sooner (PG 14+).
      ...(storeVersion >= 14 ? { recovery_init_sync_method: 'syncfs' } : {}),
    },
    runAs,
  );
  await startDetached(binDir, paths.pgdata, paths.log, runAs);
  await withClient(localSuperuser(paths.run, state.port), async (client) => {
    await client.query(`alter role postgres password ${escapeLiteral(state.password)}`);
    const found = await client.query('select 1 from pg_database where datname = $1', [storeDatabase]);
    if (found.rowCount === 0) await client.query(`create database ${escapeIdentifier(storeDatabase)}`);
  });
  return storeUrlFor(state);
}

/** Stops the embedded store if it runs; returns whether it did. */
export async function stopEmbeddedStore(dataDir: string): Promise<boolean> {
  const pgdata = embeddedStorePaths(dataDir).pgdata;
  if ((await serverPid(pgdata)) === undefined) return false;
  await stopServer(pgdata);
  return true;
}
