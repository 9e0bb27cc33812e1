import type { Logger } from 'pino';
import type { HostUsage } from '../dataplane/dataplane.js';
import { hostUsage } from '../dataplane/local/usage.js';
import { recordHostUsage } from '../store/local-host.js';
import type { Pool } from '../store/pool.js';

/**
 * The control plane's own host: the free space of each filesystem Cellar writes to (its data
 * directory, its backups, its home), measured every `CELLAR_USAGE_INTERVAL_MS` and kept on the
 * host's row (docs/STORAGE.md, "Measured use"). A timer, not a machine: it only reads this
 * machine's filesystems, so every control plane of the cell may run it; the last write wins.
 */

/** statfs of a hung network filesystem never returns: past this a round is given up (and its late answer dropped). */
export const hostUsageRoundMsMax = 10_000;

export interface HostUsageWatchOptions {
  readonly pool: Pool;
  readonly hostId: string;
  /** Purpose to directory: `{data, backups, home}`. */
  readonly directories: Readonly<Record<string, string>>;
  readonly intervalMs: number;
  readonly log: Logger;
}

export class HostUsageWatch {
  private timer: NodeJS.Timeout | null = null;
  private round: Promise<void> | null = null;
  private stopped = false;
  /** A failure is logged once, not every interval, until a round succeeds again. */
  private failing = false;

  constructor(private readonly options: HostUsageWatchOptions) {}

  /** Measures at once, then every interval; rounds never overlap. */
  start(): void {
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    await this.round;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.round = this.measure().finally(() => {
        this.round = null;
        this.schedule(this.options.intervalMs);
      });
    }, delayMs);
    this.timer.unref();
  }

  private async measure(): Promise<void> {
    const { pool, hostId, directories, log } = this.options;
    try {
      const usage = await withinRoundLimit(hostUsage(directories));
      if (this.stopped) return;
      await recordHostUsage(pool, hostId, usage);
      if (this.failing) log.info({ hostId }, 'host usage measured again');
      this.failing = false;
    } catch (error) {
      if (!this.failing) log.warn({ hostId, err: error }, 'could not measure the host\'s free space; the last figure is kept and it is measured again every interval');
      this.failing = true;
    }
  }
}

async function withinRoundLimit(work: Promise<HostUsage>): Promise<HostUsage> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`measuring the host's filesystems took longer than ${hostUsageRoundMsMax} ms (hostUsageRoundMsMax)`)), hostUsageRoundMsMax);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
