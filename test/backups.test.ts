import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BackupListView, BackupView } from '../src/api/backups.js';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { postmasterPid, processesUsing, queryUri, TestCellar, eventually } from './helpers/cellar.js';

/** Backups, continuous archiving and point-in-time restore, end to end against real servers. */



const ids = async (uri: string): Promise<number[]> => (await queryUri<{ id: number }>(uri, 'select id from t order by id')).map((row) => row.id);
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, index) => from + index);

describe('backups and point-in-time restore', () => {
  let cellar: TestCellar;
  let app: ClusterView;
  let uri: string;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_BACKUP_INTERVAL_MS: String(24 * 3_600_000) });
    await cellar.start();
    // 2 GB: the two restores inherit it, and the cell's allocations stay well under a test machine's real free disk less the host reserve (docs/STORAGE.md "Host disk reserve").
    app = await cellar.cliJson<ClusterView>(['clusters', 'create', 'app', '--storage-gb', '2', '--wait']);
    uri = app.uri as string;
    await queryUri(uri, 'create table t (id int primary key, at timestamptz not null default clock_timestamp())');
  });

  after(async () => {
    await cellar.destroy();
  });

  test('a new cluster gets its first backup at once, taken from the replica and verified by a restore', async () => {
    const list = await eventually('the first backup to be verified', async () => {
      const found = await cellar.read<BackupListView>('/v1/clusters/app/backups');
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
    await queryUri(uri, 'insert into t (id) select generate_series(1, 10)');
    const backup = await cellar.cliJson<BackupView>(['backups', 'create', 'app', '--wait']);
    assert.equal(backup.verified, true, backup.verifyDetail ?? '');
    await queryUri(uri, 'insert into t (id) select generate_series(11, 20)');
    const [mark] = await queryUri<{ at: Date }>(uri, 'select clock_timestamp() as at');
    // A Date holds milliseconds: one past the truncated mark is after the commit of 11-20. Rows
    // 21-30 go in once the server's clock has passed it.
    const target = new Date((mark?.at as Date).getTime() + 1);
    await eventually('the server clock to pass the restore target', async () => {
      const [now] = await queryUri<{ past: boolean }>(uri, 'select clock_timestamp() > $1::timestamptz as past', [target.toISOString()]);
      return now?.past === true ? true : undefined;
    }, 10_000, 1);
    await queryUri(uri, 'insert into t (id) select generate_series(21, 30)');
    const restored = await cellar.cliJson<ClusterView>(['backups', 'restore', 'app', '--to', 'between', '--time', target.toISOString(), '--wait']);
    assert.equal(restored.state, 'running');
    assert.deepEqual(await ids(restored.uri as string), range(1, 20));
    assert.ok(restored.instances.every((instance) => instance.state === 'running'), 'the restored cluster has its replica too');
  });

  test('failover, more writes, then restore to latest: the rows from both timelines are there', async () => {
    const before = await cellar.cliJson<ClusterView>(['clusters', 'show', 'app']);
    const oldPrimary = before.instances.find((instance) => instance.role === 'primary') as InstanceView;
    process.kill(await postmasterPid(cellar.dataDir, oldPrimary.id), 'SIGKILL');
    await eventually('the failover', async () => {
      const cluster = await cellar.cluster('app');
      return cluster.state === 'running' && cluster.instances.find((instance) => instance.role === 'primary')?.id !== oldPrimary.id ? cluster : undefined;
    }, 60_000, 200);
    await queryUri(uri, 'insert into t (id) select generate_series(31, 40)');
    const restored = await cellar.cliJson<ClusterView>(['backups', 'restore', 'app', '--to', 'latest', '--wait']);
    assert.deepEqual(await ids(restored.uri as string), range(1, 40));
  });

  test('a damaged backup file: verification marks the backup failed with a clear reason, and restore refuses it', async () => {
    const fragile = await cellar.cliJson<ClusterView>(['clusters', 'create', 'fragile', '--replicas', '0', '--wait']);
    const first = await eventually('its first backup verified', async () => {
      const list = await cellar.read<BackupListView>('/v1/clusters/fragile/backups');
      return list.backups.find((backup) => backup.verified === true);
    }, 120_000, 500);
    const backupDir = await backupDirectory(cellar, fragile.id, first.id);
    // Flip bytes in the middle of the catalogue's biggest file: its checksum no longer matches the manifest.
    const victim = join(backupDir, 'global', '1260');
    const bytes = await readFile(victim);
    bytes.fill(0x5a, 0, Math.min(bytes.length, 512));
    await writeFile(victim, bytes);
    const checked = await cellar.cliJson<BackupView>(['backups', 'verify', first.id, '--wait']).catch((error: Error) => error);
    const after = await cellar.cliJson<BackupListView>(['backups', 'list', 'fragile']);
    const damaged = after.backups.find((backup) => backup.id === first.id) as BackupView;
    assert.ok(checked instanceof Error, 'verify --wait exits non-zero for a failed verification');
    assert.equal(damaged.verified, false);
    assert.match(damaged.verifyDetail ?? '', /^pg_verifybackup: checksum mismatch for file "global\/1260"/);
    const refused = await cellar.api<{ error: { code: string; message: string } }>('POST', '/v1/clusters/fragile/restore', { to: 'from-damaged' });
    assert.equal(refused.status, 409);
    assert.match(refused.body.error.message, new RegExp(`backup ${first.id} failed verification .*is never restored`));
    const made = await cellar.storeQuery<{ n: number }>(`select count(*)::int as n from clusters where name = 'from-damaged'`);
    assert.equal(made[0]?.n, 0, 'no half-made cluster');
  });

  test('a restore target outside the window is refused with the window in the message', async () => {
    const early = await cellar.api<{ error: { field: string; message: string } }>('POST', '/v1/clusters/app/restore', { to: 'early', time: '2001-01-01T00:00:00Z' });
    assert.deepEqual([early.status, early.body.error.field], [400, 'time']);
    assert.match(early.body.error.message, /time 2001-01-01T00:00:00Z is outside the restore window: cluster "app" its restore window is \d{4}-.* to now/);
    const future = await cellar.api<{ error: { field: string } }>('POST', '/v1/clusters/app/restore', { to: 'future', time: new Date(Date.now() + 3_600_000).toISOString() });
    assert.deepEqual([future.status, future.body.error.field], [400, 'time']);
    const badTime = await cellar.api<{ error: { field: string; message: string } }>('POST', '/v1/clusters/app/restore', { to: 'bad', time: 'yesterday' });
    assert.deepEqual([badTime.status, badTime.body.error.field], [400, 'time']);
    assert.match(badTime.body.error.message, /ISO 8601/);
    const both = await cellar.api<{ error: { field: string } }>('POST', '/v1/clusters/app/restore', { to: 'both', time: new Date().toISOString(), lsn: '0/3000000' });
    assert.equal(both.status, 400);
    const taken = await cellar.api<{ error: { code: string } }>('POST', '/v1/clusters/app/restore', { to: 'app' });
    assert.equal(taken.body.error.code, 'CELLAR_E_NAME_TAKEN');
  });
});

/** Where a committed base backup lives: the backup store is $CELLAR_HOME/backups, or under the data dir. */
async function backupDirectory(cellar: TestCellar, clusterId: string, backupId: string): Promise<string> {
  for (const root of [join(cellar.home, 'backups'), join(cellar.dataDir, 'backups')]) {
    const dir = join(root, clusterId, 'base', backupId);
    if (await stat(dir).then(() => true, () => false)) return dir;
  }
  throw new Error(`backup ${backupId} not found in the backup store`);
}

describe('backup bandwidth cap', () => {
  const rateBytesPerSecond = 20 * 1024 * 1024;
  const fillerRows = 70_000;
  let cellar: TestCellar;

  before(async () => {
    cellar = await TestCellar.create({ CELLAR_BACKUP_MAX_RATE: String(rateBytesPerSecond) });
    await cellar.start();
  });

  after(async () => {
    await cellar.destroy();
  });

  test('a backup is taken with the cap handed to pg_basebackup (--max-rate); its rate is reported, not asserted', async (t) => {
    const big = await cellar.cliJson<ClusterView>(['clusters', 'create', 'big', '--replicas', '0', '--wait']);
    // About 60 MB: at the cap the copy runs for seconds, long enough to see its command line.
    await queryUri(big.uri as string, `create table filler as select g as id, repeat(md5(g::text), 28) as pad from generate_series(1, ${fillerRows}) g`);
    const backup = await cellar.cliJson<BackupView>(['backups', 'create', 'big']);
    const command = await eventually('pg_basebackup of this backup to run', async () => {
      for (const pid of await processesUsing(backup.id)) {
        const args = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
        if (args.some((arg) => arg.endsWith('/pg_basebackup'))) return args;
      }
      return undefined;
    }, 120_000, 20);
    assert.ok(command.includes(`--max-rate=${rateBytesPerSecond / 1024}k`), `pg_basebackup carries the cap: ${command.join(' ')}`);
    const events = await eventually('the backup to be taken', async () => {
      const shown = await cellar.cluster('big');
      const mine = shown.events.filter((event) => event.entity === backup.id);
      return mine.some((event) => event.to === 'verify') ? mine : undefined;
    }, 120_000, 250);
    assert.ok(events.some((event) => event.to === 'take'));
    const taken = (await cellar.cliJson<BackupListView>(['backups', 'list', 'big'])).backups.find((item) => item.id === backup.id) as BackupView;
    // pg_basebackup's own run time, as the data plane measured it; bench/backup measures the cap.
    const seconds = taken.takeSeconds as number;
    t.diagnostic(`backup ${((taken.bytes as number) / 1024 / 1024).toFixed(0)} MB in ${seconds.toFixed(2)} s = ${((taken.bytes as number) / seconds / 1024 / 1024).toFixed(2)} MB/s (cap ${rateBytesPerSecond / 1024 / 1024} MB/s)`);
  });
});
