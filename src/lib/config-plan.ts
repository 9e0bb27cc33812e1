import { type CatalogueEntry, type SettingApply, parseSettingValue } from './settings.js';
import { type SizeName, effectiveSettings } from './sizes.js';

/**
 * The plan of a configuration change (docs/CONFIG.md "The plan"): what changes, how each change
 * takes effect, in which order the instances restart, and the write pause to expect. Pure: the
 * API shows it before anything moves (`--dry-run`), and the change machine follows its order.
 */

/** What a revision fixes about a cluster. */
export interface RevisionConfig {
  readonly size: SizeName;
  readonly replicas: number;
  readonly settings: Readonly<Record<string, string>>;
  readonly defaults: Readonly<Record<string, string>>;
  /** The storage allocation in GB; absent where only settings are compared. */
  readonly storageGb?: number;
}

export interface SettingChange {
  readonly name: string;
  /** The effective value before and after (size defaults, fleet defaults and own settings together); null: Postgres's default. */
  readonly from: string | null;
  readonly to: string | null;
  readonly apply: SettingApply;
}

/**
 * How restart parameters reach the instances:
 * - `none`: no restart;
 * - `replicasFirst`: each replica in turn, then a switchover, then the old primary as a replica;
 * - `primaryFirst`: a parameter replicas must have no lower than the primary goes down, so the
 *   primary restarts in place first (route paused), then each replica;
 * - `primaryInPlace`: no replica to switch over to: the primary restarts in place (route paused).
 */
export type RestartOrder = 'none' | 'replicasFirst' | 'primaryFirst' | 'primaryInPlace';

export interface ConfigPlan {
  readonly settings: readonly SettingChange[];
  readonly size: { readonly from: SizeName; readonly to: SizeName } | null;
  readonly replicas: { readonly from: number; readonly to: number } | null;
  readonly storage: { readonly fromGb: number; readonly toGb: number } | null;
  readonly restart: boolean;
  readonly order: RestartOrder;
  readonly switchover: boolean;
  /** The longest time writes wait (new connections are held by the proxy, not refused). */
  readonly expectedWritePauseMs: number;
  /** In order, for people. */
  readonly steps: readonly string[];
}

/** Measured on the reference machine (BENCHMARKS.md): a switchover's write pause, and a primary's fast restart. */
export const switchoverWritePauseMs = 410;
export const inPlaceRestartWritePauseMs = 1_500;

function sameValue(entry: CatalogueEntry | undefined, left: string | null, right: string | null): boolean {
  if (left === null || right === null || entry === undefined) return left === right;
  try {
    return parseSettingValue(entry, left) === parseSettingValue(entry, right);
  } catch {
    return left === right;
  }
}

function isLowered(entry: CatalogueEntry | undefined, from: string | null, to: string | null): boolean {
  if (entry === undefined || from === null || to === null) return false;
  try {
    const [before, after] = [parseSettingValue(entry, from), parseSettingValue(entry, to)];
    return typeof before === 'number' && typeof after === 'number' && after < before;
  } catch {
    return false;
  }
}

/** Effective settings that differ between two revisions; a name the catalogue does not know is treated as needing a restart. */
export function settingChanges(catalogue: ReadonlyMap<string, CatalogueEntry>, before: RevisionConfig, after: RevisionConfig): SettingChange[] {
  const [from, to] = [effectiveSettings(before), effectiveSettings(after)];
  const names = [...new Set([...Object.keys(from), ...Object.keys(to)])].sort();
  return names.flatMap((name) => {
    const entry = catalogue.get(name);
    const [left, right] = [from[name] ?? null, to[name] ?? null];
    if (sameValue(entry, left, right)) return [];
    return [{ name, from: left, to: right, apply: entry?.apply === 'reload' ? 'reload' : 'restart' } satisfies SettingChange];
  });
}

export function planChange(catalogue: ReadonlyMap<string, CatalogueEntry>, before: RevisionConfig, after: RevisionConfig): ConfigPlan {
  const settings = settingChanges(catalogue, before, after);
  const reloads = settings.filter((change) => change.apply === 'reload');
  const restarts = settings.filter((change) => change.apply !== 'reload');
  const restart = restarts.length > 0;
  const lowered = restarts.filter((change) => catalogue.get(change.name)?.noLowerOnReplicas === true && isLowered(catalogue.get(change.name), change.from, change.to));
  const replicasAfter = after.replicas;
  const order: RestartOrder = !restart ? 'none' : replicasAfter === 0 ? 'primaryInPlace' : lowered.length > 0 ? 'primaryFirst' : 'replicasFirst';
  const names = (changes: readonly SettingChange[]): string => changes.map((change) => `${change.name} ${change.from ?? 'default'} → ${change.to ?? 'default'}`).join(', ');
  const steps: string[] = [];
  const storageChanged = before.storageGb !== undefined && after.storageGb !== undefined && before.storageGb !== after.storageGb;
  if (storageChanged) steps.push(`storage ${before.storageGb ?? '?'} GB → ${after.storageGb ?? '?'} GB: the allocation grows at once (no restart)`);
  if (after.size !== before.size) steps.push(`size ${before.size} → ${after.size}: its tuned defaults change with it`);
  if (settings.length > 0) steps.push(`write the configuration of every instance and reload it${reloads.length > 0 ? `: live at once for ${names(reloads)}` : ''}`);
  if (replicasAfter > before.replicas) steps.push(`add ${replicasAfter - before.replicas} replica(s): each is cloned and routed once it streams`);
  if (replicasAfter < before.replicas) steps.push(`remove ${before.replicas - replicasAfter} replica(s): each leaves the routes first`);
  const replicaStep = `restart each replica in turn (out of the read-only route until it streams again) for ${names(restarts)}`;
  switch (order) {
    case 'replicasFirst':
      steps.push(replicaStep, 'switch over to a restarted replica (new connections wait in the proxy)', 'the old primary restarts as a replica with the new settings');
      break;
    case 'primaryFirst':
      steps.push(`restart the primary in place first, route paused (${names(lowered)} must never be lower on a replica than on its primary)`, replicaStep);
      break;
    case 'primaryInPlace':
      steps.push(`restart the primary in place, route paused (no replica to switch over to) for ${names(restarts)}`);
      break;
    case 'none':
      break;
  }
  const expectedWritePauseMs = order === 'replicasFirst' ? switchoverWritePauseMs : order === 'none' ? 0 : inPlaceRestartWritePauseMs;
  return {
    settings,
    size: after.size === before.size ? null : { from: before.size, to: after.size },
    replicas: after.replicas === before.replicas ? null : { from: before.replicas, to: after.replicas },
    storage: storageChanged ? { fromGb: before.storageGb ?? 0, toGb: after.storageGb ?? 0 } : null,
    restart,
    order,
    switchover: order === 'replicasFirst',
    expectedWritePauseMs,
    steps,
  };
}
