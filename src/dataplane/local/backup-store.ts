import { lstat, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../../lib/assert.js';
import { randomToken } from '../../lib/ids.js';
import type { BackupStore, WalFile } from '../backup-store.js';
import { copyTreeBetween, ensureDirectory, ensureDirectoryTree, removeTree, replaceFile } from '../../postgres/files.js';
import { fsyncDir, selfRunAs, type ClusterUsers, type RunAs } from '../../postgres/osuser.js';
import { dataDirMode, shellUnsafePathCharacters } from '../../postgres/paths.js';
import { exists, removeStaleBuilds } from '../../postgres/build.js';

/**
 * The backup store as a local directory: `<root>/<clusterId>/wal/<name>.gz` and
 * `<root>/<clusterId>/base/<id>/` (a plain-format base backup with its manifest and the WAL it
 * needs). Archived WAL is gzipped: a segment switched early by archive_timeout is mostly zeros.
 * The root, the scripts and each area belong to Cellar (0711: nothing can be planted or listed);
 * `wal/` and `base/` belong to the cluster's OS user (0700), which writes them through
 * archive_command and pg_basebackup, so one cluster can read no other cluster's backups.
 * A restore into a new cluster gets its own copy of the source's WAL in `restore-wal/`.
 */

const archiveScriptName = 'archive-wal.sh';
const restoreScriptName = 'restore-wal.sh';

/**
 * Archives one WAL file. An existing file with the same content is success (Postgres may retry
 * after a crash); a different one is refused, so the archive never loses what it holds. The file
 * is written under a temporary name, fsynced, renamed, and the directory fsynced.
 */
const archiveScript = `#!/bin/sh
# Written by Cellar: archive_command. Usage: archive-wal.sh SOURCE DESTINATION.gz
set -eu
src="$1"
dest="$2"
if [ -f "$dest" ]; then
  if gzip -dc "$dest" | cmp -s - "$src"; then exit 0; fi
  echo "archive-wal: $dest exists with different content; refusing to overwrite it" >&2
  exit 1
fi
tmp="$dest.tmp.$$"
trap 'rm -f "$tmp"' EXIT
gzip -1 -c "$src" > "$tmp"
sync "$tmp"
mv "$tmp" "$dest"
trap - EXIT
sync "$(dirname "$dest")"
`;

/** Restores one WAL file; a missing one exits non-zero, which Postgres takes as "not archived (yet)". */
const restoreScript = `#!/bin/sh
# Written by Cellar: restore_command. Usage: restore-wal.sh ARCHIVED (without .gz) TARGET
set -eu
[ -f "$1.gz" ] || exit 1
gzip -dc "$1.gz" > "$2.tmp"
mv "$2.tmp" "$2"
`;

function assertId(id: string): void {
  assert(/^[a-z0-9_]+$/.test(id), `id ${id} is not safe as a file name`);
}

export class LocalBackupStore implements BackupStore {
  constructor(
    readonly root: string,
    private readonly users: ClusterUsers,
  ) {
    assert(!shellUnsafePathCharacters.test(root), `backup directory ${root} must not contain quotes, spaces, backslashes or %`);
  }

  /** Creates the root and (re)writes the two scripts; call once at start. */
  async prepare(): Promise<void> {
    await ensureDirectoryTree(this.root, dataDirMode, selfRunAs());
    for (const [name, text] of [[archiveScriptName, archiveScript], [restoreScriptName, restoreScript]] as const) {
      await replaceFile(join(this.root, name), text, 0o755, selfRunAs());
    }
  }

  private area(clusterId: string): { root: string; wal: string; base: string; restoreWal: string } {
    assertId(clusterId);
    const root = join(this.root, clusterId);
    return { root, wal: join(root, 'wal'), base: join(root, 'base'), restoreWal: join(root, 'restore-wal') };
  }

  private async owner(clusterId: string): Promise<RunAs> {
    return this.users.ensure(clusterId);
  }

  async ensureArea(clusterId: string): Promise<void> {
    const area = this.area(clusterId);
    const owner = await this.owner(clusterId);
    await ensureDirectory(area.root, dataDirMode, selfRunAs());
    for (const dir of [area.wal, area.base]) await ensureDirectory(dir, 0o700, owner);
  }

  /**
   * A copy of the source cluster's archived WAL for `clusterId`'s restore, readable by its user
   * (a restore crosses users); returns the restore_command that reads it.
   */
  async stageRestoreWal(sourceClusterId: string, clusterId: string): Promise<string> {
    const sourceOwner = await this.users.find(sourceClusterId);
    if (sourceOwner === undefined) throw new Error(`cluster ${sourceClusterId}'s backups are gone (purged)`);
    await this.ensureArea(clusterId);
    const target = this.area(clusterId).restoreWal;
    await removeTree(target);
    await ensureDirectory(target, 0o700, await this.owner(clusterId));
    await copyTreeBetween(this.area(sourceClusterId).wal, sourceOwner, target, await this.owner(clusterId));
    return this.restoreCommandFrom(target);
  }

  /** Drops the copy of a restore's source WAL once recovery has finished. */
  async dropRestoreWal(clusterId: string): Promise<void> {
    await removeTree(this.area(clusterId).restoreWal);
  }

  /** The user a cluster's backup files belong to, while its user exists. */
  async areaOwner(clusterId: string): Promise<RunAs | undefined> {
    return this.users.find(clusterId);
  }

  archiveCommand(clusterId: string): string {
    return `/bin/sh ${join(this.root, archiveScriptName)} "%p" "${this.area(clusterId).wal}/%f.gz"`;
  }

  restoreCommand(clusterId: string): string {
    return this.restoreCommandFrom(this.area(clusterId).wal);
  }

  private restoreCommandFrom(walDir: string): string {
    return `/bin/sh ${join(this.root, restoreScriptName)} "${walDir}/%f" "%p"`;
  }

  async stageBase(clusterId: string, backupId: string): Promise<string> {
    assertId(backupId);
    await this.ensureArea(clusterId);
    const target = join(this.area(clusterId).base, backupId);
    // One backup machine per id holds the lease: any staging dir is a crash's leftover.
    await removeStaleBuilds(target);
    return `${target}.tmp-${randomToken(8)}`;
  }

  async commitBase(clusterId: string, backupId: string, staged: string): Promise<void> {
    const target = join(this.area(clusterId).base, backupId);
    await rename(staged, target);
    await fsyncDir(this.area(clusterId).base);
  }

  async baseDirectory(clusterId: string, backupId: string): Promise<string | null> {
    assertId(backupId);
    const dir = join(this.area(clusterId).base, backupId);
    return (await exists(dir)) ? dir : null;
  }

  async deleteBase(clusterId: string, backupId: string): Promise<void> {
    assertId(backupId);
    const target = join(this.area(clusterId).base, backupId);
    await removeStaleBuilds(target);
    await removeTree(target);
  }

  async listWal(clusterId: string): Promise<WalFile[]> {
    const dir = this.area(clusterId).wal;
    const names = await readdir(dir).catch(() => [] as string[]);
    const files: WalFile[] = [];
    for (const file of names.filter((name) => name.endsWith('.gz'))) {
      // lstat: a link the cluster's user planted is not an archived file, and is not followed.
      const info = await lstat(join(dir, file)).catch(() => null);
      if (info?.isFile()) files.push({ name: file.slice(0, -'.gz'.length), bytes: info.size });
    }
    return files.sort((a, b) => a.name.localeCompare(b.name));
  }

  async deleteWal(clusterId: string, names: readonly string[]): Promise<void> {
    const dir = this.area(clusterId).wal;
    for (const name of names) {
      assert(/^[0-9A-F]{8}([0-9A-F]{16})?(\.[0-9A-F]{8}\.backup|\.partial|\.history)?$/.test(name), `not a WAL file name: ${name}`);
      // wal/ is the cluster user's, but its entry sits in Cellar's area; unlink never follows a link.
      await rm(join(dir, `${name}.gz`), { force: true });
    }
  }

  async deleteArea(clusterId: string): Promise<void> {
    await removeTree(this.area(clusterId).root);
  }
}
