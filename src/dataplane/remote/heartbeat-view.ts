import type { Clock } from '../../lib/clock.js';
import type { HeartbeatRequest } from '../agent-protocol.js';
import type { InstanceStatus } from '../dataplane.js';

/**
 * What the control plane knows of other hosts from their agents' heartbeats (docs/HOSTS.md,
 * "Operations"): how long each has been silent, and what its latest beat said of each instance.
 * The router answers `alive` and `observe` of another host's instance from here.
 */

interface ReceivedBeat {
  readonly receivedAtMs: number;
  readonly byInstance: ReadonlyMap<string, HeartbeatRequest['instances'][number]>;
}

/** The latest beat of each host (one entry per host of the cell). */
export class HeartbeatBook {
  private readonly beats = new Map<string, ReceivedBeat>();
  /** Silence is counted from here for a host not heard from since: a control plane just started has heard no one yet. */
  private readonly startedAtMs: number;

  constructor(private readonly clock: Clock) {
    this.startedAtMs = clock.nowMs();
  }

  /** `receivedAtMs` on `clock`: when the control plane read the beat. */
  record(hostId: string, beat: HeartbeatRequest, receivedAtMs: number): void {
    const previous = this.beats.get(hostId);
    // Beats of one host may be handled out of order; the older one says nothing new.
    if (previous !== undefined && previous.receivedAtMs > receivedAtMs) return;
    this.beats.set(hostId, { receivedAtMs, byInstance: new Map(beat.instances.map((instance) => [instance.instanceId, instance])) });
  }

  /** How long since the host was last heard from (or since this book began, if never). */
  silentMs(hostId: string): number {
    return this.clock.nowMs() - (this.beats.get(hostId)?.receivedAtMs ?? this.startedAtMs);
  }

  /** Whether the instance's postmaster ran at the host's latest beat; false when the beat did not list it, undefined without a beat. */
  lastAliveOn(hostId: string, instanceId: string): boolean | undefined {
    const received = this.beats.get(hostId);
    return received === undefined ? undefined : (received.byInstance.get(instanceId)?.alive ?? false);
  }

  /** The last full status of the instance in its host's latest beat, and its age now. */
  lastStatusOn(hostId: string, instanceId: string): { readonly status: InstanceStatus; readonly ageMs: number } | undefined {
    const received = this.beats.get(hostId);
    const entry = received?.byInstance.get(instanceId);
    if (received === undefined || entry?.status === undefined) return undefined;
    return { status: entry.status, ageMs: (entry.statusAgeMs ?? 0) + (this.clock.nowMs() - received.receivedAtMs) };
  }
}
