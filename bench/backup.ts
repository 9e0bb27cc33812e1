import { access, appendFile, chown, mkdir, readFile, readdir, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import type { BackupView } from '../src/api/backups.js';
import type { ClusterView, InstanceView } from '../src/api/view.js';
import { readBackupInfo, restoreSettings } from '../src/dataplane/local/backup.js';
import { renderConf } from '../src/postgres/server.js';
import { LocalBackupStore } from '../src/dataplane/local/backup-store.js';
import { ClusterUsers } from '../src/postgres/osuser.js';
import { instancePaths } from '../src/postgres/paths.js';
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
/** The writer's pause after each acknowledgement; with a synchronous commit through the proxy, one insert every ~15 ms here. */
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
/** The 1 GiB restore with --wait: its primary and a replica cloned from it, with room to spare. */
const restoreWaitSecondsMax = 180;
const restorePrimaryWaitMsMax = 300_000;
/** After its primary took writes, how long a restored cluster gets to run before the bench notes it did not. */
const restoredClusterWaitMsMax = 45_000;
const restorePollMs = 500;
const warningsShownMax = 5;
const clientEndMsMax = 1_000;
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
  /** CLI spawn to exit with --wait (the cluster running, its replica cloned); null when it failed. */
  readonly cliMs: number | null;
  readonly cliFailure: string | null;
  /** Request to the restored primary's waitReady -> running event ("accepting writes"). */
  readonly primaryWritableMs: number;
  /** Request to the cluster's waitInstances -> running event. */
  readonly clusterRunningMs: number | null;
  /** The data plane's copy of the backup (log line), and its start with recovery (log line). */
  readonly copyMs: number | null;
  readonly startRecoveryMs: number | null;
  readonly replicaCloneMs: number | null;
  readonly timeline: string;
  readonly rowsChecked: number;
  readonly proxyLogin: string;
  readonly warnings: readonly string[];
  /** The raw floor measured just before and just after Cellar's restore. */
  readonly floors: readonly FloorRestore[];
}

interface FloorRestore {
  readonly copyMs: number;
  readonly startMs: number;
}

function floorMs(restore: RestoreResult): number {
  return Math.min(...restore.floors.map((floor) => floor.copyMs + floor.startMs));
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
  readonly restorePrimaryWritableMs: number;
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
  /** Lost clusters the bench asked Cellar to delete, by name, with the wall time of the request. */
  readonly deletesRequested: Map<string, number>;
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
  report('  cellar      `cellar backups create src --wait`: take = its `base backup taken` log line, the take step from the CHECKPOINT on the primary to the backup copied from the replica, synced and committed; total = the CLI, verification included');
  report('  raw         CHECKPOINT on the primary + pg_basebackup -Fp -X stream -c fast --manifest-checksums=CRC32C (it fsyncs its output) from the same replica, as postgres, cellar_replication over 127.0.0.1, into a temp dir on the same disk');
  report('  pgbackrest  pgbackrest --type=full backup: pg1 = the primary, pg2 = the replica, backup-standby=y (files from the replica, like the others), start-fast=y, compress-type=none, process-max=1, repo on the same disk;');
  report('              archive-check=n because its archive-push is not configured (Cellar owns archive_command): it does not check its own archive, but its backup stop still waits until Cellar archived the last WAL segment (a phase below), and its backup restores only with that archive');
  report('restore: `cellar backups restore src --to restored --wait` (latest); times from the CLI spawn to the new cluster\'s events (store clock); the goal is judged on the primary becoming writable (its waitReady -> running event), the CLI also waits for a replica cloned from it');
  report('  the data is checked on the restored primary over its own socket, so a failure elsewhere in the new cluster (replica, proxy login) is reported beside the figure instead of hiding it');
  report('  floor: cp -a of the same backup as postgres + start with the same recovery settings (restore_command from the same archive, target latest, promote) until postmaster.pid says ready, polled every 20 ms like Cellar; once before and once after Cellar\'s restore, the faster counts');
  report(`recovery point, per round: a new cluster; a writer through the proxy inserting (id, clock_timestamp()), pausing ${writerPauseMs} ms after each acknowledgement; a base backup taken while it writes; ${seconds(writeBeforeLossMs, 0)} s more of writes; then the whole cluster is lost at once:`);
  report('  SIGKILL both instances\' postmasters and the process group of every child (an archive_command in flight dies too) and move both data directories away, as if both machines and their disks were gone;');
  report('  then `cellar backups restore` (latest) from the backup store alone. RPO = clock_timestamp() of the last acknowledged insert - the newest one restored.');
  report('  Why not SIGKILL alone: Cellar restarts the instances from their intact disks and they archive the rest, so a restore then loses nothing; that measures a crash, not writes at risk.');
  report('  The archive listing at the kill is compared with the one after the restore, to show nothing added to it afterwards.');
}

async function runAll(cellar: BenchCellar, environment: HaEnvironment, scratch: string, options: Options, outcome: Outcome, report: Report): Promise<void> {
  const setup = await prepareSource(cellar, environment, scratch, options, outcome, report);
  await runBackupRounds(setup, options, outcome, report);
  throwIfInterrupted();
  try {
    outcome.restore = await measureRestore(setup, options, outcome, report);
  } catch (error) {
    outcome.failures.push(`restore: ${messageOf(error)}`);
    report(`\nrestore FAILED: ${messageOf(error)}`);
  }
  await deleteCluster(cellar, restoredName, report);
  await deleteCluster(cellar, sourceName, report);
  await runRpoRounds(setup, options, outcome, report);
  await reportUndeleted(setup, report);
}

/** Interleaved: each round runs every tool once, the order rotating so none always follows the same one. */
async function runBackupRounds(setup: Setup, options: Options, outcome: Outcome, report: Report): Promise<void> {
  for (let round = 1; round <= options.rounds; round += 1) {
    throwIfInterrupted();
    const order = tools.map((_, index) => tools[(index + round - 1) % tools.length] as Tool);
    for (const tool of order) {
      const run = await measureBackup(setup, tool, round);
      outcome.runs.push(run);
      report(`round ${round} ${tool.padEnd(10)} ${seconds(run.ms, 2).padStart(7)} s  ${throughputText(run)}  ${run.detail}`);
    }
  }
}

/** A failed round is reported and the next one still runs: each uses a cluster of its own. */
async function runRpoRounds(setup: Setup, options: Options, outcome: Outcome, report: Report): Promise<void> {
  for (let index = 1; index <= options.rpoRounds; index += 1) {
    throwIfInterrupted();
    try {
      const round = await runRpoRound(setup, index);
      outcome.rpo.push(round);
      printRpoRound(round, report);
    } catch (error) {
      outcome.failures.push(`recovery point round ${index}: ${messageOf(error)}`);
      report(`\nrecovery point round ${index} FAILED: ${messageOf(error)}`);
    }
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
  await settleCheckpoints(cellar, primary, replica);
  await syncDisks();
  return { cellar, environment, scratch, backupRoot, source, primary, replica, replicationPassword, pgbackrestConfig, deletesRequested: new Map() };
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
function localTarget(cellar: BenchCellar, instance: InstanceView, database = 'postgres'): pg.ClientConfig {
  return { host: instancePaths(cellar.dataDir, instance.id as InstanceId).run, port: instance.port ?? 0, user: 'postgres', database, connectionTimeoutMillis: connectTimeoutMs, query_timeout: queryTimeoutMs };
}

/**
 * Untimed, before the first measurement: a checkpoint on the primary and, once the replica replayed
 * it, a restartpoint there, so whichever tool goes first does not flush the load's dirty buffers.
 */
async function settleCheckpoints(cellar: BenchCellar, primary: InstanceView, replica: InstanceView): Promise<void> {
  await queryOnce(localTarget(cellar, primary), 'checkpoint');
  const [row] = await queryOnce<{ lsn: string }>(localTarget(cellar, primary), 'select pg_current_wal_lsn()::text as lsn');
  const lsn = row?.lsn ?? '';
  if (!/^[0-9A-F]+\/[0-9A-F]+$/.test(lsn)) throw new Error(`the primary reported no WAL position: ${lsn}`);
  await waitFor(
    `the replica to replay up to ${lsn}`,
    async () => {
      const rows = await queryOnce<{ replayed: boolean }>(localTarget(cellar, replica), `select pg_last_wal_replay_lsn() >= '${lsn}'::pg_lsn as replayed`);
      return rows[0]?.replayed === true ? true : undefined;
    },
    caughtUpWaitMsMax,
    20,
  );
  await queryOnce(localTarget(cellar, replica), 'checkpoint');
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
  const backup = backupOf(run);
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
  const phases = await pgbackrestPhases(join(setup.scratch, 'pgbackrest', 'log', `${pgbackrestStanza}-backup.log`));
  return { tool: 'pgbackrest', round, ms, bytes: newest.info.size, totalMs: null, takeEventsMs: null, copyMs: null, detail: `${newest.label}; ${phases}${warnings.length === 0 ? '' : `; said: ${warnings.join(' | ')}`}` };
}

/** pgBackRest log lines that mark its phases, in order: where its time goes. */
const pgbackrestMarks = ['backup command begin', 'replay on the standby reached', 'execute non-exclusive backup stop', 'backup command end'] as const;

/** From its own log (`2026-11-26 11:44:15.123 P00   INFO: …`): the wait for checkpoint and replay, the copy, the stop with its wait for WAL archiving. */
async function pgbackrestPhases(logFile: string): Promise<string> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const lines = text.split('\n');
  const begin = lines.map((line) => line.includes('backup command begin')).lastIndexOf(true);
  const run = begin < 0 ? [] : lines.slice(begin);
  const times = pgbackrestMarks.map((marker) => {
    const line = run.find((entry) => entry.includes(marker));
    return line === undefined ? Number.NaN : Date.parse(`${line.slice(0, 23).replace(' ', 'T')}Z`);
  });
  if (times.some((time) => Number.isNaN(time))) return 'phases: not found in its log';
  const [start, copy, stop, end] = times as [number, number, number, number];
  return `phases: backup start + standby replay ${seconds(copy - start, 2)} s, copy ${seconds(stop - copy, 2)} s, backup stop + wait for WAL archiving ${seconds(end - stop, 2)} s`;
}

function parseCli<T>(run: CliRun, what: string): T {
  if (run.code !== 0) throw new Error(`cellar ${what} exited ${run.code}: ${run.stdout.slice(-2_000)}${run.stderr.slice(-2_000)}`);
  return JSON.parse(run.stdout) as T;
}

/** The CLI prints the backup even when it exits 1 because the verification failed; anything else is an error. */
function backupOf(run: CliRun): BackupView {
  try {
    const parsed = JSON.parse(run.stdout) as Partial<BackupView>;
    if (typeof parsed.id === 'string') return parsed as BackupView;
  } catch {
    // Not a backup: fall through to the error.
  }
  throw new Error(`cellar backups create: ${cliErrorText(run)}`);
}

function throughput(run: Pick<BackupRun, 'bytes' | 'ms'>): number {
  return run.bytes / megabyte / (run.ms / 1000);
}

function throughputText(run: BackupRun): string {
  return `${throughput(run).toFixed(1).padStart(6)} MB/s (${(run.bytes / megabyte).toFixed(0)} MB)`;
}

// ---------------------------------------------------------------------------------------------
// Restore of the 1 GiB source, and its raw floor.

/** What a restored cluster's events say, in ms after the restore was requested (the CLI spawn). */
interface RestoredFacts {
  readonly backupId: string;
  readonly primary: InstanceView;
  /** The primary's waitReady -> running event: "accepting writes". */
  readonly primaryWritableMs: number | null;
  /** The cluster's waitInstances -> running event: its replica streams too. */
  readonly clusterRunningMs: number | null;
  readonly timeline: string;
}

function restoredFacts(restored: ClusterView, requestedWallMs: number): RestoredFacts {
  const primary = primaryOf(restored);
  const after = (at: string | undefined) => (at === undefined ? null : Date.parse(at) - requestedWallMs);
  const eventOf = (entity: string, from: string, to: string) => restored.events.find((event) => event.entity === entity && event.from === from && event.to === to);
  const reason = eventOf(primary.id, 'create', 'starting')?.reason ?? '';
  const backupId = /restored from backup (bk_[a-z0-9]+)/.exec(reason)?.[1];
  if (backupId === undefined) throw new Error(`the restored primary ${primary.id} has no "restored from backup" event yet: ${JSON.stringify(restored.events.slice(-5))}`);
  const instanceEvents = restored.events.filter((event) => event.entity !== restored.id && event.from !== event.to);
  return {
    backupId,
    primary,
    primaryWritableMs: after(eventOf(primary.id, 'waitReady', 'running')?.at),
    clusterRunningMs: after(eventOf(restored.id, 'waitInstances', 'running')?.at),
    timeline: instanceEvents.map((event) => `${event.entity === primary.id ? 'primary' : 'replica'} ${event.to} ${seconds(Date.parse(event.at) - requestedWallMs, 2)}`).join(', '),
  };
}

async function measureRestore(setup: Setup, options: Options, outcome: Outcome, report: Report): Promise<RestoreResult> {
  const { cellar } = setup;
  const newestCellarBackup = outcome.runs.filter((entry) => entry.tool === 'cellar').at(-1)?.detail.split(';')[0];
  if (newestCellarBackup === undefined) throw new Error('no Cellar backup to restore');
  // The floor before and after Cellar's restore: whichever goes second copies onto a disk still busy with the first.
  const floorBefore = await measureRestoreFloor(setup, newestCellarBackup);
  await syncDisks();
  const run = await cellar.cli(['backups', 'restore', sourceName, '--to', restoredName, '--wait', '--json', '--timeout', String(restoreWaitSecondsMax)], cliMsMax);
  const cliFailure = run.code === 0 ? null : cliErrorText(run);
  const restored = await showCluster(cellar, restoredName);
  const facts = restoredFacts(restored, run.startedAtMs);
  if (facts.backupId !== newestCellarBackup) throw new Error(`the restore used ${facts.backupId}, not the newest backup ${newestCellarBackup}`);
  if (facts.primaryWritableMs === null) throw new Error(`the restored primary never took writes: ${cliFailure ?? describeState(restored)}`);
  const rowsChecked = await checkRestoredRows(localTarget(cellar, facts.primary, 'app'), options.scale);
  const replica = restored.instances.find((instance) => instance.role === 'replica');
  const durationOf = (instanceId: string | undefined, prefix: string) => cellar.durationLogLines.find((line) => line.instanceId === instanceId && line.message.startsWith(prefix))?.durationMs ?? null;
  const floorAfter = await measureRestoreFloor(setup, facts.backupId);
  const result: RestoreResult = {
    backupId: facts.backupId,
    cliMs: cliFailure === null ? run.elapsedMs : null,
    cliFailure,
    primaryWritableMs: facts.primaryWritableMs,
    clusterRunningMs: facts.clusterRunningMs,
    copyMs: durationOf(facts.primary.id, 'primary restored from a base backup'),
    startRecoveryMs: durationOf(facts.primary.id, 'instance started'),
    replicaCloneMs: durationOf(replica?.id, 'replica data directory cloned'),
    timeline: facts.timeline,
    rowsChecked,
    proxyLogin: await proxyLogin(restored.uri),
    warnings: distinctWarnings(cellar, run.startedAtMs),
    floors: [floorBefore, floorAfter],
  };
  if (cliFailure !== null) outcome.failures.push(`cellar backups restore of the ${(outcome.databaseBytes / databaseBytesMin).toFixed(2)} GiB source failed: ${cliFailure}`);
  printRestore(result, outcome.databaseBytes, report);
  return result;
}

function cliErrorText(run: CliRun): string {
  const text = `${run.stdout}\n${run.stderr}`;
  const message = /"message":\s*"((?:[^"\\]|\\.)*)"/.exec(text)?.[1];
  return `exit ${run.code}: ${message === undefined ? text.trim().slice(-600) : message.replace(/\\"/g, '"')}`;
}

function describeState(cluster: ClusterView): string {
  return `${cluster.name} ${cluster.state}${cluster.error === null ? '' : ` (${cluster.error})`}; ${cluster.instances.map((instance) => `${instance.id} ${instance.role} ${instance.state}`).join(', ')}`;
}

/** Every pgbench account is there, read on the restored primary itself (its socket, not the proxy). */
async function checkRestoredRows(target: pg.ClientConfig, scale: number): Promise<number> {
  const [row] = await queryOnce<{ count: string }>(target, 'select count(*) as count from pgbench_accounts');
  const count = Number(row?.count);
  const expected = scale * 100_000;
  if (count !== expected) throw new Error(`the restored primary has ${count} pgbench_accounts rows, expected ${expected}`);
  return count;
}

/** Whether a client can log in through the proxy with the restored cluster's own uri: `ok` or the error. */
async function proxyLogin(uri: string | null): Promise<string> {
  if (uri === null) return 'no uri';
  try {
    await queryOnce({ connectionString: uri }, 'select 1');
    return 'ok';
  } catch (error) {
    return messageOf(error);
  }
}

/** Cellar's warnings since `sinceWallMs`, each distinct one once with its count: the evidence when a step fails. */
function distinctWarnings(cellar: BenchCellar, sinceWallMs: number): string[] {
  const counts = new Map<string, number>();
  for (const line of cellar.warningLogLines.filter((entry) => entry.timeMs >= sinceWallMs)) {
    const text = `${line.message}${line.detail === '' ? '' : ` (${line.detail})`}`;
    counts.set(text, (counts.get(text) ?? 0) + 1);
  }
  return [...counts].slice(0, warningsShownMax).map(([text, count]) => `${count}x ${text}`);
}

/**
 * The same backup copied and recovered by hand: cp -a as postgres, Cellar's own recovery settings
 * (restoreSettings: the same restore_command, target latest, promote), the server on a socket only
 * with archiving off (it must not write into the source's archive), until postmaster.pid says ready.
 */
async function measureRestoreFloor(setup: Setup, backupId: string): Promise<FloorRestore> {
  const { environment, scratch, source } = setup;
  const { user } = environment;
  const backupDir = join(setup.backupRoot, source.id, 'base', backupId);
  const root = join(scratch, 'floor');
  const pgdata = join(root, 'pgdata');
  const sockets = join(root, 'run');
  await mkdir(sockets, { recursive: true, mode: 0o700 });
  if (user.switchUser) await chown(root, user.uid, user.gid);
  if (user.switchUser) await chown(sockets, user.uid, user.gid);
  // Only its restore_command is used: the bench restores by hand, as root would.
  const store = new LocalBackupStore(setup.backupRoot, new ClusterUsers(setup.backupRoot));
  let pid: number | null = null;
  try {
    await syncDisks();
    const copyStarted = performance.now();
    await execOk(copyBinary, ['-a', backupDir, pgdata], { user, timeoutMs: toolMsMax });
    const copyMs = performance.now() - copyStarted;
    const settings = { ...restoreSettings(store.restoreCommand(source.id), {}), port: String(await freePort()), listen_addresses: '', unix_socket_directories: sockets, archive_mode: 'off', primary_conninfo: '', primary_slot_name: '', synchronous_standby_names: '' };
    // postgresql.auto.conf is read last: it overrides the replica's port, socket and upstream the copy brought.
    await appendFile(join(pgdata, 'postgresql.auto.conf'), renderConf(settings).replace(/^#.*\n/, ''));
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
  const floorText = result.floors.map((floor) => `cp -a ${seconds(floor.copyMs, 2)} s + start with recovery to promoted ${seconds(floor.startMs, 2)} s = ${seconds(floor.copyMs + floor.startMs, 2)} s`).join(' (before cellar); ');
  report(`\nrestore of ${(databaseBytes / databaseBytesMin).toFixed(2)} GiB from ${result.backupId}: primary writable ${seconds(result.primaryWritableMs, 2)} s after the request (copy ${optional(result.copyMs)} s, start + recovery ${optional(result.startRecoveryMs)} s)`);
  report(`  cluster running (replica cloned, ${optional(result.replicaCloneMs)} s) ${optional(result.clusterRunningMs)} s; CLI --wait ${result.cliMs === null ? `FAILED: ${result.cliFailure ?? ''}` : `${seconds(result.cliMs, 2)} s`}`);
  report(`  floor: ${floorText} (after); cellar primary writable / the faster floor = ${(result.primaryWritableMs / floorMs(result)).toFixed(2)}x`);
  report(`  instance events, s after the request: ${result.timeline}`);
  report(`  checked: ${result.rowsChecked} pgbench_accounts rows on the restored primary; login through the proxy with the new cluster's uri: ${result.proxyLogin}`);
  if (result.cliFailure !== null || result.proxyLogin !== 'ok') report(`  cellar warnings since the request: ${result.warnings.join('; ') || 'none'}`);
}

async function deleteCluster(cellar: BenchCellar, name: string, report: Report): Promise<void> {
  const run = await cellar.cli(['clusters', 'delete', name, '--wait', '--timeout', String(deleteWaitSecondsMax)], (deleteWaitSecondsMax + 30) * 1000);
  if (run.code !== 0) report(`  note: cellar clusters delete ${name} --wait: ${cliErrorText(run)}`);
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
      await Promise.race([client.end().catch(() => {}), sleep(clientEndMsMax)]);
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
  const writer = new StampWriter(cluster.uri as string);
  let lost: LostCluster;
  try {
    await waitFor('a first acknowledged insert', async () => (writer.acknowledged.length > 0 || writer.error !== null ? true : undefined), firstAckWaitMsMax, 10);
    // Taken under the writer's load: the verification of a backup of an idle cluster can fail (see the report).
    const backup = backupOf(await cellar.cli(['backups', 'create', name, '--wait', '--json', '--timeout', String(cliWaitSecondsMax)], cliMsMax));
    if (backup.verified !== true) throw new Error(`backup ${backup.id} of ${name} was not verified: ${backup.verifyDetail ?? backup.error ?? backup.status}`);
    await sleep(writeBeforeLossMs);
    if (writer.error !== null) throw new Error(`the writer failed before the loss: ${writer.error}`);
    lost = await loseCluster(setup, cluster);
  } finally {
    await writer.stop();
  }
  const archiveAtKill = await archiveListing(setup, cluster.id);
  const restore = await restoreLost(setup, name);
  const archiveAfter = await archiveListing(setup, cluster.id);
  const notes = [...restore.notes, ...(await cleanUpRpo(setup, name, lost))];
  return rpoRound(index, writer.acknowledged, restore.rows, lost, archiveAtKill, archiveAfter, restore.primaryWritableMs, notes);
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

interface LostRestore {
  readonly rows: ReadonlyArray<{ id: string; at_ms: number }>;
  readonly primaryWritableMs: number;
  readonly notes: readonly string[];
}

/**
 * Restore latest from the lost cluster's backup store. The figure needs only the restored primary,
 * read over its own socket; whether the whole new cluster comes up (replica, proxy login) is
 * reported beside it, bounded, as evidence rather than a reason to lose the measurement.
 */
async function restoreLost(setup: Setup, name: string): Promise<LostRestore> {
  const { cellar } = setup;
  const to = `${name}-restored`;
  const requestedWallMs = Date.now();
  parseCli<ClusterView>(await cellar.cli(['backups', 'restore', name, '--to', to, '--json'], cliMsMax), 'backups restore');
  const writable = await waitFor(
    `the restored primary of ${to} to take writes`,
    async () => {
      const restored = await showCluster(cellar, to);
      if (restored.state === 'failed') throw new Error(`${describeState(restored)}`);
      return restored.instances.some((instance) => instance.role === 'primary' && instance.state === 'running') ? restored : undefined;
    },
    restorePrimaryWaitMsMax,
    restorePollMs,
  );
  const facts = restoredFacts(writable, requestedWallMs);
  const rows = await queryOnce<{ id: string; at_ms: number }>(localTarget(cellar, facts.primary, 'app'), 'select id, (extract(epoch from at) * 1000)::float8 as at_ms from stamps');
  const notes: string[] = [];
  const settled = await waitFor(
    `${to} to run or fail`,
    async () => {
      const restored = await showCluster(cellar, to);
      return restored.state === 'running' || restored.state === 'failed' ? restored : undefined;
    },
    restoredClusterWaitMsMax,
    restorePollMs,
  ).catch(() => showCluster(cellar, to));
  if (settled.state !== 'running') {
    notes.push(`  restored cluster ${to} is not running ${seconds(Date.now() - requestedWallMs, 1)} s after the request: ${describeState(settled)}`);
    notes.push(`  cellar warnings since the request: ${distinctWarnings(cellar, requestedWallMs).join('; ') || 'none'}`);
  }
  const login = await proxyLogin(settled.uri);
  if (login !== 'ok') notes.push(`  login through the proxy with ${to}'s own uri fails: ${login}`);
  return { rows, primaryWritableMs: facts.primaryWritableMs ?? Date.now() - requestedWallMs, notes };
}

/** At the end of the run: the lost clusters whose delete never finished. */
async function reportUndeleted(setup: Setup, report: Report): Promise<void> {
  const clusters = await setup.cellar.cliJson<ClusterView[]>(['clusters', 'list'], cliMsMax);
  for (const [name, requestedMs] of setup.deletesRequested) {
    const left = clusters.find((cluster) => cluster.name === name);
    if (left !== undefined) report(`note: the lost cluster ${name} is still ${left.state} ${seconds(Date.now() - requestedMs, 0)} s after \`cellar clusters delete ${name}\``);
  }
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

/**
 * The restored cluster is deleted (waited for); the lost one is asked to be deleted and looked at
 * once after, since a cluster with no instance left may never finish deleting: that is evidence.
 */
async function cleanUpRpo(setup: Setup, name: string, lost: LostCluster): Promise<string[]> {
  const { cellar } = setup;
  const notes: string[] = [];
  const deleteLost = await cellar.cli(['clusters', 'delete', name], cliMsMax);
  if (deleteLost.code !== 0) notes.push(`  cellar clusters delete ${name}: ${cliErrorText(deleteLost)}`);
  const deleteRequestedMs = Date.now();
  setup.deletesRequested.set(name, deleteRequestedMs);
  await deleteCluster(cellar, `${name}-restored`, (line) => notes.push(line));
  const left = (await cellar.cliJson<ClusterView[]>(['clusters', 'list'], cliMsMax)).find((cluster) => cluster.name === name);
  if (left !== undefined) {
    const shown = await showCluster(cellar, name);
    const last = shown.events.filter((event) => event.entity === shown.id).at(-1);
    notes.push(`  the lost cluster ${name} is still ${shown.state} ${seconds(Date.now() - deleteRequestedMs, 1)} s after its delete; its machine's last event: ${last === undefined ? '-' : `${last.from ?? ''} -> ${last.to}: ${last.reason}`}`);
  }
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
  primaryWritableMs: number,
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
    restorePrimaryWritableMs: primaryWritableMs,
    archiveUnchanged: sameListing(archiveAtKill, archiveAfter),
    survivors: lost.survivors,
    notes,
  };
}

function printRpoRound(round: RpoRound, report: Report): void {
  report(`\nrecovery point round ${round.index}: RPO ${seconds(round.recoveryPointMs, 3)} s; lost ${round.lostAcknowledged} of ${round.acknowledged} acknowledged inserts; ${round.unacknowledgedRestored} restored row(s) never acknowledged`);
  report(`  last acknowledgement ${seconds(round.lastAckBeforeKillMs, 3)} s before the kill; newest archived file at the kill ${round.newestArchived}, written ${seconds(round.newestArchivedAgeMs, 3)} s before it; restored primary writable ${seconds(round.restorePrimaryWritableMs, 2)} s after the request`);
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
    list.push({ passed, line: `${passed ? 'PASS' : 'FAIL'}: restore of ${(outcome.databaseBytes / databaseBytesMin).toFixed(2)} GiB: primary writable in ${seconds(restore.primaryWritableMs, 2)} s < ${seconds(goalRestoreMsMax, 0)} s (cluster with its replica: ${restore.clusterRunningMs === null ? 'not running' : `${seconds(restore.clusterRunningMs, 2)} s`})${bigEnough ? '' : '; the database is under 1 GiB'}` });
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
    const running = restore.clusterRunningMs === null ? 'never' : `${seconds(restore.clusterRunningMs, 2)} s`;
    report(`restore: primary writable ${seconds(restore.primaryWritableMs, 2)} s, cluster running ${running}, CLI --wait ${restore.cliMs === null ? 'failed' : `${seconds(restore.cliMs, 2)} s`}, floor ${seconds(floorMs(restore), 2)} s`);
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
