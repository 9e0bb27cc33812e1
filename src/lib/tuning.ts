import { type CatalogueEntry, memoryMbOf, parseSettingValue } from './settings.js';

/**
 * Kernel settings recommended for a database host (`cellar host tune`, docs/STORAGE.md "Kernel
 * tunables"). Pure: a function of the host's memory and of the instances placed on it, so it is
 * recomputed whenever the set of instances changes and `host tune` runs again.
 */

/** Where a setting lives: a sysctl under /proc/sys, or the one sysfs file for transparent huge pages. */
export type TunableTarget = 'sysctl' | 'sysfs';

/**
 * How the current value is judged: `equal` must match; `atLeast` and `atMost` are limits a value
 * beyond already satisfies (a higher file limit than recommended is not lowered).
 */
export type TunableComparison = 'equal' | 'atLeast' | 'atMost';

export interface Recommendation {
  /** A sysctl key (`vm.swappiness`), or `transparent_hugepage` for /sys/kernel/mm/transparent_hugepage/enabled. */
  readonly name: string;
  readonly target: TunableTarget;
  readonly recommended: string;
  readonly comparison: TunableComparison;
  /** One sentence. */
  readonly reason: string;
}

export interface TuningHost {
  readonly memoryMb: number;
  readonly swapMb: number;
}

/** What of an instance sizes the host's kernel settings. */
export interface TuningInstance {
  readonly sharedBuffersMb: number;
  readonly maxConnections: number;
}

export const transparentHugePageName = 'transparent_hugepage';
export const hugePageSizeMb = 2;
/**
 * Shared memory Postgres allocates beyond shared_buffers: WAL buffers (1/32 of shared_buffers up to
 * 16 MB), buffer descriptors and their hash (about 2 % of it), fixed tables, and a part per
 * connection (PGPROC, lock slots). `postgres -C shared_memory_size` on 15 gives 41 MB for 32MB of
 * buffers and 100 connections, 143 MB for 128MB/100, 555 MB for 512MB/200; this estimate is at or
 * above each.
 */
export const walBuffersMbMax = 16;
export const bufferDescriptorsShare = 0.02;
export const sharedMemoryFixedMb = 8;
export const sharedMemoryPerConnectionKb = 64;
/** Huge pages are taken from memory whether used or not: never more than this share of it. */
export const hugePagesShareMax = 0.5;
/** Kept out of the commit limit for the kernel, page tables and page cache a host needs to work. */
export const commitReserveMbMin = 512;
export const commitReserveShare = 0.05;
export const overcommitRatioMin = 50;
export const overcommitRatioMax = 100;
/** Writeback starts at about 1/256 of memory, within these bounds; the hard cap is four times that. */
export const dirtyBackgroundBytesMin = 64 * 1024 * 1024;
export const dirtyBackgroundBytesMax = 256 * 1024 * 1024;
export const dirtyBytesPerBackground = 4;
/** Postgres's max_files_per_process default, and processes an instance runs besides its backends. */
export const filesPerProcess = 1_000;
export const backgroundProcessesPerInstance = 16;
export const fileMaxFloor = 2_097_152;
export const somaxconnFloor = 4_096;
export const keepaliveTimeSeconds = 60;

function megabytes(mb: number): string {
  return `${Math.round(mb).toLocaleString('en-US')} MB`;
}

/** The estimated shared memory segment of one instance, MB. */
export function sharedMemoryMbOf(instance: TuningInstance): number {
  const walBuffersMb = Math.min(walBuffersMbMax, instance.sharedBuffersMb / 32);
  return instance.sharedBuffersMb * (1 + bufferDescriptorsShare) + walBuffersMb + sharedMemoryFixedMb + (instance.maxConnections * sharedMemoryPerConnectionKb) / 1024;
}

/** The huge pages that hold every instance's shared memory, capped at a share of the host's memory. */
export function hugePagesFor(host: TuningHost, instances: readonly TuningInstance[]): { pages: number; sharedMemoryMb: number; capped: boolean } {
  const sharedMemoryMb = instances.reduce((sum, instance) => sum + sharedMemoryMbOf(instance), 0);
  const wanted = Math.ceil(sharedMemoryMb / hugePageSizeMb);
  const allowed = Math.floor((host.memoryMb * hugePagesShareMax) / hugePageSizeMb);
  return { pages: Math.min(wanted, allowed), sharedMemoryMb, capped: wanted > allowed };
}

/**
 * CommitLimit is swap + (memory − huge pages) × ratio / 100; huge pages are never counted as
 * committed. The ratio that puts the limit at what is left after the reserve, so an allocation
 * past it fails with an error Postgres reports instead of the OOM killer picking the postmaster.
 */
export function overcommitRatioFor(host: TuningHost, hugePagesMb: number): number {
  const ordinaryMb = Math.max(1, host.memoryMb - hugePagesMb);
  const reserveMb = Math.max(commitReserveMbMin, host.memoryMb * commitReserveShare);
  const ratio = Math.floor((100 * (ordinaryMb - reserveMb - host.swapMb)) / ordinaryMb);
  return Math.min(overcommitRatioMax, Math.max(overcommitRatioMin, ratio));
}

/**
 * The recommendations, in the order they are best applied: huge pages and the ratio before strict
 * overcommit (turning it on first could refuse allocations under the default ratio of 50).
 */
export function recommend(host: TuningHost, instances: readonly TuningInstance[]): Recommendation[] {
  const huge = hugePagesFor(host, instances);
  const hugePagesMb = huge.pages * hugePageSizeMb;
  // Whole megabytes, so the file and the table stay readable.
  const dirtyBackground = Math.min(dirtyBackgroundBytesMax, Math.max(dirtyBackgroundBytesMin, Math.floor(host.memoryMb / 256) * 1024 * 1024));
  const connections = instances.reduce((sum, instance) => sum + instance.maxConnections + backgroundProcessesPerInstance, 0);
  const fileMax = Math.max(fileMaxFloor, connections * filesPerProcess);
  const hugeReason =
    instances.length === 0
      ? 'No instance runs here, so no memory is reserved as huge pages (reserved pages are lost to everything else).'
      : `Holds the shared memory of the ${instances.length} instance(s) here (${megabytes(huge.sharedMemoryMb)}) in 2 MB pages: smaller page tables per backend and shared buffers that are never swapped${huge.capped ? `; capped at ${hugePagesShareMax * 100} % of memory` : ''}.`;
  return [
    { name: 'vm.nr_hugepages', target: 'sysctl', recommended: String(huge.pages), comparison: 'equal', reason: hugeReason },
    {
      name: 'vm.overcommit_ratio',
      target: 'sysctl',
      recommended: String(overcommitRatioFor(host, hugePagesMb)),
      comparison: 'equal',
      reason: `With strict overcommit, lets processes commit the memory left after huge pages and a reserve of ${megabytes(Math.max(commitReserveMbMin, host.memoryMb * commitReserveShare))}, counting ${megabytes(host.swapMb)} of swap.`,
    },
    { name: 'vm.overcommit_memory', target: 'sysctl', recommended: '2', comparison: 'equal', reason: 'Strict accounting: an allocation past the limit fails in the backend that asked, instead of the OOM killer ending the postmaster and every connection with it.' },
    { name: 'vm.swappiness', target: 'sysctl', recommended: '1', comparison: 'atMost', reason: 'Drops page cache before swapping out database memory, while keeping swap as a last resort.' },
    {
      name: 'vm.dirty_background_bytes',
      target: 'sysctl',
      recommended: String(dirtyBackground),
      comparison: 'equal',
      reason: `Starts writeback at ${megabytes(dirtyBackground / 1024 / 1024)} of dirty pages rather than a share of all memory, so a checkpoint's fsync does not meet gigabytes at once.`,
    },
    {
      name: 'vm.dirty_bytes',
      target: 'sysctl',
      recommended: String(dirtyBackground * dirtyBytesPerBackground),
      comparison: 'equal',
      reason: 'Throttles a heavy writer before dirty pages pile up into a flush that stalls every process for seconds.',
    },
    { name: transparentHugePageName, target: 'sysfs', recommended: 'never', comparison: 'equal', reason: 'Compaction and khugepaged stall backends unpredictably; Postgres uses the explicit huge pages above instead.' },
    {
      name: 'fs.file-max',
      target: 'sysctl',
      recommended: String(fileMax),
      comparison: 'atLeast',
      reason: `Every backend may hold ${filesPerProcess.toLocaleString('en-US')} files open; room for all ${connections.toLocaleString('en-US')} connections and background processes here, with a floor for the rest of the host.`,
    },
    { name: 'net.core.somaxconn', target: 'sysctl', recommended: String(somaxconnFloor), comparison: 'atLeast', reason: 'A burst of new connections waits in the listen queue of the proxy and the instances instead of being refused.' },
    {
      name: 'net.ipv4.tcp_keepalive_time',
      target: 'sysctl',
      recommended: String(keepaliveTimeSeconds),
      comparison: 'atMost',
      reason: 'Finds a vanished client or peer within minutes rather than two hours, so its backend, locks and slot are freed.',
    },
  ];
}

/** Whether `current` already satisfies the recommendation; null when it cannot be compared (unknown, or not a number where one is needed). */
export function isSatisfied(recommendation: Recommendation, current: string): boolean | null {
  if (recommendation.comparison === 'equal') return current.trim() === recommendation.recommended;
  const value = Number(current.trim());
  if (current.trim() === '' || !Number.isFinite(value)) return null;
  const wanted = Number(recommendation.recommended);
  return recommendation.comparison === 'atLeast' ? value >= wanted : value <= wanted;
}

// Catalogue-free entries for the two settings read here, as pg_settings describes them on 15.
const sharedBuffersEntry: CatalogueEntry = { name: 'shared_buffers', type: 'integer', unit: '8kB', min: null, max: null, enumValues: null, apply: 'restart', noLowerOnReplicas: false };
const maxConnectionsEntry: CatalogueEntry = { name: 'max_connections', type: 'integer', unit: null, min: null, max: null, enumValues: null, apply: 'restart', noLowerOnReplicas: true };

/** The tuning inputs of an instance from what it runs with (`effectiveSettings`): shared_buffers in MB, max_connections. */
export function tuningInstanceOf(settings: Readonly<Record<string, string>>): TuningInstance {
  const sharedBuffers = parseSettingValue(sharedBuffersEntry, settings['shared_buffers'] ?? '128MB');
  const maxConnections = parseSettingValue(maxConnectionsEntry, settings['max_connections'] ?? '100');
  const sharedBuffersMb = typeof sharedBuffers === 'number' ? (memoryMbOf(sharedBuffersEntry, sharedBuffers) ?? 0) : 0;
  return { sharedBuffersMb, maxConnections: typeof maxConnections === 'number' ? maxConnections : 0 };
}
