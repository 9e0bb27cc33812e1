import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { resolveRunAs } from '../postgres/osuser.js';
import { resolveDataDir } from '../postgres/paths.js';
import { serverPid } from '../postgres/server.js';
import { embeddedStorePaths, ensureEmbeddedStore } from '../store/embedded.js';

/**
 * Keeps the embedded cell store running while `cellar up` runs: without it nothing changes in the
 * cell (no create, no failover). It watches the store's postmaster and, when it is gone, starts the
 * store again with the same start-up `cellar up` uses, backing off between failed attempts. It
 * logs each change of state (down and restarting, up again, cannot restart), never each attempt.
 */

/** How often the postmaster is looked for: a dead store is noticed within this. */
export const storeCheckIntervalMs = 250;
/**
 * Wait after the first failed restart, doubled after each further one up to the cap. A first
 * attempt often fails because the killed postmaster's children still hold its shared memory for a
 * moment; they exit on their own within milliseconds.
 */
export const restartBackoffMsMin = 100;
export const restartBackoffMsMax = 2_000;
/** Failed restarts in a row after which the supervisor says, once and at error level, that it cannot. */
export const restartAttemptsBeforeAlarm = 10;

export class StoreSupervisor {
  private stopping = false;
  private loop: Promise<void> = Promise.resolve();
  /** Ends the current wait early (on stop); absent while not waiting. */
  private wakeup: (() => void) | null = null;

  private constructor(
    private readonly config: Config,
    private readonly pgdata: string,
    private readonly log: Logger,
  ) {}

  /** Starts watching a store that `ensureEmbeddedStore` has just started. */
  static async start(config: Config, log: Logger): Promise<StoreSupervisor> {
    const dataDir = resolveDataDir(config, await resolveRunAs());
    const supervisor = new StoreSupervisor(config, embeddedStorePaths(dataDir).pgdata, log);
    // A bug here must not take the control plane down with it; the log says the store is unwatched.
    supervisor.loop = supervisor.watch().catch((error: unknown) => {
      log.error({ err: error instanceof Error ? error.message : String(error) }, 'the store supervisor stopped; the embedded store is no longer restarted');
    });
    return supervisor;
  }

  /** Stops watching; a restart under way is let finish, so `cellar down` finds a store it can stop. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wakeup?.();
    await this.loop;
  }

  private async watch(): Promise<void> {
    let lastPid: number | undefined;
    while (!this.stopping) {
      await this.wait(storeCheckIntervalMs);
      if (this.stopping) return;
      const pid = await serverPid(this.pgdata);
      if (pid !== undefined) {
        lastPid = pid;
        continue;
      }
      await this.restart(lastPid);
    }
  }

  private async restart(lastPid: number | undefined): Promise<void> {
    const downAtMs = performance.now();
    this.log.warn({ postmasterPid: lastPid ?? null, pgdata: this.pgdata }, 'the embedded cell store is down (its postmaster is gone); restarting it');
    let backoffMs = restartBackoffMsMin;
    for (let attempt = 1; !this.stopping; attempt += 1) {
      try {
        await ensureEmbeddedStore(this.config);
        const downMs = Math.round(performance.now() - downAtMs);
        this.log.info({ attempts: attempt, downMs }, 'the embedded cell store is up again');
        return;
      } catch (error) {
        if (attempt === restartAttemptsBeforeAlarm) {
          const err = error instanceof Error ? error.message : String(error);
          this.log.error({ attempts: attempt, err }, `the embedded cell store does not restart; still trying every ${restartBackoffMsMax} ms`);
        }
      }
      await this.wait(backoffMs);
      backoffMs = Math.min(restartBackoffMsMax, backoffMs * 2);
    }
  }

  private wait(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.wakeup = null;
        resolve();
      };
      const timer = setTimeout(finish, ms);
      this.wakeup = finish;
    });
  }
}
