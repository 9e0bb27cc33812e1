import type { Logger } from 'pino';
import type { PoolClient } from 'pg';
import { type FlagDeclaration, type FlagValue, findFlag, flagCatalogue } from '../lib/flag-catalogue.js';
import { type ClusterFlags, type FlagContext, type FlagEvaluation, type FlagReader, type ReaderContext, type FlagSnapshot, emptySnapshot, evaluateFlag, localCellName } from '../lib/flags.js';
import { controlsChannel } from './controls.js';
import { loadFlagSnapshot } from './flags.js';
import type { Pool } from './pool.js';

/**
 * A process's live view of the flag rules and cohorts (docs/CONTROLS.md, "Read live"): read at
 * start, re-read at once on the `cellar_controls` notification and at least every `pollMs`; an
 * evaluation reads only the snapshot in memory. When the store cannot be read the last snapshot
 * stands (a process that never read one evaluates to the defaults).
 */

/** The longest a change can take to reach a process whose LISTEN broke: the normal lane's default tick. */
export const flagPollMsDefault = 2_000;
export const flagPollMsMin = 50;
export const flagPollMsMax = 60_000;

export interface FlagSnapshotReaderOptions {
  readonly pool: Pool;
  readonly log: Logger;
  /** The catalogue with this process's defaults (withProcessDefaults). */
  readonly catalogue?: readonly FlagDeclaration[];
  readonly pollMs?: number;
  readonly cell?: string;
}

export class FlagSnapshotReader implements FlagReader, ClusterFlags {
  private current: FlagSnapshot = emptySnapshot;
  private readonly catalogue: ReadonlyMap<string, FlagDeclaration>;
  private readonly pollMs: number;
  private readonly cell: string;
  private timer: NodeJS.Timeout | null = null;
  private inFlight: Promise<void> | null = null;
  private again: Promise<void> | null = null;
  private listener: PoolClient | null = null;
  private listening: Promise<void> | null = null;
  private storeHealthy = false;
  private storeLost = false;
  private readCount = 0;

  constructor(private readonly options: FlagSnapshotReaderOptions) {
    this.catalogue = new Map((options.catalogue ?? flagCatalogue).map((flag) => [flag.key, flag]));
    this.pollMs = Math.min(flagPollMsMax, Math.max(flagPollMsMin, options.pollMs ?? flagPollMsDefault));
    this.cell = options.cell ?? localCellName;
  }

  /** Reads the store once (a failure leaves the defaults), then keeps it fresh. */
  async start(): Promise<void> {
    this.timer = setInterval(() => void this.refresh(), this.pollMs);
    this.timer.unref();
    await this.refresh();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.listener?.release(true);
    this.listener = null;
  }

  get snapshot(): FlagSnapshot {
    return this.current;
  }

  /** Successful reads of the store so far (tests wait on it). */
  get reads(): number {
    return this.readCount;
  }

  get storeReachable(): boolean {
    return this.storeHealthy;
  }

  /** The catalogue as this process has it (its defaults), in declaration order. */
  catalogueEntries(): FlagDeclaration[] {
    return [...this.catalogue.values()];
  }

  declaration(key: string): FlagDeclaration | undefined {
    return this.catalogue.get(key) ?? findFlag(key);
  }

  evaluate(key: string, context: ReaderContext): FlagEvaluation {
    const flag = this.declaration(key);
    // The choices that read a flag name it in code: a key not in the catalogue is a bug, not input.
    if (flag === undefined) throw new Error(`flag ${key} is not in the catalogue`);
    return evaluateFlag(flag, context.cell === undefined ? { ...context, cell: this.cell } : (context as FlagContext), this.current);
  }

  enabled(key: string, context: ReaderContext): boolean {
    return this.evaluate(key, context).value === true;
  }

  variant(key: string, context: ReaderContext): string {
    return String(this.evaluate(key, context).value satisfies FlagValue);
  }

  /**
   * The flag for a cluster in its org: the org is read from the store (one short query); with the
   * store away, the cluster alone is the context (org rules and org cohorts then do not apply).
   */
  async evaluateForCluster(key: string, clusterId: string): Promise<FlagEvaluation> {
    let org: string | undefined;
    try {
      org = (await this.options.pool.query<{ org_id: string }>('select org_id from clusters where id = $1', [clusterId])).rows[0]?.org_id;
    } catch {
      org = undefined;
    }
    return this.evaluate(key, org === undefined ? { cluster: clusterId } : { org, cluster: clusterId });
  }

  /**
   * Reads the store now. One read at a time; a request during a read gets one more read after it
   * (that read may have begun before the change it is told of), shared by every such request.
   */
  refresh(): Promise<void> {
    if (this.inFlight === null) {
      this.inFlight = this.read().finally(() => (this.inFlight = null));
      return this.inFlight;
    }
    this.again ??= this.inFlight.then(() => {
      this.again = null;
      return this.refresh();
    });
    return this.again;
  }

  private async read(): Promise<void> {
    this.ensureListening();
    try {
      this.current = await loadFlagSnapshot(this.options.pool);
      this.readCount++;
      if (this.storeLost) this.options.log.info('the store answers again; flags are read from it again');
      this.storeHealthy = true;
      this.storeLost = false;
    } catch (error) {
      if (this.storeHealthy) this.options.log.warn({ err: error instanceof Error ? error.message : String(error) }, 'cannot read flags from the store; keeping the last snapshot');
      this.storeLost ||= this.storeHealthy;
      this.storeHealthy = false;
    }
  }

  /** One attempt per read while not listening: a store that is away costs nothing more than the poll. */
  private ensureListening(): void {
    if (this.listener !== null || this.listening !== null || this.timer === null) return;
    this.listening = this.listen().finally(() => (this.listening = null));
  }

  private async listen(): Promise<void> {
    let client: PoolClient | null = null;
    try {
      client = await this.options.pool.connect();
      client.on('notification', () => void this.refresh());
      client.on('error', () => {
        this.listener?.release(true);
        this.listener = null;
      });
      await client.query(`listen ${controlsChannel}`);
      if (this.timer === null) throw new Error('stopped');
      this.listener = client;
      // A change made while we were not listening is picked up by this read.
      void this.refresh();
    } catch {
      client?.release(true);
    }
  }
}
