import { appDatabase, clusterRoles } from '../dataplane/dataplane.js';
import { lagBytes } from '../lib/lsn.js';
import { clusterPhase } from '../machines/cluster.js';
import { instancePhase } from '../machines/instance.js';
import type { InstanceRecord } from '../machines/ports.js';
import type { ClusterSnapshot } from '../store/clusters.js';

/** The JSON a client sees for a cluster. Secrets appear only in the connection URIs. */

export interface InstanceView {
  id: string;
  role: string;
  state: string;
  port: number | null;
  lsn: string | null;
  lagBytes: number | null;
  streaming: boolean | null;
}

export interface ClusterView {
  id: string;
  name: string;
  state: string;
  size: string;
  replicas: number;
  storageGb: number;
  version: number;
  uri: string | null;
  readOnlyUri: string | null;
  error: string | null;
  createdAt: string;
  instances: InstanceView[];
  events: { at: string; entity: string; from: string | null; to: string; reason: string }[];
}

function connectionUri(password: string, port: number): string {
  const user = encodeURIComponent(clusterRoles.app);
  return `postgresql://${user}:${encodeURIComponent(password)}@127.0.0.1:${port}/${appDatabase}?sslmode=disable`;
}

function instanceView(instance: InstanceRecord, primary: InstanceRecord | undefined): InstanceView {
  const lsn = instance.observed.lsn ?? null;
  const lag = instance.role === 'primary' ? 0 : lagBytes(primary?.observed.lsn, instance.observed.lsn);
  return {
    id: instance.id,
    role: instance.role,
    state: instancePhase(instance),
    port: instance.port,
    lsn,
    lagBytes: lag,
    streaming: instance.role === 'replica' ? (instance.observed.streaming ?? null) : null,
  };
}

/** Read-only traffic goes to the least-lagged running replica, else to the primary. */
function readOnlyTarget(views: readonly InstanceView[]): InstanceView | undefined {
  const replicas = views
    .filter((view) => view.role === 'replica' && view.state === 'running' && view.port !== null)
    .sort((a, b) => (a.lagBytes ?? Number.MAX_SAFE_INTEGER) - (b.lagBytes ?? Number.MAX_SAFE_INTEGER));
  return replicas[0] ?? views.find((view) => view.role === 'primary' && view.state === 'running');
}

export function clusterView(cluster: ClusterSnapshot): ClusterView {
  const primary = cluster.instances.find((instance) => instance.role === 'primary');
  const instances = cluster.instances.map((instance) => instanceView(instance, primary));
  const primaryView = instances.find((view) => view.role === 'primary');
  const readOnly = readOnlyTarget(instances);
  const state =
    cluster.deletedAt !== null ? 'deleted' : cluster.destroyRequested ? 'deleting' : clusterPhase(cluster.machineLabel, cluster.machineDone, cluster.instances);
  return {
    id: cluster.id,
    name: cluster.name,
    state,
    size: cluster.spec.size,
    replicas: cluster.spec.replicas,
    storageGb: cluster.spec.storageGb,
    version: cluster.spec.pgVersion,
    uri: primaryView?.port ? connectionUri(cluster.secrets.appPassword, primaryView.port) : null,
    readOnlyUri: readOnly?.port ? connectionUri(cluster.secrets.appPassword, readOnly.port) : null,
    error: cluster.machineLabel === 'failed' ? cluster.machineError : null,
    createdAt: cluster.createdAt.toISOString(),
    instances,
    events: cluster.events.map((event) => ({
      at: event.at.toISOString(),
      entity: event.entityId,
      from: event.from,
      to: event.to,
      reason: event.reason,
    })),
  };
}
