import { type MachineDefinition, type MachineRef, type Outcome, type StepContext, done, hop, nap } from '../engine/machine.js';
import type { EventCode } from '../lib/event-codes.js';
import { type HostObservation, type HostPorts, clusterKind, hostJoinedSignal, hostKind } from './ports.js';

/**
 * A database host of the cell (docs/HOSTS.md, "Hosts as machines"). The API moves it by signals:
 * the agent listener raises `joined` when the host's agent joins with its token, `hosts drain`
 * and `hosts undrain` raise `drain` and `undrain`, `hosts remove` raises `remove`. The machine
 * itself notices a host gone silent: its lease expired for longer than `lostMs` makes it `lost`,
 * and a renewed lease makes it `active` again.
 *
 * Only `active` hosts take new instances (lib/placement). While a host is `draining` or `lost`,
 * its clusters move their instances elsewhere (the cluster machine's `running` step, woken when
 * the host enters either label); a draining host with no live instance left is `drained`.
 */
export const hostLabels = ['joining', 'active', 'draining', 'drained', 'lost', 'removed'] as const;
export type HostLabel = (typeof hostLabels)[number];
export type HostData = Record<string, unknown>;

export { hostKind } from './ports.js';
export type { HostPorts } from './ports.js';
/** Raised by the agent listener when the host's agent joined. */
export const joinedSignal = hostJoinedSignal;
/** Raised by `hosts remove` (the store has already revoked the certificates and marked the row removed). */
export const removeSignal = 'remove';
/** Raised by `hosts drain` (the API has checked that the host's instances can be placed elsewhere). */
export const drainSignal = 'drain';
/** Raised by `hosts undrain`: a host back from maintenance (or a drain called off) takes instances again. */
export const undrainSignal = 'undrain';
/** Signals nudge the machine at once; between them an idle host only looks again this often. */
export const hostWatchNapMs = 60_000;
/** An active host looks again no sooner than this when it is about to be lost (the nap is otherwise exact). */
export const lostCheckNapMsMin = 250;
/** A draining host counts its instances this often (each deleted instance also wakes it). */
export const drainPollMs = 1_000;
/** A lost host looks this often whether its agent renews its lease again. */
export const lostPollMs = 1_000;
const hostStepTimeoutMs = 30_000;

/** The labels whose instances their clusters replace elsewhere. */
export const evacuatedHostLabels: readonly string[] = ['draining', 'lost'];

export function isEvacuated(hostState: string | null): boolean {
  return hostState !== null && evacuatedHostLabels.includes(hostState);
}

type Context = StepContext<HostLabel, HostData, HostPorts>;
type Result = Outcome<HostLabel, HostData>;

const hostIdOf = (context: Context): string => context.machine.entityId;

async function observe(context: Context): Promise<HostObservation> {
  // A host's row outlives its machine (removal only marks it), so a missing one reads as empty.
  return (await context.ports.hosts.observeHost(hostIdOf(context))) ?? { leaseExpiredForMs: null, liveInstances: 0, clusterIds: [] };
}

function isLost(context: Context, observed: HostObservation): boolean {
  return observed.leaseExpiredForMs !== null && observed.leaseExpiredForMs > context.ports.lostMs;
}

function clustersOf(observed: HostObservation): MachineRef[] {
  return observed.clusterIds.map((entityId) => ({ kind: clusterKind, entityId }));
}

/** Signals this label has no use for are consumed, so that a stale one does not act later. */
function stale(context: Context, names: readonly string[]): string[] {
  return names.filter((name) => context.signals.has(name));
}

async function joining(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed before its agent joined');
  if (context.signals.has(joinedSignal)) {
    return hop('active', { consume: [joinedSignal], reason: 'the agent joined with its token and has its certificate', code: 'host_joined' });
  }
  return nap(hostWatchNapMs);
}

async function active(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed: its certificates are revoked');
  const observed = await observe(context);
  if (context.signals.has(drainSignal)) {
    return hop('draining', {
      consume: [drainSignal, ...stale(context, [undrainSignal])],
      wake: clustersOf(observed),
      reason: `draining: its ${observed.liveInstances} instance(s) move to other hosts, replicas first, then primaries by switchover`,
      code: 'host_draining',
    });
  }
  if (isLost(context, observed)) return becomeLost(context, observed);
  // A join signal raised again (a second join is refused by the store) or an undrain of an active host has nothing left to do.
  const consume = stale(context, [joinedSignal, undrainSignal]);
  return nap(untilLostMs(context, observed), consume.length === 0 ? {} : { consume });
}

/** Exactly until the host would be lost if it stays silent, so that a host lost is noticed on time without polling. */
function untilLostMs(context: Context, observed: HostObservation): number {
  if (observed.leaseExpiredForMs === null) return hostWatchNapMs;
  return Math.min(hostWatchNapMs, Math.max(lostCheckNapMsMin, context.ports.lostMs - observed.leaseExpiredForMs));
}

function becomeLost(context: Context, observed: HostObservation): Result {
  return hop('lost', {
    consume: stale(context, [drainSignal, undrainSignal]),
    wake: clustersOf(observed),
    reason: `lost: its lease expired ${Math.round(observed.leaseExpiredForMs ?? 0)} ms ago (more than CELLAR_HOST_LOST_MS=${context.ports.lostMs}); its ${observed.liveInstances} instance(s) are replaced on other hosts`,
    code: 'host_lost',
  });
}

async function draining(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed while draining: its certificates are revoked');
  const observed = await observe(context);
  if (context.signals.has(undrainSignal)) {
    return hop('active', { consume: [undrainSignal, ...stale(context, [drainSignal])], reason: 'drain called off: the host takes instances again', code: 'host_undrained' });
  }
  // A draining host that goes silent is lost: its instances are replaced without waiting for it.
  if (isLost(context, observed)) return becomeLost(context, observed);
  if (observed.liveInstances === 0) {
    return hop('drained', { consume: stale(context, [drainSignal]), reason: 'drained: no instance is left on the host; it can be patched or removed', code: 'host_drained' });
  }
  const consume = stale(context, [drainSignal, joinedSignal]);
  return nap(drainPollMs, consume.length === 0 ? {} : { consume });
}

async function drained(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed after its drain: its certificates are revoked');
  if (context.signals.has(undrainSignal)) {
    return hop('active', { consume: [undrainSignal, ...stale(context, [drainSignal])], reason: 'back from maintenance: the host takes instances again', code: 'host_undrained' });
  }
  // A drained host is expected to go silent (it is being patched): it is never counted lost.
  const consume = stale(context, [drainSignal, joinedSignal]);
  return nap(hostWatchNapMs, consume.length === 0 ? {} : { consume });
}

async function lost(context: Context): Promise<Result> {
  if (context.signals.has(removeSignal)) return removed(context, 'removed while lost: its certificates are revoked');
  const observed = await observe(context);
  const consume = stale(context, [drainSignal, undrainSignal, joinedSignal]);
  if (observed.leaseExpiredForMs !== null && observed.leaseExpiredForMs < 0) {
    return hop('active', { consume, reason: 'heard from again: its agent renewed its lease; it takes instances again', code: 'host_back' });
  }
  return nap(lostPollMs, consume.length === 0 ? {} : { consume });
}

function removed(context: Context, reason: string): Result {
  const consume = stale(context, [removeSignal, joinedSignal, drainSignal, undrainSignal]);
  return hop('removed', { consume, reason, code: 'host_removed' satisfies EventCode });
}

async function finish(): Promise<Result> {
  return done();
}

export const hostMachine: MachineDefinition<HostLabel, HostData, HostPorts> = {
  kind: hostKind,
  initial: 'joining',
  transitions: {
    joining: ['active', 'removed'],
    active: ['draining', 'lost', 'removed'],
    draining: ['drained', 'active', 'lost', 'removed'],
    drained: ['active', 'removed'],
    lost: ['active', 'removed'],
    removed: [],
  },
  steps: { joining, active, draining, drained, lost, removed: finish },
  lane: () => 'normal',
  stepTimeoutMs: () => hostStepTimeoutMs,
};
