import { dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { type MachineDefinition, type Outcome, type StepContext, done, fail, hop, nap, stepTimeoutMarginMs } from '../engine/machine.js';
import type { RestartOrder } from '../lib/config-plan.js';
import type { ChangeId } from '../lib/ids.js';
import { lsnToBigInt } from '../lib/lsn.js';
import { replicasMax } from '../lib/sizes.js';
import { hasReplicas, isStreamingReplica } from './replicas.js';
import { instanceKind, instanceSpec } from './instance.js';
import { settingsDifferences } from './settings-drift.js';
import { type ClusterRecord, type InstanceRecord, type MachinePorts, changeKind, clusterKind, freezeNapMs } from './ports.js';

/**
 * Applies one configuration revision to its cluster (docs/CONFIG.md "The change machine"):
 * apply (write every instance's configuration and reload) → scale (the cluster reaches its
 * replicas) → restart replicas one by one → switchover (or the primary in place) → confirm.
 * Each step decides from what the instances report now (`pending_restart`), so a step run again
 * after a crash does only what is left.
 */
export const changeLabels = ['apply', 'scale', 'restartPrimary', 'restartReplicas', 'switchover', 'confirm'] as const;
export type ChangeLabel = (typeof changeLabels)[number];

export interface ChangeData extends Record<string, unknown> {
  /** The instance being restarted now, and when it began. */
  readonly restarting?: string;
  readonly sinceMs?: number;
  /** The primary restarted in place (primaryFirst order), so the replicas come next. */
  readonly primaryDone?: boolean;
  /**
   * The primary's WAL position once it was back from its restart: past the record of its new
   * parameter values. A replica restarts only once it has replayed that far, or it would start
   * with less than its control file says the primary has, and refuse to recover.
   */
  readonly primaryRestartLsn?: string;
  /** The primary a switchover moves away from, and how often it was asked for. */
  readonly oldPrimaryId?: string;
  readonly switchoverAttempts?: number;
  /** Confirmation rounds that found an instance still waiting for a restart. */
  readonly confirmRounds?: number;
  /** `held_by_freeze` was said at `apply`, so that a long freeze makes one event. */
  readonly heldByFreeze?: boolean;
  /** When the primary's route was paused for its restart in place (the restart waits routePauseSettleMs). */
  readonly pausedAtMs?: number;
}

export { changeKind };
export const changePollMs = 100;
/**
 * A paused route reaches the proxy by a notification and a re-read of its routes; nothing tells the
 * control plane when it has. The primary restarted in place is stopped only this long after the
 * pause, so that a connection the proxy sent there just before it learned of the pause has
 * finished its first statements rather than being ended (config.test, resize under a writer).
 */
export const routePauseSettleMs = 250;
/** Replicas come and go in seconds (a clone each); their machines wake the cluster, not the change. */
const scalePollMs = 500;
/** How long one instance may take to come back from its restart (a replica streaming again, the primary accepting). */
export const restartWaitMsMax = 5 * 60_000;
/** How long the cluster may take to reach its replicas (each one a clone of the primary). */
export const scaleWaitMsMax = 60 * 60_000;
/** How long one switchover may take, from the request to the old primary streaming again. */
export const switchoverWaitMsMax = 5 * 60_000;
export const switchoverAttemptsMax = 3;
export const confirmRoundsMax = 3;
/** A restarted instance whose machine keeps failing to start it this long does not take the revision: the change is undone. */
export const startFailureGraceMs = 10_000;
const stepTimeoutMsMin = 30_000;

type Context = StepContext<ChangeLabel, ChangeData, MachinePorts>;
type Result = Outcome<ChangeLabel, ChangeData>;

function innerLimitMs(label: ChangeLabel): number {
  switch (label) {
    case 'apply':
      return dataPlaneLimitsMs.configure;
    case 'restartReplicas': // every replica's settings, and one's replay position
      return (replicasMax + 1) * dataPlaneLimitsMs.settings + dataPlaneLimitsMs.status;
    case 'confirm':
      return (replicasMax + 1) * dataPlaneLimitsMs.settings;
    case 'switchover':
      return dataPlaneLimitsMs.settings;
    case 'restartPrimary':
      return dataPlaneLimitsMs.settings + dataPlaneLimitsMs.status;
    default:
      return 0;
  }
}

interface Target {
  readonly cluster: ClusterRecord;
  readonly instances: readonly InstanceRecord[];
  readonly revision: number;
  readonly order: RestartOrder;
}

async function load(context: Context): Promise<Target> {
  const { store } = context.ports;
  const target = await store.changeTarget(context.machine.entityId as ChangeId);
  if (target === null) throw new Error(`change ${context.machine.entityId} has no revision`);
  const cluster = await store.cluster(target.clusterId);
  const instances = await store.instances(cluster.id);
  return { cluster, instances, revision: target.revision, order: target.order };
}

const nowMs = (context: Context): number => context.ports.clock.nowMs();
/** What a step keeps when it moves on: the count of confirmation rounds, which bounds the whole change. */
const kept = (context: Context): ChangeData => (context.machine.data.confirmRounds === undefined ? {} : { confirmRounds: context.machine.data.confirmRounds });

/** The restarted instance does not come back with the revision: its machine failed, or keeps failing to start it. */
function failsToStart(context: Context, instance: InstanceRecord): string | null {
  if (instance.machineLabel === 'failed') return briefly(instance.machineError ?? 'its machine failed');
  const waitedMs = nowMs(context) - (context.machine.data.sinceMs ?? nowMs(context));
  if (['starting', 'waitReady'].includes(instance.machineLabel) && instance.machineError !== null && waitedMs > startFailureGraceMs) return briefly(instance.machineError);
  return null;
}

const reasonCharsMax = 300;

/** A start error in one line: the server's FATAL line when its log tail has one, else the first line; bounded. */
function briefly(error: string): string {
  const lines = error.split('\n').map((line) => line.trim());
  const fatal = lines.find((line) => / (FATAL|PANIC): /.test(line));
  const chosen = fatal === undefined ? (lines[0] ?? '') : fatal.slice(fatal.search(/(FATAL|PANIC): /));
  return chosen.length > reasonCharsMax ? `${chosen.slice(0, reasonCharsMax)}…` : chosen;
}

/**
 * The revision cannot be applied: the one before it is applied again (a new revision, its own
 * change), and this change fails saying why and by which revision it was undone.
 */
async function undo(context: Context, why: string): Promise<Result> {
  const reverted = await context.ports.store.revertChange(context.machine.entityId as ChangeId, `automatic rollback: ${why}`, changeMachine);
  if (reverted === null) return fail(`${why}; there is no earlier revision to go back to`, 'change_failed');
  return fail(`${why}; rolled back by revision ${reverted}`, 'change_rolled_back');
}

function withoutRestart(data: ChangeData): ChangeData {
  const { restarting: _restarting, sinceMs: _sinceMs, ...rest } = data;
  return rest;
}

/** Instances with a data directory whose files a change must write: everything not being made or deleted. */
function configurable(instance: InstanceRecord): boolean {
  return ['starting', 'waitReady', 'running', 'down', 'restart'].includes(instance.machineLabel) && instance.port !== null;
}

function serving(instance: InstanceRecord): boolean {
  return instance.machineLabel === 'running' && !instance.fenced;
}

function primaryOf(instances: readonly InstanceRecord[]): InstanceRecord | undefined {
  return instances.find((instance) => instance.role === 'primary');
}

/** Every instance gets the revision's files and a reload: reload parameters are live when this returns. */
async function apply(context: Context): Promise<Result> {
  // Accepted and queued: nothing of the revision is written until the cell thaws; a change past
  // this step finishes, so no cluster is left half-restarted by a freeze.
  if (await context.ports.freeze.frozen()) {
    if (context.machine.data.heldByFreeze === true) return nap(freezeNapMs);
    return nap(freezeNapMs, { data: { ...context.machine.data, heldByFreeze: true }, reason: 'the cell is frozen: this change is applied after the thaw', code: 'held_by_freeze' });
  }
  const { cluster, instances, revision } = await load(context);
  const targets = instances.filter(configurable);
  await Promise.all(targets.map((instance) => context.ports.dataPlane.configure(instanceSpec(cluster, instance))));
  return hop('scale', {
    reason: `revision ${revision}: configuration written and reloaded on ${targets.map((instance) => instance.id).join(', ') || 'no instance'}`,
    code: 'config_reloaded',
    wake: [{ kind: clusterKind, entityId: cluster.id }],
  });
}

/** The cluster adds or removes replicas itself (its running step); this waits until it has them, all streaming. */
async function scale(context: Context): Promise<Result> {
  const { cluster, instances, order } = await load(context);
  if (hasReplicas(cluster.spec.replicas, instances)) {
    const next: ChangeLabel = order === 'primaryFirst' || order === 'primaryInPlace' ? 'restartPrimary' : 'restartReplicas';
    return hop(next, { data: kept(context), reason: `${cluster.spec.replicas} replica(s) streaming`, code: 'replicas_ready' });
  }
  // The cluster adds or removes no replica while frozen: the wait for it starts again after the thaw.
  if (await context.ports.freeze.frozen()) return nap(freezeNapMs, { data: kept(context) });
  const since = context.machine.data.sinceMs ?? nowMs(context);
  if (nowMs(context) - since > scaleWaitMsMax) {
    const streaming = instances.filter(isStreamingReplica).length;
    return fail(`the cluster did not reach ${cluster.spec.replicas} streaming replica(s) within ${scaleWaitMsMax} ms (${streaming} stream)`, 'change_failed');
  }
  return nap(scalePollMs, { data: { ...kept(context), sinceMs: since } });
}

/** Names of the settings an instance still waits for a restart to take, as the server says now. */
async function pendingRestart(context: Context, cluster: ClusterRecord, instance: InstanceRecord): Promise<string[]> {
  const rows = await context.ports.dataPlane.settings(instanceSpec(cluster, instance));
  return rows.filter((row) => row.pendingRestart).map((row) => row.name);
}

/**
 * One replica at a time: out of the routes, restarted by its own machine (which rewrites its
 * files from the spec), back in the routes once it streams with nothing pending.
 */
async function restartReplicas(context: Context): Promise<Result> {
  const { cluster, instances, order, revision } = await load(context);
  const { store } = context.ports;
  const data = context.machine.data;
  if (data.restarting !== undefined) {
    const instance = instances.find((candidate) => candidate.id === data.restarting);
    if (instance === undefined) return nap(0, { data: withoutRestart(data) });
    if (isStreamingReplica(instance) && (await pendingRestart(context, cluster, instance)).length === 0) {
      await store.setInRoute(instance.id, true);
      return nap(0, { data: withoutRestart(data), reason: `replica ${instance.id} restarted: streaming with the new settings, back in the routes`, code: 'replica_restarted' });
    }
    const startFailure = failsToStart(context, instance);
    if (startFailure !== null) {
      await store.setInRoute(instance.id, true);
      return undo(context, `replica ${instance.id} does not start with revision ${revision}: ${startFailure}`);
    }
    if (nowMs(context) - (data.sinceMs ?? nowMs(context)) > restartWaitMsMax) {
      await store.setInRoute(instance.id, true);
      return undo(context, `replica ${instance.id} did not stream again within ${restartWaitMsMax} ms of its restart (machine ${instance.machineLabel})`);
    }
    return nap(changePollMs);
  }
  for (const replica of instances.filter((instance) => instance.role === 'replica' && serving(instance))) {
    const pending = await pendingRestart(context, cluster, replica);
    if (pending.length === 0) continue;
    if (data.primaryRestartLsn !== undefined) {
      const replayed = (await context.ports.dataPlane.status(instanceSpec(cluster, replica))).lsn;
      if (replayed === undefined || lsnToBigInt(replayed) < lsnToBigInt(data.primaryRestartLsn)) {
        const since = data.sinceMs ?? nowMs(context);
        if (nowMs(context) - since > restartWaitMsMax) return undo(context, `replica ${replica.id} did not replay the primary's restart (${data.primaryRestartLsn}) within ${restartWaitMsMax} ms (at ${replayed ?? 'unknown'})`);
        return nap(changePollMs, { data: { ...data, sinceMs: since } });
      }
    }
    await store.setInRoute(replica.id, false);
    await store.raiseSignal(instanceKind, replica.id, 'restart');
    return nap(changePollMs, { data: { ...data, restarting: replica.id, sinceMs: nowMs(context) }, reason: `restarting replica ${replica.id} for ${pending.join(', ')} (out of the routes until it streams again)`, code: 'replica_restarting' });
  }
  if (order === 'primaryFirst' || order === 'primaryInPlace' || data.primaryDone === true) return hop('confirm', { data: kept(context) });
  return hop('switchover', { data: kept(context) });
}

/**
 * The primary restarts where it is, its route paused: new connections wait in the proxy, and the
 * cluster does not fail over (the instance is restarting, not down).
 */
async function restartPrimary(context: Context): Promise<Result> {
  const { cluster, instances, order, revision } = await load(context);
  const { store } = context.ports;
  const data = context.machine.data;
  const primary = primaryOf(instances);
  if (primary === undefined) return nap(changePollMs);
  const next: ChangeLabel = order === 'primaryFirst' ? 'restartReplicas' : 'confirm';
  if (data.restarting === undefined) {
    // Once paused, on to the restart: the pause must not outlast the settle.
    if (data.pausedAtMs === undefined && !serving(primary)) return nap(changePollMs);
    const pending = await pendingRestart(context, cluster, primary);
    if (pending.length === 0) {
      if (data.pausedAtMs !== undefined) await store.setRoutePaused(cluster.id, false);
      return hop(next, { data: { ...kept(context), primaryDone: true } });
    }
    if (data.pausedAtMs === undefined) {
      await store.setRoutePaused(cluster.id, true);
      return nap(routePauseSettleMs, { data: { ...kept(context), pausedAtMs: nowMs(context) }, reason: `restarting primary ${primary.id} in place for ${pending.join(', ')}: new connections wait`, code: 'primary_restarting' });
    }
    if (nowMs(context) - data.pausedAtMs < routePauseSettleMs) return nap(changePollMs);
    await store.raiseSignal(instanceKind, primary.id, 'restart');
    return nap(changePollMs, { data: { ...kept(context), restarting: primary.id, sinceMs: nowMs(context) } });
  }
  // Done when its server reports nothing pending: its machine may not have taken the signal yet.
  const back = primary.id === data.restarting && serving(primary) && primary.observed.accepting === true && primary.observed.inRecovery === false;
  if (back && (await pendingRestart(context, cluster, primary)).length === 0) {
    await store.setRoutePaused(cluster.id, false);
    const afterRestart = await context.ports.dataPlane.status(instanceSpec(cluster, primary));
    const lsn = afterRestart.lsn === undefined ? {} : { primaryRestartLsn: afterRestart.lsn };
    return hop(next, { data: { ...kept(context), primaryDone: true, ...lsn }, reason: `primary ${primary.id} restarted with the new settings: route resumed`, code: 'primary_restarted' });
  }
  const startFailure = primary.id === data.restarting ? failsToStart(context, primary) : null;
  if (startFailure !== null || nowMs(context) - (data.sinceMs ?? nowMs(context)) > restartWaitMsMax) {
    await store.setRoutePaused(cluster.id, false);
    return undo(context, `primary ${data.restarting} ${startFailure === null ? `did not accept writes within ${restartWaitMsMax} ms of its restart (machine ${primary.machineLabel})` : `does not start with revision ${revision}: ${startFailure}`}`);
  }
  return nap(changePollMs);
}

/** The cluster moves the primary role to a restarted replica; the old primary rejoins with the new files. */
async function switchover(context: Context): Promise<Result> {
  const { cluster, instances } = await load(context);
  const { store } = context.ports;
  const data = context.machine.data;
  const primary = primaryOf(instances);
  if (primary === undefined) return nap(changePollMs);
  if (data.oldPrimaryId === undefined) {
    if ((await pendingRestart(context, cluster, primary)).length === 0) return hop('confirm', { data: kept(context) });
    await store.raiseSignal(clusterKind, cluster.id, 'switchover');
    return nap(changePollMs, { data: { ...kept(context), oldPrimaryId: primary.id, sinceMs: nowMs(context), switchoverAttempts: 1 }, reason: `switching over from ${primary.id} so that it restarts as a replica`, code: 'change_switchover_requested' });
  }
  const old = instances.find((instance) => instance.id === data.oldPrimaryId);
  const clusterLabel = await store.machineLabel(clusterKind, cluster.id);
  if (primary.id !== data.oldPrimaryId && clusterLabel === 'running' && (old === undefined || isStreamingReplica(old))) {
    return hop('confirm', { data: kept(context), reason: `${primary.id} is the primary; ${data.oldPrimaryId} ${old === undefined ? 'is gone' : 'streams again with the new settings'}`, code: 'change_switchover_done' });
  }
  if (nowMs(context) - (data.sinceMs ?? nowMs(context)) > switchoverWaitMsMax) return fail(`the switchover from ${data.oldPrimaryId} did not finish within ${switchoverWaitMsMax} ms`, 'change_failed');
  // Refused (no replica streamed at that moment) or called off: the cluster is back watching with the same primary.
  if (primary.id === data.oldPrimaryId && clusterLabel === 'running' && !(await store.hasSignal(clusterKind, cluster.id, 'switchover'))) {
    const attempts = data.switchoverAttempts ?? 1;
    if (attempts >= switchoverAttemptsMax) return fail(`the cluster did not switch over from ${primary.id} after ${attempts} requests (see its events)`, 'change_failed');
    await store.raiseSignal(clusterKind, cluster.id, 'switchover');
    return nap(1_000, { data: { ...data, switchoverAttempts: attempts + 1 } });
  }
  return nap(changePollMs);
}

/** Every serving instance reports the revision's values and nothing pending. */
async function confirm(context: Context): Promise<Result> {
  const { cluster, instances, revision } = await load(context);
  const live = instances.filter(serving);
  const problems = (await Promise.all(live.map(async (instance) => (await settingsDifferences(context, cluster, instance)).map((problem) => `${instance.id}: ${problem}`)))).flat();
  if (problems.length === 0) {
    return done({ reason: `revision ${revision} applied: ${live.length} instance(s) report its settings`, code: 'config_applied', wake: [{ kind: clusterKind, entityId: cluster.id }] });
  }
  const rounds = (context.machine.data.confirmRounds ?? 0) + 1;
  if (rounds > confirmRoundsMax) return fail(`revision ${revision} is not what the instances report after ${confirmRoundsMax} rounds: ${problems.join('; ')}`, 'change_failed');
  // An instance that came or restarted meanwhile: write and reload again, restart what waits.
  return hop('apply', { data: { confirmRounds: rounds }, reason: `not applied everywhere yet: ${problems.join('; ')}`, code: 'config_not_confirmed' });
}

export const changeMachine: MachineDefinition<ChangeLabel, ChangeData, MachinePorts> = {
  kind: changeKind,
  initial: 'apply',
  transitions: {
    apply: ['scale'],
    scale: ['restartReplicas', 'restartPrimary'],
    restartPrimary: ['restartReplicas', 'confirm'],
    restartReplicas: ['switchover', 'confirm'],
    switchover: ['confirm'],
    confirm: ['apply'],
  },
  steps: { apply, scale, restartPrimary, restartReplicas, switchover, confirm },
  lane: () => 'high',
  stepTimeoutMs: (label) => Math.max(stepTimeoutMsMin, innerLimitMs(label) + stepTimeoutMarginMs),
  innerLimitMs,
};

