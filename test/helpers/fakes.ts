import assert from 'node:assert/strict';
import type { BaseBackupInfo, ClusterSecrets, RecordedUsage } from '../../src/dataplane/dataplane.js';
import type { Durability } from '../../src/lib/sizes.js';
import type { RestartOrder } from '../../src/lib/config-plan.js';
import type { CatalogueEntry } from '../../src/lib/settings.js';
import type { BackupId, ClusterId, InstanceId } from '../../src/lib/ids.js';
import type { AutogrowPolicy, BackupCandidate, BackupRecord, BackupRecords, ClusterRecord, FreezeGate, InstanceRecord, MachineStore, PlacedInstance, Role, StorageFull } from '../../src/machines/ports.js';

/**
 * In-memory FAKES of the store ports the machines use (MachineStore, BackupRecords), for the
 * machines' unit tests. test/store-contract.test.ts runs the same cases against these and the
 * real Pg stores, so what the fakes answer cannot drift from what the store does.
 */

export const clusterId = 'cl_aaaaaaaaaaaa' as ClusterId;
export const secrets: ClusterSecrets = { superuserPassword: 's', replicationPassword: 'r', appPassword: 'a' };

export class FakeStore implements MachineStore {
  readonly instancesById = new Map<InstanceId, InstanceRecord>();
  readonly calls: string[] = [];
  clusterDeleted = false;
  replicas = 1;
  durability: Durability = 'sync';
  switchoverTo: string | null = null;
  failovers = 0;
  storageGb = 10;
  storageFull: StorageFull | null = null;
  autogrow: AutogrowPolicy | null = null;
  revision = 0;

  /** The highest ordinal ever given, deleted instances included (ordinals are never reused). */
  private ordinalMax = -1;
  add(id: InstanceId, role: Role, ordinal: number, label: string, port: number | null = 5000 + ordinal, extra: Partial<InstanceRecord> = {}): void {
    this.ordinalMax = Math.max(this.ordinalMax, ordinal);
    this.instancesById.set(id, { id, clusterId, ordinal, role, hostId: null, hostState: null, hostName: null, address: '127.0.0.1', port, fenced: false, inRoute: true, destroyRequested: label === 'destroy', observed: {}, usage: null, usageMeasuredAt: null, machineLabel: label, machineError: null, ...extra });
  }

  update(id: InstanceId, change: Partial<InstanceRecord>): void {
    const instance = this.instancesById.get(id);
    assert.ok(instance !== undefined);
    this.instancesById.set(id, { ...instance, ...change });
  }

  readonly signals = new Set<string>();
  readonly labels = new Map<string, string>();
  catalogues = new Map<number, ReadonlyMap<string, CatalogueEntry>>([[15, new Map()]]);
  change: { clusterId: ClusterId; revision: number; order: RestartOrder } | null = null;

  async changeTarget(): Promise<{ clusterId: ClusterId; revision: number; order: RestartOrder } | null> {
    return this.change;
  }
  reverted: string[] = [];
  async revertChange(changeId: string, reason: string): Promise<number | null> {
    this.reverted.push(`${changeId}: ${reason}`);
    return this.change === null ? null : this.change.revision + 1;
  }
  changing = false;
  async changeInProgress(): Promise<boolean> {
    return this.changing;
  }
  async machineLabel(kind: string, entityId: string): Promise<string | null> {
    return this.labels.get(`${kind} ${entityId}`) ?? null;
  }
  async hasSignal(kind: string, entityId: string, name: string): Promise<boolean> {
    return this.signals.has(`${kind} ${entityId} ${name}`);
  }
  async catalogue(pgVersion: number): Promise<ReadonlyMap<string, CatalogueEntry> | null> {
    return this.catalogues.get(pgVersion) ?? null;
  }
  async saveCatalogue(pgVersion: number, entries: readonly CatalogueEntry[]): Promise<void> {
    this.calls.push(`saveCatalogue ${pgVersion} ${entries.length}`);
    this.catalogues.set(pgVersion, new Map(entries.map((entry) => [entry.name, entry])));
  }

  async setInRoute(id: InstanceId, inRoute: boolean): Promise<void> {
    this.calls.push(`inRoute ${id} ${String(inRoute)}`);
    this.update(id, { inRoute });
  }

  async cluster(): Promise<ClusterRecord> {
    const spec = { size: 'small', replicas: this.replicas, storageGb: this.storageGb, pgVersion: 15, durability: this.durability } as const;
    return { id: clusterId, name: 'app', spec, secrets, switchoverTo: this.switchoverTo, peerAddresses: ['127.0.0.1'], storageFull: this.storageFull, autogrow: this.autogrow };
  }
  async setStorageFull(_cluster: ClusterId, full: StorageFull | null): Promise<void> {
    this.calls.push(`setStorageFull ${full === null ? 'null' : full.percent}`);
    this.storageFull = full;
  }
  async growStorage(_cluster: ClusterId, toGb: number, reason: string): Promise<number> {
    this.calls.push(`growStorage ${toGb} ${reason}`);
    this.storageGb = toGb;
    this.revision += 1;
    return this.revision;
  }
  async instances(): Promise<InstanceRecord[]> {
    return [...this.instancesById.values()].sort((a, b) => a.ordinal - b.ordinal);
  }
  async instance(id: InstanceId): Promise<InstanceRecord | null> {
    return this.instancesById.get(id) ?? null;
  }
  async createInstance(_cluster: ClusterId, ordinal: number, role: Role): Promise<void> {
    this.calls.push(`createInstance ${ordinal} ${role}`);
    if ([...this.instancesById.values()].some((instance) => instance.ordinal === ordinal)) return;
    this.add(`in_new${ordinal}aaaaaaaa` as InstanceId, role, ordinal, 'start', null);
  }
  async allocatePort(id: InstanceId): Promise<number> {
    this.calls.push(`allocatePort ${id}`);
    // As the store: a port per instance, kept once given, and shown on the instance.
    const port = this.instancesById.get(id)?.port ?? 6000 + this.portsGiven++;
    if (this.instancesById.has(id)) this.update(id, { port });
    return port;
  }
  private portsGiven = 0;
  async releasePort(id: InstanceId): Promise<void> {
    this.calls.push(`releasePort ${id}`);
  }
  async recordObserved(id: InstanceId): Promise<void> {
    this.calls.push(`recordObserved ${id}`);
  }
  async recordUsage(id: InstanceId, usage: RecordedUsage): Promise<void> {
    this.calls.push(`recordUsage ${id} ${usage.dataBytes}+${usage.walBytes}`);
    this.update(id, { usage });
  }
  async markInstanceDeleted(id: InstanceId): Promise<void> {
    this.calls.push(`markInstanceDeleted ${id}`);
    this.instancesById.delete(id);
  }
  async markClusterDeleted(): Promise<void> {
    this.clusterDeleted = true;
  }
  async requestDestroy(kind: string, entityId: string): Promise<void> {
    this.calls.push(`requestDestroy ${kind} ${entityId}`);
    // As the store: the raised signal shows on the instance before its machine acts on it.
    if (this.instancesById.has(entityId as InstanceId)) this.update(entityId as InstanceId, { destroyRequested: true });
  }
  async raiseSignal(kind: string, entityId: string, name: string): Promise<void> {
    this.calls.push(`raiseSignal ${kind} ${entityId} ${name}`);
    this.signals.add(`${kind} ${entityId} ${name}`);
  }
  async setFenced(id: InstanceId, fenced: boolean): Promise<void> {
    this.calls.push(`setFenced ${id} ${fenced}`);
    this.update(id, { fenced });
  }
  async setRoutePaused(_cluster: ClusterId, paused: boolean): Promise<void> {
    this.calls.push(`setRoutePaused ${paused}`);
  }
  async swapPrimary(_cluster: ClusterId, newPrimaryId: InstanceId): Promise<void> {
    this.calls.push(`swapPrimary ${newPrimaryId}`);
    for (const instance of this.instancesById.values()) {
      this.update(instance.id, instance.id === newPrimaryId ? { role: 'primary', fenced: false } : { role: 'replica' });
    }
  }
  async clearSwitchoverTarget(): Promise<void> {
    this.switchoverTo = null;
  }
  async replaceInstance(id: InstanceId, role: Role, running = false): Promise<void> {
    this.calls.push(`replaceInstance ${id} ${role}${running ? ' running' : ''}`);
    // As the store: the replaced one is asked to delete itself in the same transaction, once.
    const instance = this.instancesById.get(id);
    if (instance === undefined || instance.destroyRequested || (!running && instance.machineLabel !== 'failed')) return;
    this.update(id, { destroyRequested: true });
    this.add(`in_new${this.ordinalMax + 1}aaaaaaaa` as InstanceId, role, this.ordinalMax + 1, 'start', null);
  }
  /** As the store: the next ordinal after every instance's, deleted ones included. */
  async addReplica(): Promise<InstanceId> {
    const ordinal = this.ordinalMax + 1;
    const id = `in_add${ordinal}aaaaaaaa` as InstanceId;
    this.calls.push(`addReplica ${ordinal}`);
    this.add(id, 'replica', ordinal, 'start', null);
    return id;
  }
  async failoversWithin(): Promise<number> {
    return this.failovers;
  }
  async placeInstance(): Promise<PlacedInstance> {
    return { hostId: 'ho_local', hostName: 'local', zone: 'default', why: null };
  }
  /** Instances on a remote host and whether its lease has expired; absent: on the local host. */
  readonly leaseExpired = new Map<InstanceId, boolean>();
  async hostLeaseExpired(id: InstanceId): Promise<boolean | null> {
    return this.leaseExpired.get(id) ?? null;
  }
}

export class FakeBackups implements BackupRecords {
  readonly records = new Map<BackupId, BackupRecord>();
  readonly calls: string[] = [];
  private backupsMade = 0;
  candidates: BackupCandidate[] = [];
  slotFree = true;
  add(record: Partial<BackupRecord> & { id: BackupId }): void {
    this.records.set(record.id, { clusterId, status: 'running', sourceInstanceId: null, startWalFile: null, finishedAtMs: null, verified: null, ...record });
  }
  async backup(id: BackupId): Promise<BackupRecord> {
    const record = this.records.get(id);
    assert.ok(record !== undefined);
    return record;
  }
  async createBackup(cluster: ClusterId, reason: 'scheduled' | 'manual'): Promise<BackupId> {
    this.calls.push(`createBackup ${cluster} ${reason}`);
    const id = (this.backupsMade === 0 ? 'bk_new' : `bk_new${this.backupsMade}`) as BackupId;
    this.backupsMade += 1;
    this.add({ id, clusterId: cluster });
    return id;
  }
  async recordTaken(id: BackupId, source: InstanceId, info: BaseBackupInfo): Promise<void> {
    this.calls.push(`recordTaken ${id} ${source} ${info.startWalFile}`);
    const record = await this.backup(id);
    this.records.set(id, { ...record, status: 'completed', sourceInstanceId: source, startWalFile: info.startWalFile, finishedAtMs: record.finishedAtMs ?? Date.now() });
  }
  async recordFailed(id: BackupId, reason: string): Promise<void> {
    this.calls.push(`recordFailed ${id} ${reason}`);
    const record = this.records.get(id);
    if (record !== undefined) this.records.set(id, { ...record, status: 'failed', finishedAtMs: record.finishedAtMs ?? Date.now() });
  }
  async tryStartCheck(): Promise<boolean> {
    return this.slotFree;
  }
  async recordCheck(id: BackupId, ok: boolean, detail: string): Promise<void> {
    this.calls.push(`recordCheck ${id} ${ok} ${detail}`);
    const record = this.records.get(id);
    if (record !== undefined) this.records.set(id, { ...record, verified: ok });
  }
  async backupCandidates(): Promise<BackupCandidate[]> {
    return this.candidates;
  }
  async backupsOf(): Promise<BackupRecord[]> {
    return [...this.records.values()].filter((record) => record.status !== 'deleted' && record.status !== 'running');
  }
  /** Live clusters with backups, beyond the one the records belong to; sorted like the store's. */
  moreClusters: ClusterId[] = [];
  /** Deleted clusters with the time (clock ms) of their delete. */
  deleted = new Map<ClusterId, number>();
  readonly pagesAsked: string[] = [];
  async clustersWithBackups(after: ClusterId | null, limit: number): Promise<ClusterId[]> {
    this.pagesAsked.push(`after ${after ?? 'start'}`);
    const listed = [...this.records.values()].some((record) => record.status === 'completed' || record.status === 'failed');
    const all = [...(listed ? [clusterId] : []), ...this.moreClusters].sort();
    return all.filter((id) => after === null || id > after).slice(0, limit);
  }
  async deletedClustersToPurge(deletedBeforeMs: number, limit: number): Promise<ClusterId[]> {
    return [...this.deleted].filter(([, atMs]) => atMs < deletedBeforeMs).map(([id]) => id).slice(0, limit);
  }
  async markBackupsPurged(cluster: ClusterId): Promise<void> {
    this.calls.push(`markBackupsPurged ${cluster}`);
    this.deleted.delete(cluster);
  }
  async markDeleted(id: BackupId): Promise<void> {
    this.calls.push(`markDeleted ${id}`);
    const record = await this.backup(id);
    this.records.set(id, { ...record, status: 'deleted' });
  }
}

/** The freeze as the machines see it: set `isFrozen`; `asked` counts the reads (a step that never asks is not gated). */
export class FakeFreeze implements FreezeGate {
  isFrozen = false;
  asked = 0;
  async frozen(): Promise<boolean> {
    this.asked += 1;
    return this.isFrozen;
  }
}
