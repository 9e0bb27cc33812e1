import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import type { BackupListView, BackupView } from '../src/api/backups.js';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { TestCellar, eventually } from './helpers/cellar.js';

/** Backups, continuous archiving and point-in-time restore, end to end against real servers. */

async function query<T extends pg.QueryResultRow>(uri: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 15_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function postmasterPid(dataDir: string, instanceId: string): Promise<number> {
  const text = await readFile(join(dataDir, 'instances', instanceId, 'pgdata', 'postmaster.pid'), 'utf8');
  return Number(text.split('\n')[0]);
}

const ids = async (uri: string): Promise<number[]> => (await query<{ id: number }>(uri, 'select id from t order by id')).map((row) => row.id);
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, index) => from + index);

describe('backups and point-in-time restore', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let uri: string;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_BACKUP_INTERVAL_MS: String(24 * 3_600_000) });
    await cellar.start();
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--wait']);
    uri = app.uri as string;
    await query(uri, 'create table t (id int primary key, at timestamptz not null default clock_timestamp())');
  });

  after(async () => {
    await cellar.destroy();
  });

  test('a new cluster gets its first backup at once, taken from the replica and verified by a restore', async () => {
    const list = await eventually('the first backup to be verified', async () => {
      const found = await cellar.cliJson<BackupListView>(['backups', 'list', 'app']);
      return found.backups.some((backup) => backup.verified !== null) ? found : undefined;
    }, 120_000, 500);
    const first = list.backups[0] as BackupView;
    assert.equal(first.reason, 'scheduled');
    assert.equal(first.verified, true, first.verifyDetail ?? first.error ?? '');
    assert.match(first.verifyDetail ?? '', /restored and queried/);
    const replica = app.instances.find((instance) => instance.role === 'replica') as InstanceView;
    assert.equal(first.sourceInstance, replica.id, 'taken from the healthy replica');
    assert.ok(list.window.earliest !== null);
  });

  test('rows, a backup, more rows; restore to a time between: exactly the earlier rows', async () => {
    await query(uri, 'insert into t (id) select generate_series(1, 10)');
    const backup = await cellar.cliJson<BackupView>(['backups', 'create', 'app', '--wait']);
    assert.equal(backup.verified, true, backup.verifyDetail ?? '');
    await query(uri, 'insert into t (id) select generate_series(11, 20)');
    const [mark] = await query<{ at: Date }>(uri, 'select clock_timestamp() as at');
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    await query(uri, 'insert into t (id) select generate_series(21, 30)');
    const restored = await cellar.cliJson<ClusterView>(['backups', 'restore', 'app', '--to', 'between', '--time', (mark?.at as Date).toISOString(), '--wait']);
    assert.equal(restored.state, 'running');
    assert.deepEqual(await ids(restored.uri as string), range(1, 20));
    assert.ok(restored.instances.every((instance) => instance.state === 'running'), 'the restored cluster has its replica too');
  });

  test('failover, more writes, then restore to latest: the rows from both timelines are there', async () => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = before.instances.find((instance) => instance.role === 'primary') as InstanceView;
    process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
    await eventually('the failover', async () => {
      const cluster = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
      return cluster.state === 'running' && cluster.instances.find((instance) => instance.role === 'primary')?.id !== oldPrimary.id ? cluster : undefined;
    }, 60_000, 200);
    await query(uri, 'insert into t (id) select generate_series(31, 40)');
    const restored = await cellar.cliJson<ClusterView>(['backups', 'restore', 'app', '--to', 'latest', '--wait']);
    assert.deepEqual(await ids(restored.uri as string), range(1, 40));
  });
});
