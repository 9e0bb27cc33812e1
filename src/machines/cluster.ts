import { type InstanceStatus, dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { type MachineDefinition, type Outcome, type StepContext, done, fail, hop, nap, stepTimeoutMarginMs } from '../engine/machine.js';
import { assert } from '../lib/assert.js';
import type { EventCode } from '../lib/event-codes.js';
import { HostUnreachableError, TransientError } from '../lib/failure.js';
import type { ClusterId, InstanceId } from '../lib/ids.js';
import { lagBytes, lsnToBigInt } from '../lib/lsn.js';
import { type Durability, durabilityOf, replicasMax } from '../lib/sizes.js';
import { isEvacuated } from './host.js';
import { settingsDifferences } from './settings-drift.js';
import { guardStorage } from './storage-guard.js';
import { isBeingRemoved, isStreamingReplica } from './replicas.js';
import { catalogueFromRows } from '../lib/settings.js';
import { instanceKind, instancePhase, instanceSpec, slotNameFor } from './instance.js';
import { type ClusterRecord, type InstanceRecord, type MachinePorts, clusterKind, freezeNapMs } from './ports.js';

/**
 * A cluster: one primary and `replicas` replicas. It creates its instances, waits for them to
 * serve, then watches them: it keeps the primary's synchronous standbys in step with the healthy
 * replicas, replaces failed replicas, and moves the primary role.
 *
 * Failover (the primary is lost): fence → pick → promote → repoint → route → rejoin.
 * Switchover (asked for): pause → catchUp → stopPrimary → promote → repoint → route → rejoin.
 * Every step is idempotent, so a control plane that dies half-way finishes after restart.
 */
export const clusterLabels = [
  'start', 'waitInstances', 'running',
  'fence', 'pick', 'pause', 'catchUp', 'stopPrimary', 'promote', 'repoint', 'route', 'rejoin',
  'destroy', 'waitDestroyed',
] as const;
export type ClusterLabel = (typeof clusterLabels)[number];

export interface ClusterData extends Record<string, unknown> {
  readonly op?: 'failover' | 'switchover';
  readonly oldPrimaryId?: string;
  readonly candidateId?: string;
  /** Promote a replica even if it lags past the limit (a human asked). */
  readonly force?: boolean;
  /** Clock time the current wait began (catch-up, rejoin). */
  readonly sinceMs?: number;
  /** The synchronous standbys last written to the primary; absent until first written. */
  readonly syncStandbys?: readonly string[];
  /** The last reason a nap announced, so that a repeated condition makes one event, not one per tick. */
  readonly announced?: string;
  /** Clock time the instances' settings were last compared with the revision (drift). */
  readonly driftCheckedMs?: number;
  /** Clock time the primary's archiver was first seen failing (without a success since); absent while it archives. */
  readonly archiveFailingSinceMs?: number;
  /** `archive_failing` was raised and `archive_recovered` not yet. */
  readonly archiveFailingAnnounced?: boolean;
  /** `storage_warning` was raised for the current climb past the warning threshold (storage-guard.ts). */
  readonly storageWarned?: boolean;
  /** The autogrow refusal last said (cooldown, ceiling), so that it is said once. */
  readonly autogrowHeld?: string;
  /** The servers were configured read-only after the cluster was marked full (storage-guard.ts). */
  readonly readOnlyApplied?: boolean;
}

export { clusterKind };
/** Instances nudge the cluster when they change, so these naps are only a backstop. */
export const provisioningNapMs = 1_000;
export const watchNapMs = 5_000;
/** Switchover: poll the target's LSN this often; stop the primary once it is this close. */
export const catchUpPollMs = 10;
export const catchUpLagBytesMax = 1024 * 1024;
/** Failover from an unreachable host: how often to look at its lease until it has certainly expired. */
const leaseWaitPollMs = 50;
/** Failover: how often to look again when no replica can be promoted. */
export const pickRetryMs = 500;
/** How long the cluster waits for its old primary to stream again before carrying on without it. */
export const rejoinWaitMsMax = 120_000;
export const rejoinPollMs = 100;
/** While instances move off a draining or lost host, the cluster looks this often (their readiness and deletion wake it too). */
export const evacuationNapMs = 1_000;
/** While replicas are added or removed to match `spec.replicas`, the cluster looks this often (their readiness and deletion wake it too). */
export const scaleNapMs = 1_000;
/** Steps that only read and write the store still get this long. */
const stepTimeoutMsMin = 30_000;

/** The data-plane waits inside each label's step: the port's bounds, times the replicas where it goes through them one by one. */
function innerLimitMs(label: ClusterLabel): number {
  switch (label) {
    case 'running': // the synchronous standbys, then the drift check of every instance
      return dataPlaneLimitsMs.setSynchronousStandbys + (replicasMax + 1) * (dataPlaneLimitsMs.settings + dataPlaneLimitsMs.configure);
    case 'route':
      return dataPlaneLimitsMs.setSynchronousStandbys;
    case 'fence':
    case 'stopPrimary':
      return dataPlaneLimitsMs.stop;
    case 'pick': // every replica at once
      return dataPlaneLimitsMs.status;
    case 'catchUp':
      return 2 * dataPlaneLimitsMs.status;
    case 'pause':
      return dataPlaneLimitsMs.checkpoint;
    case 'promote':
      return dataPlaneLimitsMs.promote + dataPlaneLimitsMs.status;
    case 'repoint':
      return dataPlaneLimitsMs.allowPeers + replicasMax * dataPlaneLimitsMs.follow;
    default:
      return 0;
  }
}

type Context = StepContext<ClusterLabel, ClusterData, MachinePorts>;
type Result = Outcome<ClusterLabel, ClusterData>;

const clusterIdOf = (context: Context): ClusterId => context.machine.entityId as ClusterId;
const destroyRequested = (context: Context): boolean => context.signals.has('destroy');
const nowMs = (context: Context): number => context.ports.clock.nowMs();

async function start(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  // Accepted and queued: a new cluster's instances are made only once the cell thaws.
  if (await context.ports.freeze.frozen()) return announce(context, freezeNapMs, 'the cell is frozen: its instances are made after the thaw', 'held_by_freeze');
  const { store } = context.ports;
  const cluster = await store.cluster(clusterIdOf(context));
  const existing = new Set((await store.instances(cluster.id)).map((instance) => instance.ordinal));
  // A cluster with instances already was admitted before a crash: it goes on.
  const { admission } = context.ports;
  if (existing.size === 0 && !(await admission.admit(cluster.id))) {
    return announce(context, admission.retryMs(), `waiting to be admitted: at most ${admission.perTick()} new cluster(s) start provisioning per tick (provisioning.creates-per-tick)`, 'create_waiting_admission');
  }
  for (let ordinal = 0; ordinal <= cluster.spec.replicas; ordinal += 1) {
    if (!existing.has(ordinal)) await store.createInstance(cluster.id, ordinal, ordinal === 0 ? 'primary' : 'replica');
  }
  return hop('waitInstances', { data: withoutAnnouncement(context.machine.data), reason: `1 primary and ${cluster.spec.replicas} replica(s) requested`, code: 'instances_requested' });
}

function isServing(instance: InstanceRecord): boolean {
  return instance.machineLabel === 'running';
}

async function waitInstances(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const instances = await context.ports.store.instances(clusterIdOf(context));
  const failed = instances.find((instance) => instance.machineLabel === 'failed');
  if (failed !== undefined) return fail(`instance ${failed.id} (${failed.role}) failed: ${failed.machineError ?? 'unknown reason'}`, 'instance_failed');
  // Nothing to fail over to while the cluster is being made: a primary lost now is restarted.
  const down = instances.find((instance) => instance.machineLabel === 'down' && !instance.fenced);
  if (down !== undefined) await context.ports.store.raiseSignal(instanceKind, down.id, 'restart');
  if (instances.length > 0 && instances.every(isServing)) {
    // The backup schedule takes a new cluster's first backup right away.
    return hop('running', { reason: `${instances.length} instance(s) running`, code: 'cluster_running', wake: [{ kind: 'backupSchedule', entityId: 'cell' }] });
  }
  return nap(provisioningNapMs);
}

/** A nap that records `reason` as an event the first time it is given, not on every tick. */
function announce(context: Context, ms: number, reason: string, code: EventCode, consume: readonly string[] = []): Result {
  const data = { ...context.machine.data, announced: reason };
  if (context.machine.data.announced === reason) return nap(ms, { data, consume });
  return nap(ms, { data, consume, reason, code });
}

function withoutAnnouncement(data: ClusterData): ClusterData {
  const { announced: _announced, ...rest } = data;
  return rest;
}

function primaryOf(instances: readonly InstanceRecord[]): InstanceRecord {
  const primaries = instances.filter((instance) => instance.role === 'primary');
  assert(primaries.length === 1, `a cluster has exactly one primary, found ${primaries.length}`);
  return primaries[0] as InstanceRecord;
}

async function running(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { store } = context.ports;
  const cluster = await store.cluster(clusterIdOf(context));
  const instances = await store.instances(cluster.id);
  const primary = primaryOf(instances);
  if (context.signals.has('failover')) return beginFailover(context, primary, 'a failover was requested');
  if (context.signals.has('switchover')) return beginSwitchover(context, cluster, instances, primary);
  if (primary.machineLabel === 'down') return primaryLost(context, instances, primary);
  const guarded = await guardStorage(context, cluster, instances, primary);
  if (guarded !== null) return guarded;
  // One whose replacement was asked already stays `failed` until its machine takes the destroy:
  // looking again before then must not replace it twice.
  const failedReplica = instances.find((instance) => instance.role === 'replica' && instance.machineLabel === 'failed' && !isBeingRemoved(instance));
  if (failedReplica !== undefined) {
    await store.replaceInstance(failedReplica.id, 'replica');
    return nap(0, { reason: `replacing replica ${failedReplica.id} (${failedReplica.machineError ?? 'failed'}) with a fresh one`, code: 'replica_replaced' });
  }
  const moving = await moveOffLeavingHosts(context, cluster, instances, primary);
  if (moving !== null) return moving;
  const scaled = await scaleReplicas(context, cluster, instances, primary);
  if (scaled !== null) return scaled;
  const synced = await maintainSync(context, cluster, instances, primary);
  if (synced !== null) return nap(watchNapMs, synced);
  const bounded = await keepWalBounded(context, instances, primary);
  if (bounded !== null) return bounded;
  return (await keepSettingsSafely(context, cluster, instances, primary)) ?? nap(watchNapMs);
}

/**
 * WAL never fills the disk behind the user's back (docs/STORAGE.md "WAL bounds"), from what the
 * primary last reported: a replica whose slot is lost (it fell past max_slot_wal_keep_size and can
 * never catch up) is replaced with a fresh one; an archiver that has failed for longer than
 * `archiveFailingMs` raises `archive_failing` once, and `archive_recovered` once it archives again.
 * Null: nothing to do or say.
 */
async function keepWalBounded(context: Context, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  const lostSlots = new Set((primary.observed.slots ?? []).filter((slot) => slot.walStatus === 'lost').map((slot) => slot.name));
  const lost = instances.find((instance) => instance.role === 'replica' && !isBeingRemoved(instance) && lostSlots.has(slotNameFor(instance.id)));
  if (lost !== undefined) {
    await context.ports.store.replaceInstance(lost.id, 'replica', true);
    return nap(0, { reason: `replacing replica ${lost.id}: it fell more than max_slot_wal_keep_size behind the primary and its slot is lost`, code: 'replica_replaced_wal_lost' });
  }
  return archiveWatch(context, primary);
}

/** Failing now: a failure after the last success (pg_stat_archiver keeps both times). */
export function isArchiveFailing(archive: InstanceStatus['archive'] | undefined): boolean {
  if (archive?.lastFailedAt == null) return false;
  return archive.lastArchivedAt === null || Date.parse(archive.lastFailedAt) > Date.parse(archive.lastArchivedAt);
}

function archiveWatch(context: Context, primary: InstanceRecord): Result | null {
  const data = context.machine.data;
  const archive = primary.observed.archive;
  if (!isArchiveFailing(archive)) {
    if (data.archiveFailingSinceMs === undefined && data.archiveFailingAnnounced !== true) return null;
    const { archiveFailingSinceMs: _since, archiveFailingAnnounced: announced, ...rest } = data;
    if (announced !== true) return nap(watchNapMs, { data: rest });
    return nap(watchNapMs, { data: rest, reason: `the primary ${primary.id} archives WAL again`, code: 'archive_recovered' });
  }
  if (data.archiveFailingSinceMs === undefined) return nap(watchNapMs, { data: { ...data, archiveFailingSinceMs: nowMs(context) } });
  const failingMs = nowMs(context) - data.archiveFailingSinceMs;
  if (data.archiveFailingAnnounced === true || failingMs < context.ports.ha.archiveFailingMs) return null;
  const held = archive?.lagBytes == null ? 'unknown' : `${Math.round(archive.lagBytes / 1024 ** 2)} MB`;
  return nap(watchNapMs, {
    data: { ...data, archiveFailingAnnounced: true },
    reason: `the primary ${primary.id} has failed to archive WAL for ${Math.round(failingMs / 1000)} s (${archive?.failedCount ?? 0} failures, last ${archive?.lastFailedWal ?? '?'}); WAL held: ${held}`,
    code: 'archive_failing',
  });
}

/** Watching settings is a side task: what fails in it is said (once) and tried again later, never a failure of the cluster. */
async function keepSettingsSafely(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  try {
    return await keepSettings(context, cluster, instances, primary);
  } catch (error) {
    if (context.abort.aborted) throw error;
    const data = { ...context.machine.data, driftCheckedMs: nowMs(context) };
    const reason = `could not check the instances' settings: ${(error instanceof Error ? error.message : String(error)).split('\n')[0] ?? ''}`;
    return nap(watchNapMs, context.machine.data.announced === reason ? { data } : { data: { ...data, announced: reason }, reason, code: 'settings_check_failed' });
  }
}

/**
 * The catalogue of the cluster's Postgres version, read once from its primary; then, every
 * driftCheckMs, each serving instance's settings against the revision (docs/CONFIG.md "Drift"):
 * a difference is reported and put back (`configure`); a replica still waiting for a restart is
 * restarted, a primary is left to the next rolling restart. Not while a change applies its revision.
 */
async function keepSettings(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  const { store, dataPlane, ha } = context.ports;
  if (primary.machineLabel !== 'running') return null;
  if ((await store.catalogue(cluster.spec.pgVersion)) === null) {
    const rows = await dataPlane.settings(instanceSpec(cluster, primary));
    const entries = catalogueFromRows(rows);
    await store.saveCatalogue(cluster.spec.pgVersion, entries);
    return nap(watchNapMs, { reason: `parameter catalogue of Postgres ${cluster.spec.pgVersion} read from ${primary.id}: ${entries.length} parameters`, code: 'catalogue_read' });
  }
  const checkedMs = context.machine.data.driftCheckedMs ?? 0;
  if (nowMs(context) - checkedMs < ha.driftCheckMs) return null;
  const data = { ...context.machine.data, driftCheckedMs: nowMs(context) };
  if (await store.changeInProgress(cluster.id)) return nap(watchNapMs, { data });
  const found: string[] = [];
  for (const instance of instances.filter((candidate) => candidate.machineLabel === 'running' && !candidate.fenced)) {
    const problems = await settingsDifferences(context, cluster, instance);
    if (problems.length === 0) continue;
    const spec = instanceSpec(cluster, instance);
    const after = await dataPlane.configure(spec);
    const waiting = after.filter((row) => row.pendingRestart).map((row) => row.name);
    let outcome = 'put back';
    if (waiting.length > 0 && instance.role === 'replica') {
      await store.raiseSignal(instanceKind, instance.id, 'restart');
      outcome = `put back; restarting it for ${waiting.join(', ')}`;
    } else if (waiting.length > 0) {
      outcome = `put back; ${waiting.join(', ')} take effect at the next restart of the primary`;
    }
    found.push(`${instance.id}: ${problems.join('; ')} (${outcome})`);
  }
  if (found.length === 0) return nap(watchNapMs, { data });
  return nap(watchNapMs, { data, reason: `settings drifted and were repaired: ${found.join(' | ')}`, code: 'settings_drift_repaired' });
}

/** Instances that stay (or will): not on a draining or lost host, and not being deleted (asked or under way) or failed. */
function isStaying(instance: InstanceRecord): boolean {
  return !isEvacuated(instance.hostState) && !isBeingRemoved(instance) && instance.machineLabel !== 'failed';
}

function onHost(instance: InstanceRecord): string {
  return `${instance.id} (${instance.role}, host ${instance.hostState ?? '?'})`;
}

/**
 * Instances on a draining or lost host are replaced elsewhere (docs/HOSTS.md "Hosts as machines").
 * Level-triggered, from what the store says now, so running it again after a crash does the same:
 * 1. the cluster gets as many instances on staying hosts as it wants (a new replica for each one
 *    leaving; placement takes only active hosts);
 * 2. a replica on a lost host is deleted at once (it serves nothing); one on a draining host only
 *    once the staying replicas stream, so the cluster never serves with fewer replicas than before;
 * 3. a primary on a draining host is moved by a switchover to the most advanced staying replica once
 *    they all stream (a primary on a lost host has failed over already: its host went silent first).
 * Null: nothing is leaving.
 */
async function moveOffLeavingHosts(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  const { store } = context.ports;
  const leaving = instances.filter((instance) => isEvacuated(instance.hostState) && instance.machineLabel !== 'destroy');
  if (leaving.length === 0) return null;
  const staying = instances.filter(isStaying);
  const wanted = cluster.spec.replicas + 1;
  if (staying.length < wanted) {
    const added: InstanceId[] = [];
    for (let count = staying.length; count < wanted; count += 1) added.push(await store.addReplica(cluster.id));
    return nap(evacuationNapMs, {
      data: withoutAnnouncement(context.machine.data),
      reason: `replacing ${leaving.map(onHost).join(', ')}: new replica(s) ${added.join(', ')} on other hosts`,
      code: 'replacements_requested',
    });
  }
  const streaming = staying.filter(isStreamingReplica);
  const primaryLeaving = isEvacuated(primary.hostState);
  const deletable = leaving.filter((instance) => instance.role === 'replica' && (instance.hostState === 'lost' || (!primaryLeaving && streaming.length >= cluster.spec.replicas)));
  if (deletable.length > 0) {
    for (const instance of deletable) await store.requestDestroy(instanceKind, instance.id);
    const why = deletable.every((instance) => instance.hostState === 'lost') ? 'their host is lost' : `${streaming.length} replica(s) on staying hosts stream`;
    return nap(evacuationNapMs, { data: withoutAnnouncement(context.machine.data), reason: `deleting ${deletable.map(onHost).join(', ')}: ${why}`, code: 'moved_instances_deleted' });
  }
  if (primaryLeaving && primary.hostState === 'draining' && primary.machineLabel === 'running' && streaming.length >= wanted) {
    const target = mostAdvanced(streaming);
    assert(target !== undefined, `${streaming.length} streaming replicas and none most advanced`);
    const data: ClusterData = { op: 'switchover', oldPrimaryId: primary.id, candidateId: target.id, syncStandbys: context.machine.data.syncStandbys ?? [] };
    return hop('pause', { data, reason: `moving the primary off its draining host: switchover from ${primary.id} to ${target.id}`, code: 'drain_switchover_started' });
  }
  const synced = await maintainSync(context, cluster, instances, primary);
  if (synced !== null) return nap(evacuationNapMs, synced);
  const waitingFor = primaryLeaving && primary.hostState === 'lost' ? 'its primary to fail over' : `${wanted} instance(s) on staying hosts to stream (${streaming.length} replica(s) stream)`;
  return announce(context, evacuationNapMs, `${leaving.map(onHost).join(', ')} leave when the cluster is ready: waiting for ${waitingFor}`, 'waiting_for_replacements');
}

/**
 * The cluster keeps `spec.replicas` replicas (docs/CONFIG.md, `cellar clusters scale`). Level-
 * triggered, from what the store says now, so running it again after a crash does the same:
 * - fewer staying replicas: a new one for each missing (ordinals never reused); its own machine
 *   places, clones and starts it, and the proxy routes it only once it streams (routes.ts isHealthy);
 * - more: the surplus goes, a removal already begun first (out of the routes: a crash came between
 *   its steps), then replicas that do not stream, then the highest ordinals; never the primary.
 *   Each leaves the routes (the proxy ends its connections), the primary's synchronous standbys
 *   are written without it, and only then is it asked to delete itself, so no commit waits for a
 *   replica that is going away.
 * Only `running` calls this, so nothing is added or removed while the primary role moves.
 * Null: the cluster has its replicas.
 */
async function scaleReplicas(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result | null> {
  const { store } = context.ports;
  const wanted = cluster.spec.replicas;
  const kept = instances.filter((instance) => instance.role === 'replica' && isStaying(instance));
  if (kept.length === wanted) return null;
  // Scaling is a configuration change: it waits for the thaw (its change machine waits too). A
  // replica lost or on a leaving host is replaced elsewhere, frozen or not.
  if (await context.ports.freeze.frozen()) return null;
  if (kept.length < wanted) {
    const added: InstanceId[] = [];
    for (let count = kept.length; count < wanted; count += 1) added.push(await store.addReplica(cluster.id));
    return nap(scaleNapMs, {
      data: withoutAnnouncement(context.machine.data),
      reason: `scaling from ${kept.length} to ${wanted} replica(s): new replica(s) ${added.join(', ')}; each is routed once it streams`,
      code: 'replicas_added',
    });
  }
  // The synchronous standbys are written before a replica goes: that needs a primary that runs.
  if (primary.machineLabel !== 'running') {
    return announce(context, scaleNapMs, `scaling from ${kept.length} to ${wanted} replica(s) waits for the primary ${primary.id} to run (it is ${primary.machineLabel})`, 'replicas_removal_waiting');
  }
  const surplus = [...kept].sort(removalOrder).slice(0, kept.length - wanted);
  for (const instance of surplus) {
    if (instance.inRoute) await store.setInRoute(instance.id, false);
  }
  const leaving = new Set<string>(surplus.map((instance) => instance.id));
  const synced = await maintainSync(context, cluster, instances.map((instance) => (leaving.has(instance.id) ? { ...instance, inRoute: false } : instance)), primary);
  for (const instance of surplus) await store.requestDestroy(instanceKind, instance.id);
  const sync = synced === null ? '' : `; ${synced.reason}`;
  return nap(scaleNapMs, {
    data: synced === null ? withoutAnnouncement(context.machine.data) : synced.data,
    reason: `scaling from ${kept.length} to ${wanted} replica(s): removing ${surplus.map((instance) => instance.id).join(', ')}, out of the routes and the synchronous standbys first${sync}`,
    code: 'replicas_removed',
  });
}

/** Which replica goes first when the cluster has too many: one whose removal began, then one that does not stream, then the newest. */
function removalOrder(a: InstanceRecord, b: InstanceRecord): number {
  const begun = Number(a.inRoute) - Number(b.inRoute);
  if (begun !== 0) return begun;
  const streams = Number(isStreamingReplica(a)) - Number(isStreamingReplica(b));
  return streams !== 0 ? streams : b.ordinal - a.ordinal;
}

function beginFailover(context: Context, primary: InstanceRecord, why: string): Result {
  const force = context.signals.has('force');
  const data: ClusterData = { op: 'failover', oldPrimaryId: primary.id, force, sinceMs: nowMs(context) };
  return hop('fence', { data, consume: ['failover', 'force'], reason: `${why}: failing over from ${primary.id}${force ? ' (forced)' : ''}`, code: 'failover_started' });
}

async function primaryLost(context: Context, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result> {
  const { store, ha } = context.ports;
  const replicas = instances.filter((instance) => instance.role === 'replica' && !instance.fenced);
  if (replicas.length === 0) {
    await store.raiseSignal(instanceKind, primary.id, 'restart');
    return announce(context, provisioningNapMs, 'the primary is down and there is no replica to fail over to: restarting it in place', 'primary_restarting_in_place');
  }
  const recent = await store.failoversWithin(ha.failoverWindowMs);
  if (recent >= ha.failoversMax) {
    return announce(
      context,
      watchNapMs,
      `automatic failover is off: ${recent} failovers in the cell within ${ha.failoverWindowMs} ms (limit ${ha.failoversMax}); a human must act: cellar clusters failover NAME`,
      'circuit_breaker_open',
    );
  }
  return beginFailover(context, primary, `primary ${primary.id} lost`);
}

async function beginSwitchover(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<Result> {
  const refused = (why: string): Result => announce(context, 0, `switchover refused: ${why}`, 'switchover_refused', ['switchover']);
  await context.ports.store.clearSwitchoverTarget(cluster.id);
  const replicas = instances.filter(isStreamingReplica);
  const target = cluster.switchoverTo === null ? mostAdvanced(replicas) : replicas.find((instance) => instance.id === cluster.switchoverTo);
  if (primary.machineLabel !== 'running') return refused(`the primary ${primary.id} is not running`);
  if (target === undefined) {
    return refused(cluster.switchoverTo === null ? 'no replica is streaming' : `${cluster.switchoverTo} is not a streaming replica of this cluster`);
  }
  const data: ClusterData = { op: 'switchover', oldPrimaryId: primary.id, candidateId: target.id, syncStandbys: context.machine.data.syncStandbys ?? [] };
  return hop('pause', { data, consume: ['switchover'], reason: `switchover from ${primary.id} to ${target.id}`, code: 'switchover_started' });
}

function mostAdvanced(replicas: readonly InstanceRecord[]): InstanceRecord | undefined {
  const lsnOf = (instance: InstanceRecord): bigint => lsnToBigInt(instance.observed.receiveLsn ?? instance.observed.lsn ?? '0/0');
  return [...replicas].sort((a, b) => (lsnOf(b) > lsnOf(a) ? 1 : lsnOf(b) < lsnOf(a) ? -1 : 0))[0];
}

/**
 * The replicas a commit waits for, per durability. Never one out of the routes or being deleted:
 * it is going away (or restarting), and a commit must not wait for it.
 */
export function desiredSyncStandbys(durability: Durability, instances: readonly InstanceRecord[]): string[] {
  if (durability === 'async') return [];
  const replicas = instances.filter((instance) => instance.role === 'replica' && !isBeingRemoved(instance));
  // sync-strict names every replica, serving or not (one restarting out of the routes too): commits
  // wait rather than go unreplicated. sync names the streaming ones in the routes.
  const chosen = durability === 'sync-strict' ? replicas : replicas.filter((instance) => instance.inRoute && isStreamingReplica(instance));
  return chosen.map((instance) => instance.id).sort();
}

function syncChange(durability: Durability, before: readonly string[] | undefined, after: readonly string[]): { reason: string; code: EventCode } {
  if (after.length > 0) return { reason: `commits wait for a replica (${durability}): any of ${after.join(', ')}`, code: 'commits_wait_for_replica' };
  if (durability === 'async') return { reason: 'commits do not wait for a replica (async)', code: 'commits_async' };
  const reason = before === undefined || before.length === 0
    ? 'no replica is streaming: commits do not wait for one (sync has dropped to async)'
    : `no replica is streaming: commits no longer wait for one (sync has dropped to async; it returns when a replica streams)`;
  return { reason, code: 'sync_dropped_to_async' };
}

/** Writes the synchronous standbys when they should change, and says so; null when there is nothing to write. */
async function maintainSync(context: Context, cluster: ClusterRecord, instances: readonly InstanceRecord[], primary: InstanceRecord): Promise<SyncChange | null> {
  if (primary.machineLabel !== 'running') return null;
  const durability = durabilityOf(cluster.spec);
  const desired = desiredSyncStandbys(durability, instances);
  const before = context.machine.data.syncStandbys;
  if (before !== undefined && before.join(',') === desired.join(',')) return null;
  await context.ports.dataPlane.setSynchronousStandbys(instanceSpec(cluster, primary), desired);
  return { data: { syncStandbys: desired }, ...syncChange(durability, before, desired) };
}

interface SyncChange {
  readonly data: ClusterData;
  readonly reason: string;
  readonly code: EventCode;
}

async function load(context: Context, id: string | undefined): Promise<InstanceRecord> {
  assert(id !== undefined, `cluster machine ${context.machine.id} in ${context.machine.label} lacks an instance id in its data`);
  const instance = await context.ports.store.instance(id as InstanceId);
  assert(instance !== null, `instance ${id} of cluster ${context.machine.entityId} is gone`);
  return instance;
}

/** Failover: the proxy stops routing to the old primary first, then it is stopped if it still runs. */
async function fence(context: Context): Promise<Result> {
  const oldPrimaryId = context.machine.data.oldPrimaryId as InstanceId;
  const { store, dataPlane } = context.ports;
  await store.setFenced(oldPrimaryId, true);
  try {
    await dataPlane.stop(oldPrimaryId, 'immediate');
  } catch (error) {
    if (!(error instanceof HostUnreachableError)) throw error;
    // Invariant 7: nothing is promoted while the old primary may still take writes. Its agent
    // stops it when the lease runs out; the store's clock says when that has certainly happened.
    if ((await store.hostLeaseExpired(oldPrimaryId)) !== true) {
      return announce(context, leaseWaitPollMs, `${oldPrimaryId} is on an unreachable host (${error.message}): waiting until its lease has certainly expired`, 'waiting_for_host_lease');
    }
    return hop('pick', { data: withoutAnnouncement(context.machine.data), reason: `${oldPrimaryId} fenced: out of the routes, and its host's lease has certainly expired (${error.message}), so its agent has stopped it`, code: 'primary_fenced_by_lease' });
  }
  return hop('pick', { data: withoutAnnouncement(context.machine.data), reason: `${oldPrimaryId} fenced: out of the routes and stopped`, code: 'primary_fenced' });
}

/** The most advanced healthy replica, by WAL received; one lagging past the limit only when forced. */
async function pick(context: Context): Promise<Result> {
  // The only failover step that can wait without bound (for a replica to serve): a delete ends it.
  if (destroyRequested(context)) return hop('destroy', { reason: 'deleted while waiting for a replica to promote', code: 'deleted_during_failover' });
  const { store, ha } = context.ports;
  const data = context.machine.data;
  const force = data.force === true || context.signals.has('force');
  const cluster = await store.cluster(clusterIdOf(context));
  const old = await load(context, data.oldPrimaryId);
  const replicas = (await store.instances(cluster.id)).filter((instance) => instance.role === 'replica' && !instance.fenced && instance.id !== old.id);
  const observed = await Promise.all(replicas.map(async (instance) => ({ instance, status: await statusUnlessUnreachable(context, cluster, instance) })));
  const healthy = observed.flatMap(({ instance, status }) => (status !== null && status.accepting && status.receiveLsn !== undefined ? [{ instance, status }] : []));
  const eligible = healthy.filter(({ status }) => force || (lagBytes(old.observed.lsn, status.receiveLsn) ?? 0) <= ha.failoverLagBytesMax);
  const best = eligible.sort((a, b) => compareLsn(b.status.receiveLsn, a.status.receiveLsn))[0];
  if (best === undefined) {
    const why = healthy.length === 0 ? 'no replica is serving' : `every serving replica lags more than ${ha.failoverLagBytesMax} bytes behind the lost primary`;
    const code = healthy.length === 0 ? 'failover_refused_no_replica' : 'failover_refused_lag';
    return announce(context, pickRetryMs, `cannot fail over yet: ${why}; cellar clusters failover NAME --force promotes the most advanced one`, code);
  }
  await store.recordObserved(best.instance.id, best.status);
  const lag = lagBytes(old.observed.lsn, best.status.receiveLsn) ?? 0;
  return hop('promote', { data: { ...withoutAnnouncement(data), candidateId: best.instance.id, force }, consume: ['force'], reason: `promoting ${best.instance.id}: received up to ${best.status.receiveLsn} (${lag} bytes behind the last LSN seen on the old primary)`, code: 'candidate_picked' });
}

/** A replica on a silent host cannot be promoted, but must not stop the others from being asked. */
async function statusUnlessUnreachable(context: Context, cluster: ClusterRecord, instance: InstanceRecord): Promise<InstanceStatus | null> {
  try {
    return await context.ports.dataPlane.status(instanceSpec(cluster, instance));
  } catch (error) {
    if (error instanceof HostUnreachableError) return null;
    throw error;
  }
}

function compareLsn(a: string | undefined, b: string | undefined): number {
  const left = lsnToBigInt(a ?? '0/0');
  const right = lsnToBigInt(b ?? '0/0');
  return left > right ? 1 : left < right ? -1 : 0;
}

/**
 * Switchover: a checkpoint while writes still flow, so that the old primary's shutdown checkpoint
 * (inside the write pause) has little left to write; then new connections wait in the proxy
 * instead of reaching the primary being replaced. The checkpoint only shortens the pause: if it
 * fails, the switchover goes on without it.
 */
async function pause(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const old = await load(context, context.machine.data.oldPrimaryId);
  try {
    await dataPlane.checkpoint(instanceSpec(await store.cluster(clusterIdOf(context)), old));
  } catch (error) {
    if (context.abort.aborted) throw error;
  }
  await store.setRoutePaused(clusterIdOf(context), true);
  return hop('catchUp', { data: { ...context.machine.data, sinceMs: nowMs(context) }, reason: 'route paused: new connections wait', code: 'route_paused' });
}

/** Switchover: the target replays up to (nearly) the primary's LSN; the clean stop ships the rest. */
async function catchUp(context: Context): Promise<Result> {
  const { store, dataPlane, ha } = context.ports;
  const data = context.machine.data;
  const cluster = await store.cluster(clusterIdOf(context));
  const [old, target] = [await load(context, data.oldPrimaryId), await load(context, data.candidateId)];
  const [primaryStatus, targetStatus] = [await dataPlane.status(instanceSpec(cluster, old)), await dataPlane.status(instanceSpec(cluster, target))];
  const lag = lagBytes(primaryStatus.lsn, targetStatus.lsn);
  if (primaryStatus.accepting && targetStatus.streaming === true && lag !== null && lag <= catchUpLagBytesMax) {
    return hop('stopPrimary', { reason: `${target.id} is ${lag} bytes behind: stopping the old primary`, code: 'target_caught_up' });
  }
  const waitedMs = nowMs(context) - (data.sinceMs ?? nowMs(context));
  if (waitedMs > ha.switchoverCatchUpMsMax) {
    await store.setRoutePaused(cluster.id, false);
    return hop('running', {
      data: { syncStandbys: data.syncStandbys ?? [] },
      reason: `switchover called off: ${target.id} did not catch up within ${ha.switchoverCatchUpMsMax} ms (lag ${lag ?? 'unknown'} bytes, streaming ${String(targetStatus.streaming)}); route resumed`,
      code: 'switchover_called_off',
    });
  }
  return nap(catchUpPollMs);
}

/** Switchover: a clean (fast) shutdown sends every last WAL record to the connected replicas. */
async function stopPrimary(context: Context): Promise<Result> {
  const oldPrimaryId = context.machine.data.oldPrimaryId as InstanceId;
  await context.ports.store.setFenced(oldPrimaryId, true);
  await context.ports.dataPlane.stop(oldPrimaryId, 'fast');
  return hop('promote', { reason: `${oldPrimaryId} stopped cleanly`, code: 'old_primary_stopped' });
}

async function promote(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const cluster = await store.cluster(clusterIdOf(context));
  const candidate = await load(context, context.machine.data.candidateId);
  const spec = instanceSpec(cluster, candidate);
  await dataPlane.promote(spec);
  const status = await dataPlane.status(spec);
  // Observed, not ours to assert: a status query that failed says undefined. Try the step again.
  if (status.inRecovery !== false) throw new TransientError(`${candidate.id} is not seen out of recovery after promote (in recovery: ${String(status.inRecovery)})`);
  await store.recordObserved(candidate.id, status);
  return hop('repoint', { reason: `${candidate.id} promoted: accepting writes on timeline ${status.timeline ?? '?'}`, code: 'promoted' });
}

/** The other replicas stream from the new primary (each gets its slot there). */
async function repoint(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const data = context.machine.data;
  const cluster = await store.cluster(clusterIdOf(context));
  const candidate = await load(context, data.candidateId);
  assert(candidate.port !== null, `new primary ${candidate.id} has no port`);
  const others = (await store.instances(cluster.id)).filter(
    (instance) => instance.role === 'replica' && instance.id !== candidate.id && instance.id !== data.oldPrimaryId && hasDataDirectory(instance),
  );
  // The new primary's pg_hba was written when it was made: a replica on a host added since (a drain's or a lost host's replacement) must be let in first.
  await dataPlane.allowPeers(instanceSpec(cluster, candidate));
  for (const replica of others) {
    await dataPlane.follow(instanceSpec(cluster, replica), { host: candidate.address, port: candidate.port, slotName: slotNameFor(replica.id) });
  }
  return hop('route', { reason: others.length === 0 ? 'no other replica to repoint' : `${others.map((replica) => replica.id).join(', ')} now follow ${candidate.id}`, code: 'replicas_repointed' });
}

function hasDataDirectory(instance: InstanceRecord): boolean {
  return ['starting', 'waitReady', 'running', 'down'].includes(instance.machineLabel);
}

/** Writes go to the new primary (one transaction; the proxy is told at once); the old one is asked to rejoin. */
async function route(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const data = context.machine.data;
  const cluster = await store.cluster(clusterIdOf(context));
  const candidate = await load(context, data.candidateId);
  const oldPrimaryId = data.oldPrimaryId as InstanceId;
  const durability = durabilityOf(cluster.spec);
  // sync-strict: the new primary waits for a replica before its first routed commit; sync starts
  // async (nothing streams from it yet) and returns to sync when a replica does.
  const remaining = (await store.instances(cluster.id)).filter((instance) => instance.id !== candidate.id);
  const standbys = durability === 'sync-strict' ? remaining.map((instance) => instance.id).sort() : [];
  await dataPlane.setSynchronousStandbys(instanceSpec(cluster, candidate), standbys);
  await store.swapPrimary(cluster.id, candidate.id);
  await store.raiseSignal(instanceKind, oldPrimaryId, 'rejoin');
  const wait = durability === 'sync' ? '; commits do not wait for a replica until one streams from it' : '';
  return hop('rejoin', {
    data: { ...data, sinceMs: nowMs(context), syncStandbys: standbys },
    reason: `writes now go to ${candidate.id}${data.op === 'switchover' ? ', route resumed' : ''}${wait}`,
    code: 'routed_to_new_primary',
  });
}

/** The old primary comes back as a streaming replica (bounded wait; the cluster carries on either way). */
async function rejoin(context: Context): Promise<Result> {
  const { store } = context.ports;
  const data = context.machine.data;
  const old = await store.instance(data.oldPrimaryId as InstanceId);
  const keep: ClusterData = { syncStandbys: data.syncStandbys ?? [] };
  if (old === null) return hop('running', { data: keep, reason: 'the old primary was deleted', code: 'old_primary_deleted' });
  // `running` alone can be stale (its machine has not yet noticed the stop); fenced is cleared only by its rejoin.
  if (old.machineLabel === 'running' && !old.fenced && old.observed.streaming === true) {
    return hop('running', { data: keep, reason: `${old.id} is back as a streaming replica`, code: 'old_primary_rejoined' });
  }
  if (old.machineLabel === 'failed') return hop('running', { data: keep, reason: `${old.id} could not rejoin (${old.machineError ?? 'failed'}); it will be replaced`, code: 'old_primary_rejoin_failed' });
  // Rejoining on a host the cluster is leaving is wasted waiting: the old primary is replaced instead.
  if (isEvacuated(old.hostState)) return hop('running', { data: keep, reason: `${old.id} is on a ${old.hostState ?? ''} host: not waiting for it to rejoin; it is replaced`, code: 'old_primary_host_leaving' });
  const primary = primaryOf(await store.instances(clusterIdOf(context)));
  if (primary.machineLabel === 'down') return hop('running', { data: keep, reason: 'the new primary was lost too', code: 'new_primary_lost' });
  if (nowMs(context) - (data.sinceMs ?? nowMs(context)) > rejoinWaitMsMax) {
    return hop('running', { data: keep, reason: `${old.id} is still rejoining after ${rejoinWaitMsMax} ms; carrying on without waiting`, code: 'rejoin_wait_exceeded' });
  }
  return nap(rejoinPollMs);
}

async function destroy(context: Context): Promise<Result> {
  const { store } = context.ports;
  for (const instance of await store.instances(clusterIdOf(context))) {
    await store.requestDestroy(instanceKind, instance.id);
  }
  return hop('waitDestroyed', { consume: ['destroy'], reason: 'deleting every instance', code: 'deleting_instances' });
}

async function waitDestroyed(context: Context): Promise<Result> {
  const { store } = context.ports;
  const remaining = await store.instances(clusterIdOf(context));
  if (remaining.length > 0) return nap(provisioningNapMs);
  await store.markClusterDeleted(clusterIdOf(context));
  return done({ reason: 'all instances deleted', code: 'cluster_deleted' });
}

export const clusterMachine: MachineDefinition<ClusterLabel, ClusterData, MachinePorts> = {
  kind: clusterKind,
  initial: 'start',
  transitions: {
    start: ['waitInstances', 'destroy'],
    waitInstances: ['running', 'destroy'],
    running: ['fence', 'pause', 'destroy'],
    fence: ['pick'],
    pick: ['promote', 'destroy'],
    pause: ['catchUp'],
    catchUp: ['stopPrimary', 'running'],
    stopPrimary: ['promote'],
    promote: ['repoint'],
    repoint: ['route'],
    route: ['rejoin'],
    rejoin: ['running'],
    destroy: ['waitDestroyed'],
    waitDestroyed: [],
    // A failed cluster is deleted like any other.
    failed: ['destroy'],
  },
  resumeOn: { destroy: 'destroy' },
  steps: { start, waitInstances, running, fence, pick, pause, catchUp, stopPrimary, promote, repoint, route, rejoin, destroy, waitDestroyed },
  // Watching is normal lane (instances wake the cluster when they change); everything else is urgent.
  lane: (label) => (label === 'running' ? 'normal' : 'high'),
  stepTimeoutMs: (label) => Math.max(stepTimeoutMsMin, innerLimitMs(label) + stepTimeoutMarginMs),
  innerLimitMs,
};

/** The human phase of a cluster (creating, running, degraded, failing-over, …). */
export function clusterPhase(machineLabel: string, machineDone: boolean, instances: readonly InstanceRecord[]): string {
  switch (machineLabel) {
    case 'start':
    case 'waitInstances':
      return 'creating';
    case 'running':
      return instances.every((instance) => instancePhase(instance) === 'running') ? 'running' : 'degraded';
    case 'fence':
    case 'pick':
      return 'failing-over';
    case 'pause':
    case 'catchUp':
    case 'stopPrimary':
      return 'switching-over';
    case 'promote':
    case 'repoint':
    case 'route':
      return 'promoting';
    case 'rejoin':
      return 'rejoining';
    case 'destroy':
      return 'deleting';
    case 'waitDestroyed':
      return machineDone ? 'deleted' : 'deleting';
    case 'failed':
      return 'failed';
    default:
      return machineLabel;
  }
}
