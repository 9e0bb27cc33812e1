import { type ConfigPlan, type RevisionConfig, planChange } from '../lib/config-plan.js';
import { CellarError, invalid } from '../lib/errors.js';
import { type ChangeId, type ClusterId, newId } from '../lib/ids.js';
import { type DiskReserve, hostDiskReservePercentDefault } from '../lib/placement.js';
import { type CatalogueEntry, checkSettings } from '../lib/settings.js';
import { type ClusterSpec, bytesPerStorageGb, type SizeName, durabilityOf, instanceMemoryMb, isSizeName, replicasMax, sizeNames, storageGbMax } from '../lib/sizes.js';
import { type AutogrowPolicy, changeKind } from '../machines/ports.js';
import { type MachineOrigin, insertMachine, newMachine } from './machines-table.js';
import { type Pool, type Queryable, inTransaction } from './pool.js';
import { assertStorageGrowthPlaceable, lockPlacement } from './placement.js';

/**
 * Configuration revisions (docs/CONFIG.md): every change to a cluster's settings, size, replicas
 * or fleet defaults is validated, planned and stored here as a new revision with the change
 * machine that applies it, in one transaction with the cluster's spec.
 */

export const revisionsPerListMax = 100;

export interface ChangeRequest {
  readonly clusterId: ClusterId;
  /** Who asked: a token's name, `rollout:<id>`, … */
  readonly actor: string;
  readonly reason?: string;
  readonly dryRun?: boolean;
  readonly change: {
    /** New values; null removes the cluster's own value (back to the defaults beneath it). */
    readonly settings?: Readonly<Record<string, string | null>>;
    readonly size?: string;
    readonly replicas?: number;
    /** A larger storage allocation (grow only; `StoragePolicy` bounds the step and the pace). */
    readonly storageGb?: number;
    /** The fleet defaults the cluster runs with, whole. */
    readonly defaults?: Readonly<Record<string, string>>;
  };
  /** The revision this one restores (a rollback). */
  readonly rollbackOf?: number;
  /** The change this one undoes: it may still be in progress (it is about to fail). */
  readonly supersedes?: ChangeId;
}

/** How storage may grow: at least this many GB at a time, once per cooldown, and only as far as the hosts' disk and its reserve allow. */
export interface StoragePolicy {
  readonly resizeStepGbMin: number;
  readonly resizeCooldownMs: number;
  /** Bytes in one GB of allocation (CELLAR_STORAGE_GB_BYTES). */
  readonly gbBytes: number;
  /** Where the primary turns read-only: autogrow must act below it. */
  readonly readOnlyPercent: number;
  /** The share of a measured host's data filesystem that growth leaves free (CELLAR_HOST_DISK_RESERVE_PERCENT, docs/STORAGE.md "Host disk reserve"). */
  readonly hostDiskReservePercent: number;
}

const defaultStoragePolicy: StoragePolicy = { resizeStepGbMin: 1, resizeCooldownMs: 6 * 3_600_000, gbBytes: bytesPerStorageGb, readOnlyPercent: 95, hostDiskReservePercent: hostDiskReservePercentDefault };

/** The host disk reserve of a policy, in its unit of allocation. */
export function diskReserveOf(policy: Pick<StoragePolicy, 'hostDiskReservePercent' | 'gbBytes'>): DiskReserve {
  return { percent: policy.hostDiskReservePercent, bytesPerStorageGb: policy.gbBytes };
}

/** Autogrow's defaults and bounds (docs/STORAGE.md "Autogrow"). */
export const autogrowThresholdPercentDefault = 90;
export const autogrowThresholdPercentMin = 50;
export const autogrowStepPercentDefault = 25;
export const autogrowStepPercentMin = 5;
export const autogrowStepPercentMax = 100;

/**
 * Turns a cluster's autogrow on (its ceiling above the allocation, its threshold below the
 * read-only one) or off (null). Checked here so that a refused policy stores nothing.
 */
export async function setAutogrow(db: Queryable, clusterId: ClusterId, policy: AutogrowPolicy | null, storagePolicy: StoragePolicy = defaultStoragePolicy): Promise<void> {
  if (policy !== null) {
    const row = await db.query<{ storage_gb: number }>(`select (spec ->> 'storageGb')::int as storage_gb from clusters where id = $1 and deleted_at is null`, [clusterId]);
    const storageGb = row.rows[0]?.storage_gb;
    if (storageGb === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `cluster ${clusterId} does not exist`);
    if (!Number.isInteger(policy.maxGb) || policy.maxGb <= storageGb || policy.maxGb > storageGbMax) {
      throw invalid('maxGb', `maxGb must be a whole number of GB above the cluster's allocation of ${storageGb} GB and at most ${storageGbMax}, not ${String(policy.maxGb)}`);
    }
    if (!Number.isInteger(policy.thresholdPercent) || policy.thresholdPercent < autogrowThresholdPercentMin || policy.thresholdPercent >= storagePolicy.readOnlyPercent) {
      throw invalid('thresholdPercent', `thresholdPercent must be a whole number from ${autogrowThresholdPercentMin} to ${storagePolicy.readOnlyPercent - 1} (below the read-only threshold of ${storagePolicy.readOnlyPercent} %), not ${String(policy.thresholdPercent)}`);
    }
    if (!Number.isInteger(policy.stepPercent) || policy.stepPercent < autogrowStepPercentMin || policy.stepPercent > autogrowStepPercentMax) {
      throw invalid('stepPercent', `stepPercent must be a whole number from ${autogrowStepPercentMin} to ${autogrowStepPercentMax}, not ${String(policy.stepPercent)}`);
    }
  }
  const updated = await db.query('update clusters set storage_autogrow = $2 where id = $1 and deleted_at is null', [clusterId, policy]);
  if (updated.rowCount === 0) throw new CellarError('CELLAR_E_NOT_FOUND', `cluster ${clusterId} does not exist`);
}

export interface ChangeProposal {
  readonly revision: number | null;
  readonly changeId: ChangeId | null;
  readonly plan: ConfigPlan;
  readonly warnings: readonly string[];
}

export interface RevisionRecord extends RevisionConfig {
  readonly revision: number;
  readonly diff: readonly DiffEntry[];
  readonly plan: ConfigPlan | null;
  readonly reason: string | null;
  readonly actor: string;
  readonly rollbackOf: number | null;
  readonly changeId: ChangeId | null;
  readonly createdAt: Date;
  /** The change machine's label (`done` once applied), null for revision 1. */
  readonly changeLabel: string | null;
  readonly changeDone: boolean;
  readonly changeError: string | null;
}

export interface DiffEntry {
  readonly name: string;
  readonly from: string | number | null;
  readonly to: string | number | null;
}

interface RevisionRow {
  revision: number;
  size: SizeName;
  replicas: number;
  settings: Record<string, string>;
  defaults: Record<string, string>;
  diff: DiffEntry[];
  plan: ConfigPlan | null;
  reason: string | null;
  actor: string;
  rollback_of: number | null;
  cluster_id: string;
  change_id: string | null;
  storage_gb: number | null;
  created_at: Date;
  label: string | null;
  next_tick_at: Date | null;
  last_error: string | null;
}

const revisionSelect = `
select r.cluster_id, r.revision, r.size, r.replicas, r.settings, r.defaults, r.diff, r.plan, r.reason, r.actor, r.rollback_of, r.change_id, r.storage_gb, r.created_at,
       m.label, m.next_tick_at, m.last_error
  from config_revisions r left join machines m on m.kind = '${changeKind}' and m.entity_id = r.change_id`;

/** A change machine's outcome from its row: failed, or done (finished without failing), or neither (still applying). */
function changeOutcome(label: string, nextTickAt: Date | null): { readonly done: boolean; readonly failed: boolean } {
  const failed = label === 'failed';
  return { done: !failed && nextTickAt === null, failed };
}

function toRecord(row: RevisionRow): RevisionRecord {
  return {
    revision: row.revision,
    size: row.size,
    replicas: row.replicas,
    settings: row.settings,
    defaults: row.defaults,
    ...(row.storage_gb === null ? {} : { storageGb: row.storage_gb }),
    diff: row.diff,
    plan: row.plan,
    reason: row.reason,
    actor: row.actor,
    rollbackOf: row.rollback_of,
    changeId: row.change_id as ChangeId | null,
    createdAt: row.created_at,
    changeLabel: row.label,
    changeDone: row.change_id === null || (row.label !== null && changeOutcome(row.label, row.next_tick_at).done),
    changeError: row.last_error,
  };
}

/** A change still being applied: its machine has neither finished nor failed. */
export function isChangeInProgress(record: RevisionRecord): boolean {
  return record.changeId !== null && !record.changeDone && record.changeLabel !== 'failed';
}

export async function revisions(db: Queryable, clusterId: ClusterId, limit = revisionsPerListMax): Promise<RevisionRecord[]> {
  const result = await db.query<RevisionRow>(`${revisionSelect} where r.cluster_id = $1 order by r.revision desc limit $2`, [clusterId, limit]);
  return result.rows.map(toRecord);
}

export async function revision(db: Queryable, clusterId: ClusterId, number: number): Promise<RevisionRecord | null> {
  const result = await db.query<RevisionRow>(`${revisionSelect} where r.cluster_id = $1 and r.revision = $2`, [clusterId, number]);
  const row = result.rows[0];
  return row === undefined ? null : toRecord(row);
}

export async function revisionOfChange(db: Queryable, changeId: ChangeId): Promise<(RevisionRecord & { readonly clusterId: ClusterId }) | null> {
  const result = await db.query<RevisionRow>(`${revisionSelect} where r.change_id = $1`, [changeId]);
  const row = result.rows[0];
  return row === undefined ? null : { ...toRecord(row), clusterId: row.cluster_id as ClusterId };
}

export async function changeState(db: Queryable, changeId: ChangeId): Promise<{ label: string; done: boolean; failed: boolean; error: string | null } | null> {
  const result = await db.query<{ label: string; next_tick_at: Date | null; last_error: string | null }>(`select label, next_tick_at, last_error from machines where kind = $1 and entity_id = $2`, [changeKind, changeId]);
  const row = result.rows[0];
  if (row === undefined) return null;
  return { label: row.label, ...changeOutcome(row.label, row.next_tick_at), error: row.last_error };
}

/** The catalogue of a Postgres version, or null before one is stored (docs/CONFIG.md "The catalogue"). */
export async function loadCatalogue(db: Queryable, pgVersion: number): Promise<Map<string, CatalogueEntry> | null> {
  const result = await db.query<{ entries: CatalogueEntry[] }>('select entries from setting_catalogues where pg_version = $1', [pgVersion]);
  const entries = result.rows[0]?.entries;
  return entries === undefined ? null : new Map(entries.map((entry) => [entry.name, entry]));
}

export async function saveCatalogue(db: Queryable, pgVersion: number, entries: readonly CatalogueEntry[]): Promise<void> {
  await db.query('insert into setting_catalogues (pg_version, entries) values ($1, $2) on conflict (pg_version) do update set entries = excluded.entries, read_at = now()', [pgVersion, JSON.stringify(entries)]);
}

const reasonLengthMax = 500;
const settingsPerChangeMax = 100;

function configOf(spec: ClusterSpec): RevisionConfig {
  return { size: spec.size, replicas: spec.replicas, settings: spec.settings ?? {}, defaults: spec.defaults ?? {}, storageGb: spec.storageGb };
}

/** A storage change within the policy, or a CellarError naming `storageGb` and the limit. Storage never shrinks. */
async function checkStorage(db: Queryable, clusterId: ClusterId, fromGb: number, toGb: number, policy: StoragePolicy): Promise<void> {
  if (!Number.isInteger(toGb) || toGb > storageGbMax) throw invalid('storageGb', `storageGb must be a whole number of GB up to ${storageGbMax}, not ${String(toGb)}`);
  if (toGb < fromGb) {
    throw invalid('storageGb', `storage only grows: the cluster has ${fromGb} GB and ${toGb} GB would shrink it, which Cellar refuses (a volume does not shrink in place, and the data may not fit); restore a backup into a new, smaller cluster instead`);
  }
  if (toGb === fromGb) return;
  if (toGb - fromGb < policy.resizeStepGbMin) throw invalid('storageGb', `grow storage by at least ${policy.resizeStepGbMin} GB at a time: from ${fromGb} GB to at least ${fromGb + policy.resizeStepGbMin} GB, not ${toGb} GB`);
  const last = await db.query<{ at: Date | null }>(`select max(created_at) as at from config_revisions where cluster_id = $1 and diff @> '[{"name": "storageGb"}]'`, [clusterId]);
  const at = last.rows[0]?.at ?? null;
  if (at !== null && Date.now() - at.getTime() < policy.resizeCooldownMs) {
    const next = new Date(at.getTime() + policy.resizeCooldownMs);
    throw new CellarError('CELLAR_E_CONFLICT', `storageGb: storage was resized at ${at.toISOString()}; the next resize is possible from ${next.toISOString()} (one resize per ${Math.round(policy.resizeCooldownMs / 60_000)} min)`, 'storageGb');
  }
}

/** The cluster's configuration after the request, or a CellarError naming the field at fault. */
function applyRequest(before: RevisionConfig, spec: ClusterSpec, request: ChangeRequest): RevisionConfig {
  const { change } = request;
  const settings: Record<string, string> = { ...before.settings };
  const requested = Object.entries(change.settings ?? {});
  if (requested.length > settingsPerChangeMax) throw invalid('settings', `at most ${settingsPerChangeMax} settings in one change, not ${requested.length}`);
  for (const [name, value] of requested) {
    if (value === null) {
      if (!(name in settings)) throw invalid(`settings.${name}`, `${name} is not set on this cluster, so it cannot be removed (set: ${Object.keys(settings).join(', ') || 'none'})`);
      delete settings[name];
    } else {
      settings[name] = value;
    }
  }
  const size = change.size ?? before.size;
  if (!isSizeName(size)) throw invalid('size', `size must be one of ${sizeNames.join(', ')}, not ${JSON.stringify(size)}`);
  const replicas = change.replicas ?? before.replicas;
  if (!Number.isInteger(replicas) || replicas < 0 || replicas > replicasMax) throw invalid('replicas', `replicas must be a whole number from 0 to ${replicasMax}, not ${String(replicas)}`);
  if (replicas === 0 && durabilityOf(spec) === 'sync-strict') {
    throw invalid('replicas', 'replicas: a sync-strict cluster needs at least 1 replica (commits wait for one); change its durability first');
  }
  return { size, replicas, settings, defaults: change.defaults ?? before.defaults, storageGb: change.storageGb ?? before.storageGb ?? spec.storageGb };
}

function diffOf(before: RevisionConfig, after: RevisionConfig): DiffEntry[] {
  const diff: DiffEntry[] = [];
  if (before.size !== after.size) diff.push({ name: 'size', from: before.size, to: after.size });
  if (before.replicas !== after.replicas) diff.push({ name: 'replicas', from: before.replicas, to: after.replicas });
  if (before.storageGb !== after.storageGb) diff.push({ name: 'storageGb', from: before.storageGb ?? null, to: after.storageGb ?? null });
  for (const [prefix, from, to] of [['', before.settings, after.settings], ['defaults.', before.defaults, after.defaults]] as const) {
    for (const name of [...new Set([...Object.keys(from), ...Object.keys(to)])].sort()) {
      if (from[name] !== to[name]) diff.push({ name: `${prefix}${name}`, from: from[name] ?? null, to: to[name] ?? null });
    }
  }
  return diff;
}

/**
 * Validates a change against the catalogue, the cluster's size and its durability, plans it,
 * and (unless a dry run) stores it as the next revision, moves the cluster's spec to it and makes
 * the change machine that applies it, in one transaction: a refused change leaves nothing behind.
 */
export async function proposeChange(db: Pool, changeMachine: MachineOrigin, request: ChangeRequest, storagePolicy: StoragePolicy = defaultStoragePolicy): Promise<ChangeProposal> {
  if (request.reason !== undefined && request.reason.length > reasonLengthMax) throw invalid('reason', `reason is ${request.reason.length} characters long, more than ${reasonLengthMax}`);
  return inTransaction(db, async (client) => {
    // Storage growth is checked against the hosts under the placement lock; taken before the cluster's row, in the order a create takes them.
    if (request.change.storageGb !== undefined) await lockPlacement(client);
    const cluster = await client.query<{ spec: ClusterSpec; label: string }>(
      `select c.spec, m.label from clusters c join machines m on m.kind = 'cluster' and m.entity_id = c.id where c.id = $1 and c.deleted_at is null for update of c`,
      [request.clusterId],
    );
    const row = cluster.rows[0];
    if (row === undefined) throw new CellarError('CELLAR_E_NOT_FOUND', `cluster ${request.clusterId} does not exist`);
    if (['start', 'waitInstances', 'destroy', 'waitDestroyed', 'failed'].includes(row.label)) {
      throw new CellarError('CELLAR_E_CONFLICT', `the cluster is ${row.label === 'failed' ? 'failed' : row.label.startsWith('destroy') || row.label === 'waitDestroyed' ? 'being deleted' : 'still being created'}: its configuration can change once it runs`);
    }
    const [latest] = await revisions(client, request.clusterId, 1);
    if (latest !== undefined && isChangeInProgress(latest) && latest.changeId !== request.supersedes) {
      throw new CellarError('CELLAR_E_CHANGE_IN_PROGRESS', `revision ${latest.revision} is still being applied (step ${latest.changeLabel ?? '?'}); wait for it to finish (cellar config show), then try again`);
    }
    const before = configOf(row.spec);
    const after = applyRequest(before, row.spec, request);
    if (request.change.storageGb !== undefined) {
      const fromGb = before.storageGb ?? row.spec.storageGb;
      await checkStorage(client, request.clusterId, fromGb, request.change.storageGb, storagePolicy);
      await assertStorageGrowthPlaceable(client, request.clusterId, fromGb, request.change.storageGb, diskReserveOf(storagePolicy));
    }
    const touchesSettings = request.change.settings !== undefined || request.change.defaults !== undefined || after.size !== before.size;
    const catalogue = await loadCatalogue(client, row.spec.pgVersion);
    if (catalogue === null && touchesSettings) {
      throw new CellarError('CELLAR_E_CATALOGUE_MISSING', `the parameter catalogue of Postgres ${row.spec.pgVersion} is not read yet: it is read from the first running cluster of that version; try again in a few seconds`);
    }
    const own = Object.fromEntries(Object.entries(request.change.settings ?? {}).filter((entry): entry is [string, string] => entry[1] !== null));
    const checked = catalogue === null ? { warnings: [] } : checkSettings(catalogue, { ...request.change.defaults, ...own }, instanceMemoryMb[after.size], { ...after.defaults, ...after.settings });
    const plan = planChange(catalogue ?? new Map(), before, after);
    const diff = diffOf(before, after);
    if (diff.length === 0) throw invalid(request.change.settings !== undefined ? 'settings' : 'change', 'the change changes nothing: every value is already what the cluster has');
    if (request.dryRun === true) return { revision: null, changeId: null, plan, warnings: checked.warnings };
    const number = (latest?.revision ?? 0) + 1;
    const changeId = newId('change');
    await client.query(
      `insert into config_revisions (cluster_id, revision, size, replicas, settings, defaults, diff, plan, reason, actor, rollback_of, change_id, storage_gb)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
      [request.clusterId, number, after.size, after.replicas, after.settings, after.defaults, JSON.stringify(diff), plan, request.reason ?? null, request.actor, request.rollbackOf ?? null, changeId, after.storageGb ?? row.spec.storageGb],
    );
    const spec: ClusterSpec = { ...row.spec, size: after.size, replicas: after.replicas, settings: after.settings, defaults: after.defaults, storageGb: after.storageGb ?? row.spec.storageGb };
    await client.query('update clusters set spec = $2 where id = $1', [request.clusterId, spec]);
    await insertMachine(client, newMachine(changeMachine, changeId, request.clusterId));
    return { revision: number, changeId, plan, warnings: checked.warnings };
  });
}

/** A rollback is a new revision equal to an earlier one. */
export async function proposeRollback(db: Pool, changeMachine: MachineOrigin, clusterId: ClusterId, to: number, actor: string, options: { reason?: string; dryRun?: boolean; supersedes?: ChangeId } = {}): Promise<ChangeProposal> {
  const target = await revision(db, clusterId, to);
  if (target === null) throw new CellarError('CELLAR_E_NOT_FOUND', `revision ${to} of this cluster does not exist`, 'revision');
  const [latest] = await revisions(db, clusterId, 1);
  const current = latest?.settings ?? {};
  const settings: Record<string, string | null> = { ...target.settings };
  for (const name of Object.keys(current)) if (!(name in target.settings)) settings[name] = null;
  return proposeChange(db, changeMachine, {
    clusterId,
    actor,
    reason: options.reason ?? `rollback to revision ${to}`,
    ...(options.dryRun === undefined ? {} : { dryRun: options.dryRun }),
    change: { settings, size: target.size, replicas: target.replicas, defaults: target.defaults },
    rollbackOf: to,
    ...(options.supersedes === undefined ? {} : { supersedes: options.supersedes }),
  });
}

/** Undoes a change that cannot finish (docs/CONFIG.md): the revision before it, applied again. Null when it is revision 1 or gone. */
export async function revertChange(db: Pool, changeMachine: MachineOrigin, changeId: ChangeId, reason: string): Promise<number | null> {
  const failing = await revisionOfChange(db, changeId);
  if (failing === null || failing.revision <= 1) return null;
  const [latest] = await revisions(db, failing.clusterId, 1);
  // Run twice after a crash: the revert is already the newest revision.
  if (latest !== undefined && latest.revision > failing.revision && latest.rollbackOf === failing.revision - 1 && latest.actor === 'cellar') return latest.revision;
  const proposal = await proposeRollback(db, changeMachine, failing.clusterId, failing.revision - 1, 'cellar', { reason, supersedes: changeId });
  return proposal.revision;
}
