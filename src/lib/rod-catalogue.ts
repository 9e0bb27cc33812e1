/**
 * Control rods (docs/CONTROLS.md "Rods"): every rate an operator may steer while the fleet runs,
 * declared once. A rod not here cannot be set; a value outside [min, max] is refused. Where an
 * environment variable set the rate before rods existed, it still sets the process's default
 * (the value used while no rod is stored), with the same bounds as src/config.ts, so a stored
 * value is always one the process could have started with.
 */

export interface Rod {
  /** Dotted, kebab-case: `engine.normal-tick-ms`; the unit is last. */
  readonly name: string;
  readonly unit: RodUnit;
  readonly min: number;
  readonly max: number;
  /** The default when neither the environment variable nor a stored value says otherwise. */
  readonly default: number;
  readonly description: string;
  /** The environment variable whose value is the process's default; null: none existed. */
  readonly envVar: string | null;
  /** Who reads it, and so within which tick a change takes effect. */
  readonly readBy: 'engine' | 'proxy';
}

export type RodUnit = 'ms' | 'count' | 'bytes/s' | 'per second' | 'per minute';

const secondMs = 1_000;
const hourMs = 3_600_000;
const dayMs = 24 * hourMs;

export const rodCatalogue = [
  {
    name: 'engine.high-tick-ms',
    unit: 'ms',
    min: 10,
    max: 600_000,
    default: 250,
    description: 'How often the high lane (creates, failovers, switchovers) claims due machines',
    envVar: 'CELLAR_HIGH_TICK_MS',
    readBy: 'engine',
  },
  {
    name: 'engine.normal-tick-ms',
    unit: 'ms',
    min: 10,
    max: 600_000,
    default: 2_000,
    description: 'How often the normal lane (watching running clusters, backups, rollouts) claims due machines',
    envVar: 'CELLAR_NORMAL_TICK_MS',
    readBy: 'engine',
  },
  {
    name: 'engine.claims-per-tick',
    unit: 'count',
    min: 1,
    max: 64,
    default: 8,
    description: 'Machines one lane claims at one tick (also bounded by the machines each engine runs at once)',
    envVar: null,
    readBy: 'engine',
  },
  {
    name: 'provisioning.creates-per-tick',
    unit: 'count',
    min: 1,
    max: 1_000,
    default: 1_000,
    description: 'New clusters admitted to provisioning per high-lane tick; the rest wait, accepted, for a later tick',
    envVar: null,
    readBy: 'engine',
  },
  {
    name: 'rollout.clusters-per-minute',
    unit: 'per minute',
    min: 1,
    max: 60,
    default: 60,
    description: "A cap on every fleet rollout's rate: a rollout starts at most this many clusters a minute, or its own rate when lower",
    envVar: null,
    readBy: 'engine',
  },
  {
    name: 'backup.max-rate-bytes-per-second',
    unit: 'bytes/s',
    min: 0,
    max: 1024 ** 3,
    default: 0,
    description: "A base backup's copy rate (pg_basebackup --max-rate), read as each backup starts; 0: no cap",
    envVar: 'CELLAR_BACKUP_MAX_RATE',
    readBy: 'engine',
  },
  {
    name: 'backup.verify-concurrency',
    unit: 'count',
    min: 1,
    max: 16,
    default: 1,
    description: 'Restore checks (scratch servers) running at once across the cell',
    envVar: 'CELLAR_BACKUP_VERIFY_CONCURRENCY',
    readBy: 'engine',
  },
  {
    name: 'proxy.cluster-connections-max',
    unit: 'count',
    min: 1,
    max: 100_000,
    default: 500,
    description: "Open connections one cluster may hold through the proxy; new ones past it are refused (53300)",
    envVar: 'CELLAR_PROXY_CLUSTER_CONNECTIONS_MAX',
    readBy: 'proxy',
  },
  {
    name: 'proxy.cluster-connects-per-second',
    unit: 'per second',
    min: 1,
    max: 1_000_000,
    default: 1_000,
    description: 'New connections per second to one cluster through the proxy',
    envVar: 'CELLAR_PROXY_CLUSTER_CONNECTS_PER_SECOND',
    readBy: 'proxy',
  },
  {
    name: 'proxy.cluster-bytes-per-second',
    unit: 'bytes/s',
    min: 0,
    max: 10 * 1024 ** 3,
    default: 0,
    description: "Bytes per second each way for one cluster through the proxy, running transfers included; 0: unlimited",
    envVar: 'CELLAR_PROXY_CLUSTER_BYTES_PER_SECOND',
    readBy: 'proxy',
  },
  {
    name: 'ha.failovers-max',
    unit: 'count',
    min: 0,
    max: 1_000,
    default: 5,
    description: 'Circuit breaker: automatic failovers across the cell within the window, then a human acts',
    envVar: 'CELLAR_FAILOVERS_MAX',
    readBy: 'engine',
  },
  {
    name: 'ha.failover-window-ms',
    unit: 'ms',
    min: secondMs,
    max: 7 * dayMs,
    default: 10 * 60_000,
    description: "The circuit breaker's window",
    envVar: 'CELLAR_FAILOVER_WINDOW_MS',
    readBy: 'engine',
  },
  {
    name: 'warm-pool.size',
    unit: 'count',
    min: 0,
    max: 10,
    default: 0,
    description: 'Running clusters of the default spec kept ready for creates to adopt; 0 turns the pool off',
    envVar: 'CELLAR_WARM_POOL',
    readBy: 'engine',
  },
] as const satisfies readonly Rod[];

export type RodName = (typeof rodCatalogue)[number]['name'];

const byName: ReadonlyMap<string, Rod> = new Map(rodCatalogue.map((rod) => [rod.name, rod]));

export function findRod(name: string): Rod | null {
  return byName.get(name) ?? null;
}

export function isRodName(name: string): name is RodName {
  return byName.has(name);
}

/** Why `value` may not be the rod's value, or null when it may: a whole number within the bounds. */
export function rodValueProblem(rod: Rod, value: number): string | null {
  if (Number.isInteger(value) && value >= rod.min && value <= rod.max) return null;
  return `${rod.name} must be a whole number from ${rod.min} to ${rod.max} (${rod.unit}); got ${value}`;
}

/** Every rod at its value: the process's defaults, overlaid by what is stored. */
export type RodValueMap = Readonly<Record<RodName, number>>;

export function catalogueDefaults(): RodValueMap {
  return Object.fromEntries(rodCatalogue.map((rod) => [rod.name, rod.default])) as RodValueMap;
}
