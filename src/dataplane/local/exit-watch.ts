import type { InstanceId } from '../../lib/ids.js';
import { isAlive } from '../../postgres/server.js';

/**
 * How often the watched postmasters are looked at: a kill(0) and a read of /proc/<pid>/stat
 * each, microseconds. A SIGKILLed server is reported within this, sooner than the liveness tick
 * that would otherwise find it (livenessIntervalMs, 200 ms).
 */
const exitWatchPollMs = 100;
/** Servers watched at once at most; a host runs far fewer (its port range bounds them). */
const exitWatchEntriesMax = 10_000;

export type ExitListener = (instanceId: InstanceId) => void;

/**
 * The postmasters of this host's instances, each watched from when a running instance's machine
 * asks until it exits: then the listener (the control plane's wake of the instance's machine) is
 * called once and the entry dropped. One timer for all of them, running only while one is watched.
 * A pid reused by another process before a look would read as alive: the instance's full probe
 * (every second, which checks that the pid is this data directory's postmaster) still finds it gone.
 */
export class ExitWatch {
  private readonly pids = new Map<InstanceId, number>();
  private timer: NodeJS.Timeout | null = null;
  private listener: ExitListener | null = null;

  /** Who is told of an exit; until one is given nothing is watched (an agent's planes have none). */
  onExit(listener: ExitListener): void {
    this.listener = listener;
  }

  /** Watches `pid` as the postmaster of `instanceId` (a newer pid replaces an older); false when nothing can be told or the table is full. */
  watch(instanceId: InstanceId, pid: number): boolean {
    if (this.listener === null) return false;
    if (!this.pids.has(instanceId) && this.pids.size >= exitWatchEntriesMax) return false;
    this.pids.set(instanceId, pid);
    if (this.timer === null) {
      this.timer = setInterval(() => this.look(), exitWatchPollMs);
      this.timer.unref();
    }
    return true;
  }

  private look(): void {
    // Deleting the entry being visited is safe while iterating a Map.
    for (const [instanceId, pid] of this.pids) {
      if (isAlive(pid)) continue;
      this.pids.delete(instanceId);
      this.listener?.(instanceId);
    }
    if (this.pids.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}
