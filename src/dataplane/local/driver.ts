import { rm } from 'node:fs/promises';
import type pg from 'pg';
import { join } from 'node:path';
import type { Config } from '../../config.js';
import { sleep } from '../../lib/clock.js';
import type { InstanceId } from '../../lib/ids.js';
import { currentAbortSignal, runWithAbortSignal } from '../../lib/abort.js';
import { TransientError } from '../../lib/failure.js';
import {
  type BoundedOperation,
  clusterRoles,
  dataPlaneLimitsMs,
  type ClusterSecrets,
  type DataPlane,
  type InstanceSpec,
  type ArchiveStatus,
  type SlotStatus,
  type BackupCheck,
  type BaseBackupInfo,
  type InstanceStatus,
  type RejoinMethod,
  type RestoreSource,
  type InstanceUsage,
  type ServerSetting,
  type UpstreamRef,
} from '../dataplane.js';
import { Binaries, type PgBinaries } from '../../postgres/binaries.js';
import { assertSlotName, renderHba, renderInstanceConf, renderSyncConf, renderUpstreamConf, standbySignalFile, syncConfFile, upstreamConfFile } from './conf.js';
import { copyTreeBetween, ensureDirectory, readSmallFile, removeTree, replaceFile } from '../../postgres/files.js';
import { ClusterUsers, resolveRunAs, run, selfRunAs, type RunAs } from '../../postgres/osuser.js';
import { checkpoint, ensureCleanShutdown, promoteLocal, reloadLocal, rewind, superuserOverTcp } from './promote.js';
import { checkBackupFiles, checkpointLocal, isRecovering, readBackupInfo, recoveryConfFile, restoreSettings, runBaseBackup, writeRecoveryFiles } from './backup.js';
import { LocalBackupStore } from './backup-store.js';
import { segmentEndPosition, walFilesBefore } from './wal.js';
import { lsnToBigInt } from '../../lib/lsn.js';
import { dataDirMode, instancePaths, prepareDataDir, resolveBackupDir, resolveDataDir, socketPath, type InstancePaths } from '../../postgres/paths.js';
import { cellarConfFile, ensureIncludeLine, logTail, readPostmasterPid, serverPid, startDetached, stopServer, writeAuthFiles, writeConfText } from '../../postgres/server.js';
import { escapeIdentifier, escapeLiteral, isNotListening, localSuperuser, scramVerifier, sqlState, withClient } from '../../postgres/sql.js';
import { buildThenRename, exists, removeStaleBuilds } from '../../postgres/build.js';
import { bootstrapDataDir, copyDataDir, TemplateCache } from './template.js';
import { readSettings, reloadAndWait, removeHandSettings } from './settings.js';
import { type ExitListener, ExitWatch } from './exit-watch.js';
import { postmasterAnswers, StatusSessions } from './status-sessions.js';
import { measureUsage } from './usage.js';

/** pg_basebackup of a fresh cluster takes ~0.6 s; a real database can take much longer. */
export const baseBackupMsMax = 60 * 60_000;
/** Recovery of a restore replays the archived WAL since the backup: bounded, but generously. */
export const restoreRecoveryMsMax = 6 * 3_600_000;
export const restorePollMs = 20;
/** A latest restore waits this long for the source's current WAL file to be archived. */
export const archiveWaitMsMax = 60_000;
/** status() must answer quickly even when a server hangs. */
export const statusConnectMsMax = 1_000;
/** A replica reconnects 5 s (wal_retrieve_retry_interval) after its walsender is terminated. */
export const dropSlotAttemptsMax = 50;
export const dropSlotRetryMs = 20;

/** Structured logging, pino-compatible; optional so tests can run silent. */
export interface DataPlaneLogger {
  info(fields: Record<string, unknown>, message: string): void;
  warn(fields: Record<string, unknown>, message: string): void;
}

export interface LocalDataPlaneOptions {
  readonly dataDir: string;
  /** Continuous WAL archives and base backups, one area per cluster. */
  readonly backups: LocalBackupStore;
  /** archive_timeout: how long written WAL may wait for its segment to fill before it is archived. */
  readonly archiveTimeoutMs: number;
  readonly binaries: PgBinaries;
  /** Each cluster's OS user (one per cluster when Cellar is root; Cellar itself otherwise). */
  readonly users: ClusterUsers;
  /** Who builds and owns the templates every new primary is copied from. */
  readonly templateOwner: RunAs;
  /** Copy a prepared template data directory instead of running initdb per primary. */
  readonly templateEnabled: boolean;
  /** Decides per cluster instead (the provision-from-template flag); absent: templateEnabled. */
  readonly templateChoice?: (clusterId: string) => Promise<boolean>;
  readonly logger?: DataPlaneLogger;
}

const sqlStateObjectInUse = '55006';
const sqlStateUndefinedObject = '42704';
const sqlStateDuplicateObject = '42710';

export class LocalDataPlane implements DataPlane {
  private readonly templates: TemplateCache;
  private readonly exits = new ExitWatch();
  private readonly statusSessions = new StatusSessions();

  constructor(private readonly options: LocalDataPlaneOptions) {
    this.templates = new TemplateCache(options.dataDir, options.templateOwner);
  }

  /** Discovers binaries and the run-as user, resolves and prepares the data directory. */
  static async fromConfig(config: Config, logger?: DataPlaneLogger, templateChoice?: (clusterId: string) => Promise<boolean>): Promise<LocalDataPlane> {
    const templateOwner = await resolveRunAs();
    const binaries = await Binaries.discover({ pgBin: config.pgBin });
    const dataDir = resolveDataDir(config, templateOwner);
    await prepareDataDir(dataDir);
    const users = new ClusterUsers(dataDir);
    const backups = new LocalBackupStore(resolveBackupDir(config, templateOwner, dataDir), users);
    await backups.prepare();
    return new LocalDataPlane({
      dataDir,
      binaries,
      users,
      templateOwner,
      backups,
      archiveTimeoutMs: config.archiveTimeoutMs,
      templateEnabled: config.templateEnabled,
      ...(templateChoice ? { templateChoice } : {}),
      ...(logger ? { logger } : {}),
    });
  }

  versions(): readonly number[] {
    return this.options.binaries.versions();
  }

  /** Where this host's instances live (the host's disk capacity is measured there). */
  get dataDir(): string {
    return this.options.dataDir;
  }

  /** Where base backups and archived WAL go (its free space is measured there). */
  get backupDir(): string {
    return this.options.backups.root;
  }

  paths(instanceId: InstanceId): InstancePaths {
    return instancePaths(this.options.dataDir, instanceId);
  }

  /**
   * Runs one operation within its bound from the port (`dataPlaneLimitsMs`): past it, the
   * operation's waits end and its child processes are stopped, as when its step runs out of time.
   */
  private bounded<T>(operation: BoundedOperation, work: () => Promise<T>): Promise<T> {
    const limitMs = dataPlaneLimitsMs[operation];
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new TransientError(`data plane ${operation} exceeded its bound of ${limitMs} ms`)), limitMs);
    timer.unref();
    // The step's own abort (its time is up) ends the operation too.
    const outer = currentAbortSignal();
    const onOuterAbort = (): void => controller.abort(outer?.reason);
    if (outer?.aborted) onOuterAbort();
    outer?.addEventListener('abort', onOuterAbort, { once: true });
    return runWithAbortSignal(controller.signal, work).finally(() => {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onOuterAbort);
    });
  }

  private owner(clusterId: string): Promise<RunAs> {
    return this.options.users.ensure(clusterId);
  }

  async createPrimary(spec: InstanceSpec): Promise<void> {
    return this.bounded('createPrimary', async () => {
      const owner = await this.owner(spec.clusterId);
      const paths = await this.prepareInstance(spec, owner);
      if (paths === undefined) return;
      const binDir = this.options.binaries.binFor(spec.pgVersion);
      const startedMs = Date.now();
      const template = this.options.templateChoice === undefined ? this.options.templateEnabled : await this.options.templateChoice(spec.clusterId);
      await buildThenRename(paths.pgdata, owner, async (tmp) => {
        if (template) {
          await copyDataDir(binDir, await this.templates.ensure(spec.pgVersion, binDir), this.options.templateOwner, tmp, owner);
        } else {
          await bootstrapDataDir({ binDir, pgdata: tmp, runDir: paths.run, logFile: paths.log, runAs: owner });
        }
      });
      this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs, template }, 'primary data directory created');
    });
  }

  async createReplica(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return this.bounded('createReplica', async () => {
      const owner = await this.owner(spec.clusterId);
      const paths = await this.prepareInstance(spec, owner);
      if (paths === undefined) return;
      const binDir = this.options.binaries.binFor(spec.pgVersion);
      const startedMs = Date.now();
      await ensureSlot(upstream, spec.secrets);
      await buildThenRename(paths.pgdata, owner, async (tmp) => {
        await this.baseBackup(binDir, upstream, spec.secrets, tmp, owner);
        await this.writeStandbyFiles(spec, upstream, tmp, paths.run, owner);
      });
      this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs, upstreamPort: upstream.port }, 'replica data directory cloned');
    });
  }

  /**
   * pg_basebackup and pg_rewind copy the upstream's own cellar files: replace them with this
   * instance's, as a standby of `upstream` that waits for no one (a promoted replica must not keep
   * its old primary's synchronous standby list, which names itself).
   */
  private async writeStandbyFiles(spec: InstanceSpec, upstream: UpstreamRef, pgdata: string, runDir: string, runAs: RunAs): Promise<void> {
    await ensureIncludeLine(pgdata, runAs);
    await writeConfText(pgdata, cellarConfFile, this.instanceConf(spec, runDir), runAs);
    await writeConfText(pgdata, syncConfFile, renderSyncConf([]), runAs);
    await writeConfText(pgdata, upstreamConfFile, renderUpstreamConf(spec, upstream), runAs);
    await replaceFile(join(pgdata, standbySignalFile), '', 0o600, runAs);
  }

  /**
   * Common first half of both creates: undefined when the data directory already exists (the
   * rename is the commit point, so it is complete), else the prepared, stale-free paths.
   */
  private async prepareInstance(spec: InstanceSpec, owner: RunAs): Promise<InstancePaths | undefined> {
    const paths = this.paths(spec.instanceId);
    if (await exists(paths.pgdata)) return undefined;
    socketPath(paths.run, spec.port);
    // The instance root is Cellar's (nothing can be planted beside pgdata, run and the log); the leaves are the cluster's.
    await ensureDirectory(paths.root, dataDirMode, selfRunAs());
    await ensureDirectory(paths.run, 0o700, owner);
    // The machine's lease guarantees one builder per instance, so any tmp dir is a crash's leftover.
    await removeStaleBuilds(paths.pgdata);
    return paths;
  }

  private async baseBackup(binDir: string, upstream: UpstreamRef, secrets: ClusterSecrets, target: string, runAs: RunAs): Promise<void> {
    // No -S: the slot belongs to the running standby; an orphaned pg_basebackup must not hold it.
    // -X stream uses its own temporary slot, which dies with its connection.
    const args = ['-h', upstream.host, '-p', String(upstream.port), '-U', clusterRoles.replication, '-D', target, '-X', 'stream', '-c', 'fast', '-w'];
    await run(join(binDir, 'pg_basebackup'), args, {
      runAs,
      timeoutMs: baseBackupMsMax,
      env: { PGPASSWORD: secrets.replicationPassword, PGSSLMODE: 'disable', PGGSSENCMODE: 'disable', PGCONNECT_TIMEOUT: '10' },
    });
  }

  async start(spec: InstanceSpec): Promise<void> {
    return this.bounded('start', async () => {
      const paths = this.paths(spec.instanceId);
      if (!(await exists(paths.pgdata))) throw new Error(`instance ${spec.instanceId} has no data directory; create it before start`);
      const binDir = this.options.binaries.binFor(spec.pgVersion);
      const startedMs = Date.now();
      const owner = await this.owner(spec.clusterId);
      await this.options.backups.ensureArea(spec.clusterId);
      if ((await serverPid(paths.pgdata)) === undefined) await this.writeInstanceFiles(spec, paths, owner);
      await startDetached(binDir, paths.pgdata, paths.log, owner);
      if (await exists(join(paths.pgdata, recoveryConfFile))) await this.finishRecovery(spec, paths);
      if (!(await exists(join(paths.pgdata, standbySignalFile)))) await setPasswords(paths.run, spec.port, spec.secrets);
      this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs }, 'instance started');
    });
  }

  private instanceConf(spec: InstanceSpec, runDir: string): string {
    return renderInstanceConf(spec, runDir, { command: this.options.backups.archiveCommand(spec.clusterId), timeoutMs: this.options.archiveTimeoutMs });
  }

  private async writeInstanceFiles(spec: InstanceSpec, paths: InstancePaths, owner: RunAs): Promise<void> {
    socketPath(paths.run, spec.port);
    await writeConfText(paths.pgdata, cellarConfFile, this.instanceConf(spec, paths.run), owner);
    await writeAuthFiles(paths.pgdata, renderHba(spec.peers), owner);
  }

  /**
   * A restored primary: waits until recovery reached its target and the server left recovery
   * (recovery.signal goes before the end-of-recovery checkpoint, so the file is not the signal),
   * then drops the recovery settings. Keyed on the settings file, so a retry finishes the job.
   */
  private async finishRecovery(spec: InstanceSpec, paths: InstancePaths): Promise<void> {
    const deadline = Date.now() + restoreRecoveryMsMax;
    while (await this.inRecovery(spec, paths)) {
      if (Date.now() > deadline) throw new Error(`instance ${spec.instanceId} still recovering after ${restoreRecoveryMsMax} ms${await logTail(paths.log)}`);
      if ((await serverPid(paths.pgdata)) === undefined) throw new Error(`instance ${spec.instanceId} stopped during recovery${await logTail(paths.log)}`);
      await sleep(restorePollMs);
    }
    await rm(join(paths.pgdata, recoveryConfFile), { force: true });
    await reloadLocal(paths.run, spec.port);
    await this.options.backups.dropRestoreWal(spec.clusterId);
  }

  private async inRecovery(spec: InstanceSpec, paths: InstancePaths): Promise<boolean> {
    if (await isRecovering(paths.pgdata)) return true;
    return withClient(localSuperuser(paths.run, spec.port), async (client) => {
      const result = await client.query<{ in_recovery: boolean }>('select pg_is_in_recovery() as in_recovery');
      return result.rows[0]?.in_recovery !== false;
    });
  }

  async takeBaseBackup(source: InstanceSpec, primary: InstanceSpec, backupId: string, maxRateBytesPerSecond: number): Promise<BaseBackupInfo> {
    return this.bounded('takeBaseBackup', async () => {
      const { backups } = this.options;
      const runAs = await this.owner(source.clusterId);
      const committed = await backups.baseDirectory(source.clusterId, backupId);
      if (committed !== null) return readBackupInfo(committed);
      const staged = await backups.stageBase(source.clusterId, backupId);
      const startedMs = Date.now();
      if (source.instanceId !== primary.instanceId) await checkpointLocal(this.paths(primary.instanceId).run, primary.port);
      try {
        const copyMs = await runBaseBackup({ binDir: this.options.binaries.binFor(source.pgVersion), host: '127.0.0.1', port: source.port, secrets: source.secrets, target: staged, maxRateBytesPerSecond, runAs });
        const info = { ...(await readBackupInfo(staged)), durationMs: copyMs };
        await backups.commitBase(source.clusterId, backupId, staged);
        this.log('info', { backupId, durationMs: Date.now() - startedMs, bytes: info.bytes, source: source.instanceId }, 'base backup taken');
        return info;
      } catch (error) {
        await rm(staged, { recursive: true, force: true });
        throw error;
      }
    });
  }

  async checkBackup(clusterId: string, backupId: string, pgVersion: number): Promise<BackupCheck> {
    return this.bounded('checkBackup', async () => {
      const backupDir = await this.options.backups.baseDirectory(clusterId, backupId);
      if (backupDir === null) return { ok: false, reason: `backup ${backupId} has no files in the backup store` };
      const owner = await this.options.backups.areaOwner(clusterId);
      if (owner === undefined) return { ok: false, reason: `cluster ${clusterId}'s backups are gone (purged)` };
      return checkBackupFiles({
        binDir: this.options.binaries.binFor(pgVersion),
        backupDir,
        scratchRoot: join(this.options.dataDir, 'scratch', backupId),
        restoreCommand: this.options.backups.restoreCommand(clusterId),
        runAs: owner,
      });
    });
  }

  async deleteBackup(clusterId: string, backupId: string): Promise<void> {
    return this.bounded('deleteBackup', async () => {
      await this.options.backups.deleteBase(clusterId, backupId);
    });
  }

  async pruneWal(clusterId: string, oldestNeededWalFile: string): Promise<number> {
    return this.bounded('pruneWal', async () => {
      const prunable = walFilesBefore(await this.options.backups.listWal(clusterId), oldestNeededWalFile);
      await this.options.backups.deleteWal(clusterId, prunable);
      return prunable.length;
    });
  }

  async restorePrimary(spec: InstanceSpec, source: RestoreSource): Promise<void> {
    return this.bounded('restorePrimary', async () => {
      const owner = await this.owner(spec.clusterId);
      const paths = await this.prepareInstance(spec, owner);
      if (paths === undefined) return;
      const { backups } = this.options;
      const backupDir = await backups.baseDirectory(source.clusterId, source.backupId);
      const sourceOwner = await backups.areaOwner(source.clusterId);
      if (backupDir === null || sourceOwner === undefined) throw new Error(`backup ${source.backupId} of cluster ${source.clusterId} has no files in the backup store`);
      if (source.sourcePrimary !== undefined) await this.archiveCurrentWal(source.sourcePrimary);
      const startedMs = Date.now();
      // The source's files belong to its own user: copied across users, never read as root.
      const restoreCommand = await backups.stageRestoreWal(source.clusterId, spec.clusterId);
      await buildThenRename(paths.pgdata, owner, async (tmp) => {
        await copyTreeBetween(backupDir, sourceOwner, tmp, owner);
        await ensureIncludeLine(tmp, owner);
        await writeConfText(tmp, cellarConfFile, this.instanceConf(spec, paths.run), owner);
        await writeConfText(tmp, syncConfFile, renderSyncConf([]), owner);
        await rm(join(tmp, upstreamConfFile), { force: true });
        await writeRecoveryFiles(tmp, restoreSettings(restoreCommand, source), owner);
      });
      this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs, backupId: source.backupId }, 'primary restored from a base backup; recovery runs at start');
    });
  }

  /** Latest means "up to now": the source switches to a new WAL file and the old one must reach the archive (bounded). */
  private async archiveCurrentWal(primary: InstanceSpec): Promise<void> {
    const paths = this.paths(primary.instanceId);
    if ((await serverPid(paths.pgdata)) === undefined) return; // Gone: its archive is all there is.
    const segment = await withClient(localSuperuser(paths.run, primary.port), async (client) => {
      const result = await client.query<{ name: string }>('select pg_walfile_name(pg_switch_wal()) as name');
      return result.rows[0]?.name;
    });
    if (segment === undefined) return;
    const deadline = Date.now() + archiveWaitMsMax;
    while (Date.now() < deadline) {
      const archived = await this.options.backups.listWal(primary.clusterId);
      if (archived.some((file) => file.name === segment)) return;
      await sleep(restorePollMs);
    }
    throw new Error(`WAL file ${segment} of the source was not archived within ${archiveWaitMsMax} ms; is archiving failing?`);
  }

  async stop(instanceId: InstanceId, mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    return this.bounded('stop', async () => {
      this.statusSessions.close(instanceId);
      await stopServer(this.paths(instanceId).pgdata, mode);
    });
  }

  async promote(spec: InstanceSpec): Promise<void> {
    return this.bounded('promote', async () => {
      const paths = this.paths(spec.instanceId);
      const startedMs = Date.now();
      await writeConfText(paths.pgdata, syncConfFile, renderSyncConf([]), await this.owner(spec.clusterId));
      await reloadLocal(paths.run, spec.port);
      await promoteLocal(paths.run, spec.port);
      this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs }, 'instance promoted');
    });
  }

  async follow(spec: InstanceSpec, upstream: UpstreamRef): Promise<void> {
    return this.bounded('follow', async () => {
      const paths = this.paths(spec.instanceId);
      await ensureSlot(upstream, spec.secrets);
      await writeConfText(paths.pgdata, upstreamConfFile, renderUpstreamConf(spec, upstream), await this.owner(spec.clusterId));
      // Postgres 13+ restarts the WAL receiver with the new primary_conninfo on reload.
      if ((await serverPid(paths.pgdata)) !== undefined) await reloadLocal(paths.run, spec.port);
      this.log('info', { instanceId: spec.instanceId, upstreamPort: upstream.port }, 'replica follows a new upstream');
    });
  }

  async rejoin(spec: InstanceSpec, upstream: UpstreamRef): Promise<RejoinMethod> {
    return this.bounded('rejoin', async () => {
      const paths = this.paths(spec.instanceId);
      if ((await serverPid(paths.pgdata)) !== undefined) throw new Error(`instance ${spec.instanceId} is running; stop it before it rejoins`);
      const binDir = this.options.binaries.binFor(spec.pgVersion);
      const startedMs = Date.now();
      const owner = await this.owner(spec.clusterId);
      if (await this.isStandbyOf(spec, upstream, paths.pgdata)) return 'rewound'; // Done by an earlier run of this step.
      if (await exists(paths.pgdata)) {
        try {
          await ensureCleanShutdown(binDir, paths.pgdata, owner);
          await checkpoint(upstream, spec.secrets);
          await rewind(binDir, paths.pgdata, upstream, spec.secrets, owner);
          await ensureSlot(upstream, spec.secrets);
          await this.writeStandbyFiles(spec, upstream, paths.pgdata, paths.run, owner);
          this.log('info', { instanceId: spec.instanceId, durationMs: Date.now() - startedMs }, 'old primary rewound');
          return 'rewound';
        } catch (error) {
          if (isSharedMemoryBusy(error)) throw error;
          this.log('warn', { instanceId: spec.instanceId, err: error instanceof Error ? error.message : String(error) }, 'rewind failed; cloning afresh');
        }
        await removeStaleBuilds(paths.pgdata);
        await removeTree(paths.pgdata);
      }
      await this.createReplica(spec, upstream);
      return 'cloned';
    });
  }

  /** The data directory is already a standby of exactly this upstream (the last thing rejoin writes). */
  private async isStandbyOf(spec: InstanceSpec, upstream: UpstreamRef, pgdata: string): Promise<boolean> {
    if (!(await exists(join(pgdata, standbySignalFile)))) return false;
    const written = await readSmallFile(join(pgdata, upstreamConfFile)).catch(() => '');
    return written === renderUpstreamConf(spec, upstream);
  }

  /** On this host the status is taken now: it is cheap here. */
  observe(spec: InstanceSpec): Promise<InstanceStatus> {
    return this.status(spec);
  }

  async allowPeers(spec: InstanceSpec): Promise<void> {
    return this.bounded('allowPeers', async () => {
      const paths = this.paths(spec.instanceId);
      if (!(await exists(paths.pgdata))) return;
      await writeAuthFiles(paths.pgdata, renderHba(spec.peers), await this.owner(spec.clusterId));
      if ((await serverPid(paths.pgdata)) !== undefined) await reloadLocal(paths.run, spec.port);
    });
  }

  async configure(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return this.bounded('configure', async () => {
      const paths = this.paths(spec.instanceId);
      if (!(await exists(paths.pgdata))) throw new Error(`instance ${spec.instanceId} has no data directory to configure`);
      const owner = await this.owner(spec.clusterId);
      await writeConfText(paths.pgdata, cellarConfFile, this.instanceConf(spec, paths.run), owner);
      await removeHandSettings(paths.pgdata, owner);
      const pidFile = await readPostmasterPid(paths.pgdata);
      if ((await serverPid(paths.pgdata)) === undefined || pidFile?.port === undefined) return [];
      await reloadAndWait(paths.run, pidFile.port);
      return readSettings(paths.pgdata, paths.run, pidFile.port);
    });
  }

  async checkpoint(spec: InstanceSpec): Promise<void> {
    return this.bounded('checkpoint', async () => {
      const paths = this.paths(spec.instanceId);
      const pidFile = await readPostmasterPid(paths.pgdata);
      if ((await serverPid(paths.pgdata)) === undefined || pidFile?.port === undefined) return;
      await checkpointLocal(paths.run, pidFile.port);
    });
  }

  async settings(spec: InstanceSpec): Promise<readonly ServerSetting[]> {
    return this.bounded('settings', async () => {
      const paths = this.paths(spec.instanceId);
      const pidFile = await readPostmasterPid(paths.pgdata);
      // Connecting to a server that is not there would fail too, but naming a socket file, not the reason.
      if ((await serverPid(paths.pgdata)) === undefined || pidFile?.port === undefined) throw new TransientError(`instance ${spec.instanceId} is not running: settings are read from its running server`);
      return readSettings(paths.pgdata, paths.run, pidFile.port);
    });
  }

  async usage(spec: InstanceSpec): Promise<InstanceUsage> {
    return this.bounded('usage', () => measureUsage(this.paths(spec.instanceId).pgdata));
  }

  async setSynchronousStandbys(spec: InstanceSpec, standbys: readonly string[]): Promise<void> {
    return this.bounded('setSynchronousStandbys', async () => {
      const paths = this.paths(spec.instanceId);
      await writeConfText(paths.pgdata, syncConfFile, renderSyncConf(standbys), await this.owner(spec.clusterId));
      if ((await serverPid(paths.pgdata)) !== undefined) await reloadLocal(paths.run, spec.port);
    });
  }

  async status(spec: InstanceSpec): Promise<InstanceStatus> {
    return this.bounded('status', async () => {
      const paths = this.paths(spec.instanceId);
      const pid = await serverPid(paths.pgdata);
      const stopped = { running: false, pid: undefined, accepting: false, inRecovery: undefined, timeline: undefined, lsn: undefined, streaming: undefined, receiveLsn: undefined, archive: undefined };
      if (pid === undefined) {
        this.statusSessions.close(spec.instanceId);
        return stopped;
      }
      const notAccepting = { ...stopped, running: true, pid };
      const pidFile = await readPostmasterPid(paths.pgdata);
      if (pidFile?.status !== 'ready' && pidFile?.status !== 'standby') return notAccepting;
      // The running server's own port, in case the spec has changed since it started.
      const port = pidFile.port ?? spec.port;
      // Accepting means a new connection is answered now, which the kept session cannot show.
      if (!(await postmasterAnswers(paths.run, port, statusConnectMsMax))) return notAccepting;
      try {
        const row = await this.statusSessions.query(spec.instanceId, paths.run, port, pid, statusConnectMsMax, queryStatus);
        return { running: true, pid, accepting: true, ...row };
      } catch {
        return notAccepting;
      }
    });
  }

  async alive(instanceId: InstanceId): Promise<boolean> {
    return this.bounded('alive', async () => {
      return (await serverPid(this.paths(instanceId).pgdata)) !== undefined;
    });
  }

  /** Bounded as `alive`, whose check it is, plus an entry in this process's watch (never an agent operation). */
  async watchExit(instanceId: InstanceId): Promise<boolean> {
    return this.bounded('alive', async () => {
      const pid = await serverPid(this.paths(instanceId).pgdata);
      return pid !== undefined && this.exits.watch(instanceId, pid);
    });
  }

  /** Who is told when a watched postmaster exits (the control plane wakes the instance's machine). */
  onExit(listener: ExitListener): void {
    this.exits.onExit(listener);
  }

  async dropSlot(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
    return this.bounded('dropSlot', async () => {
      assertSlotName(upstream.slotName);
      try {
        await withClient(superuserOverTcp(upstream, secrets), (client) => dropSlotWith(client, upstream.slotName));
      } catch (error) {
        if (isNotListening(error)) return; // The upstream is gone, and its slots with it.
        throw error;
      }
    });
  }

  async destroy(instanceId: InstanceId): Promise<void> {
    return this.bounded('destroy', async () => {
      const paths = this.paths(instanceId);
      this.statusSessions.close(instanceId);
      await stopServer(paths.pgdata);
      await removeStaleBuilds(paths.pgdata);
      await removeTree(paths.root);
    });
  }

  async purgeCluster(clusterId: string): Promise<void> {
    return this.bounded('purgeCluster', async () => {
      await this.options.backups.deleteArea(clusterId);
      await this.options.users.remove(clusterId);
      this.log('info', { clusterId }, 'cluster purged: backups and OS user removed');
    });
  }

  private log(level: 'info' | 'warn', fields: Record<string, unknown>, message: string): void {
    this.options.logger?.[level](fields, message);
  }
}

type StatusRow = Pick<InstanceStatus, 'inRecovery' | 'timeline' | 'lsn' | 'streaming' | 'receiveLsn' | 'archive' | 'slots' | 'connections' | 'transactions'>;

/**
 * One round trip. Functions valid only on a primary (pg_current_wal_lsn, pg_walfile_name) sit
 * behind CASE so they are not evaluated in recovery. A primary's timeline comes from its current
 * WAL file name, because pg_control's checkpoint timeline lags after a promote until the next
 * checkpoint; a standby's from its WAL receiver, or its last restartpoint when not streaming.
 */
const statusSql = `
select r.in_recovery,
       case when r.in_recovery then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end::text as lsn,
       case when r.in_recovery
            then coalesce((select received_tli from pg_stat_wal_receiver), (select timeline_id from pg_control_checkpoint()))
            else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       end as timeline,
       exists (select 1 from pg_stat_wal_receiver where status = 'streaming') as streaming,
       case when r.in_recovery then coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) else pg_current_wal_lsn() end::text as receive_lsn,
       a.last_archived_wal, a.last_archived_time, a.failed_count, a.last_failed_wal, a.last_failed_time,
       (select coalesce(json_agg(json_build_object('name', slot_name, 'walStatus', wal_status, 'safeWalSizeBytes', safe_wal_size) order by slot_name), '[]'::json)
          from pg_replication_slots where slot_type = 'physical') as slots,
       (select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid())::int as connections,
       (select coalesce(sum(xact_commit + xact_rollback), 0) from pg_stat_database)::text as transactions
from pg_stat_archiver a, (select pg_is_in_recovery() as in_recovery) r`;

interface StatusQueryRow {
  in_recovery: boolean;
  lsn: string | null;
  timeline: number | null;
  streaming: boolean;
  receive_lsn: string | null;
  last_archived_wal: string | null;
  last_archived_time: Date | null;
  failed_count: string;
  last_failed_wal: string | null;
  last_failed_time: Date | null;
  slots: SlotStatus[];
  connections: number;
  /** numeric as text: a counter that may pass 2^31. */
  transactions: string;
}

async function queryStatus(client: pg.Client): Promise<StatusRow> {
  const result = await client.query<StatusQueryRow>(statusSql);
  const row = result.rows[0];
  if (row === undefined) throw new Error('status query returned no row');
  return {
    inRecovery: row.in_recovery,
    lsn: row.lsn ?? undefined,
    timeline: row.timeline ?? undefined,
    streaming: row.in_recovery ? row.streaming : undefined,
    receiveLsn: row.receive_lsn ?? undefined,
    archive: row.in_recovery ? undefined : archiveStatus(row),
    ...(row.in_recovery ? {} : { slots: row.slots.map((slot) => ({ ...slot, safeWalSizeBytes: slot.safeWalSizeBytes === null ? null : Number(slot.safeWalSizeBytes) })) }),
    connections: row.connections,
    transactions: Number(row.transactions),
  };
}

/** The archiver's view, with lag: WAL from the end of the last archived segment to the current LSN. */
function archiveStatus(row: StatusQueryRow): ArchiveStatus {
  const archivedEnd = row.last_archived_wal === null ? null : segmentEndPosition(row.last_archived_wal);
  const current = row.lsn === null ? null : lsnToBigInt(row.lsn);
  const lag = archivedEnd === null || current === null ? null : current > archivedEnd ? Number(current - archivedEnd) : 0;
  return {
    lastArchivedWal: row.last_archived_wal,
    lastArchivedAt: row.last_archived_time?.toISOString() ?? null,
    lagBytes: lag,
    failedCount: Number(row.failed_count),
    lastFailedWal: row.last_failed_wal,
    lastFailedAt: row.last_failed_time?.toISOString() ?? null,
  };
}

/**
 * Sets the three cluster passwords, as SCRAM verifiers, on every start of a primary: idempotent,
 * a few milliseconds, and it makes a rotated secret take effect. Never called for a replica
 * (standby.signal): it gets the roles from its primary; a primary still recovering is an error
 * the step retries.
 */
async function setPasswords(runDir: string, port: number, secrets: ClusterSecrets): Promise<void> {
  const passwords: ReadonlyArray<readonly [string, string]> = [
    [clusterRoles.superuser, secrets.superuserPassword],
    [clusterRoles.replication, secrets.replicationPassword],
    [clusterRoles.app, secrets.appPassword],
  ];
  await withClient(localSuperuser(runDir, port), async (client) => {
    const recovery = await client.query<{ in_recovery: boolean }>('select pg_is_in_recovery() as in_recovery');
    // Only called for a server that is to be a primary: still recovering means "not yet", not "skip".
    if (recovery.rows[0]?.in_recovery !== false) throw new Error('the server is still in recovery; its passwords are set once it has finished');
    // Belt and braces: a failing statement must not be logged, even though it holds only a verifier.
    await client.query('set log_min_error_statement = panic');
    await client.query('set log_statement = none');
    await client.query('begin');
    for (const [role, password] of passwords) {
      await client.query(`alter role ${escapeIdentifier(role)} password ${escapeLiteral(scramVerifier(password))}`);
    }
    // A data directory made before tenants lost CREATEROLE (or one restored from its backup) gets the same lockdown.
    await client.query(`alter role ${escapeIdentifier(clusterRoles.app)} nosuperuser nocreaterole noreplication nobypassrls`);
    await client.query('commit');
  });
}

/**
 * Children of a SIGKILLed postmaster exit when they notice; until then single-user recovery
 * refuses to start. Transient: the step is retried, not answered with a fresh clone.
 */
function isSharedMemoryBusy(error: unknown): boolean {
  return error instanceof Error && /pre-existing shared memory block|lock file .* already exists/.test(error.message);
}

/** Reserves the replica's slot on the upstream now, so WAL from the base backup on is kept. */
async function ensureSlot(upstream: UpstreamRef, secrets: ClusterSecrets): Promise<void> {
  assertSlotName(upstream.slotName);
  await withClient(superuserOverTcp(upstream, secrets), async (client) => {
    const found = await client.query('select 1 from pg_replication_slots where slot_name = $1', [upstream.slotName]);
    if (found.rowCount !== 0) return;
    try {
      await client.query('select pg_create_physical_replication_slot($1, true)', [upstream.slotName]);
    } catch (error) {
      if (sqlState(error) !== sqlStateDuplicateObject) throw error;
    }
  });
}

/**
 * Drops a slot, terminating the walsender holding it if its replica is still connected. Bounded:
 * the replica may reconnect between terminate and drop, so a few attempts may be needed.
 */
async function dropSlotWith(client: pg.Client, slotName: string): Promise<void> {
  for (let attempt = 0; attempt < dropSlotAttemptsMax; attempt++) {
    const slot = await client.query<{ active_pid: number | null }>('select active_pid from pg_replication_slots where slot_name = $1', [slotName]);
    const row = slot.rows[0];
    if (row === undefined) return;
    if (row.active_pid !== null) await client.query('select pg_terminate_backend($1)', [row.active_pid]);
    try {
      await client.query('select pg_drop_replication_slot($1)', [slotName]);
      return;
    } catch (error) {
      const state = sqlState(error);
      if (state === sqlStateUndefinedObject) return;
      if (state !== sqlStateObjectInUse) throw error;
    }
    await sleep(dropSlotRetryMs);
  }
  throw new Error(`replication slot ${slotName} still active after ${dropSlotAttemptsMax} attempts`);
}
