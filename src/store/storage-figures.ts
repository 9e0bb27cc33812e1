import type { HostUsage, InstanceUsage } from '../dataplane/dataplane.js';
import type { Role } from '../machines/ports.js';
import type { Pool } from './pool.js';

/**
 * What the control plane's /metrics reports of storage (docs/STORAGE.md, "Metrics"): every live
 * cluster, instance and host with its last measured use, read in three queries of one snapshot
 * whatever the number of clusters, so a scrape costs the store the same at any size.
 */

/** Rows one scrape reads per query: far above any cell, so only a runaway table is cut short. */
export const storageFiguresRowsMax = 100_000;

export interface ClusterFigures {
  readonly id: string;
  readonly name: string;
  readonly org: string;
  readonly storageGb: number;
  /** Its primary is read-only because the storage is full. */
  readonly readOnly: boolean;
}

export interface InstanceFigures {
  readonly id: string;
  readonly clusterId: string;
  readonly role: Role;
  /** Its host's name; empty for an instance not placed yet. */
  readonly host: string;
  readonly usage: InstanceUsage | null;
  readonly usageMeasuredAt: Date | null;
  /** Since it was measured, on the store's clock; null: never. */
  readonly usageAgeSeconds: number | null;
}

export interface HostFigures {
  readonly name: string;
  readonly usage: HostUsage | null;
  readonly usageAgeSeconds: number | null;
}

export interface StorageFigures {
  readonly clusters: readonly ClusterFigures[];
  readonly instances: readonly InstanceFigures[];
  readonly hosts: readonly HostFigures[];
}

/**
 * One read-only snapshot, each statement bounded by `statementTimeoutMs` (a hung store fails the
 * scrape instead of holding it and a pool connection).
 */
export async function readStorageFigures(db: Pool, statementTimeoutMs: number): Promise<StorageFigures> {
  const client = await db.connect();
  try {
    await client.query('begin transaction isolation level repeatable read read only');
    // set_config, not SET: SET takes no bind parameters. `true`: for this transaction only.
    await client.query("select set_config('statement_timeout', $1, true)", [`${Math.max(1, Math.round(statementTimeoutMs))}ms`]);
    const clusters = await client.query<{ id: string; name: string; org: string; storage_gb: number; read_only: boolean }>(
      `select c.id, c.name, o.name as org, (c.spec ->> 'storageGb')::int as storage_gb, c.storage_read_only is not null as read_only
         from clusters c join orgs o on o.id = c.org_id
        where c.deleted_at is null order by c.id limit $1`,
      [storageFiguresRowsMax],
    );
    const instances = await client.query<{ id: string; cluster_id: string; role: Role; host: string | null; usage: InstanceUsage | null; usage_measured_at: Date | null; age_seconds: number | null }>(
      `select i.id, i.cluster_id, i.role, h.name as host, i.usage, i.usage_measured_at,
              extract(epoch from clock_timestamp() - i.usage_measured_at)::double precision as age_seconds
         from instances i join clusters c on c.id = i.cluster_id left join hosts h on h.id = i.host_id
        where i.deleted_at is null and c.deleted_at is null order by i.id limit $1`,
      [storageFiguresRowsMax],
    );
    const hosts = await client.query<{ name: string; usage: HostUsage | null; age_seconds: number | null }>(
      `select name, usage, extract(epoch from clock_timestamp() - usage_measured_at)::double precision as age_seconds
         from hosts where removed_at is null order by name limit $1`,
      [storageFiguresRowsMax],
    );
    await client.query('commit');
    return {
      clusters: clusters.rows.map((row) => ({ id: row.id, name: row.name, org: row.org, storageGb: row.storage_gb, readOnly: row.read_only })),
      instances: instances.rows.map((row) => ({
        id: row.id,
        clusterId: row.cluster_id,
        role: row.role,
        host: row.host ?? '',
        usage: row.usage,
        usageMeasuredAt: row.usage_measured_at,
        usageAgeSeconds: row.age_seconds === null ? null : Math.max(0, row.age_seconds),
      })),
      hosts: hosts.rows.map((row) => ({ name: row.name, usage: row.usage, usageAgeSeconds: row.age_seconds === null ? null : Math.max(0, row.age_seconds) })),
    };
  } catch (error) {
    await client.query('rollback').catch(() => undefined);
    throw error;
  } finally {
    client.release();
  }
}
