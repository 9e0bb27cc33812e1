import { type ArchiveStatus, appDatabase, clusterRoles } from '../dataplane/dataplane.js';
import { briefFailure } from './failure.js';
import { lagBytes } from '../lib/lsn.js';
import { durabilityOf, storageUse, walKeepLimitMb } from '../lib/sizes.js';
import { clusterPhase, isArchiveFailing } from '../machines/cluster.js';
import { instancePhase } from '../machines/instance.js';
import type { InstanceRecord } from '../machines/ports.js';
import type { ClusterSnapshot } from '../store/clusters.js';

/** The JSON a client sees for a cluster. Secrets appear only in the connection URIs. */

export interface InstanceView {
  id: string;
  role: string;
  state: string;
  /** Its instance machine's label now (docs/CONSOLE.md: the console draws the machines). */
  machineLabel: string;
  /** The host it lives on, by name. */
  host: string | null;
  port: number | null;
  lsn: string | null;
  lagBytes: number | null;
  streaming: boolean | null;
  /** Out of the routes: an old primary until it has rejoined as a replica. */
  fenced: boolean;
  /** Its use on disk as last measured (docs/STORAGE.md): the data directory without pg_wal, and pg_wal; null before the first measurement. */
  dataBytes: number | null;
  walBytes: number | null;
  /** When it was measured (ISO time). Its filesystem's free space is the host's, shown to admins only (`hosts show`): hosts are shared between tenants. */
  measuredAt: string | null;
}

/** The cluster's use against its allocation: the primary's data and WAL. Null before its primary was measured. */
export interface StorageView {
  allocatedGb: number;
  /** Null until the primary is first measured. */
  usedBytes: number | null;
  /** usedBytes of allocatedGb (binary gigabytes), in percent, one decimal; null until measured. */
  percent: number | null;
  measuredAt: string | null;
  /** The primary refuses writes because the storage is full (docs/STORAGE.md "Limits"). */
  readOnly: boolean;
  /** It went on writing past its whole allocation with read-only turned off: the proxy refuses every connection until a resize. */
  locked: boolean;
  /** Null: autogrow is off. */
  autogrow: { maxGb: number; thresholdPercent: number; stepPercent: number } | null;
}

export interface ClusterView {
  id: string;
  name: string;
  state: string;
  /** The cluster machine's label now: `state` is the phase a user reads, this is where the machine is in its transition table. */
  machineLabel: string;
  size: string;
  replicas: number;
  storageGb: number;
  storage: StorageView;
  version: number;
  /** What the cluster was asked for: sync, sync-strict or async. */
  durability: string;
  /** Hours between scheduled base backups, when the cluster sets its own (else the cell's default). */
  backupIntervalHours: number | null;
  /** What commits wait for now: `sync` (a replica has them) or `async` (the primary alone). */
  replication: 'sync' | 'async' | null;
  /** Continuous WAL archiving from the primary: how far behind, and whether it is failing. */
  archive: ArchiveStatus | null;
  /** What threatens the cluster though it serves, in sentences (docs/STORAGE.md "WAL bounds"); empty: nothing. */
  warnings: string[];
  /** The cell-unique name the proxy routes by (user `role.routeKey`, or options `-c cluster=routeKey`). */
  routeKey: string | null;
  uri: string | null;
  readOnlyUri: string | null;
  error: string | null;
  createdAt: string;
  instances: InstanceView[];
  events: { at: string; entity: string; from: string | null; to: string; reason: string; code: string | null }[];
}

/** Where clients connect: the proxy's two endpoints. */
export interface ProxyEndpoints {
  readonly host: string;
  readonly readWritePort: number;
  readonly readOnlyPort: number;
}

/** The proxy routes by the user name `role.routeKey` and forwards `role`. */
function connectionUri(routeKey: string, password: string, host: string, port: number): string {
  const user = encodeURIComponent(`${clusterRoles.app}.${routeKey}`);
  return `postgresql://${user}:${encodeURIComponent(password)}@${host}:${port}/${appDatabase}?sslmode=disable`;
}

function instanceView(instance: InstanceRecord, primary: InstanceRecord | undefined): InstanceView {
  const lsn = instance.observed.lsn ?? null;
  const lag = instance.role === 'primary' ? 0 : lagBytes(primary?.observed.lsn, instance.observed.lsn);
  return {
    id: instance.id,
    role: instance.role,
    state: instancePhase(instance),
    machineLabel: instance.machineLabel,
    host: instance.hostName,
    port: instance.port,
    lsn,
    lagBytes: lag,
    streaming: instance.role === 'replica' ? (instance.observed.streaming ?? null) : null,
    fenced: instance.fenced,
    dataBytes: instance.usage?.dataBytes ?? null,
    walBytes: instance.usage?.walBytes ?? null,
    measuredAt: instance.usageMeasuredAt?.toISOString() ?? null,
  };
}

/** The primary is what the allocation holds the user to: a replica's copy lags it and its own WAL differs. */
function storageView(cluster: ClusterSnapshot, primary: InstanceRecord | undefined, gbBytes: number): StorageView {
  const allocatedGb = cluster.spec.storageGb;
  const measured = primary?.usage == null || primary.usageMeasuredAt === null ? null : primary.usageMeasuredAt;
  const use = measured === null ? null : storageUse(allocatedGb, gbBytes, primary?.usage ?? null);
  return {
    allocatedGb,
    usedBytes: use?.usedBytes ?? null,
    percent: use === null ? null : Math.round(use.percent * 10) / 10,
    measuredAt: measured?.toISOString() ?? null,
    readOnly: cluster.storageFull !== null,
    locked: cluster.storageFull?.locked === true,
    autogrow: cluster.autogrow,
  };
}

/** Unarchived WAL stays on the primary's disk: say so once it holds this part of the slot bound. */
export const archiveHeldWarningFraction = 0.5;

export function walWarnings(storageGb: number, primary: InstanceRecord | undefined): string[] {
  const archive = primary?.observed.archive;
  if (archive == null || !isArchiveFailing(archive) || archive.lagBytes === null) return [];
  const boundBytes = walKeepLimitMb(storageGb) * 1024 ** 2;
  if (archive.lagBytes < archiveHeldWarningFraction * boundBytes) return [];
  const since = archive.lastArchivedAt === null ? 'it began' : archive.lastArchivedAt;
  const heldMb = Math.round(archive.lagBytes / 1024 ** 2);
  return [`archiving has failed since ${since} (${archive.failedCount} failures); ${heldMb} MB of WAL held on the primary, ${Math.round((archive.lagBytes / boundBytes) * 100)}% of the ${walKeepLimitMb(storageGb)} MB WAL bound`];
}

export function clusterView(cluster: ClusterSnapshot, proxy: ProxyEndpoints, gbBytes: number): ClusterView {
  const primary = cluster.instances.find((instance) => instance.role === 'primary');
  const instances = cluster.instances.map((instance) => instanceView(instance, primary));
  const routable = cluster.routeKey !== null && cluster.deletedAt === null;
  const uri = (port: number) => (routable ? connectionUri(cluster.routeKey as string, cluster.secrets.appPassword, proxy.host, port) : null);
  const state =
    cluster.deletedAt !== null ? 'deleted' : cluster.destroyRequested ? 'deleting' : clusterPhase(cluster.machineLabel, cluster.machineDone, cluster.instances);
  return {
    id: cluster.id,
    name: cluster.name,
    state,
    machineLabel: cluster.machineLabel,
    size: cluster.spec.size,
    replicas: cluster.spec.replicas,
    storageGb: cluster.spec.storageGb,
    storage: storageView(cluster, primary, gbBytes),
    version: cluster.spec.pgVersion,
    durability: durabilityOf(cluster.spec),
    backupIntervalHours: cluster.spec.backupIntervalHours ?? null,
    replication: cluster.syncStandbys === null ? null : cluster.syncStandbys.length > 0 ? 'sync' : 'async',
    archive: primary?.observed.archive ?? null,
    warnings: walWarnings(cluster.spec.storageGb, primary),
    routeKey: cluster.routeKey,
    uri: uri(proxy.readWritePort),
    readOnlyUri: uri(proxy.readOnlyPort),
    error: cluster.machineLabel === 'failed' ? briefFailure(cluster.machineError) : null,
    createdAt: cluster.createdAt.toISOString(),
    instances,
    events: cluster.events.map((event) => ({
      at: event.at.toISOString(),
      entity: event.entityId,
      from: event.from,
      to: event.to,
      reason: event.reason,
      code: event.code,
    })),
  };
}
