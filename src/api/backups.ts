import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError } from '../lib/errors.js';
import type { ClusterId } from '../lib/ids.js';
import type { DiskReserve } from '../lib/placement.js';
import { type ClusterSpec, clusterNameLengthMax, clusterNamePattern } from '../lib/sizes.js';
import { backupMachine, verifySignal } from '../machines/backup.js';
import { clusterMachine } from '../machines/cluster.js';
import {
  type BackupSnapshot,
  createManualBackup,
  findBackup,
  listBackups,
  listDeletedClustersWithBackups,
  observedWal,
  requestVerify,
} from '../store/backups.js';
import { type ClusterSnapshot, findCluster, findClusterById, insertCluster } from '../store/clusters.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';
import { type RestoreChoice, type RestoreRequest, type RestoreSourceFacts, type RestoreWindow, chooseBackup, lsnFormat, restoreWindow, timeFormat } from './restore.js';
import { type ProxyEndpoints, clusterView } from './view.js';

/**
 * Backups, their verification, and restore into a new cluster (point in time); a deleted
 * cluster's backups stay listed and restorable by id until its deleted-backup retention passes.
 */

export type { RestoreWindow } from './restore.js';

export interface BackupView {
  id: string;
  cluster: string;
  reason: string;
  /** running, verifying, completed (verified), failed */
  status: string;
  verified: boolean | null;
  verifyDetail: string | null;
  error: string | null;
  sourceInstance: string | null;
  startLsn: string | null;
  endLsn: string | null;
  timeline: number | null;
  bytes: number | null;
  /** Seconds pg_basebackup ran; bytes / takeSeconds is the backup's throughput. */
  takeSeconds: number | null;
  startedAt: string;
  finishedAt: string | null;
  verifiedAt: string | null;
}

export interface BackupListView {
  cluster: string;
  window: RestoreWindow;
  backups: BackupView[];
}

export interface DeletedClusterView {
  id: string;
  name: string;
  deletedAt: string;
  /** When the backups and WAL go for good, unless restored into a new cluster before. */
  purgeAt: string;
  window: RestoreWindow;
  backups: BackupView[];
}

export interface DeletedClusterListView {
  clusters: DeletedClusterView[];
}

function backupView(backup: BackupSnapshot, clusterName: string): BackupView {
  return {
    id: backup.id,
    cluster: clusterName,
    reason: backup.reason,
    status: backup.status,
    verified: backup.verified,
    verifyDetail: backup.verifyDetail,
    error: backup.error,
    sourceInstance: backup.sourceInstanceId,
    startLsn: backup.startLsn,
    endLsn: backup.endLsn,
    timeline: backup.timeline,
    bytes: backup.bytes,
    takeSeconds: backup.takeMs === null ? null : backup.takeMs / 1000,
    startedAt: backup.startedAt.toISOString(),
    finishedAt: backup.finishedAt?.toISOString() ?? null,
    verifiedAt: backup.verifiedAt?.toISOString() ?? null,
  };
}

const restoreFieldMessages = {
  to: `to must be a new cluster name: a DNS label of 1-${clusterNameLengthMax} characters`,
  time: `time must be ${timeFormat}`,
  lsn: `lsn must be a WAL position: ${lsnFormat}`,
} as const;

const restoreBody = {
  type: 'object',
  required: ['to'],
  additionalProperties: false,
  properties: {
    to: { type: 'string', minLength: 1, maxLength: clusterNameLengthMax, pattern: clusterNamePattern.source },
    time: { type: 'string', maxLength: 64 },
    lsn: { type: 'string', maxLength: 20 },
  },
} as const;

export interface BackupRouteOptions {
  readonly proxy: ProxyEndpoints;
  /** How long a deleted cluster's backups are kept (the backup schedule purges them after). */
  readonly deletedRetentionMs: number;
  /** Bytes in one GB of allocation, for the cluster view's storage. */
  readonly gbBytes: number;
  /** What a restored cluster's placement leaves free on measured hosts (docs/STORAGE.md "Host disk reserve"). */
  readonly hostDiskReserve: DiskReserve;
}

export function registerBackupRoutes(app: FastifyInstance, pool: Pool, options: BackupRouteOptions, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  async function liveCluster(owner: TokenOwner, name: string): Promise<ClusterSnapshot> {
    const cluster = await findCluster(pool, owner.orgId, name);
    if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${name}"`, 'name');
    return cluster;
  }

  async function sourceFacts(cluster: { id: string; name: string; deletedAt: Date | null }): Promise<RestoreSourceFacts> {
    return { name: cluster.name, deletedAt: cluster.deletedAt, wal: await observedWal(pool, cluster.id) };
  }

  /** The new cluster: the source's spec, and where its primary is restored from; one transaction. */
  async function createRestored(owner: TokenOwner, source: ClusterSnapshot, to: string, choice: RestoreChoice): Promise<ClusterSnapshot | null> {
    const { restore: _previous, ...sourceSpec } = source.spec;
    const spec: ClusterSpec = { ...sourceSpec, restore: { sourceClusterId: source.id, backupId: choice.backup.id, ...choice.target } };
    const id = await insertCluster(pool, clusterMachine, owner.orgId, to, spec, { reserve: options.hostDiskReserve });
    return findClusterById(pool, owner.orgId, id);
  }

  app.get<{ Params: { name: string } }>('/v1/clusters/:name/backups', { schema: { summary: "A cluster's backups and its restore window" } }, async (request) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    const backups = await listBackups(pool, cluster.id);
    const window = restoreWindow(await sourceFacts(cluster), backups, Date.now());
    const view: BackupListView = { cluster: cluster.name, window, backups: backups.map((backup) => backupView(backup, cluster.name)) };
    return view;
  });

  app.get('/v1/deleted-clusters', { schema: { summary: "The org's deleted clusters whose backups are still kept, with each restore window and when they are purged" } }, async (request) => {
    const owner = ownerOf(request);
    const clusters: DeletedClusterView[] = [];
    for (const cluster of await listDeletedClustersWithBackups(pool, owner.orgId)) {
      const backups = await listBackups(pool, cluster.id);
      clusters.push({
        id: cluster.id,
        name: cluster.name,
        deletedAt: cluster.deletedAt.toISOString(),
        purgeAt: new Date(cluster.deletedAt.getTime() + options.deletedRetentionMs).toISOString(),
        window: restoreWindow(await sourceFacts(cluster), backups, Date.now()),
        backups: backups.map((backup) => backupView(backup, cluster.name)),
      });
    }
    const view: DeletedClusterListView = { clusters };
    return view;
  });

  app.post<{ Params: { name: string } }>('/v1/clusters/:name/backups', { schema: { summary: 'Take a backup now (asynchronous: watch its status)' } }, async (request, reply) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    if (cluster.machineLabel !== 'running') throw new CellarError('CELLAR_E_CONFLICT', `cluster "${cluster.name}" is not running; back it up once it is`, 'name');
    const id = await createManualBackup(pool, backupMachine, cluster.id as ClusterId);
    const backup = await findBackup(pool, ownerOf(request).orgId, id);
    return reply.status(202).send(backup && backupView(backup, cluster.name));
  });

  app.get<{ Params: { id: string } }>('/v1/backups/:id', { schema: { summary: 'One backup (of a live cluster, or of a deleted one until it is purged)' } }, async (request) => {
    const owner = ownerOf(request);
    const backup = await findBackup(pool, owner.orgId, request.params.id);
    if (backup === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no backup ${request.params.id}`, 'id');
    const cluster = await findClusterById(pool, owner.orgId, backup.clusterId);
    return backupView(backup, cluster?.name ?? backup.clusterId);
  });

  app.post<{ Params: { id: string } }>('/v1/backups/:id/verify', { schema: { summary: 'Prove the backup restores, again (asynchronous)' } }, async (request, reply) => {
    const owner = ownerOf(request);
    const backup = await findBackup(pool, owner.orgId, request.params.id);
    if (backup === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no backup ${request.params.id}`, 'id');
    if (backup.finishedAt === null || backup.status === 'failed') throw new CellarError('CELLAR_E_CONFLICT', `backup ${backup.id} is ${backup.status}; only a taken backup can be verified`, 'id');
    await requestVerify(pool, backupMachine, backup.id, verifySignal);
    const again = await findBackup(pool, owner.orgId, backup.id);
    const cluster = await findClusterById(pool, owner.orgId, backup.clusterId);
    return reply.status(202).send(again && backupView(again, cluster?.name ?? backup.clusterId));
  });

  app.post<{ Params: { name: string }; Body: RestoreRequest }>(
    '/v1/clusters/:name/restore',
    { config: { fieldMessages: restoreFieldMessages }, schema: { summary: 'Restore a backup into a new cluster, to a time or LSN (default latest)', body: restoreBody } },
    async (request, reply) => {
      const owner = ownerOf(request);
      const source = await liveCluster(owner, request.params.name);
      const backups = await listBackups(pool, source.id);
      const choice = chooseBackup(await sourceFacts(source), backups, request.body, Date.now());
      return reply.status(201).send(clusterViewOrNull(await createRestored(owner, source, request.body.to, choice)));
    },
  );

  app.post<{ Params: { id: string }; Body: RestoreRequest }>(
    '/v1/backups/:id/restore',
    {
      config: { fieldMessages: restoreFieldMessages },
      schema: { summary: "Restore this backup (of a live cluster, or of a deleted one until it is purged) into a new cluster, to a time or LSN after the backup's end (default latest)", body: restoreBody },
    },
    async (request, reply) => {
      const owner = ownerOf(request);
      const backup = await findBackup(pool, owner.orgId, request.params.id);
      if (backup === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no backup ${request.params.id}`, 'id');
      const source = await findClusterById(pool, owner.orgId, backup.clusterId);
      if (source === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no backup ${request.params.id}`, 'id');
      const choice = chooseBackup(await sourceFacts(source), [backup], request.body, Date.now(), backup.id);
      return reply.status(201).send(clusterViewOrNull(await createRestored(owner, source, request.body.to, choice)));
    },
  );

  function clusterViewOrNull(cluster: ClusterSnapshot | null): ReturnType<typeof clusterView> | null {
    return cluster && clusterView(cluster, options.proxy, options.gbBytes);
  }
}
