import type { ClusterSecrets, DataPlane, InstanceStatus } from '../dataplane/dataplane.js';
import type { Clock, Random } from '../lib/clock.js';
import type { ClusterId, InstanceId } from '../lib/ids.js';
import type { ClusterSpec } from '../lib/sizes.js';

/** What the cluster and instance machines may read and change in the cell store. */

export type Role = 'primary' | 'replica';

export interface ClusterRecord {
  readonly id: ClusterId;
  readonly name: string;
  readonly spec: ClusterSpec;
  readonly secrets: ClusterSecrets;
}

export interface InstanceRecord {
  readonly id: InstanceId;
  readonly clusterId: ClusterId;
  readonly ordinal: number;
  readonly role: Role;
  readonly port: number | null;
  readonly observed: Partial<InstanceStatus>;
  /** The instance machine's current label, and its last error if it failed. */
  readonly machineLabel: string;
  readonly machineError: string | null;
}

export interface MachineStore {
  cluster(id: ClusterId): Promise<ClusterRecord>;
  /** Live instances (not deleted), ordered by ordinal. */
  instances(clusterId: ClusterId): Promise<InstanceRecord[]>;
  instance(id: InstanceId): Promise<InstanceRecord | null>;
  /** Creates the instance and its machine; a second call for the same ordinal is a no-op. */
  createInstance(clusterId: ClusterId, ordinal: number, role: Role): Promise<void>;
  /** Returns the instance's port, allocating a free one the first time. */
  allocatePort(instanceId: InstanceId): Promise<number>;
  releasePort(instanceId: InstanceId): Promise<void>;
  recordObserved(instanceId: InstanceId, observed: InstanceStatus): Promise<void>;
  markInstanceDeleted(instanceId: InstanceId): Promise<void>;
  markClusterDeleted(clusterId: ClusterId): Promise<void>;
  /** Raises `destroy` on an entity's machine; a machine in `failed` is moved to `destroy` so it can clean up. */
  requestDestroy(kind: string, entityId: string): Promise<void>;
}

export interface MachinePorts {
  readonly clock: Clock;
  readonly random: Random;
  readonly store: MachineStore;
  readonly dataPlane: DataPlane;
}
