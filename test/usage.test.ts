import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PermanentError } from '../src/lib/failure.js';
import { hostUsage, measureUsage } from '../src/dataplane/local/usage.js';
import { HostUsageWatch } from '../src/dataplane/local/host-usage.js';
import type { HostUsage } from '../src/dataplane/dataplane.js';
import pino from 'pino';

/**
 * The usage walk (src/dataplane/local/usage.ts) on a tree made here: sizes counted as allocated
 * on disk, pg_wal apart, links counted as themselves and never followed, a cap on entries.
 */

const mib = 1024 ** 2;
/** Allocation rounds a file up to its filesystem's blocks, and each directory takes a few: a little slack over the bytes written. */
const slackBytes = 256 * 1024;

describe('usage walk', () => {
  let root: string;
  let pgdata: string;
  let outside: string;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'cellar-usage-'));
    pgdata = join(root, 'pgdata');
    outside = join(root, 'outside');
    await mkdir(join(pgdata, 'base', '5'), { recursive: true });
    await mkdir(join(pgdata, 'pg_wal', 'archive_status'), { recursive: true });
    await mkdir(outside);
    // Random bytes, so that a compressing filesystem does not shrink them.
    const random = (bytes: number): Buffer => Buffer.from(Array.from({ length: bytes }, () => Math.floor(Math.random() * 256)));
    await writeFile(join(pgdata, 'base', '5', '16384'), random(3 * mib));
    await writeFile(join(pgdata, 'PG_VERSION'), '15\n');
    await writeFile(join(pgdata, 'pg_wal', '000000010000000000000001'), random(2 * mib));
    await writeFile(join(outside, 'big'), random(5 * mib));
    // Planted links: to a big tree outside, and to a file outside; neither may be followed or counted past itself.
    await symlink(outside, join(pgdata, 'base', 'planted'));
    await symlink(join(outside, 'big'), join(pgdata, 'pg_wal', 'planted'));
  });

  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('counts the data directory and pg_wal apart, as allocated on disk, and follows no link', async () => {
    const usage = await measureUsage(pgdata);
    assert.ok(usage.dataBytes >= 3 * mib && usage.dataBytes < 3 * mib + slackBytes, `dataBytes ${usage.dataBytes}: the 3 MiB table file and no more (not pg_wal, not the 5 MiB behind a link)`);
    assert.ok(usage.walBytes >= 2 * mib && usage.walBytes < 2 * mib + slackBytes, `walBytes ${usage.walBytes}: the 2 MiB segment and no more`);
    assert.equal(usage.filesystem.path, pgdata);
    assert.ok(usage.filesystem.totalBytes > 0 && usage.filesystem.availableBytes <= usage.filesystem.freeBytes && usage.filesystem.freeBytes <= usage.filesystem.totalBytes);
  });

  test('a data directory that is itself a link is not entered', async () => {
    const linked = join(root, 'linked-pgdata');
    await symlink(outside, linked);
    // The filesystem's figures come from statfs, which must still answer; the tree behind the link counts for nothing.
    const usage = await measureUsage(linked);
    assert.deepEqual([usage.dataBytes, usage.walBytes], [0, 0]);
  });

  test('a pg_wal that is a link counts as the link alone', async () => {
    const other = join(root, 'pgdata-linked-wal');
    await mkdir(other);
    await symlink(outside, join(other, 'pg_wal'));
    const usage = await measureUsage(other);
    assert.ok(usage.walBytes < slackBytes, `walBytes ${usage.walBytes}: not the 5 MiB behind the link`);
  });

  test('past its cap on entries the walk stops with an error naming the cap', async () => {
    await assert.rejects(measureUsage(pgdata, 3), (error: unknown) => error instanceof PermanentError && /visited more than 3 entries \(usageEntriesMax\)/.test(error.message));
  });

  test("a host's directories on one filesystem are one entry with every purpose", async () => {
    const usage = await hostUsage({ data: pgdata, backups: outside, home: root });
    assert.equal(usage.filesystems.length, 1);
    assert.deepEqual(usage.filesystems[0]?.purposes, ['data', 'backups', 'home']);
    assert.equal(usage.filesystems[0]?.path, pgdata, 'measured at the first directory that names it');
  });

  test('the host watch measures at once and hands the figure on; a directory that is not there records nothing and stops cleanly', async () => {
    const recorded: HostUsage[] = [];
    const silent = pino({ level: 'silent' });
    const watch = new HostUsageWatch({ record: async (usage) => void recorded.push(usage), directories: { data: pgdata }, intervalMs: 60_000, log: silent });
    watch.start();
    const deadlineMs = Date.now() + 5_000;
    while (recorded.length === 0 && Date.now() < deadlineMs) await new Promise((resolve) => setImmediate(resolve));
    await watch.stop();
    assert.equal(recorded.length, 1, 'one round at start, the next an interval later');
    assert.deepEqual(recorded[0]?.filesystems.map((filesystem) => filesystem.purposes), [['data']]);
    const missing: HostUsage[] = [];
    const warnings: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) });
    const broken = new HostUsageWatch({ record: async (usage) => void missing.push(usage), directories: { data: join(root, 'absent') }, intervalMs: 60_000, log });
    broken.start();
    const warnedBy = Date.now() + 5_000;
    while (warnings.length === 0 && Date.now() < warnedBy) await new Promise((resolve) => setImmediate(resolve));
    await broken.stop();
    assert.deepEqual(missing, []);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /ENOENT.*could not measure the host's free space/);
  });
});
