import type { BaseBackupInfo } from '../dataplane/dataplane.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { assert } from '../lib/assert.js';
import { type BackupId, type ClusterId, type InstanceId, newId } from '../lib/ids.js';
import type { BackupCandidate, BackupRecord, BackupRecords } from '../machines/ports.js';
import { type Pool, type Queryable, inTransaction } from './pool.js';

/** Backups in the cell store: the machines' records, and what the API lists and restores from. */

/** A restore check that has not finished in this long is taken to have died with its engine. */
const checkSlotStaleMs = 3 * 3_600_000;
const backupsPerListMax = 200;

interface BackupRow {
  id: string;
  cluster_id: string;
  reason: string;
  status: BackupRecord['status'];
  source_instance_id: string | null;
  start_lsn: string | null;
  end_lsn: string | null;
  timeline: number | null;
  start_wal_file: string | null;
  bytes: string | null;
  take_ms: number | null;
  started_at: Date;
  finished_at: Date | null;
  verified: boolean | null;
  verified_at: Date | null;
  verify_detail: string | null;
  error: string | null;
  machine_label: string | null;
  machine_error: string | null;
}

const backupSelect = `
select b.*, m.label as machine_label, m.last_error as machine_error
  from backups b left join machines m on m.kind = 'backup' and m.entity_id = b.id`;

function toRecord(row: BackupRow): BackupRecord {
  return {
    id: row.id as BackupId,
    clusterId: row.cluster_id as ClusterId,
    status: row.status,
    sourceInstanceId: row.source_instance_id,
    startWalFile: row.start_wal_file,
    finishedAtMs: row.finished_at?.getTime() ?? null,
    verified: row.verified,
  };
}

/** Inserts a backup and its machine (of the backup machine's definition); the caller supplies the transaction. */
async function insertBackup(client: Queryable, backupMachine: MachineOrigin, clusterId: ClusterId, reason: 'scheduled' | 'manual'): Promise<BackupId> {
  const id = newId('backup');
  await client.query('insert into backups (id, cluster_id, reason) values ($1, $2, $3)', [id, clusterId, reason]);
  await insertMachine(client, newMachine(backupMachine, id, clusterId));
  return id;
}

export class PgBackupRecords implements BackupRecords {
  constructor(
    private readonly db: Pool,
    private readonly backupMachine: MachineOrigin,
  ) {}

  async backup(id: BackupId): Promise<BackupRecord> {
    const result = await this.db.query<BackupRow>(`${backupSelect} where b.id = $1`, [id]);
    const row = result.rows[0];
    assert(row !== undefined, `backup ${id} does not exist`);
    return toRecord(row);
  }

  createBackup(clusterId: ClusterId, reason: 'scheduled' | 'manual'): Promise<BackupId> {
    return inTransaction(this.db, (client) => insertBackup(client, this.backupMachine, clusterId, reason));
  }

  async recordTaken(id: BackupId, sourceInstanceId: InstanceId, info: BaseBackupInfo): Promise<void> {
    await this.db.query(
      `update backups set status = 'completed', source_instance_id = $2, start_lsn = $3, end_lsn = $4, timeline = $5,
              start_wal_file = $6, bytes = $7, take_ms = coalesce($8, take_ms), finished_at = coalesce(finished_at, now())
        where id = $1`,
      [id, sourceInstanceId, info.startLsn, info.endLsn, info.timeline, info.startWalFile, info.bytes, info.durationMs],
    );
  }

  async recordFailed(id: BackupId, reason: string): Promise<void> {
    await this.db.query(`update backups set status = 'failed', error = $2, finished_at = coalesce(finished_at, now()) where id = $1`, [id, reason]);
  }

  async tryStartCheck(id: BackupId, concurrency: number): Promise<boolean> {
    return inTransaction(this.db, async (client) => {
      // Serialises the count-then-take across engines.
      await client.query(`select pg_advisory_xact_lock(hashtext('cellar_backup_checks'))`);
      const busy = await client.query<{ n: number }>(
        `select count(*)::int as n from backups
          where verifying_at > now() - make_interval(secs => $2::double precision / 1000) and verified is null and id <> $1`,
        [id, checkSlotStaleMs],
      );
      if ((busy.rows[0]?.n ?? 0) >= concurrency) return false;
      await client.query('update backups set verifying_at = now() where id = $1', [id]);
      return true;
    });
  }

  async recordCheck(id: BackupId, ok: boolean, detail: string): Promise<void> {
    await this.db.query('update backups set verified = $2, verify_detail = $3, verified_at = now(), verifying_at = null where id = $1', [id, ok, detail]);
  }

  async backupCandidates(limit: number, defaultIntervalMs: number): Promise<BackupCandidate[]> {
    // Most overdue first (by each cluster's own interval), and none with a backup running: a page of
    // clusters that are not due cannot hold back one that is, however many clusters there are.
    const result = await this.db.query<{ id: string; last: Date | null; running: boolean; interval_hours: number | null }>(
      `select * from (
         select c.id, (c.spec ->> 'backupIntervalHours')::int as interval_hours,
                (select max(b.started_at) from backups b where b.cluster_id = c.id and b.status in ('running', 'completed')) as last,
                exists (select 1 from backups b join machines bm on bm.kind = 'backup' and bm.entity_id = b.id
                         where b.cluster_id = c.id and b.status = 'running' and bm.label <> 'failed') as running
           from clusters c join machines m on m.kind = 'cluster' and m.entity_id = c.id
          where c.deleted_at is null and not c.pooled and m.label = 'running'
       ) candidates
       where not running
       order by last + make_interval(secs => coalesce(interval_hours * 3600, $2::bigint / 1000)) nulls first, id
       limit $1`,
      [limit, defaultIntervalMs],
    );
    return result.rows.map((row) => ({
      clusterId: row.id as ClusterId,
      lastBackupAtMs: row.last?.getTime() ?? null,
      backupRunning: row.running,
      intervalMs: row.interval_hours === null ? null : row.interval_hours * 3_600_000,
    }));
  }

  async backupsOf(clusterId: ClusterId): Promise<BackupRecord[]> {
    const result = await this.db.query<BackupRow>(`${backupSelect} where b.cluster_id = $1 and b.status in ('completed', 'failed') order by b.started_at desc`, [clusterId]);
    return result.rows.map(toRecord);
  }

  async clustersWithBackups(afterClusterId: ClusterId | null, limit: number): Promise<ClusterId[]> {
    const result = await this.db.query<{ id: string }>(
      `select c.id from clusters c
        where c.deleted_at is null and c.id > coalesce($1, '')
          and exists (select 1 from backups b where b.cluster_id = c.id and b.status in ('completed', 'failed'))
        order by c.id limit $2`,
      [afterClusterId, limit],
    );
    return result.rows.map((row) => row.id as ClusterId);
  }

  async markDeleted(id: BackupId): Promise<void> {
    await this.db.query(`update backups set status = 'deleted', deleted_at = coalesce(deleted_at, now()) where id = $1`, [id]);
  }

  async deletedClustersToPurge(deletedBeforeMs: number, limit: number): Promise<ClusterId[]> {
    // A backup machine still at work (a take or a restore check) reads the area; so does the
    // recovery of a new cluster restored from it until that cluster first runs.
    const result = await this.db.query<{ id: string }>(
      `select c.id from clusters c
        where c.deleted_at is not null and c.backups_purged_at is null and c.deleted_at < to_timestamp($1::double precision / 1000)
          and not exists (select 1 from machines m where m.kind = 'backup' and m.cluster_id = c.id and m.next_tick_at is not null and m.label <> 'failed')
          and not exists (select 1 from clusters r join machines rm on rm.kind = 'cluster' and rm.entity_id = r.id
                           where r.spec -> 'restore' ->> 'sourceClusterId' = c.id and r.deleted_at is null and rm.label in ('start', 'waitInstances'))
        order by c.deleted_at, c.id limit $2`,
      [deletedBeforeMs, limit],
    );
    return result.rows.map((row) => row.id as ClusterId);
  }

  async markBackupsPurged(clusterId: ClusterId): Promise<void> {
    await inTransaction(this.db, async (client) => {
      await client.query(`update backups set status = 'deleted', deleted_at = coalesce(deleted_at, now()) where cluster_id = $1 and status <> 'deleted'`, [clusterId]);
      await client.query('update clusters set backups_purged_at = coalesce(backups_purged_at, now()) where id = $1', [clusterId]);
    });
  }
}

/** A backup as the API shows it. */
export interface BackupSnapshot {
  readonly id: string;
  readonly clusterId: string;
  readonly reason: string;
  /** running, verifying, completed, failed */
  readonly status: string;
  readonly label: string | null;
  readonly sourceInstanceId: string | null;
  readonly startLsn: string | null;
  readonly endLsn: string | null;
  readonly timeline: number | null;
  readonly bytes: number | null;
  readonly takeMs: number | null;
  readonly startedAt: Date;
  readonly finishedAt: Date | null;
  readonly verified: boolean | null;
  readonly verifiedAt: Date | null;
  readonly verifyDetail: string | null;
  readonly error: string | null;
}

function toSnapshot(row: BackupRow): BackupSnapshot {
  const machineFailed = row.machine_label === 'failed';
  const status = machineFailed || row.status === 'failed' ? 'failed' : row.status === 'completed' && row.verified === null ? 'verifying' : row.status;
  return {
    id: row.id,
    clusterId: row.cluster_id,
    reason: row.reason,
    status,
    label: row.machine_label,
    sourceInstanceId: row.source_instance_id,
    startLsn: row.start_lsn,
    endLsn: row.end_lsn,
    timeline: row.timeline,
    bytes: row.bytes === null ? null : Number(row.bytes),
    takeMs: row.take_ms,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    verified: row.verified,
    verifiedAt: row.verified_at,
    verifyDetail: row.verify_detail,
    error: row.error ?? (machineFailed ? row.machine_error : null),
  };
}

export async function listBackups(db: Pool, clusterId: string): Promise<BackupSnapshot[]> {
  const result = await db.query<BackupRow>(`${backupSelect} where b.cluster_id = $1 and b.status <> 'deleted' order by b.started_at desc limit $2`, [clusterId, backupsPerListMax]);
  return result.rows.map(toSnapshot);
}

/** A backup of a cluster of the org, or null. */
export async function findBackup(db: Pool, orgId: string, id: string): Promise<BackupSnapshot | null> {
  const result = await db.query<BackupRow>(
    `${backupSelect} join clusters c on c.id = b.cluster_id where b.id = $1 and c.org_id = $2 and b.status <> 'deleted'`,
    [id, orgId],
  );
  const row = result.rows[0];
  return row === undefined ? null : toSnapshot(row);
}

export async function createManualBackup(db: Pool, backupMachine: MachineOrigin, clusterId: ClusterId): Promise<BackupId> {
  return inTransaction(db, (client) => insertBackup(client, backupMachine, clusterId, 'manual'));
}

/**
 * Checks the backup again: the result so far is cleared and `signal` is raised on its machine,
 * which acts on it from where it finished (the engine records who asked as an event).
 */
export async function requestVerify(db: Pool, backupMachine: MachineOrigin, id: string, signal: string): Promise<void> {
  await inTransaction(db, async (client) => {
    const machine = await client.query<{ id: string }>('select id from machines where kind = $1 and entity_id = $2 for update', [backupMachine.kind, id]);
    const row = machine.rows[0];
    assert(row !== undefined, `backup ${id} has no machine`);
    await client.query('update backups set verified = null, verified_at = null, verify_detail = null, verifying_at = null where id = $1', [id]);
    await raiseSignal(client, row.id, signal);
  });
}

/** What a cluster's primary last reported of its WAL: how far it wrote and what its archive holds. */
export interface ObservedWal {
  /** The primary's current LSN at its last probe. */
  readonly lsn: string | null;
  readonly lastArchivedWal: string | null;
  readonly lastArchivedAt: Date | null;
}

/** From the live primary's last probe; for a deleted cluster, from the last primary it had. */
export async function observedWal(db: Pool, clusterId: string): Promise<ObservedWal> {
  const result = await db.query<{ lsn: string | null; last_archived_wal: string | null; last_archived_at: string | null }>(
    `select observed ->> 'lsn' as lsn, observed -> 'archive' ->> 'lastArchivedWal' as last_archived_wal,
            observed -> 'archive' ->> 'lastArchivedAt' as last_archived_at
       from instances where cluster_id = $1 and role = 'primary'
      order by deleted_at is null desc, observed_at desc nulls last limit 1`,
    [clusterId],
  );
  const row = result.rows[0];
  const archivedAt = row?.last_archived_at ? new Date(row.last_archived_at) : null;
  return {
    lsn: row?.lsn ?? null,
    lastArchivedWal: row?.last_archived_wal ?? null,
    lastArchivedAt: archivedAt !== null && Number.isFinite(archivedAt.getTime()) ? archivedAt : null,
  };
}

/** A deleted cluster of the org whose backups are still kept. */
export interface DeletedClusterSnapshot {
  readonly id: string;
  readonly name: string;
  readonly deletedAt: Date;
}

export const deletedClustersPerListMax = 200;

export async function listDeletedClustersWithBackups(db: Pool, orgId: string): Promise<DeletedClusterSnapshot[]> {
  const result = await db.query<{ id: string; name: string; deleted_at: Date }>(
    `select c.id, c.name, c.deleted_at from clusters c
      where c.org_id = $1 and c.deleted_at is not null and c.backups_purged_at is null
        and exists (select 1 from backups b where b.cluster_id = c.id and b.status <> 'deleted')
      order by c.deleted_at desc limit $2`,
    [orgId, deletedClustersPerListMax],
  );
  return result.rows.map((row) => ({ id: row.id, name: row.name, deletedAt: row.deleted_at }));
}
