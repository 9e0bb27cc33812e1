import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { BackupView, DeletedClusterListView } from '../src/api/backups.js';
import { failureTextMax } from '../src/api/failure.js';
import type { ClusterView } from '../src/api/view.js';
import { lsnToBigInt, walSegmentEnd } from '../src/lib/lsn.js';
import { clusterUserName, lookupUser } from '../src/postgres/osuser.js';
import { TestCellar, eventually, queryUri } from './helpers/cellar.js';

/**
 * A deleted cluster's backups, end to end against real servers: kept and listed after the
 * delete, restorable by id into a new cluster (its rows there), private to the org, refused with
 * the field and the window for a bad target, then purged with their WAL after the retention.
 */

type ErrorBody = { error: { code: string; message: string; field?: string } };

const ids = async (uri: string): Promise<number[]> => (await queryUri<{ id: number }>(uri, 'select id from t order by id')).map((row) => row.id);
const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, index) => from + index);

/** The cluster's area in the backup store: $CELLAR_HOME/backups, or under the data dir. */
async function backupArea(cellar: TestCellar, clusterId: string): Promise<string | null> {
  for (const root of [join(cellar.home, 'backups'), join(cellar.dataDir, 'backups')]) {
    const dir = join(root, clusterId);
    if (await stat(dir).then(() => true, () => false)) return dir;
  }
  return null;
}

describe("a deleted cluster's backups", () => {
  let cellar: TestCellar;
  let doomed: ClusterView;
  let backup: BackupView;
  /** A time between rows 1-10 (in the backup) and rows 11-20 (only in the archived WAL), as Postgres prints it. */
  let between: string;

  before(async () => {
    cellar = await TestCellar.create();
    await cellar.start();
    doomed = await cellar.cliJson<ClusterView>(['clusters', 'create', 'doomed', '--replicas', '0', '--wait']);
    const uri = doomed.uri as string;
    // No autovacuum on t: an ANALYZE of it commits, and one committed after the last archive the
    // probe saw (the window's latest) but before the delete reaches the archive at the shutdown,
    // so a restore to that latest finds a commit past it and succeeds (seen once: the unreachable-
    // target case below then ran instead of failing).
    await queryUri(uri, 'create table t (id int primary key) with (autovacuum_enabled = false)');
    await queryUri(uri, 'insert into t select generate_series(1, 10)');
    backup = await cellar.cliJson<BackupView>(['backups', 'create', 'doomed', '--wait']);
    assert.equal(backup.verified, true, backup.verifyDetail ?? backup.error ?? '');
    const [mark] = await queryUri<{ at: string }>(uri, 'select clock_timestamp()::text as at');
    between = mark?.at as string;
    await queryUri(uri, 'insert into t select generate_series(11, 20)');
    const [end] = await queryUri<{ lsn: string }>(uri, 'select pg_current_wal_lsn()::text as lsn');
    // Rows 11-20 are only in the WAL: wait until the archive holds them (archive_timeout switches the segment).
    await eventually('rows 11-20 to reach the archive', async () => {
      const shown = await cellar.cluster('doomed');
      const archived = shown.archive?.lastArchivedWal;
      const archivedEnd = archived ? walSegmentEnd(archived) : null;
      return archivedEnd !== null && archivedEnd > lsnToBigInt(end?.lsn as string) ? true : undefined;
    }, 60_000, 250);
    await cellar.cliJson<ClusterView>(['clusters', 'delete', 'doomed', '--wait']);
  });

  after(async () => {
    await cellar.destroy();
  });

  test('is listed with its window and purge time, and restores by id into a new cluster with every row written before the delete', async () => {
    const list = await cellar.cliJson<DeletedClusterListView>(['backups', 'list', '--deleted', 'doomed']);
    const listed = list.clusters.find((cluster) => cluster.id === doomed.id);
    assert.ok(listed !== undefined, 'the deleted cluster is listed');
    assert.deepEqual(listed.backups.map((item) => item.id), [backup.id]);
    assert.equal(Date.parse(listed.purgeAt) - Date.parse(listed.deletedAt), 7 * 24 * 3_600_000, 'purged after the default retention');
    assert.ok(listed.window.earliest !== null && listed.window.latestLsn !== null);
    const reborn = await cellar.cliJson<ClusterView>(['backups', 'restore', '--backup', backup.id, '--to', 'reborn', '--wait']);
    assert.equal(reborn.state, 'running', reborn.error ?? '');
    assert.deepEqual(await ids(reborn.uri as string), range(1, 20));
  });

  test('--time takes the timestamp as Postgres printed it, and the restore stops there', async () => {
    assert.match(between, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d\d/, 'Postgres prints a space, microseconds and a short zone');
    const earlier = await cellar.cliJson<ClusterView>(['backups', 'restore', '--backup', backup.id, '--to', 'earlier', '--time', between, '--wait']);
    assert.deepEqual(await ids(earlier.uri as string), range(1, 10));
  });

  test('another org neither sees nor restores it', async () => {
    const org = await cellar.api<{ token: string }>('POST', '/v1/orgs', { name: 'rival' });
    assert.equal(org.status, 201);
    const token = org.body.token;
    const list = await cellar.api<DeletedClusterListView>('GET', '/v1/deleted-clusters', undefined, token);
    assert.deepEqual([list.status, list.body.clusters], [200, []]);
    const show = await cellar.api<ErrorBody>('GET', `/v1/backups/${backup.id}`, undefined, token);
    assert.deepEqual([show.status, show.body.error.code], [404, 'CELLAR_E_NOT_FOUND']);
    const restore = await cellar.api<ErrorBody>('POST', `/v1/backups/${backup.id}/restore`, { to: 'stolen' }, token);
    assert.deepEqual([restore.status, restore.body.error.code, restore.body.error.field], [404, 'CELLAR_E_NOT_FOUND', 'id']);
    const made = await cellar.storeQuery<{ n: number }>(`select count(*)::int as n from clusters where name = 'stolen'`);
    assert.equal(made[0]?.n, 0);
  });

  test('each bad restore target is a 400 naming the field (and the window, for one outside it), and makes nothing', async () => {
    const deletedAt = (await cellar.storeQuery<{ at: Date }>('select deleted_at as at from clusters where id = $1', [doomed.id]))[0]?.at as Date;
    const cases: [Record<string, string>, string, RegExp][] = [
      [{ lsn: 'FFFFFFFF/FFFFFFFF' }, 'lsn', /lsn FFFFFFFF\/FFFFFFFF is outside the restore window .*WAL positions [0-9A-F]+\/[0-9A-F]+ to [0-9A-F]+\/[0-9A-F]+/],
      [{ lsn: '0/1' }, 'lsn', /before the end of every usable backup/],
      [{ lsn: '0/zz' }, 'lsn', /two hexadecimal numbers/],
      [{ time: '2026-11-30 10:22:58' }, 'time', /a zone is required/],
      [{ time: 'last tuesday' }, 'time', /as Postgres prints it/],
      [{ time: new Date(deletedAt.getTime() + 60_000).toISOString() }, 'time', /outside the restore window: backup .* of deleted cluster "doomed" its restore window is/],
      [{ time: '2001-01-01 00:00:00+00' }, 'time', /outside the restore window/],
      [{ time: between, lsn: '0/3000000' }, 'time', /not both/],
    ];
    for (const [target, field, message] of cases) {
      const refused = await cellar.api<ErrorBody>('POST', `/v1/backups/${backup.id}/restore`, { to: 'never', ...target });
      assert.deepEqual([refused.status, refused.body.error.code, refused.body.error.field], [400, 'CELLAR_E_INVALID', field], JSON.stringify(target));
      assert.match(refused.body.error.message, message);
    }
    const made = await cellar.storeQuery<{ n: number }>(`select count(*)::int as n from clusters where name = 'never'`);
    assert.equal(made[0]?.n, 0, 'no half-made cluster');
  });

  test('a restore whose recovery cannot reach its target fails within seconds with a one-line reason', async (t) => {
    const list = await cellar.cliJson<DeletedClusterListView>(['backups', 'list', '--deleted', 'doomed']);
    // The window's end is when the last WAL was archived: no commit follows it, so recovery runs out first.
    const latest = list.clusters[0]?.window.latest as string;
    const startedMs = Date.now();
    const result = await cellar.cli(['backups', 'restore', '--backup', backup.id, '--to', 'unreachable', '--time', latest, '--wait']);
    const seconds = (Date.now() - startedMs) / 1000;
    assert.notEqual(result.code, 0, result.stdout);
    const failed = await cellar.cliJson<ClusterView>(['clusters', 'show', 'unreachable']);
    t.diagnostic(`restore to an unreachable time failed after ${seconds.toFixed(1)} s with a ${failed.error?.length ?? 0}-character reason: ${failed.error ?? ''}`);
    assert.equal(failed.state, 'failed');
    assert.match(failed.error ?? '', /recovery ended before configured recovery target was reached: the archive ends before the restore target/);
    assert.ok((failed.error ?? '').length <= failureTextMax, 'one line, not a log dump');
    assert.match(result.stderr, /restore into unreachable failed: .*the archive ends before the restore target/);
  });

  test('after the retention its backup area, WAL included, and its rows are purged; the clusters restored from it keep running', async () => {
    assert.ok((await backupArea(cellar, doomed.id)) !== null, 'the area is there before');
    const runsAsRoot = process.getuid?.() === 0;
    if (runsAsRoot) assert.ok((await lookupUser(clusterUserName(doomed.id))) !== undefined, "the deleted cluster's OS user is kept with its backups");
    await cellar.stop();
    await cellar.start([], { CELLAR_DELETED_BACKUP_RETENTION_MS: '1000' });
    await eventually('the purge', async () => {
      const [row] = await cellar.storeQuery<{ kept: number; purged: Date | null }>(
        `select (select count(*)::int from backups where cluster_id = $1 and status <> 'deleted') as kept, backups_purged_at as purged from clusters where id = $1`,
        [doomed.id],
      );
      return row?.kept === 0 && row.purged !== null && (await backupArea(cellar, doomed.id)) === null ? true : undefined;
    }, 60_000, 250);
    assert.equal(await lookupUser(clusterUserName(doomed.id)), undefined, "the purged cluster's OS user is gone");
    const list = await cellar.api<DeletedClusterListView>('GET', '/v1/deleted-clusters');
    assert.ok(!list.body.clusters.some((cluster) => cluster.id === doomed.id), 'no longer listed');
    const restore = await cellar.api<ErrorBody>('POST', `/v1/backups/${backup.id}/restore`, { to: 'too-late' });
    assert.equal(restore.status, 404);
    const reborn = await cellar.cliJson<ClusterView>(['clusters', 'show', 'reborn']);
    assert.equal(reborn.state, 'running', reborn.error ?? '');
    assert.deepEqual(await ids(reborn.uri as string), range(1, 20));
    assert.ok((await backupArea(cellar, reborn.id)) !== null, "a live cluster's own area stays");
    if (runsAsRoot) assert.ok((await lookupUser(clusterUserName(reborn.id))) !== undefined, "a live cluster's OS user stays");
  });
});
