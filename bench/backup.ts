import { access, appendFile, chown, mkdir, readFile, readdir, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { BackupView } from '../src/api/backups.js';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { readBackupInfo, renderRecoveryConf, restoreSettings } from '../src/dataplane/local/backup.js';
import { LocalBackupStore } from '../src/dataplane/local/backup-store.js';
import { instancePaths } from '../src/dataplane/local/paths.js';
import type { InstanceId } from '../src/lib/ids.js';
import { freePort } from '../src/lib/net.js';
import { type HaEnvironment, type Report, createCluster, discoverEnvironment, postmasterPid, primaryOf, showCluster, throwIfInterrupted, watchInterrupts } from './ha.js';
import {
  BenchCellar,
  type CliRun,
  type OsUser,
  execOk,
  isAlive,
  libpqEnvironment,
  makeTempDir,
  median,
  postmasterStatus,
  queryOnce,
  seconds,
  sleep,
  spawnPostmaster,
  stopPid,
  uptime,
  waitFor,
} from './lib.js';

/**
 * bench/backup: on one database of at least 1 GiB (pgbench -i through the proxy), in one run:
 *   1. backup throughput: Cellar's base backup (its take step: CHECKPOINT on the primary, then
 *      pg_basebackup from the streaming replica into the backup store) against raw pg_basebackup
 *      with the same flags from the same replica, and a pgBackRest full backup of the same data,
 *      in interleaved rounds (the order rotates; `sync` before each, untimed);
 *   2. restore: `cellar backups restore --wait` into a new cluster, against a raw floor (cp -a the
 *      same backup, start it with the same recovery settings, wait until promoted);
 *   3. recovery point: a steady writer through the proxy, then the whole cluster lost at once; a
 *      restore from the backup store alone; the seconds of acknowledged writes it cannot bring back.
 * Goals: Cellar's take throughput >= raw pg_basebackup's; a 1 GiB restore's primary writable in
 * < 30 s; recovery point < 10 s in every round.
 *
 *   node dist/bench/backup.js [--rounds N] [--rpo-rounds N] [--scale S] [--json]
 */

const goalRestoreMsMax = 30_000;
const goalRecoveryPointMsMax = 10_000;
const databaseBytesMin = 1024 ** 3;
const megabyte = 1024 * 1024;
const roundsDefault = 3;
const roundsMax = 20;
const rpoRoundsDefault = 2;
const rpoRoundsMax = 10;
/** pgbench scale 72: ~1.1 GiB on disk (7.2M accounts rows with their index). */
const scaleDefault = 72;
const scaleMax = 1_000;
const sourceName = 'src';
const restoredName = 'restored';
/** The writer's pause between inserts; with the commit itself, one insert every ~12 ms. */
const writerPauseMs = 10;
const writeBeforeLossMs = 20_000;
const firstAckWaitMsMax = 30_000;
const writerAttemptsMax = 100_000;
/** WAL one segment holds: archiving is "caught up" when less than this is waiting. */
const archiveLagBytesMax = 16 * megabyte;
const caughtUpWaitMsMax = 300_000;
const caughtUpPollMs = 500;
const pgbenchInitMsMax = 900_000;
const cliWaitSecondsMax = 1_200;
const cliMsMax = (cliWaitSecondsMax + 30) * 1000;
const deleteWaitSecondsMax = 120;
const toolMsMax = 1_200_000;
const syncMsMax = 300_000;
const aptMsMax = 600_000;
const killWaitMsMax = 5_000;
const floorReadyWaitMsMax = 600_000;
/** Cellar's own poll while a restored primary recovers (src/dataplane/local/driver.ts restorePollMs). */
const floorPollMs = 20;
const connectTimeoutMs = 10_000;
const queryTimeoutMs = 30_000;
const pgbackrestBinary = '/usr/bin/pgbackrest';
const pgbackrestPackage = 'pgbackrest';
const pgbackrestStanza = 'bench';
const copyBinary = '/bin/cp';
const syncBinary = '/bin/sync';

/**
 * Scheduled backups off (only the bench takes them), the backup store where the bench can find it
 * (set below, under the bench's root), and archive_timeout at its default, stated.
 */
const cellarEnvironment: Readonly<Record<string, string>> = { CELLAR_BACKUP_INTERVAL_MS: '0', CELLAR_ARCHIVE_TIMEOUT_MS: '5000', CELLAR_BACKUP_MAX_RATE: '0' };

const tools = ['cellar', 'raw', 'pgbackrest'] as const;
type Tool = (typeof tools)[number];

interface Options {
  readonly rounds: number;
  readonly rpoRounds: number;
  readonly scale: number;
  readonly json: boolean;
}

interface BackupRun {
  readonly tool: Tool;
  readonly round: number;
  /** The figure compared: Cellar's take step (log line), raw checkpoint + pg_basebackup, pgBackRest's whole backup command. */
  readonly ms: number;
  readonly bytes: number;
  /** Cellar only: CLI spawn to exit, verification included. */
  readonly totalMs: number | null;
  /** Cellar only: the take step from its events (start->take to take->verify, store clock). */
  readonly takeEventsMs: number | null;
  /** Cellar only: pg_basebackup alone as the API reports it (takeSeconds), when it does. */
  readonly copyMs: number | null;
  readonly detail: string;
}

interface RestoreResult {
  readonly backupId: string;
  readonly cliMs: number;
  /** Request to the restored primary's waitReady -> running event ("accepting writes"). */
  readonly primaryWritableMs: number;
  /** The data plane's copy of the backup (log line), and its start with recovery (log line). */
  readonly copyMs: number | null;
  readonly startRecoveryMs: number | null;
  readonly replicaCloneMs: number | null;
  readonly timeline: string;
  readonly rowsChecked: number;
  readonly floorCopyMs: number;
  readonly floorStartMs: number;
}

interface RpoRound {
  readonly index: number;
  readonly acknowledged: number;
  /** Server time (clock_timestamp()) of the last acknowledged insert, minus the newest restored one. */
  readonly recoveryPointMs: number;
  readonly lostAcknowledged: number;
  /** Rows restored that the writer never saw acknowledged (committed as the cluster died). */
  readonly unacknowledgedRestored: number;
  /** From the kill back to the last acknowledgement the writer received (client clock). */
  readonly lastAckBeforeKillMs: number;
  /** The newest file in the archive at the kill, and how long before the kill it was written. */
  readonly newestArchived: string;
  readonly newestArchivedAgeMs: number;
  readonly restoreCliMs: number;
  readonly archiveUnchanged: boolean;
  readonly survivors: readonly string[];
  readonly notes: readonly string[];
}

interface Outcome {
  databaseBytes: number;
  loadMs: number;
  runs: BackupRun[];
  restore: RestoreResult | null;
  rpo: RpoRound[];
  failures: string[];
}

interface Setup {
  readonly cellar: BenchCellar;
  readonly environment: HaEnvironment;
  readonly scratch: string;
  readonly backupRoot: string;
  readonly source: ClusterView;
  readonly primary: InstanceView;
  readonly replica: InstanceView;
  readonly replicationPassword: string;
  readonly pgbackrestConfig: string;
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseOptions();
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  await ensurePgbackrest(report);
  const environment = await discoverEnvironment();
  const versions = await toolVersions(environment);
  const loadBefore = await uptime();
  printHeader(options, environment, versions, loadBefore, report);
  const scratch = await makeTempDir('cellar-bench-backup-', environment.user);
  const cellar = await BenchCellar.create(cellarEnvironment);
  // The backup store under the bench's root: known to the bench, removed with it.
  cellar.env['CELLAR_BACKUP_DIR'] = join(cellar.root, 'backups');
  const outcome: Outcome = { databaseBytes: 0, loadMs: 0, runs: [], restore: null, rpo: [], failures: [] };
  const problems: string[] = [];
  try {
    await cellar.start();
    await runAll(cellar, environment, scratch, options, outcome, report);
  } catch (error) {
    outcome.failures.push(messageOf(error));
    report(`FAILED: ${messageOf(error)}`);
    report(`cellar output tail:\n${cellar.logTail()}`);
  } finally {
    problems.push(...(await cellar.destroy()));
    await rm(scratch, { recursive: true, force: true });
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(outcome, options, report);
  for (const problem of problems) report(`cleanup: ${problem}`);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(outcome, options, environment, versions, loadBefore, loadAfter, problems), null, 2)}\n`);
  if (!verdicts(outcome).every((verdict) => verdict.passed)) process.exitCode = 1;
}

function parseOptions(): Options {
  const { values } = parseArgs({ options: { rounds: { type: 'string' }, 'rpo-rounds': { type: 'string' }, scale: { type: 'string' }, json: { type: 'boolean' } } });
  const integer = (value: string | undefined, fallback: number, max: number, name: string): number => {
    const parsed = value === undefined ? fallback : Number(value);
    if (!Number.isInteger(parsed) || parsed < 1 || parsed > max) throw new Error(`--${name} must be an integer from 1 to ${max}`);
    return parsed;
  };
  return {
    rounds: integer(values.rounds, roundsDefault, roundsMax, 'rounds'),
    rpoRounds: integer(values['rpo-rounds'], rpoRoundsDefault, rpoRoundsMax, 'rpo-rounds'),
    scale: integer(values.scale, scaleDefault, scaleMax, 'scale'),
    json: values.json === true,
  };
}

function printHeader(options: Options, environment: HaEnvironment, versions: readonly string[], loadBefore: string, report: Report): void {
  report(`bench/backup: ${options.rounds} backup round(s), ${options.rpoRounds} recovery-point round(s), pgbench scale ${options.scale}; ${availableParallelism()} cores; ${environment.postgresVersion}; ${versions.join('; ')}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  report(`cellar env: ${Object.entries(cellarEnvironment).map(([name, value]) => `${name}=${value}`).join(' ')} CELLAR_BACKUP_DIR=<bench root>/backups; durability sync (default)`);
  report('MB = 2^20 bytes; MB/s = the bytes each tool reports copying (manifest file sizes; pgBackRest: its database size) / its time');
  report('backup, per round in rotating order, `sync` (untimed) before each:');
  report('  cellar      `cellar backups create src --wait`: take = its `base backup taken` log line (CHECKPOINT on the primary + pg_basebackup -Fp -X stream -c fast --manifest-checksums=CRC32C from the replica + commit); total = the CLI, verification (pg_verifybackup + a scratch restore) included');
  report('  raw         CHECKPOINT on the primary + the same pg_basebackup from the same replica (as postgres, cellar_replication over 127.0.0.1) into a temp dir on the same disk');
  report('  pgbackrest  pgbackrest --type=full backup: pg1 = the primary, pg2 = the replica, backup-standby=y (files from the replica, like the others), start-fast=y, compress-type=none, process-max=1, repo on the same disk;');
  report('              archive-check=n because its archive-push is not configured (Cellar owns archive_command): its timing waits for no WAL archiving and its backup relies on a WAL archive to restore');
  report('restore: `cellar backups restore src --to restored --wait` (latest), timed from the CLI spawn; the goal is judged on the primary becoming writable (its waitReady -> running event), the CLI also waits for a replica cloned from it');
  report('  floor: cp -a of the same backup as postgres + start with the same recovery settings (restore_command from the same archive, target latest, promote) until postmaster.pid says ready, polled every 20 ms like Cellar');
  report(`recovery point, per round: a new cluster, a base backup, a writer through the proxy inserting (id, clock_timestamp()) every ~${writerPauseMs} ms for ${seconds(writeBeforeLossMs, 0)} s; then the whole cluster is lost at once:`);
  report('  SIGKILL both instances\' postmasters and the process group of every child (an archive_command in flight dies too) and move both data directories away, as if both machines and their disks were gone;');
  report('  then `cellar backups restore` (latest) from the backup store alone. RPO = clock_timestamp() of the last acknowledged insert - the newest one restored.');
  report('  Why not SIGKILL alone: Cellar restarts the instances from their intact disks and they archive the rest, so a restore then loses nothing; that measures a crash, not writes at risk.');
  report('  The archive listing at the kill is compared with the one after the restore, to show nothing added to it afterwards.');
}

async function runAll(cellar: BenchCellar, environment: HaEnvironment, scratch: string, options: Options, outcome: Outcome, report: Report): Promise<void> {
  const setup = await prepareSource(cellar, environment, scratch, options, outcome, report);
  for (let round = 1; round <= options.rounds; round += 1) {
    throwIfInterrupted();
    const order = tools.map((_, index) => tools[(index + round - 1) % tools.length] as Tool);
    for (const tool of order) {
      const run = await measureBackup(setup, tool, round);
      outcome.runs.push(run);
      report(`round ${round} ${tool.padEnd(10)} ${seconds(run.ms, 2).padStart(7)} s  ${throughputText(run)}  ${run.detail}`);
    }
  }
  throwIfInterrupted();
  outcome.restore = await measureRestore(setup, options, outcome, report);
  await deleteCluster(cellar, restoredName, report);
  await deleteCluster(cellar, sourceName, report);
  for (let index = 1; index <= options.rpoRounds; index += 1) {
    throwIfInterrupted();
    const round = await runRpoRound(setup, index);
    outcome.rpo.push(round);
    printRpoRound(round, report);
  }
}

// ---------------------------------------------------------------------------------------------
// Setup: pgBackRest, the source cluster with its data, its secrets and a stanza.

async function ensurePgbackrest(report: Report): Promise<void> {
  if (await exists(pgbackrestBinary)) return;
  report(`${pgbackrestBinary} is missing: apt-get install -y ${pgbackrestPackage}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await execOk('apt-get', ['update'], { timeoutMs: aptMsMax, env });
  await execOk('apt-get', ['install', '-y', '--no-install-recommends', pgbackrestPackage], { timeoutMs: aptMsMax, env });
  if (!(await exists(pgbackrestBinary))) throw new Error(`apt-get install ${pgbackrestPackage} did not provide ${pgbackrestBinary}`);
  report(`installed ${pgbackrestPackage}`);
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function toolVersions(environment: HaEnvironment): Promise<string[]> {
  const pgbackrest = await execOk(pgbackrestBinary, ['version'], { timeoutMs: 10_000, env: { ...process.env } });
  const basebackup = await execOk(join(environment.binDir, 'pg_basebackup'), ['--version'], { timeoutMs: 10_000 });
  return [basebackup.stdout.trim(), pgbackrest.stdout.trim()];
}

async function prepareSource(cellar: BenchCellar, environment: HaEnvironment, scratch: string, options: Options, outcome: Outcome, report: Report): Promise<Setup> {
  const created = await createCluster(cellar, sourceName);
  const uri = created.uri as string;
  const loadStarted = performance.now();
  const args = ['-i', '-s', String(options.scale), '-I', 'dtGvp', '-q', uri];
  await execOk(join(environment.binDir, 'pgbench'), args, { timeoutMs: pgbenchInitMsMax, env: { ...libpqEnvironment } });
  outcome.loadMs = performance.now() - loadStarted;
  const [size] = await queryOnce<{ bytes: string }>({ connectionString: uri }, 'select pg_database_size(current_database()) as bytes');
  outcome.databaseBytes = Number(size?.bytes);
  report(`source: pgbench -i -s ${options.scale} (server-side generate) through the proxy in ${seconds(outcome.loadMs, 1)} s; database ${(outcome.databaseBytes / megabyte).toFixed(0)} MB (${(outcome.databaseBytes / databaseBytesMin).toFixed(2)} GiB)`);
  const caughtUpStarted = performance.now();
  const source = await waitCaughtUp(cellar, sourceName);
  report(`source: replica caught up and archive lag ${((source.archive?.lagBytes ?? 0) / megabyte).toFixed(1)} MB after ${seconds(performance.now() - caughtUpStarted, 1)} s more; archive failures so far ${source.archive?.failedCount ?? '?'}`);
  const primary = primaryOf(source);
  const replica = source.instances.find((instance) => instance.role === 'replica');
  if (replica === undefined || primary.port === null || replica.port === null) throw new Error(`cluster ${sourceName} lacks a replica or ports: ${JSON.stringify(source.instances)}`);
  const replicationPassword = await replicationPasswordOf(cellar, source.id);
  const backupRoot = cellar.env['CELLAR_BACKUP_DIR'] as string;
  const pgbackrestConfig = await configurePgbackrest(cellar, environment.user, scratch, primary, replica);
  // Untimed: the first measurement must not pay for the load's dirty buffers and page cache.
  await queryOnce(localTarget(cellar, primary), 'checkpoint');
  await syncDisks();
  return { cellar, environment, scratch, backupRoot, source, primary, replica, replicationPassword, pgbackrestConfig };
}

/** Every replica replayed all the primary wrote, and less than a segment waits to be archived. */
function waitCaughtUp(cellar: BenchCellar, name: string): Promise<ClusterView> {
  return waitFor(
    `cluster ${name}: replica caught up and archiving within ${archiveLagBytesMax} bytes`,
    async () => {
      const cluster = await showCluster(cellar, name);
      const replicasCaughtUp = cluster.instances.every((instance) => instance.role === 'primary' || (instance.streaming === true && instance.lagBytes === 0));
      const archiveLag = cluster.archive?.lagBytes;
      return cluster.state === 'running' && replicasCaughtUp && archiveLag !== undefined && archiveLag !== null && archiveLag < archiveLagBytesMax ? cluster : undefined;
    },
    caughtUpWaitMsMax,
    caughtUpPollMs,
  );
}

/** The API never shows secrets; the bench reads cellar_replication's password from the embedded store, as the tests do. */
async function replicationPasswordOf(cellar: BenchCellar, clusterId: string): Promise<string> {
  const state = JSON.parse(await readFile(join(cellar.env['CELLAR_HOME'] as string, 'store.json'), 'utf8')) as { port: number; password: string };
  const config = { host: '127.0.0.1', port: state.port, user: 'postgres', password: state.password, database: 'cellar' };
  const client = new pg.Client({ ...config, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
  client.on('error', () => {});
  await client.connect();
  try {
    const rows = (await client.query<{ password: string }>("select secrets->>'replicationPassword' as password from clusters where id = $1", [clusterId])).rows;
    const password = rows[0]?.password;
    if (password === undefined || password === null || password === '') throw new Error(`the store has no replication password for cluster ${clusterId}`);
    return password;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Superuser over the instance's unix socket (local connections are trusted; root may enter the 0700 dir). */
function localTarget(cellar: BenchCellar, instance: InstanceView): pg.ClientConfig {
  return { host: instancePaths(cellar.dataDir, instance.id as InstanceId).run, port: instance.port ?? 0, user: 'postgres', database: 'postgres', connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs };
}

async function configurePgbackrest(cellar: BenchCellar, user: OsUser, scratch: string, primary: InstanceView, replica: InstanceView): Promise<string> {
  const root = join(scratch, 'pgbackrest');
  for (const dir of [root, join(root, 'repo'), join(root, 'log'), join(root, 'lock')]) {
    await mkdir(dir, { recursive: true, mode: 0o750 });
    if (user.switchUser) await chown(dir, user.uid, user.gid);
  }
  const primaryPaths = instancePaths(cellar.dataDir, primary.id as InstanceId);
  const replicaPaths = instancePaths(cellar.dataDir, replica.id as InstanceId);
  const lines = [
    '[global]',
    `repo1-path=${join(root, 'repo')}`,
    // Every backup is kept until the bench removes the repo: expiry would add work to the timed command.
    'repo1-retention-full=9999999',
    `log-path=${join(root, 'log')}`,
    `lock-path=${join(root, 'lock')}`,
    `spool-path=${join(root, 'lock')}`,
    'log-level-console=warn',
    'log-level-file=info',
    'compress-type=none',
    'process-max=1',
    'start-fast=y',
    'archive-check=n',
    'backup-standby=y',
    '',
    `[${pgbackrestStanza}]`,
    `pg1-path=${primaryPaths.pgdata}`,
    `pg1-socket-path=${primaryPaths.run}`,
    `pg1-port=${primary.port}`,
    'pg1-user=postgres',
    `pg2-path=${replicaPaths.pgdata}`,
    `pg2-socket-path=${replicaPaths.run}`,
    `pg2-port=${replica.port}`,
    'pg2-user=postgres',
    '',
  ];
  const config = join(root, 'pgbackrest.conf');
  await writeFile(config, lines.join('\n'), { mode: 0o640 });
  if (user.switchUser) await chown(config, user.uid, user.gid);
  await pgbackrest(user, config, ['stanza-create']);
  return config;
}

function pgbackrest(user: OsUser, config: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return execOk(pgbackrestBinary, [`--config=${config}`, `--stanza=${pgbackrestStanza}`, ...args], { user, timeoutMs: toolMsMax, env: { LC_ALL: 'C' } });
}

async function syncDisks(): Promise<void> {
  await execOk(syncBinary, [], { timeoutMs: syncMsMax, env: { ...process.env } });
}

// ---------------------------------------------------------------------------------------------
// Backup throughput.

async function measureBackup(setup: Setup, tool: Tool, round: number): Promise<BackupRun> {
  await syncDisks();
  if (tool === 'cellar') return measureCellarBackup(setup, round);
  if (tool === 'raw') return measureRawBackup(setup, round);
  return measurePgbackrest(setup, round);
}

async function measureCellarBackup(setup: Setup, round: number): Promise<BackupRun> {
  const { cellar } = setup;
  const run = await cellar.cli(['backups', 'create', sourceName, '--wait', '--json', '--timeout', String(cliWaitSecondsMax)], cliMsMax);
  const backup = parseCli<BackupView>(run, 'backups create');
  if (backup.status !== 'completed' || backup.verified !== true) throw new Error(`backup ${backup.id} ended ${backup.status}, verified ${String(backup.verified)}: ${backup.verifyDetail ?? backup.error ?? ''}`);
  if (backup.sourceInstance !== setup.replica.id) throw new Error(`backup ${backup.id} was taken from ${backup.sourceInstance ?? '?'}, not the replica ${setup.replica.id}: the comparison with raw would be unfair`);
  const line = cellar.durationLogLines.find((entry) => entry.backupId === backup.id && entry.message === 'base backup taken');
  if (line === undefined) throw new Error(`cellar logged no "base backup taken" line for ${backup.id}`);
  const events = (await showCluster(cellar, sourceName)).events.filter((event) => event.entity === backup.id);
  const takeAt = events.find((event) => event.to === 'take')?.at;
  const verifyAt = events.find((event) => event.from === 'take' && event.to === 'verify')?.at;
  const takeSeconds = (backup as { takeSeconds?: unknown }).takeSeconds;
  return {
    tool: 'cellar',
    round,
    ms: line.durationMs,
    bytes: backup.bytes ?? 0,
    totalMs: run.elapsedMs,
    takeEventsMs: takeAt === undefined || verifyAt === undefined ? null : Date.parse(verifyAt) - Date.parse(takeAt),
    copyMs: typeof takeSeconds === 'number' ? takeSeconds * 1000 : null,
    detail: `${backup.id}; total with verification ${seconds(run.elapsedMs, 1)} s`,
  };
}

async function measureRawBackup(setup: Setup, round: number): Promise<BackupRun> {
  const target = join(setup.scratch, `raw-${round}`);
  const args = ['-h', '127.0.0.1', '-p', String(setup.replica.port), '-U', 'cellar_replication', '-D', target, '-Fp', '-X', 'stream', '-c', 'fast', '-w', '--manifest-checksums=CRC32C'];
  const env = { ...libpqEnvironment, PGPASSWORD: setup.replicationPassword, PGCONNECT_TIMEOUT: '10' };
  try {
    const started = performance.now();
    await queryOnce(localTarget(setup.cellar, setup.primary), 'checkpoint');
    await execOk(join(setup.environment.binDir, 'pg_basebackup'), args, { user: setup.environment.user, env, timeoutMs: toolMsMax });
    const ms = performance.now() - started;
    const info = await readBackupInfo(target);
    return { tool: 'raw', round, ms, bytes: info.bytes, totalMs: null, takeEventsMs: null, copyMs: null, detail: `WAL ${info.startLsn} to ${info.endLsn}` };
  } finally {
    await rm(target, { recursive: true, force: true });
  }
}

interface PgbackrestInfo {
  readonly backup?: ReadonlyArray<{ readonly label: string; readonly info?: { readonly size?: number } }>;
}

async function measurePgbackrest(setup: Setup, round: number): Promise<BackupRun> {
  const { user } = setup.environment;
  const started = performance.now();
  const result = await pgbackrest(user, setup.pgbackrestConfig, ['--type=full', 'backup']);
  const ms = performance.now() - started;
  const info = JSON.parse((await pgbackrest(user, setup.pgbackrestConfig, ['--output=json', 'info'])).stdout) as PgbackrestInfo[];
  const newest = info[0]?.backup?.at(-1);
  if (newest?.info?.size === undefined) throw new Error(`pgbackrest info shows no backup: ${JSON.stringify(info).slice(0, 500)}`);
  const warnings = result.stderr.trim().split('\n').filter((line) => line !== '').slice(0, 2);
  return { tool: 'pgbackrest', round, ms, bytes: newest.info.size, totalMs: null, takeEventsMs: null, copyMs: null, detail: `${newest.label}${warnings.length === 0 ? '' : `; said: ${warnings.join(' | ')}`}` };
}

function parseCli<T>(run: CliRun, what: string): T {
  if (run.code !== 0) throw new Error(`cellar ${what} exited ${run.code}: ${run.stdout.slice(-2_000)}${run.stderr.slice(-2_000)}`);
  return JSON.parse(run.stdout) as T;
}

function throughput(run: Pick<BackupRun, 'bytes' | 'ms'>): number {
  return run.bytes / megabyte / (run.ms / 1000);
}

function throughputText(run: BackupRun): string {
  return `${throughput(run).toFixed(1).padStart(6)} MB/s (${(run.bytes / megabyte).toFixed(0)} MB)`;
}

// ---------------------------------------------------------------------------------------------
// Restore of the 1 GiB source, and its raw floor.

async function measureRestore(setup: Setup, options: Options, outcome: Outcome, report: Report): Promise<RestoreResult> {
  const { cellar } = setup;
  await syncDisks();
  const run = await cellar.cli(['backups', 'restore', sourceName, '--to', restoredName, '--wait', '--json', '--timeout', String(cliWaitSecondsMax)], cliMsMax);
  const restored = parseCli<ClusterView>(run, 'backups restore');
  const primary = primaryOf(restored);
  const replica = restored.instances.find((instance) => instance.role === 'replica');
  const primaryEvents = restored.events.filter((event) => event.entity === primary.id);
  const restoredEvent = primaryEvents.find((event) => event.from === 'create' && event.to === 'starting');
  const writableEvent = primaryEvents.find((event) => event.from === 'waitReady' && event.to === 'running');
  if (restoredEvent === undefined || writableEvent === undefined) throw new Error(`the restored primary ${primary.id} lacks its create -> starting or waitReady -> running event`);
  const backupId = /restored from backup (bk_[a-z0-9]+)/.exec(restoredEvent.reason)?.[1];
  const newestCellarBackup = outcome.runs.filter((entry) => entry.tool === 'cellar').at(-1)?.detail.split(';')[0];
  if (backupId === undefined || backupId !== newestCellarBackup) throw new Error(`the restore used ${backupId ?? '?'}, not the newest backup ${newestCellarBackup ?? '?'}: ${restoredEvent.reason}`);
  const rowsChecked = await checkRestoredRows(restored, options.scale);
  const durationOf = (instanceId: string | undefined, prefix: string) => cellar.durationLogLines.find((line) => line.instanceId === instanceId && line.message.startsWith(prefix))?.durationMs ?? null;
  const floor = await measureRestoreFloor(setup, backupId);
  const result: RestoreResult = {
    backupId,
    cliMs: run.elapsedMs,
    primaryWritableMs: Date.parse(writableEvent.at) - run.startedAtMs,
    copyMs: durationOf(primary.id, 'primary restored from a base backup'),
    startRecoveryMs: durationOf(primary.id, 'instance started'),
    replicaCloneMs: durationOf(replica?.id, 'replica data directory cloned'),
    timeline: restored.events.filter((event) => event.entity !== restored.id).map((event) => `${event.entity === primary.id ? 'primary' : 'replica'} ${event.to} ${seconds(Date.parse(event.at) - run.startedAtMs, 2)}`).join(', '),
    rowsChecked,
    floorCopyMs: floor.copyMs,
    floorStartMs: floor.startMs,
  };
  printRestore(result, outcome.databaseBytes, report);
  return result;
}

/** The restored cluster answers through the proxy with every pgbench account: a restore, not just a started server. */
async function checkRestoredRows(restored: ClusterView, scale: number): Promise<number> {
  const [row] = await queryOnce<{ count: string }>({ connectionString: restored.uri as string, query_timeout: queryTimeoutMs }, 'select count(*) as count from pgbench_accounts');
  const count = Number(row?.count);
  const expected = scale * 100_000;
  if (count !== expected) throw new Error(`the restored cluster has ${count} pgbench_accounts rows, expected ${expected}`);
  return count;
}

/**
 * The same backup copied and recovered by hand: cp -a as postgres, Cellar's own recovery settings
 * (restoreSettings: the same restore_command, target latest, promote), the server on a socket only
 * with archiving off (it must not write into the source's archive), until postmaster.pid says ready.
 */
async function measureRestoreFloor(setup: Setup, backupId: string): Promise<{ copyMs: number; startMs: number }> {
  const { environment, scratch, source } = setup;
  const { user } = environment;
  const backupDir = join(setup.backupRoot, source.id, 'base', backupId);
  const root = join(scratch, 'floor');
  const pgdata = join(root, 'pgdata');
  const sockets = join(root, 'run');
  await mkdir(sockets, { recursive: true, mode: 0o700 });
  if (user.switchUser) await chown(root, user.uid, user.gid);
  if (user.switchUser) await chown(sockets, user.uid, user.gid);
  const store = new LocalBackupStore(setup.backupRoot, { name: 'postgres', ...user });
  let pid: number | null = null;
  try {
    await syncDisks();
    const copyStarted = performance.now();
    await execOk(copyBinary, ['-a', backupDir, pgdata], { user, timeoutMs: toolMsMax });
    const copyMs = performance.now() - copyStarted;
    const settings = { ...restoreSettings(store.restoreCommand(source.id), {}), port: String(await freePort()), listen_addresses: '', unix_socket_directories: sockets, archive_mode: 'off', primary_conninfo: '', primary_slot_name: '', synchronous_standby_names: '' };
    // postgresql.auto.conf is read last: it overrides the replica's port, socket and upstream the copy brought.
    await appendFile(join(pgdata, 'postgresql.auto.conf'), renderRecoveryConf(settings).replace(/^#.*\n/, ''));
    await rm(join(pgdata, 'standby.signal'), { force: true });
    await writeFile(join(pgdata, 'recovery.signal'), '', { mode: 0o600 });
    if (user.switchUser) await chown(join(pgdata, 'recovery.signal'), user.uid, user.gid);
    const startStarted = performance.now();
    const server = await spawnPostmaster(environment.binDir, pgdata, join(root, 'postgres.log'), user);
    pid = server.pid;
    await waitFor(
      'the floor restore to be promoted',
      async () => {
        if (server.exited()) throw new Error(`the floor server exited; see ${join(root, 'postgres.log')}`);
        return (await postmasterStatus(pgdata, server.pid)) === 'ready' ? true : undefined;
      },
      floorReadyWaitMsMax,
      floorPollMs,
    );
    return { copyMs, startMs: performance.now() - startStarted };
  } finally {
    if (pid !== null) await stopPid(pid);
    await rm(root, { recursive: true, force: true });
  }
}

function printRestore(result: RestoreResult, databaseBytes: number, report: Report): void {
  const optional = (ms: number | null) => (ms === null ? '?' : seconds(ms, 2));
  report(`\nrestore of ${(databaseBytes / databaseBytesMin).toFixed(2)} GiB from ${result.backupId}: primary writable ${seconds(result.primaryWritableMs, 2)} s after the request (copy ${optional(result.copyMs)} s, start + recovery ${optional(result.startRecoveryMs)} s); CLI (replica cloned too, ${optional(result.replicaCloneMs)} s) ${seconds(result.cliMs, 2)} s`);
  report(`  floor: cp -a ${seconds(result.floorCopyMs, 2)} s + start with recovery to promoted ${seconds(result.floorStartMs, 2)} s = ${seconds(result.floorCopyMs + result.floorStartMs, 2)} s; cellar primary writable / floor = ${(result.primaryWritableMs / (result.floorCopyMs + result.floorStartMs)).toFixed(2)}x`);
  report(`  instance events, s after the request: ${result.timeline}`);
  report(`  checked: ${result.rowsChecked} pgbench_accounts rows through the restored cluster's proxy uri`);
}

async function deleteCluster(cellar: BenchCellar, name: string, report: Report): Promise<void> {
  const run = await cellar.cli(['clusters', 'delete', name, '--wait', '--timeout', String(deleteWaitSecondsMax)], (deleteWaitSecondsMax + 30) * 1000);
  if (run.code !== 0) report(`  note: cellar clusters delete ${name} exited ${run.code}: ${(run.stderr || run.stdout).trim().slice(-500)}`);
}

// ---------------------------------------------------------------------------------------------
// Recovery point: writes at risk when the whole cluster is lost.

interface Stamp {
  readonly id: number;
  /** clock_timestamp() of the insert, ms since the epoch (server clock: the same host). */
  readonly atMs: number;
  readonly acknowledgedWallMs: number;
}

/** One connection through the proxy inserting (id, clock_timestamp()), stopping at its first error. */
class StampWriter {
  readonly acknowledged: Stamp[] = [];
  error: string | null = null;
  private stopping = false;
  private readonly loop: Promise<void>;

  constructor(private readonly uri: string) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    const client = new pg.Client({ connectionString: this.uri, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs });
    client.on('error', () => {});
    try {
      await client.connect();
      for (let id = 1; id <= writerAttemptsMax && !this.stopping; id += 1) {
        const result = await client.query<{ at_ms: number }>('insert into stamps (id, at) values ($1, clock_timestamp()) returning (extract(epoch from at) * 1000)::float8 as at_ms', [id]);
        this.acknowledged.push({ id, atMs: Number(result.rows[0]?.at_ms), acknowledgedWallMs: Date.now() });
        await sleep(writerPauseMs);
      }
    } catch (error) {
      this.error = messageOf(error);
    } finally {
      await Promise.race([client.end().catch(() => {}), sleep(1_000)]);
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
  }
}

async function runRpoRound(setup: Setup, index: number): Promise<RpoRound> {
  const { cellar } = setup;
  const name = `rpo-${index}`;
  const cluster = await createCluster(cellar, name);
  await queryOnce({ connectionString: cluster.uri as string }, 'create table stamps (id bigint primary key, at timestamptz not null)');
  const backup = parseCli<BackupView>(await cellar.cli(['backups', 'create', name, '--wait', '--json', '--timeout', String(cliWaitSecondsMax)], cliMsMax), 'backups create');
  if (backup.verified !== true) throw new Error(`backup ${backup.id} of ${name} was not verified: ${backup.verifyDetail ?? backup.error ?? ''}`);
  const writer = new StampWriter(cluster.uri as string);
  let lost: LostCluster;
  try {
    await waitFor('a first acknowledged insert', async () => (writer.acknowledged.length > 0 || writer.error !== null ? true : undefined), firstAckWaitMsMax, 10);
    await sleep(writeBeforeLossMs);
    if (writer.error !== null) throw new Error(`the writer failed before the loss: ${writer.error}`);
    lost = await loseCluster(setup, cluster);
  } finally {
    await writer.stop();
  }
  const archiveAtKill = await archiveListing(setup, cluster.id);
  const restoreRun = await cellar.cli(['backups', 'restore', name, '--to', `${name}-restored`, '--wait', '--json', '--timeout', String(cliWaitSecondsMax)], cliMsMax);
  const restored = parseCli<ClusterView>(restoreRun, 'backups restore');
  const archiveAfter = await archiveListing(setup, cluster.id);
  const rows = await queryOnce<{ id: string; at_ms: number }>({ connectionString: restored.uri as string }, 'select id, (extract(epoch from at) * 1000)::float8 as at_ms from stamps');
  const notes = await cleanUpRpo(setup, name, lost);
  return rpoRound(index, writer.acknowledged, rows, lost, archiveAtKill, archiveAfter, restoreRun.elapsedMs, notes);
}

interface LostCluster {
  readonly killWallMs: number;
  readonly lostDirs: readonly string[];
  /** Processes still in a lost data directory after the kill (there should be none). */
  readonly survivors: readonly string[];
}

/**
 * Every process of both instances dies in one synchronous loop (postmasters first, so nothing new
 * is forked; each child leads its own process group, which holds its archive_command), then both
 * data directories are moved away so nothing can start on them again.
 */
async function loseCluster(setup: Setup, cluster: ClusterView): Promise<LostCluster> {
  const postmasters = await Promise.all(cluster.instances.map((instance) => postmasterPid(setup.cellar, instance.id)));
  const children = (await Promise.all(postmasters.map((pid) => childrenOf(pid)))).flat();
  const killWallMs = Date.now();
  for (const pid of postmasters) process.kill(pid, 'SIGKILL');
  for (const pid of children) killGroup(pid);
  const lostDirs: string[] = [];
  for (const instance of cluster.instances) {
    const { pgdata } = instancePaths(setup.cellar.dataDir, instance.id as InstanceId);
    await rename(pgdata, `${pgdata}.lost`);
    lostDirs.push(`${pgdata}.lost`);
  }
  await waitFor('the killed processes to be gone', async () => ([...postmasters, ...children].every((pid) => !isAlive(pid)) ? true : undefined), killWaitMsMax, 10);
  const survivors: string[] = [];
  for (const dir of lostDirs) survivors.push(...(await processesWithCwdIn(dir)));
  return { killWallMs, lostDirs, survivors };
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/** Pids whose parent is `parent` (/proc/<pid>/stat field 4). */
async function childrenOf(parent: number): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const text = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[1]) === parent) pids.push(Number(entry));
  }
  return pids;
}

/** Processes whose working directory is inside `dir` (a postgres process works in its data directory). */
async function processesWithCwdIn(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => '');
    if (cwd === dir || cwd.startsWith(`${dir}/`)) found.push(`${entry} ${(await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ').trim()}`);
  }
  return found;
}

interface ArchivedFile {
  readonly name: string;
  readonly bytes: number;
  readonly modifiedMs: number;
}

async function archiveListing(setup: Setup, clusterId: string): Promise<ArchivedFile[]> {
  const dir = join(setup.backupRoot, clusterId, 'wal');
  const files: ArchivedFile[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const info = await stat(join(dir, name)).catch(() => null);
    if (info !== null) files.push({ name, bytes: info.size, modifiedMs: info.mtimeMs });
  }
  return files;
}

function sameListing(a: readonly ArchivedFile[], b: readonly ArchivedFile[]): boolean {
  return a.length === b.length && a.every((file, index) => file.name === b[index]?.name && file.bytes === b[index]?.bytes && file.modifiedMs === b[index]?.modifiedMs);
}

/** Both clusters are deleted so the next round runs alone; a failure to delete the lost one is evidence, not an error. */
async function cleanUpRpo(setup: Setup, name: string, lost: LostCluster): Promise<string[]> {
  const notes: string[] = [];
  const noteOf = (line: string) => notes.push(line);
  await deleteCluster(setup.cellar, `${name}-restored`, noteOf);
  await deleteCluster(setup.cellar, name, noteOf);
  for (const dir of lost.lostDirs) await rm(dir, { recursive: true, force: true });
  return notes;
}

function rpoRound(
  index: number,
  acknowledged: readonly Stamp[],
  rows: ReadonlyArray<{ id: string; at_ms: number }>,
  lost: LostCluster,
  archiveAtKill: readonly ArchivedFile[],
  archiveAfter: readonly ArchivedFile[],
  restoreCliMs: number,
  notes: readonly string[],
): RpoRound {
  const last = acknowledged.at(-1);
  if (last === undefined) throw new Error('the writer had no acknowledged insert before the loss');
  const restoredIds = new Set(rows.map((row) => Number(row.id)));
  const newestRestoredMs = rows.reduce((newest, row) => Math.max(newest, Number(row.at_ms)), Number.NEGATIVE_INFINITY);
  const acknowledgedIds = new Set(acknowledged.map((stamp) => stamp.id));
  const newestArchived = archiveAtKill.filter((file) => !file.name.includes('.tmp.')).reduce<ArchivedFile | null>((newest, file) => (newest === null || file.modifiedMs > newest.modifiedMs ? file : newest), null);
  return {
    index,
    acknowledged: acknowledged.length,
    recoveryPointMs: rows.length === 0 ? Number.POSITIVE_INFINITY : Math.max(0, last.atMs - newestRestoredMs),
    lostAcknowledged: acknowledged.filter((stamp) => !restoredIds.has(stamp.id)).length,
    unacknowledgedRestored: [...restoredIds].filter((id) => !acknowledgedIds.has(id)).length,
    lastAckBeforeKillMs: lost.killWallMs - last.acknowledgedWallMs,
    newestArchived: newestArchived?.name ?? '(none)',
    newestArchivedAgeMs: newestArchived === null ? Number.NaN : lost.killWallMs - newestArchived.modifiedMs,
    restoreCliMs,
    archiveUnchanged: sameListing(archiveAtKill, archiveAfter),
    survivors: lost.survivors,
    notes,
  };
}

function printRpoRound(round: RpoRound, report: Report): void {
  report(`\nrecovery point round ${round.index}: RPO ${seconds(round.recoveryPointMs, 3)} s; lost ${round.lostAcknowledged} of ${round.acknowledged} acknowledged inserts; ${round.unacknowledgedRestored} restored row(s) never acknowledged`);
  report(`  last acknowledgement ${seconds(round.lastAckBeforeKillMs, 3)} s before the kill; newest archived file at the kill ${round.newestArchived}, written ${seconds(round.newestArchivedAgeMs, 3)} s before it; restore (CLI, latest) ${seconds(round.restoreCliMs, 2)} s`);
  report(`  archive unchanged from the kill to the end of the restore: ${round.archiveUnchanged ? 'yes' : 'NO'}; processes left in the lost data directories: ${round.survivors.length === 0 ? 'none' : round.survivors.join('; ')}`);
  for (const note of round.notes) report(note);
}

// ---------------------------------------------------------------------------------------------
// Summary.

interface Verdict {
  readonly passed: boolean;
  readonly line: string;
}

function medianOf(runs: readonly BackupRun[], tool: Tool, pick: (run: BackupRun) => number | null): number | null {
  const values = runs.filter((run) => run.tool === tool).map(pick).filter((value): value is number => value !== null);
  return values.length === 0 ? null : median(values);
}

function verdicts(outcome: Outcome): Verdict[] {
  const list: Verdict[] = [];
  const bigEnough = outcome.databaseBytes >= databaseBytesMin;
  const cellarRate = medianOf(outcome.runs, 'cellar', throughput);
  const rawRate = medianOf(outcome.runs, 'raw', throughput);
  if (cellarRate === null || rawRate === null) list.push({ passed: false, line: 'FAIL: backup throughput: no complete round' });
  else {
    const passed = bigEnough && cellarRate >= rawRate;
    list.push({ passed, line: `${passed ? 'PASS' : 'FAIL'}: backup throughput: cellar take ${cellarRate.toFixed(1)} MB/s >= raw pg_basebackup ${rawRate.toFixed(1)} MB/s (median; ratio ${(cellarRate / rawRate).toFixed(2)})${bigEnough ? '' : '; the database is under 1 GiB'}` });
  }
  const restore = outcome.restore;
  if (restore === null) list.push({ passed: false, line: 'FAIL: restore: not measured' });
  else {
    const passed = bigEnough && restore.primaryWritableMs < goalRestoreMsMax;
    list.push({ passed, line: `${passed ? 'PASS' : 'FAIL'}: restore of ${(outcome.databaseBytes / databaseBytesMin).toFixed(2)} GiB: primary writable in ${seconds(restore.primaryWritableMs, 2)} s < ${seconds(goalRestoreMsMax, 0)} s (CLI with the replica: ${seconds(restore.cliMs, 2)} s)${bigEnough ? '' : '; the database is under 1 GiB'}` });
  }
  if (outcome.rpo.length === 0) list.push({ passed: false, line: 'FAIL: recovery point: no round completed' });
  else {
    const worst = Math.max(...outcome.rpo.map((round) => round.recoveryPointMs));
    const honest = outcome.rpo.every((round) => round.archiveUnchanged && round.survivors.length === 0);
    const passed = worst < goalRecoveryPointMsMax && honest;
    list.push({ passed, line: `${passed ? 'PASS' : 'FAIL'}: recovery point: worst ${seconds(worst, 3)} s < ${seconds(goalRecoveryPointMsMax, 0)} s over ${outcome.rpo.length} round(s)${honest ? '' : '; the archive changed after a kill or a process survived it, so a round measured less than a whole-cluster loss'}` });
  }
  if (outcome.failures.length > 0) list.push({ passed: false, line: `FAIL: ${outcome.failures.join('; ')}` });
  return list;
}

function printSummary(outcome: Outcome, options: Options, report: Report): void {
  report(`\n== summary (database ${(outcome.databaseBytes / megabyte).toFixed(0)} MB; ${options.rounds} backup round(s))`);
  for (const tool of tools) {
    const runs = outcome.runs.filter((run) => run.tool === tool);
    if (runs.length === 0) continue;
    const rate = medianOf(outcome.runs, tool, throughput) as number;
    report(`${tool.padEnd(11)} s ${runs.map((run) => seconds(run.ms, 2)).join('  ')}   MB/s ${runs.map((run) => throughput(run).toFixed(1)).join('  ')}   median ${rate.toFixed(1)} MB/s`);
  }
  const totalMs = medianOf(outcome.runs, 'cellar', (run) => run.totalMs);
  const eventsMs = medianOf(outcome.runs, 'cellar', (run) => run.takeEventsMs);
  const copyMs = medianOf(outcome.runs, 'cellar', (run) => run.copyMs);
  if (totalMs !== null) report(`cellar medians: take (log) ${seconds(medianOf(outcome.runs, 'cellar', (run) => run.ms) as number, 2)} s; take (events) ${eventsMs === null ? '?' : seconds(eventsMs, 2)} s; pg_basebackup alone (API takeSeconds) ${copyMs === null ? '-' : seconds(copyMs, 2)} s; whole backup with verification (CLI) ${seconds(totalMs, 2)} s`);
  const cellarRate = medianOf(outcome.runs, 'cellar', throughput);
  const rawRate = medianOf(outcome.runs, 'raw', throughput);
  const pgbackrestRate = medianOf(outcome.runs, 'pgbackrest', throughput);
  if (cellarRate !== null && rawRate !== null) report(`cellar/raw throughput = ${(cellarRate / rawRate).toFixed(2)}${pgbackrestRate === null ? '' : `; cellar/pgbackrest = ${(cellarRate / pgbackrestRate).toFixed(2)}; pgbackrest/raw = ${(pgbackrestRate / rawRate).toFixed(2)}`}`);
  if (outcome.restore !== null) {
    const restore = outcome.restore;
    report(`restore: primary writable ${seconds(restore.primaryWritableMs, 2)} s, cluster running (CLI) ${seconds(restore.cliMs, 2)} s, floor ${seconds(restore.floorCopyMs + restore.floorStartMs, 2)} s`);
  }
  if (outcome.rpo.length > 0) {
    const points = outcome.rpo.map((round) => round.recoveryPointMs);
    report(`recovery point s: ${points.map((ms) => seconds(ms, 3)).join('  ')}   median ${seconds(median(points), 3)}; lost acknowledged ${outcome.rpo.map((round) => round.lostAcknowledged).join('  ')}`);
  }
  for (const verdict of verdicts(outcome)) report(verdict.line);
}

function summaryJson(outcome: Outcome, options: Options, environment: HaEnvironment, versions: readonly string[], loadBefore: string, loadAfter: string, problems: readonly string[]): unknown {
  const round = (ms: number | null) => (ms === null ? null : Math.round(ms));
  return {
    benchmark: 'bench/backup',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion, tools: versions, node: process.version },
    options,
    cellarEnv: cellarEnvironment,
    loadBefore,
    loadAfter,
    goal: { throughputRatioMin: 1, restoreMsMax: goalRestoreMsMax, recoveryPointMsMax: goalRecoveryPointMsMax, databaseBytesMin },
    databaseBytes: outcome.databaseBytes,
    loadMs: Math.round(outcome.loadMs),
    medianMegabytesPerSecond: Object.fromEntries(tools.map((tool) => [tool, medianOf(outcome.runs, tool, throughput)])),
    runs: outcome.runs.map((run) => ({ ...run, ms: Math.round(run.ms), totalMs: round(run.totalMs), takeEventsMs: round(run.takeEventsMs), copyMs: round(run.copyMs), megabytesPerSecond: throughput(run) })),
    restore: outcome.restore,
    recoveryPoint: outcome.rpo,
    verdicts: verdicts(outcome),
    failures: outcome.failures,
    problems,
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/backup failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
