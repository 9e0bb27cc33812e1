import type { InstanceRecord } from './ports.js';

/** What the cluster, change and backup machines each ask of a cluster's replicas (one module, so none imports another's machine). */

export function isStreamingReplica(instance: InstanceRecord): boolean {
  return instance.role === 'replica' && !instance.fenced && instance.machineLabel === 'running' && instance.observed.streaming === true;
}

/** Its deletion was asked for or is under way. */
export function isBeingRemoved(instance: InstanceRecord): boolean {
  return instance.destroyRequested || instance.machineLabel === 'destroy';
}

/**
 * A scale is done: exactly `wanted` replicas are left (removed ones deleted), each streaming and
 * routed. What a change of `replicas` waits for (docs/CONFIG.md, the change machine's `scale`).
 */
export function hasReplicas(wanted: number, instances: readonly InstanceRecord[]): boolean {
  const replicas = instances.filter((instance) => instance.role === 'replica');
  return replicas.length === wanted && replicas.every((instance) => isStreamingReplica(instance) && instance.inRoute && !isBeingRemoved(instance));
}
