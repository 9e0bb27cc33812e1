import { CellarError } from '../lib/errors.js';
import { type StorageUse, pastLockBound, storageGbMax, storageUse } from '../lib/sizes.js';
import { type Outcome, type StepContext, nap } from '../engine/machine.js';
import type { ClusterData, ClusterLabel } from './cluster.js';
import { changeMachine } from './change.js';
import { instanceSpec } from './instance.js';
import type { AutogrowPolicy, ClusterRecord, InstanceRecord, MachinePorts, StorageFull } from './ports.js';

/**
 * Storage that protects the database (docs/STORAGE.md "Limits", "Autogrow"), from the primary's
 * last measured use against the allocation: a warning at `warnPercent`; at `readOnlyPercent` the
 * servers make new transactions read-only and the cluster is marked full (the proxy tells clients
 * why and how to resize); below it again, writable. Autogrow, when on, proposes a storage revision
 * past its threshold. Level-triggered: run again after a crash, it does the same.
 */

type GuardContext = StepContext<ClusterLabel, ClusterData, MachinePorts>;
type Result = Outcome<ClusterLabel, ClusterData>;

/** What the storage guard decides from a use (pure; property-checked in test/storage-guard.test.ts). */
export type StorageAction = 'readOnly' | 'writable' | 'warn' | 'unwarn' | null;

export function storageAction(use: StorageUse, full: StorageFull | null, warned: boolean, settings: { readonly warnPercent: number; readonly readOnlyPercent: number }): StorageAction {
  // The warning always comes first, even when one measurement jumps past both thresholds (it costs one tick).
  if (!warned && use.percent >= settings.warnPercent) return 'warn';
  // Judged a lead ahead at the measured growth (projectedPercent), so a fast writer stops near the threshold.
  if (full === null && use.projectedPercent >= settings.readOnlyPercent) return 'readOnly';
  // Back below the threshold (the projection is never below the use), and below where it stopped:
  // a mark taken just short of the threshold (a writer stopped by the lead) is not undone at the next measurement.
  if (full !== null && use.projectedPercent < settings.readOnlyPercent && use.percent < markPercent(full)) return 'writable';
  if (warned && use.percent < settings.warnPercent) return 'unwarn';
  return null;
}

/** The mark's own share of the allocation it was taken at, unrounded. */
function markPercent(full: StorageFull): number {
  return (full.usedBytes / full.allocatedBytes) * 100;
}

/**
 * The hard stop (docs/STORAGE.md "Limits"): read-only is a default a session may turn off. A full
 * cluster that went on growing by more than `lockGrowthBytes` since its mark and past its whole
 * allocation is locked: the proxy refuses and ends every connection to it until a resize (or an
 * admin) brings it below the read-only threshold. Null: nothing to lock.
 */
export function lockAction(use: StorageUse, full: StorageFull | null): { full: StorageFull; reason: string } | null {
  if (full === null || full.locked === true) return null;
  if (!pastLockBound(use, full)) return null;
  const grownMb = Math.round((use.usedBytes - full.usedBytes) / 1024 ** 2);
  return {
    full: { ...full, usedBytes: use.usedBytes, percent: Math.round(use.percent * 10) / 10, locked: true },
    reason: `storage is ${describe(use)} full: ${grownMb} MB written since it turned read-only (a session turned read-only off), past the whole allocation: the proxy refuses its connections until it is resized`,
  };
}

/** Autogrow's next size: `stepPercent` of the allocation, at least the resize step, never past the ceiling. Null: at the ceiling. */
export function autogrowTarget(storageGb: number, policy: AutogrowPolicy, resizeStepGbMin: number): number | null {
  const ceiling = Math.min(policy.maxGb, storageGbMax);
  if (storageGb >= ceiling) return null;
  const step = Math.max(resizeStepGbMin, Math.ceil((storageGb * policy.stepPercent) / 100));
  return Math.min(ceiling, storageGb + step);
}

const describe = (use: StorageUse): string => `${(use.percent).toFixed(1)} % (${Math.round(use.usedBytes / 1024 ** 2)} MB of ${Math.round(use.allocatedBytes / 1024 ** 2)} MB)`;

/** Null: nothing to do or say. */
export async function guardStorage(context: GuardContext, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  const { storage } = context.ports;
  if (primary.usageMeasuredAt === null) return null;
  const use = storageUse(cluster.spec.storageGb, storage.gbBytes, primary.usage, storage.readOnlyLeadMs);
  if (use === null) return null;
  const data = context.machine.data;
  const action = storageAction(use, cluster.storageFull, data.storageWarned === true, storage);
  const resize = `cellar clusters resize ${cluster.name} --storage-gb ${Math.min(storageGbMax, cluster.spec.storageGb * 2)}`;
  if (action === null && cluster.storageFull !== null && data.readOnlyApplied !== true) {
    // Marked full but the servers not yet told (a step cut short between the two): tell them now.
    await applyReadOnly(context, cluster, instances, primary, use);
    return nap(0, { data: { ...data, readOnlyApplied: true } });
  }
  // Only once read-only is in force (its mark then counts from after it): see applyReadOnly.
  const lock = data.readOnlyApplied === true ? lockAction(use, cluster.storageFull) : null;
  if (action === null && lock !== null) {
    await context.ports.store.setStorageFull(cluster.id, lock.full);
    return nap(0, { reason: lock.reason, code: 'storage_locked' });
  }
  switch (action) {
    case 'readOnly': {
      // The mark first: the proxy ends the cluster's write connections and relays new ones through
      // its rewriter, so that the read-only errors the servers give from the next line on say why.
      await context.ports.store.setStorageFull(cluster.id, markOf(use));
      const applied = await applyReadOnly(context, cluster, instances, primary, use);
      return nap(0, {
        data: { ...data, storageWarned: true, readOnlyApplied: true },
        reason: `storage is ${describe(applied)} full, ${readOnlyWhy(use, applied, storage)}: the primary is read-only (deleting stays possible) until use falls below it; grow it with \`${resize}\``,
        code: 'storage_read_only',
      });
    }
    case 'writable': {
      // The servers first: the mark stays until they take writes, so a step cut short comes back here.
      await configureAll(context, cluster, instances, false);
      await context.ports.store.setStorageFull(cluster.id, null);
      const { readOnlyApplied: _applied, ...rest } = data;
      return nap(0, { data: rest, reason: `storage is ${describe(use)} full, below ${storage.readOnlyPercent} % again: the primary takes writes`, code: 'storage_writable' });
    }
    case 'warn':
      return nap(0, { data: { ...data, storageWarned: true }, reason: `storage is ${describe(use)} full, past ${storage.warnPercent} %; at ${storage.readOnlyPercent} % the primary turns read-only: \`${resize}\``, code: 'storage_warning' });
    case 'unwarn': {
      const { storageWarned: _warned, ...rest } = data;
      return nap(0, { data: rest });
    }
    case null:
      return autogrow(context, cluster, use);
  }
}

/** Past the threshold, or (stopped by the lead) about to be at the growth measured. */
function readOnlyWhy(crossed: StorageUse, applied: StorageUse, storage: { readonly readOnlyPercent: number; readonly readOnlyLeadMs: number }): string {
  if (applied.percent >= storage.readOnlyPercent) return `past ${storage.readOnlyPercent} %`;
  const rateMb = Math.round(crossed.growthBytesPerSecond / 1024 ** 2);
  return `growing ${rateMb} MB/s: at that pace past ${storage.readOnlyPercent} % within ${storage.readOnlyLeadMs} ms`;
}

function markOf(use: StorageUse): StorageFull {
  return { usedBytes: use.usedBytes, allocatedBytes: use.allocatedBytes, percent: Math.round(use.percent * 10) / 10 };
}

/**
 * Every server told to be read-only, then the primary measured again, and the cluster's mark set
 * to that figure: the hard stop counts from it. What a writer put down between the measurement
 * that crossed the threshold and the servers turning read-only (a fast writer, a loaded machine:
 * hundreds of MB) is momentum, not a session that turned read-only off, and must not lock the
 * cluster. A measurement that fails fails the step, which runs again (level-triggered), rather
 * than keep a mark the lock would misread. Returns the use measured.
 */
async function applyReadOnly(context: GuardContext, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord, crossed: StorageUse): Promise<StorageUse> {
  await configureAll(context, cluster, instances, true);
  const measured = storageUse(cluster.spec.storageGb, context.ports.storage.gbBytes, await context.ports.dataPlane.usage(instanceSpec(cluster, primary)));
  const use = measured ?? crossed;
  await context.ports.store.setStorageFull(cluster.id, markOf(use));
  return use;
}

/** Every instance that runs takes the flag now; one that starts later reads it from the cluster. */
async function configureAll(context: GuardContext, cluster: ClusterRecord, instances: readonly InstanceRecord[], readOnly: boolean): Promise<void> {
  const serving = instances.filter((instance) => instance.port !== null && instance.machineLabel === 'running' && !instance.fenced);
  await Promise.all(serving.map((instance) => context.ports.dataPlane.configure(instanceSpec(cluster, instance, readOnly))));
}

async function autogrow(context: GuardContext, cluster: ClusterRecord, use: StorageUse): Promise<Result | null> {
  const policy = cluster.autogrow;
  const data = context.machine.data;
  if (policy === null || use.percent < policy.thresholdPercent) {
    if (data.autogrowHeld === undefined) return null;
    const { autogrowHeld: _held, ...rest } = data;
    return nap(0, { data: rest });
  }
  const { storage, store } = context.ports;
  if (await store.changeInProgress(cluster.id)) return null;
  const target = autogrowTarget(cluster.spec.storageGb, policy, storage.resizeStepGbMin);
  const held = (why: string): Result | null => (data.autogrowHeld === why ? null : nap(0, { data: { ...data, autogrowHeld: why }, reason: `autogrow cannot grow the storage (${describe(use)}): ${why}`, code: 'storage_autogrow_held' }));
  if (target === null) return held(`it is at its ceiling of ${policy.maxGb} GB`);
  try {
    const revision = await store.growStorage(cluster.id, target, `autogrow: ${describe(use)} past ${policy.thresholdPercent} %`, changeMachine, storage);
    const { autogrowHeld: _held, ...rest } = data;
    return nap(0, { data: rest, reason: `autogrow: storage ${describe(use)} full, past ${policy.thresholdPercent} %: growing from ${cluster.spec.storageGb} GB to ${target} GB (revision ${revision}; ceiling ${policy.maxGb} GB)`, code: 'storage_autogrown' });
  } catch (error) {
    // The resize's own limits (cooldown, a host without room) hold autogrow too; it tries again each tick and says so once.
    if (error instanceof CellarError) return held(error.message);
    throw error;
  }
}
