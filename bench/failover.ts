import { availableParallelism } from 'node:os';
import type { ClusterView } from '../src/api/view.js';
import {
  type FloorPrimary,
  type HaEnvironment,
  type Report,
  type TimelineEntry,
  type WriteLog,
  Writer,
  clusterTimeline,
  dataPlaneSince,
  createCluster,
  createTable,
  discoverEnvironment,
  firstAfterMs,
  haCellarEnvironment,
  longestGapMs,
  lostIds,
  measurePromote,
  parseRounds,
  postgresLogExcerpt,
  postmasterPid,
  primaryOf,
  startFloorPrimary,
  stopFloorPrimary,
  throwIfInterrupted,
  timelineText,
  waitSettled,
  warningsSince,
  watchInterrupts,
} from './ha.js';
import { BenchCellar, median, seconds, sleep, uptime, waitFor } from './lib.js';

/**
 * bench/failover: SIGKILL the primary's postmaster under write load through the proxy, round
 * after round, and measure the seconds from the kill to the first acknowledged write that was
 * issued after the writer saw the failure, and how many acknowledged writes were lost. Against
 * the floor measured in the same run: a raw streaming standby promoted alone.
 * Goal: median recovery <= 1 s with zero acknowledged writes lost (durability sync).
 *
 *   node dist/bench/failover.js [--rounds N] [--json]
 */

const goalRecoveryMsMax = 1_000;
const roundsDefault = 5;
const roundsMax = 50;
const clusterName = 'ha';
/** Between inserts: ~2 ms apart plus the commit itself, so recovery is seen to a few ms. */
const writerPauseMs = 2;
/** Acknowledged writes before the kill, and after the recovery, as the issue asks. */
const beforeKillMs = 1_000;
const afterRecoveryMs = 1_000;
const firstWriteWaitMsMax = 30_000;
const recoveryWaitMsMax = 60_000;
const recoveryPollMs = 2;
/** Kill to old primary streaming again: crash recovery, pg_rewind and a restart, with room to spare. */
const settleWaitMsMax = 120_000;
const warningLinesMax = 6;
const lostIdsShownMax = 10;
/** A promote step (promote -> repoint events) slower than this gets the new primary's log lines printed. */
const slowPromoteMs = 1_000;
/** Everything but the statement echoes: the walreceiver's reconnects matter as much as the promote lines. */
const promoteLogPattern = /^(?!.*(STATEMENT|DETAIL|HINT):)./;
const promoteLogLinesMax = 30;
/** Labels whose times (since the kill) the summary gives medians of. */
const summaryLabels = ['fence', 'pick', 'promote', 'repoint', 'route', 'rejoin', 'running', 'sync'] as const;

interface Round {
  readonly index: number;
  readonly floorMs: number;
  readonly oldPrimaryId: string;
  readonly newPrimaryId: string;
  /** Kill to the first acknowledgement of a write issued after the writer's first error. */
  readonly recoveryMs: number;
  /** Kill to the writer's first error. */
  readonly noticedMs: number;
  readonly acknowledged: number;
  readonly lost: readonly number[];
  readonly errors: number;
  readonly errorsAfterRecovery: number;
  readonly firstErrors: readonly string[];
  /** Longest wait between acknowledgements from the recovery to the writer's stop (rejoin included). */
  readonly gapAfterRecoveryMs: number;
  /** Kill to the bench seeing the cluster settled (poll of `clusters show`, 200 ms apart). */
  readonly settledMs: number;
  readonly timeline: readonly TimelineEntry[];
  readonly warnings: readonly string[];
  /** What the data plane logged with a duration after the kill (promote, rewind, restart). */
  readonly dataPlane: readonly string[];
  /** The new primary's postgres.log around a slow promote, else empty. */
  readonly slowPromoteLog: readonly string[];
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
  report(`bench/failover: ${options.rounds} round(s); ${availableParallelism()} cores; ${environment.postgresVersion}; node ${process.version}`);
  report(`load before: ${loadBefore}`);
  report(`cellar env: CELLAR_FAILOVERS_MAX=${haCellarEnvironment['CELLAR_FAILOVERS_MAX'] ?? '?'} (the circuit breaker would stop automatic failover after 5 in its window)`);
  report(`each round: writer (1 connection, insert every ~${writerPauseMs} ms) through the proxy; ${seconds(beforeKillMs, 1)} s of writes; SIGKILL the primary's postmaster; recovery = kill -> first ack of a write issued after the writer's first error; ${seconds(afterRecoveryMs, 1)} s more; wait for the old primary to stream again and sync to return; count acknowledged ids missing`);
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
    if (cluster.durability !== 'sync') throw new Error(`cluster ${clusterName} has durability ${cluster.durability}, expected the default sync`);
    outcome = await runRounds(cellar, cluster, floor, options.rounds, report);
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
async function runRounds(cellar: BenchCellar, cluster: ClusterView, floor: FloorPrimary, rounds: number, report: Report): Promise<Outcome> {
  const uri = cluster.uri as string;
  const done: Round[] = [];
  for (let index = 1; index <= rounds; index += 1) {
    try {
      throwIfInterrupted();
      const round = await runRound(cellar, uri, floor, index);
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

async function runRound(cellar: BenchCellar, uri: string, floor: FloorPrimary, index: number): Promise<Round> {
  const floorMs = await measurePromote(floor, index);
  const before = await waitSettled(cellar, clusterName, null, settleWaitMsMax);
  const oldPrimaryId = primaryOf(before).id;
  const table = `failover_round_${index}`;
  await createTable(uri, table);
  const writer = Writer.start(uri, table, writerPauseMs);
  let log: WriteLog;
  let killedAtMs: number;
  let killWallMs: number;
  let recoveredAtMs: number;
  let settled: ClusterView;
  let settledMs: number;
  try {
    await sleep(beforeKillMs);
    await waitFor('a first acknowledged write', async () => (writer.acknowledgedCount > 0 ? true : undefined), firstWriteWaitMsMax, 10);
    const pid = await postmasterPid(cellar, oldPrimaryId);
    killWallMs = Date.now();
    killedAtMs = performance.now();
    process.kill(pid, 'SIGKILL');
    recoveredAtMs = await waitRecovered(writer, killedAtMs);
    await sleep(afterRecoveryMs);
    settled = await waitSettled(cellar, clusterName, oldPrimaryId, settleWaitMsMax);
    settledMs = performance.now() - killedAtMs;
  } finally {
    log = await writer.stop();
  }
  const lost = await lostIds(uri, table, log);
  const errorsAfterKill = log.errors.filter((error) => error.atMs >= killedAtMs);
  const firstError = errorsAfterKill[0];
  if (firstError === undefined) throw new Error('the writer saw no error after the kill');
  if (errorsAfterKill.length !== log.errors.length) throw new Error(`the writer saw ${log.errors.length - errorsAfterKill.length} error(s) before the kill: ${log.errors[0]?.message ?? ''}`);
  const timeline = clusterTimeline(settled, killWallMs);
  const newPrimaryId = primaryOf(settled).id;
  return {
    index,
    floorMs,
    oldPrimaryId,
    newPrimaryId,
    recoveryMs: recoveredAtMs - killedAtMs,
    noticedMs: firstError.atMs - killedAtMs,
    acknowledged: log.acknowledged.length,
    lost,
    errors: log.errors.length,
    errorsAfterRecovery: log.errors.filter((error) => error.atMs > recoveredAtMs).length,
    firstErrors: [...new Set(log.errors.map((error) => error.message))].slice(0, 3),
    gapAfterRecoveryMs: longestGapMs(log, recoveredAtMs + 1, Number.POSITIVE_INFINITY),
    settledMs,
    timeline,
    warnings: warningsSince(cellar, killWallMs, warningLinesMax),
    dataPlane: dataPlaneSince(cellar, killWallMs),
    slowPromoteLog: promoteStepMs(timeline) > slowPromoteMs ? await postgresLogExcerpt(cellar, newPrimaryId, promoteLogPattern, promoteLogLinesMax) : [],
  };
}

function promoteStepMs(timeline: readonly TimelineEntry[]): number {
  const promoteMs = firstAfterMs(timeline, 'promote');
  const repointMs = firstAfterMs(timeline, 'repoint');
  return promoteMs === null || repointMs === null ? 0 : repointMs - promoteMs;
}

/**
 * A commit in flight at the kill may still be acknowledged (an orphaned backend finishing it), so
 * recovery is the first acknowledgement of a write issued after the writer's first error.
 */
function waitRecovered(writer: Writer, killedAtMs: number): Promise<number> {
  return waitFor(
    'the first acknowledged write after the failure',
    async () => {
      const firstError = writer.log.errors.find((error) => error.atMs >= killedAtMs);
      if (firstError === undefined) return undefined;
      return writer.log.acknowledged.find((ack) => ack.issuedAtMs > firstError.atMs)?.acknowledgedAtMs;
    },
    recoveryWaitMsMax,
    recoveryPollMs,
  );
}

// ---------------------------------------------------------------------------------------------
// Output.

function printRound(round: Round, report: Report): void {
  report(`\nround ${round.index}: floor promote ${seconds(round.floorMs)} s; ${round.oldPrimaryId} killed -> ${round.newPrimaryId} primary`);
  report(`  recovery ${seconds(round.recoveryMs)} s (the writer saw the error at ${seconds(round.noticedMs)} s); lost ${round.lost.length} of ${round.acknowledged} acknowledged${lostText(round.lost)}`);
  report(`  client errors ${round.errors} (${round.errorsAfterRecovery} after recovery): ${round.firstErrors.join(' | ')}`);
  report(`  longest pause between acks after recovery (through rejoin): ${seconds(round.gapAfterRecoveryMs)} s; settled (seen) ${seconds(round.settledMs, 1)} s after the kill`);
  report(`  cluster events, s after the kill: ${timelineText(round.timeline)}`);
  report(`  data plane, s after the kill: ${round.dataPlane.join('; ')}`);
  if (round.warnings.length > 0) report(`  cellar warnings: ${round.warnings.join('; ')}`);
  if (round.slowPromoteLog.length === 0) return;
  report(`  the promote step took ${seconds(promoteStepMs(round.timeline))} s; ${round.newPrimaryId} postgres.log:`);
  for (const line of round.slowPromoteLog) report(`    ${line}`);
}

function lostText(lost: readonly number[]): string {
  if (lost.length === 0) return '';
  return ` (ids ${lost.slice(0, lostIdsShownMax).join(', ')}${lost.length > lostIdsShownMax ? ', …' : ''})`;
}

function medianOf(rounds: readonly Round[], pick: (round: Round) => number | null): number | null {
  const values = rounds.map(pick).filter((value): value is number => value !== null);
  return values.length === 0 ? null : median(values);
}

function passed(outcome: Outcome): boolean {
  if (outcome.failure !== null || outcome.rounds.length === 0) return false;
  const recoveryMs = medianOf(outcome.rounds, (round) => round.recoveryMs) as number;
  return recoveryMs <= goalRecoveryMsMax && totalLost(outcome.rounds) === 0;
}

function totalLost(rounds: readonly Round[]): number {
  return rounds.reduce((sum, round) => sum + round.lost.length, 0);
}

function printSummary(outcome: Outcome, report: Report): void {
  const { rounds } = outcome;
  report(`\n== summary (${rounds.length} round(s), seconds)`);
  if (rounds.length === 0) {
    report(`FAIL: no round completed (${outcome.failure ?? 'no rounds'})`);
    return;
  }
  const floorMs = medianOf(rounds, (round) => round.floorMs) as number;
  const recoveryMs = medianOf(rounds, (round) => round.recoveryMs) as number;
  report(`floor (raw promote)   ${rounds.map((round) => seconds(round.floorMs)).join('  ')}   median ${seconds(floorMs)}`);
  report(`cellar recovery       ${rounds.map((round) => seconds(round.recoveryMs)).join('  ')}   median ${seconds(recoveryMs)}`);
  report(`writer saw the error  ${rounds.map((round) => seconds(round.noticedMs)).join('  ')}   median ${seconds(medianOf(rounds, (round) => round.noticedMs) as number)}`);
  report(`lost acknowledged     ${rounds.map((round) => String(round.lost.length).padStart(5)).join('  ')}   total ${totalLost(rounds)} of ${rounds.reduce((sum, round) => sum + round.acknowledged, 0)}`);
  report(`client errors         ${rounds.map((round) => String(round.errors).padStart(5)).join('  ')}   median ${medianOf(rounds, (round) => round.errors) ?? 0}`);
  report(`settled (seen)        ${rounds.map((round) => seconds(round.settledMs, 1).padStart(5)).join('  ')}   median ${seconds(medianOf(rounds, (round) => round.settledMs) as number, 1)}`);
  const labelMedians = summaryLabels.map((label) => {
    const value = medianOf(rounds, (round) => firstAfterMs(round.timeline, label));
    return `${label} ${value === null ? '-' : seconds(value)}`;
  });
  report(`cluster events, median s after the kill (store clock, when the step before ended): ${labelMedians.join(', ')}`);
  report(`cellar/floor = ${(recoveryMs / floorMs).toFixed(1)}x`);
  const verdict = passed(outcome) ? 'PASS' : 'FAIL';
  const why = outcome.failure === null ? '' : `; ${outcome.failure}`;
  report(`${verdict}: goal median recovery <= ${seconds(goalRecoveryMsMax, 1)} s (got ${seconds(recoveryMs)}) and 0 acknowledged writes lost in sync mode (got ${totalLost(rounds)})${why}`);
}

function summaryJson(outcome: Outcome, environment: HaEnvironment, loadBefore: string, loadAfter: string, problems: readonly string[]): unknown {
  const { rounds } = outcome;
  const roundMs = (ms: number | null) => (ms === null ? null : Math.round(ms));
  return {
    benchmark: 'bench/failover',
    date: new Date().toISOString(),
    machine: { cores: availableParallelism(), postgres: environment.postgresVersion, node: process.version },
    cellarEnv: haCellarEnvironment,
    loadBefore,
    loadAfter,
    goal: { recoveryMsMax: goalRecoveryMsMax, lostMax: 0 },
    floorMedianMs: roundMs(medianOf(rounds, (round) => round.floorMs)),
    recoveryMedianMs: roundMs(medianOf(rounds, (round) => round.recoveryMs)),
    lostTotal: totalLost(rounds),
    passed: passed(outcome),
    failure: outcome.failure,
    rounds: rounds.map((round) => ({
      ...round,
      floorMs: Math.round(round.floorMs),
      recoveryMs: Math.round(round.recoveryMs),
      noticedMs: Math.round(round.noticedMs),
      gapAfterRecoveryMs: Math.round(round.gapAfterRecoveryMs),
      settledMs: Math.round(round.settledMs),
      timeline: round.timeline.map((entry) => ({ ...entry, afterMs: Math.round(entry.afterMs) })),
    })),
    problems,
  };
}

main().catch((error: unknown) => {
  process.stderr.write(`bench/failover failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exitCode = 1;
});
