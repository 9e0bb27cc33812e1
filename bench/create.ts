import { appendFile, chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ClusterView } from '../src/api/view.js';
import { loadConfig } from '../src/config.js';
import { Binaries } from '../src/postgres/binaries.js';
import { instancePaths } from '../src/postgres/paths.js';
import type { InstanceId } from '../src/lib/ids.js';
import {
  BenchCellar,
  type OsUser,
  execOk,
  fileCreateMs,
  libpqEnvironment,
  makeTempDir,
  median,
  queryOnce,
  seconds,
  serverUser,
  startServerReady,
  waitStandbyStreaming,
  stopPid,
  twoFreePorts,
  uptime,
  waitFor,
} from './lib.js';

/**
 * bench/create: median time from `cellar clusters create --wait` to a successful query on the
 * primary with its replica streaming, against the floor measured in the same run: initdb, start,
 * pg_basebackup and standby start done raw. Goal: Cellar within goalRatioMax of the floor.
 * Two more raw recipes show what a template could give at best (see rawRecipes).
 *
 *   node dist/bench/create.js [--runs N] [--json]
 */

const goalRatioMax = 1.5;
const runsDefault = 5;
const runsMax = 50;
/** Cellar's own poll of postmaster.pid (src/postgres/server.ts); the raw recipes use the same. */
const readyPollMs = 10;
const streamingPollMs = 10;
const initdbMsMax = 120_000;
const copyMsMax = 120_000;
const readyWaitMsMax = 60_000;
const baseBackupMsMax = 300_000;
const streamingWaitMsMax = 60_000;
const createWaitSecondsMax = 300;
const cliMsMax = (createWaitSecondsMax + 30) * 1000;
const deleteWaitSecondsMax = 120;
const showMsMax = 30_000;
const statusCliRuns = 3;
const copyBinary = '/usr/bin/cp';
const syncBinary = '/usr/bin/sync';
/** Cellar's initdb flags (src/postgres/server.ts) except --auth-host=trust (Cellar: scram-sha-256), so no password is needed. */
const initdbFlags = ['--no-locale', '-E', 'UTF8', '--data-checksums', '-U', 'postgres', '--auth-local=trust', '--auth-host=trust'];

interface Variant {
  readonly name: string;
  readonly description: string;
  readonly env: Readonly<Record<string, string>>;
  /** Wait (untimed) for a ready warm cluster before each create. */
  readonly warmPool?: boolean;
}

const variants: readonly Variant[] = [
  { name: 'template', description: 'CELLAR_TEMPLATE=true (default): primary copied from a prepared data directory', env: { CELLAR_TEMPLATE: 'true' } },
  { name: 'initdb', description: 'CELLAR_TEMPLATE=false: initdb + bootstrap per primary', env: { CELLAR_TEMPLATE: 'false' } },
  {
    name: 'warm-pool',
    description: 'CELLAR_WARM_POOL=1: the create adopts a ready cluster (the pool refills between runs, untimed)',
    env: { CELLAR_TEMPLATE: 'true', CELLAR_WARM_POOL: '1' },
    warmPool: true,
  },
];

const poolReadyWaitMsMax = 180_000;
const poolReadyPollMs = 200;

/** Until the warm pool has a ready cluster; the refill is background work, not part of a create. */
async function waitPoolReady(cellar: BenchCellar): Promise<void> {
  await waitFor(
    'a ready warm cluster',
    async () => {
      const status = await cellar.cliJson<{ warmPool?: { ready: number } }>(['status'], showMsMax);
      return (status.warmPool?.ready ?? 0) >= 1 ? true : undefined;
    },
    poolReadyWaitMsMax,
    poolReadyPollMs,
  );
}

interface Environment {
  readonly binDir: string;
  readonly user: OsUser;
  readonly postgresVersion: string;
}

/** A raw (no Cellar) way to get a primary with a streaming standby, timed step by step. */
interface RawRecipe {
  readonly name: RawRecipeName;
  readonly description: string;
  readonly steps: readonly RawStep[];
}

type RawRecipeName = 'floor' | 'rawTemplate' | 'rawClone';

interface RawStep {
  readonly name: string;
  readonly run: (context: RawContext) => Promise<void>;
}

interface RawContext {
  readonly environment: Environment;
  /** A stopped, cleanly shut down, bootstrapped data directory (what Cellar's template holds). */
  readonly template: string;
  readonly root: string;
  readonly primary: string;
  readonly standby: string;
  readonly sockets: string;
  readonly primaryPort: number;
  readonly standbyPort: number;
  /** Postmasters started, stopped by pid in reverse order. */
  readonly pids: number[];
}

interface RawRun {
  readonly totalMs: number;
  readonly stepsMs: Readonly<Record<string, number>>;
}

interface BreakdownLine {
  /** Since the CLI was spawned. */
  readonly atMs: number;
  readonly what: string;
}

/**
 * The critical path of a create, as segments between breakdown lines (matched by their text),
 * each beside the raw floor step it corresponds to, if any.
 */
const criticalPath: ReadonlyArray<{ readonly segment: string; readonly endsAt: RegExp; readonly floorStep?: string }> = [
  { segment: 'CLI start-up + POST', endsAt: /^cluster row created/ },
  { segment: 'claim, cluster start, primary port', endsAt: /^primary: start -> create/ },
  { segment: 'primary data directory', endsAt: /^primary: create -> starting/, floorStep: 'initdb' },
  { segment: 'primary start', endsAt: /^primary: starting -> waitReady/, floorStep: 'primaryStart' },
  { segment: 'primary ready poll', endsAt: /^primary: waitReady -> running/ },
  { segment: 'replica clone (slot + pg_basebackup)', endsAt: /^replica: create -> starting/, floorStep: 'baseBackup' },
  { segment: 'replica start', endsAt: /^replica: starting -> waitReady/, floorStep: 'standbyStart' },
  { segment: 'replica streaming poll', endsAt: /^replica: waitReady -> running/, floorStep: 'streaming' },
  { segment: 'cluster notices', endsAt: /^cluster: waitInstances -> running/ },
  { segment: 'CLI poll sees running, exits', endsAt: /^CLI exited/ },
  { segment: 'select 1 + pg_stat_replication (bench)', endsAt: /^pg_stat_replication/, floorStep: 'primaryQuery' },
];

interface CellarRun {
  readonly name: string;
  readonly totalMs: number;
  readonly cliMs: number;
  readonly breakdown: readonly BreakdownLine[];
  /** Milliseconds per criticalPath segment, in its order. */
  readonly criticalPathMs: readonly number[];
  /** What the data plane logged with a duration for this cluster's instances. */
  readonly dataPlaneMs: ReadonlyArray<{ readonly role: string; readonly message: string; readonly durationMs: number }>;
  /** Warnings Cellar logged while this create ran (engine retries), seconds since the CLI was spawned. */
  readonly warnings: readonly BreakdownLine[];
}

interface VariantResult {
  readonly variant: Variant;
  readonly upMs: number;
  readonly cliStatusMs: readonly number[];
  readonly warmUp: CellarRun;
  readonly runs: readonly CellarRun[];
  /** Raw recipe runs interleaved with this variant's runs, so they saw the same load. */
  readonly raw: Readonly<Record<RawRecipeName, readonly RawRun[]>>;
  readonly problems: readonly string[];
}

type Report = (line: string) => void;

/** Ctrl-C or SIGTERM stops the bench at the next step boundary, so every finally still cleans up. */
let interruptedBy: NodeJS.Signals | null = null;

function throwIfInterrupted(): void {
  if (interruptedBy !== null) throw new Error(`interrupted by ${interruptedBy}; cleaning up`);
}

async function main(): Promise<void> {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => (interruptedBy = signal));
  const options = parseOptions();
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await loadLine();
  report(`bench/create: ${options.runs} run(s) per variant; ${availableParallelism()} cores; ${environment.postgresVersion}`);
  report(`load before: ${loadBefore}`);
  const templateRoot = await makeTempDir('cellar-bench-template-', environment.user);
  const results: VariantResult[] = [];
  try {
    const template = await buildRawTemplate(environment, templateRoot);
    for (const variant of variants) results.push(await runVariant(variant, options.runs, environment, template, report));
  } finally {
    await rm(templateRoot, { recursive: true, force: true });
  }
  const loadAfter = await loadLine();
  report(`load after:  ${loadAfter}`);
  printSummary(results, report);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(results, environment, loadBefore, loadAfter), null, 2)}\n`);
}

function parseOptions(): { runs: number; json: boolean } {
  const { values } = parseArgs({ options: { runs: { type: 'string' }, json: { type: 'boolean' } } });
  const runs = values.runs === undefined ? runsDefault : Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > runsMax) throw new Error(`--runs must be an integer from 1 to ${runsMax}`);
  return { runs, json: values.json === true };
}

/** The same binaries Cellar would pick: CELLAR_PG_BIN first, then the newest installed major. */
async function discoverEnvironment(): Promise<Environment> {
  const binaries = await Binaries.discover({ pgBin: loadConfig().pgBin });
  const newest = binaries.versions().at(-1);
  if (newest === undefined) throw new Error('no PostgreSQL binaries found');
  const binDir = binaries.binFor(newest);
  const version = await execOk(join(binDir, 'postgres'), ['--version'], { timeoutMs: 10_000 });
  return { binDir, user: await serverUser(), postgresVersion: version.stdout.trim() };
}

/** `uptime`, the kernel's I/O pressure and the cost of creating a file: what the figures depend on. */
async function loadLine(): Promise<string> {
  const pressure = await readFile('/proc/pressure/io', 'utf8').catch(() => '');
  const some = /^some (avg10=\S+ avg60=\S+)/m.exec(pressure)?.[1];
  const createMs = await fileCreateMs();
  return `${await uptime()}${some === undefined ? '' : `; io pressure (some) ${some}`}; file create in /tmp ${createMs.toFixed(3)} ms/file`;
}

/**
 * One Cellar for the variant; the raw recipes run interleaved with its runs so all see the same
 * load (others may be running tests on this machine at the same time).
 */
async function runVariant(variant: Variant, runs: number, environment: Environment, template: string, report: Report): Promise<VariantResult> {
  report(`\n== variant ${variant.name}: ${variant.description}`);
  report(`load: ${await loadLine()}`);
  const cellar = await BenchCellar.create(variant.env);
  const problems: string[] = [];
  try {
    const upStarted = performance.now();
    await cellar.start();
    const upMs = performance.now() - upStarted;
    throwIfInterrupted();
    report(`cellar up: ${seconds(upMs)} s (includes the embedded store's initdb)`);
    const cliStatusMs = await timeCliStatus(cellar);
    report(`cellar status (CLI process + one API call): ${cliStatusMs.map((ms) => seconds(ms)).join(', ')} s`);
    if (variant.warmPool) await waitPoolReady(cellar);
    const warmUp = await createOnce(cellar, `${variant.name}-warm`);
    report(`warm-up create (first create${variant.name === 'template' ? ', includes template build' : ''}): ${seconds(warmUp.totalMs)} s`);
    await deleteCluster(cellar, warmUp.name);
    const raw: Record<RawRecipeName, RawRun[]> = { floor: [], rawTemplate: [], rawClone: [] };
    const cellarRuns: CellarRun[] = [];
    for (let index = 1; index <= runs; index += 1) {
      if (variant.warmPool) await waitPoolReady(cellar);
      for (const recipe of rawRecipes) raw[recipe.name].push(await rawOnce(recipe, environment, template));
      throwIfInterrupted();
      const run = await createOnce(cellar, `b${index}`);
      cellarRuns.push(run);
      await deleteCluster(cellar, run.name);
      const rawText = rawRecipes.map((recipe) => `${recipe.name} ${seconds((raw[recipe.name].at(-1) as RawRun).totalMs)}`).join(', ');
      report(`run ${index}: ${rawText}; cellar ${seconds(run.totalMs)} (CLI ${seconds(run.cliMs)}) s; ${warningsText(run)}`);
    }
    return { variant, upMs, cliStatusMs, warmUp, runs: cellarRuns, raw, problems };
  } catch (error) {
    report(`variant ${variant.name} failed; cellar output tail:\n${cellar.logTail()}`);
    throw error;
  } finally {
    problems.push(...(await cellar.destroy()));
    for (const problem of problems) report(`cleanup: ${problem}`);
  }
}

function warningsText(run: CellarRun): string {
  if (run.warnings.length === 0) return 'no engine warnings';
  return `warnings: ${run.warnings.map((line) => `${seconds(line.atMs)} ${line.what}`).join('; ')}`;
}

async function timeCliStatus(cellar: BenchCellar): Promise<number[]> {
  const times: number[] = [];
  for (let index = 0; index < statusCliRuns; index += 1) {
    const result = await cellar.cli(['status', '--json'], 30_000);
    if (result.code !== 0) throw new Error(`cellar status exited ${result.code}: ${result.stdout}${result.stderr}`);
    times.push(result.elapsedMs);
  }
  return times;
}

// ---------------------------------------------------------------------------------------------
// Raw recipes: what a shell script would do, with Cellar's initdb flags and readiness poll.

const rawRecipes: readonly RawRecipe[] = [
  {
    name: 'floor',
    description: 'initdb + start + pg_basebackup + standby start (the goal baseline)',
    steps: [
      { name: 'initdb', run: initdbPrimary },
      { name: 'primaryStart', run: startPrimary },
      { name: 'baseBackup', run: baseBackup },
      { name: 'standbyStart', run: startStandby },
      { name: 'streaming', run: waitStreaming },
      { name: 'primaryQuery', run: queryPrimary },
    ],
  },
  {
    name: 'rawTemplate',
    description: "Cellar's template path done raw: cp -a template + initdb --sync-only, then as the floor",
    steps: [
      { name: 'copy', run: copyTemplateToPrimary },
      { name: 'syncOnly', run: syncPrimaryPerFile },
      { name: 'primaryStart', run: startPrimary },
      { name: 'baseBackup', run: baseBackup },
      { name: 'standbyStart', run: startStandby },
      { name: 'streaming', run: waitStreaming },
      { name: 'primaryQuery', run: queryPrimary },
    ],
  },
  {
    name: 'rawClone',
    description: 'two copies of the stopped template (no pg_basebackup), one syncfs, start both',
    // A copy of a cleanly shut down data directory is a valid standby of a primary started from
    // another copy: both begin at the same checkpoint with the same system identifier.
    steps: [
      { name: 'copyTwice', run: copyTemplateTwice },
      { name: 'syncfs', run: syncFilesystem },
      { name: 'primaryStart', run: startPrimary },
      { name: 'standbyStart', run: startStandby },
      { name: 'streaming', run: waitStreaming },
      { name: 'primaryQuery', run: queryPrimary },
    ],
  },
];

async function rawOnce(recipe: RawRecipe, environment: Environment, template: string): Promise<RawRun> {
  const { user } = environment;
  const root = await makeTempDir(`cellar-bench-${recipe.name}-`, user);
  const [primaryPort, standbyPort] = await twoFreePorts();
  const context: RawContext = {
    environment,
    template,
    root,
    primary: join(root, 'p'),
    standby: join(root, 'r'),
    sockets: join(root, 's'),
    primaryPort,
    standbyPort,
    pids: [],
  };
  try {
    await mkdir(context.sockets, { mode: 0o700 });
    if (user.switchUser) await chown(context.sockets, user.uid, user.gid);
    const stepsMs: Record<string, number> = {};
    const started = performance.now();
    for (const step of recipe.steps) {
      throwIfInterrupted();
      const stepStarted = performance.now();
      await step.run(context);
      stepsMs[step.name] = performance.now() - stepStarted;
    }
    return { totalMs: performance.now() - started, stepsMs };
  } finally {
    for (const pid of [...context.pids].reverse()) await stopPid(pid);
    await rm(root, { recursive: true, force: true });
  }
}

function toolOptions(context: RawContext, timeoutMs: number) {
  return { user: context.environment.user, env: { ...libpqEnvironment }, timeoutMs };
}

async function initdbPrimary(context: RawContext): Promise<void> {
  await execOk(join(context.environment.binDir, 'initdb'), ['-D', context.primary, ...initdbFlags], toolOptions(context, initdbMsMax));
}

async function copyTemplateToPrimary(context: RawContext): Promise<void> {
  await execOk(copyBinary, ['-a', context.template, context.primary], toolOptions(context, copyMsMax));
}

/** What Cellar does after its copy (src/dataplane/local/template.ts): fsync every file. */
async function syncPrimaryPerFile(context: RawContext): Promise<void> {
  await execOk(join(context.environment.binDir, 'initdb'), ['--sync-only', '-D', context.primary], toolOptions(context, copyMsMax));
}

async function copyTemplateTwice(context: RawContext): Promise<void> {
  await Promise.all([context.primary, context.standby].map((target) => execOk(copyBinary, ['-a', context.template, target], toolOptions(context, copyMsMax))));
}

/** One syncfs(2) of the filesystem holding both copies instead of an fsync per file. */
async function syncFilesystem(context: RawContext): Promise<void> {
  await execOk(syncBinary, ['-f', context.primary], toolOptions(context, copyMsMax));
}

async function startPrimary(context: RawContext): Promise<void> {
  await appendFile(join(context.primary, 'postgresql.conf'), serverSettings(context.primaryPort, '127.0.0.1', context.sockets));
  context.pids.push(await startServer(context.environment, context.primary, join(context.root, 'p.log')));
}

async function baseBackup(context: RawContext): Promise<void> {
  const args = ['-h', '127.0.0.1', '-p', String(context.primaryPort), '-U', 'postgres', '-D', context.standby, '-X', 'stream', '-c', 'fast'];
  await execOk(join(context.environment.binDir, 'pg_basebackup'), args, toolOptions(context, baseBackupMsMax));
}

async function startStandby(context: RawContext): Promise<void> {
  await writeStandbyFiles(context);
  context.pids.push(await startServer(context.environment, context.standby, join(context.root, 'r.log')));
}

async function queryPrimary(context: RawContext): Promise<void> {
  await queryOnce({ host: '127.0.0.1', port: context.primaryPort, user: 'postgres', database: 'postgres', ssl: false }, 'select 1');
}

function serverSettings(port: number, listen: string, sockets: string): string {
  return `\nport = ${port}\nlisten_addresses = '${listen}'\nunix_socket_directories = '${sockets}'\n`;
}

async function writeStandbyFiles(context: RawContext): Promise<void> {
  const conninfo = `host=127.0.0.1 port=${context.primaryPort} user=postgres sslmode=disable gssencmode=disable`;
  // The copied postgresql.conf names the primary's port; a later line wins.
  const settings = `${serverSettings(context.standbyPort, '127.0.0.1', context.sockets)}primary_conninfo = '${conninfo}'\n`;
  await appendFile(join(context.standby, 'postgresql.conf'), settings);
  const signal = join(context.standby, 'standby.signal');
  await writeFile(signal, '', { mode: 0o600 });
  const { user } = context.environment;
  if (user.switchUser) await chown(signal, user.uid, user.gid);
}

/** Starts postgres detached and polls postmaster.pid every readyPollMs until ready (or standby). */
function startServer(environment: Environment, pgdata: string, logFile: string): Promise<number> {
  return startServerReady(environment.binDir, environment.user, pgdata, logFile, readyWaitMsMax, readyPollMs);
}

async function waitStreaming(context: RawContext): Promise<void> {
  const target = { host: context.sockets, port: context.standbyPort, user: 'postgres', database: 'postgres' };
  await waitStandbyStreaming(target, streamingWaitMsMax, streamingPollMs);
}

/**
 * The raw template: initdb, then the same bootstrap objects as Cellar's template (two roles and
 * database app), shut down cleanly. Built once, not timed.
 */
async function buildRawTemplate(environment: Environment, root: string): Promise<string> {
  const pgdata = join(root, 'pgdata');
  const sockets = join(root, 's');
  await mkdir(sockets, { mode: 0o700 });
  if (environment.user.switchUser) await chown(sockets, environment.user.uid, environment.user.gid);
  await execOk(join(environment.binDir, 'initdb'), ['-D', pgdata, ...initdbFlags], { user: environment.user, timeoutMs: initdbMsMax });
  const [port] = await twoFreePorts();
  await appendFile(join(pgdata, 'postgresql.conf'), serverSettings(port, '', sockets));
  const pid = await startServer(environment, pgdata, join(root, 'bootstrap.log'));
  try {
    const target = { host: sockets, port, user: 'postgres', database: 'postgres' };
    await queryOnce(target, 'create role cellar_replication with replication login');
    await queryOnce(target, 'create role app with login createdb createrole');
    await queryOnce(target, 'create database app owner app');
  } finally {
    await stopPid(pid);
  }
  return pgdata;
}

// ---------------------------------------------------------------------------------------------
// Cellar: the real CLI against a real `cellar up`.

async function createOnce(cellar: BenchCellar, name: string): Promise<CellarRun> {
  const started = performance.now();
  const created = await cellar.cli(['clusters', 'create', name, '--wait', '--json', '--timeout', String(createWaitSecondsMax)], cliMsMax);
  if (created.code !== 0) throw new Error(`cellar clusters create ${name} exited ${created.code}: ${created.stdout}${created.stderr.slice(-2_000)}`);
  const cluster = JSON.parse(created.stdout) as ClusterView;
  const primary = cluster.instances.find((instance) => instance.role === 'primary');
  if (cluster.uri === null || primary === undefined || primary.port === null) throw new Error(`cluster ${name} has no uri or primary port: ${created.stdout}`);
  await queryOnce({ connectionString: cluster.uri, ssl: false }, 'select 1');
  const queriedMs = performance.now() - started;
  await waitReplicaStreaming(cellar, primary.id as InstanceId, primary.port);
  const totalMs = performance.now() - started;
  const shown = await cellar.cliJson<ClusterView>(['clusters', 'show', name], showMsMax);
  const breakdown = breakdownOf(shown, created.startedAtMs, created.elapsedMs, queriedMs, totalMs);
  return {
    name,
    totalMs,
    cliMs: created.elapsedMs,
    breakdown,
    criticalPathMs: criticalPathOf(breakdown),
    dataPlaneMs: dataPlaneDurations(cellar, shown),
    warnings: cellar.warningLogLines
      .filter((line) => line.timeMs >= created.startedAtMs && line.timeMs <= created.startedAtMs + totalMs)
      .map((line) => ({ atMs: line.timeMs - created.startedAtMs, what: `${line.message}${line.detail ? ` (${line.detail})` : ''}` })),
  };
}

/** pg_stat_replication.state is hidden from the app role; the bench is root, so it uses the 0700 socket as postgres. */
async function waitReplicaStreaming(cellar: BenchCellar, primaryId: InstanceId, port: number): Promise<void> {
  const target = { host: instancePaths(cellar.dataDir, primaryId).run, port, user: 'postgres', database: 'postgres' };
  await waitFor(
    'the replica to stream (pg_stat_replication on the primary)',
    async () => {
      const rows = await queryOnce<{ state: string }>(target, 'select state from pg_stat_replication');
      return rows.some((row) => row.state === 'streaming') ? true : undefined;
    },
    streamingWaitMsMax,
    streamingPollMs,
  );
}

async function deleteCluster(cellar: BenchCellar, name: string): Promise<void> {
  await cellar.cliJson(['clusters', 'delete', name, '--wait', '--timeout', String(deleteWaitSecondsMax)], (deleteWaitSecondsMax + 30) * 1000);
}

function roleOf(cluster: ClusterView, entity: string): string {
  if (entity === cluster.id) return 'cluster';
  return cluster.instances.find((instance) => instance.id === entity)?.role ?? entity;
}

/** Event times come from the store's now() and the bench's Date.now(): one host, one clock. */
function breakdownOf(cluster: ClusterView, spawnedAtMs: number, cliMs: number, queriedMs: number, totalMs: number): BreakdownLine[] {
  const events = [...cluster.events].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  return [
    { atMs: 0, what: 'CLI spawned' },
    { atMs: Date.parse(cluster.createdAt) - spawnedAtMs, what: 'cluster row created (CLI start-up + POST)' },
    ...events.map((event) => ({
      atMs: Date.parse(event.at) - spawnedAtMs,
      what: `${roleOf(cluster, event.entity)}: ${event.from ?? '-'} -> ${event.to}${event.reason ? ` (${event.reason})` : ''}`,
    })),
    { atMs: cliMs, what: 'CLI exited (saw state running)' },
    { atMs: queriedMs, what: 'select 1 on uri succeeded' },
    { atMs: totalMs, what: 'pg_stat_replication on the primary shows streaming' },
  ];
}

function criticalPathOf(breakdown: readonly BreakdownLine[]): number[] {
  let previousMs = 0;
  return criticalPath.map(({ segment, endsAt }) => {
    const line = breakdown.find((candidate) => endsAt.test(candidate.what));
    if (line === undefined) throw new Error(`no breakdown line for "${segment}": ${JSON.stringify(breakdown)}`);
    const ms = line.atMs - previousMs;
    previousMs = line.atMs;
    return ms;
  });
}

function dataPlaneDurations(cellar: BenchCellar, cluster: ClusterView): CellarRun['dataPlaneMs'] {
  const ids = new Set(cluster.instances.map((instance) => instance.id));
  return cellar.timedLogLines
    .filter((line) => ids.has(line.instanceId))
    .map((line) => ({ role: roleOf(cluster, line.instanceId), message: line.message, durationMs: line.durationMs }));
}

// ---------------------------------------------------------------------------------------------
// Output.

function medianRun(runs: readonly CellarRun[]): CellarRun {
  const target = median(runs.map((run) => run.totalMs));
  return runs.reduce((best, run) => (Math.abs(run.totalMs - target) < Math.abs(best.totalMs - target) ? run : best));
}

function medianMs(runs: ReadonlyArray<{ readonly totalMs: number }>): number {
  return median(runs.map((run) => run.totalMs));
}

function ratioOf(result: VariantResult): number {
  return medianMs(result.runs) / medianMs(result.raw.floor);
}

function stepMedians(runs: readonly RawRun[], recipe: RawRecipe): Record<string, number> {
  return Object.fromEntries(recipe.steps.map((step) => [step.name, median(runs.map((run) => run.stepsMs[step.name] ?? 0))]));
}

function printSummary(results: readonly VariantResult[], report: Report): void {
  report('\n== summary (seconds)');
  for (const recipe of rawRecipes) {
    const runs = results.flatMap((result) => result.raw[recipe.name]);
    const steps = Object.entries(stepMedians(runs, recipe)).map(([name, ms]) => `${name} ${seconds(ms)}`).join(', ');
    report(`${recipe.name}: ${recipe.description}`);
    report(`  all ${runs.length} runs: median ${seconds(medianMs(runs))}; step medians: ${steps}`);
  }
  for (const result of results) {
    const ratio = ratioOf(result);
    report(`\ncellar ${result.variant.name}: ${result.variant.description}`);
    for (const recipe of rawRecipes) {
      const runs = result.raw[recipe.name];
      report(`  ${recipe.name.padEnd(12)} ${runs.map((run) => seconds(run.totalMs)).join('  ')}   median ${seconds(medianMs(runs))}`);
    }
    report(`  ${'cellar'.padEnd(12)} ${result.runs.map((run) => seconds(run.totalMs)).join('  ')}   median ${seconds(medianMs(result.runs))}`);
    report(`  warm-up (first create${result.variant.name === 'template' ? ', includes template build' : ''}): ${seconds(result.warmUp.totalMs)}`);
    report(`  cellar/floor = ${ratio.toFixed(2)}x; goal <= ${goalRatioMax}x: ${ratio <= goalRatioMax ? 'met' : 'NOT met'}`);
    printCriticalPath(result, report);
    printBreakdown(medianRun(result.runs), report);
  }
}

/** Per segment: the median over this variant's runs, beside the median of the matching floor step. */
function printCriticalPath(result: VariantResult, report: Report): void {
  report(`  critical path, median of ${result.runs.length} runs per segment (floor step median in the same block):`);
  const floorRecipe = rawRecipes.find((recipe) => recipe.name === 'floor');
  if (floorRecipe === undefined) throw new Error('no floor recipe');
  const floorSteps = stepMedians(result.raw.floor, floorRecipe);
  criticalPath.forEach(({ segment, floorStep }, index) => {
    const cellarMs = median(result.runs.map((run) => run.criticalPathMs[index] ?? 0));
    const floorText = floorStep === undefined ? '' : `   floor ${floorStep} ${seconds(floorSteps[floorStep] ?? 0)}`;
    report(`    ${segment.padEnd(40)} ${seconds(cellarMs)}${floorText}`);
  });
}

function printBreakdown(run: CellarRun, report: Report): void {
  report(`  breakdown of the median run (${run.name}), seconds since the CLI was spawned (+ since the previous line):`);
  let previousMs = 0;
  for (const line of run.breakdown) {
    report(`    ${seconds(line.atMs).padStart(7)}  (+${seconds(line.atMs - previousMs)})  ${line.what}`);
    previousMs = line.atMs;
  }
  report('  data plane durations Cellar logged for this cluster:');
  for (const line of run.dataPlaneMs) report(`    ${line.role}: ${line.message} ${seconds(line.durationMs)}`);
  report(`  warnings Cellar logged during this create: ${run.warnings.length === 0 ? 'none' : ''}`);
  for (const line of run.warnings) report(`    ${seconds(line.atMs).padStart(7)}  ${line.what}`);
}

function summaryJson(results: readonly VariantResult[], environment: Environment, loadBefore: string, loadAfter: string): unknown {
  const round = (ms: number): number => Math.round(ms);
  return {
    benchmark: 'bench/create',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion },
    loadBefore,
    loadAfter,
    goalRatioMax,
    raw: Object.fromEntries(
      rawRecipes.map((recipe) => {
        const runs = results.flatMap((result) => result.raw[recipe.name]);
        const steps = Object.fromEntries(Object.entries(stepMedians(runs, recipe)).map(([name, ms]) => [name, round(ms)]));
        return [recipe.name, { description: recipe.description, runsMs: runs.map((run) => round(run.totalMs)), medianMs: round(medianMs(runs)), stepMediansMs: steps }];
      }),
    ),
    variants: results.map((result) => {
      const ratio = ratioOf(result);
      return {
        name: result.variant.name,
        env: result.variant.env,
        upMs: round(result.upMs),
        cliStatusMs: result.cliStatusMs.map(round),
        warmUpMs: round(result.warmUp.totalMs),
        floorRunsMs: result.raw.floor.map((run) => round(run.totalMs)),
        floorMedianMs: round(medianMs(result.raw.floor)),
        runsMs: result.runs.map((run) => round(run.totalMs)),
        cliMs: result.runs.map((run) => round(run.cliMs)),
        medianMs: round(medianMs(result.runs)),
        ratio: Number(ratio.toFixed(3)),
        goalMet: ratio <= goalRatioMax,
        medianRunName: medianRun(result.runs).name,
        runs: result.runs,
        warmUp: result.warmUp,
        problems: result.problems,
      };
    }),
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/create failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
