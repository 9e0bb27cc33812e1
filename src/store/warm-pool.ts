import { type MachineOrigin, wakeMachines } from './machines-table.js';
import type { EventCode } from '../lib/event-codes.js';
import { type ClusterId, type OrgId, randomToken } from '../lib/ids.js';
import { type DiskReserve, defaultDiskReserve } from '../lib/placement.js';
import type { ClusterSpec } from '../lib/sizes.js';
import { type PooledCluster, type PooledPhase, type WarmPoolStore, clusterKind, warmPoolEntity, warmPoolKind } from '../machines/ports.js';
import { insertCluster, nameTaken } from './clusters.js';
import { isUniqueViolation } from './pool.js';
import { freeRouteKey } from './routes.js';
import { requestDestroy } from './machine-store.js';
import { type Pool, inTransaction } from './pool.js';

/** The reserved org that owns warm clusters until a create adopts one (see migration 0002). */
export const warmPoolOrgId = 'org_warmpoolaaaa' as OrgId;

/** A pooled cluster's phase, from its machine, its instances' machines and a pending destroy. */
const pooledSelect = `
select c.id,
       case when m.label = 'failed' or exists (select 1 from instances i join machines im on im.kind = 'instance' and im.entity_id = i.id
                                                where i.cluster_id = c.id and i.deleted_at is null and im.label = 'failed') then 'failed'
            when m.label in ('destroy', 'waitDestroyed') or exists (select 1 from signals s where s.machine_id = m.id and s.name = 'destroy') then 'deleting'
            when m.label = 'running' and not exists (select 1 from instances i join machines im on im.kind = 'instance' and im.entity_id = i.id
                                                      where i.cluster_id = c.id and i.deleted_at is null and im.label <> 'running') then 'ready'
            else 'creating' end as phase
  from clusters c join machines m on m.kind = 'cluster' and m.entity_id = c.id
 where c.pooled and c.deleted_at is null`;

export class PgWarmPoolStore implements WarmPoolStore {
  constructor(
    private readonly db: Pool,
    private readonly clusterMachine: MachineOrigin,
    private readonly reserve: DiskReserve = defaultDiskReserve,
  ) {}

  async pooledClusters(): Promise<PooledCluster[]> {
    return (await this.db.query<{ id: string; phase: PooledPhase }>(`${pooledSelect} order by c.created_at`)).rows;
  }

  async createPooledCluster(spec: ClusterSpec): Promise<void> {
    await insertCluster(this.db, this.clusterMachine, warmPoolOrgId, `warm-${randomToken(8)}`, spec, { pooled: true, reserve: this.reserve });
  }

  destroyPooledCluster(id: string): Promise<void> {
    return requestDestroy(this.db, this.clusterMachine.kind, id);
  }
}

export async function warmPoolCounts(db: Pool): Promise<Record<PooledPhase, number>> {
  const rows = (await db.query<{ phase: PooledPhase; count: number }>(`select phase, count(*)::int as count from (${pooledSelect}) pooled group by phase`)).rows;
  const counts: Record<PooledPhase, number> = { creating: 0, ready: 0, failed: 0, deleting: 0 };
  for (const row of rows) counts[row.phase] = row.count;
  return counts;
}

/**
 * Hands a ready warm cluster of exactly this spec to the org under the requested name, or returns
 * null when none is ready. The pool machine is woken to make a replacement.
 */
export async function adoptWarmCluster(db: Pool, orgId: OrgId, name: string, spec: ClusterSpec): Promise<ClusterId | null> {
  try {
    return await inTransaction(db, async (client) => {
      const adopted = await client.query<{ id: string; machine_id: string }>(
        `with ready as (
           select pooled.id from (${pooledSelect}) pooled join clusters c on c.id = pooled.id
            where pooled.phase = 'ready' and c.spec = $3::jsonb
            order by c.created_at limit 1 for update of c skip locked)
         update clusters c set org_id = $1, name = $2, pooled = false, route_key = $4
           from ready, machines m
          where c.id = ready.id and m.kind = 'cluster' and m.entity_id = c.id
         returning c.id, m.id as machine_id`,
        [orgId, name, spec, await freeRouteKey(client, name)],
      );
      const row = adopted.rows[0];
      if (row === undefined) return null;
      await client.query(
        `insert into events (machine_id, kind, entity_id, cluster_id, from_label, to_label, reason, code)
         values ($1, $2, $3, $3, 'running', 'running', 'adopted from the warm pool', $4)`,
        [row.machine_id, clusterKind, row.id, 'adopted_from_warm_pool' satisfies EventCode],
      );
      await wakeMachines(client, [{ kind: warmPoolKind, entityId: warmPoolEntity }]);
      return row.id as ClusterId;
    });
  } catch (error) {
    if (isUniqueViolation(error, 'clusters_live_name')) throw nameTaken(name);
    // A create racing for the same route key: let the caller take the ordinary path.
    if (isUniqueViolation(error, 'clusters_route_key')) return null;
    throw error;
  }
}
