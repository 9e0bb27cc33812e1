import type { BackupCheck, BaseBackupInfo, ClusterSecrets, DataPlane, HostDirectory, HostTarget, InstanceSpec, InstanceStatus, InstanceUsage, RejoinMethod, RestoreSource, ServerSetting, UpstreamRef } from '../dataplane.js';
import type { InstanceId } from '../../lib/ids.js';
import { currentAbortSignal, runWithAbortSignal } from '../../lib/abort.js';
import { HostUnreachableError, PermanentError } from '../../lib/failure.js';

/** A heartbeat's status older than this is not an observation: the host is asked. */
const observedStatusAgeMsMax = 2_000;
/** Instances whose last action is remembered for `observe`. */
const actionsRememberedMax = 10_000;
/** How often an operation on another host looks whether the host is still heard from. */
const reachabilityPollMs = 100;

/**
 * The data plane the machines see when instances live on many hosts (docs/HOSTS.md): each
 * operation goes to the host of its instance, the local driver for the control plane's own
 * machine and an agent client for every other. Operations that name an instance by id alone look
 * its host up; those over the backup store run where the store is mounted, on the local driver.
 */

/** How recently each host was heard from, from its heartbeats. */
export interface HostReachability {
  /** Since the host's latest heartbeat (or since the control plane began listening, if none yet). */
  silentMs(hostId: string): number;
  /** Whether the instance ran at its host's latest heartbeat; undefined when that beat did not list it. */
  lastAlive(hostId: string, instanceId: InstanceId): boolean | undefined;
  /** The instance's status as its host last reported it, and its age now; undefined without one. */
  lastStatus(hostId: string, instanceId: InstanceId): { readonly status: InstanceStatus; readonly ageMs: number } | undefined;
  /** A host silent longer than this is unreachable: operations there fail at once instead of waiting out their bounds. */
  readonly unreachableAfterMs: number;
}

export class HostRouter implements DataPlane {
  constructor(
    private readonly local: DataPlane,
    private readonly directory: HostDirectory,
    /** One client per remote host, kept by the caller (connections are reused). */
    private readonly remoteClient: (host: HostTarget) => DataPlane,
    private readonly reachability: HostReachability,
  ) {}

  /** The client for a remote host that has been heard from lately. */
  private remote(host: HostTarget): DataPlane {
    this.assertHeardFrom(host);
    return this.remoteClient(host);
  }

  private assertHeardFrom(host: HostTarget): void {
    const silentMs = this.reachability.silentMs(host.hostId);
    if (silentMs > this.reachability.unreachableAfterMs) throw new HostUnreachableError(host.hostId, silentMs);
  }

  versions(): readonly number[] {
    return this.local.versions();
  }

  private async atAddress<T>(address: string, work: (plane: DataPlane) => Promise<T>): Promise<T> {
    const host = await this.directory.hostByAddress(address);
    if (host === null) throw new PermanentError(`no live host has address ${address}`);
    return host.local ? work(this.local) : this.whileReachable(host, work);
  }

  private async atInstance<T>(instanceId: InstanceId, work: (plane: DataPlane) => Promise<T>): Promise<T> {
    const host = await this.directory.hostOfInstance(instanceId);
    return host === null || host.local ? work(this.local) : this.whileReachable(host, work);
  }

  /**
   * An operation on another host ends, with HostUnreachableError, as soon as the host has been
   * silent past the lease: a request to a host cut off from the network gets no answer at all, and
   * must not hold a failover for the rest of its bound. The request itself is aborted with it.
   */
  private async whileReachable<T>(host: HostTarget, work: (plane: DataPlane) => Promise<T>): Promise<T> {
    const client = this.remote(host);
    const controller = new AbortController();
    const step = currentAbortSignal();
    const onStepAbort = (): void => controller.abort(step?.reason);
    step?.addEventListener('abort', onStepAbort, { once: true });
    let watchdog: NodeJS.Timeout | undefined;
    const unreachable = new Promise<never>((_, reject) => {
      watchdog = setInterval(() => {
        const silentMs = this.reachability.silentMs(host.hostId);
        if (silentMs <= this.reachability.unreachableAfterMs) return;
        const error = new HostUnreachableError(host.hostId, silentMs);
        controller.abort(error);
        reject(error);
      }, reachabilityPollMs);
    });
    try {
      return await Promise.race([runWithAbortSignal(controller.signal, () => work(client)), unreachable]);
    } finally {
      clearInterval(watchdog);
      step?.removeEventListener('abort', onStepAbort);
    }
  }

  async createPrimary(spec: InstanceSpec): Promise<void> {
    return this.changing(spec, (plane) => plane.createPrimary(spec));
  }

  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return this.changing(spec, (plane) => plane.createReplica(spec, upstream));
  }

  async start(spec: InstanceSpec): Promise<void> {
    return this.changing(spec, (plane) => plane.start(spec));
  }

  async stop(instanceId: InstanceId, mode?: 'fast' | 'immediate'): Promise<void> {
    try {
      return await this.atInstance(instanceId, (plane) => plane.stop(instanceId, mode));
    } finally {
      this.noteAction(instanceId);
    }
  }

  async status(spec: InstanceSpec): Promise<InstanceStatus> {
    return this.atAddress(spec.host, (plane) => plane.status(spec));
  }

  /** Another host's instance: the status its latest heartbeat carried, when fresh enough; else a request. */
  async observe(spec: InstanceSpec): Promise<InstanceStatus> {
    const host = await this.directory.hostByAddress(spec.host);
    if (host !== null && !host.local) {
      const reported = this.reachability.lastStatus(host.hostId, spec.instanceId);
      // Not one taken before this control plane's last action on the instance (a promote): it says what was.
      const takenAtMs = performance.now() - (reported?.ageMs ?? 0);
      const actedAtMs = this.lastActionAtMs.get(spec.instanceId) ?? Number.NEGATIVE_INFINITY;
      if (reported !== undefined && reported.ageMs <= observedStatusAgeMsMax && takenAtMs > actedAtMs) return reported.status;
    }
    return this.status(spec);
  }

  /** When an operation that may change the instance last finished here (bounded: cleared when full). */
  private readonly lastActionAtMs = new Map<string, number>();

  /** An operation that may change the instance: statuses taken before it no longer count as observations. */
  private async changing<T>(spec: InstanceSpec, work: (plane: DataPlane) => Promise<T>): Promise<T> {
    try {
      return await this.atAddress(spec.host, work);
    } finally {
      this.noteAction(spec.instanceId);
    }
  }

  private noteAction(instanceId: string): void {
    if (this.lastActionAtMs.size >= actionsRememberedMax) this.lastActionAtMs.clear();
    this.lastActionAtMs.set(instanceId, performance.now());
  }

  /**
   * Another host's instance: from its latest heartbeat, not a connection. A beat a little late
   * still counts (the lease has not run out); past the lease the host is unreachable.
   */
  async alive(instanceId: InstanceId): Promise<boolean> {
    const host = await this.directory.hostOfInstance(instanceId);
    if (host === null || host.local) return this.local.alive(instanceId);
    this.assertHeardFrom(host);
    if (this.reachability.lastAlive(host.hostId, instanceId) === true) return true;
    // A beat sent before a start says "not running": only the host itself can say it is gone.
    return this.whileReachable(host, (plane) => plane.alive(instanceId));
  }

  /** Only this host's servers are watched; another host's are known from its heartbeats. */
  async watchExit(instanceId: InstanceId): Promise<boolean> {
    const host = await this.directory.hostOfInstance(instanceId);
    return host === null || host.local ? this.local.watchExit(instanceId) : false;
  }

  async dropSlot(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
    return this.atAddress(upstream.host, (plane) => plane.dropSlot(upstream, secrets));
  }

  async promote(spec: InstanceSpec): Promise<void> {
    return this.changing(spec, (plane) => plane.promote(spec));
  }

  async follow(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return this.changing(spec, (plane) => plane.follow(spec, upstream));
  }

  async rejoin(spec: InstanceSpec, upstream: UpstreamRef): Promise<RejoinMethod> {
    return this.changing(spec, (plane) => plane.rejoin(spec, upstream));
  }

  async allowPeers(spec: InstanceSpec): Promise<void> {
    return this.atAddress(spec.host, (plane) => plane.allowPeers(spec));
  }

  async configure(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return this.atAddress(spec.host, (plane) => plane.configure(spec));
  }

  async checkpoint(spec: InstanceSpec): Promise<void> {
    return this.atAddress(spec.host, (plane) => plane.checkpoint(spec));
  }

  async settings(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return this.atAddress(spec.host, (plane) => plane.settings(spec));
  }

  async usage(spec: InstanceSpec): Promise<InstanceUsage> {
    return this.atAddress(spec.host, (plane) => plane.usage(spec));
  }

  async setSynchronousStandbys(spec: InstanceSpec, standbys: readonly string[]): Promise<void> {
    return this.atAddress(spec.host, (plane) => plane.setSynchronousStandbys(spec, standbys));
  }

  async takeBaseBackup(source: InstanceSpec, primary: InstanceSpec, backupId: string, maxRateBytesPerSecond: number): Promise<BaseBackupInfo> {
    return this.atAddress(source.host, (plane) => plane.takeBaseBackup(source, primary, backupId, maxRateBytesPerSecond));
  }

  checkBackup(clusterId: string, backupId: string, pgVersion: number): Promise<BackupCheck> {
    return this.local.checkBackup(clusterId, backupId, pgVersion);
  }

  deleteBackup(clusterId: string, backupId: string): Promise<void> {
    return this.local.deleteBackup(clusterId, backupId);
  }

  pruneWal(clusterId: string, oldestNeededWalFile: string): Promise<number> {
    return this.local.pruneWal(clusterId, oldestNeededWalFile);
  }

  async restorePrimary(spec: InstanceSpec, source: RestoreSource): Promise<void> {
    return this.changing(spec, (plane) => plane.restorePrimary(spec, source));
  }

  async destroy(instanceId: InstanceId): Promise<void> {
    return this.atInstance(instanceId, (plane) => plane.destroy(instanceId));
  }

  purgeCluster(clusterId: string): Promise<void> {
    return this.local.purgeCluster(clusterId);
  }
}
