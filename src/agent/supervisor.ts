import type { Logger } from 'pino';
import type { DataPlane } from '../dataplane/dataplane.js';
import { runWithAbortSignal } from '../lib/abort.js';
import type { Lease } from './lease.js';
import type { InstanceLocks } from './operations.js';
import type { SpecBook } from './specs.js';

/**
 * Supervision (docs/HOSTS.md, "Processes"): a replica whose postmaster died while it was meant to
 * run is started again in place, after a short backoff. Never a primary: whether to fail over or
 * start it again is the control plane's decision. Nothing is started while the lease is expired.
 */

/** How often liveness is checked. */
export const supervisionTickMs = 100;
/** First restart after this long, doubling per failed attempt up to the cap. */
export const restartBackoffMsMin = 200;
export const restartBackoffMsMax = 10_000;
/** One restart attempt: a crashed replica's recovery before it accepts is short, or something is wrong. */
export const restartMsMax = 60_000;

interface RestartState {
  attempts: number;
  notBeforeMs: number;
  diedAtMs: number;
}

export interface SupervisorOptions {
  readonly driver: DataPlane;
  readonly specs: SpecBook;
  readonly lease: Lease;
  readonly locks: InstanceLocks;
  readonly log: Logger;
}

export class Supervisor {
  private readonly restarts = new Map<string, RestartState>();
  private readonly restarting = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private ticking: Promise<void> | null = null;
  /** Restarts done (tests and logs). */
  restartCount = 0;

  constructor(private readonly options: SupervisorOptions) {}

  start(): void {
    this.timer ??= setInterval(() => {
      // One tick at a time: a slow tick is skipped over, not stacked.
      this.ticking ??= this.tick().finally(() => (this.ticking = null));
    }, supervisionTickMs);
  }

  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.ticking;
  }

  private async tick(): Promise<void> {
    const { specs, lease, driver } = this.options;
    const nowMs = performance.now();
    const records = specs.all();
    const known = new Set<string>(records.map((record) => record.spec.instanceId));
    for (const instanceId of this.restarts.keys()) if (!known.has(instanceId)) this.restarts.delete(instanceId);
    for (const { spec, wanted } of records) {
      const instanceId = spec.instanceId;
      if (this.restarting.has(instanceId)) continue;
      const desired = lease.desiredOf(instanceId);
      // A fenced instance may hold a primary's data directory (an old primary before its rejoin): never started here.
      if (wanted !== 'running' || desired?.role !== 'replica' || desired.fenced) {
        this.restarts.delete(instanceId);
        continue;
      }
      if (await driver.alive(instanceId).catch(() => true)) {
        this.restarts.delete(instanceId);
        continue;
      }
      const state = this.restarts.get(instanceId) ?? { attempts: 0, notBeforeMs: nowMs + restartBackoffMsMin, diedAtMs: nowMs };
      this.restarts.set(instanceId, state);
      if (nowMs < state.notBeforeMs || !lease.held()) continue;
      this.restarting.add(instanceId);
      void this.restart(instanceId, state).finally(() => this.restarting.delete(instanceId));
    }
  }

  private async restart(instanceId: string, state: RestartState): Promise<void> {
    const { locks, specs, driver, lease, log } = this.options;
    state.attempts += 1;
    try {
      await locks.run(instanceId, async () => {
        // Looked at again under the lock: a stop or destroy may have come in meanwhile.
        const record = specs.get(instanceId);
        if (record?.wanted !== 'running' || !lease.held()) return;
        if (await driver.alive(record.spec.instanceId)) return;
        await runWithAbortSignal(AbortSignal.timeout(restartMsMax), () => driver.start(record.spec));
        this.restartCount += 1;
        log.warn({ instanceId, attempts: state.attempts, downMs: Math.round(performance.now() - state.diedAtMs) }, 'replica postmaster died; restarted in place');
      });
      this.restarts.delete(instanceId);
    } catch (error) {
      const backoffMs = Math.min(restartBackoffMsMin * 2 ** state.attempts, restartBackoffMsMax);
      state.notBeforeMs = performance.now() + backoffMs;
      log.warn({ instanceId, attempts: state.attempts, backoffMs, err: error instanceof Error ? error.message : String(error) }, 'replica restart failed; trying again after a backoff');
    }
  }
}
