import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import type { ClusterView } from '../src/api/view.js';
import {
  type ConnectAttempt,
  Connector,
  type FloorPrimary,
  type HaEnvironment,
  type Report,
  type TimelineEntry,
  type WriteLog,
  Writer,
  clusterTimeline,
  createCluster,
  createTable,
  discoverEnvironment,
  firstAfterMs,
  haCellarEnvironment,
  longestGapMs,
  lostIds,
  measurePromote,
  parseRounds,
  percentile,
  primaryOf,
  startFloorPrimary,
  stopFloorPrimary,
  throwIfInterrupted,
  timelineText,
  waitSettled,
  warningsSince,
  watchInterrupts,
} from './ha.js';
import { BenchCellar, type ExecResult, exec, libpqEnvironment, median, seconds, sleep, uptime } from './lib.js';

/**
 * bench/switchover: `cellar clusters switchover --wait` under load through the proxy (a writer on
 * a persistent connection, pgbench -c 4, and a NEW connection + `select 1` every ~10 ms), round
 * after round. Measures the pause new connections see (the longest connect-to-result latency while
 * the CLI runs), failed new connections, and the writer's failed transactions; against the
 * promote floor measured in the same run. Goal: pause <= 1 s with zero failed new connections.
 *
 *   node dist/bench/switchover.js [--rounds N] [--json]
 */

const goalPauseMsMax = 1_000;
const roundsDefault = 5;
const roundsMax = 50;
const clusterName = 'ha';
const writerPauseMs = 2;
/** Pause between new connections: one at a time, so a held connect delays the next. */
const connectIntervalMs = 10;
const loadBeforeMs = 1_000;
const loadAfterMs = 1_000;
const switchoverWaitSecondsMax = 60;
const switchoverCliMsMax = (switchoverWaitSecondsMax + 30) * 1000;
/** pgbench runs this long from the round's start: load before, the switchover (~1-3 s), after. */
const pgbenchSeconds = 8;
const pgbenchClients = 4;
const pgbenchGraceMs = 60_000;
const pgbenchInitMsMax = 120_000;
const settleWaitMsMax = 120_000;
const warningLinesMax = 6;
const errorsShownMax = 3;
const summaryLabels = ['pause', 'catchUp', 'stopPrimary', 'promote', 'repoint', 'route', 'rejoin', 'running', 'sync'] as const;

interface PgbenchResult {
  readonly code: number;
  readonly transactions: number;
  readonly failed: number;
  readonly abortedClients: number;
  readonly firstAbort: string | null;
}

interface Round {
  readonly index: number;
  readonly floorMs: number;
  readonly oldPrimaryId: string;
  readonly newPrimaryId: string;
  readonly cliMs: number;
  /** The longest new-connection latency among attempts that overlapped the CLI's run. */
  readonly pauseMs: number;
  readonly connectsDuring: number;
  readonly connectsOutside: number;
  readonly p50OutsideMs: number;
  readonly failedConnects: number;
  readonly connectErrors: readonly string[];
  readonly writerFailed: number;
  readonly writerErrors: readonly string[];
  readonly writerGapMs: number;
  readonly writerAcknowledged: number;
  readonly writerLost: number;
  readonly pgbench: PgbenchResult;
  /** From the `pause` event to the `rejoin` event: how long the route was paused, by the store's clock. */
  readonly routePausedMs: number | null;
  readonly timeline: readonly TimelineEntry[];
  readonly warnings: readonly string[];
}

interface Outcome {
  readonly rounds: readonly Round[];
  readonly failure: string | null;
}

async function main(): Promise<void> {
  watchInterrupts();
  const options = parseRounds(roundsDefault, roundsMax);
  const report: Report = (line) => (options.json ? process.stderr : process.stdout).write(`${line}\n`);
  const environment = await discoverEnvironment();
  const loadBefore = await uptime();
  report(`bench/switchover: ${options.rounds} round(s); ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  report(`cellar env: CELLAR_FAILOVERS_MAX=${haCellarEnvironment['CELLAR_FAILOVERS_MAX'] ?? '?'} (the circuit breaker would stop automatic failover after 5 in its window)`);
  report(`each round: through the proxy a writer (1 persistent connection, insert every ~${writerPauseMs} ms; its errors are failed transactions), pgbench -c ${pgbenchClients} -n -T ${pgbenchSeconds}, and a new connection + select 1 every ~${connectIntervalMs} ms; after ${seconds(loadBeforeMs, 1)} s \`cellar clusters switchover --wait\`; ${seconds(loadAfterMs, 1)} s more`);
  report('pause = the longest new-connection latency (connect to select 1 result) among attempts overlapping the CLI run; failed new connections counted over the whole round');
  report('floor: a raw streaming standby (initdb + pg_basebackup, no Cellar) promoted with pg_promote(false) + pg_is_in_recovery() every 5 ms; one fresh standby per round');
  const floor = await startFloorPrimary(environment);
  const cellar = await BenchCellar.create(haCellarEnvironment);
  const problems: string[] = [];
  let outcome: Outcome = { rounds: [], failure: null };
  try {
    const upStarted = performance.now();
    await cellar.start();
    report(`cellar up: ${seconds(performance.now() - upStarted, 1)} s`);
    const createStarted = performance.now();
    const cluster = await createCluster(cellar, clusterName);
    report(`cluster ${clusterName}: created in ${seconds(performance.now() - createStarted, 1)} s; durability ${cluster.durability}; ${cluster.instances.length} instances`);
    const uri = cluster.uri as string;
    const pgbench = join(environment.binDir, 'pgbench');
    const init = await exec(pgbench, ['-i', '-s', '1', '-q', uri], { timeoutMs: pgbenchInitMsMax, env: { ...libpqEnvironment } });
    if (init.code !== 0) throw new Error(`pgbench -i through the proxy exited ${init.code}: ${init.stderr.trim().slice(-2_000)}`);
    report('pgbench -i -s 1 through the proxy: done');
    outcome = await runRounds(cellar, uri, pgbench, floor, options.rounds, report);
  } finally {
    problems.push(...(await cellar.destroy()));
    await stopFloorPrimary(floor);
  }
  const loadAfter = await uptime();
  report(`load after:  ${loadAfter}`);
  printSummary(outcome, report);
  for (const problem of problems) report(`cleanup: ${problem}`);
  if (options.json) process.stdout.write(`${JSON.stringify(summaryJson(outcome, environment, loadBefore, loadAfter, problems), null, 2)}\n`);
  if (!passed(outcome)) process.exitCode = 1;
}

/** A round that fails stops the run (the cluster's state is then unknown); the rounds before it still count. */
async function runRounds(cellar: BenchCellar, uri: string, pgbench: string, floor: FloorPrimary, rounds: number, report: Report): Promise<Outcome> {
  const done: Round[] = [];
  for (let index = 1; index <= rounds; index += 1) {
    try {
      throwIfInterrupted();
      const round = await runRound(cellar, uri, pgbench, floor, index);
      done.push(round);
      printRound(round, report);
    } catch (error) {
      const failure = `round ${index} failed: ${error instanceof Error ? error.message : String(error)}`;
      report(failure);
      report(`cellar output tail:\n${cellar.logTail()}`);
      return { rounds: done, failure };
    }
  }
  return { rounds: done, failure: null };
}

interface Load {
  readonly writer: Writer;
  readonly connector: Connector;
  readonly pgbench: Promise<ExecResult>;
}

function startLoad(uri: string, pgbench: string, table: string): Load {
  const args = ['-c', String(pgbenchClients), '-j', '2', '-n', '-T', String(pgbenchSeconds), uri];
  return {
    writer: Writer.start(uri, table, writerPauseMs),
    connector: new Connector(uri, connectIntervalMs),
    pgbench: exec(pgbench, args, { timeoutMs: pgbenchSeconds * 1000 + pgbenchGraceMs, env: { ...libpqEnvironment } }),
  };
}

async function stopLoad(load: Load): Promise<{ log: WriteLog; attempts: ConnectAttempt[]; pgbench: ExecResult }> {
  const log = await load.writer.stop();
  const attempts = await load.connector.stop();
  return { log, attempts, pgbench: await load.pgbench };
}

interface Switched {
  readonly spawnWallMs: number;
  readonly spawnedAtMs: number;
  readonly exitedAtMs: number;
}

async function runRound(cellar: BenchCellar, uri: string, pgbench: string, floor: FloorPrimary, index: number): Promise<Round> {
  const floorMs = await measurePromote(floor, index);
  const before = await waitSettled(cellar, clusterName, null, settleWaitMsMax);
  const oldPrimaryId = primaryOf(before).id;
  const table = `switchover_round_${index}`;
  await createTable(uri, table);
  const load = startLoad(uri, pgbench, table);
  let switched: Switched;
  let stopped: Awaited<ReturnType<typeof stopLoad>>;
  try {
    await sleep(loadBeforeMs);
    switched = await switchover(cellar);
    await sleep(loadAfterMs);
  } finally {
    stopped = await stopLoad(load);
  }
  const settled = await waitSettled(cellar, clusterName, oldPrimaryId, settleWaitMsMax);
  const lost = await lostIds(uri, table, stopped.log);
  return roundOf(index, floorMs, oldPrimaryId, settled, switched, stopped, lost.length, cellar);
}

async function switchover(cellar: BenchCellar): Promise<Switched> {
  const spawnWallMs = Date.now();
  const spawnedAtMs = performance.now();
  const run = await cellar.cli(['clusters', 'switchover', clusterName, '--wait', '--json', '--timeout', String(switchoverWaitSecondsMax)], switchoverCliMsMax);
  const exitedAtMs = performance.now();
  if (run.code !== 0) throw new Error(`cellar clusters switchover exited ${run.code}: ${run.stdout}${run.stderr.trim().slice(-2_000)}`);
  return { spawnWallMs, spawnedAtMs, exitedAtMs };
}

function roundOf(
  index: number,
  floorMs: number,
  oldPrimaryId: string,
  settled: ClusterView,
  switched: Switched,
  stopped: Awaited<ReturnType<typeof stopLoad>>,
  writerLost: number,
  cellar: BenchCellar,
): Round {
  const { attempts, log } = stopped;
  const overlaps = (attempt: ConnectAttempt) => attempt.endedAtMs >= switched.spawnedAtMs && attempt.startedAtMs <= switched.exitedAtMs;
  const latency = (attempt: ConnectAttempt) => attempt.endedAtMs - attempt.startedAtMs;
  const during = attempts.filter(overlaps);
  const outside = attempts.filter((attempt) => !overlaps(attempt) && attempt.error === null);
  const failed = attempts.filter((attempt) => attempt.error !== null);
  const timeline = clusterTimeline(settled, switched.spawnWallMs);
  const pausedAt = firstAfterMs(timeline, 'pause');
  const resumedAt = firstAfterMs(timeline, 'rejoin');
  return {
    index,
    floorMs,
    oldPrimaryId,
    newPrimaryId: primaryOf(settled).id,
    cliMs: switched.exitedAtMs - switched.spawnedAtMs,
    pauseMs: Math.max(0, ...during.map(latency)),
    connectsDuring: during.length,
    connectsOutside: outside.length,
    p50OutsideMs: percentile(outside.map(latency), 0.5),
    failedConnects: failed.length,
    connectErrors: [...new Set(failed.map((attempt) => attempt.error as string))].slice(0, errorsShownMax),
    writerFailed: log.errors.length,
    writerErrors: [...new Set(log.errors.map((error) => error.message))].slice(0, errorsShownMax),
    writerGapMs: longestGapMs(log, switched.spawnedAtMs, switched.exitedAtMs + loadAfterMs),
    writerAcknowledged: log.acknowledged.length,
    writerLost,
    pgbench: parsePgbench(stopped.pgbench),
    routePausedMs: pausedAt === null || resumedAt === null ? null : resumedAt - pausedAt,
    timeline,
    warnings: warningsSince(cellar, switched.spawnWallMs, warningLinesMax),
  };
}

/**
 * pgbench exits 2 when a client aborted (its connection was cut: pgbench does not reconnect); that
 * is a result here, not an error. Its lines read `client N aborted …` or `client N script S aborted …`.
 */
function parsePgbench(result: ExecResult): PgbenchResult {
  const transactions = Number(/^number of transactions actually processed: (\d+)/m.exec(result.stdout)?.[1] ?? 0);
  const failed = Number(/^number of failed transactions: (\d+)/m.exec(result.stdout)?.[1] ?? 0);
  const aborts = result.stderr.split('\n').filter((line) => /client \d+ (script \d+ )?aborted/.test(line));
  return { code: result.code, transactions, failed, abortedClients: aborts.length, firstAbort: aborts[0]?.trim() ?? (result.code === 0 ? null : result.stderr.trim().slice(-300)) };
}

// ---------------------------------------------------------------------------------------------
// Output.

function printRound(round: Round, report: Report): void {
  report(`\nround ${round.index}: floor promote ${seconds(round.floorMs)} s; ${round.oldPrimaryId} -> ${round.newPrimaryId}; CLI ${seconds(round.cliMs)} s`);
  report(`  new connections: pause ${seconds(round.pauseMs)} s (longest of ${round.connectsDuring} overlapping the CLI run); p50 outside ${seconds(round.p50OutsideMs)} s (${round.connectsOutside}); failed ${round.failedConnects}${round.connectErrors.length > 0 ? `: ${round.connectErrors.join(' | ')}` : ''}`);
  report(`  writer: failed transactions ${round.writerFailed}${round.writerErrors.length > 0 ? ` (${round.writerErrors.join(' | ')})` : ''}; longest pause between acks ${seconds(round.writerGapMs)} s; lost ${round.writerLost} of ${round.writerAcknowledged} acknowledged`);
  const bench = round.pgbench;
  report(`  pgbench -c ${pgbenchClients}: ${bench.transactions} transactions, ${bench.failed} failed, ${bench.abortedClients} client(s) aborted (exit ${bench.code})${bench.firstAbort === null ? '' : `: ${bench.firstAbort}`}`);
  report(`  route paused (pause -> rejoin events) ${round.routePausedMs === null ? '-' : seconds(round.routePausedMs)} s; cluster events, s after the CLI spawned: ${timelineText(round.timeline)}`);
  if (round.warnings.length > 0) report(`  cellar warnings: ${round.warnings.join('; ')}`);
}

function medianOf(rounds: readonly Round[], pick: (round: Round) => number | null): number | null {
  const values = rounds.map(pick).filter((value): value is number => value !== null);
  return values.length === 0 ? null : median(values);
}

function sumOf(rounds: readonly Round[], pick: (round: Round) => number): number {
  return rounds.reduce((sum, round) => sum + pick(round), 0);
}

function passed(outcome: Outcome): boolean {
  if (outcome.failure !== null || outcome.rounds.length === 0) return false;
  return (medianOf(outcome.rounds, (round) => round.pauseMs) as number) <= goalPauseMsMax && sumOf(outcome.rounds, (round) => round.failedConnects) === 0;
}

function row(rounds: readonly Round[], pick: (round: Round) => number, format: (value: number) => string): string {
  return rounds.map((round) => format(pick(round)).padStart(6)).join('  ');
}

function printSummary(outcome: Outcome, report: Report): void {
  const { rounds } = outcome;
  report(`\n== summary (${rounds.length} round(s), seconds)`);
  if (rounds.length === 0) {
    report(`FAIL: no round completed (${outcome.failure ?? 'no rounds'})`);
    return;
  }
  const secondsText = (ms: number) => seconds(ms);
  const count = (value: number) => String(value);
  const floorMs = medianOf(rounds, (round) => round.floorMs) as number;
  const pauseMs = medianOf(rounds, (round) => round.pauseMs) as number;
  report(`floor (raw promote)          ${row(rounds, (round) => round.floorMs, secondsText)}   median ${seconds(floorMs)}`);
  report(`new-connection pause         ${row(rounds, (round) => round.pauseMs, secondsText)}   median ${seconds(pauseMs)}`);
  report(`new-connection p50 outside   ${row(rounds, (round) => round.p50OutsideMs, secondsText)}   median ${seconds(medianOf(rounds, (round) => round.p50OutsideMs) as number)}`);
  report(`failed new connections       ${row(rounds, (round) => round.failedConnects, count)}   total ${sumOf(rounds, (round) => round.failedConnects)} of ${sumOf(rounds, (round) => round.connectsDuring + round.connectsOutside)}`);
  report(`writer failed transactions   ${row(rounds, (round) => round.writerFailed, count)}   total ${sumOf(rounds, (round) => round.writerFailed)}`);
  report(`writer longest ack gap       ${row(rounds, (round) => round.writerGapMs, secondsText)}   median ${seconds(medianOf(rounds, (round) => round.writerGapMs) as number)}`);
  report(`writer lost acknowledged     ${row(rounds, (round) => round.writerLost, count)}   total ${sumOf(rounds, (round) => round.writerLost)}`);
  report(`pgbench aborted clients      ${row(rounds, (round) => round.pgbench.abortedClients, count)}   total ${sumOf(rounds, (round) => round.pgbench.abortedClients)} (of ${pgbenchClients} per round)`);
  report(`CLI switchover --wait        ${row(rounds, (round) => round.cliMs, secondsText)}   median ${seconds(medianOf(rounds, (round) => round.cliMs) as number)}`);
  const routePaused = medianOf(rounds, (round) => round.routePausedMs);
  report(`route paused (events)        ${rounds.map((round) => (round.routePausedMs === null ? '-' : seconds(round.routePausedMs)).padStart(6)).join('  ')}   median ${routePaused === null ? '-' : seconds(routePaused)}`);
  const labelMedians = summaryLabels.map((label) => {
    const value = medianOf(rounds, (round) => firstAfterMs(round.timeline, label));
    return `${label} ${value === null ? '-' : seconds(value)}`;
  });
  report(`cluster events, median s after the CLI spawned (store clock, when the step before ended): ${labelMedians.join(', ')}`);
  report(`pause/floor = ${(pauseMs / floorMs).toFixed(1)}x`);
  const failedTotal = sumOf(rounds, (round) => round.failedConnects);
  const verdict = passed(outcome) ? 'PASS' : 'FAIL';
  const why = outcome.failure === null ? '' : `; ${outcome.failure}`;
  report(`${verdict}: goal median pause <= ${seconds(goalPauseMsMax, 1)} s (got ${seconds(pauseMs)}) and 0 failed new connections (got ${failedTotal})${why}`);
}

function summaryJson(outcome: Outcome, environment: HaEnvironment, loadBefore: string, loadAfter: string, problems: readonly string[]): unknown {
  const { rounds } = outcome;
  const roundMs = (ms: number | null) => (ms === null ? null : Math.round(ms));
  return {
    benchmark: 'bench/switchover',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion, node: process.version },
    cellarEnv: haCellarEnvironment,
    loadBefore,
    loadAfter,
    goal: { pauseMsMax: goalPauseMsMax, failedNewConnectionsMax: 0 },
    floorMedianMs: roundMs(medianOf(rounds, (round) => round.floorMs)),
    pauseMedianMs: roundMs(medianOf(rounds, (round) => round.pauseMs)),
    failedNewConnections: sumOf(rounds, (round) => round.failedConnects),
    passed: passed(outcome),
    failure: outcome.failure,
    rounds: rounds.map((round) => ({
      ...round,
      floorMs: Math.round(round.floorMs),
      cliMs: Math.round(round.cliMs),
      pauseMs: Math.round(round.pauseMs),
      p50OutsideMs: Number(round.p50OutsideMs.toFixed(1)),
      writerGapMs: Math.round(round.writerGapMs),
      routePausedMs: roundMs(round.routePausedMs),
      timeline: round.timeline.map((entry) => ({ ...entry, afterMs: Math.round(entry.afterMs) })),
    })),
    problems,
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/switchover failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
