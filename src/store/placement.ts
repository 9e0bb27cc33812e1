import { CellarError } from '../lib/errors.js';
import { TransientError } from '../lib/failure.js';
import type { HostUsage } from '../dataplane/dataplane.js';
import { type DiskReserve, type MeasuredDisk, type MeasuredInstance, type PlacementHost, type PlacementResult, defaultDiskReserve, growthRefusals, placeInstances } from '../lib/placement.js';
import { type ClusterSpec, instanceMemoryMb } from '../lib/sizes.js';
import { type PlacedInstance, hostKind } from '../machines/ports.js';
import { hostSelect } from './hosts.js';
import type { Queryable } from './pool.js';

/**
 * Placement against the store (docs/HOSTS.md "Placement"): the fleet as it is now, the cluster's
 * instances already placed, and the pure rules of lib/placement. Every placement takes one
 * transaction-scoped lock, so two creates at once cannot both take a host's last slot.
 */

/** pg_advisory_xact_lock key of placement: any constant of the cell, "placement" as ASCII. */
const placementLockKey = 0x706c6163;

interface PlacementHostRow {
  id: string;
  name: string;
  zone: string;
  label: string | null;
  joined_at: Date | null;
  memory_mb: number;
  disk_gb: number;
  slots: number;
  used_instances: number;
  used_memory_mb: number;
  used_disk_gb: number;
  usage: HostUsage | null;
}

/** The purpose of the filesystem that holds a host's data directories (src/dataplane/local/host-usage.ts). */
const dataPurpose = 'data';

/**
 * The live hosts with what their instances take, and each one's data filesystem as last measured
 * with its instances' allocations and use. A host whose agent joined counts as active before its
 * machine's next tick has said so.
 */
export async function placementHosts(db: Queryable): Promise<PlacementHost[]> {
  const result = await db.query<PlacementHostRow>(`${hostSelect} where h.removed_at is null order by h.name`, [hostKind, JSON.stringify(instanceMemoryMb)]);
  // Use not measured yet counts as nothing written: the whole allocation is still to come.
  const instances = await db.query<{ host_id: string; storage_gb: number; used_bytes: number }>(
    `select i.host_id, coalesce((c.spec ->> 'storageGb')::int, 0) as storage_gb,
            coalesce((i.usage ->> 'dataBytes')::float8 + (i.usage ->> 'walBytes')::float8, 0) as used_bytes
       from instances i join clusters c on c.id = i.cluster_id
      where i.host_id is not null and i.deleted_at is null`,
  );
  const byHost = new Map<string, MeasuredInstance[]>();
  for (const row of instances.rows) {
    const list = byHost.get(row.host_id) ?? [];
    list.push({ storageGb: row.storage_gb, usedBytes: row.used_bytes });
    byHost.set(row.host_id, list);
  }
  return result.rows.map((row) => ({
    id: row.id,
    name: row.name,
    zone: row.zone,
    label: row.label === 'joining' && row.joined_at !== null ? 'active' : (row.label ?? 'joining'),
    memoryMb: row.memory_mb,
    diskGb: row.disk_gb,
    slots: row.slots,
    used: { instances: row.used_instances, memoryMb: row.used_memory_mb, diskGb: row.used_disk_gb },
    measured: measuredDisk(row.usage, byHost.get(row.id) ?? []),
  }));
}

function measuredDisk(usage: HostUsage | null, instances: readonly MeasuredInstance[]): MeasuredDisk | null {
  const data = usage?.filesystems.find((filesystem) => filesystem.purposes.includes(dataPurpose));
  return data === undefined ? null : { totalBytes: data.totalBytes, availableBytes: data.availableBytes, instances };
}

/** A cell with a single host that takes instances puts a cluster's instances together there. */
function colocates(hosts: readonly PlacementHost[]): boolean {
  return hosts.filter((host) => host.label === 'active').length <= 1;
}

export async function lockPlacement(db: Queryable): Promise<void> {
  await db.query('select pg_advisory_xact_lock($1)', [placementLockKey]);
}

/** Inside the create's transaction: refuses a cluster whose instances cannot all be placed now. */
export async function assertPlaceable(db: Queryable, spec: ClusterSpec, reserve: DiskReserve = defaultDiskReserve): Promise<void> {
  await lockPlacement(db);
  const hosts = await placementHosts(db);
  const result = placeInstances(hosts, { count: spec.replicas + 1, memoryMb: instanceMemoryMb[spec.size], diskGb: spec.storageGb, usedHostIds: [], usedZones: [], colocate: colocates(hosts), reserve });
  if (!result.ok) throw new CellarError('CELLAR_E_PLACEMENT', `cannot place the cluster: ${result.missing}`);
}

/**
 * Inside a storage resize's transaction (a user's or autogrow's, docs/STORAGE.md "Host disk
 * reserve"): refuses growth from `fromGb` to `toGb` that a host of the cluster's live instances
 * cannot take, by its declared disk or, measured, its reserve; each such host named with its
 * numbers. Takes the placement lock, so a create cannot count on the same room meanwhile.
 */
export async function assertStorageGrowthPlaceable(db: Queryable, clusterId: string, fromGb: number, toGb: number, reserve: DiskReserve = defaultDiskReserve): Promise<void> {
  if (toGb <= fromGb) return;
  await lockPlacement(db);
  const hosts = await placementHosts(db);
  const onHosts = await db.query<{ host_id: string; count: number }>(
    'select host_id, count(*)::int as count from instances where cluster_id = $1 and deleted_at is null and host_id is not null group by host_id',
    [clusterId],
  );
  const problems: string[] = [];
  for (const row of onHosts.rows) {
    const host = hosts.find((candidate) => candidate.id === row.host_id);
    // A host removed by force still lists its instances until they are replaced: it is no longer asked for room.
    if (host === undefined) continue;
    const reasons = growthRefusals(host, row.count, toGb - fromGb, reserve);
    if (reasons.length > 0) problems.push(`host ${host.name} (${row.count} ${row.count === 1 ? 'instance' : 'instances'} of the cluster, ${toGb - fromGb} GB more each): ${reasons.join(', ')}`);
  }
  if (problems.length > 0) {
    throw new CellarError('CELLAR_E_PLACEMENT', `storageGb: the hosts cannot take storage grown from ${fromGb} GB to ${toGb} GB: ${problems.sort().join('; ')}`, 'storageGb');
  }
}


/**
 * Places one instance of a cluster on a host, in a transaction of its own; a second call returns
 * where it already is. When nothing has room it throws a transient error saying what is missing
 * (hosts may come back or be added).
 */
export async function placeInstance(db: Queryable, instanceId: string, reserve: DiskReserve = defaultDiskReserve): Promise<PlacedInstance> {
  await lockPlacement(db);
  const found = await db.query<{ cluster_id: string; host_id: string | null; spec: ClusterSpec }>(
    'select i.cluster_id, i.host_id, c.spec from instances i join clusters c on c.id = i.cluster_id where i.id = $1 for update of i',
    [instanceId],
  );
  const instance = found.rows[0];
  if (instance === undefined) throw new TransientError(`instance ${instanceId} is not in the store`);
  const hosts = await placementHosts(db);
  if (instance.host_id !== null) {
    const host = hosts.find((candidate) => candidate.id === instance.host_id);
    return { hostId: instance.host_id, hostName: host?.name ?? instance.host_id, zone: host?.zone ?? '?', why: null };
  }
  const siblings = await db.query<{ host_id: string; zone: string }>(
    `select i.host_id, h.zone from instances i join hosts h on h.id = i.host_id
      where i.cluster_id = $1 and i.deleted_at is null and i.id <> $2`,
    [instance.cluster_id, instanceId],
  );
  const result: PlacementResult = placeInstances(hosts, {
    count: 1,
    memoryMb: instanceMemoryMb[instance.spec.size],
    diskGb: instance.spec.storageGb,
    usedHostIds: siblings.rows.map((row) => row.host_id),
    usedZones: siblings.rows.map((row) => row.zone),
    colocate: colocates(hosts),
    reserve,
  });
  if (!result.ok) throw new TransientError(`cannot place instance ${instanceId}: ${result.missing}`);
  const [placement] = result.placements;
  if (placement === undefined) throw new TransientError(`placement of ${instanceId} returned no host`);
  await db.query('update instances set host_id = $2 where id = $1', [instanceId, placement.hostId]);
  const host = hosts.find((candidate) => candidate.id === placement.hostId);
  return { hostId: placement.hostId, hostName: host?.name ?? placement.hostId, zone: placement.zone, why: placement.why };
}

/**
 * Whether every live instance on the host could be placed on another host now, were the host no
 * longer active (a drain): per cluster, as many new instances as it has there, on distinct active
 * hosts besides its other instances' (zones as placement prefers them), and what one cluster's
 * replacements take counts against the hosts for the next. Null: all fit; else what is missing,
 * per cluster. The caller holds the placement lock.
 */
export async function drainRefusal(db: Queryable, hostId: string, reserve: DiskReserve = defaultDiskReserve): Promise<string | null> {
  const hosts = (await placementHosts(db)).map((host) => (host.id === hostId ? { ...host, label: 'draining' } : host));
  const moving = await db.query<{ cluster_id: string; name: string; spec: ClusterSpec; count: number }>(
    `select i.cluster_id, c.name, c.spec, count(*)::int as count
       from instances i join clusters c on c.id = i.cluster_id
      where i.host_id = $1 and i.deleted_at is null
      group by i.cluster_id, c.name, c.spec order by c.name`,
    [hostId],
  );
  const problems: string[] = [];
  let fleet = hosts;
  for (const cluster of moving.rows) {
    const siblings = await db.query<{ host_id: string; zone: string }>(
      `select i.host_id, h.zone from instances i join hosts h on h.id = i.host_id
        where i.cluster_id = $1 and i.deleted_at is null and i.host_id <> $2`,
      [cluster.cluster_id, hostId],
    );
    const memoryMb = instanceMemoryMb[cluster.spec.size];
    const result = placeInstances(fleet, {
      count: cluster.count,
      memoryMb,
      diskGb: cluster.spec.storageGb,
      usedHostIds: [hostId, ...siblings.rows.map((row) => row.host_id)],
      usedZones: siblings.rows.map((row) => row.zone),
      // A drain never packs a cluster spread over hosts onto one: only a cluster that shares its host already may share the one left.
      colocate: siblings.rows.length === 0 && colocates(fleet),
      reserve,
    });
    if (!result.ok) {
      problems.push(`cluster ${cluster.name}: ${result.missing}`);
      continue;
    }
    const taken = new Map<string, number>();
    for (const placement of result.placements) taken.set(placement.hostId, (taken.get(placement.hostId) ?? 0) + 1);
    fleet = fleet.map((host) => {
      const count = taken.get(host.id) ?? 0;
      if (count === 0) return host;
      const used = { instances: host.used.instances + count, memoryMb: host.used.memoryMb + count * memoryMb, diskGb: host.used.diskGb + count * cluster.spec.storageGb };
      const arriving: MeasuredInstance[] = Array.from({ length: count }, () => ({ storageGb: cluster.spec.storageGb, usedBytes: 0 }));
      const measured = host.measured === null ? null : { ...host.measured, instances: [...host.measured.instances, ...arriving] };
      return { ...host, used, measured };
    });
  }
  return problems.length === 0 ? null : problems.join('; ');
}
