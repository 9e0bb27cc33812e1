import type { Logger } from 'pino';
import type { HostUsage } from '../dataplane.js';
import { hostUsage } from './usage.js';

/**
 * A host's free space on each filesystem Cellar writes to (its data directory, its backups, its
 * home), measured every `CELLAR_USAGE_INTERVAL_MS` and handed to `record` (docs/STORAGE.md,
 * "Measured use"): the control plane writes its own host's row; an agent sends it with its next
 * heartbeat. A timer apart from the heartbeat, so a slow filesystem never delays a beat.
 */

/** statfs of a hung network filesystem never returns: past this a round is given up (and its late answer dropped). */
export const hostUsageRoundMsMax = 10_000;

export interface HostUsageWatchOptions {
  /** Keeps a fresh figure (the store, or the next heartbeat); a failure counts as the round's. */
  readonly record: (usage: HostUsage) => Promise<void>;
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
  /**
   * A round given up while its statfs still hangs: no new round starts until it returns, since
   * each hung call holds one of libuv's few threads, which every file operation of the process shares.
   */
  private unsettled: Promise<unknown> | null = null;

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
    const { directories, log } = this.options;
    try {
      if (this.unsettled !== null) throw new Error(`the previous round's filesystem calls have not returned after ${hostUsageRoundMsMax} ms (hostUsageRoundMsMax); none is started until they do`);
      const work = hostUsage(directories);
      this.unsettled = work;
      void work.then(
        () => (this.unsettled = null),
        () => (this.unsettled = null),
      );
      const usage = await withinRoundLimit(work);
      if (this.stopped) return;
      await this.options.record(usage);
      if (this.failing) log.info({ directories }, 'host usage measured again');
      this.failing = false;
    } catch (error) {
      if (!this.failing) log.warn({ directories, err: error instanceof Error ? error.message : String(error) }, 'could not measure the host\'s free space; the last figure is kept and it is measured again every interval');
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
