import { type InstanceSpec, type InstanceStatus, type InstanceUsage, type RecordedUsage, type RejoinMethod, type UpstreamRef, dataPlaneLimitsMs } from '../dataplane/dataplane.js';
import { type MachineDefinition, type MachineRef, type Outcome, type StepContext, done, fail, hop, nap, stepTimeoutMarginMs } from '../engine/machine.js';
import { assert } from '../lib/assert.js';
import { HostUnreachableError } from '../lib/failure.js';
import type { InstanceId } from '../lib/ids.js';
import { type RestoreSpec, effectiveSettings, pastLockBound, storageUse, walKeepLimitMb } from '../lib/sizes.js';
import { type ClusterRecord, type InstanceRecord, type MachinePorts, hostKind } from './ports.js';

/**
 * One Postgres server: allocate a port, create the data directory (initdb or clone from the
 * primary), start it, wait until it serves (a replica: streams), then probe it on the high lane.
 * A lost replica is restarted in place; a lost primary (or any fenced instance) waits in `down`
 * for its cluster to decide: fail over (then `rejoin` as a replica) or restart it.
 */
export const instanceLabels = ['start', 'create', 'starting', 'waitReady', 'running', 'restart', 'down', 'rejoin', 'destroy'] as const;
export type InstanceLabel = (typeof instanceLabels)[number];

export interface InstanceData extends Record<string, unknown> {
  /** Clock time the current wait for readiness began; bounds it. */
  readonly waitSinceMs?: number;
  /** Clock time of the last full probe (a query); the process check in between is cheaper. */
  readonly lastProbeMs?: number;
  /** Clock time its use on disk was last measured (or tried): measured again `storage.usageIntervalMs` later. */
  readonly lastUsageMs?: number;
  /** The last measurement failed (said once in an event; the next success clears it). */
  readonly usageFailing?: boolean;
  /** Full probes in a row that found the process but could not query it. */
  readonly failedProbes?: number;
  /** Clock time the server stopped serving; an instance dead longer than the limit fails. */
  readonly downSinceMs?: number;
  /** A restored primary before its first start has finished: its recovery is still to run. */
  readonly restoring?: boolean;
  /** Rejoin (or destroy) found its host unreachable and said so once; it waits for the host (bounded: replicaDeadMsMax, or the host is lost). */
  readonly waitingForHost?: boolean;
}

export const instanceKind = 'instance';
/** Named here, not imported, because cluster.ts imports this module. */
const clusterKindName = 'cluster';
/** Short naps while provisioning: the floor of each step is tens of milliseconds. */
export const readyPollMs = 25;
export const readyWaitMsMax = 120_000;
export const replicaWaitForPrimaryMs = 250;
/** How often an instance on an unreachable host looks again whether it is back. */
const hostWaitPollMs = 1_000;
/** A full probe (connect and query) this often; it records LSNs, lag and recovery state. */
export const probeIntervalMs = 1_000;
/**
 * The process check this often when nothing watches the process's exit (an instance on another
 * host, whose heartbeats say whether it runs): a SIGKILLed primary is noticed within one high-lane
 * tick. A watched one (this host's: DataPlane.watchExit) wakes its machine when it exits, and the
 * machine ticks only for its probes.
 */
export const livenessIntervalMs = 200;
/** A primary within a fraction of a second's writing of the read-only threshold is measured this often (about 35 ms a walk of a 4 GB cluster). */
export const usageIntervalMsNearFull = 50;
/** The shortest nap of a running instance: the engine's own overhead per tick is of this order. */
const usageNapMsMin = 20;
/**
 * Starts of a restored primary whose server died in recovery before it fails: recovery replays
 * the same WAL to the same end each time, so more tries only make the user wait minutes of backoff.
 */
export const restoreStartAttemptsMax = 2;
/** Steps that only read and write the store still get this long. */
const stepTimeoutMsMin = 60_000;

/** The data-plane waits inside each label's step: the port's bounds (a restored primary's recovery runs inside start). */
function innerLimitMs(label: InstanceLabel): number {
  const limits = dataPlaneLimitsMs;
  switch (label) {
    case 'create':
      return Math.max(limits.createPrimary, limits.createReplica, limits.restorePrimary);
    case 'starting':
      return limits.start + limits.alive;
    case 'waitReady':
      return limits.status;
    case 'running':
      return limits.alive + limits.status + limits.usage;
    case 'rejoin':
      return limits.rejoin;
    case 'restart':
      return limits.stop;
    case 'destroy':
      return limits.destroy + limits.dropSlot;
    default:
      return 0;
  }
}

type Context = StepContext<InstanceLabel, InstanceData, MachinePorts>;
type Result = Outcome<InstanceLabel, InstanceData>;

export function slotNameFor(instanceId: InstanceId): string {
  // Instance ids are lower-case base32 with an underscore: already a valid slot name.
  return instanceId;
}

/**
 * What the data plane runs the instance with. `readOnly` (default: whether the cluster is marked
 * full) makes new transactions read-only (docs/STORAGE.md "Limits"): the storage guard configures
 * the servers with it before it marks the cluster, so every later write of the files keeps it.
 */
export function instanceSpec(cluster: ClusterRecord, instance: InstanceRecord, readOnly: boolean = cluster.storageFull !== null): InstanceSpec {
  assert(instance.port !== null, `instance ${instance.id} has no port yet`);
  const guard = readOnly ? { default_transaction_read_only: 'on' } : {};
  return {
    instanceId: instance.id,
    clusterId: cluster.id,
    host: instance.address,
    port: instance.port,
    peers: cluster.peerAddresses,
    pgVersion: cluster.spec.pgVersion,
    // Derived from the allocation, not a revision's setting: the drift check (effectiveSettings) never compares it.
    settings: { ...effectiveSettings(cluster.spec), max_slot_wal_keep_size: `${walKeepLimitMb(cluster.spec.storageGb)}MB`, ...guard },
    secrets: cluster.secrets,
  };
}

async function load(context: Context): Promise<{ cluster: ClusterRecord; instance: InstanceRecord }> {
  const { store } = context.ports;
  const instance = await store.instance(context.machine.entityId as InstanceId);
  assert(instance !== null, `instance ${context.machine.entityId} of machine ${context.machine.id} does not exist`);
  return { cluster: await store.cluster(instance.clusterId), instance };
}

async function primaryUpstream(context: Context, instance: InstanceRecord): Promise<UpstreamRef | null> {
  const siblings = await context.ports.store.instances(instance.clusterId);
  const primary = siblings.find((sibling) => sibling.role === 'primary');
  if (primary === undefined || primary.port === null || primary.machineLabel !== 'running' || primary.fenced) return null;
  return { host: primary.address, port: primary.port, slotName: slotNameFor(instance.id) };
}

async function allowOnPrimary(context: Context, cluster: ClusterRecord, instance: InstanceRecord): Promise<void> {
  const primary = (await context.ports.store.instances(instance.clusterId)).find((sibling) => sibling.role === 'primary');
  if (primary !== undefined && primary.port !== null) await context.ports.dataPlane.allowPeers(instanceSpec(cluster, primary));
}

function isReady(instance: InstanceRecord, status: InstanceStatus): boolean {
  if (!status.accepting) return false;
  return instance.role === 'primary' ? status.inRecovery === false : status.streaming === true;
}

const destroyRequested = (context: Context): boolean => context.signals.has('destroy');

async function start(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { store } = context.ports;
  const placed = await store.placeInstance(context.machine.entityId as InstanceId);
  const port = await store.allocatePort(context.machine.entityId as InstanceId);
  if (placed.why === null) return hop('create', { reason: `on host ${placed.hostName} (zone ${placed.zone}), port ${port} allocated`, code: 'port_allocated' });
  return hop('create', { reason: `placed on host ${placed.hostName} (zone ${placed.zone}): ${placed.why}; port ${port}`, code: 'instance_placed' });
}

async function create(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  const spec = instanceSpec(cluster, instance);
  if (instance.role === 'primary' && cluster.spec.restore !== undefined) {
    const restore = cluster.spec.restore;
    await context.ports.dataPlane.restorePrimary(spec, { ...restoreTarget(restore), clusterId: restore.sourceClusterId, backupId: restore.backupId, ...(await latestSource(context, restore)) });
    return hop('starting', { data: { ...context.machine.data, restoring: true }, reason: `restored from backup ${restore.backupId} of ${restore.sourceClusterId}; recovers to ${describeTarget(restore)} when started`, code: 'restored_from_backup' });
  }
  if (instance.role === 'primary') {
    await context.ports.dataPlane.createPrimary(spec);
    return hop('starting', { reason: 'data directory created', code: 'data_directory_created' });
  }
  const upstream = await primaryUpstream(context, instance);
  if (upstream === null) return nap(replicaWaitForPrimaryMs);
  // The primary's pg_hba names the cluster's hosts: one placed on a new host must be let in first.
  if (instance.address !== upstream.host) await allowOnPrimary(context, cluster, instance);
  await context.ports.dataPlane.createReplica(spec, upstream);
  return hop('starting', { reason: `cloned from the primary on port ${upstream.port}`, code: 'cloned_from_primary' });
}

function restoreTarget(restore: RestoreSpec): { targetTime?: string; targetLsn?: string } {
  if (restore.targetTime !== undefined) return { targetTime: restore.targetTime };
  if (restore.targetLsn !== undefined) return { targetLsn: restore.targetLsn };
  return {};
}

function describeTarget(restore: RestoreSpec): string {
  return restore.targetTime ?? restore.targetLsn ?? 'the end of the archive (latest)';
}

/**
 * The source's running primary, so that its current WAL is archived before recovery reads the
 * archive: latest then means now, and a target a moment ago is reachable.
 */
async function latestSource(context: Context, restore: RestoreSpec): Promise<{ sourcePrimary?: InstanceSpec }> {
  const { store } = context.ports;
  const source = await store.cluster(restore.sourceClusterId as ClusterRecord['id']);
  const primary = (await store.instances(source.id)).find((instance) => instance.role === 'primary' && instance.machineLabel === 'running' && !instance.fenced);
  return primary === undefined ? {} : { sourcePrimary: instanceSpec(source, primary) };
}

async function starting(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  // A fenced old primary must never come back as a primary: only rejoin may start it.
  if (instance.fenced) return hop('down', { reason: 'fenced by its cluster: not started', code: 'fenced_not_started' });
  const now = context.ports.clock.nowMs();
  const downSinceMs = context.machine.data.downSinceMs;
  if (downSinceMs !== undefined && now - downSinceMs > context.ports.ha.replicaDeadMsMax) {
    return fail(`not serving for more than ${context.ports.ha.replicaDeadMsMax} ms; its cluster replaces it`, 'not_serving');
  }
  try {
    await context.ports.dataPlane.start(instanceSpec(cluster, instance));
  } catch (error) {
    if (await recoveryDied(context, instance)) return fail(`restore failed: the server stopped during recovery ${restoreStartAttemptsMax} times: ${(error as Error).message}`, 'restore_failed');
    throw error;
  }
  return hop('waitReady', { data: { ...context.machine.data, waitSinceMs: now }, reason: 'server started', code: 'server_started' });
}

/** A slow recovery keeps its server alive and is retried as usual; a dead one is final after a few tries. */
async function recoveryDied(context: Context, instance: InstanceRecord): Promise<boolean> {
  if (context.machine.data.restoring !== true || context.machine.attempt + 1 < restoreStartAttemptsMax) return false;
  return !(await context.ports.dataPlane.alive(instance.id));
}

async function waitReady(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  const status = await context.ports.dataPlane.status(instanceSpec(cluster, instance));
  await context.ports.store.recordObserved(instance.id, status);
  if (isReady(instance, status)) {
    const reason = instance.role === 'primary' ? 'accepting writes' : 'streaming from the primary';
    return hop('running', { data: { lastProbeMs: context.ports.clock.nowMs() }, reason, code: 'instance_ready', wake: await wakeOnReady(context, instance) });
  }
  const waitedMs = context.ports.clock.nowMs() - (context.machine.data.waitSinceMs ?? context.ports.clock.nowMs());
  if (waitedMs > readyWaitMsMax) return fail(`not ready after ${readyWaitMsMax} ms (running=${status.running}, accepting=${status.accepting})`, 'not_ready_in_time');
  if (!status.running) return hop('starting', { reason: 'server exited before it was ready', code: 'exited_before_ready' });
  return nap(readyPollMs);
}

/** The primary becoming ready wakes the replicas waiting to clone it; any instance wakes its cluster. */
async function wakeOnReady(context: Context, instance: InstanceRecord): Promise<MachineRef[]> {
  const cluster = { kind: clusterKindName, entityId: instance.clusterId };
  if (instance.role !== 'primary') return [cluster];
  const siblings = await context.ports.store.instances(instance.clusterId);
  return [cluster, ...siblings.filter((sibling) => sibling.id !== instance.id).map((sibling) => ({ kind: instanceKind, entityId: sibling.id }))];
}

const clusterOf = (instance: InstanceRecord): MachineRef => ({ kind: clusterKindName, entityId: instance.clusterId });

/**
 * Health: the process check every tick (a process that is gone is a definite signal), a full
 * probe every second (a server that cannot be queried counts only after N probes in a row).
 * Any change a cluster acts on (serving, streaming, recovery) wakes the cluster at once.
 */
async function running(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  if (context.signals.has('restart')) return hop('restart', { consume: ['restart'], reason: 'restarting to take new settings', code: 'restart_requested_for_change' });
  const { cluster, instance } = await load(context);
  try {
    return await probe(context, cluster, instance);
  } catch (error) {
    // Its host silent past its lease: nothing there can be asked; the cluster acts (or it waits).
    if (error instanceof HostUnreachableError) return lost(context, instance, error.message, 'host_unreachable');
    throw error;
  }
}

async function probe(context: Context, cluster: ClusterRecord, instance: InstanceRecord): Promise<Result> {
  const { dataPlane, store, clock, ha } = context.ports;
  // A watched postmaster's exit wakes this machine, which then ticks only for its probes.
  const watched = await dataPlane.watchExit(instance.id);
  if (!watched && !(await dataPlane.alive(instance.id))) return lost(context, instance, 'server process is gone');
  const now = clock.nowMs();
  const data = context.machine.data;
  const lastProbeMs = data.lastProbeMs ?? 0;
  if (now - lastProbeMs < probeIntervalMs) {
    // Near the read-only threshold a primary is measured between full probes too (usageIntervalFor).
    const usage = await measureWhenDue(context, cluster, instance, now);
    const tickMs = watched ? lastProbeMs + probeIntervalMs - now : livenessIntervalMs;
    const napMs = nextNapMs(context, cluster, instance, data.lastUsageMs, usage, now, tickMs);
    if (usage === null) return nap(napMs);
    return nap(napMs, { data: { ...withoutUsage(data), ...usage.data }, wake: usage.wake, ...usage.event });
  }
  const status = await dataPlane.observe(instanceSpec(cluster, instance));
  await store.recordObserved(instance.id, status);
  const usage = await measureWhenDue(context, cluster, instance, now);
  const usageData = usage?.data ?? usageFieldsOf(data);
  const wake = healthChanged(instance.observed, status) || (usage?.wake.length ?? 0) > 0 ? [clusterOf(instance)] : [];
  const napMs = nextNapMs(context, cluster, instance, data.lastUsageMs, usage, now, watched ? probeIntervalMs : livenessIntervalMs);
  if (status.accepting) return nap(napMs, { data: { lastProbeMs: now, failedProbes: 0, ...usageData }, wake, ...usage?.event });
  const failedProbes = (data.failedProbes ?? 0) + 1;
  if (instance.role === 'primary' && failedProbes >= ha.unreachableProbesMax) {
    return lost(context, instance, `cannot be queried: ${failedProbes} probes in a row failed`);
  }
  return nap(napMs, { data: { lastProbeMs: now, failedProbes, ...usageData }, wake, ...usage?.event });
}

/**
 * The next tick (`tickMs`: the liveness tick, or the next probe when the process's exit is
 * watched), or sooner when the next measurement of use is due before it: counted from when this
 * step began, so the walk and the store's writes do not stretch a near-full primary's
 * measurements apart (bench/storage).
 */
function nextNapMs(context: Context, cluster: ClusterRecord, instance: InstanceRecord, lastUsageMs: number | undefined, usage: MeasuredUsage | null, stepStartMs: number, tickMs: number): number {
  const measuredAtMs = usage === null ? lastUsageMs : stepStartMs;
  if (measuredAtMs === undefined) return Math.max(usageNapMsMin, tickMs);
  const current = usage === null ? instance : { ...instance, usage: usage.figure };
  const dueMs = measuredAtMs + usageIntervalFor(context.ports.storage, cluster, current) - context.ports.clock.nowMs();
  return Math.max(usageNapMsMin, Math.min(tickMs, dueMs));
}

type UsageData = Pick<InstanceData, 'lastUsageMs' | 'usageFailing'>;

/** The machine's data without its usage fields. */
function withoutUsage(data: InstanceData): InstanceData {
  const { lastUsageMs: _last, usageFailing: _failing, ...rest } = data;
  return rest;
}

/** Just the machine's usage fields, carried into a probe's new data when nothing was measured. */
function usageFieldsOf(data: InstanceData): UsageData {
  const { lastUsageMs, usageFailing } = data;
  return { ...(lastUsageMs === undefined ? {} : { lastUsageMs }), ...(usageFailing === true ? { usageFailing } : {}) };
}

/**
 * How long after its last measurement an instance is measured again: `usageIntervalMs`, except a
 * primary, which is measured as soon as writing at `writeRateMbPerSecond` could have carried it
 * across the read-only threshold (either way), at most once per liveness tick. So the bytes
 * written past the threshold before it is seen are bounded by that rate times one tick, and a
 * primary far from full costs one walk per interval (docs/STORAGE.md "Limits").
 */
export function usageIntervalFor(storage: MachinePorts['storage'], cluster: ClusterRecord, instance: InstanceRecord): number {
  const use = instance.role === 'primary' ? storageUse(cluster.spec.storageGb, storage.gbBytes, instance.usage, storage.readOnlyLeadMs) : null;
  if (use === null) return storage.usageIntervalMs;
  // From where the guard judges it (its lead ahead at the growth measured), to the threshold.
  const gapBytes = (Math.abs(storage.readOnlyPercent - use.projectedPercent) / 100) * use.allocatedBytes;
  const gapMs = (gapBytes / (storage.writeRateMbPerSecond * 1024 ** 2)) * 1000;
  return Math.max(usageIntervalMsNearFull, Math.min(storage.usageIntervalMs, gapMs));
}

/** Which side of each of the cluster's storage thresholds a use is on: a change wakes the cluster. */
function storageBand(storage: MachinePorts['storage'], cluster: ClusterRecord, usage: InstanceRecord['usage']): number {
  const use = storageUse(cluster.spec.storageGb, storage.gbBytes, usage, storage.readOnlyLeadMs);
  if (use === null) return 0;
  const thresholds = [storage.warnPercent, ...(cluster.autogrow === null ? [] : [cluster.autogrow.thresholdPercent])];
  // The read-only threshold as the guard judges it: its lead ahead (storageAction).
  const readOnly = use.projectedPercent >= storage.readOnlyPercent ? 1 : 0;
  // A full cluster writing on past its mark: the guard locks it (its hard stop).
  const locking = cluster.storageFull !== null && cluster.storageFull.locked !== true && pastLockBound(use, cluster.storageFull) ? 1 : 0;
  return thresholds.filter((threshold) => use.percent >= threshold).length + readOnly + locking;
}

/**
 * Its use on disk, when due (usageIntervalFor; a walk of the data directory is far dearer than a
 * probe); null when not due. A measurement that fails never makes the instance lost: the last
 * figure stays, the failure is said once, and the next interval tries again. A primary whose use
 * crossed a storage threshold wakes its cluster, which guards the storage.
 */
interface MeasuredUsage {
  readonly data: UsageData;
  /** The new figure; null when the measurement failed. */
  readonly figure: InstanceUsage | null;
  readonly wake: MachineRef[];
  readonly event: { reason?: string; code?: 'usage_unmeasured' };
}

async function measureWhenDue(context: Context, cluster: ClusterRecord, instance: InstanceRecord, now: number): Promise<MeasuredUsage | null> {
  const { lastUsageMs, usageFailing } = context.machine.data;
  const { storage } = context.ports;
  // A walk that keeps failing is tried once per interval, not at a near-full primary's pace: the message says so.
  const intervalMs = usageFailing === true ? storage.usageIntervalMs : usageIntervalFor(storage, cluster, instance);
  if (lastUsageMs !== undefined && now - lastUsageMs < intervalMs) return null;
  try {
    const measured = await context.ports.dataPlane.usage(instanceSpec(cluster, instance));
    const growth = usageFailing === true ? undefined : growthBytesPerSecond(instance.usage, lastUsageMs, measured, now);
    const usage: RecordedUsage = growth === undefined ? measured : { ...measured, growthBytesPerSecond: growth };
    await context.ports.store.recordUsage(instance.id, usage);
    const crossed = instance.role === 'primary' && storageBand(storage, cluster, usage) !== storageBand(storage, cluster, instance.usage);
    return { data: { lastUsageMs: now }, figure: usage, wake: crossed ? [clusterOf(instance)] : [], event: {} };
  } catch (error) {
    // An unreachable host is the probe's business (it makes the instance lost on its own terms), not this figure's.
    if (error instanceof HostUnreachableError) throw error;
    if (usageFailing === true) return { data: { lastUsageMs: now, usageFailing }, figure: null, wake: [], event: {} };
    const reason = `could not measure its use on disk: ${(error as Error).message}; the last figure is kept and it is measured again in ${storage.usageIntervalMs} ms`;
    return { data: { lastUsageMs: now, usageFailing: true }, figure: null, wake: [], event: { reason, code: 'usage_unmeasured' } };
  }
}

/**
 * How fast data and WAL grew from the measurement before (its figure and clock time) to this one
 * (taken at `nowMs`); undefined without a measurement before or across more than
 * `growthWindowMsMax`. Shrinking counts as no growth (storageUse).
 */
export function growthBytesPerSecond(before: InstanceUsage | null, beforeMs: number | undefined, after: InstanceUsage, nowMs: number): number | undefined {
  if (before === null || beforeMs === undefined) return undefined;
  const elapsedMs = nowMs - beforeMs;
  if (elapsedMs <= 0 || elapsedMs > growthWindowMsMax) return undefined;
  const grownBytes = after.dataBytes + after.walBytes - (before.dataBytes + before.walBytes);
  return Math.round((grownBytes * 1000) / elapsedMs);
}
const growthWindowMsMax = 60_000;

function healthChanged(before: Partial<InstanceStatus>, after: InstanceStatus): boolean {
  return before.accepting !== after.accepting || before.streaming !== after.streaming || before.inRecovery !== after.inRecovery;
}

/** A replica is restarted in place; a primary, or a fenced instance, waits for its cluster. */
function lost(context: Context, instance: InstanceRecord, why: string, code: 'instance_lost' | 'host_unreachable' = 'instance_lost'): Result {
  const data = { downSinceMs: context.ports.clock.nowMs() };
  const wake = [clusterOf(instance)];
  if (instance.role === 'primary' || instance.fenced) return hop('down', { data, wake, reason: `${why}; its cluster decides what happens next`, code });
  return hop('starting', { data, wake, reason: `${why}; starting it again`, code });
}

/**
 * A clean stop, then the usual start, which writes the instance's files from the spec first: how
 * restart parameters reach a server (docs/CONFIG.md). The cluster does not fail over meanwhile:
 * only `down` means lost.
 */
async function restart(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  await context.ports.dataPlane.stop(context.machine.entityId as InstanceId, 'fast');
  return hop('starting', { data: {}, reason: 'stopped cleanly for its restart', code: 'restart_requested_for_change' });
}

/** Waits for the cluster: `rejoin` after a failover or switchover, `restart` when there is no one to fail over to. */
async function down(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  if (context.signals.has('rejoin')) return hop('rejoin', { consume: ['rejoin'], reason: 'rejoining as a replica of the new primary', code: 'rejoin_requested' });
  if (context.signals.has('restart')) return hop('starting', { consume: ['restart'], data: {}, reason: 'its cluster restarts it in place', code: 'restart_requested' });
  return nap(probeIntervalMs);
}

/** The old primary becomes a replica of the new one: rewound (or cloned afresh), then started. */
async function rejoin(context: Context): Promise<Result> {
  if (destroyRequested(context)) return hop('destroy');
  const { cluster, instance } = await load(context);
  assert(instance.role === 'replica', `instance ${instance.id} was asked to rejoin while it is the primary`);
  const upstream = await primaryUpstream(context, instance);
  if (upstream === null) return nap(replicaWaitForPrimaryMs);
  let method: RejoinMethod;
  try {
    method = await context.ports.dataPlane.rejoin(instanceSpec(cluster, instance), upstream);
  } catch (error) {
    if (!(error instanceof HostUnreachableError)) throw error;
    // A host cut off for a while comes back and its old primary rejoins; one lost for good is replaced.
    const now = context.ports.clock.nowMs();
    const downSinceMs = context.machine.data.downSinceMs ?? now;
    if (now - downSinceMs > context.ports.ha.replicaDeadMsMax) return fail(`${error.message}; not back within ${context.ports.ha.replicaDeadMsMax} ms, so its cluster replaces it`, 'not_serving');
    const data = { ...context.machine.data, downSinceMs };
    if (context.machine.data.waitingForHost === true) return nap(hostWaitPollMs, { data });
    return nap(hostWaitPollMs, { data: { ...data, waitingForHost: true }, reason: `${error.message}: rejoins when it is back`, code: 'waiting_for_host' });
  }
  // Its data directory is now a standby's: safe to route to once it streams.
  await context.ports.store.setFenced(instance.id, false);
  const how = method === 'rewound' ? "rewound onto the new primary's timeline" : 'cloned afresh from the new primary (rewind was not possible)';
  return hop('starting', { data: {}, reason: how, code: method === 'rewound' ? 'rewound' : 'cloned_afresh' });
}

async function destroy(context: Context): Promise<Result> {
  const { store, dataPlane } = context.ports;
  const instanceId = context.machine.entityId as InstanceId;
  const instance = await store.instance(instanceId);
  if (instance === null) return done({ consume: ['destroy'], reason: 'already gone', code: 'instance_deleted' });
  // A lost host is not coming back for it: the instance leaves the cell and its data stays there.
  const onLostHost = instance.hostState === 'lost';
  if (!onLostHost) {
    try {
      await dataPlane.destroy(instanceId);
    } catch (error) {
      if (!(error instanceof HostUnreachableError)) throw error;
      // Bounded by the host: back (the destroy runs), or lost after CELLAR_HOST_LOST_MS (it is skipped).
      if (context.machine.data.waitingForHost === true) return nap(hostWaitPollMs);
      return nap(hostWaitPollMs, { data: { ...context.machine.data, waitingForHost: true }, reason: `${error.message}: deleted once it is back, or once it is lost`, code: 'waiting_for_host' });
    }
  }
  if (instance.role === 'replica') await dropSlotOnPrimary(context, instance);
  await store.releasePort(instanceId);
  await store.markInstanceDeleted(instanceId);
  const wake: MachineRef[] = [{ kind: clusterKindName, entityId: instance.clusterId }, ...(instance.hostId === null ? [] : [{ kind: hostKind, entityId: instance.hostId }])];
  if (onLostHost) return done({ consume: ['destroy'], reason: 'deleted from the cell; its host is lost, so its data stays on that host', code: 'instance_deleted_on_lost_host', wake });
  return done({ consume: ['destroy'], reason: 'server stopped, data and port released', code: 'instance_deleted', wake });
}

/** The slot that kept WAL for this replica; a primary on a silent host keeps it (bounded by max_slot_wal_keep_size). */
async function dropSlotOnPrimary(context: Context, instance: InstanceRecord): Promise<void> {
  const siblings = await context.ports.store.instances(instance.clusterId);
  const primary = siblings.find((sibling) => sibling.role === 'primary' && sibling.port !== null);
  if (primary === undefined || primary.port === null || primary.hostState === 'lost') return;
  const cluster = await context.ports.store.cluster(instance.clusterId);
  const upstream = { host: primary.address, port: primary.port, slotName: slotNameFor(instance.id) };
  try {
    await context.ports.dataPlane.dropSlot(upstream, cluster.secrets);
  } catch (error) {
    if (!(error instanceof HostUnreachableError)) throw error;
  }
}

export const instanceMachine: MachineDefinition<InstanceLabel, InstanceData, MachinePorts> = {
  kind: instanceKind,
  initial: 'start',
  transitions: {
    start: ['create', 'destroy'],
    create: ['starting', 'destroy'],
    starting: ['waitReady', 'down', 'destroy'],
    waitReady: ['running', 'starting', 'destroy'],
    running: ['starting', 'restart', 'down', 'destroy'],
    restart: ['starting', 'destroy'],
    down: ['starting', 'rejoin', 'destroy'],
    rejoin: ['starting', 'destroy'],
    destroy: [],
    // A failed instance is deleted (its cluster replaces it, or is deleted itself).
    failed: ['destroy'],
  },
  resumeOn: { destroy: 'destroy' },
  steps: { start, create, starting, waitReady, running, restart, down, rejoin, destroy },
  // Provisioning and health probes are latency-sensitive: everything an instance does is high lane.
  lane: () => 'high',
  // A restored primary's start includes its recovery: as long as a create.
  stepTimeoutMs: (label) => Math.max(stepTimeoutMsMin, innerLimitMs(label) + stepTimeoutMarginMs),
  innerLimitMs,
};

/** The phase a person sees for an instance, from its machine label and what was last observed. */
export function instancePhase(instance: Pick<InstanceRecord, 'machineLabel' | 'observed'>): string {
  switch (instance.machineLabel) {
    case 'start':
    case 'create':
      return 'creating';
    case 'starting':
    case 'waitReady':
      return 'starting';
    case 'running':
      return instance.observed.accepting === false ? 'unreachable' : 'running';
    case 'down':
      return 'down';
    case 'restart':
      return 'restarting';
    case 'rejoin':
      return 'rejoining';
    case 'destroy':
      return 'deleting';
    case 'failed':
      return 'failed';
    default:
      return instance.machineLabel;
  }
}
