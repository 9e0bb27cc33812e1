import assert from 'node:assert/strict';
import { chmod, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ClusterView } from '../src/api/view.js';
import { walKeepLimitMb } from '../src/lib/sizes.js';
import { TestCellar, eventually, postmasterPid, queryUri } from './helpers/cellar.js';

/**
 * WAL never fills the disk behind the user's back (docs/STORAGE.md "WAL bounds"), end to end: a
 * replica that stops streaming loses its slot at the bound and is replaced; an archive that fails
 * raises `archive_failing` and the cluster's warnings say how much WAL it holds.
 */

const storageGb = 1;
const boundMb = walKeepLimitMb(storageGb);
/** What pg_wal may hold beyond the slot bound: max_wal_size of a micro instance (256MB) and a few segments in flight. */
const walMarginMb = 256 + 64;
/** Rows of ~1 kB: each batch writes about 140 MB of WAL (measured: full-page images included). */
const rowsPerBatch = 100_000;
/** About 700 MB of WAL: past the slot bound and its margin, so an unbounded slot would keep more than the test allows. */
const batchesPastBound = 5;
const megabyte = 1024 ** 2;

describe('WAL bounds', () => {
  let cellar: TestCellar;
  let cluster: ClusterView;
  let superuserPassword = '';
  const stoppedPids: number[] = [];
  let lockedWalDir: string | null = null;

  const direct = (port: number | null) => `postgresql://postgres:${encodeURIComponent(superuserPassword)}@127.0.0.1:${port ?? 0}/postgres?sslmode=disable`;
  const show = () => cellar.cluster('wal');
  const primaryPort = async () => (await show()).instances.find((instance) => instance.role === 'primary')?.port ?? null;

  async function writeWal(batches: number): Promise<void> {
    for (let batch = 0; batch < batches; batch += 1) {
      await queryUri(cluster.uri as string, `insert into filler select g, repeat('x', 1000) from generate_series(1, ${rowsPerBatch}) g`);
    }
  }

  async function walDirMb(port: number | null): Promise<number> {
    const [row] = await queryUri<{ bytes: string }>(direct(port), 'select sum(size)::bigint::text as bytes from pg_ls_waldir()');
    return Number(row?.bytes ?? 0) / megabyte;
  }

  // async: commits must not wait for the replica whose WAL receiver the test stops.
  before(async () => {
    // The stopped replica must be replaced for its lost slot, not as dead: the dead-replica bound is longer than the test.
    // Real GB, and read-only only at 99 %: ~700 MB of WAL goes through a 1 GB cluster here, and a
    // failing archive keeps what it holds, which the storage guard would otherwise (rightly) stop.
    cellar = await TestCellar.create({ CELLAR_ARCHIVE_FAILING_MS: '1000', CELLAR_REPLICA_DEAD_MS: '600000', CELLAR_STORAGE_GB_BYTES: String(1024 ** 3), CELLAR_STORAGE_READ_ONLY_PERCENT: '99' });
    await cellar.start();
    cluster = await cellar.cliJson<ClusterView>(['clusters', 'create', 'wal', '--replicas', '1', '--durability', 'async', '--size', 'micro', '--storage-gb', String(storageGb), '--wait']);
    const [row] = await cellar.storeQuery<{ password: string }>(`select secrets ->> 'superuserPassword' as password from clusters where name = 'wal'`);
    superuserPassword = row?.password ?? '';
    await queryUri(cluster.uri as string, 'create table filler (id bigint, pad text)');
  });

  after(async () => {
    for (const pid of stoppedPids) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone already: its replica was deleted.
      }
    }
    if (lockedWalDir !== null) await chmod(lockedWalDir, 0o700);
    await cellar.destroy();
  });

  test('a replica that stops streaming loses its slot at the bound and is replaced by one that streams; pg_wal stays within the bound', async (t) => {
    const port = await primaryPort();
    const [setting] = await queryUri<{ value: string }>(direct(port), 'select current_setting($1) as value', ['max_slot_wal_keep_size']);
    assert.equal(setting?.value, `${boundMb}MB`, 'the slot bound is derived from the allocation');
    const replica = cluster.instances.find((instance) => instance.role === 'replica');
    assert.ok(replica !== undefined);
    // The replica's postmaster stopped, then its WAL receiver killed: the connection closes (a stopped
    // receiver would leave the primary's walsender blocked on a full socket) and nothing restarts it.
    const [receiver] = await queryUri<{ pid: number }>(direct(replica.port), 'select pid from pg_stat_wal_receiver');
    assert.ok(receiver !== undefined, 'the replica streams');
    const postmaster = await postmasterPid(cellar.dataDir, replica.id);
    process.kill(postmaster, 'SIGSTOP');
    stoppedPids.push(postmaster);
    process.kill(receiver.pid, 'SIGKILL');
    await writeWal(batchesPastBound);
    await queryUri(direct(port), 'checkpoint');
    await eventually('the slot to be lost', async () => {
      const rows = await queryUri<{ wal_status: string }>(direct(port), 'select wal_status from pg_replication_slots where slot_name = $1', [replica.id]);
      return rows[0]?.wal_status === 'lost' ? true : undefined;
    }, 120_000, 250);
    // The old replica can go now: a stopped postmaster would hold up its shutdown.
    process.kill(postmaster, 'SIGCONT');
    const replaced = await eventually('a fresh replica that streams', async () => {
      const view = await show();
      const fresh = view.instances.find((instance) => instance.role === 'replica' && instance.id !== replica.id && instance.streaming === true);
      return fresh === undefined ? undefined : view;
    }, 180_000, 500);
    assert.ok(replaced.events.some((event) => event.code === 'replica_replaced_wal_lost'), 'replaced for its lost slot');
    const walMb = await eventually('pg_wal to be within the bound', async () => {
      await queryUri(direct(port), 'checkpoint');
      const mb = await walDirMb(port);
      return mb <= boundMb + walMarginMb ? mb : undefined;
    }, 60_000, 500);
    t.diagnostic(`pg_wal ${walMb.toFixed(0)} MB after writing about ${batchesPastBound * 140} MB of WAL (bound ${boundMb} MB + margin ${walMarginMb} MB)`);
  });

  test('an archive that keeps failing raises archive_failing, and the cluster warns once it holds half the bound', async () => {
    const candidates = [join(cellar.home, 'backups', cluster.id, 'wal'), join(cellar.dataDir, 'backups', cluster.id, 'wal')];
    for (const candidate of candidates) {
      if (await stat(candidate).then(() => true, () => false)) {
        lockedWalDir = candidate;
        break;
      }
    }
    assert.ok(lockedWalDir !== null, `the cluster's archive is one of ${candidates.join(', ')}`);
    // The first test's rows go: what the failing archive holds is the point here, not the table.
    await queryUri(cluster.uri as string, 'truncate filler');
    await chmod(lockedWalDir, 0o500);
    await writeWal(Math.ceil(boundMb / 2 / 140) + 1);
    const warned = await eventually('the warning and the event', async () => {
      const view = await show();
      return view.warnings.length > 0 && view.events.some((event) => event.code === 'archive_failing') ? view : undefined;
    }, 120_000, 500);
    assert.match(warned.warnings[0] ?? '', /archiving has failed since .* MB of WAL held on the primary/);
    await chmod(lockedWalDir, 0o700);
    lockedWalDir = null;
    // Postgres retries a failed archive when a segment is next ready, or after a minute at most:
    // a write and a switch make one ready now (what is tested is Cellar seeing the recovery).
    await queryUri(cluster.uri as string, 'insert into filler values (0, null)');
    await queryUri(direct(await primaryPort()), 'select pg_switch_wal()');
    await eventually('archiving to recover', async () => {
      const view = await show();
      return view.warnings.length === 0 && view.events.some((event) => event.code === 'archive_recovered') ? true : undefined;
    }, 120_000, 500);
  });
});
