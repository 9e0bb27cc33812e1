import { type MachineDefinition, type Outcome, type StepContext, done, fail, hop, nap } from '../engine/machine.js';
import type { ClusterId } from '../lib/ids.js';
import { instanceKind, instancePhase } from './instance.js';
import type { InstanceRecord, MachinePorts } from './ports.js';

/**
 * A cluster: one primary and `replicas` replicas. It creates its instances, waits for them to
 * serve, then watches; on `destroy` it tears them down and waits until they are gone.
 */
export const clusterLabels = ['start', 'waitInstances', 'running', 'destroy', 'waitDestroyed'] as const;
export type ClusterLabel = (typeof clusterLabels)[number];
export type ClusterData = Record<string, unknown>;

export const clusterKind = 'cluster';
/** Instances nudge the cluster when they change, so these naps are only a backstop. */
export const provisioningNapMs = 1_000;
export const watchNapMs = 5_000;
const stepTimeoutMs = 30_000;

type Context = StepContext<ClusterLabel, ClusterData, MachinePorts>;
type Result = Outcome<ClusterLabel, ClusterData>;

const clusterIdOf = (context: Context): ClusterId => context.machine.entityId as ClusterId;
const destroyRequested = (context: Context): boolean => context.signals.has('destroy');

async function start(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { store } = context.ports;
  const cluster = await store.cluster(clusterIdOf(context));
  const existing = new Set((await store.instances(cluster.id)).map((instance) => instance.ordinal));
  for (let ordinal = 0; ordinal <= cluster.spec.replicas; ordinal += 1) {
    if (!existing.has(ordinal)) await store.createInstance(cluster.id, ordinal, ordinal === 0 ? 'primary' : 'replica');
  }
  return hop('waitInstances', { reason: `1 primary and ${cluster.spec.replicas} replica(s) requested` });
}

function isServing(instance: InstanceRecord): boolean {
  return instance.machineLabel === 'running';
}

async function waitInstances(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const instances = await context.ports.store.instances(clusterIdOf(context));
  const failed = instances.find((instance) => instance.machineLabel === 'failed');
  if (failed !== undefined) return fail(`instance ${failed.id} (${failed.role}) failed: ${failed.machineError ?? 'unknown reason'}`);
  if (instances.length > 0 && instances.every(isServing)) {
    return hop('running', { reason: `${instances.length} instance(s) running` });
  }
  return nap(provisioningNapMs);
}

async function running(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  return nap(watchNapMs);
}

async function destroy(context: Context): Promise<Result> {
  const { store } = context.ports;
  for (const instance of await store.instances(clusterIdOf(context))) {
    await store.requestDestroy(instanceKind, instance.id);
  }
  return hop('waitDestroyed', { consume: ['destroy'], reason: 'deleting every instance' });
}

async function waitDestroyed(context: Context): Promise<Result> {
  const { store } = context.ports;
  const remaining = await store.instances(clusterIdOf(context));
  if (remaining.length > 0) return nap(provisioningNapMs);
  await store.markClusterDeleted(clusterIdOf(context));
  return done({ reason: 'all instances deleted' });
}

export const clusterMachine: MachineDefinition<ClusterLabel, ClusterData, MachinePorts> = {
  kind: clusterKind,
  initial: 'start',
  transitions: {
    start: ['waitInstances', 'destroy'],
    waitInstances: ['running', 'destroy'],
    running: ['destroy'],
    destroy: ['waitDestroyed'],
    waitDestroyed: [],
  },
  steps: { start, waitInstances, running, destroy, waitDestroyed },
  lane: (label) => (label === 'running' ? 'normal' : 'high'),
  stepTimeoutMs: () => stepTimeoutMs,
};

/** The human phase of a cluster (creating, running, degraded, deleting, deleted, failed). */
export function clusterPhase(machineLabel: string, machineDone: boolean, instances: readonly InstanceRecord[]): string {
  switch (machineLabel) {
    case 'start':
    case 'waitInstances':
      return 'creating';
    case 'running':
      return instances.every((instance) => instancePhase(instance) === 'running') ? 'running' : 'degraded';
    case 'destroy':
      return 'deleting';
    case 'waitDestroyed':
      return machineDone ? 'deleted' : 'deleting';
    case 'failed':
      return 'failed';
    default:
      return machineLabel;
  }
}
