import { type MachineDefinition, type Outcome, type StepContext, done, hop, nap } from '../engine/machine.js';
import { assert } from '../lib/assert.js';
import type { ClusterId } from '../lib/ids.js';
import { type ClusterHealth, type FleetCluster, type RolloutPorts, freezeNapMs, rolloutKind } from './ports.js';

/**
 * A fleet rollout (docs/CONFIG.md, "Fleet defaults and rollouts"), one at a time in the cell
 * (normal lane). It walks the live clusters in id order after its cursor: a cluster that already
 * runs the new defaults is skipped; any other gets a revision with them (`propose`), and the
 * rollout waits for that revision's change to finish and the cluster to be healthy
 * (`waitCluster`) before it goes on. It starts at most `ratePerMinute` clusters in any minute. It
 * halts by itself at the first cluster whose change fails, whose proposal is refused, or that is
 * not healthy within `healthWaitMs`, naming the cluster, the revision and the reason.
 *
 * Signals: `pause` (between clusters: a cluster being moved is finished first), `resume` (from
 * paused, or from halted: the cluster it stopped at is looked at again), `abort` (stops; a change
 * already under way is the cluster's own and finishes). The cursor and counts live in the
 * rollouts row; the machine's data holds only the cluster in hand and the recent start times.
 */
export const rolloutLabels = ['next', 'propose', 'waitCluster', 'paused', 'halted', 'completed', 'aborted'] as const;
export type RolloutLabel = (typeof rolloutLabels)[number];

export interface CurrentCluster {
  readonly clusterId: ClusterId;
  readonly clusterName: string;
  /** Its newest revision when the rollout took it up: a revision after it by this rollout is this rollout's. */
  readonly baseRevision: number;
  /** Set once proposed (or, on a retry of a halted cluster whose defaults are already moved, its current one). */
  readonly revision?: number;
  readonly changeId?: string | null;
  /** When the wait for it to be healthy began (clock ms). */
  readonly startedAtMs?: number;
  /** When a proposal was first answered `busy` (another change of the cluster under way). */
  readonly busySinceMs?: number;
}

export interface RolloutData extends Record<string, unknown> {
  readonly current?: CurrentCluster;
  /** When the clusters started in the last minute were started (clock ms): the rate's window. */
  readonly startsMs?: readonly number[];
  /** The cluster it halted at, looked at again after a resume even if its defaults are already moved. */
  readonly retryClusterId?: ClusterId;
  /** It napped for the freeze (said once); a cluster being waited for gets a fresh health wait after the thaw. */
  readonly heldByFreeze?: boolean;
}

export { rolloutKind } from './ports.js';
export const pauseSignal = 'pause';
export const resumeSignal = 'resume';
export const abortSignal = 'abort';

/** The rate's window: at most `ratePerMinute` clusters start within any span this long. */
export const rateWindowMs = 60_000;
export const ratePerMinuteMin = 1;
export const ratePerMinuteMax = 60;
export const ratePerMinuteDefault = 6;
/** How often a cluster being moved is looked at (its change, then its health). */
export const rolloutPollMs = 500;
/** A cluster with another change under way is asked again this often (within the health wait). */
export const busyRetryMs = 2_000;
/** Clusters already at the new defaults passed over in one step; the step hops to itself for the rest. */
export const skipsPerStepMax = 100;
const rolloutStepTimeoutMs = 30_000;

type Context = StepContext<RolloutLabel, RolloutData, RolloutPorts>;
type Result = Outcome<RolloutLabel, RolloutData>;

/** Who the rollout's revisions are by (docs/CONFIG.md): how its own proposals are recognised. */
export function rolloutActor(rolloutId: string): string {
  return `rollout:${rolloutId}`;
}

export function sameDefaults(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && b[key] === a[key]);
}

/** Start times still inside the rate's window. */
function recentStarts(context: Context): number[] {
  const now = context.ports.clock.nowMs();
  return (context.machine.data.startsMs ?? []).filter((at) => now - at < rateWindowMs);
}

function describeCluster(current: Pick<CurrentCluster, 'clusterId' | 'clusterName'>): string {
  return `cluster ${current.clusterName} (${current.clusterId})`;
}

/** Signals present but of no use here: consumed so that they do not act later. */
function stale(context: Context, names: readonly string[]): string[] {
  return names.filter((name) => context.signals.has(name));
}

function aborting(context: Context, where: string): Result {
  return hop('aborted', {
    consume: stale(context, [abortSignal, pauseSignal, resumeSignal]),
    reason: `aborted ${where}; clusters not reached keep the defaults they run with`,
    code: 'rollout_aborted',
  });
}

async function next(context: Context): Promise<Result> {
  if (context.signals.has(abortSignal)) return aborting(context, 'between clusters');
  if (context.signals.has(pauseSignal)) {
    return hop('paused', { consume: [pauseSignal], data: { startsMs: recentStarts(context), ...retryOf(context) }, reason: 'paused between clusters', code: 'rollout_paused' });
  }
  if (await context.ports.freeze.frozen()) return heldByFreeze(context, 'its next cluster');
  const { rollouts } = context.ports;
  const id = context.machine.entityId;
  const rollout = await rollouts.rollout(id);
  const consume = stale(context, [resumeSignal]);
  let cursor = rollout.cursorClusterId;
  let skipped = 0;
  for (let looked = 0; looked < skipsPerStepMax; looked += 1) {
    const cluster = await rollouts.nextCluster(cursor);
    if (cluster === null) {
      return hop('completed', { consume, data: {}, reason: `every live cluster runs the new defaults${skipped > 0 ? ` (${skipped} more already did)` : ''}`, code: 'rollout_completed' });
    }
    const retry = cluster.id === context.machine.data.retryClusterId;
    if (!retry && sameDefaults(cluster.defaults, rollout.defaultsAfter)) {
      await rollouts.recordAdvanced(id, cluster.id, 'skipped');
      cursor = cluster.id;
      skipped += 1;
      continue;
    }
    return takeUp(context, cluster, retry && sameDefaults(cluster.defaults, rollout.defaultsAfter), consume, skipped);
  }
  return hop('next', { consume, reason: `${skipped} cluster(s) already run the new defaults; looking further`, code: 'rollout_clusters_skipped' });
}

function retryOf(context: Context): { retryClusterId?: ClusterId } {
  const retryClusterId = context.machine.data.retryClusterId;
  return retryClusterId === undefined ? {} : { retryClusterId };
}

/**
 * The next cluster to move. The cluster a halted rollout was resumed at whose defaults are
 * already the new ones (its revision was made; its change failed or it was not healthy) is
 * only waited for: the operator has repaired it, or rolled it back (then its defaults differ and
 * it gets a new revision).
 */
function takeUp(context: Context, cluster: FleetCluster, waitOnly: boolean, consume: string[], skipped: number): Result {
  const base = { clusterId: cluster.id, clusterName: cluster.name, baseRevision: cluster.revision };
  const passed = skipped > 0 ? `; ${skipped} cluster(s) before it already ran the new defaults` : '';
  if (waitOnly) {
    const current: CurrentCluster = { ...base, revision: cluster.revision, changeId: null, startedAtMs: context.ports.clock.nowMs() };
    return hop('waitCluster', {
      consume,
      data: { current, startsMs: recentStarts(context) },
      reason: `${describeCluster(current)} already has the new defaults at revision ${cluster.revision}: waiting for it to be healthy again${passed}`,
      code: 'rollout_cluster_retried',
    });
  }
  return hop('propose', { consume, data: { current: base, startsMs: recentStarts(context), ...retryOf(context) }, ...(passed === '' ? {} : { reason: `next: ${describeCluster(base)}${passed}`, code: 'rollout_clusters_skipped' as const }) });
}

/** The cell is frozen: the rollout naps where it is (saying so once) and goes on by itself after the thaw. */
function heldByFreeze(context: Context, before: string): Result {
  const data: RolloutData = { ...context.machine.data, startsMs: recentStarts(context), heldByFreeze: true };
  if (context.machine.data.heldByFreeze === true) return nap(freezeNapMs, { data });
  return nap(freezeNapMs, { data, reason: `the cell is frozen: the rollout waits before ${before} until the thaw`, code: 'held_by_freeze' });
}

function currentOf(context: Context): CurrentCluster {
  const current = context.machine.data.current;
  assert(current !== undefined, `rollout ${context.machine.entityId} at ${context.machine.label} without a current cluster`);
  return current;
}

async function propose(context: Context): Promise<Result> {
  if (context.signals.has(abortSignal)) return aborting(context, 'before its next cluster was changed');
  const current = currentOf(context);
  if (context.signals.has(pauseSignal)) {
    // Nothing was proposed yet: the cursor has not passed this cluster, so a resume takes it up again.
    return hop('paused', { consume: [pauseSignal], data: { startsMs: recentStarts(context), ...retryOf(context) }, reason: `paused before ${describeCluster(current)}`, code: 'rollout_paused' });
  }
  if (await context.ports.freeze.frozen()) return heldByFreeze(context, describeCluster(current));
  const { rollouts, clock } = context.ports;
  const id = context.machine.entityId;
  const actor = rolloutActor(id);
  const now = clock.nowMs();
  // Run again after a crash, this step finds what it proposed before instead of proposing twice.
  const earlier = await rollouts.revisionSince(current.clusterId, current.baseRevision, actor);
  if (earlier !== null) return waitFor(context, { ...current, ...earlier, startedAtMs: now }, recentStarts(context));
  const starts = recentStarts(context);
  const rollout = await rollouts.rollout(id);
  if (starts.length >= Math.min(rollout.ratePerMinute, context.ports.ratePerMinuteCap())) {
    const oldest = Math.min(...starts);
    return nap(Math.max(0, oldest + rateWindowMs - now), { data: { ...context.machine.data, startsMs: starts } });
  }
  const reason = `fleet defaults rollout ${id}${rollout.reason === null ? '' : `: ${rollout.reason}`}`;
  const proposal = await rollouts.proposeDefaults(current.clusterId, rollout.defaultsAfter, actor, reason);
  switch (proposal.type) {
    case 'gone':
      await rollouts.recordAdvanced(id, current.clusterId, 'skipped');
      return hop('next', { data: { startsMs: starts }, reason: `${describeCluster(current)} was deleted before it was changed`, code: 'rollout_clusters_skipped' });
    case 'refused':
      return halt(context, current, `its change was refused: ${proposal.reason}`);
    case 'busy': {
      // A cluster that cannot recover by itself (a failed machine) will never take the change.
      const health = await rollouts.clusterHealth(current.clusterId);
      if (health.state === 'broken') return halt(context, current, `its change was refused (${proposal.reason}) and it is not healthy: ${health.detail}`);
      const busySinceMs = current.busySinceMs ?? now;
      if (now - busySinceMs > context.ports.healthWaitMs) return halt(context, current, `another change of it did not finish within ${context.ports.healthWaitMs} ms: ${proposal.reason}`);
      const first = current.busySinceMs === undefined;
      return nap(busyRetryMs, { data: { ...context.machine.data, current: { ...current, busySinceMs } }, ...(first ? { reason: `${describeCluster(current)} is being changed already; waiting for that to finish: ${proposal.reason}`, code: 'rollout_waiting_for_change' as const } : {}) });
    }
    case 'proposed':
      return waitFor(context, { ...current, revision: proposal.revision, changeId: proposal.changeId, startedAtMs: now }, [...starts, now]);
  }
}

async function waitFor(context: Context, current: CurrentCluster, startsMs: readonly number[]): Promise<Result> {
  assert(current.revision !== undefined, 'a cluster is waited for once it has a revision');
  await context.ports.rollouts.recordStarted(context.machine.entityId, current.clusterId, current.revision);
  const { busySinceMs: _busy, ...kept } = current;
  return hop('waitCluster', {
    data: { current: kept, startsMs },
    reason: `${describeCluster(current)}: revision ${current.revision} with the new defaults${current.changeId === null ? ' (nothing to apply)' : `, change ${current.changeId}`}`,
    code: 'rollout_cluster_started',
  });
}

async function waitCluster(context: Context): Promise<Result> {
  if (context.signals.has(abortSignal)) return aborting(context, `while ${describeCluster(currentOf(context))} was being changed (its change finishes on its own)`);
  const held = currentOf(context);
  // Its change waits for the thaw too: the wait for it to be healthy starts again after the thaw,
  // so a freeze does not halt the rollout here.
  if (await context.ports.freeze.frozen()) return heldByFreeze(context, `${describeCluster(held)} (its change waits too)`);
  const current: CurrentCluster = context.machine.data.heldByFreeze === true ? { ...held, startedAtMs: context.ports.clock.nowMs() } : held;
  const { rollouts, clock, healthWaitMs } = context.ports;
  assert(current.revision !== undefined && current.startedAtMs !== undefined, 'waitCluster holds a proposed cluster');
  if (current !== held) {
    const { heldByFreeze: _held, ...rest } = context.machine.data;
    return nap(0, { data: { ...rest, current } });
  }
  const waitedMs = clock.nowMs() - current.startedAtMs;
  if (current.changeId !== null && current.changeId !== undefined) {
    const change = await rollouts.changeOutcome(current.changeId);
    if (change.failed) return halt(context, current, `its change (revision ${current.revision}) failed at ${change.label}: ${change.error ?? 'no reason recorded'}`);
    if (!change.done) {
      // A cluster that cannot recover by itself will not see its change through: no use waiting out the bound.
      const health = await rollouts.clusterHealth(current.clusterId);
      if (health.state === 'broken' || health.state === 'gone') return afterHealth(context, current, health, waitedMs);
      if (waitedMs > healthWaitMs) return halt(context, current, `its change (revision ${current.revision}) did not finish within ${healthWaitMs} ms (CELLAR_ROLLOUT_HEALTH_WAIT_MS); it is at ${change.label}`);
      return nap(rolloutPollMs);
    }
  }
  return afterHealth(context, current, await rollouts.clusterHealth(current.clusterId), waitedMs);
}

async function afterHealth(context: Context, current: CurrentCluster, health: ClusterHealth, waitedMs: number): Promise<Result> {
  const { rollouts, healthWaitMs } = context.ports;
  const id = context.machine.entityId;
  const startsMs = recentStarts(context);
  switch (health.state) {
    case 'gone':
      await rollouts.recordAdvanced(id, current.clusterId, 'skipped');
      return hop('next', { data: { startsMs }, reason: `${describeCluster(current)} was deleted while it was being changed`, code: 'rollout_clusters_skipped' });
    case 'broken':
      return halt(context, current, `it is not healthy: ${health.detail}`);
    case 'waiting':
      if (waitedMs > healthWaitMs) return halt(context, current, `it was not healthy within ${healthWaitMs} ms (CELLAR_ROLLOUT_HEALTH_WAIT_MS): ${health.detail}`);
      return nap(rolloutPollMs);
    case 'healthy':
      await rollouts.recordAdvanced(id, current.clusterId, 'changed');
      return hop('next', { data: { startsMs }, reason: `${describeCluster(current)} runs revision ${String(current.revision)} and is healthy`, code: 'rollout_cluster_done' });
  }
}

async function halt(context: Context, current: CurrentCluster, why: string): Promise<Result> {
  const revision = current.revision ?? null;
  await context.ports.rollouts.recordHalted(context.machine.entityId, { clusterId: current.clusterId, clusterName: current.clusterName, revision, reason: why });
  return hop('halted', {
    data: { startsMs: recentStarts(context), retryClusterId: current.clusterId },
    reason: `halted at ${describeCluster(current)}${revision === null ? '' : `, revision ${revision}`}: ${why}`,
    code: 'rollout_halted',
  });
}

/**
 * Paused and halted rollouts are finished machines: `resume` and `abort` bring them back
 * (`resumeOn`). Signals present on entry were raised before: an abort still counts, a resume
 * while pausing cancels the pause, a resume or pause from before a halt is stale.
 */
async function paused(context: Context): Promise<Result> {
  if (context.signals.has(abortSignal)) return aborting(context, 'while paused');
  if (context.signals.has(resumeSignal)) return hop('next', { consume: stale(context, [resumeSignal, pauseSignal]), reason: 'resumed', code: 'rollout_resumed' });
  const consume = stale(context, [pauseSignal]);
  return done(consume.length === 0 ? {} : { consume });
}

async function halted(context: Context): Promise<Result> {
  if (context.signals.has(abortSignal)) return aborting(context, 'after it halted');
  const consume = stale(context, [pauseSignal, resumeSignal]);
  return done(consume.length === 0 ? {} : { consume });
}

async function finish(context: Context): Promise<Result> {
  await context.ports.rollouts.recordFinished(context.machine.entityId);
  const consume = stale(context, [pauseSignal, resumeSignal, abortSignal]);
  return done(consume.length === 0 ? {} : { consume });
}

export const rolloutMachine: MachineDefinition<RolloutLabel, RolloutData, RolloutPorts> = {
  kind: rolloutKind,
  initial: 'next',
  transitions: {
    next: ['next', 'propose', 'waitCluster', 'paused', 'completed', 'aborted'],
    propose: ['waitCluster', 'next', 'halted', 'paused', 'aborted'],
    waitCluster: ['next', 'halted', 'aborted'],
    paused: ['next', 'aborted'],
    halted: ['next', 'aborted'],
    completed: [],
    aborted: [],
  },
  resumeOn: { [resumeSignal]: 'next', [abortSignal]: 'aborted' },
  steps: { next, propose, waitCluster, paused, halted, completed: finish, aborted: finish },
  lane: () => 'normal',
  stepTimeoutMs: () => rolloutStepTimeoutMs,
};

/** Labels in which a rollout still moves clusters (pause applies); `paused` and `halted` wait for a human. */
export const movingLabels: readonly RolloutLabel[] = ['next', 'propose', 'waitCluster'];
