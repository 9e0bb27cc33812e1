import type { BackupCheck, BaseBackupInfo, ClusterSecrets, DataPlane, HostDirectory, HostTarget, InstanceSpec, InstanceStatus, RejoinMethod, RestoreSource, UpstreamRef } from '../dataplane.js';
import type { InstanceId } from '../../lib/ids.js';
import { HostUnreachableError, PermanentError } from '../../lib/failure.js';

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
  /** A host silent longer than this is unreachable: operations there fail at once instead of waiting out their bounds. */
  readonly unreachableAfterMs: number;
}

/** Another host's data plane, which can also ask its host directly whether a server runs. */
export interface RemoteDataPlane extends DataPlane {
  aliveNow(instanceId: InstanceId): Promise<boolean>;
}

export class HostRouter implements DataPlane {
  constructor(
    private readonly local: DataPlane,
    private readonly directory: HostDirectory,
    /** One client per remote host, kept by the caller (connections are reused). */
    private readonly remoteClient: (host: HostTarget) => RemoteDataPlane,
    private readonly reachability: HostReachability,
  ) {}

  /** The client for a remote host that has been heard from lately. */
  private remote(host: HostTarget): RemoteDataPlane {
    const silentMs = this.reachability.silentMs(host.hostId);
    if (silentMs > this.reachability.unreachableAfterMs) throw new HostUnreachableError(host.hostId, silentMs);
    return this.remoteClient(host);
  }

  versions(): readonly number[] {
    return this.local.versions();
  }

  private async byAddress(address: string): Promise<DataPlane> {
    const host = await this.directory.hostByAddress(address);
    if (host === null) throw new PermanentError(`no live host has address ${address}`);
    return host.local ? this.local : this.remote(host);
  }

  private async byInstance(instanceId: InstanceId): Promise<DataPlane> {
    const host = await this.directory.hostOfInstance(instanceId);
    return host === null || host.local ? this.local : this.remote(host);
  }

  async createPrimary(spec: InstanceSpec): Promise<void> {
    return (await this.byAddress(spec.host)).createPrimary(spec);
  }

  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return (await this.byAddress(spec.host)).createReplica(spec, upstream);
  }

  async start(spec: InstanceSpec): Promise<void> {
    return (await this.byAddress(spec.host)).start(spec);
  }

  async stop(instanceId: InstanceId, mode?: 'fast' | 'immediate'): Promise<void> {
    return (await this.byInstance(instanceId)).stop(instanceId, mode);
  }

  async status(spec: InstanceSpec): Promise<InstanceStatus> {
    return (await this.byAddress(spec.host)).status(spec);
  }

  /**
   * Another host's instance: from its latest heartbeat, never a connection. A beat a little late
   * still counts (the lease has not run out); past the lease the host is unreachable.
   */
  async alive(instanceId: InstanceId): Promise<boolean> {
    const host = await this.directory.hostOfInstance(instanceId);
    if (host === null || host.local) return this.local.alive(instanceId);
    const silentMs = this.reachability.silentMs(host.hostId);
    if (silentMs > this.reachability.unreachableAfterMs) throw new HostUnreachableError(host.hostId, silentMs);
    if (this.reachability.lastAlive(host.hostId, instanceId) === true) return true;
    // A beat sent before a start says "not running": only the host itself can say it is gone.
    return this.remoteClient(host).aliveNow(instanceId);
  }

  async dropSlot(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
    return (await this.byAddress(upstream.host)).dropSlot(upstream, secrets);
  }

  async promote(spec: InstanceSpec): Promise<void> {
    return (await this.byAddress(spec.host)).promote(spec);
  }

  async follow(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return (await this.byAddress(spec.host)).follow(spec, upstream);
  }

  async rejoin(spec: InstanceSpec, upstream: UpstreamRef): Promise<RejoinMethod> {
    return (await this.byAddress(spec.host)).rejoin(spec, upstream);
  }

  async allowPeers(spec: InstanceSpec): Promise<void> {
    return (await this.byAddress(spec.host)).allowPeers(spec);
  }

  async setSynchronousStandbys(spec: InstanceSpec, standbys: readonly string[]): Promise<void> {
    return (await this.byAddress(spec.host)).setSynchronousStandbys(spec, standbys);
  }

  async takeBaseBackup(source: InstanceSpec, primary: InstanceSpec, backupId: string, maxRateBytesPerSecond: number): Promise<BaseBackupInfo> {
    return (await this.byAddress(source.host)).takeBaseBackup(source, primary, backupId, maxRateBytesPerSecond);
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
    return (await this.byAddress(spec.host)).restorePrimary(spec, source);
  }

  async destroy(instanceId: InstanceId): Promise<void> {
    return (await this.byInstance(instanceId)).destroy(instanceId);
  }

  purgeCluster(clusterId: string): Promise<void> {
    return this.local.purgeCluster(clusterId);
  }
}
