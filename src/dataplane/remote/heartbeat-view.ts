import type { Clock } from '../../lib/clock.js';
import type { HeartbeatRequest } from '../agent-protocol.js';
import type { InstanceStatus } from '../dataplane.js';

/**
 * What the control plane knows of instances on other hosts from their agents' heartbeats
 * (docs/HOSTS.md, "Operations"): `alive()` of such an instance is answered from here, never by a
 * connection to the host.
 */
export interface HeartbeatView {
  /** Whether the instance's postmaster runs, from its host's latest fresh beat; undefined without one. */
  aliveOf(instanceId: string): boolean | undefined;
}

/** A beat older than this many intervals is not fresh: the host may be cut off. */
export const freshBeatIntervals = 3;

interface ReceivedBeat {
  readonly beat: HeartbeatRequest;
  readonly receivedAtMs: number;
  readonly byInstance: ReadonlyMap<string, HeartbeatRequest['instances'][number]>;
}

/** The latest beat of each host, and which host last reported each instance. */
export class HeartbeatBook implements HeartbeatView {
  private readonly beats = new Map<string, ReceivedBeat>();
  private readonly hostOfInstance = new Map<string, string>();

  /** Silence is counted from here for a host not heard from since: a control plane just started has heard no one yet. */
  private readonly startedAtMs: number;

  constructor(
    private readonly heartbeatMs: number,
    private readonly clock: Clock,
  ) {
    this.startedAtMs = clock.nowMs();
  }

  /** How long since the host was last heard from (or since this book began, if never). */
  silentMs(hostId: string): number {
    return this.clock.nowMs() - (this.beats.get(hostId)?.receivedAtMs ?? this.startedAtMs);
  }

  /** Whether the instance's postmaster ran at the host's latest beat, however old; undefined if never reported. */
  lastAliveOn(hostId: string, instanceId: string): boolean | undefined {
    const received = this.beats.get(hostId);
    return received === undefined ? undefined : (received.byInstance.get(instanceId)?.alive ?? false);
  }

  /** `receivedAtMs` on `clock`: when the control plane read the beat. */
  record(hostId: string, beat: HeartbeatRequest, receivedAtMs: number): void {
    const previous = this.beats.get(hostId);
    // Beats of one host may be handled out of order; the older one says nothing new.
    if (previous !== undefined && previous.receivedAtMs > receivedAtMs) return;
    const byInstance = new Map(beat.instances.map((instance) => [instance.instanceId, instance]));
    for (const instanceId of previous?.byInstance.keys() ?? []) {
      if (!byInstance.has(instanceId) && this.hostOfInstance.get(instanceId) === hostId) this.hostOfInstance.delete(instanceId);
    }
    for (const instanceId of byInstance.keys()) this.hostOfInstance.set(instanceId, hostId);
    this.beats.set(hostId, { beat, receivedAtMs, byInstance });
  }

  /** A host removed from the cell: its beats are forgotten. */
  forget(hostId: string): void {
    const previous = this.beats.get(hostId);
    for (const instanceId of previous?.byInstance.keys() ?? []) if (this.hostOfInstance.get(instanceId) === hostId) this.hostOfInstance.delete(instanceId);
    this.beats.delete(hostId);
  }

  isFresh(hostId: string): boolean {
    const received = this.beats.get(hostId);
    return received !== undefined && this.clock.nowMs() - received.receivedAtMs <= freshBeatIntervals * this.heartbeatMs;
  }

  /** From the beats of whichever host last reported the instance. */
  aliveOf(instanceId: string): boolean | undefined {
    const hostId = this.hostOfInstance.get(instanceId);
    return hostId === undefined ? undefined : this.aliveOn(hostId, instanceId);
  }

  /**
   * One host's view, for the AgentClient of that host: a fresh beat that does not list the
   * instance means no postmaster runs for it there (the agent lists every instance it has).
   */
  forHost(hostId: string): HeartbeatView {
    return { aliveOf: (instanceId) => this.aliveOn(hostId, instanceId) };
  }

  private aliveOn(hostId: string, instanceId: string): boolean | undefined {
    if (!this.isFresh(hostId)) return undefined;
    return this.beats.get(hostId)?.byInstance.get(instanceId)?.alive ?? false;
  }

  /** The last full status of the instance in its host's latest beat, and its age now, however old the beat. */
  lastStatusOn(hostId: string, instanceId: string): { readonly status: InstanceStatus; readonly ageMs: number } | undefined {
    const received = this.beats.get(hostId);
    const entry = received?.byInstance.get(instanceId);
    if (received === undefined || entry?.status === undefined) return undefined;
    return { status: entry.status, ageMs: (entry.statusAgeMs ?? 0) + (this.clock.nowMs() - received.receivedAtMs) };
  }

  /** The last full status the instance's host reported, and how old it was then; undefined without a fresh beat. */
  statusOf(instanceId: string): { readonly status: InstanceStatus; readonly ageMs: number } | undefined {
    const hostId = this.hostOfInstance.get(instanceId);
    if (hostId === undefined || !this.isFresh(hostId)) return undefined;
    const received = this.beats.get(hostId);
    const entry = received?.byInstance.get(instanceId);
    if (received === undefined || entry?.status === undefined) return undefined;
    return { status: entry.status, ageMs: (entry.statusAgeMs ?? 0) + (this.clock.nowMs() - received.receivedAtMs) };
  }
}
