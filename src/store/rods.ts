import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { CellarError } from '../lib/errors.js';
import { type Rod, type RodName, type RodValueMap, catalogueDefaults, findRod, rodCatalogue, rodValueProblem } from '../lib/rod-catalogue.js';
import { controlsChannel, recordControlChange } from './controls.js';
import { LiveRead } from './live-read.js';
import { recordEvent } from './machines-table.js';
import { type Pool, type Queryable, inTransaction, prepared } from './pool.js';

/**
 * Control rods in the store (docs/CONTROLS.md "Rods"): setting one (checked against the catalogue,
 * audited, an event, notified, all in one transaction) and the live reader every process holds.
 */

/** 'global', or 'cell:NAME' for one cell. */
export type RodScope = string;
export const globalScope = 'global';
/** Today's one cell (docs/CONTROLS.md); a rod scoped to it wins over the global value here. */
export const localCell = 'local';

export interface StoredRod {
  readonly name: string;
  readonly value: number;
  readonly scope: RodScope;
  readonly updatedAt: Date;
  readonly updatedBy: string;
}

export interface RodChange {
  readonly name: string;
  readonly value: number;
  readonly scope: RodScope;
  readonly actor: string;
  readonly reason: string;
}

const cellNamePattern = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** The rod a name stands for, or a 404 naming it. */
export function rodOrNotFound(name: string): Rod {
  const rod = findRod(name);
  if (rod === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no control rod ${JSON.stringify(name)}; \`cellar rods list\` names them all`, 'name');
  return rod;
}

/** 'global' or 'cell:NAME' from a cell name given or not. */
export function scopeFor(cell: string | null): RodScope {
  if (cell === null) return globalScope;
  if (!cellNamePattern.test(cell)) throw new CellarError('CELLAR_E_INVALID', `cell must be a cell name (lower-case letters, digits and hyphens, at most 63); got ${JSON.stringify(cell)}`, 'cell');
  return `cell:${cell}`;
}

/**
 * Each rod's value in this process when nothing is stored: its environment variable's (read and
 * checked by config.ts with the same bounds), else the catalogue's default.
 */
export function processRodDefaults(config: Config): RodValueMap {
  return {
    ...catalogueDefaults(),
    'engine.high-tick-ms': config.highTickMs,
    'engine.normal-tick-ms': config.normalTickMs,
    'backup.max-rate-bytes-per-second': config.backups.maxRateBytesPerSecond,
    'backup.verify-concurrency': config.backups.verifyConcurrency,
    'proxy.cluster-connections-max': config.proxyClusterConnectionsMax,
    'proxy.cluster-connects-per-second': config.proxyClusterConnectsPerSecond,
    'proxy.cluster-bytes-per-second': config.proxyClusterBytesPerSecond,
    'ha.failovers-max': config.ha.failoversMax,
    'ha.failover-window-ms': config.ha.failoverWindowMs,
    'warm-pool.size': config.warmPoolSize,
  };
}

const allRods = prepared('rods_all', 'select name, value, scope, updated_at, updated_by from rods order by name, scope');

export async function loadRods(db: Queryable): Promise<StoredRod[]> {
  const result = await db.query<{ name: string; value: string; scope: string; updated_at: Date; updated_by: string }>(allRods([]));
  return result.rows.map((row) => ({ name: row.name, value: Number(row.value), scope: row.scope, updatedAt: row.updated_at, updatedBy: row.updated_by }));
}

/**
 * Sets a rod: refused (404) when the catalogue has no such rod and (400) outside its bounds, with
 * nothing stored. The value, its audit, its event and the notification commit together. Returns
 * the value stored before (null: none, the process default applied).
 */
export async function setRod(pool: Pool, change: RodChange): Promise<{ readonly before: number | null }> {
  const rod = rodOrNotFound(change.name);
  const problem = rodValueProblem(rod, change.value);
  if (problem !== null) throw new CellarError('CELLAR_E_INVALID', problem, 'value');
  return inTransaction(pool, async (client) => {
    const old = await client.query<{ value: string }>('select value from rods where name = $1 and scope = $2 for update', [rod.name, change.scope]);
    const before = old.rows[0] === undefined ? null : Number(old.rows[0].value);
    await client.query(
      `insert into rods (name, value, scope, updated_by) values ($1, $2, $3, $4)
       on conflict (name, scope) do update set value = excluded.value, updated_at = now(), updated_by = excluded.updated_by`,
      [rod.name, change.value, change.scope, change.actor],
    );
    await recordControlChange(client, { kind: 'rod', name: rod.name, scope: change.scope, oldValue: before, newValue: change.value, actor: change.actor, reason: change.reason });
    await recordEvent(client, {
      machineId: `rod:${rod.name}`,
      kind: 'rod',
      entityId: rod.name,
      clusterId: null,
      from: before === null ? 'default' : String(before),
      to: String(change.value),
      reason: `${rod.name} set to ${change.value} ${rod.unit} (${change.scope}) by ${change.actor}: ${change.reason}`,
      code: 'rod_changed',
    });
    return { before };
  });
}

/** What a reader of rods needs: each rod's value now. */
export interface RodReader {
  value(name: RodName): number;
}

/** Rods at fixed values (tests, and processes without a store). */
export function fixedRods(values: RodValueMap): RodReader {
  return { value: (name) => values[name] };
}

/** How often the reader reads the rods even without a notification (when LISTEN is down). */
export const rodsPollMs = 1_000;

export interface RodValuesOptions {
  readonly pool: Pool;
  readonly defaults: RodValueMap;
  /** The cell this process belongs to: a rod scoped to it wins over the global value. */
  readonly cell: string;
  readonly log: Logger;
}

/**
 * The live reader (docs/CONTROLS.md "Rods"): every rod's value in this process, re-read at once on
 * `cellar_controls` and at least every `rodsPollMs` (LiveRead). With the store away the last values
 * read stand. `value` reads memory only, so hot paths (the proxy's buckets, a lane's sleep) may call it.
 */
export class RodValues implements RodReader {
  private values: RodValueMap;
  private lastJson = '';
  private readonly live: LiveRead;
  private readonly changeListeners: ((values: RodValueMap) => void)[] = [];

  constructor(private readonly options: RodValuesOptions) {
    this.values = options.defaults;
    this.live = new LiveRead({
      pool: options.pool,
      channel: controlsChannel,
      payloads: ['rod'],
      pollMs: rodsPollMs,
      log: options.log,
      what: 'control rods',
      read: async () => this.apply(await loadRods(options.pool)),
    });
  }

  start(): Promise<void> {
    return this.live.start();
  }

  stop(): Promise<void> {
    return this.live.stop();
  }

  value(name: RodName): number {
    return this.values[name];
  }

  get storeReachable(): boolean {
    return this.live.storeReachable;
  }

  /** Called after a change of any value, with all of them. */
  onChange(listener: (values: RodValueMap) => void): void {
    this.changeListeners.push(listener);
  }

  /** Reads the rods now (see LiveRead.refresh). */
  refresh(): Promise<void> {
    return this.live.refresh();
  }

  private apply(rows: readonly StoredRod[]): void {
    const cellScope = `cell:${this.options.cell}`;
    const next: Record<string, number> = { ...this.options.defaults };
    for (const rod of rodCatalogue) {
      const global = rows.find((row) => row.name === rod.name && row.scope === globalScope);
      const cell = rows.find((row) => row.name === rod.name && row.scope === cellScope);
      const stored = cell ?? global;
      // A value stored before a catalogue narrowed its bounds is not trusted: the default runs.
      if (stored !== undefined && rodValueProblem(rod, stored.value) === null) next[rod.name] = stored.value;
    }
    const json = JSON.stringify(next);
    if (json === this.lastJson) return;
    const first = this.lastJson === '';
    this.lastJson = json;
    this.values = next as RodValueMap;
    if (first && json === JSON.stringify(this.options.defaults)) return;
    for (const listener of this.changeListeners) listener(this.values);
  }
}
