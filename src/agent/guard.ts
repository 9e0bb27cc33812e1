import { spawn } from 'node:child_process';
import { lstat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { sleep } from '../lib/clock.js';
import { openLogForAppend, readSmallFile, replaceFile } from '../postgres/files.js';
import { selfRunAs } from '../postgres/osuser.js';
import { agentDirectory } from './identity.js';
import { type FencedPrimary, type LeaseFile, leaseFileExpiryNs, monotonicNowNs, readLeaseFile } from './lease.js';
import { isZombie, processStartTicks } from './proc.js';

/**
 * The lease guard (docs/HOSTS.md, "Fencing"): a small detached process beside the agent that
 * fences the host's primaries when the lease in `DIR/agent/lease.json` runs out, whether or not
 * the agent is alive to notice. It reads nothing but that file and /proc, and never fences on a
 * lease that was never written.
 */

export const guardPidFileName = 'guard.pid';
export const fencedFileName = 'fenced.json';
export const guardLogFileName = 'guard.log';
/** How often the lease file is read: fencing starts at most this long after expiry. */
export const guardPollMs = 50;
/** After SIGQUIT (immediate shutdown), how long before the postmaster's process group is SIGKILLed. */
export const fenceKillAfterMs = 2_000;
/** After SIGKILL, how long to watch for the process to be gone before recording that it survived. */
export const fenceKillWaitMs = 2_000;
export const fenceExitPollMs = 5;
/** fenced.json keeps the latest entries only. */
export const fencedEntriesMax = 1_000;
export const fencedFileBytesMax = 1024 * 1024;
/** How long the agent waits for a guard it spawned to write its pid file. */
export const guardStartMsMax = 10_000;
const guardStartPollMs = 20;

export interface GuardPidFile {
  readonly pid: number;
  readonly startTicks: number;
}

export interface FenceRecord {
  readonly instanceId: string;
  readonly pid: number;
  /** `fenced`: gone after SIGQUIT; `killed`: gone after SIGKILL; `gone`: already gone or the pid reused; `survived`: still there after SIGKILL. */
  readonly outcome: 'fenced' | 'killed' | 'gone' | 'survived';
  readonly expiresAtMonotonicNs: string;
  /** From the lease's expiry to the postmaster gone (null when it was already gone or survived). */
  readonly expiryToGoneMs: number | null;
  readonly at: string;
}

/** The guard's main loop; resolves when `DIR/agent` is gone or `stopSignal` is aborted. */
export async function runGuard(dataDir: string, log: Logger, stopSignal: AbortSignal): Promise<void> {
  const dir = agentDirectory(dataDir);
  const running = await liveGuard(dataDir);
  if (running !== undefined && running.pid !== process.pid) {
    log.info({ pid: running.pid }, 'a guard already runs for this data directory; exiting');
    return;
  }
  const startTicks = await processStartTicks(process.pid);
  if (startTicks === undefined) throw new Error('the guard cannot read its own start time from /proc');
  await replaceFile(join(dir, guardPidFileName), `${JSON.stringify({ pid: process.pid, startTicks } satisfies GuardPidFile)}\n`, 0o600, selfRunAs());
  log.info({ dataDir }, 'lease guard running');
  let handledExpiry: string | null = null;
  let lastReadError: string | null = null;
  while (!stopSignal.aborted) {
    if (!(await exists(dir))) {
      log.info({ dir }, 'the agent directory is gone; the guard exits');
      return;
    }
    let file: LeaseFile | undefined;
    try {
      file = await readLeaseFile(dataDir);
      lastReadError = null;
    } catch (error) {
      // A lease file the guard cannot read keeps its last decision; said once, not every 50 ms.
      const message = error instanceof Error ? error.message : String(error);
      if (message !== lastReadError) log.error({ err: message }, 'cannot read the lease file');
      lastReadError = message;
    }
    if (file !== undefined && file.expiresAtMonotonicNs !== handledExpiry && monotonicNowNs() >= (await leaseFileExpiryNs(file))) {
      handledExpiry = file.expiresAtMonotonicNs;
      const records = await fenceAll(file);
      if (records.length > 0) {
        log.warn({ records }, 'lease expired: primaries fenced');
        await appendFenced(dataDir, records).catch((error: unknown) => log.error({ err: error instanceof Error ? error.message : String(error) }, 'cannot record in fenced.json'));
      }
    }
    await sleepUnlessStopped(guardPollMs, stopSignal);
  }
  log.info({}, 'lease guard stopped');
}

function sleepUnlessStopped(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
  });
}

async function fenceAll(file: LeaseFile): Promise<FenceRecord[]> {
  const expiresAtNs = await leaseFileExpiryNs(file);
  return Promise.all(file.primaries.map((primary) => fence(primary, file.expiresAtMonotonicNs, expiresAtNs)));
}

/**
 * SIGQUIT (immediate shutdown: no new connection, every backend ends at once) to the postmaster
 * the agent listed, if it is still that process; SIGKILL to its process group past a bound.
 */
async function fence(primary: FencedPrimary, expiresAtText: string, expiresAtNs: bigint): Promise<FenceRecord> {
  const record = (outcome: FenceRecord['outcome'], goneAtNs: bigint | null): FenceRecord => ({
    instanceId: primary.instanceId,
    pid: primary.pid,
    outcome,
    expiresAtMonotonicNs: expiresAtText,
    expiryToGoneMs: goneAtNs === null ? null : Number(goneAtNs - expiresAtNs) / 1e6,
    at: new Date().toISOString(),
  });
  if (!(await isSameProcess(primary))) return record('gone', null);
  signal(primary.pid, 'SIGQUIT');
  const quitGoneAtNs = await waitGone(primary, fenceKillAfterMs);
  if (quitGoneAtNs !== null) return record('fenced', quitGoneAtNs);
  // The postmaster leads its own process group (it is started in its own session): its children go with it.
  if (!signal(-primary.pid, 'SIGKILL')) signal(primary.pid, 'SIGKILL');
  const killGoneAtNs = await waitGone(primary, fenceKillWaitMs);
  return record(killGoneAtNs === null ? 'survived' : 'killed', killGoneAtNs);
}

async function isSameProcess(primary: FencedPrimary): Promise<boolean> {
  return (await processStartTicks(primary.pid)) === primary.startTicks && !(await isZombie(primary.pid));
}

async function waitGone(primary: FencedPrimary, waitMs: number): Promise<bigint | null> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    if (!(await isSameProcess(primary))) return monotonicNowNs();
    if (Date.now() >= deadline) return null;
    await sleep(fenceExitPollMs);
  }
}

function signal(pid: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false;
  }
}

async function appendFenced(dataDir: string, records: readonly FenceRecord[]): Promise<void> {
  const path = join(agentDirectory(dataDir), fencedFileName);
  let earlier: FenceRecord[] = [];
  try {
    const text = await readSmallFile(path, fencedFileBytesMax);
    const parsed: unknown = text === undefined ? [] : JSON.parse(text);
    if (Array.isArray(parsed)) earlier = parsed as FenceRecord[];
  } catch {
    // Unreadable history is replaced: what was just done matters more.
  }
  await replaceFile(path, `${JSON.stringify([...earlier, ...records].slice(-fencedEntriesMax), null, 1)}\n`, 0o600, selfRunAs());
}

export async function readFenced(dataDir: string): Promise<FenceRecord[]> {
  const text = await readSmallFile(join(agentDirectory(dataDir), fencedFileName), fencedFileBytesMax);
  return text === undefined ? [] : (JSON.parse(text) as FenceRecord[]);
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/** The guard recorded in `guard.pid`, if that process still runs (same pid, same start time). */
export async function liveGuard(dataDir: string): Promise<GuardPidFile | undefined> {
  let text: string | undefined;
  try {
    text = await readSmallFile(join(agentDirectory(dataDir), guardPidFileName), 4096);
  } catch {
    return undefined;
  }
  if (text === undefined) return undefined;
  let recorded: Partial<GuardPidFile>;
  try {
    recorded = JSON.parse(text) as Partial<GuardPidFile>;
  } catch {
    return undefined;
  }
  if (typeof recorded.pid !== 'number' || typeof recorded.startTicks !== 'number') return undefined;
  const ticks = await processStartTicks(recorded.pid);
  return ticks === recorded.startTicks && !(await isZombie(recorded.pid)) ? { pid: recorded.pid, startTicks: recorded.startTicks } : undefined;
}

/**
 * One guard per data directory, started detached so it outlives the agent: the running one is
 * kept, else `guardScript` is spawned and awaited until it has written its pid file.
 */
export async function ensureGuard(dataDir: string, guardScript: string): Promise<number> {
  const running = await liveGuard(dataDir);
  if (running !== undefined) return running.pid;
  const logFile = await openLogForAppend(join(agentDirectory(dataDir), guardLogFileName));
  let pid: number | undefined;
  try {
    const child = spawn(process.execPath, [guardScript, dataDir], { detached: true, stdio: ['ignore', logFile.fd, logFile.fd], cwd: '/', env: {} });
    const spawnError = await new Promise<Error | undefined>((resolve) => {
      child.once('spawn', () => resolve(undefined));
      child.once('error', resolve);
    });
    if (spawnError !== undefined) throw new Error(`could not start the lease guard: ${spawnError.message}`);
    child.unref();
    pid = child.pid;
  } finally {
    await logFile.close();
  }
  const deadline = Date.now() + guardStartMsMax;
  while (Date.now() < deadline) {
    const started = await liveGuard(dataDir);
    if (started !== undefined) return started.pid;
    await sleep(guardStartPollMs);
  }
  throw new Error(`the lease guard (pid ${pid ?? '?'}) did not start within ${guardStartMsMax} ms; see ${join(agentDirectory(dataDir), guardLogFileName)}`);
}
