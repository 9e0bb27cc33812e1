import { chown, open, rm, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { ClusterView } from '../src/api/view.js';
import type { ChangeId, InstanceId } from '../src/lib/ids.js';
import { changeState } from '../src/store/config.js';
import { instancePaths } from '../src/postgres/paths.js';
import {
  type ConnectAttempt,
  Connector,
  type HaEnvironment,
  type Report,
  Writer,
  createTable,
  describeCluster,
  discoverEnvironment,
  haCellarEnvironment,
  isSettled,
  longestGapMs,
  lostIds,
  parseRounds,
  primaryOf,
  showCluster,
  throwIfInterrupted,
  watchInterrupts,
} from './ha.js';
import { BenchCellar, type OsUser, exec, makeTempDir, median, seconds, sleep, uptime, waitFor } from './lib.js';

/**
 * bench/config: changing a running cluster's settings (issue 14, docs/CONFIG.md) on a cluster with
 * two replicas, under a writer (one connection, an insert every ~2 ms) and a new-connection prober
 * (connect + `select 1` every ~50 ms), both through the proxy. Per round:
 * - floor, reload: ALTER SYSTEM SET work_mem on each of the 3 instances, then a raw `pg_ctl reload`
 *   of all three at once (as each instance's OS user); time until SHOW on every instance shows it;
 *   then reset.
 * - Cellar, reload: POST /v1/clusters/:name/config {settings: {work_mem}}; time from the request
 *   until SHOW on every instance (polled directly on its socket) shows it; and until the change
 *   machine is done.
 * - floor, restart: a raw `pg_ctl restart -m fast` of one replica; time until it accepts again (a
 *   new connection sees the new postmaster) and streams.
 * - floor, switchover: `cellar clusters switchover --wait`: the longest write pause it causes.
 * - Cellar, restart parameter (track_activity_query_size): the rolling restart from the request to
 *   the change machine done, the longest write pause and the failed new connections during it.
 * Goals: a reload parameter live on every instance within 2 s of the request (every round); a
 * rolling restart whose write pause is no longer than the switchover's (medians, same run) with 0
 * failed new connections.
 *
 *   node dist/bench/config.js [--rounds N] [--json]
 */

const goalReloadLiveMsMax = 2_000;
const roundsDefault = 3;
const roundsMax = 20;
const clusterName = 'cfg';
const clusterReplicas = 2;
const clusterMembers = clusterReplicas + 1;
const writerPauseMs = 2;
/** The issue's prober: a fresh connection through the proxy about this often, one at a time. */
const connectIntervalMs = 50;
const createWaitSecondsMax = 300;
const createCliMsMax = (createWaitSecondsMax + 30) * 1000;
const switchoverWaitSecondsMax = 60;
const switchoverCliMsMax = (switchoverWaitSecondsMax + 30) * 1000;
/** Load before each step, and after it, inside the step's window: a pause that ends just after the step still counts. */
const quietBeforeStepMs = 1_000;
const afterStepMs = 1_000;
const firstWritesWaitMsMax = 30_000;
const firstWritesCount = 20;
/** SHOW on each instance's own connection this often: well under the figures it resolves (tens of ms and up). */
const showPollMs = 5;
const reloadLiveWaitMsMax = 60_000;
/** A rolling restart of three instances plus a switchover, with room for a loaded machine. */
const changeWaitMsMax = 600_000;
const changePollMs = 25;
const apiRequestMsMax = 30_000;
const catalogueWaitMsMax = 60_000;
const pgCtlMsMax = 90_000;
/** pg_ctl's own wait for the restarted server; our poll sees it sooner, this only bounds the child. */
const pgCtlWaitSeconds = 60;
const restartPollMs = 5;
const restartAttemptsMax = 5;
const restartAcceptWaitMsMax = 60_000;
const streamingWaitMsMax = 60_000;
const settleWaitMsMax = 180_000;
const settlePollMs = 200;
const socketConnectTimeoutMs = 5_000;
const socketQueryTimeoutMs = 10_000;
const errorsShownMax = 3;
const eventsShownMax = 40;
const reloadSetting = 'work_mem';
/** A `postmaster` parameter with no rule about replicas (unlike max_connections), harmless at any of these values. */
const restartSetting = 'track_activity_query_size';
/** Each round's values differ from the last round's, so every step changes something: 10+r MB raw, 20+r MB through Cellar, 1+r kB restart. */
const floorWorkMemBaseMb = 10;
const cellarWorkMemBaseMb = 20;
const restartValueBaseKb = 1;

/** One instance reached directly: its socket (as `postgres`, peer auth for Cellar's OS user, which the bench shares) and its data directory's owner. */
interface Target {
  readonly id: string;
  readonly role: string;
  readonly port: number;
  readonly runDir: string;
  readonly pgdata: string;
  readonly owner: OsUser;
}

/** What the writer and the prober saw in a step's window: from its start to its end plus afterStepMs. */
interface StepLoad {
  readonly writerGapMs: number;
  readonly writerErrors: number;
  readonly writerErrorMessages: readonly string[];
  readonly connects: number;
  readonly failedConnects: number;
  readonly connectErrors: readonly string[];
  /** The longest connect-to-result latency among new connections overlapping the window. */
  readonly connectPauseMs: number;
}

interface ReloadFloor {
  /** Per instance, pg_ctl spawned to SHOW showing the value. */
  readonly liveMs: readonly number[];
  readonly lastLiveMs: number;
  /** Per instance, pg_ctl spawned to pg_ctl exited: the part of liveMs that is starting a process as another user. */
  readonly pgCtlMs: readonly number[];
  readonly load: StepLoad;
}

interface RestartFloor {
  readonly instanceId: string;
  /** pg_ctl spawned to a new connection served by the new postmaster. */
  readonly acceptingMs: number;
  readonly streamingMs: number;
  readonly pgCtlMs: number;
  /** Cellar's own reaction to the restart (its liveness check may see the gap): the instance's events. */
  readonly cellarEvents: readonly string[];
  /** Attempts before this one whose start Cellar made (pg_ctl lost the race): not a floor, tried again. */
  readonly interferedAttempts: number;
  readonly load: StepLoad;
}

interface SwitchoverFloor {
  readonly oldPrimaryId: string;
  readonly newPrimaryId: string;
  readonly cliMs: number;
  readonly load: StepLoad;
}

interface CellarReload {
  readonly revision: number | null;
  readonly liveMs: readonly number[];
  readonly lastLiveMs: number;
  /** Request sent to the change machine seen done. */
  readonly doneMs: number;
  readonly load: StepLoad;
  readonly events: readonly string[];
}

interface CellarRestart {
  readonly revision: number | null;
  readonly durationMs: number;
  /** Instances showing the new value afterwards, of clusterMembers. */
  readonly liveOn: number;
  readonly load: StepLoad;
  readonly events: readonly string[];
}

interface Round {
  readonly index: number;
  readonly floorReload: ReloadFloor;
  readonly floorRestart: RestartFloor;
  readonly switchover: SwitchoverFloor;
  /** Null while Cellar's config API is not there (see cellarApiMissing). */
  readonly cellarReload: CellarReload | null;
  readonly cellarRestart: CellarRestart | null;
  readonly writerAcknowledged: number;
  readonly writerLost: number;
}

interface Outcome {
  readonly rounds: readonly Round[];
  readonly failure: string | null;
  /** Why the Cellar steps did not run (the API answered that it has no such route), else null. */
  readonly cellarApiMissing: string | null;
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseRounds(roundsDefault, roundsMax);
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await uptime();
  report(`bench/config: ${options.rounds} round(s); ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  report(`cluster ${clusterName}: 1 primary + ${clusterReplicas} replicas; through the proxy a writer (1 connection, insert every ~${writerPauseMs} ms) and a new connection + select 1 every ~${connectIntervalMs} ms for the whole round`);
  report(`each round: floor reload (ALTER SYSTEM ${reloadSetting} + raw pg_ctl reload on all ${clusterMembers}; SHOW polled every ${showPollMs} ms on each instance's socket); Cellar reload (POST config ${reloadSetting}); floor restart (raw pg_ctl restart -m fast of a replica); floor switchover (cellar clusters switchover --wait); Cellar restart parameter (POST config ${restartSetting})`);
  report(`write pause = the longest wait between acknowledged writes in a step's window (its start to its end + ${seconds(afterStepMs, 1)} s)`);
  const cellar = await BenchCellar.create(haCellarEnvironment);
  const scratch = await makeTempDir('cellar-bench-config-');
  const problems: string[] = [];
  let outcome: Outcome = { rounds: [], failure: null, cellarApiMissing: null };
  try {
    const upStarted = performance.now();
    await cellar.start();
    report(`cellar up: ${seconds(performance.now() - upStarted, 1)} s`);
    const createStarted = performance.now();
    const created = await cellar.cliJson<ClusterView>(['clusters', 'create', clusterName, '--replicas', String(clusterReplicas), '--wait', '--timeout', String(createWaitSecondsMax)], createCliMsMax);
    if (created.uri === null) throw new Error(`cluster ${clusterName} has no uri: ${JSON.stringify(created)}`);
    report(`cluster ${clusterName}: created in ${seconds(performance.now() - createStarted, 1)} s; durability ${created.durability}; ${created.instances.length} instances`);
    outcome = await runRounds(cellar, created.uri, environment, scratch, options.rounds, report);
  } finally {
    problems.push(...(await cellar.destroy()));
    await rm(scratch, { recursive: true, force: true });
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(outcome, report);
  for (const problem of problems) report(`cleanup: ${problem}`);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(outcome, environment, loadBefore, loadAfter, problems), null, 2)}\n`);
  if (verdict(outcome) !== 'PASS') process.exitCode = 1;
}

/** A round that fails stops the run (the cluster's state is then unknown); the rounds before it still count. */
async function runRounds(cellar: BenchCellar, uri: string, environment: HaEnvironment, scratch: string, rounds: number, report: Report): Promise<Outcome> {
  const done: Round[] = [];
  let cellarApiMissing: string | null = null;
  for (let index = 1; index <= rounds; index += 1) {
    try {
      throwIfInterrupted();
      const round = await runRound(cellar, uri, environment, scratch, index, cellarApiMissing === null);
      if (round.missing !== null) cellarApiMissing = round.missing;
      done.push(round.round);
      printRound(round.round, report);
    } catch (error) {
      const failure = `round ${index} failed: ${error instanceof Error ? error.message : String(error)}`;
      report(failure);
      report(`cellar output tail:\n${cellar.logTail()}`);
      return { rounds: done, failure, cellarApiMissing };
    }
  }
  return { rounds: done, failure: null, cellarApiMissing };
}

async function runRound(
  cellar: BenchCellar,
  uri: string,
  environment: HaEnvironment,
  scratch: string,
  index: number,
  tryCellar: boolean,
): Promise<{ round: Round; missing: string | null }> {
  await waitFullySettled(cellar, `before round ${index}`);
  const table = `config_round_${index}`;
  await createTable(uri, table);
  const writer = Writer.start(uri, table, writerPauseMs);
  const connector = new Connector(uri, connectIntervalMs);
  let missing: string | null = null;
  let steps: Omit<Round, 'index' | 'writerAcknowledged' | 'writerLost'>;
  try {
    await waitFor('first acknowledged writes', async () => (writer.acknowledgedCount >= firstWritesCount ? true : undefined), firstWritesWaitMsMax, 10);
    const probes: Probes = { writer, connector };
    const floorReload = await floorReloadStep(cellar, environment, probes, `${floorWorkMemBaseMb + index}MB`);
    let cellarReload: CellarReload | null = null;
    if (tryCellar) {
      const reloaded = await cellarReloadStep(cellar, probes, `${cellarWorkMemBaseMb + index}MB`);
      if (typeof reloaded === 'string') missing = reloaded;
      else cellarReload = reloaded;
    }
    const floorRestart = await floorRestartStep(cellar, environment, probes, scratch, index);
    const switchover = await switchoverStep(cellar, probes);
    const cellarRestart = tryCellar && missing === null ? await cellarRestartStep(cellar, probes, `${restartValueBaseKb + index}kB`) : null;
    steps = { floorReload, floorRestart, switchover, cellarReload, cellarRestart };
  } finally {
    await connector.stop();
    await writer.stop();
  }
  const lost = await lostIds(uri, table, writer.log);
  return { round: { index, ...steps, writerAcknowledged: writer.log.acknowledged.length, writerLost: lost.length }, missing };
}

// ---------------------------------------------------------------------------------------------
// The cluster and its instances, reached directly.

/** Running with all three members, every replica streaming, commits waiting for a replica. */
async function waitFullySettled(cellar: BenchCellar, what: string): Promise<ClusterView> {
  let last = 'not shown yet';
  return waitFor(
    `cluster ${clusterName} settled with ${clusterMembers} members ${what}`,
    async () => {
      const cluster = await showCluster(cellar, clusterName);
      last = describeCluster(cluster);
      return cluster.instances.length === clusterMembers && isSettled(cluster) ? cluster : undefined;
    },
    settleWaitMsMax,
    settlePollMs,
  ).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}; last seen: ${last}`);
  });
}

async function targetsOf(cellar: BenchCellar, cluster: ClusterView): Promise<Target[]> {
  const targets: Target[] = [];
  for (const instance of cluster.instances) {
    if (instance.port === null) throw new Error(`instance ${instance.id} has no port`);
    const paths = instancePaths(cellar.dataDir, instance.id as InstanceId);
    // Each cluster's servers run as its own OS user, the owner of its data directories.
    const owner = await stat(paths.pgdata);
    targets.push({ id: instance.id, role: instance.role, port: instance.port, runDir: paths.run, pgdata: paths.pgdata, owner: { uid: owner.uid, gid: owner.gid, switchUser: owner.uid !== process.getuid?.() } });
  }
  return targets;
}

function socketConfig(target: Target): pg.ClientConfig {
  return { host: target.runDir, port: target.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: socketConnectTimeoutMs, query_timeout: socketQueryTimeoutMs };
}

async function connectTo(target: Target): Promise<pg.Client> {
  const client = new pg.Client(socketConfig(target));
  client.on('error', () => {});
  await client.connect();
  return client;
}

async function withTarget<T>(target: Target, use: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = await connectTo(target);
  try {
    return await use(client);
  } finally {
    await client.end().catch(() => {});
  }
}

async function showOn(client: pg.Client, name: string): Promise<string> {
  const rows = (await client.query<{ value: string }>('select current_setting($1) as value', [name])).rows;
  const value = rows[0]?.value;
  if (value === undefined) throw new Error(`current_setting(${name}) returned no row`);
  return value;
}

/**
 * Polls SHOW on each instance's own open connection (a backend applies a reload before its next
 * statement) until it shows `expected`; per instance, ms from `startedAtMs`. Stops early when
 * `cancelled` says so, or throws after reloadLiveWaitMsMax naming what each instance still shows.
 */
async function waitLive(clients: readonly pg.Client[], name: string, expected: string, startedAtMs: number, cancelled: () => boolean): Promise<number[]> {
  return Promise.all(
    clients.map(async (client, position) => {
      let last = '';
      while (performance.now() - startedAtMs < reloadLiveWaitMsMax && !cancelled()) {
        last = await showOn(client, name);
        if (last === expected) return performance.now() - startedAtMs;
        await sleep(showPollMs);
      }
      throw new Error(`instance ${position + 1} still showed ${name} = ${last} ${seconds(performance.now() - startedAtMs)} s after the change (expected ${expected})${cancelled() ? '; cancelled' : ''}`);
    }),
  );
}

async function pgCtl(environment: HaEnvironment, target: Target, args: readonly string[]): Promise<void> {
  const result = await exec(join(environment.binDir, 'pg_ctl'), [...args, '-D', target.pgdata], { timeoutMs: pgCtlMsMax, user: target.owner, env: { LC_ALL: 'C' } });
  if (result.code !== 0) throw new Error(`pg_ctl ${args.join(' ')} on ${target.id} exited ${result.code}: ${`${result.stdout}${result.stderr}`.trim().slice(-1_000)}`);
}

// ---------------------------------------------------------------------------------------------
// What the writer and the prober saw.

interface Probes {
  readonly writer: Writer;
  readonly connector: Connector;
}

function loadDuring(probes: Probes, fromMs: number, toMs: number): StepLoad {
  const errors = probes.writer.log.errors.filter((error) => error.atMs >= fromMs && error.atMs <= toMs);
  const overlaps = (attempt: ConnectAttempt) => attempt.endedAtMs >= fromMs && attempt.startedAtMs <= toMs;
  const attempts = probes.connector.attempts.filter(overlaps);
  const failed = attempts.filter((attempt) => attempt.error !== null);
  return {
    writerGapMs: longestGapMs(probes.writer.log, fromMs, toMs),
    writerErrors: errors.length,
    writerErrorMessages: [...new Set(errors.map((error) => error.message))].slice(0, errorsShownMax),
    connects: attempts.length,
    failedConnects: failed.length,
    connectErrors: [...new Set(failed.map((attempt) => attempt.error as string))].slice(0, errorsShownMax),
    connectPauseMs: Math.max(0, ...attempts.map((attempt) => attempt.endedAtMs - attempt.startedAtMs)),
  };
}

/** The cluster's events (its instances' and machines' too) from `sinceWallMs` on, `+s entity label (code)`. */
function eventsSince(cluster: ClusterView, sinceWallMs: number, entity?: string): string[] {
  return cluster.events
    .filter((event) => Date.parse(event.at) >= sinceWallMs && (entity === undefined || event.entity === entity))
    .sort((a, b) => Date.parse(a.at) - Date.parse(b.at))
    .slice(0, eventsShownMax)
    .map((event) => `+${seconds(Date.parse(event.at) - sinceWallMs)} ${event.entity} ${event.to}${event.code === null ? '' : ` (${event.code})`}`);
}

// ---------------------------------------------------------------------------------------------
// The floors.

/** ALTER SYSTEM on every instance, then pg_ctl reload of all at once; reset the same way afterwards. */
async function floorReloadStep(cellar: BenchCellar, environment: HaEnvironment, probes: Probes, value: string): Promise<ReloadFloor> {
  const targets = await targetsOf(cellar, await waitFullySettled(cellar, 'before the floor reload'));
  await sleep(quietBeforeStepMs);
  const clients: pg.Client[] = [];
  try {
    for (const target of targets) clients.push(await connectTo(target));
    const before = await Promise.all(clients.map((client) => showOn(client, reloadSetting)));
    if (before.includes(value)) throw new Error(`an instance already shows ${reloadSetting} = ${value}: ${before.join(', ')}`);
    // ALTER SYSTEM writes postgresql.auto.conf (read after Cellar's files, so it wins) and takes effect only at the reload.
    for (const client of clients) await client.query(`alter system set ${reloadSetting} = '${value}'`);
    const startedAtMs = performance.now();
    const reloads = Promise.all(targets.map((target) => pgCtl(environment, target, ['reload']).then(() => performance.now() - startedAtMs)));
    let failed = false;
    const live = waitLive(clients, reloadSetting, value, startedAtMs, () => failed);
    // Settled either way before it is awaited: a failed pg_ctl must not leave it unhandled.
    live.catch(() => {});
    const pgCtlMs = await reloads.catch((error: unknown) => {
      failed = true;
      throw error;
    });
    const liveMs = await live;
    const endedAtMs = startedAtMs + Math.max(...liveMs);
    await sleep(afterStepMs);
    const load = loadDuring(probes, startedAtMs, endedAtMs + afterStepMs);
    for (const client of clients) await client.query(`alter system reset ${reloadSetting}`);
    const resetAtMs = performance.now();
    await Promise.all(targets.map((target) => pgCtl(environment, target, ['reload'])));
    await Promise.all(clients.map((client, position) => waitLive([client], reloadSetting, before[position] as string, resetAtMs, () => false)));
    return { liveMs, lastLiveMs: Math.max(...liveMs), pgCtlMs, load };
  } finally {
    for (const client of clients) await client.end().catch(() => {});
  }
}

/**
 * pg_ctl restart -m fast of one replica (alternating by round); its log goes to a file of the
 * bench's, as pg_ctl needs one the server's user can write. Cellar supervises that replica: when
 * its liveness check (every 200 ms) falls in the gap between the old postmaster's exit and pg_ctl's
 * start, Cellar starts the server itself and pg_ctl's start fails on the lock file. Such an
 * attempt measures Cellar, not the floor: it is counted and the restart tried again.
 */
async function floorRestartStep(cellar: BenchCellar, environment: HaEnvironment, probes: Probes, scratch: string, index: number): Promise<RestartFloor> {
  const interfered: string[] = [];
  for (let attempt = 1; attempt <= restartAttemptsMax; attempt += 1) {
    const outcome = await restartOnce(cellar, environment, probes, scratch, index, attempt);
    if (typeof outcome !== 'string') return { ...outcome, interferedAttempts: interfered.length };
    interfered.push(outcome);
  }
  throw new Error(`every raw restart (${restartAttemptsMax}) lost its start to Cellar's: ${interfered.join(' | ')}`);
}

async function restartOnce(cellar: BenchCellar, environment: HaEnvironment, probes: Probes, scratch: string, index: number, attempt: number): Promise<Omit<RestartFloor, 'interferedAttempts'> | string> {
  const cluster = await waitFullySettled(cellar, 'before the floor restart');
  const replicas = (await targetsOf(cellar, cluster)).filter((target) => target.role === 'replica');
  const target = replicas[index % replicas.length];
  if (target === undefined) throw new Error(`cluster ${clusterName} has no replica`);
  const logFile = join(scratch, `restart-${index}-${attempt}-${target.id}.log`);
  await (await open(logFile, 'a', 0o644)).close();
  if (target.owner.switchUser) await chown(logFile, target.owner.uid, target.owner.gid);
  await sleep(quietBeforeStepMs);
  const startedWallMs = Date.now();
  const startedAtMs = performance.now();
  const restart = pgCtl(environment, target, ['restart', '-m', 'fast', '-w', '-t', String(pgCtlWaitSeconds), '-l', logFile]).then(() => performance.now() - startedAtMs);
  let pgCtlError: unknown;
  restart.catch((error: unknown) => (pgCtlError = error));
  let acceptingMs: number;
  let pgCtlMs: number;
  try {
    acceptingMs = await waitAccepting(target, startedWallMs, startedAtMs, () => pgCtlError);
    pgCtlMs = await restart;
  } catch (error) {
    if (pgCtlError === undefined) throw error;
    const after = await waitFullySettled(cellar, 'after a raw restart Cellar took over');
    const events = eventsSince(after, startedWallMs, target.id);
    // Only a start that Cellar's own supervision made is retried; any other failure of pg_ctl is the bench's problem.
    if (!events.some((event) => event.includes('(instance_lost)'))) throw error;
    return `attempt ${attempt} on ${target.id}: ${events.join('; ')}`;
  }
  const streamingMs = await waitFor(
    `${target.id} to stream again`,
    async () => {
      const rows = await withTarget(target, async (client) => (await client.query<{ status: string }>('select status from pg_stat_wal_receiver')).rows);
      return rows[0]?.status === 'streaming' ? performance.now() - startedAtMs : undefined;
    },
    streamingWaitMsMax,
    restartPollMs,
  );
  await sleep(afterStepMs);
  const load = loadDuring(probes, startedAtMs, startedAtMs + streamingMs + afterStepMs);
  const after = await waitFullySettled(cellar, 'after the floor restart');
  return { instanceId: target.id, acceptingMs, streamingMs, pgCtlMs, cellarEvents: eventsSince(after, startedWallMs, target.id), load };
}

/**
 * Until a new connection is served by a postmaster started after the restart began (the old one
 * still answers until its shutdown); ms from startedAtMs. A failed pg_ctl ends the wait at once.
 */
async function waitAccepting(target: Target, startedWallMs: number, startedAtMs: number, pgCtlError: () => unknown): Promise<number> {
  let lastError: unknown;
  while (performance.now() - startedAtMs < restartAcceptWaitMsMax) {
    if (pgCtlError() !== undefined) throw new Error(`pg_ctl restart of ${target.id} failed: ${String(pgCtlError())}`);
    try {
      const started = await withTarget(target, async (client) => (await client.query<{ started: Date }>('select pg_postmaster_start_time() as started')).rows[0]?.started);
      if (started !== undefined && started.getTime() >= startedWallMs) return performance.now() - startedAtMs;
    } catch (error) {
      lastError = error; // Refused while it is down: the point of the wait.
    }
    await sleep(restartPollMs);
  }
  throw new Error(`${target.id} did not accept again within ${restartAcceptWaitMsMax} ms of pg_ctl restart${lastError === undefined ? '' : `: ${String(lastError)}`}`);
}

/** Cellar's own switchover: the write pause a planned primary change costs here. */
async function switchoverStep(cellar: BenchCellar, probes: Probes): Promise<SwitchoverFloor> {
  const before = await waitFullySettled(cellar, 'before the switchover');
  const oldPrimaryId = primaryOf(before).id;
  await sleep(quietBeforeStepMs);
  const startedAtMs = performance.now();
  const run = await cellar.cli(['clusters', 'switchover', clusterName, '--wait', '--json', '--timeout', String(switchoverWaitSecondsMax)], switchoverCliMsMax);
  const endedAtMs = performance.now();
  if (run.code !== 0) throw new Error(`cellar clusters switchover exited ${run.code}: ${run.stdout}${run.stderr.trim().slice(-2_000)}`);
  await sleep(afterStepMs);
  const load = loadDuring(probes, startedAtMs, endedAtMs + afterStepMs);
  const after = await waitFullySettled(cellar, 'after the switchover');
  const newPrimaryId = primaryOf(after).id;
  if (newPrimaryId === oldPrimaryId) throw new Error(`the switchover left ${oldPrimaryId} primary`);
  return { oldPrimaryId, newPrimaryId, cliMs: endedAtMs - startedAtMs, load };
}

// ---------------------------------------------------------------------------------------------
// Cellar's change of settings (docs/CONFIG.md): the request, and its change machine.

interface ChangeAccepted {
  readonly revision: number | null;
  readonly changeId: string;
}

/**
 * Before a step's clock starts: whether this Cellar has the config API (GET /v1/clusters/:name/config;
 * a 404 about the URL itself, field `url`, is the API's "no route" and the string says so), and
 * then until the cluster's Postgres version has its parameter catalogue, without which every
 * change is refused (409 CELLAR_E_CATALOGUE_MISSING): the cluster machine reads it once the first
 * cluster of a version runs.
 */
async function cellarConfigMissing(cellar: BenchCellar, cluster: ClusterView): Promise<string | null> {
  const path = `/v1/clusters/${encodeURIComponent(clusterName)}/config`;
  const response = await cellar.api<{ error?: { field?: string; message?: string } }>('GET', path, undefined, apiRequestMsMax);
  if (response.status === 404 && response.body?.error?.field === 'url') return `GET ${path} answered 404 (${response.body.error.message ?? 'no message'}): no config API in this build`;
  if (response.status !== 200) throw new Error(`GET ${path} answered ${response.status}: ${JSON.stringify(response.body).slice(0, 1_000)}`);
  await waitFor(
    `the parameter catalogue of Postgres ${cluster.version}`,
    async () => ((await cellar.storeQuery('select 1 from setting_catalogues where pg_version = $1', [cluster.version])).length > 0 ? true : undefined),
    catalogueWaitMsMax,
    settlePollMs,
  );
  return null;
}

/**
 * POST /v1/clusters/:name/config. A 404 about the URL itself (the API's "no route", field `url`)
 * means this Cellar has no config API yet, and the string says so; any other refusal is an error.
 */
async function requestChange(cellar: BenchCellar, settings: Readonly<Record<string, string>>): Promise<ChangeAccepted | string> {
  const path = `/v1/clusters/${encodeURIComponent(clusterName)}/config`;
  const response = await cellar.api<{ revision?: number | null; changeId?: string | null; error?: { code?: string; field?: string; message?: string } }>('POST', path, { settings, reason: 'bench/config' }, apiRequestMsMax);
  if (response.status === 404 && response.body?.error?.field === 'url') return `POST ${path} answered 404 (${response.body.error.message ?? 'no message'}): no config API in this build`;
  if (response.status !== 201 || typeof response.body?.changeId !== 'string') throw new Error(`POST ${path} answered ${response.status}: ${JSON.stringify(response.body).slice(0, 1_000)}`);
  return { revision: response.body.revision ?? null, changeId: response.body.changeId };
}

/** Polls the change machine until done, by the store's own rule (changeState); performance.now() when seen done. */
async function waitChangeDone(cellar: BenchCellar, changeId: string): Promise<number> {
  const pool = await cellar.storePool();
  let last = 'no machine row yet';
  return waitFor(
    `change ${changeId} done`,
    async () => {
      const state = await changeState(pool, changeId as ChangeId);
      if (state === null) return undefined;
      last = `${state.label}${state.error === null ? '' : `: ${state.error}`}`;
      if (state.failed) throw new Error(`change ${changeId} failed: ${state.error ?? 'no reason recorded'}`);
      return state.done ? performance.now() : undefined;
    },
    changeWaitMsMax,
    changePollMs,
  ).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}; last seen: ${last}`);
  });
}

/** Request to every instance showing the value (SHOW polled from the moment the request is sent), and to the change machine done. */
async function cellarReloadStep(cellar: BenchCellar, probes: Probes, value: string): Promise<CellarReload | string> {
  const cluster = await waitFullySettled(cellar, 'before the Cellar reload');
  const missing = await cellarConfigMissing(cellar, cluster);
  if (missing !== null) return missing;
  const targets = await targetsOf(cellar, cluster);
  await sleep(quietBeforeStepMs);
  const clients: pg.Client[] = [];
  try {
    for (const target of targets) clients.push(await connectTo(target));
    const startedWallMs = Date.now();
    const startedAtMs = performance.now();
    let stopped = false;
    const live = waitLive(clients, reloadSetting, value, startedAtMs, () => stopped);
    // Settled either way before it is awaited: a failed request must not leave it unhandled.
    live.catch(() => {});
    let accepted: ChangeAccepted | string;
    try {
      accepted = await requestChange(cellar, { [reloadSetting]: value });
    } catch (error) {
      stopped = true;
      throw error;
    }
    if (typeof accepted === 'string') {
      stopped = true;
      return accepted;
    }
    const liveMs = await live;
    const doneAtMs = await waitChangeDone(cellar, accepted.changeId);
    await sleep(afterStepMs);
    const load = loadDuring(probes, startedAtMs, Math.max(doneAtMs, startedAtMs + Math.max(...liveMs)) + afterStepMs);
    const after = await waitFullySettled(cellar, 'after the Cellar reload');
    return { revision: accepted.revision, liveMs, lastLiveMs: Math.max(...liveMs), doneMs: doneAtMs - startedAtMs, load, events: eventsSince(after, startedWallMs) };
  } finally {
    for (const client of clients) await client.end().catch(() => {});
  }
}

/** Request to the change machine done: the whole rolling restart, then every instance checked for the value. */
async function cellarRestartStep(cellar: BenchCellar, probes: Probes, value: string): Promise<CellarRestart> {
  await waitFullySettled(cellar, 'before the Cellar restart change');
  await sleep(quietBeforeStepMs);
  const startedWallMs = Date.now();
  const startedAtMs = performance.now();
  const accepted = await requestChange(cellar, { [restartSetting]: value });
  if (typeof accepted === 'string') throw new Error(`the config API answered a reload change but not a restart change: ${accepted}`);
  const doneAtMs = await waitChangeDone(cellar, accepted.changeId);
  await sleep(afterStepMs);
  const load = loadDuring(probes, startedAtMs, doneAtMs + afterStepMs);
  const after = await waitFullySettled(cellar, 'after the Cellar restart change');
  const shown = await Promise.all((await targetsOf(cellar, after)).map((target) => withTarget(target, (client) => showOn(client, restartSetting))));
  return { revision: accepted.revision, durationMs: doneAtMs - startedAtMs, liveOn: shown.filter((shownValue) => shownValue === value).length, load, events: eventsSince(after, startedWallMs) };
}

// ---------------------------------------------------------------------------------------------
// Output.

function loadText(load: StepLoad): string {
  const writer = `write pause ${seconds(load.writerGapMs)} s, writer errors ${load.writerErrors}${load.writerErrorMessages.length > 0 ? ` (${load.writerErrorMessages.join(' | ')})` : ''}`;
  const connects = `new connections ${load.connects}, failed ${load.failedConnects}${load.connectErrors.length > 0 ? ` (${load.connectErrors.join(' | ')})` : ''}, longest ${seconds(load.connectPauseMs)} s`;
  return `${writer}; ${connects}`;
}

function printRound(round: Round, report: Report): void {
  report(`\nround ${round.index}:`);
  const reload = round.floorReload;
  report(`  floor reload: live on all ${clusterMembers} after ${seconds(reload.lastLiveMs)} s (each ${reload.liveMs.map((ms) => seconds(ms)).join(', ')}; pg_ctl exited after ${reload.pgCtlMs.map((ms) => seconds(ms)).join(', ')}); ${loadText(reload.load)}`);
  if (round.cellarReload !== null) {
    const cellarReload = round.cellarReload;
    report(`  cellar reload (revision ${cellarReload.revision ?? '-'}): live on all after ${seconds(cellarReload.lastLiveMs)} s (each ${cellarReload.liveMs.map((ms) => seconds(ms)).join(', ')}); change done after ${seconds(cellarReload.doneMs)} s; ${loadText(cellarReload.load)}`);
    report(`    events: ${cellarReload.events.join('; ')}`);
  }
  const restart = round.floorRestart;
  report(`  floor restart of ${restart.instanceId}: accepting after ${seconds(restart.acceptingMs)} s, streaming after ${seconds(restart.streamingMs)} s (pg_ctl -w returned after ${seconds(restart.pgCtlMs)} s); ${loadText(restart.load)}`);
  if (restart.cellarEvents.length > 0) report(`    Cellar saw it: ${restart.cellarEvents.join('; ')}`);
  if (restart.interferedAttempts > 0) report(`    ${restart.interferedAttempts} attempt(s) before this one lost pg_ctl's start to Cellar's own and were retried`);
  const switchover = round.switchover;
  report(`  switchover ${switchover.oldPrimaryId} -> ${switchover.newPrimaryId}: CLI ${seconds(switchover.cliMs)} s; ${loadText(switchover.load)}`);
  if (round.cellarRestart !== null) {
    const cellarRestart = round.cellarRestart;
    report(`  cellar rolling restart (revision ${cellarRestart.revision ?? '-'}): done after ${seconds(cellarRestart.durationMs)} s; new value on ${cellarRestart.liveOn} of ${clusterMembers}; ${loadText(cellarRestart.load)}`);
    report(`    events: ${cellarRestart.events.join('; ')}`);
  }
  report(`  writer: lost ${round.writerLost} of ${round.writerAcknowledged} acknowledged`);
}

function valuesOf(rounds: readonly Round[], pick: (round: Round) => number | null): number[] {
  return rounds.map(pick).filter((value): value is number => value !== null);
}

function sumOf(rounds: readonly Round[], pick: (round: Round) => number | null): number {
  return valuesOf(rounds, pick).reduce((sum, value) => sum + value, 0);
}

function medianOrNull(values: readonly number[]): number | null {
  return values.length === 0 ? null : median(values);
}

type Verdict = 'PASS' | 'FAIL' | 'NOT MEASURED';

interface Goals {
  readonly reloadLastLiveMaxMs: number | null;
  readonly restartWritePauseMedianMs: number | null;
  readonly switchoverWritePauseMedianMs: number | null;
  readonly restartFailedConnects: number;
}

function goalsOf(rounds: readonly Round[]): Goals {
  const reloads = valuesOf(rounds, (round) => round.cellarReload?.lastLiveMs ?? null);
  return {
    reloadLastLiveMaxMs: reloads.length === 0 ? null : Math.max(...reloads),
    restartWritePauseMedianMs: medianOrNull(valuesOf(rounds, (round) => round.cellarRestart?.load.writerGapMs ?? null)),
    switchoverWritePauseMedianMs: medianOrNull(valuesOf(rounds, (round) => round.switchover.load.writerGapMs)),
    restartFailedConnects: sumOf(rounds, (round) => round.cellarRestart?.load.failedConnects ?? null),
  };
}

function verdict(outcome: Outcome): Verdict {
  if (outcome.failure !== null || outcome.rounds.length === 0) return 'FAIL';
  const goals = goalsOf(outcome.rounds);
  if (goals.reloadLastLiveMaxMs === null || goals.restartWritePauseMedianMs === null || goals.switchoverWritePauseMedianMs === null) return 'NOT MEASURED';
  const met = goals.reloadLastLiveMaxMs <= goalReloadLiveMsMax && goals.restartWritePauseMedianMs <= goals.switchoverWritePauseMedianMs && goals.restartFailedConnects === 0;
  return met ? 'PASS' : 'FAIL';
}

function printSummary(outcome: Outcome, report: Report): void {
  const { rounds } = outcome;
  report(`\n== summary (${rounds.length} round(s), seconds)`);
  if (rounds.length === 0) {
    report(`FAIL: no round completed (${outcome.failure ?? 'no rounds'})`);
    return;
  }
  const line = (label: string, pick: (round: Round) => number | null, kind: 'seconds' | 'count'): void => {
    const values = rounds.map(pick);
    const present = values.filter((value): value is number => value !== null);
    const cells = values.map((value) => (value === null ? '-' : kind === 'seconds' ? seconds(value) : String(value)).padStart(6)).join('  ');
    const tail = present.length === 0 ? 'not measured' : kind === 'seconds' ? `median ${seconds(median(present))}  max ${seconds(Math.max(...present))}` : `total ${present.reduce((sum, value) => sum + value, 0)}`;
    report(`${label.padEnd(44)}${cells}   ${tail}`);
  };
  line('floor: raw pg_ctl reload, last instance live', (round) => round.floorReload.lastLiveMs, 'seconds');
  line('cellar reload: last instance live', (round) => round.cellarReload?.lastLiveMs ?? null, 'seconds');
  line('cellar reload: change done', (round) => round.cellarReload?.doneMs ?? null, 'seconds');
  line('cellar reload: write pause', (round) => round.cellarReload?.load.writerGapMs ?? null, 'seconds');
  line('floor: raw restart of a replica, accepting', (round) => round.floorRestart.acceptingMs, 'seconds');
  line('floor: raw restart of a replica, streaming', (round) => round.floorRestart.streamingMs, 'seconds');
  line('floor: restart seen by Cellar (rounds)', (round) => (round.floorRestart.cellarEvents.some((event) => event.includes('(instance_lost)')) ? 1 : 0), 'count');
  line('floor: restarts Cellar took over, retried', (round) => round.floorRestart.interferedAttempts, 'count');
  line('floor: switchover, write pause', (round) => round.switchover.load.writerGapMs, 'seconds');
  line('floor: switchover, longest new connection', (round) => round.switchover.load.connectPauseMs, 'seconds');
  line('floor: switchover, failed new connections', (round) => round.switchover.load.failedConnects, 'count');
  line('floor: switchover, writer errors', (round) => round.switchover.load.writerErrors, 'count');
  line('floor: switchover, CLI --wait', (round) => round.switchover.cliMs, 'seconds');
  line('cellar rolling restart: duration', (round) => round.cellarRestart?.durationMs ?? null, 'seconds');
  line('cellar rolling restart: write pause', (round) => round.cellarRestart?.load.writerGapMs ?? null, 'seconds');
  line('cellar rolling restart: longest new conn.', (round) => round.cellarRestart?.load.connectPauseMs ?? null, 'seconds');
  line('cellar rolling restart: failed new conn.', (round) => round.cellarRestart?.load.failedConnects ?? null, 'count');
  line('cellar rolling restart: writer errors', (round) => round.cellarRestart?.load.writerErrors ?? null, 'count');
  line('writer: lost acknowledged', (round) => round.writerLost, 'count');
  if (outcome.cellarApiMissing !== null) report(`cellar steps not run: ${outcome.cellarApiMissing}`);
  const goals = goalsOf(rounds);
  const shown = (ms: number | null) => (ms === null ? 'not measured' : seconds(ms));
  const why = outcome.failure === null ? '' : `; ${outcome.failure}`;
  report(
    `${verdict(outcome)}: goals reload live on every instance <= ${seconds(goalReloadLiveMsMax, 1)} s in every round (got max ${shown(goals.reloadLastLiveMaxMs)}); ` +
      `rolling restart write pause <= the switchover's (median ${shown(goals.restartWritePauseMedianMs)} against ${shown(goals.switchoverWritePauseMedianMs)}) ` +
      `with 0 failed new connections (got ${goals.restartWritePauseMedianMs === null ? 'not measured' : goals.restartFailedConnects})${why}`,
  );
}

/** Milliseconds, rounded: sub-ms digits are below what the polls resolve. */
function roundedMs(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value, (_key, field: unknown) => (typeof field === 'number' && !Number.isInteger(field) ? Math.round(field) : field))) as unknown;
}

function summaryJson(outcome: Outcome, environment: HaEnvironment, loadBefore: string, loadAfter: string, problems: readonly string[]): unknown {
  const goals = roundedMs(goalsOf(outcome.rounds)) as Goals;
  return {
    benchmark: 'bench/config',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion, node: process.version },
    cellarEnv: haCellarEnvironment,
    loadBefore,
    loadAfter,
    goal: { reloadLiveMsMax: goalReloadLiveMsMax, restartWritePause: "no longer than the switchover's, same run", failedNewConnectionsMax: 0 },
    ...goals,
    verdict: verdict(outcome),
    failure: outcome.failure,
    cellarApiMissing: outcome.cellarApiMissing,
    rounds: roundedMs(outcome.rounds),
    problems,
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/config failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
