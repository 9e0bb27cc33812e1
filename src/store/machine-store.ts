import type { InstanceStatus } from '../dataplane/dataplane.js';
import { insertMachine, raiseSignal } from '../engine/queries.js';
import { assert } from '../lib/assert.js';
import { type ClusterId, type InstanceId, newId } from '../lib/ids.js';
import { isPortFree } from '../lib/net.js';
import type { ClusterRecord, InstanceRecord, MachineStore, Role } from '../machines/ports.js';
import { type Pool, inTransaction } from './pool.js';

/** Candidate ports tried per allocation before giving up (some may be busy outside Cellar). */
const portProbesMax = 64;

interface InstanceRow {
  id: string;
  cluster_id: string;
  ordinal: number;
  role: Role;
  port: number | null;
  observed: Partial<InstanceStatus>;
  machine_label: string | null;
  machine_error: string | null;
}

const instanceSelect = `
select i.id, i.cluster_id, i.ordinal, i.role, i.port, i.observed, m.label as machine_label, m.last_error as machine_error
  from instances i left join machines m on m.kind = 'instance' and m.entity_id = i.id`;

function toInstance(row: InstanceRow): InstanceRecord {
  return {
    id: row.id as InstanceId,
    clusterId: row.cluster_id as ClusterId,
    ordinal: row.ordinal,
    role: row.role,
    port: row.port,
    observed: row.observed,
    machineLabel: row.machine_label ?? 'start',
    machineError: row.machine_error,
  };
}

export async function liveInstances(db: Pool, clusterId: string): Promise<InstanceRecord[]> {
  const result = await db.query<InstanceRow>(`${instanceSelect} where i.cluster_id = $1 and i.deleted_at is null order by i.ordinal`, [clusterId]);
  return result.rows.map(toInstance);
}

/** Raises `destroy`; a machine stuck in `failed` is moved to its `destroy` label so it can clean up. */
export async function requestDestroy(db: Pool, kind: string, entityId: string): Promise<void> {
  await inTransaction(db, async (client) => {
    const result = await client.query<{ id: string }>('select id from machines where kind = $1 and entity_id = $2 for update', [kind, entityId]);
    const machine = result.rows[0];
    if (machine === undefined) return;
    const revived = await client.query(
      `update machines set label = 'destroy', next_tick_at = now(), attempt = 0, version = version + 1
        where id = $1 and label = 'failed' returning id`,
      [machine.id],
    );
    if (revived.rowCount === 1) {
      await client.query(
        `insert into events (machine_id, kind, entity_id, cluster_id, from_label, to_label, reason)
         select id, kind, entity_id, cluster_id, 'failed', 'destroy', 'delete requested' from machines where id = $1`,
        [machine.id],
      );
    }
    await raiseSignal(client, machine.id, 'destroy');
  });
}

export class PgMachineStore implements MachineStore {
  constructor(
    private readonly db: Pool,
    private readonly portMin: number,
    private readonly portMax: number,
  ) {
    assert(portMin <= portMax, `port range ${portMin}-${portMax} is empty`);
  }

  async cluster(id: ClusterId): Promise<ClusterRecord> {
    const result = await this.db.query<{ id: string; name: string; spec: ClusterRecord['spec']; secrets: ClusterRecord['secrets'] }>(
      'select id, name, spec, secrets from clusters where id = $1',
      [id],
    );
    const row = result.rows[0];
    assert(row !== undefined, `cluster ${id} does not exist`);
    return { id: row.id as ClusterId, name: row.name, spec: row.spec, secrets: row.secrets };
  }

  instances(clusterId: ClusterId): Promise<InstanceRecord[]> {
    return liveInstances(this.db, clusterId);
  }

  async instance(id: InstanceId): Promise<InstanceRecord | null> {
    const result = await this.db.query<InstanceRow>(`${instanceSelect} where i.id = $1 and i.deleted_at is null`, [id]);
    const row = result.rows[0];
    return row === undefined ? null : toInstance(row);
  }

  async createInstance(clusterId: ClusterId, ordinal: number, role: Role): Promise<void> {
    await inTransaction(this.db, async (client) => {
      const instanceId = newId('instance');
      const inserted = await client.query<{ id: string }>(
        `insert into instances (id, cluster_id, ordinal, role) values ($1, $2, $3, $4)
         on conflict (cluster_id, ordinal) do nothing returning id`,
        [instanceId, clusterId, ordinal, role],
      );
      if (inserted.rowCount !== 1) return;
      await insertMachine(client, {
        id: newId('machine'),
        kind: 'instance',
        entityId: instanceId,
        clusterId,
        label: 'start',
        lane: 'high',
        data: {},
      });
    });
  }

  async allocatePort(instanceId: InstanceId): Promise<number> {
    const busy: number[] = [];
    for (let probe = 0; probe < portProbesMax; probe += 1) {
      const existing = await this.db.query<{ port: number }>('select port from instances where id = $1 and port is not null', [instanceId]);
      if (existing.rows[0] !== undefined) return existing.rows[0].port;
      const candidate = await this.reserveLowestFreePort(instanceId, busy);
      if (candidate === 'exhausted') break;
      if (candidate === 'raced') continue;
      if (await isPortFree(candidate)) {
        await this.db.query('update instances set port = $2 where id = $1', [instanceId, candidate]);
        return candidate;
      }
      // Busy outside Cellar: give the reservation back and try the next one.
      await this.db.query('delete from ports where port = $1 and instance_id = $2', [candidate, instanceId]);
      busy.push(candidate);
    }
    throw new Error(`no free port in ${this.portMin}-${this.portMax} (${busy.length} busy outside Cellar)`);
  }

  /** The port this instance holds, else the lowest free one reserved for it; 'raced' if another reservation won. */
  private async reserveLowestFreePort(instanceId: InstanceId, skip: readonly number[]): Promise<number | 'raced' | 'exhausted'> {
    const held = await this.db.query<{ port: number }>('select port from ports where instance_id = $1', [instanceId]);
    if (held.rows[0] !== undefined) return held.rows[0].port;
    const free = await this.db.query<{ port: number }>(
      `select candidate as port from generate_series($1::int, $2::int) as candidate
        where not exists (select 1 from ports where port = candidate) and candidate <> all($3::int[])
        order by candidate limit 1`,
      [this.portMin, this.portMax, skip],
    );
    const candidate = free.rows[0]?.port;
    if (candidate === undefined) return 'exhausted';
    const inserted = await this.db.query('insert into ports (port, instance_id) values ($1, $2) on conflict do nothing', [candidate, instanceId]);
    return inserted.rowCount === 1 ? candidate : 'raced';
  }

  async releasePort(instanceId: InstanceId): Promise<void> {
    await this.db.query('delete from ports where instance_id = $1', [instanceId]);
  }

  async recordObserved(instanceId: InstanceId, observed: InstanceStatus): Promise<void> {
    await this.db.query('update instances set observed = $2, observed_at = now() where id = $1', [instanceId, observed]);
  }

  async markInstanceDeleted(instanceId: InstanceId): Promise<void> {
    await this.db.query('update instances set deleted_at = coalesce(deleted_at, now()) where id = $1', [instanceId]);
  }

  async markClusterDeleted(clusterId: ClusterId): Promise<void> {
    await this.db.query('update clusters set deleted_at = coalesce(deleted_at, now()) where id = $1', [clusterId]);
  }

  requestDestroy(kind: string, entityId: string): Promise<void> {
    return requestDestroy(this.db, kind, entityId);
  }
}
