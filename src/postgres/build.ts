import { access, readdir, rename, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomToken } from '../lib/ids.js';
import { ensureDirectory, removeTree } from './files.js';
import { fsyncDir, type RunAs } from './osuser.js';
import { stopServer } from './server.js';

/**
 * Data directories are built beside their final name and renamed into place: the rename is the
 * commit point, so a crash leaves a `<name>.tmp-…` sibling that the next attempt removes, never a
 * half-built directory under the real name. The embedded store and the local driver build this way.
 */

/**
 * Builds `target` via `build(tmp)` then renames: the rename is the commit point. `tmp` exists,
 * empty, owned by `owner` (the builder runs as that user and cannot create it in Cellar's directory).
 */
export async function buildThenRename(target: string, owner: RunAs, build: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${target}.tmp-${randomToken(8)}`;
  try {
    await ensureDirectory(tmp, 0o700, owner);
    await build(tmp);
    await renameUnlessPresent(tmp, target);
    await fsyncDir(dirname(target));
  } catch (error) {
    await discardBuild(tmp);
    throw error;
  }
}

async function renameUnlessPresent(tmp: string, target: string): Promise<void> {
  try {
    await rename(tmp, target);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // Another builder won the race: its directory is as good as ours.
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
    await discardBuild(tmp);
  }
}

/** Stops a bootstrap server a crashed build may have left running, then removes the directory. */
export async function discardBuild(tmp: string): Promise<void> {
  await stopServer(tmp);
  await removeTree(tmp);
}

/** Removes `<base>.tmp-*` siblings of `target` (older than minAgeMs, if given). */
export async function removeStaleBuilds(target: string, minAgeMs = 0): Promise<void> {
  const dir = dirname(target);
  const prefix = `${basename(target)}.tmp-`;
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const entry of entries.filter((name) => name.startsWith(prefix))) {
    const path = join(dir, entry);
    const age = Date.now() - (await stat(path)).mtimeMs;
    if (age >= minAgeMs) await discardBuild(path);
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
