import type { BackupSettings } from '../config.js';
import { type MachineDefinition, type Outcome, type StepContext, nap } from '../engine/machine.js';
import type { BackupRecord, MachinePorts } from './ports.js';

/**
 * The cell's backup schedule, a singleton (`backupSchedule`/`cell`, normal lane, one label):
 * starts a backup for each running cluster whose newest is older than its interval (the
 * cluster's own, else the cell's; the cell's 0 turns scheduling off) (the first
 * right after the cluster runs), deletes backups past retention, and prunes the WAL no kept
 * backup needs. Bounded work per tick.
 */
export const backupScheduleLabels = ['tend'] as const;
export type BackupScheduleLabel = (typeof backupScheduleLabels)[number];
export type BackupScheduleData = Record<string, unknown>;

export const backupScheduleKind = 'backupSchedule';
export const backupScheduleEntity = 'cell';
export const scheduleNapMs = 10_000;
/** Clusters looked at per tick, for scheduling and for retention. */
export const clustersPerTickMax = 50;

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
  const { backups, backupSettings, clock } = context.ports;
  const now = clock.nowMs();
  let started = 0;
  if (backupSettings.intervalMs > 0) {
    for (const candidate of await backups.backupCandidates(clustersPerTickMax)) {
      if (candidate.backupRunning) continue;
      const intervalMs = candidate.intervalMs ?? backupSettings.intervalMs;
      if (candidate.lastBackupAtMs !== null && now - candidate.lastBackupAtMs < intervalMs) continue;
      await backups.createBackup(candidate.clusterId, 'scheduled');
      started += 1;
    }
  }
  let deleted = 0;
  let pruned = 0;
  for (const clusterId of await backups.clustersWithBackups(clustersPerTickMax)) {
    const all = await backups.backupsOf(clusterId);
    const expired = expiredBackups(all, backupSettings, now);
    for (const backup of expired) {
      await context.ports.dataPlane.deleteBackup(clusterId, backup.id);
      await backups.markDeleted(backup.id);
      deleted += 1;
    }
    pruned += await pruneWal(context, clusterId, all.filter((backup) => !expired.includes(backup)));
  }
  const reason = started + deleted + pruned === 0 ? undefined : `${started} backup(s) started, ${deleted} expired, ${pruned} WAL file(s) pruned`;
  return nap(scheduleNapMs, reason === undefined ? {} : { reason });
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
  stepTimeoutMs: () => 10 * 60_000,
};
