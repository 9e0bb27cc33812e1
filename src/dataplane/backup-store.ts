/**
 * Where a cluster's backups live: continuously archived WAL and base backups, one area per
 * cluster. The local driver keeps them in a directory; the interface is shaped so that an
 * S3-compatible store can stand behind it later (stage locally, commit, fetch to restore).
 */

export interface WalFile {
  /** As Postgres names it: a segment (`000000010000000000000003`), `.history`, `.partial` or `.backup`. */
  readonly name: string;
  readonly bytes: number;
}

export interface BackupStore {
  /** Makes the cluster's area exist; idempotent. */
  ensureArea(clusterId: string): Promise<void>;
  /** archive_command for the cluster's primary: never overwrites a different file, syncs what it writes. */
  archiveCommand(clusterId: string): string;
  /** restore_command reading the cluster's archive (for a restore into another cluster, too). */
  restoreCommand(clusterId: string): string;
  /** A local directory to build a base backup in; commitBase makes it the backup (or uploads it). */
  stageBase(clusterId: string, backupId: string): Promise<string>;
  commitBase(clusterId: string, backupId: string, staged: string): Promise<void>;
  /** The committed backup as a local directory, or null if there is none. */
  baseDirectory(clusterId: string, backupId: string): Promise<string | null>;
  deleteBase(clusterId: string, backupId: string): Promise<void>;
  listWal(clusterId: string): Promise<WalFile[]>;
  deleteWal(clusterId: string, names: readonly string[]): Promise<void>;
  /** Removes the cluster's whole area (the cluster and its backups are gone). */
  deleteArea(clusterId: string): Promise<void>;
}
