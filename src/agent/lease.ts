import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { DesiredInstance } from '../dataplane/agent-protocol.js';
import { readSmallFile, replaceFile } from '../postgres/files.js';
import { selfRunAs } from '../postgres/osuser.js';
import { agentDirectory } from './identity.js';

/**
 * The host's lease (docs/HOSTS.md, "Heartbeats and the lease"), on the system-wide monotonic
 * clock: `process.hrtime.bigint()` reads CLOCK_MONOTONIC, the same clock in the agent and in the
 * guard, unaffected by changes to the wall clock.
 */

export const leaseFileName = 'lease.json';
/** A lease file lists at most one entry per instance; this bounds what the guard reads. */
export const leaseFileBytesMax = 256 * 1024;

export interface FencedPrimary {
  readonly instanceId: string;
  /** The postmaster, and its start time (field 22 of /proc/<pid>/stat): a reused pid is not it. */
  readonly pid: number;
  readonly startTicks: number;
}

export interface LeaseFile {
  /**
   * The kernel's boot id: CLOCK_MONOTONIC starts again at each boot, so a lease written before a
   * reboot means nothing after it (it counts as expired).
   */
  readonly bootId: string;
  /** Decimal nanoseconds of CLOCK_MONOTONIC (a bigint does not fit a JSON number). */
  readonly expiresAtMonotonicNs: string;
  /** The primaries to fence when it runs out: only those with `fenceOnLeaseLoss`. */
  readonly primaries: readonly FencedPrimary[];
}

const nanosecondsPerMs = 1_000_000n;

export function monotonicNowNs(): bigint {
  return process.hrtime.bigint();
}

/** What the agent holds in memory: until when, and what the control plane last wanted of each instance. */
export class Lease {
  private expiresAtNs: bigint | null = null;
  private desired = new Map<string, DesiredInstance>();

  /** A renewal: the lease runs `leaseMs` from `sentAtNs`, the moment before the heartbeat left. */
  renew(sentAtNs: bigint, leaseMs: number, desired: readonly DesiredInstance[]): void {
    const expiresAtNs = sentAtNs + BigInt(leaseMs) * nanosecondsPerMs;
    // Beats are sent one at a time, so this only moves forward; never shorten what was granted.
    if (this.expiresAtNs === null || expiresAtNs > this.expiresAtNs) this.expiresAtNs = expiresAtNs;
    this.desired = new Map(desired.map((instance) => [instance.instanceId, instance]));
  }

  /** After an agent restart: the lease its predecessor wrote still runs on the same clock. */
  restore(expiresAtNs: bigint): void {
    if (this.expiresAtNs === null || expiresAtNs > this.expiresAtNs) this.expiresAtNs = expiresAtNs;
  }

  get expiresAtMonotonicNs(): bigint | null {
    return this.expiresAtNs;
  }

  held(nowNs: bigint = monotonicNowNs()): boolean {
    return this.expiresAtNs !== null && nowNs < this.expiresAtNs;
  }

  leftMs(nowNs: bigint = monotonicNowNs()): number {
    if (this.expiresAtNs === null || nowNs >= this.expiresAtNs) return 0;
    return Number((this.expiresAtNs - nowNs) / nanosecondsPerMs);
  }

  desiredOf(instanceId: string): DesiredInstance | undefined {
    return this.desired.get(instanceId);
  }

  desiredInstances(): DesiredInstance[] {
    return [...this.desired.values()];
  }
}

export function leaseFilePath(dataDir: string): string {
  return join(agentDirectory(dataDir), leaseFileName);
}

/** Atomic (a staging file renamed over it), root's 0600, written without following a link. */
export async function writeLeaseFile(dataDir: string, file: LeaseFile): Promise<void> {
  await replaceFile(leaseFilePath(dataDir), `${JSON.stringify(file)}\n`, 0o600, selfRunAs());
}

/** undefined when no lease was ever written; an error when the file is not a lease file. */
export async function readLeaseFile(dataDir: string): Promise<LeaseFile | undefined> {
  const path = leaseFilePath(dataDir);
  const text = await readSmallFile(path, leaseFileBytesMax);
  if (text === undefined) return undefined;
  return parseLeaseFile(text, path);
}

export function parseLeaseFile(text: string, path: string): LeaseFile {
  const parsed = JSON.parse(text) as Partial<LeaseFile> | null;
  const expires = parsed?.expiresAtMonotonicNs;
  if (typeof expires !== 'string' || !/^\d{1,30}$/.test(expires) || typeof parsed?.bootId !== 'string' || !Array.isArray(parsed.primaries)) {
    throw new Error(`${path} is not a lease file {bootId, expiresAtMonotonicNs, primaries}`);
  }
  const primaries = parsed.primaries.filter(
    (entry): entry is FencedPrimary =>
      typeof entry?.instanceId === 'string' && Number.isInteger(entry.pid) && entry.pid > 1 && Number.isSafeInteger(entry.startTicks),
  );
  return { bootId: parsed.bootId, expiresAtMonotonicNs: expires, primaries };
}

const bootIdPath = '/proc/sys/kernel/random/boot_id';
let bootIdCache: string | undefined;

/** This boot's id (a UUID); read once, it cannot change while the process runs. */
export async function currentBootId(): Promise<string> {
  bootIdCache ??= (await readFile(bootIdPath, 'utf8')).trim();
  return bootIdCache;
}

/** When the lease in the file runs out on this boot's monotonic clock: at once (0n) if written in an earlier boot. */
export async function leaseFileExpiryNs(file: LeaseFile): Promise<bigint> {
  return file.bootId === (await currentBootId()) ? BigInt(file.expiresAtMonotonicNs) : 0n;
}
