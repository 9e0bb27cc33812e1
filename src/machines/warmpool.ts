import { type MachineDefinition, type Outcome, type StepContext, nap } from '../engine/machine.js';
import type { ClusterSpec } from '../lib/sizes.js';
import { type WarmPoolStore, warmPoolEntity, warmPoolKind } from './ports.js';

/**
 * The warm pool: keeps `target` running clusters of one spec ready in a reserved org, so a create
 * with that spec is answered by adopting one instead of waiting for initdb and pg_basebackup.
 * It only creates and deletes clusters; the cluster machine does the provisioning.
 */
export { warmPoolEntity, warmPoolKind };
export type WarmPoolLabel = 'fill';
export type WarmPoolData = Record<string, unknown>;

export interface WarmPoolPorts {
  readonly store: WarmPoolStore;
  /** How many clusters to keep ready; read on every tick so a change needs no restart. */
  readonly target: () => number;
  readonly spec: ClusterSpec;
}

/** While short of the target, one cluster is started per tick; the creates run in parallel. */
export const fillNapMs = 100;
export const watchNapMs = 5_000;

type Context = StepContext<WarmPoolLabel, WarmPoolData, WarmPoolPorts>;
type Result = Outcome<WarmPoolLabel, WarmPoolData>;

async function fill(context: Context): Promise<Result> {
  const { store, target, spec } = context.ports;
  const pooled = await store.pooledClusters();
  const failed = pooled.filter((cluster) => cluster.phase === 'failed');
  for (const cluster of failed) await store.destroyPooledCluster(cluster.id);
  const live = pooled.filter((cluster) => cluster.phase === 'creating' || cluster.phase === 'ready');
  const wanted = target();
  if (live.length < wanted) {
    await store.createPooledCluster(spec);
    return nap(fillNapMs);
  }
  const extra = live.slice(wanted);
  for (const cluster of extra) await store.destroyPooledCluster(cluster.id);
  return nap(watchNapMs);
}

export const warmPoolMachine: MachineDefinition<WarmPoolLabel, WarmPoolData, WarmPoolPorts> = {
  kind: warmPoolKind,
  initial: 'fill',
  transitions: { fill: [] },
  steps: { fill },
  lane: () => 'normal',
  stepTimeoutMs: () => 30_000,
};
