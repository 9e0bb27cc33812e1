import { access, chown, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { ClusterView } from '../src/api/view.js';
import { instancePaths } from '../src/postgres/paths.js';
import type { InstanceId } from '../src/lib/ids.js';
import { freePort } from '../src/lib/net.js';
import {
  BenchCellar,
  type OsUser,
  clockTicksPerSecond,
  cpuTicks,
  exec,
  execOk,
  makeTempDir,
  median,
  processesWith,
  queryOnce,
  selfSignedCertificate,
  serverUser,
  spawnLogged,
  stopPid,
  uptime,
  waitFor,
} from './lib.js';

/** `cellar up` starts the proxy from its own entry; its argv names this file. */
const cellarProxyBin = fileURLToPath(new URL('../bundle/bin/cellar-proxy.js', import.meta.url));

/**
 * bench/proxy: pgbench through Cellar's proxy against the same pgbench straight to the primary,
 * through PgBouncer (session mode, SCRAM, same backend), and through the floor relay
 * (bench/floor-relay.c: the least any relay process does, one read and one write per message) in
 * the same run, plain and TLS. Goal: the proxy reaches at least PgBouncer's TPS in every row, and
 * adds under addedLatencyUsMax to the direct latency at c=1. The floor shows how much of the
 * added latency any relay process costs on this machine.
 *
 *   node dist/bench/proxy.js [--seconds N] [--rounds R] [--mode plain|tls] [--workload NAME] [--json]
 */

const addedLatencyUsMax = 30;
const secondsDefault = 15;
const secondsMax = 600;
const roundsDefault = 1;
const roundsMax = 20;
/** Untimed run per target and mode before measuring: the proxy's JIT and the buffer cache warm up. */
const warmUpSeconds = 2;
/** pgbench -i scale: 1M rows in pgbench_accounts (~150 MB), well inside shared_buffers + page cache. */
const pgbenchScale = 10;
/** Every pgbench run is killed this long after its -T. */
const pgbenchGraceMs = 60_000;
const pgbenchInitMsMax = 300_000;
const aptMsMax = 600_000;
const createWaitSecondsMax = 300;
const cliMsMax = (createWaitSecondsMax + 30) * 1000;
const readyWaitMsMax = 30_000;
const readyPollMs = 50;
const connectTimeoutSeconds = 10;
const pgbouncerBinary = '/usr/sbin/pgbouncer';
const floorRelaySource = fileURLToPath(new URL('../../bench/floor-relay.c', import.meta.url));
const compileMsMax = 120_000;
const pgbouncerPackage = 'pgbouncer';
const opensslHeader = '/usr/include/openssl/ssl.h';
const opensslHeaderPackage = 'libssl-dev';
/** pgbench -c 8 plus the readiness probe, with room to spare. */
const pgbouncerClientsMax = 100;
const pgbouncerPoolSize = 20;
const databaseName = 'app';
const appRole = 'app';

const targets = ['direct', 'floor', 'proxy', 'pgbouncer'] as const;
type Target = (typeof targets)[number];

const modes = ['plain', 'tls'] as const;
type Mode = (typeof modes)[number];

interface Workload {
  readonly name: string;
  readonly clients: number;
  readonly args: readonly string[];
}

const workloads: readonly Workload[] = [
  { name: 'select-only c=1', clients: 1, args: ['-S', '-c', '1', '-j', '1'] },
  { name: 'select-only c=8', clients: 8, args: ['-S', '-c', '8', '-j', '2'] },
  { name: 'tpcb-like c=8', clients: 8, args: ['-c', '8', '-j', '2'] },
];

/** Where pgbench connects for one target: libpq environment variables. */
interface Endpoint {
  readonly port: number;
  readonly user: string;
  readonly database: string;
}

interface Setup {
  readonly cellar: BenchCellar;
  readonly serverUser: OsUser;
  readonly password: string;
  readonly routeKey: string;
  readonly primaryPort: number;
  readonly primaryId: InstanceId;
  readonly proxyPort: number;
  readonly proxyPid: number | undefined;
  readonly ticksPerSecond: number;
}

interface PgbenchRun {
  readonly tps: number;
  readonly latencyMs: number;
  readonly failed: number;
  /** CPU the middle process (proxy or PgBouncer) used per transaction, if its pid is known. */
  readonly cpuUsPerTransaction: number | null;
}

interface TargetResult {
  readonly runs: readonly PgbenchRun[];
  readonly tps: number;
  readonly latencyMs: number;
  readonly cpuUsPerTransaction: number | null;
}

interface Row {
  readonly mode: Mode;
  readonly workload: Workload;
  readonly load: string;
  readonly results: Readonly<Record<Target, TargetResult>>;
}

type Report = (line: string) => void;

/** Ctrl-C or SIGTERM stops the bench at the next run boundary, so every finally still cleans up. */
let interruptedBy: NodeJS.Signals | null = null;

function throwIfInterrupted(): void {
  if (interruptedBy !== null) throw new Error(`interrupted by ${interruptedBy}; cleaning up`);
}

async function main(): Promise<void> {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => (interruptedBy = signal));
  const options = parseOptions();
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const packagesInstalled = await ensurePackages(report);
  const versions = await toolVersions();
  const loadBefore = await uptime();
  report(`bench/proxy: ${options.seconds} s per run, ${options.rounds} round(s); ${availableParallelism()} cores; ${versions.join('; ')}`);
  report(`load before: ${loadBefore}`);
  const cellar = await BenchCellar.create({});
  const problems: string[] = [];
  let rows: Row[] = [];
  try {
    const started = performance.now();
    await cellar.start();
    report(`cellar up: ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const setup = await createCluster(cellar);
    await initPgbench(setup, report);
    rows = await runModes(setup, options, report);
  } finally {
    problems.push(...(await cellar.destroy()));
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(rows, report);
  for (const problem of problems) report(`problem: ${problem}`);
  if (options.json) {
    const summary = summaryJson(rows, options, { versions, loadBefore, loadAfter, packagesInstalled, problems });
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  }
}

interface Options {
  readonly seconds: number;
  readonly rounds: number;
  readonly json: boolean;
  readonly modes: readonly Mode[];
  readonly workloads: readonly Workload[];
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: { seconds: { type: 'string' }, rounds: { type: 'string' }, json: { type: 'boolean' }, mode: { type: 'string' }, workload: { type: 'string' } },
  });
  const seconds = values.seconds === undefined ? secondsDefault : Number(values.seconds);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > secondsMax) throw new Error(`--seconds must be an integer from 1 to ${secondsMax}`);
  const rounds = values.rounds === undefined ? roundsDefault : Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > roundsMax) throw new Error(`--rounds must be an integer from 1 to ${roundsMax}`);
  const chosenModes = modes.filter((mode) => values.mode === undefined || values.mode === mode);
  if (chosenModes.length === 0) throw new Error(`--mode must be one of: ${modes.join(', ')}`);
  const chosenWorkloads = workloads.filter((workload) => values.workload === undefined || values.workload === workload.name);
  if (chosenWorkloads.length === 0) throw new Error(`--workload must be one of: ${workloads.map((workload) => `'${workload.name}'`).join(', ')}`);
  return { seconds, rounds, json: values.json === true, modes: chosenModes, workloads: chosenWorkloads };
}

/** Installs PgBouncer and OpenSSL's headers (for the floor relay) from Debian when missing; returns whether this run installed any. */
async function ensurePackages(report: Report): Promise<boolean> {
  const needed: Array<{ file: string; pkg: string }> = [];
  for (const wanted of [
    { file: pgbouncerBinary, pkg: pgbouncerPackage },
    { file: opensslHeader, pkg: opensslHeaderPackage },
  ]) {
    if (!(await exists(wanted.file))) needed.push(wanted);
  }
  if (needed.length === 0) return false;
  const packages = needed.map((wanted) => wanted.pkg);
  report(`${needed.map((wanted) => wanted.file).join(', ')} missing: apt-get install -y ${packages.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await execOk('apt-get', ['update'], { timeoutMs: aptMsMax, env });
  await execOk('apt-get', ['install', '-y', '--no-install-recommends', ...packages], { timeoutMs: aptMsMax, env });
  for (const wanted of needed) {
    if (!(await exists(wanted.file))) throw new Error(`apt-get install ${wanted.pkg} did not provide ${wanted.file}`);
  }
  report(`installed ${packages.join(' ')}`);
  return true;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function toolVersions(): Promise<string[]> {
  const env = { ...process.env };
  const pgbench = await execOk('pgbench', ['--version'], { timeoutMs: 10_000, env });
  const pgbouncer = await execOk(pgbouncerBinary, ['--version'], { timeoutMs: 10_000, env });
  return [`node ${process.version}`, pgbench.stdout.trim(), pgbouncer.stdout.trim().split('\n')[0] ?? ''];
}

// ---------------------------------------------------------------------------------------------
// Setup: one cluster without replicas (fewer processes competing for the cores), pgbench tables,
// and TLS on the primary itself for the direct TLS baseline.

async function createCluster(cellar: BenchCellar): Promise<Setup> {
  const args = ['clusters', 'create', 'bench', '--replicas', '0', '--wait', '--json', '--timeout', String(createWaitSecondsMax)];
  const created = await cellar.cli(args, cliMsMax);
  if (created.code !== 0) throw new Error(`cellar clusters create exited ${created.code}: ${created.stdout}${created.stderr.slice(-2_000)}`);
  const cluster = JSON.parse(created.stdout) as ClusterView;
  const primary = cluster.instances.find((instance) => instance.role === 'primary');
  if (cluster.uri === null || cluster.routeKey === null || primary === undefined || primary.port === null) {
    throw new Error(`cluster has no uri, route key or primary port: ${created.stdout}`);
  }
  const uri = new URL(cluster.uri);
  const proxyPids = await processesWith([cellarProxyBin], `CELLAR_HOME=${cellar.env['CELLAR_HOME'] as string}`);
  return {
    cellar,
    serverUser: await serverUser(),
    password: decodeURIComponent(uri.password),
    routeKey: cluster.routeKey,
    primaryPort: primary.port,
    primaryId: primary.id as InstanceId,
    proxyPort: Number(uri.port),
    proxyPid: proxyPids.length === 1 ? proxyPids[0] : undefined,
    ticksPerSecond: await clockTicksPerSecond(),
  };
}

async function initPgbench(setup: Setup, report: Report): Promise<void> {
  const started = performance.now();
  const endpoint = endpointOf(setup, 'direct');
  await execOk('pgbench', ['-i', '-s', String(pgbenchScale), '-q'], { timeoutMs: pgbenchInitMsMax, env: pgbenchEnv(setup, endpoint, 'plain') });
  report(`pgbench -i -s ${pgbenchScale} (direct): ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

/** As postgres over the primary's unix socket: the bench runs as root, the socket dir is 0700. */
function superuser(setup: Setup) {
  return { host: instancePaths(setup.cellar.dataDir, setup.primaryId).run, port: setup.primaryPort, user: 'postgres', database: 'postgres' };
}

/** ssl=on by reload (Postgres 15 allows it), with a self-signed certificate in the data directory. */
async function enableServerTls(setup: Setup, report: Report): Promise<void> {
  const { pgdata } = instancePaths(setup.cellar.dataDir, setup.primaryId);
  const { cert, key } = await selfSignedCertificate(pgdata, 'bench-server', '127.0.0.1', setup.serverUser);
  const target = superuser(setup);
  await queryOnce(target, `alter system set ssl_cert_file = '${cert}'`);
  await queryOnce(target, `alter system set ssl_key_file = '${key}'`);
  await queryOnce(target, 'alter system set ssl = on');
  await queryOnce(target, 'select pg_reload_conf()');
  const app = { host: '127.0.0.1', port: setup.primaryPort, user: appRole, password: setup.password, database: databaseName, ssl: { rejectUnauthorized: false } };
  await waitFor(
    'TLS on the primary',
    async () => {
      const rows = await queryOnce<{ ssl: boolean }>(app, 'select ssl from pg_stat_ssl where pid = pg_backend_pid()');
      return rows[0]?.ssl === true ? true : undefined;
    },
    readyWaitMsMax,
    readyPollMs,
  );
  report('primary: ssl = on (self-signed certificate) for the direct TLS baseline');
}

// ---------------------------------------------------------------------------------------------
// PgBouncer: session mode, SCRAM with the app role's verifier from pg_authid (PgBouncer then
// logs in to the server with the client's SCRAM keys), plain TCP to the same primary port the
// proxy uses.

/** A relay process the bench started (PgBouncer or the floor relay): its pid, its port, its own temporary directory. */
interface Middle {
  readonly pid: number;
  readonly port: number;
  readonly dir: string;
}

async function stopMiddle(middle: Middle): Promise<void> {
  try {
    await stopPid(middle.pid);
  } finally {
    await rm(middle.dir, { recursive: true, force: true });
  }
}

async function startPgbouncer(setup: Setup, mode: Mode): Promise<Middle> {
  const user = setup.serverUser;
  const dir = await makeTempDir('cellar-bench-pgbouncer-', user);
  try {
    const port = await freePort();
    const rows = await queryOnce<{ rolpassword: string | null }>(superuser(setup), `select rolpassword from pg_authid where rolname = '${appRole}'`);
    const verifier = rows[0]?.rolpassword;
    if (typeof verifier !== 'string' || !verifier.startsWith('SCRAM-SHA-256$')) throw new Error(`role ${appRole} has no SCRAM verifier`);
    const authFile = join(dir, 'userlist.txt');
    await writeOwned(authFile, `"${appRole}" "${verifier}"\n`, 0o600, user);
    const tlsLines = mode === 'tls' ? await pgbouncerTlsLines(dir, user) : ['client_tls_sslmode = disable'];
    const config = [
      '[databases]',
      `${databaseName} = host=127.0.0.1 port=${setup.primaryPort} dbname=${databaseName}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${authFile}`,
      'pool_mode = session',
      `max_client_conn = ${pgbouncerClientsMax}`,
      `default_pool_size = ${pgbouncerPoolSize}`,
      'server_tls_sslmode = disable',
      ...tlsLines,
      'log_connections = 0',
      'log_disconnections = 0',
      `pidfile = ${join(dir, 'pgbouncer.pid')}`,
      '',
    ].join('\n');
    const configFile = join(dir, 'pgbouncer.ini');
    await writeOwned(configFile, config, 0o600, user);
    const logFile = join(dir, 'pgbouncer.log');
    const child = await spawnLogged(pgbouncerBinary, [configFile], logFile, user);
    const bouncer = { pid: child.pid, port, dir };
    try {
      await waitPgbouncerReady(setup, bouncer, mode, child.exited, logFile);
    } catch (error) {
      await stopPid(child.pid);
      throw error;
    }
    return bouncer;
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

async function pgbouncerTlsLines(dir: string, user: OsUser): Promise<string[]> {
  const { cert, key } = await selfSignedCertificate(dir, 'pgbouncer', '127.0.0.1', user);
  return ['client_tls_sslmode = require', `client_tls_cert_file = ${cert}`, `client_tls_key_file = ${key}`];
}

async function waitPgbouncerReady(setup: Setup, bouncer: Middle, mode: Mode, exited: () => boolean, logFile: string): Promise<void> {
  const config = {
    host: '127.0.0.1',
    port: bouncer.port,
    user: appRole,
    password: setup.password,
    database: databaseName,
    ssl: mode === 'tls' ? { rejectUnauthorized: false } : false,
  };
  await waitFor(
    `pgbouncer (${mode}) to accept a SCRAM login`,
    async () => {
      if (exited()) throw new Error(`pgbouncer exited during start; see ${logFile}`);
      await queryOnce(config, 'select 1');
      return true;
    },
    readyWaitMsMax,
    readyPollMs,
  );
}

async function writeOwned(path: string, text: string, mode: number, owner: OsUser): Promise<void> {
  await writeFile(path, text, { mode });
  if (owner.switchUser) await chown(path, owner.uid, owner.gid);
}

// ---------------------------------------------------------------------------------------------
// The floor relay: compiled once per bench run from bench/floor-relay.c, one process per mode,
// straight to the same primary port.

async function compileFloorRelay(dir: string): Promise<string> {
  const binary = join(dir, 'floor-relay');
  await execOk('cc', ['-O2', '-Wall', '-o', binary, floorRelaySource, '-lssl', '-lcrypto'], { timeoutMs: compileMsMax, env: { ...process.env } });
  return binary;
}

async function startFloorRelay(setup: Setup, binary: string, mode: Mode): Promise<Middle> {
  const user = setup.serverUser;
  const dir = await makeTempDir('cellar-bench-floor-', user);
  try {
    const port = await freePort();
    const tlsArgs = mode === 'tls' ? Object.values(await selfSignedCertificate(dir, 'floor', '127.0.0.1', user)) : [];
    const logFile = join(dir, 'floor-relay.log');
    const child = await spawnLogged(binary, [String(port), String(setup.primaryPort), ...tlsArgs], logFile, user);
    try {
      await waitFor(
        `the floor relay (${mode}) to listen`,
        async () => {
          if (child.exited()) throw new Error(`the floor relay exited during start; see ${logFile}`);
          return (await readFile(logFile, 'utf8')).includes('ready') ? true : undefined;
        },
        readyWaitMsMax,
        readyPollMs,
      );
    } catch (error) {
      await stopPid(child.pid);
      throw error;
    }
    return { pid: child.pid, port, dir };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Runs.

/** The relays running for one mode besides the proxy. */
interface Middles {
  readonly bouncer: Middle;
  readonly floor: Middle;
}

async function runModes(setup: Setup, options: Options, report: Report): Promise<Row[]> {
  const rows: Row[] = [];
  const buildDir = await makeTempDir('cellar-bench-build-');
  try {
    const floorBinary = await compileFloorRelay(buildDir);
    for (const mode of options.modes) {
      throwIfInterrupted();
      if (mode === 'tls') await enableServerTls(setup, report);
      const floor = await startFloorRelay(setup, floorBinary, mode);
      try {
        const bouncer = await startPgbouncer(setup, mode);
        try {
          const middles = { bouncer, floor };
          report(`\n== ${mode}: pgbouncer pid ${bouncer.pid} port ${bouncer.port}; floor relay pid ${floor.pid} port ${floor.port}; proxy pid ${setup.proxyPid ?? 'unknown'} port ${setup.proxyPort}`);
          await warmUp(setup, middles, mode);
          for (const workload of options.workloads) rows.push(await runRow(setup, middles, mode, workload, options, report));
        } finally {
          await stopMiddle(bouncer);
        }
      } finally {
        await stopMiddle(floor);
      }
    }
  } finally {
    await rm(buildDir, { recursive: true, force: true });
  }
  return rows;
}

async function warmUp(setup: Setup, middles: Middles, mode: Mode): Promise<void> {
  const workload = workloads.find((candidate) => candidate.clients > 1) ?? (workloads[0] as Workload);
  for (const target of targets) await pgbench(setup, middles, mode, target, workload, warmUpSeconds);
}

/** The targets interleave within a round, in an order that rotates per round, so all see the same load. */
async function runRow(setup: Setup, middles: Middles, mode: Mode, workload: Workload, options: { seconds: number; rounds: number }, report: Report): Promise<Row> {
  const load = await uptime();
  report(`-- ${mode}, ${workload.name} (pgbench ${workload.args.join(' ')} -T ${options.seconds}); load: ${load}`);
  const runs: Record<Target, PgbenchRun[]> = { direct: [], floor: [], proxy: [], pgbouncer: [] };
  for (let round = 0; round < options.rounds; round += 1) {
    for (let index = 0; index < targets.length; index += 1) {
      throwIfInterrupted();
      const target = targets[(index + round) % targets.length] as Target;
      const run = await pgbench(setup, middles, mode, target, workload, options.seconds);
      runs[target].push(run);
      const cpu = run.cpuUsPerTransaction === null ? '' : `, ${target} CPU ${run.cpuUsPerTransaction.toFixed(1)} µs/tx`;
      report(`   ${target.padEnd(9)} tps ${run.tps.toFixed(0).padStart(7)}  latency ${(run.latencyMs * 1000).toFixed(0).padStart(5)} µs${cpu}`);
    }
  }
  const results = Object.fromEntries(targets.map((target) => [target, summarize(runs[target])])) as Record<Target, TargetResult>;
  return { mode, workload, load, results };
}

function summarize(runs: readonly PgbenchRun[]): TargetResult {
  const cpu = runs.map((run) => run.cpuUsPerTransaction).filter((value) => value !== null);
  return {
    runs,
    tps: median(runs.map((run) => run.tps)),
    latencyMs: median(runs.map((run) => run.latencyMs)),
    cpuUsPerTransaction: cpu.length === runs.length ? median(cpu) : null,
  };
}

function endpointOf(setup: Setup, target: Target, middles?: Middles): Endpoint {
  if (target === 'direct') return { port: setup.primaryPort, user: appRole, database: databaseName };
  if (target === 'proxy') return { port: setup.proxyPort, user: `${appRole}.${setup.routeKey}`, database: databaseName };
  if (middles === undefined) throw new Error(`no ${target} running`);
  return { port: target === 'floor' ? middles.floor.port : middles.bouncer.port, user: appRole, database: databaseName };
}

function pgbenchEnv(setup: Setup, endpoint: Endpoint, mode: Mode): NodeJS.ProcessEnv {
  return {
    LC_ALL: 'C',
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    PGHOST: '127.0.0.1',
    PGPORT: String(endpoint.port),
    PGUSER: endpoint.user,
    PGPASSWORD: setup.password,
    PGDATABASE: endpoint.database,
    PGSSLMODE: mode === 'tls' ? 'require' : 'disable',
    PGGSSENCMODE: 'disable',
    PGCONNECT_TIMEOUT: String(connectTimeoutSeconds),
  };
}

async function pgbench(setup: Setup, middles: Middles, mode: Mode, target: Target, workload: Workload, seconds: number): Promise<PgbenchRun> {
  const endpoint = endpointOf(setup, target, middles);
  const middlePids: Record<Target, number | undefined> = { direct: undefined, floor: middles.floor.pid, proxy: setup.proxyPid, pgbouncer: middles.bouncer.pid };
  const middlePid = middlePids[target];
  const ticksBefore = middlePid === undefined ? undefined : await cpuTicks(middlePid);
  const args = [...workload.args, '-T', String(seconds), '-n'];
  const result = await exec('pgbench', args, { timeoutMs: seconds * 1000 + pgbenchGraceMs, env: pgbenchEnv(setup, endpoint, mode) });
  const ticksAfter = middlePid === undefined ? undefined : await cpuTicks(middlePid);
  if (result.code !== 0) throw new Error(`pgbench ${args.join(' ')} (${mode}, ${target}) exited ${result.code}: ${result.stderr.trim().slice(-2_000)}`);
  const run = parsePgbench(result.stdout, `${mode}, ${target}, ${workload.name}`);
  const transactions = run.tps * seconds;
  const cpuUsPerTransaction = ticksBefore === undefined || ticksAfter === undefined || transactions === 0 ? null : ((ticksAfter - ticksBefore) / setup.ticksPerSecond / transactions) * 1e6;
  if (run.failed > 0) throw new Error(`pgbench (${mode}, ${target}, ${workload.name}): ${run.failed} failed transactions`);
  return { ...run, cpuUsPerTransaction };
}

function parsePgbench(stdout: string, what: string): Omit<PgbenchRun, 'cpuUsPerTransaction'> {
  const tps = /^tps = ([\d.]+) \(without initial connection time\)/m.exec(stdout)?.[1];
  const latency = /^latency average = ([\d.]+) ms/m.exec(stdout)?.[1];
  const failed = /^number of failed transactions: (\d+)/m.exec(stdout)?.[1] ?? '0';
  if (tps === undefined || latency === undefined) throw new Error(`pgbench (${what}) printed no tps or latency:\n${stdout}`);
  return { tps: Number(tps), latencyMs: Number(latency), failed: Number(failed) };
}

// ---------------------------------------------------------------------------------------------
// Output.

function addedLatencyUs(row: Row, target: Target): number {
  return (row.results[target].latencyMs - row.results.direct.latencyMs) * 1000;
}

function goalOf(row: Row): { tpsMet: boolean; latencyMet: boolean | null } {
  const tpsMet = row.results.proxy.tps >= row.results.pgbouncer.tps;
  const latencyMet = row.workload.clients === 1 ? addedLatencyUs(row, 'proxy') < addedLatencyUsMax : null;
  return { tpsMet, latencyMet };
}

function printSummary(rows: readonly Row[], report: Report): void {
  report(`\n== summary (median of rounds); goal: proxy TPS >= pgbouncer TPS in every row, added latency at c=1 < ${addedLatencyUsMax} µs`);
  report(
    `${'mode'.padEnd(5)} ${'workload'.padEnd(16)} ${'direct tps/µs'.padStart(14)} ${'floor tps/µs'.padStart(14)} ${'proxy tps/µs'.padStart(14)} ${'bouncer tps/µs'.padStart(15)}  proxy/bouncer  proxy/floor  proxy/direct  added µs floor/proxy/bouncer  goal`,
  );
  for (const row of rows) {
    const cell = (target: Target, width: number) => `${row.results[target].tps.toFixed(0)}/${(row.results[target].latencyMs * 1000).toFixed(0)}`.padStart(width);
    const { tpsMet, latencyMet } = goalOf(row);
    const added = row.workload.clients === 1 ? (['floor', 'proxy', 'pgbouncer'] as const).map((target) => addedLatencyUs(row, target).toFixed(0)).join('/') : '-';
    const goal = [tpsMet ? 'tps met' : 'tps NOT met', latencyMet === null ? '' : latencyMet ? 'latency met' : 'latency NOT met'].filter(Boolean).join(', ');
    report(
      `${row.mode.padEnd(5)} ${row.workload.name.padEnd(16)} ${cell('direct', 14)} ${cell('floor', 14)} ${cell('proxy', 14)} ${cell('pgbouncer', 15)}  ${ratio(row, 'pgbouncer').padStart(13)}  ${ratio(row, 'floor').padStart(11)}  ${ratio(row, 'direct').padStart(12)}  ${added.padStart(28)}  ${goal}`,
    );
  }
  const cpuRows = rows.filter((row) => row.results.proxy.cpuUsPerTransaction !== null && row.results.pgbouncer.cpuUsPerTransaction !== null);
  if (cpuRows.length === 0) return;
  report('\nCPU of the middle process per transaction (µs, user+system, clock-tick resolution):');
  for (const row of cpuRows) {
    const cpu = (target: Target) => `${target} ${row.results[target].cpuUsPerTransaction?.toFixed(1) ?? '?'}`;
    report(`${row.mode.padEnd(5)} ${row.workload.name.padEnd(16)} ${cpu('proxy')}  ${cpu('pgbouncer')}  ${cpu('floor')}`);
  }
}

function ratio(row: Row, baseline: Target): string {
  return (row.results.proxy.tps / row.results[baseline].tps).toFixed(2);
}

interface RunInfo {
  readonly versions: readonly string[];
  readonly loadBefore: string;
  readonly loadAfter: string;
  readonly packagesInstalled: boolean;
  readonly problems: readonly string[];
}

function summaryJson(rows: readonly Row[], options: { seconds: number; rounds: number }, info: RunInfo): unknown {
  const round = (value: number, digits: number) => Number(value.toFixed(digits));
  return {
    benchmark: 'bench/proxy',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), versions: info.versions },
    seconds: options.seconds,
    rounds: options.rounds,
    pgbenchScale,
    goal: { proxyOverPgbouncerTpsMin: 1, addedLatencyUsMaxAtC1: addedLatencyUsMax },
    loadBefore: info.loadBefore,
    loadAfter: info.loadAfter,
    packagesInstalled: info.packagesInstalled,
    rows: rows.map((row) => {
      const { tpsMet, latencyMet } = goalOf(row);
      return {
        mode: row.mode,
        workload: row.workload.name,
        pgbenchArgs: row.workload.args,
        load: row.load,
        targets: Object.fromEntries(
          targets.map((target) => {
            const result = row.results[target];
            return [
              target,
              {
                tps: round(result.tps, 1),
                latencyUs: round(result.latencyMs * 1000, 1),
                cpuUsPerTransaction: result.cpuUsPerTransaction === null ? null : round(result.cpuUsPerTransaction, 2),
                runs: result.runs.map((run) => ({ tps: round(run.tps, 1), latencyUs: round(run.latencyMs * 1000, 1) })),
              },
            ];
          }),
        ),
        proxyOverPgbouncer: round(row.results.proxy.tps / row.results.pgbouncer.tps, 3),
        proxyOverFloor: round(row.results.proxy.tps / row.results.floor.tps, 3),
        proxyOverDirect: round(row.results.proxy.tps / row.results.direct.tps, 3),
        addedLatencyUs:
          row.workload.clients === 1
            ? { floor: round(addedLatencyUs(row, 'floor'), 1), proxy: round(addedLatencyUs(row, 'proxy'), 1), pgbouncer: round(addedLatencyUs(row, 'pgbouncer'), 1) }
            : null,
        goalTpsMet: tpsMet,
        goalLatencyMet: latencyMet,
      };
    }),
    problems: info.problems,
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/proxy failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
