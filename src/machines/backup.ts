import { dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { type MachineDefinition, type Outcome, type StepContext, done, fail, hop, nap, stepTimeoutMarginMs } from '../engine/machine.js';
import { assert } from '../lib/assert.js';
import type { BackupId, InstanceId } from '../lib/ids.js';
import { isStreamingReplica } from './replicas.js';
import { instanceSpec } from './instance.js';
import type { MachinePorts } from './ports.js';

/**
 * One base backup: pick a source (a streaming replica, else the primary), take it into the
 * backup store (capped rate, with its manifest), then prove it restores (pg_verifybackup and a
 * scratch server, a bounded number at once across the cell). Progress and failures are events.
 */
export const backupLabels = ['start', 'take', 'verify'] as const;
export type BackupLabel = (typeof backupLabels)[number];

export interface BackupData extends Record<string, unknown> {
  readonly sourceInstanceId?: string;
  /** Clock time the wait for a source began; bounds it. */
  readonly waitSinceMs?: number;
}

export const backupKind = 'backup';
/** Raised by the API to check a finished backup again. */
export const verifySignal = 'verify';
export const sourceWaitMsMax = 10 * 60_000;
export const sourceWaitPollMs = 1_000;
/** How often a backup waiting for a restore-check slot looks again. */
export const checkSlotPollMs = 1_000;
const defaultStepTimeoutMs = 60_000;

/** The data-plane waits inside each label's step: the port's bounds. */
function innerLimitMs(label: BackupLabel): number {
  if (label === 'take') return dataPlaneLimitsMs.takeBaseBackup + dataPlaneLimitsMs.status;
  if (label === 'verify') return dataPlaneLimitsMs.checkBackup;
  return dataPlaneLimitsMs.status;
}

type Context = StepContext<BackupLabel, BackupData, MachinePorts>;
type Result = Outcome<BackupLabel, BackupData>;

const backupIdOf = (context: Context): BackupId => context.machine.entityId as BackupId;

/** A healthy replica keeps the backup's read load off the primary; without one, the primary. */
async function start(context: Context): Promise<Result> {
  const { store, backups, clock } = context.ports;
  const backup = await backups.backup(backupIdOf(context));
  const instances = await store.instances(backup.clusterId);
  const primary = instances.find((instance) => instance.role === 'primary' && instance.machineLabel === 'running' && !instance.fenced);
  const source = instances.find(isStreamingReplica) ?? primary;
  if (primary === undefined || source === undefined) {
    const since = context.machine.data.waitSinceMs ?? clock.nowMs();
    if (clock.nowMs() - since > sourceWaitMsMax) {
      await backups.recordFailed(backup.id, `no running instance to back up from for ${sourceWaitMsMax} ms`);
      return fail(`no running instance to back up from for ${sourceWaitMsMax} ms`, 'no_backup_source');
    }
    return nap(sourceWaitPollMs, { data: { waitSinceMs: since } });
  }
  const from = source.role === 'replica' ? `replica ${source.id}` : `the primary ${source.id} (no replica streams)`;
  return hop('take', { data: { sourceInstanceId: source.id }, reason: `backing up from ${from}`, code: 'backup_source_chosen' });
}

async function take(context: Context): Promise<Result> {
  const { store, backups, dataPlane, backupSettings } = context.ports;
  const backup = await backups.backup(backupIdOf(context));
  const cluster = await store.cluster(backup.clusterId);
  const instances = await store.instances(cluster.id);
  const source = instances.find((instance) => instance.id === context.machine.data.sourceInstanceId);
  const primary = instances.find((instance) => instance.role === 'primary');
  // The source went away (failover, replacement): choose again.
  if (source === undefined || primary === undefined || source.machineLabel !== 'running') return hop('start', { data: {}, reason: 'the source is no longer running; choosing again', code: 'backup_source_gone' });
  const info = await dataPlane.takeBaseBackup(instanceSpec(cluster, source), instanceSpec(cluster, primary), backup.id, backupSettings.maxRateBytesPerSecond);
  await backups.recordTaken(backup.id, source.id as InstanceId, info);
  const megabytes = (info.bytes / 1024 / 1024).toFixed(1);
  const taken = `${megabytes} MB taken, timeline ${info.timeline}, WAL ${info.startLsn} to ${info.endLsn}`;
  // Read once the backup is taken: an operator who turns verification off spares the checks still to come.
  const verification = await context.ports.flags?.evaluateForCluster('backup-verification', cluster.id);
  if (verification !== undefined && verification.value === false) return done({ reason: `${taken}; not verified: backup-verification is off (${verification.why})`, code: 'backup_taken' });
  return hop('verify', { reason: taken, code: 'backup_taken' });
}

async function verify(context: Context): Promise<Result> {
  const { store, backups, dataPlane, backupSettings } = context.ports;
  const backup = await backups.backup(backupIdOf(context));
  assert(backup.status === 'completed', `backup ${backup.id} is ${backup.status}; only a completed backup is verified`);
  if (!(await backups.tryStartCheck(backup.id, backupSettings.verifyConcurrency))) return nap(checkSlotPollMs);
  const cluster = await store.cluster(backup.clusterId);
  const check = await dataPlane.checkBackup(backup.clusterId, backup.id, cluster.spec.pgVersion);
  await backups.recordCheck(backup.id, check.ok, check.ok ? check.detail : check.reason);
  // A request to verify again that was already pending is answered by this check.
  const consume = context.signals.has(verifySignal) ? [verifySignal] : [];
  if (check.ok) return done({ consume, reason: `verified: ${check.detail}`, code: 'backup_verified' });
  return done({ consume, reason: `verification failed: ${check.reason}`, code: 'backup_verification_failed' });
}

export const backupMachine: MachineDefinition<BackupLabel, BackupData, MachinePorts> = {
  kind: backupKind,
  initial: 'start',
  transitions: {
    start: ['take'],
    take: ['verify', 'start'],
    // Verified (or not) already: a new request checks it again.
    verify: ['verify'],
  },
  resumeOn: { [verifySignal]: 'verify' },
  steps: { start, take, verify },
  lane: () => 'normal',
  stepTimeoutMs: (label) => Math.max(defaultStepTimeoutMs, innerLimitMs(label) + stepTimeoutMarginMs),
  innerLimitMs,
};
