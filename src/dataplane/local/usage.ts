import { closeSync, constants, fstatSync, lstatSync, openSync, opendirSync } from 'node:fs';
import { stat, statfs } from 'node:fs/promises';
import { setImmediate } from 'node:timers/promises';
import { throwIfAborted } from '../../lib/abort.js';
import { PermanentError } from '../../lib/failure.js';
import type { FilesystemUsage, HostFilesystem, HostUsage, InstanceUsage } from '../dataplane.js';

/**
 * Bytes on disk under a data directory, its WAL apart (docs/STORAGE.md, "Measured use"). A walk
 * like `du -s`, bounded: it counts what the files take on disk (allocated blocks, not their
 * lengths), never follows a link (a link counts as itself), and stops with an error past a cap on
 * the entries it visits. Files that vanish under it (WAL recycled, a temporary file) count as gone.
 */

/**
 * A data directory has a few thousand files per database. An entry costs ~10 µs (2,700 entries in
 * ~26 ms of CPU), ten times that on a loaded machine: this many fit within the operation's 30 s
 * bound, and past it the walk stops with its own error rather than the bound's.
 */
export const usageEntriesMax = 500_000;
/**
 * Entries looked at between two turns of the event loop. The walk runs synchronously, in slices of
 * this many, so a large tree never holds up the engine's other steps for more than a few
 * milliseconds; a promise per lstat (the thread pool) took three times the CPU (~70 ms a walk).
 */
const entriesPerSlice = 256;
/** lstat's st_blocks counts 512-byte units whatever the filesystem's block size (POSIX). */
const statBlockBytes = 512;
const walDirectoryName = 'pg_wal';

const directoryFlags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

interface Walk {
  entries: number;
  readonly entriesMax: number;
}

function isGone(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/** Counts one entry; true every `entriesPerSlice` entries, when the walk should let the event loop turn. */
function visit(walk: Walk, path: string): boolean {
  walk.entries += 1;
  if (walk.entries > walk.entriesMax) {
    throw new PermanentError(`the usage walk of ${path} visited more than ${walk.entriesMax} entries (usageEntriesMax) and stopped; the data directory holds more files than Cellar measures`);
  }
  return walk.entries % entriesPerSlice === 0;
}

/**
 * Bytes under `path`, itself included. Each directory is opened with O_NOFOLLOW and read through
 * its descriptor (/proc/self/fd), so a directory swapped for a link between the look and the read
 * is never entered: root must not be led into another user's choice of tree.
 */
async function treeBytes(path: string, walk: Walk, apartName: string | null = null): Promise<{ total: bigint; apart: bigint }> {
  let fd: number;
  try {
    fd = openSync(path, directoryFlags);
  } catch (error) {
    // ELOOP: a link where a directory was (swapped since the lstat): it counts as nothing more.
    if (isGone(error) || (error as NodeJS.ErrnoException).code === 'ELOOP') return { total: 0n, apart: 0n };
    throw error;
  }
  try {
    const self = `/proc/self/fd/${fd}`;
    let total = fstatSync(fd, { bigint: true }).blocks * BigInt(statBlockBytes);
    let apart = 0n;
    const directory = opendirSync(self, { bufferSize: entriesPerSlice });
    try {
      for (let entry = directory.readSync(); entry !== null; entry = directory.readSync()) {
        if (visit(walk, path)) {
          await setImmediate();
          throwIfAborted();
        }
        const found = entryBytes(`${self}/${entry.name}`, walk);
        const size = typeof found === 'bigint' ? found : await found;
        if (entry.name === apartName) apart += size;
        else total += size;
      }
    } finally {
      directory.closeSync();
    }
    return { total, apart };
  } finally {
    closeSync(fd);
  }
}

/** What one entry takes on disk; a directory's whole tree. A file costs one lstat and no promise of its own. */
function entryBytes(path: string, walk: Walk): bigint | Promise<bigint> {
  let stats;
  try {
    stats = lstatSync(path, { bigint: true });
  } catch (error) {
    if (isGone(error)) return 0n;
    throw error;
  }
  if (stats.isDirectory()) return treeBytes(path, walk).then(({ total }) => total);
  return stats.blocks * BigInt(statBlockBytes);
}

function toNumber(bytes: bigint): number {
  // Past 2^53 bytes (8 PiB) a number loses bytes, not the figure's meaning.
  return Number(bytes);
}

/** The filesystem holding `path`: its size, what is free, and what an unprivileged writer (Postgres) may still use. */
export async function filesystemUsage(path: string): Promise<FilesystemUsage> {
  const stats = await statfs(path, { bigint: true });
  return {
    path,
    totalBytes: toNumber(stats.blocks * stats.bsize),
    freeBytes: toNumber(stats.bfree * stats.bsize),
    availableBytes: toNumber(stats.bavail * stats.bsize),
  };
}

/**
 * The data directory without pg_wal, pg_wal alone (a link there counts as the link: Cellar never
 * makes one, and following it is what this walk must not do), and the filesystem they are on.
 */
export async function measureUsage(pgdata: string, entriesMax = usageEntriesMax): Promise<InstanceUsage> {
  const walk: Walk = { entries: 0, entriesMax };
  const { total, apart } = await treeBytes(pgdata, walk, walDirectoryName);
  return { dataBytes: toNumber(total), walBytes: toNumber(apart), filesystem: await filesystemUsage(pgdata) };
}

/**
 * The filesystems under the directories a host writes to, each once (directories on one device
 * share it): `{data: "/var/lib/cellar", backups: …, home: …}`, in that order.
 */
export async function hostUsage(directories: Readonly<Record<string, string>>): Promise<HostUsage> {
  const byDevice = new Map<bigint, { filesystem: FilesystemUsage; purposes: string[] }>();
  for (const [purpose, path] of Object.entries(directories)) {
    const device = (await stat(path, { bigint: true })).dev;
    const known = byDevice.get(device);
    if (known !== undefined) known.purposes.push(purpose);
    else byDevice.set(device, { filesystem: await filesystemUsage(path), purposes: [purpose] });
  }
  return { filesystems: [...byDevice.values()].map(({ filesystem, purposes }): HostFilesystem => ({ ...filesystem, purposes })) };
}
