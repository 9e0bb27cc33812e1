import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { LocalBackupStore } from '../src/dataplane/local/backup-store.js';
import { ClusterUsers } from '../src/postgres/osuser.js';
import { walFilesBefore } from '../src/dataplane/local/wal.js';

/** The archive and restore commands Postgres runs, exercised with real files and /bin/sh. */

const execFileAsync = promisify(execFile);

/** Runs a Postgres-style command line with %p and %f filled in; resolves with the exit code. */
async function runCommand(template: string, path: string, file: string): Promise<number> {
  const command = template.replaceAll('%p', path).replaceAll('%f', file);
  try {
    await execFileAsync('/bin/sh', ['-c', command]);
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? -1;
  }
}

test('archive_command never overwrites a different file, accepts the same one again, and restore_command gives it back', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'cellar-store-'));
  await chmod(root, 0o755);
  try {
    const users = new ClusterUsers(root);
    t.after(() => users.remove('cl_storetestaaa'));
    const store = new LocalBackupStore(join(root, 'backups'), users);
    await store.prepare();
    await store.ensureArea('cl_storetestaaa');
    const segment = '000000010000000000000003';
    const source = join(root, segment);
    await writeFile(source, Buffer.alloc(16 * 1024, 7));
    const archive = store.archiveCommand('cl_storetestaaa');
    assert.equal(await runCommand(archive, source, segment), 0, 'archived');
    assert.equal(await runCommand(archive, source, segment), 0, 'the same file again (Postgres retries after a crash) is success');
    await writeFile(source, Buffer.alloc(16 * 1024, 8));
    assert.notEqual(await runCommand(archive, source, segment), 0, 'a different file under the same name is refused');
    const restored = join(root, 'restored');
    assert.equal(await runCommand(store.restoreCommand('cl_storetestaaa'), restored, segment), 0);
    assert.deepEqual(await readFile(restored), Buffer.alloc(16 * 1024, 7), 'the archive still holds the first file');
    assert.notEqual(await runCommand(store.restoreCommand('cl_storetestaaa'), restored, '000000010000000000000004'), 0, 'a missing file is "not archived (yet)"');
    const listed = await store.listWal('cl_storetestaaa');
    assert.deepEqual(listed.map((file) => file.name), [segment]);
    const leftovers = (await readdir(join(root, 'backups', 'cl_storetestaaa', 'wal'))).filter((name) => name.includes('.tmp'));
    assert.deepEqual(leftovers, [], 'no temporary file is left behind');
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('WAL pruning keeps history files and everything from the oldest needed segment on, on any timeline', () => {
  const names = [
    '000000010000000000000001',
    '000000010000000000000002.00000028.backup',
    '000000010000000000000005.partial',
    '00000002.history',
    '000000020000000000000005',
    '000000020000000000000006',
  ];
  const files = names.map((name) => ({ name, bytes: 1 }));
  assert.deepEqual(walFilesBefore(files, '000000020000000000000005'), ['000000010000000000000001', '000000010000000000000002.00000028.backup']);
  assert.deepEqual(walFilesBefore(files, 'not a wal file'), []);
});
