import { randomBytes } from 'node:crypto';
import type { ClusterSecrets } from '../dataplane/dataplane.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { CellarError } from '../lib/errors.js';
import { type ClusterId, type OrgId, newId } from '../lib/ids.js';
import type { ClusterSpec } from '../lib/sizes.js';
import type { AutogrowPolicy, InstanceRecord, StorageFull } from '../machines/ports.js';
import { liveInstances } from './machine-store.js';
import { type Pool, inTransaction, isUniqueViolation, prepared } from './pool.js';
import { assertPlaceable } from './placement.js';
import type { DiskReserve } from '../lib/placement.js';
import { freeRouteKey } from './routes.js';
import { withFleetDefaults } from './rollouts.js';

/** Clusters as the API sees them: scoped to an org, with their machine and recent events. */

export const eventsPerClusterMax = 50;
export const clustersPerListMax = 500;

export interface ClusterEvent {
  readonly at: Date;
  readonly kind: string;
  readonly entityId: string;
  readonly from: string | null;
  readonly to: string;
  readonly reason: string;
  /** An `EventCode` (src/lib/event-codes.ts); null for a plain move, or an event older than codes. */
  readonly code: string | null;
}

export interface ClusterSnapshot {
  readonly id: ClusterId;
  readonly orgId: OrgId;
  readonly name: string;
  readonly routeKey: string | null;
  readonly spec: ClusterSpec;
  readonly secrets: ClusterSecrets;
  readonly createdAt: Date;
  readonly deletedAt: Date | null;
  readonly machineLabel: string;
  readonly machineDone: boolean;
  readonly machineError: string | null;
  readonly destroyRequested: boolean;
  /** The replicas the primary's commits currently wait for (any one); null before first set. */
  readonly syncStandbys: readonly string[] | null;
  /** Read-only because its storage is full, and at what use; null: writable (docs/STORAGE.md "Limits"). */
  readonly storageFull: StorageFull | null;
  /** Its autogrow policy; null: off. */
  readonly autogrow: AutogrowPolicy | null;
  readonly instances: readonly InstanceRecord[];
  readonly events: readonly ClusterEvent[];
}

interface ClusterRow {
  id: string;
  org_id: string;
  name: string;
  route_key: string | null;
  spec: ClusterSpec;
  secrets: ClusterSecrets;
  created_at: Date;
  deleted_at: Date | null;
  label: string;
  next_tick_at: Date | null;
  last_error: string | null;
  destroy_requested: boolean;
  sync_standbys: string[] | null;
  storage_read_only: StorageFull | null;
  storage_autogrow: AutogrowPolicy | null;
}

const clusterSelect = `
select c.id, c.org_id, c.name, c.route_key, c.spec, c.secrets, c.created_at, c.deleted_at, c.storage_read_only, c.storage_autogrow, m.label, m.next_tick_at, m.last_error,
       m.data -> 'syncStandbys' as sync_standbys,
       exists (select 1 from signals s where s.machine_id = m.id and s.name = 'destroy') as destroy_requested
  from clusters c join machines m on m.kind = 'cluster' and m.entity_id = c.id`;

const passwordBytes = 24;

/** Fresh passwords for a cluster's roles; only the control plane and the owner's URIs carry them. */
function newSecrets(): ClusterSecrets {
  const password = () => randomBytes(passwordBytes).toString('base64url');
  return { superuserPassword: password(), replicationPassword: password(), appPassword: password() };
}

/** Attempts at a cell-unique route key when two creates race for the same name. */
const routeKeyAttemptsMax = 3;

/** Creates the cluster and its machine (of the cluster machine's definition) in one transaction: nothing half-made on any failure. */
export async function insertCluster(db: Pool, clusterMachine: MachineOrigin, orgId: OrgId, name: string, requested: ClusterSpec, options: { pooled?: boolean; reserve?: DiskReserve } = {}): Promise<ClusterId> {
  const id = newId('cluster');
  // A new cluster starts on the fleet's current defaults: a rollout never needs to reach it.
  const spec = await withFleetDefaults(db, requested);
  const pooled = options.pooled === true;
  for (let attempt = 1; ; attempt += 1) {
    try {
      await inTransaction(db, async (client) => {
        await assertPlaceable(client, spec, options.reserve);
        const routeKey = pooled ? null : await freeRouteKey(client, name);
        await client.query('insert into clusters (id, org_id, name, spec, secrets, pooled, route_key) values ($1, $2, $3, $4, $5, $6, $7)', [
          id,
          orgId,
          name,
          spec,
          newSecrets(),
          pooled,
          routeKey,
        ]);
        await insertMachine(client, newMachine(clusterMachine, id, id));
        await client.query(`insert into config_revisions (cluster_id, revision, size, replicas, settings, defaults, actor, reason) values ($1, 1, $2, $3, $4, $5, 'cellar', 'created')`, [
          id,
          spec.size,
          spec.replicas,
          spec.settings ?? {},
          spec.defaults ?? {},
        ]);
      });
      return id;
    } catch (error) {
      if (isUniqueViolation(error, 'clusters_live_name')) throw nameTaken(name);
      if (!isUniqueViolation(error, 'clusters_route_key') || attempt >= routeKeyAttemptsMax) throw error;
    }
  }
}

export function nameTaken(name: string): CellarError {
  return new CellarError('CELLAR_E_NAME_TAKEN', `name: a cluster named "${name}" already exists in this organisation`, 'name');
}


async function snapshot(db: Pool, row: ClusterRow): Promise<ClusterSnapshot> {
  const [instances, events] = await Promise.all([liveInstances(db, row.id), clusterEvents(db, row.id)]);
  return {
    id: row.id as ClusterId,
    orgId: row.org_id as OrgId,
    name: row.name,
    routeKey: row.route_key,
    spec: row.spec,
    secrets: row.secrets,
    createdAt: row.created_at,
    deletedAt: row.deleted_at,
    machineLabel: row.label,
    machineDone: row.next_tick_at === null && row.label !== 'failed',
    machineError: row.last_error,
    destroyRequested: row.destroy_requested,
    syncStandbys: row.sync_standbys,
    storageFull: row.storage_read_only,
    autogrow: row.storage_autogrow,
    instances,
    events,
  };
}

const recentEvents = prepared(
  'clusters_events',
  `select at, kind, entity_id, from_label, to_label, reason, code from (
     select * from events where cluster_id = $1 order by id desc limit $2) recent
   order by id`,
);

async function clusterEvents(db: Pool, clusterId: string): Promise<ClusterEvent[]> {
  const result = await db.query<{ at: Date; kind: string; entity_id: string; from_label: string | null; to_label: string; reason: string; code: string | null }>(recentEvents([clusterId, eventsPerClusterMax]));
  return result.rows.map((row) => ({ at: row.at, kind: row.kind, entityId: row.entity_id, from: row.from_label, to: row.to_label, reason: row.reason, code: row.code }));
}

const liveClusterByName = prepared('clusters_find', `${clusterSelect} where c.org_id = $1 and (c.name = $2 or c.id = $2) and c.deleted_at is null`);
const clusterById = prepared('clusters_find_by_id', `${clusterSelect} where c.org_id = $1 and c.id = $2`);

/** A live cluster by name or id, in the org. */
export async function findCluster(db: Pool, orgId: OrgId, nameOrId: string): Promise<ClusterSnapshot | null> {
  const result = await db.query<ClusterRow>(liveClusterByName([orgId, nameOrId]));
  const row = result.rows[0];
  return row === undefined ? null : snapshot(db, row);
}

/** Any cluster by id in the org, deleted or not, so a waiting client can see the end of a delete. */
export async function findClusterById(db: Pool, orgId: OrgId, id: string): Promise<ClusterSnapshot | null> {
  const result = await db.query<ClusterRow>(clusterById([orgId, id]));
  const row = result.rows[0];
  return row === undefined ? null : snapshot(db, row);
}

export async function listClusters(db: Pool, orgId: OrgId): Promise<ClusterSnapshot[]> {
  const result = await db.query<ClusterRow>(`${clusterSelect} where c.org_id = $1 and c.deleted_at is null order by c.name limit $2`, [orgId, clustersPerListMax]);
  return Promise.all(result.rows.map((row) => snapshot(db, row)));
}

export interface CellCounts {
  readonly clusters: number;
  readonly instances: number;
  readonly machinesDue: number;
  readonly machinesFailed: number;
}

/** Counts across the cell, or across one org's clusters. */
export async function cellCounts(db: Pool, orgId: OrgId | null): Promise<CellCounts> {
  const result = await db.query<{ clusters: number; instances: number; due: number; failed: number }>(
    `with scope as (select id, pooled, deleted_at from clusters where $1::text is null or org_id = $1)
     select (select count(*)::int from scope where deleted_at is null and not pooled) as clusters,
            (select count(*)::int from instances where deleted_at is null and ($1::text is null or cluster_id in (select id from scope))) as instances,
            (select count(*)::int from machines where next_tick_at <= now() and ($1::text is null or cluster_id in (select id from scope))) as due,
            (select count(*)::int from machines where label = 'failed' and ($1::text is null or cluster_id in (select id from scope))) as failed`,
    [orgId],
  );
  const row = result.rows[0];
  return { clusters: row?.clusters ?? 0, instances: row?.instances ?? 0, machinesDue: row?.due ?? 0, machinesFailed: row?.failed ?? 0 };
}

/** Raises a signal on a cluster's machine (failover, switchover); `switchoverTo` is recorded first. */
export async function requestClusterAction(db: Pool, clusterId: ClusterId, signals: readonly string[], switchoverTo: string | null = null): Promise<void> {
  await inTransaction(db, async (client) => {
    const machine = await client.query<{ id: string }>(`select id from machines where kind = 'cluster' and entity_id = $1 for update`, [clusterId]);
    const machineId = machine.rows[0]?.id;
    if (machineId === undefined) throw new Error(`cluster ${clusterId} has no machine`);
    if (signals.includes('switchover')) await client.query('update clusters set switchover_to = $2 where id = $1', [clusterId, switchoverTo]);
    for (const name of signals) await raiseSignal(client, machineId, name);
  });
}
