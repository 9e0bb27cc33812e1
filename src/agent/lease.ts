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
/**
 * How long a peer must have gone without a grant for the failsafe to count the control plane as
 * gone for it: two heartbeat intervals (an alive control plane answers a peer every interval).
 */
export function failsafeSilenceMs(heartbeatMs: number): number {
  return 2 * heartbeatMs;
}

export class Lease {
  /** Until when primaries may serve: the control plane's grant, or the failsafe's extension of it. */
  private expiresAtNs: bigint | null = null;
  /** Until when the control plane's own grant runs (what peers are told). */
  private grantedUntilNs: bigint | null = null;
  /** Since when the control plane's grants have followed each other without a gap. */
  private grantedSinceNs: bigint | null = null;
  /** When the heartbeat that brought the last grant was sent. */
  private lastGrantSentNs: bigint | null = null;
  private desired = new Map<string, DesiredInstance>();
  /** What the control plane last said: a promote here needs its grants unbroken for lease + margin. */
  private promoteAfterMs = Number.POSITIVE_INFINITY;

  /** A renewal: the lease runs `leaseMs` from `sentAtNs`, the moment before the heartbeat left. */
  renew(sentAtNs: bigint, leaseMs: number, desired: readonly DesiredInstance[], clockMarginMs = 0, heartbeatMs = leaseMs): void {
    this.promoteAfterMs = leaseMs + clockMarginMs;
    const expiresAtNs = sentAtNs + BigInt(leaseMs) * nanosecondsPerMs;
    // A gap as long as a peer's failsafe waits for (failsafeSilence) breaks the run: a peer may have
    // relied on this host's silence to keep its own primary serving.
    const gapNs = BigInt(failsafeSilenceMs(heartbeatMs)) * nanosecondsPerMs;
    if (this.lastGrantSentNs === null || this.grantedUntilNs === null || sentAtNs >= this.grantedUntilNs || sentAtNs - this.lastGrantSentNs >= gapNs) this.grantedSinceNs = sentAtNs;
    if (this.lastGrantSentNs === null || sentAtNs > this.lastGrantSentNs) this.lastGrantSentNs = sentAtNs;
    if (this.grantedUntilNs === null || expiresAtNs > this.grantedUntilNs) this.grantedUntilNs = expiresAtNs;
    // Beats are sent one at a time, so this only moves forward; never shorten what was granted.
    if (this.expiresAtNs === null || expiresAtNs > this.expiresAtNs) this.expiresAtNs = expiresAtNs;
    this.desired = new Map(desired.map((instance) => [instance.instanceId, instance]));
  }

  /**
   * The failsafe (docs/HOSTS.md): no heartbeat is answered, and every peer of every fenced-on-loss
   * primary says it holds no grant either, so the control plane is gone for all of them and no one
   * can promote. Primaries keep serving for `leaseMs` from `askedAtNs` (taken before the peers were asked).
   */
  extendByFailsafe(askedAtNs: bigint, leaseMs: number): void {
    const expiresAtNs = askedAtNs + BigInt(leaseMs) * nanosecondsPerMs;
    if (this.expiresAtNs === null || expiresAtNs > this.expiresAtNs) this.expiresAtNs = expiresAtNs;
  }

  /** Since the heartbeat that brought the last grant was sent; null without one since the agent started. */
  silentMs(nowNs: bigint = monotonicNowNs()): number | null {
    return this.lastGrantSentNs === null ? null : Number((nowNs - this.lastGrantSentNs) / nanosecondsPerMs);
  }

  /** Whether the control plane's own grant holds now (never the failsafe's extension). */
  granted(nowNs: bigint = monotonicNowNs()): boolean {
    return this.grantedUntilNs !== null && nowNs < this.grantedUntilNs;
  }

  /**
   * Why this host may not promote now, or null. A peer may have kept its old primary serving by
   * the failsafe on the strength of this host's "no grant" answer, for up to a lease from when it
   * asked: only grants unbroken for longer than that (and the margin) rule such a primary out.
   */
  promoteRefusal(nowNs: bigint = monotonicNowNs()): string | null {
    const heldMs = this.grantedForMs(nowNs);
    if (heldMs >= this.promoteAfterMs) return null;
    return `this host's lease has held for ${heldMs} ms without a break; a promote needs ${this.promoteAfterMs} ms (lease + clock margin), so that no peer still serves by the failsafe`;
  }

  /** How long the control plane's grants have held without a break; 0 without a grant now. */
  grantedForMs(nowNs: bigint = monotonicNowNs()): number {
    if (!this.granted(nowNs) || this.grantedSinceNs === null) return 0;
    return Number((nowNs - this.grantedSinceNs) / nanosecondsPerMs);
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
