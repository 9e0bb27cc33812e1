import { assert } from './assert.js';
import { formatBytes } from './bytes.js';
import { bytesPerStorageGb } from './sizes.js';

/**
 * Which hosts new instances of a cluster go on (docs/HOSTS.md, "Placement"). Pure: the caller
 * reads the fleet and the cluster's instances, and records the placements it accepts.
 *
 * An instance needs an active host with a free slot, its memory and its disk. A cluster's
 * instances go on distinct hosts (a failed host then takes one member, not two), unless the cell
 * co-locates (one host: nowhere else to go). Among the candidates, in order: a zone the cluster
 * does not use yet (a zone failure then takes as few members as the fleet allows), most free
 * slots, most free memory, name. Each instance is placed in turn, and what it takes counts
 * against its host for the next one.
 *
 * On a host whose data filesystem is measured, an instance also needs room above the host's disk
 * reserve (docs/STORAGE.md, "Host disk reserve"): what is available, less what the instances there
 * were allocated and have not written yet, less the reserve, must hold the new allocation.
 *
 * This greedy order is complete: with distinct hosts every candidate fits one instance, so a
 * placement exists exactly when there are `count` candidates; co-located, each pick uses one unit
 * of a host's room, so it exists exactly when the room adds up to `count`. And it keeps zones
 * apart as long as an unused zone has room, since such a candidate always ranks first.
 */

/** The one label that takes new instances; every other one (joining, draining, lost, …) does not. */
export const placeableHostLabel = 'active';

export interface HostUsage {
  readonly memoryMb: number;
  readonly diskGb: number;
  readonly instances: number;
}

/** The share of a host's data filesystem kept free (`CELLAR_HOST_DISK_RESERVE_PERCENT`), and its bounds. */
export const hostDiskReservePercentDefault = 10;
export const hostDiskReservePercentMin = 0;
export const hostDiskReservePercentMax = 50;

/** What new allocations must leave free on a measured host, and the bytes in one GB of an allocation. */
export interface DiskReserve {
  readonly percent: number;
  readonly bytesPerStorageGb: number;
}

export const defaultDiskReserve: DiskReserve = { percent: hostDiskReservePercentDefault, bytesPerStorageGb };

/** One live instance on a host: its cluster's allocation and what it takes now. */
export interface MeasuredInstance {
  readonly storageGb: number;
  /** Its data directory and WAL as last measured; 0 until first measured (all of its allocation is still to come). */
  readonly usedBytes: number;
}

/** A host's data filesystem as last measured, and the instances that will write to it. */
export interface MeasuredDisk {
  readonly totalBytes: number;
  /** Free to a process that is not root: what Postgres can still write. */
  readonly availableBytes: number;
  readonly instances: readonly MeasuredInstance[];
}

export interface PlacementHost {
  readonly id: string;
  readonly name: string;
  readonly zone: string;
  /** The host machine's label. */
  readonly label: string;
  readonly memoryMb: number;
  readonly diskGb: number;
  readonly slots: number;
  /** What the live instances on the host already take. */
  readonly used: HostUsage;
  /** Its data filesystem; null: not measured yet (only the declared `diskGb` counts). */
  readonly measured: MeasuredDisk | null;
}

export interface PlacementRequest {
  /** Instances to place. */
  readonly count: number;
  /** Each instance's memory (`instanceMemoryMb` of its size) and disk (`storageGb`). */
  readonly memoryMb: number;
  readonly diskGb: number;
  /** Hosts of the cluster's live instances: none of them takes another (unless `colocate`). */
  readonly usedHostIds: readonly string[];
  /** Zones of the cluster's live instances. */
  readonly usedZones: readonly string[];
  /** A cell of one host: instances share it. */
  readonly colocate: boolean;
  readonly reserve: DiskReserve;
}

export interface Placement {
  readonly hostId: string;
  readonly zone: string;
  /** For the `instance_placed` event: why this host won. */
  readonly why: string;
}

export interface HostExclusion {
  readonly hostId: string;
  readonly name: string;
  /** Each a phrase: `draining`, `no free slot (16 of 16 used)`, `only 512 MB of 8192 MB memory free (1024 MB needed)`, … */
  readonly reasons: readonly string[];
}

export type PlacementResult =
  | { readonly ok: true; readonly placements: readonly Placement[] }
  | {
      readonly ok: false;
      /** What is missing, naming every host that cannot take an instance and why: the 409's message. */
      readonly missing: string;
      readonly excluded: readonly HostExclusion[];
    };

interface Candidate {
  readonly host: PlacementHost;
  instances: number;
  memoryMb: number;
  diskGb: number;
  /** What the measured data filesystem can still promise to new instances; null: not measured. */
  allocatableBytes: number | null;
}

/** Bytes already promised on the filesystem: each instance's allocation less what it has written, never below 0. */
export function outstandingBytes(disk: MeasuredDisk, perStorageGb: number): number {
  return disk.instances.reduce((sum, instance) => sum + Math.max(0, instance.storageGb * perStorageGb - instance.usedBytes), 0);
}

/** The bytes the reserve keeps free on a filesystem of that size. */
export function reserveBytes(totalBytes: number, percent: number): number {
  return Math.ceil((totalBytes * percent) / 100);
}

/** What new allocations may still take: available, less outstanding allocations, less the reserve (negative: past it already). */
export function allocatableBytes(disk: MeasuredDisk, reserve: DiskReserve): number {
  return disk.availableBytes - outstandingBytes(disk, reserve.bytesPerStorageGb) - reserveBytes(disk.totalBytes, reserve.percent);
}

/**
 * Why the measured filesystem cannot take `neededBytes` more, with the numbers; null: it can.
 * `data filesystem: 14 GB available, less 1.0 GB allocated to its instances and not yet written,
 * less a 10 GB reserve (10 % of 100 GB), leaves 3.0 GB (5.0 GB needed)`.
 */
export function diskReserveShortage(disk: MeasuredDisk, reserve: DiskReserve, neededBytes: number): string | null {
  const left = allocatableBytes(disk, reserve);
  if (left >= neededBytes) return null;
  return (
    `data filesystem: ${formatBytes(disk.availableBytes)} available, less ${formatBytes(outstandingBytes(disk, reserve.bytesPerStorageGb))} allocated to its instances and not yet written, ` +
    `less a ${formatBytes(reserveBytes(disk.totalBytes, reserve.percent))} reserve (${reserve.percent} % of ${formatBytes(disk.totalBytes)}), leaves ${formatBytes(Math.max(0, left))} (${formatBytes(neededBytes)} needed)`
  );
}

/**
 * Why a host cannot take a storage resize of `count` instances of a cluster on it by `growthGb`
 * each (declared disk, then the measured reserve); empty: it can. Any label: the instances are
 * there already.
 */
export function growthRefusals(host: PlacementHost, count: number, growthGb: number, reserve: DiskReserve): string[] {
  assert(Number.isInteger(count) && count >= 0 && growthGb >= 0, `growth of ${count} instances by ${growthGb} GB`);
  const reasons: string[] = [];
  const neededGb = count * growthGb;
  const freeDiskGb = host.diskGb - host.used.diskGb;
  if (freeDiskGb < neededGb) reasons.push(`only ${Math.max(0, freeDiskGb)} GB of ${host.diskGb} GB disk free (${neededGb} GB needed)`);
  const shortage = host.measured === null ? null : diskReserveShortage(host.measured, reserve, neededGb * reserve.bytesPerStorageGb);
  if (shortage !== null) reasons.push(shortage);
  return reasons;
}

export function placeInstances(hosts: readonly PlacementHost[], request: PlacementRequest): PlacementResult {
  assert(Number.isInteger(request.count) && request.count >= 1, `placement of ${request.count} instances`);
  assert(request.memoryMb >= 0 && request.diskGb >= 0, `placement of instances of ${request.memoryMb} MB and ${request.diskGb} GB`);
  assert(request.reserve.percent >= 0 && request.reserve.percent < 100 && request.reserve.bytesPerStorageGb > 0, `disk reserve of ${request.reserve.percent} % with ${request.reserve.bytesPerStorageGb} bytes per GB`);
  const usedHostIds = new Set(request.usedHostIds);
  const excluded: HostExclusion[] = [];
  const candidates: Candidate[] = [];
  for (const host of [...hosts].sort(byName)) {
    const reasons = exclusionReasons(host, request, usedHostIds);
    if (reasons.length > 0) excluded.push({ hostId: host.id, name: host.name, reasons });
    else candidates.push({ host, ...host.used, allocatableBytes: host.measured === null ? null : allocatableBytes(host.measured, request.reserve) });
  }
  const room = candidates.reduce((sum, candidate) => sum + (request.colocate ? roomFor(candidate, request) : 1), 0);
  if (room < request.count) return { ok: false, missing: missingText(request, candidates, excluded), excluded };

  const zones = new Set(request.usedZones);
  const placements: Placement[] = [];
  for (let index = 0; index < request.count; index++) {
    const open = candidates.filter((candidate) => roomFor(candidate, request) > 0);
    const best = open.sort((a, b) => rank(a, b, zones))[0];
    assert(best !== undefined, `placement ran out of room after ${index} of ${request.count}, having counted room for ${room}`);
    const newZone = !zones.has(best.host.zone);
    placements.push({
      hostId: best.host.id,
      zone: best.host.zone,
      why: `zone ${best.host.zone} ${newZone ? 'not yet used by the cluster' : 'already used by the cluster (no host in an unused zone has room)'}; ${best.host.slots - best.instances} free slots, ${best.host.memoryMb - best.memoryMb} MB free memory`,
    });
    zones.add(best.host.zone);
    best.instances += 1;
    best.memoryMb += request.memoryMb;
    best.diskGb += request.diskGb;
    if (best.allocatableBytes !== null) best.allocatableBytes -= allocationBytes(request);
    // Distinct hosts: a host takes one instance of a placement at most.
    if (!request.colocate) candidates.splice(candidates.indexOf(best), 1);
  }
  return { ok: true, placements };
}

/** Why a host cannot take one instance of the request; none: it can. */
export function exclusionReasons(host: PlacementHost, request: PlacementRequest, usedHostIds: ReadonlySet<string>): string[] {
  if (host.label !== placeableHostLabel) return [host.label];
  const reasons: string[] = [];
  if (!request.colocate && usedHostIds.has(host.id)) reasons.push('holds an instance of this cluster already');
  if (host.used.instances >= host.slots) reasons.push(`no free slot (${host.used.instances} of ${host.slots} used)`);
  const freeMemoryMb = host.memoryMb - host.used.memoryMb;
  if (freeMemoryMb < request.memoryMb) reasons.push(`only ${Math.max(0, freeMemoryMb)} MB of ${host.memoryMb} MB memory free (${request.memoryMb} MB needed)`);
  const freeDiskGb = host.diskGb - host.used.diskGb;
  if (freeDiskGb < request.diskGb) reasons.push(`only ${Math.max(0, freeDiskGb)} GB of ${host.diskGb} GB disk free (${request.diskGb} GB needed)`);
  const shortage = host.measured === null ? null : diskReserveShortage(host.measured, request.reserve, allocationBytes(request));
  if (shortage !== null) reasons.push(shortage);
  return reasons;
}

function allocationBytes(request: PlacementRequest): number {
  return request.diskGb * request.reserve.bytesPerStorageGb;
}

/** How many more instances of the request fit on the candidate, by slots, memory, declared disk and the measured reserve. */
function roomFor(candidate: Candidate, request: PlacementRequest): number {
  const bySlots = candidate.host.slots - candidate.instances;
  const byMemory = request.memoryMb === 0 ? bySlots : Math.floor((candidate.host.memoryMb - candidate.memoryMb) / request.memoryMb);
  const byDisk = request.diskGb === 0 ? bySlots : Math.floor((candidate.host.diskGb - candidate.diskGb) / request.diskGb);
  const byReserve =
    candidate.allocatableBytes === null ? bySlots : request.diskGb === 0 ? (candidate.allocatableBytes >= 0 ? bySlots : 0) : Math.floor(candidate.allocatableBytes / allocationBytes(request));
  return Math.max(0, Math.min(bySlots, byMemory, byDisk, byReserve));
}

function rank(a: Candidate, b: Candidate, usedZones: ReadonlySet<string>): number {
  return (
    Number(usedZones.has(a.host.zone)) - Number(usedZones.has(b.host.zone)) ||
    b.host.slots - b.instances - (a.host.slots - a.instances) ||
    b.host.memoryMb - b.memoryMb - (a.host.memoryMb - a.memoryMb) ||
    byName(a.host, b.host)
  );
}

function byName(a: PlacementHost, b: PlacementHost): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/**
 * "3 instances need 3 distinct active hosts with a free slot, 1024 MB and 10 GB each; 2 have
 * room (h1, h2); h3: no free slot (16 of 16 used); h4: draining".
 */
function missingText(request: PlacementRequest, candidates: readonly Candidate[], excluded: readonly HostExclusion[]): string {
  const count = request.count;
  const each = `a free slot, ${request.memoryMb} MB and ${request.diskGb} GB each`;
  const need = request.colocate
    ? `${count} ${plural(count, 'instance needs', 'instances need')} room on active hosts with ${each}`
    : `${count} ${plural(count, 'instance needs', 'instances need')} ${count} distinct active ${plural(count, 'host', 'hosts')} with ${each}`;
  const have = request.colocate
    ? `there is room for ${candidates.reduce((sum, candidate) => sum + roomFor(candidate, request), 0)}${candidates.length === 0 ? '' : ` (${candidates.map((candidate) => `${candidate.host.name}: ${roomFor(candidate, request)}`).join(', ')})`}`
    : `${candidates.length} ${plural(candidates.length, 'has', 'have')} room${candidates.length === 0 ? '' : ` (${candidates.map((candidate) => candidate.host.name).join(', ')})`}`;
  const why = candidates.length + excluded.length === 0 ? ['the cell has no hosts'] : excluded.map((exclusion) => `${exclusion.name}: ${exclusion.reasons.join(', ')}`);
  return [need, have, ...why].join('; ');
}

function plural(count: number, one: string, many: string): string {
  return count === 1 ? one : many;
}
