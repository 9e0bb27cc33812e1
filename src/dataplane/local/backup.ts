import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../../lib/assert.js';
import { PermanentError } from '../../lib/failure.js';
import { clusterRoles, type BackupCheck, type BaseBackupInfo, type ClusterSecrets } from '../dataplane.js';
import { renderConf, startDetached, stopServer, writeConfText } from '../../postgres/server.js';
import { copyTreeBetween, ensureDirectory, readSmallFile, removeTree } from '../../postgres/files.js';
import { run, selfRunAs, type RunAs } from '../../postgres/osuser.js';
import { localSuperuser, withClient } from '../../postgres/sql.js';
import { exists } from '../../postgres/build.js';

/**
 * The backup half of the Postgres domain: base backups with pg_basebackup, their check with
 * pg_verifybackup and a scratch restore, and the recovery settings of a restore.
 */

/** A base backup of a large database at a capped rate takes long; bound it anyway. */
export const baseBackupMsMax = 12 * 3_600_000;
export const verifyMsMax = 3_600_000;
/** Cellar's own settings file for recovery; included last, so it overrides what a backup brought. */
export const recoveryConfFile = 'cellar.recovery.conf';
export const recoverySignalFile = 'recovery.signal' as const;
/** The scratch server listens on no TCP port; this only names its socket. */
const scratchPort = 5432;
/** A manifest lists every file of the backup: large for a large database, still bounded. */
const manifestBytesMax = 512 * 1024 * 1024;

/** `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` and `START TIMELINE: 1`. */
export function parseBackupLabel(text: string): { startLsn: string; startWalFile: string; timeline: number } {
  const start = /^START WAL LOCATION: ([0-9A-F]+\/[0-9A-F]+) \(file ([0-9A-F]{24})\)$/m.exec(text);
  const timeline = /^START TIMELINE: (\d+)$/m.exec(text);
  // The label is read from disk: a damaged one is a damaged backup, not a bug in Cellar.
  if (start?.[1] === undefined || start[2] === undefined || timeline?.[1] === undefined) throw new PermanentError('backup_label lacks its start location or timeline');
  return { startLsn: start[1], startWalFile: start[2], timeline: Number(timeline[1]) };
}

interface Manifest {
  readonly Files?: ReadonlyArray<{ readonly Size?: number }>;
  readonly 'WAL-Ranges'?: ReadonlyArray<{ readonly Timeline: number; readonly 'Start-LSN': string; readonly 'End-LSN': string }>;
}

/** The facts of a committed (or just written) plain-format backup directory. */
export async function readBackupInfo(dir: string): Promise<BaseBackupInfo> {
  // The backup directory belongs to the cluster's user: read without following links.
  const label = parseBackupLabel((await readSmallFile(join(dir, 'backup_label'))) ?? '');
  const manifest = JSON.parse((await readSmallFile(join(dir, 'backup_manifest'), manifestBytesMax)) ?? '{}') as Manifest;
  const ranges = manifest['WAL-Ranges'] ?? [];
  const last = ranges[ranges.length - 1];
  if (last === undefined) throw new PermanentError(`backup_manifest in ${dir} has no WAL range`);
  const bytes = (manifest.Files ?? []).reduce((sum, file) => sum + (file.Size ?? 0), 0);
  return { ...label, endLsn: last['End-LSN'], bytes, durationMs: null };
}

export interface BaseBackupOptions {
  readonly binDir: string;
  readonly host: string;
  readonly port: number;
  readonly secrets: ClusterSecrets;
  readonly target: string;
  readonly maxRateBytesPerSecond: number;
  readonly runAs: RunAs;
}

/** pg_basebackup accepts 32 kB/s to 1 GB/s; below is raised to the minimum, above means no cap. */
function maxRateArgument(bytesPerSecond: number): string[] {
  if (bytesPerSecond <= 0 || bytesPerSecond > 1024 ** 3) return [];
  return [`--max-rate=${Math.max(32, Math.floor(bytesPerSecond / 1024))}k`];
}

/**
 * Plain format, WAL streamed alongside (the backup restores on its own), fast checkpoint, a
 * manifest. The copy is timed on its own (the rate cap governs it), then made durable with
 * initdb --sync-only, as pg_basebackup would have done; returns the copy's milliseconds.
 */
export async function runBaseBackup(options: BaseBackupOptions): Promise<number> {
  const args = [
    '-h', options.host, '-p', String(options.port), '-U', clusterRoles.replication,
    '-D', options.target, '-Fp', '-X', 'stream', '-c', 'fast', '-w', '--manifest-checksums=CRC32C', '--no-sync',
    ...maxRateArgument(options.maxRateBytesPerSecond),
  ];
  const startedMs = Date.now();
  await run(join(options.binDir, 'pg_basebackup'), args, {
    runAs: options.runAs,
    timeoutMs: baseBackupMsMax,
    env: { PGPASSWORD: options.secrets.replicationPassword, PGSSLMODE: 'disable', PGGSSENCMODE: 'disable', PGCONNECT_TIMEOUT: '10' },
  });
  const copyMs = Date.now() - startedMs;
  await run(join(options.binDir, 'initdb'), ['--sync-only', '-D', options.target], { runAs: options.runAs, timeoutMs: baseBackupMsMax });
  return copyMs;
}

/** A checkpoint on the primary, so a standby's backup can start at the next restartpoint without waiting minutes. */
export async function checkpointLocal(runDir: string, port: number): Promise<void> {
  await withClient(localSuperuser(runDir, port), (client) => client.query('checkpoint'));
}


/**
 * Recovery settings in Cellar's last-included file, and the one signal file that picks the mode:
 * recovery.signal (a restore: recover to the target, then promote) or standby.signal (a check).
 */
export async function writeRecoveryFiles(pgdata: string, settings: Readonly<Record<string, string>>, runAs: RunAs, signal: 'recovery.signal' | 'standby.signal' = recoverySignalFile): Promise<void> {
  const other = signal === recoverySignalFile ? 'standby.signal' : recoverySignalFile;
  await rm(join(pgdata, other), { force: true });
  await writeConfText(pgdata, recoveryConfFile, renderConf(settings), runAs);
  await writeConfText(pgdata, signal, '', runAs);
}

export interface ScratchCheckOptions {
  readonly binDir: string;
  readonly backupDir: string;
  /** Removed first and last; must be on a path the run-as user can traverse. */
  readonly scratchRoot: string;
  readonly restoreCommand: string;
  readonly runAs: RunAs;
}

/**
 * The proof a backup restores: pg_verifybackup checks every file against the manifest (and the
 * WAL it carries); then a copy is started as a server that recovers to the backup's end and
 * pauses there, a query must answer, and the copy is removed.
 */
export async function checkBackupFiles(options: ScratchCheckOptions): Promise<BackupCheck> {
  try {
    await run(join(options.binDir, 'pg_verifybackup'), ['--quiet', options.backupDir], { runAs: options.runAs, timeoutMs: verifyMsMax });
  } catch (error) {
    return { ok: false, reason: `pg_verifybackup: ${toolComplaints(error, 'pg_verifybackup')}` };
  }
  await removeTree(options.scratchRoot);
  const pgdata = join(options.scratchRoot, 'pgdata');
  const runDir = join(options.scratchRoot, 'run');
  try {
    await ensureDirectory(options.scratchRoot, 0o711, selfRunAs());
    await ensureDirectory(runDir, 0o700, options.runAs);
    await ensureDirectory(pgdata, 0o700, options.runAs);
    await copyTreeBetween(options.backupDir, options.runAs, pgdata, options.runAs);
    await writeRecoveryFiles(pgdata, scratchSettings(runDir, options.restoreCommand), options.runAs, 'standby.signal');
    const log = join(options.scratchRoot, 'postgres.log');
    try {
      await startDetached(options.binDir, pgdata, log, options.runAs);
    } catch (error) {
      return { ok: false, reason: `the restored copy did not start: ${firstLines(error)}` };
    }
    const detail = await queryConsistentCopy(runDir);
    return detail.startsWith('error:') ? { ok: false, reason: detail.slice('error: '.length) } : { ok: true, detail };
  } finally {
    await stopServer(pgdata, 'immediate').catch(() => undefined);
    await removeTree(options.scratchRoot);
  }
}

/**
 * The copy runs as a standby without a primary: it replays the backup's WAL (and any archived
 * after it) and opens for reads once consistent, which is the proof. A targeted recovery
 * ('immediate') would instead fail on a backup of an idle cluster, whose WAL ends exactly at
 * the backup's end: Postgres 15 acts on the target only when it reads the next record.
 */
function scratchSettings(runDir: string, restoreCommand: string): Record<string, string> {
  return {
    port: String(scratchPort),
    listen_addresses: '',
    unix_socket_directories: runDir,
    archive_mode: 'off',
    hot_standby: 'on',
    restore_command: restoreCommand,
    primary_conninfo: '',
    primary_slot_name: '',
  };
}

/** The copy is open (startDetached waited for it): ask it a question a broken one cannot answer. */
async function queryConsistentCopy(runDir: string): Promise<string> {
  return withClient(localSuperuser(runDir, scratchPort), async (client) => {
    const result = await client.query<{ databases: number; relations: number; in_recovery: boolean }>(
      `select (select count(*)::int from pg_database) as databases, (select count(*)::int from pg_class) as relations, pg_is_in_recovery() as in_recovery`,
    );
    const row = result.rows[0];
    if (row === undefined || row.databases < 1) return 'error: the restored copy lists no database';
    return `restored and queried: ${row.databases} databases, ${row.relations} relations in postgres`;
  });
}

/** What a tool said on stderr (the lines after the command line), without its own prefix. */
function toolComplaints(error: unknown, tool: string): string {
  const lines = (error instanceof Error ? error.message : String(error)).split('\n').slice(1).map((line) => line.trim().replace(new RegExp(`^${tool}: (error: )?`), ''));
  const said = lines.filter((line) => line !== '').slice(0, 4).join('; ');
  return said === '' ? firstLines(error) : said;
}

function firstLines(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n').slice(0, 4).join(' ').trim();
}

/** Restore: recovery from the source cluster's archive up to the target, then promotion. */
export function restoreSettings(restoreCommand: string, target: { readonly targetTime?: string; readonly targetLsn?: string }): Record<string, string> {
  const settings: Record<string, string> = {
    restore_command: restoreCommand,
    recovery_target_timeline: 'latest',
    recovery_target_action: 'promote',
  };
  if (target.targetTime !== undefined) settings['recovery_target_time'] = postgresTimestamp(target.targetTime);
  if (target.targetLsn !== undefined) settings['recovery_target_lsn'] = target.targetLsn;
  return settings;
}

/**
 * recovery_target_time wants `2026-11-26 11:36:09.551+00`: it refuses ISO's `T` and `Z`. A UTC
 * ISO time keeps every fractional digit (Postgres has microseconds, Date only milliseconds: a
 * target of .123456 cut to .123 could leave out a commit the user saw).
 */
export function postgresTimestamp(iso: string): string {
  const utc = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)Z$/.exec(iso);
  if (utc !== null) return `${utc[1]} ${utc[2]}+00`;
  const at = new Date(iso);
  assert(Number.isFinite(at.getTime()), `not a time: ${iso}`);
  return `${at.toISOString().replace('T', ' ').replace('Z', '')}+00`;
}

export async function isRecovering(pgdata: string): Promise<boolean> {
  return exists(join(pgdata, recoverySignalFile));
}
