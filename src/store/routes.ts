import type { InstanceStatus } from '../dataplane/dataplane.js';
import { randomToken } from '../lib/ids.js';
import { prepared, type Queryable } from './pool.js';

/** What the proxy reads: per live cluster, where its primary and replicas listen. */

export interface RouteInstance {
  /** Its host's address (127.0.0.1 for the control plane's own machine) and port. */
  readonly host: string;
  readonly port: number;
  readonly role: 'primary' | 'replica';
  /** The instance machine is running and the last probe saw it serve (a replica: streaming). */
  readonly healthy: boolean;
  readonly lsn: string | null;
}

export interface RouteRow {
  readonly key: string;
  readonly clusterId: string;
  /** New connections wait (bounded) instead of going to an instance. */
  readonly paused: boolean;
  /** Set while the primary is read-only because the storage is full: what the proxy tells a client that writes (docs/STORAGE.md "Limits"). */
  readonly storageFull: { readonly cluster: string; readonly percent: number; readonly storageGb: number; readonly locked: boolean } | null;
  readonly instances: readonly RouteInstance[];
}

const routesSql = `
select c.route_key, c.id as cluster_id, c.route_paused, c.name, (c.storage_read_only ->> 'percent')::float8 as full_percent, coalesce((c.storage_read_only ->> 'locked')::boolean, false) as locked, (c.spec ->> 'storageGb')::int as storage_gb, coalesce(h.address, '127.0.0.1') as host, i.port, i.role, m.label, i.observed
  from clusters c
  join instances i on i.cluster_id = c.id and i.deleted_at is null and i.port is not null and not i.fenced and i.in_route
  join machines m on m.kind = 'instance' and m.entity_id = i.id
  left join hosts h on h.id = i.host_id
 where c.deleted_at is null and c.route_key is not null
 order by c.route_key, i.ordinal`;

function isHealthy(role: string, label: string, observed: Partial<InstanceStatus>): boolean {
  if (label !== 'running' || observed.accepting !== true) return false;
  return role === 'primary' ? observed.inRecovery === false : observed.streaming === true;
}

const routeRows = prepared('routes_all', routesSql);

export async function loadRoutes(db: Queryable): Promise<RouteRow[]> {
  const result = await db.query<{ route_key: string; cluster_id: string; route_paused: boolean; name: string; full_percent: number | null; locked: boolean; storage_gb: number; host: string; port: number; role: 'primary' | 'replica'; label: string; observed: Partial<InstanceStatus> }>(routeRows([]));
  const byKey = new Map<string, { key: string; clusterId: string; paused: boolean; storageFull: RouteRow['storageFull']; instances: RouteInstance[] }>();
  for (const row of result.rows) {
    const storageFull = row.full_percent === null ? null : { cluster: row.name, percent: row.full_percent, storageGb: row.storage_gb, locked: row.locked };
    const route = byKey.get(row.route_key) ?? { key: row.route_key, clusterId: row.cluster_id, paused: row.route_paused, storageFull, instances: [] };
    route.instances.push({ host: row.host, port: row.port, role: row.role, healthy: isHealthy(row.role, row.label, row.observed), lsn: row.observed.lsn ?? null });
    byKey.set(row.route_key, route);
  }
  return [...byKey.values()];
}

/** Proxies LISTEN here and re-read their routes at once: a failover must not wait for a poll. */
export const routesChannel = 'cellar_routes';

/** Tells the proxies the routes changed; delivered when the surrounding transaction commits. */
export async function notifyRoutesChanged(db: Queryable): Promise<void> {
  await db.query('select pg_notify($1, $2)', [routesChannel, '']);
}

/** The cluster's name if no live cluster of the cell routes by it yet, else the name with a suffix. */
export async function freeRouteKey(db: Queryable, name: string): Promise<string> {
  const taken = await db.query('select 1 from clusters where route_key = $1 and deleted_at is null', [name]);
  return taken.rowCount === 0 ? name : `${name}-${randomToken(4)}`;
}

