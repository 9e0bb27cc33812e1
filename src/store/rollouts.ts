import { CellarError } from '../lib/errors.js';
import { type ChangeId, type ClusterId, type RolloutId, newId } from '../lib/ids.js';
import type { CatalogueEntry } from '../lib/settings.js';
import type { ClusterSpec } from '../lib/sizes.js';
import { type ChangeOutcome, type ClusterHealth, type DefaultsProposal, type FleetCluster, type RolloutHalt, type RolloutRecord, type RolloutRecords, rolloutKind } from '../machines/ports.js';
import { changeState, proposeChange } from './config.js';
import { type MachineOrigin, insertMachine, newMachine, raiseSignal } from './machines-table.js';
import { type Pool, type Queryable, inTransaction, isUniqueViolation } from './pool.js';

/**
 * Fleet defaults and rollouts in the cell store (docs/CONFIG.md, "Fleet defaults and rollouts"):
 * the defaults every cluster gets beneath its own settings, the rollouts that move the live
 * clusters onto new ones (the rollout machine's records), and what the API shows of them.
 */

export const rolloutsPerListMax = 100;
export const eventsPerRolloutMax = 100;

/** The current fleet defaults, name → value: what a new cluster takes (`ClusterSpec.defaults`). */
export const currentDefaultsSql = `select coalesce(jsonb_object_agg(name, value), '{}'::jsonb) as defaults from fleet_defaults`;

export async function currentDefaults(db: Queryable): Promise<Record<string, string>> {
  const result = await db.query<{ defaults: Record<string, string> }>(currentDefaultsSql);
  return result.rows[0]?.defaults ?? {};
}

/** A new cluster's spec with the fleet's current defaults beneath its own settings (none: the spec as it is). */
export async function withFleetDefaults(db: Queryable, spec: ClusterSpec): Promise<ClusterSpec> {
  if (spec.defaults !== undefined) return spec;
  const defaults = await currentDefaults(db);
  return Object.keys(defaults).length === 0 ? spec : { ...spec, defaults };
}

export interface FleetDefault {
  readonly name: string;
  readonly value: string;
  readonly setBy: string;
  readonly setAt: Date;
}

export async function listDefaults(db: Queryable): Promise<FleetDefault[]> {
  const result = await db.query<{ name: string; value: string; set_by: string; set_at: Date }>('select name, value, set_by, set_at from fleet_defaults order by name');
  return result.rows.map((row) => ({ name: row.name, value: row.value, setBy: row.set_by, setAt: row.set_at }));
}

/** The stored parameter catalogues by Postgres major version (`setting_catalogues`, migration 0012). */
export async function settingCatalogues(db: Queryable): Promise<Map<number, ReadonlyMap<string, CatalogueEntry>>> {
  const result = await db.query<{ pg_version: number; entries: CatalogueEntry[] }>('select pg_version, entries from setting_catalogues');
  return new Map(result.rows.map((row) => [row.pg_version, new Map(row.entries.map((entry) => [entry.name, entry]))]));
}

/** The Postgres versions live clusters run: fleet defaults must be valid for each. */
export async function liveClusterVersions(db: Queryable): Promise<number[]> {
  const result = await db.query<{ version: number }>(`select distinct (spec ->> 'pgVersion')::int as version from clusters where deleted_at is null and not pooled order by 1`);
  return result.rows.map((row) => row.version);
}

export interface DefaultsChange {
  /** name → value, or null to remove that default. */
  readonly settings: Readonly<Record<string, string | null>>;
  readonly ratePerMinute: number;
  readonly reason: string | null;
  readonly actor: string;
}

export interface DefaultsChanged {
  readonly before: Record<string, string>;
  readonly after: Record<string, string>;
  /** Null when no live cluster needs moving (nothing changed and every cluster runs the defaults). */
  readonly rolloutId: RolloutId | null;
}

const rolloutLock = 'select id from rollouts where finished_at is null for update';

function rolloutInProgress(id: string, label: string | null): CellarError {
  return new CellarError(
    'CELLAR_E_ROLLOUT_IN_PROGRESS',
    `rollout ${id} is ${label ?? 'starting'}: only one rollout runs at a time; \`cellar rollouts resume ${id}\` or \`cellar rollouts abort ${id}\` first`,
    'settings',
  );
}

/**
 * In one transaction: refused while another rollout is unfinished; the new defaults are checked
 * (`check` throws a CellarError naming the parameter), stored, and a rollout with its machine is
 * made when any live cluster does not run them. Bad input leaves nothing changed.
 */
export async function changeDefaults(pool: Pool, rolloutMachine: MachineOrigin, change: DefaultsChange, check: (values: Record<string, string>) => void): Promise<DefaultsChanged> {
  try {
    return await inTransaction(pool, async (client) => {
      const unfinished = await client.query<{ id: string }>(rolloutLock);
      const open = unfinished.rows[0];
      if (open !== undefined) throw rolloutInProgress(open.id, await rolloutLabel(client, open.id));
      await client.query('lock table fleet_defaults in share row exclusive mode');
      const before = await currentDefaults(client);
      const set: Record<string, string> = {};
      for (const [name, value] of Object.entries(change.settings)) if (value !== null) set[name] = value;
      check(set);
      const after: Record<string, string> = { ...before };
      for (const [name, value] of Object.entries(change.settings)) {
        if (value === null) delete after[name];
        else after[name] = value;
      }
      for (const [name, value] of Object.entries(change.settings)) {
        if (value === null) await client.query('delete from fleet_defaults where name = $1', [name]);
        else if (before[name] !== value) {
          await client.query(
            `insert into fleet_defaults (name, value, set_by) values ($1, $2, $3)
             on conflict (name) do update set value = excluded.value, set_by = excluded.set_by, set_at = now()`,
            [name, value, change.actor],
          );
        }
      }
      if (!(await anyClusterDiffers(client, after))) return { before, after, rolloutId: null };
      const rolloutId = newId('rollout');
      await client.query('insert into rollouts (id, defaults_before, defaults_after, rate_per_minute, reason, created_by) values ($1, $2, $3, $4, $5, $6)', [
        rolloutId,
        before,
        after,
        change.ratePerMinute,
        change.reason,
        change.actor,
      ]);
      await insertMachine(client, newMachine(rolloutMachine, rolloutId, null));
      return { before, after, rolloutId };
    });
  } catch (error) {
    // Two changes at once: the second's insert meets the first's unfinished rollout.
    if (isUniqueViolation(error, 'rollouts_one_unfinished')) throw new CellarError('CELLAR_E_ROLLOUT_IN_PROGRESS', 'another rollout started at the same moment: only one runs at a time; see `cellar rollouts list`', 'settings');
    throw error;
  }
}

async function anyClusterDiffers(db: Queryable, defaults: Record<string, string>): Promise<boolean> {
  const result = await db.query(`select 1 from clusters where deleted_at is null and not pooled and coalesce(spec -> 'defaults', '{}'::jsonb) <> $1::jsonb limit 1`, [defaults]);
  return (result.rowCount ?? 0) > 0;
}

async function rolloutLabel(db: Queryable, id: string): Promise<string | null> {
  const result = await db.query<{ label: string }>('select label from machines where kind = $1 and entity_id = $2', [rolloutKind, id]);
  return result.rows[0]?.label ?? null;
}

export interface RolloutSnapshot {
  readonly id: RolloutId;
  /** The machine's label: next, propose, waitCluster, paused, halted, completed, aborted (or failed: a bug). */
  readonly label: string;
  readonly machineError: string | null;
  readonly defaultsBefore: Record<string, string>;
  readonly defaultsAfter: Record<string, string>;
  readonly ratePerMinute: number;
  readonly reason: string | null;
  readonly createdBy: string;
  readonly createdAt: Date;
  readonly finishedAt: Date | null;
  readonly cursor: { readonly clusterId: string; readonly clusterName: string | null } | null;
  readonly current: { readonly clusterId: string; readonly clusterName: string | null; readonly revision: number | null } | null;
  readonly clustersChanged: number;
  readonly clustersSkipped: number;
  /** Live clusters not yet reached (after the cursor). */
  readonly clustersLeft: number;
  readonly halt: { readonly clusterId: string; readonly clusterName: string; readonly revision: number | null; readonly reason: string; readonly at: Date } | null;
}

interface RolloutRow {
  id: string;
  label: string | null;
  last_error: string | null;
  defaults_before: Record<string, string>;
  defaults_after: Record<string, string>;
  rate_per_minute: number;
  reason: string | null;
  created_by: string;
  created_at: Date;
  finished_at: Date | null;
  cursor_cluster_id: string | null;
  cursor_name: string | null;
  current_cluster_id: string | null;
  current_name: string | null;
  current_revision: number | null;
  clusters_changed: number;
  clusters_skipped: number;
  clusters_left: number;
  halted_reason: string | null;
  halted_cluster_id: string | null;
  halted_cluster_name: string | null;
  halted_revision: number | null;
  halted_at: Date | null;
}

const rolloutSelect = `
select r.*, m.label, m.last_error,
       (select name from clusters where id = r.cursor_cluster_id) as cursor_name,
       (select name from clusters where id = r.current_cluster_id) as current_name,
       (select count(*)::int from clusters c where c.deleted_at is null and not c.pooled and (r.cursor_cluster_id is null or c.id > r.cursor_cluster_id)) as clusters_left
  from rollouts r left join machines m on m.kind = '${rolloutKind}' and m.entity_id = r.id`;

function toSnapshot(row: RolloutRow): RolloutSnapshot {
  const halt =
    row.halted_cluster_id === null || row.halted_reason === null || row.halted_at === null
      ? null
      : { clusterId: row.halted_cluster_id, clusterName: row.halted_cluster_name ?? row.halted_cluster_id, revision: row.halted_revision, reason: row.halted_reason, at: row.halted_at };
  return {
    id: row.id as RolloutId,
    label: row.label ?? 'next',
    machineError: row.last_error,
    defaultsBefore: row.defaults_before,
    defaultsAfter: row.defaults_after,
    ratePerMinute: row.rate_per_minute,
    reason: row.reason,
    createdBy: row.created_by,
    createdAt: row.created_at,
    finishedAt: row.finished_at,
    cursor: row.cursor_cluster_id === null ? null : { clusterId: row.cursor_cluster_id, clusterName: row.cursor_name },
    current: row.current_cluster_id === null ? null : { clusterId: row.current_cluster_id, clusterName: row.current_name, revision: row.current_revision },
    clustersChanged: row.clusters_changed,
    clustersSkipped: row.clusters_skipped,
    clustersLeft: row.finished_at === null ? row.clusters_left : 0,
    halt,
  };
}

export async function listRollouts(db: Queryable): Promise<RolloutSnapshot[]> {
  const result = await db.query<RolloutRow>(`${rolloutSelect} order by r.created_at desc, r.id limit $1`, [rolloutsPerListMax]);
  return result.rows.map(toSnapshot);
}

export async function findRollout(db: Queryable, id: string): Promise<RolloutSnapshot | null> {
  const result = await db.query<RolloutRow>(`${rolloutSelect} where r.id = $1`, [id]);
  const row = result.rows[0];
  return row === undefined ? null : toSnapshot(row);
}

export interface RolloutEvent {
  readonly at: Date;
  readonly from: string | null;
  readonly to: string;
  readonly reason: string;
  readonly code: string | null;
}

export async function rolloutEvents(db: Queryable, id: string): Promise<RolloutEvent[]> {
  const result = await db.query<{ at: Date; from_label: string | null; to_label: string; reason: string; code: string | null }>(
    `select at, from_label, to_label, reason, code from (
       select * from events where kind = $1 and entity_id = $2 order by id desc limit $3) recent
     order by id`,
    [rolloutKind, id, eventsPerRolloutMax],
  );
  return result.rows.map((row) => ({ at: row.at, from: row.from_label, to: row.to_label, reason: row.reason, code: row.code }));
}

/**
 * Raises pause, resume or abort on a rollout's machine, checked against its label in the same
 * transaction (the row is locked), so a request the rollout cannot act on is refused, not dropped.
 */
export async function signalRollout(pool: Pool, id: string, signal: 'pause' | 'resume' | 'abort', allowedLabels: readonly string[]): Promise<void> {
  await inTransaction(pool, async (client) => {
    const result = await client.query<{ id: string; label: string }>('select id, label from machines where kind = $1 and entity_id = $2 for update', [rolloutKind, id]);
    const machine = result.rows[0];
    if (machine === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `no rollout ${id}`, 'id');
    if (!allowedLabels.includes(machine.label)) {
      throw new CellarError('CELLAR_E_CONFLICT', `rollout ${id} is ${machine.label}: ${signal} applies only when it is ${allowedLabels.join(' or ')}`, 'id');
    }
    await raiseSignal(client, machine.id, signal);
  });
}

/**
 * The store's side of proposing a change (`store/config.ts`, written beside this module): given
 * to the records so that the machine is tested with a fake and this module with the real one.
 */
export interface ConfigChanges {
  proposeChange(
    pool: Pool,
    input: { clusterId: ClusterId; actor: string; reason?: string; change: { defaults: Record<string, string> } },
  ): Promise<{ readonly revision: number | null; readonly changeId: string | null }>;
  changeState(pool: Pool, changeId: string): Promise<ChangeOutcome>;
}

/** The store's own proposals (`store/config.ts`), making change machines of `changeMachine`'s definition. */
export function storeConfigChanges(changeMachine: MachineOrigin): ConfigChanges {
  return {
    proposeChange: (pool, input) => proposeChange(pool, changeMachine, input),
    async changeState(pool, changeId) {
      // A revision's change machine is made with it and never deleted: a missing one is a broken record, not a wait.
      return (await changeState(pool, changeId as ChangeId)) ?? { label: 'missing', done: false, failed: true, error: `change ${changeId} has no machine` };
    },
  };
}

/** CellarError codes a proposal may meet, by what the rollout does about them. */
const busyCodes: ReadonlySet<string> = new Set(['CELLAR_E_CHANGE_IN_PROGRESS', 'CELLAR_E_CONFLICT']);
const refusedCodes: ReadonlySet<string> = new Set(['CELLAR_E_INVALID', 'CELLAR_E_CATALOGUE_MISSING', 'CELLAR_E_PLACEMENT']);

export class PgRolloutRecords implements RolloutRecords {
  constructor(
    private readonly db: Pool,
    private readonly changes: ConfigChanges,
  ) {}

  async rollout(id: string): Promise<RolloutRecord> {
    const result = await this.db.query<{ defaults_after: Record<string, string>; rate_per_minute: number; reason: string | null; cursor_cluster_id: string | null }>(
      'select defaults_after, rate_per_minute, reason, cursor_cluster_id from rollouts where id = $1',
      [id],
    );
    const row = result.rows[0];
    if (row === undefined) throw new Error(`rollout ${id} has a machine but no row`);
    return { id, defaultsAfter: row.defaults_after, ratePerMinute: row.rate_per_minute, reason: row.reason, cursorClusterId: row.cursor_cluster_id as ClusterId | null };
  }

  async nextCluster(afterClusterId: ClusterId | null): Promise<FleetCluster | null> {
    const result = await this.db.query<{ id: string; name: string; defaults: Record<string, string>; revision: number | null }>(
      `select c.id, c.name, coalesce(c.spec -> 'defaults', '{}'::jsonb) as defaults,
              (select max(revision) from config_revisions r where r.cluster_id = c.id) as revision
         from clusters c
        where c.deleted_at is null and not c.pooled and ($1::text is null or c.id > $1)
        order by c.id limit 1`,
      [afterClusterId],
    );
    const row = result.rows[0];
    return row === undefined ? null : { id: row.id as ClusterId, name: row.name, defaults: row.defaults, revision: row.revision ?? 1 };
  }

  async revisionSince(clusterId: ClusterId, afterRevision: number, actor: string): Promise<{ revision: number; changeId: string | null } | null> {
    const result = await this.db.query<{ revision: number; change_id: string | null }>(
      'select revision, change_id from config_revisions where cluster_id = $1 and revision > $2 and actor = $3 order by revision desc limit 1',
      [clusterId, afterRevision, actor],
    );
    const row = result.rows[0];
    return row === undefined ? null : { revision: row.revision, changeId: row.change_id };
  }

  async proposeDefaults(clusterId: ClusterId, defaults: Readonly<Record<string, string>>, actor: string, reason: string): Promise<DefaultsProposal> {
    try {
      const proposed = await this.changes.proposeChange(this.db, { clusterId, actor, reason, change: { defaults: { ...defaults } } });
      if (proposed.revision !== null) return { type: 'proposed', revision: proposed.revision, changeId: proposed.changeId };
      // Nothing to change after all: the cluster's newest revision is the one it runs.
      const newest = await this.nextRevisionOf(clusterId);
      return { type: 'proposed', revision: newest, changeId: null };
    } catch (error) {
      if (!(error instanceof CellarError)) throw error;
      if (error.code === 'CELLAR_E_NOT_FOUND') return { type: 'gone' };
      if (busyCodes.has(error.code)) return { type: 'busy', reason: error.message };
      if (refusedCodes.has(error.code)) return { type: 'refused', reason: `${error.message} [${error.code}]` };
      throw error;
    }
  }

  private async nextRevisionOf(clusterId: ClusterId): Promise<number> {
    const result = await this.db.query<{ revision: number | null }>('select max(revision) as revision from config_revisions where cluster_id = $1', [clusterId]);
    return result.rows[0]?.revision ?? 1;
  }

  async changeOutcome(changeId: string): Promise<ChangeOutcome> {
    return this.changes.changeState(this.db, changeId);
  }

  async clusterHealth(clusterId: ClusterId): Promise<ClusterHealth> {
    const cluster = await this.db.query<{ deleted: boolean; label: string; last_error: string | null; replicas: number; destroying: boolean }>(
      `select c.deleted_at is not null as deleted, m.label, m.last_error, (c.spec ->> 'replicas')::int as replicas,
              exists (select 1 from signals s where s.machine_id = m.id and s.name = 'destroy') as destroying
         from clusters c join machines m on m.kind = 'cluster' and m.entity_id = c.id
        where c.id = $1`,
      [clusterId],
    );
    const row = cluster.rows[0];
    if (row === undefined || row.deleted || row.destroying) return { state: 'gone', detail: 'deleted' };
    if (row.label === 'failed') return { state: 'broken', detail: `its cluster machine failed: ${row.last_error ?? 'no reason recorded'}` };
    const instances = await this.db.query<{ id: string; role: string; label: string; last_error: string | null; in_route: boolean }>(
      `select i.id, i.role, m.label, m.last_error, i.in_route
         from instances i join machines m on m.kind = 'instance' and m.entity_id = i.id
        where i.cluster_id = $1 and i.deleted_at is null order by i.ordinal`,
      [clusterId],
    );
    return judgeHealth(row.label, row.replicas, instances.rows);
  }

  async recordStarted(id: string, clusterId: ClusterId, revision: number): Promise<void> {
    await this.db.query('update rollouts set current_cluster_id = $2, current_revision = $3 where id = $1', [id, clusterId, revision]);
  }

  async recordAdvanced(id: string, clusterId: ClusterId, outcome: 'changed' | 'skipped'): Promise<void> {
    // Only forward: a step run again after a crash does not count a cluster twice.
    await this.db.query(
      `update rollouts
          set cursor_cluster_id = $2,
              clusters_changed = clusters_changed + case when $3 = 'changed' then 1 else 0 end,
              clusters_skipped = clusters_skipped + case when $3 = 'skipped' then 1 else 0 end,
              current_cluster_id = null, current_revision = null
        where id = $1 and (cursor_cluster_id is null or cursor_cluster_id < $2)`,
      [id, clusterId, outcome],
    );
  }

  async recordHalted(id: string, halt: RolloutHalt): Promise<void> {
    await this.db.query(
      'update rollouts set halted_reason = $2, halted_cluster_id = $3, halted_cluster_name = $4, halted_revision = $5, halted_at = now() where id = $1',
      [id, halt.reason, halt.clusterId, halt.clusterName, halt.revision],
    );
  }

  async recordFinished(id: string): Promise<void> {
    await this.db.query('update rollouts set finished_at = coalesce(finished_at, now()), current_cluster_id = null, current_revision = null where id = $1', [id]);
  }
}

/** Healthy: the cluster machine `running` and every instance (at least replicas + 1) `running` and routed. */
export function judgeHealth(clusterLabel: string, replicas: number, instances: readonly { id: string; role: string; label: string; last_error: string | null; in_route: boolean }[]): ClusterHealth {
  const failedPrimary = instances.find((instance) => instance.role === 'primary' && instance.label === 'failed');
  // Nothing replaces a failed primary by itself (a failed replica is replaced by its cluster).
  if (failedPrimary !== undefined) return { state: 'broken', detail: `its primary ${failedPrimary.id} failed: ${failedPrimary.last_error ?? 'no reason recorded'}` };
  if (clusterLabel !== 'running') return { state: 'waiting', detail: `its cluster machine is at ${clusterLabel}, not running` };
  const notRunning = instances.filter((instance) => instance.label !== 'running' || !instance.in_route);
  if (notRunning.length > 0) {
    return { state: 'waiting', detail: notRunning.map((instance) => `${instance.role} ${instance.id} is ${instance.label}${instance.in_route ? '' : ' (out of the routes)'}`).join(', ') };
  }
  if (instances.length < replicas + 1) return { state: 'waiting', detail: `${instances.length} of ${replicas + 1} instances` };
  return { state: 'healthy', detail: `${instances.length} instance(s) running` };
}
