import { constants } from 'node:fs';
import { lstat, open, opendir, stat, statfs } from 'node:fs/promises';
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
 * A data directory has a few thousand files per database. An entry costs ~50 µs (53 000 entries
 * of /usr/share in 2.4–3.8 s on a loaded 2-core machine), so this many fit within the operation's
 * 30 s bound; past it the walk stops with its own error rather than the bound's.
 */
export const usageEntriesMax = 500_000;
/** Entries of one directory looked at at once: enough to hide the latency of each lstat, few enough to stay polite. */
const lstatConcurrency = 32;
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

/**
 * Bytes under `path`, itself included. Each directory is opened with O_NOFOLLOW and read through
 * its descriptor (/proc/self/fd), so a directory swapped for a link between the look and the read
 * is never entered: root must not be led into another user's choice of tree.
 */
async function treeBytes(path: string, walk: Walk, apartName: string | null = null): Promise<{ total: bigint; apart: bigint }> {
  let handle;
  try {
    handle = await open(path, directoryFlags);
  } catch (error) {
    // ELOOP: a link where a directory was (swapped since the lstat): it counts as nothing more.
    if (isGone(error) || (error as NodeJS.ErrnoException).code === 'ELOOP') return { total: 0n, apart: 0n };
    throw error;
  }
  try {
    const self = `/proc/self/fd/${handle.fd}`;
    const own = await handle.stat();
    let total = BigInt(own.blocks) * BigInt(statBlockBytes);
    let apart = 0n;
    const directory = await opendir(self, { bufferSize: lstatConcurrency });
    const batch: string[] = [];
    const flush = async (): Promise<void> => {
      const sizes = await Promise.all(batch.map((name) => entryBytes(`${self}/${name}`, walk)));
      sizes.forEach((size, index) => {
        if (batch[index] === apartName) apart += size;
        else total += size;
      });
      batch.length = 0;
    };
    for await (const entry of directory) {
      walk.entries += 1;
      if (walk.entries > walk.entriesMax) {
        throw new PermanentError(`the usage walk of ${path} visited more than ${walk.entriesMax} entries (usageEntriesMax) and stopped; the data directory holds more files than Cellar measures`);
      }
      batch.push(entry.name);
      if (batch.length >= lstatConcurrency) {
        throwIfAborted();
        await flush();
      }
    }
    await flush();
    return { total, apart };
  } finally {
    await handle.close();
  }
}

async function entryBytes(path: string, walk: Walk): Promise<bigint> {
  let stats;
  try {
    stats = await lstat(path, { bigint: true });
  } catch (error) {
    if (isGone(error)) return 0n;
    throw error;
  }
  if (stats.isDirectory()) return (await treeBytes(path, walk)).total;
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
