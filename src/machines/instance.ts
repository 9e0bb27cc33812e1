import type { InstanceSpec, InstanceStatus, UpstreamRef } from '../dataplane/dataplane.js';
import { type MachineDefinition, type MachineRef, type Outcome, type StepContext, done, fail, hop, nap } from '../engine/machine.js';
import { assert } from '../lib/assert.js';
import type { InstanceId } from '../lib/ids.js';
import { sizes } from '../lib/sizes.js';
import type { ClusterRecord, InstanceRecord, MachinePorts } from './ports.js';

/**
 * One Postgres server: allocate a port, create the data directory (initdb or clone from the
 * primary), start it, wait until it serves (a replica: streams), then probe it on the high lane.
 */
export const instanceLabels = ['start', 'create', 'starting', 'waitReady', 'running', 'destroy'] as const;
export type InstanceLabel = (typeof instanceLabels)[number];

export interface InstanceData extends Record<string, unknown> {
  /** Clock time the current wait for readiness began; bounds it. */
  readonly waitSinceMs?: number;
}

export const instanceKind = 'instance';
/** Named here, not imported, because cluster.ts imports this module. */
const clusterKindName = 'cluster';
/** Short naps while provisioning: the floor of each step is tens of milliseconds. */
export const readyPollMs = 25;
export const readyWaitMsMax = 120_000;
export const replicaWaitForPrimaryMs = 250;
export const probeIntervalMs = 1_000;
const createTimeoutMs = 15 * 60_000;
const defaultStepTimeoutMs = 60_000;

type Context = StepContext<InstanceLabel, InstanceData, MachinePorts>;
type Result = Outcome<InstanceLabel, InstanceData>;

export function slotNameFor(instanceId: InstanceId): string {
  // Instance ids are lower-case base32 with an underscore: already a valid slot name.
  return instanceId;
}

export function instanceSpec(cluster: ClusterRecord, instance: InstanceRecord): InstanceSpec {
  assert(instance.port !== null, `instance ${instance.id} has no port yet`);
  return {
    instanceId: instance.id,
    port: instance.port,
    pgVersion: cluster.spec.pgVersion,
    settings: sizes[cluster.spec.size],
    secrets: cluster.secrets,
  };
}

async function load(context: Context): Promise<{ cluster: ClusterRecord; instance: InstanceRecord }> {
  const { store } = context.ports;
  const instance = await store.instance(context.machine.entityId as InstanceId);
  assert(instance !== null, `instance ${context.machine.entityId} of machine ${context.machine.id} does not exist`);
  return { cluster: await store.cluster(instance.clusterId), instance };
}

async function primaryUpstream(context: Context, instance: InstanceRecord): Promise<UpstreamRef | null> {
  const siblings = await context.ports.store.instances(instance.clusterId);
  const primary = siblings.find((sibling) => sibling.role === 'primary');
  if (primary === undefined || primary.port === null || primary.machineLabel !== 'running') return null;
  return { host: '127.0.0.1', port: primary.port, slotName: slotNameFor(instance.id) };
}

function isReady(instance: InstanceRecord, status: InstanceStatus): boolean {
  if (!status.accepting) return false;
  return instance.role === 'primary' ? status.inRecovery === false : status.streaming === true;
}

const destroyRequested = (context: Context): boolean => context.signals.has('destroy');

async function start(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const port = await context.ports.store.allocatePort(context.machine.entityId as InstanceId);
  return hop('create', { reason: `port ${port} allocated` });
}

async function create(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  const spec = instanceSpec(cluster, instance);
  if (instance.role === 'primary') {
    await context.ports.dataPlane.createPrimary(spec);
    return hop('starting', { reason: 'data directory created' });
  }
  const upstream = await primaryUpstream(context, instance);
  if (upstream === null) return nap(replicaWaitForPrimaryMs);
  await context.ports.dataPlane.createReplica(spec, upstream);
  return hop('starting', { reason: `cloned from the primary on port ${upstream.port}` });
}

async function starting(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  await context.ports.dataPlane.start(instanceSpec(cluster, instance));
  return hop('waitReady', { data: { waitSinceMs: context.ports.clock.nowMs() }, reason: 'server started' });
}

async function waitReady(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  const status = await context.ports.dataPlane.status(instanceSpec(cluster, instance));
  await context.ports.store.recordObserved(instance.id, status);
  if (isReady(instance, status)) {
    const reason = instance.role === 'primary' ? 'accepting writes' : 'streaming from the primary';
    return hop('running', { data: {}, reason, wake: await wakeOnReady(context, instance) });
  }
  const waitedMs = context.ports.clock.nowMs() - (context.machine.data.waitSinceMs ?? context.ports.clock.nowMs());
  if (waitedMs > readyWaitMsMax) return fail(`not ready after ${readyWaitMsMax} ms (running=${status.running}, accepting=${status.accepting})`);
  if (!status.running) return hop('starting', { reason: 'server exited before it was ready' });
  return nap(readyPollMs);
}

/** The primary becoming ready wakes the replicas waiting to clone it; any instance wakes its cluster. */
async function wakeOnReady(context: Context, instance: InstanceRecord): Promise<MachineRef[]> {
  const cluster = { kind: clusterKindName, entityId: instance.clusterId };
  if (instance.role !== 'primary') return [cluster];
  const siblings = await context.ports.store.instances(instance.clusterId);
  return [cluster, ...siblings.filter((sibling) => sibling.id !== instance.id).map((sibling) => ({ kind: instanceKind, entityId: sibling.id }))];
}

async function running(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  const status = await context.ports.dataPlane.status(instanceSpec(cluster, instance));
  await context.ports.store.recordObserved(instance.id, status);
  if (!status.running) return hop('starting', { reason: 'server process is gone; starting it again' });
  return nap(probeIntervalMs);
}

async function destroy(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const instanceId = context.machine.entityId as InstanceId;
  const instance = await store.instance(instanceId);
  if (instance !== null) {
    await dataPlane.destroy(instanceId);
    if (instance.role === 'replica') await dropSlotOnPrimary(context, instance);
    await store.releasePort(instanceId);
    await store.markInstanceDeleted(instanceId);
    return done({ consume: ['destroy'], reason: 'server stopped, data and port released', wake: [{ kind: clusterKindName, entityId: instance.clusterId }] });
  }
  return done({ consume: ['destroy'], reason: 'already gone' });
}

async function dropSlotOnPrimary(context: Context, instance: InstanceRecord): Promise<void> {
  const siblings = await context.ports.store.instances(instance.clusterId);
  const primary = siblings.find((sibling) => sibling.role === 'primary' && sibling.port !== null);
  if (primary === undefined || primary.port === null) return;
  const cluster = await context.ports.store.cluster(instance.clusterId);
  const upstream = { host: '127.0.0.1', port: primary.port, slotName: slotNameFor(instance.id) };
  await context.ports.dataPlane.dropSlot(upstream, cluster.secrets);
}

export const instanceMachine: MachineDefinition<InstanceLabel, InstanceData, MachinePorts> = {
  kind: instanceKind,
  initial: 'start',
  transitions: {
    start: ['create', 'destroy'],
    create: ['starting', 'destroy'],
    starting: ['waitReady', 'destroy'],
    waitReady: ['running', 'starting', 'destroy'],
    running: ['starting', 'destroy'],
    destroy: [],
  },
  steps: { start, create, starting, waitReady, running, destroy },
  // Provisioning and health probes are latency-sensitive: everything an instance does is high lane.
  lane: () => 'high',
  stepTimeoutMs: (label) => (label === 'create' ? createTimeoutMs : defaultStepTimeoutMs),
};

/** The phase a person sees for an instance, from its machine label and what was last observed. */
export function instancePhase(instance: Pick<InstanceRecord, 'machineLabel' | 'observed'>): string {
  switch (instance.machineLabel) {
    case 'start':
    case 'create':
      return 'creating';
    case 'starting':
    case 'waitReady':
      return 'starting';
    case 'running':
      return instance.observed.accepting === false ? 'unreachable' : 'running';
    case 'destroy':
      return 'deleting';
    case 'failed':
      return 'failed';
    default:
      return instance.machineLabel;
  }
}
