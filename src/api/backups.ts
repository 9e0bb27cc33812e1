import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellarError, invalid } from '../lib/errors.js';
import type { ClusterId } from '../lib/ids.js';
import { lsnToBigInt } from '../lib/lsn.js';
import { type ClusterSpec, type RestoreSpec, clusterNameLengthMax, clusterNamePattern } from '../lib/sizes.js';
import { type BackupSnapshot, createManualBackup, findBackup, listBackups, requestVerify } from '../store/backups.js';
import { type ClusterSnapshot, findCluster, findClusterById, insertCluster } from '../store/clusters.js';
import type { Pool } from '../store/pool.js';
import type { TokenOwner } from '../store/tenancy.js';
import { type ProxyEndpoints, clusterView } from './view.js';

/** Backups, their verification, and restore into a new cluster (point in time). */

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

export interface RestoreWindow {
  /** The earliest time (ISO) a restore can reach: the end of the oldest usable backup; null without one. */
  earliest: string | null;
  latest: string;
}

export interface BackupListView {
  cluster: string;
  window: RestoreWindow;
  backups: BackupView[];
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

/** A backup a restore may start from: taken, and not proven broken. */
function usable(backup: BackupSnapshot): boolean {
  return backup.finishedAt !== null && (backup.status === 'completed' || backup.status === 'verifying') && backup.verified !== false;
}

function restoreWindow(backups: readonly BackupSnapshot[], nowMs: number): RestoreWindow {
  const ends = backups.filter(usable).map((backup) => (backup.finishedAt as Date).getTime());
  return { earliest: ends.length === 0 ? null : new Date(Math.min(...ends)).toISOString(), latest: new Date(nowMs).toISOString() };
}

const lsnPattern = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

const restoreFieldMessages = {
  to: `to must be a new cluster name: a DNS label of 1-${clusterNameLengthMax} characters`,
  time: 'time must be an ISO 8601 time with a zone, e.g. 2026-11-26T10:15:00Z',
  lsn: 'lsn must be a WAL position such as 0/3000148',
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

interface RestoreRequest {
  to: string;
  time?: string;
  lsn?: string;
}

/** The backup to start from, and the target, or a 400/409 that says why and what the window is. */
function chooseBackup(source: ClusterSnapshot, backups: readonly BackupSnapshot[], request: RestoreRequest, nowMs: number): { backup: BackupSnapshot; target: Pick<RestoreSpec, 'targetTime' | 'targetLsn'> } {
  const window = restoreWindow(backups, nowMs);
  const windowText = window.earliest === null ? 'it has no completed backup yet' : `its restore window is ${window.earliest} to now (${window.latest})`;
  if (request.time !== undefined && request.lsn !== undefined) throw invalid('time', 'give time or lsn, not both');
  const candidates = backups.filter(usable);
  const damaged = backups.find((backup) => backup.verified === false);
  const refuse = (field: string, why: string): CellarError => {
    const note = damaged === undefined ? '' : `; backup ${damaged.id} failed verification (${damaged.verifyDetail ?? 'no detail'}) and is never restored`;
    return new CellarError(candidates.length === 0 && damaged !== undefined ? 'CELLAR_E_CONFLICT' : 'CELLAR_E_INVALID', `${why}: cluster "${source.name}" ${windowText}${note}`, field);
  };
  if (request.time !== undefined) {
    const atMs = Date.parse(request.time);
    if (!Number.isFinite(atMs) || !/(Z|[+-]\d\d:?\d\d)$/.test(request.time)) throw invalid('time', restoreFieldMessages.time);
    const backup = candidates.filter((candidate) => (candidate.finishedAt as Date).getTime() <= atMs)[0];
    if (backup === undefined || atMs > nowMs) throw refuse('time', `time ${request.time} is outside the restore window`);
    return { backup, target: { targetTime: new Date(atMs).toISOString() } };
  }
  if (request.lsn !== undefined) {
    if (!lsnPattern.test(request.lsn)) throw invalid('lsn', restoreFieldMessages.lsn);
    const target = lsnToBigInt(request.lsn);
    const backup = candidates.find((candidate) => candidate.endLsn !== null && lsnToBigInt(candidate.endLsn) <= target);
    if (backup === undefined) throw refuse('lsn', `lsn ${request.lsn} is before the end of every usable backup`);
    return { backup, target: { targetLsn: request.lsn.toUpperCase() } };
  }
  const newest = candidates[0];
  if (newest === undefined) throw refuse('name', 'nothing to restore');
  return { backup: newest, target: {} };
}

export function registerBackupRoutes(app: FastifyInstance, pool: Pool, proxy: ProxyEndpoints, ownerOf: (request: FastifyRequest) => TokenOwner): void {
  async function liveCluster(owner: TokenOwner, name: string): Promise<ClusterSnapshot> {
    const cluster = await findCluster(pool, owner.orgId, name);
    if (cluster === null) throw new CellarError('CELLAR_E_NOT_FOUND', `no cluster named "${name}"`, 'name');
    return cluster;
  }

  app.get<{ Params: { name: string } }>('/v1/clusters/:name/backups', { schema: { summary: "A cluster's backups and its restore window" } }, async (request) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    const backups = await listBackups(pool, cluster.id);
    const view: BackupListView = { cluster: cluster.name, window: restoreWindow(backups, Date.now()), backups: backups.map((backup) => backupView(backup, cluster.name)) };
    return view;
  });

  app.post<{ Params: { name: string } }>('/v1/clusters/:name/backups', { schema: { summary: 'Take a backup now (asynchronous: watch its status)' } }, async (request, reply) => {
    const cluster = await liveCluster(ownerOf(request), request.params.name);
    if (cluster.machineLabel !== 'running') throw new CellarError('CELLAR_E_CONFLICT', `cluster "${cluster.name}" is not running; back it up once it is`, 'name');
    const id = await createManualBackup(pool, cluster.id as ClusterId);
    const backup = await findBackup(pool, ownerOf(request).orgId, id);
    return reply.status(202).send(backup && backupView(backup, cluster.name));
  });

  app.get<{ Params: { id: string } }>('/v1/backups/:id', { schema: { summary: 'One backup' } }, async (request) => {
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
    await requestVerify(pool, backup.id);
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
      const { backup, target } = chooseBackup(source, backups, request.body, Date.now());
      const { restore: _previous, ...sourceSpec } = source.spec;
      const spec: ClusterSpec = { ...sourceSpec, restore: { sourceClusterId: source.id, backupId: backup.id, ...target } };
      const id = await insertCluster(pool, owner.orgId, request.body.to, spec);
      const created = await findClusterById(pool, owner.orgId, id);
      return reply.status(201).send(created && clusterView(created, proxy));
    },
  );
}
