import type { Logger } from 'pino';
import { type FlagDeclaration, type FlagValue, findFlag, flagCatalogue } from '../lib/flag-catalogue.js';
import { type ClusterFlags, type FlagContext, type FlagEvaluation, type FlagReader, type ReaderContext, type FlagSnapshot, emptySnapshot, evaluateFlag, localCellName } from '../lib/flags.js';
import { controlsChannel } from './controls.js';
import { loadFlagSnapshot } from './flags.js';
import { LiveRead } from './live-read.js';
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
  private readonly cell: string;
  private readonly live: LiveRead;

  constructor(private readonly options: FlagSnapshotReaderOptions) {
    this.catalogue = new Map((options.catalogue ?? flagCatalogue).map((flag) => [flag.key, flag]));
    this.cell = options.cell ?? localCellName;
    this.live = new LiveRead({
      pool: options.pool,
      channel: controlsChannel,
      payloads: ['flag', 'cohort'],
      pollMs: Math.min(flagPollMsMax, Math.max(flagPollMsMin, options.pollMs ?? flagPollMsDefault)),
      log: options.log,
      what: 'flags',
      read: async () => {
        this.current = await loadFlagSnapshot(options.pool);
      },
    });
  }

  /** Reads the store once (a failure leaves the defaults), then keeps it fresh. */
  start(): Promise<void> {
    return this.live.start();
  }

  stop(): Promise<void> {
    return this.live.stop();
  }

  get snapshot(): FlagSnapshot {
    return this.current;
  }

  /** Successful reads of the store so far (tests wait on it). */
  get reads(): number {
    return this.live.reads;
  }

  get storeReachable(): boolean {
    return this.live.storeReachable;
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

  /** Reads the store now (see LiveRead.refresh). */
  refresh(): Promise<void> {
    return this.live.refresh();
  }
}
