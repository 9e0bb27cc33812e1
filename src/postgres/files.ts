import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rmdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { currentAbortSignal } from '../lib/abort.js';
import { assert } from '../lib/assert.js';
import { formatTail, run, type RunAs } from './osuser.js';

/**
 * File operations that are safe for root inside directories another user can write (DESIGN §3a).
 *
 * The layout keeps every directory Cellar manipulates by path owned by Cellar itself: the data
 * dir, `instances/<id>/`, a backup area. Only leaves belong to a cluster's OS user (`pgdata/`,
 * `run/`, a backup area's `wal/` and `base/`). Inside those leaves root never follows a link:
 * files are created with O_EXCL | O_NOFOLLOW and owned through the descriptor, read with
 * O_NOFOLLOW, and trees are emptied by a child running as their owner.
 */

const writeFlags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const readFlags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** A staging name taken by someone else is unlinked and tried again, this many times. */
const stagingAttemptsMax = 3;
/** Config and pid files are small; a bigger one is not ours. */
export const smallFileBytesMax = 1024 * 1024;
/** Emptying a data directory of a big database can take a while. */
const emptyTreeMsMax = 30 * 60_000;
/** Copying a data directory between users (template, base backup): generous for large databases. */
const copyTreeMsMax = 60 * 60_000;
/** Cellar's own trees (an instance root, a scratch root) are shallow. */
const ownTreeDepthMax = 8;
const tarBinary = '/bin/tar';
const findBinary = '/usr/bin/find';

function isCode(error: unknown, code: string): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === code;
}

/**
 * Replaces `path` whole: a staging file next to it is created exclusively and without following
 * links, given its mode and owner through the descriptor, synced, and renamed over `path`
 * (rename replaces a planted link; it never writes through one).
 */
export async function replaceFile(path: string, content: string, mode: number, owner: RunAs): Promise<void> {
  const staging = `${path}.new`;
  const handle = await openExclusive(staging, mode);
  try {
    await handle.writeFile(content);
    await handle.chmod(mode);
    if (owner.switchUser) await handle.chown(owner.uid, owner.gid);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(staging, path);
}

async function openExclusive(path: string, mode: number) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await open(path, writeFlags, mode);
    } catch (error) {
      if (!isCode(error, 'EEXIST') || attempt >= stagingAttemptsMax) throw error;
      // A crash's leftover, or something planted: unlink removes a link itself, not its target.
      await unlink(path).catch((unlinkError: unknown) => {
        if (!isCode(unlinkError, 'ENOENT')) throw unlinkError;
      });
    }
  }
}

/** Reads a small regular file without following a link or blocking on a FIFO; undefined if absent. */
export async function readSmallFile(path: string, bytesMax = smallFileBytesMax): Promise<string | undefined> {
  let handle;
  try {
    handle = await open(path, readFlags);
  } catch (error) {
    if (isCode(error, 'ENOENT')) return undefined;
    if (isCode(error, 'ELOOP')) throw new Error(`${path} is a symbolic link; Cellar does not follow links in data directories`);
    throw error;
  }
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw new Error(`${path} is not a regular file`);
    if (stats.size > bytesMax) throw new Error(`${path} is ${stats.size} bytes, more than the ${bytesMax} expected`);
    const buffer = Buffer.alloc(stats.size);
    const { bytesRead } = await handle.read(buffer, 0, stats.size, 0);
    return buffer.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Opens a log file for appending, in a directory only Cellar can write (so nothing can be
 * planted there); O_NOFOLLOW all the same.
 */
export async function openLogForAppend(path: string) {
  return open(path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
}

/**
 * A directory Cellar owns (or gives to `owner`), made in a parent Cellar owns: a parent another
 * user could write would let that user swap the entry for a link before the chown.
 */
export async function ensureDirectory(path: string, mode: number, owner: RunAs): Promise<void> {
  await assertOwnParent(path);
  try {
    await mkdir(path, { mode: 0o700 });
  } catch (error) {
    if (!isCode(error, 'EEXIST')) throw error;
  }
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    await handle.chmod(mode);
    if (owner.switchUser) await handle.chown(owner.uid, owner.gid);
  } finally {
    await handle.close();
  }
}

/** Makes `path` and its missing ancestors (0755, Cellar's), then `path` itself as ensureDirectory does. */
export async function ensureDirectoryTree(path: string, mode: number, owner: RunAs): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o755 });
  await ensureDirectory(path, mode, owner);
}

async function assertOwnParent(path: string): Promise<void> {
  const parent = await lstat(dirname(path));
  const self = process.getuid?.();
  if (self === undefined || parent.uid === self) return;
  // Cellar's own layout promises this; a different owner means someone changed it under us.
  throw new Error(`${dirname(path)} belongs to uid ${parent.uid}, not to Cellar (uid ${self}); refusing to create ${path} in it`);
}

/**
 * Removes a tree. A directory that belongs to another user is emptied by a child running as that
 * user (so a link planted inside cannot turn root's removal elsewhere), then removed; Cellar's own
 * directories are walked. No-op when `path` is gone.
 */
export async function removeTree(path: string, depth = 0): Promise<void> {
  assert(depth <= ownTreeDepthMax, `${path}: Cellar's own trees are at most ${ownTreeDepthMax} deep`);
  let stats;
  try {
    stats = await lstat(path);
  } catch (error) {
    if (isCode(error, 'ENOENT')) return;
    throw error;
  }
  if (!stats.isDirectory()) {
    await unlink(path).catch((error: unknown) => {
      if (!isCode(error, 'ENOENT')) throw error;
    });
    return;
  }
  const self = process.getuid?.() ?? stats.uid;
  if (stats.uid !== self) {
    await run(findBinary, [path, '-mindepth', '1', '-delete'], { runAs: { name: `uid ${stats.uid}`, uid: stats.uid, gid: stats.gid, switchUser: true }, timeoutMs: emptyTreeMsMax });
  } else {
    for (const entry of await readdir(path)) await removeTree(join(path, entry), depth + 1);
  }
  await rmdir(path).catch((error: unknown) => {
    if (!isCode(error, 'ENOENT')) throw error;
  });
}

/**
 * Copies the contents of `source` into the existing empty directory `target`: a tar reading as
 * the source's owner piped into a tar writing as the target's owner. Neither side runs as root, so
 * a link planted in the source reads nothing its owner could not, and the copy belongs to the
 * target's owner without a chown.
 */
export async function copyTreeBetween(source: string, sourceOwner: RunAs, target: string, targetOwner: RunAs): Promise<void> {
  const reader = spawnAs(tarBinary, ['-C', source, '-cf', '-', '.'], sourceOwner, ['ignore', 'pipe', 'pipe']);
  const pipe = reader.child.stdout;
  assert(pipe !== null, 'the reading tar has a stdout pipe');
  // The writer reads the reader's pipe itself: the tens of megabytes of a data directory do not
  // pass through Cellar's event loop. Cellar's end of that pipe is closed once the writer has it.
  const writer = spawnAs(tarBinary, ['-C', target, '--no-same-owner', '--preserve-permissions', '-xf', '-'], targetOwner, [pipe, 'ignore', 'pipe']);
  pipe.destroy();
  const stop = (): void => {
    reader.child.kill('SIGKILL');
    writer.child.kill('SIGKILL');
  };
  const timer = setTimeout(stop, copyTreeMsMax);
  // A copy must not outlive the step that started it.
  const stepSignal = currentAbortSignal();
  stepSignal?.addEventListener('abort', stop, { once: true });
  try {
    const [readEnd, writeEnd] = await Promise.all([reader.ended, writer.ended]);
    if (readEnd !== 0 || writeEnd !== 0) {
      throw new Error(`copying ${source} to ${target} failed (tar read ${readEnd}, write ${writeEnd})${formatTail(reader.stderr() + writer.stderr())}`);
    }
  } finally {
    clearTimeout(timer);
    stepSignal?.removeEventListener('abort', stop);
  }
}

function spawnAs(binary: string, args: readonly string[], owner: RunAs, stdio: ['ignore' | 'pipe' | Readable, 'ignore' | 'pipe', 'pipe']) {
  const child = spawn(binary, args, { cwd: '/', env: { LC_ALL: 'C' }, stdio, ...(owner.switchUser ? { uid: owner.uid, gid: owner.gid } : {}) });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 4096) stderr += chunk.toString('utf8');
  });
  const ended = new Promise<number | string>((resolve) => {
    child.once('error', (error) => resolve(error.message));
    child.once('close', (code, signal) => resolve(code ?? signal ?? 'unknown'));
  });
  return { child, ended, stderr: () => stderr };
}
