import type { BackupSettings } from '../config.js';
import { dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { type MachineDefinition, type Outcome, type StepContext, nap, stepTimeoutMarginMs } from '../engine/machine.js';
import type { ClusterId } from '../lib/ids.js';
import { type BackupRecord, type MachinePorts, backupScheduleKind, freezeNapMs } from './ports.js';

/**
 * The cell's backup schedule, a singleton (`backupSchedule`/`cell`, normal lane, one label):
 * starts a backup for each running cluster whose newest is older than its interval (the
 * cluster's own, else the cell's; the cell's 0 turns scheduling off) (the first
 * right after the cluster runs), deletes backups past retention, and prunes the WAL no kept
 * backup needs. A deleted cluster's backups are left as they were at the delete, restorable,
 * until the deleted-backup retention has passed; then its whole backup area goes. Bounded work
 * per tick.
 */
export const backupScheduleLabels = ['tend'] as const;
export type BackupScheduleLabel = (typeof backupScheduleLabels)[number];
export interface BackupScheduleData extends Record<string, unknown> {
  /** Retention resumes after this cluster id next tick; absent: from the first. */
  readonly retentionAfterClusterId?: string;
  /** `held_by_freeze` was said, so that a long freeze makes one event. */
  readonly heldByFreeze?: boolean;
}

export { backupScheduleKind } from './ports.js';
export const backupScheduleEntity = 'cell';
export const scheduleNapMs = 10_000;
/** Clusters looked at per tick, for scheduling and for retention. */
export const clustersPerTickMax = 50;
/** Deleted clusters whose backup areas are removed per tick: each removal may be gigabytes. */
export const deletedClustersPerTickMax = 10;
/**
 * No data-plane removal starts later than this into a tick; what is left waits for the next
 * tick, where the cursor resumes. So the step's length is bounded by this plus one removal.
 */
export const scheduleWorkMsMax = 5 * 60_000;
const longestRemovalMs = Math.max(dataPlaneLimitsMs.deleteBackup + dataPlaneLimitsMs.pruneWal, dataPlaneLimitsMs.purgeCluster);

type Context = StepContext<BackupScheduleLabel, BackupScheduleData, MachinePorts>;
type Result = Outcome<BackupScheduleLabel, BackupScheduleData>;

/**
 * Completed backups, newest first: the newest `countMin` are always kept; past `countMax`, or
 * older than the retention and past `countMin`, a backup goes. The newest verified one is kept
 * whatever its age, so a restore always has a proven starting point. Failed ones go with age.
 */
export function expiredBackups(backups: readonly BackupRecord[], settings: BackupSettings, nowMs: number): BackupRecord[] {
  const completed = backups.filter((backup) => backup.status === 'completed');
  const newestVerified = completed.find((backup) => backup.verified === true);
  const old = (backup: BackupRecord) => backup.finishedAtMs !== null && nowMs - backup.finishedAtMs > settings.retentionMs;
  const expired = completed.filter((backup, index) => {
    if (backup === newestVerified || index < settings.countMin) return false;
    return index >= settings.countMax || old(backup);
  });
  const failed = backups.filter((backup) => backup.status === 'failed' && old(backup));
  return [...expired, ...failed];
}

async function tend(context: Context): Promise<Result> {
  // Frozen: nothing is started or removed (a backup an operator asks for still runs: it is its own machine).
  if (await context.ports.freeze.frozen()) {
    if (context.machine.data.heldByFreeze === true) return nap(freezeNapMs);
    return nap(freezeNapMs, { data: { ...context.machine.data, heldByFreeze: true }, reason: 'the cell is frozen: scheduled backups, retention and purges wait for the thaw', code: 'held_by_freeze' });
  }
  const workDeadlineMs = context.ports.clock.nowMs() + scheduleWorkMsMax;
  const started = await startDue(context);
  const { deleted, pruned, nextAfterClusterId } = await applyRetention(context, workDeadlineMs);
  const purged = await purgeDeleted(context, workDeadlineMs);
  const counts = [`${started} backup(s) started`, `${deleted} expired`, `${pruned} WAL file(s) pruned`, `${purged} deleted cluster(s) purged`];
  const data: BackupScheduleData = nextAfterClusterId === null ? {} : { retentionAfterClusterId: nextAfterClusterId };
  return nap(scheduleNapMs, started + deleted + pruned + purged === 0 ? { data } : { data, reason: counts.join(', '), code: 'backup_schedule_ran' });
}

async function startDue(context: Context): Promise<number> {
  const { backups, backupSettings, clock } = context.ports;
  if (backupSettings.intervalMs <= 0) return 0;
  const now = clock.nowMs();
  let started = 0;
  for (const candidate of await backups.backupCandidates(clustersPerTickMax, backupSettings.intervalMs)) {
    if (candidate.backupRunning) continue;
    const intervalMs = candidate.intervalMs ?? backupSettings.intervalMs;
    if (candidate.lastBackupAtMs !== null && now - candidate.lastBackupAtMs < intervalMs) continue;
    await backups.createBackup(candidate.clusterId, 'scheduled');
    started += 1;
  }
  return started;
}

/** One page of live clusters per tick, resuming where the last tick stopped and wrapping at the end. */
async function applyRetention(context: Context, workDeadlineMs: number): Promise<{ deleted: number; pruned: number; nextAfterClusterId: string | null }> {
  const { backups, backupSettings, clock, dataPlane } = context.ports;
  const now = clock.nowMs();
  const after = (context.machine.data.retentionAfterClusterId ?? null) as ClusterId | null;
  const page = await backups.clustersWithBackups(after, clustersPerTickMax);
  let deleted = 0;
  let pruned = 0;
  for (const [index, clusterId] of page.entries()) {
    // Out of time for this tick: the next one resumes right after the last cluster done.
    if (clock.nowMs() >= workDeadlineMs) return { deleted, pruned, nextAfterClusterId: index === 0 ? after : (page[index - 1] ?? null) };
    const all = await backups.backupsOf(clusterId);
    const expired = expiredBackups(all, backupSettings, now);
    for (const backup of expired) {
      await dataPlane.deleteBackup(clusterId, backup.id);
      await backups.markDeleted(backup.id);
      deleted += 1;
    }
    pruned += await pruneWal(context, clusterId, all.filter((backup) => !expired.includes(backup)));
  }
  const nextAfterClusterId = page.length < clustersPerTickMax ? null : (page.at(-1) ?? null);
  return { deleted, pruned, nextAfterClusterId };
}

/**
 * A deleted cluster's whole backup area (and its OS user) goes once its retention has passed: the data plane first, then
 * the rows, so a crash in between repeats an idempotent removal rather than leaving files no row names.
 */
async function purgeDeleted(context: Context, workDeadlineMs: number): Promise<number> {
  const { backups, backupSettings, clock, dataPlane } = context.ports;
  const due = await backups.deletedClustersToPurge(clock.nowMs() - backupSettings.deletedRetentionMs, deletedClustersPerTickMax);
  let purged = 0;
  for (const clusterId of due) {
    if (clock.nowMs() >= workDeadlineMs) break;
    await dataPlane.purgeCluster(clusterId);
    await backups.markBackupsPurged(clusterId);
    purged += 1;
  }
  return purged;
}

/** WAL before the oldest kept completed backup's first segment (`kept` is newest first) is needed by no restore. */
async function pruneWal(context: Context, clusterId: string, kept: readonly BackupRecord[]): Promise<number> {
  const oldest = kept.filter((backup) => backup.status === 'completed').at(-1)?.startWalFile ?? null;
  return oldest === null ? 0 : context.ports.dataPlane.pruneWal(clusterId, oldest);
}

export const backupScheduleMachine: MachineDefinition<BackupScheduleLabel, BackupScheduleData, MachinePorts> = {
  kind: backupScheduleKind,
  initial: 'tend',
  transitions: { tend: [] },
  steps: { tend },
  lane: () => 'normal',
  stepTimeoutMs: () => scheduleWorkMsMax + longestRemovalMs + stepTimeoutMarginMs,
  innerLimitMs: () => scheduleWorkMsMax + longestRemovalMs,
};
