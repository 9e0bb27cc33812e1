import type { BackupSettings, HaSettings, StorageSettings } from '../config.js';
import type { BaseBackupInfo, ClusterSecrets, DataPlane, InstanceStatus, RecordedUsage } from '../dataplane/dataplane.js';
import type { Clock, Random } from '../lib/clock.js';
import type { RestartOrder } from '../lib/config-plan.js';
import type { BackupId, ChangeId, ClusterId, InstanceId } from '../lib/ids.js';
import type { CatalogueEntry } from '../lib/settings.js';
import type { ClusterSpec } from '../lib/sizes.js';
import type { ClusterFlags } from '../lib/flags.js';

/** What the cluster and instance machines may read and change in the cell store. */

export type Role = 'primary' | 'replica';

export interface ClusterRecord {
  readonly id: ClusterId;
  readonly name: string;
  readonly spec: ClusterSpec;
  readonly secrets: ClusterSecrets;
  /** The instance a requested switchover should promote; null lets the cluster pick. */
  readonly switchoverTo: string | null;
  /**
   * Who may connect to its instances besides their own host: the hosts of its live instances and
   * the control plane's and proxy's addresses (InstanceSpec.peers).
   */
  readonly peerAddresses: readonly string[];
  /** Set while its primary is read-only because its storage is full (docs/STORAGE.md "Limits"); null otherwise. */
  readonly storageFull: StorageFull | null;
  /** Its autogrow policy; null: off (the default). */
  readonly autogrow: AutogrowPolicy | null;
}

/** What a full cluster was measured at when it turned read-only (the proxy tells clients from it). */
export interface StorageFull {
  readonly usedBytes: number;
  readonly allocatedBytes: number;
  readonly percent: number;
  /**
   * Set when, marked full, it went on growing past its whole allocation (a tenant that turned
   * read-only off): the proxy then refuses every connection to it until it is resized.
   */
  readonly locked?: boolean;
}

/** Autogrow (docs/STORAGE.md "Autogrow"): past `thresholdPercent`, grow by `stepPercent` (at least the resize step) up to `maxGb`. */
export interface AutogrowPolicy {
  readonly maxGb: number;
  readonly thresholdPercent: number;
  readonly stepPercent: number;
}

export interface PlacedInstance {
  readonly hostId: string;
  readonly hostName: string;
  readonly zone: string;
  /** Why this host (for the instance_placed event); null when it was placed before. */
  readonly why: string | null;
}

export interface InstanceRecord {
  readonly id: InstanceId;
  readonly clusterId: ClusterId;
  readonly ordinal: number;
  readonly role: Role;
  /** The host it lives on and that host's address; an instance from before hosts lives on the local one. */
  readonly hostId: string | null;
  /** That host's machine label (active, draining, lost, …); null before the instance is placed. */
  readonly hostState: string | null;
  /** That host's name (shown with the instance; instances from before hosts: null). */
  readonly hostName: string | null;
  readonly address: string;
  readonly port: number | null;
  /** Never routed: an old primary between losing its role and rejoining as a replica. */
  readonly fenced: boolean;
  /** False while it is out of the routes for a restart or its removal (docs/CONFIG.md). */
  readonly inRoute: boolean;
  /**
   * Its delete was asked for: its machine is in `destroy`, or a `destroy` signal waits for it.
   * The signal counts too, so a cluster that looks again before the instance acts on it does not
   * count it as one of its replicas (and remove another).
   */
  readonly destroyRequested: boolean;
  readonly observed: Partial<InstanceStatus>;
  /** Its use on disk as last measured, and when (null: not yet). */
  readonly usage: RecordedUsage | null;
  readonly usageMeasuredAt: Date | null;
  /** The instance machine's current label, and its last error if it failed. */
  readonly machineLabel: string;
  readonly machineError: string | null;
}

export interface MachineStore {
  cluster(id: ClusterId): Promise<ClusterRecord>;
  /** Live instances (not deleted), ordered by ordinal. */
  instances(clusterId: ClusterId): Promise<InstanceRecord[]>;
  instance(id: InstanceId): Promise<InstanceRecord | null>;
  /** Creates the instance and its machine; a second call for the same ordinal is a no-op. */
  createInstance(clusterId: ClusterId, ordinal: number, role: Role): Promise<void>;
  /**
   * Puts the instance on a host (placement rules, docs/HOSTS.md) the first time; afterwards says
   * where it is. Nothing with room: a TransientError saying what is missing.
   */
  placeInstance(instanceId: InstanceId): Promise<PlacedInstance>;
  /** Returns the instance's port, allocating a free one the first time. */
  allocatePort(instanceId: InstanceId): Promise<number>;
  releasePort(instanceId: InstanceId): Promise<void>;
  recordObserved(instanceId: InstanceId, observed: InstanceStatus): Promise<void>;
  /** The instance's last measured use on disk, stamped with the store's clock. */
  recordUsage(instanceId: InstanceId, usage: RecordedUsage): Promise<void>;
  markInstanceDeleted(instanceId: InstanceId): Promise<void>;
  markClusterDeleted(clusterId: ClusterId): Promise<void>;
  /** Raises `destroy` on an entity's machine; a machine in `failed` is moved to `destroy` so it can clean up. */
  requestDestroy(kind: string, entityId: string): Promise<void>;
  /** Raises a signal on an entity's machine and makes it due (idempotent). */
  raiseSignal(kind: string, entityId: string, name: string): Promise<void>;
  /** Fencing takes an instance out of the routes; the proxy is told at once. */
  setFenced(instanceId: InstanceId, fenced: boolean): Promise<void>;
  /** New connections wait (bounded) in the proxy instead of reaching an instance. */
  setRoutePaused(clusterId: ClusterId, paused: boolean): Promise<void>;
  /**
   * In one transaction: `newPrimaryId` becomes the cluster's only primary, the old one a
   * replica, the route resumes, and the proxy is told. Invariant 1 holds before and after.
   */
  swapPrimary(clusterId: ClusterId, newPrimaryId: InstanceId): Promise<void>;
  clearSwitchoverTarget(clusterId: ClusterId): Promise<void>;
  /**
   * A replica leaves the routes (new connections go elsewhere, open ones are ended by the proxy)
   * before it is restarted or removed, and comes back after; the proxy is told at once.
   */
  setInRoute(instanceId: InstanceId, inRoute: boolean): Promise<void>;
  /** The cluster and revision a change machine applies, and the order its plan chose; null when its revision is gone. */
  changeTarget(changeId: ChangeId): Promise<{ readonly clusterId: ClusterId; readonly revision: number; readonly order: RestartOrder } | null>;
  /**
   * A change that cannot finish is undone: a new revision equal to the one before it (actor
   * `cellar`, the reason given), with its own change machine made from `origin`, supersedes it, in
   * one transaction with the cluster's spec. Returns the new revision; null when there is none before.
   */
  revertChange(changeId: ChangeId, reason: string, origin: { readonly kind: string; readonly initial: string; lane(label: string): 'high' | 'normal' }): Promise<number | null>;
  /**
   * Read-only because the storage is full, or writable again (null), and the proxy told, in one
   * transaction. The instances' servers are configured first, by the caller.
   */
  setStorageFull(clusterId: ClusterId, full: StorageFull | null): Promise<void>;
  /**
   * Autogrow: a storage revision to `toGb` (actor `cellar`), through the same checks as a resize
   * (grow only, step, cooldown, room on its hosts above their disk reserve); a CellarError when one refuses it.
   */
  growStorage(
    clusterId: ClusterId,
    toGb: number,
    reason: string,
    origin: { readonly kind: string; readonly initial: string; lane(label: string): 'high' | 'normal' },
    policy: Pick<StorageSettings, 'resizeStepGbMin' | 'resizeCooldownMs' | 'gbBytes' | 'readOnlyPercent' | 'hostDiskReservePercent'>,
  ): Promise<number>;
  /** Whether a change machine of the cluster is still applying its revision. */
  changeInProgress(clusterId: ClusterId): Promise<boolean>;
  /** A machine's label, or null when there is none. */
  machineLabel(kind: string, entityId: string): Promise<string | null>;
  /** Whether a signal is raised on a machine and not yet consumed. */
  hasSignal(kind: string, entityId: string, name: string): Promise<boolean>;
  /** The parameter catalogue of a Postgres version; null before one is stored. */
  catalogue(pgVersion: number): Promise<ReadonlyMap<string, CatalogueEntry> | null>;
  saveCatalogue(pgVersion: number, entries: readonly CatalogueEntry[]): Promise<void>;
  /**
   * In one transaction: the instance's machine is moved to `destroy` and a fresh instance with a
   * new ordinal is created in its place. Run twice, it replaces once (the first moved it on).
   */
  /** Only a failed instance, unless `running` (a replica past its WAL bound): then any not already being deleted. */
  replaceInstance(instanceId: InstanceId, role: Role, running?: boolean): Promise<void>;
  /**
   * A new replica with the next ordinal (never reused) and its machine, in one transaction: the
   * replacement of an instance on a host being drained or lost. Not idempotent by itself: the
   * caller counts the instances it has before it adds one.
   */
  addReplica(clusterId: ClusterId): Promise<InstanceId>;
  /**
   * For an instance on another host: whether that host's lease has certainly expired by the
   * store's clock (last renewal + lease + clock margin), so its agent has fenced its primaries.
   * Null for an instance on the control plane's own machine, which holds no lease.
   */
  hostLeaseExpired(instanceId: InstanceId): Promise<boolean | null>;
  /** Automatic and manual failovers begun anywhere in the cell within the window (the breaker's count). */
  failoversWithin(windowMs: number): Promise<number>;
}

export interface BackupRecord {
  readonly id: BackupId;
  readonly clusterId: ClusterId;
  readonly status: 'running' | 'completed' | 'failed' | 'deleted';
  readonly sourceInstanceId: string | null;
  readonly startWalFile: string | null;
  /** Clock time (ms) the backup finished, when it has. */
  readonly finishedAtMs: number | null;
  readonly verified: boolean | null;
}

/** A live cluster as the backup schedule sees it. */
export interface BackupCandidate {
  readonly clusterId: ClusterId;
  /** When its newest backup (running or completed) started; null: never backed up. */
  readonly lastBackupAtMs: number | null;
  readonly backupRunning: boolean;
  /** The cluster's own schedule, if its spec sets one. */
  readonly intervalMs: number | null;
}

/** What the backup machines may read and change in the cell store. */
export interface BackupRecords {
  backup(id: BackupId): Promise<BackupRecord>;
  /** Creates the backup row and its machine in one transaction. */
  createBackup(clusterId: ClusterId, reason: 'scheduled' | 'manual'): Promise<BackupId>;
  recordTaken(id: BackupId, sourceInstanceId: InstanceId, info: BaseBackupInfo): Promise<void>;
  recordFailed(id: BackupId, reason: string): Promise<void>;
  /** Takes one of `concurrency` restore-check slots of the cell; false when all are in use. */
  tryStartCheck(id: BackupId, concurrency: number): Promise<boolean>;
  recordCheck(id: BackupId, ok: boolean, detail: string): Promise<void>;
  /** Live, running, non-pooled clusters without a running backup, most overdue first (by their interval, else `defaultIntervalMs`); at most `limit`. */
  backupCandidates(limit: number, defaultIntervalMs: number): Promise<BackupCandidate[]>;
  /** Completed (and failed) backups of a cluster, newest first. */
  backupsOf(clusterId: ClusterId): Promise<BackupRecord[]>;
  /**
   * Live clusters that have any completed or failed backup, in id order after `afterClusterId`
   * (null: from the start); at most `limit`. The schedule walks them with a cursor, so every
   * cluster's retention runs however many there are.
   */
  clustersWithBackups(afterClusterId: ClusterId | null, limit: number): Promise<ClusterId[]>;
  markDeleted(id: BackupId): Promise<void>;
  /**
   * Deleted clusters whose backup area is due to go: deleted before `deletedBeforeMs`, not purged
   * yet, with no backup machine at work and no new cluster still restoring from them; oldest
   * delete first, at most `limit`.
   */
  deletedClustersToPurge(deletedBeforeMs: number, limit: number): Promise<ClusterId[]>;
  /** After the area is gone: every backup row of the cluster is marked deleted and the cluster purged. */
  markBackupsPurged(clusterId: ClusterId): Promise<void>;
}

export interface MachinePorts {
  readonly clock: Clock;
  readonly random: Random;
  readonly store: MachineStore;
  readonly dataPlane: DataPlane;
  readonly ha: HaSettings;
  readonly backups: BackupRecords;
  readonly backupSettings: BackupSettings;
  readonly storage: StorageSettings;
  readonly admission: CreateAdmission;
  /** Flags by cluster (docs/CONTROLS.md); absent: every flag at its default. */
  readonly flags?: ClusterFlags;
  readonly freeze: FreezeGate;
}

/**
 * Provisioning admission (the `provisioning.creates-per-tick` rod, docs/CONTROLS.md "Rods"): at
 * most so many new clusters start provisioning within any one high-lane tick across the cell; the
 * rest wait, accepted, and ask again a tick later.
 */
export interface CreateAdmission {
  /** Whether the cluster may start provisioning now; always true again for one already admitted. */
  admit(clusterId: ClusterId): Promise<boolean>;
  /** How long a cluster not admitted waits before it asks again: one high-lane tick. */
  retryMs(): number;
  /** The admissions allowed per tick now, for the waiting cluster's event. */
  perTick(): number;
}

/**
 * The freeze (docs/CONTROLS.md "Freeze"): while frozen, a step that would start non-emergency
 * change (a new cluster's instances, a configuration change, a rollout's next cluster, a scheduled
 * backup) naps instead. Failover, switchover and replica replacement never ask.
 */
export interface FreezeGate {
  frozen(): Promise<boolean>;
}

/** How often a step held by the freeze looks again; a thaw also makes them due at once. */
export const freezeNapMs = 5_000;

/** What the host machine sees of its host in the store, on the store's clock. */
export interface HostObservation {
  /**
   * How long the host's lease has certainly been expired (its last renewal, else its join, plus
   * the lease and the clock margin); negative: how long until it will be. Null for a host that
   * holds no lease: the local host, or one that has not joined.
   */
  readonly leaseExpiredForMs: number | null;
  /** Its live (not deleted) instances. */
  readonly liveInstances: number;
  /** The clusters those instances belong to (to wake them when the host stops taking instances). */
  readonly clusterIds: readonly ClusterId[];
}

/** What the host machine may read in the cell store. */
export interface HostRecords {
  /** Null when the host row is gone (never for a machine's own host: rows are not deleted). */
  observeHost(hostId: string): Promise<HostObservation | null>;
}

export interface HostPorts {
  readonly hosts: HostRecords;
  /** CELLAR_HOST_LOST_MS: a lease expired for longer than this makes the host lost. */
  readonly lostMs: number;
}

/**
 * Kinds and entities the store names (it inserts, wakes and destroys these machines) and the
 * warm pool's port: here, below the store, because the store may not import the machines.
 */
export const clusterKind = 'cluster';
export const changeKind = 'change';
export const hostKind = 'host';
/** Raised on a host's machine when its agent joined (the store raises it for the local host too). */
export const hostJoinedSignal = 'joined';
export const warmPoolKind = 'warmPool';
export const warmPoolEntity = 'cell';
export const backupScheduleKind = 'backupSchedule';

export type PooledPhase = 'creating' | 'ready' | 'failed' | 'deleting';

export interface PooledCluster {
  readonly id: string;
  readonly phase: PooledPhase;
}

export interface WarmPoolStore {
  pooledClusters(): Promise<PooledCluster[]>;
  createPooledCluster(spec: ClusterSpec): Promise<void>;
  destroyPooledCluster(id: string): Promise<void>;
}

/** The rollout machine's kind: the store reads a rollout's state from its machine's label. */
export const rolloutKind = 'rollout';

/**
 * The labels at which a machine naps for the freeze (each checks at that step): what a thaw makes
 * due at once. A cluster's `running` is not here: it only holds back scaling, and watches often anyway.
 */
export const freezeHeldLabels: readonly { readonly kind: string; readonly labels: readonly string[] }[] = [
  { kind: clusterKind, labels: ['start'] },
  { kind: changeKind, labels: ['apply', 'scale'] },
  { kind: rolloutKind, labels: ['next', 'propose', 'waitCluster'] },
  { kind: backupScheduleKind, labels: ['tend'] },
];

/** A live, non-pooled cluster as a rollout sees it. */
export interface FleetCluster {
  readonly id: ClusterId;
  readonly name: string;
  /** Its newest revision (docs/CONFIG.md): a revision proposed after this one is this rollout's. */
  readonly revision: number;
  /** The fleet defaults it runs with now (`ClusterSpec.defaults`). */
  readonly defaults: Readonly<Record<string, string>>;
}

/** What a proposal of new defaults to one cluster came to. */
export type DefaultsProposal =
  | { readonly type: 'proposed'; readonly revision: number; readonly changeId: string | null }
  /** Another change of the cluster is being applied: try again shortly. */
  | { readonly type: 'busy'; readonly reason: string }
  /** The change is not valid for this cluster (its version's catalogue, its size): the rollout halts here. */
  | { readonly type: 'refused'; readonly reason: string }
  /** The cluster was deleted meanwhile: nothing to roll out to. */
  | { readonly type: 'gone' };

export interface ChangeOutcome {
  /** The change machine's label (its step, for a reason). */
  readonly label: string;
  readonly done: boolean;
  readonly failed: boolean;
  readonly error: string | null;
}

/**
 * Whether a cluster serves after a change: `healthy` (its machine `running`, every instance
 * `running`), `waiting` (not yet), `broken` (a machine of it failed: waiting cannot help), or
 * `gone` (deleted meanwhile: nothing to roll out to).
 */
export interface ClusterHealth {
  readonly state: 'healthy' | 'waiting' | 'broken' | 'gone';
  /** What is not healthy, naming the machine or instance and its label. */
  readonly detail: string;
}

export interface RolloutRecord {
  readonly id: string;
  readonly defaultsAfter: Readonly<Record<string, string>>;
  readonly ratePerMinute: number;
  readonly reason: string | null;
  readonly cursorClusterId: ClusterId | null;
}

export interface RolloutHalt {
  readonly clusterId: ClusterId;
  readonly clusterName: string;
  readonly revision: number | null;
  readonly reason: string;
}

/** What the rollout machine may read and change in the cell store (docs/CONFIG.md, "Fleet defaults and rollouts"). */
export interface RolloutRecords {
  rollout(id: string): Promise<RolloutRecord>;
  /** The first live, non-pooled cluster with an id after `afterClusterId` (null: from the first); null when none is left. */
  nextCluster(afterClusterId: ClusterId | null): Promise<FleetCluster | null>;
  /**
   * The revision `actor` proposed to the cluster after `afterRevision`, if any: how a step run
   * again after a crash finds the proposal it made before, instead of proposing twice.
   */
  revisionSince(clusterId: ClusterId, afterRevision: number, actor: string): Promise<{ readonly revision: number; readonly changeId: string | null } | null>;
  /** A revision of the cluster with these fleet defaults (`proposeChange`, store/config.ts). */
  proposeDefaults(clusterId: ClusterId, defaults: Readonly<Record<string, string>>, actor: string, reason: string): Promise<DefaultsProposal>;
  changeOutcome(changeId: string): Promise<ChangeOutcome>;
  clusterHealth(clusterId: ClusterId): Promise<ClusterHealth>;
  /** The cluster now being moved, for `rollouts show`. */
  recordStarted(id: string, clusterId: ClusterId, revision: number): Promise<void>;
  /** The cluster is finished: moved (`changed`) or already there (`skipped`). Idempotent: the cursor only moves forward. */
  recordAdvanced(id: string, clusterId: ClusterId, outcome: 'changed' | 'skipped'): Promise<void>;
  recordHalted(id: string, halt: RolloutHalt): Promise<void>;
  /** Completed or aborted: the cell may start another rollout. */
  recordFinished(id: string): Promise<void>;
}

export interface RolloutPorts {
  readonly clock: Clock;
  readonly rollouts: RolloutRecords;
  readonly freeze: FreezeGate;
  /** CELLAR_ROLLOUT_HEALTH_WAIT_MS: how long a cluster may take from its revision to healthy before the rollout halts there. */
  readonly healthWaitMs: number;
  /** The `rollout.clusters-per-minute` rod: a cap on every rollout's own rate, read at each start. */
  readonly ratePerMinuteCap: () => number;
}
