import type { InstanceStatus } from '../dataplane/dataplane.js';
import { prepared, type Queryable } from './pool.js';

/**
 * The console's charts (docs/CONSOLE.md): a sample of what an instance's probe saw, at most one per
 * `sampleIntervalSeconds` per instance, kept `sampleRetentionMinutes`, written with the
 * observation it comes from.
 */

export const sampleIntervalSeconds = 5;
export const sampleRetentionMinutes = 60;

const observe = prepared(
  'instances_observe',
  `with observed as (
       update instances set observed = $2, observed_at = now() where id = $1 returning id, cluster_id, role),
     sampled as (
       insert into instance_samples (instance_id, cluster_id, role, lag_bytes, connections, transactions)
       select o.id, o.cluster_id, o.role,
              case when o.role = 'replica' then greatest(0, pg_wal_lsn_diff(
                (select (p.observed ->> 'lsn')::pg_lsn from instances p
                  where p.cluster_id = o.cluster_id and p.role = 'primary' and p.deleted_at is null and p.observed ? 'lsn' limit 1),
                ($2::jsonb ->> 'lsn')::pg_lsn))::bigint end,
              ($2::jsonb ->> 'connections')::int,
              ($2::jsonb ->> 'transactions')::bigint
         from observed o
        where not exists (select 1 from instance_samples s where s.instance_id = $1 and s.at > now() - make_interval(secs => $3))
       returning instance_id)
     delete from instance_samples
      where instance_id in (select instance_id from sampled) and at < now() - make_interval(mins => $4)`,
);

/**
 * Stores an instance's observation and, in the same statement, a sample of it when the instance's
 * last is older than the interval (its expired ones deleted then): the probe pays one round trip
 * for both. A replica's lag is taken against the primary's last stored LSN.
 */
export async function recordObservation(db: Queryable, instanceId: string, observed: InstanceStatus): Promise<void> {
  await db.query(observe([instanceId, observed, sampleIntervalSeconds, sampleRetentionMinutes]));
}

export interface SampleRow {
  readonly instanceId: string;
  readonly role: string;
  readonly at: Date;
  readonly lagBytes: number | null;
  readonly connections: number | null;
  readonly transactions: number | null;
}

/** A cluster's samples of the last `minutes`, oldest first. */
export async function clusterSamples(db: Queryable, clusterId: string, minutes: number): Promise<SampleRow[]> {
  const result = await db.query<{ instance_id: string; role: string; at: Date; lag_bytes: string | null; connections: number | null; transactions: string | null }>(
    `select instance_id, role, at, lag_bytes::text, connections, transactions::text
       from instance_samples where cluster_id = $1 and at > now() - make_interval(mins => $2) order by at`,
    [clusterId, minutes],
  );
  const number = (value: string | null): number | null => (value === null ? null : Number(value));
  return result.rows.map((row) => ({ instanceId: row.instance_id, role: row.role, at: row.at, lagBytes: number(row.lag_bytes), connections: row.connections, transactions: number(row.transactions) }));
}
