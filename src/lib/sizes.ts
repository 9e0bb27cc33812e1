/**
 * Instance sizes a cluster may ask for; each is a set of tuned postgresql.conf defaults for its
 * memory (`instanceMemoryMb`): shared buffers about an eighth to a quarter, a cache estimate of
 * half, connections and per-operation memory that fit, and WAL and checkpoints sized so that a
 * busy instance checkpoints on time rather than on WAL volume. A cluster's own settings go over these.
 */
export const sizes = {
  micro: {
    shared_buffers: '32MB', max_connections: '50', work_mem: '2MB', effective_cache_size: '128MB',
    maintenance_work_mem: '16MB', min_wal_size: '80MB', max_wal_size: '256MB', checkpoint_timeout: '5min', checkpoint_completion_target: '0.9',
  },
  small: {
    shared_buffers: '128MB', max_connections: '100', work_mem: '4MB', effective_cache_size: '512MB',
    maintenance_work_mem: '64MB', min_wal_size: '80MB', max_wal_size: '1GB', checkpoint_timeout: '5min', checkpoint_completion_target: '0.9',
  },
  medium: {
    shared_buffers: '512MB', max_connections: '200', work_mem: '8MB', effective_cache_size: '2GB',
    maintenance_work_mem: '256MB', min_wal_size: '256MB', max_wal_size: '2GB', checkpoint_timeout: '10min', checkpoint_completion_target: '0.9',
  },
  large: {
    shared_buffers: '2GB', max_connections: '400', work_mem: '16MB', effective_cache_size: '8GB',
    maintenance_work_mem: '1GB', min_wal_size: '1GB', max_wal_size: '8GB', checkpoint_timeout: '15min', checkpoint_completion_target: '0.9',
  },
} as const satisfies Record<string, Record<string, string>>;

export type SizeName = keyof typeof sizes;

/** The memory an instance of each size is counted as using on its host (placement, `hosts list`). */
export const instanceMemoryMb: Readonly<Record<SizeName, number>> = { micro: 256, small: 1024, medium: 4096, large: 16384 };
export const sizeNames = Object.keys(sizes) as SizeName[];
export const defaultSize: SizeName = 'small';

export function isSizeName(value: string): value is SizeName {
  return Object.hasOwn(sizes, value);
}

export const replicasMax = 5;
export const defaultReplicas = 1;
export const storageGbMin = 1;
export const storageGbMax = 16_384;
/** A cluster's allocation is counted in binary gigabytes, as the host's disk is (docs/STORAGE.md). */
export const bytesPerStorageGb = 1024 ** 3;

/** The bytes a cluster's allocation holds; every figure of allocated bytes goes through here, so the unit can be configured in one place. */
export function storageAllocatedBytes(storageGb: number, bytesPerGb: number = bytesPerStorageGb): number {
  return storageGb * bytesPerGb;
}
export const defaultStorageGb = 10;

/** How full a cluster is: its primary's data and WAL against its allocation (docs/STORAGE.md). */
export interface StorageUse {
  readonly usedBytes: number;
  readonly allocatedBytes: number;
  /** Unrounded. */
  readonly percent: number;
  /** How fast the primary grew between its last two measurements (0 when unknown or shrinking). */
  readonly growthBytesPerSecond: number;
  /**
   * `percent` a lead ahead at that growth: where a writer will be by the time a decision made now
   * is in force (at most `readOnlyLeadShareMax` of the allocation ahead). `percent` with no lead.
   */
  readonly projectedPercent: number;
}

/**
 * The most a read-only decision looks ahead of the measured use: a hundredth of the allocation,
 * so a writer at full speed is stopped near the threshold, never far before it (docs/STORAGE.md "Limits").
 */
export const readOnlyLeadShareMax = 0.01;

/** What a full cluster may grow by after its mark before it is locked: in-flight work, WAL of checkpoints, a deletion's own writes. */
export function lockGrowthBytes(allocatedBytes: number): number {
  return Math.max(lockGrowthShare * allocatedBytes, lockGrowthBytesMin);
}
const lockGrowthShare = 0.1;
const lockGrowthBytesMin = 64 * 1024 ** 2;

/** A full cluster (marked at `markedUsedBytes`) grew by the lock bound and past its whole allocation (docs/STORAGE.md "Limits"). */
export function pastLockBound(use: StorageUse, marked: { readonly usedBytes: number }): boolean {
  return use.usedBytes >= use.allocatedBytes && use.usedBytes - marked.usedBytes >= lockGrowthBytes(use.allocatedBytes);
}

/**
 * `gbBytes`: bytes in one GB of allocation (1 GiB; less in tests, CELLAR_STORAGE_GB_BYTES).
 * `leadMs`: how far ahead `projectedPercent` looks at the usage's growth rate (0: not at all).
 */
export function storageUse(
  storageGb: number,
  gbBytes: number,
  usage: { readonly dataBytes: number; readonly walBytes: number; readonly growthBytesPerSecond?: number } | null,
  leadMs = 0,
): StorageUse | null {
  if (usage === null) return null;
  const usedBytes = usage.dataBytes + usage.walBytes;
  const allocatedBytes = storageAllocatedBytes(storageGb, gbBytes);
  const growthBytesPerSecond = Math.max(0, usage.growthBytesPerSecond ?? 0);
  const leadBytes = Math.min((growthBytesPerSecond * leadMs) / 1000, readOnlyLeadShareMax * allocatedBytes);
  return { usedBytes, allocatedBytes, percent: (usedBytes / allocatedBytes) * 100, growthBytesPerSecond, projectedPercent: ((usedBytes + leadBytes) / allocatedBytes) * 100 };
}
export const clusterNameLengthMax = 40;
export const backupIntervalHoursMin = 1;
export const backupIntervalHoursMax = 720;
/** A DNS label: the name becomes part of host names (proxy SNI) and must be safe everywhere. */
export const clusterNamePattern = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

export interface ClusterSpec {
  readonly size: SizeName;
  readonly replicas: number;
  readonly storageGb: number;
  readonly pgVersion: number;
  readonly durability?: Durability;
  /** The cluster's own Postgres settings (docs/CONFIG.md), over its size's defaults; absent: none. */
  readonly settings?: Readonly<Record<string, string>>;
  /** The fleet's defaults it runs with, beneath its own settings (a rollout moves them; docs/CONFIG.md). */
  readonly defaults?: Readonly<Record<string, string>>;
  /** How often this cluster gets a scheduled base backup; absent: the cell's default (daily). */
  readonly backupIntervalHours?: number;
  /** Set on a cluster made by restoring another one's backup. */
  readonly restore?: RestoreSpec;
}

export interface RestoreSpec {
  readonly sourceClusterId: string;
  readonly backupId: string;
  /** ISO time or LSN to stop at; neither: everything archived (latest). */
  readonly targetTime?: string;
  readonly targetLsn?: string;
}

/**
 * How a commit is made durable. `sync`: a commit returns once a replica has it, dropping to async
 * (with an event) while no replica is healthy; `sync-strict`: never drops, commits wait instead;
 * `async`: the primary alone.
 */
export const durabilities = ['sync', 'sync-strict', 'async'] as const;
export type Durability = (typeof durabilities)[number];

export function isDurability(value: string): value is Durability {
  return (durabilities as readonly string[]).includes(value);
}

/** What an instance of the cluster runs with: its size's defaults, beneath the fleet's defaults, beneath its own settings. */
export function effectiveSettings(spec: Pick<ClusterSpec, 'size' | 'settings' | 'defaults'>): Record<string, string> {
  return { ...sizes[spec.size], ...spec.defaults, ...spec.settings };
}

/** The WAL a replication slot may hold, as a part of the allocation (docs/STORAGE.md "WAL bounds"). */
export const walKeepFractionOfStorage = 0.1;
/** Never below wal_keep_size (256MB, src/dataplane/local/conf.ts): a smaller slot bound would not bound anything. */
export const walKeepLimitMbMin = 256;
export const walKeepLimitMbMax = 64 * 1024;

/** max_slot_wal_keep_size of a cluster's instances, in MB: a tenth of its allocation, within the bounds above. */
export function walKeepLimitMb(storageGb: number): number {
  return Math.min(walKeepLimitMbMax, Math.max(walKeepLimitMbMin, Math.floor(storageGb * 1024 * walKeepFractionOfStorage)));
}

/** `sync` when there is a replica to be synchronous with, else `async`. */
export function defaultDurability(replicas: number): Durability {
  return replicas > 0 ? 'sync' : 'async';
}

/** The spec's durability; specs written before it existed take the default. */
export function durabilityOf(spec: ClusterSpec): Durability {
  return spec.durability ?? defaultDurability(spec.replicas);
}
