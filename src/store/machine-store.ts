import type { InstanceStatus, RecordedUsage } from '../dataplane/dataplane.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { placeInstance } from './placement.js';
import { notifyRoutesChanged } from './routes.js';
import { assert } from '../lib/assert.js';
import { type DiskReserve, defaultDiskReserve } from '../lib/placement.js';
import { type ChangeId, type ClusterId, type InstanceId, newId } from '../lib/ids.js';
import type { RestartOrder } from '../lib/config-plan.js';
import type { CatalogueEntry } from '../lib/settings.js';
import { type StoragePolicy, loadCatalogue, proposeChange, revertChange, revisionOfChange, saveCatalogue } from './config.js';
import { isPortFree } from '../lib/net.js';
import { type AutogrowPolicy, type ClusterRecord, type InstanceRecord, type StorageFull, type MachineStore, type PlacedInstance, type Role, changeKind, hostKind } from '../machines/ports.js';
import { recordObservation } from './samples.js';
import type { PoolClient } from 'pg';
import { type Pool, inTransaction, prepared } from './pool.js';

/** Candidate ports tried per allocation before giving up (some may be busy outside Cellar). */
const portProbesMax = 64;

interface InstanceRow {
  id: string;
  cluster_id: string;
  ordinal: number;
  role: Role;
  host_id: string | null;
  host_state: string | null;
  host_name: string | null;
  address: string | null;
  port: number | null;
  fenced: boolean;
  in_route: boolean;
  destroy_requested: boolean;
  observed: Partial<InstanceStatus>;
  usage: RecordedUsage | null;
  usage_measured_at: Date | null;
  machine_label: string | null;
  machine_error: string | null;
}

const instanceSelect = `
select i.id, i.cluster_id, i.ordinal, i.role, i.host_id, hm.label as host_state, h.name as host_name, h.address, i.port, i.fenced, i.in_route, i.observed, i.usage, i.usage_measured_at, m.label as machine_label, m.last_error as machine_error,
       coalesce(m.label = 'destroy' or exists (select 1 from signals s where s.machine_id = m.id and s.name = 'destroy'), false) as destroy_requested
  from instances i left join machines m on m.kind = 'instance' and m.entity_id = i.id
  left join hosts h on h.id = i.host_id
  left join machines hm on hm.kind = '${hostKind}' and hm.entity_id = i.host_id`;

/** Instances from before hosts (no host_id) live on the control plane's own machine. */
export const localAddress = '127.0.0.1';

function toInstance(row: InstanceRow): InstanceRecord {
  return {
    id: row.id as InstanceId,
    clusterId: row.cluster_id as ClusterId,
    ordinal: row.ordinal,
    role: row.role,
    hostId: row.host_id,
    hostState: row.host_id === null ? null : row.host_state,
    hostName: row.host_name ?? null,
    address: row.address ?? localAddress,
    port: row.port,
    fenced: row.fenced,
    inRoute: row.in_route,
    destroyRequested: row.destroy_requested,
    observed: row.observed,
    usage: row.usage,
    usageMeasuredAt: row.usage_measured_at,
    machineLabel: row.machine_label ?? 'start',
    machineError: row.machine_error,
  };
}

const liveInstancesOf = prepared('instances_live', `${instanceSelect} where i.cluster_id = $1 and i.deleted_at is null order by i.ordinal`);
const liveInstance = prepared('instances_one', `${instanceSelect} where i.id = $1 and i.deleted_at is null`);
const clusterWithHosts = prepared(
  'clusters_with_hosts',
  `select c.id, c.name, c.spec, c.secrets, c.switchover_to, c.storage_read_only, c.storage_autogrow,
          array(select distinct h.address from instances i join hosts h on h.id = i.host_id
                 where i.cluster_id = c.id and i.deleted_at is null order by h.address) as host_addresses
     from clusters c where c.id = $1`,
);

export async function liveInstances(db: Pool, clusterId: string): Promise<InstanceRecord[]> {
  const result = await db.query<InstanceRow>(liveInstancesOf([clusterId]));
  return result.rows.map(toInstance);
}

/** Raises `destroy`; the machine acts on it on its next tick, a failed one included (its table allows it). */
export async function requestDestroy(db: Pool, kind: string, entityId: string): Promise<void> {
  await inTransaction(db, (client) => requestDestroyWith(client, kind, entityId));
}

async function requestDestroyWith(client: PoolClient, kind: string, entityId: string): Promise<void> {
  const result = await client.query<{ id: string }>('select id from machines where kind = $1 and entity_id = $2 for update', [kind, entityId]);
  const machine = result.rows[0];
  if (machine === undefined) return;
  await raiseSignal(client, machine.id, 'destroy');
}

/** The new instance's id; null when that ordinal is taken (a second call for it). */
async function createInstanceWith(client: PoolClient, instanceMachine: MachineOrigin, clusterId: ClusterId, ordinal: number, role: Role): Promise<InstanceId | null> {
  const instanceId = newId('instance');
  const inserted = await client.query<{ id: string }>(
    `insert into instances (id, cluster_id, ordinal, role) values ($1, $2, $3, $4)
     on conflict (cluster_id, ordinal) do nothing returning id`,
    [instanceId, clusterId, ordinal, role],
  );
  if (inserted.rowCount !== 1) return null;
  await insertMachine(client, newMachine(instanceMachine, instanceId, clusterId));
  return instanceId;
}

/** Ordinals are never reused, deleted instances included: the unique key covers them. */
async function nextOrdinal(client: PoolClient, clusterId: string): Promise<number> {
  const next = await client.query<{ ordinal: number }>('select coalesce(max(ordinal), -1)::int + 1 as ordinal from instances where cluster_id = $1', [clusterId]);
  return next.rows[0]?.ordinal ?? 0;
}

export interface HostOptions {
  /** The addresses the control plane and the proxy reach instances from. */
  readonly controlAddresses: readonly string[];
  readonly leaseMs: number;
  readonly clockMarginMs: number;
  /** What new instances leave free on a measured host (docs/STORAGE.md "Host disk reserve"); absent: the default. */
  readonly diskReserve?: DiskReserve;
}

const defaultHostOptions: HostOptions = { controlAddresses: [localAddress], leaseMs: 1_500, clockMarginMs: 250 };

export class PgMachineStore implements MachineStore {
  constructor(
    private readonly db: Pool,
    private readonly portMin: number,
    private readonly portMax: number,
    private readonly instanceMachine: MachineOrigin,
    private readonly hosts: HostOptions = defaultHostOptions,
  ) {
    assert(portMin <= portMax, `port range ${portMin}-${portMax} is empty`);
  }

  /** One round trip: every running instance's liveness step reads its cluster, five times a second. */
  async cluster(id: ClusterId): Promise<ClusterRecord> {
    const result = await this.db.query<{ id: string; name: string; spec: ClusterRecord['spec']; secrets: ClusterRecord['secrets']; switchover_to: string | null; storage_read_only: StorageFull | null; storage_autogrow: AutogrowPolicy | null; host_addresses: string[] }>(clusterWithHosts([id]));
    const row = result.rows[0];
    assert(row !== undefined, `cluster ${id} does not exist`);
    const peerAddresses = [...new Set([...this.hosts.controlAddresses, ...row.host_addresses])];
    return { id: row.id as ClusterId, name: row.name, spec: row.spec, secrets: row.secrets, switchoverTo: row.switchover_to, peerAddresses, storageFull: row.storage_read_only, autogrow: row.storage_autogrow };
  }

  instances(clusterId: ClusterId): Promise<InstanceRecord[]> {
    return liveInstances(this.db, clusterId);
  }

  async instance(id: InstanceId): Promise<InstanceRecord | null> {
    const result = await this.db.query<InstanceRow>(liveInstance([id]));
    const row = result.rows[0];
    return row === undefined ? null : toInstance(row);
  }

  async createInstance(clusterId: ClusterId, ordinal: number, role: Role): Promise<void> {
    await inTransaction(this.db, (client) => createInstanceWith(client, this.instanceMachine, clusterId, ordinal, role));
  }

  async replaceInstance(instanceId: InstanceId, role: Role, running = false): Promise<void> {
    await inTransaction(this.db, async (client) => {
      const found = await client.query<{ cluster_id: string; label: string }>(
        `select i.cluster_id, m.label from instances i join machines m on m.kind = 'instance' and m.entity_id = i.id
          where i.id = $1 for update of m`,
        [instanceId],
      );
      const row = found.rows[0];
      if (row === undefined || row.label === 'destroy' || (!running && row.label !== 'failed')) return;
      // Replaced already: its destroy waits for its machine, which is still `failed` until it acts.
      // Read after the lock, so a replace that committed while this one waited is seen.
      const asked = await client.query(`select 1 from signals s join machines m on m.id = s.machine_id
                                         where m.kind = 'instance' and m.entity_id = $1 and s.name = 'destroy'`, [instanceId]);
      if (asked.rowCount !== 0) return;
      await requestDestroyWith(client, this.instanceMachine.kind, instanceId);
      await createInstanceWith(client, this.instanceMachine, row.cluster_id as ClusterId, await nextOrdinal(client, row.cluster_id), role);
    });
  }

  async addReplica(clusterId: ClusterId): Promise<InstanceId> {
    return inTransaction(this.db, async (client) => {
      // The cluster's row lock orders two adds (and a replace) so they never race for one ordinal.
      await client.query('select 1 from clusters where id = $1 for update', [clusterId]);
      const created = await createInstanceWith(client, this.instanceMachine, clusterId, await nextOrdinal(client, clusterId), 'replica');
      assert(created !== null, `the next ordinal of cluster ${clusterId} was taken under its row lock`);
      return created;
    });
  }

  async hostLeaseExpired(instanceId: InstanceId): Promise<boolean | null> {
    // clock_timestamp(): the store's clock now, the one lease_renewed_at was written with.
    const result = await this.db.query<{ local: boolean; expired: boolean }>(
      `select h.local,
              h.lease_renewed_at is null
              or clock_timestamp() > h.lease_renewed_at + make_interval(secs => ($2::double precision + $3::double precision) / 1000) as expired
         from instances i join hosts h on h.id = i.host_id
        where i.id = $1`,
      [instanceId, this.hosts.leaseMs, this.hosts.clockMarginMs],
    );
    const row = result.rows[0];
    if (row === undefined || row.local) return null;
    return row.expired;
  }

  placeInstance(instanceId: InstanceId): Promise<PlacedInstance> {
    return inTransaction(this.db, (client) => placeInstance(client, instanceId, this.hosts.diskReserve ?? defaultDiskReserve));
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
    await recordObservation(this.db, instanceId, observed);
  }

  async recordUsage(instanceId: InstanceId, usage: RecordedUsage): Promise<void> {
    await this.db.query('update instances set usage = $2, usage_measured_at = now() where id = $1', [instanceId, usage]);
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

  async raiseSignal(kind: string, entityId: string, name: string): Promise<void> {
    await inTransaction(this.db, async (client) => {
      const result = await client.query<{ id: string }>('select id from machines where kind = $1 and entity_id = $2', [kind, entityId]);
      const machine = result.rows[0];
      assert(machine !== undefined, `no ${kind} machine for ${entityId}`);
      await raiseSignal(client, machine.id, name);
    });
  }

  async setFenced(instanceId: InstanceId, fenced: boolean): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query('update instances set fenced = $2 where id = $1', [instanceId, fenced]);
      await notifyRoutesChanged(client);
    });
  }

  async setInRoute(instanceId: InstanceId, inRoute: boolean): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query('update instances set in_route = $2 where id = $1', [instanceId, inRoute]);
      await notifyRoutesChanged(client);
    });
  }

  async changeTarget(changeId: ChangeId): Promise<{ clusterId: ClusterId; revision: number; order: RestartOrder } | null> {
    const record = await revisionOfChange(this.db, changeId);
    return record === null ? null : { clusterId: record.clusterId, revision: record.revision, order: record.plan?.order ?? 'none' };
  }

  async revertChange(changeId: ChangeId, reason: string, origin: MachineOrigin): Promise<number | null> {
    return revertChange(this.db, origin, changeId, reason);
  }

  async setStorageFull(clusterId: ClusterId, full: StorageFull | null): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query('update clusters set storage_read_only = $2 where id = $1', [clusterId, full]);
      await notifyRoutesChanged(client);
    });
  }

  async growStorage(clusterId: ClusterId, toGb: number, reason: string, origin: MachineOrigin, policy: StoragePolicy): Promise<number> {
    const proposal = await proposeChange(this.db, origin, { clusterId, actor: 'cellar', reason, change: { storageGb: toGb } }, policy);
    assert(proposal.revision !== null, 'a storage revision that is not a dry run has a number');
    return proposal.revision;
  }

  async changeInProgress(clusterId: ClusterId): Promise<boolean> {
    const result = await this.db.query(`select 1 from machines where kind = $2 and cluster_id = $1 and next_tick_at is not null and label <> 'failed' limit 1`, [clusterId, changeKind]);
    return (result.rowCount ?? 0) > 0;
  }

  async machineLabel(kind: string, entityId: string): Promise<string | null> {
    const result = await this.db.query<{ label: string }>('select label from machines where kind = $1 and entity_id = $2', [kind, entityId]);
    return result.rows[0]?.label ?? null;
  }

  async hasSignal(kind: string, entityId: string, name: string): Promise<boolean> {
    const result = await this.db.query('select 1 from signals s join machines m on m.id = s.machine_id where m.kind = $1 and m.entity_id = $2 and s.name = $3', [kind, entityId, name]);
    return (result.rowCount ?? 0) > 0;
  }

  /** Catalogues do not change for an installed version: kept once read. */
  private readonly catalogues = new Map<number, ReadonlyMap<string, CatalogueEntry>>();

  async catalogue(pgVersion: number): Promise<ReadonlyMap<string, CatalogueEntry> | null> {
    const known = this.catalogues.get(pgVersion);
    if (known !== undefined) return known;
    const loaded = await loadCatalogue(this.db, pgVersion);
    if (loaded !== null) this.catalogues.set(pgVersion, loaded);
    return loaded;
  }

  async saveCatalogue(pgVersion: number, entries: readonly CatalogueEntry[]): Promise<void> {
    await saveCatalogue(this.db, pgVersion, entries);
    this.catalogues.set(pgVersion, new Map(entries.map((entry) => [entry.name, entry])));
  }

  async setRoutePaused(clusterId: ClusterId, paused: boolean): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query('update clusters set route_paused = $2 where id = $1', [clusterId, paused]);
      await notifyRoutesChanged(client);
    });
  }

  async swapPrimary(clusterId: ClusterId, newPrimaryId: InstanceId): Promise<void> {
    await inTransaction(this.db, async (client) => {
      const target = await client.query('select 1 from instances where id = $1 and cluster_id = $2 and deleted_at is null', [newPrimaryId, clusterId]);
      assert(target.rowCount === 1, `instance ${newPrimaryId} is not a live instance of cluster ${clusterId}`);
      // Demote first: the unique shape "one primary" holds at every statement, not only at commit.
      await client.query(`update instances set role = 'replica' where cluster_id = $1 and role = 'primary' and id <> $2`, [clusterId, newPrimaryId]);
      await client.query(`update instances set role = 'primary', fenced = false where id = $1`, [newPrimaryId]);
      await client.query('update clusters set route_paused = false, switchover_to = null where id = $1', [clusterId]);
      const primaries = await client.query(`select count(*)::int as n from instances where cluster_id = $1 and role = 'primary' and deleted_at is null`, [clusterId]);
      assert(primaries.rows[0]?.n === 1, `cluster ${clusterId} would have ${String(primaries.rows[0]?.n)} primaries`);
      await notifyRoutesChanged(client);
    });
  }

  async clearSwitchoverTarget(clusterId: ClusterId): Promise<void> {
    await this.db.query('update clusters set switchover_to = null where id = $1', [clusterId]);
  }

  async failoversWithin(windowMs: number): Promise<number> {
    const result = await this.db.query<{ n: number }>(
      `select count(*)::int as n from events
        where kind = 'cluster' and to_label = 'fence' and at > now() - make_interval(secs => $1::double precision / 1000)`,
      [windowMs],
    );
    return result.rows[0]?.n ?? 0;
  }
}
